"""PostgreSQL as it is deployed: a transaction-mode PgBouncer in front,
server settings of the kind operators set (idle timeouts, SERIALIZABLE by
default, a DML-only role, a SQL_ASCII database), and first starts that race
each other on a new schema.

Each holds a rule of the contract: no write is lost and every failure is a
clear error (S13), a row written comes back (S12/S14). The PgBouncer tests
skip where there is no ``pgbouncer`` binary (``pg_bouncer.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_pg import require_driver

from fallback_saga import Saga, SagaContext, SagaFailed, SagaStatus, StepStatus
from fallback_saga.errors import SagaStoreError
from fallback_saga.status import CircuitState

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402
from pg_bouncer import PgBouncerUnavailable, running_pgbouncer  # noqa: E402

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402
from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore  # noqa: E402


@dataclasses.dataclass
class Tally(SagaContext):
    n: int = 0
    note: str = ""


class One:
    async def act(self, ctx: Tally) -> None:
        ctx.n += 1

    async def compensate(self, ctx: Tally) -> None:
        ctx.n -= 1


class Two(One):
    pass


class Snowfall:
    async def act(self, ctx: Tally) -> None:
        raise RuntimeError("snow \u2603 on the line, \u00e9t\u00e9 \U0001d11e")

    async def compensate(self, ctx: Tally) -> None:
        pass


class TwoSteps(Saga[Tally]):
    steps = [One, Two]


class SnowSaga(Saga[Tally]):
    steps = [One, Two, Snowfall]


@pytest.fixture
def raw(pg_conninfo: str) -> Iterator[Any]:
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
def database(pg_cluster: Any, raw: Any) -> Iterator[Any]:
    """Makes databases of its own (dropped after): ``database(*settings,
    encoding=...)`` gives the conninfo of a new one with those ``ALTER
    DATABASE ... SET`` settings."""
    made: list[str] = []

    def make(*settings: str, encoding: str | None = None) -> str:
        name = f"d_{uuid.uuid4().hex[:12]}"
        how = (
            f" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            if encoding else ""
        )
        raw.execute(f'CREATE DATABASE "{name}"{how}')
        made.append(name)
        for setting in settings:
            raw.execute(f'ALTER DATABASE "{name}" SET {setting}')
        return str(pg_cluster.conninfo_for(name))

    yield make
    for name in made:
        raw.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def bouncer(pg_cluster: Any) -> Iterator[str]:
    """The conninfo of a transaction-mode PgBouncer before the test database."""
    try:
        with running_pgbouncer(pg_cluster) as conninfo:
            yield conninfo
    except PgBouncerUnavailable as error:
        pytest.skip(f"PgBouncer tests cannot run: {error}")


# --------------------------------------------------------------------------- PgBouncer


async def test_S13_behind_a_transaction_mode_pgbouncer_no_write_fails(
    bouncer: str, pg_schema: str
) -> None:
    """Three stores share PgBouncer's four server connections: with
    ``prepared_statements=False`` every statement works on whichever server
    connection it lands (a prepared statement lives on one only)."""
    stores = [
        PostgresSagaStore(bouncer, schema=pg_schema, prepared_statements=False, min_size=2)
        for _ in range(3)
    ]
    try:
        for store in stores:
            await store.open()

        async def rounds(store: PostgresSagaStore, tag: str) -> list[BaseException]:
            saga = TwoSteps(store=store)
            errors: list[BaseException] = []
            for round_ in range(12):
                outcomes = await asyncio.gather(
                    *(saga.run(Tally(), saga_id=f"{tag}-{round_}-{i}") for i in range(6)),
                    return_exceptions=True,
                )
                errors += [o for o in outcomes if isinstance(o, BaseException)]
                await store.load(f"{tag}-{round_}-0")
                # Nothing is due (a claim must not take the sagas in flight).
                assert await store.claim(owner=tag, lease_seconds=5, older_than=3600, limit=2) == []
            return errors

        found = await asyncio.gather(*(rounds(s, f"s{k}") for k, s in enumerate(stores)))
        assert [e for errors in found for e in errors] == []
        counts = await stores[0].count_sagas()
        assert counts == {("TwoSteps", SagaStatus.COMPLETED): 3 * 12 * 6}
    finally:
        for store in stores:
            await store.close()


async def test_S13_without_prepared_statements_nothing_is_prepared_on_the_server(
    pg_conninfo: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes the store work behind a pooler, checked without one: no
    statement is ever prepared, not even once the tables are big."""
    from fallback_saga.store import _postgres_pool

    monkeypatch.setattr(_postgres_pool, "_PREPARE_FROM", -2)  # "big" from the start
    async with PostgresSagaStore(
        pg_conninfo, schema=pg_schema, prepared_statements=False, min_size=1, max_size=1
    ) as store:
        saga = TwoSteps(store=store)
        for round_ in range(8):
            await asyncio.gather(*(saga.run(Tally(), saga_id=f"{round_}-{i}") for i in range(4)))
            await store.load(f"{round_}-0")
            await store.claim(owner="w", lease_seconds=5, older_than=3600, limit=2)
        assert store.pool is not None
        async with store.pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
            assert await cursor.fetchone() == (0,)


async def test_S13_a_prepared_statement_the_server_lost_is_a_clear_error(
    pg_conninfo: str, pg_schema: str
) -> None:
    """What a pooler does to prepared statements, done by hand: the message
    says what to set."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=1) as store:
        for _ in range(8):  # psycopg prepares a statement on its fifth run
            await store.list_sagas()
        assert store.pool is not None
        async with store.pool.connection() as conn:
            # Behind psycopg's back (it forgets its statements on a DEALLOCATE
            # it sees), as a pooler's other server connection would be.
            conn.pgconn.exec_(b"DEALLOCATE ALL")
        with pytest.raises(SagaStoreError, match="prepared_statements=False"):
            await store.list_sagas()


def test_S13_the_breaker_store_works_behind_a_transaction_mode_pgbouncer(
    bouncer: str, pg_schema: str
) -> None:
    """No startup ``options`` (PgBouncer refuses them), no prepared statement,
    and its ``statement_timeout`` still applies, to its own transaction."""
    stores = [PostgresCircuitStateStore(bouncer, schema=pg_schema) for _ in range(3)]
    try:
        version = 0
        for turn in range(30):
            store = stores[turn % 3]
            current = store.read("gate")
            assert (0 if current is None else current.version) == version
            state = CircuitState.OPEN if turn % 2 else CircuitState.CLOSED
            written = store.compare_and_set("gate", version, state, float(turn), None)
            assert written is not None
            assert written.version == version + 1
            version = written.version
        timeout = stores[0]._run("SELECT current_setting('statement_timeout')", ())
        assert timeout == ("2s",)
    finally:
        for store in stores:
            store.close()


# ------------------------------------------------------------ connections the server closed


async def _terminate_all_but(raw: Any, dbname: str) -> None:
    """End every other session of ``dbname`` (as idle_session_timeout, a
    server restart or a proxy does to idle pooled connections), and wait
    until they are gone."""
    ended = [
        pid for (pid, _) in raw.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() OFFSET 0) AS others",
            (dbname,),
        ).fetchall()
    ]
    for _ in range(1000):
        (left,) = raw.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,)
        ).fetchone()
        if left == 0:
            return
        await asyncio.sleep(0.01)  # polling a condition, not synchronizing by time
    raise AssertionError("the sessions did not end")


async def test_S13_pooled_connections_the_server_closed_while_idle_are_not_used(
    pg_cluster: Any, pg_schema: str, raw: Any
) -> None:
    """idle_session_timeout (or a restart, or a proxy) ends the pooled
    connections while the store is idle: the next claim, load and listing
    work, at once, on new connections, rather than failing once per dead
    connection (a worker polling less often than the timeout failed every
    poll)."""
    async with PostgresSagaStore(pg_cluster.conninfo, schema=pg_schema, min_size=3) as store:
        await TwoSteps(store=store).run(Tally(), saga_id="before")
        for _ in range(3):
            await _terminate_all_but(raw, pg_cluster.dbname)
            assert await store.claim(owner="w", lease_seconds=5, older_than=0, limit=5) == []
            assert (await store.load("before")).status is SagaStatus.COMPLETED
            assert len(await store.list_sagas()) == 1


async def test_S9_the_breaker_store_does_not_use_a_connection_the_server_closed(
    pg_cluster: Any, pg_schema: str, raw: Any
) -> None:
    store = PostgresCircuitStateStore(pg_cluster.conninfo, schema=pg_schema)
    try:
        assert store.compare_and_set("gate", 0, CircuitState.OPEN, 1.0, None) is not None
        for _ in range(3):
            await _terminate_all_but(raw, pg_cluster.dbname)
            circuit = store.read("gate")
            assert circuit is not None
            assert circuit.state is CircuitState.OPEN
    finally:
        store.close()


# --------------------------------------------------------------------------- server settings


async def test_S13_claims_work_when_the_server_defaults_to_serializable(database: Any) -> None:
    """The claim relies on READ COMMITTED (a row re-checked after a wait);
    under a SERIALIZABLE default concurrent claimers failed most of the time
    with serialization failures."""
    dsn = database("default_transaction_isolation = 'serializable'")
    stores = [PostgresSagaStore(dsn, min_size=1, max_size=2) for _ in range(5)]
    try:
        for store in stores:
            await store.open()
        await asyncio.gather(
            *(stores[0].create(f"r{i}", "TwoSteps", "fp", {"n": 0}, []) for i in range(150))
        )
        claimed: list[str] = []

        async def claimer(store: PostgresSagaStore, owner: str) -> None:
            for _ in range(8):
                leases = await store.claim(owner=owner, lease_seconds=60, older_than=0, limit=4)
                claimed.extend(lease.saga_id for lease in leases)

        await asyncio.gather(*(claimer(s, f"w{k}") for k, s in enumerate(stores)))
        assert len(claimed) == len(set(claimed)) == 150
    finally:
        for store in stores:
            await store.close()


async def test_S12_a_sql_ascii_database_gives_back_what_was_written(database: Any) -> None:
    """In a SQL_ASCII database the server does no conversion: text came back
    as bytes, and every saga read as corrupt (its failure could not even be
    journaled). The store talks UTF-8 to it."""
    dsn = database(encoding="SQL_ASCII")
    async with PostgresSagaStore(dsn) as store:
        saga = SnowSaga(store=store)
        with pytest.raises(SagaFailed) as failed:
            await saga.run(Tally(note="\u00e9t\u00e9 \u2603"), saga_id="s\u00e4g\u00e4")
        assert failed.value.status is SagaStatus.COMPENSATED
        record = await store.load("s\u00e4g\u00e4")
        assert record.status is SagaStatus.COMPENSATED
        assert record.context["note"] == "\u00e9t\u00e9 \u2603"
        # The error text, kept to ASCII (the server cannot turn JSON's \\u
        # escapes into SQL_ASCII): Python's escapes, legible.
        failure = [e for e in record.history if e.status is StepStatus.FAILED]
        assert failure[0].error == (
            "RuntimeError: snow \\u2603 on the line, \\xe9t\\xe9 \\U0001d11e"
        )
        assert [s.saga_id for s in await store.list_sagas()] == ["s\u00e4g\u00e4"]


# ------------------------------------------------------------ privileges, first starts


@pytest.fixture
def dml_only_role(pg_cluster: Any, raw: Any, database: Any) -> Iterator[tuple[str, str]]:
    """A database where PUBLIC may not create, and the conninfo of a role
    that may only read and write; yields (owner conninfo, role conninfo)."""
    owner = database()
    name = owner.split("dbname=")[1].split()[0]
    role = f"r_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM PUBLIC')
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    as_role = (
        f"host=127.0.0.1 port={pg_cluster.port} user={role} password=pw dbname={name}"
        " connect_timeout=10"
    )
    yield owner, as_role
    raw.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    raw.execute(f"DROP ROLE IF EXISTS {role}")


def test_S9_the_breaker_store_needs_no_create_privilege_once_its_table_exists(
    dml_only_role: tuple[str, str],
) -> None:
    owner, as_role = dml_only_role
    first = PostgresCircuitStateStore(as_role)
    try:
        # Not created yet, and this role may not: the server's refusal, as is.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            first.read("gate")
    finally:
        first.close()
    creator = PostgresCircuitStateStore(owner)
    try:
        creator.read("gate")  # the owner creates the table ...
    finally:
        creator.close()
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE ON public.fallback_saga_breakers TO "
            + as_role.split("user=")[1].split()[0]
        )
    store = PostgresCircuitStateStore(as_role)
    try:  # ... which is all this role needs
        written = store.compare_and_set("gate", 0, CircuitState.OPEN, 1.0, None)
        assert written is not None
        assert store.read("gate") == written
    finally:
        store.close()


async def _hold_the_lock_then_create(
    raw_dsn: str, lock_key: int, schema: str, waiters: int, start: Any
) -> Any:
    """Hold ``lock_key`` until ``waiters`` others queue behind it, then create
    ``schema`` and let them go: each then finds the schema made by another."""
    async with await psycopg.AsyncConnection.connect(raw_dsn, autocommit=True) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            started = start()
            for _ in range(1000):
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                row = await cursor.fetchone()
                assert row is not None
                if row[0] >= waiters:
                    break
                await asyncio.sleep(0.01)  # polling a condition
            else:
                raise AssertionError("the starters did not queue on the lock")
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'CREATE TABLE "{schema}".other_table (x int)')
        return await started


async def test_S13_first_starters_racing_on_a_new_schema_all_open(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Starters queued on the migration lock while another created the
    schema and its tables: each opens. On a session that had done some work
    before (here: a temporary table; behind PgBouncer: any reused server
    connection) PostgreSQL's cache of schema names is not refreshed by an
    advisory lock, and CREATE SCHEMA IF NOT EXISTS failed with a
    UniqueViolation: the store did not open."""
    import psycopg_pool

    from fallback_saga.store._postgres_schema import _Names

    pools = [
        psycopg_pool.AsyncConnectionPool(
            pg_conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        for _ in range(3)
    ]
    stores = [PostgresSagaStore(pool, schema=pg_schema) for pool in pools]
    try:
        for pool in pools:
            await pool.open(wait=True)
            async with pool.connection() as conn:
                await conn.execute("CREATE TEMP TABLE scratch (x int)")
        outcomes = await _hold_the_lock_then_create(
            pg_conninfo, _Names(pg_schema).lock_key, pg_schema, len(stores),
            lambda: asyncio.gather(*(s.open() for s in stores), return_exceptions=True),
        )
        assert outcomes == [None] * len(stores)
        await TwoSteps(store=stores[0]).run(Tally(), saga_id="one")
        assert (await stores[2].load("one")).status is SagaStatus.COMPLETED
    finally:
        for store in stores:
            await store.close()
        for pool in pools:
            await pool.close()


async def test_S9_breaker_stores_racing_on_a_new_schema_all_work(
    bouncer: str, pg_conninfo: str, pg_schema: str
) -> None:
    """As the saga store's first starters; through PgBouncer, whose server
    connections have done work before (a new session of our own would not
    show it)."""
    from fallback_saga.store import postgres_breaker

    stores = [PostgresCircuitStateStore(bouncer, schema=pg_schema) for _ in range(3)]
    try:
        outcomes = await _hold_the_lock_then_create(
            pg_conninfo, postgres_breaker._DDL_LOCK, pg_schema, len(stores),
            lambda: asyncio.gather(
                *(asyncio.to_thread(s.read, "gate") for s in stores), return_exceptions=True
            ),
        )
        assert outcomes == [None] * len(stores)
    finally:
        for store in stores:
            store.close()




def test_S9_the_breaker_store_compare_and_set_is_read_committed_whatever_the_default(
    database: Any,
) -> None:
    """A compare-and-set that waited for another transaction on its row
    re-checks the version (READ COMMITTED) rather than failing with a
    serialization error under a SERIALIZABLE default (the breaker then
    reported the store as failed instead of publishing)."""
    import threading
    import time

    dsn = database("default_transaction_isolation = 'serializable'")
    store = PostgresCircuitStateStore(dsn, call_timeout=30.0)
    try:
        first = store.compare_and_set("gate", 0, CircuitState.OPEN, 1.0, None)
        assert first is not None
        outcome: list[object] = []
        with psycopg.connect(dsn, autocommit=True) as other:
            with other.transaction():
                other.execute(
                    "UPDATE fallback_saga_breakers SET updated_at = updated_at WHERE name = 'gate'"
                )
                waiter = threading.Thread(
                    target=lambda: outcome.append(
                        store.compare_and_set("gate", 1, CircuitState.CLOSED, 0.0, None)
                    )
                )
                waiter.start()
                for _ in range(1000):  # until the compare-and-set waits for our row lock
                    (waiting,) = other.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    ).fetchone()
                    if waiting:
                        break
                    time.sleep(0.01)  # polling a condition
            waiter.join(30)
        assert len(outcome) == 1
        written = outcome[0]
        assert written is not None
        assert written.state is CircuitState.CLOSED  # type: ignore[attr-defined]
        assert written.version == 2  # type: ignore[attr-defined]
    finally:
        store.close()
