"""Option values the commands share: durations (``7d``) and counts."""

from __future__ import annotations

import argparse
import re

__all__ = ["format_duration", "parse_duration", "positive_int"]

_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"`` (``1.5h`` too) as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give seconds (90) or a number with a unit "
            f"(30s, 15m, 12h, 7d)"
        )
    return float(match[1]) * _SECONDS_PER_UNIT[match[2]]


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
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value
