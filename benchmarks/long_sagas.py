"""Long sagas: how the work per step grows as a saga gets longer.

    python benchmarks/long_sagas.py            # n = 250 … 2,000; about a minute
    python benchmarks/long_sagas.py --quick    # n = 50 … 200; seconds, CI smoke run

Each section doubles n and prints what one unit of work (a step, a group
member, a resumed saga) costs at that n. A cost that stays flat is linear in
the saga's length; one that doubles with n is quadratic over the saga.
Counted where counting is possible (entries and context bytes handed to the
store, loads made), timed only where it is not (µs are this machine's, under
whatever else runs on it).

* **append** — a saga of n plain steps on ``SQLiteSagaStore`` (writer
  thread): what each journal write carries. ``const``: every step changes a
  counter; ``grow``: every step also appends one order line to a list in the
  context (a batch saga recording its progress in the context).
* **group** — one ``Parallel`` group of n members, in memory; the members
  return a response and write nothing. ``empty``: a context of one field;
  ``lines``: a context holding n order lines (the batch the group works on).
* **family** — ``show`` and the console look for a saga's children
  (``SubSaga``) by looking ``<id>/<step>`` up for every step name the journal
  holds (``lease_state``, one short row; ``load`` on stores without it): the
  loads and lease reads made for a saga of n steps (``family_lookups.py``:
  their time, with children of long journals).
* **resume** — a saga interrupted after n completed steps, resumed from a
  SQLite file: entries read, acts run again, time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import types
from typing import Any

# The working tree's package, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fallback_saga import (
    MemorySagaStore,
    Parallel,
    Saga,
    SagaContext,
    SQLiteSagaStore,
)
from fallback_saga.subsaga import saga_family

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class BatchCtx(SagaContext):
    done: int = 0
    lines: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class Line:
    """A step per order line; ``grow`` on the class: it records the line in the context."""

    grow = False

    async def act(self, context: BatchCtx) -> dict[str, int]:
        context.done += 1
        if self.grow:
            context.lines.append({"line": context.done, "sku": "ABC-123", "qty": 1})
        return {"line": context.done}

    async def compensate(self, context: BatchCtx) -> None:
        context.done -= 1


class Member:
    async def act(self, context: BatchCtx) -> str:
        return "charged"

    async def compensate(self, context: BatchCtx) -> None:
        pass


def saga_of(name: str, steps: list[Any]) -> type[Saga[BatchCtx]]:
    return types.new_class(
        name, (Saga[BatchCtx],), {}, lambda namespace: namespace.update(steps=steps)
    )


def lines(n: int) -> list[type[Line]]:
    return [type(f"Line{i}", (Line,), {}) for i in range(n)]


async def append_section(sizes: list[int], tmp: str) -> None:
    print("append: per journal write, SQLite writer thread")
    print(f"{'n':>6} {'ctx':>5} {'writes':>7} {'entries/write':>13} "
          f"{'ctx bytes, last write':>21} {'ctx MB, all writes':>18}")
    for grow in (False, True):
        for n in sizes:
            steps = lines(n)
            for step in steps:
                step.grow = grow
            store = SQLiteSagaStore(os.path.join(tmp, f"append-{grow}-{n}.db"),
                                    synchronous="normal")
            sent: list[tuple[int, int]] = []
            submit = store.submit_append

            def counting(saga_id: str, entries: Any, status: Any, context: Any, *rest: Any,
                         submit: Any = submit, sent: list[tuple[int, int]] = sent) -> Any:
                size = 0 if context is None else len(json.dumps(context))
                sent.append((len(entries), size))
                return submit(saga_id, entries, status, context, *rest)

            store.submit_append = counting  # type: ignore[method-assign,assignment]
            try:
                await saga_of("Batch", list(steps))(store=store).run(BatchCtx(), saga_id="s")
            finally:
                await store.close()
            entries = sum(count for count, _ in sent) / len(sent)
            print(f"{n:>6} {'grow' if grow else 'const':>5} {len(sent):>7} {entries:>13.2f} "
                  f"{sent[-1][1]:>21,} {sum(size for _, size in sent) / 1e6:>18.2f}")


async def group_section(sizes: list[int]) -> None:
    print("\ngroup: one Parallel group of n members, in memory")
    print(f"{'n':>6} {'context':>8} {'us/member':>10}")
    for filled in (False, True):
        for n in sizes:
            members = [type(f"M{i}", (Member,), {}) for i in range(n)]
            saga = saga_of("Group", [Parallel(*members)])(store=MemorySagaStore())
            context = BatchCtx(lines=[
                {"line": i, "sku": "ABC-123", "qty": 1} for i in range(n if filled else 0)
            ])
            started = time.perf_counter()
            await saga.run(context, saga_id="s")
            spent = time.perf_counter() - started
            print(f"{n:>6} {'lines' if filled else 'empty':>8} {spent * 1e6 / n:>10.0f}")


async def family_section(sizes: list[int], tmp: str) -> None:
    print("\nfamily: look-ups show/the console make to find a saga's children")
    print(f"{'n':>6} {'loads':>7} {'leases':>7}")
    for n in sizes:
        path = os.path.join(tmp, f"family-{n}.db")
        async with SQLiteSagaStore(path, synchronous="normal") as store:
            await saga_of("Batch", list(lines(n)))(store=store).run(BatchCtx(), saga_id="s")
            record = await store.load("s")
            loads = leases = 0
            load, lease_state = store.load, store.lease_state

            async def counting(saga_id: str, load: Any = load) -> Any:
                nonlocal loads
                loads += 1
                return await load(saga_id)

            async def counting_leases(saga_id: str, lease_state: Any = lease_state) -> Any:
                nonlocal leases
                leases += 1
                return await lease_state(saga_id)

            store.load = counting  # type: ignore[method-assign]
            store.lease_state = counting_leases  # type: ignore[method-assign]
            await saga_family(store, record)
        print(f"{n:>6} {loads:>7} {leases:>7}")


async def resume_section(sizes: list[int], tmp: str) -> None:
    print("\nresume: a saga interrupted after n completed steps, SQLite writer thread")
    print(f"{'n':>6} {'entries read':>12} {'acts run':>9} {'ms':>7}")
    for n in sizes:
        steps = lines(n + 1)
        cls = saga_of("Batch", list(steps))
        # The journal of a run that died in the last step's act: its STARTED
        # row the last, as a crash leaves it (made by a run in memory).
        stopped = asyncio.Event()

        class Stuck(Line):
            async def act(self, context: BatchCtx, stopped: asyncio.Event = stopped
                          ) -> dict[str, int]:
                stopped.set()
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

        memory = MemorySagaStore()
        first = saga_of("Batch", [*steps[:-1], type(steps[-1].__name__, (Stuck,), {})])
        running = asyncio.create_task(first(store=memory).run(BatchCtx(), saga_id="s"))
        await stopped.wait()
        record = await memory.load("s")
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        acts = 0

        class Counted(Line):
            async def act(self, context: BatchCtx) -> dict[str, int]:
                nonlocal acts
                acts += 1
                return await super().act(context)

        async with SQLiteSagaStore(os.path.join(tmp, f"resume-{n}.db"),
                                   synchronous="normal") as store:
            await store.create("s", record.saga_name, record.fingerprint, record.context,
                               record.history)
            saga = cls(store=store, step_factory=lambda step: Counted())
            started = time.perf_counter()
            await saga.resume("s")
            spent = time.perf_counter() - started
        print(f"{n:>6} {len(record.history):>12} {acts:>9} {spent * 1e3:>7.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n: a smoke run")
    args = parser.parse_args()
    sizes = [50, 100, 200] if args.quick else [250, 500, 1000, 2000]
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        await append_section(sizes, tmp)
        await group_section(sizes)
        await family_section(sizes, tmp)
        await resume_section(sizes, tmp)


if __name__ == "__main__":
    asyncio.run(main())
