"""The PostgreSQL saga store's purge of finished sagas (``purge``), in
batches each one statement and its own short transaction, sized by how long
the last took, and the count of the finished sagas old enough to purge
(``old_finished``), which the ``purge`` command reports with it. A
module of its own, apart from the reads (``_postgres_reads``): the only
writes among the operators' queries.

``Purging`` is held by ``PostgresSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does); it runs its
statements through the store's ``_fetch`` (``_postgres_fetch``). The
batches' sizes (``PURGE_BATCH``, ``PURGE_BATCH_MAX``,
``PURGE_BATCH_SECONDS``) are read from this module at each purge, and
exported by ``postgres``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Final

from ..errors import SagaStoreError
from ..shielding import cancellation_pending
from ..status import SagaStatus
from ._common import finite_seconds, purge_statuses
from ._postgres_fetch import FetchingStore
from ._postgres_part import StorePart
from .base import PURGED_BY_DEFAULT

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


class Purging(StorePart):
    """A ``PostgresSagaStore``'s purge (see the module docstring), held by
    the store (``_purging``)."""

    __slots__ = ("_sql",)

    def __init__(self, store: FetchingStore) -> None:
        # The store held weakly (StorePart): _fetch is looked up on it at
        # each call.
        super().__init__(store)
        self._sql = store._sql

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """In batches sized by how long the last took (``PostgresSagaStore.purge``)."""
        older_than = finite_seconds("older_than", older_than)
        chosen = list(purge_statuses(statuses))
        doing = "cannot purge sagas"
        # A read, but the purge's first statement: whatever fails it (no
        # connection, the server's error) leaves the purge with nothing
        # written, and its error says so as a batch's would.
        cutoff, timeout_ms = await self._store._fetch(
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
                gone, read, last, again = await self._store._fetch(
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
            if gone and on_batch is not None:
                on_batch(int(gone))
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
        """One query (``PostgresSagaStore.old_finished``)."""
        older_than = finite_seconds("older_than", older_than)
        (count,) = await self._store._fetch(
            "cannot count the finished sagas old enough to purge",
            self._sql.old_finished_held if held else self._sql.old_finished,
            (list(purge_statuses(statuses)), older_than),
        )
        return int(count)
