"""A rolling deploy from the released 0.9.0 to today's code on one SQLite
file: a 0.9.0 process that opened the file before today's code migrated it
(schema version 3 to today's) goes on running. Its writes still work (they name
no new column); its reads are refused, naming both versions. So a saga it
was running finishes exactly, and its recovery passes claim and skip, each
lease given back: today's workers take the sagas at once. (tests/
test_rolling_deploy.py has the same on PostgreSQL, where 0.9.0 reads too.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import upgrade_app
from helpers_release import OldProcess, extract_090
from upgrade_app import ledger_lines

from fallback_saga import SagaStatus, SQLiteSagaStore, recover
from fallback_saga.store.sqlite import SCHEMA_VERSION

SAGA = "running-in-act"  # upgrade_app's saga of steps A, B (after a failed B: B2), C


@pytest.fixture(scope="module")
def release_090(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_090(tmp_path_factory)


@pytest.fixture
def old_processes() -> Iterator[list[OldProcess]]:
    made: list[OldProcess] = []
    yield made
    for process in made:
        process.kill()


async def test_S10_a_saga_0_9_0_runs_while_todays_code_migrates_the_file_finishes_exactly(
    release_090: Path, old_processes: list[OldProcess], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0.9.0 is inside step B when today's store opens the file and migrates
    it; it then finishes the saga, each step called once, and today's code
    reads the saga as COMPLETED."""
    db, ledger = tmp_path / "sagas.db", tmp_path / "ledger.jsonl"
    monkeypatch.setenv("UPGRADE_APP_LEDGER", str(ledger))
    old = OldProcess(release_090, {"UPGRADE_APP_HOLD": "act:B"}, str(db), str(ledger), SAGA)
    old_processes.append(old)
    await old.says("opened")
    old.go_on()
    await old.says("holding act:B")
    async with SQLiteSagaStore(db) as store:
        await store.open()  # migrates under the 0.9.0 process
        assert _user_version(db) == SCHEMA_VERSION
        old.go_on()
        assert await old.ends() == 0
        record = await store.load(SAGA)
    assert record.status is SagaStatus.COMPLETED
    calls = [(line["action"], line["step"]) for line in ledger_lines(ledger)]
    assert calls == [("act", "A"), ("act", "B"), ("act", "C")]


async def test_S12_a_0_9_0_recovery_pass_on_the_migrated_file_skips_naming_both_versions(
    release_090: Path, old_processes: list[OldProcess], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 0.9.0 recovery pass whose store was open before the migration
    claims the interrupted saga, cannot read it (refused, naming both schema
    versions: never a mis-read of a newer row) and gives its lease back:
    today's worker then claims it at once and resumes it exactly."""
    db, ledger = tmp_path / "sagas.db", tmp_path / "ledger.jsonl"
    monkeypatch.setenv("UPGRADE_APP_LEDGER", str(ledger))
    monkeypatch.delenv("UPGRADE_APP_CRASH", raising=False)
    first = OldProcess(release_090, {}, str(db), str(ledger), SAGA, "act:B")
    old_processes.append(first)
    assert await first.ends() == 137  # died inside B, after its effect
    old = OldProcess(release_090, {"UPGRADE_APP_HOLD": "act:B"}, str(db), str(ledger),
                     f"recover:{SAGA}")
    old_processes.append(old)
    await old.says("opened")
    async with SQLiteSagaStore(db) as store:
        await store.open()  # migrates under the 0.9.0 process
        old.go_on()
        assert await old.ends() == 0
        said = old.rest()
        assert f"skipped {SAGA}: SagaStoreError: {db} has saga store schema version " \
            f"{SCHEMA_VERSION}, newer " \
            "than this fallback_saga understands (3)" in said, said
        state = await store.lease_state(SAGA)
        assert state.owner is None  # given back
        assert state.token == 1  # the 0.9.0 pass did claim it
        saga = upgrade_app.UpgradeSaga(store=store, compensation_retry=upgrade_app.no_retry())
        report = await recover(store, [saga], older_than=0)
        assert report.resumed == [SAGA]
        record = await store.load(SAGA)
    assert record.status is SagaStatus.COMPLETED
    calls = [(line["action"], line["step"], line["kind"]) for line in ledger_lines(ledger)]
    # B again after the crash (the participant answers the repeat as done): S10.
    assert calls == [("act", "A", "apply"), ("act", "B", "apply"), ("act", "B", "skip"),
                     ("act", "C", "apply")]


def _user_version(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    return int(version)

