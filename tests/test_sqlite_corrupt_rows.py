"""SQLite saga store rows that another tool (or a damaged page) wrote wrong,
and files that are not saga stores (S12: bad input gets a clear error, and
nothing is lost).

* A corrupt row -- text that is not UTF-8, a BLOB where text belongs, a fence
  or lease that is not a number -- is reported with its saga id (escaped) and
  skipped: listings, counts and ``claim`` go on with every other saga, and
  ``claim`` still fills its limit with good rows.
* Reading a corrupt saga raises ``CorruptSagaRecord`` naming it, and never
  quotes the undecodable text (a context may hold secrets).
* Another program's SQLite file is never switched to WAL, migrated or
  written: a ``sagas`` table of its own, or a ``user_version`` of its own
  without the saga tables, is refused before anything changes.
* The path is always a file's path: ``file:orders.db`` is the file of that
  name, never SQLite's URI for ``orders.db``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from helpers_saga import RowSaga

from fallback_saga.errors import CorruptSagaRecord, SagaStoreError
from fallback_saga.recovery import recover
from fallback_saga.status import SagaStatus
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import entry

# s\xff: not UTF-8; written the way a C program or another tool would.
_BAD_TEXT = "CAST(X'73ff' AS TEXT)"
_PAST = -1.0  # "older than -1 s": every saga, whatever the clock says
_SECRET_BYTES = "CAST(X'7b2263617264223a2234323432ff227d' AS TEXT)"  # {"card":"4242\xff"}


@pytest.fixture
def path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "sagas.db")


async def _make(path: str, *ids: str, running: bool = False) -> None:
    async with SQLiteSagaStore(path) as store:
        for saga_id in ids:
            await store.create(saga_id, "OrderSaga", "fp", {"n": 1}, [entry(0, "a")])
            if not running:
                await store.append(saga_id, [], status=SagaStatus.COMPLETED)


def _damage(path: str, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="fallback_saga.store.sqlite"):
        yield caplog


# --------------------------------------------------------------------------- listings


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("saga_name", _BAD_TEXT, "s2"),
        ("saga_id", _BAD_TEXT, r"b's\xff'"),
        ("saga_id", "X'7332'", "b's2'"),  # a BLOB id
        ("status", _BAD_TEXT, "s2"),
        ("created_at", "'yesterday'", "s2"),
        ("updated_at", "9e999", "s2"),  # infinity
    ],
)
async def test_S12_a_corrupt_row_is_left_out_of_the_listing_and_named(
    path: str, warnings: pytest.LogCaptureFixture, column: str, value: str, shown: str
) -> None:
    await _make(path, "s1", "s2", "s3")
    owner = "" if column == "lease_owner" else ", lease_owner = 'w1'"
    _damage(path, f"UPDATE sagas SET {column} = {value}{owner} WHERE saga_id = 's2'")
    async with SQLiteSagaStore(path) as store:
        listed = await store.list_sagas(limit=10)
        assert [summary.saga_id for summary in listed] == ["s3", "s1"]
        counts = await store.count_sagas()
    assert shown in warnings.text
    if column in ("saga_name", "status"):
        assert sum(counts.values()) == 2


@pytest.mark.parametrize(
    ("column", "value"),
    [("lease_expires_at", "'soon'"), ("lease_owner", _BAD_TEXT), ("lease_owner", "X'77'")],
)
async def test_S12_a_finished_sagas_unreadable_lease_is_listed_and_counted_as_none(
    path: str, column: str, value: str
) -> None:
    """No claim reads a finished saga's lease: its row is listed, its lease
    shown as none, and counted (every count agrees with the listing; such
    rows are found by no index, so leaving them out would leave the counts
    to read every finished saga)."""
    await _make(path, "s1", "s2", "s3")
    owner = "" if column == "lease_owner" else ", lease_owner = 'w1'"
    _damage(path, f"UPDATE sagas SET {column} = {value}{owner} WHERE saga_id = 's2'")
    async with SQLiteSagaStore(path) as store:
        listed = await store.list_sagas(limit=10)
        counts = await store.count_sagas()
    assert [summary.saga_id for summary in listed] == ["s3", "s2", "s1"]
    assert listed[1].lease_expires_at is None
    if column == "lease_owner":
        assert listed[1].lease_owner is None
    assert counts == {("OrderSaga", SagaStatus.COMPLETED): 3}
    assert counts.unreadable == 0


async def test_S12_a_read_only_store_lists_around_a_row_that_is_not_utf8(
    path: str, warnings: pytest.LogCaptureFixture
) -> None:
    await _make(path, "s1", "s2", "s3")
    _damage(path, f"UPDATE sagas SET saga_name = {_BAD_TEXT} WHERE saga_id = 's2'")
    async with SQLiteSagaStore(path, read_only=True) as store:
        assert [s.saga_id for s in await store.list_sagas(limit=10)] == ["s3", "s1"]
        assert await store.count_sagas() == {("OrderSaga", SagaStatus.COMPLETED): 2}


# --------------------------------------------------------------------------- claim


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("fence", "'x'", "s2"),
        ("fence", "1.5", "s2"),
        ("saga_id", _BAD_TEXT, r"b's\xff'"),
        ("saga_id", "X'7332'", "b's2'"),
        ("saga_id", "''", "''"),
        # Rows no comparison with a time would ever find due: reported all the same.
        ("lease_expires_at", "'soon'", "s2"),
        ("updated_at", "'yesterday'", "s2"),
        # A count of claims no comparison with park_after would ever find
        # below it: reported too, not left unclaimed without a word.
        ("unreleased_claims", "'x'", "s2"),
        ("unreleased_claims", "X'01'", "s2"),
        ("unreleased_claims", "1.5", "s2"),
        # A fence the claim cannot add one to: SQLite's largest integer (found
        # by the row fuzz: the claim's write overflowed, and recover() raised
        # for every saga of the pass).
        ("fence", "9223372036854775807", "s2"),
        # So many claims, as many as a fence can count: no store counts that
        # far (another tool wrote it) — corrupt as that fence is, not parked.
        ("unreleased_claims", "9223372036854775807", "s2"),
    ],
)
async def test_S12_claim_skips_a_corrupt_row_names_it_and_claims_the_others(
    path: str, warnings: pytest.LogCaptureFixture, column: str, value: str, shown: str
) -> None:
    await _make(path, "s1", "s2", "s3", running=True)
    _damage(path, f"UPDATE sagas SET updated_at = 0, {column} = {value} WHERE saga_id = 's2'")
    async with SQLiteSagaStore(path) as store:
        # The corrupt row is the oldest: it must not take the one place.
        (first,) = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=1)
        rest = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10)
    assert sorted([first.saga_id] + [lease.saga_id for lease in rest]) == ["s1", "s3"]
    assert shown in warnings.text


async def test_S12_claim_fills_its_limit_past_many_corrupt_rows(
    path: str, warnings: pytest.LogCaptureFixture
) -> None:
    ids = [f"s{n}" for n in range(10)]
    await _make(path, *ids, running=True)
    _damage(path, "UPDATE sagas SET fence = 'x', updated_at = 0 WHERE saga_id < 's7'")
    async with SQLiteSagaStore(path) as store:
        leases = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=2)
    assert len(leases) == 2
    assert {lease.saga_id for lease in leases} <= {"s7", "s8", "s9"}
    assert warnings.text.count("fence") == 7  # each corrupt row reported once


async def test_S12_a_corrupt_row_is_reported_once_per_lease_not_on_every_claim(
    path: str, warnings: pytest.LogCaptureFixture
) -> None:
    """A corrupt row is never leased, so every claim (every worker's poll)
    meets it again: it is reported once per ``lease_seconds``, as a worker
    reports a saga it skips, not once per poll."""
    await _make(path, "s1", "s2", running=True)
    _damage(path, "UPDATE sagas SET fence = 'x', updated_at = 0 WHERE saga_id = 's1'")
    now = [1_800_000_000.0]
    async with SQLiteSagaStore(path, clock=lambda: now[0]) as store:
        for _ in range(5):  # five polls within one lease's length
            await store.claim(owner="w", lease_seconds=60, older_than=_PAST, limit=10)
            now[0] += 10
        reported = [r for r in warnings.records if "skipping a saga in recovery" in r.message]
        assert len(reported) == 1
        assert "s1" in reported[0].getMessage()
        now[0] += 20  # a lease's length after the first report
        await store.claim(owner="w", lease_seconds=60, older_than=_PAST, limit=10)
    reported = [r for r in warnings.records if "skipping a saga in recovery" in r.message]
    assert len(reported) == 2


async def test_S12_claim_saga_and_lease_state_of_a_corrupt_lease_name_the_saga(
    path: str,
) -> None:
    await _make(path, "s1", running=True)
    _damage(path, "UPDATE sagas SET fence = 'x', lease_expires_at = 'soon' WHERE saga_id = 's1'")
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord, match="s1"):
            await store.claim_saga("s1", owner="w", lease_seconds=60)
        with pytest.raises(CorruptSagaRecord, match="s1"):
            await store.lease_state("s1")


@pytest.mark.parametrize("park_after", [5, None], ids=["parking", "never-parked"])
async def test_S12_claims_at_the_largest_integer_are_a_corrupt_row_not_a_parked_saga(
    path: str, warnings: pytest.LogCaptureFixture, park_after: int | None
) -> None:
    """Left out as parked, the row was shown as a saga claimed 2**63 - 1
    times and never reported as corrupt; as the fence at that value is, it
    is reported by the claim, which claims the others, and ``claim_saga``
    refuses it naming the saga."""
    await _make(path, "s1", "s2", running=True)
    _damage(path, "UPDATE sagas SET updated_at = 0, unreleased_claims = 9223372036854775807"
                  " WHERE saga_id = 's1'")
    async with SQLiteSagaStore(path, park_after=park_after) as store:
        leases = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10)
        assert [lease.saga_id for lease in leases] == ["s2"]
        assert "unreleased_claims is too large" in warnings.text
        with pytest.raises(CorruptSagaRecord, match=r"s1.*unreleased_claims"):
            await store.claim_saga("s1", owner="w", lease_seconds=60)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("fence", "9223372036854775807", "fence is too large"),
        ("fence", "'x'", "fence is not an integer"),
        ("lease_expires_at", "'soon'", "not a finite number"),
    ],
)
async def test_S12_recover_reports_a_row_its_claim_cannot_lease_and_resumes_the_others(
    path: str, column: str, value: str, reason: str
) -> None:
    """The store's claim skipped the row with a log line only: ``recover``'s
    report — what a caller checking ``report.skipped`` sees — left it out.
    Now listed there, once per pass, with why; the others are resumed."""
    async with SQLiteSagaStore(path) as store:
        for saga_id in ("s1", "s2", "s3"):
            await store.create(saga_id, "RowSaga", RowSaga.definition.fingerprint,
                               {}, [entry(0, "RowStep")])
    _damage(path, "UPDATE sagas SET updated_at = 0")  # long due, whatever the clock says
    _damage(path, f"UPDATE sagas SET {column} = {value} WHERE saga_id = 's2'")
    seen: list[tuple[str, str]] = []
    async with SQLiteSagaStore(path) as store:
        report = await recover(store, [RowSaga], older_than=0, lease=60,
                               progress=lambda saga_id, outcome: seen.append((saga_id, outcome)))
        assert sorted(report.resumed) == ["s1", "s3"]
        ((saga_id, why),) = report.skipped
        assert saga_id == "s2"
        assert why.startswith("its row is unreadable: ")
        assert reason in why
        assert ("s2", "skipped") in seen
        # On every pass, though the store's log line is rate-limited.
        again = await recover(store, [RowSaga], older_than=0, lease=60)
        assert again.skipped == report.skipped


@pytest.mark.parametrize("fence", ["'x'", "9223372036854775807"])
async def test_S12_claim_saga_of_a_fence_it_cannot_count_on_names_the_saga(
    path: str, fence: str
) -> None:
    await _make(path, "s1", running=True)
    _damage(path, f"UPDATE sagas SET fence = {fence} WHERE saga_id = 's1'")
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord, match=r"s1.*fence"):
            await store.claim_saga("s1", owner="w", lease_seconds=60)


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("at", ["9e999", "-9e999"])
async def test_S12_a_journal_time_that_is_not_finite_is_a_corrupt_record(
    path: str, at: str
) -> None:
    """Found by the row fuzz: read back as infinity, ``show --json`` and the
    console's JSON printed ``Infinity`` (not JSON). As a saga's own times."""
    await _make(path, "s1", "s2")
    _damage(path, f"UPDATE saga_steps SET at = {at} WHERE saga_id = 's1'")
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord, match="s1"):
            await store.load("s1")
        assert (await store.load("s2")).status is SagaStatus.COMPLETED


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("sagas", "context", _SECRET_BYTES),
        ("sagas", "saga_name", _BAD_TEXT),
        ("sagas", "fingerprint", _BAD_TEXT),
        ("saga_steps", "step", _BAD_TEXT),
        ("saga_steps", "error", _SECRET_BYTES),
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
async def test_S12_loading_text_that_is_not_utf8_is_a_corrupt_record_that_quotes_nothing(
    path: str, table: str, column: str, value: str, read_only: bool
) -> None:
    await _make(path, "s1")
    _damage(path, f"UPDATE {table} SET {column} = {value} WHERE saga_id = 's1'")
    async with SQLiteSagaStore(path, read_only=read_only) as store:
        with pytest.raises(CorruptSagaRecord, match="s1") as caught:
            await store.load("s1")
    assert "4242" not in str(caught.value)


# --------------------------------------------------------------------------- foreign files


def _journal_mode_and_tables(path: str) -> tuple[str, set[str]]:
    conn = sqlite3.connect(path)
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    return mode, tables


@pytest.mark.parametrize(
    "schema",
    [
        ["CREATE TABLE sagas (id INTEGER PRIMARY KEY, title TEXT)"],  # a book catalogue
        ["CREATE TABLE saga_steps (id INTEGER PRIMARY KEY)"],
        ["CREATE TABLE invoices (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 1"],
        ["CREATE TABLE invoices (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 7"],
        ["CREATE TABLE sagas (id INTEGER PRIMARY KEY)", "PRAGMA user_version = 2"],
    ],
)
@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
async def test_S12_another_programs_file_is_refused_and_left_as_it_was(
    path: str, schema: list[str], writer: str
) -> None:
    conn = sqlite3.connect(path)
    for statement in schema:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = _journal_mode_and_tables(path)
    store = SQLiteSagaStore(path, writer=writer)
    with pytest.raises(SagaStoreError, match="not a fallback_saga saga store"):
        await store.open()
    with pytest.raises(SagaStoreError, match="not a fallback_saga saga store"):
        await store.list_sagas()
    await store.close()
    reader = SQLiteSagaStore(path, read_only=True)
    with pytest.raises(SagaStoreError, match="not a fallback_saga saga store"):
        await reader.list_sagas()
    await reader.close()
    assert _journal_mode_and_tables(path) == before
    assert before[0] == "delete"


async def test_a_saga_store_may_share_a_file_with_other_tables(path: str) -> None:
    _damage(path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    await _make(path, "s1")
    mode, tables = _journal_mode_and_tables(path)
    assert mode == "wal"
    assert {"invoices", "sagas", "saga_steps"} <= tables


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
async def test_S12_a_path_that_looks_like_a_uri_is_the_file_of_that_name(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    monkeypatch.chdir(tmp_path)
    await _make("file:orders.db?mode=memory", "s1")
    assert (tmp_path / "file:orders.db?mode=memory").exists()
    assert not (tmp_path / "orders.db").exists()
    async with SQLiteSagaStore("file:orders.db?mode=memory", writer=writer) as store:
        assert (await store.load("s1")).status is SagaStatus.COMPLETED
    async with SQLiteSagaStore("file:orders.db?mode=memory", read_only=True) as store:
        assert (await store.load("s1")).status is SagaStatus.COMPLETED
    # (a read-only store may leave the -wal/-shm files of the same name)
    assert all(name.startswith("file:orders.db?mode=memory") for name in os.listdir(tmp_path))


async def test_memory_and_temporary_databases_still_work() -> None:
    for path in (":memory:", ""):
        async with SQLiteSagaStore(path) as store:
            await store.create("s1", "OrderSaga", "fp", {}, [entry(0, "a")])
            assert (await store.load("s1")).saga_id == "s1"
