"""A SQLite saga store's journal writes, in SQL: the requests its threads
run (``_Request``), the transaction a group of them shares (``_Txn``), and
the creates and appends, which put a whole group of sagas' writes in a few
multi-row statements (see ``sqlite``). Every statement is parameterized.

The other requests' SQL is by concept: ``_sqlite_reads`` (loads, listings,
counts), ``_sqlite_leases`` (recovery's claims and leases) and
``_sqlite_purge`` (retention); each imports this module, never the reverse."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from ..errors import JournalConflict, LeaseLost, SagaAlreadyExists, SagaNotFound, SagaStoreError
from ..status import SagaStatus
from ._common import encode_json, short_repr
from ._loop_waker import LoopWaker
from .base import JournalEntry

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


def _ping(cursor: sqlite3.Cursor, txn: _Txn) -> None:
    """A no-op that makes the store thread open the database."""
