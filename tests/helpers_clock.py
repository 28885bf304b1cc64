"""A virtual clock for the tests of deadlines: the event loop's time jumps
to its next timer whenever nothing is ready, so a 10 s deadline costs no real
time and the elapsed loop time is exact. A loop left with nothing to wait for
at all raises ``Deadlock`` instead of hanging."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """The loop has nothing left to wait for: what runs waits forever."""


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is
    ready (no real waiting); ``Deadlock`` when no timer is left either."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self.now = 0.0
        selector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> Any:
            events = real_select(0)
            if events or timeout == 0:
                return events
            if timeout is None:
                raise Deadlock("nothing ready and no timer left")
            self.now += timeout
            return events

        selector.select = select

    def time(self) -> float:
        return self.now


# The tasks of a run that waited forever, kept: destroyed, they would unwind
# outside their loop and muddle the failure's report.
_STUCK: list[asyncio.Task[Any]] = []


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())
    except Deadlock:
        _STUCK.extend(asyncio.all_tasks(loop))
        raise AssertionError("the run waits forever: nothing is ready, no timer is left") from None
    finally:
        loop.close()
