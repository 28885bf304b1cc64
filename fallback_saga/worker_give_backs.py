"""What keeps sagas out of other workers' claims that a ``RecoveryWorker``
still has to give back: the leases it keeps through a backoff on a store
without ``defer`` (``ClaimedSaga.held_for``), and the give-backs the store
refused (``ClaimedSaga.not_given_back``). Given back before each claim and
as the worker stops — within ``STOP_WAIT`` a round, however many."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .lease_give_back import GIVEN_BACK_FOR_GOOD, GiveBack, named_sagas
from .log_lines import library_logger
from .remembered import remember
from .shielding import cancellation_pending
from .stop_wait import STOP_WAIT
from .store.base import Lease, RecoverableStore

__all__ = ["KeptLeases"]

_log = library_logger("fallback_saga")


class KeptLeases:
    """A worker's leases still to give back (``owner`` names it in the log
    lines; ``clock`` is the worker's)."""

    def __init__(self, store: RecoverableStore, owner: str, poll: float,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.owner = owner
        self.poll = poll
        self._clock = clock
        # The leases kept to keep sagas out of claims (skipped, or backing
        # off), on a store without ``defer`` (``ClaimedSaga.held_for``):
        # saga id -> (lease, loop time at which it is released).
        self.held: dict[str, tuple[Lease, float]] = {}
        # Saga id -> the give-back of its lease (release, defer, hand-off)
        # that the store refused (``ClaimedSaga.not_given_back``): tried
        # again before each claim, until the store takes it. This worker is
        # alive, so that lease is no crash's (store._parking): left to run
        # out, it counted as one, and a store down at the give-back of five
        # resumes in a row parked a saga that never ended a process. (At
        # most REMEMBERED_SAGAS: see remembered.py.)
        self.not_given_back: dict[str, GiveBack] = {}
        # The last round of give-backs left leases due in ``held`` (the
        # store refused one, or did not answer): see give_back.
        self.left = False

    def keep(self, saga_id: str, lease: Lease, seconds: float) -> None:
        """Keep ``lease`` for ``seconds`` (a store without ``defer``), then give it back."""
        self.held[saga_id] = (lease, self._clock() + seconds)

    def refused(self, saga_id: str, give_back: GiveBack) -> None:
        """The store refused ``give_back``: tried again before each claim (at
        most ``REMEMBERED_SAGAS`` of them: the oldest is dropped, with a warning)."""
        forgotten = remember(self.not_given_back, saga_id, give_back)
        if forgotten is not None:  # as many remembered as can be: len() is the limit
            _log.warning(
                "recovery worker %s: the store refuses to take back the leases of more "
                "than %d sagas; no longer trying to give back saga %s's (the oldest "
                "refused): its lease runs out on its own and counts as a claim toward "
                "the store's park_after", self.owner, len(self.not_given_back),
                forgotten)

    def until_next_claim(self) -> float:
        """``poll``, or less: until the first kept lease is due for release."""
        if not self.held or self.left:
            return self.poll
        first = min(due for _, due in self.held.values())
        return max(0.0, min(self.poll, first - self._clock()))

    async def give_back(self, *, everything: bool) -> None:
        """Give back what keeps sagas out of the others' claims: the leases
        kept through a backoff that are due (or all of them), then the
        give-backs the store refused (``not_given_back``) — within
        ``STOP_WAIT`` in all, however many there are.

        A store that is out need not refuse at once: a PostgreSQL server
        that does not answer takes ``connect_timeout`` per call, a SQLite
        file another process holds ``busy_timeout``, a store of one's own
        may never answer. Tried one after another, each waited its full
        timeout: ten thousand remembered give-backs held the claim loop for
        ten thousand timeouts before its next claim, and a stop as long, far
        past any grace period (or for ever). So a round stops at the first
        one the store does not take — the store is out, and each of the
        others would wait as long for the same answer: they wait for the
        next round — and ``STOP_WAIT`` cuts short a call that does not
        answer (and a long list on a slow store): the bound the worker
        already gives what does not answer when asked to stop. A call cut
        short may still land; a give-back is fenced by its lease's token,
        so its next try changes nothing more. Not run concurrently: K at a
        time still waits N / K timeouts during an outage, and a store that
        comes back would meet thousands of calls at once."""
        released = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_WAIT):
                released = await self._release_held(everything=everything)
                if released:
                    await self._give_back_again()
        # Leases due left behind wait for the next poll, as a failed claim
        # does (until_next_claim): not retried at once, and again, while the
        # store is out.
        self.left = not released

    async def _release_held(self, *, everything: bool) -> bool:
        """Give back the leases kept through a backoff (``held``) that are
        due — or all of them. One the store refuses expires on its own, and
        the round stops there (see ``give_back``): False. One cut short
        (``STOP_WAIT``, or the worker cancelled) is kept, at the back of the
        line."""
        now = self._clock()
        for saga_id, (lease, due) in list(self.held.items()):
            if not everything and due > now:
                continue
            del self.held[saga_id]
            try:
                await self.store.release(lease)
            except asyncio.CancelledError:
                self.held.setdefault(saga_id, (lease, due))
                raise
            except Exception as error:
                if cancellation_pending():
                    self.held.setdefault(saga_id, (lease, due))
                    raise asyncio.CancelledError from error  # see cancellation_pending
                _log.warning("recovery worker %s: could not release saga %s after its "
                             "backoff (it expires on its own): %s: %s", self.owner,
                             saga_id, type(error).__name__, error)
                return False
        return True

    async def _give_back_again(self) -> None:
        """Try again the give-backs the store refused (``not_given_back``),
        the one refused longest ago first, until one is refused again (see
        ``give_back``): that one goes to the back of the line, so that
        a give-back the store refuses for its saga alone (not an outage)
        holds up none of the others. Fenced as any give-back: once another
        worker has taken the saga, it changes nothing."""
        for saga_id, give_back in list(self.not_given_back.items()):
            try:
                await give_back()
            except GIVEN_BACK_FOR_GOOD:
                pass  # dropped: it can never succeed
            except asyncio.CancelledError:
                self._to_the_back(saga_id, give_back)  # cut short: tried again later
                raise
            except Exception as error:
                self._to_the_back(saga_id, give_back)
                if cancellation_pending():
                    raise asyncio.CancelledError from error  # see cancellation_pending
                return
            if self.not_given_back.get(saga_id) is give_back:
                del self.not_given_back[saga_id]

    def _to_the_back(self, saga_id: str, give_back: GiveBack) -> None:
        """``give_back``, not made yet, is now the last tried (unless a newer
        give-back of its saga took its place meanwhile)."""
        if self.not_given_back.get(saga_id) is give_back:
            del self.not_given_back[saga_id]
            self.not_given_back[saga_id] = give_back

    def say_left_to_run_out(self) -> None:
        """As the worker stops: name the sagas whose leases it could not give
        back (the store out, or slower than ``STOP_WAIT``): they run out."""
        left = [*self.held, *(saga_id for saga_id in self.not_given_back
                               if saga_id not in self.held)]
        if not left:
            return
        # (At most lease_give_back.NAMED_AT_MOST of them named: there may be
        # REMEMBERED_SAGAS.)
        _log.warning(
            "recovery worker %s: stopped with the leases of %d saga(s) not given back (the "
            "store refused them, or did not answer within %g s): %s; they run out on their "
            "own, and each counts as a claim toward the store's park_after", self.owner,
            len(left), STOP_WAIT, named_sagas(left))
