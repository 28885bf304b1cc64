"""Reading a SQLite saga store's rows back: a row that cannot be read
(text that is not UTF-8, a value of the wrong kind) is named, never
quoted, so that a listing can skip it and go on (S12)."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from typing import Any

from ..errors import CorruptSagaRecord
from ._common import (
    decode_json,
    saga_status,
    short_repr,
    transition_status,
)
from .base import JournalEntry, SagaRecord

# --------------------------------------------------------------------------- decoding



def _decode_record(
    saga_id: str, row: tuple[Any, ...], steps: list[Any], first: int = 0
) -> SagaRecord:
    """``steps``: the saga's journal rows from seq ``first`` on, in seq
    order, read in the same snapshot as ``row`` (see ``_read``)."""
    saga_name, fingerprint, status, context_text, version, created_at, updated_at = row
    if not isinstance(context_text, str):
        raise CorruptSagaRecord(saga_id, "the context is not JSON text")
    try:
        context = decode_json(context_text)
    except ValueError as bad:  # JSONDecodeError included
        raise CorruptSagaRecord(saga_id, f"the context is not valid JSON ({bad})") from None
    if not isinstance(context, dict):
        raise CorruptSagaRecord(saga_id, "the context is not a JSON object")
    history: list[JournalEntry] = []
    for expected, (seq, position, step, branch, action, raw_status, attempt, error, at,
                   result) in enumerate(steps, first):
        if seq != expected or type(seq) is not int:
            # The store writes seqs 0, 1, ... and a writer only adds rows at
            # the end: read in one snapshot, a gap is a row lost (deleted by
            # hand, a damaged page), not a concurrent append. Resumed, its
            # first write would be refused as a JournalConflict on every
            # pass, reported as a journal that could not be written.
            raise CorruptSagaRecord(
                saga_id, f"transition {expected} is missing (seq {short_repr(seq)} follows)")
        step_status = transition_status(saga_id, seq, raw_status, branch, action)
        if not (
            type(position) is int
            and type(attempt) is int
            and isinstance(step, str)
            and (error is None or isinstance(error, str))
            and (result is None or isinstance(result, str))
            and _is_time(at)  # infinity: no date, and no JSON (the console, show --json)
        ):
            raise CorruptSagaRecord(saga_id, f"transition {seq} has a value of the wrong type")
        history.append(
            JournalEntry(position, step, branch, action, step_status, attempt, error, float(at),
                         result)
        )
    if type(version) is not int:
        raise CorruptSagaRecord(saga_id, "version is not an integer")
    return SagaRecord(
        saga_id=saga_id,
        saga_name=_text(saga_id, "saga_name", saga_name),
        fingerprint=_text(saga_id, "fingerprint", fingerprint),
        status=saga_status(saga_id, status),
        context=context,
        history=history,
        created_at=_number(saga_id, "created_at", created_at),
        updated_at=_number(saga_id, "updated_at", updated_at),
        version=version,
    )


def _text(saga_id: str, column: str, value: object) -> str:
    if not isinstance(value, str):
        raise CorruptSagaRecord(saga_id, f"{column} is {_not_text(value)}")
    return value


def _number(saga_id: str, column: str, value: object) -> float:
    if not _is_time(value):
        raise CorruptSagaRecord(saga_id, f"{column} is not a finite number")
    return float(value)  # type: ignore[arg-type]  # checked right here


def _is_time(value: object) -> bool:
    # A time that is not finite would break every date shown for it.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        math.isfinite(value)
    )


def _not_text(value: object) -> str:
    """What a stored value is instead of text (for a message)."""
    if isinstance(value, _Undecodable):
        return "text that is not valid UTF-8"
    return f"not text (a {type(value).__name__})"


def _unreadable(saga_id: object, problem: str) -> str:
    """``CorruptSagaRecord``'s message, also for a saga id that is no str
    (a BLOB, or text that is not UTF-8: shown as its escaped bytes)."""
    shown = short_repr(saga_id) if isinstance(saga_id, str) else _shown_bytes(saga_id)
    return f"saga {shown} in the store is unreadable: {problem}"


def _shown_bytes(value: object) -> str:
    """A value that is no str, as its (escaped) repr: ``b's\\xff'``."""
    return short_repr(bytes(value) if isinstance(value, _Undecodable) else value)


class _Undecodable(bytes):
    """Stored text that is not valid UTF-8, as its bytes (see ``_lenient_text``)."""

    __slots__ = ()


def _text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return _Undecodable(raw)


@contextlib.contextmanager
def _lenient_text(cursor: sqlite3.Cursor) -> Iterator[None]:
    """Within: text that is not valid UTF-8 reads as ``_Undecodable`` bytes.

    sqlite3 raises for such text, for the whole query: one row another tool
    wrote (or a damaged page) would hide every saga from a listing and stop
    every recovery (S12), and its error quotes the text. The checks of the
    values read then name the saga and skip it. For the reads that are not
    on the hot path only (a Python call per text value read).
    """
    conn = cursor.connection
    given = conn.text_factory
    conn.text_factory = _text_or_bytes
    try:
        yield
    finally:
        conn.text_factory = given
