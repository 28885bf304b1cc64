"""A recovery worker's claim on a store shared with another service: its cost,
and how much of what it takes the worker can resume.

Fills a store with ``--sagas`` interrupted sagas (RUNNING, a day old), a
share ``--foreign`` of them of another service's saga, plus ``--finished``
COMPLETED sagas of the worker's own name (a store that has run a while), then
times ``--rounds`` claims of ``--limit`` sagas (each claim's leases released,
untimed, before the next), three ways:

* ``any name`` — ``claim()`` as a worker made it before ``names``: it takes
  the oldest sagas, whoever's they are (the ``own`` column: the share of
  them the worker can resume; the others it skipped and deferred);
* ``names`` — ``claim(names=[own])``, as a worker makes it now;
* ``names, unguarded`` — the same filter written plainly (``saga_name IN``
  / ``saga_name = ANY``), which the planner may serve from the index by name
  (every saga of the name, finished ones included): why the store's claim
  keeps the planner off it.

``--layout interleaved``: the two services' sagas alternate in age;
``foreign-first``: every foreign saga is older than every own one (a
worker's filter then steps over all of them on each claim).

Run: ``python benchmarks/claim_by_name.py [--store sqlite|postgres] [--sagas N]
[--foreign F] [--finished M] [--rounds R] [--limit L] [--layout ...]``
(PostgreSQL: a throwaway cluster from ``tests/pg_cluster.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # pg_cluster

OWN, FOREIGN = "OrderSaga", "BillingSaga"


def names_of(count: int, foreign: float, layout: str) -> list[str]:
    """The saga name of each interrupted saga, oldest first."""
    foreign_count = round(count * foreign)
    if layout == "foreign-first":
        return [FOREIGN] * foreign_count + [OWN] * (count - foreign_count)
    step = count / foreign_count if foreign_count else count + 1
    marks = {int(n * step) for n in range(foreign_count)}
    return [FOREIGN if n in marks else OWN for n in range(count)]


def fill_sqlite(path: Path, names: list[str], finished: int) -> None:
    day_ago = time.time() - 86_400
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
            " created_at, updated_at) VALUES (?, ?, 'fp', 'running', '{}', 1, ?, ?)",
            ((f"i{n:06d}", name, day_ago + n / 1000, day_ago + n / 1000)
             for n, name in enumerate(names)),
        )
        conn.executemany(
            "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
            " created_at, updated_at) VALUES (?, ?, 'fp', 'completed', '{}', 1, ?, ?)",
            ((f"f{n:07d}", OWN, day_ago, day_ago) for n in range(finished)),
        )
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(conninfo: str, schema: str, names: list[str], finished: int) -> None:
    import psycopg

    table = f'"{schema}".fallback_saga_sagas'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {table} (saga_id, saga_name, fingerprint, status, context,"
                f" created_at, updated_at, touched_at) VALUES (%s, %s, 'fp', 'running', '{{}}',"
                f" now() - interval '1 day' + make_interval(secs => %s),"
                f" now() - interval '1 day' + make_interval(secs => %s),"
                f" now() - interval '1 day' + make_interval(secs => %s))",
                [(f"i{n:06d}", name, n, n, n) for n, name in enumerate(names)],
            )
        conn.execute(
            f"INSERT INTO {table} (saga_id, saga_name, fingerprint, status, context,"
            f" created_at, updated_at, touched_at) SELECT 'f' || n, %s, 'fp', 'completed',"
            f" '{{}}', now() - interval '1 day', now() - interval '1 day',"
            f" now() - interval '1 day' FROM generate_series(1, %s) AS n",
            (OWN, finished),
        )
        conn.execute(f"VACUUM ANALYZE {table}")


async def time_claims(
    store: Any, rounds: int, limit: int, **named: Any
) -> tuple[list[float], float]:
    """Seconds per claim, and the share of claimed sagas that are the worker's own."""
    took: list[float] = []
    own = total = 0
    for _ in range(rounds):
        started = time.perf_counter()
        leases = await store.claim(owner="bench", lease_seconds=60, older_than=3600,
                                   limit=limit, **named)
        took.append(time.perf_counter() - started)
        for lease in leases:
            total += 1
            own += (await store.load(lease.saga_id)).saga_name == OWN
            await store.release(lease)
    return took, own / total if total else 0.0


def report(label: str, took: list[float], own: float) -> None:
    took = sorted(took)
    p95 = took[int(len(took) * 0.95) - 1] if len(took) >= 20 else took[-1]
    print(f"  {label:<20} median {statistics.median(took) * 1e6:9.0f} µs   "
          f"p95 {p95 * 1e6:9.0f} µs   own sagas claimed {own:6.1%}")


async def run_sqlite(args: argparse.Namespace, names: list[str]) -> None:
    from fallback_saga import SQLiteSagaStore
    from fallback_saga.store import _sqlite_sql

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        async with SQLiteSagaStore(path):
            pass
        fill_sqlite(path, names, args.finished)
        async with SQLiteSagaStore(path) as store:
            await time_claims(store, 3, args.limit)  # warm up
            report("any name", *await time_claims(store, args.rounds, args.limit))
            report("names", *await time_claims(store, args.rounds, args.limit, names=[OWN]))
            guarded = _sqlite_sql._CLAIMABLE_OF_NAMES
            _sqlite_sql._CLAIMABLE_OF_NAMES = guarded.replace(  # type: ignore[misc]
                " INDEXED BY sagas_by_status", "")
            try:
                report("names, unguarded",
                       *await time_claims(store, args.rounds, args.limit, names=[OWN]))
            finally:
                _sqlite_sql._CLAIMABLE_OF_NAMES = guarded  # type: ignore[misc]


async def run_postgres(args: argparse.Namespace, names: list[str], conninfo: str) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    schema = f"b_{uuid.uuid4().hex[:12]}"
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        await store.open()
    fill_postgres(conninfo, schema, names, args.finished)
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        await store.open()
        await time_claims(store, 3, args.limit)  # warm up
        report("any name", *await time_claims(store, args.rounds, args.limit))
        report("names", *await time_claims(store, args.rounds, args.limit, names=[OWN]))
        sql = store._sql
        guarded = sql.claimable_named
        sql.claimable_named = guarded.replace("(saga_name || '') = ANY", "saga_name = ANY")
        try:
            report("names, unguarded",
                   *await time_claims(store, args.rounds, args.limit, names=[OWN]))
        finally:
            sql.claimable_named = guarded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--foreign", type=float, default=0.5)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--layout", choices=["interleaved", "foreign-first"],
                        default="interleaved")
    args = parser.parse_args()

    import fallback_saga

    print(f"fallback_saga from {Path(fallback_saga.__file__).parent}")
    print(f"{args.store}: {args.sagas} interrupted sagas ({args.foreign:.0%} foreign, "
          f"{args.layout}), {args.finished} finished; claims of {args.limit}, "
          f"{args.rounds} rounds")
    names = names_of(args.sagas, args.foreign, args.layout)
    if args.store == "sqlite":
        asyncio.run(run_sqlite(args, names))
        return
    from pg_cluster import PostgresCluster

    with PostgresCluster.start_new() as cluster:
        asyncio.run(run_postgres(args, names, cluster.conninfo))


if __name__ == "__main__":
    main()
