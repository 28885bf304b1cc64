"""Journal writes that tell the truth through store faults and cancellation (S13).

The executor never calls an ``act`` or a ``compensate`` before its STARTED
record is durable, and never reports a status before the journal holds it.
This module is how one write becomes durable, or fails for good:

* **A bounded retry.** A write the store refuses is tried again under the
  saga's ``journal_retry`` policy (capped, jittered backoff). Refusals that a
  retry cannot change — ``LeaseLost`` (another worker owns the saga),
  ``SagaAlreadyExists``, ``SagaNotFound``, ``CorruptSagaRecord`` — end it at once.
* **In-doubt writes are reconciled, never repeated blindly.** A failed write
  may still have landed (a connection lost after ``COMMIT`` was sent, a
  timeout). Appending it again would journal a step twice, so before each
  retry the saga is loaded and the write counts as done when the store holds
  it already. The executor knows how many entries the store held before the
  write, so "landed" and "not landed" are told apart exactly; anything else
  means another writer and stops the run. "Not landed" proves nothing for
  good (the try may commit a moment later): the retry is sent only where a
  late landing cannot double it — a creation, an append on the journal's
  length (``appends_after``), a status change alone. An append of entries
  to a store without ``appends_after`` stops the run in doubt instead.
* **A bounded time.** A store that does not answer at all (a PostgreSQL
  server that is down keeps a pool waiting for a connection) is as
  unavailable as one that refuses: all the tries of one write, their waits
  included, fit in the saga's ``journal_timeout``; a try still running at the
  deadline is abandoned, and counts as in doubt. The first try made inline
  (``settle_inline``) is bounded by the same deadline.
* **An honest failure.** When the budget is spent, ``NotDurable`` says
  whether the write may have landed after all (in doubt): the executor then
  reports both statuses the journal may hold, never a guess.
* **A write is never abandoned half-way.** Once sent, it runs to its end in a
  task of its own, even if the saga's task is cancelled meanwhile;
  ``shielding.settle`` reports the cancellation only afterwards, so the executor always
  knows what the store holds when it handles the cancellation.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import (
    ContextSerializationError,
    CorruptSagaRecord,
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaBusy,
    SagaNotFound,
    StoreClosed,
)
from .retry import RetryPolicy
from .shielding import reset_var
from .status import SagaStatus
from .store._deadline import JOURNAL_DEADLINE
from .store.base import JournalEntry, Lease, SagaStore

__all__ = [
    "DEFAULT_JOURNAL_RETRY",
    "DEFAULT_JOURNAL_TIMEOUT",
    "JournalWrite",
    "NotDurable",
    "send",
    "settle_inline",
    "submits_writes",
    "write_durably",
    "writes_outlive_cancellation",
]

# About 1.5 s of a store refusing writes before a run stops and leaves its saga
# for recovery: long enough to ride out a failover's first seconds or a locked
# file, short enough that a caller is not kept waiting on a store that is down.
DEFAULT_JOURNAL_RETRY = RetryPolicy(attempts=6, delay=0.05, backoff=2.0, max_delay=1.0,
                                    jitter=0.05)

# Seconds all the tries of one write may take, waits included: a store that
# does not answer (a server down, a pool waiting for a connection) stops the
# run within this, rather than after every try's own driver timeout.
DEFAULT_JOURNAL_TIMEOUT = 10.0

# Refusals a retry cannot change (a context the store cannot hold included,
# and a store that was closed: it does not come back).
_DEFINITIVE = (
    LeaseLost, SagaAlreadyExists, SagaNotFound, CorruptSagaRecord, SagaBusy,
    ContextSerializationError, StoreClosed,
)


@dataclass(slots=True)
class JournalWrite:
    """One write of the executor: a saga's creation, or an append."""

    saga_id: str
    saga_name: str
    fingerprint: str
    create: bool
    entries: list[JournalEntry]
    status: SagaStatus | None
    context: dict[str, Any] | None
    fence: Lease | None
    held: int  # how many entries the store holds before this write
    conditional: bool = False  # the store takes append(..., after=held)


class NotDurable(Exception):
    """``write_durably`` gave up: ``error`` is the store's last error;
    ``in_doubt``: the write may have landed all the same (it failed in a way
    that does not say, and no later read could tell); ``doubted_by``: the
    error of the try that left it in doubt, when that is not ``error`` (the
    read that would have told failed too, differently: a connection lost
    mid-commit, then a pool that gets none) — else None."""

    def __init__(
        self, error: BaseException, in_doubt: bool, doubted_by: BaseException | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.in_doubt = in_doubt
        self.doubted_by = doubted_by if in_doubt and doubted_by is not error else None


async def write_durably(
    store: SagaStore,
    write: JournalWrite,
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    failed: BaseException | None = None,
) -> None:
    """Make ``write`` durable in ``store``, retrying under ``policy`` until the
    loop time ``deadline``; raises ``NotDurable`` when the budget is spent or
    the refusal is definitive. ``failed``: the first try was made already (in
    the caller's task) and failed with that error."""
    window: asyncio.Timeout | None = None
    # The error of the try that first left the write in doubt: told with the
    # last one when the run stops (the last is often only a read's).
    doubter: BaseException | None = None
    # Each try's deadline, for a store that ends a write by it itself (see
    # JOURNAL_DEADLINE): set in this task's own context (settle's).
    bound = JOURNAL_DEADLINE.set(deadline)
    try:
        attempt = 1
        in_doubt = False
        if failed is not None:
            if isinstance(failed, (*_DEFINITIVE, JournalConflict)):
                raise NotDurable(failed, in_doubt=False)
            in_doubt = _may_have_landed(failed)
            error: BaseException = failed
            if in_doubt:
                doubter = failed
        else:
            try:
                async with asyncio.timeout_at(deadline) as window:
                    await send(store, write)
                if not window.expired():
                    return
                # It returned after the deadline had cancelled it: a driver
                # that swallowed the cancellation — whether it wrote first
                # or not, nothing says. In doubt, as if it had raised.
                error, in_doubt = TimeoutError(), True
                doubter = error
            except (*_DEFINITIVE, JournalConflict) as refused:
                raise NotDurable(refused, in_doubt=False) from refused
            except Exception as first:
                error, in_doubt = first, _may_have_landed(first)
                if in_doubt:
                    doubter = first
        while True:
            # A failed try may have landed (in_doubt): before another, ask the store.
            # A read that does not find it clears nothing: the try may be
            # a transaction still in flight on the server (its client gave
            # up at the deadline, or lost the connection, while the server
            # waited on a lock or an fsync), which commits after the read.
            # Only a write that makes its landing impossible settles it: a
            # conditional append on the same length that succeeds, or is
            # refused as a conflict; a creation, which the saga's id makes
            # conditional. Until then the write stays in doubt, whatever the
            # later tries' errors say of themselves (nothing_written).
            if not policy.should_retry(error, attempt) or not await _wait(
                policy, attempt + 1, deadline
            ):
                raise NotDurable(error, in_doubt, doubter) from error
            attempt += 1
            unsettled = False
            try:
                async with asyncio.timeout_at(deadline) as window:
                    if not (in_doubt and await _landed(store, write)):
                        if in_doubt and not _repeatable(write):
                            # The read did not find it, which proves nothing
                            # (see above), and this store cannot make the
                            # retry conditional: sent again, the entries
                            # would be journaled twice if the first try
                            # commits late. The run ends in doubt instead.
                            unsettled = True
                        else:
                            await _send_again(store, write, in_doubt)
                if window.expired():
                    error, in_doubt = TimeoutError(), True  # past its deadline: see the first try
                    if doubter is None:
                        doubter = error
                elif not unsettled:
                    return
            except (*_DEFINITIVE, JournalConflict) as refused:
                # A creation found to be another run's: this one's did not
                # land, and cannot (the id is taken). Any other refusal
                # leaves an earlier try as much in doubt as it was.
                landed_maybe = in_doubt and not isinstance(refused, SagaAlreadyExists)
                raise NotDurable(refused, landed_maybe, doubter) from refused
            except Exception as failure:
                # An earlier try still in doubt stays so (see above).
                error, in_doubt = failure, in_doubt or _may_have_landed(failure)
                if in_doubt and doubter is None:
                    doubter = failure
            if unsettled:
                raise NotDurable(error, True, doubter) from error
    finally:
        # No local may keep an error once this ends: each holds this frame
        # in its traceback (a reference cycle, which would keep the write
        # and the frames of its tries alive until the collector runs), nor
        # a try's timeout (it holds this task, which holds the error).
        error = failed = doubter = None  # type: ignore[assignment]
        window = None
        # (Nor the token: it holds this task's context.)
        reset_var(JOURNAL_DEADLINE, bound)
        bound = None  # type: ignore[assignment]


async def _send_again(store: SagaStore, write: JournalWrite, in_doubt: bool) -> None:
    """A retry of ``write``, once the store was found not to hold it (or a
    failed try said it wrote nothing)."""
    try:
        await send(store, write)
    except JournalConflict:
        # The try reconciled a moment ago as "not landed" landed after all
        # (a commit still in flight on the server when we read): the
        # conditional append refused to repeat it.
        if not (write.conditional and await _landed(store, write)):
            raise
    except SagaAlreadyExists:
        # The same for a creation: the earlier try's row may be what
        # refused this one.
        if not (in_doubt and await _landed(store, write)):
            raise


def _repeatable(write: JournalWrite) -> bool:
    """Whether ``write`` may be sent again while an earlier try of it is in
    doubt: a try that lands late cannot then make it land twice. So it is
    with a creation (the saga's id makes it conditional), an append on the
    journal's length (``appends_after``), or a status change alone (the same
    status and context, set twice). An append of entries to a store without
    ``appends_after`` is not: its entries would be journaled twice."""
    return write.create or write.conditional or not write.entries


def _may_have_landed(error: BaseException) -> bool:
    """Whether a failed try may have been written all the same: yes, unless
    the store says it wrote nothing (``SagaStoreError.nothing_written``:
    refused before it could commit). Then no read is needed before the next
    try, and a run that stops on it is not in doubt."""
    return not getattr(error, "nothing_written", False)


async def _wait(policy: RetryPolicy, attempt: int, deadline: float | None) -> bool:
    """Wait before try ``attempt``; False when the deadline comes first."""
    if deadline is None:
        await policy.wait_before(attempt)
        return True
    loop = asyncio.get_running_loop()
    if loop.time() >= deadline:
        return False
    try:
        async with asyncio.timeout_at(deadline):
            await policy.wait_before(attempt)
    except TimeoutError:
        return False
    return True


async def send(store: SagaStore, write: JournalWrite) -> None:
    """One try of ``write``."""
    if write.create:
        await store.create(
            write.saga_id,
            write.saga_name,
            write.fingerprint,
            write.context if write.context is not None else {},
            write.entries,
            status=write.status or SagaStatus.RUNNING,
        )
    else:
        if write.conditional:
            await store.append(  # type: ignore[call-arg]
                write.saga_id, write.entries, status=write.status, context=write.context,
                fence=write.fence, after=write.held,
            )
        else:
            await store.append(
                write.saga_id, write.entries, status=write.status, context=write.context,
                fence=write.fence,
            )


async def _landed(store: SagaStore, write: JournalWrite) -> bool:
    """Whether an earlier try of ``write`` reached the store after all.

    Only this write's own entries count: the store must hold them where the
    write put them, each the same transition at the same clock reading. A
    saga someone else created under the same id (a client retrying a request
    while the first run drives it) is not this run's creation, however alike."""
    try:
        record = await store.load(write.saga_id)
    except SagaNotFound:
        if write.create:
            return False
        raise
    history = record.history
    have = len(history)
    if write.create:
        created = len(write.entries)
        if (
            record.saga_name != write.saga_name
            or record.fingerprint != write.fingerprint
            or not _same_entries(history[:created], write.entries)
        ):
            raise SagaAlreadyExists(write.saga_id)  # not this run's creation
        if have == created:
            return True
        raise JournalConflict(write.saga_id, created, have)  # ours, written on by another
    if not write.entries:  # a status change alone
        return record.status is write.status
    if have == write.held + len(write.entries) and _same_entries(
        history[write.held:], write.entries
    ):
        return True
    if have == write.held:
        return False
    raise JournalConflict(write.saga_id, write.held, have)


def _same_entries(stored: Sequence[JournalEntry], written: Sequence[JournalEntry]) -> bool:
    """Whether ``stored`` are the entries ``written``: the same transitions
    (position, step, branch, action, status, attempt) at the same clock
    readings — to the microsecond, all a store must keep (``testing``'s
    contract). The texts are left out: a store may have to make an error's
    text storable (PostgreSQL and a NUL)."""
    return len(stored) == len(written) and all(
        s[:6] == w[:6] and abs(s.at - w.at) <= _CLOCK_KEPT
        for s, w in zip(stored, written, strict=True)
    )


_CLOCK_KEPT = 1e-6  # seconds


def writes_outlive_cancellation(store: object) -> bool:
    """Whether ``store`` says its ``create``/``append`` coroutines bind nothing
    to the current task (no ``asyncio.timeout``, no ``wait_for``, no
    ``current_task()``: they are driven from the saga's task, not one of their
    own), and once suspended finish the write whatever happens to the
    awaiting task (``SQLiteSagaStore``: the write is on its writer thread's
    queue; ``PostgresSagaStore``: on its group commit's, written by a task of
    its own). ``settle_inline`` is then safe."""
    return getattr(store, "writes_outlive_cancellation", False) is True


def submits_writes(store: object) -> bool:
    """Whether ``store`` (one whose writes outlive cancellation) also queues
    a journal write by a plain call: ``submit_create(saga_id, saga_name,
    fingerprint, context, entries, status, deadline)`` and
    ``submit_append(saga_id, entries, status, context, fence, after,
    deadline)`` raise on bad input, else return the write's future, which
    refuses cancellation and ends with the write's outcome (``SQLiteSagaStore``,
    ``PostgresSagaStore``). ``deadline`` (loop time, or None) is the run's
    ``journal_timeout``, for the store to end the write by: PostgreSQL's
    group commit fails a write still unanswered then with ``TimeoutError``,
    as ``settle_inline`` would. (SQLite's writers do not take it: they
    bound a write by their own means, a lock by ``busy_timeout``.) The
    executor then awaits that future itself: no coroutine per write to
    create and drive.

    Asked of the class, and only where ``create`` and ``append`` are the
    submitting class's own: a wrapper delegating through ``__getattr__`` or a
    subclass overriding ``create``/``append`` (to count or trace writes) must
    see every write, so it gets the coroutine path."""
    cls = type(store)
    if getattr(cls, "submits_writes", False) is not True or not writes_outlive_cancellation(store):
        return False
    owner = _defined_by(cls, "submit_append")
    return owner is not None and all(
        _defined_by(cls, name) is owner for name in ("submit_create", "create", "append")
    )


def _defined_by(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


class _Deadline:
    """The deadline of one inline try (``settle_inline``): once it passes,
    ``expired``, and the wait in progress (on ``gate``) is woken; the try is
    then ``abandoned``."""

    __slots__ = ("abandoned", "expired", "gate")

    def __init__(self) -> None:
        self.expired = False
        self.abandoned = False
        self.gate: asyncio.Future[None] | None = None

    def expire(self) -> None:
        self.expired = True
        _open(self.gate)


def _open(gate: asyncio.Future[None] | None, _done: object = None) -> None:
    """Wake the wait on ``gate``: what it waited for is done, or its time is up."""
    if gate is not None and not gate.done():
        gate.set_result(None)


async def settle_inline(
    coroutine: Coroutine[Any, Any, None], deadline: float | None = None
) -> tuple[BaseException | None, asyncio.CancelledError | None]:
    """``settle`` without a task of its own, for a store whose writes outlive
    cancellation: the coroutine is driven right here, and a cancellation of
    this task never reaches it (each future it waits on is awaited through a
    gate of ours, which is all that cancellation can cancel). (The hot path
    of durable sagas: a task per write costs a third of the throughput with
    a hundred sagas in flight.)

    ``deadline`` (loop time) bounds the try as ``write_durably`` bounds each
    of its own with ``asyncio.timeout_at``: a try still waiting at the
    deadline is abandoned — the future it waits on is cancelled, as a task's
    cancellation would cancel it, and the coroutine is driven to its end —
    and fails with ``TimeoutError`` (in doubt: it may land after all), even
    if it returned normally (a driver that swallowed the cancellation may
    have written, or not). A future that refuses cancellation (the SQLite
    store's journal future: its writer bounds each write itself) is waited
    for to its end either way."""
    # The first cancellation of this task while the write ran (it carries the
    # caller's message), for the caller to raise once the write is done.
    cancelled: asyncio.CancelledError | None = None
    clock: _Deadline | None = None
    timer: asyncio.TimerHandle | None = None
    throw = False  # a future that refused the deadline's cancellation is done: say it now
    # For a store that ends the write by its deadline itself (JOURNAL_DEADLINE):
    # set while the coroutine is driven here (this task does nothing else meanwhile).
    bound = JOURNAL_DEADLINE.set(deadline)
    try:
        while True:
            try:
                if throw:
                    throw = False
                    waiting_on = coroutine.throw(asyncio.CancelledError())
                else:
                    waiting_on = coroutine.send(None)
            except StopIteration:
                if clock is not None and clock.abandoned:
                    # It finished after the deadline had cancelled it: a
                    # driver that swallowed the cancellation, whether it
                    # wrote first or not — in doubt, as if it had raised.
                    return TimeoutError(), cancelled
                return None, cancelled
            except asyncio.CancelledError as error:
                if clock is not None and clock.abandoned:
                    return TimeoutError(), cancelled
                return error, cancelled
            except Exception as error:
                return error, cancelled
            if waiting_on is None:  # a bare yield: let the loop run once
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError as caught:
                    cancelled = cancelled or caught
                continue
            waiting_on._asyncio_future_blocking = False  # as a task would: it is ours now
            if getattr(waiting_on, "outlives_cancellation", False) is True:
                # Awaited directly: a cancellation of this task then arrives
                # once it is done, and costs no extra wake-up.
                while not waiting_on.done():
                    try:
                        await waiting_on
                    except asyncio.CancelledError as caught:
                        if waiting_on.cancelled():
                            break  # the store cancelled its own future: the coroutine sees it
                        cancelled = cancelled or caught
                    except BaseException:
                        break  # the future's error: the coroutine sees it when resumed
                continue
            loop = waiting_on.get_loop()
            if deadline is not None and clock is None:
                # Armed at the first wait that may take long (none, for a
                # write that never waits on such a future).
                clock = _Deadline()
                if loop.time() >= deadline:
                    clock.expired = True
                else:
                    timer = loop.call_at(deadline, clock.expire)
            while not waiting_on.done():
                if clock is not None and clock.expired and not clock.abandoned:
                    clock.abandoned = True
                    # The future is done now (the coroutine then sees its
                    # CancelledError), or will be (a task winding up), or
                    # refused: the CancelledError goes in once it is done.
                    throw = not waiting_on.cancel()
                    continue
                gate: asyncio.Future[None] = loop.create_future()
                waiting_on.add_done_callback(functools.partial(_open, gate))
                if clock is not None:
                    clock.gate = gate
                try:
                    await gate
                except asyncio.CancelledError as caught:
                    cancelled = cancelled or caught  # only our cancellation can cancel the gate
    finally:
        reset_var(JOURNAL_DEADLINE, bound)
        bound = None  # type: ignore[assignment]  # (it holds this task's context)
        if timer is not None:
            timer.cancel()
