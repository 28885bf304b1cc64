"""Turning user data into safe text: HTML escaping, visible control
characters, times and durations, and secrets kept out of messages."""

from __future__ import annotations

import html
import re
from typing import Final

from ..shown_text import cut_bytes, redact, redact_start, shown_start
from ..timestamps import utc_text

__all__ = [
    "attr",
    "cut_bytes",
    "esc",
    "format_age",
    "format_seconds",
    "format_time",
    "redact",
    "redact_start",
    "shorten",
    "shown_start",
    "visible",
]

# Control and format characters (Cc, Cf: bidi overrides, zero-width joiners)
# and lone surrogates: shown as escapes, so a saga id cannot hide or reorder
# what is printed around it.
_INVISIBLE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
_INVISIBLE_ALL: Final = re.compile(_INVISIBLE.pattern[:1] + "\t\n" + _INVISIBLE.pattern[1:])


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with invisible characters written as ``\\xNN``/``\\uNNNN``
    (tabs and newlines kept with ``keep_newlines``, for ``<pre>`` blocks)."""
    if text.isascii() and text.isprintable():
        return text
    return (_INVISIBLE if keep_newlines else _INVISIBLE_ALL).sub(_escape_char, text)


def esc(value: object, *, keep_newlines: bool = False) -> str:
    """Safe as HTML text and inside a double-quoted attribute, in HTML and inline SVG."""
    return html.escape(visible(str(value), keep_newlines=keep_newlines), quote=True)


def attr(value: object) -> str:
    """A class-name fragment from a known word; anything else becomes ``other``."""
    text = str(value)
    return text if re.fullmatch(r"[a-z_]{1,32}", text) else "other"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_seconds(seconds: float) -> str:
    """A duration for people: ``850 µs``, ``12.3 ms``, ``4.20 s``, ``3 min 5 s``, ``2 h 4 min``."""
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        value = seconds * 1e3
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 86400 * 2:
        hours, rest = divmod(int(seconds) // 60, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{seconds / 86400:.1f} d"


def format_time(timestamp: float | None, *, precise: bool = False) -> str:
    """Unix time as UTC text (``precise``: with milliseconds)."""
    return utc_text(timestamp, precise=precise, missing="\u2013")


def format_age(timestamp: float, now: float) -> str:
    """``12 s ago``, ``in 4 min`` (rounded for reading, not computing)."""
    delta = now - timestamp
    if abs(delta) < 1:
        return "just now"
    words = format_seconds(abs(delta))
    # Whole units read better here than "12.34 s ago".
    words = re.sub(r"(\d+)\.\d+ (s|ms)", r"\1 \2", words)
    return f"{words} ago" if delta > 0 else f"in {words}"
