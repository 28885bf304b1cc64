"""``OpenTelemetryListener`` on the real OpenTelemetry SDK and its in-memory
exporters: the span tree of a run (plain, fallback, failing with a retried
compensation, resumed, interrupted, cancelled), the parenting of a span a
step opens, attributes, events, error status, and metric values.

Providers are passed explicitly: nothing here touches the global ones.
Without the SDK the module is skipped with the reason — except under CI
(``CI=true``), where that is a failure: CI must run it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _require_sdk() -> None:
    try:
        importlib.import_module("opentelemetry.sdk.metrics")
        importlib.import_module("opentelemetry.sdk.trace")
    except ImportError as error:
        message = (
            f"OpenTelemetry tests cannot run: the SDK is not installed ({error}); "
            f'pip install -e ".[dev]"'
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise ImportError(message + " (CI must run them; see .ci/run)") from error
        pytest.skip(message, allow_module_level=True)


_require_sdk()

from helpers_saga import Blocker, Boom, OrderCtx, Probe, declare, reached  # noqa: E402
from journal_faults import FaultyStore  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402
from otel_memory import Telemetry, attrs  # noqa: E402

from fallback_saga import (  # noqa: E402
    CircuitBreaker,
    Fallback,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaStatus,
    SQLiteSagaStore,
    current_step,
    recover,
)
from fallback_saga.events import StepCall  # noqa: E402

FAST = RetryPolicy(attempts=3, delay=0.0, jitter=0.0)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    result = Telemetry()
    yield result
    result.tracer_provider.shutdown()
    result.meter_provider.shutdown()


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


# --------------------------------------------------------------------------- span trees


async def test_a_plain_run_is_a_saga_span_with_one_child_per_act(telemetry: Telemetry) -> None:
    saga = declare(Probe("Reserve", []), Probe("Charge", []))(listeners=[telemetry.listener])

    await saga.run(OrderCtx(), saga_id="plain-1")

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Reserve", "run TestSaga"),
        ("act Charge", "run TestSaga"),
    ]
    root = telemetry.span("run TestSaga")
    assert dict(root.attributes or {}) == {
        "fallback_saga.saga.id": "plain-1",
        "fallback_saga.saga.name": "TestSaga",
        "fallback_saga.saga.status": "completed",
    }
    assert root.status.status_code is StatusCode.UNSET  # success: left unset, as advised
    assert root.kind is trace.SpanKind.INTERNAL
    charge = telemetry.span("act Charge")
    assert dict(charge.attributes or {}) == {
        "fallback_saga.saga.id": "plain-1",
        "fallback_saga.saga.name": "TestSaga",
        "fallback_saga.step.name": "Charge",
        "fallback_saga.step.branch": "primary",
        "fallback_saga.step.action": "act",
        "fallback_saga.step.attempt": 1,
        "fallback_saga.step.idempotency_key": "plain-1:Charge",
    }
    # One trace; the step spans lie within the saga span.
    assert {span.context.trace_id for span in telemetry.spans() if span.context} == {
        root.context.trace_id if root.context else 0
    }
    assert None not in (root.start_time, root.end_time, charge.start_time, charge.end_time)
    assert root.start_time <= charge.start_time <= charge.end_time <= root.end_time  # type: ignore[operator]


async def test_a_fallback_run_shows_the_failed_primary_the_fallback_and_an_event(
    telemetry: Telemetry,
) -> None:
    saga = declare(
        Probe("Reserve", []),
        Fallback(step=Probe("Card", [], error=lambda: Boom("card declined")),
                 fallback=Probe("Invoice", [])),
    )(listeners=[telemetry.listener])

    await saga.run(OrderCtx(), saga_id="fb-1")

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Reserve", "run TestSaga"),
        ("act Card", "run TestSaga"),
        ("act Invoice", "run TestSaga"),
    ]
    card = telemetry.span("act Card")
    assert card.status.status_code is StatusCode.ERROR
    assert card.status.description == "Boom: card declined"
    assert (card.attributes or {})["error.type"] == "Boom"
    assert event_names(card) == ["exception"]
    invoice = telemetry.span("act Invoice")
    assert (invoice.attributes or {})["fallback_saga.step.branch"] == "fallback"
    assert (invoice.attributes or {})["fallback_saga.step.idempotency_key"] == "fb-1:Invoice"
    root = telemetry.span("run TestSaga")
    assert root.status.status_code is StatusCode.UNSET  # the saga completed
    (fallback,) = [event for event in root.events if event.name == "fallback_saga.fallback"]
    assert dict(fallback.attributes or {}) == {
        "fallback_saga.step.name": "Card",
        "fallback_saga.fallback.name": "Invoice",
        "exception.type": "Boom",
        "exception.message": "card declined",
    }
    assert telemetry.metric("fallback_saga.fallbacks") == {
        attrs(saga_name="TestSaga", step="Card", fallback="Invoice"): 1
    }


async def test_a_failing_run_shows_each_compensation_attempt_and_the_error_status(
    telemetry: Telemetry,
) -> None:
    saga = declare(
        Probe("Reserve", []),
        Fallback(step=Probe("Card", [], error=Boom), fallback=Probe("Invoice", [])),
        Probe("Ship", [], comp_error=lambda: Boom("courier down"), comp_fail_times=1),
        Probe("Notify", [], error=lambda: Boom("smtp down")),
    )(listeners=[telemetry.listener], compensation_retry=FAST)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="fail-1")

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Reserve", "run TestSaga"),
        ("act Card", "run TestSaga"),
        ("act Invoice", "run TestSaga"),
        ("act Ship", "run TestSaga"),
        ("act Notify", "run TestSaga"),
        ("compensate Ship", "run TestSaga"),  # attempt 1 fails...
        ("compensate Ship", "run TestSaga"),  # ... attempt 2 succeeds
        ("compensate Invoice", "run TestSaga"),  # the branch that ran, not Card
        ("compensate Reserve", "run TestSaga"),
    ]
    first = telemetry.span("compensate Ship", attempt=1)
    second = telemetry.span("compensate Ship", attempt=2)
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "Boom: courier down"
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})["fallback_saga.step.idempotency_key"] == (
        "fail-1:Ship:compensate"
    )
    invoice = telemetry.span("compensate Invoice")
    assert (invoice.attributes or {})["fallback_saga.step.branch"] == "fallback"

    root = telemetry.span("run TestSaga")
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "compensated: Boom: smtp down"
    assert (root.attributes or {})["fallback_saga.saga.status"] == "compensated"
    assert event_names(root) == ["fallback_saga.fallback", "fallback_saga.retry", "exception"]
    retry = next(event for event in root.events if event.name == "fallback_saga.retry")
    assert dict(retry.attributes or {}) == {
        "fallback_saga.step.name": "Ship",
        "fallback_saga.step.action": "compensate",
        "fallback_saga.step.attempt": 2,
    }

    assert telemetry.metric("fallback_saga.saga.finished") == {
        attrs(saga_name="TestSaga", status="compensated"): 1
    }
    assert telemetry.metric("fallback_saga.compensations") == {
        attrs(saga_name="TestSaga", step="Ship"): 1,  # once, however many attempts
        attrs(saga_name="TestSaga", step="Invoice"): 1,
        attrs(saga_name="TestSaga", step="Reserve"): 1,
    }
    assert telemetry.metric("fallback_saga.step.retries") == {
        attrs(saga_name="TestSaga", step="Ship", action="compensate"): 1
    }
    assert telemetry.metric("fallback_saga.compensation.failures") == {}


async def test_a_compensation_that_gives_up_fails_the_saga_and_is_counted(
    telemetry: Telemetry,
) -> None:
    saga = declare(
        Probe("Reserve", [], comp_error=lambda: Boom("stock service gone")),
        Probe("Charge", [], error=Boom),
    )(listeners=[telemetry.listener], compensation_retry=FAST)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="gives-up")

    assert [name for name, _ in telemetry.tree()].count("compensate Reserve") == 3
    root = telemetry.span("run TestSaga")
    assert (root.attributes or {})["fallback_saga.saga.status"] == "failed"
    assert root.status.description == "failed: Boom"
    (gave_up,) = [e for e in root.events if e.name == "fallback_saga.compensation.failed"]
    assert (gave_up.attributes or {})["exception.message"] == "stock service gone"
    assert telemetry.metric("fallback_saga.compensation.failures") == {
        attrs(saga_name="TestSaga", step="Reserve"): 1
    }
    assert telemetry.metric("fallback_saga.saga.finished") == {
        attrs(saga_name="TestSaga", status="failed"): 1
    }


async def test_S12_span_statuses_and_events_quote_error_texts_cut(
    telemetry: Telemetry,
) -> None:
    """An error of a megabyte (a response body quoted whole) is quoted cut to
    ``MAX_ERROR_TEXT`` characters in span statuses and exception events."""
    from fallback_saga.store._responses import MAX_ERROR_TEXT

    huge = 1_000_000
    saga = declare(
        Probe("Reserve", [], comp_error=lambda: Boom("gone: " + "x" * huge)),
        Probe("Charge", [], error=lambda: Boom("declined: " + "y" * huge)),
    )(listeners=[telemetry.listener], compensation_retry=FAST)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="huge-errors")

    spans = telemetry.spans()
    texts = [span.status.description or "" for span in spans] + [
        str(value) for span in spans for event in span.events
        for value in (event.attributes or {}).values()
    ]
    quoting = [text for text in texts if "xxxx" in text or "yyyy" in text]
    assert len(quoting) >= 3  # the act's span, the compensations' spans and events
    assert all(len(text) < MAX_ERROR_TEXT + 100 for text in quoting)
    assert all("more characters not shown" in text for text in quoting)


async def test_S12_span_statuses_and_events_redact_secrets_error_texts_quote(
    telemetry: Telemetry,
) -> None:
    """A participant's error quoting a card number under its key, a password
    and a token in a URL: no span status, exception event (message and stack
    trace), fallback or compensation event quotes them; the rest of the text
    is there."""
    card, password, token = "4111111111111111", "hunter2-Pa55", "sk_live_51Hx9"
    declined = (f"card declined: {{'card_number': '{card}'}} password={password} "
                f"https://pay.example/cb?api_key={token}&order=o-7")
    saga = declare(
        Probe("Reserve", [], comp_error=lambda: Boom(declined)),
        Fallback(step=Probe("Charge", [], error=lambda: Boom(declined)),
                 fallback=Probe("Invoice", [], error=lambda: Boom(declined))),
    )(listeners=[telemetry.listener], compensation_retry=FAST)

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="o-7")

    spans = telemetry.spans()
    texts = [span.status.description or "" for span in spans] + [
        str(value) for span in spans for event in span.events
        for value in (event.attributes or {}).values()
    ]
    quoting = [text for text in texts if "card declined" in text]
    # Statuses and exception events of the three spans that failed and the
    # saga's, its fallback event, its compensation.failed event.
    assert len(quoting) >= 8, quoting
    assert all("'card_number': ***" in text and "password=***" in text
               and "api_key=***&order=o-7" in text for text in quoting), quoting
    for secret in (card, password, token):
        assert not [text for text in texts if secret in text], secret


def _stack_traces(telemetry: Telemetry) -> list[str]:
    """The ``exception.stacktrace`` of every exception event (at least one)."""
    traces = [str((event.attributes or {})["exception.stacktrace"])
              for span in telemetry.spans() for event in span.events
              if "exception.stacktrace" in (event.attributes or {})]
    assert traces
    return traces


async def test_S12_an_exception_events_stack_trace_keeps_its_ends_cut_to_max_error_text(
    telemetry: Telemetry,
) -> None:
    """The ``exception.stacktrace`` of an error whose text is a megabyte is
    cut as the other texts are (the SDK quoted it whole): the frames, the
    error's type and the head of its text; a trace longer than that keeps
    its two ends (``errors.cut_middle``)."""
    from fallback_saga.store._responses import MAX_ERROR_TEXT

    def deepest() -> Boom:
        return Boom("deepest: " + "z" * 1_000_000)

    saga = declare(Probe("Charge", [], error=deepest))(listeners=[telemetry.listener])

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="huge-trace")

    traces = _stack_traces(telemetry)
    for text in traces:
        assert len(text) < MAX_ERROR_TEXT + 200
        assert text.startswith("Traceback (most recent call last):")
        assert ", in act\n" in text  # the frames: where it was raised
        assert "Boom: deepest: zzz" in text  # the error: its type and its text's head
        assert text.rstrip().endswith("more characters not shown]")  # that text, cut

    # Fifty errors chained (each one's text cut to its head still makes 200 kB):
    # the trace keeps its head and its tail, the error raised.
    def chained() -> Boom:
        error: BaseException | None = None
        for number in range(50):
            cause = error
            error = ValueError(f"cause {number}: " + "c" * 100_000)
            error.__cause__ = cause
        last = Boom("the last one")
        last.__cause__ = error
        return last

    telemetry.spans_out.clear()
    saga = declare(Probe("Charge", [], error=chained))(listeners=[telemetry.listener])
    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="chained-trace")
    traces = _stack_traces(telemetry)
    for text in traces:
        assert len(text) < MAX_ERROR_TEXT + 200
        head, tail = text.split(" characters not shown] …")
        assert head.startswith("ValueError: cause 0: ccc")  # the first of the chain
        assert tail.rstrip().endswith("Boom: the last one")  # the error raised


async def test_a_retried_act_has_a_span_per_attempt_and_a_retry_event(
    telemetry: Telemetry,
) -> None:
    flaky = Probe("Charge", [], error=Boom, fail_times=1)
    saga = declare(
        Fallback(step=flaky, fallback=Probe("Invoice", []), retry=FAST),
    )(listeners=[telemetry.listener])

    await saga.run(OrderCtx(), saga_id="retry-1")

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Charge", "run TestSaga"),
        ("act Charge", "run TestSaga"),
    ]
    assert telemetry.span("act Charge", attempt=1).status.status_code is StatusCode.ERROR
    second = telemetry.span("act Charge", attempt=2)
    assert second.status.status_code is StatusCode.UNSET
    # Every attempt carries the same idempotency key.
    assert (second.attributes or {})["fallback_saga.step.idempotency_key"] == "retry-1:Charge"
    root = telemetry.span("run TestSaga")
    assert event_names(root) == ["fallback_saga.retry"]
    assert telemetry.metric("fallback_saga.step.retries") == {
        attrs(saga_name="TestSaga", step="Charge", action="act"): 1
    }


# --------------------------------------------------------------------------- the current span


class Instrumented:
    """A step that opens spans of its own, like an instrumented HTTP client, and
    notes what ``current_step()`` says."""

    def __init__(self, name: str, tracer: trace.Tracer, *, error: bool = False) -> None:
        self.name = name
        self.tracer = tracer
        self.error = error
        self.keys: list[str] = []

    async def act(self, context: Any) -> str:
        self.keys.append(current_step().idempotency_key)
        with self.tracer.start_as_current_span(f"POST /{self.name.lower()}"):
            await asyncio.sleep(0)  # a suspension: the context must survive it
        if self.error:
            raise Boom(self.name)
        return self.name

    async def compensate(self, context: Any) -> None:
        self.keys.append(current_step().idempotency_key)
        with self.tracer.start_as_current_span(f"DELETE /{self.name.lower()}"):
            await asyncio.sleep(0)


async def test_a_span_opened_inside_a_step_is_a_child_of_the_step_span(
    telemetry: Telemetry,
) -> None:
    payments = Instrumented("Payments", telemetry.tracer)
    saga = declare(payments, Instrumented("Courier", telemetry.tracer, error=True))(
        listeners=[telemetry.listener]
    )

    with telemetry.tracer.start_as_current_span("HTTP POST /orders") as request:
        with pytest.raises(SagaFailed):
            await saga.run(OrderCtx(), saga_id="nest-1")
        # The saga left the caller's span current, as it found it.
        assert trace.get_current_span() is request

    assert telemetry.tree() == [
        ("HTTP POST /orders", None),
        ("run TestSaga", "HTTP POST /orders"),  # the saga joins the caller's trace
        ("act Payments", "run TestSaga"),
        ("POST /payments", "act Payments"),
        ("act Courier", "run TestSaga"),
        ("POST /courier", "act Courier"),
        ("compensate Payments", "run TestSaga"),  # (unwinding runs in a task of its own)
        ("DELETE /payments", "compensate Payments"),
    ]
    # The span's key is the one the step itself sees.
    assert payments.keys == ["nest-1:Payments", "nest-1:Payments:compensate"]
    assert (telemetry.span("act Payments").attributes or {})[
        "fallback_saga.step.idempotency_key"] == payments.keys[0]
    assert (telemetry.span("compensate Payments").attributes or {})[
        "fallback_saga.step.idempotency_key"] == payments.keys[1]


async def test_between_steps_of_a_transaction_the_saga_span_is_current(
    telemetry: Telemetry,
) -> None:
    saga = declare(Probe("Reserve", []), Probe("Charge", []))(listeners=[telemetry.listener])

    async with saga.transaction(OrderCtx(), saga_id="tx-1") as tx:
        async for _ in tx:
            with telemetry.tracer.start_as_current_span("caller work"):
                pass
    assert not trace.get_current_span().get_span_context().is_valid

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Reserve", "run TestSaga"),
        ("caller work", "run TestSaga"),
        ("act Charge", "run TestSaga"),
        ("caller work", "run TestSaga"),
    ]


async def test_a_cancelled_saga_ends_every_span_with_the_cancellation(
    telemetry: Telemetry,
) -> None:
    blocker = Blocker("Wait", [])
    saga = declare(Probe("Reserve", []), blocker)(listeners=[telemetry.listener])

    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="cancel-1"))
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert telemetry.tree() == [
        ("run TestSaga", None),
        ("act Reserve", "run TestSaga"),
        ("act Wait", "run TestSaga"),
        ("compensate Reserve", "run TestSaga"),
    ]
    assert telemetry.span("act Wait").status.description == "CancelledError"
    root = telemetry.span("run TestSaga")
    assert root.status.description == "compensated: CancelledError"
    assert telemetry.metric("fallback_saga.saga.active") == {attrs(saga_name="TestSaga"): 0}


async def test_members_of_a_parallel_group_are_overlapping_siblings(
    telemetry: Telemetry,
) -> None:
    gate = asyncio.Event()

    class Member(Instrumented):
        async def act(self, context: Any) -> str:
            if self.name == "Stock":
                await gate.wait()  # both members are in flight at once
            else:
                gate.set()
            return await super().act(context)

    saga = declare(
        Probe("Open", []),
        Parallel(Member("Stock", telemetry.tracer), Member("Card", telemetry.tracer)),
        Probe("Close", []),
    )(listeners=[telemetry.listener])

    async with asyncio.timeout(10):
        await saga.run(OrderCtx(), saga_id="par-1")

    tree = dict(telemetry.tree())
    assert tree == {
        "run TestSaga": None,
        "act Open": "run TestSaga",
        "act Stock": "run TestSaga",
        "act Card": "run TestSaga",
        "POST /stock": "act Stock",  # each member's own span is current in its task
        "POST /card": "act Card",
        "act Close": "run TestSaga",
    }
    stock, card = telemetry.span("act Stock"), telemetry.span("act Card")
    assert stock.start_time is not None
    assert card.end_time is not None
    assert stock.start_time < card.end_time  # they overlap
    assert not trace.get_current_span().get_span_context().is_valid


# --------------------------------------------------------------------------- breakers


async def test_breaker_trips_and_rejections_are_span_events_and_metrics(
    telemetry: Telemetry,
) -> None:
    breaker = CircuitBreaker(name="payments", fail_max=1, reset_timeout=60,
                             listeners=[telemetry.listener])
    card = Probe("Card", [], error=lambda: Boom("502"))
    saga = declare(
        Fallback(step=card, fallback=Probe("Invoice", []), circuit_breaker=breaker),
    )(listeners=[telemetry.listener])

    await saga.run(OrderCtx(), saga_id="trip")  # Card fails: the circuit opens
    await saga.run(OrderCtx(), saga_id="rejected")  # Card is not even called

    assert card.acts == 1
    spans = sorted(telemetry.spans(), key=lambda span: span.start_time or 0)
    assert [span.name for span in spans] == [
        "run TestSaga", "act Card", "act Invoice",
        "run TestSaga", "act Invoice",  # no span for a call that was never made
    ]
    tripped, rejected = (s for s in spans if s.name == "run TestSaga")
    assert event_names(tripped) == ["fallback_saga.breaker.state_changed",
                                    "fallback_saga.fallback"]
    change = tripped.events[0]
    assert dict(change.attributes or {}) == {
        "fallback_saga.breaker.name": "payments",
        "fallback_saga.breaker.previous_state": "closed",
        "fallback_saga.breaker.state": "open",
    }
    assert event_names(rejected) == ["fallback_saga.breaker.rejected", "fallback_saga.fallback"]
    rejection = dict(rejected.events[0].attributes or {})
    assert rejection["fallback_saga.step.name"] == "Card"
    assert rejection["fallback_saga.breaker.name"] == "payments"
    retry_after = rejection["fallback_saga.breaker.retry_after"]
    assert isinstance(retry_after, float)
    assert 0 < retry_after <= 60

    assert telemetry.metric("fallback_saga.breaker.state_changes") == {
        attrs(breaker="payments", previous="closed", state="open"): 1
    }
    assert telemetry.metric("fallback_saga.breaker.rejections") == {
        attrs(saga_name="TestSaga", step="Card", breaker="payments"): 1
    }
    assert telemetry.metric("fallback_saga.fallbacks") == {
        attrs(saga_name="TestSaga", step="Card", fallback="Invoice"): 2
    }


def test_a_breaker_used_outside_any_saga_still_counts_its_changes(telemetry: Telemetry) -> None:
    breaker = CircuitBreaker(name="search", listeners=[telemetry.listener])
    breaker.open()
    breaker.close()
    assert telemetry.metric("fallback_saga.breaker.state_changes") == {
        attrs(breaker="search", previous="closed", state="open"): 1,
        attrs(breaker="search", previous="open", state="closed"): 1,
    }
    assert telemetry.spans() == []


# --------------------------------------------------------------------------- metrics


async def test_metric_values_names_and_units(telemetry: Telemetry) -> None:
    ok = declare(Probe("Reserve", []), Probe("Charge", []), name="OrderSaga")(
        listeners=[telemetry.listener])
    bad = declare(Probe("Reserve", []), Probe("Charge", [], error=Boom), name="RefundSaga")(
        listeners=[telemetry.listener])

    for number in range(3):
        await ok.run(OrderCtx(), saga_id=f"ok-{number}")
    with pytest.raises(SagaFailed):
        await bad.run(OrderCtx(), saga_id="bad-1")

    assert telemetry.metric("fallback_saga.saga.finished") == {
        attrs(saga_name="OrderSaga", status="completed"): 3,
        attrs(saga_name="RefundSaga", status="compensated"): 1,
    }
    durations = telemetry.metric("fallback_saga.saga.duration")
    assert {key: count for key, (count, _) in durations.items()} == {
        attrs(saga_name="OrderSaga", status="completed"): 3,
        attrs(saga_name="RefundSaga", status="compensated"): 1,
    }
    assert all(0 <= total < 5 for _, total in durations.values())
    steps = {key: count for key, (count, _) in
             telemetry.metric("fallback_saga.step.duration").items()}
    assert steps == {
        attrs(saga_name="OrderSaga", step="Reserve", branch="primary", action="act"): 3,
        attrs(saga_name="OrderSaga", step="Charge", branch="primary", action="act"): 3,
        attrs(saga_name="RefundSaga", step="Reserve", branch="primary", action="act"): 1,
        attrs(saga_name="RefundSaga", step="Charge", branch="primary", action="act",
              error_type="Boom"): 1,
        attrs(saga_name="RefundSaga", step="Reserve", branch="primary",
              action="compensate"): 1,
    }
    assert telemetry.metric("fallback_saga.saga.active") == {
        attrs(saga_name="OrderSaga"): 0, attrs(saga_name="RefundSaga"): 0,
    }
    units = telemetry.units()
    assert units["fallback_saga.saga.duration"] == "s"
    assert units["fallback_saga.step.duration"] == "s"
    assert units["fallback_saga.saga.finished"] == "{saga}"
    assert all(name.startswith("fallback_saga.") for name in units)


async def test_histograms_use_second_sized_buckets(telemetry: Telemetry) -> None:
    await declare(Probe("Reserve", []))(listeners=[telemetry.listener]).run(OrderCtx())
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    bounds = {
        metric.name: list(metric.data.data_points[0].explicit_bounds)  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name.endswith(".duration")
    }
    assert bounds["fallback_saga.step.duration"][0] == 0.005  # 5 ms, not 5 s
    assert bounds["fallback_saga.saga.duration"][-1] == 3600.0


# --------------------------------------------------------------------------- resume, recovery


class Crash(BaseException):
    """The process dies inside a step: nothing after it is journaled."""


@dataclasses.dataclass
class ShopCtx(SagaContext):
    order_id: str = "o-1"


class Charge:
    name = "Charge"

    def __init__(self) -> None:
        self.crash = True

    async def act(self, context: ShopCtx) -> str:
        if self.crash:
            raise Crash("power cut")
        return "charged"

    async def compensate(self, context: ShopCtx) -> None:
        pass


def shop_saga(store: Any, listener: Any, charge: Charge, name: str = "ShopSaga") -> Saga[Any]:
    saga_cls = declare(Probe("Reserve", []), charge, context=ShopCtx, name=name)
    return saga_cls(store=store, listeners=[listener])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


async def crash(db: Path, listener: Any, saga_id: str, name: str = "ShopSaga") -> None:
    """Run a saga until its Charge step crashes, in a task of its own (like a
    process of its own: what it leaves behind is not the test's)."""
    async with SQLiteSagaStore(db) as first:
        task = asyncio.create_task(
            shop_saga(first, listener, Charge(), name).run(ShopCtx(), saga_id=saga_id)
        )
        with pytest.raises(Crash):
            await task


async def test_a_resumed_saga_has_a_resume_span_with_the_same_saga_id(
    telemetry: Telemetry, db: Path
) -> None:
    await crash(db, telemetry.listener, "shop-1")
    # The crash (a BaseException, as SystemExit) ends the crashed run's span
    # as interrupted, with the status its journal is left in.
    assert [span.name for span in telemetry.spans()] == [
        "act Reserve", "act Charge", "run ShopSaga"
    ]
    crashed = telemetry.span("run ShopSaga")
    assert (crashed.attributes or {})["fallback_saga.saga.interrupted"] is True
    assert (crashed.attributes or {})["fallback_saga.saga.status"] == "running"

    charge = Charge()
    charge.crash = False
    async with SQLiteSagaStore(db) as store:
        result = await shop_saga(store, telemetry.listener, charge).resume("shop-1")
    assert result.status is SagaStatus.COMPLETED

    resumed = telemetry.span("resume ShopSaga")
    assert resumed.parent is None  # it links to nothing it cannot know
    assert dict(resumed.attributes or {}) == {
        "fallback_saga.saga.id": "shop-1",
        "fallback_saga.saga.name": "ShopSaga",
        "fallback_saga.saga.resumed": True,
        "fallback_saga.saga.status": "completed",
    }
    assert [name for name in telemetry.tree() if name[1] == "resume ShopSaga"] == [
        ("act Charge", "resume ShopSaga"),  # Reserve completed before the crash
    ]
    # Every span of both runs carries the saga id; the retried step, its key.
    assert {(span.attributes or {})["fallback_saga.saga.id"] for span in telemetry.spans()} == {
        "shop-1"}
    keys = [(span.attributes or {}).get("fallback_saga.step.idempotency_key")
            for span in telemetry.spans() if span.name == "act Charge"]
    assert keys == ["shop-1:Charge", "shop-1:Charge"]


async def test_recovery_outcomes_are_counted_once_per_saga(
    telemetry: Telemetry, db: Path
) -> None:
    await crash(db, telemetry.listener, "shop-ok")
    await crash(db, telemetry.listener, "other-1", name="OtherSaga")
    charge = Charge()
    charge.crash = False
    async with SQLiteSagaStore(db) as store:
        # The saga and recover() share the listener: each outcome counts once.
        saga = shop_saga(store, telemetry.listener, charge)
        report = await recover(store, [saga], older_than=0, listeners=[telemetry.listener])
    assert report.resumed == ["shop-ok"]
    assert [saga_id for saga_id, _ in report.skipped] == ["other-1"]

    assert telemetry.metric("fallback_saga.recovery.outcomes") == {
        attrs(outcome="completed", saga_name="ShopSaga"): 1,
        attrs(outcome="skipped", saga_name="OtherSaga"): 1,  # heard through recover()'s
    }
    assert telemetry.span("resume ShopSaga").status.status_code is StatusCode.UNSET


async def test_an_interrupted_run_ends_its_span_with_an_error_and_is_counted(
    telemetry: Telemetry, db: Path
) -> None:
    async with SQLiteSagaStore(db) as inner:
        store = FaultyStore(inner, at=2)  # the store goes down at Charge's write-ahead
        saga = declare(Probe("Reserve", []), Probe("Charge", []), Probe("Ship", []))(
            store=store, listeners=[telemetry.listener],
            journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
        )
        with pytest.raises(SagaInterrupted):
            await saga.run(OrderCtx(), saga_id="int-1")

    root = telemetry.span("run TestSaga")
    assert root.status.status_code is StatusCode.ERROR
    assert (root.status.description or "").startswith("interrupted: SagaInterrupted")
    assert (root.attributes or {})["fallback_saga.saga.interrupted"] is True
    assert (root.attributes or {})["fallback_saga.saga.status"] == "running"  # as journaled
    assert telemetry.metric("fallback_saga.saga.interrupted") == {attrs(saga_name="TestSaga"): 1}
    assert telemetry.metric("fallback_saga.saga.finished") == {}
    assert telemetry.metric("fallback_saga.saga.active") == {attrs(saga_name="TestSaga"): 0}
    assert not trace.get_current_span().get_span_context().is_valid  # detached


@pytest.mark.parametrize("at", [2, 3])
async def test_S13_a_span_never_claims_a_status_the_journal_may_not_hold(
    telemetry: Telemetry, at: int
) -> None:
    """The run's last write landed, then its answer was lost and the store
    went down (in doubt): the journal holds the new status (COMPLETED; or
    COMPENSATING, as the unwinding began), not the one the run last saw
    confirmed. The span says both possibilities rather than the stale one."""
    inner = MemorySagaStore()
    store = FaultyStore(inner, at=at, kind="in_doubt_outage")
    steps = [Probe("Reserve", []), Probe("Charge", [])]
    if at == 3:
        steps.append(Probe("Ship", [], error=Boom))
    saga = declare(*steps)(
        store=store, listeners=[telemetry.listener],
        journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
    )
    with pytest.raises(SagaInterrupted) as stopped:
        await saga.run(OrderCtx(), saga_id="doubt")
    assert stopped.value.in_doubt
    held = (await inner.load("doubt")).status
    assert held is stopped.value.status_if_landed  # it landed
    attributes = telemetry.span("run TestSaga").attributes or {}
    assert attributes.get("fallback_saga.saga.status", held.value) == held.value, attributes
    assert tuple(attributes["fallback_saga.saga.status_in_doubt"]) == (
        stopped.value.status.value if stopped.value.status else "none", held.value
    )


async def test_S13_a_run_refused_for_a_taken_id_is_no_interrupted_saga(
    telemetry: Telemetry, db: Path
) -> None:
    """A durable store learns that a saga id is taken only at the run's first
    write: the run was announced, then refused (``SagaAlreadyExists``) —
    nothing of it was journaled, and nothing is left for recovery. Its span
    says refused, not interrupted, and no saga is counted interrupted: the
    journal holds the other saga, completed."""
    async with SQLiteSagaStore(db) as store:
        saga = declare(Probe("Reserve", []))(store=store, listeners=[telemetry.listener])
        await saga.run(OrderCtx(), saga_id="taken")
        with pytest.raises(SagaAlreadyExists):
            await saga.run(OrderCtx(), saga_id="taken")
        assert (await store.load("taken")).status is SagaStatus.COMPLETED

    _completed, refused = (span for span in telemetry.spans() if span.name == "run TestSaga")
    attributes = refused.attributes or {}
    assert "fallback_saga.saga.interrupted" not in attributes, attributes
    assert attributes["fallback_saga.saga.refused"] is True
    assert (refused.status.description or "").startswith("refused: SagaAlreadyExists")
    assert telemetry.metric("fallback_saga.saga.interrupted") == {}
    assert telemetry.metric("fallback_saga.saga.finished") == {
        attrs(saga_name="TestSaga", status="completed"): 1
    }
    assert telemetry.metric("fallback_saga.saga.active") == {attrs(saga_name="TestSaga"): 0}


# --------------------------------------------------------------------------- robustness


async def test_hooks_out_of_pairing_never_raise_nor_log(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    listener = telemetry.listener
    call = StepCall("x", "S", "A", "act", 1, "primary")
    with caplog.at_level(logging.DEBUG):
        listener.step_call_finished(call, None)  # never started
        listener.saga_finished("unknown", "S", SagaStatus.COMPLETED, None)
        listener.saga_interrupted("unknown", "S", None, None)
        listener.saga_resumed("unknown", "S")
        listener.step_failed("unknown", "A", Boom())
        # Started in one task, finished in another: no detach of a token that
        # belongs to another context (OpenTelemetry would log an error).
        started = asyncio.create_task(_call(listener.step_call_started, call))
        await started
        listener.step_call_finished(call, None)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [span.name for span in telemetry.spans()] == ["act A"]


async def _call(hook: Any, *args: Any) -> None:
    hook(*args)


async def test_a_saga_without_listeners_reaches_no_telemetry(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fallback_saga.unwinding as unwinding

    def no_calls(*args: Any) -> None:
        raise AssertionError("a StepCall was made with nobody listening")

    monkeypatch.setattr(unwinding, "StepCall", no_calls)

    class StepsOnly:  # listens, but not to the step_call_* hooks
        def __init__(self) -> None:
            self.steps: list[str] = []

        def step_completed(self, saga_id: str, step: str) -> None:
            self.steps.append(step)

    listener = StepsOnly()
    for listeners in ([], [listener]):
        saga = declare(Probe("A", []), Probe("B", [], comp_error=Boom, comp_fail_times=1),
                       Probe("C", [], error=Boom))(listeners=listeners,
                                                  compensation_retry=FAST)
        with pytest.raises(SagaFailed):
            await saga.run(OrderCtx())
    assert listener.steps == ["A", "B"]
    assert telemetry.spans() == []
    assert telemetry.metric("fallback_saga.saga.finished") == {}


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, fallback_saga\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_the_api_the_import_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "try:\n"
        "    import fallback_saga.otel\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    assert 'pip install "fallback-saga[otel]"' in done.stdout
