"""S10/S15: a child saga (SubSaga) claimed by the recovery that claimed its
parent — in one ``recover`` pass, or by a later claim of the ``RecoveryWorker``
that drives the parent — never makes the parent wait for that very claim.

The parent's run leases its child by id; the child's own claim lets the child
go (deferred: its parent drives it). Run first, the parent met its own
recovery's lease (``SagaBusy``) and polled (``_when_free``) a second a time
until the child's claim was let go: a pass stalled a second per family, and
one with fewer slots than its batch (``concurrency=1``) deadlocked — the
parent held the slot its child waited for — until the parent gave up after
twice the child's lease (interrupted, nothing resumed).

Nothing here sleeps for real: ``_when_free``'s sleep is replaced by one that
records the wait and refuses it (the parent then stops, and the test fails
on the record).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers_clock import run_virtual

import fallback_saga.subsaga as subsaga_module
from fallback_saga import (
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    recover,
)
from fallback_saga.claimed_saga import ClaimedSaga
from fallback_saga.errors import SagaBusy
from fallback_saga.store.base import Lease

pytest_plugins = ["conftest_pg", "helpers_stores"]

FAMILIES = ("f1", "f2")


class Crash(BaseException):
    """The process dies here: nothing after it is unwound or journaled."""


CRASH_AT: set[str] = set()  # "confirm" (the child's act), "refund" (its compensation)


@dataclasses.dataclass
class PayCtx(SagaContext):
    amount: int = 0


@dataclasses.dataclass
class OrderCtx(SagaContext):
    amount: int = 10
    fail_ship: bool = False


class Charge(SagaStepHandler[PayCtx, None]):
    async def act(self, ctx: PayCtx, /) -> None:
        pass

    async def compensate(self, ctx: PayCtx, /) -> None:
        pass


class Confirm(SagaStepHandler[PayCtx, None]):
    async def act(self, ctx: PayCtx, /) -> None:
        if "confirm" in CRASH_AT:
            raise Crash

    async def compensate(self, ctx: PayCtx, /) -> None:
        if "refund" in CRASH_AT:
            raise Crash


class Payment(Saga[PayCtx]):
    steps: ClassVar[list[Any]] = [Charge, Confirm]


class Reserve(SagaStepHandler[OrderCtx, None]):
    async def act(self, ctx: OrderCtx, /) -> None:
        pass

    async def compensate(self, ctx: OrderCtx, /) -> None:
        pass


class Ship(SagaStepHandler[OrderCtx, None]):
    async def act(self, ctx: OrderCtx, /) -> None:
        if ctx.fail_ship:
            raise RuntimeError("no courier")


class Order(Saga[OrderCtx]):
    steps: ClassVar[list[Any]] = [
        Reserve,
        SubSaga(Payment, context=lambda order: PayCtx(order.amount), name="Pay",
                lease_seconds=1.0),
        Ship,
    ]


@pytest.fixture
def store(durable_store: Any) -> Any:
    return durable_store


class _Waited(Exception):
    """A parent's run began to wait for its child's lease."""


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of ``_when_free`` (a child's lease held), each refused."""
    waited: list[float] = []

    class Clockless:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay: float, result: Any = None) -> Any:
            waited.append(delay)
            raise _Waited(f"the parent's run waited {delay:g} s for its child's lease")

    monkeypatch.setattr(subsaga_module, "asyncio", Clockless())
    return waited


def parents_first(store: Any) -> None:
    """The store's claims answer parents before their children: the order
    in which the parent's run reached its child first (a store's claim
    promises no order; SQLite's answers oldest first, the parent)."""
    claim = store.claim

    @functools.wraps(claim)
    async def claim_parents_first(*args: Any, **kwargs: Any) -> list[Lease]:
        leases: list[Lease] = await claim(*args, **kwargs)
        return sorted(leases, key=lambda lease: lease.saga_id.count("/"))

    store.claim = claim_parents_first


async def crash_families(store: Any, crash_at: str, *, fail_ship: bool = False) -> None:
    CRASH_AT.clear()
    CRASH_AT.add(crash_at)
    try:
        for family in FAMILIES:
            with pytest.raises(Crash):
                await Order(store=store).run(OrderCtx(fail_ship=fail_ship), saga_id=family)
    finally:
        CRASH_AT.clear()


async def test_S15_a_pass_claiming_a_running_child_with_its_parent_never_makes_the_parent_wait(
    store: Any, waits: list[float]
) -> None:
    """One slot (``concurrency=1``): the parent's resume took it, and the
    child's claim waited for it — the parent waited for the child's lease."""
    await crash_families(store, "confirm")
    for family in FAMILIES:
        assert (await store.load(f"{family}/Pay")).status is SagaStatus.RUNNING
    parents_first(store)
    report = await recover(store, [Order, Payment], older_than=0, concurrency=1)
    assert waits == []
    assert sorted(report.resumed) == list(FAMILIES), report
    assert sorted(report.deferred) == [f"{family}/Pay" for family in FAMILIES], report
    for family in FAMILIES:
        assert (await store.load(family)).status is SagaStatus.COMPLETED
        assert (await store.load(f"{family}/Pay")).status is SagaStatus.COMPLETED


async def test_S15_a_pass_claiming_a_compensating_child_with_its_parent_never_makes_it_wait(
    store: Any, waits: list[float]
) -> None:
    await crash_families(store, "refund", fail_ship=True)
    for family in FAMILIES:
        assert (await store.load(family)).status is SagaStatus.COMPENSATING
        assert (await store.load(f"{family}/Pay")).status is SagaStatus.COMPENSATING
    parents_first(store)
    report = await recover(store, [Order, Payment], older_than=0, concurrency=1)
    assert waits == []
    assert sorted(report.compensated) == list(FAMILIES), report
    assert sorted(report.deferred) == [f"{family}/Pay" for family in FAMILIES], report
    for family in FAMILIES:
        assert (await store.load(f"{family}/Pay")).status is SagaStatus.COMPENSATED


@pytest.mark.parametrize("crash_at", ["confirm", "refund"])
def test_S15_a_pass_whose_child_is_let_go_slowly_never_makes_the_parent_poll(
    tmp_path: Path, waits: list[float], crash_at: str
) -> None:
    """A slot for each (the default ``concurrency``): the child's claim lets
    it go as its parent's resume begins, but the store takes a while to
    defer it (5 s of the loop's virtual clock). The parent's run, leasing
    its child meanwhile, met SagaBusy and polled; it starts once the child
    is deferred."""

    async def main() -> None:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="inline") as store:
            await crash_families(store, crash_at, fail_ship=crash_at == "refund")
            parents_first(store)
            defer = store.defer

            async def slow_defer(lease: Lease, *args: Any, **kwargs: Any) -> None:
                await asyncio.sleep(5.0)
                await defer(lease, *args, **kwargs)

            store.defer = slow_defer  # type: ignore[method-assign]
            report = await recover(store, [Order, Payment], older_than=0)
            assert waits == []
            done = report.resumed if crash_at == "confirm" else report.compensated
            assert sorted(done) == list(FAMILIES), report
            assert sorted(report.deferred) == [f"{family}/Pay" for family in FAMILIES]

    run_virtual(main)


async def test_S15_a_workers_later_claim_of_a_child_whose_parent_it_drives_is_waited_for_not_polled(
    store: Any, waits: list[float]
) -> None:
    """The worker claims the parent; as the parent's run reaches its child,
    the worker's next claim takes the child (older than ``older_than`` by
    then, say), and lets it go (deferred) only after the parent has asked
    for it. The parent waits for that claim to let the child go — not a
    second a poll."""
    await crash_families(store, "confirm")
    claim, claim_saga, defer = store.claim, store.claim_saga, store.defer
    second_claim, parent_asked = asyncio.Event(), asyncio.Event()
    worker: RecoveryWorker | None = None

    @functools.wraps(claim)
    async def one_saga_a_claim(*args: Any, **kwargs: Any) -> list[Lease]:
        kwargs["limit"] = 1  # the parent (the oldest), then its child
        leases: list[Lease] = await claim(*args, **kwargs)
        if any(lease.saga_id == "f1/Pay" for lease in leases):
            second_claim.set()
        return leases

    async def after_the_workers_claim(saga_id: str, **kwargs: Any) -> Lease:
        if saga_id == "f1/Pay" and not second_claim.is_set():
            assert worker is not None
            worker.wake()  # its next claim: the child
            await second_claim.wait()
        try:
            lease: Lease = await claim_saga(saga_id, **kwargs)
        finally:
            if saga_id == "f1/Pay":
                parent_asked.set()
        return lease

    async def after_the_parent_asked(lease: Lease, *args: Any, **kwargs: Any) -> None:
        if lease.saga_id == "f1/Pay":
            await parent_asked.wait()
        await defer(lease, *args, **kwargs)

    store.claim, store.claim_saga = one_saga_a_claim, after_the_workers_claim
    store.defer = after_the_parent_asked
    worker = RecoveryWorker(store, [Order, Payment], older_than=0, poll=30.0)
    running = asyncio.create_task(worker.run())
    try:
        while (await store.load("f1")).status is SagaStatus.RUNNING and not waits:
            await asyncio.wait([running], timeout=0.01)
            assert not running.done()
    finally:
        await worker.stop()
        await running
    assert waits == []
    assert (await store.load("f1")).status is SagaStatus.COMPLETED
    assert (await store.load("f1/Pay")).status is SagaStatus.COMPLETED


async def test_S10_a_batch_links_each_saga_to_the_descendants_claimed_with_it(
    tmp_path: Path,
) -> None:
    """``children_first``: a parent waits for its children and grandchildren
    claimed with it, whatever their order in the batch; a saga whose id only
    looks like a child's, with no parent in the batch, waits for nothing."""
    from fallback_saga.claimed_saga import children_first

    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        def claimed(saga_id: str) -> ClaimedSaga:
            lease = Lease(saga_id, "me", 1, 0.0)
            return ClaimedSaga(store, {}, lease, lease_seconds=1.0)

        batch = children_first([claimed(i) for i in ("g/P/C", "g", "x/Y", "g/P", "g/Q")])

        def children(at: int) -> list[str]:
            return [child.saga_id for child in batch[at].children]

        assert children(1) == ["g/P/C", "g/P", "g/Q"]
        assert children(3) == ["g/P/C"]
        assert children(0) == children(2) == children(4) == []


async def test_S15_a_real_other_holder_of_the_child_is_still_waited_for(
    tmp_path: Path, waits: list[float]
) -> None:
    """Another worker's lease on the child (no claim of this process's) is
    polled as before: SagaBusy, then a wait — the parent never leases a
    child another driver holds."""
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await crash_families(store, "confirm")
        other = await store.claim_saga("f1/Pay", owner="another worker", lease_seconds=60)
        report = await recover(store, [Order, Payment], older_than=0)
        assert waits == [0.1]  # refused by the test: the parent stops, left for later
        assert [saga_id for saga_id, _ in report.interrupted] == ["f1"]
        assert (await store.load("f1/Pay")).status is SagaStatus.RUNNING
        assert sorted(report.resumed) == ["f2"]  # its family, claimed whole, as above
        await store.release(other)
        waits.clear()
        again = await recover(store, [Order, Payment], older_than=0)
        assert (waits, again.resumed, again.deferred) == ([], ["f1"], ["f1/Pay"])


# --------------------------------------------------------------------------- _when_free


def busy_until(free: asyncio.Event, owner: str, before: Any = None) -> Any:
    """A child's lease request: SagaBusy (held by ``owner``) until ``free``;
    ``before()`` runs as each request is on its way."""
    asked: list[str] = []

    async def call() -> str:
        asked.append("asked")
        if before is not None:
            before()
        if not free.is_set():
            raise SagaBusy("p/C", owner, time.time() + 300)
        return "leased"

    call.asked = asked  # type: ignore[attr-defined]
    return call


async def test_S10_a_parent_waits_for_its_process_s_claim_on_the_child_to_let_go(
    waits: list[float],
) -> None:
    from fallback_saga.claims_here import HeldClaim
    from fallback_saga.subsaga import _when_free

    held = HeldClaim("p/C", "this worker")
    call = busy_until(held.event, "this worker")
    asyncio.get_running_loop().call_soon(held.let_go)
    assert await _when_free(call, "p/C", 30.0) == "leased"
    assert (waits, call.asked) == ([], ["asked", "asked"])


async def test_S10_a_parent_asks_again_at_once_for_a_child_let_go_while_it_asked(
    waits: list[float],
) -> None:
    """The store answered the parent's request (SagaBusy), then the claim's
    give-back: the claim is let go by the time the parent reads the answer."""
    from fallback_saga.claims_here import HeldClaim
    from fallback_saga.subsaga import _when_free

    held = HeldClaim("p/C", "this worker")
    asked: list[str] = []

    async def call() -> str:
        asked.append("asked")
        if len(asked) == 1:
            held.let_go()  # the give-back lands while the answer is on its way
            raise SagaBusy("p/C", "this worker", time.time() + 300)
        return "leased"

    assert await _when_free(call, "p/C", 30.0) == "leased"
    assert (waits, asked) == ([], ["asked", "asked"])


async def test_S10_a_parent_waits_for_its_worker_s_claim_on_its_way(waits: list[float]) -> None:
    """The worker's claim leased the child, and has not registered it yet."""
    from fallback_saga.claims_here import HeldClaim, claiming
    from fallback_saga.subsaga import _when_free

    free = asyncio.Event()
    landed = asyncio.Event()

    async def claim_lands() -> None:
        with claiming("this worker"):
            await landed.wait()
            HeldClaim("p/C", "this worker").let_go()  # a child whose parent is in flight
            free.set()

    landing = asyncio.create_task(claim_lands())
    await asyncio.sleep(0)
    call = busy_until(free, "this worker", before=landed.set)
    assert await _when_free(call, "p/C", 30.0) == "leased"
    await landing
    assert waits == []


async def test_S15_a_parent_polls_a_child_another_owner_holds(waits: list[float]) -> None:
    """Neither a claim of this process nor one on its way: polled (a wait,
    refused here), whatever this process's recovery lets go meanwhile."""
    from fallback_saga.claims_here import HeldClaim, claiming
    from fallback_saga.subsaga import _when_free

    with claiming("this worker"):
        call = busy_until(asyncio.Event(), "another worker",
                          before=lambda: HeldClaim("q/D", "this worker").let_go())
        with pytest.raises(_Waited):
            await _when_free(call, "p/C", 30.0)
    # asked again at once once (a claim of ours let go meanwhile), then polled
    assert (waits, call.asked) == ([0.1], ["asked", "asked"])


async def test_S15_a_parent_polls_a_child_of_its_id_another_owner_holds_beside_a_claim_here(
    waits: list[float],
) -> None:
    """This process's recovery holds a claim on a saga of the child's id — in
    another store (one app, two databases: ids may repeat), under its own
    owner — while the store the parent asked names another holder: that
    holder is polled, not this claim waited for (it may not let go for as
    long as its own resume runs)."""
    from fallback_saga.claims_here import HeldClaim
    from fallback_saga.subsaga import _when_free

    elsewhere = HeldClaim("p/C", "the other store's pass")
    call = busy_until(asyncio.Event(), "another worker")
    with pytest.raises(_Waited):
        await _when_free(call, "p/C", 30.0)
    assert (waits, call.asked) == ([0.1], ["asked"])
    elsewhere.let_go()


async def test_S10_a_parent_polls_another_holder_s_far_lease_at_growing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lease that runs out far off (300 s) is another process's recovery
    pass (it lets go within moments) or a crashed run's (it runs out): the
    parent asks again after 0.1 s, then waits twice as long each time, up to
    a second — not a second from the start, which kept every parent whose
    child another process's pass held waiting a second."""
    from fallback_saga.subsaga import _when_free

    waited: list[float] = []

    class Clockless:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay: float, result: Any = None) -> Any:
            waited.append(round(delay, 3))

    monkeypatch.setattr(subsaga_module, "asyncio", Clockless())
    asked: list[str] = []

    async def call() -> str:
        asked.append("asked")
        if len(asked) <= 7:
            raise SagaBusy("p/C", "another process's pass", time.time() + 300)
        return "leased"

    assert await _when_free(call, "p/C", 30.0) == "leased"
    assert waited == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


async def test_S10_a_parent_waits_no_longer_than_a_crashed_run_s_lease_has_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lease with 0.3 s left is waited for 0.1 s, then 0.2 s (the backoff),
    never beyond its end: the run that held it crashed, and the child is the
    parent's once it runs out."""
    from fallback_saga.subsaga import _when_free

    waited: list[float] = []
    clock = [1_000.0]

    class Clockless:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def sleep(delay: float, result: Any = None) -> Any:
            waited.append(round(delay, 3))
            clock[0] += delay

    monkeypatch.setattr(subsaga_module, "asyncio", Clockless())

    class Timeless:
        @staticmethod
        def time() -> float:
            return clock[0]

    monkeypatch.setattr(subsaga_module, "time", Timeless())
    expires = clock[0] + 0.35

    async def call() -> str:
        if clock[0] < expires:
            raise SagaBusy("p/C", "a crashed run", expires)
        return "leased"

    assert await _when_free(call, "p/C", 30.0) == "leased"
    assert waited == [0.1, 0.2, 0.1]
