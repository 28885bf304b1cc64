"""PostgreSQL group commit, side by side: how the burst of journal writes is
shared out (issue #12, "PostgreSQL third pass" in benchmarks/README.md).

Starts a throwaway cluster (``tests/pg_cluster.py``) and runs plain3 sagas
with N in flight on two stores in one process, interleaved rounds (rotating
start), medians:

* **now**: ``PostgresSagaStore`` as it is (a burst shared out across three
  groups on their way: ``_group_commit.GroupCommit._share``);
* **before**: the same store with the group commit of before 2026-12-03
  (two slots, a group gathers for up to eight loop trips and takes the
  whole queue, up to ``MAX_GROUP``), emulated on the same build.

Each store has its own schema, first filled with ``--fill`` sagas and
``ANALYZE``d so every statement is prepared, as in a service that has run a
while. Reported per N: sagas/s, the client's CPU per saga
(``time.process_time``) and the server's (every process of the cluster's OS
user, from ``/proc``; Linux), and how many CPUs each side kept busy.

``--sequential`` instead breaks one saga at a time down against the floor of
four single-row ``INSERT`` commits: the store's API alone (a create and three
appends, as plain3 makes them) and the whole saga.

    python benchmarks/postgres_groups.py                      # 10, 100, 1,000 in flight
    python benchmarks/postgres_groups.py --in-flight 100 --rounds 9
    python benchmarks/postgres_groups.py --sequential
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # fs_sagas
sys.path.insert(0, str(HERE.parent.parent / "tests"))  # pg_cluster
sys.path.insert(0, str(HERE.parent.parent))  # this tree's fallback_saga


def server_cpu_seconds(uid: int) -> float:
    """CPU time (user + system) of every process of OS user ``uid``."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def timed(work: Callable[[], Awaitable[int]], uid: int) -> tuple[int, float, float, float]:
    """Run ``work`` (which returns how many iterations it made): that count,
    the wall seconds, and the client's and the server's CPU seconds per
    iteration in microseconds."""
    gc.collect()
    cpu, served, start = time.process_time(), server_cpu_seconds(uid), time.perf_counter()
    done = await work()
    elapsed = time.perf_counter() - start
    return (done, elapsed, (time.process_time() - cpu) / done * 1e6,
            (server_cpu_seconds(uid) - served) / done * 1e6)


Sample = tuple[int, float, float, float]  # timed()'s


async def interleaved(
    works: dict[str, Callable[[], Awaitable[int]]], rounds: int, uid: int
) -> dict[str, list[Sample]]:
    """Each of ``works`` once per round, the one that starts rotating: its
    ``timed`` samples, by name."""
    names = list(works)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await timed(works[name], uid))
    return samples


def as_before(store: Any) -> None:
    """The group commit of before 2026-12-03, on this build's store."""
    from fallback_saga.store import _group_commit

    journal = store._journal
    journal._slots = 2
    journal.gather_trips = 8
    journal._share = lambda: _group_commit.MAX_GROUP


async def _sagas(saga: Any, count_in_flight: int, seconds: float) -> int:
    import fs_sagas

    async def loop(deadline: float) -> int:
        done = 0
        while True:
            await saga.run(fs_sagas.Ctx(order_id="o-1"))
            done += 1
            if time.perf_counter() >= deadline:
                return done

    deadline = time.perf_counter() + seconds
    return sum(await asyncio.gather(*(loop(deadline) for _ in range(count_in_flight))))


async def in_flight(cluster: Any, counts: list[int], rounds: int, fill: int) -> None:
    import fs_sagas

    from fallback_saga.store.postgres import PostgresSagaStore

    uid = cluster.run_as.pw_uid if cluster.run_as else os.getuid()
    stores = {name: PostgresSagaStore(cluster.conninfo, schema=f"groups_{name}")
              for name in ("before", "now")}
    try:
        sagas = {}
        for name, store in stores.items():
            await store.open()
            if name == "before":
                as_before(store)
            sagas[name] = fs_sagas.Plain3(store=store)
            while True:  # filled, then analyzed: the statements get prepared
                async with store.pool.connection() as conn:  # type: ignore[union-attr]
                    rows = await (await conn.execute(
                        f"SELECT count(*) FROM groups_{name}.fallback_saga_sagas")).fetchone()
                if rows[0] >= fill:
                    break
                await _sagas(sagas[name], 100, 1.0)
            async with store.pool.connection() as conn:  # type: ignore[union-attr]
                await conn.execute(f"ANALYZE groups_{name}.fallback_saga_sagas")
                await conn.execute(f"ANALYZE groups_{name}.fallback_saga_steps")
            store._size_check_at = 0.0
            store._check_sizes_soon()
        await asyncio.sleep(0.5)
        names = list(stores)
        for n in counts:
            for name in names:  # warm-up
                await _sagas(sagas[name], n, 0.5)
            samples = await interleaved(
                {name: functools.partial(_sagas, sagas[name], n, 1.5) for name in names},
                rounds, uid)
            print(f"{n} in flight ({rounds} rounds of 1.5 s):")
            rates = {name: [done / elapsed for done, elapsed, _, _ in samples[name]]
                     for name in names}
            for name in names:
                r = statistics.median(rates[name])
                c, s = (statistics.median(sample[i] for sample in samples[name]) for i in (2, 3))
                print(f"  {name:<7} {r:>8,.0f} sagas/s"
                      f"   client {c:>5.0f} µs/saga ({r * c / 1e6:.2f} CPU)"
                      f"   server {s:>5.0f} µs/saga ({r * s / 1e6:.2f} CPU)")
            now, before = rates["now"], rates["before"]
            ratios = [a / b for a, b in zip(now, before, strict=True)]
            print(f"  now / before: x{statistics.median(now) / statistics.median(before):.2f}"
                  f" (median of per-round ratios x{statistics.median(ratios):.2f})")
    finally:
        for store in stores.values():
            await store.close()


async def for_a_second(run: Callable[[], Awaitable[None]]) -> int:
    """``run`` back to back for about a second: how many times it ran."""
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        await run()
        done += 1
    return done


async def sequential(cluster: Any, rounds: int) -> None:
    import fs_sagas
    import psycopg

    from fallback_saga import JournalEntry, SagaStatus, StepStatus
    from fallback_saga.store.postgres import PostgresSagaStore

    uid = cluster.run_as.pw_uid if cluster.run_as else os.getuid()
    conn = await psycopg.AsyncConnection.connect(cluster.conninfo, autocommit=True)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS floor_commits (id bigserial PRIMARY KEY, v text)")
    saga_store = PostgresSagaStore(cluster.conninfo, schema="seq_saga", min_size=1, max_size=2)
    api_store = PostgresSagaStore(cluster.conninfo, schema="seq_api", min_size=1, max_size=2)
    await saga_store.open()
    await api_store.open()
    saga = fs_sagas.Plain3(store=saga_store)
    definition = fs_sagas.Plain3.definition
    names = [item.name for item in definition.items]
    made = 0

    async def floor() -> None:
        for step in ("create", "a", "b", "c"):
            await conn.execute("INSERT INTO floor_commits (v) VALUES (%s)", (step,))

    async def store_api() -> None:  # the writes plain3 makes, without the executor
        nonlocal made
        made += 1
        saga_id, now = f"api-{made}", time.time()
        context: dict[str, Any] = {"order_id": "o-1", "a": None, "b": None, "c": None}
        await api_store.create(saga_id, definition.saga_name, definition.fingerprint, context,
                               [JournalEntry(0, names[0], "primary", "act", StepStatus.STARTED,
                                             1, None, now)])
        for position, field in enumerate("abc"):
            context = {**context, field: field}
            entries = [JournalEntry(position, names[position], "primary", "act",
                                    StepStatus.COMPLETED, 1, None, now)]
            if position < 2:
                entries.append(JournalEntry(position + 1, names[position + 1], "primary", "act",
                                            StepStatus.STARTED, 1, None, now))
            await api_store.append(saga_id, entries, context=context,
                                   status=SagaStatus.COMPLETED if position == 2 else None)

    async def whole_saga() -> None:
        await saga.run(fs_sagas.Ctx(order_id="o-1"))

    cases = {"floor (4 INSERT commits)": floor, "store API (4 writes)": store_api,
             "whole saga": whole_saga}
    try:
        for run in cases.values():
            for _ in range(10):
                await run()
        samples = await interleaved(
            {name: functools.partial(for_a_second, run) for name, run in cases.items()},
            rounds, uid)
        print(f"one at a time ({rounds} rounds of 1 s), per iteration:")
        for name, taken in samples.items():
            w = statistics.median(elapsed / done * 1e6 for done, elapsed, _, _ in taken)
            c, s = (statistics.median(sample[i] for sample in taken) for i in (2, 3))
            print(f"  {name:<26} wall {w:>6.0f} µs   client CPU {c:>5.0f} µs"
                  f"   server CPU {s:>5.0f} µs")
    finally:
        await conn.close()
        await saga_store.close()
        await api_store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--fill", type=int, default=12_000,
                        help="sagas in each store's tables before timing (then ANALYZE)")
    parser.add_argument("--sequential", action="store_true")
    args = parser.parse_args()
    from pg_cluster import PostgresCluster

    with PostgresCluster.start_new() as cluster:
        if args.sequential:
            asyncio.run(sequential(cluster, args.rounds))
        else:
            asyncio.run(in_flight(cluster, args.in_flight, args.rounds, args.fill))


if __name__ == "__main__":
    main()
