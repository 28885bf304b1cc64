"""SQLiteSagaStore: a durable journal on the standard library's ``sqlite3``.

Threading. ``sqlite3`` calls block, and the event loop must never block, so
every statement runs on a thread the store owns:

* one **writer thread** owns the only writing connection. Write requests from
  every saga (and every event loop) go into one queue. The writer takes all
  the requests that are waiting, runs them in **one** ``BEGIN IMMEDIATE``
  transaction and commits once — one fsync for the whole group (group
  commit) — and only then resolves each request's future, on the loop that
  made it (through that loop's waker, one descriptor the loop watches: see
  ``_loop_waker``). A saga still waits for its own write to be durable; it just
  shares the fsync with every other saga that was waiting at the same time.
  A request that is refused (``SagaAlreadyExists``, ``SagaNotFound``,
  ``LeaseLost``) is refused before it writes anything, so it fails alone;
  an unexpected SQLite error rolls the group back and replays its requests
  one per transaction, so only the culprit fails. Inside a group, the
  creates and appends of distinct sagas are written by a few multi-row
  statements rather than one statement each (see ``_sqlite_sql``):
  the same rows, with far fewer hand-overs of the GIL between the writer
  and the event loop's thread.
* one **reader thread** with its own read-only connection serves ``load``
  and ``list_sagas``. In WAL mode readers never wait for the writer's fsync,
  so an operator listing sagas does not queue behind a commit, and reads do
  not lengthen the writer's critical path. (An in-memory database cannot be
  shared between connections, so there the writer serves reads too.)

``writer="inline"`` is the exception, for programs that run one saga at a
time (a script, a CLI, a batch job): no thread at all; each request runs on
the calling thread, one at a time, on one connection, and a write blocks the
event loop for its commit. Two hand-overs between threads per write (~60 µs
on a virtual machine, where waking an idle CPU is slow) are about a quarter
of a sequential saga's time; with many sagas in flight the writer thread's group
commit is far faster.

Each thread opens its connection at its first request (``await
store.open()`` opens the writer's now), so a bad path or a file that is not
SQLite is reported as a ``SagaStoreError`` from that first call. A thread
whose open failed tries again at its next request: a file that another
process held locked past ``busy_timeout`` fails that one call, not every
later one. The reader never reads a file whose schema is not current: it
migrates it first, through a short-lived writer connection.

Schema. Versioned with ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes a
database from version ``n`` to ``n + 1`` inside the same transaction that
records the new version. A database written by a newer version is refused.

Data. Contexts are stored as JSON text (never pickle); a row that cannot be
read back (bad JSON, an unknown status, text that is not UTF-8) raises
``CorruptSagaRecord`` naming the saga; listings, counts and ``claim`` skip
such a row with a warning that names it, and go on with the others (S12).
Every statement is parameterized. The path is always a file's path (never a
URI), and another program's file is refused before anything changes it.

Layout. This module is the store itself: its public methods, its journal
writes (the executor's hot path, calling the runner with no layer in
between) and its purge. The file (schema, migrations, connections) is
``_sqlite_schema``, reading rows back is ``_sqlite_rows``, what each request
does in SQL is ``_sqlite_sql`` (the requests, the group's transaction and
the journal writes), then by concept ``_sqlite_reads`` (loads, listings,
counts), ``_sqlite_leases`` (recovery's claims and leases) and
``_sqlite_purge`` (retention), and the threads and the writer process that
run the requests are ``_sqlite_workers`` (the process's pipe:
``_sqlite_pipe``), driven by ``_sqlite_runner``. On the store's side, the
options' checks and the runner's life are ``_sqlite_configured`` (the
store's base class), and the reads' and the leases' arguments, checked and
handed to the runner, ``_sqlite_store_reads`` and ``_sqlite_store_leases``
(held by the store). Imports run that way round: each of them imports only
those named before it, and ``_loop_waker`` (how the threads wake an event
loop with its answers), which imports none of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from ..status import SagaStatus
from ._common import check_saga_id, finite_seconds, purge_statuses, short_repr, status_text
from ._parking import PARK_AFTER
from ._sqlite_configured import ConfiguredStore
from ._sqlite_purge import _old_finished, _purge
from ._sqlite_schema import SCHEMA_VERSION, WAL_SIZE_LIMIT
from ._sqlite_sql import _append, _context_json, _create, _storable, _storable_plain
from ._sqlite_store_leases import Leases
from ._sqlite_store_reads import Reads
from .base import (
    PURGED_BY_DEFAULT,
    HistoryWindow,
    JournalEntry,
    Lease,
    LeaseState,
    SagaCounts,
    SagaRecord,
    SagaSummary,
)

__all__ = ["PURGE_BATCH", "SCHEMA_VERSION", "WAL_SIZE_LIMIT", "SQLiteSagaStore", "SQLiteStoreStats"]


# --------------------------------------------------------------------------- the store

# Finished sagas deleted per transaction by ``purge`` (see there): a few
# milliseconds of the write lock each.
PURGE_BATCH = 2_000


@dataclass(frozen=True, slots=True)
class SQLiteStoreStats:
    """Counters of a store's threads since it was opened.

    ``writes`` write requests (refused ones included) were served in
    ``commits`` transactions: with many sagas in flight, ``commits`` is much
    smaller (group commit). ``largest_group`` is the most requests one
    transaction carried.
    """

    writes: int
    commits: int
    reads: int
    largest_group: int


class SQLiteSagaStore(ConfiguredStore):
    """A durable ``RecoverableStore`` in one SQLite file (standard library only).

    ``synchronous="full"`` (the default) fsyncs every commit: a saga whose
    write returned survives a power loss. ``synchronous="normal"`` is an
    explicit opt-in: in WAL mode it survives an application crash but a
    power loss may lose the last commits. ``busy_timeout`` is how long (in
    seconds) a write waits for another process holding the file's write lock.
    ``clock`` (Unix time, default ``time.time``) stamps writes and decides
    lease and age cut-offs; tests may inject their own.

    Use ``async with SQLiteSagaStore(path) as store:`` or ``await
    store.close()`` at shutdown. One store may be used from several event
    loops (each request is answered on the loop that made it). Several
    processes may share the file: writes are serialized by SQLite's lock,
    and ``claim`` leases each saga to one worker at a time.

    ``read_only=True`` is for looking at a file (an operator's ``list`` and
    ``show``, a console): ``load``, ``list_sagas`` and the other reads only,
    on one connection opened with SQLite's ``mode=ro``; the file is never
    created, migrated or written (a write raises ``SagaStoreError``), and a
    schema that is not current is refused with the reason. It sees what
    other processes commit. ``immutable=True`` (with ``read_only``) adds
    SQLite's ``immutable=1``: no locks, and no -wal/-shm files created even
    in a directory you may not write; it is right only while no process
    writes the file (``python -m fallback_saga list`` uses it when no process
    has the file open, and checks that the file did not change meanwhile).

    ``writer`` chooses where the statements run. ``"thread"`` (the default):
    a writer thread with group commit, and a reader thread. ``"process"``:
    the journal writes are committed by a child process (faster with many
    sagas in flight; docs/scaling.md). ``"inline"``: no thread at all; each
    request runs on the calling thread, one at a time, and a write blocks
    the event loop until it is committed (an fsync with ``"full"``, or up to
    ``busy_timeout`` while another process holds the file's lock). It is for
    programs that run one saga at a time (a script, a CLI, a batch job): no
    hand-over between threads, about 1.4x the sagas per second there; with
    many sagas in flight every write commits alone, which is far slower
    than the writer thread's group commit.

    ``park_after`` (default 5; ``None``: never): ``claim`` takes a saga no
    more once it has claimed it that many times without its lease given back
    in order (``release``, ``defer``, ``hand_off``): its resumes keep ending
    the process. Such a saga is parked for an operator, who resumes it once
    by id (``Saga.resume``; ``claim_saga`` is never refused for it).
    """

    # A write is on the writer thread's queue once its coroutine first suspends,
    # and is committed or refused there whatever happens to the awaiting task:
    # the executor then waits for it without a task of its own (journal.py).
    writes_outlive_cancellation: Final = True
    # submit_create/submit_append: the same writes, queued by a plain call that
    # returns the future (no coroutine to drive: journal.submits_writes).
    submits_writes: Final = True
    # append(..., after=N): written only if the journal holds N entries.
    appends_after: Final = True
    # The keyword filters list_sagas takes beyond the protocol's (RecoverableStore).
    listing_filters: Final = ("before", "created_since", "created_until")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        immutable: bool = False,
        writer: str = "thread",
        park_after: int | None = PARK_AFTER,
    ) -> None:
        # The options' checks, and the runner of the requests (ConfiguredStore).
        super().__init__(
            path, synchronous=synchronous, busy_timeout=busy_timeout, clock=clock,
            read_only=read_only, immutable=immutable, writer=writer, park_after=park_after,
        )
        # The reads and the leases, checked and handed to the runner: each
        # holds the runner's submit, not the store (no cycle through them).
        self._reads = Reads(self._submit)
        self._leases = Leases(self._submit)

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self.path!r}, synchronous={self.synchronous!r})"

    # ------------------------------------------------------------------ lifecycle
    # (open and close: ConfiguredStore)

    async def __aenter__(self) -> SQLiteSagaStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def stats(self) -> SQLiteStoreStats:
        writes, commits, reads, largest_group = self._runner.counts()
        return SQLiteStoreStats(
            writes=writes, commits=commits, reads=reads, largest_group=largest_group
        )

    # ------------------------------------------------------------------ SagaStore

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        """Record a new saga; ``SagaAlreadyExists`` if the id is taken (and
        ``ValueError`` for an id no store can key a saga by: see
        ``check_saga_id``)."""
        await self.submit_create(saga_id, saga_name, fingerprint, context, entries, status)

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Lease | None = None,
        after: int | None = None,
    ) -> None:
        """Add transitions and set the status/context when given, in one
        transaction. With ``fence``, only while the lease's token is current
        (else ``LeaseLost``, nothing written)."""
        await self.submit_append(saga_id, entries, status, context, fence, after)

    # The executor's hot path (``submits_writes``): ``create`` and ``append``
    # without their coroutines. Each queues the write for the writer thread (or
    # the writer process) and returns its future, which refuses cancellation;
    # bad input raises here, before anything is queued.

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
        """``create``'s write, queued: its future. ``deadline`` is taken, as
        the executor hands it to every submitting store (``journal.submits_writes``),
        and not used: a write is never abandoned here — begun, it cannot be
        withdrawn from SQLite — and the writer bounds it itself (another
        process's lock is waited for ``busy_timeout`` at most)."""
        saga_id = check_saga_id(saga_id)
        text = _context_json(saga_id, context)
        if self.writer == "process":
            process = self._writer_process()
            if process is not None:
                return process.submit("c", (
                    saga_id, saga_name, fingerprint, status_text(status), text,
                    _storable_plain(entries),
                ))
        return self._submit(
            _create,
            (saga_id, saga_name, fingerprint, status_text(status), text, _storable(entries)),
            write=True,
            journal=True,
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
        """``append``'s write, queued: its future (``deadline``: as ``submit_create``'s)."""
        saga_id = check_saga_id(saga_id)
        token: int | None = None
        if fence is not None:
            if fence.saga_id != saga_id:
                raise ValueError(
                    f"the lease is for saga {short_repr(fence.saga_id)}, not {short_repr(saga_id)}"
                )
            token = fence.token
        status_value = None if status is None else status_text(status)
        text = None if context is None else _context_json(saga_id, context)
        if self.writer == "process":
            process = self._writer_process()
            if process is not None:
                return process.submit(
                    "a", (saga_id, _storable_plain(entries), status_value, text, token, after)
                )
        return self._submit(
            _append, (saga_id, _storable(entries), status_value, text, token, after),
            write=True, journal=True,
        )

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record; ``SagaNotFound``, or ``CorruptSagaRecord`` for a
        row that cannot be read back."""
        return await self._reads.load(saga_id)

    async def load_window(
        self, saga_id: str, *, start: int, count: int, act_steps: bool = True
    ) -> HistoryWindow:
        """The saga with ``count`` journal entries from ``start`` (``start <
        0``: from the end), and the journal's length: only those rows are
        read (the console's page of a long journal, ``show --limit``).
        ``act_steps=False``: without the journal's act step names (which
        read every act row of the saga)."""
        return await self._reads.load_window(
            saga_id, start=start, count=count, act_steps=act_steps
        )

    # ------------------------------------------------------------------ RecoverableStore

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
        """Newest first. A row that cannot be read is logged and left out,
        and not counted in ``limit``: the read goes on past it (a page of
        such rows ends no listing).

        ``before`` (a saga id) lists the sagas after it, for the next page
        (``SagaNotFound`` if it is gone); ``created_since <= created_at <
        created_until`` (Unix time) when given."""
        return await self._reads.list_sagas(
            status=status, saga_name=saga_name, limit=limit, before=before,
            created_since=created_since, created_until=created_until,
        )

    async def count_sagas(
        self,
        *,
        saga_name: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
        at_most: int | None = None,
    ) -> SagaCounts:
        """How many sagas there are, by (saga name, status); filtered like
        ``list_sagas``. Pairs with no saga are absent. ``at_most``: each
        status's sagas are counted up to ``at_most + 1`` (a bounded read): a
        status whose counts add up to more than ``at_most`` has more sagas
        than that, and its counts by name are partial.

        A saga in flight the claim skips as corrupt (S12), which the listing
        leaves out, is not counted either: the counts say what the listing
        shows, and their ``unreadable`` how many rows it left out (``None``
        with ``at_most``)."""
        return await self._reads.count_sagas(
            saga_name=saga_name, created_since=created_since, created_until=created_until,
            at_most=at_most,
        )

    async def lease_state(self, saga_id: str) -> LeaseState:
        """The saga's lease owner, expiry and fencing token; ``SagaNotFound``."""
        return await self._leases.lease_state(saga_id)

    async def saga_names(self, *, limit: int = 1000) -> list[str]:
        """The distinct saga names held, in order, at most ``limit``: one
        look-up a name in the index by name (the console's suggestions)."""
        return await self._reads.saga_names(limit=limit)

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        """Which of ``saga_ids`` the store holds, in one read (an id no store
        can hold is not among them): what ``saga_family`` asks for a saga's
        possible child sagas, one ``lease_state`` each otherwise."""
        return await self._reads.existing_saga_ids(saga_ids)

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool = False, names: Collection[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` interrupted sagas (RUNNING/COMPENSATING, not
        updated for ``older_than`` seconds, no unexpired lease), oldest first,
        inside one ``BEGIN IMMEDIATE`` transaction; each claim increments the
        saga's fencing token. Negative durations are allowed (tests use them
        for "already expired" without sleeping). ``deferred``: also sagas
        ``defer`` keeps out of claims (an operator's ``recover`` pass).
        ``names``: only sagas of these names (a ``RecoveryWorker``'s sagas;
        ``None``: any)."""
        return await self._leases.claim(
            owner=owner, lease_seconds=lease_seconds, older_than=older_than, limit=limit,
            deferred=deferred, names=names, park_after=self.park_after,
        )

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """Lease one saga by id, whatever its age (``Saga.resume`` uses it);
        ``SagaBusy`` if another worker holds an unexpired lease on it."""
        return await self._leases.claim_saga(saga_id, owner=owner, lease_seconds=lease_seconds)

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now (the store's clock), if
        its fencing token is still the saga's current one and it was not given
        back (released, deferred); else ``LeaseLost`` (``SagaNotFound`` if the
        saga is gone). The heartbeat of a resumed saga:
        it changes neither the saga's version nor its ``updated_at``."""
        return await self._leases.renew(lease, lease_seconds)

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        """Clear the lease, if it is still the saga's current one. Its count
        of claims (see ``park_after``) starts again; ``ran=False`` (the
        holder ran nothing of it: a ``claim``'s saga skipped or given back
        untouched) takes that claim back from the count instead."""
        await self._leases.release(lease, ran=ran)

    async def defer(self, lease: Lease, seconds: float, *, ran: bool = True) -> None:
        """``release`` the lease (if it is still the saga's current one), and
        keep the saga out of ``claim`` for ``seconds``; ``claim_saga`` leases
        it at once all the same. For a child saga its parent drives: recovery
        defers it rather than claim it again and again. ``ran``: as for
        ``release``."""
        await self._leases.defer(lease, seconds, ran=ran)

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished sagas (and their history) with one of ``statuses``
        not updated for ``older_than`` seconds; returns how many. By default
        ``COMPLETED`` and ``COMPENSATED`` ones: a ``FAILED`` saga (parked for
        an operator) goes only when ``statuses`` names it.

        ``PURGE_BATCH`` sagas a transaction: a purge of millions holds the
        write lock for one batch at a time, not for all of them, so the
        journal writes of live sagas (of other processes too) go on between
        batches. A saga that finishes meanwhile is not purged by this call.
        A child saga (``SubSaga``) is not purged while its parent is stored
        (a parent unwinding unwinds it): a family goes parent first. Nor is a
        saga a lease holds (an operator's ``retry-unwinding`` of a FAILED
        one): ``old_finished(held=True)`` counts those it keeps.

        ``on_batch``: called after each batch that deleted sagas, once it is
        committed, with how many it deleted. A purge stopped partway (a
        store error, a cancellation: it raises) keeps what its earlier
        batches deleted: their sum is what ``on_batch`` was told.
        A batch under way when the purge is cancelled may still commit (the
        writer finishes what it took): not told."""
        older_than = finite_seconds("older_than", older_than)
        chosen = purge_statuses(statuses)
        loop = asyncio.get_running_loop()
        total = 0
        cutoff: float | None = None
        while True:
            limit = PURGE_BATCH
            started = loop.time()
            count: int
            orphaned: bool
            count, cutoff, orphaned = await self._submit(
                _purge, (older_than, limit, cutoff, chosen), write=True
            )
            total += count
            if count and on_batch is not None:
                on_batch(count)
            if count < limit and not orphaned:
                return total
            # Leave the lock free for as long as the batch held it: another
            # process waiting for it polls (SQLite's busy handler sleeps up to
            # 0.1 s between tries), and a purge taking it back at once would
            # starve it all the same.
            await asyncio.sleep(loop.time() - started)

    async def old_finished(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        held: bool = False,
    ) -> int:
        """How many sagas with one of ``statuses`` (final ones) were last
        updated more than ``older_than`` seconds ago, leased or not — the
        ``FAILED`` ones a purge not told to take them keeps. ``held``: only
        those a lease holds (an operator's ``retry-unwinding``), which
        ``purge`` with the same arguments keeps. The ``purge`` command says
        how many of each it kept."""
        older_than = finite_seconds("older_than", older_than)
        count: int = await self._submit(
            _old_finished, (older_than, purge_statuses(statuses), bool(held)), write=False)
        return count

