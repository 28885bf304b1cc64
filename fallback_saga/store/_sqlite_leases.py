"""A SQLite saga store's recovery leases, in SQL: ``claim`` (interrupted
sagas, oldest first, parked ones left out: ``_parking``), ``claim_saga``,
``renew``, the give-backs (``release``, ``defer``) and the lease's state.
Each runs on the writer as ``op(cursor, txn, *args)`` (``_sqlite_sql``), and
refuses before writing anything. Every statement is parameterized."""

from __future__ import annotations

import math
import sqlite3
from typing import Final

from ..errors import CorruptSagaRecord, LeaseLost, SagaBusy, SagaNotFound
from ..log_lines import library_logger
from ._sqlite_rows import _is_time, _lenient_text, _not_text, _number, _shown_bytes, _unreadable
from ._sqlite_sql import _MAX_QUIET, _Txn
from ._sqlite_unknown_status import unknown_status_rows
from ._sqlite_unleasable import IN_FLIGHT, LARGEST_INTEGER, count_problem, lease_problem
from .base import Lease, LeaseState

_log = library_logger("fallback_saga.store.sqlite")

# --------------------------------------------------------------------------- SQL

_CLAIM_COLUMNS: Final = (
    "SELECT saga_id, fence, lease_expires_at, updated_at, unreleased_claims, lease_owner"
    " FROM sagas"
)
_CLAIM_DUE: Final = (
    # Never leased: due once not updated for older_than. Leased before: due as
    # soon as that lease expired or was released (a dead or departed worker's
    # saga does not wait for older_than on top of the lease).
    # A time that is text or a BLOB (SQLite orders both after every number,
    # so ">= ''" finds them; cheaper than typeof) is never due by those
    # comparisons: such a row is selected too, for _claim to report it (S12)
    # rather than to leave the saga unrecovered without a word.
    # A wall clock that stepped back must not strand a saga until it catches
    # up (a month, if it ran a month ahead): a last write, or a lease written,
    # more than older_than *ahead* of now was made before the step — due, as
    # one more than older_than behind is. (Stamps are taken under the write
    # lock, so on one machine none is ahead of a later claim's now but after a
    # step back; a forward step, likewise, makes sagas look older.)
    " WHERE status IN (?, ?)"
    # Parked (see _parking): claimed park_after times without the lease
    # given back. A claim_saga by id still leases it. A count that is no
    # integer (text, a BLOB, a REAL such as 5.5: count_problem) is selected,
    # for _claim to report it: "< ?" alone would leave the saga unclaimed
    # and unreported, neither parked nor recovered, while every reader
    # calls it corrupt. So is a count at the largest integer: no store
    # counts that far — written by another tool, it was left out as parked,
    # never reported. (typeof is read only for a row "< ?" leaves out: a
    # parked one, or such a count.)
    " AND (unreleased_claims < ? OR typeof(unreleased_claims) <> 'integer'"
    f" OR unreleased_claims >= {LARGEST_INTEGER})"
    " AND ((lease_expires_at IS NULL AND (updated_at < ? OR updated_at > ?))"
    " OR lease_expires_at <= ? OR lease_written_at > ?"
    " OR lease_expires_at >= '' OR updated_at >= ''"
    # A lease that expires at infinity (9e999 reads as it; another tool's
    # row) never expires: selected too, for _claim to report it (S12), as
    # every reader does — else the saga waited unrecovered without a word.
    " OR lease_expires_at >= 9e999"
    # Deferred (given back with a later expiry), if the claim asks for them too.
    " OR (? AND lease_owner IS NULL AND lease_expires_at IS NOT NULL))"
)
_OLDEST_FIRST: Final = " ORDER BY updated_at LIMIT ?"
# INDEXED BY (as _CLAIMABLE_OF_NAMES below): schema version 5's index by
# status alone (for listings) would serve it as well by the planner's
# estimate, but lacks updated_at: each saga in flight would be read from the
# table to test its age, where sagas_by_status answers from the index.
_CLAIMABLE: Final = (
    _CLAIM_COLUMNS + " INDEXED BY sagas_by_status" + _CLAIM_DUE + _OLDEST_FIRST
)
# A worker's claim: only the sagas it can resume (``claim(names=...)``), one
# placeholder per name (a worker knows a handful; no JSON1 needed). It walks
# sagas_by_status (the sagas in flight) and filters as it goes. INDEXED BY,
# because left to itself — once ANALYZE or PRAGMA optimize has run on the
# file — the planner took a full scan (or sagas_by_name: every saga of
# those names ever run, finished ones included): 13 ms a claim on a file of
# 100,000 finished sagas, against 0.1 ms (benchmarks/claim_by_name.py).
_OF_NAMES: Final = " AND saga_name IN ({})"
_CLAIMABLE_OF_NAMES: Final = (
    _CLAIM_COLUMNS + " INDEXED BY sagas_by_status" + _CLAIM_DUE + _OF_NAMES + _OLDEST_FIRST
)
# At most this many names go in as placeholders: a statement binds at most
# 999 variables before SQLite 3.32 (32,766 since; some builds more), and the
# claim binds 8 more. More names than that (a worker given hundreds of sagas)
# go in rows of a table of the writer's connection's own (TEMP: no other
# connection sees it, and the claim's transaction holds its rows), filled
# and emptied by the claim, instead of failing every claim with "too many
# SQL variables" — a worker that never resumes anything.
_NAMES_BOUND: Final = 500
_CLAIM_NAMES_TABLE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS fallback_saga_claim_names"
    " (saga_name TEXT PRIMARY KEY) WITHOUT ROWID"
)
_ADD_CLAIM_NAME: Final = "INSERT INTO temp.fallback_saga_claim_names VALUES (?)"
_CLEAR_CLAIM_NAMES: Final = "DELETE FROM temp.fallback_saga_claim_names"
_MANY_NAMES: Final = "SELECT saga_name FROM temp.fallback_saga_claim_names"
_CLAIMABLE_OF_MANY_NAMES: Final = _CLAIMABLE_OF_NAMES.format(_MANY_NAMES)
# A lease by id (claim_saga) is not counted. It clears the count of a
# finished saga (see _parking): its runs came to an end, whatever became of
# the give-back of the one that ended it; reopened (retry_unwinding of a
# FAILED saga), it counts afresh — else one crash of the retry parked a saga
# whose last claim's give-back had been lost at park_after.
_TAKE_LEASE: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, fence = ?, lease_written_at = ?,"
    " unreleased_claims = CASE WHEN status IN ('completed', 'compensated', 'failed') THEN 0"
    " ELSE unreleased_claims END WHERE saga_id = ?"
)
# A claim (not claim_saga) counts: see _parking.
_TAKE_COUNTED_LEASE: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, fence = ?, lease_written_at = ?,"
    " unreleased_claims = unreleased_claims + 1 WHERE saga_id = ?"
)
_LEASE_STATE: Final = (
    "SELECT fence, lease_owner, lease_expires_at, unreleased_claims FROM sagas WHERE saga_id = ?"
)
_LEASE_WRITTEN_AT: Final = "SELECT lease_written_at FROM sagas WHERE saga_id = ?"
# Only a lease still held: a renewal that lands after its lease was given back
# (released, deferred, handed off: no owner) — one the heartbeat had sent
# when its run ended — must not lease the saga again for a lease's length.
# Token 0 is a first run's, never claimed and so never given back: it may
# name its owner in its first renewal (a slow first run holding recovery off).
_RENEW: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, lease_written_at = ?"
    " WHERE saga_id = ? AND fence = ? AND (lease_owner IS NOT NULL OR fence = 0)"
)
_FENCE_OF: Final = "SELECT fence FROM sagas WHERE saga_id = ?"
# A release and a deferral are one statement: both end the lease at a time
# (now for a release, later for a deferral, which keeps the saga out of
# _CLAIMABLE until then; _claim_saga leases it at once). Expired rather than
# no lease, so a released saga is claimable at once. Given back in order: its
# claims count from 0 again (see _parking).
_GIVE_BACK: Final = (
    "UPDATE sagas SET lease_owner = NULL, lease_expires_at = ?, lease_written_at = ?,"
    " unreleased_claims = 0 WHERE saga_id = ? AND fence = ?"
)
# Given back by a holder that ran nothing of the saga (``ran=False``: a
# recover pass that was not given its name, a child its parent drives): the
# claim that took it is taken back from its count rather than clearing it —
# cleared, a crash loop was never parked while such passes ran; kept, their
# claims alone would park a saga (see _parking). Once only: a lease given
# back already (no owner: the fence stays until the next claim) is not
# taken back again.
_UNCOUNTED: Final = (
    " unreleased_claims = CASE WHEN lease_owner IS NULL THEN unreleased_claims"
    " ELSE MAX(unreleased_claims - 1, 0) END WHERE saga_id = ? AND fence = ?"
)
_GIVE_BACK_UNRUN: Final = (
    "UPDATE sagas SET lease_owner = NULL, lease_expires_at = ?, lease_written_at = ?,"
    + _UNCOUNTED
)

_INTERRUPTED: Final = IN_FLIGHT


def _claim(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    owner: str,
    lease_seconds: float,
    older_than: float,
    limit: int,
    deferred: bool,
    park_after: int,
    names: tuple[str, ...] | None = None,
    unknown_statuses: bool = False,
) -> Claimed:
    # The group's transaction is BEGIN IMMEDIATE: no other connection can
    # claim between this SELECT and the UPDATEs below.
    if names == ():
        return Claimed()  # no saga has a name out of none
    now = txn.now
    wanted = limit
    bound = names or ()
    if names is None:
        sql, named = _CLAIMABLE, ""
    elif len(names) <= _NAMES_BOUND:
        named = _OF_NAMES.format(", ".join("?" * len(names)))
        sql = _CLAIMABLE_OF_NAMES.format(", ".join("?" * len(names)))
    else:
        cursor.execute(_CLAIM_NAMES_TABLE)
        cursor.execute(_CLEAR_CLAIM_NAMES)
        cursor.executemany(_ADD_CLAIM_NAME, [(name,) for name in names])
        sql, bound, named = _CLAIMABLE_OF_MANY_NAMES, (), _OF_NAMES.format(_MANY_NAMES)
    while True:
        with _lenient_text(cursor):
            rows = cursor.execute(
                sql,
                (*_INTERRUPTED, park_after, now - older_than, now + older_than, now,
                 now + max(older_than, 0.0), 1 if deferred else 0, *bound, wanted),
            ).fetchall()
        claimable: list[tuple[str, int, int]] = []
        corrupt: list[tuple[object, str]] = []
        for saga_id, fence, expires_at, updated_at, claims, lease_owner in rows:
            # The readers show such a row as unreadable by the same predicate.
            problem = lease_problem(saga_id, fence, expires_at, updated_at, claims, lease_owner)
            if problem is None:
                claimable.append((saga_id, fence, claims))
            else:
                corrupt.append((saga_id, problem))
        # S12: a corrupt row is skipped, and must not take the place of a
        # saga that can be resumed: ask again for as many more as were corrupt
        # (rarely: one query when no row is corrupt).
        if len(claimable) >= limit or len(rows) < wanted:
            break
        wanted = limit + len(corrupt)
    if unknown_statuses:
        # Rows of a status no store writes: every reader refuses them, and
        # the query above (by status) never meets them (S12). Asked for by
        # whoever reports skipped rows only (SQLiteSagaStore.claim).
        corrupt += unknown_status_rows(cursor, named, bound, limit)
    if sql is _CLAIMABLE_OF_MANY_NAMES:
        cursor.execute(_CLEAR_CLAIM_NAMES)  # not kept between claims
    quiet = txn.quiet
    if len(quiet) > _MAX_QUIET:
        quiet.clear()
    skipped: list[tuple[str, str]] = []
    for saga_id, problem in corrupt:
        # ``skipped_saga``, and the claim's ``skipped``: for whoever reports
        # the pass (``recover``'s report): the id as a str, and why. Every
        # claim's, unlike the log line below.
        shown = saga_id if isinstance(saga_id, str) else _shown_bytes(saga_id)
        reason = f"its row is unreadable: {problem}"
        skipped.append((shown, reason))
        # Once per lease's length per row, as a worker warns of a saga it
        # skips: a corrupt row is never leased, so it is met again by every
        # claim — every worker's poll — and one line per poll says nothing more.
        if quiet.get(saga_id, -math.inf) > now:
            continue
        quiet[saga_id] = now + lease_seconds
        _log.warning(
            "skipping a saga in recovery: %s", _unreadable(saga_id, problem),
            extra={"skipped_saga": (shown, reason)},
        )
    expires_at = now + lease_seconds
    taken = claimable[:limit]
    leases = Claimed(Lease(saga_id, owner, fence + 1, expires_at, claims + 1)
                     for saga_id, fence, claims in taken)
    leases.skipped = tuple(skipped)
    cursor.executemany(
        _TAKE_COUNTED_LEASE,
        [(owner, expires_at, lease.token, now, lease.saga_id) for lease in leases],
    )
    return leases


class Claimed(list[Lease]):
    """A claim's leases, and the rows it skipped as corrupt (``skipped``:
    saga id, reason), which the store's ``claim`` reports on the event
    loop's side (``_skipped_rows``): this runs on the writer's thread, where
    the caller's context is not. A list still, for whatever gives a claim's
    leases back (``LeaseFuture.give_back``)."""

    skipped: tuple[tuple[str, str], ...] = ()


# The columns the claim judges a saga in flight by (_sqlite_unleasable).
_JUDGED: Final = (
    "SELECT status, fence, lease_expires_at, updated_at, unreleased_claims, lease_owner"
    " FROM sagas WHERE saga_id = ?"
)


def _claim_saga(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, owner: str, lease_seconds: float
) -> Lease:
    # A saga in flight the claim skips as corrupt is refused by id too, with
    # the readers' reason (S12): an updated_at that is text was leased (its
    # resume could not read it), other rows refused in other words.
    with _lenient_text(cursor):
        judged = cursor.execute(_JUDGED, (saga_id,)).fetchone()
    if judged is not None and judged[0] in IN_FLIGHT:
        fence, expires_at, updated_at, claims, holder = judged[1:]
        problem = lease_problem(saga_id, fence, expires_at, updated_at, claims, holder)
        if problem is not None:
            raise CorruptSagaRecord(saga_id, problem)
    fence, lease_owner, lease_expires_at, _ = _read_lease(cursor, saga_id)
    # A lease with no owner was given back (released, or deferred): free. So
    # is one written before the clock stepped back (see _CLAIMABLE): its
    # expiry is on the old scale.
    if lease_owner is not None and lease_expires_at is not None and (
        lease_expires_at >= txn.now
    ):
        (written_at,) = cursor.execute(_LEASE_WRITTEN_AT, (saga_id,)).fetchone()
        if not (_is_time(written_at) and written_at > txn.now):
            raise SagaBusy(saga_id, lease_owner, lease_expires_at)
    lease = Lease(saga_id, owner, fence + 1, txn.now + lease_seconds)
    cursor.execute(_TAKE_LEASE, (owner, lease.expires_at, lease.token, txn.now, saga_id))
    return lease


def _read_lease(
    cursor: sqlite3.Cursor, saga_id: str
) -> tuple[int, str | None, float | None, int]:
    """The fence, lease owner, expiry and unreleased claims of a saga,
    checked (``CorruptSagaRecord``)."""
    with _lenient_text(cursor):
        row = cursor.execute(_LEASE_STATE, (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    fence, owner, expires_at, claims = row
    problem = count_problem("fence", fence)
    if problem is not None:
        raise CorruptSagaRecord(saga_id, problem)
    problem = count_problem("unreleased_claims", claims)
    if problem is not None:  # (as claim reports it: the same row, the same word)
        raise CorruptSagaRecord(saga_id, problem)
    if owner is not None and not isinstance(owner, str):
        raise CorruptSagaRecord(saga_id, f"lease_owner is {_not_text(owner)}")
    if expires_at is not None:
        expires_at = _number(saga_id, "lease_expires_at", expires_at)
    return fence, owner, expires_at, claims


def _renew(
    cursor: sqlite3.Cursor, txn: _Txn, lease: Lease, lease_seconds: float
) -> Lease:
    # Neither the version nor updated_at moves: a heartbeat is not a transition
    # (the writer's memory of versions stays valid; listings keep the real age).
    expires_at = txn.now + lease_seconds
    params = (lease.owner, expires_at, txn.now, lease.saga_id, lease.token)
    if not cursor.execute(_RENEW, params).rowcount:
        if cursor.execute(_FENCE_OF, (lease.saga_id,)).fetchone() is None:
            raise SagaNotFound(lease.saga_id)
        raise LeaseLost(lease.saga_id, lease.token)
    return Lease(lease.saga_id, lease.owner, lease.token, expires_at)


def _release(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, token: int, ran: bool = True
) -> None:
    _give_back(cursor, txn.now, txn.now, saga_id, token, ran)


def _defer(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, token: int, seconds: float,
    ran: bool = True,
) -> None:
    _give_back(cursor, txn.now + seconds, txn.now, saga_id, token, ran)


def _give_back(
    cursor: sqlite3.Cursor, until: float, now: float, saga_id: str, token: int, ran: bool
) -> None:
    cursor.execute(_GIVE_BACK if ran else _GIVE_BACK_UNRUN, (until, now, saga_id, token))


def _lease_state(cursor: sqlite3.Cursor, txn: _Txn, saga_id: str) -> LeaseState:
    fence, owner, expires_at, claims = _read_lease(cursor, saga_id)
    return LeaseState(owner, expires_at, fence, claims)
