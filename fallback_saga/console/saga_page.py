"""One saga's page: what went wrong, its summary and lease, its timeline,
a page of its history and its context."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Sequence
from typing import Final

from ..command_line import PYTHON_M
from ..status import SagaStatus, StepStatus
from ..store.base import SagaRecord
from .history_table import history_table
from .layout import NAME_SHOWN, badge, layout, parked_badge, when
from .lease import lease_phase
from .links import saga_href
from .saga_view import SagaView
from .text import cut_bytes, esc, format_age, format_seconds, format_time, redact_start, shorten
from .timeline import Bar, timeline_svg

__all__ = ["CONTEXT_SHOWN", "saga_page"]

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
        + (f"<dt>Parked</dt><dd>{parked_badge(view.parked, view.record.saga_id)}</dd>"
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
        f"<dt>Saga name</dt><dd>{esc(shorten(record.saga_name, NAME_SHOWN))}</dd>"
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
            f"<strong>Step {esc(shorten(last.step, NAME_SHOWN))}"
            f"{' (fallback)' if last.branch == 'fallback' else ''} failed; the saga "
            f"{'unwound' if record.status.is_final else 'is unwinding'}.</strong>"
            + _error_block(last.error)
        )
    if record.status is SagaStatus.FAILED:
        if failed_undo:
            last = failed_undo[-1]
            parts.append(
                f"<strong>Compensation of {esc(shorten(last.step, NAME_SHOWN))} kept failing (try "
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


#: Bytes of a context's JSON its page shows: the JSON API has all of it.
CONTEXT_SHOWN: Final = 64 * 1024

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
        f'<div class="sub">{esc(shorten(record.saga_name, NAME_SHOWN))} {badge(record.status)}'
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
        + history_table(record, now, page, raw, view.first, view.entries)
        + "</section>"
        + '<section class="card" aria-label="context"><h2>Context</h2>'
        + f'<pre class="json">{esc(context, keep_newlines=True)}</pre>{context_more}</section>'
    )
    return layout(f"Saga {shorten(record.saga_id, 60)}", body, store_label=store_label, now=now)
