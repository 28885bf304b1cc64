"""A SQLite saga store's reads, on the store's side: the arguments of
``load``, ``load_window``, ``list_sagas``, ``count_sagas``, ``saga_names``
and ``existing_saga_ids`` checked, and each handed to the store's runner as
one request (what it reads in SQL is ``_sqlite_reads``).

``Reads`` is held by ``SQLiteSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from ..status import SagaStatus
from ._common import check_saga_id, non_negative_int, status_text, valid_saga_ids, whole_int
from ._sqlite_reads import (
    _count,
    _existing_ids,
    _list,
    _load,
    _load_window,
    _optional_time,
    _saga_names,
)
from .base import HistoryWindow, SagaCounts, SagaRecord, SagaSummary


class Reads:
    """A ``SQLiteSagaStore``'s reads (see the module docstring)."""

    __slots__ = ("_submit",)

    def __init__(self, submit: Callable[..., asyncio.Future[Any]]) -> None:
        # The runner's submit (the store's _submit), not the store: a store
        # dropped unclosed goes at once, its threads stopped by their
        # finalizers (_sqlite_runner), with no cycle through its parts.
        self._submit = submit

    async def load(self, saga_id: str) -> SagaRecord:
        record: SagaRecord = await self._submit(_load, (check_saga_id(saga_id),), write=False)
        return record

    async def load_window(
        self, saga_id: str, *, start: int, count: int, act_steps: bool
    ) -> HistoryWindow:
        start = whole_int("start", start)
        count = non_negative_int("count", count)
        window: HistoryWindow = await self._submit(
            _load_window, (check_saga_id(saga_id), start, count, bool(act_steps)), write=False
        )
        return window

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None,
        saga_name: str | None,
        limit: int,
        before: str | None,
        created_since: float | None,
        created_until: float | None,
    ) -> list[SagaSummary]:
        args = (
            None if status is None else status_text(status),
            saga_name,
            non_negative_int("limit", limit),
            None if before is None else check_saga_id(before),
            _optional_time("created_since", created_since),
            _optional_time("created_until", created_until),
        )
        summaries: list[SagaSummary] = await self._submit(_list, args, write=False)
        return summaries

    async def count_sagas(
        self,
        *,
        saga_name: str | None,
        created_since: float | None,
        created_until: float | None,
        at_most: int | None,
    ) -> SagaCounts:
        args = (
            saga_name,
            _optional_time("created_since", created_since),
            _optional_time("created_until", created_until),
            None if at_most is None else non_negative_int("at_most", at_most),
        )
        counts: SagaCounts = await self._submit(_count, args, write=False)
        return counts

    async def saga_names(self, *, limit: int) -> list[str]:
        args = (non_negative_int("limit", limit),)
        names: list[str] = await self._submit(_saga_names, args, write=False)
        return names

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        wanted = valid_saga_ids(saga_ids)
        if not wanted:
            return set()
        found: set[str] = await self._submit(_existing_ids, (wanted,), write=False)
        return found
