"""The PostgreSQL saga store's journal writes: ``create`` and ``append``,
each made alone or grouped with others (group commit), the statements they
travel as, and why a write that matched no row was not made.

``Writes`` is held by ``PostgresSagaStore``, whose ``create``, ``append``,
``submit_create`` and ``submit_append`` hand over to it (their docstrings
say what each does). It holds the store's group commit (``journal``): a
write alone runs through the store's ``_fetch``, a group on a pooled
connection of its own (``_postgres_fetch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from ..errors import (
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaNotFound,
    SagaStoreError,
    StoreClosed,
)
from ..status import SagaStatus
from ._common import check_saga_id, short_repr, status_text
from ._group_commit import GroupCommit, RetryAlone
from ._postgres_conn import _getconn, _query
from ._postgres_errors import _NO_CONNECTION, _NOT_SENT, not_opened
from ._postgres_fetch import FetchingStore
from ._postgres_oversize import check_context_size, check_entries_size, fit_entries, split_batches
from ._postgres_part import StorePart
from ._postgres_sql import (
    _CREATING,
    _JOURNALING,
    _commit_in_doubt,
    _context_json,
    _doing,
    _entries_json,
    _group_json,
    _Write,
)
from .base import JournalEntry, Lease

# At most this many journal writes or groups on their way at once (and at
# most half the pool). With groups that share the queue out
# (_group_commit.SHARE_AT_LEAST), 3 beat 2 (x1.4 at 100 sagas in flight)
# and 4; more would split the writes into smaller groups, each a statement
# and a commit more for both sides to pay for.
_GROUP_SLOTS: Final = 3


class Writes(StorePart):
    """A ``PostgresSagaStore``'s journal writes (see the module docstring)."""

    __slots__ = ("_slots", "_sql", "journal")

    def __init__(self, store: FetchingStore) -> None:
        # The store held weakly (StorePart): _fetch is looked up on it at
        # each call, and sees every write made alone.
        super().__init__(store)
        self._sql = store._sql
        # Alone while nothing else is on its way, else grouped (one
        # statement, one round trip), at most _GROUP_SLOTS on their way.
        self._slots = max(1, min(_GROUP_SLOTS, store._pool_size // 2))
        self.journal = self._new_journal()

    def _new_journal(self) -> GroupCommit[_Write, None]:
        return GroupCommit(
            slots=self._slots,
            write_one=self._write_one,
            write_many=self._write_many,
            grouped=self._store.group_commit,
            says_when_sent=True,  # _fetch and _write_many call its sending()
        )

    def start_afresh(self) -> None:
        """A new event loop: a new group commit (its queue and tasks were the
        closed loop's), its counters carried over."""
        old = self.journal
        self.journal = self._new_journal()
        self.journal.writes, self.journal.commits = old.writes, old.commits
        self.journal.largest_group = old.largest_group

    # The journal's writes (create/append), made by the group commit's tasks:
    # each ends with None (made) or the error to raise for it.

    async def _write_one(self, write: _Write) -> None:
        _, statement, params = write
        # The write itself, not its text: _doing is called only if an error is raised.
        if await self._store._fetch(write, statement, params, write=True) is None:
            raise await self._refusal(write)

    async def _refusal(self, write: _Write) -> Exception:
        """Why ``write`` was not made (its statement matched no row): a create
        finds its id taken; an append, a fence or a journal length that
        moved, or no saga (read once more, in the group commit's task)."""
        _, statement, params = write
        if statement is self._sql.create:
            return SagaAlreadyExists(params[0])
        _, _, _, saga_id, token, after, _, _ = params
        try:
            current = await self._store._fetch(_doing(write), self._sql.fence_of, (saga_id,))
        except Exception as error:
            return error
        if current is None:
            return SagaNotFound(saga_id)
        fence_now, length = current
        if token is not None and fence_now != token:
            return LeaseLost(saga_id, token)
        if after is not None and length != after:
            return JournalConflict(saga_id, after, length)
        return SagaNotFound(saga_id)  # not reached: the row was there and matched

    async def _write_many(self, writes: list[_Write]) -> list[BaseException | None]:
        """Journal writes in one transaction: one statement (``_Statements.group``)
        for as many of them as name distinct sagas, and one more each time a
        saga comes back (in order, pipelined: one round trip); the outcome of
        each, as ``_write_one``'s (``GroupCommit``)."""
        store = self._store
        if not store._ready:
            try:
                await store.open()
            except SagaStoreError as error:
                # Not opened: nothing of the group was sent (``_open_for``).
                return [not_opened(error, _doing(write)) for write in writes]
        pool = store._pool
        if pool is None:
            return [StoreClosed("the PostgreSQL saga store is closed") for _ in writes]
        prepare = store._prepare
        if prepare is False:
            store._check_sizes_soon()
        try:
            conn = await _getconn(pool)
        except store._errors as error:
            # No connection: nothing of the group was sent (``_connection``).
            return [store._wrap(error, _doing(write), _NO_CONNECTION) for write in writes]
        try:
            # The writes still to be sent: a write whose deadline came while
            # the group waited for its connection was reported not sent, and
            # is left out (its outcome here goes to nobody).
            live = self.journal.sending() or [True] * len(writes)
            if not any(live):
                return [SagaStoreError(f"{_doing(write)}: {_NOT_SENT}") for write in writes]
            create = self._sql.create
            batches: list[list[str]] = [[]]
            seen: set[str] = set()
            for number, (_, statement, params) in enumerate(writes):
                if not live[number]:
                    continue
                is_create = statement is create
                saga_id = params[0] if is_create else params[3]
                if saga_id in seen:  # a second write to one saga: the next statement
                    batches.append([])
                    seen.clear()
                seen.add(saga_id)
                batches[-1].append(_group_json(number, is_create, params))
            done: set[int] = set()
            statement = self._sql.group
            arrays = ["[" + ",".join(batch) + "]" for batch in split_batches(batches)]
            if len(arrays) == 1 and conn.autocommit:
                # One statement is one transaction: no BEGIN/COMMIT to send.
                cursor = await _query(conn, statement, arrays, prepare)
                done.update(number for (number,) in await cursor.fetchall())
            else:
                cursors = []
                async with conn.pipeline(), conn.transaction():
                    for array in arrays:
                        cursors.append(await _query(conn, statement, (array,), prepare))
                for cursor in cursors:
                    done.update(number for (number,) in await cursor.fetchall())
        except store._errors as error:
            if not _commit_in_doubt(error):
                # The server refused a statement: the transaction was rolled
                # back, nothing in it was written. Each write goes alone.
                raise RetryAlone from error
            return [store._wrap(error, _doing(write)) for write in writes]
        except UnicodeEncodeError as error:
            # A parameter UTF-8 cannot encode: refused before it was sent, the
            # transaction never committed. Each write goes alone.
            raise RetryAlone from error
        finally:
            await pool.putconn(conn)
        return [None if number in done
                else SagaStoreError(f"{_doing(write)}: {_NOT_SENT}") if not live[number]
                else await self._refusal(write)
                for number, write in enumerate(writes)]

    # ------------------------------------------------------------------ the store's writes

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        status: SagaStatus,
    ) -> None:
        """``PostgresSagaStore.create``: the write, awaited."""
        self._store._on_its_loop()
        await self.journal.write(
            self._create_write(saga_id, saga_name, fingerprint, context, entries, status)
        )

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
        fence: Lease | None,
        after: int | None,
    ) -> None:
        """``PostgresSagaStore.append``: the write, awaited."""
        self._store._on_its_loop()
        await self.journal.write(
            self._append_write(saga_id, entries, status, context, fence, after)
        )

    # The executor's hot path (``journal.submits_writes``): ``create`` and
    # ``append`` without their coroutines. Each queues the write on the group
    # commit and returns its future, which refuses cancellation and ends by
    # ``deadline`` (the run's journal_timeout); bad input raises here, before
    # anything is queued.

    def submit_create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        status: SagaStatus,
        deadline: float | None = None,
    ) -> asyncio.Future[None]:
        """``create``'s write, queued: its future."""
        loop = self._store._on_its_loop()
        return self.journal.submit(
            self._create_write(saga_id, saga_name, fingerprint, context, entries, status),
            deadline, loop,
        )

    def submit_append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
        fence: Lease | None,
        after: int | None,
        deadline: float | None = None,
    ) -> asyncio.Future[None]:
        """``append``'s write, queued: its future."""
        loop = self._store._on_its_loop()
        return self.journal.submit(
            self._append_write(saga_id, entries, status, context, fence, after), deadline, loop
        )

    def _create_write(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        status: SagaStatus,
    ) -> _Write:
        saga_id = check_saga_id(saga_id)
        text = _context_json(saga_id, context)
        check_context_size(saga_id, text)
        params = [
            saga_id, saga_name, fingerprint, status_text(status), text, len(entries),
            self._entries_text(saga_id, entries, len(text)),
        ]
        return _CREATING, self._sql.create, params  # its error text: _doing

    def _append_write(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
        fence: Lease | None,
        after: int | None,
    ) -> _Write:
        saga_id = check_saga_id(saga_id)
        token: int | None = None
        if fence is not None:
            if fence.saga_id != saga_id:
                raise ValueError(
                    f"the lease is for saga {short_repr(fence.saga_id)}, not {short_repr(saga_id)}"
                )
            token = fence.token
        count = len(entries)
        text = None
        if context is not None:
            text = _context_json(saga_id, context)
            check_context_size(saga_id, text)
        params = [
            None if status is None else status_text(status), text, count, saga_id, token,
            after, count, self._entries_text(saga_id, entries, 0 if text is None else len(text)),
        ]
        return _JOURNALING, self._sql.append, params  # its error text: _doing

    def _entries_text(self, saga_id: str, entries: Sequence[JournalEntry], beside: int) -> str:
        """The entries' journal form, in the room a statement has beside
        ``beside`` bytes of context (responses too large as their markers).
        What an error text cannot hold is the store's at each call: it is
        learnt when the store opens (``_note_encoding``)."""
        unstorable = self._store._unstorable
        text = _entries_json(saga_id, entries, unstorable)
        fitted = fit_entries(saga_id, entries, text, beside)
        if fitted is None:
            return text
        text = _entries_json(saga_id, fitted, unstorable)
        check_entries_size(saga_id, len(entries), text, beside)
        return text
