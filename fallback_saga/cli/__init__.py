"""``python -m fallback_saga``: the demo, a Mermaid drawing of any saga, and the
operator commands for a saga store (SQLite or PostgreSQL).

    python -m fallback_saga demo [--db PATH]            run the demo order saga, print a trace
    python -m fallback_saga graph module:SagaClass      print a Mermaid flowchart of a saga
    python -m fallback_saga list --db PATH              list the sagas in a store
    python -m fallback_saga show ID --db PATH           one saga and its step history
    python -m fallback_saga recover --db PATH --app module:attr   resume interrupted sagas
    python -m fallback_saga resume ID --db PATH --app module:attr
                                                        resume one interrupted (or parked) saga
    python -m fallback_saga retry-unwinding ID --db PATH --app module:attr
                                                        finish a FAILED saga's unwinding
    python -m fallback_saga purge --db PATH --older-than 7d       delete old finished sagas
    python -m fallback_saga serve --db PATH [--port 8080]         the read-only web console
    python -m fallback_saga --version

Every store command takes ``--db PATH`` (SQLite) or ``--dsn DSN`` (PostgreSQL,
with ``--schema``), or reads ``$FALLBACK_SAGA_DSN`` / ``$FALLBACK_SAGA_DB``
(``stores.py``). ``list`` and ``show`` only read: they need no write access
and leave no files behind; ``serve`` opens the store read-only.

``graph`` and the ``--app`` of ``recover``, ``resume`` and ``retry-unwinding``
import the module they name: that runs its top-level code (and, for the
last three, its factory) with the operator's privileges. Name only trusted
modules.

Every stored value a human format prints (saga ids, names, owners, step
names, error texts) goes through ``terminal_text``: control characters and
other unprintable ones escaped, long values cut. ``--json`` prints exact JSON.
So does every error line (argparse's, a command's own, a store's message),
redacted first (``shown_text.redact``): it may quote what the operator typed.

Exit status: 0 on success (``serve``: stopped by Ctrl-C or SIGTERM); 1 when
``recover`` left a saga failed or skipped, ``resume`` left it failed or
interrupted, ``retry-unwinding`` left it failed again (or either found it
leased, or its definition changed), the store failed (a PostgreSQL server
that cannot be reached included), or ``serve`` cannot listen (the port is
in use); 2 on a usage error (a bad ``module:attr`` spec, no store given, a
``--db`` or ``--dsn`` that is not a saga store, an unknown saga id, a saga
``resume`` refuses as not RUNNING or COMPENSATING, or ``retry-unwinding`` as
not FAILED, a ``--host`` that is no address of this machine).

The package, one module per part; imports run one way, from here down:

    __init__    main() and the parser: one add_*_command per command
    demo        demo (and the hidden _crash-demo its child process runs)
    graph       graph
    inspect     list, show, purge, and their tables
    recover     recover
    resume      resume
    retry_unwinding  retry-unwinding
    serve       serve (the web console of fallback_saga.console)
    stores      --db / --dsn / the environment, and opening a store
    mermaid     the flowchart (graph) and the gantt (show --mermaid)
    targets     module:attr specs
    argtypes    durations and counts
    text        terminal-safe text, JSON, times, tables
    errors      UsageError and the exit statuses
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, cast

from .. import __version__
from ..command_line import PYTHON_M
from ..errors import SagaStoreError
from ..shown_text import redact
from .argtypes import parse_duration
from .demo import add_demo_commands
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandFailed, UsageError
from .graph import add_graph_command
from .inspect import add_list_command, add_purge_command, add_show_command
from .mermaid import mermaid_flowchart, mermaid_gantt
from .recover import add_recover_command
from .resume import add_resume_command
from .retry_unwinding import add_retry_unwinding_command
from .serve import add_serve_command
from .text import (
    MAX_CELL,
    MAX_CONTEXT,
    MAX_VALUE,
    escape_what_stdout_cannot_show,
    terminal_text,
)

__all__ = [
    "MAX_CELL",
    "MAX_CONTEXT",
    "MAX_VALUE",
    "UsageError",
    "build_parser",
    "main",
    "mermaid_flowchart",
    "mermaid_gantt",
    "parse_duration",
    "terminal_text",
]


class _Parser(argparse.ArgumentParser):
    """A parser whose error line is made safe to print, as every other text
    the commands print is: argparse quotes the argument it refuses as given
    (a stray argument, an ambiguous or unknown option's ``=value``) or in
    its repr (an unknown choice, a value its type refuses), which escapes
    a terminal's control characters but not a password. Redacted first:
    ``terminal_text`` cuts, and a cut password is no longer recognized."""

    def error(self, message: str) -> NoReturn:
        super().error(terminal_text(redact(message), MAX_CONTEXT))


class _CommandParser(_Parser):
    """A command's parser, which refuses an argument it does not know itself.

    argparse parses a command's arguments with ``parse_known_args`` and hands
    what is left to the top parser, which then reports ``--bogus`` under the
    top-level usage and name: the user is not told which command's options to
    look at.
    """

    def parse_known_args(  # type: ignore[override]  # typeshed overloads on namespace
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class _Commands(dict[str, argparse.ArgumentParser]):
    """The commands by name, iterated without the hidden ones (a name that
    starts with "_": ``_crash-demo``, which the demo's child process runs),
    which stay runnable: looked up by name as any other."""

    def __iter__(self) -> Iterator[str]:
        return (name for name in super().__iter__() if not name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fallback-saga" if _invoked_as_script() else PYTHON_M,
        description="fallback_saga: resilient multi-step transactions for asyncio.",
    )
    parser.add_argument("--version", action="version", version=f"fallback_saga {__version__}")
    # Typed as the plain parsers the add_*_command functions take: they only
    # call add_parser, which makes a _CommandParser whatever the type says.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
        ),
    )
    # The commands by name, with the hidden ones left out of what argparse
    # lists of them (its "invalid choice" line): argparse only lists what it
    # iterates, and looks a command up by name.
    commands.choices = commands._name_parser_map = _Commands()
    # In the order --help lists them.
    add_demo_commands(commands)
    add_graph_command(commands)
    add_list_command(commands)
    add_show_command(commands)
    add_recover_command(commands)
    add_resume_command(commands)
    add_retry_unwinding_command(commands)
    add_purge_command(commands)
    add_serve_command(commands)
    return parser


def _invoked_as_script() -> bool:
    return os.path.basename(sys.argv[0]) in ("fallback-saga", "fallback-saga.exe")


def _error_text(error: Exception) -> str:
    """A command's error line, as argparse's is made safe: it quotes what
    the operator typed (a saga id, a --host, a path) or a store's message,
    either of which may hold a password (a DSN pasted in the wrong place).
    Redacted before the cut, as ``_Parser.error``."""
    return terminal_text(redact(str(error)), MAX_CONTEXT)


def main(argv: Sequence[str] | None = None) -> int:
    """The command-line entry point; returns the exit status."""
    # Before anything is printed, --help included (its text has dashes).
    escape_what_stdout_cannot_show()
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
        sys.stderr.write(f"{parser.prog}: error: {_error_text(error)}\n")
        return EXIT_USAGE
    # The store failed, a row cannot be read back, or serve cannot listen.
    except (SagaStoreError, CommandFailed) as error:
        sys.stderr.write(f"{parser.prog}: error: {_error_text(error)}\n")
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
