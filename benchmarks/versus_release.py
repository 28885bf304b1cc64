"""This tree against an earlier release of itself, side by side in one process.

    git archive v0.4.0 fallback_saga | tar -x -C /tmp/baseline   # or any commit
    python benchmarks/versus_release.py /tmp/baseline/fallback_saga

The baseline package is imported under another name (the package is
vendorable: relative imports only), and each workload runs in interleaved
rounds, this tree and the baseline taking turns, so a machine that gets busier
meanwhile slows both alike. Reported: medians, and this tree / baseline.

Workloads: plain3 and fail3 (three steps; the third fails and two are
compensated) on the default in-memory store, in microseconds per saga; and a
durable three-step saga on SQLite (``synchronous="full"``), one at a time,
100 and 1,000 in flight, in sagas per second (``--only durable`` runs these
alone; ``--cpu`` adds the CPU microseconds per saga of the event-loop thread
and of the store's writer thread, medians too; ``--writer process`` runs
them on ``SQLiteSagaStore(path, writer="process")``, whose writes the
writer thread then does not see; ``--step-returns response`` has the steps
return a ``Response``, journaled as an object, instead of ``None``).
``--only postgres`` runs the durable saga on ``PostgresSagaStore`` instead,
on a throwaway cluster (``tests/pg_cluster.py``): each tree's store on a
schema of its own (two trees may differ in schema version), both first
filled with ``--fill`` sagas and analyzed, so that neither tree gets fresher
tables, with the client's and the server's CPU
per saga (``--cpu``). Each round the tree that starts alternates. A
regression check for changes that are not about speed (the journal-truth
work of 0.5.0 was measured this way), not a replacement for ``compare.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from package_copies import import_copy  # noqa: E402

import fallback_saga  # noqa: E402

# What the durable runs' steps return (``--step-returns``): None, or a
# ``Response`` model (journaled as an object: the benchmark sagas' case).
RETURNS = "none"


def saga_class(lib: Any, *, fail: bool) -> tuple[type, type]:
    @dataclasses.dataclass
    class Ctx(lib.SagaContext):  # type: ignore[misc, name-defined]
        order_id: str
        done: int = 0

    class Done(lib.Response):  # type: ignore[misc, name-defined]
        count: int

    # Journaled by class name: it must be found again by that name.
    module = sys.modules[__name__]
    name = f"Done_{lib.__name__}"
    Done.__qualname__ = Done.__name__ = name
    Done.__module__ = __name__
    setattr(module, name, Done)
    respond = RETURNS == "response"

    class Step:
        async def act(self, ctx: Any) -> Any:
            ctx.done += 1
            return Done(count=ctx.done) if respond else None

        async def compensate(self, ctx: Any) -> None:
            ctx.done -= 1

    class Reserve(Step):
        pass

    class Charge(Step):
        pass

    class Ship(Step):
        async def act(self, ctx: Any) -> None:
            if fail:
                raise RuntimeError("no courier")

    class Bench(lib.Saga[Ctx]):  # type: ignore[misc, name-defined]
        steps = [Reserve, Charge, Ship]

    return Ctx, Bench


async def in_memory(lib: Any, fail: bool, count: int) -> float:
    """Microseconds per saga on the default store."""
    ctx_class, bench = saga_class(lib, fail=fail)
    saga = bench()
    started = time.perf_counter()
    for _ in range(count):
        with contextlib.suppress(lib.SagaFailed):
            await saga.run(ctx_class(order_id="o"))
    return (time.perf_counter() - started) / count * 1e6


def _thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds of ``thread`` so far (0.0 where the platform cannot tell)."""
    if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:
        return 0.0


# (loop thread, writer thread) CPU microseconds per saga of each durable run,
# by workload name and library label; filled by ``durable``.
CPU: dict[tuple[str, str], list[tuple[float, float]]] = {}
# SQLiteSagaStore's writer for the durable runs (``--writer``).
WRITER = "thread"


async def durable(lib: Any, path: Path, in_flight: int, count: int, key: Any = None) -> float:
    """Sagas per second on SQLite."""
    ctx_class, bench = saga_class(lib, fail=False)
    options = {} if WRITER == "thread" else {"writer": WRITER}
    async with lib.SQLiteSagaStore(path, **options) as store:
        saga = bench(store=store)
        gate = asyncio.Semaphore(in_flight)
        writer = next(
            (t for t in threading.enumerate() if t.name == "fallback_saga-sqlite-writer"), None
        )

        async def one() -> None:
            async with gate:
                await saga.run(ctx_class(order_id="o"))

        loop0, writer0 = time.thread_time(), _thread_cpu(writer)
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
        if key is not None:
            CPU.setdefault(key, []).append(
                ((time.thread_time() - loop0) / count * 1e6,
                 (_thread_cpu(writer) - writer0) / count * 1e6)
            )
        return count / elapsed


# PostgreSQL (``--only postgres``): by tree, its store and saga, made once.
PG_SAGAS: dict[str, tuple[Any, Any, Any]] = {}
PG_SERVER_UID: list[int] = []  # the cluster's OS user, whose CPU is the server's


async def postgres_setup(libs: dict[str, ModuleType], conninfo: str, fill: int) -> None:
    """One store per tree, each on a schema of its own (two trees may differ
    in schema version: a newer one migrates a schema an older one then
    refuses), filled alike and analyzed (every statement then prepared, as in
    a service that has run a while)."""
    schemas: dict[str, str] = {}
    for number, lib in enumerate(libs.values()):
        from_module = importlib.import_module(f"{lib.__name__}.store.postgres")
        schemas[lib.__name__] = schema = f"versus_{number}"
        store = from_module.PostgresSagaStore(conninfo, schema=schema)
        await store.open()
        ctx_class, bench = saga_class(lib, fail=False)
        PG_SAGAS[lib.__name__] = (store, ctx_class, bench(store=store))
    while True:
        for lib in libs.values():
            await postgres(lib, 100, 1000)
        filled = True
        for name, schema in schemas.items():
            async with PG_SAGAS[name][0].pool.connection() as conn:
                (rows,) = await (await conn.execute(
                    f"SELECT count(*) FROM {schema}.fallback_saga_sagas")).fetchone()
                filled = filled and rows >= fill
        if filled:
            break
    for name, schema in schemas.items():
        async with PG_SAGAS[name][0].pool.connection() as conn:
            await conn.execute(f"ANALYZE {schema}.fallback_saga_sagas")
            await conn.execute(f"ANALYZE {schema}.fallback_saga_steps")
    for store, _, _ in PG_SAGAS.values():
        store._size_check_at = 0.0  # read the analyzed sizes now: prepare
        store._check_sizes_soon()
        await asyncio.gather(*store._size_checks)


async def postgres_close() -> None:
    for store, _, _ in PG_SAGAS.values():
        await store.close()


async def postgres(lib: Any, in_flight: int, count: int, key: Any = None) -> float:
    """Sagas per second on PostgreSQL, on the tree's own store (and schema)."""
    from postgres_groups import server_cpu_seconds

    _, ctx_class, saga = PG_SAGAS[lib.__name__]
    gate = asyncio.Semaphore(in_flight)
    prefix = f"{lib.__name__}-{time.monotonic_ns():x}-"

    async def one(n: int) -> None:
        async with gate:
            await saga.run(ctx_class(order_id="o"), saga_id=f"{prefix}{n:x}")

    client0, server0 = time.process_time(), server_cpu_seconds(PG_SERVER_UID[0])
    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    elapsed = time.perf_counter() - started
    if key is not None:
        CPU.setdefault(key, []).append(
            ((time.process_time() - client0) / count * 1e6,
             (server_cpu_seconds(PG_SERVER_UID[0]) - server0) / count * 1e6)
        )
    return count / elapsed


def _postgres_workload(in_flight: int, count: int) -> tuple[str, str, Any]:
    name = f"durable PostgreSQL, {in_flight:,} in flight"
    return name, "sagas/s", lambda lib, n: postgres(lib, in_flight, count, (name, lib.__name__))


def _durable_workload(tmp: Path, in_flight: int, count: int) -> tuple[str, str, Any]:
    name = f"durable SQLite, {in_flight:,} in flight"

    def run(lib: Any, n: int) -> Any:
        path = tmp / f"{id(lib)}-{in_flight}-{n}.db"
        return durable(lib, path, in_flight, count, key=(name, lib.__name__))

    return name, "sagas/s", run


async def compare(
    baseline: ModuleType,
    rounds: int,
    quick: bool,
    tmp: Path,
    only: str,
    cpu: bool,
    in_flight: tuple[int, ...] = (1, 100, 1000),
) -> None:
    libs = {"this tree": fallback_saga, "baseline": baseline}
    workloads: list[tuple[str, str, Any]] = []
    if only in ("all", "memory"):
        workloads += [
            ("plain3, memory", "µs/saga",
             lambda lib, n: in_memory(lib, False, 300 if quick else 5000)),
            ("fail3, memory", "µs/saga",
             lambda lib, n: in_memory(lib, True, 300 if quick else 5000)),
        ]
    counts = {1: 20 if quick else 300, 100: 200 if quick else 3000}
    if only in ("all", "durable"):
        workloads += [
            _durable_workload(tmp, n, counts.get(n, 2 * n if quick else 10 * n))
            for n in in_flight
        ]
    if only == "postgres":
        workloads += [
            _postgres_workload(n, counts.get(n, 2 * n if quick else 10 * n)) for n in in_flight
        ]
    print(f"{'workload':32} {'this tree':>12} {'baseline':>12} {'ratio':>7}")
    labels = list(libs)
    for name, unit, run in workloads:
        results: dict[str, list[float]] = {label: [] for label in libs}
        for number in range(rounds):
            for label in labels[number % 2:] + labels[:number % 2]:  # who starts alternates
                results[label].append(await run(libs[label], number))
        now, then = (statistics.median(results[label]) for label in libs)
        print(f"{name:32} {now:>12,.1f} {then:>12,.1f} {now / then:>7.2f}  ({unit})", flush=True)
        if cpu and any(key[0] == name for key in CPU):
            for label, lib in libs.items():
                samples = CPU.get((name, lib.__name__), [])
                loop_us = statistics.median(s[0] for s in samples)
                writer_us = statistics.median(s[1] for s in samples)
                sides = ("client", "server") if only == "postgres" else (
                    "loop thread", "writer thread")
                print(f"    {label:12} CPU µs/saga: {sides[0]} {loop_us:6.1f}, "
                      f"{sides[1]} {writer_us:6.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="an earlier release's fallback_saga folder")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    parser.add_argument("--only", choices=("all", "memory", "durable", "postgres"), default="all",
                        help="postgres: the durable runs on PostgresSagaStore (not in all)")
    parser.add_argument("--cpu", action="store_true", help="CPU per thread of durable runs")
    parser.add_argument("--fill", type=int, default=12_000,
                        help="postgres: sagas in the tables before timing (then ANALYZE)")
    parser.add_argument(
        "--in-flight", default="1,100,1000", help="durable sagas in flight, comma-separated"
    )
    parser.add_argument("--writer", choices=("thread", "process"), default="thread",
                        help='SQLiteSagaStore(writer=...) of the durable runs (both trees)')
    parser.add_argument("--step-returns", choices=("none", "response"), default="none",
                        help="what the steps return: None, or a Response (journaled)")
    args = parser.parse_args()
    global WRITER, RETURNS
    WRITER, RETURNS = args.writer, args.step_returns
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        baseline = import_copy(args.baseline, Path(tmp))
        rounds = 2 if args.quick else args.rounds
        in_flight = tuple(int(n) for n in args.in_flight.split(","))
        conninfo = None
        if args.only == "postgres":
            sys.path.insert(0, str(ROOT / "tests"))  # pg_cluster
            sys.path.insert(0, str(ROOT / "benchmarks"))  # postgres_groups
            from pg_cluster import PostgresCluster

            cluster = stack.enter_context(PostgresCluster.start_new())
            conninfo = cluster.conninfo
            PG_SERVER_UID.append(cluster.run_as.pw_uid if cluster.run_as else os.getuid())

        async def main_async() -> None:
            if conninfo is not None:
                await postgres_setup({"this tree": fallback_saga, "baseline": baseline},
                                     conninfo, 100 if args.quick else args.fill)
            try:
                await compare(baseline, rounds, args.quick, Path(tmp), args.only, args.cpu,
                              in_flight)
            finally:
                await postgres_close()

        asyncio.run(main_async())


if __name__ == "__main__":
    main()
