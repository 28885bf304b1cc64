"""The PostgreSQL saga store's batch claim (``claim``): one short
transaction that leases up to ``limit`` interrupted sagas, oldest first,
and reads for whoever reports them the due sagas it left out (a corrupt
row, a status the store does not write: S12); and the give-back of what a
claim whose answer never came may have taken — ``claim``'s or
``claim_saga``'s — in tasks of its own, which the store's close waits for
(``settle``).

``Claims`` is held by ``PostgresSagaStore`` (made by its base class
``_postgres_leasing.LeasingStore``), whose ``claim`` hands over to it (its
docstring says what it does), and given to the store's ``Leases``
(``_postgres_leases``), whose ``claim_saga`` hands it a lease it may have
taken (``forget_soon``): the give-backs under way have this one owner,
which the store's ``_settle`` settles. It runs its statements through the
store's connection layer (``_postgres_fetch``, ``_postgres_conn``), the
store held weakly (``_postgres_part``): a give-back under way keeps it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

from ..errors import StoreClosed
from ..log_lines import library_logger
from . import _skipped_rows as skipped_rows
from ._common import check_owner, claim_names, finite_seconds, non_negative_int, short_repr
from ._dsn_secrets import scrub
from ._parking import NEVER_PARKED
from ._postgres_conn import _READ_COMMITTED, _getconn, _query
from ._postgres_fetch import FetchingStore
from ._postgres_part import StorePart
from ._postgres_unknown_status import ARMS, unknown_status_reasons
from ._postgres_unleasable import CLAIMS_TOO_LARGE, lease_problem
from .base import Lease

if TYPE_CHECKING:
    # Types only (the driver is an optional extra; see _postgres_pool).
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]

_log = library_logger("fallback_saga.store.postgres")

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


class Claims(StorePart):
    """A ``PostgresSagaStore``'s batch claim and give-backs (see the module
    docstring), held by the store (``_claims``)."""

    __slots__ = ("_forgetting", "_looks", "_sql")

    def __init__(self, store: FetchingStore) -> None:
        super().__init__(store)  # held weakly (StorePart)
        self._sql = store._sql
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
                self.forget_soon(locked, marker, owner, lease_seconds)
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

    def forget_soon(
        self, saga_ids: list[str], marker: str, owner: str, lease_seconds: float, *,
        by_id: bool = False,
    ) -> None:
        """``_forget_claim``, in a task of its own (the claimer — ``claim``,
        or ``Leases.claim_saga`` — is cancelled, or failing): finished, or
        given up, by ``close`` (``settle``)."""
        store = self._store
        if store._closed or store._pool is None:
            return
        # The store handed over: the give-back keeps it while it runs
        # (close() waits for it), however soon its caller drops it.
        task = asyncio.get_running_loop().create_task(
            self._forget_claim(store, list(saga_ids), marker, owner, lease_seconds, by_id=by_id))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget_claim(
        self, store: FetchingStore, saga_ids: list[str], marker: str, owner: str,
        lease_seconds: float, *, by_id: bool = False,
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
