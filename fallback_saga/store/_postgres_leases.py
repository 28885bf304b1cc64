"""The PostgreSQL saga store's recovery leases: claiming interrupted sagas
(``claim``, ``claim_saga``), renewing, releasing, deferring and handing
them off, giving back what a claim whose answer never came took, and the
LISTEN/NOTIFY channel a hand-off announces sagas on.

``Leases`` is held by ``PostgresSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does); it runs its
statements through the store's connection layer (``_postgres_fetch``).
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    CorruptSagaRecord,
    LeaseLost,
    SagaBusy,
    SagaNotFound,
    SagaStoreError,
    StoreClosed,
)
from ..log_lines import library_logger
from . import _skipped_rows as skipped_rows
from ._common import (
    check_owner,
    check_saga_id,
    claim_names,
    finite_seconds,
    non_negative_int,
    short_repr,
)
from ._dsn_secrets import scrub
from ._parking import NEVER_PARKED, check_ran
from ._postgres_conn import _READ_COMMITTED, _driver, _getconn, _query
from ._postgres_errors import _NOT_SENT
from ._postgres_fetch import FetchingStore
from ._postgres_unknown_status import ARMS, unknown_status_reasons
from ._postgres_unleasable import (
    CLAIMS_TOO_LARGE,
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

_log = library_logger("fallback_saga.store.postgres")

# Seconds between checks, by a listening connection, that the store is still open.
_LISTEN_CHECK: Final = 1.0

# Giving back what a claim whose answer never came took (_forget_claim): each
# try waits this long at most for the claim's transaction to end (its row
# locks), then gives its connection back; tries again after a delay that
# doubles up to a cap, for the lease's length and at least this long; close()
# waits this long for the tries under way.
_FORGET_WAIT: Final = "SET LOCAL lock_timeout = '2s'"
_FORGET_DELAY: Final = 0.1
_FORGET_DELAY_MAX: Final = 5.0
_FORGET_AT_LEAST: Final = 60.0
_FORGET_AT_CLOSE: Final = 5.0


class _FrameEnd:
    """Freed with the frame that holds it (see ``work_notifications``)."""

    __slots__ = ("__weakref__",)


def _finish(conn: AsyncConnection[Any]) -> None:
    """Close ``conn``'s connection to the server without its loop (a no-op
    once it is closed)."""
    if not conn.closed:
        conn.pgconn.finish()


class Leases:
    """A ``PostgresSagaStore``'s recovery leases (see the module docstring)."""

    __slots__ = ("_forgetting", "_looks", "_names", "_sql", "_store")

    def __init__(self, store: FetchingStore) -> None:
        self._store = store
        self._sql = store._sql
        self._names = store._names
        # Claims whose answer never came, being given back (_forget_claim).
        self._forgetting: set[asyncio.Task[None]] = set()
        # When a claim next reads the rows it reports as skipped with
        # queries of their own (_unclaimable, _unknown_statuses): for a
        # ``recover`` pass, each claim; for a worker, at most once per its
        # lease's length (its polls' extra statements bounded, as SQLite's
        # log line about such a row is); never with nobody to tell.
        self._looks = skipped_rows.Looks()

    async def settle(self) -> None:
        """At close: the give-backs under way (``_forget_claim``) get a
        moment, then their leases run out on their own."""
        if self._forgetting:
            _, late = await asyncio.wait(set(self._forgetting), timeout=_FORGET_AT_CLOSE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

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

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool = False, names: Collection[str] | None = None,
    ) -> list[Lease]:
        """One short transaction; what it may have taken given back if its answer never
        comes (``PostgresSagaStore.claim``)."""
        store = self._store
        if not isinstance(deferred, bool):
            raise TypeError(f"deferred must be a bool, got {deferred!r}")
        owner = check_owner(owner)
        lease_seconds = finite_seconds("lease_seconds", lease_seconds)
        older_than = finite_seconds("older_than", older_than)
        limit = non_negative_int("limit", limit)
        named = claim_names(names)
        if limit == 0 or named == ():
            return []
        store._on_its_loop()
        if not store._ready:
            await store._open_for("cannot claim sagas", write=True)
        pool = store._pool
        if pool is None:
            raise StoreClosed("the PostgreSQL saga store is closed")
        # This claim's own mark on the leases it takes: should its answer
        # never come, what it took is given back by it (_forget_claim).
        marker = secrets.token_hex(16)
        locked: list[str] = []  # the sagas its transaction locked, once known
        try:
            conn = await store._connection(pool, "cannot claim sagas", write=True)
            try:
                async with conn.transaction():
                    await conn.execute(_READ_COMMITTED)
                    due, taken = await self._claim_in(conn, owner, lease_seconds, older_than,
                                                      limit, deferred, named, marker, locked)
                    # A claim that took its limit met the rows up to its last
                    # saga only (the oldest first): those are the ones it reports.
                    unclaimable: list[tuple[str, str]] = []
                    if self._looks.due():
                        unclaimable = await self._unclaimable(
                            conn, older_than, limit, deferred, named,
                            due[-1] if len(due) >= limit else None)
                        unclaimable += await self._unknown_statuses(conn, limit, named)
            finally:
                await pool.putconn(conn)
        except BaseException as error:
            if locked:
                # Cancelled (past shielding.claimed's grace, or the loop is
                # closing), or failed with no answer: the leases may have
                # been taken all the same, for nobody who knows their
                # tokens — they would sit until they ran out, each counted
                # towards parking. Given back once the claim's transaction
                # has ended. (Refused by the server: nothing to give back,
                # and the giving back finds nothing.)
                self._forget_soon(locked, marker, owner, lease_seconds)
            if not isinstance(error, store._errors):
                raise
            # Rolled back whole if the server answered with an error: no lease taken.
            raise await store._explain(
                error, "cannot claim sagas", write=True
            ) from store._shown_cause(error)
        for saga_id, problem in unclaimable:
            reason = f"its row is unreadable: {problem}"
            _log.warning("skipping a saga in recovery: saga %s: %s", short_repr(saga_id),
                         reason, extra={"skipped_saga": (saga_id, reason)})
            skipped_rows.note(saga_id, reason)
        # Oldest first, as selected (RETURNING has no order).
        return [
            Lease(saga_id, owner, *taken[saga_id])
            for saga_id in due
            if saga_id in taken
        ]

    async def _claim_in(
        self, conn: AsyncConnection[Any], owner: str, lease_seconds: float, older_than: float,
        limit: int, deferred: bool = False, names: tuple[str, ...] | None = None,
        marker: str | None = None, locked: list[str] | None = None,
    ) -> tuple[list[str], dict[str, tuple[int, float, int]]]:
        """``claim``'s statements, in the caller's transaction: the sagas due,
        oldest first, and the fence, expiry and count of claims of each one leased.
        ``marker``: set on each lease taken; ``locked``: extended with the
        sagas due as soon as they are locked, before the leases are sent."""
        store = self._store
        sql = self._sql
        prepare = store._prepare
        ahead = max(older_than, 0.0)  # a negative older_than takes nothing more as ahead
        park_after = NEVER_PARKED if store.park_after is None else store.park_after
        if names is None:
            cursor = await _query(conn, sql.claimable,
                                  (park_after, older_than, ahead, ahead, deferred, limit),
                                  prepare)
        else:
            cursor = await _query(conn, sql.claimable_named,
                                  (park_after, older_than, ahead, ahead, deferred, list(names),
                                   limit),
                                  prepare)
        due = [saga_id for (saga_id,) in await cursor.fetchall()]
        if not due:
            return [], {}
        if locked is not None:
            locked.extend(due)
        cursor = await _query(conn, sql.take_leases, (owner, lease_seconds, marker, due),
                              prepare)
        taken: dict[str, tuple[int, float, int]] = {}
        for saga_id, fence, expires, claims in await cursor.fetchall():
            taken[saga_id] = (fence, expires, claims)
        return due, taken

    async def _unclaimable(
        self, conn: AsyncConnection[Any], older_than: float, limit: int, deferred: bool,
        names: tuple[str, ...] | None, met_until: str | None = None,
    ) -> list[tuple[str, str]]:
        """The due sagas the claim left out as corrupt (a fence or a count of
        claims it cannot add one to, a time at infinity; a lease that expires
        at infinity is never due, and is read at once), oldest first, with
        why: read only for whoever reports them (``_skipped_rows``), in the
        claim's transaction."""
        ahead = max(older_than, 0.0)
        sql = self._sql
        params: tuple[Any, ...] = (older_than, ahead, ahead, deferred)
        if met_until is not None:  # up to the last saga the claim took
            params = (*params, met_until)
        if names is not None:
            params = (*params, list(names))
        statement = (
            (sql.unclaimable if names is None else sql.unclaimable_named)
            if met_until is None else
            (sql.unclaimable_met if names is None else sql.unclaimable_met_named)
        )
        cursor = await _query(conn, statement, (*params, limit), self._store._prepare)
        # Why, in the words every reader uses (_postgres_unleasable; the
        # query selects only rows it finds a problem with: "or" is for the type).
        return [
            (saga_id, lease_problem(status, *columns) or CLAIMS_TOO_LARGE)
            for saga_id, status, *columns in await cursor.fetchall()
        ]

    async def _unknown_statuses(
        self, conn: AsyncConnection[Any], limit: int, names: tuple[str, ...] | None,
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` sagas of a status the store does not write, which
        the claim (by status) never meets, with why (the readers' words:
        _postgres_unknown_status); of the claim's names only, so that a
        worker is told of its own sagas. In the claim's transaction."""
        sql = self._sql
        arm: tuple[Any, ...] = (limit,) if names is None else (list(names), limit)
        statement = sql.unknown_status if names is None else sql.unknown_status_named
        cursor = await _query(conn, statement, (*arm * ARMS, limit), self._store._prepare)
        return unknown_status_reasons(await cursor.fetchall())

    def _forget_soon(
        self, saga_ids: list[str], marker: str, owner: str, lease_seconds: float, *,
        by_id: bool = False,
    ) -> None:
        """``_forget_claim``, in a task of its own (the claimer is cancelled,
        or failing): finished, or given up, by ``close``."""
        store = self._store
        if store._closed or store._pool is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._forget_claim(list(saga_ids), marker, owner, lease_seconds, by_id=by_id))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget_claim(
        self, saga_ids: list[str], marker: str, owner: str, lease_seconds: float, *,
        by_id: bool = False,
    ) -> None:
        """Give back the leases a claim whose answer never came took, if it
        committed: those still marked by it and leased to ``owner`` (a later
        claim, by id or not, marks its own; a claim of 0.9.0, which knows no
        mark, leases to its own owner), with the count towards parking it
        added (none for a claim by id, ``by_id``: ``claim_saga`` adds none).
        Sound only once the claim's transaction has ended — until then a read
        finds nothing, and the claim may commit a moment later —
        so this first waits for the row locks that transaction held from its
        first statement to its end (``_forget_wait`` at a time, the
        connection given back between tries). Tried for the lease's length
        at least; after that, the leases have run out, and only the count
        is left to take back."""
        store = self._store
        loop = asyncio.get_running_loop()
        until = loop.time() + max(lease_seconds, _FORGET_AT_LEAST)
        delay = _FORGET_DELAY
        sql = self._sql
        while True:
            pool = store._pool
            if pool is None:
                return
            try:
                conn = await _getconn(pool)
                try:
                    async with conn.transaction():
                        await conn.execute(_READ_COMMITTED)
                        await conn.execute(_FORGET_WAIT)
                        await _query(conn, sql.lock_claimed, (saga_ids,), store._prepare)
                        await _query(conn, sql.forget_lease if by_id else sql.forget_claim,
                                     (saga_ids, marker, owner), store._prepare)
                    return
                finally:
                    await pool.putconn(conn)
            except store._errors as error:
                if loop.time() + delay > until:
                    _log.warning(
                        "cannot give back the leases a claim whose answer never came may have "
                        "taken (%d sagas): %s: %s; they run out on their own",
                        len(saga_ids), type(error).__name__, scrub(str(error), store._secrets))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FORGET_DELAY_MAX)

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
                # knows its token (see claim). A server that answered with
                # an error rolled it back: the give-back then finds nothing.
                self._forget_soon([saga_id], marker, owner, lease_seconds, by_id=True)
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
