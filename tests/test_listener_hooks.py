"""The listener hooks added for tracing: ``step_call_started``/``step_call_finished``
around every act and compensate call (with the branch and the idempotency
key), ``saga_interrupted`` for a run that stops short of a final status,
``saga_resumed``, and ``recovery_outcome`` from ``recover`` and
``RecoveryWorker``. No OpenTelemetry needed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers_claims import ClaimsEveryName
from helpers_saga import Boom, OrderCtx, Probe, declare
from journal_faults import (
    FAST_JOURNAL_RETRY,
    FallbackSpec,
    FaultKind,
    FaultyStore,
    FaultySubmittingStore,
    Ledger,
    Shape,
    StepSpec,
    journal_of,
)
from journal_faults import (
    Ctx as LedgerCtx,
)

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    LoggingListener,
    MemorySagaStore,
    RecoveryWorker,
    RetryPolicy,
    SagaAlreadyExists,
    SagaContext,
    SagaError,
    SagaFailed,
    SagaInterrupted,
    SagaListener,
    SagaStatus,
    SQLiteSagaStore,
    StepCall,
    StepStatus,
    current_step,
    recover,
)

FAST = RetryPolicy(attempts=3, delay=0.0, jitter=0.0)
Event = tuple[Any, ...]


def _name(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


class Recorder(SagaListener):
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls: list[StepCall] = []

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.events.append(("saga_started", saga_id))

    def saga_resumed(self, saga_id: str, saga_name: str) -> None:
        self.events.append(("saga_resumed", saga_id))

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        self.events.append(("saga_finished", status.value, _name(error)))

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        self.events.append(("saga_interrupted", status and status.value, _name(error)))

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("step_started", step, attempt))

    def step_completed(self, saga_id: str, step: str) -> None:
        self.events.append(("step_completed", step))

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("step_failed", step, _name(error)))

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("compensation_started", step, attempt))

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self.events.append(("compensation_completed", step))

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("compensation_failed", step, _name(error)))

    def step_call_started(self, call: StepCall) -> None:
        self.calls.append(call)
        self.events.append(("call", call.action, call.step, call.branch, call.attempt))

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        assert call is self.calls[-1]  # the same object, and calls never overlap here
        self.events.append(("call_finished", call.step, _name(error)))

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        self.events.append(("recovery_outcome", saga_id, saga_name, outcome, reason is None))


async def test_every_call_is_bracketed_by_the_call_hooks_with_its_branch() -> None:
    recorder = Recorder()
    saga = declare(
        Fallback(step=Probe("Card", [], error=Boom), fallback=Probe("Invoice", [])),
        Probe("Ship", [], comp_error=Boom, comp_fail_times=1),
        Probe("Notify", [], error=Boom),
    )(listeners=[recorder], compensation_retry=FAST)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="calls")

    assert recorder.events == [
        ("saga_started", "calls"),
        ("step_started", "Card", 1),
        ("call", "act", "Card", "primary", 1),
        ("call_finished", "Card", "Boom"),
        ("step_failed", "Card", "Boom"),
        ("step_started", "Invoice", 1),
        ("call", "act", "Invoice", "fallback", 1),
        ("call_finished", "Invoice", None),
        ("step_completed", "Invoice"),
        ("step_started", "Ship", 1),
        ("call", "act", "Ship", "primary", 1),
        ("call_finished", "Ship", None),
        ("step_completed", "Ship"),
        ("step_started", "Notify", 1),
        ("call", "act", "Notify", "primary", 1),
        ("call_finished", "Notify", "Boom"),
        ("step_failed", "Notify", "Boom"),
        ("compensation_started", "Ship", 1),
        ("call", "compensate", "Ship", "primary", 1),
        ("call_finished", "Ship", "Boom"),  # the attempt that is retried: seen here only
        ("compensation_started", "Ship", 2),
        ("call", "compensate", "Ship", "primary", 2),
        ("call_finished", "Ship", None),
        ("compensation_completed", "Ship"),
        ("compensation_started", "Invoice", 1),
        ("call", "compensate", "Invoice", "fallback", 1),
        ("call_finished", "Invoice", None),
        ("compensation_completed", "Invoice"),
        ("saga_finished", "compensated", "Boom"),
    ]
    keys = [call.idempotency_key for call in recorder.calls]
    assert keys[:3] == ["calls:Card", "calls:Invoice", "calls:Ship"]
    assert keys[-1] == "calls:Invoice:compensate"
    assert all(call.saga_name == "TestSaga" for call in recorder.calls)


async def test_the_call_hooks_bracket_the_call_itself() -> None:
    """``step_call_started`` comes right before the step runs: the step sees
    what the hook saw."""
    seen: list[tuple[str, str]] = []

    class Watch:
        def step_call_started(self, call: StepCall) -> None:
            seen.append(("hook", call.idempotency_key))

    class Step:
        name = "Pay"

        async def act(self, context: Any) -> None:
            seen.append(("act", current_step().idempotency_key))

        async def compensate(self, context: Any) -> None:
            pass

    await declare(Step())(listeners=[Watch()]).run(OrderCtx(), saga_id="k")
    assert seen == [("hook", "k:Pay"), ("act", "k:Pay")]


async def test_a_call_rejected_by_an_open_circuit_is_never_a_call() -> None:
    recorder = Recorder()
    breaker = CircuitBreaker(name="cards")
    breaker.open()
    saga = declare(
        Fallback(step=Probe("Card", []), fallback=Probe("Invoice", []), circuit_breaker=breaker),
    )(listeners=[recorder])

    await saga.run(OrderCtx(), saga_id="rejected")

    assert recorder.events[1:4] == [
        ("step_started", "Card", 1),
        ("step_failed", "Card", "CircuitOpenError"),  # no call hooks: it was not called
        ("step_started", "Invoice", 1),
    ]


async def test_a_run_the_journal_stops_is_announced_as_interrupted(tmp_path: Path) -> None:
    recorder = Recorder()
    async with SQLiteSagaStore(tmp_path / "s.db") as inner:
        saga = declare(Probe("A", []), Probe("B", []))(
            store=FaultyStore(inner, at=1), listeners=[recorder],
            journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
        )
        with pytest.raises(SagaInterrupted):
            await saga.run(OrderCtx(), saga_id="stopped")

    # B's write-ahead failed: B was never called, and no one is told it started
    assert recorder.events[-2:] == [
        ("step_completed", "A"),
        ("saga_interrupted", "running", "SagaInterrupted"),
    ]
    assert not any(event[0] == "saga_finished" for event in recorder.events)


async def test_a_store_that_refuses_the_creation_is_announced_as_interrupted(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    async with SQLiteSagaStore(tmp_path / "s.db") as inner:
        saga = declare(Probe("A", []))(
            store=FaultyStore(inner, at=0), listeners=[recorder],
            journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
        )
        with pytest.raises(SagaInterrupted):
            await saga.run(OrderCtx(), saga_id="never")

    assert recorder.events[-1] == ("saga_interrupted", None, "SagaInterrupted")


class Starts(SagaListener):
    """The ``step_started`` announcements, as (step, attempt), and the
    outcomes told of them."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, int]] = []
        self.outcomes: list[str] = []

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.starts.append((step, attempt))

    def step_completed(self, saga_id: str, step: str) -> None:
        self.outcomes.append(step)

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.outcomes.append(step)


STARTS_SHAPE = Shape(
    [
        StepSpec("Reserve"),
        StepSpec("Ship", act="once"),  # retried: its second attempt has a write-ahead too
        FallbackSpec(StepSpec("Charge", act="always"), StepSpec("ChargeLater")),
    ],
    name="StartsSaga",
)


def _journal_starts(record: Any) -> Counter[tuple[str, int]]:
    return Counter(
        (entry.step, entry.attempt) for entry in (record.history if record else ())
        if entry.action == "act" and entry.status is StepStatus.STARTED
    )


@pytest.mark.parametrize("kind", ["outage", "in_doubt_outage", "cancel", "cancel_outage"])
@pytest.mark.parametrize("at", range(8))
async def test_S13_a_step_start_is_announced_only_once_its_started_record_is_durable(
    at: int, kind: FaultKind
) -> None:
    """``step_started`` says the act is about to be called, as
    ``compensation_started`` does for a compensate: after the write-ahead
    (S13), never for an attempt whose STARTED record the store refused —
    that act is never called, and a retry that is not made is no retry
    (the OpenTelemetry listener counts ``fallback_saga.step.retries`` from
    it). What the listener heard started is what the journal holds."""
    inner = MemorySagaStore()
    store = FaultyStore(inner, at=at, kind=kind)
    ledger = Ledger()
    listener = Starts()
    saga = STARTS_SHAPE.saga_class(
        store=store, step_factory=lambda cls: cls(ledger), journal_retry=FAST_JOURNAL_RETRY,
        listeners=[listener],
    )
    task = asyncio.create_task(saga.run(LedgerCtx(order_id="o"), saga_id="o"))
    store.victim = task
    with contextlib.suppress(SagaError, asyncio.CancelledError):
        await task
    record = await journal_of(inner, "o")
    announced = Counter(listener.starts)
    journal = _journal_starts(record)
    # every try told started is told completed or failed, and no other
    assert Counter(step for step, _ in listener.starts) == Counter(listener.outcomes)
    if kind == "cancel":  # the store stays up: the journal ends holding every STARTED
        assert announced == journal, (announced, journal)
        return
    called = Counter(call.step for call in ledger.calls if call.action == "act")
    assert Counter(step for step, _ in listener.starts) == called, (listener.starts, called)
    assert not announced - journal, f"announced, never journaled: {announced - journal}"


@pytest.mark.parametrize("at", range(4))
async def test_S13_a_breaker_guarded_start_is_announced_after_its_write_ahead(at: int) -> None:
    """The same behind a circuit breaker (whose call makes the write-ahead):
    a rejection is still announced, started then failed; a call the store
    stopped is not."""
    inner = MemorySagaStore()
    store = FaultyStore(inner, at=at)
    recorder = Recorder()
    breaker = CircuitBreaker(fail_max=1, reset_timeout=60.0)
    saga = declare(
        Fallback(step=Probe("Pay", [], error=Boom), fallback=Probe("PayLater", []),
                 circuit_breaker=breaker),
        Fallback(step=Probe("Refund", []), fallback=Probe("RefundLater", []),
                 circuit_breaker=breaker),
    )(store=store, listeners=[recorder], journal_retry=FAST_JOURNAL_RETRY)
    with contextlib.suppress(SagaError):
        await saga.run(OrderCtx(), saga_id="o")
    record = await journal_of(inner, "o")
    starts = Counter((e[1], e[2]) for e in recorder.events if e[0] == "step_started")
    # (a rejection is no call: its rows go with the next write, like a failure's)
    rejected = Counter(
        (e[1], 1) for e in recorder.events if e[0] == "step_failed" and e[2] == "CircuitOpenError"
    )
    assert not starts - rejected - _journal_starts(record), (recorder.events, record)
    if record is not None and record.status is SagaStatus.COMPLETED:
        # the open circuit's rejection: announced, started then failed
        assert ("step_started", "Refund", 1) in recorder.events
        assert ("step_failed", "Refund", "CircuitOpenError") in recorder.events


# --------------------------------------------------------------------------- resume, recovery


class Crash(BaseException):
    """The process dies inside a step."""


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = "o-1"


class Charge:
    name = "Charge"
    crash = True

    async def act(self, context: Ctx) -> str:
        if Charge.crash:
            raise Crash
        return "charged"

    async def compensate(self, context: Ctx) -> None:
        pass


ShopSaga = declare(Probe("Reserve", []), Charge(), context=Ctx, name="ShopSaga")


async def _crashed(db: Path, saga_id: str) -> None:
    Charge.crash = True
    async with SQLiteSagaStore(db) as store:
        task = asyncio.create_task(ShopSaga(store=store).run(Ctx(), saga_id=saga_id))
        with pytest.raises(Crash):
            await task
    Charge.crash = False


async def test_a_resumed_run_says_so_right_after_it_starts(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await _crashed(db, "r-1")
    recorder = Recorder()
    async with SQLiteSagaStore(db) as store:
        await ShopSaga(store=store, listeners=[recorder]).resume("r-1")
    assert recorder.events[:3] == [
        ("saga_started", "r-1"), ("saga_resumed", "r-1"), ("step_started", "Charge", 1),
    ]
    assert recorder.events[-1] == ("saga_finished", "completed", None)


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
@pytest.mark.parametrize("where", ["act", "compensate"])
async def test_S13_a_run_a_crash_stops_is_announced_as_interrupted_with_the_journals_status(
    tmp_path: Path, durable: bool, where: str
) -> None:
    # A BaseException that is not a cancellation (SystemExit, a test
    # framework's outcome) stops the run where it is, unwinding nothing more
    # (docs/mechanics.md). Every saga_started still gets its saga_interrupted
    # (docs/observability.md), with the status the journal is left in: a
    # tracer's span is closed, not left open.
    recorder = Recorder()
    steps = (
        (Probe("A", []), Probe("B", [], error=Crash))
        if where == "act"
        else (Probe("A", [], comp_error=Crash), Probe("B", [], error=Boom))
    )
    left = "running" if where == "act" else "compensating"
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        saga = declare(*steps)(store=store if durable else None, listeners=[recorder])
        with pytest.raises(Crash):
            await saga.run(OrderCtx(), saga_id="crashed")
        if durable:
            assert (await store.load("crashed")).status.value == left
    assert recorder.events[-1] == ("saga_interrupted", left, "Crash")
    kinds = [event[0] for event in recorder.events]
    assert kinds.count("saga_interrupted") == 1
    assert kinds.count("call") == kinds.count("call_finished")  # the crashed call's too
    crashed = "B" if where == "act" else "A"
    assert [e for e in recorder.events if e[0] == "call_finished"][-1] == (
        "call_finished", crashed, "Crash"
    )


@pytest.mark.parametrize("where", ["block", "act", "compensate"])
async def test_S13_a_transaction_a_crash_stops_is_announced_as_interrupted(where: str) -> None:
    recorder = Recorder()
    saga = declare(
        Probe("A", [], comp_error=Crash if where == "compensate" else None),
        Probe("B", [], error={"act": Crash, "compensate": Boom}.get(where)),
    )(listeners=[recorder])
    async def drive() -> None:
        async with saga.transaction(OrderCtx()) as steps:
            async for _ in steps:
                if where == "block":
                    raise Crash

    with pytest.raises(Crash):
        await drive()
    left = "compensating" if where == "compensate" else "running"
    assert recorder.events[-1] == ("saga_interrupted", left, "Crash")
    assert [event[0] for event in recorder.events].count("saga_interrupted") == 1


async def test_recover_reports_each_outcome_once_to_its_and_the_sagas_listeners(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    await _crashed(db, "r-1")
    shared, own, given = Recorder(), Recorder(), Recorder()
    async with SQLiteSagaStore(db) as store:
        saga = ShopSaga(store=store, listeners=[shared, own])
        report = await recover(store, [saga], older_than=0, listeners=[given, shared])
    assert report.resumed == ["r-1"]
    outcome = ("recovery_outcome", "r-1", "ShopSaga", "completed", True)
    for recorder in (shared, own, given):
        assert [e for e in recorder.events if e[0] == "recovery_outcome"] == [outcome]


async def test_a_worker_reports_a_saga_it_cannot_resume(tmp_path: Path) -> None:
    """A saga of a name it was not given, on a store that cannot claim by name
    (a store of one's own: built-in ones claim only the worker's names)."""
    db = tmp_path / "s.db"
    await _crashed(db, "r-2")
    reported = asyncio.Event()

    class Waiting(Recorder):
        def recovery_outcome(
            self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
        ) -> None:
            super().recovery_outcome(saga_id, saga_name, outcome, reason)
            reported.set()

    recorder = Waiting()
    OtherSaga = declare(Probe("X", []), context=Ctx, name="OtherSaga")
    async with SQLiteSagaStore(db) as sqlite:
        store = ClaimsEveryName(sqlite)
        worker = RecoveryWorker(store, [OtherSaga], older_than=0, poll=0.01,
                                listeners=[recorder])
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            await reported.wait()
        await worker.stop()
        await running
    assert worker.stats.skipped >= 1
    assert next(e for e in recorder.events if e[0] == "recovery_outcome") == (
        "recovery_outcome", "r-2", "ShopSaga", "skipped", False
    )


# --------------------------------------------------------------------------- LoggingListener


async def test_logging_listener_logs_the_new_hooks(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    listener = LoggingListener()
    saga = declare(
        Probe("Reserve", [], comp_error=lambda: Boom("stock api 503"), comp_fail_times=1),
        Probe("Charge", [], error=Boom),
    )(listeners=[listener], compensation_retry=FAST)
    db = tmp_path / "s.db"
    await _crashed(db, "log-r")

    with caplog.at_level(logging.DEBUG, logger="fallback_saga"):
        with pytest.raises(SagaFailed):
            await saga.run(OrderCtx(), saga_id="log-1")
        async with SQLiteSagaStore(db) as store:
            recovered = ShopSaga(store=store, listeners=[listener])
            await recover(store, [recovered], older_than=0, listeners=[listener])
            listener.saga_interrupted("log-2", "TestSaga", SagaStatus.RUNNING,
                                      RuntimeError("disk full"))

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "saga log-1 compensate Reserve attempt 1 failed: Boom: stock api 503" in text
    assert "saga ShopSaga log-r resumed from its journal" in text
    assert text.count("recovery: saga ShopSaga log-r completed") == 1
    assert ("saga TestSaga log-2 stopped without a final status, left for recovery; "
            "the journal says running (RuntimeError: disk full)") in text


async def test_S13_a_log_line_never_states_a_status_the_journal_may_not_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The run's final write landed, then its answer was lost and the store
    went down: the journal says COMPLETED. ``LoggingListener`` must not log
    "the journal says running" alone."""
    inner = MemorySagaStore()
    store = FaultyStore(inner, at=2, kind="in_doubt_outage")
    saga = declare(Probe("Reserve", []), Probe("Charge", []))(
        store=store, listeners=[LoggingListener()], journal_retry=FAST_JOURNAL_RETRY,
    )
    with caplog.at_level(logging.WARNING, logger="fallback_saga"), pytest.raises(
        SagaInterrupted
    ):
        await saga.run(OrderCtx(), saga_id="doubt")
    assert (await inner.load("doubt")).status is SagaStatus.COMPLETED
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert ("the journal says running (or completed, if its last write landed unseen)"
            in text), text


async def test_S13_a_run_refused_for_a_taken_id_is_not_logged_as_left_for_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A durable store refuses a taken saga id at the run's first write: the
    run is told interrupted with nothing journaled. The other saga, with
    that id, is none of this run's: nothing is left for recovery."""
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        saga = declare(Probe("Reserve", []))(store=store, listeners=[LoggingListener()])
        await saga.run(OrderCtx(), saga_id="taken")
        with caplog.at_level(logging.WARNING, logger="fallback_saga"), pytest.raises(
            SagaAlreadyExists
        ):
            await saga.run(OrderCtx(), saga_id="taken")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "saga TestSaga taken refused by the store before any step ran" in text, text
    assert "left for recovery" not in text, text


class FallbackOnly:
    """Listens to the fallback and failure hooks only: the run keeps its
    inlined path for plain steps (no step_started/completed/call hooks)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def step_failed(self, saga_id: str, step_name: str, error: BaseException) -> None:
        self.events.append(("step_failed", step_name, _name(error)))

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self.events.append(("fallback_taken", primary, fallback, _name(error)))


async def test_fallback_hooks_are_told_on_the_inlined_path_too() -> None:
    trace: list[tuple[str, str]] = []
    saga_cls = declare(
        Probe("A", trace),
        Fallback(step=Probe("B", trace, error=Boom), fallback=Probe("E", trace)),
        Fallback(step=Probe("C", trace, error=Boom), fallback=Probe("D", trace, error=ValueError)),
    )
    listener = FallbackOnly()
    saga = saga_cls(listeners=[listener])
    with pytest.raises(SagaFailed) as caught:
        await saga.run(OrderCtx())
    assert listener.events == [
        ("step_failed", "B", "Boom"),
        ("fallback_taken", "B", "E", "Boom"),
        ("step_failed", "C", "Boom"),
        ("fallback_taken", "C", "D", "Boom"),
        ("step_failed", "D", "ValueError"),
    ]
    # S4: the fallback's error carries the primary's.
    assert isinstance(caught.value.error, ValueError)
    assert isinstance(caught.value.error.__cause__ or caught.value.error.__context__, Boom)
    assert trace == [("act", "A"), ("act", "B"), ("act", "E"), ("act", "C"), ("act", "D"),
                     ("compensate", "E"), ("compensate", "A")]


# --------------------------------------------------------------------------- cancelled at the end


@pytest.mark.parametrize("submitting", [False, True], ids=["awaited", "submitted"])
@pytest.mark.parametrize(
    ("kind", "journal", "last"),
    [
        # The completion lands: the saga is COMPLETED, though its caller was cancelled.
        ("cancel", "completed", ("saga_finished", "completed")),
        # The completion is refused for good: the saga is left for recovery.
        ("cancel_outage", "running", ("saga_interrupted", "running")),
    ],
)
async def test_a_caller_cancelled_while_the_completion_is_written_hears_how_the_saga_ended(
    tmp_path: Path, submitting: bool, kind: str, journal: str, last: Event
) -> None:
    """The cancellation lands while the saga's last write (its COMPLETED
    status) is in flight: the write finishes first, the caller gets
    ``CancelledError`` — and every ``saga_started`` still has its one
    ``saga_finished`` or ``saga_interrupted``, saying what the journal holds.

    (A write refused at once, whose retries all fail at once, is settled
    without the caller's task waiting at all where tasks start eagerly
    (3.12+): the cancellation never reaches it, and the caller gets the
    ``SagaInterrupted`` a caller not cancelled gets — told to the listeners
    the same way.)"""
    recorder = Recorder()
    async with SQLiteSagaStore(tmp_path / "s.db") as inner:
        faulty = (FaultySubmittingStore if submitting else FaultyStore)(
            inner, at=2, kind=kind  # type: ignore[arg-type]
        )
        saga = declare(Probe("A", []), Probe("B", []))(
            store=faulty, listeners=[recorder],
            journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
        )
        task = asyncio.create_task(saga.run(OrderCtx(), saga_id="late"))
        faulty.victim = task
        expected: Any = asyncio.CancelledError if kind == "cancel" else (
            asyncio.CancelledError, SagaInterrupted
        )
        with pytest.raises(expected) as raised:
            await task
        assert (await inner.load("late")).status.value == journal

    end = (*last, type(raised.value).__name__)
    ends = [e for e in recorder.events if e[0] in ("saga_finished", "saga_interrupted")]
    assert ends == [end]
    assert recorder.events[-1] == end
