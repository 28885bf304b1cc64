"""Writing the journal form of a context: JSON that reads back (``decoding.py``)
as the same values, with the same types.

Where the context's type hints say what a value is — ``amount: Decimal``,
``by_id: dict[int, str]``, ``lines: list[Line]`` — the value is written as
plain JSON (a Decimal as its text, an int key as text) and the hint turns it
back into its type. That is the form journals have always had.

Where they do not — a field annotated ``Any``, ``object``, bare ``dict`` or
``list``, the items of a ``list[Any]``, the values of a ``dict[str, Any]``, an
unresolvable annotation — nothing says what the JSON was, so a value JSON
cannot carry as itself is written **tagged**: ``{"$fs": [tag, payload]}``
(documented in docs/mechanics.md, "The journal form of a context"):

    tuple, set, frozenset   ["tuple", [items]]     items tagged in turn
    dict, non-text keys     ["dict", [[key, value], ...]]
    Decimal                 ["decimal", "9.99"]
    datetime, time          ["datetime", "2024-05-01T12:30:00+05:30"], or
                            ["datetime", [wall-clock ISO, zone, fold]] for a
                            named zone (zone: ["zone", "Europe/Paris"] or
                            ["offset", microseconds, name]) or fold=1
    date                    ["date", "2024-05-01"]
    timedelta               ["timedelta", [days, seconds, microseconds]]
    UUID                    ["uuid", "12345678-..."]
    bytes, bytearray        ["bytes", base64]
    Fraction                ["fraction", "1/3"]
    Enum member             ["enum", ["module:Qualname", value]]
    dataclass, model        ["obj", ["module:Qualname", its journal form]]

str, int, bool, None, finite floats, lists and dicts with text keys stay
plain JSON. A dict whose only key is ``"$fs"`` is user data shaped like a tag:
it is written in the ``"dict"`` form, so a tag never collides with data.
Decoding an untyped position reads tags and returns untagged JSON as it is —
so journals written before tags existed decode exactly as they did.

Anything else (a client object, a complex number, NaN, a class defined inside
a function, a datetime whose tzinfo is neither ``datetime.timezone`` nor
``zoneinfo.ZoneInfo``) is refused when it is first written, with the field's
path: ``ContextSerializationError``.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import sys
import uuid
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from typing import Any, get_args, get_origin

from .decoding import (
    JSON_SCALARS,
    MAPPINGS,
    TAG,
    decode_dataclass,
    decode_state,
    fields,
    is_union,
    is_untyped,
    type_hints,
    untyped_union,
    unwrap,
)
from .errors import ContextSerializationError
from .models import Kind, dump_model, kind_of, load_model, why_not

__all__ = [
    "FIELD_PLANS",
    "MAX_CONTEXT_DEPTH",
    "TAG",
    "decode_context",
    "decode_structure",
    "encode_context",
    "encode_structure",
    "journal_object",
    "journal_untyped",
]

#: How deeply values may nest inside a context: each list, tuple, set, dict or
#: dataclass is one level (a context holding a list of dicts is 2 levels
#: deep). Far beyond any business record, and shallow enough that snapshot,
#: journal and resume stay well inside Python's recursion limit. A cyclic
#: context (a value that contains itself) is refused as such.
MAX_CONTEXT_DEPTH = 100

_Encoder = Callable[[Any, str, int], Any]

# --------------------------------------------------------------------------- contexts


#: Per dataclass context class: ``(field name, encoder)`` for each field.
FIELD_PLANS: dict[type, tuple[tuple[str, _Encoder], ...]] = {}


def encode_context(context: object) -> dict[str, Any]:
    """The journal form of a context of any kind (see ``models.py``)."""
    plan = FIELD_PLANS.get(context.__class__)
    if plan is None:
        return _encode_other_context(context)
    scalars = JSON_SCALARS
    out: dict[str, Any] = {}
    try:
        for name, encode in plan:
            value = getattr(context, name)
            out[name] = value if value.__class__ in scalars else encode(value, name, 1)
    except _TooDeep as too_deep:
        raise _nesting_error(context, too_deep) from None
    return out


def _encode_other_context(context: object) -> dict[str, Any]:
    cls = type(context)
    kind = kind_of(cls)
    if kind is Kind.DATACLASS:
        FIELD_PLANS[cls] = _field_plan(cls)
        return encode_context(context)
    if kind is Kind.STATE:
        return encode_structure(context)
    if kind is None:
        raise ContextSerializationError("<context>", context, why_not(cls))
    data = dump_model(context, kind, "")
    if type(data) is not dict:
        raise ContextSerializationError(
            "<context>",
            context,
            f"its journal form must be a JSON object, not {type(data).__name__}",
        )
    return data


def encode_structure(context: object) -> dict[str, Any]:
    """The journal form of a dataclass or plain ``SagaContext`` by its fields
    or attributes — what ``SagaContext.to_dict`` gives (an override may call it)."""
    cls = type(context)
    try:
        if dataclasses.is_dataclass(cls):
            plan = FIELD_PLANS.get(cls) or _field_plan(cls)
            return _encode_fields(context, plan, "", 0)  # type: ignore[no-any-return]
        if "__dict__" in dir(cls) and not getattr(cls, "__slots__", ()):
            return _encode_state(context, "", 0)  # type: ignore[no-any-return]
    except _TooDeep as too_deep:
        raise _nesting_error(context, too_deep) from None
    raise ContextSerializationError("<context>", context, why_not(cls))


def journal_untyped(value: object, path: str) -> Any:
    """The journal form of one value with no annotation to go by — what an
    ``Any`` field holds (step responses are journaled this way: ``results.py``)."""
    try:
        return _encode_untyped(value, path, 1)
    except _TooDeep as too_deep:
        raise _nesting_error(value, too_deep) from None


def journal_object(cls: type, path: str) -> tuple[str, Callable[[Any], Any]] | None:
    """For a class whose instances ``journal_untyped`` writes as an object
    (``{TAG: ["obj", [name, fields]]}``): the name, and what gives an
    instance's fields in journal form (raising as ``journal_untyped(value,
    path)`` would). ``None`` for any other class. So a writer of many values
    of one class (the step responses of durable sagas) skips the dispatch by
    type."""
    # The order of _encode_untyped's tests: only a class that reaches its
    # object branch qualifies.
    if (cls in JSON_SCALARS or cls is float or cls is list or cls is dict or cls in _TAGGED
            or issubclass(cls, Enum)):
        return None
    encode = _object_encoder(cls)
    name = _CLASS_NAMES.get(cls)
    if encode is None or name is None:  # (a name is known once one was written)
        return None
    object_encoder = encode

    def fields(value: Any) -> Any:
        try:
            return object_encoder(value, path, 1)
        except _TooDeep as too_deep:
            raise _nesting_error(value, too_deep) from None

    return name, fields


def decode_context(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a context of class ``cls`` from ``encode_context``'s output."""
    kind = kind_of(cls)
    if kind is Kind.DATACLASS:
        return decode_dataclass(cls, data, "")
    if kind is Kind.STATE:
        return decode_state(cls, data, "")
    if kind is None:
        raise TypeError(f"{cls!r} cannot be rebuilt from a journal: {why_not(cls)}")
    return load_model(cls, kind, data, "")


def decode_structure(cls: type, data: Mapping[str, Any]) -> Any:
    """The inverse of ``encode_structure`` (``SagaContext.from_dict``)."""
    if dataclasses.is_dataclass(cls):
        return decode_dataclass(cls, data, "")
    return decode_state(cls, data, "")


# --------------------------------------------------------------------------- typed positions


def _field_plan(cls: type) -> tuple[tuple[str, _Encoder], ...]:
    hints = type_hints(cls)
    return tuple(
        (field.name, _encoder_for(hints.get(field.name, Any)) or _encode)
        for field in fields(cls)
    )


def _encode_fields(
    value: Any, plan: tuple[tuple[str, _Encoder], ...], path: str, depth: int
) -> Any:
    # ``depth``: the level ``value`` is at; its fields are one level deeper.
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    scalars = JSON_SCALARS
    out = {}
    for name, encode in plan:
        item = getattr(value, name)
        if item.__class__ in scalars:
            out[name] = item
        else:
            out[name] = encode(item, f"{path}.{name}" if path else name, depth)
    return out


_STATE_PLANS: dict[type, dict[str, _Encoder]] = {}


def _encode_state(value: Any, path: str, depth: int) -> Any:
    """A plain ``SagaContext``: its ``__dict__``, annotated attributes by
    their hints, the others as untyped values."""
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    cls = type(value)
    plan = _STATE_PLANS.get(cls)
    if plan is None:
        plan = _STATE_PLANS[cls] = {
            name: _encoder_for(hint) or _encode for name, hint in type_hints(cls).items()
        }
    scalars = JSON_SCALARS
    out = {}
    for name, item in vars(value).items():
        if item.__class__ in scalars:
            out[name] = item
        else:
            encode = plan.get(name, _encode_untyped)
            out[name] = encode(item, f"{path}.{name}" if path else name, depth)
    return out


def _encode(value: Any, path: str, depth: int = 1) -> Any:
    """A value in a typed position: plain JSON, by its runtime type (the
    annotation turns it back). ``depth``: the level ``value`` is at, checked
    once per container, never per scalar: flat contexts pay nothing."""
    cls = value.__class__
    if cls in JSON_SCALARS:
        return value
    if cls is float:
        if not math.isfinite(value):
            raise ContextSerializationError(path, value, "NaN and infinity are not JSON")
        return value
    if cls is list or cls is tuple:
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)  # a cycle, or a very deep value: told apart above
        scalars = JSON_SCALARS
        depth += 1
        return [
            item if item.__class__ in scalars else _encode(item, f"{path}[{index}]", depth)
            for index, item in enumerate(value)
        ]
    if cls is dict:
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        return {
            _encode_key(key, path): _encode(item, f"{path}[{key!r}]", depth)
            for key, item in value.items()
        }
    if isinstance(value, Enum):
        return _encode(value.value, path, depth)
    if cls is uuid.UUID or cls is Decimal:
        return str(value)
    if cls is datetime or cls is date or cls is time:
        return value.isoformat()
    if cls is set or cls is frozenset:
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        items = sorted(value, key=repr)  # a stable order, so equal sets journal equally
        return [_encode(item, f"{path}[{index}]", depth) for index, item in enumerate(items)]
    encode = _object_encoder(cls)
    if encode is not None:
        return encode(value, path, depth)
    raise ContextSerializationError(path, value)


_OBJECT_ENCODERS: dict[type, _Encoder | None] = {}


def _object_encoder(cls: type) -> _Encoder | None:
    """How a dataclass or model instance is journaled (``None``: it is not one)."""
    try:
        return _OBJECT_ENCODERS[cls]
    except KeyError:
        pass
    encode: _Encoder | None = None
    kind = kind_of(cls)
    if kind is Kind.DATACLASS:
        plan = _field_plan(cls)

        def encode(value: Any, path: str, depth: int) -> Any:
            return _encode_fields(value, plan, path, depth)

    elif kind is Kind.STATE:
        encode = _encode_state
    elif kind is not None:
        model_kind = kind

        def encode(value: Any, path: str, depth: int) -> Any:
            if depth > MAX_CONTEXT_DEPTH:
                raise _TooDeep(path, value)
            return dump_model(value, model_kind, path)

    _OBJECT_ENCODERS[cls] = encode
    return encode


def _encode_key(key: Any, path: str) -> str:
    if isinstance(key, Enum):
        key = key.value
    cls = key.__class__
    if cls is str:
        return key  # type: ignore[no-any-return]
    if cls is int or cls is uuid.UUID or cls is Decimal:
        return str(key)
    if cls is bool:
        return "true" if key else "false"
    raise ContextSerializationError(f"{path}[{key!r}]", key, "a JSON object key must be text")


# Encoders for annotations with an untyped part (``list[Any]``, ``dict[str, Any]``,
# ``tuple[int, Any]``, ``Any | None``...). Every other annotation is encoded by
# ``_encode``: ``_encoder_for`` gives ``None`` for it.

_ENCODERS: dict[Any, _Encoder | None] = {}


def _encoder_for(tp: Any) -> _Encoder | None:
    try:
        return _ENCODERS[tp]
    except KeyError:
        encode = _ENCODERS[tp] = _build_encoder(tp)
        return encode
    except TypeError:  # unhashable annotation
        return _build_encoder(tp)


_SEQUENCES: dict[Any, type] = {
    list: list, Sequence: list, MutableSequence: list, set: set, frozenset: frozenset
}


def _build_encoder(tp: Any) -> _Encoder | None:
    tp = unwrap(tp)
    if is_untyped(tp) or untyped_union(tp):
        return _encode_untyped
    origin, args = get_origin(tp), get_args(tp)
    if is_union(tp):
        return _union_encoder(args)
    container = origin or tp
    try:
        sequence = _SEQUENCES.get(container)
    except TypeError:
        return None
    if sequence is not None:
        item = _encoder_for(args[0] if args else Any)
        return None if item is None else _sequence_encoder(tp, sequence, item)
    if container is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = _encoder_for(args[0] if args else Any)
            return None if item is None else _sequence_encoder(tp, tuple, item)
        items = [_encoder_for(arg) for arg in args]
        if all(item is None for item in items):
            return None
        return _fixed_tuple_encoder(tp, [item or _encode for item in items])
    if container in MAPPINGS:
        key_tp, value_tp = args if args else (Any, Any)
        value = _encoder_for(value_tp)
        if is_untyped(unwrap(key_tp)):
            return _any_key_mapping_encoder(tp, value or _encode)
        return None if value is None else _mapping_encoder(tp, unwrap(key_tp), value)
    return None


def _mismatch(tp: Any, value: Any, path: str, expected: type) -> ContextSerializationError:
    return ContextSerializationError(
        path,
        value,
        f"the field is annotated {_type_name(tp)}, so a resume would give back a "
        f"{expected.__name__}: annotate it precisely (or Any)",
    )


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _union_encoder(args: tuple[Any, ...]) -> _Encoder | None:
    special: list[tuple[type, _Encoder]] = []
    for arg in args:
        member = _encoder_for(arg)
        klass = get_origin(unwrap(arg)) or unwrap(arg)
        if member is not None and isinstance(klass, type):
            special.append((klass, member))
    if not special:
        return None

    def encode(value: Any, path: str, depth: int) -> Any:
        for klass, member in special:
            if isinstance(value, klass):
                return member(value, path, depth)
        return _encode(value, path, depth)

    return encode


def _sequence_encoder(tp: Any, expected: type, item: _Encoder) -> _Encoder:
    ordered = expected is set or expected is frozenset

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not expected:
            raise _mismatch(tp, value, path, expected)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        scalars = JSON_SCALARS
        entries: Any = value
        items = sorted(entries, key=repr) if ordered else entries
        return [
            entry if entry.__class__ in scalars else item(entry, f"{path}[{index}]", depth)
            for index, entry in enumerate(items)
        ]

    return encode


def _fixed_tuple_encoder(tp: Any, items: list[_Encoder]) -> _Encoder:
    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not tuple or len(value) != len(items):
            raise _mismatch(tp, value, path, tuple)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        return [
            item(entry, f"{path}[{index}]", depth)
            for index, (item, entry) in enumerate(zip(items, value, strict=True))
        ]

    return encode


def _mapping_encoder(tp: Any, key_tp: Any, item: _Encoder) -> _Encoder:
    text_keys = key_tp is str

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not dict:
            raise _mismatch(tp, value, path, dict)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        scalars = JSON_SCALARS
        out = {}
        for key, entry in value.items():
            if text_keys and key.__class__ is not str:
                raise _mismatch(tp, key, f"{path}[{key!r}]", str)
            out[_encode_key(key, path)] = (
                entry if entry.__class__ in scalars else item(entry, f"{path}[{key!r}]", depth)
            )
        return out

    return encode


def _any_key_mapping_encoder(tp: Any, item: _Encoder) -> _Encoder:
    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not dict:
            raise _mismatch(tp, value, path, dict)
        return _encode_dict(value, path, depth, item)

    return encode


# --------------------------------------------------------------------------- untyped positions


def _encode_untyped(value: Any, path: str, depth: int) -> Any:
    """A value in an untyped position: plain JSON when JSON carries it as
    itself, else tagged (see the module docstring)."""
    cls = value.__class__
    if cls in JSON_SCALARS:
        return value
    if cls is float:
        if not math.isfinite(value):
            raise ContextSerializationError(path, value, "NaN and infinity are not JSON")
        return value
    if cls is list:
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        scalars = JSON_SCALARS
        return [
            item if item.__class__ in scalars else _encode_untyped(item, f"{path}[{i}]", depth)
            for i, item in enumerate(value)
        ]
    if cls is dict:
        return _encode_dict(value, path, depth, _encode_untyped)
    write = _TAGGED.get(cls)
    if write is not None:
        tag, payload = write
        return {TAG: [tag, payload(value, path, depth)]}
    if isinstance(value, Enum):
        name = _class_name(cls, path, value)
        return {TAG: ["enum", [name, _encode_untyped(value.value, path, depth)]]}
    encode = _object_encoder(cls)
    if encode is not None:
        name = _class_name(cls, path, value)
        return {TAG: ["obj", [name, encode(value, path, depth)]]}
    raise ContextSerializationError(path, value)


def _encode_dict(value: dict[Any, Any], path: str, depth: int, item: _Encoder) -> Any:
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    scalars = JSON_SCALARS
    if all(key.__class__ is str for key in value) and not (len(value) == 1 and TAG in value):
        return {
            key: entry if entry.__class__ in scalars else item(entry, f"{path}[{key!r}]", depth)
            for key, entry in value.items()
        }
    # Keys JSON cannot carry as object keys (or data shaped like a tag): pairs.
    return {
        TAG: [
            "dict",
            [
                [
                    _encode_untyped(key, f"{path}[{key!r}]", depth),
                    entry if entry.__class__ in scalars else item(entry, f"{path}[{key!r}]", depth),
                ]
                for key, entry in value.items()
            ],
        ]
    }


def _items(value: Any, path: str, depth: int) -> list[Any]:
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    items = value if value.__class__ is tuple else sorted(value, key=repr)
    return [_encode_untyped(item, f"{path}[{i}]", depth) for i, item in enumerate(items)]


def _tz(zone: tzinfo | None, value: Any, path: str) -> Any:
    if zone is None:
        return None
    if type(zone) is timezone:
        offset = zone.utcoffset(None)
        name = zone.tzname(None)
        default = timezone(offset).tzname(None)
        micros = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
        return ["offset", micros, None if name == default else name]
    # zoneinfo is looked up, not imported: importing it costs every user (it reads
    # sysconfig), and a ZoneInfo here means it is loaded already.
    zoneinfo = sys.modules.get("zoneinfo")
    key = getattr(zone, "key", None)
    if zoneinfo is not None and type(zone) is zoneinfo.ZoneInfo and key is not None:
        return ["zone", key]
    raise ContextSerializationError(
        path,
        value,
        f"its tzinfo is a {type(zone).__name__}, which cannot be carried exactly: "
        f"use datetime.timezone or zoneinfo.ZoneInfo",
    )


def _moment(value: datetime | time, path: str, depth: int) -> Any:
    zone = _tz(value.tzinfo, value, path)
    if value.fold == 0 and (zone is None or (zone[0] == "offset" and zone[2] is None)):
        return value.isoformat()
    return [value.replace(tzinfo=None, fold=0).isoformat(), zone, value.fold]


def _base64(value: bytes | bytearray, path: str, depth: int) -> str:
    return base64.b64encode(value).decode("ascii")


def _text(value: Any, path: str, depth: int) -> str:
    return str(value)


_TAGGED: dict[type, tuple[str, _Encoder]] = {
    tuple: ("tuple", _items),
    set: ("set", _items),
    frozenset: ("frozenset", _items),
    Decimal: ("decimal", _text),
    datetime: ("datetime", _moment),
    time: ("time", _moment),
    date: ("date", lambda value, path, depth: value.isoformat()),
    timedelta: (
        "timedelta", lambda value, path, depth: [value.days, value.seconds, value.microseconds]
    ),
    uuid.UUID: ("uuid", _text),
    bytes: ("bytes", _base64),
    bytearray: ("bytearray", _base64),
    Fraction: ("fraction", _text),
}


_CLASS_NAMES: dict[type, str | None] = {}


def _class_name(cls: type, path: str, value: Any) -> str:
    """``module:Qualname``, checked to lead back to ``cls`` (else refused)."""
    name = _CLASS_NAMES.get(cls)
    if name is None:
        module, qualname = cls.__module__, cls.__qualname__
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is not cls:
            raise ContextSerializationError(
                path,
                value,
                f"{qualname} cannot be found again by its name ({module}.{qualname}) to "
                f"rebuild it on resume: define it at module level, or annotate the field "
                f"with its type",
            )
        name = _CLASS_NAMES[cls] = f"{module}:{qualname}"
    return name


# --------------------------------------------------------------------------- nesting errors


class _TooDeep(Exception):
    """Internal: an encoder went past ``MAX_CONTEXT_DEPTH``, at ``path``."""

    def __init__(self, path: str, value: object) -> None:
        super().__init__(path)
        self.path = path
        self.value = value


# How much of a field path an error shows ("node.child.child…").
_MAX_PATH_SHOWN = 120


def _shown_path(path: str) -> str:
    return path if len(path) <= _MAX_PATH_SHOWN else path[: _MAX_PATH_SHOWN - 1] + "…"


def _nesting_error(context: object, too_deep: _TooDeep) -> ContextSerializationError:
    """The error for a context the encoder could not finish: cyclic (naming
    the field that leads back to a value containing it), else too deep."""
    cycle = _find_cycle(context)
    if cycle is not None:
        path, value, back_to = cycle
        what = f"the same object as {_shown_path(back_to)!r}" if back_to else "the context itself"
        return ContextSerializationError(
            _shown_path(path),
            value,
            f"the context is cyclic: this is {what}, which contains it; JSON cannot hold a cycle",
        )
    return ContextSerializationError(
        _shown_path(too_deep.path),
        too_deep.value,
        f"the context is nested deeper than {MAX_CONTEXT_DEPTH} levels "
        f"(MAX_CONTEXT_DEPTH)",
    )


def _children(value: Any, path: str) -> list[tuple[Any, str]] | None:
    """The values the encoder would descend into, with their paths (``None``
    for a value it would not descend into)."""
    cls = value.__class__
    if cls in JSON_SCALARS or cls is float:
        return None
    if cls is list or cls is tuple:
        return [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if cls is dict:
        return [(item, f"{path}[{key!r}]") for key, item in value.items()]
    if isinstance(value, Enum):
        return [(value.value, path)]
    if cls is set or cls is frozenset:
        return [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, type):
        return None
    if dataclasses.is_dataclass(value):
        return [(getattr(value, f.name), f"{path}.{f.name}") for f in fields(cls)]
    if kind_of(cls) is Kind.STATE:
        return [(item, f"{path}.{name}") for name, item in vars(value).items()]
    return None


def _find_cycle(context: object) -> tuple[str, Any, str] | None:
    """The first value (depth first, as the encoder goes) that is one of its
    own containers: ``(its path, it, the path of that container)`` (``""``
    for the context itself); ``None`` if there is no cycle within
    ``MAX_CONTEXT_DEPTH`` levels. Iterative: it must not hit the recursion
    limit that it is there to explain."""
    top = _children(context, "")
    if top is None:
        top = [(value, key) for key, value in getattr(context, "__dict__", {}).items()]
    else:
        top = [(value, path.lstrip(".")) for value, path in top]
    on_path: dict[int, str] = {id(context): ""}  # id -> path, of the values being walked
    stack: list[tuple[Any, str, int]] = [(v, p, 1) for v, p in reversed(top)]
    walked: list[tuple[int, int]] = []  # (id, depth) of the values on the current path
    while stack:
        value, path, depth = stack.pop()
        while walked and walked[-1][1] >= depth:
            on_path.pop(walked.pop()[0], None)
        back_to = on_path.get(id(value))
        if back_to is not None:
            return path, value, back_to
        children = _children(value, path)
        if not children or depth > MAX_CONTEXT_DEPTH:
            continue
        on_path[id(value)] = path
        walked.append((id(value), depth))
        stack.extend((child, where, depth + 1) for child, where in reversed(children))
    return None
