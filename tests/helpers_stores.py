"""One saga store of each kind, for tests that must hold on all of them.

``every_store`` is a pytest fixture (a plugin: ``pytest_plugins = ["helpers_stores"]``) giving a
``MemorySagaStore``, a ``SQLiteSagaStore`` on a fresh file and a
``PostgresSagaStore`` on a fresh schema of the session's throwaway cluster
(the module must also say ``pytest_plugins = ["conftest_pg"]``);
``durable_store`` the last two only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import MemorySagaStore, SQLiteSagaStore

STORE_KINDS = ("memory", "sqlite", "postgres")
DURABLE_KINDS = ("sqlite", "postgres")


@contextlib.asynccontextmanager
async def _store_of(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemorySagaStore()
        return
    if kind == "sqlite":
        async with SQLiteSagaStore(tmp_path / "sagas.db") as sqlite:
            yield sqlite
        return
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as pg:
        yield pg


@pytest.fixture(params=STORE_KINDS)
async def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with _store_of(request.param, request, tmp_path) as store:
        yield store


@pytest.fixture(params=DURABLE_KINDS)
async def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A ``SQLiteSagaStore`` on a fresh file, then a ``PostgresSagaStore`` on a
    fresh schema: the stores recovery claims from."""
    async with _store_of(request.param, request, tmp_path) as store:
        yield store


def record_lease_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """From now on, each statement the PostgreSQL store's claims and leases
    send (its text and parameters), in order, as the list returned."""
    # The PostgreSQL tests' only
    from fallback_saga.store import _postgres_claims, _postgres_leases

    sent: list[tuple[str, list[Any]]] = []
    query = _postgres_leases._query  # the connection layer's, which both import

    async def recorded(conn: Any, statement: str, values: Any = (), *args: Any) -> Any:
        sent.append((statement, list(values)))
        return await query(conn, statement, values, *args)

    monkeypatch.setattr(_postgres_claims, "_query", recorded)
    monkeypatch.setattr(_postgres_leases, "_query", recorded)
    return sent
