"""The PostgreSQL saga store's counts (``count_sagas``): how many sagas
there are by (name, status), of those the listing shows (S12), in one
statement — whole, from the indexes, or capped (``at_most``), each status's
walk stopping at ``at_most + 1`` sagas — and the guess, which the listing
uses too, of whether a window of creation times holds most sagas
(``Counts.covers_most``). A module of its own, apart from the reads
(``_postgres_reads``): its statements are built of parts (a status's walk,
a window's count, the rows left out) that no other read uses.

``Counts`` is held by ``PostgresSagaStore``, whose ``count_sagas`` hands
over to it (its docstring says what it does), and given to the store's
``Reads``, whose listing asks ``covers_most``; it runs its statements
through the store's ``_fetch`` (``_postgres_fetch``).
"""

from __future__ import annotations

from typing import Any, Final

from ..log_lines import library_logger
from ..status import SagaStatus
from ._common import non_negative_int, short_repr
from ._postgres_fetch import FetchingStore
from ._postgres_part import StorePart
from ._postgres_schema import _INTERRUPTED_SQL
from ._postgres_sql import _STATUS_VALUES, _created_filter, _listing_filter, _window
from ._postgres_unleasable import IN_FLIGHT, UNLEASABLE_SQL
from .base import SagaCounts

_log = library_logger("fallback_saga.store.postgres")

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


class Counts(StorePart):
    """A ``PostgresSagaStore``'s counts (see the module docstring), held by
    the store (``_counts``)."""

    __slots__ = ("_sql",)

    def __init__(self, store: FetchingStore) -> None:
        # The store held weakly (StorePart): _fetch is looked up on it at
        # each call.
        super().__init__(store)
        self._sql = store._sql

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
            if windowed and await self.covers_most(created_since, created_until):
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

    async def covers_most(self, created_since: float | None, created_until: float | None) -> bool:
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
