"""A ``RecoveryWorker``'s claims: each asks the store for as many sagas as
it has free slots, says a store that fails them once per outage, and, when
the worker stops, lets go one the store does not answer (see ``_answer_of``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .errors import StoreClosed
from .log_lines import library_logger
from .recovery import claim_batch
from .shielding import CLAIM_GRACE, cancellation_pending
from .stop_wait import STOP_WAIT
from .store._skipped_rows import collecting as collecting_skipped
from .store.base import Lease, RecoverableStore

__all__ = ["Claims"]

_log = library_logger("fallback_saga")


class Claims:
    """A worker's claims (``owner``, ``lease``, ``older_than``, ``poll`` and
    ``names`` are the worker's; ``stopping``, ``stop_asked`` and
    ``stopped_at`` read its stop as it is now)."""

    def __init__(
        self,
        store: RecoverableStore,
        *,
        owner: str,
        lease: float,
        older_than: float,
        poll: float,
        names: dict[str, object],
        stopping: Callable[[], bool],
        stop_asked: Callable[[], asyncio.Event],
        stopped_at: Callable[[], float | None],
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.older_than = older_than
        self.poll = poll
        # Claims ask only for the sagas this worker can resume: services that
        # share a store (a mixed fleet) do not take each other's sagas, and a
        # saga of another service is no skip, no warning, no lease taken. A
        # store whose claim cannot filter by name gets no ``names``: every
        # saga is claimed and the unknown ones skipped (see RecoveryWorker).
        self.names = names
        self._stopping = stopping
        self._stop_asked = stop_asked
        self._stopped_at = stopped_at
        self.failing = False  # warned about this outage of the store already
        # Claims the worker stopped waiting for (see _answer_of), kept
        # referenced until they end: what they take is given back.
        self.abandoned: set[asyncio.Task[list[Lease]]] = set()
        # The rows the last claim skipped as corrupt: (saga id, reason).
        self.unreadable: list[tuple[str, str]] = []

    async def take(self, free: int) -> list[Lease] | None:
        """The leases of a claim of at most ``free`` sagas; None if it failed
        (the store is down: tried again at the next poll) or was let go.
        ``StoreClosed`` (the store was closed: it does not come back) is raised."""
        # The rows the claim skips as corrupt (never leased: no resume meets
        # them), for the worker to tell (``unreadable``); the task's context
        # is a copy of this one, holding the same list.
        with collecting_skipped(every=self.lease) as self.unreadable:
            claiming = asyncio.get_running_loop().create_task(claim_batch(
                # given back if we are cancelled meanwhile, or stop waiting for it
                self.store, owner=self.owner, lease_seconds=self.lease,
                older_than=self.older_than, limit=free, **self.names,
            ))
        try:
            answer = await self._answer_of(claiming)
            if answer is None:
                return None  # stopped, the claim let go: see _answer_of
            leases = answer
        except StoreClosed:
            raise  # a closed store does not come back: the worker stops (RecoveryWorker.run)
        except Exception as error:  # the store is down: try again at the next poll
            if cancellation_pending():
                raise asyncio.CancelledError from error  # see cancellation_pending
            # Once per outage, as listen_for_work does: a store down for hours
            # is thousands of polls, and one line per poll says nothing more.
            if not self.failing:
                self.failing = True
                _log.warning(
                    "recovery worker %s: claim failed: %s: %s; claiming again every %g s "
                    "(said once until a claim works)", self.owner, type(error).__name__,
                    error, self.poll,
                )
            return None
        if self.failing:
            self.failing = False
            _log.info("recovery worker %s: claims work again", self.owner)
        return leases

    async def _answer_of(self, claiming: asyncio.Task[list[Lease]]) -> list[Lease] | None:
        """The leases ``claiming`` took; None if the worker stops and the
        store has not answered within ``STOP_WAIT`` of ``stop()``.

        A claim still on its way when the worker is asked to stop was waited
        for to its end: one store timeout (a PostgreSQL server that does not
        answer: ``connect_timeout``; a SQLite file another process keeps
        locked: ``busy_timeout``), or for ever on a store of one's own with
        no timeout — before ``grace`` even began. It has ``STOP_WAIT`` from
        the stop now, the bound the worker gives whatever does not answer
        when asked to stop; then it is let go, as a cancelled claim is
        (``claim_batch``): its answer, should it come within ``CLAIM_GRACE``,
        is given back unrun (its leases claimable at once, the claim not
        counted toward ``park_after``); past that its call is cancelled —
        a built-in store gives back what it took once it lands, and what a
        store of one's own took runs out on its own, counted as a claim, as
        a crashed worker's. Not waited for: ``stop()`` returns meanwhile."""
        try:
            if not self._stopping():
                stop = asyncio.get_running_loop().create_task(self._stop_asked().wait())
                try:
                    await asyncio.wait([claiming, stop], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
            if not claiming.done():
                stopped_at = self._stopped_at()
                left = (STOP_WAIT if stopped_at is None else
                        stopped_at + STOP_WAIT - asyncio.get_running_loop().time())
                await asyncio.wait([claiming], timeout=max(0.0, left))
        except asyncio.CancelledError:
            # Cancelled ourselves (the worker's task): the claim is given back
            # before the cancellation goes on (claim_batch), as before.
            claiming.cancel()
            while not claiming.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([claiming])
            raise
        if claiming.done():
            return claiming.result()
        claiming.cancel()  # claim_batch gives back what lands within CLAIM_GRACE
        self.abandoned.add(claiming)
        claiming.add_done_callback(self._claim_settled)
        _log.warning(
            "recovery worker %s: stopped while a claim was on its way that the store had not "
            "answered within %g s; the claim is let go: the sagas it leases, if its answer "
            "comes within %g s more, are given back at once, else their leases run out on "
            "their own and each counts as a claim toward the store's park_after", self.owner,
            STOP_WAIT, CLAIM_GRACE)
        return None

    def _claim_settled(self, claiming: asyncio.Task[list[Lease]]) -> None:
        """A claim let go (see _answer_of) has ended: forgotten; its error read."""
        self.abandoned.discard(claiming)
        if not claiming.cancelled():
            claiming.exception()  # cancelled, it raises CancelledError: nothing else to say
