"""A corrupt row met while resuming is reported as corruption, naming the
saga whose row it is, and skipped — never ``interrupted`` and retried at
every pass as if the journal could not be written (S12). Nothing runs
(the participant ledger stays empty).

* A journal row dropped from the middle of a saga's journal: the rows the
  store read in one snapshot have a gap in their seqs, which no writer
  leaves (seqs are 0, 1, ...). A concurrent writer only ever adds rows at
  the end: that stays a ``JournalConflict`` (tests/test_journal_truth.py).
* A parent whose child saga's row cannot be read: the parent is skipped,
  the report saying so in its own words, naming the child, then the
  child's error — and, when the parent had compensated steps before it
  reached the child, that part of its unwinding ran.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers_row_fuzz import (
    CRASH,
    LEDGER,
    SAGAS,
    A,
    ChildSaga,
    Crash,
    Ctx,
    E,
    F,
    FuzzSaga,
    _child_context,
)
from test_row_mutation_fuzz import _left_running_plain

from fallback_saga import CorruptSagaRecord, Saga, SQLiteSagaStore, SubSaga, recover
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
            # In its own words first, then the child's error; nothing of it unwound.
            assert skipped["c"].startswith(f"its child saga {child!r} is unreadable, so it")
            assert skipped["c"].index("so it") < skipped["c"].index("CorruptSagaRecord")
            assert "unwinding" not in skipped["c"]
    assert LEDGER == []


class UnwindingSaga(Saga[Ctx]):
    """Steps after its child saga: they are compensated before the child is."""

    steps: ClassVar[list[Any]] = [
        A,
        SubSaga(ChildSaga, context=_child_context, name="Pay"),
        E,
        F,
    ]


class Outcomes:
    def __init__(self) -> None:
        self.told: dict[str, tuple[str, str | None]] = {}

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        self.told[saga_id] = (outcome, reason)


async def test_S12_a_parent_whose_child_row_is_corrupt_mid_unwinding_says_part_of_it_ran(
    tmp_path: Path,
) -> None:
    """F fails: E is compensated, then the child's steps — where the process
    dies. The child's row then cannot be read: the parent's report says that
    part of its unwinding ran (E, compensated), not only the child's error."""
    path = tmp_path / "sagas.db"
    CRASH["u"] = "compensate:CB"  # dies unwinding its child, E compensated
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(Crash):
            await UnwindingSaga(store=store).run(Ctx(n=1, fail="F"), saga_id="u")
    CRASH.clear()
    child = f"u{CHILD_SEPARATOR}Pay"
    _run_sql(path, "UPDATE sagas SET context = 'not json' WHERE saga_id = ?", child)
    _run_sql(path, "UPDATE sagas SET lease_expires_at = 0 WHERE lease_expires_at IS NOT NULL")
    LEDGER.clear()
    listener = Outcomes()
    async with SQLiteSagaStore(path) as store:
        report = await recover(store, [*SAGAS, UnwindingSaga], older_than=0,
                               listeners=[listener])
    skipped = dict(report.skipped)
    assert set(skipped) == {"u", child}
    reason = skipped["u"]
    assert reason.startswith(f"its child saga {child!r} is unreadable, so it")
    assert "part of its unwinding ran" in reason
    assert "'E'" in reason
    assert reason.index("unwinding") < reason.index("CorruptSagaRecord")
    assert listener.told["u"] == ("skipped", reason)
    assert LEDGER == []
