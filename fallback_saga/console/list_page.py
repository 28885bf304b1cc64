"""The listing page: the sagas, newest first, their counts by status, the
filters and the pager."""

from __future__ import annotations

from ..status import SagaStatus
from ..store.base import SagaSummary
from .layout import NAME_SHOWN, STATUS_LABELS, badge, layout, parked_badge, when
from .lease import is_time
from .links import saga_href
from .listing import Listing
from .query import STATUSES, ListQuery
from .text import esc, format_age, format_seconds, format_time, shorten

__all__ = ["listing_page"]

def _count_cards(listing: Listing, query: ListQuery, default_limit: int) -> str:
    counts = listing.counts
    by_status = counts.by_status()
    total = sum(by_status.values())
    # A capped count is a lower bound, and says so ("10,000+"); so is the sum.
    more = ' title="more: counted up to this many only"'

    def shown(n: int, capped: bool) -> str:
        return f"<span class=\"n\"{more}>{n:,}+</span>" if capped else f'<span class="n">{n}</span>'

    cards = [
        f'<a class="count all{" on" if query.status is None else ""}" '
        f'href="{esc(query.link("/", default_limit=default_limit, status=None, before=None))}">'
        f'{shown(total, bool(counts.capped))}<span class="what">All</span></a>'
    ]
    for status in STATUSES:
        href = query.link("/", default_limit=default_limit, status=status.value, before=None)
        cards.append(
            f'<a class="count {status.value}{" on" if query.status is status else ""}" '
            f'href="{esc(href)}">{shown(by_status[status], status in counts.capped)}'
            f'<span class="what">{STATUS_LABELS[status]}</span></a>'
        )
    exact = "" if listing.counts.exact else " title=\"approximate: see the note below\""
    return f'<section class="counts" aria-label="sagas by status"{exact}>{"".join(cards)}</section>'


def _filters(listing: Listing, query: ListQuery, default_limit: int) -> str:
    options = ['<option value="">Any</option>'] + [
        f'<option value="{s.value}"{" selected" if query.status is s else ""}>'
        f"{STATUS_LABELS[s]}</option>"
        for s in STATUSES
    ]
    limits = sorted({25, 50, 100, 200, default_limit, query.limit})
    limit_options = [
        f'<option value="{n}"{" selected" if n == query.limit else ""}>{n}</option>'
        for n in limits
    ]
    names = "".join(f'<option value="{esc(name)}">' for name in listing.suggested_names())
    quick = []
    for age, text in (("15m", "15 min"), ("1h", "1 h"), ("24h", "24 h"), ("7d", "7 days")):
        href = query.link("/", default_limit=default_limit, since=age, until=None, before=None)
        on = " class=on" if query.since_text == age and not query.until_text else ""
        quick.append(f'<a href="{esc(href)}"{on}>{text}</a>')
    everything = query.link("/", default_limit=default_limit, since=None, until=None, before=None)
    quick.append(f'<a href="{esc(everything)}">any time</a>')
    return (
        '<form class="card filters" method="get" action="/" role="search">'
        f'<label>Status<select name="status">{"".join(options)}</select></label>'
        f'<label>Saga name<input name="name" list="saga-names" value="{esc(query.name or "")}"'
        f' placeholder="exact name" autocomplete="off"></label>'
        f'<datalist id="saga-names">{names}</datalist>'
        f'<label>Created since<input name="since" value="{esc(query.since_text)}"'
        ' placeholder="24h or 2024-05-01"></label>'
        f'<label>Created before<input name="until" value="{esc(query.until_text)}"'
        ' placeholder="1h or 2024-05-02"></label>'
        f'<label>Per page<select name="limit">{"".join(limit_options)}</select></label>'
        '<button class="button primary" type="submit">Apply</button>'
        '<a class="button" href="/">Reset</a>'
        f'<div class="quick">Created in the last {"".join(quick)}</div>'
        "</form>"
    )


def _lease_cell(summary: SagaSummary, now: float) -> str:
    if summary.lease_owner is None:
        return '<span class="muted">&ndash;</span>'
    expires = summary.lease_expires_at
    if expires is not None and not is_time(expires):  # a damaged row (S12)
        state = '<span class="muted small">expiry unreadable</span>'
    elif expires is not None and expires <= now:
        state = f'<span class="muted small">expired {esc(format_age(expires, now))}</span>'
    elif expires is not None:
        state = f'<span class="muted small">until {esc(format_time(expires))}</span>'
    else:
        state = ""
    return f'<span class="id">{esc(summary.lease_owner)}</span><br>{state}'



def _parked_note(claims: int | None, saga_id: str) -> str:
    """Under a listed saga's lease: parked, if the store parks it."""
    return "" if claims is None else "<br>" + parked_badge(claims, saga_id)


def _duration(created: float, updated: float, status: SagaStatus, now: float) -> str:
    if status.is_final:
        return esc(format_seconds(max(updated - created, 0.0)))
    return f'<span class="muted">last step {esc(format_age(updated, now))}</span>'


def _unreadable_note(unreadable: int | None, filtered: bool) -> str:
    """The rows left out of the counts and the listing as unreadable (S12),
    for an operator to look into: nothing else on the page shows them."""
    if not unreadable:
        return ""
    one = unreadable == 1
    return (
        f'<p class="unreadable">{unreadable:,} saga{"" if one else "s"} in the store'
        f'{" (of those counted for these filters)" if filtered else ""} '
        f'{"is" if one else "are"} unreadable (a row another tool wrote, or a damaged page): '
        f"left out of these counts and of the list. <code>fallback-saga list</code> "
        f"names each by id, with why (on its standard error); a <code>recover</code> "
        f"pass reports those in flight.</p>"
    )


def listing_page(
    listing: Listing,
    query: ListQuery,
    *,
    default_limit: int,
    store_label: str,
    now: float,
    error: str | None = None,
) -> str:
    """The listing; with ``error``, the filters as given and what is wrong with them."""
    rows = []
    for s in listing.sagas:
        rows.append(
            "<tr>"
            f'<td><a class="id" href="{esc(saga_href(s.saga_id))}">{esc(s.saga_id)}</a></td>'
            f"<td>{esc(shorten(s.saga_name, NAME_SHOWN))}</td>"
            f"<td>{badge(s.status)}</td>"
            f"<td>{when(s.created_at, now)}</td>"
            f"<td>{when(s.updated_at, now)}</td>"
            f"<td>{_duration(s.created_at, s.updated_at, s.status, now)}</td>"
            f"<td>{_lease_cell(s, now)}"
            f"{_parked_note(listing.parked.get(s.saga_id), s.saga_id)}</td>"
            "</tr>"
        )
    if error is not None:
        table = '<div class="empty">Correct the filters above to see the sagas.</div>'
    elif rows:
        table = (
            '<table><thead><tr><th>Saga ID</th><th>Saga name</th><th>Status</th>'
            "<th>Created (UTC)</th><th>Updated (UTC)</th><th>Duration</th><th>Lease</th>"
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        )
    elif not listing.can_list:
        table = '<div class="empty">This store cannot list its sagas.</div>'
    elif query.filtered or query.before:
        table = '<div class="empty">No saga matches these filters.</div>'
    else:
        table = '<div class="empty">No saga has been journaled in this store yet.</div>'
    first = query.link("/", default_limit=default_limit, before=None)
    next_page = query.link("/", default_limit=default_limit, before=listing.next_before)
    older = (
        f'<a class="button" href="{esc(next_page)}">Older →</a>'
        if listing.next_before
        else '<span class="muted small">End of the list</span>'
    )
    newest = (
        f'<a class="button" href="{esc(first)}">← Newest</a>'
        if query.before
        else '<span></span>'
    )
    shown = len(listing.sagas)
    pager = (
        f'<nav class="pager" aria-label="pages">{newest}'
        f'<span class="muted small">{shown} saga{"" if shown == 1 else "s"} on this page, '
        f"newest first</span>{older}</nav>"
    )
    capped = listing.counts.capped
    exact = query.link("/", default_limit=default_limit, count="exact")
    windowed = query.since is not None or query.until is not None
    where = "in this time window" if windowed else "of this name"
    capped_note = (
        f"<p>More than {listing.counts.cap:,} "
        + " and ".join(STATUS_LABELS[s].lower() for s in STATUSES if s in capped)
        + f" sagas {where}: their counts stop there (counting every one reads every "
        f'saga {where}). <a href="{esc(exact)}">Count them all</a></p>'
        if capped
        else ""
    )
    unreadable_note = _unreadable_note(
        listing.counts.unreadable, windowed or query.name is not None
    )
    notes = (
        '<div class="notes">'
        + "".join(f"<p>{esc(note)}</p>" for note in listing.notes)
        + capped_note
        + unreadable_note
        + "</div>"
        if listing.notes or capped_note or unreadable_note
        else ""
    )
    api = query.link("/api/sagas", default_limit=default_limit)
    body = (
        '<div class="head"><div><h1>Sagas</h1>'
        '<div class="sub">Every saga in the store, newest first.</div></div>'
        '<div class="actions"><form class="goto" method="get" action="/sagas">'
        '<input name="id" placeholder="Open a saga by ID" aria-label="saga id" required>'
        '<button class="button" type="submit">Open</button></form>'
        f'<a class="button" href="{esc(api)}">View as JSON</a></div></div>'
        + _count_cards(listing, query, default_limit)
        + _filters(listing, query, default_limit)
        + (
            f'<div class="alert failed" role="alert"><strong>Bad request</strong>{esc(error)}'
            "</div>"
            if error is not None
            else ""
        )
        + notes
        + f'<section class="card table" aria-label="sagas">{table}{pager}</section>'
    )
    return layout("Sagas", body, store_label=store_label, now=now)
