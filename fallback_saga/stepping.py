"""A step's ``act``, the general way: retries, a breaker, a timeout, a
Fallback's hand-over, the step listeners — and what a failed, cancelled or
crashed ``act`` leaves in the journal and tells the listeners.

``SteppingRun`` is that part of a run. The run's two loops drive the plan
forward (``general_run.GeneralRun.run_all``, ``lean_run.LeanRun.run_plain``:
subclasses of this, bases of the executor's ``Execution``): a plain step —
no retry, timeout or breaker, nobody listening to steps — they run inlined
(the hot path), and come here only when the step's ``act`` fails
(``act_failed``, ``_falls_back``, ``_act_cancelled_instead``) or a request
to cancel was swallowed (``stop_swallowed``). Every other step runs here
(``try_branch``, ``run_fallback``), as do a ``Parallel`` group's members
(``group_run`` calls back into the run: its ``GroupHost``) and a
``SagaTransaction``'s steps, one plan item at a time (``run_item``).

A base class rather than a helper object: its methods are the run's own,
so the hot path calls them as it always did — one method lookup on the
run's class, no object or call layer more per step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .context import StepSnapshot, restore_step, step_snapshot
from .errors import SagaFailed
from .events import StepCall, emit
from .group_run import IN_A_MEMBER, Lane, run_group
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .shielding import (
    cancellation_behind,
    cancelled_again,
    land_pending_cancellation,
    outer_run_cancelled,
    running_task,
)
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_FAILED as _FAILED
from .status import RAW_STARTED as _STARTED
from .status import SagaStatus
from .step import COROUTINE, SagaStepResult, StepCursor, unawaited
from .unwinding import UnwindingRun
from .write_ahead import JournalWriteFailed

__all__ = ["SteppingRun"]

_SAGA_FAILED = SagaStatus.FAILED
_CancelledError = asyncio.CancelledError
_now = time.time


class SteppingRun(UnwindingRun):
    """How a run calls a step's ``act`` and records how it went (see the
    module's docstring). ``Execution.__init__`` sets the fields."""

    __slots__ = ("cancels", "crashed_calls", "primary_error")

    # The task's count of requests to cancel as the run began (see
    # running_task): one more since is a request a participant swallowed.
    cancels: int
    # Set by a resume only (ResumableSaga._execution_at), read only when ``resumed``:
    # the branches whose calls the crashed run was making (see try_branch).
    crashed_calls: tuple[Branch, ...]
    # An inlined Fallback's primary error while its fallback runs (see _falls_back).
    primary_error: BaseException | None

    async def run_item(self, item: PlanItem) -> list[SagaStepResult[Any, Any]]:
        """One element of ``steps``: its result (a group's: one per member)."""
        if isinstance(item, GroupPlan):
            return await run_group(self, item)
        snapshot = self.image = step_snapshot(self.context)
        if isinstance(item, Branch):
            branch = item
            response = await self.try_branch(branch, snapshot, None)
        else:
            branch, response = await self.run_fallback(item, snapshot)
        if isinstance(response, SagaStepResult):
            return [response]
        return [SagaStepResult(response=response, step_name=branch.name, saga_id=self.saga_id)]

    async def run_fallback(
        self, plan: FallbackPlan, snapshot: StepSnapshot, lane: Lane | None = None
    ) -> tuple[Branch, Any]:
        """``plan``'s primary, then its fallback if the primary fails (S3);
        ``snapshot``: the context as the step began (the lane's, in a group)."""
        rule = plan.rule
        try:
            return plan.primary, await self.try_branch(plan.primary, snapshot, plan, lane)
        except Exception as error:
            if not rule.should_fall_back(error) or outer_run_cancelled():  # see _falls_back
                raise
            primary_error = error
            self._primary_left_undone(plan.primary, error)
        if self.hooks.fallback_taken:
            emit(
                self.hooks.fallback_taken,
                self.saga_id,
                plan.primary.name,
                plan.fallback.name,
                primary_error,
            )
        try:
            return plan.fallback, await self.try_branch(plan.fallback, snapshot, None, lane)
        except Exception as error:
            # S4: keep both errors; the fallback's chains the primary's.
            if error is not primary_error:
                if error.__cause__ is None:
                    error.__cause__ = primary_error
                elif error.__context__ is None:
                    error.__context__ = primary_error
            raise
        finally:
            del primary_error  # see act_failed: no error kept alive by a frame local

    async def try_branch(
        self,
        branch: Branch,
        snapshot: StepSnapshot,
        plan: FallbackPlan | None,
        lane: Lane | None = None,
    ) -> Any:
        """Run ``branch.act`` (under the breaker, with retries); on success push it.

        Whatever happens, a failed try leaves the context as the snapshot had it.
        ``lane``: a member of a ``Parallel`` group, run on the lane's context
        and cursor (whose first STARTED the group journaled already).
        """
        breaker = plan.breaker if plan is not None else None
        hooks = self.hooks
        journal = self.journal
        if lane is None:
            cursor: StepCursor = self
            context = self.context
        else:
            cursor = lane.cursor
            context = lane.context
        attempt = 1
        while True:
            cursor.step = branch.name
            cursor.attempt = attempt
            if lane is None or lane.first is not branch:
                journal.append(
                    (branch.position, branch.name, branch.branch, "act", _STARTED, attempt, None,
                     _now(), None)
                )
                if lane is not None:
                    lane.durable = lane.called = False
            else:
                lane.first = None
                lane.durable = True  # the group's write-ahead made this STARTED durable
                lane.called = False
            # (step_started is told once the STARTED record is durable, right
            # before the call — in ``act`` or below — as compensation_started is:
            # an attempt the journal refused was never made.)
            try:
                if breaker is not None and not (
                    attempt == 1 and self.resumed and branch in self.crashed_calls
                ):
                    response = await breaker.call(self.act, branch, lane)
                elif breaker is not None or hooks.step_call_started or hooks.step_call_finished:
                    # (Past its breaker: the call a crashed run was making is
                    # answered by a call of it, not by a rejection — see
                    # crashed_calls.)
                    response = await self.act(branch, lane)  # which reports the call
                else:  # self.act, inlined (one coroutine less per step)
                    if not self.live and (lane is None or not lane.durable):
                        await self.flush()
                    if lane is None and running_task().cancelling() > self.cancels:
                        await self.stop_swallowed()  # see run_all
                    if hooks.step_started:
                        emit(hooks.step_started, self.saga_id, branch.name, attempt)
                    cursor.action = "act"
                    cursor.active = True
                    if lane is not None:
                        lane.called = True
                    # (cursor.active stays set if the act fails: see act_failed)
                    try:
                        if branch.timeout is None:
                            response = await branch.act(context)
                        else:
                            async with asyncio.timeout(branch.timeout):
                                response = await branch.act(context)
                    except Exception as error:
                        if self.cancelled_meanwhile(lane):
                            raise cancellation_behind(error) from error
                        raise
                    if type(response) is COROUTINE:
                        raise unawaited(branch.name, "act", response)
                    cursor.active = False
            except JournalWriteFailed:
                # The act never ran (or a child of it is out of reach): nothing
                # to record, retry or fall back from.
                cursor.active = False
                self.primary_error = None  # the run stops: see run_all
                raise
            except BaseException as error:
                restore_step(context, snapshot)
                told = True
                if not cursor.active:
                    # Stopped before the call was announced: rejected by the
                    # breaker, or cancelled in the write-ahead. The journal
                    # records the attempt (STARTED, then FAILED): told so too —
                    # unless that write-ahead failed as well, and the journal
                    # will never hold the attempt (the run stops: see _flush).
                    # (Nor for a crash: see act_failed.)
                    told = self.interruption is None and isinstance(
                        error, Exception | _CancelledError
                    )
                    if told and hooks.step_started:
                        emit(hooks.step_started, self.saga_id, branch.name, attempt)
                if lane is not None:
                    cursor.active = False  # the lane's cursor (act_failed resets the run's)
                    if lane.called and isinstance(error, asyncio.CancelledError):
                        # Journaled CANCELLED, not FAILED: no step_failed (see
                        # act_cancelled); its compensation follows.
                        self.act_cancelled(branch, attempt)
                        raise
                self.act_failed(branch, attempt, error, told)
                retry = branch.retry
                if (
                    retry is None
                    or not retry.should_retry(error, attempt)
                    or (plan is not None and plan.rule.is_open_circuit(error))
                    or outer_run_cancelled()  # see _falls_back
                ):
                    raise
                attempt += 1
                await retry.wait_before(attempt)
                continue
            journal.append(
                (branch.position, branch.name, branch.branch, "act", _COMPLETED, attempt, None,
                 _now(), response)
            )
            if lane is None:
                self.context_dirty = True  # (a lane's context is merged by its group)
            self.stack.append(branch)
            if hooks.step_completed:
                emit(hooks.step_completed, self.saga_id, branch.name)
            return response

    def act_failed(
        self, branch: Branch, attempt: int, error: BaseException, told: bool = True
    ) -> None:
        # A function of its own so that no frame local of the retry loop keeps
        # the error alive (error -> traceback -> frame -> error is a cycle the
        # garbage collector would have to find, for every failed step).
        # ``active`` is still set if the act was called (its callers reset it
        # here, not before): a cancellation that landed in the write-ahead
        # called nothing. ``told``: the listeners heard this try start (see
        # try_branch), and hear it fail.
        called = self.active
        self.active = False
        if called and self.resumed and isinstance(error, Exception):
            crashed = self.crashed_calls
            if branch in crashed:
                # The participant answered for the crashed call: it failed
                # (S5). Its effect is no longer uncertain (see run_all).
                self.crashed_calls = tuple(one for one in crashed if one is not branch)
        if error.__class__ is _CancelledError and called and IN_A_MEMBER.get():
            # This run is a child saga of a group member, cancelled with it:
            # its call in flight is as uncertain as the member's own would be
            # (not a call its write-ahead never let through: nothing to undo).
            # Journaled CANCELLED, not FAILED: no step_failed (see act_cancelled).
            self.act_cancelled(branch, attempt)
            told = False
        elif not isinstance(error, Exception) and not isinstance(error, _CancelledError):
            # KeyboardInterrupt, SystemExit, GeneratorExit: the process (or
            # this coroutine) is going down inside the call, whose effect may
            # have landed. Its STARTED stays the journal's last word on it, so
            # that recovery calls it again with its key — and compensates it
            # if that resume is cancelled before it answers. A FAILED row
            # would tell recovery the call did nothing (S5, S10, S13); a
            # MemorySagaStore shows this journal as it goes, and a durable
            # one writes it with the next flush (a group's sibling that
            # completes meanwhile), so none may get it. Nor do the
            # listeners hear of a failure the journal never holds: the run's
            # saga_interrupted, with this error, tells them (S13).
            told = False
        else:
            text = str(error)  # _describe(error), inlined: every failed act comes here
            self.journal.append(
                (branch.position, branch.name, branch.branch, "act", _FAILED, attempt,
                 f"{type(error).__name__}: {text}" if text else type(error).__name__, _now(),
                 None)
            )
        if told and self.hooks.step_failed:
            emit(self.hooks.step_failed, self.saga_id, branch.name, error)

    def cancelled_meanwhile(self, lane: Lane | None) -> bool:
        """Whether this task was asked to cancel since the run (a group
        member: its task) began: the error an ``act`` let out then is the
        cancellation its participant converted (see ``running_task``)."""
        return running_task().cancelling() > (self.cancels if lane is None else 0)

    def _act_cancelled_instead(
        self, branch: Branch, attempt: int, error: Exception
    ) -> asyncio.CancelledError:
        """An inlined step's ``act`` raised ``error`` after its task was asked
        to cancel: the cancellation its participant converted (a driver
        cancelled mid-query raises an error of its own). It is the
        cancellation that stopped the step — never a reason to fall back or
        retry (S3, S8) — journaled as one, and raised in ``error``'s place."""
        stopped = cancellation_behind(error)
        self.primary_error = None  # a Fallback's: nothing falls back from here
        self.act_failed(branch, attempt, stopped)
        return stopped

    async def stop_swallowed(self, at_the_end: bool = False) -> asyncio.CancelledError:
        """This task was asked to cancel while the run went on: called right
        before a step's act (its STARTED durable, if the store writes ahead)
        or, ``at_the_end``, after the last step, when its count of requests
        has grown past the run's (``running_task``).

        A request not delivered yet (an act cancelled its caller as it
        returned, without waiting) lands here, in one turn of the loop, and
        is raised, with the caller's message — where a write-ahead store's
        write has landed it already. At the end it is returned instead: it
        lands where the completion's write would have landed it (the saga
        completes; see ``_complete_then_cancel``).

        Otherwise a participant swallowed it: it caught the
        ``CancelledError`` and returned, or converted it and its fallback
        answered (or the call in flight of a group member's, a child saga's,
        did). Those steps completed — they are on the compensation stack —
        but the caller asked to stop: ``CancelledError`` is raised here, the
        next step is journaled as cancelled before its act (as in a
        write-ahead), and the run unwinds (S8; S13: a cancellation never
        becomes a forward run). The caller's message went with the error the
        participant caught."""
        landed = await land_pending_cancellation()
        if landed is None:
            raise asyncio.CancelledError
        if at_the_end:
            return landed
        raise cancelled_again(landed)

    def _falls_back(self, plan: FallbackPlan, failed: Branch, error: BaseException) -> bool:
        """For the inlined run of a Fallback: whether ``failed`` (which raised
        ``error``) hands over to the fallback now (S3). When it was the
        fallback that failed, it chains the primary's error to ``error`` (S4),
        which the caller then raises."""
        if failed is plan.primary:
            if outer_run_cancelled():
                # A group member (or a child saga's step in one) whose act
                # failed once the run it works for was asked to cancel: the
                # run is stopping, and the request has not reached this
                # task yet (RUNS_AROUND). The act answered — it failed, and
                # is not compensated (S5) — but nothing runs forward after
                # it: no fallback, no retry (S3, S8; a write-ahead store
                # stops the fallback in its write, where the run's task
                # cancels the member).
                return False
            if plan.any_exception:
                if not isinstance(error, Exception):
                    return False  # cancellation, KeyboardInterrupt, SystemExit: never
            elif not plan.rule.should_fall_back(error):
                return False
            if self.hooks.fallback_taken:
                emit(self.hooks.fallback_taken, self.saga_id, failed.name, plan.fallback.name,
                     error)
            # Kept on the run until the fallback is done: S4 chains it to the
            # fallback's error, if the fallback fails too.
            self.primary_error = error
            if isinstance(error, SagaFailed) and error.status is _SAGA_FAILED:
                self.leave_undone(failed.name, error)  # _primary_left_undone, inlined
            return True
        primary_error, self.primary_error = self.primary_error, None
        if primary_error is not None and error is not primary_error:
            if error.__cause__ is None:
                error.__cause__ = primary_error
            elif error.__context__ is None:
                error.__context__ = primary_error
        return False

    def _primary_left_undone(self, primary: Branch, error: BaseException) -> None:
        """A Fallback's primary failed and the fallback takes over. If the
        primary ran a saga that ended FAILED (its own unwinding gave up), its
        leftovers are not the fallback's to undo, nor any compensation's of
        this run: recorded now (``leave_undone``), so that this run, should
        it unwind later — the fallback failing included — ends FAILED, not
        COMPENSATED. (If the run completes, the step did its job; the
        child's record stays FAILED for an operator.)"""
        if isinstance(error, SagaFailed) and error.status is _SAGA_FAILED:
            self.leave_undone(primary.name, error)

    async def act(self, branch: Branch, lane: Lane | None = None) -> Any:
        # Runs inside the breaker (when there is one): the write-ahead happens
        # only for a call that is let through, and a rejected call's rows are
        # written together with whatever comes next.
        if not self.live and (lane is None or not lane.durable):
            await self.flush()
        if lane is None:
            cursor: StepCursor = self
            context = self.context
        else:
            cursor = lane.cursor
            context = lane.context
            lane.called = True
        if lane is None and running_task().cancelling() > self.cancels:
            await self.stop_swallowed()  # see run_all
        if self.hooks.step_started:  # its STARTED is durable now: see try_branch
            emit(self.hooks.step_started, self.saga_id, branch.name, cursor.attempt)
        cursor.action = "act"
        cursor.active = True
        call = self._call_started(branch, "act", cursor.attempt)
        try:
            if branch.timeout is None:
                response = await branch.act(context)
            else:
                async with asyncio.timeout(branch.timeout):
                    response = await branch.act(context)
            if type(response) is COROUTINE:
                raise unawaited(branch.name, "act", response)
        except BaseException as error:
            if call is not None:
                self._act_call_raised(call, lane, error)
            if isinstance(error, Exception) and self.cancelled_meanwhile(lane):
                # Under a breaker, it counts as nothing (S9).
                raise cancellation_behind(error) from error
            raise  # (cursor.active stays set: see act_failed)
        cursor.active = False
        if call is not None:
            self._call_finished(call, None)
        return response

    def _act_call_raised(self, call: StepCall, lane: Lane | None, error: BaseException) -> None:
        """Tell ``step_call_finished`` that the act ``call`` raised ``error``,
        as the journal will hold the call (S13): interrupted — a crash, or a
        child saga's journal that failed (``JournalWriteFailed``, told with
        the store's error): its STARTED stays its last row (see act_failed);
        cancelled — a group member's call cancelled in flight, journaled
        CANCELLED (see act_cancelled); else failed."""
        if isinstance(error, JournalWriteFailed):
            call._interrupted = True
            error = error.error
        elif not isinstance(error, Exception | _CancelledError):
            call._interrupted = True
        elif lane is not None or IN_A_MEMBER.get():
            # The rows act_failed and try_branch write for it: a member's
            # CancelledError (or the cancellation it converted into an error
            # of its own), or a member's child saga's step's exact one.
            if isinstance(error, Exception):
                cancelled = self.cancelled_meanwhile(lane)
            elif lane is not None:
                cancelled = True
            else:
                cancelled = error.__class__ is _CancelledError
            if cancelled:
                call._cancelled = True
        self._call_finished(call, error)
