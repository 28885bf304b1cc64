"""The lean way a run drives its plan forward: ``LeanRun.run_plain``.

The commonest saga (``Saga._runs_plain``) takes it: a fresh run on a
``MemorySagaStore``, nobody listening, every step plain (a ``Branch``, or a
``FallbackPlan`` with no retry, timeout or breaker). It makes the same
transitions in the same order as the general loop's inlined steps
(``general_run.GeneralRun.run_all``), less what that loop asks of every step
and every run for the sagas this one never sees — groups, resumes,
listeners, write-ahead stores — and keeps its journal compact
(``compact_journal``). Why it exists, and what it is worth:
benchmarks/README.md, issue #12's seventh pass (the lean path) and eighth
(the compact journal).

Split from the executor's ``Execution`` by concept: one of a run's two ways
forward (``GeneralRun`` is the other), sharing with the other only the
run's state, which ``Execution.__init__`` sets (the fields the comments here
name, ``driven_in`` and ``scalars`` among them, are declared there). A base
class of ``Execution`` holding no field and no part (``__slots__ = ()``):
``run_plain`` is the run's own method as before, found through the run's
class (cached), its code unchanged — no object, call or attribute hop more
per saga or step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .compact_journal import Shape
from .completion import CompletingRun, SagaResult, _saga_result
from .context import _DICT_ONLY, _IMMUTABLE, freeze_context, restore_step, step_snapshot
from .plan import Branch, PlanItem
from .shielding import reset_var, running_task
from .status import SagaStatus
from .step import _CURSOR, COROUTINE, SagaStepResult, unawaited

__all__ = ["LeanRun"]

# A saga's status as the hot path sets it: a module global is read for
# free, an enum's member through its class costs ~45 ns on CPython 3.11.
_SAGA_COMPLETED = SagaStatus.COMPLETED
_now = time.time
_new_tuple = tuple.__new__


class LeanRun(CompletingRun):
    """A run driven forward the lean way (see the module's docstring).
    A base of ``Execution`` with no field of its own: ``Execution.__init__``
    sets the run's state."""

    __slots__ = ()

    # Execution's (see there): the event loop driving the run (Any, as in
    # general_run: set here, typed there), and whether S12's check at its
    # start found a flat context of JSON scalars only.
    driven_in: Any
    scalars: bool

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
