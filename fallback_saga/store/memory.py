"""MemorySagaStore: the default store, in process memory, with bounded retention.

This module is the live sagas it holds and their retention, on the hot
path (``track``, ``finished``, ``retire_run``: a saga run by this process,
watched, frozen as it ends, the oldest finished dropped), and the journal
writes and ``load`` of the ``SagaStore`` contract. The rest, by concept:
a held saga's forms, the frozen tuple's layout and its builders
(``_memory_records``); a take-over by a resumed run or a write ahead
(``_memory_takeover``); and, as base classes of the store (no call added
on the hot path, no object that refers back to the store), a child saga
kept while its parent runs (``_memory_families.Families``), the operators'
reads (``_memory_reads.OperatorReads``) and purge
(``_memory_purge.Purging``).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..context import _ATOMIC, _FREEZABLE
from ..errors import JournalConflict, SagaAlreadyExists, SagaBusy, SagaNotFound
from ..status import SagaStatus
from ._memory_families import _CHILD, Families
from ._memory_purge import Purging
from ._memory_reads import OperatorReads
from ._memory_records import (
    _COMPACT_BUILDERS,
    _COMPLETED_VALUE,
    _FROZEN,
    _STATUS_VALUE,
    _freeze,
    _Frozen,
    _is_final,
    _read,
    _thaw,
)
from ._memory_takeover import _check_replaceable, _driven
from .base import JournalEntry, Lease, LiveSaga, SagaRecord

__all__ = ["MemorySagaStore"]


class MemorySagaStore(Families, OperatorReads, Purging):
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
