"""Step responses in journal form: what ``JournalEntry.result`` holds.

Written here, on the way to a store; read back by ``results.py`` (whose
docstring tells the whole story). Kept beside the store contract so that
every store, and the executor, can put entries in journal form without
importing anything above the stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from ..class_caches import class_cache, remember
from ..codec import journal_object, journal_untyped
from ..decoding import TAG
from ..errors import MAX_ERROR_TEXT, ContextSerializationError, cut_text, short_id
from ..log_lines import library_logger
from ..status import StepStatus
from ..step import SagaStepResult
from ._common import encode_json
from .base import JournalEntry, RawEntry

__all__ = [
    "MAX_ERROR_TEXT", "UNJOURNALED", "error_text", "journal_entry", "oversized_response",
    "response_text",
]

_log = library_logger("fallback_saga")

_COMPLETED: Final = StepStatus.COMPLETED
# A raw entry's status (its value, or the member itself) -> the member.
_STEP_STATUS: Final[dict[str, StepStatus]] = {
    **{member.value: member for member in StepStatus},
    **{member: member for member in StepStatus},
}

# The journal form of a response that could not be kept: a tag the context
# codec never writes, so it cannot be confused with a journaled value.
UNJOURNALED: Final = "unjournaled"

def error_text(text: str) -> str:
    """``text`` as the journal keeps it: cut to ``MAX_ERROR_TEXT`` characters,
    saying how many were left out.

    Uncut, a failure's record could be more than a store holds (SQLite's
    SQLITE_LIMIT_LENGTH, PostgreSQL's 1 GB field), and the write that must
    record the failure — before anything is compensated — could never land:
    the run would stop for recovery, and every recovery pass would run the
    failing step again, for ever. The rest is for the service's own logs."""
    return cut_text(text, "not journaled")


# The class name in a response's journal form: {"$fs":["obj",["shop:Reserved", ...
_OBJECT_NAME: Final = re.compile(r'\{"\$fs":\["obj",\["([^"\\]{1,200})"')
_KINDS: Final = {'"': "str", "[": "list", "{": "dict"}


def oversized_response(saga_id: str, step: str, result: str, reason: str) -> str:
    """The journal form that replaces a step's response (``result``, its
    journal form) too large for the store to hold (``reason`` says what
    limit): the marker of a response that could not be kept, naming only
    its kind and ``reason`` — never the value, which may hold secrets. A
    resumed run gets an ``UnjournaledResponse`` in its place."""
    named = _OBJECT_NAME.match(result)
    kind = named.group(1) if named else _KINDS.get(result[:1], "value")
    _log.warning("saga %s: the response of step %s (a %s) is too large to journal (%s); "
                 "this run returns it, a resumed run gives an UnjournaledResponse in its place",
                 short_id(saga_id), short_id(step), kind, reason)
    return _to_json({TAG: [UNJOURNALED, [kind, reason]]})


# (saga name, step name) already warned about in this process: a step that
# returns a client object does so on every run; one warning says it.
_warned: set[tuple[str, str]] = set()
_MAX_WARNED: Final = 10_000

# One encoder for every response, built once (json.dumps with options builds
# one per call, and so does JSONEncoder.encode: one per response, on the hot
# path of durable sagas). ASCII: the text is then storable as it is by any
# store (a lone surrogate or NUL is escaped, not written). Compact, NaN
# refused: ``encode_json``. The values it gets are journal_untyped's output:
# plain JSON values, nesting bounded, no cycles.
_to_json: Final = encode_json
# A str response (the commonest: an id) needs no encoder at all.
_str_json: Final = json.encoder.encode_basestring_ascii


# Per response class written as an object (codec.journal_object): the text
# before its fields and what gives them; None for any other class. Learnt from
# the first response of the class that was written: a step returns the same
# class on every run, and this skips journal_untyped's dispatch by type.
_OBJECT_TEXT: Final[dict[type, tuple[str, Callable[[Any], Any]] | None]] = class_cache(
    "store._responses._OBJECT_TEXT"
)


def _learn(cls: type) -> None:
    plan = journal_object(cls, "response")
    if plan is None:
        remember(_OBJECT_TEXT, cls, None)
        return
    name, fields = plan
    # The same text encode_json makes of {TAG: ["obj", [name, fields]]}.
    remember(_OBJECT_TEXT, cls, (f'{{{_str_json(TAG)}:["obj",[{_str_json(name)},', fields))


def response_text(response: Any, saga_name: str, step: str) -> str:
    """The journal form of what a step's ``act`` returned (a ``SagaStepResult``
    is journaled as its ``response``): JSON text, or the marker of a response
    that cannot be kept (see the module docstring)."""
    if isinstance(response, SagaStepResult):
        response = response.response
    if response is None:
        return "null"
    try:
        cls = response.__class__
        if cls is str:
            text = _str_json(response)  # the commonest response: an id
            # A surrogate escape may be two lone surrogates, which a JSON
            # reader would join into one character: encode_json tags those.
            return text if "\\ud" not in text else _to_json(response)
        known = _OBJECT_TEXT.get(cls)
        if known is not None:
            prefix, fields = known
            return prefix + _to_json(fields(response)) + "]]}"
        text = _to_json(journal_untyped(response, "response"))
        if cls not in _OBJECT_TEXT:
            _learn(cls)  # once one was written: its class name is known then
        return text
    except ContextSerializationError as error:
        reason = _reason(error)
    except (TypeError, ValueError, RecursionError) as error:  # pragma: no cover - defensive
        reason = f"{type(error).__name__}: {error}"
    type_name = _qualified(type(response))
    key = (saga_name, step)
    if key not in _warned:
        if len(_warned) < _MAX_WARNED:
            _warned.add(key)
        # The type and the reason only: never the value, which may hold secrets.
        _log.warning(
            "saga %s: the response of step %r (a %s) cannot be journaled (%s); this run "
            "returns it, a resumed run gives an UnjournaledResponse in its place",
            saga_name, step, type_name, reason,
        )
    return _to_json({TAG: [UNJOURNALED, [type_name, reason]]})


def _reason(error: ContextSerializationError) -> str:
    # The error speaks of a "context field"; here the path is inside a response.
    text = str(error)
    detail = text.split("cannot be stored as JSON", 1)[1].lstrip(": ")
    where = "" if error.path == "response" else f" at {error.path.removeprefix('response')}"
    return f"{error.value_type}{where} is not JSON" + (f": {detail}" if detail else "")


def _qualified(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


_new_tuple = tuple.__new__


def journal_entry(raw: RawEntry | JournalEntry, saga_name: str) -> JournalEntry:
    """A raw executor entry (``store.base.RawEntry``) in journal form: an
    act-COMPLETED entry's response becomes its JSON text. An entry that is
    a ``JournalEntry`` already (read back from a store) is returned as it is."""
    if isinstance(raw, JournalEntry):
        return raw
    position, step, branch, action, value, attempt, error, at, response = raw
    status = _STEP_STATUS[value]
    if status is _COMPLETED and action == "act":
        return _new_tuple(JournalEntry, (position, step, branch, action, status, attempt,
                                         error, at, response_text(response, saga_name, step)))
    if error is not None and len(error) > MAX_ERROR_TEXT:
        error = error_text(error)
    # The named tuple made directly: its generated __new__ is a Python call.
    return _new_tuple(JournalEntry, (position, step, branch, action, status, attempt, error, at,
                                     None))
