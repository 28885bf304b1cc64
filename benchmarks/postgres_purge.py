"""PostgreSQL's ``purge`` over a backlog: sagas (and history rows) deleted per second.

Starts a throwaway PostgreSQL cluster (``tests/pg_cluster.py``), and for each
round fills a fresh schema with ``--sagas`` finished sagas a day old (one in
ten with a child saga ``<id>/Pay``, so that families go over two
generations), ``--steps`` history rows each, then times one
``store.purge(older_than=3600)`` of all of them. With ``--statement-timeout``
the purging store's connections get that ``statement_timeout`` (as a managed
server's role would), and a purge the server stops is reported as such.

The fallback_saga measured is the one imported: run it once per tree to
compare (``PYTHONPATH=/path/to/tree python benchmarks/postgres_purge.py``);
it prints the tree's path first.

Run: ``python benchmarks/postgres_purge.py [--sagas N] [--steps K] [--rounds R]
[--statement-timeout MS]``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # pg_cluster


def fill(conninfo: str, schema: str, sagas: int, steps: int) -> None:
    import psycopg

    table, history = f'"{schema}".fallback_saga_sagas', f'"{schema}".fallback_saga_steps'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {table} (saga_id, saga_name, fingerprint, status, context,"
            f" created_at, updated_at) SELECT 's-' || n, 'S', 'fp', 'completed', '{{}}',"
            f" now() - interval '1 day', now() - interval '1 day'"
            f" FROM generate_series(1, %s) AS n",
            (sagas - sagas // 10,),
        )
        conn.execute(
            f"INSERT INTO {table} (saga_id, saga_name, fingerprint, status, context,"
            f" created_at, updated_at) SELECT 's-' || n || '/Pay', 'S', 'fp', 'completed',"
            f" '{{}}', now() - interval '1 day', now() - interval '1 day'"
            f" FROM generate_series(1, %s) AS n",
            (sagas // 10,),
        )
        conn.execute(
            f"INSERT INTO {history} (saga_id, seq, position, step, branch, action, status,"
            f" attempt, at) SELECT saga_id, n, 0, 'A', 'primary', 'act', 'completed', 1, 0"
            f" FROM {table}, generate_series(1, %s) AS n",
            (steps,),
        )
        conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(f"VACUUM ANALYZE {history}")


async def one_round(
    conninfo: str, sagas: int, steps: int, timeout_ms: int | None
) -> tuple[float, int, str]:
    import psycopg

    from fallback_saga.store.postgres import PostgresSagaStore

    schema = f"b_{uuid.uuid4().hex[:12]}"
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        await store.open()
    fill(conninfo, schema, sagas, steps)
    purging = conninfo
    if timeout_ms is not None:
        purging += f" options='-c statement_timeout={timeout_ms}'"
    outcome = "ok"
    count = 0
    async with PostgresSagaStore(purging, schema=schema, min_size=1) as store:
        await store.open()
        takes_statuses = "statuses" in inspect.signature(store.purge).parameters
        started = time.perf_counter()
        try:
            if takes_statuses:
                count = await store.purge(older_than=3600, statuses=["completed"])
            else:
                count = await store.purge(older_than=3600)
        except Exception as error:
            outcome = f"{type(error).__name__}: {str(error)[:90]}"
        took = time.perf_counter() - started
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return took, count, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statement-timeout", type=int, default=None, metavar="MS")
    args = parser.parse_args()

    from pg_cluster import PostgresCluster

    import fallback_saga

    print(f"fallback_saga from {Path(fallback_saga.__file__).parent}")
    times: list[float] = []
    with PostgresCluster.start_new() as cluster:
        for n in range(args.rounds):
            took, count, outcome = asyncio.run(
                one_round(cluster.conninfo, args.sagas, args.steps, args.statement_timeout)
            )
            rows = count * (1 + args.steps)
            print(
                f"round {n + 1}: {count} sagas ({rows} rows) in {took:.2f} s: "
                f"{count / took:,.0f} sagas/s, {rows / took:,.0f} rows/s [{outcome}]"
            )
            if outcome == "ok":
                times.append(took)
    if times:
        median = statistics.median(times)
        print(
            f"median: {median:.2f} s, {args.sagas / median:,.0f} sagas/s, "
            f"{args.sagas * (1 + args.steps) / median:,.0f} rows/s"
        )


if __name__ == "__main__":
    main()
