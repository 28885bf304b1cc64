"""Rule S9, ``async with breaker:``: a block whose task was destroyed pending
while the loop runs.

asyncio keeps tasks only weakly: a task awaiting a future nobody else holds is
garbage ("Task was destroyed but it is pending!"), and the garbage collector
closes its coroutine — running the block's ``__aexit__`` with GeneratorExit in
whatever context is current at that moment: another task's step (perhaps
inside a block of the same breaker), or a loop callback. That block must leave
the other task's permit stack alone: popping the other task's entry made the
other task's own exit fail ("breaker __aexit__ without a matching __aenter__",
raised in an innocent task) and recorded the dead block's exit against the
other task's permit (a half-open trial's slot handed back twice).

The dead block hands back nothing, as when its loop is closed (test_breaker's
``..._left_pending_by_a_closed_loop_...``): its permit is on its own task's
stack, out of reach; and it runs inside the collector, which may have
interrupted this breaker's own locked section in this thread. A half-open
trial it held is a trial that never reports back: a new round of trials is let
through ``reset_timeout`` after the round began, as for a hung call.

The dead task is built explicitly and collected by ``gc.collect()`` at a
chosen point; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import pytest
from helpers_breaker import Boom, BusinessError, FakeClock, fail_with, succeed

from fallback_saga import CircuitBreaker, CircuitOpenError, CircuitState

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

RESET = 30.0


def make_breaker(**options: Any) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    options.setdefault("reset_timeout", RESET)
    options.setdefault("name", "inventory")
    options.setdefault("exclude", BusinessError)
    return CircuitBreaker(clock=clock, **options), clock


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.open()
    clock.advance(breaker.reset_timeout)
    assert breaker.state is HALF_OPEN


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the collector reported as "Exception ignored in ...": must stay empty."""
    reported: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook",
        lambda report: reported.append(f"{report.exc_type.__name__}: {report.exc_value}"),
    )
    return reported


@contextlib.asynccontextmanager
async def wrapped(breaker: CircuitBreaker) -> AsyncIterator[None]:
    """The breaker behind an ``asynccontextmanager`` of the user's: a closed
    coroutine reaches the block through ``athrow`` of an async generator."""
    async with breaker:
        yield


async def enter_and_hang(breaker: CircuitBreaker, form: str, inside: asyncio.Event) -> None:
    """Enter a block of ``breaker`` in the given form, then wait on a future
    nobody else holds: once its task is dropped, it is garbage."""
    hang = asyncio.get_running_loop().create_future()
    if form == "async_with":
        async with breaker:
            inside.set()
            await hang
    elif form == "nested":
        async with breaker, breaker:  # two blocks, one nested in the other
            inside.set()
            await hang
    elif form == "exit_stack":
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            inside.set()
            await hang
    elif form == "wrapped":
        async with wrapped(breaker):
            inside.set()
            await hang
    elif form == "call":
        async def waits_in_call() -> None:
            inside.set()
            await hang

        await breaker.call(waits_in_call)
    elif form == "decorated":
        @breaker
        async def waits_decorated() -> None:
            inside.set()
            await hang

        await waits_decorated()
    elif form == "call_inside":
        async with breaker:
            async def waits() -> None:
                inside.set()
                await hang

            await breaker.call(waits)
    else:
        raise ValueError(form)


FORMS = ("async_with", "nested", "exit_stack", "wrapped", "call_inside")


async def start_doomed(
    breaker: CircuitBreaker, form: str = "async_with", held: list[object] | None = None
) -> weakref.ref[Any]:
    """A task inside a block of ``breaker``, referenced by nobody (or only by
    ``held``, until it is cleared): the next collection destroys it pending.
    Returns a weak reference to it."""
    inside = asyncio.Event()
    task = asyncio.get_running_loop().create_task(enter_and_hang(breaker, form, inside))
    await inside.wait()
    if held is not None:
        held.append(task)
    return weakref.ref(task)


def collect(doomed: weakref.ref[Any]) -> None:
    gc.collect()
    assert doomed() is None, "the dead task was not collected: the test proves nothing"


# ------------------------------------------------------------------- inside another task's block


@pytest.mark.parametrize("form", FORMS)
async def test_S9_block_of_a_task_collected_inside_another_tasks_block_leaves_that_block_alone(
    form: str, unraisable: list[str],
) -> None:
    """The collection runs inside task T's block of the same breaker: T's
    block leaves as it would have (its error counted once, against its own
    permit), and T's permit stack is empty afterwards."""
    breaker, _ = make_breaker(fail_max=2)
    doomed = await start_doomed(breaker, form)

    async def innocent() -> None:
        async with breaker:
            collect(doomed)
            raise Boom("T's own failure")

    with pytest.raises(Boom):
        await asyncio.get_running_loop().create_task(innocent())
    assert breaker.failure_count == 1
    # This task's stack held nothing of the dead block: its failing call is
    # not taken for a nested one, and counts.
    with pytest.raises(Boom):
        await breaker.call(fail_with, Boom("second"))
    assert breaker.state is OPEN
    assert unraisable == []


async def test_S9_block_of_a_task_collected_in_the_same_tasks_block_it_entered_after(
    unraisable: list[str],
) -> None:
    """The test's own task collects inside its block (no task of its own):
    the block after it starts with an empty stack."""
    breaker, _ = make_breaker(fail_max=1)
    doomed = await start_doomed(breaker)
    async with breaker:
        collect(doomed)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom("counted: not nested in anything")
    assert breaker.state is OPEN
    assert unraisable == []


async def test_S9_half_open_trial_of_a_collected_task_is_not_handed_back_twice(
    unraisable: list[str],
) -> None:
    """Half-open, two trials: the dead task holds one, T the other. The
    collection inside T's block gives back neither of them: T's stays T's
    (its success closes the circuit); the dead one's is a trial that never
    reports back."""
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=2)
    half_open(breaker, clock)
    doomed = await start_doomed(breaker)
    assert breaker.half_open_calls_in_flight == 1

    async def innocent() -> str:
        async with breaker:
            assert breaker.half_open_calls_in_flight == 2
            collect(doomed)
            assert breaker.half_open_calls_in_flight == 2
            assert breaker.state is HALF_OPEN
        return "done"

    assert await asyncio.get_running_loop().create_task(innocent()) == "done"
    assert breaker.state is CLOSED
    assert unraisable == []


async def test_S9_half_open_trial_of_a_collected_task_comes_back_with_the_next_round(
    unraisable: list[str],
) -> None:
    """Half-open, one trial, held by a task that dies pending: calls are
    rejected as while a trial hangs — then, ``reset_timeout`` after the round
    began, a new trial is let through and closes the circuit."""
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1)
    half_open(breaker, clock)
    doomed = await start_doomed(breaker)
    collect(doomed)
    assert breaker.half_open_calls_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    clock.advance(RESET)
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is CLOSED
    assert unraisable == []


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
async def test_S9_block_of_a_task_collected_inside_an_eager_tasks_first_step(
    unraisable: list[str],
) -> None:
    """T starts eagerly and collects inside its block during that first step,
    run on its creator's frames."""
    breaker, _ = make_breaker(fail_max=2)
    doomed = await start_doomed(breaker)
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        async def innocent() -> None:
            async with breaker:
                collect(doomed)
                raise Boom("T's own failure")

        task = loop.create_task(innocent())
        assert task.done()  # ran eagerly, to the end
    finally:
        loop.set_task_factory(None)
    with pytest.raises(Boom):
        await task
    assert breaker.failure_count == 1
    assert unraisable == []


# ------------------------------------------------------------------- in a loop callback


class _Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield None


async def by_hand(breaker: CircuitBreaker) -> None:
    async with breaker:
        await _Suspend()


@pytest.mark.parametrize("how", ["collected", "closed_by_hand"])
async def test_S9_block_closed_in_a_callback_hands_back_no_other_trial(
    how: str, unraisable: list[str],
) -> None:
    """A block is closed in a loop callback (no task) whose context is a copy
    of a finished task's, made inside its block — by the collector (its task
    destroyed pending), or by hand (a coroutine driven by hand in a context
    of its own). The copy's entry is not the closed block's: that finished
    task's trial (already handed back) is not handed back again, which freed
    the slot of a trial still in flight."""
    breaker, clock = make_breaker(fail_max=1, half_open_max_calls=1)
    held: list[object] = []
    # Both entered while CLOSED: they hold no trial.
    doomed = await start_doomed(breaker, held=held)
    stray = by_hand(breaker)
    contextvars.Context().run(stray.send, None)
    half_open(breaker, clock)
    saved: list[contextvars.Context] = []

    async def first_trial() -> None:
        with contextlib.suppress(BusinessError):
            async with breaker:
                saved.append(contextvars.copy_context())
                raise BusinessError("excluded: the trial is handed back")

    first = asyncio.get_running_loop().create_task(first_trial())
    await first
    first_gone = weakref.ref(first)
    del first
    await asyncio.sleep(0)  # the loop lets go of the handle that woke us with it
    gc.collect()
    assert first_gone() is None  # (the copy's entry names a task that is gone)
    assert breaker.half_open_calls_in_flight == 0

    second_inside, second_leave = asyncio.Event(), asyncio.Event()

    async def second_trial() -> None:
        async with breaker:
            second_inside.set()
            await second_leave.wait()

    second = asyncio.get_running_loop().create_task(second_trial())
    await second_inside.wait()
    assert breaker.half_open_calls_in_flight == 1

    collected = asyncio.Event()

    def in_callback() -> None:
        assert asyncio.current_task() is None
        if how == "collected":
            held.clear()
            collect(doomed)
        else:
            stray.close()
        collected.set()

    asyncio.get_running_loop().call_soon(in_callback, context=saved.pop())
    await collected.wait()
    assert breaker.half_open_calls_in_flight == 1  # the second trial's, still in flight
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)
    second_leave.set()
    await second
    assert breaker.state is CLOSED
    stray.close()
    held.clear()
    assert unraisable == []


async def test_S9_block_of_a_task_collected_in_a_callback_with_a_copy_of_a_live_block(
    unraisable: list[str],
) -> None:
    """The callback's context is a copy of task T's while T is inside its
    block: T's block and counts are untouched."""
    breaker, _ = make_breaker(fail_max=2)
    doomed = await start_doomed(breaker)
    collected = asyncio.Event()

    def in_callback() -> None:
        collect(doomed)
        collected.set()

    async def innocent() -> None:
        async with breaker:
            asyncio.get_running_loop().call_soon(in_callback)  # runs with a copy of this context
            await collected.wait()
            raise Boom("T's own failure")

    with pytest.raises(Boom):
        await asyncio.get_running_loop().create_task(innocent())
    assert breaker.failure_count == 1
    assert unraisable == []


# ------------------------------------------------------------------- GeneratorExit, no collection


async def test_S9_async_generator_closed_by_its_consumer_leaves_its_block() -> None:
    """An async generator that yields inside a block (directly or through an
    ``AsyncExitStack``), closed by the task consuming it: its block leaves
    the task's stack as it found it."""
    breaker, _ = make_breaker(fail_max=1)

    async def direct() -> AsyncIterator[int]:
        async with breaker:
            yield 1

    async def stacked() -> AsyncIterator[int]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            yield 1

    for make in (direct, stacked):
        generator = make()
        assert await generator.__anext__() == 1
        await generator.aclose()
    assert breaker.state is CLOSED
    with pytest.raises(Boom):
        await breaker.call(fail_with, Boom("counted: not nested in the generators' blocks"))
    assert breaker.state is OPEN


@pytest.mark.parametrize("close", [
    lambda coroutine: coroutine.close(),
    lambda coroutine: coroutine.throw(GeneratorExit),
], ids=["close", "throw"])
async def test_S9_coroutine_closed_by_hand_in_a_task_leaves_its_block(
    close: Callable[[Any], object],
) -> None:
    """A coroutine the task drives and closes by hand (no collector
    involved): its block leaves the task's stack as it found it."""
    breaker, _ = make_breaker(fail_max=1)

    async def by_hand() -> None:
        async with breaker:
            await _Suspend()

    coroutine = by_hand()
    coroutine.send(None)
    with contextlib.suppress(GeneratorExit):
        close(coroutine)
    with pytest.raises(Boom):
        await breaker.call(fail_with, Boom("counted: not nested in the closed block"))
    assert breaker.state is OPEN



# ------------------------------------------------------------------- call() inside the lock


class CollectingClock(FakeClock):
    """A clock that, once armed, runs a collection on its next read. The
    breaker reads its clock while it holds its lock (granting a half-open
    trial, opening the circuit): the collection runs where one triggered by an
    allocation inside that section would."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: weakref.ref[Any] | None = None

    def __call__(self) -> float:
        doomed, self.armed = self.armed, None
        if doomed is not None:
            collect(doomed)
        return super().__call__()


def within_seconds(scenario: Callable[[], Any], seconds: float = 10.0) -> None:
    """Run the async ``scenario`` in a loop of its own in another thread: a
    thread deadlocked on the breaker's lock fails the test instead of hanging
    the suite (the thread is a daemon, left blocked)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as error:  # handed to the test's thread
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True, name="breaker-collection")
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), (
        "deadlocked: a dead task's call() took the breaker's lock inside a collection "
        "that interrupted a section holding it"
    )
    if failures:
        raise failures[0]


@pytest.mark.parametrize("form", ["call", "decorated"])
def test_S9_call_of_a_task_collected_while_the_breaker_holds_its_lock_takes_nothing(
    form: str, unraisable: list[str],
) -> None:
    """Half-open, two trials: a task dies pending inside call() (or a decorated
    function) holding one, and the collection that closes it runs while this
    thread holds the breaker's lock, granting the other. The dead call hands
    nothing back (taking the lock there deadlocked the thread, the event loop
    with it): its trial is one that never reports back, the other trial's
    success closes the circuit."""
    in_flight: list[int] = []

    async def scenario() -> None:
        clock = CollectingClock()
        breaker = CircuitBreaker(
            clock=clock, reset_timeout=RESET, fail_max=1, half_open_max_calls=2
        )
        half_open(breaker, clock)
        doomed = await start_doomed(breaker, form)
        in_flight.append(breaker.half_open_calls_in_flight)
        clock.armed = doomed

        async def trial() -> str:
            in_flight.append(breaker.half_open_calls_in_flight)
            return "ok"

        assert await breaker.call(trial) == "ok"
        assert clock.armed is None  # the collection ran
        assert breaker.state is CLOSED

    within_seconds(scenario)
    assert in_flight == [1, 2]  # the dead call's trial was not handed back
    assert unraisable == []


def test_S9_call_of_a_task_collected_while_the_breaker_holds_its_lock_after_one_trial(
    unraisable: list[str],
) -> None:
    """Half-open, one trial, held by a call whose task dies pending inside a
    locked section: calls are rejected as while a trial hangs, then a new
    trial is let through ``reset_timeout`` after the round began."""

    async def scenario() -> None:
        clock = CollectingClock()
        breaker = CircuitBreaker(
            clock=clock, reset_timeout=RESET, fail_max=1, half_open_max_calls=1
        )
        half_open(breaker, clock)
        doomed = await start_doomed(breaker, "call")
        clock.armed = doomed
        with pytest.raises(CircuitOpenError):
            await breaker.call(succeed)
        assert clock.armed is None
        assert breaker.half_open_calls_in_flight == 1
        clock.advance(RESET)
        assert await breaker.call(succeed) == "ok"
        assert breaker.state is CLOSED

    within_seconds(scenario)
    assert unraisable == []


def test_S9_closed_path_call_of_a_collected_task_records_nothing_inside_the_lock(
    unraisable: list[str],
) -> None:
    """Closed: a dead task's function turns the collector's GeneratorExit into
    an error of its own, while this thread holds the breaker's lock (opening
    the circuit on another call's failure). That error is not counted (it
    took the lock: a deadlock); the collector reports it as raised in a
    coroutine it was closing."""

    async def scenario() -> None:
        clock = CollectingClock()
        breaker = CircuitBreaker(clock=clock, reset_timeout=RESET, fail_max=2)
        inside = asyncio.Event()

        async def converts() -> None:
            hang = asyncio.get_running_loop().create_future()  # nobody else holds it
            inside.set()
            try:
                await hang
            except GeneratorExit:
                raise Boom("turned from GeneratorExit") from None

        task = asyncio.get_running_loop().create_task(breaker.call(converts))
        await inside.wait()
        doomed = weakref.ref(task)
        del task
        with pytest.raises(Boom):
            await breaker.call(fail_with, Boom("first"))
        clock.armed = doomed
        with pytest.raises(Boom):
            await breaker.call(fail_with, Boom("second: opens, reading the clock locked"))
        assert clock.armed is None
        assert breaker.state is OPEN
        clock.advance(RESET)
        assert await breaker.call(succeed) == "ok"
        assert breaker.state is CLOSED

    within_seconds(scenario)
    assert unraisable == ["Boom: turned from GeneratorExit"]
