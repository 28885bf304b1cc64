"""The store contract: what the executor journals, and what a store gives back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from ..status import SagaStatus, StepStatus

__all__ = ["JournalEntry", "SagaRecord", "SagaStore"]

Action = Literal["act", "compensate"]
Branch = Literal["primary", "fallback"]


class JournalEntry(NamedTuple):
    """One transition of one step, in the order it happened.

    ``position`` is the step's index in ``Saga.steps`` (both branches of a
    Fallback share it); ``branch`` is ``"primary"`` for plain steps and for a
    Fallback's primary, ``"fallback"`` for its fallback. ``at`` is wall-clock
    Unix time (for people reading the journal; no durations are computed
    from it).
    """

    position: int
    step: str
    branch: Branch
    action: Action
    status: StepStatus
    attempt: int
    error: str | None
    at: float


@dataclass(slots=True)
class SagaRecord:
    """A saga as a store knows it: its header, latest context and full history."""

    saga_id: str
    saga_name: str
    fingerprint: str
    status: SagaStatus
    context: dict[str, Any]
    history: list[JournalEntry] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0


@runtime_checkable
class SagaStore(Protocol):
    """Where the executor journals every transition.

    The executor batches: ``create`` carries the saga's header together with
    its first transitions, and each ``append`` carries every transition since
    the previous write, plus the new status and context when they changed.
    A write must be durable when the awaitable returns: the executor calls a
    step's ``act`` only after its ``STARTED`` entry was written.
    """

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        """Record a new saga; ``SagaAlreadyExists`` if the id is taken."""
        ...

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Add transitions, and set the status/context when given."""
        ...

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record; ``SagaNotFound`` if there is none."""
        ...
