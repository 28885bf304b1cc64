"""The threads (and the writer process) that run a SQLite saga store's
requests, each on a connection of its own, and resolve each request's
future on the event loop that made it (see ``sqlite``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import SagaStoreError
from ._loop_waker import LoopWaker
from ._sqlite_leases import _release
from ._sqlite_oversize import fit_oversized, too_big
from ._sqlite_pipe import (
    FrameReader,
    error_to_wire,
    frame,
)
from ._sqlite_schema import (
    WAL_SIZE_LIMIT,
    _advice,
    _connect_writer,
    _disk_full,
    _locked,
    _newer_schema,
    _rollback,
)
from ._sqlite_sql import (
    _BATCHED,
    _MAX_KNOWN,
    _append,
    _create,
    _Request,
    _run_alone,
    _run_group,
    _Txn,
)

# --------------------------------------------------------------------------- threads


@dataclass(slots=True)
class _Stop:
    """Queued by ``close`` (with a future, and its loop's waker if it has
    one) or by the finalizer (without)."""

    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | None = None
    waker: LoopWaker | None = None


_Outcome = tuple[_Request, bool, Any]  # (request, succeeded, result or exception)

# How many queued requests one transaction takes at most: bounds a group's latency.
_MAX_GROUP: Final = 4096




class LeaseFuture(asyncio.Future[Any]):
    """The future of a write that takes leases (``claim``, ``claim_saga``) on
    a worker's thread. Its caller may be gone by the time the write lands
    (cancelled while the write waited its turn, or another process's lock:
    ``shielding.claimed`` waits ``CLAIM_GRACE`` for it, no longer); the
    write is not stopped by that, and a lease nobody holds would keep every
    other worker out of its saga until it ran out. So the lease is given
    back (``give_back``): by ``_resolve`` when the future was cancelled
    before the outcome came, by the store's claim when its task was
    cancelled with the outcome already set but not yet taken."""

    __slots__ = ("waker", "worker")

    def __init__(
        self, *, loop: asyncio.AbstractEventLoop, worker: _Worker, waker: LoopWaker | None
    ) -> None:
        super().__init__(loop=loop)
        self.worker = worker
        self.waker = waker

    def give_back(self, taken: Any) -> None:
        """Queue a release of each lease in ``taken`` (a ``Lease``, or a
        list of them), fenced by its token: one somebody took since is
        left alone. Nobody waits for it (a failed release leaves the lease
        to run out, as before)."""
        loop = self.get_loop()
        for lease in taken if isinstance(taken, list) else (taken,):
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(_retrieved)
            self.worker.queue.put(
                _Request(_release, (lease.saga_id, lease.token), loop, done, True, self.waker)
            )


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # nobody else asks: asyncio must not log it


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, succeeded, value in items:
        if future.done():  # the awaiting task was cancelled; the write still happened
            if succeeded and type(future) is LeaseFuture:
                future.give_back(value)  # what it took, nobody holds
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


def _settle(outcomes: Sequence[_Outcome]) -> None:
    """Resolve each future on its own loop, one thread-safe wake-up per loop."""
    by_loop: dict[
        asyncio.AbstractEventLoop,
        tuple[LoopWaker | None, list[tuple[asyncio.Future[Any], bool, Any]]],
    ] = {}
    for request, succeeded, value in outcomes:
        entry = by_loop.get(request.loop)
        if entry is None:
            # One waker per loop: any of the loop's requests carries it.
            entry = by_loop[request.loop] = (request.waker, [])
        entry[1].append((request.future, succeeded, value))
    for loop, (waker, items) in by_loop.items():
        _on_loop(loop, waker, _resolve, items)


def _on_loop(
    loop: asyncio.AbstractEventLoop,
    waker: LoopWaker | None,
    call: Callable[[Any], None],
    arg: Any,
) -> None:
    """``call(arg)`` on ``loop``, from this thread: through the loop's waker
    (``_loop_waker``; the store looked it up on the loop's thread), else
    ``call_soon_threadsafe``. Both keep the order of the calls."""
    if loop.is_closed():
        return  # nobody is waiting for these any more
    if waker is not None:
        waker.post(call, arg)
        return
    # A loop closed meanwhile raises RuntimeError: nobody is waiting either.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(call, arg)


class _Worker:
    """A thread that owns one connection and serves a queue of requests."""

    def __init__(
        self,
        *,
        role: str,
        path: str,
        connect: Callable[[], sqlite3.Connection],
        clock: Callable[[], float],
    ) -> None:
        self.role = role
        self.path = path
        self.connect = connect
        self.clock = clock
        self.queue: queue.SimpleQueue[_Request | _Stop] = queue.SimpleQueue()
        self.commits = 0
        self.writes = 0
        self.reads = 0
        self.largest_group = 0
        self.known: dict[str, tuple[int, int]] = {}  # see _Txn
        self.quiet: dict[object, float] = {}  # see _Txn
        # A write met a full disk: the next ones checkpoint the -wal file
        # first, until the disk has room (see _checkpoint_after_full_disk).
        self.checkpoint_due = False
        # The thread's connection once open: a forked child closes its copy.
        self.conn: sqlite3.Connection | None = None
        # Held while the thread is inside SQLite: a fork waits for it
        # (sqlite._before_fork), so that no connection is mid-call in the child,
        # where SQLite's mutex would stay held for ever.
        self.using = threading.Lock()
        # Where outcomes go: their futures' loops (the writer process answers by pipe).
        self.settle: Callable[[Sequence[_Outcome]], None] = _settle
        self.thread = threading.Thread(
            target=self._main, name=f"fallback_saga-sqlite-{role}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop_soon(self) -> None:
        self.queue.put(_Stop())

    def leftovers(self) -> list[_Request]:
        """The requests queued after the thread stopped: the give-backs
        (``LeaseFuture``) of claims that landed just before ``close``,
        whose outcomes reached their loop after the stop was queued."""
        left: list[_Request] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return left
            if isinstance(item, _Request):
                left.append(item)

    def serve_after_stop(self, group: list[_Request]) -> None:
        """``group`` (``leftovers``), on a connection opened and closed here:
        the thread's is closed."""
        conn = self._open(group)
        if conn is None:
            return
        try:
            with self.using:
                self._serve(conn, group)
        finally:
            conn.close()

    # -- thread side

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        stop: _Stop | None = None
        try:
            while stop is None:
                group, stop = self._next_group()
                if not group:
                    continue
                try:
                    with self.using:
                        if conn is None:
                            # Opened at the first request, and again at the next
                            # one if that failed: a file locked past busy_timeout
                            # (or a directory created since) must not break the
                            # store for good.
                            conn = self.conn = self._open(group)
                            if conn is None:
                                continue
                        self._serve(conn, group)
                except BaseException as error:  # a bug here must not leave sagas waiting
                    self.settle([(request, False, self._wrap(error)) for request in group])
                finally:
                    # Waiting for the next request, keep nothing of these: their
                    # futures hold their event loops, their arguments a journal.
                    group = []
        finally:
            if conn is not None:
                with self.using:
                    conn.close()
            if stop is not None and stop.loop is not None and stop.future is not None:
                _settle_stop(stop)

    def _open(self, group: list[_Request]) -> sqlite3.Connection | None:
        """The connection, or ``None`` once ``group`` has been refused with the
        reason it could not be opened (each request gets its own exception)."""
        try:
            return self.connect()
        except Exception as error:
            failure = self._wrap(error)
        outcomes: list[_Outcome] = []
        for request in group:
            refused = SagaStoreError(*failure.args)
            refused.__cause__ = failure.__cause__
            # No connection, no write: whatever the reason, nothing was written.
            refused.nothing_written = True
            outcomes.append((request, False, refused))
        self.settle(outcomes)
        return None

    def _next_group(self) -> tuple[list[_Request], _Stop | None]:
        item = self.queue.get()
        group: list[_Request] = []
        while True:
            if isinstance(item, _Stop):
                return group, item
            group.append(item)
            if len(group) >= _MAX_GROUP:
                return group, None
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return group, None

    def _serve(self, conn: sqlite3.Connection, group: list[_Request]) -> None:
        # One cursor per group: ops use it for every statement.
        cursor = conn.cursor()
        try:
            if self.role == "reader":
                self._read(conn, cursor, group)
                return
            writes = [request for request in group if request.write]
            if writes:
                if self.checkpoint_due:
                    self._checkpoint_after_full_disk(conn)
                self._write(conn, cursor, writes)
            if len(writes) < len(group):  # a database only this connection can see
                self._read(conn, cursor, [request for request in group if not request.write])
        finally:
            cursor.close()

    def _write(
        self, conn: sqlite3.Connection, cursor: sqlite3.Cursor, group: list[_Request]
    ) -> None:
        outcomes: list[_Outcome] = [None] * len(group)  # type: ignore[list-item]
        in_requests = committing = False
        known = self.known
        if len(known) > _MAX_KNOWN:
            known.clear()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            # Read under the write lock: the stamps of the processes sharing
            # the file then follow their commit order (claims rely on it).
            txn = _Txn(self.clock(), known, self.quiet)
            in_requests = True
            if _BATCHED and len(group) > 1:
                _run_group(cursor, txn, group, outcomes)
            else:
                _run_alone(cursor, txn, group, list(range(len(group))), outcomes)
            txn.flush(cursor)
            in_requests = False
            committing = True
            cursor.execute("COMMIT")
        except Exception as error:
            _rollback(conn)
            known.clear()  # it may remember writes that were just rolled back
            if _disk_full(error):
                self.checkpoint_due = True
            if in_requests and len(group) > 1:
                # A request failed half-way: replay each in a transaction of
                # its own, so that only the culprit fails.
                for request in group:
                    self._write(conn, cursor, [request])
                return
            if in_requests and too_big(error):
                # A value longer than SQLite stores: refused again at every
                # try, so made to fit now, or refused for what it is.
                fitted = fit_oversized(conn, group[0], self.path)
                if isinstance(fitted, _Request):
                    self._write_as(conn, cursor, fitted, group[0])
                    return
                if fitted is not None:
                    self.settle([(group[0], False, fitted)])
                    return
            # BEGIN (the file stayed locked past busy_timeout) or COMMIT (disk
            # full, I/O error) failed, or the request did: nothing of the
            # group was written. Certainly so, unless COMMIT failed on the
            # way to the disk (an I/O error): the commit may be there.
            nothing_written = not committing or _refused_commit(error)
            self.settle([
                (request, False, self._wrap(error, conn, nothing_written=nothing_written))
                for request in group
            ])
            return
        self.commits += 1
        self.writes += len(group)
        if len(group) > self.largest_group:
            self.largest_group = len(group)
        self.settle(outcomes)

    def _write_as(
        self,
        conn: sqlite3.Connection,
        cursor: sqlite3.Cursor,
        fitted: _Request,
        original: _Request,
    ) -> None:
        """Write ``fitted`` (``original`` made to fit), its outcome settled as
        ``original``'s: the writer process answers by the request object."""
        settle = self.settle
        self.settle = lambda outcomes: settle(
            [(original, succeeded, value) for _, succeeded, value in outcomes]
        )
        try:
            self._write(conn, cursor, [fitted])
        finally:
            self.settle = settle

    def _checkpoint_after_full_disk(self, conn: sqlite3.Connection) -> None:
        """Since a write met a full disk: move the -wal file into the database
        and cut it to nothing whenever it holds half the disk's free space,
        until the disk has room again (``_ROOMY``).

        SQLite checkpoints on its own only once the -wal file holds 1,000
        pages (4 MiB), and the -wal file is recycled only after a checkpoint:
        on a disk with less room than that, the -wal file grows until the
        disk is full and no checkpoint ever runs. Seen on a 4 MiB disk: 340
        KiB of sagas, all of them in a 1.6 MiB -wal file, the database file
        still empty; space the operator freed was eaten by the -wal file's
        growth within a few writes, and the store was full again for good.
        A checkpoint needs room only for the pages the database file gains,
        which the -wal file holds, so it is run while the free space is
        still at least twice the -wal file. Without waiting (busy_timeout
        0): another connection holding the file makes it checkpoint what it
        can and return, rather than hold up this write."""
        path = self.path
        try:
            wal = os.stat(path + "-wal").st_size
        except OSError:
            wal = 0
        free = _free_space(path)
        if wal and (free is None or wal * 2 >= free or free >= _ROOMY):
            try:
                (timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    # PRAGMA takes no parameters; the value is the connection's own int.
                    conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms):d}")
            except sqlite3.Error:
                return  # still full: the write says so, and the next one tries again
        if free is None or free >= _ROOMY:
            # Room again for the -wal file to grow as SQLite lets it (or no
            # way to know: one checkpoint is what can be done).
            self.checkpoint_due = False

    def _read(
        self, conn: sqlite3.Connection, cursor: sqlite3.Cursor, group: list[_Request]
    ) -> None:
        outcomes: list[_Outcome] = []
        try:
            cursor.execute("BEGIN")  # one snapshot: a record and its history agree
        except sqlite3.Error as error:
            self.settle([(request, False, self._wrap(error)) for request in group])
            return
        try:
            txn = _Txn(self.clock(), {})
            for request in group:
                try:
                    outcomes.append((request, True, request.op(cursor, txn, *request.args)))
                except SagaStoreError as error:
                    outcomes.append((request, False, error))
                except Exception as error:
                    outcomes.append((request, False, self._wrap(error, conn)))
        finally:
            _rollback(conn)  # nothing to commit; ends the read transaction
        self.reads += len(group)
        self.settle(outcomes)

    def _wrap(
        self,
        error: BaseException,
        conn: sqlite3.Connection | None = None,
        *,
        nothing_written: bool = False,
    ) -> SagaStoreError:
        if isinstance(error, SagaStoreError):
            return error
        newer = None
        if (
            conn is not None and isinstance(error, sqlite3.DatabaseError)
            # A file locked past busy_timeout says so itself (and the read
            # of the version could wait as long again).
            and not getattr(error, "sqlite_errorname", "").startswith(
                ("SQLITE_BUSY", "SQLITE_LOCKED")
            )
        ):
            newer = _newer_schema(conn, self.path)
        if newer is not None:
            newer.__cause__ = error
            newer.nothing_written = nothing_written
            return newer
        detail = f"{type(error).__name__}: {error}"
        advice = _advice(error, self.path)
        if nothing_written:
            detail += " (nothing was written" + ("" if advice is None else f": {advice}") + ")"
        elif advice is not None:
            detail += f" ({advice})"
        wrapped = SagaStoreError(f"SQLite saga store {self.path}: {detail}")
        wrapped.__cause__ = error
        wrapped.nothing_written = nothing_written
        return wrapped


def _refused_commit(error: BaseException) -> bool:
    """Whether a COMMIT that failed with ``error`` certainly wrote nothing.

    A full disk: the commit frame is the last one SQLite writes to the -wal
    file (or, without WAL, the rollback journal is still there and undoes
    the pages), so a write that found no room was not committed. A lock
    (SQLITE_BUSY) or a read-only file: refused before writing. Any other
    error (an I/O error from a write or an fsync) may come after the commit
    reached the disk: in doubt."""
    name = getattr(error, "sqlite_errorname", "")
    return _disk_full(error) or _locked(error) or name.startswith("SQLITE_READONLY")


def _free_space(path: str) -> int | None:
    """Bytes free for this user on the disk holding ``path``; None where
    that cannot be known (no ``statvfs``, an in-memory database)."""
    if path in ("", ":memory:") or not hasattr(os, "statvfs"):
        return None
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


# After a full disk, a store checkpoints its -wal file itself until the disk
# has this much free: room for the -wal file to grow to the size SQLite's own
# checkpoints (every 1,000 pages) and journal_size_limit let it reach.
_ROOMY: Final = 2 * WAL_SIZE_LIMIT


def _settle_now(outcomes: Sequence[_Outcome]) -> None:
    """``writer="inline"``: resolve the futures here, on their own loop's thread."""
    _resolve([(request.future, succeeded, value) for request, succeeded, value in outcomes])


def _settle_stop(stop: _Stop) -> None:
    def resolve(_: None) -> None:
        if stop.future is not None and not stop.future.done():
            stop.future.set_result(None)

    assert stop.loop is not None
    # The way the outcomes went: close() returns after every outcome is set.
    _on_loop(stop.loop, stop.waker, resolve, None)


def _stop_workers(*workers: _Worker) -> None:
    for worker in workers:
        worker.stop_soon()


# --------------------------------------------------------------------------- the writer process

_WIRE_OPS: Final = {"c": _create, "a": _append}


def _writer_process_main() -> None:
    """The child of ``SQLiteSagaStore(path, writer="process")`` (the parent's
    side and the wire format: ``_sqlite_pipe``). It reads write requests from
    stdin and commits everything that has arrived since its last commit as
    one group, through the writer thread's own code (``_Worker._write``);
    it answers each on stdout. It ends at the end of its input: the store
    closed, or the parent gone."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides
    # when its writer ends (by closing its input), so writes on their way land.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer
    reader = FrameReader()
    captured: list[_Outcome] = []
    worker: _Worker | None = None
    conn: sqlite3.Connection | None = None
    while True:
        data = os.read(stdin, 1 << 20)
        if not data:
            break
        messages = reader.feed(data)
        if not messages:
            continue
        if messages[0][0] == "open":
            _, path, synchronous, busy_timeout = messages.pop(0)
            worker = _Worker(
                role="writer", path=path,
                connect=functools.partial(_connect_writer, path, synchronous, busy_timeout),
                clock=time.time,
            )
            worker.settle = captured.extend
            refusal = None
            try:  # opened (and migrated) now: the parent's open() hears if it cannot be
                conn = worker.connect()
            except Exception as error:
                refusal = error_to_wire(worker._wrap(error))
            if not _answer(stdout, ("ready", refusal)):
                break
        if not messages:
            continue
        assert worker is not None, "the first message opens the file"
        group: list[_Request] = []
        spans: list[tuple[int, int, int]] = []
        for _, batch, items in messages:
            spans.append((batch, len(group), len(items)))
            group += [
                _new_request(_Request, (_WIRE_OPS[op], args, None, None, True, None))
                for op, args in items
            ]
        captured.clear()
        if conn is None:
            conn = worker._open(group)  # on failure each request is refused with the reason
        if conn is not None:
            try:
                worker._serve(conn, group)
            except BaseException as error:  # a bug here must not leave sagas waiting
                worker.settle([(request, False, worker._wrap(error)) for request in group])
        by_request = {id(request): value if not succeeded else None
                      for request, succeeded, value in captured}
        answers = [by_request[id(request)] for request in group]
        wire = [None if answer is None else error_to_wire(answer) for answer in answers]
        if not _answer(stdout, ("done", worker.commits, worker.writes, tuple(
            (batch, tuple(wire[start:start + count])) for batch, start, count in spans
        ))):
            break
    if conn is not None:
        conn.close()


def _answer(stdout: Any, message: Any) -> bool:
    """Send ``message`` to the parent; False when it is gone (its pipe closed)."""
    try:
        stdout.write(frame(message))
        stdout.flush()
    except (BrokenPipeError, ValueError):  # ValueError: the stream is closed
        return False
    return True


_new_request: Final = tuple.__new__
