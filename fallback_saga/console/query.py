"""What a request asks the console for: the listing's filters and page
(``?status=&name=&since=&until=&before=&limit=&count=``) and the page of a
saga's history (``?page=``), checked; ``BadRequest`` says what is wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qs, urlencode

from ..status import SagaStatus
from .text import shorten

__all__ = [
    "HISTORY_PAGE",
    "MAX_PAGE",
    "STATUSES",
    "BadRequest",
    "ListQuery",
    "history_page",
    "history_span",
    "lenient_list_query",
    "parse_list_query",
    "parse_time",
    "single_values",
]

#: Sagas a listing page shows at most (``?limit=``).
MAX_PAGE: Final = 500
#: Journal entries per page of a saga's history table: a saga of tens of
#: thousands of entries (a large Parallel group, many retries) would make a
#: page of megabytes.
HISTORY_PAGE: Final = 200
#: Every status, in the order the pages and the JSON list them.
STATUSES: Final = tuple(SagaStatus)


class BadRequest(ValueError):
    """A query parameter the console cannot use; the message says why."""


_PARAMETERS: Final = ("status", "name", "since", "until", "before", "limit", "count")
_AGE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_HELP: Final = (
    "an ISO 8601 date or time (UTC unless it has an offset, e.g. 2024-05-01T12:00Z), "
    "Unix seconds, or an age such as 15m, 24h or 7d"
)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters and page of a listing, checked."""

    status: SagaStatus | None = None
    name: str | None = None
    since: float | None = None  # created_at >= since (Unix time)
    until: float | None = None  # created_at < until
    since_text: str = ""  # as given, for the form and the links
    until_text: str = ""
    before: str | None = None  # the last saga id of the previous page
    limit: int = 50
    exact_counts: bool = False  # ?count=exact: counts not stopped at COUNT_CAP

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.name or self.since_text or self.until_text)

    def params(self, **changes: object) -> dict[str, str]:
        """The query's parameters as given, with ``changes`` (``None`` removes one)."""
        values: dict[str, object] = {
            "status": self.status.value if self.status else None,
            "name": self.name,
            "since": self.since_text or None,
            "until": self.until_text or None,
            "before": self.before,
            "limit": self.limit,
            "count": "exact" if self.exact_counts else None,
        }
        values.update(changes)
        return {key: str(value) for key, value in values.items() if value is not None}

    def link(self, path: str, *, default_limit: int, **changes: object) -> str:
        """``path`` with this query's parameters and ``changes`` (default limit left out)."""
        params = self.params(**changes)
        if params.get("limit") == str(default_limit):
            del params["limit"]
        return f"{path}?{urlencode(params)}" if params else path


def single_values(raw_query: str, allowed: Sequence[str]) -> dict[str, str]:
    """The query string's parameters: each known, given once, valid UTF-8."""
    try:
        parsed = parse_qs(
            raw_query, keep_blank_values=True, strict_parsing=False, errors="strict",
            max_num_fields=len(allowed) * 2 + 10,
        )
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8 once percent-decoded") from None
    except ValueError as error:  # too many fields
        raise BadRequest(f"bad query string: {error}") from None
    values: dict[str, str] = {}
    for key, given in parsed.items():
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise BadRequest(f"unknown query parameter {key!r} (known: {known})")
        if len(given) > 1:
            raise BadRequest(f"query parameter {key!r} is given {len(given)} times; give it once")
        values[key] = given[0].strip()
    return values


def parse_time(name: str, text: str, now: float) -> float:
    """Unix time from what a person types: ISO 8601, Unix seconds, or an age."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        value = float(text)
    elif (age := _AGE.fullmatch(text)) is not None:
        value = now - float(age.group(1)) * _UNIT_SECONDS[age.group(2).lower()]
    else:
        iso = text[:-1] + "+00:00" if text[-1:] in ("z", "Z") else text
        try:
            moment = datetime.fromisoformat(iso)
        except ValueError:
            raise BadRequest(f"{name} must be {_TIME_HELP}; got {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be {_TIME_HELP}; got {text!r}")
    return value


def parse_list_query(raw_query: str, *, now: float, default_limit: int) -> ListQuery:
    """The listing asked for by ``?status=&name=&since=&until=&before=&limit=``;
    ``BadRequest`` naming the parameter that is wrong. Empty values mean "any"."""
    values = {k: v for k, v in single_values(raw_query, _PARAMETERS).items() if v}
    status: SagaStatus | None = None
    if "status" in values:
        try:
            status = SagaStatus(values["status"].lower())
        except ValueError:
            choices = ", ".join(s.value for s in STATUSES)
            raise BadRequest(
                f"status must be one of {choices}; got {values['status']!r}"
            ) from None
    limit = default_limit
    if "limit" in values:
        text = values["limit"]
        # ASCII digits only: str.isdigit also takes "²", which int() refuses (a 500).
        if re.fullmatch(r"[0-9]{1,12}", text) is None or not 1 <= int(text) <= MAX_PAGE:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}; got {text!r}")
        limit = int(text)
    if values.get("count", "exact") != "exact":
        raise BadRequest(
            f"count must be exact (every saga counted, however many); got {values['count']!r}"
        )
    since = until = None
    if "since" in values:
        since = parse_time("since", values["since"], now)
    if "until" in values:
        until = parse_time("until", values["until"], now)
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be earlier than until")
    return ListQuery(
        status=status,
        name=values.get("name"),
        since=since,
        until=until,
        since_text=values.get("since", ""),
        until_text=values.get("until", ""),
        before=values.get("before"),
        limit=limit,
        exact_counts="count" in values,
    )


def lenient_list_query(raw_query: str, *, default_limit: int) -> ListQuery:
    """The filters as given, whatever is wrong with them: to show them again
    in the form beside the error."""
    values = {
        key: given[0].strip()
        for key, given in parse_qs(raw_query, keep_blank_values=True, errors="replace").items()
        if key in _PARAMETERS and given
    }
    status = values.get("status", "").lower()
    return ListQuery(
        status=SagaStatus(status) if status in {s.value for s in STATUSES} else None,
        name=values.get("name") or None,
        since_text=values.get("since", ""),
        until_text=values.get("until", ""),
        limit=default_limit,
    )


def history_page(text: str | None, entries: int) -> int:
    """The history page asked for by ``?page=`` (1 when not given) of a saga
    with ``entries`` journal entries; ``BadRequest`` for one it does not have."""
    pages = max(1, -(-entries // HISTORY_PAGE))
    if not text:
        return 1
    # ASCII digits only: str.isdigit also takes "²", which int() refuses.
    if re.fullmatch(r"[0-9]{1,12}", text) is None or not 1 <= int(text) <= pages:
        raise BadRequest(
            f"page must be a whole number from 1 to {pages} (this saga's history has "
            f"{entries} entries, {HISTORY_PAGE} a page); got {shorten(text, 40)!r}"
        )
    return int(text)



def history_span(page: int, entries: int) -> tuple[int, int, int]:
    """History page ``page`` of ``entries`` entries: its first seq, how many
    entries it shows, and how many pages there are."""
    pages = max(1, -(-entries // HISTORY_PAGE))
    first = (page - 1) * HISTORY_PAGE
    return first, max(0, min(HISTORY_PAGE, entries - first)), pages
