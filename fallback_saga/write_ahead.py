"""A run's journal, and how it reaches a write-ahead store.

The executor appends every transition to the run's ``journal`` as it
happens; ``flush`` makes whatever the store does not have yet durable in one
write — right before the next ``act`` or ``compensate`` is called (the
write-ahead: a step's STARTED is durable before it runs), and at the end
(the terminal status). The write is retried under the saga's
``journal_retry`` and, once sent, runs to its end even if the run's task is
cancelled meanwhile: the cancellation is raised once the executor knows what
the journal holds (S13). An in-process store (``LiveJournal``) watches the
run instead and is never written to: none of this runs for it.

``JournaledRun`` is the part of a run (``executor.Execution``) that owns
this bookkeeping; the executor, which drives the steps, is its subclass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from .context import context_to_dict
from .errors import ContextSerializationError, described
from .journal import JournalWrite, NotDurable, settle_inline, write_durably
from .run_settings import RunSettings
from .shielding import cancellation_pending, cancelled_again, land_pending_cancellation, settle
from .status import SagaStatus
from .step import StepCursor
from .store._responses import journal_entry
from .store.base import JournalEntry, Lease, RawEntry, SagaStore

__all__ = ["JournalWriteFailed", "JournaledRun"]


class JournalWriteFailed(BaseException):
    """Internal: the store failed a write-ahead for good (after the retries).

    A ``BaseException`` on purpose: raised inside a breaker-guarded call, it
    must not count against the downstream service, trigger a fallback or be
    retried. The executor unwraps it.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class JournaledRun(StepCursor):
    """A run's journal and its write-ahead state (see the module's docstring).

    ``Execution.__init__`` sets these fields (inlined there: a run is started
    on the hot path of every saga); on an in-process store, those from
    ``initial_context`` on are never set: nothing is written ahead then.
    """

    __slots__ = (
        "abandoned",
        "context",
        "context_dirty",
        "context_refused",
        "created",
        "doubted_by",
        "fence",
        "initial_context",
        "interruption",
        "journal",
        "journaled_status",
        "landed_unseen",
        "note",
        "pending_status",
        "settings",
        "store",
        "write_lock",
        "write_loop",
        "written",
    )

    context: Any
    settings: RunSettings
    store: SagaStore
    journal: list[RawEntry]
    created: bool  # the store holds the saga (its creation is durable)
    context_dirty: bool  # a step changed the context since the last write
    # Set while a Parallel group runs: its members write one at a time.
    write_lock: asyncio.Lock | None
    # The status the journal holds (None until the creation is durable), and
    # the store failure that stopped this run, if one did (S13).
    journaled_status: SagaStatus | None
    interruption: BaseException | None
    # The interrupting write may have landed unseen: the status it carried.
    landed_unseen: SagaStatus | None
    # And the error of the try that left it in doubt, when the last error is
    # another's (``SagaInterrupted.doubted_by``): a text, which holds no
    # frame. Set only then (never at the start of a run: the hot path), so
    # read with a default.
    doubted_by: str | None
    abandoned: BaseException | None  # see UnwindingRun.abandon
    initial_context: dict[str, Any] | None  # the creation's, in journal form
    written: int  # journal entries the store already has
    pending_status: SagaStatus | None  # the status the next write carries
    context_refused: bool  # the store refused the context a step left
    fence: Lease  # every write is conditional on its token
    # Said once, by the first row this run writes: who resumed it, when an
    # operator did (``Saga.resume(operator=...)``), as a reopening names who
    # reopened it (reopening.py) — the journal is the one trace that stays.
    note: str | None
    # The event loop the writes' deadlines are read on: the running loop of
    # the run's first write (None before it), which every write of the run
    # runs on — its task's, or its group members' on the same loop. Looked
    # up once a run rather than once a write: on 3.11 each look-up is a
    # ``getpid`` system call (benchmarks/README.md, PostgreSQL sixth pass).
    # The store still checks the running loop at every write (PostgreSQL's
    # refuses another loop's, a forked child's).
    write_loop: asyncio.AbstractEventLoop | None

    def interrupt(self, error: BaseException) -> None:
        """The journal failed where this run does not write itself (a child
        saga's record): from now on every write of this run fails with
        ``error``, so the run stops and is left for recovery (S13)."""
        if self.interruption is None:
            self.interruption = error

    def flush(self, *, unwinding: bool = False) -> Awaitable[None]:
        """``_flush``, one write at a time while the members of a group run.

        A plain function returning the coroutine to await: outside a group,
        that is ``_flush``'s own (one coroutine fewer per journal write)."""
        lock = self.write_lock
        if lock is None:
            return self._flush(unwinding)
        return self._flush_locked(lock, unwinding)

    def _say_note(self, journal: list[RawEntry], written: int) -> None:
        """Put ``note`` on the first row still to write (a STARTED row: the
        write-ahead of the run's first call, which says nothing else)."""
        first = journal[written]
        if first[6] is None:
            journal[written] = (*first[:6], self.note, *first[7:])
            self.note = None

    async def _flush_locked(self, lock: asyncio.Lock, unwinding: bool) -> None:
        async with lock:
            await self._flush(unwinding)

    async def _flush(self, unwinding: bool) -> None:
        """Make every transition the store does not have yet durable (and the
        status and context when they changed): the write-ahead of the next
        call, or the terminal write.

        The write is retried under ``journal_retry`` and, once sent, runs to
        its end even if this task is cancelled meanwhile: the cancellation is
        raised afterwards, when the executor knows what the journal holds.
        Raises ``JournalWriteFailed`` when the write failed for good; from
        then on every write of this run fails the same way, at once.
        ``unwinding``: a context the journal cannot encode is left out (the
        last good one stays) rather than stopping the compensations.
        """
        if self.abandoned is not None:
            raise JournalWriteFailed(self.abandoned)
        if self.interruption is not None:
            raise JournalWriteFailed(self.interruption)
        journal = self.journal
        written = self.written
        status = self.pending_status
        if self.created and written == len(journal) and status is None:
            return
        if self.note is not None and written < len(journal):
            self._say_note(journal, written)
        saga_name = self.saga_name
        entries = [journal_entry(raw, saga_name) for raw in journal[written:]]
        try:
            context = self._encode_context(unwinding)
        except ContextSerializationError as error:
            raise JournalWriteFailed(error) from error
        # Clean from here: a group member that changes the context while this
        # write is in flight marks it dirty again, for the next write.
        was_dirty, self.context_dirty = self.context_dirty, False
        create = not self.created
        if create:
            status = status or SagaStatus.RUNNING
            if context is None:
                context = self.initial_context
        store = self.store
        settings = self.settings
        # Whether this task surely waited in the write, where a cancellation
        # asked for before it would have landed (see the end).
        waited = False
        if settings.submitted_writes:
            # The hot path of durable sagas (SQLite, PostgreSQL): the first try
            # is queued by a plain call and its future awaited right here (no
            # task, no coroutine to drive); a failure goes on to the retries.
            # The future refuses cancellation: a cancellation of this task
            # arrives once the write's outcome is known (see settle_inline).
            # The store ends it by the deadline, as settle_inline would.
            deadline = self._deadline()
            failure: BaseException | None = None
            cancelled: asyncio.CancelledError | None = None
            try:
                if create:
                    written_by = store.submit_create(  # type: ignore[attr-defined]
                        self.saga_id, saga_name, settings.fingerprint, context, entries, status,
                        deadline)
                else:
                    written_by = store.submit_append(  # type: ignore[attr-defined]
                        self.saga_id, entries, status, context, self.fence, written, deadline)
            except Exception as error:  # bad input: nothing was queued
                failure = error
            else:
                while not written_by.done():
                    waited = True
                    try:
                        await written_by
                    except asyncio.CancelledError as caught:
                        # Arrives once the write's outcome is known (its message kept).
                        cancelled = cancelled or caught
                    except BaseException:
                        break  # the write's own failure: read below
                failure = written_by.exception()
            if failure is not None:
                # Raised into this frame: no local keeps it (see the end).
                written_by = None
                failure, later = await settle(write_durably(
                    store, self._write(create, entries, status, context), settings.journal_retry,
                    deadline=deadline, failed=failure,
                ))
                cancelled = cancelled or later
        elif settings.inline_writes:
            # The hot path of durable sagas: the first try is made right here,
            # without a task or a record of the write; a failure goes on to
            # the retries.
            if create:
                first = store.create(self.saga_id, self.saga_name, settings.fingerprint,
                                     context, entries, status=status)  # type: ignore[arg-type]
            else:
                first = store.append(  # type: ignore[call-arg]
                    self.saga_id, entries, status=status, context=context, fence=self.fence,
                    after=written,  # SQLite's and PostgreSQL's stores are conditional
                ) if settings.conditional else store.append(
                    self.saga_id, entries, status=status, context=context, fence=self.fence
                )
            # One deadline for all the tries, the first one included.
            deadline = self._deadline()
            failure, cancelled = await settle_inline(first, deadline)
            if failure is not None:
                failure, later = await settle(write_durably(
                    store, self._write(create, entries, status, context), settings.journal_retry,
                    deadline=deadline, failed=failure,
                ))
                cancelled = cancelled or later
        else:
            failure, cancelled = await settle(write_durably(
                store, self._write(create, entries, status, context), settings.journal_retry,
                deadline=self._deadline(),
            ))
        if cancelled is None and not waited and cancellation_pending():
            # Asked for while nothing waited: it lands in this write (see
            # land_pending_cancellation). A durable store's write always waits
            # (and pays nothing here); SQLite's writer="inline" answers at once.
            cancelled = await land_pending_cancellation()
        in_doubt = True
        if isinstance(failure, NotDurable):
            in_doubt = failure.in_doubt
            if failure.doubted_by is not None:  # (in doubt: the run stops below)
                self._doubted(failure.doubted_by, failure.error)
            failure = failure.error
        if failure is None:
            self.created = True
            self.written = written + len(entries)
            if status is not None:
                self.journaled_status = status
            self.pending_status = None
        elif isinstance(failure, ContextSerializationError) and self.created:
            # The store cannot hold the context a step left: the run unwinds
            # (see fail), journaling without it — the last good one stays.
            self.context_refused = True
            if unwinding and context is not None:
                # Left by a compensation: its transitions are written again
                # at once without it, as for a context that cannot be
                # encoded (_encode_context). Stopping here would leave the
                # saga for a recovery whose compensation would leave the
                # same context, to be refused again, at every pass.
                failure = None
                self.context_dirty = was_dirty
                try:
                    await self._flush(unwinding)
                finally:
                    if cancelled is not None:
                        # No later write, once the unwinding is done: say it now.
                        raise cancelled_again(cancelled)
                return
        else:
            self.interruption = failure
            if in_doubt:
                self.landed_unseen = status or self.journaled_status
        if failure is not None and was_dirty:
            self.context_dirty = True  # the context it carried is not journaled
        if cancelled is not None or failure is not None:
            try:
                if cancelled is not None:
                    raise cancelled_again(cancelled)
                assert failure is not None
                raise JournalWriteFailed(failure) from failure
            finally:
                # No frame local keeps the failure: its traceback can hold
                # this frame (a try started eagerly, in this task's step).
                failure = None

    def _doubted(self, doubted_by: BaseException, error: BaseException) -> None:
        """Keep what ``doubted_by``, the error that left the interrupting
        write in doubt, says — as the message quotes ``error``, the last
        one (``described``: cut) — unless it says the same."""
        text = described(doubted_by)
        if text != described(error):
            self.doubted_by = text

    def _write(
        self,
        create: bool,
        entries: list[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
    ) -> JournalWrite:
        settings = self.settings
        return JournalWrite(self.saga_id, self.saga_name, settings.fingerprint, create, entries,
                            status, context, self.fence, self.written, settings.conditional)

    def _deadline(self) -> float | None:
        timeout = self.settings.journal_timeout
        if timeout is None:
            return None
        loop = self.write_loop
        if loop is None:
            self.write_loop = loop = asyncio.get_running_loop()
        return loop.time() + timeout

    def _encode_context(self, unwinding: bool) -> dict[str, Any] | None:
        if not self.context_dirty or (unwinding and self.context_refused):
            return None
        try:
            return context_to_dict(self.context)
        except ContextSerializationError:
            if not unwinding:
                raise
            return None  # keep journaling the transitions; the last good context stays
