"""S15: Parallel groups keep every rule a straight line of steps has.

``Parallel(A, B, ...)`` is one element of ``steps``: members run
concurrently, each on its own copy of the context (merged into the saga's
context when the member completes), and the next element starts once all
completed. A member that fails for good cancels its siblings; completed
members and members cancelled in flight (uncertain effect) are compensated,
then the earlier steps unwind.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_saga import Blocker, Boom, OrderCtx, Probe, Trace, acted, compensated, declare, reached

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    ParallelWriteConflict,
    SagaDefinitionError,
    SagaFailed,
    SagaListener,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    current_step,
)

pytest_plugins = ["conftest_pg", "helpers_stores"]

# --------------------------------------------------------------------------- definition


def test_S11_an_empty_group_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="empty"):
        Parallel()


def test_S11_a_group_inside_a_group_is_refused() -> None:
    trace: Trace = []
    with pytest.raises(SagaDefinitionError, match="cannot hold another Parallel"):
        Parallel(Probe("A", trace), Parallel(Probe("B", trace)))


def test_S11_a_list_given_to_parallel_names_the_right_call() -> None:
    with pytest.raises(SagaDefinitionError, match=r"Parallel\(StepA, StepB\)"):
        Parallel([Probe("A", []), Probe("B", [])])


def test_S11_a_member_used_twice_is_refused_at_class_creation() -> None:
    class Reserve(SagaStepHandler[OrderCtx, None]):
        async def act(self, context: OrderCtx, /) -> None:
            return None

    with pytest.raises(SagaDefinitionError, match="'Reserve' is used twice"):
        declare(Parallel(Reserve, Reserve))
    with pytest.raises(SagaDefinitionError, match="'Reserve' is used twice"):
        declare(Reserve, Parallel(Probe("B", []), Reserve))
    probe = Probe("C", [])
    with pytest.raises(SagaDefinitionError, match="used twice"):
        declare(Parallel(probe, probe))


def test_S11_a_group_cannot_be_a_fallback_branch() -> None:
    trace: Trace = []
    with pytest.raises(SagaDefinitionError, match="cannot be a Fallback's step"):
        declare(Fallback(step=Parallel(Probe("A", trace)), fallback=Probe("B", trace)))


def test_a_group_changes_the_fingerprint_but_not_a_straight_sagas() -> None:
    trace: Trace = []
    straight = declare(Probe("A", trace), Probe("B", trace))
    grouped = declare(Parallel(Probe("A", trace), Probe("B", trace)))
    assert straight.definition.fingerprint != grouped.definition.fingerprint
    assert grouped.definition.describe() == [["parallel", [["step", "A"], ["step", "B"]]]]
    assert straight.definition.describe() == [["step", "A"], ["step", "B"]]


# --------------------------------------------------------------------------- running


class Handshake:
    """Two members that can only both finish if they run at the same time:
    each waits for the other to have started."""

    def __init__(self, trace: Trace) -> None:
        self.a_started = asyncio.Event()
        self.b_started = asyncio.Event()
        self.trace = trace

    def member(self, name: str, mine: asyncio.Event, theirs: asyncio.Event) -> Any:
        trace = self.trace

        class Member:
            def __init__(self) -> None:
                self.name = name
                self.key = ""

            async def act(self, ctx: OrderCtx) -> str:
                trace.append(("act", name))
                self.key = current_step().idempotency_key
                mine.set()
                await reached(theirs)
                ctx.meta = {**ctx.meta, name: True} if False else ctx.meta
                return f"{name}-done"

            async def compensate(self, ctx: OrderCtx) -> None:
                trace.append(("compensate", name))

        return Member()


async def test_S15_members_run_concurrently_and_the_next_step_waits_for_all() -> None:
    trace: Trace = []
    shake = Handshake(trace)
    a = shake.member("A", shake.a_started, shake.b_started)
    b = shake.member("B", shake.b_started, shake.a_started)
    after = Probe("After", trace)
    saga_cls = declare(Parallel(a, b), after)
    result = await saga_cls().run(OrderCtx(), saga_id="s1")
    assert result.status is SagaStatus.COMPLETED
    assert acted(trace)[-1] == "After"  # only once both members had completed
    assert [r.step_name for r in result.results] == ["A", "B", "After"]  # declared order
    assert [r.response for r in result.results][:2] == ["A-done", "B-done"]
    assert {a.key, b.key} == {"s1:A", "s1:B"}  # each member its own current_step()


async def test_S15_each_members_writes_reach_the_context_when_it_completes() -> None:
    trace: Trace = []

    def set_reservation(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    def add_item(ctx: OrderCtx) -> None:
        ctx.items.append("pear")

    seen: list[Any] = []
    check = Probe("Check", trace, observe=lambda ctx: (ctx.reservation, list(ctx.items)))
    saga_cls = declare(
        Parallel(Probe("Reserve", trace, mutate=set_reservation),
                 Probe("Pick", trace, mutate=add_item)),
        check,
    )
    ctx = OrderCtx()
    result = await saga_cls().run(ctx)
    assert result.context is ctx  # the caller's context object, written in place
    assert ctx.reservation == "r-1"
    assert ctx.items == ["apple", "pear"]
    seen = check.seen
    assert seen == [("r-1", ["apple", "pear"])]


def _group_saga(*members: Any, after: Any = None, before: Any = None) -> Any:
    steps = [s for s in (before,) if s is not None]
    steps.append(Parallel(*members))
    if after is not None:
        steps.append(after)
    return declare(*steps)


async def test_S15_a_failing_member_cancels_its_siblings_and_everything_that_ran_is_undone() -> (
    None
):
    trace: Trace = []
    slow = Blocker("Slow", trace)
    done = Probe("Quick", trace)

    class Failing:
        name = "Failing"

        async def act(self, ctx: OrderCtx) -> None:
            await reached(slow.started)  # the slow sibling is in flight
            trace.append(("act", "Failing"))
            raise Boom("declined")

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Failing"))

    before = Probe("Before", trace)
    saga_cls = _group_saga(slow, done, Failing(), before=before)
    store = MemorySagaStore()
    with pytest.raises(SagaFailed) as info:
        await saga_cls(store=store).run(OrderCtx(), saga_id="s1")
    failed = info.value
    assert failed.failed_step == "Failing"
    assert isinstance(failed.error, Boom)
    assert list(failed.branch_errors) == ["Failing"]
    assert failed.status is SagaStatus.COMPENSATED
    assert slow.cancelled
    undone = compensated(trace)
    # The completed and the cancelled-in-flight members first (any order), then Before.
    assert sorted(undone[:2]) == ["Quick", "Slow"]
    assert undone[2:] == ["Before"]
    assert "Failing" not in undone  # its own act raised: not compensated (S5)
    record = await store.load("s1")
    slow_rows = [e.status for e in record.history if e.step == "Slow" and e.action == "act"]
    assert slow_rows == [StepStatus.STARTED, StepStatus.CANCELLED]


async def test_S15_every_failing_members_error_is_kept() -> None:
    trace: Trace = []
    a = Probe("A", trace, error=lambda: Boom("a"))
    b = Probe("B", trace, error=lambda: ValueError("b"))
    with pytest.raises(SagaFailed) as info:
        await _group_saga(a, b)().run(OrderCtx())
    assert info.value.failed_step == "A"
    assert {name: type(e) for name, e in info.value.branch_errors.items()} == {
        "A": Boom, "B": ValueError
    }
    assert compensated(trace) == []


async def test_S15_S2_a_failing_member_never_erases_a_siblings_writes() -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    def scribble(ctx: OrderCtx) -> None:
        ctx.items.append("junk")
        ctx.meta["n"] = -1

    seen: list[Any] = []

    class Compensator:
        name = "Reserve"

        async def act(self, ctx: OrderCtx) -> str:
            reserve(ctx)
            return "r"

        async def compensate(self, ctx: OrderCtx) -> None:
            seen.append(ctx.reservation)  # its own write is there to undo

    failing = Probe("Scribbler", trace, mutate=scribble, error=lambda: Boom("no"))
    ctx = OrderCtx()
    with pytest.raises(SagaFailed):
        await _group_saga(Compensator(), failing)().run(ctx)
    assert seen == ["r-1"]
    assert ctx.items == ["apple"]
    assert ctx.meta == {"tags": ["a"], "n": 1}
    assert ctx.reservation == "r-1"  # the completed sibling's write stays, as for a step


async def test_S15_S1_a_fallback_inside_a_group_restores_only_its_own_copy() -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    def wreck(ctx: OrderCtx) -> None:
        ctx.items.append("from-primary")
        ctx.address.street = "Elm St"

    def backup(ctx: OrderCtx) -> None:
        ctx.address.lines.append("from-backup")

    member = Fallback(
        step=Probe("Primary", trace, mutate=wreck, error=lambda: Boom("down")),
        fallback=Probe("Backup", trace, mutate=backup),
    )
    ctx = OrderCtx()
    result = await _group_saga(Probe("Reserve", trace, mutate=reserve), member)().run(ctx)
    assert ctx.reservation == "r-1"
    assert ctx.items == ["apple"]  # the primary's writes were restored in its own copy
    assert ctx.address.street == "Main St"
    assert ctx.address.lines == ["1", "from-backup"]
    assert [r.step_name for r in result.results] == ["Reserve", "Backup"]


async def test_S15_two_members_writing_one_field_fail_the_group() -> None:
    trace: Trace = []

    def first(ctx: OrderCtx) -> None:
        ctx.reservation = "from-A"

    def second(ctx: OrderCtx) -> None:
        ctx.reservation = "from-B"

    ctx = OrderCtx()
    with pytest.raises(SagaFailed) as info:
        await _group_saga(Probe("A", trace, mutate=first), Probe("B", trace, mutate=second))().run(
            ctx
        )
    error = info.value.error
    assert isinstance(error, ParallelWriteConflict)
    assert (error.field, error.first, error.second) == ("reservation", "A", "B")
    assert sorted(compensated(trace)) == ["A", "B"]  # both acts ran: both undone
    assert ctx.reservation == "from-A"  # B's write never landed


async def test_S15_S8_a_cancelled_caller_stops_every_member_then_compensates() -> None:
    trace: Trace = []
    blocker = Blocker("Blocked", trace)
    quick = Probe("Quick", trace)
    before = Probe("Before", trace)
    saga = _group_saga(blocker, quick, before=before)()
    task = asyncio.create_task(saga.run(OrderCtx()))
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blocker.cancelled
    undone = compensated(trace)
    assert sorted(undone[:2]) == ["Blocked", "Quick"]
    assert undone[2:] == ["Before"]


async def test_S15_a_group_in_a_transaction_yields_each_member() -> None:
    trace: Trace = []
    saga = _group_saga(Probe("A", trace), Probe("B", trace), after=Probe("C", trace))()
    names = []
    async with saga.transaction(OrderCtx()) as tx:
        async for step_result in tx:
            names.append(step_result.step_name)
    assert names == ["A", "B", "C"]
    assert tx.result is not None
    assert tx.result.status is SagaStatus.COMPLETED


# --------------------------------------------------------------------------- durability


class CountingStore(SQLiteSagaStore):
    """A SQLite store that counts the writes and records what each carried."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[list[tuple[str, str]]] = []
        self.durable = 0  # writes that returned

    async def create(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append([(e.step, e.status.value) for e in args[4]])
        await super().create(*args, **kwargs)
        self.durable += 1

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append([(e.step, e.status.value) for e in args[1]])
        await super().append(*args, **kwargs)
        self.durable += 1


async def test_S15_S13_every_members_started_is_durable_in_one_write_before_any_runs(
    tmp_path: Path,
) -> None:
    trace: Trace = []
    store = CountingStore(tmp_path / "s.db")
    seen_writes: list[int] = []

    def count(ctx: OrderCtx) -> None:
        seen_writes.append(store.durable)

    try:
        saga = _group_saga(
            Probe("A", trace, mutate=count), Probe("B", trace, mutate=count),
            Probe("C", trace, mutate=count),
        )(store=store)
        await saga.run(OrderCtx(), saga_id="s1")
    finally:
        await store.close()
    assert store.writes[0] == [("A", "started"), ("B", "started"), ("C", "started")]
    assert len(seen_writes) == 3
    assert min(seen_writes) >= 1
    # Then one write per member's completion (its entries and its writes to the context).
    completions = [w for w in store.writes[1:] if any(s == "completed" for _, s in w)]
    assert sorted(step for w in completions for step, s in w if s == "completed") == [
        "A", "B", "C"
    ]


@dataclasses.dataclass
class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (a BaseException
    that is not cancellation: the executor does not unwind for it)."""


async def test_S15_S10_a_resume_runs_only_the_members_that_did_not_complete(
    tmp_path: Path,
) -> None:
    trace: Trace = []
    gate = asyncio.Event()

    class Dies:
        name = "Slow"

        def __init__(self, die: bool) -> None:
            self.die = die

        async def act(self, ctx: OrderCtx) -> str:
            trace.append(("act", "Slow"))
            if self.die:
                await reached(gate)
                raise Crash()
            return "slow-done"

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Slow"))

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    class Opens:
        name = "Quick"

        async def act(self, ctx: OrderCtx) -> str:
            reserve(ctx)
            trace.append(("act", "Quick"))
            gate.set()
            return "quick-done"

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Quick"))

    def saga_with(die: bool, store: Any) -> Any:
        return _group_saga(Dies(die), Opens(), after=Probe("After", trace))(store=store)

    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path)
    try:
        with pytest.raises(Crash):
            await saga_with(True, store).run(OrderCtx(), saga_id="s1")
    finally:
        await store.close()
    record_store = SQLiteSagaStore(path)
    try:
        record = await record_store.load("s1")
        assert record.context["reservation"] == "r-1"  # Quick's completion was journaled
        trace.clear()
        result = await saga_with(False, record_store).resume("s1")
    finally:
        await record_store.close()
    assert acted(trace) == ["Slow", "After"]  # Quick is not run again
    assert [r.step_name for r in result.results] == ["Slow", "Quick", "After"]
    assert [r.response for r in result.results][:2] == ["slow-done", "quick-done"]
    assert result.context.reservation == "r-1"


async def test_S15_S10_a_resumed_unwinding_compensates_exactly_the_members_that_ran(
    tmp_path: Path,
) -> None:
    trace: Trace = []
    path = tmp_path / "s.db"
    calls: list[str] = []

    class DiesInCompensate:
        name = "Last"

        def __init__(self, die: bool) -> None:
            self.die = die

        async def act(self, ctx: OrderCtx) -> None:
            raise Boom("no")

        async def compensate(self, ctx: OrderCtx) -> None:
            raise AssertionError("a failed act is never compensated")

    class Member:
        def __init__(self, name: str, die: bool) -> None:
            self.name = name
            self.die = die

        async def act(self, ctx: OrderCtx) -> str:
            return self.name

        async def compensate(self, ctx: OrderCtx) -> None:
            calls.append(self.name)
            if self.die and len(calls) == 1:
                raise Crash()

    def saga_with(die: bool, store: Any) -> Any:
        return _group_saga(
            Member("A", die), Member("B", die), after=DiesInCompensate(die),
            before=Probe("Before", trace),
        )(store=store)

    store = SQLiteSagaStore(path)
    try:
        with pytest.raises(Crash):
            await saga_with(True, store).run(OrderCtx(), saga_id="s1")
    finally:
        await store.close()
    first = calls[0]
    store = SQLiteSagaStore(path)
    try:
        with pytest.raises(SagaFailed) as info:
            await saga_with(False, store).resume("s1")
    finally:
        await store.close()
    assert info.value.status is SagaStatus.COMPENSATED
    # The interrupted compensation runs again (idempotent), the other once, Before last.
    assert calls[0] == first
    assert sorted(calls[1:]) == ["A", "B"]
    assert compensated(trace) == ["Before"]


def _names(items: list[Callable[..., Any]]) -> list[str]:
    return [getattr(item, "name", "") for item in items]


# --------------------------------------------------------------------------- drawings


def test_the_flowchart_forks_and_joins_and_a_failing_member_undoes_its_siblings() -> None:
    from fallback_saga.cli import mermaid_flowchart

    trace: Trace = []
    saga_cls = declare(
        Probe("Validate", trace),
        Parallel(Probe("Reserve", trace),
                 Fallback(step=Probe("Card", trace), fallback=Probe("Wallet", trace))),
        Probe("Ship", trace),
    )
    chart = mermaid_flowchart(saga_cls)
    lines = chart.splitlines()
    assert '        subgraph g1 ["in parallel"]' in lines
    assert "    s0 --> fork1" in lines
    assert "    join1 --> s3" in lines
    assert "    fork1 --> s1" in lines
    assert "    fork1 --> s2" in lines
    assert "    s1 --> join1" in lines
    assert "    s2fb --> join1" in lines
    # Reserve fails: only its siblings that ran are undone (never Reserve itself).
    assert '    s1 -.->|"fails"| u2' in lines
    assert '    s1 -.->|"fails"| u2fb' in lines
    assert not any(line.startswith('    s1 -.->|"fails"| u1') for line in lines)
    # Ship fails: every member is undone, then Validate.
    assert {'    s3 -.->|"fails"| u1', '    s3 -.->|"fails"| u2'} <= set(lines)
    assert "    u1 -.-> u0" in lines
    assert "    u0 -.-> compensated" in lines


async def test_the_gantt_draws_members_side_by_side(tmp_path: Path) -> None:
    from fallback_saga.cli import mermaid_gantt

    trace: Trace = []
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        saga = _group_saga(Probe("A", trace), Probe("B", trace), after=Probe("C", trace))
        await saga(store=store).run(OrderCtx(), saga_id="s1")
        chart = mermaid_gantt(await store.load("s1"))
    assert "cut off" not in chart  # overlapping members are not crashes
    assert chart.count("done, ") == 3


# --------------------------------------------------------------------------- every store


async def test_S15_on_every_store_a_failing_member_unwinds_exactly_what_ran(
    every_store: Any,
) -> None:
    trace: Trace = []
    slow = Blocker("Slow", trace)

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    class Failing:
        name = "Failing"

        async def act(self, ctx: OrderCtx) -> None:
            await reached(slow.started)
            raise Boom("declined")

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Failing"))

    saga_cls = _group_saga(slow, Probe("Quick", trace, mutate=reserve), Failing(),
                           before=Probe("Before", trace))
    with pytest.raises(SagaFailed) as info:
        await saga_cls(store=every_store).run(OrderCtx(), saga_id="g1")
    assert info.value.status is SagaStatus.COMPENSATED
    undone = compensated(trace)
    assert sorted(undone[:2]) == ["Quick", "Slow"]
    assert undone[2:] == ["Before"]
    record = await every_store.load("g1")
    assert record.status is SagaStatus.COMPENSATED
    ends = {(e.step, e.action): e.status for e in record.history}
    assert ends[("Slow", "act")] is StepStatus.CANCELLED
    assert ends[("Quick", "act")] is StepStatus.COMPLETED
    assert ends[("Failing", "act")] is StepStatus.FAILED
    assert ("Failing", "compensate") not in ends
    assert record.context["reservation"] == "r-1"  # Quick's write was journaled


async def test_S15_on_every_store_a_completed_group_is_journaled_with_every_write(
    every_store: Any,
) -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    def pick(ctx: OrderCtx) -> None:
        ctx.items.append("pear")

    saga_cls = _group_saga(Probe("Reserve", trace, mutate=reserve),
                           Probe("Pick", trace, mutate=pick), after=Probe("Ship", trace))
    result = await saga_cls(store=every_store).run(OrderCtx(), saga_id="g2")
    record = await every_store.load("g2")
    assert record.status is SagaStatus.COMPLETED
    assert record.context["reservation"] == "r-1"
    assert record.context["items"] == ["apple", "pear"]
    assert [r.step_name for r in result.results] == ["Reserve", "Pick", "Ship"]


async def test_S15_S9_a_breaker_guarded_member_falls_back_on_an_open_circuit_in_its_lane(
    tmp_path: Path,
) -> None:
    from fallback_saga import CircuitBreaker

    trace: Trace = []
    breaker = CircuitBreaker(fail_max=1, reset_timeout=60.0)
    breaker.open()
    keys: list[str] = []

    class Backup:
        name = "Backup"

        async def act(self, ctx: OrderCtx) -> str:
            keys.append(current_step().idempotency_key)
            ctx.reservation = "from-backup"
            return "backup"

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Backup"))

    member = Fallback(step=Probe("Primary", trace), fallback=Backup(), circuit_breaker=breaker)
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        saga = _group_saga(member, Probe("Other", trace))(store=store)
        result = await saga.run(OrderCtx(), saga_id="b1")
        record = await store.load("b1")
    assert "Primary" not in acted(trace)  # the open circuit rejected it without a call
    assert keys == ["b1:Backup"]
    assert result.context.reservation == "from-backup"
    primary = [(e.status, e.error) for e in record.history if e.step == "Primary"]
    assert primary[0][0] is StepStatus.STARTED
    assert primary[1][0] is StepStatus.FAILED
    assert "CircuitOpenError" in (primary[1][1] or "")


async def test_S15_S10_a_member_retried_in_its_lane_journals_each_attempt_before_it(
    tmp_path: Path,
) -> None:
    from fallback_saga import RetryPolicy

    trace: Trace = []
    flaky = Probe("Flaky", trace, error=lambda: Boom("once"), fail_times=1)
    flaky.retry = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)  # type: ignore[attr-defined]
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await _group_saga(flaky, Probe("Steady", trace))(store=store).run(OrderCtx(), saga_id="r1")
        record = await store.load("r1")
    rows = [(e.attempt, e.status) for e in record.history if e.step == "Flaky"]
    assert rows == [
        (1, StepStatus.STARTED), (1, StepStatus.FAILED),
        (2, StepStatus.STARTED), (2, StepStatus.COMPLETED),
    ]
    assert record.status is SagaStatus.COMPLETED


class MemberEnds(SagaListener):
    """How each try of a step starts and ends, as the listeners are told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("step_started", step))

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("step_failed", step, type(error).__name__))


async def test_S13_a_group_cancelled_during_its_write_ahead_runs_no_member_and_says_so(
    tmp_path: Path,
) -> None:
    trace: Trace = []
    entered = asyncio.Event()
    release = asyncio.Event()

    class SlowStore(SQLiteSagaStore):
        async def append(self, *args: Any, **kwargs: Any) -> None:
            if any(e.step == "B" and e.status is StepStatus.STARTED for e in args[1]):
                entered.set()
                await release.wait()  # the group's write-ahead, held up
            await super().append(*args, **kwargs)

    store = SlowStore(tmp_path / "s.db")
    told = MemberEnds()
    try:
        saga = _group_saga(Probe("A", trace), Probe("B", trace), before=Probe("Before", trace))
        running = saga(store=store, listeners=[told]).run(OrderCtx(), saga_id="w1")
        task = asyncio.create_task(running)
        await reached(entered)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.load("w1")
    finally:
        await store.close()
    assert acted(trace) == ["Before"]  # no member ran
    assert compensated(trace) == ["Before"]
    ends = [(e.step, e.status) for e in record.history if e.step in ("A", "B")]
    assert ends == [
        ("A", StepStatus.STARTED), ("B", StepStatus.STARTED),
        ("A", StepStatus.FAILED), ("B", StepStatus.FAILED),
    ]
    assert record.status is SagaStatus.COMPENSATED
    # The listeners are told so too, as for a straight-line step whose
    # write-ahead is cancelled: each member's try started and failed.
    assert [e for e in told.events if e[1] in ("A", "B")] == [
        ("step_started", "A"), ("step_failed", "A", "CancelledError"),
        ("step_started", "B"), ("step_failed", "B", "CancelledError"),
    ]


async def test_S13_a_store_that_refuses_a_members_completion_stops_the_saga_unwound_by_none(
) -> None:
    from helpers_saga import JsonStore

    from fallback_saga import RetryPolicy, SagaInterrupted

    trace: Trace = []

    class Refusing(JsonStore):
        async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
            if any(e.step == "B" and e.status is StepStatus.COMPLETED for e in args[0]):
                raise OSError("disk full")
            await super().append(saga_id, *args, **kwargs)

    store = Refusing()
    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    saga = _group_saga(Probe("A", trace), Probe("B", trace), before=Probe("Before", trace))
    with pytest.raises(SagaInterrupted) as info:
        await saga(store=store, journal_retry=fast).run(OrderCtx(), saga_id="f1")
    # S13: no compensation runs unless its record can be made durable; the saga
    # is left RUNNING for recovery, which knows from the journal what completed.
    assert compensated(trace) == []
    assert info.value.status is SagaStatus.RUNNING
    record = await store.load("f1")
    assert record.status is SagaStatus.RUNNING
    assert ("B", StepStatus.COMPLETED) not in [(e.step, e.status) for e in record.history]


# --------------------------------------------------------------------------- crashed calls


class DiesAfterItsEffect:
    """A member whose call takes effect; in the crashed run the process then
    dies, once ``sibling`` is in flight too (both calls are left open)."""

    def __init__(self, name: str, trace: Trace, sibling: asyncio.Event | None) -> None:
        self.name = name
        self.trace = trace
        self.sibling = sibling

    async def act(self, ctx: OrderCtx) -> str:
        self.trace.append(("act", self.name))
        if self.sibling is not None:
            await reached(self.sibling)
            raise Crash()
        return f"{self.name}-done"

    async def compensate(self, ctx: OrderCtx) -> None:
        self.trace.append(("compensate", self.name))


async def test_S5_S15_a_resumed_group_cancelled_in_its_write_ahead_undoes_the_crashed_calls(
    tmp_path: Path,
) -> None:
    """The process died while both members' calls were in flight (each took
    effect; only their STARTED rows are journaled). The resume is cancelled
    while the group's write-ahead is written, before either is called
    again: both crashed calls may have taken effect and nothing has
    answered for them, so both are compensated with the step before — not
    left applied under a COMPENSATED saga."""
    trace: Trace = []
    entered = asyncio.Event()
    release = asyncio.Event()

    class HeldStore(SQLiteSagaStore):
        hold = False

        async def append(self, *args: Any, **kwargs: Any) -> None:
            if self.hold and any(e.status is StepStatus.STARTED for e in args[1]):
                entered.set()
                await release.wait()  # the resumed group's write-ahead, held up
            await super().append(*args, **kwargs)

    def saga_with(crash: bool) -> Any:
        book = Blocker("Book", trace)
        charge = DiesAfterItsEffect("Charge", trace, book.started if crash else None)
        return _group_saga(charge, book, before=Probe("Before", trace))

    store = HeldStore(tmp_path / "s.db")
    try:
        with pytest.raises(Crash):
            await saga_with(True)(store=store).run(OrderCtx(), saga_id="c1")
        trace.clear()
        store.hold = True
        task = asyncio.create_task(saga_with(False)(store=store).resume("c1"))
        await reached(entered)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.load("c1")
    finally:
        await store.close()
    assert acted(trace) == []  # neither is called again
    assert sorted(compensated(trace)[:2]) == ["Book", "Charge"]
    assert compensated(trace)[2:] == ["Before"]
    assert record.status is SagaStatus.COMPENSATED


class GatedBreaker:
    """A breaker (any ``CircuitBreakerProtocol``) that holds each call at its
    gate before calling: closed, it lets nothing through."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await fn(*args, **kwargs)

    def is_open_error(self, error: BaseException) -> bool:
        return False


async def test_S5_S9_S15_a_crashed_members_call_is_answered_past_its_breaker(
    tmp_path: Path,
) -> None:
    """The process died inside Charge's call (it took effect). On the resume
    Charge's breaker lets nothing through: the crashed call is answered all
    the same, by calling Charge again (same key) past its breaker — a
    rejection would answer nothing. Book fails: Charge, completed, is
    compensated with the step before; Book, whose own call failed, is not."""
    trace: Trace = []
    breaker = GatedBreaker()
    book_started = asyncio.Event()

    class Book:
        name = "Book"

        def __init__(self, resumed: bool) -> None:
            self.resumed = resumed

        async def act(self, ctx: OrderCtx) -> None:
            trace.append(("act", "Book"))
            if self.resumed:
                raise Boom("no rooms")
            book_started.set()
            await asyncio.Event().wait()  # in flight when the process dies

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Book"))

    def saga_with(crash: bool) -> Any:
        charge = DiesAfterItsEffect("Charge", trace, book_started if crash else None)
        later = Probe("ChargeLater", trace)
        member = Fallback(charge, later, circuit_breaker=breaker)
        return _group_saga(member, Book(resumed=not crash), before=Probe("Before", trace))

    store = SQLiteSagaStore(tmp_path / "s.db")
    try:
        with pytest.raises(Crash):
            await saga_with(True)(store=store).run(OrderCtx(), saga_id="c2")
        trace.clear()
        breaker.gate.clear()  # from now on the breaker lets nothing through
        with pytest.raises(SagaFailed) as failed:
            await saga_with(False)(store=store).resume("c2")
        record = await store.load("c2")
    finally:
        await store.close()
    assert failed.value.failed_step == "Book"
    assert sorted(acted(trace)) == ["Book", "Charge"]  # never ChargeLater
    assert compensated(trace) == ["Charge", "Before"]
    assert record.status is SagaStatus.COMPENSATED


async def test_S7_S15_a_resumed_group_failure_names_the_member_that_failed_not_a_cancelled_one(
    tmp_path: Path,
) -> None:
    """A member fails for good; its sibling, a Fallback whose primary failed,
    is stopped while its fallback's STARTED is being written (journaled
    FAILED with the CancelledError, never called). The SagaFailed a resume
    reads from that journal names the member that failed, with its error (S7:
    the original error; mechanics: "the first member that failed for good"),
    as the first run's did — not the sibling the group stopped."""

    class Refused(Exception):
        pass

    class Member:
        def __init__(self, name: str, fails: bool) -> None:
            self.name = name
            self.fails = fails

        async def act(self, ctx: OrderCtx) -> str:
            if self.fails:
                raise Refused(f"{self.name} refused")
            return self.name

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    saga_class = declare(
        Member("Before", False),
        Parallel(
            Member("Fails", True),
            Fallback(step=Member("Primary", True), fallback=Member("Backup", False)),
        ),
    )
    store = SQLiteSagaStore(tmp_path / "s.db")
    try:
        with pytest.raises(SagaFailed) as first:
            await saga_class(store=store).run(OrderCtx(), saga_id="g1")
        assert first.value.failed_step == "Fails"
        history = (await store.load("g1")).history
        stopped = [e for e in history if e.step == "Backup" and e.status is StepStatus.FAILED]
        assert stopped
        assert (stopped[0].error or "").startswith("CancelledError")
        with pytest.raises(SagaFailed) as resumed:
            await saga_class(store=store).resume("g1")
    finally:
        await store.close()
    assert resumed.value.status is SagaStatus.COMPENSATED
    assert resumed.value.failed_step == "Fails"
    assert str(resumed.value.error).startswith("Refused: Fails refused")


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_S10_S15_a_member_cancelled_in_flight_then_a_crash_is_resumed_and_undone_once(
    durable: bool,
) -> None:
    """A member fails; the group stops its siblings: one is cancelled in
    flight (journaled CANCELLED: its effect is uncertain), the other
    swallows the cancellation and completes — its completion's write
    carries the CANCELLED row — and the store dies right after, before the
    unwinding is journaled (the saga stays RUNNING). The resume calls the
    cancelled member again (its new call answers for the one cancelled,
    same idempotency key); the failing member fails again, and the saga
    unwinds: each member that ran is compensated once, and the journal reads
    back (not "step completed twice"). Found by the cancellation hunt (seed
    1861)."""
    from journal_faults import FAST_JOURNAL_RETRY, FaultyStore, FaultySubmittingStore

    from fallback_saga import Saga, SagaInterrupted

    inner: Any = SQLiteSagaStore(":memory:") if durable else MemorySagaStore()
    store = (FaultySubmittingStore if durable else FaultyStore)(inner)
    calls: list[tuple[str, str]] = []
    dying = [False]
    first_run = [True]
    stopped = asyncio.Event()

    def call(action: str) -> None:
        calls.append((action, current_step().step))  # type: ignore[union-attr]

    class Declined:
        async def act(self, ctx: OrderCtx) -> None:
            call("act")
            await asyncio.sleep(0)  # the siblings are in their calls
            raise Boom("declined")

        async def compensate(self, ctx: OrderCtx) -> None:
            raise AssertionError("a failed act is never compensated")

    class Reserve:
        async def act(self, ctx: OrderCtx) -> str:
            call("act")
            if first_run[0]:
                try:
                    await asyncio.Event().wait()  # in flight until the group stops it
                except asyncio.CancelledError:
                    stopped.set()
                    raise
            return "reserved"

        async def compensate(self, ctx: OrderCtx) -> None:
            call("compensate")

    class Late:
        async def act(self, ctx: OrderCtx) -> str:
            call("act")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:  # swallowed; it completes once Reserve stopped
                await stopped.wait()
                dying[0] = True  # the process dies once this is journaled
            return "late"

        async def compensate(self, ctx: OrderCtx) -> None:
            call("compensate")

    class Order(Saga[OrderCtx]):
        steps = [Parallel(Declined, Reserve, Late)]

    original = store._write

    async def write(send: Any) -> None:
        await original(send)
        if dying[0]:
            store.down = True

    store._write = write  # type: ignore[method-assign]
    if durable:
        original_submit = store._submit

        def submit(send: Any) -> Any:
            answer = original_submit(send)
            if dying[0]:
                store.down = True
            return answer

        store._submit = submit  # type: ignore[method-assign]
    try:
        saga = Order(store=store, journal_retry=FAST_JOURNAL_RETRY)
        with pytest.raises(SagaInterrupted):  # the store died
            await saga.run(OrderCtx(), saga_id="p1")
        first = await inner.load("p1")
        assert first.status is SagaStatus.RUNNING
        assert ("Reserve", StepStatus.CANCELLED) in [
            (e.step, e.status) for e in first.history
        ], first.history
        dying[0] = first_run[0] = False
        store.heal()
        with pytest.raises(SagaFailed) as failed:
            await Order(store=store).resume("p1")
        assert failed.value.status is SagaStatus.COMPENSATED
        undone = [step for action, step in calls if action == "compensate"]
        assert sorted(undone) == ["Late", "Reserve"], calls
        with pytest.raises(SagaFailed) as again:  # the journal reads back
            await Order(store=store).resume("p1")
        assert again.value.status is SagaStatus.COMPENSATED
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()
