"""SQLiteSagaStore: a durable journal on the standard library's ``sqlite3``.

Threading. ``sqlite3`` calls block, and the event loop must never block, so
every statement runs on a thread the store owns:

* one **writer thread** owns the only writing connection. Write requests from
  every saga (and every event loop) go into one queue. The writer takes all
  the requests that are waiting, runs them in **one** ``BEGIN IMMEDIATE``
  transaction and commits once — one fsync for the whole group (group
  commit) — and only then resolves each request's future, on the loop that
  made it. A saga still waits for its own write to be durable; it just
  shares the fsync with every other saga that was waiting at the same time.
  A request that is refused (``SagaAlreadyExists``, ``SagaNotFound``,
  ``LeaseLost``) is refused before it writes anything, so it fails alone;
  an unexpected SQLite error rolls the group back and replays its requests
  one per transaction, so only the culprit fails. Inside a group, the
  creates and appends of distinct sagas are written by a few multi-row
  statements rather than one statement each (see "batched writes" below):
  the same rows, with far fewer hand-overs of the GIL between the writer
  and the event loop's thread.
* one **reader thread** with its own read-only connection serves ``load``
  and ``list_sagas``. In WAL mode readers never wait for the writer's fsync,
  so an operator listing sagas does not queue behind a commit, and reads do
  not lengthen the writer's critical path. (An in-memory database cannot be
  shared between connections, so there the writer serves reads too.)

``writer="inline"`` is the exception, for programs that run one saga at a
time (a script, a CLI, a batch job): no thread at all; each request runs on
the calling thread, one at a time, on one connection, and a write blocks the
event loop for its commit. Two hand-overs between threads per write (~60 µs
on a virtual machine, where waking an idle CPU is slow) are about a quarter
of a sequential saga's time; with many sagas in flight the writer thread's group
commit is far faster.

Each thread opens its connection at its first request (``await
store.open()`` opens the writer's now), so a bad path or a file that is not
SQLite is reported as a ``SagaStoreError`` from that first call. A thread
whose open failed tries again at its next request: a file that another
process held locked past ``busy_timeout`` fails that one call, not every
later one. The reader never reads a file whose schema is not current: it
migrates it first, through a short-lived writer connection.

Schema. Versioned with ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes a
database from version ``n`` to ``n + 1`` inside the same transaction that
records the new version. A database written by a newer version is refused.

Data. Contexts are stored as JSON text (never pickle); a row that cannot be
read back (bad JSON, an unknown status, text that is not UTF-8) raises
``CorruptSagaRecord`` naming the saga; listings, counts and ``claim`` skip
such a row with a warning that names it, and go on with the others (S12).
Every statement is parameterized. The path is always a file's path (never a
URI), and another program's file is refused before anything changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import queue
import re
import signal
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
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
from ..status import SagaStatus, StepStatus
from ._common import (
    JournalFuture,
    check_owner,
    check_saga_id,
    decode_json,
    encode_json,
    finite_seconds,
    non_negative_int,
    short_repr,
    status_text,
)
from ._sqlite_pipe import (
    FrameReader,
    WriterProcess,
    abandon_soon,
    error_to_wire,
    frame,
)
from .base import JournalEntry, Lease, LeaseState, SagaRecord, SagaSummary

__all__ = ["SCHEMA_VERSION", "SQLiteSagaStore", "SQLiteStoreStats"]

_log = logging.getLogger("fallback_saga.store.sqlite")

# --------------------------------------------------------------------------- schema


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE sagas (
            saga_id          TEXT PRIMARY KEY,
            saga_name        TEXT NOT NULL,
            fingerprint      TEXT NOT NULL,
            status           TEXT NOT NULL,
            context          TEXT NOT NULL,
            version          INTEGER NOT NULL,
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL,
            lease_owner      TEXT NULL,
            lease_expires_at REAL NULL,
            fence            INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    # WITHOUT ROWID: the rows are small and always read by (saga_id, seq), so
    # the primary key is the table — one b-tree insert per transition, not two.
    conn.execute(
        """
        CREATE TABLE saga_steps (
            saga_id  TEXT NOT NULL,
            seq      INTEGER NOT NULL,
            position INTEGER NOT NULL,
            step     TEXT NOT NULL,
            branch   TEXT NOT NULL,
            action   TEXT NOT NULL,
            status   TEXT NOT NULL,
            attempt  INTEGER NOT NULL,
            error    TEXT NULL,
            at       REAL NOT NULL,
            PRIMARY KEY (saga_id, seq)
        ) WITHOUT ROWID
        """
    )
    # Recovery asks for interrupted sagas not updated for a while.
    conn.execute("CREATE INDEX sagas_by_status ON sagas (status, updated_at)")
    # Operators list sagas by name. Listings are newest first in rowid order
    # (the order sagas were created in this file), which needs no index.
    conn.execute("CREATE INDEX sagas_by_name ON sagas (saga_name)")


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    # 0.6.0: each completed act keeps its step's response (JSON text, see
    # store/_responses.py). Rows written before stay NULL: "not kept".
    conn.execute("ALTER TABLE saga_steps ADD COLUMN result TEXT NULL")


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    # When the lease columns were last written (taken, renewed, released,
    # deferred), by the store's clock. A lease written "in the future" was
    # written before the clock stepped back, and its expiry is on the old
    # scale: claim does not wait for it (see _CLAIMABLE). Rows leased before
    # the migration stay NULL: their leases expire as they always did.
    conn.execute("ALTER TABLE sagas ADD COLUMN lease_written_at REAL NULL")


# _MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit.
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)

# The -wal file grows while a reader holds a snapshot (a console page, a long
# listing, a backup): SQLite cannot recycle it meanwhile. Recycled later, it
# would keep its largest size for as long as the writer's connection stays
# open — days, in a service. SQLite cuts it back to this size when it
# recycles it; a steady load's WAL (about 1,000 pages between checkpoints)
# stays below it, so a busy store never pays for shrinking and growing it.
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024

# Finished sagas deleted per transaction by ``purge`` (see there): a few
# milliseconds of the write lock each.
PURGE_BATCH = 2_000


# The columns version 1 made: a file whose sagas/saga_steps lack one is not a
# saga store, whatever its user_version says.
_TABLE_COLUMNS: Final = {
    "sagas": frozenset({
        "saga_id", "saga_name", "fingerprint", "status", "context", "version",
        "created_at", "updated_at", "lease_owner", "lease_expires_at", "fence",
    }),
    "saga_steps": frozenset({
        "saga_id", "seq", "position", "step", "branch", "action", "status", "attempt",
        "error", "at",
    }),
}
_OUR_NAMES: Final = "SELECT name FROM sqlite_master WHERE name IN ('sagas', 'saga_steps')"
_COLUMNS_OF: Final = "SELECT name FROM pragma_table_info(?)"


class _NotASagaStore(SagaStoreError):
    """Another program's SQLite file (the CLI's usage error: exit status 2)."""


def _saga_schema_version(conn: sqlite3.Connection, path: str) -> int:
    """The saga store schema version of the file (0: none yet, a new store is
    made in it, beside any tables of other programs), read without a write.

    Another program's file is refused (``SagaStoreError``) before anything
    changes it — no WAL switch, no migration: one with a ``sagas`` or
    ``saga_steps`` of its own, or a ``user_version`` of its own without the
    saga tables. (``PRAGMA user_version`` alone says nothing: any program
    may set it.)
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    names = {name for (name,) in conn.execute(_OUR_NAMES)}
    if version == 0 and not names:
        return 0
    current = len(_MIGRATIONS)
    if version > current:  # a newer schema may look like anything
        newer = (
            f"schema version {version}, newer than this fallback_saga understands "
            f"({current}); upgrade fallback_saga"
        )
        if names:
            raise SagaStoreError(f"{path} has saga store {newer}")
        raise _NotASagaStore(
            f"{path} is not a fallback_saga saga store (it has no saga tables), or it has {newer}"
        )
    for table, needed in _TABLE_COLUMNS.items():
        columns = {name for (name,) in conn.execute(_COLUMNS_OF, (table,))}
        if version == 0 or not needed <= columns:
            raise _NotASagaStore(
                f"{path} is not a fallback_saga saga store: it is another program's SQLite "
                f"database (its {table} table is not a saga store's, user_version {version});"
                f" it is left as it is"
            )
    return int(version)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file to the current schema, all steps in one transaction:
    a failed migration leaves the file as it was."""
    current = len(_MIGRATIONS)
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file migrate once
    try:
        version = _saga_schema_version(conn, path)  # refuses a newer one
        for number in range(version, current):
            _MIGRATIONS[number](conn)
        if version != current:
            # PRAGMA takes no parameters; the value is this module's own int.
            conn.execute(f"PRAGMA user_version = {int(current)}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


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
_UPDATE_SAGA: Final = (
    "UPDATE sagas SET status = COALESCE(NULLIF(?, 0), status),"
    " context = COALESCE(NULLIF(?, 0), context),"
    " version = version + 1, updated_at = ? WHERE saga_id = ?"
)
_UPDATE_KNOWN: Final = _UPDATE_SAGA + " AND version = ?"
_UPDATE_KNOWN_FENCED: Final = _UPDATE_KNOWN + " AND fence = ?"
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
_SUMMARY_COLUMNS: Final = (
    "SELECT saga_id, saga_name, status, created_at, updated_at, lease_owner,"
    " lease_expires_at FROM sagas"
)
_NEWEST_FIRST: Final = " ORDER BY rowid DESC LIMIT ?"
_ROWID_OF: Final = "SELECT rowid FROM sagas WHERE saga_id = ?"
_COUNT_PREFIX: Final = "SELECT saga_name, status, COUNT(*) FROM sagas"
_COUNT_GROUPS: Final = " GROUP BY saga_name, status"
_STATUS_VALUES: Final = frozenset(status.value for status in SagaStatus)
_CLAIMABLE: Final = (
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
    "SELECT saga_id, fence, lease_expires_at, updated_at FROM sagas WHERE status IN (?, ?)"
    " AND ((lease_expires_at IS NULL AND (updated_at < ? OR updated_at > ?))"
    " OR lease_expires_at <= ? OR lease_written_at > ?"
    " OR lease_expires_at >= '' OR updated_at >= '')"
    " ORDER BY updated_at LIMIT ?"
)
_TAKE_LEASE: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, fence = ?, lease_written_at = ?"
    " WHERE saga_id = ?"
)
_LEASE_STATE: Final = "SELECT fence, lease_owner, lease_expires_at FROM sagas WHERE saga_id = ?"
_LEASE_WRITTEN_AT: Final = "SELECT lease_written_at FROM sagas WHERE saga_id = ?"
_RENEW: Final = (
    "UPDATE sagas SET lease_owner = ?, lease_expires_at = ?, lease_written_at = ?"
    " WHERE saga_id = ? AND fence = ?"
)
_FENCE_OF: Final = "SELECT fence FROM sagas WHERE saga_id = ?"
_RELEASE: Final = (
    # Expired now, rather than no lease: the saga is claimable at once.
    "UPDATE sagas SET lease_owner = NULL, lease_expires_at = ?, lease_written_at = ?"
    " WHERE saga_id = ? AND fence = ?"
)
_DEFER: Final = (
    # Released, and out of _CLAIMABLE until then; _claim_saga leases it at once.
    "UPDATE sagas SET lease_owner = NULL, lease_expires_at = ?, lease_written_at = ?"
    " WHERE saga_id = ? AND fence = ?"
)
_PURGEABLE: Final = (
    "SELECT saga_id FROM sagas WHERE status IN (?, ?, ?) AND updated_at < ? LIMIT ?"
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
    """

    __slots__ = ("known", "now", "rows")

    def __init__(self, now: float, known: dict[str, tuple[int, int]]) -> None:
        self.now = now
        self.known = known
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


_SQL_CACHE: dict[tuple[str, int], str] = {}


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


def _update_sagas_sql(rows: int) -> str:
    # version: NOT NULL, so a saga whose version (or fencing token, when one
    # is given) is not the remembered one fails the whole statement.
    sql = _SQL_CACHE.get(("update", rows))
    if sql is None:
        sql = _SQL_CACHE["update", rows] = (
            "UPDATE sagas SET status = COALESCE(NULLIF(v.column2, 0), status),"
            " context = COALESCE(NULLIF(v.column3, 0), context),"
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
    appends: list[int] = []
    for index in segment:
        request = requests[index]
        if request.op is _create:
            creates.append(index)
            continue
        saga_id, _entries, _status, _context, _token, after = request.args
        remembered = known.get(saga_id)
        if remembered is None or (after is not None and remembered[1] != after):
            _run_alone(cursor, txn, requests, [index], outcomes)
        else:
            appends.append(index)
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
    done = 0
    for size in _chunk_sizes(len(appends)):
        chunk = appends[done:done + size]
        done += size
        params = [now]
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
            updated = cursor.execute(_update_sagas_sql(size), params).rowcount
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
            outcomes[index] = (request, False, refused)


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
    # Absent values as their markers: see _STEP_ROW.
    status_value = 0 if status is None else status
    context_value = 0 if context is None else context
    if known is not None:
        version, start = known
        if token is None:
            params: tuple[Any, ...] = (status_value, context_value, now, saga_id, version)
            updated = cursor.execute(_UPDATE_KNOWN, params).rowcount
        else:
            params = (status_value, context_value, now, saga_id, version, token)
            updated = cursor.execute(_UPDATE_KNOWN_FENCED, params).rowcount
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
        cursor.execute(_UPDATE_SAGA, (status_value, context_value, now, saga_id))
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
) -> list[Lease]:
    # The group's transaction is BEGIN IMMEDIATE: no other connection can
    # claim between this SELECT and the UPDATEs below.
    now = txn.now
    wanted = limit
    while True:
        with _lenient_text(cursor):
            rows = cursor.execute(
                _CLAIMABLE,
                (*_INTERRUPTED, now - older_than, now + older_than, now,
                 now + max(older_than, 0.0), wanted),
            ).fetchall()
        claimable: list[tuple[str, int]] = []
        corrupt: list[tuple[object, str]] = []
        for saga_id, fence, expires_at, updated_at in rows:
            problem = _claim_problem(saga_id, fence, expires_at, updated_at)
            if problem is None:
                claimable.append((saga_id, fence))
            else:
                corrupt.append((saga_id, problem))
        # S12: a corrupt row is skipped, and must not take the place of a
        # saga that can be resumed: ask again for as many more as were corrupt
        # (rarely: one query when no row is corrupt).
        if len(claimable) >= limit or len(rows) < wanted:
            break
        wanted = limit + len(corrupt)
    for saga_id, problem in corrupt:
        # ``skipped_saga``: for whoever reports the pass (``recover`` on the
        # command line lists it as skipped): the id as a str, and why.
        shown = saga_id if isinstance(saga_id, str) else _shown_bytes(saga_id)
        _log.warning(
            "skipping a saga in recovery: %s", _unreadable(saga_id, problem),
            extra={"skipped_saga": (shown, f"its row is unreadable: {problem}")},
        )
    expires_at = now + lease_seconds
    leases = [Lease(saga_id, owner, fence + 1, expires_at) for saga_id, fence in claimable[:limit]]
    cursor.executemany(
        _TAKE_LEASE, [(owner, expires_at, lease.token, now, lease.saga_id) for lease in leases]
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
    fence, lease_owner, lease_expires_at = _read_lease(cursor, saga_id)
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


def _read_lease(cursor: sqlite3.Cursor, saga_id: str) -> tuple[int, str | None, float | None]:
    """The fence, lease owner and expiry of a saga, checked (``CorruptSagaRecord``)."""
    with _lenient_text(cursor):
        row = cursor.execute(_LEASE_STATE, (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    fence, owner, expires_at = row
    if type(fence) is not int:
        raise CorruptSagaRecord(saga_id, "its fence is not an integer")
    if owner is not None and not isinstance(owner, str):
        raise CorruptSagaRecord(saga_id, f"lease_owner is {_not_text(owner)}")
    if expires_at is not None:
        expires_at = _number(saga_id, "lease_expires_at", expires_at)
    return fence, owner, expires_at


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


def _release(cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, token: int) -> None:
    cursor.execute(_RELEASE, (txn.now, txn.now, saga_id, token))


def _defer(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, token: int, seconds: float
) -> None:
    cursor.execute(_DEFER, (txn.now + seconds, txn.now, saga_id, token))


def _purge(
    cursor: sqlite3.Cursor, txn: _Txn, older_than: float, limit: int, cutoff: float | None
) -> tuple[int, float]:
    """One batch of a purge: up to ``limit`` finished sagas last updated
    before ``cutoff`` (the first batch's ``now - older_than`` when ``None``),
    with their history; how many, and the cutoff for the next batch."""
    txn.flush(cursor)  # the steps written earlier in this group go too
    txn.known.clear()
    if cutoff is None:
        cutoff = txn.now - older_than
    ids = cursor.execute(_PURGEABLE, (*_FINISHED, cutoff, limit)).fetchall()
    cursor.executemany(_PURGE_STEPS, ids)
    cursor.executemany(_PURGE_SAGA, ids)
    return len(ids), cutoff


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
    if before is not None:
        # A cursor by id, resolved to its place in the listing's order.
        cursor_row = cursor.execute(_ROWID_OF, (before,)).fetchone()
        if cursor_row is None:
            raise SagaNotFound(before)
        where.append("rowid < ?")
        params.append(cursor_row[0])
    clause = " WHERE " + " AND ".join(where) if where else ""
    with _lenient_text(cursor):
        query = _SUMMARY_COLUMNS + clause + _NEWEST_FIRST
        rows = cursor.execute(query, (*params, limit)).fetchall()
    summaries: list[SagaSummary] = []
    for row in rows:
        # S12: one bad row must not hide every other saga from an operator.
        if not isinstance(row[0], str):
            problem = f"the saga id is {_not_text(row[0])}"
            _log.warning("skipping a saga in the listing: %s", _unreadable(row[0], problem))
            continue
        try:
            summaries.append(_summary(*row))
        except CorruptSagaRecord as error:
            _log.warning("skipping a saga in the listing: %s", error)
    return summaries


def _summary(
    saga_id: object,
    name: object,
    status: object,
    created_at: object,
    updated_at: object,
    owner: object,
    expires_at: object,
) -> SagaSummary:
    """A listing's row, every value checked: what is handed out is what the
    types say (``CorruptSagaRecord`` otherwise)."""
    assert isinstance(saga_id, str)  # checked by the caller
    if owner is not None and not isinstance(owner, str):
        raise CorruptSagaRecord(saga_id, f"lease_owner is {_not_text(owner)}")
    return SagaSummary(
        saga_id=saga_id,
        saga_name=_text(saga_id, "saga_name", name),
        status=_saga_status(saga_id, status),
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
    if created_since is not None:
        where.append("created_at >= ?")
        params.append(created_since)
    if created_until is not None:
        where.append("created_at < ?")
        params.append(created_until)
    return where, params


def _count(
    cursor: sqlite3.Cursor,
    txn: _Txn,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
) -> dict[tuple[str, SagaStatus], int]:
    where, params = _listing_filter(saga_name, created_since, created_until)
    clause = " WHERE " + " AND ".join(where) if where else ""
    counts: dict[tuple[str, SagaStatus], int] = {}
    with _lenient_text(cursor):
        groups = cursor.execute(_COUNT_PREFIX + clause + _COUNT_GROUPS, params).fetchall()
    for name, status, count in groups:
        if not isinstance(name, str) or status not in _STATUS_VALUES:
            # Unreadable rows are left out, as from a listing.
            _log.warning(
                "leaving %d saga(s) out of the counts: name %s, status %s",
                count, short_repr(name), short_repr(status),
            )
            continue
        counts[name, SagaStatus(status)] = count
    return counts


def _lease_state(cursor: sqlite3.Cursor, txn: _Txn, saga_id: str) -> LeaseState:
    fence, owner, expires_at = _read_lease(cursor, saga_id)
    return LeaseState(owner, expires_at, fence)


# --------------------------------------------------------------------------- decoding

_BRANCHES: Final = frozenset({"primary", "fallback"})
_ACTIONS: Final = frozenset({"act", "compensate"})


def _decode_record(saga_id: str, row: tuple[Any, ...], steps: list[Any]) -> SagaRecord:
    saga_name, fingerprint, status, context_text, version, created_at, updated_at = row
    if not isinstance(context_text, str):
        raise CorruptSagaRecord(saga_id, "the context is not JSON text")
    try:
        context = decode_json(context_text)
    except ValueError as bad:  # JSONDecodeError included
        raise CorruptSagaRecord(saga_id, f"the context is not valid JSON ({bad})") from None
    if not isinstance(context, dict):
        raise CorruptSagaRecord(saga_id, "the context is not a JSON object")
    history: list[JournalEntry] = []
    for seq, position, step, branch, action, raw_status, attempt, error, at, result in steps:
        try:
            step_status = StepStatus(raw_status)
        except ValueError:
            raise CorruptSagaRecord(
                saga_id, f"transition {seq} has an unknown status {short_repr(raw_status)}"
            ) from None
        if branch not in _BRANCHES or action not in _ACTIONS:
            raise CorruptSagaRecord(
                saga_id,
                f"transition {seq} has an unknown branch/action "
                f"{short_repr(branch)}/{short_repr(action)}",
            )
        if not (
            type(position) is int
            and type(attempt) is int
            and isinstance(step, str)
            and (error is None or isinstance(error, str))
            and (result is None or isinstance(result, str))
            and isinstance(at, (int, float))
        ):
            raise CorruptSagaRecord(saga_id, f"transition {seq} has a value of the wrong type")
        history.append(
            JournalEntry(position, step, branch, action, step_status, attempt, error, float(at),
                         result)
        )
    if type(version) is not int:
        raise CorruptSagaRecord(saga_id, "version is not an integer")
    return SagaRecord(
        saga_id=saga_id,
        saga_name=_text(saga_id, "saga_name", saga_name),
        fingerprint=_text(saga_id, "fingerprint", fingerprint),
        status=_saga_status(saga_id, status),
        context=context,
        history=history,
        created_at=_number(saga_id, "created_at", created_at),
        updated_at=_number(saga_id, "updated_at", updated_at),
        version=version,
    )


def _saga_status(saga_id: str, value: object) -> SagaStatus:
    try:
        return SagaStatus(value)  # type: ignore[arg-type]  # checked right here
    except ValueError:
        raise CorruptSagaRecord(saga_id, f"unknown saga status {short_repr(value)}") from None


def _text(saga_id: str, column: str, value: object) -> str:
    if not isinstance(value, str):
        raise CorruptSagaRecord(saga_id, f"{column} is {_not_text(value)}")
    return value


def _number(saga_id: str, column: str, value: object) -> float:
    if not _is_time(value):
        raise CorruptSagaRecord(saga_id, f"{column} is not a finite number")
    return float(value)  # type: ignore[arg-type]  # checked right here


def _is_time(value: object) -> bool:
    # A time that is not finite would break every date shown for it.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        math.isfinite(value)
    )


def _not_text(value: object) -> str:
    """What a stored value is instead of text (for a message)."""
    if isinstance(value, _Undecodable):
        return "text that is not valid UTF-8"
    return f"not text (a {type(value).__name__})"


def _unreadable(saga_id: object, problem: str) -> str:
    """``CorruptSagaRecord``'s message, also for a saga id that is no str
    (a BLOB, or text that is not UTF-8: shown as its escaped bytes)."""
    shown = short_repr(saga_id) if isinstance(saga_id, str) else _shown_bytes(saga_id)
    return f"saga {shown} in the store is unreadable: {problem}"


def _shown_bytes(value: object) -> str:
    """A value that is no str, as its (escaped) repr: ``b's\\xff'``."""
    return short_repr(bytes(value) if isinstance(value, _Undecodable) else value)


class _Undecodable(bytes):
    """Stored text that is not valid UTF-8, as its bytes (see ``_lenient_text``)."""

    __slots__ = ()


def _text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return _Undecodable(raw)


@contextlib.contextmanager
def _lenient_text(cursor: sqlite3.Cursor) -> Iterator[None]:
    """Within: text that is not valid UTF-8 reads as ``_Undecodable`` bytes.

    sqlite3 raises for such text, for the whole query: one row another tool
    wrote (or a damaged page) would hide every saga from a listing and stop
    every recovery (S12), and its error quotes the text. The checks of the
    values read then name the saga and skip it. For the reads that are not
    on the hot path only (a Python call per text value read).
    """
    conn = cursor.connection
    given = conn.text_factory
    conn.text_factory = _text_or_bytes
    try:
        yield
    finally:
        conn.text_factory = given


# --------------------------------------------------------------------------- threads


class _Request(NamedTuple):
    op: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    write: bool


@dataclass(slots=True)
class _Stop:
    """Queued by ``close`` (with a future) or by the finalizer (without)."""

    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None


_Outcome = tuple[_Request, bool, Any]  # (request, succeeded, result or exception)

# How many queued requests one transaction takes at most: bounds a group's latency.
_MAX_GROUP: Final = 4096


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # The transaction may be gone already (SQLite rolls back on some errors).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, succeeded, value in items:
        if future.done():  # the awaiting task was cancelled; the write still happened
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


def _settle(outcomes: Sequence[_Outcome]) -> None:
    """Resolve each future on its own loop, one thread-safe wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for request, succeeded, value in outcomes:
        items = by_loop.get(request.loop)
        if items is None:
            items = by_loop[request.loop] = []
        items.append((request.future, succeeded, value))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting for these any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


class _Worker:
    """A thread that owns one connection and serves a queue of requests."""

    def __init__(
        self,
        *,
        role: str,
        path: str,
        connect: Callable[[], sqlite3.Connection],
        clock: Callable[[], float],
    ) -> None:
        self.role = role
        self.path = path
        self.connect = connect
        self.clock = clock
        self.queue: queue.SimpleQueue[_Request | _Stop] = queue.SimpleQueue()
        self.commits = 0
        self.writes = 0
        self.reads = 0
        self.largest_group = 0
        self.known: dict[str, tuple[int, int]] = {}  # see _Txn
        # The thread's connection once open: a forked child closes its copy.
        self.conn: sqlite3.Connection | None = None
        # Held while the thread is inside SQLite: a fork waits for it
        # (_before_fork), so that no connection is mid-call in the child,
        # where SQLite's mutex would stay held for ever.
        self.using = threading.Lock()
        # Where outcomes go: their futures' loops (the writer process answers by pipe).
        self.settle: Callable[[Sequence[_Outcome]], None] = _settle
        self.thread = threading.Thread(
            target=self._main, name=f"fallback_saga-sqlite-{role}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop_soon(self) -> None:
        self.queue.put(_Stop())

    # -- thread side

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        stop: _Stop | None = None
        try:
            while stop is None:
                group, stop = self._next_group()
                if not group:
                    continue
                try:
                    with self.using:
                        if conn is None:
                            # Opened at the first request, and again at the next
                            # one if that failed: a file locked past busy_timeout
                            # (or a directory created since) must not break the
                            # store for good.
                            conn = self.conn = self._open(group)
                            if conn is None:
                                continue
                        self._serve(conn, group)
                except BaseException as error:  # a bug here must not leave sagas waiting
                    self.settle([(request, False, self._wrap(error)) for request in group])
        finally:
            if conn is not None:
                with self.using:
                    conn.close()
            if stop is not None and stop.loop is not None and stop.future is not None:
                _settle_stop(stop)

    def _open(self, group: list[_Request]) -> sqlite3.Connection | None:
        """The connection, or ``None`` once ``group`` has been refused with the
        reason it could not be opened (each request gets its own exception)."""
        try:
            return self.connect()
        except Exception as error:
            failure = self._wrap(error)
        outcomes: list[_Outcome] = []
        for request in group:
            refused = SagaStoreError(*failure.args)
            refused.__cause__ = failure.__cause__
            outcomes.append((request, False, refused))
        self.settle(outcomes)
        return None

    def _next_group(self) -> tuple[list[_Request], _Stop | None]:
        item = self.queue.get()
        group: list[_Request] = []
        while True:
            if isinstance(item, _Stop):
                return group, item
            group.append(item)
            if len(group) >= _MAX_GROUP:
                return group, None
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return group, None

    def _serve(self, conn: sqlite3.Connection, group: list[_Request]) -> None:
        # One cursor per group: ops use it for every statement.
        cursor = conn.cursor()
        try:
            if self.role == "reader":
                self._read(conn, cursor, group)
                return
            writes = [request for request in group if request.write]
            if writes:
                self._write(conn, cursor, writes)
            if len(writes) < len(group):  # a database only this connection can see
                self._read(conn, cursor, [request for request in group if not request.write])
        finally:
            cursor.close()

    def _write(
        self, conn: sqlite3.Connection, cursor: sqlite3.Cursor, group: list[_Request]
    ) -> None:
        outcomes: list[_Outcome] = [None] * len(group)  # type: ignore[list-item]
        in_requests = False
        known = self.known
        if len(known) > _MAX_KNOWN:
            known.clear()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            # Read under the write lock: the stamps of the processes sharing
            # the file then follow their commit order (claims rely on it).
            txn = _Txn(self.clock(), known)
            in_requests = True
            if _BATCHED and len(group) > 1:
                _run_group(cursor, txn, group, outcomes)
            else:
                _run_alone(cursor, txn, group, list(range(len(group))), outcomes)
            txn.flush(cursor)
            in_requests = False
            cursor.execute("COMMIT")
        except Exception as error:
            _rollback(conn)
            known.clear()  # it may remember writes that were just rolled back
            if in_requests and len(group) > 1:
                # A request failed half-way: replay each in a transaction of
                # its own, so that only the culprit fails.
                for request in group:
                    self._write(conn, cursor, [request])
                return
            # BEGIN (the file stayed locked past busy_timeout) or COMMIT (disk
            # full, I/O error) failed: nothing of the group was written.
            self.settle([(request, False, self._wrap(error)) for request in group])
            return
        self.commits += 1
        self.writes += len(group)
        if len(group) > self.largest_group:
            self.largest_group = len(group)
        self.settle(outcomes)

    def _read(
        self, conn: sqlite3.Connection, cursor: sqlite3.Cursor, group: list[_Request]
    ) -> None:
        outcomes: list[_Outcome] = []
        try:
            cursor.execute("BEGIN")  # one snapshot: a record and its history agree
        except sqlite3.Error as error:
            self.settle([(request, False, self._wrap(error)) for request in group])
            return
        try:
            txn = _Txn(self.clock(), {})
            for request in group:
                try:
                    outcomes.append((request, True, request.op(cursor, txn, *request.args)))
                except SagaStoreError as error:
                    outcomes.append((request, False, error))
                except Exception as error:
                    outcomes.append((request, False, self._wrap(error)))
        finally:
            _rollback(conn)  # nothing to commit; ends the read transaction
        self.reads += len(group)
        self.settle(outcomes)

    def _wrap(self, error: BaseException) -> SagaStoreError:
        if isinstance(error, SagaStoreError):
            return error
        wrapped = SagaStoreError(
            f"SQLite saga store {self.path}: {type(error).__name__}: {error}"
        )
        wrapped.__cause__ = error
        return wrapped


def _settle_now(outcomes: Sequence[_Outcome]) -> None:
    """``writer="inline"``: resolve the futures here, on their own loop's thread."""
    _resolve([(request.future, succeeded, value) for request, succeeded, value in outcomes])


def _settle_stop(stop: _Stop) -> None:
    def resolve() -> None:
        if stop.future is not None and not stop.future.done():
            stop.future.set_result(None)

    assert stop.loop is not None
    with contextlib.suppress(RuntimeError):
        stop.loop.call_soon_threadsafe(resolve)


def _stop_workers(*workers: _Worker) -> None:
    for worker in workers:
        worker.stop_soon()


# --------------------------------------------------------------------------- the writer process

_WIRE_OPS: Final = {"c": _create, "a": _append}


def _writer_process_main() -> None:
    """The child of ``SQLiteSagaStore(path, writer="process")`` (the parent's
    side and the wire format: ``_sqlite_pipe``). It reads write requests from
    stdin and commits everything that has arrived since its last commit as
    one group, through the writer thread's own code (``_Worker._write``);
    it answers each on stdout. It ends at the end of its input: the store
    closed, or the parent gone."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides
    # when its writer ends (by closing its input), so writes on their way land.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer
    reader = FrameReader()
    captured: list[_Outcome] = []
    worker: _Worker | None = None
    conn: sqlite3.Connection | None = None
    while True:
        data = os.read(stdin, 1 << 20)
        if not data:
            break
        messages = reader.feed(data)
        if not messages:
            continue
        if messages[0][0] == "open":
            _, path, synchronous, busy_timeout = messages.pop(0)
            worker = _Worker(
                role="writer", path=path,
                connect=functools.partial(_connect_writer, path, synchronous, busy_timeout),
                clock=time.time,
            )
            worker.settle = captured.extend
            refusal = None
            try:  # opened (and migrated) now: the parent's open() hears if it cannot be
                conn = worker.connect()
            except Exception as error:
                refusal = error_to_wire(worker._wrap(error))
            if not _answer(stdout, ("ready", refusal)):
                break
        if not messages:
            continue
        assert worker is not None, "the first message opens the file"
        group: list[_Request] = []
        spans: list[tuple[int, int, int]] = []
        for _, batch, items in messages:
            spans.append((batch, len(group), len(items)))
            group += [
                _new_request(_Request, (_WIRE_OPS[op], args, None, None, True))
                for op, args in items
            ]
        captured.clear()
        if conn is None:
            conn = worker._open(group)  # on failure each request is refused with the reason
        if conn is not None:
            try:
                worker._serve(conn, group)
            except BaseException as error:  # a bug here must not leave sagas waiting
                worker.settle([(request, False, worker._wrap(error)) for request in group])
        by_request = {id(request): value if not succeeded else None
                      for request, succeeded, value in captured}
        answers = [by_request[id(request)] for request in group]
        wire = [None if answer is None else error_to_wire(answer) for answer in answers]
        if not _answer(stdout, ("done", worker.commits, worker.writes, tuple(
            (batch, tuple(wire[start:start + count])) for batch, start, count in spans
        ))):
            break
    if conn is not None:
        conn.close()


def _answer(stdout: Any, message: Any) -> bool:
    """Send ``message`` to the parent; False when it is gone (its pipe closed)."""
    try:
        stdout.write(frame(message))
        stdout.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the stream is closed
        return False
    return True


_new_request: Final = tuple.__new__


# --------------------------------------------------------------------------- connections


def _not_a_database(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "") == "SQLITE_NOTADB" or (
        "not a database" in str(error)
    )


def _database(path: str) -> tuple[str, bool]:
    """What ``sqlite3.connect`` takes for ``path``, and whether it is a URI.

    A path is always a file's path: a ``file:orders.db`` must not open
    ``orders.db`` (SQLite may read every name as a URI when built so, even
    without ``uri=True``), so a file is named by its own ``file:`` URI, in
    which ``?`` and ``#`` are escaped. ``""`` (a private temporary database)
    and ``":memory:"`` stay what SQLite makes of them.
    """
    if path in ("", ":memory:"):
        return path, False
    from pathlib import Path  # here: only at a connection's open

    return Path(path).absolute().as_uri(), True


def _connect_writer(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    database, uri = _database(path)
    try:
        conn = sqlite3.connect(
            database, uri=uri, timeout=busy_timeout, isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise SagaStoreError(f"cannot open SQLite database {path}: {error}") from error
    try:
        # Another program's file is refused before the WAL switch changes it
        # for good (_migrate checks again, in its transaction).
        _saga_schema_version(conn, path)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal" and path not in ("", ":memory:"):
            # Still correct, only slower: readers and the writer block each other.
            _log.warning("%s: WAL mode is not available here (journal mode %s)", path, mode)
        # PRAGMA takes no parameters; the value was checked against a fixed set.
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
        _migrate(conn, path)
    except sqlite3.DatabaseError as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        raise SagaStoreError(f"cannot open SQLite database {path}: {error}") from error
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A read-only connection to a file whose schema is current.

    The reader never waits for the writer thread: a file that has no schema
    yet (or an older one) is migrated first through a short-lived writer
    connection, as the writer would do it. So a store whose first request is
    a read works, and a read never meets tables that are not there.
    """
    conn = _open_reader(path, busy_timeout)
    if _schema_version(conn, path) == len(_MIGRATIONS):
        return conn
    conn.close()
    _connect_writer(path, synchronous, busy_timeout).close()  # migrates, or says why not
    return _open_reader(path, busy_timeout)


def _open_reader(path: str, busy_timeout: float) -> sqlite3.Connection:
    database, uri = _database(path)
    try:
        conn = sqlite3.connect(
            database, uri=uri, timeout=busy_timeout, isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise SagaStoreError(f"cannot open SQLite database {path}: {error}") from error
    try:
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as error:
        conn.close()
        raise SagaStoreError(f"cannot open SQLite database {path}: {error}") from error
    return conn


def _connect_read_only(path: str, busy_timeout: float, immutable: bool) -> sqlite3.Connection:
    """A connection that writes nothing: not the file, not its schema, and
    with ``immutable`` not even the -wal/-shm files of a WAL database.

    SQLite's ``mode=ro`` reads a WAL database through its -shm file, which it
    creates (and leaves behind) when no process has the database open; where
    it cannot (a directory the reader may not write), the open fails.
    ``immutable=1`` reads the file alone, without locks: right only while no
    process writes it.
    """
    query = "?mode=ro&immutable=1" if immutable else "?mode=ro"
    try:
        conn = sqlite3.connect(
            _database(path)[0] + query,
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise SagaStoreError(f"cannot open SQLite database {path} read-only: {error}") from error
    try:
        conn.execute("PRAGMA query_only = ON")
        version = _saga_schema_version(conn, path)
    except SagaStoreError:
        conn.close()
        raise
    except sqlite3.Error as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        reason = getattr(error, "sqlite_errorname", "")
        if reason.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            raise SagaStoreError(
                f"cannot read SQLite database {path} read-only ({error}): SQLite reads a "
                f"WAL database through a -shm file beside it, and cannot create one in a "
                f"directory you may not write (immutable=True reads without one: right "
                f"only while no process writes the file)"
            ) from error
        raise SagaStoreError(f"cannot read SQLite database {path} read-only: {error}") from error
    current = len(_MIGRATIONS)
    if version != current:  # a newer one was refused
        conn.close()
        if version == 0:
            raise SagaStoreError(f"{path} has no saga store schema (read-only: none is made)")
        raise SagaStoreError(
            f"{path} has saga store schema version {version}, older than this "
            f"fallback_saga's ({current}), and a read-only store cannot migrate it: "
            f"open it once with write access (SQLiteSagaStore(path) migrates it)"
        )
    return conn


def _schema_version(conn: sqlite3.Connection, path: str) -> int:
    try:
        version = _saga_schema_version(conn, path)
    except SagaStoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        raise SagaStoreError(f"cannot open SQLite database {path}: {error}") from error
    return int(version)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True, slots=True)
class SQLiteStoreStats:
    """Counters of a store's threads since it was opened.

    ``writes`` write requests (refused ones included) were served in
    ``commits`` transactions: with many sagas in flight, ``commits`` is much
    smaller (group commit). ``largest_group`` is the most requests one
    transaction carried.
    """

    writes: int
    commits: int
    reads: int
    largest_group: int


_SYNCHRONOUS: Final = frozenset({"full", "normal"})


class SQLiteSagaStore:
    """A durable ``RecoverableStore`` in one SQLite file (standard library only).

    ``synchronous="full"`` (the default) fsyncs every commit: a saga whose
    write returned survives a power loss. ``synchronous="normal"`` is an
    explicit opt-in: in WAL mode it survives an application crash but a
    power loss may lose the last commits. ``busy_timeout`` is how long (in
    seconds) a write waits for another process holding the file's write lock.
    ``clock`` (Unix time, default ``time.time``) stamps writes and decides
    lease and age cut-offs; tests may inject their own.

    Use ``async with SQLiteSagaStore(path) as store:`` or ``await
    store.close()`` at shutdown. One store may be used from several event
    loops (each request is answered on the loop that made it). Several
    processes may share the file: writes are serialized by SQLite's lock,
    and ``claim`` leases each saga to one worker at a time.

    ``read_only=True`` is for looking at a file (an operator's ``list`` and
    ``show``, a console): ``load``, ``list_sagas`` and the other reads only,
    on one connection opened with SQLite's ``mode=ro``; the file is never
    created, migrated or written (a write raises ``SagaStoreError``), and a
    schema that is not current is refused with the reason. It sees what
    other processes commit. ``immutable=True`` (with ``read_only``) adds
    SQLite's ``immutable=1``: no locks, and no -wal/-shm files created even
    in a directory you may not write; it is right only while no process
    writes the file (``python -m fallback_saga list`` uses it when no process
    has the file open, and checks that the file did not change meanwhile).

    ``writer`` chooses where the statements run. ``"thread"`` (the default):
    a writer thread with group commit, and a reader thread. ``"process"``:
    the journal writes are committed by a child process (faster with many
    sagas in flight; docs/scaling.md). ``"inline"``: no thread at all; each
    request runs on the calling thread, one at a time, and a write blocks
    the event loop until it is committed (an fsync with ``"full"``, or up to
    ``busy_timeout`` while another process holds the file's lock). It is for
    programs that run one saga at a time (a script, a CLI, a batch job): no
    hand-over between threads, about 1.4x the sagas per second there; with
    many sagas in flight every write commits alone, which is far slower
    than the writer thread's group commit.
    """

    # Reads on a thread and connection of their own (see the module docstring).
    _separate_reader: bool = True
    # A write is on the writer thread's queue once its coroutine first suspends,
    # and is committed or refused there whatever happens to the awaiting task:
    # the executor then waits for it without a task of its own (journal.py).
    writes_outlive_cancellation: Final = True
    # submit_create/submit_append: the same writes, queued by a plain call that
    # returns the future (no coroutine to drive: journal.submits_writes).
    submits_writes: Final = True
    # append(..., after=N): written only if the journal holds N entries.
    appends_after: Final = True
    # The keyword filters list_sagas takes beyond the protocol's (RecoverableStore).
    listing_filters: Final = ("before", "created_since", "created_until")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        immutable: bool = False,
        writer: str = "thread",
    ) -> None:
        if writer not in ("thread", "process", "inline"):
            raise ValueError(
                f"writer must be 'thread' (the default), 'process' (journal writes "
                f"committed by a process of their own) or 'inline' (no thread: each "
                f"request runs on the calling thread), got {writer!r}"
            )
        if writer == "process":
            if read_only:
                raise ValueError('writer="process" writes: it cannot go with read_only=True')
            if os.fsdecode(path) in ("", ":memory:"):
                raise ValueError(
                    'writer="process" needs a file: an in-memory database is private '
                    "to its connection"
                )
            if clock is not time.time:
                raise ValueError(
                    'writer="process" stamps its writes with the child\'s time.time: '
                    "a clock of your own needs writer=\"thread\""
                )
        if not isinstance(read_only, bool) or not isinstance(immutable, bool):
            raise TypeError(
                f"read_only and immutable must be bools, got {read_only!r} and {immutable!r}"
            )
        if immutable and not read_only:
            raise ValueError("immutable=True reads without locks: it needs read_only=True")
        if read_only and os.fsdecode(path) in ("", ":memory:"):
            raise ValueError("a read-only store reads a file, not an in-memory database")
        if not isinstance(synchronous, str) or synchronous.lower() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be 'full' (the default: commits survive power loss) or "
                f"'normal' (commits survive an application crash, not power loss), "
                f"got {synchronous!r}"
            )
        busy = finite_seconds("busy_timeout", busy_timeout)
        if busy < 0:
            raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning Unix time, got {clock!r}")
        self.path: str = os.fsdecode(path)  # any path-like; bytes are decoded
        self.synchronous: str = synchronous.lower()
        self.busy_timeout: float = busy
        self.read_only: bool = read_only
        self.immutable: bool = immutable
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._finalizer: weakref.finalize[Any, SQLiteSagaStore] | None = None
        self.writer: str = writer
        # writer="process": the journal writes of the first loop that writes
        # (other loops' go through the writer thread, as with "thread").
        self._process: WriterProcess | None = None
        # writer="inline": the one connection, opened at the first request,
        # and the lock that lets one caller at a time use it.
        self._inline_conn: sqlite3.Connection | None = None
        self._inline_lock = threading.Lock()
        self._process_finalizer: weakref.finalize[Any, SQLiteSagaStore] | None = None
        self._forked_mid_request = False
        # Around a fork (_before_fork): the locks taken, and whether one could not be.
        self._fork_held: list[threading.Lock] = []
        self._fork_blocked = False
        _STORES.add(self)  # a forked child starts afresh (_after_fork_in_child)

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self.path!r}, synchronous={self.synchronous!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open (and migrate) the database now rather than at first use, so a
        bad path or a file that is not SQLite fails here."""
        await self._submit(_ping, (), write=not self.read_only)
        if self.writer == "process":
            process = self._writer_process()
            if process is not None:
                await process.ensure_started()

    async def close(self) -> None:
        """Finish the queued requests, then stop the threads and close the file.

        Later calls raise ``SagaStoreError``. Closing twice is harmless.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = [w for w in (self._reader, self._writer) if w is not None]
            if self._finalizer is not None:
                self._finalizer.detach()
            process, self._process = self._process, None
        if self.writer == "inline":
            with self._inline_lock:  # after the request in progress, if any
                conn, self._inline_conn = self._inline_conn, None
                if conn is not None:
                    conn.close()
            return
        loop = asyncio.get_running_loop()
        if process is not None:
            if process.loop is loop:
                await process.close()
            else:  # closed from another loop: the child's own loop lets it go
                abandon_soon(process)
        if not workers:
            return
        futures: list[asyncio.Future[None]] = []
        for worker in workers:
            future: asyncio.Future[None] = loop.create_future()
            worker.queue.put(_Stop(loop, future))
            futures.append(future)
        await asyncio.gather(*futures)

    async def __aenter__(self) -> SQLiteSagaStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def stats(self) -> SQLiteStoreStats:
        writer, reader = self._writer, self._reader
        reads = (writer.reads if writer else 0) + (reader.reads if reader else 0)
        process = self._process
        return SQLiteStoreStats(
            writes=(writer.writes if writer else 0) + (process.writes if process else 0),
            commits=(writer.commits if writer else 0) + (process.commits if process else 0),
            reads=reads,
            largest_group=writer.largest_group if writer else 0,
        )

    def _start(self) -> _Worker:
        """Start the threads (under ``self._lock``)."""
        path, timeout = self.path, self.busy_timeout
        synchronous = self.synchronous
        if self.read_only:
            # No writer: one thread, on a connection that writes nothing.
            immutable = self.immutable
            only = _Worker(
                role="reader",
                path=path,
                connect=lambda: _connect_read_only(path, timeout, immutable),
                clock=self._clock,
            )
            self._writer, self._reader = only, None
            if self.writer == "inline":
                only.settle = _settle_now
                return only  # no thread: _serve_inline runs its requests
            self._finalizer = weakref.finalize(self, _stop_workers, only)
            only.start()
            return only
        writer = _Worker(
            role="writer",
            path=path,
            connect=lambda: _connect_writer(path, synchronous, timeout),
            clock=self._clock,
        )
        if self.writer == "inline":
            # No thread: _serve_inline runs every request, reads too, on the
            # writer's connection (one at a time, so nothing to separate).
            writer.settle = _settle_now
            self._writer, self._reader = writer, None
            return writer
        reader: _Worker | None = None
        if self._separate_reader and path not in ("", ":memory:"):
            reader = _Worker(
                role="reader",
                path=path,
                connect=lambda: _connect_reader(path, synchronous, timeout),
                clock=self._clock,
            )
        self._writer, self._reader = writer, reader
        workers = (writer,) if reader is None else (writer, reader)
        # A store dropped without close() still stops its threads. The
        # finalizer holds the workers, never the store.
        self._finalizer = weakref.finalize(self, _stop_workers, *workers)
        for worker in workers:
            worker.start()
        return writer

    def _submit(
        self,
        op: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        write: bool,
        journal: bool = False,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = (
            JournalFuture(loop=loop) if journal else loop.create_future()
        )
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if write and self.read_only:
                raise SagaStoreError(f"the SQLite saga store {self.path} is read-only")
            writer = self._writer or self._start()
            worker = writer if write or self._reader is None else self._reader
            if self.writer != "inline":
                worker.queue.put(_Request(op, args, loop, future, write))
                return future
        self._serve_inline(worker, _Request(op, args, loop, future, write))
        return future

    def _forget_the_parents(self) -> None:
        """In a process just forked: the threads did not come along, and the
        connections and the writer process are the parent's. The child's
        next request opens its own (as at first use); the parent's are
        never used here, so the parent goes on undisturbed.

        The inherited connections are closed, not merely dropped: SQLite
        keeps one lock record per file and process, which the child copied
        with the parent's locks in it; until they are closed, a connection
        the child opens to the same file would believe it holds locks that
        only the parent holds. (fcntl locks belong to a process: closing
        the child's copies releases none of the parent's.) A connection that
        a thread was using at the moment of the fork cannot be closed — its
        mutex stays held for ever in the child. The fork waits for the
        connections to be idle (``_hold_for_fork``); if one stayed busy past
        that wait, the store refuses every call in the child, saying why,
        rather than risk the file."""
        in_use = self._fork_blocked
        self._fork_blocked = False
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._inline_lock = threading.Lock()
        for finalizer in (self._finalizer, self._process_finalizer):
            if finalizer is not None:
                finalizer.detach()  # they would stop the parent's threads and child
        self._finalizer = self._process_finalizer = None
        connections = [self._inline_conn] + [
            worker.conn for worker in (self._writer, self._reader) if worker is not None
        ]
        self._writer = self._reader = None
        self._inline_conn = None
        process, self._process = self._process, None
        if process is not None:
            process.let_go()
        if in_use:
            _FORKED_MID_REQUEST.extend(conn for conn in connections if conn is not None)
            self._forked_mid_request = True
            self._closed = True
            return
        for conn in connections:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _hold_for_fork(self) -> None:
        """Before a fork, in the forking thread: wait until no thread of the
        store is inside SQLite, and keep it so until the fork is done
        (``_release_after_fork`` in the parent; the child starts afresh)."""
        locks = [w.using for w in (self._writer, self._reader) if w is not None]
        if self.writer == "inline":
            locks.append(self._inline_lock)  # held by a request, its connection's opening too
        for lock in locks:
            if lock.acquire(timeout=_FORK_WAIT):
                self._fork_held.append(lock)
            else:
                self._fork_blocked = True  # a request longer than the wait: see the child

    def _release_after_fork(self) -> None:
        held, self._fork_held = self._fork_held, []
        self._fork_blocked = False
        for lock in held:
            lock.release()

    def _closed_error(self) -> SagaStoreError:
        if self._forked_mid_request:
            return SagaStoreError(
                f"the SQLite saga store {self.path} was in the middle of a request when "
                f"this process was forked from its parent: its connections cannot be "
                f"used or closed here; fork while no saga runs, or open the store after "
                f"the fork"
            )
        return SagaStoreError(f"the SQLite saga store {self.path} is closed")

    def _serve_inline(self, worker: _Worker, request: _Request) -> None:
        """``writer="inline"``: run ``request`` now, on this thread, and settle
        its future before returning (what the worker's thread would do)."""
        with self._inline_lock:
            if self._closed:
                _settle_now([(request, False, self._closed_error())])
                return
            try:
                conn = self._inline_conn
                if conn is None:
                    conn = self._inline_conn = worker._open([request])
                    if conn is None:
                        return  # refused with the reason it could not be opened
                worker._serve(conn, [request])
            except BaseException as error:  # a bug here must not leave the saga waiting
                if not request.future.done():
                    _settle_now([(request, False, worker._wrap(error))])
                if not isinstance(error, Exception):
                    raise

    # ------------------------------------------------------------------ SagaStore

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        """Record a new saga; ``SagaAlreadyExists`` if the id is taken (and
        ``ValueError`` for an id no store can key a saga by: see
        ``check_saga_id``)."""
        await self.submit_create(saga_id, saga_name, fingerprint, context, entries, status)

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Lease | None = None,
        after: int | None = None,
    ) -> None:
        """Add transitions and set the status/context when given, in one
        transaction. With ``fence``, only while the lease's token is current
        (else ``LeaseLost``, nothing written)."""
        await self.submit_append(saga_id, entries, status, context, fence, after)

    # The executor's hot path (``submits_writes``): ``create`` and ``append``
    # without their coroutines. Each queues the write for the writer thread (or
    # the writer process) and returns its future, which refuses cancellation;
    # bad input raises here, before anything is queued.

    def submit_create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        status: SagaStatus,
        deadline: float | None = None,
    ) -> asyncio.Future[None]:
        """``create``'s write, queued: its future. (``deadline``: the writer
        bounds each write itself; see ``journal.submits_writes``.)"""
        saga_id = check_saga_id(saga_id)
        text = _context_json(saga_id, context)
        if self.writer == "process":
            process = self._writer_process()
            if process is not None:
                return process.submit("c", (
                    saga_id, saga_name, fingerprint, status_text(status), text,
                    _storable_plain(entries),
                ))
        return self._submit(
            _create,
            (saga_id, saga_name, fingerprint, status_text(status), text, _storable(entries)),
            write=True,
            journal=True,
        )

    def submit_append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
        fence: Lease | None,
        after: int | None,
        deadline: float | None = None,
    ) -> asyncio.Future[None]:
        """``append``'s write, queued: its future (``deadline``: as ``submit_create``'s)."""
        saga_id = check_saga_id(saga_id)
        token: int | None = None
        if fence is not None:
            if fence.saga_id != saga_id:
                raise ValueError(
                    f"the lease is for saga {short_repr(fence.saga_id)}, not {short_repr(saga_id)}"
                )
            token = fence.token
        status_value = None if status is None else status_text(status)
        text = None if context is None else _context_json(saga_id, context)
        if self.writer == "process":
            process = self._writer_process()
            if process is not None:
                return process.submit(
                    "a", (saga_id, _storable_plain(entries), status_value, text, token, after)
                )
        return self._submit(
            _append, (saga_id, _storable(entries), status_value, text, token, after),
            write=True, journal=True,
        )

    def _writer_process(self) -> WriterProcess | None:
        """The writer process of the running loop: made by the first loop
        that writes; None for another loop (its writes take the thread)."""
        loop = asyncio.get_running_loop()
        process = self._process
        if process is not None and process.loop is loop:
            # The hot path: made already, for this loop. (close() clears
            # _process under the lock: a closed store goes on to refuse below.)
            return process
        with self._lock:
            if self._closed:
                raise self._closed_error()
            process = self._process
            if process is not None and process.loop.is_closed():
                # Its loop has ended (asyncio.run returned; the next test's
                # loop is here): stop its child, which would otherwise live
                # on unused until this process exits, and make this loop's.
                if self._process_finalizer is not None:
                    self._process_finalizer.detach()
                process.let_go(loop_closed=True)
                process = None
            if process is None:
                process = self._process = WriterProcess(
                    loop, (self.path, self.synchronous, self.busy_timeout), JournalFuture,
                    self.path,
                )
                # Dropped unclosed: the child stops (the finalizer holds the
                # process, never the store).
                self._process_finalizer = weakref.finalize(self, abandon_soon, process)
        return process if process.loop is loop else None

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record; ``SagaNotFound``, or ``CorruptSagaRecord`` for a
        row that cannot be read back."""
        record: SagaRecord = await self._submit(_load, (check_saga_id(saga_id),), write=False)
        return record

    # ------------------------------------------------------------------ RecoverableStore

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
        before: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
    ) -> list[SagaSummary]:
        """Newest first. A row that cannot be read is logged and left out.

        ``before`` (a saga id) lists the sagas after it, for the next page
        (``SagaNotFound`` if it is gone); ``created_since <= created_at <
        created_until`` (Unix time) when given."""
        args = (
            None if status is None else status_text(status),
            saga_name,
            non_negative_int("limit", limit),
            None if before is None else check_saga_id(before),
            _optional_time("created_since", created_since),
            _optional_time("created_until", created_until),
        )
        summaries: list[SagaSummary] = await self._submit(_list, args, write=False)
        return summaries

    async def count_sagas(
        self,
        *,
        saga_name: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
    ) -> dict[tuple[str, SagaStatus], int]:
        """How many sagas there are, by (saga name, status); filtered like
        ``list_sagas``. Pairs with no saga are absent."""
        args = (
            saga_name,
            _optional_time("created_since", created_since),
            _optional_time("created_until", created_until),
        )
        counts: dict[tuple[str, SagaStatus], int] = await self._submit(_count, args, write=False)
        return counts

    async def lease_state(self, saga_id: str) -> LeaseState:
        """The saga's lease owner, expiry and fencing token; ``SagaNotFound``."""
        state: LeaseState = await self._submit(
            _lease_state, (check_saga_id(saga_id),), write=False
        )
        return state

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int
    ) -> list[Lease]:
        """Lease up to ``limit`` interrupted sagas (RUNNING/COMPENSATING, not
        updated for ``older_than`` seconds, no unexpired lease), oldest first,
        inside one ``BEGIN IMMEDIATE`` transaction; each claim increments the
        saga's fencing token. Negative durations are allowed (tests use them
        for "already expired" without sleeping)."""
        args = (
            check_owner(owner),
            finite_seconds("lease_seconds", lease_seconds),
            finite_seconds("older_than", older_than),
            non_negative_int("limit", limit),
        )
        leases: list[Lease] = await self._submit(_claim, args, write=True)
        return leases

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """Lease one saga by id, whatever its age (``Saga.resume`` uses it);
        ``SagaBusy`` if another worker holds an unexpired lease on it."""
        args = (
            check_saga_id(saga_id),
            check_owner(owner),
            finite_seconds("lease_seconds", lease_seconds),
        )
        lease: Lease = await self._submit(_claim_saga, args, write=True)
        return lease

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now (the store's clock), if
        its fencing token is still the saga's current one; else ``LeaseLost``
        (``SagaNotFound`` if the saga is gone). The heartbeat of a resumed saga:
        it changes neither the saga's version nor its ``updated_at``."""
        check_saga_id(lease.saga_id)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        renewed: Lease = await self._submit(_renew, (lease, seconds), write=True)
        return renewed

    async def release(self, lease: Lease) -> None:
        """Clear the lease, if it is still the saga's current one."""
        await self._submit(_release, (check_saga_id(lease.saga_id), lease.token), write=True)

    async def defer(self, lease: Lease, seconds: float) -> None:
        """``release`` the lease (if it is still the saga's current one), and
        keep the saga out of ``claim`` for ``seconds``; ``claim_saga`` leases
        it at once all the same. For a child saga its parent drives: recovery
        defers it rather than claim it again and again."""
        args = (check_saga_id(lease.saga_id), lease.token, finite_seconds("seconds", seconds))
        await self._submit(_defer, args, write=True)

    async def purge(self, *, older_than: float) -> int:
        """Delete finished sagas (and their history) not updated for
        ``older_than`` seconds; returns how many.

        ``PURGE_BATCH`` sagas a transaction: a purge of millions holds the
        write lock for one batch at a time, not for all of them, so the
        journal writes of live sagas (of other processes too) go on between
        batches. A saga that finishes meanwhile is not purged by this call."""
        older_than = finite_seconds("older_than", older_than)
        loop = asyncio.get_running_loop()
        total = 0
        cutoff: float | None = None
        while True:
            limit = PURGE_BATCH
            started = loop.time()
            count: int
            count, cutoff = await self._submit(
                _purge, (older_than, limit, cutoff), write=True
            )
            total += count
            if count < limit:
                return total
            # Leave the lock free for as long as the batch held it: another
            # process waiting for it polls (SQLite's busy handler sleeps up to
            # 0.1 s between tries), and a purge taking it back at once would
            # starve it all the same.
            await asyncio.sleep(loop.time() - started)


# ------------------------------------------------------------------------- fork

# Every store of the process, for a forked child to reset (weakly: a store
# dropped is gone from it).
_STORES: weakref.WeakSet[SQLiteSagaStore] = weakref.WeakSet()
# In a forked child: connections a parent's thread was using at the fork,
# kept (never closed, never freed) for the child's life.
_FORKED_MID_REQUEST: list[sqlite3.Connection] = []


# How long a fork waits for a store's request in progress (a commit waiting
# on another process's lock may take up to busy_timeout) before it goes on.
_FORK_WAIT = 10.0


# The stores held across a fork (strongly: each must be released after it).
_HELD_FOR_FORK: list[SQLiteSagaStore] = []


def _before_fork() -> None:
    _HELD_FOR_FORK[:] = _STORES
    for store in _HELD_FOR_FORK:
        store._hold_for_fork()


def _after_fork_in_parent() -> None:
    for store in _HELD_FOR_FORK:
        store._release_after_fork()
    _HELD_FOR_FORK.clear()


def _after_fork_in_child() -> None:
    for store in _HELD_FOR_FORK:
        store._forget_the_parents()
    _HELD_FOR_FORK.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
