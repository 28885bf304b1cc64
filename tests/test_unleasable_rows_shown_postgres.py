"""``test_unleasable_rows_shown``'s rule on PostgreSQL (a throwaway server,
conftest_pg.py): a row the claim leaves out as corrupt (``unclaimable``: a
fence at bigint's largest, a count of claims at the integer column's) is
shown as corrupt — unreadable, with the claim's reason — by the store's
listing, ``load`` and ``load_window``, the CLI's ``list`` and ``show`` and
the console, never as a running or parked saga (S12)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_pg import require_driver
from test_unleasable_rows_shown import (
    _IDS,
    _claim_reason,
    check_cli,
    check_console,
    check_store_readers,
)

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
