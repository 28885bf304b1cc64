"""Rule S9 under load: 1,000 concurrent sagas share one breaker guarding a Fallback primary.

The downstream service fails for the first part of the run, then recovers.
All sagas are started at once (``asyncio.gather``); the test's driver lets them
into the guarded step in overlapping batches and moves the fake clock between
batches, so the breaker goes through CLOSED → OPEN → HALF_OPEN (trials fail,
re-open) → … → HALF_OPEN → CLOSED while calls from several rounds are in flight.
Inside the primary, calls yield to each other a random (seeded) number of times
so outcomes arrive out of order. No real time passes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter

import pytest
from helpers_breaker import FakeClock, StateChanges

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    Saga,
    SagaContext,
    SagaResult,
    SagaStatus,
)

SAGAS = 1_000
BATCH = 20
RESET_TIMEOUT = 3.0
SECONDS_PER_BATCH = 1.0
RECOVERS_AT_BATCH = 20  # the downstream fails for the first 20 batches
MAX_TRIALS = 3


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: int
    reserved_via: str = ""
    confirmed: bool = False


class Downstream:
    def __init__(self, clock: FakeClock, recovers_at: float) -> None:
        self.clock = clock
        self.recovers_at = recovers_at

    def reserve(self, order_id: int) -> None:
        if self.clock.now < self.recovers_at:
            raise ConnectionError(f"inventory down (order {order_id})")


class ReserveInventory:
    """The guarded primary: records what the breaker looked like at each call."""

    name = "ReserveInventory"

    def __init__(self, breaker: CircuitBreaker, downstream: Downstream, seed: int) -> None:
        self.breaker = breaker
        self.downstream = downstream
        self.rng = random.Random(seed)
        self.states_at_call: list[CircuitState] = []
        self.live_trials: Counter[int] = Counter()  # per half-open round (generation)
        self.most_live_trials = 0
        self.calls = 0
        self.failures = 0

    async def act(self, context: OrderContext) -> str:
        self.calls += 1
        state = self.breaker._state
        generation = self.breaker._generation
        self.states_at_call.append(state)
        if state is CircuitState.HALF_OPEN:
            self.live_trials[generation] += 1
            self.most_live_trials = max(self.most_live_trials, self.live_trials[generation])
        try:
            for _ in range(self.rng.randrange(4)):
                await asyncio.sleep(0)  # let other sagas interleave; no time passes
            try:
                self.downstream.reserve(context.order_id)
            except ConnectionError:
                self.failures += 1
                raise
            context.reserved_via = self.name
            return self.name
        finally:
            if state is CircuitState.HALF_OPEN:
                self.live_trials[generation] -= 1

    async def compensate(self, context: OrderContext) -> None:
        return None


class ReserveFromWarehouse:
    name = "ReserveFromWarehouse"

    async def act(self, context: OrderContext) -> str:
        context.reserved_via = self.name
        return self.name

    async def compensate(self, context: OrderContext) -> None:
        return None


class ConfirmOrder:
    async def act(self, context: OrderContext) -> None:
        context.confirmed = True

    async def compensate(self, context: OrderContext) -> None:
        context.confirmed = False


class FallbacksTaken:
    def __init__(self) -> None:
        self.rejected = 0
        self.failed = 0

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        if isinstance(error, CircuitOpenError):
            self.rejected += 1
        else:
            self.failed += 1


@pytest.mark.stress
async def test_S9_stress_1000_concurrent_sagas_share_one_breaker() -> None:
    clock = FakeClock(start=0.0)
    changes = StateChanges()
    breaker = CircuitBreaker(
        fail_max=5,
        reset_timeout=RESET_TIMEOUT,
        half_open_max_calls=MAX_TRIALS,
        clock=clock,
        name="inventory",
        listeners=[changes],
    )
    downstream = Downstream(clock, recovers_at=RECOVERS_AT_BATCH * SECONDS_PER_BATCH)
    primary = ReserveInventory(breaker, downstream, seed=20240601)

    class OrderSaga(Saga[OrderContext]):
        steps = [
            Fallback(step=primary, fallback=ReserveFromWarehouse(), circuit_breaker=breaker),
            ConfirmOrder(),
        ]

    taken = FallbacksTaken()
    saga = OrderSaga(listeners=[taken])
    turns = [asyncio.Event() for _ in range(SAGAS)]
    finished = [asyncio.Event() for _ in range(SAGAS)]

    async def one_order(order_id: int) -> SagaResult[OrderContext]:
        await turns[order_id].wait()
        try:
            return await saga.run(OrderContext(order_id=order_id))
        finally:
            finished[order_id].set()

    async def driver() -> None:
        batches = [range(start, start + BATCH) for start in range(0, SAGAS, BATCH)]
        for number, batch in enumerate(batches):
            for order_id in batch:
                turns[order_id].set()
            clock.advance(SECONDS_PER_BATCH)
            if number:  # batches overlap: wait for the one before, not this one
                for order_id in batches[number - 1]:
                    await finished[order_id].wait()

    async with asyncio.timeout(60):  # a guard against a hang, not a timing assertion
        *results, _ = await asyncio.gather(*(one_order(i) for i in range(SAGAS)), driver())

    # Every saga completed, through the primary or the fallback.
    assert len(results) == SAGAS
    assert all(r.status is SagaStatus.COMPLETED and r.context.confirmed for r in results)
    via = Counter(r.context.reserved_via for r in results)
    assert set(via) <= {"ReserveInventory", "ReserveFromWarehouse"}
    assert via["ReserveInventory"] + via["ReserveFromWarehouse"] == SAGAS
    assert via["ReserveInventory"] == primary.calls - primary.failures
    assert via["ReserveFromWarehouse"] == taken.rejected + taken.failed
    assert taken.failed == primary.failures

    # The primary was never called while the circuit was OPEN ...
    assert CircuitState.OPEN not in primary.states_at_call
    # ... and the open circuit really did keep most calls away from it.
    assert taken.rejected > SAGAS // 4
    assert primary.calls == SAGAS - taken.rejected

    # Half-open concurrency never exceeded the limit (and trials did run concurrently).
    assert 1 <= primary.most_live_trials <= MAX_TRIALS
    assert breaker.half_open_calls_in_flight == 0

    # It opened, probed while the service was down (re-opened), and finally closed.
    edges = changes.edges()
    assert edges[0] == (CircuitState.CLOSED, CircuitState.OPEN)
    assert (CircuitState.HALF_OPEN, CircuitState.OPEN) in edges
    assert edges[-1] == (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0
    last_batch = results[-BATCH:]
    assert all(r.context.reserved_via == "ReserveInventory" for r in last_batch)
