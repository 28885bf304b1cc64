"""The JSON API's shapes: a listing (``/api/sagas``), a saga
(``/api/sagas/<id>``) and its lease."""

from __future__ import annotations

import time
from typing import Any

from ..record_json import history_json, record_head_json
from ..store.base import LeaseState, SagaSummary
from .lease import is_time, lease_phase, lease_readable
from .listing import Listing
from .query import HISTORY_PAGE, STATUSES, ListQuery, history_span
from .saga_view import SagaView

__all__ = ["lease_json", "listing_json", "record_json", "summary_json"]


def lease_json(lease: LeaseState | None, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    readable = lease_readable(lease)
    return {
        "state": lease_phase(lease, now),
        "owner": lease.owner if isinstance(lease.owner, str) else None,
        # A released lease's expiry is only when it was released: not shown as a deadline.
        "expires_at": lease.expires_at if readable and lease.owner is not None else None,
        "fencing_token": lease.token if readable else None,
    }


def summary_json(summary: SagaSummary, parked: bool = False) -> dict[str, Any]:
    """One saga of ``/api/sagas``: ``unreleased_claims`` and ``parked`` as
    ``list --json`` gives them (``parked``: ``Listing.parked`` holds it)."""
    return {
        "saga_id": summary.saga_id,
        "saga_name": summary.saga_name,
        "status": summary.status.value,
        "created_at": summary.created_at,
        "updated_at": summary.updated_at,
        "lease_owner": summary.lease_owner,
        "lease_expires_at": (
            summary.lease_expires_at
            if summary.lease_owner and is_time(summary.lease_expires_at)
            else None
        ),
        "unreleased_claims": summary.unreleased_claims,
        "parked": parked,
    }


def listing_json(listing: Listing, query: ListQuery, *, default_limit: int) -> dict[str, Any]:
    counts = listing.counts
    return {
        "sagas": [
            summary_json(summary, summary.saga_id in listing.parked) for summary in listing.sagas
        ],
        "next_before": listing.next_before,
        "next": (
            query.link("/api/sagas", default_limit=default_limit, before=listing.next_before)
            if listing.next_before
            else None
        ),
        "filters": {
            "status": query.status.value if query.status else None,
            "saga_name": query.name,
            "created_since": query.since,
            "created_until": query.until,
            "before": query.before,
            "limit": query.limit,
        },
        "counts": {status.value: n for status, n in counts.by_status().items()},
        "counts_by_name": [
            {"saga_name": name, "status": status.value, "count": n}
            for (name, status), n in sorted(counts.by_name_status.items())
        ],
        "counts_exact": counts.exact,
        # Rows the store left out of the counts and the listing as unreadable
        # (S12; recover() reports each by id); null if the store does not say.
        "counts_unreadable": counts.unreadable,
        # The statuses of more than ``at`` sagas in the window, counted no
        # further (their "counts" say ``at``; none of them in "counts_by_name"),
        # and the listing with every saga counted.
        "counts_capped": (
            {
                "at": counts.cap,
                "statuses": [s.value for s in STATUSES if s in counts.capped],
                "exact": query.link("/api/sagas", default_limit=default_limit,
                                    count="exact"),
            }
            if counts.capped
            else None
        ),
        "notes": listing.notes,
    }


def record_json(
    view: SagaView, now: float | None = None, *, page: int | None = None
) -> dict[str, Any]:
    """The saga as the JSON API gives it: with ``page``, that page of its
    history only (``HISTORY_PAGE`` entries, ``history_page`` says which)."""
    record = view.record
    now = time.time() if now is None else now
    # view.entries: record.history is a window of the journal, from seq view.first.
    entries = len(record.history) if view.entries is None else view.entries
    first, count, pages = 0, entries, 1
    if page is not None:
        first, count, pages = history_span(page, entries)
    data = {
        **record_head_json(record),
        "lease": lease_json(view.lease, now),
        "lease_note": view.lease_note,
        "context": record.context,
        "history": history_json(record, first, count, base=view.first),
        "parent": view.parent,
        "children": view.children,
    }
    if page is not None:
        data["history_page"] = {
            "page": page,
            "pages": pages,
            "per_page": HISTORY_PAGE,
            "entries": entries,
            "first_seq": first if count else None,
            "last_seq": first + count - 1 if count else None,
        }
    return data
