"""Rule S6 and RetryPolicy: total attempts, capped jittered backoff, what is retried,
the testing switch, and retries through a saga (compensation and forward).

No test sleeps: waits go to a recording ``sleep`` or to a patched ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
from collections.abc import Iterator

import pytest
from helpers_breaker import Boom

import fallback_saga.retry as retry_module
from fallback_saga import (
    CircuitBreaker,
    Fallback,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStatus,
    set_testing,
)


class SleepRecorder:
    """Stands in for ``asyncio.sleep``: records each wait, never suspends on a timer."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.waits.append(delay)


@pytest.fixture
def testing_switch() -> Iterator[None]:
    """Whatever a test does to ``set_testing``, the suite gets its old value back."""
    before = retry_module._testing
    yield
    set_testing(before)


# --------------------------------------------------------------------------- attempts


@pytest.mark.parametrize("attempts", [1, 2, 3, 7])
def test_S6_attempts_is_the_total_number_of_tries(attempts: int) -> None:
    policy = RetryPolicy(attempts=attempts)
    error = Boom("down")
    tries = 1
    while policy.should_retry(error, tries):
        tries += 1
    assert tries == attempts


@pytest.mark.parametrize("attempts", [0, -1, -100])
def test_S6_attempts_below_one_is_a_value_error(attempts: int) -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=attempts)


@pytest.mark.parametrize("attempts", [True, False, 2.0, "3", None])
def test_S6_attempts_must_be_an_int(attempts: object) -> None:
    with pytest.raises(TypeError, match="attempts"):
        RetryPolicy(attempts=attempts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay", -0.1),
        ("delay", math.nan),
        ("delay", math.inf),
        ("max_delay", -1.0),
        ("jitter", -0.01),
        ("jitter", math.inf),
        ("backoff", 0.5),
        ("backoff", math.nan),
        # An int too large for a float was an OverflowError naming nothing.
        pytest.param("delay", 10**400, id="delay-beyond-a-float"),
        pytest.param("max_delay", 10**400, id="max_delay-beyond-a-float"),
        pytest.param("backoff", 10**400, id="backoff-beyond-a-float"),
    ],
)
def test_S6_invalid_timing_is_a_value_error(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


BEYOND_A_FLOAT = "1" + "0" * 76 + "..."  # 10**400, shown shortened


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("delay", math.nan, "delay must be a finite number of seconds >= 0, got nan"),
        ("delay", -0.1, "delay must be a finite number of seconds >= 0, got -0.1"),
        ("max_delay", math.inf, "max_delay must be a finite number of seconds >= 0, got inf"),
        ("jitter", True, "jitter must be a finite number of seconds >= 0, got True"),
        ("jitter", "0.1", "jitter must be a finite number of seconds >= 0, got '0.1'"),
        ("delay", 10**400, f"delay must be a finite number of seconds >= 0, got {BEYOND_A_FLOAT}"),
        ("backoff", 0.5, "backoff must be a finite number >= 1, got 0.5"),
        ("backoff", math.nan, "backoff must be a finite number >= 1, got nan"),
        ("backoff", 10**400, f"backoff must be a finite number >= 1, got {BEYOND_A_FLOAT}"),
    ],
)
def test_S6_a_timing_that_is_no_finite_number_is_refused_saying_what_was_given(
    field: str, value: object, message: str
) -> None:
    """Worded as every other number of seconds the library takes (a breaker's,
    a worker's): the delays are seconds, ``backoff`` a factor; what was given
    is shown shortened (an int too large for a float was 400 digits)."""
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert str(refused.value) == message


@pytest.mark.parametrize("retry_on", [(ValueError, "OSError"), (int,), "ValueError", 42])
def test_S6_retry_on_must_be_exception_types_or_a_predicate(retry_on: object) -> None:
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=retry_on)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- delays


def test_S6_no_wait_before_the_first_try() -> None:
    assert RetryPolicy(delay=5.0, jitter=1.0).delay_before(1) == 0.0


@pytest.mark.parametrize(("delay", "backoff"), [(0.1, 2.0), (0.25, 3.0), (1.0, 1.0)])
def test_S6_delays_grow_exponentially(delay: float, backoff: float) -> None:
    policy = RetryPolicy(attempts=10, delay=delay, backoff=backoff, max_delay=1e6, jitter=0.0)
    waits = [policy.delay_before(attempt) for attempt in range(2, 11)]
    assert waits[0] == pytest.approx(delay)
    for earlier, later in itertools.pairwise(waits):
        assert later == pytest.approx(earlier * backoff)


def test_S6_delays_are_capped_by_max_delay() -> None:
    policy = RetryPolicy(attempts=50, delay=0.5, backoff=2.0, max_delay=3.0, jitter=0.0)
    waits = [policy.delay_before(attempt) for attempt in range(2, 51)]
    assert waits[:3] == [pytest.approx(0.5), pytest.approx(1.0), pytest.approx(2.0)]
    assert all(wait == pytest.approx(3.0) for wait in waits[3:])


@pytest.mark.parametrize("attempt", [1_100, 5_000])
def test_S6_delays_stay_capped_for_very_many_attempts(attempt: int) -> None:
    # Compensations "must eventually succeed": long retry budgets are legitimate,
    # and the cap must hold however far the exponent goes.
    policy = RetryPolicy(attempts=10_000, delay=0.1, backoff=2.0, max_delay=30.0, jitter=0.0)
    assert policy.delay_before(attempt) == pytest.approx(30.0)


def test_S6_jitter_stays_within_bounds_and_under_the_cap() -> None:
    jitter = 0.3
    policy = RetryPolicy(attempts=10, delay=0.2, backoff=2.0, max_delay=1.0, jitter=jitter)
    for attempt in range(2, 11):
        base = min(1.0, 0.2 * 2.0 ** (attempt - 2))
        samples = [policy.delay_before(attempt) for _ in range(2_000)]
        assert all(base <= wait <= min(1.0, base + jitter) for wait in samples), attempt
        assert all(wait <= policy.max_delay for wait in samples)
        if base + jitter <= 1.0:
            # Jitter is really applied: 2,000 uniform draws cover most of [0, jitter].
            assert max(samples) - min(samples) > jitter / 2


def test_S6_jitter_never_pushes_a_capped_delay_over_max_delay() -> None:
    policy = RetryPolicy(attempts=20, delay=4.0, backoff=2.0, max_delay=5.0, jitter=2.0)
    samples = [policy.delay_before(attempt) for attempt in (3, 10, 20) for _ in range(1_000)]
    assert all(wait == 5.0 for wait in samples)


# --------------------------------------------------------------------------- what is retried


def test_S6_retry_on_types() -> None:
    policy = RetryPolicy(attempts=3, retry_on=(ConnectionError, TimeoutError))
    assert policy.should_retry(ConnectionError(), 1)
    assert policy.should_retry(ConnectionResetError(), 2)  # a subclass
    assert policy.should_retry(TimeoutError(), 1)
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(ConnectionError(), 3)  # no tries left


def test_S6_retry_on_predicate() -> None:
    seen: list[BaseException] = []

    def transient(error: BaseException) -> bool:
        seen.append(error)
        return "transient" in str(error)

    policy = RetryPolicy(attempts=3, retry_on=transient)
    retryable, permanent = RuntimeError("transient glitch"), RuntimeError("bad request")
    assert policy.should_retry(retryable, 1)
    assert not policy.should_retry(permanent, 1)
    assert seen == [retryable, permanent]


def test_S6_default_retries_every_exception() -> None:
    policy = RetryPolicy(attempts=2)
    assert policy.should_retry(Boom(), 1)
    assert policy.should_retry(KeyError("x"), 1)


@pytest.mark.parametrize(
    "retry_on",
    [(BaseException,), (asyncio.CancelledError,), lambda error: True],
    ids=["BaseException", "CancelledError", "predicate-true"],
)
@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt()])
def test_S6_cancellation_is_never_retried(retry_on: object, error: BaseException) -> None:
    policy = RetryPolicy(attempts=5, retry_on=retry_on)  # type: ignore[arg-type]
    assert not policy.should_retry(error, 1)


# --------------------------------------------------------------------------- the testing switch


def _finishes_without_suspending(policy: RetryPolicy, attempt: int) -> bool:
    coroutine = policy.wait_before(attempt)
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    coroutine.close()
    return False


async def test_S6_set_testing_turns_real_sleeping_off(
    testing_switch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patched = SleepRecorder()
    monkeypatch.setattr(retry_module.asyncio, "sleep", patched)
    policy = RetryPolicy(attempts=3, delay=2.0, jitter=0.0)

    set_testing(True)
    await policy.wait_before(2)
    await policy.wait_before(3)
    assert patched.waits == []
    assert _finishes_without_suspending(policy, 3)


async def test_S6_without_testing_the_policy_sleeps_for_the_delay(
    testing_switch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patched = SleepRecorder()
    monkeypatch.setattr(retry_module.asyncio, "sleep", patched)
    policy = RetryPolicy(attempts=3, delay=2.0, backoff=3.0, jitter=0.0)

    set_testing(False)
    await policy.wait_before(2)
    await policy.wait_before(3)
    assert patched.waits == [pytest.approx(2.0), pytest.approx(6.0)]


async def test_S6_without_testing_the_real_sleep_suspends(testing_switch: None) -> None:
    set_testing(False)
    policy = RetryPolicy(attempts=2, delay=1.0, jitter=0.0)
    # Not awaited to the end: we only observe that it would wait on a timer.
    assert not _finishes_without_suspending(policy, 2)


async def test_S6_a_policy_with_its_own_sleep_keeps_using_it_under_testing(
    testing_switch: None,
) -> None:
    own = SleepRecorder()
    set_testing(True)
    policy = RetryPolicy(attempts=3, delay=0.5, jitter=0.0, sleep=own)
    await policy.wait_before(2)
    assert own.waits == [pytest.approx(0.5)]


# --------------------------------------------------------------------------- through a saga


@dataclasses.dataclass
class PaymentContext(SagaContext):
    order_id: str
    charged: int = 0
    refunded: int = 0


class Charge:
    """A step whose compensate fails the first ``refund_failures`` times."""

    def __init__(self, refund_failures: int) -> None:
        self.refund_failures = refund_failures
        self.compensations = 0

    async def act(self, context: PaymentContext) -> None:
        context.charged += 1

    async def compensate(self, context: PaymentContext) -> None:
        self.compensations += 1
        if self.compensations <= self.refund_failures:
            raise ConnectionError(f"refund failed ({self.compensations})")
        context.refunded += 1


class Reserve:
    def __init__(self) -> None:
        self.compensations = 0

    async def act(self, context: PaymentContext) -> None:
        return None

    async def compensate(self, context: PaymentContext) -> None:
        self.compensations += 1


class Ship:
    async def act(self, context: PaymentContext) -> None:
        raise Boom("no courier")

    async def compensate(self, context: PaymentContext) -> None:
        return None


async def test_S6_compensation_retry_calls_compensate_attempts_times() -> None:
    recorder = SleepRecorder()
    reserve, charge = Reserve(), Charge(refund_failures=10)

    class PaymentSaga(Saga[PaymentContext]):
        steps = [reserve, charge, Ship()]

    saga = PaymentSaga(
        compensation_retry=RetryPolicy(
            attempts=3, delay=0.5, backoff=2.0, jitter=0.0, sleep=recorder
        )
    )
    with pytest.raises(SagaFailed) as failed:
        await saga.run(PaymentContext(order_id="o-1"))
    assert charge.compensations == 3
    assert recorder.waits == [pytest.approx(0.5), pytest.approx(1.0)]
    assert failed.value.status is SagaStatus.FAILED
    assert set(failed.value.compensation_errors) == {"Charge"}
    assert reserve.compensations == 1  # unwinding went on after the failed compensation


async def test_S6_long_compensation_retry_budget_still_unwinds_every_step() -> None:
    # A large budget (operators retry compensations "until they succeed") must
    # still end in SagaFailed(FAILED) with the earlier steps compensated.
    recorder = SleepRecorder()
    reserve, charge = Reserve(), Charge(refund_failures=10_000)

    class PaymentSaga(Saga[PaymentContext]):
        steps = [reserve, charge, Ship()]

    saga = PaymentSaga(
        compensation_retry=RetryPolicy(attempts=1_200, max_delay=30.0, sleep=recorder)
    )
    with pytest.raises(SagaFailed) as failed:
        await saga.run(PaymentContext(order_id="o-long"))
    assert charge.compensations == 1_200
    assert len(recorder.waits) == 1_199
    assert all(0.0 <= wait <= 30.0 for wait in recorder.waits)
    assert failed.value.status is SagaStatus.FAILED
    assert reserve.compensations == 1


async def test_S6_compensation_retry_stops_at_the_first_success() -> None:
    recorder = SleepRecorder()
    charge = Charge(refund_failures=1)

    class PaymentSaga(Saga[PaymentContext]):
        steps = [charge, Ship()]

    saga = PaymentSaga(compensation_retry=RetryPolicy(attempts=3, jitter=0.0, sleep=recorder))
    with pytest.raises(SagaFailed) as failed:
        await saga.run(PaymentContext(order_id="o-2"))
    assert charge.compensations == 2
    assert len(recorder.waits) == 1
    assert failed.value.status is SagaStatus.COMPENSATED
    assert failed.value.compensation_errors == {}


class Primary:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    async def act(self, context: PaymentContext) -> None:
        self.calls += 1
        context.charged += 100  # undone by the snapshot before every retry
        raise self.error

    async def compensate(self, context: PaymentContext) -> None:
        return None


class Backup:
    def __init__(self) -> None:
        self.calls = 0

    async def act(self, context: PaymentContext) -> None:
        self.calls += 1
        context.charged += 1

    async def compensate(self, context: PaymentContext) -> None:
        return None


def _fallback_saga(primary: Primary, backup: Backup, **options: object) -> Saga[PaymentContext]:
    class ChargeSaga(Saga[PaymentContext]):
        steps = [Fallback(step=primary, fallback=backup, **options)]  # type: ignore[arg-type]

    return ChargeSaga()


@pytest.mark.parametrize("attempts", [1, 3])
async def test_S6_forward_retry_tries_the_primary_attempts_times(attempts: int) -> None:
    recorder = SleepRecorder()
    primary, backup = Primary(ConnectionError("flaky")), Backup()
    saga = _fallback_saga(
        primary, backup, retry=RetryPolicy(attempts=attempts, jitter=0.0, sleep=recorder)
    )
    result = await saga.run(PaymentContext(order_id="o-3"))
    assert primary.calls == attempts
    assert len(recorder.waits) == attempts - 1
    assert backup.calls == 1
    assert result.context.charged == 1  # every failed try was rolled back


async def test_S6_forward_retry_skips_errors_outside_retry_on() -> None:
    recorder = SleepRecorder()
    primary, backup = Primary(ValueError("bad input")), Backup()
    saga = _fallback_saga(
        primary,
        backup,
        retry=RetryPolicy(attempts=4, retry_on=(ConnectionError,), sleep=recorder),
    )
    await saga.run(PaymentContext(order_id="o-4"))
    assert (primary.calls, backup.calls, recorder.waits) == (1, 1, [])


async def test_S6_S9_an_open_circuit_is_never_retried() -> None:
    recorder = SleepRecorder()
    breaker = CircuitBreaker(fail_max=1, reset_timeout=60.0, clock=lambda: 0.0)
    breaker.open()
    primary, backup = Primary(ConnectionError("unused")), Backup()
    saga = _fallback_saga(
        primary,
        backup,
        circuit_breaker=breaker,
        retry=RetryPolicy(attempts=5, sleep=recorder),
    )
    await saga.run(PaymentContext(order_id="o-5"))
    assert (primary.calls, backup.calls, recorder.waits) == (0, 1, [])


async def test_S6_S8_a_cancelled_primary_is_not_retried() -> None:
    recorder = SleepRecorder()
    entered = asyncio.Event()
    never = asyncio.Event()

    class Hanging(Primary):
        async def act(self, context: PaymentContext) -> None:
            self.calls += 1
            entered.set()
            await never.wait()

    primary, backup = Hanging(Boom("unused")), Backup()
    saga = _fallback_saga(primary, backup, retry=RetryPolicy(attempts=5, sleep=recorder))
    task = asyncio.create_task(saga.run(PaymentContext(order_id="o-6")))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (primary.calls, backup.calls, recorder.waits) == (1, 0, [])
