"""``test_unleasable_rows_shown``'s rule on PostgreSQL (a throwaway server,
conftest_pg.py): a row the claim leaves out as corrupt (``unclaimable``: a
fence at bigint's largest, a count of claims at the integer column's) is
shown as corrupt — unreadable, with the claim's reason — by the store's
listing, ``load`` and ``load_window``, the CLI's ``list`` and ``show`` and
the console, never as a running or parked saga (S12)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_stores import record_lease_statements
from test_unleasable_rows_shown import (
    _IDS,
    _claim_reason,
    check_cli,
    check_console,
    check_store_readers,
)

from fallback_saga.errors import CorruptSagaRecord
from fallback_saga.status import SagaStatus
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

from pg_fixtures import raw_connection  # noqa: E402, F401  (the fixture raw)

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

# (SET clause, the claim's reason): each condition the claim leaves a row out for.
POSTGRES_CORRUPTIONS = {
    "fence-largest": ("fence = 9223372036854775807", "its fence is too large to be counted on"),
    "claims-largest": ("unreleased_claims = 2147483647",
                       "its unreleased_claims is too large to be counted on"),
    # Times at timestamptz's infinities (another tool's write). A lease that
    # expires at infinity is never due: the claim never met it, and never
    # reported it, while the listings left it out as corrupt.
    "lease-held-until-infinity": ("lease_owner = 'gone', lease_expires_at = 'infinity'",
                                  "its lease_expires_at is not a finite number"),
    "lease-given-back-until-infinity": ("lease_owner = NULL, lease_expires_at = 'infinity'",
                                        "its lease_expires_at is not a finite number"),
    "lease-held-until-minus-infinity": ("lease_owner = 'gone', lease_expires_at = '-infinity'",
                                        "its lease_expires_at is not a finite number"),
    # Due, leased, then unreadable to the resume: counted towards parking
    # every pass, and once parked never reported again.
    "updated-at-infinity": ("updated_at = 'infinity'", "its updated_at is not a finite number"),
    "updated-at-minus-infinity": ("updated_at = '-infinity'",
                                  "its updated_at is not a finite number"),
    "created-at-infinity": ("created_at = 'infinity'", "its created_at is not a finite number"),
    "created-at-minus-infinity": ("created_at = '-infinity'",
                                  "its created_at is not a finite number"),
}


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        yield caplog


async def _fill(store: PostgresSagaStore, conn: Any, mutation: str, status: SagaStatus) -> None:
    for saga_id in _IDS:
        await store.create(saga_id, "OrderSaga", "fp", {"n": 1}, [entry(0, "a")])
        if status is not SagaStatus.RUNNING:
            await store.append(saga_id, [], status=status)
    conn.execute("UPDATE fallback_saga_sagas SET updated_at = now() - interval '1 day'")
    conn.execute(f"UPDATE fallback_saga_sagas SET {mutation} WHERE saga_id = 'bad'")


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
@pytest.mark.parametrize("corruption", list(POSTGRES_CORRUPTIONS))
async def test_s12_postgres_row_the_claim_skips_is_unreadable_to_every_reader(
    pg_conninfo: str, pg_schema: str, raw: Any, warnings: pytest.LogCaptureFixture,
    corruption: str, status: SagaStatus,
) -> None:
    mutation, words = POSTGRES_CORRUPTIONS[corruption]
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, mutation, status)
        assert await _claim_reason(store) == words
        await check_store_readers(store, words, warnings)
        if status is SagaStatus.RUNNING:
            await check_console(store, words)
    if status is SagaStatus.RUNNING:
        await asyncio.to_thread(check_cli, ["--dsn", pg_conninfo, "--schema", pg_schema], words)


@pytest.mark.parametrize("status", [SagaStatus.COMPLETED, SagaStatus.FAILED])
async def test_s12_postgres_a_finished_saga_is_not_called_corrupt_for_what_the_claim_never_reads(
    pg_conninfo: str, pg_schema: str, raw: Any, status: SagaStatus,
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, "unreleased_claims = 2147483647", status)
        assert len(await store.list_sagas(limit=10)) == 3
        assert (await store.load("bad")).status is status


@pytest.mark.parametrize("touched_at", ["infinity", "-infinity"])
async def test_s12_postgres_touched_at_not_finite_is_still_claimed(
    pg_conninfo: str, pg_schema: str, raw: Any, touched_at: str,
) -> None:
    """touched_at only orders the claim (no reader shows it): a saga whose
    touched_at is not finite is no corrupt row, and is recovered."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, f"touched_at = '{touched_at}'", SagaStatus.RUNNING)
        from fallback_saga.store._skipped_rows import collecting

        with collecting() as skipped:
            leases = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10)
        assert sorted(lease.saga_id for lease in leases) == ["bad", "good-1", "good-2"]
        assert skipped == []


async def test_s12_postgres_recover_reports_a_lease_held_until_infinity(
    pg_conninfo: str, pg_schema: str, raw: Any,
) -> None:
    """End to end: ``recover()``'s report names the saga whose lease never
    expires (it waited forever, reported by nothing)."""
    from fallback_saga import recover

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, "lease_owner = 'gone', lease_expires_at = 'infinity'",
                    SagaStatus.RUNNING)
        raw.execute("UPDATE fallback_saga_sagas SET status = 'completed'"
                    " WHERE saga_id <> 'bad'")
        report = await recover(store, {}, older_than=0)
        assert [saga_id for saga_id, _ in report.skipped] == ["bad"]
        assert "lease_expires_at is not a finite number" in report.skipped[0][1]


@pytest.mark.parametrize(("mutation", "words"), [
    ("fence = 9223372036854775807", "its fence is too large to be counted on"),
    ("unreleased_claims = 2147483647", "its unreleased_claims is too large to be counted on"),
    ("lease_owner = 'gone', lease_expires_at = 'infinity'",
     "lease_expires_at is not a finite number"),
])
@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPLETED])
async def test_s12_postgres_lease_state_refuses_what_sqlite_refuses(
    pg_conninfo: str, pg_schema: str, raw: Any, mutation: str, words: str,
    status: SagaStatus,
) -> None:
    """SQLite's ``lease_state`` refuses a fence or a count of claims at the
    largest value its column holds, and an expiry that is not a finite
    number (``CorruptSagaRecord`` naming the saga); PostgreSQL's returned them."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await _fill(store, raw, mutation, status)
        with pytest.raises(CorruptSagaRecord, match=r"'bad'") as raised:
            await store.lease_state("bad")
        assert words in raised.value.reason
        await store.lease_state("good-1")  # the others still read


async def test_s12_postgres_claim_reports_the_rows_it_met_walking_no_further(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim that takes its limit reports the rows it cannot lease among
    those it walked past — its ``unclaimable`` query reads no further than
    the claim's own walk (it read every saga in flight: a million at a
    backlog, at each ``recover`` pass) — and the claims that drain the
    backlog, oldest first, meet and report the ones behind."""
    from fallback_saga.store._skipped_rows import collecting

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.open()
        raw.execute(
            "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context,"
            " updated_at, touched_at) SELECT 's' || lpad(n::text, 5, '0'), 'OrderSaga', 'fp',"
            " 'running', '{}', now() - interval '1 day' + make_interval(secs => n),"
            " now() - interval '1 day' + make_interval(secs => n)"
            " FROM generate_series(1, 3000) AS n")
        raw.execute("UPDATE fallback_saga_sagas SET fence = 9223372036854775807"
                    " WHERE saga_id = 's00015'")
        raw.execute("ANALYZE fallback_saga_sagas")
        sent = record_lease_statements(monkeypatch)
        with collecting() as skipped:
            first = await store.claim(owner="w", lease_seconds=600, older_than=60, limit=10)
        assert [lease.saga_id for lease in first] == [f"s{n:05d}" for n in range(1, 11)]
        ((statement, values),) = [(text, params) for text, params in sent
                                  if text.startswith("SELECT saga_id, status, fence")]
        plan = "\n".join(row[0] for row in raw.execute(
            "EXPLAIN (ANALYZE) " + statement, values))
        read = sum(int(rows) + int(removed or 0) for rows, removed in re.findall(
            r"on fallback_saga_sagas\b[^\n]*actual time=\S+ rows=(\d+)"
            r"(?:[^\n]*\n(?:\s+(?:Index Cond|Filter)[^\n]*\n)*\s+Rows Removed by Filter: (\d+))?",
            plan + "\n"))
        assert read <= 20, plan  # the claim's walk, not the 3,000 sagas in flight
        assert skipped == []  # not met yet
        with collecting() as skipped:
            await store.claim(owner="w", lease_seconds=600, older_than=60, limit=10)
        assert [saga_id for saga_id, _ in skipped] == ["s00015"]  # met on its way
