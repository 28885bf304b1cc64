"""S13, the journal is the truth: store faults and cancellation at every journal
write never let an effect happen that the journal does not know about, never
tell a caller a status the journal does not hold, and never let recovery
contradict what ran.

The matrix: for each write point of two saga shapes (one completes through a
fallback and a retried step; one unwinds, with a retried compensation) — the
saga's creation, every append on the act, fallback, retry and compensate
paths, the terminal write — inject each fault of ``journal_faults.FAULT_KINDS``
on the memory, SQLite and PostgreSQL stores. After the store heals and
recovery runs, the participant ledger is checked against the journal. A
hypothesis property does the same over random saga shapes and fault points.
(Process kills at every boundary: ``test_crash_matrix.py``; real faults — a
full disk, a PostgreSQL restart and outage: ``test_real_faults.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_faults import (
    COMPLETES,
    FAULT_KINDS,
    UNWINDS,
    CaseResult,
    Ctx,
    FallbackSpec,
    FaultKind,
    FaultyRecoverableStore,
    FaultyStore,
    FaultySubmittingStore,
    Item,
    Ledger,
    Shape,
    StepSpec,
    StoreDown,
    check_caller_matches_journal,
    check_ledger,
    check_no_effect_the_journal_does_not_know,
    run_case,
    victim_task,
)

from fallback_saga import (
    MemorySagaStore,
    Saga,
    SagaError,
    SQLiteSagaStore,
    StepStatus,
    recover,
)

pytest_plugins = ["conftest_pg"]


def count_writes(shape: Shape) -> int:
    """How many journal writes an undisturbed run of ``shape`` makes."""

    async def dry_run() -> int:
        store = FaultyStore(MemorySagaStore())
        await shape.build(store, Ledger()).run(Ctx(order_id="dry"), saga_id="dry")
        return store.writes

    async def dry_run_unwinding() -> int:
        store = FaultyStore(MemorySagaStore())
        with contextlib.suppress(SagaError):
            await shape.build(store, Ledger()).run(Ctx(order_id="dry"), saga_id="dry")
        return store.writes

    return asyncio.run(dry_run_unwinding() if shape is UNWINDS else dry_run())


CASES = [
    pytest.param(shape, at, kind, id=f"{shape.name}-write{at}-{kind}")
    for shape in (COMPLETES, UNWINDS)
    for at in range(count_writes(shape))
    for kind in FAULT_KINDS
]


async def resume_by_id(saga: Saga[Ctx]) -> None:
    """Recovery for a store without leases: resume each saga by id."""
    inner = saga.store.inner  # type: ignore[attr-defined]
    for saga_id in list(inner._sagas):
        record = await inner.load(saga_id)
        if not record.status.is_final:
            with contextlib.suppress(SagaError):
                await saga.resume(saga_id)


async def recover_until_done(saga: Saga[Ctx]) -> None:
    """Recovery for a durable store: passes until one finds nothing."""
    for _ in range(5):
        report = await recover(saga.store, [saga], older_than=0)  # type: ignore[arg-type]
        assert report.skipped == [], report
        if report.total == 0:
            return
    raise AssertionError("recovery never settled")


def check_case(shape: Shape, kind: FaultKind, ledger: Ledger, case: CaseResult) -> None:
    calls = ledger.of(case.saga_id)
    check_no_effect_the_journal_does_not_know(calls[: case.calls_before], case.before)
    check_caller_matches_journal(
        case.outcome, case.before, cancel_with_store_up=kind == "cancel"
    )
    check_no_effect_the_journal_does_not_know(calls, case.after)
    check_ledger(calls, case.after, shape.specs())
    if kind == "cancel":
        # Recovery found nothing to do: the run's journal was already final.
        assert len(calls) == case.calls_before
    if kind == "in_doubt":
        # A write that landed but whose answer was lost is invisible to the caller.
        expected = "SagaResult" if shape is COMPLETES else "SagaFailed"
        assert type(case.outcome).__name__ == expected, case.outcome


StoreFactory = Callable[[], Awaitable[tuple[FaultyStore, Callable[[], Awaitable[None]]]]]


async def matrix_case(
    make: Callable[[], Awaitable[Any]],
    recoverable: bool,
    shape: Shape,
    at: int,
    kind: FaultKind,
    driver: Literal["run", "transaction"] = "run",
    wrapper: type[FaultyStore] | None = None,
) -> None:
    inner = await make()
    try:
        if wrapper is None:
            wrapper = FaultyRecoverableStore if recoverable else FaultyStore
        store = wrapper(inner, at=at, kind=kind)
        ledger = Ledger()
        case = await run_case(
            shape, store, ledger, f"{shape.name}-{at}-{kind}",
            recover_until_done if recoverable else resume_by_id, driver,
        )
        check_case(shape, kind, ledger, case)
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


DRIVERS = pytest.mark.parametrize("driver", ["run", "transaction"])


@DRIVERS
@pytest.mark.parametrize(("shape", "at", "kind"), CASES)
async def test_S13_fault_at_every_journal_write_memory_store(
    shape: Shape, at: int, kind: FaultKind, driver: Literal["run", "transaction"]
) -> None:
    async def make() -> MemorySagaStore:
        return MemorySagaStore()

    await matrix_case(make, False, shape, at, kind, driver)


@DRIVERS
@pytest.mark.parametrize(("shape", "at", "kind"), CASES)
@pytest.mark.parametrize(
    ("wrapper", "writer"),
    [
        (FaultySubmittingStore, "thread"),
        (FaultyRecoverableStore, "thread"),
        (FaultySubmittingStore, "process"),
        (FaultySubmittingStore, "inline"),
    ],
    ids=["submitted", "awaited", "process", "inline"],
)
async def test_S13_fault_at_every_journal_write_sqlite_store(
    tmp_path: Path,
    shape: Shape,
    at: int,
    kind: FaultKind,
    driver: Literal["run", "transaction"],
    wrapper: type[FaultyStore],
    writer: str,
) -> None:
    """``submitted``: the executor's hot path on SQLite (``submit_append``'s
    future awaited directly); ``awaited``: the store's coroutines driven by
    ``settle_inline`` (a wrapper that overrides ``create``/``append``);
    ``process``: the hot path with the journal writes committed by the
    store's writer process; ``inline``: the hot path with no thread, each
    write committed before its call returns."""

    async def make() -> SQLiteSagaStore:
        return SQLiteSagaStore(tmp_path / "journal.db", writer=writer)

    await matrix_case(make, True, shape, at, kind, driver, wrapper)


@pytest.fixture
async def postgres_factory(
    pg_conninfo: str, pg_schema: str
) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    from fallback_saga.store.postgres import PostgresSagaStore

    async def make() -> Any:
        return PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1)

    return make


@pytest.mark.parametrize(("shape", "at", "kind"), CASES)
@pytest.mark.parametrize(
    "wrapper", [FaultySubmittingStore, FaultyRecoverableStore], ids=["submitted", "awaited"]
)
async def test_S13_fault_at_every_journal_write_postgres_store(
    postgres_factory: Callable[[], Awaitable[Any]],
    shape: Shape,
    at: int,
    kind: FaultKind,
    wrapper: type[FaultyStore],
) -> None:
    """``submitted``: the executor's hot path on PostgreSQL too (the group
    commit's future awaited directly); ``awaited``: the store's coroutines
    driven by ``settle_inline``."""
    await matrix_case(postgres_factory, True, shape, at, kind, "run", wrapper)


def test_the_matrix_covers_every_write_path() -> None:
    """The two shapes cross create, act, fallback, retry, compensate (with a
    retried compensation) and both terminal writes."""
    assert count_writes(COMPLETES) >= 5
    assert count_writes(UNWINDS) >= 6
    assert len(CASES) == (count_writes(COMPLETES) + count_writes(UNWINDS)) * len(FAULT_KINDS)


# --------------------------------------------------------------------------- the property

behaviours = st.sampled_from(["ok", "ok", "once", "always"])
_names = itertools.count()


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    items: list[Item] = []
    for position in range(draw(st.integers(1, 5))):
        def spec(suffix: str = "", position: int = position) -> StepSpec:
            return StepSpec(
                f"S{position}{suffix}", act=draw(behaviours), compensate=draw(behaviours)
            )

        if draw(st.booleans()):
            items.append(spec())
        else:
            items.append(FallbackSpec(spec("p"), spec("f")))
    return Shape(items, name=f"Prop{next(_names)}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes(),
    at=st.integers(0, 14),
    kind=st.sampled_from(FAULT_KINDS),
    durable=st.booleans(),
)
def test_S13_property_random_shapes_and_fault_points(
    shape: Shape, at: int, kind: FaultKind, durable: bool
) -> None:
    async def make() -> Any:
        return SQLiteSagaStore(":memory:") if durable else MemorySagaStore()

    async def case() -> None:
        inner = await make()
        try:
            store = (FaultyRecoverableStore if durable else FaultyStore)(inner, at=at, kind=kind)
            ledger = Ledger()
            result = await run_case(
                shape, store, ledger, "prop",
                recover_until_done if durable else resume_by_id,
            )
            calls = ledger.of(result.saga_id)
            fault_hit = store.writes > at
            check_no_effect_the_journal_does_not_know(calls[: result.calls_before], result.before)
            check_caller_matches_journal(
                result.outcome, result.before, cancel_with_store_up=fault_hit and kind == "cancel"
            )
            check_no_effect_the_journal_does_not_know(calls, result.after)
            check_ledger(calls, result.after, shape.specs())
        finally:
            if durable:
                await inner.close()

    asyncio.run(case())


# --------------------------------------------------------------------------- the reported cases


class Effects:
    """The order's participants, as one ledger of effects."""

    log: list[str]


def order_saga(log: list[str], *, charge_failures: int) -> type[Saga[Ctx]]:
    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            log.append("reserve")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("release")

    class Charge:
        calls = 0

        async def act(self, ctx: Ctx) -> None:
            Charge.calls += 1
            if Charge.calls <= charge_failures:
                log.append("charge-failed")
                raise RuntimeError("card declined")
            log.append("charge")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class Ship:
        async def act(self, ctx: Ctx) -> None:
            log.append("ship")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("unship")

    class OrderSaga(Saga[Ctx]):
        steps = [Reserve, Charge, Ship]

    return OrderSaga


class FailingFrom(FaultyRecoverableStore):
    """Every write fails from the ``at``-th on, until healed (a full disk)."""


async def test_S13_store_failure_while_unwinding_never_lets_recovery_run_forward(
    tmp_path: Path,
) -> None:
    """Issue #8, item 1: Charge fails and the store refuses the unwinding's
    writes. Before: the release ran, the caller was told COMPENSATED while the
    journal said RUNNING, and recovery then charged and shipped an order whose
    reservation was released. Now the run stops before any compensation, the
    caller is told the saga is left for recovery, and recovery finishes it
    consistently from the journal."""
    from fallback_saga import RetryPolicy, SagaInterrupted, SagaStatus

    log: list[str] = []
    saga_class = order_saga(log, charge_failures=1)
    # Writes: 0 create (Reserve STARTED), 1 Reserve done + Charge STARTED,
    # 2 the unwinding's first write (COMPENSATING + Release STARTED).
    store = FaultyRecoverableStore(SQLiteSagaStore(tmp_path / "j.db"), at=2, kind="outage")
    try:
        saga = saga_class(store=store, journal_retry=RetryPolicy(attempts=3, delay=0, jitter=0))
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="o-1"), saga_id="o-1")
        assert stopped.value.status is SagaStatus.RUNNING
        assert stopped.value.saga_id == "o-1"
        assert isinstance(stopped.value.failure, RuntimeError)
        assert log == ["reserve", "charge-failed"]  # no release behind the journal's back
        assert (await store.inner.load("o-1")).status is SagaStatus.RUNNING
        store.heal()
        report = await recover(store, [saga], older_than=0)  # type: ignore[arg-type]
        assert report.resumed == ["o-1"]
        assert log == ["reserve", "charge-failed", "charge", "ship"]
        assert (await store.inner.load("o-1")).status is SagaStatus.COMPLETED
    finally:
        await store.inner.close()


async def test_S13_recovery_report_never_says_compensated_while_its_writes_fail(
    tmp_path: Path,
) -> None:
    """The recovery pass of a saga whose writes fail reports it as interrupted,
    not compensated; the next pass, with the store back, finishes it."""
    from fallback_saga import RetryPolicy, SagaStatus

    log: list[str] = []
    saga_class = order_saga(log, charge_failures=10)
    now = [time.time()]  # the store's clock: the first pass's lease runs out when we say
    inner = SQLiteSagaStore(tmp_path / "j.db", clock=lambda: now[0])
    try:
        store = FaultyRecoverableStore(inner, at=2, kind="outage")
        saga = saga_class(store=store, journal_retry=RetryPolicy(attempts=2, delay=0, jitter=0))
        with pytest.raises(SagaError):
            await saga.run(Ctx(order_id="o-2"), saga_id="o-2")
        # The store heals for the claim, then fails again on the first write
        # of the resumed run's unwinding.
        store.heal()
        store.writes, store.at = 0, 1
        # (Its lease cannot be released while the store is down: it runs out
        # below, on the store's clock, before the next pass claims it.)
        now[0] += 1  # older_than=0 claims what was updated before now
        report = await recover(store, [saga], older_than=0, lease=60)  # type: ignore[arg-type]
        assert report.compensated == []
        assert report.failed == []
        assert [saga_id for saga_id, _ in report.interrupted] == ["o-2"]
        assert "release" not in log
        store.heal()
        store.at = None
        now[0] += 61
        report = await recover(store, [saga], older_than=0)  # type: ignore[arg-type]
        assert report.compensated == ["o-2"]
        assert log.count("release") == 1
        assert (await inner.load("o-2")).status is SagaStatus.COMPENSATED
    finally:
        await inner.close()


async def test_S13_cancel_during_the_creating_write_never_becomes_a_forward_run(
    tmp_path: Path,
) -> None:
    """Issue #8, item 2: the caller is cancelled while the saga's creation is
    being written. The write finishes, the journal then says what happened
    (COMPENSATED: nothing had completed), and recovery finds nothing to run."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    saga_class = order_saga(log, charge_failures=0)
    inner = SQLiteSagaStore(tmp_path / "j.db")
    try:
        store = FaultyRecoverableStore(inner, at=0, kind="cancel")
        saga = saga_class(store=store)
        task = victim_task(saga.run(Ctx(order_id="o-3"), saga_id="o-3"), store.mark)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await inner.load("o-3")).status is SagaStatus.COMPENSATED
        report = await recover(store, [saga], older_than=0)  # type: ignore[arg-type]
        assert report.total == 0
        assert log == []
    finally:
        await inner.close()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a worker's counters (it has no hook to wait on)."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


class Hangs:
    """A compensation that never returns on its own."""

    timeout = 0.01

    async def act(self, ctx: Ctx) -> None:
        pass

    async def compensate(self, ctx: Ctx) -> None:
        await asyncio.Event().wait()


class Fails:
    async def act(self, ctx: Ctx) -> None:
        raise RuntimeError("B failed")

    async def compensate(self, ctx: Ctx) -> None:
        pass


class OwnTimeout:
    """A compensation bounded by its own ``asyncio.timeout``."""

    async def act(self, ctx: Ctx) -> None:
        pass

    async def compensate(self, ctx: Ctx) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()


@pytest.mark.parametrize("first", [Hangs, OwnTimeout])
async def test_S6_a_step_timeout_bounds_its_compensation_on_the_default_store(
    first: type,
) -> None:
    """Issue #8, item 3: on the default MemorySagaStore a hanging compensation
    hung ``run()`` forever (the step's timeout cancelled the caller instead of
    the compensation). Now it ends ``SagaFailed(FAILED)`` with the TimeoutError,
    like on SQLite, and nobody gets a CancelledError they did not ask for."""
    from fallback_saga import RetryPolicy, SagaFailed, SagaStatus

    class TimedSaga(Saga[Ctx]):
        steps = [first, Fails]

    saga = TimedSaga(compensation_retry=RetryPolicy(attempts=2, delay=0, jitter=0))
    async with asyncio.timeout(10):  # a safety net: the bug was a hang
        with pytest.raises(SagaFailed) as failed:
            await saga.run(Ctx(order_id="o-4"))
    assert failed.value.status is SagaStatus.FAILED
    assert isinstance(failed.value.compensation_errors[first.__name__], TimeoutError)


@pytest.mark.parametrize("cancel_at", ["Reserve", "Charge", "Ship"])
async def test_S13_cancel_while_a_real_sqlite_write_is_in_flight_ends_final_in_the_journal(
    tmp_path: Path, cancel_at: str
) -> None:
    """No wrapper: the cancellation is sent right before the STARTED write of
    ``cancel_at`` is submitted to the store's writer thread (from the hook
    told just before it: the saga's start, or the previous step's
    completion), so it lands while that write is in flight. The write
    finishes, the saga unwinds, and the journal says COMPENSATED before the
    caller sees CancelledError."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    saga_class = order_saga(log, charge_failures=0)
    victim: list[asyncio.Task[Any]] = []
    before = {"Reserve": None, "Charge": "Reserve", "Ship": "Charge"}[cancel_at]

    class CancelOnStart:
        def saga_started(self, saga_id: str, saga_name: str) -> None:
            if before is None:
                victim[0].cancel()

        def step_completed(self, saga_id: str, step: str) -> None:
            if step == before:
                victim[0].cancel()

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        saga = saga_class(store=store, listeners=[CancelOnStart()])
        task = victim_task(saga.run(Ctx(order_id="o-5"), saga_id="o-5"), victim.append)
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.load("o-5")
        assert record.status is SagaStatus.COMPENSATED
        done = {"Reserve": [], "Charge": ["reserve"], "Ship": ["reserve", "charge"]}[cancel_at]
        undo = {"reserve": "release", "charge": "refund"}
        assert log == done + [undo[effect] for effect in reversed(done)]
        assert (await recover(store, [saga], older_than=0)).total == 0


@pytest.mark.parametrize(
    "bad", ["", "a\ud800b", "nul\x00id", "x" * 1_000_000, 42], ids=repr
)
async def test_S12_a_saga_id_no_store_can_hold_is_refused_before_anything_runs(bad: object) -> None:
    """On every store, the default one included, with a short message."""
    log: list[str] = []
    saga = order_saga(log, charge_failures=0)()
    with pytest.raises(ValueError, match="saga id") as refused:
        await saga.run(Ctx(order_id="o"), saga_id=bad)  # type: ignore[arg-type]
    assert len(str(refused.value)) < 300
    assert log == []


class Unanswering(FaultyStore):
    """A store whose writes from number ``at`` on never answer (a database
    server that is down, a pool waiting for a connection that never comes)."""

    async def _write(self, send: Callable[[], Any]) -> None:
        number = self.writes
        self.writes += 1
        if self.at is not None and number >= self.at:
            await asyncio.Event().wait()
        await send()

    async def load(self, saga_id: str) -> Any:
        if self.at is not None and self.writes > self.at:
            await asyncio.Event().wait()
        return await self.inner.load(saga_id)


async def test_S13_a_store_that_never_answers_stops_the_run_within_journal_timeout() -> None:
    """Issue #8 (found by the 40 s PostgreSQL outage): each try waited for the
    driver's own timeout (30 s for a pooled connection), so a caller waited
    minutes. All the tries of one write now fit in ``journal_timeout``, and the
    unanswered write is reported in doubt."""
    from fallback_saga import RetryPolicy, SagaInterrupted, SagaStatus

    log: list[str] = []
    store = Unanswering(MemorySagaStore(), at=1)
    saga = order_saga(log, charge_failures=0)(
        store=store, journal_retry=RetryPolicy(attempts=3, delay=0, jitter=0),
        journal_timeout=0.05,
    )
    async with asyncio.timeout(10):  # a safety net: the bug was a long hang
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="o-6"), saga_id="o-6")
    assert stopped.value.status is SagaStatus.RUNNING
    assert stopped.value.in_doubt
    assert isinstance(stopped.value.error, TimeoutError)
    assert log == ["reserve"]  # Charge's STARTED never became durable: not called


def test_journal_timeout_must_be_a_positive_number_of_seconds_or_none() -> None:
    saga_class = order_saga([], charge_failures=0)
    for bad in (0, -1, float("inf"), float("nan"), True, "5"):
        with pytest.raises(ValueError, match="journal_timeout"):
            saga_class(journal_timeout=bad)  # type: ignore[arg-type]
    assert saga_class(journal_timeout=None).journal_timeout is None


async def test_S13_a_recovery_worker_counts_a_failing_journal_as_interrupted_never_finished(
    tmp_path: Path,
) -> None:
    """A RecoveryWorker resuming a saga whose unwinding cannot be journaled
    reports it interrupted (not compensated), runs no compensation, and
    finishes it once the store works."""
    from fallback_saga import RecoveryWorker, RetryPolicy, SagaStatus

    log: list[str] = []
    inner = SQLiteSagaStore(tmp_path / "j.db")
    try:
        store = FaultyRecoverableStore(inner, at=2, kind="outage")
        saga = order_saga(log, charge_failures=10)(
            store=store, journal_retry=RetryPolicy(attempts=2, delay=0, jitter=0)
        )
        with pytest.raises(SagaError):
            await saga.run(Ctx(order_id="o-7"), saga_id="o-7")
        store.heal()
        store.writes, store.at = 0, 0  # the resumed run's first write fails
        # (A lease cannot be released while the store is down: a short one
        # lets the worker claim the saga again once the store is back.)
        worker = RecoveryWorker(
            store, [saga], lease=0.05, poll=0.01, older_than=0  # type: ignore[arg-type]
        )
        task = asyncio.create_task(worker.run())
        await until(lambda: worker.stats.interrupted > 0)
        assert worker.stats.compensated == 0
        assert "release" not in log
        store.heal()
        store.at = None
        await until(lambda: worker.stats.compensated > 0)
        await worker.stop()
        await task
        assert log.count("release") == 1
        assert (await inner.load("o-7")).status is SagaStatus.COMPENSATED
    finally:
        await inner.close()


@pytest.mark.parametrize(
    "text", ["nul\x00inside", "lone \ud800 surrogate"], ids=["nul", "surrogate"]
)
async def test_S12_a_context_postgres_cannot_hold_is_refused_before_the_first_step(
    postgres_factory: Callable[[], Awaitable[Any]], text: str
) -> None:
    """PostgreSQL's JSON functions read neither NUL nor a lone surrogate: such a context
    is refused with ContextSerializationError naming the field, before any
    step runs — not a SagaInterrupted after the journal's retries."""
    from fallback_saga import ContextSerializationError

    log: list[str] = []
    store = await postgres_factory()
    try:
        saga = order_saga(log, charge_failures=0)(store=store)
        with pytest.raises(ContextSerializationError) as refused:
            await saga.run(Ctx(order_id=text), saga_id="o-8")
        assert refused.value.path == "order_id"
        assert log == []
        # A pair of surrogates (a character beyond the BMP) is fine.
        assert (await saga.run(Ctx(order_id="emoji \U0001f600"))).status.value == "completed"
    finally:
        await store.close()


async def test_S12_a_step_that_leaves_a_context_postgres_cannot_hold_unwinds_the_saga(
    postgres_factory: Callable[[], Awaitable[Any]],
) -> None:
    """The context a step leaves is refused by the store at the next write:
    the saga unwinds (the step's own act completed, so it is compensated too),
    journaling without that context, and ends COMPENSATED in the journal."""
    from fallback_saga import ContextSerializationError, SagaFailed, SagaStatus

    log: list[str] = []

    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            log.append("reserve")
            ctx.marks.append("bad\x00mark")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("release")

    class Charge:
        async def act(self, ctx: Ctx) -> None:
            log.append("charge")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class MarkingSaga(Saga[Ctx]):
        steps = [Reserve, Charge]

    store = await postgres_factory()
    try:
        with pytest.raises(SagaFailed) as failed:
            await MarkingSaga(store=store).run(Ctx(order_id="o-9"), saga_id="o-9")
        assert failed.value.status is SagaStatus.COMPENSATED
        assert isinstance(failed.value.error, ContextSerializationError)
        assert log == ["reserve", "release"]
        record = await store.load("o-9")
        assert record.status is SagaStatus.COMPENSATED
        assert record.context["marks"] == []  # the last context the journal could hold
    finally:
        await store.close()


class Crash(BaseException):
    """The process dies inside a step: nothing is unwound or journaled after it."""


async def test_S13_a_resumed_run_stopped_by_its_journal_reports_the_status_it_holds(
    tmp_path: Path,
) -> None:
    """A resumed saga exists in the journal from its first line: when its
    journal then fails, ``SagaInterrupted`` says the status the journal
    holds (RUNNING), never None ("even its creation could not be
    confirmed"), and the listeners hear the same."""
    from fallback_saga import RetryPolicy, SagaInterrupted, SagaStatus

    log: list[str] = []
    saga_class = order_saga(log, charge_failures=0)
    crash = [True]

    class CrashOnce:
        # (told before Reserve's COMPLETED is written: with Charge's write-ahead)
        def step_completed(self, saga_id: str, step: str) -> None:
            if step == "Reserve" and crash[0]:
                crash[0] = False
                raise Crash

    heard: list[tuple[str, SagaStatus | None]] = []

    class Interrupted:
        def saga_interrupted(self, saga_id: str, saga_name: str, status: SagaStatus | None,
                             error: BaseException | None) -> None:
            heard.append((saga_id, status))

    async with SQLiteSagaStore(tmp_path / "j.db") as inner:
        with pytest.raises(Crash):
            await saga_class(store=inner, listeners=[CrashOnce()]).run(
                Ctx(order_id="o-11"), saga_id="o-11"
            )
        store = FailingFrom(inner, at=1)  # the resume's first write lands, then none
        saga = saga_class(store=store, listeners=[Interrupted()],
                          journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0))
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.resume("o-11")
        assert (await inner.load("o-11")).status is SagaStatus.RUNNING
    assert stopped.value.status is SagaStatus.RUNNING
    assert heard == [("o-11", SagaStatus.RUNNING)]
    # The crash came before Reserve's completion was journaled: the resume ran
    # Reserve again (same idempotency key), then its next write was refused.
    assert log == ["reserve", "reserve"]


class RefusesTheFirstCreate(SQLiteSagaStore):
    """Refuses its first ``create`` try without writing anything (a locked
    database file): the executor's retry must then find out whether that try
    landed after all, and only its own write counts."""

    refused = False

    def submit_create(self, *args: Any) -> Any:
        from fallback_saga import SagaStoreError

        if not self.refused:
            self.refused = True
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(SagaStoreError("database is locked"))
            return failed
        return super().submit_create(*args)


async def test_S13_a_retried_creation_never_takes_over_a_saga_another_run_created(
    tmp_path: Path,
) -> None:
    """Run A created saga ``o-12`` and is inside its first step. Run B starts
    the same id (a client retrying a request); B's first try of the creation
    is refused and its retry finds a saga of the same name and shape, with as
    many entries as B meant to write — A's, not B's. B must get
    ``SagaAlreadyExists``, and never call a step whose STARTED it did not
    make durable, while A drives its saga to the end."""
    from fallback_saga import RetryPolicy, SagaAlreadyExists, SagaStatus

    log: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()
    saga_class = order_saga(log, charge_failures=0)

    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            log.append(f"reserve {ctx.order_id}")
            if ctx.order_id == "a":
                inside.set()  # A's creation is durable: its STARTED came first
                await release.wait()

        async def compensate(self, ctx: Ctx) -> None:
            log.append("release")

    class GatedSaga(saga_class):  # type: ignore[misc, valid-type]
        steps = [Reserve, *saga_class.steps[1:]]

    fast = RetryPolicy(attempts=3, delay=0.0, jitter=0.0)
    async with SQLiteSagaStore(tmp_path / "j.db") as store_a, \
            RefusesTheFirstCreate(tmp_path / "j.db") as store_b:
        run_a = asyncio.create_task(
            GatedSaga(store=store_a).run(Ctx(order_id="a"), saga_id="o-12")
        )
        await inside.wait()
        with pytest.raises(SagaAlreadyExists):
            await GatedSaga(store=store_b, journal_retry=fast).run(
                Ctx(order_id="b"), saga_id="o-12"
            )
        release.set()
        assert (await run_a).status is SagaStatus.COMPLETED
        record = await store_a.load("o-12")
    assert record.context["order_id"] == "a"
    assert log == ["reserve a", "charge", "ship"]  # each step once: A's


async def test_S13_an_in_doubt_append_counts_as_landed_only_if_the_entries_are_its_own(
    tmp_path: Path,
) -> None:
    """The reconciling read after a failed try: the store holding as many
    entries as the write would have made is not enough — they must be the
    write's own (the same transitions at the same clock readings). Another
    writer's entries are a conflict, never taken for this write's."""
    from fallback_saga import RetryPolicy, SagaStoreError, StepStatus
    from fallback_saga.errors import JournalConflict
    from fallback_saga.journal import JournalWrite, NotDurable, write_durably
    from fallback_saga.store.base import JournalEntry

    def started(step: str, at: float) -> JournalEntry:
        return JournalEntry(0, step, "primary", "act", StepStatus.STARTED, 1, None, at)

    retry = RetryPolicy(attempts=3, delay=0.0, jitter=0.0)
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        await store.create("s", "S", "f", {}, [started("A", 1.0)])
        ours = started("B", 2.0)
        write = JournalWrite("s", "S", "f", False, [ours], None, None, None, held=1)
        # Another writer appended one entry meanwhile: not ours.
        await store.append("s", [started("B", 2.5)])
        with pytest.raises(NotDurable) as refused:
            await write_durably(store, write, retry, failed=SagaStoreError("lost"))
        assert isinstance(refused.value.error, JournalConflict)
        # Ours landed after all: the try counts as done, nothing is written twice.
        await store.create("t", "S", "f", {}, [started("A", 1.0), ours])
        landed = JournalWrite("t", "S", "f", False, [ours], None, None, None, held=1)
        await write_durably(store, landed, retry, failed=SagaStoreError("lost"))
        assert len((await store.load("t")).history) == 2


def crashing_order_saga(log: list[str], crash: list[bool]) -> type[Saga[Ctx]]:
    """``order_saga``'s Reserve, then a Charge whose first call takes effect
    and then the process dies (before its COMPLETED is journaled)."""
    reserve = order_saga(log, charge_failures=0).steps[0]

    class Charge:
        async def act(self, ctx: Ctx) -> None:
            log.append("charge")
            if crash[0]:
                crash[0] = False
                raise Crash  # the charge went through; the process died

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class CrashingOrder(Saga[Ctx]):
        steps = [reserve, Charge]

    return CrashingOrder


async def test_S5_S8_a_resume_cancelled_before_the_interrupted_step_reruns_undoes_it(
    tmp_path: Path,
) -> None:
    """The crashed run was inside Charge's act (it took effect; only its
    STARTED is journaled). The resume is cancelled while Charge's STARTED is
    written again, before its act is called: the saga unwinds, and Charge
    is compensated too — its first call may have taken effect, and no call
    since has answered for it. Left applied, it would sit under a
    COMPENSATED saga."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    saga_class = crashing_order_saga(log, [True])
    async with SQLiteSagaStore(tmp_path / "j.db") as inner:
        with pytest.raises(Crash):
            await saga_class(store=inner).run(Ctx(order_id="o-14"), saga_id="o-14")
        store = FaultyStore(inner, at=0, kind="cancel")  # the resume's first write
        task = victim_task(saga_class(store=store).resume("o-14"), store.mark)
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await inner.load("o-14")
    assert record.status is SagaStatus.COMPENSATED
    assert log == ["reserve", "charge", "refund", "release"]


async def test_S5_S9_a_crashed_call_is_answered_by_its_own_call_even_behind_an_open_breaker(
    tmp_path: Path,
) -> None:
    """The process died inside the primary's call (the charge went through).
    When the saga resumes, the primary's breaker is open (the service failed
    meanwhile). The crashed call is answered by calling the primary again
    with the same idempotency key — the breaker does not stand in the way of
    an answer to a call already made — rather than by the fallback, which
    would charge a second time while the first charge stays applied."""
    from fallback_saga import CircuitBreaker, Fallback, SagaStatus

    log: list[str] = []
    crash = [True]
    breaker = CircuitBreaker(fail_max=1, reset_timeout=1000.0, clock=lambda: 0.0)

    class Charge:
        async def act(self, ctx: Ctx) -> str:
            log.append("charge")
            if crash[0]:
                crash[0] = False
                raise Crash  # the charge went through; the process died
            return "charged"

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class ChargeElsewhere:
        async def act(self, ctx: Ctx) -> str:
            log.append("charge elsewhere")
            return "charged elsewhere"

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund elsewhere")

    class Paying(Saga[Ctx]):
        steps = [Fallback(Charge, ChargeElsewhere, circuit_breaker=breaker)]

    async def down() -> None:
        raise OSError("the payment service is down")

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Paying(store=store).run(Ctx(order_id="o-15"), saga_id="o-15")
        with pytest.raises(OSError, match="down"):
            await breaker.call(down)  # the circuit opens meanwhile
        result = await Paying(store=store).resume("o-15")
        assert result.status is SagaStatus.COMPLETED
        assert [r.step_name for r in result.results] == ["Charge"]
    assert log == ["charge", "charge"]  # the same key twice: the participant answers


async def test_S5_S8_a_crashed_call_answered_failed_is_not_undone_by_a_later_cancel(
    tmp_path: Path,
) -> None:
    """The process died inside the primary's call. The resume calls it again
    (same idempotency key) and the participant answers: it failed — so the
    step's primary failed (S5: never compensated), and the Fallback hands
    over. The caller is then cancelled while the fallback runs (S8): the
    saga unwinds what completed. The primary answered before the
    cancellation, so it is not "a crashed call nobody answered for": it is
    neither journaled CANCELLED nor compensated."""
    from fallback_saga import Fallback, SagaStatus, StepStatus

    log: list[str] = []
    crash = [True]
    victim: list[asyncio.Task[Any]] = []

    class Reserve:
        async def act(self, ctx: Ctx) -> str:
            log.append("reserve")
            return "reserved"

        async def compensate(self, ctx: Ctx) -> None:
            log.append("release")

    class Charge:
        async def act(self, ctx: Ctx) -> str:
            log.append("charge")
            if crash[0]:
                crash[0] = False
                raise Crash  # the process died in the call
            raise OSError("card declined")  # called again: it answers, it failed

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class ChargeLater:
        async def act(self, ctx: Ctx) -> str:
            log.append("charge later")
            victim[0].cancel()  # the caller gives up meanwhile
            await asyncio.sleep(0)
            return "charged later"

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund later")

    class Paying(Saga[Ctx]):
        steps = [Reserve, Fallback(Charge, ChargeLater)]

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Paying(store=store).run(Ctx(order_id="o-16"), saga_id="o-16")
        task = victim_task(Paying(store=store).resume("o-16"), victim.append)
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.load("o-16")
    assert record.status is SagaStatus.COMPENSATED
    assert log == ["reserve", "charge", "charge", "charge later", "release"]
    assert not [e for e in record.history if e.status is StepStatus.CANCELLED]


class RefusesTheLastContext(FaultyStore):
    """Refuses the context of write number ``at`` as PostgreSQL refuses a NUL
    (``ContextSerializationError``), after cancelling the caller meanwhile."""

    async def _write(self, send: Callable[[], Any]) -> None:
        from fallback_saga import ContextSerializationError

        number = self.writes
        self.writes += 1
        if number != self.at:
            await send()
            return
        assert self.victim is not None
        self.victim.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the saga's task meanwhile
        raise ContextSerializationError("marks[0]", "bad\x00mark", "NUL in text")


async def test_S8_a_caller_cancelled_while_the_store_refuses_the_last_context_unwinds(
    tmp_path: Path,
) -> None:
    """The last step leaves a context the store refuses at the completion
    write, and the caller is cancelled while that write is in flight: as for
    a caller still waiting, the saga unwinds (every step, the last one's act
    completed too) and the journal ends COMPENSATED before ``CancelledError``
    reaches the caller — it is not left RUNNING for recovery to run forward."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    async with SQLiteSagaStore(tmp_path / "j.db") as inner:
        store = RefusesTheLastContext(inner, at=3)  # creation, two appends, the completion
        saga_class = order_saga(log, charge_failures=0)
        run = saga_class(store=store).run(Ctx(order_id="o-10"), saga_id="o-10")
        task = victim_task(run, store.mark)
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await inner.load("o-10")
        assert record.status is SagaStatus.COMPENSATED
        assert log == ["reserve", "charge", "ship", "unship", "refund", "release"]
        assert (await recover(inner, [saga_class], older_than=0)).total == 0


class LandsLate(FaultyStore):
    """A conditional store (``appends_after``) whose write number ``at`` fails
    and then lands after all — right after the executor's reconciling read
    (a commit still in flight on the server when it read)."""

    appends_after = True

    def __init__(self, inner: Any, *, at: int) -> None:
        super().__init__(inner, at=at)
        self.late: Callable[[], Any] | None = None

    async def _write(self, send: Callable[[], Any]) -> None:
        number = self.writes
        self.writes += 1
        if number == self.at:
            self.late = send
            raise StoreDown("connection lost; the commit is still in flight")
        await send()

    async def load(self, saga_id: str) -> Any:
        record = await self.inner.load(saga_id)
        if self.late is not None:
            late, self.late = self.late, None
            await late()  # lands only now: the read above did not see it
        return record


@pytest.mark.parametrize("at", [1, 2, 3])
async def test_S13_a_write_that_lands_after_the_reconciling_read_is_never_journaled_twice(
    at: int,
) -> None:
    """The retry of an in-doubt write is made on the condition of the
    journal's length: when the first try landed late, the retry is refused
    (JournalConflict), the executor reads again and finds it there."""
    from fallback_saga import RetryPolicy, SagaStatus

    log: list[str] = []
    store = LandsLate(MemorySagaStore(), at=at)
    saga = order_saga(log, charge_failures=0)(
        store=store, journal_retry=RetryPolicy(attempts=3, delay=0, jitter=0)
    )
    result = await saga.run(Ctx(order_id="o-10"), saga_id="o-10")
    assert result.status is SagaStatus.COMPLETED
    record = await store.inner.load("o-10")
    assert record.status is SagaStatus.COMPLETED
    assert [(e.position, e.status) for e in record.history] == [
        (p, s) for p in range(3) for s in (StepStatus.STARTED, StepStatus.COMPLETED)
    ]
    assert log == ["reserve", "charge", "ship"]


class NothingWritten(StoreDown):
    """A refusal the store knows wrote nothing (no connection to be had)."""

    nothing_written = True


class LandsLateThenRefuses(FaultyStore):
    """A conditional store whose write number ``at`` fails in doubt and lands
    only after the executor's reconciling read (a transaction the client
    gave up on, still waiting on the server for a lock, commits a moment
    later); every later write is refused with ``nothing_written`` until
    ``heal()`` (the pool then gets no connection)."""

    appends_after = True

    def __init__(self, inner: Any, *, at: int) -> None:
        super().__init__(inner, at=at)
        self.late: Callable[[], Any] | None = None
        self.refusing = False

    def heal(self) -> None:
        self.refusing = False

    async def _write(self, send: Callable[[], Any]) -> None:
        number = self.writes
        self.writes += 1
        if self.refusing:
            raise NothingWritten("timed out waiting for a connection")
        if number == self.at:
            self.late = send
            self.refusing = True
            raise StoreDown("the client gave up; the transaction waits on a lock")
        await send()

    async def load(self, saga_id: str) -> Any:
        try:
            return await self.inner.load(saga_id)
        finally:
            if self.late is not None:
                late, self.late = self.late, None
                await late()  # commits only now: the read above did not see it


@pytest.mark.parametrize(("shape", "at"), [
    pytest.param(shape, at, id=f"{shape.name}-write{at}")
    for shape in (COMPLETES, UNWINDS) for at in range(count_writes(shape))
])
async def test_S13_a_read_never_clears_the_doubt_of_a_write_that_may_still_land(
    shape: Shape, at: int
) -> None:
    """A try fails in doubt; the reconciling read does not find it; the
    retries are then refused with errors that say nothing was written
    (``nothing_written``) until the budget is spent — and the first try
    lands after the read. The run must not report "certainly not written"
    (``in_doubt=False``): the caller is told a status the journal can end
    with, and recovery, once the store heals, finishes the saga by the ledger."""
    ledger = Ledger()
    store = LandsLateThenRefuses(MemorySagaStore(), at=at)
    case = await run_case(shape, store, ledger, f"late-{at}", resume_by_id)
    calls = ledger.of(case.saga_id)
    assert store.late is None  # the late try did land
    check_no_effect_the_journal_does_not_know(calls[: case.calls_before], case.before)
    check_caller_matches_journal(case.outcome, case.before, cancel_with_store_up=False)
    check_no_effect_the_journal_does_not_know(calls, case.after)
    check_ledger(calls, case.after, shape.specs())


class LandsLateUnconditionally(LandsLate):
    """``LandsLate`` for a store of one's own without ``appends_after``: a
    retry cannot be made on the condition of the journal's length."""

    appends_after = False


def journaled_twice(record: Any) -> list[tuple[Any, ...]]:
    """The transitions ``record`` holds more than once (each step's try is
    one transition: its position, branch, action, status and attempt)."""
    seen = Counter(tuple(e)[:6] for e in record.history)
    return [key for key, times in seen.items() if times > 1]


@pytest.mark.parametrize(("shape", "at"), [
    pytest.param(shape, at, id=f"{shape.name}-write{at}")
    # (write 0, the creation, is conditional by the saga's id: tested above)
    for shape in (COMPLETES, UNWINDS) for at in range(1, count_writes(shape))
])
async def test_S13_a_store_without_conditional_appends_never_journals_an_in_doubt_write_twice(
    shape: Shape, at: int
) -> None:
    """A store without ``appends_after``: a try fails in doubt and lands
    right after the executor's reconciling read. Sent again, its entries
    would be journaled twice; the run ends in doubt instead
    (``SagaInterrupted.in_doubt``) — unless the write is a creation or a
    status change alone, which a late landing cannot double — and the
    journal, resumed, ends with each transition once, by the ledger."""
    from fallback_saga import SagaInterrupted

    ledger = Ledger()
    store = LandsLateUnconditionally(MemorySagaStore(), at=at)
    case = await run_case(shape, store, ledger, f"unconditional-{at}", resume_by_id)
    assert store.late is None  # the late try did land
    assert case.before is not None
    assert journaled_twice(case.before) == []  # (a resume may journal a crashed try again)
    if isinstance(case.outcome, SagaInterrupted):
        assert case.outcome.in_doubt
    calls = ledger.of(case.saga_id)
    check_no_effect_the_journal_does_not_know(calls[: case.calls_before], case.before)
    check_caller_matches_journal(case.outcome, case.before, cancel_with_store_up=False)
    check_no_effect_the_journal_does_not_know(calls, case.after)
    check_ledger(calls, case.after, shape.specs())


async def test_S13_an_in_doubt_append_without_conditional_appends_is_not_sent_again() -> None:
    """``write_durably`` itself, on a store without ``appends_after``: the
    first try of an append is in doubt, the read does not find it (it lands
    right after) — ``NotDurable`` in doubt, the append never sent again."""
    from fallback_saga import RetryPolicy
    from fallback_saga.journal import JournalWrite, NotDurable, write_durably
    from fallback_saga.store.base import JournalEntry

    entry = JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1, None, 1.0)
    inner = MemorySagaStore()
    await inner.create("s", "S", "f", {}, [])
    store = LandsLateUnconditionally(inner, at=0)
    write = JournalWrite("s", "S", "f", False, [entry], None, None, None, held=0)
    with pytest.raises(NotDurable) as gave_up:
        await write_durably(store, write, RetryPolicy(attempts=3, delay=0.0, jitter=0.0))
    assert isinstance(gave_up.value.error, StoreDown)
    assert gave_up.value.in_doubt
    assert store.writes == 1  # one try: the one that landed late
    assert len((await inner.load("s")).history) == 1


async def test_S13_a_refusal_after_an_unsettled_try_leaves_the_write_in_doubt() -> None:
    """``write_durably`` itself: the first try is in doubt, the read finds
    nothing, every retry is refused with ``nothing_written`` and the budget
    runs out — ``NotDurable`` stays in doubt (the first try did land)."""
    from fallback_saga import RetryPolicy
    from fallback_saga.journal import JournalWrite, NotDurable, write_durably
    from fallback_saga.store.base import JournalEntry

    entry = JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1, None, 1.0)
    inner = MemorySagaStore()
    await inner.create("s", "S", "f", {}, [])
    store = LandsLateThenRefuses(inner, at=0)
    write = JournalWrite("s", "S", "f", False, [entry], None, None, None, held=0,
                         conditional=True)
    with pytest.raises(NotDurable) as gave_up:
        await write_durably(store, write, RetryPolicy(attempts=2, delay=0.0, jitter=0.0))
    assert isinstance(gave_up.value.error, NothingWritten)
    assert gave_up.value.in_doubt  # and indeed it landed:
    assert len((await inner.load("s")).history) == 1


def logged_step(
    log: list[str], name: str, done: str, undone: str, *,
    on_act: Callable[[], object] | None = None, on_undo: Callable[[], object] | None = None,
) -> type:
    """A step class ``name``: its act logs ``done``, then calls ``on_act``
    (which may cancel the caller's task, or raise); its compensate logs
    ``undone``, then calls ``on_undo``. Neither waits."""

    async def act(self: Any, ctx: Any) -> None:
        log.append(done)
        if on_act is not None:
            on_act()

    async def compensate(self: Any, ctx: Any) -> None:
        log.append(undone)
        if on_undo is not None:
            on_undo()

    return type(name, (), {"act": act, "compensate": compensate})


def cancelling_step_saga(
    log: list[str], victim: list[asyncio.Task[Any]], how: str
) -> type[Saga[Ctx]]:
    """Reserve cancels the caller's task as its act returns (nothing waits
    after the request, so it has not landed yet); Charge follows.
    ``how``: Reserve is a plain step, a retried one, or a Fallback's primary
    behind a breaker (the executor's three paths to a step)."""
    from fallback_saga import CircuitBreaker, Fallback, RetryPolicy

    def cancel() -> None:
        victim[0].cancel("shutting down")

    Reserve = logged_step(log, "Reserve", "reserve", "release", on_act=cancel)
    ReserveElsewhere = logged_step(
        log, "ReserveElsewhere", "reserve-elsewhere", "release-elsewhere"
    )
    Charge = logged_step(log, "Charge", "charge", "refund")

    first: Any
    if how == "plain":
        first = Reserve
    elif how == "retried":
        first = type("Reserve", (Reserve,), {"retry": RetryPolicy(attempts=3, delay=0.0)})
    else:
        first = Fallback(Reserve(), ReserveElsewhere(), circuit_breaker=CircuitBreaker())

    class OrderSaga(Saga[Ctx]):
        steps = [first, Charge]

    return OrderSaga


@pytest.mark.parametrize("store_kind", ["writes-never-wait", "sqlite-thread", "sqlite-inline"])
@pytest.mark.parametrize("how", ["plain", "retried", "fallback-with-breaker"])
async def test_S8_S13_a_cancellation_asked_for_in_an_act_lands_in_the_journal_write_after_it(
    how: str, store_kind: str, tmp_path: Path
) -> None:
    """A caller cancelled while a step's act runs without waiting (the act
    cancels it, or anything it calls synchronously does) is cancelled in the
    journal write that follows, on every Python — as a durable store's write,
    which always waits, would deliver it: the next step's act never runs, the
    completed step is compensated, and the caller gets its own message.

    A store whose writes never wait (a user's in-process store) must not
    make the difference: on Python 3.12+ the executor's write task starts
    eagerly and finishes without a trip through the loop, so nothing
    delivered the cancellation until the next step's own first wait — the
    next step's act ran after the caller had asked to stop."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    victim: list[asyncio.Task[Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        inner: Any
        if store_kind == "writes-never-wait":
            inner = MemorySagaStore()
            store: Any = FaultyStore(inner)
        else:
            writer = store_kind.removeprefix("sqlite-")
            inner = store = await stack.enter_async_context(
                SQLiteSagaStore(tmp_path / "j.db", writer=writer)
            )
        saga = cancelling_step_saga(log, victim, how)(store=store)
        task = victim_task(saga.run(Ctx(order_id="o-11"), saga_id="o-11"), victim.append)
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
        record = await inner.load("o-11")
    assert raised.value.args == ("shutting down",)
    assert log == ["reserve", "release"]
    assert record.status is SagaStatus.COMPENSATED
    charge = [(e.action, e.status, e.error) for e in record.history if e.step == "Charge"]
    # Its STARTED was in the write the cancellation landed in: failed, never called.
    assert charge == [
        ("act", StepStatus.STARTED, None),
        ("act", StepStatus.FAILED, "CancelledError: shutting down"),
    ]


def cancelling_member_saga(
    log: list[str], victim: list[asyncio.Task[Any]], how: str
) -> type[Saga[Ctx]]:
    """Reserve, then a group of Charge and Notify, then (but for ``last``)
    Ship. A participant cancels the caller's task and returns without
    waiting, so the request has not landed when it returns. ``how``: where —
    ``member`` (Charge's act; Ship follows the group), ``last`` (the same,
    the group ends the saga), ``before`` (Reserve's act, the group follows),
    ``sibling-fails`` (Notify's act, while Charge fails)."""
    from fallback_saga import Parallel

    def step(name: str, undo: str, *, cancels: bool = False, fails: bool = False) -> type:
        def then() -> None:
            if cancels:
                victim[0].cancel("shutting down")
            if fails:
                raise RuntimeError(f"{name} failed")

        return logged_step(log, name, name, undo, on_act=then)

    reserve = step("Reserve", "release", cancels=how == "before")
    charge = step("Charge", "refund", cancels=how in ("member", "last"),
                  fails=how == "sibling-fails")
    notify = step("Notify", "retract", cancels=how == "sibling-fails")
    ship = step("Ship", "unship")
    plan: list[Any] = [reserve, Parallel(charge, notify)]
    if how != "last":
        plan.append(ship)

    class OrderSaga(Saga[Ctx]):
        steps = plan

    return OrderSaga


@pytest.mark.parametrize("how", ["member", "last", "before", "sibling-fails"])
@pytest.mark.parametrize("writes", ["none", "never-wait"])
async def test_S8_S15_a_cancellation_asked_for_as_a_group_runs_lands_when_the_group_joins(
    how: str, writes: str
) -> None:
    """A caller cancelled while a ``Parallel`` group runs (a member cancels
    it, or the step before the group did, and nothing waited since) is
    cancelled when the group joins, on every Python: the members are
    stopped or finished, everything that ran is compensated, and only then
    does ``CancelledError`` (the caller's message) propagate — no step after
    the group runs, the saga never completes behind its caller's back, and a
    member's failure does not turn the cancellation into ``SagaFailed``.

    On Python 3.11 the group gives the loop a turn to start its members, and
    the cancellation lands there. On 3.12+ the members start eagerly: ones
    that never wait (an in-process store, or a store of your own whose
    writes never wait) finished inside the group's own step, the group
    returned without waiting once, and the next step ran (with nothing
    after the group, the saga completed and the caller got its
    ``CancelledError`` over a COMPLETED journal)."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    victim: list[asyncio.Task[Any]] = []
    inner = MemorySagaStore()
    store: Any = inner if writes == "none" else FaultyStore(inner)
    saga = cancelling_member_saga(log, victim, how)(store=store)
    task = victim_task(saga.run(Ctx(order_id="o-12"), saga_id="o-12"), victim.append)
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert raised.value.args == ("shutting down",)
    if how == "before":
        # It landed before the group: in its write-ahead (S13), or, on the
        # in-process store, where the run checks before each step's act.
        # No member was called.
        assert log == ["Reserve", "release"]
    elif how == "sibling-fails":
        # Charge failed: not compensated (S5); Notify completed: compensated.
        assert log == ["Reserve", "Charge", "Notify", "retract", "release"]
    else:
        # The members complete in their declared order; undone in reverse.
        assert log == ["Reserve", "Charge", "Notify", "retract", "refund", "release"]
    record = await inner.load("o-12")
    assert record.status is SagaStatus.COMPENSATED
    assert "Ship" not in {entry.step for entry in record.history}


@pytest.mark.parametrize("writes", ["none", "never-wait"])
@pytest.mark.parametrize("driver", ["run", "transaction"])
async def test_S8_a_caller_cancelled_by_a_compensation_that_never_waits_gets_cancelled_error(
    writes: str, driver: str
) -> None:
    """A caller cancelled during the unwinding that follows a step's failure
    gets ``CancelledError`` (its own message) once the last compensation
    has run, not ``SagaFailed`` (docs/mechanics.md, "Cancellation") — also
    when the cancellation is asked for by a compensation that returns
    without waiting, on every Python.

    On Python 3.11 the caller gives the loop a turn as the shielded
    unwinding starts, and the cancellation lands there once the unwinding
    is done. On 3.12+ the unwinding's task starts eagerly: one that never
    waits finished inside the caller's step, which took its result and
    raised ``SagaFailed``, the cancellation dropped."""
    from fallback_saga import SagaStatus

    log: list[str] = []
    victim: list[asyncio.Task[Any]] = []

    def no_courier() -> None:
        raise RuntimeError("no courier")

    Reserve = logged_step(log, "Reserve", "reserve", "release")
    Charge = logged_step(log, "Charge", "charge", "refund",
                         on_undo=lambda: victim[0].cancel("shutting down"))
    Ship = logged_step(log, "Ship", "ship", "unship", on_act=no_courier)

    class OrderSaga(Saga[Ctx]):
        steps = [Reserve, Charge, Ship]

    inner = MemorySagaStore()
    store: Any = inner if writes == "none" else FaultyStore(inner)
    saga = OrderSaga(store=store)

    async def drive() -> None:
        if driver == "run":
            await saga.run(Ctx(order_id="o-13"), saga_id="o-13")
            return
        async with saga.transaction(Ctx(order_id="o-13"), saga_id="o-13") as tx:
            async for _ in tx:
                pass

    task = victim_task(drive(), victim.append)
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert raised.value.args == ("shutting down",)
    assert log == ["reserve", "charge", "ship", "refund", "release"]
    assert (await inner.load("o-13")).status is SagaStatus.COMPENSATED
