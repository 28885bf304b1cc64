"""A ``MemorySagaStore``'s reads for operators: what it holds (``len``,
``in``, ``existing_saga_ids``), the saga names, the listing and the counts
— each a walk over the held sagas, summarized one at a time (``_summary``,
which its purge uses too). None is on a saga's hot path.

``OperatorReads`` is a base class of ``MemorySagaStore`` (``memory``),
whose state it reads (the store's ``__init__``).
"""

from __future__ import annotations

import math
from collections.abc import Collection

from ..errors import SagaNotFound
from ..status import SagaStatus
from ._common import finite_seconds, non_negative_int
from ._memory_records import _entry_at, _Frozen, _frozen_summary
from .base import LiveSaga, SagaCounts, SagaRecord, SagaSummary


class OperatorReads:
    """A ``MemorySagaStore``'s reads for operators (see the module docstring)."""

    # The store's (MemorySagaStore.__init__).
    _sagas: dict[str, SagaRecord | LiveSaga | _Frozen]

    def __len__(self) -> int:
        return len(self._sagas)

    def __contains__(self, saga_id: object) -> bool:
        return saga_id in self._sagas

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


def _time_range(since: float | None, until: float | None) -> tuple[float, float]:
    return (
        -math.inf if since is None else finite_seconds("created_since", since),
        math.inf if until is None else finite_seconds("created_until", until),
    )
