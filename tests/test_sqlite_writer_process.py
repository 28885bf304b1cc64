"""``SQLiteSagaStore(path, writer="process")``: journal writes committed by a
process of the store's own (``store/_sqlite_pipe.py``).

The store contract runs against it (``test_store_contract.py``), and so does
the S13 fault matrix (``test_journal_truth.py``, ``process``). Here is what
is new with a second process: the child killed with writes on their way, a
child that cannot start, refusals crossing the pipe as themselves, a second
event loop, closing, and a vendored copy of the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_ledger import Ctx, journals_of_sagas, ledger_saga

from fallback_saga import (
    RetryPolicy,
    SagaInterrupted,
    SagaResult,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)
from fallback_saga.errors import (
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaNotFound,
    SagaStoreError,
)
from fallback_saga.store import _sqlite_pipe
from fallback_saga.testing import entry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="signals and fork-free spawn")


def test_bad_options_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writer must be 'thread'"):
        SQLiteSagaStore(tmp_path / "a.db", writer="threads")
    with pytest.raises(ValueError, match="read_only"):
        SQLiteSagaStore(tmp_path / "a.db", writer="process", read_only=True)
    with pytest.raises(ValueError, match="needs a file"):
        SQLiteSagaStore(":memory:", writer="process")
    with pytest.raises(ValueError, match="clock"):
        SQLiteSagaStore(tmp_path / "a.db", writer="process", clock=lambda: 0.0)


async def test_the_journal_is_the_same_as_the_writer_thread_s(tmp_path: Path) -> None:
    journals = []
    for writer in ("thread", "process"):
        ledger: list[tuple[str, str]] = []
        async with SQLiteSagaStore(tmp_path / f"{writer}.db", writer=writer) as store:
            journals.append(await journals_of_sagas(store, ledger, 40))
            assert store.stats.writes >= 40 * 4
    assert journals[0] == journals[1]
    assert all(status is SagaStatus.COMPLETED for status, _, _ in journals[1])


async def test_refusals_cross_the_pipe_as_themselves(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "r.db", writer="process") as store:
        await store.submit_create("a", "Order", "fp", {"order_id": "a"}, [entry(0, "S0")],
                                  SagaStatus.RUNNING)
        with pytest.raises(SagaAlreadyExists) as taken:
            await store.create("a", "Order", "fp", {}, [])
        assert taken.value.saga_id == "a"
        with pytest.raises(JournalConflict) as conflict:
            await store.append("a", [entry(0, "S0")], after=5)
        assert (conflict.value.expected, conflict.value.actual) == (5, 1)
        with pytest.raises(SagaNotFound):
            await store.append("nobody", [entry(0, "S0")])
        lease = await store.claim_saga("a", owner="w", lease_seconds=60)
        stale = dataclasses.replace(lease, token=lease.token - 1)
        with pytest.raises(LeaseLost):
            await store.append("a", [entry(0, "S0")], fence=stale)
        assert len((await store.load("a")).history) == 1


async def test_a_write_the_pipe_cannot_carry_fails_alone(tmp_path: Path) -> None:
    """An entry holding a value of no journal type (a user's own call of
    ``append``): that write is refused, certainly unwritten; the writes
    shipped with it land."""
    from decimal import Decimal

    async with SQLiteSagaStore(tmp_path / "m.db", writer="process") as store:
        for saga_id in ("ok-1", "bad", "ok-2"):
            await store.create(saga_id, "Order", "fp", {}, [])
        odd = entry(0, "S0")._replace(at=Decimal("1.5"))
        outcomes = await asyncio.gather(
            store.append("ok-1", [entry(0, "S0")]),
            store.append("bad", [odd]),
            store.append("ok-2", [entry(0, "S0")]),
            return_exceptions=True,
        )
        assert outcomes[0] is None
        assert outcomes[2] is None
        assert isinstance(outcomes[1], SagaStoreError)
        assert "nothing was written" in str(outcomes[1])
        assert len((await store.load("ok-1")).history) == 1
        assert len((await store.load("ok-2")).history) == 1
        assert (await store.load("bad")).history == []


def child_pid(store: SQLiteSagaStore) -> int:
    process = store._runner._process
    assert process is not None
    pid = process.pid()
    assert pid is not None
    return pid


async def test_S13_the_child_killed_with_writes_on_their_way_loses_nothing(
    tmp_path: Path,
) -> None:
    """SIGKILL the writer process while 30 sagas are between their steps:
    every write on its way fails in doubt, the runs retry (a new child) or
    stop; recovery finishes the rest. Every applied act is in the journal,
    and every saga ends COMPLETED with each step applied."""
    ledger: list[tuple[str, str]] = []
    killed = asyncio.Event()
    async with SQLiteSagaStore(tmp_path / "k.db", writer="process") as store:

        victims: list[int] = []

        async def kill_once(ctx: Ctx) -> None:
            # Once other sagas' writes are in the child (shipped, not answered).
            process = store._runner._process
            assert process is not None
            if not killed.is_set() and sum(map(len, process.waiting.values())) > 0:
                killed.set()
                victims.append(child_pid(store))
                os.kill(victims[0], signal.SIGKILL)

        saga = ledger_saga(ledger, S1=kill_once)(
            store=store, journal_retry=RetryPolicy(attempts=4, delay=0.05, jitter=0)
        )
        outcomes = await asyncio.gather(
            *(saga.run(Ctx(order_id=str(i)), saga_id=f"k-{i}") for i in range(30)),
            return_exceptions=True,
        )
        assert killed.is_set()
        # Each run completed (its writes retried on a new child) or stopped,
        # leaving its saga for recovery; none failed.
        assert {type(o) for o in outcomes} <= {SagaResult, SagaInterrupted}, outcomes
        for _ in range(5):
            if (await recover(store, [saga], older_than=0)).total == 0:
                break
        assert child_pid(store) != victims[0]  # a new child took the retries
        records = {f"k-{i}": await store.load(f"k-{i}") for i in range(30)}
    for saga_id, record in records.items():
        assert record.status is SagaStatus.COMPLETED, (saga_id, record.status)
        started = {e.step for e in record.history if e.action == "act"}
        applied = {step for who, step in ledger if who == saga_id}
        # No effect the journal does not know; every step applied.
        assert applied <= started
        assert applied == {"S0", "S1", "S2"}


async def test_a_child_that_cannot_start_stops_the_run_and_is_not_respawned_per_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[int] = []
    real = _sqlite_pipe.child_command

    def missing() -> list[str]:
        starts.append(1)
        return [str(tmp_path / "no-such-python"), *real()[1:]]

    monkeypatch.setattr(_sqlite_pipe, "child_command", missing)
    with pytest.raises(SagaStoreError, match="cannot start the writer process"):
        async with SQLiteSagaStore(tmp_path / "n.db", writer="process"):
            pass  # open() starts the child: a setup that cannot run it fails here
    starts.clear()
    ledger: list[tuple[str, str]] = []
    store = SQLiteSagaStore(tmp_path / "n.db", writer="process")  # not opened: lazily
    try:
        saga = ledger_saga(ledger)(
            store=store, journal_retry=RetryPolicy(attempts=3, delay=0, jitter=0)
        )
        with pytest.raises(SagaStoreError, match="cannot start the writer process"):
            await saga.run(Ctx(order_id="o"), saga_id="n-1")
        assert ledger == []  # nothing ran before its write-ahead was durable
        assert len(starts) == 1  # the retries met the broken child's error, no new process
        with pytest.raises(SagaNotFound):
            await store.load("n-1")
    finally:
        await store.close()


async def test_another_event_loop_writes_through_the_writer_thread(tmp_path: Path) -> None:
    ledger: list[tuple[str, str]] = []
    async with SQLiteSagaStore(tmp_path / "l.db", writer="process") as store:
        saga = ledger_saga(ledger)(store=store)
        await saga.run(Ctx(order_id="here"), saga_id="here")
        writes_before = store.stats.writes

        def elsewhere() -> None:
            asyncio.run(saga.run(Ctx(order_id="there"), saga_id="there"))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join)
        assert (await store.load("there")).status is SagaStatus.COMPLETED
        assert store._runner._writer is not None
        assert store._runner._writer.writes >= 4  # the other loop's writes took the thread
        assert store.stats.writes >= writes_before + 4


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_store_used_by_successive_event_loops_stops_the_child_of_a_closed_one(
    tmp_path: Path, loop: str
) -> None:
    """A store made at import and used by one ``asyncio.run`` after another
    (function-scoped test loops): the child of a loop that has closed is
    stopped (at the loop's end: see test_shutdown), not left running until
    the parent exits, and the next loop gets a child of its own."""
    factory = None if loop == "asyncio" else pytest.importorskip("uvloop").new_event_loop

    def run(coroutine: Any) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    ledger: list[tuple[str, str]] = []
    store = SQLiteSagaStore(tmp_path / "s.db", writer="process")
    saga = ledger_saga(ledger)(store=store)

    async def run_saga(order_id: str, saga_id: str) -> int:
        await saga.run(Ctx(order_id=order_id), saga_id=saga_id)
        return child_pid(store)  # while its loop runs

    first = run(run_saga("1", "first"))
    second = run(run_saga("2", "second"))
    assert second != first
    assert ends(first)
    run(store.close())
    assert ends(second)
    assert sorted(ledger) == sorted((s, f"S{k}") for s in ("first", "second") for k in range(3))


def ends(pid: int) -> bool:
    """Whether process ``pid`` ends within a few seconds (polled): gone, or a
    zombie (the child watcher of a closed loop may never reap it: that takes
    this process's own exit, and costs nothing meanwhile)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if stat.read_text().rpartition(")")[2].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        except OSError:
            pass  # no /proc here: wait until it is gone
        time.sleep(0.01)
    return False


async def exits(pid: int) -> bool:
    """Whether process ``pid`` is gone (reaped) within a few seconds."""
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_close_finishes_the_writes_then_stops_the_child(tmp_path: Path) -> None:
    ledger: list[tuple[str, str]] = []
    store = SQLiteSagaStore(tmp_path / "c.db", writer="process")
    saga = ledger_saga(ledger)(store=store)
    await saga.run(Ctx(order_id="o"), saga_id="c-1")
    pid = child_pid(store)
    process = store._runner._process
    assert process is not None
    pending = process.submit("a", ("c-1", (), "running", None, None, None))
    await store.close()
    assert pending.done()
    assert pending.exception() is None
    await store.close()  # twice: harmless
    assert await exits(pid)
    with pytest.raises(SagaStoreError, match="closed"):
        await saga.run(Ctx(order_id="o"), saga_id="c-2")


async def test_a_store_dropped_unclosed_stops_its_child(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "d.db", writer="process")
    await ledger_saga([])(store=store).run(Ctx(order_id="o"), saga_id="d-1")
    pid = child_pid(store)
    del store
    gc.collect()
    assert await exits(pid)


async def test_ctrl_c_in_the_terminal_does_not_stop_the_writer(tmp_path: Path) -> None:
    """SIGINT reaches the whole process group; the child ignores it (its
    parent ends it by closing its input), so the writes on their way land."""
    async with SQLiteSagaStore(tmp_path / "i.db", writer="process") as store:
        pid = child_pid(store)
        os.kill(pid, signal.SIGINT)
        await ledger_saga([])(store=store).run(Ctx(order_id="o"), saga_id="i-1")
        assert child_pid(store) == pid
        assert (await store.load("i-1")).status is SagaStatus.COMPLETED


def test_a_vendored_copy_starts_its_child_without_importing_the_application(
    tmp_path: Path,
) -> None:
    """The child imports the package from where it lies, as a top-level
    package: the application's own package (here ``app``, whose import is
    recorded) is not imported again in it."""
    vendor = tmp_path / "app" / "_vendor"
    vendor.mkdir(parents=True)
    package = Path(_sqlite_pipe.__file__).resolve().parent.parent
    shutil.copytree(package, vendor / "fallback_saga",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "app" / "__init__.py").write_text(
        "import os\nwith open(os.environ['IMPORTS'], 'a') as f: f.write(f'{os.getpid()}\\n')\n"
    )
    (vendor / "__init__.py").write_text("")
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import asyncio, dataclasses, sys
        from app._vendor.fallback_saga import Saga, SagaContext, SQLiteSagaStore

        @dataclasses.dataclass
        class Ctx(SagaContext):
            order_id: str

        class Step:
            async def act(self, ctx): return "ok"
            async def compensate(self, ctx): pass

        class Order(Saga[Ctx]):
            steps = [Step]

        async def main():
            async with SQLiteSagaStore(sys.argv[1], writer="process") as store:
                await Order(store=store).run(Ctx(order_id="o"), saga_id="v-1")
                print((await store.load("v-1")).status.value, store.stats.commits)

        asyncio.run(main())
    """))
    imports = tmp_path / "imports.txt"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "v.db")], cwd=tmp_path,
        env={**os.environ, "IMPORTS": str(imports), "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status, commits = out.stdout.split()
    assert status == "completed"
    assert int(commits) >= 2
    assert len(imports.read_text().split()) == 1  # the application, in the parent only


async def test_a_close_cancelled_while_the_writer_process_finishes_still_stops_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's threads (its reader, and the writer thread that serves
    other loops) were told to stop only after the writer process had closed:
    a ``close()`` cancelled meanwhile (a shutdown that timed out) left them
    running for the life of the process, on a store that says it is closed."""
    store = SQLiteSagaStore(tmp_path / "c.db", writer="process")
    await store.create("a", "Order", "fp", {}, [])  # starts the writer process
    await store.load("a")  # starts the reader thread
    reader = store._runner._reader
    process = store._runner._process
    assert reader is not None
    assert process is not None
    held = asyncio.Event()
    finish_closing = process.close

    async def held_close() -> None:
        held.set()
        await asyncio.Event().wait()  # until cancelled

    monkeypatch.setattr(process, "close", held_close)
    closing = asyncio.ensure_future(store.close())
    await held.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.to_thread(reader.thread.join, 60)  # a bound, not a wait for time
    assert not reader.thread.is_alive()
    await finish_closing()  # the child, which the cancelled close left
