"""Error texts quoted in messages and log lines are cut (S7, S12, S13).

An exception's text is whatever the exception says: an HTTP client's error
may quote a whole response body, megabytes of it. The journal keeps its
first ``MAX_ERROR_TEXT`` characters; the messages of the library's own
exceptions (``SagaFailed``, ``SagaInterrupted``), the reasons a recovery
reports and the lines the library logs quote it cut the same way, saying how
much was left out. The exception itself stays whole where the caller gets
it (``.error``, ``.failure``, ``__cause__``).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
from helpers_saga import Boom, OrderCtx, Probe, declare

from fallback_saga import (
    LoggingListener,
    MemorySagaStore,
    SagaFailed,
    SagaInterrupted,
    SagaStatus,
    SagaStoreError,
    SQLiteSagaStore,
    recover,
)
from fallback_saga.store._responses import MAX_ERROR_TEXT

HUGE = 1_000_000
# A message quoting one or two cut texts, and its own words around them.
MOST = 2 * MAX_ERROR_TEXT + 1_000


def _huge(head: str) -> Boom:
    return Boom(head + "x" * HUGE)


def test_S13_saga_interrupted_quotes_the_business_and_store_errors_cut() -> None:
    failure = _huge("card declined: ")
    store_error = SagaStoreError("disk full: " + "y" * HUGE)
    interrupted = SagaInterrupted(
        saga_id="o-1", saga_name="Shop", status=SagaStatus.COMPENSATING,
        error=store_error, failure=failure,
    )
    text = str(interrupted)
    assert len(text) < MOST
    assert "Boom: card declined: xxx" in text
    assert "SagaStoreError: disk full: yyy" in text
    assert text.count("more characters not shown") == 2
    assert "left compensating in the store for recovery" in text  # the end is kept
    # The exceptions themselves are whole, pickled or not.
    assert interrupted.failure is failure
    assert interrupted.error is store_error
    again = pickle.loads(pickle.dumps(interrupted))
    assert len(str(again.failure)) > HUGE
    assert str(again) == text


async def test_S7_saga_failed_quotes_its_error_cut() -> None:
    saga = declare(Probe("Reserve", []), Probe("Charge", [], error=lambda: _huge("declined: ")))()
    with pytest.raises(SagaFailed) as failed:
        await saga.run(OrderCtx(), saga_id="o-2")
    text = str(failed.value)
    assert len(text) < MOST
    assert "Boom: declined: xxx" in text
    assert "more characters not shown" in text
    assert text.endswith("status compensated")
    assert len(str(failed.value.error)) > HUGE  # the caller gets the exception whole
    assert len(repr(failed.value)) < MOST


async def test_S12_log_lines_quote_error_texts_cut(caplog: pytest.LogCaptureFixture) -> None:
    """What ``LoggingListener`` logs of a failing saga: the act's error, the
    compensation's, the saga's end — each quoted cut."""
    saga = declare(
        Probe("Reserve", [], comp_error=lambda: _huge("undo failed: "), comp_fail_times=1),
        Probe("Charge", [], error=lambda: _huge("declined: ")),
    )(listeners=[LoggingListener()], store=MemorySagaStore())
    with caplog.at_level(logging.DEBUG, logger="fallback_saga"), pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="o-3")
    messages = [record.getMessage() for record in caplog.records]
    quoting = [message for message in messages if "xxxx" in message]
    assert len(quoting) >= 3  # the act's failure, the compensate attempt's, the saga's end
    assert all(len(message) < MOST for message in messages)
    assert all("more characters not shown" in message for message in quoting)


async def test_S12_recovery_reports_a_store_error_cut(tmp_path: Path) -> None:
    """A saga whose record the store fails to load is reported interrupted
    (left for the next pass); the reason the report (and a worker's
    warning) gives quotes the store's error cut."""
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        saga = declare(Probe("Reserve", []))(store=store)
        await store.create("o-4", "TestSaga", "fp", {}, [])
        load = store.load

        async def failing_load(saga_id: str) -> Any:
            if saga_id == "o-4":
                raise SagaStoreError("unreadable: " + "z" * HUGE)
            return await load(saga_id)

        store.load = failing_load  # type: ignore[method-assign]
        report = await recover(store, [saga], older_than=0)
    assert report.skipped == []
    ((saga_id, reason),) = report.interrupted
    assert saga_id == "o-4"
    assert reason.startswith("the store failed to read it (SagaStoreError: unreadable: zzz")
    assert len(reason) < MOST
    assert "more characters not shown" in reason
