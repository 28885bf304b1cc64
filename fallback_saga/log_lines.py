"""The library's loggers: one record, one line.

What the library logs quotes values it does not choose: saga ids (an order
number from a request), step names, error texts (an exception quoting a
downstream service's answer), what a store row holds. Logged as they are, a
line break in one forges a log line of its own
(``o-1\\n2026-12-05 03:00:00,000 INFO payment approved``), and a terminal
escape sequence rewrites what an operator sees. Every logger of the library
carries ``ONE_LINE``, a filter that escapes control characters (and line
separators, bidi overrides) in a record's arguments; ``LoggingListener``
applies ``one_line`` to the logger it is given too. An exception argument
is quoted cut to ``MAX_ERROR_TEXT`` characters (``errors.cut_text``): a
failure of megabytes makes no log line of megabytes.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from .errors import MAX_ERROR_TEXT, cut_text

__all__ = ["ONE_LINE", "library_logger", "one_line"]

_LINE_BREAKERS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(value: object) -> object:
    """A str or an exception as a log line shows it, control characters
    escaped (``\\x0a``), an exception's text cut (``errors.cut_text``);
    any other value, and one with nothing to escape or cut, as it is (``%d``
    wants an int; a handler may read an exception argument)."""
    if value.__class__ is str:
        text = str(value)
    elif isinstance(value, BaseException):
        text = str(value)
        if len(text) > MAX_ERROR_TEXT:
            text = value = cut_text(text)
    else:
        return value
    return value if text.isprintable() else _LINE_BREAKERS.sub(_escape_char, text)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(map(one_line, args))
        return True


ONE_LINE: Final = _OneLine()


def library_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, with ``ONE_LINE`` (added once)."""
    logger = logging.getLogger(name)
    logger.addFilter(ONE_LINE)
    return logger
