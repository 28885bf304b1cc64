"""A PostgreSQL store's own pool, made from its conninfo and opened: a
direct connection first, on which the store gets ready (its schema
migrated), then a pool of autocommit connections that talk UTF-8, with the
store's ``synchronous_commit`` and a short ``reconnect_timeout``. (Who
holds it, and closes it: ``_postgres_pool.PooledStore``; how it is closed
when the event loop ends: ``_postgres_pool_closing``.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import SagaStoreError
from ._postgres_conn import RECONNECT_TIMEOUT, _driver

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]


async def open_own_pool(
    conninfo: str,
    *,
    min_size: int,
    max_size: int,
    connect_timeout: float,
    synchronous_commit: str,
    prepared_statements: bool,
    get_ready: Callable[[AsyncConnection[Any]], Awaitable[None]],
) -> AsyncConnectionPool[Any]:
    """The store's own pool, opened, once ``get_ready`` is done on a
    connection of its own."""
    psycopg, psycopg_pool = _driver()
    # A direct connection first: a bad conninfo fails at once with the
    # server's own words, not after a pool's retry timeout.
    try:
        async with asyncio.timeout(connect_timeout):
            conn = await psycopg.AsyncConnection.connect(
                conninfo, **connection_kwargs(prepared_statements)
            )
    except TimeoutError:
        raise SagaStoreError(
            f"cannot open the PostgreSQL saga store: no connection within "
            f"{connect_timeout:g} s"
        ) from None
    try:
        await get_ready(conn)
    finally:
        await conn.close()

    async def configure(conn: AsyncConnection[Any]) -> None:
        if synchronous_commit != "on":
            await conn.execute(
                "SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,)
            )

    pool: AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs=connection_kwargs(prepared_statements),
        configure=configure,
        open=False,
        name="fallback_saga",
        timeout=connect_timeout,
        # Reconnections given up soon, and made again for the next
        # request (``_wait_for_connection``): a server back from an
        # outage is used at once, not after a backoff as long as it.
        reconnect_timeout=min(RECONNECT_TIMEOUT, connect_timeout),
    )
    try:
        await pool.open(wait=min_size > 0, timeout=connect_timeout)
    except BaseException:
        await pool.close()
        raise
    return pool


def connection_kwargs(prepared_statements: bool) -> dict[str, Any]:
    """The arguments of the store's own connections."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        # Text travels as UTF-8 whatever the database's encoding: in a
        # SQL_ASCII database (no conversion by the server) text came
        # back as bytes, and every saga read as corrupt.
        "client_encoding": "UTF8",
    }
    if not prepared_statements:
        # No statement is ever prepared (behind a transaction-mode pooler).
        kwargs["prepare_threshold"] = None
    return kwargs
