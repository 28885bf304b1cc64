"""A PostgreSQL purge stopped partway tells what it deleted before it stopped
(``purge(on_batch=...)``, the ``purge`` command): a fault injected in its
second batch, on a throwaway server."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import pytest
from conftest_pg import require_driver

require_driver()

from fallback_saga import SagaStatus  # noqa: E402
from fallback_saga.cli import main  # noqa: E402
from fallback_saga.errors import SagaStoreError  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

pytest_plugins = ["conftest_pg"]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batches of 10 (and never larger), the second refused by the server;
    the batches tried, counted."""
    # The purge reads its batch sizes where it runs (postgres.py re-exports them).
    import fallback_saga.store._postgres_purge as purging

    monkeypatch.setattr(purging, "PURGE_BATCH", 10)
    monkeypatch.setattr(purging, "PURGE_BATCH_MAX", 10)
    fetch = PostgresSagaStore._fetch
    tried: list[int] = []

    async def failing(self: PostgresSagaStore, doing: str, statement: str, *args: Any,
                      **kw: Any) -> Any:
        if statement is self._sql.purge:
            tried.append(1)
            if len(tried) == 2:
                error = SagaStoreError(f"{doing}: injected: the server refused the batch")
                error.nothing_written = True
                raise error
        return await fetch(self, doing, statement, *args, **kw)

    monkeypatch.setattr(PostgresSagaStore, "_fetch", failing)
    return tried


async def _backlog(conninfo: str, schema: str, count: int) -> None:
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        for n in range(count):
            await store.create(f"s-{n}", "OrderSaga", "fp", {}, [],
                               status=SagaStatus.COMPLETED)


async def test_postgres_purge_tells_each_batch_and_a_fault_in_the_second_keeps_the_first(
    pg_conninfo: str, pg_schema: str, small_batches: list[int]
) -> None:
    await _backlog(pg_conninfo, pg_schema, 25)
    told: list[int] = []
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) as store:
        with pytest.raises(SagaStoreError, match="earlier batches deleted 10 saga"):
            await store.purge(older_than=-1, on_batch=told.append)
        assert told == [10]
        assert len(await store.list_sagas(limit=100)) == 15
        told.clear()
        assert await store.purge(older_than=-1, on_batch=told.append) == 15
        assert told == [10, 5]


async def test_the_purge_command_on_postgres_stopped_says_how_many_it_deleted(
    pg_conninfo: str, pg_schema: str, small_batches: list[int]
) -> None:
    await _backlog(pg_conninfo, pg_schema, 25)
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["purge", "--dsn", pg_conninfo, "--schema", pg_schema,
                         "--older-than", "0"])

    assert await asyncio.to_thread(run) == 1
    assert out.getvalue() == (
        "purge stopped: 10 finished sagas were deleted before it did, and stay deleted; "
        "purge again for the rest\n"
    )
    assert "injected" in err.getvalue()
