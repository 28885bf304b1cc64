"""A run that stops *without unwinding*, and the runs it started with it.

A worker that hands a saga off or loses its lease, or a run whose journal
fails, stops its run where it is: nothing is compensated in-process, the
saga is left for the next run or for recovery. The child sagas that run
started stop the same way (``StopScope``); ``unwinding.UnwindingRun`` asks
``stopped_without_unwinding`` before it unwinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .write_ahead import JournaledRun

__all__ = ["STOP_SCOPE", "StopScope", "stopped_without_unwinding"]


class StopScope:
    """What a run that stops *without unwinding* shares with the runs it
    started: they stop without unwinding too. A run stops so when a worker
    hands it off or loses its lease (``resumption.LeasedRun`` sets
    ``reason``), or when its journal fails (``run``: its ``interruption``,
    or ``abandoned``, is read when asked). The runs it started are its
    ``SubSaga`` steps' child sagas — in its own task, in a member's, or
    under a lease of their own — which a cancellation reaches as the
    parent stops. A child that unwound then would undo what the parent's
    next run resumes, and hand it a child COMPENSATED under a parent in
    which nothing failed.

    Set in the context of the run it stands for (``STOP_SCOPE``), which the
    runs it starts inherit; a scope keeps the one around it (``outer``)."""

    __slots__ = ("outer", "reason", "run", "unwindings", "when_cancelled")

    def __init__(self, outer: StopScope | None, run: JournaledRun | None = None) -> None:
        self.outer = outer
        self.run = run
        self.reason: BaseException | None = None  # set once the run is stopped
        # The unwindings in flight (their tasks) of this run and of every run
        # it started: a child saga's, a group member's — each shielded in a
        # task of its own, which stopping this run's task never reaches.
        # A worker stopping a hung run cancels them all (LeasedRun.stop_hung).
        self.unwindings: set[asyncio.Task[Any]] | None = None
        # For a run that a cancellation stops without unwinding (a worker's:
        # see ``LeasedRun``): the reason, once its task is being cancelled.
        self.when_cancelled: Callable[[], BaseException | None] | None = None

    def stopped(self) -> BaseException | None:
        """Why this scope, or one around it, was stopped; None if none was."""
        scope: StopScope | None = self
        while scope is not None:
            if scope.reason is not None:
                return scope.reason
            if scope.when_cancelled is not None:
                reason = scope.when_cancelled()
                if reason is not None:
                    return reason
            run = scope.run
            if run is not None:
                if run.abandoned is not None:
                    return run.abandoned
                if run.interruption is not None:
                    return run.interruption
            scope = scope.outer
        return None

    def unwinding(self, task: asyncio.Task[Any], *, ended: bool = False) -> None:
        """``task`` unwinds a run within this scope (or has ``ended``): told
        to this scope and to each one around it, for the outermost run (the
        one a worker stops) to reach every unwinding of its saga tree."""
        scope: StopScope | None = self
        while scope is not None:
            if ended:
                if scope.unwindings is not None:
                    scope.unwindings.discard(task)
            elif scope.unwindings is None:
                scope.unwindings = {task}
            else:
                scope.unwindings.add(task)
            scope = scope.outer


STOP_SCOPE: ContextVar[StopScope | None] = ContextVar("fallback_saga_stop_scope", default=None)


def stopped_without_unwinding() -> BaseException | None:
    """Why a run the current task works for (see ``StopScope``) is stopping
    without unwinding; None when none is."""
    scope = STOP_SCOPE.get()
    return None if scope is None else scope.stopped()


