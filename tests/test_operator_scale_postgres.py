"""The operator's reads of a PostgreSQL store that has run for a year: a page
of ``list`` / the console by status (and name) is read from an index in the
listing's order and stops at its LIMIT, whatever the finished sagas the
table holds. Checked on the plan the server makes for the statements the
store really sends, with the statistics of a big table (``ANALYZE``); the
measured cost is in benchmarks/README.md ("The operator's paths on a store
a year old").
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest_pg import require_driver

from fallback_saga import SagaStatus
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

from pg_fixtures import postgres_store, raw_connection  # noqa: E402, F401  (fixtures store, raw)

from fallback_saga.store import _postgres_schema as pg_schema_module  # noqa: E402
from fallback_saga.store.postgres import SCHEMA_VERSION, PostgresSagaStore  # noqa: E402


def _insert_year_old(raw: Any) -> None:
    """20,000 finished sagas of two names; five RUNNING ones, the oldest
    (stuck a month ago)."""
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 's' || lpad(n::text, 6, '0'),"
        " CASE WHEN n % 4 = 0 THEN 'BillingSaga' ELSE 'OrderSaga' END, 'fp',"
        " CASE WHEN n < 5 THEN 'running' WHEN n % 50 = 0 THEN 'failed' ELSE 'completed' END,"
        " '{}' FROM generate_series(0, 19999) n"
    )


def _year_old(raw: Any) -> None:
    """``_insert_year_old``, statistics gathered."""
    _insert_year_old(raw)
    raw.execute("ANALYZE fallback_saga_sagas")


def _recorded_statements(store: PostgresSagaStore, monkeypatch: pytest.MonkeyPatch,
                         but: str | None = None) -> list[tuple[str, list[Any]]]:
    """The statements (with their values) the store sends from now until
    ``monkeypatch.undo()``, leaving out ``but``."""
    sent: list[tuple[str, list[Any]]] = []
    fetch = store._fetch

    async def recorded(doing: str, statement: str, values: Any = (), **kwargs: Any) -> Any:
        if statement != but:
            sent.append((statement, list(values)))
        return await fetch(doing, statement, values, **kwargs)

    monkeypatch.setattr(store, "_fetch", recorded)
    return sent


async def _sent(store: PostgresSagaStore, monkeypatch: pytest.MonkeyPatch,
                **filters: Any) -> tuple[list[Any], list[tuple[str, list[Any]]]]:
    """What ``list_sagas(**filters)`` returns, and the statements it sent
    (with their values), but the look-up of its cursor by id."""
    sent = _recorded_statements(store, monkeypatch, but=store._sql.seq_of)
    found = await store.list_sagas(**filters)
    monkeypatch.undo()
    assert sent
    return found, sent


# (RUNNING and COMPENSATING pages were bounded already: the planner reads
# them from the partial index of the sagas in flight.)
@pytest.mark.parametrize("filters", [
    {"status": SagaStatus.PENDING},  # none at all
    {"status": SagaStatus.FAILED, "before": "s010000"},  # 2 %, a later page
    {"status": SagaStatus.FAILED, "saga_name": "BillingSaga"},
], ids=lambda filters: ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in filters.items()))
async def test_operator_a_listing_by_status_reads_its_page_from_an_index_not_the_whole_table(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch,
    filters: dict[str, Any],
) -> None:
    """A page of sagas with a status (and name), newest first, reads a
    bounded number of rows, whatever the finished sagas the table holds: no
    scan of the table, no walk of every saga (by seq, or of the name)
    filtered for the status, no sort of every saga with that status. (The
    planner may take the index by status, or for the sagas in flight the
    partial index that holds only them; a common status may be filtered
    from the walk by seq, which then finds its page at once.)"""
    _year_old(raw)
    found, sent = await _sent(store, monkeypatch, limit=51, **filters)
    assert all(summary.status is filters["status"] for summary in found)
    assert len(found) == (0 if filters["status"] is SagaStatus.PENDING else 51)
    for statement, values in sent:
        plan = [row[0] for row in raw.execute("EXPLAIN (ANALYZE) " + statement, values)]
        text = "\n".join(plan)
        assert "Seq Scan" not in text, text
        scanned = [int(m.group(1)) for line in plan if "Scan" in line
                   for m in [re.search(r"actual time=\S+ rows=(\d+)", line)] if m]
        removed = [int(m.group(1)) for line in plan
                   for m in [re.search(r"Rows Removed by Filter: (\d+)", line)] if m]
        assert scanned, text
        assert max(scanned) <= _ROWS_A_PAGE, text
        assert sum(removed) <= _ROWS_A_PAGE, text


# Rows a page of 51 may read: the page and a few passed over (20,000 sagas
# in the table: a walk filtered for a rare status reads thousands).
_ROWS_A_PAGE = 200


async def test_S13_schema_v7_is_migrated_to_v8_in_place_keeping_every_saga(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written at schema v7 (the release before the listing
    indexes) gains both indexes at the next open with write access, without
    rewriting the table; its sagas list, count and claim as before."""
    with monkeypatch.context() as v7:
        v7.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:7])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            await old.create("a", "OrderSaga", "fp", {"n": 1}, [entry(0, "a")])
            await old.create("b", "OrderSaga", "fp", {"n": 2}, [entry(0, "a")])
            await old.append("b", [], status=SagaStatus.COMPLETED)
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (7,)
    relfile = raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.open()
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
            SCHEMA_VERSION,)
        assert raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone() == (
            relfile)
        indexes = {name for (name,) in raw.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'fallback_saga_sagas'")}
        assert {"fallback_saga_sagas_by_status", "fallback_saga_sagas_by_name_status"} <= indexes
        listed = await store.list_sagas(status=SagaStatus.COMPLETED, saga_name="OrderSaga")
        assert [summary.saga_id for summary in listed] == ["b"]
        assert await store.count_sagas() == {
            ("OrderSaga", SagaStatus.RUNNING): 1, ("OrderSaga", SagaStatus.COMPLETED): 1}
        (lease,) = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
        assert lease.saga_id == "a"


# --------------------------------------------------------------------------- by creation time

_T0 = 1_700_000_000  # the first saga's creation time; one a minute after it


def _year_old_by_time(raw: Any) -> None:
    """The year-old table, its sagas created a minute apart in seq order,
    and two written while the clock was behind: one among the middle seqs
    at the time of the tenth saga, one newest of all at that of the 11,000th."""
    _year_old(raw)
    raw.execute(
        "UPDATE fallback_saga_sagas SET created_at = to_timestamp(%s::float8 + (seq - 1) * 60)",
        (_T0,))
    raw.execute(
        "UPDATE fallback_saga_sagas SET created_at = to_timestamp(%s::float8 + 10 * 60)"
        " WHERE saga_id = 's010000'", (_T0,))
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context,"
        " created_at) VALUES ('late', 'BillingSaga', 'fp', 'failed', '{}',"
        " to_timestamp(%s::float8 + 11000 * 60))", (_T0,))
    raw.execute("VACUUM ANALYZE fallback_saga_sagas")  # as autovacuum would


def _at(minute: int | None) -> float | None:
    return None if minute is None else _T0 + minute * 60.0


def _expected(raw: Any, filters: dict[str, Any], select: str, tail: str) -> list[Any]:
    where, values = ["true"], []
    for key, fragment in (("created_since", "created_at >= to_timestamp(%s::float8)"),
                          ("created_until", "created_at < to_timestamp(%s::float8)"),
                          ("status", "status = %s"), ("saga_name", "saga_name = %s")):
        if filters.get(key) is not None:
            where.append(fragment)
            values.append(getattr(filters[key], "value", filters[key]))
    return list(raw.execute(
        f"SELECT {select} FROM fallback_saga_sagas WHERE {' AND '.join(where)} {tail}", values))


def _scanned(raw: Any, statement: str, values: list[Any]) -> tuple[str, list[tuple[str, int]]]:
    """The plan of a statement as run, and each scan in it (its line and
    conditions) with the rows it read (its rows and those its filter removed)."""
    plan = [row[0] for row in raw.execute("EXPLAIN (ANALYZE) " + statement, values)]
    scans: list[tuple[str, int]] = []
    inside = False
    for line in plan:
        if m := re.search(r"Scan[^(]*\(.*actual time=\S+ rows=(\d+) loops=(\d+)", line):
            scans.append((line.strip(), int(m.group(1)) * int(m.group(2))))
            inside = True
        elif "->" in line or "InitPlan" in line:
            inside = False
        elif inside:
            text, rows = scans[-1]
            removed = re.search(r"Rows Removed by Filter: (\d+)", line)
            scans[-1] = (f"{text}\n{line.strip()}", rows + int(removed.group(1) if removed else 0))
    return "\n".join(plan), scans


# Minutes: the window, and how many sagas it holds (the rows it may read).
_PG_NARROW = [
    ({"created_until": 2000}, 2001),  # the oldest tenth: 18,000 newer sagas above it
    ({"created_since": 5000, "created_until": 7000}, 2000),
    ({"created_since": 5000, "created_until": 7000, "status": SagaStatus.FAILED}, 2000),
    ({"created_since": 5000, "created_until": 7000, "saga_name": "BillingSaga"}, 2000),
    ({"created_until": -5}, 0),
]


@pytest.mark.parametrize(("filters", "held"), _PG_NARROW,
                         ids=lambda v: _ids(v) if isinstance(v, dict) else str(v))
async def test_operator_a_listing_by_creation_time_reads_the_windows_rows_not_every_newer_saga(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch,
    filters: dict[str, Any], held: int,
) -> None:
    """A page of the sagas created in a window (the console's since/until)
    reads no more rows than the window holds: its first and last seq from
    the index by creation time, then the rows between them newest first.
    Not a walk by seq past every saga newer than the window (which the
    planner expects to end soon, as if the window's sagas were spread over
    every seq), nor a seq scan. Exact, a saga written while the clock was
    behind too."""
    _year_old_by_time(raw)
    window = {key: _at(value) if key.startswith("created") else value
              for key, value in filters.items()}
    found, sent = await _sent(store, monkeypatch, limit=51, **window)
    assert [s.saga_id for s in found] == [row[0] for row in _expected(
        raw, window, "saga_id", "ORDER BY seq DESC LIMIT 51")]
    for statement, values in sent:
        text, scans = _scanned(raw, statement, values)
        assert "Seq Scan" not in text, text
        for _scan, rows in scans:
            assert rows <= held + 60, text  # a page passed over at most, past the window


def _ids(filters: dict[str, Any]) -> str:
    return ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in filters.items())


@pytest.mark.parametrize(("filters", "held"), [
    *[(f, h) for f, h in _PG_NARROW if "status" not in f],
    ({"created_since": 1000}, 19001),  # most sagas: all, less the 1,000 before them
    ({"created_since": 1000, "created_until": 19000, "saga_name": "BillingSaga"}, 4500),
], ids=lambda v: _ids(v) if isinstance(v, dict) else str(v))
async def test_operator_the_consoles_counts_by_creation_time_read_the_window_or_the_rest(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch,
    filters: dict[str, Any], held: int,
) -> None:
    """The counts by (name, status) of a window read the window's rows, or
    for a window of most sagas the index by (name, status) alone less the
    sagas outside it: no seq scan, and no scan reads more rows than the
    window holds but that index-only one. Exact, with a clock that stepped back."""
    _year_old_by_time(raw)
    window = {key: _at(value) if key.startswith("created") else value
              for key, value in filters.items()}
    sent = _recorded_statements(store, monkeypatch)
    counts = await store.count_sagas(**window)
    monkeypatch.undo()
    assert counts == {
        (name, SagaStatus(status)): n for name, status, n in _expected(
            raw, window, "saga_name, status, count(*)", "GROUP BY saga_name, status")}
    for statement, values in sent:
        text, scans = _scanned(raw, statement, values)
        for scan, rows in scans:
            if "created_at" not in scan and "seq" not in scan:
                continue  # all sagas (of the name): the console's count without a window
            assert "Seq Scan" not in scan, text
            assert rows <= min(held, 20001 - held) + 60, text


async def test_S13_schema_v8_is_migrated_to_v9_in_place_gaining_the_index_by_creation_time(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written at schema v8 gains the index by creation time at
    the next open with write access, without rewriting the table; its sagas
    list and count by creation time as before."""
    with monkeypatch.context() as v8:
        v8.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:8])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            await old.create("a", "OrderSaga", "fp", {"n": 1}, [entry(0, "a")])
            await old.create("b", "OrderSaga", "fp", {"n": 2}, [entry(0, "a")])
    raw.execute("UPDATE fallback_saga_sagas SET created_at = to_timestamp(100)"
                " WHERE saga_id = 'a'")
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (8,)
    relfile = raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.open()
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
            SCHEMA_VERSION,)
        assert raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone() == (
            relfile)
        indexes = dict(raw.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'fallback_saga_sagas'"))
        assert "(created_at, seq)" in indexes["fallback_saga_sagas_by_created"]
        listed = await store.list_sagas(created_until=1000)
        assert [summary.saga_id for summary in listed] == ["a"]
        assert await store.count_sagas(created_since=1000) == {
            ("OrderSaga", SagaStatus.RUNNING): 1}


# --------------------------------------------------------------------------- a long journal


@pytest.mark.parametrize("start", [0, 1400, -50, -5000, 4000])
async def test_operator_a_window_of_a_long_journal_reads_its_rows_by_the_primary_key(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch, start: int
) -> None:
    """``load_window`` gives the record's slice, the journal's length and its
    act steps, in one statement whose read of the history takes the window's
    rows by (saga_id, seq) — not every entry of the saga, as ``load`` does."""
    history = [entry(n // 2, f"Member{n // 2}") for n in range(3000)]
    await store.create("long", "Big", "fp", {"n": 1}, history)
    whole = await store.load("long")
    sent = _recorded_statements(store, monkeypatch)
    window = await store.load_window("long", start=start, count=200)
    monkeypatch.undo()
    first = max(0, 3000 + start) if start < 0 else start
    assert (window.first, window.entries) == (first, 3000)
    assert window.record.history == whole.history[first : first + 200]
    assert window.act_steps == tuple(f"Member{n}" for n in range(1500))
    ((statement, values),) = sent
    plan = [row[0] for row in raw.execute("EXPLAIN (ANALYZE) " + statement, values)]
    text = "\n".join(plan)
    assert "Seq Scan" not in text, text
    (read,) = [n for n, line in enumerate(plan) if "seq >=" in line and "Index Cond" in line]
    rows = re.search(r"actual time=\S+ rows=(\d+)", plan[read - 1])
    assert rows is not None, text
    assert int(rows.group(1)) <= 200, text


async def test_operator_a_window_without_act_steps_reads_no_act_row(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_window(act_steps=False)`` (the console's page of a long journal,
    which links the children of its own steps): the same window, no act step
    names, and the statement reads none of the saga's act rows for them."""
    history = [entry(n // 2, f"Member{n // 2}") for n in range(3000)]
    await store.create("long", "Big", "fp", {"n": 1}, history)
    sent: list[tuple[str, list[Any]]] = []
    fetch = store._fetch

    async def recorded(doing: str, statement: str, values: Any = (), **kwargs: Any) -> Any:
        sent.append((statement, list(values)))
        return await fetch(doing, statement, values, **kwargs)

    monkeypatch.setattr(store, "_fetch", recorded)
    window = await store.load_window("long", start=1400, count=200, act_steps=False)
    monkeypatch.undo()
    full = await store.load_window("long", start=1400, count=200)
    assert window.act_steps == ()
    assert (window.record, window.first, window.entries) == (full.record, 1400, 3000)
    ((statement, values),) = sent
    plan = "\n".join(row[0] for row in raw.execute("EXPLAIN (ANALYZE) " + statement, values))
    read = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
    assert "One-Time Filter: false" in plan or "never executed" in plan, plan
    assert max(read) <= 200, plan


_CAP = 100


@pytest.mark.parametrize("filters", [
    {"created_since": 1000},  # most sagas: 19,001 (380 failed)
    {"created_since": 5000, "created_until": 15000},  # half
    {"created_since": 5000, "created_until": 15000, "saga_name": "BillingSaga"},
    {"created_since": 5000, "created_until": 5300},  # 300: 6 failed, exact
    {"created_until": -5},  # none
], ids=_ids)
async def test_operator_a_capped_count_of_a_wide_window_reads_each_status_up_to_the_cap(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch,
    filters: dict[str, Any],
) -> None:
    """The console's count of a time window holding half the sagas or more
    (``at_most``) reads each status's sagas up to the cap, from the index by
    status between the window's first and last seq (read once, from the
    index by creation time alone): a status of no more sagas than the cap
    is counted exactly (a saga written while the clock was behind too), one
    of more says more than the cap (its counts add up to cap + 1). No seq
    scan; no scan of rows reads more than the cap and a few."""
    _year_old_by_time(raw)
    window = {key: _at(value) if key.startswith("created") else value
              for key, value in filters.items()}
    sent = _recorded_statements(store, monkeypatch)
    counts = await store.count_sagas(**window, at_most=_CAP)
    monkeypatch.undo()
    exact: dict[SagaStatus, int] = {}
    for _name, status, n in _expected(
            raw, window, "saga_name, status, count(*)", "GROUP BY saga_name, status"):
        exact[SagaStatus(status)] = exact.get(SagaStatus(status), 0) + n
    counted: dict[SagaStatus, int] = {}
    for (_name, status), n in counts.items():
        counted[status] = counted.get(status, 0) + n
    assert counted == {status: min(n, _CAP + 1) for status, n in exact.items()}
    # The window's first and last seq (from the index by creation time, or
    # for a window of most sagas a scan: the listing's _window reads them
    # alike), then the count, none for a window without sagas.
    assert len(sent) == (1 if not counted else 2), sent
    if counted:
        # Sagas between the window's first and last seq but outside it (a
        # saga written while the clock was behind stretches the range): a
        # status's walk may pass them.
        low, high = _expected(raw, window, "min(seq), max(seq)", "")[0]
        (between,) = _expected(raw, {}, "count(*)", f"AND seq BETWEEN {low} AND {high}")[0]
        passed = between - sum(exact.values())
        text, scans = _scanned(raw, *sent[1])
        assert "Seq Scan" not in text, text
        for _scan, rows in scans:
            # Up to the cap (and what it passes), or a window of fewer sagas
            # than the cap read whole (the planner's choice, by creation time).
            assert rows <= _CAP + 1 + passed or rows <= between <= 3 * _CAP, text


@pytest.mark.parametrize("analyzed", [True, False], ids=["analyzed", "no-statistics"])
@pytest.mark.parametrize("at_most", [10, 5000])
async def test_operator_a_capped_count_by_name_walks_a_finished_status_from_the_index_alone(
    store: PostgresSagaStore, raw: Any, monkeypatch: pytest.MonkeyPatch,
    at_most: int, analyzed: bool,
) -> None:
    """The console's count of one name (``at_most``: its filtered page)
    walks each status that is not in flight from
    fallback_saga_sagas_by_name_status alone: no saga finished a year ago
    is looked up for its row. The few rows such a status holds that the
    listing leaves out and an index finds (a creation time at infinity:
    S12) are sought once, by fallback_saga_sagas_by_created, and passed;
    only a status in flight is judged row by row (the claim's predicate
    reads the fence). With the statistics of the table and without any
    (autovacuum off: none gathered); a cap below the sagas of a status (10)
    and above (5000): the answer is the listing's, up to cap + 1."""
    raw.execute("ALTER TABLE fallback_saga_sagas SET (autovacuum_enabled = false)")
    _insert_year_old(raw)
    # The oldest COMPLETED OrderSaga sagas created at infinity (not listed).
    raw.execute("UPDATE fallback_saga_sagas SET created_at = 'infinity' WHERE saga_id = 's000005'")
    raw.execute("UPDATE fallback_saga_sagas SET created_at = '-infinity' WHERE saga_id = 's000006'")
    if analyzed:
        raw.execute("VACUUM ANALYZE fallback_saga_sagas")
    sent = _recorded_statements(store, monkeypatch)
    counts = await store.count_sagas(saga_name="OrderSaga", at_most=at_most)
    monkeypatch.undo()
    exact = dict(raw.execute(
        "SELECT status, count(*) FROM fallback_saga_sagas WHERE saga_name = 'OrderSaga'"
        " AND isfinite(created_at) GROUP BY status"))
    assert {status.value: n for (_, status), n in counts.items()} == {
        status: min(n, at_most + 1) for status, n in exact.items()}
    (in_flight,) = raw.execute(
        "SELECT count(*) FROM fallback_saga_sagas WHERE saga_name = 'OrderSaga'"
        " AND status IN ('running', 'compensating')").fetchone()
    assert len(sent) == 1, sent
    text, scans = _scanned(raw, *sent[0])
    assert "Seq Scan" not in text, text
    tables = [(scan, rows) for scan, rows in scans
              if re.search(r" on fallback_saga_sagas\b", scan)]
    # The walks of COMPLETED and FAILED (those of a status none has read
    # no row, whatever their index), each an index-only scan; the rows read
    # from the table: the sagas in flight (walked, then each judged) and the
    # two the seek by creation time finds, no finished saga else.
    walks = [scan for scan, rows in tables
             if "Index Only Scan" in scan and "fallback_saga_sagas_by_name_status" in scan
             and ("'completed'" in scan or "'failed'" in scan)]
    assert len(walks) == 2, text
    read = sum(rows for scan, rows in tables if "Index Only Scan" not in scan)
    assert read <= 2 * in_flight + 2, text


async def test_operator_the_saga_names_are_read_a_seek_a_name_not_every_saga(
    store: PostgresSagaStore, raw: Any,
) -> None:
    """The console's name suggestions (``saga_names``): every distinct name,
    in order, up to ``limit``, each read by a seek for the next name in an
    index by name (a few rows a name), not every saga's entry nor the table."""
    _year_old(raw)
    assert await store.saga_names() == ["BillingSaga", "OrderSaga"]
    assert await store.saga_names(limit=1) == ["BillingSaga"]
    text, scans = _scanned(raw, store._sql.saga_names, [10])
    assert "Seq Scan" not in text, text
    tables = [(scan, rows) for scan, rows in scans if " on fallback_saga_sagas" in scan]
    assert tables, text
    assert all("Index Only Scan" in scan for scan, _rows in tables), text
    assert all(rows <= 3 for _scan, rows in tables), text
