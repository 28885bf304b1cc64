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

A run is one object whose parts live in a chain of base classes, one
concept per module, each the next one's base:

* ``write_ahead.JournaledRun``: the journal and its writes (S13);
* ``unwinding.UnwindingRun``: how a run that cannot complete unwinds its
  compensation stack, or stops for recovery when its journal fails (the
  unwinding runs shielded from cancellation, S8);
* ``stepping.SteppingRun``: a step's ``act`` the general way (retries,
  breaker, timeout, Fallback, step listeners) and what a failed, cancelled
  or crashed act leaves in the journal;
* ``completion.CompletingRun``: how a completed run is recorded, told and
  returned (``SagaResult``);
* ``Execution`` (here): the run itself — its start, and the loops that
  drive the plan forward, with a plain step's work inlined in them.

Base classes, not helper objects: on the success path a step costs what it
did when they were all one class (a method of a base is found through the
run's class, cached; no object or call layer more per step).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from typing import Any, NoReturn

from .codec import FIELD_NAMES
from .compact_journal import Shape
from .completion import CompletingRun, SagaResult, _saga_result
from .context import (
    _DICT_ONLY,
    _IMMUTABLE,
    _JSON_SCALARS,
    check_serializable,
    context_to_dict,
    freeze_context,
    restore_step,
    step_snapshot,
    step_snapshot_to_dict,
)
from .events import emit
from .group_run import LaneCursor, run_group
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .run_settings import RunSettings
from .shielding import reset_var, running_task
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_STARTED as _STARTED
from .status import SagaStatus
from .step import _CURSOR, COROUTINE, SagaStepResult, unawaited
from .store._common import check_saga_id
from .store.base import Lease
from .write_ahead import JournalWriteFailed

__all__ = ["SagaResult"]

# A saga's statuses as the hot path sets them: a module global is read for
# free, an enum's member through its class costs ~45 ns on CPython 3.11.
_RUNNING = SagaStatus.RUNNING
_SAGA_COMPLETED = SagaStatus.COMPLETED
_now = time.time
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


class Execution(CompletingRun):
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
        "created_at",
        "driven_in",
        "fingerprint",
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
            # (Only a __dict__ holding its fields by name and nothing else,
            # FIELD_NAMES: an attribute beyond them is refused, S14, even one
            # set for a field deleted; fields in slots the scan would miss.)
            self.scalars = scalars = (
                state is not None
                and state.keys() == FIELD_NAMES.get(context.__class__)
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
        self.write_loop = None
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
