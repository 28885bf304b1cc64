"""Helpers shared by the durable stores (SQLite, PostgreSQL): compact JSON
that refuses NaN, the checks of saga ids, durations and counts they take, and
the future of a journal write the executor awaits itself."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final

from ..decoding import TAG
from ..errors import CorruptSagaRecord
from ..given_numbers import finite_number, shown
from ..status import SagaStatus, StepStatus
from ..stored_json import parse_stored_json

# How to get PostgreSQL's driver. A vendored copy (imported under another
# name) is not the fallback-saga distribution, whose extra would install a
# second copy of the library: it is told the drivers themselves.
POSTGRES_INSTALL_HINT: Final = (
    'pip install "fallback-saga[postgres]"'
    if __name__ == "fallback_saga.store._common"
    else 'pip install "psycopg[binary]>=3.2" "psycopg-pool>=3.2" (the drivers of this '
    'vendored copy)'
)

__all__ = [
    "MAX_SAGA_ID_LENGTH",
    "POSTGRES_INSTALL_HINT",
    "JournalFuture",
    "check_owner",
    "check_saga_id",
    "claim_names",
    "decode_json",
    "encode_json",
    "finite_seconds",
    "non_negative_int",
    "purge_statuses",
    "short_repr",
    "status_text",
    "valid_saga_ids",
    "whole_int",
]


class JournalFuture(asyncio.Future[Any]):
    """The future of a journal write (``create``/``append``) that a store
    makes whatever happens to the task awaiting it (SQLite: on its writer's
    queue; PostgreSQL: by its group commit's tasks): it cannot be cancelled.
    A task cancelled meanwhile gets its ``CancelledError`` once the outcome
    is known — with the outcome still readable here — instead of losing it.
    The executor relies on that (``outlives_cancellation``) to wait for a
    journal write without a task or a shield of its own: one wake-up per
    write (``journal.submits_writes``)."""

    outlives_cancellation: Final = True

    def cancel(self, msg: Any = None) -> bool:
        return False


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact JSON, NaN and infinities refused. json.dumps with options builds
    a new encoder on every call; this one is built once (on the hot path: one
    context per write)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python implementation)
        return json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    encode = make(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    # The same, with text as it is (not escaped): what tells a lone surrogate
    # pair from a character beyond the BMP, which ASCII JSON writes alike.
    encode_text = make(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode_json(value: Any) -> str:
        try:
            text = "".join(encode(value, 0))
        except ValueError:
            escaped = _escape(value)
            if escaped is value:
                raise  # NaN, an infinity
            return "".join(encode(escaped, 0))
        # A surrogate escape: a character beyond the BMP (an emoji), or a lone
        # surrogate, which JSON readers join to the next one if that makes a pair.
        if "\\ud" in text and _LONE_PAIR.search("".join(encode_text(value, 0))):
            return "".join(encode(_escape(value), 0))
        return text

    return encode_json


encode_json: Final = _make_encoder()


# Two adjacent lone surrogates: a JSON reader joins their escapes into one character.
_LONE_PAIR: Final = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")
_PAIR_JOINT: Final = re.compile(r"(?<=[\ud800-\udbff])(?=[\udc00-\udfff])")


def _escape(value: Any) -> Any:
    """``value`` with what JSON text cannot carry exactly tagged, in the
    journal's tags (``decoding.py`` reads them in every position); ``value``
    itself when it holds nothing such. Only called once the fast encoding
    failed or found a surrogate pair: such values are rare, and the common
    case pays nothing.

    * an int beyond ``sys.get_int_max_str_digits()`` (Python refuses to write
      it as decimal digits, and to read it back from them): its hexadecimal
      digits, which have no such limit — ``{"$fs": ["int", "-1f…"]}``;
    * a text holding two adjacent lone surrogates (which JSON reads back as
      the one character they would encode): in pieces cut between the two —
      ``{"$fs": ["str", ["…\\ud83d", "\\ude00…"]]}``; a dict with such a key:
      as its ``[key, value]`` pairs (``{"$fs": ["dict", …]}``).
    """
    cls = value.__class__
    if cls is int:
        try:
            int.__repr__(value)
        except ValueError:
            return {TAG: ["int", format(value, "x")]}
        return value
    if cls is str:
        if _LONE_PAIR.search(value):
            return {TAG: ["str", _PAIR_JOINT.split(value)]}
        return value
    if cls is list or cls is tuple:
        items = [_escape(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items
    if cls is dict:
        if any(_LONE_PAIR.search(key) for key in value if key.__class__ is str):
            return {TAG: ["dict", [[_escape(key), _escape(item)] for key, item in value.items()]]}
        entries = {key: _escape(item) for key, item in value.items()}
        if all(entries[key] is item for key, item in value.items()):
            return value
        return entries
    return value


# Stored JSON text, parsed as untrusted input (a ValueError for anything else).
decode_json: Final = parse_stored_json


def status_text(status: SagaStatus) -> str:
    if status.__class__ is SagaStatus:
        return status.value
    return SagaStatus(status).value  # a plain "running" is fine; "nonsense" is a ValueError


def finite_seconds(name: str, value: object) -> float:
    """``value`` as a float of seconds (any finite number: a time, a lease, an
    age), else a ``ValueError`` naming ``name``; checked as every number of
    seconds the library takes (``given_numbers``), 10**400 included."""
    seconds = finite_number(value)
    if seconds is None:
        raise ValueError(f"{name} must be a finite number of seconds, got {shown(value)}")
    return seconds


def whole_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


_FINAL_VALUES: Final = (
    SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value, SagaStatus.FAILED.value
)


def purge_statuses(statuses: object) -> tuple[str, ...]:
    """The statuses a purge was asked to delete, as their values, each once,
    in a fixed order: a collection of final ``SagaStatus`` members or their
    values (``"failed"``). A bare string is refused (it would read as its
    characters), and so are an empty collection (a purge that can delete
    nothing is a mistake) and a status a saga is still live in."""
    if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Collection):
        raise TypeError(
            f"statuses must be a collection of saga statuses, such as "
            f"[SagaStatus.COMPLETED, SagaStatus.FAILED], got {short_repr(statuses)}"
        )
    asked: set[str] = set()
    for status in statuses:
        try:
            value = SagaStatus(status).value
        except ValueError:
            raise ValueError(
                f"statuses: {short_repr(status)} is not a saga status; a purge takes "
                f"{', '.join(_FINAL_VALUES)}"
            ) from None
        if value not in _FINAL_VALUES:
            raise ValueError(
                f"statuses: a purge never deletes a {value} saga (it is still live); "
                f"it takes {', '.join(_FINAL_VALUES)}"
            )
        asked.add(value)
    if not asked:
        raise ValueError(f"statuses: name at least one of {', '.join(_FINAL_VALUES)}")
    return tuple(value for value in _FINAL_VALUES if value in asked)


# --------------------------------------------------------------------------- saga ids

#: The longest saga id a store takes, in characters. Ids are keys: every
#: store indexes them, every error message and operator listing shows them.
MAX_SAGA_ID_LENGTH: Final = 255


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` (control characters escaped) cut to at most ``limit``
    characters, with an ellipsis: how an error message shows a value that a
    caller chose (a 1 MB saga id must not make a 1 MB message)."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # repr() of the whole would cost as much as the value
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text by every store, or ``None``."""
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL.
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text (it contains a lone surrogate)"
    return None


def check_saga_id(saga_id: object) -> str:
    """``saga_id`` if every store can key a saga by it; else ``ValueError``.

    A saga id is a non-empty ``str`` of at most ``MAX_SAGA_ID_LENGTH``
    characters that is valid Unicode text (no lone surrogates, which UTF-8
    cannot encode) and holds no NUL character (which PostgreSQL text cannot
    hold). The error shows the id cut short (``short_repr``).
    """
    # The common case (a uuid4 hex, an order number) at the cost of a few
    # C-level checks: this runs for every saga run and every store call.
    if (
        type(saga_id) is str
        and 0 < len(saga_id) <= MAX_SAGA_ID_LENGTH
        and saga_id.isascii()
        and "\x00" not in saga_id
    ):
        return saga_id
    if not isinstance(saga_id, str):
        raise ValueError(
            f"a saga id must be a str, got {type(saga_id).__name__} {short_repr(saga_id)}"
        )
    if not saga_id:
        raise ValueError("a saga id must not be empty")
    if len(saga_id) > MAX_SAGA_ID_LENGTH:
        raise ValueError(
            f"a saga id must be at most {MAX_SAGA_ID_LENGTH} characters long, got "
            f"{len(saga_id)}: {short_repr(saga_id)}"
        )
    problem = _text_problem(saga_id)
    if problem is not None:
        raise ValueError(f"saga id {short_repr(saga_id)} {problem}")
    return str.__str__(saga_id)  # a plain str, also for a str subclass


def valid_saga_ids(saga_ids: Iterable[object]) -> list[str]:
    """The ids of ``saga_ids`` a store can hold, once each, in order: the
    others (too long, a NUL, not text) are no saga's, so never there."""
    valid: dict[str, None] = {}
    for saga_id in saga_ids:
        try:
            valid[check_saga_id(saga_id)] = None
        except ValueError:
            continue
    return list(valid)


def check_owner(owner: object) -> str:
    """A lease owner name: a non-empty ``str`` that every store can hold."""
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"owner must be a non-empty str, got {short_repr(owner)}")
    problem = _text_problem(owner)
    if problem is not None:
        raise ValueError(f"owner {short_repr(owner)} {problem}")
    return owner


def claim_names(names: object) -> tuple[str, ...] | None:
    """The saga names a ``claim`` is limited to (``names=``), each once, in
    a fixed order (one SQL text and one plan per set of names); ``None``: no
    limit. A bare string is refused: it would read as its characters, and a
    worker would claim nothing of its own without a word."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Collection):
        raise TypeError(
            f"names must be a collection of saga names (or None), got {short_repr(names)}"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"names: a saga name is a str, got {short_repr(name)}")
        problem = _text_problem(name)
        if problem is not None:  # no store holds such a name: no saga has it
            raise ValueError(f"names: saga name {short_repr(name)} {problem}")
    return tuple(sorted(set(names)))


_BRANCHES: Final = frozenset({"primary", "fallback"})
_ACTIONS: Final = frozenset({"act", "compensate"})


def transition_status(
    saga_id: str, seq: object, raw_status: Any, branch: object, action: object
) -> StepStatus:
    """A journal row's status, once its status, branch and action are known
    ones; else ``CorruptSagaRecord`` naming the saga and the transition."""
    try:
        status = StepStatus(raw_status)
    except ValueError:
        raise CorruptSagaRecord(
            saga_id, f"transition {seq} has an unknown status {short_repr(raw_status)}"
        ) from None
    if branch not in _BRANCHES or action not in _ACTIONS:
        raise CorruptSagaRecord(
            saga_id,
            f"transition {seq} has an unknown branch/action "
            f"{short_repr(branch)}/{short_repr(action)}",
        )
    return status


def saga_status(saga_id: str, value: object) -> SagaStatus:
    """A saga row's status; ``CorruptSagaRecord`` naming the saga if unknown."""
    try:
        return SagaStatus(value)  # type: ignore[arg-type]  # checked right here
    except ValueError:
        raise CorruptSagaRecord(saga_id, unknown_status(value)) from None


def unknown_status(value: object) -> str:
    """Why a row with the saga status ``value`` (none the store writes) is
    unreadable: the readers' words (``saga_status``), and the claim's that
    reports such a row (``_sqlite_unknown_status``)."""
    return f"unknown saga status {short_repr(value)}"
