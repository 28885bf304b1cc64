"""How a claimed saga's lease goes back to the store as its resume ends
(release, defer, hand-off, or kept), and what the holder does with a
give-back the store refused.

``ClaimedSaga`` (claimed_saga.py) decides its outcome; this module decides
what that outcome does to the lease. A ``recover`` pass and a
``RecoveryWorker`` both try again the give-backs left here
(``not_given_back``); the names in their warnings come from ``named_sagas``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

from .errors import LeaseLost, SagaNotFound
from .log_lines import library_logger
from .stop_wait import STOP_WAIT
from .store.base import Lease, RecoverableStore, gives_back_unrun, is_work_notifier

__all__ = [
    "GIVEN_BACK_FOR_GOOD",
    "NAMED_AT_MOST",
    "GiveBack",
    "give_back_once",
    "lease_return",
    "named_sagas",
    "refusal",
]

_log = library_logger("fallback_saga")

#: One give-back of a lease, ready to be awaited (and awaited again).
GiveBack = Callable[[], Awaitable[object]]

#: What a give-back of a lease (release, defer, hand-off) raises when there
#: is nothing left to give back — the lease is another holder's now, or the
#: saga is gone: never worth trying again.
GIVEN_BACK_FOR_GOOD: tuple[type[Exception], ...] = (LeaseLost, SagaNotFound)

# The sagas named, at most, in a warning about the leases a pass (or a
# stopping worker) could not give back: there may be thousands of them.
NAMED_AT_MOST: Final = 20


def refusal(error: Exception) -> str:
    """What a give-back's failure says in a log line: the store's error, or
    that it did not answer within ``STOP_WAIT`` (a bare TimeoutError says nothing)."""
    if isinstance(error, TimeoutError) and not str(error):
        return f"the store did not answer within {STOP_WAIT:g} s"
    return f"{type(error).__name__}: {error}"


def named_sagas(saga_ids: list[str]) -> str:
    """``saga_ids`` for a log line: the first ``NAMED_AT_MOST``, and how many
    more (a ``recover`` pass's warning, and a stopping worker's)."""
    more = len(saga_ids) - NAMED_AT_MOST
    return ", ".join(saga_ids[:NAMED_AT_MOST]) + (f" and {more} more" if more > 0 else "")


async def lease_return(
    given_store: RecoverableStore,
    lease: Lease,
    outcome: str,
    *,
    lease_seconds: float,
    untouched: bool,
    unreadable: bool,
    timed_out: float | None,
    skip_for: float | None,
    retry_in: float | None,
) -> tuple[GiveBack | None, float | None]:
    """How the lease goes back for ``outcome``: the give-back to make (or
    None), and the seconds the holder keeps the lease instead (a store
    without ``defer``: ``ClaimedSaga.held_for``), or None. A released saga
    is claimable at once (a hand-off; a saga a ``recover`` pass skipped, for
    the operator's next pass). Only a hand-off is announced: a skipped saga
    announced would bounce between workers that all skip it, as fast as
    they can claim. ``untouched``: nothing of it ran (its claim is not
    counted); ``unreadable``: its record cannot be read; ``timed_out``: the
    worker's ``resume_timeout`` it outran; ``skip_for`` / ``retry_in``: the
    seconds a worker keeps a skipped / interrupted saga out of claims."""
    held_for: float | None = None
    # Typed Any: ``ran`` is the built-in stores' (gives_back_unrun).
    store: Any = given_store
    unrun = {"ran": False} if untouched and gives_back_unrun(store) else {}
    give_back: Callable[[], Awaitable[object]] | None = None
    try:
        if unreadable:
            if hasattr(store, "defer"):
                give_back = partial(store.defer, lease, lease_seconds)
            # else: kept, to run out on its own (see ClaimedSaga._drive)
        elif outcome == "interrupted" and timed_out is not None:
            # Stopped at the worker's bound: out of claims for the
            # backoff, as any interrupted saga — but neither released nor
            # deferred, which would clear its count of claims: a saga that
            # hangs on every resume would hold a slot for resume_timeout
            # on every backoff, for ever. Its lease, kept, is cut to the
            # backoff (renew), and the next claim counts (store._parking).
            # A store without renew: the lease runs out on its own.
            renew = getattr(store, "renew", None)
            if renew is not None:
                await renew(lease, retry_in or lease_seconds)
        elif outcome == "handed_off" and is_work_notifier(store):
            give_back = partial(store.hand_off, lease, **unrun)
        elif outcome == "skipped" and skip_for is not None:
            # A worker's skip stays a skip until an operator acts (or a
            # deploy): released, the saga — as old as ever — would be
            # the first one claimed again at once, on every poll, warned
            # about every time, and as many of them as a claim takes
            # would starve every other saga. Out of claims for
            # ``skip_for``: another worker (one that knows its name) gets
            # it within that; an operator's resume leases it at once by id
            # — unless the store has no ``defer``: its lease is kept then
            # (``held_for``), and such a resume is SagaBusy until it ends.
            if hasattr(store, "defer"):
                give_back = partial(store.defer, lease, skip_for, **unrun)
            else:
                held_for = skip_for
        elif outcome == "interrupted" and retry_in is not None:
            # The journal refused this saga's write. Released, it would
            # be the oldest claimable saga again at once, and a worker
            # whose claim filled its slots claims again at once: a saga
            # whose rows the store always refuses (a poison saga) was
            # claimed, resumed and warned about hundreds of times a
            # second, and the sagas behind it never got a slot. Out of
            # claims for the worker's backoff instead: deferred, or —
            # a store of one's own without ``defer`` — its lease kept,
            # for the worker to release once the backoff has passed
            # (``held_for``; it expires on its own if the worker dies).
            if hasattr(store, "defer"):
                give_back = partial(store.defer, lease, retry_in)
            else:
                held_for = retry_in
        elif outcome == "deferred" and hasattr(store, "defer"):
            # Out of claims for a lease's length (its parent, if it
            # stalls, is taken over within that): released, a child
            # would be claimed again at once — a worker spinning on it,
            # starving the rest. The parent's driver may still lease it
            # by id at any moment.
            give_back = partial(store.defer, lease, lease_seconds, **unrun)
        elif outcome == "deferred" and retry_in is not None:
            # A worker's, on a store without ``defer``: released at once,
            # the child was claimed again at once, and again — a worker
            # spinning on it, the sagas behind it starved. Its lease is
            # kept instead (``held_for``), then given back by the worker
            # — for the worker's backoff (about ``poll``), not a lease's
            # length: meanwhile the parent's driver, which leases the
            # child by id, gets SagaBusy and waits (SubSaga's _when_free).
            held_for = retry_in
        else:
            give_back = partial(store.release, lease, **unrun)
    except Exception as error:  # it expires on its own
        # Only the renewal is awaited here (a give-back is, below): a
        # lease renewed for the backoff that a log called "released"
        # misled an operator about whether the saga could be claimed.
        _log.warning("saga %s: could not renew its lease for the backoff (cut to it): "
                     "%s: %s (its lease runs out on its own)",
                     lease.saga_id, type(error).__name__, error)
        return None, None
    return give_back, held_for


async def give_back_once(saga_id: str, give_back: GiveBack) -> GiveBack | None:
    """Give the lease back as ``give_back`` does; if the store refuses
    (down for a moment), return it for the holder to try again
    (``ClaimedSaga.not_given_back``) — a worker before its next claim, a
    ``recover`` pass at its end. Left to run out instead, the lease was
    counted as a crash's (store._parking): a worker whose resume ended in
    order, met by a store outage at each give-back, parked a saga that
    killed nothing.

    One that does not answer within ``STOP_WAIT`` is cut short and kept
    the same way: with no ``resume_timeout`` nothing else watches a
    resume, and a give-back the store never answers (a store of one's
    own with no timeout) held a worker's slot for ever — capacity lost
    until a restart — and a ``recover`` pass for ever. A give-back cut
    short may still land; fenced by its lease's token, its next try
    changes nothing more."""
    try:
        async with asyncio.timeout(STOP_WAIT):
            await give_back()
    except GIVEN_BACK_FOR_GOOD:
        pass  # another holder's now, or gone: nothing left to give back
    except Exception as error:
        _log.warning("saga %s: could not give its lease back (tried again before the "
                     "next claim; else it expires on its own): %s", saga_id,
                     refusal(error))
        return give_back
    return None
