"""S8/S13/S15: cancellation from inside a ``Parallel`` group's member or a
child saga — a member's act or a compensation cancels the saga's task, the
caller cancels while members are in flight, a participant swallows or
converts the cancellation — on seeded random families, on the in-process
memory store, the journaled memory store and SQLite, with a store fault on
top now and then. The invariants hold under any member scheduling
(``group_cancel_faults``).

``PYTHONPATH=. python tests/test_group_cancel_faults.py START COUNT [KIND ...]``
hunts over more seeds (KIND: memory-live, memory, sqlite-thread,
sqlite-inline, postgres; postgres starts a throwaway server of its own;
``GROUP_CANCEL_FAULTS=0.8`` gives more cases a store fault, recovery (half
of them with reads failing) and a resume cancelled on the way).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from group_cancel_faults import generate, run_plan

from fallback_saga import MemorySagaStore, SQLiteSagaStore

SEEDS = 40


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_S8_S15_cancelled_from_inside_a_member_or_child_in_process(seed: int) -> None:
    await run_plan(generate(seed, faults=False), MemorySagaStore(), wrap="none", saga_id="o")


@pytest.mark.parametrize("seed", range(SEEDS, 2 * SEEDS))
async def test_S8_S13_S15_cancelled_from_inside_a_member_or_child_journaled(seed: int) -> None:
    await run_plan(generate(seed, faults=True), MemorySagaStore(), wrap="faulty", saga_id="o")


@pytest.mark.parametrize("seed", range(2 * SEEDS, 3 * SEEDS))
async def test_S8_S13_S15_cancelled_from_inside_a_member_or_child_sqlite(seed: int) -> None:
    clock = [1_000_000.0]
    inner = SQLiteSagaStore(":memory:", clock=lambda: clock[0])

    async def later(store: Any) -> None:
        clock[0] += 3600.0  # the dead run's leases ran out

    try:
        await run_plan(
            generate(seed, faults=True), inner, wrap="submitting", saga_id="o",
            before_recovery=later,
        )
    finally:
        await inner.close()


# --------------------------------------------------------------------------- the hunt


Opener = Callable[[], Awaitable[tuple[Any, str, Any]]]


def _openers(names: list[str], where: Path, conninfo: str | None) -> dict[str, Opener]:
    """Each kind: how to open a fresh store -> (store, wrap, before_recovery)."""
    openers: dict[str, Opener] = {}
    files = [0]
    clock = [1_000_000.0]

    async def later(store: Any) -> None:
        clock[0] += 3600.0

    for name in names:
        if name == "memory-live":
            async def live() -> tuple[Any, str, Any]:
                return MemorySagaStore(), "none", None
            openers[name] = live
        elif name == "memory":
            async def faulty() -> tuple[Any, str, Any]:
                return MemorySagaStore(), "faulty", None
            openers[name] = faulty
        elif name.startswith("sqlite-"):
            writer = name.removeprefix("sqlite-")

            async def sqlite(writer: str = writer) -> tuple[Any, str, Any]:
                files[0] += 1
                store = SQLiteSagaStore(
                    where / f"{writer}-{files[0]}.db", writer=writer, synchronous="normal",
                    clock=lambda: clock[0],
                )
                await store.open()
                return store, "submitting", later
            openers[name] = sqlite
        elif name == "postgres":
            assert conninfo is not None
            from fallback_saga.store.postgres import PostgresSagaStore

            async def postgres(schemas: list[int] = [0]) -> tuple[Any, str, Any]:  # noqa: B006
                schemas[0] += 1
                store = PostgresSagaStore(
                    conninfo, schema=f"gc_{os.getpid()}_{schemas[0]}", min_size=1, max_size=4
                )
                await store.open()
                return store, "submitting", None
            openers[name] = postgres
    return openers


async def _hunt(start: int, count: int, openers: dict[str, Opener]) -> AsyncIterator[str]:
    seen: Counter[str] = Counter()
    failures = 0
    for seed in range(start, start + count):
        for name, opener in openers.items():
            store, wrap, later = await opener()
            try:
                plan = generate(seed, faults=wrap != "none")
                result = await asyncio.wait_for(
                    run_plan(plan, store, wrap=wrap, saga_id=f"g{seed}", before_recovery=later),
                    120.0,
                )
                seen[f"{name} {type(result.outcome).__name__}"] += 1
                seen[f"{name} cancelled={result.cancelled} faulted={result.faulted}"] += 1
            except (AssertionError, TimeoutError) as error:
                failures += 1
                yield f"FAIL seed {seed} on {name}: {type(error).__name__}: {error}"
            finally:
                close = getattr(store, "close", None)
                if close is not None:
                    await close()
        if (seed - start + 1) % 100 == 0:
            yield f"... {seed - start + 1} seeds, {failures} failures"
    yield (f"{count} seeds x {len(openers)} stores: {failures} failures; "
           f"{dict(sorted(seen.items()))}")


if __name__ == "__main__":
    import logging
    import sys

    import group_cancel_faults
    from reference_runner import exit_unless_this_trees_package

    import fallback_saga

    exit_unless_this_trees_package()
    fallback_saga.set_testing(True)
    logging.getLogger("fallback_saga").setLevel(logging.CRITICAL)
    start, count = int(sys.argv[1]), int(sys.argv[2])
    # GROUP_CANCEL_FAULTS=0.8: more cases with a store fault (reads failing in the
    # recovery, a resume cancelled)
    group_cancel_faults.FAULT_SHARE = float(os.environ.get("GROUP_CANCEL_FAULTS", "0.3"))
    names = sys.argv[3:] or ["memory-live", "memory", "sqlite-thread", "sqlite-inline"]

    async def main(conninfo: str | None) -> None:
        with tempfile.TemporaryDirectory() as where:
            async for line in _hunt(start, count, _openers(names, Path(where), conninfo)):
                print(line, flush=True)

    from pg_cluster import hunt_conninfos

    for conninfo in hunt_conninfos(names):
        asyncio.run(main(conninfo))
