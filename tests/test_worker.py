"""Leases, heartbeats and ``RecoveryWorker`` (issue 4: "Leases and fencing").

* ``renew`` extends a current lease and refuses a lost one;
* a resumed saga heartbeats: its lease outlives the lease period while it runs;
* a lost lease stops the run at once and *without unwinding*: compensating
  would race the new owner;
* workers: each interrupted saga resumed exactly once by N workers (asyncio
  tasks on SQLite, two real processes, and PostgreSQL when it is available);
  a graceful stop lets sagas finish and releases the leases, a stop past its
  grace hands the sagas off (no compensation) to another worker; a paused
  worker is taken over and gets ``LeaseLost``.

Waiting is always on an observable condition with a bounded timeout
(``eventually``), never a fixed sleep used as synchronization.

Run as a script (``python tests/test_worker.py child DB LEDGER``), this file is
the child process of the two-process test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers_claims import ClaimsEveryName

import fallback_saga.shielding
from fallback_saga import (
    JournalEntry,
    Lease,
    LeaseLost,
    RecoveryWorker,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaNotFound,
    SagaStatus,
    SagaStepHandler,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
    StoreClosed,
    current_step,
)
from fallback_saga.recovery import LeasedRun, SagaHandedOff

pytest_plugins = ["conftest_pg"]

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- the saga


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = ""


class Ledger:
    """What the steps did: (action, step, saga id) per call, in memory or in a
    file shared by processes (one line per call, appended with O_APPEND)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.calls: list[tuple[str, str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}  # "act B" -> held until set
        self.entered: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()  # "act B": raises once its gate opens

    async def perform(self, action: str, step: str) -> None:
        saga_id = current_step().saga_id
        self.calls.append((action, step, saga_id))
        if self.path is not None:
            line = json.dumps({"action": action, "step": step, "saga": saga_id,
                               "pid": os.getpid()}) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        key = f"{action} {step}"
        self.entered.setdefault(key, asyncio.Event()).set()
        gate = self.gates.get(key)
        if gate is not None:
            await gate.wait()
        if key in self.failing:
            raise RuntimeError(f"{key} failed")

    def hold(self, key: str) -> asyncio.Event:
        gate = self.gates[key] = asyncio.Event()
        self.entered.setdefault(key, asyncio.Event())
        return gate


class _Step(SagaStepHandler[Ctx, str]):
    name: ClassVar[str] = ""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def act(self, ctx: Ctx, /) -> Any:
        await self.ledger.perform("act", self.name)
        return self.name

    async def compensate(self, ctx: Ctx, /) -> None:
        await self.ledger.perform("compensate", self.name)


class A(_Step):
    name = "A"


class B(_Step):
    name = "B"


class C(_Step):
    name = "C"


class OrderSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [A, B, C]


def order_saga(store: Any, ledger: Ledger) -> OrderSaga:
    return OrderSaga(store=store, step_factory=lambda cls: cls(ledger))


def _act(position: int, step: str, status: StepStatus) -> JournalEntry:
    return JournalEntry(position, step, "primary", "act", status, 1, None, 1.0)


async def seed(store: Any, count: int, prefix: str = "s") -> list[str]:
    """``count`` sagas interrupted inside A (a crashed process left them RUNNING)."""
    ids = [f"{prefix}{n:04d}" for n in range(count)]
    for saga_id in ids:
        await store.create(saga_id, "OrderSaga", OrderSaga.definition.fingerprint,
                           {"order_id": saga_id}, [_act(0, "A", StepStatus.STARTED)])
    return ids


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = 20.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class PausableRenewal:
    """The store as a paused worker sees it: ``renew`` hangs until resumed
    (the heartbeat cannot run, as if the process were stopped)."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self._store = store
        self.resumed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        await self.resumed.wait()
        return await self._store.renew(lease, lease_seconds)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteSagaStore]:
    async with SQLiteSagaStore(db) as store:
        yield store


def raw_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------- renew


async def test_renew_extends_a_current_lease_and_refuses_a_lost_one(
    store: SQLiteSagaStore,
) -> None:
    await seed(store, 1)
    (first,) = await store.claim(owner="w1", lease_seconds=-1, older_than=-1, limit=1)
    version = (await store.load("s0000")).version
    renewed = await store.renew(first, 120)
    assert (renewed.saga_id, renewed.owner, renewed.token) == ("s0000", "w1", first.token)
    assert renewed.expires_at >= time.time() + 100
    (summary,) = await store.list_sagas()
    assert (summary.lease_owner, summary.lease_expires_at) == ("w1", renewed.expires_at)
    record = await store.load("s0000")
    assert record.version == version  # a heartbeat is no transition
    assert await store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=1) == []

    # Once another worker claimed the saga, the old lease cannot be renewed.
    await store.renew(first, -1)  # let it expire at once
    (second,) = await store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=1)
    assert second.token == first.token + 1
    with pytest.raises(LeaseLost):
        await store.renew(first, 120)
    with pytest.raises(SagaNotFound):
        await store.renew(Lease("nope", "w1", 1, 0.0), 120)
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.renew(second, float("nan"))


# --------------------------------------------------------------------------- heartbeat


async def test_a_resumed_saga_renews_its_lease_while_it_runs(store: SQLiteSagaStore) -> None:
    await seed(store, 1)
    ledger = Ledger()
    gate = ledger.hold("act B")
    # A lease long enough that a renewal delayed by a loaded machine (an fsync
    # queued behind other tests' writes) still lands before it runs out.
    (lease,) = await store.claim(owner="w1", lease_seconds=1.0, older_than=-1, limit=1)
    leased = LeasedRun(order_saga(store, ledger), await store.load("s0000"), lease,
                       store=store, lease_seconds=1.0)
    run = asyncio.create_task(leased.run())
    await ledger.entered["act B"].wait()
    # Past the first lease's end (and more), the saga is still leased to w1 ...
    await eventually(lambda: time.time() > lease.expires_at + 0.3 and leased.renewals >= 3,
                     what="several renewals past the first expiry")
    assert await store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=1) == []
    gate.set()
    result = await run
    assert result.status is SagaStatus.COMPLETED
    assert ledger.calls == [("act", "A", "s0000"), ("act", "B", "s0000"),
                            ("act", "C", "s0000")]


async def test_a_lost_lease_stops_the_run_at_once_and_compensates_nothing(
    db: Path, store: SQLiteSagaStore
) -> None:
    """The paused runner's heartbeat resumes, learns the lease is lost, and
    stops its run — which is stuck in B with A completed — without unwinding A."""
    await seed(store, 1)
    ledger = Ledger()
    ledger.hold("act B")  # never released: only the lost lease can stop this run
    paused = PausableRenewal(store)
    (lease,) = await store.claim(owner="paused", lease_seconds=0.2, older_than=-1, limit=1)
    leased = LeasedRun(order_saga(paused, ledger), await store.load("s0000"), lease,
                       store=paused, lease_seconds=0.2)
    run = asyncio.create_task(leased.run())
    await ledger.entered["act B"].wait()

    # The lease runs out; a rescuer claims the saga and finishes it.
    async with SQLiteSagaStore(db) as other:
        rescuer = RecoveryWorker(other, [order_saga(other, Ledger())], lease=60, poll=0.02,
                                 older_than=0, owner="rescuer")
        rescuing = asyncio.create_task(rescuer.run())
        await eventually(lambda: rescuer.stats.completed == 1, what="the rescuer's run")
        await rescuer.stop()
        await rescuing

    paused.resumed.set()  # the paused worker wakes up
    with pytest.raises(LeaseLost) as caught:
        await asyncio.wait_for(run, 10)
    assert caught.value.saga_id == "s0000"
    assert leased.lost is caught.value
    # No compensation: A stays done, as the new owner left it.
    assert ledger.calls == [("act", "A", "s0000"), ("act", "B", "s0000")]
    record = await store.load("s0000")
    assert record.status is SagaStatus.COMPLETED
    assert [e.action for e in record.history] == ["act"] * len(record.history)


class Unreachable(PausableRenewal):
    """The store goes down: every write fails (not with LeaseLost)."""

    down = False

    async def append(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise SagaStoreError("the database is unreachable")
        await self._store.append(*args, **kwargs)


async def test_a_hand_off_compensates_nothing_even_when_the_store_is_unreachable(
    store: SQLiteSagaStore,
) -> None:
    """A best-effort unwinding write that merely fails would let compensation
    go on; a stopped run's writes are refused locally instead."""
    await seed(store, 1)
    ledger = Ledger()
    ledger.hold("act B")
    flaky = Unreachable(store)
    (lease,) = await store.claim(owner="w1", lease_seconds=30, older_than=-1, limit=1)
    leased = LeasedRun(order_saga(flaky, ledger), await store.load("s0000"), lease,
                       store=flaky, lease_seconds=30)
    run = asyncio.create_task(leased.run())
    await ledger.entered["act B"].wait()
    flaky.down = True
    leased.hand_off()
    with pytest.raises(SagaHandedOff):
        await asyncio.wait_for(run, 10)
    assert ledger.calls == [("act", "A", "s0000"), ("act", "B", "s0000")]


@pytest.mark.parametrize("step_fails", [False, True], ids=["step-returns", "step-fails"])
async def test_a_paused_worker_is_taken_over_and_gets_lease_lost(
    db: Path, store: SQLiteSagaStore, step_fails: bool
) -> None:
    """A worker whose heartbeat cannot run (paused) holds B past its lease; a
    second worker takes the saga over; when the first one's step returns (or
    fails), its write is refused: ``LeaseLost``, nothing compensated."""
    await seed(store, 1)
    slow = Ledger()
    gate = slow.hold("act B")
    paused = PausableRenewal(store)
    # concurrency=1: busy with this saga, the paused worker claims nothing else
    # (it would otherwise take the saga back itself once its lease ran out).
    first = RecoveryWorker(paused, [order_saga(paused, slow)], concurrency=1, lease=0.2,
                           poll=0.02, older_than=0, owner="first")  # type: ignore[arg-type]
    first_task = asyncio.create_task(first.run())
    await slow.entered["act B"].wait()

    async with SQLiteSagaStore(db) as other:
        fast = Ledger()
        second = RecoveryWorker(other, [order_saga(other, fast)], lease=60, poll=0.02,
                                older_than=0, owner="second")
        second_task = asyncio.create_task(second.run())
        await eventually(lambda: second.stats.completed == 1, what="the takeover")
        await second.stop()
        await second_task
        assert [(a, s) for a, s, _ in fast.calls] == [("act", "B"), ("act", "C")]

    if step_fails:
        slow.failing.add("act B")
    gate.set()
    await eventually(lambda: first.stats.lost == 1, what="the paused worker's LeaseLost")
    await first.stop()
    await first_task
    assert [a for a, _, _ in slow.calls] == ["act", "act"]  # A, B: nothing compensated
    record = await store.load("s0000")
    assert record.status is SagaStatus.COMPLETED
    assert "compensate" not in {e.action for e in record.history}
    assert first.stats.completed == first.stats.compensated == 0


# --------------------------------------------------------------------------- the worker


async def test_N_workers_resume_each_interrupted_saga_exactly_once(db: Path) -> None:
    async with SQLiteSagaStore(db) as seeding:
        ids = await seed(seeding, 200)
    ledger = Ledger()
    stores = [SQLiteSagaStore(db) for _ in range(4)]
    workers = [
        RecoveryWorker(s, [order_saga(s, ledger)], concurrency=8, lease=30, poll=0.02,
                       older_than=0, owner=f"w{n}")
        for n, s in enumerate(stores)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await eventually(lambda: sum(w.stats.completed for w in workers) >= 200, within=60,
                         what="200 completions")
    finally:
        for worker in workers:
            await worker.stop()
        await asyncio.gather(*tasks)
        for s in stores:
            await s.close()
    assert sum(w.stats.claimed for w in workers) == 200
    assert sum(w.stats.completed for w in workers) == 200
    assert sum(1 for w in workers if w.stats.completed) >= 2  # the work was shared
    calls = Counter((action, step, saga_id) for action, step, saga_id in ledger.calls)
    assert set(calls.values()) == {1}
    assert len(calls) == 3 * 200
    assert raw_rows(db, "SELECT DISTINCT status, fence FROM sagas") == [("completed", 1)]
    assert raw_rows(db, "SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL") == [(0,)]
    assert sorted(saga_id for _, step, saga_id in ledger.calls if step == "C") == ids


async def test_a_worker_claims_only_its_free_slots_and_wakes_up_early(
    store: SQLiteSagaStore,
) -> None:
    ledger = Ledger()
    gate = ledger.hold("act A")
    worker = RecoveryWorker(store, [order_saga(store, ledger)], concurrency=3, lease=30,
                            poll=3600, older_than=0)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: worker.stats.claimed == 0 and worker._running, what="start")
    await seed(store, 5)
    worker.wake()  # poll is an hour: only wake() makes it look now
    await eventually(lambda: worker.in_flight == 3, what="three in flight")
    assert worker.stats.claimed == 3
    (leased,) = raw_rows(store.path, "SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL")
    assert leased == (3,)
    gate.set()  # a finished saga frees a slot; the backlog is claimed without a poll
    await eventually(lambda: worker.stats.completed == 5, what="all five")
    await worker.stop()
    await task
    assert worker.stats.claimed == 5


def test_S13_a_worker_stopped_on_one_event_loop_runs_again_on_another(db: Path) -> None:
    """One worker object (made at import, say) run by two successive
    ``asyncio.run`` calls, as function-scoped test loops do: the second run
    claims and resumes, instead of failing inside asyncio with an event
    bound to the first loop."""
    ledger = Ledger()
    store = SQLiteSagaStore(db)
    worker = RecoveryWorker(store, [order_saga(store, ledger)], poll=3600, older_than=0)

    async def one_run(prefix: str) -> None:
        task = asyncio.create_task(worker.run())
        await eventually(lambda: worker._running or task.done(), what="start")
        await seed(store, 2, prefix)
        worker.wake()  # poll is an hour: only wake() makes it look now
        await eventually(lambda: task.done() or worker.stats.completed == done + 2,
                         what="both resumed")
        await worker.stop()
        await task

    done = 0
    asyncio.run(one_run("first"))
    done = 2
    asyncio.run(one_run("second"))
    asyncio.run(store.close())
    assert worker.stats.completed == 4
    assert Counter(saga for action, _, saga in ledger.calls if action == "act") == {
        f"{prefix}{n:04d}": 3 for prefix in ("first", "second") for n in range(2)
    }


async def test_S13_a_stop_asked_before_the_worker_runs_ends_that_run(
    store: SQLiteSagaStore,
) -> None:
    """docs/scaling.md's SIGTERM pattern with the signal come during startup:
    ``stop()`` called after ``create_task(worker.run())`` but before the task
    had begun returned at once ("harmless if not running"); ``run()`` then
    began, cleared the stop and claimed for ever — ``await running`` never
    returned. A stop asked while the worker is not running now ends its next
    ``run()`` at once, claiming nothing; the run after that works."""
    await seed(store, 1)
    ledger = Ledger()
    worker = RecoveryWorker(store, [order_saga(store, ledger)], poll=3600, older_than=0)
    running = asyncio.create_task(worker.run())
    await worker.stop(grace=1)  # the task has not begun yet
    await asyncio.wait_for(running, 10)
    assert ledger.calls == []
    assert worker.stats.claimed == 0
    # That stop was that run's: a stop of a stopped worker asks nothing more.
    await worker.stop()
    task = asyncio.create_task(worker.run())
    await eventually(lambda: task.done() or worker.stats.completed == 1, what="resumed")
    assert not task.done()
    await worker.stop()
    await task
    assert worker.stats.completed == 1


@pytest.mark.parametrize("when", ["before-run", "while-idle", "with-a-saga-in-flight"])
async def test_S13_a_worker_whose_store_is_closed_stops_and_says_so(
    db: Path, when: str
) -> None:
    """A closed store does not come back (``StoreClosed``): the worker said
    so once, then claimed again every poll for ever — its ``run()`` never
    ended, and nothing but one log line told that it recovered nothing. It
    now stops as ``stop()`` stops it (a saga in flight ends as its next
    write finds the store closed: interrupted, nothing compensated), and
    ``run()`` raises the ``StoreClosed``."""
    store = SQLiteSagaStore(db)
    await seed(store, 1 if when == "with-a-saga-in-flight" else 0)
    claims: list[int] = []
    claim = store.claim

    async def counted(**options: Any) -> Any:
        claims.append(options["limit"])
        return await claim(**options)

    store.claim = counted  # type: ignore[method-assign]
    ledger = Ledger()
    gate = ledger.hold("act B")
    worker = RecoveryWorker(store, [order_saga(store, ledger)], poll=3600, older_than=0)
    if when == "before-run":
        await store.close()
    running = asyncio.create_task(worker.run())
    if when == "while-idle":
        await eventually(lambda: bool(claims) or running.done(), what="a first claim")
        await store.close()
        worker.wake()  # poll is an hour: the next claim is now
    if when == "with-a-saga-in-flight":
        await asyncio.wait_for(ledger.entered["act B"].wait(), 20)
        await store.close()
        gate.set()
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(running, 20)
    assert [call for call in ledger.calls if call[0] == "compensate"] == []
    await worker.stop()  # a stop of a stopped worker: at once, and no run()'s to end
    assert not worker._stop_before_run


async def test_a_graceful_stop_lets_sagas_finish_and_releases_their_leases(
    store: SQLiteSagaStore,
) -> None:
    await seed(store, 2)
    ledger = Ledger()
    gate = ledger.hold("act B")
    worker = RecoveryWorker(store, [order_saga(store, ledger)], lease=30, poll=0.02,
                            older_than=0)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: len(ledger.calls) == 4, what="both sagas inside B")
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.05)  # not synchronization: stop() must *not* finish meanwhile
    assert not stopping.done()
    assert worker.in_flight == 2
    gate.set()
    await asyncio.wait_for(stopping, 10)
    await task
    assert worker.stats.completed == 2
    assert [s.lease_owner for s in await store.list_sagas()] == [None, None]
    assert {s.status for s in await store.list_sagas()} == {SagaStatus.COMPLETED}


async def test_a_stop_past_its_grace_hands_sagas_off_without_compensating(
    store: SQLiteSagaStore,
) -> None:
    await seed(store, 1)
    ledger = Ledger()
    ledger.hold("act B")  # never released
    worker = RecoveryWorker(store, [order_saga(store, ledger)], lease=30, poll=0.02,
                            older_than=0, owner="leaving")
    task = asyncio.create_task(worker.run())
    await ledger.entered["act B"].wait()
    await asyncio.wait_for(worker.stop(grace=0.05), 10)
    await task
    assert worker.stats.handed_off == 1
    assert ledger.calls == [("act", "A", "s0000"), ("act", "B", "s0000")]  # no compensate
    (summary,) = await store.list_sagas()
    assert summary.status is SagaStatus.RUNNING
    assert summary.lease_owner is None  # released: the next worker need not wait
    record = await store.load("s0000")
    assert "compensate" not in {e.action for e in record.history}

    # Another worker takes it at once and finishes it forward.
    after = Ledger()
    other = RecoveryWorker(store, [order_saga(store, after)], lease=30, poll=0.02,
                           older_than=0)
    other_task = asyncio.create_task(other.run())
    await eventually(lambda: other.stats.completed == 1, what="the hand-over")
    await other.stop()
    await other_task
    assert [(a, s) for a, s, _ in after.calls] == [("act", "B"), ("act", "C")]


async def test_a_cancelled_worker_hands_its_sagas_off(store: SQLiteSagaStore) -> None:
    await seed(store, 1)
    ledger = Ledger()
    ledger.hold("act B")
    worker = RecoveryWorker(store, [order_saga(store, ledger)], lease=30, poll=0.02,
                            older_than=0)
    task = asyncio.create_task(worker.run())
    await ledger.entered["act B"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert worker.stats.handed_off == 1
    assert worker.in_flight == 0
    (summary,) = await store.list_sagas()
    assert (summary.status, summary.lease_owner) == (SagaStatus.RUNNING, None)


async def test_the_worker_reports_unknown_sagas_as_skipped(store: SQLiteSagaStore) -> None:
    """On a store whose ``claim`` cannot filter by name (a store of one's own;
    the built-in ones claim only the worker's names: test_mixed_fleet.py)."""
    claiming_all = ClaimsEveryName(store)
    await store.create("x1", "NoSuchSaga", "f", {}, [_act(0, "A", StepStatus.STARTED)])
    worker = RecoveryWorker(claiming_all, [order_saga(claiming_all, Ledger())], lease=30,
                            poll=0.02, older_than=0)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: worker.stats.skipped == 1, what="the skip")
    await worker.stop()
    await task
    assert worker.stats.claimed == 1


def test_the_worker_validates_its_arguments(db: Path) -> None:
    store = SQLiteSagaStore(db)
    with pytest.raises(ValueError, match="concurrency"):
        RecoveryWorker(store, [], concurrency=0)
    with pytest.raises(ValueError, match="poll"):
        RecoveryWorker(store, [], poll=0)
    with pytest.raises(ValueError, match="lease"):
        RecoveryWorker(store, [], lease=-1)
    # An int too large for a float was an OverflowError naming nothing.
    with pytest.raises(ValueError, match="lease must be a finite number of seconds"):
        RecoveryWorker(store, [], lease=10**400)
    # More than a store's INTEGER/bigint: every claim failed, for ever.
    with pytest.raises(ValueError, match=re.escape("concurrency must be at most 2**63 - 1")):
        RecoveryWorker(store, [], concurrency=2**63)
    with pytest.raises(ValueError, match="two sagas"):
        RecoveryWorker(store, [order_saga(store, Ledger()), order_saga(store, Ledger())])
    with pytest.raises(ValueError, match="not to the store being recovered"):
        RecoveryWorker(store, [order_saga(SQLiteSagaStore(db.with_suffix(".other")), Ledger())])
    with pytest.raises(TypeError, match="cannot be recovered"):
        RecoveryWorker(object(), [])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- processes


async def _child(db: str, ledger_path: str) -> None:
    async with SQLiteSagaStore(db) as store:
        await store.open()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        worker = RecoveryWorker(store, [order_saga(store, Ledger(Path(ledger_path)))],
                                concurrency=4, lease=30, poll=0.02, older_than=0)
        task = asyncio.create_task(worker.run())

        async def none_left() -> bool:
            return not await store.list_sagas(status=SagaStatus.RUNNING, limit=1)

        await eventually(none_left, within=60, what="no running saga left")
        await worker.stop()
        await task
        print(json.dumps(dataclasses.asdict(worker.stats)), flush=True)


def test_two_worker_processes_resume_each_saga_exactly_once(tmp_path: Path) -> None:
    db, ledger = tmp_path / "sagas.db", tmp_path / "ledger.jsonl"

    async def seeding() -> list[str]:
        async with SQLiteSagaStore(db) as store:
            return await seed(store, 120)

    ids = asyncio.run(seeding())
    command = [sys.executable, str(HERE), "child", str(db), str(ledger)]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:  # go, both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(s["claimed"] for s in stats) == sum(s["completed"] for s in stats) == 120
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    calls = Counter((line["action"], line["step"], line["saga"]) for line in lines)
    assert len(calls) == 3 * 120
    assert set(calls.values()) == {1}
    by_saga = {(line["saga"], line["pid"]) for line in lines}
    assert len(by_saga) == 120  # every saga was driven by one process only
    assert raw_rows(db, "SELECT DISTINCT status, fence FROM sagas") == [("completed", 1)]
    assert sorted({line["saga"] for line in lines}) == ids


# --------------------------------------------------------------------------- PostgreSQL


async def test_postgres_N_workers_resume_each_interrupted_saga_exactly_once(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as seeding:
        await seed(seeding, 100)
    ledger = Ledger()
    stores = [PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=4)
              for _ in range(3)]
    for s in stores:
        await s.open()
    workers = [RecoveryWorker(s, [order_saga(s, ledger)], concurrency=8, lease=30,
                              poll=0.02, older_than=0) for s in stores]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await eventually(lambda: sum(w.stats.completed for w in workers) >= 100, within=60,
                         what="100 completions")
    finally:
        for worker in workers:
            await worker.stop()
        await asyncio.gather(*tasks)
        for s in stores:
            await s.close()
    assert sum(w.stats.claimed for w in workers) == 100
    calls = Counter(ledger.calls)
    assert len(calls) == 3 * 100
    assert set(calls.values()) == {1}


async def test_postgres_heartbeat_and_lost_lease(pg_conninfo: str, pg_schema: str) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await seed(store, 1)
        ledger = Ledger()
        gate = ledger.hold("act B")
        (lease,) = await store.claim(owner="w1", lease_seconds=0.3, older_than=-1, limit=1)
        leased = LeasedRun(order_saga(store, ledger), await store.load("s0000"), lease,
                           store=store, lease_seconds=0.3)
        run = asyncio.create_task(leased.run())
        await ledger.entered["act B"].wait()
        await eventually(lambda: leased.renewals >= 3, what="renewals")
        assert await store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=1) == []
        gate.set()
        assert (await run).status is SagaStatus.COMPLETED


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    asyncio.run(_child(sys.argv[2], sys.argv[3]))


# --------------------------------------------------------------------------- deferred children


class Pay(Saga[Ctx]):
    """A child saga (its parent's ``SubSaga`` step named ``Pay``)."""

    steps: ClassVar[list[Any]] = [A(Ledger())]


def _paying_parent() -> type[Saga[Ctx]]:
    from fallback_saga import SubSaga

    class Paying(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [SubSaga(Pay, context=lambda c: Ctx(c.order_id), name="Pay")]

    return Paying


async def _child_whose_parent_runs_elsewhere(store: Any) -> None:
    """``p1`` (its child ``p1/Pay`` inside A) as a crash left them, the parent
    leased by another worker now: the child is its to drive."""
    paying = _paying_parent()
    await store.create("p1/Pay", "Pay", Pay.definition.fingerprint, {"order_id": "p1"},
                       [_act(0, "A", StepStatus.STARTED)])
    await store.create("p1", "Paying", paying.definition.fingerprint, {"order_id": "p1"},
                       [_act(0, "Pay", StepStatus.STARTED)])
    await store.claim_saga("p1", owner="elsewhere", lease_seconds=60)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_deferred_child_is_left_out_of_claims_but_its_parent_can_lease_it(
    kind: str, db: Path, request: pytest.FixtureRequest
) -> None:
    """A recovery pass that finds a child whose parent is in flight defers it:
    the lease goes back, and the child stays out of ``claim`` for the
    deferral (claimed again at once, a worker would spin on it) — while its
    parent's driver can still lease it by id at any moment."""
    from fallback_saga import recover

    if kind == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        store: Any = PostgresSagaStore(request.getfixturevalue("pg_conninfo"),
                                       schema=request.getfixturevalue("pg_schema"))
    else:
        store = SQLiteSagaStore(db)
    async with store:
        await _child_whose_parent_runs_elsewhere(store)
        report = await recover(store, [_paying_parent(), Pay], older_than=0, lease=30)
        assert report.deferred == ["p1/Pay"]
        assert await store.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        lease = await store.claim_saga("p1/Pay", owner="the parent's driver", lease_seconds=30)
        assert lease.owner == "the parent's driver"
        (child,) = [s for s in await store.list_sagas() if s.saga_id == "p1/Pay"]
        assert child.lease_owner == "the parent's driver"


async def test_a_worker_spins_on_no_deferred_child_and_starves_no_other_saga(
    store: SQLiteSagaStore,
) -> None:
    """One free slot, an older child whose parent runs elsewhere, and an
    interrupted saga: the worker defers the child once and goes on to the
    saga, instead of claiming the child again and again."""
    await _child_whose_parent_runs_elsewhere(store)
    await seed(store, 1)  # updated after the child: claimed after it
    ledger = Ledger()
    worker = RecoveryWorker(store, [order_saga(store, ledger), _paying_parent(), Pay],
                            concurrency=1, lease=30, poll=0.02, older_than=0)
    running = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.stats.completed == 1, what="the other saga")
    finally:
        await worker.stop()
        await running
    assert worker.stats.deferred == 1
    assert (await store.load("p1/Pay")).status is SagaStatus.RUNNING  # its parent's to drive


async def test_S8_a_cancelled_recover_pass_returns_once_its_sagas_have_unwound(
    store: SQLiteSagaStore,
) -> None:
    """``recover()`` resumes one saga (the other waits for a free slot) and is
    cancelled while the first is in a step: that saga unwinds (S8), and the
    pass's ``CancelledError`` reaches the caller only once it has — a caller
    that closes the store then must not cut a compensation off half-way."""
    from fallback_saga import recover

    await seed(store, 2)
    ledger = Ledger()
    ledger.hold("act B")  # never released: the cancellation stops it
    undo = ledger.hold("compensate A")
    passing = asyncio.create_task(
        recover(store, [order_saga(store, ledger)], older_than=0, concurrency=1)
    )
    unwound_when_done: list[bool] = []
    passing.add_done_callback(lambda _: unwound_when_done.append(undo.is_set()))
    await ledger.entered["act B"].wait()
    passing.cancel()
    await ledger.entered["compensate A"].wait()
    undo.set()
    with pytest.raises(asyncio.CancelledError):
        await passing
    assert unwound_when_done == [True]
    statuses = {s.saga_id: s.status for s in await store.list_sagas()}
    assert SagaStatus.COMPENSATED in statuses.values()


class OutcomeRecorder:
    """A listener that keeps every ``recovery_outcome`` it is told."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str | None, str, str | None]] = []

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        self.outcomes.append((saga_id, saga_name, outcome, reason))


async def test_S13_a_cancelled_recover_pass_reports_the_status_its_saga_unwound_to(
    store: SQLiteSagaStore,
) -> None:
    """A saga that ``recover()`` resumed unwinds when the pass is cancelled
    (S8). Its ``recovery_outcome`` is then the status the journal now holds
    (``compensated``), not ``handed_off``: nothing was handed to anyone."""
    from fallback_saga import recover

    await seed(store, 1)
    ledger = Ledger()
    ledger.hold("act B")  # never released: the cancellation stops it
    told = OutcomeRecorder()
    passing = asyncio.create_task(
        recover(store, [order_saga(store, ledger)], older_than=0, listeners=[told])
    )
    await ledger.entered["act B"].wait()
    passing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await passing
    [saga] = await store.list_sagas()
    assert saga.status is SagaStatus.COMPENSATED
    assert told.outcomes == [(saga.saga_id, "OrderSaga", "compensated", None)]


async def test_S13_a_cancelled_recover_pass_releases_the_sagas_it_had_not_started(
    store: SQLiteSagaStore,
) -> None:
    """``recover()`` claims two sagas and resumes one (concurrency 1); it is
    cancelled meanwhile. The saga still waiting for a free slot never ran:
    its lease is released, so that the next pass claims it at once rather
    than after the lease expires."""
    from fallback_saga import recover

    await seed(store, 2)
    ledger = Ledger()
    ledger.hold("act B")
    passing = asyncio.create_task(
        recover(store, [order_saga(store, ledger)], older_than=0, concurrency=1, lease=3600)
    )
    await ledger.entered["act B"].wait()
    passing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await passing
    waiting = [s.saga_id for s in await store.list_sagas() if s.status is SagaStatus.RUNNING]
    assert len(waiting) == 1
    [lease] = await store.claim(owner="next", lease_seconds=60, older_than=0, limit=10)
    assert lease.saga_id == waiting[0]


class ProcessDies(BaseException):
    """A step's BaseException that no saga handles (as SystemExit would be)."""


async def test_a_recover_pass_that_dies_in_two_sagas_raises_once_and_leaks_no_task_error(
    store: SQLiteSagaStore,
) -> None:
    """Two resumed sagas each raise a ``BaseException`` out of a step. The
    pass raises the first; the other's is not left unretrieved for asyncio
    to log ("Task exception was never retrieved") when its task is freed."""
    import gc

    from fallback_saga import recover

    class Dying(_Step):
        name = "A"

        async def act(self, ctx: Ctx, /) -> Any:
            await asyncio.sleep(0)
            raise ProcessDies(ctx.order_id)

    await seed(store, 2)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    # This test's loop's handler (pytest-asyncio gives each test a loop):
    # another test's task, freed at the gc.collect() below, is reported to its
    # own loop's handler, not counted here.
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        dying = OrderSaga(
            store=store, step_factory=lambda cls: (Dying if cls is A else cls)(Ledger())
        )
        with pytest.raises(ProcessDies):
            await recover(store, [dying], older_than=0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


async def test_a_deferred_child_is_told_as_deferred_and_logged_as_routine(
    store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``deferred`` is one of the documented outcomes (SagaListener's
    ``recovery_outcome``), and ``LoggingListener`` logs it as routine, at its
    level — not as a WARNING an operator must look into."""
    import logging

    from fallback_saga import LoggingListener, SagaListener, recover

    documented = SagaListener.recovery_outcome.__doc__ or ""
    told = OutcomeRecorder()
    caplog.set_level(logging.INFO, logger="fallback_saga")
    await _child_whose_parent_runs_elsewhere(store)
    await recover(store, [_paying_parent(), Pay], older_than=0,
                  listeners=[told, LoggingListener()])
    assert [(saga_id, outcome) for saga_id, _, outcome, _ in told.outcomes] == [
        ("p1/Pay", "deferred")
    ]
    assert "``deferred``" in documented
    [line] = [r for r in caplog.records if "p1/Pay" in r.getMessage()]
    assert line.levelno == logging.INFO


# --------------------------------------------------------------------------- a store that is down


class ClaimOutage:
    """A store whose ``claim`` does what the test plans, one claim at a time:
    ``"down"`` raises, ``"up"`` finds nothing to do. Everything else is the
    real store's."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self._store = store
        self.plan: asyncio.Queue[str] = asyncio.Queue()
        self.claimed: asyncio.Queue[str] = asyncio.Queue()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, **kwargs: Any) -> list[Lease]:
        outcome = await self.plan.get()
        try:
            if outcome == "down":
                raise SagaStoreError("the database is unreachable")
            return []
        finally:
            self.claimed.put_nowait(outcome)


async def test_S13_a_worker_polling_a_store_that_is_down_warns_once_per_outage(
    store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker polls every ``poll`` seconds for as long as the store is down
    — hours, at 5 s, are thousands of claims: one warning says so, not one
    per poll, and one line says when claims work again."""
    caplog.set_level(logging.INFO, logger="fallback_saga")
    outage = ClaimOutage(store)
    worker = RecoveryWorker(outage, [order_saga(outage, Ledger())], poll=0.001)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    plan = ["down"] * 50 + ["up"] * 3 + ["down"] * 20 + ["up"]
    for outcome in plan:
        outage.plan.put_nowait(outcome)
        assert await outage.claimed.get() == outcome
    stopping = asyncio.create_task(worker.stop())
    outage.plan.put_nowait("up")  # the claim the loop was waiting in
    await stopping
    await task
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "claim" in r.getMessage()]
    assert [level for level, _ in lines] == ["WARNING", "INFO", "WARNING", "INFO"]
    assert "SagaStoreError: the database is unreachable" in lines[0][1]
    assert "every 0.001 s" in lines[0][1]


# --------------------------------------------------------------------------- skipped sagas


class OutcomeSignal(OutcomeRecorder):
    """An ``OutcomeRecorder`` that a test can await: each outcome sets ``told``."""

    def __init__(self) -> None:
        super().__init__()
        self.told = asyncio.Event()

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        super().recovery_outcome(saga_id, saga_name, outcome, reason)
        self.told.set()

    async def until(self, outcome: str, *, at_most: int) -> None:
        """Wait until ``outcome`` is told, failing once ``at_most`` outcomes
        came without it (a worker spinning on other sagas)."""
        while not any(told == outcome for _, _, told, _ in self.outcomes):
            assert len(self.outcomes) < at_most, (
                f"no {outcome!r} in {at_most} outcomes: {self.outcomes}")
            self.told.clear()
            await asyncio.wait_for(self.told.wait(), 60)  # a safety net, not a sync


def _a_store(kind: str, db: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        return PostgresSagaStore(request.getfixturevalue("pg_conninfo"),
                                 schema=request.getfixturevalue("pg_schema"))
    return SQLiteSagaStore(db)


class NoSuchSaga(OrderSaga):
    """A saga of a name the workers are not given (until one is)."""


async def _two_sagas_no_worker_resumes(store: Any) -> list[str]:
    """The oldest sagas: one of a name the worker is not given, one whose
    definition changed since it started (until an operator acts, both are
    skipped)."""
    await store.create("x-unknown", "NoSuchSaga", NoSuchSaga.definition.fingerprint,
                       {"order_id": "x"},
                       [_act(0, "A", StepStatus.STARTED)])
    await store.create("x-changed", "OrderSaga", "an older fingerprint", {"order_id": "x"},
                       [_act(0, "A", StepStatus.STARTED)])
    return ["x-changed", "x-unknown"]


def _skip_warnings(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    return Counter(
        saga_id for record in caplog.records for saga_id in ("x-unknown", "x-changed")
        if record.levelno == logging.WARNING and f"skipped saga {saga_id}" in record.getMessage()
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_S12_skipped_sagas_starve_no_due_saga_and_are_not_reclaimed_every_poll(
    kind: str, db: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """As many skipped sagas as a claim takes, older than a saga the worker
    can resume: each is skipped (and warned about) once, then kept out of
    claims for the worker's lease — released, they were the oldest again and
    the worker claimed them on every poll, logging the same warning each
    time and never reaching the other saga. An operator still leases one at
    once by id (``Saga.resume``)."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    told = OutcomeSignal()
    async with _a_store(kind, db, request) as shared:
        store = ClaimsEveryName(shared)  # a name not given is claimed (and skipped) too
        skipped = await _two_sagas_no_worker_resumes(store)
        await seed(store, 1)  # newer than both: claimed after them
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=2,
                                lease=30, poll=3600, older_than=0, listeners=[told])
        started = time.time()
        running = asyncio.create_task(worker.run())
        try:
            await told.until("completed", at_most=10)
        finally:
            await worker.stop()
            await running
        assert sorted(s for s, _, o, _ in told.outcomes if o == "skipped") == skipped
        assert worker.stats.skipped == 2
        assert _skip_warnings(caplog) == Counter(skipped)
        # Out of claims, for a bounded time: the worker's lease.
        assert await store.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        for saga_id in skipped:
            state = await store.lease_state(saga_id)
            assert state.owner is None
            assert started < state.expires_at <= time.time() + 30 + 1
        lease = await store.claim_saga("x-changed", owner="an operator", lease_seconds=30)
        assert lease.owner == "an operator"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_S12_a_row_the_workers_claim_cannot_lease_is_told_once_per_lease(
    kind: str, db: Path, request: pytest.FixtureRequest
) -> None:
    """A row the claim cannot lease (a fence at the largest integer) never
    reaches a resume, so the worker's listeners were never told of it (only
    SQLite's log line named it; PostgreSQL's claim left it out without a
    word). Told as skipped, with why — once per the worker's lease, though
    every claim meets it again (here one claim per saga: concurrency 1)."""
    told = OutcomeSignal()
    async with _a_store(kind, db, request) as store:
        await store.create("a-bad", "OrderSaga", OrderSaga.definition.fingerprint,
                           {"order_id": "a-bad"}, [_act(0, "A", StepStatus.STARTED)])
        if kind == "postgres":
            import psycopg

            with psycopg.connect(request.getfixturevalue("pg_conninfo"),
                                 autocommit=True) as conn:
                conn.execute("SELECT set_config('search_path', %s, false)",
                             (request.getfixturevalue("pg_schema"),))
                conn.execute("UPDATE fallback_saga_sagas SET fence = 9223372036854775807"
                             " WHERE saga_id = 'a-bad'")
        else:
            with contextlib.closing(sqlite3.connect(db)) as conn, conn:
                conn.execute("UPDATE sagas SET fence = 9223372036854775807, updated_at = 0"
                             " WHERE saga_id = 'a-bad'")
        await seed(store, 3)
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=1,
                                lease=30, poll=3600, older_than=0, listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            await _outcomes_until(told, "completed", 3, at_most=10)
        finally:
            await worker.stop()
            await running
    skipped = [(saga_id, name, reason) for saga_id, name, outcome, reason in told.outcomes
               if outcome == "skipped"]
    assert skipped == [("a-bad", None, "its row is unreadable: its fence is too large to be "
                                       "counted on")]
    assert worker.stats.skipped == 1
    assert worker.stats.completed == 3


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_S12_a_saga_a_worker_skipped_is_the_operators_at_once_and_warned_again_later(
    kind: str, db: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Kept out of the workers' claims, a skipped saga is still an operator's
    at once: ``recover`` lists it (and resumes it with
    ``allow_changed_definition``). Once its time out of claims has run out,
    a worker that knows its name resumes it, and one that does not claims it
    and warns about it again."""
    from fallback_saga import recover

    caplog.set_level(logging.WARNING, logger="fallback_saga")
    told = OutcomeSignal()
    async with _a_store(kind, db, request) as shared:
        store = ClaimsEveryName(shared)  # a name not given is claimed (and skipped) too
        await _two_sagas_no_worker_resumes(store)
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=2,
                                lease=30, poll=3600, older_than=0, listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            while len(told.outcomes) < 2:
                told.told.clear()
                await asyncio.wait_for(told.told.wait(), 60)
        finally:
            await worker.stop()
            await running
        assert _skip_warnings(caplog) == Counter(["x-unknown", "x-changed"])
        assert await store.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        # The operator's pass: both are seen; the override resumes the changed one.
        report = await recover(store, [order_saga(store, Ledger())], older_than=0,
                               allow_changed_definition=True)
        assert report.resumed == ["x-changed"]
        assert [saga_id for saga_id, _ in report.skipped] == ["x-unknown"]
        # Released by that pass, or its time out of claims run out: claimed again,
        # and warned about again by a worker that still does not know it ...
        lease = await store.claim_saga("x-unknown", owner="t", lease_seconds=30)
        await store.defer(lease, -1)
        told = OutcomeSignal()
        again = RecoveryWorker(store, [order_saga(store, Ledger())], poll=3600, older_than=0,
                               listeners=[told])
        running = asyncio.create_task(again.run())
        try:
            await told.until("skipped", at_most=1)
        finally:
            await again.stop()
            await running
        assert _skip_warnings(caplog) == Counter(["x-unknown", "x-unknown", "x-changed"])

        # ... and resumed by one that knows it.
        lease = await store.claim_saga("x-unknown", owner="t", lease_seconds=30)
        await store.defer(lease, -1)
        told = OutcomeSignal()
        knowing = RecoveryWorker(store, [NoSuchSaga(store=store, step_factory=lambda c: c(
            Ledger()))], poll=3600, older_than=0, listeners=[told])
        running = asyncio.create_task(knowing.run())
        try:
            await told.until("completed", at_most=1)
        finally:
            await knowing.stop()
            await running


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_S12_a_claim_of_deferred_sagas_takes_no_leased_nor_young_saga(
    kind: str, db: Path, request: pytest.FixtureRequest
) -> None:
    """``claim(deferred=True)`` (an operator's pass) adds the sagas ``defer``
    keeps out of claims — and nothing else: not a saga another worker holds,
    nor one not yet ``older_than`` old, nor a finished one."""
    async with _a_store(kind, db, request) as store:
        await seed(store, 4)
        held = await store.claim_saga("s0001", owner="elsewhere", lease_seconds=60)
        assert held.owner == "elsewhere"
        deferred = await store.claim_saga("s0002", owner="w", lease_seconds=60)
        await store.defer(deferred, 60)
        done = await store.claim_saga("s0003", owner="w", lease_seconds=60)
        await store.append("s0003", [], status=SagaStatus.COMPLETED, fence=done)
        await store.defer(done, 60)
        # s0000: never leased, and not an hour old.
        assert await store.claim(owner="o", lease_seconds=30, older_than=3600,
                                 limit=10) == []
        taken = await store.claim(owner="o", lease_seconds=30, older_than=3600, limit=10,
                                  deferred=True)
        assert [lease.saga_id for lease in taken] == ["s0002"]
        assert taken[0].token == deferred.token + 1
        with pytest.raises(TypeError, match="deferred must be a bool"):
            await store.claim(owner="o", lease_seconds=30, older_than=0, limit=1,
                              deferred="yes")


class _DriverSwallowsCancellation(SQLiteSagaStore):
    """A store whose driver turns a cancellation that lands in a claim, or in
    listening for work, into an error of its own, as database drivers do (a
    connection given up half-way: ``OperationalError``, wrapped as
    ``SagaStoreError``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.waiting = asyncio.Event()

    async def _cancelled_into_an_error(self) -> None:
        self.waiting.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if self.answers:
                return  # retried, and answered: the cancellation is gone
            raise SagaStoreError("the connection was lost") from None

    answers = False

    async def claim(self, **kwargs: Any) -> list[Lease]:  # type: ignore[override]
        await self._cancelled_into_an_error()
        return []

    async def hand_off(self, lease: Lease) -> None:
        await self.release(lease)

    async def work_notifications(self) -> AsyncIterator[str]:
        await self._cancelled_into_an_error()
        yield ""


@pytest.mark.parametrize("where", ["claim", "claim answered", "listen", "listen answered"])
async def test_S8_a_worker_cancelled_in_a_call_whose_driver_swallows_it_stops(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task running ``worker.run()`` is cancelled (the loop's end cancels
    every task left) while the worker waits on its store, whose driver turns
    the cancellation into an error: the worker still stops. It took the error
    for a store outage and polled on for ever, and ``asyncio.run`` never
    returned. (A claim on its way is given ``CLAIM_GRACE`` to land before
    the cancellation reaches it: none here, this one never lands.)"""
    monkeypatch.setattr(fallback_saga.shielding, "CLAIM_GRACE", 0.0)
    store = _DriverSwallowsCancellation(tmp_path / "w.db")
    store.answers = where.endswith("answered")
    if where.startswith("listen"):
        # Claims answer at once; the listener is the one waiting on the driver.
        async def no_work(**kwargs: Any) -> list[Lease]:
            return []

        store.claim = no_work  # type: ignore[method-assign]
    worker = RecoveryWorker(store, [order_saga(store, Ledger())], poll=0.01)
    running = asyncio.get_running_loop().create_task(worker.run())
    await store.waiting.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a bound, not a wait: it fails the test
            await running
    await store.close()


def run_and_look(
    worker: RecoveryWorker, look: Callable[[], Any]
) -> tuple[Callable[[], Awaitable[None]], list[Any]]:
    """``worker.run``, and a list that gets what ``look()`` says the moment
    ``run()`` returns or raises (before anything else runs)."""
    seen: list[Any] = []

    async def run() -> None:
        try:
            await worker.run()
        finally:
            seen.append(look())

    return run, seen


class _SlowToStopListening(SQLiteSagaStore):
    """A store listening for work whose listening takes loop rounds to end
    once cancelled, as a driver's does (PostgreSQL: UNLISTEN, then the
    connection's goodbye): ``unlistening`` set as it begins, ``closed`` once
    it has ended — after ``goodbye`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.listening = asyncio.Event()
        self.unlistening = asyncio.Event()
        self.goodbye = asyncio.Event()
        self.closed = False

    async def hand_off(self, lease: Lease) -> None:
        await self.release(lease)

    async def work_notifications(self) -> AsyncIterator[str]:
        try:
            self.listening.set()
            yield ""
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self.unlistening.set()
            await self.goodbye.wait()
            self.closed = True


@pytest.mark.parametrize("how", ["stop", "cancelled twice", "anyio scope"])
async def test_S8_a_worker_returns_once_its_listener_has_stopped_listening(
    tmp_path: Path, how: str
) -> None:
    """``run()`` cancels its helpers as it ends and waits until they have
    ended, however often it is cancelled meanwhile (a second
    ``task.cancel()``; an anyio scope, at every await): returned before,
    the listener's goodbye ran on after it — on a connection the caller
    may close, on a loop that may be closing. (A worker's watch ends in one
    step once cancelled; a listener's end takes round trips.)"""
    store = _SlowToStopListening(tmp_path / "w.db")
    worker = RecoveryWorker(store, [order_saga(store, Ledger())], poll=3600, older_than=0)
    run, closed_when_run_returned = run_and_look(worker, lambda: store.closed)
    scope: Any = None
    if how == "anyio scope":
        from test_late_renewal import InAnyioScope

        scope = InAnyioScope(run)
        running = scope.task
    else:
        running = asyncio.get_running_loop().create_task(run())
    async with asyncio.timeout(30):  # a bound, not a wait: it fails the test
        await store.listening.wait()
        if how == "stop":
            stopping = asyncio.get_running_loop().create_task(worker.stop())
        elif how == "cancelled twice":
            running.cancel()
        else:
            scope.cancel()
        await store.unlistening.wait()
        if how == "cancelled twice":
            running.cancel()  # again, while it waits for its listener
        store.goodbye.set()
        if how == "stop":
            await stopping
            await running
        elif how == "cancelled twice":
            with pytest.raises(asyncio.CancelledError):
                await running
        else:
            assert await running  # the scope caught its cancellation: nothing else escaped
    assert closed_when_run_returned == [True]
    await store.close()


# --------------------------------------------------------------------------- poison sagas


def _refusing_appends_of(store: Any, victim: str) -> Any:
    """``store``, whose journal refuses every write of saga ``victim`` (a row
    the database rejects: a trigger, a constraint, a page it cannot write),
    and counts the claims that hand that saga out."""
    append, claim = store.append, store.claim
    submit_append = getattr(store, "submit_append", None)  # optional
    store.victim_claims = 0

    async def refused_append(saga_id: str, *args: Any, **kwargs: Any) -> None:
        if saga_id == victim:
            raise SagaStoreError(f"the database refuses saga {victim}'s rows")
        await append(saga_id, *args, **kwargs)

    def refused_submit(saga_id: str, *args: Any) -> asyncio.Future[None]:
        if saga_id != victim:
            assert submit_append is not None
            return submit_append(saga_id, *args)  # type: ignore[no-any-return]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_exception(SagaStoreError(f"the database refuses saga {victim}'s rows"))
        return future

    async def counted_claim(**kwargs: Any) -> list[Lease]:
        leases: list[Lease] = await claim(**kwargs)
        store.victim_claims += sum(lease.saga_id == victim for lease in leases)
        return leases

    store.append, store.claim = refused_append, counted_claim
    if submit_append is not None:
        store.submit_append = refused_submit
    return store


async def _outcomes_until(told: OutcomeSignal, outcome: str, count: int, *, at_most: int) -> None:
    while sum(each == outcome for _, _, each, _ in told.outcomes) < count:
        assert len(told.outcomes) < at_most, (
            f"fewer than {count} {outcome!r} in {at_most} outcomes: {told.outcomes}")
        told.told.clear()
        await asyncio.wait_for(told.told.wait(), 60)  # a safety net, not a sync


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_S13_a_saga_whose_journal_always_fails_is_backed_off_not_claimed_hot(
    kind: str, db: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A saga the journal refuses every time (a poison saga), older than the
    others, with one free slot: each resume of it is ``interrupted``. Released,
    it was the oldest claimable saga again at once, and the worker — woken
    because its claim had filled its slot — claimed it again straight away:
    hundreds of claims (and warnings) a second, none of the other sagas ever
    resumed. Now it is kept out of claims for a backoff (``poll`` doubled per
    interruption, capped at ``lease``), the others are resumed meanwhile, and
    its journal is kept as it was."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    told = OutcomeSignal()
    async with _a_store(kind, db, request) as store:
        await store.create("p-poison", "OrderSaga", OrderSaga.definition.fingerprint,
                           {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
        due = await seed(store, 3)  # newer: claimed after it
        _refusing_appends_of(store, "p-poison")
        saga = OrderSaga(store=store, step_factory=lambda cls: cls(Ledger()),
                         journal_retry=RetryPolicy(attempts=1, delay=0, jitter=0))
        worker = RecoveryWorker(store, [saga], concurrency=1, lease=600, poll=20,
                                older_than=0, listen=False, listeners=[told])
        started = time.time()
        running = asyncio.create_task(worker.run())
        try:
            await _outcomes_until(told, "completed", 3, at_most=8)
        finally:
            await worker.stop()
            await running
        assert [(s, o) for s, _, o, _ in told.outcomes] == [
            ("p-poison", "interrupted"), *[(s, "completed") for s in due]]
        assert store.victim_claims == 1
        warned = [r for r in caplog.records if "saga p-poison interrupted" in r.getMessage()]
        assert len(warned) == 1
        assert "claimed again in" in warned[0].getMessage()
        # Out of claims for the first step of the backoff (poll, jittered down
        # to no less than half of it), then every worker's again.
        assert await store.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        state = await store.lease_state("p-poison")
        assert state.owner is None
        assert started + 10 <= state.expires_at <= time.time() + 20
        record = await store.load("p-poison")
        assert record.status is SagaStatus.RUNNING
        assert [(e.step, e.status) for e in record.history] == [("A", StepStatus.STARTED)]


async def test_S13_a_poison_sagas_backoff_doubles_per_interruption_up_to_the_lease(
    db: Path,
) -> None:
    """Each further interruption of the same saga doubles its time out of
    claims, up to the worker's lease; an operator still leases it at once."""
    told = OutcomeSignal()
    async with SQLiteSagaStore(db) as store:
        await store.create("p-poison", "OrderSaga", OrderSaga.definition.fingerprint,
                           {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
        _refusing_appends_of(store, "p-poison")
        saga = OrderSaga(store=store, step_factory=lambda cls: cls(Ledger()),
                         journal_retry=RetryPolicy(attempts=1, delay=0, jitter=0))
        worker = RecoveryWorker(store, [saga], concurrency=1, lease=100, poll=20,
                                older_than=0, listen=False, listeners=[told])
        running = asyncio.create_task(worker.run())
        out_for: list[float] = []
        try:
            for times in range(1, 5):
                await _outcomes_until(told, "interrupted", times, at_most=times + 1)
                await eventually(lambda: worker.in_flight == 0, what="the lease let go")
                state = await store.lease_state("p-poison")
                out_for.append(state.expires_at - time.time())
                # The backoff's time passes (an operator's claim, given back at once).
                lease = await store.claim_saga("p-poison", owner="t", lease_seconds=30)
                await store.defer(lease, -1)
                worker.wake()
        finally:
            await worker.stop()
            await running
        assert store.victim_claims == 4
        first, second, third, fourth = out_for
        assert 10 - 5 <= first <= 20
        assert 20 - 5 <= second <= 40
        assert 40 - 5 <= third <= 80
        assert 50 - 5 <= fourth <= 100  # capped at the lease


class _StoreWithoutDefer:
    """A minimal store of one's own: ``RecoverableStore``'s methods (and
    ``renew``), none of the optional ones — no ``defer`` in particular."""

    def __init__(self, inner: SQLiteSagaStore) -> None:
        self.inner = inner
        self.releases: list[str] = []

    async def create(self, *args: Any, **kwargs: Any) -> None:
        await self.inner.create(*args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> None:
        await self.inner.append(*args, **kwargs)

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)

    async def list_sagas(self, **kwargs: Any) -> Any:
        return await self.inner.list_sagas(**kwargs)

    async def claim(self, **kwargs: Any) -> list[Lease]:
        return await self.inner.claim(**kwargs)

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Lease:
        return await self.inner.claim_saga(saga_id, **kwargs)

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        return await self.inner.renew(lease, lease_seconds)

    async def release(self, lease: Lease) -> None:
        self.releases.append(lease.saga_id)
        await self.inner.release(lease)

    async def purge(self, **kwargs: Any) -> int:
        return await self.inner.purge(**kwargs)


async def test_S13_a_store_without_defer_still_backs_a_poison_saga_off(db: Path) -> None:
    """``defer`` is optional: a store of one's own without it released an
    interrupted saga at once, and the worker claimed it again at once (hot).
    The worker keeps its lease instead, and gives it back once the backoff
    has passed (the worker's clock, moved by the test) — or when it stops."""
    told = OutcomeSignal()
    async with SQLiteSagaStore(db) as inner:
        store = _StoreWithoutDefer(inner)
        assert not hasattr(store, "defer")
        await store.create("p-poison", "OrderSaga", OrderSaga.definition.fingerprint,
                           {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
        due = await seed(store, 3)  # newer: claimed after it
        _refusing_appends_of(store, "p-poison")
        saga = OrderSaga(store=store, step_factory=lambda cls: cls(Ledger()),
                         journal_retry=RetryPolicy(attempts=1, delay=0, jitter=0))
        worker = RecoveryWorker(store, [saga], concurrency=1, lease=600, poll=20,
                                older_than=0, listen=False, listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            await _outcomes_until(told, "completed", 3, at_most=8)
            assert [(s, o) for s, _, o, _ in told.outcomes] == [
                ("p-poison", "interrupted"), *[(s, "completed") for s in due]]
            assert store.victim_claims == 1
            # Out of every worker's claims: its lease is still the worker's.
            assert "p-poison" not in store.releases
            assert (await inner.lease_state("p-poison")).owner == worker.owner
            assert await inner.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
            # The backoff (at most poll, 20 s) passes: given back, and claimed again.
            clock = worker._clock
            worker._clock = lambda: clock() + 20
            worker.wake()
            await _outcomes_until(told, "interrupted", 2, at_most=6)
            assert store.releases.count("p-poison") == 1
            assert store.victim_claims == 2
        finally:
            await worker.stop()
            await running
        # A stopped worker keeps nothing out of the others' claims.
        assert (await inner.lease_state("p-poison")).owner is None
        record = await store.load("p-poison")
        assert record.status is SagaStatus.RUNNING
        assert [(e.step, e.status) for e in record.history] == [("A", StepStatus.STARTED)]


async def test_S12_a_store_without_defer_keeps_a_skipped_saga_out_of_claims(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A saga the worker skips (a name it was not given), older than a saga it
    can resume, with one slot: released at once on a store without ``defer``,
    it was claimed and warned about again at once, and the other saga never
    got the slot. The worker keeps its lease for its ``lease`` instead."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    told = OutcomeSignal()
    async with SQLiteSagaStore(db) as inner:
        store = _StoreWithoutDefer(inner)
        await store.create("x-unknown", "NoSuchSaga", NoSuchSaga.definition.fingerprint,
                           {"order_id": "x"}, [_act(0, "A", StepStatus.STARTED)])
        (due,) = await seed(store, 1)  # newer: claimed after it
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=1,
                                lease=30, poll=3600, older_than=0, listen=False,
                                listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            await told.until("completed", at_most=4)
            assert [(s, o) for s, _, o, _ in told.outcomes] == [
                ("x-unknown", "skipped"), (due, "completed")]
            assert (await inner.lease_state("x-unknown")).owner == worker.owner
            assert await inner.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        finally:
            await worker.stop()
            await running
        warned = [r for r in caplog.records if "skipped saga x-unknown" in r.getMessage()]
        assert len(warned) == 1
        # A stopped worker keeps nothing out of the others' claims.
        assert "x-unknown" in store.releases
        assert (await inner.lease_state("x-unknown")).owner is None


class _KillsTheProcess(_Step):
    """A step whose act lets a process-ending exception out, every time."""

    name = "A"
    kills: ClassVar[type[BaseException]] = SystemExit

    async def act(self, ctx: Ctx, /) -> Any:
        await self.ledger.perform("act", self.name)
        raise self.kills("the step ends the process")


class _PoisonSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [_KillsTheProcess, B, C]


@pytest.mark.parametrize("kills", [SystemExit, KeyboardInterrupt])
def test_S10_a_saga_whose_step_ends_the_process_keeps_its_lease_not_handed_to_the_next(
    db: Path, kills: type[BaseException]
) -> None:
    """A resumed saga whose act raises SystemExit or KeyboardInterrupt ends the
    worker's process (as ``asyncio.run`` lets them out). Its lease used to be
    handed off on the way out, as a shutdown's sagas are: the saga was
    claimable at once, the oldest, so the restarted worker — or, announced,
    every other worker of the fleet in turn — claimed it first and died of it
    at once, and the sagas behind it were never reached. Now its lease is kept,
    as a crash keeps it: it comes back once per lease, and the others are
    claimed meanwhile."""
    ledger = Ledger()
    ledger_kills = type("Kills", (_KillsTheProcess,), {"kills": kills})

    async def seeding() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("p-poison", "_PoisonSaga", _PoisonSaga.definition.fingerprint,
                               {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
            await seed(store, 1)

    async def working() -> None:
        async with SQLiteSagaStore(db) as store:
            saga = _PoisonSaga(store=store, step_factory=lambda cls: (
                ledger_kills if cls is _KillsTheProcess else cls)(ledger))
            worker = RecoveryWorker(store, [saga, order_saga(store, ledger)], concurrency=1,
                                    lease=600, poll=3600, older_than=0, owner="worker-1")
            await worker.run()

    async def after() -> tuple[Any, list[str], Any]:
        async with SQLiteSagaStore(db) as store:
            state = await store.lease_state("p-poison")
            taken = await store.claim(owner="worker-2", lease_seconds=30, older_than=0,
                                      limit=10)
            return state, [lease.saga_id for lease in taken], await store.load("p-poison")

    asyncio.run(seeding())
    with pytest.raises(kills):
        asyncio.run(working())
    state, taken, record = asyncio.run(after())
    assert ledger.calls == [("act", "A", "p-poison")]
    assert state.owner == "worker-1"
    assert state.expires_at > time.time() + 500
    assert taken == ["s0000"]  # the restarted worker takes the others, not the poison
    # The journal holds both runs' intents, and nothing was compensated.
    assert [(e.step, e.status) for e in record.history] == [("A", StepStatus.STARTED)] * 2
    assert record.status is SagaStatus.RUNNING


class _CompensationKills(_Step):
    """A step whose compensation ends the process, every time."""

    name = "A"
    kills: ClassVar[type[BaseException]] = SystemExit

    async def compensate(self, ctx: Ctx, /) -> None:
        await self.ledger.perform("compensate", self.name)
        await asyncio.sleep(0)  # past its first step: it runs in a task of its own
        raise self.kills("the compensation ends the process")


class _Declined(_Step):
    name = "B"

    async def act(self, ctx: Ctx, /) -> Any:
        await self.ledger.perform("act", self.name)
        raise RuntimeError("declined")


class _UnwindsIntoAKill(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [_CompensationKills, _Declined]


@pytest.mark.parametrize("kills", [SystemExit, KeyboardInterrupt])
def test_S10_a_compensation_that_ends_the_process_lets_the_shutdown_finish_and_keeps_the_lease(
    db: Path, kills: type[BaseException]
) -> None:
    """A compensation (run shielded, in a task of its own: S8) that lets
    SystemExit or KeyboardInterrupt out ends the process as an act's does.
    The error used to be raised a second time by the run awaiting the
    compensation, out of ``asyncio.run``'s shutdown, which stopped half-way:
    the worker's own task was destroyed pending — its listeners never told,
    its store never closed. Now the shutdown finishes: the worker reports the
    saga interrupted by the error, keeps its lease as a crash keeps it, and
    closes its store; the journal holds the compensation's intent and no
    outcome (it may have partly run), for the next claim."""
    ledger = Ledger()
    killer = type("Kills", (_CompensationKills,), {"kills": kills})
    recorder = OutcomeRecorder()
    closed: list[bool] = []

    async def seeding() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("p-poison", "_UnwindsIntoAKill",
                               _UnwindsIntoAKill.definition.fingerprint, {"order_id": "p"},
                               [_act(0, "A", StepStatus.STARTED),
                                _act(0, "A", StepStatus.COMPLETED)])

    async def working() -> None:
        try:
            async with SQLiteSagaStore(db) as store:
                saga = _UnwindsIntoAKill(store=store, step_factory=lambda cls: (
                    killer if cls is _CompensationKills else cls)(ledger))
                worker = RecoveryWorker(store, [saga], concurrency=1, lease=600, poll=3600,
                                        older_than=0, owner="worker-1", listeners=[recorder])
                await worker.run()
        finally:
            closed.append(True)

    async def after() -> tuple[Any, Any]:
        async with SQLiteSagaStore(db) as store:
            return await store.lease_state("p-poison"), await store.load("p-poison")

    asyncio.run(seeding())
    with pytest.raises(kills):
        asyncio.run(working())
    assert closed == [True]
    state, record = asyncio.run(after())
    assert ledger.calls == [("act", "B", "p-poison"), ("compensate", "A", "p-poison")]
    assert [(saga_id, outcome) for saga_id, _, outcome, _ in recorder.outcomes] == [
        ("p-poison", "interrupted")]
    assert kills.__name__ in (recorder.outcomes[0][3] or "")
    assert state.owner == "worker-1"  # kept: the next claim waits for it to run out
    last = record.history[-1]
    assert (last.step, last.action, last.status) == ("A", "compensate", StepStatus.STARTED)
    assert record.status is SagaStatus.COMPENSATING
