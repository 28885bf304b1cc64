"""Group commit for an asyncio store whose writes are round trips to a server.

A durable write costs a round trip and a flush to disk, however small it is,
and a statement costs CPU on both sides. With many sagas in flight,
``GroupCommit`` sends their writes together: one transaction, one round
trip, one flush (``write_many``). One saga in flight pays nothing for this:
a write made while nothing else is on its way goes at once and alone
(``write_one``), as it would without a queue.

Every write is made by a task of its own (a group's, or one for a write
alone, started eagerly where Python can): the caller only waits on a future.
So a write runs to its end whatever happens to its caller, and nothing it
does (a pool's or a driver's timeout) is bound to the caller's task — which
lets the executor drive ``create``/``append`` from the saga's own task
(``journal.settle_inline``).

A write made while another is on its way queues. A group starts while fewer
than ``slots`` writes or groups are on their way; before it takes the queue
it lets the event loop go round while the queue still grows (at most
``GATHER_TRIPS`` times), because a commit wakes many callers at once and
each makes its next write a trip later: those writes then go in groups
instead of one by one. A group takes an even share of the queue across the
slots (at least ``SHARE_AT_LEAST`` writes, at most ``MAX_GROUP``), and the
rest may start the next group at once: so the burst one commit set off goes
as a few groups side by side, and the event loop handles the callers of the
first to commit while the server still works on the others (one group per
burst would have the loop and the server take turns, each idle while the
other works). ``grouped=False`` sends every write alone, at once.

Rules that keep it correct:

* **No overtaking.** While anything is queued, a new write queues behind it,
  even if a slot is free at that moment, so writes reach the server in the
  order they were made.
* **A cancelled write that is still queued is never sent.** Once it is part
  of a transaction on its way, it may or may not be written — as with a
  cancelled direct write.
* **One bad write does not sink the others.** When the server refused a
  grouped transaction (it was rolled back: nothing in it was written),
  ``write_many`` raises ``RetryAlone`` and each write is retried on its own,
  so only the bad one fails. Any other failure — the connection was lost, so
  the commit may or may not have happened — is reported to every write of
  the group and nothing is retried: retrying a write that was in fact
  committed would journal it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from ..shielding import own_task

__all__ = ["GroupCommit", "RetryAlone"]

W = TypeVar("W")  # a write request
R = TypeVar("R")  # its result

# At most this many writes in one transaction: the rest go in the next.
MAX_GROUP = 256
# A group takes an even share of the queue across the slots, but never fewer
# than this many writes (fewer only if fewer are queued): a smaller group
# costs the server a commit for too little.
SHARE_AT_LEAST = 32
# At most this many trips through the event loop for a burst of writes to join
# a group: the callers one commit woke make their next writes in the next trip.
GATHER_TRIPS = 1


class RetryAlone(Exception):
    """Raised by ``write_many``: the server refused the group and rolled it
    back; write each request on its own."""


class GroupCommit(Generic[W, R]):
    """Writes through ``write_one`` while nothing else is on its way, else
    grouped (see the module docstring). ``write_many`` returns one outcome per request, in
    order: its result, or the exception to raise for it."""

    gather_trips = GATHER_TRIPS

    def __init__(
        self,
        *,
        slots: int,
        write_one: Callable[[W], Awaitable[R]],
        write_many: Callable[[list[W]], Awaitable[list[R | BaseException]]],
        grouped: bool = True,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots!r}")
        self._slots = slots
        self._grouped = grouped
        self._busy = 0  # writes alone and groups on their way
        self._gathering = False  # a group waits for its burst to join
        self._write_one = write_one
        self._write_many = write_many
        self._queue: list[tuple[W, asyncio.Future[R]]] = []
        self._drains: set[asyncio.Task[None]] = set()  # groups and writes alone on their way
        self.writes = 0  # requests (refused ones included)
        self.commits = 0  # transactions sent: one per request alone, one per group
        self.largest_group = 0

    async def write(self, request: W) -> R:
        """Write ``request``; its result, once its transaction has committed.
        Nothing here waits but on a future: the write itself is made by a
        task of its own (alone or in a group), never by the caller's task,
        so it binds nothing to the caller's (no timeout of the pool or the
        driver can cancel the caller) and runs to its end whatever happens
        to the caller meanwhile (the store says so to the executor:
        ``writes_outlive_cancellation``)."""
        self.writes += 1
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self._grouped:
            self.commits += 1
            self._start(self._alone(request, future, counted=False))
            return await future
        if self._busy == 0 and not self._queue:
            # Nothing else on its way: go now, alone.
            self._busy = 1
            self.commits += 1
            self._start(self._alone(request, future, counted=True))
            return await future
        entry = (request, future)
        self._queue.append(entry)
        self._kick()
        try:
            return await future
        except asyncio.CancelledError:
            # Still queued: it is never sent. (Already sent: nothing to undo.)
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)
            raise

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Started eagerly where Python can (3.12+): no trip through the loop
        # before the write goes.
        task = own_task(coroutine)
        if not task.done():
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _alone(self, request: W, future: asyncio.Future[R], *, counted: bool) -> None:
        """One write alone, its outcome on ``future`` (dropped when the caller
        stopped waiting: the write was made all the same)."""
        try:
            result = await self._write_one(request)
        except Exception as error:
            if not future.done():
                future.set_exception(error)
        except BaseException:
            future.cancel()  # this task was cancelled (the loop is closing), or worse
            raise
        else:
            if not future.done():
                future.set_result(result)
        finally:
            if counted:
                self._busy -= 1
                self._kick()

    async def idle(self) -> None:
        """Return once nothing is queued and no write is on its way."""
        while on_their_way := [task for task in self._drains if not task.done()]:
            # (A task done already may still be in the set for a moment: its
            # discard is a callback to come.)
            await asyncio.gather(*on_their_way, return_exceptions=True)

    def _kick(self) -> None:
        """Start a group if writes wait, a slot is free and no group is
        gathering already."""
        if self._queue and self._busy < self._slots and not self._gathering:
            self._busy += 1
            self._gathering = True
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _drain(self) -> None:
        group: list[tuple[W, asyncio.Future[R]]] = []
        finished = False
        try:
            # Let the writes of this burst join: the loop goes round while
            # the queue still grows (the callers a commit woke make theirs).
            size = len(self._queue)
            for _ in range(self.gather_trips):
                await asyncio.sleep(0)
                if len(self._queue) == size:
                    break
                size = len(self._queue)
            self._gathering = False
            take = self._share()
            group = self._queue[:take]
            del self._queue[:take]
            self._kick()  # more than a group's worth: the rest may take another slot
            await self._write_group(group)
            finished = True
        finally:
            self._gathering = False
            self._busy -= 1
            if finished:
                self._kick()
            else:
                # This task itself was cancelled (the loop is closing): nobody
                # will answer these writes, nor those queued, so say so.
                for _, future in group + self._queue:
                    if not future.done():
                        future.cancel()
                self._queue.clear()

    def _share(self) -> int:
        """How many queued writes the next group takes: an even share of the
        queue across the slots, at least ``SHARE_AT_LEAST``, at most
        ``MAX_GROUP``. A cohort of writes (the callers one commit woke) then
        goes as a few groups on their way at once rather than one: the
        server's connections work on them side by side, and the event loop
        handles the first group's callers while the others are still at the
        server, instead of the loop and the server taking turns."""
        share = -(-len(self._queue) // self._slots)  # ceiling
        return min(MAX_GROUP, max(SHARE_AT_LEAST, share))

    async def _write_group(self, group: list[tuple[W, asyncio.Future[R]]]) -> None:
        live = [(request, future) for request, future in group if not future.done()]
        if not live:
            return
        if len(live) > 1:
            self.commits += 1
            self.largest_group = max(self.largest_group, len(live))
            try:
                outcomes = await self._write_many([request for request, _ in live])
            except RetryAlone:
                pass  # rolled back: each on its own below
            except Exception as error:  # a bug in write_many: fail the group
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                return
            else:
                for (_, future), outcome in zip(live, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                return
        for request, future in live:
            if future.done():
                continue
            self.commits += 1
            try:
                result = await self._write_one(request)
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
            else:
                if not future.done():
                    future.set_result(result)
