"""Rows of a PostgreSQL saga store whose status is none the store writes
(``'RUNNING'``, ``'paused'``, ``''``: another tool's row), found for a claim
to report (S12), as SQLite's claim does (``_sqlite_unknown_status``).

Every reader refuses such a row (``saga_status``: "unknown saga status"),
and whether its saga is in flight is unknown. The claim takes sagas by
status (running, compensating) and so never met it: no ``recover`` pass,
no worker, no log line named the saga, left waiting for ever. It is never
leased (nothing could resume it); the claim reports it as skipped, with the
readers' words (``_postgres_claims``), to whoever collects skipped rows.

The status column is ``text NOT NULL`` with no CHECK: any text fits, the
empty string included (no NUL, no invalid UTF-8: the server refuses both).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Final

from ..status import SagaStatus
from ._common import unknown_status

__all__ = ["ARMS", "unknown_status_query", "unknown_status_reasons"]

# The statuses the store writes, in the order of the status index
# (fallback_saga_sagas_by_status: status, seq). They are lowercase ASCII
# letters, which C, libc and ICU collations alike order as Python does.
_KNOWN: Final = tuple(sorted(status.value for status in SagaStatus))

# "status NOT IN (known)" as the index's ranges around the known statuses:
# below the first, between two, above the last. A btree answers "<>" only
# by reading every entry: the planner took a scan of the whole table, every
# saga finished years ago (100,000 finished sagas: 2,273 pages read, 11 ms,
# against 22 pages, 0.1 ms). Literals, not parameters: constants of the
# library, which the planner (a prepared statement's generic plan too) sees.
_RANGES: Final = (
    f"status < '{_KNOWN[0]}'",
    *[f"status > '{low}' AND status < '{high}'" for low, high in pairwise(_KNOWN)],
    f"status > '{_KNOWN[-1]}'",
)
ARMS: Final = len(_RANGES)
# Should a collation order the known statuses otherwise, a known one is
# still never reported.
_NOT_KNOWN: Final = "status NOT IN (" + ", ".join(f"'{value}'" for value in _KNOWN) + ")"


def unknown_status_query(sagas: str, named: str) -> str:
    """The query, one arm a range, each its own walk of the index in its
    order with a LIMIT: a plan the planner keeps whatever its statistics say
    (one OR of the ranges became a bitmap scan once the table was analyzed,
    a scan of the whole table before — after a bulk load, say). ``named``:
    the claim's filter by name (a parameter per arm, before its LIMIT's).
    No order overall: the few rows found, as the arms find them."""
    arms = " UNION ALL ".join(
        f"(SELECT saga_id, status FROM {sagas} WHERE {condition} AND {_NOT_KNOWN}{named}"
        " ORDER BY status LIMIT %s::bigint)"
        for condition in _RANGES
    )
    return f"SELECT saga_id, status FROM ({arms}) AS unknown LIMIT %s::bigint"


def unknown_status_reasons(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(saga id, status) rows as (saga id, why): the readers' words."""
    return [(saga_id, unknown_status(status)) for saga_id, status in rows]
