"""The numbers a caller gives the library (seconds, factors, claim sizes), checked.

One check for every number of seconds taken — a worker's, a recovery's, a
``SubSaga``'s lease, a ``CircuitBreaker``'s timings, a ``RetryPolicy``'s
delays — so each is refused alike: a ``ValueError`` that names the argument
and shows what was given (shortened), whatever it was: a str from a config
file, a bool, NaN, infinity, a number below the least allowed, an int no
float can hold (``float()`` of it is an ``OverflowError`` that names
nothing), a claim larger than a store's SQL integer.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = [
    "MAX_CLAIM", "claim_count", "finite_number", "number_given", "seconds_given", "shown",
]


def shown(value: object) -> str:
    """``repr(value)``, shortened to 80 characters for a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float that a float
    holds, else ``None``: a bool is no number here (``True`` is an int to
    Python, never one second to a user), and an int too large for a float is
    no finite number (``float()`` and ``math.isfinite`` of it raise an
    ``OverflowError``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def number_given(
    name: str,
    value: object,
    *,
    least: float,
    above: bool = False,
    unit: str = "",
    owner: str | None = None,
) -> float:
    """``value`` as a float, refused with a ``ValueError`` naming ``name``
    (after ``owner``, the class refusing it, if given) unless a finite number
    ``>= least`` (``> least`` when ``above``). ``unit`` is said in the message
    ("a finite number of seconds")."""
    number = finite_number(value)
    if number is None or not (number > least if above else number >= least):
        named = name if owner is None else f"{owner} {name}"
        wanted = f"a finite number of {unit}" if unit else "a finite number"
        bound = f"{'>' if above else '>='} {least:g}"
        raise ValueError(f"{named} must be {wanted} {bound}, got {shown(value)}")
    return number


def seconds_given(
    name: str, value: float | timedelta, *, positive: bool, owner: str | None = None
) -> float:
    """``value`` (seconds, or a ``timedelta``) as a float, refused with a
    ``ValueError`` naming ``name`` unless finite and > 0 (``positive``) or >= 0."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return number_given(name, value, least=0, above=positive, unit="seconds", owner=owner)


# Claim limits go to the store as an SQL INTEGER (SQLite) or bigint (PostgreSQL).
MAX_CLAIM = 2**63 - 1


def claim_count(name: str, value: object) -> int:
    """``value`` (a ``limit`` or a ``concurrency``: how many sagas a claim asks
    for) as an int from 1 to ``MAX_CLAIM``, else a ``ValueError`` naming
    ``name``: a larger one made every claim fail in the store (an SQL
    integer's overflow), a ``RecoveryWorker``'s for ever."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {shown(value)}")
    if value > MAX_CLAIM:
        raise ValueError(f"{name} must be at most 2**63 - 1, got {value!r}")
    return value
