"""Rule S9: the circuit breaker, one test per clause, plus its ways of being called.

Time is a ``FakeClock`` moved by hand; concurrent calls are held inside the
guarded function with ``asyncio.Event``s. Nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import pickle
import random
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers_breaker import (
    Boom,
    BusinessError,
    FakeClock,
    Held,
    SpecificBusinessError,
    StateChanges,
    fail_with,
    succeed,
    trip,
)

import fallback_saga.permit_stack as permit_stack_module
from fallback_saga import (
    CircuitBreaker,
    CircuitBreakerProtocol,
    CircuitOpenError,
    CircuitState,
    Fallback,
    RetryPolicy,
    Saga,
    SagaContext,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


def make_breaker(**options: Any) -> tuple[CircuitBreaker, FakeClock]:
    clock = options.pop("clock", None) or FakeClock()
    options.setdefault("reset_timeout", 30.0)
    options.setdefault("name", "inventory")
    return CircuitBreaker(clock=clock, **options), clock


async def open_then_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    await trip(breaker)
    assert breaker.state is OPEN
    clock.advance(breaker.reset_timeout)
    assert breaker.state is HALF_OPEN




# --------------------------------------------------------------------------- CLOSED -> OPEN


async def test_S9_opens_after_fail_max_consecutive_failures() -> None:
    breaker, _ = make_breaker(fail_max=3)
    calls = 0

    async def flaky(error: Exception | None) -> str:
        nonlocal calls
        calls += 1
        if error is not None:
            raise error
        return "ok"

    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(flaky, Boom("down"))
    assert (breaker.state, breaker.failure_count) == (CLOSED, 2)

    # A success in between: the failures were not consecutive.
    assert await breaker.call(flaky, None) == "ok"
    assert breaker.failure_count == 0

    for expected_count in (1, 2):
        with pytest.raises(Boom):
            await breaker.call(flaky, Boom("down"))
        assert (breaker.state, breaker.failure_count) == (CLOSED, expected_count)
    with pytest.raises(Boom):
        await breaker.call(flaky, Boom("down"))
    assert breaker.state is OPEN
    assert calls == 6  # every call while CLOSED reached the function


async def test_S9_failure_count_reports_consecutive_counted_failures() -> None:
    breaker, _ = make_breaker(fail_max=4)
    assert breaker.failure_count == 0
    await trip(breaker, 3)
    assert breaker.failure_count == 3
    await breaker.call(succeed)
    assert breaker.failure_count == 0
    await trip(breaker, 2)
    breaker.close()
    assert breaker.failure_count == 0


async def test_S9_open_rejects_without_calling_with_retry_after() -> None:
    breaker, clock = make_breaker(fail_max=2, reset_timeout=30.0)
    await trip(breaker)
    clock.advance(12.5)
    called = 0

    def guarded() -> Awaitable[str]:  # counts even a call that would never be awaited
        nonlocal called
        called += 1
        return succeed("should not run")  # type: ignore[return-value]

    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(guarded)
    assert called == 0
    assert rejected.value.retry_after == pytest.approx(30.0 - 12.5)
    assert rejected.value.breaker == "inventory"
    assert breaker.state is OPEN

    clock.advance(10.0)
    with pytest.raises(CircuitOpenError) as again:
        await breaker.call(guarded)
    assert again.value.retry_after == pytest.approx(30.0 - 22.5)
    assert called == 0


# --------------------------------------------------------------------------- HALF_OPEN


async def test_S9_state_reads_half_open_once_reset_timeout_passed() -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(fail_max=1, reset_timeout=30.0, listeners=[changes])
    await trip(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert changes.edges() == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


async def test_S9_half_open_after_reset_timeout_success_closes() -> None:
    breaker, clock = make_breaker(fail_max=2, reset_timeout=30.0)
    await trip(breaker)
    clock.advance(29.0)
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    clock.advance(1.0)
    assert await breaker.call(succeed, "probe ok") == "probe ok"
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0
    # Closed again for real: it takes fail_max fresh failures to re-open.
    await trip(breaker, 1)
    assert breaker.state is CLOSED
    await trip(breaker, 1)
    assert breaker.state is OPEN


async def test_S9_half_open_failure_reopens() -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(fail_max=5, reset_timeout=30.0, listeners=[changes])
    await trip(breaker)
    clock.advance(30.0)
    probe_error = Boom("still down")
    with pytest.raises(Boom) as raised:
        await breaker.call(fail_with, probe_error)
    assert raised.value is probe_error
    assert breaker.state is OPEN  # one failed trial is enough, whatever fail_max is
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(succeed)
    assert rejected.value.retry_after == pytest.approx(30.0)  # a fresh timeout
    assert changes.edges() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


@pytest.mark.parametrize("max_calls", [1, 3])
async def test_S9_half_open_admits_exactly_max_calls_concurrently(max_calls: int) -> None:
    tasks_count = 50
    breaker, clock = make_breaker(fail_max=1, reset_timeout=10.0, half_open_max_calls=max_calls)
    await open_then_half_open(breaker, clock)

    inside = 0
    rejected = 0
    tried = 0
    all_tried = asyncio.Event()
    release = asyncio.Event()

    def note_tried() -> None:
        nonlocal tried
        tried += 1
        if tried == tasks_count:
            all_tried.set()

    async def trial() -> str:
        nonlocal inside
        inside += 1
        note_tried()
        await release.wait()
        return "recovered"

    async def caller() -> str:
        nonlocal rejected
        try:
            return await breaker.call(trial)
        except CircuitOpenError:
            rejected += 1
            note_tried()
            raise

    tasks = [asyncio.create_task(caller()) for _ in range(tasks_count)]
    async with asyncio.timeout(10):  # a guard against a hang, not a timing assertion
        await all_tried.wait()
    assert inside == max_calls
    assert rejected == tasks_count - max_calls
    assert breaker.half_open_calls_in_flight == max_calls
    assert breaker.state is HALF_OPEN

    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes.count("recovered") == max_calls
    assert sum(isinstance(o, CircuitOpenError) for o in outcomes) == tasks_count - max_calls
    assert breaker.state is CLOSED


async def test_S9_half_open_full_rejection_says_when_to_retry() -> None:
    breaker, clock = make_breaker(fail_max=1, reset_timeout=10.0, half_open_max_calls=1)
    await open_then_half_open(breaker, clock)
    held = Held()
    trial = asyncio.create_task(breaker.call(held))
    await held.entered.wait()
    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(succeed)
    assert rejected.value.retry_after == pytest.approx(6.0)  # when a new round may start
    held.release.set()
    assert await trial == "released"
    assert breaker.state is CLOSED


async def test_S9_stuck_half_open_trial_allows_new_round_after_reset_timeout() -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(
        fail_max=1, reset_timeout=10.0, half_open_max_calls=1, listeners=[changes]
    )
    await open_then_half_open(breaker, clock)
    hung = Held(outcome=Boom("late failure of the first round"))
    hung_task = asyncio.create_task(breaker.call(hung))
    await hung.entered.wait()

    clock.advance(9.0)  # the trial has not reported back: still waiting for it
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    clock.advance(1.0)  # another reset_timeout: a new round of trials
    second = Held()
    second_task = asyncio.create_task(breaker.call(second))
    await second.entered.wait()
    assert breaker.half_open_calls_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)  # the new round is full too

    edges_before = changes.edges()
    hung.release.set()  # the old round's late failure must be ignored
    with pytest.raises(Boom):
        await hung_task
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 1
    assert changes.edges() == edges_before

    second.release.set()
    assert await second_task == "released"
    assert breaker.state is CLOSED


# --------------------------------------------------------------------------- exclusions


class HarmlessBoom(Boom):
    """A Boom that a predicate marks as saying nothing about the service's health."""


def _is_harmless(error: BaseException) -> bool:
    return isinstance(error, HarmlessBoom)


EXCLUDED = [
    pytest.param(lambda: BusinessError("card declined"), id="type"),
    pytest.param(lambda: SpecificBusinessError("out of stock"), id="subclass-of-type"),
    pytest.param(lambda: HarmlessBoom("not found"), id="predicate"),
]


@pytest.mark.parametrize("make_error", EXCLUDED)
async def test_S9_excluded_exceptions_neither_count_nor_reset(
    make_error: Callable[[], Exception],
) -> None:
    breaker, _ = make_breaker(fail_max=3, exclude=[BusinessError, _is_harmless])
    await trip(breaker, 2)
    for _ in range(5):
        error = make_error()
        with pytest.raises(Exception) as raised:  # noqa: PT011 - identity checked below
            await breaker.call(fail_with, error)
        assert raised.value is error
        assert raised.value.__cause__ is None
        assert (breaker.state, breaker.failure_count) == (CLOSED, 2)  # not counted, not reset
    await trip(breaker, 1)
    assert breaker.state is OPEN  # the count was kept: the third counted failure trips


@pytest.mark.parametrize("make_error", EXCLUDED)
async def test_S9_excluded_exception_in_half_open_returns_the_trial_permit(
    make_error: Callable[[], Exception],
) -> None:
    breaker, clock = make_breaker(
        fail_max=1, half_open_max_calls=1, exclude=[BusinessError, _is_harmless]
    )
    await open_then_half_open(breaker, clock)
    error = make_error()
    with pytest.raises(Exception) as raised:  # noqa: PT011 - identity checked below
        await breaker.call(fail_with, error)
    assert raised.value is error
    assert breaker.state is HALF_OPEN  # neither re-opened nor closed
    assert breaker.half_open_calls_in_flight == 0
    assert await breaker.call(succeed) == "ok"  # the permit came back: a new trial runs
    assert breaker.state is CLOSED


# --------------------------------------------------------------------------- tripping error


async def _via_call(breaker: CircuitBreaker, error: Exception) -> None:
    await breaker.call(fail_with, error)


async def _via_decorator(breaker: CircuitBreaker, error: Exception) -> None:
    @breaker
    async def reserve() -> None:
        raise error

    await reserve()


async def _via_async_with(breaker: CircuitBreaker, error: Exception) -> None:
    async with breaker:
        raise error


WAYS = [
    pytest.param(_via_call, id="call"),
    pytest.param(_via_decorator, id="decorator"),
    pytest.param(_via_async_with, id="async-with"),
]


@pytest.mark.parametrize("way", WAYS)
async def test_S9_tripping_exception_is_reraised_unchanged(
    way: Callable[[CircuitBreaker, Exception], Awaitable[None]],
) -> None:
    class Grumpy:
        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            raise RuntimeError("listener broke")

    breaker, _ = make_breaker(fail_max=1, listeners=[Grumpy()])
    error = Boom("the one that trips")
    with pytest.raises(Boom) as raised:
        await way(breaker, error)
    assert raised.value is error
    assert error.__cause__ is None
    assert error.__context__ is None
    assert breaker.state is OPEN


# --------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("way", ["call", "async_with"])
async def test_S9_cancelled_call_returns_permit_counts_nothing_when_closed(way: str) -> None:
    breaker, _ = make_breaker(fail_max=3)
    await trip(breaker, 2)
    held = Held()
    task = asyncio.create_task(_hold_through(breaker, held, way))
    await held.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (breaker.state, breaker.failure_count) == (CLOSED, 2)  # neither failure nor success
    await trip(breaker, 1)
    assert breaker.state is OPEN


@pytest.mark.parametrize("way", ["call", "async_with"])
async def test_S9_cancelled_call_returns_permit_counts_nothing_when_half_open(way: str) -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1, listeners=[changes])
    await open_then_half_open(breaker, clock)
    held = Held()
    task = asyncio.create_task(_hold_through(breaker, held, way))
    await held.entered.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)  # the only trial permit is taken
    edges_before = changes.edges()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 0
    assert changes.edges() == edges_before

    second = Held()
    second_task = asyncio.create_task(_hold_through(breaker, second, way))
    await second.entered.wait()  # a new trial is admitted: the permit came back
    second.release.set()
    assert await second_task == "released"
    assert breaker.state is CLOSED


class DriverError(Exception):
    """What a database driver raises when cancelled mid-query (psycopg's
    ``OperationalError``: "canceling statement due to user request")."""


class Converting:
    """A guarded function that waits until its task is cancelled, then
    converts the cancellation into an error of its own, as psycopg does."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(self) -> str:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise DriverError("canceling statement due to user request") from None
        return "never"


async def _cancel_a_converting_call(breaker: CircuitBreaker, way: str) -> None:
    """One call through ``breaker`` (``way``), cancelled while it waits; its
    function converts the cancellation. The driver's own error reaches the
    caller unchanged (the breaker never swaps errors)."""
    converting = Converting()

    async def through() -> str:
        if way == "call":
            return await breaker.call(converting)
        if way == "decorator":
            return await breaker(converting)()
        async with breaker:
            return await converting()

    task = asyncio.create_task(through())
    entered = asyncio.create_task(converting.entered.wait())
    # (A rejected call never enters: it ends first, with CircuitOpenError.)
    await asyncio.wait([task, entered], return_when=asyncio.FIRST_COMPLETED)
    entered.cancel()
    task.cancel()
    with pytest.raises(DriverError):
        await task


@pytest.mark.parametrize("way", ["call", "decorator", "async_with"])
async def test_S9_a_cancellation_the_call_converts_counts_nothing_when_closed(way: str) -> None:
    """A call whose function turns its task's cancellation into an error of
    its own (psycopg cancelled mid-query) was cancelled, not failed: the
    service did nothing wrong. Before, each such call counted as a failure,
    and cancellations alone opened the breaker (here: 5 of them, with
    ``fail_max=3``). It returns its permit and counts nothing, like a
    ``CancelledError``; a real failure after them still counts from where
    the count stood."""
    breaker, _ = make_breaker(fail_max=3)
    await trip(breaker, 2)
    for _ in range(5):
        await _cancel_a_converting_call(breaker, way)
    assert (breaker.state, breaker.failure_count) == (CLOSED, 2)
    await trip(breaker, 1)
    assert breaker.state is OPEN


@pytest.mark.parametrize("way", ["call", "decorator", "async_with"])
async def test_S9_a_cancellation_the_call_converts_returns_the_half_open_permit(
    way: str,
) -> None:
    """The same for a half-open trial: it frees its slot for another trial
    instead of re-opening the circuit on a cancellation."""
    changes = StateChanges()
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1, listeners=[changes])
    await open_then_half_open(breaker, clock)
    edges_before = changes.edges()
    await _cancel_a_converting_call(breaker, way)
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 0
    assert changes.edges() == edges_before
    assert await breaker.call(succeed) == "ok"  # the permit came back: a new trial runs
    assert breaker.state is CLOSED


async def _hold_through(breaker: CircuitBreaker, held: Held, way: str) -> str:
    if way == "call":
        return await breaker.call(held)
    async with breaker:
        return await held()


# --------------------------------------------------------------------------- clock, locks


async def test_S9_clock_is_injectable() -> None:
    # A clock far from time.monotonic(): if the breaker looked at the real clock
    # anywhere, the open window below would be over (or never start).
    clock = FakeClock(start=-5_000.0)
    breaker = CircuitBreaker(fail_max=1, reset_timeout=30.0, clock=clock)
    await trip(breaker)
    assert clock.reads > 0
    clock.advance(29.5)
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(succeed)
    assert rejected.value.retry_after == pytest.approx(0.5)
    assert breaker.state is OPEN
    clock.advance(0.5)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is CLOSED


async def test_S9_no_lock_held_across_await() -> None:
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1)
    observed: list[tuple[str, bool]] = []

    async def inside(label: str) -> str:
        observed.append((label, breaker._lock.locked()))
        # Another thread can take the breaker's lock while this call is suspended.
        taken = await asyncio.to_thread(breaker._lock.acquire, True, 5.0)
        if taken:
            breaker._lock.release()
        observed.append((label + " from a thread", not taken))
        return label

    assert await breaker.call(inside, "closed") == "closed"
    await open_then_half_open(breaker, clock)
    assert await breaker.call(inside, "half-open trial") == "half-open trial"  # slow path
    assert breaker.state is CLOSED
    async with breaker:
        await inside("async with")
    assert observed == [
        ("closed", False),
        ("closed from a thread", False),
        ("half-open trial", False),
        ("half-open trial from a thread", False),
        ("async with", False),
        ("async with from a thread", False),
    ]


async def test_S9_other_tasks_record_while_a_call_is_suspended() -> None:
    breaker, _ = make_breaker(fail_max=2)
    held = Held()
    slow = asyncio.create_task(breaker.call(held))
    await held.entered.wait()
    await trip(breaker)  # other calls acquire, fail and record meanwhile
    assert breaker.state is OPEN
    held.release.set()
    assert await slow == "released"


async def test_S9_listeners_are_called_without_the_lock() -> None:
    seen: list[tuple[str, bool, CircuitState]] = []
    breaker: CircuitBreaker

    class Inspector:
        def breaker_state_changed(self, name: str, old: str, new: str) -> None:
            # Reading the breaker from a hook must neither deadlock nor find the lock taken.
            seen.append((new, breaker._lock.locked(), breaker.state))

    breaker, clock = make_breaker(fail_max=1, listeners=[Inspector()])
    await open_then_half_open(breaker, clock)
    await breaker.call(succeed)
    assert seen == [
        ("open", False, OPEN),
        ("half_open", False, HALF_OPEN),
        ("closed", False, CLOSED),
    ]


# --------------------------------------------------------------------------- stale outcomes


@pytest.mark.parametrize("late", ["failure", "success"])
async def test_S9_stale_outcome_never_transitions(late: str) -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(
        fail_max=2, reset_timeout=10.0, half_open_max_calls=1, listeners=[changes]
    )
    late_error = Boom("late")
    slow = Held(outcome=late_error if late == "failure" else None)
    slow_task = asyncio.create_task(breaker.call(slow))  # admitted while CLOSED
    await slow.entered.wait()

    await trip(breaker)
    assert breaker.state is OPEN
    clock.advance(10.0)
    assert breaker.state is HALF_OPEN
    trial = Held()
    trial_task = asyncio.create_task(breaker.call(trial))
    await trial.entered.wait()
    edges_before = changes.edges()

    slow.release.set()
    if late == "failure":
        with pytest.raises(Boom) as raised:
            await slow_task
        assert raised.value is late_error
    else:
        assert await slow_task == "released"
    assert breaker.state is HALF_OPEN  # neither re-opened nor closed by the stale outcome
    assert breaker.half_open_calls_in_flight == 1  # and the live trial kept its permit
    assert changes.edges() == edges_before

    trial.release.set()
    assert await trial_task == "released"
    assert breaker.state is CLOSED


async def test_S9_stale_failure_while_open_does_not_restart_the_timer() -> None:
    breaker, clock = make_breaker(fail_max=2, reset_timeout=10.0)
    slow = Held(outcome=Boom("late"))
    slow_task = asyncio.create_task(breaker.call(slow))
    await slow.entered.wait()
    await trip(breaker)
    clock.advance(6.0)
    slow.release.set()
    with pytest.raises(Boom):
        await slow_task
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(succeed)
    assert rejected.value.retry_after == pytest.approx(4.0)
    clock.advance(4.0)
    assert breaker.state is HALF_OPEN


async def test_S9_stale_outcome_after_manual_close_is_not_counted() -> None:
    breaker, _ = make_breaker(fail_max=1)
    slow = Held(outcome=Boom("late"))
    slow_task = asyncio.create_task(breaker.call(slow))
    await slow.entered.wait()
    breaker.open()
    breaker.close()  # an operator reset: the earlier call belongs to another generation
    slow.release.set()
    with pytest.raises(Boom):
        await slow_task
    assert (breaker.state, breaker.failure_count) == (CLOSED, 0)


# --------------------------------------------------------------------------- threads


def test_S9_thread_safety() -> None:
    threads_count, rounds = 8, 3_000
    max_calls = 2
    clock = FakeClock(start=0.0)
    changes = StateChanges()
    breaker = CircuitBreaker(
        fail_max=3,
        reset_timeout=5.0,
        half_open_max_calls=max_calls,
        exclude=[BusinessError],
        clock=clock,
        listeners=[changes],
    )
    violations: list[str] = []
    admitted = [0] * threads_count
    stop = threading.Event()
    start = threading.Barrier(threads_count + 1)

    async def fake_service(outcome: str) -> str:  # lock-free: returns or raises at once
        if outcome == "failure":
            raise Boom("down")
        if outcome == "business":
            raise BusinessError("declined")
        return outcome

    def raw_worker(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        for _ in range(rounds):
            if rng.random() < 0.02:
                clock.advance(1.0)
            try:
                permit = breaker.acquire()
            except CircuitOpenError as rejected:
                if rejected.retry_after < 0:
                    violations.append(f"negative retry_after {rejected.retry_after}")
                continue
            admitted[index] += 1
            if breaker.half_open_calls_in_flight > max_calls:
                violations.append("too many half-open permits")
            outcome = rng.choice(("success", "failure", "failure", "release"))
            if outcome == "success":
                breaker.record_success(permit)
            elif outcome == "failure":
                breaker.record_failure(permit)
            else:
                breaker.release(permit)

    def async_worker(index: int) -> None:
        rng = random.Random(index)

        async def hammer() -> None:
            for _ in range(rounds):
                if rng.random() < 0.02:
                    clock.advance(1.0)
                outcome = rng.choice(("success", "failure", "failure", "business"))
                try:
                    await breaker.call(fake_service, outcome)
                except CircuitOpenError:
                    continue
                except (Boom, BusinessError):
                    pass
                admitted[index] += 1

        start.wait()
        asyncio.run(hammer())

    def monitor() -> None:
        while not stop.is_set():
            if breaker.half_open_calls_in_flight > max_calls:
                violations.append("monitor saw too many half-open permits")

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [
            threading.Thread(target=raw_worker if i % 2 else async_worker, args=(i,))
            for i in range(threads_count)
        ]
        watcher = threading.Thread(target=monitor)
        watcher.start()
        for worker in workers:
            worker.start()
        start.wait()
        for worker in workers:
            worker.join()
        stop.set()
        watcher.join()
    finally:
        sys.setswitchinterval(old_interval)

    assert violations == []
    assert all(admitted)  # every thread got calls through
    # Every permit was handed back: nothing is left in flight.
    assert breaker.half_open_calls_in_flight == 0
    assert breaker.state in (CLOSED, OPEN, HALF_OPEN)
    assert 0 <= breaker.failure_count < breaker.fail_max
    allowed = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
    edges = changes.edges()
    assert (CLOSED, OPEN) in edges  # it really cycled
    assert (HALF_OPEN, CLOSED) in edges
    assert set(edges) <= allowed
    # Still a working breaker afterwards.
    breaker.close()
    permit = breaker.acquire()
    breaker.record_success(permit)
    assert breaker.state is CLOSED


def test_S9_thread_safety_of_the_first_async_with_in_two_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two threads (each with its own event loop) enter ``async with breaker:``
    # for the first time at once. The breaker sets up its per-task permit stack
    # lazily; barriers make both threads reach that setup together and keep
    # both blocks open at once — interleavings a thread switch can produce.
    # Each block must get its own permit back on exit.
    workers: set[threading.Thread] = set()
    both_setting_up = threading.Barrier(2)
    both_inside = threading.Barrier(2)
    real_context_var = permit_stack_module.ContextVar

    def context_var_met_by_both(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() in workers:
            with contextlib.suppress(threading.BrokenBarrierError):
                both_setting_up.wait(timeout=2.0)  # a liveness guard only
        return real_context_var(*args, **kwargs)

    monkeypatch.setattr(permit_stack_module, "ContextVar", context_var_met_by_both)
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=2)
    breaker.open()
    clock.advance(breaker.reset_timeout)
    outcomes: list[object] = []

    async def block() -> str:
        async with breaker:
            # Each thread runs its own loop: blocking it here only holds this block
            # open until the other thread's block is open too.
            with contextlib.suppress(threading.BrokenBarrierError):
                both_inside.wait(timeout=2.0)
            return "done"

    def enter_and_leave() -> None:
        try:
            outcomes.append(asyncio.run(block()))
        except Exception as error:  # collected, asserted below
            outcomes.append(error)

    threads = [threading.Thread(target=enter_and_leave) for _ in range(2)]
    workers.update(threads)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["done", "done"]
    assert breaker.state is CLOSED


async def test_S9_raising_exclude_predicate_does_not_leak_the_permit() -> None:
    # A buggy predicate is the user's problem, but it must not wedge the breaker:
    # every permit is handed back on every exit path.
    def buggy(error: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1, exclude=[buggy])
    breaker.open()
    clock.advance(breaker.reset_timeout)
    with pytest.raises(Exception):  # noqa: PT011,B017 - which one is not the point here
        await breaker.call(fail_with, Boom("down"))
    assert breaker.half_open_calls_in_flight == 0


# --------------------------------------------------------------------------- ways to call


async def test_S9_decorator_guards_every_call() -> None:
    breaker, _ = make_breaker(fail_max=2)
    calls: list[str] = []

    @breaker
    async def reserve(order_id: str, *, quantity: int) -> str:
        """Reserve stock."""
        calls.append(order_id)
        if order_id == "bad":
            raise Boom(order_id)
        return f"{order_id}x{quantity}"

    assert reserve.__name__ == "reserve"
    assert reserve.__doc__ == "Reserve stock."
    assert await reserve("a", quantity=2) == "ax2"
    for _ in range(2):
        with pytest.raises(Boom):
            await reserve("bad", quantity=1)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        await reserve("b", quantity=1)
    assert calls == ["a", "bad", "bad"]


async def test_S9_async_with_counts_outcomes() -> None:
    breaker, _ = make_breaker(fail_max=2, exclude=[BusinessError])
    async with breaker as entered:
        assert entered is breaker
    business = BusinessError("declined")
    with pytest.raises(BusinessError) as raised:
        async with breaker:
            raise business
    assert raised.value is business
    assert breaker.failure_count == 0
    for _ in range(2):
        with pytest.raises(Boom):
            async with breaker:
                raise Boom("down")
    assert breaker.state is OPEN
    body_ran = False
    with pytest.raises(CircuitOpenError):
        async with breaker:
            body_ran = True
    assert not body_ran


async def test_S9_async_with_nested_block_rides_on_the_outer_permit() -> None:
    # Same task, same breaker: the nested block takes no permit (even with a
    # free one) and records nothing; the outer block's outcome is the one that
    # counts. (More mixes of nested calls in test_breaker_reentrancy.py.)
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=2)
    await open_then_half_open(breaker, clock)
    inner_in_flight: list[int] = []

    async def inner_block() -> None:
        async with breaker:
            inner_in_flight.append(breaker.half_open_calls_in_flight)
            raise Boom("inner")

    async with breaker:
        assert breaker.half_open_calls_in_flight == 1
        with pytest.raises(Boom):
            await inner_block()  # same task: nested inside the outer block
        assert inner_in_flight == [1]
        assert breaker.half_open_calls_in_flight == 1
        assert breaker.state is HALF_OPEN  # the nested failure did not re-open it
    assert breaker.state is CLOSED


async def test_S9_async_with_concurrent_blocks_return_their_own_permits() -> None:
    # A enters while CLOSED; the circuit then opens and half-opens; B enters as a
    # trial. A leaves first, with a failure: it must hand back *its* (stale)
    # permit, not B's — otherwise the failure would re-open the circuit.
    breaker, clock = make_breaker(fail_max=1, reset_timeout=10.0, half_open_max_calls=1)
    a_inside, a_leave = asyncio.Event(), asyncio.Event()
    b_inside, b_leave = asyncio.Event(), asyncio.Event()

    async def block(inside: asyncio.Event, leave: asyncio.Event, error: Exception | None) -> str:
        async with breaker:
            inside.set()
            await leave.wait()
            if error is not None:
                raise error
        return "done"

    a = asyncio.create_task(block(a_inside, a_leave, Boom("a fails late")))
    await a_inside.wait()
    await trip(breaker)
    clock.advance(10.0)
    b = asyncio.create_task(block(b_inside, b_leave, None))
    await b_inside.wait()
    assert breaker.half_open_calls_in_flight == 1

    a_leave.set()
    with pytest.raises(Boom):
        await a
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 1
    b_leave.set()
    assert await b == "done"
    assert breaker.state is CLOSED


def test_S9_async_with_block_left_pending_by_a_closed_loop_is_freed_without_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop closes with a task still inside ``async with breaker`` (a
    second Ctrl-C cut ``asyncio.run``'s shutdown short): freed, its block
    is closed outside any task — without "Exception ignored ...
    RuntimeError: breaker __aexit__ without a matching __aenter__"."""
    breaker, _ = make_breaker(fail_max=1)
    # The objects this test made (their ids, taken while they live): what
    # another test left for the collector, freed here, reports about its own.
    ours: set[int] = set()
    unraisable: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook",
        lambda report: unraisable.append(f"{report.exc_type.__name__}: {report.exc_value}")
        if id(report.object) in ours else None,
    )
    entered = asyncio.Event()

    async def guarded() -> None:
        async with breaker:
            entered.set()
            await asyncio.Event().wait()  # until the loop cancels us: it never does

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(guarded())
        held.append(task)
        ours.update((id(task), id(task.get_coro()), id(asyncio.current_task())))
        await entered.wait()

    held: list[asyncio.Task[None]] = []
    loop = asyncio.new_event_loop()
    ours.add(id(loop))
    loop.run_until_complete(main())
    loop.close()
    del loop, held[:]
    gc.collect()
    assert unraisable == []
    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


# --------------------------------------------------------------------------- manual control


async def test_S9_open_and_close_by_hand() -> None:
    changes = StateChanges()
    breaker, clock = make_breaker(fail_max=3, reset_timeout=30.0, listeners=[changes])
    await trip(breaker, 2)
    breaker.open()
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError) as rejected:
        await breaker.call(succeed)
    assert rejected.value.retry_after == pytest.approx(30.0)
    breaker.close()
    assert (breaker.state, breaker.failure_count) == (CLOSED, 0)
    assert await breaker.call(succeed) == "ok"
    breaker.open()
    clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    breaker.close()
    assert breaker.state is CLOSED
    assert changes.edges() == [
        (CLOSED, OPEN),
        (OPEN, CLOSED),
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


# --------------------------------------------------------------------------- listeners


async def test_S9_listeners_get_breaker_state_changed() -> None:
    first, second = StateChanges(), StateChanges()
    breaker, clock = make_breaker(fail_max=1, reset_timeout=5.0, listeners=[first, second])
    await trip(breaker)
    clock.advance(5.0)
    with pytest.raises(Boom):
        await breaker.call(fail_with, Boom("probe fails"))
    clock.advance(5.0)
    await breaker.call(succeed)
    expected = [
        ("inventory", "closed", "open"),
        ("inventory", "open", "half_open"),
        ("inventory", "half_open", "open"),
        ("inventory", "open", "half_open"),
        ("inventory", "half_open", "closed"),
    ]
    assert first.changes == expected
    assert second.changes == expected


async def test_S9_raising_listener_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
            raise RuntimeError(f"listener broke on {new}")

    after = StateChanges()
    breaker, clock = make_breaker(fail_max=1, reset_timeout=5.0, listeners=[Broken(), after])
    with caplog.at_level(logging.ERROR, logger="fallback_saga"):
        error = Boom("down")
        with pytest.raises(Boom) as raised:
            await breaker.call(fail_with, error)
        assert raised.value is error
        assert breaker.state is OPEN
        clock.advance(5.0)
        assert await breaker.call(succeed) == "ok"
        breaker.open()
        breaker.close()
    assert breaker.state is CLOSED
    assert [new for _, _, new in after.changes] == ["open", "half_open", "closed", "open", "closed"]
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert logged
    assert all(isinstance(error, RuntimeError) for error in logged)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"fail_max": 0}, id="fail_max=0"),
        pytest.param({"fail_max": -1}, id="fail_max<0"),
        pytest.param({"fail_max": 2.5}, id="fail_max-float"),
        pytest.param({"fail_max": True}, id="fail_max-bool"),
        pytest.param({"fail_max": "5"}, id="fail_max-str"),
        pytest.param({"reset_timeout": 0}, id="reset_timeout=0"),
        pytest.param({"reset_timeout": -1.0}, id="reset_timeout<0"),
        pytest.param({"reset_timeout": float("nan")}, id="reset_timeout-nan"),
        pytest.param({"reset_timeout": float("inf")}, id="reset_timeout-inf"),
        pytest.param({"reset_timeout": "60"}, id="reset_timeout-str"),
        pytest.param({"reset_timeout": True}, id="reset_timeout-bool"),
        pytest.param({"reset_timeout": 10**400}, id="reset_timeout-beyond-a-float"),
        pytest.param({"sync_interval": 10**400}, id="sync_interval-beyond-a-float"),
        pytest.param({"half_open_max_calls": 0}, id="half_open_max_calls=0"),
        pytest.param({"half_open_max_calls": True}, id="half_open_max_calls-bool"),
        pytest.param({"half_open_max_calls": 1.0}, id="half_open_max_calls-float"),
        pytest.param({"exclude": [42]}, id="exclude-int"),
        pytest.param({"exclude": [int]}, id="exclude-non-exception-type"),
        pytest.param({"exclude": [BusinessError("an instance")]}, id="exclude-instance"),
        pytest.param({"exclude": ["BusinessError"]}, id="exclude-str"),
        pytest.param({"clock": 12.0}, id="clock-not-callable"),
    ],
)
def test_S9_invalid_constructor_arguments_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        CircuitBreaker(**options)


BEYOND_A_FLOAT = "1" + "0" * 76 + "..."  # 10**400, shown shortened


@pytest.mark.parametrize(
    ("option", "given", "shown"),
    [
        ("reset_timeout", 0, "0"),
        ("reset_timeout", -1.0, "-1.0"),
        ("reset_timeout", float("nan"), "nan"),
        ("reset_timeout", float("inf"), "inf"),
        ("reset_timeout", "60", "'60'"),
        ("reset_timeout", True, "True"),
        ("reset_timeout", 10**400, BEYOND_A_FLOAT),
        ("sync_interval", float("nan"), "nan"),
        ("sync_interval", 0, "0"),
        ("sync_interval", 10**400, BEYOND_A_FLOAT),
    ],
)
def test_S9_a_timing_that_is_no_finite_number_of_seconds_is_refused_saying_what_was_given(
    option: str, given: object, shown: str
) -> None:
    """The message names the setting, says a finite number of seconds is
    wanted (it said "seconds > 0" of a NaN) and shows what was given,
    shortened: an int too large for a float was written out in 400 digits."""
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        CircuitBreaker(**{option: given})
    assert str(refused.value) == (
        f"{option} must be a finite number of seconds > 0, got {shown}"
    )


BAD_READINGS = [
    pytest.param(float("nan"), "nan", id="nan"),
    pytest.param(float("inf"), "inf", id="inf"),
    pytest.param(float("-inf"), "-inf", id="-inf"),
]


def clock_refused(shown: str) -> str:
    return (
        f"circuit breaker 'inventory': its clock returned {shown}, not a finite number "
        f"of seconds (clock= must return monotonic seconds, as time.monotonic does)"
    )


@pytest.mark.parametrize(("reading", "shown"), BAD_READINGS)
async def test_S9_a_clock_that_reads_no_finite_time_at_the_trip_is_a_clear_error(
    reading: float, shown: str
) -> None:
    """A NaN clock left a tripped breaker letting every call through (its
    reopen time NaN: never past, never ahead); an infinite one half-opened it
    at once. The failure that needs the time says the clock is broken, the
    service's error kept as the cause; the circuit stays CLOSED, counting."""
    breaker, clock = make_breaker(fail_max=2)
    await trip(breaker, 1)
    clock.now = reading
    service_error = Boom("down")
    with pytest.raises(ValueError, match="its clock returned") as refused:
        await breaker.call(fail_with, service_error)
    assert str(refused.value) == clock_refused(shown)
    assert refused.value.__cause__ is service_error
    assert breaker._state is CLOSED


@pytest.mark.parametrize(("reading", "shown"), BAD_READINGS)
@pytest.mark.parametrize("stuck", ["open", "half-open"])
async def test_S9_a_clock_gone_bad_while_not_closed_is_a_clear_error_and_nothing_is_called(
    reading: float, shown: str, stuck: str
) -> None:
    """Open, a NaN clock let every call through uncounted (never half-open,
    never re-opened), +inf half-opened it at once, -inf rejected for ever
    (retry_after=inf). Each call that reads the bad time now says so."""
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1)
    await trip(breaker)
    if stuck == "half-open":
        clock.advance(breaker.reset_timeout)
        held = Held()
        trial = asyncio.create_task(breaker.call(held))
        await held.entered.wait()
    clock.now = reading
    calls: list[str] = []

    async def service() -> None:
        calls.append("called")

    for _ in range(2):
        with pytest.raises(ValueError, match="its clock returned") as refused:
            await breaker.call(service)
        assert str(refused.value) == clock_refused(shown)
    with pytest.raises(ValueError, match="its clock returned"):
        async with breaker:
            calls.append("block ran")
    assert calls == []
    if stuck == "half-open":
        held.release.set()
        await trial
    else:
        with pytest.raises(ValueError, match="its clock returned"):
            breaker.state  # noqa: B018 — reading the state reads the clock


@pytest.mark.parametrize(("reading", "shown"), BAD_READINGS)
async def test_S9_opening_by_hand_on_a_clock_gone_bad_is_a_clear_error_and_closing_still_works(
    reading: float, shown: str
) -> None:
    """``open()`` with a NaN clock made a circuit that let every call
    through; ``close()`` keeps no time, so it closes whatever the clock says."""
    breaker, clock = make_breaker()
    clock.now = reading
    with pytest.raises(ValueError, match="its clock returned") as refused:
        breaker.open()
    assert str(refused.value) == clock_refused(shown)
    assert breaker._state is CLOSED
    clock.now = 1_000.0
    breaker.open()
    clock.now = reading
    breaker.close()
    assert breaker._state is CLOSED
    assert await breaker.call(succeed) == "ok"


async def test_S9_the_closed_path_does_not_read_the_clock() -> None:
    """The clock is checked where it is read: on a trip and off the closed
    path. A closed breaker's calls, successes and failures below fail_max,
    read no time at all (the check costs that path nothing)."""
    breaker, clock = make_breaker(fail_max=3)
    clock.now = float("nan")
    reads = clock.reads
    for _ in range(100):
        await breaker.call(succeed)
    await trip(breaker, 2)
    await breaker.call(succeed)
    assert clock.reads == reads
    assert breaker.failure_count == 0


def test_S9_defaults_and_protocol() -> None:
    breaker = CircuitBreaker()
    assert (breaker.fail_max, breaker.reset_timeout, breaker.half_open_max_calls) == (5, 60.0, 1)
    assert breaker.state is CLOSED
    assert isinstance(breaker, CircuitBreakerProtocol)
    assert breaker.is_open_error(CircuitOpenError("x", 1.0))
    assert not breaker.is_open_error(Boom())


def test_S9_circuit_open_error_pickles() -> None:
    error = CircuitOpenError("payments", 12.5)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CircuitOpenError
    assert (copy.breaker, copy.retry_after) == ("payments", 12.5)
    assert str(copy) == str(error)
    assert isinstance(copy, Exception)


# --------------------------------------------------------------------------- with Fallback


@dataclasses.dataclass
class StockContext(SagaContext):
    order_id: str
    reserved_by: str = ""


class Reserve:
    name = "Reserve"

    def __init__(self) -> None:
        self.calls = 0

    async def act(self, context: StockContext) -> str:
        self.calls += 1
        context.reserved_by = self.name
        return self.name

    async def compensate(self, context: StockContext) -> None:
        return None


class ReserveElsewhere(Reserve):
    name = "ReserveElsewhere"


class ToyBreakerOpen(Exception):
    """A third-party breaker's own open-circuit error (not a CircuitOpenError)."""


class ToyBreaker:
    """A small third-party-style breaker: open or closed, nothing more."""

    def __init__(self) -> None:
        self.is_open = False
        self.passed = 0

    async def call(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
        if self.is_open:
            raise ToyBreakerOpen("toy circuit open")
        self.passed += 1
        return await fn(*args, **kwargs)

    def is_open_error(self, error: BaseException) -> bool:
        return isinstance(error, ToyBreakerOpen)


class FallbackTaken:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self.errors.append(error)


async def test_S9_third_party_breaker_open_error_triggers_fallback_without_primary() -> None:
    toy = ToyBreaker()
    assert isinstance(toy, CircuitBreakerProtocol)
    primary, fallback = Reserve(), ReserveElsewhere()
    waits: list[float] = []

    async def record_wait(delay: float) -> None:
        waits.append(delay)

    class StockSaga(Saga[StockContext]):
        steps = [
            Fallback(
                step=primary,
                fallback=fallback,
                failure_exceptions=(KeyError,),  # the toy's open error is not listed
                circuit_breaker=toy,
                retry=RetryPolicy(attempts=3, sleep=record_wait),
            )
        ]

    taken = FallbackTaken()
    saga = StockSaga(listeners=[taken])
    closed_result = await saga.run(StockContext(order_id="1"))
    assert closed_result.context.reserved_by == "Reserve"
    assert (toy.passed, primary.calls) == (1, 1)

    toy.is_open = True
    open_result = await saga.run(StockContext(order_id="2"))
    assert open_result.context.reserved_by == "ReserveElsewhere"
    assert primary.calls == 1  # not called while the toy circuit is open
    assert fallback.calls == 1
    assert waits == []  # an open circuit is never retried
    assert len(taken.errors) == 1
    assert isinstance(taken.errors[0], ToyBreakerOpen)


async def test_S3_S9_open_circuit_triggers_fallback_whatever_failure_exceptions_say() -> None:
    breaker, _ = make_breaker(fail_max=1)
    primary, fallback = Reserve(), ReserveElsewhere()

    class StockSaga(Saga[StockContext]):
        steps = [
            Fallback(
                step=primary,
                fallback=fallback,
                failure_exceptions=(KeyError,),
                circuit_breaker=breaker,
            )
        ]

    breaker.open()
    result = await StockSaga().run(StockContext(order_id="1"))
    assert result.context.reserved_by == "ReserveElsewhere"
    assert (primary.calls, fallback.calls) == (0, 1)


async def test_call_passes_positional_and_keyword_arguments_on_every_path() -> None:
    # The closed path calls fn without keywords as a plain call; with keywords
    # (and on the guarded path, after a failure) they still reach fn.
    async def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    async def boom() -> None:
        raise RuntimeError("down")

    breaker = CircuitBreaker(fail_max=5, reset_timeout=60.0)
    assert await breaker.call(echo) == ((), {})
    assert await breaker.call(echo, 1, 2) == ((1, 2), {})
    assert await breaker.call(echo, 1, key="v") == ((1,), {"key": "v"})
    assert await breaker.call(echo, fn="named like the first parameter") == (
        (), {"fn": "named like the first parameter"}
    )
    with pytest.raises(RuntimeError):
        await breaker.call(boom)
    assert breaker.failure_count == 1
    assert await breaker.call(echo, 3, key="w") == ((3,), {"key": "w"})
    assert breaker.failure_count == 0
