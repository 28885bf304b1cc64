"""How a saga behaves when its process or its event loop shuts down.

``asyncio.run`` (``asyncio.Runner``) ends by cancelling every task still
pending — the sagas' own tasks *and* the tasks their unwinding runs in — and
Ctrl-C turns into a cancellation of the main task (a second one into
``KeyboardInterrupt``). These tests stop real loops that way (real
processes: ``test_interrupt_matrix.py``), then check the journal
against what the steps' participant saw: no act and no compensation ran
without its journal record (S13), nothing compensated was lost, and every
saga left unfinished is finished by recovery, exactly (S8, S10)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import (
    MemorySagaStore,
    Parallel,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
    recover,
)

pytest_plugins = ["conftest_pg"]

WRITERS = ("thread", "inline", "process")


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Participant:
    """What the steps did, and where one of them waits until the loop shuts down."""

    def __init__(self, hang_at: str | None) -> None:
        self.calls: list[str] = []
        self.hang_at = hang_at
        self.reached = asyncio.Event()

    async def call(self, what: str) -> None:
        self.calls.append(what)
        if what == self.hang_at:
            self.hang_at = None  # once: a resumed run gets through
            self.reached.set()
            await asyncio.Event().wait()  # until the loop cancels us


def shutdown_saga(participant: Participant, *, fail_last: bool = True) -> type[Saga[Ctx]]:
    def step(name: str, fail: bool = False) -> type:
        class Step:
            async def act(self, ctx: Ctx) -> None:
                await participant.call(f"act {name}")
                if fail:
                    raise RuntimeError("declined")
                ctx.n += 1

            async def compensate(self, ctx: Ctx) -> None:
                await participant.call(f"undo {name}")

        Step.__name__ = Step.__qualname__ = name
        return Step

    class ShutdownSaga(Saga[Ctx]):
        steps = [step("A"), step("B"), step("C", fail=fail_last)]

    return ShutdownSaga


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """``stores()``: the store of the test's kind (``kind``), a new object
    on the same data each call — but the one ``MemorySagaStore``."""
    kind = request.getfixturevalue("kind")
    if kind == "memory":
        memory = MemorySagaStore()
        return lambda: memory
    if kind == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        conninfo = request.getfixturevalue("pg_conninfo")
        schema = request.getfixturevalue("pg_schema")
        return lambda: PostgresSagaStore(conninfo, schema=schema, min_size=1)
    return lambda: SQLiteSagaStore(tmp_path / "sagas.db", writer=kind)


def returns_while_unwinding(store: Any, participant: Participant, saga_id: str) -> None:
    """``asyncio.run(main)`` whose ``main`` starts a saga and returns while the
    saga's unwinding waits in a compensation: the runner cancels what is left."""
    saga = shutdown_saga(participant)(store=store)

    async def main() -> None:
        asyncio.get_running_loop().create_task(saga.run(Ctx(), saga_id=saga_id))
        async with asyncio.timeout(10):
            await participant.reached.wait()

    asyncio.run(main())


def test_S8_a_loop_that_ends_under_the_process_writer_leaves_no_pipe_open(
    tmp_path: Path,
) -> None:
    """``asyncio.run`` ends while a saga's compensation waits, the store
    unclosed (its user's ``main`` returned). The process writer's pipes are
    the loop's transports, and a transport's ``close`` needs its loop: once
    the loop had closed, they could only be left "closing" — and each one
    freed warned ``ResourceWarning: unclosed transport`` (an error under
    ``-W error``). They are closed at the loop's end, while it still runs;
    the child sees the end of its input, commits and exits; the journal
    keeps what the run wrote."""
    participant = Participant("undo B")
    path = tmp_path / "sagas.db"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteSagaStore(path, writer="process")
        returns_while_unwinding(store, participant, "s-1")
        del store
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []

    async def after() -> None:
        async with SQLiteSagaStore(path) as store:
            record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATING
        assert [(e.step, e.action, e.status) for e in record.history][-1] == (
            "B", "compensate", StepStatus.STARTED)

    asyncio.run(after())


def retrieve_exceptions(tasks: list[asyncio.Task[Any]]) -> None:
    """Retrieve the exceptions of ``tasks`` that ended (no local is left
    holding the last task: a test checks that it is freed)."""
    [task.exception() for task in tasks if task.done() and not task.cancelled()]


def test_S8_a_loop_whose_shutdown_a_second_ctrl_c_cuts_short_leaves_no_pipe_open(
    tmp_path: Path,
) -> None:
    """As above, but a ``KeyboardInterrupt`` (a second Ctrl-C) cuts the
    runner's shutdown short while it cancels the tasks left: asyncio then
    closes the loop without ``shutdown_asyncgens`` — the process writer is
    never told that its loop ends. Dropped after that, the store still
    closes its pipes: nothing warns ``unclosed transport`` or ``unclosed
    file``, and the child, at the end of its input, keeps what it committed."""
    participant = Participant("undo B")
    path = tmp_path / "sagas.db"

    async def ctrl_c_at_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None  # the runner is cancelling the tasks

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteSagaStore(path, writer="process")
        saga = shutdown_saga(participant)(store=store)

        async def main(saga: Saga[Ctx]) -> None:
            # Held here: a task that only the loop knows may be freed pending.
            tasks.append(asyncio.get_running_loop().create_task(ctrl_c_at_shutdown()))
            tasks.append(asyncio.get_running_loop().create_task(saga.run(Ctx(), saga_id="s-1")))
            async with asyncio.timeout(10):
                await participant.reached.wait()

        interrupted = False
        tasks: list[asyncio.Task[Any]] = []
        try:
            asyncio.run(main(saga))
        except KeyboardInterrupt:
            interrupted = True
        # Retrieved: no "exception was never retrieved" logged when freed.
        retrieve_exceptions(tasks)
        freed = weakref.ref(store)
        del store, saga, tasks[:]
        gc.collect()  # the store's finalizer lets go of the child: it exits
        for thread in threading.enumerate():
            if thread.name == "fallback_saga-sqlite-reaper":  # holds the pipes till then
                thread.join(10)
        gc.collect()
    assert interrupted
    assert freed() is None  # (else nothing was checked)
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []

    async def after() -> None:
        async with SQLiteSagaStore(path) as store:
            record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATING

    asyncio.run(after())


@pytest.mark.parametrize("kind", ["memory", "thread"])
def test_S8_a_saga_left_pending_by_a_cut_short_shutdown_is_freed_without_an_error(
    kind: str, stores: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C cuts ``asyncio.run``'s shutdown short before it has
    cancelled a saga unwinding in a ``compensate``: the loop closes with the
    saga's task pending. Freed, its coroutine is closed by the garbage
    collector, outside the task's context — and the run's cleanup must not
    raise there (it did: ``ValueError: <Token ...> was created in a
    different Context``, printed as "Exception ignored in: <coroutine object
    Saga.run>"). The journal keeps the saga for recovery, as it was."""
    participant = Participant("undo B")
    unraisable: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook",
        lambda report: unraisable.append(f"{report.exc_type.__name__}: {report.exc_value}"),
    )

    async def ctrl_c_at_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None  # the runner is cancelling the tasks

    async def main(saga: Saga[Ctx]) -> None:
        # Held here: a task that only the loop knows may be freed pending.
        tasks.append(asyncio.get_running_loop().create_task(ctrl_c_at_shutdown()))
        tasks.append(asyncio.get_running_loop().create_task(saga.run(Ctx(), saga_id="s-1")))
        async with asyncio.timeout(10):
            await participant.reached.wait()

    store = stores()
    saga = shutdown_saga(participant)(store=store)
    tasks: list[asyncio.Task[Any]] = []
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main(saga))
    retrieve_exceptions(tasks)  # no "exception was never retrieved" logged when freed
    freed = weakref.ref(saga)
    del saga, tasks[:]
    gc.collect()
    assert freed() is None  # (else nothing was checked)
    assert unraisable == []

    async def after() -> None:
        record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATING
        if kind != "memory":
            await store.close()

    asyncio.run(after())



ENDINGS = ("second ctrl-c", "loop closed")


def freed_after_a_cut_short_loop(
    held: list[Any],
    start: Callable[[Any], Coroutine[Any, Any, None]],
    started: asyncio.Event,
    hung: asyncio.Event,
    ending: str,
) -> list[str]:
    """A loop runs ``start(saga)`` (``held``'s one saga — or worker —, let go here) in a
    task, waits for ``started``, then ends with that task pending:
    ``"second ctrl-c"`` — ``asyncio.run`` returns, and a ``KeyboardInterrupt``
    cuts its shutdown short once ``hung`` is set (the work it cancelled
    waits again); ``"loop closed"`` — the loop closes with the task never
    told, as when that second Ctrl-C comes before the task heard the
    runner's cancellation. The saga, freed, has its coroutines closed by the
    garbage collector. Returns what was reported meanwhile: each
    "Exception ignored" (``sys.unraisablehook``) and each warning of the
    kinds ``-W error`` makes fatal here (RuntimeWarning, ResourceWarning)."""
    reported: list[str] = []

    def unraisable(report: Any) -> None:
        reported.append(f"{report.exc_type.__name__}: {report.exc_value}")

    async def ctrl_c_at_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # The runner is cancelling the tasks: once the work it cancelled
            # waits again (whichever task the runner cancelled first).
            await hung.wait()
            raise KeyboardInterrupt from None

    async def main(saga: Any) -> None:
        loop = asyncio.get_running_loop()
        # Held here: a task that only the loop knows may be freed pending.
        if ending == "second ctrl-c":
            tasks.append(loop.create_task(ctrl_c_at_shutdown()))
        tasks.append(loop.create_task(start(saga)))
        async with asyncio.timeout(10):
            await started.wait()

    tasks: list[asyncio.Task[Any]] = []
    saga = held.pop()
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if ending == "loop closed":
                loop = asyncio.new_event_loop()
                loop.run_until_complete(main(saga))
                loop.close()  # the task left pending, as it was
                del loop
            else:
                with pytest.raises(KeyboardInterrupt):
                    asyncio.run(main(saga))
            retrieve_exceptions(tasks)  # no "exception was never retrieved" logged when freed
            freed = weakref.ref(saga)
            del saga, tasks[:]
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert freed() is None  # (else nothing was checked)
    return reported + [
        f"{w.category.__name__}: {w.message}" for w in caught
        if issubclass(w.category, (RuntimeWarning, ResourceWarning))
    ]


@pytest.mark.parametrize("kind", ["memory", "thread"])
@pytest.mark.parametrize("left", ["unwinding a failed step", "unwinding the block",
                                  "in the block, never told"])
def test_S8_a_transaction_left_pending_by_a_cut_short_shutdown_is_freed_without_an_error(
    kind: str, left: str, stores: Callable[[], Any]
) -> None:
    """As above, for a saga driven by ``async with saga.transaction(ctx) as
    tx: async for ...``, whose task the loop left pending: unwinding after
    its last step failed, unwinding the block the shutdown cancelled, or
    still in the block — the second Ctrl-C came before the block's task
    heard the runner's cancellation. Closed by the garbage collector, away
    from its loop, the transaction must neither reset its step cursor in
    that foreign context (``ValueError: ... was created in a different
    Context``) nor try to unwind where nothing can be awaited
    (``RuntimeError: no running event loop``, and a coroutine
    ``UnwindingRun.unwind`` never awaited). The journal keeps the saga for
    recovery, as it was."""
    never_told = left == "in the block, never told"
    participant = Participant(None if never_told else "undo A")
    block_reached = asyncio.Event()

    async def drive(saga: Saga[Ctx]) -> None:
        async with saga.transaction(Ctx(), saga_id="s-1") as tx:
            async for _ in tx:
                if left != "unwinding a failed step":
                    block_reached.set()
                    await asyncio.Event().wait()  # until the loop cancels us

    store = stores()
    reported = freed_after_a_cut_short_loop(
        [shutdown_saga(participant)(store=store)], drive,
        participant.reached if left == "unwinding a failed step" else block_reached,
        participant.reached, "loop closed" if never_told else "second ctrl-c",
    )
    assert reported == []

    async def after() -> None:
        record = await store.load("s-1")
        rows = [(e.step, e.action, e.status) for e in record.history]
        if never_told:
            # (A's completion may not have reached the writer thread.)
            assert record.status is SagaStatus.RUNNING
            assert [row for row in rows if row[1] == "compensate"] == []
        else:
            assert record.status is SagaStatus.COMPENSATING
            assert rows[-1] == ("A", "compensate", StepStatus.STARTED)
        if kind != "memory":
            await store.close()

    asyncio.run(after())


@pytest.mark.parametrize("kind", ["memory", "thread"])
@pytest.mark.parametrize("ending", ENDINGS)
def test_S15_a_child_saga_left_pending_by_a_cut_short_shutdown_is_freed_without_an_error(
    kind: str, ending: str, stores: Callable[[], Any]
) -> None:
    """A parent saga's task is left pending by the loop while its child saga
    (a ``SubSaga`` step) waits in an ``act``. Closed by the garbage
    collector, the ``SubSaga`` step must not reset its stop scope in that
    foreign context: the ``ValueError`` replaced the ``GeneratorExit``, the
    parent took it for its step's failure and tried to unwind where no loop
    runs ("Exception ignored ... RuntimeError: no running event loop", a
    coroutine never awaited). Both sagas are left as their journal holds
    them, for recovery."""
    # After a second Ctrl-C, the shutdown cut short while the child unwinds.
    participant = HangsTwice("act Y", "undo X")
    store = stores()

    async def run(saga: Saga[Ctx]) -> None:
        await saga.run(Ctx(), saga_id="p-1")

    reported = freed_after_a_cut_short_loop(
        [family_saga(participant)(store=store)], run, participant.reached,
        participant.reached_again, ending,
    )
    assert reported == []

    async def after() -> None:
        parent = await store.load("p-1")
        child = await store.load("p-1/Pay")
        if ending == "loop closed":  # never told: as a crash leaves them
            assert parent.status is child.status is SagaStatus.RUNNING
            assert all(e.action == "act" for e in [*parent.history, *child.history])
        else:  # cancelled, the child unwinding itself when the loop closed
            assert parent.status is SagaStatus.RUNNING
            assert child.status is SagaStatus.COMPENSATING
            assert [(e.step, e.action, e.status) for e in child.history][-1] == (
                "X", "compensate", StepStatus.STARTED)
        if kind != "memory":
            await store.close()

    asyncio.run(after())


class HangsTwice(Participant):
    """Waits at ``first`` (``reached``), then at ``then`` (``reached_again``)."""

    def __init__(self, first: str, then: str) -> None:
        super().__init__(first)
        self.then = then
        self.reached_again = asyncio.Event()

    async def call(self, what: str) -> None:
        if what == self.then:
            self.calls.append(what)
            self.reached_again.set()
            await asyncio.Event().wait()  # until the loop cancels us
        await super().call(what)


class StoreThatStopsAnswering:
    """A store of a user's own over ``MemorySagaStore`` whose write number
    ``at`` never answers (a server gone silent)."""

    def __init__(self, participant: Participant, at: int, *, outlives: bool) -> None:
        self.inner = MemorySagaStore()
        self.participant = participant
        self.at = at
        self.writes = 0
        # True: the executor drives each write in the saga's own task
        # (settle_inline); False: in a task of its own (settle).
        self.writes_outlive_cancellation = outlives

    async def _write(self, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        number = self.writes
        self.writes += 1
        if number == self.at:
            self.participant.reached.set()
            await asyncio.Event().wait()  # until the loop cancels us
        await send()

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self._write(lambda: self.inner.create(saga_id, *args, **kwargs))

    async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self._write(lambda: self.inner.append(saga_id, *args, **kwargs))

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)


@pytest.mark.parametrize(("writes", "ending"), [
    ("in the saga's task", "second ctrl-c"),
    ("in the saga's task", "loop closed"),
    ("in a task of their own", "loop closed"),
])
def test_S13_a_journal_write_left_pending_by_a_cut_short_shutdown_is_freed_without_an_error(
    writes: str, ending: str
) -> None:
    """A journal write the store never answers is pending when the loop
    ends, and its task with it. Closed by the garbage collector, the write
    must not reset its deadline in that foreign context (the ``ValueError``
    replaced the ``GeneratorExit``: the run took it for an error and tried
    to unwind where no loop runs), nor wake its waiter on the closed loop
    ("Exception ignored ... RuntimeError: Event loop is closed"). The
    journal is as the loop left it: A's completion never written."""
    participant = Participant(None)
    store = StoreThatStopsAnswering(participant, 1, outlives=writes == "in the saga's task")

    async def run(saga: Saga[Ctx]) -> None:
        await saga.run(Ctx(), saga_id="s-1")

    reported = freed_after_a_cut_short_loop(
        [shutdown_saga(participant)(store=store)], run, participant.reached,
        participant.reached, ending,
    )
    assert reported == []
    assert participant.calls == ["act A"]

    async def after() -> None:
        record = await store.load("s-1")
        assert record.status is SagaStatus.RUNNING
        assert [(e.step, e.action, e.status) for e in record.history] == [
            ("A", "act", StepStatus.STARTED)]

    asyncio.run(after())


@pytest.mark.parametrize("ending", ENDINGS)
def test_S8_a_store_listening_for_work_when_the_loop_is_cut_short_leaves_no_connection_open(
    ending: str, pg_conninfo: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker listens for work (``PostgresSagaStore.work_notifications``:
    a connection of its own, outside the pool) when a second Ctrl-C cuts
    ``asyncio.run``'s shutdown short, or the loop is closed: the generator
    is never closed, its ``finally`` never runs, and the connection, freed
    open, warned ``ResourceWarning: ... was deleted while still open`` (an
    error under ``-W error``). It is closed as the generator is dropped."""
    from fallback_saga.store.postgres import PostgresSagaStore

    listening = asyncio.Event()
    unraisable: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook",
        lambda report: unraisable.append(f"{report.exc_type.__name__}: {report.exc_value}"),
    )

    async def listen(store: PostgresSagaStore) -> None:
        async for _ in store.work_notifications():
            listening.set()  # "" first: listening

    async def ctrl_c_at_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None  # the runner is cancelling the tasks

    async def main(store: PostgresSagaStore) -> None:
        loop = asyncio.get_running_loop()
        if ending == "second ctrl-c":
            tasks.append(loop.create_task(ctrl_c_at_shutdown()))
        tasks.append(loop.create_task(listen(store)))
        async with asyncio.timeout(10):
            await listening.wait()

    tasks: list[asyncio.Task[Any]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1)
        if ending == "loop closed":
            loop = asyncio.new_event_loop()
            loop.run_until_complete(main(store))
            loop.close()
            del loop
        else:
            with pytest.raises(KeyboardInterrupt):
                asyncio.run(main(store))
        retrieve_exceptions(tasks)
        freed = weakref.ref(store)
        del store, tasks[:]
        gc.collect()
    assert freed() is None  # (else nothing was checked)
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
    if ending == "second ctrl-c":
        # (With the loop closed under them, the pool's own tasks print
        # "Exception ignored in: <coroutine object Queue.get>": asyncio's.)
        assert unraisable == []

def test_S8_a_loop_that_ends_under_the_inline_writer_leaves_no_connection_open(
    tmp_path: Path,
) -> None:
    """As above, with ``writer="inline"``: the store's one connection was
    opened on the loop's thread, and nobody closes the store. Dropped, the
    store closes that connection itself (the threads' connections are
    closed by their threads, the writer process's by the child): freeing
    an open ``sqlite3.Connection`` warns ``ResourceWarning: unclosed
    database`` on Python 3.13 — an error under ``-W error``."""
    participant = Participant("undo B")
    path = tmp_path / "sagas.db"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = SQLiteSagaStore(path, writer="inline")
        returns_while_unwinding(store, participant, "s-1")
        del store
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []

    async def after() -> None:
        async with SQLiteSagaStore(path) as store:
            record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATING

    asyncio.run(after())


@pytest.mark.parametrize("kind", ["memory", *WRITERS, "postgres"])
@pytest.mark.parametrize("hang_at", ["undo B", "undo A"])
def test_S8_loop_shutdown_mid_compensation_leaves_the_unwinding_to_recovery(
    kind: str, hang_at: str, stores: Callable[[], Any]
) -> None:
    """The loop's shutdown cancels the unwinding task itself while a
    ``compensate`` is awaited. That compensation did not fail — it was
    interrupted, its effect uncertain — so the journal must not say FAILED
    (a saga FAILED needs an operator; recovery leaves it alone) and the
    earlier steps must not be compensated behind the shutdown's back: the
    saga stays COMPENSATING, and recovery finishes the unwinding."""
    participant = Participant(hang_at)
    returns_while_unwinding(stores(), participant, "s-1")

    async def after() -> None:
        store = stores()
        record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATING
        hung = hang_at.split()[1]
        rows = [(e.step, e.action, e.status) for e in record.history]
        # Its STARTED is durable (it ran), and nothing claims how it ended.
        assert rows[-1] == (hung, "compensate", StepStatus.STARTED)
        assert participant.calls[-1] == hang_at
        # The memory store has no leases for ``recover``: resume it by id there.
        if kind == "memory":
            with pytest.raises(SagaFailed) as failed:
                await shutdown_saga(participant)(store=store).resume("s-1")
            assert failed.value.status is SagaStatus.COMPENSATED
        else:
            report = await recover(store, [shutdown_saga(participant)], older_than=0)
            assert report.compensated == ["s-1"], report
        record = await store.load("s-1")
        assert record.status is SagaStatus.COMPENSATED
        if kind != "memory":
            await store.close()

    asyncio.run(after())
    # The interrupted compensation is called again (compensations are
    # idempotent); every completed step is compensated, each act ran once.
    assert participant.calls == [
        "act A", "act B", "act C", "undo B", *(["undo B"] if hang_at == "undo B" else []),
        "undo A", *(["undo A"] if hang_at == "undo A" else []),
    ]


class P:
    """A group member whose act applies its effect, then the process is
    interrupted right there (KeyboardInterrupt out of the act, as a second
    Ctrl-C raises it wherever the main thread is)."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.interrupt = True
        self.first_ctrl_c: Callable[[], object] | None = None

    async def act(self, ctx: Ctx) -> None:
        await self.participant.call("act P")
        if self.interrupt:
            self.interrupt = False  # once: the resumed run gets through
            await self.participant.reached.wait()  # the sibling is in flight
            if self.first_ctrl_c is not None:
                self.first_ctrl_c()  # the saga's task cancelled, while this act runs
            raise KeyboardInterrupt

    async def compensate(self, ctx: Ctx) -> None:
        await self.participant.call("undo P")


def group_saga(participant: Participant, member: Any) -> type[Saga[Ctx]]:
    class A:
        async def act(self, ctx: Ctx) -> None:
            await participant.call("act A")

        async def compensate(self, ctx: Ctx) -> None:
            await participant.call("undo A")

    class Q:
        async def act(self, ctx: Ctx) -> None:
            await participant.call("act Q")

        async def compensate(self, ctx: Ctx) -> None:
            await participant.call("undo Q")

    class GroupSaga(Saga[Ctx]):
        steps = [A, Parallel(member, Q)]

    return GroupSaga


@pytest.mark.parametrize("kind", ["memory", *WRITERS, "postgres"])
@pytest.mark.parametrize("cancelled_first", [False, True])
def test_S15_a_member_interrupted_in_its_act_leaves_the_saga_to_recovery(
    kind: str, cancelled_first: bool, stores: Callable[[], Any]
) -> None:
    """KeyboardInterrupt out of a group member's act: the process is going
    down, as it would out of a plain step (docs/mechanics.md, Cancellation):
    nothing is unwound in-process, the member's act is not journaled as a
    failure — its effect is applied, or may be — and the saga stays RUNNING
    for recovery, which calls the member again (S10, S15). So too when the
    saga's task was cancelled first (a first Ctrl-C; the second one raises
    the KeyboardInterrupt): the unwinding that cancellation would start must
    not leave the interrupted member's effect in place, uncompensated."""
    participant = Participant("act Q")  # the sibling waits, as in flight
    member = P(participant)

    tasks: list[asyncio.Task[Any]] = []

    async def main() -> None:
        saga = group_saga(participant, member)(store=stores())
        task = asyncio.get_running_loop().create_task(saga.run(Ctx(), saga_id="g-1"))
        tasks.append(task)
        if cancelled_first:
            member.first_ctrl_c = task.cancel
        await task

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    # The task keeps the KeyboardInterrupt it let out: retrieved here, not
    # logged ("never retrieved") whenever the task is freed — on CPython
    # 3.11.7 that log, in the middle of an ast.parse, breaks the parse.
    assert isinstance(tasks[0].exception(), KeyboardInterrupt)

    async def after() -> None:
        store = stores()
        record = await store.load("g-1")
        rows = [(e.step, e.action, e.status) for e in record.history]
        assert record.status is SagaStatus.RUNNING, rows
        # On every store: the memory store, which shows the run's journal
        # as it goes, holds no FAILED row for the interrupted act either.
        assert ("P", "act", StepStatus.FAILED) not in rows, rows
        assert [row for row in rows if row[0] == "P"][-1] == ("P", "act", StepStatus.STARTED)
        saga = group_saga(participant, member)(store=store)
        result = await saga.resume("g-1")
        assert result.status is SagaStatus.COMPLETED
        if kind != "memory":
            await store.close()

    asyncio.run(after())
    assert "undo A" not in participant.calls
    assert participant.calls.count("act A") == 1


class Crash(BaseException):
    """The process dies in a step (as os._exit would, minus the exit): the
    saga stays as its journal has it, for recovery."""


def crashed_saga(participant: Participant, *, crash: bool) -> type[Saga[Ctx]]:
    class A:
        async def act(self, ctx: Ctx) -> None:
            await participant.call("act A")

        async def compensate(self, ctx: Ctx) -> None:
            await participant.call("undo A")

    class B:
        async def act(self, ctx: Ctx) -> None:
            await participant.call("act B")
            if crash:
                raise Crash

        async def compensate(self, ctx: Ctx) -> None:
            await participant.call("undo B")

    class WorkerSaga(Saga[Ctx]):
        steps = [A, B]

    return WorkerSaga


@pytest.mark.parametrize("kind", [*WRITERS, "postgres"])
def test_S8_a_worker_whose_loop_shuts_down_hands_its_sagas_off(
    kind: str, stores: Callable[[], Any]
) -> None:
    """A service runs its ``RecoveryWorker`` in a task of its own and
    ``asyncio.run`` ends (its main returned, or Ctrl-C cancelled it): the
    runner cancels every task left, the worker's saga runs among them. A
    worker's saga is never rolled back for a shutdown (docs/scaling.md,
    Graceful shutdown): it is handed off — not unwound, its lease released —
    as when the task running ``worker.run()`` is cancelled."""

    async def crash_it() -> None:
        store = stores()
        with pytest.raises(Crash):
            await crashed_saga(Participant(None), crash=True)(store=store).run(
                Ctx(), saga_id="w-1"
            )
        await store.close()

    asyncio.run(crash_it())
    participant = Participant("act B")

    async def main() -> None:
        store = stores()
        worker = RecoveryWorker(store, [crashed_saga(participant, crash=False)],
                                older_than=0, poll=0.01)
        asyncio.get_running_loop().create_task(worker.run())
        async with asyncio.timeout(10):
            await participant.reached.wait()  # the worker's run is in B's act

    asyncio.run(main())
    assert participant.calls == ["act A", "act B"][1:]

    async def after() -> None:
        store = stores()
        record = await store.load("w-1")
        rows = [(e.step, e.action, e.status) for e in record.history]
        assert record.status is SagaStatus.RUNNING, rows
        assert all(action == "act" for _, action, _ in rows), rows
        assert (await store.lease_state("w-1")).owner is None  # released, not left to expire
        report = await recover(store, [crashed_saga(participant, crash=False)], older_than=0)
        assert report.resumed == ["w-1"], report
        await store.close()

    asyncio.run(after())
    assert participant.calls == ["act B", "act B"]



@pytest.mark.parametrize("kind", WRITERS)
def test_S8_a_worker_left_pending_by_a_closed_loop_is_freed_without_an_error(
    kind: str, stores: Callable[[], Any]
) -> None:
    """The loop closes with a worker's task pending, never cancelled (as when
    a second Ctrl-C comes before the worker heard the runner's
    cancellation), while the saga it resumed waits in a step. Freed, the
    worker's ``run`` is closed by the garbage collector: its end gave its
    leases back, read the loop's clock and stopped its helper tasks — where
    no loop runs ("Exception ignored in: <coroutine object
    RecoveryWorker.run> ... RuntimeError: no running event loop"). It now
    leaves the leases to run out, as a crash does: the saga is as the loop
    left it, for the next worker. (``poll`` long: the worker claims once,
    then waits for its next poll when the step is reached. A claim still in
    flight as the loop closes is held by the store's writer, which answers
    it — and so keeps the worker — until the store is closed: with a short
    poll, whether the worker was freed here depended on where the loop's
    close found it.)"""
    async def crash_it() -> None:
        store = stores()
        with pytest.raises(Crash):
            await crashed_saga(Participant(None), crash=True)(store=store).run(
                Ctx(), saga_id="w-1"
            )
        await store.close()

    asyncio.run(crash_it())
    participant = Participant("act B")
    reported = freed_after_a_cut_short_loop(
        [RecoveryWorker(stores(), [crashed_saga(participant, crash=False)],
                        older_than=0, poll=3600)],
        lambda worker: worker.run(), participant.reached, participant.reached,
        "loop closed",
    )
    assert reported == []

    async def after() -> None:
        store = stores()
        record = await store.load("w-1")
        assert record.status is SagaStatus.RUNNING
        assert (await store.lease_state("w-1")).owner is not None  # left to run out
        await store.close()

    asyncio.run(after())

@pytest.mark.parametrize("kind", WRITERS)
def test_S8_a_worker_whose_cancelled_drain_is_cut_short_is_freed_without_an_error(
    kind: str, stores: Callable[[], Any]
) -> None:
    """A second Ctrl-C cuts ``asyncio.run``'s shutdown short while the
    worker, cancelled by the runner, waits in its drain for a saga whose
    step swallows every cancellation. Freed, the worker's ``run`` is closed
    by the garbage collector inside its ``except CancelledError``, where its
    ``except GeneratorExit`` never sees it: its end gave leases back and
    stopped its helper tasks where no loop runs ("Exception ignored in:
    <coroutine object RecoveryWorker.run>"). It now leaves the leases to run
    out, as a crash does. (``hung`` is set as the drain waits: the worker's
    "handing off" warning comes right before it.)"""
    async def crash_it() -> None:
        store = stores()
        with pytest.raises(Crash):
            await crashed_saga(Participant(None), crash=True)(store=store).run(
                Ctx(), saga_id="w-1"
            )
        await store.close()

    asyncio.run(crash_it())
    reached, hung = asyncio.Event(), asyncio.Event()

    class Stubborn(Participant):
        async def call(self, what: str) -> None:
            self.calls.append(what)
            if what == "act B":
                reached.set()
                while True:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.Event().wait()

    class Draining(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "handing off" in record.getMessage():
                hung.set()

    draining = Draining()
    worker_log = logging.getLogger("fallback_saga")
    worker_log.addHandler(draining)
    try:
        reported = freed_after_a_cut_short_loop(
            [RecoveryWorker(stores(), [crashed_saga(Stubborn(None), crash=False)],
                            older_than=0, poll=3600)],
            lambda worker: worker.run(), reached, hung, "second ctrl-c",
        )
    finally:
        worker_log.removeHandler(draining)
    assert hung.is_set()
    assert reported == []

    async def after() -> None:
        store = stores()
        record = await store.load("w-1")
        assert record.status is SagaStatus.RUNNING
        await store.close()

    asyncio.run(after())


@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_S8_a_leased_run_left_pending_by_a_closed_loop_is_freed_without_an_error(
    kind: str, stores: Callable[[], Any]
) -> None:
    """A resume under a lease (``LeasedRun.run``, a worker's and a
    recovery pass's) whose task the loop left pending, never cancelled,
    while the saga waits in a step. Closed by the garbage collector, the run asked its task
    whether it was being cancelled (``asyncio.current_task()``: "Exception
    ignored ... RuntimeError: no running event loop") and cancelled its
    heartbeat on the closed loop. The saga and its lease are left as a
    crash leaves them, for the next worker."""
    from fallback_saga.resumption import LeasedRun

    async def crash_it() -> Any:
        store = stores()
        with pytest.raises(Crash):
            await crashed_saga(Participant(None), crash=True)(store=store).run(
                Ctx(), saga_id="l-1"
            )
        (lease,) = await store.claim(owner="w1", lease_seconds=300, older_than=-1, limit=1)
        record = await store.load("l-1")
        return store, lease, record

    store, lease, record = asyncio.run(crash_it())
    participant = Participant("act B")
    reported = freed_after_a_cut_short_loop(
        [LeasedRun(crashed_saga(participant, crash=False)(store=store), record, lease,
                   store=store, lease_seconds=300)],
        lambda run: run.run(), participant.reached, participant.reached, "loop closed",
    )
    del record, lease
    assert reported == []

    async def after() -> None:
        assert (await store.load("l-1")).status is SagaStatus.RUNNING
        assert (await store.lease_state("l-1")).owner == "w1"  # left to run out
        await store.close()

    asyncio.run(after())


@dataclasses.dataclass
class ChildCtx(SagaContext):
    m: int = 0


def family_saga(participant: Participant) -> type[Saga[Ctx]]:
    def step(name: str, context: type, fail: bool = False) -> type:
        class Step:
            async def act(self, ctx: Any) -> None:
                await participant.call(f"act {name}")
                if fail:
                    raise RuntimeError("declined")

            async def compensate(self, ctx: Any) -> None:
                await participant.call(f"undo {name}")

        Step.__name__ = Step.__qualname__ = name
        return Step

    class Child(Saga[ChildCtx]):
        steps = [step("X", ChildCtx), step("Y", ChildCtx)]

    class Parent(Saga[Ctx]):
        steps = [
            step("A", Ctx),
            SubSaga(Child, context=lambda parent: ChildCtx(), name="Pay"),
            step("C", Ctx, fail=True),
        ]

    return Parent


@pytest.mark.parametrize("kind", ["thread", "postgres"])
def test_S15_loop_shutdown_mid_compensation_of_a_child_saga_leaves_both_to_recovery(
    kind: str, stores: Callable[[], Any]
) -> None:
    """The parent's unwinding compensates its child saga, whose own unwinding
    waits in a ``compensate`` when the loop shuts down: neither is journaled
    as FAILED, both stay COMPENSATING, and recovery finishes the family."""
    participant = Participant("undo Y")
    saga = family_saga(participant)(store=stores())

    async def main() -> None:
        asyncio.get_running_loop().create_task(saga.run(Ctx(), saga_id="f-1"))
        async with asyncio.timeout(10):
            await participant.reached.wait()

    asyncio.run(main())

    async def after() -> None:
        store = stores()
        for saga_id in ("f-1", "f-1/Pay"):
            assert (await store.load(saga_id)).status is SagaStatus.COMPENSATING, saga_id
        report = await recover(store, [family_saga(participant)], older_than=0)
        assert report.compensated == ["f-1"], report
        assert (await store.load("f-1/Pay")).status is SagaStatus.COMPENSATED
        await store.close()

    asyncio.run(after())
    assert participant.calls == [
        "act A", "act X", "act Y", "act C", "undo Y", "undo Y", "undo X", "undo A",
    ]
