"""Sagas by name and status: the store's ``count_sagas`` if it has one
(with ``at_most``, if it takes it, stopped at that many a status), else a
count of the newest ``SCAN_LIMIT`` sagas it lists."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..status import SagaStatus
from ..store.base import SagaSummary
from .query import STATUSES, ListQuery

__all__ = [
    "SCAN_LIMIT", "CountFetcher", "Counts", "counts_up_to", "fetch_counts", "scan_filter",
    "store_name",
]

#: How many sagas the console lists from a store that cannot filter, page or
#: count by itself; it then works on these, the newest.
SCAN_LIMIT: Final = 1000


@dataclass(slots=True)
class Counts:
    """Sagas by (name, status), and whether the store counted them all.
    ``capped``: the statuses of which there are more than ``cap`` sagas,
    counted no further (``by_name_status`` has none of them).
    ``unreadable``: the rows the store left out of them, as its listing
    does (S12: a saga in flight its claim skips as corrupt, a status or a
    name no reader reads, a time or an id no reader reads of any status);
    ``None`` if the store does not say."""

    by_name_status: dict[tuple[str, SagaStatus], int]
    exact: bool
    note: str | None = None
    capped: frozenset[SagaStatus] = frozenset()
    cap: int = 0
    unreadable: int | None = None

    def by_status(self) -> dict[SagaStatus, int]:
        """Sagas by status; ``cap`` for a capped one (there are more)."""
        totals = dict.fromkeys(STATUSES, 0)
        for (_, status), count in self.by_name_status.items():
            totals[status] += count
        for status in self.capped:
            totals[status] = self.cap
        return totals

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.by_name_status})



def store_name(store: object) -> str:
    return type(store).__name__


def scan_filter(summary: SagaSummary, query: ListQuery) -> bool:
    return (query.since is None or summary.created_at >= query.since) and (
        query.until is None or summary.created_at < query.until
    )


class CountFetcher(Protocol):
    """``fetch_counts``, or what stands in for it (``counting.CountCache``)."""

    def __call__(
        self,
        store: object,
        *,
        saga_name: str | None = ...,
        since: float | None = ...,
        until: float | None = ...,
        at_most: int | None = ...,
    ) -> Awaitable[Counts]: ...


def counts_up_to(count_sagas: Any) -> bool:
    """Whether a store's ``count_sagas`` takes ``at_most`` (the built-in
    stores' do: a store of your own is asked as before)."""
    try:
        parameters = inspect.signature(count_sagas).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
    return "at_most" in parameters


async def fetch_counts(
    store: object,
    *,
    saga_name: str | None = None,
    since: float | None = None,
    until: float | None = None,
    at_most: int | None = None,
) -> Counts:
    """Sagas by (name, status) with these filters: the store's ``count_sagas``
    if it has one, else a count of the newest ``SCAN_LIMIT`` it lists.
    ``at_most``: a status of more sagas than that is counted no further
    (``Counts.capped``), if the store can stop (``counts_up_to``)."""
    count_sagas = getattr(store, "count_sagas", None)
    if callable(count_sagas):
        if at_most is not None and counts_up_to(count_sagas):
            counted = await count_sagas(saga_name=saga_name, created_since=since,
                                        created_until=until, at_most=at_most)
        else:
            at_most = None
            counted = await count_sagas(saga_name=saga_name, created_since=since,
                                        created_until=until)
        found = {(str(n), SagaStatus(s)): int(c) for (n, s), c in counted.items()}
        # A built-in store's SagaCounts says it; a plain dict does not.
        unreadable = getattr(counted, "unreadable", None)
        unreadable = unreadable if isinstance(unreadable, int) else None
        if at_most is None:
            return Counts(found, True, unreadable=unreadable)
        totals = dict.fromkeys(STATUSES, 0)
        for (_, status), count in found.items():
            totals[status] += count
        capped = frozenset(status for status, total in totals.items() if total > at_most)
        if not capped:
            return Counts(found, True, unreadable=unreadable)
        # A capped status's counts by name are of the sagas read: partial.
        exact = {key: count for key, count in found.items() if key[1] not in capped}
        return Counts(exact, False, None, capped, at_most, unreadable)
    list_sagas = getattr(store, "list_sagas", None)
    if not callable(list_sagas):
        return Counts({}, False, f"{store_name(store)} cannot list sagas: nothing to count")
    listed: list[SagaSummary] = await list_sagas(saga_name=saga_name, limit=SCAN_LIMIT)
    by: dict[tuple[str, SagaStatus], int] = {}
    fake = ListQuery(since=since, until=until)
    for summary in listed:
        if scan_filter(summary, fake):
            key = (summary.saga_name, summary.status)
            by[key] = by.get(key, 0) + 1
    if len(listed) < SCAN_LIMIT:
        return Counts(by, True)
    return Counts(
        by,
        False,
        f"{store_name(store)} cannot count sagas: these counts cover its newest "
        f"{SCAN_LIMIT} sagas only",
    )
