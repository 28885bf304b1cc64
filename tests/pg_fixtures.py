"""Two fixtures the PostgreSQL store's own test modules share, imported by
name into each (pytest finds them in the module): ``store``, a
``PostgresSagaStore`` on the test's own schema, and ``raw``, a plain
autocommit connection whose search_path is that schema. (They need
``pytest_plugins = ["conftest_pg"]`` and ``require_driver()`` first.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from fallback_saga.store.postgres import PostgresSagaStore


@pytest.fixture(name="store")
async def postgres_store(pg_conninfo: str, pg_schema: str) -> AsyncIterator[PostgresSagaStore]:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        yield store


@pytest.fixture(name="raw")
def raw_connection(pg_conninfo: str, pg_schema: str) -> Iterator[Any]:
    """A plain autocommit connection whose search_path is the test's schema."""
    conn = psycopg.connect(pg_conninfo, autocommit=True)
    conn.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
    yield conn
    conn.close()
