"""``ClaimedSaga``: one claimed saga, from loading it to giving its lease
back (``recover`` and ``RecoveryWorker`` share it). It reports the saga's
outcome only as the journal holds it (S10, S13); how that outcome gives the
lease back is lease_give_back.py's part, and how the saga is resumed under
its lease (heartbeat, fencing, hand-offs) resumption.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .claims_here import HeldClaim
from .errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    StoreClosed,
    described,
)
from .events import collect_hooks, emit
from .lease_give_back import give_back_once, lease_return
from .resumption import LeasedRun, SagaHandedOff, check_definition
from .saga import Saga
from .status import StepStatus
from .store._parking import warn_if_last_claim
from .store.base import Lease, RecoverableStore, SagaRecord
from .subsaga import parent_saga_id

__all__ = ["ClaimedSaga", "Outcome", "children_first"]

# What became of one claimed saga: completed, compensated, failed (needs an
# operator), interrupted (the journal failed; with a reason), skipped (with a
# reason), lost (the lease; with a reason), handed_off.
Outcome = tuple[str, str | None]
_CANCELLED: Outcome = ("handed_off", "the recovery was cancelled")


class ClaimedSaga:
    """A claimed saga, from loading it to releasing its lease (recover and
    ``RecoveryWorker`` share this)."""

    def __init__(
        self,
        store: RecoverableStore,
        by_name: dict[str, Saga[Any]],
        lease: Lease,
        *,
        lease_seconds: float,
        listeners: tuple[object, ...] = (),
        allow_changed_definition: bool = False,
        skip_for: float | None = None,
        retry_in: float | None = None,
        hand_off_when_cancelled: bool = False,
    ) -> None:
        self.store = store
        # A worker's: a cancellation that reaches the saga's run directly
        # (the event loop shutting down) hands it off, as the worker's own
        # shutdown does; a ``recover`` pass cancelled unwinds its sagas (S8).
        self.hand_off_when_cancelled = hand_off_when_cancelled
        self.by_name = by_name
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.listeners = listeners
        self.allow_changed_definition = allow_changed_definition
        # Seconds a skipped saga stays out of claims (a worker's lease), or
        # None: released, claimable at once (a one-off ``recover`` pass).
        self.skip_for = skip_for
        # Seconds an interrupted saga stays out of claims (a worker's
        # backoff), or None: released, claimable at once (``recover``).
        self.retry_in = retry_in
        self.saga_name: str | None = None  # once its record is read
        self.run: LeasedRun | None = None
        # Why it was skipped, when its definition (or a child's) changed.
        self.definition_changed: SagaDefinitionChanged | None = None
        self._keep_lease = False  # lost to another worker, or the process ends
        # Interrupted because the store was closed under it (StoreClosed):
        # no pass can go on with that store (a worker stops: see worker.py).
        self.store_closed = False
        # Its record cannot be read (CorruptSagaRecord): deferred, see _drive.
        self._unreadable = False
        # Given back without anything of it run (skipped for its name or its
        # own definition, a child its parent drives, a pass cancelled before
        # it): the claim that took it is not counted (store._parking).
        self._untouched = False
        # Seconds the lease is kept, on a store without ``defer``, to keep a
        # saga out of claims (a worker's skip, or an interrupted saga's
        # backoff): the worker gives it back once they have passed.
        self.held_for: float | None = None
        # Set by a worker: the ``resume_timeout`` its resume outran (the run
        # was stopped, see time_out), and whether it stopped waiting for the
        # run altogether (``let_go``: the run did not stop when asked).
        self.timed_out: float | None = None
        self.let_go = False
        # The lease's give-back (release, defer, hand-off), if the store
        # refused it: the holder tries it again (``_give_back``).
        self.not_given_back: Callable[[], Awaitable[object]] | None = None
        # What ``resume`` told, once it has ended (also when it raised).
        self.outcome: Outcome | None = None
        # Its child sagas (SubSaga: and theirs) claimed in the same batch
        # (``children_first``): it runs once each is out of its way.
        self.children: list[ClaimedSaga] = []
        # Set once this saga's claim no longer stands in its parent's way:
        # its lease is given back (a child its parent drives is deferred),
        # or it runs itself (no parent drives it), or it was let go.
        # Registered (claims_here): a parent's run of this process that
        # finds it held waits for it, rather than polling the store.
        self._out_of_the_way = HeldClaim(lease.saga_id, lease.owner)

    @property
    def saga_id(self) -> str:
        return self.lease.saga_id

    async def resume(self) -> Outcome:
        """Resume the saga; its outcome, also told to the listeners (``recovery_outcome``).

        Cancelled, it raises ``CancelledError`` once the saga has unwound (S8)
        or stopped; the outcome told is then the status the journal holds
        (``compensated``, say), or ``handed_off`` when the saga was left
        unfinished for another pass."""
        outcome: Outcome = _CANCELLED
        try:
            outcome = await self._drive()
        except asyncio.CancelledError:
            ended_by = self.run.ended_by if self.run is not None else None
            outcome = (self._ended(ended_by) if ended_by is not None
                       else await self._after_cancellation())
            raise
        except BaseException as error:  # SystemExit, KeyboardInterrupt out of a step
            outcome = self._ended(error)
            raise
        finally:
            self.outcome = outcome
            try:
                if not self.let_go:  # told already, by the worker that let it go
                    self._report(outcome)
                await self._let_go(outcome[0])
            finally:
                self._clear_the_way()
        return outcome

    def _clear_the_way(self) -> None:
        self._out_of_the_way.let_go()

    async def children_out_of_the_way(self) -> None:
        """Wait until each of ``children`` (claimed with this saga) has given
        its lease back, or runs itself. Its parent's run leases a child by id
        (SubSaga), and found it held by this very batch (``SagaBusy``): it
        polled (``_when_free``), a second a time, until the child's claim was
        let go — a ``recover`` pass stalled a second per family claimed
        whole. A ``recover`` pass waits here before it takes a slot (a parent
        holding one, its child waiting for one, would wait for each other)."""
        for child in self.children:
            await child._out_of_the_way.event.wait()

    def _ended(self, error: BaseException) -> Outcome:
        """The saga's own run let out SystemExit or KeyboardInterrupt: the
        process stops (asyncio lets them out of the loop, then cancels what
        is left). Handed off on the way out, as a shutdown's sagas are, the
        saga would be claimable at once — the oldest, claimed first by the
        restarted worker (or, announced, by every other worker in turn), each
        dying of it at once, the sagas behind it never reached. Its lease is
        kept instead, as a crash keeps it: it comes back once per lease."""
        self._keep_lease = True
        return ("interrupted", f"{type(error).__name__} out of the resumed run: the "
                               f"process stops; its lease is kept until it runs out")

    async def hand_back(self) -> None:
        """Give the saga back untouched (the pass was cancelled before it
        ran): its lease is released at once, not left to expire."""
        self._report(_CANCELLED)
        self._untouched = True
        try:
            await self._let_go(_CANCELLED[0])
        finally:
            self._clear_the_way()

    def time_out(self, seconds: float) -> None:
        """The resume outran the worker's ``resume_timeout`` (``seconds``):
        stop it without unwinding (``LeasedRun.stop_hung``). Its outcome is
        ``interrupted``; its lease is kept for the backoff and counted
        (``_let_go``). Not loaded yet (a store that hangs): the caller
        cancels the task instead, as a hand-off does — and the outcome is
        ``interrupted`` all the same (see ``_after_cancellation``)."""
        self.timed_out = seconds
        if self.run is not None:
            self.run.stop_hung()

    def give_up(self) -> Outcome:
        """The worker stops waiting for this resume: asked to stop, the run
        did not (a step that swallows ``CancelledError`` and goes on). Nothing
        can kill a coroutine: it goes on in the background, every write of
        it refused (it was handed off). Its lease is kept and renewed no
        more: it runs out, and the saga is claimed again — counted, so that
        one that hangs on every resume is parked (store._parking). The
        outcome, ``interrupted``, is told now, once.

        A resume that has ended, its outcome told, and only waits for the
        store to take its lease back (``_let_go``) has nothing to stop: that
        outcome stands (the journal holds it), not told again, and the
        give-back goes on."""
        # Not waited for any more: a parent claimed with it that still needs
        # it meets its lease (SagaBusy) and waits as for any holder's.
        self._clear_the_way()
        if self.outcome is not None:
            self.let_go = True
            return self.outcome
        self.let_go = self._keep_lease = True
        if self.run is not None:
            self.run.stop_renewing()
        where = self.where()
        outcome: Outcome = ("interrupted", (
            f"stopped {'at its resume_timeout' if self.timed_out is not None else 'by a hand-off'}"
            f" but still running{f' ({where})' if where else ''}: a step ignores cancellation; "
            f"the worker no longer waits for it, its writes are refused and its lease runs "
            f"out unrenewed"))
        self._report(outcome)
        return outcome

    def where(self) -> str | None:
        """What the resumed run is doing (``LeasedRun.where``), if it runs."""
        return self.run.where() if self.run is not None else None

    def _report(self, outcome: Outcome) -> None:
        listeners = self.listeners
        saga = self.by_name.get(self.saga_name) if self.saga_name is not None else None
        if saga is not None and saga.listeners:
            given = {id(listener) for listener in listeners}
            listeners += tuple(each for each in saga.listeners if id(each) not in given)
        hooks = collect_hooks(listeners, "recovery_outcome")
        if hooks:
            emit(hooks, self.saga_id, self.saga_name, outcome[0], outcome[1])

    async def _drive(self) -> Outcome:
        saga_id = self.saga_id
        try:
            try:
                record = await self.store.load(saga_id)
                parent_id = parent_saga_id(saga_id)
                parent_in_flight = parent_id is not None and await self._in_flight(parent_id)
            except (CorruptSagaRecord, SagaNotFound, LeaseLost):
                raise  # the row, not the store: see below
            except Exception as error:  # SagaStoreError, a store of one's own's driver error
                # The store failed: the saga was not even looked at, and
                # nothing is wrong with it that an operator must fix (as a
                # skip says). Left for the next pass, as a saga whose
                # journal write failed is (a worker's: after its backoff).
                self._untouched = True
                return "interrupted", (
                    f"the store failed to read it ({described(error)}): nothing of it ran; "
                    f"it stays for the next pass")
            self.saga_name = record.saga_name
            if parent_in_flight:
                # A child saga (SubSaga): its parent resumes it, when the
                # parent is resumed — driving it from here too would run it twice.
                self._untouched = True
                return "deferred", f"its parent {parent_id!r} drives it"
            saga = self.by_name.get(record.saga_name)
            if saga is None:
                self._untouched = True
                return "skipped", f"no saga named {record.saga_name!r} given"
            # Its parent is not in flight, so no run of the family leases it:
            # a saga claimed with it need not wait for it. Its own children
            # claimed with it are deferred (their parent is in flight): it
            # runs once they have given their leases back.
            self._clear_the_way()
            await self.children_out_of_the_way()
            self._warn_if_last_claim(saga, record)
            self.run = LeasedRun(
                saga, record, self.lease, store=self.store, lease_seconds=self.lease_seconds,
                allow_changed_definition=self.allow_changed_definition,
                hand_off_when_cancelled=self.hand_off_when_cancelled,
            )
            await self.run.run()
            return "completed", None
        except SagaFailed as failure:
            return failure.status.value, None
        except SagaInterrupted as interrupted:
            if isinstance(interrupted.error, SagaDefinitionChanged):
                # A child saga it drives (SubSaga) was refused for a changed
                # definition: the journal is fine, and another pass would
                # stop there again. It needs an operator, as its own
                # changed definition would (released below: one may resume it).
                self.definition_changed = interrupted.error
                return "skipped", f"SagaDefinitionChanged: {interrupted.error}"
            if isinstance(interrupted.error, CorruptSagaRecord):
                # A child saga it drives (SubSaga) cannot be read: the
                # journal is fine, and another pass would stop there again.
                # Reported as the child's own claim reports it (skipped,
                # out of claims for a lease's length, never parked: see
                # below), naming the child — not as a journal that could
                # not be written, retried on every pass.
                self._unreadable = True
                return "skipped", await self._child_unreadable(interrupted.error)
            # The journal could not be written: nothing is reported finished
            # that the journal does not hold. The saga stays for the next pass.
            self.store_closed = isinstance(interrupted.error, StoreClosed)
            return "interrupted", str(interrupted)
        except LeaseLost as lost:
            self._keep_lease = True  # someone else's now
            return "lost", str(lost)
        except SagaHandedOff as handed:
            if self.timed_out is not None:
                # Stopped by the worker's bound, not by its shutdown: another
                # worker claiming it at once would hang the same way.
                return "interrupted", (
                    f"its resume ran longer than the worker's resume_timeout "
                    f"({self.timed_out:g} s) and was stopped without unwinding")
            return "handed_off", str(handed)
        except CorruptSagaRecord as error:
            # Out of claims for a lease's length: other workers skip it until
            # then, rather than re-read a row that cannot be read on every
            # pass. Deferred, not held: a lease never given back is what a
            # process that died of its saga leaves, and counted as one
            # (store._parking) the row was parked after park_after lease
            # periods, said to be a saga whose resumes end the process, with
            # a resume by id for remedy — which stops on the same row. A row
            # that cannot be read ends no process and needs another remedy
            # (its row repaired, or purged): it is reported skipped, naming
            # what is wrong (S12), once a lease period, and never parked. (A
            # store without ``defer`` counts no claims: its lease is kept.)
            self._unreadable = True
            return "skipped", described(error)
        except Exception as error:  # changed definition, store error, ...
            # Released: an operator may resume it now (allow_changed_definition).
            if isinstance(error, SagaDefinitionChanged):
                self.definition_changed = error
                self._untouched = True  # refused before any step of it ran
            return "skipped", described(error)

    async def _child_unreadable(self, error: CorruptSagaRecord) -> str:
        """Why this saga is skipped when a saga it drives cannot be read:
        in its own words (the child's error alone read as if this saga's own
        row were unreadable), naming the child; and whether part of its
        unwinding ran — steps compensated before it reached the child, whose
        effects are undone while the child's, and the steps before it, are
        not (an operator repairing the row should know the saga is half
        unwound)."""
        child = error.saga_id
        if child == self.saga_id:  # (its own row, read again during the run)
            return described(error)
        whose = (f"its child saga {child!r}" if parent_saga_id(child) == self.saga_id
                 else f"saga {child!r}, which it drives through its child sagas,")
        compensated = await self._compensated_steps()
        unwound = (
            f"; part of its unwinding ran ({len(compensated)} "
            f"step{'' if len(compensated) == 1 else 's'} compensated: "
            f"{', '.join(map(repr, compensated))}), the rest waits for that row to be "
            f"repaired" if compensated else ""
        )
        return f"{whose} is unreadable, so it stopped there{unwound}: {described(error)}"

    async def _compensated_steps(self) -> list[str]:
        """The steps whose compensation the journal holds as completed, in
        journal order: read again (this run may have compensated some), else
        as the run was given it."""
        try:
            history = (await self.store.load(self.saga_id)).history
        except Exception:  # (a store failing now: what it was resumed from)
            history = self.run.record.history if self.run is not None else []
        names: list[str] = []
        for entry in history:
            if (entry.action == "compensate" and entry.status is StepStatus.COMPLETED
                    and entry.step not in names):
                names.append(entry.step)
        return names

    def _warn_if_last_claim(self, saga: Saga[Any], record: SagaRecord) -> None:
        """The parking store's warning that this claim is the saga's last
        (store._parking), now that it is going to run: not for a saga given
        back unrun — one this pass has no saga for (above), or one a changed
        definition refuses (its lease given back uncounted, ``_drive``)."""
        try:
            check_definition(record, saga.definition,
                             allow_changed=self.allow_changed_definition)
        except SagaDefinitionChanged:
            return
        warn_if_last_claim(self.store, self.lease)

    async def _after_cancellation(self) -> Outcome:
        """What a cancelled resume left: a saga that ran has unwound (S8) or
        stopped for recovery by now, and only the journal says which — a
        status is reported only as the journal holds it (S13)."""
        if self.run is None:
            if self.timed_out is not None:
                # Stopped at the worker's bound while the store had not
                # answered its load: no hand-off (no worker shut down), and
                # another worker claiming it at once would wait the same way.
                return "interrupted", (
                    f"loading it from the store took longer than the worker's "
                    f"resume_timeout ({self.timed_out:g} s): stopped before any step of it ran")
            return _CANCELLED  # cancelled while loading it: nothing ran
        try:
            status = (await self.store.load(self.saga_id)).status
        except Exception:  # the journal is out of reach: left for another pass
            return _CANCELLED
        return (status.value, None) if status.is_final else _CANCELLED

    async def _let_go(self, outcome: str) -> None:
        """Give the lease back as ``outcome`` asks (see ``lease_return``),
        unless it is kept (lost to another worker, or the process ends)."""
        if self._keep_lease:
            return
        give_back, held_for = await lease_return(
            self.store, self.lease, outcome, lease_seconds=self.lease_seconds,
            untouched=self._untouched, unreadable=self._unreadable,
            timed_out=self.timed_out, skip_for=self.skip_for, retry_in=self.retry_in)
        if held_for is not None:
            self.held_for = held_for
        if give_back is not None:
            refused = await give_back_once(self.saga_id, give_back)
            if refused is not None:
                self.not_given_back = refused

    async def _in_flight(self, saga_id: str) -> bool:
        try:
            return not (await self.store.load(saga_id)).status.is_final
        except SagaNotFound:
            return False  # an id of its own that merely looks like a child's

    def hand_off(self) -> None:
        if self.run is not None:
            self.run.hand_off()


def children_first(sagas: list[ClaimedSaga]) -> list[ClaimedSaga]:
    """Link each of ``sagas`` (one claim's batch) to the descendants
    (``SubSaga`` children, and theirs) claimed with it (``children``), and
    return ``sagas``. A child whose parent is in flight is left to the
    parent's run, which leases it by id; a child claimed in the same batch
    as its parent is deferred by its own ``ClaimedSaga`` — the parent runs
    once that has happened (``children_out_of_the_way``), not while the
    batch still holds the child's lease. Every ancestor claimed with a saga
    waits for it: one whose own child is final does not reach it, but a
    child of a parent in flight gives its lease back in two reads."""
    by_id = {saga.saga_id: saga for saga in sagas}
    if len(by_id) > 1:
        for saga in sagas:
            ancestor = parent_saga_id(saga.saga_id)
            while ancestor is not None:
                holder = by_id.get(ancestor)
                if holder is not None and holder is not saga:
                    holder.children.append(saga)
                ancestor = parent_saga_id(ancestor)
    return sagas
