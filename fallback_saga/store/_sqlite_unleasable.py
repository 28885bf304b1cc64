"""Which rows of a SQLite saga store a claim cannot lease: the one
predicate the claim (``_sqlite_leases._claim``) skips a row by and the
readers (``_sqlite_reads``: listings, ``load``) show it as unreadable by,
so that an operator is told what ``recover()`` reports (S12) — never a row
the claim calls corrupt shown as a healthy running or parked saga.

Only a saga in flight (``IN_FLIGHT``) is judged by it: the claim reads no
other, and a finished saga's lease columns are read by nothing that runs it.
"""

from __future__ import annotations

from typing import Final

from ..status import SagaStatus
from ._common import MAX_SAGA_ID_LENGTH, check_saga_id
from ._sqlite_rows import _is_time, _not_text

__all__ = [
    "IN_FLIGHT", "LARGEST_INTEGER", "MAYBE_UNLEASABLE_SQL", "count_problem", "lease_problem",
]

# SQLite's largest integer. A claim writes the fence (and the count of
# claims) plus one: from there the write overflows, and fails the whole
# batch's claim — one such row stopped every recovery pass (S12).
LARGEST_INTEGER: Final = 2**63 - 1

# The statuses a claim takes sagas of (as stored).
IN_FLIGHT: Final = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)


def count_problem(column: str, value: object) -> str | None:
    """Why ``value`` (a fence, a count of claims) cannot be claimed past, or ``None``."""
    if type(value) is not int:
        return f"its {column} is not an integer"
    if value >= LARGEST_INTEGER:
        return f"its {column} is too large to be counted on"
    return None


def lease_problem(
    saga_id: object, fence: object, expires_at: object, updated_at: object, claims: object,
    owner: object,
) -> str | None:
    """Why a claim cannot lease (and resume) this row of a saga in flight,
    or ``None``: the claim's reason, word for word, for every reader."""
    problem = count_problem("fence", fence)
    if problem is not None:
        return problem
    if not _is_time(updated_at) or not (expires_at is None or _is_time(expires_at)):
        return "its updated_at or lease_expires_at is not a finite number"
    if not isinstance(saga_id, str):
        return f"its saga id is {_not_text(saga_id)}"
    try:
        check_saga_id(saga_id)
    except ValueError as bad:
        return f"its saga id is not one a saga can have ({bad})"
    problem = count_problem("unreleased_claims", claims)
    if problem is not None:
        return problem
    # A lease owner that is no text (another tool's) made the listing,
    # lease_state and claim_saga call the saga unreadable while the claim,
    # which overwrites it, leased and resumed it: the saga that ran was one
    # the operator's list never showed. Skipped and reported, as they say.
    if owner is not None and not isinstance(owner, str):
        return f"its lease_owner is {_not_text(owner)}"
    return None


# Text that may not be plain ASCII (or hold a NUL): a character outside
# ' '..'~' (GLOB decodes every byte of 0x80 or more, valid UTF-8 or not,
# to a character outside it), or a NUL (where GLOB and length() stop, but
# the text's bytes go on). Literals: constants of the library, no value.
_MAYBE_NOT_ASCII: Final = (
    "({0} GLOB '*[^ -~]*' OR length(CAST({0} AS BLOB)) <> length({0}))"
)
# A finite number, by SQLite's order (NULL, numbers, text, BLOBs): text, a
# BLOB and an infinity are outside it, in one comparison, not three.
_LARGEST_FLOAT: Final = "1.7976931348623157e308"
_FINITE: Final = f"BETWEEN -{_LARGEST_FLOAT} AND {_LARGEST_FLOAT}"

# ``lease_problem``, in SQL, as a condition on a row of the sagas table that
# holds for every row it finds a problem with, and for few others (text
# that is not plain ASCII: an id or owner of other letters): a count (the
# console's, /metrics) finds the rows to leave out with it, then asks
# ``lease_problem`` of those alone — not every saga in flight read into
# Python (S12: every count agrees with the listing). Widen it with every
# condition added to ``lease_problem``; tests/test_s12_counts_agree_with_listing
# holds the two together. (coalesce: should a part be NULL, the row is
# judged rather than left out of both sides.) Each term is evaluated for
# every saga in flight a count reads: as few as will do (100,000 sagas in
# flight: 150 ms with them, 290 ms as first written, typeof by typeof).
MAYBE_UNLEASABLE_SQL: Final = (
    f"coalesce(typeof(fence) <> 'integer' OR fence >= {LARGEST_INTEGER}"
    f" OR NOT (updated_at {_FINITE})"
    f" OR NOT (coalesce(lease_expires_at, 0) {_FINITE})"
    f" OR typeof(unreleased_claims) <> 'integer' OR unreleased_claims >= {LARGEST_INTEGER}"
    # Not text, or empty: a BLOB sorts after every text, a number before.
    f" OR NOT (saga_id > '' AND saga_id < X'') OR length(saga_id) > {MAX_SAGA_ID_LENGTH}"
    f" OR {_MAYBE_NOT_ASCII.format('saga_id')}"
    " OR (lease_owner IS NOT NULL AND (typeof(lease_owner) <> 'text'"
    f" OR {_MAYBE_NOT_ASCII.format('lease_owner')})), 1)"
)
