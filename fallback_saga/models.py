"""Context models: the kinds of class a saga context may be, told apart by duck typing.

A context (or a value inside one) is journaled by the first rule that fits
its class:

* ``PROTOCOL`` — the class defines ``to_dict()`` and a classmethod
  ``from_dict(data)`` itself (a ``SagaContext`` subclass that overrides
  them, or any class with both): they are the journal form.
* ``DATACLASS`` — a dataclass: its fields, by their type hints.
* ``PYDANTIC`` — a pydantic v2 model: ``model_dump_json`` /
  ``model_validate_json``.
* ``MSGSPEC`` — a msgspec ``Struct``: msgspec's JSON encoder and decoder.
* ``STATE`` — any other ``SagaContext`` subclass (a plain class, the seed
  document's style): its ``__dict__``, by the class's annotations.

pydantic and msgspec are recognised by their classes' modules and
attributes; neither is ever imported here (an instance of their classes
means the library is already loaded: ``sys.modules`` has it).

A model whose own journal form is not exact — a pydantic field annotated
``Any`` holding a ``Decimal`` comes back a ``str`` — is refused when it is
written, naming the field: every ``PROTOCOL``, ``PYDANTIC`` and ``MSGSPEC``
value is decoded again right after it is encoded and compared, types
included (``first_difference``). Dataclasses and ``STATE`` classes need no
such check: the codec (``codec.py``) is exact by construction.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import math
import pathlib
import re
import sys
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, TypeVar, get_args
from uuid import UUID

from .class_caches import class_cache, remember
from .errors import ContextDecodeError, ContextSerializationError, key_path

__all__ = [
    "CONTEXT_KINDS_HINT",
    "Kind",
    "default_codec",
    "dump_model",
    "first_difference",
    "kind_of",
    "load_model",
    "why_not",
]

F = TypeVar("F", bound=Callable[..., Any])


class Kind(enum.Enum):
    PROTOCOL = "to_dict/from_dict"
    DATACLASS = "dataclass"
    PYDANTIC = "pydantic model"
    MSGSPEC = "msgspec Struct"
    STATE = "SagaContext subclass"


#: What a refusal of an unsupported context class tells its author.
CONTEXT_KINDS_HINT = (
    "a context must be a dataclass, a SagaContext subclass, a class with to_dict() "
    "and a classmethod from_dict(data), a pydantic v2 model or a msgspec Struct"
)


def default_codec(function: F) -> F:
    """Mark ``SagaContext``'s own ``to_dict``/``from_dict``: a class that
    merely inherits them is not a ``PROTOCOL`` model."""
    function.__fallback_saga_default__ = True  # type: ignore[attr-defined]
    return function


_KINDS: dict[type, Kind | None] = class_cache("models._KINDS")
_WHY_NOT: dict[type, str] = class_cache("models._WHY_NOT")


def kind_of(cls: type) -> Kind | None:
    """The kind of ``cls`` (``None``: it cannot be journaled; ``why_not`` says why)."""
    try:
        return _KINDS[cls]
    except KeyError:
        return remember(_KINDS, cls, _find_kind(cls))
    except TypeError:  # an unhashable "class"
        return None


def why_not(cls: type) -> str:
    """Why ``kind_of(cls)`` is ``None``, with the fix."""
    reason = _WHY_NOT.get(cls)
    if reason is None:
        _find_kind(cls)  # (learnt again: forgotten since, class_caches.py)
        reason = _WHY_NOT.get(cls, CONTEXT_KINDS_HINT)
    return reason


def _defined(cls: type, name: str) -> Any:
    """The raw ``name`` attribute of the first class of ``cls``'s MRO that defines it."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _is_default(raw: Any) -> bool:
    function = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
    return getattr(function, "__fallback_saga_default__", False) is True


def _find_kind(cls: type) -> Kind | None:
    if not isinstance(cls, type):
        return None
    to_dict, from_dict = _defined(cls, "to_dict"), _defined(cls, "from_dict")
    own_to, own_from = (
        raw is not None and not _is_default(raw) for raw in (to_dict, from_dict)
    )
    if own_to or own_from:
        if not (own_to and own_from):
            remember(_WHY_NOT, cls, (
                f"{cls.__qualname__} defines {'to_dict' if own_to else 'from_dict'} but not "
                f"{'from_dict' if own_to else 'to_dict'}: define both (from_dict as a "
                f"classmethod), or neither"
            ))
            return None
        if not callable(to_dict) or not isinstance(from_dict, classmethod | staticmethod):
            remember(_WHY_NOT, cls, (
                f"{cls.__qualname__}.from_dict must be a classmethod taking the dict "
                f"that to_dict() returned"
            ))
            return None
        return Kind.PROTOCOL
    if dataclasses.is_dataclass(cls):
        return Kind.DATACLASS
    if _from_library(cls, "pydantic", "BaseModel"):
        if hasattr(cls, "model_dump_json") and hasattr(cls, "model_validate_json"):
            return Kind.PYDANTIC
        remember(_WHY_NOT, cls, f"{cls.__qualname__} is a pydantic v1 model: use pydantic v2")
        return None
    if _from_library(cls, "msgspec", "Struct") and hasattr(cls, "__struct_fields__"):
        return Kind.MSGSPEC
    if to_dict is not None:  # a SagaContext subclass that is not a dataclass
        if _has_slots(cls) or "__dict__" not in dir(cls):
            remember(_WHY_NOT, cls, (
                f"{cls.__qualname__} keeps its state in __slots__: make it a dataclass "
                f"(slots=True is fine) or give it to_dict() and a classmethod from_dict(data)"
            ))
            return None
        return Kind.STATE
    return None


def _from_library(cls: type, package: str, base: str) -> bool:
    for klass in cls.__mro__:
        module = klass.__dict__.get("__module__", "")
        if klass.__name__ == base and (module == package or module.startswith(package + ".")):
            return True
    return False


def _has_slots(cls: type) -> bool:
    for klass in cls.__mro__[:-1]:
        slots = klass.__dict__.get("__slots__")
        if slots is not None and slots not in ((), []):
            return True
    return False


# --------------------------------------------------------------------------- foreign models


def dump_model(value: Any, kind: Kind, path: str) -> Any:
    """The JSON form of a ``PROTOCOL``, ``PYDANTIC`` or ``MSGSPEC`` value,
    checked to decode back to exactly ``value`` (else ``ContextSerializationError``
    naming the field)."""
    cls = type(value)
    where = path or "<context>"
    if kind is Kind.PROTOCOL:
        try:
            raw = value.to_dict()
        except ContextSerializationError:
            raise
        except Exception as exc:
            # Its type only: the message is the model's own and may quote a value.
            raise ContextSerializationError(
                where, value, f"{cls.__qualname__}.to_dict() raised {type(exc).__name__}"
            ) from exc
        data = _json_copy(raw, path, f"{cls.__qualname__}.to_dict()", 0)
        text = None
    elif kind is Kind.PYDANTIC:
        try:
            # No serializer warnings: they quote the value (a possible secret),
            # and what does not come back exactly is refused below anyway.
            text = value.model_dump_json(by_alias=True, round_trip=True, warnings=False)
        except Exception as exc:
            raise _encode_refused(value, kind, path, exc) from _cause(exc)
        data = json.loads(text)
    else:
        try:
            text = sys.modules["msgspec"].json.encode(value).decode()
        except Exception as exc:
            raise _encode_refused(value, kind, path, exc) from _cause(exc)
        data = json.loads(text)
    try:
        back = _load(cls, kind, data, text, path)
    except ContextDecodeError as exc:
        raise ContextSerializationError(
            exc.path,
            value,
            f"its journal form cannot be read back ({exc.reason}): it could not be resumed",
        ) from exc.__cause__
    difference = first_difference(value, back, path)
    if difference is not None:
        at, what = difference
        raise ContextSerializationError(
            at or where,
            value,
            f"{_codec_name(cls, kind)} is not exact here: {what}, so a resumed saga would "
            f"see something else; annotate the field precisely (e.g. Decimal, dict[int, str], "
            f"tuple[int, ...]) or make the model carry it exactly",
        )
    return data


def load_model(cls: type, kind: Kind, data: Any, path: str) -> Any:
    """Rebuild a ``PROTOCOL``, ``PYDANTIC`` or ``MSGSPEC`` value from ``dump_model``'s output."""
    return _load(cls, kind, data, None, path)


def _load(cls: Any, kind: Kind, data: Any, text: str | None, path: str) -> Any:
    where = path or "<context>"
    try:
        if kind is Kind.PROTOCOL:
            value = cls.from_dict(data)
        elif kind is Kind.PYDANTIC:
            value = cls.model_validate_json(json.dumps(data) if text is None else text)
        else:
            raw = json.dumps(data) if text is None else text
            value = sys.modules["msgspec"].json.decode(raw.encode(), type=cls)
    except ContextDecodeError:
        raise
    except Exception as exc:
        at, why = _library_error(exc, path)
        raise ContextDecodeError(
            at, f"{_codec_name(cls, kind, load=True)} raised {why}"
        ) from _cause(exc)
    if type(value) is not cls:
        raise ContextDecodeError(
            where,
            f"{_codec_name(cls, kind, load=True)} returned a {type(value).__name__}, "
            f"not a {cls.__name__}",
        )
    return value


# ------------------------------------------------------------- the libraries' refusals
#
# pydantic's and msgspec's messages may quote the value they refused
# (pydantic's ``input_value='...'``, msgspec's ``Invalid enum value '...'``),
# and a model's own code may put anything in its exceptions: a refusal says
# where, by the library's location or by trying field by field, and what kind
# of problem, from a message with no value in it — never the value, which may
# be a secret. Exceptions that carry values are not chained either (a logged
# traceback would print them); the model's own exceptions are: its own code.


def _library(exc: BaseException) -> str | None:
    """``"pydantic"``/``"msgspec"`` when ``exc`` is one of theirs."""
    module = type(exc).__module__
    for name in ("pydantic", "msgspec"):
        if module == name or module.startswith((name + ".", name + "_")):
            return name
    return None


def _cause(exc: BaseException) -> BaseException | None:
    """What a refusal is chained to: ``exc``, unless its text may hold a value."""
    if _library(exc) is not None or isinstance(exc, UnicodeError):
        return None
    return exc


def _joined(path: str, steps: Any) -> str:
    for step in steps:
        if isinstance(step, int):
            path = f"{path}[{step}]"
        elif step != "":
            path = f"{path}.{step}" if path else str(step)
    return path


_MSGSPEC_AT = re.compile(r" - at `\$((?:[^`])*)`$")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _library_error(exc: BaseException, path: str) -> tuple[str, str]:
    """Where ``exc`` (raised decoding, or encoding, a model) points at, and
    what it says, without any value."""
    where = path or "<context>"
    library = _library(exc)
    text = str(exc)
    if isinstance(exc, UnicodeEncodeError) or "surrogates not allowed" in text:
        return where, "a str holds a lone surrogate, which UTF-8 cannot hold"
    if isinstance(exc, UnicodeError) or "utf-8 sequence" in text:
        return where, (
            "bytes that are not UTF-8 text (pydantic writes bytes as text unless the model "
            "says ser_json_bytes='base64')"
            if library == "pydantic"
            else "a value that is not UTF-8 text"
        )
    if library == "pydantic" and callable(getattr(exc, "errors", None)):
        try:
            errors = exc.errors(  # type: ignore[attr-defined]
                include_url=False, include_context=False, include_input=False
            )
            first = errors[0]
            at = _joined(path, first.get("loc", ())) or where
            kind = str(first.get("type", ""))
            # pydantic's own messages say what was expected; a validator's
            # (value_error, a custom type) may quote the value: its kind only.
            said = (
                str(first.get("msg", ""))
                if kind in _pydantic_error_types() and kind not in _PYDANTIC_QUOTING
                else "a validator refused it"
            )
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return at, f"ValidationError: {said} [type={kind}]{more}"
        except Exception:  # not the errors() we know
            return where, type(exc).__name__
    if library == "msgspec":
        match = _MSGSPEC_AT.search(text)
        at = where
        if match is not None:
            text = text[: match.start()]
            at = _msgspec_path(path, match.group(1)) or where
        if text.startswith("Invalid enum value"):
            text = "Invalid enum value"
        elif not text.startswith(_MSGSPEC_OWN):  # a __post_init__'s own message
            text = "the model's own check refused it"
        return at, f"{type(exc).__name__}: {_QUOTED.sub('...', text)}"
    if text.startswith(_NAMES_TYPES_ONLY):
        return where, f"{type(exc).__name__}: {exc}"  # names a class, not a value
    return where, type(exc).__name__


# pydantic's error types whose message may carry the value: a validator's
# own (value_error, assertion_error), the tag an input holds.
_PYDANTIC_QUOTING: Final = frozenset({"value_error", "assertion_error", "union_tag_invalid"})


def _pydantic_error_types() -> frozenset[str]:
    """The error types pydantic itself raises (their messages are its own)."""
    schema = sys.modules.get("pydantic_core.core_schema")
    try:
        return frozenset(get_args(schema.ErrorType))  # type: ignore[union-attr]
    except Exception:  # another pydantic_core: no message is trusted
        return frozenset()


# How msgspec's own validation messages begin (a __post_init__'s are the model's).
_MSGSPEC_OWN: Final = (
    "Expected ",
    "Object missing required field",
    "Object contains unknown field",
    "Invalid ",
    "Duplicate ",
    "JSON is malformed",
    "Input data was truncated",
    "Integer value out of range",
    "Number out of range",
)

# The encoders' messages that name a class or a rule, never a value.
_NAMES_TYPES_ONLY: Final = (
    "Unable to serialize unknown type",  # pydantic
    "Encoding objects of type",  # msgspec
    "Only dicts with str-like or number-like keys are supported",  # msgspec
)


def _msgspec_path(path: str, located: str) -> str:
    """``path`` followed by msgspec's ``$``-less location (``.a[0].b``)."""
    if not located:
        return path
    if located.startswith("."):
        return f"{path}{located}" if path else located[1:]
    return f"{path}{located}"


def _encode_refused(value: Any, kind: Kind, path: str, exc: BaseException) -> Exception:
    """``ContextSerializationError`` for a model its library cannot encode,
    naming the field: found by encoding the model's fields one by one."""
    at, what = _locate(value, kind, path)
    _, why = _library_error(exc, at)
    library = "pydantic cannot dump it" if kind is Kind.PYDANTIC else "msgspec cannot encode it"
    return ContextSerializationError(at or "<context>", what, f"{library} as JSON: {why}")


def _locate(value: Any, kind: Kind, path: str) -> tuple[str, Any]:
    """The path and value of what ``value``'s library fails to encode: the
    first field (or item, or nested model's field) that fails alone; ``value``
    itself when none does. Refusals only: never on the way of a good write."""
    if kind is Kind.PYDANTIC:
        names = list(getattr(type(value), "__pydantic_fields__", None) or {})
        names += list(getattr(value, "__pydantic_extra__", None) or {})
        for name in names:
            try:
                value.model_dump_json(
                    include={name}, by_alias=True, round_trip=True, warnings=False
                )
            except Exception:
                field = getattr(value, name, None)
                where = f"{path}.{name}" if path else name
                inner = kind_of(type(field))
                if inner is Kind.PYDANTIC or inner is Kind.MSGSPEC:
                    return _locate(field, inner, where)
                return where, field
        return path, value
    encode = sys.modules["msgspec"].json.encode
    items: list[tuple[str, Any]]
    fields = getattr(type(value), "__struct_fields__", None)
    if isinstance(fields, tuple):
        items = [(f"{path}.{name}" if path else name, getattr(value, name)) for name in fields]
    elif isinstance(value, list | tuple):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    elif isinstance(value, dict):
        items = [(key_path(path, key), item) for key, item in value.items()]
    else:
        return path, value
    for where, item in items:
        try:
            encode(item)
        except Exception:
            return _locate(item, kind, where)
    return path, value


def _codec_name(cls: type, kind: Kind, load: bool = False) -> str:
    name = cls.__qualname__
    if kind is Kind.PROTOCOL:
        return f"{name}.from_dict()" if load else f"{name}.to_dict()/from_dict()"
    if kind is Kind.PYDANTIC:
        return f"{name}.model_validate_json()" if load else f"pydantic's JSON form of {name}"
    return "msgspec.json.decode()" if load else f"msgspec's JSON form of {name}"


_JSON_LEAVES = frozenset({str, int, bool, type(None)})
_MAX_JSON_DEPTH = 400


def _json_copy(value: Any, path: str, source: str, depth: int) -> Any:
    """A copy of ``value`` made of JSON types only (a tuple becomes a list,
    as a store would make it), or ``ContextSerializationError``."""
    cls = value.__class__
    if cls in _JSON_LEAVES:
        return value
    if cls is float and math.isfinite(value):
        return value
    if depth > _MAX_JSON_DEPTH:
        raise ContextSerializationError(path or "<context>", value, f"{source} nests too deeply")
    if cls is list or cls is tuple:
        return [_json_copy(item, f"{path}[{i}]", source, depth + 1) for i, item in enumerate(value)]
    if cls is dict:
        out = {}
        for key, item in value.items():
            if key.__class__ is not str:
                raise ContextSerializationError(
                    key_path(path, key), key, f"{source} returned a key that is not text"
                )
            out[key] = _json_copy(item, f"{path}.{key}" if path else key, source, depth + 1)
        return out
    raise ContextSerializationError(
        path or "<context>",
        value,
        f"{source} must return JSON types only (str, int, float, bool, None, lists, "
        f"dicts with str keys)",
    )


# --------------------------------------------------------------------------- exact equality


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, str] | None:
    """Where ``b`` is not exactly ``a`` — values *and* types, dict key types,
    tuple-ness, Decimal exponents, time zones — as ``(path, what)``; ``None``
    when it is. Objects compare by their state, not their ``__eq__``."""
    found = _difference(a, b, set())
    if found is None:
        return None
    # The path is built once, from the steps gathered on the way back up
    # (innermost first): a group member's writes are found by comparing its
    # whole copy, and building every compared item's path cost more than
    # the comparison itself.
    trail, what = found
    for kind, step in reversed(trail):
        if kind is _INDEX:
            path = f"{path}[{step}]"
        elif kind is _KEY:
            path = key_path(path, step)
        elif kind is _KEY_ITSELF:
            path = key_path(path, step) + " (the key)"
        else:
            path = f"{path}.{step}" if path else step
    return path, what


# Every ``what`` names types and the kind of change, never a value: a
# context may hold secrets (a pydantic ``SecretStr`` that comes back masked),
# and refusals are shown and logged.

# A difference found below the top: the steps of its path (innermost first,
# each ``(kind, index/key/name)``) and what differs.
_Found = tuple[list[tuple[str, Any]], str]
_INDEX, _KEY, _KEY_ITSELF, _ATTRIBUTE = "index", "key", "key itself", "attribute"


def _a(cls: type) -> str:
    """``cls``'s name with its article: "an int", "a str"."""
    name = cls.__name__
    return f"{'an' if name[:1].lower() in 'aeiou' and name[:1] else 'a'} {name}"


def _difference(a: Any, b: Any, seen: set[tuple[int, int]]) -> _Found | None:
    ta, tb = type(a), type(b)
    if ta is not tb:
        return [], f"{_a(ta)} comes back as {_a(tb)}"
    if a is b:
        return None
    if ta in _PLAIN:  # (no float, Decimal, datetime or time is one: exact types)
        same = a == b
    elif ta is float or ta is complex:
        same = repr(a) == repr(b)
    elif ta in _BY_TEXT:  # (a Windows path's == ignores case; a path's slots hold caches)
        same = str(a) == str(b)
    elif ta is range:  # (== compares the items: range(0) == range(2, 2))
        same = (a.start, a.stop, a.step) == (b.start, b.stop, b.step)
    elif ta is Decimal:
        if a.as_tuple() == b.as_tuple():
            return None
        if a == b:
            return [], "a Decimal comes back with another exponent"
        same = False
    elif ta is datetime or ta is time:
        what = _time_difference(a, b)
        return None if what is None else ([], what)
    elif ta is not dict and ta is not list and isinstance(a, enum.Enum):
        same = False  # members are singletons: ``a is b`` was checked
    else:
        pair = (id(a), id(b))
        if pair in seen:
            return None
        seen.add(pair)
        return _container_difference(a, b, seen)
    return None if same else ([], f"{_a(ta)} comes back different")


_PLAIN: frozenset[type] = frozenset(
    {str, int, bool, bytes, bytearray, type(None), UUID, date, timedelta, Fraction}
)

#: The value classes that are what their text says (``codec.py`` journals
#: them so), and that ``==`` or their slots would tell apart otherwise.
_BY_TEXT: frozenset[type] = frozenset(
    {
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
    }
)


def _time_difference(a: Any, b: Any) -> str | None:
    kind = _a(type(a))
    if a != b:
        return f"{kind} comes back different"
    if a.fold != b.fold:
        return f"{kind} comes back with another fold"
    if a.utcoffset() != b.utcoffset():
        return f"{kind} comes back with another UTC offset"
    za, zb = a.tzinfo, b.tzinfo
    if za is zb or (type(za) is type(zb) and za == zb):
        return None
    # Two fixed-offset zones of different classes (pydantic's TzInfo, datetime.timezone)
    # with one offset are the same zone; a named zone turned into an offset is not.
    offset = za.utcoffset(None) if za is not None else None
    if offset is not None and zb is not None and zb.utcoffset(None) == offset:
        return None
    return f"the time zone of {kind} ({_a(type(za))}) comes back as {_a(type(zb))}"


def _container_difference(a: Any, b: Any, seen: set[tuple[int, int]]) -> _Found | None:
    cls = type(a)
    plain = _PLAIN
    if cls is list or cls is tuple or isinstance(a, tuple | deque):  # (a namedtuple)
        if cls is deque and a.maxlen != b.maxlen:
            return [], "a deque comes back with another maxlen"
        if len(a) != len(b):
            return [], f"{len(a)} items come back as {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            # What _difference says of two identical objects, or of two
            # equal ones of one plain type, without the call.
            if x is y:
                continue
            tx = type(x)
            if tx is type(y) and tx in plain and x == y:
                continue
            found = _difference(x, y, seen)
            if found:
                found[0].append((_INDEX, index))
                return found
        return None
    if cls is dict or cls is OrderedDict:
        if len(a) != len(b):
            return [], f"{len(a)} items come back as {len(b)}"
        if cls is OrderedDict and list(a) != list(b) and a.keys() == b.keys():  # (== tells)
            return [], "an OrderedDict comes back with its keys in another order"
        # A copy keeps the order of its keys: walk both side by side while
        # each key of ``b`` is the one ``b[key]`` would find (the same object,
        # or an equal one of the same plain type); else the general walk.
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            if ka is not kb:
                tk = type(ka)
                if not (tk is type(kb) and tk in plain and ka == kb):
                    break
            if va is vb:
                continue
            tv = type(va)
            if tv is type(vb) and tv in plain and va == vb:
                continue
            found = _difference(va, vb, seen)
            if found:
                found[0].append((_KEY, ka))
                return found
        else:
            return None
        return _items_difference(list(a.items()), b, seen, keyed=True)
    if cls is set or cls is frozenset:
        return _items_difference([(item, None) for item in a], {k: None for k in b}, seen, False)
    state_a, state_b = _state(a), _state(b)
    if state_a is None or state_b is None:
        return None if a == b else ([], f"{_a(cls)} comes back different")
    for name in state_a.keys() | state_b.keys():
        if name not in state_b:
            return [(_ATTRIBUTE, name)], "the attribute is missing"
        if name not in state_a:
            return [(_ATTRIBUTE, name)], "an attribute that was not there appears"
        found = _difference(state_a[name], state_b[name], seen)
        if found:
            found[0].append((_ATTRIBUTE, name))
            return found
    return None


def _items_difference(
    items: list[tuple[Any, Any]],
    other: dict[Any, Any],
    seen: set[tuple[int, int]],
    keyed: bool,
) -> _Found | None:
    if len(items) != len(other):
        return [], f"{len(items)} items come back as {len(other)}"
    keys = {key: key for key in other}
    for key, value in items:
        # A dict's key names the field, as in the codec's paths; a set's
        # item is a value, so the set is named instead (never the item).
        if key not in keys:
            if keyed:
                return [(_KEY, key)], "the key is missing"
            return [], f"an item ({_a(type(key))}) is missing"
        found = _difference(key, keys[key], seen)
        if found:
            if keyed:
                found[0].append((_KEY_ITSELF, key))
            return found
        found = _difference(value, other[key], seen)
        if found:
            if keyed:
                found[0].append((_KEY, key))
            return found
    return None


def _state(value: Any) -> dict[str, Any] | None:
    """The attributes that make up an object's value (``None``: it has none we can see)."""
    cls = type(value)
    if dataclasses.is_dataclass(cls):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(cls)}
    fields = getattr(cls, "__struct_fields__", None)
    if isinstance(fields, tuple) and _from_library(cls, "msgspec", "Struct"):
        return {name: getattr(value, name) for name in fields}
    if _from_library(cls, "pydantic", "BaseModel"):
        # Its fields, extras and private attributes (``PrivateAttr``: set by
        # a step, they are state too, though its JSON form leaves them out),
        # not what else its __dict__ may cache.
        names = getattr(cls, "__pydantic_fields__", None) or {}
        state = {name: getattr(value, name) for name in names if hasattr(value, name)}
        state.update(getattr(value, "__pydantic_extra__", None) or {})
        state.update(getattr(value, "__pydantic_private__", None) or {})
        return state
    state = {}
    own = getattr(value, "__dict__", None)
    if isinstance(own, dict):
        state.update(own)
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                state[name] = getattr(value, name)
    return state if own is not None or state else None
