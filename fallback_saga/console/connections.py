"""The console's connections: one request each, bounded in number.

At most ``max_connections`` sockets are held. At the bound a newcomer takes
the place of the connection that has waited longest on its client (for its
request, or for the answer to be taken), so idle or slow clients cannot lock
others out; it is turned away only while every connection is a request being
answered. ``close`` ends the connections waiting for a request at once, and
the requests in progress after a grace period. Each request is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from ..log_lines import library_logger
from ._http import SEND_TIMEOUT, HttpError, Request, Response, read_request, write_response
from .responses import COMMON_HEADERS, error_response
from .text import shorten, visible

__all__ = ["Connections"]

_log = library_logger("fallback_saga.console")


class Connections:
    """The connections of one console."""

    __slots__ = ("client_bound", "closing", "evicted", "handlers", "max_connections", "waiting")

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        # The connections' tasks, and those of them waiting for a request:
        # close() ends those at once, the others after a grace period.
        self.handlers: set[asyncio.Task[Any]] = set()
        self.waiting: set[asyncio.Task[Any]] = set()
        # The connections held up by their client, not by the console: waiting
        # for the request, or sending the answer and waiting for the close.
        # Oldest first (a dict keeps insertion order): at the bound, the
        # console closes the first of them for a newcomer, so idle or slow
        # clients cannot lock others out; they are the only ones it can close
        # without cutting off work.
        self.client_bound: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # Closed that way and not finished yet: no longer counted.
        self.evicted: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def close(self, grace: float) -> None:
        """End the connections that wait for a request at once, and the
        requests in progress after ``grace`` seconds."""
        self.closing = True
        for task in list(self.waiting):
            task.cancel()
        if self.handlers:
            _, late = await asyncio.wait(set(self.handlers), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def on_connection(
        self,
        respond: Callable[[Request], Awaitable[Response]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Answer the request ``reader`` brings with ``respond``'s response."""
        started = time.perf_counter()
        request: Request | None = None
        status = 0
        task = asyncio.current_task()
        assert task is not None
        # Bound the sockets held: at the limit a newcomer takes the place of
        # the connection that has waited longest on its client; it is turned
        # away only while every connection is a request being answered.
        full = len(self.handlers) - len(self.evicted) >= self.max_connections
        refused = full and not self._evict_oldest()
        self.handlers.add(task)
        try:
            if refused:
                response = error_response(
                    "text", HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; retry",
                    store_label="",
                )
            else:
                try:
                    request = await self._next_request(reader, writer, task)
                except HttpError as error:
                    response = error_response(
                        "text", error.status, error.message, store_label=""
                    )
                else:
                    if request is None:
                        return
                    response = await respond(request)
            status = response.status.value
            head = request is not None and request.method == "HEAD"
            self.client_bound[task] = writer
            write_response(writer, response, head=head, common_headers=COMMON_HEADERS)
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
            if task in self.evicted:
                task.uncancel()
            elif not self.closing:
                raise
        finally:
            self.handlers.discard(task)
            self.evicted.discard(task)
            self.client_bound.pop(task, None)
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
        if not self.client_bound:
            return False
        task = next(iter(self.client_bound))
        writer = self.client_bound.pop(task)
        self.evicted.add(task)
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # a client that does not read: no flush to wait for
        task.cancel()
        return True

    async def _next_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> Request | None:
        """``read_request``, while ``close`` may end the wait at once, and a
        newcomer may take the connection's place."""
        self.waiting.add(task)
        self.client_bound[task] = writer
        try:
            return await read_request(reader)
        finally:
            self.waiting.discard(task)
            self.client_bound.pop(task, None)


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
