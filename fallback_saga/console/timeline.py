"""A saga's journal as a timeline: one bar per try of an ``act`` or a
``compensate``, drawn in SVG on the server (no script, no external resource)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..status import StepStatus
from ..store.base import JournalEntry, SagaRecord
from .text import attr, esc, format_seconds, redact_start, shorten

__all__ = ["Bar", "bars_json", "bars_of", "page_bars", "timeline_svg"]

# Outcomes of a try: its terminal row, or why it has none.
COMPLETED: Final = "completed"
FAILED: Final = "failed"
# Cut off: a crash (a later row, or a final status, ended it), or a group
# member cancelled while it ran (CANCELLED: its effect is uncertain, and it
# is compensated) — an outcome the journal does not know, not a failure.
INTERRUPTED: Final = "interrupted"
RUNNING: Final = "running"  # no outcome yet: the saga is still in flight


_OUTCOMES: Final = {StepStatus.COMPLETED: COMPLETED, StepStatus.CANCELLED: INTERRUPTED}


@dataclass(slots=True)
class Bar:
    position: int
    step: str
    branch: str
    action: str
    attempt: int
    start: float
    end: float
    outcome: str
    error: str | None = None
    seq: int = 0  # the journal row that began it (its STARTED row, or its only one)


def bars_of(record: SagaRecord, now: float) -> list[Bar]:
    """One bar per try, from its STARTED row to its terminal row, in journal order.

    Tries of different steps may overlap (a parallel group). A try whose
    STARTED row has no terminal row was cut off (a crash): it ends where the
    same try starts again (the resumed run), or else at the next row of the
    journal once the saga is final; while the saga is in flight, it is
    still running.
    """
    bars, running, _ = _tries(record.history, 0)
    _settle(record, running, now)
    return bars


def page_bars(
    record: SagaRecord, first: int, entries: int, page_first: int, page_count: int, now: float
) -> tuple[list[Bar], int]:
    """The tries that begin on a page of a long journal (entries ``page_first``
    .. ``page_first + page_count - 1``), as ``bars_of`` draws them from the
    whole journal, from a window of it: ``record.history`` holds entries
    ``first`` .. of a journal of ``entries``, the page and the entries read
    after it. A try whose end the window does not reach (it ends further on,
    or the window stops short of the journal's end) is left out, not guessed:
    returned is how many were. A terminal row with no STARTED row in the
    window is part of a try begun before the page: not drawn here."""
    bars, running, orphans = _tries(record.history, first)
    if first + len(record.history) >= entries:
        _settle(record, running, now)
        unended: set[int] = set()
    else:
        unended = {id(bar) for bar, _ in running.values()}
    stop = page_first + page_count
    shown: list[Bar] = []
    left_out = 0
    for bar in bars:
        if not page_first <= bar.seq < stop or id(bar) in orphans:
            continue
        if id(bar) in unended:
            left_out += 1
        else:
            shown.append(bar)
    return shown, left_out


_Key = tuple[int, str, str, int]


def _tries(
    history: Sequence[JournalEntry], base: int
) -> tuple[list[Bar], dict[_Key, tuple[Bar, int]], set[int]]:
    """The tries of ``history`` (its first entry: seq ``base``), those still
    without a terminal row at its end (by try, with their index in
    ``history``), and the ids of the bars begun by a terminal row without
    its STARTED row."""
    bars: list[Bar] = []
    running: dict[_Key, tuple[Bar, int]] = {}
    orphans: set[int] = set()
    for index, entry in enumerate(history):
        key = (entry.position, entry.branch, entry.action, entry.attempt)
        if entry.status is StepStatus.STARTED:
            again = running.pop(key, None)
            if again is not None:  # the same try starts again: the first was cut off
                cut_off, _ = again
                cut_off.end, cut_off.outcome = max(cut_off.start, entry.at), INTERRUPTED
            bar = Bar(entry.position, entry.step, entry.branch, entry.action, entry.attempt,
                      entry.at, entry.at, RUNNING, seq=base + index)
            running[key] = (bar, index)
            bars.append(bar)
            continue
        found = running.pop(key, None)
        if found is None:  # a terminal row without its STARTED (an edited journal)
            bar = Bar(entry.position, entry.step, entry.branch, entry.action, entry.attempt,
                      entry.at, entry.at, RUNNING, seq=base + index)
            orphans.add(id(bar))
            bars.append(bar)
        else:
            bar = found[0]
        bar.end = max(bar.start, entry.at)
        bar.outcome = _OUTCOMES.get(entry.status, FAILED)
        bar.error = entry.error
    return bars, running, orphans


def _settle(record: SagaRecord, running: dict[_Key, tuple[Bar, int]], now: float) -> None:
    """Ends the tries with no terminal row in a history that reaches the
    journal's end: cut off if the saga is final, else running until ``now``."""
    history = record.history
    for bar, index in running.values():
        if record.status.is_final:
            following = history[index + 1].at if index + 1 < len(history) else record.updated_at
            bar.end, bar.outcome = max(bar.start, following), INTERRUPTED
        else:
            bar.end = max(bar.start, now)


def bars_json(bars: list[Bar]) -> list[dict[str, Any]]:
    return [
        {
            "position": bar.position,
            "step": bar.step,
            "branch": bar.branch,
            "action": bar.action,
            "attempt": bar.attempt,
            "start": bar.start,
            "end": bar.end,
            "outcome": bar.outcome,
            "error": bar.error,
            "seq": bar.seq,
        }
        for bar in bars
    ]


# --------------------------------------------------------------------------- drawing

WIDTH: Final = 1000
LABELS: Final = 250  # the label column
RIGHT: Final = 90  # room for the duration printed after the last bar
AXIS: Final = 30
ROW: Final = 26
BAR: Final = 14
MAX_ROWS: Final = 300

_OUTCOME_TEXT: Final = {
    COMPLETED: "completed",
    FAILED: "failed",
    INTERRUPTED: "cut off (no outcome journaled)",
    RUNNING: "running (no outcome yet)",
}


def _tick_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10.0 * magnitude


def _tick_text(seconds: float) -> str:
    """``20 ms`` rather than ``20.0 ms`` on the axis."""
    number, _, unit = format_seconds(seconds).partition(" ")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {unit}"


def _label(bar: Bar) -> str:
    label = f"{bar.position + 1}. {bar.step}"
    if bar.action == "compensate":
        label = f"↩ {label}"
    return label


def _tags(bar: Bar) -> str:
    tags = []
    if bar.branch == "fallback":
        tags.append("fallback")
    if bar.attempt > 1:
        tags.append(f"try {bar.attempt}")
    return " · ".join(tags)


def timeline_svg(record: SagaRecord, bars: list[Bar]) -> str:
    """The SVG element (inline in the page: styled by the page's classes)."""
    if not bars:
        return '<p class="muted">No step has been journaled yet.</p>'
    shown = bars[:MAX_ROWS]
    origin = min(bar.start for bar in shown)
    span = max(max(bar.end for bar in shown) - origin, 1e-3)
    plot = WIDTH - LABELS - RIGHT
    height = AXIS + ROW * len(shown) + 8
    scale = plot / span
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' viewBox="0 0 {WIDTH} {height}" width="100%" preserveAspectRatio="xMinYMin meet"'
        f' aria-labelledby="timeline-title">',
        f'<title id="timeline-title">Timeline of saga {esc(record.saga_id)}: '
        f"{len(bars)} tries of its steps</title>",
    ]
    # Row stripes, then the grid and its time labels.
    for index in range(len(shown)):
        if index % 2:
            out.append(
                f'<rect class="stripe" x="0" y="{AXIS + index * ROW}" width="{WIDTH}"'
                f' height="{ROW}"/>'
            )
    step = _tick_step(span)
    for index in range(int(span / step * 1.0001) + 1):
        tick = index * step
        x = LABELS + tick * scale
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height - 4}"/>'
        )
        out.append(
            f'<text class="axis" x="{x:.1f}" y="{AXIS - 12}" text-anchor="middle">'
            f"{'0' if tick == 0 else '+' + _tick_text(tick)}</text>"
        )
    out.append(
        f'<line class="axis-line" x1="{LABELS}" y1="{AXIS - 6}" x2="{WIDTH - RIGHT}"'
        f' y2="{AXIS - 6}"/>'
    )
    for index, bar in enumerate(shown):
        top = AXIS + index * ROW
        middle = top + ROW / 2
        x = LABELS + (bar.start - origin) * scale
        width = max((bar.end - bar.start) * scale, 3.0)
        duration = bar.end - bar.start
        # Redacted before the cut, which could leave part of a secret.
        error = shorten(redact_start(bar.error, 300), 300) if bar.error else None
        detail = (
            f"{shorten(bar.step, 200)} ({shorten(bar.branch, 40)}) {shorten(bar.action, 40)}, "
            f"try {bar.attempt}: "
            f"{_OUTCOME_TEXT[bar.outcome]}"
            f"{'' if bar.outcome == RUNNING else ' after ' + format_seconds(duration)}"
            f"{chr(10) + 'error: ' + error if error else ''}"
        )
        tags = _tags(bar)
        out.append('<g class="row">')
        out.append(f"<title>{esc(detail)}</title>")
        out.append(
            f'<text class="label{" undo" if bar.action == "compensate" else ""}" x="10"'
            f' y="{middle + 4:.1f}">{esc(shorten(_label(bar), 30 if tags else 38))}'
            + (f'<tspan class="tag" dx="6">{esc(tags)}</tspan>' if tags else "")
            + "</text>"
        )
        out.append(
            f'<rect class="bar {attr(bar.action)} {attr(bar.outcome)}" x="{x:.1f}"'
            f' y="{middle - BAR / 2:.1f}" width="{width:.1f}" height="{BAR}" rx="3"/>'
        )
        if bar.outcome == FAILED:
            out.append(
                f'<text class="mark" x="{x + width + 4:.1f}" y="{middle + 4:.1f}">✕</text>'
            )
        text_x = x + width + (18 if bar.outcome == FAILED else 6)
        out.append(
            f'<text class="duration" x="{text_x:.1f}" y="{middle + 4:.1f}">'
            f"{esc(format_seconds(duration)) if bar.outcome != RUNNING else 'running…'}</text>"
        )
        out.append("</g>")
    out.append("</svg>")
    if len(bars) > MAX_ROWS:
        out.append(
            f'<p class="muted">The first {MAX_ROWS} of {len(bars)} tries are drawn '
            f"({len(bars) - MAX_ROWS} are not); the history below, page by page, lists "
            f"every journal entry.</p>"
        )
    return "".join(out)
