"""RetryPolicy: how many tries, and how long to wait between them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .given_numbers import number_given

__all__ = ["RetryPolicy", "set_testing"]

Sleep = Callable[[float], Awaitable[object]]
ExceptionFilter = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn real sleeping between retries off (``True``) or back on.

    Meant for test suites: retries still happen, the delays are computed,
    but nothing waits. A policy with its own ``sleep`` keeps using it.
    """
    global _testing
    _testing = enabled


async def _no_sleep(delay: float) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Total ``attempts`` with capped, jittered exponential backoff.

    The wait before try *n+1* is ``min(max_delay, delay * backoff**(n-1))``
    plus a random ``[0, jitter]`` seconds, never more than ``max_delay``.
    ``retry_on`` picks the errors worth another try (types or a predicate);
    by default every ``Exception``. Cancellation is never retried.

    ``attempts`` counts every try: ``attempts=1`` means no retry. ``sleep``
    replaces ``asyncio.sleep`` (tests inject a recorder).
    """

    attempts: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 10.0
    jitter: float = 0.1
    retry_on: ExceptionFilter = (Exception,)
    sleep: Sleep | None = field(default=None, compare=False, repr=False)

    if TYPE_CHECKING:
        # For type checkers only (the dataclass's own __init__ runs): what
        # __post_init__ accepts for ``retry_on`` and makes a tuple — one
        # exception type (``retry_on=ConnectionError``) or a list of them.
        def __init__(
            self,
            *,
            attempts: int = 3,
            delay: float = 0.1,
            backoff: float = 2.0,
            max_delay: float = 10.0,
            jitter: float = 0.1,
            retry_on: ExceptionFilter
            | type[BaseException]
            | list[type[BaseException]] = (Exception,),
            sleep: Sleep | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts is the total number of tries and must be >= 1, "
                             f"got {self.attempts}")
        # Checked as every number of seconds the library takes (a bool is no
        # number, an int too large for a float no finite one); kept as given.
        for name in ("delay", "max_delay", "jitter"):
            number_given(name, getattr(self, name), least=0, unit="seconds")
        number_given("backoff", self.backoff, least=1)  # a factor, not seconds
        retry_on = self.retry_on
        # A lone exception type is callable too: taken for a predicate, any
        # error would pass it (``ConnectionError(error)`` is truthy). One type,
        # or a list of them, means the errors of those types.
        if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
            retry_on = (retry_on,)
        elif isinstance(retry_on, list):
            retry_on = tuple(retry_on)
        if isinstance(retry_on, tuple):
            for kind in retry_on:
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    raise TypeError(f"retry_on must hold exception types, got {kind!r}")
            object.__setattr__(self, "retry_on", retry_on)
        elif not callable(retry_on):
            raise TypeError("retry_on must be a tuple of exception types or a predicate")
        if self.sleep is not None and not callable(self.sleep):
            raise TypeError(
                f"sleep must be an async function like asyncio.sleep, got {self.sleep!r}"
            )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (2, 3, ...)."""
        if attempt <= 1:
            return 0.0
        try:
            base = self.delay * self.backoff ** (attempt - 2)
        except OverflowError:
            # backoff**(attempt - 2) is past the float range (try 1,026 at
            # 2.0): any delay > 0 is long past the cap by then; a delay of 0
            # stays 0 (0 times anything), as the formula says.
            base = self.max_delay if self.delay else 0.0
        wait = min(self.max_delay, base)
        if self.jitter:
            wait += random.uniform(0.0, self.jitter)
        return min(self.max_delay, wait)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether try ``attempt`` failing with ``error`` deserves another try."""
        if attempt >= self.attempts or not isinstance(error, Exception):
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return bool(self.retry_on(error))

    async def wait_before(self, attempt: int) -> None:
        """Sleep before try ``attempt`` (no real sleep under ``set_testing``)."""
        sleep = self.sleep
        if sleep is None:
            sleep = _no_sleep if _testing else asyncio.sleep
        await sleep(self.delay_before(attempt))


NO_RETRY = RetryPolicy(attempts=1, delay=0.0, jitter=0.0)
DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=3, delay=0.1, backoff=2.0, max_delay=5.0)
