"""``count_sagas`` at a backlog of sagas in flight: the whole count (the
console's unfiltered page, ``/metrics``), one by name bounded by
``at_most`` (the console's filtered page), and one of a time window.

Since the counts agree with the listing (S12: a saga in flight the claim
skips as corrupt is not counted), the whole count reads each saga in
flight's row for the columns the claim judges it by; this measures what
that costs. Rows only (no journal: the counts read none), ``--finished``
COMPLETED and ``--in-flight`` RUNNING sagas over a year, 10 names.

Run once per tree: ``PYTHONPATH=/path/to/tree python benchmarks/count_in_flight.py
[--store sqlite|postgres] [--finished N] [--in-flight N] [--repeat N]``
(PostgreSQL: a throwaway cluster, ``tests/pg_cluster.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # pg_cluster

YEAR = 365 * 86400.0
NOW = 1_780_000_000.0


def fill_sqlite(path: str, finished: int, in_flight: int) -> None:
    from fallback_saga.store.sqlite import SQLiteSagaStore

    async def make() -> None:
        async with SQLiteSagaStore(path) as store:
            await store.list_sagas(limit=1)

    asyncio.run(make())
    total = finished + in_flight
    conn = sqlite3.connect(path)
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at) SELECT printf('s%08d', i), 'Saga' || (i % 10), 'fp',"
        " CASE WHEN i % ? = 0 THEN 'running' ELSE 'completed' END, '{}', 1,"
        " ? + i * ?, ? + i * ? FROM n",
        (total, max(total // max(in_flight, 1), 1), NOW - YEAR, YEAR / total,
         NOW - YEAR, YEAR / total),
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(conninfo: str, finished: int, in_flight: int) -> None:
    import psycopg

    from fallback_saga.store.postgres import PostgresSagaStore

    async def make() -> None:
        async with PostgresSagaStore(conninfo, min_size=1) as store:
            await store.open()

    asyncio.run(make())
    total = finished + in_flight
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context,"
            " version, journal_length, created_at, updated_at, touched_at)"
            " SELECT 's' || lpad(i::text, 8, '0'), 'Saga' || (i %% 10), 'fp',"
            " CASE WHEN i %% %s = 0 THEN 'running' ELSE 'completed' END, '{}', 1, 0,"
            " to_timestamp(%s + i * %s), to_timestamp(%s + i * %s), to_timestamp(%s + i * %s)"
            " FROM generate_series(1, %s) AS i",
            (max(total // max(in_flight, 1), 1), NOW - YEAR, YEAR / total, NOW - YEAR,
             YEAR / total, NOW - YEAR, YEAR / total, total),
        )
        conn.execute("VACUUM ANALYZE fallback_saga_sagas")


async def timed(store: Any, repeat: int) -> dict[str, float]:
    calls = {
        "whole": {},
        "by name, at_most=10000": {"saga_name": "Saga3", "at_most": 10_000},
        "last 30 days, at_most=10000": {"created_since": NOW - 30 * 86400, "at_most": 10_000},
        "last 30 days, exact": {"created_since": NOW - 30 * 86400},
    }
    found: dict[str, float] = {}
    for label, kwargs in calls.items():
        await store.count_sagas(**kwargs)  # warm
        took = []
        for _ in range(repeat):
            started = time.perf_counter()
            counted = await store.count_sagas(**kwargs)
            took.append(time.perf_counter() - started)
        found[label] = statistics.median(took)
        print(f"  {label:32} {found[label] * 1000:8.1f} ms  (sagas counted: "
              f"{sum(counted.values()):,}, unreadable: {getattr(counted, 'unreadable', '-')})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--finished", type=int, default=900_000)
    parser.add_argument("--in-flight", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", help="SQLite: a file filled before (kept)")
    args = parser.parse_args()
    import fallback_saga

    print(f"fallback_saga from {Path(fallback_saga.__file__).parent}")
    if args.store == "sqlite":
        from fallback_saga.store.sqlite import SQLiteSagaStore

        path = args.db or str(Path(tempfile.mkdtemp()) / "sagas.db")
        if not Path(path).exists():
            fill_sqlite(path, args.finished, args.in_flight)

        async def run() -> None:
            async with SQLiteSagaStore(path, read_only=True) as store:
                await timed(store, args.repeat)

        asyncio.run(run())
        return
    from pg_cluster import PostgresCluster

    from fallback_saga.store.postgres import PostgresSagaStore

    with PostgresCluster.start_new() as cluster:
        fill_postgres(cluster.conninfo, args.finished, args.in_flight)

        async def run_pg() -> None:
            async with PostgresSagaStore(cluster.conninfo, min_size=1) as store:
                await timed(store, args.repeat)

        asyncio.run(run_pg())


if __name__ == "__main__":
    main()
