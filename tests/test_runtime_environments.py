"""The event loops and processes a saga store lives in, besides the one loop of
a plain ``asyncio.run``: a process forked after the store was opened (gunicorn
``--preload``, multiprocessing's "fork"), and uvloop.

The rule held is S13's "nothing hangs, nothing is lost": each store works in
the forked child on connections and threads of the child's own, and the
parent keeps working; under uvloop every writer works as under asyncio's
own loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers_fork import fork, in_a_forked_child, refused_at_once
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import SagaInterrupted, SagaStatus, SQLiteSagaStore
from fallback_saga.errors import SagaStoreError
from fallback_saga.store import _sqlite_pipe
from fallback_saga.store import _sqlite_runner as sqlite_runner

WRITERS = ["thread", "inline", "process"]

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _completes(
    store: SQLiteSagaStore, saga_id: str, ledger: list[tuple[str, str]]
) -> Coroutine[Any, Any, bool]:
    async def run() -> bool:
        await ledger_saga(ledger)(store=store).run(Ctx(order_id=saga_id), saga_id=saga_id)
        return (await store.load(saga_id)).status is SagaStatus.COMPLETED

    return run()


@needs_fork
@pytest.mark.parametrize("writer", WRITERS)
def test_S13_a_forked_child_uses_the_parents_store_on_its_own_connections(
    tmp_path: Path, writer: str
) -> None:
    """The store was opened (threads, connections, writer process) before the
    fork: the child's sagas and reads work, never waiting on a thread or a
    process that is the parent's; the parent's store goes on working."""
    ledger: list[tuple[str, str]] = []
    store = SQLiteSagaStore(tmp_path / "f.db", writer=writer)
    runner = asyncio.Runner()  # the parent's loop stays open over the fork
    try:
        assert runner.run(_completes(store, "before", ledger))

        def child() -> int:
            async def work() -> int:
                if not await _completes(store, "in-child", ledger):
                    return 2
                if (await store.load("before")).status is not SagaStatus.COMPLETED:
                    return 3
                await store.close()
                return 0

            return asyncio.run(work())

        assert in_a_forked_child(child) == 0
        assert runner.run(_completes(store, "after", ledger))
        assert runner.run(store.load("in-child")).status is SagaStatus.COMPLETED
        runner.run(store.close())
    finally:
        runner.close()
    assert sorted(ledger) == sorted(
        (saga, f"S{k}") for saga in ("before", "after") for k in range(3)
    )  # the child's steps ran in the child's ledger


def _forked_mid_request(
    store: SQLiteSagaStore, child: Callable[[], int], *, on_another_thread: bool = False
) -> None:
    """A saga completes; then a request of the store's is held inside SQLite
    (by its writer: ``on_another_thread`` for an inline one, whose request
    runs on the calling thread) until the process has forked a child that
    runs ``child``, which must exit 0. The parent's request then finishes,
    and a saga run after the fork completes: the parent goes on."""
    runner = asyncio.Runner()
    inside, forked = threading.Event(), threading.Event()

    def held(cursor: Any, txn: Any) -> None:  # an op, run by the store's thread
        cursor.execute("SELECT 1")
        inside.set()
        forked.wait(10)

    async def around_the_fork() -> int:
        async def request() -> None:
            await store._submit(held, (), write=True)

        if on_another_thread:
            write = asyncio.ensure_future(asyncio.to_thread(asyncio.run, request()))
        else:
            write = asyncio.ensure_future(request())
        await asyncio.to_thread(inside.wait, 10)
        code = in_a_forked_child(child, before_waiting=forked.set)
        await write
        return code

    try:
        assert runner.run(_completes(store, "before", []))
        assert runner.run(around_the_fork()) == 0
        assert runner.run(_completes(store, "after", []))
        runner.run(store.close())
    finally:
        runner.close()


@needs_fork
def test_S13_a_fork_while_the_writer_stays_busy_is_refused_in_the_child_never_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork waits for the store's threads to leave SQLite (a connection in
    use at the fork keeps SQLite's mutex held for ever in the child, which
    can then neither use nor close it). A request still running past that
    wait: the child's store refuses every call, saying why, instead of
    hanging; the parent's request finishes and the store goes on."""
    monkeypatch.setattr(sqlite_runner, "_FORK_WAIT", 0.2)
    store = SQLiteSagaStore(tmp_path / "m.db")

    def child() -> int:
        async def refused() -> int:
            try:
                await store.load("before")
            except SagaStoreError as error:
                return 0 if "forked" in str(error) else 2
            return 3

        return asyncio.run(refused())

    _forked_mid_request(store, child)


@needs_fork
@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_S13_a_store_forked_away_mid_request_is_refused_at_once_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """The child's copy of a store forked in the middle of a request never
    comes back (its connections are the parent's, in use at the fork): its
    refusal is ``StoreClosed``, definitive as a closed store's, so a saga
    run in the child stops at its creation instead of spending the whole
    ``journal_retry`` budget (``refused_at_once``: counted, not timed)."""
    monkeypatch.setattr(sqlite_runner, "_FORK_WAIT", 0.2)
    store = SQLiteSagaStore(tmp_path / "r.db", writer=writer)
    _forked_mid_request(
        store, lambda: refused_at_once(store, saying="another process"),
        on_another_thread=writer == "inline",
    )


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    uvloop = pytest.importorskip("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@needs_fork
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_S13_the_parent_closes_its_writer_process_at_once_while_a_forked_child_lives(
    tmp_path: Path, loop: str
) -> None:
    """The child inherits the pipe to the parent's writer process; unless it
    lets go of it, the writer never sees the end of its input while the child
    lives, and the parent's close() waits for it."""
    store = SQLiteSagaStore(tmp_path / "p.db", writer="process")
    runner = asyncio.Runner(loop_factory=_loop_factory(loop))
    try:
        assert runner.run(_completes(store, "before", []))
        read, write = os.pipe()

        def child() -> int:
            os.close(write)
            os.read(read, 1)  # alive until the parent is done
            return 0

        pid = fork(child)
        os.close(read)
        try:
            process = store._runner._process
            assert process is not None
            transport = process.transport
            assert transport is not None
            runner.run(asyncio.wait_for(store.close(), 30))
            # It saw the end of its input and exited: not killed after
            # close()'s 10 s wait (which ends in SIGKILL, exit code -9).
            assert transport.get_returncode() == 0
        finally:
            os.close(write)
            os.waitpid(pid, 0)
    finally:
        runner.close()


async def test_S13_a_writer_process_whose_start_breaks_fails_its_writes_never_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while the child is being set up (here: the loop's
    pipe transport is not what the start expects) fails open() and the writes
    waiting with SagaStoreError; a saga stops with SagaInterrupted."""

    def broken(*_args: Any, **_kwargs: Any) -> bytes:
        raise RuntimeError("the pipe transport says no")

    store = SQLiteSagaStore(tmp_path / "b.db", writer="process")
    monkeypatch.setattr(_sqlite_pipe, "frame", broken)
    try:
        async with asyncio.timeout(20):
            with pytest.raises(SagaStoreError, match="writer process"):
                await store.open()
            with pytest.raises(SagaInterrupted):
                await ledger_saga([])(store=store).run(Ctx(order_id="b"), saga_id="b-1")
    finally:
        monkeypatch.undo()
        await store.close()


@pytest.mark.parametrize("writer", WRITERS)
def test_S13_every_writer_works_under_uvloop(tmp_path: Path, writer: str) -> None:
    uvloop = pytest.importorskip("uvloop")
    ledger: list[tuple[str, str]] = []

    async def main() -> None:
        async with asyncio.timeout(30):
            async with SQLiteSagaStore(tmp_path / "u.db", writer=writer) as store:
                assert await _completes(store, "u-1", ledger)
                # A caller's timeout during a step: compensated, journaled so (S8).
                gate = asyncio.Event()

                async def stuck(_ctx: Ctx) -> None:
                    await gate.wait()

                saga = ledger_saga(ledger, S1=stuck)(store=store)
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await saga.run(Ctx(order_id="u-2"), saga_id="u-2")
                assert (await store.load("u-2")).status is SagaStatus.COMPENSATED

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert sorted(ledger) == sorted(
        [("u-1", "S0"), ("u-1", "S1"), ("u-1", "S2"), ("u-2", "S0"), ("u-2", "undo-S0")]
    )
