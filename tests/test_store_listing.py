"""The optional listing capabilities of the stores, for operators and the web
console: ``list_sagas(before=, created_since=, created_until=)``,
``count_sagas`` and ``lease_state`` — on MemorySagaStore, SQLiteSagaStore and
PostgresSagaStore alike (PostgreSQL: a throwaway server, see conftest_pg.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers_saga import OrderCtx, Probe, declare

from fallback_saga import MemorySagaStore, SagaStatus, SQLiteSagaStore, StepStatus
from fallback_saga.errors import SagaNotFound
from fallback_saga.store.base import LeaseState
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

STORES = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemorySagaStore()
    elif request.param == "sqlite":
        async with SQLiteSagaStore(tmp_path / "sagas.db") as sqlite_store:
            yield sqlite_store
    else:
        conninfo = request.getfixturevalue("pg_conninfo")  # skips when PostgreSQL cannot run
        schema = request.getfixturevalue("pg_schema")
        from fallback_saga.store.postgres import PostgresSagaStore

        async with PostgresSagaStore(conninfo, schema=schema) as pg_store:
            yield pg_store


async def add(store: Any, saga_id: str, name: str = "OrderSaga", **kwargs: Any) -> None:
    await store.create(saga_id, name, "fp", {"order_id": saga_id}, [entry(0, "a")], **kwargs)


async def ids(store: Any, **kwargs: Any) -> list[str]:
    return [summary.saga_id for summary in await store.list_sagas(**kwargs)]


async def test_every_store_names_its_listing_filters(store: Any) -> None:
    assert set(store.listing_filters) == {"before", "created_since", "created_until"}


async def test_before_pages_through_every_saga_newest_first(store: Any) -> None:
    created = [f"saga-{n:02d}" for n in range(11)]
    for saga_id in created:
        await add(store, saga_id)
    pages: list[list[str]] = []
    before = None
    while True:
        page = await ids(store, limit=4, before=before)
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert [len(page) for page in pages] == [4, 4, 3]
    assert [saga_id for page in pages for saga_id in page] == created[::-1]


async def test_before_combines_with_status_and_name(store: Any) -> None:
    for n in range(6):
        status = SagaStatus.COMPLETED if n % 2 else SagaStatus.RUNNING
        await add(store, f"s{n}", "A" if n < 3 else "B", status=status)
    assert await ids(store, status=SagaStatus.COMPLETED) == ["s5", "s3", "s1"]
    assert await ids(store, status=SagaStatus.COMPLETED, before="s5") == ["s3", "s1"]
    # The cursor need not match the filters itself: it is a place in the order.
    assert await ids(store, status=SagaStatus.COMPLETED, before="s4") == ["s3", "s1"]
    assert await ids(store, saga_name="A", before="s2") == ["s1", "s0"]
    assert await ids(store, saga_name="B", status=SagaStatus.RUNNING, before="s5") == ["s4"]


async def test_a_cursor_saga_that_is_gone_is_saga_not_found(store: Any) -> None:
    await add(store, "here")
    with pytest.raises(SagaNotFound):
        await store.list_sagas(before="gone")


async def test_created_since_and_until_are_a_half_open_range(store: Any) -> None:
    await add(store, "early")
    await asyncio.sleep(0.05)
    middle = time.time()
    await asyncio.sleep(0.05)
    await add(store, "late")
    assert await ids(store, created_since=middle) == ["late"]
    assert await ids(store, created_until=middle) == ["early"]
    assert await ids(store, created_since=middle, created_until=middle) == []
    late = (await store.list_sagas(created_since=middle))[0]
    # created_since is inclusive, created_until exclusive.
    assert await ids(store, created_since=late.created_at) == ["late"]
    assert await ids(store, created_since=middle, created_until=late.created_at) == []
    assert await ids(store, created_since=0, created_until=time.time() + 60) == ["late", "early"]


async def test_time_filters_combine_with_every_other_filter(store: Any) -> None:
    await add(store, "old-a", "A")
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    for n in range(4):
        await add(store, f"new-{n}", "A" if n % 2 else "B", status=SagaStatus.FAILED)
    assert await ids(store, saga_name="A", created_since=since) == ["new-3", "new-1"]
    assert await ids(
        store, saga_name="A", status=SagaStatus.FAILED, created_since=since, before="new-3"
    ) == ["new-1"]
    assert await ids(store, created_since=since, limit=2) == ["new-3", "new-2"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, "yesterday", True])
async def test_a_time_that_is_not_a_finite_number_is_refused(store: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="created_since"):
        await store.list_sagas(created_since=bad)
    with pytest.raises(ValueError, match="created_until"):
        await store.count_sagas(created_until=bad)


async def test_filter_values_are_parameters_not_sql(store: Any) -> None:
    await add(store, "a", "Shop")
    assert await ids(store, saga_name="Shop' OR '1'='1") == []
    assert await store.count_sagas(saga_name="x' OR 1=1 --") == {}


async def test_count_sagas_by_name_and_status(store: Any) -> None:
    await add(store, "a1", "A")
    await add(store, "a2", "A", status=SagaStatus.COMPLETED)
    await add(store, "a3", "A", status=SagaStatus.COMPLETED)
    await add(store, "b1", "B", status=SagaStatus.FAILED)
    assert await store.count_sagas() == {
        ("A", SagaStatus.RUNNING): 1,
        ("A", SagaStatus.COMPLETED): 2,
        ("B", SagaStatus.FAILED): 1,
    }
    assert await store.count_sagas(saga_name="B") == {("B", SagaStatus.FAILED): 1}
    assert await store.count_sagas(saga_name="nobody") == {}
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    await add(store, "a4", "A", status=SagaStatus.COMPLETED)
    assert await store.count_sagas(created_since=since) == {("A", SagaStatus.COMPLETED): 1}
    assert (await store.count_sagas(created_until=since))[("A", SagaStatus.COMPLETED)] == 2


async def test_counts_follow_status_changes(store: Any) -> None:
    await add(store, "x")
    await store.append("x", [entry(0, "a", StepStatus.COMPLETED)], status=SagaStatus.COMPLETED)
    assert await store.count_sagas() == {("OrderSaga", SagaStatus.COMPLETED): 1}


async def test_lease_state_tells_owner_expiry_and_fencing_token(store: Any) -> None:
    if not hasattr(store, "claim_saga"):
        assert not hasattr(store, "lease_state")  # the memory store keeps no leases
        return
    await add(store, "leased")
    assert await store.lease_state("leased") == LeaseState(None, None, 0)
    lease = await store.claim_saga("leased", owner="worker-1", lease_seconds=60)
    state = await store.lease_state("leased")
    assert (state.owner, state.token) == ("worker-1", 1)
    assert state.expires_at == pytest.approx(lease.expires_at, abs=0.01)
    await store.release(lease)
    released = await store.lease_state("leased")
    assert (released.owner, released.token) == (None, 1)
    with pytest.raises(SagaNotFound):
        await store.lease_state("missing")


async def test_memory_store_lists_the_sagas_it_watches(tmp_path: Path) -> None:
    """Sagas run on the default in-memory store are listed as they run."""
    trace: list[tuple[str, str]] = []
    saga = declare(Probe("one", trace), Probe("two", trace), name="Watched")()
    for n in range(3):
        await saga.run(OrderCtx(), saga_id=f"w{n}")
    store = saga.store
    listed = await store.list_sagas()
    assert [s.saga_id for s in listed] == ["w2", "w1", "w0"]
    assert {s.status for s in listed} == {SagaStatus.COMPLETED}
    assert all(s.updated_at >= s.created_at for s in listed)
    assert await store.list_sagas(before="w1") == listed[2:]
    assert await store.count_sagas() == {("Watched", SagaStatus.COMPLETED): 3}
