"""PostgreSQL refusing a write, against a real, throwaway server: a write the
server answered with an error was rolled back, so the store says that
nothing of it was written (``SagaStoreError.nothing_written``); a write whose
connection was lost stays in doubt.

Faults injected, each for real: a trigger that raises on the journal's
tables (a plain error, or the server's disk_full), a CHECK constraint, a
deferred constraint trigger that refuses at COMMIT, another session's row
lock held past the store's ``lock_timeout`` or ``statement_timeout``, a
database made read-only (``default_transaction_read_only``), and
``pg_terminate_backend`` on the store's connection while its write waits
at the server.

What is promised (S13): a run stopped by a write the server refused is not
in doubt (``SagaInterrupted.in_doubt`` false), and its journal holds what
the caller was told; a creation refused says it was not written, and may be
run again; a lost connection is still in doubt. Each time ``recover()`` (or
a second run) finishes the saga, every step applied once — checked with a
participant ledger.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import RetryPolicy, SagaInterrupted, SagaStatus
from fallback_saga.errors import SagaStoreError
from fallback_saga.recovery import recover
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402
from pg_cluster import PostgresCluster  # noqa: E402

from fallback_saga.store import _postgres_purge  # noqa: E402
from fallback_saga.store import _postgres_sql as pg_sql  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

# Two tries: the second is made without reading the journal back first only
# if the first said that it wrote nothing.
TWO_TRIES = RetryPolicy(attempts=2, delay=0, jitter=0)
ONE_TRY = RetryPolicy(attempts=1, delay=0, jitter=0)

Ledger = list[tuple[str, str]]


def with_options(conninfo: str, **settings: str) -> str:
    """``conninfo`` whose sessions start with these server settings."""
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{conninfo} options='{options}'"


class Admin:
    """An autocommit session of the test's own, in the test's schema."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        cursor = await self.conn.execute(statement, params)
        return await cursor.fetchall() if cursor.description else []


@pytest.fixture
async def admin(pg_conninfo: str, pg_schema: str) -> AsyncIterator[Admin]:
    conn = await psycopg.AsyncConnection.connect(pg_conninfo, autocommit=True)
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
    await conn.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
    try:
        yield Admin(conn)
    finally:
        await conn.close()


@pytest.fixture
async def locker(pg_conninfo: str, pg_schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Another session (not autocommit): what it locks it holds until the
    test ends its transaction."""
    conn = await psycopg.AsyncConnection.connect(pg_conninfo)
    await conn.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
    await conn.commit()
    try:
        yield conn
    finally:
        await conn.close()


async def open_store(
    kind: str, conninfo: str, schema: str, pools: list[psycopg_pool.AsyncConnectionPool[Any]]
) -> PostgresSagaStore:
    """The store with its own pool (autocommit: a write is one statement,
    committed by the server as it ends), or with a given pool of ordinary
    connections (each write in a transaction the store COMMITs)."""
    if kind == "own":
        store = PostgresSagaStore(conninfo, schema=schema)
    else:
        pool = psycopg_pool.AsyncConnectionPool(conninfo, min_size=1, max_size=4, open=False)
        await pool.open(wait=True)
        pools.append(pool)
        store = PostgresSagaStore(pool, schema=schema)
    await store.open()
    return store


@pytest.fixture
async def pools() -> AsyncIterator[list[psycopg_pool.AsyncConnectionPool[Any]]]:
    made: list[psycopg_pool.AsyncConnectionPool[Any]] = []
    yield made
    for pool in made:
        await pool.close()


def history(record: Any) -> list[tuple[str, str, str]]:
    return [(e.step, e.action, e.status.value) for e in record.history]


# ------------------------------------------------------------------ refusals


# Each refusal: the store's session settings, and how S1's hook installs it
# and the test takes it away. It refuses S1's COMPLETED row (the write that
# follows S1's act), and nothing else.
_REFUSE_S1_COMPLETED = (
    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.step = 'S1' AND NEW.status = 'completed' THEN"
    " RAISE EXCEPTION 'the journal refuses this row'; END IF; RETURN NEW; END $$"
)
# The same row refused as a server whose disk is full refuses it
# (test_postgres_full_disk.py fills a real one, as root).
_REFUSE_S1_DISK_FULL = _REFUSE_S1_COMPLETED.replace(
    "RAISE EXCEPTION 'the journal refuses this row';",
    "RAISE EXCEPTION 'could not extend file \"base/5/16384\": No space left on device'"
    " USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';",
)


async def install(
    refusal: str, admin: Admin, locker: psycopg.AsyncConnection[Any], saga_id: str
) -> Callable[[], Awaitable[None]]:
    """Install ``refusal``; returns what takes it away."""
    if refusal in ("trigger", "disk_full"):
        await admin.run(_REFUSE_S1_COMPLETED if refusal == "trigger" else _REFUSE_S1_DISK_FULL)
        await admin.run("CREATE TRIGGER refuse BEFORE INSERT ON fallback_saga_steps"
                        " FOR EACH ROW EXECUTE FUNCTION refuse()")

        async def remove() -> None:
            await admin.run("DROP TRIGGER refuse ON fallback_saga_steps")
    elif refusal == "check":
        await admin.run("ALTER TABLE fallback_saga_steps ADD CONSTRAINT refuse"
                        " CHECK (NOT (step = 'S1' AND status = 'completed')) NOT VALID")

        async def remove() -> None:
            await admin.run("ALTER TABLE fallback_saga_steps DROP CONSTRAINT refuse")
    elif refusal == "deferred":
        # Checked at COMMIT: the server answers the COMMIT itself with the error.
        await admin.run(_REFUSE_S1_COMPLETED)
        await admin.run("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON fallback_saga_steps"
                        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()")

        async def remove() -> None:
            await admin.run("DROP TRIGGER refuse ON fallback_saga_steps")
    else:  # lock_timeout, statement_timeout: the saga's row, locked by another session
        await locker.execute(
            "SELECT 1 FROM fallback_saga_sagas WHERE saga_id = %s FOR UPDATE", (saga_id,)
        )

        async def remove() -> None:
            await locker.rollback()
    return remove


# The timeouts (ms) leave every other statement of the run far more time
# than it takes on a loaded machine: only the locked row's wait meets them.
REFUSALS = {
    "trigger": {},
    "disk_full": {},
    "check": {},
    "deferred": {},
    "lock_timeout": {"lock_timeout": "200"},
    "statement_timeout": {"statement_timeout": "1500"},
}
SQLSTATES = {
    "trigger": "P0001", "disk_full": "53100", "check": "23514", "deferred": "P0001",
    "lock_timeout": "55P03", "statement_timeout": "57014",
}


@pytest.mark.parametrize("kind", ["own", "transactional"])
@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_S13_a_journal_write_the_server_refuses_stops_the_run_not_in_doubt(
    pg_conninfo: str, pg_schema: str, admin: Admin, locker: psycopg.AsyncConnection[Any],
    pools: list[psycopg_pool.AsyncConnectionPool[Any]], refusal: str, kind: str,
) -> None:
    """The server refuses the write after S1's act (its statement, or its
    COMMIT: a deferred constraint), on both tries: the run stops with
    ``SagaInterrupted``, **not in doubt** (the server rolled the write
    back), and the error says that nothing of it was written. The journal
    holds what the caller was told; once the refusal is gone ``recover()``
    finishes the saga, S0 and S2 applied once."""
    ledger: Ledger = []
    removals: list[Callable[[], Awaitable[None]]] = []

    async def refuse_from_now_on(ctx: Ctx) -> None:
        if not removals:  # once: not again when recovery runs S1 again
            removals.append(await install(refusal, admin, locker, "s-1"))

    saga_class = ledger_saga(ledger, S1=refuse_from_now_on)
    conninfo = with_options(pg_conninfo, **REFUSALS[refusal]) if REFUSALS[refusal] else pg_conninfo
    store = await open_store(kind, conninfo, pg_schema, pools)
    try:
        saga = saga_class(store=store, journal_retry=TWO_TRIES)
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        interrupted = stopped.value
        assert interrupted.status is SagaStatus.RUNNING
        assert interrupted.in_doubt is False, interrupted
        assert isinstance(interrupted.error, SagaStoreError)
        assert interrupted.error.nothing_written is True
        assert "nothing of it was written" in str(interrupted.error), interrupted.error
        assert getattr(interrupted.error.__cause__, "sqlstate", None) == SQLSTATES[refusal]
        # A full disk says what to do about it; no other refusal says so.
        said_disk_full = "the disk holding the PostgreSQL server's data is full" in str(
            interrupted.error
        )
        assert said_disk_full is (refusal == "disk_full"), interrupted.error
        # The journal holds what the caller was told, S1's act included.
        record = await store.load("s-1")
        assert record.status is SagaStatus.RUNNING
        assert history(record) == [
            ("S0", "act", "started"), ("S0", "act", "completed"), ("S1", "act", "started"),
        ]
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]

        await removals[0]()
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        # S1's act ran again (its COMPLETED row never landed), S0 and S2 once.
        assert sorted(set(ledger)) == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["own", "transactional"])
async def test_S13_a_creation_the_server_refuses_was_not_written_and_may_run_again(
    pg_conninfo: str, pg_schema: str, admin: Admin,
    pools: list[psycopg_pool.AsyncConnectionPool[Any]], kind: str,
) -> None:
    """A trigger refuses the saga's row: the run stops before any step,
    saying that its creation was not written (``status`` None, not in
    doubt: no "if the write landed unseen"). Nothing of it is in the store;
    run again under the same id once the trigger is gone, it completes."""
    ledger: Ledger = []
    saga_class = ledger_saga(ledger)
    store = await open_store(kind, pg_conninfo, pg_schema, pools)
    try:
        await admin.run(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'no new sagas'; END $$")
        await admin.run("CREATE TRIGGER refuse BEFORE INSERT ON fallback_saga_sagas"
                        " FOR EACH ROW EXECUTE FUNCTION refuse()")
        saga = saga_class(store=store, journal_retry=TWO_TRIES)
        with pytest.raises(SagaInterrupted) as refused:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "its creation was not written" in str(refused.value), refused.value
        assert ledger == []
        assert await admin.run("SELECT count(*) FROM fallback_saga_sagas") == [(0,)]

        await admin.run("DROP TRIGGER refuse ON fallback_saga_sagas")
        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]
    finally:
        await store.close()


async def _blocked_backend(admin: Admin, pid_of_admin: int) -> int:
    """The pid of the session that waits for a lock the locker holds (the
    store's write), once there is one."""
    while True:
        rows = await admin.run(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> %s", (pid_of_admin,))
        if rows:
            return int(rows[0][0])
        await asyncio.sleep(0.01)  # polls the server's state; bounded by the test's timeout


async def test_S13_a_write_whose_connection_is_lost_stays_in_doubt(
    pg_conninfo: str, pg_schema: str, admin: Admin, locker: psycopg.AsyncConnection[Any],
) -> None:
    """The line must not be overdrawn: the write after S1's act waits at the
    server for another session's row lock, and its backend is terminated
    (``pg_terminate_backend``: FATAL, 57P01). The server said nothing of the
    write itself, so the run stops **in doubt**; the write did not land, and
    ``recover()`` finishes the saga, S0 and S2 once."""
    ledger: Ledger = []
    taken: list[bool] = []

    async def lock_the_row(ctx: Ctx) -> None:
        if not taken:
            taken.append(True)
            await locker.execute(
                "SELECT 1 FROM fallback_saga_sagas WHERE saga_id = 's-1' FOR UPDATE")

    saga_class = ledger_saga(ledger, S1=lock_the_row)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        saga = saga_class(store=store, journal_retry=ONE_TRY, journal_timeout=None)
        run = asyncio.create_task(saga.run(Ctx(order_id="1"), saga_id="s-1"))
        pid = await asyncio.wait_for(
            _blocked_backend(admin, admin.conn.info.backend_pid), timeout=30)
        assert await admin.run("SELECT pg_terminate_backend(%s, 10000)", (pid,)) == [(True,)]
        with pytest.raises(SagaInterrupted) as stopped:
            await asyncio.wait_for(run, timeout=30)
        interrupted = stopped.value
        assert interrupted.in_doubt is True, interrupted
        assert interrupted.status is SagaStatus.RUNNING
        assert getattr(interrupted.error, "nothing_written", False) is False
        assert "nothing of it was written" not in str(interrupted.error)
        assert ledger == [("s-1", "S0"), ("s-1", "S1")]

        await locker.rollback()
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["s-1"], report
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert ledger.count(("s-1", "S0")) == 1
        assert ledger.count(("s-1", "S2")) == 1


async def test_S13_a_write_that_commits_after_its_client_gave_up_is_reported_in_doubt(
    pg_conninfo: str, pg_schema: str, admin: Admin, locker: psycopg.AsyncConnection[Any],
    pools: list[psycopg_pool.AsyncConnectionPool[Any]],
) -> None:
    """The completion write (after S2's act) waits at the server for another
    session's row lock, and its client loses the connection (the client's
    side of the socket is shut down: the server, waiting on the lock, does
    not notice). The run reads the journal — the write is not there yet —
    and tries again, on a new connection whose ``lock_timeout`` the locked
    row meets: refused, "nothing of it was written"; the budget is spent.
    Then the lock goes, and the first transaction commits, COMPLETED. The
    caller must have been told that the write is in doubt, with the status
    it carried — never "certainly not written" — and the ledger holds each
    step once."""
    import os
    import socket

    ledger: Ledger = []
    connections: list[psycopg.AsyncConnection[Any]] = []
    impatient: list[bool] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        connections.append(conn)
        if impatient:  # the retry's connection: the locked row refuses it soon
            await conn.execute("SET lock_timeout = 200")

    async def lock_the_row(ctx: Ctx) -> None:
        await locker.execute("SELECT 1 FROM fallback_saga_sagas WHERE saga_id = 's-1' FOR UPDATE")

    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=1, open=False, configure=configure,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    pools.append(pool)
    saga_class = ledger_saga(ledger, S2=lock_the_row)
    async with PostgresSagaStore(pool, schema=pg_schema) as store:
        saga = saga_class(store=store, journal_retry=TWO_TRIES, journal_timeout=60)
        run = asyncio.create_task(saga.run(Ctx(order_id="1"), saga_id="s-1"))
        pid = await asyncio.wait_for(
            _blocked_backend(admin, admin.conn.info.backend_pid), timeout=30)
        (waiting,) = [conn for conn in connections if conn.info.backend_pid == pid]
        impatient.append(True)
        cut = socket.socket(fileno=os.dup(waiting.pgconn.socket))
        try:
            cut.shutdown(socket.SHUT_RDWR)  # the client's side only: the server waits on
        finally:
            cut.close()
        with pytest.raises(SagaInterrupted) as stopped:
            await asyncio.wait_for(run, timeout=30)
        await locker.rollback()  # the first try's transaction goes on, and commits
        await asyncio.wait_for(_ended(admin, pid), timeout=30)
        record = await store.load("s-1")
        assert record.status is SagaStatus.COMPLETED  # the first try landed
        interrupted = stopped.value
        told = {interrupted.status}
        if interrupted.in_doubt:
            told.add(interrupted.status_if_landed)
        assert record.status in told, interrupted
        assert interrupted.in_doubt is True, interrupted
        assert interrupted.status_if_landed is SagaStatus.COMPLETED
        assert sorted(ledger) == [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2")]


_GATE = 4242  # the advisory lock the gate below waits for


@pytest.mark.parametrize("gave_up", ["connection-lost", "cancelled"])
async def test_S10_S13_a_claim_that_commits_after_its_client_gave_up_is_given_back(
    pg_conninfo: str, pg_schema: str, admin: Admin,
    pools: list[psycopg_pool.AsyncConnectionPool[Any]], gave_up: str,
) -> None:
    """A recovery claim sends its COMMIT, and the server holds it (a
    deferred trigger waits for an advisory lock the test holds: as a slow
    fsync or a synchronous standby would); the claim's client loses the
    connection (its side of the socket shut down) and its caller gets an
    error, or the caller is cancelled (``shielding.claimed``'s grace ran
    out) and the cancel request comes too late (the gate ignores it) — no
    leases either way. Then the server commits the claim. The leases it took
    must not sit leased to nobody until they run out, nor count towards
    parking: the store gives them back by the claim's marker once that
    transaction has ended, and the next claim takes the saga at once."""
    connections: list[psycopg.AsyncConnection[Any]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        connections.append(conn)

    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2, open=False, configure=configure,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    pools.append(pool)
    store = PostgresSagaStore(pool, schema=pg_schema)
    try:
        await store.create("s-1", "S", "fp", {}, [entry(0, "a")])
        await _gate_commits(admin)
        claim = asyncio.create_task(
            store.claim(owner="w-1", lease_seconds=600, older_than=-1, limit=10))
        pid = await asyncio.wait_for(
            _blocked_backend(admin, admin.conn.info.backend_pid), timeout=30)
        await _lose_the_answer(claim, gave_up, pid, connections)
        await admin.run("SELECT pg_advisory_unlock(%s)", (_GATE,))  # the COMMIT goes on
        await asyncio.wait_for(_out_of_transaction(admin, pid), timeout=30)
    finally:
        await store.close()  # what the store gives back is given back by then
    owner, claims, fence = (await admin.run(
        "SELECT lease_owner, unreleased_claims, fence FROM fallback_saga_sagas"
        " WHERE saga_id = 's-1'"))[0]
    assert fence >= 1  # the claim did commit
    assert (owner, claims) == (None, 0)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as other:
        (lease,) = await other.claim(owner="w-2", lease_seconds=600, older_than=-1, limit=10)
    assert lease.saga_id == "s-1"


async def _blocked_backends(admin: Admin, pid_of_admin: int, count: int) -> None:
    """Return once ``count`` sessions wait for a lock."""
    while True:
        rows = await admin.run(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND pid <> %s", (pid_of_admin,))
        if len(rows) >= count:
            return
        await asyncio.sleep(0.01)  # polls the server's state; bounded by the test's timeout


async def _gate_commits(admin: Admin) -> None:
    """Hold every COMMIT that updated a saga until the test lets go of the
    advisory lock ``_GATE`` (a deferred trigger waits for it, ignoring
    cancel requests: as a slow fsync or a synchronous standby would)."""
    await admin.run(
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" LOOP BEGIN PERFORM pg_advisory_xact_lock({_GATE}); EXIT;"
        # Cancel requests that came too late (any number): the commit goes on.
        " EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP;"
        " RETURN NULL; END $$")
    await admin.run(
        "CREATE CONSTRAINT TRIGGER gate AFTER UPDATE ON fallback_saga_sagas"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate()")
    await admin.run("SELECT pg_advisory_lock(%s)", (_GATE,))


async def _lose_the_answer(
    claim: asyncio.Task[Any], gave_up: str, pid: int,
    connections: list[psycopg.AsyncConnection[Any]],
) -> None:
    """The claim in ``claim`` (its session ``pid`` waits at its COMMIT) gets
    no answer: its caller is cancelled, or its client loses the connection."""
    import os
    import socket

    if gave_up == "cancelled":
        claim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(claim, timeout=30)
        return
    (waiting,) = [conn for conn in connections if conn.info.backend_pid == pid]
    cut = socket.socket(fileno=os.dup(waiting.pgconn.socket))
    try:
        cut.shutdown(socket.SHUT_RDWR)  # the client's side only: the server waits on
    finally:
        cut.close()
    with pytest.raises(SagaStoreError) as failed:
        await asyncio.wait_for(claim, timeout=30)
    assert failed.value.nothing_written is False  # no answer: it may have landed


@pytest.mark.parametrize("gave_up", ["connection-lost", "cancelled"])
async def test_S10_S13_a_claim_by_id_that_commits_after_its_client_gave_up_is_given_back(
    pg_conninfo: str, pg_schema: str, admin: Admin,
    pools: list[psycopg_pool.AsyncConnectionPool[Any]], gave_up: str,
) -> None:
    """``claim_saga`` (``Saga.resume``, the CLI's ``resume ID``): its COMMIT
    is held at the server, and its answer never comes (the caller is
    cancelled, or its connection lost); then the server commits it. The
    lease it took must not keep the saga busy for a whole lease, for nobody
    who knows its token: it is given back once that transaction has ended,
    and an operator trying again finds the saga free."""
    connections: list[psycopg.AsyncConnection[Any]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        connections.append(conn)

    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2, open=False, configure=configure,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    pools.append(pool)
    store = PostgresSagaStore(pool, schema=pg_schema)
    try:
        await store.create("s-1", "S", "fp", {}, [entry(0, "a")])
        await _gate_commits(admin)
        claim = asyncio.create_task(store.claim_saga("s-1", owner="w-1", lease_seconds=600))
        pid = await asyncio.wait_for(
            _blocked_backend(admin, admin.conn.info.backend_pid), timeout=30)
        await _lose_the_answer(claim, gave_up, pid, connections)
        await admin.run("SELECT pg_advisory_unlock(%s)", (_GATE,))  # the COMMIT goes on
        await asyncio.wait_for(_out_of_transaction(admin, pid), timeout=30)
    finally:
        await store.close()  # what the store gives back is given back by then
    owner, fence, marker = (await admin.run(
        "SELECT lease_owner, fence, claim_marker FROM fallback_saga_sagas"
        " WHERE saga_id = 's-1'"))[0]
    assert (owner, marker) == (None, None)  # free, whatever the schedule
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as other:
        lease = await other.claim_saga("s-1", owner="operator", lease_seconds=600)
    assert lease.token == fence + 1
    if fence == 0 and gave_up == "cancelled":
        # The cancelled claim's transaction ended without committing (seen
        # once in a CI run on 3.12, under load; psycopg sends the server a
        # cancel request and closes the connection when the query outlives
        # it): nothing was taken, so there was nothing to give back — the
        # saga is free all the same (above). The case this test is about
        # did not happen on this schedule.
        pytest.skip("the cancelled claim never committed on this schedule")
    assert fence >= 1  # the claim did commit


@pytest.mark.parametrize("gave_up", ["connection-lost", "cancelled"])
async def test_S10_giving_back_a_claim_by_id_never_releases_a_later_claims_lease(
    pg_conninfo: str, pg_schema: str, admin: Admin,
    pools: list[psycopg_pool.AsyncConnectionPool[Any]], gave_up: str,
) -> None:
    """The give-back is by the claim's own marker: a later claim by the same
    store, queued for the saga's row before the give-back and taking the
    saga once the first claim's (already run out) lease is committed, keeps
    its lease — the give-back, which gets the row after it, finds the mark
    of the later claim, not its own. (A guard of the give-back: without it,
    nothing is given back at all.)"""
    connections: list[psycopg.AsyncConnection[Any]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        connections.append(conn)

    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=3, open=False, configure=configure,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    pools.append(pool)
    store = PostgresSagaStore(pool, schema=pg_schema)
    me = admin.conn.info.backend_pid
    try:
        await store.create("s-1", "S", "fp", {}, [entry(0, "a")])
        await _gate_commits(admin)
        first = asyncio.create_task(store.claim_saga("s-1", owner="w-1", lease_seconds=-1))
        pid = await asyncio.wait_for(_blocked_backend(admin, me), timeout=30)
        later = asyncio.create_task(store.claim_saga("s-1", owner="w-2", lease_seconds=600))
        # The later claim waits for the row, queued before any give-back.
        await asyncio.wait_for(_blocked_backends(admin, me, 2), timeout=30)
        await _lose_the_answer(first, gave_up, pid, connections)
        await admin.run("SELECT pg_advisory_unlock(%s)", (_GATE,))  # the COMMITs go on
        lease = await asyncio.wait_for(later, timeout=30)
        await asyncio.wait_for(_out_of_transaction(admin, pid), timeout=30)
    finally:
        await store.close()  # what the store gives back is given back by then
    owner, fence = (await admin.run(
        "SELECT lease_owner, fence FROM fallback_saga_sagas WHERE saga_id = 's-1'"))[0]
    assert (owner, fence) == ("w-2", lease.token)


async def _out_of_transaction(admin: Admin, pid: int) -> None:
    """Return once the session ``pid`` is gone, or in no transaction (its
    connection may live on in the pool)."""
    while True:
        if not await admin.run("SELECT 1 FROM pg_stat_activity WHERE pid = %s"
                               " AND xact_start IS NOT NULL", (pid,)):
            return
        await asyncio.sleep(0.01)  # polls the server's state; bounded by the test's timeout


async def _ended(admin: Admin, pid: int) -> None:
    """Return once the session ``pid`` is gone."""
    while True:
        if not await admin.run("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)):
            return
        await asyncio.sleep(0.01)  # polls the server's state; bounded by the test's timeout


# ------------------------------------------------------------------ group commit


@pytest.mark.parametrize("refusal", ["trigger", "deferred"])
@pytest.mark.parametrize("pipelined", [False, True])
async def test_S13_a_refused_write_of_a_group_is_retried_alone_and_says_nothing_was_written(
    pg_conninfo: str, pg_schema: str, admin: Admin, refusal: str, pipelined: bool
) -> None:
    """Writes submitted together go as one group (one statement; or, with a
    saga twice in it, a pipelined transaction). One of them the server
    refuses (at its statement, or at COMMIT): the group is rolled back, each
    write retried alone, and only the culprit fails — saying that nothing of
    it was written. The others land."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        ids = [f"g-{n}" for n in range(5)]
        for saga_id in ids:
            await store.create(saga_id, "G", "fp", {}, [entry(0, "a")])
        await admin.run(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.saga_id = 'g-3' THEN RAISE EXCEPTION 'not g-3'; END IF;"
            " RETURN NEW; END $$")
        when = ("BEFORE INSERT" if refusal == "trigger"
                else "AFTER INSERT")
        constraint = "CONSTRAINT " if refusal == "deferred" else ""
        deferred = " DEFERRABLE INITIALLY DEFERRED" if refusal == "deferred" else ""
        await admin.run(f"CREATE {constraint}TRIGGER refuse {when} ON fallback_saga_steps"
                        f"{deferred} FOR EACH ROW EXECUTE FUNCTION refuse()")
        writes = [(saga_id, 1) for saga_id in ids]
        if pipelined:
            writes.append(("g-1", 2))  # g-1 again: a second statement in the group
        futures = [
            store.submit_append(saga_id, [entry(1, "b")] if seq == 1 else [entry(2, "c")],
                                None, None, None, seq)
            for saga_id, seq in writes
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert store.stats.largest_group >= 2, store.stats  # a group was sent
        for (saga_id, _), outcome in zip(writes, outcomes, strict=True):
            if saga_id == "g-3":
                assert isinstance(outcome, SagaStoreError), outcome
                assert outcome.nothing_written is True, outcome
                assert "nothing of it was written" in str(outcome)
            else:
                assert outcome is None, (saga_id, outcome)
        lengths = {saga_id: len((await store.load(saga_id)).history) for saga_id in ids}
        assert lengths == {"g-0": 2, "g-1": 3 if pipelined else 2, "g-2": 2, "g-3": 1,
                           "g-4": 2}


# ------------------------------------------------------------------ a read-only database


@pytest.fixture
def read_only_db(pg_cluster: PostgresCluster) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A database of the test's own (no other test sees it read-only), and
    what makes it read-only, or not, for the sessions that start after."""
    name = f"ro_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(name)

    def read_only(on: bool) -> None:
        value = "on" if on else "off"
        pg_cluster.psql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')

    try:
        yield pg_cluster.conninfo_for(name), read_only
    finally:
        pg_cluster.psql(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_S13_a_read_only_database_refuses_every_write_and_says_nothing_was_written(
    read_only_db: tuple[str, Callable[[bool], None]],
) -> None:
    """The database turns read-only (a failover to a standby, an operator's
    ``default_transaction_read_only``): every write — a creation, a claim,
    a lease by id, a renewal, a release, a deferral, a hand-off, a purge —
    is refused with 25006,
    and says that nothing of it was written; reads go on. Once it is
    writable again, the saga refused at its creation runs under the same id,
    and the interrupted one is recovered."""
    conninfo, read_only = read_only_db
    ledger: Ledger = []
    saga_class = ledger_saga(ledger)
    async with PostgresSagaStore(conninfo) as store:
        # "old": a saga of this class left RUNNING after its first STARTED row.
        await saga_class(store=store).run(Ctx(order_id="0"), saga_id="tmp")
        tmp = await store.load("tmp")
        await store.create("old", tmp.saga_name, tmp.fingerprint,
                           {"order_id": "0", "done": 0}, [entry(0, "S0")])
        ledger.clear()
        await store.create("done", "X", "fp", {}, [], status=SagaStatus.COMPLETED)
        lease = await store.claim_saga("old", owner="w", lease_seconds=60)
    read_only(True)
    async with PostgresSagaStore(conninfo) as store:  # its sessions start read-only
        saga = saga_class(store=store, journal_retry=TWO_TRIES)
        with pytest.raises(SagaInterrupted) as refused:
            await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert refused.value.status is None
        assert refused.value.in_doubt is False, refused.value
        assert "its creation was not written" in str(refused.value)
        writes: dict[str, Callable[[], Awaitable[Any]]] = {
            "claim": lambda: store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=5),
            "claim_saga": lambda: store.claim_saga("done", owner="w2", lease_seconds=60),
            "renew": lambda: store.renew(lease, 60),
            "release": lambda: store.release(lease),
            "defer": lambda: store.defer(lease, 60),
            "hand_off": lambda: store.hand_off(lease),
            "purge": lambda: store.purge(older_than=-1),
        }
        for name, write in writes.items():
            with pytest.raises(SagaStoreError) as failed:
                await write()
            assert failed.value.nothing_written is True, (name, failed.value)
            assert getattr(failed.value.__cause__, "sqlstate", None) == "25006", name
            assert "nothing of it was written" in str(failed.value), name
        assert (await store.load("old")).status is SagaStatus.RUNNING  # reads go on
        assert ledger == []
    read_only(False)
    async with PostgresSagaStore(conninfo) as store:
        saga = saga_class(store=store, journal_retry=TWO_TRIES)
        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert (await store.lease_state("old")).token == lease.token  # no claim landed
        await store.release(lease)
        report = await recover(store, [saga_class], older_than=0)
        assert report.resumed == ["old"], report
        assert (await store.load("old")).status is SagaStatus.COMPLETED
        assert sorted(ledger) == sorted(
            [("s-1", "S0"), ("s-1", "S1"), ("s-1", "S2"), ("old", "S0"), ("old", "S1"),
             ("old", "S2")])


# ------------------------------------------------------------------ purge


async def test_S13_a_purge_refused_after_earlier_batches_says_they_stay_deleted(
    pg_conninfo: str, pg_schema: str, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge goes in batches, each its own transaction. The server refuses
    a batch (a trigger): if it was the first, nothing of the purge was
    written, and the error says so; after batches that committed, it is
    not "nothing written" — the error says how many sagas stay deleted."""
    monkeypatch.setattr(_postgres_purge, "PURGE_BATCH", 1)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        for saga_id in ("p-1", "p-2", "p-3"):
            await store.create(saga_id, "P", "fp", {}, [], status=SagaStatus.COMPLETED)
        await admin.run(
            "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF OLD.saga_id = (SELECT keep FROM \"{pg_schema}\".keeping) THEN"
            " RAISE EXCEPTION 'kept'; END IF; RETURN OLD; END $$")
        await admin.run("CREATE TABLE keeping (keep text)")
        await admin.run("INSERT INTO keeping VALUES ('p-1')")
        await admin.run("CREATE TRIGGER keep BEFORE DELETE ON fallback_saga_sagas"
                        " FOR EACH ROW EXECUTE FUNCTION keep()")
        with pytest.raises(SagaStoreError) as first:
            await store.purge(older_than=-1)
        assert first.value.nothing_written is True, first.value
        assert "kept" in str(first.value), first.value
        assert len(await store.list_sagas()) == 3

        await admin.run("UPDATE keeping SET keep = 'p-2'")
        with pytest.raises(SagaStoreError) as later:
            await store.purge(older_than=-1)
        assert later.value.nothing_written is False, later.value
        assert "kept" in str(later.value), later.value
        assert "earlier batches deleted 1 saga(s)" in str(later.value), later.value
        assert [s.saga_id for s in await store.list_sagas()] == ["p-3", "p-2"]


# ------------------------------------------------------------------ what counts as refused


class _Diag:
    def __init__(self, severity: str | None) -> None:
        self.severity_nonlocalized = severity


class _ServerError(Exception):
    """An error as the server reports it: a SQLSTATE and a severity."""

    def __init__(self, sqlstate: str | None, severity: str | None) -> None:
        super().__init__(f"{sqlstate} {severity}")
        self.sqlstate = sqlstate
        self.diag = _Diag(severity)


@pytest.mark.parametrize(
    ("sqlstate", "severity", "in_doubt"),
    [
        ("40001", "ERROR", False),  # serialization failure (at COMMIT too): rolled back
        ("57014", "ERROR", False),  # statement_timeout, a cancel request
        ("53100", "ERROR", False),  # disk full, reported as an ERROR: rolled back
        ("25P03", "FATAL", True),  # the session ended: said by the severity
        ("XX000", "PANIC", True),  # an error after the commit record is a PANIC
        ("XX000", "ERROR", True),  # internal errors: kept in doubt
        ("58030", "ERROR", True),  # I/O errors: kept in doubt
        ("40001", None, True),  # no severity: not the server's answer (psycopg's own)
    ],
)
def test_S13_only_an_error_the_server_answered_with_says_nothing_was_written(
    sqlstate: str, severity: str | None, in_doubt: bool
) -> None:
    assert pg_sql._commit_in_doubt(_ServerError(sqlstate, severity)) is in_doubt


@pytest.mark.parametrize("grouped", [False, True])
async def test_S13_a_write_whose_text_utf8_cannot_encode_was_never_sent(
    pg_conninfo: str, pg_schema: str, grouped: bool
) -> None:
    """A saga name holding a lone surrogate cannot travel as UTF-8: the
    driver refuses the parameter before anything is sent (alone, or as the
    lone retry of a group), so the error says that nothing was written."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        names = ["ok-0", "bad\ud800", "ok-1"] if grouped else ["bad\ud800"]
        futures = [
            store.submit_create(f"u-{n}", name, "fp", {}, [entry(0, "a")], SagaStatus.RUNNING)
            for n, name in enumerate(names)
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert (store.stats.largest_group >= 2) is grouped, store.stats
        for name, outcome in zip(names, outcomes, strict=True):
            if name.startswith("bad"):
                assert isinstance(outcome, SagaStoreError), outcome
                assert outcome.nothing_written is True, outcome
                assert "never sent: nothing of it was written" in str(outcome), outcome
            else:
                assert outcome is None, outcome
        assert len(await store.list_sagas()) == len(names) - 1
