"""PostgresCircuitStateStore: shared circuit state for breakers on several machines.

Implements ``fallback_saga.shared_state.CircuitStateStore`` on one table,
``fallback_saga_breakers`` (created if missing, in ``schema`` if given), with
**synchronous** psycopg 3 connections in autocommit mode. Every statement is a
single parameterized statement; the compare-and-set is ``UPDATE … WHERE
version = %s RETURNING`` (or ``INSERT … ON CONFLICT DO NOTHING RETURNING`` for
the first row).

The breaker calls its store inline and rarely (a pull at most once per
``sync_interval``, a publish per transition), from whatever thread calls the
breaker, and that thread may be running an event loop: so the store bounds
every call *on the caller's side*. ``statement_timeout`` (server side) and
``connect_timeout`` do not help against a server that stops answering (a
frozen host or backend, a network partition): the socket just waits. So each
call runs on one of the store's worker threads, each with its own
connection, and the caller waits at most ``call_timeout`` (default
``connect_timeout + statement_timeout``) for it. A call that does not answer
in time raises ``TimeoutError`` (the breaker reports it and goes on with its
local state); its worker is abandoned and closes its connection once the
server lets go of it. A failed call drops its worker's connection too
(reconnected at the next call).

The workers are daemon threads, reused from call to call: there are as many as
calls were ever running at once (a breaker makes one store call at a time),
not one per thread that used the store, so threads that come and go leave no
connection behind. ``close()`` ends them and their connections. A forked
child starts its own workers.

The driver is imported lazily (``pip install "fallback-saga[postgres]"``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import weakref
from typing import Any

from ..given_numbers import number_given
from ..shared_state import SharedCircuit
from ..status import CircuitState
from ._dsn_secrets import dsn_secrets, scrub
from ._postgres_conn import closed_by_server

__all__ = ["PostgresCircuitStateStore"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_DDL_LOCK = 0x0FA1_1BAC_B8EA_0001  # advisory lock key for creating the table
# Duplicate key (a catalog's unique index), schema, table: another store
# created it while this one queued on _DDL_LOCK (see _connect).
_CREATED_MEANWHILE = frozenset({"23505", "42P06", "42P07"})


class PostgresCircuitStateStore:
    """Shared circuit state in PostgreSQL. ``conninfo`` is a libpq connection string.

    ``call_timeout`` bounds each call on the caller's side (connecting
    included), whatever the server does; default ``connect_timeout +
    statement_timeout``.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        call_timeout: float | None = None,
    ) -> None:
        if not isinstance(conninfo, str):
            raise TypeError(
                f"conninfo must be a libpq connection string, got {type(conninfo).__name__}"
            )
        if schema is not None and (
            not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema)
        ):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        given = {"connect_timeout": connect_timeout, "statement_timeout": statement_timeout}
        if call_timeout is not None:
            given["call_timeout"] = call_timeout
        timeouts = {
            label: number_given(label, value, least=0, above=True, unit="seconds")
            for label, value in given.items()
        }
        self.conninfo = conninfo
        self.schema = schema
        self.connect_timeout = timeouts["connect_timeout"]
        self.statement_timeout = timeouts["statement_timeout"]
        self.call_timeout = timeouts.get(
            "call_timeout", self.connect_timeout + self.statement_timeout
        )
        prefix = "" if schema is None else f'"{schema}".'
        self._table = f"{prefix}fallback_saga_breakers"
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # workers waiting for a call (guarded by _lock)
        self._pid = os.getpid()  # the process whose threads the workers are
        # The workers hold the store weakly: a store dropped without close()
        # ends its idle workers (and their connections) when it is collected.
        weakref.finalize(self, _stop_all, self._idle)
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresCircuitStateStore(schema={self.schema!r})"

    def _connect(self) -> Any:
        """A new connection with the table in place (on a worker thread).

        Made to work behind a pooler in transaction mode (PgBouncer): no
        startup ``options`` (refused by it), no prepared statement (each
        transaction may land on another server connection), and the
        ``statement_timeout`` set in each call's own transaction (``_call``)."""
        import psycopg  # type: ignore[import-not-found, unused-ignore]

        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                prepare_threshold=None,
                client_encoding="UTF8",
            )
        except psycopg.Error as error:
            # libpq quotes what it cannot parse, a password too: the breaker
            # logs this error, so it must not (and must not chain one that does).
            secrets = dsn_secrets(self.conninfo)
            shown = scrub(str(error), secrets)
            if shown == str(error):
                raise
            raise type(error)(shown) from None
        try:
            # The table's creator needs the DDL privileges; the others only
            # read and write it.
            if _call(conn, "SELECT to_regclass(%s)", (self._table,), self._timeout_ms)[0] is None:
                self._create_table(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def _timeout_ms(self) -> int:
        return max(1, round(self.statement_timeout * 1000))  # 0 would mean no timeout

    def _create_table(self, conn: Any) -> None:
        for attempt in range(3):
            try:
                # Concurrent CREATE ... IF NOT EXISTS can still collide: serialize.
                with conn.transaction():
                    # READ COMMITTED: see what a creator before us committed.
                    conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                    if self.schema is not None:
                        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._table} ("
                        "name TEXT PRIMARY KEY, state TEXT NOT NULL, version BIGINT NOT NULL, "
                        "open_until DOUBLE PRECISION NOT NULL, half_open_owner TEXT, "
                        "updated_at DOUBLE PRECISION NOT NULL)"
                    )
                return
            except Exception as error:
                # Created by another while we queued on the lock: this
                # session's catalog cache (not refreshed by an advisory lock)
                # missed it. The next transaction sees it.
                if getattr(error, "sqlstate", None) not in _CREATED_MEANWHILE or attempt == 2:
                    raise

    def _run(self, statement: str, params: tuple[Any, ...]) -> Any:
        """Run one statement on a worker; wait at most ``call_timeout``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the circuit state store is closed")
            if self._pid != os.getpid():
                # A forked child has none of its parent's threads: forget
                # them (not closing their connections, which are the parent's).
                self._pid = os.getpid()
                self._idle.clear()
            worker = self._idle.pop() if self._idle else _Worker(weakref.ref(self))
        job = _Job(statement, params)
        worker.submit(job)
        if not job.done.wait(self.call_timeout) and job.abandon():
            raise TimeoutError(
                f"the circuit state store did not answer within {self.call_timeout:g}s"
            )
        if job.error is not None:
            raise job.error
        return job.result

    def _finished(self, worker: _Worker, keep: bool) -> None:
        """A worker's call is over: back to the idle list, or let it end."""
        with self._lock:
            if keep and not self._closed:
                self._idle.append(worker)
                return
        worker.stop()

    def read(self, name: str) -> SharedCircuit | None:
        row = self._run(
            f"SELECT state, version, open_until, half_open_owner, updated_at "
            f"FROM {self._table} WHERE name = %s",
            (name,),
        )
        return None if row is None else _circuit(name, row)

    def compare_and_set(
        self,
        name: str,
        expected_version: int,
        new_state: CircuitState,
        open_until: float,
        half_open_owner: str | None,
    ) -> SharedCircuit | None:
        state = CircuitState(new_state).value
        returning = "RETURNING state, version, open_until, half_open_owner, updated_at"
        if expected_version == 0:
            row = self._run(
                f"INSERT INTO {self._table} "
                f"(name, state, version, open_until, half_open_owner, updated_at) "
                f"VALUES (%s, %s, 1, %s, %s, extract(epoch FROM clock_timestamp())) "
                f"ON CONFLICT (name) DO NOTHING {returning}",
                (name, state, open_until, half_open_owner),
            )
        else:
            row = self._run(
                f"UPDATE {self._table} SET state = %s, version = version + 1, "
                f"open_until = %s, half_open_owner = %s, "
                f"updated_at = extract(epoch FROM clock_timestamp()) "
                f"WHERE name = %s AND version = %s {returning}",
                (state, open_until, half_open_owner, name, expected_version),
            )
        return None if row is None else _circuit(name, row)

    def close(self) -> None:
        """End the workers and close their connections; a worker still waiting
        for the server closes its connection once it answers."""
        with self._lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
        for worker in idle:
            worker.stop()
        for worker in idle:
            worker.join(self.call_timeout)


class _Job:
    """One statement for a worker, and what came of it."""

    __slots__ = ("_lock", "abandoned", "done", "error", "params", "result", "statement")

    def __init__(self, statement: str, params: tuple[Any, ...]) -> None:
        self.statement = statement
        self.params = params
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.abandoned = False
        self._lock = threading.Lock()

    def abandon(self) -> bool:
        """The caller gives up: True unless the job finished meanwhile."""
        with self._lock:
            if self.done.is_set():
                return False
            self.abandoned = True
            return True

    def finish(self) -> bool:
        """Tell the caller; False if the caller had given up already."""
        with self._lock:
            self.done.set()
            return not self.abandoned


class _Worker:
    """A daemon thread that owns one connection and runs one job at a time."""

    def __init__(self, store: weakref.ref[PostgresCircuitStateStore]) -> None:
        self._store = store
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._loop, name="fallback_saga-breaker-store", daemon=True
        )
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        conn: Any = None
        try:
            while (job := self._jobs.get()) is not None:
                store = self._store()
                try:
                    if store is None:
                        raise RuntimeError("the circuit state store is gone")
                    if conn is not None and closed_by_server(conn):
                        # Ended while idle (idle_session_timeout, a restart):
                        # a new one rather than a failed call.
                        _close(conn)
                        conn = None
                    if conn is None:
                        conn = store._connect()
                    job.result = _call(conn, job.statement, job.params, store._timeout_ms)
                except BaseException as error:
                    # A broken connection is replaced at the next call.
                    job.error = error
                    _close(conn)
                    conn = None
                wanted = job.finish()
                if not wanted:
                    # The caller gave up on this connection: it may be stalled.
                    _close(conn)
                    conn = None
                if store is not None:
                    store._finished(self, keep=wanted)
                del store
                if not wanted:
                    return
        finally:
            _close(conn)


def _call(conn: Any, statement: str, params: tuple[Any, ...], timeout_ms: int) -> Any:
    """``statement``'s first row, in a transaction of its own: READ COMMITTED
    whatever the server's default (a compare-and-set that waited for another
    on its row re-checks the version instead of failing with a serialization
    error), and under a ``statement_timeout`` that set_config(..., true)
    undoes at its end, so nothing is left on a server connection a pooler
    gives to another client. Pipelined (one round trip) where libpq can (14
    and later)."""
    pipelined = conn.pipeline() if _pipelines() else contextlib.nullcontext()
    with pipelined, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{timeout_ms}ms",))
        cursor = conn.execute(statement, params)
    return cursor.fetchone()


def _pipelines() -> bool:
    import psycopg  # type: ignore[import-not-found, unused-ignore]

    return bool(psycopg.Pipeline.is_supported())


def _stop_all(workers: list[_Worker]) -> None:
    """End the idle workers of a store that was collected without ``close()``."""
    for worker in workers:
        worker.stop()


def _close(conn: Any) -> None:
    """Close ``conn`` if there is one (errors closing a broken one say nothing)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _circuit(name: str, row: Any) -> SharedCircuit:
    state, version, open_until, owner, updated_at = row
    return SharedCircuit(
        name, CircuitState(state), int(version), float(open_until), owner, float(updated_at)
    )
