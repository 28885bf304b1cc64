"""The console's responses: their content types and security headers.

Every response carries the headers of ``COMMON_HEADERS`` (written with it by
the connection) and a Content-Security-Policy of its own: an HTML page may
use its one stylesheet and nothing else; anything else (JSON, text, the
favicon, a redirect) is inert and sandboxed. An error is written in the kind
its route answers in (``html``, ``json`` or ``text``).
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from typing import Any, Final

from ._http import Response
from .layout import error_page
from .style import STYLE_HASH

__all__ = [
    "COMMON_HEADERS",
    "HTML",
    "TEXT",
    "data_response",
    "error_response",
    "html_response",
    "json_response",
    "redirect",
]

_HTML_CSP: Final = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DATA_CSP: Final = "default-src 'none'; frame-ancestors 'none'; sandbox"
COMMON_HEADERS: Final = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
HTML: Final = "text/html; charset=utf-8"
_JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"


def _csp(policy: str) -> tuple[str, str]:
    return ("Content-Security-Policy", policy)


def html_response(page: str) -> Response:
    return Response(HTTPStatus.OK, page.encode("utf-8", "replace"), HTML, [_csp(_HTML_CSP)])


def data_response(body: bytes, content_type: str) -> Response:
    """A 200 that is no page (text, metrics, an image): inert."""
    return Response(HTTPStatus.OK, body, content_type, [_csp(_DATA_CSP)])


def json_response(status: HTTPStatus, data: Any) -> Response:
    # "<" escaped too: the JSON stays inert even if something renders it as HTML.
    text = json.dumps(data, indent=2, default=str).replace("<", "\\u003c").replace(">", "\\u003e")
    return Response(status, text.encode("ascii") + b"\n", _JSON, [_csp(_DATA_CSP)])


def redirect(location: str) -> Response:
    return Response(
        HTTPStatus.SEE_OTHER, b"", TEXT, [("Location", location), _csp(_DATA_CSP)]
    )


def error_response(kind: str, status: HTTPStatus, message: str, *, store_label: str) -> Response:
    """``message`` as ``kind`` says: an HTML page (with the top bar's
    ``store_label``), a JSON object, or a line of text."""
    if kind == "html":
        heading = {
            HTTPStatus.NOT_FOUND: "Not found",
            HTTPStatus.BAD_REQUEST: "Bad request",
            HTTPStatus.UNPROCESSABLE_ENTITY: "Cannot be read",
        }.get(status, status.phrase)
        body = error_page(status.value, heading, message, store_label=store_label, now=time.time())
        return Response(status, body.encode("utf-8", "replace"), HTML, [_csp(_HTML_CSP)])
    if kind == "json":
        return json_response(status, {"error": {"status": status.value, "message": message}})
    return Response(
        status, f"{status.value} {status.phrase}: {message}\n".encode("utf-8", "replace"),
        TEXT, [_csp(_DATA_CSP)],
    )
