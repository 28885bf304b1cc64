"""Where the time of a durable saga goes: ``compare.py --profile durable``.

Not a comparison; a breakdown of fallback_saga + ``SQLiteSagaStore`` alone:

1. the floor under a sequential durable saga: one stdlib ``sqlite3``
   single-row commit (WAL, same ``synchronous``) on the same filesystem,
   with no threads and no asyncio;
2. for each configuration (sequential / 100 in flight, full / normal): wall
   time per saga and the CPU time per saga of the event-loop thread and of
   the store's writer thread (Linux: read from /proc, 10 ms ticks), commits
   per saga and writes per commit;
3. the event-loop side without any SQLite: the same saga on the default
   ``MemorySagaStore`` (a live journal: the executor writes nothing), on a
   store that takes the write path (the executor builds the entries and the
   context dict per write; the store JSON-encodes it as ``SQLiteSagaStore``
   does) and returns at once, on one that also awaits one loop future
   per write (the await/wake-up cost of a write, without a thread), and on
   ``SQLiteSagaStore`` with a writer thread that answers every write at once
   and writes nothing (the store's front end, the thread's wake-ups and the
   GIL: the most any writer could give);
4. the writer side without the event loop: ``SQLiteSagaStore``'s writer
   thread's own transactions (``_Worker._write``, its batched statements)
   for 100 sagas in lock-step (4 groups of 100 writes, one transaction
   each), called on one thread with no asyncio at all: CPU and wall time;
5. with ``cprofile=True``: cProfile of both threads at 100 in flight
   (profiling inflates everything; read the proportions, not the times).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import durable
import workloads


def _thread_cpu(native_id: int) -> float | None:
    """CPU seconds (user + system) of one thread of this process (Linux)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_commit_us(tmpdir: str, synchronous: str, n: int = 1000) -> float:
    """Microseconds per single-row ``BEGIN IMMEDIATE; INSERT; COMMIT`` in stdlib
    sqlite3, WAL, on a fresh file in ``tmpdir``."""
    path = os.path.join(tmpdir, f"raw-{synchronous}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        row = ("x" * 100,)
        for _ in range(50):  # warm-up
            conn.execute("INSERT INTO t (v) VALUES (?)", row)
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", row)
            conn.execute("COMMIT")
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        conn.close()
        durable.remove_db(path)


async def thread_breakdown(
    tmpdir: str, config: durable.Config, n: int, profilers: dict[str, cProfile.Profile] | None
) -> dict[str, Any]:
    path = os.path.join(tmpdir, f"breakdown-{config.key}.db")
    if profilers is not None:
        # Each thread started from now on (the store's writer and reader)
        # profiles itself: cProfile only sees the thread it was enabled in.
        def start_profiler(frame: Any, event: str, arg: Any) -> None:
            sys.setprofile(None)
            prof = profilers[threading.current_thread().name] = cProfile.Profile()
            prof.enable()

        threading.setprofile(start_profiler)
    try:
        session = await durable.open_session(config, path)
    finally:
        threading.setprofile(None)
    try:
        outcomes = await durable.drive(
            session.run_one, max(200, config.in_flight), config.in_flight
        )
        writer = next(t for t in threading.enumerate() if t.name.endswith("-writer"))
        assert writer.native_id is not None
        loop_id = threading.get_native_id()
        before = session.stats()
        cpu0 = (_thread_cpu(loop_id), _thread_cpu(writer.native_id))
        main_prof = None
        if profilers is not None:
            main_prof = profilers["event loop"] = cProfile.Profile()
        gc.collect()
        t0 = time.perf_counter()
        if main_prof is not None:
            main_prof.enable()
        outcomes += await durable.drive(session.run_one, n, config.in_flight)
        if main_prof is not None:
            main_prof.disable()
        wall = time.perf_counter() - t0
        cpu1 = (_thread_cpu(loop_id), _thread_cpu(writer.native_id))
        after = session.stats()
    finally:
        await session.close()
    for outcome in outcomes:
        session.check(outcome)
    durable.remove_db(path)
    writes = after["writes"] - before["writes"]
    commits = after["commits"] - before["commits"]

    def cpu_us(i: int) -> float | None:
        a, b = cpu0[i], cpu1[i]
        return None if a is None or b is None else (b - a) / n * 1e6

    return {
        "label": config.label,
        "sagas_per_s": n / wall,
        "wall_us_per_saga": wall / n * 1e6,
        "loop_thread_cpu_us_per_saga": cpu_us(0),
        "writer_thread_cpu_us_per_saga": cpu_us(1),
        "commits_per_saga": commits / n,
        "writes_per_commit": writes / commits if commits else None,
    }


class _EncodeOnlyStore:
    """Does the event-loop side of ``SQLiteSagaStore``'s writes (the JSON
    encoding of the context, the entries tuple) and returns at once. Like
    that store, it declares that its writes outlive cancellation, so the
    executor takes the same inline write path (no task per write)."""

    writes_outlive_cancellation = True

    def __init__(self) -> None:
        from fallback_saga.store._sqlite_sql import _context_json

        self._encode = _context_json

    async def create(
        self, saga_id: str, saga_name: str, fingerprint: str, context: Any, entries: Any, **kw: Any
    ) -> None:
        self._encode(saga_id, context)
        tuple(entries)

    async def append(self, saga_id: str, entries: Any, *, context: Any = None, **kw: Any) -> None:
        if context is not None:
            self._encode(saga_id, context)
        tuple(entries)

    async def load(self, saga_id: str) -> Any:
        raise KeyError(saga_id)


class _EncodeAndAwaitStore(_EncodeOnlyStore):
    """... and awaits one future per write, resolved by the loop itself."""

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        await future

    async def create(self, *args: Any, **kw: Any) -> None:
        await super().create(*args, **kw)
        await self._wait()

    async def append(self, *args: Any, **kw: Any) -> None:
        await super().append(*args, **kw)
        await self._wait()


@contextlib.contextmanager
def _writer_writes_nothing() -> Iterator[None]:
    """``SQLiteSagaStore``'s writer thread answers every write at once and
    writes nothing: what the store's front end, the thread's wake-ups and the
    GIL cost the event loop, with no SQLite work at all. (Private API, like
    section 4: a measurement, not a store.)"""
    from fallback_saga.store import _sqlite_workers as sqlite_store

    serve = sqlite_store._Worker._serve

    def answer_at_once(self: Any, conn: Any, group: list[Any]) -> None:
        if self.role != "writer":
            serve(self, conn, group)
            return
        sqlite_store._settle([(request, True, None) for request in group])

    sqlite_store._Worker._serve = answer_at_once  # type: ignore[method-assign]
    try:
        yield
    finally:
        sqlite_store._Worker._serve = serve  # type: ignore[method-assign]


async def loop_side_us(in_flight: int, n: int, tmpdir: str) -> dict[str, float]:
    import fs_sagas

    from fallback_saga.store.memory import MemorySagaStore
    from fallback_saga.store.sqlite import SQLiteSagaStore

    stores: dict[str, Callable[[], Any]] = {
        "MemorySagaStore (live journal, no writes)": MemorySagaStore,
        "+ write path, nothing awaited": _EncodeOnlyStore,
        "+ one loop future awaited per write": _EncodeAndAwaitStore,
        "+ SQLiteSagaStore, writer writing nothing": lambda: SQLiteSagaStore(
            os.path.join(tmpdir, f"nothing-{in_flight}.db")
        ),
    }
    out: dict[str, float] = {}
    for name, make in stores.items():
        store = make()
        saga = fs_sagas.Plain3(store=store)
        check = workloads.fallback_saga_check("plain3")

        async def run_one(saga: Any = saga) -> Any:
            ctx = fs_sagas.Ctx(order_id="o-1")
            return ctx, await saga.run(ctx)

        best = float("inf")
        for _ in range(3):
            gc.collect()
            t0 = time.perf_counter()
            outcomes = await durable.drive(run_one, n, in_flight)
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
            for outcome in outcomes:
                check(outcome)
        close = getattr(store, "close", None)
        if close is not None:
            await close()
        out[name] = best
    return out


class _NoLoop:
    """Stands for the event loop of the requests ``writer_alone_us`` makes:
    the outcomes are settled into nothing."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass

    def is_closed(self) -> bool:  # asked before settling (``_sqlite_workers._on_loop``)
        return False


def writer_alone_us(tmpdir: str, synchronous: str, waves: int = 100) -> tuple[float, float]:
    """CPU microseconds per saga of the store's writes alone, and wall
    microseconds: 100 sagas in lock-step (create; 2 appends; the final
    append) = 4 groups of 100 writes, each group one transaction through the
    writer thread's own ``_Worker._write`` (its batched statements), called on
    this thread, no asyncio. The steps' rows are as the executor writes them
    (a completed act keeps its response).

    Uses ``SQLiteSagaStore``'s private functions (the same ones its writer
    thread runs), so it may need updating when they change."""
    from fallback_saga.status import StepStatus
    from fallback_saga.store import _sqlite_schema, _sqlite_sql, _sqlite_workers
    from fallback_saga.store.base import JournalEntry

    path = os.path.join(tmpdir, f"writer-{synchronous}.db")
    worker = _sqlite_workers._Worker(
        role="writer",
        path=path,
        connect=lambda: _sqlite_schema._connect_writer(path, synchronous, 5.0),
        clock=time.time,
    )
    conn = worker.connect()
    cursor = conn.cursor()
    no_loop: Any = _NoLoop()
    contexts = [
        _sqlite_sql.encode_json({"order_id": "o-1", "a": "a" if done > 0 else None,
                          "b": "b" if done > 1 else None, "c": "c" if done > 2 else None})
        for done in range(4)
    ]
    started, completed = StepStatus.STARTED, StepStatus.COMPLETED

    def entry(position: int, status: StepStatus) -> JournalEntry:
        result = '{"value":"x"}' if status is completed else None
        return JournalEntry(position, "Step", "primary", "act", status, 1, None, time.time(),
                            result)

    try:
        cpu = wall = 0.0
        for wave in range(waves):
            ids = [f"w{wave:06d}-{i:03d}" for i in range(100)]
            for phase in range(4):
                group = []
                for saga_id in ids:
                    op: Any
                    args: tuple[Any, ...]
                    if phase == 0:
                        op = _sqlite_sql._create
                        args = (saga_id, "Plain3", "fp", "running", contexts[0],
                                (entry(0, started),))
                    elif phase < 3:
                        op = _sqlite_sql._append
                        args = (saga_id, (entry(phase - 1, completed), entry(phase, started)),
                                None, contexts[phase], None, None)
                    else:
                        op = _sqlite_sql._append
                        args = (saga_id, (entry(2, completed),), "completed", contexts[3],
                                None, None)
                    group.append(_sqlite_workers._Request(op, args, no_loop, None, True))  # type: ignore[arg-type]
                c0, w0 = time.thread_time(), time.perf_counter()
                worker._write(conn, cursor, group)
                cpu += time.thread_time() - c0
                wall += time.perf_counter() - w0
        return cpu / (waves * 100) * 1e6, wall / (waves * 100) * 1e6
    finally:
        cursor.close()
        conn.close()
        durable.remove_db(path)


def _top(prof: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


def run(tmpdir_parent: str | None, n_in_flight: int, n_seq: int, cprofile: bool, top: int) -> None:
    tmpdir = tempfile.mkdtemp(prefix=".durable-", dir=tmpdir_parent)
    try:
        print(f"files in {tmpdir}: {durable.filesystem_of(tmpdir)}")
        print("\n1. Floor: stdlib sqlite3, WAL, one single-row transaction, no threads")
        for sync in ("full", "normal"):
            print(f"   synchronous={sync:<7} {raw_commit_us(tmpdir, sync):7.0f} us per commit")

        print("\n2. fallback_saga + SQLiteSagaStore, 3-step saga, CPU per thread")
        configs: Sequence[durable.Config] = [
            # The writer thread's CPU is read per thread: the writer process is left out.
            c for c in durable.CONFIGS if c.library == durable.OURS and c.writer == "thread"
        ]
        header = (
            f"   {'configuration':<40} {'sagas/s':>8} {'wall us':>8} {'loop cpu':>9} "
            f"{'writer cpu':>11} {'commits/saga':>13} {'writes/commit':>14}"
        )
        print(header)
        for config in configs:
            n = n_seq if config.in_flight == 1 else n_in_flight
            r = asyncio.run(thread_breakdown(tmpdir, config, n, None))

            def us(x: float | None) -> str:
                return "n/a" if x is None else f"{x:.0f}"

            print(
                f"   {r['label']:<40} {r['sagas_per_s']:>8,.0f} {r['wall_us_per_saga']:>8.0f} "
                f"{us(r['loop_thread_cpu_us_per_saga']):>9} "
                f"{us(r['writer_thread_cpu_us_per_saga']):>11} "
                f"{r['commits_per_saga']:>13.3f} {r['writes_per_commit']:>14.1f}"
            )

        print("\n3. Event-loop side only, no SQLite work (best of 3, wall us per saga)")
        for in_flight in (1, durable.IN_FLIGHT):
            with _writer_writes_nothing():
                res = asyncio.run(loop_side_us(in_flight, 20_000, tmpdir))
            for name, us_per in res.items():
                print(f"   {in_flight:>3} in flight  {name:<40} {us_per:6.1f}")

        print("\n4. Writer side only: the writer's transactions on one thread, no asyncio")
        for sync in ("full", "normal"):
            try:
                cpu_us, wall_us = writer_alone_us(tmpdir, sync)
                text = f"CPU us per saga {cpu_us:6.1f}, wall us per saga {wall_us:6.1f}"
            except Exception as exc:  # private API: report, do not fail the profile
                text = f"n/a ({type(exc).__name__}: {exc})"
            print(f"   100 in lock-step, synchronous={sync:<7} {text}")

        if cprofile:
            config = next(c for c in configs if c.key == "ours_100_full")
            profilers: dict[str, cProfile.Profile] = {}
            asyncio.run(thread_breakdown(tmpdir, config, n_in_flight, profilers))
            for name, prof in profilers.items():
                if name.endswith("-reader"):
                    continue
                print(f"\n5. cProfile, {config.label}, thread: {name} (tottime order)")
                print(_top(prof, top))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
