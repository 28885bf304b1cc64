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

This module is the state machine and the class users make; the ways in are
its base classes, one module each: ``call()`` and the decorator
(``breaker_calls``), ``async with`` (``breaker_blocks``), and the shared
state's side (``breaker_sync``).

With a ``state_store`` (see ``shared_state``), breakers of the same name in
several processes share their state: counting stays local, transitions are
published with a compare-and-set, and the shared row is pulled at most once
per ``sync_interval`` (that side of the breaker: ``breaker_sync``). The
closed path then adds one clock read and a float comparison; without a store
it is unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from .breaker_blocks import GuardedBlocks
from .breaker_sync import SharedStateSync
from .events import collect_hooks, emit, listener_tuple
from .given_numbers import finite_number, number_given, shown
from .log_lines import library_logger
from .permit_stack import new_stack, watch_collections
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

_FOREVER = float("inf")

ExcludeRule = type[BaseException] | Callable[[BaseException], bool]


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


class CircuitBreaker(GuardedBlocks, SharedStateSync):
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
      (default ``time.monotonic``); inject a fake one in tests. A reading
      that is no finite number (NaN, an infinity) is a ``ValueError`` naming
      the breaker's clock, raised by the call that needed the time: the
      failure that trips the circuit (the service's error is its
      ``__cause__``; the circuit stays CLOSED), ``open()``, any call while
      it is OPEN or HALF_OPEN, or reading ``state`` while OPEN. The closed
      path reads no clock (a shared breaker's reads it to know when to
      pull, unchecked there: a bad reading is found at the next trip or
      pull).
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
        _check_settings(
            fail_max, reset_timeout, name, clock, half_open_max_calls, state_store,
            sync_interval, wall_clock,
        )
        self._exclude_types, self._exclude_predicates = _exclude_rules(exclude)
        self.fail_max = fail_max
        self.reset_timeout = float(reset_timeout)
        self.half_open_max_calls = half_open_max_calls
        self.name = name if name is not None else f"breaker-{id(self):x}"
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
        if self._state is CircuitState.OPEN and self._now() >= self._open_until:
            with self._lock:
                change = self._maybe_half_open(self._now())
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
            # No time is kept for CLOSED: an operator's close() works whatever the clock reads.
            now = self._now() if state is CircuitState.OPEN else self._clock()
            change = self._transition(state, now)
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
        generation = self._generation
        state = self._state
        if state is CircuitState.CLOSED:
            # A shared breaker's closed path too (``_acquire_shared`` inlined:
            # a method call is most of what that path costs): closed, and
            # no pull of the shared row due.
            if self._shared is None or self._clock() < self._next_sync:
                return generation
            return self._acquire_shared()
        if self._shared is not None:
            return self._acquire_shared()
        if state is CircuitState.OPEN:
            now = self._clock()
            remaining = self._open_until - now
            # The common rejection: decided without the lock. A clock that
            # read NaN or an infinity makes ``remaining`` one too: the slow
            # path says so (``_now``), rather than rejecting for ever.
            if 0 < remaining < _FOREVER:
                raise CircuitOpenError(self.name, remaining)
        return self._acquire_slow()

    def _acquire_slow(self) -> int:
        with self._lock:
            now = self._now()
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
                    # No time is kept for CLOSED: the reading is not checked.
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
                        change = self._transition(CircuitState.OPEN, self._now())
                elif self._state is CircuitState.HALF_OPEN:
                    change = self._transition(CircuitState.OPEN, self._now())
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
            try:
                self.record_failure(permit)
            except ValueError as broken_clock:
                # The trip needed the time and the clock gave none (``_now``):
                # the service's error is kept as this one's cause.
                raise broken_clock from error
        else:  # a cancellation (converted or not), other BaseExceptions, an excluded error
            self.release(permit)

    def _now(self) -> float:
        """The clock's reading, wherever a decision is made with it (a trip,
        and every call while not CLOSED): a reading that is no finite number
        is a ``ValueError`` naming the breaker and its clock. NaN made a
        tripped circuit let every call through (its reopen time NaN: never
        past, never ahead), an infinity half-opened it at once or rejected
        for ever. The closed path reads no clock, and checks nothing."""
        now = self._clock()
        if finite_number(now) is None:
            raise ValueError(
                f"circuit breaker {self.name!r}: its clock returned {shown(now)}, not a "
                f"finite number of seconds (clock= must return monotonic seconds, as "
                f"time.monotonic does)"
            )
        return now

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
        now = self._now()
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
            now = self._now()
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


def _check_settings(
    fail_max: int,
    reset_timeout: float,
    name: str | None,
    clock: Callable[[], float] | None,
    half_open_max_calls: int,
    state_store: CircuitStateStore | None,
    sync_interval: float,
    wall_clock: Callable[[], float] | None,
) -> None:
    """Refuse a ``CircuitBreaker``'s settings that are out of range or of
    the wrong kind, before anything is made of them."""
    if isinstance(fail_max, bool) or not isinstance(fail_max, int) or fail_max < 1:
        raise ValueError(f"fail_max must be an int >= 1, got {fail_max!r}")
    number_given("reset_timeout", reset_timeout, least=0, above=True, unit="seconds")
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
    number_given("sync_interval", sync_interval, least=0, above=True, unit="seconds")
    if wall_clock is not None and not callable(wall_clock):
        raise TypeError(f"wall_clock must be a zero-argument callable, got {wall_clock!r}")


def _exclude_rules(
    exclude: ExcludeRule | Iterable[ExcludeRule],
) -> tuple[tuple[type[BaseException], ...], tuple[Callable[[BaseException], bool], ...]]:
    """A breaker's ``exclude`` as the exception types and the predicates in it."""
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
    return tuple(types), tuple(predicates)
