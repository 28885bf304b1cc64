"""S13 under real faults, not simulated ones: a disk that fills up under
SQLite, a PostgreSQL server restarted — and one stopped for 40 s — with sagas
in flight.

The rule every test checks: **no effect the journal does not know about; the
caller's outcome equals the journal; after the store recovers and
``recover()`` runs, no forward act runs after a compensation of the same
saga, and every completed act either stays (the saga is COMPLETED) or is
compensated exactly once.**

The saga is ``A, B, C`` in three kinds, chosen through the context:

* ``ok``     — A, B, C: COMPLETED;
* ``unwind`` — A, B, then C fails: B and A compensated: COMPENSATED;
* ``early``  — A, then B fails: A compensated: COMPENSATED.

A gated ``ok``/``unwind`` saga parks inside B's ``act`` (after its effect),
a gated ``early`` saga inside A's ``compensate`` (after its effect, so with
COMPENSATING durable): the test holds each on an ``asyncio.Event`` of its own
while it breaks the store, then lets them go. Nothing is synchronized by
sleeping; the one wall-clock wait is the 40 s outage, which is the point of
that test.

The participant (``World``) is in this process: it records every call and,
like a real participant, applies an operation at most once per
``current_step().idempotency_key``. After the runs, the journal is read with
plain SQL (not through the library) and compared with the ledger and with
what each caller was told:

* a caller told ``SagaResult``/``SagaFailed`` finds that terminal status in
  the journal; one told ``SagaInterrupted(status=S)`` finds S there (no row
  at all for ``status=None``); nothing else may reach a caller;
* every call the participant saw has its STARTED row in the journal, and no
  ``compensate`` ran for a saga whose journal does not say COMPENSATING.

Then ``recover(store, [saga], older_than=0)`` runs on a freshly opened store,
pass after pass, and the journal and ledger must show every saga finished as
its kind says, no forward act after a compensation, every applied act either
kept (COMPLETED) or compensated exactly once, and no completed act called
again.

The PostgreSQL tests run a server of their own (``own_cluster``: they stop
it) and use the library's default journal retry with real waits (about
1.5 s). Besides the parked sagas, a stream of ungated sagas runs while the
server is broken, so that some are cut in the middle of a write (a write
whose COMMIT may have landed unseen: the in-doubt case). The outage test
runs two lanes through the same outage: a store with its defaults, and one
with ``connect_timeout=2``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest_pg import throwaway_cluster
from pg_cluster import PostgresCluster
from small_disk import fill, mounted_tmpfs

from fallback_saga import (
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaStepHandler,
    SQLiteSagaStore,
    current_step,
    recover,
)
from fallback_saga.journal import DEFAULT_JOURNAL_RETRY

KINDS = ("ok", "unwind", "early")
FINAL = {"ok": "completed", "unwind": "compensated", "early": "compensated"}
TERMINAL = ("completed", "compensated", "failed")
UNWINDING = ("compensating", "compensated", "failed")

# --------------------------------------------------------------------------- the participant


@dataclasses.dataclass(frozen=True)
class Call:
    seq: int
    saga: str
    action: str  # "act" or "compensate"
    step: str
    key: str
    kind: str  # "apply", "skip" (a repeat of an applied key) or "fail"
    phase: str  # "fault" (the first runs) or "recovery"


class World:
    """The participant's ledger, and the gates the test holds sagas on."""

    def __init__(self, *, parked_expected: int) -> None:
        self.calls: list[Call] = []
        self.applied: set[str] = set()
        self.phase = "fault"
        self.gates: dict[str, asyncio.Event] = {}
        self.parked: set[str] = set()
        self.parked_expected = parked_expected
        self.all_parked = asyncio.Event()
        if parked_expected == 0:
            self.all_parked.set()
        self.open = False  # once set, nobody parks (the recovery phase)

    def record(self, action: str, step: str, *, fail: bool = False) -> None:
        info = current_step()
        key = info.idempotency_key
        kind = "fail" if fail else ("skip" if key in self.applied else "apply")
        if kind == "apply":
            self.applied.add(key)
        self.calls.append(
            Call(len(self.calls), info.saga_id, action, step, key, kind, self.phase)
        )

    async def park(self, ctx: FaultCtx) -> None:
        if self.open or not ctx.gated:
            return
        saga_id = current_step().saga_id
        gate = self.gates.setdefault(saga_id, asyncio.Event())
        self.parked.add(saga_id)
        if len(self.parked) >= self.parked_expected:
            self.all_parked.set()
        await gate.wait()

    def release(self, saga_ids: Sequence[str] | None = None) -> None:
        for saga_id in self.gates if saga_ids is None else saga_ids:
            self.gates.setdefault(saga_id, asyncio.Event()).set()

    def of(self, saga_id: str, phase: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.saga == saga_id and phase in (None, c.phase)]


# --------------------------------------------------------------------------- the saga


@dataclasses.dataclass
class FaultCtx(SagaContext):
    kind: str = "ok"
    gated: bool = True
    payload: str = ""  # makes every journal write carry a few KB (fills a disk faster)
    trail: list[str] = dataclasses.field(default_factory=list)


class _Step(SagaStepHandler[FaultCtx, str]):
    name: ClassVar[str] = ""

    def __init__(self, world: World) -> None:
        self.world = world

    def act_fails(self, ctx: FaultCtx) -> bool:
        return False

    def parks_in_act(self, ctx: FaultCtx) -> bool:
        return False

    def parks_in_compensate(self, ctx: FaultCtx) -> bool:
        return False

    async def act(self, ctx: FaultCtx, /) -> Any:
        if self.act_fails(ctx):
            self.world.record("act", self.name, fail=True)
            raise RuntimeError(f"{self.name} declined")
        self.world.record("act", self.name)
        ctx.trail.append(self.name)
        if self.parks_in_act(ctx):
            await self.world.park(ctx)
        return self.name

    async def compensate(self, ctx: FaultCtx, /) -> None:
        self.world.record("compensate", self.name)
        ctx.trail.append(f"-{self.name}")
        if self.parks_in_compensate(ctx):
            await self.world.park(ctx)


class StepA(_Step):
    name = "A"

    def parks_in_compensate(self, ctx: FaultCtx) -> bool:
        return ctx.kind == "early"


class StepB(_Step):
    name = "B"

    def act_fails(self, ctx: FaultCtx) -> bool:
        return ctx.kind == "early"

    def parks_in_act(self, ctx: FaultCtx) -> bool:
        return ctx.kind in ("ok", "unwind")


class StepC(_Step):
    name = "C"

    def act_fails(self, ctx: FaultCtx) -> bool:
        return ctx.kind == "unwind"


class FaultSaga(Saga[FaultCtx]):
    steps: ClassVar[list[Any]] = [StepA, StepB, StepC]


def fault_saga(store: Any, world: World, journal_retry: RetryPolicy) -> FaultSaga:
    return FaultSaga(
        store=store, step_factory=lambda cls: cls(world), journal_retry=journal_retry
    )


# What a caller was told: ("result" | "failed" | "interrupted" | "error", the
# status it was told, the store's error for an interruption or the undocumented error).
Outcome = tuple[str, str | None, str]


async def drive(
    saga: FaultSaga, ctx: FaultCtx, saga_id: str,
    errors: dict[str, BaseException] | None = None,
) -> Outcome:
    """``errors``: where to keep each interruption's store error, by saga id."""
    try:
        result = await saga.run(ctx, saga_id=saga_id)
    except SagaFailed as failed:
        return "failed", failed.status.value, ""
    except SagaInterrupted as interrupted:
        if errors is not None:
            errors[saga_id] = interrupted.error
        status = None if interrupted.status is None else interrupted.status.value
        detail = f"{type(interrupted.error).__name__}: {interrupted.error}"
        if interrupted.in_doubt:
            # The last write may have landed unseen: the journal may hold this.
            landed = interrupted.status_if_landed or interrupted.status
            detail = f"{IN_DOUBT}{landed.value if landed else 'running'}) {detail}"
        return "interrupted", status, detail
    except Exception as error:  # S13: one documented exception, nothing else
        return "error", None, f"{type(error).__name__}: {error}"
    return "result", result.status.value, ""


# --------------------------------------------------------------------------- journals


@dataclasses.dataclass(frozen=True)
class Journal:
    status: str
    context: dict[str, Any]
    # (position, step, branch, action, status, attempt), in journal order
    rows: list[tuple[int, str, str, str, str, int]]

    def count(self, action: str, step: str, status: str) -> int:
        return sum(1 for r in self.rows if (r[3], r[1], r[4]) == (action, step, status))

    def steps(self, action: str, status: str) -> list[str]:
        return [r[1] for r in self.rows if r[3] == action and r[4] == status]


def read_sqlite_journals(db: Path) -> dict[str, Journal]:
    conn = sqlite3.connect(db)
    try:
        heads = conn.execute("SELECT saga_id, status, context FROM sagas").fetchall()
        rows = conn.execute(
            "SELECT saga_id, position, step, branch, action, status, attempt FROM saga_steps"
            " ORDER BY saga_id, seq"
        ).fetchall()
    finally:
        conn.close()
    return _journals(heads, rows, decode=json.loads)


def read_pg_journals(conninfo: str, schema: str) -> dict[str, Journal]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        heads = conn.execute(
            f'SELECT saga_id, status, context FROM "{schema}".fallback_saga_sagas'
        ).fetchall()
        rows = conn.execute(
            f"SELECT saga_id, position, step, branch, action, status, attempt"
            f' FROM "{schema}".fallback_saga_steps ORDER BY saga_id, seq'
        ).fetchall()
    return _journals(heads, rows, decode=lambda value: value)


def _journals(heads: Any, rows: Any, *, decode: Any) -> dict[str, Journal]:
    history: dict[str, list[tuple[int, str, str, str, str, int]]] = {}
    for saga_id, *row in rows:
        history.setdefault(saga_id, []).append(tuple(row))  # type: ignore[arg-type]
    return {
        saga_id: Journal(status, decode(context), history.get(saga_id, []))
        for saga_id, status, context in heads
    }


# --------------------------------------------------------------------------- the rule


IN_DOUBT = "in doubt (if landed: "


def landed_status(detail: str) -> str | None:
    """The status an in-doubt interruption says the journal may hold instead."""
    if not detail.startswith(IN_DOUBT):
        return None
    return detail[len(IN_DOUBT):].split(")", 1)[0]


def check_fault_phase(
    outcomes: dict[str, Outcome], kinds: dict[str, str], journals: dict[str, Journal],
    world: World,
) -> list[str]:
    """What the first runs left: callers told the journal's truth, and no
    effect the journal does not know about. Returns the violations."""
    violations: list[str] = []
    for saga_id, (told, status, detail) in sorted(outcomes.items()):
        journal = journals.get(saga_id)
        held = None if journal is None else journal.status
        calls = world.of(saga_id, "fault")
        if told == "error":
            violations.append(f"{saga_id}: the caller got an undocumented error: {detail}")
        elif told in ("result", "failed"):
            if held != status or status not in TERMINAL:
                violations.append(
                    f"{saga_id}: the caller was told {told} {status}, the journal holds {held}"
                )
        elif status is None:
            # Documented: the creation could not be confirmed, no step ran; the
            # saga is in the store only if that first write landed unseen.
            if calls:
                violations.append(f"{saga_id}: SagaInterrupted(status=None), yet it made "
                                  f"calls: {calls}")
            if journal is not None and (
                held != "running" or len(journal.rows) != 1 or not landed_status(detail)
            ):
                violations.append(f"{saga_id}: SagaInterrupted(status=None), but the journal "
                                  f"holds {held} {journal.rows}")
        elif held != status and held != landed_status(detail):
            violations.append(
                f"{saga_id}: SagaInterrupted(status={status}), but the journal holds {held} "
                f"(the store's last error: {detail})"
            )
        if journal is None:
            if calls:
                violations.append(f"{saga_id}: not in the journal, yet it made calls: {calls}")
            continue
        for (action, step), count in Counter((c.action, c.step) for c in calls).items():
            started = journal.count(action, step, "started")
            if count > started:
                violations.append(
                    f"{saga_id}: {count} call(s) of {action} {step}, {started} STARTED row(s) "
                    f"in the journal: an effect the journal does not know about"
                )
        if any(c.action == "compensate" for c in calls) and journal.status not in UNWINDING:
            violations.append(
                f"{saga_id}: compensate ran, yet the journal says {journal.status}"
            )
    return violations


def check_after_recovery(
    kinds: dict[str, str], before: dict[str, Journal], after: dict[str, Journal],
    world: World, report: dict[str, list[Any]],
) -> list[str]:
    violations: list[str] = []
    if report["skipped"]:
        violations.append(f"recovery skipped sagas: {report['skipped']}")
    bucket = {"completed": "resumed", "compensated": "compensated", "failed": "failed"}
    for saga_id, kind in sorted(kinds.items()):
        calls = world.of(saga_id)
        journal, left = after.get(saga_id), before.get(saga_id)
        if journal is None:
            if left is not None:
                violations.append(f"{saga_id}: it disappeared from the journal")
            if calls:
                violations.append(f"{saga_id}: no journal, yet calls were made: {calls}")
            continue
        if journal.status != FINAL[kind]:
            violations.append(f"{saga_id} ({kind}): ended {journal.status}, not {FINAL[kind]}")
        assert left is not None
        if journal.rows[: len(left.rows)] != left.rows:
            violations.append(f"{saga_id}: recovery rewrote the journal it found")
        if left.status not in TERMINAL and saga_id not in report.get(
            bucket.get(journal.status, "?"), []
        ):
            violations.append(
                f"{saga_id}: left {left.status}, ended {journal.status}, but recovery "
                f"did not report it so"
            )
        # -- no forward act after a compensation of the same saga
        for name, sequence in (
            ("ledger", [c.action for c in calls]),
            ("journal", [r[3] for r in journal.rows]),
        ):
            if "compensate" in sequence:
                first = sequence.index("compensate")
                if "act" in sequence[first:]:
                    violations.append(
                        f"{saga_id}: a forward act after a compensation in the {name}"
                    )
        # -- every completed act stays, or is compensated exactly once
        acts = {c.step for c in calls if c.action == "act" and c.kind == "apply"}
        undone = Counter(c.step for c in calls if c.action == "compensate" and c.kind == "apply")
        done_acts = Counter(journal.steps("act", "completed"))
        done_compensations = Counter(journal.steps("compensate", "completed"))
        if journal.status == "completed":
            if acts != {"A", "B", "C"} or [c for c in calls if c.action == "compensate"]:
                violations.append(f"{saga_id}: COMPLETED, yet the ledger says {calls}")
            if done_acts != Counter("ABC") or done_compensations:
                violations.append(f"{saga_id}: COMPLETED, yet the journal says {journal.rows}")
        elif journal.status == "compensated":
            if set(undone) != acts or any(n != 1 for n in undone.values()):
                violations.append(
                    f"{saga_id}: acts applied {sorted(acts)}, compensations applied "
                    f"{dict(undone)}"
                )
            if done_acts != done_compensations or any(n != 1 for n in done_acts.values()):
                violations.append(
                    f"{saga_id}: acts completed {dict(done_acts)}, compensated "
                    f"{dict(done_compensations)}"
                )
        # -- a completed act, or compensation, is never called again
        if left is not None:
            acted = set(left.steps("act", "completed"))
            compensated = set(left.steps("compensate", "completed"))
            again = [
                c for c in world.of(saga_id, "recovery")
                if (c.action == "act" and c.step in acted)
                or (c.action == "compensate" and c.step in compensated)
            ]
            if again:
                violations.append(f"{saga_id}: completed before recovery, called again: {again}")
    return violations


async def recover_all(store: Any, saga: FaultSaga) -> dict[str, list[Any]]:
    """``recover`` pass after pass until a pass finds nothing (at most 10)."""
    report: dict[str, list[Any]] = {"resumed": [], "compensated": [], "failed": [],
                                    "skipped": []}
    for _ in range(10):
        found = await recover(store, [saga], older_than=0, limit=1000, concurrency=16)
        report["resumed"] += found.resumed
        report["compensated"] += found.compensated
        report["failed"] += found.failed
        report["skipped"] += found.skipped
        if found.total == 0:
            break
    return report


def summary(outcomes: dict[str, Outcome]) -> Counter[str]:
    return Counter(f"{told} {status}" for told, status, _ in outcomes.values())


def payload(rng: random.Random, size: int) -> str:
    return rng.randbytes(size // 2).hex()


# --------------------------------------------------------------------------- a full disk (SQLite)

DISK_SIZE = "4m"
# Free space left once the ballast filled the disk: room for a few journal
# writes (a write is a few 4 KiB WAL frames), so that the first waves of
# sagas still get through and the disk runs out in the middle of the others.
# Each amount makes it run out at other points (with 192 KiB an unwinding
# saga stops between its two compensations; with 256 KiB one stops after a
# compensation ran, its completion unwritten).
LEFT_FREE = (64 * 1024, 192 * 1024, 256 * 1024, 512 * 1024)
WAVE = 3


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_SIZE mounted for this test (``small_disk.py``)."""
    with mounted_tmpfs(tmp_path, DISK_SIZE) as disk:
        yield disk


@pytest.mark.parametrize("left_free", LEFT_FREE, ids=[f"{n // 1024}KiB-free" for n in LEFT_FREE])
async def test_S13_full_disk_never_reports_a_status_the_journal_lacks(
    small_disk: Path, left_free: int
) -> None:
    """The SQLite database is on a small tmpfs. 30 sagas park mid-run (in an
    act, or in a compensation), the disk is filled up but for a few writes'
    room, and the sagas are let go a few at a time: the first get through,
    then the disk runs out under the others — in a forward write, in the
    write that starts the unwinding, between two compensations, in the final
    write. Sagas started on the full disk cannot even be created."""
    rng = random.Random(1313)
    db = small_disk / "sagas.db"
    kinds = {f"{kind}-{n:02d}": kind for n in range(10) for kind in KINDS}
    world = World(parked_expected=len(kinds))
    retry = RetryPolicy(attempts=2, delay=0, jitter=0)
    store = SQLiteSagaStore(db)
    saga = fault_saga(store, world, retry)
    tasks = {
        saga_id: asyncio.create_task(
            drive(saga, FaultCtx(kind=kind, payload=payload(rng, 1500)), saga_id)
        )
        for saga_id, kind in kinds.items()
    }
    async with asyncio.timeout(60):
        await world.all_parked.wait()
    ballast = fill(small_disk, left_free)
    order = list(kinds)
    rng.shuffle(order)
    for start in range(0, len(order), WAVE):
        wave = order[start : start + WAVE]
        world.release(wave)
        async with asyncio.timeout(60):
            await asyncio.wait([tasks[saga_id] for saga_id in wave])
    # Sagas that begin on the full disk.
    late = {f"late-{kind}-{n}": kind for n in range(2) for kind in KINDS}
    kinds |= late
    world.release(list(late))  # should one be created after all, it must not wait on a gate
    for saga_id, kind in late.items():
        tasks[saga_id] = asyncio.create_task(
            drive(saga, FaultCtx(kind=kind, payload=payload(rng, 1500)), saga_id)
        )
    async with asyncio.timeout(60):
        outcomes = {saga_id: await task for saga_id, task in tasks.items()}
    await store.close()

    # The disk has room again; the journal is read as the runs left it.
    ballast.unlink()
    before = read_sqlite_journals(db)
    told = summary(outcomes)
    # The test is not vacuous: some runs finished, the disk ran out under others.
    assert told["result completed"] + told["failed compensated"] > 0, told
    assert told["interrupted running"] + told["interrupted compensating"] > 0, told
    violations = check_fault_phase(outcomes, kinds, before, world)

    world.phase, world.open = "recovery", True
    async with SQLiteSagaStore(db) as reopened:
        report = await recover_all(reopened, fault_saga(reopened, world, retry))
    after = read_sqlite_journals(db)
    violations += check_after_recovery(kinds, before, after, world, report)
    assert violations == [], "\n".join([f"callers were told: {dict(told)}", *violations])


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this module's own, since these tests stop and
    restart it (skipped with the reason without server binaries or psycopg;
    a failure under CI, like every PostgreSQL test)."""
    yield from throwaway_cluster()


@pytest.fixture
def pg_server(own_cluster: PostgresCluster) -> PostgresCluster:
    """``own_cluster``, running (a test that failed half-way may have left it stopped)."""
    own_cluster.start()
    return own_cluster


@contextlib.asynccontextmanager
async def pg_store(conninfo: str, schema: str, **options: Any) -> AsyncIterator[Any]:
    from fallback_saga.store.postgres import PostgresSagaStore

    store = PostgresSagaStore(conninfo, schema=schema, **options)
    try:
        await store.open()
        yield store
    finally:
        await store.close()


# The library's default journal retry (about 1.5 s), really waiting between tries.
REAL_DEFAULT_RETRY = dataclasses.replace(DEFAULT_JOURNAL_RETRY, sleep=asyncio.sleep)


class Stream:
    """Sagas started back to back (ungated, ``in_flight`` at a time) while the
    server is being broken, so that some are caught in the middle of a write.
    Many in flight make the store group their writes (one transaction for
    many): a group whose COMMIT landed but whose answer the stop cut off is
    the in-doubt case. ``warm`` is set once ``warm_after`` of them have
    finished: the stream is then in full swing."""

    def __init__(self, lane: Lane, in_flight: int = 24, warm_after: int = 48) -> None:
        self.lane = lane
        self.gate = asyncio.Semaphore(in_flight)
        self.stopped = asyncio.Event()
        self.count = 0
        self.finished = 0
        self.warm_after = warm_after
        self.warm = asyncio.Event()
        self.task = asyncio.create_task(self._main())

    def _done(self, _: object) -> None:
        self.gate.release()
        self.finished += 1
        if self.finished >= self.warm_after:
            self.warm.set()

    async def _main(self) -> None:
        while not self.stopped.is_set():
            await self.gate.acquire()
            if self.stopped.is_set():
                self.gate.release()
                break
            self.count += 1
            kind = KINDS[self.count % 3]
            saga_id = f"stream-{kind}-{self.count:04d}"
            ctx = FaultCtx(kind=kind, gated=False, payload=payload(self.lane.rng, 200))
            self.lane.start(saga_id, ctx).add_done_callback(self._done)

    async def stop(self) -> None:
        """Start no more (the sagas already started go on)."""
        self.stopped.set()
        self.task.cancel()  # it may be waiting for a free slot
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclasses.dataclass
class Lane:
    """Sagas journaled to one schema through one store configuration."""

    name: str
    options: dict[str, Any]  # PostgresSagaStore options
    schema: str = dataclasses.field(default_factory=lambda: f"faults_{uuid.uuid4().hex[:12]}")
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(4242))
    world: World = dataclasses.field(default_factory=lambda: World(parked_expected=PARKED))
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    tasks: dict[str, asyncio.Task[Outcome]] = dataclasses.field(default_factory=dict)
    finished_at: dict[str, float] = dataclasses.field(default_factory=dict)
    saga: FaultSaga | None = None
    stream: Stream | None = None
    # Filled in by the scenario:
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    violations: list[str] = dataclasses.field(default_factory=list)
    report: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def start(self, saga_id: str, ctx: FaultCtx) -> asyncio.Task[Outcome]:
        assert self.saga is not None
        self.kinds[saga_id] = ctx.kind
        task = self.tasks[saga_id] = asyncio.create_task(drive(self.saga, ctx, saga_id))
        task.add_done_callback(
            lambda _: self.finished_at.setdefault(saga_id, time.monotonic())
        )
        return task

    @property
    def told(self) -> Counter[str]:
        return summary(self.outcomes)

    def waited(self, since: float) -> dict[str, float | None]:
        """How long each parked saga's caller waited after ``since``."""
        return {
            saga_id: (None if saga_id not in self.finished_at
                      else round(self.finished_at[saga_id] - since, 1))
            for saga_id in self.kinds if not saga_id.startswith("stream-")
        }

    def describe(self) -> str:
        return (f"lane {self.name} ({self.options or 'the defaults'}): callers were told "
                f"{dict(self.told)}; recovery {({k: len(v) for k, v in self.report.items()})}")


PARKED = 30


async def pg_scenario(cluster: PostgresCluster, lanes: list[Lane], break_server: Any) -> float:
    """In each lane, park PARKED sagas and run a stream of others; then
    ``released = await break_server(lanes)`` (it breaks the server, stops the
    streams and releases the gates); then check the rule before and after
    recovery. Returns ``released`` (when the gates were opened)."""
    conninfo = cluster.conninfo
    async with contextlib.AsyncExitStack() as stores:
        for lane in lanes:
            store = await stores.enter_async_context(
                pg_store(conninfo, lane.schema, **lane.options)
            )
            lane.saga = fault_saga(store, lane.world, REAL_DEFAULT_RETRY)
            for n in range(PARKED // 3):
                for kind in KINDS:
                    ctx = FaultCtx(kind=kind, payload=payload(lane.rng, 200))
                    lane.start(f"{kind}-{n:02d}", ctx)
        async with asyncio.timeout(60):
            for lane in lanes:
                await lane.world.all_parked.wait()
        for lane in lanes:
            lane.stream = Stream(lane)
        async with asyncio.timeout(60):
            for lane in lanes:
                await lane.stream.warm.wait()
        released: float = await break_server(lanes)
        async with asyncio.timeout(300):
            for lane in lanes:
                lane.outcomes = {saga_id: await task for saga_id, task in lane.tasks.items()}
    for lane in lanes:
        before = await asyncio.to_thread(read_pg_journals, conninfo, lane.schema)
        lane.violations = check_fault_phase(lane.outcomes, lane.kinds, before, lane.world)
        lane.world.phase, lane.world.open = "recovery", True
        async with pg_store(conninfo, lane.schema) as reopened:
            lane.report = await recover_all(
                reopened, fault_saga(reopened, lane.world, REAL_DEFAULT_RETRY)
            )
        after = await asyncio.to_thread(read_pg_journals, conninfo, lane.schema)
        lane.violations += check_after_recovery(
            lane.kinds, before, after, lane.world, lane.report
        )
    return released


async def stop_streams(lanes: list[Lane]) -> None:
    for lane in lanes:
        assert lane.stream is not None
        await lane.stream.stop()


def release(lanes: list[Lane]) -> float:
    for lane in lanes:
        lane.world.release()
    return time.monotonic()


@pytest.mark.timeout(300)
async def test_S13_postgres_restart_with_sagas_in_flight_loses_no_effect(
    pg_server: PostgresCluster,
) -> None:
    """30 sagas parked (in B's act, or in A's compensation) and a stream of
    others running while the server restarts (``pg_ctl restart -m fast``: every
    connection is cut); then the parked ones go on, on pooled connections that
    died. Every caller is told what the journal holds, and recovery finishes
    whatever was left."""

    async def restart(lanes: list[Lane]) -> float:
        await asyncio.to_thread(pg_server.restart)
        await stop_streams(lanes)
        return release(lanes)

    lane = Lane("default", {})
    await pg_scenario(pg_server, [lane], restart)
    assert lane.violations == [], "\n".join([lane.describe(), *lane.violations])


OUTAGE = 40.0


@pytest.mark.stress
@pytest.mark.timeout(480)
async def test_S13_postgres_outage_of_40s_interrupts_runs_and_recovery_finishes_them(
    pg_server: PostgresCluster,
) -> None:
    """The server is stopped for 40 s with sagas in flight: in each lane 30
    parked ones are let go while it is down (some then unwind: a step fails),
    and a stream of others is cut mid-run. With the default journal retry
    (about 1.5 s) the runs stop with ``SagaInterrupted`` during the outage,
    having done nothing the journal does not know; every caller told COMPLETED
    or COMPENSATED finds that in the journal; once the server is back, recovery
    finishes every saga.

    Two lanes share the outage: the store with its defaults, and one whose
    pool gives up on a connection after 2 s (``connect_timeout=2``)."""

    async def outage(lanes: list[Lane]) -> float:
        await asyncio.to_thread(pg_server.stop)
        await stop_streams(lanes)
        released = release(lanes)
        await asyncio.sleep(OUTAGE)  # the outage itself: the one real wait here
        await asyncio.to_thread(pg_server.start)
        return released

    lanes = [Lane("default", {}), Lane("short-connect-timeout", {"connect_timeout": 2.0})]
    released = await pg_scenario(pg_server, lanes, outage)
    problems: list[str] = []
    for lane in lanes:
        problems += [f"{lane.name}: {v}" for v in lane.violations]
        # The parked sagas were let go while the server was down: each caller
        # hears back (SagaInterrupted) within the outage, not after it.
        waited = lane.waited(released)
        late = {s: w for s, w in waited.items() if w is None or w > OUTAGE / 2}
        if late:
            problems.append(
                f"{lane.name}: {len(late)} of {len(waited)} callers let go during the outage "
                f"kept waiting past {OUTAGE / 2:.0f} s (seconds): {late}"
            )
        not_interrupted = {
            s: lane.outcomes[s] for s in waited if lane.outcomes[s][0] != "interrupted"
        }
        if not_interrupted:
            problems.append(
                f"{lane.name}: let go during the outage, yet not interrupted: {not_interrupted}"
            )
    assert problems == [], "\n".join([*(lane.describe() for lane in lanes), *problems])
