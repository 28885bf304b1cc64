"""SQLiteSagaStore's batched group: the creates and appends of one group run
as multi-row statements (chunks of up to 64), and a chunk that cannot be
written as a whole runs request by request. Every outcome must be what the
same requests get one at a time: each test runs batched and not batched.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from test_sqlite_store import Gate, new_saga

from fallback_saga import SagaStatus, StepStatus
from fallback_saga.errors import SagaStoreError
from fallback_saga.store import _sqlite_sql, _sqlite_workers
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import entry

# More than one chunk of 64, and a rest that is not a power of two.
MANY = 64 + 16 + 4 + 2 + 1


@pytest.fixture(params=[True, False], ids=["batched", "one-by-one"])
def batched(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    value: bool = request.param
    if not value:
        for module in (_sqlite_sql, _sqlite_workers):  # each reads it
            monkeypatch.setattr(module, "_BATCHED", False)
    elif not _sqlite_sql._BATCHED:
        pytest.skip("this SQLite has no UPDATE ... FROM")
    return value


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db: Path, batched: bool) -> AsyncIterator[SQLiteSagaStore]:
    async with SQLiteSagaStore(db) as store:
        yield store


async def one_group(store: SQLiteSagaStore, calls: list[Awaitable[Any]]) -> list[str]:
    """Run ``calls`` as one group of the writer; the name of each outcome."""
    before = store.stats
    async with Gate(store):
        futures = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert store.stats.commits - before.commits == 2  # the gate's, then the group's
    return [type(outcome).__name__ for outcome in outcomes]


async def steps(store: SQLiteSagaStore, saga_id: str) -> list[str]:
    return [e.step for e in (await store.load(saga_id)).history]


async def test_creates_with_a_taken_id_fail_alone(store: SQLiteSagaStore) -> None:
    await new_saga(store, "taken")
    ids = [f"s-{n}" for n in range(MANY)]
    calls = [new_saga(store, saga_id) for saga_id in ids]
    calls.insert(70, new_saga(store, "taken"))  # in the second chunk
    calls.append(new_saga(store, "s-3"))  # the same saga again: refused, after the first
    kinds = await one_group(store, calls)
    assert kinds[70] == "SagaAlreadyExists"
    assert kinds[-1] == "SagaAlreadyExists"
    assert set(kinds[:70] + kinds[71:-1]) == {"NoneType"}
    for saga_id in ids:
        record = await store.load(saga_id)
        assert record.context == {"order_id": saga_id}
        assert [e.step for e in record.history] == ["a"]
        assert record.version == 1


async def test_appends_in_one_group_continue_each_journal(store: SQLiteSagaStore) -> None:
    ids = [f"s-{n}" for n in range(MANY)]
    for saga_id in ids:
        await new_saga(store, saga_id)
    calls: list[Awaitable[Any]] = [
        store.append(saga_id, [entry(0, "a", StepStatus.COMPLETED), entry(1, "b")],
                     context={"n": n}, after=1)
        for n, saga_id in enumerate(ids)
    ]
    # The same saga again in the group: a later segment, in order.
    calls.append(store.append("s-0", [entry(1, "b", StepStatus.COMPLETED)],
                              status=SagaStatus.COMPLETED, after=3))
    assert set(await one_group(store, calls)) == {"NoneType"}
    for n, saga_id in enumerate(ids):
        record = await store.load(saga_id)
        assert record.context == {"n": n}
        assert record.version == (3 if n == 0 else 2)
        assert [(e.step, e.status) for e in record.history][:3] == [
            ("a", StepStatus.STARTED), ("a", StepStatus.COMPLETED), ("b", StepStatus.STARTED)
        ]
    assert (await store.load("s-0")).status is SagaStatus.COMPLETED
    assert len((await store.load("s-0")).history) == 4
    assert len((await store.load("s-1")).history) == 3


async def test_a_saga_another_store_wrote_is_read_again(
    store: SQLiteSagaStore, db: Path
) -> None:
    ids = [f"s-{n}" for n in range(MANY)]
    for saga_id in ids:
        await new_saga(store, saga_id)
    async with SQLiteSagaStore(db) as other:  # another process, as far as SQLite knows
        await other.append("s-5", [entry(1, "other")])
        await other.append("s-70", [entry(1, "other")])
    calls: list[Awaitable[Any]] = [store.append(saga_id, [entry(1, "b")]) for saga_id in ids]
    calls.append(store.append("s-6", [entry(2, "c")], after=1))  # wrong count: conflict
    calls.append(store.append("s-7", [entry(2, "c")], after=2))  # right: written
    kinds = await one_group(store, calls)
    assert kinds[-2] == "JournalConflict"
    assert set(kinds[:-2] + kinds[-1:]) == {"NoneType"}
    assert await steps(store, "s-5") == ["a", "other", "b"]
    assert await steps(store, "s-70") == ["a", "other", "b"]
    assert await steps(store, "s-6") == ["a", "b"]
    assert await steps(store, "s-7") == ["a", "b", "c"]
    assert (await store.load("s-5")).version == 3


async def test_a_stale_fencing_token_fails_alone(store: SQLiteSagaStore, db: Path) -> None:
    ids = [f"s-{n}" for n in range(MANY)]
    leases = {}
    for saga_id in ids:
        await new_saga(store, saga_id)
        leases[saga_id] = await store.claim_saga(saga_id, owner="w1", lease_seconds=-1)
    await store.claim_saga("s-66", owner="w2", lease_seconds=60)  # takes it over
    calls: list[Awaitable[Any]] = [
        store.append(saga_id, [entry(1, "b")], fence=leases[saga_id], after=1)
        for saga_id in ids
    ]
    kinds = await one_group(store, calls)
    assert kinds[66] == "LeaseLost"
    assert set(kinds[:66] + kinds[67:]) == {"NoneType"}
    assert await steps(store, "s-66") == ["a"]
    assert await steps(store, "s-65") == ["a", "b"]
    assert await steps(store, "s-67") == ["a", "b"]


async def test_a_saga_deleted_meanwhile_is_not_found(store: SQLiteSagaStore, db: Path) -> None:
    ids = [f"s-{n}" for n in range(MANY)]
    for saga_id in ids:
        await new_saga(store, saga_id)
    conn = sqlite3.connect(db, isolation_level=None)  # another process purges two
    conn.execute("DELETE FROM saga_steps WHERE saga_id IN ('s-3', 's-80')")
    conn.execute("DELETE FROM sagas WHERE saga_id IN ('s-3', 's-80')")
    conn.close()
    calls: list[Awaitable[Any]] = [store.append(saga_id, [entry(1, "b")]) for saga_id in ids]
    calls.append(store.append("s-3", [entry(1, "b")]))  # not remembered any more either
    kinds = await one_group(store, calls)
    assert kinds[3] == kinds[80] == kinds[-1] == "SagaNotFound"
    assert {k for n, k in enumerate(kinds[:-1]) if n not in (3, 80)} == {"NoneType"}
    assert await steps(store, "s-4") == ["a", "b"]
    assert await steps(store, "s-81") == ["a", "b"]


async def test_order_is_kept_across_kinds(store: SQLiteSagaStore) -> None:
    await new_saga(store, "old")
    calls: list[Awaitable[Any]] = [
        store.append("new", [entry(1, "b")]),  # before its create: not found
        new_saga(store, "new"),
        store.append("new", [entry(1, "b")]),  # after it: written
        store.append("old", [entry(1, "b")]),
        store.claim_saga("old", owner="w", lease_seconds=60),  # another kind of request
        store.append("old", [entry(2, "c")], status=SagaStatus.COMPLETED),
    ]
    kinds = await one_group(store, calls)
    assert kinds == ["SagaNotFound", "NoneType", "NoneType", "NoneType", "Lease", "NoneType"]
    assert await steps(store, "new") == ["a", "b"]
    assert await steps(store, "old") == ["a", "b", "c"]
    assert (await store.load("old")).status is SagaStatus.COMPLETED


async def test_a_failed_group_fails_every_request_of_it(
    store: SQLiteSagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await new_saga(store, "old")

    def failing_flush(self: Any, cursor: sqlite3.Cursor) -> None:
        if self.rows:  # not the gate's group: it has none
            raise sqlite3.OperationalError("disk I/O error")

    calls: list[Awaitable[Any]] = [new_saga(store, f"s-{n}") for n in range(70)]
    calls.append(store.append("old", [entry(1, "b")]))
    monkeypatch.setattr(_sqlite_sql._Txn, "flush", failing_flush)
    async with Gate(store):
        futures = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    monkeypatch.undo()
    for outcome in outcomes:
        assert type(outcome) is SagaStoreError
        assert "disk I/O error" in str(outcome)
    assert [summary.saga_id for summary in await store.list_sagas()] == ["old"]
    assert await steps(store, "old") == ["a"]
    assert (await store.load("old")).version == 1


async def test_absent_values_are_null_and_look_alike_texts_are_kept(
    store: SQLiteSagaStore, db: Path
) -> None:
    # The writer binds an absent value as a marker (0, or '' for a fencing
    # token) that SQL turns back into NULL: None must be stored as NULL, and
    # the texts "0" and "" as themselves; a token of 0 (a first run's) is a
    # token, not an absent one.
    from fallback_saga.store.base import JournalEntry, Lease

    ids = [f"s-{n}" for n in range(MANY)]
    for saga_id in ids:
        await new_saga(store, saga_id)
    texts: list[str | None] = [None, "0", ""]

    def entries(n: int) -> list[JournalEntry]:
        error, result = texts[n % 3], texts[(n // 3) % 3]
        return [
            JournalEntry(0, "a", "primary", "act", StepStatus.COMPLETED, 1, error, 1.5, result),
            entry(1, "b"),
        ]

    calls: list[Awaitable[Any]] = []
    for n, saga_id in enumerate(ids):
        fence = Lease(saga_id, "first run", 0, 0.0) if n % 2 else None
        status = SagaStatus.COMPENSATING if n % 5 == 0 else None
        context = {"n": n} if n % 7 else None
        calls.append(store.append(saga_id, entries(n), status=status, context=context,
                                  fence=fence, after=1))
    assert set(await one_group(store, calls)) == {"NoneType"}
    conn = sqlite3.connect(db)
    try:
        for n, saga_id in enumerate(ids):
            rows = conn.execute(
                "SELECT error, result FROM saga_steps WHERE saga_id = ? ORDER BY seq",
                (saga_id,),
            ).fetchall()
            assert rows == [(None, None), (texts[n % 3], texts[(n // 3) % 3]), (None, None)]
            status_text, context_text, version = conn.execute(
                "SELECT status, context, version FROM sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            assert status_text == ("compensating" if n % 5 == 0 else "running")
            assert context_text == (f'{{"n":{n}}}' if n % 7 else f'{{"order_id":"{saga_id}"}}')
            assert version == 2
    finally:
        conn.close()
    record = await store.load("s-5")
    assert [(e.error, e.result) for e in record.history[1:]] == [("", "0"), (None, None)]
    # A token that is no longer the saga's is still refused, batched or not.
    await store.claim_saga("s-1", owner="w", lease_seconds=60)
    stale = store.append("s-1", [entry(2, "c")], fence=Lease("s-1", "first run", 0, 0.0))
    fresh = store.append("s-2", [entry(2, "c")])
    assert await one_group(store, [stale, fresh]) == ["LeaseLost", "NoneType"]
