"""S10: a lease renewal still on its way when a resume ends never lands on a
lease given back — the saga is claimable at once, on SQLite and PostgreSQL.

A resume's run cancels its heartbeat when it ends and waits for it. Cancelled
again while it waited (a second ``task.cancel()``; anyio's cancel scope, at
every await), it stopped waiting: the lease was given back while a renewal
was still in flight, and that renewal then landed on the released lease —
fenced by the token only, it set the saga's owner and a later expiry again,
so no other worker could claim the saga until that lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import Lease, LeaseLost, Saga, SagaContext, SagaStepHandler, SQLiteSagaStore
from fallback_saga.store.base import RecoverableStore
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = ""


class GiveBackWatch:
    """What the mixins below share: each give-back of a lease (``release``)
    passes by ``giving_back`` before it, by ``given_back`` once it landed."""

    async def giving_back(self) -> None:
        pass

    def given_back(self) -> None:
        pass

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        await self.giving_back()
        await super().release(lease, ran=ran)  # type: ignore[misc]
        self.given_back()


class HandOffWatched:
    """PostgreSQL gives the lease of a run it hands off back with ``hand_off``
    (released and announced in one statement), not ``release``: it passes
    by the same watch."""

    async def hand_off(self, lease: Lease, *, ran: bool = True) -> None:
        await self.giving_back()  # type: ignore[attr-defined]
        await super().hand_off(lease, ran=ran)  # type: ignore[misc]
        self.given_back()  # type: ignore[attr-defined]


class LateRenewal(GiveBackWatch):
    """The first renewal stays in flight until it is cancelled; then, as a
    statement already sent does, it lands all the same — once the lease is
    given back (``release``; PostgreSQL's ``hand_off`` with ``HandOffWatched``),
    or when the test says (``land``)."""

    renewing: asyncio.Event
    renewal_cancelled: asyncio.Event
    land: asyncio.Event
    renewal_ended: asyncio.Event
    released: bool
    renewal_ended_before_release: bool
    renewals: int

    def watch(self) -> None:
        self.renewing = asyncio.Event()
        self.renewal_cancelled = asyncio.Event()
        self.land = asyncio.Event()
        self.renewal_ended = asyncio.Event()
        self.released = False
        self.renewal_ended_before_release = False
        self.renewals = 0

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        self.renewals += 1
        renew = super().renew  # type: ignore[misc]
        if self.renewals > 1:
            renewed: Lease = await renew(lease, lease_seconds)
            return renewed
        self.renewing.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.renewal_cancelled.set()
            await self.land.wait()
        try:
            # A long lease: landed on a released saga, it would keep it for long.
            renewed = await renew(lease, 3600.0)
            return renewed
        finally:
            self.renewal_ended.set()

    async def giving_back(self) -> None:
        self.renewal_ended_before_release = self.renewal_ended.is_set()

    def given_back(self) -> None:
        self.released = True
        self.land.set()


class Hang(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> Any:
        await asyncio.get_running_loop().create_future()  # until cancelled

    async def compensate(self, ctx: Ctx, /) -> None:
        pass


class HangSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Hang]


class SlowRelease(GiveBackWatch):
    """A give-back that takes some loop rounds to be answered (a network
    store's round trip), cancellable meanwhile: ``asked`` set as it begins,
    answered once ``answer`` is set."""

    asked: asyncio.Event
    answer: asyncio.Event

    def watch(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def giving_back(self) -> None:
        self.asked.set()
        await self.answer.wait()


# Opens a store of the kind the test is for, with a mixin of the above
# (``LateRenewal`` unless said); ``watch()`` called.
Opener = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite(mixin: type = LateRenewal) -> AsyncIterator[Any]:
            store_class = type(f"SQLite{mixin.__name__}", (mixin, SQLiteSagaStore), {})
            async with store_class(tmp_path / "sagas.db") as store:
                store.watch()
                yield store

        return sqlite
    from conftest_pg import require_driver

    require_driver()
    conninfo: str = request.getfixturevalue("pg_conninfo")
    schema: str = request.getfixturevalue("pg_schema")
    from fallback_saga.store.postgres import PostgresSagaStore

    @asynccontextmanager
    async def postgres(mixin: type = LateRenewal) -> AsyncIterator[Any]:
        store_class = type(
            f"Postgres{mixin.__name__}", (mixin, HandOffWatched, PostgresSagaStore), {})
        async with store_class(conninfo, schema=schema) as store:
            store.watch()
            yield store

    return postgres


class InAnyioScope:
    """``run()`` inside ``anyio.move_on_after`` (cancelled by ``cancel()``,
    as its deadline would), in a task of its own: its result is whether the
    scope caught the cancellation (nothing else escaped). ``left`` holds
    the tasks still pending the moment the scope was left, but for those
    pending before (a task of the run's that outlives it)."""

    def __init__(self, run: Callable[[], Awaitable[None]]) -> None:
        self._anyio = pytest.importorskip("anyio")
        self.entered = asyncio.Event()
        self.left: list[asyncio.Task[Any]] = []
        self._scope: Any = None
        before = asyncio.all_tasks()
        self.task = asyncio.get_running_loop().create_task(self._in_scope(run, before))

    async def _in_scope(self, run: Callable[[], Awaitable[None]], before: set[Any]) -> bool:
        with self._anyio.move_on_after(3600) as scope:
            self._scope = scope
            self.entered.set()
            await run()
        # Looked at before anything else runs.
        self.left.extend(t for t in asyncio.all_tasks() if not t.done() and t not in before
                         and t is not asyncio.current_task())
        caught: bool = scope.cancelled_caught
        return caught

    def cancel(self) -> None:
        assert self._scope is not None, "not entered yet"
        self._scope.cancel()


async def test_S10_a_resume_cancelled_twice_leaves_no_renewal_to_land_on_its_given_back_lease(
    open_store: Opener,
) -> None:
    async with open_store() as store:
        await store.create("o-1", HangSaga.name, HangSaga.definition.fingerprint,
                           {"order_id": "o-1"}, [entry(0, "Hang")])
        saga = HangSaga(store=store)
        # lease_seconds=0.3: the heartbeat's first renewal starts after 0.1 s.
        task = asyncio.get_running_loop().create_task(saga.resume("o-1", lease_seconds=0.3))
        async with asyncio.timeout(30):  # a bound, not a wait: it fails the test
            await store.renewing.wait()
            task.cancel()
            # The run has unwound, and waits for its heartbeat, in a renewal.
            await store.renewal_cancelled.wait()
            task.cancel()  # cancelled again while it waits
            # Every chance to give the lease back before the renewal lands
            # (it lands once the lease is given back, if it is).
            for _ in range(20):
                await asyncio.sleep(0)
            if not store.released:
                store.land.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.renewal_ended.wait()
            assert store.released
        # Given back: no owner, and anyone leases it at once (not SagaBusy).
        check: RecoverableStore = store
        [summary] = await check.list_sagas()
        assert summary.lease_owner is None, summary
        await check.claim_saga("o-1", owner="worker-2", lease_seconds=60)
        # Given back once its heartbeat had ended: no renewal on its way then.
        assert store.renewal_ended_before_release


async def test_S10_a_renewal_landing_after_its_lease_was_given_back_is_refused(
    open_store: Opener,
) -> None:
    """The store's own fence: a renewal the store runs after the release (a
    PostgreSQL statement the server ran after its client gave up on it: its
    heartbeat, cancelled, had ended) neither owns nor extends the lease."""
    async with open_store() as store:
        store.renewals = 1  # renewals go straight to the store
        check: RecoverableStore = store
        for saga_id, give_back in (("released", "release"), ("deferred", "defer")):
            await check.create(saga_id, "OrderSaga", "fp", {}, [entry(0, "a")])
            lease = await check.claim_saga(saga_id, owner="worker-1", lease_seconds=60)
            if give_back == "release":
                await check.release(lease)
            else:
                await store.defer(lease, 30)
            before = {s.saga_id: s for s in await check.list_sagas()}[saga_id]
            with pytest.raises(LeaseLost):
                await store.renew(lease, 3600)
            after = {s.saga_id: s for s in await check.list_sagas()}[saga_id]
            assert (after.lease_owner, after.lease_expires_at) == (
                before.lease_owner, before.lease_expires_at), (before, after)
            assert after.lease_owner is None
        # Released: anyone leases it at once (not SagaBusy).
        await check.claim_saga("released", owner="worker-2", lease_seconds=60)


async def test_S10_a_first_run_with_token_0_still_renews_its_lease(open_store: Opener) -> None:
    """The refusal of a given-back lease spares a first run's: its token 0
    was never claimed, so never given back. A slow first run may heartbeat
    through ``renew`` (owner named, token 0) to hold recovery off, on both
    stores alike."""
    async with open_store() as store:
        store.renewals = 1  # renewals go straight to the store
        check: RecoverableStore = store
        await check.create("first", "OrderSaga", "fp", {}, [entry(0, "a")])
        renewed = await store.renew(Lease("first", "runner", 0, float("inf")), 60)
        assert (renewed.owner, renewed.token) == ("runner", 0)
        assert await check.claim(owner="w", lease_seconds=60, older_than=-1, limit=1) == []
        [summary] = await check.list_sagas()
        assert summary.lease_owner == "runner", summary


async def test_S8_S13_a_worker_in_a_cancelled_anyio_scope_hands_its_saga_off_and_gives_it_back(
    open_store: Opener,
) -> None:
    """A ``RecoveryWorker`` run inside ``anyio.move_on_after`` (cancelled at
    every await once the scope is), cancelled while it resumes a saga — with
    a renewal of its lease in flight: the saga is handed off (nothing
    compensated, the journal as the steps left it), its lease is given back
    once the heartbeat has ended and before ``run()`` returns, and another
    pass resumes it at once. (On PostgreSQL every give-back and renewal is a
    round trip, and the worker listens for work on a connection of its own.)"""
    from test_worker import Ledger, order_saga, run_and_look, seed

    from fallback_saga import RecoveryWorker, SagaStatus, StepStatus, recover

    async with open_store() as store:
        [saga_id] = await seed(store, 1)
        ledger = Ledger()
        ledger.hold("act B")
        # lease=0.3: the heartbeat's first renewal starts after 0.1 s.
        worker = RecoveryWorker(store, [order_saga(store, ledger)], lease=0.3, poll=0.02,
                                older_than=0)
        run, released_when_run_returned = run_and_look(worker, lambda: store.released)
        running = InAnyioScope(run)
        async with asyncio.timeout(30):  # a bound, not a wait: it fails the test
            await ledger.entered["act B"].wait()
            await store.renewing.wait()
            running.cancel()
            await store.renewal_cancelled.wait()
            for _ in range(20):  # every chance to give the lease back first
                await asyncio.sleep(0)
            if not store.released:
                store.land.set()
            assert await running.task  # the scope caught its cancellation: nothing else escaped
        assert released_when_run_returned == [True]
        assert running.left == []
        assert store.renewal_ended_before_release
        assert worker.stats.handed_off == 1
        assert worker.in_flight == 0
        assert [(action, step) for action, step, _ in ledger.calls] == [
            ("act", "A"), ("act", "B")]
        record = await store.load(saga_id)
        assert record.status is SagaStatus.RUNNING
        assert [(e.step, e.action, e.status) for e in record.history][-1] == (
            "B", "act", StepStatus.STARTED)
        (summary,) = await store.list_sagas()
        assert summary.lease_owner is None, summary
        # Given back: the next pass resumes it at once, from B.
        after = Ledger()
        report = await recover(store, [order_saga(store, after)], older_than=0)
        assert report.resumed == [saga_id], report
        assert [(action, step) for action, step, _ in after.calls] == [("act", "B"), ("act", "C")]
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED


async def test_S8_a_worker_in_a_cancelled_anyio_scope_gives_back_its_kept_leases_before_returning(
    open_store: Opener,
) -> None:
    """A ``RecoveryWorker`` run inside ``anyio.move_on_after`` (cancelled at
    every await once the scope is) that holds a lease kept through a backoff
    when the scope is cancelled: by the time ``run()`` returns, the lease is
    given back (the store's answer waited for, not cut off at its first
    await) and no task of the worker is left pending (its watch, its
    listener); the next pass resumes the saga at once."""
    from test_worker import Ledger, order_saga, seed

    from fallback_saga import RecoveryWorker, SagaStatus, recover

    async with open_store(SlowRelease) as store:
        [saga_id] = await seed(store, 1)
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], lease=60, poll=3600,
                                older_than=0)
        lease = await store.claim_saga(saga_id, owner=worker.owner, lease_seconds=60)
        worker._kept.keep(saga_id, lease, 3600)  # kept through a backoff, not due yet
        running = InAnyioScope(worker.run)
        async with asyncio.timeout(30):  # a bound, not a wait: it fails the test
            await running.entered.wait()
            for _ in range(50):  # claiming, or waiting for its poll: the give-back comes last
                await asyncio.sleep(0)
            assert not running.task.done()
            running.cancel()
            await store.asked.wait()
            for _ in range(20):  # every chance to return before the store answers
                await asyncio.sleep(0)
            store.answer.set()
            assert await running.task  # the scope caught its cancellation: nothing else escaped
        assert running.left == []
        state = await store.lease_state(saga_id)
        assert state.owner is None, state
        after = Ledger()
        report = await recover(store, [order_saga(store, after)], older_than=0)
        assert report.resumed == [saga_id], report
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED
