"""A clean ``close()`` leaves only the database file: no -wal, no -shm.

SQLite removes them as the last connection to the file closes, which it
tells by taking the file's exclusive lock. A store has up to three
connections (its writer thread's, its reader thread's, and with
``writer="process"`` its child's); they used to close all at once, and two
closing together can each find the other still open — both then leave
the files (about once in 30 closes of a loaded machine, either writer).
So they close one at a time, the writer thread's last.

The interleaving is forced, not waited for: the reader's connection, as
it closes, waits until the writer thread's starts to close — if the
writer thread has been told to stop by then (as it was, together with
the reader).
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

import fallback_saga.store._sqlite_runner as sqlite_runner
from fallback_saga import SQLiteSagaStore
from fallback_saga.store._sqlite_workers import _Stop


class Closes:
    """What the test sees of the store's connections closing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[str] = set()
        self.writer_told = threading.Event()
        self.writer_closing = threading.Event()
        self.seen_at_writer_close: set[str] | None = None
        self.child_running_at_writer_close: bool | None = None
        self.child: Any = None  # the writer process's Popen, when there is one


class Traced:
    """A store's connection, whose ``close`` is watched (``Closes``)."""

    def __init__(self, conn: Any, role: str, closes: Closes) -> None:
        self._conn = conn
        self._role = role
        self._closes = closes
        with closes.lock:
            closes.open.add(role)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def close(self) -> None:
        closes = self._closes
        if self._role == "writer":
            with closes.lock:
                closes.seen_at_writer_close = closes.open - {"writer"}
            child = closes.child
            closes.child_running_at_writer_close = child is not None and child.poll() is None
            closes.writer_closing.set()
        elif closes.writer_told.is_set():
            # Both told at once: let the writer's close start meanwhile.
            assert closes.writer_closing.wait(60), "a bound: the writer's close never came"
        self._conn.close()
        with closes.lock:
            closes.open.discard(self._role)


class ToldQueue:
    """The writer thread's queue, saying when the thread is told to stop."""

    def __init__(self, inner: queue.SimpleQueue[Any], told: threading.Event) -> None:
        self.inner = inner
        self.told = told

    def put(self, item: Any) -> None:
        if isinstance(item, _Stop):
            self.told.set()
        self.inner.put(item)

    def get(self, *args: Any) -> Any:
        return self.inner.get(*args)

    def get_nowait(self) -> Any:
        return self.inner.get_nowait()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_clean_close_leaves_only_the_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    closes = Closes()
    connect_writer, connect_reader = sqlite_runner._connect_writer, sqlite_runner._connect_reader
    monkeypatch.setattr(
        sqlite_runner, "_connect_writer",
        lambda *args: Traced(connect_writer(*args), "writer", closes),
    )
    monkeypatch.setattr(
        sqlite_runner, "_connect_reader",
        lambda *args: Traced(connect_reader(*args), "reader", closes),
    )
    db = tmp_path / "c.db"
    store = SQLiteSagaStore(db, writer=writer)
    try:
        await store.open()  # the writer thread's connection (and the child)
        await store.create("a", "Order", "fp", {}, [])
        await store.claim_saga("a", owner="me", lease_seconds=60)  # the writer thread's
        await store.load("a")  # the reader thread's connection
        assert closes.open == {"writer", "reader"}
        assert store._runner._writer is not None
        store._runner._writer.queue = ToldQueue(store._runner._writer.queue, closes.writer_told)  # type: ignore[assignment]
        assert "c.db-wal" in os.listdir(tmp_path)  # what SQLite removes at the last close
        if writer == "process":
            assert store._runner._process is not None
            assert store._runner._process.transport is not None
            closes.child = store._runner._process.transport.popen  # type: ignore[union-attr]
    finally:
        await store.close()
    assert closes.open == set()
    # The writer thread's connection closed last, after the others had.
    assert closes.seen_at_writer_close == set()
    assert closes.child_running_at_writer_close is False
    assert sorted(os.listdir(tmp_path)) == ["c.db"]
