"""Which saga store a command works on, and opening it.

The store is ``--db PATH`` (a SQLite file) or ``--dsn DSN`` (PostgreSQL, a
libpq conninfo or ``postgresql://`` URL); without either, the one of the
environment variables ``FALLBACK_SAGA_DSN`` and ``FALLBACK_SAGA_DB`` that is
set (both set is a usage error: which one was meant?). The store must
exist already: a missing file, a SQLite database that is not a saga store,
or a PostgreSQL database without the saga tables is a usage error — never
created, migrated or switched to WAL.

Reading (``list``, ``show``: ``read_store``) writes nothing at all: no
migration, and no write access needed to the SQLite file or its directory.
A SQLite file that no process has open (no -wal or -journal file beside it)
is read immutable, so no -wal/-shm file is left behind; the file is checked
to be unchanged after the read, and read again if a writer came meanwhile.

A DSN's password is never printed: a PostgreSQL store is named by its
conninfo without secrets (``StoreTarget.shown``), and every message about
it goes through ``StoreTarget.scrub``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final, TypeVar

from ..errors import SagaNotFound, SagaStoreError
from ..shown_text import redact
from ..status import SagaStatus
from ..store._common import POSTGRES_INSTALL_HINT, short_repr
from ..store._parking import PARK_AFTER
from ..store._sqlite_schema import _advice, _NotASagaStore, _saga_schema_version
from ..store.base import RecoverableStore, SagaRecord, SagaStore
from ..store.sqlite import SQLiteSagaStore
from .argtypes import park_after
from .errors import UsageError
from .text import MAX_CONTEXT, MAX_VALUE, print_lines, quoted_id, terminal_text

__all__ = [
    "DB_VARIABLE",
    "DSN_VARIABLE",
    "StoreTarget",
    "add_store_options",
    "check_store_file",
    "load_saga",
    "no_such_saga",
    "open_store",
    "read_store",
    "store_target",
    "tell_what_is_held",
]

DSN_VARIABLE: Final = "FALLBACK_SAGA_DSN"
DB_VARIABLE: Final = "FALLBACK_SAGA_DB"

# Seconds to wait for a PostgreSQL connection: an operator's command should
# say "unreachable" soon, not after the store's default 30 s.
CONNECT_TIMEOUT: Final = 10.0
# Immutable reads of a file that changed under them are retried this often.
_SNAPSHOT_TRIES: Final = 3
# Conninfo parameters that are secrets: never shown.
_SECRET_KEYS: Final = frozenset({"password", "sslpassword"})
# The conninfo parameters that name a database in messages, in this order.
_NAMING_KEYS: Final = ("service", "host", "hostaddr", "port", "dbname", "user")
_SECRET_PATTERNS: Final = (
    (re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE), r"\1***"),
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE), r"\1***@"),
)

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class StoreTarget:
    """A saga store named on the command line: a SQLite file or a PostgreSQL DSN."""

    db: str | None = None
    dsn: str | None = dataclasses.field(default=None, repr=False)  # it may hold a password
    schema: str | None = None
    shown: str = ""  # how messages name it: the path, or the conninfo without secrets
    # What ``scrub`` replaces: the password, and the whole DSN that holds it.
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    # The application's stores' ``park_after`` (``--park-after``): what the
    # CLI's store claims by (recover) and judges "parked" by (list, show,
    # serve), as the app's workers do.
    park_after: int | None = PARK_AFTER

    def scrubbed(self, text: str) -> str:
        """``text`` as a command shows it: ``scrub``bed when the store has a
        secret to leave out (a store's error may quote the PostgreSQL
        driver's message), else as it is."""
        return self.scrub(text) if self.secrets else text

    def shown_error(self, text: str) -> str:
        """A step's error text (the journal's, or a run's) as a command shows
        it: redacted as ``show`` shows it (``shown_text.redact``: a password
        or a secret key's value it quotes is ``***``), and ``scrubbed``."""
        return self.scrubbed(redact(text))

    def scrub(self, text: str) -> str:
        """``text`` without the DSN's password (should a driver's message quote it)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--db PATH`` or ``--dsn DSN`` (exclusive), and ``--schema`` for PostgreSQL."""
    where = parser.add_argument_group(
        "the saga store",
        f"--db or --dsn; without either, ${DSN_VARIABLE} or ${DB_VARIABLE} (one of them)",
    )
    chosen = where.add_mutually_exclusive_group()
    chosen.add_argument("--db", metavar="PATH", help="a SQLite saga store (the file)")
    chosen.add_argument(
        "--dsn",
        metavar="DSN",
        help="a PostgreSQL saga store: a libpq conninfo ('host=... dbname=...') or a "
        "postgresql:// URL; needs psycopg 3 (pip install \"fallback-saga[postgres]\"). "
        f"A password here shows in the process list: prefer ${DSN_VARIABLE} or ~/.pgpass",
    )
    where.add_argument(
        "--schema",
        metavar="NAME",
        help="PostgreSQL only: the schema of the saga tables, as given to "
        "PostgresSagaStore(schema=...) (default: the connection's search_path)",
    )
    where.add_argument(
        "--park-after",
        type=park_after,
        default=PARK_AFTER,
        metavar="N",
        help=f"the park_after your application's stores are given (default {PARK_AFTER}, "
        "theirs; 'never' for None): a saga claimed N times without its lease given back is "
        "parked — recover takes it no more, list, show and serve say so",
    )


def store_target(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> StoreTarget:
    """The store the options (or the environment) name; ``UsageError`` if none,
    or if the DSN is not a conninfo."""
    env = os.environ if environ is None else environ
    db: str | None = args.db
    dsn: str | None = args.dsn
    if db is None and dsn is None:
        from_env = {name: env.get(name, "") for name in (DSN_VARIABLE, DB_VARIABLE)}
        if from_env[DSN_VARIABLE] and from_env[DB_VARIABLE]:
            raise UsageError(
                f"both ${DSN_VARIABLE} and ${DB_VARIABLE} are set: pass --dsn or --db, "
                f"or unset one"
            )
        dsn = from_env[DSN_VARIABLE] or None
        db = from_env[DB_VARIABLE] or None
        if dsn is None and db is None:
            raise UsageError(
                f"which saga store? pass --db PATH (SQLite) or --dsn DSN (PostgreSQL), "
                f"or set ${DSN_VARIABLE} or ${DB_VARIABLE}"
            )
    if db is not None:
        if args.schema is not None:
            raise UsageError("--schema is for a PostgreSQL store (--dsn), not --db")
        return StoreTarget(db=db, shown=db, park_after=_park_after(args))
    assert dsn is not None
    return dataclasses.replace(_postgres_target(dsn, args.schema), park_after=_park_after(args))


def _park_after(args: argparse.Namespace) -> int | None:
    value = getattr(args, "park_after", PARK_AFTER)
    return value if value is None or isinstance(value, int) else PARK_AFTER


def _postgres_target(dsn: str, schema: str | None) -> StoreTarget:
    try:
        from psycopg.conninfo import (  # type: ignore[import-not-found, unused-ignore]
            conninfo_to_dict,
            make_conninfo,
        )
    except ImportError:
        raise UsageError(
            f"a PostgreSQL store (--dsn) needs psycopg 3: {POSTGRES_INSTALL_HINT}"
        ) from None
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except Exception as error:  # psycopg.ProgrammingError: the conninfo does not parse
        detail = _parse_error_detail(str(error), dsn)
        raise UsageError(
            f"--dsn is not a PostgreSQL connection string ({detail}): give key=value "
            f"pairs (host=... dbname=... user=...) or a postgresql:// URL"
        ) from None
    # Named by what says which database it is; never by a secret.
    named = {key: params[key] for key in _NAMING_KEYS if params.get(key)}
    shown = "PostgreSQL " + (make_conninfo(**named) if named else "(libpq defaults)")
    if schema is not None:
        shown += f", schema {schema}"
    secrets = [params[key] for key in _SECRET_KEYS if params.get(key)]
    if secrets:
        secrets.append(dsn)  # it holds the password, perhaps percent-encoded
    return StoreTarget(
        dsn=dsn,
        schema=schema,
        shown=shown,
        secrets=tuple(sorted(set(secrets), key=len, reverse=True)),
    )


def _parse_error_detail(message: str, dsn: str) -> str:
    """libpq's complaint about a conninfo, with every fragment of the DSN it
    quotes hidden — but a key of a ``key=value`` pair, which is no secret."""
    first = " ".join(message.split())

    def hide(match: re.Match[str]) -> str:
        quoted = match[1]
        is_key = re.fullmatch(r"[a-z_]+", quoted) and re.search(
            rf"(?:^|\s){re.escape(quoted)}\s*=", dsn
        )
        is_syntax = re.fullmatch(r"[^\w\s]", quoted)  # libpq's missing "=", "]", ...
        return match[0] if is_key or is_syntax else '"…"'

    return re.sub(r'"([^"]*)"', hide, first)


# --------------------------------------------------------------------------- SQLite


def check_store_file(path: str) -> None:
    """Refuse (``UsageError``) a ``--db`` that is not an existing saga store.

    Checked read-only, before ``SQLiteSagaStore`` opens the file: the store
    would create a missing file, and migrate (add its tables to, switch to
    WAL) any other SQLite database it is pointed at. The check leaves no
    -wal/-shm file behind.
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file (--db takes an existing saga store)")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a SQLite database")
    if os.path.getsize(path) == 0:
        raise UsageError(f"{path} is an empty file, not a saga store")
    immutable = _FileState.of(path).quiet
    query = "?mode=ro&immutable=1" if immutable else "?mode=ro"
    # The file of that very name, as the store opens it (never a URI's file).
    uri = pathlib.Path(path).resolve().as_uri() + query
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as error:
        raise UsageError(f"cannot open {path}: {error}") from None
    try:
        # The store's own test of what is a saga store (its tables' columns,
        # not just a table named sagas, which other programs have too).
        version = _saga_schema_version(conn, path)
    except _NotASagaStore as error:
        raise UsageError(str(error)) from None
    except SagaStoreError:
        return  # a saga store of a newer schema: the store says why it cannot use it
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise UsageError(f"{path} is not a SQLite database") from None
        advice = _advice(error, path)
        more = "" if advice is None else f" ({advice})"
        raise UsageError(f"cannot read {path}: {error}{more}") from None
    finally:
        conn.close()
    if version == 0:
        raise UsageError(f"{path} is a SQLite database, but not a fallback_saga saga store")


@dataclasses.dataclass(frozen=True)
class _FileState:
    """What tells whether a SQLite file changed: its identity, size and
    modification time, and the journal files a writer keeps beside it."""

    wal: bool
    journal: bool
    identity: tuple[int, int, int, int] | None  # device, inode, size, mtime in ns

    @classmethod
    def of(cls, path: str) -> _FileState:
        # SQLite names the -wal file after the path it opened, or after the
        # symlink's target: look at both.
        names = {path, os.path.realpath(path)}
        try:
            status = os.stat(path)
            identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        except OSError:
            identity = None
        return cls(
            wal=any(os.path.exists(name + "-wal") for name in names),
            journal=any(os.path.exists(name + "-journal") for name in names),
            identity=identity,
        )

    @property
    def quiet(self) -> bool:
        """No process has the file open for writing (or left a journal to recover):
        the file alone is the whole database."""
        return not self.wal and not self.journal


async def _read_sqlite(
    path: str, read: Callable[[RecoverableStore], Awaitable[_T]], park_after: int | None
) -> _T:
    check_store_file(path)
    for attempt in range(_SNAPSHOT_TRIES):
        before = _FileState.of(path)
        store = SQLiteSagaStore(path, read_only=True, immutable=before.quiet,
                                park_after=park_after)
        try:
            await store.open()
            result = await read(store)
        except Exception:
            # A writer came or went meanwhile (an immutable read may have seen
            # a page half-written; a -wal file may have gone): read again.
            if attempt + 1 < _SNAPSHOT_TRIES and _FileState.of(path) != before:
                continue
            raise
        finally:
            await store.close()
        # An immutable read is right only if nothing wrote the file meanwhile.
        # A writer that came, wrote and left changed its size or time; one
        # still there has a -wal file. Read through SQLite's locks then.
        if not before.quiet or _FileState.of(path) == before:
            return result
    raise SagaStoreError(f"{path} kept changing while it was read; try again")


# --------------------------------------------------------------------------- PostgreSQL


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


async def _check_postgres_store(target: StoreTarget, *, read_only: bool) -> None:
    """Refuse a database without the saga tables (``UsageError``), and, when
    ``read_only``, one whose schema a command that only reads would migrate."""
    import psycopg  # type: ignore[import-not-found, unused-ignore]

    from ..store._postgres_schema import SCHEMA_VERSION, _Names, _schema_version

    assert target.dsn is not None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            conn = await psycopg.AsyncConnection.connect(target.dsn, autocommit=True)
    except TimeoutError:
        raise SagaStoreError(
            f"cannot connect to {target.shown}: no connection within {CONNECT_TIMEOUT:g} s"
        ) from None
    except psycopg.Error as error:
        raise SagaStoreError(f"cannot connect to {target.shown}: {_one_line(error)}") from None
    try:
        version = await _schema_version(conn, _Names(target.schema))
    except psycopg.Error as error:
        raise SagaStoreError(f"cannot read {target.shown}: {_one_line(error)}") from None
    finally:
        await conn.close()
    if version is None:
        where = f"schema {target.schema}" if target.schema else "the connection's search_path"
        raise UsageError(
            f"{target.shown} holds no fallback_saga saga store (no saga tables in {where}; "
            f"--schema names the schema PostgresSagaStore(schema=...) was given)"
        )
    if read_only and version < SCHEMA_VERSION:
        raise SagaStoreError(
            f"{target.shown} has saga store schema version {version}, older than this "
            f"fallback_saga's ({SCHEMA_VERSION}); a command that only reads does not migrate "
            f"it: open it once with write access (the application, recover or purge)"
        )


@contextlib.asynccontextmanager
async def _open_postgres(
    target: StoreTarget, *, read_only: bool, connections: int
) -> AsyncIterator[RecoverableStore]:
    from ..store.postgres import PostgresSagaStore

    try:
        store = PostgresSagaStore(
            target.dsn or "",
            schema=target.schema,
            min_size=1,
            max_size=connections,
            connect_timeout=CONNECT_TIMEOUT,
            # Commands often go through the application's pooler (PgBouncer in
            # transaction mode), where a prepared statement is lost; a short
            # command gains nothing from one.
            prepared_statements=False,
            park_after=target.park_after,
        )
    except ValueError as error:  # e.g. --schema is not a plain identifier
        raise UsageError(f"--schema: {error}") from None
    await _check_postgres_store(target, read_only=read_only)
    try:
        await store.open()
        yield store
    finally:
        await store.close()


# --------------------------------------------------------------------------- opening


@contextlib.asynccontextmanager
async def open_store(
    target: StoreTarget, *, read_only: bool = False, connections: int = 2
) -> AsyncIterator[RecoverableStore]:
    """An existing saga store, opened now and always closed.

    ``read_only``: nothing is migrated or written (SQLite: ``mode=ro``, which
    sees other processes' commits; it may leave -wal/-shm files, see
    ``read_store``). ``connections``: the PostgreSQL pool's size. Errors
    about a PostgreSQL store never show its password.
    """
    try:
        if target.db is not None:
            check_store_file(target.db)
            store = SQLiteSagaStore(target.db, read_only=read_only, park_after=target.park_after)
            try:
                try:
                    await store.open()
                except SagaStoreError as error:
                    if _refused_writing(error):
                        raise SagaStoreError(
                            f"{error} (this command writes to the saga store: it needs write "
                            f"access to the file and its directory; list and show only read)"
                        ) from None
                    raise
                yield store
            finally:
                await store.close()
        else:
            async with _open_postgres(
                target, read_only=read_only, connections=connections
            ) as postgres:
                yield postgres
    except (UsageError, SagaStoreError) as error:
        if target.dsn is not None:
            _scrub_in_place(target, error)
        raise


async def read_store(
    target: StoreTarget, read: Callable[[RecoverableStore], Awaitable[_T]]
) -> _T:
    """``read(store)`` on the store, writing nothing and, for SQLite, leaving
    no -wal/-shm file that was not there (see the module docstring)."""
    if target.db is None:
        async with open_store(target, read_only=True) as store:
            return await read(store)
    return await _read_sqlite(target.db, read, target.park_after)


def _refused_writing(error: SagaStoreError) -> bool:
    cause = error.__cause__
    reason = getattr(cause, "sqlite_errorname", "") if isinstance(cause, sqlite3.Error) else ""
    return reason.startswith("SQLITE_READONLY")


def _scrub_in_place(target: StoreTarget, error: UsageError | SagaStoreError) -> None:
    """A PostgreSQL store's error message on one line (the driver's span
    several) and without the password; the error is re-raised."""
    # Only plain messages: SagaNotFound and friends format their own
    # arguments, which hold no driver text.
    if type(error) in (UsageError, SagaStoreError) and len(error.args) == 1:
        message = error.args[0]
        if isinstance(message, str):
            error.args = (target.scrub(" ".join(message.split())),)


def no_such_saga(target: StoreTarget, saga_id: str) -> UsageError:
    """The usage error (exit status 2) of a command given an id the store
    ``target`` does not hold."""
    return UsageError(f"no saga with id {short_repr(saga_id)} in {target.shown}")


async def load_saga(store: SagaStore, target: StoreTarget, saga_id: str) -> SagaRecord:
    """The saga a command was given by id (``show``, ``resume``,
    ``retry-unwinding``), or a usage error: an id the store does not hold,
    or no saga id at all (empty, too long, ...)."""
    try:
        return await store.load(saga_id)
    except SagaNotFound:
        raise no_such_saga(target, saga_id) from None
    except ValueError as error:
        raise UsageError(str(error)) from None


async def tell_what_is_held(store: SagaStore, target: StoreTarget, saga_id: str) -> None:
    """For an operator's action on one saga that Ctrl-C interrupted: print
    the status the journal holds for the saga now, and what is left to do —
    "interrupted" alone would leave the operator guessing, when the saga
    may have ended meanwhile (a cancelled run unwinds first: S8, S13). Or,
    should the store fail as it is read, that it is unknown."""
    shown = terminal_text(saga_id, MAX_VALUE)
    quoted = quoted_id(saga_id)
    try:
        status = (await store.load(saga_id)).status
    except Exception as error:
        why = terminal_text(target.shown_error(f"{type(error).__name__}: {error}"), MAX_CONTEXT)
        print_lines([f"  {shown}: interrupted; what the journal holds could not be read "
                     f"({why}): show {quoted} tells it"])
        return
    if status is SagaStatus.COMPLETED:
        left = "every step completed"
    elif status is SagaStatus.COMPENSATED:
        left = "every completed step is undone"
    elif status is SagaStatus.FAILED:
        left = f"a compensation gave up: retry-unwinding {quoted} once the participant is fixed"
    else:  # RUNNING, COMPENSATING: an interrupted run
        left = "left for recovery (run this command again, or recover)"
    print_lines([f"  {shown}: interrupted; the journal holds it {status.name}: {left}"])
