"""What the listing indexes (SQLite schema version 5, PostgreSQL 8) cost the
journal writes: durable 3-step sagas per second, two trees side by side.

Each round runs, for each tree in turn (the order rotating), one batch of
``--sagas`` ``Plain3`` sagas in a child process that imports that tree's
fallback_saga, 100 in flight and then one at a time (a tenth as many); the
median of the rounds is printed per tree and configuration, with the CPU
time the child process spent per saga (its writer thread included: less
moved by other jobs on the machine than the wall time). SQLite:
``durable.py``'s set-up (a fresh file, ``synchronous="full"``, or
``--synchronous normal``: no fsync per commit, less noise from the disk). With
``--dsn``: a ``PostgresSagaStore`` on a fresh schema of that server (each
dropped after).

Run: ``python benchmarks/listing_indexes_cost.py --tree before=/path/a
--tree after=/path/b [--sagas N] [--rounds R] [--dsn CONNINFO]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, json, os, sys, tempfile, time
sys.path.insert(0, {here!r})
import durable

async def main(n, in_flight, dsn, synchronous):
    if dsn:
        return await on_postgres(n, in_flight, dsn)
    path = os.path.join(tempfile.mkdtemp(dir={here!r}), "b.db")
    session = await durable.open_session(
        durable.Config("x", durable.OURS, synchronous, in_flight), path)
    await durable.drive(session.run_one, 10, in_flight)  # warm, untimed
    started, cpu = time.perf_counter(), time.process_time()
    await durable.drive(session.run_one, n, in_flight)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    await session.close()
    done = durable.count_completed(path, session.completed_sql)
    durable.remove_db(path)
    os.rmdir(os.path.dirname(path))
    assert done == n + 10, done
    return n / took, cpu / n * 1e6

async def on_postgres(n, in_flight, dsn):
    import uuid
    import fs_sagas
    import psycopg
    from fallback_saga.store.postgres import PostgresSagaStore
    schema = "c_" + uuid.uuid4().hex[:12]
    async with PostgresSagaStore(dsn, schema=schema) as store:
        await store.open()
        saga = fs_sagas.Plain3(store=store)
        async def run_one():
            return await saga.run(fs_sagas.Ctx(order_id="o-1"))
        await durable.drive(run_one, 10, in_flight)  # warm, untimed
        started, cpu = time.perf_counter(), time.process_time()
        await durable.drive(run_one, n, in_flight)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
    with psycopg.connect(dsn, autocommit=True) as conn:
        (done,) = conn.execute(
            f'SELECT count(*) FROM "{{schema}}".fallback_saga_sagas'
            " WHERE status = 'completed'").fetchone()
        conn.execute(f'DROP SCHEMA "{{schema}}" CASCADE')
    assert done == n + 10, done
    return n / took, cpu / n * 1e6

import fallback_saga
rates = asyncio.run(main({n}, {in_flight}, {dsn!r}, {synchronous!r}))
print(json.dumps([fallback_saga.__file__, rates]))
"""


def one_batch(
    tree: str, n: int, in_flight: int, dsn: str | None, synchronous: str
) -> tuple[float, float]:
    code = CHILD.format(here=str(HERE), n=n, in_flight=in_flight, dsn=dsn,
                        synchronous=synchronous)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": tree},
    )
    where, (rate, cpu) = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(where).is_relative_to(tree), where
    return float(rate), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--sagas", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dsn", help="PostgreSQL instead of SQLite: a server's conninfo")
    parser.add_argument("--synchronous", default="full", help="SQLite: the store's (default full)")
    args = parser.parse_args()
    trees = [tuple(spec.split("=", 1)) for spec in args.tree]
    rates: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        order = trees[round_ % len(trees):] + trees[: round_ % len(trees)]
        for name, path in order:
            for in_flight, n in ((100, args.sagas), (1, args.sagas // 10)):
                rate, cpu = one_batch(path, n, in_flight, args.dsn, args.synchronous)
                rates.setdefault((name, in_flight), []).append(rate)
                cpus.setdefault((name, in_flight), []).append(cpu)
                print(f"round {round_ + 1} {name:8} {in_flight:3} in flight: {rate:8,.0f} sagas/s,"
                      f" {cpu:6.0f} us CPU a saga (this process)", flush=True)
    for (name, in_flight), values in sorted(rates.items(), key=lambda item: -item[0][1]):
        print(f"median {name:8} {in_flight:3} in flight: {statistics.median(values):8,.0f}"
              f" sagas/s, {statistics.median(cpus[name, in_flight]):6.0f} us CPU a saga"
              f"  ({', '.join(f'{v:,.0f}' for v in values)})")


if __name__ == "__main__":
    main()
