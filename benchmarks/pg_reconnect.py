"""How soon a ``PostgresSagaStore`` that saw the server go down works again
once it is back (the same store object, its own pool).

Starts a throwaway PostgreSQL cluster (``tests/pg_cluster.py``), opens a
store, creates a saga, then for each outage length: stops the server, has
the store try a ``load`` every ``--every`` seconds while it is down (each
fails: a service that keeps working through the outage), starts the server
again, and from the moment it accepts connections calls ``load`` until one
succeeds: the time to that success is what is reported, per outage length,
over ``--rounds`` rounds (median and max).

Run: ``python benchmarks/pg_reconnect.py [--outages 3,10,20] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # pg_cluster

from fallback_saga.errors import SagaStoreError  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402


async def one_outage(cluster: object, store: PostgresSagaStore, outage: float,
                     every: float) -> float:
    await asyncio.to_thread(cluster.stop)  # type: ignore[attr-defined]
    down_until = time.monotonic() + outage
    while time.monotonic() < down_until:
        with contextlib.suppress(SagaStoreError):
            await store.load("s-1")
        await asyncio.sleep(every)
    await asyncio.to_thread(cluster.start)  # type: ignore[attr-defined]
    back = time.monotonic()  # the server accepts connections from here
    while True:
        try:
            await store.load("s-1")
        except SagaStoreError:
            await asyncio.sleep(0.01)
            continue
        return time.monotonic() - back


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outages", default="3,10,20")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    from pg_cluster import PostgresCluster

    cluster = PostgresCluster.start_new()
    try:
        store = PostgresSagaStore(cluster.conninfo, schema="reconnect", connect_timeout=2.0)
        await store.open()
        await store.create("s-1", "S", "fp", {}, [])
        print(f"python {sys.version.split()[0]}, pool min_size={store.min_size} "
              f"max_size={store.max_size}, connect_timeout={store.connect_timeout:g}s, "
              f"a load every {args.every:g}s while down")
        for outage in (float(x) for x in args.outages.split(",")):
            took = [await one_outage(cluster, store, outage, args.every)
                    for _ in range(args.rounds)]
            print(f"outage {outage:5.1f}s: first successful load {statistics.median(took):6.3f}s "
                  f"after the server was back (median of {args.rounds}; max {max(took):.3f}s)")
        await store.close()
    finally:
        cluster.remove()


if __name__ == "__main__":
    asyncio.run(main())
