"""The run of one saga: a state machine over the steps and a compensation stack.

Per run, one ``Execution`` owns the context, the compensation stack, the
status and the journal. Transitions are appended to ``journal`` as they
happen. How they reach the store depends on the store:

* a write-ahead store (SQLite, PostgreSQL, any ``SagaStore``) gets every
  transition not yet written in one call, right before the next ``act`` or
  ``compensate`` is called — a step's STARTED is durable before it runs, and
  "step N completed" + "step N+1 started" share one write. When a breaker
  rejects a call, the rejected step's rows join the fallback's write. That
  write is ``write_ahead.JournaledRun.flush`` (``Execution``'s base class);
* an in-process store (``LiveJournal``, e.g. ``MemorySagaStore``) watches
  the run instead, so journaling costs no await at all.

A ``Parallel`` group's members run in ``group_run`` (each in a task of its
own), which calls back into the run for each member's branch.

The saga is on the hot path of every order, so the per-step work is kept to
what the contract needs: one snapshot (S2), two journal tuples, a cursor
update for ``current_step()``. Listener hooks are resolved once per saga
instance; with no listener, nothing is called.

A run that cannot complete unwinds its compensation stack, or stops for
recovery when its journal fails: that is ``unwinding.UnwindingRun``, the
base class ``Execution`` drives forward from (the unwinding runs shielded
from cancellation, S8).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from .codec import FIELD_WIDTHS
from .compact_journal import Shape
from .context import (
    _DICT_ONLY,
    _IMMUTABLE,
    _JSON_SCALARS,
    StepSnapshot,
    check_serializable,
    context_to_dict,
    freeze_context,
    restore_step,
    step_snapshot,
    step_snapshot_to_dict,
)
from .errors import ContextSerializationError, SagaFailed
from .events import StepCall, emit
from .group_run import IN_A_MEMBER, Lane, LaneCursor, run_group
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .redaction import withheld
from .run_settings import RunSettings
from .shielding import (
    cancellation_behind,
    cancelled_again,
    land_pending_cancellation,
    outer_run_cancelled,
    reset_var,
    running_task,
)
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_FAILED as _FAILED
from .status import RAW_STARTED as _STARTED
from .status import SagaStatus
from .step import _CURSOR, COROUTINE, SagaStepResult, StepCursor, unawaited
from .store._common import check_saga_id
from .store.base import Lease
from .unwinding import UnwindingRun
from .write_ahead import JournalWriteFailed

__all__ = ["SagaResult"]

ContextT = TypeVar("ContextT")
T = TypeVar("T")

# A saga's statuses as the hot path sets them: a module global is read for
# free, an enum's member through its class costs ~45 ns on CPython 3.11.
_RUNNING = SagaStatus.RUNNING
_SAGA_COMPLETED = SagaStatus.COMPLETED
_SAGA_FAILED = SagaStatus.FAILED
_CancelledError = asyncio.CancelledError
_now = time.time


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[ContextT]):
    """A saga that completed: every step's ``act`` returned."""

    saga_id: str
    status: SagaStatus
    context: ContextT
    results: list[SagaStepResult[ContextT, Any]]

    def __repr__(self) -> str:
        # The context may hold secrets: its class only (redaction.py).
        return (
            f"SagaResult(saga_id={self.saga_id!r}, status={self.status!r}, "
            f"context={withheld(self.context)}, results={self.results!r})"
        )


_new_object = object.__new__
_RESULT_SLOTS = tuple(
    SagaResult.__dict__[name].__set__ for name in ("saga_id", "status", "context", "results")
)


def _saga_result(
    saga_id: str, status: SagaStatus, context: Any, results: list[Any]
) -> SagaResult[Any]:
    """``SagaResult(...)`` without its generated ``__init__`` (four
    ``object.__setattr__`` calls: a frozen dataclass's), on every completed run."""
    result: SagaResult[Any] = _new_object(SagaResult)
    set_id, set_status, set_context, set_results = _RESULT_SLOTS
    set_id(result, saga_id)
    set_status(result, status)
    set_context(result, context)
    set_results(result, results)
    return result


_new_tuple = tuple.__new__


# --------------------------------------------------------------------------- saga ids


def _new_id_prefix() -> str:
    raw = os.urandom(10).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-"


# The counter starts at 16**12, so that hex() of it is "0x1" and then twelve
# digits: the id's last group is hex(n)[3:], which is cheaper than formatting
# n with a width (an f-string's format spec is a call of its own). It would
# wrap after 16**12 ids (2.8e14: 89 years at 100,000 sagas/s).
_ID_BASE = 16**12
_id_prefix = _new_id_prefix()
_id_counter = itertools.count(_ID_BASE + 1)


def _reseed_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix = _new_id_prefix()
    _id_counter = itertools.count(_ID_BASE + 1)


os.register_at_fork(after_in_child=_reseed_ids_after_fork)


def new_saga_id() -> str:
    """A unique saga id, shaped like a UUID: 80 random bits drawn once per
    process (and again after ``fork``) followed by a counter. ``uuid4()``
    costs a system call per id — more than a whole saga step here."""
    return _id_prefix + hex(next(_id_counter))[3:]


# --------------------------------------------------------------------------- the run


def running_execution() -> Execution | None:
    """The run whose step is executing in this task, if any (for ``SubSaga``)."""
    cursor = _CURSOR.get()
    if isinstance(cursor, Execution):
        return cursor
    if isinstance(cursor, LaneCursor):
        execution = cursor.execution  # a group member's: the run it belongs to
        if isinstance(execution, Execution):
            return execution
    return None


class Execution(UnwindingRun):
    """The state of one saga run. Not reusable; not shared between tasks.

    It is also the run's ``StepCursor`` (what ``current_step()`` reads) and,
    for an in-process store, the live record the store watches.

    On an in-process store (``live``) a run is started on the hot path of
    every saga, so only what such a run reads is set; the write-ahead
    bookkeeping (``written``, ``pending_status``, ``fence``, ...) is set for a
    write-ahead store only, and only its code reads it.
    """

    __slots__ = (
        "allow_changed_definition",
        "cancels",
        "crashed_calls",
        "created_at",
        "driven_in",
        "fingerprint",
        "primary_error",
        "results",
        "resumed",
        "scalars",
        "shape",
    )

    # The event loop driving the run while its coroutine runs (None before,
    # and once it has let go: ended, or a crash came out of it; for a
    # coroutine driven by hand too). An in-process store reads it only when
    # a resume of the same saga collides with the run (``MemorySagaStore.
    # track``), to tell a run still going from one a crash left behind (or
    # whose loop was closed under it). A loop, not the task: the task holds
    # the run (a reference cycle once it raised; and a run left pending in
    # a closed loop would be kept from the collector, which closes it).
    driven_in: asyncio.AbstractEventLoop | None

    # Set by a resume only (Saga._execution_at), read only when ``resumed``:
    # the branches whose calls the crashed run was making (see try_branch).
    crashed_calls: tuple[Branch, ...]
    # Set by a resume only, read only when ``resumed``: the operator's
    # override of a changed definition, which the child sagas this run
    # drives (SubSaga) are resumed or unwound with too.
    allow_changed_definition: bool

    def __init__(
        self,
        settings: RunSettings,
        context: Any,
        saga_id: str | None = None,
        fence: Lease | None = None,
    ) -> None:
        # A given id no store can hold is refused here, before anything runs,
        # rather than by the store's first write (or not at all in memory).
        self.saga_id = saga_id = (
            _id_prefix + hex(next(_id_counter))[3:]  # new_saga_id(), inlined
            if saga_id is None else check_saga_id(saga_id)
        )
        # StepCursor's fields, set here (one call fewer per run)
        self.saga_name = settings.saga_name
        self.step = ""
        self.action = "act"
        self.attempt = 0
        self.active = False
        self.settings = settings
        self.fingerprint = settings.fingerprint  # LiveSaga's (read once, by the store, at the end)
        self.context = context
        self.store = settings.store
        self.hooks = settings.hooks
        self.live = live = settings.live
        self.stack: list[Branch] = []
        self.results: list[SagaStepResult[Any, Any]] = []
        self.journal = []
        # A compact journal's plan shape (run_plain's: see compact_journal), else None.
        self.shape: Shape | None = None
        self.status = _RUNNING
        self.image: Any = None  # a step snapshot; once finished, what freeze_context gave
        self.created_at = _now()
        self.created = False
        self.resumed = False
        self.context_dirty = False
        self.branch_errors: dict[str, BaseException] | None = None  # of a failed group
        # JournaledRun's (see there)
        self.write_lock = None
        self.journaled_status = None
        self.interruption = None
        self.landed_unseen = None
        self.abandoned = None
        # An inlined Fallback's primary error while its fallback runs (see _falls_back).
        self.primary_error: BaseException | None = None
        self.left_undone: dict[str, BaseException] | None = None  # see leave_undone
        # S12: a context the journal cannot hold is refused before any step runs
        # — by every store, so that moving from memory to SQLite holds no surprise.
        if live:
            # check_serializable's fast path inlined: a flat dataclass of JSON scalars.
            state = getattr(context, "__dict__", None)
            # Kept: run_plain's first snapshot needs no scan of its own then.
            # (Only a __dict__ holding its fields and nothing else, FIELD_WIDTHS: an
            # attribute beyond them is refused, S14; fields in slots the scan would miss.)
            self.scalars = scalars = (
                state is not None
                and FIELD_WIDTHS.get(context.__class__, -2) == len(state)
                and _JSON_SCALARS.issuperset(map(type, state.values()))
            )
            if not scalars:
                check_serializable(context)
            return
        self.scalars = False
        # JournaledRun's write-ahead state
        self.initial_context = context_to_dict(context)
        self.written = 0
        self.pending_status = None
        self.note = None
        self.context_refused = False
        # Every write is conditional on the fencing token: 0 for a first run
        # (so that a recovery worker claiming the saga — token 1 — shuts this
        # runner out if it is merely slow), the lease's token when resumed.
        # (An in-process store is never written to: no lease to make per run.)
        self.fence = Lease(saga_id, "", 0, math.inf) if fence is None else fence

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        task = running_task()
        self.driven_in = task._loop  # see driven_in (let go by whoever ends the run)
        self.cancels = task.cancelling()  # see running_task
        if self.live:
            self.store.track(self, replace=self.resumed)  # type: ignore[attr-defined]
            self.created = True
        if self.hooks.saga_started:
            emit(self.hooks.saga_started, self.saga_id, self.saga_name)
        if self.resumed and self.hooks.saga_resumed:
            emit(self.hooks.saga_resumed, self.saga_id, self.saga_name)

    async def run_all(
        self,
        plan: tuple[PlanItem, ...],
        start: int = 0,
        fallback_first: bool = False,
        resumed_group: dict[int, SagaStepResult[Any, Any]] | None = None,
        fallbacks_started: frozenset[int] = frozenset(),
        uncertain: tuple[Branch, ...] = (),
    ) -> SagaResult[Any]:
        """Run ``plan`` from item ``start`` (0, or where a resumed run stopped);
        ``fallback_first``: the step at ``start`` had already handed over to its
        fallback, so resume with the fallback. When ``plan[start]`` is a group
        a resumed run stopped in: ``resumed_group`` holds the results of its
        members that completed (by position: they do not run again), and
        ``fallbacks_started`` the positions of members resumed with their fallback.

        ``uncertain``: the branch of ``plan[start]`` a crashed run was calling
        when it died (its STARTED is the journal's last word on it; a group's
        members, any number): that call may have taken effect. Called again,
        its participant answers for the same idempotency key: if it fails,
        the step failed (S5). But if this run is cancelled before that
        answer (even before the call), the crashed call's effect stays
        unknown: the step is compensated as the saga unwinds, like a group
        member cancelled in flight (journaled CANCELLED) — not left applied
        under a COMPENSATED saga. (Compensations tolerate "it never
        happened": docs/mechanics.md.)"""
        # begin(), inlined
        task = running_task()
        if self.live:
            self.driven_in = task._loop  # see driven_in
            self.store.track(self, replace=self.resumed)  # type: ignore[attr-defined]
            self.created = True
        hooks = self.hooks
        if hooks.saga_started:
            emit(hooks.saga_started, self.saga_id, self.saga_name)
        if self.resumed and hooks.saga_resumed:
            emit(hooks.saga_resumed, self.saga_id, self.saga_name)
        token = _CURSOR.set(self)
        results = self.results
        resumed_with = len(results)
        # The requests to cancel pending as the run starts are not its own
        # (see running_task); one made meanwhile that a step swallowed stops
        # the run before the next step's act (see stop_swallowed).
        self.cancels = cancels = task.cancelling()
        late: asyncio.CancelledError | None = None
        try:
            try:
                if fallback_first:
                    resumed: FallbackPlan = plan[start]  # type: ignore[assignment]
                    snapshot = self.image = step_snapshot(self.context)
                    response = await self.try_branch(resumed.fallback, snapshot, None)
                    if not isinstance(response, SagaStepResult):
                        response = SagaStepResult(response, resumed.fallback.name, self.saga_id)
                    results.append(response)
                    start += 1
                elif resumed_group is not None:
                    group: GroupPlan = plan[start]  # type: ignore[assignment]
                    # The group answers for its members' crashed calls (run_group).
                    crashed, uncertain = uncertain, ()
                    results += await run_group(
                        self, group, resumed_group, fallbacks_started, crashed
                    )
                    start += 1
                # A step with no retry, timeout or breaker, with no step listener,
                # runs inlined below: try_branch's work (and run_fallback's), less
                # their coroutines and checks.
                inline = self.settings.inline_steps
                live = self.live
                context = self.context
                journal = self.journal
                stack = self.stack
                # A flat context (its state is its __dict__): step_snapshot's fast
                # path is inlined below, one call fewer per step.
                flat = _DICT_ONLY.get(context.__class__)
                coroutine = COROUTINE  # a local: read for every step that returns a bare response
                item: Any  # a PlanItem (Any: the checks below are by exact class, for speed)
                branch: Branch
                for item in plan[start:] if start else plan:
                    # run_item, inlined: this loop is the hottest path of the library
                    kind = item.__class__
                    if kind is GroupPlan:
                        results += await run_group(self, item)
                        continue
                    if flat and _IMMUTABLE.issuperset(
                        map(type, (state := context.__dict__).values())
                    ):
                        snapshot = self.image = state.copy()
                    else:
                        snapshot = self.image = step_snapshot(context)
                    if inline and item.plain:
                        branch = item if kind is Branch else item.primary
                        while True:
                            self.step = name = branch.name
                            self.attempt = 1
                            journal.append((branch.position, name, branch.branch, "act", _STARTED,
                                            1, None, _now(), None))
                            self.action = "act"
                            try:
                                if not live:
                                    await self.flush()  # the write-ahead: STARTED is durable first
                                if task.cancelling() > cancels:
                                    await self.stop_swallowed()
                                self.active = True
                                response = await branch.act(context)
                                if (returned := response.__class__) is not SagaStepResult:
                                    # Checked only here, so that a step returning its
                                    # SagaStepResult pays nothing for it.
                                    if returned is coroutine:  # a forgotten await
                                        raise unawaited(name, "act", response)
                                    response = _new_tuple(
                                        SagaStepResult, (response, name, self.saga_id)
                                    )
                            except JournalWriteFailed:
                                # The act never ran (or a child of it is out of
                                # reach): nothing to record or fall back from.
                                # The run stops: it keeps no primary's error
                                # (whose traceback holds this frame: a cycle).
                                self.primary_error = None
                                self.active = False
                                raise
                            except BaseException as error:
                                restore_step(context, snapshot)
                                if task.cancelling() > cancels and isinstance(error, Exception):
                                    raise self._act_cancelled_instead(branch, 1, error) from error
                                self.act_failed(branch, 1, error)  # (and active = False)
                                if kind is Branch or not self._falls_back(item, branch, error):
                                    raise
                                branch = item.fallback
                                continue
                            break
                        self.active = False
                        if kind is not Branch:
                            self.primary_error = None  # the fallback (if it ran) completed
                        # The journal keeps the response itself, not the SagaStepResult
                        # around it (one object fewer for the collector per retained step).
                        journal.append((branch.position, name, branch.branch, "act", _COMPLETED,
                                        1, None, _now(), response[0]))
                        self.context_dirty = True
                        stack.append(branch)
                        results.append(response)
                        continue
                    elif kind is Branch:
                        branch = item
                        response = await self.try_branch(branch, snapshot, None)
                    else:
                        branch, response = await self.run_fallback(item, snapshot)
                    if not isinstance(response, SagaStepResult):
                        response = _new_tuple(SagaStepResult, (response, branch.name, self.saga_id))
                    results.append(response)
                if task.cancelling() > cancels:
                    # After the last step: see stop_swallowed.
                    late = await self.stop_swallowed(at_the_end=True)
            except (Exception, JournalWriteFailed) as error:
                raise await self.unwound(error) from error  # fail's, one frame fewer
            except asyncio.CancelledError:
                if (
                    uncertain and len(results) == resumed_with
                    and uncertain[0] in self.crashed_calls and uncertain[0] not in self.stack
                ):
                    # Cancelled before it answered: see above. (Answered if its
                    # new call failed: act_failed. On the stack already if its
                    # new call was cancelled in flight in a group member's
                    # child: see act_failed. Once is enough.)
                    self.push_crashed_call(uncertain[0])
                await self.abort()
                raise
        except (Exception, asyncio.CancelledError):
            raise  # announced where it was handled
        except BaseException as error:
            self.crashed(error)
            raise
        finally:
            reset_var(_CURSOR, token)
            self.driven_in = None  # let go: see driven_in
            # No local keeps the task: the error raised from here holds this
            # frame, and the task, once done, that error (a reference cycle).
            task = None  # type: ignore[assignment]
        if late is not None:
            return await self._complete_then_cancel(late)
        if self.live:
            return self.complete_live()  # one coroutine fewer
        return await self.complete()

    async def run_plain(self, plan: tuple[PlanItem, ...], shape: Shape) -> SagaResult[Any]:
        """``run_all`` for the commonest saga (``Saga._runs_plain``): a fresh
        run on a ``MemorySagaStore`` (exactly: its ``retire_run`` is called),
        nobody listening, every step plain (a ``Branch`` or a
        ``FallbackPlan`` with no retry, timeout or breaker).

        The same transitions in the same order as ``run_all``'s inlined loop
        (``tests/test_inline_path_equivalence.py`` runs a saga both ways),
        less what that loop asks of every step and every run for the sagas
        this one never sees: groups, resumes, listeners, write-ahead stores.
        Worth 2-5 % of such a saga, 4-6 % with ``MemorySagaStore.retire_run``
        (benchmarks/README.md, seventh pass).

        Its journal is compact (``compact_journal``): a forward step's STARTED
        and COMPLETED rows are their clock readings only, which ``shape`` (the
        plan's) and ``results`` complete when the store reads them; every
        other row is whole."""
        self.shape = shape
        task = running_task()  # see run_all
        self.driven_in = task._loop  # see driven_in
        self.store.track(self)  # type: ignore[attr-defined]
        self.created = True
        context = self.context
        journal: list[Any] = self.journal  # compact: clock readings and whole rows
        stack = self.stack
        results = self.results
        saga_id = self.saga_id
        flat = _DICT_ONLY.get(context.__class__)
        coroutine = COROUTINE  # a local: read for every step that returns a bare response
        # S12's check (__init__) has just found JSON scalars only, all of them
        # immutable: the first step's snapshot is a copy with no scan of its own.
        scanned = flat and self.scalars
        self.cancels = cancels = task.cancelling()
        late: asyncio.CancelledError | None = None
        token = _CURSOR.set(self)
        try:
            item: Any  # a Branch or a FallbackPlan (Any: told apart by exact class)
            branch: Branch
            for item in plan:
                if scanned:
                    scanned = False
                    snapshot = self.image = context.__dict__.copy()
                elif flat and _IMMUTABLE.issuperset(
                    map(type, (state := context.__dict__).values())
                ):
                    snapshot = self.image = state.copy()
                else:
                    snapshot = self.image = step_snapshot(context)
                branch = item if item.__class__ is Branch else item.primary
                while True:
                    self.step = name = branch.name
                    self.attempt = 1
                    journal.append(_now())  # STARTED, compact
                    self.action = "act"
                    try:
                        if task.cancelling() > cancels:
                            await self.stop_swallowed()  # see run_all
                        self.active = True
                        response = await branch.act(context)
                        if (returned := response.__class__) is not SagaStepResult:
                            # Checked only here: see run_all.
                            if returned is coroutine:  # a forgotten await
                                raise unawaited(name, "act", response)
                            response = _new_tuple(SagaStepResult, (response, name, saga_id))
                    except BaseException as error:
                        restore_step(context, snapshot)
                        if task.cancelling() > cancels and isinstance(error, Exception):
                            raise self._act_cancelled_instead(branch, 1, error) from error
                        self.act_failed(branch, 1, error)  # (and active = False)
                        # A plain step's failure, or a Fallback's that does not fall back.
                        if item is branch or not self._falls_back(item, branch, error):
                            raise
                        branch = item.fallback
                        continue
                    break
                self.active = False
                if item is not branch:
                    self.primary_error = None  # a Fallback's: the fallback (if it ran) completed
                journal.append(_now())  # COMPLETED, compact: its response is in results
                stack.append(branch)
                results.append(response)
            if task.cancelling() > cancels:
                late = await self.stop_swallowed(at_the_end=True)  # see run_all
        except Exception as error:
            raise await self.unwound(error) from error  # fail's, one frame fewer
        except asyncio.CancelledError:
            await self.abort()
            raise
        finally:
            reset_var(_CURSOR, token)
            self.driven_in = None  # let go: see driven_in
            # No local keeps the task: the error raised from here holds this
            # frame, and the task, once done, that error (a reference cycle).
            task = None  # type: ignore[assignment]
        if late is not None:
            return await self._complete_then_cancel(late)
        # complete_live, inlined (nobody to tell); the store is a MemorySagaStore
        self.status = _SAGA_COMPLETED
        self.left_undone = None  # see complete_live
        if not self.store.retire_run(self, context):  # type: ignore[attr-defined]
            self.image = freeze_context(context)
            self.store.finished(self)  # type: ignore[attr-defined]
        return _saga_result(saga_id, _SAGA_COMPLETED, context, results)

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

    def complete_live(self, cancelled: BaseException | None = None) -> SagaResult[Any]:
        """``complete`` on an in-process store: nothing to await.
        ``cancelled``: see ``_complete_then_cancel``."""
        # The final state, frozen (no snapshot to take when it is flat).
        self.image = freeze_context(self.context)
        self.status = _SAGA_COMPLETED
        # Nothing more to unwind: the run keeps no child's error (it holds,
        # through its traceback, a frame that holds this run: a cycle).
        self.left_undone = None
        self.store.finished(self)  # type: ignore[attr-defined]
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, cancelled)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def complete(self, cancelled: BaseException | None = None) -> SagaResult[Any]:
        """``cancelled``: see ``_complete_then_cancel``."""
        if self.live:
            return self.complete_live(cancelled)
        # S13: the caller hears "completed" only once the journal says so.
        self.pending_status = SagaStatus.COMPLETED
        failure: JournalWriteFailed | None = None
        try:
            await self.flush()
        except JournalWriteFailed as error:
            failure = error
        except asyncio.CancelledError:
            await self._cancelled_at_the_end()
            raise
        if failure is not None:
            try:
                if isinstance(failure.error, ContextSerializationError):
                    # The last step left a context the journal cannot hold.
                    await self._unwind_refused_context(self.fail(failure))
                raise self._interrupted(failure.error)
            finally:
                failure = None  # no local keeps it: its traceback holds this frame
        self.status = SagaStatus.COMPLETED
        self.left_undone = None  # see complete_live
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, cancelled)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def _cancelled_at_the_end(self) -> None:
        """The caller was cancelled while the saga's completion was written.
        The write has finished either way (see ``flush``); the listeners hear
        how the saga ended, as the journal has it, before the caller's
        ``CancelledError`` propagates."""
        if self.journaled_status is _SAGA_COMPLETED:
            self.status = _SAGA_COMPLETED  # it landed: the saga is done
            self.left_undone = None  # see complete_live
            self._announce_finish(asyncio.CancelledError())
        elif self.context_refused:
            # The store refused the context the last step left: unwind, as
            # ``complete`` does for a caller still waiting.
            await self._unwind_refused_context(self.abort())
        else:
            # Refused for good: left for recovery, as ``complete`` would leave it.
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())

    async def _unwind_refused_context(self, unwinding: Coroutine[Any, Any, None]) -> None:
        """``unwinding`` (the run's ``fail`` or ``abort``) after the run's
        steps have ended: with this run as the current step cursor again,
        as while the steps ran, so that each ``compensate`` can ask
        ``current_step()`` for its idempotency key."""
        token = _CURSOR.set(self)
        try:
            await unwinding
        finally:
            reset_var(_CURSOR, token)

    async def resume_unwinding(self, failed_step: str, error: BaseException) -> NoReturn:
        """Finish the unwinding a crashed run had begun; never runs a forward step."""
        self.begin()
        self.step = failed_step
        token = _CURSOR.set(self)
        try:
            await self.fail(error)
        except (Exception, asyncio.CancelledError):
            raise  # announced where it was handled
        except BaseException as crash:
            self.crashed(crash)
            raise
        finally:
            reset_var(_CURSOR, token)
            self.driven_in = None  # let go: see driven_in

    # ------------------------------------------------------------------ forward

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

    async def _complete_then_cancel(self, late: asyncio.CancelledError) -> NoReturn:
        """The saga completed, and a request to cancel landed right after its
        last step (``stop_swallowed``): as when it lands in the completion's
        write, the journal says COMPLETED, the listeners hear of the
        completion with the cancellation, and the caller gets it."""
        if self.live:
            self.complete_live(late)
        else:
            await self.complete(late)  # (what stops it is raised instead)
        raise cancelled_again(late)

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

    # ------------------------------------------------------------------ what a live store reads

    def context_image(self) -> dict[str, Any]:
        """``LiveSaga``: the context as of the last transition, in journal form."""
        if self.image is None:
            return context_to_dict(self.context)
        return step_snapshot_to_dict(self.context, self.image)

    def frozen_context(self) -> Any:
        """``LiveSaga`` (optional): the final context, for a store that keeps
        the finished saga as plain values (``context.frozen_to_dict`` reads
        it); None when it should keep the saga itself: a resumed run, whose
        journal holds entries in journal form, not raw ones."""
        if self.resumed:
            return None
        if self.image is None:
            return context_to_dict(self.context)
        return self.image
