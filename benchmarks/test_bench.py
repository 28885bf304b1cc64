"""pytest-benchmark suite for fallback_saga.

    pytest benchmarks                        # measure
    pytest benchmarks --benchmark-disable    # run each body once (CI: keeps them from rotting)

How a round is timed: one benchmark round runs a BATCH of work inside one
coroutine on an event loop that is reused for the whole module
(``loop.run_until_complete``).  Starting a loop iteration and a task costs
about as much as a whole saga, so a single saga per round would mostly
measure asyncio.  Therefore:

* saga benchmarks run ``SAGAS_PER_ROUND`` (100) sagas per round:
  the reported time / 100 = time per saga;
* breaker benchmarks make ``CALLS_PER_ROUND`` (1,000) calls per round:
  the reported time / 1,000 = time per call;
* the durable benchmark runs ``DURABLE_SAGAS_PER_ROUND`` (10) sagas per
  round, one after the other, through ``SQLiteSagaStore`` on a fresh file in
  pytest's ``tmp_path`` (``synchronous="full"``: every commit is fsynced):
  the reported time / 10 = time per durable saga.  It is dominated by the
  disk, so it is only comparable on the same machine and filesystem.

The saga object is created once per benchmark and reused, as a service
would; its default in-memory store is bounded, so memory stays flat however
many rounds pytest-benchmark decides to run.  Before timing, 10,000 sagas
fill that store, so the rounds measure the steady state (skipped with
``--benchmark-disable``).

Every benchmark asserts its outcome (saga status, which branch ran, that
compensation happened and the failure was raised, the breaker's state), so
``--benchmark-disable`` still checks that the measured code does what it
claims.  Each saga kind is also run through the bare ``try/await/except``
loop from ``workloads.py`` (the floor) in the same benchmark group, for
reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import workloads

from fallback_saga import CircuitBreaker, CircuitOpenError, CircuitState, SQLiteCircuitStateStore

SAGAS_PER_ROUND = 100
CALLS_PER_ROUND = 1_000

IMPLS = {"fallback_saga": workloads.build_fallback_saga, "bare": workloads.build_bare}


def run_batch(
    loop: asyncio.AbstractEventLoop, run_one: Callable[[], Awaitable[Any]], n: int
) -> Any:
    """Await ``run_one()`` n times in one coroutine; return the last outcome."""

    async def many() -> Any:
        outcome = None
        for _ in range(n):
            outcome = await run_one()
        return outcome

    return loop.run_until_complete(many())


def saga_bench(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str, kind: str) -> None:
    workload = IMPLS[impl]()[kind]
    run_one = workload.new_runner()
    if workload.fill and not getattr(benchmark, "disabled", False):
        # Fill the bounded default store first, so every round sees the steady
        # state (while it fills, rare full GC passes make rounds erratic).
        run_batch(loop, run_one, workload.fill)
    benchmark.extra_info["sagas_per_round"] = SAGAS_PER_ROUND
    outcome = benchmark(run_batch, loop, run_one, SAGAS_PER_ROUND)
    # workload.check asserts, for fallback_saga: plain3/fallback3 end COMPLETED
    # with ctx fields a, b, c set and 3 results, fallback3's 2nd result coming
    # from the fallback; fail3 raises SagaFailed(status=COMPENSATED) whose
    # error is the last step's, with a and b compensated back to None.
    workload.check(outcome)


@pytest.mark.benchmark(group="saga plain3 (time per 100 sagas)")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_plain_three_steps(benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str) -> None:
    saga_bench(benchmark, loop, impl, "plain3")


@pytest.mark.benchmark(group="saga fallback3 (time per 100 sagas)")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_failing_primary_and_fallback(
    benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str
) -> None:
    saga_bench(benchmark, loop, impl, "fallback3")


@pytest.mark.benchmark(group="saga fail3 (time per 100 sagas)")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_last_step_fails_and_unwinds(
    benchmark: Any, loop: asyncio.AbstractEventLoop, impl: str
) -> None:
    saga_bench(benchmark, loop, impl, "fail3")


DURABLE_SAGAS_PER_ROUND = 10


@pytest.mark.benchmark(
    group=f"durable saga plain3, SQLite synchronous=full (time per {DURABLE_SAGAS_PER_ROUND} sagas)"
)
def test_durable_plain_three_steps_sqlite(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """Sequential durable sagas: every transition is fsynced before the next step."""
    import fs_sagas

    from fallback_saga import SagaStatus
    from fallback_saga.store.sqlite import SQLiteSagaStore

    store = SQLiteSagaStore(tmp_path / "sagas.db", synchronous="full")  # a fresh file
    loop.run_until_complete(store.open())  # file and schema created before timing
    saga = fs_sagas.Plain3(store=store)
    check = workloads.fallback_saga_check("plain3")

    async def many() -> Any:
        outcome = None
        for _ in range(DURABLE_SAGAS_PER_ROUND):
            ctx = fs_sagas.Ctx(order_id="o-1")
            outcome = ctx, await saga.run(ctx)
        return outcome

    benchmark.extra_info["sagas_per_round"] = DURABLE_SAGAS_PER_ROUND
    try:
        outcome = benchmark(lambda: loop.run_until_complete(many()))
        # COMPLETED, a/b/c set, 3 results; and the store has it as completed too.
        check(outcome)
        result = outcome[1]
        record = loop.run_until_complete(store.load(result.saga_id))
        assert record.status is SagaStatus.COMPLETED
        assert record.context == {"order_id": "o-1", "a": "a", "b": "b", "c": "c"}
        assert [(e.position, e.action, e.status) for e in record.history] == [
            (pos, "act", status) for pos in range(3) for status in ("started", "completed")
        ]
        assert store.stats.writes == store.stats.commits  # sequential: no grouping
    finally:
        loop.run_until_complete(store.close())


async def trivial() -> int:
    return 42


@pytest.mark.benchmark(group="breaker (time per 1,000 calls)")
def test_breaker_closed_path(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    breaker = CircuitBreaker(fail_max=5, reset_timeout=60.0)
    call = breaker.call

    async def calls() -> int:
        total = 0
        for _ in range(CALLS_PER_ROUND):
            total += await call(trivial)
        return total

    benchmark.extra_info["calls_per_round"] = CALLS_PER_ROUND
    total = benchmark(lambda: loop.run_until_complete(calls()))
    assert total == 42 * CALLS_PER_ROUND
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0


def guarded_calls(breaker: CircuitBreaker, way: str) -> Callable[[int], Awaitable[int]]:
    """``n`` calls of ``trivial`` made ``way`` through ``breaker`` (``bare
    await``: without it, for reference), in one coroutine: one loop per way,
    so that no choice among them is timed."""
    call, decorated = breaker.call, breaker(trivial)
    acquire, record_success = breaker.acquire, breaker.record_success

    async def bare(n: int) -> int:
        total = 0
        for _ in range(n):
            total += await trivial()
        return total

    async def through_call(n: int) -> int:
        total = 0
        for _ in range(n):
            total += await call(trivial)
        return total

    async def through_decorator(n: int) -> int:
        total = 0
        for _ in range(n):
            total += await decorated()
        return total

    async def through_block(n: int) -> int:
        total = 0
        for _ in range(n):
            async with breaker:
                total += await trivial()
        return total

    async def by_hand(n: int) -> int:
        total = 0
        for _ in range(n):
            permit = acquire()
            total += await trivial()
            record_success(permit)
        return total

    ways = {
        "bare await": bare, "call": through_call, "decorator": through_decorator,
        "async with": through_block, "acquire/record": by_hand,
    }
    return ways[way]


WAYS_IN = ["bare await", "call", "decorator", "async with", "acquire/record"]


@pytest.mark.benchmark(group="breaker, each way in, closed path (time per 1,000 calls)")
@pytest.mark.parametrize("shared", [False, True], ids=["local", "shared"])
@pytest.mark.parametrize("way", WAYS_IN)
def test_breaker_ways_in_closed_path(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, way: str, shared: bool
) -> None:
    # Shared: through an SQLite state store, pulled once a second (the
    # default sync_interval): the closed path adds a clock read.
    store = SQLiteCircuitStateStore(tmp_path / "breakers.db") if shared else None
    breaker = CircuitBreaker(
        fail_max=5, reset_timeout=60.0, name="bench", state_store=store
    )
    calls = guarded_calls(breaker, way)
    benchmark.extra_info["calls_per_round"] = CALLS_PER_ROUND
    try:
        total = benchmark(lambda: loop.run_until_complete(calls(CALLS_PER_ROUND)))
    finally:
        if store is not None:
            store.close()
    assert total == 42 * CALLS_PER_ROUND
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0


@pytest.mark.benchmark(group="breaker (time per 1,000 calls)")
def test_breaker_open_path_rejects(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    breaker = CircuitBreaker(fail_max=5, reset_timeout=3600.0)
    breaker.open()
    called = 0

    async def guarded() -> int:
        nonlocal called
        called += 1
        return 42

    call = breaker.call

    async def calls() -> tuple[int, float]:
        rejected = 0
        retry_after = -1.0
        for _ in range(CALLS_PER_ROUND):
            try:
                await call(guarded)
            except CircuitOpenError as exc:
                rejected += 1
                retry_after = exc.retry_after
        return rejected, retry_after

    benchmark.extra_info["calls_per_round"] = CALLS_PER_ROUND
    rejected, retry_after = benchmark(lambda: loop.run_until_complete(calls()))
    assert rejected == CALLS_PER_ROUND
    assert called == 0, "an open breaker must not call the function"
    assert 0.0 < retry_after <= 3600.0
    assert breaker.state is CircuitState.OPEN
