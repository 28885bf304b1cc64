"""A durable store dropped without ``close()`` is freed at once, by reference
counting, and lets go of what it holds outside Python — as the SQLite store
always did: its threads stopped, its file closed, no ``ResourceWarning``.

A ``PostgresSagaStore`` hands its work to parts of its own (``Writes``,
``Reads``, ``Counts``, ``Purging``, ``Claims``, ``Leases``); a part that
held the store made a reference cycle, and a store dropped unclosed — one
per test, per tenant, per request in a sync app — stayed, with its own pool
and that pool's server connections, until the garbage collector happened
to run (and then its pool's tasks were destroyed pending). Counted with the
collector off, never timed. (The memory store's: ``test_memory_clean_drop``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import Saga, SagaContext, SagaFailed, SagaStepHandler
from fallback_saga.store.base import RecoverableStore
from fallback_saga.store.sqlite import SQLiteSagaStore

pytest_plugins = ["conftest_pg"]


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = "o"


class Charge(SagaStepHandler[Ctx, None]):
    async def act(self, context: Ctx, /) -> None:
        pass

    async def compensate(self, context: Ctx, /) -> None:
        pass


class Declines(SagaStepHandler[Ctx, None]):
    async def act(self, context: Ctx, /) -> None:
        raise RuntimeError("declined")


class Completes(Saga[Ctx]):
    steps = [Charge]


class Unwinds(Saga[Ctx]):
    steps = [Charge, Declines]


# What each part of a store does, used before the store is dropped.


async def opened(store: Any) -> None:
    await store.open()


async def runs(store: RecoverableStore) -> None:
    """The journal writes (``Writes``, its group commit)."""
    await Completes(store=store).run(Ctx(), saga_id="done")
    with pytest.raises(SagaFailed):
        await Unwinds(store=store).run(Ctx(), saga_id="undone")


async def reads_counts_and_purge(store: RecoverableStore) -> None:
    """``Reads``, ``Counts``, ``Purging``."""
    await Completes(store=store).run(Ctx(), saga_id="done")
    assert (await store.load("done")).saga_id == "done"
    assert [s.saga_id for s in await store.list_sagas(limit=10)] == ["done"]
    assert sum((await store.count_sagas()).values()) == 1
    assert sum((await store.count_sagas(at_most=5)).values()) == 1
    assert await store.saga_names() == ["Completes"]
    assert await store.existing_saga_ids(["done", "nope"]) == {"done"}
    assert await store.purge(older_than=-1) == 1


async def claims_and_leases(store: RecoverableStore) -> None:
    """``Claims``, ``Leases``."""
    await store.create("r", "Completes", "fp", {"order_id": "o"}, [])
    (lease,) = await store.claim(owner="w", lease_seconds=30, older_than=-1, limit=5)
    lease = await store.renew(lease, 30)
    await store.release(lease)
    lease = await store.claim_saga("r", owner="w", lease_seconds=30)
    assert (await store.lease_state("r")).owner == "w"
    await store.defer(lease, 0)
    lease = await store.claim_saga("r", owner="w", lease_seconds=30)
    if hasattr(store, "hand_off"):  # PostgreSQL's (LISTEN/NOTIFY)
        await store.hand_off(lease)
    else:
        await store.release(lease)


USES = [opened, runs, reads_counts_and_purge, claims_and_leases]


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The garbage collector off (what exists before the test frozen out of
    its way): only reference counting frees what the test drops."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _referrers(obj: object) -> list[str]:
    """What still holds ``obj`` (for the assertion's message)."""
    return [type(r).__name__ for r in gc.get_referrers(obj)]


# --------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
@pytest.mark.parametrize("use", USES, ids=lambda use: use.__name__)
async def test_S10_a_sqlite_store_dropped_unclosed_is_freed_at_once(
    use: Callable[[Any], Awaitable[None]], writer: str, tmp_path: Path, no_collector: None
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteSagaStore(tmp_path / "sagas.db", writer=writer)
        await use(store)
        gone = weakref.ref(store)
        del store
        assert gone() is None, _referrers(gone())
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# --------------------------------------------------------------------------- PostgreSQL


def _tagged(conninfo: str, name: str) -> str:
    """``conninfo`` whose sessions name themselves ``name`` (pg_stat_activity)."""
    return f"{conninfo} application_name={name}"


async def _sessions(admin: Any, name: str) -> int:
    """How many server sessions ``_tagged(..., name)`` has open."""
    cursor = await admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND application_name = %s",
        (name,),
    )
    row = await cursor.fetchone()
    return int(row[0])


async def _until_no_sessions(admin: Any, name: str) -> int:
    """The sessions still open once the server has had the time to see its
    clients gone (a closed connection's backend exits a moment later)."""
    for _ in range(200):
        if not await _sessions(admin, name):
            break
        await admin.execute("SELECT pg_sleep(0.05)")
    return await _sessions(admin, name)


@pytest.mark.parametrize("use", USES, ids=lambda use: use.__name__)
async def test_S10_a_postgres_store_dropped_unclosed_is_freed_at_once_and_ends_its_connections(
    use: Callable[[Any], Awaitable[None]], pg_conninfo: str, pg_schema: str,
    no_collector: None, caplog: pytest.LogCaptureFixture,
) -> None:
    import psycopg

    from fallback_saga.store._postgres_pool_closing import CLOSER
    from fallback_saga.store.postgres import PostgresSagaStore

    name = f"drop_{pg_schema}"
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with await psycopg.AsyncConnection.connect(pg_conninfo, autocommit=True) as admin:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = PostgresSagaStore(_tagged(pg_conninfo, name), schema=pg_schema, min_size=2)
            await use(store)
            pool = store.pool
            assert pool is not None
            assert await _sessions(admin, name) >= 1
            gone = weakref.ref(store)
            del store
            assert gone() is None, _referrers(gone())
            # Its own pool is closed on its loop (nobody else can): the
            # closing is scheduled there, then the pool's closer ends, not
            # left pending.
            await asyncio.sleep(0)
            closers = {task for task in asyncio.all_tasks() if task.get_name() == CLOSER}
            assert closers
            _, pending = await asyncio.wait(closers, timeout=10)
            assert pending == set()
            assert pool.closed
            assert await _until_no_sessions(admin, name) == 0
            del pool
            gc.enable()
            gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_S10_a_postgres_store_dropped_unclosed_leaves_a_given_pool_open(
    pg_conninfo: str, pg_schema: str, no_collector: None
) -> None:
    import psycopg_pool

    from fallback_saga.store.postgres import PostgresSagaStore

    async with psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as pool:
        store = PostgresSagaStore(pool, schema=pg_schema)
        await claims_and_leases(store)
        gone = weakref.ref(store)
        del store
        assert gone() is None, _referrers(gone())
        async with pool.connection() as conn:  # yours: used, never closed
            await conn.execute("SELECT 1")
