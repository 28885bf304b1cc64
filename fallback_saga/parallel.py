"""Parallel: steps of a saga that run at the same time, as one element of ``steps``."""

from __future__ import annotations

from .errors import SagaDefinitionError
from .fallback import Fallback
from .step import StepDeclaration

__all__ = ["Parallel"]


class Parallel:
    """Run the member steps concurrently; the next element of ``steps`` starts
    once every member has completed.

    ``Parallel(ReserveStock, AuthorizePayment, Fallback(step=Quote, fallback=FlatRate))``:
    members are step classes, step instances or ``Fallback``s — not other
    groups. Each member works on its own copy of the context as it was when
    the group began; what a member changed is written into the saga's context
    when it completes, so a member that fails (its changes are dropped, S2)
    can never erase a sibling's writes, and two members that change the same
    field fail the group (``ParallelWriteConflict``). When a member fails for
    good, the others are cancelled; the ones that completed, and those whose
    ``act`` was cancelled in flight (their effect is uncertain), are
    compensated; then the earlier steps unwind as usual. See docs/mechanics.md,
    "Parallel groups".
    """

    __slots__ = ("members",)

    def __init__(self, *members: StepDeclaration | Fallback) -> None:
        if len(members) == 1 and isinstance(members[0], list | tuple):
            raise SagaDefinitionError(
                "Parallel takes its members as arguments: Parallel(StepA, StepB), "
                "not Parallel([StepA, StepB])"
            )
        if not members:
            raise SagaDefinitionError("Parallel() is empty: a group needs at least one step")
        for member in members:
            if isinstance(member, Parallel):
                raise SagaDefinitionError(
                    "a Parallel group cannot hold another Parallel group: list the "
                    "steps of both in one group"
                )
        self.members: tuple[StepDeclaration | Fallback, ...] = members

    def __repr__(self) -> str:
        names = ", ".join(getattr(m, "__name__", None) or repr(m) for m in self.members)
        return f"Parallel({names})"
