"""S13 on ``MemorySagaStore``: a saga id is driven by one run at a time.

``Saga.resume`` (and ``retry_unwinding``) of a saga whose run is still going
— in another task of the same loop, or in another thread's event loop (a
sync web app's retried request) — is refused with ``SagaBusy``, as a durable
store's lease refuses it, instead of running every remaining step a second
time. A saga whose run is gone (a crash out of its loop, the loop closed
under it: the in-memory stand-ins for a dead process) is resumed as before.
Each test counts the participants' calls: every step runs once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import weakref
from typing import Any

import pytest

from fallback_saga import (
    MemorySagaStore,
    Saga,
    SagaBusy,
    SagaContext,
    SagaFailed,
    SagaStatus,
    retry_unwinding,
)
from fallback_saga.reopening import _Reopening


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Ledger:
    """What the participants were asked, in order, and a way to hold one call
    (an act, or an "undo-" compensation) until the test lets it go: with
    ``asyncio.Event``s in one loop, or — ``threaded``, the call in another
    thread's loop — with ``threading.Event``s, its loop blocked meanwhile."""

    def __init__(self, *, threaded: bool = False) -> None:
        self.calls: list[str] = []
        self.hold: str | None = None  # the call held, the first time it is made
        self.held_once = False
        self.threaded = threaded
        self.inside: Any = threading.Event() if threaded else asyncio.Event()
        self.gate: Any = threading.Event() if threaded else asyncio.Event()
        self.crash: str | None = None  # the act that raises KeyboardInterrupt
        self.fail_undo = False  # C's act and B's compensation fail (the saga ends FAILED)

    async def call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.crash:
            self.crash = None
            raise KeyboardInterrupt
        if name == self.hold and not self.held_once:
            self.held_once = True
            self.inside.set()
            if self.threaded:
                assert self.gate.wait(30)
            else:
                await self.gate.wait()


def saga_class(ledger: Ledger) -> type[Saga[Ctx]]:
    class A:
        async def act(self, ctx: Ctx) -> None:
            await ledger.call("A")

        async def compensate(self, ctx: Ctx) -> None:
            await ledger.call("undo-A")

    class B:
        async def act(self, ctx: Ctx) -> None:
            await ledger.call("B")

        async def compensate(self, ctx: Ctx) -> None:
            await ledger.call("undo-B")
            if ledger.fail_undo:
                raise RuntimeError("undo-B refused")

    class C:
        async def act(self, ctx: Ctx) -> None:
            await ledger.call("C")
            if ledger.fail_undo:
                raise RuntimeError("C refused")

        async def compensate(self, ctx: Ctx) -> None:
            await ledger.call("undo-C")

    class Live(Saga[Ctx]):
        steps = [A, B, C]

    return Live


def test_S13_a_resume_from_another_task_while_the_run_goes_on_is_busy() -> None:
    ledger = Ledger()
    ledger.hold = "A"
    saga = saga_class(ledger)(store=MemorySagaStore())

    async def main() -> tuple[Any, BaseException | None]:
        run = asyncio.create_task(saga.run(Ctx(), saga_id="x"))
        await ledger.inside.wait()
        refused: BaseException | None = None
        try:
            await saga.resume("x")
        except SagaBusy as error:
            refused = error
        ledger.gate.set()
        return await run, refused

    result, refused = asyncio.run(main())
    assert isinstance(refused, SagaBusy), refused
    assert "another run in this process" in str(refused)
    assert result.status is SagaStatus.COMPLETED
    assert ledger.calls == ["A", "B", "C"]
    # Once the run has finished, a resume returns its outcome and runs nothing.
    assert asyncio.run(saga.resume("x")).status is SagaStatus.COMPLETED
    assert ledger.calls == ["A", "B", "C"]


def test_S13_a_resume_from_another_threads_loop_while_the_run_goes_on_is_busy() -> None:
    """A sync web app: the request's thread runs the saga in an asyncio.run of
    its own; a retried request resumes it from another thread meanwhile."""
    ledger = Ledger(threaded=True)
    ledger.hold = "B"
    saga = saga_class(ledger)(store=MemorySagaStore())
    outcome: dict[str, Any] = {}

    def request() -> None:
        outcome["request"] = asyncio.run(saga.run(Ctx(), saga_id="x")).status

    thread = threading.Thread(target=request)
    thread.start()
    try:
        assert ledger.inside.wait(30)
        with pytest.raises(SagaBusy):
            asyncio.run(saga.resume("x"))
    finally:
        ledger.gate.set()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"request": SagaStatus.COMPLETED}
    assert ledger.calls == ["A", "B", "C"]


def test_S13_a_resume_of_a_run_that_finished_since_it_read_the_saga_is_busy() -> None:
    """The interleaving a thread switch makes between the resume's read of
    the saga (RUNNING, its run inside A) and the resumed run's start: the
    run has finished meanwhile. Its record is stale: nothing runs again."""
    ledger = Ledger()
    ledger.hold = "A"
    store = MemorySagaStore()
    saga = saga_class(ledger)(store=store)

    async def main() -> None:
        run = asyncio.create_task(saga.run(Ctx(), saga_id="x"))
        await ledger.inside.wait()
        record = await store.load("x")  # what resume read
        assert record.status is SagaStatus.RUNNING
        ledger.gate.set()
        assert (await run).status is SagaStatus.COMPLETED
        with pytest.raises(SagaBusy):
            await saga._resume_record(record)

    asyncio.run(main())
    assert ledger.calls == ["A", "B", "C"]


def crashed_in(ledger: Ledger, saga: Saga[Ctx], step: str) -> None:
    """The run stops in ``step``'s act with a KeyboardInterrupt out of its
    loop, as a process that is interrupted stops: the saga stays RUNNING."""
    ledger.crash = step
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(saga.run(Ctx(), saga_id="x"))


def test_S10_a_saga_whose_run_crashed_out_of_its_loop_is_resumed() -> None:
    ledger = Ledger()
    saga = saga_class(ledger)(store=MemorySagaStore())
    crashed_in(ledger, saga, "B")
    assert asyncio.run(saga.resume("x")).status is SagaStatus.COMPLETED
    # B's call was in doubt: made again, with its key; nothing else twice.
    assert ledger.calls == ["A", "B", "B", "C"]


def test_S10_a_saga_whose_run_crashed_out_of_this_very_task_is_resumed() -> None:
    """The run's task is the resuming one, and not done: the run in it has
    ended all the same (it let the crash out, and the task went on)."""
    ledger = Ledger()
    saga = saga_class(ledger)(store=MemorySagaStore())

    async def main() -> SagaStatus:
        ledger.crash = "B"
        with pytest.raises(KeyboardInterrupt):
            await saga.run(Ctx(), saga_id="x")
        return (await saga.resume("x")).status

    assert asyncio.run(main()) is SagaStatus.COMPLETED
    assert ledger.calls == ["A", "B", "B", "C"]


def test_S13_a_step_resuming_its_own_saga_is_busy() -> None:
    """Its run's task is the resuming one, and the run is the current one."""
    ledger = Ledger()
    refused: list[BaseException] = []

    class Selfish(saga_class(ledger)):  # type: ignore[misc]
        pass

    saga = Selfish(store=MemorySagaStore())
    original = ledger.call

    async def call(name: str) -> None:
        await original(name)
        if name == "B":
            try:
                await saga.resume("x")
            except SagaBusy as error:
                refused.append(error)

    ledger.call = call  # type: ignore[method-assign]
    assert asyncio.run(saga.run(Ctx(), saga_id="x")).status is SagaStatus.COMPLETED
    assert len(refused) == 1
    assert ledger.calls == ["A", "B", "C"]


def test_S10_a_saga_left_in_a_closed_loop_is_resumed() -> None:
    """The loop was closed with the run's task still pending in it (a
    process gone, in memory): nothing will ever drive that run again."""
    ledger = Ledger()
    ledger.hold = "B"
    saga = saga_class(ledger)(store=MemorySagaStore())
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(saga.run(Ctx(), saga_id="x"))

        loop.run_until_complete(ledger.inside.wait())
    finally:
        loop.close()
    assert not task.done()
    assert asyncio.run(saga.resume("x")).status is SagaStatus.COMPLETED
    assert ledger.calls == ["A", "B", "B", "C"]
    # The crashed run, let go by the resume, is freed here, not in a later
    # test (its task is reported destroyed pending, as a closed loop's tasks
    # are, in whichever test's log is open then). The held act's wait on the
    # gate keeps the task: the gate's waiter calls it back. The ledger is let
    # go of that gate because the step classes' closures keep the ledger, and
    # Python 3.12.0-3.12.3 keep the last 128 classes inspect.getattr_static
    # looked at (CPython gh-118013) — the task was freed only when enough
    # later classes had pushed these out, and logged in a later file's test.
    collected = weakref.ref(task)
    ledger.gate = None
    del task, ledger, saga, loop
    gc.collect()
    assert collected() is None, "the crashed run's task outlived its test"


def test_S13_two_resumes_of_a_crashed_saga_run_it_once() -> None:
    ledger = Ledger()
    saga = saga_class(ledger)(store=MemorySagaStore())
    crashed_in(ledger, saga, "B")
    ledger.hold = "C"

    async def main() -> tuple[Any, BaseException | None]:
        first = asyncio.create_task(saga.resume("x"))
        await ledger.inside.wait()
        refused: BaseException | None = None
        try:
            await saga.resume("x")
        except SagaBusy as error:
            refused = error
        ledger.gate.set()
        return await first, refused

    result, refused = asyncio.run(main())
    assert isinstance(refused, SagaBusy)
    assert result.status is SagaStatus.COMPLETED
    assert ledger.calls == ["A", "B", "B", "C"]


def test_S13_two_retries_of_a_failed_unwinding_compensate_once() -> None:
    """``retry_unwinding`` on the memory store, two of them at once: the
    second read the saga FAILED before the first began (a thread switch
    between its read and its run), and is refused as it starts while the
    first is compensating. (One that reads it afterwards finds it
    COMPENSATING: ``SagaNotFailed``.)"""
    ledger = Ledger()
    ledger.fail_undo = True
    store = MemorySagaStore()
    cls = saga_class(ledger)
    saga = cls(store=store)
    with pytest.raises(SagaFailed) as failed:
        asyncio.run(saga.run(Ctx(), saga_id="x"))
    assert failed.value.status is SagaStatus.FAILED
    assert ledger.calls[:3] == ["A", "B", "C"]
    assert "undo-B" in ledger.calls[3:]  # given up on, A's undone (S6)
    ledger.calls.clear()
    ledger.fail_undo = False
    ledger.hold = "undo-B"

    async def main() -> tuple[SagaStatus, BaseException | None]:
        record = await store.load("x")  # what the second retry read
        assert record.status is SagaStatus.FAILED
        first = asyncio.create_task(retry_unwinding(store, [cls], "x"))
        await ledger.inside.wait()
        refused: BaseException | None = None
        try:
            await _Reopening(saga, "second")._resume_record(record)
        except SagaBusy as error:
            refused = error
        ledger.gate.set()
        return await first, refused

    status, refused = asyncio.run(main())
    assert isinstance(refused, SagaBusy)
    assert status is SagaStatus.COMPENSATED
    assert ledger.calls == ["undo-B"]  # once: the one compensation left


class _Forwarding:
    """A user's wrapper around the memory store (metrics, tracing) that
    forwards the ``SagaStore`` methods only — not ``track``/``finished``."""

    def __init__(self, inner: MemorySagaStore) -> None:
        self.inner = inner
        self.appends = 0

    async def create(self, *args: Any, **kwargs: Any) -> None:
        await self.inner.create(*args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.appends += 1
        await self.inner.append(*args, **kwargs)

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)


@pytest.mark.parametrize("max_finished", [10_000, 1])
def test_S6_a_wrapper_without_track_retries_the_unwinding_of_a_watched_saga(
    max_finished: int,
) -> None:
    """The saga ran on the memory store itself (watched in process, kept
    frozen once FAILED); the operator's ``retry_unwinding`` goes through a
    wrapper that does not forward ``track``, so it writes ahead (``append``)
    to that watched saga. It used to be refused as ``SagaAlreadyExists`` (a
    ``SagaInterrupted``); the write takes the saga's record over instead, as
    a resumed run's ``track`` does, and the one compensation left runs once."""
    ledger = Ledger()
    ledger.fail_undo = True
    store = MemorySagaStore(max_finished=max_finished)
    cls = saga_class(ledger)
    with pytest.raises(SagaFailed) as failed:
        asyncio.run(cls(store=store).run(Ctx(), saga_id="x"))
    assert failed.value.status is SagaStatus.FAILED
    ledger.calls.clear()
    ledger.fail_undo = False
    wrapper = _Forwarding(store)
    assert asyncio.run(retry_unwinding(wrapper, [cls], "x")) is SagaStatus.COMPENSATED
    assert ledger.calls == ["undo-B"]
    assert wrapper.appends >= 2  # written ahead, through the wrapper
    record = asyncio.run(store.load("x"))
    assert record.status is SagaStatus.COMPENSATED
    assert [e.status for e in record.history[-2:]] == ["started", "completed"]
    # Retired once more (the oldest finished are still dropped past max_finished).
    asyncio.run(cls(store=store).run(Ctx(), saga_id="y"))
    assert ("x" in store) is (max_finished > 1)


def test_S13_a_wrapper_without_track_cannot_take_a_saga_a_run_still_drives() -> None:
    """The write-ahead takeover is refused (``SagaBusy``, as ``track`` refuses
    a resume) while a run of this process still drives the saga."""
    ledger = Ledger()
    ledger.hold = "B"
    store = MemorySagaStore()
    cls = saga_class(ledger)

    async def main() -> None:
        run = asyncio.create_task(cls(store=store).run(Ctx(), saga_id="x"))
        await ledger.inside.wait()
        held = len((await store.load("x")).history)
        with pytest.raises(SagaBusy):
            await _Forwarding(store).append("x", [], status=SagaStatus.COMPENSATING,
                                            after=held)
        ledger.gate.set()
        assert (await run).status is SagaStatus.COMPLETED

    asyncio.run(main())
    assert ledger.calls == ["A", "B", "C"]
