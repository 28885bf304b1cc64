"""pytest-benchmark: one ``Parallel`` group of N members against the same N steps
in a straight line (the sagas of ``parallel_groups.py``).

    pytest benchmarks/test_bench_parallel.py                      # measure
    pytest benchmarks/test_bench_parallel.py --benchmark-disable  # each body once (CI)

As in ``test_bench.py``: a round is a batch on one reused event loop —
**100 sagas** per round in memory (after 10,000 have filled the default store;
skipped with ``--benchmark-disable``), **10 sequential sagas** per round on a
fresh SQLite file (``synchronous="full"``). Divide the times by 100 (or 10).
Each N's group also has the bare loop and the bare ``asyncio.gather`` of the
same step bodies, for reference. Every benchmark checks its outcome: COMPLETED,
exactly the N fields set, N results in declared order; the durable ones also
what the journal holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import parallel_groups as pg
import pytest

SAGAS_PER_ROUND = 100
DURABLE_SAGAS_PER_ROUND = 10


def run_batch(
    loop: asyncio.AbstractEventLoop, run_one: Callable[[], Awaitable[Any]], n: int
) -> Any:
    """Await ``run_one()`` n times in one coroutine; return the last outcome."""
    return loop.run_until_complete(pg.timed_sagas(run_one, n))[1]


def memory_bench(benchmark: Any, loop: asyncio.AbstractEventLoop, n: int, kind: str) -> None:
    workload = pg.build(n)[kind]
    run_one = workload.new_runner()
    if workload.fill and not getattr(benchmark, "disabled", False):
        run_batch(loop, run_one, workload.fill)  # the steady state: the store full
    benchmark.extra_info["sagas_per_round"] = SAGAS_PER_ROUND
    workload.check(benchmark(run_batch, loop, run_one, SAGAS_PER_ROUND))


@pytest.mark.benchmark(group="parallel N=3: straight vs group (time per 100 sagas)")
@pytest.mark.parametrize("kind", pg.KINDS)
def test_three_steps_straight_or_grouped(
    benchmark: Any, loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    memory_bench(benchmark, loop, 3, kind)


@pytest.mark.benchmark(group="parallel N=8: straight vs group (time per 100 sagas)")
@pytest.mark.parametrize("kind", pg.KINDS)
def test_eight_steps_straight_or_grouped(
    benchmark: Any, loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    memory_bench(benchmark, loop, 8, kind)


@pytest.mark.benchmark(
    group=f"durable parallel, SQLite synchronous=full (time per {DURABLE_SAGAS_PER_ROUND} sagas)"
)
@pytest.mark.parametrize("n", pg.N_VALUES)
@pytest.mark.parametrize("kind", [pg.STRAIGHT, pg.GROUP])
def test_durable_straight_or_grouped_sqlite(
    benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, n: int, kind: str
) -> None:
    from fallback_saga import SagaStatus, SQLiteSagaStore, StepStatus

    store = SQLiteSagaStore(tmp_path / "sagas.db", synchronous="full")  # a fresh file
    loop.run_until_complete(store.open())
    saga = pg.saga_class(n, kind == pg.GROUP)(store=store)
    check = pg.saga_check(n)

    async def many() -> Any:
        outcome = None
        for _ in range(DURABLE_SAGAS_PER_ROUND):
            ctx = pg.GCtx(order_id="o-1")
            outcome = ctx, await saga.run(ctx)
        return outcome

    benchmark.extra_info["sagas_per_round"] = DURABLE_SAGAS_PER_ROUND
    try:
        before = store.stats
        outcome = benchmark(lambda: loop.run_until_complete(many()))
        after = store.stats
        check(outcome)
        record = loop.run_until_complete(store.load(outcome[1].saga_id))
        assert record.status is SagaStatus.COMPLETED
        assert record.context == {"order_id": "o-1", **{
            f: ("done" if i < n else None) for i, f in enumerate(pg.FIELDS)
        }}
        rows = [(e.position, e.action, e.status) for e in record.history]
        started = [(i, "act", StepStatus.STARTED) for i in range(n)]
        completed = [(i, "act", StepStatus.COMPLETED) for i in range(n)]
        if kind == pg.GROUP:
            # Every member's STARTED first (one write-ahead), then the completions.
            assert rows[:n] == started
            assert sorted(rows[n:]) == completed
        else:
            assert rows == [row for pair in zip(started, completed, strict=True) for row in pair]
        assert after.writes - before.writes == after.commits - before.commits  # one at a time
        # One more saga, untimed, to count its writes: a group makes no more
        # journal writes than the same steps in a line (n + 1). Its members'
        # STARTED go out in one write, and completions that queue behind a
        # sibling's write go out together.
        ctx = pg.GCtx(order_id="o-1")
        check((ctx, loop.run_until_complete(saga.run(ctx))))
        writes = store.stats.writes - after.writes
        benchmark.extra_info["store_writes_per_saga"] = writes
        assert writes <= n + 1, f"{writes} journal writes for {n} members"
    finally:
        loop.run_until_complete(store.close())


def test_versus_runs_this_tree_and_another_copy_side_by_side(tmp_path: Path) -> None:
    """``parallel_groups.py --versus``: a smoke run against a copy of this very
    package (every batch's outcome is checked inside; numbers meaningless)."""
    import shutil

    import fallback_saga

    copy = tmp_path / "copy" / "fallback_saga"
    shutil.copytree(Path(fallback_saga.__file__).parent, copy)
    text = asyncio.run(pg.versus([copy], rounds=1, count=3, fill=0))
    rows = [line.split() for line in text.splitlines() if line[:2].strip() in {"3", "8"}]
    assert [(row[0], row[1]) for row in rows] == [
        ("3", "this"), ("3", "base"), ("8", "this"), ("8", "base")
    ]
