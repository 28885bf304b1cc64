"""Shared circuit state: breakers of one name in several instances agree on
OPEN / CLOSED / HALF_OPEN through a ``CircuitStateStore``.

Two breakers in one process share an SQLite file and one ``FakeClock`` (as both
their monotonic and their wall clock), so every step is deterministic; a
wrapper counts the store calls to show that the closed path makes none
between pulls. The last tests run two real processes on one SQLite file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_breaker import (
    RESET,
    SYNC,
    Boom,
    FakeClock,
    StateChanges,
    fail_with,
    shared_breaker,
    succeed,
    trip,
)
from helpers_fork import fork, in_a_forked_child

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CircuitStateStore,
    LoggingListener,
    SagaListener,
    SharedCircuit,
    SQLiteCircuitStateStore,
    SQLiteSagaStore,
)

pytest_plugins = ["conftest_pg"]

ROOT = Path(__file__).resolve().parent.parent



class CountingStore:
    """Wraps a store and counts its calls."""

    def __init__(self, inner: CircuitStateStore) -> None:
        self.inner = inner
        self.calls = 0

    def read(self, name: str) -> SharedCircuit | None:
        self.calls += 1
        return self.inner.read(name)

    def compare_and_set(self, *args: Any) -> SharedCircuit | None:
        self.calls += 1
        return self.inner.compare_and_set(*args)


class BrokenStore:
    """A store that is unreachable."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, name: str) -> SharedCircuit | None:
        self.calls += 1
        raise ConnectionError("store down")

    def compare_and_set(self, *args: Any) -> SharedCircuit | None:
        self.calls += 1
        raise ConnectionError("store down")


class StoreFailures(SagaListener):
    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        self.failures.append((breaker, type(error).__name__))


make = shared_breaker


async def rejected(breaker: CircuitBreaker) -> bool:
    try:
        await breaker.call(succeed)
    except CircuitOpenError:
        return True
    return False


# --------------------------------------------------------------------------- the store


def test_sqlite_store_compare_and_set_is_versioned(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    assert circuit_file_store.read("x") is None
    first = circuit_file_store.compare_and_set("x", 0, CircuitState.OPEN, 123.0, None)
    assert first is not None
    assert first.version == 1
    assert first.state is CircuitState.OPEN
    assert circuit_file_store.compare_and_set("x", 0, CircuitState.OPEN, 1.0, None) is None
    assert circuit_file_store.compare_and_set("x", 2, CircuitState.CLOSED, 0.0, None) is None
    second = circuit_file_store.compare_and_set("x", 1, CircuitState.HALF_OPEN, 5.0, "me")
    assert second is not None
    assert second.version == 2
    row = circuit_file_store.read("x")
    assert row is not None
    assert (row.state, row.version, row.open_until, row.half_open_owner) == (
        CircuitState.HALF_OPEN, 2, 5.0, "me",
    )
    assert isinstance(circuit_file_store, CircuitStateStore)


def _open_files(path: Path) -> int:
    """How many file descriptors of this process are open on ``path``."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                count += 1
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_sqlite_store_closes_the_connection_of_a_thread_that_ended(tmp_path: Path) -> None:
    path = tmp_path / "breakers.db"
    store = SQLiteCircuitStateStore(path)
    store.read("payments")  # this thread's connection stays
    kept = _open_files(path)
    assert kept >= 1
    for _ in range(10):
        thread = threading.Thread(target=store.read, args=("payments",))
        thread.start()
        thread.join()
    # SQLite may hold on to the file of one closed connection while another
    # connection of the process has it open (not to drop its POSIX locks),
    # and reuses it for the next one: at most one more, not one per thread.
    assert _open_files(path) <= kept + 1
    store.close()
    assert _open_files(path) == 0


async def test_sqlite_store_shares_a_file_with_the_saga_store(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    async with SQLiteSagaStore(path) as sagas:
        await sagas.list_sagas()
        breakers = SQLiteCircuitStateStore(path)
        breakers.compare_and_set("p", 0, CircuitState.OPEN, 1.0, None)
        assert breakers.read("p") is not None
        await sagas.list_sagas()
        breakers.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "fallback_saga_breakers" in tables


def test_sqlite_store_refuses_memory() -> None:
    with pytest.raises(ValueError, match="file"):
        SQLiteCircuitStateStore(":memory:")


def test_sqlite_store_names_a_missing_directory(tmp_path: Path) -> None:
    """SQLite says only "unable to open database file"; the breaker logs the
    store's error and goes on locally, so those words are all an operator sees."""
    breakers = SQLiteCircuitStateStore(tmp_path / "no" / "such" / "breakers.db")
    with pytest.raises(sqlite3.OperationalError, match=(
        r"unable to open database file \(the directory .*no.such does not exist"
    )):
        breakers.read("payments")
    (tmp_path / "no" / "such").mkdir(parents=True)
    assert breakers.read("payments") is None  # the next call opens it
    breakers.close()


@pytest.mark.parametrize("path", [5, None])
def test_sqlite_store_names_a_path_of_the_wrong_type(path: Any) -> None:
    with pytest.raises(TypeError, match=r"SQLiteCircuitStateStore takes the path of its database"):
        SQLiteCircuitStateStore(path)


# --------------------------------------------------------------------------- construction


def test_shared_breaker_needs_a_name(circuit_file_store: SQLiteCircuitStateStore) -> None:
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(state_store=circuit_file_store)


@pytest.mark.parametrize("interval", [0, -1.0, float("inf"), True, "1"])
def test_shared_breaker_sync_interval_must_be_positive_seconds(
    circuit_file_store: SQLiteCircuitStateStore, interval: Any
) -> None:
    with pytest.raises(ValueError, match="sync_interval"):
        CircuitBreaker(name="x", state_store=circuit_file_store, sync_interval=interval)


def test_shared_breaker_rejects_a_non_store() -> None:
    with pytest.raises(TypeError, match="CircuitStateStore"):
        CircuitBreaker(name="x", state_store=object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sharing


async def test_shared_an_opened_circuit_is_adopted_at_the_next_sync_not_before(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a = make(circuit_file_store, clock)
    counted = CountingStore(circuit_file_store)
    b = make(counted, clock)
    await b.call(succeed)  # b's first call pulls (nothing shared yet)
    assert counted.calls == 1

    await trip(a)
    assert a.state is CircuitState.OPEN
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN

    for _ in range(100):  # before b's next sync: in memory only, still closed
        assert await b.call(succeed) == "ok"
    assert counted.calls == 1
    assert b.state is CircuitState.CLOSED

    clock.advance(SYNC)
    with pytest.raises(CircuitOpenError) as caught:
        await b.call(succeed)
    assert counted.calls == 2
    assert b.state is CircuitState.OPEN
    assert caught.value.retry_after == pytest.approx(RESET - SYNC)
    for _ in range(10):  # the rejection path makes no store call either
        assert await rejected(b)
    assert counted.calls == 2


async def test_shared_closed_path_reads_the_clock_once_and_the_store_never(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    counted = CountingStore(circuit_file_store)
    breaker = make(counted, clock)
    await breaker.call(succeed)
    reads, calls = clock.reads, counted.calls
    for _ in range(50):
        await breaker.call(succeed)
    assert clock.reads - reads == 50
    assert counted.calls == calls


async def test_local_breaker_closed_path_reads_no_clock() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(50):
        await breaker.call(succeed)
    assert clock.reads == 0


async def test_shared_only_one_instance_runs_half_open_trials(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(SYNC)
    assert await rejected(b)  # b adopted OPEN

    clock.advance(RESET)  # both past the reset timeout
    permit = a.acquire()  # a claims the trial round
    assert a.state is CircuitState.HALF_OPEN
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.half_open_owner == a.instance_id

    with pytest.raises(CircuitOpenError):
        b.acquire()  # b lost the claim: it keeps rejecting
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):  # a's one trial slot is taken
        a.acquire()
    a.release(permit)


async def test_shared_owner_closes_and_the_other_adopts_closed(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    changes = StateChanges()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock, listeners=[changes])
    await b.call(succeed)
    await trip(a)
    clock.advance(SYNC)
    assert await rejected(b)
    clock.advance(RESET)
    assert await a.call(succeed) == "ok"  # a's trial succeeds: closed everywhere
    assert a.state is CircuitState.CLOSED
    # b's pull is due (the clock moved past its sync time): it adopts CLOSED
    # instead of claiming trials of its own.
    assert await b.call(succeed) == "ok"
    assert b.state is CircuitState.CLOSED
    assert changes.edges()[-1] == (CircuitState.OPEN, CircuitState.CLOSED)


async def test_shared_other_instance_waits_for_the_owner_then_adopts_closed(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(RESET)
    permit = a.acquire()  # a owns the trial, still in flight
    assert await rejected(b)  # b pulls: HALF_OPEN owned by a → rejects
    clock.advance(SYNC)
    assert await rejected(b)
    a.record_success(permit)  # a publishes CLOSED
    assert await rejected(b)  # not before b's next sync
    clock.advance(SYNC)
    assert await b.call(succeed) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_shared_failed_trial_reopens_the_circuit_everywhere(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(RESET)
    with pytest.raises(Boom):
        await a.call(fail_with, Boom("still down"))
    assert a.state is CircuitState.OPEN
    clock.advance(SYNC)
    with pytest.raises(CircuitOpenError) as caught:
        await b.call(succeed)
    assert caught.value.retry_after == pytest.approx(RESET - SYNC)


async def test_shared_a_stuck_owner_loses_its_trials_after_the_lease(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(RESET)
    stale = a.acquire()  # a's trial hangs forever
    assert await rejected(b)
    clock.advance(RESET)  # the owner's lease ran out: b may take over
    permit = b.acquire()
    assert b.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        a.acquire()  # a's renewal loses: b owns the trials now
    assert a.state is CircuitState.OPEN
    a.record_success(stale)  # a late outcome of the old round changes nothing
    b.record_success(permit)
    clock.advance(SYNC)
    assert await a.call(succeed) == "ok"


async def test_S9_a_reopen_time_from_a_clock_ahead_holds_no_circuit_past_reset_timeout(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    """Reopen times travel as wall-clock seconds. One written by a clock that
    ran a month ahead (since put right, or another machine's) must not keep
    the circuit open for that month everywhere: no instance waits longer than
    its ``reset_timeout`` before trying the service again."""
    clock = FakeClock()
    ahead = FakeClock(start=clock.now + 30 * 86_400.0)
    a = CircuitBreaker(
        name="payments", fail_max=3, reset_timeout=RESET, sync_interval=SYNC,
        state_store=circuit_file_store, clock=clock, wall_clock=ahead,
    )
    b = make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(SYNC)
    with pytest.raises(CircuitOpenError) as caught:
        await b.call(succeed)  # b adopts the open circuit ...
    assert caught.value.retry_after <= RESET
    clock.advance(RESET)
    assert await b.call(succeed) == "ok"  # ... and tries again after reset_timeout
    assert b.state is CircuitState.CLOSED


@pytest.mark.parametrize("reading", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
async def test_S9_shared_a_clock_gone_bad_is_a_clear_error_and_no_bad_time_is_published(
    circuit_file_store: SQLiteCircuitStateStore, reading: float
) -> None:
    """The trip that needs the time, and every call while the circuit is
    open, say the clock is broken; no reopen time made of a NaN or an
    infinity reaches the row the other instances read."""
    clock = FakeClock()
    breaker = make(circuit_file_store, clock)
    await trip(breaker, breaker.fail_max - 1)
    clock.now = reading
    with pytest.raises(ValueError, match="circuit breaker 'payments': its clock returned"):
        await breaker.call(fail_with, Boom("down"))
    row = circuit_file_store.read("payments")
    assert row is None or row.state is CircuitState.CLOSED

    clock.now = 2_000.0
    await trip(breaker, 1)  # the failure refused above was counted: this one trips
    assert breaker.state is CircuitState.OPEN
    clock.now = reading
    for _ in range(2):
        with pytest.raises(ValueError, match="its clock returned"):
            await breaker.call(succeed)
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN
    assert math.isfinite(row.open_until)


async def test_shared_a_new_instance_learns_the_open_circuit_on_its_first_call(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a = make(circuit_file_store, clock)
    await trip(a)
    late = make(circuit_file_store, clock)
    assert await rejected(late)


async def test_shared_manual_open_and_close_are_published(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    a.open()
    assert await rejected(b)
    a.close()
    clock.advance(SYNC)
    assert await b.call(succeed) == "ok"


# --------------------------------------------------------------------------- a failing store


async def test_shared_unreachable_store_keeps_local_behaviour_and_reports_once_per_interval(
) -> None:
    clock = FakeClock()
    store = BrokenStore()
    failures = StoreFailures()
    changes = StateChanges()
    breaker = make(store, clock, listeners=[failures, changes])
    for _ in range(20):
        assert await breaker.call(succeed) == "ok"
    assert failures.failures == [("payments", "ConnectionError")]
    await trip(breaker)  # the publish fails too, within the same interval
    assert failures.failures == [("payments", "ConnectionError")]
    assert breaker.state is CircuitState.OPEN
    assert await rejected(breaker)
    clock.advance(SYNC)
    assert await rejected(breaker)
    assert len(failures.failures) == 2
    clock.advance(RESET)  # local half-open, local close, as without a store
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert changes.edges() == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    calls = store.calls
    for _ in range(20):
        await breaker.call(succeed)
    assert store.calls == calls  # no retry storm: only at the next sync


async def test_shared_store_back_after_an_outage_gets_the_local_state(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()

    class Flaky(CountingStore):
        down = True

        def read(self, name: str) -> SharedCircuit | None:
            if self.down:
                raise ConnectionError("down")
            return super().read(name)

        def compare_and_set(self, *args: Any) -> SharedCircuit | None:
            if self.down:
                raise ConnectionError("down")
            return super().compare_and_set(*args)

    flaky = Flaky(circuit_file_store)
    a = make(flaky, clock)
    await trip(a)  # opened locally while the store is down
    assert circuit_file_store.read("payments") is None
    flaky.down = False
    clock.advance(SYNC)
    assert await rejected(a)  # the next sync publishes the open circuit
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN
    assert await rejected(make(circuit_file_store, clock))


def test_logging_listener_logs_store_failures_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="fallback_saga"):
        LoggingListener().breaker_state_store_failed("payments", ConnectionError("down"))
    assert caplog.records[-1].levelno == logging.WARNING
    assert "payments" in caplog.records[-1].getMessage()


# --------------------------------------------------------------------------- two processes

CHILD = r"""
import asyncio, sys, time
from fallback_saga import CircuitBreaker, CircuitOpenError, SQLiteCircuitStateStore

role, path, sync, schema = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
if schema:
    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore
    store = PostgresCircuitStateStore(path, schema=schema)
else:
    store = SQLiteCircuitStateStore(path)
breaker = CircuitBreaker(name="payments", fail_max=3, reset_timeout=60.0,
                         state_store=store, sync_interval=sync)
primary_calls = 0

async def primary(fail):
    global primary_calls
    primary_calls += 1
    if fail:
        raise RuntimeError("down")
    await asyncio.sleep(0)

async def main():
    if role == "opener":
        sys.stdin.readline()  # "go"
        for _ in range(3):
            try:
                await breaker.call(primary, True)
            except RuntimeError:
                pass
        print("opened", time.time(), breaker.state.value, flush=True)
        return
    await breaker.call(primary, False)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await breaker.call(primary, False)
        except CircuitOpenError:
            skipped_at = time.time()
            break
    else:
        print("timeout", flush=True)
        return
    before = primary_calls
    end = time.monotonic() + 0.2
    rejected = 0
    while time.monotonic() < end:
        try:
            await breaker.call(primary, False)
        except CircuitOpenError:
            rejected += 1
        await asyncio.sleep(0)
    print("skipped", skipped_at, primary_calls - before, rejected, flush=True)

asyncio.run(main())
"""


def _spawn(role: str, url: str, sync: float, schema: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, role, url, str(sync), schema],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT,
    )


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """Lines of ``proc``'s stdout, read by a thread so the test can wait with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _expect(lines: queue.Queue[str], word: str, proc: subprocess.Popen[str]) -> list[str]:
    try:
        line = lines.get(timeout=30)
    except queue.Empty:
        raise AssertionError(f"no {word!r} line within 30 s") from None
    fields = line.split()
    if not fields or fields[0] != word:
        proc.kill()
        assert proc.stderr is not None
        raise AssertionError(f"expected {word!r}, got {line!r}; stderr: {proc.stderr.read()}")
    return fields


def run_two_processes(url: str, sync: float, schema: str = "") -> tuple[float, int, int]:
    """Process B calls its primary in a loop; process A fails 3 times and opens
    the circuit. Returns (seconds until B first skipped its primary, B's primary
    calls after that, B's rejections after that)."""
    watcher = _spawn("watcher", url, sync, schema)
    opener = _spawn("opener", url, sync, schema)
    try:
        watcher_lines, opener_lines = _lines(watcher), _lines(opener)
        _expect(watcher_lines, "ready", watcher)
        assert opener.stdin is not None
        opener.stdin.write("go\n")
        opener.stdin.flush()
        _, opened_at, state = _expect(opener_lines, "opened", opener)
        assert state == "open"
        _, skipped_at, calls_after, rejections = _expect(watcher_lines, "skipped", watcher)
        return float(skipped_at) - float(opened_at), int(calls_after), int(rejections)
    finally:
        for proc in (watcher, opener):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.communicate(timeout=30)


# A loaded CI machine may delay the watcher's loop; the pull itself is due
# after at most one sync interval.
SLACK = 1.0


def test_shared_circuit_across_processes_sqlite(tmp_path: Path) -> None:
    sync = 0.05
    delay, calls_after, rejections = run_two_processes(str(tmp_path / "shared.db"), sync)
    assert delay <= sync + SLACK, f"B skipped its primary {delay:.3f}s after A opened"
    assert calls_after == 0
    assert rejections > 0


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_store(pg_conninfo: str, pg_schema: str) -> Any:
    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    store = PostgresCircuitStateStore(pg_conninfo, schema=pg_schema)
    yield store
    store.close()


def test_postgres_store_compare_and_set_is_versioned(pg_store: Any) -> None:
    assert pg_store.read("x") is None
    first = pg_store.compare_and_set("x", 0, CircuitState.OPEN, 123.5, None)
    assert first is not None
    assert (first.version, first.state, first.open_until) == (1, CircuitState.OPEN, 123.5)
    assert pg_store.compare_and_set("x", 0, CircuitState.OPEN, 1.0, None) is None
    assert pg_store.compare_and_set("x", 2, CircuitState.CLOSED, 0.0, None) is None
    second = pg_store.compare_and_set("x", 1, CircuitState.HALF_OPEN, 5.0, "me")
    assert second is not None
    assert pg_store.read("x") == second
    assert isinstance(pg_store, CircuitStateStore)


async def test_postgres_two_instances_share_open_and_half_open(pg_store: Any) -> None:
    clock = FakeClock()
    a = make(pg_store, clock)
    counted = CountingStore(pg_store)
    b = make(counted, clock)
    await b.call(succeed)
    await trip(a)
    for _ in range(20):
        assert await b.call(succeed) == "ok"
    assert counted.calls == 1
    clock.advance(SYNC)
    assert await rejected(b)
    clock.advance(RESET)
    permit = a.acquire()
    with pytest.raises(CircuitOpenError):
        b.acquire()
    a.record_success(permit)
    clock.advance(SYNC)
    assert await b.call(succeed) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_postgres_unreachable_store_is_reported_and_local_state_works() -> None:
    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    pytest.importorskip("psycopg")
    store = PostgresCircuitStateStore(
        "host=127.0.0.1 port=1 dbname=none user=none", connect_timeout=1.0
    )
    failures = StoreFailures()
    breaker = make(store, FakeClock(), listeners=[failures])
    assert await breaker.call(succeed) == "ok"
    await trip(breaker)
    assert breaker.state is CircuitState.OPEN
    assert len(failures.failures) == 1


def test_shared_circuit_across_processes_postgres(pg_conninfo: str, pg_schema: str) -> None:
    sync = 0.05
    delay, calls_after, rejections = run_two_processes(pg_conninfo, sync, pg_schema)
    assert delay <= sync + SLACK, f"B skipped its primary {delay:.3f}s after A opened"
    assert calls_after == 0
    assert rejections > 0


def test_postgres_store_keeps_no_connection_per_thread_that_used_it(
    pg_conninfo: str, pg_schema: str
) -> None:
    import psycopg

    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    store = PostgresCircuitStateStore(_tagged(pg_conninfo, pg_schema), schema=pg_schema)
    for _ in range(10):
        thread = threading.Thread(target=store.read, args=("payments",))
        thread.start()
        thread.join()
    with psycopg.connect(pg_conninfo, autocommit=True) as admin:
        assert len(_store_backends(admin, pg_schema)) == 1  # one call at a time: one worker
        store.close()
        for _ in range(100):  # the server notices a closed connection a moment later
            if not _store_backends(admin, pg_schema):
                break
            admin.execute("SELECT pg_sleep(0.05)")
        assert _store_backends(admin, pg_schema) == []


def _tagged(conninfo: str, schema: str) -> str:
    """``conninfo`` whose sessions name themselves after the test's schema."""
    return f"{conninfo} application_name={schema}"


def _store_backends(admin: Any, schema: str) -> list[int]:
    """The server processes of the connections of a store made with
    ``_tagged(..., schema)``."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND application_name = %s",
        (schema,),
    ).fetchall()
    return [pid for (pid,) in rows]


def test_S9_postgres_store_bounds_a_call_to_a_server_that_stops_answering(
    pg_conninfo: str, pg_schema: str
) -> None:
    import asyncio
    import signal

    import psycopg

    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    store = PostgresCircuitStateStore(
        _tagged(pg_conninfo, pg_schema), schema=pg_schema, connect_timeout=0.5,
        statement_timeout=0.5,
    )
    assert store.call_timeout == 1.0
    clock = FakeClock()
    failures = StoreFailures()
    breaker = make(store, clock, listeners=[failures])
    connected, stalled = threading.Event(), threading.Event()
    outcome: list[object] = []

    async def caller() -> None:
        outcome.append(await breaker.call(succeed))  # the first pull connects
        connected.set()
        assert stalled.wait(10)
        clock.advance(SYNC)  # a pull is due: the server does not answer it
        outcome.append(await breaker.call(succeed))

    thread = threading.Thread(target=lambda: asyncio.run(caller()), daemon=True)
    with psycopg.connect(pg_conninfo, autocommit=True) as admin:
        thread.start()
        assert connected.wait(10)
        (backend,) = _store_backends(admin, pg_schema)
        os.kill(backend, signal.SIGSTOP)
        try:
            stalled.set()
            thread.join(10 * store.call_timeout)  # a bound, not a synchronization
            assert not thread.is_alive(), "the store call was not bounded"
        finally:
            os.kill(backend, signal.SIGCONT)
    assert outcome == ["ok", "ok"]  # the breaker went on with its local state
    assert failures.failures == [("payments", "TimeoutError")]
    store.close()


# 10**400: an int too large for a float was an OverflowError naming nothing.
@pytest.mark.parametrize(
    "call_timeout",
    [0, -1.0, math.inf, math.nan, "1", True, pytest.param(10**400, id="beyond-a-float")],
)
def test_postgres_store_call_timeout_must_be_positive_seconds(call_timeout: Any) -> None:
    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    with pytest.raises(ValueError, match="call_timeout"):
        PostgresCircuitStateStore("dbname=x", call_timeout=call_timeout)
    store = PostgresCircuitStateStore("dbname=x", connect_timeout=1.5, statement_timeout=2)
    assert store.call_timeout == 3.5
    assert PostgresCircuitStateStore("dbname=x", call_timeout=0.25).call_timeout == 0.25


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_S9_sqlite_state_store_opens_a_connection_of_its_own_in_a_forked_child(
    tmp_path: Path,
) -> None:
    """SQLite forbids using a connection in a process forked after it was
    opened (the child's copy shares the parent's lock records: corruption).
    The child of a process whose breakers already share state (gunicorn
    --preload) opens its own; the parent's goes on working."""
    store = SQLiteCircuitStateStore(tmp_path / "c.db")
    parents = store._connection()
    assert store.compare_and_set("payments", 0, CircuitState.OPEN, 1.0, None) is not None

    def child() -> int:
        if store._connection() is parents:
            return 2
        row = store.read("payments")
        done = store.compare_and_set("payments", 1, CircuitState.CLOSED, 0.0, None)
        return 0 if row is not None and done is not None else 3

    assert in_a_forked_child(child) == 0
    row = store.read("payments")  # the parent's connection still works, and sees the child's
    assert row is not None
    assert row.state is CircuitState.CLOSED
    assert store._connection() is parents
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_S9_sqlite_state_store_forked_mid_statement_leaves_that_connection_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork waits for a statement in progress; one still running past the
    wait (here: held) cannot be closed in the child (SQLite's mutex stays
    held there), so it is left alone — and the child, not hung, opens its
    own connection and works."""
    from fallback_saga import shared_state

    monkeypatch.setattr(shared_state, "_FORK_WAIT", 0.1)
    store = SQLiteCircuitStateStore(tmp_path / "c.db")
    parents = store._connection()
    assert store.compare_and_set("payments", 0, CircuitState.OPEN, 1.0, None) is not None

    def child() -> int:
        row = store.read("payments")
        return 0 if store._connection() is not parents and row is not None else 2

    with store._using:  # a statement in progress, as far as the fork can tell
        pid = fork(child)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.read("payments") is not None
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_postgres_store_works_in_a_forked_child(pg_store: Any) -> None:
    assert pg_store.read("payments") is None  # the parent has a worker now

    def child() -> int:  # its own worker, the parent's connection untouched
        pg_store.call_timeout = 5.0  # far more than a call takes
        row = pg_store.compare_and_set("payments", 0, CircuitState.OPEN, 1.0, None)
        return 0 if row is not None else 2

    assert in_a_forked_child(child) == 0
    row = pg_store.read("payments")  # the parent's connection still works
    assert row is not None
    assert row.state is CircuitState.OPEN


def test_postgres_store_dropped_without_close_ends_its_connections(
    pg_conninfo: str, pg_schema: str
) -> None:
    import gc

    import psycopg

    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    store = PostgresCircuitStateStore(_tagged(pg_conninfo, pg_schema), schema=pg_schema)
    assert store.read("payments") is None
    with psycopg.connect(pg_conninfo, autocommit=True) as admin:
        assert len(_store_backends(admin, pg_schema)) == 1
        del store
        gc.collect()
        for _ in range(100):  # the server notices a closed connection a moment later
            if not _store_backends(admin, pg_schema):
                break
            admin.execute("SELECT pg_sleep(0.05)")
        assert _store_backends(admin, pg_schema) == []


class _TransitionOnRead(FakeClock):
    """A clock whose next read runs ``then`` first: a transition made by
    another thread between a closed path's look at the state and its clock
    read (the shared closed path's one clock read), made deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.then: Any = None

    def __call__(self) -> float:
        then, self.then = self.then, None
        if then is not None:
            then()
        return super().__call__()


async def _fail_through(breaker: CircuitBreaker, way: str) -> None:
    """One guarded call through ``breaker``, the ``way`` given, that fails (``Boom``)."""
    if way == "call":
        await breaker.call(fail_with, Boom("down"))
    else:
        async with breaker:
            raise Boom("down")


@pytest.mark.parametrize("way", ["call", "async with"])
async def test_s9_a_block_let_in_before_a_transition_is_stale(
    circuit_file_store: SQLiteCircuitStateStore, way: str
) -> None:
    # An operator's close() starts a new generation while a call is being
    # let in on the closed path: that call's permit is the generation before
    # it, and its failure is stale — it must not count against the new one
    # (here: open the circuit, fail_max=1).
    clock = _TransitionOnRead()
    breaker = make(circuit_file_store, clock, fail_max=1)
    await breaker.call(succeed)  # the first pull
    clock.then = breaker.close
    with pytest.raises(Boom):
        await _fail_through(breaker, way)
    assert clock.then is None, "the transition did not happen during the call"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.failure_count == 0


async def _through(breaker: CircuitBreaker, way: str) -> None:
    """One successful guarded call through ``breaker``, the ``way`` given."""
    if way == "call":
        await breaker.call(succeed)
    elif way == "async with":
        async with breaker:
            await succeed()
    else:
        breaker.record_success(breaker.acquire())


@pytest.mark.parametrize("way", ["call", "async with", "acquire"])
async def test_s9_shared_closed_path_reads_the_clock_once_and_pulls_when_due(
    circuit_file_store: SQLiteCircuitStateStore, way: str
) -> None:
    # Every way in has the same closed path with a state store: one clock
    # read, no store call, until a pull is due; the pull then adopts the
    # circuit another instance opened.
    clock = FakeClock()
    a = make(circuit_file_store, clock)
    counted = CountingStore(circuit_file_store)
    b = make(counted, clock)
    await _through(b, way)  # the first pull
    assert counted.calls == 1
    await trip(a)
    reads = clock.reads
    for _ in range(50):
        await _through(b, way)
    assert clock.reads - reads == 50
    assert counted.calls == 1
    clock.advance(SYNC)
    with pytest.raises(CircuitOpenError):
        await _through(b, way)
    assert counted.calls == 2
    assert b.state is CircuitState.OPEN
