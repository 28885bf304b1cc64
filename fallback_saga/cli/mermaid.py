"""Mermaid drawings: a saga class as a flowchart (``graph``), a saga's journal
as a gantt timeline (``show --mermaid``).

Labels are escaped for Mermaid (``#quot;`` and friends) and, in the gantt,
made safe for a terminal first (``terminal_text``): stored names are user
data.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..definition import BranchSpec, FallbackSpec, SagaDefinition
from ..saga import Saga
from ..status import StepStatus
from ..store.base import SagaRecord
from .text import MAX_CELL, MAX_VALUE, terminal_text

__all__ = ["mermaid_flowchart", "mermaid_gantt"]


# --------------------------------------------------------------------------- flowchart


def mermaid_flowchart(saga_class: type[Saga[Any]], direction: str = "TD") -> str:
    """A Mermaid ``flowchart`` of a saga: steps in order, fallbacks, the way back.

    Solid edges are the forward path. A dashed edge, labelled with what
    triggers it, leads from a Fallback's primary to its fallback. Dotted edges
    are the compensation path: a failing step hands over to the compensation
    of the step before it, and compensations run in reverse down to the first
    step. A Fallback's two undo nodes are alternatives: only the branch that
    ran is compensated.
    """
    definition: SagaDefinition = saga_class.definition
    items = definition.items
    chart = _Chart(direction)
    chart.node("start", definition.saga_name, shape="stadium")

    chart.line('    subgraph forward ["act, in order"]')
    for item in items:
        pos = item.position
        if isinstance(item, FallbackSpec):
            chart.node(f"s{pos}", _primary_label(item), markup=True, indent=8)
            chart.node(f"s{pos}fb", _branch_label(item.fallback, "fallback"), markup=True, indent=8)
        else:
            chart.node(f"s{pos}", _branch_label(item, ""), markup=True, indent=8)
    chart.line("    end")

    # The last step is never compensated: if it fails it did not complete,
    # and if it completes the saga is done.
    if len(items) > 1:
        chart.line('    subgraph backward ["compensate, in reverse"]')
        for item in reversed(items[:-1]):
            pos = item.position
            if isinstance(item, FallbackSpec):
                chart.node(f"u{pos}", f"undo {item.primary.name}", indent=8)
                chart.node(f"u{pos}fb", f"undo {item.fallback.name}", indent=8)
            else:
                chart.node(f"u{pos}", f"undo {item.name}", indent=8)
        chart.line("    end")
    chart.node("completed", "COMPLETED", shape="stadium")
    chart.node("compensated", "COMPENSATED, or FAILED if a compensation gave up", shape="stadium")

    previous = ["start"]
    for item in items:
        pos = item.position
        for source in previous:
            chart.edge(source, f"s{pos}")
        if isinstance(item, FallbackSpec):
            chart.edge(f"s{pos}", f"s{pos}fb", kind="fallback", label=_fallback_trigger(item))
            previous = [f"s{pos}", f"s{pos}fb"]
        else:
            previous = [f"s{pos}"]
    for source in previous:
        chart.edge(source, "completed")

    for index, item in enumerate(items):
        landing = _undo_nodes(items[index - 1]) if index > 0 else ["compensated"]
        pos = item.position
        failing = [(f"s{pos}", "fails")]
        if isinstance(item, FallbackSpec):
            failing = [(f"s{pos}fb", "fails")]
            if item.rule.failure_exceptions:  # an error outside them skips the fallback
                failing.insert(0, (f"s{pos}", "other error"))
        for source, label in failing:
            for target in landing:
                chart.edge(source, target, kind="undo", label=label)
    for index in range(len(items) - 2, -1, -1):
        lower = _undo_nodes(items[index - 1]) if index > 0 else ["compensated"]
        for source in _undo_nodes(items[index]):
            for target in lower:
                chart.edge(source, target, kind="undo")
    return chart.render()


class _Chart:
    """Collects Mermaid lines and numbers the edges (``linkStyle`` needs indices)."""

    def __init__(self, direction: str) -> None:
        self.lines = [f"flowchart {direction}"]
        self.edges = 0
        self.styled: dict[str, list[int]] = {"fallback": [], "undo": []}

    def line(self, text: str) -> None:
        self.lines.append(text)

    def node(
        self, node_id: str, label: str, *, markup: bool = False, shape: str = "box", indent: int = 4
    ) -> None:
        """A node; ``label`` is plain text, or Mermaid markup already escaped (``markup``)."""
        text = label if markup else _text(label)
        opening, closing = ('(["', '"])') if shape == "stadium" else ('["', '"]')
        self.lines.append(f"{' ' * indent}{node_id}{opening}{text}{closing}")

    def edge(self, source: str, target: str, *, kind: str = "forward", label: str = "") -> None:
        arrow = "-->" if kind == "forward" else "-.->"
        text = f'|"{_text(label)}"|' if label else ""
        self.lines.append(f"    {source} {arrow}{text} {target}")
        if kind in self.styled:
            self.styled[kind].append(self.edges)
        self.edges += 1

    def render(self) -> str:
        lines = self.lines
        if self.styled["fallback"]:
            indices = ",".join(map(str, self.styled["fallback"]))
            lines.append(f"    linkStyle {indices} stroke-dasharray: 8 4")
        if self.styled["undo"]:
            indices = ",".join(map(str, self.styled["undo"]))
            lines.append(f"    linkStyle {indices} stroke-dasharray: 2 3")
        return "\n".join(lines) + "\n"


def _undo_nodes(item: BranchSpec | FallbackSpec) -> list[str]:
    # Only the branch that ran is compensated: one of the two nodes.
    if isinstance(item, FallbackSpec):
        return [f"u{item.position}", f"u{item.position}fb"]
    return [f"u{item.position}"]


def _branch_label(branch: BranchSpec, role: str) -> str:
    # Returns Mermaid markup: the name is escaped here, the <br/> and <i> are real.
    parts = [_text(branch.name)]
    if role:
        parts.append(f"<i>{role}</i>")
    if branch.timeout is not None:
        parts.append(f"timeout {branch.timeout:g} s")
    return "<br/>".join(parts)


def _primary_label(item: FallbackSpec) -> str:
    label = _branch_label(item.primary, "primary")
    rule = item.rule
    if rule.retry is not None:
        label += f"<br/>retry: {rule.retry.attempts} attempts"
    breaker = rule.circuit_breaker
    if breaker is not None:
        name = getattr(breaker, "name", None) or type(breaker).__name__
        label += f"<br/>circuit breaker: {_text(str(name))}"
    return label


def _fallback_trigger(item: FallbackSpec) -> str:
    rule = item.rule
    kinds = rule.failure_exceptions
    trigger = " / ".join(kind.__name__ for kind in kinds) if kinds else "any Exception"
    if rule.circuit_breaker is not None:
        trigger += " / circuit open"
    return trigger


def _text(text: str) -> str:
    """Escape what Mermaid would read as syntax inside a quoted label."""
    for raw, entity in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(raw, entity)
    return text


# --------------------------------------------------------------------------- gantt


@dataclasses.dataclass(slots=True)
class _Bar:
    action: str
    label: str
    start: float
    end: float | None = None
    outcome: str = "open"  # "completed", "failed", "interrupted" or "open"


def _gantt_label(text: str, limit: int = MAX_CELL) -> str:
    # ':' ends a Mermaid task's name, ';' ends a statement, '#' starts an entity.
    return re.sub(r"[:;#]", " ", terminal_text(text, limit)).strip() or "step"


def mermaid_gantt(record: SagaRecord) -> str:
    """A Mermaid ``gantt`` timeline of a saga's journal.

    One bar per ``act`` or ``compensate`` try, from its STARTED row to its
    terminal row, in two sections (forward, compensation): completed bars are
    ``done``, failed ones ``crit``. A try with no terminal row was cut off (a
    crash): its bar runs to the next row of the journal (the resumed run), or
    to the saga's last update, and is ``active``.
    """
    bars: list[_Bar] = []
    running: dict[tuple[int, str, str, int], _Bar] = {}
    for entry in record.history:
        key = (entry.position, entry.branch, entry.action, entry.attempt)
        if entry.status is StepStatus.STARTED:
            # One call runs at a time: a try still open when another starts was cut off.
            for cut_off in running.values():
                cut_off.end, cut_off.outcome = entry.at, "interrupted"
            running.clear()
            label = entry.step if entry.attempt == 1 else f"{entry.step} try {entry.attempt}"
            running[key] = _Bar(entry.action, _gantt_label(label), entry.at)
            bars.append(running[key])
            continue
        bar = running.pop(key, None)
        if bar is None:  # a terminal row without its STARTED (an edited journal)
            bar = _Bar(entry.action, _gantt_label(entry.step), entry.at)
            bars.append(bar)
        bar.end = entry.at
        bar.outcome = "completed" if entry.status is StepStatus.COMPLETED else "failed"
    for unfinished in running.values():
        unfinished.end = max(unfinished.start, record.updated_at)
        if record.status.is_final:
            unfinished.outcome = "interrupted"
    title = (
        f"{terminal_text(record.saga_name)} {terminal_text(record.saga_id)} "
        f"({record.status.value})"
    )
    lines = [
        "gantt",
        f"    title {_gantt_label(title, MAX_VALUE)}",
        "    dateFormat x",
        "    axisFormat %H:%M:%S.%L",
        "    todayMarker off",
    ]
    tags = {
        "completed": "done, ",
        "failed": "crit, ",
        "interrupted": "active, ",
        "open": "active, ",
    }
    suffix = {"interrupted": " (cut off)", "open": " (no outcome yet)"}
    number = 0
    for action, section in (("act", "forward"), ("compensate", "compensation")):
        chosen = [bar for bar in bars if bar.action == action]
        if not chosen:
            continue
        lines.append(f"    section {section}")
        for bar in chosen:
            start = round(bar.start * 1000)
            end = round((bar.end if bar.end is not None else bar.start) * 1000)
            length = max(end - start, 1)  # a zero-length bar would not show
            label = bar.label + suffix.get(bar.outcome, "")
            lines.append(f"    {label} :{tags[bar.outcome]}t{number}, {start}, {length}ms")
            number += 1
    return "\n".join(lines) + "\n"
