"""The three benchmark sagas, written once per implementation.

Every implementation runs the same shape of work so that only the saga
machinery differs:

* ``plain3``    -- three steps, all succeed.
* ``fallback3`` -- three steps; step 2 is a fallback pair whose primary raises
  and whose fallback succeeds.
* ``fail3``     -- three steps; the last raises, the first two are compensated
  and the run ends with an exception.

Steps do no I/O: ``act`` sets one string field of a small dataclass context
and returns a tiny response, ``compensate`` clears the field.

Each ``build_*`` function returns ``{kind: Workload}``.  ``Workload.new_runner()``
returns a fresh zero-argument coroutine function that runs ONE saga and
returns whatever the implementation produced (or the exception it raised,
caught); ``Workload.check(outcome)`` asserts the outcome is the expected one.

Stores.  ``Workload.steady_state`` says how the runner is driven over a long
run.  fallback_saga's default store is bounded (it keeps at most 10,000
finished sagas), so one runner is reused for the whole run after being filled
to that bound first (``fill``): this is the steady state of a long-running
service (not the cheapest state for us: the retained journals give the
garbage collector more to walk).  python-cqrs's ``MemorySagaStorage``
keeps every saga forever, so it gets a fresh storage per timed batch -- the
most favourable state for it, and the only one whose cost does not depend on
the length of the run.  The bare loop has no state.

The library imports happen inside the ``build_*`` functions so that a missing
package only disables that implementation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from collections.abc import Awaitable, Callable
from typing import Any

KINDS = ("plain3", "fallback3", "fail3")
# fallback_saga's MemorySagaStore keeps at most this many finished sagas by default.
DEFAULT_RETENTION = 10_000

SagaRunner = Callable[[], Awaitable[Any]]


class StepBoom(RuntimeError):
    """Raised by the failing primary (fallback3) and by the last step (fail3)."""


@dataclasses.dataclass
class Workload:
    kind: str
    new_runner: Callable[[], SagaRunner]
    check: Callable[[Any], None]
    # True: build one runner and reuse it for the whole run; False: fresh per batch.
    steady_state: bool = True
    # Sagas to run on a reused runner before timing, to reach the steady state.
    fill: int = 0


# ---------------------------------------------------------------------------
# (c) the floor: a bare hand-written try/await/except loop
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class BareCtx:
    order_id: str
    a: str | None = None
    b: str | None = None
    c: str | None = None


@dataclasses.dataclass
class BareResp:
    value: str


class BareA:
    async def act(self, ctx: BareCtx) -> BareResp:
        ctx.a = "a"
        return BareResp("a")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.a = None


class BareB:
    async def act(self, ctx: BareCtx) -> BareResp:
        ctx.b = "b"
        return BareResp("b")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.b = None


class BareBPrimary:
    async def act(self, ctx: BareCtx) -> BareResp:
        raise StepBoom("primary down")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.b = None


class BareBFallback:
    async def act(self, ctx: BareCtx) -> BareResp:
        ctx.b = "b-fallback"
        return BareResp("b-fallback")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.b = None


class BareC:
    async def act(self, ctx: BareCtx) -> BareResp:
        ctx.c = "c"
        return BareResp("c")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.c = None


class BareCFail:
    async def act(self, ctx: BareCtx) -> BareResp:
        raise StepBoom("last step fails")

    async def compensate(self, ctx: BareCtx) -> None:
        ctx.c = None


async def bare_saga(steps: list[Any], ctx: BareCtx) -> list[BareResp]:
    """The floor: act in order; a (primary, fallback) tuple tries the primary
    first and runs the fallback on any Exception; on failure compensate the
    completed steps in reverse and re-raise.  No snapshot, no journal."""
    done: list[Any] = []
    results: list[BareResp] = []
    try:
        for step in steps:
            if type(step) is tuple:
                primary, fallback = step
                try:
                    results.append(await primary.act(ctx))
                    done.append(primary)
                except Exception:
                    results.append(await fallback.act(ctx))
                    done.append(fallback)
            else:
                results.append(await step.act(ctx))
                done.append(step)
    except Exception:
        for step in reversed(done):
            await step.compensate(ctx)
        raise
    return results


def build_bare() -> dict[str, Workload]:
    definitions: dict[str, list[Any]] = {
        "plain3": [BareA(), BareB(), BareC()],
        "fallback3": [BareA(), (BareBPrimary(), BareBFallback()), BareC()],
        "fail3": [BareA(), BareB(), BareCFail()],
    }

    def factory(kind: str) -> Callable[[], SagaRunner]:
        def new_runner() -> SagaRunner:
            steps = definitions[kind]

            async def run_one() -> Any:
                ctx = BareCtx(order_id="o-1")
                try:
                    return ctx, await bare_saga(steps, ctx)
                except StepBoom as exc:
                    return ctx, exc

            return run_one

        return new_runner

    def check(kind: str) -> Callable[[Any], None]:
        def _check(outcome: Any) -> None:
            ctx, res = outcome
            if kind == "fail3":
                assert isinstance(res, StepBoom), res
                assert (ctx.a, ctx.b, ctx.c) == (None, None, None), ctx
            else:
                assert isinstance(res, list), res
                assert len(res) == 3, res
                b = "b-fallback" if kind == "fallback3" else "b"
                assert (ctx.a, ctx.b, ctx.c) == ("a", b, "c"), ctx
                assert res[1].value == b, res

        return _check

    return {k: Workload(k, factory(k), check(k)) for k in KINDS}


# ---------------------------------------------------------------------------
# (b) python-cqrs 5.3.0 saga module, in-memory storage, default options
# ---------------------------------------------------------------------------


@functools.cache
def cqrs_definitions() -> types.SimpleNamespace:
    """python-cqrs's versions of the three sagas (built once), shared with
    ``durable.py``: ``.sagas`` (kind -> Saga class), ``.Ctx``, ``.Container``."""
    import cqrs
    from cqrs.saga.fallback import Fallback
    from cqrs.saga.models import SagaContext
    from cqrs.saga.saga import Saga, SagaStepHandler

    # python-cqrs logs a WARNING (through logging's last-resort stderr handler
    # when nothing is configured) every time a fallback is taken. Printing to
    # the terminal is I/O, not saga overhead, so it is silenced; the f-string
    # formatting of the message still runs and is still measured.
    logging.getLogger("cqrs").setLevel(logging.CRITICAL)

    @dataclasses.dataclass
    class CqCtx(SagaContext):
        order_id: str
        a: str | None = None
        b: str | None = None
        c: str | None = None

    class CqResp(cqrs.Response):
        value: str

    class CqA(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            context.a = "a"
            return self._generate_step_result(CqResp(value="a"))

        async def compensate(self, context: CqCtx) -> None:
            context.a = None

    class CqB(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            context.b = "b"
            return self._generate_step_result(CqResp(value="b"))

        async def compensate(self, context: CqCtx) -> None:
            context.b = None

    class CqBPrimary(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            raise StepBoom("primary down")

        async def compensate(self, context: CqCtx) -> None:
            context.b = None

    class CqBFallback(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            context.b = "b-fallback"
            return self._generate_step_result(CqResp(value="b-fallback"))

        async def compensate(self, context: CqCtx) -> None:
            context.b = None

    class CqC(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            context.c = "c"
            return self._generate_step_result(CqResp(value="c"))

        async def compensate(self, context: CqCtx) -> None:
            context.c = None

    class CqCFail(SagaStepHandler[CqCtx, CqResp]):
        async def act(self, context: CqCtx) -> Any:
            raise StepBoom("last step fails")

        async def compensate(self, context: CqCtx) -> None:
            context.c = None

    class CqPlain3(Saga[CqCtx]):
        steps = [CqA, CqB, CqC]

    class CqFallback3(Saga[CqCtx]):
        steps = [CqA, Fallback(step=CqBPrimary, fallback=CqBFallback), CqC]

    class CqFail3(Saga[CqCtx]):
        steps = [CqA, CqB, CqCFail]

    class PlainContainer:
        """The smallest container python-cqrs accepts: builds steps with cls()."""

        external_container = None

        def attach_external_container(self, container: Any) -> None:
            pass

        async def resolve(self, type_: type) -> Any:
            return type_()

    return types.SimpleNamespace(
        sagas={"plain3": CqPlain3, "fallback3": CqFallback3, "fail3": CqFail3},
        Ctx=CqCtx,
        Container=PlainContainer,
    )


def build_cqrs() -> dict[str, Workload]:
    from cqrs.saga.storage.memory import MemorySagaStorage

    defs = cqrs_definitions()
    sagas, CqCtx = defs.sagas, defs.Ctx

    def factory(kind: str) -> Callable[[], SagaRunner]:
        def new_runner() -> SagaRunner:
            saga = sagas[kind]()
            container = defs.Container()
            storage = MemorySagaStorage()

            async def run_one() -> Any:
                ctx = CqCtx(order_id="o-1")
                results = []
                try:
                    async with saga.transaction(
                        context=ctx, container=container, storage=storage
                    ) as tx:
                        async for step_result in tx:
                            results.append(step_result)
                except StepBoom as exc:
                    return ctx, exc
                return ctx, results

            return run_one

        return new_runner

    return {k: Workload(k, factory(k), cqrs_check(k), steady_state=False) for k in KINDS}


def cqrs_check(kind: str) -> Callable[[Any], None]:
    """Asserts a python-cqrs ``(ctx, results or exception)`` outcome."""

    def _check(outcome: Any) -> None:
        ctx, res = outcome
        if kind == "fail3":
            assert isinstance(res, StepBoom), res
            assert (ctx.a, ctx.b, ctx.c) == (None, None, None), ctx
        else:
            assert isinstance(res, list), res
            assert len(res) == 3, res
            b = "b-fallback" if kind == "fallback3" else "b"
            assert (ctx.a, ctx.b, ctx.c) == ("a", b, "c"), ctx
            assert res[1].response.value == b, res

    return _check


# ---------------------------------------------------------------------------
# (a) fallback_saga
# ---------------------------------------------------------------------------


def build_fallback_saga(*, retained: int = DEFAULT_RETENTION) -> dict[str, Workload]:
    """Our sagas on the default store; ``retained``: its ``max_finished``
    (0 is the opt-in that keeps no finished saga, see compare.py)."""
    import fs_sagas

    from fallback_saga import MemorySagaStore, SagaFailed

    sagas = {
        "plain3": fs_sagas.Plain3,
        "fallback3": fs_sagas.Fallback3,
        "fail3": fs_sagas.Fail3,
    }

    def factory(kind: str) -> Callable[[], SagaRunner]:
        def new_runner() -> SagaRunner:
            saga = (
                sagas[kind]() if retained == DEFAULT_RETENTION
                else sagas[kind](store=MemorySagaStore(max_finished=retained))
            )
            Ctx = fs_sagas.Ctx

            async def run_one() -> Any:
                ctx = Ctx(order_id="o-1")
                try:
                    return ctx, await saga.run(ctx)
                except SagaFailed as exc:
                    return ctx, exc

            return run_one

        return new_runner

    return {
        k: Workload(k, factory(k), fallback_saga_check(k), fill=retained) for k in KINDS
    }


def build_fallback_saga_unretained() -> dict[str, Workload]:
    """Our sagas on ``MemorySagaStore(max_finished=0)``: a finished saga is
    dropped at once (the opt-in for a service that never loads a finished
    saga back; the contract floor keeps 10,000, as our default does)."""
    return build_fallback_saga(retained=0)


def fallback_saga_check(kind: str) -> Callable[[Any], None]:
    """Asserts a fallback_saga ``(ctx, SagaResult or SagaFailed)`` outcome."""
    from fallback_saga import SagaFailed, SagaStatus

    def _check(outcome: Any) -> None:
        ctx, res = outcome
        if kind == "fail3":
            assert isinstance(res, SagaFailed), res
            assert res.status == SagaStatus.COMPENSATED, res.status
            assert isinstance(res.error, StepBoom), res.error
            assert (ctx.a, ctx.b, ctx.c) == (None, None, None), ctx
        else:
            assert res.status == SagaStatus.COMPLETED, res.status
            b = "b-fallback" if kind == "fallback3" else "b"
            assert (ctx.a, ctx.b, ctx.c) == ("a", b, "c"), ctx
            assert len(res.results) == 3, res.results
            assert res.results[1].response.value == b, res.results

    return _check


# ---------------------------------------------------------------------------
# (d) the contract floor: the least an implementation of the contract can do
# ---------------------------------------------------------------------------
#
# Issue #12 asks, where a target is missed, whether the contract is what stands
# in the way. This is the answer, measured: the per-saga work that
# docs/mechanics.md requires of a run on the default in-process store,
# hand-written as one flat coroutine with no generality at all (flat
# dataclass contexts of atomic values only, plain steps and one Fallback, no
# retry, no timeout, no breaker, no listener, no resume, no group), running
# fallback_saga's own step classes (fs_sagas.py) so that the steps cost the
# same. What it still does, because the contract says so:
#
# * S12: a context the journal cannot hold is refused before any step runs
#   (the same C-speed check the library makes for a flat context);
# * a unique saga id; the run visible in the store while it runs;
# * ``current_step()``: the cursor in its context variable, moved per step;
# * S1/S2: the context snapshot before every step, restored when it fails;
# * two timestamped journal entries per step call (STARTED, then COMPLETED
#   with the response, or FAILED with the error's text), and for every
#   compensation (a forward step's STARTED and COMPLETED kept as their clock
#   readings, the rest following from the plan, as the library's lean path
#   keeps them: fallback_saga/compact_journal.py);
# * S3/S4: a Fallback's fallback runs on the primary's failure;
# * S5/S8: the completed steps compensated in reverse, in a task of its own
#   that the caller's cancellation cannot interrupt (eagerly started on
#   3.12+, as the library does);
# * S8: a cancellation of the run that a step swallows (catches and
#   returns) or converts (raises an error of its own, as a database driver
#   cancelled mid-query does) stops the run all the same: the task's count
#   of cancellation requests, read as the run starts (the current task: on
#   3.11 about 0.15 µs, see fallback_saga/shielding.py) and compared
#   before each act, after a failed one, and after the last;
# * the finished saga kept in bounded retention (10,000) as one flat tuple of
#   its journal and final context (its values checked atomic first: a list a
#   last step left is copied, not shared), the oldest dropped;
# * a result naming the saga id, its status, the context and each step's
#   result; a failure raised as an exception carrying the step's error.
#
# Everything the library does beyond this is its implementation's overhead
# (generality: any context model, retries, breakers, listeners, durable
# stores, resume, groups), which compare.py's "floor" column makes visible.


class FloorFailed(Exception):
    def __init__(self, saga_id: str, step: str, status: str, error: BaseException) -> None:
        super().__init__(saga_id, step, status)
        self.saga_id = saga_id
        self.status = status
        self.error = error


def build_contract_floor() -> dict[str, Workload]:
    import asyncio
    import copy
    import itertools
    import operator
    import os
    import sys
    import time
    from collections import deque

    import fs_sagas

    from fallback_saga.shielding import running_task
    from fallback_saga.step import _CURSOR, SagaStepResult, StepCursor

    now = time.time
    json_scalars = frozenset({str, int, bool, type(None)})
    atomic = frozenset({str, int, float, bool, bytes, type(None)})
    prefix = os.urandom(10).hex()[:24]
    counter = itertools.count(1 << 48)
    new_tuple = tuple.__new__
    first = operator.itemgetter(0)
    eager = sys.version_info >= (3, 12)
    # The library's lookup of the current task (on 3.11 cheaper than
    # ``asyncio.current_task()``, see fallback_saga/shielding.py): the floor
    # pays what the library pays for the same check.
    current_task = running_task

    class Step:
        __slots__ = ("act", "branch", "compensate", "name", "position")

        def __init__(self, position: int, handler: Any, branch: str = "primary") -> None:
            self.position = position
            self.name = type(handler).__name__
            self.branch = branch
            self.act = handler.act
            self.compensate = handler.compensate

    class Run(StepCursor):
        __slots__ = ("journal", "stack", "status")

    async def unwind(run: Run, context: Any) -> None:
        journal, stack = run.journal, run.stack
        run.status = "compensating"
        while stack:
            step = stack.pop()
            run.step = step.name
            run.action = "compensate"
            journal.append((step.position, step.name, step.branch, "compensate", "started", 1,
                            None, now(), None))
            run.active = True
            try:
                await step.compensate(context)
            except Exception as error:
                journal.append((step.position, step.name, step.branch, "compensate", "failed",
                                1, f"{type(error).__name__}: {error}", now(), None))
                run.status = "failed"
                continue
            finally:
                run.active = False
            journal.append((step.position, step.name, step.branch, "compensate", "completed", 1,
                            None, now(), None))
        if run.status == "compensating":
            run.status = "compensated"

    @types.coroutine
    def one_turn() -> Any:
        yield

    async def shielded(coroutine: Any) -> None:
        # Eagerly started on 3.12+; on 3.11 one turn of the loop runs the
        # task's first step before ours (the cheapest wait there is).
        cancelled = False
        if eager:
            task = asyncio.Task(coroutine, loop=asyncio.get_running_loop(), eager_start=True)
        else:
            task = asyncio.get_running_loop().create_task(coroutine)
            try:
                await one_turn()
            except asyncio.CancelledError:
                cancelled = True
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return task.result()

    def new_runner_for(plan: list[Any]) -> Callable[[], SagaRunner]:
        # What the compact journal leaves out, kept once per saga definition.
        shape = tuple(
            value
            for item in plan
            for step in (item if item.__class__ is tuple else (item,))
            for value in (step.position, step.name, step.branch)
        )

        def new_runner() -> SagaRunner:
            live: dict[str, Any] = {}
            finished: deque[str] = deque()
            Ctx = fs_sagas.Ctx

            async def run_saga(context: Any) -> Any:
                state = context.__dict__
                if not json_scalars.issuperset(map(type, state.values())):
                    raise TypeError("the journal cannot hold this context")
                saga_id = prefix + hex(next(counter))[3:]
                run = Run(saga_id, "Saga")
                journal: list[Any] = []
                stack: list[Any] = []
                run.journal, run.stack, run.status = journal, stack, "running"
                created_at = now()
                live[saga_id] = run
                results = []
                # S8: a cancellation a step swallows or converts stops the run
                # (docs/mechanics.md): the task's count of requests, read as the
                # run starts and compared before each act and after the last.
                task = current_task()
                cancels = task.cancelling()
                token = _CURSOR.set(run)
                try:
                    for item in plan:
                        snapshot = state.copy() if atomic.issuperset(map(type, state.values())) \
                            else None
                        step = item[0] if item.__class__ is tuple else item
                        while True:
                            run.step = step.name
                            run.attempt = 1
                            journal.append(now())  # STARTED, compact
                            run.action = "act"
                            if task.cancelling() > cancels:
                                raise asyncio.CancelledError
                            run.active = True
                            try:
                                response = await step.act(context)
                            except Exception as error:
                                run.active = False
                                state.clear()
                                state.update(snapshot)  # type: ignore[arg-type]
                                if task.cancelling() > cancels:
                                    raise asyncio.CancelledError from error
                                journal.append((step.position, step.name, step.branch, "act",
                                                "failed", 1, f"{type(error).__name__}: {error}",
                                                now(), None))
                                if item.__class__ is tuple and step is item[0]:
                                    step = item[1]
                                    continue
                                raise
                            break
                        run.active = False
                        if response.__class__ is not SagaStepResult:
                            response = new_tuple(SagaStepResult, (response, step.name, saga_id))
                        journal.append(now())  # COMPLETED, compact: the response is in results
                        stack.append(step)
                        results.append(response)
                    if task.cancelling() > cancels:
                        raise asyncio.CancelledError
                except Exception as error:
                    failed_step = run.step
                    await shielded(unwind(run, context))
                    finish(run, saga_id, created_at, context, results)
                    raise FloorFailed(saga_id, failed_step, run.status, error) from error
                finally:
                    _CURSOR.reset(token)
                run.status = "completed"
                finish(run, saga_id, created_at, context, results)
                return (saga_id, "completed", context, results)

            def finish(run: Run, saga_id: str, created_at: float, context: Any,
                       results: list[Any]) -> None:
                journal = run.journal
                state = context.__dict__
                values: Any = state.values()
                # The record holds the final context's values themselves only
                # when they are atomic: a list the last step left is copied,
                # never shared with the caller's context (the library's
                # MemorySagaStore.retire_run makes the same check; the floor
                # skipped it until the twentieth pass, benchmarks/README.md).
                if not atomic.issuperset(map(type, values)):
                    values = copy.deepcopy(list(values))
                last = journal[-1]
                live[saga_id] = ("Saga", run.status, created_at,
                                 last if last.__class__ is float else last[7], len(journal),
                                 shape, *journal, *map(first, results), *state, *values)
                finished.append(saga_id)
                if len(finished) > DEFAULT_RETENTION:
                    del live[finished.popleft()]

            async def run_one() -> Any:
                ctx = Ctx(order_id="o-1")
                try:
                    return ctx, await run_saga(ctx)
                except FloorFailed as exc:
                    return ctx, exc

            return run_one

        return new_runner

    A, B, C = fs_sagas.StepA(), fs_sagas.StepB(), fs_sagas.StepC()
    plans: dict[str, list[Any]] = {
        "plain3": [Step(0, A), Step(1, B), Step(2, C)],
        "fallback3": [Step(0, A),
                      (Step(1, fs_sagas.StepBPrimary()),
                       Step(1, fs_sagas.StepBFallback(), "fallback")),
                      Step(2, C)],
        "fail3": [Step(0, A), Step(1, B), Step(2, fs_sagas.StepCFail())],
    }

    def check(kind: str) -> Callable[[Any], None]:
        def _check(outcome: Any) -> None:
            ctx, res = outcome
            if kind == "fail3":
                assert isinstance(res, FloorFailed), res
                assert res.status == "compensated", res.status
                assert isinstance(res.error, StepBoom), res.error
                assert (ctx.a, ctx.b, ctx.c) == (None, None, None), ctx
            else:
                _, status, _, results = res
                assert status == "completed", status
                b = "b-fallback" if kind == "fallback3" else "b"
                assert (ctx.a, ctx.b, ctx.c) == ("a", b, "c"), ctx
                assert len(results) == 3, results
                assert results[1].response.value == b, results

        return _check

    return {
        k: Workload(k, new_runner_for(plans[k]), check(k), fill=DEFAULT_RETENTION) for k in KINDS
    }
