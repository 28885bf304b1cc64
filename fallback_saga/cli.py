"""``python -m fallback_saga``: a demo, and a Mermaid drawing of any saga.

    python -m fallback_saga demo                      run the demo order saga, print a trace
    python -m fallback_saga graph module:SagaClass    print a Mermaid flowchart of a saga
    python -m fallback_saga --version

Exit status: 0 on success, 2 on a usage error (a bad ``module:attr`` spec, an
object that is not a ``Saga`` subclass).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .definition import BranchSpec, FallbackSpec, SagaDefinition
from .saga import Saga

__all__ = ["main", "mermaid_flowchart"]

EXIT_OK = 0
EXIT_BROKEN_PIPE = 1  # what Python itself returns when stdout's reader goes away
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: printed as ``fallback-saga: error: ...``, exit status 2."""


# --------------------------------------------------------------------------- graph


def load_saga_class(spec: str) -> type[Saga[Any]]:
    """Import ``module:Attr`` (``Attr`` may be dotted) and check it is a Saga subclass."""
    module_name, colon, attr_path = spec.partition(":")
    if not colon or not module_name or not attr_path:
        raise UsageError(f"expected module:SagaClass (e.g. myapp.sagas:OrderSaga), got {spec!r}")
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
    if not (isinstance(target, type) and issubclass(target, Saga)):
        raise UsageError(f"{spec} is {target!r}, not a Saga subclass")
    if getattr(target, "definition", None) is None:
        raise UsageError(f"{spec} declares no steps (an abstract Saga base)")
    return target


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


# --------------------------------------------------------------------------- commands


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # imported on use: only the demo needs it

    return run_demo()


def _run_graph(args: argparse.Namespace) -> int:
    saga_class = load_saga_class(args.saga)
    chart = mermaid_flowchart(saga_class, direction=args.direction)
    if args.markdown:
        chart = f"```mermaid\n{chart}```\n"
    sys.stdout.write(chart)
    return EXIT_OK


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
        description="Run a small order saga against the default store (MemorySagaStore) and "
        "print a trace: a flaky primary and its fallback, a circuit breaker opening, a late "
        "failure unwinding in reverse, then the journal. Simulated clock: instant.",
    )
    demo.set_defaults(handler=_run_demo)

    graph = commands.add_parser(
        "graph",
        help="print a Mermaid flowchart of a saga class",
        description="Import module:SagaClass and print a Mermaid flowchart of its steps, "
        "fallbacks, circuit breakers and compensation path.",
    )
    graph.add_argument("saga", metavar="module:SagaClass", help="e.g. myapp.sagas:OrderSaga")
    graph.add_argument(
        "--direction", choices=("TD", "LR"), default="TD", help="layout (default: TD)"
    )
    graph.add_argument(
        "--markdown", action="store_true", help="wrap the chart in a ```mermaid fence"
    )
    graph.set_defaults(handler=_run_graph)
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
    try:
        status: int = args.handler(args)
        sys.stdout.flush()
    except UsageError as error:
        sys.stderr.write(f"{parser.prog}: error: {error}\n")
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `python -m fallback_saga demo | head`
        # Python would complain again when flushing stdout at exit: point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status
