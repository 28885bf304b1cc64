"""A saga row of a status the PostgreSQL store does not write is reported by
the claim (S12), as SQLite's is (``test_sqlite_unreadable_in_flight_reported``).

``'RUNNING'``, ``'paused'``, ``''`` (another tool's row): every reader
refuses it ("unknown saga status ..."), but the claim takes sagas by status
(running, compensating) and never met it — no ``recover`` pass, no worker,
no log line named the saga. Now the claim reports it as skipped, with the
readers' words, to whoever collects skipped rows (``_skipped_rows``), and
looks for such rows in the status index's ranges around the known statuses:
never through the finished sagas.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_saga import OutcomesTold, RowSaga, run_worker_until, skipped_told
from helpers_stores import record_lease_statements

from fallback_saga import RecoveryWorker
from fallback_saga.errors import CorruptSagaRecord
from fallback_saga.recovery import recover
from fallback_saga.store._common import unknown_status
from fallback_saga.store._skipped_rows import collecting
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

from pg_fixtures import raw_connection  # noqa: E402, F401  (the fixture raw)

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

_UNKNOWN = ["RUNNING", "paused", "", "Compensating", "COMPLETED", "zzz"]


async def _fill(store: PostgresSagaStore, raw: Any, status: str) -> None:
    """Sagas 'good' and 'bad' running, long due; 'bad' given ``status``."""
    for saga_id in ("good", "bad"):
        await store.create(saga_id, "RowSaga", RowSaga.definition.fingerprint, {},
                           [entry(0, "RowStep")])
    raw.execute("UPDATE fallback_saga_sagas SET updated_at = now() - interval '1 day'")
    raw.execute("UPDATE fallback_saga_sagas SET status = %s WHERE saga_id = 'bad'", (status,))


def _reason(status: str) -> str:
    return f"its row is unreadable: {unknown_status(status)}"


@pytest.mark.parametrize("status", _UNKNOWN)
async def test_s12_postgres_recover_reports_a_saga_of_an_unknown_status(
    pg_conninfo: str, pg_schema: str, raw: Any, status: str,
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, status)
        with pytest.raises(CorruptSagaRecord) as read:  # what every reader says
            await store.load("bad")
        assert unknown_status(status) in str(read.value)
        for _ in ("first", "second"):  # every pass, not once
            report = await recover(store, [RowSaga], older_than=0, lease=60)
            assert report.skipped == [("bad", _reason(status))], report
        assert (await store.load("good")).status.is_final  # the healthy one resumed


async def test_s12_postgres_a_worker_tells_a_saga_of_an_unknown_status_once_per_lease(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Told once, though the worker polls many times within its lease."""
    told = OutcomesTold()
    polls = 0
    claim = PostgresSagaStore.claim

    async def counted(self: PostgresSagaStore, **kwargs: Any) -> Any:
        nonlocal polls
        polls += 1
        return await claim(self, **kwargs)

    monkeypatch.setattr(PostgresSagaStore, "claim", counted)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, "paused")
        worker = RecoveryWorker(store, [RowSaga], concurrency=1, lease=30, poll=0.01,
                                older_than=0, listen=False, listeners=[told])
        # until the good saga is done, the bad told, and polls more
        await run_worker_until(
            worker, lambda: worker.stats.completed and worker.stats.skipped and polls > 5
        )
    assert skipped_told(told) == [("bad", _reason("paused"))]
    assert worker.stats.skipped == 1
    assert worker.stats.completed == 1
    assert polls > 5


async def test_s12_postgres_a_claim_by_name_is_not_told_of_another_names_unknown_status(
    pg_conninfo: str, pg_schema: str, raw: Any,
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, "paused")
        raw.execute("UPDATE fallback_saga_sagas SET saga_name = 'Other' WHERE saga_id = 'bad'")
        with collecting() as rows:
            await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10,
                              names=("RowSaga",))
        assert rows == []
        with collecting() as rows:
            await store.claim(owner="w2", lease_seconds=60, older_than=0, limit=10,
                              names=("Other",))
        assert rows == [("bad", _reason("paused"))]


@pytest.mark.parametrize("analyzed", [True, False])
@pytest.mark.parametrize("named", [False, True])
async def test_s12_postgres_the_look_for_unknown_statuses_reads_no_finished_saga(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch,
    analyzed: bool, named: bool,
) -> None:
    """A store may hold millions of finished sagas: the query reads the
    status index's ranges around the known statuses, not those sagas."""
    import psycopg

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, "paused")
        raw.execute(
            "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
            " SELECT 'f' || n, 'RowSaga', 'fp', (ARRAY['completed', 'compensated', 'failed',"
            " 'pending'])[1 + n % 4], '{}' FROM generate_series(1, 100000) AS n")
        if analyzed:
            raw.execute("ANALYZE fallback_saga_sagas")
        sent = record_lease_statements(monkeypatch)
        with collecting() as rows:
            await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10,
                              names=("RowSaga",) if named else None)
        assert rows == [("bad", _reason("paused"))]
        ((statement, values),) = [(text, params) for text, params in sent
                                  if text.startswith("SELECT saga_id, status FROM (")]
        plan = "\n".join(row[0] for row in raw.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement, values))
        _reads_a_few_pages(plan)
        # A prepared statement's generic plan (the store prepares it), too.
        numbered = iter(range(1, len(values) + 1))
        raw.execute("PREPARE unknown_status AS "
                    + re.sub("%s", lambda _: f"${next(numbered)}", statement))
        raw.execute("SET plan_cache_mode = force_generic_plan")
        arguments = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(v) for v in values)
        plan = "\n".join(row[0] for row in raw.execute(psycopg.sql.SQL(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE unknown_status({})").format(arguments)))
        raw.execute("RESET plan_cache_mode")
        _reads_a_few_pages(plan)


def _reads_a_few_pages(plan: str) -> None:
    assert "Seq Scan" not in plan, plan
    assert "fallback_saga_sagas_by_status" in plan, plan
    # The statement's pages in all (the first count is the plan's total): a
    # few of the index a range, not the 100,000 sagas' (2,273 pages).
    (pages,) = re.findall(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)[:1]
    assert sum(int(n or 0) for n in pages) < 50, plan
