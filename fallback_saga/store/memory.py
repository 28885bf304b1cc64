"""MemorySagaStore: the default store, in process memory, with bounded retention."""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from itertools import chain
from typing import Any, TypeVar

from ..compact_journal import expand
from ..context import _ATOMIC, _FREEZABLE, frozen_to_dict
from ..errors import JournalConflict, SagaAlreadyExists, SagaBusy, SagaNotFound
from ..status import SagaStatus
from ._common import finite_seconds, non_negative_int, purge_statuses
from ._responses import journal_entry
from .base import (
    PURGED_BY_DEFAULT,
    JournalEntry,
    Lease,
    LiveSaga,
    SagaCounts,
    SagaRecord,
    SagaSummary,
)

__all__ = ["MemorySagaStore"]

# Between a parent saga's id and its child's step name in a child's saga id
# (subsaga.CHILD_SEPARATOR: a store knows nothing of steps, so not imported).
_CHILD = "/"


class MemorySagaStore:
    """Keeps sagas in a dict. Nothing survives the process: use it for tests,
    for sagas that need no crash recovery, or as the fastest default.

    Sagas run by this process are *watched* rather than written to
    (``LiveJournal``): the journal costs no await on the hot path, and
    ``load`` builds the record on demand. Sagas given through ``create``/
    ``append`` (the ``SagaStore`` contract) are stored as records.

    Finished sagas (COMPLETED, COMPENSATED, FAILED) are kept for inspection,
    at most ``max_finished`` of them: the oldest finished are dropped first,
    so a long-running service's memory stays flat. Running sagas are never
    dropped, nor is a finished child saga (``SubSaga``) while its parent
    runs: it retires with its parent. The context of a watched saga need not be JSON-serializable
    until ``load`` is asked for it.
    """

    # append(..., after=N): written only if the journal holds N entries.
    appends_after = True
    # The keyword filters list_sagas takes (see RecoverableStore).
    listing_filters = ("before", "created_since", "created_until")

    def __init__(self, *, max_finished: int = 10_000) -> None:
        if isinstance(max_finished, bool) or not isinstance(max_finished, int) or max_finished < 0:
            raise ValueError(f"max_finished must be an int >= 0, got {max_finished!r}")
        self.max_finished = max_finished
        self._sagas: dict[str, SagaRecord | LiveSaga | _Frozen] = {}
        self._finished: deque[str] = deque()  # oldest first; each saga retires once
        # Finished child sagas (SubSaga) kept off ``_finished`` while their
        # parent is in flight, by the parent's id: the parent may yet unwind them.
        self._kept: dict[str, dict[str, None]] = {}
        # append's compare-and-set (``after``) between threads, each with its
        # own event loop (a sync app's asyncio.run per request).
        self._appending = threading.Lock()
        # A resumed run's check of the run it replaces, and its replacing (track).
        self._replacing = threading.Lock()

    def __len__(self) -> int:
        return len(self._sagas)

    def __contains__(self, saga_id: object) -> bool:
        return saga_id in self._sagas

    # ------------------------------------------------------------------ LiveJournal

    def track(self, saga: LiveSaga, *, replace: bool = False) -> None:
        saga_id = saga.saga_id
        # Looked up and claimed in one step (dict.setdefault is atomic): two
        # threads starting the same saga id at once (a sync app's duplicate
        # requests, each in an asyncio.run of its own) never both find it
        # free and both run it, one of them unjournaled (S13).
        held = self._sagas.setdefault(saga_id, saga)
        if held is saga:
            return
        if not replace:
            raise SagaAlreadyExists(saga_id)
        # A resumed run takes over the saga's record (the collision path:
        # never a plain run's). Checked and replaced in one step, whatever
        # the thread: two resumes of one crashed saga never both take it.
        with self._replacing:
            held = self._sagas.get(saga_id, saga)
            if held is not saga:
                _check_replaceable(saga_id, held, saga)
                if _is_final(held):
                    # A finished saga runs again (a child saga its parent
                    # unwinds, an operator's retry of a FAILED one): no
                    # longer one of the finished, which the oldest are
                    # dropped from — a running saga never is — and it
                    # retires once more when it ends. (A scan, on this
                    # rare path only.)
                    self._reopened(saga_id)
            self._sagas[saga_id] = saga

    def finished(self, saga: LiveSaga) -> None:
        saga_id = saga.saga_id
        sagas = self._sagas
        if sagas.get(saga_id) is saga:
            if _CHILD in saga_id and self._kept_for_parent(saga_id):
                return
            if self._kept:
                self._let_children_go(saga_id)
            if not self.max_finished:  # nothing is retained: nothing to freeze
                del sagas[saga_id]
                return
            frozen = _freeze(saga)
            if frozen is not None:
                sagas[saga_id] = frozen
            # _retire, inlined (once per saga run in this process)
            finished = self._finished
            finished.append(saga_id)
            while len(finished) > self.max_finished:
                try:
                    oldest = finished.popleft()
                except IndexError:  # other threads retired the oldest meanwhile (S13)
                    break
                sagas.pop(oldest, None)

    def retire_run(
        self, saga: LiveSaga, context: object, status: SagaStatus | None = None
    ) -> bool:
        """``finished``, for a saga of this process run by
        ``Execution.run_plain`` (its journal compact) that COMPLETED — or
        ended ``status``, once unwound — whose final ``context`` nobody has
        frozen yet: a flat one of atomic values goes into the record straight
        from its ``__dict__`` (what ``freeze_context`` makes, without its call
        or ``finished``'s three: 2-4 % of such a saga). False when the context
        is not such a one: the caller freezes it and calls ``finished``."""
        saga_id = saga.saga_id
        sagas = self._sagas
        if sagas.get(saga_id) is saga:
            if _CHILD in saga_id and self._kept_for_parent(saga_id):
                return False  # the caller freezes it and calls finished, which keeps it
            if not self.max_finished:  # nothing is retained: nothing to freeze
                if self._kept:
                    self._let_children_go(saga_id)
                del sagas[saga_id]
                return True
            index = _FREEZABLE.get(context.__class__)
            if index is None or index < 0 or not _ATOMIC.issuperset(
                map(type, (state := context.__dict__).values())
            ):
                return False
            journal: list[Any] = saga.journal
            results = saga.results  # type: ignore[attr-defined]
            # A completed run's journal ends with a COMPLETED reading, an
            # unwound one's with a whole row.
            last = journal[-1]
            # freeze_context's flat tuple, made here from the state it reads
            sagas[saga_id] = _COMPACT_BUILDERS[len(results)](
                saga.saga_name, saga.fingerprint,
                _COMPLETED_VALUE if status is None else _STATUS_VALUE[status], saga.created_at,
                last if last.__class__ is float else last[7], len(journal),
                saga.shape, journal, results,  # type: ignore[attr-defined]
                _FROZEN, (index, len(state), *state, *state.values()),
            )
            if self._kept:
                self._let_children_go(saga_id)
            # _retire, inlined
            finished = self._finished
            finished.append(saga_id)
            while len(finished) > self.max_finished:
                try:
                    oldest = finished.popleft()
                except IndexError:  # other threads retired the oldest meanwhile (S13)
                    break
                sagas.pop(oldest, None)
        return True

    # ------------------------------------------------------------------ SagaStore

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        if saga_id in self._sagas:
            raise SagaAlreadyExists(saga_id)
        now = time.time()
        record = SagaRecord(
            saga_id=saga_id,
            saga_name=saga_name,
            fingerprint=fingerprint,
            status=status,
            context=copy.deepcopy(context),
            history=list(entries),
            created_at=now,
            updated_at=now,
            version=1,
        )
        # Claimed in one step (see track): another thread's create of the
        # same id since the look above is never overwritten.
        if self._sagas.setdefault(saga_id, record) is not record:
            raise SagaAlreadyExists(saga_id)
        if status.is_final:
            self._retire(saga_id)

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Lease | None = None,
        after: int | None = None,
    ) -> None:
        record = self._sagas.get(saga_id)
        if record is None:
            raise SagaNotFound(saga_id)
        if not isinstance(record, SagaRecord):
            record = self._written_ahead(saga_id)
        with self._appending:  # the check and the write as one, whatever the thread
            if after is not None and len(record.history) != after:
                raise JournalConflict(saga_id, after, len(record.history))
            record.history.extend(entries)
        if context is not None:
            record.context = copy.deepcopy(context)
        record.updated_at = time.time()
        record.version += 1
        if status is not None and status is not record.status:
            if record.status.is_final:
                self._reopened(saga_id)  # see track
            record.status = status
            if status.is_final:
                self._retire(saga_id)

    async def load(self, saga_id: str) -> SagaRecord:
        saga = self._sagas.get(saga_id)
        if saga is None:
            raise SagaNotFound(saga_id)
        if isinstance(saga, SagaRecord):
            # Callers get their own copy: mutating it must not rewrite the journal.
            return SagaRecord(
                saga_id=saga.saga_id,
                saga_name=saga.saga_name,
                fingerprint=saga.fingerprint,
                status=saga.status,
                context=copy.deepcopy(saga.context),
                history=list(saga.history),
                created_at=saga.created_at,
                updated_at=saga.updated_at,
                version=saga.version,
            )
        if isinstance(saga, tuple):
            return _thaw(saga_id, saga)
        return _read(saga)

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        """Which of ``saga_ids`` the store holds (those ``load`` finds)."""
        return {saga_id for saga_id in saga_ids if isinstance(saga_id, str) and saga_id in self}

    async def saga_names(self, *, limit: int = 1000) -> list[str]:
        """The distinct saga names held, in order, at most ``limit``."""
        limit = non_negative_int("limit", limit)
        names = {self._summary(saga_id).saga_name for saga_id in list(self._sagas)}
        return sorted(names)[:limit]

    # ------------------------------------------------------------------ listing (operators)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
        before: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
    ) -> list[SagaSummary]:
        """Newest first (the order the sagas were started in), filtered as
        ``SQLiteSagaStore.list_sagas`` is; what the web console reads."""
        limit = non_negative_int("limit", limit)
        status = None if status is None else SagaStatus(status)
        since, until = _time_range(created_since, created_until)
        ids = list(self._sagas)
        end = len(ids)
        if before is not None:
            try:
                end = ids.index(before)
            except ValueError:
                raise SagaNotFound(before) from None
        found: list[SagaSummary] = []
        for saga_id in reversed(ids[:end]):
            if len(found) >= limit:
                break
            summary = self._summary(saga_id)
            if (
                (status is None or summary.status is status)
                and (saga_name is None or summary.saga_name == saga_name)
                and since <= summary.created_at < until
            ):
                found.append(summary)
        return found

    async def count_sagas(
        self,
        *,
        saga_name: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
        at_most: int | None = None,
    ) -> SagaCounts:
        """How many sagas there are, by (saga name, status); filtered like
        ``list_sagas``. ``at_most`` (a bound the durable stores read up to)
        changes nothing here: every saga is in memory, and counted."""
        if at_most is not None:
            non_negative_int("at_most", at_most)
        since, until = _time_range(created_since, created_until)
        counts = SagaCounts()  # every saga readable: none left out
        for saga_id in list(self._sagas):
            summary = self._summary(saga_id)
            if (saga_name is None or summary.saga_name == saga_name) and (
                since <= summary.created_at < until
            ):
                key = (summary.saga_name, summary.status)
                counts[key] = counts.get(key, 0) + 1
        return counts

    # ------------------------------------------------------------------ retention (operators)

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished sagas with one of ``statuses`` not updated for
        ``older_than`` seconds, as the durable stores' ``purge`` does; returns
        how many. By default ``COMPLETED`` and ``COMPENSATED`` ones: a
        ``FAILED`` saga goes only when ``statuses`` names it. A child saga
        (``SubSaga``) is not deleted while its parent is held: a family goes
        parent first, its children in the next round of the same call. (The
        ``max_finished`` bound applies all the same: purge is for dropping
        sooner, never for keeping longer.)

        ``on_batch``: called after each generation that deleted sagas (a
        batch: the parents, then the children they kept) with how many it
        deleted, as the durable stores call it after each batch they
        commit."""
        older_than = finite_seconds("older_than", older_than)
        chosen = purge_statuses(statuses)
        cutoff = time.time() - older_than
        sagas = self._sagas
        total = 0
        while True:
            # One generation: what the store holds now decides which children
            # still have their parent (a parent purged in this round lets its
            # children go in the next).
            gone: list[str] = []
            for saga_id in list(sagas):
                held = sagas.get(saga_id)
                if held is None or not _is_final(held):
                    continue
                summary = self._summary(saga_id)
                if summary.status.value not in chosen or not summary.updated_at < cutoff:
                    continue
                parent_id, separator, step = saga_id.rpartition(_CHILD)
                if separator and parent_id and step and parent_id in sagas:
                    continue
                gone.append(saga_id)
            if not gone:
                return total
            for saga_id in gone:
                sagas.pop(saga_id, None)
            # Out of the finished too: a stale id there would later drop a new
            # saga that took the id again. In place (each entry is taken from
            # the left and put back unless purged), so that sagas other threads
            # retire meanwhile stay.
            purged = set(gone)
            finished = self._finished
            for _ in range(len(finished)):
                try:
                    saga_id = finished.popleft()
                except IndexError:  # another thread dropped the oldest meanwhile
                    break
                if saga_id not in purged:
                    finished.append(saga_id)
            total += len(gone)
            if gone and on_batch is not None:
                on_batch(len(gone))

    def _summary(self, saga_id: str) -> SagaSummary:
        saga = self._sagas[saga_id]
        if isinstance(saga, tuple):
            return _frozen_summary(saga_id, saga)
        if isinstance(saga, SagaRecord):
            updated_at = saga.updated_at
        else:
            journal = saga.journal
            updated_at = _entry_at(journal[-1]) if journal else saga.created_at
        return SagaSummary(
            saga_id, saga.saga_name, saga.status, saga.created_at, updated_at
        )

    def _written_ahead(self, saga_id: str) -> SagaRecord:
        """A saga this store watches (``track``: run on the store itself) is
        written to ahead, as a durable store is: by a resume or a
        ``retry_unwinding`` through a wrapper that forwards the ``SagaStore``
        methods but not ``track``. The write takes the saga's record over
        (what ``load`` reads, from now on a plain record), as a resumed
        run's ``track(replace=True)`` does — refused (``SagaBusy``) while a
        run of this process still drives it. A stale read is the
        conditional append's to refuse (``after``)."""
        with self._replacing:
            held = self._sagas.get(saga_id)
            if held is None:
                raise SagaNotFound(saga_id)
            if isinstance(held, SagaRecord):  # another thread's took it over meanwhile
                return held
            if isinstance(held, tuple):
                record = _thaw(saga_id, held)
            elif not held.status.is_final and _driven(held):
                raise SagaBusy(saga_id, None, None, here=True)
            else:
                record = _read(held)
            self._sagas[saga_id] = record
            return record

    def _reopened(self, saga_id: str) -> None:
        """A finished saga is running again: out of the finished (each is there once)."""
        with contextlib.suppress(ValueError):
            self._finished.remove(saga_id)

    def _retire(self, saga_id: str) -> None:
        if _CHILD in saga_id and self._kept_for_parent(saga_id):
            return
        if self._kept:
            self._let_children_go(saga_id)
        finished = self._finished
        finished.append(saga_id)
        while len(finished) > self.max_finished:
            try:
                oldest = finished.popleft()
            except IndexError:  # another thread retired the last one meanwhile
                break
            self._sagas.pop(oldest, None)

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


def _check_replaceable(saga_id: str, held: SagaRecord | LiveSaga | _Frozen,
                       saga: LiveSaga) -> None:
    """Refuse (``SagaBusy``) to let the resumed run ``saga`` take over from
    ``held`` while a run still drives the saga, or when the saga moved on
    since the resume read it: either way the resumed run would make again
    the calls another run makes or made — a step run twice (S13). What
    leases do on the durable stores; here, where every run of the saga is
    in this process, the run itself says whether it is still going."""
    loaded = getattr(saga, "written", None)  # the entries of the record it was resumed from
    if loaded is not None and loaded != _entry_count(held):
        # Another run wrote to the saga after the resume read it (a thread
        # of its own finished it meanwhile): the record resumed is stale.
        raise SagaBusy(saga_id, None, None, here=True)
    if not isinstance(held, tuple | SagaRecord) and not held.status.is_final and _driven(held):
        raise SagaBusy(saga_id, None, None, here=True)


def _driven(run: LiveSaga) -> bool:
    """Whether ``run``, not finished, is still being driven: its coroutine
    has not let go (``Execution.driven_in``: cleared as it ends, a crash
    out of it included) and its loop was not closed under it (a crash too:
    the process's stand-in, in memory, is a loop that stopped with the run
    in it)."""
    loop = getattr(run, "driven_in", None)
    if loop is None:  # never started, let go, driven by hand, or not an Execution
        return False
    try:
        return not loop.is_closed()
    except AttributeError:  # a loop of another kind: taken as going
        return True


def _entry_count(held: SagaRecord | LiveSaga | _Frozen) -> int:
    """How many journal entries a held saga has (what ``load`` reads)."""
    if isinstance(held, tuple):
        return int(held[5])  # see the layout below
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


def _time_range(since: float | None, until: float | None) -> tuple[float, float]:
    return (
        -math.inf if since is None else finite_seconds("created_since", since),
        math.inf if until is None else finite_seconds("created_until", until),
    )
