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
        if error.name is not None and module_name.startswith(error.name):
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

    Solid edges are the forward path. A dashed, labelled edge leads from a
    Fallback's primary to its fallback. Dotted edges are the compensation
    path: a failing step hands over to the compensation of the step before it,
    and compensations run in reverse down to the first step.
    """
    definition: SagaDefinition = saga_class.definition
    items = definition.items
    lines = [f"flowchart {direction}"]
    emit = lines.append
    emit(f"    start([{_text(definition.saga_name)}])")
    emit("    completed([COMPLETED])")
    emit("    compensated([COMPENSATED, or FAILED if a compensation keeps failing])")

    emit("    %% forward: act, in order")
    previous_exits = ["start"]
    for item in items:
        pos = item.position
        if isinstance(item, FallbackSpec):
            emit(f'    s{pos}["{_primary_label(item)}"]')
            emit(f'    s{pos}fb["{_branch_label(item.fallback, "fallback")}"]')
            entries, exits = [f"s{pos}"], [f"s{pos}", f"s{pos}fb"]
        else:
            emit(f'    s{pos}["{_branch_label(item, "")}"]')
            entries, exits = [f"s{pos}"], [f"s{pos}"]
        for source in previous_exits:
            for target in entries:
                emit(f"    {source} --> {target}")
        if isinstance(item, FallbackSpec):
            emit(f'    s{pos} -. "{_fallback_edge_label(item)}" .-> s{pos}fb')
        previous_exits = exits
    for source in previous_exits:
        emit(f"    {source} --> completed")

    emit("    %% backward: compensate, last completed step first")
    # The last step is never compensated: if it fails it did not complete,
    # and if it completes the saga is done.
    for item in items[:-1]:
        pos = item.position
        if isinstance(item, FallbackSpec):
            emit(f'    u{pos}["undo {_text(item.primary.name)}"]')
            emit(f'    u{pos}fb["undo {_text(item.fallback.name)}"]')
        else:
            emit(f'    u{pos}["undo {_text(item.name)}"]')
    for index, item in enumerate(items):
        landing = _undo_nodes(items[index - 1]) if index > 0 else ["compensated"]
        pos = item.position
        if isinstance(item, FallbackSpec):
            failing = [(f"s{pos}fb", "fails")]
            if item.rule.failure_exceptions:
                failing.insert(0, (f"s{pos}", "other error"))
        else:
            failing = [(f"s{pos}", "fails")]
        for source, label in failing:
            for target in landing:
                emit(f'    {source} -. "{label}" .-> {target}')
    for index in range(len(items) - 2, -1, -1):
        lower = _undo_nodes(items[index - 1]) if index > 0 else ["compensated"]
        for source in _undo_nodes(items[index]):
            for target in lower:
                emit(f"    {source} -.-> {target}")
    return "\n".join(lines) + "\n"


def _undo_nodes(item: BranchSpec | FallbackSpec) -> list[str]:
    # Only the branch that ran is compensated: one of the two nodes.
    if isinstance(item, FallbackSpec):
        return [f"u{item.position}", f"u{item.position}fb"]
    return [f"u{item.position}"]


def _branch_label(branch: BranchSpec, role: str) -> str:
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


def _fallback_edge_label(item: FallbackSpec) -> str:
    rule = item.rule
    kinds = rule.failure_exceptions
    trigger = " / ".join(kind.__name__ for kind in kinds) if kinds else "any Exception"
    if rule.circuit_breaker is not None:
        trigger += " / circuit open"
    return _text(trigger)


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
    except UsageError as error:
        sys.stderr.write(f"{parser.prog}: error: {error}\n")
        return EXIT_USAGE
    return status
