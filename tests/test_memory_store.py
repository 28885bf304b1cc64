"""MemorySagaStore: what ``load`` gives back, the journal's rows and order,
bounded retention, and its errors."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import threading
import time
from typing import Any

import pytest
from helpers_saga import (
    Blocker,
    Boom,
    OrderCtx,
    Probe,
    SleepRecorder,
    Trace,
    declare,
    reached,
)

from fallback_saga import (
    CircuitBreaker,
    ContextSerializationError,
    Fallback,
    JournalEntry,
    MemorySagaStore,
    Response,
    RetryPolicy,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaFailed,
    SagaListener,
    SagaNotFound,
    SagaRecord,
    SagaStatus,
    SagaStepHandler,
    SagaStepResult,
    SagaStore,
    StepStatus,
    SubSaga,
    current_step,
)
from fallback_saga.store._responses import response_text

STARTED, COMPLETED, FAILED = StepStatus.STARTED, StepStatus.COMPLETED, StepStatus.FAILED


def rows(record: SagaRecord) -> list[tuple[str, str, StepStatus]]:
    return [(e.step, e.action, e.status) for e in record.history]


async def test_load_returns_the_record_fields() -> None:
    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"
        ctx.items.append("pear")

    saga = declare(Probe("Reserve", [], mutate=reserve), name="OrderSaga")()
    ctx = OrderCtx(order_id="o-9")

    await saga.run(ctx, saga_id="rec-1")
    record = await saga.store.load("rec-1")

    assert isinstance(record, SagaRecord)
    assert record.saga_id == "rec-1"
    assert record.saga_name == "OrderSaga"
    assert record.status is SagaStatus.COMPLETED
    assert record.context == ctx.to_dict()
    assert record.context["reservation"] == "r-1"
    assert record.context["items"] == ["apple", "pear"]
    assert rows(record) == [("Reserve", "act", STARTED), ("Reserve", "act", COMPLETED)]


async def test_history_entries_carry_step_action_status_error_and_timestamp() -> None:
    trace: Trace = []
    saga = declare(
        Probe("Reserve", trace),
        Probe("Charge", trace, error=lambda: Boom("card declined")),
    )()
    before = time.time()

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="rec-2")
    after = time.time()
    record = await saga.store.load("rec-2")

    assert record.status is SagaStatus.COMPENSATED
    assert [(e.step, e.action, e.status) for e in record.history] == [
        ("Reserve", "act", STARTED),
        ("Reserve", "act", COMPLETED),
        ("Charge", "act", STARTED),
        ("Charge", "act", FAILED),
        ("Reserve", "compensate", STARTED),
        ("Reserve", "compensate", COMPLETED),
    ]
    for entry in record.history:
        assert isinstance(entry, JournalEntry)
        assert isinstance(entry.status, StepStatus)
        assert before <= entry.at <= after
    errors = [e.error for e in record.history]
    assert errors[3] is not None
    assert "Boom" in errors[3]
    assert "card declined" in errors[3]
    assert [e for i, e in enumerate(errors) if i != 3] == [None] * 5
    stamps = [e.at for e in record.history]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("why", ["primary raised", "circuit open"])
async def test_primary_that_fell_back_is_journaled_started_then_failed_before_fallback_rows(
    why: str,
) -> None:
    trace: Trace = []
    breaker = CircuitBreaker(name="inventory")
    if why == "circuit open":
        breaker.open()
    primary = Probe("Primary", trace, error=Boom if why == "primary raised" else None)
    saga = declare(
        Probe("First", trace),
        Fallback(step=primary, fallback=Probe("Backup", trace), circuit_breaker=breaker),
    )()

    await saga.run(OrderCtx(), saga_id="fb")
    record = await saga.store.load("fb")

    assert [(e.step, e.branch, e.action, e.status) for e in record.history] == [
        ("First", "primary", "act", STARTED),
        ("First", "primary", "act", COMPLETED),
        ("Primary", "primary", "act", STARTED),
        ("Primary", "primary", "act", FAILED),
        ("Backup", "fallback", "act", STARTED),
        ("Backup", "fallback", "act", COMPLETED),
    ]
    assert {e.position for e in record.history if e.step != "First"} == {1}
    primary_failure = record.history[3].error
    assert primary_failure is not None
    assert ("CircuitOpenError" if why == "circuit open" else "Boom") in primary_failure


async def test_a_running_saga_shows_its_last_transition() -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    blocker = Blocker("Wait", trace)
    saga = declare(Probe("Reserve", trace, mutate=reserve), blocker)()

    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="live"))
    await reached(blocker.started)
    record = await saga.store.load("live")
    blocker.release.set()
    await task

    assert record.status is SagaStatus.RUNNING
    assert record.context["reservation"] == "r-1"
    assert rows(record)[-1] == ("Wait", "act", STARTED)
    assert (await saga.store.load("live")).status is SagaStatus.COMPLETED


async def test_load_returns_a_copy_that_cannot_rewrite_the_journal() -> None:
    saga = declare(Probe("A", []))()
    await saga.run(OrderCtx(), saga_id="copy")

    record = await saga.store.load("copy")
    record.context["order_id"] = "tampered"
    record.context["items"].append("tampered")
    record.history.clear()

    again = await saga.store.load("copy")
    assert again.context["order_id"] == "order-1"
    assert again.context["items"] == ["apple"]
    assert len(again.history) == 2


# --------------------------------------------------------------------------- retention


async def test_retention_of_finished_sagas_is_bounded() -> None:
    store = MemorySagaStore(max_finished=3)
    ok = declare(Probe("A", []))(store=store)
    failing = declare(Probe("B", [], error=Boom))(store=store)

    for n in range(3):
        await ok.run(OrderCtx(), saga_id=f"done-{n}")
    for n in range(3):
        with pytest.raises(SagaFailed):
            await failing.run(OrderCtx(), saga_id=f"failed-{n}")

    assert len(store) == 3
    for n in range(3):
        with pytest.raises(SagaNotFound):
            await store.load(f"done-{n}")
        assert (await store.load(f"failed-{n}")).status is SagaStatus.COMPENSATED


async def test_running_sagas_are_never_dropped() -> None:
    store = MemorySagaStore(max_finished=1)
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    slow = declare(blocker)(store=store)
    quick = declare(Probe("A", trace))(store=store)

    task = asyncio.create_task(slow.run(OrderCtx(), saga_id="running"))
    await reached(blocker.started)
    for n in range(5):
        await quick.run(OrderCtx(), saga_id=f"quick-{n}")

    assert (await store.load("running")).status is SagaStatus.RUNNING
    assert len(store) == 2  # the running one and the newest finished one
    blocker.release.set()
    await task

    assert (await store.load("running")).status is SagaStatus.COMPLETED
    assert len(store) == 1
    with pytest.raises(SagaNotFound):
        await store.load("quick-4")


async def test_a_reused_id_is_refused_while_the_store_holds_its_saga_only() -> None:
    """mechanics.md: a reused saga id raises SagaAlreadyExists while the
    store holds that saga; one dropped past max_finished is gone, and its id
    starts a new saga."""
    trace: Trace = []
    saga = declare(Probe("A", trace))(store=MemorySagaStore(max_finished=1))
    await saga.run(OrderCtx(), saga_id="order-42")
    with pytest.raises(SagaAlreadyExists):
        await saga.run(OrderCtx(), saga_id="order-42")
    await saga.run(OrderCtx(), saga_id="order-43")  # order-42 is dropped
    await saga.run(OrderCtx(), saga_id="order-42")
    assert trace == [("act", "A")] * 3


def test_default_retention_is_ten_thousand() -> None:
    assert MemorySagaStore().max_finished == 10_000


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_max_finished_must_be_an_int_not_below_zero(bad: object) -> None:
    with pytest.raises(ValueError, match="max_finished"):
        MemorySagaStore(max_finished=bad)  # type: ignore[arg-type]


async def test_retention_through_the_store_api() -> None:
    store = MemorySagaStore(max_finished=2)
    for n in range(4):
        await store.create(f"s-{n}", "Direct", "fp", {"n": n}, [])
    for n in range(4):
        await store.append(f"s-{n}", [], status=SagaStatus.COMPLETED)

    assert len(store) == 2
    assert (await store.load("s-3")).context == {"n": 3}
    with pytest.raises(SagaNotFound):
        await store.load("s-0")


# --------------------------------------------------------------------------- errors


async def test_unknown_saga_id_is_saga_not_found() -> None:
    store = MemorySagaStore()

    with pytest.raises(SagaNotFound) as info:
        await store.load("nope")

    assert info.value.saga_id == "nope"
    assert "nope" in str(info.value)
    assert isinstance(info.value, KeyError)


async def test_append_to_an_unknown_saga_is_saga_not_found() -> None:
    with pytest.raises(SagaNotFound):
        await MemorySagaStore().append("nope", [])


async def test_reused_saga_id_is_saga_already_exists() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace))()
    await saga.run(OrderCtx(), saga_id="dup")
    first = await saga.store.load("dup")

    with pytest.raises(SagaAlreadyExists) as info:
        await saga.run(OrderCtx(), saga_id="dup")

    assert info.value.saga_id == "dup"
    assert trace == [("act", "A")]  # the second run called no step
    again = await saga.store.load("dup")
    assert (again.status, again.history) == (first.status, first.history)


async def test_reused_saga_id_of_a_running_saga_is_refused_and_it_finishes() -> None:
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    saga = declare(blocker)()

    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="busy"))
    await reached(blocker.started)
    with pytest.raises(SagaAlreadyExists):
        await saga.run(OrderCtx(), saga_id="busy")
    blocker.release.set()
    result = await task

    assert result.status is SagaStatus.COMPLETED
    assert trace == [("act", "Wait")]


async def test_create_with_a_taken_id_is_saga_already_exists() -> None:
    store = MemorySagaStore()
    await store.create("x", "Direct", "fp", {}, [])
    with pytest.raises(SagaAlreadyExists):
        await store.create("x", "Direct", "fp", {}, [])


def test_memory_store_satisfies_the_store_protocol() -> None:
    assert isinstance(MemorySagaStore(), SagaStore)


@dataclasses.dataclass
class _FlatCtx(SagaContext):
    order_id: str
    amount: int = 0


class _Receipt(Response):
    number: int


class _Receipting(SagaStepHandler[OrderCtx, _Receipt]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, _Receipt]:
        return self._generate_step_result(_Receipt(number=7))


async def test_a_retained_saga_of_plain_values_is_nothing_for_the_collector() -> None:
    # A service's first 10,000 sagas fill the store; what each one leaves must
    # not make every full collection longer (issue #12): a saga whose steps
    # return ids, numbers or nothing leaves a record the collector ignores.
    store = MemorySagaStore()
    saga = declare(Probe("Reserve", [], response="r-1"), Probe("Charge", [], response=12),
                   context=_FlatCtx)(store=store)
    ids = [(await saga.run(_FlatCtx(order_id=f"o-{n}"))).saga_id for n in range(20)]
    gc.collect()
    records = [store._sagas[saga_id] for saga_id in ids]
    assert not any(gc.is_tracked(record) for record in records)
    assert (await store.load(ids[0])).history[-1].result == "12"


async def test_a_retained_saga_keeps_its_responses_not_their_step_results() -> None:
    store = MemorySagaStore()
    saga = declare(_Receipting)(store=store)
    result = await saga.run(OrderCtx(order_id="o-1"))
    gc.collect()
    held = gc.get_referents(store._sagas[result.saga_id])
    # The response object is kept for load(); the SagaStepResult around it is not.
    assert result.results[0].response in held
    assert not any(isinstance(value, SagaStepResult) for value in held)
    record = await store.load(result.saga_id)
    # What load() gives is the response's journal form, as with any store.
    assert record.history[-1].result == response_text(_Receipt(number=7), "TestSaga", "x")


@pytest.mark.parametrize("context_type", [OrderCtx, _FlatCtx])
@pytest.mark.parametrize("steps", [1, 15, 16, 17, 40])
async def test_a_retained_saga_of_any_length_loads_back_every_entry_in_order(
    steps: int, context_type: type
) -> None:
    # A finished saga is kept as one flat record; short journals (unrolled
    # builders, up to 31 entries) and long ones (32 and more) are laid out by
    # different code, and must read back the same way — from a context
    # frozen by the general path (OrderCtx) and from a flat one's state
    # (retire_run: _FlatCtx, once the first saga has learnt its class).
    names = [f"Step{i}" for i in range(steps)]
    saga = declare(*(Probe(name, [], response=name) for name in names), name="Long",
                   context=context_type)()
    await saga.run(context_type(order_id="o-first"))
    result = await saga.run(context_type(order_id="o-long"), saga_id=f"long-{steps}")
    record = await saga.store.load(f"long-{steps}")

    assert record.status is SagaStatus.COMPLETED
    assert record.saga_name == "Long"
    assert rows(record) == [
        (name, "act", status) for name in names for status in (STARTED, COMPLETED)
    ]
    assert [e.result for e in record.history if e.status is COMPLETED] == [
        response_text(r.response, "Long", r.step_name) for r in result.results
    ]
    assert [e.position for e in record.history] == [i for i in range(steps) for _ in "ab"]
    assert record.context == context_type(order_id="o-long").to_dict()
    assert record.created_at <= record.history[0].at <= record.updated_at
    assert record.updated_at == record.history[-1].at


async def test_retention_zero_keeps_a_saga_while_it_runs_and_nothing_once_it_finished() -> None:
    store = MemorySagaStore(max_finished=0)
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    slow = declare(blocker)(store=store)
    failing = declare(Probe("A", trace), Probe("B", trace, error=Boom))(store=store)

    task = asyncio.create_task(slow.run(OrderCtx(), saga_id="running"))
    await reached(blocker.started)
    assert (await store.load("running")).status is SagaStatus.RUNNING
    with pytest.raises(SagaFailed):
        await failing.run(OrderCtx(), saga_id="failed")
    blocker.release.set()
    result = await task

    assert result.status is SagaStatus.COMPLETED
    assert len(store) == 0
    for saga_id in ("running", "failed"):
        with pytest.raises(SagaNotFound):
            await store.load(saga_id)


@dataclasses.dataclass(slots=True)
class _SlottedCtx(SagaContext):
    order_id: str
    amount: int = 0


@dataclasses.dataclass
class _OwnNewCtx(SagaContext):
    order_id: str
    amount: int = 0

    def __new__(cls, *args: object, **kwargs: object) -> _OwnNewCtx:
        # A class of its own making: its final state is kept as a snapshot.
        return super().__new__(cls)


@pytest.mark.parametrize("context_type", [_FlatCtx, _SlottedCtx, _OwnNewCtx])
async def test_a_retained_saga_loads_back_its_final_context_whatever_its_class(
    context_type: type,
) -> None:
    # A finished saga's final context is kept as plain values when its class
    # allows (flat, can be made bare), else as a snapshot; which one is decided
    # once per class. The same class finishing once with a value that cannot
    # be kept plain (a list) and then with plain ones must load back both.
    def charge(ctx: Any) -> None:
        ctx.amount = 12

    def charge_oddly(ctx: Any) -> None:
        ctx.amount = [1, 2]  # not a plain value: this saga's context is kept as a snapshot

    store = MemorySagaStore()
    plain = declare(Probe("Charge", [], mutate=charge), context=context_type)(store=store)
    odd = declare(Probe("Charge", [], mutate=charge_oddly), context=context_type)(store=store)

    await odd.run(context_type(order_id="o-1"), saga_id="odd")
    await plain.run(context_type(order_id="o-2"), saga_id="plain")
    again = context_type(order_id="o-3")
    await odd.run(again, saga_id="odd-again")
    again.amount.append(3)  # the caller's context, changed after the saga finished

    # (a list in the int field: written tagged, so that it reads back a list)
    odd_amount = {"$fs": ["any", [1, 2]]}
    assert (await store.load("odd")).context == {"order_id": "o-1", "amount": odd_amount}
    assert (await store.load("plain")).context == {"order_id": "o-2", "amount": 12}
    assert (await store.load("odd-again")).context == {"order_id": "o-3", "amount": odd_amount}


@dataclasses.dataclass
class _ListCtx(SagaContext):
    order_id: str
    amount: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)  # not a plain value


@pytest.mark.parametrize("context_type", [_FlatCtx, _SlottedCtx, _ListCtx])
async def test_a_saga_retired_from_the_lean_path_reads_back_like_any_other(
    context_type: type,
) -> None:
    # Execution.run_plain (the default store, nobody listening, plain steps)
    # hands a flat context's final state straight to the store
    # (MemorySagaStore.retire_run); other contexts go the general way. The
    # record, its clock readings and the retention must not tell them apart.
    def charge(ctx: Any) -> None:
        ctx.amount = 12

    store = MemorySagaStore(max_finished=3)
    saga = declare(Probe("Reserve", [], response="r-1"), Probe("Charge", [], mutate=charge,
                   response=12), context=context_type, name="Lean")(store=store)
    assert saga._runs_plain
    contexts = [context_type(order_id=f"o-{n}") for n in range(6)]
    for n, ctx in enumerate(contexts):
        await saga.run(ctx, saga_id=f"lean-{n}")
    for ctx in contexts:
        ctx.amount = 99  # changed after the saga finished: the record keeps what it was

    assert len(store) == 3
    for n in range(3):
        with pytest.raises(SagaNotFound):
            await store.load(f"lean-{n}")
    for n in range(3, 6):
        record = await store.load(f"lean-{n}")
        assert record.status is SagaStatus.COMPLETED
        assert record.saga_name == "Lean"
        assert rows(record) == [
            (step, "act", status)
            for step in ("Reserve", "Charge")
            for status in (STARTED, COMPLETED)
        ]
        assert [e.result for e in record.history if e.status is COMPLETED] == ['"r-1"', "12"]
        expected = context_type(order_id=f"o-{n}")
        charge(expected)
        assert record.context == expected.to_dict()
        assert record.created_at <= record.history[0].at <= record.updated_at
        assert record.updated_at == record.history[-1].at
        assert record.version == 4
    summary = (await store.list_sagas(limit=1))[0]
    assert (summary.saga_id, summary.status) == ("lean-5", SagaStatus.COMPLETED)
    assert summary.updated_at == (await store.load("lean-5")).updated_at


@pytest.mark.parametrize("context_type", [_FlatCtx, _SlottedCtx, _ListCtx])
@pytest.mark.parametrize("undo_fails", [False, True])
async def test_S7_S13_a_lean_saga_that_unwound_reads_back_like_any_other(
    context_type: type, undo_fails: bool
) -> None:
    # A lean saga (Execution.run_plain) that fails is unwound, then retired
    # like one that completed (MemorySagaStore.retire_run, given its final
    # status) when its context is flat; other contexts go the general way.
    # Its record must hold the status the caller got and the clock reading of
    # its last row, the unwinding's.
    def charge(ctx: Any) -> None:
        ctx.amount = 12

    store = MemorySagaStore(max_finished=3)
    saga = declare(
        Probe("Reserve", [], response="r-1", comp_error=Boom if undo_fails else None),
        Probe("Charge", [], mutate=charge, error=Boom),
        context=context_type, name="Lean",
    )(store=store, compensation_retry=RetryPolicy(attempts=2, sleep=SleepRecorder()))
    assert saga._runs_plain
    final = SagaStatus.FAILED if undo_fails else SagaStatus.COMPENSATED
    for n in range(5):
        with pytest.raises(SagaFailed) as failed:
            await saga.run(context_type(order_id=f"o-{n}"), saga_id=f"unwound-{n}")
        assert failed.value.status is final

    assert len(store) == 3
    with pytest.raises(SagaNotFound):
        await store.load("unwound-1")
    for n in range(2, 5):
        record = await store.load(f"unwound-{n}")
        assert record.status is final
        assert record.saga_name == "Lean"
        assert rows(record) == [
            ("Reserve", "act", STARTED), ("Reserve", "act", COMPLETED),
            ("Charge", "act", STARTED), ("Charge", "act", FAILED),
            *(
                [("Reserve", "compensate", STARTED), ("Reserve", "compensate", FAILED)] * 2
                if undo_fails
                else [("Reserve", "compensate", STARTED), ("Reserve", "compensate", COMPLETED)]
            ),
        ]
        assert record.history[1].result == '"r-1"'
        # Charge's act failed: its change was rolled back (S2)
        assert record.context == context_type(order_id=f"o-{n}").to_dict()
        assert record.created_at <= record.history[0].at <= record.updated_at
        assert record.updated_at == record.history[-1].at
    summary = (await store.list_sagas(limit=1))[0]
    assert (summary.saga_id, summary.status) == ("unwound-4", final)
    assert summary.updated_at == (await store.load("unwound-4")).updated_at


async def test_a_lean_saga_shows_its_journal_while_it_runs() -> None:
    # run_plain keeps its forward rows as clock readings (compact_journal);
    # what the store shows of the running saga must be whole rows all the
    # same: load(), list_sagas() and count_sagas() from inside a step, after
    # a Fallback's primary failed and its fallback took over.
    store = MemorySagaStore()
    seen: list[tuple[SagaRecord, Any]] = []

    class Reserve(SagaStepHandler[_FlatCtx, float]):
        async def act(self, context: _FlatCtx) -> float:
            return 2.5  # a float response, beside the journal's clock readings

    class Primary(SagaStepHandler[_FlatCtx, None]):
        async def act(self, context: _FlatCtx) -> None:
            raise Boom("down")

    class Peek(SagaStepHandler[_FlatCtx, tuple[str, float]]):
        async def act(self, context: _FlatCtx) -> tuple[str, float]:
            saga_id = current_step().saga_id
            summaries = await store.list_sagas()
            seen.append((await store.load(saga_id), summaries))
            assert await store.count_sagas() == {("Peeking", SagaStatus.RUNNING): 1}
            return ("t", 1.0)  # a tuple response, beside the journal's whole rows

    class Peeking(Saga[_FlatCtx]):
        steps = [Reserve, Fallback(step=Primary, fallback=Peek)]

    saga = Peeking(store=store)
    assert saga._runs_plain
    result = await saga.run(_FlatCtx(order_id="o-1"), saga_id="peek")

    (running, summaries), = seen
    assert running.status is SagaStatus.RUNNING
    assert [(e.position, e.step, e.branch, e.status, e.error, e.result)
            for e in running.history] == [
        (0, "Reserve", "primary", STARTED, None, None),
        (0, "Reserve", "primary", COMPLETED, None, "2.5"),
        (1, "Primary", "primary", STARTED, None, None),
        (1, "Primary", "primary", FAILED, "Boom: down", None),
        (1, "Peek", "fallback", STARTED, None, None),
    ]
    assert running.version == 5
    assert running.updated_at == running.history[-1].at
    assert [(s.saga_id, s.status, s.updated_at) for s in summaries] == [
        ("peek", SagaStatus.RUNNING, running.updated_at)
    ]
    finished = await store.load("peek")
    assert finished.history[:5] == running.history
    assert [e.result for e in finished.history[5:]] == ['{"$fs":["tuple",["t",1.0]]}']
    assert [r.response for r in result.results] == [2.5, ("t", 1.0)]


# --------------------------------------------------------------------------- a saga finished twice


@dataclasses.dataclass
class _UndoCtx(SagaContext):
    order_id: str = "o"


_undo_gate: dict[str, asyncio.Event] = {}


class _SlowUndo(SagaStepHandler[_UndoCtx, None]):
    async def act(self, context: _UndoCtx, /) -> None:
        pass

    async def compensate(self, context: _UndoCtx, /) -> None:
        _undo_gate["started"].set()
        await _undo_gate["release"].wait()


class _FailsAfterChild(SagaStepHandler[_UndoCtx, None]):
    async def act(self, context: _UndoCtx, /) -> None:
        raise Boom("no")


class _UndoneChild(Saga[_UndoCtx]):
    steps = [_SlowUndo]


class _UnwindsItsChild(Saga[_UndoCtx]):
    steps = [SubSaga(_UndoneChild, context=lambda parent: _UndoCtx()), _FailsAfterChild]


async def test_a_child_saga_unwound_by_its_parent_is_running_again_and_never_dropped() -> None:
    # The child finished (COMPLETED), then its parent failed and unwinds it:
    # it runs again, and a running saga is never dropped, however many
    # others finish meanwhile.
    _undo_gate.update(started=asyncio.Event(), release=asyncio.Event())
    store = MemorySagaStore(max_finished=1)
    quick = declare(Probe("A", []))(store=store)
    task = asyncio.create_task(_UnwindsItsChild(store=store).run(_UndoCtx(), saga_id="p"))
    await reached(_undo_gate["started"])
    for n in range(3):
        await quick.run(OrderCtx(), saga_id=f"quick-{n}")

    assert (await store.load("p/_UndoneChild")).status is SagaStatus.COMPENSATING
    _undo_gate["release"].set()
    with pytest.raises(SagaFailed):
        await task
    assert (await store.load("p")).status is SagaStatus.COMPENSATED
    assert len(store) == 1


async def test_retention_counts_a_child_unwound_by_its_parent_once() -> None:
    _undo_gate.update(started=asyncio.Event(), release=asyncio.Event())
    _undo_gate["release"].set()
    store = MemorySagaStore(max_finished=4)
    saga = _UnwindsItsChild(store=store)
    for n in range(5):
        with pytest.raises(SagaFailed):
            await saga.run(_UndoCtx(), saga_id=f"p-{n}")
    # Ten sagas finished (five parents, five children): the four newest are kept.
    assert sorted(store._sagas) == ["p-3", "p-3/_UndoneChild", "p-4", "p-4/_UndoneChild"]


# --------------------------------------------------------------------------- threads


class _LooksTogether(dict):  # type: ignore[type-arg]
    """The store's dict of sagas, instrumented: the first ``looks`` lookups
    (``get``, ``in``, ``setdefault``), one per thread, wait for each other, so
    that the threads look at once, before either writes — the overlap a GIL
    switch makes now and then, made every time."""

    def __init__(self, looks: int) -> None:
        super().__init__()
        self.barrier = __import__("threading").Barrier(looks, timeout=10)
        self.waits = looks

    def _together(self, looked: Any) -> Any:
        if self.waits > 0:
            self.waits -= 1
            self.barrier.wait()  # looked: wait until the other thread has too
        return looked

    def get(self, key: Any, default: Any = None) -> Any:
        return self._together(super().get(key, default))

    def __contains__(self, key: object) -> bool:
        return bool(self._together(super().__contains__(key)))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._together(super().setdefault(key, default))


def _at_once(*work: Any) -> list[BaseException | None]:
    """Each of ``work`` (coroutine functions) in an ``asyncio.run`` of its own
    thread, as a sync web app's requests; what each raised."""
    import threading

    outcomes: list[BaseException | None] = [None] * len(work)

    def request(index: int) -> None:
        try:
            asyncio.run(work[index]())
        except BaseException as error:
            outcomes[index] = error

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_S13_two_threads_running_one_saga_id_at_once_run_it_once() -> None:
    """One module-level store; two threads (duplicate requests) start the
    same saga id at the same moment. One runs it; the other is refused with
    SagaAlreadyExists before any step — never two runs of which the journal
    holds one (the other's acts unjournaled)."""
    ran: list[str] = []

    class Charge:
        async def act(self, ctx: OrderCtx) -> None:
            ran.append("charged")

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    class Once(Saga[OrderCtx]):
        steps = [Charge]

    store = MemorySagaStore()
    store._sagas = _LooksTogether(2)
    saga = Once(store=store)

    async def request() -> None:
        await saga.run(OrderCtx(order_id="o"), saga_id="order-1")

    outcomes = _at_once(request, request)
    assert ran == ["charged"], outcomes
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "SagaAlreadyExists"]


def test_S13_two_threads_creating_one_saga_id_at_once_create_it_once() -> None:
    """The SagaStore contract's ``create`` from two threads at once: one
    creates, the other gets SagaAlreadyExists (its context is never
    written over the first's)."""
    store = MemorySagaStore()
    store._sagas = _LooksTogether(2)

    def create(who: str) -> Any:
        async def run() -> None:
            await store.create("s-1", "Order", "fp", {"by": who}, [])

        return run

    outcomes = _at_once(create("a"), create("b"))
    assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "SagaAlreadyExists"]
    winner = "a" if outcomes[0] is None else "b"
    assert asyncio.run(store.load("s-1")).context == {"by": winner}


class _DrainedMeanwhile(collections.deque):  # type: ignore[type-arg]
    """The store's deque of finished sagas, instrumented: once armed, the
    first look at its length is answered as it stood, then the other
    threads' retirements take every entry before the looker drops its
    oldest — the overlap a GIL switch between the look and the
    ``popleft`` makes now and then (three threads: two that looked before a
    third dropped down to the bound), made every time."""

    armed = False

    def __len__(self) -> int:
        length = super().__len__()
        if self.armed:
            self.armed = False
            self.clear()
        return length


@dataclasses.dataclass
class _FlatCtx(SagaContext):
    order_id: str = "o"


@pytest.mark.parametrize("context", [_FlatCtx(), OrderCtx()], ids=["flat", "nested"])
async def test_S13_a_saga_finishing_while_other_threads_retire_the_oldest_finishes(
    context: SagaContext,
) -> None:
    """A sync app's threads finish sagas on one MemorySagaStore at once, each
    dropping the oldest finished beyond ``max_finished``: a thread that saw
    one too many, while the others dropped them meanwhile, found none left
    — and the run of a saga that had COMPLETED raised ``IndexError: pop
    from an empty deque``, as it retired (a flat context's fast retirement,
    and a nested one's)."""

    class Noop:
        async def act(self, ctx: Any) -> None:
            pass

        async def compensate(self, ctx: Any) -> None:
            pass

    class Quick(Saga[type(context)]):  # type: ignore[misc]
        steps = [Noop]

    store = MemorySagaStore(max_finished=1)
    store._finished = _DrainedMeanwhile()
    saga = Quick(store=store)
    await saga.run(context, saga_id="s-1")
    store._finished.armed = True
    result = await saga.run(context, saga_id="s-2")
    assert result.status is SagaStatus.COMPLETED


@pytest.mark.parametrize("max_finished", [0, 1])
async def test_S15_a_finished_child_saga_is_kept_while_its_parent_is_in_flight(
    max_finished: int,
) -> None:
    """Retention drops the oldest finished sagas — but not a child saga
    (SubSaga) whose parent still runs: a later step of the parent may fail,
    and unwinding the parent unwinds the child from the child's record. A
    child dropped as it finished (``max_finished=0``), or as other sagas
    finished after it, let the parent end COMPENSATED with the child's steps
    never compensated (the child, not found, counted as never started)."""
    from fallback_saga import SubSaga, current_step

    ledger: list[str] = []
    shipping = asyncio.Event()
    fail = asyncio.Event()

    @dataclasses.dataclass
    class Ctx(SagaContext):
        n: int = 0

    class Participant(SagaStepHandler[Ctx, None]):
        async def act(self, ctx: Ctx, /) -> None:
            ledger.append(current_step().idempotency_key)

        async def compensate(self, ctx: Ctx, /) -> None:
            ledger.append(current_step().idempotency_key)

    class Authorize(Participant):
        pass

    class Capture(Participant):
        pass

    class Payment(Saga[Ctx]):
        steps = [Authorize, Capture]

    class ShipLate(SagaStepHandler[Ctx, None]):
        async def act(self, ctx: Ctx, /) -> None:
            shipping.set()
            await fail.wait()
            raise RuntimeError("no courier")

    class Order(Saga[Ctx]):
        steps = [SubSaga(Payment, context=lambda parent: Ctx(), name="Pay"), ShipLate]

    class Other(Saga[Ctx]):
        steps = [Authorize]

    store = MemorySagaStore(max_finished=max_finished)
    run = asyncio.create_task(Order(store=store).run(Ctx(), saga_id="o1"))
    try:
        await shipping.wait()  # the child completed; the parent runs its last step
        for n in range(2):  # other sagas finish meanwhile
            await Other(store=store).run(Ctx(), saga_id=f"other-{n}")
    finally:
        fail.set()
    with pytest.raises(SagaFailed) as failed:
        await run
    assert failed.value.status is SagaStatus.COMPENSATED
    assert [key for key in ledger if not key.startswith("other")] == [
        "o1/Pay:Authorize", "o1/Pay:Capture",
        "o1/Pay:Capture:compensate", "o1/Pay:Authorize:compensate",
    ]
    # Once the parent is finished, its child retires as any finished saga.
    assert len(store) == max_finished


@dataclasses.dataclass
class HoldsAnything(SagaContext):
    value: Any = None


class LeavesALock(SagaStepHandler[HoldsAnything, None]):
    """Puts in the context what no copy can copy (mechanics.md, "Snapshots":
    keep such objects on the step — a step that does not is what this is)."""

    async def act(self, context: HoldsAnything) -> None:
        context.value = threading.Lock()


class Declines(SagaStepHandler[HoldsAnything, None]):
    async def act(self, context: HoldsAnything) -> None:
        raise RuntimeError("declined")


class HookedFinish(SagaListener):
    def __init__(self) -> None:
        self.finished: list[SagaStatus] = []

    def saga_finished(self, saga_id: str, saga_name: str, status: SagaStatus,
                      error: BaseException | None) -> None:
        self.finished.append(status)


@pytest.mark.parametrize("listening", [False, True], ids=["lean path", "listened to"])
async def test_S7_S13_a_context_no_copy_can_copy_at_the_end_keeps_the_outcome_the_journal_holds(
    listening: bool,
) -> None:
    """The run's outcome is the journal's (S7, S13) when the final context
    holds what no copy can copy: the default store kept the status COMPLETED
    (or COMPENSATED) and the caller got a bare TypeError from its final
    snapshot instead of the SagaResult (or SagaFailed) — or, listened to, the
    saga stayed RUNNING in the store for good, never retired. Its JSON form is
    refused where it is asked for, at load, as for any context JSON cannot hold."""
    store = MemorySagaStore()
    listener = HookedFinish()
    listeners = [listener] if listening else []
    done = await declare(LeavesALock, context=HoldsAnything)(
        store=store, listeners=listeners).run(HoldsAnything(), saga_id="done")
    assert done.status is SagaStatus.COMPLETED
    with pytest.raises(SagaFailed) as failed:
        await declare(LeavesALock, Declines, context=HoldsAnything)(
            store=store, listeners=listeners).run(HoldsAnything(), saga_id="undone")
    assert failed.value.status is SagaStatus.COMPENSATED
    assert [summary.status for summary in await store.list_sagas()] == [
        SagaStatus.COMPENSATED, SagaStatus.COMPLETED]
    if listening:
        assert listener.finished == [SagaStatus.COMPLETED, SagaStatus.COMPENSATED]
    for saga_id in ("done", "undone"):
        with pytest.raises(ContextSerializationError, match="value"):
            await store.load(saga_id)
