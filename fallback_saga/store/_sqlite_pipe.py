"""SQLite's journal writes in a process of their own: the event loop's side of
the pipe, and the wire format both sides speak (``SQLiteSagaStore(path,
writer="process")``; the child's side is ``_sqlite_workers._writer_process_main``).

Why a process. With many sagas in flight, the store's writer thread and the
event loop take turns under the GIL: the sagas all wait for one commit, then
all run their next step, and only then does the thread get the GIL for their
writes. Here the loop ships each write to the child straight away, in chunks
of ``CHUNK`` writes (at once when the child is idle, and whatever is left
at the end of a loop turn), and the child commits everything that has
arrived since its last commit. The child
commits one part of the sagas while the loop runs the rest, so the two
overlap instead of taking turns (benchmarks/README.md, "SQLite third pass").

What crosses the pipe: frames of a 4-byte length and a ``marshal`` payload of
plain values only (str, int, float, None, tuples, lists), between two
processes of one application: never stored, never read from anyone else.

* to the child: ``("open", path, synchronous, busy_timeout)`` once, then
  ``("w", batch, ((op, args), ...))`` with ``op`` ``"c"`` (create) or
  ``"a"`` (append) and the store's own request arguments, journal entries
  as plain 9-tuples;
* to the parent: ``("ready", error)`` once the file is open (``error``:
  ``None``, or why it could not be opened), then ``("done", commits,
  writes, ((batch, answers), ...))``, an answer being ``None`` (written) or
  an error (``error_to_wire``).

A child that exits, or a pipe that breaks, fails every write on its way as
*in doubt* (it may have been committed): the executor's retries then ask the
store what landed, as after a PostgreSQL connection lost at COMMIT. The next
write starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import marshal
import os
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, cast

from .. import errors
from ..errors import SagaStoreError

__all__ = ["CHUNK", "FrameReader", "WriterProcess", "abandon_soon", "error_from_wire",
           "error_to_wire", "frame"]

# Writes per chunk shipped before the loop turn ends: small enough that the
# child starts on the first sagas' writes while the loop runs the others;
# 16 to 32 measured best (4: too many commits; the whole cohort: no overlap).
CHUNK: Final = 16

_HEADER: Final = struct.Struct(">I")
# A child that could not start (or died before its first answer) is not
# restarted for this long: the writes meanwhile fail with its error instead of
# starting a process each.
_RESTART_AFTER: Final = 1.0


def frame(message: Any) -> bytes:
    payload = marshal.dumps(message)
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Bytes in, whole messages out."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self.buffer
        buffer += data
        messages: list[Any] = []
        start = 0
        size = _HEADER.size
        while len(buffer) - start >= size:
            (length,) = _HEADER.unpack_from(buffer, start)
            end = start + size + length
            if len(buffer) < end:
                break
            messages.append(marshal.loads(bytes(buffer[start + size:end])))
            start = end
        del buffer[:start]
        return messages


# The store's refusals cross the pipe as themselves: the executor tells a
# definitive refusal (LeaseLost, SagaAlreadyExists, ...) from a failure by class.
_REFUSALS: Final[dict[str, type[Exception]]] = {
    cls.__name__: cls
    for cls in (
        errors.SagaStoreError, errors.SagaNotFound, errors.CorruptSagaRecord,
        errors.JournalConflict, errors.LeaseLost, errors.SagaBusy, errors.SagaAlreadyExists,
        errors.StoreClosed,
        # A context longer than SQLite stores (_sqlite_oversize).
        errors.ContextSerializationError,
    )
}
_PLAIN: Final = (str, int, float, bool, type(None))


def error_to_wire(error: BaseException) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    name = type(error).__name__
    if _REFUSALS.get(name) is type(error):
        args = tuple(arg if type(arg) in _PLAIN else str(arg) for arg in error.args)
        attrs = {k: v for k, v in vars(error).items() if type(v) in _PLAIN}
        return name, args, attrs
    return "SagaStoreError", (f"{name}: {error}",), {}


def error_from_wire(wire: Sequence[Any]) -> Exception:
    name, args, attrs = wire
    cls = _REFUSALS.get(name, SagaStoreError)
    error = cls.__new__(cls)  # as it was: its message and attributes, no __init__ to satisfy
    error.args = tuple(args)
    error.__dict__.update(attrs)
    return error


def child_command() -> list[str]:
    """The child: this package, imported from where it lies (vendored or
    installed) as a top-level package, so that nothing of the application
    around it is imported; ``-I``: no environment variables, no user site,
    no current directory on its path."""
    if not sys.executable:
        raise SagaStoreError(
            'SQLiteSagaStore(writer="process"): cannot start the writer process '
            "(sys.executable is not set in this interpreter)"
        )
    package = Path(__file__).resolve().parent.parent
    code = (
        f"import sys; sys.path.insert(0, {str(package.parent)!r}); "
        f"from {package.name}.store._sqlite_workers import _writer_process_main; "
        f"_writer_process_main()"
    )
    return [sys.executable, "-I", "-c", code]


class _Pipe:
    """The loop's ends of one child's pipes, as one: what the child says (fd
    1), a pipe that breaks (fd 0 or 1), and the child's exit."""

    def __init__(self, owner: WriterProcess) -> None:
        self.owner = owner
        self.reader = FrameReader()
        self.exited: asyncio.Future[None] = owner.loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd == 1 and isinstance(data, bytes) and self.owner.pipe is self:
            self.owner.answered(self.reader.feed(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (0, 1):
            self.owner.lost(self, exc)

    def process_exited(self) -> None:
        self.owner.lost(self, None)
        if not self.exited.done():
            self.exited.set_result(None)


class _End(asyncio.Protocol):
    """One pipe's protocol: tells the ``_Pipe`` which end spoke."""

    def __init__(self, pipe: _Pipe, fd: int) -> None:
        self.pipe = pipe
        self.fd = fd

    def data_received(self, data: bytes) -> None:
        self.pipe.pipe_data_received(self.fd, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.pipe_connection_lost(self.fd, exc)


class _Child:
    """The writer process and the loop's transports of its pipes (what
    ``loop.subprocess_exec`` gives, made by hand).

    Why by hand: a start that the loop's shutdown cancels half-way (an
    ``asyncio.run`` that returns while a saga's first write waits for the
    child) must end. ``subprocess_exec`` connects the pipes in a task of its
    own, which the shutdown cancels too, and then waits for ever for the
    child's exit (CPython 3.11 and 3.12: python/cpython#125502): the
    shutdown, and the thread that called ``asyncio.run``, would hang. Here
    the child is started by ``subprocess.Popen`` (as ``subprocess_exec`` does,
    on the loop's thread) and each pipe is connected by a plain call that a
    cancellation leaves with nothing to wait for. A thread of the child's own
    reaps it and tells the loop (as asyncio's threaded child watcher does)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pipes: dict[int, asyncio.BaseTransport] = {}
        self.closed = False

    @classmethod
    def spawn(cls) -> _Child:
        """Start the child (on the loop's thread, as ``subprocess_exec`` does:
        a fork and an exec, no wait for the child to get going)."""
        return cls(subprocess.Popen(
            child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, bufsize=0
        ))

    def watch(self, loop: asyncio.AbstractEventLoop, exited: Callable[[], None]) -> None:
        """Reap the child when it exits, then call ``exited`` on ``loop`` (not
        if that loop has closed meanwhile: nobody there to tell)."""

        def reap() -> None:
            self.popen.wait()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(exited)

        threading.Thread(target=reap, name="fallback_saga-sqlite-reaper", daemon=True).start()

    def get_pid(self) -> int:
        return self.popen.pid

    def get_returncode(self) -> int | None:
        return self.popen.returncode

    def get_pipe_transport(self, fd: int) -> asyncio.BaseTransport | None:
        return self.pipes.get(fd)

    def kill(self) -> None:
        with contextlib.suppress(OSError):  # exited (and reaped) already
            self.popen.kill()

    def close(self, *, kill: bool = True) -> None:
        """Close our ends of the pipes and (``kill``) kill the child if it
        still runs, as a subprocess transport's ``close`` does."""
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes.values():
            with contextlib.suppress(RuntimeError):  # a closed loop refuses
                pipe.close()
        for end in (self.popen.stdin, self.popen.stdout):
            if end is not None and not any(  # a pipe never connected
                pipe.get_extra_info("pipe") is end for pipe in self.pipes.values()
            ):
                end.close()
        if kill and self.popen.poll() is None:
            self.kill()


class _Spawn(asyncio.SubprocessProtocol):
    """Windows: the protocol of asyncio's own subprocess start, for the ``_Pipe``."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.pipe.pipe_data_received(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.pipe.pipe_connection_lost(fd, exc)

    def process_exited(self) -> None:
        self.pipe.process_exited()


class _Spawned:
    """Windows: ``_Child``'s calls on asyncio's subprocess transport."""

    def __init__(self, transport: asyncio.SubprocessTransport) -> None:
        self.transport = transport

    def get_pid(self) -> int:
        return self.transport.get_pid()

    def get_returncode(self) -> int | None:
        return self.transport.get_returncode()

    def get_pipe_transport(self, fd: int) -> asyncio.BaseTransport | None:
        return self.transport.get_pipe_transport(fd)

    def kill(self) -> None:
        self.transport.kill()

    def close(self, *, kill: bool = True) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop refuses the rest
            self.transport.close()  # kills the child if it still runs


class WriterProcess:
    """The loop's side of one writer process (one event loop: the one that
    made it). ``submit`` queues a write and returns its future."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        opening: tuple[str, str, float],
        make_future: Callable[..., asyncio.Future[Any]],
        path: str,
    ) -> None:
        self.loop = loop
        self.opening = opening
        self.make_future = make_future
        self.path = path
        self.pending: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self.waiting: dict[int, list[asyncio.Future[Any]]] = {}
        self.batches = 0
        self.scheduled = False
        self.transport: _Child | _Spawned | None = None
        self.pipe: _Pipe | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.starting: asyncio.Task[None] | None = None
        self.broken: tuple[float, SagaStoreError] | None = None
        self.answering = False  # the current child has answered at least once
        self.ready: asyncio.Future[None] | None = None  # the current child opened the file
        self.commits = 0
        self.writes = 0
        self.closing = False
        # Closed by the loop's shutdown (see _until_the_loop_ends).
        self._loop_end: AsyncGenerator[None, None] | None = None

    # -- the loop's side

    def submit(self, op: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self.make_future(loop=self.loop)  # one that refuses cancellation
        if self.broken is not None:
            since, error = self.broken
            if time.monotonic() - since < _RESTART_AFTER:
                future.set_exception(_copy(error))
                return future
            self.broken = None
        self.pending.append((op, args, future))
        if self.stdin is None:
            if self.starting is None:
                self._begin_start()
        elif len(self.pending) >= CHUNK or not self.waiting:
            self.ship()  # a chunk is ready, or the child is idle: it starts on it now
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._end_of_turn)
        return future

    def _end_of_turn(self) -> None:
        self.scheduled = False
        if self.pending and self.stdin is not None:
            self.ship()

    def ship(self) -> None:
        items, self.pending = self.pending, []
        batch = self.batches
        try:
            payload = frame(("w", batch, tuple((op, args) for op, args, _ in items)))
        except ValueError:
            # A value marshal cannot carry (a store user's own entry, say): that
            # write fails, certainly not written; the others go.
            items = [item for item in items if _sendable(item)]
            if not items:
                return
            payload = frame(("w", batch, tuple((op, args) for op, args, _ in items)))
        self.batches += 1
        self.waiting[batch] = [future for _, _, future in items]
        assert self.stdin is not None
        self.stdin.write(payload)

    async def ensure_started(self) -> None:
        """Start the child now (``SQLiteSagaStore.open``): a setup that
        cannot run it fails here, not at the first saga."""
        if self.stdin is None and self.starting is None:
            self._begin_start()
        if self.starting is not None:
            await asyncio.shield(self.starting)
        if self.broken is not None:
            raise _copy(self.broken[1])
        if self.ready is not None:
            await asyncio.shield(self.ready)

    def _begin_start(self) -> None:
        # In a context of its own: the pipe's handles live as long as the
        # child and keep the context they were made in, which must not be a
        # saga's (its cursor, its context's values).
        self.starting = self.loop.create_task(self._start(), context=contextvars.Context())
        self.starting.add_done_callback(self._start_ended)

    def _start_ended(self, task: asyncio.Task[None]) -> None:
        """The start was cancelled (perhaps before its first line): the
        loop is closing (``asyncio.run`` returned with a saga still writing).
        The writes waiting were never sent: they fail, certainly not written,
        or their sagas (their futures refuse cancellation) would hold up the
        loop's shutdown for ever. Not "broken": the next start may work."""
        if not task.cancelled():
            return
        if self.starting is task:
            self.starting = None
        self._fail(self.pending, SagaStoreError(
            f"SQLite saga store {self.path}: the event loop stopped before the writer "
            f"process started (nothing of these writes was sent)"
        ))
        self.pending = []

    def abandon(self) -> None:
        """Stop the child at once (the store was closed from another loop, or
        dropped unclosed): the writes on their way fail in doubt."""
        if self.closing:
            return
        self.closing = True
        self._fail_all(SagaStoreError(
            f"SQLite saga store {self.path}: closed with writes on their way to its "
            f"writer process (they may have been committed)"
        ))
        transport = self.transport
        self.transport = self.pipe = self.stdin = None
        if transport is not None:
            transport.close()  # kills the child if it still runs

    async def _start(self) -> None:
        child: _Child | _Spawned | None = None
        try:
            pipe = _Pipe(self)
            if sys.platform == "win32":
                # Windows: only asyncio's own start makes the overlapped pipes
                # its loop reads (the hang on a cancelled start is POSIX's).
                transport, _ = await self.loop.subprocess_exec(
                    lambda: _Spawn(pipe), *child_command(),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                )
                child = _Spawned(transport)
            else:
                child = _Child.spawn()
                child.watch(self.loop, pipe.process_exited)
                popen = child.popen
                assert popen.stdin is not None
                assert popen.stdout is not None
                child.pipes[1], _ = await self.loop.connect_read_pipe(
                    lambda: _End(pipe, 1), popen.stdout
                )
                child.pipes[0], _ = await self.loop.connect_write_pipe(
                    lambda: _End(pipe, 0), popen.stdin
                )
            # A write transport by what it does: uvloop's pipes are no
            # subclasses of asyncio.WriteTransport.
            stdin = cast(asyncio.WriteTransport, child.get_pipe_transport(0))
            opening = frame(("open", *self.opening))
        except Exception as error:
            # Whatever failed, the writes waiting must hear of it: a future
            # left unsettled would hang its saga (it refuses cancellation).
            if child is not None:
                child.close()  # kills the child if it runs
            failure = SagaStoreError(
                f"SQLite saga store {self.path}: cannot start the writer process: "
                f"{type(error).__name__}: {error}"
            )
            self.broken = (time.monotonic(), failure)
            self._fail(self.pending, failure)
            self.pending = []
            return
        except BaseException:
            # Cancelled (the loop is closing): _start_ended fails the writes.
            if child is not None:
                child.close()
            raise
        finally:
            self.starting = None
        self.transport, self.pipe, self.stdin = child, pipe, stdin
        if self._loop_end is None:
            self._loop_end = _until_the_loop_ends(self)
        self.answering = False
        self.ready = self.loop.create_future()
        stdin.write(opening)
        if self.pending:
            self.ship()

    def answered(self, messages: list[Any]) -> None:
        self.answering = True
        for message in messages:
            if message[0] == "ready":
                ready, error = self.ready, message[1]
                if ready is not None and not ready.done():
                    if error is None:
                        ready.set_result(None)
                    else:
                        ready.set_exception(error_from_wire(error))
                        ready.exception()  # retrieved: ensure_started may never ask
                continue
            _, self.commits, self.writes, batches = message
            for batch, answers in batches:
                for future, answer in zip(self.waiting.pop(batch), answers, strict=True):
                    if future.done():
                        continue
                    if answer is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error_from_wire(answer))

    def lost(self, pipe: _Pipe, exc: Exception | None) -> None:
        """The child exited or its pipe broke: every write on its way is in doubt."""
        if pipe is not self.pipe or self.closing:
            return  # an earlier child's last word, or the end ``close`` asked for
        transport = self.transport
        code = None if transport is None else transport.get_returncode()
        self.transport = self.pipe = self.stdin = None
        reason = "exited" if code is None else f"exited with code {code}"
        failure = SagaStoreError(
            f"SQLite saga store {self.path}: the writer process {reason} with writes on "
            f"their way (they may have been committed)"
            + (f": {exc}" if exc is not None else "")
        )
        if not self.answering:
            self.broken = (time.monotonic(), failure)
        self._fail_all(failure)
        if transport is not None:
            transport.close()  # kills the child if it still runs: its pipe is gone

    def _fail_all(self, failure: SagaStoreError) -> None:
        """Every write on its way (shipped or not) and a pending start fail with ``failure``."""
        waiting = [future for futures in self.waiting.values() for future in futures]
        self.waiting = {}
        pending, self.pending = self.pending, []
        self._fail([(None, None, future) for future in waiting], failure)
        self._fail(pending, failure)
        ready = self.ready
        if ready is not None and not ready.done():
            ready.set_exception(_copy(failure))
            ready.exception()  # retrieved: ensure_started may never ask

    @staticmethod
    def _fail(items: Sequence[tuple[Any, Any, asyncio.Future[Any]]], error: SagaStoreError) -> None:
        for _, _, future in items:
            if not future.done():
                future.set_exception(_copy(error))

    def loop_ending(self) -> None:
        """The event loop is shutting down (``asyncio.run``'s end) with the
        store unclosed — its user's ``main`` returned with a saga in flight.
        The child's pipes are the loop's transports, and a transport closes
        its file in a callback of its loop: once the loop has closed they
        could only be left "closing", each one warning ``unclosed
        transport`` when freed. So they are closed now, while the loop
        runs: the child sees the end of its input, commits what it has and
        exits. The writes on their way fail in doubt; nobody awaits them
        (the loop's tasks have been cancelled and have ended)."""
        if self.closing:
            return
        self.closing = True
        self._fail_all(SagaStoreError(
            f"SQLite saga store {self.path}: its event loop ended with writes on their way "
            f"to its writer process (they may have been committed)"
        ))
        transport = self.transport
        self.transport = self.pipe = self.stdin = None
        if transport is not None:
            transport.close(kill=False)  # it commits what it has, and exits

    async def close(self) -> None:
        """Finish the writes on their way, then stop the child."""
        if self.starting is not None:
            await asyncio.shield(self.starting)
        if self.pending and self.stdin is not None:
            self.ship()
        on_their_way = [f for futures in self.waiting.values() for f in futures]
        if on_their_way:
            await asyncio.gather(*on_their_way, return_exceptions=True)
        self.closing = True
        transport, stdin, pipe = self.transport, self.stdin, self.pipe
        self.transport = self.pipe = self.stdin = None
        if transport is None or stdin is None or pipe is None:
            return
        stdin.close()  # end of input: the child closes its connection and exits
        try:
            await asyncio.wait_for(asyncio.shield(pipe.exited), 10.0)
        except TimeoutError:
            transport.kill()
        transport.close()
        loop_end, self._loop_end = self._loop_end, None
        if loop_end is not None:
            await loop_end.aclose()  # nothing left for the loop's end to close

    def let_go(self, *, loop_closed: bool = False) -> None:
        """Let go of the child without a word to the loop: close our ends of
        its pipes, so that it sees the end of its input, commits what it
        has and exits. For a process forked from this one (whose loop is a
        copy of the parent's: its epoll and wake-up pipe are the parent's
        still), and for a loop that has closed (``loop_closed``: then the
        transport is marked closed too, as far as a closed loop lets it,
        so that it says nothing when it is freed)."""
        self.closing = True
        transport = self.transport
        self.transport = self.pipe = self.stdin = None
        # The writes on their way are dropped, not failed: their futures
        # belong to that loop (closed, or the parent's), where no one awaits
        # them and where failing them would schedule callbacks.
        self.pending, self.waiting = [], {}
        if transport is None:
            return
        for fd in (0, 1):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                _unplug(pipe)
        if loop_closed:
            # Not killed: it commits what it has, sees the end of its input and exits.
            transport.close(kill=False)
            for fd in (0, 1):
                pipe = transport.get_pipe_transport(fd)
                if pipe is not None:
                    _finish_on_a_closed_loop(pipe)

    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.get_pid()


def _unplug(pipe: asyncio.BaseTransport) -> None:
    """Make our end of ``pipe`` let go of it, without the loop: /dev/null is
    put in its place, so that the descriptor's number stays taken (whoever
    closes it later closes /dev/null, never a file opened since). asyncio's
    pipes show their file as "pipe", uvloop's as "socket"."""
    handle = pipe.get_extra_info("pipe") or pipe.get_extra_info("socket")
    try:
        fd = handle.fileno() if handle is not None else -1
    except (OSError, ValueError):  # closed already
        return
    if fd < 0:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd, inheritable=False)
    except OSError:
        pass
    finally:
        os.close(null)


def _finish_on_a_closed_loop(pipe: asyncio.BaseTransport) -> None:
    """Finish closing ``pipe``, a transport of a loop that closed without
    ``shutdown_asyncgens`` (a second Ctrl-C cut ``asyncio.run``'s shutdown
    short, so ``loop_ending`` never ran). Its ``close`` leaves it "closing":
    the rest is a callback that a closed loop refuses to schedule, and the
    transport, freed so, warns ``unclosed transport`` and ``unclosed file``.
    That callback is run here instead: nothing of the loop runs any more, and
    the descriptor holds /dev/null (``_unplug``). Only asyncio's own pipe
    transports have it (a private method, looked up, never assumed)."""
    finish = getattr(pipe, "_call_connection_lost", None)
    if callable(finish) and pipe.is_closing():
        with contextlib.suppress(Exception):  # a finalizer's: nobody to tell
            finish(None)


def _until_the_loop_ends(process: WriterProcess) -> AsyncGenerator[None, None]:
    """An async generator, started on the running loop and suspended, that
    calls ``process.loop_ending()`` when it is closed. The loop's shutdown
    (``loop.shutdown_asyncgens()``, which ``asyncio.run`` calls before it
    closes the loop) closes every async generator started on it: the one
    moment a library is told, with the loop still running, that the loop
    ends. It holds the process weakly: it never keeps a dropped store's
    writer alive (the store's finalizer stops that one)."""
    held = weakref.ref(process)

    async def until_closed() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            ending = held()
            if ending is not None:
                ending.loop_ending()

    generator = until_closed()
    # Started here, on the loop's thread while it runs: its first step
    # registers it with the loop (the loop's asyncgen hooks) and stops at
    # the ``yield`` without waiting for anything.
    first: Any = generator.__anext__()
    with contextlib.suppress(StopIteration):
        first.send(None)
    return generator


def abandon_soon(process: WriterProcess) -> None:
    """``abandon`` on the child's own loop, from any thread (a finalizer's);
    if that loop has closed, the child is let go of here."""
    try:
        process.loop.call_soon_threadsafe(process.abandon)
    except RuntimeError:  # the loop is closed: nothing runs there any more
        process.let_go(loop_closed=True)


def _sendable(item: tuple[str, tuple[Any, ...], asyncio.Future[Any]]) -> bool:
    """Whether ``item``'s write can cross the pipe; if not, its future fails."""
    _, args, future = item
    try:
        marshal.dumps(args)
    except ValueError as error:
        if not future.done():
            future.set_exception(SagaStoreError(
                f"a journal write of saga {args[0]!r} cannot be sent to the writer process "
                f"(a value of a type the store does not take: {error}); nothing was written"
            ))
        return False
    return True


def _copy(error: SagaStoreError) -> SagaStoreError:
    # One exception object per future: a traceback is attached to each raise.
    copy = SagaStoreError(*error.args)
    copy.__cause__ = error.__cause__
    return copy
