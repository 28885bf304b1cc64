"""What the listeners hear when the unwinding is interrupted inside a
``compensate`` — by a crash (``KeyboardInterrupt``, ``SystemExit``) or by
the event loop's shutdown (``asyncio.run`` ending with the saga still
unwinding) — on every store: what the journal says (S13, docs/mechanics.md,
Cancellation and Listeners).

The journal leaves that compensation's ``STARTED`` as its last row and the
saga ``COMPENSATING`` (test_interrupt_journal_matrix.py,
test_loop_shutdown.py). So ``saga_interrupted`` says ``COMPENSATING`` — on a
``MemorySagaStore`` too, where it said ``None`` ("nothing journaled", as
for a saga the store refused to create) — and the interrupted call is told
interrupted, not failed: no ``compensation_failed``, ``StepCall.interrupted``
set, no failed-attempt log line, no ERROR span (``OpenTelemetryListener``
marks it ``fallback_saga.step.interrupted``). A ``compensate`` that raises
``CancelledError`` itself has failed (journaled FAILED): that one is told
failed (test_interrupt_listeners.py).

Each run is checked against its journal rows and the participant's ledger,
and then recovered: the interrupted compensation is called again, and the
saga ends COMPENSATED with nothing left applied.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest
import test_interrupt_journal_matrix as matrix
from test_interrupt_journal_matrix import (
    Ctx,
    Participant,
    closed,
    family,
    rows_of,
    the_crashed_call,
)

from fallback_saga import (
    LoggingListener,
    SagaFailed,
    SagaListener,
    SagaStatus,
    StepCall,
    recover,
)

pytest_plugins = ["conftest_pg"]

store_of = matrix.store_of  # the fixture: a store of the test's kind on the test's data

KINDS = ("memory", "thread", "inline", "postgres")
# Out of A's compensate (B declines: the saga unwinds).
# "driver": the shutdown's cancellation, turned by the compensation into an
# error of its own (a database driver cancelled mid-query).
STOPS = ("shutdown", "driver", "KeyboardInterrupt", "SystemExit")


class Heard(SagaListener):
    """The hooks that tell a stop or a failure, with what they got."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.events.append(("compensation_failed", step, type(error).__name__))

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        self.events.append(("saga_interrupted", saga_id, status, type(error).__name__))

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        self.events.append(("saga_finished", saga_id, status, type(error).__name__))

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        if error is not None:
            self.events.append(("call_raised", call.step, call.action, type(error).__name__,
                                call.interrupted))


class Unwinder(Participant):
    """B declines, so A is compensated; A's compensate undoes A's effect and
    then never answers (``shutdown``: the loop ends meanwhile) or raises the
    crash — once: called again, it answers."""

    def __init__(self, stop: str) -> None:
        crash: type[BaseException] = {"KeyboardInterrupt": KeyboardInterrupt,
                                      "SystemExit": SystemExit}.get(stop, KeyboardInterrupt)
        hangs = stop in ("shutdown", "driver")
        super().__init__(("-", "-") if hangs else ("A", "compensate"), crash)
        self.hang = hangs
        self.converts = stop == "driver"
        self.reached: asyncio.Event | None = None

    async def call(self, step: str, action: str, declines: bool = False) -> None:
        await super().call(step, action, declines)
        if self.hang and (step, action) == ("A", "compensate"):
            self.hang = False
            assert self.reached is not None
            self.reached.set()
            try:
                await asyncio.Event().wait()  # the answer never comes: the loop ends
            except asyncio.CancelledError:
                if self.converts:
                    raise ConnectionError("query cancelled") from None
                raise


def interrupted_unwinding(
    store_of: Callable[[], Any], participant: Unwinder, stop: str, *listeners: Any
) -> None:
    """Run the saga until its unwinding is interrupted in A's compensate, in
    an event loop of its own (a process's): the crash leaves the loop from
    the unwinding's task, or ``main`` returns while the saga unwinds; either
    way ``asyncio.run`` then cancels every task left."""
    saga_class, _ = family(participant, "compensate")
    tasks: list[asyncio.Task[Any]] = []
    hangs = participant.hang

    async def main() -> None:
        store = store_of()
        participant.reached = asyncio.Event()
        task = asyncio.create_task(
            saga_class(store=store, listeners=list(listeners)).run(Ctx(), saga_id="s")
        )
        tasks.append(task)
        if hangs:
            await participant.reached.wait()
            # Nothing more is written: the interrupted compensation's STARTED
            # is durable, and the shutdown's cancellation writes no row.
            await closed(store)
            return  # asyncio.run cancels the saga, mid-compensate
        await asyncio.wait([task])
        await closed(store)
        task.result()

    if hangs:
        asyncio.run(main())
    else:
        with pytest.raises(participant.error):
            asyncio.run(main())
    # The saga's task: cancelled by the shutdown — or, where the unwinding's
    # task started eagerly (3.12+) and the crash came out of its first step,
    # inside the saga's own task, ended by the crash (retrieved here).
    assert tasks[0].cancelled() or isinstance(tasks[0].exception(), participant.error)
    tasks.clear()
    gc.collect()


def recovered(store_of: Callable[[], Any], kind: str, participant: Unwinder) -> SagaStatus:
    """The journal the run left (A's compensate: STARTED last, the saga
    COMPENSATING), then recovery: the saga ends COMPENSATED."""

    async def recovery() -> SagaStatus:
        store = store_of()
        try:
            status, rows = await rows_of(store, "s")
            assert status is SagaStatus.COMPENSATING, rows
            assert the_crashed_call(rows, "A", "compensate") == ["started"], rows
            saga_class, child_class = family(participant, "compensate")
            if kind == "memory":  # in-process: no recover(), resume by id
                with pytest.raises(SagaFailed):  # B declined
                    await saga_class(store=store).resume("s")
            else:
                report = await recover(store, [saga_class, child_class], older_than=0)
                assert report.skipped == report.interrupted == [], report
            return (await store.load("s")).status
        finally:
            await closed(store)

    return asyncio.run(recovery())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stop", STOPS)
def test_S13_an_interrupted_compensation_is_told_as_the_journal_holds_it_on_every_store(
    kind: str, stop: str, store_of: Callable[[], Any]
) -> None:
    heard = Heard()
    participant = Unwinder(stop)
    interrupted_unwinding(store_of, participant, stop, heard)
    # The run stopped COMPENSATING, as its journal says (recovered checks
    # the rows) — not "nothing journaled".
    stops = [event for event in heard.events if event[0] == "saga_interrupted"]
    # With what stopped it: the shutdown's cancellation of the saga's task,
    # or the crash itself where it came out of that task (see above).
    assert stops in ([("saga_interrupted", "s", SagaStatus.COMPENSATING, "CancelledError")],
                     [("saga_interrupted", "s", SagaStatus.COMPENSATING, stop)]), heard.events
    assert not [event for event in heard.events if event[0] == "saga_finished"], heard.events
    # A's compensate was interrupted, not failed: no FAILED row, no failure told.
    assert not [event for event in heard.events if event[0] == "compensation_failed"], (
        heard.events
    )
    raised = [event for event in heard.events if event[0] == "call_raised"]
    crash = {"shutdown": "CancelledError", "driver": "ConnectionError"}.get(stop, stop)
    assert raised == [("call_raised", "B", "act", "Declined", False),
                      ("call_raised", "A", "compensate", crash, True)], heard.events
    assert participant.applied == set(), participant.calls  # A's undo landed

    final = recovered(store_of, kind, participant)
    assert final is SagaStatus.COMPENSATED
    assert participant.calls.count(("A", "compensate")) == 2  # called again: S10
    assert participant.applied == set(), participant.calls


@pytest.mark.parametrize("kind", ["memory", "inline"])
@pytest.mark.parametrize("stop", STOPS)
def test_S13_the_logging_listener_logs_no_failed_attempt_for_an_interrupted_compensation(
    kind: str, stop: str, store_of: Callable[[], Any], caplog: pytest.LogCaptureFixture
) -> None:
    """``LoggingListener`` says the saga stopped, left COMPENSATING for
    recovery — not that A's compensation (or an attempt of it) failed."""
    # A logger of this run's listener's own: a saga another test left for the
    # collector (freed at interrupted_unwinding's gc.collect(), its listeners
    # told it stopped) logs to "fallback_saga", and is not counted here.
    logger = logging.getLogger("fallback_saga.test_interrupted_unwinding_listeners")
    caplog.set_level(logging.DEBUG, logger="fallback_saga")
    interrupted_unwinding(store_of, Unwinder(stop), stop, LoggingListener(logger))
    lines = [record.getMessage() for record in caplog.records if record.name == logger.name]
    assert not [line for line in lines if "compensate A" in line and "failed" in line], lines
    assert [line for line in lines if "stopped without a final status" in line
            and "the journal says compensating" in line], lines


@pytest.mark.parametrize("kind", ["memory", "inline"])
@pytest.mark.parametrize("stop", STOPS)
def test_S13_the_otel_listener_marks_an_interrupted_compensation_interrupted_not_failed(
    kind: str, stop: str, store_of: Callable[[], Any]
) -> None:
    """The compensation's span ends ``fallback_saga.step.interrupted``, with
    no ERROR status and no ``error.type`` (nor on its duration point), as
    an act a crash interrupted; the run's span ends interrupted, with the
    status the journal holds."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.trace import StatusCode
    from otel_memory import Telemetry, point_attributes

    telemetry = Telemetry()
    listener = telemetry.listener
    interrupted_unwinding(store_of, Unwinder(stop), stop, listener)
    finished = telemetry.spans()
    compensation = [span for span in finished if span.name == "compensate A"]
    assert len(compensation) == 1, [span.name for span in finished]
    attributes = dict(compensation[0].attributes or {})
    assert attributes.get("fallback_saga.step.interrupted") is True, attributes
    assert "error.type" not in attributes, attributes
    assert compensation[0].status.status_code is not StatusCode.ERROR
    run = next(span for span in finished if span.name == "run Interrupted")
    run_attributes = dict(run.attributes or {})
    assert run_attributes.get("fallback_saga.saga.interrupted") is True, run_attributes
    assert run_attributes.get("fallback_saga.saga.status") == "compensating", run_attributes
    points = point_attributes(telemetry, "fallback_saga.step.duration")
    mine = [point for point in points if point["fallback_saga.step.name"] == "A"
            and point["fallback_saga.step.action"] == "compensate"]
    assert mine, points
    assert all("error.type" not in point for point in mine), points
    assert any(point.get("fallback_saga.step.interrupted") is True for point in mine), points
