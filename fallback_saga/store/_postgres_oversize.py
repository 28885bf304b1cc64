"""A journal write larger than PostgreSQL takes in one statement.

The server refuses a protocol message of 1 GiB or more (a statement's
parameters travel in one), and a field holds at most 1 GiB: it does not
answer with an error but closes the connection, so the write is reported in
doubt, and so is every other saga's write batched in the same transaction.
Measured on PostgreSQL 15: a saga whose context was 1.1 GB stopped after 53 s
as ``SagaInterrupted`` "in doubt" (it had certainly not landed), and every
recovery pass would have run its step again, to be refused again. So the
store measures a write before it sends it, as ``_sqlite_oversize`` lets SQLite
do, and says what was too large:

* a step's response too large is journaled as the marker of a response that
  could not be kept (``results.UnjournaledResponse`` on resume);
* a context too large is refused with ``ContextSerializationError`` (before
  any step at a saga's creation; after a step, the run unwinds);
* the group commit never puts more than ``MAX_STATEMENT_TEXT`` in one
  statement (``split_batches``).

The texts measured are the encoder's ASCII output: a character is a byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..errors import ContextSerializationError, SagaStoreError, short_id
from ._responses import oversized_response
from .base import JournalEntry

__all__ = [
    "MAX_STATEMENT_TEXT", "check_context_size", "check_entries_size", "fit_entries",
    "split_batches",
]

#: The most bytes of JSON text one statement carries: PostgreSQL's limit on a
#: message (and on a field), 1 GiB, less room for the rest of the statement.
MAX_STATEMENT_TEXT: Final = 2**30 - 2**20


def check_context_size(saga_id: str, text: str) -> None:
    """Refuse a context whose journal form no statement can carry."""
    limit = MAX_STATEMENT_TEXT
    if len(text) <= limit:
        return
    refusal = ContextSerializationError("<context>", {})
    refusal.args = (
        f"the context of saga {short_id(saga_id)} cannot be journaled: its journal form is "
        f"{len(text)} bytes, more than PostgreSQL takes in one statement "
        f"(fallback_saga.store.postgres.MAX_STATEMENT_TEXT: {limit} bytes); nothing was "
        f"written",
    )
    raise refusal


def fit_entries(
    saga_id: str, entries: Sequence[JournalEntry], text: str, beside: int
) -> Sequence[JournalEntry] | None:
    """``entries`` (journaled as ``text``, in a statement that carries
    ``beside`` bytes of context too) with each response too large for the
    statement replaced by its marker; None when ``text`` fits as it is."""
    room = MAX_STATEMENT_TEXT - beside
    if len(text) <= room:
        return None
    # A response is escaped once more inside the entries' JSON: twice its size at most.
    share = room // 2
    return [
        entry if entry.result is None or len(entry.result) <= share
        else entry._replace(
            result=_marker(saga_id, entry.step, entry.result, MAX_STATEMENT_TEXT)
        )
        for entry in entries
    ]


def check_entries_size(saga_id: str, count: int, text: str, beside: int) -> None:
    """Refuse entries that no statement can carry even with their responses
    as markers (``SagaStoreError``; nothing was written)."""
    limit = MAX_STATEMENT_TEXT
    if len(text) <= limit - beside:
        return
    error = SagaStoreError(
        f"cannot journal saga {short_id(saga_id)}: its {count} journal entries are "
        f"{len(text)} bytes, more than PostgreSQL takes in one statement beside its "
        f"context ({limit} bytes); nothing was written"
    )
    error.nothing_written = True
    raise error


def _marker(saga_id: str, step: str, result: str, limit: int) -> str:
    return oversized_response(saga_id, step, result, (
        f"its journal form is {len(result)} bytes, more than PostgreSQL takes in one "
        f"statement (fallback_saga.store.postgres.MAX_STATEMENT_TEXT: {limit} bytes)"
    ))


def split_batches(batches: list[list[str]]) -> list[list[str]]:
    """The group commit's statements (each a list of writes as JSON texts),
    split so that none carries more than ``MAX_STATEMENT_TEXT``: writes that
    fit one by one must not fail together."""
    limit = MAX_STATEMENT_TEXT
    if all(sum(map(len, batch)) + len(batch) <= limit for batch in batches):
        return batches
    split: list[list[str]] = []
    for batch in batches:
        current: list[str] = []
        size = 0
        for write in batch:
            if current and size + len(write) + 1 > limit:
                split.append(current)
                current, size = [], 0
            current.append(write)
            size += len(write) + 1
        split.append(current)
    return split
