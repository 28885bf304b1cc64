"""PostgresSagaStore: a durable journal in PostgreSQL, shared by many processes.

Install the driver with ``pip install "fallback-saga[postgres]"`` (psycopg 3
and psycopg-pool). It is imported here, lazily, when a store is created:
importing ``fallback_saga`` or ``fallback_saga.store`` never imports it.

Connections. The store takes a conninfo string (it then owns an
``AsyncConnectionPool`` of autocommit connections, opened on first use or by
``await store.open()`` and closed by ``await store.close()``), or an
``AsyncConnectionPool`` of yours (used, never closed). Give your pool
``kwargs={"autocommit": True}``: each write is then a single statement in a
single round trip; on non-autocommit connections each write is wrapped in a
transaction of its own (two more round trips). The store works on the event
loop its pool was opened on.

Round trips. ``create`` and ``append`` are **one statement each**: a
data-modifying CTE that inserts or updates the saga row — for ``append``
only while the fencing token matches — and inserts the journal entries
(sent as one JSON parameter) numbered from the row's entry counter.
A write that touches no row costs a second query, to tell ``SagaNotFound``
from ``LeaseLost``. ``load`` is one statement (one snapshot: the context and
the history always agree). Results are read in binary format, so floats
(journal times, lease expiry) come back bit for bit whatever the server's
``extra_float_digits``.

Group commit. A journal write made while no other is on its way goes at
once, alone. The others queue, and go together (``_group_commit.GroupCommit``:
at most three groups on their way, sharing out the burst of writes that one
commit set off): **one statement, one round trip**, one flush to disk — the
writes as one JSON array, each create or append made under its own
conditions (fencing token, ``after``), as alone. A group that holds a saga
twice is split there into statements run in order in one pipelined
transaction. With many sagas in flight, far fewer commits and statements;
with one, nothing changes. Each write still returns only once its
transaction has committed. If the server refuses the group (one bad write),
it was rolled back and each write is retried alone, so only the bad one
fails (saying that nothing of it was written: ``nothing_written``, as
does any write the server answered with an error, that could get no
connection from the pool, or whose deadline came before it was sent —
``_group_commit.NotSent``); if the connection is lost, the commit is in
doubt and every write of the group fails, none retried. ``store.stats``
counts writes and commits.

Leases. ``claim`` is one short transaction: ``SELECT ... FOR UPDATE SKIP
LOCKED`` on the sagas table alone (no join, no subquery: under READ COMMITTED
PostgreSQL re-checks a single-table row after waiting for it, which joins
break), then an ``UPDATE`` that sets the owner and expiry and increments the
fencing token, then commit: no lock is held while the steps run. Every time
a lease is decided on (created/updated times, lease expiry) comes from the
**database server's clock**, so workers on machines with skewed clocks agree.
A step back of that clock strands no saga: a last write or a lease written
more than ``older_than`` ahead of it is due (schema v5's ``lease_written_at``;
``_postgres_sql._AHEAD``).

Notifications. ``hand_off`` (a worker shutting down hands its sagas off)
releases a lease and, if the saga still needs a worker, runs ``pg_notify``
on the store's channel (``work_channel``) in the same statement;
``work_notifications()`` LISTENs on a connection of its own and yields the
handed-off saga ids, so a ``RecoveryWorker`` claims them at once instead of
at its next poll. A plain ``release`` announces nothing: a saga a worker
skipped (unknown name, changed definition) would otherwise bounce between
workers as fast as they can claim it. Sagas left behind by a crash are
announced by no one: polling finds those.

Cheap updates. An append changes the saga row's status, context, counters
and ``updated_at``, none of them indexed; recovery's partial index (the
sagas in flight, oldest update first) is on ``touched_at``, a copy of
``updated_at`` that moves at most once a second. So most appends are
heap-only-tuple (HOT) updates: PostgreSQL rewrites the row on its page and
adds no index entry. (Schema v3; before, the index was on ``updated_at``
and every append added an entry to every index of the table.)

Schema. Versioned in a ``fallback_saga_schema`` table;
``_MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``. Opening
a store whose schema is current costs one query and needs no DDL privilege;
otherwise the migrations run in one transaction under a transaction-level
advisory lock, so concurrent starters migrate once. A schema newer than this
code is refused. ``schema="name"`` puts the tables in that PostgreSQL schema
(created if missing); by default they go where ``search_path`` says.

Data. Contexts are ``json`` (never pickle; ``jsonb`` before schema v4): the
JSON text as written, so every number comes back as it was written (jsonb
turned the float 1e+16 into the int 10000000000000000, -0.0 into 0.0). A
context holding NUL characters or lone surrogates is refused before it is
sent (``ContextSerializationError`` naming the field; nothing is written).
Journaled error texts have NUL characters replaced. Every statement is
parameterized.

Layout. This module is the store itself: its settings, its statistics and
the methods of the protocols, each handed over to an object the store
holds — its journal writes (``create``/``append``/``submit_*`` and the
group commit's statements) to ``_postgres_writes``; its reads to
``_postgres_reads``, its counts to ``_postgres_counts`` and its purge to
``_postgres_purge``; its batch claim (and the give-back of what a claim
whose answer never came took) to ``_postgres_claims``, one saga's lease
(``claim_saga``, ``renew``, ``release``, ...) to ``_postgres_leases`` — these
two made, and their public methods defined, by a base class of the store,
``_postgres_leasing``. Each of those objects holds the store weakly
(``_postgres_part``): a store dropped without ``close()`` goes at once, and
its own pool is closed (``_postgres_pool_closing``). The
connection layer it is built on is two base classes: running a statement
(``_fetch``) and its errors, ``_postgres_fetch``, on the pool's life (open,
close, the event loop, the tables' sizes), ``_postgres_pool`` (its own
pool made and opened: ``_postgres_own_pool``). Below them, talking to the
server (the driver, queries, connections the server closed) is
``_postgres_conn``, the tables and their migrations ``_postgres_schema``,
the statements, the JSON the writes travel as and the decoding of rows
``_postgres_sql``, and the store's errors and their texts
``_postgres_errors``. Imports run one way: the store imports them all (the
claims and the leases through ``_postgres_leasing``); the
objects it holds import the connection layer and those below it, and of
each other only what one is handed in its ``__init__`` (the reads the
counts, the leases the claims); ``_postgres_fetch`` imports
``_postgres_pool``, which imports only those below; and of those below,
each imports only those named before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from ..status import SagaStatus
from ._group_commit import GroupCommit
from ._parking import PARK_AFTER
from ._postgres_counts import Counts
from ._postgres_leasing import LeasingStore
from ._postgres_oversize import MAX_STATEMENT_TEXT
from ._postgres_purge import PURGE_BATCH, PURGE_BATCH_MAX, PURGE_BATCH_SECONDS, Purging
from ._postgres_reads import Reads
from ._postgres_schema import SCHEMA_VERSION
from ._postgres_sql import _Write
from ._postgres_writes import Writes
from .base import (
    PURGED_BY_DEFAULT,
    HistoryWindow,
    JournalEntry,
    Lease,
    SagaCounts,
    SagaRecord,
    SagaSummary,
)

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "MAX_STATEMENT_TEXT",
    "PURGE_BATCH",
    "PURGE_BATCH_MAX",
    "PURGE_BATCH_SECONDS",
    "SCHEMA_VERSION",
    "PostgresSagaStore",
    "PostgresStoreStats",
]

@dataclass(frozen=True, slots=True)
class PostgresStoreStats:
    """Counters of a store's journal writes since it was created.

    ``writes`` journal writes (``create``/``append``, refused ones included)
    went to the server in ``commits`` transactions: with many sagas in
    flight, ``commits`` is much smaller (group commit). ``largest_group`` is
    the most writes one transaction carried.
    """

    writes: int
    commits: int
    largest_group: int


# --------------------------------------------------------------------------- the store


class PostgresSagaStore(LeasingStore):
    """A durable ``RecoverableStore`` in PostgreSQL (psycopg 3, asyncio).

    ``conninfo_or_pool``: a libpq connection string or URL (the store then
    owns a pool of ``min_size``..``max_size`` autocommit connections), or a
    ``psycopg_pool.AsyncConnectionPool`` that you open and close yourself.
    ``schema``: the PostgreSQL schema for the tables (created if missing);
    by default the first schema of the connection's ``search_path``.

    ``synchronous_commit`` (owned pool only): ``"on"`` (the default) — a
    write has reached the server's disk when it returns. ``"off"`` is an
    explicit opt-in: a crash of the *database server* may lose the last
    fraction of a second of writes (never corrupts them); an application
    crash loses nothing. The other PostgreSQL values are accepted for
    replicated setups.

    ``group_commit`` (default on): journal writes made while another is on
    its way go together in one transaction (see the module docstring). Turn it
    off behind a statement-mode pooler, which refuses multi-statement
    transactions; it is off anyway with a libpq older than 14 (no pipeline
    mode).

    ``prepared_statements`` (default on): statements run often are prepared
    on the server (psycopg's ``prepare_threshold``; the group and claim
    statements once the tables are big). Pass ``False`` behind a pooler in
    transaction mode (PgBouncer before 1.21, or without
    ``max_prepared_statements``): a prepared statement lives on one server
    connection, and the pooler hands each transaction to any of them.

    ``park_after`` (default 5; ``None``: never): ``claim`` takes a saga no
    more once it has claimed it that many times without its lease given back
    in order (``release``, ``defer``, ``hand_off``): its resumes keep ending
    the process. Such a saga is parked for an operator, who resumes it once
    by id (``Saga.resume``; ``claim_saga`` is never refused for it).

    The store's own connections talk UTF-8 (``client_encoding``) whatever
    the database's encoding; in a database that is not UTF-8, journaled
    error texts are kept to ASCII (Python's escapes).

    Connections are not pinged before use (that would double the round
    trips). One that the server closed while it sat idle (a restart,
    ``idle_session_timeout``) is seen without a round trip (the server's
    goodbye waits on its socket) and replaced before use; one that a network
    dropped silently fails once with ``SagaStoreError`` and the pool replaces
    it. Give your own pool ``check=AsyncConnectionPool.check_connection`` if
    you prefer paying a round trip per write for that. After a server
    outage the own pool is used again at the next call once the server is
    back (``_postgres_conn.RECONNECT_TIMEOUT``, ``_wait_for_connection``).

    Use ``async with PostgresSagaStore(dsn) as store:`` or ``await
    store.close()`` at shutdown. Many processes and machines may share one
    database: ``claim`` leases each saga to one worker at a time, and fenced
    writes shut out a worker whose lease was taken over.
    """

    # append(..., after=N): written only if the journal holds N entries.
    appends_after: Final = True
    # The keyword filters list_sagas takes beyond the protocol's (RecoverableStore).
    listing_filters: Final = ("before", "created_since", "created_until")
    # create/append only wait on futures: the statements (and an append's
    # follow-up read) run in the group commit's tasks, so they bind nothing
    # to the awaiting task and run to their end whatever happens to it
    # (journal.settle_inline may drive them from the saga's own task).
    writes_outlive_cancellation: Final = True
    # The executor's hot path: each write queued by a plain call, its future
    # awaited (submit_create/submit_append; journal.submits_writes).
    submits_writes: Final = True

    def __init__(
        self,
        conninfo_or_pool: str | AsyncConnectionPool[Any],
        *,
        schema: str | None = None,
        min_size: int = 2,
        max_size: int = 10,
        synchronous_commit: str = "on",
        connect_timeout: float = 30.0,
        group_commit: bool = True,
        prepared_statements: bool = True,
        park_after: int | None = PARK_AFTER,
    ) -> None:
        # The arguments' checks, the connection layer's state (PooledStore,
        # FetchingStore), and the claims and leases (LeasingStore).
        super().__init__(
            conninfo_or_pool, schema=schema, min_size=min_size, max_size=max_size,
            synchronous_commit=synchronous_commit, connect_timeout=connect_timeout,
            group_commit=group_commit, prepared_statements=prepared_statements,
            park_after=park_after,
        )
        self._writes = Writes(self)
        # Bound once, as attributes: the hot path (submit_create,
        # submit_append) calls the journal writes' own methods, no lookup
        # through the store's object on the way.
        self._submit_create = self._writes.submit_create
        self._submit_append = self._writes.submit_append
        # The listing asks the counts whether its window holds most sagas.
        self._counts = Counts(self)
        self._reads = Reads(self, self._counts)
        self._purging = Purging(self)

    @property
    def _journal(self) -> GroupCommit[_Write, None]:
        """The store's group commit (``Writes.journal``: made again for a new
        event loop)."""
        return self._writes.journal

    def _start_afresh(self) -> None:
        """A new event loop: a new group commit (``Writes.start_afresh``)."""
        self._writes.start_afresh()
        super()._start_afresh()

    async def _settle(self) -> None:
        await self._journal.idle()  # writes already queued are finished first
        await super()._settle()  # then the give-backs under way (LeasingStore)

    def __repr__(self) -> str:
        # Never the conninfo: it may hold a password.
        pool = "own pool" if self._owns_pool else "given pool"
        return f"PostgresSagaStore(schema={self.schema!r}, {pool})"

    @property
    def stats(self) -> PostgresStoreStats:
        """How many journal writes went in how many transactions."""
        journal = self._journal
        return PostgresStoreStats(journal.writes, journal.commits, journal.largest_group)

    async def __aenter__(self) -> PostgresSagaStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ writes (_postgres_writes)

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
        """Record a new saga with its first entries, in one statement;
        ``SagaAlreadyExists`` if the id is taken (nothing is written then);
        ``ValueError`` for an id no store can key a saga by (``check_saga_id``)."""
        await self._writes.create(saga_id, saga_name, fingerprint, context, entries, status)

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
        statement. With ``fence``, only while the lease's token is the saga's
        current one (else ``LeaseLost``, nothing written); with ``after``,
        only while the journal holds that many entries (else
        ``JournalConflict``, nothing written)."""
        await self._writes.append(saga_id, entries, status, context, fence, after)

    # The executor's hot path (``journal.submits_writes``): ``create`` and
    # ``append`` without their coroutines. Each queues the write on the group
    # commit and returns its future, which refuses cancellation and ends by
    # ``deadline`` (the run's journal_timeout); bad input raises here, before
    # anything is queued. The store's own methods (journal.submits_writes asks
    # for them), each one call to the ``Writes`` method bound in ``__init__``.

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
        return self._submit_create(
            saga_id, saga_name, fingerprint, context, entries, status, deadline
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
        return self._submit_append(saga_id, entries, status, context, fence, after, deadline)

    # ----------------------------- reads (_postgres_reads, _postgres_counts, _postgres_purge)

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record, read in one snapshot; ``SagaNotFound``, or
        ``CorruptSagaRecord`` for a row that cannot be read back."""
        return await self._reads.load(saga_id)

    async def load_window(
        self, saga_id: str, *, start: int, count: int, act_steps: bool = True
    ) -> HistoryWindow:
        """The saga with ``count`` journal entries from ``start`` (``start <
        0``: from the end), and the journal's length, in one snapshot: only
        those rows are read (the console's page of a long journal, ``show
        --limit``). ``act_steps=False``: without the journal's act step
        names (which read every act row of the saga)."""
        return await self._reads.load_window(
            saga_id, start=start, count=count, act_steps=act_steps
        )

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
        """Newest first (creation order). A row that cannot be read is logged
        and left out, and not counted in ``limit``: the read goes on past it (a
        page of such rows ends no listing).

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
        return await self._counts.count_sagas(
            saga_name=saga_name, created_since=created_since, created_until=created_until,
            at_most=at_most,
        )

    async def saga_names(self, *, limit: int = 1000) -> list[str]:
        """The distinct saga names held, in order, at most ``limit``: one
        look-up a name in an index by name (the console's suggestions)."""
        return await self._reads.saga_names(limit=limit)

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        """Which of ``saga_ids`` the store holds, in one query (an id no store
        can hold is not among them): what ``saga_family`` asks for a saga's
        possible child sagas, one ``lease_state`` each otherwise."""
        return await self._reads.existing_saga_ids(saga_ids)

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Delete finished sagas (and their history) with one of ``statuses``
        not updated for ``older_than`` seconds; returns how many. By default
        ``COMPLETED`` and ``COMPENSATED`` ones: a ``FAILED`` saga (parked for
        an operator) goes only when ``statuses`` names it.

        In batches, each one statement and its own short transaction, in the
        sagas' creation order: a backlog of millions holds no lock for long,
        and each batch stays well inside the server's ``statement_timeout``
        (batches are sized by how long the last took; one the server cancels
        all the same is tried again at half the size, down to one saga).
        Cancelled, a purge keeps the batches it committed. A saga that
        finishes meanwhile is not purged by it (one cut-off, on the server's
        clock). A child saga (``SubSaga``) is not purged while its parent is
        stored (a parent unwinding unwinds it): a family goes parent first,
        its children in a later batch of the same purge. Nor is a saga a
        lease holds (an operator's ``retry-unwinding`` of a FAILED one):
        ``old_finished(held=True)`` counts those it keeps.

        ``on_batch``: called after each batch that deleted sagas, once it is
        committed, with how many it deleted. A purge stopped partway (a
        store error, a cancellation: it raises) keeps what its earlier
        batches deleted: their sum is what ``on_batch`` was told.
        A batch under way when the purge is cancelled may have committed
        (the server answered as it was cancelled): not told."""
        return await self._purging.purge(
            older_than=older_than, statuses=statuses, on_batch=on_batch
        )

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
        return await self._purging.old_finished(older_than=older_than, statuses=statuses, held=held)
