"""A PostgreSQL store's own pool, closed when its event loop ends, or when
the store is dropped without ``close()``.

psycopg_pool's maintenance workers survive the cancellation ``asyncio.run``
ends with, and a loop that ended with the store open would wait for them
for ever. A store that opens its own pool (``_postgres_pool.PooledStore``)
starts ``close_pool_when_cancelled`` in a task of its own (named
``CLOSER``) and ``close_pool_at_loop_end``'s generator with it: whichever
the loop's end reaches closes the pool, once the other tasks are done.
A store dropped open (nobody closes it: freed at once, by reference
counting, as the SQLite store is) has its pool closed on the pool's loop by
``close_dropped_pool``, its finalizer, which then ends the closer.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    # Types only: the driver is an optional extra.
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "CLOSER",
    "close_dropped_pool",
    "close_pool_at_loop_end",
    "close_pool_when_cancelled",
]

CLOSER: Final = "fallback_saga-pool-closer"


async def close_pool_when_cancelled(pool: AsyncConnectionPool[Any]) -> None:
    """Wait until cancelled, then close ``pool`` (unless it is closed).

    ``asyncio.run`` (``asyncio.Runner``) ends by cancelling every task left,
    and waits for them all. psycopg_pool's maintenance workers count a
    ``CancelledError`` that lands in their work (a connection being added as
    the pool grows, or one replacing a broken connection) among the errors
    a worker survives, and go back to wait for more work: a loop that ended
    with the store open (a sync app's request that returned, a service's
    Ctrl-C) waited for ever. This task is cancelled with them, and closing
    the pool tells its workers to stop — once every other task is done: what
    the loop's end cancelled along with this one (a worker handing its sagas
    off, a saga unwinding) may still write through the pool.
    (``PostgresSagaStore.close`` closes the pool itself first.)"""
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        # (Only when cancelled: a task never cancelled — made while the loop
        # ended — is dropped with its loop, and must not wait in that.)
        if not pool.closed:
            await _after_the_rest()
            await pool.close()
        raise


async def close_pool_at_loop_end(pool: AsyncConnectionPool[Any]) -> AsyncGenerator[None, None]:
    """Closes ``pool`` (unless it is closed) when the loop's end closes this
    generator (``shutdown_asyncgens``, once the tasks it cancelled are done):
    a pool opened while the loop ended (by a write that its end cancelled,
    made before any task of the pool's was there to cancel) is closed too,
    its workers told to stop, instead of dropped with the loop."""
    try:
        yield
    finally:
        if not pool.closed:
            await pool.close()


def close_dropped_pool(
    loop: weakref.ref[asyncio.AbstractEventLoop],
    pool: weakref.ref[AsyncConnectionPool[Any]],
    closer: weakref.ref[asyncio.Task[None]],
) -> None:
    """The finalizer of a store freed with its own pool open (never closed):
    the pool closed on its loop — from whichever thread freed the store — and
    then the closer (``close_pool_when_cancelled``) cancelled, with nothing
    left to do, instead of freed pending. Quietly, as the SQLite store stops
    its threads: an app that drops its stores unclosed is told nothing by
    either. A closed loop runs nothing more: the pool's connections end as
    it is freed.

    Each held weakly: a finalizer's arguments are held by the finalizers'
    registry, which nothing clears, and each can hold the store — the
    closer, cut short as it waited for the other tasks (a second Ctrl-C),
    waits for the task that uses the store; the pool's queue of waiting
    clients holds their tasks — which the finalizer would then keep for the
    process's life. Freed by reference counting, the store still holds them
    as this runs (its attributes go after its finalizers), and they are
    handed to the loop; freed by the collector with the store, they are
    gone, and so is the pool."""
    running, own, pool_closer = loop(), pool(), closer()
    if running is None or own is None or own.closed or pool_closer is None:
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed
        running.call_soon_threadsafe(_close_soon, own, pool_closer)


# The closings of dropped stores' pools under way: a task only the loop
# knows may be freed pending.
_CLOSING: set[asyncio.Task[None]] = set()


def _close_soon(pool: AsyncConnectionPool[Any], closer: asyncio.Task[None]) -> None:
    task = asyncio.get_running_loop().create_task(_close_dropped(pool, closer), name=CLOSER)
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def _close_dropped(pool: AsyncConnectionPool[Any], closer: asyncio.Task[None]) -> None:
    try:
        await pool.close()
    finally:
        closer.cancel()  # the pool is closed first: it finds nothing to do


# The tasks of the stores' own pools (psycopg_pool names its scheduler and
# workers after the pool: ``name="fallback_saga"``, _postgres_own_pool.open_own_pool)
# and of their closers: never waited for by a closer (they would wait for
# each other).
_POOL_TASKS: Final = ("fallback_saga-worker-", "fallback_saga-scheduler", CLOSER)


async def _after_the_rest() -> None:
    """Return once every task of the loop is done but the pools' own."""
    me = asyncio.current_task()
    while rest := [
        task for task in asyncio.all_tasks()
        if task is not me and not task.get_name().startswith(_POOL_TASKS)
    ]:
        await asyncio.wait(rest)
