"""Objects that hold threads or connections across ``os.fork()``.

A forked child has none of its parent's threads, and must neither use nor
close its copies of the parent's SQLite connections (SQLite forbids it: the
copies share the parent's locks). An object that holds such things registers
with ``watch_forks`` (weakly: one that is dropped is gone from the registry)
and is told, at every fork:

* before it, ``_hold_for_fork()``: wait (bounded) until none of its
  connections is in use, and keep them so, so that no SQLite mutex is held
  in the child for ever;
* after it, in the parent, ``_release_after_fork()``;
* in the child, ``_forget_the_parents()``: let go of the parent's threads and
  connections, and open its own at its next use.

gunicorn ``--preload`` and multiprocessing's "fork" start method fork a
process whose stores are open.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "watch_forks"]


class ForkAware(Protocol):
    def _hold_for_fork(self) -> None: ...

    def _release_after_fork(self) -> None: ...

    def _forget_the_parents(self) -> None: ...


_WATCHED: weakref.WeakSet[ForkAware] = weakref.WeakSet()
# The objects held across the fork in progress (strongly: each must be
# released, or told it is in a child, after it).
_HELD: list[ForkAware] = []


def watch_forks(holder: ForkAware) -> None:
    """Tell ``holder`` of every fork from now on (see the module)."""
    _WATCHED.add(holder)


def _before_fork() -> None:
    _HELD[:] = _WATCHED
    for holder in _HELD:
        holder._hold_for_fork()


def _after_fork_in_parent() -> None:
    for holder in _HELD:
        holder._release_after_fork()
    _HELD.clear()


def _after_fork_in_child() -> None:
    for holder in _HELD:
        holder._forget_the_parents()
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
