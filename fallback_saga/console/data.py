"""What the console shows, read through the store API.

The console needs only ``load`` and ``list_sagas(status=, saga_name=,
limit=)``. It uses the optional capabilities of ``RecoverableStore`` when a
store has them (asked with ``getattr``, as everywhere in the library):
``listing_filters`` (pages and time ranges in the store's own query),
``count_sagas`` (counts by name and status; with ``at_most``, if it takes
it, counts of a time window stop at ``COUNT_CAP`` a status), ``lease_state`` (lease and
fencing token) and ``load_window`` (a page of a long journal: see
``fetch_saga_page``). Without them it filters and counts the newest
``SCAN_LIMIT`` sagas the store lists, and says so on the page.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlencode

from ..errors import CorruptSagaRecord, SagaNotFound, SagaStoreError
from ..record_json import history_json, shown_record
from ..status import SagaStatus
from ..store._parking import parked_claims
from ..store.base import JournalEntry, LeaseState, SagaRecord, SagaSummary, history_window
from ..subsaga import saga_family
from .text import redact, shorten

__all__ = [
    "COUNT_CAP",
    "HISTORY_PAGE",
    "SCAN_LIMIT",
    "TIMELINE_FOLLOWING",
    "WHOLE_JOURNAL",
    "BadRequest",
    "CountFetcher",
    "Counts",
    "ListQuery",
    "Listing",
    "SagaView",
    "fetch_counts",
    "fetch_listing",
    "fetch_saga",
    "fetch_saga_page",
    "history_page",
    "history_span",
    "lease_json",
    "lenient_list_query",
    "listing_json",
    "parse_list_query",
    "record_json",
    "summary_json",
]

#: How many sagas the console lists from a store that cannot filter, page or
#: count by itself; it then works on these, the newest.
SCAN_LIMIT: Final = 1000
MAX_PAGE: Final = 500
#: Journal entries per page of a saga's history table: a saga of tens of
#: thousands of entries (a large Parallel group, many retries) would make a
#: page of megabytes.
HISTORY_PAGE: Final = 200
#: A saga's page reads its whole journal up to this many entries (its
#: timeline, its counts of tries, its alert drawn from all of it); past it,
#: only the page of history shown and the newest page (for the alert): a
#: journal of 100,000 entries was seconds of reading for a page of 200.
WHOLE_JOURNAL: Final = 5000
#: Entries the JSON API reads after a page of a journal longer than
#: ``WHOLE_JOURNAL``, to end the timeline's tries that begin on the page
#: (a try's outcome is a later row: a Parallel group journals its members'
#: STARTED rows, then their outcomes).
TIMELINE_FOLLOWING: Final = WHOLE_JOURNAL
STATUSES: Final = tuple(SagaStatus)
#: Sagas of one status a listing filtered by creation time or by saga name
#: counts at most (``?count=exact``: all of them). A window of half of 1,000,000 sagas was
#: half the table read for its counts at every request: a second on
#: PostgreSQL. Past it the status's count shows as "10,000+", never a
#: number it is not.
COUNT_CAP: Final = 10_000
#: Saga names the filter form suggests at most.
SUGGESTED_NAMES: Final = 500


class BadRequest(ValueError):
    """A query parameter the console cannot use; the message says why."""


# --------------------------------------------------------------------------- the query

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


# --------------------------------------------------------------------------- reading the store


@dataclass(slots=True)
class Counts:
    """Sagas by (name, status), and whether the store counted them all.
    ``capped``: the statuses of which there are more than ``cap`` sagas,
    counted no further (``by_name_status`` has none of them)."""

    by_name_status: dict[tuple[str, SagaStatus], int]
    exact: bool
    note: str | None = None
    capped: frozenset[SagaStatus] = frozenset()
    cap: int = 0

    def by_status(self) -> dict[SagaStatus, int]:
        """Sagas by status; ``cap`` for a capped one (there are more)."""
        totals = dict.fromkeys(STATUSES, 0)
        for (_, status), count in self.by_name_status.items():
            totals[status] += count
        for status in self.capped:
            totals[status] = self.cap
        return totals

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.by_name_status})


@dataclass(slots=True)
class Listing:
    sagas: list[SagaSummary]
    next_before: str | None  # the cursor of the next (older) page, if there is one
    counts: Counts
    notes: list[str] = field(default_factory=list)
    can_list: bool = True
    # Saga id -> its claims, for the sagas the store parks (store._parking).
    parked: dict[str, int] = field(default_factory=dict)
    # Every saga name the store holds (its saga_names), for the name field's
    # suggestions; None: the names counted (counts.names()) stand in.
    names: list[str] | None = None

    def suggested_names(self) -> list[str]:
        """The name field's suggestions, at most ``SUGGESTED_NAMES``."""
        names = self.counts.names() if self.names is None else self.names
        return names[:SUGGESTED_NAMES]


def _store_name(store: object) -> str:
    return type(store).__name__


def _scan_filter(summary: SagaSummary, query: ListQuery) -> bool:
    return (query.since is None or summary.created_at >= query.since) and (
        query.until is None or summary.created_at < query.until
    )


class CountFetcher(Protocol):
    """``fetch_counts``, or what stands in for it (``counting.CountCache``)."""

    def __call__(
        self,
        store: object,
        *,
        saga_name: str | None = ...,
        since: float | None = ...,
        until: float | None = ...,
        at_most: int | None = ...,
    ) -> Awaitable[Counts]: ...


def counts_up_to(count_sagas: Any) -> bool:
    """Whether a store's ``count_sagas`` takes ``at_most`` (the built-in
    stores' do: a store of your own is asked as before)."""
    try:
        parameters = inspect.signature(count_sagas).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
    return "at_most" in parameters


async def fetch_counts(
    store: object,
    *,
    saga_name: str | None = None,
    since: float | None = None,
    until: float | None = None,
    at_most: int | None = None,
) -> Counts:
    """Sagas by (name, status) with these filters: the store's ``count_sagas``
    if it has one, else a count of the newest ``SCAN_LIMIT`` it lists.
    ``at_most``: a status of more sagas than that is counted no further
    (``Counts.capped``), if the store can stop (``counts_up_to``)."""
    count_sagas = getattr(store, "count_sagas", None)
    if callable(count_sagas):
        if at_most is not None and counts_up_to(count_sagas):
            counted = await count_sagas(saga_name=saga_name, created_since=since,
                                        created_until=until, at_most=at_most)
        else:
            at_most = None
            counted = await count_sagas(saga_name=saga_name, created_since=since,
                                        created_until=until)
        found = {(str(n), SagaStatus(s)): int(c) for (n, s), c in counted.items()}
        if at_most is None:
            return Counts(found, True)
        totals = dict.fromkeys(STATUSES, 0)
        for (_, status), count in found.items():
            totals[status] += count
        capped = frozenset(status for status, total in totals.items() if total > at_most)
        if not capped:
            return Counts(found, True)
        # A capped status's counts by name are of the sagas read: partial.
        exact = {key: count for key, count in found.items() if key[1] not in capped}
        return Counts(exact, False, None, capped, at_most)
    list_sagas = getattr(store, "list_sagas", None)
    if not callable(list_sagas):
        return Counts({}, False, f"{_store_name(store)} cannot list sagas: nothing to count")
    listed: list[SagaSummary] = await list_sagas(saga_name=saga_name, limit=SCAN_LIMIT)
    by: dict[tuple[str, SagaStatus], int] = {}
    fake = ListQuery(since=since, until=until)
    for summary in listed:
        if _scan_filter(summary, fake):
            key = (summary.saga_name, summary.status)
            by[key] = by.get(key, 0) + 1
    if len(listed) < SCAN_LIMIT:
        return Counts(by, True)
    return Counts(
        by,
        False,
        f"{_store_name(store)} cannot count sagas: these counts cover its newest "
        f"{SCAN_LIMIT} sagas only",
    )


async def fetch_listing(
    store: object, query: ListQuery, count: CountFetcher | None = None, *,
    suggestions: bool = True,
) -> Listing:
    """One page of sagas, newest first, and the counts by status (for the
    name and time filters, all statuses), from ``count`` (default:
    ``fetch_counts``); with ``suggestions``, every saga name the store
    holds too (the page's name field). ``BadRequest`` if the page cursor
    names a saga that is gone."""
    # Counts filtered by time or by name stop at COUNT_CAP a status (unless
    # ?count=exact): a name of 800,000 sagas was every one of them counted
    # (its index entries read) at each request. The unfiltered counts are
    # reused a while when slow (counting.CountCache), and /metrics needs them whole.
    windowed = query.since is not None or query.until is not None
    counts = await (count or fetch_counts)(
        store, saga_name=query.name, since=query.since, until=query.until,
        at_most=(
            COUNT_CAP if (windowed or query.name is not None) and not query.exact_counts
            else None
        ),
    )
    list_sagas = getattr(store, "list_sagas", None)
    if not callable(list_sagas):
        note = (
            f"{_store_name(store)} cannot list sagas (it has no list_sagas): open a saga "
            f"by its id instead"
        )
        return Listing([], None, counts, [note], can_list=False)
    supported = set(getattr(store, "listing_filters", ()) or ())
    wanted = {
        "before": query.before,
        "created_since": query.since,
        "created_until": query.until,
    }
    used = {key: value for key, value in wanted.items() if value is not None}
    notes: list[str] = []
    if counts.note:
        notes.append(counts.note)
    if set(used) <= supported:
        try:
            found: list[SagaSummary] = await list_sagas(
                status=query.status, saga_name=query.name, limit=query.limit + 1, **used
            )
        except SagaNotFound:
            raise BadRequest(
                f"the page cursor (before={query.before!r}) names a saga that no longer "
                f"exists (purged?): start again from the first page"
            ) from None
        except ValueError as error:  # an id no store can hold
            raise BadRequest(f"before: {error}") from None
    else:
        # The store filters by status and name only: the rest is done here,
        # on the newest SCAN_LIMIT sagas it lists.
        scanned: list[SagaSummary] = await list_sagas(
            status=query.status, saga_name=query.name, limit=SCAN_LIMIT
        )
        if query.before is not None:
            ids = [summary.saga_id for summary in scanned]
            if query.before not in ids:
                raise BadRequest(
                    f"the page cursor (before={query.before!r}) is not among the newest "
                    f"{SCAN_LIMIT} sagas: start again from the first page"
                )
            scanned = scanned[ids.index(query.before) + 1 :]
        found = [summary for summary in scanned if _scan_filter(summary, query)]
        found = found[: query.limit + 1]
        notes.append(
            f"{_store_name(store)} cannot filter by time or page by itself: this listing "
            f"is drawn from its newest {SCAN_LIMIT} sagas"
        )
    next_before = None
    if len(found) > query.limit:
        found = found[: query.limit]
        next_before = found[-1].saga_id
    now = time.time()
    parked = {
        s.saga_id: claims for s in found
        if (claims := parked_claims(store, s.status, s.unreleased_claims, s.lease_owner,
                                    s.lease_expires_at, now)) is not None
    }
    # The names of every saga, not of those counted: a filter by name, or a
    # status counted no further (capped), left names out of the suggestions.
    # Only the page's form shows them (``suggestions``): /api/sagas does not.
    saga_names = getattr(store, "saga_names", None)
    names = (
        await saga_names(limit=SUGGESTED_NAMES)
        if suggestions and callable(saga_names) else None
    )
    return Listing(found, next_before, counts, notes, parked=parked, names=names)


@dataclass(slots=True)
class SagaView:
    """A saga's record and, if the store can tell, its lease."""

    record: SagaRecord
    lease: LeaseState | None
    lease_note: str | None = None
    parent: str | None = None  # a child saga's parent (SubSaga)
    # A parent's child sagas; when ``entries`` is set (a long journal), those
    # of the steps on the page shown only.
    children: list[str] = field(default_factory=list)
    parked: int | None = None  # its claims, if the store parks it (store._parking)
    # Set when record.history holds part of the journal only (a journal longer
    # than WHOLE_JOURNAL): the seq of its first entry, the journal's length,
    # and its newest HISTORY_PAGE entries.
    first: int = 0
    entries: int | None = None
    newest: list[JournalEntry] = field(default_factory=list)


async def fetch_saga_page(
    store: object, saga_id: str, page_text: str | None, *, unredacted: bool = False,
    following: int = 0, newest: bool = True,
) -> tuple[SagaView, int]:
    """The saga as its page shows page ``page_text`` of its history (``?page=``),
    and that page's number (``BadRequest`` for one it does not have). A
    journal of up to ``WHOLE_JOURNAL`` entries is read whole (``fetch_saga``);
    a longer one, that page's entries and ``following`` more after them
    (the JSON API's timeline: where the page's tries end), and unless not
    ``newest`` the newest page (``SagaView.newest``: the page's alert), only
    (``history_window``: the store's ``load_window`` if it has one)."""
    if not callable(getattr(store, "load_window", None)):
        # A store that can only load the whole record: read it once, as before.
        view = await fetch_saga(store, saga_id, unredacted=unredacted)
        return view, history_page(page_text, len(view.record.history))
    asked = 1
    if page_text and re.fullmatch(r"[0-9]{1,12}", page_text) and int(page_text) >= 1:
        asked = int(page_text)
    try:
        # No act step names of the whole journal (a read of every act row):
        # the page links the children of its own steps (below).
        window = await history_window(
            store, saga_id, start=(asked - 1) * HISTORY_PAGE, count=HISTORY_PAGE + following,
            act_steps=False,
        )
    except ValueError:  # not a valid saga id: no saga has it
        raise SagaNotFound(saga_id) from None
    page = history_page(page_text, window.entries)
    if window.first == 0 and len(window.record.history) == window.entries:
        # The page holds the whole journal (a saga of one page): read once.
        return await _view(store, window.record, unredacted), page
    if window.entries <= WHOLE_JOURNAL:
        view = await fetch_saga(store, saga_id, unredacted=unredacted)
        return view, history_page(page_text, len(view.record.history))
    # The child sagas (SubSaga) of the steps this page shows, not of the
    # whole journal's (window.act_steps): a parent of 25,000 child steps was
    # 25,000 ids looked up (50 queries) and linked at every page.
    shown = window.record.history[:HISTORY_PAGE]
    page_acts = tuple(dict.fromkeys(e.step for e in shown if e.action == "act"))
    view = await _view(store, window.record, unredacted, page_acts)
    view.first, view.entries = window.first, window.entries
    if newest:
        last = window.record.history[-HISTORY_PAGE:]
        if window.first + len(window.record.history) < window.entries:
            last = (await history_window(
                store, saga_id, start=-HISTORY_PAGE, count=HISTORY_PAGE, act_steps=False,
            )).record.history
        view.newest = shown_record(
            dataclasses.replace(window.record, history=last), unredacted=unredacted
        ).history
    return view, page


async def fetch_saga(store: object, saga_id: str, *, unredacted: bool = False) -> SagaView:
    """``SagaNotFound`` for an unknown id, or one no store could hold. The
    record is redacted (``record_json.shown_record``) unless ``unredacted``."""
    load = getattr(store, "load", None)
    if not callable(load):
        raise SagaNotFound(saga_id)
    try:
        record: SagaRecord = await load(saga_id)
    except ValueError:  # not a valid saga id: no saga has it
        raise SagaNotFound(saga_id) from None
    return await _view(store, record, unredacted)


async def _view(
    store: object, record: SagaRecord, unredacted: bool, act_steps: Sequence[str] | None = None
) -> SagaView:
    saga_id = record.saga_id
    record = shown_record(record, unredacted=unredacted)
    parent, children = await saga_family(store, record, act_steps)
    lease_state = getattr(store, "lease_state", None)
    if not callable(lease_state):
        return SagaView(record, None, f"{_store_name(store)} keeps no leases", parent, children)
    try:
        state = await lease_state(saga_id)
    except SagaNotFound:  # purged since the load
        return SagaView(record, None, "the saga is gone from the store", parent, children)
    except CorruptSagaRecord:
        # The row's lease columns hold something other than a lease (a
        # damaged or hand-edited row; the store names it in its warning):
        # shown as an unreadable lease, as one read back that way would be.
        return SagaView(record, UNREADABLE_LEASE, None, parent, children)
    except SagaStoreError as error:
        # The record was read: show it, and say why its lease is missing.
        note = f"the store cannot read it ({redact(str(error))})"
        return SagaView(record, None, note, parent, children)
    parked = parked_claims(store, record.status, getattr(state, "unreleased_claims", 0),
                           getattr(state, "owner", None), getattr(state, "expires_at", None))
    return SagaView(record, LeaseState(*state), None, parent, children, parked)


# --------------------------------------------------------------------------- JSON


def is_time(value: object) -> bool:
    """Whether a stored time is one (finite Unix seconds): a damaged or
    hand-edited row may hold anything (``'soon'``, bytes) where a store
    keeps the lease, and one such row must not take a page down (S12)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


# A lease a store refused to read (``CorruptSagaRecord``): its expiry is no
# time, so every view shows it as unreadable.
UNREADABLE_LEASE: Final = LeaseState(None, math.nan, 0)


def lease_readable(lease: LeaseState) -> bool:
    """Whether the lease's owner, expiry and fencing token are what a store writes."""
    return (
        (lease.owner is None or isinstance(lease.owner, str))
        and (lease.expires_at is None or is_time(lease.expires_at))
        and isinstance(lease.token, int)
        and not isinstance(lease.token, bool)
    )


def lease_phase(lease: LeaseState, now: float) -> str:
    """``held``, ``expired``, ``released``, ``never claimed``, or
    ``unreadable`` (the row holds something else than a lease)."""
    if not lease_readable(lease):
        return "unreadable"
    if lease.owner is not None:
        return "held" if lease.expires_at is None or lease.expires_at > now else "expired"
    return "released" if lease.token > 0 else "never claimed"


def lease_json(lease: LeaseState | None, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    readable = lease_readable(lease)
    return {
        "state": lease_phase(lease, now),
        "owner": lease.owner if isinstance(lease.owner, str) else None,
        # A released lease's expiry is only when it was released: not shown as a deadline.
        "expires_at": lease.expires_at if readable and lease.owner is not None else None,
        "fencing_token": lease.token if readable else None,
    }


def summary_json(summary: SagaSummary, parked: bool = False) -> dict[str, Any]:
    """One saga of ``/api/sagas``: ``unreleased_claims`` and ``parked`` as
    ``list --json`` gives them (``parked``: ``Listing.parked`` holds it)."""
    return {
        "saga_id": summary.saga_id,
        "saga_name": summary.saga_name,
        "status": summary.status.value,
        "created_at": summary.created_at,
        "updated_at": summary.updated_at,
        "lease_owner": summary.lease_owner,
        "lease_expires_at": (
            summary.lease_expires_at
            if summary.lease_owner and is_time(summary.lease_expires_at)
            else None
        ),
        "unreleased_claims": summary.unreleased_claims,
        "parked": parked,
    }


def listing_json(listing: Listing, query: ListQuery, *, default_limit: int) -> dict[str, Any]:
    counts = listing.counts
    return {
        "sagas": [
            summary_json(summary, summary.saga_id in listing.parked) for summary in listing.sagas
        ],
        "next_before": listing.next_before,
        "next": (
            query.link("/api/sagas", default_limit=default_limit, before=listing.next_before)
            if listing.next_before
            else None
        ),
        "filters": {
            "status": query.status.value if query.status else None,
            "saga_name": query.name,
            "created_since": query.since,
            "created_until": query.until,
            "before": query.before,
            "limit": query.limit,
        },
        "counts": {status.value: n for status, n in counts.by_status().items()},
        "counts_by_name": [
            {"saga_name": name, "status": status.value, "count": n}
            for (name, status), n in sorted(counts.by_name_status.items())
        ],
        "counts_exact": counts.exact,
        # The statuses of more than ``at`` sagas in the window, counted no
        # further (their "counts" say ``at``; none of them in "counts_by_name"),
        # and the listing with every saga counted.
        "counts_capped": (
            {
                "at": counts.cap,
                "statuses": [s.value for s in STATUSES if s in counts.capped],
                "exact": query.link("/api/sagas", default_limit=default_limit,
                                    count="exact"),
            }
            if counts.capped
            else None
        ),
        "notes": listing.notes,
    }



def history_span(page: int, entries: int) -> tuple[int, int, int]:
    """History page ``page`` of ``entries`` entries: its first seq, how many
    entries it shows, and how many pages there are."""
    pages = max(1, -(-entries // HISTORY_PAGE))
    first = (page - 1) * HISTORY_PAGE
    return first, max(0, min(HISTORY_PAGE, entries - first)), pages


def record_json(
    view: SagaView, now: float | None = None, *, page: int | None = None
) -> dict[str, Any]:
    """The saga as the JSON API gives it: with ``page``, that page of its
    history only (``HISTORY_PAGE`` entries, ``history_page`` says which)."""
    record = view.record
    now = time.time() if now is None else now
    # view.entries: record.history is a window of the journal, from seq view.first.
    entries = len(record.history) if view.entries is None else view.entries
    first, count, pages = 0, entries, 1
    if page is not None:
        first, count, pages = history_span(page, entries)
    data = {
        "saga_id": record.saga_id,
        "saga_name": record.saga_name,
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "lease": lease_json(view.lease, now),
        "lease_note": view.lease_note,
        "context": record.context,
        "history": history_json(record, first, count, base=view.first),
        "parent": view.parent,
        "children": view.children,
    }
    if page is not None:
        data["history_page"] = {
            "page": page,
            "pages": pages,
            "per_page": HISTORY_PAGE,
            "entries": entries,
            "first_seq": first if count else None,
            "last_seq": first + count - 1 if count else None,
        }
    return data


def status_counts_json(counts: Mapping[SagaStatus, int]) -> dict[str, int]:
    return {status.value: n for status, n in counts.items()}
