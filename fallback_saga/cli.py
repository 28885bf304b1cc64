"""``python -m fallback_saga``: the demo, a Mermaid drawing of any saga, and the
operator commands for a SQLite saga store.

    python -m fallback_saga demo [--db PATH]            run the demo order saga, print a trace
    python -m fallback_saga graph module:SagaClass      print a Mermaid flowchart of a saga
    python -m fallback_saga list --db PATH              list the sagas in a store
    python -m fallback_saga show ID --db PATH           one saga and its step history
    python -m fallback_saga recover --db PATH --app module:attr   resume interrupted sagas
    python -m fallback_saga purge --db PATH --older-than 7d       delete old finished sagas
    python -m fallback_saga --version

``graph`` and ``recover --app`` import the module they name: that runs its
top-level code (and, for ``recover``, its factory) with the operator's
privileges. Name only trusted modules.

Every stored value a human format prints (saga ids, names, owners, step
names, error texts) goes through ``terminal_text``: control characters and
other unprintable ones escaped, long values cut. ``--json`` prints exact JSON.

Exit status: 0 on success; 1 when ``recover`` left a saga failed or skipped, or
the store failed; 2 on a usage error (a bad ``module:attr`` spec, a ``--db``
that is missing or not a saga store, an unknown saga id).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import pathlib
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeGuard

from . import __version__
from .definition import BranchSpec, FallbackSpec, SagaDefinition
from .errors import SagaNotFound, SagaStoreError
from .recovery import RecoveryReport, recover
from .saga import Saga
from .status import SagaStatus, StepStatus
from .store._common import short_repr
from .store.base import SagaRecord, SagaSummary
from .store.sqlite import SQLiteSagaStore

__all__ = ["main", "mermaid_flowchart", "mermaid_gantt", "parse_duration", "terminal_text"]

EXIT_OK = 0
EXIT_FAILURE = 1  # also what Python itself returns when stdout's reader goes away
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: printed as ``fallback-saga: error: ...``, exit status 2."""


# --------------------------------------------------------------------------- module:attr


def _import_target(spec: str, example: str) -> object:
    """Import ``module:attr`` (``attr`` may be dotted) and return the attribute."""
    module_name, colon, attr_path = spec.partition(":")
    if not colon or not module_name or not attr_path:
        raise UsageError(f"expected module:attr (e.g. {example}), got {spec!r}")
    # Like ``python -m``: modules in the current directory are importable
    # (the ``fallback-saga`` console script would not see them otherwise).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise UsageError(f"no module named {module_name!r}") from error
        raise UsageError(f"importing {module_name!r} failed: {error}") from error
    except Exception as error:  # the module itself raised, e.g. SagaDefinitionError
        raise UsageError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    return target


def _is_saga_class(target: object) -> TypeGuard[type[Saga[Any]]]:
    return isinstance(target, type) and issubclass(target, Saga)


def load_saga_class(spec: str) -> type[Saga[Any]]:
    """Import ``module:Attr`` (``Attr`` may be dotted) and check it is a Saga subclass."""
    target = _import_target(spec, "myapp.sagas:OrderSaga")
    if not (isinstance(target, type) and issubclass(target, Saga)):
        raise UsageError(f"{spec} is {target!r}, not a Saga subclass")
    if getattr(target, "definition", None) is None:
        raise UsageError(f"{spec} declares no steps (an abstract Saga base)")
    return target


# --------------------------------------------------------------------------- graph


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


# --------------------------------------------------------------------------- durations

_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"12h"``, ``"7d"`` (``1.5h`` too) as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: give seconds (90) or a number with a unit "
            f"(30s, 15m, 12h, 7d)"
        )
    return float(match[1]) * _SECONDS_PER_UNIT[match[2]]


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration`` for display: ``604800.0`` is ``7d``."""
    for unit in ("d", "h", "m"):
        size = _SECONDS_PER_UNIT[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# --------------------------------------------------------------------------- the store


def check_store_file(path: str) -> None:
    """Refuse (``UsageError``) a ``--db`` that is not an existing saga store.

    Checked read-only, before ``SQLiteSagaStore`` opens the file: the store
    would create a missing file, and migrate (add its tables to, switch to WAL)
    any other SQLite database it is pointed at.
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file (--db takes an existing saga store)")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a SQLite database")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{path} is an empty file, not a saga store")
    uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as error:
        raise UsageError(f"cannot open {path}: {error}") from None
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sagas'"
        ).fetchone()
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise UsageError(f"{path} is not a SQLite database") from None
        raise UsageError(f"cannot read {path}: {error}") from None
    finally:
        conn.close()
    if found is None:
        raise UsageError(f"{path} is a SQLite database, but not a fallback_saga saga store")


@contextlib.asynccontextmanager
async def open_store(path: str) -> AsyncIterator[SQLiteSagaStore]:
    """An existing saga store, opened now and always closed."""
    check_store_file(path)
    store = SQLiteSagaStore(path)
    try:
        await store.open()
        yield store
    finally:
        await store.close()


# --------------------------------------------------------------------------- formatting

# How many characters of one value a human format shows (an ellipsis marks a
# cut): a table cell, and a value on a line of its own (show's header, an
# error text, a recover report line). ``--json`` always has the whole value.
MAX_CELL = 48
MAX_VALUE = 200
MAX_CONTEXT = 2000
_MAX_PATH = 4096  # the operator's own --db: never cut in practice, still escaped


def terminal_text(value: object, limit: int = MAX_CELL) -> str:
    """``value`` as text that is safe to print to an operator's terminal.

    Every stored value (saga ids, names, owners, step names, error texts) is
    whatever a program or a user put there. Characters that are not
    printable — C0 and C1 control characters (an ESC starts a terminal
    command), DEL, bidirectional overrides and isolates (they reorder what
    follows), other format characters, lone surrogates, line and paragraph
    separators — are shown escaped, as ``\\x1b``, ``\\u202e``; a value
    longer than ``limit`` characters is cut, with an ellipsis. Every value
    the human formats print goes through here.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():  # the common case, at C speed
        return text
    pieces: list[str] = []
    length = 0
    for char in text:  # at most about ``limit`` characters are looked at
        piece = char if char.isprintable() else _escaped(char)
        if length + len(piece) > limit:
            # Cut on a whole character (never inside an escape); the ellipsis
            # takes the last place.
            while length > limit - 1:
                length -= len(pieces.pop())
            return "".join(pieces) + "…"
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _json_text(text: str) -> str:
    """JSON text (already valid) with every character a terminal could act on
    written as a JSON escape: ``json.dumps`` escapes C0 controls itself, not
    DEL, C1 controls, bidi overrides or lone surrogates. The JSON means
    exactly the same; readable non-ASCII text stays readable."""
    if all(line.isprintable() for line in text.split("\n")):
        return text
    return "".join(
        char if char == "\n" or char.isprintable() else _json_escape(char) for char in text
    )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a JSON string escapes it as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _when(timestamp: float | None, *, precise: bool = False) -> str:
    """Unix time as UTC text (``precise``: with milliseconds)."""
    if timestamp is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}" if precise else text


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> list[str]:
    """Plain-text columns: a header, a rule, the rows (``right``: right-aligned columns)."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *map(line, rows)]


def _lease_text(summary: SagaSummary, now: float) -> str:
    if summary.lease_owner is None:
        return "-"
    owner = terminal_text(summary.lease_owner)
    expires = summary.lease_expires_at
    if expires is not None and expires < now:
        return f"{owner} (expired)"
    return owner


def summary_table(summaries: Sequence[SagaSummary], *, times: bool = True) -> list[str]:
    """The ``list`` table (``times=False``: id, saga and status only)."""
    if not times:
        rows = [
            [terminal_text(s.saga_id), terminal_text(s.saga_name), s.status.value]
            for s in summaries
        ]
        return render_table(["id", "saga", "status"], rows)
    now = time.time()
    rows = [
        [
            terminal_text(s.saga_id),
            terminal_text(s.saga_name),
            s.status.value,
            _when(s.created_at),
            _when(s.updated_at),
            _lease_text(s, now),
        ]
        for s in summaries
    ]
    headers = ["id", "saga", "status", "created (UTC)", "updated (UTC)", "lease owner"]
    return render_table(headers, rows)


def history_table(record: SagaRecord, *, times: bool = True) -> list[str]:
    """The step history of ``show`` (``times=False``: without the time column)."""
    headers = ["seq", "pos", "step", "branch", "action", "status", "try"]
    if times:
        headers.append("time (UTC)")
    headers.append("error")
    rows = []
    for seq, entry in enumerate(record.history):
        row = [
            str(seq),
            str(entry.position),
            terminal_text(entry.step),
            terminal_text(entry.branch),
            terminal_text(entry.action),
            entry.status.value,
            str(entry.attempt),
        ]
        if times:
            row.append(_when(entry.at, precise=True))
        row.append(terminal_text(entry.error or "", MAX_VALUE))
        rows.append(row)
    return render_table(headers, rows, right=(0, 1, 6))


def _summary_json(summary: SagaSummary) -> dict[str, Any]:
    data = dataclasses.asdict(summary)
    data["status"] = summary.status.value
    return data


def _record_json(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga_id": record.saga_id,
        "saga_name": record.saga_name,
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "context": record.context,
        "history": [
            {
                "seq": seq,
                "position": entry.position,
                "step": entry.step,
                "branch": entry.branch,
                "action": entry.action,
                "status": entry.status.value,
                "attempt": entry.attempt,
                "error": entry.error,
                "at": entry.at,
            }
            for seq, entry in enumerate(record.history)
        ],
    }


def _print_json(data: object) -> None:
    sys.stdout.write(_json_text(json.dumps(data, indent=2, ensure_ascii=False)) + "\n")


def _print_lines(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))


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


# --------------------------------------------------------------------------- list, show, purge


def _run_list(args: argparse.Namespace) -> int:
    status = None if args.status is None else SagaStatus(args.status)

    async def fetch() -> list[SagaSummary]:
        async with open_store(args.db) as store:
            # One more than asked: tells whether the listing was cut short.
            return await store.list_sagas(status=status, saga_name=args.name, limit=args.limit + 1)

    summaries = asyncio.run(fetch())
    more = len(summaries) > args.limit
    summaries = summaries[: args.limit]
    if args.json:
        _print_json([_summary_json(summary) for summary in summaries])
        return EXIT_OK
    if not summaries:
        filters = args.status is not None or args.name is not None
        where = "match" if filters else "in " + terminal_text(args.db, _MAX_PATH)
        sys.stdout.write(f"no sagas {where}\n")
        return EXIT_OK
    lines = summary_table(summaries)
    if more:
        lines.append(f"(the newest {args.limit} shown; more match: raise --limit)")
    else:
        lines.append(f"({len(summaries)} saga{'' if len(summaries) == 1 else 's'}, newest first)")
    _print_lines(lines)
    return EXIT_OK


def _run_show(args: argparse.Namespace) -> int:
    async def fetch() -> SagaRecord:
        async with open_store(args.db) as store:
            try:
                return await store.load(args.saga_id)
            except SagaNotFound:
                raise UsageError(
                    f"no saga with id {short_repr(args.saga_id)} in {args.db}"
                ) from None
            except ValueError as error:  # not a saga id at all (empty, too long, ...)
                raise UsageError(str(error)) from None

    record = asyncio.run(fetch())
    if args.json:
        _print_json(_record_json(record))
        return EXIT_OK
    if args.mermaid:
        sys.stdout.write(mermaid_gantt(record))
        return EXIT_OK
    # The context stays JSON (unsafe characters as JSON escapes), cut if long.
    context = _json_text(json.dumps(record.context, ensure_ascii=False))
    lines = [
        f"saga         {terminal_text(record.saga_id, MAX_VALUE)}",
        f"name         {terminal_text(record.saga_name, MAX_VALUE)}",
        f"status       {record.status.value}",
        f"created      {_when(record.created_at, precise=True)} UTC",
        f"updated      {_when(record.updated_at, precise=True)} UTC",
        f"version      {record.version}",
        f"fingerprint  {terminal_text(record.fingerprint, MAX_VALUE)}",
        f"context      {terminal_text(context, MAX_CONTEXT)}",
        "",
    ]
    lines += history_table(record) if record.history else ["(no step history)"]
    _print_lines(lines)
    return EXIT_OK


def _run_purge(args: argparse.Namespace) -> int:
    async def purge() -> int:
        async with open_store(args.db) as store:
            return await store.purge(older_than=args.older_than)

    count = asyncio.run(purge())
    age = format_duration(args.older_than)
    sys.stdout.write(
        f"purged {count} finished saga{'' if count == 1 else 's'} "
        f"(completed, compensated or failed, last updated more than {age} ago)\n"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- recover

_APP_CONTRACT = (
    "a factory sagas(store) (or async def) returning the Saga instances built "
    "with that store, or a Saga subclass (or a list of them) built as cls(store=store)"
)


SagaFactory = Callable[[SQLiteSagaStore], object]


def load_app(spec: str) -> SagaFactory:
    """Import ``--app`` and return it as a factory ``(store) -> sagas``.

    The attribute is a factory already, or a Saga subclass (or a list/tuple of
    them) that the returned factory builds as ``cls(store=store)``.
    """
    target = _import_target(spec, "myapp.recovery:sagas")
    items = list(target) if isinstance(target, (list, tuple)) else [target]
    saga_classes = [item for item in items if _is_saga_class(item)]
    if items and len(saga_classes) == len(items):
        for saga_class in saga_classes:
            if getattr(saga_class, "definition", None) is None:
                raise UsageError(f"{saga_class.__name__} declares no steps (an abstract Saga base)")

        def build(store: SQLiteSagaStore) -> object:
            return [saga_class(store=store) for saga_class in saga_classes]

        return build
    if any(isinstance(item, Saga) for item in items):
        raise UsageError(
            f"{spec} is a saga instance, but recovery must use sagas built with the store it "
            f"opens: expose {_APP_CONTRACT}"
        )
    if isinstance(target, type):
        raise UsageError(f"{spec} is the class {target.__name__}; expected {_APP_CONTRACT}")
    if callable(target):
        return target
    raise UsageError(f"{spec} is {_short(target)}; expected {_APP_CONTRACT}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def build_app_sagas(
    spec: str, factory: SagaFactory, store: SQLiteSagaStore
) -> list[Saga[Any]]:
    """The saga instances that ``--app`` builds on ``store``, checked."""
    try:
        made = factory(store)
        if inspect.isawaitable(made):
            made = await made
    except Exception as error:  # the app's own code failed
        raise UsageError(
            f"{spec}: building the sagas failed: {type(error).__name__}: {error}"
        ) from None
    if isinstance(made, Saga):
        made = [made]
    if isinstance(made, (str, bytes)) or not isinstance(made, Iterable):
        raise UsageError(f"{spec}(store) returned {_short(made)}, not a list of Saga instances")
    sagas: list[Saga[Any]] = []
    for saga in made:
        if not isinstance(saga, Saga):
            raise UsageError(f"{spec}(store) returned {_short(saga)}, which is not a Saga instance")
        if saga.store is not store:
            # Resumed with it, a saga would be journaled in another store.
            raise UsageError(
                f"{spec}: {saga.name} was built with another store "
                f"({type(saga.store).__name__}); build it with the store given to the factory"
            )
        sagas.append(saga)
    if not sagas:
        raise UsageError(f"{spec}(store) returned no sagas")
    return sagas


def _run_recover(args: argparse.Namespace) -> int:
    app = load_app(args.app)  # before opening the store: a bad --app touches nothing
    if args.lease <= 0:
        raise UsageError("--lease must be longer than 0 seconds")

    def progress(saga_id: str, outcome: str) -> None:
        sys.stdout.write(f"  {terminal_text(saga_id, MAX_VALUE)}: {terminal_text(outcome)}\n")
        sys.stdout.flush()

    async def run() -> RecoveryReport:
        _warn_before_interrupting()
        async with open_store(args.db) as store:
            sagas = await build_app_sagas(args.app, app, store)
            names = terminal_text(", ".join(saga.name for saga in sagas), MAX_CONTEXT)
            sys.stdout.write(
                f"recovering sagas in {terminal_text(args.db, _MAX_PATH)} not updated for "
                f"{format_duration(args.older_than)} (at most {args.limit}, lease "
                f"{format_duration(args.lease)}) with {names}\n"
            )
            sys.stdout.flush()
            try:
                return await recover(
                    store,
                    sagas,
                    older_than=args.older_than,
                    limit=args.limit,
                    lease=args.lease,
                    progress=progress,
                )
            except (TypeError, ValueError) as error:  # e.g. two sagas of one name
                raise UsageError(str(error)) from None

    try:
        report = asyncio.run(run())
    except asyncio.CancelledError:  # the second Ctrl-C
        raise KeyboardInterrupt from None
    _print_lines(report_lines(report))
    # A saga left interrupted (the journal could not be written) needs another pass.
    unfinished = report.failed or report.skipped or getattr(report, "interrupted", None)
    return EXIT_FAILURE if unfinished else EXIT_OK


def report_lines(report: RecoveryReport) -> list[str]:
    """The lines of ``str(report)`` (the report's own format), with every
    saga id and reason in it made safe to print (``terminal_text``)."""
    safe: dict[str, Any] = {}
    for item in dataclasses.fields(report):
        value = getattr(report, item.name)
        if isinstance(value, list):
            safe[item.name] = [
                tuple(terminal_text(part, MAX_VALUE) for part in entry)
                if isinstance(entry, tuple)
                else terminal_text(entry, MAX_VALUE)
                for entry in value
            ]
    return str(dataclasses.replace(report, **safe)).split("\n")


def _warn_before_interrupting() -> None:
    """Make the first Ctrl-C a warning, the second the interrupt.

    A resumed saga that is cancelled unwinds (S8): interrupting ``recover``
    would compensate sagas that were about to complete. Where the loop cannot
    handle signals (Windows, a thread other than the main one), Ctrl-C
    interrupts at once.
    """
    task = asyncio.current_task()
    assert task is not None
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            task.cancel()
            return
        sys.stderr.write(
            "recover: finishing the sagas being resumed; interrupting them would compensate "
            "them. Press Ctrl-C again to interrupt anyway.\n"
        )
        sys.stderr.flush()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_interrupt)


# --------------------------------------------------------------------------- demo, graph


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # imported on use: only the demo needs it

    if args.db is not None and os.path.exists(args.db):
        raise UsageError(
            f"{args.db} already exists; the demo writes a new database "
            f"(remove it or choose another path)"
        )
    return run_demo(db=args.db)


def _run_crash_demo(args: argparse.Namespace) -> int:
    from ._demo import run_crash_child

    return run_crash_child(args.db, args.saga_id, args.city, args.crash_in)


def _run_graph(args: argparse.Namespace) -> int:
    saga_class = load_saga_class(args.saga)
    chart = mermaid_flowchart(saga_class, direction=args.direction)
    if args.markdown:
        chart = f"```mermaid\n{chart}```\n"
    sys.stdout.write(chart)
    return EXIT_OK


# --------------------------------------------------------------------------- the parser

_RECOVER_EPILOG = """\
--app module:attr names what to resume the sagas with, built on the store this
command opens.

Security: --app IMPORTS the module and so RUNS CODE: its top-level code, then
the factory, with your privileges (the current directory is on the import
path). Name only a module you trust, as you would before running it with
python. The saga store's contents are data and never run.

The attribute is either a factory, called with the open SQLiteSagaStore, that
returns the Saga instances (sync or async):

    def sagas(store):
        return [OrderSaga(store=store, step_factory=container.build)]

or a Saga subclass, or a list of them, which are built as cls(store=store).
Each interrupted saga is resumed with the saga of the same name.

Exit status: 0 if every saga claimed was completed or compensated; 1 if one
ended FAILED (a compensation gave up: an operator is needed) or was skipped
(unknown saga name, changed definition, unreadable row); 2 on a usage error.
"""


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", required=True, metavar="PATH", help="the saga store (a SQLite file)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fallback-saga" if _invoked_as_script() else "python -m fallback_saga",
        description="fallback_saga: resilient multi-step transactions for asyncio.",
    )
    parser.add_argument("--version", action="version", version=f"fallback_saga {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a demo order saga and print its trace",
        description="Run a small order saga and print a trace: a flaky primary and its "
        "fallback, a circuit breaker opening, a late failure unwinding in reverse, then the "
        "journal. Simulated clock: instant. With --db, the sagas are journaled in a new SQLite "
        "file, and two more orders run in a child process that dies mid-saga; this process "
        "then recovers them.",
    )
    demo.add_argument(
        "--db", metavar="PATH", help="journal in a new SQLite file and show a crash recovered"
    )
    demo.set_defaults(handler=_run_demo)

    crash = commands.add_parser("_crash-demo")  # no help=: hidden from the command list
    crash.add_argument("--db", required=True)
    crash.add_argument("--saga-id", required=True)
    crash.add_argument("--city", required=True)
    crash.add_argument("--crash-in", required=True, choices=("courier", "refund"))
    crash.set_defaults(handler=_run_crash_demo)

    graph = commands.add_parser(
        "graph",
        help="print a Mermaid flowchart of a saga class",
        description="Import module:SagaClass and print a Mermaid flowchart of its steps, "
        "fallbacks, circuit breakers and compensation path. Importing runs the module's "
        "top-level code with your privileges: name only a module you trust.",
    )
    graph.add_argument("saga", metavar="module:SagaClass", help="e.g. myapp.sagas:OrderSaga")
    graph.add_argument(
        "--direction", choices=("TD", "LR"), default="TD", help="layout (default: TD)"
    )
    graph.add_argument(
        "--markdown", action="store_true", help="wrap the chart in a ```mermaid fence"
    )
    graph.set_defaults(handler=_run_graph)

    listing = commands.add_parser(
        "list",
        help="list the sagas in a SQLite saga store",
        description="List sagas, newest first: id, saga name, status, created and updated "
        "times (UTC) and the recovery lease, if any.",
    )
    _add_db(listing)
    listing.add_argument(
        "--status", choices=[status.value for status in SagaStatus], type=str.lower,
        help="only sagas with this status",
    )
    listing.add_argument("--name", metavar="N", help="only sagas of this saga class name")
    listing.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N (default 100)"
    )
    listing.add_argument(
        "--json", action="store_true",
        help="a JSON array of {saga_id, saga_name, status, created_at, updated_at, "
        "lease_owner, lease_expires_at} (times in Unix seconds)",
    )
    listing.set_defaults(handler=_run_list)

    show = commands.add_parser(
        "show",
        help="show one saga and its step history",
        description="Show a saga's header (status, times, fingerprint, context) and every "
        "journaled transition of its steps.",
    )
    show.add_argument("saga_id", metavar="ID", help="the saga id")
    _add_db(show)
    form = show.add_mutually_exclusive_group()
    form.add_argument(
        "--json", action="store_true",
        help="the record as JSON: the header fields, context and history",
    )
    form.add_argument(
        "--mermaid", action="store_true",
        help="a Mermaid gantt timeline: a bar per act/compensate try, failed ones marked crit",
    )
    show.set_defaults(handler=_run_show)

    recovering = commands.add_parser(
        "recover",
        help="resume the interrupted sagas of a SQLite saga store",
        description="Claim interrupted sagas (RUNNING or COMPENSATING, not updated for\n"
        "--older-than) with a lease, resume each with the app's saga of the same name,\n"
        "and print a line per saga and a report.",
        epilog=_RECOVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_db(recovering)
    recovering.add_argument(
        "--app", required=True, metavar="module:attr",
        help="the sagas to resume with (see below). This imports the module and runs its "
        "code with your privileges: trusted modules only",
    )
    recovering.add_argument(
        "--older-than", type=parse_duration, default=60.0, metavar="AGE",
        help="only sagas not updated for AGE: 90, 30s, 15m, 12h, 7d (default 60s)",
    )
    recovering.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N",
        help="resume at most N sagas (default 100)",
    )
    recovering.add_argument(
        "--lease", type=parse_duration, default=300.0, metavar="TIME",
        help="how long each claimed saga is reserved for this process (default 300s)",
    )
    recovering.set_defaults(handler=_run_recover)

    purge = commands.add_parser(
        "purge",
        help="delete finished sagas older than an age",
        description="Delete completed, compensated and failed sagas (and their history) "
        "last updated more than AGE ago. Running and compensating sagas are never deleted.",
    )
    _add_db(purge)
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="AGE",
        help="90 (seconds), 30s, 15m, 12h, 7d",
    )
    purge.set_defaults(handler=_run_purge)
    return parser


def _invoked_as_script() -> bool:
    return os.path.basename(sys.argv[0]) in ("fallback-saga", "fallback-saga.exe")


def main(argv: Sequence[str] | None = None) -> int:
    """The command-line entry point; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help and --version (0), usage errors (2)
        if stop.code is None:
            return EXIT_OK
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()
    except UsageError as error:
        sys.stderr.write(f"{parser.prog}: error: {terminal_text(error, MAX_CONTEXT)}\n")
        return EXIT_USAGE
    except SagaStoreError as error:  # the store failed, or a row cannot be read back
        sys.stderr.write(f"{parser.prog}: error: {terminal_text(error, MAX_CONTEXT)}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `python -m fallback_saga demo | head`
        # Python would complain again when flushing stdout at exit: point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return status
