"""A released lease is no lease in a listing.

``release`` clears a saga's lease owner and sets its expiry to the release
time (so the saga is claimable at once). A listing — ``list_sagas`` of the
SQLite and PostgreSQL stores, and ``python -m fallback_saga list --json`` —
must show no expiry for it, not that stale time; a held lease shows its
owner and its expiry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from fallback_saga import SQLiteSagaStore
from fallback_saga.cli import main
from fallback_saga.store.base import RecoverableStore
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

Opener = Callable[[], AbstractAsyncContextManager[RecoverableStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def store_and_options(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Opener, list[str]]:
    """How to open the store, and the command-line options that name it."""
    if request.param == "sqlite":
        db = str(tmp_path / "sagas.db")

        @asynccontextmanager
        async def sqlite() -> AsyncIterator[RecoverableStore]:
            async with SQLiteSagaStore(db) as store:
                yield store

        return sqlite, ["--db", db]
    from conftest_pg import require_driver

    require_driver()
    conninfo: str = request.getfixturevalue("pg_conninfo")
    schema: str = request.getfixturevalue("pg_schema")
    from fallback_saga.store.postgres import PostgresSagaStore

    @asynccontextmanager
    async def postgres() -> AsyncIterator[RecoverableStore]:
        async with PostgresSagaStore(conninfo, schema=schema) as store:
            yield store

    return postgres, ["--dsn", conninfo, "--schema", schema]


async def released_and_held(open_store: Opener) -> float:
    """``released`` had a lease and gave it back; ``held`` has one: its expiry."""
    async with open_store() as store:
        for saga_id in ("released", "held"):
            await store.create(saga_id, "OrderSaga", "fp", {}, [entry(0, "a")])
            lease = await store.claim_saga(saga_id, owner=f"worker-{saga_id}", lease_seconds=300)
            if saga_id == "released":
                await store.release(lease)
            else:
                return lease.expires_at
    raise AssertionError("not reached")


def test_a_store_lists_a_released_lease_without_its_expiry(
    store_and_options: tuple[Opener, list[str]],
) -> None:
    open_store, _ = store_and_options

    async def go() -> dict[str, tuple[str | None, float | None]]:
        await released_and_held(open_store)
        async with open_store() as store:
            return {
                summary.saga_id: (summary.lease_owner, summary.lease_expires_at)
                for summary in await store.list_sagas()
            }

    listed = asyncio.run(go())
    assert listed["released"] == (None, None)
    owner, expires = listed["held"]
    assert owner == "worker-held"
    assert expires is not None


def test_list_json_shows_no_expiry_for_a_released_lease(
    store_and_options: tuple[Opener, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    open_store, options = store_and_options
    held_until = asyncio.run(released_and_held(open_store))
    assert main(["list", *options, "--json"]) == 0
    rows = {row["saga_id"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["released"]["lease_owner"], rows["released"]["lease_expires_at"]) == (None, None)
    assert rows["held"]["lease_owner"] == "worker-held"
    assert rows["held"]["lease_expires_at"] == pytest.approx(held_until, abs=1e-3)
    assert main(["list", *options]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:-1]}
    assert table["released"].endswith("  -")
    assert table["held"].endswith("  worker-held")
