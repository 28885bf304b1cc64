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
"""

from __future__ import annotations

from typing import Final

from ..status import SagaStatus

__all__ = ["INT4_MAX", "INT8_MAX", "IN_FLIGHT", "LEASABLE_SQL", "UNLEASABLE_SQL", "lease_problem"]

INT8_MAX: Final = 2**63 - 1  # the largest bigint: the fence's
INT4_MAX: Final = 2**31 - 1  # the largest integer: unreleased_claims'

# The statuses a claim takes sagas of (as stored).
IN_FLIGHT: Final = frozenset({SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value})

# The predicate in SQL (of a row of the sagas table), and its negation: the
# claim's conditions, written once.
UNLEASABLE_SQL: Final = f"(fence >= {INT8_MAX} OR unreleased_claims >= {INT4_MAX})"
LEASABLE_SQL: Final = f"(fence < {INT8_MAX} AND unreleased_claims < {INT4_MAX})"

FENCE_TOO_LARGE: Final = "its fence is too large to be counted on"
CLAIMS_TOO_LARGE: Final = "its unreleased_claims is too large to be counted on"


def lease_problem(status: object, fence: object, claims: object) -> str | None:
    """Why a claim cannot lease this row (``UNLEASABLE_SQL``, in Python),
    or ``None``: the claim's reason, word for word, for every reader."""
    if status not in IN_FLIGHT:
        return None
    if isinstance(fence, int) and fence >= INT8_MAX:
        return FENCE_TOO_LARGE
    if isinstance(claims, int) and claims >= INT4_MAX:
        return CLAIMS_TOO_LARGE
    return None
