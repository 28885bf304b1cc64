"""``serve``: the read-only web console (``fallback_saga.console``) over a
saga store, until Ctrl-C or SIGTERM.

The store is opened read-only (SQLite ``mode=ro``, which sees the commits
of the processes writing it; PostgreSQL without migrating it), so the
console needs no write access and cannot change a saga. It binds the
loopback interface unless ``--host`` says otherwise; it has no
authentication of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..console import DEFAULT_HOST, DEFAULT_PORT, ConsoleServer, serve
from .errors import EXIT_OK, CommandFailed, UsageError
from .stores import StoreTarget, add_store_options, open_store, store_target
from .text import MAX_PATH, MAX_VALUE, terminal_text

__all__ = ["add_serve_command", "run_serve"]

# The PostgreSQL pool: requests are short reads, a handful at once.
_CONNECTIONS = 4
_MAX_PAGE_SIZE = 500  # ConsoleServer's bound

_SERVE_EPILOG = """\
Pages: / (the sagas, newest first, with filters and counts by status),
/sagas/ID (one saga: SVG timeline, history, context, lease), the same as JSON
under /api/sagas, Prometheus metrics at /metrics, /healthz.

Security: the console has NO AUTHENTICATION and shows every saga's context,
redacted: the value of every key named like a secret (password, token,
api_key, card_number, ...) as ***, and passwords in DSNs and URLs too. With
--allow-unredacted, a request may ask for the values as stored (?raw=1).
By default it listens on 127.0.0.1 only and answers only requests that name a
loopback host. To reach it from elsewhere, put it behind your own
authenticating reverse proxy (or an SSH tunnel) and name the host the proxy
forwards with --allow-host; --host 0.0.0.0 exposes it to the network as is.

Stops on Ctrl-C or SIGTERM (exit status 0). Exit status 1 if it cannot
listen (the port is in use) or the store fails; 2 on a usage error (no store,
a --db that is not a saga store, a --host that is no address of this machine).
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number from 0 to 65535 (0: any free port), got {text!r}"
        )
    return value


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {_MAX_PAGE_SIZE}, got {text!r}"
        )
    return value


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serving = commands.add_parser(
        "serve",
        help="the read-only web console over a saga store",
        description="Serve a read-only web console over a saga store: the sagas with\n"
        "filters and counts, each saga's timeline, history, context and lease, a JSON\n"
        "API and Prometheus metrics. Prints its URL, then logs each request to stderr.\n"
        "Only reads: needs no write access to the store.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(serving)
    serving.add_argument(
        "--host", default=DEFAULT_HOST, metavar="HOST",
        help=f"the address to listen on (default {DEFAULT_HOST}, this machine only; "
        "0.0.0.0 or :: for every interface: see Security below)",
    )
    serving.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, metavar="PORT",
        help=f"the port to listen on (default {DEFAULT_PORT}; 0 for any free port, "
        "which the printed URL shows)",
    )
    serving.add_argument(
        "--page-size", type=_page_size, default=50, metavar="N",
        help=f"sagas per page of the list (default 50, at most {_MAX_PAGE_SIZE})",
    )
    serving.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", dest="allow_hosts",
        help="also answer requests for this host name (the Host header), e.g. the name "
        "a reverse proxy forwards; repeatable. Without it, a console that listens on "
        "loopback addresses only answers loopback names and --host only (no DNS rebinding)",
    )
    serving.add_argument(
        "--allow-unredacted", action="store_true",
        help="let a request ask for a saga's context, results and errors as stored, "
        "secrets included, with ?raw=1 (default: refused, 403; shown redacted)",
    )
    serving.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    target = store_target(args)
    # KeyboardInterrupt: where the loop cannot handle signals (Windows).
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(target, args))
    return EXIT_OK


async def _serve(target: StoreTarget, args: argparse.Namespace) -> None:
    listening = False

    def ready(console: ConsoleServer) -> None:
        nonlocal listening
        listening = True
        sys.stdout.write(
            f"console at {console.url} (read-only: {terminal_text(target.shown, MAX_PATH)}; "
            f"Ctrl-C to stop)\n"
        )
        sys.stdout.flush()

    with _stopped_by_signals() as stopping, _request_log():
        try:
            async with open_store(target, read_only=True, connections=_CONNECTIONS) as store:
                try:
                    await serve(
                        store,
                        host=args.host,
                        port=args.port,
                        page_size=args.page_size,
                        allowed_hosts=args.allow_hosts,
                        ready=ready,
                        allow_unredacted=args.allow_unredacted,
                    )
                except OSError as error:
                    if listening:
                        raise
                    raise _listen_error(args.host, args.port, error) from None
        except asyncio.CancelledError:
            if not stopping():
                raise
    if listening:
        sys.stdout.write("console stopped\n")


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT and SIGTERM cancel the running task (the console closes, then
    the store; a second signal cuts that short); yields whether a signal came.
    Where a loop cannot handle signals (not the main thread, Windows), Ctrl-C
    stays a KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[signal.Signals] = []

    def stop(signum: signal.Signals) -> None:
        received.append(signum)
        task.cancel()

    installed: list[tuple[signal.Signals, Any]] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append((signum, previous))
    try:
        yield lambda: bool(received)
    finally:
        for signum, previous in installed:
            loop.remove_signal_handler(signum)
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, previous)
        for _ in received:
            task.uncancel()


@contextlib.contextmanager
def _request_log() -> Iterator[None]:
    """The console's log (a line per request, warnings) on stderr while it serves."""
    logger = logging.getLogger("fallback_saga.console")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _listen_error(host: str, port: int, error: OSError) -> Exception:
    """A one-line error for a console that cannot listen: a usage error for a
    ``--host`` that is no address here, a failure otherwise."""
    shown_host = terminal_text(host or "every interface", MAX_VALUE)
    where = f"{shown_host}:{port}"
    reason = " ".join((error.strerror or str(error)).split())
    if isinstance(error, socket.gaierror):
        return UsageError(
            f"--host {shown_host}: no such host ({reason}); give an address or a name "
            f"of this machine"
        )
    # Python 3.13 skips the addresses it cannot assign and then says it bound none.
    if error.errno == errno.EADDRNOTAVAIL or (
        error.errno is None and str(error).startswith("could not bind on any address")
    ):
        return UsageError(f"--host {shown_host}: not an address of this machine ({reason})")
    if error.errno == errno.EADDRINUSE:
        return CommandFailed(
            f"cannot listen on {where}: the port is in use by another process; choose "
            f"another --port (0: any free port)"
        )
    if error.errno == errno.EACCES:
        return CommandFailed(
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            f"privileges; choose another --port)"
        )
    return CommandFailed(f"cannot listen on {where}: {reason}")
