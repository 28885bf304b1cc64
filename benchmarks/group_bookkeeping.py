"""The bookkeeping of very large ``Parallel`` groups, in the tree this file is in.

    python benchmarks/group_bookkeeping.py 8000 50000

For each n (members of one group), the best of three runs of:

* yielding the group's n results through ``async for`` over a
  ``saga.transaction`` (timed after the group ran: only the hand-out);
* ``resume_point`` over a journal whose n members were cancelled in flight
  and then started again (each new start takes its member off the stack).

Both are linear in n; each was quadratic once (a list's ``pop(0)``, a list's
``remove``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
import time
import types
from typing import Any

# The working tree's package, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fallback_saga as lib
from fallback_saga.resumption import resume_point
from fallback_saga.status import SagaStatus, StepStatus
from fallback_saga.store.base import JournalEntry, SagaRecord


@dataclasses.dataclass
class GroupCtx(lib.SagaContext):
    done: int = 0


class Member:
    async def act(self, context: Any) -> str:
        return "ok"

    async def compensate(self, context: Any) -> None:
        pass


async def yielding(n: int) -> float:
    """Seconds to hand out a group's n results, one ``async for`` turn each."""
    members = [type(f"M{i}", (Member,), {}) for i in range(n)]
    cls = types.new_class(
        "Group", (lib.Saga[GroupCtx],), {},
        lambda namespace: namespace.update(steps=[lib.Parallel(*members)]),
    )
    saga = cls(store=lib.MemorySagaStore())
    gc.collect()
    async with saga.transaction(GroupCtx(), saga_id="s") as tx:
        results = tx.__aiter__()
        await results.__anext__()  # runs the whole group, yields its first result
        started = time.perf_counter()
        count = 1
        async for _ in results:
            count += 1
        spent = time.perf_counter() - started
    assert count == n
    return spent


def resuming(n: int) -> float:
    """Seconds ``resume_point`` takes over 3n journal rows of one group."""
    history = [
        JournalEntry(position, f"M{position}", "primary", "act", status, attempt, None, 1.0)
        for status, attempt in (
            (StepStatus.STARTED, 1), (StepStatus.CANCELLED, 1), (StepStatus.STARTED, 2)
        )
        for position in range(n)
    ]
    record = SagaRecord("s", "Group", "fp", SagaStatus.RUNNING, {}, history)
    gc.collect()
    started = time.perf_counter()
    point = resume_point(record, [range(n)])
    spent = time.perf_counter() - started
    assert point.stack == ()
    assert len(point.open_calls) == n
    return spent


def main() -> None:
    sizes = [int(size) for size in sys.argv[1:]] or [8000, 50000]
    print(f"Python {sys.version.split()[0]}, {lib.__file__}: best of 3, ms")
    for n in sizes:
        handed_out = min(asyncio.run(yielding(n)) for _ in range(3))
        read = min(resuming(n) for _ in range(3))
        print(f"n={n:>6}: async for over the group's results {handed_out * 1e3:8.1f}; "
              f"resume_point {read * 1e3:8.1f}")


if __name__ == "__main__":
    main()
