"""Saga contexts: deep snapshot/restore in place, and a JSON-safe round trip.

Two different copies of a context exist, for two different jobs:

* a **snapshot** (``take_snapshot``/``Snapshot.restore``) undoes what a failed
  step did to the context. It must give back the *exact* values — types,
  shared references and cycles included — so it never goes through JSON. It
  is taken before every step, so it is on the hot path: values are copied by a
  dispatch on their runtime type (immutable values are shared, lists, dicts and
  plain objects are copied field by field), and only values of unknown shape
  fall back to ``copy.deepcopy``. Annotations are never trusted for this: a
  field annotated ``str`` that holds a list is still copied.
* the **journal form** (``context_to_dict``/``context_from_dict``) is what a
  store writes: JSON types only, decoded back through the dataclass's type
  hints. A value that JSON cannot carry is refused with the field's path,
  and so is a context that JSON cannot carry as a whole: a cyclic one (a
  value that contains itself), or one nested deeper than
  ``MAX_CONTEXT_DEPTH`` levels (each list, tuple, set, dict or dataclass
  inside the context is one level). The executor journals the context
  before the first step runs, so such a context is refused then (S12).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
import uuid
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ContextDecodeError, ContextSerializationError

__all__ = [
    "MAX_CONTEXT_DEPTH",
    "SagaContext",
    "Snapshot",
    "check_serializable",
    "context_from_dict",
    "context_to_dict",
    "take_snapshot",
]

C = TypeVar("C")

# --------------------------------------------------------------------------- snapshot

# Values of these exact types are immutable: a snapshot can share them.
_IMMUTABLE: frozenset[type] = frozenset(
    {
        str,
        int,
        float,
        bool,
        bytes,
        complex,
        type(None),
        type(Ellipsis),
        uuid.UUID,
        datetime,
        date,
        time,
        timedelta,
        Decimal,
        Fraction,
        range,
        type,
        types.FunctionType,
        types.BuiltinFunctionType,
    }
)

_Memo = dict[int, Any]
_Copier = Callable[[Any, _Memo], Any]
_COPIERS: dict[type, _Copier] = {}


def _copy(value: Any, memo: _Memo) -> Any:
    cls = value.__class__
    if cls in _IMMUTABLE:
        return value
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _copier_for(cls)
    return copier(value, memo)


def _share(value: Any, memo: _Memo) -> Any:
    return value


def _copy_list(value: list[Any], memo: _Memo) -> list[Any]:
    hit = memo.get(id(value))
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    out: list[Any] = []
    memo[id(value)] = out  # registered first: keeps shared references shared, cycles finite
    immutable = _IMMUTABLE
    for item in value:
        out.append(item if item.__class__ in immutable else _copy(item, memo))
    return out


def _copy_dict(value: dict[Any, Any], memo: _Memo) -> dict[Any, Any]:
    hit = memo.get(id(value))
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    out: dict[Any, Any] = {}
    memo[id(value)] = out
    immutable = _IMMUTABLE
    for key, item in value.items():
        if key.__class__ not in immutable:
            key = _copy(key, memo)
        out[key] = item if item.__class__ in immutable else _copy(item, memo)
    return out


def _copy_set(value: set[Any], memo: _Memo) -> set[Any]:
    hit = memo.get(id(value))
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    out: set[Any] = set()
    memo[id(value)] = out
    for item in value:
        out.add(_copy(item, memo))
    return out


def _copy_tuple(value: tuple[Any, ...], memo: _Memo) -> tuple[Any, ...]:
    # Like deepcopy: a tuple of immutables is itself immutable and is shared.
    items = [_copy(item, memo) for item in value]
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value
    hit = memo.get(id(value))  # a cycle through this tuple was resolved meanwhile
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    out = tuple(items)
    memo[id(value)] = out
    return out


def _copy_frozenset(value: frozenset[Any], memo: _Memo) -> frozenset[Any]:
    items = [_copy(item, memo) for item in value]
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value
    return frozenset(items)


def _copy_plain_object(value: Any, memo: _Memo) -> Any:
    """Copy an instance whose whole state is its ``__dict__`` (what deepcopy would do)."""
    hit = memo.get(id(value))
    if hit is not None:
        return hit
    cls = value.__class__
    out = cls.__new__(cls)
    memo[id(value)] = out
    out.__dict__.update(_copy_dict(value.__dict__, memo))
    return out


def _deepcopy_fallback(value: Any, memo: _Memo) -> Any:
    # copy.deepcopy understands our memo: both map id(original) -> copy.
    return copy.deepcopy(value, memo)


def _has_plain_state(cls: Any) -> bool:
    """True when an instance's state is exactly its ``__dict__`` and copying it
    field by field is what ``copy.deepcopy`` would do (no custom copy hooks,
    no slots, no builtin base such as ``list``)."""
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        return False
    if cls.__getstate__ is not object.__getstate__:
        return False
    for hook in ("__deepcopy__", "__setstate__", "__getnewargs__", "__getnewargs_ex__"):
        if hasattr(cls, hook):
            return False
    if cls.__new__ is not object.__new__:
        return False
    for klass in cls.__mro__[:-1]:
        if klass.__module__ == "builtins":
            return False
        slots = klass.__dict__.get("__slots__")
        if slots is not None and slots not in ((), []):
            return False
    return cls.__mro__[-1] is object and "__dict__" in dir(cls)


def _copier_for(cls: type) -> _Copier:
    copier: _Copier
    if cls is list:
        copier = _copy_list
    elif cls is dict:
        copier = _copy_dict
    elif cls is set:
        copier = _copy_set
    elif cls is tuple:
        copier = _copy_tuple
    elif cls is frozenset:
        copier = _copy_frozenset
    elif issubclass(cls, Enum):
        copier = _share  # members are singletons; deepcopy shares them too
    elif _has_plain_state(cls):
        copier = _copy_plain_object
    else:
        copier = _deepcopy_fallback
    _COPIERS[cls] = copier
    return copier


def _slot_names(cls: type) -> tuple[str, ...]:
    cached = _SLOT_NAMES.get(cls)
    if cached is not None:
        return cached
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
    cached = _SLOT_NAMES[cls] = tuple(names)
    return cached


_SLOT_NAMES: dict[type, tuple[str, ...]] = {}


class Snapshot(tuple[Any, ...]):
    """The deep state of one context at one moment; restores it in place.

    The context object itself keeps its identity (S2): its ``__dict__`` and
    slots are rewritten, so every holder of a reference sees the restored
    state. A reference from inside the context back to the context itself is
    kept pointing at the live object.

    (A tuple underneath — ``owner, state, slot_names, slots, flat`` — because
    one is taken before every step and a tuple is the cheapest object to make.)
    """

    __slots__ = ()

    def restore(self, context: object, *, reuse: bool = True) -> None:
        """Write the snapshot back into ``context``.

        With ``reuse=True`` (default) the snapshot is copied again so it can be
        restored later once more; ``reuse=False`` hands over its own objects
        (cheaper; the snapshot must not be used afterwards).
        """
        if context is not self[0]:
            raise ValueError("a snapshot can only be restored into the context it was taken from")
        self._install(context, reuse)

    def to_dict(self) -> dict[str, Any]:
        """The journal form of the state this snapshot holds (see ``context_to_dict``)."""
        owner_type: Any = type(self[0])
        shell = owner_type.__new__(owner_type)
        self._install(shell, reuse=True)
        return context_to_dict(shell)

    def _install(self, target: object, reuse: bool) -> None:
        owner, state, slot_names, slots, flat = self
        if reuse:
            if flat:
                state = state.copy()
            else:
                memo: _Memo = {id(owner): target}
                if state is not None:
                    state = _copy_dict(state, memo)
                if slots:
                    slots = _copy_dict(slots, memo)
        if state is not None:
            live = target.__dict__
            live.clear()
            live.update(state)
        for name in slot_names:
            if name in slots:
                object.__setattr__(target, name, slots[name])
            elif hasattr(target, name):
                object.__delattr__(target, name)


_UNSET = object()
_make_snapshot = tuple.__new__
# Per context class: True when its whole state is its __dict__ (no slots).
_DICT_ONLY: dict[type, bool] = {}


def take_snapshot(context: object) -> Snapshot:
    """Deep-copy ``context``'s state (S1): nested lists, dicts and objects included."""
    cls = context.__class__
    dict_only = _DICT_ONLY.get(cls)
    if dict_only is None:
        dict_only = _DICT_ONLY[cls] = hasattr(context, "__dict__") and not _slot_names(cls)
    if dict_only:
        state = context.__dict__
        if _IMMUTABLE.issuperset(map(type, state.values())):
            # The common flat context (ids, amounts, flags): a C-speed check and copy.
            return _make_snapshot(Snapshot, (context, state.copy(), (), None, True))
        memo: _Memo = {id(context): context}
        return _make_snapshot(Snapshot, (context, _copy_dict(state, memo), (), None, False))
    memo = {id(context): context}
    own_dict = getattr(context, "__dict__", None)
    state_copy = None if own_dict is None else _copy_dict(own_dict, memo)
    slot_names = _slot_names(cls)
    slots: dict[str, Any] = {}
    for name in slot_names:
        value = getattr(context, name, _UNSET)
        if value is not _UNSET:  # an unset slot stays unset on restore
            slots[name] = _copy(value, memo)
    return _make_snapshot(Snapshot, (context, state_copy, slot_names, slots, False))


# --------------------------------------------------------------------------- journal form

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]


def check_serializable(context: object) -> None:
    """Raise ``ContextSerializationError`` (naming the field) unless ``context``
    can be journaled as JSON. A flat context of JSON scalars is checked at C
    speed; anything else is encoded once."""
    state = getattr(context, "__dict__", None)
    if (
        state is not None
        and context.__class__ in _FIELD_NAMES
        and _JSON_SCALARS.issuperset(map(type, state.values()))
    ):
        return
    context_to_dict(context)


def context_to_dict(context: object) -> dict[str, Any]:
    """A JSON-safe dict of a dataclass context (field names as keys).

    Supported values: str, int, float (finite), bool, None, lists, tuples,
    sets, dicts, nested dataclasses, ``uuid.UUID``, ``datetime``/``date``/
    ``time`` (ISO 8601, time zone kept), ``Decimal`` (as a string, exact),
    ``Enum`` (its value), nested at most ``MAX_CONTEXT_DEPTH`` levels deep.
    Anything else — a value of another type, a cyclic context, one nested
    deeper — raises ``ContextSerializationError`` naming the field.
    """
    cls = type(context)
    names = _FIELD_NAMES.get(cls)
    try:
        if names is None:
            if dataclasses.is_dataclass(context):
                names = tuple(field.name for field in dataclasses.fields(context))
                _FIELD_NAMES[cls] = names
            elif hasattr(context, "__dict__"):
                return {key: _encode(value, key) for key, value in vars(context).items()}
            else:
                raise ContextSerializationError(
                    "<context>", context, "a context must be a dataclass"
                )
        scalars = _JSON_SCALARS
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(context, name)
            out[name] = value if value.__class__ in scalars else _encode(value, name)
        return out
    except _TooDeep as too_deep:
        raise _nesting_error(context, too_deep) from None


# Exact types that are already JSON (float is not: NaN and infinity are refused).
_JSON_SCALARS: frozenset[type] = frozenset({str, int, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    cached = _FIELDS.get(cls)
    if cached is None:
        cached = _FIELDS[cls] = dataclasses.fields(cls)
    return cached


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


#: How deeply values may nest inside a context: each list, tuple, set, dict or
#: dataclass is one level (a context holding a list of dicts is 2 levels
#: deep). Far beyond any business record, and shallow enough that snapshot,
#: journal and resume stay well inside Python's recursion limit. A cyclic
#: context (a value that contains itself) is refused as such.
MAX_CONTEXT_DEPTH = 100


class _TooDeep(Exception):
    """Internal: ``_encode`` went past ``MAX_CONTEXT_DEPTH``, at ``path``."""

    def __init__(self, path: str, value: object) -> None:
        super().__init__(path)
        self.path = path
        self.value = value


def _encode(value: Any, path: str, depth: int = 1) -> Any:
    # ``depth``: the level ``value`` is at (1 for a field of the context).
    # Checked once per container, never per scalar: flat contexts pay nothing.
    cls = value.__class__
    if cls in _JSON_SCALARS:
        return value
    if cls is float:
        if not math.isfinite(value):
            raise ContextSerializationError(path, value, "NaN and infinity are not JSON")
        return value
    if cls is list or cls is tuple:
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)  # a cycle, or a very deep value: told apart above
        scalars = _JSON_SCALARS
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
    if dataclasses.is_dataclass(value):
        if depth > MAX_CONTEXT_DEPTH:
            raise _TooDeep(path, value)
        depth += 1
        return {
            field.name: _encode(getattr(value, field.name), f"{path}.{field.name}", depth)
            for field in _fields(cls)
        }
    raise ContextSerializationError(path, value)


# How much of a field path an error shows ("node.child.child…").
_MAX_PATH_SHOWN = 120


def _shown_path(path: str) -> str:
    return path if len(path) <= _MAX_PATH_SHOWN else path[: _MAX_PATH_SHOWN - 1] + "…"


def _nesting_error(context: object, too_deep: _TooDeep) -> ContextSerializationError:
    """The error for a context ``_encode`` could not finish: cyclic (naming
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
    """The values ``_encode`` would descend into, with their paths (``None``
    for a value it would not descend into)."""
    cls = value.__class__
    if cls in _JSON_SCALARS or cls is float:
        return None
    if cls is list or cls is tuple:
        return [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if cls is dict:
        return [(item, f"{path}[{key!r}]") for key, item in value.items()]
    if isinstance(value, Enum):
        return [(value.value, path)]
    if cls is set or cls is frozenset:
        return [(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(getattr(value, f.name), f"{path}.{f.name}") for f in _fields(cls)]
    return None


def _find_cycle(context: object) -> tuple[str, Any, str] | None:
    """The first value (depth first, as ``_encode`` goes) that is one of its
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


def context_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a dataclass context from ``context_to_dict``'s output, by its type hints."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass; context_from_dict needs one")
    return _decode_dataclass(cls, data, "")  # type: ignore[no-any-return]


_Decoder = Callable[[Any, str], Any]
_DECODERS: dict[Any, _Decoder] = {}


def _decode_dataclass(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ContextDecodeError(path or "<context>", f"expected an object, got {_kind(data)}")
    hints = _hints(cls)
    init_args: dict[str, Any] = {}
    late: dict[str, Any] = {}
    known = set()
    for field in _fields(cls):
        known.add(field.name)
        where = f"{path}.{field.name}" if path else field.name
        if field.name not in data:
            has_default = (
                field.default is not dataclasses.MISSING
                or field.default_factory is not dataclasses.MISSING
            )
            if field.init and not has_default:
                raise ContextDecodeError(where, "the field is missing")
            continue
        value = _decoder(hints.get(field.name, Any))(data[field.name], where)
        (init_args if field.init else late)[field.name] = value
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ContextDecodeError(
            path or "<context>",
            f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}",
        )
    try:
        instance = cls(**init_args)
    except Exception as exc:  # a __post_init__ that rejects the stored values
        where = path or "<context>"
        raise ContextDecodeError(where, f"{cls.__name__}(...) raised {exc!r}") from exc
    for name, value in late.items():
        object.__setattr__(instance, name, value)
    return instance


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    cached = _HINTS.get(cls)
    if cached is None:
        try:
            cached = get_type_hints(cls)
        except Exception:  # unresolvable forward reference: decode that field untyped
            cached = dict(getattr(cls, "__annotations__", {}))
            cached = {k: v for k, v in cached.items() if not isinstance(v, str)}
        _HINTS[cls] = cached
    return cached


def _kind(value: Any) -> str:
    return type(value).__name__


def _decoder(tp: Any) -> _Decoder:
    try:
        cached = _DECODERS.get(tp)
    except TypeError:  # unhashable annotation
        return _build_decoder(tp)
    if cached is None:
        cached = _DECODERS[tp] = _build_decoder(tp)
    return cached


def _expect(kind: type | tuple[type, ...], name: str) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        if type(value) is bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ContextDecodeError(path, f"expected {name}, got bool")
        if not isinstance(value, kind):
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
            except (ValueError, ArithmeticError) as exc:
                raise ContextDecodeError(path, f"invalid {name}: {value!r}") from exc
        raise ContextDecodeError(path, f"expected {name} text, got {_kind(value)}")

    return decode


def _decode_any(value: Any, path: str) -> Any:
    return value


def _decode_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContextDecodeError(path, f"expected float, got {_kind(value)}")
    return float(value)


def _build_decoder(tp: Any) -> _Decoder:
    if tp is Any or tp is object or isinstance(tp, TypeVar):
        return _decode_any
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _decoder(supertype)
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
        return _via(datetime.fromisoformat, "datetime")
    if tp is date:
        return _via(date.fromisoformat, "date")
    if tp is time:
        return _via(time.fromisoformat, "time")
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum_decoder(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return lambda value, path: _decode_dataclass(tp, value, path)

    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return _decoder(args[0])
    if origin is Union or origin is types.UnionType:
        return _union_decoder(args)
    if origin is Literal:
        return _literal_decoder(args)
    if origin in (list, MutableSequence, Sequence) or tp in (list, Sequence):
        return _sequence_decoder(list, args[0] if args else Any)
    if origin in (set, frozenset) or tp in (set, frozenset):
        return _sequence_decoder(origin or tp, args[0] if args else Any)
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _sequence_decoder(tuple, args[0] if args else Any)
        return _fixed_tuple_decoder(args)
    if origin in (dict, Mapping, MutableMapping) or tp in (dict, Mapping):
        key_tp, value_tp = args if args else (Any, Any)
        return _mapping_decoder(key_tp, value_tp)
    # An annotation we cannot interpret (a custom class): refuse rather than guess.
    name = getattr(tp, "__name__", repr(tp))

    def refuse(value: Any, path: str) -> Any:
        raise ContextDecodeError(path, f"no JSON decoding is known for type {name}")

    return refuse


def _enum_decoder(enum_cls: type[Enum]) -> _Decoder:
    def decode(value: Any, path: str) -> Any:
        try:
            return enum_cls(value)
        except ValueError as exc:
            raise ContextDecodeError(path, f"{value!r} is not a {enum_cls.__name__}") from exc

    return decode


def _union_decoder(args: tuple[Any, ...]) -> _Decoder:
    allows_none = type(None) in args
    options = [_decoder(arg) for arg in args if arg is not type(None)]

    def decode(value: Any, path: str) -> Any:
        if value is None and allows_none:
            return None
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
        raise ContextDecodeError(path, f"{value!r} is not one of {args!r}")

    return decode


def _sequence_decoder(container: Callable[[Any], Any], item_tp: Any) -> _Decoder:
    item = _decoder(item_tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple):
            raise ContextDecodeError(path, f"expected an array, got {_kind(value)}")
        return container(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))

    return decode


def _fixed_tuple_decoder(args: tuple[Any, ...]) -> _Decoder:
    items = [_decoder(arg) for arg in args]

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ContextDecodeError(path, f"expected an array of {len(items)} items")
        return tuple(
            item(entry, f"{path}[{index}]")
            for index, (item, entry) in enumerate(zip(items, value, strict=True))
        )

    return decode


def _key_decoder(key_tp: Any) -> _Decoder:
    # JSON object keys are text: convert back to the declared key type.
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
    return _decoder(key_tp)


def _mapping_decoder(key_tp: Any, value_tp: Any) -> _Decoder:
    decode_key, decode_value = _key_decoder(key_tp), _decoder(value_tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise ContextDecodeError(path, f"expected an object, got {_kind(value)}")
        return {
            decode_key(key, f"{path}[{key!r}]"): decode_value(item, f"{path}[{key!r}]")
            for key, item in value.items()
        }

    return decode


# --------------------------------------------------------------------------- base class


class SagaContext:
    """Base class for saga contexts; subclass it with ``@dataclasses.dataclass``.

    Steps mutate the context; the executor snapshots it before each step and
    restores it in place when the step fails. ``to_dict``/``from_dict`` give
    the JSON form that stores journal.
    """

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form of this context (see ``context_to_dict``)."""
        return context_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild a context from ``to_dict``'s output."""
        return context_from_dict(cls, data)
