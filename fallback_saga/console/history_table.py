"""A page of a saga's history as a table, with the pager between its pages.

Its error and result cells are cut to what the page has room for
(``CELL_SHOWN``, ``CELLS_SHOWN``): the JSON API has the whole texts.
"""

from __future__ import annotations

import json
from typing import Final

from ..store.base import SagaRecord
from ..stored_json import parse_stored_json
from .layout import NAME_SHOWN, badge, when
from .links import history_href
from .query import HISTORY_PAGE
from .text import esc, format_seconds, redact_start, shorten, shown_start

__all__ = ["CELLS_SHOWN", "CELL_SHOWN", "history_table"]

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


def history_table(
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
            f"{esc(shorten(entry.step, NAME_SHOWN))}</td>"
            f"<td>{esc(shorten(entry.branch, NAME_SHOWN))}</td>"
            f"<td>{esc(shorten(entry.action, NAME_SHOWN))}</td>"
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
