"""A SQLite saga store as configured: the constructor's checks of its
options, the attributes that keep them, and the ``Runner`` its requests go
to (``_sqlite_runner``), opened and closed.

``ConfiguredStore`` is the base class of ``SQLiteSagaStore`` (``sqlite``),
which adds the journal writes and hands its reads and leases to ``Reads``
(``_sqlite_store_reads``) and ``Leases`` (``_sqlite_store_leases``); its
docstring says what each option does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Final

from ..private_file import database_path
from ._common import finite_seconds
from ._parking import PARK_AFTER, check_park_after
from ._sqlite_runner import Runner

_SYNCHRONOUS: Final = frozenset({"full", "normal"})


class ConfiguredStore:
    """A ``SQLiteSagaStore``'s options, checked, and the runner of its
    requests (see the module docstring)."""

    # Reads on a thread and connection of their own (see ``sqlite``'s module
    # docstring).
    _separate_reader: bool = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
        immutable: bool = False,
        writer: str = "thread",
        park_after: int | None = PARK_AFTER,
    ) -> None:
        park_after = check_park_after(park_after)
        path = database_path(path, "SQLiteSagaStore")
        if writer not in ("thread", "process", "inline"):
            raise ValueError(
                f"writer must be 'thread' (the default), 'process' (journal writes "
                f"committed by a process of their own) or 'inline' (no thread: each "
                f"request runs on the calling thread), got {writer!r}"
            )
        if writer == "process":
            if read_only:
                raise ValueError('writer="process" writes: it cannot go with read_only=True')
            if os.fsdecode(path) in ("", ":memory:"):
                raise ValueError(
                    'writer="process" needs a file: an in-memory database is private '
                    "to its connection"
                )
            if clock is not time.time:
                raise ValueError(
                    'writer="process" stamps its writes with the child\'s time.time: '
                    "a clock of your own needs writer=\"thread\""
                )
        if not isinstance(read_only, bool) or not isinstance(immutable, bool):
            raise TypeError(
                f"read_only and immutable must be bools, got {read_only!r} and {immutable!r}"
            )
        if immutable and not read_only:
            raise ValueError("immutable=True reads without locks: it needs read_only=True")
        if read_only and os.fsdecode(path) in ("", ":memory:"):
            raise ValueError("a read-only store reads a file, not an in-memory database")
        if not isinstance(synchronous, str) or synchronous.lower() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be 'full' (the default: commits survive power loss) or "
                f"'normal' (commits survive an application crash, not power loss), "
                f"got {synchronous!r}"
            )
        busy = finite_seconds("busy_timeout", busy_timeout)
        if busy < 0:
            raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning Unix time, got {clock!r}")
        self.path: str = os.fsdecode(path)  # any path-like; bytes are decoded
        # The file, resolved now: connections open late (the reader's at its
        # first read, a thread's again after a failed open, the writer
        # process at its start) and the full-disk check finds the -wal file
        # by it; a relative path read after the program's os.chdir named
        # another file (a second, empty journal). Joined, not normalized:
        # "a/../b" goes through a's symlink as SQLite would have gone.
        file = (
            self.path if self.path in ("", ":memory:") or os.path.isabs(self.path)
            else os.path.join(os.getcwd(), self.path)
        )
        self.synchronous: str = synchronous.lower()
        self.busy_timeout: float = busy
        self.read_only: bool = read_only
        self.immutable: bool = immutable
        self.writer: str = writer
        self.park_after: int | None = park_after
        # Where the requests run, opened at the first: connections, threads,
        # the writer process, close and forks (_sqlite_runner).
        self._runner = Runner(
            self.path, file, synchronous=self.synchronous, busy_timeout=busy,
            clock=clock, read_only=read_only, immutable=immutable, writer=writer,
            separate_reader=self._separate_reader,
        )
        # Bound once, as attributes: the hot path (submit_create,
        # submit_append) calls the runner's own methods, no layer of the
        # store's in between.
        self._submit = self._runner.submit
        self._writer_process = self._runner.writer_process

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open (and migrate) the database now rather than at first use, so a
        bad path or a file that is not SQLite fails here."""
        await self._runner.open()

    async def close(self) -> None:
        """Finish the queued requests, then stop the threads and close the file.

        Later calls raise ``SagaStoreError``. Closing twice is harmless: a
        ``close()`` called while another is closing returns when that one has.
        """
        await self._runner.close()
