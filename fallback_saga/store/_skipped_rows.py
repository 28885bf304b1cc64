"""The rows a claim skipped as corrupt, for whoever reports the pass.

A row so corrupt that ``claim`` cannot lease it (a fence at the largest
integer, a time that is not a number) is never leased, so it never reaches
the code that resumes the claimed sagas: without this, only the store's log
line named it, and ``recover()``'s report — what a cron job checks — did not
(S12: a corrupt row is reported, never silently ignored).

``recover`` and a ``RecoveryWorker`` set a sink around their claims
(``collecting``); a built-in store's ``claim`` adds to it on the event
loop's side (``note``). A store of one's own, which knows nothing of it, is
unaffected, and a claim with no sink set pays one ``ContextVar.get``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar


class _Sink:
    """The rows collected (saga id, reason, in the order the claims met
    them), and how often they are wanted (``every``)."""

    __slots__ = ("every", "rows")

    def __init__(self, every: float | None) -> None:
        self.rows: list[tuple[str, str]] = []
        self.every = every


# A sink, not a copy per context: the claim runs in a task of its own
# (shielding.claimed), whose context is a copy of the caller's holding this
# same sink.
_SINK: ContextVar[_Sink | None] = ContextVar("fallback_saga_skipped_rows", default=None)


@contextlib.contextmanager
def collecting(every: float | None = None) -> Iterator[list[tuple[str, str]]]:
    """The rows the claims made inside the block skipped as corrupt, each once.

    ``every``: ``None``, every claim's (a ``recover`` pass: its report is
    the caller's only view); a number of seconds, a caller that reports
    each row at most that often (a worker's polls) — a store that must
    query for them may do so that often only."""
    sink = _Sink(every)
    token = _SINK.set(sink)
    try:
        yield sink.rows
    finally:
        _SINK.reset(token)


def note(saga_id: str, reason: str) -> None:
    """Report a row a claim skipped, once per collection."""
    sink = _SINK.get()
    if sink is not None and all(seen != saga_id for seen, _ in sink.rows):
        sink.rows.append((saga_id, reason))


class Looks:
    """When a store next looks for the rows it reports with a query of its
    own: at each claim of a collector that wants every claim's (``recover``),
    at most once per ``every`` seconds for one that reports each row that
    often (a worker's polls: their extra statement bounded), never with no
    collector. On the event loop's clock; one per store."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = -math.inf

    def due(self) -> bool:
        """Whether this claim looks (and, if so, when the next one may)."""
        sink = _SINK.get()
        if sink is None:
            return False
        if sink.every is None:
            return True
        now = asyncio.get_running_loop().time()
        if now < self._next:
            return False
        self._next = now + sink.every
        return True
