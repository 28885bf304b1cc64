"""What each request does to a SQLite saga store, in SQL: the statements,
the operations the store's threads run in a transaction, and the batched
writes that put a whole group of sagas' creates and appends in a few
multi-row statements (see ``sqlite``). Every statement is parameterized."""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from ..errors import (
    CorruptSagaRecord,
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaBusy,
    SagaNotFound,
    SagaStoreError,
)
from ..log_lines import library_logger
from ..status import SagaStatus
from ._common import (
    check_saga_id,
    encode_json,
    finite_seconds,
    saga_status,
    short_repr,
)
from ._listing_pages import ListingPages, UnreadableRow
from ._loop_waker import LoopWaker
from ._sqlite_rows import (
    _decode_record,
    _is_time,
    _lenient_text,
    _not_text,
    _number,
    _shown_bytes,
    _text,
    _unreadable,
)
from .base import (
    HistoryWindow,
    JournalEntry,
    Lease,
    LeaseState,
    SagaRecord,
    SagaSummary,
    window_start,
)

_log = library_logger("fallback_saga.store.sqlite")

# --------------------------------------------------------------------------- SQL

_INSERT_SAGA: Final = (
    "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
)
# Absent values are bound as a marker, never as None: sqlite3 binds None
# through its adaptation protocol (several attribute look-ups, with the GIL
# held), about as costly as the rest of a row. NULLIF turns the marker back
# into NULL. The marker of a text column is the integer 0, which no text
# equals (SQLite compares values of different storage classes as unequal);
# the marker of an absent fencing token (an int, 0 included) is ''.
_STEP_ROW: Final = "(?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), ?, NULLIF(?, 0))"
_INSERT_STEP: Final = (
    "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
    " attempt, error, at, result) VALUES " + _STEP_ROW
)
_STEP_WIDTH: Final = 11  # values per step row
# An append names the status in its SET clause only when it changes it (a
# saga's last write, mostly): SQLite rewrites every index on a column the SET
# clause names, whether the value changed or not — which indexes, it decides
# when it prepares the statement. Three indexes hold the status (the claim's,
# and the operator's listing and counts: _sqlite_schema); named in every
# append, the two of schema 5 were rewritten on each write of every saga, about
# a sixth of the writer thread's time (benchmarks/README.md, "The status in
# every append"). The status is the first value of both forms.
_SET_STATUS: Final = "UPDATE sagas SET status = ?,"
_KEEP_STATUS: Final = "UPDATE sagas SET"
_UPDATE_REST: Final = (
    " context = COALESCE(NULLIF(?, 0), context),"
    " version = version + 1, updated_at = ? WHERE saga_id = ?"
)
# [status changed?]: the statement, alone / of a known version / fenced too.
_UPDATE_SAGA: Final = (_KEEP_STATUS + _UPDATE_REST, _SET_STATUS + _UPDATE_REST)
_UPDATE_KNOWN: Final = tuple(sql + " AND version = ?" for sql in _UPDATE_SAGA)
_UPDATE_KNOWN_FENCED: Final = tuple(sql + " AND fence = ?" for sql in _UPDATE_KNOWN)
_SELECT_VERSION: Final = (
    "SELECT version, fence, (SELECT COALESCE(MAX(seq) + 1, 0) FROM saga_steps"
    " WHERE saga_id = ?) FROM sagas WHERE saga_id = ?"
)
_SELECT_SAGA: Final = (
    "SELECT saga_name, fingerprint, status, context, version, created_at, updated_at"
    " FROM sagas WHERE saga_id = ?"
)
_SELECT_STEPS: Final = (
    "SELECT seq, position, step, branch, action, status, attempt, error, at, result"
    " FROM saga_steps WHERE saga_id = ? ORDER BY seq"
)
_STEPS_WINDOW: Final = (
    "SELECT seq, position, step, branch, action, status, attempt, error, at, result"
    " FROM saga_steps WHERE saga_id = ? AND seq >= ? AND seq < ? ORDER BY seq"
)
_LAST_SEQ: Final = "SELECT MAX(seq) FROM saga_steps WHERE saga_id = ?"
_ACT_STEPS: Final = (
    "SELECT step FROM saga_steps WHERE saga_id = ? AND action = 'act'"
    " GROUP BY step ORDER BY MIN(seq)"
)
_SUMMARY_COLUMNS: Final = (
    "SELECT rowid, saga_id, saga_name, status, created_at, updated_at, lease_owner,"
    " lease_expires_at, unreleased_claims FROM sagas"
)
_NEWEST_FIRST: Final = " ORDER BY rowid DESC LIMIT ?"
_ROWID_OF: Final = "SELECT rowid FROM sagas WHERE saga_id = ?"
_COUNT_PREFIX: Final = "SELECT saga_name, status, COUNT(*) FROM sagas"
# The first and last rowid of the sagas created in a time window: the
# planner reads them from sagas_by_created alone (a covering index: it ends
# with the rowid). Not "INDEXED BY": a file whose index was dropped by hand
# still answers, by a scan (see _window).
_WINDOW_PREFIX: Final = "SELECT MIN(rowid), MAX(rowid) FROM sagas"
_COUNT_GROUPS: Final = " GROUP BY saga_name, status"
_STATUS_VALUES: Final = frozenset(status.value for status in SagaStatus)
_CLAIM_COLUMNS: Final = (
    "SELECT saga_id, fence, lease_expires_at, updated_at, unreleased_claims FROM sagas"
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
    # given back. A claim_saga by id still leases it. A count that is text
    # or a BLOB (after every number, as for the times below) is selected,
    # for _claim to report it: "< ?" alone would leave the saga unclaimed
    # and unreported, neither parked nor recovered.
    " AND (unreleased_claims < ? OR unreleased_claims >= '')"
    " AND ((lease_expires_at IS NULL AND (updated_at < ? OR updated_at > ?))"
    " OR lease_expires_at <= ? OR lease_written_at > ?"
    " OR lease_expires_at >= '' OR updated_at >= ''"
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
_CLAIMABLE_OF_NAMES: Final = (
    _CLAIM_COLUMNS + " INDEXED BY sagas_by_status" + _CLAIM_DUE + " AND saga_name IN ({})"
    + _OLDEST_FIRST
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
_CLAIMABLE_OF_MANY_NAMES: Final = _CLAIMABLE_OF_NAMES.format(
    "SELECT saga_name FROM temp.fallback_saga_claim_names"
)
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
_RENEW: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, lease_written_at = ?"
    " WHERE saga_id = ? AND fence = ?"
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
# A lease still held at ``?`` (now): given back, its owner is NULL.
_HELD: Final = "(lease_owner IS NOT NULL AND lease_expires_at > ?)"
# Finished sagas old enough to purge, leased or not: the FAILED ones a
# purge not asked to take them keeps; with _HELD, those a purge would take
# but for a lease that holds them (the ``purge`` command says how many).
_OLD_FINISHED: Final = (
    "SELECT count(*) FROM sagas WHERE status IN (?, ?, ?) AND updated_at < ?"
)
_OLD_FINISHED_HELD: Final = f"{_OLD_FINISHED} AND {_HELD}"
_PURGEABLE: Final = (
    "SELECT saga_id FROM sagas AS child WHERE status IN (?, ?, ?) AND updated_at < ?"
    # Not a child saga (SubSaga) while its parent is stored: unwinding a
    # parent unwinds its finished child from the child's own journal, so a
    # family goes parent first, then its children (the next batch), like
    # subsaga.parent_saga_id: the id up to its last "/" (rtrim cuts the
    # characters after it, replace() leaving every other character).
    " AND NOT (instr(saga_id, '/') > 0 AND EXISTS (SELECT 1 FROM sagas AS parent"
    " WHERE parent.saga_id = substr(rtrim(child.saga_id, replace(child.saga_id, '/', '')),"
    " 1, length(rtrim(child.saga_id, replace(child.saga_id, '/', ''))) - 1)))"
    # Nor while a lease holds it: an operator's ``retry-unwinding`` leases a
    # FAILED saga before it writes COMPENSATING, and a purge in between
    # deleted the saga it was unwinding. (An expiry that is no number reads
    # as held: a purge keeps what it cannot judge.)
    f" AND NOT {_HELD}"
    " LIMIT ?"
)
_PURGE_STEPS: Final = "DELETE FROM saga_steps WHERE saga_id = ?"
_PURGE_SAGA: Final = "DELETE FROM sagas WHERE saga_id = ?"

_INTERRUPTED: Final = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)
_FINISHED: Final = (
    SagaStatus.COMPLETED.value,
    SagaStatus.COMPENSATED.value,
    SagaStatus.FAILED.value,
)

def _context_json(saga_id: str, context: dict[str, Any]) -> str:
    if not isinstance(context, dict):
        raise TypeError(f"a saga context must be a dict, got {type(context).__name__}")
    try:
        return encode_json(context)
    except (TypeError, ValueError, RecursionError) as error:
        raise SagaStoreError(
            f"the context of saga {short_repr(saga_id)} cannot be stored as JSON: {error}"
        ) from error


# A lone surrogate: UTF-8 (SQLite's text) cannot encode it.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _storable(entries: Sequence[JournalEntry]) -> tuple[JournalEntry, ...]:
    """The entries, with any lone surrogate in an error text replaced: an
    exception's text is whatever the exception says, and must not make the
    journal write fail."""
    rows = tuple(entries)
    for entry in rows:  # a loop, not any(genexpr): this runs for every journal write
        error = entry[6]
        if error is not None and not error.isascii() and _SURROGATE.search(error):
            break
    else:
        return rows
    return tuple(
        e if e[6] is None else JournalEntry(*e[:6], _SURROGATE.sub("\ufffd", e[6]), *e[7:])
        for e in rows
    )


def _storable_plain(entries: Sequence[JournalEntry]) -> tuple[tuple[Any, ...], ...]:
    """``_storable``'s entries as plain 9-tuples (the status as its text), in
    one pass: what the writer process's pipe carries (marshal)."""
    rows = []
    for position, step, branch, action, status, attempt, error, at, result in entries:
        if error is not None and not error.isascii() and _SURROGATE.search(error):
            error = _SURROGATE.sub("\ufffd", error)
        rows.append((position, step, branch, action, str(status), attempt, error, at, result))
    return tuple(rows)


# --------------------------------------------------------------------------- operations
#
# Each runs on a store thread as ``op(cursor, txn, *args)``. A write operation
# raises its ``SagaStoreError`` refusals *before* writing anything: the group
# it shares a transaction with commits without it.


class _Request(NamedTuple):
    """An operation of this module and its arguments, for a worker to run
    (``_sqlite_workers``), and the future to resolve on ``loop`` with its
    outcome (through ``waker``, the loop's, when it has one).
    """

    op: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    write: bool
    waker: LoopWaker | None = None


class _Txn:
    """One group's transaction: its timestamp, and the step rows of the whole
    group, inserted by a few multi-row INSERTs just before the commit (or
    earlier, when an append reads a saga's truth: see ``_append``). ``rows``
    holds their values end to end, ``_STEP_WIDTH`` a row, absent ones as
    their markers (see ``_STEP_ROW``): the parameters of those INSERTs.

    ``known`` is the writer's memory across groups: ``saga_id -> (version,
    next seq)`` as of its own last write of the saga. An append then needs
    no ``MAX(seq)`` query: it updates the saga *on condition* that the
    version is still the remembered one, and only when it is not (another
    process wrote the saga, a transaction rolled back) reads the truth.

    ``quiet`` is the writer's memory of the corrupt rows ``claim`` has
    reported: ``saga id as read -> time until which it is not reported
    again`` (see ``_claim``).
    """

    __slots__ = ("known", "now", "quiet", "rows")

    def __init__(
        self,
        now: float,
        known: dict[str, tuple[int, int]],
        quiet: dict[object, float] | None = None,
    ) -> None:
        self.now = now
        self.known = known
        self.quiet: dict[object, float] = {} if quiet is None else quiet
        self.rows: list[Any] = []

    def add(self, saga_id: str, start: int, entries: tuple[JournalEntry, ...]) -> None:
        # str(status): a plain str binds without sqlite3's adaptation lookup.
        rows = self.rows
        seq = start
        for position, step, branch, action, status, attempt, error, at, result in entries:
            rows += (
                saga_id, seq, position, step, branch, action, str(status), attempt,
                0 if error is None else error, at, 0 if result is None else result,
            )
            seq += 1

    def flush(self, cursor: sqlite3.Cursor) -> None:
        values = self.rows
        if not values:
            return
        self.rows = []
        count = len(values) // _STEP_WIDTH
        if count == 1:
            cursor.execute(_INSERT_STEP, values)
            return
        if not _BATCHED:
            cursor.executemany(_INSERT_STEP, [
                values[at:at + _STEP_WIDTH] for at in range(0, len(values), _STEP_WIDTH)
            ])
            return
        # Multi-row INSERTs: a handful of statements for the whole group
        # rather than one sqlite3 step (and one GIL release and re-take, with
        # the event loop's thread in between) per row.
        done = 0
        for size in _chunk_sizes(count):
            cursor.execute(
                _insert_steps_sql(size), values[done:done + size * _STEP_WIDTH]
            )
            done += size * _STEP_WIDTH


# Remembered sagas beyond this are forgotten (at a group's start): sagas that
# stopped without reaching a final status must not grow the memory forever.
_MAX_KNOWN: Final = 100_000
# Corrupt rows remembered as reported beyond this are forgotten (and so
# reported again): a file of damaged rows must not grow the memory forever.
_MAX_QUIET: Final = 10_000


# --------------------------------------------------------------------------- batched writes
#
# With many sagas in flight a group holds many creates and appends. Run one
# by one, each is a statement (and each step of it a release and re-take of
# the GIL, which the event loop's thread is waiting for); batched, the group's
# creates are a few multi-row INSERTs and its appends a few UPDATE ... FROM
# (VALUES ...): SQLite does the same work, with the GIL released throughout.
# Requests are batched in segments of distinct sagas (order within a segment
# cannot matter); a saga met twice, or any other operation, ends a segment.
# A batched statement is all or nothing for its chunk: a create that finds its
# id taken, an append whose remembered version or fencing token is no longer
# the saga's, make the chunk's statement fail (and write nothing), and that
# chunk's requests are then run one by one, each refused or written alone.

# UPDATE ... FROM needs SQLite 3.33; older libraries run every request alone.
_BATCHED: Final = sqlite3.sqlite_version_info >= (3, 33, 0)

# Chunk sizes: a few statement texts (each prepared once, then cached by the
# connection), at most 64 rows (11 values each: under SQLite's old default
# limit of 999 parameters).
_CHUNK: Final = 64


def _chunk_sizes(count: int) -> list[int]:
    sizes = [_CHUNK] * (count // _CHUNK)
    rest = count % _CHUNK
    size = _CHUNK // 2
    while rest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    return sizes


_SQL_CACHE: dict[tuple[str, int] | tuple[str, int, bool], str] = {}


def _insert_steps_sql(rows: int) -> str:
    sql = _SQL_CACHE.get(("steps", rows))
    if sql is None:
        sql = _SQL_CACHE["steps", rows] = (
            "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
            " attempt, error, at, result) VALUES " + ",".join([_STEP_ROW] * rows)
        )
    return sql


def _insert_sagas_sql(rows: int) -> str:
    sql = _SQL_CACHE.get(("sagas", rows))
    if sql is None:
        sql = _SQL_CACHE["sagas", rows] = (
            "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
            " created_at, updated_at) VALUES " + ",".join(["(?, ?, ?, ?, ?, 1, ?, ?)"] * rows)
        )
    return sql


def _update_sagas_sql(rows: int, status_changed: bool) -> str:
    # version: NOT NULL, so a saga whose version (or fencing token, when one
    # is given) is not the remembered one fails the whole statement. The
    # status is named only by the statement of the sagas whose status
    # changes: see _SET_STATUS.
    sql = _SQL_CACHE.get(("update", rows, status_changed))
    if sql is None:
        sql = _SQL_CACHE["update", rows, status_changed] = (
            ("UPDATE sagas SET status = v.column2," if status_changed else "UPDATE sagas SET")
            + " context = COALESCE(NULLIF(v.column3, 0), context),"
            " version = CASE WHEN sagas.version = v.column4"
            " AND (v.column5 = '' OR sagas.fence = v.column5)"
            " THEN sagas.version + 1 END, updated_at = ?"
            " FROM (VALUES " + ",".join(["(?, ?, ?, ?, ?)"] * rows) + ") AS v"
            " WHERE sagas.saga_id = v.column1"
        )
    return sql


def _run_group(
    cursor: sqlite3.Cursor, txn: _Txn, requests: list[_Request], outcomes: list[Any]
) -> None:
    """Every request of a group, in order, creates and appends batched in
    segments of distinct sagas; ``outcomes[i]`` becomes ``(request,
    succeeded, result or refusal)`` for ``requests[i]``."""
    segment: list[int] = []
    sagas: set[str] = set()
    for index, request in enumerate(requests):
        op = request.op
        if op is _create or op is _append:
            saga_id = request.args[0]
            if saga_id not in sagas:
                segment.append(index)
                sagas.add(saga_id)
                continue
        if segment:
            _run_segment(cursor, txn, requests, segment, outcomes)
            segment, sagas = [], set()
        if op is _create or op is _append:  # a saga met again: the next segment
            segment.append(index)
            sagas.add(request.args[0])
        else:
            _run_alone(cursor, txn, requests, [index], outcomes)
    if segment:
        _run_segment(cursor, txn, requests, segment, outcomes)


def _run_segment(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    requests: list[_Request],
    segment: list[int],
    outcomes: list[Any],
) -> None:
    """Creates and appends of distinct sagas (``requests[i]`` for ``i`` in
    ``segment``), batched."""
    known = txn.known
    creates: list[int] = []
    # The appends that keep their saga's status, and those that change it:
    # one statement each (see _SET_STATUS).
    keeping: list[int] = []
    changing: list[int] = []
    for index in segment:
        request = requests[index]
        if request.op is _create:
            creates.append(index)
            continue
        saga_id, _entries, status, _context, _token, after = request.args
        remembered = known.get(saga_id)
        if remembered is None or (after is not None and remembered[1] != after):
            _run_alone(cursor, txn, requests, [index], outcomes)
        elif status is None:
            keeping.append(index)
        else:
            changing.append(index)
    now = txn.now
    done = 0
    for size in _chunk_sizes(len(creates)):
        chunk = creates[done:done + size]
        done += size
        params: list[Any] = []
        for index in chunk:
            saga_id, saga_name, fingerprint, status, context, _entries = requests[index].args
            params += (saga_id, saga_name, fingerprint, status, context, now, now)
        try:
            cursor.execute(_insert_sagas_sql(size), params)
        except sqlite3.IntegrityError:  # an id is taken: the statement wrote nothing
            _run_alone(cursor, txn, requests, chunk, outcomes)
            continue
        for index in chunk:
            request = requests[index]
            saga_id, _name, _fingerprint, status, _context, entries = request.args
            if entries:
                txn.add(saga_id, 0, entries)
            if status not in _FINISHED:
                known[saga_id] = (1, len(entries))
            outcomes[index] = (request, True, None)
    if keeping:
        _update_segment(cursor, txn, requests, keeping, outcomes, False)
    if changing:
        _update_segment(cursor, txn, requests, changing, outcomes, True)


def _update_segment(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    requests: list[_Request],
    appends: list[int],
    outcomes: list[Any],
    status_changed: bool,
) -> None:
    """Appends of distinct sagas of known versions (``requests[i]`` for ``i``
    in ``appends``), each keeping its saga's status or each changing it
    (``status_changed``), batched."""
    known = txn.known
    now = txn.now
    done = 0
    for size in _chunk_sizes(len(appends)):
        chunk = appends[done:done + size]
        done += size
        params: list[Any] = [now]
        for index in chunk:
            saga_id, _entries, status, context, token, _after = requests[index].args
            params += (  # absent values as their markers: see _STEP_ROW
                saga_id,
                0 if status is None else status,
                0 if context is None else context,
                known[saga_id][0],
                "" if token is None else token,
            )
        try:
            updated = cursor.execute(_update_sagas_sql(size, status_changed), params).rowcount
        except sqlite3.IntegrityError:  # a version or a token moved: nothing written
            _run_alone(cursor, txn, requests, chunk, outcomes)
            continue
        if updated != size:
            # Sagas gone (another process purged them): every saga still
            # here was written; the others are SagaNotFound, as alone.
            ids = [requests[index].args[0] for index in chunk]
            marks = ",".join("?" * len(ids))
            present = {
                row[0] for row in
                cursor.execute(f"SELECT saga_id FROM sagas WHERE saga_id IN ({marks})", ids)
            }
        for index in chunk:
            request = requests[index]
            saga_id, entries, status, _context, _token, _after = request.args
            if updated != size and saga_id not in present:
                known.pop(saga_id, None)
                outcomes[index] = (request, False, SagaNotFound(saga_id))
                continue
            version, start = known[saga_id]
            if entries:
                txn.add(saga_id, start, entries)
            if status in _FINISHED:
                del known[saga_id]
            else:
                known[saga_id] = (version + 1, start + len(entries))
            outcomes[index] = (request, True, None)


def _run_alone(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    requests: list[_Request],
    indexes: list[int],
    outcomes: list[Any],
) -> None:
    for index in indexes:
        request = requests[index]
        try:
            outcomes[index] = (request, True, request.op(cursor, txn, *request.args))
        except SagaStoreError as refused:  # raised before it wrote anything
            # Without its traceback, nor its context's (the driver's error it
            # replaced, kept for its message): they hold this frame, which
            # holds ``outcomes`` and so the refusal (a reference cycle, left
            # for the collector).
            if refused.__context__ is not None:
                refused.__context__.__traceback__ = None
            outcomes[index] = (request, False, refused.with_traceback(None))


def _create(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    saga_id: str,
    saga_name: str,
    fingerprint: str,
    status: str,
    context: str,
    entries: tuple[JournalEntry, ...],
) -> None:
    now = txn.now
    try:
        cursor.execute(_INSERT_SAGA, (saga_id, saga_name, fingerprint, status, context, now, now))
    except sqlite3.IntegrityError as error:
        if getattr(error, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_PRIMARYKEY":
            raise SagaAlreadyExists(saga_id) from None
        raise
    if entries:
        txn.add(saga_id, 0, entries)
    if status not in _FINISHED:
        txn.known[saga_id] = (1, len(entries))


def _append(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    saga_id: str,
    entries: tuple[JournalEntry, ...],
    status: str | None,
    context: str | None,
    token: int | None,
    after: int | None,
) -> None:
    now = txn.now
    known = txn.known.get(saga_id)
    if known is not None and after is not None and known[1] != after:
        known = None  # read the truth: it may be another writer's, or ours landed late
    updated = 0
    # An absent context as its marker (see _STEP_ROW); the status is named
    # only when it changes (see _SET_STATUS).
    context_value = 0 if context is None else context
    values: tuple[Any, ...] = (
        (context_value, now, saga_id) if status is None else (status, context_value, now, saga_id)
    )
    changed = status is not None
    if known is not None:
        version, start = known
        if token is None:
            updated = cursor.execute(_UPDATE_KNOWN[changed], (*values, version)).rowcount
        else:
            updated = cursor.execute(
                _UPDATE_KNOWN_FENCED[changed], (*values, version, token)
            ).rowcount
    if not updated:
        # The truth includes this group's earlier transitions: they are
        # inserted now, not at the end (a saga appended twice in one group,
        # the second time after= a count that the first made wrong).
        txn.flush(cursor)
        row = cursor.execute(_SELECT_VERSION, (saga_id, saga_id)).fetchone()
        if row is None:
            raise SagaNotFound(saga_id)
        version, fence, start = row
        if token is not None and fence != token:
            raise LeaseLost(saga_id, token)
        if after is not None and start != after:
            raise JournalConflict(saga_id, after, start)
        # The group holds the write lock: nobody can change the row in between.
        cursor.execute(_UPDATE_SAGA[changed], values)
    if entries:
        txn.add(saga_id, start, entries)
    if status in _FINISHED:
        txn.known.pop(saga_id, None)
    else:
        txn.known[saga_id] = (version + 1, start + len(entries))


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
) -> list[Lease]:
    # The group's transaction is BEGIN IMMEDIATE: no other connection can
    # claim between this SELECT and the UPDATEs below.
    if names == ():
        return []  # no saga has a name out of none
    now = txn.now
    wanted = limit
    bound = names or ()
    if names is None:
        sql = _CLAIMABLE
    elif len(names) <= _NAMES_BOUND:
        sql = _CLAIMABLE_OF_NAMES.format(", ".join("?" * len(names)))
    else:
        cursor.execute(_CLAIM_NAMES_TABLE)
        cursor.execute(_CLEAR_CLAIM_NAMES)
        cursor.executemany(_ADD_CLAIM_NAME, [(name,) for name in names])
        sql, bound = _CLAIMABLE_OF_MANY_NAMES, ()
    while True:
        with _lenient_text(cursor):
            rows = cursor.execute(
                sql,
                (*_INTERRUPTED, park_after, now - older_than, now + older_than, now,
                 now + max(older_than, 0.0), 1 if deferred else 0, *bound, wanted),
            ).fetchall()
        claimable: list[tuple[str, int, int]] = []
        corrupt: list[tuple[object, str]] = []
        for saga_id, fence, expires_at, updated_at, claims in rows:
            problem = _claim_problem(saga_id, fence, expires_at, updated_at)
            if problem is None and type(claims) is not int:
                problem = "its unreleased_claims is not an integer"
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
    if sql is _CLAIMABLE_OF_MANY_NAMES:
        cursor.execute(_CLEAR_CLAIM_NAMES)  # not kept between claims
    quiet = txn.quiet
    if len(quiet) > _MAX_QUIET:
        quiet.clear()
    for saga_id, problem in corrupt:
        # Once per lease's length per row, as a worker warns of a saga it
        # skips: a corrupt row is never leased, so it is met again by every
        # claim — every worker's poll — and one line per poll says nothing more.
        if quiet.get(saga_id, -math.inf) > now:
            continue
        quiet[saga_id] = now + lease_seconds
        # ``skipped_saga``: for whoever reports the pass (``recover`` on the
        # command line lists it as skipped): the id as a str, and why.
        shown = saga_id if isinstance(saga_id, str) else _shown_bytes(saga_id)
        _log.warning(
            "skipping a saga in recovery: %s", _unreadable(saga_id, problem),
            extra={"skipped_saga": (shown, f"its row is unreadable: {problem}")},
        )
    expires_at = now + lease_seconds
    taken = claimable[:limit]
    leases = [Lease(saga_id, owner, fence + 1, expires_at, claims + 1)
              for saga_id, fence, claims in taken]
    cursor.executemany(
        _TAKE_COUNTED_LEASE,
        [(owner, expires_at, lease.token, now, lease.saga_id) for lease in leases],
    )
    return leases


def _claim_problem(
    saga_id: object, fence: object, expires_at: object, updated_at: object
) -> str | None:
    """Why a claimable row cannot be leased (and resumed), or ``None``."""
    if type(fence) is not int:
        return "its fence is not an integer"
    if not _is_time(updated_at) or not (expires_at is None or _is_time(expires_at)):
        return "its updated_at or lease_expires_at is not a finite number"
    if not isinstance(saga_id, str):
        return f"its saga id is {_not_text(saga_id)}"
    try:
        check_saga_id(saga_id)
    except ValueError as bad:
        return f"its saga id is not one a saga can have ({bad})"
    return None


def _claim_saga(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, owner: str, lease_seconds: float
) -> Lease:
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
    if type(fence) is not int:
        raise CorruptSagaRecord(saga_id, "its fence is not an integer")
    if type(claims) is not int:
        raise CorruptSagaRecord(saga_id, "its unreleased_claims is not an integer")
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


def _purge(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    older_than: float,
    limit: int,
    cutoff: float | None,
    statuses: tuple[str, ...],
) -> tuple[int, float, bool]:
    """One batch of a purge: up to ``limit`` sagas with one of ``statuses``
    (final ones, at least one) last updated before ``cutoff`` (the first
    batch's ``now - older_than`` when ``None``), with their history; how
    many, the cutoff for the next batch, and whether a saga purged left child
    sagas behind (which the next batch may take)."""
    txn.flush(cursor)  # the steps written earlier in this group go too
    txn.known.clear()
    if cutoff is None:
        cutoff = txn.now - older_than
    # _PURGEABLE's three placeholders: fewer statuses are repeated to fill them.
    chosen = (statuses * 3)[:3]
    ids = cursor.execute(_PURGEABLE, (*chosen, cutoff, txn.now, limit)).fetchall()
    cursor.executemany(_PURGE_STEPS, ids)
    cursor.executemany(_PURGE_SAGA, ids)
    # A short batch is the last, unless it purged the parent of a child
    # (kept while its parent was there) that is purgeable now.
    orphaned = len(ids) < limit and bool(ids) and (
        cursor.execute(_PURGEABLE, (*chosen, cutoff, txn.now, 1)).fetchone() is not None
    )
    return len(ids), cutoff, orphaned


def _old_finished(
    cursor: sqlite3.Cursor, txn: _Txn, older_than: float, statuses: tuple[str, ...],
    held: bool,
) -> int:
    """How many sagas with one of ``statuses`` (final ones) were last updated
    more than ``older_than`` seconds ago: all, or (``held``) those a lease
    holds (``purge`` keeps them)."""
    chosen = (statuses * 3)[:3]
    cutoff = txn.now - older_than
    if held:
        (count,) = cursor.execute(_OLD_FINISHED_HELD, (*chosen, cutoff, txn.now)).fetchone()
    else:
        (count,) = cursor.execute(_OLD_FINISHED, (*chosen, cutoff)).fetchone()
    return int(count)


def _ping(cursor: sqlite3.Cursor, txn: _Txn) -> None:
    """A no-op that makes the store thread open the database."""


def _load(cursor: sqlite3.Cursor, txn: _Txn, saga_id: str) -> SagaRecord:
    try:
        row, steps = _read_saga(cursor, saga_id)
    except sqlite3.OperationalError:
        # Text that is not UTF-8 (another tool wrote it, or a page is
        # damaged): sqlite3's error quotes it, and it may be part of a
        # context. Read it again as bytes; _decode_record names the column.
        # (Only then: decoding every text in Python would slow each load.)
        with _lenient_text(cursor):
            row, steps = _read_saga(cursor, saga_id)
    return _decode_record(saga_id, row, steps)


def _load_window(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, start: int, count: int
) -> HistoryWindow:
    """The saga with ``count`` journal entries from ``start`` (negative:
    from the end): the rows of the window only, by the primary key, and
    the journal's length from its last seq (the store writes seqs 0, 1, ...)."""
    def read() -> tuple[Any, int, int, list[Any], list[Any]]:
        row = cursor.execute(_SELECT_SAGA, (saga_id,)).fetchone()
        if row is None:
            raise SagaNotFound(saga_id)
        (last,) = cursor.execute(_LAST_SEQ, (saga_id,)).fetchone()
        if last is not None and type(last) is not int:
            raise CorruptSagaRecord(saga_id, "a transition's seq is not an integer")
        entries = 0 if last is None else last + 1
        first = window_start(start, entries)
        steps = cursor.execute(_STEPS_WINDOW, (saga_id, first, first + max(count, 0))).fetchall()
        return row, first, entries, steps, cursor.execute(_ACT_STEPS, (saga_id,)).fetchall()

    try:
        row, first, entries, steps, acts = read()
    except sqlite3.OperationalError:
        with _lenient_text(cursor):  # as _load
            row, first, entries, steps, acts = read()
    record = _decode_record(saga_id, row, steps)
    # (A name that is no text is left to the rows that hold it: see _decode_record.)
    names = tuple(name for (name,) in acts if isinstance(name, str))
    return HistoryWindow(record, first, entries, names)


def _read_saga(cursor: sqlite3.Cursor, saga_id: str) -> tuple[Any, list[Any]]:
    row = cursor.execute(_SELECT_SAGA, (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    return row, cursor.execute(_SELECT_STEPS, (saga_id,)).fetchall()


def _list(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    status: str | None,
    saga_name: str | None,
    limit: int,
    before: str | None = None,
    created_since: float | None = None,
    created_until: float | None = None,
) -> list[SagaSummary]:
    # The WHERE clause is made of fixed fragments; every value is a parameter.
    where, params = _listing_filter(saga_name, created_since, created_until)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    below: int | None = None  # the rowid the listing goes on below
    if before is not None:
        # A cursor by id, resolved to its place in the listing's order.
        cursor_row = cursor.execute(_ROWID_OF, (before,)).fetchone()
        if cursor_row is None:
            raise SagaNotFound(before)
        below = cursor_row[0]
    # A window of most sagas is walked as it was: the walk reads at most the
    # sagas created after it, then those before it (few), where the bounds
    # would read most of the index.
    span = (
        None
        if (created_since is None and created_until is None)
        or _covers_most(cursor, created_since, created_until)
        else _window(cursor, created_since, created_until)
    )
    if span is _EMPTY:
        return []
    if span is not None:
        where.append("rowid BETWEEN ? AND ?")
        params.extend(span)
    pages = ListingPages(limit, below, _log)
    while pages.wanted:
        conditions = [*where, "rowid < ?"] if pages.below is not None else where
        clause = " WHERE " + " AND ".join(conditions) if conditions else ""
        query = _SUMMARY_COLUMNS + clause + _NEWEST_FIRST
        values = (
            (*params, pages.below, pages.chunk)
            if pages.below is not None
            else (*params, pages.chunk)
        )
        with _lenient_text(cursor):
            rows = cursor.execute(query, values).fetchall()
        pages.take(rows, _listed)
    return pages.summaries


_EMPTY: Final = (0, -1)  # no saga was created in the window


def _window(
    cursor: sqlite3.Cursor, created_since: float | None, created_until: float | None
) -> tuple[int, int] | None:
    """The first and last rowid of the sagas created in the window (``None``:
    no window; ``_EMPTY``: none in it), read from ``sagas_by_created`` alone.

    Rowids follow the order sagas were created in, and so, but for a clock
    that stepped back, does created_at: the rows between the two are about
    the window's own. A listing or count then reads those (``rowid
    BETWEEN``, filtering by created_at as before: exact whatever the clock
    did) instead of walking past every saga newer than the window, or
    reading every row for its created_at. The bounds cost a walk of the
    window's entries in the index (no row is read)."""
    if created_since is None and created_until is None:
        return None
    where: list[str] = []
    params: list[float] = []
    if created_since is not None:
        where.append("created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        where.append("created_at < ?")
        params.append(created_until)
    low, high = cursor.execute(
        _WINDOW_PREFIX + " WHERE " + " AND ".join(where), params
    ).fetchone()
    if low is None:
        return _EMPTY
    return int(low), int(high)


def _listed(row: Sequence[Any]) -> SagaSummary:
    if not isinstance(row[1], str):
        raise UnreadableRow(_unreadable(row[1], f"the saga id is {_not_text(row[1])}"))
    return _summary(*row[1:])


def _summary(
    saga_id: object,
    name: object,
    status: object,
    created_at: object,
    updated_at: object,
    owner: object,
    expires_at: object,
    claims: object = 0,
) -> SagaSummary:
    """A listing's row, every value checked: what is handed out is what the
    types say (``CorruptSagaRecord`` otherwise)."""
    assert isinstance(saga_id, str)  # checked by the caller
    if owner is not None and not isinstance(owner, str):
        raise CorruptSagaRecord(saga_id, f"lease_owner is {_not_text(owner)}")
    return SagaSummary(
        saga_id=saga_id,
        saga_name=_text(saga_id, "saga_name", name),
        status=saga_status(saga_id, status),
        created_at=_number(saga_id, "created_at", created_at),
        updated_at=_number(saga_id, "updated_at", updated_at),
        lease_owner=owner,
        # A released lease keeps its release time as the expiry (the saga is
        # claimable at once); it is no lease to show.
        lease_expires_at=(
            None
            if owner is None or expires_at is None
            else _number(saga_id, "lease_expires_at", expires_at)
        ),
        # Not a number: shown as none (the claims skip such a row: see _claim).
        unreleased_claims=claims if type(claims) is int else 0,
    )


def _optional_time(name: str, value: float | None) -> float | None:
    return None if value is None else finite_seconds(name, value)


def _listing_filter(
    saga_name: str | None, created_since: float | None, created_until: float | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if saga_name is not None:
        where.append("saga_name = ?")
        params.append(saga_name)
    # "+created_at": not from sagas_by_created. The window's rows are found
    # by rowid (_window); the index would have the rows read in its order,
    # then sorted by rowid, or looked up one by one for a count.
    if created_since is not None:
        where.append("+created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        where.append("+created_at < ?")
        params.append(created_until)
    return where, params


def _count(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
    at_most: int | None = None,
) -> dict[tuple[str, SagaStatus], int]:
    if at_most is not None:
        groups = _capped_groups(cursor, saga_name, created_since, created_until, at_most)
    elif (created_since is not None or created_until is not None) and _covers_most(
        cursor, created_since, created_until
    ):
        # A window of most sagas: every saga, from sagas_by_name_status alone,
        # less those created outside it (the few rows read).
        # (One read transaction: the parts add up.)
        groups = _groups(cursor, saga_name, None, None)
        outside = []
        if created_since is not None:
            outside.append(_groups(cursor, saga_name, None, created_since))
        if created_until is not None:
            outside.append(_groups(cursor, saga_name, created_until, None))
        for part in outside:
            for key, count in part.items():
                groups[key] = groups.get(key, 0) - count
    else:
        groups = _groups(cursor, saga_name, created_since, created_until)
    counts: dict[tuple[str, SagaStatus], int] = {}
    for (name, status), count in groups.items():
        if count <= 0:
            continue
        if not isinstance(name, str) or status not in _STATUS_VALUES:
            # Unreadable rows are left out, as from a listing.
            _log.warning(
                "leaving %d saga(s) out of the counts: name %s, status %s",
                count, short_repr(name), short_repr(status),
            )
            continue
        counts[name, SagaStatus(status)] = count
    return counts


def _windowed_filter(
    cursor: sqlite3.Cursor,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
) -> tuple[list[str], list[Any]] | None:
    """A listing's filter (``_listing_filter``) with the window's rowids
    (``_window``) as a range the indexes can use; None when no saga was
    created in the window."""
    where, params = _listing_filter(saga_name, created_since, created_until)
    span = _window(cursor, created_since, created_until)
    if span is _EMPTY:
        return None
    if span is not None:
        where.append("rowid BETWEEN ? AND ?")
        params.extend(span)
    return where, params


def _groups(
    cursor: sqlite3.Cursor,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
) -> dict[tuple[Any, Any], int]:
    """Sagas by (name, status) as stored, in the window (see ``_window``)."""
    found = _windowed_filter(cursor, saga_name, created_since, created_until)
    if found is None:
        return {}
    where, params = found
    clause = " WHERE " + " AND ".join(where) if where else ""
    with _lenient_text(cursor):
        rows = cursor.execute(_COUNT_PREFIX + clause + _COUNT_GROUPS, params).fetchall()
    return {(name, status): count for name, status, count in rows}


def _capped_groups(
    cursor: sqlite3.Cursor,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
    at_most: int,
) -> dict[tuple[Any, Any], int]:
    """``_groups``, each status's sagas read up to ``at_most + 1`` (one
    statement a status, its index and the window's rowids: a rare status
    is not looked for among the others' rows)."""
    found = _windowed_filter(cursor, saga_name, created_since, created_until)
    if found is None:
        return {}
    where, params = found
    groups: dict[tuple[Any, Any], int] = {}
    for status in SagaStatus:
        statement = (
            "SELECT saga_name, COUNT(*) FROM (SELECT saga_name FROM sagas WHERE "
            + " AND ".join(["status = ?", *where])
            + " LIMIT ?) GROUP BY saga_name"
        )
        with _lenient_text(cursor):
            rows = cursor.execute(statement, [status.value, *params, at_most + 1]).fetchall()
        for name, count in rows:
            groups[name, status.value] = count
    return groups


# The first and last creation time of all sagas: two reads of sagas_by_created.
_CREATED_SPAN: Final = (
    "SELECT (SELECT MIN(created_at) FROM sagas), (SELECT MAX(created_at) FROM sagas)"
)


def _covers_most(
    cursor: sqlite3.Cursor, created_since: float | None, created_until: float | None
) -> bool:
    """Whether the window likely holds most sagas: it spans more than half
    the time between the first saga and the last. A guess (sagas are not
    created evenly), which decides only what is read: a window's own rows
    (``_window``), or the rows outside it — the fewer, when the guess is right."""
    first, last = cursor.execute(_CREATED_SPAN).fetchone()
    if not (isinstance(first, float | int) and isinstance(last, float | int)) or last <= first:
        return False  # no sagas, one instant, or a time that is no number (S12)
    since = first if created_since is None else max(first, created_since)
    until = last if created_until is None else min(last, created_until)
    return (until - since) * 2 > last - first


def _lease_state(cursor: sqlite3.Cursor, txn: _Txn, saga_id: str) -> LeaseState:
    fence, owner, expires_at, claims = _read_lease(cursor, saga_id)
    return LeaseState(owner, expires_at, fence, claims)


# Ids a query asks about at once: below SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
_IDS_A_QUERY: Final = 500


def _existing_ids(cursor: sqlite3.Cursor, txn: _Txn, saga_ids: list[str]) -> set[str]:
    """Which of ``saga_ids`` (checked ids) the file holds: a query per
    ``_IDS_A_QUERY`` ids, in one read transaction."""
    found: set[str] = set()
    for start in range(0, len(saga_ids), _IDS_A_QUERY):
        chunk = saga_ids[start : start + _IDS_A_QUERY]
        marks = ",".join("?" * len(chunk))
        with _lenient_text(cursor):
            rows = cursor.execute(
                f"SELECT saga_id FROM sagas WHERE saga_id IN ({marks})", chunk
            ).fetchall()
        found.update(saga_id for (saga_id,) in rows if isinstance(saga_id, str))
    return found
