"""A SQLite saga store's file: its schema, the migrations that bring a
file to it (``PRAGMA user_version``), the refusal of another program's file,
and the connections the store's threads open (see ``sqlite``)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Final

from ..errors import SagaStoreError
from ..log_lines import library_logger
from ..private_file import create_private_file
from ..sqlite_files import why_cannot_open

_log = library_logger("fallback_saga.store.sqlite")

# --------------------------------------------------------------------------- schema


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE sagas (
            saga_id          TEXT PRIMARY KEY,
            saga_name        TEXT NOT NULL,
            fingerprint      TEXT NOT NULL,
            status           TEXT NOT NULL,
            context          TEXT NOT NULL,
            version          INTEGER NOT NULL,
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL,
            lease_owner      TEXT NULL,
            lease_expires_at REAL NULL,
            fence            INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    # WITHOUT ROWID: the rows are small and always read by (saga_id, seq), so
    # the primary key is the table — one b-tree insert per transition, not two.
    conn.execute(
        """
        CREATE TABLE saga_steps (
            saga_id  TEXT NOT NULL,
            seq      INTEGER NOT NULL,
            position INTEGER NOT NULL,
            step     TEXT NOT NULL,
            branch   TEXT NOT NULL,
            action   TEXT NOT NULL,
            status   TEXT NOT NULL,
            attempt  INTEGER NOT NULL,
            error    TEXT NULL,
            at       REAL NOT NULL,
            PRIMARY KEY (saga_id, seq)
        ) WITHOUT ROWID
        """
    )
    # Recovery asks for interrupted sagas not updated for a while.
    conn.execute("CREATE INDEX sagas_by_status ON sagas (status, updated_at)")
    # Operators list sagas by name. Listings are newest first in rowid order
    # (the order sagas were created in this file), which needs no index.
    conn.execute("CREATE INDEX sagas_by_name ON sagas (saga_name)")


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    # 0.6.0: each completed act keeps its step's response (JSON text, see
    # store/_responses.py). Rows written before stay NULL: "not kept".
    conn.execute("ALTER TABLE saga_steps ADD COLUMN result TEXT NULL")


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    # When the lease columns were last written (taken, renewed, released,
    # deferred), by the store's clock. A lease written "in the future" was
    # written before the clock stepped back, and its expiry is on the old
    # scale: claim does not wait for it (see _sqlite_leases._CLAIMABLE). Rows leased before
    # the migration stay NULL: their leases expire as they always did.
    conn.execute("ALTER TABLE sagas ADD COLUMN lease_written_at REAL NULL")


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    # The claims (``claim``: workers, recover passes) of a saga since its
    # lease was last given back in order (released, deferred, handed off).
    # A saga whose resume ends the process every time never gives its lease
    # back: the count climbs once per lease, and at the store's ``park_after``
    # claims stop taking it (parked for an operator). Rows before: 0.
    conn.execute("ALTER TABLE sagas ADD COLUMN unreleased_claims INTEGER NOT NULL DEFAULT 0")


def _migrate_to_v5(conn: sqlite3.Connection) -> None:
    # The operator's reads of a store that has run for a year, which
    # version 1 left to a walk of the whole table (benchmarks/README.md,
    # "The operator's paths on a store a year old"):
    #
    # A listing by status, newest first: an index on (status) holds each
    # status's rows in rowid order (SQLite ends every index with the rowid),
    # so a page is read from it and stops at LIMIT. Before, the listing
    # walked the table newest first and filtered: every saga when the status
    # is rare (the few RUNNING sagas stuck a month ago, a status none has).
    conn.execute("CREATE INDEX sagas_listed_by_status ON sagas (status)")
    # The console's counts by (name, status) on each refresh and /metrics
    # scrape, and a listing by name and status: read from this index alone
    # (covering), in GROUP BY order. Before, the count walked sagas_by_name
    # and read each row from the table for its status (1.2 to 2.2 s at 1,000,000
    # sagas, against 0.09 s), and a listing by both walked every saga of
    # the name.
    conn.execute("CREATE INDEX sagas_by_name_status ON sagas (saga_name, status)")


def _migrate_to_v6(conn: sqlite3.Connection) -> None:
    # The console's time window (since/until on the creation time): the
    # listing walked the sagas newest first past every saga newer than the
    # window (a window a year back: the whole table), and its counts read
    # every row for its created_at, on every request (1 to 2 s at 1,000,000
    # sagas; benchmarks/README.md). The window's first and last rowid are
    # read from this index alone, and the listing and the count then read
    # the rows between them only (see _sqlite_reads._window). created_at
    # never changes once written: the index is written when a saga is
    # created (and purged), never on a journal write or a status change.
    conn.execute("CREATE INDEX sagas_by_created ON sagas (created_at)")


# _MIGRATIONS[n] takes the schema from version n to n + 1. Append, never edit.
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
    _migrate_to_v5,
    _migrate_to_v6,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)

# The index a claim walks (the sagas in flight, oldest first), as version 1
# made it: made again at each open if missing (see _migrate).
_STATUS_INDEX: Final = "CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, updated_at)"

# The -wal file grows while a reader holds a snapshot (a console page, a long
# listing, a backup): SQLite cannot recycle it meanwhile. Recycled later, it
# would keep its largest size for as long as the writer's connection stays
# open — days, in a service. SQLite cuts it back to this size when it
# recycles it; a steady load's WAL (about 1,000 pages between checkpoints)
# stays below it, so a busy store never pays for shrinking and growing it.
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024



# The columns version 1 made: a file whose sagas/saga_steps lack one is not a
# saga store, whatever its user_version says.
_TABLE_COLUMNS: Final = {
    "sagas": frozenset({
        "saga_id", "saga_name", "fingerprint", "status", "context", "version",
        "created_at", "updated_at", "lease_owner", "lease_expires_at", "fence",
    }),
    "saga_steps": frozenset({
        "saga_id", "seq", "position", "step", "branch", "action", "status", "attempt",
        "error", "at",
    }),
}
_OUR_NAMES: Final = "SELECT name FROM sqlite_master WHERE name IN ('sagas', 'saga_steps')"
_COLUMNS_OF: Final = "SELECT name FROM pragma_table_info(?)"


class _NotASagaStore(SagaStoreError):
    """Another program's SQLite file (the CLI's usage error: exit status 2)."""


def _saga_schema_version(conn: sqlite3.Connection, path: str) -> int:
    """The saga store schema version of the file (0: none yet, a new store is
    made in it, beside any tables of other programs), read without a write.

    Another program's file is refused (``SagaStoreError``) before anything
    changes it — no WAL switch, no migration: one with a ``sagas`` or
    ``saga_steps`` of its own, or a ``user_version`` of its own without the
    saga tables. (``PRAGMA user_version`` alone says nothing: any program
    may set it.)
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    names = {name for (name,) in conn.execute(_OUR_NAMES)}
    if version == 0 and not names:
        return 0
    current = len(_MIGRATIONS)
    if version > current:  # a newer schema may look like anything
        newer = (
            f"schema version {version}, newer than this fallback_saga understands "
            f"({current}); upgrade fallback_saga"
        )
        if names:
            raise SagaStoreError(f"{path} has saga store {newer}")
        raise _NotASagaStore(
            f"{path} is not a fallback_saga saga store (it has no saga tables), or it has {newer}"
        )
    for table, needed in _TABLE_COLUMNS.items():
        columns = {name for (name,) in conn.execute(_COLUMNS_OF, (table,))}
        if version == 0 or not needed <= columns:
            raise _NotASagaStore(
                f"{path} is not a fallback_saga saga store: it is another program's SQLite "
                f"database (its {table} table is not a saga store's, user_version {version});"
                f" it is left as it is"
            )
    return int(version)


def _newer_schema(conn: sqlite3.Connection, path: str) -> SagaStoreError | None:
    """After a statement failed: the refusal to give instead of the SQL error
    when a newer fallback_saga migrated the file while this store had it
    open (the version is checked at open; a rolling deploy migrates later).
    A migration that older code must not run beside makes its statements
    fail; this turns their failure into one that names both versions. Read
    only on a failure: the hot path pays nothing."""
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error:
        return None
    current = len(_MIGRATIONS)
    if not isinstance(version, int) or version <= current:
        return None
    return SagaStoreError(
        f"{path} has saga store schema version {version}, newer than this fallback_saga "
        f"understands ({current}): a newer release migrated it while this store had it "
        f"open; upgrade fallback_saga in every process that opens it"
    )


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file to the current schema, all steps in one transaction:
    a failed migration leaves the file as it was."""
    current = len(_MIGRATIONS)
    conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file migrate once
    try:
        version = _saga_schema_version(conn, path)  # refuses a newer one
        for number in range(version, current):
            _MIGRATIONS[number](conn)
        # A worker's claim names this index (INDEXED BY, see
        # _sqlite_leases._CLAIMABLE_OF_NAMES): on a file whose index an
        # operator or a tool dropped, every such claim would fail ("no such
        # index") instead of merely being slower. Made again if missing (a
        # no-op, without a write, when it is there).
        conn.execute(_STATUS_INDEX)
        if version != current:
            # PRAGMA takes no parameters; the value is this module's own int.
            conn.execute(f"PRAGMA user_version = {int(current)}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise



def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # The transaction may be gone already (SQLite rolls back on some errors).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- connections


def _disk_full(error: BaseException) -> bool:
    """SQLite's answers to a full disk: a write that found no room, or (at an
    open) a -shm file that could not be made."""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")


# What a store's error adds to SQLite's own when the disk is full.
FULL_DISK_ADVICE: Final = (
    "the disk holding the store is full; free space on it — at least the size of "
    "the -wal file — and the store's next write moves the -wal file into the "
    "database and goes on; a purge, too, needs that room"
)


def _locked(error: BaseException) -> bool:
    """SQLite's answer when another connection kept the write lock past
    ``busy_timeout``."""
    return getattr(error, "sqlite_errorname", "").startswith("SQLITE_BUSY")


# What a store's error adds to SQLite's "database is locked".
LOCKED_ADVICE: Final = (
    "another process holds the file's write lock (an open transaction: a sqlite3 "
    "shell, a backup, another program) and kept it longer than the store's "
    "busy_timeout; end that transaction, or give the store a longer busy_timeout, "
    "and the store's next write goes on"
)


def _advice(error: BaseException, path: str = "") -> str | None:
    """What to tell the operator about a SQLite error, where more can be said
    than SQLite's own words (read on the error path only: the checks of the
    file below cost system calls)."""
    if _disk_full(error):
        return FULL_DISK_ADVICE
    if _locked(error):
        return LOCKED_ADVICE
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith("SQLITE_CORRUPT"):
        return (
            "the file is damaged; restore it from a backup (the sqlite3 shell's "
            "'.recover' may save what can still be read): it is left as it is"
        )
    if path not in ("", ":memory:") and name.startswith(
        ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_PERM")
    ):
        return why_cannot_open(path)
    return None


def _cannot_open(path: str, error: sqlite3.Error) -> str:
    advice = _advice(error, path)
    if advice is not None:
        return f"cannot open SQLite database {path}: {error} ({advice})"
    return f"cannot open SQLite database {path}: {error}"


def _not_a_database(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "") == "SQLITE_NOTADB" or (
        "not a database" in str(error)
    )


def _database(path: str) -> tuple[str, bool]:
    """What ``sqlite3.connect`` takes for ``path``, and whether it is a URI.

    A path is always a file's path: a ``file:orders.db`` must not open
    ``orders.db`` (SQLite may read every name as a URI when built so, even
    without ``uri=True``), so a file is named by its own ``file:`` URI, in
    which ``?`` and ``#`` are escaped. ``""`` (a private temporary database)
    and ``":memory:"`` stay what SQLite makes of them.
    """
    if path in ("", ":memory:"):
        return path, False
    from pathlib import Path  # here: only at a connection's open

    return Path(path).absolute().as_uri(), True


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the file at ``path``; ``SagaStoreError`` if none can be made."""
    create_private_file(path)  # a journal of contexts: not world-readable
    database, uri = _database(path)
    try:
        return sqlite3.connect(
            database, uri=uri, timeout=busy_timeout, isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise SagaStoreError(_cannot_open(path, error)) from error


def _connect_writer(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    conn = _connect(path, busy_timeout)
    try:
        # Another program's file is refused before the WAL switch changes it
        # for good (_migrate checks again, in its transaction).
        _saga_schema_version(conn, path)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal" and path not in ("", ":memory:"):
            # Still correct, only slower: readers and the writer block each other.
            _log.warning("%s: WAL mode is not available here (journal mode %s)", path, mode)
        # PRAGMA takes no parameters; the value was checked against a fixed set.
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
        _migrate(conn, path)
    except sqlite3.DatabaseError as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        raise SagaStoreError(_cannot_open(path, error)) from error
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A read-only connection to a file whose schema is current.

    The reader never waits for the writer thread: a file that has no schema
    yet (or an older one) is migrated first through a short-lived writer
    connection, as the writer would do it. So a store whose first request is
    a read works, and a read never meets tables that are not there.
    """
    conn = _open_reader(path, busy_timeout)
    if _schema_version(conn, path) == len(_MIGRATIONS):
        return conn
    conn.close()
    _connect_writer(path, synchronous, busy_timeout).close()  # migrates, or says why not
    return _open_reader(path, busy_timeout)


def _open_reader(path: str, busy_timeout: float) -> sqlite3.Connection:
    conn = _connect(path, busy_timeout)
    try:
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as error:
        conn.close()
        raise SagaStoreError(_cannot_open(path, error)) from error
    return conn


def _connect_read_only(path: str, busy_timeout: float, immutable: bool) -> sqlite3.Connection:
    """A connection that writes nothing: not the file, not its schema, and
    with ``immutable`` not even the -wal/-shm files of a WAL database.

    SQLite's ``mode=ro`` reads a WAL database through its -shm file, which it
    creates (and leaves behind) when no process has the database open; where
    it cannot (a directory the reader may not write), the open fails.
    ``immutable=1`` reads the file alone, without locks: right only while no
    process writes it.
    """
    query = "?mode=ro&immutable=1" if immutable else "?mode=ro"
    try:
        conn = sqlite3.connect(
            _database(path)[0] + query,
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as error:
        raise SagaStoreError(f"cannot open SQLite database {path} read-only: {error}") from error
    try:
        conn.execute("PRAGMA query_only = ON")
        version = _saga_schema_version(conn, path)
    except SagaStoreError:
        conn.close()
        raise
    except sqlite3.Error as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        reason = getattr(error, "sqlite_errorname", "")
        if reason.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            raise SagaStoreError(
                f"cannot read SQLite database {path} read-only ({error}): SQLite reads a "
                f"WAL database through a -shm file beside it, and cannot create one in a "
                f"directory you may not write (immutable=True reads without one: right "
                f"only while no process writes the file)"
            ) from error
        raise SagaStoreError(f"cannot read SQLite database {path} read-only: {error}") from error
    current = len(_MIGRATIONS)
    if version != current:  # a newer one was refused
        conn.close()
        if version == 0:
            raise SagaStoreError(f"{path} has no saga store schema (read-only: none is made)")
        raise SagaStoreError(
            f"{path} has saga store schema version {version}, older than this "
            f"fallback_saga's ({current}), and a read-only store cannot migrate it: "
            f"open it once with write access (SQLiteSagaStore(path) migrates it)"
        )
    return conn


def _schema_version(conn: sqlite3.Connection, path: str) -> int:
    try:
        version = _saga_schema_version(conn, path)
    except SagaStoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as error:
        conn.close()
        if _not_a_database(error):
            raise SagaStoreError(f"{path} is not a SQLite database") from error
        raise SagaStoreError(_cannot_open(path, error)) from error
    return int(version)
