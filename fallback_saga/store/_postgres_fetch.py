"""The PostgreSQL saga store's one way to run a statement: ``_fetch``, on a
pooled connection of the store's pool, opening the store at its first use,
and the driver's errors made the store's (``_wrap``, ``_explain``: what was
certainly not written says so; the texts: ``_postgres_errors``).

``FetchingStore`` is what ``PostgresSagaStore`` is built on (its base
class), itself built on the pool's life (``_postgres_pool.PooledStore``).
The store's journal writes (``_postgres_writes``), reads
(``_postgres_reads``), counts (``_postgres_counts``), purge
(``_postgres_purge``), claims (``_postgres_claims``) and leases
(``_postgres_leases``) all run their statements through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SagaStoreError, StoreClosed
from ._postgres_conn import _getconn, _query
from ._postgres_errors import (
    _NO_CONNECTION,
    _NOT_SENT,
    _REFUSED,
    not_opened,
    said,
    shown_cause,
    wrapped,
)
from ._postgres_pool import PooledStore
from ._postgres_schema import _schema_version
from ._postgres_sql import _commit_in_doubt, _Write

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]

    from ._group_commit import GroupCommit


class FetchingStore(PooledStore):
    """The statements' side of ``PostgresSagaStore``'s connection layer (its
    base class; see the module docstring). Knows nothing of what the
    statements it runs do."""

    @property
    def _journal(self) -> GroupCommit[_Write, None]:
        """The store's group commit, which ``_fetch`` tells when a journal
        write is sent (its ``sending()``): ``PostgresSagaStore``'s."""
        raise NotImplementedError

    def _wrap(self, error: BaseException, doing: str, not_written: str = "") -> SagaStoreError:
        """The store's error for the driver's ``error`` (``wrapped``: its
        conninfo's secrets scrubbed). ``not_written``: why the write that
        failed certainly wrote nothing (``_REFUSED``, ``_NOT_SENT``)."""
        return wrapped(error, doing, self._secrets, not_written)

    def _shown_cause(self, error: BaseException) -> BaseException | None:
        """``error`` to chain to the store's own, unless it quotes a password
        of the conninfo (``shown_cause``)."""
        return shown_cause(error, self._secrets)

    async def _open_for(self, doing: str, *, write: bool) -> None:
        """``open``, for a statement about to be made: a store opens itself
        at its first use. An open that fails (the server down, a bad
        conninfo, a schema too new, the store closed) has sent nothing of
        that statement; for a ``write`` the error says so (``_NOT_OPENED``,
        ``nothing_written``), as for a write that got no connection: the
        first write of a store opened lazily while the server is down stops
        its run not in doubt. A failed open leaves the store unopened, to be
        opened again by the next call."""
        try:
            await self.open()
        except SagaStoreError as error:
            if not write:
                raise
            raise not_opened(error, doing) from error.__cause__

    async def _connection(
        self, pool: AsyncConnectionPool[Any], doing: str | _Write, *, write: bool
    ) -> AsyncConnection[Any]:
        """``_getconn``'s connection, or the store's error if none could be
        had: the pool timed out waiting for one (the server is down or
        unreachable, or every connection is in use), is closed, or has too
        many waiting. The pool's own ``check`` of a connection runs before it
        hands it out and sends nothing of the caller's; so for a ``write``
        nothing of it was sent, and the error says so (``_NO_CONNECTION``).
        A connection that was had and then lost is not this: its write stays
        in doubt (``_commit_in_doubt``)."""
        try:
            return await _getconn(pool)
        except self._errors as error:
            raise self._wrap(
                error, said(doing), _NO_CONNECTION if write else ""
            ) from self._shown_cause(error)

    async def _fetch(
        self, doing: str | _Write, statement: str, params: Sequence[Any], *, rows: str = "one",
        write: bool = False,
    ) -> Any:
        """Run one statement on a pooled connection; its first row (``rows="one"``),
        all rows (``"all"``) or nothing (``"none"``). ``write``: the statement
        writes, and an error the server answered it with (it rolled it back)
        says that nothing was written (``_explain``). Never for a read: the
        executor takes a read's error for no answer about an earlier write
        in doubt, and must not take it for "that write did not land".

        ``doing``: what the statement does, as its errors begin; or the
        journal write it makes, whose text (``_doing``) is then built only if
        one is raised, as for its group commit's writes."""
        self._on_its_loop()
        if not self._ready:
            await self._open_for(said(doing), write=write)
        pool = self._pool
        if pool is None:
            raise StoreClosed("the PostgreSQL saga store is closed")
        try:
            # getconn/putconn rather than pool.connection(): the hot path, and an
            # autocommit connection has no transaction for the context to end.
            conn = await self._connection(pool, doing, write=write)
            try:
                if write and self._journal.sending() == [False]:
                    # A journal write whose deadline came while it waited for
                    # this connection: it was reported not sent, and is not.
                    raise SagaStoreError(f"{said(doing)}: {_NOT_SENT}")
                prepare = self._prepare_any
                if conn.autocommit:
                    cursor = await _query(conn, statement, params, prepare)
                else:
                    async with conn.transaction():
                        cursor = await _query(conn, statement, params, prepare)
                if rows == "one":
                    return await cursor.fetchone()
                if rows == "all":
                    return await cursor.fetchall()
                return None
            finally:
                # A connection left mid-statement (cancelled) or in a failed
                # transaction is rolled back or replaced by the pool.
                await pool.putconn(conn)
        except self._errors as error:
            raise await self._explain(
                error, said(doing), write=write
            ) from self._shown_cause(error)
        except UnicodeEncodeError as error:  # a parameter UTF-8 cannot encode: never sent
            raise self._wrap(
                error, said(doing), _NOT_SENT if write else ""
            ) from self._shown_cause(error)

    async def _explain(
        self, error: BaseException, doing: str, *, write: bool = False
    ) -> SagaStoreError:
        """``_wrap``, unless a newer fallback_saga migrated the schema while
        this store was open (the version is checked at open; a rolling deploy
        migrates later): a statement that failed on a table, column, type or
        function then says so, naming both versions, rather than giving the
        SQL error. Read only after such a failure: the hot path pays nothing.

        ``write``: ``error`` ended a write's transaction, which the server
        certainly rolled back if it answered with an error of its own
        (``_commit_in_doubt``): the error then says that nothing was
        written. A lost connection or a shutdown stays in doubt: the COMMIT
        may have been sent, and committed. (No connection at all is
        ``_connection``'s: nothing was sent.)"""
        not_written = _REFUSED if write and not _commit_in_doubt(error) else ""
        sqlstate = getattr(error, "sqlstate", None) or ""
        pool = self._pool
        if pool is not None and (sqlstate.startswith("42") or sqlstate == "23502"):
            try:
                conn = await _getconn(pool)
                try:
                    await _schema_version(conn, self._names)  # raises for a newer one
                finally:
                    await pool.putconn(conn)
            except SagaStoreError as newer:
                also = f"; {not_written}" if not_written else ""
                explained = SagaStoreError(
                    f"{doing}: {newer} (a newer release migrated it while this store had it "
                    f"open; upgrade every process that opens it{also})"
                )
                explained.nothing_written = bool(not_written)
                explained.__cause__ = self._shown_cause(error)
                return explained
            except self._errors:
                pass  # the original error says enough
        return self._wrap(error, doing, not_written)
