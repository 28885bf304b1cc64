"""What the listeners hear when a step's own code raises a ``BaseException``
that is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``,
``GeneratorExit``) or a ``CancelledError``: the same thing the journal says
(S13, docs/mechanics.md, Listeners).

A crash inside a call leaves that call's ``STARTED`` as the journal's last
word on it — no ``FAILED`` row (``test_interrupt_journal_matrix.py``). So no
``step_failed`` / ``compensation_failed`` is told of it either: the call was
interrupted, not failed, and the run's ``saga_interrupted`` (with the
crash) is what says so. Before, ``step_failed`` fired for it, and a metrics
listener counted a failure the journal never recorded. A ``CancelledError``
the step raises is journaled (``FAILED``, a member's ``CANCELLED``): a
``FAILED`` one is told failed, a ``CANCELLED`` one cancelled.

The saga shapes and the participant are the journal matrix's: the journal
a run leaves is compared with what a recording listener heard, saga by
saga (a child saga's included).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest
from test_interrupt_journal_matrix import (
    CRASHES,
    ERRORS,
    PLACES,
    Participant,
    interrupted_run,
)

from fallback_saga import (
    LoggingListener,
    MemorySagaStore,
    SagaListener,
    SagaStatus,
    StepCall,
)


class Heard(SagaListener):
    """Every outcome hook, with the saga it is about."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("step_failed", saga_id, step, type(error).__name__))

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("compensation_failed", saga_id, step, type(error).__name__))

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        self.events.append(("saga_interrupted", saga_id, (status and status.value) or "",
                            type(error).__name__))

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        self.events.append(("saga_finished", saga_id, status.value, type(error).__name__))

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        if error is not None:
            self.events.append(("call_raised", call.saga_id, call.step, type(error).__name__))


def run_until(place: str, error: type[BaseException], *listeners: Any) -> MemorySagaStore:
    """The journal matrix's run: ``error`` raised by the step at ``place``
    after its effect landed, in an event loop of its own (the exception
    leaves the loop, and ``asyncio.run`` cancels what is left)."""
    name = PLACES[place]
    participant = Participant((name, "compensate" if place == "compensate" else "act"), error)
    store = MemorySagaStore()
    interrupted_run(lambda: store, participant, place, error, listeners)
    return store


async def journal_counts(store: MemorySagaStore) -> tuple[Counter[tuple[str, str]], ...]:
    """Per (saga, step): its act rows FAILED, and its compensate rows FAILED,
    of every saga in the store. (A member's act CANCELLED is no failure: it
    is told cancelled, and compensated — test_composition_listeners.py.)"""
    failed_acts: Counter[tuple[str, str]] = Counter()
    failed_compensations: Counter[tuple[str, str]] = Counter()
    for saga_id in ("s", "s/Pay"):
        try:
            record = await store.load(saga_id)
        except Exception:  # no child saga in this shape
            continue
        for entry in record.history:
            if entry.status.value == "failed":
                if entry.action == "act":
                    failed_acts[(saga_id, entry.step)] += 1
                else:
                    failed_compensations[(saga_id, entry.step)] += 1
    return failed_acts, failed_compensations


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", PLACES)
def test_S13_listeners_tell_a_failure_only_where_the_journal_holds_one(
    place: str, error: type[BaseException]
) -> None:
    heard = Heard()
    store = run_until(place, error, heard)
    failed_acts, failed_compensations = asyncio.run(journal_counts(store))
    told = Counter((saga_id, step) for kind, saga_id, step, _ in heard.events
                   if kind == "step_failed")
    assert told == failed_acts, heard.events
    told = Counter((saga_id, step) for kind, saga_id, step, _ in heard.events
                   if kind == "compensation_failed")
    assert told == failed_compensations, heard.events
    if error in CRASHES:
        crash = error.__name__
        assert not [event for event in heard.events
                    if event[0].endswith("_failed") and event[3] == crash], heard.events


@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", ["act", "primary", "fallback", "member", "child"])
def test_S13_a_crashed_act_is_told_by_saga_interrupted_with_the_crash(
    place: str, error: type[BaseException]
) -> None:
    """The run stops where the crash is: the listeners hear it once, from
    ``saga_interrupted`` with the crash and the status the journal holds
    (RUNNING) — a child saga's run, and its parent's."""
    heard = Heard()
    run_until(place, error, heard)
    stops = [event for event in heard.events if event[0] == "saga_interrupted"]
    expected = [("saga_interrupted", "s", "running", error.__name__)]
    if place == "child":
        expected.insert(0, ("saga_interrupted", "s/Pay", "running", error.__name__))
    assert stops == expected, heard.events
    assert not [event for event in heard.events if event[0] == "saga_finished"], heard.events


@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", PLACES)
def test_S13_the_logging_listener_logs_no_failure_for_a_crashed_call(
    place: str, error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """``LoggingListener`` says the saga stopped, left for recovery — not
    that the interrupted act or compensation failed."""
    caplog.set_level(logging.DEBUG, logger="fallback_saga")
    run_until(place, error, LoggingListener())
    lines = [record.getMessage() for record in caplog.records if record.name == "fallback_saga"]
    crash = error.__name__
    assert not [line for line in lines if "failed" in line.lower() and crash in line], lines
    assert [line for line in lines if "stopped without a final status" in line], lines


@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", PLACES)
def test_S13_the_otel_listener_records_no_failed_call_for_a_crashed_call(
    place: str, error: type[BaseException]
) -> None:
    """``OpenTelemetryListener``: the interrupted call's span ends marked
    ``fallback_saga.step.interrupted`` — no ERROR status, no ``error.type``
    on it or on its ``fallback_saga.step.duration`` point — and the run's
    span ends interrupted, with the crash."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.trace import StatusCode
    from otel_memory import Telemetry, point_attributes

    telemetry = Telemetry()
    listener = telemetry.listener
    run_until(place, error, listener)
    name = PLACES[place]
    action = "compensate" if place == "compensate" else "act"
    crashed = [span for span in telemetry.spans() if span.name == f"{action} {name}"]
    assert crashed, [span.name for span in telemetry.spans()]
    last = crashed[-1]  # (a Fallback's primary declines first: its own span)
    attributes = dict(last.attributes or {})
    assert attributes.get("fallback_saga.step.interrupted") is True, attributes
    assert "error.type" not in attributes, attributes
    assert last.status.status_code is not StatusCode.ERROR
    run = next(span for span in telemetry.spans() if span.name == "run Interrupted")
    assert (run.attributes or {}).get("fallback_saga.saga.interrupted") is True
    points = point_attributes(telemetry, "fallback_saga.step.duration")
    mine = [point for point in points
            if point["fallback_saga.step.name"] == name
            and point["fallback_saga.step.action"] == action]
    assert mine, points
    assert all(point.get("error.type") != error.__name__ for point in mine), points
    assert any(point.get("fallback_saga.step.interrupted") is True for point in mine), points
