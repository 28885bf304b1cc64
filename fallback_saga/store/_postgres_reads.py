"""The PostgreSQL saga store's reads: a saga's record (``load``,
``load_window``), the listing the console and the CLI show, the saga names,
and which ids exist — each one statement, or a page of them. The counts
(``_postgres_counts``) and the purge (``_postgres_purge``), the operators'
other queries, are modules of their own.

``Reads`` is held by ``PostgresSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does); it runs its
statements through the store's ``_fetch`` (``_postgres_fetch``), and asks
the store's ``Counts`` whether a listing's window holds most sagas.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from ..errors import CorruptSagaRecord, SagaNotFound
from ..log_lines import library_logger
from ..status import SagaStatus
from ._common import (
    check_saga_id,
    non_negative_int,
    short_repr,
    status_text,
    valid_saga_ids,
    whole_int,
)
from ._listing_pages import ListingPages
from ._postgres_counts import Counts
from ._postgres_fetch import FetchingStore
from ._postgres_part import StorePart
from ._postgres_sql import (
    _decode_record,
    _listed_summary,
    _listing_filter,
    _window,
    check_leasable,
)
from .base import HistoryWindow, SagaRecord, SagaSummary

_log = library_logger("fallback_saga.store.postgres")

_INT4_MAX: Final = 2**31 - 1


class Reads(StorePart):
    """A ``PostgresSagaStore``'s reads (see the module docstring), held by
    the store (``_reads``)."""

    __slots__ = ("_counts", "_sql")

    def __init__(self, store: FetchingStore, counts: Counts) -> None:
        # The store held weakly (StorePart): _fetch is looked up on it at
        # each call.
        super().__init__(store)
        self._sql = store._sql
        # The store's counts: whether a listing's window holds most sagas
        # (covers_most) decides what the listing reads, as it does for a count.
        self._counts = counts

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
            await self._counts.covers_most(created_since, created_until)
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
