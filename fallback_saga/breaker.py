"""CircuitBreaker: stop calling a failing service, probe it, resume (rule S9).

The breaker knows nothing about sagas: it guards any awaitable. Its state
machine is split into *acquire a permit* and *record the outcome* so that no
lock is ever held across the awaited call. A permit is the breaker's
*generation* at the moment it was granted; every transition starts a new
generation, so an outcome that arrives after a transition (a slow call from
before the circuit opened, a probe from an earlier half-open round) is stale
and never causes a transition.

The closed path takes no lock and allocates nothing: granting a permit is two
attribute reads, and a success with no pending failures writes nothing.

A call made while a guarded call of the same breaker is in progress in the
same task is *nested*: it passes straight through (no permit, no outcome, no
rejection) and only the outermost call counts. The closed path marks nothing
to make this possible (setting and resetting a context variable per call
would nearly double its cost): an outer ``call()`` is found by walking the
current task's frames, and only where it matters — on a failure, on a
success with failures to reset, and off the closed path. ``async with``
blocks are found on their per-task permit stack (``permit_stack``).

With a ``state_store`` (see ``shared_state``), breakers of the same name in
several processes share their state: counting stays local, transitions are
published with a compare-and-set, and the shared row is pulled at most once
per ``sync_interval`` (that side of the breaker: ``breaker_sync``). The
closed path then adds one clock read and a float comparison; without a store
it is unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from inspect import isawaitable
from types import FrameType, TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    ParamSpec,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from .breaker_sync import SharedStateSync
from .events import collect_hooks, emit, listener_tuple
from .log_lines import library_logger
from .permit_stack import (
    LAST_OWNER,
    Entry,
    closed_elsewhere,
    collecting,
    drop_over,
    entered_here,
    nested,
    new_stack,
    thrown_in_at_yield,
    unstack,
    watch_collections,
)
from .shielding import outer_run_cancelled, running_task
from .status import CircuitState

if TYPE_CHECKING:
    from .shared_state import CircuitStateStore

_log = library_logger("fallback_saga")

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerProtocol",
    "CircuitOpenError",
    "CircuitState",
]

T = TypeVar("T")
P = ParamSpec("P")

ExcludeRule = type[BaseException] | Callable[[BaseException], bool]


_CLOSED = CircuitState.CLOSED

_getframe = sys._getframe

_asyncio_current_task = asyncio.current_task
_weakref = weakref.ref


class CircuitOpenError(Exception):
    """The circuit is open (or its half-open trials are all taken): the call was
    not made. ``retry_after`` is how many seconds until a trial may be let through."""

    def __init__(self, breaker: str, retry_after: float) -> None:
        self.breaker = breaker
        self.retry_after = retry_after
        super().__init__(f"circuit {breaker!r} is open; retry after {retry_after:.3f}s")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.breaker, self.retry_after))


@runtime_checkable
class CircuitBreakerProtocol(Protocol):
    """What a ``Fallback`` needs from a breaker, so any breaker can be plugged in.

    ``call`` runs ``fn`` under the breaker; ``is_open_error`` recognises the
    breaker's own "rejected without calling" error. An adapter for another
    library is a few lines.
    """

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T: ...

    def is_open_error(self, error: BaseException) -> bool: ...


class CircuitBreaker(SharedStateSync):
    """CLOSED → OPEN after ``fail_max`` consecutive counted failures; OPEN rejects
    with ``CircuitOpenError`` for ``reset_timeout`` seconds; then HALF_OPEN lets
    ``half_open_max_calls`` trial calls through at once: a success closes the
    circuit, a failure re-opens it.

    * ``exclude`` — exception types and/or predicates ``(error) -> bool`` for
      errors that say nothing about the service's health (business errors).
      They are ignored: neither counted nor resetting the count, re-raised as is.
    * The error that trips the breaker is re-raised unchanged.
    * A cancelled call returns its permit and counts as nothing.
    * A call made while a guarded call of this same breaker is in progress in
      the same task is *nested*: it passes straight through — it takes no
      permit, records no outcome and is never rejected — and only the
      outermost call counts (any mix of ``call``, decorator and ``async
      with``). A task started inside a guarded call is not nested: its calls
      take their own permits. Other breakers nest normally.
    * If half-open trials never report back (a hung call), a new round of
      trials is allowed after another ``reset_timeout``; late outcomes of the
      old round are ignored.
    * ``clock`` — zero-argument callable returning monotonic seconds
      (default ``time.monotonic``); inject a fake one in tests.
    * ``state_store`` — a ``CircuitStateStore`` through which breakers with the
      same ``name`` (required then) in other processes share OPEN / CLOSED /
      HALF_OPEN; the shared row is pulled at most every ``sync_interval``
      seconds. Only one instance at a time runs half-open trials. If the
      store fails, the breaker goes on with its local state and tells its
      listeners (``breaker_state_store_failed``). ``wall_clock`` (default
      ``time.time``) converts reopen times to and from the other processes.

    Thread-safe; usable as ``await breaker.call(fn, ...)``, as a decorator of
    async functions, and as ``async with breaker:``.
    """

    __slots__ = (
        "_clock",
        "_exclude_predicates",
        "_exclude_types",
        "_failures",
        "_gate",
        "_generation",
        "_half_open_in_flight",
        "_half_open_until",
        "_lock",
        "_on_change",
        "_open_until",
        "_permits",
        "_state",
        "fail_max",
        "half_open_max_calls",
        "name",
        "reset_timeout",
    )

    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        exclude: ExcludeRule | Iterable[ExcludeRule] = (),
        half_open_max_calls: int = 1,
        clock: Callable[[], float] | None = None,
        name: str | None = None,
        listeners: Iterable[object] = (),
        state_store: CircuitStateStore | None = None,
        sync_interval: float = 1.0,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if isinstance(fail_max, bool) or not isinstance(fail_max, int) or fail_max < 1:
            raise ValueError(f"fail_max must be an int >= 1, got {fail_max!r}")
        if (
            isinstance(reset_timeout, bool)
            or not isinstance(reset_timeout, int | float)
            or not 0 < reset_timeout < float("inf")
        ):
            raise ValueError(f"reset_timeout must be seconds > 0, got {reset_timeout!r}")
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {clock!r}")
        if (
            isinstance(half_open_max_calls, bool)
            or not isinstance(half_open_max_calls, int)
            or half_open_max_calls < 1
        ):
            raise ValueError(
                f"half_open_max_calls must be an int >= 1, got {half_open_max_calls!r}"
            )
        if state_store is not None:
            if not (callable(getattr(state_store, "read", None))
                    and callable(getattr(state_store, "compare_and_set", None))):
                raise TypeError(
                    f"state_store must implement CircuitStateStore, got {state_store!r}"
                )
            if name is None:
                raise ValueError("a breaker with a state_store needs an explicit name")
        if (
            isinstance(sync_interval, bool)
            or not isinstance(sync_interval, int | float)
            or not 0 < sync_interval < float("inf")
        ):
            raise ValueError(f"sync_interval must be seconds > 0, got {sync_interval!r}")
        if wall_clock is not None and not callable(wall_clock):
            raise TypeError(f"wall_clock must be a zero-argument callable, got {wall_clock!r}")
        types: list[type[BaseException]] = []
        predicates: list[Callable[[BaseException], bool]] = []
        # One rule alone (``exclude=BusinessError``) is a rule, not an iterable
        # of them; a string would be taken apart letter by letter.
        if isinstance(exclude, type | str) or callable(exclude):
            exclude = (exclude,)
        for rule in exclude:
            if isinstance(rule, type) and issubclass(rule, BaseException):
                types.append(rule)
            elif callable(rule) and not isinstance(rule, type):
                predicates.append(rule)
            else:
                raise TypeError(
                    f"exclude takes exception types or predicates (error) -> bool, got {rule!r}"
                )
        self.fail_max = fail_max
        self.reset_timeout = float(reset_timeout)
        self.half_open_max_calls = half_open_max_calls
        self.name = name if name is not None else f"breaker-{id(self):x}"
        self._exclude_types = tuple(types)
        self._exclude_predicates = tuple(predicates)
        self._clock = clock or time.monotonic
        listeners = listener_tuple(listeners)  # read twice: an iterator would be spent
        self._on_change = collect_hooks(listeners, "breaker_state_changed")
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._failures = 0
        self._open_until = 0.0
        self._half_open_until = 0.0
        self._half_open_in_flight = 0
        # ``_gate`` is CLOSED exactly when ``call()`` may skip every check: it
        # follows ``_state`` for a local breaker and is never CLOSED for a
        # shared one, whose closed path must also look at ``_next_sync``.
        self._gate: CircuitState | None = CircuitState.CLOSED
        self._init_sharing(state_store, sync_interval, wall_clock, listeners)
        if state_store is not None:
            self._gate = None
        watch_collections()
        # Per-task stack of the permits taken by ``async with`` blocks.
        self._permits = new_stack(self.name)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failures={self._failures}/{self.fail_max})"
        )

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN circuit whose timeout passed reads HALF_OPEN
        (with a ``state_store``: OPEN until a call claims the trial round)."""
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            with self._lock:
                change = self._maybe_half_open(self._clock())
            self._announce(change)
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive counted failures while CLOSED."""
        return self._failures

    @property
    def half_open_calls_in_flight(self) -> int:
        return self._half_open_in_flight

    def is_open_error(self, error: BaseException) -> bool:
        return isinstance(error, CircuitOpenError)

    @property
    def state_store(self) -> CircuitStateStore | None:
        return self._shared

    @property
    def instance_id(self) -> str:
        """Identifies this breaker object as the owner of shared half-open trials."""
        return self._instance_id

    # ------------------------------------------------------------------ manual control

    def open(self) -> None:
        """Open the circuit now (e.g. from an operator command or a health check)."""
        self._force(CircuitState.OPEN)

    def close(self) -> None:
        """Close the circuit now and forget counted failures."""
        self._force(CircuitState.CLOSED)

    def _force(self, state: CircuitState) -> None:
        with self._lock:
            change = self._transition(state, self._clock())
            generation = self._pending = self._generation
        try:
            self._announce(change)
        finally:  # even past a listener's BaseException: a pending transition is published
            if self._shared is not None:
                self._publish(generation, force=True)

    # ------------------------------------------------------------------ permits

    def acquire(self) -> int:
        """Ask to make one call: returns a permit, or raises ``CircuitOpenError``.

        Every permit must be handed back exactly once, through
        ``record_success``, ``record_failure`` or ``release``.
        """
        if self._shared is not None:
            return self._acquire_shared()
        generation = self._generation
        state = self._state
        if state is CircuitState.CLOSED:
            return generation
        if state is CircuitState.OPEN:
            now = self._clock()
            remaining = self._open_until - now
            if remaining > 0:  # the common rejection: decided without the lock
                raise CircuitOpenError(self.name, remaining)
        return self._acquire_slow()

    def _acquire_slow(self) -> int:
        with self._lock:
            now = self._clock()
            change = self._maybe_half_open(now)
            state = self._state
            if state is CircuitState.OPEN:
                retry_after = self._open_until - now
            elif state is CircuitState.HALF_OPEN:
                if (
                    self._half_open_in_flight >= self.half_open_max_calls
                    and now >= self._half_open_until
                ):
                    # The trials never reported back: start a new round; their
                    # late outcomes belong to the old generation and are ignored.
                    self._new_trial_round(now)
                if self._half_open_in_flight < self.half_open_max_calls:
                    self._half_open_in_flight += 1
                    retry_after = -1.0
                else:
                    retry_after = self._half_open_until - now
            else:
                retry_after = -1.0
            generation = self._generation
        self._announce(change)
        if retry_after >= 0:
            raise CircuitOpenError(self.name, max(retry_after, 0.0))
        return generation

    def record_success(self, permit: int) -> None:
        """The permitted call succeeded."""
        if permit != self._generation:
            return
        state = self._state
        if state is CircuitState.CLOSED:
            if self._failures:
                with self._lock:
                    if permit == self._generation:
                        self._failures = 0
            return
        if state is CircuitState.HALF_OPEN:
            with self._lock:
                change = None
                if permit == self._generation and self._state is CircuitState.HALF_OPEN:
                    change = self._transition(CircuitState.CLOSED, self._clock())
                    self._pending = self._generation
                generation = self._generation
            try:
                self._announce(change)
            finally:
                if change is not None and self._shared is not None:
                    self._publish(generation)

    def record_failure(self, permit: int) -> None:
        """The permitted call failed with an error that counts."""
        with self._lock:
            change = None
            if permit == self._generation:
                if self._state is CircuitState.CLOSED:
                    self._failures += 1
                    if self._failures >= self.fail_max:
                        change = self._transition(CircuitState.OPEN, self._clock())
                elif self._state is CircuitState.HALF_OPEN:
                    change = self._transition(CircuitState.OPEN, self._clock())
                if change is not None:
                    self._pending = self._generation
            generation = self._generation
        try:
            self._announce(change)
        finally:
            if change is not None and self._shared is not None:
                self._publish(generation)

    def release(self, permit: int) -> None:
        """Return a permit whose outcome says nothing (cancelled, or an excluded error)."""
        if permit != self._generation or self._state is not CircuitState.HALF_OPEN:
            return
        with self._lock:
            if (
                permit == self._generation
                and self._state is CircuitState.HALF_OPEN
                and self._half_open_in_flight > 0
            ):
                self._half_open_in_flight -= 1

    def is_excluded(self, error: BaseException) -> bool:
        """Whether ``error`` is one the breaker ignores (``exclude``).

        A predicate that raises is logged and counts as "not excluded": the
        permit is still handed back and the service's error still propagates.
        """
        if self._exclude_types and isinstance(error, self._exclude_types):
            return True
        for predicate in self._exclude_predicates:
            try:
                if predicate(error):
                    return True
            except Exception:
                _log.exception("circuit breaker %s: exclude predicate %r raised", self.name,
                               predicate)
        return False

    def _record(self, permit: int, error: BaseException | None) -> None:
        if error is None:
            self.record_success(permit)
        elif (
            isinstance(error, Exception)
            and not self.is_excluded(error)
            # A call that fails while its task is being cancelled was
            # cancelled: the error is the cancellation, converted by what
            # it awaited (a database driver cancelled mid-query raises an
            # error of its own), not the service failing. Asked here, on a
            # failure only: the closed path stays as it is. (running_task:
            # a call driven by hand, with no loop, is nobody's to cancel.
            # outer_run_cancelled: a saga's group member, whose saga is
            # being cancelled — the request has not reached its task yet.)
            and not running_task().cancelling()
            and not outer_run_cancelled()
        ):
            self.record_failure(permit)
        else:  # a cancellation (converted or not), other BaseExceptions, an excluded error
            self.release(permit)

    # ------------------------------------------------------------------ transitions (lock held)

    def _maybe_half_open(self, now: float) -> tuple[CircuitState, CircuitState] | None:
        # A shared breaker goes half-open only by winning the claim (_claim_trials).
        if self._state is CircuitState.OPEN and now >= self._open_until and self._shared is None:
            return self._transition(CircuitState.HALF_OPEN, now)
        return None

    def _transition(
        self, new: CircuitState, now: float
    ) -> tuple[CircuitState, CircuitState] | None:
        old = self._state
        self._state = new
        if self._shared is None:
            self._gate = new
        self._generation += 1
        self._failures = 0
        self._half_open_in_flight = 0
        if new is CircuitState.OPEN:
            self._open_until = now + self.reset_timeout
        elif new is CircuitState.HALF_OPEN:
            self._half_open_until = now + self.reset_timeout
        return None if old is new else (old, new)

    def _new_trial_round(self, now: float) -> None:
        self._generation += 1
        self._half_open_in_flight = 0
        self._half_open_until = now + self.reset_timeout

    def _reject_until(self, until: float) -> None:
        self._open_until = until

    def _announce(self, change: tuple[CircuitState, CircuitState] | None) -> None:
        if change is not None and self._on_change:
            emit(self._on_change, self.name, change[0].value, change[1].value)

    # ------------------------------------------------------------------ shared state

    def _acquire_shared(self) -> int:
        """``acquire`` for a breaker with a state store: pull when due, claim the
        trial round when the reopen time passes, then the usual permit rules.

        Only the owner of a live claim lets trials through: an OPEN breaker
        always rejects (even one whose claim just lost to a row whose time has
        already passed: the next call claims), and an owner whose claim has
        expired renews it before its next trial, whatever its free slots.
        """
        now = self._clock()
        if now >= self._next_sync:
            self._sync(now)
        generation = self._generation
        state = self._state
        if state is CircuitState.CLOSED:
            return generation
        if state is CircuitState.OPEN:
            remaining = self._open_until - now
            if remaining > 0:
                raise CircuitOpenError(self.name, remaining)
            self._claim_trials(generation)
        elif now >= self._half_open_until:
            # Our claim ran out (trials that never reported back, or simply
            # time): another instance may have taken the round over, so a new
            # trial needs a renewed claim, which starts a new round.
            self._claim_trials(generation)
        with self._lock:
            now = self._clock()
            state = self._state
            granted = False
            if state is CircuitState.OPEN:
                retry_after = self._open_until - now
            elif state is CircuitState.HALF_OPEN:
                retry_after = self._half_open_until - now
                if retry_after > 0 and self._half_open_in_flight < self.half_open_max_calls:
                    self._half_open_in_flight += 1
                    granted = True
            else:
                retry_after = 0.0
                granted = True
            generation = self._generation
        if not granted:
            raise CircuitOpenError(self.name, max(retry_after, 0.0))
        return generation

    # ------------------------------------------------------------------ ways to call

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the breaker.

        Nested inside a guarded call of this breaker in the same task, the call
        passes straight through: see ``_inside``.
        """
        # The closed path, with acquire() and record_success() inlined: two
        # attribute reads before the call, one after, no lock, no allocation.
        # The generation is read first: if a transition slips in between, the
        # permit is already stale and its outcome is ignored. Every transition
        # bumps the generation, so an unchanged one means "still closed".
        # Nesting is looked for only where it changes something: on a failure,
        # on a success with failures to reset, and off the closed path.
        permit = self._generation
        if self._gate is not _CLOSED and (
            # A local breaker's gate follows its state; a shared one's is never
            # CLOSED, and its closed path goes on unless a pull is due.
            self._state is not _CLOSED or self._clock() >= self._next_sync
        ):
            if self._inside(_getframe(), self._permits.get()):
                # Nested: the outer call's permit covers this one and its
                # outcome is the one recorded. Never rejected by this breaker.
                returned = fn(*args, **kwargs)
                if not isawaitable(returned):
                    raise _not_awaitable(fn, returned)
                return await returned
            return await self._call_guarded(fn, *args, **kwargs)
        try:
            # Without keywords, a plain call: unpacking an empty dict into the
            # call costs a tenth of this path.
            returned = fn(*args, **kwargs) if kwargs else fn(*args)  # type: ignore[call-arg]
        except BaseException as error:
            if not collecting() and not self._inside(_getframe(), self._permits.get()):
                self._record(permit, error)
            raise
        # Awaited in a try of its own (free in 3.11+: a table, not code), so
        # that a function that is no coroutine function is told apart only
        # once awaiting what it returned failed: no check on this path.
        try:
            result = await returned
        except BaseException as error:
            if type(error) is TypeError and not isawaitable(returned):
                # A misuse, not the service failing: nothing to record.
                raise _not_awaitable(fn, returned) from None
            # Inside a collection: see _call_guarded.
            if not collecting() and not self._inside(_getframe(), self._permits.get()):
                self._record(permit, error)
            raise
        # A stale permit's success records nothing: no need to look further.
        if (
            self._failures and permit == self._generation
            and not collecting() and not self._inside(_getframe(), self._permits.get())
        ):
            self.record_success(permit)
        return result

    async def _call_guarded(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        permit = self.acquire()
        try:
            returned = fn(*args, **kwargs)
        except BaseException as error:
            self._record(permit, error)
            raise
        if not isawaitable(returned):
            # A misuse, not the service failing: the permit (a half-open
            # trial's slot) goes back unrecorded.
            self.release(permit)
            raise _not_awaitable(fn, returned)
        try:
            result = await returned
        except BaseException as error:
            if not collecting():
                self._record(permit, error)
            # Else the garbage collector is closing this call's coroutine: its
            # task was destroyed pending. The collector may have interrupted,
            # in this thread, a section holding this breaker's lock (not
            # reentrant: taking it would hang the thread, its event loop with
            # it), so nothing is recorded or handed back — as for an 'async
            # with' block closed by the collector (__aexit__): a half-open
            # trial held here is one that never reports back, and a new round
            # is let through reset_timeout after this one began.
            raise
        if not collecting():  # a function that swallowed the GeneratorExit
            self.record_success(permit)
        return result

    def _inside(
        self, frame: FrameType, top: Entry | None, block: FrameType | None = None
    ) -> bool:
        """Whether the call running in ``frame`` (``call``, ``__aenter__`` or
        ``__aexit__``) is nested: made while a guarded call of this breaker is
        in progress in the same task (``permit_stack.nested``); ``block``
        names the ``async with`` block entering or leaving, if that is it."""
        return nested(self._permits, top, frame, block, _CALL_CODE, self)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an async function so every call goes through the breaker.

        The result is a coroutine function (typed as one: ``asyncio.create_task``
        and ``asyncio.run`` take what it returns)."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def __aenter__(self) -> CircuitBreaker:
        permit: int | None
        # The same test as call()'s, for the same closed path.
        closed_path = self._gate is _CLOSED or (
            self._state is _CLOSED and self._clock() < self._next_sync
        )
        if closed_path:
            # As in call(): nothing to decide yet, the permit is the generation.
            permit = self._generation
        elif self._inside(_getframe(), self._permits.get(), _getframe(1)):
            permit = None  # nested: the outer call's permit covers this block
        else:
            permit = self.acquire()
        owner: weakref.ref[asyncio.Task[Any]] | None
        try:  # (_current_task inlined: this is the closed path)
            task = _asyncio_current_task()
        except RuntimeError:  # no running event loop: a coroutine driven by hand
            task = None
        if task is None:  # (a loop callback, or no loop)
            owner = None
        else:
            owner = LAST_OWNER.ref
            if owner() is not task:
                owner = LAST_OWNER.ref = _weakref(task)
        outer = self._permits.get()
        if outer is not None:
            # An async generator dropped inside its block (its exit ran
            # elsewhere) leaves its entry here: it goes, so that a task
            # dropping such generators does not pile them up.
            outer = drop_over(outer)
        # A per-task stack of permits (immutable entries), so nested and
        # concurrent ``async with`` blocks each hand back their own permit, and
        # the calls inside a block know they are nested. The frame entering
        # names the block: generators' blocks do not end in the order they
        # began.
        # (Nothing more is asked of the frame here: one attribute read of it
        # costs this path a twentieth. An exit stack's and an
        # asynccontextmanager's blocks are told apart when it matters: see
        # permit_stack.)
        self._permits.set((permit, closed_path, owner, outer, _getframe(1)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        top = self._permits.get()
        if (
            exc is None
            and top is not None
            and top[1]
            and top[4] is _getframe(1)
            and not (self._failures and top[0] == self._generation)
        ):
            # The closed path: a block let in on it, leaving from the frame
            # that entered it, with nothing to record (a success, no failures
            # to reset). Its entry goes and nothing else is touched — also
            # inside a garbage collection (see _leave), where an entry named
            # by this block's own frame is its own: on its dead task's stack,
            # or a copy of it in a task or callback started in the block.
            self._permits.set(top[3])  # type: ignore[arg-type]
            return
        self._leave(top, exc_type, exc)

    def _leave(
        self,
        top: Entry | None,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
    ) -> None:
        """``__aexit__`` off its closed path: a failure, a success with
        failures to reset, a block let in off the closed path, or one whose
        entry is not on top (see ``permit_stack.unstack``)."""
        if collecting():
            # The garbage collector is closing this block's coroutine: its task
            # was destroyed pending (asyncio keeps tasks only weakly: one
            # awaiting a future nobody else holds is garbage; or its loop
            # closed: a second Ctrl-C cut asyncio.run's shutdown short). This
            # runs in whatever context is current — another task's step,
            # perhaps inside its own block of this breaker, whose entry is the
            # top of the stack seen here and names the task running: popping
            # it took that block's permit and left its own exit without one.
            # (A block's entry says which task made it, not which block: that
            # would cost a frame per block on the closed path.) Nothing is
            # recorded or handed back. This block's permit is on its dead
            # task's stack, out of reach; and the collector may have
            # interrupted, in this thread, a section holding this breaker's
            # lock, which is not reentrant. A half-open trial it held is one
            # that never reports back: a new round of trials is let through
            # reset_timeout after this one began, as for a hung call. Asked
            # whatever the block leaves with: its body may have turned the
            # GeneratorExit into another error, or swallowed it. (Telling a
            # close by the collector from the kind of frame closed — a
            # coroutine, not an async generator — gets wrong an
            # asynccontextmanager around the breaker, an AsyncExitStack in an
            # async generator and a coroutine closed by hand in a task.)
            return
        if exc_type is GeneratorExit and not entered_here(top):
            # The block's coroutine is closed away from its task, without the
            # collector (dropped by whatever held it last, in another task or
            # none): its permit stack is not the one here. Its permit is not
            # handed back either. (Left by an exit stack: its entry there is
            # then over, see permit_stack.block_over.)
            closed_elsewhere(_getframe(2))
            return
        caller = _getframe(2)  # the frame leaving the block (__aexit__'s caller)
        if top is not None and top[4] is caller:
            entry = top
            self._permits.set(top[3])  # type: ignore[arg-type]
        else:
            entry = unstack(self._permits, top, caller)
        permit, closed_path, _, outer, block = entry
        if permit is None:
            return
        if closed_path:
            # Let in on the closed path: only a failure, or a success with
            # failures to reset, records something; only then is nesting
            # looked for, among the blocks entered before this one.
            if exc is None and not (self._failures and permit == self._generation):
                return
            if self._inside(_getframe(), outer, block):  # type: ignore[arg-type]
                return
        if exc is not None and thrown_in_at_yield(block, exc):
            # Thrown in by the consumer at the yield a stream is parked at
            # (``athrow``): the consumer's error, counted by its own call if
            # guarded, and no part of this block's guarded work (as its
            # calls are not, see permit_stack). Counted here too, one
            # failure was two.
            self.release(permit)
            return
        self._record(permit, exc)


_CALL_CODE = CircuitBreaker.call.__code__


def _not_awaitable(fn: object, returned: object) -> TypeError:
    """The error for a function that is not async under the breaker: Python's
    own ("object int can't be used in 'await' expression") named neither the
    function nor what to do. Found at call time, not when decorating: a plain
    function that returns an awaitable is as good as a coroutine function."""
    name = getattr(fn, "__qualname__", None)
    shown = f"{name}()" if isinstance(name, str) else repr(fn)[:200]
    return TypeError(
        f"a circuit breaker awaits what its function returns, and {shown} (it ran) returned "
        f"{type(returned).__name__}, not an awaitable: make it an 'async def' function "
        f"(blocking code: an 'async def' that runs it with 'await asyncio.to_thread(...)')"
    )
