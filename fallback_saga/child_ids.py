"""The saga ids of child sagas, and whether a family's ids fit a store.

A child saga (``SubSaga``) is journaled under ``"<parent id>/<step>"``, its
own children under ``"<parent id>/<step>/<step>"``, and so on down the
family; every store keys a saga by an id of at most ``MAX_SAGA_ID_LENGTH``
characters. The step names a family appends are fixed by its definitions,
so an id that could never fit is refused when the saga class is created
(S11); what the top saga's own id adds is known when a run starts, and is
refused then, before the first step (S12) — rather than by the child's
first write, mid-run, with the steps before it compensated.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import short_id
from .store._common import MAX_SAGA_ID_LENGTH

__all__ = [
    "CHILD_SEPARATOR",
    "child_path_length",
    "child_saga_id",
    "path_refused_at_definition",
    "saga_id_refused_for_children",
    "shown_step",
]

#: Between a parent's id and its child's step name in the child's saga id.
CHILD_SEPARATOR = "/"


def child_saga_id(parent_id: str, step: str) -> str:
    """The saga id of the child run by ``parent_id``'s step ``step``."""
    return f"{parent_id}{CHILD_SEPARATOR}{step}"


def child_path_length(path: Sequence[str]) -> int:
    """The characters ``path`` (step names, outermost first) appends to a saga id."""
    return sum(len(CHILD_SEPARATOR) + len(step) for step in path)


def shown_step(step: str) -> str:
    """A step name as a message shows it: names may be 200 characters long,
    so a long one is cut, with its length (still recognisable, and the
    length is what the message is about)."""
    if len(step) <= 40:
        return repr(step)
    return f"{step[:30]!r}… ({len(step)} characters)"


def _shown(path: Sequence[str]) -> str:
    return " / ".join(map(shown_step, path))


def path_refused_at_definition(path: Sequence[str]) -> str | None:
    """Why ``path`` can never be appended to a saga id (None: it can, to a short enough one)."""
    shortest = 1 + child_path_length(path)  # a saga id has one character at least
    if shortest <= MAX_SAGA_ID_LENGTH:
        return None
    return (
        f"the child sagas it runs nest down the step path {_shown(path)}, so the innermost "
        f"one's saga id (\"<saga id>{CHILD_SEPARATOR}…\") has at least {shortest} characters "
        f"(with a saga id of one), over the "
        f"{MAX_SAGA_ID_LENGTH} characters a saga id may have; give these steps shorter names "
        f"(SubSaga's name=) or nest fewer sagas"
    )


def saga_id_refused_for_children(
    saga_name: str, saga_id: str, path: Sequence[str], *, made: bool
) -> str | None:
    """Why the saga ``saga_id`` (``made``: not given, made for the run)
    cannot run: its deepest child's id would be too long."""
    longest = len(saga_id) + child_path_length(path)
    if longest <= MAX_SAGA_ID_LENGTH:
        return None
    room = MAX_SAGA_ID_LENGTH - child_path_length(path)
    # A made id is as long as every made id: the caller must give one.
    made_note = f" (the one made when none is given has {len(saga_id)})" if made else ""
    return (
        f"{saga_name} cannot run as saga {short_id(saga_id)}: its child sagas nest down the "
        f"step path {_shown(path)}, so the innermost one's saga id would have {longest} "
        f"characters, over the {MAX_SAGA_ID_LENGTH} characters a saga id may have; give it a "
        f"saga id of at most {room} characters{made_note}, or give these steps shorter names "
        f"(SubSaga's name=); nothing ran"
    )
