"""The PostgreSQL saga store's pool and its life: the constructor's checks,
the event loop the store serves, opening (the own pool or the given one,
the schema's migration), closing, and the reading of the tables' sizes that
decides when the statements that find many sagas are prepared. (How its
own pool is made and opened: ``_postgres_own_pool``; closed when the event
loop ends: ``_postgres_pool_closing``.)

``PooledStore`` is the bottom of ``PostgresSagaStore`` (its base classes);
running a statement on its pool is ``_postgres_fetch.FetchingStore``'s,
built on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final

from ..errors import SagaStoreError, StoreClosed
from ..log_lines import library_logger
from ..shielding import own_task
from ._common import finite_seconds, non_negative_int
from ._dsn_secrets import dsn_secrets
from ._parking import PARK_AFTER, check_park_after
from ._postgres_conn import _driver, _getconn, _query
from ._postgres_errors import shown_cause, wrapped
from ._postgres_own_pool import open_own_pool
from ._postgres_pool_closing import (
    CLOSER,
    close_dropped_pool,
    close_pool_at_loop_end,
    close_pool_when_cancelled,
)
from ._postgres_schema import _IDENTIFIER, _migrate, _Names
from ._postgres_sql import _NOT_ASCII, _SYNCHRONOUS_COMMIT, _UNSTORABLE, _Statements

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]

_log = library_logger("fallback_saga.store.postgres")

# The statements that find many sagas at once (a group's, the claim's) are
# prepared (their plan cached by the server) only once the sagas and steps
# tables hold this many rows by the server's statistics (pg_class.reltuples:
# -1 before the first ANALYZE). The plan PostgreSQL caches for them while a
# table is small scans it in full, and keeps doing so as the table grows,
# until autovacuum next analyzes it: on a fresh database under load, a
# minute or more of group commits each reading every saga (measured: backend
# CPU per saga from 230 to 1,300 µs within 30 s). Below, each is planned for
# its own parameters (about 0.5 ms of server CPU, once per group), and the
# sizes are read again every _SIZE_CHECK seconds. (A statement that finds
# one saga by its key is planned on the key's index whatever the size.)
_PREPARE_FROM: Final = 10_000
_SIZE_CHECK: Final = 5.0


class PooledStore:
    """The pool's side of ``PostgresSagaStore``'s connection layer (the
    base class of its base class; see the module docstring)."""

    def __init__(
        self,
        conninfo_or_pool: str | AsyncConnectionPool[Any],
        *,
        schema: str | None = None,
        min_size: int = 2,
        max_size: int = 10,
        synchronous_commit: str = "on",
        connect_timeout: float = 30.0,
        group_commit: bool = True,
        prepared_statements: bool = True,
        park_after: int | None = PARK_AFTER,
    ) -> None:
        park_after = check_park_after(park_after)
        psycopg, psycopg_pool = _driver()
        if not isinstance(group_commit, bool):
            raise TypeError(f"group_commit must be a bool, got {group_commit!r}")
        if not isinstance(prepared_statements, bool):
            raise TypeError(f"prepared_statements must be a bool, got {prepared_statements!r}")
        if schema is not None and (
            not isinstance(schema, str) or _IDENTIFIER.fullmatch(schema) is None
        ):
            raise ValueError(
                f"schema must be a plain PostgreSQL identifier (letters, digits, _), "
                f"got {schema!r}"
            )
        if not isinstance(synchronous_commit, str) or (
            synchronous_commit.lower() not in _SYNCHRONOUS_COMMIT
        ):
            raise ValueError(
                f"synchronous_commit must be one of {sorted(_SYNCHRONOUS_COMMIT)}, "
                f"got {synchronous_commit!r}"
            )
        timeout = finite_seconds("connect_timeout", connect_timeout)
        if timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        if isinstance(conninfo_or_pool, str):
            non_negative_int("min_size", min_size)
            non_negative_int("max_size", max_size)
            if max_size < 1 or min_size > max_size:
                raise ValueError(
                    f"need 0 <= min_size <= max_size and max_size >= 1, got "
                    f"min_size={min_size!r}, max_size={max_size!r}"
                )
            self._conninfo: str | None = conninfo_or_pool
            self._secrets: tuple[str, ...] = dsn_secrets(conninfo_or_pool)
            self._pool: AsyncConnectionPool[Any] | None = None
            self._owns_pool = True
            pool_size: int = max_size
        elif isinstance(conninfo_or_pool, psycopg_pool.AsyncConnectionPool):
            if synchronous_commit.lower() != "on":
                raise ValueError(
                    "synchronous_commit applies to the store's own pool; configure your "
                    "pool's connections instead"
                )
            self._conninfo = None
            self._secrets = dsn_secrets(conninfo_or_pool.conninfo)
            self._pool = conninfo_or_pool
            self._owns_pool = False
            pool_size = conninfo_or_pool.max_size
        else:
            raise TypeError(
                f"PostgresSagaStore takes a conninfo string or a psycopg_pool."
                f"AsyncConnectionPool, got {type(conninfo_or_pool).__name__}"
            )
        self.schema: str | None = schema
        self.park_after: int | None = park_after
        self.min_size = min_size
        self.max_size = max_size
        self.synchronous_commit: str = synchronous_commit.lower()
        self.connect_timeout = timeout
        self._names = _Names(schema)
        self._sql = _Statements(self._names)
        self._ready = False  # migrated and, for an owned pool, opened
        self._closed = False
        # The close() in progress: a close() called meanwhile waits for it,
        # so that "closed" means the pool is.
        self._closing: asyncio.Future[None] | None = None
        # psycopg's prepare for the group and claim statements: False (plan
        # each) until the tables are big enough for a cached plan
        # (_PREPARE_FROM), then None (prepared, psycopg's default).
        self._prepare: bool | None = False
        # False: no statement is ever prepared (behind a transaction-mode
        # pooler, a statement prepared on one server connection is unknown,
        # or another one, on the next). psycopg's prepare for the others.
        self.prepared_statements = prepared_statements
        # What an error text cannot hold in this database (``_note_encoding``).
        self._unstorable: re.Pattern[str] = _UNSTORABLE
        self._prepare_any: bool | None = None if prepared_statements else False
        self.size_check_every: float = _SIZE_CHECK
        self._size_check_at = 0.0  # loop time of the next check while not prepared
        self._size_checks: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Lock | None = None
        # Journal writes (the store's): alone while nothing else is on its
        # way, else grouped, in at most half the pool's connections. A libpq
        # without pipeline mode (older than 14) writes each alone.
        self.group_commit: bool = group_commit and psycopg.Pipeline.is_supported()
        self._pool_size = pool_size
        # The event loop the store serves: its pool's and its group commit's
        # (the first that uses it; see _on_its_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0  # the process whose loop that is
        # Closes the own pool when the loop's end cancels every task (see
        # close_pool_when_cancelled); None while no own pool is open.
        self._pool_closer: asyncio.Task[None] | None = None
        self._pool_guard: AsyncGenerator[None, None] | None = None  # the same, later
        # Closes the own pool if the store is freed unclosed (close_dropped_pool).
        self._pool_finalizer: weakref.finalize[Any, Any] | None = None

    def _on_its_loop(self) -> asyncio.AbstractEventLoop:
        """Check that the running event loop is the store's, before anything
        else: the pool, the group commit's queue and its tasks belong to one
        loop, and a write queued from another would wait forever (woken from
        a thread that is not its loop's). A store whose loop has closed —
        one made at import and used by one ``asyncio.run`` after another —
        starts afresh on the new loop (its own pool is opened again).
        Returns that loop: on 3.11 each look-up of it is a ``getpid`` system
        call, and a journal write makes one only (``submit``)."""
        loop = asyncio.get_running_loop()
        bound = self._loop
        if bound is loop:
            return loop
        if bound is None:
            self._loop, self._pid = loop, os.getpid()
            return loop
        if self._pid != os.getpid():
            # Its connections are sockets the parent still uses: neither using
            # them here nor closing them (libpq says goodbye to the server)
            # would leave the parent's sessions intact. StoreClosed: this
            # copy never works again in this process, so the journal must not
            # retry it as a passing fault (its whole journal_retry budget).
            raise StoreClosed(
                "this PostgreSQL saga store was used before os.fork(): its connections "
                "belong to the parent process, which a forked child must neither use nor "
                "close; make the store in the child (after the fork), or leave it unused "
                "in the parent"
            )
        if not bound.is_closed():
            # A plain SagaStoreError, retried: not for ever — once that loop
            # has closed, this one starts the store afresh (a store that
            # owns its pool), as successive asyncio.run calls do.
            raise SagaStoreError(
                "this PostgreSQL saga store serves the event loop it was first used on, "
                "which is still open (another thread's?): its connection pool and its "
                "journal writes belong to that loop; give each event loop a store of its own"
            )
        if not self._owns_pool:
            # StoreClosed: the pool it was given went with its loop, and
            # nothing gives it another — no loop will use this store again.
            raise StoreClosed(
                "the event loop this PostgreSQL saga store was first used on has closed, "
                "and the connection pool it was given belongs to that loop; give the "
                "store a pool made on this loop"
            )
        # Its pool was opened on the closed loop: dropped (its connections
        # end when it is freed), and opened again here at the first call.
        self._start_afresh()
        self._pool = None
        self._pool_closer = self._pool_guard = None  # went with the closed loop
        self._forget_pool_finalizer()
        self._ready = False
        self._opening = None
        self._size_checks = set()
        self._size_check_at = 0.0
        self._loop = loop
        return loop

    @property
    def pool(self) -> AsyncConnectionPool[Any] | None:
        """The connection pool (``None`` until an owned pool is opened)."""
        return self._pool

    async def open(self) -> None:
        """Connect and migrate the schema now rather than at first use, so a
        bad conninfo or a too-new schema fails here (``SagaStoreError``)."""
        self._on_its_loop()
        if self._ready:
            return
        if self._closed:
            raise StoreClosed("the PostgreSQL saga store is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._ready:
                return
            if self._closed:
                raise StoreClosed("the PostgreSQL saga store is closed")
            try:
                if self._owns_pool:
                    await self._open_own_pool()
                else:
                    assert self._pool is not None
                    async with self._pool.connection() as conn:
                        await self._get_ready(conn)
            except SagaStoreError:
                raise
            except self._errors as error:
                raise wrapped(
                    error, "cannot open the PostgreSQL saga store", self._secrets
                ) from shown_cause(error, self._secrets)
            self._ready = True

    async def _open_own_pool(self) -> None:
        # Opened in a task of its own, in an empty context: the pool's own
        # tasks (its workers, its scheduler) and the closer live as long as
        # the pool, each with a copy of the context it was made in — most
        # often a saga's run (a store opens at its first write), whose
        # execution holds the store: the store, dropped unclosed, was kept
        # alive by its own pool, for ever. (Cancelling this call cancels it.)
        loop = asyncio.get_running_loop()
        opening = loop.create_task(self._open_pool_apart(), context=contextvars.Context())
        try:
            await opening
        except asyncio.CancelledError:
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                self._ready = True  # cancelled once the pool was open: it is the store's
            raise

    async def _open_pool_apart(self) -> None:
        assert self._conninfo is not None
        pool = await open_own_pool(
            self._conninfo, min_size=self.min_size, max_size=self.max_size,
            connect_timeout=self.connect_timeout, synchronous_commit=self.synchronous_commit,
            prepared_statements=self.prepared_statements, get_ready=self._get_ready,
        )
        self._pool = pool
        loop = asyncio.get_running_loop()
        self._pool_closer = closer = loop.create_task(
            close_pool_when_cancelled(pool), name=CLOSER
        )
        guard = close_pool_at_loop_end(pool)
        await anext(guard)  # known to the loop from now on
        self._pool_guard = guard
        # Freed unclosed: the pool closed on its loop. The finalizer holds the
        # loop, the pool and the closer weakly (close_dropped_pool), never the
        # store (no part of which holds the store either: _postgres_part);
        # not run at exit, when no loop runs.
        finalizer = weakref.finalize(
            self, close_dropped_pool, weakref.ref(loop), weakref.ref(pool), weakref.ref(closer)
        )
        finalizer.atexit = False
        self._pool_finalizer = finalizer

    async def _get_ready(self, conn: AsyncConnection[Any]) -> None:
        """On a first connection: the schema migrated, the table sizes read
        (``_read_sizes``), the database's encoding noted."""
        await _migrate(conn, self._names)
        await self._read_sizes(conn)
        self._note_encoding(conn)

    def _note_encoding(self, conn: AsyncConnection[Any]) -> None:
        """Error texts are kept to ASCII in a database that is not UTF-8."""
        encoding = conn.info.parameter_status("server_encoding")
        if encoding is not None and encoding.upper() not in ("UTF8", "UNICODE"):
            self._unstorable = _NOT_ASCII

    async def close(self) -> None:
        """Close the store's own pool (a given pool is left open). Later calls
        raise ``SagaStoreError``; closing twice is harmless: a ``close()``
        called while another is closing returns when that one has."""
        while self._closing is not None:
            # shield: cancelling this wait must not cancel the other close
            await asyncio.shield(self._closing)
        if self._closed:
            return
        if self._loop is not None and self._loop.is_closed():
            # Used last by a loop that has closed: its pool goes with it.
            self._closed = True
            self._ready = False
            self._pool = None
            self._pool_closer = self._pool_guard = None
            self._forget_pool_finalizer()
            return
        self._on_its_loop()
        self._closing = closing = asyncio.get_running_loop().create_future()
        try:
            await self._close()
        finally:
            self._closing = None
            closing.set_result(None)

    async def _close(self) -> None:
        await self._settle()
        if self._size_checks:
            await asyncio.gather(*self._size_checks, return_exceptions=True)
        self._closed = True
        self._ready = False
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        closer, self._pool_closer = self._pool_closer, None
        if closer is not None:
            closer.cancel()  # the pool is closed: it finds nothing to do
        self._pool_guard = None  # nor does it
        self._forget_pool_finalizer()  # nor would it

    def _forget_pool_finalizer(self) -> None:
        """The own pool is closed, or went with its loop: nothing for the
        store's finalizer (``close_dropped_pool``) to close."""
        finalizer, self._pool_finalizer = self._pool_finalizer, None
        if finalizer is not None:
            finalizer.detach()

    def _start_afresh(self) -> None:
        """What the store keeps for one event loop, made again for a new one
        (``_on_its_loop``): the store's journal (``PostgresSagaStore``)."""

    async def _settle(self) -> None:
        """What is under way, finished (or given up) before the pool closes:
        the store's queued writes and its give-backs (``PostgresSagaStore``)."""

    async def _read_sizes(self, conn: AsyncConnection[Any]) -> None:
        """Prepare statements from now on if the tables are big enough
        (``_PREPARE_FROM``)."""
        sql = self._sql
        cursor = await _query(conn, sql.table_rows, sql.table_rows_params, prepare=False)
        row = await cursor.fetchone()
        if (
            self.prepared_statements and row is not None and row[0] is not None
            and row[0] >= _PREPARE_FROM
        ):
            self._prepare = None
        self._size_check_at = asyncio.get_running_loop().time() + self.size_check_every

    def _check_sizes_soon(self) -> None:
        """While statements are not prepared: read the table sizes again, in
        a task of its own, at most every ``size_check_every`` seconds."""
        now = asyncio.get_running_loop().time()
        if now < self._size_check_at or self._closed:
            return
        self._size_check_at = now + self.size_check_every
        task = own_task(self._check_sizes())
        if not task.done():
            self._size_checks.add(task)
            task.add_done_callback(self._size_checks.discard)

    async def _check_sizes(self) -> None:
        pool = self._pool
        if pool is None:
            return
        try:
            conn = await _getconn(pool)
            try:
                await self._read_sizes(conn)
            finally:
                await pool.putconn(conn)
        except self._errors as error:  # the next check may do better
            _log.debug("cannot read the table sizes: %s", error)
