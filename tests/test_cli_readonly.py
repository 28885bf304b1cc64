"""``list`` and ``show`` only read a SQLite saga store.

* An operator who may read the file but not write it or its directory can
  still list and show (they used to get ``attempt to write a readonly
  database``): checked as a real other user (``nobody``), in a directory
  only root may write. Those tests skip loudly where privileges cannot be
  dropped (not root, no ``nobody``, no Python that user may run).
* The read commands leave no -wal/-shm file behind when there was none.
* They see what a live writer has committed (its -wal file), never a stale
  snapshot, and a read that a writer overlapped is read again.
* They never migrate: an older schema is refused with the reason.
* ``SQLiteSagaStore(path, read_only=True)`` refuses every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fallback_saga import SQLiteSagaStore, StepStatus
from fallback_saga.cli import main
from fallback_saga.cli.stores import StoreTarget, read_store
from fallback_saga.errors import SagaStoreError
from fallback_saga.store.base import RecoverableStore, SagaSummary
from fallback_saga.store.sqlite import SCHEMA_VERSION
from fallback_saga.testing import entry

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


async def _fill(db: str, *saga_ids: str) -> None:
    async with SQLiteSagaStore(db) as store:
        for saga_id in saga_ids:
            await store.create(saga_id, "OrderSaga", "fp", {"order_id": saga_id}, [entry(0, "a")])
            await store.append(saga_id, [entry(0, "a", StepStatus.COMPLETED)])


def fill(db: str, *saga_ids: str) -> None:
    asyncio.run(_fill(db, *saga_ids))


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def listed(out: str) -> list[str]:
    return [row["saga_id"] for row in json.loads(out)]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory everybody may enter and read, and only its owner write
    (pytest's own tmp_path is private to the user running the tests)."""
    folder = Path(tempfile.mkdtemp(prefix="fallback_saga-readonly-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class OtherUser:
    """Runs ``python -m fallback_saga`` as the unprivileged user ``nobody``."""

    def __init__(self, python: str, uid: int, gid: int) -> None:
        self.python, self.uid, self.gid = python, uid, gid

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.python_with("-m", "fallback_saga", *argv)

    def python_with(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [self.python, *argv],
            capture_output=True, text=True, timeout=60, check=False, env=env, cwd="/",
            user=self.uid, group=self.gid, extra_groups=[],
        )


def _not_testable(reason: str) -> None:
    pytest.skip(f"NOT TESTED: cannot run the CLI as another user here: {reason}")


@pytest.fixture(scope="module")
def nobody() -> OtherUser:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _not_testable("dropping privileges needs root (run the suite as root, as CI does)")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        _not_testable("there is no user 'nobody'")
    probe = "import sys, fallback_saga.cli; assert sys.version_info >= (3, 11)"
    failures = []
    candidates = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    for python in dict.fromkeys(candidates):
        if not python:
            continue
        try:
            done = subprocess.run(
                [python, "-c", probe],
                capture_output=True, text=True, timeout=60, check=False, cwd="/",
                env={"PYTHONPATH": str(ROOT)}, user=user.pw_uid, group=user.pw_gid,
                extra_groups=[],
            )
        except OSError as error:  # e.g. the interpreter is under /root
            failures.append(f"{python}: {error}")
            continue
        if done.returncode == 0:
            return OtherUser(python, user.pw_uid, user.pw_gid)
        failures.append(f"{python}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    _not_testable(
        f"no Python >= 3.11 that 'nobody' may run and that imports {ROOT} ({'; '.join(failures)})"
    )
    raise AssertionError("not reached")


# --------------------------------------------------------------------------- another user


def test_an_operator_who_cannot_write_the_directory_can_list_and_show(
    nobody: OtherUser, shared_dir: Path
) -> None:
    db = shared_dir / "sagas.db"
    fill(str(db), "o-1", "o-2")
    db.chmod(0o644)  # readable by all, writable by root only; so is the directory
    before = files(shared_dir)

    listing = nobody.run("list", "--db", str(db), "--json")
    assert listing.returncode == 0, listing.stderr
    assert listed(listing.stdout) == ["o-2", "o-1"]
    table = nobody.run("list", "--db", str(db))
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == "(2 sagas, newest first)"
    shown = nobody.run("show", "o-1", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2] == "status       running"
    assert nobody.run("show", "o-2", "--db", str(db), "--json").returncode == 0
    assert nobody.run("show", "o-2", "--db", str(db), "--mermaid").returncode == 0
    assert files(shared_dir) == before


def test_an_operator_who_cannot_write_sees_what_a_live_writer_committed(
    nobody: OtherUser, shared_dir: Path
) -> None:
    db = str(shared_dir / "sagas.db")
    fill(db, "o-1")
    # Created for its owner only (mode 0600): shared with the operator on
    # purpose. The -wal file the application opens next takes this mode.
    Path(db).chmod(0o644)

    async def while_open() -> subprocess.CompletedProcess[str]:
        async with SQLiteSagaStore(db) as store:  # the application, running
            await store.create("o-2", "OrderSaga", "fp", {}, [entry(0, "a")])
            # Committed to the -wal file, not yet to the database file.
            assert "sagas.db-wal" in files(shared_dir)
            return await asyncio.to_thread(nobody.run, "list", "--db", db, "--json")

    listing = asyncio.run(while_open())
    assert listing.returncode == 0, listing.stderr
    assert listed(listing.stdout) == ["o-2", "o-1"]


def test_an_operator_who_cannot_write_is_told_why_purge_fails(
    nobody: OtherUser, shared_dir: Path
) -> None:
    db = str(shared_dir / "sagas.db")
    fill(db, "o-1")
    Path(db).chmod(0o644)  # shared with the operator (a new store file is 0600)
    done = nobody.run("purge", "--db", db, "--older-than", "0")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "needs write access to the file and its directory" in done.stderr
    assert files(shared_dir) == ["sagas.db"]


def test_a_read_only_store_says_why_it_cannot_read_without_a_shm_file(
    nobody: OtherUser, shared_dir: Path
) -> None:
    """Without immutable=True, SQLite needs a -shm file to read a WAL database
    that no process has open; it cannot create one here."""
    db = str(shared_dir / "sagas.db")
    fill(db, "o-1")
    Path(db).chmod(0o644)  # shared with the operator (a new store file is 0600)
    code = (
        "import asyncio\n"
        "from fallback_saga import SQLiteSagaStore\n"
        "async def main():\n"
        f"    async with SQLiteSagaStore({db!r}, read_only=True) as store:\n"
        "        await store.list_sagas()\n"
        "asyncio.run(main())\n"
    )
    done = nobody.python_with("-c", code)
    assert done.returncode == 1
    assert "SagaStoreError" in done.stderr
    assert "cannot create one in a directory you may not write" in done.stderr
    assert files(shared_dir) == ["sagas.db"]


# --------------------------------------------------------------------------- no files behind


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["list", "--status", "running"],
        ["show", "o-1"],
        ["show", "o-1", "--json"],
        ["show", "o-1", "--mermaid"],
        ["show", "o-404"],  # an error leaves nothing either
    ],
    ids=" ".join,
)
def test_read_commands_leave_no_wal_or_shm_file_behind(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")
    fill(db, "o-1")
    assert files(tmp_path) == ["sagas.db"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    expected = 2 if "o-404" in argv else 0
    assert main([*argv, "--db", db]) == expected
    assert "o-1" in capsys.readouterr().out or expected
    assert files(tmp_path) == ["sagas.db"]


def test_a_bad_db_is_refused_without_leaving_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "foreign.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    assert files(tmp_path) == ["foreign.db"]
    assert main(["list", "--db", str(db)]) == 2
    assert "not a fallback_saga saga store" in capsys.readouterr().err
    assert files(tmp_path) == ["foreign.db"]


# --------------------------------------------------------------------------- what is read


def test_an_immutable_read_that_a_writer_overlapped_is_read_again(tmp_path: Path) -> None:
    """No process had the file open, so it is read without locks; a writer
    that came and went during the read changed it: the read is done again
    and sees the writer's saga."""
    db = str(tmp_path / "sagas.db")
    fill(db, "o-1")
    seen: list[list[str]] = []

    async def read(store: RecoverableStore) -> list[SagaSummary]:
        summaries = await store.list_sagas()
        seen.append([summary.saga_id for summary in summaries])
        if len(seen) == 1:
            await _fill(db, "o-2")  # another process, between two pages of a read
        return summaries

    summaries = asyncio.run(read_store(StoreTarget(db=db, shown=db), read))
    assert seen == [["o-1"], ["o-2", "o-1"]]
    assert [summary.saga_id for summary in summaries] == ["o-2", "o-1"]
    assert files(tmp_path) == ["sagas.db"]


def test_a_file_that_keeps_changing_is_reported(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    fill(db, "o-0")
    count = 0

    async def read(store: RecoverableStore) -> list[SagaSummary]:
        nonlocal count
        count += 1
        await _fill(db, f"o-{count}")
        return await store.list_sagas()

    with pytest.raises(SagaStoreError, match="kept changing while it was read"):
        asyncio.run(read_store(StoreTarget(db=db, shown=db), read))
    assert count == 3


def test_read_commands_do_not_migrate_an_older_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert SCHEMA_VERSION >= 2, "needs a schema with an older version to stand for"
    db = str(tmp_path / "sagas.db")
    fill(db, "o-1")
    older = SCHEMA_VERSION - 1
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {older}")
        conn.commit()
    for argv in (["list"], ["show", "o-1"]):
        assert main([*argv, "--db", db]) == 1
        err = capsys.readouterr().err
        assert f"schema version {older}, older than" in err
        assert "read-only store cannot migrate it" in err
        assert "Traceback" not in err
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (older,)
    assert files(tmp_path) == ["sagas.db"]


# --------------------------------------------------------------------------- the store


async def test_a_read_only_store_refuses_every_write(tmp_path: Path) -> None:
    db = str(tmp_path / "sagas.db")
    await _fill(db, "o-1")
    store = SQLiteSagaStore(db, read_only=True)
    async with store:
        assert (await store.load("o-1")).saga_id == "o-1"
        writes = [
            store.create("o-2", "OrderSaga", "fp", {}, [entry(0, "a")]),
            store.append("o-1", [entry(0, "a", StepStatus.COMPLETED)]),
            store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1),
            store.purge(older_than=0),
        ]
        for write in writes:
            with pytest.raises(SagaStoreError, match="is read-only"):
                await write
        assert [s.saga_id for s in await store.list_sagas()] == ["o-1"]
    assert store.stats.writes == 0


def test_immutable_needs_read_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs read_only=True"):
        SQLiteSagaStore(tmp_path / "sagas.db", immutable=True)
    with pytest.raises(ValueError, match="not an in-memory database"):
        SQLiteSagaStore(":memory:", read_only=True)


async def test_a_read_only_store_never_creates_a_missing_file(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    with pytest.raises(SagaStoreError, match="read-only"):
        async with SQLiteSagaStore(db, read_only=True):
            pass
    assert not db.exists()
    assert files(tmp_path) == []
