"""Unix times as text for people: what the CLI and the web console print."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_text"]


def utc_text(timestamp: float | None, *, precise: bool = False, missing: str = "-") -> str:
    """``timestamp`` as ``YYYY-MM-DD HH:MM:SS`` UTC (``precise``: with
    milliseconds); ``missing`` for ``None``, the raw repr for a time no
    calendar holds (stored data may be anything)."""
    if timestamp is None:
        return missing
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}" if precise else text
