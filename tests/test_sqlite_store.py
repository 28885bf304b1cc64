"""SQLiteSagaStore beyond the shared contract: the file, the schema, the
threads (group commit, several loops, several stores on one file) and bad data.

The generic behaviour (create/append/load, claim, fencing, purge) is checked
by ``test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import Saga, SagaContext, SagaFailed, SagaStatus, StepStatus
from fallback_saga.errors import CorruptSagaRecord, SagaStoreError
from fallback_saga.store import _sqlite_schema
from fallback_saga.store import sqlite as sqlite_store
from fallback_saga.store.base import Lease, RecoverableStore
from fallback_saga.store.sqlite import SCHEMA_VERSION, SQLiteSagaStore
from fallback_saga.testing import entry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteSagaStore]:
    async with SQLiteSagaStore(db) as store:
        yield store


@pytest.fixture
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the store's file, to look at or tamper with rows."""
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()


async def new_saga(store: SQLiteSagaStore, saga_id: str, **kwargs: Any) -> None:
    await store.create(saga_id, "OrderSaga", "fp", {"order_id": saga_id}, [entry(0, "a")], **kwargs)


class Gate:
    """Holds the writer thread inside a request until opened, so that the
    requests made meanwhile queue up and are taken as one group."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.done = store._submit(self._hold, (), write=True)

    def _hold(self, conn: sqlite3.Connection, txn: object) -> None:
        self.entered.set()
        self.opened.wait()

    async def __aenter__(self) -> Gate:
        await asyncio.to_thread(self.entered.wait)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.opened.set()
        await self.done


# --------------------------------------------------------------------------- a real saga


@dataclasses.dataclass
class Order(SagaContext):
    order_id: str = "o-1"
    reserved: bool = False
    charged: int = 0
    fail_at_ship: bool = False


class Reserve:
    async def act(self, ctx: Order) -> None:
        ctx.reserved = True

    async def compensate(self, ctx: Order) -> None:
        ctx.reserved = False


class Charge:
    async def act(self, ctx: Order) -> None:
        ctx.charged += 100

    async def compensate(self, ctx: Order) -> None:
        ctx.charged = 0


class Ship:
    async def act(self, ctx: Order) -> None:
        if ctx.fail_at_ship:
            raise RuntimeError("no truck")

    async def compensate(self, ctx: Order) -> None:
        pass


class OrderSaga(Saga[Order]):
    steps = [Reserve, Charge, Ship]


# --------------------------------------------------------------------------- the file


def test_it_is_a_recoverable_store(db: Path) -> None:
    assert isinstance(SQLiteSagaStore(db), RecoverableStore)


async def test_wal_mode_is_on(store: SQLiteSagaStore, raw: sqlite3.Connection) -> None:
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_schema_version_is_recorded(store: SQLiteSagaStore, raw: sqlite3.Connection) -> None:
    assert SCHEMA_VERSION == 6
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 6
    columns = [row[1] for row in raw.execute("PRAGMA table_info(sagas)")]
    assert columns == [
        "saga_id", "saga_name", "fingerprint", "status", "context", "version",
        "created_at", "updated_at", "lease_owner", "lease_expires_at", "fence",
        "lease_written_at", "unreleased_claims",
    ]
    steps = [row[1] for row in raw.execute("PRAGMA table_info(saga_steps)")]
    assert steps == [
        "saga_id", "seq", "position", "step", "branch", "action", "status", "attempt",
        "error", "at", "result",
    ]
    indexes = {row[1] for row in raw.execute("PRAGMA index_list(sagas)")}
    assert {"sagas_by_status", "sagas_by_name", "sagas_listed_by_status",
            "sagas_by_name_status"} <= indexes
    status_index = [row[2] for row in raw.execute("PRAGMA index_info(sagas_by_status)")]
    assert status_index == ["status", "updated_at"]
    # The operator's listings by status, by name and status, and counts (v5).
    listed = [row[2] for row in raw.execute("PRAGMA index_info(sagas_listed_by_status)")]
    assert listed == ["status"]
    named = [row[2] for row in raw.execute("PRAGMA index_info(sagas_by_name_status)")]
    assert named == ["saga_name", "status"]


@pytest.fixture
def empty_file(db: Path) -> Path:
    db.write_bytes(b"")
    return db


@pytest.fixture
def csv_file(db: Path) -> Path:
    db.write_text(CSV)
    return db


CSV = "order_id,amount\n42,19.99\n" * 100


def file_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def test_an_empty_file_is_migrated(empty_file: Path) -> None:
    db = empty_file
    async with SQLiteSagaStore(db) as store:
        await new_saga(store, "saga-1")
        assert (await store.load("saga-1")).saga_name == "OrderSaga"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # commits, then closes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_reopening_a_file_keeps_its_sagas(db: Path) -> None:
    async with SQLiteSagaStore(db) as store:
        await new_saga(store, "saga-1")
        await store.append("saga-1", [entry(0, "a", StepStatus.COMPLETED)], context={"n": 1})
    async with SQLiteSagaStore(db) as store:
        record = await store.load("saga-1")
        assert record.context == {"n": 1}
        assert [e.status for e in record.history] == [StepStatus.STARTED, StepStatus.COMPLETED]
        await store.append("saga-1", [entry(1, "b")])  # numbering goes on after a reopen
        assert [e.step for e in (await store.load("saga-1")).history] == ["a", "a", "b"]


async def test_a_new_schema_version_is_one_more_migration(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteSagaStore(db) as store:
        await new_saga(store, "saga-1")
    ran: list[int] = []

    def to_next(conn: sqlite3.Connection) -> None:
        ran.append(SCHEMA_VERSION + 1)
        conn.execute("ALTER TABLE sagas ADD COLUMN note TEXT NULL")

    monkeypatch.setattr(_sqlite_schema, "_MIGRATIONS", (*_sqlite_schema._MIGRATIONS, to_next))
    async with SQLiteSagaStore(db) as store:
        assert (await store.load("saga-1")).saga_name == "OrderSaga"
    async with SQLiteSagaStore(db) as store:  # already migrated: nothing runs again
        await new_saga(store, "saga-2")
    assert ran == [SCHEMA_VERSION + 1]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # commits, then closes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(sagas)")]


async def test_a_failed_migration_leaves_the_file_as_it_was(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteSagaStore(db) as store:
        await new_saga(store, "saga-1")

    def broken_next(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE sagas ADD COLUMN note TEXT NULL")
        conn.execute("THIS IS NOT SQL")

    monkeypatch.setattr(
        _sqlite_schema, "_MIGRATIONS", (*_sqlite_schema._MIGRATIONS, broken_next)
    )
    store = SQLiteSagaStore(db)
    with pytest.raises(SagaStoreError, match="cannot open SQLite database"):
        await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # commits, then closes
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "note" not in [row[1] for row in conn.execute("PRAGMA table_info(sagas)")]


async def test_a_newer_schema_is_refused(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # commits, then closes
        conn.execute("PRAGMA user_version = 99")
    store = SQLiteSagaStore(db)
    with pytest.raises(SagaStoreError, match="schema version 99, newer"):
        await store.open()
    await store.close()


async def test_a_file_that_is_not_sqlite_gets_a_clear_error_at_first_use(
    csv_file: Path,
) -> None:
    db = csv_file
    store = SQLiteSagaStore(db)  # nothing is opened yet
    with pytest.raises(SagaStoreError, match="is not a SQLite database") as caught:
        await new_saga(store, "saga-1")
    assert str(db) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(SagaStoreError, match="is not a SQLite database"):
        await store.load("saga-1")  # every later call says the same
    with pytest.raises(SagaStoreError, match="is not a SQLite database"):
        await store.open()
    await store.close()
    assert file_text(db) == CSV  # and the file is untouched


async def test_a_missing_directory_gets_a_clear_error(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "no" / "such" / "dir" / "sagas.db")
    with pytest.raises(SagaStoreError, match="cannot open SQLite database"):
        await store.open()
    await store.close()


@pytest.mark.parametrize("path", [5, None, ["sagas.db"]])
def test_a_path_of_the_wrong_type_is_named(path: Any) -> None:
    """Not os.fsdecode's "expected str, bytes or os.PathLike object, not int"."""
    with pytest.raises(TypeError, match=r"SQLiteSagaStore takes the path of its database file"):
        SQLiteSagaStore(path)


# --------------------------------------------------------------------------- options


async def _synchronous_setting(store: SQLiteSagaStore) -> int:
    def read(conn: sqlite3.Connection, txn: object) -> int:
        value: int = conn.execute("PRAGMA synchronous").fetchone()[0]
        return value

    result: int = await store._submit(read, (), write=True)
    return result


async def test_synchronous_is_full_by_default(store: SQLiteSagaStore) -> None:
    assert store.synchronous == "full"
    assert await _synchronous_setting(store) == 2  # FULL


async def test_synchronous_normal_is_an_explicit_opt_in(db: Path) -> None:
    async with SQLiteSagaStore(db, synchronous="normal") as store:
        assert store.synchronous == "normal"
        assert await _synchronous_setting(store) == 1  # NORMAL
        await new_saga(store, "saga-1")
        assert (await store.load("saga-1")).status is SagaStatus.RUNNING


@pytest.mark.parametrize("value", ["off", "extra", "fulll", "", 2, None])
def test_other_synchronous_values_are_refused(db: Path, value: Any) -> None:
    with pytest.raises(ValueError, match=r"synchronous must be 'full'.*or 'normal'"):
        SQLiteSagaStore(db, synchronous=value)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "5", True])
def test_bad_busy_timeouts_are_refused(db: Path, value: Any) -> None:
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteSagaStore(db, busy_timeout=value)


async def test_bad_arguments_are_refused_before_anything_is_queued(
    store: SQLiteSagaStore,
) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_sagas(limit=-1)
    with pytest.raises(ValueError, match="owner"):
        await store.claim(owner="", lease_seconds=1, older_than=0, limit=1)
    with pytest.raises(ValueError, match="older_than"):
        await store.purge(older_than=float("nan"))
    # An int too large for a float was an OverflowError naming nothing.
    with pytest.raises(ValueError, match="older_than must be a finite number of seconds"):
        await store.purge(older_than=10**400)
    with pytest.raises(ValueError, match="lease_seconds must be a finite number of seconds"):
        await store.claim(owner="w", lease_seconds=10**400, older_than=0, limit=1)
    lease = Lease(saga_id="other", owner="w", token=1, expires_at=0.0)
    with pytest.raises(ValueError, match="lease is for saga 'other'"):
        await store.append("saga-1", [], fence=lease)
    assert store.stats.writes == 1  # only open()'s


async def test_a_context_that_is_not_json_is_refused_and_nothing_is_written(
    store: SQLiteSagaStore,
) -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    for bad in ({"amount": float("nan")}, {"tags": {"a", "b"}}, cycle):
        with pytest.raises(SagaStoreError, match="cannot be stored as JSON"):
            await store.create("saga-1", "OrderSaga", "fp", bad, [])
    assert await store.list_sagas() == []
    await new_saga(store, "saga-1")
    with pytest.raises(SagaStoreError, match="cannot be stored as JSON"):
        await store.append("saga-1", [entry(1, "b")], context={"x": float("inf")})
    assert len((await store.load("saga-1")).history) == 1


# --------------------------------------------------------------------------- lifecycle


async def test_close_is_idempotent_and_a_closed_store_refuses_work(db: Path) -> None:
    store = SQLiteSagaStore(db)
    await new_saga(store, "saga-1")
    await store.close()
    await store.close()
    with pytest.raises(SagaStoreError, match="closed"):
        await store.load("saga-1")


async def test_a_close_called_while_another_closes_returns_once_the_file_is_closed(
    db: Path, raw: sqlite3.Connection
) -> None:
    """A second ``close()`` (another request's shutdown hook, say) used to
    return at once while the first was still finishing the queued writes:
    "closed" did not mean the file was. It now waits for the first."""
    store = SQLiteSagaStore(db)
    await new_saga(store, "saga-1")
    async with Gate(store):  # the writer is busy: the append and the closes queue up
        append = asyncio.ensure_future(store.append("saga-1", [entry(1, "b")]))
        first = asyncio.ensure_future(store.close())
        second = asyncio.ensure_future(store.close())
        for _ in range(20):  # turns of the loop, not time: nothing can finish
            await asyncio.sleep(0)
        assert not second.done()
        assert not first.done()
        assert not append.done()
        second.cancel()  # a waiter cancelled leaves the closing alone
        third = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        assert not third.done()
    await asyncio.gather(append, first, third)
    with pytest.raises(asyncio.CancelledError):
        await second
    (rows,) = raw.execute("SELECT count(*) FROM saga_steps WHERE saga_id = 'saga-1'").fetchone()
    assert rows == 2
    with pytest.raises(SagaStoreError, match="closed"):
        await store.load("saga-1")


async def test_closing_a_store_that_was_never_used(db: Path) -> None:
    await SQLiteSagaStore(db).close()
    assert file_text(db) is None  # not even created


async def test_a_store_serves_several_event_loops(store: SQLiteSagaStore) -> None:
    await new_saga(store, "saga-1")

    async def elsewhere() -> list[str]:
        await new_saga(store, "saga-2")
        await store.append("saga-1", [entry(1, "b")])
        return [e.step for e in (await store.load("saga-1")).history]

    # A second loop, in another thread, while this one is still running.
    assert await asyncio.to_thread(asyncio.run, elsewhere()) == ["a", "b"]
    assert (await store.load("saga-2")).saga_name == "OrderSaga"


def test_a_store_outlives_the_event_loop_that_first_used_it(db: Path) -> None:
    store = SQLiteSagaStore(db)  # made outside any loop
    asyncio.run(new_saga(store, "saga-1"))  # first used by a loop that is then closed

    async def later() -> str:
        try:
            await store.append("saga-1", [entry(1, "b")])
            return (await store.load("saga-1")).history[-1].step
        finally:
            await store.close()

    assert asyncio.run(later()) == "b"


async def test_a_cancelled_caller_does_not_disturb_the_others(store: SQLiteSagaStore) -> None:
    async with Gate(store):
        doomed = asyncio.ensure_future(new_saga(store, "saga-1"))
        kept = asyncio.ensure_future(new_saga(store, "saga-2"))
        await asyncio.sleep(0)  # both requests are queued behind the gate
        doomed.cancel()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await doomed
    # The cancelled request had been handed to the writer already: it was written.
    assert {s.saga_id for s in await store.list_sagas()} == {"saga-1", "saga-2"}


# --------------------------------------------------------------------------- group commit


async def test_queued_writes_share_one_commit(store: SQLiteSagaStore) -> None:
    before = store.stats
    async with Gate(store):
        writes = [asyncio.ensure_future(new_saga(store, f"saga-{n}")) for n in range(50)]
        await asyncio.sleep(0)
    await asyncio.gather(*writes)
    after = store.stats
    assert after.writes - before.writes == 51  # the gate and the 50 creates
    assert after.commits - before.commits == 2  # the gate's group, then one for all 50
    assert after.largest_group >= 50


async def test_a_failing_request_fails_alone_in_its_group(store: SQLiteSagaStore) -> None:
    await new_saga(store, "taken")

    class Unbindable:
        """A value sqlite3 cannot bind: the write fails half-way, inside SQLite."""

    bad_entry = entry(1, "b")._replace(step=Unbindable())  # type: ignore[arg-type]
    async with Gate(store):
        calls = [
            new_saga(store, "saga-1"),
            new_saga(store, "taken"),  # refused: SagaAlreadyExists
            store.append("unknown", [entry(1, "b")]),  # refused: SagaNotFound
            store.append("saga-1", [entry(1, "b")], context={"n": 1}),
            store.append("taken", [entry(1, "b"), bad_entry], status=SagaStatus.FAILED),
            new_saga(store, "saga-2"),
        ]
        futures = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds == [
        "NoneType", "SagaAlreadyExists", "SagaNotFound", "NoneType", "SagaStoreError", "NoneType",
    ]
    assert isinstance(outcomes[4].__cause__, sqlite3.Error)  # type: ignore[union-attr]
    saga_1 = await store.load("saga-1")
    assert [e.step for e in saga_1.history] == ["a", "b"]
    assert saga_1.context == {"n": 1}
    taken = await store.load("taken")  # the half-written append left nothing behind
    assert [e.step for e in taken.history] == ["a"]
    assert taken.status is SagaStatus.RUNNING
    assert (await store.load("saga-2")).saga_name == "OrderSaga"
    # The writer's memory of "taken" was rolled back with the failed group.
    await store.append("taken", [entry(1, "b")])
    assert [e.step for e in (await store.load("taken")).history] == ["a", "b"]


async def test_numbering_goes_on_when_another_store_wrote_the_saga(
    store: SQLiteSagaStore, db: Path
) -> None:
    await new_saga(store, "saga-1")
    await store.append("saga-1", [entry(1, "b")])
    async with SQLiteSagaStore(db) as other:  # another process, as far as SQLite knows
        await other.append("saga-1", [entry(2, "c"), entry(3, "d")], context={"by": "other"})
    await store.append("saga-1", [entry(4, "e")])
    record = await store.load("saga-1")
    assert [e.step for e in record.history] == ["a", "b", "c", "d", "e"]
    assert record.context == {"by": "other"}
    assert record.version == 4


async def test_200_sagas_in_flight_are_all_journaled_completely(store: SQLiteSagaStore) -> None:
    saga = OrderSaga(store=store)
    orders = [Order(order_id=f"o-{n}", fail_at_ship=n % 10 == 0) for n in range(200)]
    ids = [f"saga-{n:03d}" for n in range(200)]
    before = store.stats
    outcomes = await asyncio.gather(
        *(saga.run(order, saga_id=saga_id) for order, saga_id in zip(orders, ids, strict=True)),
        return_exceptions=True,
    )
    for n, (outcome, saga_id) in enumerate(zip(outcomes, ids, strict=True)):
        record = await store.load(saga_id)
        assert record.saga_name == "OrderSaga"
        assert record.fingerprint == OrderSaga.definition.fingerprint
        steps = [(e.step, e.action, e.status.value) for e in record.history]
        forward = [
            (name, "act", status)
            for name in ("Reserve", "Charge", "Ship")
            for status in ("started", "completed")
        ]
        if n % 10:
            assert not isinstance(outcome, BaseException)
            assert record.status is SagaStatus.COMPLETED
            assert steps == forward
            assert record.context["charged"] == 100
        else:
            assert isinstance(outcome, SagaFailed)
            assert record.status is SagaStatus.COMPENSATED
            assert steps[:5] == forward[:5]
            assert steps[5] == ("Ship", "act", "failed")
            assert [(name, action) for name, action, _ in steps[6:]] == [
                ("Charge", "compensate"), ("Charge", "compensate"),
                ("Reserve", "compensate"), ("Reserve", "compensate"),
            ]
            assert record.context["charged"] == 0
    after = store.stats
    assert after.commits - before.commits < after.writes - before.writes  # group commit


# --------------------------------------------------------------------------- leases


async def test_claim_and_lease_expiry_follow_the_injected_clock(db: Path) -> None:
    now = [1_000.0]
    async with SQLiteSagaStore(db, clock=lambda: now[0]) as store:
        await new_saga(store, "saga-1")
        assert (await store.load("saga-1")).created_at == 1_000.0
        now[0] = 1_004.0
        assert await store.claim(owner="w1", lease_seconds=30, older_than=5, limit=10) == []
        now[0] = 1_006.0
        (lease,) = await store.claim(owner="w1", lease_seconds=30, older_than=5, limit=10)
        assert lease.expires_at == 1_036.0
        now[0] = 1_035.0
        assert await store.claim(owner="w2", lease_seconds=30, older_than=5, limit=10) == []
        now[0] = 1_037.0
        (taken_over,) = await store.claim(owner="w2", lease_seconds=30, older_than=5, limit=10)
        assert taken_over.token == lease.token + 1


async def test_claim_takes_the_oldest_first(db: Path) -> None:
    now = [1_000.0]
    async with SQLiteSagaStore(db, clock=lambda: now[0]) as store:
        for n in range(3):
            now[0] += 1
            await new_saga(store, f"saga-{n}")
        now[0] += 1  # saga-0 is updated last: now it is the newest
        await store.append("saga-0", [])
        now[0] += 100
        leases = await store.claim(owner="w", lease_seconds=30, older_than=1, limit=2)
        assert [lease.saga_id for lease in leases] == ["saga-1", "saga-2"]


def _claim_all(db: Path, owner: str, start: threading.Barrier) -> list[str]:
    async def claim_until_none_left() -> list[str]:
        claimed: list[str] = []
        async with SQLiteSagaStore(db, busy_timeout=30) as store:
            start.wait()
            while leases := await store.claim(
                owner=owner, lease_seconds=600, older_than=-1, limit=3
            ):
                claimed += [lease.saga_id for lease in leases]
        return claimed

    return asyncio.run(claim_until_none_left())


async def test_two_stores_on_one_file_never_claim_the_same_saga(
    store: SQLiteSagaStore, db: Path
) -> None:
    ids = {f"saga-{n}" for n in range(100)}
    await asyncio.gather(*(new_saga(store, saga_id) for saga_id in ids))
    start = threading.Barrier(2)
    first, second = await asyncio.gather(
        asyncio.to_thread(_claim_all, db, "worker-1", start),
        asyncio.to_thread(_claim_all, db, "worker-2", start),
    )
    assert not set(first) & set(second)
    assert len(first) + len(second) == 100
    assert set(first) | set(second) == ids


async def test_purge_removes_the_history_rows_too(
    store: SQLiteSagaStore, raw: sqlite3.Connection
) -> None:
    await new_saga(store, "done", status=SagaStatus.COMPLETED)
    await new_saga(store, "running")
    await store.append("done", [entry(1, "b"), entry(2, "c")])
    assert await store.purge(older_than=-1) == 1
    rows = raw.execute("SELECT saga_id, COUNT(*) FROM saga_steps GROUP BY saga_id").fetchall()
    assert rows == [("running", 1)]


@pytest.mark.parametrize("writer", ["thread", "inline"])
async def test_S13_a_big_purge_commits_in_batches_so_live_sagas_keep_journaling(
    db: Path, raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """A purge of millions of old sagas (cron, once a month) must not hold the
    write lock for all of them at once: a service journaling its live sagas
    in another process waits at most ``busy_timeout`` for it, then its runs
    stop with ``SagaInterrupted``. The purge commits a batch at a time, and
    sagas that finish while it runs are not purged by it (its cutoff is the
    moment it was called)."""
    monkeypatch.setattr(sqlite_store, "PURGE_BATCH", 3)
    now = [1_000.0]
    async with SQLiteSagaStore(db, clock=lambda: now[0], writer=writer) as store:
        for n in range(10):
            await new_saga(store, f"done-{n}", status=SagaStatus.COMPLETED)
            await store.append(f"done-{n}", [entry(1, "b")])
        await new_saga(store, "running")
        now[0] += 100
        before = store.stats.commits
        batches: list[int] = []
        real_purge = sqlite_store._purge

        def one_batch(cursor: sqlite3.Cursor, *args: Any) -> Any:
            # Meanwhile, a saga finishes (written in the batch's transaction:
            # another writer cannot get in while the test holds this one).
            if batches:
                cursor.execute(
                    "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context,"
                    " version, created_at, updated_at) VALUES (?, 'OrderSaga', 'fp',"
                    " 'completed', '{}', 1, ?, ?)", (f"late-{len(batches)}", now[0], now[0]),
                )
            purged = real_purge(cursor, *args)
            batches.append(purged[0])
            return purged

        monkeypatch.setattr(sqlite_store, "_purge", one_batch)
        assert await store.purge(older_than=50) == 10
        assert batches == [3, 3, 3, 1]
        assert store.stats.commits - before == len(batches)
        left = raw.execute("SELECT saga_id FROM sagas ORDER BY saga_id").fetchall()
        assert left == [("late-1",), ("late-2",), ("late-3",), ("running",)]
        steps = raw.execute("SELECT DISTINCT saga_id FROM saga_steps").fetchall()
        assert steps == [("running",)]


# --------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("context", "{not json", "not valid JSON"),
        ("context", "[1, 2]", "not a JSON object"),
        ("context", '{"x": NaN}', "not valid JSON"),
        ("status", "exploded", "unknown saga status 'exploded'"),
        ("saga_name", b"\x01", "saga_name is not text"),
    ],
)
async def test_a_corrupt_row_raises_corrupt_saga_record_naming_the_saga(
    store: SQLiteSagaStore, raw: sqlite3.Connection, column: str, value: Any, reason: str
) -> None:
    await new_saga(store, "bad")
    await new_saga(store, "good")
    raw.execute(f"UPDATE sagas SET {column} = ? WHERE saga_id = 'bad'", (value,))
    with pytest.raises(CorruptSagaRecord, match=reason) as caught:
        await store.load("bad")
    assert caught.value.saga_id == "bad"
    assert "'bad'" in str(caught.value)
    assert (await store.load("good")).saga_name == "OrderSaga"  # the others are fine


@pytest.mark.parametrize(
    ("column", "value"),
    [("status", "teleported"), ("branch", "sideways"), ("action", "undo"), ("attempt", "x")],
)
async def test_a_corrupt_history_row_raises_corrupt_saga_record(
    store: SQLiteSagaStore, raw: sqlite3.Connection, column: str, value: str
) -> None:
    await new_saga(store, "bad")
    raw.execute(f"UPDATE saga_steps SET {column} = ? WHERE saga_id = 'bad'", (value,))
    with pytest.raises(CorruptSagaRecord, match="transition 0") as caught:
        await store.load("bad")
    assert caught.value.saga_id == "bad"


async def test_a_listing_skips_a_corrupt_row_and_logs_it(
    store: SQLiteSagaStore, raw: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await new_saga(store, "bad")
    await new_saga(store, "good")
    raw.execute("UPDATE sagas SET status = 'exploded' WHERE saga_id = 'bad'")
    with caplog.at_level(logging.WARNING, logger="fallback_saga.store.sqlite"):
        listing = await store.list_sagas()
    assert [s.saga_id for s in listing] == ["good"]
    assert "'bad'" in caplog.text


async def test_the_context_is_stored_as_plain_json_text(
    store: SQLiteSagaStore, raw: sqlite3.Connection
) -> None:
    await store.create("saga-1", "OrderSaga", "fp", {"b": [1, 2.5, None], "a": "é"}, [])
    (text,) = raw.execute("SELECT context FROM sagas WHERE saga_id = 'saga-1'").fetchone()
    assert text == '{"b":[1,2.5,null],"a":"\\u00e9"}'


class _Tally:
    """A step listener: with one, the executor runs every step through its
    general path (``try_branch``) rather than inlined."""

    def __init__(self) -> None:
        self.started = 0

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.started += 1


@pytest.mark.parametrize("fails", [False, True])
async def test_S13_inlined_steps_journal_what_the_general_path_journals(
    db: Path, fails: bool
) -> None:
    # Plain steps and a plain Fallback on a write-ahead store run inlined in the
    # run loop when no step listener listens. The rows they leave (and when
    # each is durable: see test_journal_truth) must be the general path's.
    from helpers_saga import Boom, OrderCtx, Probe, declare

    from fallback_saga import Fallback

    def reserve(ctx: OrderCtx) -> None:
        ctx.reservation = "r-1"

    def wreck(ctx: OrderCtx) -> None:
        ctx.order_id = "wrecked"  # by a failing act: restored before the fallback runs

    def add_item(ctx: OrderCtx) -> None:
        ctx.items.append("pear")

    def count(ctx: OrderCtx) -> None:
        ctx.meta["n"] += 1

    def steps() -> list[Any]:
        last = (Probe("C", [], mutate=count, error=Boom) if fails
                else Probe("C", [], mutate=count, response="c"))
        return [Probe("A", [], mutate=reserve, response="a"),
                Fallback(step=Probe("B", [], mutate=wreck, error=Boom),
                         fallback=Probe("B2", [], mutate=add_item, response="b")),
                last]

    tally = _Tally()
    histories = []
    async with SQLiteSagaStore(db) as store:
        for listeners in ((), (tally,)):
            saga = declare(*steps())(store=store, listeners=listeners)
            saga_id = f"inline-{len(listeners)}"
            if fails:
                with pytest.raises(SagaFailed):
                    await saga.run(OrderCtx(), saga_id=saga_id)
            else:
                await saga.run(OrderCtx(), saga_id=saga_id)
            record = await store.load(saga_id)
            histories.append(
                (record.status, record.context,
                 [(e.position, e.step, e.branch, e.action, e.status, e.attempt, e.error, e.result)
                  for e in record.history])
            )
    assert tally.started > 0  # the second run did take the general path
    assert histories[0] == histories[1]
    assert histories[0][1]["reservation"] == "r-1"
    assert histories[0][1]["items"] == ["apple", "pear"]
    assert histories[0][1]["order_id"] == "order-1"


# --------------------------------------------------------------------------- the -wal file


def wal_size(db: Path) -> int:
    return Path(f"{db}-wal").stat().st_size


@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
async def test_S10_the_wal_file_shrinks_back_once_a_long_reader_lets_go(
    db: Path, raw: sqlite3.Connection, writer: str
) -> None:
    """A reader holding a snapshot (a console page, a listing, a backup tool)
    keeps SQLite from recycling the -wal file, so it grows with every write
    meanwhile. Once the reader lets go, the next checkpoint recycles it — and
    the file must shrink back too, not stay at its largest for as long as the
    service runs."""
    limit = sqlite_store.WAL_SIZE_LIMIT
    big = "x" * 200_000
    async with SQLiteSagaStore(db, synchronous="normal", writer=writer) as store:
        await new_saga(store, "first")
        raw.execute("BEGIN")
        raw.execute("SELECT count(*) FROM sagas").fetchone()  # a snapshot, held
        n = 0
        while wal_size(db) <= 2 * limit:
            n += 1
            await store.create(f"held-{n}", "OrderSaga", "fp", {"blob": big}, [entry(0, "a")])
        raw.execute("ROLLBACK")  # the reader lets go
        for m in range(4 * limit // len(big) + 10):  # enough writes for checkpoints
            await store.create(f"after-{m}", "OrderSaga", "fp", {"blob": big}, [entry(0, "a")])
            if wal_size(db) <= limit:
                break
        assert wal_size(db) <= limit
