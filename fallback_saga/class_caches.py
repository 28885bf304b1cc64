"""Bounded caches keyed by a class (or by an annotation that names classes).

The hot path derives things from a context's class once — the snapshot's
copier, the journal form's plan, the decoder of an annotation — and keeps them
in plain module-level dicts: a ``dict.get(cls)`` is what keeps a step cheap (a
``weakref.WeakKeyDictionary`` lookup costs three times as much). A plain dict
keeps its keys alive, though: a program that makes a class for each saga
(``dataclasses.make_dataclass`` in a request handler) would keep every one.
So each such cache holds at most ``CLASS_CACHE_BOUND`` entries: an insertion
into a full cache first empties it (``remember``), and what was forgotten is
derived again, identically, the next time it is needed.

Why empty it rather than drop the oldest entry: ``dict.clear()`` is one
atomic call (a thread looking up or inserting at the same time sees the dict
before or after it, never an iteration broken by a change of size), it costs
O(1) per insertion amortized, and the oldest entries are an application's
own classes — made at import and used all the time — so dropping the oldest
first would not keep them any better.

A lookup stays a plain dict lookup: only a miss pays for the bound.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = [
    "CLASS_CACHE_BOUND",
    "class_cache",
    "class_caches",
    "class_set",
    "has_room",
    "make_room",
    "remember",
]

#: How many classes (or annotations) each per-class cache holds at most.
#: Far more than an application defines (its classes are made at import, and
#: each cache holds only the classes of its own kind of work), so only a program
#: that keeps making new classes ever reaches it. Read at each insertion: a test
#: may set it lower.
CLASS_CACHE_BOUND = 4096

K = TypeVar("K")
V = TypeVar("V")

# Every cache made by class_cache, by name: for the tests (and a reader)
# that check each stays within the bound.
_CACHES: dict[str, dict[Any, Any] | set[Any]] = {}


def class_cache(name: str) -> dict[Any, Any]:
    """A new, empty per-class cache, known by ``name`` (``module._NAME``)."""
    cache: dict[Any, Any] = {}
    _CACHES[name] = cache
    return cache


def class_set(name: str) -> set[Any]:
    """A new, empty per-class set (what a class was found to be), known by ``name``."""
    found: set[Any] = set()
    _CACHES[name] = found
    return found


def class_caches() -> dict[str, dict[Any, Any] | set[Any]]:
    """Every per-class cache, by name."""
    return dict(_CACHES)


def has_room(registry: list[Any]) -> bool:
    """Whether a registry keyed by class (one that never forgets, so stops
    taking classes when full) may take one more."""
    return len(registry) < CLASS_CACHE_BOUND


def make_room(cache: dict[Any, Any] | set[Any]) -> None:
    """Empty ``cache`` when it is full, before one more entry goes in."""
    if len(cache) >= CLASS_CACHE_BOUND:
        cache.clear()


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """Put ``value`` in ``cache`` under ``key`` (emptying it first when it
    is full), and return it."""
    make_room(cache)
    cache[key] = value
    return value
