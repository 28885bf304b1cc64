"""Whether a value held is the same as one derived again, beyond ``==``:
what a resumed run would have in its place.

A dataclass whose ``__post_init__`` derives attributes beyond its fields is
journaled with its fields only; a resume derives the rest again. So at every
write the codec (``codec._refuse_hand_set``) reads the fields back into a
copy, as a resume would, and asks here whether each attribute held is what
the copy derived (S14). ``==`` is not enough: ``{"a": 1} == {"a": 1.0}``,
a dict equals one with its keys in another order, a dataclass compares its
fields with ``==``, two aware datetimes at one instant are equal in any
zone — and a NaN is unequal to itself, so ``==`` also calls the same value
different. ``differs`` answers for the codec, ``what_is_derived`` says how
in a refusal's words (by types alone: a context may hold secrets).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections import deque
from collections.abc import Sequence
from datetime import datetime, time, timezone
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from .class_caches import class_cache, remember
from .decoding import fields

__all__ = ["SCALARS", "differs", "what_is_derived", "with_article"]

#: The scalar classes whose values are the same when equal (``1 == 1.0``
#: across two of them is told by class): no need to look inside.
SCALARS: frozenset[type] = frozenset({str, int, bool, type(None), float})

#: The scalars whose values are the same when equal, with no exception: a
#: float's ``==`` leaves out its sign of zero (``0.0 == -0.0``).
_EXACT_WHEN_EQUAL: frozenset[type] = SCALARS - {float}

#: A missing attribute (the same on both sides when both lack it).
_ABSENT = object()


def differs(held: Any, again: Any) -> bool | None:
    """Whether ``held`` is not what was derived again (``again``): another
    value, another type — at the top or inside its containers and
    dataclasses — a dict's keys in another order, or, for a moment, another
    zone or fold (``_unlike``). None: it cannot be told — compared by
    identity (a lock, a client: two are never equal), or ``==`` fails."""
    if held is again:
        return False
    kind = held.__class__
    if kind is not again.__class__:
        return True
    if kind.__eq__ is object.__eq__:
        return None
    try:
        if held == again:
            # Equal is not the same: {"a": 1} == {"a": 1.0}, a dict equals
            # one with its keys in another order, a dataclass compares its
            # fields with ==, and two aware datetimes at one instant are
            # equal whatever their zones, and 0.0 == -0.0.
            return kind not in _EXACT_WHEN_EQUAL and _unlike(held, again, 0)
        # Unequal is not always another value: a NaN is unequal to itself,
        # and a container derived again holds another NaN object.
        return not _same_unequal(held, again, 0)
    except Exception:  # an == that gives no bool (an array's)
        return None


#: How deep ``_unlike`` looks into containers: the values derived are
#: compared at every write, and what is deeper than this is rare.
_UNLIKE_DEPTH = 20


def _unlike(held: Any, again: Any, depth: int) -> bool:
    """Whether two values ``==`` says are equal would still not be the same
    after a resume: a class differs somewhere inside their containers (a
    list, tuple, dict — its keys too —, set, frozenset, deque — its maxlen
    too) or dataclasses
    (``True`` where ``1`` is, a list where a tuple is), a ``Decimal`` has
    another exponent or sign (``1.0`` where ``1.00`` is), a float the other
    sign of zero (``-0.0`` where ``0.0`` is, a ``complex``'s parts too), a
    dict's keys are in
    another order (a resumed run iterates them in the order derived), or a
    ``datetime``/``time`` is in another zone or fold (equal as instants, or
    the fold ignored by ``==``). Run at every write of a class that derives
    attributes, on each one equal to what is derived again (all of them,
    mostly): the classes are compared a container at a time, in C
    (``set(map(type, ...))``), not an item at a time — a container of one
    scalar class (the usual) costs two passes (a dict: its keys' order, one
    more)."""
    kind = held.__class__
    if kind is not again.__class__:
        return True
    if kind is float:  # (== leaves out its sign of zero: 1 / -0.0 is -inf)
        return _zero_unlike(held, again)
    if kind is complex:  # (its parts' too)
        return _zero_unlike(held.real, again.real) or _zero_unlike(held.imag, again.imag)
    if kind in SCALARS or depth > _UNLIKE_DEPTH or held is again:
        return False
    if kind is Decimal:  # (== leaves out its exponent and sign: 1.0 == 1.00, 0 == -0)
        return bool(held.as_tuple() != again.as_tuple())
    depth += 1
    if isinstance(held, dict):
        # Equal dicts hold equal keys: their lists are equal when in one order.
        if list(held) != list(again) or _items_unlike(held, again, depth):
            return True
        values = held.values()
        kinds = set(map(type, values))
        if len(kinds) == 1 and kinds <= _EXACT_WHEN_EQUAL:
            return set(map(type, again.values())) != kinds
        return _items_unlike(list(values), list(again.values()), depth)
    if isinstance(held, (list, tuple)):
        return _items_unlike(held, again, depth)
    if isinstance(held, (set, frozenset)):
        return _members_unlike(held, again, depth)
    if isinstance(held, deque):  # (its == leaves out its maxlen)
        return held.maxlen != again.maxlen or _items_unlike(held, again, depth)
    if isinstance(held, PurePath):  # (a Windows path's == ignores case)
        return str(held) != str(again)
    if kind is range:  # (== compares the items: range(0) == range(2, 2))
        return (held.start, held.stop, held.step) != (again.start, again.stop, again.step)
    if isinstance(held, (datetime, time)):
        return _zone_unlike(held, again)
    names = _compared_fields(kind)
    if names is not None:  # (its == compared the fields with ==: equal is not the same)
        return not _fields_same(held, again, names, depth)
    return False


def _items_unlike(held: Any, again: Any, depth: int) -> bool:
    """``_unlike`` for two equal sequences (or the keys of two equal dicts
    in one order), item by item."""
    kinds = set(map(type, held))
    if len(kinds) == 1 and kinds <= SCALARS:  # (all of one scalar class)
        if set(map(type, again)) != kinds:
            return True
        # Floats: a zero's sign, looked at only when a zero is there (in C).
        return float in kinds and 0.0 in held and any(map(_zero_unlike, held, again))
    classes = list(map(type, held))
    if classes != list(map(type, again)):
        return True
    return any(
        kind not in _EXACT_WHEN_EQUAL and _unlike(item, other, depth)
        for kind, item, other in zip(classes, held, again, strict=True)
    )


def _zero_unlike(held: float, again: float) -> bool:
    """Two equal floats, one ``0.0`` and the other ``-0.0``."""
    return held == 0.0 and math.copysign(1.0, held) != math.copysign(1.0, again)


def _members_unlike(held: Any, again: Any, depth: int) -> bool:
    """``_unlike`` for the members of two equal sets: each paired with the
    equal one of the other (a hash look-up), unless both hold one scalar
    class alone."""
    kinds = set(map(type, held))
    if kinds != set(map(type, again)):
        return True
    if len(kinds) <= 1 and kinds <= _EXACT_WHEN_EQUAL:
        return False
    if kinds == {float} and 0.0 not in held:  # (no zero, no sign of it to tell)
        return False
    stored = {member: member for member in again}
    return any(_unlike(member, stored[member], depth) for member in held)


#: Per class met inside a value derived: the fields its ``==`` compares, for
#: a dataclass that is compared by its fields (not by identity, eq=False);
#: None for any other class.
_COMPARED_FIELDS: dict[type, tuple[str, ...] | None] = class_cache("sameness._COMPARED_FIELDS")


def _compared_fields(kind: type) -> tuple[str, ...] | None:
    try:
        return _COMPARED_FIELDS[kind]
    except KeyError:
        pass
    names = None
    if dataclasses.is_dataclass(kind) and kind.__eq__ is not object.__eq__:
        # (a field declared compare=False is not part of its value: a cache)
        names = tuple(field.name for field in fields(kind) if field.compare)
    return remember(_COMPARED_FIELDS, kind, names)


def _fields_same(held: Any, again: Any, names: tuple[str, ...], depth: int) -> bool:
    return all(
        _same(getattr(held, name, _ABSENT), getattr(again, name, _ABSENT), depth)
        for name in names
    )


def _same(held: Any, again: Any, depth: int) -> bool:
    """Whether a resumed run holding ``again`` (derived again) would hold
    what ``held`` is, for values inside a value derived: ``_unlike`` for
    equal ones, ``_same_unequal`` for the others."""
    if held is again:
        return True
    kind = held.__class__
    if kind is not again.__class__:
        return False
    if held == again:
        return kind in _EXACT_WHEN_EQUAL or not _unlike(held, again, depth)
    return _same_unequal(held, again, depth)


_FLOAT_BITS = struct.Struct("<d")


def _same_unequal(held: Any, again: Any, depth: int) -> bool:
    """Whether two values of one class that ``==`` says differ are still the
    same: a float NaN where a float NaN of the same sign (and payload) is
    derived — NaN is unequal to itself, and ``[nan] == [nan]`` holds only for
    one NaN object — at the top or inside containers and dataclasses, the
    rest the same (``_same``). Only what ``==`` found unequal pays this."""
    kind = held.__class__
    if kind is float:  # (math.copysign tells the sign of a NaN: inf * 0 is -nan)
        return held != held and _FLOAT_BITS.pack(held) == _FLOAT_BITS.pack(again)
    if depth > _UNLIKE_DEPTH:
        return False
    depth += 1
    if isinstance(held, dict):
        return (
            len(held) == len(again)
            and _all_same(list(held), list(again), depth)
            and _all_same(list(held.values()), list(again.values()), depth)
        )
    if isinstance(held, (list, tuple)):
        return len(held) == len(again) and _all_same(held, again, depth)
    if isinstance(held, deque):
        return held.maxlen == again.maxlen and len(held) == len(again) and _all_same(
            held, again, depth
        )
    if isinstance(held, (set, frozenset)):
        return _same_members(held, again, depth)
    names = _compared_fields(kind)
    if names is not None:
        return _fields_same(held, again, names, depth)
    if kind is Decimal:
        return bool(held.is_nan() and held.as_tuple() == again.as_tuple())
    return bool(held != held and again != again)  # (a NaN of another class)


def _all_same(held: Sequence[Any], again: Sequence[Any], depth: int) -> bool:
    return all(_same(item, other, depth) for item, other in zip(held, again, strict=True))


def _same_members(held: Any, again: Any, depth: int) -> bool:
    """``_same_unequal`` for two sets: their float NaNs (each its own
    object, hashed by identity) the same bits, the other members the same."""
    nans = [member for member in held if member.__class__ is float and member != member]
    other_nans = [member for member in again if member.__class__ is float and member != member]
    if not nans or len(nans) != len(other_nans):
        return False  # (no NaN: == found other members)
    rest, other_rest = held.difference(nans), again.difference(other_nans)
    return (
        rest == other_rest
        and not _members_unlike(rest, other_rest, depth)
        and sorted(map(_FLOAT_BITS.pack, nans)) == sorted(map(_FLOAT_BITS.pack, other_nans))
    )


def _zone_unlike(held: datetime | time, again: datetime | time) -> bool:
    """Two equal moments of one class in another zone or fold: a resumed run
    would get the zone derived (its offset, its name), not the one held."""
    if held.fold != again.fold:
        return True
    zone, other = held.tzinfo, again.tzinfo
    if zone is other:
        return False
    if zone is None or other is None or zone.__class__ is not other.__class__:
        return True
    if zone.__class__ is timezone:  # (its name as given: tzname() cannot tell, _tz)
        args = zone.__getinitargs__()  # type: ignore[attr-defined]
        return bool(args != other.__getinitargs__())  # type: ignore[attr-defined]
    key = getattr(zone, "key", None)  # (a ZoneInfo made with no_cache: another object)
    if (key is None or key != getattr(other, "key", None)) and zone != other:
        return True
    return held.utcoffset() != again.utcoffset() or held.tzname() != again.tzname()


def what_is_derived(held: Any, again: Any) -> str:
    """How what ``__post_init__`` derives differs from ``held``, by types alone."""
    name = type(again).__name__
    if type(again) is not type(held):
        return f"its __post_init__ derives {with_article(name)} from the fields"
    try:
        equal = bool(held == again)
    except Exception:
        equal = False
    if not equal:
        return f"its __post_init__ derives another {name} from the fields"
    if isinstance(held, (datetime, time)):
        return (
            f"its __post_init__ derives {with_article(name)} equal to it in another time zone "
            f"or fold from the fields"
        )
    if held.__class__ is float or held.__class__ is complex:
        return (
            f"its __post_init__ derives an equal {name} with the other sign of zero from the "
            f"fields (0.0 and -0.0 are equal, and a resumed run holds the one derived)"
        )
    if isinstance(held, Decimal):
        return (
            f"its __post_init__ derives an equal {name} with another exponent or sign "
            f"from the fields (1.00 and 1.0 are equal, and a resumed run shows the one derived)"
        )
    if isinstance(held, dict) and list(held) != list(again):
        # (the keys derived, in the order held: whether the types differ too)
        keys = {key: key for key in again}
        reordered = {keys[key]: again[key] for key in held}
        return (
            f"its __post_init__ derives an equal {name} with its keys in another order"
            f"{' and values of other types' if _unlike(held, reordered, 0) else ''} from the "
            f"fields (a resumed run iterates them in the order derived)"
        )
    return (
        f"its __post_init__ derives an equal {name} holding values of other types (or a "
        f"dict's keys in another order, a moment in another zone, a Decimal with another "
        f"exponent, a float with the other sign of zero) inside from the fields"
    )


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
