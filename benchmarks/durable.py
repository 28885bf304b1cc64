"""Durable 3-step sagas on a SQLite file: the set-ups that ``compare.py`` times.

* fallback_saga: ``Plain3(store=SQLiteSagaStore(path, synchronous=...))``
  (WAL; ``synchronous="full"`` fsyncs every commit; concurrent sagas share
  commits through the store's group commit).
* python-cqrs 5.3.0: the same saga (``workloads.cqrs_definitions()``) run by
  ``saga.transaction(..., storage=SqlAlchemySagaStorage(...))`` on
  ``sqlite+aiosqlite``, with the session factory python-cqrs's own SQLAlchemy
  benchmarks use (``expire_on_commit=False, autocommit=False,
  autoflush=False``) and SQLAlchemy's default pool.  Every connection is put
  in the same mode as ours (``journal_mode=WAL``, ``synchronous=FULL``), so
  both libraries pay the same price per commit (python-cqrs's default
  rollback journal was measured slower here: 46 against 56 sequential
  sagas/s, median of 8 interleaved rounds).  Its tables are created from its
  own models' metadata, copied, with one change: the log table's
  ``BigInteger`` primary key becomes ``INTEGER`` (SQLite only auto-increments
  an ``INTEGER PRIMARY KEY``; with ``BIGINT`` every log insert fails).

Every batch gets a FRESH database file (see ``open_session``): the store (or
engine) is opened and the schema created before timing, closed after it, and
the files are deleted.  After closing, the file is read back with plain
``sqlite3`` and the number of sagas recorded as completed must equal the
number run: what was timed really reached the disk.

The library imports happen inside the functions so that a missing package
only disables that implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import workloads

OURS = "fallback_saga"
CQRS = "python-cqrs"


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured configuration: which library, how durable, how many in flight."""

    key: str  # stable id, used in the JSON
    library: str  # OURS or CQRS
    synchronous: str  # "full" / "normal" (python-cqrs: always FULL)
    in_flight: int  # 1 = sequential (each saga awaited before the next starts)
    writer: str = "thread"  # ours: SQLiteSagaStore(writer=...)

    @property
    def label(self) -> str:
        mode = "sequential" if self.in_flight == 1 else f"{self.in_flight} in flight"
        if self.library == OURS:
            writer = "" if self.writer == "thread" else f", writer={self.writer}"
            return f"{OURS} {mode}, sync={self.synchronous}{writer}"
        return f"{CQRS} {mode}"


IN_FLIGHT = 100
MANY_IN_FLIGHT = 1000  # reported beside the target (issue #12), no target of its own
CONFIGS = (
    Config("ours_seq_full", OURS, "full", 1),
    Config("cqrs_seq", CQRS, "full", 1),
    Config("ours_seq_full_inline", OURS, "full", 1, writer="inline"),
    Config("ours_100_full", OURS, "full", IN_FLIGHT),
    Config("ours_100_full_process", OURS, "full", IN_FLIGHT, writer="process"),
    Config("ours_1000_full", OURS, "full", MANY_IN_FLIGHT),
    Config("ours_1000_full_process", OURS, "full", MANY_IN_FLIGHT, writer="process"),
    Config("ours_100_normal", OURS, "normal", IN_FLIGHT),
    Config("cqrs_100", CQRS, "full", IN_FLIGHT),
    Config("ours_seq_normal", OURS, "normal", 1),
)


@dataclasses.dataclass
class Session:
    """An open store on a fresh file, and a runner of ONE saga through it."""

    run_one: Callable[[], Awaitable[Any]]
    check: Callable[[Any], None]
    close: Callable[[], Awaitable[None]]
    stats: Callable[[], dict[str, int]]  # counters so far (ours: writes, commits)
    completed_sql: str  # counts the completed sagas in the file, run after close


# ---------------------------------------------------------------------------
# fallback_saga
# ---------------------------------------------------------------------------


async def open_ours(path: str, synchronous: str, writer: str = "thread") -> Session:
    import fs_sagas

    from fallback_saga import SagaFailed
    from fallback_saga.store.sqlite import SQLiteSagaStore

    store = SQLiteSagaStore(path, synchronous=synchronous, writer=writer)
    await store.open()  # the file, the schema (and the writer process), outside the timing
    saga = fs_sagas.Plain3(store=store)
    Ctx = fs_sagas.Ctx

    async def run_one() -> Any:
        ctx = Ctx(order_id="o-1")
        try:
            return ctx, await saga.run(ctx)
        except SagaFailed as exc:
            return ctx, exc

    def stats() -> dict[str, int]:
        s = store.stats
        return {"writes": s.writes, "commits": s.commits, "largest_group": s.largest_group}

    return Session(
        run_one=run_one,
        check=workloads.fallback_saga_check("plain3"),
        close=store.close,
        stats=stats,
        completed_sql="SELECT COUNT(*) FROM sagas WHERE status = 'completed'",
    )


# ---------------------------------------------------------------------------
# python-cqrs
# ---------------------------------------------------------------------------


def cqrs_sqlite_metadata() -> Any:
    """python-cqrs's saga tables, copied from its models, with the log id as
    ``INTEGER`` so that SQLite auto-increments it (``INTEGER PRIMARY KEY``)."""
    import sqlalchemy
    from cqrs.saga.storage import sqlalchemy as cqrs_sa

    metadata = sqlalchemy.MetaData()
    for table in cqrs_sa.Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    metadata.tables[cqrs_sa.SAGA_LOG_TABLE_NAME].c.id.type = sqlalchemy.Integer()
    return metadata


async def open_cqrs(path: str) -> Session:
    from cqrs.saga.storage.sqlalchemy import SAGA_EXECUTION_TABLE_NAME, SqlAlchemySagaStorage
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    async with engine.begin() as conn:
        await conn.run_sync(cqrs_sqlite_metadata().create_all)
    storage = SqlAlchemySagaStorage(
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

    return Session(
        run_one=run_one,
        check=workloads.cqrs_check("plain3"),
        close=engine.dispose,
        stats=dict,
        completed_sql=(
            f"SELECT COUNT(*) FROM {SAGA_EXECUTION_TABLE_NAME} WHERE status = 'COMPLETED'"
        ),
    )


# ---------------------------------------------------------------------------
# driving
# ---------------------------------------------------------------------------


async def open_session(config: Config, path: str) -> Session:
    if config.library == OURS:
        return await open_ours(path, config.synchronous, config.writer)
    return await open_cqrs(path)


async def drive(run_one: Callable[[], Awaitable[Any]], n: int, in_flight: int) -> list[Any]:
    """Run ``n`` sagas with at most ``in_flight`` at a time (a constant
    ``in_flight`` until fewer than that are left); return the last outcome of
    each worker that ran one (every saga's result also ends up counted in
    the file)."""
    if in_flight == 1:
        outcome = None
        for _ in range(n):
            outcome = await run_one()
        return [outcome]
    left = n

    async def worker() -> Any:
        nonlocal left
        outcome = None
        while left > 0:
            left -= 1
            outcome = await run_one()
        return outcome

    outcomes = await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
    # A worker that found nothing left (a saga that never suspends lets the
    # first worker run them all) has no outcome.
    return [outcome for outcome in outcomes if outcome is not None]


def count_completed(path: str, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        (count,) = conn.execute(sql).fetchone()
    finally:
        conn.close()
    return int(count)


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def filesystem_of(path: str) -> str:
    """``"<fstype> (<device> on <mount point>)"`` for ``path``, from
    /proc/self/mounts (Linux); "unknown" elsewhere."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                device, mount, fstype = fields[0], fields[1].replace("\\040", " "), fields[2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        return "unknown"
    return "unknown" if best is None else f"{best[2]} ({best[0]} on {best[1]})"
