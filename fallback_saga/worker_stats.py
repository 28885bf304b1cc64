"""What a ``RecoveryWorker`` did: ``WorkerStats``, and the log line an
outcome says as it is counted."""

from __future__ import annotations

from dataclasses import dataclass

from .claimed_saga import ClaimedSaga
from .command_line import PYTHON_M
from .log_lines import library_logger

__all__ = ["WorkerStats", "count_outcome"]

_log = library_logger("fallback_saga")


@dataclass(slots=True)
class WorkerStats:
    """What a worker did since it was created (counts of sagas).

    ``claimed`` = the sum of the others once nothing is in flight. ``lost``:
    another worker took the saga over (our lease had run out); ``handed_off``:
    stopped by the worker's shutdown and left for another worker.
    """

    claimed: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0  # finished FAILED: needs an operator
    # the journal could not be written, or the resume outran resume_timeout
    # (or, asked to stop, did not and was let go): left for a later claim
    interrupted: int = 0
    # changed definition, corrupt row, store error (an unknown saga name only
    # on a store that cannot claim by name): each out of claims for the
    # lease's length, then claimed (and counted) again
    skipped: int = 0
    deferred: int = 0  # a child saga (SubSaga) whose parent is in flight: the parent drives it
    lost: int = 0
    handed_off: int = 0



def count_outcome(stats: WorkerStats, claimed: ClaimedSaga, outcome: str, reason: str | None,
                  *, owner: str, lease: float) -> None:
    """Count in ``stats`` (and log) the outcome a resume told, as it ended
    (``owner``: the worker's, in its log lines; ``lease``: its seconds)."""
    if outcome == "completed":
        stats.completed += 1
    elif outcome == "compensated":
        stats.compensated += 1
    elif outcome == "failed":
        stats.failed += 1
    elif outcome == "lost":
        stats.lost += 1
    elif outcome == "handed_off":
        stats.handed_off += 1
    elif outcome == "deferred":
        stats.deferred += 1  # a child saga: its parent drives it
    elif outcome == "interrupted":
        stats.interrupted += 1
        again = (f" (claimed again in {claimed.retry_in:.3g} s)"
                 if claimed.retry_in is not None else "")
        _log.warning("recovery worker %s: saga %s interrupted: %s%s", owner,
                     claimed.saga_id, reason, again)
    else:
        stats.skipped += 1
        changed = claimed.definition_changed
        # A worker has no allow_changed_definition on purpose: a standing
        # override would resume every saga a later deploy changes, unseen.
        # Overriding is an operator's call, saga by saga: say how.
        how = (
            "; a worker never resumes a changed definition: if the change is harmless, "
            f"an operator resumes it once, as said ({PYTHON_M} recover "
            "--allow-changed-definition, or recover(..., allow_changed_definition=True))"
            if changed is not None and changed.overridable else ""
        )
        _log.warning("recovery worker %s: skipped saga %s: %s%s (workers claim it "
                     "again in %g s)", owner, claimed.saga_id, reason, how,
                     lease)
