"""Counts the console shows again while they are fresh enough.

Counting sagas by name and status reads an index of every saga: about
90 ms at 1,000,000 sagas in SQLite (1.2 to 1.8 s before schema version 5,
which reads it from the index alone), 0.2 to 0.4 s in PostgreSQL. Every
listing page and every ``/metrics`` scrape shows the counts, so a console left open on a big store
(or scraped every few seconds) would keep a core busy counting. A count
that took ``t`` seconds is shown again for the next ``REUSE * t`` seconds
for the same filters, with a note of its age: counting then takes at most
about a tenth of the console's time. A count quicker than ``CHEAP`` is
never reused, so a small store's counts are exact at every request.
Requests that arrive while a count is running wait for that count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Final

from .store_counts import Counts, fetch_counts

__all__ = ["CountCache"]

_Key = tuple[str | None, float | None, float | None, int | None]


class CountCache:
    """``fetch_counts``, with slow counts reused (see the module)."""

    REUSE: Final = 10.0
    CHEAP: Final = 0.05
    ENTRIES: Final = 32  # filter combinations remembered (the oldest goes first)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> (counted at, reusable until, the counts)
        self._kept: dict[_Key, tuple[float, float, Counts]] = {}
        self._running: dict[_Key, asyncio.Future[Counts]] = {}

    async def counts(
        self,
        store: object,
        *,
        saga_name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        at_most: int | None = None,
    ) -> Counts:
        key = (saga_name, since, until, at_most)
        now = self._clock()
        kept = self._kept.get(key)
        if kept is not None:
            counted_at, until_reuse, counts = kept
            if now < until_reuse:
                return _aged(counts, now - counted_at)
            del self._kept[key]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Counts] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            counts = await fetch_counts(
                store, saga_name=saga_name, since=since, until=until, at_most=at_most
            )
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: the waiters (if any) get it too
            raise
        else:
            future.set_result(counts)
        finally:
            del self._running[key]
        took = self._clock() - now
        if took >= self.CHEAP:
            if len(self._kept) >= self.ENTRIES:
                del self._kept[next(iter(self._kept))]
            self._kept[key] = (now, now + self.REUSE * took, counts)
        return counts


def _aged(counts: Counts, age: float) -> Counts:
    note = f"counted {age:.0f} s ago (counting this store is slow; counts are reused a while)"
    return dataclasses.replace(counts, note=f"{counts.note}; {note}" if counts.note else note)
