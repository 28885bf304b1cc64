"""The PostgreSQL case (issue 4, "Performance"): durable sagas on a real server.

Starts a throwaway PostgreSQL cluster (``tests/pg_cluster.py``: fsync on,
``synchronous_commit=on``, loopback TCP) and measures:

(a) **sequential** 3-step sagas per second (``plain3``: each saga awaited
    before the next starts) through ``PostgresSagaStore`` (default
    ``synchronous_commit="on"``) vs python-cqrs 5.3.0's
    ``SqlAlchemySagaStorage`` on ``postgresql+psycopg`` (psycopg 3, async),
    with the session factory python-cqrs's own SQLAlchemy benchmarks use and
    its tables created from its own models' metadata in a database of its
    own. One process, one event loop; each round runs one timed batch per
    library (about ``batch_s`` seconds of back-to-back sagas), the starting
    library alternating every round; the median over rounds is reported.
    Afterwards the completed sagas are counted in each database: every saga
    that was timed really reached the server.

    Two references run in the same rounds, so the ratio can be read against
    what is physically possible here: ``floor (4 commits)`` — four
    single-row autocommit INSERTs per iteration on one connection, the least
    any store pays that makes four writes durable, which S10 requires of a
    3-step saga (each step's intent before it runs, then the end) — and
    ``fallback_saga, synchronous_commit=off``, the store's explicit opt-in
    that lets a *database server* crash lose the last fraction of a second.

(b) **recovery throughput**: ``pool`` sagas are seeded as a crashed process
    leaves them (RUNNING, the last journal row a STARTED act of the first
    step), in a fresh PostgreSQL schema per run; then 1, 2 or 4 worker
    processes (this file run with ``--child``; each its own
    ``PostgresSagaStore`` and ``RecoveryWorker``, ``older_than=0``, small
    ``poll``) are started, connected, and told "go" at once; the time from
    "go" until no saga is left RUNNING is measured (the parent polls a count
    on the store's partial index). Runs are interleaved (1, 2, 4, then
    rotated) and the median per process count is reported, with the scaling
    factor vs 1 process. Note the machine's CPU count: the server and the
    workers share it.

(c) **sagas in flight in one process**: ``plain3`` sagas started by 1, 10
    and 100 concurrent loops on one ``PostgresSagaStore`` with its default
    pool (10 connections), with group commit (the default) and with
    ``group_commit=False``, interleaved rounds of about ``batch_s`` seconds;
    what one service process can push through one store.

Run: ``python benchmarks/postgres_case.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # workloads, fs_sagas
sys.path.insert(0, str(HERE.parent.parent / "tests"))  # pg_cluster

import workloads  # noqa: E402

TARGET_RATIO = 10.0
# Issue #12: sagas/s with 100 in flight; and sequential sagas stay at the
# floor of four commits each (S10: each step's intent before it runs, then the end).
IN_FLIGHT_TARGET = 5_000.0
COMMITS_PER_SAGA_FLOOR = 4
CQRS_DB = "cqrs_bench"
WORKER_COUNTS = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int
    batch_s: float
    pool: int  # interrupted sagas per recovery run
    repeats: int  # recovery runs per process count
    concurrency: int  # sagas resumed at once per worker process
    poll: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(rounds=2, batch_s=0.2, pool=100, repeats=1, concurrency=8, poll=0.02)
        return cls(rounds=9, batch_s=1.5, pool=2000, repeats=3, concurrency=8, poll=0.02)


# --------------------------------------------------------------------------- (a) sequential


OURS = "fallback_saga"
OURS_ASYNC = "fallback_saga, synchronous_commit=off"
FLOOR = "floor (4 commits)"
SCHEMAS = {OURS: "seq", OURS_ASYNC: "seq_async"}


async def _open_ours(conninfo: str, *, synchronous_commit: str = "on") -> tuple[Any, Any, Any]:
    import fs_sagas

    from fallback_saga import SagaFailed
    from fallback_saga.store.postgres import PostgresSagaStore

    name = OURS if synchronous_commit == "on" else OURS_ASYNC
    store = PostgresSagaStore(conninfo, schema=SCHEMAS[name], min_size=1, max_size=2,
                              synchronous_commit=synchronous_commit)
    await store.open()
    saga = fs_sagas.Plain3(store=store)
    Ctx = fs_sagas.Ctx

    async def run_one() -> Any:
        ctx = Ctx(order_id="o-1")
        try:
            return ctx, await saga.run(ctx)
        except SagaFailed as exc:
            return ctx, exc

    return run_one, workloads.fallback_saga_check("plain3"), store.close


async def _open_floor(conninfo: str) -> tuple[Any, Any, Any]:
    """Four durable single-row commits per iteration, nothing else."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS floor_commits (id bigserial PRIMARY KEY, v text)"
    )

    async def run_one() -> Any:
        for step in ("create", "a", "b", "c"):
            await conn.execute("INSERT INTO floor_commits (v) VALUES (%s)", (step,))
        return None

    def check(outcome: Any) -> None:
        assert outcome is None

    return run_one, check, conn.close


async def _open_cqrs(url: str) -> tuple[Any, Any, Any]:
    from cqrs.saga.storage import sqlalchemy as cqrs_sa
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(cqrs_sa.Base.metadata.create_all)
    storage = cqrs_sa.SqlAlchemySagaStorage(
        async_sessionmaker(engine, expire_on_commit=False, autocommit=False, autoflush=False)
    )
    defs = workloads.cqrs_definitions()
    saga = defs.sagas["plain3"]()
    container = defs.Container()
    Ctx = defs.Ctx

    async def run_one() -> Any:
        ctx = Ctx(order_id="o-1")
        results = []
        try:
            async with saga.transaction(context=ctx, container=container, storage=storage) as tx:
                async for step_result in tx:
                    results.append(step_result)
        except workloads.StepBoom as exc:
            return ctx, exc
        return ctx, results

    return run_one, workloads.cqrs_check("plain3"), engine.dispose


async def _batch(run_one: Any, check: Any, seconds: float) -> tuple[int, float]:
    """Sagas back to back for about ``seconds``; (count, elapsed)."""
    gc.collect()
    count = 0
    outcome = None
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        outcome = await run_one()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    check(outcome)
    return count, now - start


async def sequential(cluster: Any, settings: Settings) -> dict[str, Any]:
    import psycopg

    impls: dict[str, Any] = {
        OURS: await _open_ours(cluster.conninfo),
        OURS_ASYNC: await _open_ours(cluster.conninfo, synchronous_commit="off"),
        FLOOR: await _open_floor(cluster.conninfo),
    }
    cqrs_error: str | None = None
    try:
        cluster.create_database(CQRS_DB)
        url = (
            f"postgresql+psycopg://{cluster.user}:{cluster.password}"
            f"@127.0.0.1:{cluster.port}/{CQRS_DB}"
        )
        impls["python-cqrs"] = await _open_cqrs(url)
    except Exception as error:  # reported, ours still measured
        cqrs_error = f"{type(error).__name__}: {error}"
    for run_one, check, _ in impls.values():  # warm-up, outcome checked
        for _ in range(5):
            check(await run_one())
    names = list(impls)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    ran: dict[str, int] = {name: 5 for name in names}
    for r in range(settings.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run_one, check, _ = impls[name]
            count, elapsed = await _batch(run_one, check, settings.batch_s)
            ran[name] += count
            per_round[name].append(count / elapsed)
    # Commits per saga of the timed and warm-up sagas (store.close is bound to the store).
    commits = impls[OURS][2].__self__.stats.commits / ran[OURS]
    for _, _, close in impls.values():
        await close()
    # What was timed reached the server: count the completed sagas.
    with psycopg.connect(cluster.conninfo, autocommit=True) as conn:
        for name, schema in SCHEMAS.items():
            (done,) = conn.execute(
                f"SELECT count(*) FROM {schema}.fallback_saga_sagas WHERE status = 'completed'"
            ).fetchone()
            assert done == ran[name], (name, done, ran[name])
        (done,) = conn.execute("SELECT count(*) FROM floor_commits").fetchone()
        assert done == 4 * ran[FLOOR], (FLOOR, done, ran[FLOOR])
    if "python-cqrs" in impls:
        with psycopg.connect(cluster.conninfo_for(CQRS_DB), autocommit=True) as conn:
            (done,) = conn.execute(
                "SELECT count(*) FROM saga_executions WHERE status = 'COMPLETED'"
            ).fetchone()
        assert done == ran["python-cqrs"], (done, ran["python-cqrs"])
    result: dict[str, Any] = {
        name: {"median": statistics.median(v), "rounds": v, "sagas_run": ran[name]}
        for name, v in per_round.items()
    }
    result["share_of_floor"] = result[OURS]["median"] / result[FLOOR]["median"]
    result["commits_per_saga"] = commits
    result["commits_target_met"] = commits <= COMMITS_PER_SAGA_FLOOR
    if cqrs_error is not None:
        result["python-cqrs_error"] = cqrs_error
    else:
        cqrs = result["python-cqrs"]["median"]
        ratio = result[OURS]["median"] / cqrs
        result["ratio"] = ratio
        result["target_met"] = ratio >= TARGET_RATIO
        result["floor_ratio"] = result[FLOOR]["median"] / cqrs
        result["async_ratio"] = result[OURS_ASYNC]["median"] / cqrs
    return result


# --------------------------------------------------------------------------- (b) workers


def _seed(conninfo: str, schema: str, count: int) -> None:
    """``count`` sagas left RUNNING inside act StepA (its STARTED row last)."""
    import fs_sagas

    from fallback_saga import JournalEntry, StepStatus
    from fallback_saga.store.postgres import PostgresSagaStore

    definition = fs_sagas.Plain3.definition
    first = definition.items[0]
    entry = JournalEntry(0, first.name, "primary", "act", StepStatus.STARTED, 1, None, time.time())

    async def create_all() -> None:
        async with PostgresSagaStore(conninfo, schema=schema, min_size=8, max_size=8) as store:
            gate = asyncio.Semaphore(8)

            async def create(saga_id: str) -> None:
                async with gate:
                    await store.create(
                        saga_id,
                        definition.saga_name,
                        definition.fingerprint,
                        {"order_id": saga_id},
                        [entry],
                    )

            await asyncio.gather(*(create(f"s{n:05d}") for n in range(count)))

    asyncio.run(create_all())


async def _child(config: dict[str, Any]) -> None:
    import fs_sagas

    from fallback_saga import RecoveryWorker
    from fallback_saga.store.postgres import PostgresSagaStore

    size = config["concurrency"] + 2
    store = PostgresSagaStore(
        config["conninfo"], schema=config["schema"], min_size=size, max_size=size
    )
    await store.open()
    worker = RecoveryWorker(
        store,
        [fs_sagas.Plain3(store=store)],
        concurrency=config["concurrency"],
        lease=60,
        poll=config["poll"],
        older_than=0,
        owner=config["owner"],
    )
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    task = asyncio.create_task(worker.run())
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (or EOF)
    await worker.stop()
    await task
    await store.close()
    print(json.dumps(dataclasses.asdict(worker.stats)), flush=True)


def _recovery_run(cluster: Any, settings: Settings, workers: int, schema: str) -> dict[str, Any]:
    import psycopg

    _seed(cluster.conninfo, schema, settings.pool)
    procs = []
    try:
        for n in range(workers):
            config = {
                "conninfo": cluster.conninfo,
                "schema": schema,
                "owner": f"w{n}",
                "concurrency": settings.concurrency,
                "poll": settings.poll,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE), "--child", json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                raise RuntimeError(f"worker process did not start: {line!r}")
        with psycopg.connect(cluster.conninfo, autocommit=True) as conn:
            query = (
                f"SELECT count(*) FROM {schema}.fallback_saga_sagas"
                f" WHERE status IN ('running', 'compensating')"
            )
            start = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            while conn.execute(query).fetchone()[0] > 0:  # type: ignore[index]
                if time.perf_counter() - start > 300:
                    raise RuntimeError("recovery did not finish within 300 s")
                time.sleep(0.005)
            elapsed = time.perf_counter() - start
            (completed,) = conn.execute(
                f"SELECT count(*) FROM {schema}.fallback_saga_sagas WHERE status = 'completed'"
            ).fetchone()  # type: ignore[misc]
        stats = []
        for proc in procs:
            out, _ = proc.communicate("stop\n", timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"worker process exited with {proc.returncode}")
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert completed == settings.pool, (completed, settings.pool)
    assert sum(s["completed"] for s in stats) == settings.pool, stats
    assert all(s["lost"] == s["skipped"] == s["failed"] == 0 for s in stats), stats
    return {
        "sagas_per_s": settings.pool / elapsed,
        "seconds": elapsed,
        "completed_per_process": [s["completed"] for s in stats],
    }


def recovery(cluster: Any, settings: Settings) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKER_COUNTS}
    counts = list(WORKER_COUNTS)
    for rep in range(settings.repeats):
        order = counts[rep % len(counts) :] + counts[: rep % len(counts)]
        for workers in order:
            runs[workers].append(_recovery_run(cluster, settings, workers, f"rec_{workers}_{rep}"))
    result: dict[str, Any] = {}
    base = statistics.median(r["sagas_per_s"] for r in runs[1])
    for workers, rs in runs.items():
        median = statistics.median(r["sagas_per_s"] for r in rs)
        result[str(workers)] = {
            "median_sagas_per_s": median,
            "scaling_vs_1": median / base,
            "runs": rs,
        }
    return result


# --------------------------------------------------------------------------- entry points


IN_FLIGHT = (1, 10, 100)


async def in_flight(cluster: Any, settings: Settings) -> dict[str, Any]:
    """(c): with group commit (the default) and without, side by side."""
    import fs_sagas

    from fallback_saga.store.postgres import PostgresSagaStore

    kinds = {"group commit": True, "each write alone": False}
    per_round: dict[str, dict[int, list[float]]] = {k: {n: [] for n in IN_FLIGHT} for k in kinds}
    stores = {kind: PostgresSagaStore(cluster.conninfo, schema=f"in_flight_{int(on)}",
                                      group_commit=on)
              for kind, on in kinds.items()}
    check = workloads.fallback_saga_check("plain3")
    try:
        sagas = {}
        for kind, store in stores.items():
            await store.open()
            sagas[kind] = fs_sagas.Plain3(store=store)

        async def loop(saga: Any, deadline: float) -> int:
            count = 0
            while True:
                ctx = fs_sagas.Ctx(order_id="o-1")
                check((ctx, await saga.run(ctx)))
                count += 1
                if time.perf_counter() >= deadline:
                    return count

        names = list(kinds)
        for r in range(settings.rounds):
            for n in IN_FLIGHT:
                for kind in names[r % 2:] + names[:r % 2]:
                    gc.collect()
                    start = time.perf_counter()
                    counts = await asyncio.gather(
                        *(loop(sagas[kind], start + settings.batch_s) for _ in range(n))
                    )
                    per_round[kind][n].append(sum(counts) / (time.perf_counter() - start))
        commits = {kind: dataclasses.asdict(store.stats) for kind, store in stores.items()}
    finally:
        for store in stores.values():
            await store.close()
    return {kind: {str(n): {"median": statistics.median(v), "rounds": v}
                   for n, v in rows.items()} | {"stats": commits[kind]}
            for kind, rows in per_round.items()}


def run_postgres_case(*, quick: bool) -> dict[str, Any]:
    """Start a throwaway cluster, measure (a), (b) and (c), return every figure."""
    from pg_cluster import PostgresCluster

    settings = Settings.for_mode(quick)
    with PostgresCluster.start_new() as cluster:
        seq = asyncio.run(sequential(cluster, settings))
        rec = recovery(cluster, settings)
        flying = asyncio.run(in_flight(cluster, settings))
        server = cluster.psql("SHOW server_version").strip()
    return {
        "quick": quick,
        "settings": dataclasses.asdict(settings),
        "cpus": os.cpu_count(),
        "server_version": server,
        "sequential": seq,
        "workers": rec,
        "in_flight": flying,
        "target_ratio": TARGET_RATIO,
    }


def report(result: dict[str, Any]) -> str:
    seq = result["sequential"]
    lines = [
        f"PostgreSQL {result['server_version']} (throwaway cluster, fsync on, "
        f"synchronous_commit on, loopback TCP); {result['cpus']} CPUs"
        + ("; --quick: numbers meaningless" if result["quick"] else ""),
        "",
        "(a) sequential plain3 sagas/s (median of "
        f"{result['settings']['rounds']} interleaved rounds)",
    ]
    cqrs = seq.get("python-cqrs", {}).get("median")
    for name in (OURS, "python-cqrs", FLOOR, OURS_ASYNC):
        if name in seq:
            vs = f"   {seq[name]['median'] / cqrs:>5.1f}x python-cqrs" if cqrs else ""
            lines.append(f"  {name:<38} {seq[name]['median']:>8.1f}{vs}")
    if "ratio" in seq:
        met = "met" if seq["target_met"] else "NOT met"
        lines.append(f"  ratio {seq['ratio']:.1f}x  (target >= {result['target_ratio']:g}x: {met});"
                     f" {FLOOR} allows at most {seq['floor_ratio']:.1f}x here")
    else:
        lines.append(f"  python-cqrs not measured: {seq.get('python-cqrs_error')}")
    lines.append(f"  fallback_saga reaches {100 * seq['share_of_floor']:.0f}% of the floor")
    if "commits_per_saga" in seq:
        met = "met" if seq["commits_target_met"] else "NOT met"
        lines.append(f"  fallback_saga: {seq['commits_per_saga']:.2f} commits per saga"
                     f" (target, issue #12: the floor of {COMMITS_PER_SAGA_FLOOR}: {met})")
    lines += [
        "",
        f"(b) recovery of {result['settings']['pool']} interrupted sagas "
        f"(median of {result['settings']['repeats']} run(s) each)",
    ]
    for workers, row in result["workers"].items():
        lines.append(
            f"  {workers} process(es): {row['median_sagas_per_s']:>9.1f} sagas/s"
            f"   scaling x{row['scaling_vs_1']:.2f}"
        )
    lines += ["", "(c) plain3 sagas/s in flight in one process, one store (pool of 10)"]
    flying = result["in_flight"]
    grouped, alone = flying["group commit"], flying["each write alone"]
    for n in IN_FLIGHT:
        g, a = grouped[str(n)]["median"], alone[str(n)]["median"]
        lines.append(f"  {n:>3} in flight: group commit {g:>8.1f}   each write alone {a:>8.1f}"
                     f"   x{g / a:.2f}")
    hundred = grouped["100"]["median"]
    met = "met" if hundred >= IN_FLIGHT_TARGET else "NOT met"
    lines.append(f"  100 in flight: {hundred:,.0f} sagas/s"
                 f" (target, issue #12: >= {IN_FLIGHT_TARGET:,.0f}/s: {met})")
    stats = grouped["stats"]
    lines.append(f"  group commit: {stats['writes']} writes in {stats['commits']} commits,"
                 f" largest group {stats['largest_group']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (CI smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--child", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        asyncio.run(_child(json.loads(args.child)))
        return
    result = run_postgres_case(quick=args.quick)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
