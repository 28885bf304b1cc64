"""The PostgreSQL saga store's tables: their names (schema-qualified,
quoted once), the migrations that bring a database to the current schema
version, and the check of the version a database holds."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import SagaStoreError

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    from psycopg import AsyncConnection  # type: ignore[import-not-found, unused-ignore]
from ._postgres_conn import (
    _READ_COMMITTED,
    _query,
)

# --------------------------------------------------------------------------- names

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


class _Names:
    """The store's table names, schema-qualified and quoted once."""

    def __init__(self, schema: str | None) -> None:
        self.schema = schema
        prefix = "" if schema is None else f'"{schema}".'
        self.sagas = f"{prefix}fallback_saga_sagas"
        self.steps = f"{prefix}fallback_saga_steps"
        self.version = f"{prefix}fallback_saga_schema"
        digest = hashlib.sha256(f"fallback_saga.schema:{schema or ''}".encode()).digest()
        self.lock_key = int.from_bytes(digest[:8], "big", signed=True)
        # The NOTIFY channel of this set of tables (at most 63 bytes, the
        # longest name PostgreSQL keeps): readable when it fits, else hashed.
        channel = "fallback_saga_work" if schema is None else f"fallback_saga_work.{schema}"
        if len(channel.encode()) > 63:
            channel = f"fallback_saga_work.{digest[8:20].hex()}"
        self.channel = channel


# --------------------------------------------------------------------------- schema

# The sagas in flight, as the partial index's predicate says it (the
# statements repeat it as a literal: see _postgres_sql).
_INTERRUPTED_SQL: Final = "('running', 'compensating')"

_Cursor = Callable[[str], Awaitable[Any]]  # execute one DDL statement


async def _migrate_to_v1(execute: _Cursor, names: _Names) -> None:
    await execute(
        f"""
        CREATE TABLE {names.sagas} (
            saga_id          text PRIMARY KEY,
            seq              bigint GENERATED ALWAYS AS IDENTITY,
            saga_name        text NOT NULL,
            fingerprint      text NOT NULL,
            status           text NOT NULL,
            context          jsonb NOT NULL,
            version          integer NOT NULL DEFAULT 1,
            journal_length   integer NOT NULL DEFAULT 0,
            fence            bigint NOT NULL DEFAULT 0,
            lease_owner      text NULL,
            lease_expires_at timestamptz NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Listings are newest first: creation order (seq), not a clock that may tie.
    await execute(f"CREATE UNIQUE INDEX fallback_saga_sagas_by_seq ON {names.sagas} (seq)")
    await execute(
        f"CREATE INDEX fallback_saga_sagas_by_name ON {names.sagas} (saga_name, seq)"
    )
    # Recovery's query: interrupted sagas, oldest update first. Partial, so the
    # index holds only the (few) sagas in flight, not the finished millions.
    await execute(
        f"CREATE INDEX fallback_saga_sagas_interrupted ON {names.sagas} (updated_at)"
        f" WHERE status IN ('running', 'compensating')"
    )
    await execute(
        f"""
        CREATE TABLE {names.steps} (
            saga_id  text NOT NULL,
            seq      integer NOT NULL,
            position integer NOT NULL,
            step     text NOT NULL,
            branch   text NOT NULL,
            action   text NOT NULL,
            status   text NOT NULL,
            attempt  integer NOT NULL,
            error    text NULL,
            at       double precision NOT NULL,
            PRIMARY KEY (saga_id, seq)
        )
        """
    )


async def _migrate_to_v2(execute: _Cursor, names: _Names) -> None:
    # 0.6.0: each completed act keeps its step's response (JSON text, see
    # store/_responses.py; text, not jsonb, which refuses some escapes). Rows
    # written before stay NULL: "not kept". A nullable column with no default
    # is added without rewriting the table.
    await execute(f"ALTER TABLE {names.steps} ADD COLUMN result text NULL")


async def _migrate_to_v3(execute: _Cursor, names: _Names) -> None:
    # Recovery's index moves to a clock that moves at most once a second
    # (``touched_at``, see _TOUCH): an append then changes no indexed column,
    # and PostgreSQL updates the row where it is (a heap-only tuple, HOT)
    # instead of adding an entry to every index of the table. updated_at
    # stays exact (listings, and the claim's filter).
    #
    # A HOT update needs room on the row's page: new pages are filled to 70 %
    # (the rest is for the updates of the sagas in flight; measured at 100 in
    # flight: 52 % of updates HOT at 70 %, 27 % at 85 %, 8 % at 100 %).
    #
    # Rows written before read the migration's time (a constant default
    # added without rewriting the table); the sagas in flight take their
    # updated_at. A plain CREATE INDEX: one pass over the table, under the
    # migration's lock, for an index that holds only the sagas in flight.
    prefix = "" if names.schema is None else f'"{names.schema}".'
    await execute(f"ALTER TABLE {names.sagas} SET (fillfactor = 70)")
    await execute(
        f"ALTER TABLE {names.sagas} ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now()"
    )
    await execute(
        f"UPDATE {names.sagas} SET touched_at = updated_at WHERE status IN {_INTERRUPTED_SQL}"
    )
    await execute(f"DROP INDEX {prefix}fallback_saga_sagas_interrupted")
    await execute(
        f"CREATE INDEX fallback_saga_sagas_due ON {names.sagas} (touched_at)"
        f" WHERE status IN {_INTERRUPTED_SQL}"
    )


async def _migrate_to_v4(execute: _Cursor, names: _Names) -> None:
    # The context keeps its JSON text as written: ``json``, not ``jsonb``.
    # jsonb keeps numbers as ``numeric`` and prints them in its own form, so
    # a float written as 1e+16 came back as the int 10000000000000000, and
    # -0.0 as 0.0 (S14); it also reordered an object's keys. json stores the
    # text (and costs the server less per write than building jsonb's binary
    # form: benchmarks/README.md). The type change rewrites the sagas table
    # once (under the migration's lock; its pages then fill to the v3
    # fillfactor). Rows written before keep jsonb's printed form: what was
    # changed then cannot be told back.
    await execute(
        f"ALTER TABLE {names.sagas} ALTER COLUMN context TYPE json USING context::json"
    )


async def _migrate_to_v5(execute: _Cursor, names: _Names) -> None:
    # When the lease columns were last written (taken, renewed, released,
    # deferred, handed off), by the server's clock. A lease written "in the
    # future" was written before the server's clock stepped back, and its
    # expiry is on the old scale: claims do not wait for it (see
    # _postgres_sql's claimable). A nullable column with no default is added
    # without rewriting the table; rows leased before stay NULL, and their
    # leases expire as they always did.
    await execute(f"ALTER TABLE {names.sagas} ADD COLUMN lease_written_at timestamptz NULL")


async def _migrate_to_v6(execute: _Cursor, names: _Names) -> None:
    # The claims (``claim``: workers, recover passes) of a saga since its
    # lease was last given back in order (released, deferred, handed off).
    # A saga whose resume ends the process every time never gives its lease
    # back: the count climbs once per lease, and at the store's
    # ``park_after`` claims stop taking it (parked for an operator). A
    # constant default is added without rewriting the table; rows before: 0.
    await execute(
        f"ALTER TABLE {names.sagas} ADD COLUMN unreleased_claims integer NOT NULL DEFAULT 0"
    )


async def _migrate_to_v7(execute: _Cursor, names: _Names) -> None:
    # The marker of the claim that last leased the saga (``claim``: random,
    # made by the claimer before it sends the claim). A claim whose answer
    # never came (cancelled past its grace, its connection lost) may have
    # committed all the same: the claimer gives back what it took by this
    # marker, once the claim's transaction has ended (see the store's
    # ``_forget_claim``), rather than leaving the sagas leased to nobody and
    # counted towards parking. Nullable, no default: added without
    # rewriting the table; rows before: NULL (no claim to forget).
    await execute(f"ALTER TABLE {names.sagas} ADD COLUMN claim_marker text NULL")


async def _migrate_to_v8(execute: _Cursor, names: _Names) -> None:
    # The operator's reads of a store that has run for a year, which
    # version 1 left to a walk of the whole table (benchmarks/README.md,
    # "The operator's paths on a store a year old"): a listing by status,
    # newest first, walked the index by seq backwards and filtered — every
    # saga when the status is rare (the few RUNNING sagas stuck a month ago,
    # a status none has), or the planner read the whole table and sorted it;
    # a listing by name and status walked every saga of the name. Each now
    # reads its page from an index in seq order and stops at its LIMIT. The
    # second also holds the console's counts by (name, status) for an
    # index-only scan. Plain CREATE INDEX, as version 3's: one pass over the
    # table each, under the migration's lock (writes wait meanwhile: seconds
    # at millions of sagas; reads go on).
    await execute(f"CREATE INDEX fallback_saga_sagas_by_status ON {names.sagas} (status, seq)")
    await execute(
        f"CREATE INDEX fallback_saga_sagas_by_name_status ON {names.sagas}"
        f" (saga_name, status, seq)"
    )


async def _migrate_to_v9(execute: _Cursor, names: _Names) -> None:
    # The console's time window (since/until on the creation time): a
    # listing walked the sagas newest first past every saga newer than the
    # window, or read the window and sorted it, and its counts read the
    # window's rows or the whole table (benchmarks/README.md). The window's
    # first and last seq are read from this index alone (an index-only
    # scan), and the listing and the count then keep to the seqs between
    # them (see _postgres_sql._window). created_at never changes once
    # written; an update that is not HOT (a status change, one of a
    # saga's appends when its page is full) adds an entry to it, as to
    # every index of the table. Plain CREATE INDEX, as version 8's.
    await execute(
        f"CREATE INDEX fallback_saga_sagas_by_created ON {names.sagas} (created_at, seq)"
    )


# _MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit.
_MIGRATIONS: Final[tuple[Callable[[_Cursor, _Names], Awaitable[None]], ...]] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
    _migrate_to_v5,
    _migrate_to_v6,
    _migrate_to_v7,
    _migrate_to_v8,
    _migrate_to_v9,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)


async def _migrate(conn: AsyncConnection[Any], names: _Names) -> None:
    """Bring the database to the current schema.

    The common case (already current) is one read and needs no privilege
    beyond SELECT. Otherwise: one transaction, under an advisory lock held
    until it ends, so that concurrent starters queue and migrate once, and a
    failed migration leaves everything as it was.
    """
    for attempt in range(_MIGRATE_ATTEMPTS):
        try:
            await _migrate_once(conn, names)
            return
        except Exception as error:  # psycopg's, by its SQLSTATE
            # Another starter created the schema or a table while we queued
            # on the lock, and this session's catalog cache, which an
            # advisory lock does not refresh, said it was not there: CREATE
            # ... IF NOT EXISTS then fails. The next transaction sees it.
            if getattr(error, "sqlstate", None) not in _CREATED_MEANWHILE:
                raise
            if attempt == _MIGRATE_ATTEMPTS - 1:
                raise


# Duplicate key (a catalog's unique index), schema, table, object.
_CREATED_MEANWHILE: Final = frozenset({"23505", "42P06", "42P07", "42710"})
_MIGRATE_ATTEMPTS: Final = 3


async def _migrate_once(conn: AsyncConnection[Any], names: _Names) -> None:
    current = len(_MIGRATIONS)
    if await _schema_version(conn, names) == current:
        return
    async with conn.transaction():
        # READ COMMITTED whatever the server's default: the checks below
        # must see what a starter that held the lock before us committed.
        await conn.execute(_READ_COMMITTED)
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (names.lock_key,))
        if names.schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{names.schema}"')
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {names.version} ("
            " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
        )
        cursor = await _query(
            conn, f"SELECT version FROM {names.version} WHERE id = 1", prepare=False
        )
        row = await cursor.fetchone()
        version = 0 if row is None else row[0]
        if version > current:
            raise _newer_schema(version, current)

        async def execute(statement: str) -> None:
            await conn.execute(statement)

        for number in range(version, current):
            await _MIGRATIONS[number](execute, names)
        if version != current:
            await conn.execute(
                f"INSERT INTO {names.version} (id, version) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                (current,),
            )


async def _schema_version(conn: AsyncConnection[Any], names: _Names) -> int | None:
    """The recorded version; ``None`` when there is no version table yet."""
    try:
        # Never prepared: run once, and maybe behind a pooler.
        cursor = await _query(
            conn, "SELECT to_regclass(%s)::text", (names.version,), prepare=False
        )
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            return None
        cursor = await _query(
            conn, f"SELECT version FROM {names.version} WHERE id = 1", prepare=False
        )
        row = await cursor.fetchone()
    finally:
        if not conn.autocommit:
            await conn.rollback()  # end the read's transaction: a migration opens its own
    version = None if row is None else int(row[0])
    if version is not None and version > len(_MIGRATIONS):
        raise _newer_schema(version, len(_MIGRATIONS))
    return version


def _newer_schema(version: int, current: int) -> SagaStoreError:
    return SagaStoreError(
        f"the PostgreSQL saga store has schema version {version}, newer than this "
        f"fallback_saga understands ({current}); upgrade fallback_saga"
    )
