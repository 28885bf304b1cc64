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
given back should the answer come (see ``_answer_of``). After ``grace``
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
does not answer frees its slot then, and is tried again as a refused one.

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
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta

from .claimed_saga import ClaimedSaga
from .events import collect_hooks, listener_tuple
from .log_lines import library_logger
from .recovery import (
    SagasGiven,
    claim_batch,
    default_owner,
    sagas_by_name,
    seconds_given,
)
from .resume_bounds import RESUME_WARNING, STOP_WAIT, ResumeBounds, Resuming
from .shielding import CLAIM_GRACE, cancellation_pending, loop_gone
from .store.base import (
    Lease,
    RecoverableStore,
    WorkNotifier,
    check_store,
    claims_by_name,
    is_recoverable,
    is_work_notifier,
)
from .worker_backoff import Backoff
from .worker_give_backs import KeptLeases
from .worker_stats import WorkerStats, count_outcome

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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
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
        self._bounds = ResumeBounds(self.owner, concurrency, self.resume_timeout,
                                    self.resume_warning)
        self.stats = WorkerStats()
        self._by_name = by_name
        # Claims ask only for the sagas this worker can resume: services that
        # share a store (a mixed fleet) do not take each other's sagas, and a
        # saga of another service is no skip, no warning, no lease taken. A
        # store whose claim cannot filter by name gets no ``names``: every
        # saga is claimed and the unknown ones skipped (see the class doc).
        self._claim_names: dict[str, object] = (
            {"names": tuple(sorted(by_name))} if claims_by_name(store) else {})
        self._listeners = listener_tuple(listeners)
        collect_hooks(self._listeners, "recovery_outcome")  # refuses a class or an async hook
        self._in_flight: dict[asyncio.Task[None], Resuming] = {}
        # Runs let go (asked to stop, they did not: see the module
        # docstring), kept referenced until they end, whenever that is.
        self._let_go: set[asyncio.Task[None]] = set()
        self._handing_off = False  # the drain hands off what is left
        self._settled = asyncio.Event()  # nothing in flight (set as it empties)
        self._watch_wake = asyncio.Event()  # a deadline of _watch's may have moved
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._backlog = False  # the last claim filled every free slot: there may be more
        self._grace: float | None = None
        self._finished: asyncio.Event | None = None
        # Set by stop(), with the loop's time it was asked at: a claim on its
        # way then has STOP_WAIT from that moment (see _answer_of), and
        # ``grace`` runs from it too.
        self._stop_asked = asyncio.Event()
        self._stopped_at: float | None = None
        # Claims the worker stopped waiting for (see _answer_of), kept
        # referenced until they end: what they take is given back.
        self._abandoned: set[asyncio.Task[list[Lease]]] = set()
        self._notifier = store if listen and is_work_notifier(store) else None
        self._listening = asyncio.Event()
        self._claims_failing = False  # warned about this outage of the store already
        # The event loop's clock (monotonic), read when needed: a worker may run
        # on several loops in turn (see run).
        self._clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        # Its backoffs of the sagas it interrupted, and the leases it still
        # has to give back (kept through a backoff, or refused by the store).
        self._backoff = Backoff(self.poll, self.lease)
        self._kept = KeptLeases(store, self.owner, self.poll, lambda: self._clock())

    def __repr__(self) -> str:
        return (f"RecoveryWorker(owner={self.owner!r}, in_flight={len(self._in_flight)}, "
                f"{self.stats})")

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def listening(self) -> bool:
        """True while the store's work announcements reach this worker."""
        return self._listening.is_set()

    def wake(self) -> None:
        """Claim now rather than at the next poll (safe to call any time, from the loop)."""
        self._wake.set()
        self._watch_wake.set()

    async def run(self) -> None:
        """Claim and resume until ``stop()``; then drain (see the module docstring)."""
        if self._running:
            raise RuntimeError("this RecoveryWorker is already running")
        self._running = True
        self._stopping = False
        self._finished = asyncio.Event()
        # Events of this run's loop: an asyncio.Event that has been waited on
        # belongs to its loop, and the worker may have run on another before
        # (two successive asyncio.run calls, as function-scoped test loops do).
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._settled = asyncio.Event()
        self._watch_wake = asyncio.Event()
        self._stop_asked = asyncio.Event()
        self._stopped_at = None
        self._handing_off = False
        listener: asyncio.Task[None] | None = None
        if self._notifier is not None:
            listener = asyncio.get_running_loop().create_task(self._listen(self._notifier))
        loop = asyncio.get_running_loop()
        watch = loop.create_task(self._watch())
        try:
            while not self._stopping:
                self._wake.clear()  # before claiming: a wake-up during the claim is kept
                await self._kept.give_back(everything=False)
                await self._claim()
                if self._stopping:
                    break
                if cancellation_pending():  # a driver swallowed it
                    raise asyncio.CancelledError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._kept.until_next_claim())
        except asyncio.CancelledError:
            await self._drain(0.0)
            raise
        else:
            await self._drain(self._grace_left())
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
                with contextlib.suppress(asyncio.CancelledError):
                    await self._kept.give_back(everything=True)
                self._kept.say_left_to_run_out()
                for helper in (listener, watch):
                    if helper is not None:
                        helper.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await helper
                for task in self._let_go:
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

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop claiming; wait for the sagas in flight, for at most ``grace``
        seconds from this call (``None``: as long as they take), then hand
        the rest off. A claim on its way is waited for ``STOP_WAIT`` at most.
        Returns once ``run()`` has finished. Harmless if not running."""
        if grace is not None:
            grace = _seconds("grace", grace, positive=False)
        self._grace = grace
        if not self._stopping and self._running:
            self._stopped_at = asyncio.get_running_loop().time()
            self._stop_asked.set()
        self._stopping = True
        self._wake.set()
        if self._running and self._finished is not None:
            await self._finished.wait()

    # ------------------------------------------------------------------ internals

    async def _listen(self, notifier: WorkNotifier) -> None:
        """Wake the claim loop on each announcement; on a lost connection,
        warn (once per outage) and listen again after ``poll`` seconds, while
        polling goes on."""
        warned = False
        while not self._stopping:
            try:
                async for saga_id in notifier.work_notifications():
                    if not saga_id:  # listening now: what came before was missed
                        self._listening.set()
                        warned = False
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if cancellation_pending():
                    raise asyncio.CancelledError from error  # see cancellation_pending
                if not warned:
                    _log.warning(
                        "recovery worker %s: not listening for work (%s: %s); "
                        "polling every %g s", self.owner, type(error).__name__, error,
                        self.poll,
                    )
                    warned = True
            finally:
                self._listening.clear()
            if cancellation_pending():  # a driver swallowed it
                raise asyncio.CancelledError
            await asyncio.sleep(self.poll)

    def _grace_left(self) -> float | None:
        """``grace``, less the time since ``stop()`` was called (a claim on
        its way, give-backs before it): ``grace`` bounds the stop, not the
        drain alone."""
        grace, stopped_at = self._grace, self._stopped_at
        if grace is None or stopped_at is None:
            return grace
        return max(0.0, grace - (asyncio.get_running_loop().time() - stopped_at))

    async def _claim(self) -> None:
        free = self.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            return
        claiming = asyncio.get_running_loop().create_task(claim_batch(
            # given back if we are cancelled meanwhile, or stop waiting for it
            self.store, owner=self.owner, lease_seconds=self.lease,
            older_than=self.older_than, limit=free, **self._claim_names,
        ))
        try:
            answer = await self._answer_of(claiming)
            if answer is None:
                return  # stopped, the claim let go: see _answer_of
            leases = answer
        except Exception as error:  # the store is down: try again at the next poll
            if cancellation_pending():
                raise asyncio.CancelledError from error  # see cancellation_pending
            # Once per outage, as _listen does: a store down for hours is
            # thousands of polls, and one line per poll says nothing more.
            if not self._claims_failing:
                self._claims_failing = True
                _log.warning(
                    "recovery worker %s: claim failed: %s: %s; claiming again every %g s "
                    "(said once until a claim works)", self.owner, type(error).__name__,
                    error, self.poll,
                )
            return
        if self._claims_failing:
            self._claims_failing = False
            _log.info("recovery worker %s: claims work again", self.owner)
        self._backlog = len(leases) == free
        self.stats.claimed += len(leases)
        for lease in leases:
            claimed = ClaimedSaga(self.store, self._by_name, lease, lease_seconds=self.lease,
                                  listeners=self._listeners, skip_for=self.lease,
                                  retry_in=self._backoff.retry_in(lease.saga_id),
                                  hand_off_when_cancelled=True)
            resuming = Resuming(claimed, self._clock())
            task = asyncio.get_running_loop().create_task(self._resume(resuming))
            self._in_flight[task] = resuming
            task.add_done_callback(self._done)
        if leases and self._bounds.watched:
            self._watch_wake.set()  # new deadlines

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
            if not self._stopping:
                stop = asyncio.get_running_loop().create_task(self._stop_asked.wait())
                try:
                    await asyncio.wait([claiming, stop], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
            if not claiming.done():
                stopped_at = self._stopped_at
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
        self._abandoned.add(claiming)
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
        self._abandoned.discard(claiming)
        if not claiming.cancelled():
            claiming.exception()  # cancelled, it raises CancelledError: nothing else to say

    async def _resume(self, resuming: Resuming) -> None:
        resuming.began = True
        claimed = resuming.claimed
        if self._handing_off:
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
            self._backoff.interrupted(claimed.saga_id)
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
            self._kept.keep(claimed.saga_id, claimed.lease, claimed.held_for)
        if outcome == "interrupted":
            self._backoff.interrupted(claimed.saga_id)
        else:
            self._backoff.ended(claimed.saga_id)
        count_outcome(self.stats, claimed, outcome, reason, owner=self.owner, lease=self.lease)

    def _done(self, task: asyncio.Task[None]) -> None:
        resuming = self._in_flight.pop(task, None)
        if resuming is not None and resuming.claimed.not_given_back is not None:
            self._kept.refused(resuming.claimed.saga_id, resuming.claimed.not_given_back)
        self._let_go.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("recovery worker %s: resuming a saga raised", self.owner,
                       exc_info=task.exception())
        self._freed()

    def _freed(self) -> None:
        """A slot is free again."""
        if not self._in_flight:
            self._settled.set()
        if self._backlog or self._stopping:
            self._wake.set()

    async def _watch(self) -> None:
        """Keep the resumes in flight to their bounds (``resume_warning``,
        ``resume_timeout``, ``STOP_WAIT``), on the worker's clock, for as
        long as the worker runs — its drain included."""
        while True:
            self._watch_wake.clear()
            delay = self._check_resumes()
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a
            # cancellation that comes as the event is set (a wake-up).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._watch_wake.wait()
            if cancellation_pending():  # see cancellation_pending
                raise asyncio.CancelledError

    def _check_resumes(self) -> float | None:
        """Act on the bounds passed; seconds until the next one (None: none)."""
        return self._bounds.check(self._in_flight, self._clock(), self._give_up)

    def _give_up(self, task: asyncio.Task[None], resuming: Resuming) -> None:
        """Asked to stop ``STOP_WAIT`` seconds ago, the run has not: let it
        go (see the module docstring)."""
        claimed = resuming.claimed
        del self._in_flight[task]
        self._let_go.add(task)
        if claimed.outcome is not None:
            # It ended, its outcome told: only the store's taking its lease
            # back is on its way (see ClaimedSaga.give_up). Counted as it
            # ended, its slot free for the next saga.
            self._count(claimed, *claimed.give_up())
            self._freed()
            return
        _, reason = claimed.give_up()
        self.stats.interrupted += 1
        self._backoff.interrupted(claimed.saga_id)
        _log.error("recovery worker %s: saga %s did not stop %g s after it was asked to "
                   "(%s); its slot is free again: %s", self.owner, claimed.saga_id,
                   STOP_WAIT, "resume_timeout" if claimed.timed_out is not None
                   else "handed off", reason)
        self._freed()

    async def _until_settled(self, within: float | None) -> None:
        """Until nothing is in flight (each run ended or let go), or ``within`` seconds."""
        if self._in_flight:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._settled.wait()

    async def _drain(self, grace: float | None) -> None:
        if not self._in_flight:
            return
        if grace is None or grace > 0:
            await self._until_settled(grace)
        if not self._in_flight:
            return
        _log.warning("recovery worker %s: handing off %d saga(s) still running",
                     self.owner, len(self._in_flight))
        self._handing_off = True  # a task yet to begin hands its saga back
        now = self._clock()
        for task, resuming in self._in_flight.items():
            if resuming.stop_asked is None:
                resuming.stop_asked = now
            if resuming.claimed.run is not None:
                resuming.claimed.hand_off()
            elif resuming.began:
                task.cancel()  # still loading it: nothing ran yet
        self._watch_wake.set()  # STOP_WAIT runs from now
        # Handing off stops a run at its next write or suspension; it does
        # not wait for a step to finish (the step is cancelled, as in a crash).
        # A run that does not stop is let go after STOP_WAIT (_watch).
        await self._until_settled(None)
