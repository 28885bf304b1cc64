"""The deadline of the executor's journal write being made in this context.

The executor bounds each journal write by the run's ``journal_timeout``. A
store's own submitting path (``submit_create``/``submit_append``) is given
that deadline and ends the write by it itself, telling a write never sent
(``NotSent``: nothing written) from one on its way (in doubt). A write
reached through ``create``/``append`` — a user's store wrapping ours, which
the executor drives as a coroutine — has no deadline argument: the executor
sets it here while it drives the coroutine, so that a store that bounds its
writes itself (PostgreSQL's group commit) ends that write as it ends a
submitted one, and both paths tell the same truth. Unset (None) for any
other caller of ``create``/``append``."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["JOURNAL_DEADLINE"]

# Loop time, or None: no journal write of the executor is being made here.
JOURNAL_DEADLINE: ContextVar[float | None] = ContextVar(
    "fallback_saga_journal_deadline", default=None
)
