"""Option values the commands share: durations (``7d``) and counts."""

from __future__ import annotations

import argparse
import re
from typing import Final

__all__ = [
    "MAX_COUNT",
    "MAX_DURATION",
    "format_duration",
    "park_after",
    "parse_duration",
    "positive_duration",
    "positive_int",
]

_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")

# Beyond these a value means nothing but a typo, and would overflow on its way
# (a float's infinity, a date past year 9999, SQLite's 64-bit integers): a
# usage error, not a store failure or a traceback.
MAX_DURATION: Final = 100 * 365 * 86400.0  # about a century, in seconds
MAX_COUNT: Final = 10**9


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"`` (``1.5h`` too) as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_cut(text)}: give seconds (90) or a number with a unit "
            f"(30s, 15m, 12h, 7d)"
        )
    seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]  # inf for 400 digits
    if not seconds <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_cut(text)}: at most {MAX_DURATION / 86400:.0f}d"
        )
    return seconds


def positive_duration(text: str) -> float:
    """``parse_duration``, longer than 0 (a lease): refused as the command
    line is read, before anything is imported or opened."""
    seconds = parse_duration(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {_cut(text)}: must be longer than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration`` for display: ``604800.0`` is ``7d``."""
    for unit in ("d", "h", "m"):
        size = _SECONDS_PER_UNIT[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_COUNT}, got {_cut(text)}"
        )
    return value


def park_after(text: str) -> int | None:
    """``--park-after``: a count as ``positive_int``, or ``never`` (``None``)."""
    if text.strip().lower() == "never":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_COUNT} or 'never', got {_cut(text)}"
        ) from None


def _cut(text: str) -> str:
    """``text`` as a message quotes it: a 400-digit number must not fill the screen."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "…"
