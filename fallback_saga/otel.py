"""OpenTelemetry tracing and metrics for sagas: ``OpenTelemetryListener``.

Install the extra (the OpenTelemetry API; the SDK and exporters are the
application's choice)::

    pip install "fallback-saga[otel]"

and pass one listener (this module's ``OpenTelemetryListener``) wherever
there is something to observe::

    otel = OpenTelemetryListener()  # the global tracer and meter providers
    saga = OrderSaga(store=store, listeners=[otel])
    breaker = CircuitBreaker(name="payments", listeners=[otel])  # state changes
    worker = RecoveryWorker(store, [saga], listeners=[otel])  # recovery outcomes

Traces: a span per saga run or resumption (``run OrderSaga`` /
``resume OrderSaga``, a child of whatever span is current when the saga
starts), and under it a span per call of a step's ``act`` or ``compensate``
(``act ReserveStock``, ``compensate ReserveStock``; one per attempt). The
step's span is the *current* span while the step runs, so a span the step
opens — an instrumented HTTP client's, say — nests under it, and the trace
context propagates to the services the step calls. Fallbacks, retries,
breaker rejections and state changes, and compensations that gave up are
span events. Metrics: see ``docs/observability.md``.

This module is the only one of the package that imports OpenTelemetry;
``import fallback_saga`` never does. A hook never raises into a saga.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import Token
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, SpanKind, StatusCode, TracerProvider
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fallback_saga.otel needs the OpenTelemetry API: "
        f'pip install "fallback-saga[otel]" (or opentelemetry-api) ({error})'
    ) from error

from . import __version__
from .breaker import CircuitOpenError
from .errors import cut_middle
from .events import SagaListener, StepCall, refused_at_creation, status_if_landed
from .log_lines import logged_text, logged_traceback
from .status import SagaStatus

__all__ = ["OpenTelemetryListener"]

# ------------------------------------------------------------------ names
# Attribute keys (spans, events, metrics), semantic-convention style.

SAGA_ID = "fallback_saga.saga.id"
SAGA_NAME = "fallback_saga.saga.name"
SAGA_STATUS = "fallback_saga.saga.status"
SAGA_RESUMED = "fallback_saga.saga.resumed"
SAGA_INTERRUPTED = "fallback_saga.saga.interrupted"
SAGA_STATUS_IN_DOUBT = "fallback_saga.saga.status_in_doubt"
SAGA_REFUSED = "fallback_saga.saga.refused"
STEP = "fallback_saga.step.name"
BRANCH = "fallback_saga.step.branch"
ACTION = "fallback_saga.step.action"
ATTEMPT = "fallback_saga.step.attempt"
IDEMPOTENCY_KEY = "fallback_saga.step.idempotency_key"
FALLBACK = "fallback_saga.fallback.name"
BREAKER = "fallback_saga.breaker.name"
BREAKER_STATE = "fallback_saga.breaker.state"
BREAKER_PREVIOUS_STATE = "fallback_saga.breaker.previous_state"
RETRY_AFTER = "fallback_saga.breaker.retry_after"
RECOVERY_OUTCOME = "fallback_saga.recovery.outcome"
STEP_INTERRUPTED = "fallback_saga.step.interrupted"
STEP_CANCELLED = "fallback_saga.step.cancelled"
ERROR_TYPE = "error.type"  # the semantic conventions' own

# Bucket boundaries in seconds: a step is a call to a service (milliseconds to
# a minute); a saga is a few of them, plus backoffs and compensations.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 30.0, 60.0)
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0, 1800.0, 3600.0)

_INTERRUPTED = "interrupted"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop (a breaker used from sync code)
        return None


def _message(error: BaseException) -> str:
    """An error's text as a span records it: as a log line quotes it
    (``log_lines.logged_text``: a secret it quotes is ``***``, and it is
    cut) — a trace is kept and read as widely as a log."""
    return logged_text(str(error))


def _describe(error: BaseException) -> str:
    text = _message(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _exception_message(error: BaseException) -> dict[str, str]:
    """The attributes ``record_exception`` is given, in place of those the
    SDK would quote whole: the exception's text cut, and its stack trace
    cut — each error's text in it (the raised one's, and those it chained)
    to its head, then the whole to its two ends (the outermost call, the
    innermost one and the error). Whole, an error text of a megabyte made an
    event of a megabyte, which ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` bounds
    only where the user set it."""
    return {"exception.message": _message(error),
            "exception.stacktrace": _stack_trace(error)}


def _stack_trace(error: BaseException) -> str:
    return cut_middle(logged_traceback(error))


class _Attached:
    """A span made current with ``attach``: detached only from the task (and so
    the context) that attached it — anywhere else ``detach`` would fail."""

    __slots__ = ("context", "span", "started", "task", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.token: Token[Context] | None = otel_context.attach(self.context)
        self.task = _current_task()
        self.started = time.perf_counter()

    def detach(self) -> float:
        """Stop making the span current; the seconds since it was attached."""
        token, self.token = self.token, None
        if token is not None and _current_task() is self.task:
            otel_context.detach(token)
        return time.perf_counter() - self.started


class _Run(_Attached):
    """One saga run (or resumption) and the step calls it has open."""

    __slots__ = ("calls", "name")

    def __init__(self, span: Span, name: str) -> None:
        super().__init__(span)  # its context is the parent of its step spans
        self.name = name
        self.calls: dict[StepCall, _Call] = {}


class _Call(_Attached):
    __slots__ = ("run",)

    def __init__(self, span: Span, run: _Run | None) -> None:
        super().__init__(span)
        self.run = run


class OpenTelemetryListener(SagaListener):
    """Traces and metrics for every saga, breaker and recovery it listens to.

    ``tracer_provider`` / ``meter_provider``: where spans and measurements go
    (default: the global providers, as set with
    ``opentelemetry.trace.set_tracer_provider`` and
    ``opentelemetry.metrics.set_meter_provider``). One listener may serve any
    number of sagas, breakers and workers, concurrently.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("fallback_saga", __version__, tracer_provider)
        meter = metrics.get_meter("fallback_saga", __version__, meter_provider)
        self.meter = meter
        self._runs: dict[str, list[_Run]] = {}
        self._calls: dict[StepCall, _Call] = {}
        self._finished = meter.create_counter(
            "fallback_saga.saga.finished", unit="{saga}",
            description="Sagas that reached a final status (completed, compensated, failed)",
        )
        self._interrupted = meter.create_counter(
            "fallback_saga.saga.interrupted", unit="{saga}",
            description="Saga runs that stopped without a final status, left for recovery",
        )
        self._active = meter.create_up_down_counter(
            "fallback_saga.saga.active", unit="{saga}",
            description="Saga runs in progress in this process",
        )
        self._saga_duration = meter.create_histogram(
            "fallback_saga.saga.duration", unit="s",
            description="Duration of a saga run or resumption, to its end",
            explicit_bucket_boundaries_advisory=SAGA_BUCKETS,
        )
        self._step_duration = meter.create_histogram(
            "fallback_saga.step.duration", unit="s",
            description="Duration of one call of a step's act or compensate",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS,
        )
        self._retries = meter.create_counter(
            "fallback_saga.step.retries", unit="{retry}",
            description="Step calls made again after a failed attempt (act or compensate)",
        )
        self._fallbacks = meter.create_counter(
            "fallback_saga.fallbacks", unit="{fallback}",
            description="Primaries that failed (or were rejected) and handed over to a fallback",
        )
        self._compensations = meter.create_counter(
            "fallback_saga.compensations", unit="{compensation}",
            description="Step compensations begun (counted once, however many attempts)",
        )
        self._compensation_failures = meter.create_counter(
            "fallback_saga.compensation.failures", unit="{compensation}",
            description="Step compensations that failed on every attempt (the saga ends FAILED)",
        )
        self._rejections = meter.create_counter(
            "fallback_saga.breaker.rejections", unit="{call}",
            description="Step calls an open circuit breaker rejected without calling",
        )
        self._state_changes = meter.create_counter(
            "fallback_saga.breaker.state_changes", unit="{change}",
            description="Circuit breaker transitions between closed, open and half_open",
        )
        self._state_store_failures = meter.create_counter(
            "fallback_saga.breaker.state_store.failures", unit="{failure}",
            description="Failures of a breaker's shared state store (reported at most once "
                        "per sync interval)",
        )
        self._recoveries = meter.create_counter(
            "fallback_saga.recovery.outcomes", unit="{saga}",
            description="Sagas claimed by recover() or a RecoveryWorker, by outcome",
        )

    # ------------------------------------------------------------------ runs

    def _run(self, saga_id: str) -> _Run | None:
        """The run of ``saga_id``: the one this task started when two runs of the
        same id are open (a fenced-out run still stopping), else the latest."""
        runs = self._runs.get(saga_id)
        if not runs:
            return None
        if len(runs) > 1:
            task = _current_task()
            for run in reversed(runs):
                if run.task is task:
                    return run
        return runs[-1]

    def _end_run(self, saga_id: str) -> _Run | None:
        run = self._run(saga_id)
        if run is None:
            return None
        runs = self._runs[saga_id]
        runs.remove(run)
        if not runs:
            del self._runs[saga_id]
        for call, left in list(run.calls.items()):  # never finished: end them too
            self._calls.pop(call, None)
            left.detach()
            left.span.end()
        run.calls.clear()
        self._active.add(-1, {SAGA_NAME: run.name})
        return run

    def _event(self, saga_id: str, name: str, attributes: dict[str, Any],
               error: BaseException | None = None) -> None:
        run = self._run(saga_id)
        span = run.span if run is not None else trace.get_current_span()
        if span.is_recording():
            if error is not None:  # its text redacted only for a span that records it
                attributes["exception.type"] = type(error).__qualname__
                attributes["exception.message"] = _message(error)
            span.add_event(name, attributes)

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        span = self.tracer.start_span(
            f"run {saga_name}", kind=SpanKind.INTERNAL,
            attributes={SAGA_ID: saga_id, SAGA_NAME: saga_name},
        )
        self._runs.setdefault(saga_id, []).append(_Run(span, saga_name))
        self._active.add(1, {SAGA_NAME: saga_name})

    def saga_resumed(self, saga_id: str, saga_name: str) -> None:
        run = self._run(saga_id)
        if run is not None:
            run.span.update_name(f"resume {saga_name}")
            run.span.set_attribute(SAGA_RESUMED, True)

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        run = self._end_run(saga_id)
        if run is None:
            return
        span = run.span
        span.set_attribute(SAGA_STATUS, status.value)
        if status is not SagaStatus.COMPLETED and span.is_recording():
            reason = status.value if error is None else f"{status.value}: {_describe(error)}"
            span.set_status(StatusCode.ERROR, reason)
            if error is not None:
                span.record_exception(error, _exception_message(error))
        seconds = run.detach()
        span.end()
        attributes = {SAGA_NAME: saga_name, SAGA_STATUS: status.value}
        self._finished.add(1, attributes)
        self._saga_duration.record(seconds, attributes)

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        run = self._end_run(saga_id)
        if run is None:
            return
        span = run.span
        if error is not None and refused_at_creation(status, error):
            # The store refused to create the saga (its id is taken): nothing
            # of this run is in the journal, nor left for recovery — no
            # interrupted saga to count.
            span.set_attribute(SAGA_REFUSED, True)
            span.set_status(StatusCode.ERROR, f"refused: {_describe(error)}")
            span.record_exception(error, _exception_message(error))
            run.detach()
            span.end()
            return
        span.set_attribute(SAGA_INTERRUPTED, True)
        landed = status_if_landed(status, error)
        if landed is not None:
            # The last write may have landed unseen: the journal holds one of
            # two statuses (the saga may even be final), and the span names
            # both rather than claim the one last confirmed.
            before = "none" if status is None else status.value
            span.set_attribute(SAGA_STATUS_IN_DOUBT, (before, landed.value))
        elif status is not None:
            span.set_attribute(SAGA_STATUS, status.value)  # what the journal holds
        span.set_status(
            StatusCode.ERROR,
            _INTERRUPTED if error is None else f"{_INTERRUPTED}: {_describe(error)}",
        )
        if error is not None:
            span.record_exception(error, _exception_message(error))
        seconds = run.detach()
        span.end()
        self._interrupted.add(1, {SAGA_NAME: saga_name})
        self._saga_duration.record(seconds, {SAGA_NAME: saga_name, SAGA_STATUS: _INTERRUPTED})

    # ------------------------------------------------------------------ step calls

    def step_call_started(self, call: StepCall) -> None:
        run = self._run(call.saga_id)
        span = self.tracer.start_span(
            f"{call.action} {call.step}",
            context=run.context if run is not None else None,
            kind=SpanKind.INTERNAL,
            attributes={
                SAGA_ID: call.saga_id,
                SAGA_NAME: call.saga_name,
                STEP: call.step,
                BRANCH: call.branch,
                ACTION: call.action,
                ATTEMPT: call.attempt,
                IDEMPOTENCY_KEY: call.idempotency_key,
            },
        )
        record = _Call(span, run)
        self._calls[call] = record
        if run is not None:
            run.calls[call] = record

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        record = self._calls.pop(call, None)
        if record is None:
            return
        if record.run is not None:
            record.run.calls.pop(call, None)
        seconds = record.detach()
        span = record.span
        attributes: dict[str, Any] = {SAGA_NAME: call.saga_name, STEP: call.step,
                                      BRANCH: call.branch, ACTION: call.action}
        if error is not None and call.interrupted:
            # A crash (KeyboardInterrupt, SystemExit, GeneratorExit) inside
            # the call, or the loop's shutdown cancelling the unwinding in
            # its compensate: interrupted, not failed — the journal keeps
            # its STARTED as its last word, and the run's span says the saga
            # stopped. No error status, no error.type for a dashboard to
            # count as a failed call.
            attributes[STEP_INTERRUPTED] = True
            span.set_attribute(STEP_INTERRUPTED, True)
        elif error is not None and call.cancelled:
            # A group member's act cancelled in flight (a sibling failed, or
            # the saga was cancelled): journaled CANCELLED, not FAILED — its
            # effect is uncertain, and the saga compensates it. Not a failed
            # call either: no error status, no error.type.
            attributes[STEP_CANCELLED] = True
            span.set_attribute(STEP_CANCELLED, True)
        elif error is not None:
            error_type = type(error).__qualname__
            attributes[ERROR_TYPE] = error_type
            span.set_attribute(ERROR_TYPE, error_type)
            if span.is_recording():  # the text redacted only for a span that keeps it
                span.set_status(StatusCode.ERROR, _describe(error))
                span.record_exception(error, _exception_message(error))
        span.end()
        self._step_duration.record(seconds, attributes)

    # ------------------------------------------------------------------ saga events

    def _saga_name(self, saga_id: str) -> str:
        run = self._run(saga_id)
        return run.name if run is not None else ""

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        if attempt > 1:
            self._retry(saga_id, step, "act", attempt)

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        if attempt > 1:
            self._retry(saga_id, step, "compensate", attempt)
        else:
            self._compensations.add(1, {SAGA_NAME: self._saga_name(saga_id), STEP: step})

    def _retry(self, saga_id: str, step: str, action: str, attempt: int) -> None:
        self._event(saga_id, "fallback_saga.retry", {STEP: step, ACTION: action, ATTEMPT: attempt})
        self._retries.add(1, {SAGA_NAME: self._saga_name(saga_id), STEP: step, ACTION: action})

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        if isinstance(error, CircuitOpenError):
            self._event(saga_id, "fallback_saga.breaker.rejected", {
                STEP: step, BREAKER: error.breaker, RETRY_AFTER: error.retry_after,
            })
            self._rejections.add(1, {SAGA_NAME: self._saga_name(saga_id), STEP: step,
                                     BREAKER: error.breaker})

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self._event(saga_id, "fallback_saga.fallback", {STEP: primary, FALLBACK: fallback},
                    error)
        self._fallbacks.add(1, {SAGA_NAME: self._saga_name(saga_id), STEP: primary,
                                FALLBACK: fallback})

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self._event(saga_id, "fallback_saga.compensation.failed", {STEP: step}, error)
        self._compensation_failures.add(1, {SAGA_NAME: self._saga_name(saga_id), STEP: step})

    # ------------------------------------------------------------------ breakers, recovery

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("fallback_saga.breaker.state_changed", {
                BREAKER: breaker, BREAKER_PREVIOUS_STATE: old, BREAKER_STATE: new,
            })
        self._state_changes.add(1, {BREAKER: breaker, BREAKER_PREVIOUS_STATE: old,
                                    BREAKER_STATE: new})

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("fallback_saga.breaker.state_store_failed", {
                BREAKER: breaker, "exception.type": type(error).__qualname__,
                "exception.message": _message(error),
            })
        self._state_store_failures.add(1, {BREAKER: breaker})

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        attributes = {RECOVERY_OUTCOME: outcome}
        if saga_name is not None:
            attributes[SAGA_NAME] = saga_name
        self._recoveries.add(1, attributes)
