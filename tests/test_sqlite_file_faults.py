"""A SQLite store under file-system faults other than a full disk
(``test_sqlite_full_disk.py``), each injected for real, for each writer
(``thread``, ``process``, ``inline``):

* a store named by a relative path, and the program's ``os.chdir``;
* another process (an operator's ``sqlite3`` shell) holding the file's
  write lock past ``busy_timeout``, then letting it go;

What is promised (S13): no caller is told a status the journal does not
hold, no step runs without its STARTED row, a write SQLite refused before
it could commit is reported as not written (not "in doubt"), the error says
what is wrong and what to do, and once the fault is gone the same store
goes on and ``recover()`` finishes the interrupted sagas, each step applied
once.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import (
    RetryPolicy,
    SagaInterrupted,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)

WRITERS = ["thread", "process", "inline"]
NO_RETRY = RetryPolicy(attempts=2, delay=0, jitter=0)


def stored(db: Path) -> dict[str, str]:
    """Each saga's status in the file, read with plain SQL."""
    conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT saga_id, status FROM sagas").fetchall())
    finally:
        conn.close()


# ------------------------------------------------------------------ a relative path


@pytest.mark.parametrize("writer", WRITERS)
async def test_S13_a_store_named_by_a_relative_path_keeps_to_its_file_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """The store's connections open late (at the first request, the reader's
    at its first read, the writer process at its start): a relative path
    read then named a file in whatever directory the program had moved to
    (a daemon's ``chdir("/")``), and the journal went there."""
    home, elsewhere, later = (tmp_path / name for name in ("home", "elsewhere", "later"))
    for directory in (home, elsewhere, later):
        directory.mkdir()
    monkeypatch.chdir(home)
    store = SQLiteSagaStore("sagas.db", writer=writer)
    ledger: list[tuple[str, str]] = []
    try:
        monkeypatch.chdir(elsewhere)
        saga = ledger_saga(ledger)(store=store)
        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        monkeypatch.chdir(later)
        await saga.run(Ctx(order_id="2"), saga_id="s-2")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert [s.saga_id for s in await store.list_sagas()] == ["s-2", "s-1"]
    finally:
        await store.close()
    assert stored(home / "sagas.db") == {"s-1": "completed", "s-2": "completed"}
    assert not (elsewhere / "sagas.db").exists()
    assert not (later / "sagas.db").exists()


# ------------------------------------------------------------------ another process's lock


@pytest.fixture
def sqlite3_shell() -> str:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 command-line shell is not installed (apt-get install sqlite3)")
    return shell


class HeldLock:
    """An operator's ``sqlite3`` shell, in a process of its own, holding the
    file's write lock (``BEGIN IMMEDIATE``) until ``release``."""

    def __init__(self, shell: str, db: Path) -> None:
        self.process = subprocess.Popen(
            [shell, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("BEGIN IMMEDIATE;\nSELECT 'held';\n")
        self.process.stdin.flush()
        # Printed once BEGIN IMMEDIATE returned: the lock is held from here on.
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("ROLLBACK;\n.quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture
def locks() -> Iterator[list[HeldLock]]:
    held: list[HeldLock] = []
    yield held
    for lock in held:
        lock.release()


@pytest.mark.parametrize("writer", WRITERS)
async def test_S13_a_lock_held_by_another_process_stops_the_run_then_recover_finishes_it(
    tmp_path: Path, sqlite3_shell: str, locks: list[HeldLock], writer: str
) -> None:
    """An operator's shell takes the write lock while a saga is in its
    second step and holds it past ``busy_timeout``: the run stops with
    ``SagaInterrupted``, saying that another process holds the lock and
    what to do, and — since SQLite refused the write before anything of it
    was written — not "in doubt". Once the lock is let go, ``recover()``
    finishes the saga on the same store, each step applied once."""
    db = tmp_path / "sagas.db"
    ledger: list[tuple[str, str]] = []

    taken: list[bool] = []

    async def operator_takes_the_lock(ctx: Ctx) -> None:
        if not taken:  # once: not again when recovery runs S1 again
            taken.append(True)
            locks.append(HeldLock(sqlite3_shell, db))

    saga_class = ledger_saga(ledger, S1=operator_takes_the_lock)
    store = SQLiteSagaStore(db, writer=writer, busy_timeout=0.05)
    try:
        await store.open()
        saga = saga_class(store=store, journal_retry=NO_RETRY)
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        interrupted = stopped.value
        assert interrupted.status is SagaStatus.RUNNING
        assert interrupted.in_doubt is False, interrupted
        message = str(interrupted.error)
        assert "another process holds" in message, message
        assert "busy_timeout" in message, message
        # The journal holds what the caller was told, S1's act included.
        assert stored(db) == {"s-1": "running"}
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]

        # A new saga cannot even be created meanwhile: nothing of it is
        # written, and the caller is told so (it may simply run it again).
        with pytest.raises(SagaInterrupted) as refused:
            await saga.run(Ctx(order_id="2"), saga_id="s-2")
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "was not written" in str(refused.value), refused.value

        locks.pop().release()
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert stored(db) == {"s-1": "completed"}
        # S1's act ran before the lock; recovery ran it again (its COMPLETED
        # row never landed) with the same idempotency key, and S2 once.
        assert sorted(set(ledger)) == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1
    finally:
        await store.close()
