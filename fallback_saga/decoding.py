"""Reading the journal form back: JSON to values, by the annotations.

The inverse of ``codec.py`` (whose docstring describes the form): a typed
position is decoded by its annotation, as journals always were; an untyped
one (``Any``, ``object``, bare ``dict``/``list``...) reads the tags
``{"$fs": [tag, payload]}`` and returns untagged JSON as it is — so a journal
written before tags existed decodes exactly as it did. Also the annotation
helpers that encoding and decoding share: what a hint stands for
(``unwrap``), whether it says what a value is (``is_untyped``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import inspect
import ipaddress
import pathlib
import sys
import types
import typing
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from typing import Any, ClassVar, Final, ForwardRef, Literal, TypeVar, Union, get_args, get_origin

from .class_caches import class_cache, remember
from .errors import ContextDecodeError, key_path
from .models import Kind, kind_of, load_model

__all__ = [
    "JSON_SCALARS",
    "MAPPINGS",
    "TAG",
    "decode_dataclass",
    "decode_state",
    "decode_untyped",
    "decoder",
    "fields",
    "fields_in_dict",
    "is_namedtuple",
    "is_union",
    "is_untyped",
    "post_init_plan",
    "type_hints",
    "untyped_union",
    "unwrap",
]

#: The key of a tagged value (see codec.py).
TAG = "$fs"

#: Exact types that are JSON as they are, in every position (float is not:
#: NaN and infinity are refused).
JSON_SCALARS: frozenset[type] = frozenset({str, int, bool, type(None)})

MAPPINGS = (dict, Mapping, MutableMapping)


# --------------------------------------------------------------------------- annotations


def unwrap(tp: Any) -> Any:
    """The type an annotation stands for, without ``Annotated``, ``NewType``,
    ``ClassVar`` and ``Final``."""
    while True:
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:
            tp = supertype
            continue
        origin = get_origin(tp)
        if origin is typing.Annotated:
            tp = get_args(tp)[0]
        elif origin is ClassVar or origin is Final:
            args = get_args(tp)
            tp = args[0] if args else Any
        elif tp is ClassVar or tp is Final:
            tp = Any
        else:
            return tp


def is_untyped(tp: Any) -> bool:
    return (
        tp is Any
        or tp is object
        or isinstance(tp, TypeVar | str | ForwardRef)
    )


def is_union(tp: Any) -> bool:
    origin = get_origin(tp)
    return origin is Union or origin is types.UnionType


def untyped_union(tp: Any) -> bool:
    return is_union(tp) and any(is_untyped(unwrap(arg)) for arg in get_args(tp))


# --------------------------------------------------------------------------- decoding

_Decoder = Callable[[Any, str], Any]
_DECODERS: dict[Any, _Decoder] = class_cache("decoding._DECODERS")


def _decode_untyped(value: Any, path: str) -> Any:
    cls = value.__class__
    if cls is list:
        return [
            item if item.__class__ in JSON_SCALARS else _decode_untyped(item, f"{path}[{i}]")
            for i, item in enumerate(value)
        ]
    if cls is dict:
        if len(value) == 1 and TAG in value:
            tagged = value[TAG]
            if tagged.__class__ is list and len(tagged) == 2 and tagged[0].__class__ is str:
                return _decode_tag(tagged[0], tagged[1], path)
        scalars = JSON_SCALARS
        return {
            key: item if item.__class__ in scalars else _decode_untyped(item, key_path(path, key))
            for key, item in value.items()
        }
    return value


def _shown(text: object, limit: int = 120) -> str:
    """A name a row holds (a tag, a class name, a field), as a message quotes
    it: as it is when short and printable, else escaped and cut — a row
    must not forge log lines or make a message of megabytes."""
    if not isinstance(text, str):
        return f"(a {type(text).__name__})"
    if len(text) <= limit and text.isprintable():
        return text
    shown = repr(text[:limit])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _is_tag(value: Any) -> bool:
    return value.__class__ is dict and len(value) == 1 and TAG in value


def _tag_shaped(tagged: Any) -> bool:
    return tagged.__class__ is list and len(tagged) == 2 and tagged[0].__class__ is str


def _read_tag(value: Any, path: str) -> Any:
    """A tagged value in a typed position: what the encoder writes for a
    value the annotation would not give back (None in a ``str`` field, an int
    in a ``float`` one, a subclass instance...). It says what it is, so it
    reads as in an untyped position."""
    tagged = value[TAG]
    if _tag_shaped(tagged):
        return _decode_tag(tagged[0], tagged[1], path)
    raise ContextDecodeError(path, f"invalid tag (a {type(tagged).__name__})")


def decode_untyped(value: Any, path: str) -> Any:
    """Read back a value ``codec.journal_untyped`` wrote (tags and all)."""
    return _decode_untyped(value, path)


def _decode_tag(tag: str, payload: Any, path: str) -> Any:
    read = _UNTAG.get(tag)
    if read is None:
        raise ContextDecodeError(
            path, f"unknown tag {_shown(tag)} (written by a newer fallback_saga?)"
        )
    try:
        return read(payload, path)
    except ContextDecodeError:
        raise
    except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
        # Neither the stored value nor the error (which may quote it) in the
        # message: it may be a secret of the context.
        raise ContextDecodeError(
            path, f"invalid {tag} (a {type(payload).__name__}: {type(exc).__name__})"
        ) from None


def _decode_pairs(payload: Any, path: str, item: _Decoder = _decode_untyped) -> dict[Any, Any]:
    out = {}
    for key, entry in payload:
        key = _decode_untyped(key, path)
        out[key] = item(entry, key_path(path, key))
    return out


def _decode_fraction(payload: Any, path: str) -> Fraction:
    if payload.__class__ is list:  # an int beyond sys.get_int_max_str_digits(): two ints
        numerator, denominator = (_decode_untyped(part, path) for part in payload)
        return Fraction(numerator, denominator)
    return Fraction(_text_payload(payload))


def _decode_items(payload: Any, path: str) -> list[Any]:
    if payload.__class__ is not list:
        raise ContextDecodeError(path, f"expected an array, got {_kind(payload)}")
    return [_decode_untyped(item, f"{path}[{i}]") for i, item in enumerate(payload)]


def _decode_zone(zone: Any) -> tzinfo | None:
    if zone is None:
        return None
    if zone[0] == "offset":
        offset = timedelta(microseconds=zone[1])
        return timezone(offset) if zone[2] is None else timezone(offset, zone[2])
    if zone[0] == "zone":
        import zoneinfo  # only when a journal names a zone: it is slow to import

        return zoneinfo.ZoneInfo(zone[1])
    raise ValueError(f"unknown zone {zone!r}")


def _sub_second_offset(value: Any, text: str) -> Any:
    """``value`` with the offset under a second that its ISO ``text`` ends in:
    0.9.0 wrote one so ("+00:00:00.000005"), and fromisoformat (3.11 to 3.13)
    reads it as UTC ("+01:00:00.5" it reads right). A zero offset as isoformat
    writes it ends in ":00", so only a UTC result whose text does not comes
    here: one index and one identity test on the common path."""
    # A UTC text not ending in ":00" ("Z", "+00:00:00.000000") stays as
    # fromisoformat read it.
    head, dot, fraction = text.rpartition(".")
    sign, zeros = head[-9:-8], head[-8:]
    if dot and sign in ("+", "-") and zeros == "00:00:00" and fraction.isdigit():
        micros = int(fraction.ljust(6, "0"))
        if micros:
            offset = timedelta(microseconds=-micros if sign == "-" else micros)
            return value.replace(tzinfo=timezone(offset))
    return value


def _decode_moment(kind: type[datetime] | type[time]) -> _Decoder:
    read = kind.fromisoformat

    def decode(payload: Any, path: str) -> Any:
        if payload.__class__ is str:
            moment = read(payload)
            if moment.tzinfo is UTC and payload[-3] != ":":
                return _sub_second_offset(moment, payload)
            return moment
        wall, zone, fold = payload
        return kind.fromisoformat(wall).replace(tzinfo=_decode_zone(zone), fold=fold)

    return decode


def _decode_enum(payload: Any, path: str) -> Any:
    name, value = payload
    cls = _resolve(name, path)
    if not (isinstance(cls, type) and issubclass(cls, Enum)):
        raise ContextDecodeError(path, f"{_shown(name)} is not an Enum")
    return cls(_decode_untyped(value, path))


def _decode_namedtuple(payload: Any, path: str) -> Any:
    name, data = payload
    cls = _resolve(name, path)
    if not is_namedtuple(cls):
        raise ContextDecodeError(path, f"{_shown(name)} is not a namedtuple")
    return build_namedtuple(cls, data, path)


def is_namedtuple(cls: type) -> bool:
    """Whether ``cls`` is a ``typing.NamedTuple`` or ``collections.namedtuple``
    class (or a subclass of one): a tuple subclass with a tuple of field
    names. Told from the classes' namespaces alone: no code of ``cls`` runs
    (it may be a class a journal names)."""
    if tuple not in cls.__mro__[1:]:
        return False
    names = _static_attribute(cls, "_fields")
    return names.__class__ is tuple and all(name.__class__ is str for name in names)


_NAMEDTUPLE_DECODERS: dict[type, tuple[tuple[str, _Decoder], ...]] = class_cache(
    "decoding._NAMEDTUPLE_DECODERS"
)


def build_namedtuple(cls: type, data: Any, path: str) -> Any:
    """A namedtuple of class ``cls`` from the array of its fields' journal
    forms (by the fields' annotations: ``typing.NamedTuple``'s; none —
    untyped — for ``collections.namedtuple``'s). Made by ``tuple.__new__``,
    never by its class's ``__new__`` or ``_make``: a subclass may override
    them, and reading a journal runs no code of the classes it names (S12)."""
    plan = _NAMEDTUPLE_DECODERS.get(cls)
    if plan is None:
        hints = type_hints(cls)
        plan = remember(
            _NAMEDTUPLE_DECODERS,
            cls,
            tuple(
                (name, decoder(hints.get(name, Any)))
                for name in _static_attribute(cls, "_fields")
            ),
        )
    if data.__class__ is not list or len(data) != len(plan):
        raise ContextDecodeError(
            path,
            f"expected an array of the {len(plan)} fields of {cls.__qualname__}, got "
            f"{f'{len(data)} items' if data.__class__ is list else _kind(data)}",
        )
    return tuple.__new__(
        cls,
        [
            decode(entry, f"{path}.{name}" if path else name)
            for (name, decode), entry in zip(plan, data, strict=True)
        ],
    )


def _namedtuple_decoder(cls: type) -> _Decoder:
    """A namedtuple annotation: the array of its fields, or a tag (a
    subclass instance, a tuple...)."""

    def decode(value: Any, path: str) -> Any:
        if _is_tag(value):
            return _read_tag(value, path)
        return build_namedtuple(cls, value, path)

    return decode


#: The standard library's value classes a journal may name (``"path"``:
#: pure paths, and the concrete path of this OS): a fixed list, never a
#: class looked up by a name from the journal.
_PATHS: dict[str, type[pathlib.PurePath]] = {
    "PurePosixPath": pathlib.PurePosixPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "PosixPath": pathlib.PosixPath,
    "WindowsPath": pathlib.WindowsPath,
}
_THIS_OS_PATH = type(pathlib.Path())


def _decode_path(payload: Any, path: str) -> Any:
    kind, text = payload
    cls = _PATHS.get(kind) if kind.__class__ is str else None
    if cls is None:
        raise ContextDecodeError(path, f"unknown path class {_shown(kind)}")
    if issubclass(cls, pathlib.Path) and cls is not _THIS_OS_PATH:
        raise ContextDecodeError(
            path,
            f"a {kind} was journaled on another operating system and cannot be made on "
            f"this one: keep a Pure{kind} (or its text) in the context to move it between "
            f"systems",
        )
    return cls(_text_payload(text))


def _decode_deque(payload: Any, path: str) -> deque[Any]:
    items, maxlen = payload
    if maxlen is not None and maxlen.__class__ is not int:
        raise TypeError("maxlen")
    return deque(_decode_items(items, path), maxlen)


def _decode_range(payload: Any, path: str) -> range:
    bounds = _decode_items(payload, path)
    if len(bounds) != 3 or any(bound.__class__ is not int for bound in bounds):
        raise TypeError("bounds")
    return range(*bounds)


def _decode_complex(payload: Any, path: str) -> complex:
    real, imag = payload
    if real.__class__ is not float or imag.__class__ is not float:
        raise TypeError("parts")
    return complex(real, imag)


def _decode_object(payload: Any, path: str) -> Any:
    name, data = payload
    cls = _resolve(name, path)
    return _model_decoder(cls, name)(data, path)


def _resolve(name: Any, path: str) -> Any:
    """The class ``module:Qualname`` names, in a module the process has
    imported already. Never imported on the journal's say: stored data must
    not make the library run code (importing a module runs its top level), so
    a resuming process imports its own modules, as it does its saga classes."""
    if name.__class__ is not str or ":" not in name:
        raise ContextDecodeError(path, f"invalid class name {_shown(name)}")
    module_name, qualname = name.split(":", 1)
    found: Any = sys.modules.get(module_name)
    if found is None:
        raise ContextDecodeError(
            path,
            f"{_shown(name)} is in a module this process has not imported; import "
            f"{_shown(module_name)} before resuming (the journal never imports code)",
        )
    for part in qualname.split("."):
        found = _static_attribute(found, part)
    if not isinstance(found, type):
        raise ContextDecodeError(path, f"there is no class {_shown(name)}")
    return found


def _static_attribute(owner: Any, name: str) -> Any:
    """``owner.name`` as stored in a module's or a class's namespace, without
    running code: no module ``__getattr__`` (PEP 562: it may import a
    submodule, as ``concurrent.futures`` does), no metaclass ``__getattr__``,
    no descriptor. ``None`` when it is not there."""
    if isinstance(owner, types.ModuleType):
        return vars(owner).get(name)
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in vars(klass):
                return vars(klass)[name]
    return None


_UNTAG: dict[str, _Decoder] = {
    "tuple": lambda payload, path: tuple(_decode_items(payload, path)),
    "set": lambda payload, path: set(_decode_items(payload, path)),
    "frozenset": lambda payload, path: frozenset(_decode_items(payload, path)),
    "dict": _decode_pairs,
    "decimal": lambda payload, path: Decimal(_text_payload(payload)),
    "datetime": _decode_moment(datetime),
    "time": _decode_moment(time),
    "date": lambda payload, path: date.fromisoformat(payload),
    "timedelta": lambda payload, path: timedelta(*payload),
    "uuid": lambda payload, path: uuid.UUID(_text_payload(payload)),
    "bytes": lambda payload, path: base64.b64decode(_text_payload(payload), validate=True),
    "bytearray": lambda payload, path: bytearray(
        base64.b64decode(_text_payload(payload), validate=True)
    ),
    "fraction": _decode_fraction,
    "enum": _decode_enum,
    "obj": _decode_object,
    "namedtuple": _decode_namedtuple,
    # The standard library's value classes, each made by its own code from
    # its text or arguments (S12: a fixed list, no name read from the row).
    "ipv4address": lambda payload, path: ipaddress.IPv4Address(_text_payload(payload)),
    "ipv6address": lambda payload, path: ipaddress.IPv6Address(_text_payload(payload)),
    "ipv4network": lambda payload, path: ipaddress.IPv4Network(_text_payload(payload)),
    "ipv6network": lambda payload, path: ipaddress.IPv6Network(_text_payload(payload)),
    "ipv4interface": lambda payload, path: ipaddress.IPv4Interface(_text_payload(payload)),
    "ipv6interface": lambda payload, path: ipaddress.IPv6Interface(_text_payload(payload)),
    "path": _decode_path,
    "ordereddict": lambda payload, path: OrderedDict(_decode_pairs(payload, path)),
    "deque": _decode_deque,
    "range": _decode_range,
    "complex": _decode_complex,
    # A value in a typed position that its annotation would not give back,
    # and that is plain JSON in an untyped one (None in a str field).
    "any": _decode_untyped,
    # Written by the stores' JSON encoding (store/_common.py), not by codec.py:
    # an int beyond sys.get_int_max_str_digits() (JSON text cannot hold it:
    # Python refuses to read it back), in hexadecimal, which has no such limit.
    "int": lambda payload, path: int(_text_payload(payload), 16),
    # ... and a text holding two adjacent lone surrogates, in pieces (a JSON
    # reader would join the two into one character).
    "str": lambda payload, path: "".join(_text_payload(piece) for piece in payload),
}


def _text_payload(payload: Any) -> str:
    if payload.__class__ is not str:
        raise TypeError(f"expected text, got {_kind(payload)}")
    return str(payload)


def _class_decoder(cls: type) -> _Decoder:
    """A class annotation: its instance's fields, or a tag (a subclass instance...)."""
    decode_object = _model_decoder(cls)

    def decode(value: Any, path: str) -> Any:
        if value.__class__ is dict and len(value) == 1 and TAG in value:
            return _read_tag(value, path)
        return decode_object(value, path)

    return decode


def _model_decoder(cls: type, name: str | None = None) -> _Decoder:
    kind = kind_of(cls)
    if kind is Kind.DATACLASS:
        return lambda value, path: decode_dataclass(cls, value, path)
    if kind is Kind.STATE:
        return lambda value, path: decode_state(cls, value, path)
    if kind is not None:
        model_kind = kind
        return lambda value, path: load_model(cls, model_kind, value, path)
    shown = _shown(name) if name is not None else cls.__qualname__

    def refuse(value: Any, path: str) -> Any:
        raise ContextDecodeError(path, f"no JSON decoding is known for type {shown}")

    return refuse


def decode_dataclass(cls: type, data: Any, path: str) -> Any:
    """A dataclass instance with the stored field values, made without
    ``__init__`` (as ``copy`` makes one: its ``__init__`` may want what is not
    stored, an ``InitVar``). Its ``__post_init__`` then runs, as at
    construction — it derives what is not stored (an index, a cache), as
    pydantic's validators run when a model is read — between the fields
    ``__init__`` takes and the others (``init=False``), which keep the values
    the journal holds. Not for a class with an ``InitVar``: its
    ``__post_init__`` wants the value, which is not stored."""
    if not isinstance(data, Mapping):
        raise ContextDecodeError(path or "<context>", f"expected an object, got {_kind(data)}")
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    known = set()
    for field in fields(cls):
        known.add(field.name)
        where = f"{path}.{field.name}" if path else field.name
        if field.name in data:
            values[field.name] = decoder(hints.get(field.name, Any))(data[field.name], where)
        elif field.default is not dataclasses.MISSING:  # (a journal older than the field)
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
        elif field.init:
            raise ContextDecodeError(where, "the field is missing")
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ContextDecodeError(
            path or "<context>",
            f"{cls.__name__} has no field(s) {', '.join(map(_shown, unknown[:5]))}"
            f"{f' (and {len(unknown) - 5} more)' if len(unknown) > 5 else ''}",
        )
    return build_dataclass(cls, values, path)


def build_dataclass(cls: type, values: dict[str, Any], path: str) -> Any:
    """A dataclass instance with these field values (all of them, decoded),
    as ``decode_dataclass`` makes it: without ``__init__``, then its
    ``__post_init__`` between the fields ``__init__`` takes and the others."""
    maker: Any = cls
    try:
        instance = maker.__new__(maker)
    except Exception as exc:
        raise ContextDecodeError(
            path or "<context>", f"{cls.__name__}.__new__ raised {type(exc).__name__}"
        ) from exc
    post_init, not_in_init = post_init_plan(cls)
    if post_init is None:
        _set_fields(cls, instance, values)
    else:
        late = {name: values.pop(name) for name in not_in_init if name in values}
        _set_fields(cls, instance, values)
        try:
            post_init(instance)
        except Exception as exc:  # one that rejects the stored values
            raise ContextDecodeError(
                path or "<context>", f"{cls.__name__}.__post_init__ raised {type(exc).__name__}"
            ) from exc
        _set_fields(cls, instance, late)
    return instance


def _set_fields(cls: type, instance: Any, values: dict[str, Any]) -> None:
    if fields_in_dict(cls):
        instance.__dict__.update(values)
    else:
        for name, value in values.items():
            object.__setattr__(instance, name, value)  # (a frozen dataclass too)


_POST_INITS: dict[type, tuple[Callable[[Any], None] | None, tuple[str, ...]]] = class_cache(
    "decoding._POST_INITS"
)


def post_init_plan(cls: type) -> tuple[Callable[[Any], None] | None, tuple[str, ...]]:
    """The dataclass's ``__post_init__`` to run when it is read back (None:
    it has none, or one that wants an ``InitVar`` with no default), and its
    fields ``__init__`` does not take."""
    plan = _POST_INITS.get(cls)
    if plan is None:
        post_init = getattr(cls, "__post_init__", None)
        if post_init is not None:
            wanted = list(inspect.signature(post_init).parameters.values())[1:]  # after self
            if any(
                parameter.default is parameter.empty
                and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
                for parameter in wanted
            ):
                post_init = None
        plan = remember(
            _POST_INITS,
            cls,
            (post_init, tuple(field.name for field in fields(cls) if not field.init)),
        )
    return plan




_IN_DICT: dict[type, bool] = class_cache("decoding._IN_DICT")


def fields_in_dict(cls: type) -> bool:
    """Whether every field of the dataclass ``cls`` lives in its instances'
    ``__dict__`` (no slot, no descriptor): then they are set in one go."""
    known = _IN_DICT.get(cls)
    if known is None:
        known = remember(
            _IN_DICT,
            cls,
            "__dict__" in dir(cls)
            and not any(
                hasattr(type(inspect.getattr_static(cls, field.name, None)), "__set__")
                for field in fields(cls)
            ),
        )
    return known


def decode_state(cls: type, data: Any, path: str) -> Any:
    """A plain ``SagaContext``: made without ``__init__`` (as ``copy`` makes
    one), its attributes decoded by the class's annotations."""
    if not isinstance(data, Mapping):
        raise ContextDecodeError(path or "<context>", f"expected an object, got {_kind(data)}")
    maker: Any = cls
    try:
        instance = maker.__new__(maker)
    except Exception as exc:
        raise ContextDecodeError(
            path or "<context>", f"{cls.__name__}.__new__ raised {type(exc).__name__}"
        ) from exc
    hints = type_hints(cls)
    state = instance.__dict__
    for name, raw in data.items():
        state[name] = decoder(hints.get(name, Any))(raw, f"{path}.{name}" if path else name)
    return instance


def fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    cached = _FIELDS.get(cls)
    if cached is None:
        cached = remember(_FIELDS, cls, dataclasses.fields(cls))
    return cached


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = class_cache("decoding._FIELDS")
_HINTS: dict[type, dict[str, Any]] = class_cache("decoding._HINTS")


def type_hints(cls: type) -> dict[str, Any]:
    cached = _HINTS.get(cls)
    if cached is None:
        try:
            cached = typing.get_type_hints(cls)
        except Exception:  # one unresolvable annotation: resolve the others one by one
            cached = _each_hint(cls)
        remember(_HINTS, cls, cached)
    return cached


def _each_hint(cls: type) -> dict[str, Any]:
    """The annotations of ``cls`` resolved one at a time (as ``get_type_hints``
    would); one that cannot be resolved (a class defined inside a function)
    stays a string: an untyped position."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        global_names = dict(vars(module)) if module is not None else {}
        local_names = dict(vars(klass))
        for name, annotation in inspect.get_annotations(klass).items():
            hints[name] = annotation
            if isinstance(annotation, str):
                with contextlib.suppress(Exception):
                    hints[name] = eval(annotation, global_names, local_names)
    return hints


def _kind(value: Any) -> str:
    return type(value).__name__


def decoder(tp: Any) -> _Decoder:
    try:
        cached = _DECODERS.get(tp)
    except TypeError:  # unhashable annotation
        return _build_decoder(tp)
    if cached is None:
        cached = remember(_DECODERS, tp, _build_decoder(tp))
    return cached


def _expect(kind: type | tuple[type, ...], name: str) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ContextDecodeError(path, f"expected {name}, got bool")
        if not isinstance(value, kind):
            if _is_tag(value):
                return _read_tag(value, path)
            raise ContextDecodeError(path, f"expected {name}, got {_kind(value)}")
        return value

    return decode


def _via(
    convert: Callable[[Any], Any], name: str, source: type | tuple[type, ...] = str
) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        if isinstance(value, source) and not isinstance(value, bool):
            try:
                return convert(value)
            except (ValueError, ArithmeticError):
                raise ContextDecodeError(
                    path, f"invalid {name} (a {type(value).__name__} that does not convert)"
                ) from None
        if _is_tag(value):
            return _read_tag(value, path)
        raise ContextDecodeError(path, f"expected {name} text, got {_kind(value)}")

    return decode


def _moment_via(kind: type[datetime] | type[time]) -> _Decoder:
    """``_via(kind.fromisoformat)`` that reads an offset under a second
    exactly (``_sub_second_offset``), in one frame: a wrapper's call cost more
    than the check."""
    read, name = kind.fromisoformat, kind.__name__

    def decode(value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                moment = read(value)
            except (ValueError, ArithmeticError):
                raise ContextDecodeError(
                    path, f"invalid {name} (a {type(value).__name__} that does not convert)"
                ) from None
            if moment.tzinfo is UTC and value[-3] != ":":
                return _sub_second_offset(moment, value)
            return moment
        if _is_tag(value):
            return _read_tag(value, path)
        raise ContextDecodeError(path, f"expected {name} text, got {_kind(value)}")

    return decode


def _decode_float(value: Any, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if _is_tag(value):
            return _read_tag(value, path)
        raise ContextDecodeError(path, f"expected float, got {_kind(value)}")
    return float(value)


def _build_decoder(tp: Any) -> _Decoder:
    tp = unwrap(tp)
    if is_untyped(tp) or untyped_union(tp):
        return _decode_untyped
    if tp is type(None) or tp is None:
        return _expect(type(None), "null")
    if tp is bool:
        return _expect(bool, "bool")
    if tp is int:
        return _expect(int, "int")
    if tp is float:
        return _decode_float
    if tp is str:
        return _expect(str, "str")
    if tp is uuid.UUID:
        return _via(uuid.UUID, "UUID")
    if tp is Decimal:
        return _via(Decimal, "Decimal", (str, int, float))
    if tp is datetime:
        return _moment_via(datetime)
    if tp is date:
        return _via(date.fromisoformat, "date")
    if tp is time:
        return _moment_via(time)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum_decoder(tp)

    origin, args = get_origin(tp), get_args(tp)
    if is_union(tp):
        return _union_decoder(args)
    if origin is Literal:
        return _literal_decoder(args)
    if origin in (list, MutableSequence, Sequence) or tp in (list, Sequence, MutableSequence):
        return _sequence_decoder(list, args[0] if args else Any)
    if origin in (set, frozenset) or tp in (set, frozenset):
        return _sequence_decoder(origin or tp, args[0] if args else Any)
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _sequence_decoder(tuple, args[0] if args else Any)
        return _fixed_tuple_decoder(args)
    if origin in MAPPINGS or tp in MAPPINGS:
        key_tp, value_tp = args if args else (Any, Any)
        if is_untyped(unwrap(key_tp)):
            return _any_key_mapping_decoder(value_tp)
        return _mapping_decoder(key_tp, value_tp)
    if isinstance(tp, type):  # a dataclass, a model, or a class read from tags only
        if is_namedtuple(tp):
            return _namedtuple_decoder(tp)
        return _class_decoder(tp)
    name = getattr(tp, "__name__", repr(tp))

    def refuse(value: Any, path: str) -> Any:
        if _is_tag(value):
            return _read_tag(value, path)
        raise ContextDecodeError(path, f"no JSON decoding is known for type {name}")

    return refuse


def _enum_decoder(enum_cls: type[Enum]) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        if _is_tag(value):
            return _read_tag(value, path)
        try:
            return enum_cls(value)
        except ValueError:
            raise ContextDecodeError(
                path, f"a {type(value).__name__} that is no {enum_cls.__name__} value"
            ) from None

    return decode


def _union_decoder(args: tuple[Any, ...]) -> _Decoder:
    allows_none = type(None) in args
    options = [decoder(arg) for arg in args if arg is not type(None)]

    def decode(value: Any, path: str) -> Any:
        if value is None and allows_none:
            return None
        if _is_tag(value):
            return _read_tag(value, path)
        failures = []
        for option in options:
            try:
                return option(value, path)
            except ContextDecodeError as exc:
                failures.append(str(exc))
        raise ContextDecodeError(path, "matches no member of the union: " + "; ".join(failures))

    return decode


def _literal_decoder(args: tuple[Any, ...]) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        for option in args:
            if value == option and type(value) is type(option):
                return option
            if isinstance(option, Enum) and value == option.value:
                return option
        if _is_tag(value):
            return _read_tag(value, path)
        raise ContextDecodeError(
            path, f"a {type(value).__name__} that is not one of the Literal's values"
        )

    return decode


def _sequence_decoder(container: Callable[[Any], Any], item_tp: Any) -> _Decoder:
    item = decoder(item_tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            if _is_tag(value):
                return _read_tag(value, path)
            raise ContextDecodeError(path, f"expected an array, got {_kind(value)}")
        return container(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))

    return decode


def _fixed_tuple_decoder(args: tuple[Any, ...]) -> _Decoder:
    items = [decoder(arg) for arg in args]

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(items):
            if _is_tag(value):
                return _read_tag(value, path)
            raise ContextDecodeError(path, f"expected an array of {len(items)} items")
        return tuple(
            item(entry, f"{path}[{index}]")
            for index, (item, entry) in enumerate(zip(items, value, strict=True))
        )

    return decode


def _key_decoder(key_tp: Any) -> _Decoder:
    # JSON object keys are text: convert back to the declared key type.
    key_tp = unwrap(key_tp)
    if key_tp is int:
        return _via(int, "int")
    if key_tp is bool:
        return _via(lambda text: {"true": True, "false": False}[text], "bool")
    if isinstance(key_tp, type) and issubclass(key_tp, Enum):
        enum_decode = _enum_decoder(key_tp)
        value_types = {type(member.value) for member in key_tp}

        def decode(value: Any, path: str) -> Any:
            if int in value_types and isinstance(value, str) and value.lstrip("-").isdigit():
                return enum_decode(int(value), path)
            return enum_decode(value, path)

        return decode
    return decoder(key_tp)


def _mapping_decoder(key_tp: Any, value_tp: Any) -> _Decoder:
    decode_key, decode_value = _key_decoder(key_tp), decoder(value_tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise ContextDecodeError(path, f"expected an object, got {_kind(value)}")
        if len(value) == 1 and TAG in value and _tag_shaped(value[TAG]):
            return _read_tag(value, path)  # (data shaped so: journals before typed tags)
        return {
            decode_key(key, key_path(path, key)): decode_value(item, key_path(path, key))
            for key, item in value.items()
        }

    return decode


def _any_key_mapping_decoder(value_tp: Any) -> _Decoder:
    """``dict`` / ``dict[Any, V]``: an object (text keys), or the tagged pairs."""
    decode_value = decoder(value_tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise ContextDecodeError(path, f"expected an object, got {_kind(value)}")
        if len(value) == 1 and TAG in value:
            tagged = value[TAG]
            if tagged.__class__ is list and len(tagged) == 2 and tagged[0] == "dict":
                try:
                    return _decode_pairs(tagged[1], path, decode_value)
                except ContextDecodeError:
                    raise
                except (ValueError, TypeError) as exc:
                    raise ContextDecodeError(
                        path, f"invalid dict pairs ({type(exc).__name__})"
                    ) from None
            return _read_tag(value, path)
        return {key: decode_value(item, key_path(path, key)) for key, item in value.items()}

    return decode
