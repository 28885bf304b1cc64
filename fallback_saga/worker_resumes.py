"""The sagas a ``RecoveryWorker`` is resuming: one task each, kept to its
bounds (``ResumeBounds``: ``resume_warning``, ``resume_timeout``,
``STOP_WAIT``) by a watch on the worker's clock, counted as each ends, and
handed off by the drain when the worker stops (see worker.py's docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from .claimed_saga import ClaimedSaga
from .log_lines import library_logger
from .resume_bounds import ResumeBounds, Resuming
from .shielding import cancellation_pending
from .stop_wait import STOP_WAIT
from .worker_backoff import Backoff
from .worker_give_backs import KeptLeases
from .worker_stats import WorkerStats, count_outcome

__all__ = ["Resumes"]

_log = library_logger("fallback_saga")


class Resumes:
    """A worker's resumes in flight (``owner`` names it in the log lines,
    ``lease`` is its seconds, ``clock`` its clock; ``on_freed`` is called as
    a slot frees)."""

    def __init__(
        self,
        *,
        owner: str,
        lease: float,
        bounds: ResumeBounds,
        stats: WorkerStats,
        backoff: Backoff,
        kept: KeptLeases,
        clock: Callable[[], float],
        on_freed: Callable[[], None],
    ) -> None:
        self.owner = owner
        self.lease = lease
        self.bounds = bounds
        self.stats = stats
        self.backoff = backoff
        self.kept = kept
        self._clock = clock
        self._on_freed = on_freed
        self.in_flight: dict[asyncio.Task[None], Resuming] = {}
        # Resumes being started by ``start`` whose task is not in in_flight
        # yet: under an eager task factory (3.12+) a resume runs inside its
        # create_task, up to its first suspension — its first step too, on a
        # store that answers without suspending — and the worker's in_flight
        # must count it there, and the sagas claimed with it.
        self.starting = 0
        # Runs let go (asked to stop, they did not: see worker.py's
        # docstring), kept referenced until they end, whenever that is —
        # with their saga: a give-back the store refuses as one ends is
        # tried again as any refused one is (see _done).
        self.let_go: dict[asyncio.Task[None], Resuming] = {}
        self.handing_off = False  # the drain hands off what is left
        # A resume of this run was interrupted by the store's closing: the
        # worker claims at once, to meet it and stop (see RecoveryWorker.run).
        self.store_closed = False
        self._settled = asyncio.Event()  # nothing in flight (set as it empties)
        self._watch_wake = asyncio.Event()  # a deadline of watch's may have moved

    def new_run(self) -> None:
        """Events of this run's loop: an asyncio.Event that has been waited
        on belongs to its loop, and the worker may have run on another before."""
        self._settled = asyncio.Event()
        self._watch_wake = asyncio.Event()
        self.handing_off = False
        self.store_closed = False

    def wake_watch(self) -> None:
        """A deadline of ``watch``'s may have moved (or the clock)."""
        self._watch_wake.set()

    def start(self, sagas: Iterable[ClaimedSaga]) -> None:
        """Resume each of ``sagas``, in a task of its own."""
        claimed_sagas = list(sagas)
        started = bool(claimed_sagas)
        self.starting = len(claimed_sagas)
        try:
            for claimed in claimed_sagas:
                resuming = Resuming(claimed, self._clock())
                task = asyncio.get_running_loop().create_task(self._resume(resuming))
                self.in_flight[task] = resuming
                self.starting -= 1
                task.add_done_callback(self._done)
        finally:
            self.starting = 0
        if started and self.bounds.watched:
            self._watch_wake.set()  # new deadlines

    async def _resume(self, resuming: Resuming) -> None:
        resuming.began = True
        claimed = resuming.claimed
        if self.handing_off:
            # The worker stopped before this task began: nothing ran, and
            # nothing must (a task cancelled before its first step never
            # runs a line, and its lease would be kept until it ran out).
            self.stats.handed_off += 1
            await claimed.hand_back()
            return
        try:
            outcome, reason = await claimed.resume()
        except asyncio.CancelledError:
            # Cancelled before the saga ran (while loading it): handed off
            # untouched (ClaimedSaga released the lease) — or, stopped at
            # resume_timeout (a store that does not answer), interrupted.
            if claimed.let_go:  # counted when it was let go
                raise
            if claimed.timed_out is None:
                self.stats.handed_off += 1
                raise
            self.stats.interrupted += 1
            self.backoff.interrupted(claimed.saga_id)
            _log.warning("recovery worker %s: saga %s interrupted: loading it from the store "
                         "took longer than resume_timeout (%g s)", self.owner,
                         claimed.saga_id, claimed.timed_out)
            raise
        if claimed.let_go:
            return  # let go, told and counted already: see _give_up
        self._count(claimed, outcome, reason)

    def _count(self, claimed: ClaimedSaga, outcome: str, reason: str | None) -> None:
        """Count (and log) the outcome a resume told, as it ended."""
        if claimed.held_for is not None:  # a store without defer: see ClaimedSaga
            self.kept.keep(claimed.saga_id, claimed.lease, claimed.held_for)
        if outcome == "interrupted":
            self.backoff.interrupted(claimed.saga_id)
            self.store_closed = self.store_closed or claimed.store_closed
        else:
            self.backoff.ended(claimed.saga_id)
        count_outcome(self.stats, claimed, outcome, reason, owner=self.owner, lease=self.lease)

    def _done(self, task: asyncio.Task[None]) -> None:
        resuming = self.in_flight.pop(task, None)
        let_go = self.let_go.pop(task, None)
        if resuming is None:
            # A run let go (its give-back was still on its way, or it did not
            # stop): its give-back, refused, was dropped, and the lease left
            # to run out counted as a crash's toward park_after (store._parking).
            resuming = let_go
        if resuming is not None and resuming.claimed.not_given_back is not None:
            self.kept.refused(resuming.claimed.saga_id, resuming.claimed.not_given_back)
        if not task.cancelled() and task.exception() is not None:
            _log.error("recovery worker %s: resuming a saga raised", self.owner,
                       exc_info=task.exception())
        self._freed()

    def _freed(self) -> None:
        """A slot is free again."""
        if not self.in_flight:
            self._settled.set()
        self._on_freed()

    async def watch(self) -> None:
        """Keep the resumes in flight to their bounds (``resume_warning``,
        ``resume_timeout``, ``STOP_WAIT``), on the worker's clock, for as
        long as the worker runs — its drain included."""
        while True:
            self._watch_wake.clear()
            delay = self._check()
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a
            # cancellation that comes as the event is set (a wake-up).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._watch_wake.wait()
            if cancellation_pending():  # see cancellation_pending
                raise asyncio.CancelledError

    def _check(self) -> float | None:
        """Act on the bounds passed; seconds until the next one (None: none)."""
        return self.bounds.check(self.in_flight, self._clock(), self._give_up)

    def _give_up(self, task: asyncio.Task[None], resuming: Resuming) -> None:
        """Asked to stop ``STOP_WAIT`` seconds ago, the run has not: let it
        go (see worker.py's docstring)."""
        claimed = resuming.claimed
        del self.in_flight[task]
        self.let_go[task] = resuming
        if claimed.outcome is not None:
            # It ended, its outcome told: only the store's taking its lease
            # back is on its way (see ClaimedSaga.give_up). Counted as it
            # ended, its slot free for the next saga.
            self._count(claimed, *claimed.give_up())
            self._freed()
            return
        _, reason = claimed.give_up()
        self.stats.interrupted += 1
        self.backoff.interrupted(claimed.saga_id)
        _log.error("recovery worker %s: saga %s did not stop %g s after it was asked to "
                   "(%s); its slot is free again: %s", self.owner, claimed.saga_id,
                   STOP_WAIT, "resume_timeout" if claimed.timed_out is not None
                   else "handed off", reason)
        self._freed()

    async def _until_settled(self, within: float | None) -> None:
        """Until nothing is in flight (each run ended or let go), or ``within`` seconds."""
        if self.in_flight:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._settled.wait()

    async def drain(self, grace: float | None) -> None:
        """The worker stops: wait ``grace`` seconds (None: no limit) for the
        resumes in flight, hand off those still running, and wait until each
        has ended or been let go."""
        if not self.in_flight:
            return
        if grace is None or grace > 0:
            await self._until_settled(grace)
        if not self.in_flight:
            return
        _log.warning("recovery worker %s: handing off %d saga(s) still running",
                     self.owner, len(self.in_flight))
        self.handing_off = True  # a task yet to begin hands its saga back
        now = self._clock()
        for task, resuming in self.in_flight.items():
            if resuming.stop_asked is None:
                resuming.stop_asked = now
            if resuming.claimed.run is not None:
                resuming.claimed.hand_off()
            elif resuming.began:
                task.cancel()  # still loading it: nothing ran yet
        self._watch_wake.set()  # STOP_WAIT runs from now
        # Handing off stops a run at its next write or suspension; it does
        # not wait for a step to finish (the step is cancelled, as in a crash).
        # A run that does not stop is let go after STOP_WAIT (watch).
        await self._until_settled(None)
