"""The console's HTML pages, rendered on the server.

No script at all, one inline style sheet (allowed by its hash in the
Content-Security-Policy), and every value that comes from a store — ids,
names, errors, context — passed through ``esc``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shlex
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote, urlencode

from .. import __version__
from ..command_line import PYTHON_M
from ..status import SagaStatus, StepStatus
from ..store._parking import parked_text
from ..store.base import SagaRecord, SagaSummary
from ..stored_json import parse_stored_json
from .lease import is_time, lease_phase
from .listing import Listing
from .query import HISTORY_PAGE, STATUSES, ListQuery
from .saga_view import SagaView
from .text import (
    cut_bytes,
    esc,
    format_age,
    format_seconds,
    format_time,
    redact_start,
    shorten,
    shown_start,
)
from .timeline import Bar, timeline_svg

__all__ = [
    "STYLE_HASH", "error_page", "history_href", "listing_page", "saga_href", "saga_page",
]

CSS: Final = """
:root{--bg:#f5f6f8;--card:#fff;--line:#e4e7ec;--text:#101828;--muted:#667085;
--accent:#4f46e5;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.topbar{display:flex;align-items:center;gap:28px;padding:0 28px;height:54px;background:#101828;
color:#e4e7ec}
.brand{display:flex;align-items:center;gap:9px;color:#fff;font-weight:650;font-size:15px}
.brand:hover{text-decoration:none}.brand svg{display:block}
.brand .sub{color:#98a2b3;font-weight:500}
.topbar nav{display:flex;gap:4px}
.topbar nav a{color:#d0d5dd;padding:6px 12px;border-radius:6px}
.topbar nav a:hover{background:#1d2939;text-decoration:none}
.topbar nav a.on{background:#344054;color:#fff}
.topbar .store{margin-left:auto;color:#98a2b3;font-size:13px;font-family:var(--mono)}
.pill{display:inline-block;border:1px solid #475467;border-radius:999px;padding:1px 9px;
font-size:11px;color:#d0d5dd;text-transform:uppercase;letter-spacing:.04em}
main{max-width:1280px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:22px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:13px;margin:0 0 12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
font-weight:600}
.head{display:flex;align-items:flex-end;justify-content:space-between;gap:16px;margin-bottom:18px}
.actions{display:flex;gap:10px;align-items:center}
.goto{display:flex;gap:6px}.goto input{font:inherit;padding:6px 10px;border:1px solid #d0d5dd;
border-radius:7px;width:240px;font-family:var(--mono);font-size:13px}
.goto input:focus{outline:2px solid #c7d2fe;border-color:var(--accent)}
.head .sub{color:var(--muted);margin-top:4px;display:flex;gap:10px;align-items:center}
.crumbs{color:var(--muted);margin-bottom:10px;font-size:13px}
.mono{font-family:var(--mono)}
.button{display:inline-block;border:1px solid var(--line);background:#fff;color:var(--text);
border-radius:7px;padding:6px 13px;font:inherit;font-weight:550;cursor:pointer}
.button:hover{background:#f9fafb;text-decoration:none}
.button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
.button.primary:hover{background:#4338ca}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;
margin-bottom:18px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.counts{display:grid;grid-template-columns:repeat(7,minmax(0,1fr));gap:12px;margin-bottom:18px}
.count{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px;
color:var(--text);border-top:3px solid #d0d5dd}
.count:hover{text-decoration:none;border-color:#c7cbd3}
.count .n{display:block;font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.count .what{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.count.on{outline:2px solid var(--accent);outline-offset:-1px}
.count.running{border-top-color:#2e6be6}.count.compensating{border-top-color:#f79009}
.count.completed{border-top-color:#12b76a}.count.compensated{border-top-color:#7a5af8}
.count.failed{border-top-color:#f04438}.count.all{border-top-color:#101828}
.filters{display:flex;flex-wrap:wrap;align-items:flex-end;gap:12px}
.filters label{display:flex;flex-direction:column;gap:4px;font-size:12px;color:var(--muted);
font-weight:550}
.filters input,.filters select{font:inherit;font-size:14px;color:var(--text);padding:6px 9px;
border:1px solid #d0d5dd;border-radius:7px;background:#fff;min-width:120px}
.filters input[name=name]{min-width:190px}
.filters input:focus,.filters select:focus{outline:2px solid #c7d2fe;border-color:var(--accent)}
.quick{display:flex;gap:6px;align-items:center;color:var(--muted);font-size:12px;width:100%}
.quick a{border:1px solid var(--line);border-radius:999px;padding:1px 10px;background:#fff}
.quick a.on{background:#eef2ff;border-color:#c7d2fe}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;padding:9px 12px;
border-bottom:1px solid var(--line);background:#f9fafb;white-space:nowrap}
td{padding:9px 12px;border-bottom:1px solid #f0f1f4;vertical-align:top}
tbody tr:hover{background:#f9fafb}
.table{padding:0;overflow-x:auto}.table table{min-width:760px}
.table th:first-child,.table td:first-child{padding-left:20px}
.table h2{padding:16px 20px 4px;margin:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td .when{white-space:nowrap}.muted{color:var(--muted)}.small{font-size:12px}
.id{font-family:var(--mono);font-size:13px;word-break:break-all}
h1.id{font-size:20px;font-weight:600}
td.nowrap{white-space:nowrap}
.badge{display:inline-flex;align-items:center;gap:6px;border-radius:999px;padding:2px 10px;
font-size:12px;font-weight:600;white-space:nowrap;background:#f2f4f7;color:#344054}
.badge::before{content:"";width:7px;height:7px;border-radius:50%;background:currentColor}
.badge.running{background:#e6eefd;color:#1d5bd8}.badge.compensating{background:#fef0c7;color:#a15c07}
.badge.completed{background:#dcfae6;color:#067647}.badge.compensated{background:#ebe9fe;color:#5925dc}
.badge.failed{background:#fee4e2;color:#b42318}.badge.pending{background:#f2f4f7;color:#475467}
.badge.started{background:#e6eefd;color:#1d5bd8}
.pager{display:flex;justify-content:space-between;align-items:center;padding:12px 20px}
.notes{background:#fffaeb;border:1px solid #fedf89;color:#93370d;border-radius:8px;
padding:10px 14px;margin-bottom:16px}
.notes p{margin:2px 0}
.alert{border-radius:10px;padding:14px 18px;margin-bottom:18px;border:1px solid}
.alert.failed{background:#fef3f2;border-color:#fecdca;color:#912018}
.alert.compensated{background:#f4f3ff;border-color:#d9d6fe;color:#4a1fb8}
.alert strong{display:block;margin-bottom:4px}.alert pre+strong{margin-top:12px}
.alert pre{margin:6px 0 0;white-space:pre-wrap;word-break:break-word;font-size:12.5px}
.grid{display:grid;grid-template-columns:2fr 1fr;gap:18px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:8px 18px;margin:0}
dt{color:var(--muted)}dd{margin:0;min-width:0;word-break:break-word}
.timeline{display:block;max-width:100%;height:auto}
.timeline text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#344054}
.timeline .axis{fill:#98a2b3;font-size:11px}
.timeline .grid{stroke:#eaecf0;stroke-width:1}
.timeline .axis-line{stroke:#d0d5dd}.timeline .stripe{fill:#fafbfc}
.timeline .label.undo{fill:#93370d}.timeline .tag{fill:#98a2b3;font-size:11px}
.timeline .duration{fill:#667085;font-size:11px}.timeline .mark{fill:#d92d20;font-weight:700}
.timeline .row:hover .stripe,.timeline .row:hover rect.bar{opacity:.85}
.bar.act.completed{fill:#12b76a}.bar.compensate.completed{fill:#f79009}
.bar.failed{fill:#f04438}.bar.interrupted{fill:#d0d5dd;stroke:#98a2b3;stroke-dasharray:3 2}
.bar.running{fill:#2e6be6}
.legend{display:flex;flex-wrap:wrap;gap:16px;margin-top:10px;color:var(--muted);font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend .swatch{display:inline-block;width:14px;height:10px;border-radius:3px}
.swatch.act{background:#12b76a}.swatch.compensate{background:#f79009}
.swatch.failed{background:#f04438}.swatch.interrupted{background:#d0d5dd}
.swatch.running{background:#2e6be6}
pre{font-family:var(--mono);font-size:12.5px;margin:0}
pre.json{background:#0c111d;color:#e4e7ec;border-radius:8px;padding:14px 16px;overflow:auto;
max-height:520px;line-height:1.55}
td pre{white-space:pre-wrap;word-break:break-word}
td.error{color:#b42318;max-width:460px}td.result{max-width:320px}
details summary{cursor:pointer;color:var(--muted)}
.empty{padding:40px 20px;text-align:center;color:var(--muted)}
.problem{max-width:720px;margin:60px auto;text-align:center}
.problem .code{font-size:56px;font-weight:700;color:#d0d5dd;letter-spacing:-.02em}
.problem p{color:var(--muted)}
footer{max-width:1280px;margin:0 auto;padding:0 28px 28px;color:#98a2b3;font-size:12px}
@media (max-width:900px){.counts{grid-template-columns:repeat(4,minmax(0,1fr))}
.grid{grid-template-columns:1fr}.topbar .store{display:none}}
"""

#: The Content-Security-Policy source of the one style sheet.
STYLE_HASH: Final = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

_LOGO: Final = (
    '<svg width="22" height="22" viewBox="0 0 24 24" aria-hidden="true">'
    '<rect x="1" y="1" width="22" height="22" rx="6" fill="#4f46e5"/>'
    '<path d="M6 8h8M6 12h12M6 16h6" stroke="#fff" stroke-width="2.2" stroke-linecap="round"/>'
    '<circle cx="17" cy="8" r="1.6" fill="#a5b4fc"/><circle cx="15" cy="16" r="1.6" '
    'fill="#fda29b"/></svg>'
)

FAVICON: Final = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
    '<rect x="1" y="1" width="22" height="22" rx="6" fill="#4f46e5"/>'
    '<path d="M6 8h8M6 12h12M6 16h6" stroke="#fff" stroke-width="2.2" stroke-linecap="round"/>'
    "</svg>"
)

_STATUS_LABELS: Final = {status: status.value.capitalize() for status in STATUSES}


# Path segments the URL standard removes (browsers and curl fold ``/sagas/..``
# to ``/``; browsers treat ``%2e`` as a dot too): no encoding of these ids
# survives in a path, so their links carry the id in the query.
_DOT_SEGMENTS: Final = frozenset({".", ".."})


def saga_href(saga_id: str, *, api: bool = False, raw: bool = False) -> str:
    """The saga's page (``api``: its JSON): ``/sagas/<id>``, the id
    percent-encoded (``/`` included); ``/sagas?id=..`` for the ids ``.`` and
    ``..``, which a browser would fold out of the path. ``raw``: with
    ``raw=1``, the values as stored (a page asked raw links raw: a click
    from it showed the next page redacted again)."""
    return history_href(saga_id, 1, api=api, raw=raw)


def history_href(saga_id: str, page: int, *, api: bool = False, raw: bool = False) -> str:
    """The saga's page (``api``: its JSON) showing history page ``page`` (1:
    no parameter); ``raw``: as ``saga_href``."""
    base = "/api/sagas" if api else "/sagas"
    query: dict[str, str | int] = {}
    if saga_id in _DOT_SEGMENTS:
        query["id"] = saga_id
        href = base
    else:
        href = f"{base}/{quote(saga_id, safe='')}"
    if page != 1:
        query["page"] = page
    if raw:
        query["raw"] = 1
    return f"{href}?{urlencode(query)}" if query else href


def badge(status: SagaStatus | StepStatus) -> str:
    return f'<span class="badge {status.value}">{esc(status.value)}</span>'


def when(timestamp: float | None, now: float, *, precise: bool = False) -> str:
    """A UTC time with its age on hover (or the other way round)."""
    if timestamp is None:
        return '<span class="muted">&ndash;</span>'
    return (
        f'<span class="when" title="{esc(format_age(timestamp, now))}">'
        f"{esc(format_time(timestamp, precise=precise))}</span>"
    )


def layout(title: str, body: str, *, store_label: str, now: float, nav: str = "sagas") -> str:
    def item(key: str, href: str, text: str) -> str:
        return f'<a href="{href}"{" class=on" if key == nav else ""}>{text}</a>'

    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)} · fallback_saga console</title>"
        '<link rel="icon" href="/favicon.svg" type="image/svg+xml">'
        f"<style>{CSS}</style></head><body>"
        f'<header class="topbar"><a class="brand" href="/">{_LOGO}fallback_saga'
        '<span class="sub">console</span></a><nav>'
        + item("sagas", "/", "Sagas")
        + item("metrics", "/metrics", "Metrics")
        + item("api", "/api/sagas", "JSON API")
        + f'</nav><span class="store" title="the saga store this console reads">'
        f"{esc(store_label)}</span>"
        '<span class="pill" title="this console never writes to the store">read-only</span>'
        f"</header><main>{body}</main>"
        f"<footer>fallback_saga {esc(__version__)} · times in UTC · rendered "
        f"{esc(format_time(now))} UTC</footer></body></html>\n"
    )


# --------------------------------------------------------------------------- the listing


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
            f'<span class="what">{_STATUS_LABELS[status]}</span></a>'
        )
    exact = "" if listing.counts.exact else " title=\"approximate: see the note below\""
    return f'<section class="counts" aria-label="sagas by status"{exact}>{"".join(cards)}</section>'


def _filters(listing: Listing, query: ListQuery, default_limit: int) -> str:
    options = ['<option value="">Any</option>'] + [
        f'<option value="{s.value}"{" selected" if query.status is s else ""}>'
        f"{_STATUS_LABELS[s]}</option>"
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


def _parked_badge(claims: int, saga_id: str) -> str:
    # The command names the id shell-quoted (and cut, as _retry_hint does).
    return (f'<span class="badge failed">parked</span> '
            f"{esc(parked_text(claims, shorten(saga_id, 200)))}")


def _parked_note(claims: int | None, saga_id: str) -> str:
    """Under a listed saga's lease: parked, if the store parks it."""
    return "" if claims is None else "<br>" + _parked_badge(claims, saga_id)


def _duration(created: float, updated: float, status: SagaStatus, now: float) -> str:
    if status.is_final:
        return esc(format_seconds(max(updated - created, 0.0)))
    return f'<span class="muted">last step {esc(format_age(updated, now))}</span>'


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
            f"<td>{esc(shorten(s.saga_name, _NAME_SHOWN))}</td>"
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
        + " and ".join(_STATUS_LABELS[s].lower() for s in STATUSES if s in capped)
        + f" sagas {where}: their counts stop there (counting every one reads every "
        f'saga {where}). <a href="{esc(exact)}">Count them all</a></p>'
        if capped
        else ""
    )
    notes = (
        '<div class="notes">'
        + "".join(f"<p>{esc(note)}</p>" for note in listing.notes)
        + capped_note
        + "</div>"
        if listing.notes or capped_note
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


# --------------------------------------------------------------------------- one saga


def _lease_card(view: SagaView, now: float) -> str:
    lease = view.lease
    if lease is None:
        return (
            '<div class="card"><h2>Lease &amp; fencing</h2>'
            f'<p class="muted">Not available: {esc(view.lease_note or "unknown")}.</p></div>'
        )
    phase = lease_phase(lease, now)
    if phase == "held":
        until = (
            f"until {esc(format_time(lease.expires_at))} UTC "
            f"({esc(format_age(lease.expires_at, now))})"
            if lease.expires_at is not None
            else ""
        )
        state = f'<span class="badge running">held</span> {until}'
    elif phase == "expired":
        state = (
            '<span class="badge compensating">expired</span> '
            f"{esc(format_age(lease.expires_at or now, now))}"
        )
    elif phase == "released":
        state = '<span class="badge pending">released</span>'
    elif phase == "unreadable":
        state = (
            '<span class="badge failed">unreadable</span> the store holds something '
            "other than an owner, an expiry time and a fencing token for this lease"
        )
    else:
        state = '<span class="muted">never claimed by a recovery worker</span>'
    owner = (
        f'<span class="id">{esc(lease.owner)}</span>'
        if lease.owner is not None
        else '<span class="muted">&ndash;</span>'
    )
    return (
        '<div class="card"><h2>Lease &amp; fencing</h2><dl>'
        f"<dt>Lease</dt><dd>{state}</dd>"
        f"<dt>Owner</dt><dd>{owner}</dd>"
        f'<dt>Fencing token</dt><dd class="mono">{esc(lease.token)}</dd>'
        + (f"<dt>Parked</dt><dd>{_parked_badge(view.parked, view.record.saga_id)}</dd>"
           if view.parked is not None else "")
        + "</dl><p class=\"muted small\">Each claim by a recovery worker increments the "
        "fencing token; writes under an older token are refused.</p></div>"
    )


def _timeline_left_out(saga_id: str, entries: int) -> str:
    """In place of the timeline of a journal too long to read whole for a page."""
    command = f"{PYTHON_M} show {shlex.quote(saga_id)} --mermaid"
    return (
        f'<p class="muted">Not drawn for a journal of {entries:,} entries: this page reads '
        f"the page of history below and the newest entries only. The whole timeline: "
        f"<code>{esc(shorten(command, 300))}</code></p>"
    )


def _summary_card(
    record: SagaRecord, bars: Sequence[Bar], now: float, entries: int | None = None
) -> str:
    if record.status.is_final:
        duration = esc(format_seconds(max(record.updated_at - record.created_at, 0.0)))
    else:
        duration = (
            f"{esc(format_seconds(max(now - record.created_at, 0.0)))} so far "
            f'<span class="muted">(last step {esc(format_age(record.updated_at, now))})</span>'
        )
    def tally(action: str) -> str:
        if entries is not None:  # part of the journal read: no count of its tries
            return '<span class="muted">not counted</span>'
        done = sum(1 for bar in bars if bar.action == action and bar.outcome == "completed")
        failed = sum(1 for bar in bars if bar.action == action and bar.outcome == "failed")
        return f"{done} completed" + (f", {failed} failed" if failed else "")
    return (
        '<div class="card"><h2>Summary</h2><dl>'
        f"<dt>Saga name</dt><dd>{esc(shorten(record.saga_name, _NAME_SHOWN))}</dd>"
        f"<dt>Status</dt><dd>{badge(record.status)}</dd>"
        f"<dt>Started</dt><dd>{when(record.created_at, now, precise=True)} UTC</dd>"
        f"<dt>Last update</dt><dd>{when(record.updated_at, now, precise=True)} UTC</dd>"
        f"<dt>Duration</dt><dd>{duration}</dd>"
        f"<dt>Acts</dt><dd>{tally('act')}</dd>"
        f"<dt>Compensations</dt><dd>{tally('compensate')} "
        f'<span class="muted">({len(record.history) if entries is None else entries} '
        f"journal entries)</span></dd>"
        f'<dt>Version</dt><dd class="mono">{record.version}</dd>'
        f'<dt>Definition</dt><dd class="mono small" title="the fingerprint of the saga\'s '
        f'definition when it started">{esc(record.fingerprint)}</dd>'
        "</dl></div>"
    )


def _alert(record: SagaRecord) -> str:
    """What went wrong, at the top of a saga that did not complete."""
    if record.status not in (SagaStatus.FAILED, SagaStatus.COMPENSATED, SagaStatus.COMPENSATING):
        return ""
    failed_acts = [
        e for e in record.history if e.action == "act" and e.status is StepStatus.FAILED
    ]
    failed_undo = [
        e for e in record.history if e.action == "compensate" and e.status is StepStatus.FAILED
    ]
    parts = []
    if failed_acts:
        last = failed_acts[-1]
        parts.append(
            f"<strong>Step {esc(shorten(last.step, _NAME_SHOWN))}"
            f"{' (fallback)' if last.branch == 'fallback' else ''} failed; the saga "
            f"{'unwound' if record.status.is_final else 'is unwinding'}.</strong>"
            + _error_block(last.error)
        )
    if record.status is SagaStatus.FAILED:
        if failed_undo:
            last = failed_undo[-1]
            parts.append(
                f"<strong>Compensation of {esc(shorten(last.step, _NAME_SHOWN))} kept failing (try "
                f"{last.attempt}): an operator must finish undoing it.</strong>"
                + _error_block(last.error)
            )
            parts.append(_retry_hint(record.saga_id))
        else:
            parts.append("<strong>The saga needs an operator.</strong>")
            parts.append(_retry_hint(record.saga_id))
    if not parts:
        return ""
    kind = "failed" if record.status is SagaStatus.FAILED else "compensated"
    return f'<div class="alert {kind}" role="status">{"".join(parts)}</div>'


def _error_block(error: str | None) -> str:
    """A step's error text in the alert: redacted, then cut (never the other
    way round: a cut could leave part of a secret ``redact`` would hide)."""
    text = shorten(redact_start(error or "no error text", 2000), 2000)
    return f"<pre>{esc(text, keep_newlines=True)}</pre>"


def _retry_hint(saga_id: str) -> str:
    """What the operator does about a FAILED saga once its participant is
    fixed: finish the unwinding (reopening.py), never done on its own."""
    return (
        f"<p>Once the cause is fixed, finish the unwinding: <code>{esc(PYTHON_M)} "
        f"retry-unwinding {esc(shlex.quote(shorten(saga_id, 200)))} --app module:sagas</code> "
        "(with this store's <code>--db</code> or <code>--dsn</code>), or "
        "<code>retry_unwinding()</code>.</p>"
    )


#: Bytes of one error or result a history cell shows, and (escaped) of all
#: of a page's cells together: 200 entries of long errors made a page of
#: tens of megabytes. The JSON API has the whole texts.
CELL_SHOWN: Final = 4 * 1024
CELLS_SHOWN: Final = 192 * 1024


class _Budget:
    """What is left of a page's ``CELLS_SHOWN``."""

    def __init__(self) -> None:
        self.left = CELLS_SHOWN


def _cell_text(
    text: str, css: str, budget: _Budget, whole: str, *, secret: bool, limit: int = 160
) -> str:
    """A history cell: its first line, and the text, cut to what the page
    has room for with a marker saying how much more there is and where
    (``whole``: the JSON API's page with it). ``secret``: redacted before
    it is cut, so a cut never leaves part of a secret ``redact`` hides."""
    start = redact_start(text, CELL_SHOWN) if secret else text[: CELL_SHOWN + 1]
    if len(text) <= limit and "\n" not in text:
        return f'<td class="{css}"><pre>{esc(start)}</pre></td>'
    first = start.split("\n", 1)[0]
    shown, more = shown_start(text, max(0, min(CELL_SHOWN, budget.left)), secret=secret)
    escaped = esc(shown, keep_newlines=True)
    budget.left -= len(escaped)  # as sent: markup-heavy text escapes to several times its size
    marker = (
        f'<p class="muted small">… {more:,} more bytes; the whole text: '
        f'<a href="{esc(whole)}">{esc(whole)}</a></p>'
        if more
        else ""
    )
    return (
        f'<td class="{css}"><details><summary><pre>'
        f"{esc(shorten(first, limit))}</pre></summary>"
        + (f"<pre>{escaped}</pre>" if shown else "")
        + f"{marker}</details></td>"
    )


def _result_text(result: str) -> str:
    try:
        return json.dumps(parse_stored_json(result), ensure_ascii=False, separators=(", ", ": "))
    except ValueError:
        return result


def _history_pager(record: SagaRecord, page: int, raw: bool, total: int) -> str:
    """Where this page of the history is, and links to the others (none for
    a history that fits one page)."""
    if total <= HISTORY_PAGE:
        return ""
    pages = -(-total // HISTORY_PAGE)
    first = (page - 1) * HISTORY_PAGE
    last = min(first + HISTORY_PAGE, total) - 1

    def link(to: int, text: str, rel: str = "") -> str:
        if to == page or not 1 <= to <= pages:
            return f'<span class="muted small">{text}</span>'
        return (
            f'<a class="button"{f" rel={rel}" if rel else ""} '
            f'href="{esc(history_href(record.saga_id, to, raw=raw))}">{text}</a>'
        )

    return (
        '<nav class="pager" aria-label="history pages"><span class="actions">'
        + link(1, "« First")
        + link(page - 1, "← Earlier", "prev")
        + f'</span><span class="muted small">entries {first} to {last} of {total} '
        f"(page {page} of {pages})</span><span class=\"actions\">"
        + link(page + 1, "Later →", "next")
        + link(pages, "Last »")
        + "</span></nav>"
    )


def _history(
    record: SagaRecord, now: float, page: int = 1, raw: bool = False, start: int = 0,
    entries: int | None = None,
) -> str:
    """Page ``page`` of the history: of ``record.history``, or (``entries``
    given) that page itself, whose first entry is entry ``start`` of a
    journal of ``entries``."""
    if not record.history:
        return '<div class="empty">No journal entries.</div>'
    first = (page - 1) * HISTORY_PAGE
    if entries is None:
        origin = record.history[0].at
        shown = record.history[first : first + HISTORY_PAGE]
        # The same columns on every page: the Result column if any entry has one.
        results = any(len(entry) > 8 and entry[8] is not None for entry in record.history)
        entries = len(record.history)
    else:
        # The journal's first entry is not read: offsets from the saga's start.
        origin, shown, first = record.created_at, record.history, start
        results = any(len(entry) > 8 and entry[8] is not None for entry in shown)
    head = (
        '<th class="num">#</th><th>Time (UTC)</th><th class="num">+</th><th>Step</th>'
        "<th>Branch</th><th>Action</th><th>Status</th><th class=\"num\">Try</th><th>Error</th>"
        + ("<th>Result</th>" if results else "")
    )
    rows = []
    budget = _Budget()
    whole = history_href(record.saga_id, page, api=True, raw=raw)
    for seq, entry in enumerate(shown, start=first):
        result = entry[8] if len(entry) > 8 else None
        rows.append(
            "<tr>"
            f'<td class="num muted">{seq}</td>'
            f"<td>{when(entry.at, now, precise=True)}</td>"
            f'<td class="num muted small nowrap">{esc(format_seconds(entry.at - origin))}</td>'
            f'<td class="nowrap"><span class="muted">{entry.position + 1}.</span> '
            f"{esc(shorten(entry.step, _NAME_SHOWN))}</td>"
            f"<td>{esc(shorten(entry.branch, _NAME_SHOWN))}</td>"
            f"<td>{esc(shorten(entry.action, _NAME_SHOWN))}</td>"
            f"<td>{badge(entry.status)}</td>"
            f'<td class="num">{entry.attempt}</td>'
            + (
                _cell_text(entry.error, "error", budget, whole, secret=True)
                if entry.error
                else "<td></td>"
            )
            + (
                (
                    _cell_text(_result_text(result), "result", budget, whole, secret=False)
                    if result is not None
                    else "<td></td>"
                )
                if results
                else ""
            )
            + "</tr>"
        )
    pager = _history_pager(record, page, raw, entries)
    return (
        f'{pager}<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"{pager}"
    )


#: Bytes of a context's JSON its page shows: the JSON API has all of it.
CONTEXT_SHOWN: Final = 64 * 1024
#: Characters of a step or saga name shown (a hostile row may hold megabytes).
_NAME_SHOWN: Final = 200

_LEGEND: Final = (
    '<div class="legend"><span><span class="swatch act"></span>act completed</span>'
    '<span><span class="swatch compensate"></span>compensation completed</span>'
    '<span><span class="swatch failed"></span>failed</span>'
    '<span><span class="swatch interrupted"></span>cut off (no outcome journaled)</span>'
    '<span><span class="swatch running"></span>running</span>'
    "<span>hover a row for its details</span></div>"
)


def _family(view: SagaView, raw: bool) -> str:
    """Links to a child saga's parent and a parent's children (``SubSaga``);
    ``raw`` ones from a page asked raw."""
    parts = []
    if view.parent is not None:
        parts.append(
            f' &middot; child of <a class="id" href="{esc(saga_href(view.parent, raw=raw))}">'
            f"{esc(view.parent)}</a>"
        )
    if view.children:
        links = ", ".join(
            f'<a class="id" href="{esc(saga_href(child, raw=raw))}">{esc(child)}</a>'
            for child in view.children
        )
        # A long journal's page links the children of its own steps only.
        which = "child sagas" if view.entries is None else "child sagas of this page"
        parts.append(f" &middot; {which}: {links}")
    return "".join(parts)


def saga_page(
    view: SagaView, bars: list[Bar], *, store_label: str, now: float, page: int = 1,
    raw: bool = False,
) -> str:
    """The saga's page, with page ``page`` of its history (``query.history_page``);
    ``raw``: the page was asked with ``raw=1``, and its links to sagas keep it."""
    record = view.record
    context, more = cut_bytes(
        json.dumps(record.context, indent=2, ensure_ascii=False, default=str), CONTEXT_SHOWN
    )
    api_href = saga_href(record.saga_id, api=True, raw=raw)
    context_more = (
        f'<p class="muted small">… {more:,} more bytes of JSON; the whole context: '
        f'<a href="{esc(api_href)}">{esc(api_href)}</a> (its <code>context</code>), '
        f"or <code>python -m fallback_saga show ID --json</code></p>"
        if more
        else ""
    )
    body = (
        f'<nav class="crumbs"><a href="/">Sagas</a> &rsaquo; <span class="id">{esc(record.saga_id)}'
        "</span></nav>"
        f'<div class="head"><div><h1 class="id">{esc(record.saga_id)}</h1>'
        f'<div class="sub">{esc(shorten(record.saga_name, _NAME_SHOWN))} {badge(record.status)}'
        + _family(view, raw)
        + "</div></div>"
        f'<a class="button" href="{esc(api_href)}">View as JSON</a></div>'
        + _alert(record if view.entries is None else dataclasses.replace(
            record, history=view.newest))
        + '<section class="grid">'
        + _summary_card(record, bars, now, view.entries)
        + _lease_card(view, now)
        + "</section>"
        + '<section class="card" aria-label="timeline"><h2>Timeline</h2>'
        + (
            timeline_svg(record, bars) + (_LEGEND if bars else "")
            if view.entries is None
            else _timeline_left_out(record.saga_id, view.entries)
        )
        + "</section>"
        + '<section class="card table" aria-label="history"><h2>History</h2>'
        + _history(record, now, page, raw, view.first, view.entries)
        + "</section>"
        + '<section class="card" aria-label="context"><h2>Context</h2>'
        + f'<pre class="json">{esc(context, keep_newlines=True)}</pre>{context_more}</section>'
    )
    return layout(f"Saga {shorten(record.saga_id, 60)}", body, store_label=store_label, now=now)


def error_page(
    status: int, heading: str, message: str, *, store_label: str, now: float
) -> str:
    body = (
        f'<div class="problem"><div class="code">{status}</div><h1>{esc(heading)}</h1>'
        f'<p>{esc(message)}</p><p><a class="button" href="/">Back to the sagas</a></p></div>'
    )
    return layout(heading, body, store_label=store_label, now=now)
