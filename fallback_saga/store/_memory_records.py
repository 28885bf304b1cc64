"""A saga a ``MemorySagaStore`` holds, in each of its forms, read back: the
flat tuple a finished saga of this process is frozen into (its layout, and
the builders that make it, unrolled per size), a watched run read as a
record, a frozen one thawed, and either one's summary and status.

Used by ``memory`` (on the hot path: ``_freeze`` and the builders, as a
saga retires), and by the store's families (``_memory_families``), reads
(``_memory_reads``), purge (``_memory_purge``) and take-overs
(``_memory_takeover``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, TypeVar

from ..compact_journal import expand
from ..context import frozen_to_dict
from ..status import SagaStatus
from ._responses import journal_entry
from .base import LiveSaga, SagaRecord, SagaSummary

# A finished saga this process ran is kept as one flat tuple of plain values
# (as far as the saga allows), rather than as its whole run (15 or more
# objects the garbage collector tracks: the run, its lists, the journal's
# tuples, a snapshot, the context). Layout:
#
#     saga name, fingerprint, status value, created at, updated at, entry count,
#     None, the entries, 9 items each (``store.base.RawEntry``),
#     the context: ``_FROZEN, class index, n, n names, n values`` (a flat
#         context: ``context.freeze_context``), or ``_HELD, snapshot or dict``;
#
# or, for a saga run with a compact journal (``compact_journal``: what
# ``Execution.run_plain`` keeps),
#
#     the same six, the plan's shape, the entries as the run keeps them (a
#     clock reading, or a whole row as one tuple), the responses of its
#     COMPLETED rows, the context as above.
#
# A saga whose steps return nothing, or ids, numbers, strings, leaves a tuple
# of atomic values only, which the collector untracks on its first pass (a
# nested tuple would take one full collection per level: hence flat). Step
# responses that are objects stay in it as they are: the tuple is then
# tracked, with those responses, and nothing else of the run. (Turning them
# into plain values too costs more per saga than the collector spends on
# them: measured.)
_Frozen = tuple[Any, ...]

_FROZEN, _HELD = 1, 2
_HEADER = 7  # the last: the shape of a compact journal, else None
_STRIDE = 9
_SAGA_STATUS = {member.value: member for member in SagaStatus}
_COMPLETED_VALUE = SagaStatus.COMPLETED.value
# A member's plain value (``.value`` is a Python-level property on 3.11: 5x a lookup here).
_STATUS_VALUE = {member: member.value for member in SagaStatus}
_FINAL_VALUES = frozenset(member.value for member in SagaStatus if member.is_final)


def _entry_count(held: SagaRecord | LiveSaga | _Frozen) -> int:
    """How many journal entries a held saga has (what ``load`` reads)."""
    if isinstance(held, tuple):
        return int(held[5])  # see the layout above
    if isinstance(held, SagaRecord):
        return len(held.history)
    return len(held.journal)


def _is_final(saga: SagaRecord | LiveSaga | _Frozen) -> bool:
    """Whether a held saga (a record, a watched run, a frozen tuple) has finished."""
    if isinstance(saga, tuple):
        return saga[2] in _FINAL_VALUES  # the status value (see the layout above)
    return saga.status.is_final


def _freeze(saga: LiveSaga) -> _Frozen | None:
    """``saga`` as a frozen record; None when it cannot be (a ``LiveSaga``
    with no ``frozen_context``, or one that declines: a resumed run, whose
    journal holds entries in journal form): the store keeps the saga itself."""
    frozen_context = getattr(saga, "frozen_context", None)
    context = None if frozen_context is None else frozen_context()
    if context is None:
        return None
    journal = saga.journal
    count = len(journal)
    created_at = saga.created_at
    updated_at = _entry_at(journal[-1]) if count else created_at
    # freeze_context's flat tuple goes in as it is: ``_FROZEN, index, n, names, values``.
    if context.__class__ is tuple:
        marker, tail = _FROZEN, context
    else:
        marker, tail = _HELD, (context,)
    shape = getattr(saga, "shape", None)
    if shape is not None:
        results = saga.results  # type: ignore[attr-defined]
        return _COMPACT_BUILDERS[len(results)](
            saga.saga_name, saga.fingerprint, _STATUS_VALUE[saga.status], created_at, updated_at,
            count, shape, journal, results, marker, tail,
        )
    return _FLATTENERS[count](saga.saga_name, saga.fingerprint, _STATUS_VALUE[saga.status],
                              created_at, updated_at, count, journal, marker, tail)


_Flattener = Callable[
    [str, str, str, float, float, int, Sequence[Any], int, tuple[Any, ...]], _Frozen
]


def _flatten_any(name: str, fingerprint: str, status: str, created_at: float,
                 updated_at: float, count: int, journal: Sequence[Any], marker: int,
                 tail: tuple[Any, ...]) -> _Frozen:
    return (name, fingerprint, status, created_at, updated_at, count, None,
            *chain.from_iterable(journal), marker, *tail)


def _flattener(count: int) -> _Flattener:
    """The frozen record's builder for a journal of ``count`` entries: one tuple
    display with each entry unpacked by index, about twice as fast as
    unpacking ``chain.from_iterable(journal)`` (an iterator step per value).
    The source is built from an int only."""
    entries = "".join(f"*journal[{at}], " for at in range(count))
    source = ("lambda name, fingerprint, status, created_at, updated_at, count, journal,"
              " marker, tail: (name, fingerprint, status, created_at, updated_at, count, None,"
              f" {entries}marker, *tail)")
    return eval(source, {})  # type: ignore[no-any-return]


_CompactBuilder = Callable[
    [str, str, str, float, float, int, Any, Sequence[Any], Sequence[Any], int, tuple[Any, ...]],
    _Frozen,
]


def _compact_any(name: str, fingerprint: str, status: str, created_at: float,
                 updated_at: float, count: int, shape: Any, journal: Sequence[Any],
                 results: Sequence[Any], marker: int, tail: tuple[Any, ...]) -> _Frozen:
    return (name, fingerprint, status, created_at, updated_at, count, shape, *journal,
            *[result[0] for result in results], marker, *tail)


def _compact_builder(size: int) -> _CompactBuilder:
    """The record's builder for a compact journal whose run has ``size``
    results (a ``SagaStepResult`` each: its response is item 0), unrolled as
    ``_flattener``'s is. The source is built from an int only."""
    responses = "".join(f"results[{at}][0], " for at in range(size))
    source = ("lambda name, fingerprint, status, created_at, updated_at, count, shape, journal,"
              " results, marker, tail: (name, fingerprint, status, created_at, updated_at,"
              f" count, shape, *journal, {responses}marker, *tail)")
    return eval(source, {})  # type: ignore[no-any-return]


_Builder = TypeVar("_Builder")


class _Builders(dict[int, _Builder]):
    """A record builder per size (journal entries, or results), made on first
    use: unrolled for a size under ``_UNROLLED`` (a saga of up to 15 plain
    steps), the general form for a longer one. Looked up with one subscript
    (``__missing__`` runs once per size), on the hot path of every retired saga."""

    def __init__(self, unrolled: Callable[[int], _Builder], general: _Builder) -> None:
        super().__init__()
        self._unrolled = unrolled
        self._general = general

    def __missing__(self, size: int) -> _Builder:
        if size >= _UNROLLED:
            return self._general  # not kept: sizes of long sagas are not bounded
        builder = self[size] = self._unrolled(size)
        return builder


_UNROLLED = 32
_FLATTENERS: _Builders[_Flattener] = _Builders(_flattener, _flatten_any)
_COMPACT_BUILDERS: _Builders[_CompactBuilder] = _Builders(_compact_builder, _compact_any)


def _entry_at(entry: Any) -> float:
    """When a journal entry was recorded: a compact journal's clock reading,
    or a whole row's."""
    return entry if entry.__class__ is float else entry[7]


def _rows(saga: LiveSaga) -> Sequence[Any]:
    """A watched saga's journal as whole rows."""
    shape = getattr(saga, "shape", None)
    if shape is None:
        return saga.journal
    return expand(shape, saga.journal, [result[0] for result in saga.results])[0]  # type: ignore[attr-defined]

def _read(saga: LiveSaga) -> SagaRecord:
    """A watched saga as a record of its own (``load``'s)."""
    history = [journal_entry(raw, saga.saga_name) for raw in _rows(saga)]
    return SagaRecord(
        saga_id=saga.saga_id,
        saga_name=saga.saga_name,
        fingerprint=saga.fingerprint,
        status=saga.status,
        context=saga.context_image(),
        history=history,
        created_at=saga.created_at,
        updated_at=history[-1].at if history else saga.created_at,
        version=len(history),
    )


def _thaw(saga_id: str, frozen: _Frozen) -> SagaRecord:
    saga_name, fingerprint, status, created_at, updated_at, count, shape = frozen[:_HEADER]
    if shape is None:
        end = _HEADER + count * _STRIDE
        rows: Sequence[Any] = [
            frozen[at:at + _STRIDE] for at in range(_HEADER, end, _STRIDE)
        ]
    else:
        end = _HEADER + count
        rows, used = expand(shape, frozen[_HEADER:end], frozen[end:])
        end += used
    if frozen[end] == _HELD:
        context = _context_form(frozen[end + 1])
    else:
        # freeze_context's tuple: index, n, n names, n values
        context = frozen_to_dict(frozen[end + 1:end + 3 + 2 * frozen[end + 2]])
    return SagaRecord(
        saga_id=saga_id,
        saga_name=saga_name,
        fingerprint=fingerprint,
        status=_SAGA_STATUS[status],
        context=context,
        history=[journal_entry(raw, saga_name) for raw in rows],
        created_at=created_at,
        updated_at=updated_at,
        version=count,
    )


def _frozen_summary(saga_id: str, frozen: _Frozen) -> SagaSummary:
    saga_name, _, status, created_at, updated_at = frozen[:5]
    return SagaSummary(saga_id, saga_name, _SAGA_STATUS[status], created_at, updated_at)


def _context_form(context: Any) -> dict[str, Any]:
    if isinstance(context, dict):
        return copy.deepcopy(context)  # callers get their own copy
    return frozen_to_dict(context)
