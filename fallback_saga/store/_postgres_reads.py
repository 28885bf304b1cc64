"""The PostgreSQL saga store's reads and operator queries: a saga's record
(``load``, ``load_window``), the listings and counts the console and the
CLI show, which ids exist, and the purge of finished sagas.

``Reads`` is held by ``PostgresSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does); it runs its
statements through the store's ``_fetch`` (``_postgres_fetch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, Final

from ..errors import CorruptSagaRecord, SagaNotFound, SagaStoreError
from ..log_lines import library_logger
from ..shielding import cancellation_pending
from ..status import SagaStatus
from ._common import (
    check_saga_id,
    finite_seconds,
    non_negative_int,
    purge_statuses,
    short_repr,
    status_text,
    valid_saga_ids,
    whole_int,
)
from ._listing_pages import ListingPages
from ._postgres_fetch import FetchingStore
from ._postgres_schema import _INTERRUPTED_SQL
from ._postgres_sql import (
    _STATUS_VALUES,
    _created_filter,
    _decode_record,
    _listed_summary,
    _listing_filter,
    _window,
    check_leasable,
)
from ._postgres_unleasable import IN_FLIGHT, UNLEASABLE_SQL
from .base import PURGED_BY_DEFAULT, HistoryWindow, SagaCounts, SagaRecord, SagaSummary

_log = library_logger("fallback_saga.store.postgres")

# ``purge``'s batches: the first takes PURGE_BATCH sagas; each then doubles
# (up to PURGE_BATCH_MAX) while one takes under half of PURGE_BATCH_SECONDS,
# or a quarter of the server's statement_timeout if that is less, and halves
# (down to one saga) when one takes longer.
PURGE_BATCH: Final = 1_000
PURGE_BATCH_MAX: Final = 20_000
PURGE_BATCH_SECONDS: Final = 0.25

# What the server answers when it stops a statement itself: statement_timeout
# (query_canceled) or lock_timeout (lock_not_available). A batch of a purge
# that gets it was rolled back, and is tried again at half its size.
_SERVER_GAVE_UP: Final = frozenset({"57014", "55P03"})


def _server_gave_up(error: SagaStoreError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) in _SERVER_GAVE_UP



_INT4_MAX: Final = 2**31 - 1

# A creation time the listing cannot show (``_listed_summary``), as a
# condition fallback_saga_sagas_by_created answers: no read of every saga.
_CREATED_AT_INFINITY: Final = "created_at IN ('infinity', '-infinity')"


# Of a finished status, the rows a capped count's walk passes (S12): those
# whose creation time the listing cannot show, sought once for the whole
# statement by fallback_saga_sagas_by_created (MATERIALIZED: the filters of
# a walk are not pushed into it, where the planner could seek them by name
# and status instead, reading every saga of those). The walk then reads the
# index alone; a finished saga's update time at infinity, which no index
# holds, is counted as by the whole count (left open, docs/durability.md).
_UNLISTED_FINISHED: Final = (
    "unlisted AS MATERIALIZED (SELECT seq, saga_name, status, created_at FROM {sagas}"
    f" WHERE {_CREATED_AT_INFINITY})"
)


class Reads:
    """A ``PostgresSagaStore``'s reads and operator queries (see the module
    docstring)."""

    __slots__ = ("_sql", "_store")

    def __init__(self, store: FetchingStore) -> None:
        # _fetch is looked up on the store at each call: a subclass's, or one
        # a test puts on the instance, sees every statement.
        self._store = store
        self._sql = store._sql

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's row and history, one statement (``PostgresSagaStore.load``)."""
        saga_id = check_saga_id(saga_id)
        doing = f"cannot load saga {short_repr(saga_id)}"
        row = await self._store._fetch(doing, self._sql.load, (saga_id,))
        if row is None:
            raise SagaNotFound(saga_id)
        row, (fence, claims, expires_at) = row[:-3], row[-3:]
        # The claim's word (S12); created_at and updated_at are the 6th and 7th.
        check_leasable(saga_id, row[2], fence, claims, row[5], row[6], expires_at)
        try:
            return _decode_record(saga_id, row[:-1], 0, row[-1])
        except CorruptSagaRecord:
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type in a row
            raise CorruptSagaRecord(saga_id, f"{type(error).__name__}: {error}") from None

    async def load_window(
        self, saga_id: str, *, start: int, count: int, act_steps: bool = True
    ) -> HistoryWindow:
        """A window of the journal, one statement (``PostgresSagaStore.load_window``)."""
        saga_id = check_saga_id(saga_id)
        start = whole_int("start", start)
        count = non_negative_int("count", count)
        # An int4 the statement can hold: a window past the end is empty.
        start = max(min(start, _INT4_MAX), -_INT4_MAX)
        count = min(count, _INT4_MAX - max(start, 0))
        doing = f"cannot load saga {short_repr(saga_id)}"
        row = await self._store._fetch(
            doing, self._sql.load_window, (bool(act_steps), start, start, start, count, saga_id)
        )
        if row is None:
            raise SagaNotFound(saga_id)
        row, (fence, claims, expires_at) = row[:-3], row[-3:]
        # The claim's word (S12); created_at and updated_at are the 6th and 7th.
        check_leasable(saga_id, row[2], fence, claims, row[5], row[6], expires_at)
        first, length = row[-3], row[-2]
        # The rows the window should hold: none past the journal's end.
        end = max(first, min(first + count, length))
        try:
            record = _decode_record(saga_id, row[:-3], first, end)
        except CorruptSagaRecord:
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type in a row
            raise CorruptSagaRecord(saga_id, f"{type(error).__name__}: {error}") from None
        return HistoryWindow(record, first, length, tuple(row[-1]))

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
        before: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
    ) -> list[SagaSummary]:
        """Newest first, page by page (``PostgresSagaStore.list_sagas``)."""
        limit = non_negative_int("limit", limit)
        sql = self._sql
        where, params = _listing_filter(saga_name, created_since, created_until)
        if status is not None:
            where.append("status = %s")
            params.append(status_text(status))
        below: int | None = None  # the seq the listing goes on below
        if before is not None:
            before = check_saga_id(before)
            # A cursor by id, resolved to its place in the listing's order.
            cursor_row = await self._store._fetch("cannot list sagas", sql.seq_of, (before,))
            if cursor_row is None:
                raise SagaNotFound(before)
            below = cursor_row[0]
        if (created_since is not None or created_until is not None) and not (
            await self._covers_most(created_since, created_until)
        ):
            bounds, bound_params = _window(sql.sagas, created_since, created_until)
            where += bounds
            params += bound_params
        # A window of most sagas is walked as before: the walk reads at most
        # the sagas created after it, then those before it (few), where the
        # bounds would read most of the index.
        pages = ListingPages(limit, below, _log)
        while pages.wanted:
            conditions = [*where, "seq < %s::bigint"] if pages.below is not None else where
            clause = " WHERE " + " AND ".join(conditions) if conditions else ""
            statement = sql.summary + clause + sql.newest_first
            values = (
                [*params, pages.below, pages.chunk]
                if pages.below is not None
                else [*params, pages.chunk]
            )
            pages.take(
                await self._store._fetch("cannot list sagas", statement, values, rows="all"),
                _listed_summary,
            )
        return pages.summaries

    async def count_sagas(
        self,
        *,
        saga_name: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
        at_most: int | None = None,
    ) -> SagaCounts:
        """Counts by (name, status), one statement (``PostgresSagaStore.count_sagas``):
        of the sagas the listing shows (S12), a saga in flight the claim
        skips as corrupt (``_postgres_unleasable``) left out."""
        windowed = created_since is not None or created_until is not None
        if at_most is not None:
            capped = await self._capped_count(
                saga_name, created_since, created_until, non_negative_int("at_most", at_most)
            )
            if capped is None:
                return SagaCounts()
            statement, params = capped
            found = await self._store._fetch("cannot count sagas", statement, params, rows="all")
            found = await self._recount_capped(
                found, saga_name, created_since, created_until, at_most
            )
        else:
            if windowed and await self._covers_most(created_since, created_until):
                # A window of most sagas: every saga (an index-only scan of
                # fallback_saga_sagas_by_name_status), less those created
                # outside it (one statement, one snapshot: the parts add up).
                parts = [self._count_part(saga_name, None, None, "count(*)")]
                if created_since is not None:
                    parts.append(self._count_part(saga_name, None, created_since, "-count(*)"))
                if created_until is not None:
                    parts.append(self._count_part(saga_name, created_until, None, "-count(*)"))
            else:
                parts = [self._count_part(saga_name, created_since, created_until, "count(*)")]
            # Counted from the index by status; those the listing leaves out,
            # less (a read of each saga in flight's row in the window: the
            # index holds no fence), and counted apart.
            parts.append(self._count_part(
                saga_name, created_since, created_until, "-count(*)", "count(*)",
                f"status IN {_INTERRUPTED_SQL} AND {UNLEASABLE_SQL}",
            ))
            # Of any other status, a creation time at infinity, which the
            # listing leaves out too: found by the index by creation time.
            # (Not between the window's first and last seq: those bounds read
            # the window's entries, a wide window's most of the index.)
            parts.append(self._count_part(
                saga_name, created_since, created_until, "-count(*)", "count(*)",
                f"status NOT IN {_INTERRUPTED_SQL} AND {_CREATED_AT_INFINITY}", bounded=False,
            ))
            statement = (
                "SELECT saga_name, status, sum(n)::bigint, sum(u)::bigint FROM ("
                + " UNION ALL ".join(part for part, _ in parts)
                + ") AS parts GROUP BY saga_name, status"
            )
            params = [value for _, values in parts for value in values]
            found = await self._store._fetch("cannot count sagas", statement, params, rows="all")
        counts = SagaCounts()
        unreadable = 0
        for name, status, count, left_out in found:
            unreadable += left_out
            if count <= 0:
                continue
            if status not in _STATUS_VALUES:
                # Unreadable rows are left out, as from a listing.
                _log.warning(
                    "leaving %d saga(s) out of the counts: unknown status %s",
                    count, short_repr(status),
                )
                unreadable += count
                continue
            counts[name, SagaStatus(status)] = count
        # A bounded count reads a few sagas of each status the store writes:
        # it does not look for the others.
        counts.unreadable = unreadable if at_most is None else None
        return counts

    async def _capped_count(
        self, saga_name: str | None, created_since: float | None,
        created_until: float | None, at_most: int,
    ) -> tuple[str, list[Any]] | None:
        """A count by (name, status) reading each status's sagas up to
        ``at_most + 1``: one part a status, each a range of
        fallback_saga_sagas_by_status (status, seq) between the window's first
        and last seq, read first (as ``_window`` reads them; given to the
        statement as values, so that every part's range is an index
        condition), of the sagas the listing shows. Of a status in flight:
        up to ``at_most + 1`` of those (each row read for its fence: a few
        thousand rows at most). Of any other, the walk reads the index alone
        (by name, fallback_saga_sagas_by_name_status covers it), passing the
        seqs of the status's few rows the listing leaves out, sought first
        (``_UNLISTED_FINISHED``). ``None``: no saga in the window."""
        sagas = self._sql.sagas
        where, params = _listing_filter(saga_name, created_since, created_until)
        inside, inside_params = _created_filter(created_since, created_until)
        bounds: tuple[Any, Any] = (None, None)
        if inside:
            row = await self._store._fetch(
                "cannot count sagas",
                f"SELECT min(seq + 0), max(seq + 0) FROM {sagas} WHERE {' AND '.join(inside)}",
                inside_params,
            )
            if row is None or row[0] is None:
                return None
            bounds = (row[0], row[1])
        parts = []
        values: list[Any] = []
        for status in SagaStatus:
            clause = " AND ".join(["status = %s", *where])
            span: list[Any] = []
            if inside:
                # The range as (status, seq) rows: an index condition of
                # fallback_saga_sagas_by_status only. As "seq BETWEEN", the
                # planner walked the index by seq for a status of a few
                # percent, passing every other saga of the window (134,000
                # rows at 400,000 sagas).
                clause += (
                    " AND (status, seq) >= (%s, %s::bigint)"
                    " AND (status, seq) <= (%s, %s::bigint)"
                )
                span = [status.value, bounds[0], status.value, bounds[1]]
            passed: list[Any] = []
            if status.value not in IN_FLIGHT:
                # The seqs to pass, a filter of the index's entries (an
                # array: the planner takes it to pass next to none). The
                # walk goes on past them: up to at_most + 1 listed sagas.
                unlisted = " AND ".join(["status = %s", *where])
                clause += f" AND seq <> ALL(ARRAY(SELECT seq FROM unlisted WHERE {unlisted}))"
                passed = [status.value, *params]
            # In seq order: a LIMIT the planner expects to reach at once for a
            # common status would otherwise be a seq scan, passing every
            # older saga before the window's first.
            walk = (
                f"SELECT saga_name, status, seq FROM {sagas} WHERE {clause}"
                " ORDER BY seq DESC LIMIT %s::bigint"
            )
            values += [status.value, *params, *span, *passed, at_most + 1]
            if status.value not in IN_FLIGHT:
                parts.append(f"(SELECT saga_name, status, false AS bad FROM ({walk}) AS walked)")
                continue
            # The sagas walked (from the index alone), each then judged by
            # the claim's predicate (UNLEASABLE_SQL), looked up by seq: at
            # most at_most + 1 rows read. (With the predicate in the walk's
            # WHERE, the planner, which takes it to hold for few rows, read
            # every saga in flight and sorted them.)
            parts.append(
                f"(SELECT saga_name, status, (SELECT {UNLEASABLE_SQL} FROM {sagas}"
                f" AS row WHERE row.seq = walked.seq) AS bad FROM ({walk}) AS walked)"
            )
        return (
            f"WITH {_UNLISTED_FINISHED.format(sagas=sagas)}"
            " SELECT saga_name, status, count(*) FILTER (WHERE NOT bad),"
            " count(*) FILTER (WHERE bad) FROM ("
            + " UNION ALL ".join(parts) + ") AS capped GROUP BY saga_name, status",
            values,
        )

    async def _recount_capped(
        self, found: list[Any], saga_name: str | None, created_since: float | None,
        created_until: float | None, at_most: int,
    ) -> list[Any]:
        """A capped count's rows, but for a status whose walk stopped at
        ``at_most + 1`` sagas with some the listing leaves out among them:
        whether the others pass ``at_most`` is not known, so that status is
        counted whole (rarely: corrupt rows among the newest sagas of a
        status in flight, of a filter of more than ``at_most``; a finished
        status's walk judges none of its rows)."""
        walked: dict[str, tuple[int, int]] = {}
        for _name, status, readable, bad in found:
            total, corrupt = walked.get(status, (0, 0))
            walked[status] = (total + readable + bad, corrupt + bad)
        unsure = [status for status, (total, corrupt) in walked.items()
                  if total > at_most and corrupt]
        if not unsure:
            return found
        rows = [row for row in found if row[1] not in unsure]
        for status in unsure:
            only = f"status = '{SagaStatus(status).value}'"  # a constant of the library
            parts = [
                self._count_part(saga_name, created_since, created_until, "count(*)", "0", only),
                self._count_part(saga_name, created_since, created_until, "-count(*)",
                                 "count(*)", f"{only} AND {UNLEASABLE_SQL}"),
            ]
            statement = (
                "SELECT saga_name, status, sum(n)::bigint, sum(u)::bigint FROM ("
                + " UNION ALL ".join(part for part, _ in parts)
                + ") AS parts GROUP BY saga_name, status"
            )
            params = [value for _, values in parts for value in values]
            rows += await self._store._fetch("cannot count sagas", statement, params, rows="all")
        return rows

    def _count_part(
        self, saga_name: str | None, created_since: float | None,
        created_until: float | None, counted: str, unreadable: str = "0",
        only: str | None = None, bounded: bool = True,
    ) -> tuple[str, list[Any]]:
        """A count by (name, status) of the sagas in the window, ``counted``
        (``count(*)`` or its negation) as ``n``, ``unreadable`` as ``u``;
        ``only``: of the rows that meet this condition too; ``bounded``:
        between the window's first and last seq (``_window``)."""
        where, params = _listing_filter(saga_name, created_since, created_until)
        if bounded:
            bounds, bound_params = _window(self._sql.sagas, created_since, created_until)
            where += bounds
            params += bound_params
        if only is not None:
            where.append(only)
        clause = " WHERE " + " AND ".join(where) if where else ""
        return (
            f"SELECT saga_name, status, {counted} AS n, {unreadable} AS u"
            f" FROM {self._sql.sagas}{clause}{self._sql.count_groups}",
            params,
        )

    async def _covers_most(self, created_since: float | None, created_until: float | None) -> bool:
        """Whether the window likely holds most sagas: it spans more than half
        the time between the first saga and the last. A guess (sagas are not
        created evenly), which decides only what is read: the window's own
        rows, or the rows outside it — the fewer, when the guess is right."""
        row = await self._store._fetch("cannot count sagas", self._sql.created_span, ())
        if row is None or row[0] is None or row[1] is None or row[1] <= row[0]:
            return False  # no sagas, or one instant
        first, last = row
        since = first if created_since is None else max(first, created_since)
        until = last if created_until is None else min(last, created_until)
        return bool((until - since) * 2 > last - first)

    async def saga_names(self, *, limit: int = 1000) -> list[str]:
        """One query (``PostgresSagaStore.saga_names``)."""
        found = await self._store._fetch(
            "cannot list saga names", self._sql.saga_names,
            (non_negative_int("limit", limit),), rows="all",
        )
        return [name for (name,) in found]

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        """One query (``PostgresSagaStore.existing_saga_ids``)."""
        wanted = valid_saga_ids(saga_ids)
        if not wanted:
            return set()
        found = await self._store._fetch(
            "cannot look up saga ids", self._sql.existing_ids, (wanted,), rows="all"
        )
        return {saga_id for (saga_id,) in found}

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """In batches sized by how long the last took (``PostgresSagaStore.purge``)."""
        older_than = finite_seconds("older_than", older_than)
        chosen = list(purge_statuses(statuses))
        doing = "cannot purge sagas"
        # A read, but the purge's first statement: whatever fails it (no
        # connection, the server's error) leaves the purge with nothing
        # written, and its error says so as a batch's would.
        cutoff, timeout_ms = await self._store._fetch(
            doing, self._sql.purge_cutoff, (older_than,), write=True
        )
        # A batch aims at this long: short enough for the locks it holds,
        # and a quarter of the statement timeout at most.
        aim = PURGE_BATCH_SECONDS
        if timeout_ms:
            aim = min(aim, float(timeout_ms) / 4000.0)
        loop = asyncio.get_running_loop()
        limit = PURGE_BATCH
        after = 0
        total = 0
        while True:
            started = loop.time()
            try:
                gone, read, last, again = await self._store._fetch(
                    doing, self._sql.purge, (after, chosen, cutoff, limit, chosen, cutoff),
                    write=True,
                )
            except SagaStoreError as error:
                if cancellation_pending():
                    # A driver cancelled mid-statement may raise an error of
                    # its own instead (the server's cancellation among them,
                    # which would read as a timeout): the purge stops here.
                    raise asyncio.CancelledError from error
                if limit > 1 and _server_gave_up(error):
                    limit //= 2  # this batch was rolled back: again, smaller
                    continue
                if total and error.nothing_written:
                    # This batch wrote nothing, but the purge did: the
                    # batches before it deleted sagas, and stay committed.
                    raise SagaStoreError(
                        f"{error}; the purge's earlier batches deleted {total} saga(s), "
                        f"which stay deleted"
                    ) from error.__cause__
                raise
            if cancellation_pending():
                # Cancelled while a batch ran, and the driver (or the pool,
                # retrying) answered all the same: the purge stops here.
                raise asyncio.CancelledError
            took = loop.time() - started
            total += int(gone)
            if gone and on_batch is not None:
                on_batch(int(gone))
            if again is not None:
                # Children whose parent this batch deleted: from the first of them.
                after = int(again) - 1
            elif read < limit:
                return total
            else:
                after = int(last)
            if took > aim:
                limit = max(1, limit // 2)
            elif took < aim / 2 and read == limit:
                limit = min(PURGE_BATCH_MAX, limit * 2)

    async def old_finished(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        held: bool = False,
    ) -> int:
        """One query (``PostgresSagaStore.old_finished``)."""
        older_than = finite_seconds("older_than", older_than)
        (count,) = await self._store._fetch(
            "cannot count the finished sagas old enough to purge",
            self._sql.old_finished_held if held else self._sql.old_finished,
            (list(purge_statuses(statuses)), older_than),
        )
        return int(count)
