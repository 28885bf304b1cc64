"""Where a SQLite saga store's requests run, from its first request to its
close: the writer and reader threads (``_sqlite_workers``), the writer
process (``_sqlite_pipe``), or the calling thread (``writer="inline"``); and
what a fork does to them (``forking``).

``SQLiteSagaStore`` owns one ``Runner`` and hands it every request
(``submit``, bound as the store's ``_submit``: the journal writes' hot path
calls it directly, no layer in between). The runner holds nothing of the
store (the finalizers that stop a dropped store's threads hold the workers,
never the store or the runner), so it goes when the store does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import SagaStoreError, StoreClosed
from ..forking import watch_forks
from ._common import JournalFuture
from ._loop_waker import LoopWaker, waker_of
from ._sqlite_pipe import WriterProcess, abandon_soon
from ._sqlite_schema import _connect_read_only, _connect_reader, _connect_writer
from ._sqlite_sql import _ping, _Request
from ._sqlite_workers import LeaseFuture, _settle_now, _Stop, _stop_workers, _Worker


class Runner:
    """A store's threads, writer process or inline connection, opened at
    the first request and closed by ``close``; the settings are the
    store's, checked by it."""

    def __init__(
        self,
        path: str,
        file: str,
        *,
        synchronous: str,
        busy_timeout: float,
        clock: Callable[[], float],
        read_only: bool,
        immutable: bool,
        writer: str,
        separate_reader: bool,
    ) -> None:
        self.path = path  # as the store shows it, in its errors
        self._file = file  # resolved (see ConfiguredStore.__init__)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._clock = clock
        self.read_only = read_only
        self.immutable = immutable
        self.writer = writer
        self._separate_reader = separate_reader
        self._lock = threading.Lock()
        self._closed = False
        # Set once close() has finished: a close() called meanwhile (from any
        # loop or thread) waits for it, so that "closed" means the file is.
        self._close_finished: concurrent.futures.Future[None] | None = None
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._finalizer: weakref.finalize[Any, Runner] | None = None
        # writer="process": the journal writes of the first loop that writes
        # (other loops' go through the writer thread, as with "thread").
        self._process: WriterProcess | None = None
        # writer="inline": the one connection, opened at the first request,
        # and the lock that lets one caller at a time use it.
        self._inline_conn: sqlite3.Connection | None = None
        self._inline_lock = threading.Lock()
        self._process_finalizer: weakref.finalize[Any, Runner] | None = None
        self._forked_mid_request = False
        # The last event loop that sent a request, and its waker (see _waker).
        self._last_waker: (
            tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], LoopWaker | None] | None
        ) = None
        # Around a fork (_hold_for_fork): the locks taken, and whether one could not be.
        self._fork_held: list[threading.Lock] = []
        self._fork_blocked = False
        watch_forks(self)  # a forked child starts afresh (_forget_the_parents)

    async def open(self) -> None:
        """Open (and migrate) the database now (``SQLiteSagaStore.open``)."""
        await self.submit(_ping, (), write=not self.read_only)
        if self.writer == "process":
            process = self.writer_process()
            if process is not None:
                await process.ensure_started()

    async def close(self) -> None:
        """``SQLiteSagaStore.close``: finish the queued requests, then stop
        the threads and close the file."""
        with self._lock:
            if self._closed:
                finished = self._close_finished
                if finished is None or finished.done():
                    return
            else:
                finished = None
                self._closed = True
                closing: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._close_finished = closing
                workers = [w for w in (self._reader, self._writer) if w is not None]
                if self._finalizer is not None:
                    self._finalizer.detach()
                process, self._process = self._process, None
        if finished is not None:
            # shield: cancelling this wait must not cancel the other close's future
            await asyncio.shield(asyncio.wrap_future(finished))
            return
        try:
            await self._close(workers, process)
        finally:
            closing.set_result(None)

    async def _close(self, workers: list[_Worker], process: WriterProcess | None) -> None:
        if self.writer == "inline":
            with self._inline_lock:  # after the request in progress, if any
                conn, self._inline_conn = self._inline_conn, None
                if conn is not None:
                    conn.close()
            return
        loop = asyncio.get_running_loop()
        # One connection closes at a time: the writer process's, the reader
        # thread's, the writer thread's last (workers is [reader, writer]).
        # SQLite removes the -wal and -shm files as the last connection to
        # the file closes, which it tells by taking the file's exclusive
        # lock: two connections closing at once can each find the other
        # still open, and both leave the files (seen about once in 30
        # closes on a loaded machine, when all were told to stop together).
        told: list[_Worker] = []
        try:
            if process is not None:
                if process.loop is loop:
                    await process.close()
                else:  # closed from another loop: the child's own loop lets it go
                    abandon_soon(process)
            for worker in workers:
                await _stopped(worker, loop, told)
            for worker in workers:
                # Give-backs queued behind the stop (see LeaseFuture): each
                # claim's outcome reached this loop before the stop's did.
                left = worker.leftovers()
                if left:
                    await loop.run_in_executor(None, worker.serve_after_stop, left)
        finally:
            # A close() cancelled half-way still stops every thread (each
            # finishes its queue first).
            for worker in workers:
                if worker not in told:
                    worker.stop_soon()

    def counts(self) -> tuple[int, int, int, int]:
        """Writes, commits, reads and the largest group so far (``stats``)."""
        writer, reader = self._writer, self._reader
        reads = (writer.reads if writer else 0) + (reader.reads if reader else 0)
        process = self._process
        return (
            (writer.writes if writer else 0) + (process.writes if process else 0),
            (writer.commits if writer else 0) + (process.commits if process else 0),
            reads,
            writer.largest_group if writer else 0,
        )

    def _start(self) -> _Worker:
        """Start the threads (under ``self._lock``)."""
        path, timeout = self._file, self.busy_timeout
        synchronous = self.synchronous
        if self.read_only:
            # No writer: one thread, on a connection that writes nothing.
            immutable = self.immutable
            only = _Worker(
                role="reader",
                path=path,
                connect=lambda: _connect_read_only(path, timeout, immutable),
                clock=self._clock,
            )
            self._writer, self._reader = only, None
            if self.writer == "inline":
                only.settle = _settle_now
                return only  # no thread: _serve_inline runs its requests
            self._finalizer = weakref.finalize(self, _stop_workers, only)
            only.start()
            return only
        writer = _Worker(
            role="writer",
            path=path,
            connect=lambda: _connect_writer(path, synchronous, timeout),
            clock=self._clock,
        )
        if self.writer == "inline":
            # No thread: _serve_inline runs every request, reads too, on the
            # writer's connection (one at a time, so nothing to separate).
            writer.settle = _settle_now
            self._writer, self._reader = writer, None
            return writer
        reader: _Worker | None = None
        if self._separate_reader and path not in ("", ":memory:"):
            reader = _Worker(
                role="reader",
                path=path,
                connect=lambda: _connect_reader(path, synchronous, timeout),
                clock=self._clock,
            )
        self._writer, self._reader = writer, reader
        workers = (writer,) if reader is None else (writer, reader)
        # A store dropped without close() still stops its threads. The
        # finalizer holds the workers, never the store or its runner.
        self._finalizer = weakref.finalize(self, _stop_workers, *workers)
        for worker in workers:
            worker.start()
        return writer

    def submit(
        self,
        op: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        write: bool,
        journal: bool = False,
        leases: bool = False,
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = (
            JournalFuture(loop=loop) if journal else loop.create_future()
        )
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if write and self.read_only:
                raise SagaStoreError(f"the SQLite saga store {self.path} is read-only")
            writer = self._writer or self._start()
            worker = writer if write or self._reader is None else self._reader
            if self.writer != "inline":
                waker = self._waker(loop)
                if leases:
                    # Given back should it land for nobody (see LeaseFuture).
                    # Inline needs none: answered before submit returns.
                    future = LeaseFuture(loop=loop, worker=worker, waker=waker)
                worker.queue.put(_Request(op, args, loop, future, write, waker))
                return future
        self._serve_inline(worker, _Request(op, args, loop, future, write))
        return future

    def _waker(self, loop: asyncio.AbstractEventLoop) -> LoopWaker | None:
        """``loop``'s waker (made at its first request), through which the
        threads answer it; remembered for the last loop (a weak reference:
        the store keeps no loop alive)."""
        last = self._last_waker
        if last is not None and last[0]() is loop:
            return last[1]
        waker = waker_of(loop)
        self._last_waker = (weakref.ref(loop), waker)
        return waker

    def _forget_the_parents(self) -> None:
        """In a process just forked: the threads did not come along, and the
        connections and the writer process are the parent's. The child's
        next request opens its own (as at first use); the parent's are
        never used here, so the parent goes on undisturbed.

        The inherited connections are closed, not merely dropped: SQLite
        keeps one lock record per file and process, which the child copied
        with the parent's locks in it; until they are closed, a connection
        the child opens to the same file would believe it holds locks that
        only the parent holds. (fcntl locks belong to a process: closing
        the child's copies releases none of the parent's.) A connection that
        a thread was using at the moment of the fork cannot be closed — its
        mutex stays held for ever in the child. The fork waits for the
        connections to be idle (``_hold_for_fork``); if one stayed busy past
        that wait, the store refuses every call in the child, saying why,
        rather than risk the file."""
        in_use = self._fork_blocked
        self._fork_blocked = False
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._inline_lock = threading.Lock()
        for finalizer in (self._finalizer, self._process_finalizer):
            if finalizer is not None:
                finalizer.detach()  # they would stop the parent's threads and child
        self._finalizer = self._process_finalizer = None
        connections = [self._inline_conn] + [
            worker.conn for worker in (self._writer, self._reader) if worker is not None
        ]
        self._writer = self._reader = None
        self._inline_conn = None
        self._last_waker = None  # the parent's loops are not this process's
        process, self._process = self._process, None
        if process is not None:
            process.let_go()
        if in_use:
            _FORKED_MID_REQUEST.extend(conn for conn in connections if conn is not None)
            self._forked_mid_request = True
            self._closed = True
            return
        for conn in connections:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _hold_for_fork(self) -> None:
        """Before a fork, in the forking thread: wait until no thread of the
        store is inside SQLite, and keep it so until the fork is done
        (``_release_after_fork`` in the parent; the child starts afresh)."""
        locks = [w.using for w in (self._writer, self._reader) if w is not None]
        if self.writer == "inline":
            locks.append(self._inline_lock)  # held by a request, its connection's opening too
        for lock in locks:
            if lock.acquire(timeout=_FORK_WAIT):
                self._fork_held.append(lock)
            else:
                self._fork_blocked = True  # a request longer than the wait: see the child

    def _release_after_fork(self) -> None:
        held, self._fork_held = self._fork_held, []
        self._fork_blocked = False
        for lock in held:
            lock.release()

    def _closed_error(self) -> SagaStoreError:
        if self._forked_mid_request:
            # StoreClosed: this copy never works again (its connections stay
            # the parent's), so the journal must not retry it as a passing fault.
            return StoreClosed(
                f"the SQLite saga store {self.path} was opened in another process and "
                f"was in the middle of a request when this process was forked from it: "
                f"its connections cannot be used or closed here; open the store again "
                f"after the fork (a new SQLiteSagaStore), or fork while no saga runs"
            )
        return StoreClosed(f"the SQLite saga store {self.path} is closed")

    def _serve_inline(self, worker: _Worker, request: _Request) -> None:
        """``writer="inline"``: run ``request`` now, on this thread, and settle
        its future before returning (what the worker's thread would do)."""
        with self._inline_lock:
            if self._closed:
                _settle_now([(request, False, self._closed_error())])
                return
            try:
                conn = self._inline_conn
                if conn is None:
                    conn = self._inline_conn = worker._open([request])
                    if conn is None:
                        return  # refused with the reason it could not be opened
                    # A store dropped without close() still closes its file:
                    # no thread of its own does it, and an open connection
                    # freed warns "unclosed database" (Python 3.13+). The
                    # finalizer holds the connection, never the store or its runner.
                    self._finalizer = weakref.finalize(self, _close_quietly, conn)
                worker._serve(conn, [request])
            except BaseException as error:  # a bug here must not leave the saga waiting
                if not request.future.done():
                    _settle_now([(request, False, worker._wrap(error))])
                if not isinstance(error, Exception):
                    raise

    def writer_process(self) -> WriterProcess | None:
        """The writer process of the running loop: made by the first loop
        that writes; None for another loop (its writes take the thread)."""
        loop = asyncio.get_running_loop()
        process = self._process
        if process is not None and process.loop is loop:
            # The hot path: made already, for this loop. (close() clears
            # _process under the lock: a closed store goes on to refuse below.)
            return process
        with self._lock:
            if self._closed:
                raise self._closed_error()
            process = self._process
            if process is not None and process.loop.is_closed():
                # Its loop has ended (asyncio.run returned; the next test's
                # loop is here): stop its child, which would otherwise live
                # on unused until this process exits, and make this loop's.
                if self._process_finalizer is not None:
                    self._process_finalizer.detach()
                process.let_go(loop_closed=True)
                process = None
            if process is None:
                process = self._process = WriterProcess(
                    loop, (self._file, self.synchronous, self.busy_timeout), JournalFuture,
                    self._file,
                )
                # Dropped unclosed: the child stops (the finalizer holds the
                # process, never the store or its runner).
                self._process_finalizer = weakref.finalize(self, abandon_soon, process)
        return process if process.loop is loop else None


async def _stopped(
    worker: _Worker, loop: asyncio.AbstractEventLoop, told: list[_Worker]
) -> None:
    """Stop ``worker`` (once its queue is served) and wait until its
    connection is closed; ``told`` gets it first."""
    future: asyncio.Future[None] = loop.create_future()
    worker.queue.put(_Stop(loop, future, waker_of(loop)))
    told.append(worker)
    await future


def _close_quietly(conn: sqlite3.Connection) -> None:
    """The finalizer of an inline store dropped unclosed: close its connection
    (from whichever thread frees the store; nothing else uses it by then)."""
    with contextlib.suppress(Exception):  # a finalizer has nobody to tell
        conn.close()


# ------------------------------------------------------------------------- fork

# In a forked child: connections a parent's thread was using at the fork,
# kept (never closed, never freed) for the child's life.
_FORKED_MID_REQUEST: list[sqlite3.Connection] = []

# How long a fork waits for a store's request in progress (a commit waiting
# on another process's lock may take up to busy_timeout) before it goes on.
_FORK_WAIT = 10.0
