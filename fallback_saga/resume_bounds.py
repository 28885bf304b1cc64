"""How long one resume of a ``RecoveryWorker`` may run (see worker.py).

A step with no ``timeout`` whose call never returns holds a worker slot for
as long as it hangs. ``ResumeBounds.check`` looks at the resumes in flight,
on the worker's clock, and acts on each bound one has passed:

* ``resume_warning``: logged, once, saying where the run is;
* ``resume_timeout``: stopped without unwinding (``ClaimedSaga.time_out``);
* ``STOP_WAIT`` after a run was asked to stop (by that bound or a shutdown's
  hand-off): a compensation in flight that keeps it from ending is
  cancelled; ``STOP_WAIT`` after that, the run has swallowed the
  cancellation and is handed to the worker's ``give_up`` (which frees its
  slot: nothing can kill a coroutine).

It returns the seconds until the next bound, for the worker's watch to
sleep. The worker's resumes (worker_resumes.py) own the slots, its stats
and the leases; this module only decides when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .claimed_saga import ClaimedSaga
from .log_lines import library_logger
from .stop_wait import STOP_WAIT

__all__ = ["RESUME_WARNING", "STOP_WAIT", "ResumeBounds", "Resuming"]

_log = library_logger("fallback_saga")

# A resume running longer than this is logged (``resume_warning``): a lease's
# length by default; a healthy resume takes seconds, not minutes.
RESUME_WARNING: Final = 300.0


@dataclass(slots=True, eq=False)
class Resuming:
    """One saga a worker resumes, as its bounds see it."""

    claimed: ClaimedSaga
    since: float  # the worker's clock when it was claimed
    began: bool = False  # its task has started
    warned: bool = False  # resume_warning said
    stop_asked: float | None = None  # the clock when it was asked to stop
    forced: bool = False  # a compensation in flight cancelled too (stop_hung)


GiveUp = Callable[["asyncio.Task[None]", Resuming], None]


@dataclass(slots=True, frozen=True)
class ResumeBounds:
    """A worker's bounds on its resumes (``owner`` and ``concurrency`` name
    it in the log lines)."""

    owner: str
    concurrency: int
    resume_timeout: float | None
    resume_warning: float | None

    @property
    def watched(self) -> bool:
        """Whether a resume has a bound before it is asked to stop."""
        return self.resume_timeout is not None or self.resume_warning is not None

    def check(
        self,
        in_flight: dict[asyncio.Task[None], Resuming],
        now: float,
        give_up: GiveUp,
    ) -> float | None:
        """Act on the bounds passed at ``now``; seconds until the next one
        (None: none). ``give_up(task, resuming)`` is called for a run that
        has not stopped ``STOP_WAIT`` seconds after it was asked to, and
        takes it out of ``in_flight``."""
        nearest: float | None = None
        for task, resuming in list(in_flight.items()):
            due: float | None
            if resuming.stop_asked is not None:
                due = resuming.stop_asked + STOP_WAIT
                if (now >= due and not resuming.forced and resuming.claimed.run is not None
                        and resuming.claimed.outcome is None):
                    due = self._force(resuming, now)
                elif now >= due:
                    give_up(task, resuming)
                    continue
            elif self.resume_timeout is not None and (
                now >= resuming.since + self.resume_timeout
            ):
                self._time_out(task, resuming, now, self.resume_timeout)
                due = now + STOP_WAIT
            else:
                due = None if self.resume_timeout is None else (
                    resuming.since + self.resume_timeout)
                if self.resume_warning is not None and not resuming.warned:
                    warn_at = resuming.since + self.resume_warning
                    if now >= warn_at:
                        resuming.warned = True
                        self._warn_slow(resuming, now)
                    else:
                        due = warn_at if due is None else min(due, warn_at)
            if due is not None:
                nearest = due if nearest is None else min(nearest, due)
        return None if nearest is None else max(0.0, nearest - now)

    def _force(self, resuming: Resuming, now: float) -> float:
        """Handed off, a run waits for a compensation in flight (shielded):
        one that hangs is cancelled now. The next bound: STOP_WAIT on."""
        resuming.forced = True
        resuming.stop_asked = now
        claimed = resuming.claimed
        where = claimed.where()
        _log.warning("recovery worker %s: saga %s, handed off %g s ago, is still "
                     "running%s: cancelling its compensation in flight, if any",
                     self.owner, claimed.saga_id, STOP_WAIT,
                     f" (in the {where})" if where else "")
        if claimed.run is not None:
            claimed.run.stop_hung()
        return now + STOP_WAIT

    def _warn_slow(self, resuming: Resuming, now: float) -> None:
        claimed = resuming.claimed
        where = claimed.where()
        bound = ("" if self.resume_timeout is None
                 else f"; stopped at resume_timeout ({self.resume_timeout:g} s)")
        _log.warning(
            "recovery worker %s: saga %s has been resuming for %.0f s%s, holding one of "
            "%d slots (a call that never answers? give the step a timeout; the "
            "worker's resume_timeout bounds a resume)%s", self.owner, claimed.saga_id,
            now - resuming.since, f", in the {where}" if where else "",
            self.concurrency, bound,
        )

    def _time_out(
        self, task: asyncio.Task[None], resuming: Resuming, now: float, timeout: float
    ) -> None:
        resuming.stop_asked = now
        resuming.forced = True
        claimed = resuming.claimed
        if claimed.outcome is not None:
            # It has ended, its outcome told: only the store's taking its
            # lease back is on its way. Nothing to stop; let go STOP_WAIT on
            # if still not done (``give_up`` keeps that outcome).
            return
        where = claimed.where()
        _log.warning(
            "recovery worker %s: saga %s resumed for longer than resume_timeout (%g s)%s: "
            "stopping it without unwinding; it is left interrupted, claimed again after "
            "a backoff", self.owner, claimed.saga_id, timeout,
            f", in the {where}" if where else "",
        )
        claimed.time_out(timeout)
        if claimed.run is None:
            task.cancel()  # still loading it (the store hangs): nothing ran
