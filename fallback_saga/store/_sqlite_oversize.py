"""A journal write that holds a value larger than SQLite can store.

SQLite refuses a string or a row longer than the connection's
``SQLITE_LIMIT_LENGTH`` (10**9 bytes unless lowered) with ``SQLITE_TOOBIG``.
That refusal is for good: the same write is refused again at every retry,
and a run that stopped on it would be left for recovery, whose every pass
would run the step again and be refused again, for ever. So the writer
looks at what was too large, once, and makes the write fit or says why it
never will:

* a step's response is journaled as the marker of a response that could not
  be kept (``results.UnjournaledResponse`` on resume), as one that is not
  JSON is: the step's effect has happened and the saga goes on;
* an error text is cut (the executor cuts them already; this is for a
  limit lowered below that);
* a context is refused with ``ContextSerializationError``: at a saga's
  creation nothing has run and the caller is told; after a step, the run
  unwinds, as for any context the store cannot hold (``write_ahead``).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from ..errors import ContextSerializationError, short_id
from ._responses import oversized_response
from ._sqlite_sql import _append, _create, _Request
from .base import JournalEntry

__all__ = ["fit_oversized", "too_big"]

# What a row needs beside its large value (ids, names, numbers, SQLite's
# record header): a value within this of the limit is taken as the cause.
_ROW_ROOM: Final = 4096


def too_big(error: BaseException) -> bool:
    """Whether SQLite refused a value longer than it stores (``SQLITE_TOOBIG``)."""
    return getattr(error, "sqlite_errorname", "") == "SQLITE_TOOBIG"


def fit_oversized(
    conn: sqlite3.Connection, request: _Request, path: str
) -> _Request | ContextSerializationError | None:
    """``request`` (a journal write refused with ``SQLITE_TOOBIG``) made to
    fit: responses too large replaced by their marker, error texts cut; or
    the refusal of a context too large; or None when nothing in it is too
    large by itself (the refusal then stands as the store's error)."""
    if request.op is _create:
        saga_id, _name, _fingerprint, _status, context, entries = request.args
    elif request.op is _append:
        saga_id, entries, _status, context, _token, _after = request.args
    else:
        return None
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    room = max(limit - _ROW_ROOM, limit // 2)
    if context is not None and _size(context) > room:
        return _context_refused(saga_id, _size(context), limit, path)
    fitted: list[Any] = []
    changed = False
    for entry in entries:
        error, result = entry[6], entry[8]
        if result is not None and _size(result) + _size(error) > room:
            result = _marker(saga_id, entry[1], result, limit)
        if error is not None and _size(error) > room:
            error = _cut(error, room)
        if error is entry[6] and result is entry[8]:
            fitted.append(entry)
            continue
        changed = True
        row = (*entry[:6], error, entry[7], result)
        # A JournalEntry on the writer thread, a plain tuple from the writer process's pipe.
        fitted.append(JournalEntry._make(row) if isinstance(entry, JournalEntry) else row)
    if not changed:
        return None
    args = list(request.args)
    args[5 if request.op is _create else 1] = tuple(fitted)
    return request._replace(args=tuple(args))


def _size(text: str | None) -> int:
    """The bytes SQLite stores for ``text`` (UTF-8); counted only when it may matter."""
    if text is None:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _context_refused(
    saga_id: str, size: int, limit: int, path: str
) -> ContextSerializationError:
    refusal = ContextSerializationError("<context>", {})
    refusal.args = (
        f"the context of saga {short_id(saga_id)} cannot be journaled: its journal form "
        f"is {size} bytes, more than "
        f"the SQLite saga store {path} holds in a row (SQLITE_LIMIT_LENGTH: {limit} "
        f"bytes); nothing was written",
    )
    return refusal


def _marker(saga_id: str, step: str, result: str, limit: int) -> str:
    return oversized_response(saga_id, step, result, (
        f"its journal form is {_size(result)} bytes, more than the SQLite saga store "
        f"holds in a row (SQLITE_LIMIT_LENGTH: {limit} bytes)"
    ))


def _cut(error: str, room: int) -> str:
    keep = max(room // 4 - 100, 0)  # 4 bytes a character at most, and the note
    return f"{error[:keep]}… [{len(error) - keep} more characters not journaled]"
