"""How a durable store reads a newest-first listing of ``limit`` sagas: in
chunks, past the rows that cannot be read. SQLite runs the walk on its
writer's connection (synchronously), PostgreSQL on the loop (awaiting each
chunk); the walk itself is this one object, so both count alike."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..errors import CorruptSagaRecord
from .base import SagaSummary

__all__ = ["ListingPages", "UnreadableRow"]

# Rows read at least per chunk once the first chunk held unreadable rows: a
# few more than needed, so a run of bad rows takes few round trips.
_READ_ON: Final = 64


class UnreadableRow(Exception):
    """A listed row that cannot be read, with a message that shows what it
    holds (for a row whose saga id is no text, which ``CorruptSagaRecord``
    cannot name)."""


class ListingPages:
    """One listing's walk down the store's order.

    ``limit`` counts the sagas *listed*: a row that cannot be read is left
    out and logged (S12: one bad row must not hide every other saga from an
    operator), and the read goes on past it. Else a page of such rows would
    end a listing paged by ``before`` early, and a table asking for one saga
    more than it shows would say that no more match.

    Each row read starts with its place in the order (SQLite's rowid,
    PostgreSQL's seq); the rest is handed to the store's ``summarize``."""

    __slots__ = ("_limit", "_log", "below", "chunk", "summaries")

    def __init__(self, limit: int, below: int | None, log: logging.Logger) -> None:
        self._limit = limit
        self._log = log
        self.below = below  # the place the next read goes on below (None: the newest)
        self.chunk = limit  # how many rows the next read asks for (0: done)
        self.summaries: list[SagaSummary] = []

    @property
    def wanted(self) -> bool:
        """Whether another chunk is to be read."""
        return self.chunk > 0 and len(self.summaries) < self._limit

    def take(
        self, rows: Sequence[Sequence[Any]], summarize: Callable[[Sequence[Any]], SagaSummary]
    ) -> None:
        """Lists the rows of a chunk read below ``below``, ``chunk`` at most."""
        summaries = self.summaries
        for row in rows:
            if len(summaries) >= self._limit:
                break  # rows past the last saga listed are not read (nor warned about)
            self.below = row[0]
            try:
                summaries.append(summarize(row))
            except (CorruptSagaRecord, UnreadableRow) as error:
                self._log.warning("skipping a saga in the listing: %s", error)
        if len(rows) < self.chunk:
            self.chunk = 0  # no more rows
        else:
            self.chunk = max(self._limit - len(summaries), _READ_ON)
