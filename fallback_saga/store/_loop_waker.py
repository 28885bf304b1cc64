"""Waking an event loop from a store's threads, to resolve the futures of
the requests they served.

``loop.call_soon_threadsafe`` does it through the loop's own self-pipe: a
socket ``send`` on the thread's side, and on the loop's a ``recv`` until the
socket is empty (two system calls, the second one failing), a handle per
call and a turn of the loop between them. A sequential durable saga makes
four writes, each waiting for that hand-over: on a virtual machine, where a
system call is slow, it was a measured part of the saga's time
(benchmarks/README.md, "Sixteenth pass").

Here each event loop that uses a store gets one descriptor it watches (an
``eventfd`` on Linux, a pipe elsewhere) and a queue of calls: a thread
appends a call, then writes to the descriptor; the loop reads it once and
runs every call queued, in the order they were posted. A call posted never
waits for another wake-up: the loop reads the descriptor *before* it takes
the queue, so a call appended after the queue was emptied also wrote to
the descriptor after it was read, and wakes the loop again.

One waker per loop, shared by every store on it, made on the loop's thread
at its first request (``waker_of``). Its descriptor is closed once the loop
is gone (garbage-collected): a closed loop no longer watches it, and a loop
is only ever closed, never reopened. A loop that cannot watch a descriptor
(Windows' proactor loop) gets none: ``waker_of`` returns None and the caller
goes on through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import weakref
from collections.abc import Callable
from typing import Any, Final

__all__ = ["LoopWaker", "waker_of"]

_EVENTFD: Final = hasattr(os, "eventfd")


class LoopWaker:
    """Runs calls posted from any thread on one event loop (see the module)."""

    __slots__ = ("__weakref__", "_calls", "_closed", "_read_fd", "_write_fd")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if _EVENTFD:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._read_fd = self._write_fd = fd
        else:
            self._read_fd, self._write_fd = os.pipe()  # close-on-exec by default
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        self._closed = False
        # A deque: append (any thread) and popleft (the loop) need no lock.
        self._calls: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        try:
            # In an empty context: the loop's handle keeps a copy of the
            # context it is made in for the loop's life, and the waker is
            # made at a store's first request, most often inside a saga's
            # run — whose execution, and through it the store, the context
            # and the step results, the loop then kept alive.
            contextvars.Context().run(loop.add_reader, self._read_fd, self._run)
        except BaseException:
            self._close()
            raise
        # The loop's selector holds this waker (through ``_run``), never the
        # other way round: the loop is freed as usual, and takes the
        # descriptor with it.
        weakref.finalize(loop, self._close)

    def post(self, call: Callable[[Any], None], arg: Any) -> None:
        """Run ``call(arg)`` on the loop soon; from any thread. The caller
        holds the loop (so the descriptor is still open)."""
        self._calls.append((call, arg))
        _signal(self._write_fd)

    def _run(self) -> None:
        # Read first, then take the queue: a call appended meanwhile has
        # written after this read, and wakes the loop once more.
        _clear(self._read_fd)
        calls = self._calls
        try:
            while calls:
                call, arg = calls.popleft()
                call(arg)
        finally:
            if calls:  # a call raised: the rest run at the next turn of the loop
                self.post(_nothing, None)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)


def _nothing(_: Any) -> None:
    pass


def _signal(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending already
        if _EVENTFD:
            os.eventfd_write(fd, 1)
        else:
            os.write(fd, b"\0")


def _clear(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):  # nothing to read
        if _EVENTFD:
            os.eventfd_read(fd)
        else:
            os.read(fd, 4096)


# loop -> its waker, or None for a loop that cannot watch a descriptor.
_WAKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker | None] = (
    weakref.WeakKeyDictionary()
)


def waker_of(loop: asyncio.AbstractEventLoop) -> LoopWaker | None:
    """The waker of ``loop``, made now if it has none yet: call it on the
    loop's own thread (``add_reader`` is not thread-safe). None: ``loop``
    cannot watch a descriptor; use ``call_soon_threadsafe``."""
    try:
        return _WAKERS[loop]
    except KeyError:
        pass
    waker: LoopWaker | None
    try:
        waker = LoopWaker(loop)
    except (OSError, RuntimeError):  # NotImplementedError is a RuntimeError
        waker = None
    _WAKERS[loop] = waker
    return waker

