"""``graph module:SagaClass``: a Mermaid flowchart of a saga class."""

from __future__ import annotations

import argparse
import sys

from .errors import EXIT_OK
from .mermaid import mermaid_flowchart
from .targets import load_saga_class

__all__ = ["add_graph_command"]


def add_graph_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    graph.set_defaults(handler=run_graph)


def run_graph(args: argparse.Namespace) -> int:
    saga_class = load_saga_class(args.saga)
    chart = mermaid_flowchart(saga_class, direction=args.direction)
    if args.markdown:
        chart = f"```mermaid\n{chart}```\n"
    sys.stdout.write(chart)
    return EXIT_OK
