"""A SQLite store under file-system faults other than a full disk
(``test_sqlite_full_disk.py``), each injected for real, for each writer
(``thread``, ``process``, ``inline``):

* a store named by a relative path, and the program's ``os.chdir``;
* another process (an operator's ``sqlite3`` shell) holding the file's
  write lock past ``busy_timeout``, then letting it go;
* a file system mounted read-only (a tmpfs remounted ``ro``: Linux refuses
  that while a file on it is open for writing, so the store meets it at
  its open), then read-write again;
* a directory or file the store's user may not write (a process of its own
  as ``nobody``: root passes every permission check), then given access;
* a damaged file (cut short), and a -wal file removed under a running store.

What is promised (S13): no caller is told a status the journal does not
hold, no step runs without its STARTED row, a write SQLite refused before
it could commit is reported as not written (not "in doubt"), the error says
what is wrong and what to do, and once the fault is gone the same store
goes on and ``recover()`` finishes the interrupted sagas, each step applied
once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from held_lock import HeldLock
from helpers_ledger import Ctx, ledger_saga
from small_disk import mounted_tmpfs

from fallback_saga import (
    RetryPolicy,
    SagaInterrupted,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)
from fallback_saga.errors import SagaStoreError

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


# ------------------------------------------------------------------ a read-only file system


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, timeout=30)


@pytest.mark.parametrize("writer", WRITERS)
async def test_S13_a_read_only_file_system_is_named_and_the_same_store_goes_on_once_writable(
    tmp_path: Path, writer: str
) -> None:
    """A service restarts while its disk is mounted read-only: SQLite says
    "unable to open database file", which tells an operator nothing. The
    store says that the file system is read-only and what to do; a run
    stopped by it is not in doubt (nothing can have been written), and the
    same store object opens once the disk is read-write again."""
    with mounted_tmpfs(tmp_path, "4m") as disk:
        db = disk / "sagas.db"
        ledger: list[tuple[str, str]] = []
        saga_class = ledger_saga(ledger)
        async with SQLiteSagaStore(db, writer=writer) as first:
            await saga_class(store=first).run(Ctx(order_id="0"), saga_id="before")
        remount(disk, "ro")
        store = SQLiteSagaStore(db, writer=writer)
        try:
            # Opening is refused — unless the last writer left its -wal and
            # -shm files behind (a writer process ended under load): SQLite
            # then opens a WAL database on read-only media, for reading,
            # and the first write is refused instead (below, either way).
            refused: SagaStoreError | None = None
            try:
                await store.open()
            except SagaStoreError as error:
                refused = error
            if refused is not None:
                message = str(refused)
                assert "mounted read-only" in message, message
                assert "remount it read-write" in message, message
            else:
                assert (disk / "sagas.db-wal").exists(), "opened on a read-only disk"
            saga = saga_class(store=store, journal_retry=NO_RETRY)
            with pytest.raises(SagaInterrupted) as stopped:
                await saga.run(Ctx(order_id="1"), saga_id="s-1")
            assert stopped.value.status is None
            assert stopped.value.in_doubt is False, stopped.value
            assert "mounted read-only" in str(stopped.value.error)
            assert "remount it read-write" in str(stopped.value.error)
            assert [entry for entry in ledger if entry[0] == "s-1"] == []

            remount(disk, "rw")
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
            report = await recover(store, [saga_class], older_than=0)
            assert report.total == 0, report
        finally:
            await store.close()
        assert stored(db) == {"before": "completed", "s-1": "completed"}
        assert ledger.count(("s-1", "S0")) == 1


# ------------------------------------------------------------------ permissions

# The service, as an unprivileged user (started as root, it gives up root
# before it makes the store: the interpreter may lie where only root may
# enter): it opens the store (refused), waits for the operator to mend the
# permissions, then runs a saga on the SAME store object. It prints what it
# was told.
_AS_NOBODY = """
import asyncio, os, sys
from held_lock import HeldLock
from helpers_ledger import Ctx, ledger_saga
from fallback_saga import RetryPolicy, SagaInterrupted, SQLiteSagaStore
from fallback_saga.errors import SagaStoreError

path, writer, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# What the store imports late (pathlib's as_uri imports urllib on 3.13), now:
# as nobody, the interpreter's own library may be out of reach.
from fallback_saga.store._sqlite_schema import _database
_database(path)
os.setgroups([])
os.setgid(gid)
os.setuid(uid)

async def main():
    store = SQLiteSagaStore(path, writer=writer)
    saga = ledger_saga([])(store=store, journal_retry=RetryPolicy(attempts=2, delay=0, jitter=0))
    try:
        try:
            await store.open()
            print("opened")
        except SagaStoreError as error:
            print("refused:", error)
        try:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        except SagaInterrupted as error:
            print("interrupted:", error.status, error.in_doubt)
        sys.stdout.flush()
        sys.stdin.readline()  # the operator mended the permissions
        result = await saga.run(Ctx(order_id="1"), saga_id="s-1")
        print("then:", result.status.value)
    finally:
        await store.close()

asyncio.run(main())
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside pytest's (which only root may enter)."""
    if os.geteuid() != 0:
        pytest.skip("the permission tests run a process as nobody: they need root")
    where = Path(tempfile.mkdtemp(prefix="fallback_saga_perm_"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def nobody() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    return entry.pw_uid, entry.pw_gid


async def made_by_root(db: Path) -> None:
    async with SQLiteSagaStore(db) as first:  # as root: mode 0600, root's
        await ledger_saga([])(store=first).run(Ctx(order_id="0"), saga_id="before")


# Not the process writer: its child is the store's own interpreter, which
# 'nobody' may not start where Python lives under /root (pyenv; CI too) — a
# test that would only skip. Its message is the same code, run in the child.
@pytest.mark.parametrize("writer", [writer for writer in WRITERS if writer != "process"])
def test_S13_a_directory_the_service_may_not_write_is_named_then_the_store_goes_on(
    shared_dir: Path, writer: str
) -> None:
    """The store's file was made by root (an install script, a restore from
    backup) in a directory the service's user may not write: SQLite cannot
    make the -wal and -shm files there and says "unable to open database
    file" or "attempt to write a readonly database". The store names the
    directory, the user and what to do; a run stopped by it is not in
    doubt; once the operator gives the directory and the file to the
    service's user, the same store goes on."""
    uid, gid = nobody()
    tests = Path(__file__).parent
    home = shared_dir / "service"
    home.mkdir(mode=0o755)
    db = home / "sagas.db"
    asyncio.run(made_by_root(db))

    service = subprocess.Popen(
        [sys.executable, "-c", _AS_NOBODY, str(db), writer, str(uid), str(gid)],
        env={"PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert service.stdout is not None
        assert service.stdin is not None
        refused = service.stdout.readline()
        interrupted = service.stdout.readline()
        assert refused.startswith("refused:"), (refused, service.stderr)
        assert f"this process (uid {uid}) may not write the directory {home}" in refused, refused
        assert interrupted.strip() == "interrupted: None False", interrupted
        assert stored(db) == {"before": "completed"}

        # The operator gives the service the directory and the files in it
        # (the -wal and -shm files, too, if a root's reader left them:
        # this test's own plain-SQL read, run as root, does).
        for path in (home, *home.iterdir()):
            os.chown(path, uid, gid)
        service.stdin.write("mended\n")
        service.stdin.flush()
        out, err = service.communicate(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert out.strip() == "then: completed", (out, err)
    assert "Traceback" not in err, err
    assert stored(db) == {"before": "completed", "s-1": "completed"}


# ------------------------------------------------------------------ a damaged file


async def store_of_sagas(db: Path) -> None:
    async with SQLiteSagaStore(db) as store:
        saga = ledger_saga([])(store=store)
        for n in range(40):
            await saga.run(Ctx(order_id=str(n)), saga_id=f"s-{n}")


@pytest.mark.parametrize("writer", WRITERS)
async def test_S13_a_damaged_file_is_named_and_left_as_it_is(
    tmp_path: Path, writer: str
) -> None:
    """A store file cut short (a copy that stopped half-way, a restore gone
    wrong): SQLite says "database disk image is malformed". The store and
    ``recover`` (the command line's too: test below) say that the file is damaged and
    what to do, with no traceback, and the file is left byte for byte."""
    db = tmp_path / "sagas.db"
    await store_of_sagas(db)
    os.truncate(db, 8192)
    before = db.read_bytes()
    store = SQLiteSagaStore(db, writer=writer)
    try:
        with pytest.raises(SagaStoreError) as refused:
            await store.open()
        assert "the file is damaged" in str(refused.value), refused.value
        assert "restore it from a backup" in str(refused.value), refused.value
        with pytest.raises(SagaStoreError) as too:
            await recover(store, [ledger_saga([])], older_than=0)
        assert "the file is damaged" in str(too.value), too.value
    finally:
        await store.close()
    assert db.read_bytes() == before


def test_S13_the_command_line_names_a_damaged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fallback_saga.cli import main as cli_main

    db = tmp_path / "sagas.db"
    asyncio.run(store_of_sagas(db))
    os.truncate(db, 8192)
    before = db.read_bytes()
    for command in (["list"], ["show", "s-1"]):
        assert cli_main([*command, "--db", str(db)]) != 0
        _, err = capsys.readouterr()
        assert "the file is damaged" in err, err
        assert "Traceback" not in err, err
    assert db.read_bytes() == before


# ------------------------------------------------------------------ a -wal file removed


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_S13_a_wal_file_removed_under_a_running_store_is_named(
    tmp_path: Path, writer: str
) -> None:
    """Someone deletes the -wal file of a running store ("cleaning up"):
    the writer goes on in the file it holds open, but the reader thread's
    connection then fails with "disk I/O error". The store says what
    happened and what to do. (Whether the sagas in the removed -wal file
    survive is up to SQLite and the order the connections close in: with
    writer="process" they are sometimes lost; docs/durability.md says to
    leave the -wal and -shm files alone.)"""
    db = tmp_path / "sagas.db"
    store = SQLiteSagaStore(db, writer=writer)
    saga = ledger_saga([])(store=store)
    try:
        await store.open()
        await saga.run(Ctx(order_id="0"), saga_id="s-0")
        os.unlink(f"{db}-wal")
        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        with pytest.raises(SagaStoreError) as refused:
            await store.list_sagas()
        message = str(refused.value)
        assert "the -wal file was removed or replaced" in message, message
        assert "close every store that has it open" in message, message
    finally:
        await store.close()
