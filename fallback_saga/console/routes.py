"""The console's pages and its JSON API: what each path answers.

``/`` (the sagas, filtered and paged), ``/sagas/<id>`` (one saga: timeline,
history, context, lease), the same data as JSON under ``/api/sagas``,
``/metrics`` in the Prometheus text format, ``/healthz`` and the favicon.
Each reads the store and nothing else: the server checks the request first
and writes what a handler raises as an error response.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote, urlencode

from ..errors import SagaNotFound
from ._http import HttpError, Request, Response
from .api_json import listing_json, record_json
from .counting import CountCache
from .links import history_href, saga_href
from .list_page import listing_page
from .listing import Listing, fetch_listing
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import exposition
from .query import BadRequest, history_span, lenient_list_query, parse_list_query, single_values
from .responses import TEXT, data_response, html_response, json_response, redirect
from .saga_page import saga_page
from .saga_view import TIMELINE_FOLLOWING, fetch_saga_page
from .style import FAVICON
from .timeline import bars_json, bars_of, page_bars

__all__ = ["Route", "Routes"]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Callable[[Request, str], Awaitable[Response]]
    kind: str  # "html", "json" or "text": how its errors are written
    argument: str = ""


class Routes:
    """The handlers of one console over ``store``."""

    __slots__ = ("allow_unredacted", "counts", "page_size", "store", "store_label")

    def __init__(
        self, store: object, *, page_size: int, store_label: str, allow_unredacted: bool
    ) -> None:
        self.store = store
        self.page_size = page_size
        self.store_label = store_label
        # Whether a request may ask for a saga's values as stored (?raw=1):
        # the console's starter decides, not whoever can reach the page.
        self.allow_unredacted = allow_unredacted
        # Counts are slow on a big store: one that took long is shown again a while.
        self.counts = CountCache()

    def route(self, path: str) -> Route | None:
        if path == "/":
            return Route(self._listing_page, "html")
        if path == "/sagas":
            return Route(self._find_saga, "html")
        if path.startswith("/sagas/"):
            return Route(self._saga_page, "html", path[len("/sagas/") :])
        if path in ("/api/sagas", "/api/sagas/"):
            return Route(self._listing_json, "json")
        if path.startswith("/api/sagas/"):
            return Route(self._saga_json, "json", path[len("/api/sagas/") :])
        if path == "/metrics":
            return Route(self._metrics, "text")
        if path == "/healthz":
            return Route(self._health, "text")
        if path in ("/favicon.svg", "/favicon.ico"):
            return Route(self._favicon, "text")
        return None

    # ------------------------------------------------------------------ pages

    async def _listing_page(self, request: Request, _: str) -> Response:
        now = time.time()
        try:
            query = parse_list_query(request.query, now=now, default_limit=self.page_size)
            listing = await fetch_listing(self.store, query, self.counts.counts)
        except BadRequest as error:
            # The page again, with the filters as given and what is wrong with them.
            query = lenient_list_query(request.query, default_limit=self.page_size)
            listing = Listing([], None, await self.counts.counts(self.store))
            page = listing_page(
                listing, query, default_limit=self.page_size, store_label=self.store_label,
                now=now, error=str(error),
            )
            response = html_response(page)
            response.status = HTTPStatus.BAD_REQUEST
            return response
        return html_response(
            listing_page(
                listing, query, default_limit=self.page_size, store_label=self.store_label,
                now=now,
            )
        )

    async def _find_saga(self, request: Request, _: str) -> Response:
        """``/sagas?id=X``: the search box's form, redirected to X's page, and
        the page itself of the ids ``.`` and ``..`` (no path can carry them)."""
        values = single_values(request.query, ("id", "page", "raw"))
        saga_id = values.get("id", "")
        raw = self._raw(values)
        if not saga_id:
            return redirect("/")
        href = saga_href(saga_id)
        if href.startswith("/sagas/"):
            kept: dict[str, str] = {
                name: values[name] for name in ("page", "raw") if name in values
            }
            return redirect(f"{href}?{urlencode(kept)}" if kept else href)
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
        return html_response(saga_page(view, bars, store_label=self.store_label, now=now,
                                       page=page, raw=raw))

    # ------------------------------------------------------------------ the JSON API

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
        listing = await fetch_listing(self.store, query, self.counts.counts, suggestions=False)
        return json_response(
            HTTPStatus.OK, listing_json(listing, query, default_limit=self.page_size)
        )

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
        response = json_response(HTTPStatus.OK, data)
        # The same links as a header (RFC 8288), for clients that page by it.
        response.headers.append((
            "Link",
            ", ".join(f'<{href}>; rel="{rel}"' for rel, href in links.items() if href),
        ))
        return response

    # ------------------------------------------------------------------ the rest

    async def _metrics(self, request: Request, _: str) -> Response:
        single_values(request.query, ())
        counts = await self.counts.counts(self.store)
        return data_response(exposition(counts).encode("utf-8"), METRICS_CONTENT_TYPE)

    async def _health(self, request: Request, _: str) -> Response:
        return data_response(b"ok\n", TEXT)

    async def _favicon(self, request: Request, _: str) -> Response:
        return data_response(FAVICON.encode(), "image/svg+xml")


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
