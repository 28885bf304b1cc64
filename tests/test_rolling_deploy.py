"""A rolling deploy from the released 0.9.0 to today's code on one
PostgreSQL schema: while it is half done, workers of both releases claim and
resume the same sagas, each in its own process.

0.9.0 keeps working on the schema today's code migrates under it (version 5
to 7: columns added in place, which its statements never name), so the two
must not undo each other's leases: a saga resumed by one worker is never
resumed by another meanwhile (S10: a step runs again only after a crash).
The 0.9.0 package is taken out of git history (skipped where there is none),
and the participant's ledger (tests/upgrade_app.py) says which calls each
process made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_release import OldProcess, extract_090
from upgrade_app import UpgradeSaga, ledger_lines, no_retry

from fallback_saga import SagaStatus, SagaStoreError, recover

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402

from fallback_saga.store import _postgres_claims as pg_claims  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

SAGA = "running-in-act"  # upgrade_app's saga whose process dies inside act B


@pytest.fixture(scope="module")
def release_090(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_090(tmp_path_factory)


@pytest.fixture
def old_processes() -> Iterator[list[OldProcess]]:
    made: list[OldProcess] = []
    yield made
    for process in made:
        process.kill()


@pytest.mark.parametrize("old_takes", ["recover", "resume"])
async def test_S10_a_claim_given_back_by_todays_worker_never_frees_a_0_9_0_workers_lease(
    release_090: Path, old_processes: list[OldProcess], tmp_path: Path, pg_conninfo: str,
    pg_schema: str, monkeypatch: pytest.MonkeyPatch, old_takes: str,
) -> None:
    """Today's worker claims a saga and never gets the answer (its
    connection lost after the COMMIT); the claim committed, and giving it
    back waits until the server can be reached again, past the lease's end.
    Meanwhile a 0.9.0 worker, running since before the schema was migrated,
    claims the saga (a recovery pass, or a resume by id) and resumes it. The
    late giving back must leave that lease alone: 0.9.0 leaves today's claim
    marker on the row (it knows no such column), and a giving back by marker
    alone freed its lease, so another worker resumed the saga while the
    first was inside step B — B ran twice at once (three calls in all)."""
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("UPGRADE_APP_LEDGER", str(ledger))
    monkeypatch.delenv("UPGRADE_APP_CRASH", raising=False)
    env = {"UPGRADE_APP_DSN": pg_conninfo}
    db = f"pg:{pg_schema}"
    # 0.9.0 starts the saga and dies inside act B (schema version 5).
    first = OldProcess(release_090, env, db, str(ledger), SAGA, "act:B")
    old_processes.append(first)
    assert await first.ends() == 137
    # A 0.9.0 worker that is up before the deploy migrates the schema.
    worker = OldProcess(release_090, {**env, "UPGRADE_APP_HOLD": "act:B"}, db, str(ledger),
                        f"{old_takes}:{SAGA}")
    old_processes.append(worker)
    await worker.says("opened")

    # Faults of today's worker: the claim's answer is lost once it has
    # committed, and then the server cannot be reached until ``reachable``.
    reachable = asyncio.Event()
    reachable.set()
    real_getconn = pg_claims._getconn  # the give-back's (_forget_claim)

    async def getconn(pool: psycopg_pool.AsyncConnectionPool[Any]) -> Any:
        await reachable.wait()
        return await real_getconn(pool)

    monkeypatch.setattr(pg_claims, "_getconn", getconn)
    pool = psycopg_pool.AsyncConnectionPool(pg_conninfo, min_size=1, max_size=4, open=False,
                                            kwargs={"autocommit": True})
    await pool.open(wait=True)
    real_putconn = pool.putconn
    lose_answer = False

    async def putconn(conn: Any) -> None:
        await real_putconn(conn)
        if lose_answer:
            reachable.clear()
            raise psycopg.OperationalError("the connection was lost (injected)")

    monkeypatch.setattr(pool, "putconn", putconn)
    raw = psycopg.connect(pg_conninfo, autocommit=True)
    try:
        raw.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))

        def lease_of_saga() -> tuple[str | None, int]:
            ((owner, fence),) = raw.execute(
                "SELECT lease_owner, fence FROM fallback_saga_sagas WHERE saga_id = %s", (SAGA,)
            ).fetchall()
            return owner, fence

        store = PostgresSagaStore(pool, schema=pg_schema)
        try:
            await store.open()  # migrates to today's schema under the running 0.9.0 worker
            lose_answer = True
            with pytest.raises(SagaStoreError):
                # Its lease already run out when the server is reached again.
                await store.claim(owner="today", lease_seconds=-1, older_than=-1, limit=10)
            lose_answer = False
            assert lease_of_saga() == ("today", 1)  # it did commit
            worker.go_on()
            await worker.says("holding act:B")  # 0.9.0 leased the saga and is inside B
            owner, fence = lease_of_saga()
            assert owner != "today"
            assert fence == 2
            reachable.set()  # the claim is given back now
        finally:
            await store.close()  # waits for the giving back
        assert lease_of_saga() == (owner, fence)
        # Another worker of today's release: the saga is not its to resume.
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as other:
            report = await recover(
                other, [UpgradeSaga(store=other, compensation_retry=no_retry())], older_than=0)
            assert report.resumed == []
            assert report.compensated == []
            worker.go_on()
            assert await worker.ends() == 0
            record = await other.load(SAGA)
    finally:
        raw.close()
        await pool.close()
    assert record.status is SagaStatus.COMPLETED
    calls = [(line["action"], line["step"]) for line in ledger_lines(ledger)
             if line["saga"] == SAGA]
    # B: the run that died in it, then the 0.9.0 worker's resume only.
    assert calls == [("act", "A"), ("act", "B"), ("act", "B"), ("act", "C")]
