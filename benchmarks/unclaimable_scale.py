"""What a ``recover`` pass pays, per claim, to report the rows its claim
cannot lease (PostgreSQL's ``unclaimable`` query, run by the claim of each
``recover`` pass: ``store/_skipped_rows``), at a backlog of interrupted sagas.

Fills a store with ``--sagas`` interrupted sagas (RUNNING, a day old, none
of them corrupt: the normal case), then:

* ``EXPLAIN (ANALYZE, BUFFERS)`` of the ``unclaimable`` statement as a claim
  short of its limit sends it (every saga in flight), and as a claim that
  took its limit sends it (``unclaimable_met``: up to the last saga taken),
  where the store has it;
* ``--rounds`` claims of ``--limit`` sagas as a ``recover`` pass makes them
  (a skipped-rows sink set), and as a worker's poll makes them (none set:
  the claim statement alone), medians — each claim's sagas then finished,
  untimed, as a pass's resumes finish them.

Run: ``PYTHONPATH=. python benchmarks/unclaimable_scale.py --sagas 1000000``
(a throwaway cluster from ``tests/pg_cluster.py``). ``PYTHONPATH`` at an
older checkout measures its claim the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # pg_cluster

def fill(conninfo: str, schema: str, sagas: int) -> None:
    import psycopg

    table = f'"{schema}".fallback_saga_sagas'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {table} (saga_id, saga_name, fingerprint, status, context,"
            f" created_at, updated_at, touched_at) SELECT 'i' || n, 'OrderSaga', 'fp',"
            f" 'running', '{{}}', now() - interval '1 day' + make_interval(secs => n / 1000.0),"
            f" now() - interval '1 day' + make_interval(secs => n / 1000.0),"
            f" now() - interval '1 day' + make_interval(secs => n / 1000.0)"
            f" FROM generate_series(1, %s) AS n",
            (sagas,),
        )
        conn.execute(f"VACUUM ANALYZE {table}")


def explain(conninfo: str, schema: str, statement: str, values: tuple[object, ...]) -> str:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, values).fetchall()
    return "\n".join(f"    {line}" for (line,) in rows)


async def _open(conninfo: str, schema: str) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        await store.open()


async def time_claims(conninfo: str, schema: str, rounds: int, limit: int,
                      collect: bool) -> list[float]:
    import psycopg

    from fallback_saga.store._skipped_rows import collecting
    from fallback_saga.store.postgres import PostgresSagaStore

    took: list[float] = []
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store, \
            await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as raw:
        await store.open()
        for n in range(rounds + 2):
            started = time.perf_counter()
            if collect:
                with collecting():
                    leases = await store.claim(owner="bench", lease_seconds=60,
                                               older_than=3600, limit=limit, deferred=True)
            else:
                leases = await store.claim(owner="bench", lease_seconds=60,
                                           older_than=3600, limit=limit, deferred=True)
            if n >= 2:  # two to warm up
                took.append(time.perf_counter() - started)
            assert len(leases) == limit, len(leases)
            await raw.execute(
                f'UPDATE "{schema}".fallback_saga_sagas SET status = \'completed\','
                f" lease_owner = NULL WHERE saga_id = ANY(%s)",
                ([lease.saga_id for lease in leases],),
            )
    return took


def ms(took: list[float]) -> str:
    return f"{statistics.median(took) * 1e3:8.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()

    from pg_cluster import PostgresCluster

    from fallback_saga.store._postgres_schema import _Names
    from fallback_saga.store._postgres_sql import _Statements

    with PostgresCluster.start_new() as cluster:
        conninfo = cluster.conninfo
        schema = f"b_{uuid.uuid4().hex[:12]}"
        asyncio.run(_open(conninfo, schema))
        started = time.perf_counter()
        fill(conninfo, schema, args.sagas)
        print(f"{args.sagas:,} sagas in flight, filled in {time.perf_counter() - started:.1f} s;"
              f" claims of {args.limit}, {args.rounds} rounds each, medians")
        sql = _Statements(_Names(schema))
        # older_than, ahead, ahead, deferred (a recover pass's).
        due = (3600.0, 3600.0, 3600.0, True)
        print("unclaimable, every saga in flight (a claim short of its limit):")
        print(explain(conninfo, schema, sql.unclaimable, (*due, args.limit)))
        if hasattr(sql, "unclaimable_met"):
            print(f"unclaimable_met, up to the {args.limit}th oldest (a claim that took"
                  f" its limit):")
            print(explain(conninfo, schema, sql.unclaimable_met,
                          (*due, f"i{args.limit}", args.limit)))
        for collect in (True, False):
            took = asyncio.run(time_claims(conninfo, schema, args.rounds, args.limit, collect))
            who = "recover pass (unclaimable too)" if collect else "worker poll (claim only)"
            print(f"  claim, {who:<32} {ms(took)}")

if __name__ == "__main__":
    main()
