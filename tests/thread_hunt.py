"""A sync web app's shape, under stress: each request runs in a thread of its
own with an ``asyncio.run`` of its own, and every request shares ONE saga
instance, ONE store, ONE circuit breaker (local, or sharing state through an
SQLite file) and the listeners, made at import. A cron thread calls
``recover()`` meanwhile. Faults (a step's service failing, a request
cancelled at a step) and duplicate requests (one saga id from two threads)
are drawn from a seeded random generator.

Checked at the end, with a participant ledger (what the steps' services saw):

* every request ends with a result, ``SagaFailed``, ``SagaAlreadyExists``
  or its own cancellation — never an error of another loop ("attached to a
  different loop", "Event loop is closed"), neither raised, logged nor
  passed to a thread's or the unraisable hook;
* every saga is final, or recoverable (a last ``recover`` finishes it);
* the ledger agrees with the journal: a COMPLETED saga's acts each ran once
  and none was undone, a COMPENSATED saga undid every act it ran, once;
* no act ran twice for one saga id (a duplicate request never runs it);
* the breaker counted exactly the failures raised under it.

``python tests/thread_hunt.py [store] [seed] [threads] [requests]`` runs it alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fallback_saga import (
    CircuitBreaker,
    LoggingListener,
    MemorySagaStore,
    Parallel,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaFailed,
    SagaStatus,
    SQLiteCircuitStateStore,
    SQLiteSagaStore,
    current_step,
    recover,
)

STORES = ("memory", "sqlite-thread", "sqlite-process", "sqlite-inline")
FOREIGN = ("different loop", "Event loop is closed", "attached to a different")


class ServiceDown(Exception):
    """The participant refused: the breaker counts it."""


@dataclasses.dataclass
class HuntCtx(SagaContext):
    request: int
    fail_at: str = ""  # the step whose service fails
    cancel_at: str = ""  # the step at whose start the request is cancelled


class Ledger:
    """What the participants saw, shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, str]] = []
        self.cancelled: set[str] = set()
        self.failures_raised = 0  # ServiceDown raised under the breaker
        self.notify_failures = 0  # raised under the notification breaker, not cancelled

    def first_cancel(self, saga_id: str) -> bool:
        with self.lock:
            first = saga_id not in self.cancelled
            self.cancelled.add(saga_id)
            return first

    def add(self, saga_id: str, what: str) -> None:
        with self.lock:
            self.rows.append((saga_id, what))

    def failed(self) -> None:
        with self.lock:
            self.failures_raised += 1


class Counting:
    """A listener counting what it hears, from every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: collections.Counter[str] = collections.Counter()

    def _count(self, name: str) -> None:
        with self.lock:
            self.seen[name] += 1

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self._count("saga_started")

    def saga_finished(self, saga_id: str, saga_name: str, status: Any, error: Any = None) -> None:
        self._count("saga_finished")

    def step_completed(self, saga_id: str, step: str) -> None:
        self._count("step_completed")


class Foreign(logging.Handler):
    """Keeps every log record that names another loop's error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        if any(word in text for word in FOREIGN):
            self.records.append(text)


def hunt_saga(
    ledger: Ledger, breaker: CircuitBreaker, notify: CircuitBreaker, flaky: CircuitBreaker
) -> type[Saga[HuntCtx]]:
    async def notification() -> None:
        await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        if not task.cancelling():  # a failure under a cancellation is a cancellation
            with ledger.lock:
                ledger.notify_failures += 1
        raise ServiceDown("notify")

    def step(name: str, guarded: bool) -> type:
        async def service(ctx: HuntCtx) -> None:
            await asyncio.sleep(0)  # the participant answers on a later turn of the loop
            if ctx.fail_at == name:
                ledger.failed()
                raise ServiceDown(name)

        class HuntStep:
            async def act(self, ctx: HuntCtx) -> str:
                cursor = current_step()
                assert cursor is not None
                if ctx.cancel_at == name and ledger.first_cancel(cursor.saga_id):
                    # Once per saga: recovery runs it again, to its end.
                    task = asyncio.current_task()
                    assert task is not None
                    task.cancel()
                    await asyncio.sleep(0)
                if name == "Reserve":
                    # Best effort, and never succeeds: its breaker's count is exact.
                    with contextlib.suppress(ServiceDown):
                        await notify.call(notification)
                if name == "Pack":
                    async with breaker:  # the async with form, on the same breaker
                        await service(ctx)
                elif name == "Ship":
                    await flaky.call(service, ctx)  # trips, and half-opens, meanwhile
                elif guarded:
                    await breaker.call(service, ctx)
                else:
                    await service(ctx)
                ledger.add(cursor.saga_id, name)  # the participant did it
                return name

            async def compensate(self, ctx: HuntCtx) -> None:
                cursor = current_step()
                assert cursor is not None
                await asyncio.sleep(0)
                ledger.add(cursor.saga_id, f"undo-{name}")

        HuntStep.__name__ = HuntStep.__qualname__ = name
        return HuntStep

    made = [
        step("Reserve", False),
        Parallel(step("Charge", True), step("Pack", True)),
        step("Ship", True),
    ]

    class HuntSaga(Saga[HuntCtx]):
        steps = made

    return HuntSaga


def make_store(kind: str, directory: Path) -> Any:
    if kind == "memory":
        return MemorySagaStore()
    writer = kind.split("-", 1)[1]
    return SQLiteSagaStore(directory / "hunt.db", writer=writer, synchronous="normal")


@dataclasses.dataclass
class Report:
    outcomes: collections.Counter[str]
    problems: list[str]
    statuses: collections.Counter[str]


def _eager(loop: asyncio.AbstractEventLoop) -> None:
    factory = getattr(asyncio, "eager_task_factory", None)
    if factory is not None:
        loop.set_task_factory(factory)


def hunt(
    kind: str = "memory",
    seed: int = 0,
    threads: int = 4,
    requests: int = 20,
    shared_breaker: bool = False,
    switch_interval: float | None = None,
) -> Report:
    """``switch_interval``: hand the GIL over that often (``sys.setswitchinterval``),
    to have threads interleave at many more points than they usually do."""
    rng = random.Random(seed)
    old_switch = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    directory = Path(tempfile.mkdtemp(prefix="thread-hunt-"))
    ledger = Ledger()
    counting = Counting()
    state_store = SQLiteCircuitStateStore(directory / "breakers.db") if shared_breaker else None
    # fail_max out of reach: every ServiceDown is a counted failure, and the
    # count is only ever reset by a success — so it is checked per window below.
    breaker = CircuitBreaker(
        name="hunt", fail_max=10**9, reset_timeout=60.0, state_store=state_store,
        listeners=[counting],
    )
    notify = CircuitBreaker(
        name="notify", fail_max=10**9, reset_timeout=60.0, state_store=state_store
    )
    flaky = CircuitBreaker(
        name="flaky", fail_max=2, reset_timeout=0.005, state_store=state_store,
        sync_interval=0.002, listeners=[counting],
    )
    store = make_store(kind, directory)
    saga = hunt_saga(ledger, breaker, notify, flaky)(
        store=store, listeners=[LoggingListener(), counting]
    )
    foreign = Foreign()
    root = logging.getLogger()
    root.addHandler(foreign)
    problems: list[str] = []
    problems_lock = threading.Lock()
    outcomes: collections.Counter[str] = collections.Counter()

    def problem(text: str) -> None:
        with problems_lock:
            problems.append(text)

    old_thread_hook, old_unraisable = threading.excepthook, sys.unraisablehook
    threading.excepthook = lambda args: problem(f"thread hook: {args.exc_value!r}")
    sys.unraisablehook = lambda args: problem(f"unraisable: {args.exc_value!r} {args.object!r}")

    # Plan every request up front (the generator is not shared by threads).
    plans: list[list[tuple[str, HuntCtx, bool, str, int]]] = []
    number = 0
    for _ in range(threads):
        plan = []
        for _ in range(requests):
            number += 1
            roll = rng.random()
            ctx = HuntCtx(request=number)
            if roll < 0.25:
                ctx.fail_at = rng.choice(["Charge", "Pack", "Ship"])
            elif roll < 0.40:
                ctx.cancel_at = rng.choice(["Reserve", "Charge", "Pack", "Ship"])
            mode = rng.choice(["plain", "plain", "timeout", "orphan"])
            turns = rng.randrange(1, 40)
            plan.append((f"s-{number}", ctx, rng.random() < 0.5, mode, turns))
        plans.append(plan)
    # Duplicate requests: some saga ids are sent by two threads at once.
    duplicates = 0
    for t in range(1, threads):
        for r in range(0, requests, 5):
            saga_id, ctx, eager, mode, turns = plans[t - 1][r]
            twin = dataclasses.replace(ctx, request=-ctx.request)
            plans[t][r] = (saga_id, twin, not eager, "plain", turns)
            duplicates += 1
    barrier = threading.Barrier(threads)
    done = threading.Event()

    def request_thread(plan: list[tuple[str, HuntCtx, bool, str, int]]) -> None:
        for saga_id, ctx, eager, mode, turns in plan:
            barrier.wait(30)  # the duplicates meet at once

            async def one(
                saga_id: str, ctx: HuntCtx, eager: bool, mode: str, turns: int
            ) -> None:
                if eager:
                    _eager(asyncio.get_running_loop())
                if mode == "plain":
                    await saga.run(ctx, saga_id=saga_id)
                    return
                running = asyncio.ensure_future(saga.run(ctx, saga_id=saga_id))
                for _ in range(turns):
                    if running.done():
                        break
                    await asyncio.sleep(0)
                # What it raises is the view's to see (a fire-and-forget task's
                # error would be logged as never retrieved).
                running.add_done_callback(lambda t: t.cancelled() or t.exception())
                if mode == "orphan":
                    # The view returns with the saga in flight: asyncio.run
                    # cancels it as the loop shuts down.
                    return
                running.cancel()  # the request's timeout
                await running

            try:
                asyncio.run(one(saga_id, ctx, eager, mode, turns))
                what = "ok"
            except SagaAlreadyExists:
                what = "exists"
            except SagaFailed:
                what = "failed"
            except asyncio.CancelledError:
                what = "cancelled"
            except BaseException as error:
                what = "other"
                problem(f"{saga_id}: {error!r}")
            with problems_lock:
                outcomes[what] += 1

    def cron() -> None:
        while not done.is_set() and kind != "memory":
            try:
                asyncio.run(recover(store, [saga], older_than=3600.0))
            except BaseException as error:
                problem(f"cron: {error!r}")

    workers = [threading.Thread(target=request_thread, args=(plan,)) for plan in plans]
    cron_thread = threading.Thread(target=cron)
    try:
        cron_thread.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
            if worker.is_alive():
                problem("a request thread hangs")
        done.set()
        cron_thread.join(60)
        # The last sweep: whatever a cancellation left in flight ends now.
        asyncio.run(_last_sweep(store, saga))
        statuses: collections.Counter[str] = collections.Counter()
        records = asyncio.run(_records(store))
        by_saga: dict[str, list[str]] = collections.defaultdict(list)
        for saga_id, what in ledger.rows:
            by_saga[saga_id].append(what)
        for saga_id, record in records.items():
            statuses[record.status.value] += 1
            seen = by_saga.pop(saga_id, [])
            _check(saga_id, record, seen, problem)
        for saga_id, seen in by_saga.items():
            problem(f"{saga_id}: the ledger has {seen} but the journal no saga")
        if flaky.half_open_calls_in_flight:
            problem(f"flaky breaker left {flaky.half_open_calls_in_flight} trials in flight")
        if notify.failure_count != ledger.notify_failures:
            problem(f"notify breaker counted {notify.failure_count} failures, "
                    f"{ledger.notify_failures} raised")
        if breaker.failure_count > ledger.failures_raised:
            problem(f"breaker counted {breaker.failure_count} > {ledger.failures_raised} raised")
        problems.extend(f"log: {text}" for text in foreign.records)
        expected_runs = threads * requests - duplicates
        if len(records) != expected_runs:
            problem(f"{len(records)} sagas in the journal, {expected_runs} expected")
        return Report(outcomes, problems, statuses)
    finally:
        sys.setswitchinterval(old_switch)
        done.set()
        root.removeHandler(foreign)
        threading.excepthook, sys.unraisablehook = old_thread_hook, old_unraisable
        if isinstance(store, SQLiteSagaStore):
            asyncio.run(store.close())
        if state_store is not None:
            state_store.close()


async def _last_sweep(store: Any, saga: Saga[HuntCtx]) -> None:
    if not isinstance(store, MemorySagaStore):
        await recover(store, [saga], older_than=0.0)
        return
    # A memory store has no leases to recover with: resume by hand.
    for summary in await store.list_sagas(limit=100_000):
        if summary.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            with contextlib.suppress(SagaFailed):
                await saga.resume(summary.saga_id)


async def _records(store: Any) -> dict[str, Any]:
    ids = [s.saga_id for s in await store.list_sagas(limit=100_000)]
    return {saga_id: await store.load(saga_id) for saga_id in ids}


def _check(saga_id: str, record: Any, seen: list[str], problem: Callable[[str], None]) -> None:
    counts = collections.Counter(seen)
    twice = [what for what, n in counts.items() if n > 1]
    if twice:
        problem(f"{saga_id}: ran twice {twice} ({seen})")
    acts = {what for what in seen if not what.startswith("undo-")}
    undos = {what[5:] for what in seen if what.startswith("undo-")}
    status = record.status
    if status is SagaStatus.COMPLETED:
        if acts != {"Reserve", "Charge", "Pack", "Ship"} or undos:
            problem(f"{saga_id}: COMPLETED but the ledger says {seen}")
    elif status is SagaStatus.COMPENSATED:
        # A call cut short may have reached the participant: it is undone
        # too (S8) — an undo without its act is allowed, an act without one not.
        if not acts <= undos:
            problem(f"{saga_id}: COMPENSATED but the ledger says {seen}")
    else:
        problem(f"{saga_id}: left {status.value} after the last recovery ({seen})")


def _iter_args(argv: list[str]) -> Iterator[Any]:
    yield argv[0] if argv else "memory"
    yield int(argv[1]) if len(argv) > 1 else 0
    yield int(argv[2]) if len(argv) > 2 else 4
    yield int(argv[3]) if len(argv) > 3 else 20


if __name__ == "__main__":
    kind, seed, n_threads, n_requests = _iter_args([a for a in sys.argv[1:] if a[:2] != "--"])
    for shared in (False, True):
        report = hunt(kind, seed, n_threads, n_requests, shared_breaker=shared,
                      switch_interval=1e-6 if "--switch" in sys.argv else None)
        print(kind, "seed", seed, "shared" if shared else "local", dict(report.outcomes),
              dict(report.statuses))
        for line in report.problems[:30]:
            print("  PROBLEM", line)
