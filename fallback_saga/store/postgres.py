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

Layout. This module is the store itself; talking to the server (the driver,
queries, connections the server closed) is ``_postgres_conn``, the tables
and their migrations ``_postgres_schema``, and the statements, the JSON the
writes travel as and the decoding of rows ``_postgres_sql``. Imports run
that way round: each of them imports only those named before it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from ..errors import (
    CorruptSagaRecord,
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaBusy,
    SagaNotFound,
    SagaStoreError,
)
from ..shielding import cancellation_pending, own_task
from ..status import SagaStatus
from ._common import (
    check_owner,
    check_saga_id,
    claim_names,
    finite_seconds,
    non_negative_int,
    purge_statuses,
    short_repr,
    status_text,
    valid_saga_ids,
    whole_int,
)
from ._dsn_secrets import dsn_secrets, scrub
from ._group_commit import GroupCommit, RetryAlone
from ._listing_pages import ListingPages
from ._postgres_oversize import (
    MAX_STATEMENT_TEXT,
    check_context_size,
    check_entries_size,
    fit_entries,
    split_batches,
)
from .base import (
    PURGED_BY_DEFAULT,
    HistoryWindow,
    JournalEntry,
    Lease,
    LeaseState,
    SagaRecord,
    SagaSummary,
)

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found, unused-ignore]
from ..log_lines import library_logger
from ._parking import (
    NEVER_PARKED,
    PARK_AFTER,
    check_park_after,
    check_ran,
)
from ._postgres_conn import (
    _PREPARED_HINT,
    _PREPARED_LOST,
    _READ_COMMITTED,
    RECONNECT_TIMEOUT,
    _driver,
    _getconn,
    _query,
)
from ._postgres_schema import (
    _IDENTIFIER,
    SCHEMA_VERSION,
    _migrate,
    _Names,
    _schema_version,
)
from ._postgres_sql import (
    _NOT_ASCII,
    _STATUS_VALUES,
    _SYNCHRONOUS_COMMIT,
    _UNSTORABLE,
    _commit_in_doubt,
    _context_json,
    _created_filter,
    _decode_record,
    _entries_json,
    _group_json,
    _listed_summary,
    _listing_filter,
    _Statements,
    _window,
    _Write,
)

__all__ = [
    "MAX_STATEMENT_TEXT",
    "PURGE_BATCH",
    "PURGE_BATCH_MAX",
    "PURGE_BATCH_SECONDS",
    "SCHEMA_VERSION",
    "PostgresSagaStore",
    "PostgresStoreStats",
]

_log = library_logger("fallback_saga.store.postgres")

# Seconds between checks, by a listening connection, that the store is still open.
_LISTEN_CHECK: Final = 1.0

# At most this many journal writes or groups on their way at once (and at
# most half the pool). With groups that share the queue out
# (_group_commit.SHARE_AT_LEAST), 3 beat 2 (x1.4 at 100 sagas in flight)
# and 4; more would split the writes into smaller groups, each a statement
# and a commit more for both sides to pay for.
_GROUP_SLOTS: Final = 3

# The statements that find many sagas at once (a group's, the claim's) are
# prepared (their plan cached by the server) only once the sagas and steps
# tables hold this many rows by the server's statistics (pg_class.reltuples:
# -1 before the first ANALYZE). The plan PostgreSQL caches for them while a
# table is small scans it in full, and keeps doing so as the table grows,
# until autovacuum next analyzes it: on a fresh database under load, a
# minute or more of group commits each reading every saga (measured: backend
# CPU per saga from 230 to 1,300 µs within 30 s). Below, each is planned for
# its own parameters (about 0.5 ms of server CPU, once per group), and the
# sizes are read again every _SIZE_CHECK seconds. (A statement that finds
# one saga by its key is planned on the key's index whatever the size.)
_PREPARE_FROM: Final = 10_000
_SIZE_CHECK: Final = 5.0

# Giving back what a claim whose answer never came took (_forget_claim): each
# try waits this long at most for the claim's transaction to end (its row
# locks), then gives its connection back; tries again after a delay that
# doubles up to a cap, for the lease's length and at least this long; close()
# waits this long for the tries under way.
_FORGET_WAIT: Final = "SET LOCAL lock_timeout = '2s'"
_FORGET_DELAY: Final = 0.1
_FORGET_DELAY_MAX: Final = 5.0
_FORGET_AT_LEAST: Final = 60.0
_FORGET_AT_CLOSE: Final = 5.0


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


# What a write's error says when nothing of it was written
# (``SagaStoreError.nothing_written``).
_REFUSED: Final = "refused by the server, which rolled it back: nothing of it was written"
_NOT_SENT: Final = "never sent: nothing of it was written"
_NO_CONNECTION: Final = "never sent, as no connection could be had: nothing of it was written"
_NOT_OPENED: Final = "never sent, as the store could not be opened: nothing of it was written"


_CLOSER: Final = "fallback_saga-pool-closer"


async def _close_pool_when_cancelled(pool: AsyncConnectionPool[Any]) -> None:
    """Wait until cancelled, then close ``pool`` (unless it is closed).

    ``asyncio.run`` (``asyncio.Runner``) ends by cancelling every task left,
    and waits for them all. psycopg_pool's maintenance workers count a
    ``CancelledError`` that lands in their work (a connection being added as
    the pool grows, or one replacing a broken connection) among the errors
    a worker survives, and go back to wait for more work: a loop that ended
    with the store open (a sync app's request that returned, a service's
    Ctrl-C) waited for ever. This task is cancelled with them, and closing
    the pool tells its workers to stop — once every other task is done: what
    the loop's end cancelled along with this one (a worker handing its sagas
    off, a saga unwinding) may still write through the pool.
    (``PostgresSagaStore.close`` closes the pool itself first.)"""
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        # (Only when cancelled: a task never cancelled — made while the loop
        # ended — is dropped with its loop, and must not wait in that.)
        if not pool.closed:
            await _after_the_rest()
            await pool.close()
        raise


async def _close_pool_at_loop_end(pool: AsyncConnectionPool[Any]) -> AsyncGenerator[None, None]:
    """Closes ``pool`` (unless it is closed) when the loop's end closes this
    generator (``shutdown_asyncgens``, once the tasks it cancelled are done):
    a pool opened while the loop ended (by a write that its end cancelled,
    made before any task of the pool's was there to cancel) is closed too,
    its workers told to stop, instead of dropped with the loop."""
    try:
        yield
    finally:
        if not pool.closed:
            await pool.close()


# The tasks of the stores' own pools (psycopg_pool names its scheduler and
# workers after the pool) and of their closers: never waited for by a closer
# (they would wait for each other).
_POOL_TASKS: Final = ("fallback_saga-worker-", "fallback_saga-scheduler", _CLOSER)


class _FrameEnd:
    """Freed with the frame that holds it (see ``work_notifications``)."""

    __slots__ = ("__weakref__",)


def _finish(conn: AsyncConnection[Any]) -> None:
    """Close ``conn``'s connection to the server without its loop (a no-op
    once it is closed)."""
    if not conn.closed:
        conn.pgconn.finish()


async def _after_the_rest() -> None:
    """Return once every task of the loop is done but the pools' own."""
    me = asyncio.current_task()
    while rest := [
        task for task in asyncio.all_tasks()
        if task is not me and not task.get_name().startswith(_POOL_TASKS)
    ]:
        await asyncio.wait(rest)


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


_INT4_MAX: Final = 2**31 - 1


class PostgresSagaStore:
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
        park_after = check_park_after(park_after)
        psycopg, psycopg_pool = _driver()
        if not isinstance(group_commit, bool):
            raise TypeError(f"group_commit must be a bool, got {group_commit!r}")
        if not isinstance(prepared_statements, bool):
            raise TypeError(f"prepared_statements must be a bool, got {prepared_statements!r}")
        if schema is not None and (
            not isinstance(schema, str) or _IDENTIFIER.fullmatch(schema) is None
        ):
            raise ValueError(
                f"schema must be a plain PostgreSQL identifier (letters, digits, _), "
                f"got {schema!r}"
            )
        if not isinstance(synchronous_commit, str) or (
            synchronous_commit.lower() not in _SYNCHRONOUS_COMMIT
        ):
            raise ValueError(
                f"synchronous_commit must be one of {sorted(_SYNCHRONOUS_COMMIT)}, "
                f"got {synchronous_commit!r}"
            )
        timeout = finite_seconds("connect_timeout", connect_timeout)
        if timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, got {connect_timeout!r}")
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        if isinstance(conninfo_or_pool, str):
            non_negative_int("min_size", min_size)
            non_negative_int("max_size", max_size)
            if max_size < 1 or min_size > max_size:
                raise ValueError(
                    f"need 0 <= min_size <= max_size and max_size >= 1, got "
                    f"min_size={min_size!r}, max_size={max_size!r}"
                )
            self._conninfo: str | None = conninfo_or_pool
            self._secrets: tuple[str, ...] = dsn_secrets(conninfo_or_pool)
            self._pool: AsyncConnectionPool[Any] | None = None
            self._owns_pool = True
            pool_size: int = max_size
        elif isinstance(conninfo_or_pool, psycopg_pool.AsyncConnectionPool):
            if synchronous_commit.lower() != "on":
                raise ValueError(
                    "synchronous_commit applies to the store's own pool; configure your "
                    "pool's connections instead"
                )
            self._conninfo = None
            self._secrets = dsn_secrets(conninfo_or_pool.conninfo)
            self._pool = conninfo_or_pool
            self._owns_pool = False
            pool_size = conninfo_or_pool.max_size
        else:
            raise TypeError(
                f"PostgresSagaStore takes a conninfo string or a psycopg_pool."
                f"AsyncConnectionPool, got {type(conninfo_or_pool).__name__}"
            )
        self.schema: str | None = schema
        self.park_after: int | None = park_after
        self.min_size = min_size
        self.max_size = max_size
        self.synchronous_commit: str = synchronous_commit.lower()
        self.connect_timeout = timeout
        self._names = _Names(schema)
        self._sql = _Statements(self._names)
        self._ready = False  # migrated and, for an owned pool, opened
        self._closed = False
        # The close() in progress: a close() called meanwhile waits for it,
        # so that "closed" means the pool is.
        self._closing: asyncio.Future[None] | None = None
        # Claims whose answer never came, being given back (_forget_claim).
        self._forgetting: set[asyncio.Task[None]] = set()
        # psycopg's prepare for the group and claim statements: False (plan
        # each) until the tables are big enough for a cached plan
        # (_PREPARE_FROM), then None (prepared, psycopg's default).
        self._prepare: bool | None = False
        # False: no statement is ever prepared (behind a transaction-mode
        # pooler, a statement prepared on one server connection is unknown,
        # or another one, on the next). psycopg's prepare for the others.
        self.prepared_statements = prepared_statements
        # What an error text cannot hold in this database (``_note_encoding``).
        self._unstorable: re.Pattern[str] = _UNSTORABLE
        self._prepare_any: bool | None = None if prepared_statements else False
        self.size_check_every: float = _SIZE_CHECK
        self._size_check_at = 0.0  # loop time of the next check while not prepared
        self._size_checks: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Lock | None = None
        # Journal writes: alone while nothing else is on its way, else grouped
        # (one statement, one round trip), at most _GROUP_SLOTS on their way.
        # A libpq without pipeline mode (older than 14) writes each alone.
        self.group_commit: bool = group_commit and psycopg.Pipeline.is_supported()
        self._slots = max(1, min(_GROUP_SLOTS, pool_size // 2))
        self._journal: GroupCommit[_Write, None] = self._new_journal()
        # The event loop the store serves: its pool's and its group commit's
        # (the first that uses it; see _on_its_loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0  # the process whose loop that is
        # Closes the own pool when the loop's end cancels every task (see
        # _close_pool_when_cancelled); None while no own pool is open.
        self._pool_closer: asyncio.Task[None] | None = None
        self._pool_guard: AsyncGenerator[None, None] | None = None  # the same, later

    def _new_journal(self) -> GroupCommit[_Write, None]:
        return GroupCommit(
            slots=self._slots,
            write_one=self._write_one,
            write_many=self._write_many,
            grouped=self.group_commit,
            says_when_sent=True,  # _fetch and _write_many call its sending()
        )

    def _on_its_loop(self) -> None:
        """Check that the running event loop is the store's, before anything
        else: the pool, the group commit's queue and its tasks belong to one
        loop, and a write queued from another would wait forever (woken from
        a thread that is not its loop's). A store whose loop has closed —
        one made at import and used by one ``asyncio.run`` after another —
        starts afresh on the new loop (its own pool is opened again)."""
        loop = asyncio.get_running_loop()
        bound = self._loop
        if bound is loop:
            return
        if bound is None:
            self._loop, self._pid = loop, os.getpid()
            return
        if self._pid != os.getpid():
            # Its connections are sockets the parent still uses: neither using
            # them here nor closing them (libpq says goodbye to the server)
            # would leave the parent's sessions intact.
            raise SagaStoreError(
                "this PostgreSQL saga store was used before os.fork(): its connections "
                "belong to the parent process, which a forked child must neither use nor "
                "close; make the store in the child (after the fork), or leave it unused "
                "in the parent"
            )
        if not bound.is_closed():
            raise SagaStoreError(
                "this PostgreSQL saga store serves the event loop it was first used on, "
                "which is still open (another thread's?): its connection pool and its "
                "journal writes belong to that loop; give each event loop a store of its own"
            )
        if not self._owns_pool:
            raise SagaStoreError(
                "the event loop this PostgreSQL saga store was first used on has closed, "
                "and the connection pool it was given belongs to that loop; give the "
                "store a pool made on this loop"
            )
        # Its pool was opened on the closed loop: dropped (its connections
        # end when it is freed), and opened again here at the first call.
        old = self._journal
        self._journal = self._new_journal()
        self._journal.writes, self._journal.commits = old.writes, old.commits
        self._journal.largest_group = old.largest_group
        self._pool = None
        self._pool_closer = self._pool_guard = None  # went with the closed loop
        self._ready = False
        self._opening = None
        self._size_checks = set()
        self._size_check_at = 0.0
        self._loop = loop

    def __repr__(self) -> str:
        # Never the conninfo: it may hold a password.
        pool = "own pool" if self._owns_pool else "given pool"
        return f"PostgresSagaStore(schema={self.schema!r}, {pool})"

    # ------------------------------------------------------------------ lifecycle

    @property
    def pool(self) -> AsyncConnectionPool[Any] | None:
        """The connection pool (``None`` until an owned pool is opened)."""
        return self._pool

    @property
    def stats(self) -> PostgresStoreStats:
        """How many journal writes went in how many transactions."""
        journal = self._journal
        return PostgresStoreStats(journal.writes, journal.commits, journal.largest_group)

    async def open(self) -> None:
        """Connect and migrate the schema now rather than at first use, so a
        bad conninfo or a too-new schema fails here (``SagaStoreError``)."""
        self._on_its_loop()
        if self._ready:
            return
        if self._closed:
            raise SagaStoreError("the PostgreSQL saga store is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._ready:
                return
            if self._closed:
                raise SagaStoreError("the PostgreSQL saga store is closed")
            try:
                if self._owns_pool:
                    await self._open_own_pool()
                else:
                    assert self._pool is not None
                    async with self._pool.connection() as conn:
                        await _migrate(conn, self._names)
                        await self._read_sizes(conn)
                        self._note_encoding(conn)
            except SagaStoreError:
                raise
            except self._errors as error:
                raise self._wrap(
                    error, "cannot open the PostgreSQL saga store"
                ) from self._shown_cause(error)
            self._ready = True

    async def _open_own_pool(self) -> None:
        psycopg, psycopg_pool = _driver()
        assert self._conninfo is not None
        # A direct connection first: a bad conninfo fails at once with the
        # server's own words, not after a pool's retry timeout.
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, **self._connection_kwargs()
                )
        except TimeoutError:
            raise SagaStoreError(
                f"cannot open the PostgreSQL saga store: no connection within "
                f"{self.connect_timeout:g} s"
            ) from None
        try:
            await _migrate(conn, self._names)
            await self._read_sizes(conn)
            self._note_encoding(conn)
        finally:
            await conn.close()
        synchronous_commit = self.synchronous_commit

        async def configure(conn: AsyncConnection[Any]) -> None:
            if synchronous_commit != "on":
                await conn.execute(
                    "SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,)
                )

        pool = psycopg_pool.AsyncConnectionPool(
            self._conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=self._connection_kwargs(),
            configure=configure,
            open=False,
            name="fallback_saga",
            timeout=self.connect_timeout,
            # Reconnections given up soon, and made again for the next
            # request (``_wait_for_connection``): a server back from an
            # outage is used at once, not after a backoff as long as it.
            reconnect_timeout=min(RECONNECT_TIMEOUT, self.connect_timeout),
        )
        try:
            await pool.open(wait=self.min_size > 0, timeout=self.connect_timeout)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._pool_closer = asyncio.get_running_loop().create_task(
            _close_pool_when_cancelled(pool), name=_CLOSER
        )
        guard = _close_pool_at_loop_end(pool)
        await anext(guard)  # known to the loop from now on
        self._pool_guard = guard

    def _note_encoding(self, conn: AsyncConnection[Any]) -> None:
        """Error texts are kept to ASCII in a database that is not UTF-8."""
        encoding = conn.info.parameter_status("server_encoding")
        if encoding is not None and encoding.upper() not in ("UTF8", "UNICODE"):
            self._unstorable = _NOT_ASCII

    def _connection_kwargs(self) -> dict[str, Any]:
        """The arguments of the store's own connections."""
        kwargs: dict[str, Any] = {
            "autocommit": True,
            # Text travels as UTF-8 whatever the database's encoding: in a
            # SQL_ASCII database (no conversion by the server) text came
            # back as bytes, and every saga read as corrupt.
            "client_encoding": "UTF8",
        }
        if not self.prepared_statements:
            kwargs["prepare_threshold"] = None
        return kwargs

    async def close(self) -> None:
        """Close the store's own pool (a given pool is left open). Later calls
        raise ``SagaStoreError``; closing twice is harmless: a ``close()``
        called while another is closing returns when that one has."""
        while self._closing is not None:
            # shield: cancelling this wait must not cancel the other close
            await asyncio.shield(self._closing)
        if self._closed:
            return
        if self._loop is not None and self._loop.is_closed():
            # Used last by a loop that has closed: its pool goes with it.
            self._closed = True
            self._ready = False
            self._pool = None
            self._pool_closer = self._pool_guard = None
            return
        self._on_its_loop()
        self._closing = closing = asyncio.get_running_loop().create_future()
        try:
            await self._close()
        finally:
            self._closing = None
            closing.set_result(None)

    async def _close(self) -> None:
        await self._journal.idle()  # writes already queued are finished first
        if self._forgetting:
            # Claims whose answer never came, still being given back: a
            # moment for them, then their leases run out on their own.
            _, late = await asyncio.wait(set(self._forgetting), timeout=_FORGET_AT_CLOSE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._size_checks:
            await asyncio.gather(*self._size_checks, return_exceptions=True)
        self._closed = True
        self._ready = False
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        closer, self._pool_closer = self._pool_closer, None
        if closer is not None:
            closer.cancel()  # the pool is closed: it finds nothing to do
        self._pool_guard = None  # nor does it

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

    async def _read_sizes(self, conn: AsyncConnection[Any]) -> None:
        """Prepare statements from now on if the tables are big enough
        (``_PREPARE_FROM``)."""
        sql = self._sql
        cursor = await _query(conn, sql.table_rows, sql.table_rows_params, prepare=False)
        row = await cursor.fetchone()
        if (
            self.prepared_statements and row is not None and row[0] is not None
            and row[0] >= _PREPARE_FROM
        ):
            self._prepare = None
        self._size_check_at = asyncio.get_running_loop().time() + self.size_check_every

    def _check_sizes_soon(self) -> None:
        """While statements are not prepared: read the table sizes again, in
        a task of its own, at most every ``size_check_every`` seconds."""
        now = asyncio.get_running_loop().time()
        if now < self._size_check_at or self._closed:
            return
        self._size_check_at = now + self.size_check_every
        task = own_task(self._check_sizes())
        if not task.done():
            self._size_checks.add(task)
            task.add_done_callback(self._size_checks.discard)

    async def _check_sizes(self) -> None:
        pool = self._pool
        if pool is None:
            return
        try:
            conn = await _getconn(pool)
            try:
                await self._read_sizes(conn)
            finally:
                await pool.putconn(conn)
        except self._errors as error:  # the next check may do better
            _log.debug("cannot read the table sizes: %s", error)

    def _wrap(self, error: BaseException, doing: str, not_written: str = "") -> SagaStoreError:
        """The store's error for the driver's ``error``. ``not_written``: why
        the write that failed certainly wrote nothing (``_REFUSED``,
        ``_NOT_SENT``), said in the message and by ``nothing_written``."""
        hint = ""
        if getattr(error, "sqlstate", None) in _PREPARED_LOST:
            hint = _PREPARED_HINT
        shown = scrub(f"{type(error).__name__}: {error}", self._secrets)
        text = f"{doing}: {shown}".rstrip() + hint
        wrapped = SagaStoreError(f"{text} ({not_written})" if not_written else text)
        wrapped.nothing_written = bool(not_written)
        wrapped.__cause__ = self._shown_cause(error)
        wrapped.__suppress_context__ = True
        return wrapped

    def _shown_cause(self, error: BaseException) -> BaseException | None:
        """``error``, to chain to the store's own, unless the driver's message
        quotes a password of the conninfo (libpq quotes what it cannot parse):
        then nothing is chained, and a traceback shows only the scrubbed text."""
        text = str(error)
        return None if any(secret in text for secret in self._secrets) else error

    async def _open_for(self, doing: str, *, write: bool) -> None:
        """``open``, for a statement about to be made: a store opens itself
        at its first use. An open that fails (the server down, a bad
        conninfo, a schema too new, the store closed) has sent nothing of
        that statement; for a ``write`` the error says so (``_NOT_OPENED``,
        ``nothing_written``), as for a write that got no connection: the
        first write of a store opened lazily while the server is down stops
        its run not in doubt. A failed open leaves the store unopened, to be
        opened again by the next call."""
        try:
            await self.open()
        except SagaStoreError as error:
            if not write:
                raise
            raise self._not_opened(error, doing) from error.__cause__

    def _not_opened(self, error: SagaStoreError, doing: str) -> SagaStoreError:
        """The error of a write that was never sent, as ``open`` failed with ``error``."""
        wrapped = SagaStoreError(f"{doing}: {error} ({_NOT_OPENED})")
        wrapped.nothing_written = True
        wrapped.__cause__ = error.__cause__
        wrapped.__suppress_context__ = True
        return wrapped

    async def _connection(
        self, pool: AsyncConnectionPool[Any], doing: str, *, write: bool
    ) -> AsyncConnection[Any]:
        """``_getconn``'s connection, or the store's error if none could be
        had: the pool timed out waiting for one (the server is down or
        unreachable, or every connection is in use), is closed, or has too
        many waiting. The pool's own ``check`` of a connection runs before it
        hands it out and sends nothing of the caller's; so for a ``write``
        nothing of it was sent, and the error says so (``_NO_CONNECTION``).
        A connection that was had and then lost is not this: its write stays
        in doubt (``_commit_in_doubt``)."""
        try:
            return await _getconn(pool)
        except self._errors as error:
            raise self._wrap(
                error, doing, _NO_CONNECTION if write else ""
            ) from self._shown_cause(error)

    async def _fetch(
        self, doing: str, statement: str, params: Sequence[Any], *, rows: str = "one",
        write: bool = False,
    ) -> Any:
        """Run one statement on a pooled connection; its first row (``rows="one"``),
        all rows (``"all"``) or nothing (``"none"``). ``write``: the statement
        writes, and an error the server answered it with (it rolled it back)
        says that nothing was written (``_explain``). Never for a read: the
        executor takes a read's error for no answer about an earlier write
        in doubt, and must not take it for "that write did not land"."""
        self._on_its_loop()
        if not self._ready:
            await self._open_for(doing, write=write)
        pool = self._pool
        if pool is None:
            raise SagaStoreError("the PostgreSQL saga store is closed")
        try:
            # getconn/putconn rather than pool.connection(): the hot path, and an
            # autocommit connection has no transaction for the context to end.
            conn = await self._connection(pool, doing, write=write)
            try:
                if write and self._journal.sending() == [False]:
                    # A journal write whose deadline came while it waited for
                    # this connection: it was reported not sent, and is not.
                    raise SagaStoreError(f"{doing}: {_NOT_SENT}")
                prepare = self._prepare_any
                if conn.autocommit:
                    cursor = await _query(conn, statement, params, prepare)
                else:
                    async with conn.transaction():
                        cursor = await _query(conn, statement, params, prepare)
                if rows == "one":
                    return await cursor.fetchone()
                if rows == "all":
                    return await cursor.fetchall()
                return None
            finally:
                # A connection left mid-statement (cancelled) or in a failed
                # transaction is rolled back or replaced by the pool.
                await pool.putconn(conn)
        except self._errors as error:
            raise await self._explain(error, doing, write=write) from self._shown_cause(error)
        except UnicodeEncodeError as error:  # a parameter UTF-8 cannot encode: never sent
            raise self._wrap(
                error, doing, _NOT_SENT if write else ""
            ) from self._shown_cause(error)

    async def _explain(
        self, error: BaseException, doing: str, *, write: bool = False
    ) -> SagaStoreError:
        """``_wrap``, unless a newer fallback_saga migrated the schema while
        this store was open (the version is checked at open; a rolling deploy
        migrates later): a statement that failed on a table, column, type or
        function then says so, naming both versions, rather than giving the
        SQL error. Read only after such a failure: the hot path pays nothing.

        ``write``: ``error`` ended a write's transaction, which the server
        certainly rolled back if it answered with an error of its own
        (``_commit_in_doubt``): the error then says that nothing was
        written. A lost connection or a shutdown stays in doubt: the COMMIT
        may have been sent, and committed. (No connection at all is
        ``_connection``'s: nothing was sent.)"""
        not_written = _REFUSED if write and not _commit_in_doubt(error) else ""
        sqlstate = getattr(error, "sqlstate", None) or ""
        pool = self._pool
        if pool is not None and (sqlstate.startswith("42") or sqlstate == "23502"):
            try:
                conn = await _getconn(pool)
                try:
                    await _schema_version(conn, self._names)  # raises for a newer one
                finally:
                    await pool.putconn(conn)
            except SagaStoreError as newer:
                also = f"; {not_written}" if not_written else ""
                explained = SagaStoreError(
                    f"{doing}: {newer} (a newer release migrated it while this store had it "
                    f"open; upgrade every process that opens it{also})"
                )
                explained.nothing_written = bool(not_written)
                explained.__cause__ = self._shown_cause(error)
                return explained
            except self._errors:
                pass  # the original error says enough
        return self._wrap(error, doing, not_written)

    # The journal's writes (create/append), made by the group commit's tasks:
    # each ends with None (made) or the error to raise for it.

    async def _write_one(self, write: _Write) -> None:
        doing, statement, params = write
        if await self._fetch(doing, statement, params, write=True) is None:
            raise await self._refusal(write)

    async def _refusal(self, write: _Write) -> Exception:
        """Why ``write`` was not made (its statement matched no row): a create
        finds its id taken; an append, a fence or a journal length that
        moved, or no saga (read once more, in the group commit's task)."""
        doing, statement, params = write
        if statement is self._sql.create:
            return SagaAlreadyExists(params[0])
        _, _, _, saga_id, token, after, _, _ = params
        try:
            current = await self._fetch(doing, self._sql.fence_of, (saga_id,))
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
        if not self._ready:
            try:
                await self.open()
            except SagaStoreError as error:
                # Not opened: nothing of the group was sent (``_open_for``).
                return [self._not_opened(error, doing) for doing, _, _ in writes]
        pool = self._pool
        if pool is None:
            return [SagaStoreError("the PostgreSQL saga store is closed") for _ in writes]
        prepare = self._prepare
        if prepare is False:
            self._check_sizes_soon()
        try:
            conn = await _getconn(pool)
        except self._errors as error:
            # No connection: nothing of the group was sent (``_connection``).
            return [self._wrap(error, doing, _NO_CONNECTION) for doing, _, _ in writes]
        try:
            # The writes still to be sent: a write whose deadline came while
            # the group waited for its connection was reported not sent, and
            # is left out (its outcome here goes to nobody).
            live = self._journal.sending() or [True] * len(writes)
            if not any(live):
                return [SagaStoreError(f"{doing}: {_NOT_SENT}") for doing, _, _ in writes]
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
        except self._errors as error:
            if not _commit_in_doubt(error):
                # The server refused a statement: the transaction was rolled
                # back, nothing in it was written. Each write goes alone.
                raise RetryAlone from error
            return [self._wrap(error, doing) for doing, _, _ in writes]
        except UnicodeEncodeError as error:
            # A parameter UTF-8 cannot encode: refused before it was sent, the
            # transaction never committed. Each write goes alone.
            raise RetryAlone from error
        finally:
            await pool.putconn(conn)
        return [None if number in done
                else SagaStoreError(f"{write[0]}: {_NOT_SENT}") if not live[number]
                else await self._refusal(write)
                for number, write in enumerate(writes)]

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
        """Record a new saga with its first entries, in one statement;
        ``SagaAlreadyExists`` if the id is taken (nothing is written then);
        ``ValueError`` for an id no store can key a saga by (``check_saga_id``)."""
        self._on_its_loop()
        await self._journal.write(
            self._create_write(saga_id, saga_name, fingerprint, context, entries, status)
        )

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
        self._on_its_loop()
        await self._journal.write(
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
        self._on_its_loop()
        return self._journal.submit(
            self._create_write(saga_id, saga_name, fingerprint, context, entries, status),
            deadline,
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
        self._on_its_loop()
        return self._journal.submit(
            self._append_write(saga_id, entries, status, context, fence, after), deadline
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
        return f"cannot create saga {short_repr(saga_id)}", self._sql.create, params

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
        return f"cannot journal saga {short_repr(saga_id)}", self._sql.append, params

    def _entries_text(self, saga_id: str, entries: Sequence[JournalEntry], beside: int) -> str:
        """The entries' journal form, in the room a statement has beside
        ``beside`` bytes of context (responses too large as their markers)."""
        text = _entries_json(saga_id, entries, self._unstorable)
        fitted = fit_entries(saga_id, entries, text, beside)
        if fitted is None:
            return text
        text = _entries_json(saga_id, fitted, self._unstorable)
        check_entries_size(saga_id, len(entries), text, beside)
        return text

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record, read in one snapshot; ``SagaNotFound``, or
        ``CorruptSagaRecord`` for a row that cannot be read back."""
        saga_id = check_saga_id(saga_id)
        doing = f"cannot load saga {short_repr(saga_id)}"
        row = await self._fetch(doing, self._sql.load, (saga_id,))
        if row is None:
            raise SagaNotFound(saga_id)
        try:
            return _decode_record(saga_id, row)
        except CorruptSagaRecord:
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type in a row
            raise CorruptSagaRecord(saga_id, f"{type(error).__name__}: {error}") from None

    async def load_window(
        self, saga_id: str, *, start: int, count: int, act_steps: bool = True
    ) -> HistoryWindow:
        """The saga with ``count`` journal entries from ``start`` (``start <
        0``: from the end), and the journal's length, in one snapshot: only
        those rows are read (the console's page of a long journal, ``show
        --limit``). ``act_steps=False``: without the journal's act step
        names (which read every act row of the saga)."""
        saga_id = check_saga_id(saga_id)
        start = whole_int("start", start)
        count = non_negative_int("count", count)
        # An int4 the statement can hold: a window past the end is empty.
        start = max(min(start, _INT4_MAX), -_INT4_MAX)
        count = min(count, _INT4_MAX - max(start, 0))
        doing = f"cannot load saga {short_repr(saga_id)}"
        row = await self._fetch(
            doing, self._sql.load_window, (bool(act_steps), start, start, start, count, saga_id)
        )
        if row is None:
            raise SagaNotFound(saga_id)
        try:
            record = _decode_record(saga_id, row[:-3])
        except CorruptSagaRecord:
            raise
        except (TypeError, ValueError) as error:  # a value of the wrong type in a row
            raise CorruptSagaRecord(saga_id, f"{type(error).__name__}: {error}") from None
        return HistoryWindow(record, row[-3], row[-2], tuple(row[-1]))

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
        """Newest first (creation order). A row that cannot be read is logged
        and left out, and not counted in ``limit``: the read goes on past it (a
        page of such rows ends no listing).

        ``before`` (a saga id) lists the sagas after it, for the next page
        (``SagaNotFound`` if it is gone); ``created_since <= created_at <
        created_until`` (Unix time) when given."""
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
            cursor_row = await self._fetch("cannot list sagas", sql.seq_of, (before,))
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
                await self._fetch("cannot list sagas", statement, values, rows="all"),
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
    ) -> dict[tuple[str, SagaStatus], int]:
        """How many sagas there are, by (saga name, status); filtered like
        ``list_sagas``. Pairs with no saga are absent. ``at_most``: each
        status's sagas are counted up to ``at_most + 1`` (a bounded read): a
        status whose counts add up to more than ``at_most`` has more sagas
        than that, and its counts by name are partial."""
        windowed = created_since is not None or created_until is not None
        if at_most is not None:
            capped = await self._capped_count(
                saga_name, created_since, created_until, non_negative_int("at_most", at_most)
            )
            if capped is None:
                return {}
            statement, params = capped
        elif windowed and await self._covers_most(created_since, created_until):
            # A window of most sagas: every saga (an index-only scan of
            # fallback_saga_sagas_by_name_status), less those created
            # outside it, in one statement (one snapshot: the parts add up).
            parts = [self._count_part(saga_name, None, None, "count(*)")]
            if created_since is not None:
                parts.append(self._count_part(saga_name, None, created_since, "-count(*)"))
            if created_until is not None:
                parts.append(self._count_part(saga_name, created_until, None, "-count(*)"))
            statement = (
                "SELECT saga_name, status, sum(n)::bigint FROM ("
                + " UNION ALL ".join(part for part, _ in parts)
                + ") AS parts GROUP BY saga_name, status"
            )
            params = [value for _, values in parts for value in values]
        else:
            statement, params = self._count_part(
                saga_name, created_since, created_until, "count(*)"
            )
        found = await self._fetch("cannot count sagas", statement, params, rows="all")
        counts: dict[tuple[str, SagaStatus], int] = {}
        for name, status, count in found:
            if count <= 0:
                continue
            if status not in _STATUS_VALUES:
                # Unreadable rows are left out, as from a listing.
                _log.warning(
                    "leaving %d saga(s) out of the counts: unknown status %s",
                    count, short_repr(status),
                )
                continue
            counts[name, SagaStatus(status)] = count
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
        condition). ``None``: no saga in the window."""
        sagas = self._sql.sagas
        where, params = _listing_filter(saga_name, created_since, created_until)
        inside, inside_params = _created_filter(created_since, created_until)
        bounds: tuple[Any, Any] = (None, None)
        if inside:
            row = await self._fetch(
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
            # In seq order: a LIMIT the planner expects to reach at once for a
            # common status would otherwise be a seq scan, passing every
            # older saga before the window's first.
            parts.append(
                f"(SELECT saga_name, status FROM {sagas} WHERE {clause}"
                " ORDER BY seq DESC LIMIT %s::bigint)"
            )
            values += [status.value, *params, *span, at_most + 1]
        return (
            "SELECT saga_name, status, count(*) FROM ("
            + " UNION ALL ".join(parts) + ") AS capped GROUP BY saga_name, status",
            values,
        )

    def _count_part(
        self, saga_name: str | None, created_since: float | None,
        created_until: float | None, counted: str,
    ) -> tuple[str, list[Any]]:
        """A count by (name, status) of the sagas in the window, ``counted``
        (``count(*)`` or its negation) as ``n``."""
        where, params = _listing_filter(saga_name, created_since, created_until)
        bounds, bound_params = _window(self._sql.sagas, created_since, created_until)
        where += bounds
        params += bound_params
        clause = " WHERE " + " AND ".join(where) if where else ""
        return (
            f"SELECT saga_name, status, {counted} AS n FROM {self._sql.sagas}{clause}"
            f"{self._sql.count_groups}",
            params,
        )

    async def _covers_most(self, created_since: float | None, created_until: float | None) -> bool:
        """Whether the window likely holds most sagas: it spans more than half
        the time between the first saga and the last. A guess (sagas are not
        created evenly), which decides only what is read: the window's own
        rows, or the rows outside it — the fewer, when the guess is right."""
        row = await self._fetch("cannot count sagas", self._sql.created_span, ())
        if row is None or row[0] is None or row[1] is None or row[1] <= row[0]:
            return False  # no sagas, or one instant
        first, last = row
        since = first if created_since is None else max(first, created_since)
        until = last if created_until is None else min(last, created_until)
        return bool((until - since) * 2 > last - first)

    async def lease_state(self, saga_id: str) -> LeaseState:
        """The saga's lease owner, expiry and fencing token; ``SagaNotFound``."""
        saga_id = check_saga_id(saga_id)
        doing = f"cannot read the lease of saga {short_repr(saga_id)}"
        row = await self._fetch(doing, self._sql.lease_state, (saga_id,))
        if row is None:
            raise SagaNotFound(saga_id)
        owner, expires_at, token, claims = row
        return LeaseState(owner, expires_at, token, claims)

    async def saga_names(self, *, limit: int = 1000) -> list[str]:
        """The distinct saga names held, in order, at most ``limit``: one
        look-up a name in an index by name (the console's suggestions)."""
        found = await self._fetch(
            "cannot list saga names", self._sql.saga_names,
            (non_negative_int("limit", limit),), rows="all",
        )
        return [name for (name,) in found]

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        """Which of ``saga_ids`` the store holds, in one query (an id no store
        can hold is not among them): what ``saga_family`` asks for a saga's
        possible child sagas, one ``lease_state`` each otherwise."""
        wanted = valid_saga_ids(saga_ids)
        if not wanted:
            return set()
        found = await self._fetch(
            "cannot look up saga ids", self._sql.existing_ids, (wanted,), rows="all"
        )
        return {saga_id for (saga_id,) in found}

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool = False, names: Collection[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` interrupted sagas (RUNNING/COMPENSATING, not
        updated for ``older_than`` seconds, no unexpired lease), oldest first,
        in one short transaction; each claim increments the saga's fencing
        token. Negative durations are allowed (tests use them for "already
        expired" without sleeping). Times are the database server's.
        ``deferred``: also sagas ``defer`` keeps out of claims (an operator's
        ``recover`` pass). ``names``: only sagas of these names (a
        ``RecoveryWorker``'s sagas; ``None``: any).

        A claim whose answer never comes (cancelled, its connection lost)
        may commit all the same: what it took is given back in the
        background, by the marker it set on its leases, once its
        transaction has ended (``_forget_claim``)."""
        if not isinstance(deferred, bool):
            raise TypeError(f"deferred must be a bool, got {deferred!r}")
        owner = check_owner(owner)
        lease_seconds = finite_seconds("lease_seconds", lease_seconds)
        older_than = finite_seconds("older_than", older_than)
        limit = non_negative_int("limit", limit)
        named = claim_names(names)
        if limit == 0 or named == ():
            return []
        self._on_its_loop()
        if not self._ready:
            await self._open_for("cannot claim sagas", write=True)
        pool = self._pool
        if pool is None:
            raise SagaStoreError("the PostgreSQL saga store is closed")
        # This claim's own mark on the leases it takes: should its answer
        # never come, what it took is given back by it (_forget_claim).
        marker = secrets.token_hex(16)
        locked: list[str] = []  # the sagas its transaction locked, once known
        try:
            conn = await self._connection(pool, "cannot claim sagas", write=True)
            try:
                async with conn.transaction():
                    await conn.execute(_READ_COMMITTED)
                    due, taken = await self._claim_in(conn, owner, lease_seconds, older_than,
                                                      limit, deferred, named, marker, locked)
            finally:
                await pool.putconn(conn)
        except BaseException as error:
            if locked:
                # Cancelled (past shielding.claimed's grace, or the loop is
                # closing), or failed with no answer: the leases may have
                # been taken all the same, for nobody who knows their
                # tokens — they would sit until they ran out, each counted
                # towards parking. Given back once the claim's transaction
                # has ended. (Refused by the server: nothing to give back,
                # and the giving back finds nothing.)
                self._forget_soon(locked, marker, owner, lease_seconds)
            if not isinstance(error, self._errors):
                raise
            # Rolled back whole if the server answered with an error: no lease taken.
            raise await self._explain(
                error, "cannot claim sagas", write=True
            ) from self._shown_cause(error)
        # Oldest first, as selected (RETURNING has no order).
        return [
            Lease(saga_id, owner, *taken[saga_id])
            for saga_id in due
            if saga_id in taken
        ]

    async def _claim_in(
        self, conn: AsyncConnection[Any], owner: str, lease_seconds: float, older_than: float,
        limit: int, deferred: bool = False, names: tuple[str, ...] | None = None,
        marker: str | None = None, locked: list[str] | None = None,
    ) -> tuple[list[str], dict[str, tuple[int, float, int]]]:
        """``claim``'s statements, in the caller's transaction: the sagas due,
        oldest first, and the fence, expiry and count of claims of each one leased.
        ``marker``: set on each lease taken; ``locked``: extended with the
        sagas due as soon as they are locked, before the leases are sent."""
        sql = self._sql
        prepare = self._prepare
        ahead = max(older_than, 0.0)  # a negative older_than takes nothing more as ahead
        park_after = NEVER_PARKED if self.park_after is None else self.park_after
        if names is None:
            cursor = await _query(conn, sql.claimable,
                                  (park_after, older_than, ahead, ahead, deferred, limit),
                                  prepare)
        else:
            cursor = await _query(conn, sql.claimable_named,
                                  (park_after, older_than, ahead, ahead, deferred, list(names),
                                   limit),
                                  prepare)
        due = [saga_id for (saga_id,) in await cursor.fetchall()]
        if not due:
            return [], {}
        if locked is not None:
            locked.extend(due)
        cursor = await _query(conn, sql.take_leases, (owner, lease_seconds, marker, due),
                              prepare)
        taken: dict[str, tuple[int, float, int]] = {}
        for saga_id, fence, expires, claims in await cursor.fetchall():
            taken[saga_id] = (fence, expires, claims)
        return due, taken

    def _forget_soon(
        self, saga_ids: list[str], marker: str, owner: str, lease_seconds: float, *,
        by_id: bool = False,
    ) -> None:
        """``_forget_claim``, in a task of its own (the claimer is cancelled,
        or failing): finished, or given up, by ``close``."""
        if self._closed or self._pool is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._forget_claim(list(saga_ids), marker, owner, lease_seconds, by_id=by_id))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget_claim(
        self, saga_ids: list[str], marker: str, owner: str, lease_seconds: float, *,
        by_id: bool = False,
    ) -> None:
        """Give back the leases a claim whose answer never came took, if it
        committed: those still marked by it and leased to ``owner`` (a later
        claim, by id or not, marks its own; a claim of 0.9.0, which knows no
        mark, leases to its own owner), with the count towards parking it
        added (none for a claim by id, ``by_id``: ``claim_saga`` adds none).
        Sound only once the claim's transaction has ended — until then a read
        finds nothing, and the claim may commit a moment later —
        so this first waits for the row locks that transaction held from its
        first statement to its end (``_forget_wait`` at a time, the
        connection given back between tries). Tried for the lease's length
        at least; after that, the leases have run out, and only the count
        is left to take back."""
        loop = asyncio.get_running_loop()
        until = loop.time() + max(lease_seconds, _FORGET_AT_LEAST)
        delay = _FORGET_DELAY
        sql = self._sql
        while True:
            pool = self._pool
            if pool is None:
                return
            try:
                conn = await _getconn(pool)
                try:
                    async with conn.transaction():
                        await conn.execute(_READ_COMMITTED)
                        await conn.execute(_FORGET_WAIT)
                        await _query(conn, sql.lock_claimed, (saga_ids,), self._prepare)
                        await _query(conn, sql.forget_lease if by_id else sql.forget_claim,
                                     (saga_ids, marker, owner), self._prepare)
                    return
                finally:
                    await pool.putconn(conn)
            except self._errors as error:
                if loop.time() + delay > until:
                    _log.warning(
                        "cannot give back the leases a claim whose answer never came may have "
                        "taken (%d sagas): %s: %s; they run out on their own",
                        len(saga_ids), type(error).__name__, scrub(str(error), self._secrets))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FORGET_DELAY_MAX)

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """Lease one saga by id, whatever its status and age (``Saga.resume``
        uses it), incrementing its fencing token, in one short transaction;
        ``SagaNotFound`` if missing, ``SagaBusy`` if another worker holds an
        unexpired lease on it.

        As with ``claim``, a claim whose answer never comes (cancelled, its
        deadline past, its connection lost) once its transaction has locked
        the saga's row may commit all the same: the lease it took is given
        back in the background, by the marker it set on it, once that
        transaction has ended (``_forget_claim``) — an operator trying
        ``resume`` again finds the saga free, not busy for a whole lease."""
        saga_id = check_saga_id(saga_id)
        owner = check_owner(owner)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        doing = f"cannot lease saga {short_repr(saga_id)}"
        self._on_its_loop()
        if not self._ready:
            await self._open_for(doing, write=True)
        pool = self._pool
        if pool is None:
            raise SagaStoreError("the PostgreSQL saga store is closed")
        sql = self._sql
        marker = secrets.token_hex(16)  # this claim's own mark on its lease
        # The row is locked first, in a statement of its own: once its answer
        # has come, the lease can only be taken by this transaction, and a
        # give-back that waits for the row's lock waits for its end. (Had
        # the lease been taken in one statement, nothing would tell whether
        # the server had even begun it when its answer failed to come: a
        # give-back could run before it and find nothing.)
        locked = False
        found: Any = None
        row: Any = None
        holder: Any = None
        try:
            conn = await self._connection(pool, doing, write=True)
            try:
                async with conn.transaction():
                    await conn.execute(_READ_COMMITTED)
                    cursor = await _query(conn, sql.lock_saga, (saga_id,), self._prepare_any)
                    found = await cursor.fetchone()
                    if found is not None:
                        locked = True
                        cursor = await _query(conn, sql.take_lease,
                                              (owner, seconds, marker, saga_id), self._prepare_any)
                        row = await cursor.fetchone()
                        if row is None:
                            cursor = await _query(conn, sql.lease_of, (saga_id,),
                                                  self._prepare_any)
                            holder = await cursor.fetchone()
            finally:
                await pool.putconn(conn)
        except BaseException as error:
            if locked:
                # The lease may have been taken all the same, for nobody who
                # knows its token (see claim). A server that answered with
                # an error rolled it back: the give-back then finds nothing.
                self._forget_soon([saga_id], marker, owner, lease_seconds, by_id=True)
            if isinstance(error, UnicodeEncodeError):  # a parameter UTF-8 cannot encode
                raise self._wrap(error, doing, _NOT_SENT) from self._shown_cause(error)
            if not isinstance(error, self._errors):
                raise
            raise await self._explain(error, doing, write=True) from self._shown_cause(error)
        if found is None:
            raise SagaNotFound(saga_id)
        if row is not None:
            return Lease(saga_id, owner, row[0], row[1])
        raise SagaBusy(saga_id, holder[0], holder[1])

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now (the server's clock),
        if its fencing token is still the saga's current one; else ``LeaseLost``
        (``SagaNotFound`` if the saga is gone). The heartbeat of a running saga."""
        check_saga_id(lease.saga_id)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        doing = f"cannot renew the lease on saga {short_repr(lease.saga_id)}"
        row = await self._fetch(
            doing, self._sql.renew, (seconds, lease.owner, lease.saga_id, lease.token),
            write=True,
        )
        if row is not None:
            return Lease(lease.saga_id, lease.owner, lease.token, row[0])
        found = await self._fetch(doing, self._sql.fence_of, (lease.saga_id,))
        if found is None:
            raise SagaNotFound(lease.saga_id)
        raise LeaseLost(lease.saga_id, lease.token)

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        """Clear the lease, if it is still the saga's current one. Its count
        of claims (see ``park_after``) starts again; ``ran=False`` (the
        holder ran nothing of it: a ``claim``'s saga skipped or given back
        untouched) takes that claim back from the count instead."""
        await self._fetch(
            f"cannot release the lease on saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.release if check_ran(ran) else self._sql.release_unrun,
            (lease.saga_id, lease.token),
            rows="none",
            write=True,
        )

    async def defer(self, lease: Lease, seconds: float, *, ran: bool = True) -> None:
        """``release`` the lease (if it is still the saga's current one), and
        keep the saga out of ``claim`` for ``seconds``; ``claim_saga`` leases
        it at once all the same. For a child saga its parent drives: recovery
        defers it rather than claim it again and again. ``ran``: as for
        ``release``."""
        await self._fetch(
            f"cannot defer saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.defer if check_ran(ran) else self._sql.defer_unrun,
            (finite_seconds("seconds", seconds), lease.saga_id, lease.token),
            rows="none",
            write=True,
        )

    # ------------------------------------------------------------------ WorkNotifier

    async def hand_off(self, lease: Lease, *, ran: bool = True) -> None:
        """``release``, and if the saga is still RUNNING or COMPENSATING,
        announce it on ``work_channel`` in the same statement. ``ran``: as
        for ``release``."""
        await self._fetch(
            f"cannot hand off saga {short_repr(check_saga_id(lease.saga_id))}",
            self._sql.hand_off if check_ran(ran) else self._sql.hand_off_unrun,
            (lease.saga_id, lease.token, self._names.channel),
            rows="none",
            write=True,
        )

    @property
    def work_channel(self) -> str:
        """The LISTEN/NOTIFY channel on which ``hand_off`` announces sagas."""
        return self._names.channel

    async def work_notifications(self) -> AsyncIterator[str]:
        """Listen for claimable work (``WorkNotifier``) on a connection of its
        own, outside the pool (a pooled connection would lose its LISTEN when
        returned). Yields ``""`` once listening, then the id of each saga
        handed off (``hand_off``) by any process. Ends when the store is
        closed; ``SagaStoreError`` if the connection is lost. One connection
        per iteration: a worker needs one."""
        psycopg, _ = _driver()
        self._on_its_loop()
        if not self._ready:
            await self.open()
        pool = self._pool
        if self._closed or pool is None:
            raise SagaStoreError("the PostgreSQL saga store is closed")
        # The pool's own conninfo and connection arguments, for a given pool too.
        conninfo = self._conninfo if self._conninfo is not None else pool.conninfo
        kwargs = dict(getattr(pool, "kwargs", None) or {})
        kwargs["autocommit"] = True
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
        except TimeoutError:
            raise SagaStoreError(
                f"cannot listen for work: no connection within {self.connect_timeout:g} s"
            ) from None
        except self._errors as error:
            raise self._wrap(error, "cannot listen for work") from self._shown_cause(error)
        # Closed by the ``finally`` below — unless the loop ends with this
        # generator suspended and never closes it (a second Ctrl-C cut
        # ``asyncio.run``'s shutdown short, or the loop was closed): dropped
        # with its frame, the connection is then finished as ``ending`` is
        # freed, synchronously (freed open, psycopg warns ``ResourceWarning``).
        ending = _FrameEnd()
        weakref.finalize(ending, _finish, conn)
        try:
            try:
                await conn.execute(
                    psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._names.channel))
                )
            except self._errors as error:
                raise self._wrap(error, "cannot listen for work") from self._shown_cause(error)
            yield ""
            while not self._closed:
                # Woken at least every _LISTEN_CHECK seconds, to end promptly
                # once the store is closed (closing a connection does not wake
                # a task waiting on it).
                try:
                    async for notice in conn.notifies(timeout=_LISTEN_CHECK):
                        yield notice.payload
                        if self._closed:
                            break
                except self._errors as error:
                    if self._closed:
                        break
                    raise self._wrap(
                        error, "lost the connection listening for work"
                    ) from self._shown_cause(error)
        finally:
            await conn.close()

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT
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
        ``old_finished(held=True)`` counts those it keeps."""
        older_than = finite_seconds("older_than", older_than)
        chosen = list(purge_statuses(statuses))
        doing = "cannot purge sagas"
        # A read, but the purge's first statement: whatever fails it (no
        # connection, the server's error) leaves the purge with nothing
        # written, and its error says so as a batch's would.
        cutoff, timeout_ms = await self._fetch(
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
                gone, read, last, again = await self._fetch(
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
        """How many sagas with one of ``statuses`` (final ones) were last
        updated more than ``older_than`` seconds ago, leased or not — the
        ``FAILED`` ones a purge not told to take them keeps. ``held``: only
        those a lease holds (an operator's ``retry-unwinding``), which
        ``purge`` with the same arguments keeps. The ``purge`` command says
        how many of each it kept."""
        older_than = finite_seconds("older_than", older_than)
        (count,) = await self._fetch(
            "cannot count the finished sagas old enough to purge",
            self._sql.old_finished_held if held else self._sql.old_finished,
            (list(purge_statuses(statuses)), older_than),
        )
        return int(count)
