"""The saga side of the contract (DESIGN.md section 3): one test per rule,
named after it. S9 (the breaker itself) lives in test_breaker*.py; S11 in
test_definition.py."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
from typing import Any

import pytest
from helpers_saga import (
    Blocker,
    Boom,
    JsonStore,
    OrderCtx,
    Probe,
    SleepRecorder,
    Trace,
    acted,
    compensated,
    declare,
    error_chain,
    reached,
    wreck_context,
)

from fallback_saga import (
    CircuitBreaker,
    CircuitState,
    ContextSerializationError,
    Fallback,
    MemorySagaStore,
    RetryPolicy,
    SagaContext,
    SagaError,
    SagaFailed,
    SagaListener,
    SagaResult,
    SagaStatus,
    SagaStepResult,
    SagaStore,
    StepStatus,
)


class Halt(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt)."""


class CompensationEar(SagaListener):
    """Hears compensations starting and completing."""

    def __init__(self, heard: list[str]) -> None:
        self.heard = heard

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.heard.append(f"started {step} {attempt}")

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self.heard.append(f"completed {step}")


@pytest.fixture(params=["memory", "write-ahead"])
def store(request: pytest.FixtureRequest) -> SagaStore:
    """The rules hold for the in-process store and for a write-ahead (durable) one."""
    return MemorySagaStore() if request.param == "memory" else JsonStore()


# --------------------------------------------------------------------------- S1


async def test_S1_snapshot_is_deep_nested_list_dict_dataclass() -> None:
    trace: Trace = []
    ctx = OrderCtx()
    before = copy.deepcopy(ctx)
    primary = Probe("Primary", trace, error=Boom, mutate=wreck_context)
    fallback = Probe("Backup", trace, observe=copy.deepcopy)
    saga = declare(Fallback(step=primary, fallback=fallback))()

    result = await saga.run(ctx)

    assert primary.acts == 1
    assert fallback.seen == [before]
    assert result.context == before


async def test_S1_snapshot_is_taken_right_before_the_primary() -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"
        ctx.items.append("banana")

    first = Probe("Reserve", trace, mutate=reserve)
    primary = Probe("Primary", trace, error=Boom, mutate=wreck_context)
    fallback = Probe("Backup", trace, observe=copy.deepcopy)
    saga = declare(first, Fallback(step=primary, fallback=fallback))()

    await saga.run(OrderCtx())

    expected = OrderCtx(items=["apple", "banana"], reservation="r-1")
    assert fallback.seen == [expected]


# --------------------------------------------------------------------------- S2


async def test_S2_restore_keeps_object_identity() -> None:
    trace: Trace = []
    ctx = OrderCtx()

    def rebind_everything(c: OrderCtx) -> None:
        c.items = ["replaced"]
        c.meta = {}
        c.reservation = "primary"
        c.extra_attribute = True  # type: ignore[attr-defined]

    primary = Probe("Primary", trace, error=Boom, mutate=rebind_everything)
    fallback = Probe("Backup", trace, observe=lambda c: c is ctx)
    saga = declare(Fallback(step=primary, fallback=fallback))()

    result = await saga.run(ctx)

    assert fallback.seen == [True]
    assert result.context is ctx
    # The caller's own reference sees the restored state.
    assert ctx.items == ["apple"]
    assert ctx.meta == {"tags": ["a"], "n": 1}
    assert ctx.reservation is None
    assert not hasattr(ctx, "extra_attribute")


async def test_S2_failed_plain_step_leaves_context_unchanged() -> None:
    trace: Trace = []

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    seen_by_compensation: list[OrderCtx] = []

    class Reserve:
        name = "Reserve"

        async def act(self, ctx: OrderCtx) -> str:
            reserve(ctx)
            return "ok"

        async def compensate(self, ctx: OrderCtx) -> None:
            seen_by_compensation.append(copy.deepcopy(ctx))

    failing = Probe("Charge", trace, error=Boom, mutate=wreck_context)
    saga = declare(Reserve(), failing)()
    ctx = OrderCtx()

    with pytest.raises(SagaFailed):
        await saga.run(ctx)

    after_first_step = OrderCtx(reservation="r-1")
    assert seen_by_compensation == [after_first_step]
    assert ctx == after_first_step


async def test_S2_failed_step_restores_a_context_with_slots() -> None:
    @dataclasses.dataclass(slots=True)
    class SlotCtx(SagaContext):
        order_id: str
        lines: list[int]

    trace: Trace = []

    def mutate(ctx: SlotCtx) -> None:
        ctx.lines.append(99)
        ctx.order_id = "changed"

    primary = Probe("Primary", trace, error=Boom, mutate=mutate)
    fallback = Probe("Backup", trace, observe=copy.deepcopy)
    saga = declare(Fallback(step=primary, fallback=fallback), context=SlotCtx)()
    ctx = SlotCtx("o-1", [1, 2])

    result = await saga.run(ctx)

    assert fallback.seen == [SlotCtx("o-1", [1, 2])]
    assert result.context is ctx


# --------------------------------------------------------------------------- S3


def filtered_saga(trace: Trace, raised: type[Exception]) -> tuple[Any, Probe]:
    primary = Probe("Primary", trace, error=raised)
    fallback = Probe("Backup", trace)
    rule = Fallback(
        step=primary, fallback=fallback, failure_exceptions=(ConnectionError, TimeoutError)
    )
    return declare(rule)(), fallback


@pytest.mark.parametrize(
    "raised",
    [ConnectionError, ConnectionRefusedError, TimeoutError],  # listed types and subclasses
)
async def test_S3_failure_exceptions_filter(raised: type[Exception]) -> None:
    trace: Trace = []
    saga, fallback = filtered_saga(trace, raised)

    result = await saga.run(OrderCtx())

    assert [r.step_name for r in result.results] == ["Backup"]
    assert fallback.acts == 1


@pytest.mark.parametrize("raised", [ValueError, KeyError, Boom])
async def test_S3_failure_exceptions_filter_other_errors_fail_the_step(
    raised: type[Exception],
) -> None:
    trace: Trace = []
    saga, fallback = filtered_saga(trace, raised)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert type(info.value.error) is raised
    assert info.value.failed_step == "Primary"
    assert fallback.acts == 0


@pytest.mark.parametrize(
    "raised", [ValueError, KeyError, RuntimeError, AttributeError, TimeoutError, Boom]
)
async def test_S3_empty_failure_exceptions_means_any_exception(raised: type[Exception]) -> None:
    trace: Trace = []
    primary = Probe("Primary", trace, error=raised)
    fallback = Probe("Backup", trace)
    saga = declare(Fallback(step=primary, fallback=fallback, failure_exceptions=()))()

    result = await saga.run(OrderCtx())

    assert acted(trace) == ["Primary", "Backup"]
    assert result.results[0].step_name == "Backup"


@pytest.mark.parametrize("failure_exceptions", [(), (KeyError,)])
async def test_S3_open_circuit_always_falls_back_primary_not_called(
    failure_exceptions: tuple[type[Exception], ...],
) -> None:
    trace: Trace = []
    breaker = CircuitBreaker(name="inventory")
    breaker.open()
    primary = Probe("Primary", trace)
    fallback = Probe("Backup", trace)
    saga = declare(
        Fallback(
            step=primary,
            fallback=fallback,
            failure_exceptions=failure_exceptions,
            circuit_breaker=breaker,
        )
    )()

    result = await saga.run(OrderCtx())

    assert primary.acts == 0
    assert acted(trace) == ["Backup"]
    assert result.results[0].step_name == "Backup"
    assert breaker.state is CircuitState.OPEN


async def test_S3_open_circuit_of_a_plugged_in_breaker_always_falls_back() -> None:
    class Rejected(Exception):
        pass

    class AlwaysOpen:
        """Another library's breaker, adapted to CircuitBreakerProtocol."""

        async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            raise Rejected("open")

        def is_open_error(self, error: BaseException) -> bool:
            return isinstance(error, Rejected)

    trace: Trace = []
    primary = Probe("Primary", trace)
    fallback = Probe("Backup", trace)
    saga = declare(
        Fallback(
            step=primary,
            fallback=fallback,
            failure_exceptions=(KeyError,),  # Rejected is not listed
            circuit_breaker=AlwaysOpen(),
        )
    )()

    result = await saga.run(OrderCtx())

    assert primary.acts == 0
    assert result.results[0].step_name == "Backup"


async def test_S3_cancellation_never_triggers_fallback() -> None:
    trace: Trace = []
    primary = Blocker("Primary", trace)
    fallback = Probe("Backup", trace)
    saga = declare(Fallback(step=primary, fallback=fallback))()

    task = asyncio.create_task(saga.run(OrderCtx()))
    await reached(primary.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert primary.cancelled
    assert fallback.acts == 0


async def test_S3_base_exception_never_triggers_fallback() -> None:
    trace: Trace = []
    primary = Probe("Primary", trace, error=Halt)
    fallback = Probe("Backup", trace)
    saga = declare(Fallback(step=primary, fallback=fallback))()

    with pytest.raises(Halt):
        await saga.run(OrderCtx())

    assert fallback.acts == 0


def test_S3_rule_never_falls_back_on_base_exceptions() -> None:
    rule = Fallback(step=Probe("P", []), fallback=Probe("F", []), circuit_breaker=CircuitBreaker())
    assert rule.should_fall_back(ValueError())
    assert not rule.should_fall_back(KeyboardInterrupt())
    assert not rule.should_fall_back(asyncio.CancelledError())
    assert not rule.should_fall_back(SystemExit())


# --------------------------------------------------------------------------- S4


async def test_S4_fallback_failure_unwinds_keeps_both_errors_and_journals_both_names(
    store: SagaStore,
) -> None:
    trace: Trace = []
    first = Probe("Reserve", trace)
    primary = Probe("Charge", trace, error=lambda: Boom("primary down"))
    fallback = Probe("ChargeBackup", trace, error=lambda: RuntimeError("backup down"))
    saga = declare(first, Fallback(step=primary, fallback=fallback))(store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx(), saga_id="s4")

    failed = info.value
    assert isinstance(failed.error, RuntimeError)
    assert str(failed.error) == "backup down"
    primaries = [e for e in error_chain(failed.error) if isinstance(e, Boom)]
    assert [str(e) for e in primaries] == ["primary down"]
    assert failed.status is SagaStatus.COMPENSATED
    assert failed.failed_step in {"Charge", "ChargeBackup"}
    assert compensated(trace) == ["Reserve"]

    record = await saga.store.load("s4")
    failures = {e.step: e.error for e in record.history if e.status is StepStatus.FAILED}
    assert set(failures) == {"Charge", "ChargeBackup"}
    assert "primary down" in failures["Charge"]
    assert "backup down" in failures["ChargeBackup"]
    assert record.status is SagaStatus.COMPENSATED


# --------------------------------------------------------------------------- S5


@pytest.mark.parametrize("primary_fails", [False, True])
async def test_S5_only_the_branch_that_ran_is_compensated(
    primary_fails: bool, store: SagaStore
) -> None:
    trace: Trace = []
    primary = Probe("Primary", trace, error=Boom if primary_fails else None)
    fallback = Probe("Backup", trace)
    late = Probe("Late", trace, error=Boom)
    saga = declare(Fallback(step=primary, fallback=fallback), late)(store=store)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx())

    assert compensated(trace) == (["Backup"] if primary_fails else ["Primary"])
    assert primary.compensations + fallback.compensations == 1
    assert late.compensations == 0


async def test_S5_unwinding_is_strictly_lifo(store: SagaStore) -> None:
    trace: Trace = []
    steps = [
        Probe("A", trace),
        Probe("B", trace),
        Fallback(step=Probe("P", trace, error=Boom), fallback=Probe("F", trace)),
        Probe("C", trace),
        Probe("D", trace, error=Boom),
    ]
    saga = declare(*steps)(store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx(), saga_id="lifo")

    assert acted(trace) == ["A", "B", "P", "F", "C", "D"]
    assert compensated(trace) == ["C", "F", "B", "A"]
    assert info.value.status is SagaStatus.COMPENSATED
    record = await saga.store.load("lifo")
    journal_order = [
        e.step
        for e in record.history
        if e.action == "compensate" and e.status is StepStatus.COMPLETED
    ]
    assert journal_order == ["C", "F", "B", "A"]


# --------------------------------------------------------------------------- S6


async def test_S6_compensation_retried_then_failed_continues_and_ends_FAILED(
    store: SagaStore,
) -> None:
    trace: Trace = []
    sleeps = SleepRecorder()
    a = Probe("A", trace)
    b = Probe("B", trace, comp_error=lambda: Boom("cannot undo B"))
    c = Probe("C", trace, error=Boom)
    policy = RetryPolicy(
        attempts=3, delay=0.5, backoff=2.0, max_delay=5.0, jitter=0.0, sleep=sleeps
    )
    saga = declare(a, b, c)(compensation_retry=policy, store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx(), saga_id="s6")

    assert compensated(trace) == ["B", "B", "B", "A"]
    assert sleeps.delays == [0.5, 1.0]
    failed = info.value
    assert failed.status is SagaStatus.FAILED
    assert list(failed.compensation_errors) == ["B"]
    assert str(failed.compensation_errors["B"]) == "cannot undo B"
    record = await saga.store.load("s6")
    assert record.status is SagaStatus.FAILED
    b_rows = [
        (e.status, e.attempt) for e in record.history if e.step == "B" and e.action == "compensate"
    ]
    assert b_rows == [
        (StepStatus.STARTED, 1),
        (StepStatus.FAILED, 1),
        (StepStatus.STARTED, 2),
        (StepStatus.FAILED, 2),
        (StepStatus.STARTED, 3),
        (StepStatus.FAILED, 3),
    ]
    a_rows = [e.status for e in record.history if e.step == "A" and e.action == "compensate"]
    assert a_rows == [StepStatus.STARTED, StepStatus.COMPLETED]


async def test_S6_compensation_that_recovers_on_retry_ends_COMPENSATED() -> None:
    trace: Trace = []
    a = Probe("A", trace, comp_error=Boom, comp_fail_times=2)
    b = Probe("B", trace, error=Boom)
    saga = declare(a, b)()  # the default compensation policy: 3 attempts

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert compensated(trace) == ["A", "A", "A"]
    assert info.value.status is SagaStatus.COMPENSATED
    assert info.value.compensation_errors == {}


async def test_S6_single_attempt_policy_does_not_retry() -> None:
    trace: Trace = []
    a = Probe("A", trace, comp_error=Boom)
    b = Probe("B", trace, error=Boom)
    saga = declare(a, b)(compensation_retry=RetryPolicy(attempts=1))

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert compensated(trace) == ["A"]
    assert info.value.status is SagaStatus.FAILED


@pytest.mark.parametrize("attempts", [0, -1, -100])
def test_S6_attempts_below_one_is_value_error(attempts: int) -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=attempts)


def test_S6_backoff_is_exponential_capped_and_jittered() -> None:
    exact = RetryPolicy(attempts=6, delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.0)
    assert [exact.delay_before(n) for n in range(2, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0]

    jittered = RetryPolicy(attempts=6, delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.5)
    for _ in range(50):
        waits = [jittered.delay_before(n) for n in range(2, 7)]
        for wait, base in zip(waits, [1.0, 2.0, 4.0, 5.0, 5.0], strict=True):
            assert base <= wait <= min(5.0, base + 0.5)


@pytest.mark.parametrize("backoff", [2.0, 10.0])
def test_S6_a_zero_delay_keeps_its_zero_wait_past_a_backoff_float_overflow(
    backoff: float,
) -> None:
    """``delay * backoff**(n-1)`` with ``delay=0`` is 0 at every try; past the
    float range of ``backoff**(n-1)`` (try 1,026 at 2.0, 310 at 10.0) the wait
    was the cap, ``max_delay``, on every later try."""
    late = range(1_000, 1_200) if backoff == 2.0 else range(300, 400)
    exact = RetryPolicy(attempts=2_000, delay=0.0, backoff=backoff, jitter=0.0)
    assert {exact.delay_before(n) for n in late} == {0.0}

    jittered = RetryPolicy(attempts=2_000, delay=0.0, backoff=backoff, jitter=0.25)
    assert all(0.0 <= jittered.delay_before(n) <= 0.25 for n in late)

    # With a delay, the overflow is far past the cap: the cap it is.
    capped = RetryPolicy(attempts=2_000, delay=0.1, backoff=backoff, max_delay=5.0, jitter=0.0)
    assert {capped.delay_before(n) for n in late} == {5.0}


async def test_S6_a_compensation_retried_thousands_of_times_never_waits_with_zero_delay() -> None:
    trace: Trace = []
    tries = 1_100  # the 1,026th try is past 2.0**1023, the largest power of 2 a float holds
    a = Probe("A", trace, comp_error=Boom, comp_fail_times=tries - 1)
    b = Probe("B", trace, error=Boom)
    sleeps = SleepRecorder()
    policy = RetryPolicy(attempts=tries, delay=0.0, jitter=0.0, sleep=sleeps)
    saga = declare(a, b)(compensation_retry=policy)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert info.value.status is SagaStatus.COMPENSATED
    assert compensated(trace) == ["A"] * tries
    assert sleeps.delays == [0.0] * (tries - 1)


def test_S6_cancellation_is_never_retried() -> None:
    policy = RetryPolicy(attempts=5)
    assert not policy.should_retry(asyncio.CancelledError(), 1)
    assert policy.should_retry(Boom(), 1)
    assert not policy.should_retry(Boom(), 5)


async def test_S6_a_compensation_that_raises_cancellation_itself_failed_and_is_not_retried(
    store: SagaStore,
) -> None:
    """Only the compensation can raise CancelledError inside the shielded
    unwinding: it failed (never retried), and the rest of the stack is still
    undone. The same on every store."""
    trace: Trace = []
    sleeps = SleepRecorder()
    a = Probe("A", trace)
    b = Probe("B", trace, comp_error=asyncio.CancelledError)
    c = Probe("C", trace, error=Boom)
    policy = RetryPolicy(attempts=3, jitter=0.0, sleep=sleeps)
    saga = declare(a, b, c)(compensation_retry=policy, store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx(), saga_id="s6-cancelled")

    assert compensated(trace) == ["B", "A"]
    assert sleeps.delays == []
    assert info.value.status is SagaStatus.FAILED
    assert isinstance(info.value.compensation_errors["B"], asyncio.CancelledError)
    record = await saga.store.load("s6-cancelled")
    assert record.status is SagaStatus.FAILED
    rows = [(e.step, e.status, e.attempt) for e in record.history if e.action == "compensate"]
    assert rows == [
        ("B", StepStatus.STARTED, 1),
        ("B", StepStatus.FAILED, 1),
        ("A", StepStatus.STARTED, 1),
        ("A", StepStatus.COMPLETED, 1),
    ]


async def test_S6_the_error_a_compensation_failed_with_is_its_last_attempt_alone(
    store: SagaStore,
) -> None:
    """What ``compensation_errors`` holds is the last attempt's error as that
    attempt raised it: not chained to the attempts before it (each is only
    journaled), so a report shows one failure, not the whole retry history."""
    trace: Trace = []
    raised: list[Boom] = []

    def next_error() -> Boom:
        raised.append(Boom(f"attempt {len(raised) + 1}"))
        return raised[-1]

    a = Probe("A", trace, comp_error=next_error)
    b = Probe("B", trace, error=Boom)
    policy = RetryPolicy(attempts=3, jitter=0.0, sleep=SleepRecorder())
    saga = declare(a, b)(compensation_retry=policy, store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    final = info.value.compensation_errors["A"]
    assert final is raised[-1]
    assert str(final) == "attempt 3"
    assert final.__cause__ is None
    # Its implicit chain holds no earlier attempt. (On 3.12+, where the
    # unwinding's task starts eagerly while the step's failure is being
    # handled, that failure may be its __context__: it is not an attempt.)
    chain = []
    link = final.__context__
    while link is not None:
        chain.append(link)
        link = link.__context__
    assert not [error for error in chain if error in raised[:-1]]


async def test_S6_a_compensation_retried_on_the_default_store_journals_every_attempt(
    store: SagaStore,
) -> None:
    """The first attempt and the retries after it are journaled alike,
    whether or not a listener watches compensations (a listener must not
    change what the journal holds)."""
    for listening in (False, True):
        trace: Trace = []
        sleeps = SleepRecorder()
        a = Probe("A", trace, comp_error=Boom, comp_fail_times=1)
        b = Probe("B", trace, error=Boom)
        policy = RetryPolicy(attempts=3, delay=0.25, jitter=0.0, sleep=sleeps)
        heard: list[str] = []
        listeners = [CompensationEar(heard)] if listening else []
        saga = declare(a, b)(
            compensation_retry=policy, store=store, listeners=listeners
        )
        saga_id = f"s6-retried-{listening}"
        with pytest.raises(SagaFailed) as info:
            await saga.run(OrderCtx(), saga_id=saga_id)
        assert info.value.status is SagaStatus.COMPENSATED
        assert compensated(trace) == ["A", "A"]
        assert sleeps.delays == [0.25]
        record = await saga.store.load(saga_id)
        rows = [(e.status, e.attempt) for e in record.history if e.action == "compensate"]
        assert rows == [
            (StepStatus.STARTED, 1),
            (StepStatus.FAILED, 1),
            (StepStatus.STARTED, 2),
            (StepStatus.COMPLETED, 2),
        ]
        assert heard == (["started A 1", "started A 2", "completed A"] if listening else [])


# --------------------------------------------------------------------------- S7


async def test_S7_run_returns_result(store: SagaStore) -> None:
    trace: Trace = []
    a = Probe("A", trace, response={"a": 1})
    fallback = Fallback(step=Probe("P", trace, error=Boom), fallback=Probe("F", trace))
    saga = declare(a, fallback)(store=store)
    ctx = OrderCtx()

    result = await saga.run(ctx, saga_id="order-7")

    assert isinstance(result, SagaResult)
    assert result.saga_id == "order-7"
    assert result.status is SagaStatus.COMPLETED
    assert result.context is ctx
    assert result.results == [
        SagaStepResult(response={"a": 1}, step_name="A", saga_id="order-7"),
        SagaStepResult(response="F-response", step_name="F", saga_id="order-7"),
    ]
    assert (await saga.store.load("order-7")).status is SagaStatus.COMPLETED


async def test_S7_generated_saga_ids_are_unique_text() -> None:
    saga = declare(Probe("A", []))()
    first = await saga.run(OrderCtx())
    second = await saga.run(OrderCtx())
    assert isinstance(first.saga_id, str)
    assert first.saga_id
    assert first.saga_id != second.saga_id


def test_S7_generated_saga_ids_are_uuid_shaped_and_a_forked_child_draws_its_own() -> None:
    import subprocess
    import sys
    import uuid

    from fallback_saga.executor import new_saga_id

    ids = [new_saga_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for saga_id in ids[:3] + ids[-3:]:
        assert str(uuid.UUID(saga_id)) == saga_id  # 8-4-4-4-12 lowercase hex
    # A forked worker must not repeat its parent's ids. Forked from a fresh,
    # single-threaded interpreter (this test process has threads of its own).
    script = (
        "import os\n"
        "from fallback_saga.executor import new_saga_id\n"
        "before = new_saga_id()\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(write, new_saga_id().encode())\n"
        "    os._exit(0)\n"
        "os.close(write)\n"
        "os.waitpid(pid, 0)\n"
        "print(before, os.read(read, 100).decode(), new_saga_id())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    parent_before, child, parent_after = out
    for saga_id in out:
        assert str(uuid.UUID(saga_id)) == saga_id
    assert child.rsplit("-", 1)[0] != parent_before.rsplit("-", 1)[0]  # fresh random bits
    assert parent_after.rsplit("-", 1)[0] == parent_before.rsplit("-", 1)[0]


async def test_S7_saga_failed_carries_id_step_error_cause_status_comp_errors(
    store: SagaStore,
) -> None:
    trace: Trace = []
    charge_error = Boom("card declined")
    undo_error = RuntimeError("cannot release")
    reserve = Probe("Reserve", trace, comp_error=lambda: undo_error)
    ship = Probe("Ship", trace)
    charge = Probe("Charge", trace, error=lambda: charge_error)
    saga = declare(reserve, ship, charge)(compensation_retry=RetryPolicy(attempts=2), store=store)

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx(), saga_id="order-8")

    failed = info.value
    assert isinstance(failed, SagaError)
    assert failed.saga_id == "order-8"
    assert failed.failed_step == "Charge"
    assert failed.error is charge_error
    assert failed.__cause__ is charge_error
    assert failed.status is SagaStatus.FAILED
    assert failed.compensation_errors == {"Reserve": undo_error}
    assert compensated(trace) == ["Ship", "Reserve", "Reserve"]


async def test_S7_saga_failed_is_raised_only_after_unwinding() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace), Probe("B", trace, error=Boom))()

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert info.value.status is SagaStatus.COMPENSATED
    assert info.value.compensation_errors == {}
    assert compensated(trace) == ["A"]


# --------------------------------------------------------------------------- S8


async def test_S8_cancel_mid_step_compensates_completed_then_reraises(store: SagaStore) -> None:
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    late = Probe("Never", trace)
    saga = declare(Probe("A", trace), Probe("B", trace), blocker, late)(store=store)

    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="s8"))
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert compensated(trace) == ["B", "A"]
    assert late.acts == 0
    assert (await saga.store.load("s8")).status is SagaStatus.COMPENSATED


class SlowUndo:
    """A step whose compensate signals ``undo_started`` and waits for ``gate``."""

    name = "SlowUndo"

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.undo_started = asyncio.Event()
        self.gate = asyncio.Event()
        self.calls = 0
        self.interrupted = 0

    async def act(self, ctx: Any) -> str:
        return "ok"

    async def compensate(self, ctx: Any) -> None:
        self.calls += 1
        self.undo_started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.interrupted += 1
            raise
        self.trace.append(("compensate", self.name))


async def _cancel_twice(saga: Any, slow: SlowUndo, blocker: Blocker) -> asyncio.Task[Any]:
    """Start ``saga``, cancel it mid-step, cancel it again while ``slow`` compensates."""
    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="s8b"))
    await reached(blocker.started)
    task.cancel()
    await reached(slow.undo_started)
    task.cancel()  # the caller gives up again while the unwinding is under way
    slow.gate.set()
    return task


async def test_S8_cancel_again_during_compensation_compensation_still_finishes(
    store: SagaStore,
) -> None:
    trace: Trace = []
    slow = SlowUndo(trace)
    blocker = Blocker("Wait", trace)
    saga = declare(Probe("First", trace), slow, blocker)(store=store)

    task = await _cancel_twice(saga, slow, blocker)
    with pytest.raises(asyncio.CancelledError):
        await task

    assert compensated(trace) == ["SlowUndo", "First"]
    assert (await saga.store.load("s8b")).status is SagaStatus.COMPENSATED


async def test_S8_compensation_is_shielded_from_a_second_cancellation() -> None:
    """DESIGN S8: completed steps are compensated *shielded from the
    cancellation* -- a compensate call in progress is not interrupted."""
    trace: Trace = []
    slow = SlowUndo(trace)
    blocker = Blocker("Wait", trace)
    saga = declare(Probe("First", trace), slow, blocker)()

    task = await _cancel_twice(saga, slow, blocker)
    with pytest.raises(asyncio.CancelledError):
        await task

    assert slow.interrupted == 0
    assert slow.calls == 1


class CancelsItsCaller:
    """A step whose compensate cancels the saga's task the moment the
    unwinding starts, then waits on the loop twice before it finishes."""

    name = "CancelsItsCaller"

    def __init__(self, trace: Trace, caller: dict[str, asyncio.Task[Any]]) -> None:
        self.trace = trace
        self.caller = caller
        self.interrupted = 0

    async def act(self, ctx: Any) -> str:
        return "ok"

    async def compensate(self, ctx: Any) -> None:
        self.caller["task"].cancel()
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.interrupted += 1
            raise
        self.trace.append(("compensate", self.name))


async def test_S8_a_cancellation_as_the_unwinding_starts_interrupts_no_compensation() -> None:
    # The caller is cancelled while it hands the unwinding to its own task
    # (before that task has run a line on 3.11, inside its first step on
    # 3.12+): every compensation still runs to its end, and the caller hears
    # of the cancellation only once they have.
    trace: Trace = []
    caller: dict[str, asyncio.Task[Any]] = {}
    undo = CancelsItsCaller(trace, caller)
    saga = declare(Probe("First", trace), undo, Probe("Fails", trace, error=Boom))()

    compensated_when_run_ended: list[str] = []

    async def drive() -> Any:
        try:
            return await saga.run(OrderCtx(), saga_id="s8c")
        finally:
            compensated_when_run_ended.extend(compensated(trace))
            await asyncio.sleep(0)  # where a cancellation not delivered yet lands

    task = caller["task"] = asyncio.create_task(drive())
    with pytest.raises(asyncio.CancelledError):
        await task

    assert undo.interrupted == 0
    assert compensated_when_run_ended == ["CancelsItsCaller", "First"]
    assert (await saga.store.load("s8c")).status is SagaStatus.COMPENSATED


class ProcessDies(BaseException):
    """What a compensation may let out that no saga handles (as SystemExit)."""


class DiesInItsUndo:
    """A step whose compensate waits until ``go`` is set, then lets a
    BaseException out."""

    name = "DiesInItsUndo"

    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self.go = asyncio.Event()

    async def act(self, ctx: Any) -> str:
        return "ok"

    async def compensate(self, ctx: Any) -> None:
        self.inside.set()
        await self.go.wait()
        raise ProcessDies("in the undo")


async def test_S8_a_base_exception_out_of_a_shielded_unwinding_reaches_the_caller() -> None:
    """The caller is cancelled mid-step, and again while the unwinding runs;
    a compensation then lets a ``BaseException`` out (SystemExit, say). That
    is what the caller gets — not a ``CancelledError`` that hides it, leaving
    it for asyncio to log as "Task exception was never retrieved"."""
    import gc

    trace: Trace = []
    blocker = Blocker("Wait", trace)
    undo = DiesInItsUndo()
    saga = declare(undo, blocker)()
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        task = asyncio.create_task(saga.run(OrderCtx(), saga_id="s8d"))
        await reached(blocker.started)
        task.cancel()
        await reached(undo.inside)
        task.cancel()  # while the shielded unwinding runs
        undo.go.set()
        with pytest.raises(ProcessDies):
            await task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


# --------------------------------------------------------------------------- S12


@dataclasses.dataclass
class LooseCtx(SagaContext):
    order_id: str
    payload: Any = None


@dataclasses.dataclass
class Inner:
    label: str
    when: Any = None


@dataclasses.dataclass
class NestedCtx(SagaContext):
    inner: Inner


@pytest.mark.parametrize(
    ("context", "path_pattern"),
    [
        (LooseCtx("o-1", {"lines": [1, object()]}), r"payload.*lines.*1"),
        (LooseCtx("o-1", float("nan")), r"payload"),
        (NestedCtx(Inner("x", when=complex(1, float("nan")))), r"inner.*when"),
    ],
)
async def test_S12_non_serializable_context_refused_before_first_step(
    context: SagaContext, path_pattern: str
) -> None:
    trace: Trace = []
    store = JsonStore()  # a store that must serialize (a durable one)
    saga = declare(Probe("First", trace), context=type(context))(store=store)

    with pytest.raises(ContextSerializationError) as info:
        await saga.run(context)

    assert re.search(path_pattern, str(info.value))
    assert re.search(path_pattern, info.value.path)
    assert trace == []
    assert store.rows == {}


async def test_S12_non_serializable_context_refused_by_transaction_too() -> None:
    trace: Trace = []
    store = JsonStore()
    saga = declare(Probe("First", trace), context=LooseCtx)(store=store)

    async def drive() -> None:
        async with saga.transaction(LooseCtx("o-1", {complex(0, float("inf")): "x"})) as tx:
            async for _ in tx:
                pass

    with pytest.raises(ContextSerializationError, match="payload"):
        await drive()
    assert trace == []
    assert store.rows == {}


# --------------------------------------------------------------------------- S10 (write-ahead)


async def test_S10_step_intent_is_journaled_before_the_step_runs() -> None:
    store = JsonStore()
    seen: list[list[tuple[str, str, StepStatus]]] = []

    class Inspect:
        def __init__(self, name: str) -> None:
            self.name = name

        async def act(self, ctx: OrderCtx) -> str:
            record = await store.load("wa")
            seen.append([(e.step, e.action, e.status) for e in record.history])
            ctx.items.append(self.name)
            return "ok"

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    saga = declare(Inspect("A"), Inspect("B"))(store=store)
    await saga.run(OrderCtx(), saga_id="wa")

    assert seen[0] == [("A", "act", StepStatus.STARTED)]
    assert seen[1] == [
        ("A", "act", StepStatus.STARTED),
        ("A", "act", StepStatus.COMPLETED),
        ("B", "act", StepStatus.STARTED),
    ]
    record = await store.load("wa")
    assert record.status is SagaStatus.COMPLETED
    assert record.context["items"] == ["apple", "A", "B"]


@dataclasses.dataclass
class FlatCtx(SagaContext):
    """A flat context (immutable values only): its step snapshot is its
    ``__dict__`` copied, the executor's cheapest kind."""

    order_id: str = "o-1"
    amount: int = 10
    note: str | None = None


async def test_S2_a_flat_context_is_restored_before_every_try_and_the_fallback() -> None:
    trace: Trace = []
    ctx = FlatCtx()
    before = dataclasses.asdict(ctx)

    def wreck(c: Any) -> None:
        c.amount += 1
        c.note = ["now", "a", "list"]  # no longer flat: the restore must undo it all
        c.extra = True

    def seen(c: Any) -> tuple[Any, ...]:
        return (c is ctx, dict(vars(c)))

    primary = Probe("Card", trace, error=Boom, mutate=wreck, observe=seen)
    backup = Probe("Invoice", trace, observe=seen)
    last = Probe("Ship", trace, error=Boom, mutate=wreck, observe=seen)
    saga = declare(
        Fallback(step=primary, fallback=backup,
                 retry=RetryPolicy(attempts=3, delay=0.0, jitter=0.0)),
        last,
        context=FlatCtx,
    )()

    with pytest.raises(SagaFailed):
        await saga.run(ctx)

    # Each of the primary's three tries, and the fallback, saw the state the
    # step began with; so did the last step; the failure left it as it was.
    assert primary.seen == [(True, before)] * 3
    assert backup.seen == [(True, before)]
    assert last.seen == [(True, before)]
    assert vars(ctx) == before
