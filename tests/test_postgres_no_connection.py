"""A PostgreSQL write that could get no connection, against a real,
throwaway server: nothing of it was sent, so the store says that nothing of
it was written (``SagaStoreError.nothing_written``).

Faults injected, each for real: the pool's only connection held by another
(the store's wait for one ends in ``psycopg_pool.PoolTimeout``), and the
server stopped (every connection the pool held is closed by the server's
shutdown, and a new one cannot be made: ``PoolTimeout`` again).

What is promised (S13): a run stopped by a write that got no connection is
not in doubt (``SagaInterrupted.in_doubt`` false), its journal holds what
the caller was told, and a creation that got none says it was not written;
once a connection can be had, ``recover()`` (or a second run) finishes the
saga, every step applied once — checked with a participant ledger. A write
whose connection was lost mid-statement stays in doubt
(``test_postgres_refusals.test_S13_a_write_whose_connection_is_lost_stays_in_doubt``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import RetryPolicy, SagaInterrupted, SagaStatus
from fallback_saga.errors import SagaNotFound, SagaStoreError
from fallback_saga.recovery import recover
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402
from pg_cluster import PostgresCluster  # noqa: E402

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

# Two tries: the second is made without reading the journal back first only
# if the first said that it wrote nothing (a read would find no connection
# either, and leave the run in doubt).
TWO_TRIES = RetryPolicy(attempts=2, delay=0, jitter=0)
NO_CONNECTION = "no connection could be had: nothing of it was written"
NOT_OPENED = "as the store could not be opened: nothing of it was written"

Ledger = list[tuple[str, str]]


@pytest.fixture
async def one_connection(pg_conninfo: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Any]]:
    """A pool of one connection, whose wait for it gives up soon: another
    holder of that connection leaves the store none."""
    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=1, timeout=0.3, open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


def history(record: Any) -> list[tuple[str, str, str]]:
    return [(e.step, e.action, e.status.value) for e in record.history]


def assert_not_written(error: BaseException | None) -> None:
    assert isinstance(error, SagaStoreError), error
    assert error.nothing_written is True, error
    assert NO_CONNECTION in str(error), error
    assert isinstance(error.__cause__, psycopg_pool.PoolTimeout), error.__cause__


async def test_S13_a_journal_write_that_gets_no_connection_stops_the_run_not_in_doubt(
    pg_schema: str, one_connection: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """S1's act takes the pool's only connection: the write after it waits
    for one until the pool gives up, on both tries. Nothing was sent, so
    the run stops **not in doubt**; the journal holds what the caller was
    told, and once the connection is back ``recover()`` finishes the saga,
    S0 and S2 applied once."""
    pool = one_connection
    ledger: Ledger = []
    held: list[Any] = []

    async def take_the_connection(ctx: Ctx) -> None:
        if not held:  # once: not again when recovery runs S1 again
            held.append(await pool.getconn())

    saga_class = ledger_saga(ledger, S1=take_the_connection)
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=None)
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        interrupted = stopped.value
        assert interrupted.in_doubt is False, interrupted
        assert interrupted.status is SagaStatus.RUNNING
        assert_not_written(interrupted.error)
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]

        await pool.putconn(held[0])
        record = await store.load("s-1")
        assert record.status is SagaStatus.RUNNING
        assert history(record) == [
            ("S0", "act", "started"), ("S0", "act", "completed"), ("S1", "act", "started"),
        ]
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert sorted(set(ledger)) == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1


async def test_S13_a_creation_that_gets_no_connection_was_not_written_and_may_run_again(
    pg_schema: str, one_connection: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """The pool's only connection is held when the saga starts: its creation
    gets none, and the run says that it was not written (not in doubt). No
    step ran, nothing is stored; run again once the connection is back, the
    saga completes under the same id."""
    pool = one_connection
    ledger: Ledger = []
    saga_class = ledger_saga(ledger)
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=None)
        held = await pool.getconn()
        with pytest.raises(SagaInterrupted) as refused:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        await pool.putconn(held)
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "its creation was not written" in str(refused.value), refused.value
        assert_not_written(refused.value.error)
        assert ledger == []
        with pytest.raises(SagaNotFound):
            await store.load("s-1")

        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]


async def test_S13_writes_of_a_group_that_gets_no_connection_each_say_nothing_was_written(
    pg_schema: str, one_connection: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """Appends submitted together while the pool's only connection is held:
    the one sent alone and the group that follows it both get no
    connection, and each write says that nothing of it was written. Once
    the connection is back, the journals are as they were, and the same
    appends land."""
    pool = one_connection
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        ids = [f"g-{n}" for n in range(5)]
        for saga_id in ids:
            await store.create(saga_id, "G", "fp", {}, [entry(0, "a")])
        held = await pool.getconn()
        futures = [store.submit_append(saga_id, [entry(1, "b")], None, None, None, 1)
                   for saga_id in ids]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await pool.putconn(held)
        assert store.stats.largest_group >= 2, store.stats  # a group was tried
        for outcome in outcomes:
            assert_not_written(outcome)
        assert [len((await store.load(saga_id)).history) for saga_id in ids] == [1] * 5
        await asyncio.gather(*(store.append(saga_id, [entry(1, "b")], after=1)
                               for saga_id in ids))
        assert [len((await store.load(saga_id)).history) for saga_id in ids] == [2] * 5


async def test_each_journal_write_error_names_the_write_and_its_saga_alone_or_grouped(
    pg_schema: str, one_connection: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """Creations and appends submitted together while the pool's only
    connection is held: the first goes alone, the others as a group, and
    none gets a connection. Each error begins with what the write did and
    its saga's id (cut short as ``short_repr`` cuts it), the same alone or
    grouped: the text is built only once a write fails, from the write."""
    pool = one_connection
    long_id = "x" * 200
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        for saga_id in ("a-0", long_id):
            await store.create(saga_id, "G", "fp", {}, [entry(0, "a")])
        held = await pool.getconn()
        futures = [
            store.submit_create("c-0", "G", "fp", {}, [entry(0, "a")], SagaStatus.RUNNING),
            store.submit_append("a-0", [entry(1, "b")], None, None, None, 1),
            store.submit_create("c'1", "G", "fp", {}, [entry(0, "a")], SagaStatus.RUNNING),
            store.submit_append(long_id, [entry(1, "b")], SagaStatus.COMPLETED, {}, None, 1),
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await pool.putconn(held)
        assert store.stats.largest_group >= 2, store.stats  # a group was tried
        starts = [
            "cannot create saga 'c-0': ",
            "cannot journal saga 'a-0': ",
            "cannot create saga \"c'1\": ",
            f"cannot journal saga '{'x' * 78}…: ",
        ]
        for outcome, start in zip(outcomes, starts, strict=True):
            assert_not_written(outcome)
            assert str(outcome).startswith(start), (start, outcome)


async def test_S13_leases_and_purges_that_get_no_connection_say_nothing_was_written(
    pg_schema: str, one_connection: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """A claim, a lease by id, a renewal, a release, a deferral and a purge
    made while the pool's only connection is held: each says that nothing
    of it was written, and indeed the lease and the sagas are as before."""
    pool = one_connection
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        await store.create("old", "X", "fp", {}, [entry(0, "a")])
        await store.create("done", "X", "fp", {}, [], status=SagaStatus.COMPLETED)
        lease = await store.claim_saga("old", owner="w", lease_seconds=60)
        held = await pool.getconn()
        attempts = {
            "claim": lambda: store.claim(owner="v", lease_seconds=60, older_than=-60, limit=10),
            "claim_saga": lambda: store.claim_saga("old", owner="v", lease_seconds=60),
            "renew": lambda: store.renew(lease, 120),
            "release": lambda: store.release(lease),
            "defer": lambda: store.defer(lease, 60),
            "purge": lambda: store.purge(older_than=-60),
        }
        for name, attempt in attempts.items():
            with pytest.raises(SagaStoreError) as failed:
                await attempt()
            assert failed.value.nothing_written is True, (name, failed.value)
            assert NO_CONNECTION in str(failed.value), (name, failed.value)
        await pool.putconn(held)
        assert (await store.load("done")).status is SagaStatus.COMPLETED  # not purged
        # The lease is still w's, with its token: a renewal by it works.
        renewed = await store.renew(lease, 60)
        assert renewed.token == lease.token


async def test_S13_a_journal_write_with_the_server_stopped_stops_the_run_not_in_doubt(
    pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str,
) -> None:
    """The commonest outage: S1's act stops the server (a fast shutdown,
    which closes every pooled connection). The write after it finds the
    pool's connections closed and cannot make a new one: nothing was sent,
    so the run stops **not in doubt**. Once the server is back, a new
    store's ``recover()`` finishes the saga, S0 and S2 applied once."""
    ledger: Ledger = []
    stopped_once: list[bool] = []

    async def stop_the_server(ctx: Ctx) -> None:
        if not stopped_once:
            stopped_once.append(True)
            await asyncio.to_thread(pg_cluster.stop)

    saga_class = ledger_saga(ledger, S1=stop_the_server)
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, connect_timeout=2.0)
    await store.open()
    try:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=None)
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        interrupted = stopped.value
        assert interrupted.in_doubt is False, interrupted
        assert interrupted.status is SagaStatus.RUNNING
        assert_not_written(interrupted.error)
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]
    finally:
        await store.close()
        await asyncio.to_thread(pg_cluster.start)
    # Another store (a worker started once the server is back) recovers the saga.
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema)
    await store.open()
    try:
        record = await store.load("s-1")
        assert history(record) == [
            ("S0", "act", "started"), ("S0", "act", "completed"), ("S1", "act", "started"),
        ]
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1
    finally:
        await store.close()


async def test_S13_a_creation_whose_store_cannot_open_was_not_written_and_the_store_works_later(
    pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str,
) -> None:
    """A store never opened, its first write a saga's creation, made while
    the server is stopped: the store opens itself for that write and cannot
    (no connection can be made). Nothing of the write was sent, so the run
    says that its creation was not written (not in doubt). Once the server
    is back, the same store object opens and runs the saga under the same
    id: no half-open state is left behind."""
    ledger: Ledger = []
    saga_class = ledger_saga(ledger)
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, connect_timeout=2.0)
    try:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=None)
        await asyncio.to_thread(pg_cluster.stop)
        try:
            with pytest.raises(SagaInterrupted) as refused:
                await saga.run(Ctx(order_id="1"), saga_id="s-1")
        finally:
            await asyncio.to_thread(pg_cluster.start)
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "its creation was not written" in str(refused.value), refused.value
        error = refused.value.error
        assert isinstance(error, SagaStoreError), error
        assert error.nothing_written is True, error
        assert NOT_OPENED in str(error), error
        assert isinstance(error.__cause__, psycopg.OperationalError), error.__cause__
        assert ledger == []

        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]
    finally:
        await store.close()


async def test_S13_writes_grouped_while_the_store_cannot_open_each_say_nothing_was_written(
    pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str,
) -> None:
    """Creations submitted together to a store never opened, while the
    server is stopped and an open of the store is on its way: the first
    goes alone and waits for that open, the others queue and go as a group,
    which waits for it too. The open cannot connect, nor can theirs: every
    write says that nothing of it was written. Once the server is back, the
    same store writes them all."""
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, connect_timeout=2.0)
    ids = [f"g-{n}" for n in range(5)]
    try:
        await asyncio.to_thread(pg_cluster.stop)
        try:
            # An open on its way (its lock held), so that the first write
            # waits and the others group behind it, on every Python (3.12+
            # would make a write that fails at once alone, eagerly).
            store._opening = opening = asyncio.Lock()
            await opening.acquire()
            futures = [store.submit_create(saga_id, "G", "fp", {}, [entry(0, "a")],
                                           SagaStatus.RUNNING) for saga_id in ids]
            opening.release()
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await asyncio.to_thread(pg_cluster.start)
        assert store.stats.largest_group >= 2, store.stats  # a group was tried
        for outcome in outcomes:
            assert isinstance(outcome, SagaStoreError), outcome
            assert outcome.nothing_written is True, outcome
            assert NOT_OPENED in str(outcome), outcome
        await asyncio.gather(*(store.create(saga_id, "G", "fp", {}, [entry(0, "a")])
                               for saga_id in ids))
        assert [len((await store.load(saga_id)).history) for saga_id in ids] == [1] * 5
    finally:
        await store.close()


@pytest.fixture
async def patient_pool(pg_conninfo: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Any]]:
    """A pool of four connections whose wait for one outlasts any test:
    a write waiting for one ends by its own deadline (``journal_timeout``),
    not the pool's."""
    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=4, max_size=4, timeout=600, open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def test_S13_a_run_whose_write_waits_for_a_connection_past_its_timeout_is_not_in_doubt(
    pg_schema: str, patient_pool: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """S1's act takes every connection of the pool: the write after it is on
    its way, but waits for a connection until its ``journal_timeout`` runs
    out. Nothing of it was sent, and nothing will be: the run stops **not in
    doubt**, and once the connections are back the journal still holds
    only what the caller was told (the write was not sent late); then
    ``recover()`` finishes the saga, S0 and S2 applied once."""
    pool = patient_pool
    ledger: Ledger = []
    held: list[Any] = []

    async def take_the_connections(ctx: Ctx) -> None:
        if not held:  # once: not again when recovery runs S1 again
            held.extend([await pool.getconn() for _ in range(pool.max_size)])

    saga_class = ledger_saga(ledger, S1=take_the_connections)
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=0.3)
        try:
            with pytest.raises(SagaInterrupted) as stopped:
                await saga.run(Ctx(order_id="1"), saga_id="s-1")
        finally:
            for conn in held:  # (the write that waited has its connection then)
                await pool.putconn(conn)
        interrupted = stopped.value
        assert interrupted.in_doubt is False, interrupted
        assert interrupted.status is SagaStatus.RUNNING
        error = interrupted.error
        assert isinstance(error, SagaStoreError), error
        assert error.nothing_written is True, error
        assert "not sent" in str(error), error
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]

        await store._journal.idle()  # the write that waited had its chance to be sent
        record = await store.load("s-1")
        assert history(record) == [
            ("S0", "act", "started"), ("S0", "act", "completed"), ("S1", "act", "started"),
        ]
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1


class DelegatingStore:
    """A user's store wrapping ours, delegating all it does not define
    (``writes_outlive_cancellation`` included): the executor drives its
    ``create``/``append`` coroutines inline (``journal.settle_inline``)."""

    def __init__(self, inner: PostgresSagaStore) -> None:
        self.inner = inner
        self.writes = 0

    async def create(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.create(*args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.append(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class OwnMethodsStore:
    """A user's store wrapping ours with methods of its own only: the
    executor runs each write in a task of its own (``journal.write_durably``
    under ``asyncio.timeout_at``)."""

    appends_after = True

    def __init__(self, inner: PostgresSagaStore) -> None:
        self.inner = inner
        self.writes = 0

    async def create(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.create(*args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.append(*args, **kwargs)

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)


@pytest.mark.parametrize("wrapper", [DelegatingStore, OwnMethodsStore])
async def test_S13_a_wrapped_store_s_write_that_waits_past_its_timeout_is_not_in_doubt(
    pg_schema: str, patient_pool: psycopg_pool.AsyncConnectionPool[Any], wrapper: type[Any],
) -> None:
    """As ``test_S13_a_run_whose_write_waits_for_a_connection_past_its_timeout_is_not_in_doubt``,
    through a user's store wrapping ours (the executor then drives
    ``append``'s coroutine, not the store's submitting path): the write
    that waited for a connection past its ``journal_timeout`` was not sent,
    the run says so (not in doubt), and the write is not sent late once the
    connections are back — the journal holds what the caller was told."""
    pool = patient_pool
    ledger: Ledger = []
    held: list[Any] = []

    async def take_the_connections(ctx: Ctx) -> None:
        if not held:
            held.extend([await pool.getconn() for _ in range(pool.max_size)])

    saga_class = ledger_saga(ledger, S1=take_the_connections)
    async with PostgresSagaStore(pool, schema=pg_schema) as inner:
        store = wrapper(inner)
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=0.3)
        try:
            with pytest.raises(SagaInterrupted) as stopped:
                await saga.run(Ctx(order_id="1"), saga_id="s-1")
        finally:
            for conn in held:
                await pool.putconn(conn)
        assert store.writes >= 2  # the wrapper made the writes
        interrupted = stopped.value
        assert interrupted.in_doubt is False, interrupted
        assert interrupted.status is SagaStatus.RUNNING
        error = interrupted.error
        assert isinstance(error, SagaStoreError), error
        assert error.nothing_written is True, error
        assert "not sent" in str(error), error

        await inner._journal.idle()  # the write that waited had its chance to be sent
        record = await inner.load("s-1")
        assert history(record) == [
            ("S0", "act", "started"), ("S0", "act", "completed"), ("S1", "act", "started"),
        ]
        report = await recover(inner, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1


async def test_S13_a_grouped_write_whose_deadline_comes_before_its_group_is_sent_is_left_out(
    pg_schema: str, patient_pool: psycopg_pool.AsyncConnectionPool[Any],
) -> None:
    """Every connection held: one append goes alone and waits for one, and
    three more go as a group that waits too (a group commit shared by three
    sagas). The deadline of one of the group's writes comes while the group
    waits: that write says that nothing of it was written, and once the
    connections are back the group is sent without it — the other writes
    land, its saga's journal is as it was."""
    pool = patient_pool
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        ids = [f"g-{n}" for n in range(4)]
        for saga_id in ids:
            await store.create(saga_id, "G", "fp", {}, [entry(0, "a")])
        held = [await pool.getconn() for _ in range(pool.max_size)]
        loop = asyncio.get_running_loop()
        alone = store.submit_append(ids[0], [entry(1, "b")], None, None, None, 1)
        soon = store.submit_append(ids[1], [entry(1, "b")], None, None, None, 1,
                                   deadline=loop.time() + 0.2)
        others = [store.submit_append(saga_id, [entry(1, "b")], None, None, None, 1)
                  for saga_id in ids[2:]]
        try:
            with pytest.raises(SagaStoreError) as timed_out:
                await soon
            waited = store.stats.largest_group
        finally:
            for conn in held:
                await pool.putconn(conn)
        assert waited == 3, store.stats  # its group was on its way
        assert timed_out.value.nothing_written is True, timed_out.value
        assert isinstance(timed_out.value, TimeoutError), timed_out.value
        assert "not sent" in str(timed_out.value), timed_out.value
        await asyncio.gather(alone, *others)
        await store._journal.idle()
        lengths = {saga_id: len((await store.load(saga_id)).history) for saga_id in ids}
        assert lengths == {"g-0": 2, "g-1": 1, "g-2": 2, "g-3": 2}


async def test_S13_a_store_that_saw_the_server_down_writes_at_its_first_call_once_it_is_back(
    pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str,
) -> None:
    """The fault: the server stopped for a few seconds while the store is
    used (a read and a write fail meanwhile; the write says that nothing of
    it was written). The condition it leaves: the store's pool found its
    connections closed and tried to make new ones, in vain. psycopg_pool
    retries those with a delay that doubles (1, 2, 4 s...), which by the end
    of this outage outlasts the store's ``connect_timeout``: the first calls
    once the server was back got no connection. Now the pool gives its
    reconnections up soon and makes one afresh for the next call: the same
    store object reads and writes at its first call once the server is back.
    (How soon, measured: benchmarks/pg_reconnect.py.)"""
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, connect_timeout=1.0)
    await store.open()
    try:
        await store.create("s-1", "S", "fp", {}, [entry(0, "a")])
        await asyncio.to_thread(pg_cluster.stop)
        loop = asyncio.get_running_loop()
        down_since = loop.time()
        try:
            with pytest.raises(SagaStoreError):
                await store.load("s-1")
            with pytest.raises(SagaStoreError) as refused:
                await store.append("s-1", [entry(1, "b")], after=1)
            assert refused.value.nothing_written is True, refused.value
            # The outage's length, the fault itself: past the pool's second
            # reconnection attempt (about 3 s in), well before its third
            # (about 7 s in).
            await asyncio.sleep(max(0.0, down_since + 3.3 - loop.time()))
        finally:
            await asyncio.to_thread(pg_cluster.start)
        assert len((await store.load("s-1")).history) == 1
        await store.append("s-1", [entry(1, "b")], after=1)
        assert len((await store.load("s-1")).history) == 2
    finally:
        await store.close()
