"""The durable stores under bad conditions and bad input.

* A SQLite store whose first use met a locked file works once the lock is
  gone: the same store object, no new one needed.
* The shared circuit state stores take their arguments the way the saga
  stores do (any path-like for SQLite; checked types for PostgreSQL).
* Saga ids: every store entry point refuses, with a ``ValueError`` that shows
  the id cut short, an id that no store can key a saga by (not a str, empty,
  longer than ``MAX_SAGA_ID_LENGTH``, a lone surrogate, a NUL), so no raw
  driver error escapes; no error message carries an id at full length.

The PostgreSQL cases run against the throwaway server of ``conftest_pg.py``
(skipped without psycopg, except under CI).
"""

from __future__ import annotations

import math
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from fallback_saga.breaker import CircuitState
from fallback_saga.errors import SagaNotFound, SagaStoreError
from fallback_saga.shared_state import SQLiteCircuitStateStore
from fallback_saga.status import SagaStatus, StepStatus
from fallback_saga.store._common import MAX_SAGA_ID_LENGTH, check_saga_id, short_repr
from fallback_saga.store.base import Lease
from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore
from fallback_saga.store.sqlite import SCHEMA_VERSION, SQLiteSagaStore
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "sqlite-writer-process", "postgres"])
async def durable_store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[Any]:
    if request.param.startswith("sqlite"):
        writer = "process" if request.param == "sqlite-writer-process" else "thread"
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer=writer) as store:
            yield store
        return
    conninfo = request.getfixturevalue("pg_conninfo")  # skips without PostgreSQL
    schema = request.getfixturevalue("pg_schema")
    from fallback_saga.store.postgres import PostgresSagaStore

    async with PostgresSagaStore(conninfo, schema=schema) as store:
        yield store


async def new_saga(store: Any, saga_id: str) -> None:
    await store.create(saga_id, "OrderSaga", "fp", {"order_id": 1}, [entry(0, "a")])


# --------------------------------------------------------------------------- a locked file


@pytest.fixture
def locked_file(tmp_path: pathlib.Path) -> Any:
    """A fresh database file that another connection holds ``BEGIN IMMEDIATE``
    on; ``locked_file.release()`` lets go."""

    class Lock:
        path = tmp_path / "sagas.db"

        def __init__(self) -> None:
            self.conn = sqlite3.connect(self.path, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")

        def release(self) -> None:
            self.conn.execute("ROLLBACK")

    lock = Lock()
    yield lock
    lock.conn.close()


async def test_a_store_whose_open_met_a_locked_file_opens_again_at_the_next_write(
    locked_file: Any,
) -> None:
    store = SQLiteSagaStore(locked_file.path, busy_timeout=0.05)
    try:
        with pytest.raises(SagaStoreError, match="locked"):
            await new_saga(store, "saga-1")  # the open meets the lock past busy_timeout
        locked_file.release()
        await new_saga(store, "saga-2")  # the same store object, no restart
        assert (await store.load("saga-2")).saga_name == "OrderSaga"
        with pytest.raises(SagaNotFound):
            await store.load("saga-1")  # the failed write wrote nothing
    finally:
        await store.close()


async def test_a_store_whose_first_read_met_a_locked_unmigrated_file_reads_at_the_next_call(
    locked_file: Any,
) -> None:
    store = SQLiteSagaStore(locked_file.path, busy_timeout=0.05)
    try:
        # The reader migrates a file that has no schema (it never reads tables
        # that are not there): the lock stops that once.
        with pytest.raises(SagaStoreError, match="locked"):
            await store.load("saga-1")
        with pytest.raises(SagaStoreError, match="locked"):
            await store.list_sagas()  # still locked: still a clear error
        locked_file.release()
        with pytest.raises(SagaNotFound):
            await store.load("saga-1")
        assert await store.list_sagas() == []
        await new_saga(store, "saga-1")
        assert (await store.load("saga-1")).status is SagaStatus.RUNNING
    finally:
        await store.close()


async def test_a_store_opened_explicitly_retries_after_a_lock(locked_file: Any) -> None:
    store = SQLiteSagaStore(locked_file.path, busy_timeout=0.05)
    try:
        with pytest.raises(SagaStoreError, match="locked"):
            await store.open()
        locked_file.release()
        await store.open()
        await new_saga(store, "saga-1")
    finally:
        await store.close()


async def test_the_reader_never_reads_an_unmigrated_file(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "sagas.db"
    store = SQLiteSagaStore(db)
    try:
        # A read as the very first request: the reader migrates the new file
        # itself rather than wait for a write that may never come.
        with pytest.raises(SagaNotFound):
            await store.load("saga-1")
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        await store.close()


# --------------------------------------------------------------------------- circuit state stores


def test_sqlite_circuit_state_store_accepts_any_path_like(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "breakers.db"
    store = SQLiteCircuitStateStore(path)
    try:
        assert store.path == str(path)
        row = store.compare_and_set("payments", 0, CircuitState.OPEN, 10.0, None)
        assert row is not None
        assert row.version == 1
        assert SQLiteCircuitStateStore(str(path).encode()).read("payments") == row
    finally:
        store.close()


@pytest.mark.parametrize("path", [":memory:", "", pathlib.PurePath(":memory:")])
def test_sqlite_circuit_state_store_refuses_a_database_it_cannot_share(path: Any) -> None:
    with pytest.raises(ValueError, match=":memory:"):
        SQLiteCircuitStateStore(path)


@pytest.mark.parametrize("path", [None, 42])
def test_sqlite_circuit_state_store_refuses_what_is_not_a_path(path: Any) -> None:
    with pytest.raises(TypeError):
        SQLiteCircuitStateStore(path)


# 10**400: an int too large for a float was taken, then float() of it an
# OverflowError naming nothing.
@pytest.mark.parametrize(
    "busy_timeout", [-1, math.nan, math.inf, True, "1", pytest.param(10**400, id="beyond-a-float")]
)
def test_sqlite_circuit_state_store_refuses_bad_busy_timeouts(
    tmp_path: pathlib.Path, busy_timeout: Any
) -> None:
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteCircuitStateStore(tmp_path / "breakers.db", busy_timeout=busy_timeout)


def test_sqlite_saga_store_takes_a_bytes_path_as_text(tmp_path: pathlib.Path) -> None:
    assert SQLiteSagaStore(str(tmp_path / "s.db").encode()).path == str(tmp_path / "s.db")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"conninfo": pathlib.Path("db")}, TypeError),
        ({"conninfo": b"dbname=x"}, TypeError),
        ({"schema": 5}, ValueError),
        ({"schema": "a; DROP TABLE x"}, ValueError),
        ({"connect_timeout": "2"}, ValueError),
        ({"connect_timeout": True}, ValueError),
        ({"statement_timeout": math.nan}, ValueError),
        ({"statement_timeout": 0}, ValueError),
        # An int too large for a float was an OverflowError naming nothing.
        ({"connect_timeout": 10**400}, ValueError),
    ],
)
def test_postgres_circuit_state_store_checks_its_arguments(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"conninfo": "dbname=x", **kwargs}
    conninfo = arguments.pop("conninfo")
    with pytest.raises(error):
        PostgresCircuitStateStore(conninfo, **arguments)


# --------------------------------------------------------------------------- saga ids

BAD_IDS: list[tuple[object, str]] = [
    (None, "must be a str"),
    (42, "must be a str"),
    (b"saga-1", "must be a str"),
    ("", "must not be empty"),
    ("x" * (MAX_SAGA_ID_LENGTH + 1), f"at most {MAX_SAGA_ID_LENGTH} characters"),
    ("y" * 1_000_000, f"at most {MAX_SAGA_ID_LENGTH} characters"),
    ("a\ud800b", "lone surrogate"),
    ("a\x00b", "NUL"),
]


@pytest.mark.parametrize(
    "saga_id", ["saga-1", "3f2a9c1e4b5d4e6f", "commande-été-№5", "x" * MAX_SAGA_ID_LENGTH, "🙂"]
)
def test_check_saga_id_accepts_every_id_a_store_can_key_a_saga_by(saga_id: str) -> None:
    assert check_saga_id(saga_id) == saga_id


def test_check_saga_id_gives_a_plain_str_for_a_str_subclass() -> None:
    class Tagged(str):
        pass

    checked = check_saga_id(Tagged("saga-1"))
    assert type(checked) is str
    assert checked == "saga-1"


@pytest.mark.parametrize(("saga_id", "reason"), BAD_IDS, ids=lambda v: short_repr(v, 20))
def test_check_saga_id_refuses_what_no_store_can_key_a_saga_by(
    saga_id: object, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        check_saga_id(saga_id)
    assert len(str(caught.value)) < 200  # the id is shown cut short


def test_short_repr_escapes_and_cuts() -> None:
    assert short_repr("a\x1b[2Jb") == "'a\\x1b[2Jb'"
    long = short_repr("z" * 1_000_000)
    assert len(long) == 80
    assert long.endswith("…")
    assert short_repr("z" * 1_000_000, limit=10) == "'zzzzzzzz…"


def _entry_points(store: Any, saga_id: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
    lease = Lease(saga_id, "worker-1", 1, 0.0)
    points: dict[str, Callable[[], Awaitable[Any]]] = {
        "create": lambda: store.create(saga_id, "OrderSaga", "fp", {}, [entry(0, "a")]),
        "append": lambda: store.append(saga_id, [entry(0, "a")], status=SagaStatus.RUNNING),
        "load": lambda: store.load(saga_id),
        "claim_saga": lambda: store.claim_saga(saga_id, owner="worker-1", lease_seconds=10),
        "renew": lambda: store.renew(lease, 10),
        "release": lambda: store.release(lease),
    }
    if hasattr(store, "hand_off"):
        points["hand_off"] = lambda: store.hand_off(lease)
    return points


@pytest.mark.parametrize(("saga_id", "reason"), BAD_IDS, ids=lambda v: short_repr(v, 20))
async def test_every_store_entry_point_refuses_a_bad_saga_id_with_a_value_error(
    durable_store: Any, saga_id: object, reason: str
) -> None:
    for name, call in _entry_points(durable_store, saga_id).items():
        with pytest.raises(ValueError, match=reason) as caught:
            await call()
        assert len(str(caught.value)) < 200, name
    assert await durable_store.list_sagas() == []  # nothing was written


@pytest.mark.parametrize("owner", ["", "w\x00", "w\udc80", 7])
async def test_a_lease_owner_no_store_can_hold_is_refused(durable_store: Any, owner: Any) -> None:
    await new_saga(durable_store, "saga-1")
    with pytest.raises(ValueError, match="owner"):
        await durable_store.claim_saga("saga-1", owner=owner, lease_seconds=10)
    with pytest.raises(ValueError, match="owner"):
        await durable_store.claim(owner=owner, lease_seconds=10, older_than=-1, limit=10)


async def test_the_longest_saga_id_works_and_messages_show_it_cut_short(
    durable_store: Any,
) -> None:
    longest = "L" * MAX_SAGA_ID_LENGTH
    await new_saga(durable_store, longest)
    assert (await durable_store.load(longest)).saga_id == longest
    other = "M" * MAX_SAGA_ID_LENGTH
    messages = []
    for call in (
        lambda: durable_store.load(other),  # SagaNotFound
        lambda: new_saga(durable_store, longest),  # SagaAlreadyExists
        lambda: durable_store.create(other, "OrderSaga", "fp", {"x": math.nan}, []),
        lambda: durable_store.append(longest, [], fence=Lease(other, "w", 1, 0.0)),
    ):
        with pytest.raises((SagaStoreError, ValueError)) as caught:
            await call()
        messages.append(str(caught.value))
    for message in messages:
        assert "L" * 100 not in message, message
        assert "M" * 100 not in message, message
        assert len(message) < 300, message


async def test_a_journaled_error_text_no_store_can_hold_is_kept_readable(
    durable_store: Any,
) -> None:
    """An exception's text is whatever the exception says: a NUL or a lone
    surrogate in it must not make the journal write fail."""
    await new_saga(durable_store, "saga-1")
    failed = entry(0, "a", StepStatus.FAILED, error="bad \x00 byte and \udc80 here")
    await durable_store.append("saga-1", [failed])
    error = (await durable_store.load("saga-1")).history[-1].error
    assert error is not None
    assert error.startswith("bad ")
    assert error.endswith(" here")
