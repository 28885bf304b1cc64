"""The console's server: its lifecycle, and what it answers a request.

It listens (``start``, ``close``), hands each connection to ``connections``,
and answers each request (``respond``): a host name it does not answer to
(``host_check``), a method other than GET or HEAD, or a path with no page
is refused; anything else is what ``routes`` says, its errors written as
the route's kind of response (``responses``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Final

from ..errors import CorruptSagaRecord, SagaNotFound, SagaStoreError
from ..log_lines import library_logger
from ._http import MAX_LINE, HttpError, Request, Response
from .connections import Connections
from .host_check import HostCheck
from .query import BadRequest
from .responses import error_response
from .routes import Routes
from .text import redact, shorten, visible

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ConsoleServer", "run_console", "serve"]

_log = library_logger("fallback_saga.console")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080

# Seconds ``close`` lets the requests in progress finish before ending them.
_CLOSE_GRACE: Final = 5.0


def store_label(store: object) -> str:
    """What the top bar says the console reads: the store's class, and for a
    SQLite file its name. Never a connection string (it may hold a password)."""
    name = type(store).__name__
    path = getattr(store, "path", None)
    if name == "SQLiteSagaStore" and isinstance(path, str):
        return f"{name} · {os.path.basename(path) or path}"
    return name


class ConsoleServer:
    """A read-only web console over a saga store: ``async with
    ConsoleServer(store, port=0) as console: ... console.url``.

    Pages: ``/`` (the sagas, filtered and paged), ``/sagas/<id>`` (one saga:
    timeline, history, context, lease); the same data as JSON under
    ``/api/sagas``; ``/metrics`` in the Prometheus text format; ``/healthz``.
    Only GET and HEAD are served.

    ``host`` defaults to the loopback interface. While every address it
    binds is a loopback one (whatever ``host`` spells: ``localhost``, this
    machine's name, ``127.1``), requests must name a loopback host or
    ``host`` itself (``Host:`` header), so a web page elsewhere cannot read
    the console through DNS rebinding; ``allowed_hosts`` adds names (say,
    behind a reverse proxy). The console never closes the store.

    A saga's context, step results and errors are shown redacted (the value
    of every key named like a secret as ``***``, passwords in DSNs and URLs
    too: ``redaction.redacted``). ``allow_unredacted`` lets a request ask for
    them as stored with ``?raw=1`` (on ``/sagas/<id>`` and
    ``/api/sagas/<id>``); without it such a request is refused (403).
    """

    def __init__(
        self,
        store: object,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        page_size: int = 50,
        allowed_hosts: Iterable[str] = (),
        request_timeout: float = 30.0,
        max_connections: int = 64,
        allow_unredacted: bool = False,
    ) -> None:
        if not callable(getattr(store, "load", None)):
            raise TypeError(f"the console reads a saga store (with load()), got {store!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not (
            1 <= page_size <= 500
        ):
            raise ValueError(f"page_size must be an int from 1 to 500, got {page_size!r}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout!r}")
        self._label = store_label(store)
        self._routes = Routes(
            store, page_size=page_size, store_label=self._label,
            allow_unredacted=bool(allow_unredacted),
        )
        self.host = host
        self.request_timeout = float(request_timeout)
        self._requested_port = port
        self._host_check = HostCheck(host, allowed_hosts)
        self._listens_beyond = False
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
            max_connections < 1
        ):
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        self._connections = Connections(max_connections)
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    # The routes read these: set here, they are what the next request reads.

    @property
    def store(self) -> object:
        return self._routes.store

    @store.setter
    def store(self, store: object) -> None:
        self._routes.store = store

    @property
    def page_size(self) -> int:
        return self._routes.page_size

    @page_size.setter
    def page_size(self, page_size: int) -> None:
        self._routes.page_size = page_size

    @property
    def allow_unredacted(self) -> bool:
        """Whether a request may ask for a saga's values as stored (?raw=1):
        the console's starter decides, not whoever can reach the page."""
        return self._routes.allow_unredacted

    @allow_unredacted.setter
    def allow_unredacted(self, allow: bool) -> None:
        self._routes.allow_unredacted = allow

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and start answering (``port=0``: any free port, see ``port``)."""
        if self._server is not None:
            return
        self._connections.closing = False
        self._server = await asyncio.start_server(
            # Held by the server only while it listens: no cycle through the console.
            functools.partial(self._connections.on_connection, self.respond),
            self.host, self._requested_port, limit=MAX_LINE,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._listens_beyond = self._host_check.bound(
            sock.getsockname()[0] for sock in self._server.sockets
        )
        _log.info("console serving %s at %s", self._label, self.url)
        if self._listens_beyond:
            _log.warning(
                "the console listens on %s, beyond this machine, and has no authentication: "
                "whoever can reach port %d can read every saga, contexts included",
                self.host or "every interface", self._port,
            )

    @property
    def port(self) -> int:
        """The bound port (``start`` first)."""
        if self._port is None:
            raise RuntimeError("the console is not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.host
        if host in ("::", "[::]"):  # every interface: this machine's is one of them
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        elif host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    async def serve_forever(self) -> None:
        """Answer requests until cancelled (``start`` is called if needed), then
        ``close``."""
        await self.start()
        try:
            # Not asyncio.Server.serve_forever: cancelled, it waits (3.12+) for
            # every open connection, and a browser's idle one holds it for seconds.
            await asyncio.get_running_loop().create_future()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop accepting and close the listening socket; end the connections
        that wait for a request (a browser keeps idle ones open) at once, and
        the requests in progress after a few seconds. The store stays open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await self._connections.close(_CLOSE_GRACE)
        await server.wait_closed()

    async def __aenter__(self) -> ConsoleServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    async def respond(self, request: Request) -> Response:
        """The response to ``request`` (no I/O but the store's)."""
        kind = "json" if request.path.startswith("/api/") else "html"
        host = self._host_check.refused(request.headers.get("host", ""))
        if host is not None:
            return self._error(
                kind,
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this console answers to loopback host names only, not {host!r} "
                f"(allowed_hosts, or serve --allow-host, adds names)",
            )
        route = self._routes.route(request.path)
        if request.method not in ("GET", "HEAD"):
            response = self._error(
                route.kind if route else kind,
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"the console is read-only: {request.method} is not allowed, only GET and HEAD",
            )
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        if route is None:
            return self._error(kind, HTTPStatus.NOT_FOUND, f"no page at {request.path}")
        try:
            async with asyncio.timeout(self.request_timeout):
                return await route.handler(request, route.argument)
        except BadRequest as error:
            return self._error(route.kind, HTTPStatus.BAD_REQUEST, str(error))
        except HttpError as error:
            return self._error(route.kind, error.status, error.message)
        except SagaNotFound as error:
            return self._error(
                route.kind, HTTPStatus.NOT_FOUND, f"no saga with id {error.saga_id!r}"
            )
        except CorruptSagaRecord as error:
            # One damaged row (S12): its own page says so; the others are unaffected.
            _log.warning("console: %s", redact(str(error)))
            if route.argument:
                return self._error(
                    route.kind,
                    HTTPStatus.UNPROCESSABLE_ENTITY,
                    f"saga {error.saga_id!r} is in the store but cannot be read: "
                    f"{redact(error.reason)}",
                )
            return self._error(
                route.kind,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the saga store cannot be read right now: {redact(str(error))}",
            )
        except SagaStoreError as error:
            message = redact(str(error))
            _log.warning("console: the store failed: %s", message)
            return self._error(
                route.kind,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the saga store cannot be read right now: {message}",
            )
        except TimeoutError:
            return self._error(
                route.kind,
                HTTPStatus.GATEWAY_TIMEOUT,
                f"the saga store did not answer within {self.request_timeout:g} s",
            )
        except Exception:
            # The traceback goes to the log, not to the client.
            _log.exception("console: error answering %s", visible(shorten(request.path, 300)))
            return self._error(
                route.kind, HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the log)"
            )

    def _error(self, kind: str, status: HTTPStatus, message: str) -> Response:
        return error_response(kind, status, message, store_label=self._label)


# --------------------------------------------------------------------------- entry points


async def serve(
    store: object,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    page_size: int = 50,
    allowed_hosts: Iterable[str] = (),
    ready: Callable[[ConsoleServer], object] | None = None,
    allow_unredacted: bool = False,
) -> None:
    """Serve the console over ``store`` until cancelled. ``ready(console)`` is
    called once it listens (``console.url``, ``console.port``). The store is
    left open."""
    async with ConsoleServer(
        store, host=host, port=port, page_size=page_size, allowed_hosts=allowed_hosts,
        allow_unredacted=allow_unredacted,
    ) as console:
        if ready is not None:
            ready(console)
        await console.serve_forever()


def run_console(
    store: object,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    page_size: int = 50,
    allowed_hosts: Iterable[str] = (),
    ready: Callable[[ConsoleServer], object] | None = None,
    close_store: bool = True,
    allow_unredacted: bool = False,
) -> None:
    """``serve`` in a new event loop until Ctrl-C, then close the store (its
    ``close()``, if it has one) unless ``close_store=False``."""

    async def main() -> None:
        try:
            await serve(
                store, host=host, port=port, page_size=page_size,
                allowed_hosts=allowed_hosts, ready=ready, allow_unredacted=allow_unredacted,
            )
        finally:
            close = getattr(store, "close", None)
            if close_store and callable(close):
                outcome = close()
                if asyncio.iscoroutine(outcome):
                    await outcome

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())

