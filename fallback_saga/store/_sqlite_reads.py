"""A SQLite saga store's reads, in SQL: a saga's record and a window of its
journal, the operator's listings and counts, and which ids the file holds.
Each runs on a store thread as ``op(cursor, txn, *args)`` (``_sqlite_sql``),
mostly on the reader's read-only connection. Every statement is parameterized."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ..errors import CorruptSagaRecord, SagaNotFound
from ..log_lines import library_logger
from ..status import SagaStatus
from ._common import finite_seconds, saga_status, short_repr
from ._listing_pages import ListingPages, UnreadableRow
from ._sqlite_rows import (
    _decode_record,
    _is_time,
    _lenient_text,
    _not_text,
    _number,
    _text,
    _unreadable,
)
from ._sqlite_sql import _Txn
from ._sqlite_unleasable import IN_FLIGHT, MAYBE_UNLEASABLE_SQL, lease_problem
from .base import HistoryWindow, SagaCounts, SagaRecord, SagaSummary, window_start

_log = library_logger("fallback_saga.store.sqlite")

# --------------------------------------------------------------------------- SQL

# The record's columns, then the ones the claim judges a row by
# (_sqlite_unleasable): a saga the claim skips as corrupt is read as such.
_SELECT_SAGA: Final = (
    "SELECT saga_name, fingerprint, status, context, version, created_at, updated_at,"
    " fence, lease_expires_at, unreleased_claims, lease_owner FROM sagas WHERE saga_id = ?"
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
# The fence too, for the claim's predicate (_sqlite_unleasable): a column
# of the row read anyway, no other read.
_SUMMARY_COLUMNS: Final = (
    "SELECT rowid, saga_id, saga_name, status, created_at, updated_at, lease_owner,"
    " lease_expires_at, unreleased_claims, fence FROM sagas"
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
    _check_leasable(saga_id, row)
    return _decode_record(saga_id, row[:_RECORD_COLUMNS], steps)


def _load_window(
    cursor: sqlite3.Cursor, txn: _Txn, saga_id: str, start: int, count: int,
    act_steps: bool = True,
) -> HistoryWindow:
    """The saga with ``count`` journal entries from ``start`` (negative:
    from the end): the rows of the window only, by the primary key, and
    the journal's length from its last seq (the store writes seqs 0, 1, ...).
    ``act_steps``: and the whole journal's act step names (a read of the
    saga's rows; the console's page does without)."""
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
        acts = cursor.execute(_ACT_STEPS, (saga_id,)).fetchall() if act_steps else []
        return row, first, entries, steps, acts

    try:
        row, first, entries, steps, acts = read()
    except sqlite3.OperationalError:
        with _lenient_text(cursor):  # as _load
            row, first, entries, steps, acts = read()
    _check_leasable(saga_id, row)
    record = _decode_record(saga_id, row[:_RECORD_COLUMNS], steps, first)
    # (A name that is no text is left to the rows that hold it: see _decode_record.)
    names = tuple(name for (name,) in acts if isinstance(name, str))
    return HistoryWindow(record, first, entries, names)


# _SELECT_SAGA's columns that _decode_record reads (the claim's follow).
_RECORD_COLUMNS: Final = 7


def _check_leasable(saga_id: str, row: Sequence[Any]) -> None:
    """``CorruptSagaRecord`` if the claim skips this saga as corrupt, with
    the claim's reason (``_sqlite_unleasable``): read back, it is not shown
    as a healthy saga in flight (or a parked one) that recovery never takes."""
    status, updated_at = row[2], row[6]
    if status not in IN_FLIGHT:
        return
    fence, expires_at, claims, owner = row[_RECORD_COLUMNS:]
    problem = lease_problem(saga_id, fence, expires_at, updated_at, claims, owner)
    if problem is not None:
        raise CorruptSagaRecord(saga_id, problem)


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
    _, saga_id, _, status, _, updated_at, owner, expires_at, claims, fence = row
    if not isinstance(saga_id, str):
        # In flight, in the claim's words (_sqlite_unleasable).
        problem = (
            lease_problem(saga_id, fence, expires_at, updated_at, claims, owner)
            if status in IN_FLIGHT else None
        )
        raise UnreadableRow(_unreadable(saga_id, problem or f"the saga id is {_not_text(saga_id)}"))
    return _summary(*row[1:])


def _summary(
    saga_id: object,
    name: object,
    status: object,
    created_at: object,
    updated_at: object,
    owner: object,
    expires_at: object,
    claims: object,
    fence: object,
) -> SagaSummary:
    """A listing's row, every value checked: what is handed out is what the
    types say (``CorruptSagaRecord`` otherwise) — and a saga in flight that
    the claim skips as corrupt is one, with the claim's reason
    (``_sqlite_unleasable``), never listed as running or parked."""
    assert isinstance(saga_id, str)  # checked by the caller
    if status in IN_FLIGHT:
        problem = lease_problem(saga_id, fence, expires_at, updated_at, claims, owner)
        if problem is not None:
            raise CorruptSagaRecord(saga_id, problem)
    # Past the check above, a lease owner that is no text, or an expiry
    # that is no finite number, is a finished saga's (or one of a status no
    # reader reads): shown as no lease, as its count of claims below — the
    # claim reads it not, and the counts find such rows by no index (S12:
    # every count agrees with the listing).
    if not isinstance(owner, str):
        owner = None
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
            float(expires_at)  # type: ignore[arg-type]  # checked right here
            if owner is not None and _is_time(expires_at)
            else None
        ),
        # Not a number: shown as none (a finished saga's: the claim reads it not).
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
) -> SagaCounts:
    """The sagas by (name, status) that the listing shows (S12): a saga in
    flight the claim skips as corrupt is left out, and counted as
    unreadable, as are the rows of a status or name no reader reads."""
    unreadable = 0
    if at_most is not None:
        groups = _capped_groups(cursor, saga_name, created_since, created_until, at_most)
    else:
        if (created_since is not None or created_until is not None) and _covers_most(
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
        # Counted from the index by status; those the listing leaves out, less.
        for key, count in _unlisted_groups(
            cursor, saga_name, created_since, created_until
        ).items():
            groups[key] = groups.get(key, 0) - count
            unreadable += count
    counts = SagaCounts()
    for (name, status), count in groups.items():
        if count <= 0:
            continue
        if not isinstance(name, str) or status not in _STATUS_VALUES:
            # Unreadable rows are left out, as from a listing.
            _log.warning(
                "leaving %d saga(s) out of the counts: name %s, status %s",
                count, short_repr(name), short_repr(status),
            )
            unreadable += count
            continue
        counts[name, SagaStatus(status)] = count
    # A bounded count reads a few sagas of each status the store writes: it
    # does not look for the others.
    counts.unreadable = unreadable if at_most is None else None
    return counts


# The sagas in flight the claim may skip as corrupt: found by the predicate's
# superset in SQL, each then judged by the listing (_listed). A read of every
# saga in flight's row (its index entry holds no fence), none of a finished
# saga's: INDEXED BY the claim's index, as the claim's own walk
# (_sqlite_leases) — with statistics, the planner took a scan of the whole
# table, every saga finished years ago (a few statuses, so "a third of the
# rows" a status).
_IN_FLIGHT_INDEX: Final = " INDEXED BY sagas_by_status"
_MAYBE_UNLEASABLE: Final = (
    f"{_SUMMARY_COLUMNS}{_IN_FLIGHT_INDEX} WHERE status IN (?, ?) AND {MAYBE_UNLEASABLE_SQL}"
)
# A finite number, by SQLite's order (NULL, numbers, text, BLOBs): past
# either end, text, a BLOB, an infinity.
_LARGEST_FLOAT: Final = "1.7976931348623157e308"
# What the listing leaves out of a saga of any status (_summary), past a
# name that is no text and a status no reader reads (counted apart, by
# group): a creation or update time that is no finite number, a saga id
# that is no text. Each found by a seek of an index (by creation time; by
# status and update time, of the statuses the store writes; the primary
# key), never by a read of every saga finished years ago; each then judged
# by the listing (_listed). (Text of an id that is not UTF-8 sorts among
# the others': not found here, in no index by its bytes.)
# (The update time's seeks name their index: with statistics, the planner
# took a scan of the whole table for "every status the store writes" —
# 110 ms at a million sagas, each count.)
_UNLISTED_SEEKS: Final = (
    ("", f"created_at > {_LARGEST_FLOAT}", ()),
    ("", f"created_at < -{_LARGEST_FLOAT}", ()),
    *(
        (_IN_FLIGHT_INDEX,
         f"status IN ({', '.join('?' * len(SagaStatus))}) AND updated_at {beyond}",
         tuple(status.value for status in SagaStatus))
        for beyond in (f"> {_LARGEST_FLOAT}", f"< -{_LARGEST_FLOAT}")
    ),
    ("", "saga_id IS NULL", ()),
    ("", "saga_id < ''", ()),  # a number
    ("", "saga_id >= X''", ()),  # a BLOB
)
# Of a saga in flight, a superset of what the listing leaves out, for a walk
# of one status's few sagas (a capped count, which reads each row it walks
# for the claim's predicate anyway): a time that is no finite number, an id
# or a name that is no plain ASCII text (coalesce: a NULL is judged), and
# the claim's (MAYBE_UNLEASABLE_SQL). A finished status is walked from the
# index alone, its unlisted rows sought (_capped_finished).
_MAYBE_UNLISTED_IN_FLIGHT: Final = (
    f"coalesce(NOT (created_at BETWEEN -{_LARGEST_FLOAT} AND {_LARGEST_FLOAT})"
    f" OR NOT (updated_at BETWEEN -{_LARGEST_FLOAT} AND {_LARGEST_FLOAT})"
    " OR NOT (saga_id > '' AND saga_id < X'') OR saga_id GLOB '*[^ -~]*'"
    " OR length(CAST(saga_id AS BLOB)) <> length(saga_id)"
    " OR typeof(saga_name) <> 'text' OR saga_name GLOB '*[^ -~]*'"
    f" OR length(CAST(saga_name AS BLOB)) <> length(saga_name), 1) OR {MAYBE_UNLEASABLE_SQL}"
)


def _status_index_rows(
    cursor: sqlite3.Cursor, statement: str, params: Sequence[Any]
) -> sqlite3.Cursor:
    """``statement`` (a walk of ``_IN_FLIGHT_INDEX``, by status and update
    time) run; on a file whose index was dropped by hand and opened
    read-only (a store with write access makes it again at open), without
    the hint."""
    try:
        return cursor.execute(statement, params)
    except sqlite3.OperationalError as error:
        if not str(error).startswith("no such index"):
            raise
        return cursor.execute(statement.replace(_IN_FLIGHT_INDEX, "", 1), params)


def _is_unlisted(row: Sequence[Any]) -> bool:
    """Whether the listing leaves this row (``_SUMMARY_COLUMNS``) out."""
    try:
        _listed(row)
    except (CorruptSagaRecord, UnreadableRow):
        return True
    return False


def _unlisted_groups(
    cursor: sqlite3.Cursor,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
) -> dict[tuple[Any, Any], int]:
    """The sagas in the window that the listing leaves out (S12), by
    (name, status) as stored: of the sagas in flight, those the claim skips
    as corrupt (``_sqlite_unleasable``); of any status, those
    ``_UNLISTED_SEEKS`` finds. Each row once, judged by the listing."""
    found = _windowed_filter(cursor, saga_name, created_since, created_until)
    if found is None:
        return {}
    where, params = found
    clause = "".join(" AND " + condition for condition in where)
    rows: dict[int, Sequence[Any]] = {}
    with _lenient_text(cursor):
        for row in _status_index_rows(cursor, _MAYBE_UNLEASABLE + clause, [*IN_FLIGHT, *params]):
            rows[row[0]] = row
    rows.update(_sought_rows(cursor, saga_name, created_since, created_until))
    return _unlisted_by_group(rows.values())


def _sought_rows(
    cursor: sqlite3.Cursor,
    saga_name: str | None,
    created_since: float | None,
    created_until: float | None,
) -> dict[int, Sequence[Any]]:
    """The rows ``_UNLISTED_SEEKS`` finds in the window, by rowid: each a
    seek of an index, the filters checked on the few rows it finds."""
    # The filters as conditions on the rows found (the unary "+": not an
    # index of theirs), the seek's index chosen.
    filters, values = _listing_filter(saga_name, created_since, created_until)
    unindexed = "".join(" AND +" + condition.lstrip("+") for condition in filters)
    rows: dict[int, Sequence[Any]] = {}
    with _lenient_text(cursor):
        for index, seek, seek_values in _UNLISTED_SEEKS:
            statement = f"{_SUMMARY_COLUMNS}{index} WHERE {seek}{unindexed}"
            for row in _status_index_rows(cursor, statement, [*seek_values, *values]):
                rows[row[0]] = row
    return rows


def _unlisted_by_group(rows: Iterable[Sequence[Any]]) -> dict[tuple[Any, Any], int]:
    """Of ``rows`` (``_SUMMARY_COLUMNS``), those the listing leaves out, by
    (name, status) as stored."""
    groups: dict[tuple[Any, Any], int] = {}
    for row in rows:
        if _is_unlisted(row):
            key = (row[2], row[3])
            groups[key] = groups.get(key, 0) + 1
    return groups


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
    is not looked for among the others' rows), of the sagas the listing
    shows. Of a status in flight, those it may leave out
    (``_MAYBE_UNLISTED_IN_FLIGHT``) are passed, then judged
    (``_capped_unlisted``); of any other, the walk reads no row but for
    the window's creation times (``sagas_by_name_status`` covers it), and
    the few rows the listing leaves out are sought as by the whole count
    (``_capped_finished``)."""
    found = _windowed_filter(cursor, saga_name, created_since, created_until)
    if found is None:
        return {}
    where, params = found
    # Of every status at once: a seek an index, each finding next to none.
    sought = _unlisted_by_group(
        _sought_rows(cursor, saga_name, created_since, created_until).values()
    )
    groups: dict[tuple[Any, Any], int] = {}
    for status in SagaStatus:
        if status.value not in IN_FLIGHT:
            unlisted = {name: n for (name, of), n in sought.items() if of == status.value}
            for name, count in _capped_finished(
                cursor, status.value, where, params, at_most, unlisted
            ).items():
                groups[name, status.value] = count
            continue
        conditions = ["status = ?", *where, f"NOT ({_MAYBE_UNLISTED_IN_FLIGHT})"]
        rows = _status_walk(cursor, conditions, [status.value, *params], at_most + 1)
        for name, count in rows:
            groups[name, status.value] = count
        read = sum(count for _, count in rows)
        if read <= at_most:  # every saga it may count is not read yet
            _capped_unlisted(cursor, groups, status.value, where, params, at_most + 1 - read)
    return groups


def _status_walk(
    cursor: sqlite3.Cursor, conditions: list[str], params: list[Any], limit: int
) -> list[Any]:
    """Up to ``limit`` sagas that meet ``conditions``, by name (name, count)."""
    statement = (
        "SELECT saga_name, COUNT(*) FROM (SELECT saga_name FROM sagas WHERE "
        + " AND ".join(conditions)
        + " LIMIT ?) GROUP BY saga_name"
    )
    with _lenient_text(cursor):
        return cursor.execute(statement, [*params, limit]).fetchall()


def _capped_finished(
    cursor: sqlite3.Cursor, status: str, where: list[str], params: list[Any],
    at_most: int, unlisted: dict[Any, int],
) -> dict[Any, int]:
    """Of a status not in flight, up to ``at_most + 1`` of the sagas the
    listing shows, by name as stored (a name that is no text is the
    caller's to leave out). ``unlisted``: this status's rows in the window
    that the listing leaves out and the seeks found, by name — the only
    ones it leaves out with a name that is text (the claim judges no saga
    of this status; see ``_summary``) — but an id that is text not UTF-8,
    which no index finds: counted, as by the whole count (left open).

    The walk reads the index alone and counts those rows too: it goes
    ``len(unlisted)`` further, and they are taken off. A walk that read
    every saga of the status read them all (exact); one stopped by its
    limit may have read some only, so what is taken off is at most what
    it read, and the counts are at least the limit less the rows taken off
    less any name that is no text: short of ``at_most + 1`` (rarely: such
    names among the status's newest sagas), the walk goes on."""
    hidden = sum(unlisted.values())
    limit = at_most + 1 + hidden
    while True:
        rows = _status_walk(cursor, ["status = ?", *where], [status, *params], limit)
        shown = {
            name: count - unlisted.get(name, 0)
            for name, count in rows
            if isinstance(name, str) and count > unlisted.get(name, 0)
        }
        listed = sum(shown.values())
        if sum(count for _, count in rows) < limit or listed > at_most:
            break
        limit += at_most + 1 - listed
    # Up to at_most + 1, as a status in flight (and as the walk of the
    # listed rows alone counted it).
    extra = listed - (at_most + 1)
    for name in sorted(shown, reverse=True):
        if extra <= 0:
            break
        taken = min(extra, shown[name])
        shown[name] -= taken
        extra -= taken
    return {name: count for name, count in shown.items() if count}


def _capped_unlisted(
    cursor: sqlite3.Cursor, groups: dict[tuple[Any, Any], int], status: str,
    where: list[str], params: list[Any], wanted: int,
) -> None:
    """Of the sagas of ``status`` (in flight) that the listing may leave
    out (those the count above passed), up to ``wanted`` more it shows,
    added to ``groups``. (Walked row by row, and left as soon as ``wanted``
    are found: rarely more than a few rows.)"""
    # (The planner's index, as the count's above: by status alone, between
    # the window's rowids; at most ``wanted`` rows it need not read.)
    statement = (
        f"{_SUMMARY_COLUMNS} WHERE "
        + " AND ".join(["status = ?", *where, f"({_MAYBE_UNLISTED_IN_FLIGHT})"])
    )
    with _lenient_text(cursor):
        for row in cursor.execute(statement, [status, *params]):
            if not _is_unlisted(row):
                groups[row[2], row[3]] = groups.get((row[2], row[3]), 0) + 1
                wanted -= 1
                if not wanted:
                    break


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
    with _lenient_text(cursor):  # a time that is text, and not UTF-8 (S12)
        first, last = cursor.execute(_CREATED_SPAN).fetchone()
    if not (isinstance(first, float | int) and isinstance(last, float | int)) or last <= first:
        return False  # no sagas, one instant, or a time that is no number (S12)
    since = first if created_since is None else max(first, created_since)
    until = last if created_until is None else min(last, created_until)
    return (until - since) * 2 > last - first


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


# The distinct names, in order: a look-up of the next name in
# sagas_by_name_status a name (a skip scan), not a read of every saga's
# entry. MIN over a range of the index's first column is one seek.
_SAGA_NAMES: Final = (
    "WITH RECURSIVE names (name) AS ("
    " SELECT (SELECT MIN(saga_name) FROM sagas)"
    " UNION ALL SELECT (SELECT MIN(saga_name) FROM sagas WHERE saga_name > names.name)"
    " FROM names WHERE names.name IS NOT NULL"
    ") SELECT name FROM names WHERE name IS NOT NULL LIMIT ?"
)


def _saga_names(cursor: sqlite3.Cursor, txn: _Txn, limit: int) -> list[str]:
    """The distinct saga names, in order, at most ``limit`` (a name that is
    no text, from a damaged row, is left out, as from a listing)."""
    with _lenient_text(cursor):
        rows = cursor.execute(_SAGA_NAMES, (limit,)).fetchall()
    return [name for (name,) in rows if isinstance(name, str)]
