"""The operator's reads of a SQLite store that has run for a year: what a
page of ``list`` / the console and the console's counts read must not grow
with the finished sagas the file holds.

Each rule is checked on the query plan SQLite makes for the statements the
store really sends (caught with a trace callback), on a file of many
finished sagas and a few in flight, with statistics (``ANALYZE``, as
``PRAGMA optimize`` leaves them) and without. No timing: the measured cost is
in benchmarks/README.md ("The operator's paths on a store a year old").
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import SagaStatus, SQLiteSagaStore
from fallback_saga.store import _sqlite_schema, _sqlite_sql


def _year_old_file(path: Path, analyzed: bool) -> None:
    """A store's file: 3,000 finished sagas of two names, the few in flight
    among the oldest (stuck a month ago); statistics gathered or not."""

    async def make() -> None:
        async with SQLiteSagaStore(path):
            pass

    asyncio.run(make())
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                " created_at, updated_at) VALUES (?, ?, 'f', ?, '{}', 1, ?, ?)",
                [(f"s{n:05d}", "OrderSaga" if n % 4 else "BillingSaga",
                  "running" if n < 5 else "failed" if n % 50 == 0 else "completed", n, n)
                 for n in range(3000)],
            )
        if analyzed:
            conn.execute("ANALYZE")
    finally:
        conn.close()


@pytest.fixture(params=[True, False], ids=["analyzed", "no-statistics"])
def year_old(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[sqlite3.Connection]:
    path = tmp_path / "s.db"
    _year_old_file(path, request.param)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _plans(
    conn: sqlite3.Connection, read: Callable[[sqlite3.Cursor], Any]
) -> list[str]:
    """The plan of every statement ``read`` sends on ``conn`` (each with its
    values, as sent), but the look-up of a listing's cursor by id."""
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        read(conn.cursor())
    finally:
        conn.set_trace_callback(None)
    assert sent
    return [
        " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
        for statement in sent
        if not statement.startswith(_CURSOR_PLACE)
    ]


_CURSOR_PLACE = _sqlite_sql._ROWID_OF.split("?")[0]


def _listing(**filters: Any) -> Callable[[sqlite3.Cursor], Any]:
    def read(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_sql._list(
            cursor, None, filters.get("status"), filters.get("saga_name"),
            filters.get("limit", 51), filters.get("before"),
        )
    return read


@pytest.mark.parametrize("filters", [
    {"status": "running"},  # five, all among the oldest: the on-call's first look
    {"status": "pending"},  # none at all
    {"status": "completed"},
    {"status": "failed", "before": "s02000"},  # a later page
    {"status": "compensating", "saga_name": "BillingSaga"},
    {"status": "failed", "saga_name": "BillingSaga"},
], ids=lambda filters: ",".join(f"{k}={v}" for k, v in filters.items()))
def test_operator_a_listing_by_status_reads_its_page_from_an_index_not_the_whole_table(
    year_old: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """A page of sagas with a status (and name), newest first, is read from
    an index in the listing's order and stops at its LIMIT: no scan of the
    table (which reads every saga when the status is rare among the newest
    ones), no sort of every saga with that status."""
    listing = _listing(**filters)
    found = listing(year_old.cursor())
    assert all(summary.status is SagaStatus(filters["status"]) for summary in found)
    for plan in _plans(year_old, listing):
        assert "SCAN" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan
        # Searched by status: not every saga of the name, nor every one
        # older than the cursor.
        assert "status=?" in plan, plan


@pytest.mark.parametrize("saga_name", [None, "BillingSaga"])
def test_operator_the_consoles_counts_read_an_index_alone(
    year_old: sqlite3.Connection, saga_name: str | None
) -> None:
    """The counts by (name, status) that every console page and /metrics
    scrape shows are read from one index, in its order: no table row is
    read for its status (one random read per saga), no sort."""

    def count(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_sql._count(cursor, None, saga_name, None, None)

    counts = count(year_old.cursor())
    assert sum(counts.values()) == (3000 if saga_name is None else 750)
    for plan in _plans(year_old, count):
        assert "COVERING INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_S10_a_claim_still_walks_the_index_of_sagas_in_flight_on_a_file_with_the_new_indexes(
    tmp_path: Path,
) -> None:
    """Recovery's claim (any name) reads the sagas in flight from
    sagas_by_status, which answers their age from the index; the listings'
    index by status alone, which the planner took once ANALYZE had run,
    would make it read every one from the table."""
    _year_old_file(tmp_path / "s.db", analyzed=True)
    conn = sqlite3.connect(tmp_path / "s.db")
    sql = _sqlite_sql._CLAIMABLE
    try:
        plan = " / ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?")))
    finally:
        conn.close()
    assert "USING INDEX sagas_by_status " in plan, plan
    assert "SCAN" not in plan, plan


async def test_S13_a_file_of_schema_version_4_gains_the_listing_indexes_and_keeps_its_sagas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written at schema version 4 (the release before the listing
    indexes) is migrated at the next open with write access: both indexes
    are made, the version moves on, and its sagas read as before."""
    db = tmp_path / "v4.db"
    with monkeypatch.context() as older:
        older.setattr(_sqlite_schema, "_MIGRATIONS", _sqlite_schema._MIGRATIONS[:4])
        conn = _sqlite_schema._connect_writer(str(db), "full", 5.0)
        conn.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        with conn:
            conn.execute(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                " created_at, updated_at) VALUES ('old', 'OrderSaga', 'f', 'failed', '{}', 1,"
                " 1, 1)"
            )
    finally:
        conn.close()
    async with SQLiteSagaStore(db) as store:
        listed = await store.list_sagas(status=SagaStatus.FAILED, saga_name="OrderSaga")
        assert [summary.saga_id for summary in listed] == ["old"]
        assert await store.count_sagas() == {("OrderSaga", SagaStatus.FAILED): 1}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (
            _sqlite_schema.SCHEMA_VERSION,)
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sagas'")}
    finally:
        conn.close()
    assert {"sagas_listed_by_status", "sagas_by_name_status"} <= indexes


def _indexes_written(conn: sqlite3.Connection, statement: str) -> set[str]:
    """The indexes of the sagas table that ``statement`` opens for writing
    (its program's OpenWrite cursors, named by their root pages)."""
    roots = {
        root: name for name, root in conn.execute(
            "SELECT name, rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sagas'"
        )
    }
    return {
        roots[row[3]] for row in conn.execute("EXPLAIN " + statement)
        if row[1] == "OpenWrite" and row[3] in roots  # (addr, opcode, p1, p2: the root page, …)
    }


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_operator_the_listing_indexes_are_written_only_when_a_saga_changes_status(
    tmp_path: Path, batched: bool
) -> None:
    """Every journal write of a saga updates its row, but only its last one
    (mostly) changes its status: the indexes on the status that the
    listings and counts read (schema 5) are rewritten by the writes that
    change the status, not by every write of every saga — SQLite rewrites
    every index on a column the UPDATE names, whether its value changed or
    not. The claim's index (on status and the time of the last write) is
    rewritten by every write, as it must be."""
    path = tmp_path / "s.db"
    asyncio.run(_year_old_store(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        cursor = conn.cursor()
        txn = _sqlite_sql._Txn(1.0, {})
        loop = asyncio.new_event_loop()
        try:
            def request(op: Callable[..., Any], *args: Any) -> _sqlite_sql._Request:
                return _sqlite_sql._Request(op, args, loop, loop.create_future(), True)

            def run(*requests: _sqlite_sql._Request) -> list[str]:
                sent: list[str] = []
                conn.set_trace_callback(sent.append)
                try:
                    outcomes: list[Any] = [None] * len(requests)
                    if batched:
                        _sqlite_sql._run_group(cursor, txn, list(requests), outcomes)
                    else:
                        _sqlite_sql._run_alone(
                            cursor, txn, list(requests), list(range(len(requests))), outcomes
                        )
                    txn.flush(cursor)
                finally:
                    conn.set_trace_callback(None)
                assert all(outcome[1] for outcome in outcomes), outcomes
                return [statement for statement in sent if statement.startswith("UPDATE sagas")]

            ids = ("a1", "a2")
            run(*(request(_sqlite_sql._create, i, "OrderSaga", "f", "running", "{}", ())
                  for i in ids))
            keeping = run(*(request(_sqlite_sql._append, i, (), None, '{"n": 1}', None, None)
                            for i in ids))
            changing = run(*(request(_sqlite_sql._append, i, (), "completed", None, None, None)
                             for i in ids))
        finally:
            loop.close()
        assert keeping
        assert changing
        listing_indexes = {"sagas_listed_by_status", "sagas_by_name_status"}
        for statement in keeping:
            written = _indexes_written(conn, statement)
            assert "sagas_by_status" in written  # the claim's: updated_at moved
            assert not written & listing_indexes, statement
        for statement in changing:
            assert listing_indexes <= _indexes_written(conn, statement), statement
        rows = conn.execute("SELECT saga_id, status, context, version FROM sagas ORDER BY saga_id")
        assert rows.fetchall() == [(i, "completed", '{"n": 1}', 3) for i in ids]
    finally:
        conn.close()


async def _year_old_store(path: Path) -> None:
    async with SQLiteSagaStore(path):
        pass
