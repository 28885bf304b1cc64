"""Which rows of a PostgreSQL saga store a claim cannot lease: the one
predicate the claim leaves a saga in flight out by (``_postgres_sql``'s
``claimable``) and reports it by (``unclaimable``, for ``recover()``'s
report), and the readers (listings, ``load``, ``load_window``) show it as
unreadable by — so that an operator is told what ``recover()`` reports
(S12), never shown a row the claim calls corrupt as a running or parked saga.

A claim writes ``fence + 1`` (bigint) and ``unreleased_claims + 1`` (an
integer column, schema version 6): at their largest the write overflows,
which refused the whole batch, every claim, every pass. No store counts
that far: such a row was written by another tool. Only a saga in flight
(running or compensating) is judged: the claim reads no other.

A time at timestamptz's ``infinity`` or ``-infinity`` (another tool's
write too): no date, no JSON, so every reader refuses it. A lease that
expires at ``infinity`` is never due, so the claim never met the row and
nothing reported it — the saga waited forever; ``updated_at`` or
``created_at`` there made the claim lease a saga its resume cannot read,
counted towards parking every pass, and once parked never reported. Such
a row is left out and reported too, whoever holds the lease
(``NEVER_DUE_SQL``). ``touched_at`` only orders the claim (no reader shows
it) and ``lease_written_at`` at infinity is "ahead" (due at once, then
rewritten): neither is judged.
"""

from __future__ import annotations

import math
from typing import Final

from ..status import SagaStatus

__all__ = [
    "INT4_MAX", "INT8_MAX", "IN_FLIGHT", "LEASABLE_SQL", "NEVER_DUE_SQL", "UNLEASABLE_SQL",
    "lease_problem",
]

INT8_MAX: Final = 2**63 - 1  # the largest bigint: the fence's
INT4_MAX: Final = 2**31 - 1  # the largest integer: unreleased_claims'

# The statuses a claim takes sagas of (as stored).
IN_FLIGHT: Final = frozenset({SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value})

# The predicate in SQL (of a row of the sagas table), and its negation: the
# claim's conditions, written once. isfinite(NULL) is NULL: a lease never
# taken is written out. (No partial index holds it: it reads updated_at and
# lease_expires_at, which every append and renewal writes, and an index on
# them would end those updates in place (HOT); the ``unclaimable`` query is
# bounded by the claim's own walk instead: _postgres_claims.)
UNLEASABLE_SQL: Final = (
    f"(fence >= {INT8_MAX} OR unreleased_claims >= {INT4_MAX}"
    " OR NOT isfinite(created_at) OR NOT isfinite(updated_at)"
    " OR (lease_expires_at IS NOT NULL AND NOT isfinite(lease_expires_at)))"
)
LEASABLE_SQL: Final = (
    f"(fence < {INT8_MAX} AND unreleased_claims < {INT4_MAX}"
    " AND isfinite(created_at) AND isfinite(updated_at)"
    " AND (lease_expires_at IS NULL OR isfinite(lease_expires_at)))"
)
# Of those, the ones the claim's "due" never selects, whatever the clock says:
# reported at once rather than never.
NEVER_DUE_SQL: Final = "(lease_expires_at IS NOT NULL AND NOT isfinite(lease_expires_at))"

FENCE_TOO_LARGE: Final = "its fence is too large to be counted on"
CLAIMS_TOO_LARGE: Final = "its unreleased_claims is too large to be counted on"


def count_problem(fence: object, claims: object) -> str | None:
    """Why the claim cannot add one to this fence or count of claims, or
    ``None`` (``lease_state`` asks of any saga, as SQLite's does)."""
    if isinstance(fence, int) and fence >= INT8_MAX:
        return FENCE_TOO_LARGE
    if isinstance(claims, int) and claims >= INT4_MAX:
        return CLAIMS_TOO_LARGE
    return None


def time_problem(column: str, seconds: object) -> str | None:
    """Why a time read as seconds (``extract(epoch ...)``: ``infinity``
    reads as a float infinity) cannot be shown or compared, or ``None``."""
    if isinstance(seconds, float) and not math.isfinite(seconds):
        return f"its {column} is not a finite number"
    return None


def lease_problem(
    status: object, fence: object, claims: object, created_at: object = None,
    updated_at: object = None, expires_at: object = None,
) -> str | None:
    """Why a claim cannot lease this row (``UNLEASABLE_SQL``, in Python;
    the times as seconds), or ``None``: the claim's reason, word for word,
    for every reader. A time a reader does not read is ``None``."""
    if status not in IN_FLIGHT:
        return None
    return (
        count_problem(fence, claims)
        or time_problem("created_at", created_at)
        or time_problem("updated_at", updated_at)
        or time_problem("lease_expires_at", expires_at)
    )
