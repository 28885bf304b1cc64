"""Just enough HTTP/1.1 for a read-only console, on asyncio streams.

One request per connection (``Connection: close``): no keep-alive, no
request bodies, no chunked encoding, so there is nothing to smuggle and
nothing to buffer. Request lines and headers are bounded in size, count and
time, and so is sending the answer; the server (``ConsoleServer``) also
closes the connection idle longest when a newcomer finds it at its bound, so a
slow or huge client cannot hold the console.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "HEADER_TIMEOUT", "SEND_TIMEOUT", "HttpError", "Request", "Response", "read_request",
    "write_response",
]

MAX_LINE: Final = 8192  # bytes in the request line and in each header line
MAX_HEADERS: Final = 64
HEADER_TIMEOUT: Final = 10.0  # seconds to send the request line and headers
SEND_TIMEOUT: Final = 30.0  # seconds for the client to take the answer

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(r"HTTP/(\d)\.(\d)")
# A Host header's value (RFC 9112 3.2, RFC 3986 3.2.2): a bracketed IP
# literal or a registered name (no "@", no space), then an optional port.
_HOST: Final = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]*\]|[0-9A-Za-z!$&'()*+,;=._~%-]*)(?::[0-9]*)?")


class HttpError(Exception):
    """A request the console answers with an error status and a plain message."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # as sent: still percent-encoded
    query: str  # as sent, without the "?"
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value


@dataclass(slots=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"a line is longer than {MAX_LINE} bytes"
        ) from None
    except asyncio.IncompleteReadError as partial:
        if partial.partial:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the request ended mid-line") from None
        raise EOFError from None
    if len(line) > MAX_LINE:
        raise HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"a line is longer than {MAX_LINE} bytes"
        )
    return line.rstrip(b"\r\n")


async def _read(reader: asyncio.StreamReader) -> Request | None:
    try:
        first = await _line(reader)
    except EOFError:
        return None  # the client connected and left
    except HttpError as error:
        if error.status is HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            # RFC 9112 3: a request-target longer than the server parses is a 414.
            raise HttpError(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"the request line is longer than {MAX_LINE} bytes (a long query string?)",
            ) from None
        raise
    try:
        text = first.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request line is not 'METHOD target HTTP/1.1'")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request method is not a token")
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the HTTP version is missing")
    if matched.group(1) != "1":
        raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is spoken here")
    authority = None
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):  # absolute-form (a proxy's)
        parts_of = urlsplit(target)
        path, query = parts_of.path or "/", parts_of.query
        authority = parts_of.netloc
    else:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the request target must be a path")
    path = path.partition("#")[0]
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            line = await _line(reader)
        except EOFError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the request ended in its headers") from None
        if not line:
            _check_host(headers, authority, http_1_1=matched.group(2) != "0")
            return Request(method, path, query, headers)
        if line[:1] in (b" ", b"\t"):
            raise HttpError(HTTPStatus.BAD_REQUEST, "folded header lines are not accepted")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(HTTPStatus.BAD_REQUEST, "a header line is not 'Name: value'")
        name = name.lower()
        if name == "host" and name in headers:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the request has more than one Host header")
        headers[name] = value.strip(" \t")
    raise HttpError(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {MAX_HEADERS} header lines"
    )


def _check_host(headers: dict[str, str], authority: str | None, *, http_1_1: bool) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request names its host once, as host[:port].
    One the console would read otherwise than a proxy in front of it (the
    first of two Host headers, or the part after an "@") would pass the
    console's DNS-rebinding check for a host the proxy did not check: a 400.
    A target in absolute-form names the host itself, in place of ``Host``."""
    if authority is not None:
        headers["host"] = authority
    host = headers.get("host")
    if host is None:
        if http_1_1:
            raise HttpError(HTTPStatus.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
        return
    if not _HOST.fullmatch(host):
        raise HttpError(HTTPStatus.BAD_REQUEST, "the Host header is not a host[:port]")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request's line and headers (``None``: the client sent nothing);
    ``HttpError`` for a malformed, oversized or too slow one."""
    try:
        async with asyncio.timeout(HEADER_TIMEOUT):
            return await _read(reader)
    except TimeoutError:
        raise HttpError(
            HTTPStatus.REQUEST_TIMEOUT, f"the request was not sent within {HEADER_TIMEOUT:g} s"
        ) from None


def write_response(
    writer: asyncio.StreamWriter,
    response: Response,
    *,
    head: bool,
    common_headers: list[tuple[str, str]],
) -> None:
    """Write ``response`` (its headers only for ``head``) and announce the close."""
    status = response.status
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (*common_headers, *response.headers)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        writer.write(response.body)
