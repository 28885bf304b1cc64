"""The general way a run drives its plan forward: ``GeneralRun.run_all``.

Any plan (``Parallel`` groups too), on any store (a write-ahead store's
STARTED made durable before each ``act``), with listeners, and a resumed run
picking up where a crashed one stopped (a Fallback that had handed over, a
group half done, a call in doubt). A plain step — no retry, timeout or
breaker, nobody listening to steps — runs inlined in its loop, the hot path
of every saga that does not take the lean one (``lean_run``); any other step
runs through ``stepping.SteppingRun`` (``try_branch``, ``run_fallback``), a
group through ``group_run.run_group``.

Split from the executor's ``Execution`` by concept: one of a run's two ways
forward (``lean_run.LeanRun`` is the other), sharing with the other only
the run's state, which ``Execution.__init__`` sets (the fields the comments
here name, ``driven_in`` among them, are declared there). A base class of
``Execution`` holding no field and no part (``__slots__ = ()``): ``run_all``
is the run's own method as before, found through the run's class (cached),
its code unchanged — no object, call or attribute hop more per saga or step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .completion import CompletingRun, SagaResult
from .context import _DICT_ONLY, _IMMUTABLE, restore_step, step_snapshot
from .events import emit
from .group_run import run_group
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .shielding import reset_var, running_task
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_STARTED as _STARTED
from .step import _CURSOR, COROUTINE, SagaStepResult, unawaited
from .write_ahead import JournalWriteFailed

__all__ = ["GeneralRun"]

_now = time.time
_new_tuple = tuple.__new__


class GeneralRun(CompletingRun):
    """A run driven forward the general way (see the module's docstring).
    A base of ``Execution`` with no field of its own: ``Execution.__init__``
    sets the run's state."""

    __slots__ = ()

    # Execution's (see there): the event loop driving the run. Any here, as
    # UnwindingRun's ``shape``: a base may set a slot only its subclass
    # declares (mypy refuses a typed one), and Execution types it.
    driven_in: Any

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
