"""One saga store of each kind, for tests that must hold on all of them.

``every_store`` is a pytest fixture (a plugin: ``pytest_plugins = ["helpers_stores"]``) giving a
``MemorySagaStore``, a ``SQLiteSagaStore`` on a fresh file and a
``PostgresSagaStore`` on a fresh schema of the session's throwaway cluster
(the module must also say ``pytest_plugins = ["conftest_pg"]``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import MemorySagaStore, SQLiteSagaStore

STORE_KINDS = ("memory", "sqlite", "postgres")


@pytest.fixture(params=STORE_KINDS)
async def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemorySagaStore()
        return
    if request.param == "sqlite":
        async with SQLiteSagaStore(tmp_path / "sagas.db") as sqlite:
            yield sqlite
        return
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as pg:
        yield pg
