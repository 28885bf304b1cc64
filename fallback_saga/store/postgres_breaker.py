"""PostgresCircuitStateStore: shared circuit state for breakers on several machines.

Implements ``fallback_saga.shared_state.CircuitStateStore`` on one table,
``fallback_saga_breakers`` (created if missing, in ``schema`` if given), with
**synchronous** psycopg 3 connections: the breaker calls its store inline and
rarely (a pull at most once per ``sync_interval``, a publish per transition),
from whatever thread calls the breaker, so each thread gets its own autocommit
connection. Every statement is a single parameterized statement; the
compare-and-set is ``UPDATE … WHERE version = %s RETURNING`` (or ``INSERT …
ON CONFLICT DO NOTHING RETURNING`` for the first row).

Because those calls block the caller, the store bounds them: ``connect_timeout``
for connecting and ``statement_timeout`` for every statement. A failed call
drops the thread's connection (reconnected at the next call); the breaker
reports the error and goes on with its local state.

The driver is imported lazily (``pip install "fallback-saga[postgres]"``).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from ..shared_state import SharedCircuit
from ..status import CircuitState
from ._common import finite_seconds

__all__ = ["PostgresCircuitStateStore"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_DDL_LOCK = 0x0FA1_1BAC_B8EA_0001  # advisory lock key for creating the table


class PostgresCircuitStateStore:
    """Shared circuit state in PostgreSQL. ``conninfo`` is a libpq connection string."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
    ) -> None:
        if not isinstance(conninfo, str):
            raise TypeError(
                f"conninfo must be a libpq connection string, got {type(conninfo).__name__}"
            )
        if schema is not None and (
            not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema)
        ):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        timeouts = {
            label: finite_seconds(label, value)
            for label, value in (("connect_timeout", connect_timeout),
                                 ("statement_timeout", statement_timeout))
        }
        for label, seconds in timeouts.items():
            if seconds <= 0:
                raise ValueError(f"{label} must be seconds > 0, got {seconds!r}")
        self.conninfo = conninfo
        self.schema = schema
        self.connect_timeout = timeouts["connect_timeout"]
        self.statement_timeout = timeouts["statement_timeout"]
        prefix = "" if schema is None else f'"{schema}".'
        self._table = f"{prefix}fallback_saga_breakers"
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresCircuitStateStore(schema={self.schema!r})"

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise RuntimeError("the circuit state store is closed")
        import psycopg  # type: ignore[import-not-found, unused-ignore]

        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout)),
            # At least 1 ms: 0 would mean no timeout at all.
            options=f"-c statement_timeout={max(1, round(self.statement_timeout * 1000))}",
        )
        try:
            # Concurrent CREATE ... IF NOT EXISTS can still collide: serialize.
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                if self.schema is not None:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} ("
                    "name TEXT PRIMARY KEY, state TEXT NOT NULL, version BIGINT NOT NULL, "
                    "open_until DOUBLE PRECISION NOT NULL, half_open_owner TEXT, "
                    "updated_at DOUBLE PRECISION NOT NULL)"
                )
        except BaseException:
            conn.close()
            raise
        with self._all_lock:
            self._all.append(conn)
        self._local.conn = conn
        return conn

    def _run(self, statement: str, params: tuple[Any, ...]) -> Any:
        conn = self._connection()
        try:
            return conn.execute(statement, params).fetchone()
        except BaseException:
            # A broken connection is replaced at the next call.
            self._local.conn = None
            try:
                conn.close()
            finally:
                with self._all_lock:
                    if conn in self._all:
                        self._all.remove(conn)
            raise

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
        """Close every connection this store opened."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _circuit(name: str, row: Any) -> SharedCircuit:
    state, version, open_until, owner, updated_at = row
    return SharedCircuit(
        name, CircuitState(state), int(version), float(open_until), owner, float(updated_at)
    )
