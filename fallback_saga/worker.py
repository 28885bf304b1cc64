"""``RecoveryWorker``: the long-running form of ``recover``, for every service instance.

Each instance runs one worker. It claims interrupted sagas (a claim leases
them and advances their fencing token, so no two workers drive one saga),
resumes each in a task of its own under a heartbeat (``LeasedRun``), and
claims again whenever it has room: every ``poll`` seconds, as soon as a
resumed saga finishes while there may be more work, when the store announces
a saga another worker handed off (a ``WorkNotifier`` such as
``PostgresSagaStore``: LISTEN/NOTIFY), or when ``wake()`` is called. At
most ``concurrency`` sagas run at once; a claim asks only for the free slots,
so a busy worker leaves the rest of the backlog to the others.

Announcements are hints: while the listening connection is down the worker
logs a warning, keeps polling, and tries to listen again every ``poll``
seconds. Polling is never turned off, because sagas left behind by a crashed
process are announced by no one.

Shutdown (``await worker.stop(grace=...)``): the worker stops claiming and
waits for its sagas to finish. A claim on its way has ``STOP_WAIT`` seconds
from the stop to be answered; past that it is let go, and what it takes is
given back should the answer come (see worker_claims.py). After ``grace``
seconds from the stop (``None``: no limit) the sagas still running are
*handed off*: stopped without unwinding, like a crashed run, and their
leases released so that another worker resumes them at once. (A shutdown
is no business failure: it must not roll sagas back.)
If the task running ``run()`` is cancelled, the sagas are handed off at once.
A run handed off stops at its next write or suspension; a compensation in
flight is shielded and finishes first — unless it has not ``STOP_WAIT``
seconds later: it is then cancelled (left to be called again, in full, as
below). A run that has not stopped ``STOP_WAIT`` seconds after that (a step
that swallows ``CancelledError`` and goes on) is *let go*: see below. Last,
the worker gives back the leases it still holds (those the store refused
before, those kept through a backoff) — within ``STOP_WAIT`` in all, however
many: they add at most that to a stop, and a store that does not answer
leaves the rest to run out, named in a warning. The same bound holds for the
give-backs tried before each claim: a store out of reach delays the next
claim by one of its timeouts (cut at ``STOP_WAIT``), not by one per lease.
And each resume's own give-back, as it ends, has ``STOP_WAIT``: one the store
does not answer frees its slot then, and is tried again as a refused one —
as is one refused after the worker stopped waiting for it (let go, below).

Participants that never answer. A step with no ``timeout`` whose call never
returns holds its worker slot for as long as it hangs: ``concurrency`` such
sagas and the worker resumes nothing else. So a resume running longer than
``resume_warning`` seconds is logged (once, saying where it is), and one
running longer than ``resume_timeout`` is *stopped*: handed off — no
unwinding starts, no later write of it lands — with a compensation in flight
cancelled as the loop's shutdown cancels one (its STARTED row stays the
last, the saga COMPENSATING; the next resume calls it again, in full, with
the same idempotency key). It ends ``interrupted``: warned about, told to the
listeners (``recovery_outcome``), counted in ``stats.interrupted``, and kept
out of claims for the backoff of an interrupted saga — its lease kept and
cut to the backoff, not given back, so every claim of it counts toward the
store's ``park_after``: a saga that hangs on every resume is parked for an
operator (store/_parking.py) instead of taking a slot for ``resume_timeout``
after every backoff, for ever.

Nothing can kill a coroutine. A run asked to stop (by ``resume_timeout`` or a
shutdown's hand-off) that has not ended ``STOP_WAIT`` seconds later has
swallowed the cancellation: the worker lets it go — its slot is free again,
its outcome (``interrupted``) told, its lease kept and renewed no more (it
runs out, and the next claim counts) — while it goes on in the background,
every write of it refused. ``stop()`` does not wait for such a run; the
event loop's own shutdown (``asyncio.run``) cancels it once more and waits
for it, which only the step can end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta

from .claimed_saga import ClaimedSaga, children_first
from .claims_here import claiming
from .errors import StoreClosed
from .events import collect_hooks, emit, listener_tuple
from .given_numbers import claim_count, seconds_given
from .log_lines import library_logger
from .recovery import (
    SagasGiven,
    default_owner,
    sagas_by_name,
)
from .resume_bounds import RESUME_WARNING, STOP_WAIT, ResumeBounds
from .shielding import cancellation_pending, loop_gone, wait_ended
from .store.base import (
    RecoverableStore,
    check_store,
    claims_by_name,
    is_recoverable,
    is_work_notifier,
)
from .worker_backoff import Backoff
from .worker_claims import Claims
from .worker_give_backs import KeptLeases
from .worker_listen import listen_for_work
from .worker_resumes import Resumes
from .worker_stats import WorkerStats

# Rows remembered as told (_tell_unreadable) past which the memory is
# dropped (each then told once more): bounded, whatever a store holds.
_MAX_QUIET_ROWS = 10_000

__all__ = ["RESUME_WARNING", "STOP_WAIT", "RecoveryWorker", "WorkerStats"]

_log = library_logger("fallback_saga")


_seconds = seconds_given


class RecoveryWorker:
    """Claims interrupted sagas and resumes them, until stopped (see the module docstring).

    * ``sagas`` — the sagas it resumes, one per saga name: a Saga subclass,
      built as ``cls(store=store)``, or an instance built with ``store`` (to
      give it a ``step_factory``). It claims only sagas of these names (a
      store whose ``claim`` takes ``names``, as the built-in ones do), so
      services sharing one store each recover their own; a child saga
      (``SubSaga``) is matched by its own saga's name, and its parent's
      resumption drives it whether or not the child's saga is listed;
    * ``concurrency`` — sagas resumed at once;
    * ``lease`` — seconds of each claim; renewed every ``lease / 3`` while the
      saga runs, if the store has ``renew``;
    * ``poll`` — seconds between claims when idle;
    * ``older_than`` — only sagas not updated for this long are claimed (a
      younger one is probably still driven by the process that started it);
    * ``owner`` — the lease owner's name (default: host, pid and a random part);
    * ``listen`` — claim as soon as the store announces work, if it can
      (``WorkNotifier``); polling goes on either way;
    * ``listeners`` — told each claimed saga's outcome (``recovery_outcome``),
      as are the listeners of the saga that resumed it;
    * ``resume_timeout`` — seconds one resume may run before the worker stops
      it (``interrupted``: see the module docstring); ``None`` (the
      default): no bound, for a worker cannot know how long a saga's steps
      may rightly take, and a bound cut into a healthy long saga would park
      it. Give each step a ``timeout`` first; this is the backstop for a
      fleet, set well above the longest healthy resume;
    * ``resume_warning`` — seconds after which a resume still running is
      logged, once, with the step it is in (``RESUME_WARNING``, 300, by
      default; ``None``: never).

    A worker never overrides a changed definition (``recover``'s
    ``allow_changed_definition``): a standing override would resume every
    saga a later deploy changes, unseen. It skips such a saga, and its
    warning says how an operator resumes it once.

    A skipped saga (a changed definition, an unreadable row, ...; with a store
    that cannot claim by name, also a name not given) is kept out of every
    worker's claims for ``lease`` seconds, as an unreadable one is (its lease
    kept): released, it would be the oldest saga again, claimed and warned
    about on every poll, and enough of them would fill every claim and starve
    the sagas that can be resumed. So the warning comes once per ``lease``
    seconds per saga; an operator takes it at once (``recover``, ``resume``
    by id). (A store that cannot claim by name also delays a mixed fleet: a
    saga the first worker to claim it does not know waits up to ``lease`` +
    ``poll`` seconds for one that knows it.) An interrupted saga (its
    journal write failed, or the store failed to read it) is kept out of
    claims for a backoff: ``poll`` seconds, doubled per interruption of it
    in a row, capped at ``lease``, jittered — a saga whose writes the store always
    refuses is never claimed hot, and never holds up the others. (On a
    store without ``defer`` the worker keeps a skipped or interrupted saga's
    lease for that time instead, then releases it; an operator's ``resume``
    of it meanwhile is ``SagaBusy``.)

    ``worker.stats`` counts what happened; ``worker.in_flight`` is the number
    of sagas being resumed right now.
    """

    def __init__(
        self,
        store: RecoverableStore,
        sagas: SagasGiven,
        *,
        concurrency: int = 8,
        lease: float | timedelta = 300.0,
        poll: float | timedelta = 5.0,
        older_than: float | timedelta = 60.0,
        owner: str | None = None,
        listen: bool = True,
        listeners: Iterable[object] = (),
        resume_timeout: float | timedelta | None = None,
        resume_warning: float | timedelta | None = RESUME_WARNING,
    ) -> None:
        if not is_recoverable(store):
            raise TypeError(
                f"{type(store).__name__} cannot be recovered from: it has no leases "
                f"(use a durable store such as SQLiteSagaStore)"
            )
        check_store(store)  # a store class passes the test above
        # Each claim asks the store for up to ``concurrency`` sagas (its free slots).
        claim_count("concurrency", concurrency)
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError(f"owner must be a non-empty str, got {owner!r}")
        if not isinstance(listen, bool):
            raise TypeError(f"listen must be a bool, got {listen!r}")
        by_name = sagas_by_name(store, sagas)
        self.store = store
        self.concurrency = concurrency
        self.lease = _seconds("lease", lease, positive=True)
        self.poll = _seconds("poll", poll, positive=True)
        self.older_than = _seconds("older_than", older_than, positive=False)
        self.resume_timeout = (None if resume_timeout is None
                               else _seconds("resume_timeout", resume_timeout, positive=True))
        self.resume_warning = (None if resume_warning is None
                               else _seconds("resume_warning", resume_warning, positive=True))
        self.owner = owner or default_owner()
        self.stats = WorkerStats()
        self._by_name = by_name
        self._listeners = listener_tuple(listeners)
        collect_hooks(self._listeners, "recovery_outcome")  # refuses a class or an async hook
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        # A stop asked while the worker was not running, for its next run()
        # to end at once (see stop).
        self._stop_before_run = False
        self._backlog = False  # the last claim filled every free slot: there may be more
        self._grace: float | None = None
        self._finished: asyncio.Event | None = None
        # Set by stop(), with the loop's time it was asked at: a claim on its
        # way then has STOP_WAIT from that moment (see Claims._answer_of), and
        # ``grace`` runs from it too.
        self._stop_asked = asyncio.Event()
        self._stopped_at: float | None = None
        self._notifier = store if listen and is_work_notifier(store) else None
        self._listening = asyncio.Event()
        # The event loop's clock (monotonic), read when needed: a worker may run
        # on several loops in turn (see run).
        self._clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        # Its backoffs of the sagas it interrupted, and the leases it still
        # has to give back (kept through a backoff, or refused by the store).
        self._backoff = Backoff(self.poll, self.lease)
        self._kept = KeptLeases(store, self.owner, self.poll, lambda: self._clock())
        # Claims ask only for the sagas this worker can resume (see Claims); a
        # store whose claim cannot filter by name gets no ``names``: every
        # saga is claimed and the unknown ones skipped (see the class doc).
        # The rows its claims skipped as corrupt, each told again after this
        # time (_tell_unreadable).
        self._quiet_rows: dict[str, float] = {}
        self._claims = Claims(
            store, owner=self.owner, lease=self.lease, older_than=self.older_than,
            poll=self.poll,
            names={"names": tuple(sorted(by_name))} if claims_by_name(store) else {},
            stopping=lambda: self._stopping, stop_asked=lambda: self._stop_asked,
            stopped_at=lambda: self._stopped_at)
        # The sagas it is resuming, each in a task of its own.
        self._resumes = Resumes(
            owner=self.owner, lease=self.lease, bounds=ResumeBounds(
                self.owner, concurrency, self.resume_timeout, self.resume_warning),
            stats=self.stats, backoff=self._backoff, kept=self._kept,
            clock=lambda: self._clock(), on_freed=self._slot_freed)

    def __repr__(self) -> str:
        return (f"RecoveryWorker(owner={self.owner!r}, in_flight={self.in_flight}, "
                f"{self.stats})")

    @property
    def in_flight(self) -> int:
        resumes = self._resumes
        return len(resumes.in_flight) + resumes.starting

    @property
    def listening(self) -> bool:
        """True while the store's work announcements reach this worker."""
        return self._listening.is_set()

    def wake(self) -> None:
        """Claim now rather than at the next poll (safe to call any time, from the loop)."""
        self._wake.set()
        self._resumes.wake_watch()

    async def run(self) -> None:
        """Claim and resume until ``stop()``; then drain (see the module docstring).

        A store closed under the worker (``StoreClosed`` at a claim: it does
        not come back) stops it the same way, and ``run()`` then raises that
        ``StoreClosed``."""
        if self._running:
            raise RuntimeError("this RecoveryWorker is already running")
        if self._stop_before_run:
            self._stop_before_run = False
            return
        self._running = True
        self._stopping = False
        self._finished = asyncio.Event()
        # Events of this run's loop: an asyncio.Event that has been waited on
        # belongs to its loop, and the worker may have run on another before
        # (two successive asyncio.run calls, as function-scoped test loops do).
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._resumes.new_run()
        self._stop_asked = asyncio.Event()
        self._stopped_at = None
        listener: asyncio.Task[None] | None = None
        if self._notifier is not None:
            listener = asyncio.get_running_loop().create_task(listen_for_work(
                self._notifier, owner=self.owner, poll=self.poll, listening=self._listening,
                wake=lambda: self._wake.set(), stopping=lambda: self._stopping))
        loop = asyncio.get_running_loop()
        watch = loop.create_task(self._resumes.watch())
        closed: StoreClosed | None = None
        try:
            while not self._stopping:
                self._wake.clear()  # before claiming: a wake-up during the claim is kept
                await self._kept.give_back(everything=False)
                try:
                    await self._claim()
                except StoreClosed as error:
                    # A closed store does not come back: claiming again every
                    # poll, the worker said so once and ran for ever,
                    # recovering nothing. It stops as stop() stops it (the
                    # sagas in flight end at their next write), and run()
                    # raises the error below.
                    closed = error
                    self._stopping = True
                    break
                if self._stopping:
                    break
                if cancellation_pending():  # a driver swallowed it
                    raise asyncio.CancelledError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._kept.until_next_claim())
        except asyncio.CancelledError:
            # Waited for however often we are cancelled meanwhile (an anyio
            # cancel scope cancels at every await; a second task.cancel()):
            # cut short, run() returned while its sagas were still being
            # handed off, their leases given back only later — or never, the
            # store closed by then. (Bounded: a run that does not stop is
            # let go after STOP_WAIT, by the watch.)
            draining = loop.create_task(self._resumes.drain(0.0))
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await wait_ended(draining)  # the one we are handling is raised
                draining.result()
            finally:
                del draining  # its error's traceback holds this frame
            raise
        else:
            await self._resumes.drain(self._grace_left())
        finally:
            # Decided here, not in an ``except GeneratorExit``: the closing
            # may find the worker draining inside ``except CancelledError``
            # (a second Ctrl-C cut the runner's cancellation short), which a
            # sibling ``except`` never sees. Closed by the garbage collector
            # away from its loop (see loop_gone), nothing can be given back,
            # cancelled or awaited: the leases it holds run out on their own,
            # as a crash's; the runs it resumed are freed with it and stop as
            # theirs do. (``sys.exc_info``: what is propagating; 3.11 has no
            # ``sys.exception``.)
            closing = sys.exc_info()[1]
            if closing is not None and loop_gone(closing, loop):
                self._running = False
            else:
                # A worker that stops keeps nothing out of the others' claims
                # — as far as the store takes them back within STOP_WAIT
                # (see KeptLeases.give_back): a stop past its grace period is
                # killed, and gives nothing back at all. Cut short by a
                # cancellation, the rest of the stop goes on; the
                # cancellation is raised at its end.
                # Each waited for however often we are cancelled meanwhile
                # (an anyio cancel scope cancels at every await; a second
                # task.cancel()): cut short, a give-back on its way was
                # dropped at its first await — the lease kept out of the
                # others' claims until it ran out — and a helper outlived
                # run(). Bounded: the give-backs by STOP_WAIT, a helper
                # cancelled ends at its next await.
                giving_back = loop.create_task(self._kept.give_back(everything=True))
                try:
                    with contextlib.suppress(asyncio.CancelledError):
                        await wait_ended(giving_back)
                        giving_back.result()  # cancelled itself: the loop is closing
                finally:
                    del giving_back  # its error's traceback holds this frame
                self._kept.say_left_to_run_out()
                for helper in (listener, watch):
                    if helper is not None:
                        helper.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await wait_ended(helper)
                        with contextlib.suppress(asyncio.CancelledError):
                            helper.result()
                for task in self._resumes.let_go:
                    # Asked once more: a step that swallowed one cancellation
                    # may heed the next. Not waited for (see the module docstring).
                    task.cancel()
                self._running = False
                self._finished.set()
                if closing is None and cancellation_pending():
                    # Cancelled as it stopped (the give-backs above, a
                    # helper's end): returning, run() swallowed it, and a
                    # TaskGroup or asyncio.run took the cancelled task for
                    # one that ended in order.
                    raise asyncio.CancelledError
        if closed is not None:
            raise closed

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop claiming; wait for the sagas in flight, for at most ``grace``
        seconds from this call (``None``: as long as they take), then hand
        the rest off. A claim on its way is waited for ``STOP_WAIT`` at most.
        Returns once ``run()`` has finished.

        Asked while the worker is not running — its ``run()`` task created
        but not begun (a SIGTERM during startup), or not yet created — it
        ends the next ``run()`` at once, before it claims anything: ``run()``
        began after it and claimed for ever. A stop of a worker that has
        stopped asks nothing more."""
        if grace is not None:
            grace = _seconds("grace", grace, positive=False)
        self._grace = grace
        if not self._running and not self._stopping:
            self._stop_before_run = True
        if not self._stopping and self._running:
            self._stopped_at = asyncio.get_running_loop().time()
            self._stop_asked.set()
        self._stopping = True
        self._wake.set()
        if self._running and self._finished is not None:
            await self._finished.wait()

    # ------------------------------------------------------------------ internals

    def _grace_left(self) -> float | None:
        """``grace``, less the time since ``stop()`` was called (a claim on
        its way, give-backs before it): ``grace`` bounds the stop, not the
        drain alone."""
        grace, stopped_at = self._grace, self._stopped_at
        if grace is None or stopped_at is None:
            return grace
        return max(0.0, grace - (asyncio.get_running_loop().time() - stopped_at))

    async def _claim(self) -> None:
        free = self.concurrency - len(self._resumes.in_flight)
        if free <= 0 or self._stopping:
            return
        # A parent this worker drives may meet a child this claim leases
        # before its sagas are registered (claims_here): it waits for them.
        with claiming(self.owner):
            leases = await self._claims.take(free)
            if leases is None:
                return  # failed (said), or stopped and let go
            self._backlog = len(leases) == free
            self.stats.claimed += len(leases)
            self._tell_unreadable(self._claims.unreadable)
            # A parent claimed with its child runs once the child is deferred
            # (children_first), not into the lease this claim holds on it.
            self._resumes.start(children_first([
                ClaimedSaga(self.store, self._by_name, lease, lease_seconds=self.lease,
                            listeners=self._listeners, skip_for=self.lease,
                            retry_in=self._backoff.retry_in(lease.saga_id),
                            hand_off_when_cancelled=True)
                for lease in leases
            ]))

    def _tell_unreadable(self, rows: list[tuple[str, str]]) -> None:
        """The rows a claim skipped as corrupt (S12): counted as skipped and
        told to the listeners (``recovery_outcome``, no saga name: unread),
        each once per lease's length — as the store's log line about it, and
        as a claimed saga the worker skips (out of claims that long): every
        poll meets such a row again, and one report per poll says nothing more."""
        if not rows:
            return
        now = self._clock()
        quiet = self._quiet_rows
        if len(quiet) > _MAX_QUIET_ROWS:
            quiet.clear()
        hooks = collect_hooks(self._listeners, "recovery_outcome")
        for saga_id, reason in rows:
            if quiet.get(saga_id, -math.inf) > now:
                continue
            quiet[saga_id] = now + self.lease
            self.stats.skipped += 1
            emit(hooks, saga_id, None, "skipped", reason)

    def _slot_freed(self) -> None:
        """A resume's slot is free again: claim at once if there may be more
        work (or the stop waits for it), or if the store was closed under
        the resume (the claim meets it, and the worker stops: see run)."""
        if self._backlog or self._stopping or self._resumes.store_closed:
            self._wake.set()
