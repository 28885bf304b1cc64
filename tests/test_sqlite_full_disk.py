"""A SQLite store on a disk that really fills up (a small tmpfs mounted for
the test: real ``ENOSPC``, which SQLite reports as SQLITE_FULL), and what
happens once the disk has room again — on the SAME store object, no
restart, for each writer (``thread``, ``process``, ``inline``).

The participant is in this process: it records every call, and applies an
operation at most once per ``current_step().idempotency_key``, as a real
one would. The journal is read with plain SQL (not through the library).

What an operator is promised (S13):

* while the disk is full, no ``act`` runs unless its STARTED row is in the
  journal, every run stops with ``SagaInterrupted`` (nothing else reaches a
  caller), and no caller is told a status the journal does not hold;
* once some space is freed, the same store writes again: new sagas run, and
  ``recover()`` finishes the interrupted ones, each step applied once;
* the ``-wal`` file does not eat the freed space: SQLite checkpoints only
  once its ``-wal`` file holds 4 MiB, so on a disk with less room than that
  the ``-wal`` file used to grow into every byte freed, and the store was
  full again within a few sagas (the chaos soak's 4 MiB disk, full with
  60 sagas, every claim refused for the rest of the run);
* ``purge`` on a full disk fails with a message that says what to do, and
  the store (and the command line's ``purge``) works once there is room.

Without root (no tmpfs can be mounted) the tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from small_disk import fill, mounted_tmpfs

from fallback_saga import (
    RetryPolicy,
    Saga,
    SagaContext,
    SagaInterrupted,
    SQLiteSagaStore,
    current_step,
    recover,
)
from fallback_saga.cli import main as cli_main
from fallback_saga.errors import SagaStoreError

DISK_SIZE = "4m"
# Free when the sagas start: the disk runs out after a few dozen of them.
LEFT_FREE = 1_500_000
# What the operator frees once it is full: room for a checkpoint (the
# database file gains the ~350 KiB of sagas the -wal file holds), but less
# than the -wal file's growth between SQLite's own checkpoints.
FREED = 600_000
# Each saga's context: ~6 KB of text, written with each of its four writes.
BLOB = 3000
AFTER = 30  # new sagas run once space is freed
NO_RETRY = RetryPolicy(attempts=2, delay=0, jitter=0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_SIZE mounted for this test (``small_disk.py``)."""
    with mounted_tmpfs(tmp_path, DISK_SIZE) as disk:
        yield disk


def free_some(path: Path, amount: int) -> None:
    """The operator deletes something else: ``amount`` bytes of the ballast."""
    os.truncate(path, os.path.getsize(path) - amount)


@dataclasses.dataclass
class DiskCtx(SagaContext):
    order_id: str
    blob: str = ""


class Participant:
    """Every call (``calls``), and each operation applied once per
    idempotency key (``applied``: how many times each key was applied)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.applied: Counter[str] = Counter()

    def call(self) -> None:
        step = current_step()
        self.calls.append((step.saga_id, step.step, step.action))
        if step.idempotency_key not in self.applied:
            self.applied[step.idempotency_key] += 1


def disk_saga(store: SQLiteSagaStore, participant: Participant) -> Saga[DiskCtx]:
    def step(name: str) -> type:
        class Step:
            async def act(self, ctx: DiskCtx) -> str:
                participant.call()
                return name

            async def compensate(self, ctx: DiskCtx) -> None:
                participant.call()

        Step.__name__ = Step.__qualname__ = name
        return Step

    class DiskSaga(Saga[DiskCtx]):
        steps = [step("A"), step("B"), step("C")]

    return DiskSaga(store=store, journal_retry=NO_RETRY)


STEPS = ("A", "B", "C")


def ctx(saga_id: str) -> DiskCtx:
    return DiskCtx(order_id=saga_id, blob=os.urandom(BLOB).hex())


# What a caller was told: ("result", "completed") or ("interrupted", the
# status it was told, or the status the journal holds if an in-doubt write landed).
Told = tuple[str, str | None, str | None]


async def run(saga: Saga[DiskCtx], saga_id: str) -> Told:
    try:
        await saga.run(ctx(saga_id), saga_id=saga_id)
    except SagaInterrupted as interrupted:
        status = None if interrupted.status is None else interrupted.status.value
        landed = interrupted.status_if_landed if interrupted.in_doubt else None
        return "interrupted", status, None if landed is None else landed.value
    return "result", "completed", None


def journal(db: Path) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """Each saga's status and history, read with plain SQL."""
    conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        sagas = dict(conn.execute("SELECT saga_id, status FROM sagas").fetchall())
        history: dict[str, list[tuple[str, str, str]]] = {saga_id: [] for saga_id in sagas}
        for saga_id, step, action, status in conn.execute(
            "SELECT saga_id, step, action, status FROM saga_steps ORDER BY saga_id, seq"
        ):
            history[saga_id].append((step, action, status))
    finally:
        conn.close()
    return {saga_id: (status, history[saga_id]) for saga_id, status in sagas.items()}


def check_told(told: dict[str, Told], db: Path, participant: Participant) -> list[str]:
    """S13: each caller was told a status the journal holds, and every call
    the participant saw has its STARTED row."""
    held = journal(db)
    problems = []
    for saga_id, (kind, status, if_landed) in told.items():
        in_journal = held[saga_id][0] if saga_id in held else None
        if in_journal != status and not (if_landed and in_journal == if_landed):
            problems.append(f"{saga_id}: told {kind} {status}, the journal holds {in_journal}")
    for saga_id, step, action in participant.calls:
        history = held.get(saga_id, (None, []))[1]
        if (step, action, "started") not in history:
            problems.append(f"{saga_id}: {action} of {step} ran without its STARTED row")
    return problems


async def fill_with_sagas(saga: Saga[DiskCtx], told: dict[str, Told]) -> None:
    """Run sagas, eight at a time, until the disk is full under some of them."""
    for wave in range(40):
        ids = [f"s-{wave:02d}-{n}" for n in range(8)]
        outcomes = await asyncio.gather(*(run(saga, saga_id) for saga_id in ids))
        told.update(zip(ids, outcomes, strict=True))
        if any(kind == "interrupted" for kind, _, _ in outcomes):
            return
    raise AssertionError("the disk never filled up")


def wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize(
    ("writer", "relative"),
    [("thread", False), ("process", False), ("inline", False), ("inline", True)],
    ids=["thread", "process", "inline", "inline-relative-path-then-chdir"],
)
async def test_S13_full_disk_the_same_store_goes_on_once_space_is_freed(
    small_disk: Path, writer: str, relative: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``relative``: the store is named by a path relative to the working
    directory, which the program leaves once the store is open; the check
    for the -wal file's size (made when a write meets the full disk) used
    to look for it in the new directory, find none, and never checkpoint."""
    db = small_disk / "sagas.db"
    weight = fill(small_disk, LEFT_FREE)
    participant = Participant()
    if relative:
        monkeypatch.chdir(small_disk)
        store = SQLiteSagaStore("sagas.db", writer=writer)
        await store.open()
        monkeypatch.chdir(small_disk.parent)
    else:
        store = SQLiteSagaStore(db, writer=writer)
    try:
        saga = disk_saga(store, participant)
        told: dict[str, Told] = {}
        await fill_with_sagas(saga, told)
        # Sagas that begin on the full disk (a small write may still find
        # room in the last pages: the check below holds either way).
        for n in range(3):
            told[f"late-{n}"] = await run(saga, f"late-{n}")
        assert check_told(told, db, participant) == []
        assert "interrupted" in {kind for kind, _, _ in told.values()}, told
        wal_when_full = wal_size(db)

        # The operator frees some space: the same store object goes on.
        free_some(weight, FREED)
        for n in range(AFTER):
            told[f"after-{n}"] = await run(saga, f"after-{n}")
        refused = [saga_id for saga_id, outcome in told.items()
                   if saga_id.startswith("after-") and outcome[0] != "result"]
        assert refused == [], (
            f"{len(refused)} of {AFTER} sagas were refused after {FREED} bytes were freed "
            f"(-wal file {wal_size(db)} bytes, database {db.stat().st_size})"
        )
        # The -wal file was moved into the database rather than left to grow.
        assert wal_size(db) < wal_when_full

        report = await recover(store, [saga], older_than=0)
        assert report.failed == [], report
        assert report.skipped == [], report
        held = journal(db)
        expected = {saga_id for saga_id, (_, status, _) in told.items() if status is not None}
        assert {saga_id for saga_id, (status, _) in held.items()
                if status == "completed"} == expected
        # Each step of each saga applied exactly once, nothing compensated.
        assert participant.applied == Counter(
            {f"{saga_id}:{step}": 1 for saga_id in expected for step in STEPS}
        )
        assert check_told({}, db, participant) == []
    finally:
        await store.close()
    # Closed with room on the disk: the -wal file was checkpointed and removed.
    assert wal_size(db) == 0


async def finished_sagas_then_full(
    db: Path, disk: Path, participant: Participant
) -> tuple[SQLiteSagaStore, Path]:
    """A service's store, open, with COMPLETED sagas; then the disk filled
    to its last byte. The store and the ballast file."""
    store = SQLiteSagaStore(db)
    saga = disk_saga(store, participant)
    for n in range(COMPLETED):
        assert await run(saga, f"done-{n}") == ("result", "completed", None)
    return store, fill(disk, 0)


COMPLETED = 20


async def test_S13_purge_on_a_full_disk_says_what_to_do_and_the_store_goes_on(
    small_disk: Path,
) -> None:
    db = small_disk / "sagas.db"
    participant = Participant()
    store, weight = await finished_sagas_then_full(db, small_disk, participant)
    try:
        before = journal(db)
        # A purge deletes through the -wal file too: on a full disk it is refused,
        # saying so and what to do, and nothing is lost.
        with pytest.raises(SagaStoreError) as refused:
            await store.purge(older_than=0)
        message = str(refused.value)
        assert "the disk holding the store is full" in message, message
        assert "free space" in message, message
        assert journal(db) == before
        saga = disk_saga(store, participant)
        told = {"while-full": await run(saga, "while-full")}
        assert told["while-full"][:2] == ("interrupted", None), told
        assert check_told(told, db, participant) == []
        assert ("while-full", "A", "act") not in participant.calls

        free_some(weight, FREED)
        assert await store.purge(older_than=0) == COMPLETED
        assert journal(db) == {}
        assert await run(saga, "after") == ("result", "completed", None)
    finally:
        await store.close()


def test_S13_cli_purge_on_a_full_disk_fails_cleanly_then_works(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service keeps its store open while the operator runs ``purge``."""
    db = small_disk / "sagas.db"
    loop = asyncio.new_event_loop()
    store, weight = loop.run_until_complete(
        finished_sagas_then_full(db, small_disk, Participant())
    )
    try:
        status = cli_main(["purge", "--db", str(db), "--older-than", "0"])
        out, err = capsys.readouterr()
        assert status == 1, (out, err)
        assert "the disk holding the store is full" in err, err
        assert "free space" in err, err
        assert "Traceback" not in err, err
        assert len(journal(db)) == COMPLETED

        free_some(weight, FREED)
        assert cli_main(["purge", "--db", str(db), "--older-than", "0"]) == 0
        out, err = capsys.readouterr()
        assert f"purged {COMPLETED} finished sagas" in out, (out, err)
        assert journal(db) == {}
    finally:
        loop.run_until_complete(store.close())
        loop.close()


async def test_S13_opening_a_store_on_a_full_disk_says_the_disk_is_full(
    small_disk: Path,
) -> None:
    """A store closed cleanly (no -wal/-shm file left), then the disk filled:
    SQLite cannot make the -shm file and says "disk I/O error"; the store
    says the disk is full, and the same store object opens once it is not."""
    db = small_disk / "sagas.db"
    participant = Participant()
    async with SQLiteSagaStore(db) as first:
        assert await run(disk_saga(first, participant), "before") == (
            "result", "completed", None
        )
    weight = fill(small_disk, 0)
    store = SQLiteSagaStore(db)
    try:
        with pytest.raises(SagaStoreError) as refused:
            await store.open()
        assert "the disk holding the store is full" in str(refused.value), refused.value
        assert "free space" in str(refused.value), refused.value
        free_some(weight, FREED)
        await store.open()
        assert (await store.load("before")).status.value == "completed"
    finally:
        await store.close()


@pytest.mark.parametrize("writer", ["thread", "process", "inline"])
async def test_S13_a_creation_refused_by_a_full_disk_is_not_in_doubt(
    small_disk: Path, writer: str
) -> None:
    """SQLite's SQLITE_FULL is final: the commit is the last thing it writes,
    so a write that found no room was not committed. A saga whose creation
    met the full disk is reported as not written (``in_doubt`` false, no
    "if the write landed unseen"), and the caller may run it again, under
    the same id, once there is room."""
    db = small_disk / "sagas.db"
    participant = Participant()
    store = SQLiteSagaStore(db, writer=writer)
    try:
        saga = disk_saga(store, participant)
        assert await run(saga, "before") == ("result", "completed", None)
        weight = fill(small_disk, 0)
        with pytest.raises(SagaInterrupted) as refused:
            await saga.run(ctx("while-full"), saga_id="while-full")
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "its creation was not written" in str(refused.value), refused.value
        assert "the disk holding the store is full" in str(refused.value.error)
        assert "while-full" not in journal(db)
        assert [call for call in participant.calls if call[0] == "while-full"] == []

        free_some(weight, FREED)
        assert await run(saga, "while-full") == ("result", "completed", None)
        assert check_told({}, db, participant) == []
    finally:
        await store.close()
