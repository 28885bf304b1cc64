"""What ``saga_family`` (``show``, the console) costs for a saga with many step
names: how many store calls it makes, and how long it takes, on SQLite — the
one-by-one way (a store without ``existing_saga_ids``: a ``lease_state`` per
step name) next to the batched one (one ``existing_saga_ids`` call) — and
how long the console takes to build that saga's page either way.

    PYTHONPATH=. python benchmarks/family_lookups.py [--steps 500] [--children 100]
        [--child-entries 2000] [--rounds 5]
    PYTHONPATH=. python benchmarks/family_lookups.py --steps 25000 --children 100 \\
        --child-entries 20 --rounds 3      # the console's 50,000-entry saga

The parent journals a started and a completed act per step name;
``--children`` of those steps have a child saga (``<parent>/<step>``) with
``--child-entries`` entries.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from fallback_saga import JournalEntry, SQLiteSagaStore, StepStatus
from fallback_saga.console.saga_page import saga_page
from fallback_saga.console.saga_view import fetch_saga
from fallback_saga.console.timeline import bars_of
from fallback_saga.subsaga import saga_family


class OneByOne:
    """The store without ``existing_saga_ids`` (a custom store's case),
    counting the calls ``saga_family`` makes."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self.store = store
        self.calls: dict[str, int] = {"load": 0, "lease_state": 0, "existing_saga_ids": 0}

    async def load(self, saga_id: str) -> Any:
        self.calls["load"] += 1
        return await self.store.load(saga_id)

    async def lease_state(self, saga_id: str) -> Any:
        self.calls["lease_state"] += 1
        return await self.store.lease_state(saga_id)


class Batched(OneByOne):
    """The store as it is: ``existing_saga_ids`` too."""

    async def existing_saga_ids(self, saga_ids: Any) -> set[str]:
        self.calls["existing_saga_ids"] += 1
        return await self.store.existing_saga_ids(saga_ids)


def entry(position: int, step: str, status: StepStatus, at: float) -> JournalEntry:
    return JournalEntry(position, step, "primary", "act", status, 1, None, at)


async def measure(counting: OneByOne, record: Any, rounds: int, children: int) -> str:
    best = float("inf")
    for _ in range(rounds):
        counting.calls = dict.fromkeys(counting.calls, 0)
        started = time.perf_counter()
        _, found = await saga_family(counting, record)
        best = min(best, time.perf_counter() - started)
    assert len(found) == children, len(found)
    calls = " ".join(f"{name}={n}" for name, n in counting.calls.items())
    page = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        view = await fetch_saga(counting, record.saga_id)
        now = time.time()
        saga_page(view, bars_of(view.record, now), store_label="bench", now=now)
        page = min(page, time.perf_counter() - started)
    return (
        f"{calls}; saga_family best of {rounds}={best * 1000:.1f} ms; "
        f"console page (load + family + render) best of {rounds}={page * 1000:.0f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--child-entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteSagaStore(Path(tmp) / "family.db") as store:
            steps = [f"Step{index}" for index in range(args.steps)]
            history = [
                entry(i, step, status, 1.0 + i)
                for i, step in enumerate(steps)
                for status in (StepStatus.STARTED, StepStatus.COMPLETED)
            ]
            await store.create("parent", "Big", "fp", {}, history)
            for step in steps[: args.children]:
                rows = [
                    entry(i, f"S{i}", status, 1.0 + i)
                    for i in range(args.child_entries // 2)
                    for status in (StepStatus.STARTED, StepStatus.COMPLETED)
                ]
                await store.create(f"parent/{step}", "Child", "fp", {"n": 1}, rows)
            record = await store.load("parent")
            print(
                f"steps={args.steps} ({len(history)} entries) children={args.children} "
                f"child_entries={args.child_entries}"
            )
            for label, counting in (("one by one", OneByOne(store)), ("batched", Batched(store))):
                print(f"  {label}: {await measure(counting, record, args.rounds, args.children)}")


if __name__ == "__main__":
    asyncio.run(main())
