"""Shared test doubles for the circuit-breaker and retry tests.

Nothing here sleeps: time is a ``FakeClock`` the test moves by hand, and calls
are held inside the guarded function by events or by a coroutine suspended at
a bare ``yield``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from fallback_saga import CircuitBreaker, CircuitState

# A shared breaker's timing in the tests: it pulls the row every SYNC seconds
# of its FakeClock, and tries again RESET seconds after it opened.
SYNC = 1.0
RESET = 10.0


class FakeClock:
    """A monotonic clock that only moves when told to (thread-safe)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class StateChanges:
    """A listener that records every ``breaker_state_changed`` call."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        self.changes.append((breaker, old, new))

    def edges(self) -> list[tuple[CircuitState, CircuitState]]:
        return [(CircuitState(old), CircuitState(new)) for _, old, new in self.changes]


class Boom(Exception):
    """A counted failure of the guarded service."""


class BusinessError(Exception):
    """An error the breakers under test are told to exclude."""


class SpecificBusinessError(BusinessError):
    pass


async def fail_with(error: BaseException) -> None:
    raise error


async def succeed(value: object = "ok") -> object:
    return value


async def trip(breaker: CircuitBreaker, failures: int | None = None) -> None:
    """Make ``failures`` (default ``fail_max``) counted failures through ``breaker``."""
    for _ in range(breaker.fail_max if failures is None else failures):
        with contextlib.suppress(Boom):
            await breaker.call(fail_with, Boom("down"))


class _Suspend:
    """An awaitable that suspends its coroutine exactly once (no event loop needed)."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


async def _held() -> str:
    await _Suspend()
    return "done"


def _held_call(breaker: CircuitBreaker, via: str) -> Coroutine[Any, Any, Any]:
    if via == "call":
        return breaker.call(_held)
    if via == "decorator":
        return breaker(_held)()
    if via == "async_with":

        async def body() -> str:
            async with breaker:
                return await _held()

        return body()
    raise ValueError(via)


class HeldCall:
    """One breaker call driven by hand: started, held inside the guarded function,
    then finished with a result, an error or a cancellation.

    Each call runs in its own ``contextvars`` context, as an asyncio task would,
    so ``async with breaker:`` keeps its per-task permit stack.
    """

    VIAS = ("call", "decorator", "async_with")

    def __init__(self, breaker: CircuitBreaker, via: str) -> None:
        self.via = via
        self._context = contextvars.copy_context()
        self._coroutine = _held_call(breaker, via)

    def start(self) -> None:
        """Ask the breaker; raises ``CircuitOpenError`` if rejected, else returns
        with the call suspended inside the guarded function."""
        self._context.run(self._coroutine.send, None)

    def succeed(self) -> object:
        try:
            self._context.run(self._coroutine.send, None)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("the held call did not finish")

    def raise_inside(self, error: BaseException) -> BaseException:
        """Raise ``error`` inside the guarded function; return what came out of the call."""
        try:
            self._context.run(self._coroutine.throw, error)
        except BaseException as raised:
            return raised
        raise AssertionError("the held call swallowed the error")


class Held:
    """A guarded function that stays inside until released (one per call)."""

    def __init__(self, outcome: BaseException | None = None) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.outcome = outcome

    async def __call__(self) -> str:
        self.entered.set()
        await self.release.wait()
        if self.outcome is not None:
            raise self.outcome
        return "released"


def shared_breaker(store: Any, clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """The breaker ``payments`` sharing its state through ``store`` (three
    failures open it unless ``fail_max`` says otherwise), on ``clock``."""
    options: dict[str, Any] = {
        "name": "payments", "fail_max": 3, "reset_timeout": RESET, "sync_interval": SYNC,
    }
    options.update(kwargs)
    return CircuitBreaker(state_store=store, clock=clock, wall_clock=clock, **options)
