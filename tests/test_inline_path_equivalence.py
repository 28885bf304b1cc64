"""The lean run paths against the general path, on random sagas.

For speed, ``Execution.run_all`` runs a plain step (and a plain ``Fallback``)
inlined in its loop when no step listener listens; with one, every step goes
through ``try_branch``/``run_fallback``. A saga whose steps are all plain, on
the default store (a ``MemorySagaStore``) with nobody listening at all, goes
through ``Execution.run_plain`` instead: the inlined loop less its checks.
The three are separate code for the same rules (S1-S7), so a
hypothesis-drawn saga — plain steps, Fallbacks, steps that fail, retried
steps (which take the general path in every run, and keep the saga off
run_plain), compensations that fail once or for good, acts that change the
context before they fail — is run each way on the same kind of store, with
a flat context of immutable values (the loop's fast snapshot) or one
holding a list (the deep snapshot). The participants' ledger, the caller's outcome,
the context and the journal (every row but its clock reading) must be the
same — at the end, and as the store shows it while each act and each
compensation runs (run_plain keeps a compact journal the store expands) —
and the context must hold exactly what the acts that returned did.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_faults import (
    FAST_COMPENSATION_RETRY,
    FAST_JOURNAL_RETRY,
    Ctx,
    FallbackSpec,
    Item,
    Ledger,
    LedgerStep,
    Shape,
    StepSpec,
)

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaResult,
    SagaStatus,
    SagaStepHandler,
    SagaStore,
    SQLiteSagaStore,
    current_step,
)
from fallback_saga.executor import Execution

_names = itertools.count()
acts = st.sampled_from(["ok", "ok", "ok", "always", "once"])
compensations = st.sampled_from(["ok", "ok", "once", "always"])


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    items: list[Item] = []
    for position in range(draw(st.integers(1, 5))):
        def spec(suffix: str = "", position: int = position) -> StepSpec:
            return StepSpec(f"S{position}{suffix}", act=draw(acts), compensate=draw(compensations))

        items.append(spec() if draw(st.booleans()) else FallbackSpec(spec("p"), spec("f")))
    return Shape(items, name=f"Same{next(_names)}")


@dataclasses.dataclass
class FlatCtx(SagaContext):
    """Immutable values only: the run loop snapshots it with a dict copy."""

    order_id: str
    last: str = ""
    count: int = 0


# What a run's store shows while each of its acts and compensations runs, by
# saga id: the store, then (status, rows) as load() gave them at that moment.
# run_plain keeps its journal compact (clock readings for forward steps), so
# what a store reads of a running saga is checked here too, not only the end.
_live_views: dict[str, tuple[SagaStore, list[tuple[Any, list[Any]]]]] = {}


def rows_of(record: Any) -> list[Any]:
    """A record's journal rows, every field but the clock reading."""
    return [
        (e.position, e.step, e.branch, e.action, e.status, e.attempt, e.error, e.result)
        for e in record.history
    ]


async def look_at_the_store() -> None:
    watched = _live_views.get(current_step().saga_id)
    if watched is not None:
        store, views = watched
        record = await store.load(current_step().saga_id)
        views.append((record.status, rows_of(record)))


def response_for(name: str) -> Any:
    """A step's response: a string, a float, a tuple or nothing (a compact
    journal keeps clock readings, floats, beside its rows, tuples)."""
    return (name, 1.5, (name, 2.5), None)[sum(map(ord, name)) % 4]


class MarkingStep(LedgerStep):
    """Marks the context *before* its participant answers, so that a failed
    try leaves a mark the executor must take back (S1/S2)."""

    async def act(self, ctx: Any) -> Any:
        await look_at_the_store()
        if isinstance(ctx, FlatCtx):
            ctx.last = self.spec.name
            ctx.count += 1
        else:
            ctx.marks.append(self.spec.name)
        self.ledger.call("act", self.spec.act)
        return response_for(self.spec.name)

    async def compensate(self, ctx: Any) -> None:
        await look_at_the_store()
        await super().compensate(ctx)


def marks_of(ctx: Any) -> Any:
    return (ctx.last, ctx.count) if isinstance(ctx, FlatCtx) else ctx.marks


def expected_marks(flat: bool, completed: list[str]) -> Any:
    """What the acts that returned leave (compensations here leave it be)."""
    return (completed[-1] if completed else "", len(completed)) if flat else completed


def saga_class(shape: Shape, context: type) -> type[Saga[Any]]:
    def step(spec: StepSpec) -> type[MarkingStep]:
        return type(spec.name, (MarkingStep,), {"spec": spec})

    steps = [
        Fallback(step=step(item.primary), fallback=step(item.fallback))
        if isinstance(item, FallbackSpec) else step(item)
        for item in shape.items
    ]
    return types.new_class(
        shape.name, (Saga[context],), {}, lambda namespace: namespace.update(steps=steps)
    )


class StepCounter:
    """A step listener: with it, the executor inlines no step."""

    def __init__(self) -> None:
        self.started = 0

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.started += 1


class SagaCounter:
    """A saga listener: with it, plain steps run in run_all's inlined loop
    (no run_plain: someone listens), still inlined (nobody listens to steps)."""

    def __init__(self) -> None:
        self.started = 0

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.started += 1


def outcome_of(result: object) -> tuple[Any, ...]:
    if isinstance(result, SagaResult):
        return ("completed", result.status, [(r.step_name, r.response) for r in result.results])
    assert isinstance(result, SagaFailed), result
    return (
        "failed",
        result.status,
        result.failed_step,
        type(result.error).__name__,
        str(result.error),
        sorted(result.compensation_errors),
        result.error.__cause__ is not None,  # S4: a failed fallback chains the primary's error
    )


async def run_one(
    cls: type[Saga[Any]],
    context: Any,
    store: SagaStore,
    listeners: tuple[object, ...],
    paths: list[bool],
) -> Any:
    ledger = Ledger()
    saga = cls(
        store=store,
        step_factory=lambda cls: cls(ledger),
        journal_retry=FAST_JOURNAL_RETRY,
        compensation_retry=FAST_COMPENSATION_RETRY,
        listeners=listeners,
    )
    saga_id = context.order_id
    paths.append(saga._runs_plain)
    views: list[tuple[Any, list[Any]]] = []
    _live_views[saga_id] = (store, views)
    try:
        result: object = await saga.run(context, saga_id=saga_id)
    except SagaFailed as error:
        result = error
    finally:
        del _live_views[saga_id]
    record = await store.load(saga_id)
    rows = rows_of(record)
    calls = [(c.step, c.action, c.applied) for c in ledger.of(saga_id)]
    journaled = {k: v for k, v in record.context.items() if k != "order_id"}
    return outcome_of(result), marks_of(context), record.status, journaled, rows, calls, views


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), durable=st.booleans(), flat=st.booleans())
def test_S1_to_S7_property_the_lean_loops_do_what_the_general_path_does(
    shape: Shape, durable: bool, flat: bool
) -> None:
    def new_context(suffix: str) -> Any:
        order_id = f"{shape.name}-{suffix}"
        return FlatCtx(order_id=order_id) if flat else Ctx(order_id=order_id)

    async def case() -> None:
        store: Any = SQLiteSagaStore(":memory:") if durable else MemorySagaStore()
        paths: list[bool] = []
        try:
            steps, sagas = StepCounter(), SagaCounter()
            cls = saga_class(shape, FlatCtx if flat else Ctx)
            lean = await run_one(cls, new_context("lean"), store, (), paths)
            inlined = await run_one(cls, new_context("inlined"), store, (sagas,), paths)
            general = await run_one(cls, new_context("general"), store, (steps,), paths)
        finally:
            if durable:
                await store.close()
        # run_plain for an all-plain saga in memory only; never with a listener
        specs = [
            spec
            for item in shape.items
            for spec in (
                (item.primary, item.fallback) if isinstance(item, FallbackSpec) else (item,)
            )
        ]
        all_plain = all(spec.act != "once" for spec in specs)  # "once": a retried step
        assert paths == [all_plain and not durable, False, False]
        assert sagas.started == 1
        assert steps.started > 0  # the last run did take the general path
        outcome, marks, status, context, rows, calls, views = lean
        # S1/S2: a failed try left nothing in the context, on any path
        completed = [step for step, action, applied in calls if action == "act" and applied]
        assert marks == expected_marks(flat, completed)
        # every act and compensation looked at the store once, and saw the
        # journal up to its own STARTED row
        assert len(views) == len(calls)
        for (_, seen), call in zip(views, calls, strict=True):
            step, action, status_now = seen[-1][1], seen[-1][3], seen[-1][4]
            assert (step, action, status_now) == (call[0], call[1], "started")
        for other in (inlined, general):
            assert other[0] == outcome
            assert other[1] == marks
            assert other[2] == status
            assert other[3] == context
            assert other[4] == rows
            assert other[5] == calls
            assert other[6] == views

    asyncio.run(case())


# --------------------------------------------------------------------------- who runs lean


class _Step(SagaStepHandler[FlatCtx, None]):
    async def act(self, context: FlatCtx) -> None:
        context.count += 1


class _Other(_Step):
    pass


class _Spare(_Step):
    pass


class _Mark(SagaStepHandler[FlatCtx, None]):
    async def act(self, context: FlatCtx) -> None:
        context.last = "marked"


class _Timed(_Step):
    timeout = 5.0


class _Retried(_Step):
    retry = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)


class _Listener:
    def saga_finished(self, *args: object) -> None:
        pass


class _WatchingStore(MemorySagaStore):
    """A store of the user's, built on the default one: told of every finish."""

    def __init__(self) -> None:
        super().__init__()
        self.finished_ids: list[str] = []

    def finished(self, saga: Any) -> None:
        self.finished_ids.append(saga.saga_id)
        super().finished(saga)


def _saga(*steps: Any, **options: Any) -> Saga[Any]:
    cls = types.new_class(
        f"Lean{next(_names)}", (Saga[FlatCtx],), {},
        lambda namespace: namespace.update(steps=list(steps)),
    )
    return cls(**options)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("build", "lean"),
    [
        (lambda: _saga(_Step, Fallback(step=_Other, fallback=_Spare)), True),
        (lambda: _saga(_Step, store=MemorySagaStore(max_finished=0)), True),
        (lambda: _saga(_Step, listeners=[_Listener()]), False),
        (lambda: _saga(_Step, _Timed), False),
        (lambda: _saga(_Retried, _Step), False),
        (lambda: _saga(_Step, Fallback(step=_Other, fallback=_Spare, retry=RetryPolicy())), False),
        (lambda: _saga(_Step, Fallback(step=_Other, fallback=_Spare,
                                       circuit_breaker=CircuitBreaker())), False),
        (lambda: _saga(_Step, Parallel(_Mark, _Timed)), False),
        (lambda: _saga(_Step, Parallel(_Mark)), False),
        (lambda: _saga(_Step, store=_WatchingStore()), False),
        (lambda: _saga(_Step, store=SQLiteSagaStore(":memory:")), False),
    ],
    ids=["plain", "no-retention", "listener", "timeout", "retry", "fallback-retry", "breaker",
         "group", "plain-group", "store-subclass", "sqlite"],
)
def test_run_plain_is_taken_by_plain_sagas_on_the_default_store_with_nobody_listening(
    build: Any, lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    run_plain = Execution.run_plain

    async def watched(self: Execution, plan: Any, shape: Any) -> Any:
        taken.append(self.saga_id)
        return await run_plain(self, plan, shape)

    monkeypatch.setattr(Execution, "run_plain", watched)

    async def case() -> None:
        saga = build()
        try:
            assert saga._runs_plain is lean
            context = FlatCtx(order_id="o-lean")
            result = await saga.run(context)
            assert taken == ([result.saga_id] if lean else [])
            assert result.status is SagaStatus.COMPLETED
            assert context.count == sum(r.step_name != "_Mark" for r in result.results)
            if isinstance(saga.store, _WatchingStore):
                assert saga.store.finished_ids == [result.saga_id]  # its finished was called
        finally:
            if isinstance(saga.store, SQLiteSagaStore):
                await saga.store.close()

    asyncio.run(case())


class _Nesting(SagaStepHandler[FlatCtx, str]):
    """Runs a saga of its own inside its act, then asks who it is."""

    async def act(self, context: FlatCtx) -> str:
        inner = _saga(_Step)
        assert inner._runs_plain
        await inner.run(FlatCtx(order_id="o-inner"))
        context.count += 1
        return current_step().saga_id


def test_a_saga_run_inside_a_step_leaves_that_step_its_cursor() -> None:
    # current_step() reads a context variable that each run sets and resets;
    # the lean path must hand the outer step its cursor back, as run_all does.
    async def case() -> None:
        for outer in (_saga(_Nesting), _saga(_Nesting, listeners=[_Listener()])):
            result = await outer.run(FlatCtx(order_id="o-outer"))
            assert result.results[0].response == result.saga_id
            assert result.results[0].saga_id == result.saga_id

    asyncio.run(case())


def test_S8_a_lean_saga_cancelled_mid_step_journals_what_the_general_path_does() -> None:
    # Cancelled while its third act waits: the lean path (compact journal,
    # the act's row whole) and the general path must leave the same record.
    async def run(listeners: tuple[object, ...]) -> tuple[Any, list[Any], Any]:
        store = MemorySagaStore()
        waiting = asyncio.Event()

        class Wait(SagaStepHandler[FlatCtx, None]):
            async def act(self, context: FlatCtx) -> None:
                context.last = "waiting"
                waiting.set()
                await asyncio.Event().wait()  # until cancelled

        class Cancelled(Saga[FlatCtx]):
            steps = [_Step, Fallback(step=_Other, fallback=_Spare), Wait, _Mark]

        saga = Cancelled(store=store, listeners=listeners)
        context = FlatCtx(order_id="o-cancel")
        task = asyncio.create_task(saga.run(context, saga_id="cancelled"))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.load("cancelled")
        return saga._runs_plain, rows_of(record), (record.status, marks_of(context))

    lean = asyncio.run(run(()))
    general = asyncio.run(run((StepCounter(),)))
    assert (lean[0], general[0]) == (True, False)
    assert lean[1:] == general[1:]
    status, marks = lean[2]
    assert status is SagaStatus.COMPENSATED
    assert marks == ("", 2)  # the waiting act's mark taken back; compensations leave count
    assert [(row[1], row[3], row[4]) for row in lean[1]][-6:] == [
        ("Wait", "act", "started"), ("Wait", "act", "failed"),
        ("_Other", "compensate", "started"), ("_Other", "compensate", "completed"),
        ("_Step", "compensate", "started"), ("_Step", "compensate", "completed"),
    ]


@dataclasses.dataclass
class _Basket(SagaContext):
    """A flat context that may hold a list: its snapshot must then be deep."""

    order_id: str
    items: Any = "none"
    tag: str = ""


class _FillsThenFails(SagaStepHandler[_Basket, None]):
    async def act(self, context: _Basket) -> None:
        if isinstance(context.items, list):
            context.items.append("added by the failing act")  # in place
        else:
            context.items = ["replaced"]
        context.tag = "changed"
        raise RuntimeError("the first act fails")


class _BasketSaga(Saga[_Basket]):
    steps = [_FillsThenFails]


@pytest.mark.parametrize("items", ["none", ["held from the start"]])
def test_S2_a_lean_sagas_first_step_that_fails_leaves_the_context_as_it_was(items: Any) -> None:
    # run_plain takes the first step's snapshot without a scan of its own when
    # S12's check has just found JSON scalars only; a context holding a list
    # from the start must still get the deep snapshot that restores the list.
    async def case() -> None:
        saga = _BasketSaga(store=MemorySagaStore())
        assert saga._runs_plain
        context = _Basket(order_id="o-basket", items=copy.deepcopy(items))
        with pytest.raises(SagaFailed):
            await saga.run(context)
        assert context == _Basket(order_id="o-basket", items=items)

    asyncio.run(case())


class _Noted:
    __slots__ = ("note",)  # state beside the dataclass's __dict__


@dataclasses.dataclass
class _NotedCtx(SagaContext, _Noted):
    order_id: str
    tag: str = ""


class _NotesThenFails(SagaStepHandler[_NotedCtx, None]):
    async def act(self, context: _NotedCtx) -> None:
        context.note = "changed by the failing act"
        context.tag = "changed"
        raise RuntimeError("the first act fails")


class _NotedSaga(Saga[_NotedCtx]):
    steps = [_NotesThenFails]


def test_S2_a_lean_saga_restores_a_slot_its_context_keeps_beside_its_dict() -> None:
    # JSON scalars in the __dict__ (S12's fast path) do not make a context
    # flat: the first snapshot must hold the slot as well.
    async def case() -> None:
        saga = _NotedSaga(store=MemorySagaStore())
        assert saga._runs_plain
        for attempt in range(2):  # the class's flatness is learnt on the first run
            context = _NotedCtx(order_id=f"o-noted-{attempt}")
            context.note = "as it was"
            with pytest.raises(SagaFailed):
                await saga.run(context)
            assert (context.note, context.tag) == ("as it was", "")

    asyncio.run(case())
