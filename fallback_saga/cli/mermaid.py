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

from ..definition import BranchSpec, FallbackSpec, GroupSpec, ItemSpec, SagaDefinition
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
    ran is compensated. A ``Parallel`` group forks into its members and joins
    when all completed; when one fails, the members that ran are undone (in
    any order) before the steps before the group.
    """
    definition: SagaDefinition = saga_class.definition
    items = definition.items
    units = [_unit(item) for item in items]
    chart = _Chart(direction)
    chart.node("start", definition.saga_name, shape="stadium")

    chart.line('    subgraph forward ["act, in order"]')
    for item in items:
        if isinstance(item, GroupSpec):
            first = item.members[0].position
            chart.line(f'        subgraph g{first} ["in parallel"]')
            chart.node(f"fork{first}", "fork", indent=12)
            for member in item.members:
                _step_nodes(chart, member, indent=12)
            chart.node(f"join{first}", "join: every member completed", indent=12)
            chart.line("        end")
        else:
            _step_nodes(chart, item, indent=8)
    chart.line("    end")

    # The last step is never compensated: if it fails it did not complete,
    # and if it completes the saga is done. (A group's members are: one may
    # complete while a sibling fails.)
    undone = [unit for unit in units[:-1]] + [u for u in units[-1:] if u.group is not None]
    if undone:
        chart.line('    subgraph backward ["compensate, in reverse"]')
        for item in reversed([unit.item for unit in undone]):
            if isinstance(item, GroupSpec):
                first = item.members[0].position
                chart.line(f'        subgraph g{first}u ["the members that ran, any order"]')
                for member in item.members:
                    _undo_node_lines(chart, member, indent=12)
                chart.line("        end")
            else:
                _undo_node_lines(chart, item, indent=8)
        chart.line("    end")
    chart.node("completed", "COMPLETED", shape="stadium")
    chart.node("compensated", "COMPENSATED, or FAILED if a compensation gave up", shape="stadium")

    previous = ["start"]
    for unit in units:
        for source in previous:
            for target in unit.entry:
                chart.edge(source, target)
        for source, target, kind, label in unit.inner:
            chart.edge(source, target, kind=kind, label=label)
        previous = unit.exits
    for source in previous:
        chart.edge(source, "completed")

    for index, unit in enumerate(units):
        landing = units[index - 1].undo if index > 0 else ["compensated"]
        # A group member fails: its siblings that ran are undone first.
        for part in unit.members or [unit]:
            siblings = [
                node for other in unit.members if other is not part for node in other.undo
            ]
            for source, label in part.failing:
                for target in siblings or landing:
                    chart.edge(source, target, kind="undo", label=label)
    for index in range(len(units) - 1, -1, -1):
        if index == len(units) - 1 and units[index].group is None:
            continue  # (the last step has no undo node)
        lower = units[index - 1].undo if index > 0 else ["compensated"]
        for source in units[index].undo:
            for target in lower:
                chart.edge(source, target, kind="undo")
    return chart.render()


@dataclasses.dataclass(slots=True)
class _Unit:
    """One element of ``steps`` as the flowchart draws it."""

    item: ItemSpec
    entry: list[str]  # the nodes the previous element leads to
    exits: list[str]  # the nodes that lead on once it completed
    undo: list[str]  # its undo nodes (alternatives for a Fallback; each member's for a group)
    failing: list[tuple[str, str]]  # (node, label): where it fails
    inner: list[tuple[str, str, str, str]]  # its own edges: (source, target, kind, label)
    group: GroupSpec | None = None
    members: list[_Unit] = dataclasses.field(default_factory=list)  # a group's


def _unit(item: ItemSpec) -> _Unit:
    if isinstance(item, GroupSpec):
        first = item.members[0].position
        members = [_unit(member) for member in item.members]
        inner: list[tuple[str, str, str, str]] = []
        for member in members:
            inner += [(f"fork{first}", target, "forward", "") for target in member.entry]
            inner += member.inner
            inner += [(source, f"join{first}", "forward", "") for source in member.exits]
        return _Unit(
            item, [f"fork{first}"], [f"join{first}"],
            [node for member in members for node in member.undo],
            [failing for member in members for failing in member.failing],
            inner, item, members,
        )
    pos = item.position
    if isinstance(item, FallbackSpec):
        failing = [(f"s{pos}fb", "fails")]
        if item.rule.failure_exceptions:  # an error outside them skips the fallback
            failing.insert(0, (f"s{pos}", "other error"))
        return _Unit(
            item, [f"s{pos}"], [f"s{pos}", f"s{pos}fb"], _undo_nodes(item), failing,
            [(f"s{pos}", f"s{pos}fb", "fallback", _fallback_trigger(item))],
        )
    return _Unit(item, [f"s{pos}"], [f"s{pos}"], _undo_nodes(item), [(f"s{pos}", "fails")], [])


def _step_nodes(chart: _Chart, item: BranchSpec | FallbackSpec, indent: int) -> None:
    pos = item.position
    if isinstance(item, FallbackSpec):
        chart.node(f"s{pos}", _primary_label(item), markup=True, indent=indent)
        chart.node(f"s{pos}fb", _branch_label(item.fallback, "fallback"), markup=True,
                   indent=indent)
    else:
        chart.node(f"s{pos}", _branch_label(item, ""), markup=True, indent=indent)


def _undo_node_lines(chart: _Chart, item: BranchSpec | FallbackSpec, indent: int) -> None:
    pos = item.position
    if isinstance(item, FallbackSpec):
        chart.node(f"u{pos}", f"undo {item.primary.name}", indent=indent)
        chart.node(f"u{pos}fb", f"undo {item.fallback.name}", indent=indent)
    else:
        chart.node(f"u{pos}", f"undo {item.name}", indent=indent)


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


def _group_positions(record: SagaRecord) -> set[int]:
    """Positions the journal shows running side by side: acts STARTED while
    another act of a different position was still open (a group's members)."""
    found: set[int] = set()
    open_acts: dict[int, int] = {}  # position -> open tries
    for entry in record.history:
        if entry.action != "act":
            continue
        if entry.status is StepStatus.STARTED:
            others = [p for p, n in open_acts.items() if n and p != entry.position]
            if others:
                found.update(others)
                found.add(entry.position)
            # One position runs one try at a time: a try of it still open was
            # cut off (a crash), and the resumed run starts it again. Counted
            # open, it would make the steps after it look like a group.
            open_acts[entry.position] = 1
        elif open_acts.get(entry.position):
            open_acts[entry.position] -= 1
    return found


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
    parallel = _group_positions(record)
    for entry in record.history:
        key = (entry.position, entry.branch, entry.action, entry.attempt)
        if entry.status is StepStatus.STARTED:
            # Outside a Parallel group one call runs at a time: a try still open
            # when another starts was cut off. A group's members overlap.
            if entry.position not in parallel or entry.action == "compensate":
                for cut_off in running.values():
                    cut_off.end, cut_off.outcome = entry.at, "interrupted"
                running.clear()
            again = running.pop(key, None)
            if again is not None:  # the same try starts again: the first was cut off
                again.end, again.outcome = entry.at, "interrupted"
            label = entry.step if entry.attempt == 1 else f"{entry.step} try {entry.attempt}"
            running[key] = _Bar(entry.action, _gantt_label(label), entry.at)
            bars.append(running[key])
            continue
        bar = running.pop(key, None)
        if bar is None:  # a terminal row without its STARTED (an edited journal)
            bar = _Bar(entry.action, _gantt_label(entry.step), entry.at)
            bars.append(bar)
        bar.end = entry.at
        bar.outcome = {
            StepStatus.COMPLETED: "completed", StepStatus.CANCELLED: "interrupted"
        }.get(entry.status, "failed")
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
