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

With a ``state_store`` (see ``shared_state``), breakers of the same name in
several processes share their state: counting stays local, transitions are
published with a compare-and-set, and the shared row is pulled at most once
per ``sync_interval``. The closed path then adds one clock read and a float
comparison; without a store it is unchanged.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from .events import collect_hooks, emit

if TYPE_CHECKING:
    from .shared_state import CircuitStateStore, SharedCircuit

_log = logging.getLogger("fallback_saga")

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerProtocol",
    "CircuitOpenError",
    "CircuitState",
]

T = TypeVar("T")
P = ParamSpec("P")

ExcludeRule = type[BaseException] | Callable[[BaseException], bool]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED = CircuitState.CLOSED


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


class CircuitBreaker:
    """CLOSED → OPEN after ``fail_max`` consecutive counted failures; OPEN rejects
    with ``CircuitOpenError`` for ``reset_timeout`` seconds; then HALF_OPEN lets
    ``half_open_max_calls`` trial calls through at once: a success closes the
    circuit, a failure re-opens it.

    * ``exclude`` — exception types and/or predicates ``(error) -> bool`` for
      errors that say nothing about the service's health (business errors).
      They are ignored: neither counted nor resetting the count, re-raised as is.
    * The error that trips the breaker is re-raised unchanged.
    * A cancelled call returns its permit and counts as nothing.
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
        "_instance_id",
        "_lock",
        "_next_failure_report",
        "_next_sync",
        "_on_change",
        "_on_store_failed",
        "_open_until",
        "_permits",
        "_shared",
        "_shared_version",
        "_state",
        "_sync_interval",
        "_sync_lock",
        "_unpublished",
        "_wall_clock",
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
        exclude: Iterable[ExcludeRule] = (),
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
        self._shared = state_store
        self._sync_interval = float(sync_interval)
        self._wall_clock = wall_clock or time.time
        self._next_sync = math.inf
        self._shared_version = 0
        self._unpublished = False
        self._next_failure_report = -math.inf
        self._sync_lock = threading.Lock()
        self._on_store_failed = collect_hooks(listeners, "breaker_state_store_failed")
        self._instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        if state_store is not None:
            self._gate = None
            self._next_sync = -math.inf  # the first call pulls
        # Per-task stack of the permits taken by ``async with`` blocks.
        self._permits: ContextVar[tuple[int, object] | None] = ContextVar(
            f"fallback_saga_permits_{self.name}", default=None
        )

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failures={self._failures}/{self.fail_max})"
        )

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN circuit whose timeout passed reads HALF_OPEN."""
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
        with self._lock:
            change = self._transition(CircuitState.OPEN, self._clock())
            generation = self._generation
        self._announce(change)
        if self._shared is not None:
            self._publish(generation, force=True)

    def close(self) -> None:
        """Close the circuit now and forget counted failures."""
        with self._lock:
            change = self._transition(CircuitState.CLOSED, self._clock())
            generation = self._generation
        self._announce(change)
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
                    self._generation += 1
                    self._half_open_in_flight = 0
                    self._half_open_until = now + self.reset_timeout
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
                generation = self._generation
            self._announce(change)
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
            generation = self._generation
        self._announce(change)
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
        elif isinstance(error, Exception) and not self.is_excluded(error):
            self.record_failure(permit)
        else:  # cancellation and other BaseExceptions, or an excluded error
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

    def _announce(self, change: tuple[CircuitState, CircuitState] | None) -> None:
        if change is not None and self._on_change:
            emit(self._on_change, self.name, change[0].value, change[1].value)

    # ------------------------------------------------------------------ shared state

    def _acquire_shared(self) -> int:
        """``acquire`` for a breaker with a state store: pull when due, claim the
        trial round when the reopen time passes, then the usual permit rules."""
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
        elif (
            self._half_open_in_flight >= self.half_open_max_calls
            and now >= self._half_open_until
        ):
            # Our trials never reported back: a new round needs a renewed claim.
            self._claim_trials(generation)
        with self._lock:
            now = self._clock()
            state = self._state
            if state is CircuitState.OPEN:
                retry_after = self._open_until - now
            elif state is CircuitState.HALF_OPEN:
                if self._half_open_in_flight < self.half_open_max_calls:
                    self._half_open_in_flight += 1
                    retry_after = -1.0
                else:
                    retry_after = self._half_open_until - now
            else:
                retry_after = -1.0
            generation = self._generation
        if retry_after >= 0:
            raise CircuitOpenError(self.name, max(retry_after, 0.0))
        return generation

    def _claim_trials(self, seen: int) -> None:
        """Become the one instance that runs half-open trials (OPEN → HALF_OPEN,
        or a new round of our own): win the compare-and-set, else adopt the row."""
        store = self._shared
        assert store is not None
        with self._sync_lock:
            if self._generation != seen:
                return  # something happened meanwhile; the caller re-reads the state
            lease = self._wall_clock() + self.reset_timeout
            try:
                row = store.compare_and_set(
                    self.name, self._shared_version, CircuitState.HALF_OPEN, lease,
                    self._instance_id,
                )
                if row is None:
                    self._adopt(store.read(self.name))
                    return
            except Exception as error:
                # Keep working on local state; publish once the store is back.
                self._store_failed(error)
                self._unpublished = True
            else:
                self._shared_version = row.version
                self._unpublished = False
            with self._lock:
                change = None
                if self._generation == seen:
                    now = self._clock()
                    if self._state is CircuitState.OPEN:
                        change = self._transition(CircuitState.HALF_OPEN, now)
                    elif self._state is CircuitState.HALF_OPEN:
                        self._generation += 1
                        self._half_open_in_flight = 0
                        self._half_open_until = now + self.reset_timeout
        self._announce(change)

    def _sync(self, now: float) -> None:
        """Pull the shared row (publishing first what the store missed)."""
        self._next_sync = now + self._sync_interval
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is syncing this breaker right now
        try:
            if self._unpublished:
                self._publish_locked(self._generation, force=False)
            else:
                store = self._shared
                assert store is not None
                try:
                    row = store.read(self.name)
                except Exception as error:
                    self._store_failed(error)
                    return
                self._adopt(row)
        finally:
            self._sync_lock.release()

    def _publish(self, generation: int, *, force: bool = False) -> None:
        """Publish a local transition (the state at ``generation``)."""
        with self._sync_lock:
            self._publish_locked(generation, force=force)

    def _publish_locked(self, generation: int, *, force: bool) -> None:
        store = self._shared
        assert store is not None
        with self._lock:
            if self._generation != generation:
                # A later local transition publishes itself; an adopted row is newer.
                return
            state = self._state
            now = self._clock()
            if state is CircuitState.OPEN:
                until = self._open_until - now
            elif state is CircuitState.HALF_OPEN:
                until = self._half_open_until - now
            else:
                until = None
        open_until = 0.0 if until is None else self._wall_clock() + until
        owner = self._instance_id if state is CircuitState.HALF_OPEN else None
        try:
            row = store.compare_and_set(
                self.name, self._shared_version, state, open_until, owner
            )
            if row is None:
                current = store.read(self.name)
                # Evidence of failure (and an operator's command) wins over a
                # closed row; an OPEN or HALF_OPEN row already protects everyone.
                if force or (
                    state is CircuitState.OPEN
                    and (current is None or current.state is CircuitState.CLOSED)
                ):
                    row = store.compare_and_set(
                        self.name, 0 if current is None else current.version, state,
                        open_until, owner,
                    )
                    if row is None:
                        current = store.read(self.name)
                if row is None:
                    self._adopt(current)
                    return
        except Exception as error:
            self._store_failed(error)
            self._unpublished = True
            return
        self._shared_version = row.version
        self._unpublished = False

    def _adopt(self, row: SharedCircuit | None) -> None:
        """Take over a row another instance published (``_sync_lock`` held)."""
        self._unpublished = False
        if row is None:
            self._shared_version = 0
            return
        if row.version == self._shared_version:
            return
        self._shared_version = row.version
        if row.state is CircuitState.HALF_OPEN and row.half_open_owner == self._instance_id:
            return  # our own claim
        remaining = row.open_until - self._wall_clock()
        with self._lock:
            now = self._clock()
            change = None
            if row.state is CircuitState.CLOSED:
                if self._state is not CircuitState.CLOSED:
                    change = self._transition(CircuitState.CLOSED, now)
            else:
                # OPEN, or trials owned by another instance: reject until the
                # reopen time (or the end of the owner's trial lease).
                if self._state is not CircuitState.OPEN:
                    change = self._transition(CircuitState.OPEN, now)
                self._open_until = now + max(remaining, 0.0)
        self._announce(change)

    def _store_failed(self, error: BaseException) -> None:
        """Report a failing store at most once per ``sync_interval``."""
        now = self._clock()
        if now < self._next_failure_report:
            return
        self._next_failure_report = now + self._sync_interval
        if self._on_store_failed:
            emit(self._on_store_failed, self.name, error)
        else:
            _log.warning("circuit breaker %s: state store failed: %s: %s", self.name,
                         type(error).__name__, error)

    # ------------------------------------------------------------------ ways to call

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the breaker."""
        # The closed path, with acquire() and record_success() inlined: two
        # attribute reads before the call, two after, no lock, no allocation.
        # The generation is read first: if a transition slips in between, the
        # permit is already stale and its outcome is ignored. Every transition
        # bumps the generation, so an unchanged one means "still closed".
        permit = self._generation
        if self._gate is not _CLOSED and (
            # A local breaker's gate follows its state; a shared one's is never
            # CLOSED, and its closed path goes on unless a pull is due.
            self._state is not _CLOSED or self._clock() >= self._next_sync
        ):
            return await self._call_guarded(fn, *args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._record(permit, error)
            raise
        if self._failures or permit != self._generation:
            self.record_success(permit)
        return result

    async def _call_guarded(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        permit = self.acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._record(permit, error)
            raise
        self.record_success(permit)
        return result

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so every call goes through the breaker."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    async def __aenter__(self) -> CircuitBreaker:
        permit = self.acquire()
        # A per-task stack of permits (immutable pairs), so nested and
        # concurrent ``async with`` blocks each return their own permit.
        self._permits.set((permit, self._permits.get()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        top = self._permits.get()
        if top is None:
            raise RuntimeError("breaker __aexit__ without a matching __aenter__ in this task")
        permit, outer = top
        self._permits.set(outer)  # type: ignore[arg-type]
        self._record(permit, exc)
