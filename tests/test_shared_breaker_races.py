"""Shared circuit state under races (rule S9 with a ``state_store``).

Found by fuzzing several instances (and threads) sharing one SQLite file: a
claim lost to a row whose time had already passed, an owner trialing past its
claim's expiry, a trip undone by a pull in another thread, listeners called
while the breaker's sync lock was held. Time is a ``FakeClock`` (or one that
ticks at every read, as a real one does between two reads); threads meet on
events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from helpers_breaker import (
    RESET,
    SYNC,
    Boom,
    FakeClock,
    fail_with,
    shared_breaker,
    succeed,
    trip,
)

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    SharedCircuit,
    SQLiteCircuitStateStore,
)


class TickingClock(FakeClock):
    """A clock that moves a microsecond at every read, as a real one does."""

    def __call__(self) -> float:
        self.advance(1e-6)
        return super().__call__()


def make(store: Any, clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    """A shared breaker that one failure opens."""
    return shared_breaker(store, clock, **{"fail_max": 1, **kwargs})


# ------------------------------------------------- OPEN never lets an untracked call through


async def test_S9_shared_open_breaker_that_loses_the_claim_rejects_without_calling(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = TickingClock()
    a = make(circuit_file_store, clock)
    b = make(circuit_file_store, clock, sync_interval=100 * RESET)  # b pulls once, then rarely
    await b.call(succeed)
    await trip(a)
    await trip(b)  # b opens too (its publish adopts a's OPEN row)
    clock.advance(RESET)
    hung = a.acquire()  # a owns the trial round; its trial never reports back
    clock.advance(RESET)  # a's claim has expired; b has not seen it yet
    calls: list[str] = []

    async def service() -> None:
        calls.append("called")
        raise Boom("down")

    # b's claim loses (a's claim moved the row) and adopts a row whose time
    # already passed: still OPEN, so b rejects, without calling.
    with pytest.raises(CircuitOpenError) as caught:
        await b.call(service)
    assert calls == []
    assert caught.value.retry_after >= 0
    assert b.state is CircuitState.OPEN
    # The next call claims the (expired) round properly: a tracked trial whose
    # failure re-opens the circuit everywhere.
    with pytest.raises(Boom):
        await b.call(service)
    assert calls == ["called"]
    assert b.state is CircuitState.OPEN
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN
    a.release(hung)


async def test_S9_shared_open_breaker_rejects_after_adopting_an_expired_open_row(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    # reset_timeout shorter than sync_interval: the OPEN row b adopts at its
    # claim has already passed its reopen time.
    clock = TickingClock()
    a = make(circuit_file_store, clock, reset_timeout=0.5)
    b = make(circuit_file_store, clock, reset_timeout=0.5, sync_interval=100.0)
    await a.call(succeed)
    await b.call(succeed)  # both pulled: no row yet
    await trip(b)  # b opens (publishes v1)
    await trip(a)  # a opens on its own: CAS on v0 loses, its publish adopts b's row
    clock.advance(0.6)
    a.record_failure(a.acquire())  # a's trial fails: OPEN again (v3), reopen time 0.5 s on
    clock.advance(0.6)  # that reopen time passed too; b still knows v1
    calls: list[str] = []

    async def service() -> None:
        calls.append("called")

    with pytest.raises(CircuitOpenError):
        await b.call(service)
    assert calls == []


# ------------------------------------------------- an owner trials only under a live claim


async def test_S9_shared_owner_renews_its_expired_claim_before_a_new_trial(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(RESET)
    a.release(a.acquire())  # a's trial was cancelled: its slot is back
    clock.advance(RESET + 1)  # a's claim has expired
    permit = a.acquire()  # a may trial again only by renewing its claim...
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.half_open_owner == a.instance_id
    assert row.open_until > clock.now  # ...a live lease
    with pytest.raises(CircuitOpenError):
        b.acquire()  # so b cannot take the round over
    a.release(permit)


async def test_S9_shared_owner_with_a_free_slot_loses_an_expired_claim_taken_over(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    a, b = make(circuit_file_store, clock), make(circuit_file_store, clock)
    await b.call(succeed)
    await trip(a)
    clock.advance(RESET)
    a.release(a.acquire())
    clock.advance(RESET + 1)
    permit = b.acquire()  # b takes over the expired claim
    assert b.state is CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        a.acquire()  # a's renewal loses: no second trial runs
    assert a.state is CircuitState.OPEN
    b.release(permit)


# ------------------------------------------------- a local trip wins over a concurrent pull


async def test_S9_shared_trip_is_not_undone_by_a_pull_in_another_thread(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()
    opened = threading.Event()

    class Opened:
        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            if new == "open":
                opened.set()

    class SlowPull:
        """The real store; one pull stalls until another thread trips the breaker."""

        armed = False

        def read(self, name: str) -> SharedCircuit | None:
            row = circuit_file_store.read(name)
            if self.armed:
                self.armed = False
                tripper.start()
                assert opened.wait(10)
            return row

        def compare_and_set(self, *args: Any) -> SharedCircuit | None:
            return circuit_file_store.compare_and_set(*args)

    slow = SlowPull()
    other = make(circuit_file_store, clock)
    b = make(slow, clock, listeners=[Opened()])
    await b.call(succeed)  # b pulls: no row yet
    other.open()
    other.close()  # elsewhere the circuit opened and closed: CLOSED v2
    clock.advance(SYNC)
    tripper = threading.Thread(target=lambda: asyncio.run(trip(b)))
    slow.armed = True
    with contextlib.suppress(CircuitOpenError):
        await b.call(succeed)  # the pull reads CLOSED v2 while b trips
    tripper.join(10)
    assert not tripper.is_alive()
    assert b.state is CircuitState.OPEN
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN


# ------------------------------------------------- listeners run outside every lock


def _returns_in_time(body: Any) -> bool:
    done = threading.Thread(target=lambda: asyncio.run(body()), daemon=True)
    done.start()
    done.join(10)  # a bound, not a synchronization: a deadlock never ends
    return not done.is_alive()


def test_S9_shared_listener_may_close_the_breaker_on_an_adopted_open(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()

    class Override:
        breaker: CircuitBreaker

        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            if new == "open":
                self.breaker.close()  # e.g. an operator's override

    override = Override()
    b = make(circuit_file_store, clock, listeners=[override])
    override.breaker = b
    other = make(circuit_file_store, clock)

    async def body() -> None:
        await b.call(succeed)
        await trip(other)
        clock.advance(SYNC)
        await b.call(succeed)  # the pull adopts OPEN: the listener closes b

    assert _returns_in_time(body)
    assert b.state is CircuitState.CLOSED
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.CLOSED


def test_S9_shared_store_failed_listener_may_open_the_breaker() -> None:
    clock = FakeClock()

    class Down:
        def read(self, name: str) -> SharedCircuit | None:
            raise ConnectionError("store down")

        def compare_and_set(self, *args: Any) -> SharedCircuit | None:
            raise ConnectionError("store down")

    class FailSafe:
        breaker: CircuitBreaker

        def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
            self.breaker.open()

    fail_safe = FailSafe()
    b = make(Down(), clock, listeners=[fail_safe])
    fail_safe.breaker = b

    async def body() -> None:
        with contextlib.suppress(CircuitOpenError):
            await b.call(succeed)

    assert _returns_in_time(body)
    assert b.state is CircuitState.OPEN


def test_S9_shared_listener_may_call_back_when_a_lost_claim_adopts_a_row(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()

    class Reopen:
        breaker: CircuitBreaker

        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            if (old, new) == ("half_open", "open"):
                self.breaker.open()  # e.g. keep it open for maintenance

    reopen = Reopen()
    a = make(circuit_file_store, clock)
    b = make(circuit_file_store, clock, listeners=[reopen], sync_interval=100 * RESET)
    reopen.breaker = b

    async def body() -> None:
        await b.call(succeed)
        await trip(b)
        clock.advance(RESET)
        b.acquire()  # b owns the round; its trial hangs
        clock.advance(RESET + 1)
        a.release(a.acquire())  # a takes the expired round over
        with pytest.raises(CircuitOpenError):
            b.acquire()  # b's renewal loses and adopts a's claim: HALF_OPEN -> OPEN

    assert _returns_in_time(body)
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN  # the listener's open() was published


async def test_S9_shared_trip_is_published_even_past_a_listener_that_raises_a_base_exception(
    circuit_file_store: SQLiteCircuitStateStore,
) -> None:
    clock = FakeClock()

    class Abort(BaseException):
        pass

    class Raises:
        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            if new == "open":
                raise Abort  # e.g. a KeyboardInterrupt while the listener runs

    b = make(circuit_file_store, clock, listeners=[Raises()])
    other = make(circuit_file_store, clock)
    await b.call(succeed)
    with pytest.raises(Abort):
        await b.call(fail_with, Boom("down"))
    row = circuit_file_store.read("payments")
    assert row is not None
    assert row.state is CircuitState.OPEN  # the trip was published all the same
    other.close()  # and b still follows the row afterwards
    clock.advance(SYNC)
    assert await b.call(succeed) == "ok"
    assert b.state is CircuitState.CLOSED


async def test_S9_shared_pull_that_times_out_is_retried_an_interval_after_it_gave_up() -> None:
    clock = FakeClock()

    class Hangs:
        """A store that answers nothing until its (client-side) timeout."""

        reads = 0

        def read(self, name: str) -> SharedCircuit | None:
            self.reads += 1
            clock.advance(4 * SYNC)  # the call's timeout
            raise TimeoutError("the circuit state store did not answer within 4s")

        def compare_and_set(self, *args: Any) -> SharedCircuit | None:
            raise AssertionError("not reached")

    store = Hangs()
    b = make(store, clock)
    assert await b.call(succeed) == "ok"  # the first pull hangs, then gives up
    assert store.reads == 1
    for _ in range(10):  # not one more pull before an interval has passed
        assert await b.call(succeed) == "ok"
    assert store.reads == 1
    clock.advance(SYNC)
    assert await b.call(succeed) == "ok"
    assert store.reads == 2
