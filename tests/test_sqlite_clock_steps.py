"""S10/S13 under a wall clock that steps (NTP, a VM resumed, a wrong RTC put right).

``SQLiteSagaStore`` stamps ages and leases with its ``clock`` (Unix time): every
process on the machine reads the same clock, and a step moves them all. A step
*forward* makes leases and ages look older than they are: recovery may take a
live saga over, and fencing shuts its runner out (its next write is refused).
A step *back* must not do the opposite for good: a saga written, leased or
released while the clock was ahead must not wait for the clock to catch up —
a month ahead, and it would sit a month with nobody driving it, beyond the
reach of ``recover``, ``RecoveryWorker`` and ``Saga.resume``.

The clock is injected (one list cell moved by the test); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    LeaseLost,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    recover,
)
from fallback_saga.testing import entry

T0 = 1_800_000_000.0
MONTH = 30 * 86_400.0


class Clock:
    """The machine's wall clock, as the test sets it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SQLiteSagaStore]:
    async with SQLiteSagaStore(tmp_path / "sagas.db", clock=clock) as store:
        yield store


# The states a saga is left in before a clock step, for either store (the
# PostgreSQL clock-step tests use them too).
LeasingStore = Any  # SQLiteSagaStore or PostgresSagaStore


async def new_saga(store: LeasingStore, saga_id: str) -> None:
    await store.create(saga_id, "OrderSaga", "fp", {"order_id": saga_id}, [entry(0, "a")])


async def written_ahead(store: LeasingStore) -> None:
    """A first run that crashed (no lease)."""
    await new_saga(store, "s")


async def leased_ahead(store: LeasingStore) -> None:
    """Claimed by a worker that died holding the lease."""
    await new_saga(store, "s")
    await store.claim_saga("s", owner="dead-worker", lease_seconds=300)


async def renewed_ahead(store: LeasingStore) -> None:
    """Claimed long ago, renewed by its heartbeat just before the worker died."""
    await new_saga(store, "s")
    lease = await store.claim_saga("s", owner="dead-worker", lease_seconds=-1)
    await store.renew(lease, 300)


async def released_ahead(store: LeasingStore) -> None:
    """Handed back by a stopping worker (claimable at once, until the step)."""
    await new_saga(store, "s")
    await store.release(await store.claim_saga("s", owner="leaving", lease_seconds=300))


async def deferred_ahead(store: LeasingStore) -> None:
    """Deferred for a while (a child saga whose parent was in flight)."""
    await new_saga(store, "s")
    await store.defer(await store.claim_saga("s", owner="w", lease_seconds=300), 60)


BEFORE_THE_STEP: list[Callable[[SQLiteSagaStore], Any]] = [
    written_ahead, leased_ahead, renewed_ahead, released_ahead, deferred_ahead,
]


@pytest.mark.parametrize("before", BEFORE_THE_STEP, ids=lambda f: f.__name__)
async def test_S10_a_clock_stepped_back_strands_no_saga_from_claim(
    store: SQLiteSagaStore, clock: Clock, before: Callable[[SQLiteSagaStore], Any]
) -> None:
    clock.now = T0 + MONTH  # the clock ran a month ahead ...
    await before(store)
    token = (await store.lease_state("s")).token
    clock.now = T0 + 3_600  # ... and was put right; an hour later, recovery runs
    (lease,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10)
    assert (lease.saga_id, lease.token, lease.expires_at) == ("s", token + 1, clock.now + 300)


@pytest.mark.parametrize("before", BEFORE_THE_STEP, ids=lambda f: f.__name__)
async def test_S10_a_clock_stepped_back_strands_no_saga_from_resume(
    store: SQLiteSagaStore, clock: Clock, before: Callable[[SQLiteSagaStore], Any]
) -> None:
    """``Saga.resume`` (and a parent driving its child) lease one saga by id."""
    clock.now = T0 + MONTH
    await before(store)
    token = (await store.lease_state("s")).token
    clock.now = T0 + 3_600
    lease = await store.claim_saga("s", owner="operator", lease_seconds=300)
    assert lease.token == token + 1


async def test_S10_a_small_step_back_takes_no_live_saga_over(
    store: SQLiteSagaStore, clock: Clock
) -> None:
    """A step back shorter than ``older_than`` is no reason to take over a
    saga that was written, or a lease that was renewed, just before it: both
    are probably alive, and a takeover would run a step twice."""
    await new_saga(store, "written")
    await new_saga(store, "leased")
    lease = await store.claim_saga("leased", owner="alive", lease_seconds=-1)
    await store.renew(lease, 300)
    clock.now = T0 - 30  # an NTP step back of 30 s
    assert await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10) == []
    clock.now = T0 + 61  # the written one's age is past older_than; the lease holds
    (taken,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10)
    assert taken.saga_id == "written"


async def test_S13_a_saga_taken_over_after_a_step_back_fences_out_its_old_lease(
    store: SQLiteSagaStore, clock: Clock
) -> None:
    """Taking a stranded saga over advances its fencing token, so a holder
    that was not dead after all is refused at its next write or renewal."""
    clock.now = T0 + MONTH
    await new_saga(store, "s")
    old = await store.claim_saga("s", owner="slow-worker", lease_seconds=300)
    clock.now = T0
    (new,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=1)
    with pytest.raises(LeaseLost):
        await store.renew(old, 300)
    with pytest.raises(LeaseLost):
        await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=old)
    await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=new)


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = ""


class Reserve(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> Any:
        return self._generate_step_result("reserved")


class OrderSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve]


async def test_S10_recover_finishes_a_saga_its_dead_worker_leased_before_a_step_back(
    store: SQLiteSagaStore, clock: Clock
) -> None:
    saga = OrderSaga(store=store)
    clock.now = T0 + MONTH
    await store.create("o-1", "OrderSaga", saga.definition.fingerprint, {"order_id": "o-1"},
                       [entry(0, "Reserve")])
    await store.claim_saga("o-1", owner="dead-worker", lease_seconds=300)
    clock.now = T0
    report = await recover(store, [saga], older_than=60)
    assert report.resumed == ["o-1"]
    assert (await store.load("o-1")).status is SagaStatus.COMPLETED


# --------------------------------------------------------------------------- forward


class Stuck:
    """The first run's Hold is in flight until the test lets it go."""

    entered: asyncio.Event
    release: asyncio.Event
    calls = 0


class Hold(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> Any:
        Stuck.calls += 1
        if Stuck.calls == 1:
            Stuck.entered.set()
            await Stuck.release.wait()
        return self._generate_step_result("held")


class HoldSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Hold, Reserve]


async def test_S13_a_clock_stepped_forward_fences_out_the_live_first_run(
    store: SQLiteSagaStore, clock: Clock
) -> None:
    await check_a_step_forward_fences_out_the_live_first_run(store, clock.step)


async def test_S13_a_lease_expired_by_a_clock_step_forward_is_fenced(
    store: SQLiteSagaStore, clock: Clock
) -> None:
    await check_a_lease_a_step_forward_expired_is_fenced(store, clock.step)


# The forward-step checks, for either store (the PostgreSQL clock-step tests
# use them too); ``step(seconds)`` moves the store's clock forward.


async def check_a_step_forward_fences_out_the_live_first_run(
    store: LeasingStore, step: Callable[[float], None]
) -> None:
    """A step forward makes a live saga look older than ``older_than``:
    recovery takes it over (its step runs again, with the same idempotency
    key), and the first run, still alive, is refused at its next write:
    ``LeaseLost``, nothing written, the journal is the new owner's."""
    Stuck.entered, Stuck.release, Stuck.calls = asyncio.Event(), asyncio.Event(), 0
    first = asyncio.create_task(HoldSaga(store=store).run(Ctx("o-1"), saga_id="o-1"))
    await Stuck.entered.wait()
    step(3_600)
    report = await recover(store, [HoldSaga(store=store)], older_than=60)
    assert report.resumed == ["o-1"]
    Stuck.release.set()
    with pytest.raises(LeaseLost):
        await first
    assert (await store.load("o-1")).status is SagaStatus.COMPLETED
    assert Stuck.calls == 2


async def check_a_lease_a_step_forward_expired_is_fenced(
    store: LeasingStore, step: Callable[[float], None]
) -> None:
    """A worker's lease that a forward step expires early is taken over, and
    the worker's next renewal or write is refused."""
    await new_saga(store, "s")
    (held,) = await store.claim(owner="w1", lease_seconds=300, older_than=-1, limit=1)
    step(301)
    (taken,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=1)
    assert taken.token == held.token + 1
    with pytest.raises(LeaseLost):
        await store.renew(held, 300)
    with pytest.raises(LeaseLost):
        await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=held)
    await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=taken)
