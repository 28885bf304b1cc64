"""The console's server: routes, security headers, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote, urlencode

from ..errors import CorruptSagaRecord, SagaNotFound, SagaStoreError
from ..log_lines import library_logger
from ._http import (
    MAX_LINE,
    SEND_TIMEOUT,
    HttpError,
    Request,
    Response,
    read_request,
    write_response,
)
from .counting import CountCache
from .data import (
    TIMELINE_FOLLOWING,
    BadRequest,
    Listing,
    fetch_listing,
    fetch_saga_page,
    history_span,
    lenient_list_query,
    listing_json,
    parse_list_query,
    record_json,
    single_values,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import exposition
from .pages import (
    FAVICON,
    STYLE_HASH,
    error_page,
    history_href,
    listing_page,
    saga_href,
    saga_page,
)
from .text import redact, shorten, visible
from .timeline import bars_json, bars_of, page_bars

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ConsoleServer", "run_console", "serve"]

_log = library_logger("fallback_saga.console")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080

_HTML_CSP: Final = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DATA_CSP: Final = "default-src 'none'; frame-ancestors 'none'; sandbox"
_COMMON_HEADERS: Final = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
_HTML: Final = "text/html; charset=utf-8"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})
# Seconds ``close`` lets the requests in progress finish before ending them.
_CLOSE_GRACE: Final = 5.0


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_loopback_address(address: str) -> bool:
    """Whether a bound socket's address is a loopback one (``::ffff:127.0.0.1`` too)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _is_unspecified(host: str) -> bool:
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _bare_host(host: str) -> str:
    """A host name as compared: lower case, no brackets, no trailing dot."""
    return host.strip("[]").lower().rstrip(".")


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def store_label(store: object) -> str:
    """What the top bar says the console reads: the store's class, and for a
    SQLite file its name. Never a connection string (it may hold a password)."""
    name = type(store).__name__
    path = getattr(store, "path", None)
    if name == "SQLiteSagaStore" and isinstance(path, str):
        return f"{name} · {os.path.basename(path) or path}"
    return name


@dataclass(frozen=True, slots=True)
class _Route:
    handler: Callable[[Request, str], Awaitable[Response]]
    kind: str  # "html", "json" or "text": how its errors are written
    argument: str = ""


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
        self.store = store
        # Whether a request may ask for a saga's values as stored (?raw=1):
        # the console's starter decides, not whoever can reach the page.
        self.allow_unredacted = bool(allow_unredacted)
        self.host = host
        self.page_size = page_size
        self.request_timeout = float(request_timeout)
        self._requested_port = port
        self._allowed = {name.lower() for name in allowed_hosts}
        # Requests may also name the host the console was told to listen on
        # (``--host vm``: its users open http://vm:8080/, and a rebinding
        # page's origin cannot be that name), unless it is a wildcard:
        # browsers send 0.0.0.0 to this machine too.
        self._own_name = "" if _is_unspecified(host) else _bare_host(host)
        # Whether requests must name this console's host: decided by start()
        # from the addresses actually bound, checked until then.
        self._check_host = True
        self._listens_beyond = False
        self._label = store_label(store)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or (
            max_connections < 1
        ):
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        # The connections' tasks, and those of them waiting for a request:
        # close() ends those at once, the others after a grace period.
        self._handlers: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()
        # The connections held up by their client, not by the console: waiting
        # for the request, or sending the answer and waiting for the close.
        # Oldest first (a dict keeps insertion order): at the bound, the
        # console closes the first of them for a newcomer, so idle or slow
        # clients cannot lock others out; they are the only ones it can close
        # without cutting off work.
        self._client_bound: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # Closed that way and not finished yet: no longer counted.
        self._evicted: set[asyncio.Task[Any]] = set()
        self._closing = False
        # Counts are slow on a big store: one that took long is shown again a while.
        self._counts = CountCache()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and start answering (``port=0``: any free port, see ``port``)."""
        if self._server is not None:
            return
        self._closing = False
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self._requested_port, limit=MAX_LINE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        # From what is bound, not from the --host text: a name or a spelling
        # (``vm``, ``127.1``) that resolves to loopback is a loopback console,
        # and must refuse DNS-rebound requests like 127.0.0.1 does.
        self._listens_beyond = not all(
            _is_loopback_address(sock.getsockname()[0]) for sock in self._server.sockets
        )
        self._check_host = not self._listens_beyond or bool(self._allowed)
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
        self._closing = True
        server.close()
        for task in list(self._waiting):
            task.cancel()
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers), timeout=_CLOSE_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
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

    # ------------------------------------------------------------------ connections

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        started = time.perf_counter()
        request: Request | None = None
        status = 0
        task = asyncio.current_task()
        assert task is not None
        # Bound the sockets held: at the limit a newcomer takes the place of
        # the connection that has waited longest on its client; it is turned
        # away only while every connection is a request being answered.
        full = len(self._handlers) - len(self._evicted) >= self._max_connections
        refused = full and not self._evict_oldest()
        self._handlers.add(task)
        try:
            if refused:
                response = self._error(
                    "text", HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; retry"
                )
            else:
                try:
                    request = await self._next_request(reader, writer, task)
                except HttpError as error:
                    response = self._error("text", error.status, error.message)
                else:
                    if request is None:
                        return
                    response = await self.respond(request)
            status = response.status.value
            head = request is not None and request.method == "HEAD"
            self._client_bound[task] = writer
            write_response(writer, response, head=head, common_headers=_COMMON_HEADERS)
            async with asyncio.timeout(SEND_TIMEOUT):
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            # Read what the client may still send (a body we did not want), so
            # that closing does not reset the connection under the response.
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(1.0):
                    while await reader.read(65536):
                        pass
        except (ConnectionError, OSError):
            pass  # the client went away (or does not read: TimeoutError)
        except asyncio.CancelledError:
            # Ended by close() or for a newcomer: quietly (Python 3.11's
            # streams log a cancelled handler's task as an error).
            if task in self._evicted:
                task.uncancel()
            elif not self._closing:
                raise
        finally:
            self._handlers.discard(task)
            self._evicted.discard(task)
            self._client_bound.pop(task, None)
            await _shut(writer)
            if request is not None or status:
                target = "-" if request is None else request.path + (
                    "?" + request.query if request.query else ""
                )
                _log.info(
                    "%s %s %s %.1fms",
                    "-" if request is None else request.method,
                    visible(shorten(target, 300)),
                    status,
                    (time.perf_counter() - started) * 1000,
                )

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest on its client (``False``:
        there is none, every connection is a request being answered)."""
        if not self._client_bound:
            return False
        task = next(iter(self._client_bound))
        writer = self._client_bound.pop(task)
        self._evicted.add(task)
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # a client that does not read: no flush to wait for
        task.cancel()
        return True

    async def _next_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> Request | None:
        """``read_request``, while ``close`` may end the wait at once, and a
        newcomer may take the connection's place."""
        self._waiting.add(task)
        self._client_bound[task] = writer
        try:
            return await read_request(reader)
        finally:
            self._waiting.discard(task)
            self._client_bound.pop(task, None)

    # ------------------------------------------------------------------ requests

    def _route(self, path: str) -> _Route | None:
        if path == "/":
            return _Route(self._listing_page, "html")
        if path == "/sagas":
            return _Route(self._find_saga, "html")
        if path.startswith("/sagas/"):
            return _Route(self._saga_page, "html", path[len("/sagas/") :])
        if path in ("/api/sagas", "/api/sagas/"):
            return _Route(self._listing_json, "json")
        if path.startswith("/api/sagas/"):
            return _Route(self._saga_json, "json", path[len("/api/sagas/") :])
        if path == "/metrics":
            return _Route(self._metrics, "text")
        if path == "/healthz":
            return _Route(self._health, "text")
        if path in ("/favicon.svg", "/favicon.ico"):
            return _Route(self._favicon, "text")
        return None

    async def respond(self, request: Request) -> Response:
        """The response to ``request`` (no I/O but the store's)."""
        kind = "json" if request.path.startswith("/api/") else "html"
        if self._check_host:
            host = _host_name(request.headers.get("host", ""))
            if host and not (
                _is_loopback(host)
                or host.lower() in self._allowed
                or (self._own_name and _bare_host(host) == self._own_name)
            ):
                return self._error(
                    kind,
                    HTTPStatus.MISDIRECTED_REQUEST,
                    f"this console answers to loopback host names only, not {host!r} "
                    f"(allowed_hosts, or serve --allow-host, adds names)",
                )
        route = self._route(request.path)
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
        if kind == "html":
            heading = {
                HTTPStatus.NOT_FOUND: "Not found",
                HTTPStatus.BAD_REQUEST: "Bad request",
                HTTPStatus.UNPROCESSABLE_ENTITY: "Cannot be read",
            }.get(status, status.phrase)
            body = error_page(
                status.value, heading, message, store_label=self._label, now=time.time()
            )
            return Response(status, body.encode("utf-8", "replace"), _HTML, [_csp(_HTML_CSP)])
        if kind == "json":
            return _json(status, {"error": {"status": status.value, "message": message}})
        return Response(
            status, f"{status.value} {status.phrase}: {message}\n".encode("utf-8", "replace"),
            _TEXT, [_csp(_DATA_CSP)],
        )

    def _html(self, page: str) -> Response:
        return Response(HTTPStatus.OK, page.encode("utf-8", "replace"), _HTML, [_csp(_HTML_CSP)])

    # ------------------------------------------------------------------ pages

    async def _listing_page(self, request: Request, _: str) -> Response:
        now = time.time()
        try:
            query = parse_list_query(request.query, now=now, default_limit=self.page_size)
            listing = await fetch_listing(self.store, query, self._counts.counts)
        except BadRequest as error:
            # The page again, with the filters as given and what is wrong with them.
            query = lenient_list_query(request.query, default_limit=self.page_size)
            listing = Listing([], None, await self._counts.counts(self.store))
            page = listing_page(
                listing, query, default_limit=self.page_size, store_label=self._label, now=now,
                error=str(error),
            )
            response = self._html(page)
            response.status = HTTPStatus.BAD_REQUEST
            return response
        return self._html(
            listing_page(
                listing, query, default_limit=self.page_size, store_label=self._label, now=now
            )
        )

    async def _find_saga(self, request: Request, _: str) -> Response:
        """``/sagas?id=X``: the search box's form, redirected to X's page, and
        the page itself of the ids ``.`` and ``..`` (no path can carry them)."""
        values = single_values(request.query, ("id", "page", "raw"))
        saga_id = values.get("id", "")
        raw = self._raw(values)
        if not saga_id:
            return _redirect("/")
        href = saga_href(saga_id)
        if href.startswith("/sagas/"):
            kept: dict[str, str] = {
                name: values[name] for name in ("page", "raw") if name in values
            }
            return _redirect(f"{href}?{urlencode(kept)}" if kept else href)
        return await self._one_saga_page(saga_id, values.get("page"), raw=raw)

    async def _saga_page(self, request: Request, raw_id: str) -> Response:
        values = single_values(request.query, ("page", "raw"))
        return await self._one_saga_page(_saga_id(raw_id), values.get("page"),
                                          raw=self._raw(values))

    def _raw(self, values: dict[str, str]) -> bool:
        """Whether the request asks for the saga's values as stored (``raw=1``),
        and may: ``HttpError`` 403 unless the console allows it."""
        if "raw" not in values:
            return False
        if values["raw"] != "1":
            raise BadRequest(f"raw must be 1 (the values as stored), got {values['raw']!r}")
        if not self.allow_unredacted:
            raise HttpError(
                HTTPStatus.FORBIDDEN,
                "this console shows contexts, results and errors redacted only: it was "
                "started without allow_unredacted (serve --allow-unredacted)",
            )
        return True

    async def _one_saga_page(
        self, saga_id: str, page_text: str | None = None, *, raw: bool = False
    ) -> Response:
        now = time.time()
        # The page checked against the saga's length, known once it is read.
        view, page = await fetch_saga_page(self.store, saga_id, page_text, unredacted=raw)
        bars = bars_of(view.record, now) if view.entries is None else []
        return self._html(saga_page(view, bars, store_label=self._label, now=now, page=page,
                                         raw=raw))

    async def _listing_json(self, request: Request, _: str) -> Response:
        if _names_param(request.query, "id"):
            # /api/sagas?id=X: one saga, as /api/sagas/X (the form linked for
            # the ids "." and "..", which no path can carry).
            values = single_values(request.query, ("id", "page", "raw"))
            saga_id = values["id"]
            raw = self._raw(values)
            if not saga_id:
                raise SagaNotFound(saga_id)
            return await self._one_saga_json(saga_id, values.get("page"), raw=raw)
        now = time.time()
        query = parse_list_query(request.query, now=now, default_limit=self.page_size)
        listing = await fetch_listing(self.store, query, self._counts.counts, suggestions=False)
        return _json(HTTPStatus.OK, listing_json(listing, query, default_limit=self.page_size))

    async def _saga_json(self, request: Request, raw_id: str) -> Response:
        values = single_values(request.query, ("page", "raw"))
        return await self._one_saga_json(_saga_id(raw_id), values.get("page"),
                                          raw=self._raw(values))

    async def _one_saga_json(
        self, saga_id: str, page_text: str | None = None, *, raw: bool = False
    ) -> Response:
        """The saga with one page of its history (``HISTORY_PAGE`` entries,
        ``?page=N``) and the timeline's tries that begin on it: a saga of
        50,000 entries was one response of megabytes. A journal longer than
        ``WHOLE_JOURNAL`` is read as the page is (``fetch_saga_page``): the
        page and the ``TIMELINE_FOLLOWING`` entries after it, where its
        tries end (it was read whole for every page: seconds at 100,000)."""
        now = time.time()
        view, page = await fetch_saga_page(
            self.store, saga_id, page_text, unredacted=raw, following=TIMELINE_FOLLOWING,
            newest=False,
        )
        data = record_json(view, now, page=page)
        if view.entries is None:
            entries = len(view.record.history)
            first, count, pages = history_span(page, entries)
            bars = [bar for bar in bars_of(view.record, now) if first <= bar.seq < first + count]
        else:
            entries = view.entries
            first, count, pages = history_span(page, entries)
            bars, left_out = page_bars(view.record, view.first, entries, first, count, now)
            if left_out:
                data["history_page"]["timeline_left_out"] = left_out
                data["history_page"]["timeline_note"] = (
                    f"{left_out} tries that begin on this page end more than "
                    f"{TIMELINE_FOLLOWING} entries later: not in its timeline "
                    f"(show ID --mermaid draws the whole journal)"
                )
        data["timeline"] = bars_json(bars)
        links = {
            "first": history_href(saga_id, 1, api=True, raw=raw),
            "prev": history_href(saga_id, page - 1, api=True, raw=raw) if page > 1 else None,
            "next": history_href(saga_id, page + 1, api=True, raw=raw) if page < pages else None,
            "last": history_href(saga_id, pages, api=True, raw=raw),
        }
        data["history_page"].update(links)
        response = _json(HTTPStatus.OK, data)
        # The same links as a header (RFC 8288), for clients that page by it.
        response.headers.append((
            "Link",
            ", ".join(f'<{href}>; rel="{rel}"' for rel, href in links.items() if href),
        ))
        return response

    async def _metrics(self, request: Request, _: str) -> Response:
        single_values(request.query, ())
        counts = await self._counts.counts(self.store)
        return Response(
            HTTPStatus.OK, exposition(counts).encode("utf-8"), METRICS_CONTENT_TYPE,
            [_csp(_DATA_CSP)],
        )

    async def _health(self, request: Request, _: str) -> Response:
        return Response(HTTPStatus.OK, b"ok\n", _TEXT, [_csp(_DATA_CSP)])

    async def _favicon(self, request: Request, _: str) -> Response:
        return Response(
            HTTPStatus.OK, FAVICON.encode(), "image/svg+xml", [_csp(_DATA_CSP)]
        )


async def _shut(writer: asyncio.StreamWriter) -> None:
    """Close a connection; one whose client does not take the rest of the
    answer is cut off after a second rather than held."""
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass


def _csp(policy: str) -> tuple[str, str]:
    return ("Content-Security-Policy", policy)


def _json(status: HTTPStatus, data: Any) -> Response:
    # "<" escaped too: the JSON stays inert even if something renders it as HTML.
    text = json.dumps(data, indent=2, default=str).replace("<", "\\u003c").replace(">", "\\u003e")
    return Response(status, text.encode("ascii") + b"\n", _JSON, [_csp(_DATA_CSP)])


def _redirect(location: str) -> Response:
    return Response(
        HTTPStatus.SEE_OTHER, b"", _TEXT, [("Location", location), _csp(_DATA_CSP)]
    )


def _names_param(raw_query: str, name: str) -> bool:
    """Whether the query string has a parameter ``name`` (as sent, not decoded)."""
    return any(part.partition("=")[0] == name for part in raw_query.split("&"))


def _saga_id(raw: str) -> str:
    try:
        saga_id = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(
            "the saga id in the path is not valid UTF-8 once percent-decoded"
        ) from None
    if not saga_id:
        raise SagaNotFound(saga_id)
    return saga_id


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

