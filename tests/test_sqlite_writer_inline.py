"""``SQLiteSagaStore(path, writer="inline")``: no thread; each request runs on
the calling thread, one at a time, and its future is settled before the call
returns.

The store contract runs against it (``test_store_contract.py``), and so does
the S13 fault matrix (``test_journal_truth.py``, ``inline``). Here is what is
new without a thread: no thread is started, a write is committed by the time
its call returns, several threads' event loops share the store, a locked file
and a full disk fail one call each and the store goes on, closing, read-only
reads, and a process killed in the middle of a saga, recovered from its file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_ledger import Ctx, journals_of_sagas, ledger_saga

from fallback_saga import Saga, SagaContext, SagaStatus, SQLiteSagaStore, recover
from fallback_saga.errors import SagaStoreError
from fallback_saga.store import _sqlite_workers
from fallback_saga.testing import entry

SAGAS = 60  # per thread, in the test below


def store_threads() -> set[threading.Thread]:
    """The store threads alive now (an earlier store's may still be ending:
    compare sets of threads, never counts)."""
    return {t for t in threading.enumerate() if t.name.startswith("fallback_saga-sqlite")}


def test_a_bad_writer_names_inline_among_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'inline'"):
        SQLiteSagaStore(tmp_path / "a.db", writer="inlined")


async def test_no_thread_is_started_and_the_journal_matches_the_writer_thread_s(
    tmp_path: Path,
) -> None:
    journals = []
    for writer in ("thread", "inline"):
        ledger: list[tuple[str, str]] = []
        before = store_threads()
        async with SQLiteSagaStore(tmp_path / f"{writer}.db", writer=writer) as store:
            journals.append(await journals_of_sagas(store, ledger, 30))
            if writer == "inline":
                assert store_threads() <= before  # none started
                # One commit per write: nothing groups them.
                assert store.stats.commits == store.stats.writes >= 30 * 4
    assert journals[0] == journals[1]
    assert all(status is SagaStatus.COMPLETED for status, _, _ in journals[1])


async def test_a_write_is_committed_when_its_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    async with SQLiteSagaStore(path, writer="inline") as store:
        future = store.submit_create(
            "w-1", "Order", "fp", {"order_id": "o"},
            [entry(0, "Reserve")], SagaStatus.RUNNING,
        )
        # Settled before the call returned: committed, as another connection sees.
        assert future.done()
        assert future.exception() is None
        other = sqlite3.connect(path)
        try:
            (status,) = other.execute(
                "SELECT status FROM sagas WHERE saga_id = 'w-1'"
            ).fetchone()
        finally:
            other.close()
        assert status == "running"
        refused = store.submit_create(
            "w-1", "Order", "fp", {"order_id": "o"}, [], SagaStatus.RUNNING
        )
        assert refused.done()
        assert type(refused.exception()).__name__ == "SagaAlreadyExists"


def test_event_loops_on_several_threads_share_one_store(tmp_path: Path) -> None:
    """Each thread's writes take the store's connection in turn (without the
    lock, SQLite refuses a BEGIN inside another thread's transaction)."""
    store = SQLiteSagaStore(tmp_path / "shared.db", writer="inline")
    ledger: list[tuple[str, str]] = []
    saga = ledger_saga(ledger)(store=store)
    errors: list[BaseException] = []

    def loop_thread(n: int) -> None:
        async def main() -> None:
            for i in range(SAGAS):
                await saga.run(Ctx(order_id="o"), saga_id=f"t{n}-{i}")

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=loop_thread, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []

    async def check() -> None:
        for n in range(4):
            for i in range(SAGAS):
                record = await store.load(f"t{n}-{i}")
                assert record.status is SagaStatus.COMPLETED
                assert [e.status.value for e in record.history].count("completed") == 3
        await store.close()

    asyncio.run(check())
    assert len(ledger) == 4 * SAGAS * 3


async def test_a_locked_file_fails_one_call_and_the_store_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with SQLiteSagaStore(path, writer="inline", busy_timeout=0.05) as store:
        saga = ledger_saga([])(store=store)
        await saga.run(Ctx(order_id="o"), saga_id="before")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held
        try:
            future = store.submit_create(
                "during", "Order", "fp", {"order_id": "o"}, [], SagaStatus.RUNNING
            )
            assert future.done()
            error = future.exception()
            assert isinstance(error, SagaStoreError)
            assert "locked" in str(error)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await saga.run(Ctx(order_id="o"), saga_id="after")
        assert (await store.load("after")).status is SagaStatus.COMPLETED
        assert await store.list_sagas() is not None


async def test_a_full_disk_fails_the_commit_and_nothing_of_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "full.db"
    async with SQLiteSagaStore(path, writer="inline") as store:
        saga = ledger_saga([])(store=store)
        await saga.run(Ctx(order_id="o"), saga_id="before")
        real = _sqlite_workers._Worker._write

        def disk_full(self: Any, conn: sqlite3.Connection, cursor: Any, group: Any) -> None:
            # What SQLite reports when the WAL cannot grow: the COMMIT fails.
            def failing_commit(sql: str, *args: Any) -> Any:
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return plain_execute(sql, *args)

            plain_execute = cursor.execute
            wrapped = _CursorProxy(cursor, failing_commit)
            return real(self, conn, wrapped, group)  # type: ignore[arg-type]

        monkeypatch.setattr(_sqlite_workers._Worker, "_write", disk_full)
        future = store.submit_create(
            "lost", "Order", "fp", {"order_id": "o"}, [], SagaStatus.RUNNING
        )
        assert isinstance(future.exception(), SagaStoreError)
        assert "disk is full" in str(future.exception())
        monkeypatch.setattr(_sqlite_workers._Worker, "_write", real)
        assert [s.saga_id for s in await store.list_sagas()] == ["before"]
        await saga.run(Ctx(order_id="o"), saga_id="after")
        assert (await store.load("after")).status is SagaStatus.COMPLETED


class _CursorProxy:
    def __init__(self, cursor: Any, execute: Any) -> None:
        self._cursor = cursor
        self.execute = execute

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


async def test_closing_refuses_later_calls_and_twice_is_harmless(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "c.db", writer="inline")
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(SagaStoreError, match="closed"):
        await store.load("x")


async def test_read_only_reads_run_inline_too(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    async with SQLiteSagaStore(path) as writer:
        await ledger_saga([])(store=writer).run(Ctx(order_id="o"), saga_id="r-1")
    before = store_threads()
    async with SQLiteSagaStore(path, writer="inline", read_only=True) as store:
        assert (await store.load("r-1")).status is SagaStatus.COMPLETED
        assert store_threads() <= before  # none started
        with pytest.raises(SagaStoreError, match="read-only"):
            await store.create("r-2", "Order", "fp", {"order_id": "o"}, [])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_process_killed_mid_saga_is_recovered_from_its_file(tmp_path: Path) -> None:
    """The child runs with writer="inline" and is killed in step S1's act:
    S0's effect is journaled, S1's STARTED too; recovery (another process's
    store, the default writer) runs S1 and S2 and every effect happens once
    per completed act."""
    ledger_file = tmp_path / "ledger.txt"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import asyncio, dataclasses, os, signal, sys
        from fallback_saga import Saga, SagaContext, SQLiteSagaStore

        @dataclasses.dataclass
        class Ctx(SagaContext):
            order_id: str

        def step(name, die=False):
            class Step:
                async def act(self, ctx):
                    if die:
                        os.kill(os.getpid(), signal.SIGKILL)
                    with open(sys.argv[2], "a") as f:
                        f.write(name + "\\n")
                async def compensate(self, ctx):
                    pass
            Step.__name__ = Step.__qualname__ = name
            return Step

        class Order(Saga[Ctx]):
            steps = [step("S0"), step("S1", die=True), step("S2")]

        async def main():
            async with SQLiteSagaStore(sys.argv[1], writer="inline") as store:
                await Order(store=store).run(Ctx(order_id="o"), saga_id="k-1")

        asyncio.run(main())
    """))
    db = tmp_path / "k.db"
    out = subprocess.run(
        [sys.executable, str(script), str(db), str(ledger_file)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(_sqlite_workers.__file__).parents[2])},
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert ledger_file.read_text().split() == ["S0"]

    resumed: list[str] = []

    def step(name: str) -> type:
        class Step:
            async def act(self, ctx: Any) -> None:
                resumed.append(name)

            async def compensate(self, ctx: Any) -> None:
                raise AssertionError("nothing is undone")

        Step.__name__ = Step.__qualname__ = name
        return Step

    @dataclasses.dataclass
    class ChildCtx(SagaContext):
        order_id: str

    ChildCtx.__name__ = ChildCtx.__qualname__ = "Ctx"

    class Order(Saga[ChildCtx]):
        steps = [step("S0"), step("S1"), step("S2")]

    async def recovery() -> None:
        async with SQLiteSagaStore(db) as store:
            record = await store.load("k-1")
            assert record.status is SagaStatus.RUNNING
            assert [(e.step, e.status.value) for e in record.history] == [
                ("S0", "started"), ("S0", "completed"), ("S1", "started"),
            ]
            report = await recover(store, [Order], older_than=0)
            assert report.resumed == ["k-1"], report
            assert (await store.load("k-1")).status is SagaStatus.COMPLETED

    asyncio.run(recovery())
    # S0 ran once, before the kill; S1 (whose act was cut short) and S2 after.
    assert ledger_file.read_text().split() == ["S0"]
    assert resumed == ["S1", "S2"]
