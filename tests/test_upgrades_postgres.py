"""Upgrades on PostgreSQL: the sagas of tests/test_upgrades.py, written into
a schema by each released version (run out of git history: a database
cannot be committed as a file), opened by today's code, which migrates the
schema (v1 or v2 to today's) and must resume every saga exactly (S10, S14).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_pg import require_driver
from test_upgrades import OldStore, check_every_saga_resumes_exactly, old_releases

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402

from fallback_saga.store.postgres import SCHEMA_VERSION, PostgresSagaStore  # noqa: E402

# 0.4.0 wrote schema version 1 (contexts as jsonb), 0.8.0 version 2 (step
# results), 0.9.0 version 5 (contexts as json, leases stamped by the server).
RELEASES = ("0.4.0", "0.8.0", "0.9.0")
WROTE = {"0.4.0": 1, "0.8.0": 2, "0.9.0": 5}


@pytest.mark.parametrize("release", RELEASES)
async def test_S10_S14_every_saga_an_old_release_wrote_on_postgres_resumes_exactly(
    release: str, tmp_path: Path, pg_conninfo: str, pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_old_journals = old_releases()
    old = tmp_path / "old"
    old.mkdir()
    make_old_journals.extract(release, old)
    ledger = tmp_path / "ledger.jsonl"
    # The conninfo (with its password) goes through the environment only.
    make_old_journals.write_journal(old, f"pg:{pg_schema}", ledger,
                                    {"UPGRADE_APP_DSN": pg_conninfo})
    monkeypatch.setenv("UPGRADE_APP_LEDGER", str(ledger))
    monkeypatch.delenv("UPGRADE_APP_CRASH", raising=False)
    raw = psycopg.connect(pg_conninfo, autocommit=True)
    try:
        raw.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
        (version,) = raw.execute("SELECT version FROM fallback_saga_schema").fetchone()
        assert version == WROTE[release]

        def fence_of(saga_id: str) -> int:
            (fence,) = raw.execute(
                "SELECT fence FROM fallback_saga_sagas WHERE saga_id = %s", (saga_id,)
            ).fetchone()
            return int(fence)

        def expire_leases() -> None:
            raw.execute("UPDATE fallback_saga_sagas SET lease_expires_at = now() - interval"
                        " '1 second' WHERE lease_owner IS NOT NULL")

        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            await store.open()
            assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
                SCHEMA_VERSION,
            )
            await check_every_saga_resumes_exactly(
                release, OldStore(store, ledger, fence_of, expire_leases, jsonb=WROTE[release] < 4)
            )
    finally:
        raw.close()


@pytest.mark.parametrize("release", RELEASES)
def test_S12_an_old_release_refuses_todays_postgres_schema_naming_both_versions(
    release: str, tmp_path: Path, pg_conninfo: str, pg_schema: str
) -> None:
    """A process of the old release started after today's code migrated the
    schema is refused, naming both versions — never a schema it does not know."""
    make_old_journals = old_releases()
    old = tmp_path / "old"
    old.mkdir()
    make_old_journals.extract(release, old)

    async def migrate() -> None:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            await store.open()

    asyncio.run(migrate())
    done = subprocess.run(
        [sys.executable, "-c",
         "import asyncio, os, sys\n"
         "from fallback_saga.store.postgres import PostgresSagaStore\n"
         "async def main():\n"
         "    async with PostgresSagaStore(os.environ['DSN'], schema=sys.argv[1]) as s:\n"
         "        await s.open()\n"
         "asyncio.run(main())", pg_schema],
        cwd=old, env={**os.environ, "PYTHONPATH": str(old), "DSN": pg_conninfo},
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 1
    old_version = WROTE[release]
    assert (f"schema version {SCHEMA_VERSION}, newer than this fallback_saga understands "
            f"({old_version})") in done.stderr, done.stderr[-2000:]


async def test_S12_a_store_open_while_a_newer_release_migrates_the_schema_says_so(
    pg_conninfo: str, pg_schema: str
) -> None:
    """A rolling deploy the other way: this release's store is open when a
    newer release migrates the schema. Its statements then fail; each failure
    says the schema is newer, naming both versions — not an SQL error."""
    from fallback_saga import JournalEntry, SagaStoreError, StepStatus

    first = JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1, None, 1.0)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.create("s1", "OrderSaga", "fp", {"n": 1}, [first])
        await store.load("s1")
        with psycopg.connect(pg_conninfo, autocommit=True) as raw, raw.transaction():
            raw.execute(f'ALTER TABLE "{pg_schema}".fallback_saga_steps'
                        " RENAME TO fallback_saga_journal")
            raw.execute(f'ALTER TABLE "{pg_schema}".fallback_saga_sagas'
                        " RENAME TO fallback_saga_runs")
            raw.execute(f'UPDATE "{pg_schema}".fallback_saga_schema SET version = %s',
                        (SCHEMA_VERSION + 1,))
        newer = (f"schema version {SCHEMA_VERSION + 1}, newer than this fallback_saga "
                 f"understands ({SCHEMA_VERSION})")
        with pytest.raises(SagaStoreError, match=re.escape(newer)):
            await store.append("s1", [first])
        with pytest.raises(SagaStoreError, match=re.escape(newer)):
            await store.create("s2", "OrderSaga", "fp", {"n": 1}, [first])
        with pytest.raises(SagaStoreError, match=re.escape(newer)):
            await store.load("s1")
        with pytest.raises(SagaStoreError, match=re.escape(newer)):
            await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
