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
(``journal.settle_inline``), or simply await the future ``submit`` returns.

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
* **A submitted write ends by its deadline.** ``submit`` (the executor's
  hot path) returns a future that refuses cancellation, bounded by the
  write's deadline: a write still queued then is dropped (never sent), and
  so is one whose task has not sent it yet (waiting for a connection) —
  both fail with ``NotSent``, which says that nothing of it was written; one
  sent is reported in doubt (``TimeoutError``; it may land all the same).
  One timer per group (and one for the queue) does this, not one per write.
* **Sent is said by the writer.** ``write_one`` and ``write_many`` call
  ``sending()`` at the last moment before they send anything (a connection
  in hand): it says which of their writes are still to be sent — one
  dropped at its deadline while they waited must not be — and from then on
  the others are on their way, in doubt at their deadline. A writer that
  does not say it calls it (``says_when_sent``) has its writes taken as
  sent from the start: in doubt at their deadline.
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
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from ..errors import SagaStoreError
from ..shielding import own_task
from ._common import JournalFuture
from ._deadline import JOURNAL_DEADLINE

__all__ = ["GroupCommit", "NotSent", "RetryAlone"]

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


# A queued write: the request, its future, its deadline (loop time) or None.
_Entry = tuple[W, "asyncio.Future[R]", float | None]


class RetryAlone(Exception):
    """Raised by ``write_many``: the server refused the group and rolled it
    back; write each request on its own."""


class NotSent(SagaStoreError, TimeoutError):
    """A submitted write's deadline came before any of it was sent (still
    queued, or its task still waiting for a connection): nothing of it was
    written, and nothing of it will be."""

    nothing_written = True


# The writes the current task (a group's, or a write's alone) is about to
# send: (their group commit, their entries); see ``GroupCommit.sending``.
_SENDING: ContextVar[tuple[object, list[Any]] | None] = ContextVar(
    "fallback_saga_sending", default=None
)


def _dropped(future: asyncio.Future[Any]) -> bool:
    """Whether ``future``'s write was ended by its deadline before it was sent."""
    return future.done() and not future.cancelled() and isinstance(future.exception(), NotSent)


class GroupCommit(Generic[W, R]):
    """Writes through ``write_one`` while nothing else is on its way, else
    grouped (see the module docstring). ``write_many`` returns one outcome per request, in
    order: its result, or the exception to raise for it. ``says_when_sent``:
    both call ``sending()`` before they send anything."""

    gather_trips = GATHER_TRIPS

    def __init__(
        self,
        *,
        slots: int,
        write_one: Callable[[W], Awaitable[R]],
        write_many: Callable[[list[W]], Awaitable[list[R | BaseException]]],
        grouped: bool = True,
        says_when_sent: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots!r}")
        self._slots = slots
        self._grouped = grouped
        self._busy = 0  # writes alone and groups on their way
        self._gathering = False  # a group waits for its burst to join
        self._write_one = write_one
        self._write_many = write_many
        self._queue: list[_Entry[W, R]] = []
        # Drops a submitted write still queued at its deadline (never sent).
        self._queue_deadlines: _Deadlines[W, R] = _Deadlines(self._queue, queued=True)
        self._drains: set[asyncio.Task[None]] = set()  # groups and writes alone on their way
        # The futures of the writes on their way that their task has sent
        # (``sending``): in doubt at their deadline; the others are not sent.
        self._sent: set[asyncio.Future[Any]] = set()
        # None: the writer does not call ``sending``; its writes on their
        # way are all taken as sent.
        self._sent_known = self._sent if says_when_sent else None
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
        ``writes_outlive_cancellation``).

        A write the executor makes through a wrapper of the store (its
        deadline in ``JOURNAL_DEADLINE``) is ``submit``'s, bounded by that
        deadline: never sent if it was not sent by then (``NotSent``), as
        on the executor's own path, rather than cancelled with its caller's
        timeout and sent all the same once a connection comes."""
        deadline = JOURNAL_DEADLINE.get()
        if deadline is not None:
            return await self._bounded(request, deadline)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = self._send(request, future, None)
        try:
            return await future
        except asyncio.CancelledError:
            # Still queued: it is never sent. (Already sent: nothing to undo.)
            if entry is not None:
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
            raise

    async def _bounded(self, request: W, deadline: float) -> R:
        """``write``'s for the executor (``JOURNAL_DEADLINE``). The future
        refuses cancellation, and ends by the deadline: the executor's own
        deadline cancels this task at the same moment (a try bounded by
        ``asyncio.timeout_at``), and its ``CancelledError`` then comes once
        the outcome is known. That outcome is the truth of the try, which
        the cancellation would hide (its timeout says "in doubt"): a write
        dropped unsent (``NotSent``, which only its deadline does) is raised
        instead — the deadline's is the only cancellation the executor's
        try can get (its task is its own: ``shielding.settle``)."""
        future = self.submit(request, deadline)
        try:
            return await future
        except asyncio.CancelledError:
            unsent = future.exception() if _dropped(future) else None
            if unsent is None:
                raise
        finally:
            # No local keeps the future: it holds the error raised here,
            # whose traceback holds this frame (a reference cycle).
            future = None  # type: ignore[assignment]
        try:
            raise unsent
        finally:
            unsent = None

    def submit(
        self, request: W, deadline: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[R]:
        """``write`` by a plain call: the write is started or queued at once,
        and its future returned. The future refuses cancellation (a task
        cancelled while awaiting it gets its ``CancelledError`` once the
        outcome is known: ``JournalFuture``) and ends by ``deadline`` (loop
        time; None: no bound) — with ``TimeoutError`` if the write has not
        ended by then: never sent if it was still queued, in doubt if it was
        on its way. (The executor's hot path: no coroutine per write to
        create and drive, no timer per write.) ``loop``: the running loop,
        when the caller has it already (a future made without one looks it
        up: on 3.11 a ``getpid`` system call, once per write)."""
        future: asyncio.Future[R] = JournalFuture(loop=loop)
        self._send(request, future, deadline)
        return future

    def _send(
        self, request: W, future: asyncio.Future[R], deadline: float | None
    ) -> _Entry[W, R] | None:
        """Start the write alone, or queue it (its queue entry)."""
        self.writes += 1
        if not self._grouped or (self._busy == 0 and not self._queue):
            # Not grouping, or nothing else on its way: go now, alone.
            counted = self._grouped
            if counted:
                self._busy = 1
            self.commits += 1
            bound = (None if deadline is None
                     else _Deadlines([(request, future, deadline)], sent=self._sent_known))
            self._start(self._alone(request, future, counted=counted, bound=bound))
            return None
        entry = (request, future, deadline)
        self._queue.append(entry)
        if deadline is not None:
            self._queue_deadlines.watch(deadline)
        self._kick()
        return entry

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Started eagerly where Python can (3.12+): no trip through the loop
        # before the write goes.
        task = own_task(coroutine)
        if not task.done():
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _alone(
        self,
        request: W,
        future: asyncio.Future[R],
        *,
        counted: bool,
        bound: _Deadlines[W, R] | None = None,
    ) -> None:
        """One write alone, its outcome on ``future`` (dropped when the caller
        stopped waiting, or its deadline passed: the write was made all the
        same)."""
        _SENDING.set((self, [(request, future, None)]))  # this task's own context
        try:
            result = await self._write_one(request)
        except Exception as error:
            if not future.done():
                future.set_exception(error)
        except BaseException:
            _stopped(future)  # this task was cancelled (the loop is closing), or worse
            raise
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self._sent.discard(future)
            if bound is not None:
                bound.stop()
            if counted:
                self._busy -= 1
                self._kick()

    def sending(self) -> list[bool] | None:
        """For ``write_one``/``write_many``, at the last moment before they
        send anything: whether each of their writes is still to be sent
        (False: its deadline came while they waited, it was reported not
        sent, and must not be). From now on the others are on their way: in
        doubt at their deadline. None when the caller is not writing for
        this group commit (a statement made outside it)."""
        batch = _SENDING.get()
        if batch is None or batch[0] is not self:
            return None
        live = []
        for _, future, _ in batch[1]:
            dropped = _dropped(future)
            if not dropped:
                self._sent.add(future)
            live.append(not dropped)
        return live

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
        group: list[_Entry[W, R]] = []
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
                for _, future, _ in group + self._queue:
                    if not future.done():
                        _stopped(future)
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

    async def _write_group(self, group: list[_Entry[W, R]]) -> None:
        live = [entry for entry in group if not entry[1].done()]
        if not live:
            return
        bound = _Deadlines(live, sent=self._sent_known)  # no timer when no write has a deadline
        try:
            await self._write_live(live)
        finally:
            bound.stop()

    async def _write_live(self, live: list[_Entry[W, R]]) -> None:
        if len(live) > 1:
            self.commits += 1
            self.largest_group = max(self.largest_group, len(live))
            _SENDING.set((self, live))  # this task's own context
            try:
                outcomes = await self._write_many([request for request, _, _ in live])
            except RetryAlone:
                # Rolled back: each on its own below, sent again only then.
                self._sent.difference_update(future for _, future, _ in live)
            except Exception as error:  # a bug in write_many: fail the group
                for _, future, _ in live:
                    if not future.done():
                        future.set_exception(error)
                return
            else:
                for (_, future, _), outcome in zip(live, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                return
            finally:
                self._sent.difference_update(future for _, future, _ in live)
        for entry in live:
            request, future, _ = entry
            if future.done():
                continue
            self.commits += 1
            _SENDING.set((self, [entry]))
            try:
                result = await self._write_one(request)
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
            else:
                if not future.done():
                    future.set_result(result)
            finally:
                self._sent.discard(future)


def _stopped(future: asyncio.Future[Any]) -> None:
    """Nobody will answer this write (its task was cancelled: the loop is
    closing): cancel its future, or fail one that refuses cancellation."""
    if not future.done() and not future.cancel():
        future.set_exception(
            SagaStoreError("the store stopped before this journal write's outcome was known")
        )


class _Deadlines(Generic[W, R]):
    """Ends each submitted write of ``entries`` (a list, perhaps one that
    changes: the queue) not done by its deadline, with ``TimeoutError``: one
    timer at a time, at the soonest deadline. ``queued``: the writes are
    still queued — one at its deadline leaves the queue, never sent
    (``NotSent``); else they are on their way: in doubt if their future is
    in ``sent``, else not sent yet, and never to be (``NotSent``)."""

    __slots__ = ("_due", "_entries", "_queued", "_sent", "_timer")

    def __init__(
        self, entries: list[_Entry[W, R]], *, queued: bool = False,
        sent: set[asyncio.Future[Any]] | None = None,
    ) -> None:
        self._entries = entries
        self._queued = queued
        self._sent = sent
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # the deadline the timer is set for
        if not queued:
            self._arm()

    def watch(self, deadline: float) -> None:
        """A write with this deadline joined ``entries``."""
        if self._timer is None or deadline < self._due:
            self.stop()
            self._due = deadline
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        soonest = min(
            (deadline for _, future, deadline in self._entries
             if deadline is not None and not future.done()),
            default=None,
        )
        self._timer = None
        if soonest is not None:
            self._due = soonest
            self._timer = asyncio.get_running_loop().call_at(soonest, self._expire)

    def _expire(self) -> None:
        # The loop runs a timer up to its clock's resolution early: the
        # deadline it was set for has come all the same.
        now = max(asyncio.get_running_loop().time(), self._due)
        expired = [entry for entry in self._entries
                   if entry[2] is not None and entry[2] <= now and not entry[1].done()]
        for entry in expired:
            if self._queued:
                self._entries.remove(entry)
                entry[1].set_exception(NotSent(
                    "the journal write was still queued at its deadline: it was not sent, "
                    "nothing of it was written"))
            elif self._sent is not None and entry[1] not in self._sent:
                # Its task still waits (for a connection): it sends only
                # what ``sending`` says is still to be sent.
                entry[1].set_exception(NotSent(
                    "the journal write was still waiting to be sent at its deadline (no "
                    "connection yet): it was not sent, nothing of it was written"))
            else:
                entry[1].set_exception(TimeoutError(
                    "the journal write was on its way at its deadline: it may have landed"))
        self._arm()
