"""The ways to call through a ``CircuitBreaker``: ``await breaker.call(fn)``
and the decorator (rule S9); ``async with breaker:`` is ``breaker_blocks``.

``GuardedCalls`` is a base class of ``CircuitBreaker`` (``breaker.py``, the
state machine, which defines the permits and outcomes used here). Its closed
path is ``acquire()`` and ``record_success()`` inlined: two attribute reads
before the call, one after, no lock, no allocation, and no call of the
breaker's own on the way (issue #12 times it against aiobreaker's).

It also answers, for both ways in, whether a call is *nested* in a guarded
call of the same breaker in the same task (``_inside``): an outer ``call()``
is a frame of ``call``'s code below the caller's, an outer block is on the
task's permit stack (``permit_stack``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from inspect import isawaitable, iscoroutine
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from .permit_stack import Entry, collecting, nested
from .status import CircuitState

__all__ = ["GuardedCalls"]

T = TypeVar("T")
P = ParamSpec("P")

_CLOSED = CircuitState.CLOSED

_getframe = sys._getframe


class GuardedCalls:
    """``call()``, the decorator and the nesting question of a
    ``CircuitBreaker`` (a base class of it): see the module."""

    __slots__ = ()

    # The breaker's own state, which its calls read: declared here, kept in
    # ``CircuitBreaker``'s slots.
    _generation: int
    _gate: CircuitState | None
    _state: CircuitState
    _failures: int
    _clock: Callable[[], float]
    _next_sync: float
    _permits: ContextVar[Entry | None]

    # The breaker's permits and outcomes (``CircuitBreaker`` defines them).

    def acquire(self) -> int:
        raise NotImplementedError

    def record_success(self, permit: int) -> None:
        raise NotImplementedError

    def release(self, permit: int) -> None:
        raise NotImplementedError

    def _record(self, permit: int, error: BaseException | None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ ways to call

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the breaker.

        Nested inside a guarded call of this breaker in the same task, the call
        passes straight through: see ``_inside``.
        """
        # The closed path, with acquire() and record_success() inlined: two
        # attribute reads before the call, one after, no lock, no allocation.
        # The generation is read first: if a transition slips in between, the
        # permit is already stale and its outcome is ignored. Every transition
        # bumps the generation, so an unchanged one means "still closed".
        # Nesting is looked for only where it changes something: on a failure,
        # on a success with failures to reset, and off the closed path.
        permit = self._generation
        if self._gate is not _CLOSED and (
            # A local breaker's gate follows its state; a shared one's is never
            # CLOSED, and its closed path goes on unless a pull is due.
            self._state is not _CLOSED or self._clock() >= self._next_sync
        ):
            if self._inside(_getframe(), self._permits.get()):
                # Nested: the outer call's permit covers this one and its
                # outcome is the one recorded. Never rejected by this breaker.
                if not callable(fn):
                    raise _not_callable(fn)
                returned = fn(*args, **kwargs)
                if not isawaitable(returned):
                    raise _not_awaitable(fn, returned)
                return await returned
            return await self._call_guarded(fn, *args, **kwargs)
        try:
            # Without keywords, a plain call: unpacking an empty dict into the
            # call costs a tenth of this path.
            returned = fn(*args, **kwargs) if kwargs else fn(*args)  # type: ignore[call-arg]
        except BaseException as error:
            if not callable(fn):  # a misuse, not the service failing: nothing to record
                raise _not_callable(fn) from None
            if not collecting() and not self._inside(_getframe(), self._permits.get()):
                self._record(permit, error)
            raise
        # Awaited in a try of its own (free in 3.11+: a table, not code), so
        # that a function that is no coroutine function is told apart only
        # once awaiting what it returned failed: no check on this path.
        try:
            result = await returned
        except BaseException as error:
            if type(error) is TypeError and not isawaitable(returned):
                # A misuse, not the service failing: nothing to record.
                raise _not_awaitable(fn, returned) from None
            # Inside a collection: see _call_guarded.
            if not collecting() and not self._inside(_getframe(), self._permits.get()):
                self._record(permit, error)
            raise
        # A stale permit's success records nothing: no need to look further.
        if (
            self._failures and permit == self._generation
            and not collecting() and not self._inside(_getframe(), self._permits.get())
        ):
            self.record_success(permit)
        return result

    async def _call_guarded(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        permit = self.acquire()
        try:
            returned = fn(*args, **kwargs)
        except BaseException as error:
            if not callable(fn):  # a misuse: the permit (a trial's slot) goes back unrecorded
                self.release(permit)
                raise _not_callable(fn) from None
            self._record(permit, error)
            raise
        if not isawaitable(returned):
            # A misuse, not the service failing: the permit (a half-open
            # trial's slot) goes back unrecorded.
            self.release(permit)
            raise _not_awaitable(fn, returned)
        try:
            result = await returned
        except BaseException as error:
            if not collecting():
                self._record(permit, error)
            # Else the garbage collector is closing this call's coroutine: its
            # task was destroyed pending. The collector may have interrupted,
            # in this thread, a section holding this breaker's lock (not
            # reentrant: taking it would hang the thread, its event loop with
            # it), so nothing is recorded or handed back — as for an 'async
            # with' block closed by the collector (__aexit__): a half-open
            # trial held here is one that never reports back, and a new round
            # is let through reset_timeout after this one began.
            raise
        if not collecting():  # a function that swallowed the GeneratorExit
            self.record_success(permit)
        return result

    def _inside(
        self, frame: FrameType, top: Entry | None, block: FrameType | None = None
    ) -> bool:
        """Whether the call running in ``frame`` (``call``, ``__aenter__`` or
        ``__aexit__``) is nested: made while a guarded call of this breaker is
        in progress in the same task (``permit_stack.nested``); ``block``
        names the ``async with`` block entering or leaving, if that is it."""
        return nested(self._permits, top, frame, block, _CALL_CODE, self)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an async function so every call goes through the breaker.

        The result is a coroutine function (typed as one: ``asyncio.create_task``
        and ``asyncio.run`` take what it returns)."""

        call = self.call  # bound once, not per call

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            if kwargs:
                return await call(fn, *args, **kwargs)
            # Without keywords, a plain call: as in call(), unpacking an
            # empty dict costs this path a tenth.
            return await call(fn, *args)  # type: ignore[call-arg]

        return guarded


_CALL_CODE = GuardedCalls.call.__code__


def _not_callable(fn: object) -> TypeError:
    """The error for a call given no function: Python's own ("'coroutine'
    object is not callable") was counted as the service failing. The usual
    slip is ``breaker.call(charge(5))``: that coroutine is closed here (it
    will never be awaited: no "never awaited" warning later) and the error
    says how to pass the function."""
    if iscoroutine(fn):
        name = getattr(fn, "__name__", "fn")
        fn.close()
        return TypeError(
            f"breaker.call() takes the function to call and its arguments — "
            f"breaker.call({name}, ...) — got the coroutine {name}(...), called already "
            f"(it is closed, never run)"
        )
    return TypeError(
        f"breaker.call() takes the function to call and its arguments, got "
        f"{repr(fn)[:200]} ({type(fn).__name__}), which is not callable"
    )


def _not_awaitable(fn: object, returned: object) -> TypeError:
    """The error for a function that is not async under the breaker: Python's
    own ("object int can't be used in 'await' expression") named neither the
    function nor what to do. Found at call time, not when decorating: a plain
    function that returns an awaitable is as good as a coroutine function."""
    name = getattr(fn, "__qualname__", None)
    shown = f"{name}()" if isinstance(name, str) else repr(fn)[:200]
    return TypeError(
        f"a circuit breaker awaits what its function returns, and {shown} (it ran) returned "
        f"{type(returned).__name__}, not an awaitable: make it an 'async def' function "
        f"(blocking code: an 'async def' that runs it with 'await asyncio.to_thread(...)')"
    )
