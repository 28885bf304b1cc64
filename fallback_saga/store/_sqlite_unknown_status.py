"""Rows of a SQLite saga store whose status is none the store writes
(``'RUNNING'``, ``'paused'``, a BLOB: another tool's row, or a damaged
page), found for a claim to report (S12).

Every reader refuses such a row (``saga_status``: "unknown saga status"),
and whether its saga is in flight is unknown. The claim takes sagas by
status (running, compensating) and so never met it: no ``recover`` pass,
no worker, no log line named the saga, left waiting for ever. It is never
leased (nothing could resume it); the claim reports it as skipped, with
the readers' words (``_sqlite_leases._claim``).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from ..status import SagaStatus
from ._common import unknown_status
from ._sqlite_rows import _lenient_text

__all__ = ["unknown_status_rows"]

# The statuses the store writes, in the index's (BINARY) order.
_KNOWN: Final = tuple(sorted(status.value for status in SagaStatus))

# Every range of sagas_by_status around the statuses the store writes:
# below the first (SQLite orders numbers before text, but a TEXT column
# holds none), between two, above the last (a BLOB, text that is not UTF-8
# after 'r'). The planner walks each range from the index (a MULTI-INDEX OR:
# one seek a range), reading no saga of a known status — the sagas finished
# years ago included: a few seeks a claim. INDEXED BY, as the claim's:
# filtered by name, the planner took a scan of the whole table.
_RANGES: Final = " OR ".join(
    ["status < ?", *["(status > ? AND status < ?)"] * (len(_KNOWN) - 1), "status > ?"]
)
# Each known status bounds the range below it and the one above it.
_BOUNDS: Final = tuple(status for status in _KNOWN for _ in ("below", "above"))
_UNKNOWN_STATUS: Final = (
    "SELECT saga_id, status FROM sagas INDEXED BY sagas_by_status WHERE (" + _RANGES + ")"
)


def unknown_status_rows(
    cursor: sqlite3.Cursor, named: str, names: tuple[str, ...], limit: int
) -> list[tuple[object, str]]:
    """Up to ``limit`` rows whose status the store does not know (saga id
    as stored, why); ``named``: the claim's filter by name (its parameters,
    ``names``), so a worker is told of its own sagas only."""
    with _lenient_text(cursor):
        rows = cursor.execute(
            _UNKNOWN_STATUS + named + " LIMIT ?", (*_BOUNDS, *names, limit)
        ).fetchall()
    return [(saga_id, unknown_status(status)) for saga_id, status in rows]
