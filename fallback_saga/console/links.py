"""The addresses of a saga's page and of its JSON, as the pages link them."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlencode

__all__ = ["history_href", "saga_href"]


# Path segments the URL standard removes (browsers and curl fold ``/sagas/..``
# to ``/``; browsers treat ``%2e`` as a dot too): no encoding of these ids
# survives in a path, so their links carry the id in the query.
_DOT_SEGMENTS: Final = frozenset({".", ".."})


def saga_href(saga_id: str, *, api: bool = False, raw: bool = False) -> str:
    """The saga's page (``api``: its JSON): ``/sagas/<id>``, the id
    percent-encoded (``/`` included); ``/sagas?id=..`` for the ids ``.`` and
    ``..``, which a browser would fold out of the path. ``raw``: with
    ``raw=1``, the values as stored (a page asked raw links raw: a click
    from it showed the next page redacted again)."""
    return history_href(saga_id, 1, api=api, raw=raw)


def history_href(saga_id: str, page: int, *, api: bool = False, raw: bool = False) -> str:
    """The saga's page (``api``: its JSON) showing history page ``page`` (1:
    no parameter); ``raw``: as ``saga_href``."""
    base = "/api/sagas" if api else "/sagas"
    query: dict[str, str | int] = {}
    if saga_id in _DOT_SEGMENTS:
        query["id"] = saga_id
        href = base
    else:
        href = f"{base}/{quote(saga_id, safe='')}"
    if page != 1:
        query["page"] = page
    if raw:
        query["raw"] = 1
    return f"{href}?{urlencode(query)}" if query else href
