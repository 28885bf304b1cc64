"""A page of the sagas a store holds, newest first, with their counts.

The console needs only ``list_sagas(status=, saga_name=, limit=)``. It
uses ``listing_filters`` (pages and time ranges in the store's own query),
``count_sagas`` (``store_counts``) and ``saga_names`` when a store has them
(asked with ``getattr``, as everywhere in the library). Without them it
filters and counts the newest ``SCAN_LIMIT`` sagas the store lists, and
says so on the page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from ..errors import SagaNotFound
from ..store._parking import parked_claims
from ..store.base import SagaSummary
from .query import BadRequest, ListQuery
from .store_counts import SCAN_LIMIT, CountFetcher, Counts, fetch_counts, scan_filter, store_name

__all__ = ["COUNT_CAP", "SUGGESTED_NAMES", "Listing", "fetch_listing"]

#: Sagas of one status a listing filtered by creation time or by saga name
#: counts at most (``?count=exact``: all of them). A window of half of 1,000,000 sagas was
#: half the table read for its counts at every request: a second on
#: PostgreSQL. Past it the status's count shows as "10,000+", never a
#: number it is not.
COUNT_CAP: Final = 10_000
#: Saga names the filter form suggests at most.
SUGGESTED_NAMES: Final = 500


@dataclass(slots=True)
class Listing:
    sagas: list[SagaSummary]
    next_before: str | None  # the cursor of the next (older) page, if there is one
    counts: Counts
    notes: list[str] = field(default_factory=list)
    can_list: bool = True
    # Saga id -> its claims, for the sagas the store parks (store._parking).
    parked: dict[str, int] = field(default_factory=dict)
    # Every saga name the store holds (its saga_names), for the name field's
    # suggestions; None: the names counted (counts.names()) stand in.
    names: list[str] | None = None

    def suggested_names(self) -> list[str]:
        """The name field's suggestions, at most ``SUGGESTED_NAMES``."""
        names = self.counts.names() if self.names is None else self.names
        return names[:SUGGESTED_NAMES]



async def fetch_listing(
    store: object, query: ListQuery, count: CountFetcher | None = None, *,
    suggestions: bool = True,
) -> Listing:
    """One page of sagas, newest first, and the counts by status (for the
    name and time filters, all statuses), from ``count`` (default:
    ``fetch_counts``); with ``suggestions``, every saga name the store
    holds too (the page's name field). ``BadRequest`` if the page cursor
    names a saga that is gone."""
    # Counts filtered by time or by name stop at COUNT_CAP a status (unless
    # ?count=exact): a name of 800,000 sagas was every one of them counted
    # (its index entries read) at each request. The unfiltered counts are
    # reused a while when slow (counting.CountCache), and /metrics needs them whole.
    windowed = query.since is not None or query.until is not None
    counts = await (count or fetch_counts)(
        store, saga_name=query.name, since=query.since, until=query.until,
        at_most=(
            COUNT_CAP if (windowed or query.name is not None) and not query.exact_counts
            else None
        ),
    )
    list_sagas = getattr(store, "list_sagas", None)
    if not callable(list_sagas):
        note = (
            f"{store_name(store)} cannot list sagas (it has no list_sagas): open a saga "
            f"by its id instead"
        )
        return Listing([], None, counts, [note], can_list=False)
    supported = set(getattr(store, "listing_filters", ()) or ())
    wanted = {
        "before": query.before,
        "created_since": query.since,
        "created_until": query.until,
    }
    used = {key: value for key, value in wanted.items() if value is not None}
    notes: list[str] = []
    if counts.note:
        notes.append(counts.note)
    if set(used) <= supported:
        try:
            found: list[SagaSummary] = await list_sagas(
                status=query.status, saga_name=query.name, limit=query.limit + 1, **used
            )
        except SagaNotFound:
            raise BadRequest(
                f"the page cursor (before={query.before!r}) names a saga that no longer "
                f"exists (purged?): start again from the first page"
            ) from None
        except ValueError as error:  # an id no store can hold
            raise BadRequest(f"before: {error}") from None
    else:
        # The store filters by status and name only: the rest is done here,
        # on the newest SCAN_LIMIT sagas it lists.
        scanned: list[SagaSummary] = await list_sagas(
            status=query.status, saga_name=query.name, limit=SCAN_LIMIT
        )
        if query.before is not None:
            ids = [summary.saga_id for summary in scanned]
            if query.before not in ids:
                raise BadRequest(
                    f"the page cursor (before={query.before!r}) is not among the newest "
                    f"{SCAN_LIMIT} sagas: start again from the first page"
                )
            scanned = scanned[ids.index(query.before) + 1 :]
        found = [summary for summary in scanned if scan_filter(summary, query)]
        found = found[: query.limit + 1]
        notes.append(
            f"{store_name(store)} cannot filter by time or page by itself: this listing "
            f"is drawn from its newest {SCAN_LIMIT} sagas"
        )
    next_before = None
    if len(found) > query.limit:
        found = found[: query.limit]
        next_before = found[-1].saga_id
    now = time.time()
    parked = {
        s.saga_id: claims for s in found
        if (claims := parked_claims(store, s.status, s.unreleased_claims, s.lease_owner,
                                    s.lease_expires_at, now)) is not None
    }
    # The names of every saga, not of those counted: a filter by name, or a
    # status counted no further (capped), left names out of the suggestions.
    # Only the page's form shows them (``suggestions``): /api/sagas does not.
    saga_names = getattr(store, "saga_names", None)
    names = (
        await saga_names(limit=SUGGESTED_NAMES)
        if suggestions and callable(saga_names) else None
    )
    return Listing(found, next_before, counts, notes, parked=parked, names=names)
