"""``async with breaker:`` (rule S9): a block guarded by a ``CircuitBreaker``.

``GuardedBlocks`` is a base class of ``CircuitBreaker``, over
``GuardedCalls`` (``breaker_calls``), whose nesting question its blocks ask
too. A block entering takes a permit as ``call()`` does and pushes an entry
on the task's permit stack (``permit_stack``); a block leaving pops it and
records the outcome. Its closed path (``permit_stack.LAST_OWNER`` and
``drop_over`` inlined, nothing asked of the frame but its identity) makes no
call of the breaker's own; the rest is ``_leave``: a failure, a success
with failures to reset, a block let in off the closed path, a block left
out of order (an async generator parked inside it, an exit stack), closed
by the garbage collector or away from its task, or failing with an error
thrown in at a stream's ``yield`` (``athrow``).
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from .breaker_calls import GuardedCalls
from .permit_stack import (
    LAST_OWNER,
    Entry,
    closed_elsewhere,
    collecting,
    drop_over,
    entered_here,
    thrown_in_at_yield,
    unstack,
)
from .shielding import NO_TASK, running_task
from .status import CircuitState

__all__ = ["GuardedBlocks"]

_CLOSED = CircuitState.CLOSED

_getframe = sys._getframe

# The running task. On 3.11 ``asyncio.current_task()`` is pure Python and
# looks the running loop up, a ``getpid`` system call: about a quarter of
# this path; shielding's lookup (``NO_TASK`` outside a task) is half the
# price there. 3.12 made ``current_task()`` C: cheaper than any lookup of ours.
_task_now: Callable[[], Any] = (
    running_task if sys.version_info < (3, 12) else asyncio.current_task
)
_weakref = weakref.ref


class GuardedBlocks(GuardedCalls):
    """``async with breaker:`` of a ``CircuitBreaker`` (a base class of it):
    see the module."""

    __slots__ = ()

    async def __aenter__(self) -> Self:
        permits = self._permits
        # As in call(): on the closed path there is nothing to decide yet, the
        # permit is the generation, read before the state is: if a transition
        # slips in between, the permit is already stale and its outcome is
        # ignored (read after, it would be the new state's, e.g. a half-open
        # round's that this block never took a trial of).
        permit: int | None = self._generation
        # The same test as call()'s, for the same closed path.
        closed_path = self._gate is _CLOSED or (
            self._state is _CLOSED and self._clock() < self._next_sync
        )
        if not closed_path:
            if self._inside(_getframe(), permits.get(), _getframe(1)):
                permit = None  # nested: the outer call's permit covers this block
            else:
                permit = self.acquire()
        owner: weakref.ref[asyncio.Task[Any]] | None
        try:
            task = _task_now()
        except RuntimeError:  # no running event loop: a coroutine driven by hand
            task = None
        if task is None or task is NO_TASK:  # (a loop callback, or no loop)
            owner = None
        else:
            owner = LAST_OWNER.ref
            if owner() is not task:
                owner = LAST_OWNER.ref = _weakref(task)
        outer = permits.get()
        if outer is not None:
            # An async generator dropped inside its block (its exit ran
            # elsewhere) leaves its entry here: it goes, so that a task
            # dropping such generators does not pile them up.
            outer = drop_over(outer)
        # A per-task stack of permits (immutable entries), so nested and
        # concurrent ``async with`` blocks each hand back their own permit, and
        # the calls inside a block know they are nested. The frame entering
        # names the block: generators' blocks do not end in the order they
        # began.
        # (Nothing more is asked of the frame here: one attribute read of it
        # costs this path a twentieth. An exit stack's and an
        # asynccontextmanager's blocks are told apart when it matters: see
        # permit_stack.)
        permits.set((permit, closed_path, owner, outer, _getframe(1)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permits = self._permits
        top = permits.get()
        if (
            exc is None
            and top is not None
            and top[1]
            and top[4] is _getframe(1)
            and not (self._failures and top[0] == self._generation)
        ):
            # The closed path: a block let in on it, leaving from the frame
            # that entered it, with nothing to record (a success, no failures
            # to reset). Its entry goes and nothing else is touched — also
            # inside a garbage collection (see _leave), where an entry named
            # by this block's own frame is its own: on its dead task's stack,
            # or a copy of it in a task or callback started in the block.
            permits.set(top[3])  # type: ignore[arg-type]
            return
        self._leave(top, exc_type, exc)

    def _leave(
        self,
        top: Entry | None,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
    ) -> None:
        """``__aexit__`` off its closed path: a failure, a success with
        failures to reset, a block let in off the closed path, or one whose
        entry is not on top (see ``permit_stack.unstack``)."""
        if collecting():
            # The garbage collector is closing this block's coroutine: its task
            # was destroyed pending (asyncio keeps tasks only weakly: one
            # awaiting a future nobody else holds is garbage; or its loop
            # closed: a second Ctrl-C cut asyncio.run's shutdown short). This
            # runs in whatever context is current — another task's step,
            # perhaps inside its own block of this breaker, whose entry is the
            # top of the stack seen here and names the task running: popping
            # it took that block's permit and left its own exit without one.
            # (A block's entry says which task made it, not which block: that
            # would cost a frame per block on the closed path.) Nothing is
            # recorded or handed back. This block's permit is on its dead
            # task's stack, out of reach; and the collector may have
            # interrupted, in this thread, a section holding this breaker's
            # lock, which is not reentrant. A half-open trial it held is one
            # that never reports back: a new round of trials is let through
            # reset_timeout after this one began, as for a hung call. Asked
            # whatever the block leaves with: its body may have turned the
            # GeneratorExit into another error, or swallowed it. (Telling a
            # close by the collector from the kind of frame closed — a
            # coroutine, not an async generator — gets wrong an
            # asynccontextmanager around the breaker, an AsyncExitStack in an
            # async generator and a coroutine closed by hand in a task.)
            return
        if exc_type is GeneratorExit and not entered_here(top):
            # The block's coroutine is closed away from its task, without the
            # collector (dropped by whatever held it last, in another task or
            # none): its permit stack is not the one here. Its permit is not
            # handed back either. (Left by an exit stack: its entry there is
            # then over, see permit_stack.block_over.)
            closed_elsewhere(_getframe(2))
            return
        caller = _getframe(2)  # the frame leaving the block (__aexit__'s caller)
        if top is not None and top[4] is caller:
            entry = top
            self._permits.set(top[3])  # type: ignore[arg-type]
        else:
            entry = unstack(self._permits, top, caller)
        permit, closed_path, _, outer, block = entry
        if permit is None:
            return
        if closed_path:
            # Let in on the closed path: only a failure, or a success with
            # failures to reset, records something; only then is nesting
            # looked for, among the blocks entered before this one.
            if exc is None and not (self._failures and permit == self._generation):
                return
            if self._inside(_getframe(), outer, block):  # type: ignore[arg-type]
                return
        if exc is not None and thrown_in_at_yield(block, exc):
            # Thrown in by the consumer at the yield a stream is parked at
            # (``athrow``): the consumer's error, counted by its own call if
            # guarded, and no part of this block's guarded work (as its
            # calls are not, see permit_stack). Counted here too, one
            # failure was two.
            self.release(permit)
            return
        self._record(permit, exc)

