"""A long-running service runs sagas for months: nothing a finished saga
used may outlive it.

Each test runs many sagas through one path and counts what is left: the
contexts (freed at once, by reference counting — a reference cycle through
an exception's traceback would keep a context, and the secrets in its
frames, alive until the garbage collector happens to run), the objects the
collector has to find, threads, file descriptors and tasks. Counting, never
timing: each test is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import queue
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from journal_faults import (
    COMPLETES,
    FAULT_KINDS,
    UNWINDS,
    Ctx,
    FaultyStore,
    FaultySubmittingStore,
    Ledger,
)

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaFailed,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    recover,
    set_testing,
)


class Boom(Exception):
    pass


@dataclasses.dataclass
class LeakCtx(SagaContext):
    secret: str = "hunter2"
    a: int | None = None
    b: int | None = None


# Every context a step saw, weakly: a test counts those still alive.
SEEN: list[weakref.ref[LeakCtx]] = []


def alive() -> int:
    return sum(ref() is not None for ref in SEEN)


class Seen(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        SEEN.append(weakref.ref(context))


class WriteA(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        context.a = 1


class WriteB(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        context.b = 1


class Fails(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        raise Boom("no")


class WaitsThenFails(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        await asyncio.sleep(0)
        raise Boom("no")


def collect_alone() -> int:
    """A full collection with ``gc.callbacks`` (the test runner's: hypothesis
    installs one) out of the way: how many unreachable objects it found.

    A callback is Python code run inside the collection, where an exception
    is swallowed (reported as "unraisable"): pytest-timeout's SIGALRM handler
    landing there (a collection is most of this module's time) lost its
    Timeout, and its ``dump_stacks`` frame, which refers to itself, was
    counted as a run's cycle. Without callbacks the handler runs after the
    collection, in this frame: a slow test fails as a timeout, never as a
    cycle."""
    callbacks = gc.callbacks[:]
    gc.callbacks.clear()
    try:
        return gc.collect()
    finally:
        gc.callbacks[:0] = callbacks  # (ahead of any the collection added)


@pytest.fixture
def no_collector() -> Iterator[Callable[[], int]]:
    """The garbage collector off; yields ``collect``: how many unreachable
    objects (cycles) the runs left for it.

    What exists before the test is frozen (``gc.freeze``): each collection
    then looks only at what the test made, so its cost does not grow with
    the whole suite's heap (a full suite's is large: the S13 test's 160
    collections per store took 80-120 s under load, then hit pytest-timeout). A run's
    objects are all made after the freeze, so each of its cycles is still
    found; a cycle through an object older than the test could only be
    garbage if the test dropped that object's last reference, which no run
    here does."""
    SEEN.clear()
    collect_alone()
    gc.freeze()
    gc.disable()
    try:
        yield collect_alone
    finally:
        gc.enable()
        gc.unfreeze()
        SEEN.clear()


def test_S13_the_leak_count_is_the_runs_own_not_a_gc_callbacks(
    no_collector: Callable[[], int],
) -> None:
    """What Python code the test runner runs inside a collection (a gc
    callback, and a signal handler landing in it) is not counted as a run's
    cycle: pytest-timeout's handler, run inside hypothesis's callback, left
    its ``dump_stacks`` frame — which refers to itself — for the next count."""

    def runner_callback(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            _itself = sys._getframe()  # a frame that refers to itself, as dump_stacks' did

    gc.callbacks.append(runner_callback)
    try:
        no_collector()
        assert no_collector() == 0
    finally:
        gc.callbacks.remove(runner_callback)


async def run_failing(saga: Saga[Any], times: int) -> None:
    for _ in range(times):
        with pytest.raises(SagaFailed):
            await saga.run(LeakCtx())


@pytest.mark.parametrize("member", [Fails, WaitsThenFails])
def test_S15_a_failed_group_leaves_no_reference_cycle(
    no_collector: Callable[[], int], member: type
) -> None:
    class GroupFails(Saga[LeakCtx]):
        steps = [Seen, Parallel(WriteA, WriteB, member)]

    saga = GroupFails(store=MemorySagaStore(max_finished=0))
    asyncio.run(run_failing(saga, 1))  # warm-up: caches, the loop's first objects
    no_collector()
    asyncio.run(run_failing(saga, 20))
    assert alive() == 0, "a failed group's context outlived its saga"
    assert no_collector() == 0


class Waits(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        await asyncio.sleep(0)


class WaitsAgain(Waits):
    name = "WaitsAgain"


async def cancel_after(saga: Saga[Any], turns: int) -> None:
    """Run a saga in a task, cancel it after ``turns`` turns of the loop, wait."""
    task = asyncio.ensure_future(saga.run(LeakCtx()))
    try:
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SagaFailed):
            await task
    finally:
        del task  # (the awaited task holds the error that holds this frame)


# The task running the saga, for a member that cancels it.
CALLER: list[asyncio.Task[Any]] = []


class CancelsTheCaller(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        CALLER[0].cancel()  # and returns without waiting


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_S8_S15_a_group_failing_as_its_caller_is_cancelled_leaves_no_reference_cycle(
    no_collector: Callable[[], int], store_kind: str, tmp_path: Path
) -> None:
    """A member fails while a sibling cancels the caller: the group raises
    the caller's cancellation, and nothing the run held is left for the
    collector. On Python 3.12+ the members start eagerly, inside the
    group's own step: a member's frame, once done, links back to the
    group's (its caller then), so the group's frame must not keep the
    failed member's error — whose traceback holds the member's frame — as
    the cancellation it raises carries the group's frame away."""

    class GroupCancelled(Saga[LeakCtx]):
        steps = [Seen, Parallel(WriteA, Fails, CancelsTheCaller)]

    async def run(saga: Saga[LeakCtx]) -> None:
        task = asyncio.ensure_future(saga.run(LeakCtx()))
        CALLER[:] = [task]
        try:
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            CALLER.clear()
            del task  # (the awaited task holds the error that holds this frame)

    async def main() -> list[int]:
        cycles = []
        store: Any = (
            MemorySagaStore(max_finished=0) if store_kind == "memory"
            else SQLiteSagaStore(str(tmp_path / "group.db"))
        )
        async with contextlib.AsyncExitStack() as stack:
            if store_kind == "sqlite":
                await stack.enter_async_context(store)
            saga = GroupCancelled(store=store)
            await run(saga)  # warm-up: caches, the loop's first objects
            SEEN.clear()
            for _ in range(5):
                no_collector()
                await run(saga)
                left = no_collector()
                if left:
                    cycles.append(left)
            # asyncio keeps the last cancellation it raised (see below).
            assert alive() <= 1
        return cycles

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("writer", ["thread", "process", "inline"])
def test_S8_a_cancelled_saga_leaves_no_reference_cycle(
    no_collector: Callable[[], int], writer: str, tmp_path: Path
) -> None:
    """Cancelled at every point of its run (in a journal write too), a saga's
    context is freed as its run ends, with nothing left for the collector."""

    class Cancelled(Saga[LeakCtx]):
        steps = [Seen, Waits, Parallel(WriteA, WriteB), WaitsAgain, Fails]

    async def main() -> list[tuple[int, int]]:
        cycles = []
        async with SQLiteSagaStore(str(tmp_path / "leaks.db"), writer=writer) as store:
            saga = Cancelled(store=store)
            await cancel_after(saga, 3)  # warm-up
            SEEN.clear()
            for turns in range(12):
                no_collector()
                await cancel_after(saga, turns)
                left = no_collector()
                if left:
                    cycles.append((turns, left))
            # asyncio itself keeps the last cancellation it raised (with its
            # frames) until the next one: one context at most, never more.
            assert alive() <= 1
        return cycles

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_S13_a_journal_fault_leaves_no_reference_cycle(
    no_collector: Callable[[], int], store_kind: str, tmp_path: Path
) -> None:
    """At every journal write, every fault of ``journal_faults`` (an outage,
    an answer lost, a cancellation): whether the run completes, unwinds or
    is interrupted, nothing it held is left for the collector. (With the
    retries' real waits, as a service has them.)"""
    set_testing(False)  # (the fixture turns it back on for the next test)

    async def main() -> list[tuple[str, str, int, int]]:
        cycles = []
        if store_kind == "memory":
            inner: Any = MemorySagaStore(max_finished=0)
        else:
            inner = SQLiteSagaStore(str(tmp_path / "faults.db"))
            await inner.open()
        faulty = FaultyStore if store_kind == "memory" else FaultySubmittingStore
        number = 0
        for shape in (COMPLETES, UNWINDS):
            for kind in FAULT_KINDS:
                for at in range(8):
                    number += 1
                    store = faulty(inner, at=at, kind=kind)
                    saga = shape.build(store, Ledger())
                    no_collector()
                    task = asyncio.create_task(saga.run(Ctx(order_id="o"), saga_id=f"s-{number}"))
                    store.victim = task
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await task
                    del task, store.victim
                    left = no_collector()
                    if left:
                        cycles.append((shape.name, kind, at, left))
                    store.heal()
        if store_kind == "sqlite":
            await inner.close()
        return cycles

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_S13_a_saga_id_already_taken_leaves_no_reference_cycle(
    no_collector: Callable[[], int], writer: str, tmp_path: Path
) -> None:
    """A run whose creation the store refuses (the id is taken: a client
    retrying a request) raises the store's ``SagaAlreadyExists`` itself, and
    keeps nothing of it: the error's traceback holds the run's frames (the
    run kept it as its ``interruption``; it took the run's wrapper of it as
    its context), and the writer's frame that refused it (which held it)."""

    class Taken(Saga[LeakCtx]):
        steps = [Seen, WriteA]

    async def main() -> int:
        async with SQLiteSagaStore(str(tmp_path / "taken.db"), writer=writer) as store:
            saga = Taken(store=store)
            await saga.run(LeakCtx(), saga_id="taken")
            with pytest.raises(SagaAlreadyExists):  # warm-up
                await saga.run(LeakCtx(), saga_id="taken")
            no_collector()
            for _ in range(5):
                with pytest.raises(SagaAlreadyExists):
                    await saga.run(LeakCtx(), saga_id="taken")
            return no_collector()

    assert asyncio.run(main()) == 0


class Crash(BaseException):
    """The process going down mid-step (what SystemExit is): the saga is left
    as its journal holds it, for recovery."""


CRASHING = [True]


class CrashesOnce(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        if CRASHING[0]:
            raise Crash


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_S10_a_resumed_saga_that_fails_leaves_no_reference_cycle(
    no_collector: Callable[[], int], writer: str, tmp_path: Path
) -> None:
    """A recovery pass resumes crashed sagas, which then fail and unwind
    (``LeasedRun``: the resumed run's task holds its error, whose traceback
    holds the frame awaiting it)."""

    class Resumed(Saga[LeakCtx]):
        steps = [Seen, CrashesOnce, Parallel(WriteA, Fails)]

    async def main() -> int:
        clock = iter(range(10**9))
        async with SQLiteSagaStore(
            str(tmp_path / "resumed.db"), writer=writer, clock=lambda: 1e9 + next(clock)
        ) as store:
            CRASHING[0] = True
            for _ in range(10):
                with contextlib.suppress(Crash):
                    await Resumed(store=store).run(LeakCtx())
            CRASHING[0] = False
            no_collector()
            report = await recover(store, [Resumed], older_than=0.0)
            assert len(report.compensated) == 10
            return no_collector()

    assert asyncio.run(main()) == 0


class UndoFails(SagaStepHandler[LeakCtx, None]):
    async def act(self, context: LeakCtx, /) -> None:
        pass

    async def compensate(self, context: LeakCtx, /) -> None:
        raise Boom("cannot undo")


class ChildLeftUndone(Saga[LeakCtx]):
    steps = [UndoFails, Fails]  # ends FAILED: its own unwinding gave up


class StraightUndoFails(Saga[LeakCtx]):
    steps = [Seen, UndoFails, Fails]


class GroupUndoFails(Saga[LeakCtx]):
    steps = [Seen, Parallel(UndoFails, WaitsThenFails)]


class ChildUndoFails(Saga[LeakCtx]):
    steps = [Seen, SubSaga(ChildLeftUndone, context=lambda parent: LeakCtx())]


@pytest.mark.parametrize("shape", [StraightUndoFails, GroupUndoFails, ChildUndoFails])
@pytest.mark.parametrize("writer", [None, "thread"])
def test_S6_a_compensation_that_fails_leaves_no_reference_cycle(
    no_collector: Callable[[], int], shape: type[Saga[LeakCtx]], writer: str | None,
    tmp_path: Path,
) -> None:
    """A compensation that gives up (S6) is handed to SagaFailed, not kept by
    the run's frames or the run: its traceback holds the frame that caught
    it, whose caller is the unwinding."""

    async def main() -> int:
        store: Any = MemorySagaStore(max_finished=0)
        if writer is not None:
            store = SQLiteSagaStore(str(tmp_path / "undo.db"), writer=writer)
            await store.open()
        saga = shape(store=store, compensation_retry=RetryPolicy(attempts=2, delay=0.0))
        await run_failing(saga, 1)  # warm-up
        no_collector()
        await run_failing(saga, 10)
        left = no_collector()
        if writer is not None:
            await store.close()
        return left

    assert asyncio.run(main()) == 0
    assert alive() == 0


class TimesOut(SagaStepHandler[LeakCtx, None]):
    timeout = 0.001

    async def act(self, context: LeakCtx, /) -> None:
        await asyncio.Event().wait()  # never set: the step's timeout ends it


def test_S15_a_group_member_that_times_out_leaves_no_reference_cycle(
    no_collector: Callable[[], int],
) -> None:
    """A member's failure is the group's to raise, not its task's to keep: a
    step's ``asyncio.timeout`` holds the task, and the error's traceback holds
    the timeout."""

    class GroupTimesOut(Saga[LeakCtx]):
        steps = [Seen, Parallel(WriteA, TimesOut)]

    saga = GroupTimesOut(store=MemorySagaStore(max_finished=0))
    asyncio.run(run_failing(saga, 1))
    no_collector()
    asyncio.run(run_failing(saga, 5))
    assert alive() == 0
    assert no_collector() == 0


def test_S4_a_saga_that_completes_over_a_child_left_undone_leaves_no_reference_cycle(
    no_collector: Callable[[], int],
) -> None:
    """A Fallback's primary ran a child saga that ended FAILED, the fallback
    completed the step, and the saga completed: the run keeps the child's
    error (for an unwinding that never came) no longer than it runs."""

    class CompletesOverIt(Saga[LeakCtx]):
        steps = [
            Seen,
            Fallback(step=SubSaga(ChildLeftUndone, context=lambda parent: LeakCtx()),
                     fallback=WriteA),
        ]

    async def main() -> None:
        saga = CompletesOverIt(store=MemorySagaStore(max_finished=0))
        for _ in range(5):
            await saga.run(LeakCtx())

    asyncio.run(main())
    no_collector()
    asyncio.run(main())
    assert alive() == 0
    assert no_collector() == 0



class _SeenWaiting(queue.SimpleQueue):  # type: ignore[type-arg]
    """A worker's queue that tells when its thread waits for work with
    every request put so far taken (and served: it takes the next group
    only once the last one is settled)."""

    def __init__(self) -> None:
        self.puts = 0
        self.idle_after = -1  # how many puts had been made when it last waited, idle
        self.changed = threading.Condition()

    def put(self, *args: Any, **kwargs: Any) -> None:
        with self.changed:
            self.puts += 1
        super().put(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        with self.changed:
            if self.qsize() == 0:
                self.idle_after = self.puts
                self.changed.notify_all()
        return super().get(*args, **kwargs)

    def wait_idle(self) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.idle_after == self.puts, timeout=10)


def test_S15_an_idle_sqlite_writer_keeps_nothing_of_its_last_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the store's writer thread waits for work, it keeps nothing of
    the requests it last served: their futures (and through them their
    event loops, which a store outliving one ``asyncio.run`` would keep
    alive) and their arguments (a journal, a context) are the caller's to
    free. (The thread kept its last group of requests until the next one.)
    The reader thread runs the same loop."""
    from fallback_saga.store import _sqlite_workers

    monkeypatch.setattr(
        _sqlite_workers, "queue", types.SimpleNamespace(SimpleQueue=_SeenWaiting, Empty=queue.Empty)
    )

    async def main() -> bool:
        async with SQLiteSagaStore(str(tmp_path / "idle.db"), writer="thread") as store:
            await store.create("s-1", "S", "fp", {}, [], status=SagaStatus.RUNNING)
            writer = store._runner._writer
            assert writer is not None
            assert isinstance(writer.queue, _SeenWaiting)
            future = store.submit_append("s-1", [], SagaStatus.COMPLETED, None, None, None)
            await future
            served = weakref.ref(future)
            del future
            await asyncio.sleep(0)  # out of the loop's callback that woke us (it holds the future)
            idle = writer.queue.wait_idle()
            assert idle, "the writer never went back to waiting"
            return served() is None

    assert asyncio.run(main())
