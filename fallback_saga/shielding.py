"""Running a coroutine to its end, whatever happens to the task that waits for it.

Two things in a saga must never be abandoned half-way by a cancellation: the
unwinding (every completed step gets its ``compensate`` call, S8) and a
journal write once sent (the executor must know what the journal holds before
it handles the cancellation, S13). Both run in a task of their own; the
caller waits on a future the task resolves as its last act (so cancelling the
caller cancels only that future, never the work), and the caller's
cancellation is reported once the work has finished.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

__all__ = [
    "CLAIM_GRACE",
    "EAGER_TASKS",
    "NO_TASK",
    "PROCESS_ENDING",
    "RUNS_AROUND",
    "cancellation_behind",
    "cancellation_pending",
    "cancelled_again",
    "claimed",
    "land_pending_cancellation",
    "loop_gone",
    "outer_run_cancelled",
    "own_task",
    "reset_var",
    "running_task",
    "settle",
    "shielded",
    "wait_ended",
]

T = TypeVar("T")

_running_loop = asyncio.get_running_loop

# Python 3.12+: a task can start at once, in the caller's step (see own_task).
EAGER_TASKS = sys.version_info >= (3, 12)


def own_task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """``coroutine`` in a task of its own, started eagerly where Python can.

    Since Python 3.12 a task can start eagerly: it runs at once, as the
    current task, until it first waits, so a coroutine that never waits
    finishes without a trip through the event loop — which is most of the
    price of a task of its own."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coroutine, loop=loop, eager_start=True)
    return loop.create_task(coroutine)


def cancellation_pending() -> bool:
    """Whether the current task has been asked to cancel, whatever it caught.

    A ``CancelledError`` is not proof of a cancellation (a ``compensate`` can
    raise one of its own), and a cancellation can arrive without one: a
    database driver cancelled while it connects or waits for an answer may
    raise an error of its own instead (which the store then wraps), or retry
    and answer (psycopg_pool retries a connection check that a cancellation
    cut off). The task's count of pending requests is the one witness that
    such a driver cannot swallow. A loop that takes such an error for a store
    outage and tries again (a worker's claims, a lease's heartbeat) asks this
    after each call to its store, and stops: otherwise whoever cancelled it
    and waits for its end (a worker's stop, a run's end, the loop's end)
    waits for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _NoTask:
    """What ``running_task`` gives outside a task (a coroutine driven by
    hand): nobody can cancel it, so nothing is ever pending."""

    __slots__ = ()

    _loop = None  # a task's event loop (Execution.driven_in): none drives it

    @staticmethod
    def cancelling() -> int:
        return 0


NO_TASK = _NoTask()


def running_task() -> asyncio.Task[Any] | _NoTask:
    """The current task, whose ``cancelling()`` a run compares with the count
    it started with (``NO_TASK`` outside one).

    A run started inside an ``except CancelledError:`` cleanup handler, or
    under a timeout that has fired, starts with requests pending that are
    not its own to answer: only a request made *while it runs* stops it. So
    a run keeps the count it started with, and a cancellation swallowed or
    converted by a participant (an ``act`` that catches ``CancelledError``
    and returns, or raises an error of its own, as a database driver
    cancelled mid-query does) is told by the count having grown past it.
    (``asyncio.timeout()`` and ``TaskGroup`` take back their own requests
    with ``uncancel()``: a step's timeout that fired leaves the count as
    it was.)"""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop: a coroutine driven by hand
        return NO_TASK
    return NO_TASK if task is None else task


if sys.version_info < (3, 12):
    import threading

    _lookup_task = running_task
    # Python 3.11's ``current_task()`` is pure Python, and the running-loop
    # lookup it makes costs a ``getpid`` system call: together about 0.3 µs,
    # 3 % of a three-step saga in memory (3.12 made both C: 0.02 µs). asyncio
    # keeps the task each loop is stepping in ``_current_tasks`` (so in every
    # 3.11 release, a line that gets security fixes only). When one loop in
    # the process is stepping a task and this thread runs that loop, that
    # task is the current one: a thread runs one loop at a time, and code
    # that runs outside any task (a loop callback) finds its loop missing
    # from the table. Anything else (several loops, another thread's loop, a
    # loop that does not say which thread runs it) takes the public lookup.
    # (tests/test_running_task.py holds the two to the same answers.)
    _stepping: dict[Any, Any] = getattr(asyncio.tasks, "_current_tasks", {})
    _this_thread = threading.get_ident

    def running_task() -> asyncio.Task[Any] | _NoTask:
        if len(_stepping) == 1:
            try:
                for task in _stepping.values():
                    if task._loop._thread_id == _this_thread():
                        return task  # type: ignore[no-any-return]
            except AttributeError:  # a loop of another kind: no _thread_id
                pass
            except RuntimeError:
                # Another thread's loop entered or left a task's step while
                # we looked (the GIL may change hands at _this_thread()):
                # the dict changed size during the iteration.
                pass
        return _lookup_task()

    running_task.__doc__ = _lookup_task.__doc__


# The runs a task works for besides its own: a ``Parallel`` group's member
# runs in a task of its own, for the run whose task made the group (and for
# the runs around that one, when the group is in a child saga of a member).
# Each entry is that run's task and its count of requests to cancel as the run
# began (see running_task). A member's own count does not grow when its run is
# asked to cancel: that request reaches the member only once the run's task
# takes its next step (it then cancels its members). Set for the members'
# tasks only, while they are made (a task copies its context as it is made),
# so no task outlives the group holding it.
RUNS_AROUND: ContextVar[tuple[tuple[asyncio.Task[Any], int], ...]] = ContextVar(
    "fallback_saga_runs_around", default=()
)

_runs_around = RUNS_AROUND.get

# Where ``shielded`` puts what a shielded piece of work let out that ends the
# process (SystemExit, KeyboardInterrupt) when it reports it as our
# cancellation (see there): a list that a run which must know sets in its
# context (``LeasedRun``: the saga's lease is kept, as a crash keeps it), and
# that the tasks made within that context (a group's members, a child saga)
# share. None elsewhere.
PROCESS_ENDING: ContextVar[list[BaseException] | None] = ContextVar(
    "fallback_saga_process_ending", default=None
)


def reset_var(var: ContextVar[T], token: Token[T]) -> None:
    """Undo ``var.set`` (``token``) as the coroutine that made it ends. A
    coroutine whose task was destroyed pending (the loop closed before
    cancelling it: a second Ctrl-C cut ``asyncio.run``'s shutdown short) is
    closed by the garbage collector, in whatever context is current then —
    not its task's, where the token was made: there is nothing of that
    context to restore, and the ``ValueError`` ("was created in a different
    Context") would replace the ``GeneratorExit`` going through: taken for
    an error, it made the code around try to unwind where no loop runs, and
    was printed as "Exception ignored"."""
    try:  # noqa: SIM105 - not contextlib.suppress: an object made on every run's way out
        var.reset(token)
    except ValueError:
        pass


def loop_gone(error: BaseException, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``error`` is the garbage collector closing, away from
    ``loop``, the coroutine of a task destroyed pending (a second Ctrl-C cut
    ``asyncio.run``'s shutdown short, or the loop was closed with the task
    left): ``GeneratorExit`` with no loop running, or another one. Nothing
    can be awaited, scheduled or asked of the task there (even
    ``asyncio.current_task()`` raises "no running event loop", a closed
    loop's ``call_soon`` "Event loop is closed"): the code going out leaves
    things as a crash leaves them."""
    if not isinstance(error, GeneratorExit):
        return False
    try:
        return _running_loop() is not loop
    except RuntimeError:  # no loop running at all
        return True


def outer_run_cancelled() -> bool:
    """Whether a run this task works for (``RUNS_AROUND``) has been asked to
    cancel since it began. Asked on failure paths only: a group member's
    ``act`` that failed then (it cancelled its saga's caller and raised,
    say) answered — it failed — but the run is stopping, and the request
    has not reached the member's task yet: nothing falls back or is retried
    after it, and no breaker counts it (S3, S9). A run that writes ahead
    learns of the request in its next write, which lets the run's task take
    its step and cancel the member; one whose writes never wait, never."""
    runs = _runs_around()
    if runs:  # (outside a group member: one lookup, no generator)
        for task, cancels in runs:
            if task.cancelling() > cancels:
                return True
    return False


def cancellation_behind(error: BaseException) -> asyncio.CancelledError:
    """A ``CancelledError`` to raise in place of ``error``, an error a
    participant raised once its task had been asked to cancel: with the
    message of the ``CancelledError`` that ``error`` was raised while
    handling, if its chain holds one (the caller's), and ``error`` as its
    cause, so the driver's own error is still told."""
    seen: set[int] = set()
    cause: BaseException | None = error
    args: tuple[Any, ...] = ()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, asyncio.CancelledError):
            args = cause.args
            break
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    del cause
    stopped = asyncio.CancelledError(*args)
    stopped.__cause__ = error
    return stopped


async def land_pending_cancellation() -> asyncio.CancelledError | None:
    """Let a cancellation asked for while this task never waited land here,
    now: the ``CancelledError`` it raised, or None.

    ``task.cancel()`` takes effect at the task's next wait. A journal write
    on a durable store always waits, so a cancellation asked for during a
    step that then returned without waiting (the step cancelled its caller,
    or something it called synchronously did) lands in the write after it.
    A write that never waits (an in-process store's; on Python 3.12+, where
    the write's task starts eagerly, it finishes without a trip through the
    loop) would carry it on, unseen, into the next step's act. One turn of
    the loop, taken only when a request is pending, lands it where a
    durable store's write would, on every Python. (A pending count with no
    cancellation to deliver, such as a saga run inside an ``except
    CancelledError:`` cleanup, costs that one turn and nothing else.)"""
    if not cancellation_pending():
        return None
    try:
        await _one_turn()
    except asyncio.CancelledError as caught:
        return caught
    return None


def cancelled_again(caught: BaseException) -> asyncio.CancelledError:
    """The ``CancelledError`` to raise for a cancellation caught earlier and
    held back until the work it must not abandon was done: a new one with the
    caught one's arguments, so the caller's ``task.cancel(msg)`` message is
    what the caller finally sees. (The task's cancellation count is
    untouched: the request is still pending, and is answered by this raise.)

    The caught one is never raised again: its traceback is dropped. It holds
    the frame that caught it, whose local holds the caught one — a reference
    cycle that would keep the frame's locals (the saga's run, its context)
    alive until the garbage collector finds it."""
    caught.__traceback__ = None
    return asyncio.CancelledError(*caught.args)


async def wait_ended(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, however often we are cancelled meanwhile
    (a second ``task.cancel()``; an anyio cancel scope, at every await);
    then raise the first cancellation we got, if any (it carries the
    caller's message). ``task``'s own outcome is left to the caller.

    For what must have ended before we go on: a heartbeat whose renewal
    would land on a lease given back, a worker's drain, give-backs and
    helpers. Cut short, the rest ran on after the caller returned — the
    leases given back only later, or never (the store closed by then).
    Bounded by ``task`` alone: it must end on its own, or be cancelled."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as caught:
            cancelled = cancelled or caught
    if cancelled is not None:
        raise cancelled_again(cancelled)


async def settle(
    coroutine: Coroutine[Any, Any, None],
) -> tuple[BaseException | None, asyncio.CancelledError | None]:
    """Run ``coroutine`` to its end in a task of its own, whatever happens to the
    calling task meanwhile. Returns ``(error or None, cancellation or None)``:
    the ``CancelledError`` the caller got while waiting, if any, is reported,
    never acted on, here (``cancelled_again`` raises it)."""
    task, cancelled = await _to_the_end(coroutine)
    try:
        return task.exception(), cancelled
    finally:
        # No frame local keeps the task: its error's traceback can hold this
        # frame (a task started eagerly ran its first step inside our call).
        del task



# How long a claim on its way is given to land once its caller is cancelled
# (see claimed): a working store's claim lands in moments.
CLAIM_GRACE = 5.0


async def claimed(
    claim: Coroutine[Any, Any, T], release: Callable[[T], Coroutine[Any, Any, None]]
) -> T:
    """What ``claim`` (a lease's claim) gives, run in a task of its own;
    should the caller be cancelled meanwhile, what it claimed is given back
    with ``release`` before the ``CancelledError`` is raised.

    A durable store's claim is a write, and a write once sent lands whatever
    the task waiting for it does (the SQLite store's writer thread, a
    PostgreSQL server). Abandoned by a cancelled caller, it would hold the
    saga for nobody until the lease ran out — and the one who comes next is
    often the same run a moment later: the parent unwinding the child whose
    resume the cancellation cut off, or, after a worker stopped mid-claim,
    the other workers (S8, S10, S15). So a cancelled caller lets the claim
    land and gives it back — for at most ``CLAIM_GRACE`` seconds: a claim
    still not done by then (a server out of reach) gets the cancellation
    too, so that the caller's cancellation never waits on the network
    (the driver aborts its query; what it claimed, if anything, runs out —
    but for a PostgreSQL store's ``claim`` and ``claim_saga``, which give
    back what they took once that transaction has ended: see
    ``PostgresSagaStore.claim``).
    A SQLite store's claim cannot be aborted (its writer thread may be
    waiting for another process's lock): the store gives back itself what
    such a claim takes, once it lands (``_sqlite_workers.LeaseFuture``)."""
    loop = asyncio.get_running_loop()
    signal = _Signal(loop)
    task = own_task(_signalling(claim, signal))
    cancelled: asyncio.CancelledError | None = None
    try:
        if not task.done():
            try:
                await signal.waiter  # fired by the task as its last act
            except asyncio.CancelledError as caught:
                if task.done() and task.cancelled():
                    raise  # the task itself was cancelled (the loop is closing)
                cancelled = caught
                signal.waiter = loop.create_future()
            if cancelled is None:
                task, cancelled = await _waited_for(task, signal)  # ends in this step
        if cancelled is None:
            return task.result()
        task, _ = await _waited_for(task, signal, until=loop.time() + CLAIM_GRACE)
        if not task.done():
            task.cancel()
            signal.waiter = loop.create_future()
            task, _ = await _waited_for(task, signal)
        if not task.cancelled() and task.exception() is None:
            # Its error is not the caller's to hear: the lease expires on its own.
            await settle(release(task.result()))
        raise cancelled_again(cancelled)
    finally:
        if task.done():
            # A task cancelled before its first step (the loop shutting down
            # on 3.11, which starts no task eagerly) never ran ``claim``:
            # closed, it claimed nothing and says nothing ("coroutine ...
            # was never awaited"). Done any other way, this is a no-op.
            claim.close()
        del task  # its error's traceback can hold this frame (see settle)


class _Signal:
    """Wakes the waiting caller from inside the task, as its last act: one trip
    through the event loop fewer than waiting on the task's own completion."""

    __slots__ = ("waiter",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.waiter: asyncio.Future[None] = loop.create_future()

    def fire(self) -> None:
        waiter = self.waiter
        if not waiter.done():
            try:
                waiter.set_result(None)
            except RuntimeError:
                # The task was destroyed pending, its loop closed (a second
                # Ctrl-C cut ``asyncio.run``'s shutdown short): the garbage
                # collector closes its coroutine, and nobody waits any more.
                if not waiter.get_loop().is_closed():
                    raise

    def fired(self, _task: object) -> None:
        """``fire``, as a done callback."""
        self.fire()


async def _signalling(coroutine: Coroutine[Any, Any, T], signal: _Signal) -> T:
    try:
        return await coroutine
    finally:
        signal.fire()


async def shielded(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end, whatever happens to the calling task.

    Like ``asyncio.shield``, but when we are cancelled meanwhile we still
    *wait* for it — compensation must not be abandoned half-way — and raise
    ``CancelledError`` only once it has finished.

    It always runs in a task of its own (made as ``own_task`` makes one),
    from its first line: a compensation that enters ``asyncio.timeout`` (a
    step's ``timeout``, or its own) binds that timeout to the current task,
    and must find its own task there, or the timeout would cancel the caller
    instead of the compensation.
    """
    cancelled: asyncio.CancelledError | None = None
    if sys.version_info >= (3, 12):
        # Started eagerly: a coroutine that never waits (compensations that
        # touch only memory) is done already, with nothing to wait for.
        task = asyncio.Task(coroutine, loop=_running_loop(), eager_start=True)
        if task.done() and cancellation_pending():
            # Done inside our own step: we never waited, so a cancellation
            # asked for meanwhile (a compensate cancelled its caller) has
            # not landed. It lands here, as in 3.11's turn below: reported
            # once the work is done, never dropped with the result taken.
            cancelled = await land_pending_cancellation()
    else:
        # No eager start: let the loop run the task's first step, which comes
        # before our own next step (both are queued, the task's first), so a
        # coroutine that never waits is done when we resume — one trip
        # through the loop, no future of our own.
        task = _running_loop().create_task(coroutine)
        try:
            await _one_turn()
        except asyncio.CancelledError as caught:
            cancelled = caught  # reported once the task is done, like any other
    if cancelled is None and task.done():
        # The common case, on the hot path of every failed saga: done, and
        # nobody cancelled us meanwhile.
        try:
            return task.result()
        finally:
            del task  # see below
    if not task.done():
        # It waits: we wait on a future of our own (never on the task itself,
        # which our cancellation would cancel), resolved once the task is done.
        signal = _Signal(task.get_loop())
        task.add_done_callback(signal.fired)
        task, later = await _waited_for(task, signal)
        cancelled = cancelled or later
    error: BaseException | None = None
    try:
        if cancelled is not None:
            # What the work let out (a BaseException: it handles every
            # Exception itself) outranks our cancellation, and must not be
            # left unretrieved, for asyncio to log when the task is freed —
            # except SystemExit and KeyboardInterrupt. Those left the event
            # loop already, out of the work's own task's step (asyncio lets
            # them out where they are raised), and what cancelled us since is
            # the shutdown that followed (asyncio.run cancels every task
            # left). Raised again here, one would leave the loop a second
            # time, out of that shutdown, and stop it half-way: tasks
            # destroyed pending, stores never closed. We end cancelled
            # instead, as asyncio ends a cancelled task whose awaited one let
            # such an error out; a run that must know that the process is
            # ending learns it from PROCESS_ENDING.
            error = None if task.cancelled() else task.exception()
            if isinstance(error, (SystemExit, KeyboardInterrupt)):
                ending = PROCESS_ENDING.get()
                if ending is not None:
                    ending.append(error)
                error = None
            raise error if error is not None else cancelled_again(cancelled)
        return task.result()
    finally:
        # No local keeps the task or what it let out: an error it returns or
        # raises can hold this frame in its traceback (the task started
        # eagerly, inside our call) — a reference cycle.
        del task
        error = None


@types.coroutine
def _one_turn() -> Generator[None, None, None]:
    """Give the event loop one turn (what ``asyncio.sleep(0)`` does, less its coroutine)."""
    yield


async def _to_the_end(
    coroutine: Coroutine[Any, Any, T],
) -> tuple[asyncio.Task[T], asyncio.CancelledError | None]:
    """Run ``coroutine`` in a task of its own and wait until it is done,
    whatever happens to us meanwhile; the task, and the cancellation we got
    while waiting, if any."""
    loop = asyncio.get_running_loop()
    signal = _Signal(loop)
    return await _waited_for(own_task(_signalling(coroutine, signal)), signal)


async def _waited_for(
    task: asyncio.Task[T], signal: _Signal, until: float | None = None
) -> tuple[asyncio.Task[T], asyncio.CancelledError | None]:
    """Wait until ``task`` is done (or the loop's time ``until``), whatever
    happens to us meanwhile (woken by ``signal``); the cancellation we got
    while waiting (the first: it carries the caller's message), if any."""
    loop = asyncio.get_running_loop()
    cancelled: asyncio.CancelledError | None = None
    # The timer's firing, not the clock, ends the wait: a loop runs a timer
    # up to its clock's resolution early, and ``loop.time() < until`` then
    # held on, each turn a ``sleep(0)`` — a busy loop until the clock moved,
    # and for ever on a clock that moves only to the next timer (a test's).
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        signal.fire()

    timer = None if until is None else loop.call_at(until, expire)
    try:
        while not task.done() and not expired:
            try:
                if signal.waiter.done():
                    await asyncio.sleep(0)  # fired: the task ends in its current step
                else:
                    await signal.waiter
            except asyncio.CancelledError as caught:
                if task.done() and task.cancelled():
                    raise  # the task itself was cancelled (the loop is closing)
                cancelled = cancelled or caught
                if signal.waiter.cancelled():
                    signal.waiter = loop.create_future()
    finally:
        if timer is not None:
            timer.cancel()
    return task, cancelled
