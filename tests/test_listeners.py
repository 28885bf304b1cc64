"""Listeners: hooks in order, a raising listener never breaks a saga, and the
logging listener never writes context values."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest
from helpers_saga import Blocker, Boom, OrderCtx, Probe, Trace, declare, reached

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    LoggingListener,
    RetryPolicy,
    SagaContext,
    SagaFailed,
    SagaListener,
    SagaStatus,
)

Event = tuple[Any, ...]


def _error_name(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


class Recorder(SagaListener):
    """Records every hook call (errors by type name, so events compare simply)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.events.append(("saga_started", saga_id, saga_name))

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        self.events.append(("saga_finished", saga_id, status, _error_name(error)))

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("step_started", step, attempt))

    def step_completed(self, saga_id: str, step: str) -> None:
        self.events.append(("step_completed", step))

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("step_failed", step, _error_name(error)))

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self.events.append(("fallback_taken", primary, fallback, _error_name(error)))

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("compensation_started", step, attempt))

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self.events.append(("compensation_completed", step))

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("compensation_failed", step, _error_name(error)))

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        self.events.append(("breaker_state_changed", breaker, old, new))


class Angry(SagaListener):
    """A listener with a bug in every hook."""

    def _raise(self, *args: Any) -> None:
        raise RuntimeError("listener bug")

    saga_started = saga_finished = step_started = step_completed = step_failed = _raise
    fallback_taken = compensation_started = compensation_completed = _raise
    compensation_failed = breaker_state_changed = _raise


def success_saga(trace: Trace, listeners: list[Any]) -> Any:
    return declare(
        Probe("A", trace),
        Fallback(step=Probe("P", trace, error=Boom), fallback=Probe("F", trace)),
    )(listeners=listeners)


def failing_saga(trace: Trace, listeners: list[Any]) -> Any:
    return declare(
        Probe("A", trace),
        Probe("B", trace, comp_error=Boom),
        Probe("C", trace, error=Boom),
    )(listeners=listeners, compensation_retry=RetryPolicy(attempts=2))


SUCCESS_EVENTS: list[Event] = [
    ("saga_started", "l-ok", "TestSaga"),
    ("step_started", "A", 1),
    ("step_completed", "A"),
    ("step_started", "P", 1),
    ("step_failed", "P", "Boom"),
    ("fallback_taken", "P", "F", "Boom"),
    ("step_started", "F", 1),
    ("step_completed", "F"),
    ("saga_finished", "l-ok", SagaStatus.COMPLETED, None),
]

FAILURE_EVENTS: list[Event] = [
    ("saga_started", "l-fail", "TestSaga"),
    ("step_started", "A", 1),
    ("step_completed", "A"),
    ("step_started", "B", 1),
    ("step_completed", "B"),
    ("step_started", "C", 1),
    ("step_failed", "C", "Boom"),
    ("compensation_started", "B", 1),
    ("compensation_started", "B", 2),
    ("compensation_failed", "B", "Boom"),
    ("compensation_started", "A", 1),
    ("compensation_completed", "A"),
    ("saga_finished", "l-fail", SagaStatus.FAILED, "Boom"),
]


async def test_hooks_are_called_in_order_on_success() -> None:
    recorder = Recorder()
    await success_saga([], [recorder]).run(OrderCtx(), saga_id="l-ok")
    assert recorder.events == SUCCESS_EVENTS


async def test_hooks_are_called_in_order_on_failure_and_unwinding() -> None:
    recorder = Recorder()
    with pytest.raises(SagaFailed):
        await failing_saga([], [recorder]).run(OrderCtx(), saga_id="l-fail")
    assert recorder.events == FAILURE_EVENTS


async def test_cancelled_saga_reports_its_unwinding_and_the_cancellation() -> None:
    recorder = Recorder()
    blocker = Blocker("Wait", [])
    saga = declare(Probe("A", []), blocker)(listeners=[recorder])

    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="l-cancel"))
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert recorder.events[-3:] == [
        ("compensation_started", "A", 1),
        ("compensation_completed", "A"),
        ("saga_finished", "l-cancel", SagaStatus.COMPENSATED, "CancelledError"),
    ]


async def test_every_listener_is_called_in_the_order_given() -> None:
    calls: list[str] = []

    class Tagged:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def step_completed(self, saga_id: str, step: str) -> None:
            calls.append(f"{self.tag}:{step}")

    saga = declare(Probe("A", []), Probe("B", []))(listeners=[Tagged("1"), Tagged("2")])
    await saga.run(OrderCtx())

    assert calls == ["1:A", "2:A", "1:B", "2:B"]


async def test_a_listener_given_twice_is_told_each_transition_once() -> None:
    """One listener object listed twice (say, the application's tracer added by
    two layers of set-up) hears each transition once: twice would open two
    spans for one run and count every metric double."""
    calls: list[str] = []

    class Counting:
        def step_completed(self, saga_id: str, step: str) -> None:
            calls.append(step)

        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            calls.append(f"{breaker}:{new}")

    counting = Counting()
    saga = declare(Probe("A", []), Probe("B", []))(listeners=[counting, counting])
    await saga.run(OrderCtx())
    assert calls == ["A", "B"]
    assert saga.listeners == (counting,)

    breaker = CircuitBreaker(name="cards", listeners=[counting, counting])
    breaker.open()
    assert calls[2:] == ["cards:open"]


async def test_duck_typed_listener_needs_only_the_hooks_it_wants() -> None:
    finished: list[SagaStatus] = []

    class OnlyFinish:
        def saga_finished(
            self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
        ) -> None:
            finished.append(status)

    await declare(Probe("A", []))(listeners=[OnlyFinish()]).run(OrderCtx())
    assert finished == [SagaStatus.COMPLETED]


@pytest.mark.parametrize("given", [5, "LoggingListener", logging.getLogger("x"), print])
def test_an_object_with_no_hook_is_refused_as_a_listener(given: object) -> None:
    """It would be kept and never called: whatever it was meant to hear, silently
    missed. Refused where it is given, saga, breaker or recovery alike, naming it."""
    saga_class = declare(Probe("A", []))
    with pytest.raises(TypeError, match=r"listeners\[1\] is .*none of the listener hooks"):
        saga_class(listeners=[Recorder(), given])
    with pytest.raises(TypeError, match=r"listeners\[0\] is .*none of the listener hooks"):
        CircuitBreaker(listeners=[given])


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"level": "INFO"}, "level must be a logging level number"),
        ({"level": logging.INFO * 1.0}, "level must be a logging level number"),
        ({"level": True}, "level must be a logging level number"),
        ({"level": -1}, "level must be a logging level number"),
        ({"logger": "shop"}, r"logger must be a logging.Logger .*logging.getLogger\('shop'\)"),
        ({"logger": print}, "logger must be a logging.Logger"),
    ],
)
def test_logging_listener_refuses_a_wrong_logger_or_level(
    arguments: dict[str, Any], named: str
) -> None:
    """Accepted, they failed in every hook, each failure logged and ignored (a
    listener never breaks a saga): nothing logged as asked, a traceback per
    transition instead."""
    with pytest.raises(TypeError, match=named):
        LoggingListener(**arguments)


def test_logging_listener_takes_a_logger_adapter_and_any_level_number() -> None:
    adapter = logging.LoggerAdapter(logging.getLogger("shop"), {})
    assert LoggingListener(logger=adapter, level=25).level == 25  # type: ignore[arg-type]


async def test_raising_listener_is_logged_and_never_breaks_a_saga(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    trace: Trace = []

    with caplog.at_level(logging.ERROR, logger="fallback_saga"):
        result = await success_saga(trace, [Angry(), recorder]).run(OrderCtx(), saga_id="l-ok")
        with pytest.raises(SagaFailed) as info:
            await failing_saga(trace, [Angry(), recorder]).run(OrderCtx(), saga_id="l-fail")

    assert result.status is SagaStatus.COMPLETED
    assert info.value.status is SagaStatus.FAILED
    assert isinstance(info.value.error, Boom)  # not the listener's RuntimeError
    assert recorder.events == SUCCESS_EVENTS + FAILURE_EVENTS  # later listeners still called
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(errors) == len(SUCCESS_EVENTS) + len(FAILURE_EVENTS)
    assert all("listener bug" in str(r.exc_info[1]) for r in errors if r.exc_info)


def test_breaker_listener_sees_state_changes() -> None:
    recorder = Recorder()
    breaker = CircuitBreaker(name="payments", listeners=[recorder])

    breaker.open()
    breaker.close()

    assert recorder.events == [
        ("breaker_state_changed", "payments", "closed", "open"),
        ("breaker_state_changed", "payments", "open", "closed"),
    ]


# --------------------------------------------------------------------------- LoggingListener

SECRET = "4111-1111-1111-1111-cvv-987"


@dataclasses.dataclass
class PaymentCtx(SagaContext):
    order_id: str
    card_number: str
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


async def test_logging_listener_never_logs_context_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace: Trace = []
    listener = LoggingListener()
    ok = declare(
        Probe("Reserve", trace),
        Fallback(step=Probe("Charge", trace, error=Boom), fallback=Probe("Invoice", trace)),
        context=PaymentCtx,
    )(listeners=[listener])
    failing = declare(
        Probe("Reserve", trace, comp_error=Boom, comp_fail_times=1),
        Probe("Charge", trace, error=Boom),
        context=PaymentCtx,
    )(listeners=[listener])
    breaker = CircuitBreaker(name="cards", listeners=[listener])

    with caplog.at_level(logging.DEBUG, logger="fallback_saga"):
        await ok.run(PaymentCtx("o-1", SECRET, {"cvv": SECRET}), saga_id="log-ok")
        with pytest.raises(SagaFailed):
            await failing.run(PaymentCtx("o-2", SECRET, {"cvv": SECRET}), saga_id="log-fail")
        breaker.open()

    messages = [record.getMessage() for record in caplog.records]
    text = "\n".join(messages)
    # The listener did log the run: ids, step names, the fallback, the unwinding.
    for expected in ("log-ok", "log-fail", "Reserve", "Charge", "Invoice", "cards"):
        assert expected in text
    assert any(record.levelno == logging.WARNING for record in caplog.records)
    assert SECRET not in text
    assert SECRET not in caplog.text
    assert all(SECRET not in repr(record.args) for record in caplog.records)


async def test_S12_logging_listener_lines_cannot_be_forged_by_ids_or_error_texts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A saga id taken from a request, or an error text quoting a downstream
    service's answer, may hold a line break: logged as is, it would forge a
    log line ("2026-... INFO payment approved"). Control characters are
    logged escaped, one record one line."""
    forged = "\n2026-12-05 03:00:00,000 INFO saga approved\r\x1b[2K"
    listener = LoggingListener()
    failing = declare(
        Probe("Reserve", [], comp_error=lambda: Boom("undo failed" + forged), comp_fail_times=1),
        Probe("Charge", [], error=lambda: Boom("card declined" + forged)),
        context=PaymentCtx,
    )(listeners=[listener])
    with caplog.at_level(logging.DEBUG, logger="fallback_saga"), pytest.raises(SagaFailed):
        await failing.run(PaymentCtx("o-2", SECRET), saga_id="o-2" + forged)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) > 3
    for message in messages:
        assert "\n" not in message
        assert "\r" not in message
        assert "\x1b" not in message
    assert any("o-2\\x0a2026" in message for message in messages)  # shown, escaped
    assert any("card declined\\x0a" in message for message in messages)


async def test_logging_listener_uses_the_logger_it_is_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("my.app.sagas")
    saga = declare(Probe("A", []))(listeners=[LoggingListener(logger=logger)])

    with caplog.at_level(logging.DEBUG, logger="my.app.sagas"):
        await saga.run(OrderCtx(), saga_id="own-logger")

    names = {record.name for record in caplog.records if "own-logger" in record.getMessage()}
    assert names == {"my.app.sagas"}


# --------------------------------------------------------------------------- group members


async def test_S13_a_group_member_cancelled_in_flight_is_told_cancelled_then_compensated() -> (
    None
):
    """A sibling fails; the member in flight is cancelled, journaled
    CANCELLED (not FAILED) and compensated. The listeners hear what the
    journal holds: no ``step_failed`` (its ``StepCall`` says ``cancelled``:
    test_composition_listeners.py), then its compensation. (A plain step
    cancelled in flight is journaled FAILED, and told ``step_failed``.)"""
    from fallback_saga import MemorySagaStore, Parallel

    trace: Trace = []
    slow = Blocker("Slow", trace)

    class Failing:
        name = "Failing"

        async def act(self, ctx: OrderCtx) -> None:
            await reached(slow.started)
            raise Boom("declined")

        async def compensate(self, ctx: OrderCtx) -> None:
            trace.append(("compensate", "Failing"))

    recorder = Recorder()
    saga = declare(Parallel(slow, Failing()))
    with pytest.raises(SagaFailed):
        await saga(store=MemorySagaStore(), listeners=[recorder]).run(OrderCtx(), saga_id="g1")
    slow_events = [e[0:3] for e in recorder.events if len(e) > 1 and e[1] == "Slow"]
    assert slow_events == [
        ("step_started", "Slow", 1),
        ("compensation_started", "Slow", 1),
        ("compensation_completed", "Slow"),
    ]
