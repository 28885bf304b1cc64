"""Resume and recover interrupted sagas from their journal (S10).

The journal is the source of truth. ``resume_point`` reads a saga's history
and says where the run stands: which steps completed (the compensation
stack, each with the branch that ran), which were compensated already, and
where forward execution picks up. ``recover`` finds interrupted sagas in a
store, leases them, and resumes each with the saga class that matches.

Heartbeat and fencing. A saga resumed under a lease (``LeasedRun``; used by
``recover`` and ``RecoveryWorker``) runs in a task of its own, next to a
heartbeat task that renews the lease every ``lease_seconds / 3`` through the
store's optional ``renew``. A renewal refused with ``LeaseLost`` means the
fencing token moved on: another worker claimed the saga after our lease ran
out (we were paused, partitioned, or too slow to renew). The run must then
stop *without unwinding*: compensating would race the new owner, who drives
the saga forward from the journal. Stopping is a cancellation, and a
cancelled run normally unwinds (S8), so two independent guards make sure no
compensation runs:

1. before cancelling, the run's store is replaced by one that refuses every
   write with ``LeaseLost`` (and its fence by a token no saga ever has), so
   no later write of this run reaches the store — even if the store is
   unreachable, where a best-effort unwinding write would merely *fail* and
   the compensation would go on;
2. the executor writes a compensation's STARTED row *before* calling
   ``compensate``, and a write refused with ``LeaseLost`` stops the unwinding
   even in its best-effort mode (``Execution.flush``). So the cancelled run's
   unwinding stops at its first write, before the first ``compensate``, and
   the store's own fencing would refuse it anyway (the token moved on).

A compensation that was already in flight when the lease was lost (the run
was unwinding of its own accord) finishes — it is shielded by design — and
its completion is simply not journaled: the new owner runs it again with the
same idempotency key, as after a crash. The caller gets ``LeaseLost``.

The same mechanism hands a saga off on a worker's shutdown
(``LeasedRun.hand_off``): the run is stopped like a crashed one, without
unwinding, and the lease is released so that another worker resumes it at
once instead of after the lease expires. A shutdown is not a business
failure; rolling back a saga because a pod was rescaled would be.

Any other renewal error (the store is briefly unreachable) is logged and the
heartbeat tries again at the next interval: if the lease runs out meanwhile
and someone else claims the saga, fencing still refuses our writes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    SagaStoreError,
)
from .executor import Execution, JournalWriteFailed
from .status import SagaStatus, StepStatus
from .step import _CURSOR
from .store.base import Lease, RecoverableStore, SagaRecord, is_recoverable, is_work_notifier

if TYPE_CHECKING:
    from .definition import SagaDefinition
    from .executor import SagaResult
    from .saga import Saga

__all__ = [
    "LeasedRun",
    "RecoveryReport",
    "ResumePoint",
    "SagaHandedOff",
    "check_definition",
    "recover",
    "resume_point",
]

_log = logging.getLogger("fallback_saga")


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where an interrupted run stands, as its journal tells."""

    status: SagaStatus
    # (position, branch) of every step whose act completed and that has not
    # been compensated yet, in the order they completed: the compensation stack.
    stack: tuple[tuple[int, str], ...]
    # The first position whose act has not completed (forward work resumes here).
    next_position: int
    # The step at next_position had handed over to its fallback: resume with the
    # fallback, never with the primary again (its failure is on record).
    fallback_in_flight: bool
    # The last act failure on record: (step name, error text).
    last_failure: tuple[str, str] | None


def resume_point(record: SagaRecord) -> ResumePoint:
    """Read ``record.history`` into a ``ResumePoint``; ``CorruptSagaRecord`` if it
    cannot describe a run (positions out of order, a compensation of a step
    that never completed)."""
    completed: dict[int, str] = {}
    order: list[int] = []
    compensated: set[int] = set()
    fallback_started: set[int] = set()
    last_failure: tuple[str, str] | None = None
    for entry in record.history:
        if entry.action == "act":
            if entry.status is StepStatus.COMPLETED:
                if entry.position in completed:
                    raise CorruptSagaRecord(
                        record.saga_id, f"step at position {entry.position} completed twice"
                    )
                completed[entry.position] = entry.branch
                order.append(entry.position)
            elif entry.status is StepStatus.STARTED and entry.branch == "fallback":
                fallback_started.add(entry.position)
            elif entry.status is StepStatus.FAILED:
                last_failure = (entry.step, entry.error or "")
        elif entry.status is StepStatus.COMPLETED:
            if entry.position not in completed:
                raise CorruptSagaRecord(
                    record.saga_id,
                    f"step at position {entry.position} was compensated but never completed",
                )
            compensated.add(entry.position)
    if order != list(range(len(order))):
        raise CorruptSagaRecord(
            record.saga_id, f"steps completed out of order (positions {order})"
        )
    next_position = len(order)
    return ResumePoint(
        status=record.status,
        stack=tuple((p, completed[p]) for p in order if p not in compensated),
        next_position=next_position,
        fallback_in_flight=next_position in fallback_started,
        last_failure=last_failure,
    )


def check_definition(record: SagaRecord, definition: SagaDefinition) -> None:
    """Refuse to resume a saga whose stored fingerprint differs from the code's,
    saying what changed (``SagaDefinitionChanged``)."""
    if record.fingerprint == definition.fingerprint:
        return
    current = definition.describe()
    differences: list[str] = []
    seen: set[tuple[int, str, str]] = set()
    for entry in record.history:
        key = (entry.position, entry.step, entry.branch)
        if key in seen:
            continue
        seen.add(key)
        if entry.position >= len(current):
            differences.append(
                f"position {entry.position} ran {entry.step!r}, but the saga now has only "
                f"{len(current)} steps"
            )
            continue
        shape = current[entry.position]
        names = {"primary": shape[1], "fallback": shape[2] if len(shape) > 2 else None}
        if names.get(entry.branch) != entry.step:
            now = names.get(entry.branch)
            differences.append(
                f"position {entry.position} ({entry.branch}) ran {entry.step!r}, "
                f"now {now!r}" if now else
                f"position {entry.position} ran {entry.step!r} as a {entry.branch}, "
                f"which the saga no longer has"
            )
    if not differences:
        differences.append("the steps not yet run were changed (added, removed, reordered "
                           "or given another fallback)")
    raise SagaDefinitionChanged(
        record.saga_id, record.fingerprint, definition.fingerprint, differences
    )


# --------------------------------------------------------------------------- leased runs


class SagaHandedOff(Exception):
    """A worker that was shutting down stopped driving this saga without
    unwinding it; its lease is released and another worker resumes it."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"saga {saga_id!r} was handed off (the worker shut down)")


class LeasedRun:
    """One saga resumed under a lease, with its heartbeat (see the module docstring).

    ``await LeasedRun(saga, record, lease, store=store, lease_seconds=300).run()``
    resumes ``record`` like ``saga._resume_record(record, lease=lease)`` and
    renews the lease every ``renew_every`` seconds (default ``lease_seconds / 3``)
    while the run lasts, when the store has ``renew`` (and the interval is > 0). Raises what the run
    raises, except that a lost lease is always reported as ``LeaseLost`` and a
    hand-off as ``SagaHandedOff``.
    """

    def __init__(
        self,
        saga: Saga[Any],
        record: SagaRecord,
        lease: Lease,
        *,
        store: object,
        lease_seconds: float,
        renew_every: float | None = None,
        allow_changed_definition: bool = False,
    ) -> None:
        self.allow_changed_definition = allow_changed_definition
        self.saga = saga
        self.record = record
        self.lease = lease
        self.lease_seconds = float(lease_seconds)
        self.renew_every = self.lease_seconds / 3 if renew_every is None else renew_every
        self.renewals = 0
        self.lost: LeaseLost | None = None
        self.handed_off = False
        self._renew: Callable[[Lease, float], Any] | None = getattr(store, "renew", None)
        # The run's own context: the executor's cursor in it is how the run's
        # Execution is reached to fence it out (see _stop_without_unwinding).
        self._context = contextvars.copy_context()
        self._task: asyncio.Task[SagaResult[Any]] | None = None

    async def run(self) -> SagaResult[Any]:
        if self.handed_off:
            raise SagaHandedOff(self.lease.saga_id)
        task = self._task = asyncio.get_running_loop().create_task(
            self.saga._resume_record(
                self.record,
                lease=self.lease,
                allow_changed_definition=self.allow_changed_definition,
            ),
            context=self._context,
        )
        beat = None
        if self._renew is not None and self.renew_every > 0:
            beat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            # If *we* are cancelled, awaiting the task cancels it too and waits
            # for its unwinding (S8), during which the heartbeat keeps beating.
            return await task
        except BaseException as error:
            outcome = self._outcome(error)
            if outcome is error:
                raise
            raise outcome from error
        finally:
            if beat is not None:
                beat.cancel()
                await asyncio.wait([beat])

    def hand_off(self) -> None:
        """Stop the run without unwinding it (a worker is shutting down)."""
        if self.handed_off:
            return
        self.handed_off = True
        self._stop_without_unwinding()

    def _outcome(self, error: BaseException) -> BaseException:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # Our caller cancelled us: that wins over whatever the run says.
            return error if isinstance(error, asyncio.CancelledError) else (
                asyncio.CancelledError()
            )
        if self.lost is not None:
            return self.lost
        if self.handed_off:
            return SagaHandedOff(self.lease.saga_id)
        cause = error.error if isinstance(error, JournalWriteFailed) else error
        if isinstance(cause, SagaStoreError) and isinstance(cause.__cause__, LeaseLost):
            cause = cause.__cause__  # the completion's write was fenced out
        if isinstance(cause, LeaseLost):
            return cause
        return error if cause is error else cause

    def _stop_without_unwinding(self) -> None:
        execution = self._context.get(_CURSOR)
        if isinstance(execution, Execution):
            # Every later write of this run is refused and no compensate is
            # called: the cancellation below then stops it without unwinding.
            execution.abandon(self.lost or LeaseLost(self.lease.saga_id, self.lease.token))
        if self._task is not None:
            self._task.cancel()

    async def _heartbeat(self) -> None:
        renew = self._renew
        assert renew is not None
        current = self.lease
        saga_id = current.saga_id
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                current = await renew(current, self.lease_seconds)
                self.renewals += 1
            except LeaseLost as lost:
                _log.warning("saga %s: lease lost (%s); stopping without unwinding",
                             saga_id, lost)
                self.lost = lost
                self._stop_without_unwinding()
                return
            except SagaNotFound:
                _log.warning("saga %s: deleted while it ran; heartbeat stopped", saga_id)
                return
            except Exception as error:
                _log.warning("saga %s: lease renewal failed, will retry: %s: %s",
                             saga_id, type(error).__name__, error)


# What became of one claimed saga: completed, compensated, failed (needs an
# operator), interrupted (the journal failed; with a reason), skipped (with a
# reason), lost (the lease; with a reason), handed_off.
Outcome = tuple[str, str | None]


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
    ) -> None:
        self.store = store
        self.by_name = by_name
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.run: LeasedRun | None = None

    @property
    def saga_id(self) -> str:
        return self.lease.saga_id

    async def resume(self) -> Outcome:
        saga_id = self.saga_id
        release = True
        handed_off = False  # stopped unfinished by a shutdown: announce it
        try:
            record = await self.store.load(saga_id)
            saga = self.by_name.get(record.saga_name)
            if saga is None:
                return "skipped", f"no saga named {record.saga_name!r} given"
            self.run = LeasedRun(
                saga, record, self.lease, store=self.store, lease_seconds=self.lease_seconds
            )
            await self.run.run()
            return "completed", None
        except SagaFailed as failure:
            return failure.status.value, None
        except SagaInterrupted as interrupted:
            # The journal could not be written: nothing is reported finished
            # that the journal does not hold. The saga stays for the next pass.
            return "interrupted", str(interrupted)
        except LeaseLost as lost:
            release = False  # the lease is someone else's now
            return "lost", str(lost)
        except SagaHandedOff as handed:
            handed_off = True
            return "handed_off", str(handed)
        except asyncio.CancelledError:
            handed_off = True  # cancelled while loading it: nothing ran
            raise
        except CorruptSagaRecord as error:
            # Keep the lease: other workers skip it until it expires, rather
            # than re-reading a row that cannot be read on every pass.
            release = False
            return "skipped", f"{type(error).__name__}: {error}"
        except Exception as error:  # changed definition, store error, ...
            # Released: an operator may resume it now (allow_changed_definition).
            return "skipped", f"{type(error).__name__}: {error}"
        finally:
            # A released saga is claimable at once (a hand-off, or a saga this
            # worker does not know, which another one may). Only a hand-off
            # is announced: a skipped saga announced would bounce between
            # workers that all skip it, as fast as they can claim.
            if release:
                try:
                    if handed_off and is_work_notifier(self.store):
                        await self.store.hand_off(self.lease)
                    else:
                        await self.store.release(self.lease)
                except Exception as error:  # it expires on its own
                    _log.warning("saga %s: could not release its lease: %s: %s",
                                 saga_id, type(error).__name__, error)

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
    from .saga import Saga  # saga.py imports this module

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
    stopped with no effect the journal does not know; it stays RUNNING or
    COMPENSATING for the next pass."""

    resumed: list[str] = field(default_factory=list)  # finished COMPLETED
    compensated: list[str] = field(default_factory=list)  # finished COMPENSATED
    failed: list[str] = field(default_factory=list)  # finished FAILED: needs an operator
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)

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
        lines += [f"  failed  {saga_id} (needs an operator)" for saga_id in self.failed]
        lines += [f"  interrupted {saga_id}: {reason}" for saga_id, reason in self.interrupted]
        lines += [f"  skipped {saga_id}: {reason}" for saga_id, reason in self.skipped]
        return "\n".join(lines)


def default_owner() -> str:
    """A lease owner name that tells an operator where the worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


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
) -> RecoveryReport:
    """Find interrupted sagas (RUNNING or COMPENSATING, not updated for
    ``older_than``) and resume each with the saga of the same name.

    ``sagas`` lists Saga subclasses, built here as ``cls(store=store)``, or
    Saga instances built with ``store`` (to give them a ``step_factory``).

    Each saga is claimed with a lease (``lease`` seconds) first, so two
    recovery processes never drive the same saga. A corrupt row, an unknown
    saga name or a changed definition is reported as skipped; it never stops
    the others. ``progress(saga_id, outcome)`` is called after each saga.
    """
    if isinstance(older_than, timedelta):
        older_than = older_than.total_seconds()
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than!r}")
    if limit < 1 or concurrency < 1:
        raise ValueError("limit and concurrency must be >= 1")
    if not is_recoverable(store):
        raise TypeError(
            f"{type(store).__name__} cannot be recovered from: it has no leases "
            f"(use a durable store such as SQLiteSagaStore)"
        )
    by_name = sagas_by_name(store, sagas)
    report = RecoveryReport()
    leases = await store.claim(
        owner=owner or default_owner(), lease_seconds=lease, older_than=older_than, limit=limit
    )
    gate = asyncio.Semaphore(concurrency)

    def note(saga_id: str, outcome: str) -> None:
        if progress is not None:
            progress(saga_id, outcome)

    async def resume_one(claimed: Lease) -> None:
        async with gate:
            outcome, reason = await ClaimedSaga(
                store, by_name, claimed, lease_seconds=lease
            ).resume()
        saga_id = claimed.saga_id
        if outcome == "completed":
            report.resumed.append(saga_id)
        elif outcome == SagaStatus.FAILED.value:
            report.failed.append(saga_id)
        elif outcome == SagaStatus.COMPENSATED.value:
            report.compensated.append(saga_id)
        elif outcome == "interrupted":
            report.interrupted.append((saga_id, reason or outcome))
        else:
            report.skipped.append((saga_id, reason or outcome))
            outcome = "skipped"
        note(saga_id, outcome)

    await asyncio.gather(*(resume_one(claimed) for claimed in leases))
    return report
