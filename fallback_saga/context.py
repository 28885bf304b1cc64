"""Saga contexts: deep snapshot/restore in place, and the journal form.

Two different copies of a context exist, for two different jobs:

* a **snapshot** (``take_snapshot``/``Snapshot.restore``) undoes what a failed
  step did to the context. It must give back the *exact* values — types,
  shared references and cycles included — so it never goes through JSON. It
  is taken before every step, so it is on the hot path: values are copied by a
  dispatch on their runtime type (immutable values are shared, lists, dicts and
  plain objects are copied field by field), and only values of unknown shape
  fall back to ``copy.deepcopy``. Annotations are never trusted for this: a
  field annotated ``str`` that holds a list is still copied. Every context
  kind is restored into the same object: its ``__dict__`` is rewritten and
  its slots (a pydantic model's bookkeeping, a msgspec Struct's fields) are
  set one by one through their descriptors.
* the **journal form** (``context_to_dict``/``context_from_dict``) is what a
  store writes: JSON types only, read back exactly — same values, same types
  (S14). How depends on the context's kind (``models.py``: a dataclass, a
  ``SagaContext`` subclass, a class with ``to_dict``/``from_dict``, a pydantic
  model, a msgspec Struct) and, for dataclasses and ``SagaContext``s, on
  each field's annotation (``codec.py``: plain JSON where the hint says what
  the value is, tagged JSON where it does not). A value that cannot be
  carried exactly is refused with the field's path, and so is a context that
  JSON cannot carry as a whole: a cyclic one (a value that contains itself),
  or one nested deeper than ``MAX_CONTEXT_DEPTH`` levels (each list, tuple,
  set, dict or dataclass inside the context is one level). The executor
  journals the context before the first step runs, so such a context is
  refused then (S12).
"""

from __future__ import annotations

import copy
import threading
import types
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from fractions import Fraction
from typing import Any, TypeVar

from .class_caches import class_cache, class_set, has_room, make_room, remember
from .codec import (
    FIELD_NAMES,
    MAX_CONTEXT_DEPTH,
    decode_context,
    decode_structure,
    encode_context,
    encode_structure,
)
from .models import default_codec, first_difference

__all__ = [
    "MAX_CONTEXT_DEPTH",
    "SagaContext",
    "Snapshot",
    "changed_fields",
    "check_serializable",
    "context_from_dict",
    "context_to_dict",
    "flat_changes",
    "flat_state",
    "member_snapshot",
    "restore_step",
    "step_snapshot",
    "take_snapshot",
    "working_copy",
    "write_fields",
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
_COPIERS: dict[type, _Copier] = class_cache("context._COPIERS")


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
    return remember(_COPIERS, cls, copier)


def _slot_names(cls: type) -> tuple[str, ...]:
    cached = _SLOT_NAMES.get(cls)
    if cached is not None:
        return cached
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(
            _mangled(klass, s) for s in slots if s not in ("__dict__", "__weakref__")
        )
    return remember(_SLOT_NAMES, cls, tuple(names))


def _mangled(klass: type, name: str) -> str:
    """A slot's attribute name: ``__x`` in class ``K``'s ``__slots__`` is ``_K__x``."""
    if name.startswith("__") and not name.endswith("__"):
        return f"_{klass.__name__.lstrip('_')}{name}"
    return name


def _slot_setters(cls: type) -> tuple[tuple[str, Any], ...]:
    """Each slot's descriptor: restoring through it writes the slot itself,
    bypassing a ``__setattr__`` that validates (pydantic) or refuses (a frozen
    msgspec Struct, whose type also refuses ``object.__setattr__``)."""
    cached = _SLOT_SETTERS.get(cls)
    if cached is None:
        found = []
        for name in _slot_names(cls):
            slot = next(
                (k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None
            )
            if not (hasattr(slot, "__set__") and hasattr(slot, "__delete__")):
                slot = _PlainSlot(name)
            found.append((name, slot))
        cached = remember(_SLOT_SETTERS, cls, tuple(found))
    return cached


class _PlainSlot:
    """A slot without a descriptor of its own: written like any attribute."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __set__(self, target: object, value: Any) -> None:
        object.__setattr__(target, self.name, value)

    def __delete__(self, target: object) -> None:
        object.__delattr__(target, self.name)


_SLOT_SETTERS: dict[type, tuple[tuple[str, Any], ...]] = class_cache("context._SLOT_SETTERS")


_SLOT_NAMES: dict[type, tuple[str, ...]] = class_cache("context._SLOT_NAMES")


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
        shell = _shell(self[0])
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
        if slot_names:
            for name, slot in _slot_setters(target.__class__):
                if name in slots:
                    slot.__set__(target, slots[name])
                elif hasattr(target, name):
                    slot.__delete__(target)


def working_copy(snapshot: Snapshot) -> Any:
    """A new context object holding a deep copy of ``snapshot``'s state: what
    a member of a ``Parallel`` group works on, apart from its siblings."""
    owner, state, _, _, flat = snapshot
    shell = _shell(owner)
    if flat:
        # A flat context (a __dict__ of immutable values): the values are shared.
        live = shell.__dict__
        if live:
            live.clear()  # a shallow copy of the owner (a class refusing a bare instance)
        live.update(state)
    else:
        snapshot._install(shell, reuse=True)
    return shell


def flat_state(snapshot: Snapshot) -> dict[str, Any] | None:
    """The state ``snapshot`` holds when it is flat (a ``__dict__`` of
    immutable values: a copy of it is a dict copy into a bare instance,
    ``object.__new__`` of the context's class) — else None."""
    if snapshot[4] and snapshot[0].__class__.__new__ is object.__new__:
        return snapshot[1]  # type: ignore[no-any-return]
    return None


def flat_changes(state: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``changed_fields`` for a copy of a flat state: the entries of ``own`` (the
    copy's ``__dict__``) that are no longer exactly ``state``'s."""
    changed: dict[str, Any] = {}
    before = state.get
    for name, value in own.items():
        earlier = before(name, _UNSET)
        if earlier is value:
            continue  # the copy shares only what cannot change (an int, a str)
        if (
            earlier is _UNSET
            or earlier.__class__ is not value.__class__  # (what first_difference says first)
            or first_difference(earlier, value) is not None
        ):
            changed[name] = value
    return changed


def member_snapshot(base: Snapshot, copy: object) -> StepSnapshot:
    """The step snapshot of ``copy``, a ``working_copy`` of ``base`` not yet
    changed: what its ``restore_step`` needs. For a flat context that is
    ``base``'s own state (``restore_step`` only reads it), nothing to copy;
    else ``base`` itself, restored into the copy as ``working_copy`` made it
    (a deep copy again, only when a try fails — not one per member up front)."""
    if base[4]:
        return base[1]  # type: ignore[no-any-return]
    return _make_snapshot(_MemberSnapshot, base)


class _MemberSnapshot(Snapshot):
    """A group's Snapshot (of the saga's context) as the step snapshot of a
    member's working copy: restoring installs a fresh deep copy of it into
    the copy, references to the saga's context becoming references to the
    copy — what ``working_copy`` did. The group's Snapshot is never handed
    over (always copied), so it serves every member and every retry."""

    __slots__ = ()

    def restore(self, context: object, *, reuse: bool = True) -> None:
        self._install(context, True)


def changed_fields(base: Snapshot, copy: object) -> dict[str, Any]:
    """The fields (attributes and slots) of ``copy`` — a ``working_copy`` of
    ``base`` — whose value is no longer exactly ``base``'s (types included):
    what a group member wrote. Dunder slots (a model's bookkeeping) are left out."""
    _, state, slot_names, slots, _ = base
    own = getattr(copy, "__dict__", None)
    changed = {} if own is None else flat_changes(state or {}, own)
    for name in slot_names:
        if name.startswith("__"):
            continue
        value = getattr(copy, name, _UNSET)
        earlier = slots.get(name, _UNSET) if slots else _UNSET
        if value is _UNSET:
            continue
        if earlier is _UNSET or first_difference(earlier, value) is not None:
            changed[name] = value
    return changed


def write_fields(context: object, fields: dict[str, Any]) -> None:
    """Set ``fields`` on ``context`` in place, as a snapshot restores (no
    ``__setattr__``: a frozen dataclass or model is written all the same)."""
    live = getattr(context, "__dict__", None)
    if not _slot_names(context.__class__):
        if live is not None:
            live.update(fields)  # its whole state is its __dict__
        return
    setters = dict(_slot_setters(context.__class__))
    for name, value in fields.items():
        setter = setters.get(name)
        if setter is not None:
            setter.__set__(context, value)
        elif live is not None:
            live[name] = value


def _shell(owner: object) -> object:
    """An object of ``owner``'s class for a snapshot to be installed into:
    made bare, or — for a class that refuses that (a msgspec Struct) — a
    shallow copy of ``owner`` whose whole state the snapshot then replaces."""
    cls: Any = type(owner)
    if cls not in _NO_BARE_NEW:
        try:
            return cls.__new__(cls)  # type: ignore[no-any-return,unused-ignore]
        except TypeError:
            make_room(_NO_BARE_NEW)
            _NO_BARE_NEW.add(cls)
    return copy.copy(owner)


_NO_BARE_NEW: set[type] = class_set("context._NO_BARE_NEW")
_UNSET = object()
_make_snapshot = tuple.__new__
# Per context class: True when its whole state is its __dict__ (no slots).
_DICT_ONLY: dict[type, bool] = class_cache("context._DICT_ONLY")


def take_snapshot(context: object) -> Snapshot:
    """Deep-copy ``context``'s state (S1): nested lists, dicts and objects included."""
    cls = context.__class__
    dict_only = _DICT_ONLY.get(cls)
    if dict_only is None:
        dict_only = remember(
            _DICT_ONLY, cls, hasattr(context, "__dict__") and not _slot_names(cls)
        )
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


# A step snapshot (``step_snapshot``): what the executor takes before every
# step. For the common flat context — a plain object whose state is its
# __dict__ of immutable values — it is a copy of that dict, nothing more (a
# Snapshot around it costs as much again); any other context gets a Snapshot.
StepSnapshot = Snapshot | dict[str, Any]


def step_snapshot(context: object) -> StepSnapshot:
    """``take_snapshot``, as the cheapest thing that can restore ``context``
    (``restore_step``): a flat context's ``__dict__`` copied, else a Snapshot."""
    if _DICT_ONLY.get(context.__class__):
        state = context.__dict__
        if _IMMUTABLE.issuperset(map(type, state.values())):
            return state.copy()
    return take_snapshot(context)


def restore_step(context: object, snapshot: StepSnapshot) -> None:
    """Write ``step_snapshot``'s state back into ``context`` (again and again if need be)."""
    if snapshot.__class__ is dict:
        live = context.__dict__
        live.clear()
        live.update(snapshot)
    else:
        snapshot.restore(context)  # type: ignore[union-attr]


def step_snapshot_to_dict(context: object, snapshot: StepSnapshot | Any) -> dict[str, Any]:
    """The journal form of a ``step_snapshot`` of ``context`` (or of what
    ``freeze_context`` returned)."""
    if snapshot.__class__ is dict:
        shell = _shell(context)
        shell.__dict__.update(snapshot)
        return context_to_dict(shell)
    return frozen_to_dict(snapshot)


# --------------------------------------------------------------------------- frozen state
#
# A finished saga kept by MemorySagaStore holds its last context as plain
# immutable values (no reference to the context's class, which the collector
# tracks): a tuple of such values is untracked by the collector after its
# first pass, so 10,000 retained sagas cost a full collection nothing.

# A registry, not a cache (nothing in it is forgotten, class_caches.py): a
# record holds a class's index instead of the class, and must find it again
# for as long as the record is kept. So it takes at most CLASS_CACHE_BOUND
# classes, the first met, and never lets one go; a context of a class beyond
# those is kept as a snapshot (which holds its class only as long as the
# record: a program that makes a class per saga keeps no more than that).
_FROZEN_TYPES: list[type] = []
_FROZEN_INDEX: dict[type, int] = {}
_REGISTERING = threading.Lock()
# Exact types a frozen state may hold: never tracked by the garbage collector.
_ATOMIC: frozenset[type] = frozenset({str, int, float, bool, bytes, complex, type(None)})


def type_index(cls: type) -> int:
    """A small int standing for ``cls`` (see ``type_at``): what a frozen
    record holds; -1 when ``cls`` is not registered and the registry is full."""
    index = _FROZEN_INDEX.get(cls)
    if index is None:
        # A new class, once per class: under the lock, so that two threads
        # registering two classes at once (a sync app's requests, each in an
        # asyncio.run of its own) never get one index for both.
        with _REGISTERING:
            index = _FROZEN_INDEX.get(cls)
            if index is None:
                if not has_room(_FROZEN_TYPES):
                    return -1
                _FROZEN_TYPES.append(cls)
                index = _FROZEN_INDEX[cls] = len(_FROZEN_TYPES) - 1
    return index


def type_at(index: int) -> type:
    return _FROZEN_TYPES[index]


def freeze_context(context: object) -> Any:
    """``context``'s state as one flat tuple, ``(class index, n, n names,
    n values)``, when it is a flat one of atomic values whose class can be
    made bare (``frozen_to_dict`` reads it); else a snapshot of it
    (``take_snapshot``). Flat, so that a store keeping it in a flat record
    unpacks it as it is (``store._memory_records``)."""
    cls: Any = context.__class__
    index = _FREEZABLE.get(cls)
    if index is None:
        index = _freezable_index(cls)
    if index >= 0:
        state = context.__dict__
        if _ATOMIC.issuperset(map(type, state.values())):
            return (index, len(state), *state, *state.values())
    try:
        return take_snapshot(context)
    except Exception:
        # A value no copy can copy (a lock, a socket: keep those on the step).
        # The run's outcome is decided and the store holds its status: the
        # freeze must not turn it into this error (S7, S13). The context is
        # kept as it is; its JSON form, asked for at load, refuses it there.
        return Unfrozen(context)


# A context class's type index when its state can be frozen (a flat class
# that can be made bare), else -1: one lookup per finished saga.
# (Derived from _FROZEN_INDEX, which gives a class the same index again.)
_FREEZABLE: dict[type, int] = class_cache("context._FREEZABLE")


def _freezable_index(cls: Any) -> int:
    dict_only = _DICT_ONLY.get(cls)
    if dict_only is None:
        return -1  # not seen yet: take_snapshot learns it (for the next time)
    return remember(
        _FREEZABLE, cls, type_index(cls) if dict_only and cls.__new__ is object.__new__ else -1
    )


class Unfrozen:
    """What ``freeze_context`` keeps of a context no copy can copy: the
    context itself, whose journal form ``frozen_to_dict`` reads from it."""

    __slots__ = ("context",)

    def __init__(self, context: object) -> None:
        self.context = context


def frozen_to_dict(frozen: Any) -> dict[str, Any]:
    """The journal form of what ``freeze_context`` returned."""
    if isinstance(frozen, Snapshot):
        return frozen.to_dict()
    if isinstance(frozen, Unfrozen):
        return context_to_dict(frozen.context)
    index, count = frozen[0], frozen[1]
    cls: Any = type_at(index)
    shell = cls.__new__(cls)
    shell.__dict__.update(zip(frozen[2:2 + count], frozen[2 + count:], strict=True))
    return context_to_dict(shell)



# --------------------------------------------------------------------------- journal form

# Exact types that are JSON in every position, typed or not.
_JSON_SCALARS: frozenset[type] = frozenset({str, int, bool, type(None)})


def check_serializable(context: object) -> None:
    """Raise ``ContextSerializationError`` (naming the field) unless ``context``
    can be journaled and resumed exactly. A flat dataclass context of JSON
    scalars is checked at C speed; anything else is encoded once."""
    state = getattr(context, "__dict__", None)
    if (
        state is not None
        # A __dict__ of its fields only (not an extra attribute, no field in a
        # slot), by name: a count would take a field deleted and another
        # attribute set for them (S14).
        and state.keys() == FIELD_NAMES.get(context.__class__)
        and _JSON_SCALARS.issuperset(map(type, state.values()))
    ):
        return
    context_to_dict(context)


def context_to_dict(context: object) -> dict[str, Any]:
    """The journal form of ``context``: JSON types only, that
    ``context_from_dict(type(context), ...)`` turns back into an equal
    context with the same types.

    A dataclass (or a plain ``SagaContext`` subclass) is written field by
    field: where the annotation says what a value is, as plain JSON — str,
    int, float (finite), bool, None, lists, tuples, sets, dicts, nested
    dataclasses, ``uuid.UUID``, ``datetime``/``date``/``time`` (ISO 8601,
    time zone kept), ``Decimal`` (as a string, exact), ``Enum`` (its value);
    where it does not (``Any``, ``object``, bare ``dict``/``list``...), in the
    tagged form that keeps the type (see ``codec.py``). A class with its own
    ``to_dict``/``from_dict``, a pydantic model or a msgspec Struct is
    written by its own method, checked to read back exactly. Anything else —
    an unsupported value, a cyclic context, one nested deeper than
    ``MAX_CONTEXT_DEPTH`` — raises ``ContextSerializationError`` naming the field.
    """
    return encode_context(context)


def context_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a context of class ``cls`` from ``context_to_dict``'s output
    (``ContextDecodeError``, naming the field, if it does not fit)."""
    return decode_context(cls, data)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- base class


class SagaContext:
    """Base class for saga contexts: subclass it with ``@dataclasses.dataclass``,
    or as a plain class (its attributes are its state, decoded by its annotations).

    Steps mutate the context; the executor snapshots it before each step and
    restores it in place when the step fails. ``to_dict``/``from_dict`` give
    the JSON form that stores journal; override both to journal the context
    your own way (an override may call ``super().to_dict()`` and
    ``super().from_dict(data)`` for the fields it does not handle).
    """

    @default_codec
    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form of this context, field by field (see ``context_to_dict``)."""
        return encode_structure(self)

    @classmethod
    @default_codec
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild a context from ``to_dict``'s output."""
        return decode_structure(cls, data)  # type: ignore[no-any-return]
