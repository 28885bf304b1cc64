"""The PostgreSQL saga store's leases, one saga at a time: its lease read
(``lease_state``), taken by id (``claim_saga``), renewed, and given back
(``release``, ``defer``, ``hand_off``), and the LISTEN/NOTIFY channel a
hand-off announces sagas on (``work_notifications``). The batch claim, and
the give-back of what a claim whose answer never came took, are
``_postgres_claims``.

``Leases`` is held by ``PostgresSagaStore`` (made by its base class
``_postgres_leasing.LeasingStore``), whose public methods of these
names hand over to it (their docstrings say what each does); it runs its
statements through the store's connection layer (``_postgres_fetch``,
``_postgres_conn``), and hands what ``claim_saga`` may have taken with no
answer to the store's ``Claims``, which gives it back.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaBusy,
    SagaNotFound,
    SagaStoreError,
    StoreClosed,
)
from ._common import check_owner, check_saga_id, finite_seconds, short_repr
from ._parking import check_ran
from ._postgres_claims import Claims
from ._postgres_conn import _READ_COMMITTED, _driver, _query
from ._postgres_errors import _NOT_SENT
from ._postgres_fetch import FetchingStore
from ._postgres_part import StorePart
from ._postgres_unleasable import (
    FENCE_TOO_LARGE,
    INT8_MAX,
    count_problem,
    lease_problem,
    time_problem,
)
from .base import Lease, LeaseState

if TYPE_CHECKING:
    # Types only (the driver is an optional extra; see _postgres_pool).
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]

# Seconds between checks, by a listening connection, that the store is still open.
_LISTEN_CHECK: Final = 1.0


class _FrameEnd:
    """Freed with the frame that holds it (see ``work_notifications``)."""

    __slots__ = ("__weakref__",)


def _finish(conn: AsyncConnection[Any]) -> None:
    """Close ``conn``'s connection to the server without its loop (a no-op
    once it is closed)."""
    if not conn.closed:
        conn.pgconn.finish()


class Leases(StorePart):
    """A ``PostgresSagaStore``'s leases, one saga at a time (see the module
    docstring), held by the store (``_leases``)."""

    __slots__ = ("_claims", "_names", "_sql")

    def __init__(self, store: FetchingStore, claims: Claims) -> None:
        super().__init__(store)  # held weakly (StorePart)
        self._sql = store._sql
        self._names = store._names
        # The store's claims, which own the give-backs under way (close waits
        # for them): claim_saga hands them a lease it may have taken.
        self._claims = claims

    async def lease_state(self, saga_id: str) -> LeaseState:
        """One query (``PostgresSagaStore.lease_state``)."""
        store = self._store
        saga_id = check_saga_id(saga_id)
        doing = f"cannot read the lease of saga {short_repr(saga_id)}"
        row = await store._fetch(doing, self._sql.lease_state, (saga_id,))
        if row is None:
            raise SagaNotFound(saga_id)
        owner, expires_at, token, claims = row
        # Of any saga, as SQLite's: a fence or a count of claims no claim can
        # add one to, an expiry that is not a number (S12).
        problem = count_problem(token, claims) or time_problem("lease_expires_at", expires_at)
        if problem is not None:
            raise CorruptSagaRecord(saga_id, problem)
        return LeaseState(owner, expires_at, token, claims)

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """The row locked, then the lease taken, in one transaction
        (``PostgresSagaStore.claim_saga``)."""
        store = self._store
        saga_id = check_saga_id(saga_id)
        owner = check_owner(owner)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        doing = f"cannot lease saga {short_repr(saga_id)}"
        store._on_its_loop()
        if not store._ready:
            await store._open_for(doing, write=True)
        pool = store._pool
        if pool is None:
            raise StoreClosed("the PostgreSQL saga store is closed")
        sql = self._sql
        marker = secrets.token_hex(16)  # this claim's own mark on its lease
        # The row is locked first, in a statement of its own: once its answer
        # has come, the lease can only be taken by this transaction, and a
        # give-back that waits for the row's lock waits for its end. (Had
        # the lease been taken in one statement, nothing would tell whether
        # the server had even begun it when its answer failed to come: a
        # give-back could run before it and find nothing.)
        locked = False
        found: Any = None
        row: Any = None
        holder: Any = None
        try:
            conn = await store._connection(pool, doing, write=True)
            try:
                async with conn.transaction():
                    await conn.execute(_READ_COMMITTED)
                    cursor = await _query(conn, sql.lock_saga, (saga_id,), store._prepare_any)
                    found = await cursor.fetchone()
                    if found is not None:
                        # A saga in flight the claim skips as corrupt: refused
                        # with the readers' reason (S12), never taken, and
                        # never SagaBusy (a lease held until infinity was
                        # busy for ever). fence + 1 overflows (bigint out of
                        # range) on every try, whatever the status.
                        problem = lease_problem(*found) or (
                            FENCE_TOO_LARGE if found[1] >= INT8_MAX else None
                        )
                        if problem is not None:
                            raise CorruptSagaRecord(saga_id, problem)
                    if found is not None:
                        locked = True
                        cursor = await _query(conn, sql.take_lease,
                                              (owner, seconds, marker, saga_id), store._prepare_any)
                        row = await cursor.fetchone()
                        if row is None:
                            cursor = await _query(conn, sql.lease_of, (saga_id,),
                                                  store._prepare_any)
                            holder = await cursor.fetchone()
            finally:
                await pool.putconn(conn)
        except BaseException as error:
            if locked:
                # The lease may have been taken all the same, for nobody who
                # knows its token (see Claims.claim). A server that answered
                # with an error rolled it back: the give-back then finds nothing.
                self._claims.forget_soon([saga_id], marker, owner, lease_seconds, by_id=True)
            if isinstance(error, UnicodeEncodeError):  # a parameter UTF-8 cannot encode
                raise store._wrap(error, doing, _NOT_SENT) from store._shown_cause(error)
            if not isinstance(error, store._errors):
                raise
            raise await store._explain(error, doing, write=True) from store._shown_cause(error)
        if found is None:
            raise SagaNotFound(saga_id)
        if row is not None:
            return Lease(saga_id, owner, row[0], row[1])
        raise SagaBusy(saga_id, holder[0], holder[1])

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """One statement, and one more read if it matched no row (``PostgresSagaStore.renew``)."""
        store = self._store
        check_saga_id(lease.saga_id)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        doing = f"cannot renew the lease on saga {short_repr(lease.saga_id)}"
        row = await store._fetch(
            doing, self._sql.renew, (seconds, lease.owner, lease.saga_id, lease.token),
            write=True,
        )
        if row is not None:
            return Lease(lease.saga_id, lease.owner, lease.token, row[0])
        found = await store._fetch(doing, self._sql.fence_of, (lease.saga_id,))
        if found is None:
            raise SagaNotFound(lease.saga_id)
        raise LeaseLost(lease.saga_id, lease.token)

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        """One statement (``PostgresSagaStore.release``)."""
        store = self._store
        await store._fetch(
            f"cannot release the lease on saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.release if check_ran(ran) else self._sql.release_unrun,
            (lease.saga_id, lease.token),
            rows="none",
            write=True,
        )

    async def defer(self, lease: Lease, seconds: float, *, ran: bool = True) -> None:
        """One statement (``PostgresSagaStore.defer``)."""
        store = self._store
        await store._fetch(
            f"cannot defer saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.defer if check_ran(ran) else self._sql.defer_unrun,
            (finite_seconds("seconds", seconds), lease.saga_id, lease.token),
            rows="none",
            write=True,
        )

    async def hand_off(self, lease: Lease, *, ran: bool = True) -> None:
        """One statement, the release and the notification (``PostgresSagaStore.hand_off``)."""
        store = self._store
        await store._fetch(
            f"cannot hand off saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.hand_off if check_ran(ran) else self._sql.hand_off_unrun,
            (lease.saga_id, lease.token, self._names.channel),
            rows="none",
            write=True,
        )

    async def work_notifications(self) -> AsyncIterator[str]:
        """A connection of its own, LISTENing (``PostgresSagaStore.work_notifications``)."""
        store = self._store
        psycopg, _ = _driver()
        store._on_its_loop()
        if not store._ready:
            await store.open()
        pool = store._pool
        if store._closed or pool is None:
            raise StoreClosed("the PostgreSQL saga store is closed")
        # The pool's own conninfo and connection arguments, for a given pool too.
        conninfo = store._conninfo if store._conninfo is not None else pool.conninfo
        kwargs = dict(getattr(pool, "kwargs", None) or {})
        kwargs["autocommit"] = True
        try:
            async with asyncio.timeout(store.connect_timeout):
                conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        except TimeoutError:
            raise SagaStoreError(
                f"cannot listen for work: no connection within {store.connect_timeout:g} s"
            ) from None
        except store._errors as error:
            raise store._wrap(error, "cannot listen for work") from store._shown_cause(error)
        # Closed by the ``finally`` below — unless the loop ends with this
        # generator suspended and never closes it (a second Ctrl-C cut
        # ``asyncio.run``'s shutdown short, or the loop was closed): dropped
        # with its frame, the connection is then finished as ``ending`` is
        # freed, synchronously (freed open, psycopg warns ``ResourceWarning``).
        ending = _FrameEnd()
        weakref.finalize(ending, _finish, conn)
        try:
            try:
                await conn.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._names.channel))
                )
            except store._errors as error:
                raise store._wrap(error, "cannot listen for work") from store._shown_cause(error)
            yield ""
            while not store._closed:
                # Woken at least every _LISTEN_CHECK seconds, to end promptly
                # once the store is closed (closing a connection does not wake
                # a task waiting on it).
                try:
                    async for notice in conn.notifies(timeout=_LISTEN_CHECK):
                        yield notice.payload
                        if store._closed:
                            break
                except store._errors as error:
                    if store._closed:
                        break
                    raise store._wrap(
                        error, "lost the connection listening for work"
                    ) from store._shown_cause(error)
        finally:
            await conn.close()
