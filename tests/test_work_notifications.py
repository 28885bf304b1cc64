"""Work announcements (issue 4: "Optional LISTEN/NOTIFY wake-up with polling
as the fallback").

* With any ``WorkNotifier`` store, a worker claims as soon as work is
  announced, not at its next poll; when the announcements fail it warns,
  keeps polling and listens again.
* ``PostgresSagaStore``: handing off a saga that still needs a worker is
  announced on the store's channel; a finished saga, a stale lease and a
  plain release are not; a worker that shuts down hands its saga to a
  listening worker whose poll is an hour away; a saga a worker skips is not
  announced (it would bounce between workers); a listening connection killed
  by the server is replaced; the iteration ends when the store closes; a pool
  of yours works too.

The long ``poll`` (an hour) is what proves the announcement did the waking:
no other wake-up can come within the test's timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers_claims import ClaimsEveryName
from test_worker import Ledger, _act, eventually, order_saga, seed

from fallback_saga import (
    RecoveryWorker,
    SagaStatus,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
)
from fallback_saga.store import WorkNotifier

pytest_plugins = ["conftest_pg"]

AN_HOUR = 3600.0


class CountingClaims:
    """Mixed into a store: counts the claims begun and ended."""

    claims_begun = claims_ended = 0

    async def claim(self, **arguments: Any) -> Any:
        self.claims_begun += 1
        try:
            return await super().claim(**arguments)  # type: ignore[misc]
        finally:
            self.claims_ended += 1


def idle(worker: RecoveryWorker, store: CountingClaims) -> bool:
    """The worker listens and every wake-up so far was answered by a claim
    that has ended: from now on only a new wake-up makes it claim."""
    return (worker.listening and store.claims_begun == store.claims_ended >= 1
            and not worker._wake.is_set())


class AnnouncingStore(CountingClaims, SQLiteSagaStore):
    """A SQLite store with announcements fed by the test (or failing)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.announcements: asyncio.Queue[str] = asyncio.Queue()
        self.broken: Exception | None = None
        self.listens = 0

    async def hand_off(self, lease: Any) -> None:
        await self.release(lease)
        self.announcements.put_nowait(lease.saga_id)

    async def work_notifications(self) -> AsyncIterator[str]:
        self.listens += 1
        if self.broken is not None:
            raise self.broken
        yield ""
        while True:
            yield await self.announcements.get()


async def test_a_worker_claims_as_soon_as_work_is_announced(tmp_path: Path) -> None:
    async with AnnouncingStore(tmp_path / "sagas.db") as store:
        assert isinstance(store, WorkNotifier)
        (saga_id,) = await seed(store, 1)
        held = await store.claim_saga(saga_id, owner="elsewhere", lease_seconds=AN_HOUR)
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], poll=AN_HOUR,
                                older_than=0)
        task = asyncio.create_task(worker.run())
        try:
            # Its claims found the saga leased; the next poll is an hour away.
            await eventually(lambda: idle(worker, store), what="an idle, listening worker")
            await store.hand_off(held)
            await eventually(lambda: worker.stats.completed == 1, what="the resumed saga")
        finally:
            await worker.stop()
            await task
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED
        assert not worker.listening


async def test_a_worker_without_announcements_warns_and_keeps_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with AnnouncingStore(tmp_path / "sagas.db") as store:
        store.broken = SagaStoreError("listening connection refused")
        ids = await seed(store, 3)
        ledger = Ledger()
        worker = RecoveryWorker(store, [order_saga(store, ledger)], poll=0.01,
                                older_than=0)
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: worker.stats.completed == 3, what="3 completions")
                await eventually(lambda: store.listens >= 3, what="listening retried")
            finally:
                await worker.stop()
                await task
        warnings = [r.getMessage() for r in caplog.records if "not listening" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per outage, not per retry
        assert "listening connection refused" in warnings[0]
        assert sorted({saga for _, _, saga in ledger.calls}) == ids


async def test_listen_false_never_listens(tmp_path: Path) -> None:
    async with AnnouncingStore(tmp_path / "sagas.db") as store:
        await seed(store, 1)
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], poll=0.01,
                                older_than=0, listen=False)
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.stats.completed == 1, what="the resumed saga")
        finally:
            await worker.stop()
            await task
        assert store.listens == 0


def test_listen_must_be_a_bool(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "sagas.db")
    with pytest.raises(TypeError, match="listen must be a bool"):
        RecoveryWorker(store, [order_saga(store, Ledger())], listen="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- PostgreSQL


async def _collect(store: Any, into: asyncio.Queue[str]) -> None:
    async for saga_id in store.work_notifications():
        into.put_nowait(saga_id)


async def _next(queue: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(queue.get(), 30)


async def test_postgres_a_hand_off_is_announced_and_a_finished_saga_is_not(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        assert store.work_channel == f"fallback_saga_work.{pg_schema}"
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = asyncio.create_task(_collect(store, heard))
        try:
            assert await _next(heard) == ""  # listening
            done, running, marker = await seed(store, 3)
            await store.append(done, [], status=SagaStatus.COMPLETED)
            # A finished saga needs no worker: handing it off announces nothing.
            await store.hand_off(await store.claim_saga(done, owner="w1", lease_seconds=60))
            # A plain release announces nothing.
            await store.release(await store.claim_saga(running, owner="w1", lease_seconds=60))
            handed = await store.claim_saga(running, owner="w2", lease_seconds=60)
            await store.hand_off(handed)
            # A lease another claim has taken over releases nothing, so announces nothing.
            current = await store.claim_saga(running, owner="w3", lease_seconds=60)
            await store.hand_off(handed)
            await store.hand_off(current)
            await store.hand_off(await store.claim_saga(marker, owner="w4", lease_seconds=60))
            # Delivered in commit order: only the two current hand-offs and the marker.
            assert [await _next(heard) for _ in range(3)] == [running, running, marker]
        finally:
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener


async def test_postgres_a_stopping_worker_hands_its_saga_to_a_listening_one_at_once(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    class CountingStore(CountingClaims, PostgresSagaStore):
        pass

    ledger = Ledger()
    gate = ledger.hold("act B")
    async with (PostgresSagaStore(pg_conninfo, schema=pg_schema) as store_a,
                CountingStore(pg_conninfo, schema=pg_schema) as store_b):
        (saga_id,) = await seed(store_a, 1)
        leaving = RecoveryWorker(store_a, [order_saga(store_a, ledger)], poll=AN_HOUR,
                                 older_than=0, owner="leaving")
        staying = RecoveryWorker(store_b, [order_saga(store_b, ledger)], poll=AN_HOUR,
                                 older_than=0, owner="staying")
        leaving_task = asyncio.create_task(leaving.run())
        await ledger.entered["act B"].wait()  # the leaving worker drives the saga
        staying_task = asyncio.create_task(staying.run())
        try:
            # Its claims found the saga leased; its next poll is an hour away.
            await eventually(lambda: idle(staying, store_b), what="an idle, listening worker")
            await leaving.stop(grace=0)  # a rolling deploy: hand the saga off
            await leaving_task
            assert leaving.stats.handed_off == 1
            gate.set()
            await eventually(lambda: staying.stats.completed == 1, within=30,
                             what="the handed-off saga resumed by the other worker")
        finally:
            await staying.stop()
            await staying_task
        record = await store_b.load(saga_id)
        assert record.status is SagaStatus.COMPLETED
    calls = Counter((action, step) for action, step, _ in ledger.calls)
    # B ran twice (cut off by the hand-off, then resumed), nothing compensated.
    assert calls == {("act", "A"): 1, ("act", "B"): 2, ("act", "C"): 1}


async def test_postgres_a_skipped_saga_is_released_but_never_announced(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.create("stranger", "NotOurSaga", "fp", {},
                           [_act(0, "X", StepStatus.STARTED)])
        first, second = await seed(store, 2, prefix="marker")
        held = [await store.claim_saga(m, owner="elsewhere", lease_seconds=AN_HOUR)
                for m in (first, second)]
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = asyncio.create_task(_collect(store, heard))
        # A store that cannot claim by name (a store of one's own): the
        # built-in ones never hand a worker a saga of a name it was not given.
        claiming_all = ClaimsEveryName(store)
        worker = RecoveryWorker(claiming_all, [order_saga(claiming_all, Ledger())],
                                poll=AN_HOUR, older_than=0)
        task = asyncio.create_task(worker.run())
        try:
            assert await _next(heard) == ""
            await eventually(lambda: worker.stats.skipped >= 1 and worker.listening,
                             what="the stranger skipped")
            for n, lease in enumerate(held, 1):
                await store.hand_off(lease)
                # The skip (and each re-skip) released the stranger silently.
                assert await _next(heard) == lease.saga_id
                await eventually(lambda n=n: worker.stats.completed == n,
                                 what="the handed-off saga")
        finally:
            await worker.stop()
            await task
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener
        assert heard.empty()
        stranger = await store.load("stranger")
        assert stranger.status is SagaStatus.RUNNING  # left for a worker that knows it


async def test_postgres_a_killed_listening_connection_is_replaced(
    pg_conninfo: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from fallback_saga.store.postgres import PostgresSagaStore

    async def listener_pids(channel: str) -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_conninfo, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{channel}"',),
            )
            return [pid for (pid,) in await cursor.fetchall()]

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], poll=0.05,
                                older_than=0)
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: worker.listening, what="listening")
                (pid,) = await listener_pids(store.work_channel)
                async with await psycopg.AsyncConnection.connect(
                    pg_conninfo, autocommit=True
                ) as admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

                async def listening_again() -> bool:
                    pids = await listener_pids(store.work_channel)
                    return worker.listening and len(pids) == 1 and pids[0] != pid

                await eventually(listening_again, within=30, what="a new listening connection")
                # Polling went on meanwhile and still does:
                ids = await seed(store, 2)
                await eventually(lambda: worker.stats.completed == 2, what="2 completions")
            finally:
                await worker.stop()
                await task
        assert [r for r in caplog.records if "not listening" in r.getMessage()]
        for saga_id in ids:
            assert (await store.load(saga_id)).status is SagaStatus.COMPLETED


async def test_postgres_work_notifications_end_when_the_store_closes(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = asyncio.create_task(_collect(store, heard))
    assert await _next(heard) == ""
    await store.close()
    await asyncio.wait_for(listener, 30)  # ended, without an error
    with pytest.raises(SagaStoreError, match="closed"):
        await anext(store.work_notifications())


async def test_postgres_work_notifications_with_a_pool_of_yours(
    pg_conninfo: str, pg_schema: str
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from fallback_saga.store.postgres import PostgresSagaStore

    async with AsyncConnectionPool(pg_conninfo, kwargs={"autocommit": True}, min_size=1,
                                   open=False) as pool:
        store = PostgresSagaStore(pool, schema=pg_schema)
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = asyncio.create_task(_collect(store, heard))
        try:
            assert await _next(heard) == ""
            (saga_id,) = await seed(store, 1)
            await store.hand_off(await store.claim_saga(saga_id, owner="w", lease_seconds=60))
            assert await _next(heard) == saga_id
        finally:
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener
            await store.close()
