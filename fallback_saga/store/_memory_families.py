"""A ``MemorySagaStore``'s families: a finished child saga (``SubSaga``)
kept off the finished — never dropped by retention — while its parent is
in flight, since unwinding the parent unwinds the child from the child's
record; let go (retired, children first) as its parent retires.

``Families`` is a base class of ``MemorySagaStore`` (``memory``): its
retirements call these methods on the hot path, as before the split (a
base class adds no call and no lookup there). The state is the store's
(its ``__init__``).
"""

from __future__ import annotations

from collections import deque

from ._memory_records import _Frozen, _is_final
from .base import LiveSaga, SagaRecord

# Between a parent saga's id and its child's step name in a child's saga id
# (subsaga.CHILD_SEPARATOR: a store knows nothing of steps, so not imported).
_CHILD = "/"


class Families:
    """A ``MemorySagaStore``'s keeping of child sagas for their parents (see
    the module docstring)."""

    # The store's (MemorySagaStore.__init__).
    max_finished: int
    _sagas: dict[str, SagaRecord | LiveSaga | _Frozen]
    _finished: deque[str]
    _kept: dict[str, dict[str, None]]

    def _kept_for_parent(self, saga_id: str) -> bool:
        """Keep the finished ``saga_id`` off the finished (never dropped) if it
        is a child saga whose parent is in flight: unwinding the parent
        unwinds the child from the child's record, which must be there. The
        parent's id is the child's up to its last ``/`` (``SubSaga``)."""
        parent_id, separator, step = saga_id.rpartition(_CHILD)
        if not (separator and parent_id and step):
            return False
        parent = self._sagas.get(parent_id)
        if parent is None or _is_final(parent):
            return False
        self._kept.setdefault(parent_id, {})[saga_id] = None
        return True

    def _let_children_go(self, saga_id: str) -> None:
        """``saga_id`` is retiring: the children kept for it retire first (they
        finished before it), each after its own kept children. The caller
        then drops the oldest finished, as usual."""
        for child in self._kept.pop(saga_id, {}):
            held = self._sagas.get(child)
            if held is not None and _is_final(held):  # not running again
                if self._kept:
                    self._let_children_go(child)
                if self.max_finished:
                    self._finished.append(child)
                else:
                    self._sagas.pop(child, None)
