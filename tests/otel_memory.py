"""In-memory OpenTelemetry for the tests: an SDK tracer provider and meter
provider with in-memory exporters, and an ``OpenTelemetryListener`` writing to
them. Import it only once the SDK is known to be installed (test_otel.py's
``_require_sdk``, or ``pytest.importorskip``)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fallback_saga.otel import OpenTelemetryListener


class Telemetry:
    """An SDK tracer provider and meter provider with in-memory exporters, and a
    listener writing to them."""

    def __init__(self) -> None:
        self.spans_out = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_out))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.listener = OpenTelemetryListener(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        self.tracer = self.tracer_provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_out.get_finished_spans())

    def span(self, name: str, **attributes: Any) -> ReadableSpan:
        found = [
            span for span in self.spans() if span.name == name and all(
                (span.attributes or {}).get(f"fallback_saga.step.{key}") == value
                for key, value in attributes.items()
            )
        ]
        assert len(found) == 1, (name, attributes, [s.name for s in self.spans()])
        return found[0]

    def tree(self) -> list[tuple[str, str | None]]:
        """(span name, parent span name) in the order the spans started."""
        spans = sorted(self.spans(), key=lambda span: span.start_time or 0)
        names = {span.context.span_id: span.name for span in spans if span.context}
        return [
            (span.name, names.get(span.parent.span_id) if span.parent else None)
            for span in spans
        ]

    def metric(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Data points of metric ``name`` by attributes: a sum's value, a
        histogram's (count, sum)."""
        data = self.reader.get_metrics_data()
        points: dict[frozenset[tuple[str, Any]], Any] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        key = frozenset((point.attributes or {}).items())
                        if hasattr(point, "value"):
                            points[key] = point.value
                        else:
                            points[key] = (point.count, point.sum)
        return points

    def units(self) -> dict[str, str]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric.unit or ""
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


def attrs(**values: Any) -> frozenset[tuple[str, Any]]:
    """Metric attributes, written short: saga_name= -> fallback_saga.saga.name."""
    keys = {
        "saga_name": "fallback_saga.saga.name",
        "status": "fallback_saga.saga.status",
        "step": "fallback_saga.step.name",
        "branch": "fallback_saga.step.branch",
        "action": "fallback_saga.step.action",
        "fallback": "fallback_saga.fallback.name",
        "breaker": "fallback_saga.breaker.name",
        "state": "fallback_saga.breaker.state",
        "previous": "fallback_saga.breaker.previous_state",
        "outcome": "fallback_saga.recovery.outcome",
        "error_type": "error.type",
    }
    return frozenset((keys[key], value) for key, value in values.items())


def point_attributes(telemetry: Telemetry, name: str) -> list[dict[str, Any]]:
    """The attributes of each data point of metric ``name``."""
    return [dict(key) for key in telemetry.metric(name)]
