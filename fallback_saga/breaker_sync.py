"""Keeping a shared breaker in step with its namesakes in other processes.

``CircuitBreaker`` decides its calls on its local state; with a
``state_store`` (``shared_state``), this is the part of it that talks to the
store: it pulls the shared row when due and adopts a newer one (``_sync``,
``_adopt``), publishes each local transition with a compare-and-set
(``_publish``), and claims the half-open trial round, so that one instance at
a time runs trials (``_claim_trials``). A store that fails leaves the breaker
on its local state; the failure is told to its listeners at most once per
``sync_interval``, and the next pull publishes what the store missed.

The store's work is done under ``_sync_lock`` (one round trip at a time per
breaker), the state it reads and changes under the breaker's ``_lock``, never
the other way round; and the listeners are told once both are released, so
that a listener may call back into the breaker (``_notify``).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeAlias

from .events import collect_hooks, emit
from .log_lines import library_logger
from .status import CircuitState

if TYPE_CHECKING:
    from .shared_state import CircuitStateStore, SharedCircuit

__all__ = ["SharedStateSync"]

_log = library_logger("fallback_saga")

# A transition (old, new) for the listeners, or None.
Change: TypeAlias = tuple[CircuitState, CircuitState] | None
# What a shared breaker's store work leaves for its listeners: a transition and
# a store failure to report, both told once ``_sync_lock`` is released.
_Notices: TypeAlias = tuple[Change, BaseException | None]
_NOTHING: _Notices = (None, None)


class SharedStateSync:
    """The store's side of a ``CircuitBreaker`` (its base class): see the module."""

    __slots__ = (
        "_instance_id",
        "_next_failure_report",
        "_next_sync",
        "_on_store_failed",
        "_pending",
        "_shared",
        "_shared_version",
        "_sync_interval",
        "_sync_lock",
        "_unpublished",
        "_wall_clock",
    )

    # The breaker's own state, which the store's work reads and changes
    # (under ``_lock``): declared here, kept in ``CircuitBreaker``'s slots.
    name: str
    reset_timeout: float
    _clock: Callable[[], float]
    _lock: threading.Lock
    _state: CircuitState
    _generation: int
    _open_until: float
    _half_open_until: float

    def _init_sharing(
        self,
        state_store: CircuitStateStore | None,
        sync_interval: float,
        wall_clock: Callable[[], float] | None,
        listeners: Iterable[object],
    ) -> None:
        self._shared = state_store
        self._sync_interval = float(sync_interval)
        self._wall_clock = wall_clock or time.time
        # A breaker without a store never pulls; one with a store pulls at its first call.
        self._next_sync = math.inf if state_store is None else -math.inf
        self._shared_version = 0
        self._unpublished = False
        # The generation of a local transition on its way to the store: a row
        # pulled meanwhile is older than it and must not undo it.
        self._pending = -1
        self._next_failure_report = -math.inf
        self._sync_lock = threading.Lock()
        self._on_store_failed = collect_hooks(listeners, "breaker_state_store_failed")
        self._instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    # The breaker's changes of state (``CircuitBreaker`` defines them; ``_lock`` held).

    def _transition(self, new: CircuitState, now: float) -> Change:
        raise NotImplementedError

    def _new_trial_round(self, now: float) -> None:
        raise NotImplementedError

    def _reject_until(self, until: float) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def _announce(self, change: Change) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the store's work

    def _claim_trials(self, seen: int) -> None:
        """Become the one instance that runs half-open trials (OPEN → HALF_OPEN,
        or a new round of our own): win the compare-and-set, else adopt the row."""
        store = self._shared
        assert store is not None
        with self._sync_lock:
            notices = self._claim_trials_locked(store, seen)
        self._notify(notices)

    def _claim_trials_locked(self, store: CircuitStateStore, seen: int) -> _Notices:
        if self._generation != seen:
            return _NOTHING  # something happened meanwhile; the caller re-reads the state
        # The local lease starts before the round trip, as the row's does: it
        # never outlives the lease the other instances see.
        claimed_at = self._now()
        lease = self._wall_clock() + self.reset_timeout
        error: BaseException | None = None
        try:
            row = store.compare_and_set(
                self.name, self._shared_version, CircuitState.HALF_OPEN, lease,
                self._instance_id,
            )
            if row is None:
                return self._adopt(store.read(self.name)), None
        except Exception as failure:
            # Keep working on local state; publish once the store is back.
            error = self._store_failure_due(failure)
            self._unpublished = True
        else:
            self._shared_version = row.version
            self._unpublished = False
        with self._lock:
            change = None
            if self._generation == seen:
                if self._state is CircuitState.OPEN:
                    change = self._transition(CircuitState.HALF_OPEN, claimed_at)
                elif self._state is CircuitState.HALF_OPEN:
                    self._new_trial_round(claimed_at)
        return change, error

    def _sync(self, now: float) -> None:
        """Pull the shared row (publishing first what the store missed)."""
        self._next_sync = now + self._sync_interval
        if not self._sync_lock.acquire(blocking=False):
            return  # another thread is syncing this breaker right now
        try:
            if self._unpublished:
                notices = self._publish_locked(self._generation, force=False)
            else:
                store = self._shared
                assert store is not None
                try:
                    row = store.read(self.name)
                except Exception as error:
                    # The next try comes a full interval after this one gave
                    # up: a store that hangs until its timeout must not hold
                    # every call of the breaker.
                    self._next_sync = self._clock() + self._sync_interval
                    notices = None, self._store_failure_due(error)
                else:
                    notices = self._adopt(row), None
        finally:
            self._sync_lock.release()
        self._notify(notices)

    def _publish(self, generation: int, *, force: bool = False) -> None:
        """Publish a local transition (the state at ``generation``)."""
        with self._sync_lock:
            notices = self._publish_locked(generation, force=force)
        self._notify(notices)

    def _publish_locked(self, generation: int, *, force: bool) -> _Notices:
        store = self._shared
        assert store is not None
        with self._lock:
            if self._generation != generation:
                # A later local transition publishes itself; a claim published
                # its own row.
                return _NOTHING
            if self._pending == generation:
                self._pending = -1  # settled here: from now on, a pulled row may win
            state = self._state
            now = self._now()  # NaN here would be published to every instance
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
                    return self._adopt(current), None
        except Exception as error:
            self._unpublished = True
            return None, self._store_failure_due(error)
        self._shared_version = row.version
        self._unpublished = False
        return _NOTHING

    def _adopt(self, row: SharedCircuit | None) -> Change:
        """Take over a row another instance published (``_sync_lock`` held).

        Returns the transition, for the caller to announce once ``_sync_lock``
        is released (a listener may call back into the breaker).
        """
        wall = self._wall_clock()
        with self._lock:
            if self._pending == self._generation:
                # A local transition (a trip, a trial's outcome, an operator's
                # command) made while this row was read is on its way to the
                # store: it is newer, and its publish settles the two (failures
                # seen here still open a circuit the row says is closed).
                return None
            self._unpublished = False
            if row is None:
                self._shared_version = 0
                return None
            if row.version == self._shared_version:
                return None
            self._shared_version = row.version
            if row.state is CircuitState.HALF_OPEN and row.half_open_owner == self._instance_id:
                return None  # our own claim
            now = self._now()
            change = None
            if row.state is CircuitState.CLOSED:
                if self._state is not CircuitState.CLOSED:
                    change = self._transition(CircuitState.CLOSED, now)
            else:
                # OPEN, or trials owned by another instance: reject until the
                # reopen time (or the end of the owner's trial lease).
                if self._state is not CircuitState.OPEN:
                    change = self._transition(CircuitState.OPEN, now)
                # Never longer than a reset_timeout: a reopen time (or trial
                # lease) is always published as one from its writer's wall
                # clock, so more than that left means a clock that ran ahead
                # (since put right, or another machine's), which must not
                # hold the circuit open until it is caught up with.
                remaining = min(max(row.open_until - wall, 0.0), self.reset_timeout)
                self._reject_until(now + remaining)
        return change

    def _store_failure_due(self, error: BaseException) -> BaseException | None:
        """``error`` if it is to be reported: at most once per ``sync_interval``."""
        now = self._clock()
        if now < self._next_failure_report:
            return None
        self._next_failure_report = now + self._sync_interval
        return error

    def _notify(self, notices: _Notices) -> None:
        """Tell the listeners what the store work found, no lock held: a
        listener may call back into the breaker (``open()``, ``close()``)."""
        change, error = notices
        self._announce(change)
        if error is None:
            return
        if self._on_store_failed:
            emit(self._on_store_failed, self.name, error)
        else:
            _log.warning("circuit breaker %s: state store failed: %s: %s", self.name,
                         type(error).__name__, error)
