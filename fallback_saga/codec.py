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
                            ["offset", microseconds, name]), an offset
                            with a fraction of a second, or fold=1
    date                    ["date", "2024-05-01"]
    timedelta               ["timedelta", [days, seconds, microseconds]]
    UUID                    ["uuid", "12345678-..."]
    bytes, bytearray        ["bytes", base64]
    Fraction                ["fraction", "1/3"]
    Enum member             ["enum", ["module:Qualname", value]]
    dataclass, model        ["obj", ["module:Qualname", its journal form]]
    namedtuple              ["namedtuple", ["module:Qualname", [its fields]]]
                            (fields by the NamedTuple's annotations; read
                            back by tuple.__new__, no code of its class run)
    ipaddress values        ["ipv4address", "10.0.0.1"], "ipv6address",
                            "ipv4network", "ipv6network", "ipv4interface",
                            "ipv6interface": their text
    pure (or concrete) path ["path", ["PurePosixPath", "/srv/x"]]
    OrderedDict             ["ordereddict", [[key, value], ...]]
    deque                   ["deque", [[items], maxlen]]
    range                   ["range", [start, stop, step]]
    complex                 ["complex", [real, imag]]

The standard library's classes are chosen by the tag from a fixed list:
the journal never names a class to build them (S12).

str, int, bool, None, finite floats, lists and dicts with text keys stay
plain JSON. A dict whose only key is ``"$fs"`` is user data shaped like a tag:
it is written in the ``"dict"`` form, so a tag never collides with data.
Decoding an untyped position reads tags and returns untagged JSON as it is —
so journals written before tags existed decode exactly as they did.

Anything else (a client object, NaN, a class defined inside a function, a
datetime whose tzinfo is neither ``datetime.timezone`` nor
``zoneinfo.ZoneInfo``, an attribute of a dataclass or namedtuple that is not
one of its fields and that it does not derive again, a subclass of a class
carried that is not itself carried — a ``Counter``) is refused when it is
first written, with the field's path: ``ContextSerializationError`` — saying
what to convert a value that is data to (``_why_refused``).
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import ipaddress
import math
import numbers
import pathlib
import sys
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, MutableSequence, Sequence, Set
from contextvars import ContextVar
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from typing import Any, Literal, get_args, get_origin

from .class_caches import class_cache, remember
from .decoding import (
    JSON_SCALARS,
    MAPPINGS,
    TAG,
    build_dataclass,
    decode_dataclass,
    decode_state,
    decoder,
    fields,
    fields_in_dict,
    is_namedtuple,
    is_union,
    is_untyped,
    post_init_plan,
    type_hints,
    untyped_union,
    unwrap,
)
from .errors import ContextDecodeError, ContextSerializationError, key_path
from .models import Kind, dump_model, kind_of, load_model, why_not
from .sameness import SCALARS, differs, what_is_derived, with_article

__all__ = [
    "FIELD_NAMES",
    "FIELD_PLANS",
    "FIELD_WIDTHS",
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

# Why a value of no journaled kind is refused, and where it goes instead: a
# new user's first context holds the service client its steps call.
NOT_DATA = (
    "a context holds data; keep a client, connection, lock or function on the step "
    "(given by step_factory) and only what identifies it (an id, a str) in the "
    "context; a class of your own is journaled as a dataclass, or with to_dict() "
    "and a classmethod from_dict(data)"
)

# --------------------------------------------------------------------------- contexts


#: Per dataclass context class: ``(field name, encoder, plain classes)`` for
#: each field (see "typed positions" below).
FIELD_PLANS: dict[type, tuple[tuple[str, _Encoder, frozenset[type]], ...]] = class_cache(
    "codec.FIELD_PLANS"
)


#: Per dataclass (a context class in ``FIELD_PLANS``, or one met inside a
#: context): how many attributes its instances hold in ``__dict__``, all of
#: its fields among them, when an attribute beyond those would not come back
#: from the journal; -2 when there is nothing to check, -3 when every write
#: scans (see ``_width``). Set with its plan.
FIELD_WIDTHS: dict[type, int] = class_cache("codec.FIELD_WIDTHS")

#: Per dataclass whose width is >= 0: its field names, which its instances'
#: ``__dict__`` holds alone when nothing would be lost — for the fast checks
#: that read no field (``check_serializable``, the executor's): a count alone
#: takes a field deleted (read from its class default) and an attribute set
#: in its place for them (S14).
FIELD_NAMES: dict[type, frozenset[str]] = class_cache("codec.FIELD_NAMES")


def _store_width(cls: type, width: int) -> None:
    if width >= 0:  # (first: a class in FIELD_WIDTHS with a width has its names)
        remember(FIELD_NAMES, cls, frozenset(field.name for field in fields(cls)))
    remember(FIELD_WIDTHS, cls, width)


def encode_context(context: object) -> dict[str, Any]:
    """The journal form of a context of any kind (see ``models.py``)."""
    cls = context.__class__
    plan = FIELD_PLANS.get(cls)
    if plan is None:
        return _encode_other_context(context)
    # S14: an attribute that is not a field would be missing after a resume.
    # One len per write, and the fields read from __dict__: all found there,
    # and no more attributes than fields, it holds them alone (a count alone
    # would take a field deleted — read from its class default — and an
    # attribute set in its place for them). The attributes are looked at
    # only when either fails.
    try:
        width = FIELD_WIDTHS[cls]
    except KeyError:  # forgotten since (class_caches.py): learnt again
        return _encode_other_context(context)
    out: dict[str, Any] = {}
    try:
        if width >= 0:
            state = context.__dict__
            if len(state) == width:
                try:
                    for name, encode, plain in plan:
                        value = state[name]
                        out[name] = value if value.__class__ in plain else encode(value, name, 1)
                    return out
                except KeyError:
                    if name in state:  # (raised by an encoder: a to_dict of its own)
                        raise
                    out = {}
            _refuse_extras(context, "", 0)
        elif width == _SCAN and context.__dict__:  # (slots, and an empty __dict__: none)
            _refuse_extras(context, "", 0)
        for name, encode, plain in plan:
            value = getattr(context, name)
            out[name] = value if value.__class__ in plain else encode(value, name, 1)
    except _TooDeep as too_deep:
        raise _nesting_error(context, too_deep) from None
    except AttributeError:
        _refuse_unset(context, name, name)
        raise
    return out


def _encode_other_context(context: object) -> dict[str, Any]:
    cls = type(context)
    kind = kind_of(cls)
    if kind is Kind.DATACLASS:
        _store_width(cls, _width(cls))
        remember(FIELD_PLANS, cls, _field_plan(cls))
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
            width = FIELD_WIDTHS.get(cls) or _width(cls)
            if width >= 0:
                return _encode_counted(context, plan, width, "", 0)  # type: ignore[no-any-return]
            if width == _SCAN and context.__dict__:
                _refuse_extras(context, "", 0)
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
#
# An annotation's encoder writes the plain form (what the annotation's decoder
# turns back into the value) only for a value it gives back exactly: of the
# very class the annotation names (not a subclass, not an int in a float
# field, not None in a str field, not a bool in an int field, not an Enum
# member in an int field), in the form that class is read back from. Any other
# value is written in the self-describing tagged form (``_tagged``), which
# every typed decoder reads too (``decoding.py``). So the journal is exact by
# construction: no value is ever decoded again to check it, and a context
# whose values match their annotations is written as it always was.
#
# Each encoder comes with its *plain classes*: the classes whose values it
# writes as they are (``str`` for a ``str`` field). The writers of fields and
# items test those first, inline, and call the encoder only for the rest: a
# flat context of matching scalars costs one set lookup per field.

_Typed = tuple[_Encoder, frozenset[type]]
_NONE: type = type(None)
_NOTHING: frozenset[type] = frozenset()


def _field_plan(cls: type) -> tuple[tuple[str, _Encoder, frozenset[type]], ...]:
    hints = type_hints(cls)
    return tuple(
        (field.name, *_encoder_for(hints.get(field.name, Any))) for field in fields(cls)
    )


def _encode_fields(
    value: Any, plan: tuple[tuple[str, _Encoder, frozenset[type]], ...], path: str, depth: int
) -> Any:
    # ``depth``: the level ``value`` is at; its fields are one level deeper.
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    out = {}
    try:
        for name, encode, plain in plan:
            item = getattr(value, name)
            if item.__class__ in plain:
                out[name] = item
            else:
                out[name] = encode(item, f"{path}.{name}" if path else name, depth)
    except AttributeError:
        _refuse_unset(value, name, f"{path}.{name}" if path else name)
        raise
    return out


def _encode_counted(
    value: Any,
    plan: tuple[tuple[str, _Encoder, frozenset[type]], ...],
    width: int,
    path: str,
    depth: int,
) -> Any:
    """``_encode_fields`` for a dataclass of known width (its fields in
    ``__dict__``, ``FIELD_WIDTHS``), with ``encode_context``'s check: the
    fields read from ``__dict__``, all found there, and as many attributes
    as fields — then it holds them alone (S14). Else its attributes are
    looked at (``_refuse_extras``)."""
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    state = value.__dict__
    if len(state) == width:
        out = {}
        try:
            for name, encode, plain in plan:
                item = state[name]
                if item.__class__ in plain:
                    out[name] = item
                else:
                    out[name] = encode(item, f"{path}.{name}" if path else name, depth + 1)
            return out
        except KeyError:
            if name in state:  # (raised by an encoder: a to_dict of its own)
                raise
    _refuse_extras(value, path, depth)
    return _encode_fields(value, plan, path, depth)


def _refuse_unset(value: object, name: str, path: str) -> None:
    """Refuse ``value``'s field ``name`` if it was never given a value (a
    dataclass field declared with ``init=False`` and no default, not set):
    an ``AttributeError`` from deep in the encoder would not name it.
    Returns when the field is there (the error came from elsewhere)."""
    if hasattr(value, name):
        return
    error = ContextSerializationError(path, None)
    error.value_type = "nothing"
    error.args = (
        f"context field {path!r} has no value: {type(value).__qualname__}.{name} is "
        f"declared with init=False and no default, and nothing set it; give it a "
        f"default (or default_factory), or set it before the run",
    )
    raise error from None


#: ``FIELD_WIDTHS``: every write scans the instance's ``__dict__`` — its
#: class keeps fields in slots (a slots dataclass whose instances have a
#: ``__dict__`` too: a subclass without slots, ``"__dict__"`` in its
#: ``__slots__``), or its ``__post_init__`` derives attributes not yet seen.
_SCAN = -3


def _width(cls: type) -> int:
    """How many attributes a dataclass's instances hold in ``__dict__``, when
    all of its fields are there and an attribute beyond them would not come
    back from the journal: a dataclass is rebuilt from its fields. Else
    ``_SCAN`` (-3): its fields are not all in ``__dict__`` (slots) but its
    instances have one, which may hold attributes beyond them; or its
    ``__post_init__`` runs on reading back (``decoding.post_init_plan``) and
    derives again what it sets beyond them (an index, a cache:
    docs/mechanics.md) — learnt at the first write (``_refuse_extras``), which
    then gives the width. -2: no ``__dict__`` (slots only), nothing to check.
    Only a width >= 0 lets the fast checks that scan ``__dict__`` alone
    (``check_serializable``, the executor's) be taken: slots they would miss."""
    if not fields_in_dict(cls):
        return _SCAN if "__dict__" in dir(cls) else -2
    if post_init_plan(cls)[0] is not None:
        return _SCAN
    return len(fields(cls))


class _Kept:
    """Per dataclass, what ``_refuse_extras`` learnt of it, as met. One
    entry, so that it is forgotten as a whole (``class_caches.py``): names
    known to come back without the knowledge that they are derived would let
    a hand-set value of one through."""

    __slots__ = ("derived", "fields", "names")

    def __init__(self, cls: type) -> None:
        #: The attribute names that come back from the journal (its fields)
        #: or that it derives again (a cached_property's, what its
        #: ``__post_init__`` sets on reading back).
        self.names = {field.name for field in fields(cls)}
        #: How many fields it has (a width is learnt only from an instance
        #: that holds them alone, ``_learn_width``).
        self.fields = len(self.names)
        #: The attributes its ``__post_init__`` was seen to set beyond its
        #: fields (on reading back a copy), and of those, the ones whose
        #: values are not compared (``_learn_derived``). Replaced, never
        #: changed in place: a write in another thread may be going through them.
        self.derived: tuple[frozenset[str], frozenset[str]] | None = None


_KEPT: dict[type, _Kept] = class_cache("codec._KEPT")


def _refuse_extras(value: Any, path: str, depth: int) -> None:
    """Refuse ``value``'s first attribute that is not one of its dataclass's
    fields (S14: the resumed run would not have it), naming it. One the class
    derives again is not refused: a ``functools.cached_property`` (a
    descriptor of that name), or one its ``__post_init__`` sets when it runs
    on reading back — found by reading back a copy, once per name — as long
    as it holds what that gives (``_refuse_hand_set``). (A field missing
    from ``__dict__`` is left to the encoder.)"""
    cls = type(value)
    kept = _KEPT.get(cls)
    if kept is None:
        kept = remember(_KEPT, cls, _Kept(cls))
    names = kept.names
    state = vars(value)
    if names.issuperset(state):
        derived = kept.derived
        if derived is not None and not derived[0].isdisjoint(state):
            _refuse_hand_set(value, derived, path, depth)
        elif len(state) == kept.fields:  # (one that derives: scanned at every write)
            _learn_width(cls, len(state))
        return
    learnt = False
    for name, item in list(state.items()):
        if name in names:
            continue
        if hasattr(inspect.getattr_static(cls, name, None), "__get__"):
            names.add(name)  # (a class whose cached_property is set pays this once)
            continue
        if not learnt and post_init_plan(cls)[0] is not None:
            learnt = True
            _learn_derived(value, kept, path, depth)
            if name in names:
                continue
        raise ContextSerializationError(
            f"{path}.{name}" if path else name,
            item,
            f"{name!r} is not a field of {cls.__qualname__}: a resumed run would not have it, "
            f"since a dataclass is read back from its fields"
            f"{' (and its __post_init__ does not set it)' if learnt else ''}; declare it as "
            f"a field ({name}: <type> = <default>), or keep it off the context",
        )
    derived = kept.derived
    if derived is not None and not derived[0].isdisjoint(state):
        _refuse_hand_set(value, derived, path, depth)
    elif len(state) == kept.fields:
        _learn_width(cls, len(state))


def _learn_derived(value: Any, kept: _Kept, path: str, depth: int) -> None:
    """Add to ``kept`` what ``value``'s ``__post_init__`` sets beyond its
    fields when it is read back. Read back twice: a value not derived the
    same twice (a uuid4, a timestamp, what holds a lock) cannot tell a value
    set by hand from one derived, so is not compared; nor one of a class
    compared by identity."""
    cls = type(value)
    first = _read_back(value, path, depth)
    second = _read_back(value, path, depth)
    names = kept.names
    known, not_compared = kept.derived or (frozenset(), frozenset())
    derived, uncompared = set(known), set(not_compared)
    for name, item in first.items():
        if name in names:
            continue
        if not hasattr(inspect.getattr_static(cls, name, None), "__get__"):
            derived.add(name)  # (not a cached_property its __post_init__ reads: a cache)
            if name not in second or differs(item, second[name]) is not False:
                uncompared.add(name)
    kept.derived = (frozenset(derived), frozenset(uncompared))  # (first: see names)
    names.update(first)


def _refuse_hand_set(
    value: Any, learnt: tuple[frozenset[str], frozenset[str]], path: str, depth: int
) -> None:
    """Refuse an attribute ``value``'s ``__post_init__`` derives whose value
    is not what it derives again from the fields, as a resume would (set by
    hand, changed in place, or stale after its fields changed): the resumed
    run would hold the derived one. At every write of a class that derives
    attributes (it is scanned anyway): its fields read back into a copy. A
    derived attribute deleted is not refused: the resumed run derives it
    again, as an instance made anew with those fields has it (a cache
    dropped). ``learnt``: the derived names, and those not compared."""
    if _READING_BACK.get():
        return
    cls = type(value)
    state = vars(value)
    derived, uncompared = learnt
    again: dict[str, Any] | None = None
    for name in derived:
        if name not in state or name in uncompared:
            continue
        if again is None:
            again = _read_back(value, path, depth)
        held = state[name]
        if name in again:
            if differs(held, again[name]) is not True:
                continue
            what = what_is_derived(held, again[name])
        else:
            what = "its __post_init__ does not set it from these fields"
        where = f"{path}.{name}" if path else name
        error = ContextSerializationError(where, held)
        # Neither value is shown: a context may hold secrets (its types say enough).
        error.args = (  # (not "cannot be stored as JSON": it is not stored at all)
            f"context field {where!r} holds {with_article(type(held).__name__)} (set by hand, "
            f"changed in place, or left stale after its fields changed), but {what} when it is "
            f"read back, so a resumed run would not have that value ({cls.__qualname__} is "
            f"read back from its fields, then its __post_init__ runs); "
            f"declare it as a field, {name}: <type> = field(init=False) — journaled, and set "
            f"again after __post_init__ — or leave what __post_init__ derives unchanged",
        )
        raise error


def _learn_width(cls: type, width: int) -> None:
    """After a write found no attribute the journal would lose, in an
    instance that held its fields alone: the width of a class with a
    ``__post_init__``, so that the next writes (and the fast checks) compare
    one length instead of scanning. What one instance derives another may not (an
    ``if`` in ``__post_init__``, a cached_property not yet read): a width
    counting it would let an attribute in its place through unjournaled, so
    a class that derives attributes is scanned at every write."""
    if FIELD_WIDTHS.get(cls) == _SCAN and fields_in_dict(cls):
        _store_width(cls, width)


#: Set while ``_read_back`` writes a value's fields: the values nested in
#: them are not read back to compare what they derive (``_refuse_hand_set``)
#: — the write itself does, once each; each level doing it again in its own
#: read-back doubled the work per level of nesting.
_READING_BACK: ContextVar[bool] = ContextVar("_READING_BACK", default=False)


#: The classes of values a copy may share with the instance read back (its
#: ``__post_init__`` cannot change them), as they are or in a container of
#: these classes alone (copied).
_IMMUTABLE: frozenset[type] = SCALARS
_FLAT_CONTAINERS: frozenset[type] = frozenset({list, set, frozenset, tuple})
_MISSING = object()


def _read_back(value: Any, path: str, depth: int) -> dict[str, Any]:
    """The attributes a dataclass instance has once read back from its journal
    form (its ``__post_init__`` run), as a resume would: from a copy, so that
    the instance itself is not touched. Fields of scalars (or flat containers
    of scalars: copied) are given to the copy as they are — the journal gives
    them back equal and of the same classes (S14) — sparing the journal form
    and its reading (most of the cost); any other field, through both."""
    cls = type(value)
    plan = FIELD_PLANS.get(cls) or _field_plan(cls)
    values: dict[str, Any] | None = None
    if fields_in_dict(cls):
        state = value.__dict__
        immutable = _IMMUTABLE
        values = {}
        for name, _, _ in plan:
            item = state.get(name, _MISSING)  # (missing: read back the slow way)
            kind = item.__class__
            if kind in immutable:
                values[name] = item
            elif kind in _FLAT_CONTAINERS and immutable.issuperset(map(type, item)):
                values[name] = kind(item)
            elif kind is dict and immutable.issuperset(map(type, item)) and immutable.issuperset(
                map(type, item.values())
            ):
                values[name] = dict(item)
            else:
                values = None
                break
    try:
        if values is not None:
            copy = build_dataclass(cls, values, path)
        else:
            reading = _READING_BACK.set(True)
            try:
                form = _encode_fields(value, plan, path, depth)
            finally:
                _READING_BACK.reset(reading)
            copy = decode_dataclass(cls, form, path)
    except ContextDecodeError as exc:  # its __post_init__ refuses its own values
        raise ContextSerializationError(
            path or "<context>",
            value,
            f"it would not read back from the journal: {exc}",
        ) from None
    return vars(copy)  # type: ignore[no-any-return]


_STATE_PLANS: dict[type, dict[str, _Typed]] = class_cache("codec._STATE_PLANS")
_UNTYPED: _Typed


def _encode_state(value: Any, path: str, depth: int) -> Any:
    """A plain ``SagaContext``: its ``__dict__``, annotated attributes by
    their hints, the others as untyped values."""
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    cls = type(value)
    plan = _STATE_PLANS.get(cls)
    if plan is None:
        plan = remember(
            _STATE_PLANS,
            cls,
            {name: _encoder_for(hint) for name, hint in type_hints(cls).items()},
        )
    untyped = _UNTYPED
    out = {}
    for name, item in vars(value).items():
        encode, plain = plan.get(name, untyped)
        if item.__class__ in plain:
            out[name] = item
        else:
            out[name] = encode(item, f"{path}.{name}" if path else name, depth)
    return out


def _tagged(value: Any, path: str, depth: int) -> Any:
    """The self-describing form of a value its position's annotation would
    not give back: what an untyped position holds, under the ``"any"`` tag
    when that is plain JSON (a tag already says what it is)."""
    out = _encode_untyped(value, path, depth)
    if out.__class__ is dict and len(out) == 1 and TAG in out:
        return out
    return {TAG: ["any", out]}


_OBJECT_ENCODERS: dict[type, _Encoder | None] = class_cache("codec._OBJECT_ENCODERS")


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
        widths = FIELD_WIDTHS
        if cls not in widths:
            _store_width(cls, _width(cls))

        def encode(value: Any, path: str, depth: int) -> Any:
            try:
                width = widths[cls]
            except KeyError:  # forgotten since (class_caches.py): derived again
                width = _width(cls)
                _store_width(cls, width)
            if width >= 0:
                return _encode_counted(value, plan, width, path, depth)
            if width == _SCAN and value.__dict__:
                _refuse_extras(value, path, depth)
            return _encode_fields(value, plan, path, depth)

    elif kind is Kind.STATE:
        encode = _encode_state
    elif kind is not None:
        model_kind = kind

        def encode(value: Any, path: str, depth: int) -> Any:
            if depth > MAX_CONTEXT_DEPTH:
                raise _TooDeep(path, value)
            return dump_model(value, model_kind, path)

    return remember(_OBJECT_ENCODERS, cls, encode)


_ENCODERS: dict[Any, _Typed] = class_cache("codec._ENCODERS")


def _encoder_for(tp: Any) -> _Typed:
    """The encoder of a position annotated ``tp``, and its plain classes."""
    try:
        return _ENCODERS[tp]
    except KeyError:
        return remember(_ENCODERS, tp, _build_encoder(tp))
    except TypeError:  # unhashable annotation
        return _build_encoder(tp)


_SEQUENCES: dict[Any, type] = {
    list: list, Sequence: list, MutableSequence: list, set: set, frozenset: frozenset
}


def _build_encoder(tp: Any) -> _Typed:
    tp = unwrap(tp)
    if is_untyped(tp) or untyped_union(tp):
        return _UNTYPED
    if tp is None or tp is _NONE:
        return _exact(_NONE), frozenset({_NONE})
    if tp is str or tp is int or tp is bool:
        return _exact(tp), frozenset({tp})
    if tp is float:
        return _encode_float, _NOTHING
    if tp is Decimal or tp is uuid.UUID:
        return _as_text(tp), _NOTHING
    if tp is datetime or tp is time:
        return _moment_encoder(tp), _NOTHING
    if tp is date:
        return _encode_date, _NOTHING
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum_encoder(tp), _NOTHING
    origin, args = get_origin(tp), get_args(tp)
    if is_union(tp):
        return _union_encoder(args)
    if origin is Literal:
        return _literal_encoder(tp), _NOTHING
    container = origin or tp
    try:
        sequence = _SEQUENCES.get(container)
    except TypeError:
        sequence = None
    if sequence is not None:
        return _sequence_encoder(sequence, _encoder_for(args[0] if args else Any)), _NOTHING
    if container is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _sequence_encoder(tuple, _encoder_for(args[0] if args else Any)), _NOTHING
        return _fixed_tuple_encoder([_encoder_for(arg) for arg in args]), _NOTHING
    if container in MAPPINGS:
        key_tp, value_tp = args if args else (Any, Any)
        value = _encoder_for(value_tp)
        if is_untyped(unwrap(key_tp)):
            return _any_key_mapping_encoder(value), _NOTHING
        return _mapping_encoder(unwrap(key_tp), value), _NOTHING
    if isinstance(tp, type):  # a dataclass, a model: by its fields; any other class: tagged
        if is_namedtuple(tp):
            return _namedtuple_encoder(tp), _NOTHING
        return _class_encoder(tp), _NOTHING
    return _tagged, _NOTHING  # an annotation no decoder reads plainly (a generic alias...)


_EXACT: dict[type, _Encoder] = class_cache("codec._EXACT")


def _exact(cls: type) -> _Encoder:
    """``str``, ``int``, ``bool``, ``None``: the value itself, if of that very class."""
    encode = _EXACT.get(cls)
    if encode is None:

        def encode(value: Any, path: str, depth: int) -> Any:
            if value.__class__ is cls:
                return value
            return _tagged(value, path, depth)

        remember(_EXACT, cls, encode)
    return encode


def _encode_float(value: Any, path: str, depth: int) -> Any:
    if value.__class__ is float:
        if not math.isfinite(value):
            raise ContextSerializationError(path, value, "NaN and infinity are not JSON")
        return value
    return _tagged(value, path, depth)  # an int stays an int (JSON 10 would read back 10.0)


def _as_text(cls: type) -> _Encoder:
    """``Decimal``, ``UUID``: their text, which their constructor reads back."""

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is cls:
            return str(value)
        return _tagged(value, path, depth)

    return encode


def _moment_encoder(cls: type) -> _Encoder:
    """``datetime``, ``time``: ISO 8601 when that carries the time zone (none,
    or an unnamed fixed offset) and the fold; else the tagged exact form."""
    tag = "datetime" if cls is datetime else "time"

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not cls:
            return _tagged(value, path, depth)
        moment: Any = value  # (not narrowed by the test of its class)
        form = _moment(moment, path, depth)
        return form if form.__class__ is str else {TAG: [tag, form]}

    return encode


def _encode_date(value: Any, path: str, depth: int) -> Any:
    if value.__class__ is date:
        return value.isoformat()
    return _tagged(value, path, depth)  # a datetime is a date, but not read back as one


def _enum_encoder(cls: type[Enum]) -> _Encoder:
    """A member of the annotation's Enum: its value, when that is a JSON
    scalar (``cls(value)`` gives the member back)."""

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is cls:
            raw = value.value
            kind = raw.__class__
            if kind in JSON_SCALARS or (kind is float and math.isfinite(raw)):
                return raw
        return _tagged(value, path, depth)

    return encode


def _literal_encoder(tp: Any) -> _Encoder:
    """A ``Literal``: the value (an Enum option: its value) when the
    Literal's decoder gives back this very value."""
    read = decoder(tp)

    def encode(value: Any, path: str, depth: int) -> Any:
        raw = value.value if isinstance(value, Enum) else value
        kind = raw.__class__
        if kind in JSON_SCALARS or (kind is float and math.isfinite(raw)):
            try:
                back = read(raw, path)
            except ContextDecodeError:
                back = _NOT_READ
            if back is value or (back.__class__ is value.__class__ and back == value):
                return raw
        return _tagged(value, path, depth)

    return encode


_NOT_READ = object()


def _sorted(items: Any) -> list[Any]:
    """A set's items in a stable order, so that equal sets journal equally
    (an item without a repr — an int beyond ``sys.get_int_max_str_digits``
    — leaves them unsorted: still exact)."""
    try:
        return sorted(items, key=repr)
    except ValueError:
        return list(items)


def _sequence_encoder(expected: type, item: _Typed) -> _Encoder:
    ordered = expected is set or expected is frozenset
    encode_item, plain = item

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not expected:  # a tuple in a list field, a list subclass...
            return _tagged(value, path, depth)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        items: Any = _sorted(value) if ordered else value
        return [
            entry if entry.__class__ in plain else encode_item(entry, f"{path}[{index}]", depth)
            for index, entry in enumerate(items)
        ]

    return encode


def _fixed_tuple_encoder(items: list[_Typed]) -> _Encoder:
    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not tuple or len(value) != len(items):
            return _tagged(value, path, depth)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        return [
            entry if entry.__class__ in plain else item(entry, f"{path}[{index}]", depth)
            for index, ((item, plain), entry) in enumerate(zip(items, value, strict=True))
        ]

    return encode


def _key_writer(key_tp: Any) -> Callable[[Any], str | None]:
    """The text a key of the annotated key type is written as, such that the
    key decoder (``decoding._key_decoder``) gives the very key back; ``None``
    for a key it would not give back (the dict is then written tagged)."""
    if key_tp is str:
        return lambda key: key if key.__class__ is str else None
    if key_tp is bool:
        return lambda key: ("true" if key else "false") if key.__class__ is bool else None
    if key_tp is int:

        def int_key(key: Any) -> str | None:
            if key.__class__ is not int:
                return None
            try:
                return str(key)
            except ValueError:  # beyond sys.get_int_max_str_digits(): tagged
                return None

        return int_key
    if key_tp is uuid.UUID or key_tp is Decimal:
        return lambda key: str(key) if key.__class__ is key_tp else None
    if isinstance(key_tp, type) and issubclass(key_tp, Enum):
        kinds = {member.value.__class__ for member in key_tp}
        if kinds == {str}:
            return lambda key: key.value if key.__class__ is key_tp else None
        if kinds == {int}:
            return lambda key: str(key.value) if key.__class__ is key_tp else None
    return lambda key: None  # (a union of key types, a datetime...): tagged


def _mapping_encoder(key_tp: Any, item: _Typed) -> _Encoder:
    key_text = _key_writer(key_tp)
    encode_item, plain = item

    def encode(value: Any, path: str, depth: int) -> Any:
        # A dict whose only key is the tag's is written tagged, so that the
        # decoder can read a tag wherever it finds one.
        if value.__class__ is not dict or (len(value) == 1 and TAG in value):
            return _tagged(value, path, depth)
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        out = {}
        for key, entry in value.items():
            text = key_text(key)
            if text is None:
                return _tagged(value, path, depth)
            out[text] = (
                entry if entry.__class__ in plain
                else encode_item(entry, key_path(path, key), depth + 1)
            )
        return out

    return encode


def _any_key_mapping_encoder(item: _Typed) -> _Encoder:
    encode_item, plain = item

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is not dict:
            return _tagged(value, path, depth)
        return _encode_dict(value, path, depth, encode_item, plain)

    return encode


def _class_encoder(cls: type) -> _Encoder:
    """A dataclass or model annotation: an instance of that very class by its
    fields (a subclass, or another class, tagged: it names its class). Its
    fields' encoders are looked up on first use: a class may refer to itself."""

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is cls:
            encode_object = _object_encoder(cls)
            if encode_object is not None:
                return encode_object(value, path, depth)
        return _tagged(value, path, depth)

    return encode


# Unions. The decoder (``decoding._union_decoder``) reads a tag as itself, and
# plain JSON by the first member whose decoder accepts it. So a value is
# written plainly only by the first member whose plain class is the value's
# class, and only if no member before it could take that member's plain JSON
# (``Decimal | str``: a str is tagged, else "1.5" would come back a Decimal).


def _plain_class(tp: Any) -> tuple[type, type] | None:
    """``(the class a member writes plainly, the JSON type it writes it as)``;
    ``None`` for a member that is better always tagged in a union."""
    tp = unwrap(tp)
    if tp is str or tp is int or tp is bool or tp is float:
        return tp, tp
    if tp is Decimal or tp is uuid.UUID or tp is datetime or tp is date or tp is time:
        return tp, str
    if isinstance(tp, type) and issubclass(tp, Enum):
        kinds = {member.value.__class__ for member in tp}
        kind = kinds.pop() if len(kinds) == 1 else None
        return (tp, kind) if kind in (str, int, bool, float) else None
    container = get_origin(tp) or tp
    if container is tuple:
        return tuple, list
    try:
        sequence = _SEQUENCES.get(container)
    except TypeError:
        return None
    if sequence is not None:
        return sequence, list
    if container in MAPPINGS:
        return dict, dict
    if isinstance(tp, type) and kind_of(tp) in (Kind.DATACLASS, Kind.STATE):
        return tp, dict
    return None


_EVERY_JSON_TYPE: frozenset[type] = frozenset({str, int, float, bool, list, dict})


def _accepts(tp: Any) -> frozenset[type]:
    """The JSON types (untagged) the decoder of a member may accept: a
    superset (an Enum's ``_missing_`` or a model may take anything)."""
    tp = unwrap(tp)
    if tp is str or tp is int or tp is bool:
        return frozenset({tp})
    if tp is float:
        return frozenset({int, float})
    if tp is Decimal:
        return frozenset({str, int, float})
    if tp is uuid.UUID or tp is datetime or tp is date or tp is time:
        return frozenset({str})
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _EVERY_JSON_TYPE
    container = get_origin(tp) or tp
    try:
        if container is tuple or container in _SEQUENCES:
            return frozenset({list})
    except TypeError:
        return _EVERY_JSON_TYPE
    if container in MAPPINGS:
        return frozenset({dict})
    if isinstance(tp, type):
        if is_namedtuple(tp):
            return frozenset({list})  # (the array of its fields)
        kind = kind_of(tp)
        if kind is None:
            return _NOTHING  # its decoder reads tags only
        if kind is Kind.DATACLASS or kind is Kind.STATE:
            return frozenset({dict})
    return _EVERY_JSON_TYPE


def _union_encoder(args: tuple[Any, ...]) -> _Typed:
    allows_none = _NONE in args
    members = [arg for arg in args if arg is not _NONE]
    if len(members) == 1:  # Optional[X]: None is read first, then X alone
        encode_member, plain = _encoder_for(members[0])

        def encode_optional(value: Any, path: str, depth: int) -> Any:
            return None if value is None else encode_member(value, path, depth)

        return encode_optional, plain | {_NONE}
    by_class: dict[type, _Encoder] = {}
    seen: set[type] = set()
    plain_classes: set[type] = {_NONE} if allows_none else set()
    for index, member in enumerate(members):
        found = _plain_class(member)
        if found is None or found[0] in seen:
            continue
        cls, json_type = found
        seen.add(cls)
        if any(json_type in _accepts(earlier) for earlier in members[:index]):
            continue
        encode_member = _encoder_for(member)[0]
        if json_type is dict and cls is dict:
            encode_member = _self_describing(encode_member)
        by_class[cls] = encode_member
        if cls in JSON_SCALARS:
            plain_classes.add(cls)

    def encode(value: Any, path: str, depth: int) -> Any:
        if value is None and allows_none:
            return None
        encode_member = by_class.get(value.__class__)
        if encode_member is None:
            return _tagged(value, path, depth)
        return encode_member(value, path, depth)

    return encode, frozenset(plain_classes)


def _self_describing(encode_member: _Encoder) -> _Encoder:
    """A ``dict[Any, V]`` member writes non-text keys as pairs whose values
    are in V's form; a union reads a tag untyped, so those are tagged whole."""

    def encode(value: Any, path: str, depth: int) -> Any:
        out = encode_member(value, path, depth)
        if out.__class__ is dict and len(out) == 1 and TAG in out:
            return _tagged(value, path, depth)
        return out

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
        return _encode_dict(value, path, depth, _encode_untyped, JSON_SCALARS)
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
    # Only what would be refused pays from here on.
    if isinstance(value, tuple) and is_namedtuple(cls):
        name = _class_name(cls, path, value)
        return {TAG: ["namedtuple", [name, _namedtuple_fields(value, path, depth)]]}
    raise ContextSerializationError(path, value, _why_refused(value))


def _why_refused(value: Any) -> str:
    """Why a value of no journaled kind is refused: for one that is data (a
    subclass of a class the journal carries, a mapping, a sequence, a
    number...), what to convert it to; else it is taken for a resource (a
    client, a lock, a function), which belongs on the step (``NOT_DATA``)."""
    for base, instead in _CONVERSIONS:
        if isinstance(value, base):
            return (
                f"it is data, but {with_article(type(value).__qualname__)} is not one of the "
                f"classes the journal carries (docs/mechanics.md, \"The journal form of a "
                f"context\"): convert it to {instead} before it is stored"
            )
    return NOT_DATA


#: What a value that is data, but of a class the journal does not carry, can
#: be converted to (the first base it is an instance of).
_CONVERSIONS: tuple[tuple[type, str], ...] = (
    (bool, "a bool"),
    (int, "an int"),
    (float, "a float"),
    (complex, "a complex"),
    (str, "a str"),
    (bytes, "bytes"),
    (bytearray, "a bytearray"),
    (memoryview, "bytes (value.tobytes())"),
    (OrderedDict, "an OrderedDict"),
    (dict, "a dict (dict(value))"),
    (list, "a list (list(value))"),
    (tuple, "a tuple (tuple(value)) or a namedtuple defined at module level"),
    (deque, "a deque"),
    (set, "a set"),
    (frozenset, "a frozenset"),
    (pathlib.PurePath, "a PurePosixPath or PureWindowsPath, or its text"),
    (ipaddress._BaseAddress, "an ipaddress address, or its text"),
    (ipaddress._BaseNetwork, "an ipaddress network, or its text"),
    (Mapping, "a dict (dict(value))"),
    (Set, "a set or frozenset"),
    (Sequence, "a list or tuple"),
    (numbers.Number, "an int, float, Decimal or Fraction"),
    (date, "a date or datetime"),
    (time, "a time"),
    (timedelta, "a timedelta"),
)


_NAMEDTUPLE_PLANS: dict[type, tuple[tuple[str, _Encoder, frozenset[type]], ...]] = class_cache(
    "codec._NAMEDTUPLE_PLANS"
)


def _namedtuple_fields(value: Any, path: str, depth: int) -> Any:
    """A namedtuple's journal form: the array of its fields, each by its
    annotation (``typing.NamedTuple``'s; untyped for ``collections.namedtuple``'s).
    Refused when it holds what that would lose: attributes beyond its fields
    (a subclass without ``__slots__``), or another number of items."""
    cls = value.__class__
    plan = _NAMEDTUPLE_PLANS.get(cls)
    if plan is None:  # (built at the first write, not with the encoder: it may refer to itself)
        hints = type_hints(cls)
        plan = remember(
            _NAMEDTUPLE_PLANS,
            cls,
            tuple((name, *_encoder_for(hints.get(name, Any))) for name in cls._fields),
        )
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    if len(value) != len(plan):
        raise ContextSerializationError(
            path,
            value,
            f"it holds {len(value)} items where {cls.__qualname__} has {len(plan)} fields, "
            f"which is what is read back",
        )
    extras = getattr(value, "__dict__", None)
    if extras:
        name = next(iter(extras))
        raise ContextSerializationError(
            f"{path}.{name}" if path else name,
            extras[name],
            f"{name!r} is not a field of {cls.__qualname__}: a resumed run would not have it, "
            f"since a namedtuple is read back from its fields; declare it as a field, or give "
            f"the class __slots__ = () to keep attributes off it",
        )
    depth += 1
    return [
        entry if entry.__class__ in plain
        else encode(entry, f"{path}.{name}" if path else name, depth)
        for (name, encode, plain), entry in zip(plan, value, strict=True)
    ]


def _namedtuple_encoder(cls: type) -> _Encoder:
    """A namedtuple annotation: an instance of that very class as the array
    of its fields (``decoding.build_namedtuple`` reads it back); any other
    value (a tuple, a subclass instance) tagged: it names its class."""

    def encode(value: Any, path: str, depth: int) -> Any:
        if value.__class__ is cls:
            return _namedtuple_fields(value, path, depth)
        return _tagged(value, path, depth)

    return encode


def _encode_dict(
    value: dict[Any, Any], path: str, depth: int, item: _Encoder, plain: frozenset[type]
) -> Any:
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    if all(key.__class__ is str for key in value) and not (len(value) == 1 and TAG in value):
        return {
            key: entry if entry.__class__ in plain else item(entry, key_path(path, key), depth)
            for key, entry in value.items()
        }
    # Keys JSON cannot carry as object keys (or data shaped like a tag): pairs.
    return {
        TAG: [
            "dict",
            [
                [
                    _encode_untyped(key, key_path(path, key), depth),
                    entry if entry.__class__ in plain else item(entry, key_path(path, key), depth),
                ]
                for key, entry in value.items()
            ],
        ]
    }


def _items(value: Any, path: str, depth: int) -> list[Any]:
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    cls = value.__class__
    items = value if cls is tuple or cls is deque else _sorted(value)
    return [_encode_untyped(item, f"{path}[{i}]", depth) for i, item in enumerate(items)]


def _tz(zone: tzinfo | None, value: Any, path: str) -> Any:
    if zone is None:
        return None
    if type(zone) is timezone:
        # Its own arguments: a name given (even "UTC", or one that reads like
        # the default "UTC+01:00") is kept; its tzname() cannot tell.
        offset, *named = zone.__getinitargs__()  # type: ignore[attr-defined]
        micros = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
        return ["offset", micros, named[0] if named else None]
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
    # ISO 8601 for no zone or an unnamed offset of whole seconds: fromisoformat
    # reads "+00:00:00.000005" as UTC (decoding.py reads 0.9.0's text so).
    if value.fold == 0 and (
        zone is None or (zone[0] == "offset" and zone[2] is None and zone[1] % 1_000_000 == 0)
    ):
        return value.isoformat()
    return [value.replace(tzinfo=None, fold=0).isoformat(), zone, value.fold]


def _base64(value: bytes | bytearray, path: str, depth: int) -> str:
    return base64.b64encode(value).decode("ascii")


def _text(value: Any, path: str, depth: int) -> str:
    return str(value)


def _pairs(value: Any, path: str, depth: int) -> list[Any]:
    """An ``OrderedDict``'s items in order, as ``[key, value]`` pairs (untyped)."""
    if depth > MAX_CONTEXT_DEPTH:
        raise _TooDeep(path, value)
    depth += 1
    return [
        [_encode_untyped(key, key_path(path, key), depth),
         _encode_untyped(entry, key_path(path, key), depth)]
        for key, entry in value.items()
    ]


def _path(value: pathlib.PurePath, path: str, depth: int) -> list[str]:
    """A path's class and text, checked to read back: a Windows path that is
    an incomplete UNC one (``//server/``) reads back as another from its text."""
    cls, text = value.__class__, str(value)
    again = cls(text)
    if str(again) != text or again.parts != value.parts:
        raise ContextSerializationError(
            path,
            value,
            f"this {cls.__name__} reads back from its text as another path: keep its text "
            f"(str) instead",
        )
    return [cls.__name__, text]


def _complex(value: complex, path: str) -> list[float]:
    if not (math.isfinite(value.real) and math.isfinite(value.imag)):
        raise ContextSerializationError(path, value, "NaN and infinity are not JSON")
    return [value.real, value.imag]


def _fraction(value: Fraction, path: str, depth: int) -> Any:
    try:
        return str(value)
    except ValueError:  # beyond sys.get_int_max_str_digits(): the two ints
        return [value.numerator, value.denominator]


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
    Fraction: ("fraction", _fraction),
    ipaddress.IPv4Address: ("ipv4address", _text),
    ipaddress.IPv6Address: ("ipv6address", _text),
    ipaddress.IPv4Network: ("ipv4network", _text),
    ipaddress.IPv6Network: ("ipv6network", _text),
    ipaddress.IPv4Interface: ("ipv4interface", _text),
    ipaddress.IPv6Interface: ("ipv6interface", _text),
    pathlib.PurePosixPath: ("path", _path),
    pathlib.PureWindowsPath: ("path", _path),
    pathlib.PosixPath: ("path", _path),
    pathlib.WindowsPath: ("path", _path),
    OrderedDict: ("ordereddict", lambda value, path, depth: _pairs(value, path, depth)),
    deque: ("deque", lambda value, path, depth: [_items(value, path, depth), value.maxlen]),
    range: ("range", lambda value, path, depth: [value.start, value.stop, value.step]),
    complex: ("complex", lambda value, path, depth: _complex(value, path)),
}

_UNTYPED = (_encode_untyped, JSON_SCALARS)


_CLASS_NAMES: dict[type, str | None] = class_cache("codec._CLASS_NAMES")


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
        name = f"{module}:{qualname}"
        remember(_CLASS_NAMES, cls, name)
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
    if cls is list or cls is tuple or cls is deque:
        return [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, tuple):  # a namedtuple
        names = getattr(cls, "_fields", ())
        return [(item, f"{path}.{name}") for name, item in zip(names, value, strict=False)]
    if cls is dict or cls is OrderedDict:
        return [(item, key_path(path, key)) for key, item in value.items()]
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
