"""What ``saga_family`` (``show``, the console) costs for a saga with many step
names: how many ``load`` and ``lease_state`` calls it makes, and how long it
takes, on SQLite.

    PYTHONPATH=. python benchmarks/family_lookups.py [--steps 500] [--children 100]
        [--child-entries 2000]

The parent journals one act per step name; ``--children`` of those steps
have a child saga (``<parent>/<step>``) with ``--child-entries`` entries.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from fallback_saga import JournalEntry, SQLiteSagaStore, StepStatus
from fallback_saga.subsaga import saga_family


class Counting:
    """The store, counting the calls ``saga_family`` makes."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self.store = store
        self.calls: dict[str, int] = {"load": 0, "lease_state": 0}

    async def load(self, saga_id: str) -> Any:
        self.calls["load"] += 1
        return await self.store.load(saga_id)

    async def lease_state(self, saga_id: str) -> Any:
        self.calls["lease_state"] += 1
        return await self.store.lease_state(saga_id)


def entry(position: int, step: str, status: StepStatus, at: float) -> JournalEntry:
    return JournalEntry(position, step, "primary", "act", status, 1, None, at)


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
            counting = Counting(store)
            best = float("inf")
            for _ in range(args.rounds):
                counting.calls = dict.fromkeys(counting.calls, 0)
                started = time.perf_counter()
                _, children = await saga_family(counting, record)
                best = min(best, time.perf_counter() - started)
            assert len(children) == args.children, len(children)
            print(
                f"steps={args.steps} children={args.children} "
                f"child_entries={args.child_entries}: loads={counting.calls['load']} "
                f"lease_state={counting.calls['lease_state']} "
                f"best of {args.rounds}={best * 1000:.1f} ms"
            )


if __name__ == "__main__":
    asyncio.run(main())
