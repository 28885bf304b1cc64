"""A SQLite saga store's retention, in SQL: ``purge``'s batches of finished
sagas (a child saga after its parent, never one a lease holds) and the
count of old finished ones (``old_finished``). Every statement is
parameterized."""

from __future__ import annotations

import sqlite3
from typing import Final

from ._sqlite_sql import _Txn

# --------------------------------------------------------------------------- SQL

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
