"""Recover interrupted sagas: find them in a store, claim each with a lease,
and resume it with the saga of the same name (S10, S13).

``recover`` is one pass; ``RecoveryWorker`` (worker.py) claims in a loop.
Both go through ``ClaimedSaga``, which reports each saga's outcome only as
the journal holds it. How one saga is resumed under its lease — the
heartbeat, fencing, hand-offs — is ``resumption.py``'s part.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, Final

from .errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    described,
)
from .events import collect_hooks, emit, listener_tuple
from .log_lines import library_logger
from .resumption import (
    LeasedRun,
    ResumePoint,
    SagaHandedOff,
    check_definition,
    default_owner,
    resume_point,
)
from .saga import Saga
from .shielding import cancellation_pending, cancelled_again, claimed
from .status import SagaStatus
from .store._parking import warn_if_last_claim
from .store.base import (
    Lease,
    RecoverableStore,
    SagaRecord,
    check_store,
    gives_back_unrun,
    is_recoverable,
    is_work_notifier,
)
from .subsaga import parent_saga_id

__all__ = [
    "GIVEN_BACK_FOR_GOOD",
    "STOP_WAIT",
    "ClaimedSaga",
    "LeasedRun",
    "RecoveryReport",
    "ResumePoint",
    "SagaHandedOff",
    "check_definition",
    "claim_batch",
    "default_owner",
    "recover",
    "resume_point",
    "sagas_by_name",
    "seconds_given",
]

_log = library_logger("fallback_saga")


# What became of one claimed saga: completed, compensated, failed (needs an
# operator), interrupted (the journal failed; with a reason), skipped (with a
# reason), lost (the lease; with a reason), handed_off.
Outcome = tuple[str, str | None]
_CANCELLED: Outcome = ("handed_off", "the recovery was cancelled")

# Seconds a run asked to stop (a resume_timeout, a worker's hand-off) has to
# end before it is let go: a run stops at its next suspension, in well under
# a second, unless a step swallows the cancellation.
STOP_WAIT: Final = 10.0

# The resumes a ``recover`` pass let go (they did not stop when asked): kept
# here until they end, as the event loop keeps only weak references to tasks.
_LET_GO: set[asyncio.Task[Any]] = set()


def seconds_given(name: str, value: float | timedelta, *, positive: bool) -> float:
    """``value`` (seconds, or a ``timedelta``) as a float, refused with a
    ``ValueError`` naming ``name`` unless finite and > 0 (``positive``) or >= 0."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        value > 0 if positive else value >= 0
    ) or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds "
                         f"{'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


#: What a give-back of a lease (release, defer, hand-off) raises when there
#: is nothing left to give back — the lease is another holder's now, or the
#: saga is gone: never worth trying again.
GIVEN_BACK_FOR_GOOD: tuple[type[Exception], ...] = (LeaseLost, SagaNotFound)

# The sagas named, at most, in a warning about the leases a pass (or a
# stopping worker) could not give back: there may be thousands of them.
NAMED_AT_MOST: Final = 20


def _refusal(error: Exception) -> str:
    """What a give-back's failure says in a log line: the store's error, or
    that it did not answer within ``STOP_WAIT`` (a bare TimeoutError says nothing)."""
    if isinstance(error, TimeoutError) and not str(error):
        return f"the store did not answer within {STOP_WAIT:g} s"
    return f"{type(error).__name__}: {error}"


def named_sagas(saga_ids: list[str]) -> str:
    """``saga_ids`` for a log line: the first ``NAMED_AT_MOST``, and how many
    more (a ``recover`` pass's warning, and a stopping worker's)."""
    more = len(saga_ids) - NAMED_AT_MOST
    return ", ".join(saga_ids[:NAMED_AT_MOST]) + (f" and {more} more" if more > 0 else "")


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
            if not self.let_go:  # told already, by the worker that let it go
                self._report(outcome)
            await self._let_go(outcome[0])
        return outcome

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
        await self._let_go(_CANCELLED[0])

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
            # The journal could not be written: nothing is reported finished
            # that the journal does not hold. The saga stays for the next pass.
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
        """Release the lease as ``outcome`` asks. A released saga is
        claimable at once (a hand-off; a saga a ``recover`` pass skipped, for
        the operator's next pass). Only a hand-off is announced: a skipped saga
        announced would bounce between workers that all skip it, as fast as
        they can claim."""
        if self._keep_lease:
            return
        # Typed Any: ``ran`` is the built-in stores' (gives_back_unrun).
        store: Any = self.store
        unrun = {"ran": False} if self._untouched and gives_back_unrun(store) else {}
        give_back: Callable[[], Awaitable[object]] | None = None
        try:
            if self._unreadable:
                if hasattr(store, "defer"):
                    give_back = partial(store.defer, self.lease, self.lease_seconds)
                # else: kept, to run out on its own (see _drive)
            elif outcome == "interrupted" and self.timed_out is not None:
                # Stopped at the worker's bound: out of claims for the
                # backoff, as any interrupted saga — but neither released nor
                # deferred, which would clear its count of claims: a saga that
                # hangs on every resume would hold a slot for resume_timeout
                # on every backoff, for ever. Its lease, kept, is cut to the
                # backoff (renew), and the next claim counts (store._parking).
                # A store without renew: the lease runs out on its own.
                renew = getattr(store, "renew", None)
                if renew is not None:
                    await renew(self.lease, self.retry_in or self.lease_seconds)
            elif outcome == "handed_off" and is_work_notifier(store):
                give_back = partial(store.hand_off, self.lease, **unrun)
            elif outcome == "skipped" and self.skip_for is not None:
                # A worker's skip stays a skip until an operator acts (or a
                # deploy): released, the saga — as old as ever — would be
                # the first one claimed again at once, on every poll, warned
                # about every time, and as many of them as a claim takes
                # would starve every other saga. Out of claims for
                # ``skip_for``: another worker (one that knows its name) gets
                # it within that; an operator's resume leases it at once by id
                # — unless the store has no ``defer``: its lease is kept then
                # (``held_for``), and such a resume is SagaBusy until it ends.
                if hasattr(self.store, "defer"):
                    give_back = partial(store.defer, self.lease, self.skip_for, **unrun)
                else:
                    self.held_for = self.skip_for
            elif outcome == "interrupted" and self.retry_in is not None:
                # The journal refused this saga's write. Released, it would
                # be the oldest claimable saga again at once, and a worker
                # whose claim filled its slots claims again at once: a saga
                # whose rows the store always refuses (a poison saga) was
                # claimed, resumed and warned about hundreds of times a
                # second, and the sagas behind it never got a slot. Out of
                # claims for the worker's backoff instead: deferred, or —
                # a store of one's own without ``defer`` — its lease kept,
                # for the worker to release once the backoff has passed
                # (``held_for``; it expires on its own if the worker dies).
                if hasattr(self.store, "defer"):
                    give_back = partial(store.defer, self.lease, self.retry_in)
                else:
                    self.held_for = self.retry_in
            elif outcome == "deferred" and hasattr(self.store, "defer"):
                # Out of claims for a lease's length (its parent, if it
                # stalls, is taken over within that): released, a child
                # would be claimed again at once — a worker spinning on it,
                # starving the rest. The parent's driver may still lease it
                # by id at any moment.
                give_back = partial(store.defer, self.lease, self.lease_seconds, **unrun)
            elif outcome == "deferred" and self.retry_in is not None:
                # A worker's, on a store without ``defer``: released at once,
                # the child was claimed again at once, and again — a worker
                # spinning on it, the sagas behind it starved. Its lease is
                # kept instead (``held_for``), then given back by the worker
                # — for the worker's backoff (about ``poll``), not a lease's
                # length: meanwhile the parent's driver, which leases the
                # child by id, gets SagaBusy and waits (SubSaga's _when_free).
                self.held_for = self.retry_in
            else:
                give_back = partial(store.release, self.lease, **unrun)
        except Exception as error:  # it expires on its own
            # Only the renewal is awaited here (a give-back is, below): a
            # lease renewed for the backoff that a log called "released"
            # misled an operator about whether the saga could be claimed.
            _log.warning("saga %s: could not renew its lease for the backoff (cut to it): "
                         "%s: %s (its lease runs out on its own)",
                         self.saga_id, type(error).__name__, error)
            return
        if give_back is not None:
            await self._give_back(give_back)

    async def _give_back(self, give_back: Callable[[], Awaitable[object]]) -> None:
        """Give the lease back as ``give_back`` does; if the store refuses
        (down for a moment), keep it as ``not_given_back`` for the holder to
        try again — a worker before its next claim, a ``recover`` pass at
        its end. Left to run out instead, the lease was counted as a crash's
        (store._parking): a worker whose resume ended in order, met by a
        store outage at each give-back, parked a saga that killed nothing.

        One that does not answer within ``STOP_WAIT`` is cut short and kept
        the same way: with no ``resume_timeout`` nothing else watches a
        resume, and a give-back the store never answers (a store of one's
        own with no timeout) held a worker's slot for ever — capacity lost
        until a restart — and a ``recover`` pass for ever. A give-back cut
        short may still land; fenced by its lease's token, its next try
        changes nothing more."""
        try:
            async with asyncio.timeout(STOP_WAIT):
                await give_back()
        except GIVEN_BACK_FOR_GOOD:
            pass  # another holder's now, or gone: nothing left to give back
        except Exception as error:
            self.not_given_back = give_back
            _log.warning("saga %s: could not give its lease back (tried again before the "
                         "next claim; else it expires on its own): %s", self.saga_id,
                         _refusal(error))

    async def _in_flight(self, saga_id: str) -> bool:
        try:
            return not (await self.store.load(saga_id)).status.is_final
        except SagaNotFound:
            return False  # an id of its own that merely looks like a child's

    def hand_off(self) -> None:
        if self.run is not None:
            self.run.hand_off()


# --------------------------------------------------------------------------- recover


SagasGiven = Iterable["Saga[Any] | type[Saga[Any]]"]


def sagas_by_name(store: object, sagas: SagasGiven) -> dict[str, Saga[Any]]:
    """The sagas a recovery may resume, by name.

    Each is a Saga subclass, built here as ``cls(store=store)`` (its step
    classes must then be constructible without arguments), or a Saga instance
    journaling to ``store`` (a saga built with another store would resume
    into that one) — build one yourself to give it a ``step_factory``.
    """
    if isinstance(sagas, str | bytes | Saga | type) or not isinstance(sagas, Iterable):
        raise TypeError(
            f"sagas must be a list of Saga subclasses or instances, got {_short(sagas)}"
            + (f" (pass [{sagas.__name__}])" if isinstance(sagas, type) else "")
        )
    by_name: dict[str, Saga[Any]] = {}
    for given in sagas:
        if isinstance(given, type) and issubclass(given, Saga):
            saga = _build_with(given, store)
        elif isinstance(given, Saga):
            saga = given
            if saga.store is not store:
                raise ValueError(
                    f"saga {saga.name} journals to {saga.store!r}, not to the store being "
                    f"recovered: build it with store=<that store>"
                )
        else:
            name = given.__name__ if isinstance(given, type) else _short(given)
            raise TypeError(
                f"{name} is not a Saga subclass or instance; recovery takes Saga "
                f"subclasses (built with the store) or Saga instances built with store="
            )
        if saga.name in by_name:
            raise ValueError(f"two sagas named {saga.name!r} were given")
        by_name[saga.name] = saga
    return by_name


def _build_with(saga_cls: type[Saga[Any]], store: object) -> Saga[Any]:
    if getattr(saga_cls, "definition", None) is None:
        raise TypeError(
            f"{saga_cls.__name__} declares no steps (an abstract Saga base): give the "
            f"Saga subclasses that declare steps"
        )
    try:
        return saga_cls(store=store)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(
            f"recovery builds a saga class as {saga_cls.__name__}(store=store), which "
            f"failed: {error}; give an instance built with that store instead, e.g. "
            f"{saga_cls.__name__}(store=store, step_factory=...)"
        ) from error


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(slots=True)
class RecoveryReport:
    """What one ``recover`` pass did, saga by saga.

    A saga is listed as finished (``resumed``, ``compensated``, ``failed``)
    only once the journal holds that status (S13). ``interrupted``: the
    journal could not be written while the saga was resumed, so the run
    stopped with no effect the journal does not know, or the store failed to
    read the saga, so nothing of it ran; it stays RUNNING or COMPENSATING
    for the next pass."""

    resumed: list[str] = field(default_factory=list)  # finished COMPLETED
    compensated: list[str] = field(default_factory=list)  # finished COMPENSATED
    failed: list[str] = field(default_factory=list)  # finished FAILED: needs an operator
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)
    # Child sagas (SubSaga) left to their parent, which was in flight: not
    # counted in ``total`` (the parent's resumption resumes them).
    deferred: list[str] = field(default_factory=list)
    # Sagas (each also listed above) whose lease the pass could not give
    # back: the store refused it, or did not answer within STOP_WAIT, and
    # nothing tries it after the pass. It runs out on its own (``lease``
    # seconds) — no worker takes the saga until then — and counts as a
    # claim toward the store's ``park_after``, as a crashed pass's would.
    not_given_back: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (len(self.resumed) + len(self.compensated) + len(self.failed)
                + len(self.skipped) + len(self.interrupted))

    def __str__(self) -> str:
        lines = [
            f"recovered {self.total} saga(s): {len(self.resumed)} completed, "
            f"{len(self.compensated)} compensated, {len(self.failed)} failed, "
            f"{len(self.interrupted)} interrupted, {len(self.skipped)} skipped"
        ]
        lines += [f"  failed  {saga_id} (needs an operator: retry its unwinding once fixed)"
                  for saga_id in self.failed]
        lines += [f"  interrupted {saga_id}: {reason}" for saga_id, reason in self.interrupted]
        lines += [f"  skipped {saga_id}: {reason}" for saga_id, reason in self.skipped]
        lines += [f"  lease left {saga_id}: not given back (the store refused it, or did not "
                  f"answer within {STOP_WAIT:g} s); it runs out on its own, and counts as a "
                  f"claim toward the store's park_after" for saga_id in self.not_given_back]
        return "\n".join(lines)


async def claim_batch(store: RecoverableStore, **claim: Any) -> list[Lease]:
    """``store.claim(**claim)``, given back whole if the caller is cancelled
    while it is on its way (see ``shielding.claimed``): a claim is a write,
    which lands whatever its caller does, and leases abandoned so would keep
    every saga of the batch from the other workers until they ran out — the
    sagas of a worker (or a recovery pass) stopped mid-claim, handed off to
    nobody (S10, S15)."""
    leases: list[Lease] = await claimed(
        store.claim(**claim), lambda taken: _give_back(store, taken)
    )
    return leases


async def _give_back(store: RecoverableStore, leases: list[Lease]) -> None:
    # Nothing of them ran: their claim is not counted (store._parking).
    unrun: dict[str, Any] = {"ran": False} if gives_back_unrun(store) else {}
    for lease in leases:
        try:
            await store.release(lease, **unrun)
        except Exception as error:  # that one runs out on its own; the others go back
            _log.warning("cannot give back the lease on saga %s: %s: %s",
                         lease.saga_id, type(error).__name__, error)


async def recover(
    store: RecoverableStore,
    sagas: SagasGiven,
    *,
    older_than: float | timedelta = 60.0,
    limit: int = 100,
    lease: float = 300.0,
    owner: str | None = None,
    concurrency: int = 8,
    progress: Callable[[str, str], None] | None = None,
    listeners: Iterable[object] = (),
    allow_changed_definition: bool = False,
    resume_timeout: float | timedelta | None = None,
) -> RecoveryReport:
    """Find interrupted sagas (RUNNING or COMPENSATING, not updated for
    ``older_than``) and resume each with the saga of the same name.

    ``sagas`` lists Saga subclasses, built here as ``cls(store=store)``, or
    Saga instances built with ``store`` (to give them a ``step_factory``).

    Each saga is claimed with a lease (``lease`` seconds) first, so two
    recovery processes never drive the same saga. A corrupt row, an unknown
    saga name or a changed definition is reported as skipped; a saga the
    store failed to read (its ``load`` raised a store or driver error) as
    interrupted, with that error: nothing of it ran, and it stays for the
    next pass. Neither stops the others. ``progress(saga_id, outcome)`` is
    called after each saga — when the pass is cancelled too, for each saga
    it had begun to resume: the status the journal holds once the saga has
    unwound (``compensated``, ``failed``), or ``interrupted`` when it is
    left for another pass.
    ``listeners`` are told each saga's outcome (``recovery_outcome``), as are
    the listeners of the saga that resumed it. ``allow_changed_definition``
    resumes sagas started with another definition of their saga, as
    ``Saga.resume`` does with it (steps matched by position; a saga one of
    whose journaled steps moved or lost its place is still skipped).

    ``resume_timeout`` — seconds one saga's resume may run (``None``, the
    default: no bound). A resume that outruns it (a step with no
    ``timeout`` whose call never answers, a store that does not answer its
    load) is stopped as a ``RecoveryWorker`` stops one: without unwinding, a
    compensation in flight cancelled (called again, in full, next time); it
    is reported ``interrupted``, its lease kept for ``lease`` seconds and
    counted toward the store's ``park_after``. A run that has not stopped
    ``STOP_WAIT`` seconds after that, asked twice (a step that swallows the
    cancellation), is let go: reported, its lease renewed no more, while it
    goes on in the background, every write of it refused — and the event
    loop's own end waits for it, which only the step can end.
    """
    if resume_timeout is not None:
        resume_timeout = seconds_given("resume_timeout", resume_timeout, positive=True)
    # Checked as RecoveryWorker checks them: a str from a config file would
    # otherwise fail deep in a comparison ("'<' not supported ...").
    older_than = seconds_given("older_than", older_than, positive=False)
    for name, number in (("limit", limit), ("concurrency", concurrency)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"{name} must be an int >= 1, got {number!r}")
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise ValueError(f"owner must be a non-empty str, got {owner!r}")
    if not is_recoverable(store):
        raise TypeError(
            f"{type(store).__name__} cannot be recovered from: it has no leases "
            f"(use a durable store such as SQLiteSagaStore)"
        )
    check_store(store)  # a store class passes the test above
    by_name = sagas_by_name(store, sagas)
    given = listener_tuple(listeners)
    collect_hooks(given, "recovery_outcome")  # refuses a class or an async hook now
    report = RecoveryReport()
    # An operator's pass takes the sagas workers keep out of their claims
    # too (skipped ones, until an operator acts: this is the operator acting).
    deferred = {"deferred": True} if _claims_deferred(store) else {}
    leases = await claim_batch(
        store, owner=owner or default_owner(), lease_seconds=lease, older_than=older_than,
        limit=limit, **deferred,
    )
    gate = asyncio.Semaphore(concurrency)
    # Give-backs the store refused (ClaimedSaga.not_given_back), by saga:
    # tried once more at the pass's end, for a store down a moment — left to
    # run out, each lease counts as a crash's towards parking (store._parking).
    refused: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def note(saga_id: str, outcome: str) -> None:
        if progress is not None:
            progress(saga_id, outcome)

    async def resume_one(claimed: Lease) -> None:
        saga = ClaimedSaga(store, by_name, claimed, lease_seconds=lease, listeners=given,
                           allow_changed_definition=allow_changed_definition)
        try:
            await gate.acquire()
        except asyncio.CancelledError:
            await saga.hand_back()  # it waited for a slot: nothing ran
            raise
        try:
            if resume_timeout is None:
                outcome, reason = await saga.resume()
            else:
                outcome, reason = await _within(saga, resume_timeout)
        except asyncio.CancelledError:
            # The pass is cancelled (an operator's Ctrl-C): the saga under way
            # has unwound (S8) or stopped by now, and its progress says which,
            # as the journal holds it — a pass that tells nothing of it left
            # the operator to guess (S13). Nothing final: left for a pass.
            told = saga.outcome[0] if saga.outcome is not None else None
            if told is not None and told != _CANCELLED[0]:
                note(claimed.saga_id, told)
            elif told is not None and saga.run is not None:
                note(claimed.saga_id, "interrupted")
            raise
        finally:
            gate.release()
            if saga.not_given_back is not None:
                refused.append((claimed.saga_id, saga.not_given_back))
        saga_id = claimed.saga_id
        if outcome == "completed":
            report.resumed.append(saga_id)
        elif outcome == SagaStatus.FAILED.value:
            report.failed.append(saga_id)
        elif outcome == SagaStatus.COMPENSATED.value:
            report.compensated.append(saga_id)
        elif outcome == "interrupted":
            report.interrupted.append((saga_id, reason or outcome))
        elif outcome == "deferred":
            report.deferred.append(saga_id)
        else:
            report.skipped.append((saga_id, reason or outcome))
            outcome = "skipped"
        note(saga_id, outcome)

    await _all_settled([resume_one(claimed) for claimed in leases])
    report.not_given_back = await _give_back_at_the_end(refused)
    return report


async def _give_back_at_the_end(
    refused: list[tuple[str, Callable[[], Awaitable[object]]]],
) -> list[str]:
    """Try once more the give-backs the store refused during a pass —
    within ``STOP_WAIT`` in all, however many; the sagas whose leases are
    left (named in a warning; they run out, counted).

    Tried one after another, each waited the store's full timeout: a pass
    met by a store that hangs rather than refuses (a PostgreSQL server that
    does not answer, a SQLite file another process keeps locked, a store of
    one's own with no timeout) took ``limit`` timeouts at its end, or for
    ever — a cron's pass that never ends. Unlike a worker's round, a refusal
    does not end the tries: nothing tries them after the pass, and a store
    that refuses one saga's give-back (its row, not an outage) must not
    leave every other lease to run out; the budget bounds an outage."""
    left = [saga_id for saga_id, _ in refused]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_WAIT):
            for saga_id, give_back in refused:
                try:
                    await give_back()
                except GIVEN_BACK_FOR_GOOD:
                    pass  # nothing left to give back
                except Exception as error:  # it expires on its own, counted
                    if cancellation_pending():
                        raise asyncio.CancelledError from error  # see cancellation_pending
                    _log.warning("could not give saga %s's lease back at the end of the "
                                 "pass: %s", saga_id, _refusal(error))
                    continue
                left.remove(saga_id)
    if left:
        _log.warning(
            "recover: the pass ends with the leases of %d saga(s) not given back (the store "
            "refused them, or did not answer within %g s): %s; they run out on their own, "
            "and each counts as a claim toward the store's park_after", len(left),
            STOP_WAIT, named_sagas(left))
    return left


async def _within(saga: ClaimedSaga, bound: float) -> Outcome:
    """``saga.resume()``, stopped if it runs longer than ``bound`` seconds
    (see ``recover``'s ``resume_timeout``), on the event loop's clock."""
    task = asyncio.get_running_loop().create_task(saga.resume())
    ended = False  # seen ended, only its give-back on its way
    try:
        for wait in (bound, STOP_WAIT, STOP_WAIT):
            await asyncio.wait([task], timeout=wait)
            if task.done():
                if task.cancelled() and saga.outcome is not None:
                    return saga.outcome  # stopped while loading it: see time_out
                return task.result()
            if saga.outcome is not None:
                # The resume has ended and told its outcome: only the store's
                # taking its lease back is still on its way. Nothing runs to
                # be stopped: given STOP_WAIT to land, then the pass goes on
                # without it.
                if ended:
                    break
                ended = True
                continue
            if saga.timed_out is None:
                saga.time_out(bound)
                if saga.run is None:
                    task.cancel()  # still loading it (the store hangs): nothing ran
            elif saga.run is not None:
                # Once more: a compensation begun since the stop (a child
                # saga's, say) is cancelled too.
                saga.run.stop_hung()
        _LET_GO.add(task)
        task.add_done_callback(_LET_GO.discard)
        if saga.outcome is not None:
            return saga.give_up()  # the outcome told
        # Asked twice, it has not stopped: a step swallows the cancellation.
        _log.error("recover: saga %s did not stop %g s after it was stopped at its "
                   "resume_timeout; the pass goes on without it", saga.saga_id, 2 * STOP_WAIT)
        return saga.give_up()
    except asyncio.CancelledError:
        # The pass is cancelled: the saga unwinds (S8), as it would in our
        # own task; we return once it has.
        if not task.done():
            task.cancel()
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise
    finally:
        del task  # its error's traceback holds this frame


def _claims_deferred(store: RecoverableStore) -> bool:
    """Whether ``store.claim`` takes ``deferred`` (the built-in stores do; a
    store of one's own, or a wrapper of one, may not)."""
    try:
        return "deferred" in inspect.signature(store.claim).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


async def _all_settled(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutines`` concurrently until every one has finished. When we
    are cancelled meanwhile, they are cancelled too — each resumed saga then
    unwinds (S8) or stops — and ``CancelledError`` is raised only once all
    have finished: ``asyncio.gather`` raises as soon as the first of them
    is cancelled (one still waiting for a free slot), while the others are
    still unwinding, and a caller closing the store then would cut their
    compensations off half-way."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coroutine) for coroutine in coroutines]
    pending: set[asyncio.Task[None]] = set(tasks)
    cancelled: asyncio.CancelledError | None = None
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError as caught:
            if cancelled is None:
                cancelled = caught  # the first: the caller's message
                for task in pending:
                    task.cancel(*caught.args[:1])
            # and wait on, however often we are cancelled again
    # Every task's error is read, so that none is logged as never retrieved;
    # the first is raised (a BaseException a step let out, such as
    # SystemExit: the sagas stop where they are, as in a crash) — over a
    # cancellation, which must not hide it.
    errors = [task.exception() for task in tasks if not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
    if cancelled is not None:
        raise cancelled_again(cancelled)
