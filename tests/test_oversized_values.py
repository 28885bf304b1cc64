"""Values larger than a store can hold (S12, S13, S14).

SQLite refuses a string or a row longer than its connection's
``SQLITE_LIMIT_LENGTH`` (``SQLITE_TOOBIG``). Such a refusal is for good: the
same write is refused at every retry, and a run left for recovery on it
would have every recovery pass run its step again, for ever. These tests
lower the limit of the store's connections to a few kilobytes (rather than
allocate a gigabyte) and check, with a participant ledger, what each kind of
oversized value does at each point of a run:

* a context too large at creation: refused before any step runs, naming the
  limit (S12) — not "left for recovery", which would never manage;
* a context a step made too large: the run unwinds, the step included (its
  act had its effect), and the saga ends COMPENSATED; nothing for recovery;
* a response too large: journaled as the marker of a response that could
  not be kept (a resumed run gets an ``UnjournaledResponse`` naming the
  limit), and the saga goes on (S14);
* an exception text too large (an act's or, while unwinding, a
  compensation's): journaled cut, so the failure's record lands and the
  saga unwinds (S13);
* one oversized write among others in one transaction fails alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from journal_faults import (
    FAST_JOURNAL_RETRY,
    Boom,
    Ctx,
    Ledger,
    check_caller_matches_journal,
    check_ledger,
    check_no_effect_the_journal_does_not_know,
    journal_of,
)

from fallback_saga import (
    ContextSerializationError,
    RetryPolicy,
    Saga,
    SagaFailed,
    SagaResult,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    UnjournaledResponse,
    recover,
)
from fallback_saga.results import journaled_results
from fallback_saga.store import _sqlite_schema

pytest_plugins = ["conftest_pg", "helpers_stores"]

LIMIT = 20_000  # bytes: SQLITE_LIMIT_LENGTH of the store's connections here
HUGE = 3 * LIMIT  # characters: more than the store holds


@pytest.fixture(params=["sqlite", "sqlite-inline", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """A store that holds at most ``LIMIT`` bytes a value: SQLite with every
    connection's ``SQLITE_LIMIT_LENGTH`` lowered; PostgreSQL (whose own limit,
    1 GiB, cannot be lowered) with the store's measure of it lowered. SQLite
    with its writer thread, and with writes made on the loop's own thread
    (``writer="inline"``)."""
    if request.param.startswith("sqlite"):
        connect = _sqlite_schema._connect

        def lowered(path: str, busy_timeout: float) -> sqlite3.Connection:
            conn = connect(path, busy_timeout)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)
            return conn

        monkeypatch.setattr(_sqlite_schema, "_connect", lowered)
        writer = "inline" if request.param == "sqlite-inline" else "thread"
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer=writer) as sqlite:
            yield sqlite
        return
    from fallback_saga.store import _postgres_oversize
    from fallback_saga.store.postgres import PostgresSagaStore

    monkeypatch.setattr(_postgres_oversize, "MAX_STATEMENT_TEXT", LIMIT)
    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as pg:
        yield pg


def limit_named(store: Any) -> str:
    return (
        "SQLITE_LIMIT_LENGTH" if isinstance(store, SQLiteSagaStore) else "MAX_STATEMENT_TEXT"
    )


def saga_of(ledger: Ledger, store: Any, oversized: str) -> Saga[Ctx]:
    """``Reserve`` then ``Charge``; ``oversized`` says what ``Charge`` makes too
    large: its ``context``, its ``response``, its act's ``error``, or its
    compensation's error (``compensation_error``: its act then leaves the
    context too large, so that it is compensated); or ``Reserve``'s
    compensation leaves the context too large (``compensation_context``:
    ``Charge`` then fails)."""

    class Reserve:
        async def act(self, ctx: Ctx) -> str:
            ledger.call("act", "ok")
            ctx.marks.append("reserved")
            return "r-1"

        async def compensate(self, ctx: Ctx) -> None:
            ledger.call("compensate", "ok")
            if oversized == "compensation_context":
                ctx.marks.append("v" * HUGE)

    class Charge:
        async def act(self, ctx: Ctx) -> str:
            if oversized == "compensation_context":
                ledger.call("act", "always")  # raises Boom: a business failure
            if oversized == "error":
                try:
                    ledger.call("act", "always")  # the participant applies nothing
                except Boom as error:
                    raise RuntimeError("declined: " + "x" * HUGE) from error
            ledger.call("act", "ok")
            if oversized in ("context", "compensation_error"):
                ctx.marks.append("y" * HUGE)
            if oversized == "response":
                return "z" * HUGE
            return "c-1"

        async def compensate(self, ctx: Ctx) -> None:
            if oversized == "compensation_error":
                try:
                    ledger.call("compensate", "always")
                except Boom as error:
                    raise RuntimeError("refund refused: " + "w" * HUGE) from error
            ledger.call("compensate", "ok")

    class Order(Saga[Ctx]):
        steps = [Reserve, Charge]

    return Order(
        store=store, journal_retry=FAST_JOURNAL_RETRY,
        compensation_retry=RetryPolicy(attempts=1, delay=0.0, jitter=0.0),
    )


async def run_then_recover(
    saga: Saga[Ctx], store: Any, ledger: Ledger, ctx: Ctx, saga_id: str
) -> tuple[object, Any]:
    """Run the saga, then recover twice; the outcome the caller got and the
    journal. Recovery finds nothing to do: the ledger stays as the run left it."""
    outcome: object
    try:
        outcome = await saga.run(ctx, saga_id=saga_id)
    except Exception as error:
        outcome = error
    calls = list(ledger.of(saga_id))
    record = await journal_of(store, saga_id)
    for _ in range(2):
        report = await recover(store, [saga], older_than=0)
        assert not report.interrupted, report
    assert ledger.of(saga_id) == calls, "recovery ran a step again"
    assert await journal_of(store, saga_id) == record
    check_no_effect_the_journal_does_not_know(calls, record)
    check_caller_matches_journal(outcome, record, cancel_with_store_up=True)
    return outcome, record


async def test_S12_a_context_too_large_for_the_store_is_refused_before_any_step(
    store: Any,
) -> None:
    ledger = Ledger()
    saga = saga_of(ledger, store, "none")
    with pytest.raises(ContextSerializationError) as refused:
        await saga.run(Ctx(order_id="o-1", marks=["q" * HUGE]), saga_id="o-1")
    assert limit_named(store) in str(refused.value)
    assert f"{LIMIT} bytes" in str(refused.value)
    assert refused.value.path == "<context>"
    assert ledger.calls == []
    assert await journal_of(store, "o-1") is None
    report = await recover(store, [saga], older_than=0)
    assert report.total == 0
    assert ledger.calls == []


async def test_S13_a_context_a_step_made_too_large_unwinds_that_step_too(
    store: Any,
) -> None:
    ledger = Ledger()
    saga = saga_of(ledger, store, "context")
    outcome, record = await run_then_recover(saga, store, ledger, Ctx(order_id="o-2"), "o-2")
    assert isinstance(outcome, SagaFailed), outcome
    assert isinstance(outcome.error, ContextSerializationError)
    assert limit_named(store) in str(outcome.error)
    assert record.status is SagaStatus.COMPENSATED
    # Both acts had their effect; both are undone, once each.
    check_ledger(ledger.of("o-2"), record, {})
    assert [(c.step, c.action, c.applied) for c in ledger.of("o-2")] == [
        ("Reserve", "act", True), ("Charge", "act", True),
        ("Charge", "compensate", True), ("Reserve", "compensate", True),
    ]


async def test_S14_a_response_too_large_for_the_store_is_journaled_as_unjournaled(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger()
    saga = saga_of(ledger, store, "response")
    outcome, record = await run_then_recover(saga, store, ledger, Ctx(order_id="o-3"), "o-3")
    assert isinstance(outcome, SagaResult), outcome
    assert outcome.results[1].response == "z" * HUGE  # this run returns it
    assert record.status is SagaStatus.COMPLETED
    check_ledger(ledger.of("o-3"), record, {})
    kept = [result.response for result in journaled_results(record)]
    assert kept[0] == "r-1"
    lost = kept[1]
    assert isinstance(lost, UnjournaledResponse), lost
    assert (lost.step_name, lost.type_name) == ("Charge", "str")
    assert limit_named(store) in lost.reason
    assert "too large to journal" in caplog.text
    assert "z" * 100 not in caplog.text  # never the value


async def test_S13_a_context_a_compensation_made_too_large_does_not_stop_the_unwinding(
    store: Any,
) -> None:
    """The journal keeps the last context it could hold and the unwinding
    goes on: stopped there, the saga would be left COMPENSATING for a
    recovery whose compensation would leave the same context, to be refused
    again, at every pass."""
    ledger = Ledger()
    saga = saga_of(ledger, store, "compensation_context")
    outcome, record = await run_then_recover(saga, store, ledger, Ctx(order_id="o-7"), "o-7")
    assert isinstance(outcome, SagaFailed), outcome
    assert isinstance(outcome.error, Boom)
    assert record.status is SagaStatus.COMPENSATED
    check_ledger(ledger.of("o-7"), record, {})
    assert [(c.step, c.action, c.applied) for c in ledger.of("o-7")] == [
        ("Reserve", "act", True), ("Charge", "act", False), ("Reserve", "compensate", True),
    ]
    assert record.context["marks"] == ["reserved"]  # the last context the journal could hold


@pytest.mark.parametrize("where", ["error", "compensation_error"])
async def test_S13_an_exception_text_too_large_for_the_store_is_journaled_cut(
    store: Any, where: str
) -> None:
    ledger = Ledger()
    saga = saga_of(ledger, store, where)
    outcome, record = await run_then_recover(saga, store, ledger, Ctx(order_id="o-4"), "o-4")
    assert isinstance(outcome, SagaFailed), outcome
    failed = [e for e in record.history if e.status is StepStatus.FAILED]
    assert len(failed) == 1
    text = failed[0].error
    assert text is not None
    assert text.startswith("RuntimeError: ")
    assert len(text) < HUGE // 10  # its head: MAX_ERROR_TEXT characters
    assert "more characters not journaled" in text
    if where == "error":
        # The act failed without effect: only Reserve is undone.
        assert record.status is SagaStatus.COMPENSATED
        check_ledger(ledger.of("o-4"), record, {})
    else:
        # Charge's compensation failed for good: FAILED, Reserve still undone once.
        assert record.status is SagaStatus.FAILED
        undone = [c.step for c in ledger.of("o-4") if c.action == "compensate" and c.applied]
        assert undone == ["Reserve"]


async def test_S13_an_oversized_write_among_others_fails_alone(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes of many sagas share a transaction: the one too large is made to
    fit or refused on its own; the others land as they are. On PostgreSQL
    they are a quarter of the limit each, so that a group of them is more
    than one statement can carry: no statement carries more."""
    sent: list[int] = []
    if not isinstance(store, SQLiteSagaStore):
        from fallback_saga.store import _postgres_fetch, _postgres_writes

        query = _postgres_writes._query

        async def measured(conn: Any, statement: str, params: Any = None, *rest: Any) -> Any:
            sent.append(sum(len(p) for p in params or () if isinstance(p, str)))
            return await query(conn, statement, params, *rest)

        # The group's statements (_postgres_writes) and each write alone (_fetch).
        monkeypatch.setattr(_postgres_writes, "_query", measured)
        monkeypatch.setattr(_postgres_fetch, "_query", measured)
    ledger = Ledger()
    plain = saga_of(ledger, store, "none")
    grown = saga_of(ledger, store, "context")
    large = saga_of(ledger, store, "response")
    ids = [f"g-{n}" for n in range(12)]
    outcomes = await asyncio.gather(
        *(
            (grown if n == 5 else large if n == 7 else plain).run(
                Ctx(order_id=saga_id, marks=["m" * (LIMIT // 4)]), saga_id=saga_id
            )
            for n, saga_id in enumerate(ids)
        ),
        return_exceptions=True,
    )
    records = [await journal_of(store, saga_id) for saga_id in ids]
    report = await recover(store, [plain], older_than=0)
    if getattr(store, "writer", None) != "inline":  # writes made one by one, on the loop
        assert store.stats.largest_group > 1, "the writes never shared a transaction"
    assert report.total == 0
    for n, (outcome, record) in enumerate(zip(outcomes, records, strict=True)):
        check_caller_matches_journal(outcome, record, cancel_with_store_up=True)
        check_ledger(ledger.of(ids[n]), record, {})
        expected = SagaStatus.COMPENSATED if n == 5 else SagaStatus.COMPLETED
        assert record is not None
        assert record.status is expected, (n, outcome)
    assert max(sent, default=0) <= LIMIT


async def test_S13_an_exception_text_is_journaled_cut_on_every_store(every_store: Any) -> None:
    """Whatever the store: an exception's text is journaled cut to
    ``MAX_ERROR_TEXT`` characters, saying how many were left out — a failure's
    record must fit any store's text column (PostgreSQL's is 1 GB, SQLite's
    SQLITE_LIMIT_LENGTH), or the failure could never be journaled and the
    saga never unwound."""
    from fallback_saga.store._responses import MAX_ERROR_TEXT

    ledger = Ledger()
    saga = saga_of(ledger, every_store, "error")
    with pytest.raises(SagaFailed) as failed:
        await saga.run(Ctx(order_id="o-6"), saga_id="o-6")
    assert len(str(failed.value.error)) > HUGE  # the caller gets the exception whole
    record = await journal_of(every_store, "o-6")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    check_ledger(ledger.of("o-6"), record, {})
    (text,) = [e.error for e in record.history if e.status is StepStatus.FAILED]
    assert text is not None
    assert text.startswith("RuntimeError: declined: xxx")
    cut = len("RuntimeError: declined: ") + HUGE - MAX_ERROR_TEXT
    assert text == text[:MAX_ERROR_TEXT] + f"… [{cut} more characters not journaled]"


def test_S12_the_writer_process_hands_a_context_refusal_over_as_itself() -> None:
    """``SQLiteSagaStore(writer="process")`` runs the same writer code in a
    child (whose limit a test cannot lower): the refusal of a context too
    large crosses the pipe as a ``ContextSerializationError`` — which the
    executor takes as definitive — not as a generic store error that it
    would retry and then leave for recovery."""
    from fallback_saga.store._sqlite_oversize import fit_oversized
    from fallback_saga.store._sqlite_pipe import error_from_wire, error_to_wire, frame
    from fallback_saga.store._sqlite_sql import _append, _create, _Request

    conn = sqlite3.connect(":memory:")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)
    request = _Request(_create, ("s-1", "Order", "fp", "running", "x" * HUGE, ()),
                       None, None, True)  # type: ignore[arg-type]
    refusal = fit_oversized(conn, request, "sagas.db")
    assert isinstance(refusal, ContextSerializationError)
    frame(error_to_wire(refusal))  # plain values only: marshal takes them
    back = error_from_wire(error_to_wire(refusal))
    assert type(back) is ContextSerializationError
    assert str(back) == str(refusal)
    assert back.path == "<context>"
    # The pipe carries entries as plain 9-tuples: a response too large is
    # replaced there too, and the entry stays a plain tuple for marshal.
    row = (1, "Charge", "primary", "act", "completed", 1, None, 1.5, '"' + "z" * HUGE + '"')
    request = _Request(_append, ("s-1", (row,), None, None, None, 1),
                       None, None, True)  # type: ignore[arg-type]
    fitted = fit_oversized(conn, request, "sagas.db")
    assert isinstance(fitted, _Request)
    (entry,) = fitted.args[1]
    assert type(entry) is tuple
    assert entry[:8] == row[:8]
    assert "unjournaled" in entry[8]
    assert "SQLITE_LIMIT_LENGTH" in entry[8]
    frame(fitted.args)


async def test_S13_a_nul_a_compensation_left_in_the_context_does_not_stop_the_unwinding(
    pg_conninfo: str, pg_schema: str
) -> None:
    """The same rule for the other context PostgreSQL refuses at the write:
    one holding a NUL character, left by a compensation."""
    from fallback_saga.store.postgres import PostgresSagaStore

    ledger = Ledger()

    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            ledger.call("act", "ok")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.call("compensate", "ok")
            ctx.marks.append("released\x00")

    class Charge:
        async def act(self, ctx: Ctx) -> None:
            ledger.call("act", "always")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.call("compensate", "ok")

    class Order(Saga[Ctx]):
        steps = [Reserve, Charge]

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) as store:
        saga = Order(store=store, journal_retry=FAST_JOURNAL_RETRY)
        outcome, record = await run_then_recover(saga, store, ledger, Ctx(order_id="o-8"), "o-8")
    assert isinstance(outcome, SagaFailed), outcome
    assert record.status is SagaStatus.COMPENSATED
    check_ledger(ledger.of("o-8"), record, {})
    assert record.context["marks"] == []
