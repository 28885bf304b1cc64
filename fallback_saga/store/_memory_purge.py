"""A ``MemorySagaStore``'s purge: finished sagas not updated for a while
deleted, a family parent first, its children in the next round of the
same call (see ``MemorySagaStore.purge``).

``Purging`` is a base class of ``MemorySagaStore`` (``memory``), whose
state it changes (the store's ``__init__``) and whose ``_summary``
(``_memory_reads``) it reads each saga by.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from ..status import SagaStatus
from ._common import finite_seconds, purge_statuses
from ._memory_families import _CHILD
from ._memory_records import _Frozen, _is_final
from .base import PURGED_BY_DEFAULT, LiveSaga, SagaRecord, SagaSummary


class Purging:
    """A ``MemorySagaStore``'s purge (see the module docstring)."""

    # The store's (MemorySagaStore.__init__).
    _sagas: dict[str, SagaRecord | LiveSaga | _Frozen]
    _finished: deque[str]

    if TYPE_CHECKING:  # OperatorReads's, a sibling base of the store
        def _summary(self, saga_id: str) -> SagaSummary: ...

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
