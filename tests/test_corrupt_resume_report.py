"""A corrupt row met while resuming is reported as corruption, naming the
saga whose row it is, and skipped — never ``interrupted`` and retried at
every pass as if the journal could not be written (S12). Nothing runs
(the participant ledger stays empty).

* A journal row dropped from the middle of a saga's journal: the rows the
  store read in one snapshot have a gap in their seqs, which no writer
  leaves (seqs are 0, 1, ...). A concurrent writer only ever adds rows at
  the end: that stays a ``JournalConflict`` (tests/test_journal_truth.py).
* A parent whose child saga's row cannot be read: the parent is skipped,
  the report naming the child.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_row_mutation_fuzz import (
    CRASH,
    LEDGER,
    SAGAS,
    Crash,
    Ctx,
    FuzzSaga,
    _left_running_plain,
)

from fallback_saga import CorruptSagaRecord, SQLiteSagaStore, recover
from fallback_saga.subsaga import CHILD_SEPARATOR


def _run_sql(path: Path, sql: str, *params: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("seq", [0, 1])
async def test_S12_a_journal_row_dropped_is_a_corrupt_record_not_a_conflict(
    tmp_path: Path, seq: int
) -> None:
    path = tmp_path / "sagas.db"
    await _left_running_plain(path)  # E act running, completed; F act running
    _run_sql(path, "DELETE FROM saga_steps WHERE saga_id = 'p' AND seq = ?", seq)
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord, match=rf"'p'.*transition {seq} is missing"):
            await store.load("p")
        with pytest.raises(CorruptSagaRecord, match="'p'"):
            await store.load_window("p", start=0, count=10)
        for _ in range(2):  # every pass says the same
            report = await recover(store, SAGAS, older_than=0)
            assert report.interrupted == []
            assert [saga_id for saga_id, _ in report.skipped] == ["p"]
            assert "CorruptSagaRecord" in report.skipped[0][1]
    assert LEDGER == []


async def test_S12_the_last_journal_row_dropped_resumes_as_its_journal_says(
    tmp_path: Path,
) -> None:
    """No gap: the journal reads as one whose last write never landed."""
    path = tmp_path / "sagas.db"
    await _left_running_plain(path)
    _run_sql(path, "DELETE FROM saga_steps WHERE saga_id = 'p'"
                   " AND seq = (SELECT MAX(seq) FROM saga_steps WHERE saga_id = 'p')")
    async with SQLiteSagaStore(path) as store:
        report = await recover(store, SAGAS, older_than=0)
    assert report.resumed == ["p"]


async def test_S12_a_parent_whose_child_row_is_corrupt_is_skipped_naming_the_child(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagas.db"
    CRASH["c"] = "act:CB"  # the parent stops inside its child saga
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(Crash):
            await FuzzSaga(store=store).run(Ctx(n=1), saga_id="c")
    CRASH.clear()
    child = f"c{CHILD_SEPARATOR}Pay"
    _run_sql(path, "UPDATE sagas SET context = 'not json' WHERE saga_id = ?", child)
    _run_sql(path, "UPDATE sagas SET lease_expires_at = 0 WHERE lease_expires_at IS NOT NULL")
    LEDGER.clear()
    async with SQLiteSagaStore(path) as store:
        for _ in range(2):  # every pass says the same
            report = await recover(store, SAGAS, older_than=0)
            assert report.interrupted == []
            skipped = dict(report.skipped)
            assert set(skipped) == {"c", child}
            assert "CorruptSagaRecord" in skipped["c"]
            assert repr(child) in skipped["c"]
    assert LEDGER == []
