"""S13 on a PostgreSQL server whose disk really fills up: a throwaway
cluster (``pg_cluster.py``, run as the ``postgres`` OS user, loopback only)
with part of its storage on a small tmpfs (``small_disk.py``), filled by a
ballast file with sagas in flight, in two variants:

* ``tables``: the store's tables live in a tablespace on the small disk. A
  write that must extend a table, a TOAST table or an index is refused with
  an ERROR (SQLSTATE 53100, "could not extend file ...: No space left on
  device"); the transaction is rolled back, the server stays up. Once space
  is freed the same store writes again. A ``recover()`` pass on the full
  disk finishes nothing and leaves nothing leased: its claim is refused, or
  each resume is refused at its first write and its lease given back.
* ``wal``: ``pg_wal`` is on the small disk (1 MiB segments). When the
  server needs a new segment and cannot make one, it PANICs and stops; it
  is started again once space is freed (as an operator would), and the
  same store object goes on. The sagas in flight at the PANIC are in doubt.

Sagas are parked at every phase — inside B's act, inside C's act (their
next write is the final one), inside B's compensation (between two
compensations), inside A's compensation (the next write is the final
COMPENSATED) — and ungated sagas run until the disk runs out under one;
then the parked ones are let go a few at a time, and sagas are started on
the full disk (their creation is the write that fails). Then the space is
freed (the server restarted for ``wal``), ``recover()`` runs, and the rule
of ``test_real_faults`` is checked with its participant ledger: every
caller was told what the journal holds, no effect the journal does not
know, recovery finishes every saga, every applied act stays or is
compensated exactly once; and no saga is left leased.

Without root (no tmpfs can be mounted) the tests are skipped, saying so;
without PostgreSQL's binaries or psycopg too (a failure under CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest_pg import require_driver, throwaway_cluster
from pg_cluster import PostgresCluster, _server_user
from small_disk import fill, mounted_tmpfs
from test_real_faults import (
    KINDS,
    FaultCtx,
    Outcome,
    StepA,
    StepB,
    StepC,
    World,
    _Step,
    check_after_recovery,
    check_fault_phase,
    drive,
    payload,
    read_pg_journals,
    recover_all,
    summary,
)

from fallback_saga import RetryPolicy, Saga, recover
from fallback_saga.errors import SagaStoreError

require_driver()

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

# Where a gated saga parks (kind, "step.action"): the next write after it is
# a step's completion, the final one, or one between two compensations.
PARKS = (
    ("ok", "B.act"), ("ok", "C.act"), ("unwind", "B.act"),
    ("unwind", "B.compensate"), ("early", "A.compensate"),
)
EACH = 4  # sagas parked at each place
WAVE = 3  # parked sagas let go at a time
FILLERS = 8  # ungated sagas at a time, until the disk runs out under one
# Two tries, no wait: the disk does not empty itself between them.
RETRY = RetryPolicy(attempts=2, delay=0, jitter=0)
# A write that finds the server gone (``wal``) waits this long for a connection.
CONNECT_TIMEOUT = 2.0


@dataclasses.dataclass
class DiskCtx(FaultCtx):
    park_at: str = ""  # "B.act", "C.act", "A.compensate" or "B.compensate"


class _Parks(_Step):
    def parks_in_act(self, ctx: FaultCtx) -> bool:
        return getattr(ctx, "park_at", "") == f"{self.name}.act"

    def parks_in_compensate(self, ctx: FaultCtx) -> bool:
        return getattr(ctx, "park_at", "") == f"{self.name}.compensate"


class DiskA(_Parks, StepA):
    pass


class DiskB(_Parks, StepB):
    pass


class DiskC(_Parks, StepC):
    pass


class DiskSaga(Saga[DiskCtx]):
    steps: ClassVar[list[Any]] = [DiskA, DiskB, DiskC]


def disk_saga(store: Any, world: World) -> DiskSaga:
    return DiskSaga(store=store, step_factory=lambda cls: cls(world), journal_retry=RETRY)


# --------------------------------------------------------------------------- the server's disk


@contextlib.contextmanager
def server_disk(size: str) -> Iterator[Path]:
    """A tmpfs of ``size``, owned by the server's OS user, in a directory it
    can reach (pytest's own temporary directories are private to root)."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk tests mount a tmpfs and need root (run as root, or in CI)")
    user = _server_user()
    parent = Path(tempfile.mkdtemp(prefix="fallback_saga-pgdisk-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        with mounted_tmpfs(parent, size) as disk:
            if user is not None:
                os.chown(disk, user.pw_uid, user.pw_gid)
            yield disk
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def tables_on(cluster: PostgresCluster, disk: Path) -> None:
    """The test database's new tables (the store's) go to a tablespace on ``disk``."""
    where = disk / "tablespace"
    where.mkdir(mode=0o700)
    shutil.chown(where, user=cluster.run_as.pw_name if cluster.run_as else None,
                 group=cluster.run_as.pw_gid if cluster.run_as else None)
    cluster.psql(f"CREATE TABLESPACE small_disk LOCATION '{where}'")
    cluster.psql(f'ALTER DATABASE "{cluster.dbname}" SET default_tablespace = small_disk')


def wal_on(cluster: PostgresCluster, disk: Path) -> None:
    """The cluster's ``pg_wal`` moved to ``disk`` (a symbolic link in its place)."""
    cluster.stop()
    wal = cluster.datadir / "pg_wal"
    moved = disk / "pg_wal"
    subprocess.run(["cp", "-a", str(wal), str(moved)], check=True, timeout=60)
    shutil.rmtree(wal)
    wal.symlink_to(moved)
    cluster.start()


def server_stopped(cluster: PostgresCluster) -> bool:
    return cluster.process is not None and cluster.process.poll() is not None


def server_log(cluster: PostgresCluster) -> str:
    return cluster.logfile.read_text(errors="replace")


# --------------------------------------------------------------------------- the scenario


@dataclasses.dataclass
class Run:
    world: World = dataclasses.field(
        default_factory=lambda: World(parked_expected=len(PARKS) * EACH)
    )
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(5353))
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    tasks: dict[str, asyncio.Task[Outcome]] = dataclasses.field(default_factory=dict)
    errors: dict[str, BaseException] = dataclasses.field(default_factory=dict)
    saga: DiskSaga | None = None

    def start(self, saga_id: str, kind: str, park_at: str = "") -> asyncio.Task[Outcome]:
        assert self.saga is not None
        ctx = DiskCtx(kind=kind, gated=bool(park_at), park_at=park_at,
                      payload=payload(self.rng, 3000))
        self.kinds[saga_id] = kind
        task = self.tasks[saga_id] = asyncio.create_task(
            drive(self.saga, ctx, saga_id, self.errors)  # type: ignore[arg-type]
        )
        return task


@contextlib.asynccontextmanager
async def pg_store(conninfo: str, schema: str) -> AsyncIterator[PostgresSagaStore]:
    store = PostgresSagaStore(conninfo, schema=schema, connect_timeout=CONNECT_TIMEOUT)
    try:
        await store.open()
        yield store
    finally:
        await store.close()


async def until_full(run: Run) -> None:
    """Ungated sagas, FILLERS at a time, until the disk runs out under one."""
    for wave in range(200):
        ids = [f"fill-{wave:03d}-{n}" for n in range(FILLERS)]
        for n, saga_id in enumerate(ids):
            run.start(saga_id, KINDS[n % 3])
        outcomes = await asyncio.gather(*(run.tasks[saga_id] for saga_id in ids))
        if any(told == "interrupted" for told, _, _ in outcomes):
            return
    raise AssertionError("the disk never filled up")


async def fill_and_go_on(
    run: Run, cluster: PostgresCluster, disk: Path, leave: int, *, wal: bool
) -> Path:
    """Park the gated sagas, fill the disk but ``leave`` bytes, run sagas until
    it is full, let the parked ones go, start some on the full disk. Returns
    the ballast file."""
    for n in range(EACH):
        for kind, park_at in PARKS:
            run.start(f"{kind}-{park_at}-{n}", kind, park_at)
    async with asyncio.timeout(60):
        await run.world.all_parked.wait()
    if wal:
        # A fresh segment: about 1 MiB of WAL goes through before the next is needed.
        await asyncio.to_thread(cluster.psql, "SELECT pg_switch_wal()")
    ballast = await asyncio.to_thread(fill, disk, leave)
    async with asyncio.timeout(60):
        await until_full(run)
    parked = sorted(run.world.parked)
    run.rng.shuffle(parked)
    for start in range(0, len(parked), WAVE):
        # Once the server is gone every write waits for a connection: the
        # rest go at once.
        wave = parked[start:] if server_stopped(cluster) else parked[start:start + WAVE]
        run.world.release(wave)
        async with asyncio.timeout(60):
            await asyncio.wait([run.tasks[saga_id] for saga_id in wave])
        if len(wave) > WAVE:
            break
    for n in range(2):  # sagas whose creation meets the full disk
        for kind in KINDS:
            run.start(f"late-{kind}-{n}", kind)
    return ballast


async def new_sagas_complete(run: Run) -> None:
    """Five new sagas on the store the disk filled under run to the end."""
    for n in range(5):
        run.start(f"after-{n}", "ok")
    async with asyncio.timeout(60):
        for n in range(5):
            assert await run.tasks[f"after-{n}"] == ("result", "completed", ""), n


def leased(conninfo: str, schema: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT saga_id, status FROM "{schema}".fallback_saga_sagas'
            # A lease given back keeps its expiry (the time it was given back).
            " WHERE lease_owner IS NOT NULL"
        ).fetchall()
    return [(str(saga_id), str(status)) for saga_id, status in rows]


async def check_recovery(run: Run, cluster: PostgresCluster, schema: str) -> list[str]:
    """The rule, before and after ``recover()`` on a freshly opened store."""
    conninfo = cluster.conninfo
    outcomes = {saga_id: task.result() for saga_id, task in run.tasks.items()}
    before = await asyncio.to_thread(read_pg_journals, conninfo, schema)
    told = summary(outcomes)
    # Not vacuous: some runs finished, the disk ran out under others.
    assert told["result completed"] + told["failed compensated"] > 0, told
    assert told["interrupted running"] + told["interrupted compensating"] > 0, told
    assert told["interrupted None"] > 0, told  # a creation met the full disk
    violations = check_fault_phase(outcomes, run.kinds, before, run.world)
    for saga_id, error in sorted(run.errors.items()):
        if not isinstance(error, SagaStoreError):
            violations.append(f"{saga_id}: interrupted by {type(error).__name__}: {error}")
    run.world.phase, run.world.open = "recovery", True
    async with pg_store(conninfo, schema) as reopened:
        report = await recover_all(reopened, disk_saga(reopened, run.world))  # type: ignore[arg-type]
    after = await asyncio.to_thread(read_pg_journals, conninfo, schema)
    violations += check_after_recovery(run.kinds, before, after, run.world, report)
    violations += [f"{saga_id} ({status}): left leased" for saga_id, status
                   in await asyncio.to_thread(leased, conninfo, schema)]
    return [f"callers were told: {dict(told)}", *violations] if violations else []


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(120)
@pytest.mark.parametrize("leave", [0, 64 * 1024], ids=["0KiB-free", "64KiB-free"])
async def test_S13_postgres_tablespace_full_refuses_writes_and_recovery_finishes(
    leave: int,
) -> None:
    schema = "full_tables"
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(server_disk("8m"))
        cluster = stack.enter_context(contextlib.contextmanager(throwaway_cluster)())
        await asyncio.to_thread(tables_on, cluster, disk)
        run = Run()
        async with pg_store(cluster.conninfo, schema) as store:
            run.saga = disk_saga(store, run.world)
            ballast = await fill_and_go_on(run, cluster, disk, leave, wal=False)
            async with asyncio.timeout(60):
                await asyncio.wait(run.tasks.values())
            assert not server_stopped(cluster), server_log(cluster)[-3000:]
            # What a caller is told when the server refused a write for want of room.
            refused = [error for error in run.errors.values()
                       if "No space left on device" in str(error)]
            assert refused, {k: str(v) for k, v in run.errors.items()}
            for error in refused:
                assert isinstance(error, SagaStoreError)
                assert error.nothing_written, error
                assert "the disk holding the PostgreSQL server's data is full" in str(error), error
            # A recovery pass on the full disk: it can finish nothing, and must
            # leave nothing leased that the pass after the disk has room would need.
            # Either the claim itself is refused (it updates the sagas' rows,
            # which may need a new page, or the free space map's first one),
            # or each claimed saga's resume is refused at its first write:
            # nothing runs past what the journal holds, every lease is given back.
            try:
                full_pass = await recover(store, [run.saga], older_than=0, limit=1000)
            except SagaStoreError as refused_claim:
                claim_refused: SagaStoreError | None = refused_claim
                said = [str(refused_claim)]
            else:
                claim_refused = None
                assert (full_pass.resumed, full_pass.compensated, full_pass.failed,
                        full_pass.skipped) == ([], [], [], []), full_pass
                assert full_pass.interrupted, full_pass
                said = [text for _, text in full_pass.interrupted]
            assert claim_refused is None or claim_refused.nothing_written, claim_refused
            for text in said:
                assert "No space left on device" in text, text
                assert "nothing of it was written" in text, text
            assert await asyncio.to_thread(leased, cluster.conninfo, schema) == []
            # The operator frees space: the same store object goes on.
            ballast.unlink()
            await new_sagas_complete(run)
        problems = await check_recovery(run, cluster, schema)
        assert problems == [], "\n".join(problems)


@pytest.mark.timeout(120)
async def test_S13_postgres_wal_full_panics_the_server_and_recovery_finishes_after_restart(
) -> None:
    schema = "full_wal"
    with contextlib.ExitStack() as stack:
        disk = stack.enter_context(server_disk("8m"))
        cluster = stack.enter_context(contextlib.contextmanager(throwaway_cluster)(
            initdb_options=["--wal-segsize=1"],
        ))
        await asyncio.to_thread(wal_on, cluster, disk)
        run = Run()
        async with pg_store(cluster.conninfo, schema) as store:
            run.saga = disk_saga(store, run.world)
            ballast = await fill_and_go_on(run, cluster, disk, 64 * 1024, wal=True)
            async with asyncio.timeout(60):
                await asyncio.wait(run.tasks.values())
            log = server_log(cluster)
            # It could not make a WAL segment: PANIC, and the postmaster gave up
            # (its crash recovery needs WAL room too).
            assert "PANIC" in log, log[-3000:]
            assert "No space left on device" in log, log[-3000:]
            assert server_stopped(cluster), log[-3000:]
            # The operator frees space and starts the server: the same store
            # object goes on, on new connections.
            ballast.unlink()
            await asyncio.to_thread(cluster.start)
            await new_sagas_complete(run)
        problems = await check_recovery(run, cluster, schema)
        assert problems == [], "\n".join(problems)
