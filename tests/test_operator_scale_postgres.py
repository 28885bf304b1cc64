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


def _year_old(raw: Any) -> None:
    """20,000 finished sagas of two names; five RUNNING ones, the oldest (stuck
    a month ago); statistics gathered."""
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 's' || lpad(n::text, 6, '0'),"
        " CASE WHEN n % 4 = 0 THEN 'BillingSaga' ELSE 'OrderSaga' END, 'fp',"
        " CASE WHEN n < 5 THEN 'running' WHEN n % 50 = 0 THEN 'failed' ELSE 'completed' END,"
        " '{}' FROM generate_series(0, 19999) n"
    )
    raw.execute("ANALYZE fallback_saga_sagas")


async def _sent(store: PostgresSagaStore, monkeypatch: pytest.MonkeyPatch,
                **filters: Any) -> tuple[list[Any], list[tuple[str, list[Any]]]]:
    """What ``list_sagas(**filters)`` returns, and the statements it sent
    (with their values), but the look-up of its cursor by id."""
    sent: list[tuple[str, list[Any]]] = []
    fetch = store._fetch

    async def recorded(doing: str, statement: str, values: Any = (), **kwargs: Any) -> Any:
        if statement != store._sql.seq_of:
            sent.append((statement, list(values)))
        return await fetch(doing, statement, values, **kwargs)

    monkeypatch.setattr(store, "_fetch", recorded)
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
