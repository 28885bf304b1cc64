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

An error text quotes what a participant's exception says, and that may be a
card number under its key (``{'card_number': '4111...'}``), a token in a
URL's query or a password: logs and traces are kept and read more widely
than the journal, so what the library writes there is redacted as the
operator's views show it (``shown_text.redact``), always — the same filter
redacts every str and exception argument, and ``logged_text`` is what the
OpenTelemetry adapter records. A record logged with ``exc_info`` carries
its traceback, whose last line (and each chained error's) quotes the text:
the filter presets the record's ``exc_text``, which a standard ``Formatter``
writes in place of formatting ``exc_info``, to the traceback with each error
text as ``logged_text`` writes it. ``exc_info`` itself stays the exception
(a handler may want the object): a formatter that formats it on its own
(some JSON formatters) writes the text as raised. Only a line actually
written pays for it: a filter runs after the logger's level check.
"""

from __future__ import annotations

import logging
import re
import traceback
from types import TracebackType
from typing import Final, TypeAlias

from .errors import MAX_ERROR_TEXT, cut_text
from .shown_text import may_quote_secret, redact, redact_start

__all__ = ["ONE_LINE", "library_logger", "logged_text", "logged_traceback", "one_line"]

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]

_LINE_BREAKERS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _redacted(text: str) -> str:
    # Most arguments are ids and names: a text with none of the marks of
    # ``redact``'s patterns ("=", ":", a JWT's or an API key's prefix, ...)
    # costs one scan.
    return redact(text) if may_quote_secret(text) else text


def logged_text(text: str) -> str:
    """An error text as the library writes it to a log or a trace: redacted
    (``shown_text.redact``), then cut to ``MAX_ERROR_TEXT`` characters
    (``errors.cut_text``: the count of what is left out is of ``text``)."""
    if len(text) <= MAX_ERROR_TEXT:
        return _redacted(text)
    # Redacted before it is cut: a cut through a secret would leave a start
    # of it that ``redact`` no longer recognizes.
    return redact_start(text, MAX_ERROR_TEXT)[:MAX_ERROR_TEXT] + cut_text(text)[MAX_ERROR_TEXT:]


def one_line(value: object) -> object:
    """A str or an exception as a log line shows it: redacted (a secret it
    quotes is ``***``), control characters escaped (``\\x0a``), an
    exception's text cut (``logged_text``); any other value, and one with
    nothing to redact, escape or cut, as it is (``%d`` wants an int; a
    handler may read an exception argument)."""
    if value.__class__ is str:
        whole = str(value)
        text = _redacted(whole)
    elif isinstance(value, BaseException):
        whole = str(value)
        text = logged_text(whole)
    else:
        return value
    if text.isprintable():
        return value if text == whole else text
    return _LINE_BREAKERS.sub(_escape_char, text)


def logged_traceback(error: BaseException) -> str:
    """``error``'s traceback as ``traceback.format_exception`` writes it,
    each error text in it — the raised one's and those it chains — as
    ``logged_text`` writes it: redacted and cut. Its frames and line breaks
    are kept: a traceback is many lines. (What the OpenTelemetry adapter
    records as ``exception.stacktrace``.)"""
    return _logged_parts(traceback.format_exception(type(error), error, error.__traceback__))


def _logged_traceback(exc_info: _ExcInfo) -> str:
    """A record's traceback as ``logging.Formatter.formatException`` writes
    it (without its last line break), as ``logged_traceback`` does."""
    text = _logged_parts(traceback.format_exception(*exc_info))
    return text[:-1] if text.endswith("\n") else text


def _logged_parts(parts: list[str]) -> str:
    # Part by part: one part is a frame or one error's ``Type: text`` line,
    # so no secret's pattern reaches across.
    return "".join(map(logged_text, parts))


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(map(one_line, args))
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None and not record.exc_text:
            # A standard ``Formatter`` writes a preset ``exc_text`` in place
            # of formatting ``exc_info`` itself: the traceback's last line
            # quotes the error's text, which may carry a secret.
            record.exc_text = _logged_traceback(exc_info)
        return True


ONE_LINE: Final = _OneLine()


def library_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, with ``ONE_LINE`` (added once)."""
    logger = logging.getLogger(name)
    logger.addFilter(ONE_LINE)
    return logger
