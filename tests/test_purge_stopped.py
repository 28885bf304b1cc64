"""A purge stopped partway tells what it deleted before it stopped.

A purge deletes in batches, each committed on its own (SQLite's
``PURGE_BATCH`` sagas a transaction, PostgreSQL's statements, the memory
store's generations: parents, then the children they kept): a store error
in a later batch, or a cancellation (Ctrl-C), leaves the earlier batches
deleted. ``purge(on_batch=...)`` is told of each batch as it is committed,
and the ``purge`` command says how many sagas were deleted before the stop.
Each store here with a fault injected in its second batch.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import MemorySagaStore, SagaStatus, SagaStoreError, SQLiteSagaStore
from fallback_saga.cli import main


async def finished(store: Any, count: int, prefix: str = "s") -> None:
    for n in range(count):
        await store.create(f"{prefix}-{n}", "OrderSaga", "fp", {}, [],
                           status=SagaStatus.COMPLETED)


async def test_memory_purge_tells_each_generation_and_a_fault_in_the_second_keeps_the_first(
) -> None:
    store = MemorySagaStore()
    await finished(store, 3)
    await store.create("s-0/Pay", "PaySaga", "fp", {}, [], status=SagaStatus.COMPLETED)
    told: list[int] = []
    assert await store.purge(older_than=-1, on_batch=told.append) == 4
    assert told == [3, 1]  # the parents, then the child each kept

    await finished(store, 3, "t")
    await store.create("t-0/Pay", "PaySaga", "fp", {}, [], status=SagaStatus.COMPLETED)
    told.clear()
    summary = store._summary

    def failing(saga_id: str) -> Any:
        if told:  # in the second generation
            raise RuntimeError("injected: the second batch fails")
        return summary(saga_id)

    store._summary = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected"):
        await store.purge(older_than=-1, on_batch=told.append)
    assert told == [3]
    store._summary = summary  # type: ignore[method-assign]
    assert [s.saga_id for s in await store.list_sagas()] == ["t-0/Pay"]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """SQLite's purge in batches of 10, its second batch failing as a disk
    does; the calls of its batch function, counted."""
    import fallback_saga.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "PURGE_BATCH", 10)
    batch = sqlite_store._purge
    calls: list[int] = []

    def failing(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return batch(*args)

    monkeypatch.setattr(sqlite_store, "_purge", failing)
    return calls


async def test_sqlite_purge_tells_each_batch_and_a_fault_in_the_second_keeps_the_first(
    tmp_path: Path, small_batches: list[int]
) -> None:
    told: list[int] = []
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        await finished(store, 25)
        with pytest.raises(SagaStoreError):
            await store.purge(older_than=-1, on_batch=told.append)
        assert told == [10]
        assert len(await store.list_sagas(limit=100)) == 15
        told.clear()
        assert await store.purge(older_than=-1, on_batch=told.append) == 15
        assert told == [10, 5]


def _backlog(db: Path, count: int) -> None:
    import asyncio

    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await finished(store, count)

    asyncio.run(go())


def test_the_purge_command_stopped_by_a_store_error_says_how_many_it_deleted(
    tmp_path: Path, small_batches: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sagas.db"
    _backlog(db, 25)
    assert main(["purge", "--db", str(db), "--older-than", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        "purge stopped: 10 finished sagas were deleted before it did, and stay deleted; "
        "purge again for the rest\n"
    )
    assert "disk I/O error" in captured.err


def test_the_purge_command_interrupted_says_how_many_it_deleted_at_least(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the second batch runs: the first is told; the second,
    under way, may be committed all the same (it is here)."""
    import fallback_saga.store.sqlite as sqlite_store

    db = tmp_path / "sagas.db"
    _backlog(db, 25)
    monkeypatch.setattr(sqlite_store, "PURGE_BATCH", 10)
    batch = sqlite_store._purge
    calls: list[int] = []

    def interrupted(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the operator's Ctrl-C, as the batch runs
            os.kill(os.getpid(), signal.SIGINT)
        return batch(*args)

    monkeypatch.setattr(sqlite_store, "_purge", interrupted)
    assert main(["purge", "--db", str(db), "--older-than", "0"]) == 130
    captured = capsys.readouterr()
    assert captured.out == (
        "purge interrupted: at least 10 finished sagas were deleted before it was (a batch "
        "under way may have been deleted too), and stay deleted; purge again for the rest\n"
    )
    assert captured.err.endswith("interrupted\n")
