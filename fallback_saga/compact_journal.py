"""The journal of a lean run, kept as clock readings (``Execution.run_plain``).

A saga that takes the lean path (every step plain, the default store, nobody
listening) journals its forward steps in a form of their own: the run appends
the clock reading of each transition and nothing else (a float, which the
garbage collector does not track), because everything else a STARTED or
COMPLETED row holds follows from the plan and from the run's results:

* the step's position, name and branch: from the plan's *shape* (below), in
  the order the plan runs;
* the action, ``act``; the attempt, 1 (a plain step is never retried); no
  error;
* a COMPLETED row's response: the run's ``results``, one per COMPLETED row,
  in order.

Every other row (a FAILED act, every row of the unwinding) is appended whole,
as a tuple (``store.base.RawEntry``). So a compact journal is a list of floats
and row tuples, and reads back unambiguously: a float is a STARTED row, or,
right after a STARTED one, that step's COMPLETED row; a STARTED row is the
current branch's, which is the plan's next step after a COMPLETED row and a
Fallback's fallback after its primary's FAILED row. An unwinding's rows come
last and are all whole. The entry count (a record's version) is the list's
length, as with whole rows.

Six 9-field tuples fewer in a three-step saga, and a finished record a third
as long, make such a saga 10-12 % faster (5 % when it fails and unwinds:
benchmarks/README.md, eighth pass). ``MemorySagaStore`` is the only reader:
``expand`` gives the rows back when a record is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_STARTED as _STARTED

# store/_memory_records.py imports this module: no import of the store package here.
if TYPE_CHECKING:
    from .store.base import Branch as BranchLabel
    from .store.base import RawEntry

__all__ = ["Shape", "branch_of", "expand", "plan_shape"]

# For each plan item in order, how many branches it has (one for a plain step,
# two for a Fallback: the primary, then the fallback), then each branch's
# position, name and branch. One flat tuple of plain values, so that a
# finished record holding it is untracked by the garbage collector on the
# first collection that sees it (a nested tuple is untracked only after its
# contents, one collection per level).
Shape = tuple[int | str, ...]



def plan_shape(items: Iterable[Sequence[Any]]) -> Shape:
    """The shape of a plan whose items are given as their branches (objects
    with ``position``, ``name`` and ``branch``)."""
    shape: list[int | str] = []
    for branches in items:
        shape.append(len(branches))
        for branch in branches:
            shape += (branch.position, branch.name, branch.branch)
    return tuple(shape)


def branch_of(shape: Shape, name: str) -> tuple[int, BranchLabel] | None:
    """The position and branch label of the step called ``name`` (names are
    unique in a saga), or None if the plan has no such step."""
    item = 0
    while item < len(shape):
        count: int = shape[item]  # type: ignore[assignment]
        for start in range(item + 1, item + 1 + 3 * count, 3):
            if shape[start + 1] == name:
                return shape[start], shape[start + 2]  # type: ignore[return-value]
        item += 1 + 3 * count
    return None


def expand(
    shape: Shape, journal: Sequence[Any], responses: Sequence[Any]
) -> tuple[list[RawEntry], int]:
    """The whole rows of a compact ``journal``, and how many of ``responses``
    (the run's, one per COMPLETED row, in order) they took."""
    rows: list[RawEntry] = []
    item = 0  # where the current plan item starts in shape
    branch = item + 1  # where its current branch's fields start
    started = False  # the last row is the current branch's STARTED
    used = 0
    for entry in journal:
        if entry.__class__ is float:
            position, name, label = shape[branch:branch + 3]
            if started:
                rows.append((position, name, label, "act", _COMPLETED, 1, None,  # type: ignore[arg-type]
                             entry, responses[used]))
                used += 1
                item += 1 + 3 * shape[item]  # type: ignore[operator]
                branch = item + 1
                started = False
            else:
                rows.append((position, name, label, "act", _STARTED, 1, None,  # type: ignore[arg-type]
                             entry, None))
                started = True
        else:
            rows.append(entry)
            if started:  # the act's outcome: FAILED (run_plain records a cancelled act so too)
                started = False
                if branch == item + 1 and shape[item] == 2:
                    branch += 3  # a Fallback's primary: its fallback comes next, if anything
        # (An unwinding's rows are whole and come last: they move nothing.)
    return rows, used
