"""The numbers a caller gives the recovery API (seconds, claim sizes), checked.

Each is refused with a ``ValueError`` that names the argument, whatever was
given: a str from a config file, a bool, NaN, infinity, a negative number, an
int no float can hold (``float()`` of it is an ``OverflowError`` that names
nothing), a claim larger than a store's SQL integer.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["MAX_CLAIM", "claim_count", "seconds_given"]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def seconds_given(name: str, value: float | timedelta, *, positive: bool) -> float:
    """``value`` (seconds, or a ``timedelta``) as a float, refused with a
    ``ValueError`` naming ``name`` unless finite and > 0 (``positive``) or >= 0."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    refused = ValueError(f"{name} must be a finite number of seconds "
                         f"{'> 0' if positive else '>= 0'}, got {_shown(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refused
    try:
        seconds = float(value)
    except OverflowError:  # an int no float can hold: named, not "int too large"
        raise refused from None
    if not (seconds > 0 if positive else seconds >= 0) or seconds == float("inf"):
        raise refused
    return seconds


# Claim limits go to the store as an SQL INTEGER (SQLite) or bigint (PostgreSQL).
MAX_CLAIM = 2**63 - 1


def claim_count(name: str, value: object) -> int:
    """``value`` (a ``limit`` or a ``concurrency``: how many sagas a claim asks
    for) as an int from 1 to ``MAX_CLAIM``, else a ``ValueError`` naming
    ``name``: a larger one made every claim fail in the store (an SQL
    integer's overflow), a ``RecoveryWorker``'s for ever."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {_shown(value)}")
    if value > MAX_CLAIM:
        raise ValueError(f"{name} must be at most 2**63 - 1, got {value!r}")
    return value
