"""A saga a SQLite reader calls corrupt is never silently left by recovery (S12).

The converse of ``test_unleasable_rows_shown.py`` (a row the claim skips is
unreadable to every reader): every row a reader refuses — ``load``, the
listings — for a saga that recovery would otherwise take is either
recovered by a claim or reported by it as skipped (``recover()``'s
``report.skipped``, a worker's ``stats.skipped`` and listeners), on every
pass: never left waiting without a word. A row the claim recovers is
readable.

Each case mutates one column of a due saga's row (or of its journal) in
SQL — wrong storage class, not finite, negative, too large, a status in
another case or unknown, a context that is not JSON, a journal with a hole
— and runs two ``recover`` passes next to a healthy saga. Found by this
audit: a status the store does not know (``'RUNNING'``, ``'paused'``, a
BLOB), and a count of claims that is a non-integral REAL at or above
``park_after`` were refused by every reader and never selected by the
claim: no pass, no worker, no log line ever named them; and a lease owner
that is no text, refused by the listing, was leased and resumed unseen.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers_saga import OutcomesTold, RowSaga, run_worker_until, skipped_told

from fallback_saga import RecoveryWorker
from fallback_saga.errors import CorruptSagaRecord
from fallback_saga.recovery import RecoveryReport, recover
from fallback_saga.status import SagaStatus
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import entry

_LARGEST = 2**63 - 1
_PARK_AFTER = 5

# name -> an UPDATE of the 'bad' saga's row (sagas: a SET clause), or a
# statement of its own on its journal (saga_steps).
_SAGA_ROW = {
    "status-upper": "status = 'RUNNING'",
    "status-title": "status = 'Compensating'",
    "status-unknown": "status = 'paused'",
    "status-empty": "status = ''",
    "status-blob": "status = X'00'",
    "status-not-utf8": "status = CAST(X'72ff' AS TEXT)",
    "name-blob": "saga_name = X'00'",
    "name-not-utf8": "saga_name = CAST(X'53ff' AS TEXT)",
    "name-unknown": "saga_name = 'NoSuchSaga'",
    "fingerprint-int": "fingerprint = 5",
    "context-not-json": "context = 'nope'",
    "context-int": "context = 5",
    "context-array": "context = '[]'",
    "context-not-utf8": "context = CAST(X'7bff' AS TEXT)",
    "version-text": "version = 'x'",
    "version-real": "version = 1.5",
    "version-infinite": "version = 9e999",
    "created-text": "created_at = 'x'",
    "created-infinite": "created_at = 9e999",
    "created-blob": "created_at = X'00'",
    "updated-text": "updated_at = 'x'",
    "updated-blob": "updated_at = X'00'",
    "updated-infinite": "updated_at = 9e999",
    "updated-minus-infinite": "updated_at = -9e999",
    "updated-negative": "updated_at = -1",
    "owner-int": "lease_owner = 5, lease_expires_at = 0",
    "owner-blob": "lease_owner = X'00', lease_expires_at = 0",
    "owner-not-utf8": "lease_owner = CAST(X'53ff' AS TEXT), lease_expires_at = 0",
    "expiry-text": "lease_expires_at = 'x'",
    "expiry-blob": "lease_expires_at = X'00'",
    "expiry-infinite": "lease_expires_at = 9e999",
    "expiry-minus-infinite": "lease_expires_at = -9e999",
    "expiry-infinite-held": "lease_expires_at = 9e999, lease_owner = 'w'",
    "written-text": "lease_written_at = 'x', lease_expires_at = 0",
    "written-infinite": "lease_written_at = 9e999, lease_expires_at = 0",
    "fence-text": "fence = 'x'",
    "fence-blob": "fence = X'00'",
    "fence-real": "fence = 1.5",
    "fence-infinite": "fence = 9e999",
    "fence-minus-infinite": "fence = -9e999",
    "fence-largest": f"fence = {_LARGEST}",
    "fence-negative": "fence = -1",
    "claims-text": "unreleased_claims = 'x'",
    "claims-blob": "unreleased_claims = X'00'",
    "claims-real": "unreleased_claims = 1.5",
    "claims-real-at-park-after": f"unreleased_claims = {_PARK_AFTER}.5",
    "claims-real-above-park-after": "unreleased_claims = 1000000.25",
    "claims-infinite": "unreleased_claims = 9e999",
    "claims-minus-infinite": "unreleased_claims = -9e999",
    "claims-largest": f"unreleased_claims = {_LARGEST}",
    "claims-real-too-large": "unreleased_claims = 1e300",
    "claims-negative": "unreleased_claims = -5",
}
_JOURNAL = {
    "journal-hole": "UPDATE saga_steps SET seq = 5 WHERE saga_id = 'bad'",
    "journal-seq-text": "UPDATE saga_steps SET seq = 'x' WHERE saga_id = 'bad'",
    "journal-extra-seq": (
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
        " attempt, at) VALUES ('bad', 7, 0, 'RowStep', 'primary', 'act', 'started', 1, 0)"),
    "journal-empty": "DELETE FROM saga_steps WHERE saga_id = 'bad'",
    "journal-time-infinite": "UPDATE saga_steps SET at = 9e999 WHERE saga_id = 'bad'",
    "journal-status-unknown": "UPDATE saga_steps SET status = 'nope' WHERE saga_id = 'bad'",
    "journal-position-text": "UPDATE saga_steps SET position = 'x' WHERE saga_id = 'bad'",
    "journal-step-blob": "UPDATE saga_steps SET step = X'00' WHERE saga_id = 'bad'",
}


async def _store_with_bad_row(path: Path, mutation: str, status: SagaStatus) -> None:
    """Sagas 'good' and 'bad' in flight (``status``), long due, and the
    mutation applied to 'bad'."""
    async with SQLiteSagaStore(path) as store:
        for saga_id in ("good", "bad"):
            await store.create(saga_id, "RowSaga", RowSaga.definition.fingerprint, {},
                               [entry(0, "RowStep")])
            if status is SagaStatus.COMPENSATING:
                await store.append(saga_id, [], status=status)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE sagas SET updated_at = 0")  # long due, whatever the clock says
        if mutation in _JOURNAL:
            conn.execute(_JOURNAL[mutation])
        else:
            conn.execute(f"UPDATE sagas SET {_SAGA_ROW[mutation]} WHERE saga_id = 'bad'")


def _named(report: RecoveryReport, saga_id: str) -> list[str]:
    """The report's lists that name ``saga_id``."""
    named = [name for name in ("resumed", "compensated", "failed", "deferred")
             if saga_id in getattr(report, name)]
    named += [name for name in ("skipped", "interrupted")
              for shown, _ in getattr(report, name) if shown == saga_id]
    return named


async def _readable(store: SQLiteSagaStore, saga_id: str) -> Any:
    """The saga's status as ``load`` reads it, or the ``CorruptSagaRecord``."""
    try:
        return (await store.load(saga_id)).status
    except CorruptSagaRecord as error:
        return error


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
@pytest.mark.parametrize("mutation", [*_SAGA_ROW, *_JOURNAL])
async def test_s12_a_due_saga_a_reader_calls_corrupt_is_recovered_or_reported_by_every_pass(
    tmp_path: Path, mutation: str, status: SagaStatus
) -> None:
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, mutation, status)
    async with SQLiteSagaStore(path, park_after=_PARK_AFTER) as store:
        read_before = await _readable(store, "bad")
        for attempt in ("first", "second"):
            report = await recover(store, [RowSaga], older_than=0, lease=60)
            if attempt == "first":  # the healthy saga next to it is not held up
                assert "good" in report.resumed + report.compensated, report
            read = await _readable(store, "bad")
            if isinstance(read, SagaStatus) and read.is_final:
                # Recovered: readable, and finished as the report says.
                assert _named(report, "bad") or attempt == "second", (attempt, report)
                continue
            # Not finished (corrupt, or skipped): named by this pass too.
            named = _named(report, "bad")
            assert named in (["skipped"], ["interrupted"]), (
                f"{attempt} pass left {mutation} ({read_before!r}) without a word: {report}")
            if isinstance(read_before, CorruptSagaRecord):
                assert named == ["skipped"]


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ("status-upper", "unknown saga status 'RUNNING'"),
        ("status-unknown", "unknown saga status 'paused'"),
        ("claims-real-above-park-after", "its unreleased_claims is not an integer"),
    ],
)
async def test_s12_recover_reports_the_readers_reason_for_a_row_the_claim_used_to_leave_out(
    tmp_path: Path, mutation: str, reason: str
) -> None:
    """The claim's report says what every reader says of the row."""
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, mutation, SagaStatus.RUNNING)
    async with SQLiteSagaStore(path, park_after=_PARK_AFTER) as store:
        with pytest.raises(CorruptSagaRecord) as read:
            await store.load("bad")
        assert reason in str(read.value)
        report = await recover(store, [RowSaga], older_than=0, lease=60)
    assert report.skipped == [("bad", f"its row is unreadable: {reason}")]
    assert report.resumed == ["good"]


@pytest.mark.parametrize(
    ("owner", "reason"),
    [
        ("X'00'", "its lease_owner is not text (a bytes)"),
        ("CAST(X'53ff' AS TEXT)", "its lease_owner is text that is not valid UTF-8"),
    ],
)
async def test_s12_a_lease_owner_the_readers_refuse_is_not_resumed_behind_their_back(
    tmp_path: Path, owner: str, reason: str
) -> None:
    """The converse: a row the claim recovers is readable. A lease owner
    that is no text made the listing (and ``lease_state``, ``claim_saga``)
    call the saga unreadable while ``claim`` leased it and ``recover``
    resumed it — the operator's list never showed the saga that ran. Now
    the claim skips it with the readers' reason (found by the row fuzz,
    seed 966502)."""
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, "owner-blob", SagaStatus.RUNNING)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"UPDATE sagas SET lease_owner = {owner} WHERE saga_id = 'bad'")
    async with SQLiteSagaStore(path) as store:
        listed = [summary.saga_id for summary in await store.list_sagas()]
        assert listed == ["good"]
        with pytest.raises(CorruptSagaRecord, match=re.escape(reason)):
            await store.load("bad")
        report = await recover(store, [RowSaga], older_than=0, lease=60)
        assert report.skipped == [("bad", f"its row is unreadable: {reason}")]
        assert report.resumed == ["good"]


async def test_s12_a_finished_saga_with_a_status_in_another_case_is_reported_too(
    tmp_path: Path,
) -> None:
    """'COMPLETED' is no status of the store's: every reader refuses it, and
    whether that saga is finished is unknown — so it is reported, not
    judged by a guess at its case."""
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, "status-upper", SagaStatus.RUNNING)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE sagas SET status = 'COMPLETED' WHERE saga_id = 'bad'")
    async with SQLiteSagaStore(path) as store:
        report = await recover(store, [RowSaga], older_than=0, lease=60)
    assert report.skipped == [("bad", "its row is unreadable: unknown saga status 'COMPLETED'")]


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ("status-unknown", "unknown saga status 'paused'"),
        ("claims-real-above-park-after", "its unreleased_claims is not an integer"),
    ],
)
async def test_s12_a_worker_tells_a_row_its_claim_used_to_leave_out_as_skipped(
    tmp_path: Path, mutation: str, reason: str
) -> None:
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, mutation, SagaStatus.RUNNING)
    told = OutcomesTold()
    async with SQLiteSagaStore(path, park_after=_PARK_AFTER) as store:
        worker = RecoveryWorker(store, [RowSaga], concurrency=1, lease=30, poll=3600,
                                older_than=0, listen=False, listeners=[told])
        # until the good saga is done and the bad told
        await run_worker_until(worker, lambda: worker.stats.completed and worker.stats.skipped)
    assert skipped_told(told) == [("bad", f"its row is unreadable: {reason}")]
    assert worker.stats.skipped == 1
    assert worker.stats.completed == 1


async def test_s12_a_worker_claiming_by_name_is_not_told_of_another_services_unknown_status(
    tmp_path: Path,
) -> None:
    """A worker's claim reads the sagas of its names only: a row of another
    service's saga is left to that service's workers (and to ``recover``)."""
    path = tmp_path / "sagas.db"
    await _store_with_bad_row(path, "status-unknown", SagaStatus.RUNNING)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE sagas SET saga_name = 'Other' WHERE saga_id = 'bad'")
    async with SQLiteSagaStore(path) as store:
        from fallback_saga.store._skipped_rows import collecting

        with collecting() as rows:
            await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10,
                              names=("RowSaga",))
        assert rows == []
        with collecting() as rows:
            await store.claim(owner="w2", lease_seconds=60, older_than=0, limit=10,
                              names=("Other",))
        assert rows == [("bad", "its row is unreadable: unknown saga status 'paused'")]
