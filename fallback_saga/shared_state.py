"""Shared circuit state: breakers of the same name in several processes agree on
OPEN / CLOSED / HALF_OPEN through a small table.

Counting stays local to each ``CircuitBreaker``; only *transitions* are
shared. A breaker publishes its transition with a compare-and-set on the last
version of the row it saw, and pulls the row at most once per
``sync_interval`` (and whenever it transitions). A pull that finds a newer
version adopts it: OPEN (with its reopen time), CLOSED, or HALF_OPEN owned by
another instance (which this instance treats as OPEN until the owner's trial
lease ends). Moving OPEN → HALF_OPEN requires winning the compare-and-set with
``half_open_owner`` set to the breaker's instance id, so one instance at a
time runs trial calls.

Where the store's work runs. Inline, on the thread that calls the breaker, but
rarely: a pull happens on the first call after ``sync_interval`` has passed
(one float comparison per call decides it), a publish on a local transition,
a claim when a reopen time passes. Not on a background thread, because

* the half-open claim must be decided *before* a trial permit is granted —
  it is synchronous by nature;
* time stays the breaker's injected clock, so the whole protocol is
  deterministic under a fake clock, and there is no thread to start, stop or
  leak per breaker or per store;
* the closed path of a breaker without a store is unchanged, and with a store
  it adds one clock read and a float compare per call.

The cost is that a pull or publish blocks the caller for one store round trip
(tens of microseconds for SQLite in WAL mode) at most about once per
``sync_interval`` per breaker, plus once per transition. A store must
therefore bound its operations (busy timeout, connect timeout). Any exception
from the store leaves the breaker on its local state; the breaker reports it to
its listeners (``breaker_state_store_failed``) at most once per
``sync_interval`` and retries at the next pull.

Times in the table are wall-clock (Unix) seconds, because monotonic clocks of
different processes are unrelated; each breaker converts them to and from its
own monotonic clock as "seconds from now". Clock skew between machines shifts
reopen times by the skew.

``SQLiteCircuitStateStore`` serves processes on one machine (stdlib only); a
PostgreSQL implementation lives in ``fallback_saga.store.postgres_breaker``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
import weakref
from typing import Protocol, runtime_checkable

from .forking import watch_forks
from .given_numbers import number_given
from .private_file import create_private_file, database_path
from .sqlite_files import why_cannot_open
from .status import CircuitState

__all__ = ["CircuitStateStore", "SQLiteCircuitStateStore", "SharedCircuit"]


@dataclasses.dataclass(frozen=True, slots=True)
class SharedCircuit:
    """One row of shared circuit state.

    ``version`` grows by one at every published transition (0 means "no row").
    ``open_until`` (wall-clock seconds) is when an OPEN circuit may be tried
    again, or when the HALF_OPEN owner's trial lease ends; 0.0 when CLOSED.
    """

    name: str
    state: CircuitState
    version: int
    open_until: float
    half_open_owner: str | None
    updated_at: float


@runtime_checkable
class CircuitStateStore(Protocol):
    """Where breakers publish and read their shared state.

    Both methods are synchronous, short and thread-safe, and may raise any
    exception when the store is unreachable (the breaker then works locally).
    """

    def read(self, name: str) -> SharedCircuit | None:
        """The current row for ``name``, or ``None`` if nobody published yet."""
        ...

    def compare_and_set(
        self,
        name: str,
        expected_version: int,
        new_state: CircuitState,
        open_until: float,
        half_open_owner: str | None,
    ) -> SharedCircuit | None:
        """Write the row as version ``expected_version + 1`` if its version is
        still ``expected_version`` (0: the row must not exist yet). Returns the
        new row, or ``None`` if the version moved on (someone else published)."""
        ...


_TABLE = "fallback_saga_breakers"

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    open_until REAL NOT NULL,
    half_open_owner TEXT,
    updated_at REAL NOT NULL
)
"""


class SQLiteCircuitStateStore:
    """Shared circuit state in an SQLite file, for processes on one machine.

    Uses its own table (``fallback_saga_breakers``, created if missing) and
    its own connections — one per thread, in autocommit mode with WAL and a
    busy timeout — so it may share a file with ``SQLiteSagaStore`` without
    touching that store's schema. A thread's connection is closed when the
    thread ends (threads that come and go leave no open file behind), the
    others by ``close()``. Every statement is a single parameterized
    statement, atomic on its own.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 1.0) -> None:
        # Any path-like (a pathlib.Path, as SQLiteSagaStore takes); bytes are decoded.
        text = database_path(path, "SQLiteCircuitStateStore")
        if text in ("", ":memory:") or text.startswith("file::memory:"):
            raise ValueError("shared circuit state needs a database file, not :memory:")
        self.path: str = text
        self.busy_timeout = number_given("busy_timeout", busy_timeout, least=0, unit="seconds")
        self._local = threading.local()
        self._all: set[sqlite3.Connection] = set()
        self._all_lock = threading.Lock()
        self._closed = False
        # Held around each statement: a fork waits for it (_hold_for_fork),
        # so that no connection is mid-call in the child.
        self._using = threading.Lock()
        self._held_for_fork = False
        watch_forks(self)  # a forked child opens its own (_forget_the_parents)

    def __repr__(self) -> str:
        return f"SQLiteCircuitStateStore({self.path!r})"

    def _connection(self) -> sqlite3.Connection:
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is not None:
            return held.conn
        if self._closed:
            raise RuntimeError("the circuit state store is closed")
        with self._using:
            create_private_file(self.path)  # not world-readable (private_file.py)
            try:
                conn = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as error:
                raise self._explained(error) from error
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_CREATE)
            except BaseException as error:
                conn.close()
                if isinstance(error, sqlite3.Error):
                    raise self._explained(error) from error
                raise
        with self._all_lock:
            self._all.add(conn)
        held = _ThreadConnection(conn)
        # The thread's slot of ``_local`` goes when the thread ends, and with
        # it ``held``: then the connection is closed, from whichever thread.
        weakref.finalize(held, _release, conn, weakref.ref(self))
        self._local.held = held
        return conn

    def _explained(self, error: sqlite3.Error) -> sqlite3.Error:
        """``error`` opening the file, with what the file system says of the
        cause (a missing directory, a read-only one, a directory as the path)
        where SQLite says only "unable to open database file": the breaker
        logs it and works on local state, so its words are all the operator
        sees. Same type, so a caller's ``except sqlite3.Error`` still holds."""
        advice = why_cannot_open(self.path)
        if advice is None:
            return error
        explained = type(error)(f"{error} ({advice})")
        for name in ("sqlite_errorcode", "sqlite_errorname"):  # kept for callers that look
            if hasattr(error, name):
                setattr(explained, name, getattr(error, name))
        return explained

    def read(self, name: str) -> SharedCircuit | None:
        conn = self._connection()
        with self._using:
            row = conn.execute(
                f"SELECT state, version, open_until, half_open_owner, updated_at "
                f"FROM {_TABLE} WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            return None
        state, version, open_until, owner, updated_at = row
        return SharedCircuit(
            name, CircuitState(state), int(version), float(open_until), owner, float(updated_at)
        )

    def compare_and_set(
        self,
        name: str,
        expected_version: int,
        new_state: CircuitState,
        open_until: float,
        half_open_owner: str | None,
    ) -> SharedCircuit | None:
        state = CircuitState(new_state)
        conn = self._connection()
        with self._using:
            return self._compare_and_set(
                conn, name, state, expected_version, open_until, half_open_owner
            )

    @staticmethod
    def _compare_and_set(
        conn: sqlite3.Connection,
        name: str,
        state: CircuitState,
        expected_version: int,
        open_until: float,
        half_open_owner: str | None,
    ) -> SharedCircuit | None:
        now = time.time()
        version = expected_version + 1
        if expected_version == 0:
            cursor = conn.execute(
                f"INSERT INTO {_TABLE} "
                f"(name, state, version, open_until, half_open_owner, updated_at) "
                f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, state.value, version, open_until, half_open_owner, now),
            )
        else:
            cursor = conn.execute(
                f"UPDATE {_TABLE} SET state = ?, version = ?, open_until = ?, "
                f"half_open_owner = ?, updated_at = ? WHERE name = ? AND version = ?",
                (state.value, version, open_until, half_open_owner, now, name, expected_version),
            )
        if cursor.rowcount != 1:
            return None
        return SharedCircuit(name, state, version, float(open_until), half_open_owner, now)

    def _hold_for_fork(self) -> None:
        """Before a fork: wait (a little) until no statement is running."""
        self._held_for_fork = self._using.acquire(timeout=_FORK_WAIT)

    def _release_after_fork(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._using.release()

    def _forget_the_parents(self) -> None:
        """In a process just forked: the connections are the parent's, which
        SQLite forbids using here (the child's copies share the parent's
        lock records). They are closed — fcntl locks belong to a process, so
        none of the parent's is released — and each thread of the child
        opens its own at its next call. (Only if no statement was running at
        the fork: a connection mid-call cannot be closed in the child, where
        SQLite's mutex stays held; then it is left alone, never freed.)"""
        idle, self._held_for_fork = self._held_for_fork, False
        self._all_lock = threading.Lock()  # another thread may have held it at the fork
        self._using = threading.Lock()
        inherited, self._all = self._all, set()
        old_local, self._local = self._local, threading.local()
        if not idle:
            # Kept, with the threads' slots whose finalizers would close them.
            _FORKED_MID_CALL.append((old_local, inherited))
            return
        for conn in inherited:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close every connection this store opened (call when no breaker uses it)."""
        self._closed = True
        with self._all_lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            conn.close()


class _ThreadConnection:
    """One thread's connection, in the thread's slot of a ``threading.local``."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _release(conn: sqlite3.Connection, owner: weakref.ref[SQLiteCircuitStateStore]) -> None:
    """Close the connection of a thread that ended (the store's set and lock
    of now, which a fork may have replaced)."""
    store = owner()
    if store is not None:
        with store._all_lock:
            store._all.discard(conn)
    conn.close()


# In a forked child: connections in use at the fork, never closed nor freed.
_FORKED_MID_CALL: list[object] = []
# How long a fork waits for a statement in progress (one busy_timeout at most).
_FORK_WAIT = 5.0
