"""Talking to PostgreSQL for the stores: the driver, imported on first need
(it is an optional extra), a query on any connection, and the connections
the server closed while they sat idle, found before they are used."""

from __future__ import annotations

import asyncio
import select
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ._common import POSTGRES_INSTALL_HINT

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]


_INSTALL_HINT: Final = POSTGRES_INSTALL_HINT

# The first statement of the store's transactions (the migration, the claim):
# they rely on READ COMMITTED (each statement sees what committed before it;
# a row locked by another is re-checked once it is free), and a server or a
# role may default to REPEATABLE READ or SERIALIZABLE, under which concurrent
# claimers failed with serialization errors most of the time.
_READ_COMMITTED: Final = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"

# The store's own pool gives up a reconnection after this many seconds
# (psycopg_pool's reconnect_timeout; its default is 300): see
# ``_wait_for_connection``. A server that is back is then used within about
# this long (twice at worst), whatever the outage lasted.
RECONNECT_TIMEOUT: Final = 0.5


def _driver() -> tuple[Any, Any]:
    """The psycopg and psycopg_pool modules, imported on first need."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as error:
        raise ImportError(
            f"PostgresSagaStore needs psycopg 3 and psycopg-pool: {_INSTALL_HINT} ({error})"
        ) from error
    return psycopg, psycopg_pool


async def _query(
    conn: AsyncConnection[Any],
    statement: str,
    params: Sequence[Any] | None = None,
    prepare: bool | None = None,
) -> Any:
    """Execute on a cursor that returns tuples, whatever row factory the
    connection (perhaps from the caller's pool) was given. Results in binary
    format: floats come back exactly, whatever ``extra_float_digits`` says.
    ``prepare``: psycopg's (``None``: prepared once it ran a few times)."""
    from psycopg.rows import tuple_row  # type: ignore[import-not-found, unused-ignore]

    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(statement, params, binary=True, prepare=prepare)
    return cursor


# --------------------------------------------------------------------------- connections


async def _getconn(pool: AsyncConnectionPool[Any]) -> AsyncConnection[Any]:
    """A connection from ``pool`` that the server has not closed while it
    sat idle (``idle_session_timeout``, a restart, a proxy's idle limit): a
    worker polling less often than that timeout failed every poll, once per
    dead connection. A closed one is handed back for the pool to replace.
    (A network that silently drops a connection is not seen here: that
    still fails once, as before.)"""
    conn: AsyncConnection[Any]
    for _ in range(pool.max_size):
        conn = await _wait_for_connection(pool)
        if not closed_by_server(conn):
            return conn
        await conn.close()
        await pool.putconn(conn)  # the pool discards a closed connection
    conn = await _wait_for_connection(pool)
    return conn


async def _wait_for_connection(pool: AsyncConnectionPool[Any]) -> AsyncConnection[Any]:
    """``pool.getconn()``, within the pool's ``timeout`` as before, but in
    turns of its ``reconnect_timeout`` when that is shorter (the store's own
    pool: ``RECONNECT_TIMEOUT``).

    Why: psycopg_pool retries a connection it could not make with a delay
    that doubles each time (1, 2, 4, 8 s...) until ``reconnect_timeout``,
    and makes no other meanwhile; a store that saw a server outage of 20 s
    waited up to 13 s more once the server was back (measured:
    benchmarks/pg_reconnect.py). With a short ``reconnect_timeout`` the pool
    gives those attempts up soon, and makes a connection afresh for a client
    that starts waiting; a client that waits in turns starts again each
    turn, so a server that is back serves it within a turn or two."""
    conn: AsyncConnection[Any]
    turn = getattr(pool, "reconnect_timeout", None)
    if not isinstance(turn, (int, float)) or not 0 < turn < pool.timeout:
        conn = await pool.getconn()
        return conn
    _, psycopg_pool = _driver()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + pool.timeout
    while True:
        left = deadline - loop.time()
        try:
            conn = await pool.getconn(timeout=min(turn, left))
        except psycopg_pool.PoolTimeout:
            if left <= turn:
                raise psycopg_pool.PoolTimeout(
                    f"couldn't get a connection after {pool.timeout:.2f} sec"
                ) from None
        else:
            return conn


def closed_by_server(conn: Any) -> bool:
    """Whether the server spoke on an idle connection (psycopg's, sync or
    async) of a store. It only does to end it (its FATAL message, then end
    of file), as nothing of the stores LISTENs on such a connection. One
    ``select`` call, no round trip: the hot path pays about a microsecond."""
    if conn.closed:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except Exception:  # no socket (psycopg: "the connection is lost"), or a bad one
        return True
    return bool(readable)
