"""How a run that cannot complete unwinds: its compensation stack.

A saga that cannot complete compensates, in reverse, every step on its
**compensation stack** — the steps whose ``act`` completed, and those whose
effect is uncertain (a ``Parallel`` member cancelled in flight, a call a
crashed run was making): ``unwind``, each compensation retried under the
saga's ``compensation_retry`` (S5, S6) and its STARTED made durable before
it is called (S13). The unwinding runs in a task of its own, shielded from
cancellation: once it begins, every step on the stack gets its
``compensate`` call, even if the caller is cancelled (again) meanwhile (S8).

A run whose journal cannot be written stops instead, unwinding nothing
more, and is left for recovery: that is ``interruption.InterruptibleRun``,
this class's base; the runs a stopping run started stop with it
(``stop_scope``).

``UnwindingRun`` is that part of a run; the executor's ``Execution``, which
drives the steps forward, is its subclass. A step call reported to the
``step_call_*`` listeners is reported the same way in both directions, so
those two helpers live here too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal, NoReturn

from .compact_journal import branch_of
from .context import freeze_context
from .errors import ContextSerializationError, SagaFailed, saga_failed
from .events import StepCall, emit
from .interruption import InterruptibleRun
from .plan import Branch
from .shielding import cancellation_behind, cancellation_pending, running_task, shielded
from .status import RAW_CANCELLED as _CANCELLED
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_FAILED as _FAILED
from .status import RAW_STARTED as _STARTED
from .status import SagaStatus
from .step import COROUTINE, unawaited
from .stop_scope import STOP_SCOPE, StopScope, stopped_without_unwinding
from .write_ahead import JournalWriteFailed

__all__ = ["StopScope", "UnwindingRun", "stopped_without_unwinding"]

_COMPENSATING = SagaStatus.COMPENSATING
_COMPENSATED = SagaStatus.COMPENSATED
_SAGA_FAILED = SagaStatus.FAILED
_now = time.time


class UnwindingRun(InterruptibleRun):
    """A run's compensation stack and how the run ends short of completing
    (see the module's docstring). ``Execution.__init__`` sets the fields."""

    __slots__ = (
        "branch_errors",
        "image",
        "left_undone",
        "reopened_by",
        "reopener",
        "stack",
    )

    stack: list[Branch]  # the compensation stack
    image: Any  # the context as the current step began; once finished, frozen
    branch_errors: dict[str, BaseException] | None  # of a failed group, by member
    left_undone: dict[str, BaseException] | None  # see leave_undone
    resumed: bool  # Execution's: the run picks a journal up (ResumableSaga._execution_at)
    # Set by a resume only (ResumableSaga._execution_at), read only when ``resumed``:
    # who reopened a FAILED saga's unwinding (reopening.py), said once, in
    # the STARTED row of the first compensation it calls again.
    reopened_by: str | None
    # Set by a resume only, read only when ``resumed``: the owner who
    # reopened the saga, for the whole run — a FAILED child saga this run
    # unwinds (SubSaga) is reopened by it too, not refused as FAILED.
    reopener: str | None
    shape: Any  # a compact journal's plan shape (Execution.run_plain's), else None

    # ------------------------------------------------------------------ ending short of done

    async def fail(self, error: BaseException) -> NoReturn:
        """Unwind after ``error`` stopped the saga, then raise ``SagaFailed``
        (S7): ``unwound``'s, which the executor's runs raise themselves."""
        raise await self.unwound(error)

    async def unwound(self, error: BaseException) -> SagaFailed:
        """Unwind after ``error`` stopped the saga; the ``SagaFailed`` (S7) to
        raise, its cause ``error``. Returned, not raised: the caller raises it
        where ``error`` is handled (its context, as if raised here), so that
        it leaves through one frame fewer — a traceback entry and a frame
        object fewer on every failed saga (benchmarks/README.md, twentieth
        pass). What stops the run short of unwinding is raised from here.

        When the error is the journal's own (the store kept refusing a write),
        nothing is unwound: a compensation must not run unless the journal
        can hold its record, so the run stops and leaves the saga for
        recovery (``SagaInterrupted``).

        A failed step that ran a saga which ended FAILED (a ``SubSaga`` whose
        child's own unwinding gave up) has left effects no compensation of
        this run can undo: see ``leave_undone``."""
        if isinstance(error, JournalWriteFailed):
            cause = error.error
            if not isinstance(cause, ContextSerializationError) or not self.created:
                stopped = self._interrupted(cause)
                # Handed to the caller, not kept: the store's error was raised
                # through this run's frames (a first try's: SagaAlreadyExists,
                # LeaseLost), and its traceback holds them, and they this run
                # (a reference cycle). The run ends here: nothing writes again.
                self.interruption = None
                # The caller may get the store's own error: raised while its
                # wrapper is handled, it would take the wrapper, which holds
                # it, as its context (a cycle too). It keeps the context it had.
                context = stopped.__context__
                try:
                    raise stopped
                finally:
                    if stopped is cause:
                        stopped.__context__ = context
                    # No frame local keeps it: its traceback holds this frame.
                    error = cause = stopped = context = None  # type: ignore[assignment]
            error = cause  # a step left a context the journal cannot hold: unwind
        failed_step = self.step
        # Handed to SagaFailed, not kept: a member's error holds, through its
        # traceback, a frame that holds this run (a reference cycle).
        branch_errors, self.branch_errors = self.branch_errors, None
        if branch_errors or isinstance(error, SagaFailed):
            failures = branch_errors or {failed_step: error}
            for name, failure in failures.items():
                if isinstance(failure, SagaFailed) and failure.status is _SAGA_FAILED:
                    self.leave_undone(name, failure)
        if self.abandoned is None and STOP_SCOPE.get() is not None:
            self._adopt_stop()
        try:
            compensation_errors = await shielded(self.unwind())
        except asyncio.CancelledError:
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())
            raise
        if self.interruption is not None:
            raise self._interrupted(self.interruption, failure=error)
        hooks = self.hooks
        if hooks.saga_finished or hooks.saga_interrupted:  # no call when nobody listens
            self._announce_finish(error)
        failed = saga_failed(
            self.saga_id, self.saga_name, self.status, failed_step, error, compensation_errors,
            branch_errors,
        )
        failed.__cause__ = error  # raise ... from error, where the caller raises it
        try:
            return failed
        finally:
            # SagaFailed has them; no local keeps them. This frame outlives its
            # return when a compensation's error holds it (its traceback's
            # frames lead here through their callers on 3.12+, where the
            # unwinding's task starts eagerly, inside this frame): a cycle.
            failed = error = None  # type: ignore[assignment]
            compensation_errors = branch_errors = failures = failure = None  # type: ignore[assignment]

    def leave_undone(self, step: str, error: BaseException) -> None:
        """``step`` failed, leaving effects no compensation of this run can
        undo: it ran a saga that ended FAILED (a ``SubSaga`` whose child's own
        unwinding gave up). The run cannot end COMPENSATED over it: it counts
        as a compensation that failed (``compensation_errors``, the saga
        FAILED), journaled as one — never called: there is nothing more it
        could undo — so that a resumed unwinding knows it too."""
        left = self.left_undone
        if left is None:
            left = self.left_undone = {}
        elif step in left:
            return
        left[step] = error
        # The step's act rows say where it stands; in a compact journal
        # (run_plain's) a step cancelled in its act has only its STARTED
        # clock reading, and the plan's shape tells where it stands.
        for row in reversed(self.journal):
            if isinstance(row, tuple) and row[1] == step and row[3] == "act":
                self.journal.append((row[0], step, row[2], "compensate", _FAILED, 1,
                                     _describe(error), _now(), None))
                return
        where = None if self.shape is None else branch_of(self.shape, step)
        if where is not None:
            self.journal.append((where[0], step, where[1], "compensate", _FAILED, 1,
                                 _describe(error), _now(), None))

    async def abort(self) -> None:
        """The task was cancelled mid-step: unwind; the caller re-raises."""
        if self.abandoned is None and STOP_SCOPE.get() is not None:
            self._adopt_stop()
        try:
            await shielded(self.unwind())
        finally:
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())

    # ------------------------------------------------------------------ the compensation stack

    async def unwind(self) -> dict[str, BaseException]:
        """Compensate the stack in LIFO order (S5), retrying each (S6); the
        steps left undone (``leave_undone``) count among the compensation errors.

        Each compensation's STARTED record — and with the first one, the
        saga's COMPENSATING status — is durable before ``compensate`` is
        called (S13). When the journal cannot be written, the unwinding stops
        right there (``self.interruption``): the steps still on the stack are
        left for recovery to compensate, which it will, since the journal
        shows them completed and not compensated."""
        self.status = self.pending_status = _COMPENSATING
        # The task the unwinding runs in (shielded: see fail), for a worker
        # that must stop a compensation that hangs (LeasedRun.stop_hung) —
        # wherever in its saga tree this run is (StopScope.unwinding).
        scope = STOP_SCOPE.get()
        own = running_task() if scope is not None else None
        if scope is not None and isinstance(own, asyncio.Task):
            scope.unwinding(own)
        left_undone = self.left_undone
        errors: dict[str, BaseException] = dict(left_undone) if left_undone else {}
        stack = self.stack
        task: Any = None  # this task (running_task), looked up once if needed
        try:
            try:
                while stack:
                    branch = stack[-1]
                    error = await self.compensate(branch)
                    stack.pop()
                    if error is not None:
                        errors[branch.name] = error
                    if stack and (task or (task := running_task())).cancelling():
                        # This task was cancelled (the loop is shutting down:
                        # see compensate) and the compensation caught it and
                        # returned: nothing earlier is compensated behind the
                        # shutdown's back; the saga stays COMPENSATING.
                        raise asyncio.CancelledError
                final = _SAGA_FAILED if errors else _COMPENSATED
                if self.live:
                    self.status = final
                    # A run_plain run's (a compact journal) is retired as one
                    # that completed is; any other is frozen and handed over.
                    if self.shape is None or not self.store.retire_run(  # type: ignore[attr-defined]
                        self, self.context, final
                    ):
                        self.image = freeze_context(self.context)
                        self.store.finished(self)  # type: ignore[attr-defined]
                else:
                    self.pending_status = final
                    await self.flush(unwinding=True)
                    self.status = final
            except JournalWriteFailed as failure:
                self.interruption = failure.error
                # What the journal holds: on an in-process store, the run's own
                # status (COMPENSATING by now), which journaled_status — kept by
                # the write-ahead only — would have turned into RUNNING: a saga
                # that resumes forward (S10).
                self.status = self.held_status() or SagaStatus.RUNNING
            return errors
        finally:
            # The errors go to the caller; neither this frame nor the run keeps
            # one. A compensation's error holds, through its traceback, the
            # frame that caught it, whose caller is this one (a reference
            # cycle, which would keep the run and its context alive until the
            # garbage collector finds it).
            self.left_undone = None
            if scope is not None and isinstance(own, asyncio.Task):
                scope.unwinding(own, ended=True)
            errors = {}
            error = left_undone = task = own = scope = None

    async def compensate(self, branch: Branch) -> BaseException | None:
        """Call ``branch.compensate`` under the retry policy; the final error, if any.

        Raises ``JournalWriteFailed`` — before calling ``compensate`` — when
        its STARTED record cannot be made durable."""
        hooks = self.hooks
        journal = self.journal
        policy = self.settings.compensation_retry
        attempt = 1
        while True:
            note = self.reopened_by if self.resumed else None
            if note is not None:
                self.reopened_by = None  # said once: in this row, durable with the reopening
            journal.append(
                (branch.position, branch.name, branch.branch, "compensate", _STARTED, attempt,
                 note, _now(), None)
            )
            self.step = branch.name
            self.action = "compensate"
            self.attempt = attempt
            if self.abandoned is not None:
                raise JournalWriteFailed(self.abandoned)
            if not self.live:
                await self.flush(unwinding=True)
            if hooks.compensation_started:
                emit(hooks.compensation_started, self.saga_id, branch.name, attempt)
            self.active = True
            # (No call at all when nobody listens: twice per failed saga of three.)
            call = self._call_started(branch, "compensate", attempt) if (
                hooks.step_call_started or hooks.step_call_finished
            ) else None
            try:
                if branch.timeout is None:
                    returned = await branch.compensate(self.context)
                else:
                    async with asyncio.timeout(branch.timeout):
                        returned = await branch.compensate(self.context)
                if type(returned) is COROUTINE:  # the undo never ran
                    raise unawaited(branch.name, "compensate", returned)
            except Exception as error:
                interrupted = cancellation_pending()
                if call is not None:
                    if interrupted:
                        call._interrupted = True  # see below
                    self._call_finished(call, error)
                if interrupted:
                    # The unwinding task itself was cancelled (see below) and
                    # the compensation converted it into an error of its own
                    # (a driver cancelled mid-query): interrupted, not failed.
                    raise cancellation_behind(error) from error
                if not policy.should_retry(error, attempt):
                    return self._compensation_failed(branch, attempt, error)
                journal.append(
                    (branch.position, branch.name, branch.branch, "compensate", _FAILED,
                     attempt, _describe(error), _now(), None)
                )
                attempt += 1
                await policy.wait_before(attempt)
                continue
            except asyncio.CancelledError as error:
                interrupted = cancellation_pending()
                if call is not None:
                    if interrupted:
                        # Told as the journal keeps it: not failed (no error
                        # span, no failed attempt logged) — the listener
                        # cannot tell this CancelledError from one the
                        # compensation raised itself, which failed it.
                        call._interrupted = True
                    self._call_finished(call, error)
                if interrupted:
                    # The unwinding task itself was cancelled: its callers wait
                    # shielded, so only the event loop shutting down does that
                    # (``asyncio.run`` cancels every task left). The call was
                    # interrupted, not failed — its effect is uncertain — so
                    # nothing more is journaled and nothing earlier is
                    # compensated behind the shutdown's back: the saga stays
                    # COMPENSATING, its STARTED row the last, and recovery
                    # calls this compensation again (S8, S10, S13).
                    raise
                # The compensation itself let a CancelledError out: it failed.
                return self._compensation_failed(branch, attempt, error)
            except JournalWriteFailed as stopped:
                # A journal this run does not write itself failed (a SubSaga's
                # child's): the unwinding stops here, left for recovery (see unwind).
                if call is not None:
                    # Interrupted, not failed: this run's journal keeps the
                    # call's STARTED as its last word, and recovery calls it
                    # again (no error span, no failed attempt logged).
                    call._interrupted = True
                    self._call_finished(call, stopped.error)
                raise
            except BaseException as crash:  # no cancellation: see crashed
                if call is not None:
                    call._interrupted = True  # its STARTED stays its last row
                    self._call_finished(call, crash)
                raise
            finally:
                self.active = False
            if call is not None:
                self._call_finished(call, None)
            journal.append(
                (branch.position, branch.name, branch.branch, "compensate", _COMPLETED, attempt,
                 None, _now(), None)
            )
            self.context_dirty = True
            if hooks.compensation_completed:
                emit(hooks.compensation_completed, self.saga_id, branch.name)
            return None

    def _compensation_failed(
        self, branch: Branch, attempt: int, error: BaseException
    ) -> BaseException:
        self.journal.append(
            (branch.position, branch.name, branch.branch, "compensate", _FAILED, attempt,
             _describe(error), _now(), None)
        )
        if self.hooks.compensation_failed:
            emit(self.hooks.compensation_failed, self.saga_id, branch.name, error)
        return error

    def push_crashed_call(self, branch: Branch) -> None:
        """``branch``'s call in a crashed run may have taken effect, and no
        later call of it answered: on the compensation stack it goes (see
        run_all)."""
        self.journal.append(
            (branch.position, branch.name, branch.branch, "act", _CANCELLED, 1,
             "its call in a run that crashed may have taken effect: it is compensated",
             _now(), None)
        )
        self.stack.append(branch)

    def act_cancelled(self, branch: Branch, attempt: int) -> None:
        # A group member's act cancelled in flight (a sibling failed, or the
        # caller was cancelled): its effect is uncertain, so it is compensated
        # like a completed act — journaled CANCELLED, which resume_point puts
        # on the compensation stack too. Not a failure: no step_failed is
        # told of it (its StepCall says cancelled), as the journal holds none.
        self.journal.append(
            (branch.position, branch.name, branch.branch, "act", _CANCELLED, attempt,
             "CancelledError: cancelled while its act ran; its effect is uncertain", _now(),
             None)
        )
        self.stack.append(branch)

    # ------------------------------------------------------------------ step calls, as reported

    def _call_started(
        self, branch: Branch, action: Literal["act", "compensate"], attempt: int
    ) -> StepCall | None:
        """The ``StepCall`` reported to ``step_call_*`` listeners; None if none listen."""
        hooks = self.hooks
        if not (hooks.step_call_started or hooks.step_call_finished):
            return None
        call = StepCall(self.saga_id, self.saga_name, branch.name, action, attempt, branch.branch)
        if hooks.step_call_started:
            emit(hooks.step_call_started, call)
        return call

    def _call_finished(self, call: StepCall, error: BaseException | None) -> None:
        if self.hooks.step_call_finished:
            emit(self.hooks.step_call_finished, call, error)


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name
