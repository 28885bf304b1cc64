"""Where an interrupted saga stands, and how one is resumed under a lease (S10).

The journal is the source of truth. ``resume_point`` reads a saga's history
and says where the run stands: which steps completed (the compensation
stack, each with the branch that ran), which were compensated already, and
where forward execution picks up. ``Saga.resume``, ``recover``
and ``RecoveryWorker`` all resume through here (``recovery.py`` finds and
claims the sagas; this module sits below ``resumable.py``, ``Saga``'s base,
which needs it).

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
   even in its best-effort mode (``JournaledRun.flush``). So the cancelled run's
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
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .definition import member_shape
from .errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaDefinitionChanged,
    SagaNotFailed,
    SagaNotFound,
    SagaStoreError,
    short_id,
)
from .executor import Execution
from .log_lines import library_logger
from .shielding import PROCESS_ENDING, cancellation_pending, cancelled_again, loop_gone, wait_ended
from .status import SagaStatus, StepStatus
from .step import _CURSOR
from .stop_scope import STOP_SCOPE, StopScope
from .store.base import Lease, SagaRecord
from .write_ahead import JournalWriteFailed

if TYPE_CHECKING:
    from .definition import SagaDefinition
    from .executor import SagaResult

__all__ = [
    "LeasedRun",
    "ResumePoint",
    "ResumesRecords",
    "SagaHandedOff",
    "check_definition",
    "check_unwinding_retryable",
    "default_owner",
    "ended_the_process",
    "resume_point",
]

_log = library_logger("fallback_saga")


class ResumesRecords(Protocol):
    """What a ``LeasedRun`` resumes: a ``Saga`` (typed here without importing it,
    so that imports run one way: resumable.py uses this module)."""

    async def _resume_record(
        self,
        record: SagaRecord,
        *,
        lease: Lease | None = None,
        allow_changed_definition: bool = False,
        resumed_by: str | None = None,
    ) -> SagaResult[Any]: ...


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
    # Positions whose act completed (a group's members complete in any order),
    # and those whose fallback had started.
    completed: frozenset[int] = frozenset()
    fallbacks_started: frozenset[int] = frozenset()
    # Failed steps journaled as left undone (a compensation FAILED of a step
    # whose act never completed: see Execution.leave_undone): (step name, error text).
    left_undone: tuple[tuple[str, str], ...] = ()
    # Calls a crashed run left in flight (their effect is uncertain): (position,
    # branch) of every step whose last attempt began and never ended. Only the
    # item at next_position can have one: a step, or members of a group.
    open_calls: tuple[tuple[int, str], ...] = ()


def _is_cancellation(error: str) -> bool:
    return error == "CancelledError" or error.startswith("CancelledError:")


def _failure_that_stopped(
    final_failures: dict[int, tuple[str, str]], last_failure: tuple[str, str] | None
) -> tuple[str, str] | None:
    """The failure a resumed ``SagaFailed`` reports (S7: the failed step and
    the original error). In a straight line it is the last act failure; in a
    ``Parallel`` group it is the first member that failed for good, as the
    first run reported — not a sibling the group then stopped, whose row
    says only ``CancelledError`` (cancelled before or while its act ran)."""
    for failure in final_failures.values():
        if not _is_cancellation(failure[1]):
            return failure
    return last_failure


def resume_point(record: SagaRecord, groups: Sequence[range] = ()) -> ResumePoint:
    """Read ``record.history`` into a ``ResumePoint``; ``CorruptSagaRecord`` if it
    cannot describe a run (positions out of order, a compensation of a step
    that never completed).

    ``groups``: the positions of each ``Parallel`` group of the saga, whose
    members complete in any order. An act journaled CANCELLED (a member
    cancelled in flight: its effect is uncertain) joins the compensation
    stack like a completed one, but did not complete."""
    # position -> its branch, in the order pushed on the stack (a dict keeps
    # insertion order, and takes a position off in O(1): a group of many
    # members cancelled in flight, then started again, takes each off).
    on_stack: dict[int, str] = {}
    completed: set[int] = set()
    compensated: set[int] = set()
    fallback_started: set[int] = set()
    left_undone: dict[str, str] = {}
    last_act: dict[int, tuple[StepStatus, str]] = {}  # position -> its last act row
    last_failure: tuple[str, str] | None = None
    # position -> its last act row, when FAILED: the steps that failed for good
    final_failures: dict[int, tuple[str, str]] = {}
    uncertain: set[int] = set()  # on the stack as cancelled in flight, not completed
    for entry in record.history:
        if entry.action == "act":
            status = entry.status
            last_act[entry.position] = (status, entry.branch)
            if status is not StepStatus.FAILED:
                final_failures.pop(entry.position, None)
            if status is StepStatus.STARTED and entry.position in uncertain:
                # Called again by a resume: that call answers for the one
                # cancelled in flight (same idempotency key), as for a crashed
                # call — its own outcome says whether it goes on the stack.
                uncertain.discard(entry.position)
                del on_stack[entry.position]
            if status is StepStatus.COMPLETED or status is StepStatus.CANCELLED:
                if entry.position in on_stack:
                    raise CorruptSagaRecord(
                        record.saga_id, f"step at position {entry.position} completed twice"
                    )
                on_stack[entry.position] = entry.branch
                if status is StepStatus.COMPLETED:
                    completed.add(entry.position)
                else:
                    uncertain.add(entry.position)
            elif status is StepStatus.STARTED and entry.branch == "fallback":
                fallback_started.add(entry.position)
            elif status is StepStatus.FAILED:
                last_failure = (entry.step, entry.error or "")
                final_failures.pop(entry.position, None)  # re-inserted last: journal order
                final_failures[entry.position] = last_failure
        elif entry.status is StepStatus.COMPLETED:
            if entry.step in left_undone and on_stack.get(entry.position) != entry.branch:
                # A step left undone, compensated by an operator's retry
                # (reopening.py: the FAILED child saga it ran was unwound).
                del left_undone[entry.step]
                continue
            if entry.position not in on_stack:
                raise CorruptSagaRecord(
                    record.saga_id,
                    f"step at position {entry.position} was compensated but never completed",
                )
            compensated.add(entry.position)
        elif entry.status is StepStatus.FAILED and entry.position not in on_stack:
            left_undone[entry.step] = entry.error or ""
    next_position = 0
    while next_position in completed:
        next_position += 1
    # A saga left RUNNING with members cancelled in flight (the run stopped
    # its group, then died before its unwinding was journaled) resumes
    # forward: the group calls them again. Each is then what a crashed call
    # is — answered for by its next call, or undone if the group stops
    # before making it — never both on the stack and called again (which
    # compensated it twice, and journaled a step "completed twice").
    reopened = uncertain if record.status is SagaStatus.RUNNING else set()
    open_calls = tuple(
        (position, branch) for position, (status, branch) in sorted(last_act.items())
        if status is StepStatus.STARTED or position in reopened
    )
    order = list(on_stack)  # positions pushed on the stack, in order
    _check_order(record.saga_id, order, completed, next_position, groups)
    return ResumePoint(
        status=record.status,
        stack=tuple(
            (p, branch) for p, branch in on_stack.items()
            if p not in compensated and p not in reopened
        ),
        next_position=next_position,
        fallback_in_flight=next_position in fallback_started,
        last_failure=_failure_that_stopped(final_failures, last_failure),
        completed=frozenset(completed),
        fallbacks_started=frozenset(fallback_started),
        left_undone=tuple(left_undone.items()),
        open_calls=open_calls,
    )


def _check_order(
    saga_id: str,
    order: list[int],
    completed: set[int],
    next_position: int,
    groups: Sequence[range],
) -> None:
    """Steps complete one after another, a group's members in any order but
    all before the next step: else the record cannot describe a run."""
    group_of = {position: index for index, group in enumerate(groups) for position in group}
    current = group_of.get(next_position)
    for position in completed:
        if position > next_position and (current is None or group_of.get(position) != current):
            raise CorruptSagaRecord(
                saga_id, f"steps completed out of order (positions {order})"
            )

    # Each position as the first position of its group (itself outside groups):
    # in the order things completed, these never go back.
    units = [
        position if group_of.get(position) is None else groups[group_of[position]][0]
        for position in order
    ]
    if units != sorted(units):
        raise CorruptSagaRecord(saga_id, f"steps completed out of order (positions {order})")


def check_definition(
    record: SagaRecord, definition: SagaDefinition, *, allow_changed: bool = False
) -> None:
    """Refuse to resume a saga whose stored fingerprint differs from the code's,
    saying what changed (``SagaDefinitionChanged``).

    ``allow_changed`` (the operator's override) matches the steps by
    position: it lets through steps added, removed or changed among those
    not yet run, and a journaled step renamed in place (its name is gone
    from the code; the operator vouches that the step at its place is it).
    It cannot let through a journaled step that the code now has at another
    place or branch, nor one whose place or branch is gone: that step would
    be resumed, retried or compensated as whatever step the code has there —
    another step's ``compensate`` undoing its effect (S5, S10). Only the
    code the saga was started with can finish it.
    """
    if record.fingerprint == definition.fingerprint:
        _check_entries_fit(record, definition)
        return
    renamed, misplaced = journaled_differences(record, definition)
    overridable = not misplaced
    if allow_changed and overridable:
        return
    differences = renamed + misplaced
    if not differences:
        differences.append("the steps not yet run were changed (added, removed, reordered "
                           "or given another fallback)")
    raise SagaDefinitionChanged(
        record.saga_id, record.fingerprint, definition.fingerprint, differences,
        overridable=overridable,
    )


def _check_entries_fit(record: SagaRecord, definition: SagaDefinition) -> None:
    """``CorruptSagaRecord`` unless each journal entry names the step the
    code has at its position and branch.

    The fingerprint matches: the code is the one the saga started with, so
    an entry that names another step (or a position or branch the saga has
    not) was written by no run — another tool, a bug, an attacker. Resumed
    by position alone, it made a step's completed act another's: the step
    acted again, and the other's compensate undid an act that never ran
    (S10, S12). Read only when a saga is resumed, never on a run's path."""
    renamed, misplaced = journaled_differences(record, definition)
    wrong = renamed + misplaced
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CorruptSagaRecord(
            record.saga_id, f"its journal does not fit its own steps: {wrong[0]}{more}"
        )


def check_unwinding_retryable(record: SagaRecord, *, leased: bool) -> None:
    """Refuse an operator's retry of ``record``'s unwinding (``SagaNotFailed``)
    unless the saga is FAILED — its unwinding gave up — or, under a lease
    (``leased``: a durable store), COMPENSATING: an unwinding interrupted
    (an operator's retry cut off by a fault, say), which the retry finishes
    as recovery would. In memory a COMPENSATING saga is one this process is
    unwinding right now: nothing fences a second unwinding out there."""
    status = record.status
    if status is SagaStatus.FAILED or (leased and status is SagaStatus.COMPENSATING):
        return
    if status is SagaStatus.COMPLETED:
        reason = "every step completed; there is nothing to undo"
    elif status is SagaStatus.COMPENSATED:
        reason = "every completed step was compensated already"
    elif status is SagaStatus.COMPENSATING:
        reason = "it is being unwound by this process now"
    else:
        reason = ("it is in flight or was interrupted before unwinding: recovery resumes it "
                  "(recover, RecoveryWorker, Saga.resume)")
    raise SagaNotFailed(record.saga_id, status, f"only a FAILED saga's unwinding can be "
                                                f"retried; {reason}")


def journaled_differences(
    record: SagaRecord, definition: SagaDefinition
) -> tuple[list[str], list[str]]:
    """How the steps the journal holds differ from the code's steps at their
    positions and branches (names only: never a context value): those
    renamed in place, and those misplaced (the code has them elsewhere, or
    has no such position or branch any more)."""
    current = [member_shape(member) for member in definition.members()]
    where_now: dict[str, str] = {}
    for position, shape in enumerate(current):
        for branch, name in zip(("primary", "fallback"), shape[1:], strict=False):
            where_now[name] = f"position {position} ({branch})"
    renamed: list[str] = []
    misplaced: list[str] = []
    seen: set[tuple[int, str, str]] = set()
    for entry in record.history:
        key = (entry.position, entry.step, entry.branch)
        if key in seen:
            continue
        seen.add(key)
        if not 0 <= entry.position < len(current):  # (a negative one read from the end)
            misplaced.append(
                f"position {entry.position} ran {short_id(entry.step)}, but the saga now has only "
                f"{len(current)} steps"
            )
            continue
        shape = current[entry.position]
        names = {"primary": shape[1], "fallback": shape[2] if len(shape) > 2 else None}
        now = names.get(entry.branch)
        if now == entry.step:
            continue
        if now is None:
            misplaced.append(f"position {entry.position} ran {short_id(entry.step)} as a "
                             f"{entry.branch}, which the saga no longer has")
        elif entry.step in where_now:
            misplaced.append(f"position {entry.position} ({entry.branch}) ran "
                             f"{short_id(entry.step)}, now {now!r} ({short_id(entry.step)} is at "
                             f"{where_now[entry.step]})")
        else:
            renamed.append(
                f"position {entry.position} ({entry.branch}) ran {short_id(entry.step)}, "
                f"now {now!r}"
            )
    return renamed, misplaced


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
    hand-off as ``SagaHandedOff``. With ``hand_off_when_cancelled`` (a
    worker's runs) a cancellation of the run's own task hands it off too.
    """

    def __init__(
        self,
        saga: ResumesRecords,
        record: SagaRecord,
        lease: Lease,
        *,
        store: object,
        lease_seconds: float,
        renew_every: float | None = None,
        allow_changed_definition: bool = False,
        hand_off_when_cancelled: bool = False,
        resumed_by: str | None = None,
    ) -> None:
        self.allow_changed_definition = allow_changed_definition
        # The operator resuming it by hand (Saga.resume(operator=...)), whom
        # the run's first journal row names; None: a program or a worker.
        self.resumed_by = resumed_by
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
        # Execution is reached to fence it out (see _stop_without_unwinding),
        # and its stop scope is how the runs it starts (a SubSaga's child) are.
        self._context = contextvars.copy_context()
        self._scope = StopScope(self._context.get(STOP_SCOPE))
        if hand_off_when_cancelled:
            self._scope.when_cancelled = self._cancelled_from_outside
        self._context.run(STOP_SCOPE.set, self._scope)
        # What a shielded piece of the run (a compensation) let out that ends
        # the process, reported to us as a cancellation (see shielded).
        self._process_ending: list[BaseException] = []
        self._context.run(PROCESS_ENDING.set, self._process_ending)
        self._task: asyncio.Task[SagaResult[Any]] | None = None
        self._beat: asyncio.Task[None] | None = None
        # What ended the run, when that is a BaseException that is no
        # Exception and no cancellation (SystemExit, KeyboardInterrupt out of
        # a step): it leaves the event loop, which then cancels this task,
        # so our caller sees only a cancellation.
        self.ended_by: BaseException | None = None

    async def run(self) -> SagaResult[Any]:
        if self.handed_off:
            raise SagaHandedOff(self.lease.saga_id)
        task = self._task = asyncio.get_running_loop().create_task(
            self.saga._resume_record(
                self.record,
                lease=self.lease,
                allow_changed_definition=self.allow_changed_definition,
                resumed_by=self.resumed_by,
            ),
            context=self._context,
        )
        beat = None
        if self._renew is not None and self.renew_every > 0:
            beat = self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        loop = task.get_loop()
        try:
            # If *we* are cancelled, awaiting the task cancels it too and waits
            # for its unwinding (S8), during which the heartbeat keeps beating.
            return await task
        except GeneratorExit as closed:
            if loop_gone(closed, loop):
                # Closed by the garbage collector, away from its loop (see
                # loop_gone): the saga and its lease are left as a crash
                # leaves them; the heartbeat, freed with us, stops beating.
                beat = None
            raise
        except BaseException as error:
            self.ended_by = _process_ending(task) or next(iter(self._process_ending), None)
            outcome = self._outcome(error)
            try:
                if outcome is error:
                    raise
                raise outcome from error
            finally:
                del outcome  # see below
        finally:
            # Neither a local nor the run keeps the task: its error's
            # traceback holds this frame (a cycle only the collector finds).
            del task
            self._task = None
            self._beat = None
            if beat is not None:
                beat.cancel()
                # Waited for however often we are cancelled meanwhile: the
                # lease is given back once ``run`` returns, and a renewal
                # still on its way then would land on a lease given back.
                await wait_ended(beat)

    def hand_off(self) -> None:
        """Stop the run without unwinding it (a worker is shutting down)."""
        if self.handed_off:
            return
        self.handed_off = True
        self._stop_without_unwinding()

    def stop_hung(self) -> None:
        """Stop a run that has hung (a worker's ``resume_timeout``): handed
        off — no unwinding starts, no later write lands — and a compensation
        in flight, which a hand-off waits for (it is shielded), is cancelled
        as the event loop's shutdown cancels it — the run's own, or a child
        saga's or a group member's anywhere in its tree: its STARTED row
        stays the last, that saga COMPENSATING, and the next resume calls it
        again, in full, with the same idempotency key (S8, S10, S13, S15)."""
        self.hand_off()
        # Every unwinding in flight in the saga's tree: its own, and those
        # of the child sagas (SubSaga) and group members it drives — each
        # shielded in a task of its own that the hand-off does not reach.
        for unwinding in list(self._scope.unwindings or ()):
            if not unwinding.done():
                unwinding.cancel()

    def stop_renewing(self) -> None:
        """Renew the lease no more: the run's worker stopped waiting for it
        (it did not stop when asked: see ``RecoveryWorker``), and the lease
        must run out, for the saga to be claimed again (and counted: see
        store._parking), whatever the run still does."""
        if self._beat is not None:
            self._beat.cancel()

    def where(self) -> str | None:
        """What the run is doing, for an operator: ``"act of step 'B'"``
        (None before its first step)."""
        execution = self._context.get(_CURSOR)
        if not isinstance(execution, Execution) or not execution.step:
            return None
        return f"{execution.action} of step {execution.step!r} (attempt {execution.attempt})"

    def _outcome(self, error: BaseException) -> BaseException:
        if cancellation_pending():
            # Our caller cancelled us: that wins over whatever the run says,
            # with the caller's message (the cancellation the run turned
            # into its own error is in that error's context).
            return error if isinstance(error, asyncio.CancelledError) else (
                cancelled_again(_cancellation_behind(error))
            )
        if self.lost is not None:
            return self.lost
        if self.handed_off:
            return SagaHandedOff(self.lease.saga_id)
        cause = error.error if isinstance(error, JournalWriteFailed) else error
        if isinstance(cause, SagaStoreError) and isinstance(cause.__cause__, LeaseLost):
            cause = cause.__cause__  # the completion's write was fenced out
        if isinstance(cause, LeaseLost):
            # Its own lease: another worker drives the saga now. A child's
            # (SubSaga): the saga stopped for recovery, as the run said.
            return cause if cause.saga_id == self.lease.saga_id else error
        return error if cause is error else cause

    def _cancelled_from_outside(self) -> BaseException | None:
        """``hand_off_when_cancelled``: the run's own task is being cancelled —
        by the event loop shutting down (``asyncio.run`` cancels every task
        left, this one too, before the worker can hand it off), since the
        worker itself hands its runs off — so the run is handed off: it stops
        without unwinding (the hand-off's reason), and the runs it started
        stop with it. None while its task is not being cancelled."""
        task = self._task
        if task is None or not task.cancelling():
            return None
        self.handed_off = True
        return self._hand_off_reason()

    def _hand_off_reason(self) -> BaseException:
        return self.lost or LeaseLost(self.lease.saga_id, self.lease.token)

    def _stop_without_unwinding(self) -> None:
        reason = self._hand_off_reason()
        # A run this one started (a SubSaga's child) stops without unwinding
        # too, when the cancellation below reaches it (StopScope).
        self._scope.reason = reason
        execution = self._context.get(_CURSOR)
        if isinstance(execution, Execution):
            # Every later write of this run is refused and no compensate is
            # called: the cancellation below then stops it without unwinding.
            execution.abandon(reason)
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
                if cancellation_pending():  # the run ended meanwhile: see cancellation_pending
                    raise asyncio.CancelledError
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
                if cancellation_pending():  # the run ended meanwhile: see cancellation_pending
                    raise asyncio.CancelledError from error
                _log.warning("saga %s: lease renewal failed, will retry: %s: %s",
                             saga_id, type(error).__name__, error)


def _process_ending(task: asyncio.Task[Any]) -> BaseException | None:
    """The BaseException that is no Exception and no cancellation (SystemExit,
    KeyboardInterrupt) ``task`` ended with, if any. (A function of its own:
    no frame of the run's caller keeps the task's error, whose traceback
    holds that frame — a cycle only the collector finds.)"""
    if not task.done() or task.cancelled():
        return None
    error = task.exception()
    return None if error is None or isinstance(error, Exception) else error


def ended_the_process(error: BaseException, run: LeasedRun | None) -> bool:
    """Whether a leased run ended with a BaseException that is no Exception
    and no cancellation (SystemExit, KeyboardInterrupt out of a step) — seen
    as itself, or as the cancellation that the event loop's shutdown sends
    after it (``run.ended_by``). Its lease is kept then, as a crash keeps it:
    given back, it would clear the saga's count of claims (store._parking)
    and a saga that kills every process resuming it would be claimed again
    at once."""
    if run is not None and run.ended_by is not None:
        return True
    return not isinstance(error, (Exception, asyncio.CancelledError))


def default_owner() -> str:
    """A lease owner name that tells an operator where the worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _cancellation_behind(error: BaseException) -> BaseException:
    """The ``CancelledError`` that ``error`` was raised while handling, if
    any (its message is the caller's); else a bare one."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, asyncio.CancelledError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return asyncio.CancelledError()
