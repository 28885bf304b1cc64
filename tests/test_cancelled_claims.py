"""S8/S10/S13/S15: a lease claimed for a caller that was cancelled meanwhile.

A durable store's claim is a write: once sent it lands, whatever happens
to the task that waits for it (the SQLite store's writer thread, a
PostgreSQL server). A resume — of a saga, or of a child by its parent
running as a ``Parallel`` member — cancelled while its claim was in flight
must not leave that lease behind: whoever comes next (the parent's own
unwinding of the child a moment later, recovery) would find the saga
"driven" by nobody until the lease ran out. Found by the cancellation hunt
(``test_group_cancel_faults.py``, seed 711 on SQLite's thread writer).

The stores' clocks are frozen: a lease left behind never runs out here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest
from held_lock import HeldLock
from journal_faults import FAST_JOURNAL_RETRY, FaultySubmittingStore

from fallback_saga import (
    Parallel,
    RecoveryWorker,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaStatus,
    SQLiteSagaStore,
    SubSaga,
    recover,
)
from fallback_saga.store.base import Lease


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str


class GatedClaims(FaultySubmittingStore):
    """A store whose claim of ``gated`` waits at ``gate`` once sent (it is
    already on its way: it lands whatever its caller does, as a writer
    thread's does), after saying so (``claiming``)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gated: str | None = None
        self.claiming = asyncio.Event()
        self.gate = asyncio.Event()

    async def claim(self, **kwargs: Any) -> Any:
        """A batch claim (recovery's, a worker's), gated the same way when
        ``gated`` is ``"*"``."""
        if self.gated != "*":
            return await self.inner.claim(**kwargs)
        self.gated = None

        async def sent() -> Any:
            await self.gate.wait()
            return await self.inner.claim(**kwargs)

        self.claiming.set()
        return await asyncio.shield(asyncio.ensure_future(sent()))

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Any:
        if saga_id != self.gated:
            return await super().claim_saga(saga_id, **kwargs)
        self.gated = None

        async def sent() -> Any:
            await self.gate.wait()
            return await self.inner.claim_saga(saga_id, **kwargs)

        self.claiming.set()
        return await asyncio.shield(asyncio.ensure_future(sent()))


async def leased_by_nobody(store: Any, saga_id: str) -> bool:
    from fallback_saga import SagaBusy

    try:
        lease = await store.claim_saga(saga_id, owner="the next one", lease_seconds=60)
    except SagaBusy:
        return False
    await store.release(lease)
    return True


async def interrupted_order(store: FaultySubmittingStore, ran: list[str]) -> type[Saga[Ctx]]:
    """A saga ``o`` left RUNNING by a run that died as its first step
    returned; its saga class (``ran``: the calls of its steps)."""

    class First:
        async def act(self, ctx: Ctx) -> None:
            ran.append("First")
            store.down = len(ran) == 1  # the process dies as the first call returns

        async def compensate(self, ctx: Ctx) -> None:
            ran.append("undo First")

    class Second:
        async def act(self, ctx: Ctx) -> None:
            ran.append("Second")

        async def compensate(self, ctx: Ctx) -> None:
            ran.append("undo Second")

    class Order(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [First, Second]

    with pytest.raises(SagaInterrupted):
        await Order(store=store, journal_retry=FAST_JOURNAL_RETRY).run(Ctx("o"), saga_id="o")
    store.heal()
    return Order


async def check_given_back(
    inner: Any, store: Any, order: type[Saga[Ctx]], ran: list[str]
) -> None:
    """Nothing ran again, saga "o" is leased by nobody (``inner``: the
    store itself), so the next recovery pass resumes it at once."""
    assert ran == ["First"]
    assert await leased_by_nobody(inner, "o")
    report = await recover(store, [order], older_than=0)
    assert report.resumed == ["o"], str(report)
    assert ran == ["First", "First", "Second"]


def claimer_task(who: str, order: type[Saga[Ctx]], store: Any) -> asyncio.Task[Any]:
    """A task claiming saga "o" as ``who`` does: its ``resume``,
    ``recover()``, or a ``RecoveryWorker``."""
    if who == "resume":
        return asyncio.create_task(order(store=store).resume("o"))
    if who == "recover":
        return asyncio.create_task(recover(store, [order], older_than=0))
    worker = RecoveryWorker(store, [order], older_than=0, poll=3600, listen=False)
    return asyncio.create_task(worker.run())


async def test_S8_S13_a_resume_cancelled_while_its_claim_is_in_flight_leaves_no_lease() -> None:
    clock = [1_000_000.0]
    inner = SQLiteSagaStore(":memory:", clock=lambda: clock[0])
    try:
        store = GatedClaims(inner)
        ran: list[str] = []

        Order = await interrupted_order(store, ran)
        clock[0] += 3600.0  # the dead run's lease ran out
        store.gated = "o"
        resuming = asyncio.create_task(Order(store=store).resume("o"))
        await store.claiming.wait()
        resuming.cancel()
        store.gate.set()  # the claim lands, after its caller was cancelled
        with pytest.raises(asyncio.CancelledError):
            await resuming
        assert ran == ["First"]  # nothing ran again
        assert await leased_by_nobody(inner, "o")
        # ... so the next resume goes on at once: First's call again (its
        # outcome unknown), then Second
        done = await Order(store=store).resume("o")
        assert done.status is SagaStatus.COMPLETED
        assert ran == ["First", "First", "Second"]
    finally:
        await inner.close()


async def test_S8_S15_a_members_child_cancelled_while_its_resume_claims_it_is_undone_at_once(
) -> None:
    """The parent's group resumes its child member (a crash left the child
    mid-way) while a sibling fails: the child's claim was in flight when the
    group cancelled the member. The parent then unwinds the child itself —
    at once, not after the lease left behind ran out (nor, with a clock that
    does not move, never: the parent stopped, SagaBusy, for recovery that
    met the same lease again and again)."""
    clock = [1_000_000.0]
    inner = SQLiteSagaStore(":memory:", clock=lambda: clock[0])
    try:
        store = GatedClaims(inner)
        ledger: list[tuple[str, str]] = []
        resumed = [False]

        class K1:
            async def act(self, ctx: Ctx) -> None:
                ledger.append(("act", "K1"))
                if not resumed[0]:
                    store.down = True  # the process dies as K1 returns

            async def compensate(self, ctx: Ctx) -> None:
                ledger.append(("compensate", "K1"))

        class K2:
            async def act(self, ctx: Ctx) -> None:
                ledger.append(("act", "K2"))

            async def compensate(self, ctx: Ctx) -> None:
                ledger.append(("compensate", "K2"))

        class Declined:
            async def act(self, ctx: Ctx) -> None:
                if not resumed[0]:
                    await asyncio.Event().wait()  # in flight until the crash stops it
                await store.claiming.wait()  # the child's claim is on its way
                store.gate.set()
                raise RuntimeError("declined")

            async def compensate(self, ctx: Ctx) -> None:
                ledger.append(("compensate", "Declined"))

        class Pay(Saga[Ctx]):
            steps: ClassVar[list[Any]] = [K1, K2]

        retry = RetryPolicy(attempts=1, delay=0.0, jitter=0.0)
        child = Pay(store=store, journal_retry=FAST_JOURNAL_RETRY, compensation_retry=retry)

        class Order(Saga[Ctx]):
            steps: ClassVar[list[Any]] = [
                Parallel(
                    SubSaga(child, context=lambda parent: Ctx(parent.order_id), name="Pay",
                            lease_seconds=0.05),
                    Declined,
                ),
            ]

        with pytest.raises(SagaInterrupted):
            await Order(store=store, journal_retry=FAST_JOURNAL_RETRY).run(
                Ctx("o"), saga_id="o"
            )
        assert (await inner.load("o/Pay")).status is SagaStatus.RUNNING
        store.heal()
        clock[0] += 3600.0  # the dead run's leases ran out
        resumed[0] = True
        store.gated = "o/Pay"
        with pytest.raises(SagaFailed) as failed:
            await Order(store=store, journal_retry=FAST_JOURNAL_RETRY).resume("o")
        assert failed.value.status is SagaStatus.COMPENSATED
        assert (await inner.load("o/Pay")).status is SagaStatus.COMPENSATED
        # K1's call the crash cut off is answered for: compensated, once
        assert ledger.count(("compensate", "K1")) == 1, ledger
        assert ("act", "K2") not in ledger, ledger
    finally:
        await inner.close()


@pytest.mark.parametrize("who", ["recover", "worker"])
async def test_S10_S15_a_recovery_cancelled_while_its_batch_claim_is_in_flight_leaves_no_lease(
    who: str,
) -> None:
    """A recovery pass (``recover()``) or a worker's claim loop cancelled
    while its claim of a batch is on its way (a service shutting down
    cancels every task it has): the claim lands, and each lease it took is
    given back before the ``CancelledError`` goes on. Left behind, they
    would keep every saga of the batch from the other workers until the
    lease ran out (300 s by default) — the sagas of a worker stopped
    mid-claim, handed off to nobody."""
    clock = [1_000_000.0]
    inner = SQLiteSagaStore(":memory:", clock=lambda: clock[0])
    try:
        store = GatedClaims(inner)
        ran: list[str] = []
        order = await interrupted_order(store, ran)
        clock[0] += 3600.0  # the dead run's lease ran out
        store.gated = "*"
        recovering = claimer_task(who, order, store)
        await store.claiming.wait()
        recovering.cancel()
        store.gate.set()  # the claim lands, after its caller was cancelled
        with pytest.raises(asyncio.CancelledError):
            await recovering
        await check_given_back(inner, store, order, ran)
    finally:
        await inner.close()


class StuckClaims(FaultySubmittingStore):
    """A store whose claims never answer until cancelled (a server out of
    reach); its driver then raises an error of its own, as psycopg does."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.claiming = asyncio.Event()

    async def stuck(self) -> Any:
        self.claiming.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            raise OSError("the connection was lost") from None

    async def claim(self, **kwargs: Any) -> Any:
        return await self.stuck()

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Any:
        return await self.stuck()


@pytest.mark.parametrize("who", ["resume", "recover"])
async def test_S8_a_claim_that_never_lands_gets_its_callers_cancellation_after_the_grace(
    who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim on its way is let land once its caller is cancelled — but not
    for ever: one still waiting after ``CLAIM_GRACE`` (a server out of
    reach) gets the cancellation, so a service's shutdown never waits on
    the network. (No grace here: the claim never lands.)"""
    import fallback_saga.shielding

    monkeypatch.setattr(fallback_saga.shielding, "CLAIM_GRACE", 0.0)
    clock = [1_000_000.0]
    inner = SQLiteSagaStore(":memory:", clock=lambda: clock[0])
    try:
        ran: list[str] = []
        order = await interrupted_order(FaultySubmittingStore(inner), ran)
        clock[0] += 3600.0  # the dead run's lease ran out
        store = StuckClaims(inner)
        if who == "resume":
            waiting = asyncio.create_task(order(store=store).resume("o"))
        else:
            waiting = asyncio.create_task(recover(store, [order], older_than=0))
        await store.claiming.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):  # a bound, not a wait: it fails the test
                await waiting
        assert ran == ["First"]
    finally:
        await inner.close()


class Claiming(FaultySubmittingStore):
    """Says when a claim (of one saga, or a batch) has been sent (``claiming``)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.claiming = asyncio.Event()

    async def claim(self, **kwargs: Any) -> Any:
        self.claiming.set()
        return await self.inner.claim(**kwargs)

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Any:
        self.claiming.set()
        return await self.inner.claim_saga(saga_id, **kwargs)


async def interrupted_file(tmp_path: Path, ran: list[str]) -> tuple[Path, type[Saga[Ctx]]]:
    """A SQLite file holding ``interrupted_order``'s saga "o", written on a
    clock frozen at 1,000,000 s, and the saga class."""
    db = tmp_path / "sagas.db"
    setup = SQLiteSagaStore(db, clock=lambda: 1_000_000.0)
    try:
        return db, await interrupted_order(FaultySubmittingStore(setup), ran)
    finally:
        await setup.close()


def store_after_the_crash(db: Path, writer: str, **options: Any) -> SQLiteSagaStore:
    """The store a service opens on ``db`` an hour after the crash: on a
    clock frozen then, except the writer process's child, which stamps with
    ``time.time`` (decades after the crash)."""
    if writer == "process":
        return SQLiteSagaStore(db, writer=writer, **options)
    return SQLiteSagaStore(db, writer=writer, clock=lambda: 1_003_600.0, **options)


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("who", ["resume", "recover", "worker"])
async def test_S8_S10_a_claim_landing_after_its_caller_was_cancelled_is_given_back(
    who: str, writer: str, tmp_path: Path, sqlite3_shell: str, locks: list[HeldLock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process (an operator's ``sqlite3`` shell) holds the file's
    write lock past the claim's grace: the caller's cancellation reaches the
    claim, whose write is queued on the store's writer thread all the same,
    and lands once the lock is let go — after its caller has gone. The
    store gives that lease back itself (fenced by its token); left behind,
    it would keep every other worker out of the saga until it ran out (300
    s by default; never here, the thread writer's clock being frozen).
    (``writer="inline"`` has no such claim: it blocks the event loop until
    it is answered, so nobody can cancel its caller meanwhile.)"""
    import fallback_saga.shielding

    ran: list[str] = []
    db, order = await interrupted_file(tmp_path, ran)
    # The lock is held past the grace (none here: a lock held for ever).
    monkeypatch.setattr(fallback_saga.shielding, "CLAIM_GRACE", 0.0)
    inner = store_after_the_crash(db, writer, busy_timeout=600)
    try:
        await inner.open()
        store = Claiming(inner)
        locks.append(HeldLock(sqlite3_shell, db))
        waiting = claimer_task(who, order, store)
        await store.claiming.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(60):  # a bound, not a wait: it fails the test
                await waiting
        locks.pop().release()  # the claim lands, its caller gone
        # A write queued after the claim: answered once the claim's is.
        await inner.release(Lease("o", "nobody", -1, 0.0))
        await check_given_back(inner, store, order, ran)
    finally:
        await inner.close()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_S8_S10_a_claim_landing_as_the_store_closes_is_given_back_before_it_closes(
    writer: str, tmp_path: Path, sqlite3_shell: str, locks: list[HeldLock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same late claim, the store being closed meanwhile (a service
    shutting down cancels its tasks, then closes its store): the claim's
    outcome reaches the event loop after ``close`` queued its stop, and its
    give-back is queued behind that stop — still written before ``close``
    returns, not dropped with the thread."""
    import fallback_saga.shielding

    db, order = await interrupted_file(tmp_path, [])
    monkeypatch.setattr(fallback_saga.shielding, "CLAIM_GRACE", 0.0)
    inner = store_after_the_crash(db, writer, busy_timeout=600)
    try:
        await inner.open()
        store = Claiming(inner)
        locks.append(HeldLock(sqlite3_shell, db))
        waiting = asyncio.create_task(order(store=store).resume("o"))
        await store.claiming.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(60):  # a bound, not a wait: it fails the test
                await waiting
        closing = asyncio.create_task(inner.close())
        await asyncio.sleep(0)  # close() has queued its stop, behind the claim
        locks.pop().release()  # the claim lands, its caller gone
        await closing
    finally:
        await inner.close()
    # On the clock the lease was written by (a lease stamped ahead of the
    # clock counts as written before the clock stepped back: free).
    after = store_after_the_crash(db, writer)
    try:
        assert await leased_by_nobody(after, "o")
    finally:
        await after.close()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_S8_S10_a_claim_cancelled_as_its_answer_arrives_is_given_back(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancellation lands in the loop turn the claim's answer arrives
    (``claimed``'s grace running out just then): the outcome is set, but
    the task never takes it — it raises ``CancelledError``. The store gives
    that lease back too (nobody else can know it was taken)."""
    import fallback_saga.store._sqlite_workers as workers

    db, _ = await interrupted_file(tmp_path, [])
    inner = store_after_the_crash(db, writer)
    try:
        await inner.open()
        resolve = workers._resolve
        claiming: list[asyncio.Task[Any]] = []

        def answered_then_cancelled(items: Any) -> None:
            resolve(items)  # the claim's outcome is set ...
            monkeypatch.setattr(workers, "_resolve", resolve)
            claiming[0].cancel()  # ... and its task cancelled before it takes it

        monkeypatch.setattr(workers, "_resolve", answered_then_cancelled)
        claiming.append(asyncio.create_task(
            inner.claim_saga("o", owner="gone", lease_seconds=300)
        ))
        with pytest.raises(asyncio.CancelledError):
            await claiming[0]
        # A write queued after the give-back: answered once it is.
        await inner.release(Lease("o", "nobody", -1, 0.0))
        assert await leased_by_nobody(inner, "o")
    finally:
        await inner.close()


def test_S8_a_claim_cut_off_by_the_loops_shutdown_before_it_began_claims_nothing_and_is_closed(
) -> None:
    """``asyncio.run`` ends while a claim's own task has not taken its first
    step (3.11 starts no task eagerly): the runner cancels it, the claim
    never runs — and its coroutine was left unawaited, Python's
    "coroutine ... was never awaited" RuntimeWarning in the service's log at
    every such shutdown (seen under a worker polling every 10 ms). It is
    closed: nothing claimed, nothing said."""
    import gc
    import warnings

    from fallback_saga.shielding import claimed

    began: list[str] = []

    async def claim() -> Lease:
        began.append("claim")
        return Lease("s-1", "w", 1, 0.0)

    async def release(lease: Lease) -> None:
        began.append("release")

    async def main() -> None:
        # Returns at once: the caller's task starts the claim's task, which
        # the shutdown cancels before its first step (on 3.12+ it may run
        # eagerly, done before its caller awaits it: the caller has the lease).
        asyncio.get_running_loop().create_task(claimed(claim(), release))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    # Under uvloop the claim's task takes its step before the shutdown's
    # cancellation reaches its caller: the claim lands, and the cancelled
    # caller gives it back (claimed's contract) — no lease kept either way.
    assert began in ([], ["claim"], ["claim", "release"])
