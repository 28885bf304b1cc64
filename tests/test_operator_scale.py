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
from typing import Any, Final

import pytest

from fallback_saga import SagaStatus, SQLiteSagaStore
from fallback_saga.store import _sqlite_leases, _sqlite_reads, _sqlite_schema, _sqlite_sql


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


_CURSOR_PLACE = _sqlite_reads._ROWID_OF.split("?")[0]


def _listing(**filters: Any) -> Callable[[sqlite3.Cursor], Any]:
    def read(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._list(
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
    read for its status (one random read per saga), no sort. Only the
    sagas in flight are read from the table (for the claim's predicate:
    the counts agree with the listing, S12), walked from the claim's
    index — never a scan of every saga finished years ago."""

    def count(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._count(cursor, None, saga_name, None, None)

    counts = count(year_old.cursor())
    assert sum(counts.values()) == (3000 if saga_name is None else 750)
    plans = _plans(year_old, count)
    in_flight = [plan for plan in plans if "INDEX sagas_by_status (status=?)" in plan]
    assert len(in_flight) == 1, plans
    assert in_flight[0].startswith("SEARCH sagas USING INDEX sagas_by_status (status=?)"), plans
    assert "SCAN" not in in_flight[0], plans
    # Of any status, the rows the listing may leave out (a time that is no
    # finite number, an id that is no text) are sought, each by an index.
    sought = [plan for plan in plans if plan not in in_flight and "COVERING" not in plan]
    assert len(sought) == len(_sqlite_reads._UNLISTED_SEEKS), plans
    for plan in plans:
        assert "TEMP B-TREE" not in plan, plan
        if plan in sought:
            assert plan.startswith("SEARCH sagas USING"), plan
            assert "SCAN" not in plan, plan
        elif plan not in in_flight:
            assert "COVERING INDEX" in plan, plan


@pytest.mark.parametrize("at_most", [10, 5000])
def test_operator_a_capped_count_by_name_walks_a_finished_status_from_the_index_alone(
    year_old: sqlite3.Connection, at_most: int
) -> None:
    """The console's count of one name (``at_most``: its filtered page)
    walks each status that is not in flight from sagas_by_name_status
    alone: no saga finished years ago is read for its row. The few rows
    such a status holds that the listing leaves out (a time that is no
    finite number, an id that is no text: S12) are sought by index, as in
    the whole count; only a status in flight is judged row by row (the
    claim's predicate reads the fence). A cap below the sagas of a status
    (10) and above (5000): the answer is the listing's, up to cap + 1."""

    def count(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._count(cursor, None, "BillingSaga", None, None, at_most)

    exact = dict(year_old.execute(
        "SELECT status, COUNT(*) FROM sagas NOT INDEXED WHERE saga_name = 'BillingSaga'"
        " GROUP BY status"))
    counts = count(year_old.cursor())
    assert {status.value: n for (_, status), n in counts.items()} == {
        status: min(n, at_most + 1) for status, n in exact.items()}
    plans = _plans(year_old, count)
    walked = [plan for plan in plans
              if "INDEX sagas_by_name_status (saga_name=? AND status=?)" in plan]
    # One walk a status (each status's values), and for a status in flight
    # counted exactly, one for the rows it passed: only those read rows.
    finished_walks = [plan for plan in walked
                      if "SEARCH sagas USING COVERING INDEX sagas_by_name_status" in plan]
    in_flight_walks = [plan for plan in walked if plan not in finished_walks]
    assert len(finished_walks) == len(SagaStatus) - len(_sqlite_reads.IN_FLIGHT), plans
    assert len(in_flight_walks) >= len(_sqlite_reads.IN_FLIGHT), plans
    for plan in plans:
        assert "SCAN sagas" not in plan, plan


def test_operator_the_saga_names_are_read_a_seek_a_name_not_every_saga(
    year_old: sqlite3.Connection,
) -> None:
    """The console's name suggestions (``saga_names``) are read a name at a
    time from an index by name, each a seek for the next name: every
    name (two here), and no statement scans the table or the index."""

    def names(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._saga_names(cursor, None, 10)

    assert names(year_old.cursor()) == ["BillingSaga", "OrderSaga"]
    steps = [step for plan in _plans(year_old, names) for step in plan.split(" / ")]
    searches = [step for step in steps if "INDEX sagas_by_name" in step]
    assert searches, steps
    assert all("SEARCH" in step and "COVERING INDEX" in step for step in searches), steps
    assert not any(step.startswith("SCAN sagas") for step in steps), steps


def test_S10_a_claim_still_walks_the_index_of_sagas_in_flight_on_a_file_with_the_new_indexes(
    tmp_path: Path,
) -> None:
    """Recovery's claim (any name) reads the sagas in flight from
    sagas_by_status, which answers their age from the index; the listings'
    index by status alone, which the planner took once ANALYZE had run,
    would make it read every one from the table."""
    _year_old_file(tmp_path / "s.db", analyzed=True)
    conn = sqlite3.connect(tmp_path / "s.db")
    sql = _sqlite_leases._CLAIMABLE
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
        # The index by creation time (schema 6): written by no journal write,
        # nor a status change (only by the INSERT of a saga, and its purge).
        for statement in keeping + changing:
            assert "sagas_by_created" not in _indexes_written(conn, statement), statement
        rows = conn.execute("SELECT saga_id, status, context, version FROM sagas ORDER BY saga_id")
        assert rows.fetchall() == [(i, "completed", '{"n": 1}', 3) for i in ids]
    finally:
        conn.close()


# --------------------------------------------------------------------------- by creation time


@pytest.fixture(params=[True, False], ids=["analyzed", "no-statistics"])
def clock_stepped(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[sqlite3.Connection]:
    """The year-old file (created_at 0 to 2,999 in rowid order), with two
    sagas written while the clock was behind: one among the middle rowids
    at time 10, one newest of all at time 1,100."""
    path = tmp_path / "s.db"
    _year_old_file(path, request.param)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE sagas SET created_at = 10 WHERE saga_id = 's01500'")
    conn.execute(
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at) VALUES ('late', 'BillingSaga', 'f', 'failed', '{}', 1,"
        " 1100, 3000)"
    )
    try:
        yield conn
    finally:
        conn.close()


async def _year_old_store(path: Path) -> None:
    async with SQLiteSagaStore(path):
        pass


def _created(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """The window (and status, name) as a WHERE clause, for the answer read
    without any index."""
    where, values = ["1"], []
    for key, fragment in (("created_since", "created_at >= ?"), ("created_until", "created_at < ?"),
                          ("status", "status = ?"), ("saga_name", "saga_name = ?")):
        if filters.get(key) is not None:
            where.append(fragment)
            values.append(filters[key])
    return " AND ".join(where), values


# A SELECT of scalar subqueries only (the first and last creation time).
_ONE_ROW: Final = "SCAN CONSTANT ROW"

_NARROW: Final = [
    {"created_until": 300},  # the oldest tenth: 2,700 newer sagas above it
    {"created_since": 1000, "created_until": 1300},
    {"created_since": 1000, "created_until": 1300, "status": "failed"},
    {"created_since": 1000, "created_until": 1300, "saga_name": "BillingSaga"},
    {"created_until": -5},  # none
]
_WIDE: Final = [
    {"created_since": 100},
    {"created_until": 2900},
    {"created_since": 100, "created_until": 2900, "status": "failed"},
]


def _ids(filters: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in filters.items())


@pytest.mark.parametrize("filters", _NARROW, ids=_ids)
def test_operator_a_listing_by_creation_time_reads_the_windows_rows_not_every_newer_saga(
    clock_stepped: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """A page of the sagas created in a window (the console's since/until)
    reads the window's bounds from the index by creation time alone, then
    the rows between them in the listing's order: no walk past every saga
    newer than the window (a window a year back: the whole table), no sort
    of the window's sagas. A saga whose time is out of order (the clock
    stepped back) is listed where it belongs all the same."""
    def listing(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._list(
            cursor, None, filters.get("status"), filters.get("saga_name"), 51, None,
            filters.get("created_since"), filters.get("created_until"),
        )

    where, values = _created(filters)
    expected = [saga_id for (saga_id,) in clock_stepped.execute(
        f"SELECT saga_id FROM sagas NOT INDEXED WHERE {where} ORDER BY rowid DESC LIMIT 51",
        values)]
    assert [summary.saga_id for summary in listing(clock_stepped.cursor())] == expected
    plans = _plans(clock_stepped, listing)
    for plan in plans:
        assert "SCAN" not in plan.replace(_ONE_ROW, ""), plan
        assert "TEMP B-TREE" not in plan, plan
    assert any("COVERING INDEX sagas_by_created (created_at" in plan for plan in plans), plans


@pytest.mark.parametrize("filters", _WIDE, ids=_ids)
def test_operator_a_listing_of_a_window_of_most_sagas_is_exact(
    clock_stepped: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """A window of most sagas is walked newest first, as before (what it
    passes over is the few sagas outside the window): the same sagas as a
    read of every row, the one written while the clock was behind too."""
    where, values = _created(filters)
    expected = [saga_id for (saga_id,) in clock_stepped.execute(
        f"SELECT saga_id FROM sagas NOT INDEXED WHERE {where} ORDER BY rowid DESC LIMIT 51",
        values)]
    found = _sqlite_reads._list(
        clock_stepped.cursor(), None, filters.get("status"), None, 51, None,
        filters.get("created_since"), filters.get("created_until"),
    )
    assert [summary.saga_id for summary in found] == expected


@pytest.mark.parametrize("filters", [
    *_NARROW, *_WIDE, {"created_since": 100, "saga_name": "BillingSaga"},
    {"created_since": 1000, "created_until": 1300, "saga_name": "BillingSaga"},
], ids=_ids)
def test_operator_the_consoles_counts_by_creation_time_read_the_window_or_the_rest_not_the_table(
    clock_stepped: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """The counts by (name, status) of a window (every console page with
    since/until counts again: "24h" is another window at each request) read
    the window's rows, or for a window of most sagas every saga from the
    index by (name, status) alone less the few outside it: never every row
    of the table. Exact, the sagas written while the clock was behind too."""
    if "status" in filters:
        return  # counts are by status already
    def count(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._count(
            cursor, None, filters.get("saga_name"), filters.get("created_since"),
            filters.get("created_until"),
        )

    where, values = _created(filters)
    expected = {
        (name, SagaStatus(status)): n for name, status, n in clock_stepped.execute(
            f"SELECT saga_name, status, COUNT(*) FROM sagas NOT INDEXED WHERE {where}"
            " GROUP BY saga_name, status", values)
    }
    assert count(clock_stepped.cursor()) == expected
    for plan in _plans(clock_stepped, count):
        assert "SCAN" not in plan.replace(_ONE_ROW, "") or "COVERING INDEX" in plan, plan


async def test_S13_a_file_of_schema_version_5_gains_the_index_by_creation_time_and_keeps_its_sagas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written at schema version 5 is migrated at the next open with
    write access: the index by creation time is made, and its sagas list and
    count by creation time as before."""
    db = tmp_path / "v5.db"
    with monkeypatch.context() as older:
        older.setattr(_sqlite_schema, "_MIGRATIONS", _sqlite_schema._MIGRATIONS[:5])
        conn = _sqlite_schema._connect_writer(str(db), "full", 5.0)
        conn.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (5,)
        with conn:
            conn.executemany(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                " created_at, updated_at) VALUES (?, 'OrderSaga', 'f', 'failed', '{}', 1, ?, ?)",
                [("old", 1, 1), ("older", 0.5, 0.5), ("new", 100, 100)],
            )
    finally:
        conn.close()
    async with SQLiteSagaStore(db) as store:
        listed = await store.list_sagas(created_until=50)
        assert [summary.saga_id for summary in listed] == ["older", "old"]
        assert await store.count_sagas(created_since=50) == {("OrderSaga", SagaStatus.FAILED): 1}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (
            _sqlite_schema.SCHEMA_VERSION,)
        indexed = [row[2] for row in conn.execute("PRAGMA index_info(sagas_by_created)")]
    finally:
        conn.close()
    assert indexed == ["created_at"]


_CAP: Final = 100


@pytest.mark.parametrize("filters", [
    {"created_since": 100},  # most sagas: 2,900 (57 failed)
    {"created_since": 1000, "created_until": 2500},
    {"created_since": 1000, "created_until": 2500, "saga_name": "BillingSaga"},
    {"created_since": 1000, "created_until": 1300},  # 300: 6 failed, exact
    {"created_until": -5},  # none
], ids=_ids)
def test_operator_a_capped_count_of_a_wide_window_reads_each_status_up_to_the_cap(
    clock_stepped: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """The console's count of a time window holding half the sagas or more
    (``at_most``) reads each status's sagas up to the cap, from the index by
    status between the window's rowids: a status of no more sagas than the
    cap is counted exactly (the one written while the clock was behind too),
    one of more says more than the cap (its counts add up to cap + 1). No
    statement scans the table, nor walks the window's rows."""
    def count(cursor: sqlite3.Cursor) -> Any:
        return _sqlite_reads._count(
            cursor, None, filters.get("saga_name"), filters.get("created_since"),
            filters.get("created_until"), _CAP,
        )

    where, values = _created(filters)
    exact: dict[SagaStatus, int] = {}
    for status, n in clock_stepped.execute(
        f"SELECT status, COUNT(*) FROM sagas NOT INDEXED WHERE {where} GROUP BY status", values
    ):
        exact[SagaStatus(status)] = n
    counted: dict[SagaStatus, int] = {}
    for (_name, status), n in count(clock_stepped.cursor()).items():
        counted[status] = counted.get(status, 0) + n
    assert counted == {status: min(n, _CAP + 1) for status, n in exact.items()}
    plans = _plans(clock_stepped, count)
    # The rows of any status the listing leaves out (a time that is no
    # finite number, an id that is no text), each sought by an index.
    sought = [plan for plan in plans if plan.startswith("SEARCH sagas USING")
              and "rowid>? AND rowid<?" not in plan and "COVERING" not in plan]
    for plan in plans:
        assert "SCAN sagas" not in plan, plan
        if "status=?" in plan and plan not in sought:
            assert "status=? AND rowid>? AND rowid<?" in plan, plan
    # The bounds, then those seeks and a statement a status (none for an
    # empty window); and for a status in flight counted exactly, one for
    # its sagas the listing may leave out (S12: the counts agree with the
    # listing). A finished status's are the seeks'.
    exactly = sum(1 for status in SagaStatus if counted.get(status, 0) <= _CAP
                  and status.value in _sqlite_reads.IN_FLIGHT)
    assert len(sought) == (0 if counted == {} else len(_sqlite_reads._UNLISTED_SEEKS)), plans
    assert len(plans) == (
        1 if counted == {} else 1 + len(sought) + len(SagaStatus) + exactly), plans
