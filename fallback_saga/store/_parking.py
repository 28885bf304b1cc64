"""Parking a saga whose resumes keep ending the process (S10; LESSONS.md).

(Or keep hanging: a worker that stops a resume at its ``resume_timeout``
keeps the lease too, so such a saga is counted and parked the same way.)

A resume that kills its process (``SystemExit`` out of a step, a segfault
in a C extension, an OOM kill) leaves the saga's lease held (see
``ClaimedSaga._ended``): the lease runs out, a worker claims the saga again
and dies again, for ever, taking down whatever else that process ran. The
durable stores count each saga's ``claim``s since its lease was last given
back in order (``release``, ``defer``, ``hand_off``: a process that dies
holding the lease gives nothing back), and ``claim`` stops taking a saga
whose count has reached the store's ``park_after``. It is parked: it waits
for an operator, who resumes it once by id (``python -m fallback_saga resume
ID``, or ``Saga.resume(saga_id)``, which leases it with ``claim_saga``,
uncounted, and clears the count when it gives the lease back). A one-off
crash (a deploy's ``kill -9``) is cleared by the next run that finishes.

A row that cannot be read (``CorruptSagaRecord``) is deferred for a lease's
length, not held (``recovery.ClaimedSaga``): it ends no process, a resume
by id stops on it as a worker does, and its remedy is another (the row
repaired, or deleted), so it is never counted here nor called parked.
"""

from __future__ import annotations

import math
import shlex
import time
from typing import Final

from ..command_line import PYTHON_M
from ..log_lines import library_logger
from ..status import SagaStatus
from .base import Lease

__all__ = [
    "NEVER_PARKED",
    "PARK_AFTER",
    "RESUME_COMMAND",
    "check_park_after",
    "check_ran",
    "log_last_claim",
    "parked_claims",
    "parked_text",
    "resume_command",
    "warn_if_last_claim",
]

_log = library_logger("fallback_saga")

# Five claims in a row that never gave the lease back: with a worker's
# default lease (300 s) about 25 minutes of a crash loop, each one taking
# down a worker with every other saga it ran, before the saga waits for an
# operator; yet two or three unlucky kills in a row (a node restarted during
# a deploy) park nothing, and any run that finishes clears the count.
PARK_AFTER: Final = 5

# ``park_after=None``: never parked (the bound compared with is out of reach).
NEVER_PARKED: Final = 2**62


# SQLite's largest integer: a park_after bound to a claim's SQL beyond it fails.
_LARGEST_PARK_AFTER: Final = 2**63 - 1


def check_park_after(value: object) -> int | None:
    """``park_after`` as a store takes it: an int from 1 to 2**63 - 1, or
    ``None`` (never). Beyond 2**63 - 1 SQLite cannot bind it: taken, it
    failed every claim of the store, every recovery pass."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1
            or value > _LARGEST_PARK_AFTER):
        raise ValueError(
            f"park_after must be an int from 1 to 2**63 - 1, or None (never park), got {value!r}"
        )
    return value


def check_ran(value: object) -> bool:
    """``ran`` as ``release`` and ``defer`` take it: whether the holder ran
    anything of the saga (False: a ``claim``'s saga given back untouched —
    skipped, or a child its parent drives — whose claim is not counted)."""
    if not isinstance(value, bool):
        raise TypeError(f"ran must be a bool, got {value!r}")
    return value


# The operator's command that resumes a parked saga (cli/resume.py), with
# the package as it is imported (a vendored copy names itself).
RESUME_COMMAND: Final = f"{PYTHON_M} resume"


def resume_command(saga_id: str) -> str:
    """The shell command that resumes ``saga_id`` (its id shell-quoted: it
    may hold spaces or quotes); the store and the app are the operator's."""
    return f"{RESUME_COMMAND} {shlex.quote(saga_id)} --app module:attr"


def log_last_claim(saga_id: str, claims: int) -> None:
    """The claim that took ``saga_id`` for the last time before it is parked."""
    _log.error(
        "saga %s claimed for the %d%s time without its lease given back (its resumes "
        "keep ending the process, or hanging past a worker's resume_timeout): if this "
        "resume does too, workers and recover passes claim it no more; once the cause "
        "is fixed, an operator resumes it once by id (%s, with this store's --db or "
        "--dsn; or Saga.resume(saga_id)), which clears the count when it gives the "
        "lease back",
        saga_id, claims, _ordinal(claims), resume_command(saga_id),
    )


def warn_if_last_claim(store: object, lease: Lease) -> None:
    """``log_last_claim`` if ``lease`` is the last claim ``store`` allows.

    Called by the holder that is about to run the saga, not by the store's
    ``claim``: a ``recover`` pass not given the saga's name claims it all
    the same and gives it back unrun (``ran=False``, uncounted), and the
    store's warning — the next crash parks it — was then logged for a claim
    that ran nothing and counts for nothing."""
    park_after = getattr(store, "park_after", None)
    if (
        isinstance(park_after, int) and not isinstance(park_after, bool)
        and lease.unreleased_claims == park_after
    ):
        log_last_claim(lease.saga_id, lease.unreleased_claims)


def parked_text(claims: int, saga_id: str) -> str:
    """What an operator reads about the parked saga ``saga_id`` (``list``,
    ``show``, ``recover``, the console): why, and the command that resumes it."""
    return (f"parked: claimed {claims} times without finishing (its resumes keep "
            f"ending the process or hanging); once the cause is fixed, resume it by id: "
            f"{resume_command(saga_id)}")


def parked_claims(
    store: object,
    status: SagaStatus,
    claims: object,
    lease_owner: object = None,
    lease_expires_at: object = None,
    now: float | None = None,
) -> int | None:
    """``claims`` if the saga is parked by ``store``'s ``park_after`` (an
    interrupted saga claimed that many times without its lease given back,
    and the last of those leases over), else ``None`` (a finished saga, a
    store that does not park, or the last allowed resume still running).

    The claim that reaches ``park_after`` is the last one allowed, not a
    parking: while its lease is held (``lease_owner`` set, ``lease_expires_at``
    after ``now``) that resume runs, and may yet finish and clear the count.
    Shown parked meanwhile, it sent an operator to resume by id a saga a
    worker held (``SagaBusy``), or to give up on one about to finish."""
    park_after = getattr(store, "park_after", None)
    if (
        not isinstance(park_after, int) or isinstance(park_after, bool)
        or not isinstance(claims, int) or isinstance(claims, bool)
        or status.is_final
        or claims < park_after
    ):
        return None
    if lease_owner is not None and _still_held(lease_expires_at, now):
        return None
    return claims


def _still_held(expires_at: object, now: float | None) -> bool:
    if (
        not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool)
        or not math.isfinite(expires_at)
    ):
        return False  # no readable expiry: judged by the count alone
    return expires_at > (time.time() if now is None else now)


def _ordinal(number: int) -> str:
    if number % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
