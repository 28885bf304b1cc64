"""Rule S9, ``async with breaker:`` inside an async generator.

An async generator's body runs in the context of whoever drives it: a block
it enters goes on its consumer's permit stack, and stays there while the
generator is parked at a ``yield`` inside it (the consumer's calls meanwhile
are not nested in that block: they are no part of the generator's guarded
work; the body of an ``asynccontextmanager`` wrapping the breaker is). A
consumer that leaves ``async for`` early (``break``, an error) without
closing the generator drops it: asyncio's finalizer closes it later in a
task of its own, where the block's exit cannot reach its entry. The
entry, left on the consumer's stack, made every later call of that task look
nested: nothing it did was recorded again, and the breaker never opened on its
failures. A block whose generator is over no longer counts as an outer block,
and such entries do not pile up.

Nothing sleeps: a generator's close is awaited through an event set in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from helpers_breaker import Boom, FakeClock, fail_with, succeed

from fallback_saga import CircuitBreaker, CircuitOpenError, CircuitState, permit_stack

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


def make_breaker(**options: Any) -> CircuitBreaker:
    options.setdefault("reset_timeout", 30.0)
    options.setdefault("name", "catalog")
    return CircuitBreaker(clock=FakeClock(), **options)


class Stream:
    """``rows()``: an async generator that yields inside a block of the
    breaker; ``closed`` is set once it has left the block (closed by its
    consumer or by asyncio's finalizer)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.closed = asyncio.Event()
        self.locals_alive: list[weakref.ref[object]] = []

    async def rows(self) -> AsyncGenerator[int, None]:
        marker = Marker()  # a local: kept as long as something holds the frame
        self.locals_alive.append(weakref.ref(marker))
        # No try/finally around the block: the generator's frame ends with the
        # exit of the breaker's block, re-raising the GeneratorExit from the
        # yield (a frame that ended so reads as if parked at that yield).
        async with self.breaker, SetOnExit(self.closed):
            for row in range(3):
                yield row


class SetOnExit:
    """Sets ``event`` when its block is left: inside the breaker's block, so
    the breaker's exit follows in the same step."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, *exc_info: object) -> None:
        self.event.set()


class Marker:
    pass


async def fail_in(breaker: CircuitBreaker, form: str) -> None:
    async def in_block() -> None:
        async with breaker:
            raise Boom("counted")

    with pytest.raises(Boom):
        await (breaker.call(fail_with, Boom("counted")) if form == "call" else in_block())


def depth(breaker: CircuitBreaker) -> int:
    """How many entries the current context's permit stack holds."""
    entry: Any = breaker._permits.get()
    count = 0
    while entry is not None:
        count += 1
        entry = entry[3]
    return count


# ------------------------------------------------------------------- dropped by the consumer


@pytest.mark.parametrize("form", ["call", "async_with"])
async def test_S9_stream_dropped_by_break_leaves_its_consumer_counting(form: str) -> None:
    """``async for ... break`` without closing the generator: once asyncio's
    finalizer has closed it, the consumer's failures count again."""
    breaker = make_breaker(fail_max=1)
    stream = Stream(breaker)
    async for _ in stream.rows():
        break
    await stream.closed.wait()
    assert depth(breaker) <= 1  # (left until a later block or check drops it)
    await fail_in(breaker, form)
    assert breaker.state is OPEN
    assert depth(breaker) == 0


async def test_S9_stream_with_a_finally_dropped_by_break_leaves_its_consumer_counting() -> None:
    breaker = make_breaker(fail_max=1)
    closed = asyncio.Event()

    async def rows() -> AsyncIterator[int]:
        try:
            async with breaker:
                yield 1
        finally:
            closed.set()

    async for _ in rows():
        break
    await closed.wait()
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


async def test_S9_stream_dropped_by_an_error_leaves_its_consumer_counting() -> None:
    breaker = make_breaker(fail_max=1)
    stream = Stream(breaker)
    with contextlib.suppress(KeyError):
        async for _ in stream.rows():
            raise KeyError("the consumer's own error, not the service's")
    await stream.closed.wait()
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


async def test_S9_stream_dropped_inside_the_consumers_own_block() -> None:
    """The consumer drops the stream inside its own block of the breaker:
    that block's failure is counted once (not taken for nested in the
    stream's block, entered after it), and once the stream is closed the
    consumer's failures count."""
    breaker = make_breaker(fail_max=3)
    stream = Stream(breaker)

    async def consumer() -> None:
        async with breaker:
            async for _ in stream.rows():
                break
            raise Boom("the consumer's block fails")

    with pytest.raises(Boom):
        await consumer()
    assert breaker.failure_count == 1
    await stream.closed.wait()
    await fail_in(breaker, "call")
    assert breaker.failure_count == 2
    await fail_in(breaker, "async_with")
    assert breaker.state is OPEN
    assert depth(breaker) == 0


async def test_S9_half_open_trial_after_a_dropped_stream_closes_the_circuit() -> None:
    """Half-open: a consumer that dropped a stream earlier is let through
    as a trial (not taken for nested), and its success closes the circuit."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    stream = Stream(breaker)
    async for _ in stream.rows():
        break
    await stream.closed.wait()
    breaker.open()
    clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(succeed) == "ok"
    assert breaker.state is CLOSED
    assert breaker.half_open_calls_in_flight == 0


async def test_S9_streams_dropped_by_a_long_lived_task_do_not_pile_up() -> None:
    """A worker task dropping a stream per job: the entries (and the
    generators' frames, with their locals) do not accumulate on its stack."""
    breaker = make_breaker(fail_max=1)
    streams = []
    for _ in range(20):
        stream = Stream(breaker)
        streams.append(stream)
        async for _ in stream.rows():
            break
        await stream.closed.wait()
        assert await breaker.call(succeed) == "ok"
    assert depth(breaker) <= 1
    alive = [ref for each in streams for ref in each.locals_alive if ref() is not None]
    assert len(alive) <= 1
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


# ------------------------------------------------------------------- the consumer's own calls


async def consumers_call(breaker: CircuitBreaker, form: str, fn: Any, *args: Any) -> Any:
    """A guarded call made by the consumer, in the body of ``async for``."""
    if form == "call":
        return await breaker.call(fn, *args)
    if form == "decorator":
        return await breaker(fn)(*args)
    async with breaker:
        return await fn(*args)


@pytest.mark.parametrize("form", ["call", "decorator", "async_with"])
async def test_S9_consumers_failures_while_a_stream_is_parked_open_the_breaker(form: str) -> None:
    """The consumer's own guarded call fails in the body of ``async for``
    while the stream is parked at a yield inside its block: the call is no
    part of the stream's guarded work, and counts. The error leaves the
    loop, dropping the stream, whose block (closed later by asyncio) only
    hands its permit back: taken for nested, the failure was counted
    nowhere and the breaker never opened."""
    breaker = make_breaker(fail_max=3)
    streams = [Stream(breaker) for _ in range(3)]

    async def consume(stream: Stream) -> None:
        async for _ in stream.rows():
            await consumers_call(breaker, form, fail_with, Boom("the service fails"))

    for count, stream in enumerate(streams[:2], start=1):
        with pytest.raises(Boom):
            await consume(stream)
        assert breaker.failure_count == count
    with pytest.raises(Boom):
        await consume(streams[2])
    assert breaker.state is OPEN
    for stream in streams:
        await stream.closed.wait()
    with pytest.raises(CircuitOpenError):
        await breaker.call(succeed)


@pytest.mark.parametrize("form", ["call", "async_with"])
@pytest.mark.parametrize("stream_enters", ["half_open", "closed"])
async def test_S9_consumers_failure_while_a_stream_is_parked_reopens_half_open(
    form: str, stream_enters: str
) -> None:
    """Half-open: the consumer's failing call, made while the stream is
    parked inside its block, is a trial of its own and re-opens the circuit
    — whether the stream's block holds a trial too (two let through) or was
    entered while the circuit was still closed. Taken for nested, it ran
    unchecked and recorded nothing: the circuit stayed half-open."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock=clock, fail_max=1, reset_timeout=30.0, name="catalog", half_open_max_calls=2
    )
    stream = Stream(breaker)
    rows = stream.rows()
    if stream_enters == "half_open":
        breaker.open()
        clock.advance(30.0)
        assert await rows.__anext__() == 0
        assert breaker.half_open_calls_in_flight == 1
    else:
        assert await rows.__anext__() == 0
        breaker.open()
        clock.advance(30.0)
    assert breaker.state is HALF_OPEN
    with pytest.raises(Boom):
        await consumers_call(breaker, form, fail_with, Boom("the trial fails"))
    assert breaker.state is OPEN
    await rows.aclose()
    assert breaker.state is OPEN
    assert depth(breaker) == 0


async def test_S9_consumers_call_while_a_stream_holds_the_only_trial_is_rejected() -> None:
    """Half-open with one trial, held by the stream's parked block: the
    consumer's call is not let through as nested in it — rejected, as a
    second stream's block is."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    stream = Stream(breaker)
    breaker.open()
    clock.advance(30.0)
    async with contextlib.aclosing(stream.rows()) as rows:
        async for _ in rows:
            with pytest.raises(CircuitOpenError):
                await breaker.call(fail_with, Boom("never called"))
            break
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 0  # the stream's trial handed back


@pytest.mark.parametrize("form", ["call", "decorator", "async_with"])
async def test_S9_consumers_success_while_a_stream_is_parked_resets_failures(form: str) -> None:
    """The consumer's successful call while the stream is parked inside its
    block resets the failures counted, as any call of its own does."""
    breaker = make_breaker(fail_max=3)
    await fail_in(breaker, "call")
    await fail_in(breaker, "call")
    assert breaker.failure_count == 2
    stream = Stream(breaker)
    async with contextlib.aclosing(stream.rows()) as rows:
        async for _ in rows:
            assert await consumers_call(breaker, form, succeed) == "ok"
            assert breaker.failure_count == 0
            break
    await fail_in(breaker, "call")
    assert breaker.state is CLOSED
    assert breaker.failure_count == 1
    assert depth(breaker) == 0


async def test_S9_stage_calls_while_its_source_is_parked_are_nested_in_its_own_block() -> None:
    """A pipeline stage's own failing call, made inside its block while its
    source is parked inside the source's block: nested in the stage's block
    (the source's is passed over), counted once, by the stage's block."""
    breaker = make_breaker(fail_max=5)
    source = Stream(breaker)

    async def stage() -> AsyncIterator[int]:
        async with breaker:
            async for row in source.rows():
                await breaker.call(fail_with, Boom("the stage's call fails"))
                yield row

    with pytest.raises(Boom):
        async for _ in stage():
            pass
    assert breaker.failure_count == 1
    await source.closed.wait()
    assert breaker.failure_count == 1


@pytest.mark.parametrize("form", ["call", "decorator", "async_with"])
async def test_S9_consumers_failure_rethrown_into_a_parked_stream_counts_once(form: str) -> None:
    """The consumer's own guarded call fails while the stream is parked
    inside its block, and the consumer hands the error to the stream
    (``athrow``): its call counted it; the stream's block, which it reaches
    at the yield, hands its permit back. Both counted it: one failure was
    two, and the breaker opened after half its ``fail_max``."""
    breaker = make_breaker(fail_max=2)
    stream = Stream(breaker)
    rows = stream.rows()
    assert await rows.__anext__() == 0
    with pytest.raises(Boom) as failed:
        await consumers_call(breaker, form, fail_with, Boom("the service fails"))
    assert breaker.failure_count == 1
    with pytest.raises(Boom):
        await rows.athrow(failed.value)
    assert stream.closed.is_set()
    assert breaker.failure_count == 1
    assert breaker.state is CLOSED
    assert depth(breaker) == 0


async def test_S9_consumers_own_error_thrown_into_a_parked_stream_hands_its_trial_back() -> None:
    """Half-open, the stream's parked block holding the one trial: an error
    of the consumer's own thrown in at the yield (``athrow``) is no part of
    the stream's guarded work. The trial is handed back unrecorded, as for a
    stream closed at the yield; taken for the trial failing, it re-opened
    the circuit."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    stream = Stream(breaker)
    breaker.open()
    clock.advance(30.0)
    rows = stream.rows()
    assert await rows.__anext__() == 0
    assert breaker.half_open_calls_in_flight == 1
    with pytest.raises(ValueError, match="the consumer's own"):
        await rows.athrow(ValueError("the consumer's own"))
    assert breaker.state is HALF_OPEN
    assert breaker.half_open_calls_in_flight == 0
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


async def test_S9_stream_failing_in_its_own_block_after_a_yield_still_counts() -> None:
    """What the stream's own guarded work raises inside its block, resumed
    after a yield, still counts: only an error that reaches the block at the
    yield it is parked at is the consumer's."""
    breaker = make_breaker(fail_max=5)

    async def rows() -> AsyncIterator[int]:
        async with breaker:
            yield 1
            await fail_with(Boom("the stream's own call"))
            yield 2

    with pytest.raises(Boom):
        async for _ in rows():
            pass
    assert breaker.failure_count == 1


# ------------------------------------------------------------------- closed, or parked outside


@pytest.mark.parametrize("how", ["aclose", "aclosing"])
async def test_S9_stream_closed_by_its_consumer_leaves_its_block(how: str) -> None:
    breaker = make_breaker(fail_max=1)
    stream = Stream(breaker)
    if how == "aclose":
        rows = stream.rows()
        async for _ in rows:
            break
        await rows.aclose()
    else:
        async with contextlib.aclosing(stream.rows()) as rows:
            async for _ in rows:
                break
    assert stream.closed.is_set()
    assert depth(breaker) == 0
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


async def test_S9_block_inside_a_generator_that_yields_outside_it() -> None:
    """A block that ends before the generator yields: nothing is left on the
    consumer's stack, dropped or not."""
    breaker = make_breaker(fail_max=1)

    async def rows() -> AsyncIterator[int]:
        for row in range(3):
            async with breaker:
                value = await succeed(row)
            yield value  # type: ignore[misc]

    async for _ in rows():
        break
    assert depth(breaker) == 0
    await fail_in(breaker, "call")
    assert breaker.state is OPEN


# ------------------------------------------------------------------- nesting unchanged


@contextlib.asynccontextmanager
async def wrapped(breaker: CircuitBreaker) -> AsyncIterator[None]:
    async with breaker:
        yield


async def fails_nested(breaker: CircuitBreaker, form: str) -> None:
    if form == "wrapped":
        async with wrapped(breaker):
            await breaker.call(fail_with, Boom("once"))
    elif form == "exit_stack":
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            await breaker.call(fail_with, Boom("once"))
    elif form == "generator_body":
        async def rows() -> AsyncIterator[int]:
            async with breaker:
                await breaker.call(fail_with, Boom("once"))
                yield 1

        async for _ in rows():
            pass


@pytest.mark.parametrize("form", ["wrapped", "exit_stack", "generator_body"])
async def test_S9_calls_in_a_block_entered_through_a_generator_are_nested(form: str) -> None:
    """The body of an ``asynccontextmanager`` around the breaker, of a block
    entered through an ``AsyncExitStack``, and a call made by the generator
    inside its own block: a failing call there is nested, counted once (by
    the block, which the failure leaves). (The consumer's body while a
    stream is parked inside its block is not: see the consumer's calls.)"""
    breaker = make_breaker(fail_max=5)
    with pytest.raises(Boom):
        await fails_nested(breaker, form)
    assert breaker.failure_count == 1
    assert depth(breaker) == 0


# ------------------------------------------------------------------- entered through an exit stack


async def test_S9_exit_stack_stream_dropped_by_break_leaves_its_consumer_counting() -> None:
    """The generator enters the breaker through an ``AsyncExitStack``
    (``enter_async_context``) and yields inside it: dropped by ``break``,
    its block is over once asyncio's finalizer has closed it — the frame
    that named the block was ``enter_async_context``'s, a coroutine that had
    long ended, never taken for over: every later call of the consumer was
    nested and the breaker never opened."""
    breaker = make_breaker(fail_max=1)
    closed = asyncio.Event()

    async def rows() -> AsyncIterator[int]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            await stack.enter_async_context(SetOnExit(closed))
            for row in range(3):
                yield row

    async for _ in rows():
        break
    await closed.wait()
    await fail_in(breaker, "call")
    assert breaker.state is OPEN
    assert depth(breaker) == 0


async def test_S9_consumers_failure_rethrown_into_an_exit_stack_stream_counts_once() -> None:
    """As for a stream's own block: the consumer's call, made while the
    stream is parked inside a block it entered through an
    ``AsyncExitStack``, counts (it was taken for nested in that block); the
    block, left by the exit stack when the consumer's error is thrown in at
    the yield, hands its permit back."""
    breaker = make_breaker(fail_max=2)
    closed = asyncio.Event()

    async def rows() -> AsyncGenerator[int, None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            await stack.enter_async_context(SetOnExit(closed))
            for row in range(3):
                yield row

    stream = rows()
    assert await stream.__anext__() == 0
    with pytest.raises(Boom) as failed:
        await breaker.call(fail_with, Boom("the service fails"))
    assert breaker.failure_count == 1
    with pytest.raises(Boom):
        await stream.athrow(failed.value)
    assert closed.is_set()
    assert breaker.failure_count == 1
    assert depth(breaker) == 0


async def test_S9_consumers_failures_while_an_exit_stack_stream_is_parked_open_the_breaker(
) -> None:
    """The consumer's failing call while the stream is parked inside a block
    it entered through an ``AsyncExitStack``: taken for nested in that block,
    it recorded nothing, and the error, leaving the loop, dropped the stream
    (closed later by asyncio, recording nothing): the breaker never opened."""
    breaker = make_breaker(fail_max=2)

    async def rows() -> AsyncIterator[int]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            yield 1

    async def consume() -> None:
        async for _ in rows():
            await breaker.call(fail_with, Boom("the service fails"))

    with pytest.raises(Boom):
        await consume()
    assert breaker.failure_count == 1
    with pytest.raises(Boom):
        await consume()
    assert breaker.state is OPEN


async def test_S9_exit_stack_streams_own_failure_after_a_yield_still_counts() -> None:
    breaker = make_breaker(fail_max=5)

    async def rows() -> AsyncIterator[int]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            yield 1
            raise Boom("the stream's own work")

    with pytest.raises(Boom):
        async for _ in rows():
            pass
    assert breaker.failure_count == 1


# ----------------------------------------------------------- what an exit stack's block costs


class HeapScans:
    """Counts the heap scans (``gc.get_referrers``) the permit stack makes:
    the exit stacks scanned for (kept, to count per stack) and the rest (a
    generator's frame asked whether it is an ``asynccontextmanager``'s body,
    once per code)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stacks: list[object] = []
        self.others = 0
        scan = permit_stack.gc.get_referrers

        def counting(*objects: Any) -> list[Any]:
            for scanned in objects:
                if isinstance(scanned, contextlib.AsyncExitStack):
                    self.stacks.append(scanned)
                else:
                    self.others += 1
            return scan(*objects)

        monkeypatch.setattr(permit_stack.gc, "get_referrers", counting)

    @property
    def total(self) -> int:
        return len(self.stacks) + self.others

    def most_per_stack(self) -> int:
        return max((sum(seen is stack for seen in self.stacks) for stack in self.stacks), default=0)


async def handle_request(breaker: CircuitBreaker, *calls: Any) -> None:
    """A request handler's block entered through an ``AsyncExitStack`` (a new
    one per request), its calls made from a helper coroutine under it."""

    async def fetch(call: Any) -> None:
        if call is None:
            await fail_with(Boom("the service is down"))
        else:
            await breaker.call(*call)

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(breaker)
        for call in calls:
            await fetch(call)


async def test_S9_failing_exit_stack_blocks_of_a_coroutine_never_scan_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """During an outage every request's block fails: telling whether its
    error was thrown in at a stream's yield must not cost a scan of the
    heap per request (tens of milliseconds on a service's heap)."""
    scans = HeapScans(monkeypatch)
    breaker = make_breaker(fail_max=1000)
    for _ in range(20):  # closed, failures piling up
        with pytest.raises(Boom):
            await handle_request(breaker, None)
    assert breaker.failure_count == 20
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    await fail_in(breaker, "call")
    for _ in range(5):  # half-open trials failing, the circuit re-opening
        clock.advance(30.0)
        assert breaker.state is HALF_OPEN
        with pytest.raises(Boom):
            await handle_request(breaker, None)
        assert breaker.state is OPEN
        with pytest.raises(CircuitOpenError):
            await handle_request(breaker, None)
    assert depth(breaker) == 0
    assert scans.total == 0


async def test_S9_calls_nested_in_a_coroutines_exit_stack_block_never_scan_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off the closed path (failures recorded, or half-open) a call in the
    block asks whether it is nested: the block is the handler's own, held
    by a frame running the call, and that is enough to tell."""
    scans = HeapScans(monkeypatch)
    breaker = make_breaker(fail_max=1000)
    await fail_in(breaker, "call")
    for round_ in range(1, 11):
        with pytest.raises(Boom):
            await handle_request(breaker, (succeed,), (fail_with, Boom("nested")))
        assert breaker.failure_count == 1 + round_  # nested: the block counts once
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    for _ in range(5):
        await fail_in(breaker, "call")
        clock.advance(30.0)
        with pytest.raises(Boom):  # the trial's nested failure, counted by the block
            await handle_request(breaker, (succeed,), (fail_with, Boom("nested")))
        assert breaker.state is OPEN
        clock.advance(30.0)
        await handle_request(breaker, (succeed,), (succeed,))
        assert breaker.state is CLOSED
    assert depth(breaker) == 0
    assert scans.total == 0


@pytest.mark.parametrize("entered", ["by_the_stream", "by_a_helper"])
async def test_S9_exit_stack_streams_parked_scan_the_heap_at_most_once_per_exit_stack(
    monkeypatch: pytest.MonkeyPatch, entered: str,
) -> None:
    """A stream parked in a block it entered through an exit stack: no frame
    running the consumer's call holds that exit stack. Which generator does
    is told by the frame that awaited ``enter_async_context`` when that is
    the stream's (3.12+); else the heap is asked, once per exit stack (and
    once per generator's code whether it is an ``asynccontextmanager``'s
    body): on 3.11, or entered by a helper coroutine the stream awaits."""
    scans = HeapScans(monkeypatch)
    breaker = make_breaker(fail_max=1000)

    async def enter(stack: contextlib.AsyncExitStack) -> None:
        await stack.enter_async_context(breaker)

    async def rows() -> AsyncGenerator[int, None]:
        async with contextlib.AsyncExitStack() as stack:
            if entered == "by_the_stream":
                await stack.enter_async_context(breaker)
            else:
                await enter(stack)
            for row in range(3):
                yield row
            raise Boom("the stream's own work")

    others_after_first_round = None
    for round_ in range(5):
        stream = rows()
        assert await stream.__anext__() == 0
        with pytest.raises(Boom) as failed:  # the consumer's call: counted
            await breaker.call(fail_with, Boom("the service fails"))
        await breaker.call(succeed)
        with pytest.raises(Boom):  # rethrown at the yield: not counted again
            await stream.athrow(failed.value)
        assert breaker.failure_count == 0  # the consumer's success reset it

        stream = rows()
        assert await stream.__anext__() == 0
        with pytest.raises(Boom):  # the consumer's call, again
            await breaker.call(fail_with, Boom("the service fails"))
        with pytest.raises(Boom, match="the stream's own work"):
            async for _ in stream:
                pass
        assert breaker.failure_count == 2  # the consumer's and the stream's own
        await breaker.call(succeed)
        if round_ == 0:
            others_after_first_round = scans.others
    assert depth(breaker) == 0
    if entered == "by_the_stream" and sys.version_info >= (3, 12):
        assert scans.stacks == []
    else:
        assert scans.most_per_stack() == 1
    assert scans.others == others_after_first_round



@contextlib.asynccontextmanager
async def guarded_through_its_exit_stack(breaker: CircuitBreaker) -> AsyncIterator[None]:
    """An ``asynccontextmanager`` entering the breaker through an exit stack
    of its own (a new one per use)."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(breaker)
        yield


async def test_S9_asynccontextmanager_with_its_own_exit_stack_scans_no_heap_per_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call failing in the ``async with`` of an ``asynccontextmanager``
    that entered the breaker through its own exit stack is nested (counted
    once, by the block). No frame running the call holds that exit stack:
    the generator that does is parked at its ``yield``. On 3.12+ the ended
    ``enter_async_context`` frame names the frame that awaited it, the
    generator's, which holds the exit stack: no heap scan per use (there
    was one per use). 3.11 clears that link: the heap is asked, once per
    exit stack."""
    scans = HeapScans(monkeypatch)
    breaker = make_breaker(fail_max=1000)
    others_after_first_use = None
    for use in range(1, 11):
        with pytest.raises(Boom):
            async with guarded_through_its_exit_stack(breaker):
                await breaker.call(fail_with, Boom("the service fails"))
        assert breaker.failure_count == use  # nested: the block counts once
        if use == 1:
            others_after_first_use = scans.others
    assert depth(breaker) == 0
    assert scans.others == others_after_first_use  # the wrapper's code: asked once
    if sys.version_info >= (3, 12):
        assert scans.stacks == []
    else:
        assert scans.most_per_stack() <= 1


# ------------------------------------------------------------------- two streams in one task


def two_streams(breaker: CircuitBreaker) -> tuple[AsyncIterator[int], AsyncIterator[int]]:
    """Two streams, each failing its second row inside its own block."""

    async def rows(name: str) -> AsyncIterator[int]:
        async with breaker:
            yield 1
            raise Boom(f"{name} fails")

    return rows("first"), rows("second")


@pytest.mark.parametrize("ends_first", ["first", "second"])
async def test_S9_two_streams_driven_in_turn_each_count_their_own_block(ends_first: str) -> None:
    """One task drives two generators in turn, each parked inside its own
    block of the breaker: neither block is nested in the other's (the second
    stream's block is no call of the first one's), so each failure counts —
    whichever ends first. The second block was taken as nested in the first:
    its failure was not recorded."""
    breaker = make_breaker(fail_max=5)
    first, second = two_streams(breaker)
    assert await first.__anext__() == 1
    assert await second.__anext__() == 1
    order = (first, second) if ends_first == "first" else (second, first)
    for stream in order:
        with pytest.raises(Boom):
            await stream.__anext__()
    assert breaker.failure_count == 2
    assert depth(breaker) == 0


async def test_S9_second_stream_while_half_open_is_a_trial_of_its_own() -> None:
    """Half-open with one trial: the first stream's block holds it; the
    second stream's block, driven by the same task, is not nested in the
    first's and is rejected (it was let through as nested, untested)."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, fail_max=1, reset_timeout=30.0, name="catalog")
    first, second = two_streams(breaker)
    breaker.open()
    clock.advance(30.0)
    assert await first.__anext__() == 1
    assert breaker.half_open_calls_in_flight == 1
    with pytest.raises(CircuitOpenError):
        await second.__anext__()
    with pytest.raises(Boom):
        await first.__anext__()
    assert breaker.state is OPEN
    assert depth(breaker) == 0


async def test_S9_stream_driven_from_another_streams_block_is_nested() -> None:
    """A generator iterated *inside* another generator's block (a pipeline
    stage) is nested in it, as in a coroutine's block: counted once."""
    breaker = make_breaker(fail_max=5)

    async def source() -> AsyncIterator[int]:
        async with breaker:
            yield 1
            raise Boom("source fails")

    async def stage() -> AsyncIterator[int]:
        async with breaker:
            async for row in source():
                yield row

    with pytest.raises(Boom):
        async for _ in stage():
            pass
    assert breaker.failure_count == 1
    assert depth(breaker) == 0


async def test_S9_streams_block_inside_its_own_asynccontextmanager_block_is_nested() -> None:
    """A generator's block inside an ``asynccontextmanager`` around the
    breaker that the generator itself entered: the wrapper's generator is
    parked at its yield too, but it is no other stream — the generator's
    block is nested in it, counted once (not once per block)."""
    breaker = make_breaker(fail_max=5)

    async def rows() -> AsyncIterator[int]:
        async with wrapped(breaker), breaker:
            yield 1
            raise Boom("once")

    with pytest.raises(Boom):
        async for _ in rows():
            pass
    assert breaker.failure_count == 1
    assert depth(breaker) == 0


async def test_S9_exit_stack_whose_blocks_moved_on_with_pop_all_still_holds_the_block() -> None:
    """An exit stack's blocks handed on with ``pop_all``: the first stack
    is done with, the block is not — calls in it are nested, and its exit
    through the new stack counts once."""
    breaker = make_breaker(fail_max=5)

    async def open_block() -> contextlib.AsyncExitStack:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(breaker)
            return stack.pop_all()

    moved = await open_block()
    with pytest.raises(Boom):
        await breaker.call(fail_with, Boom("nested"))
    assert breaker.failure_count == 0
    await moved.__aexit__(Boom, Boom("the block fails"), None)
    assert breaker.failure_count == 1
    assert depth(breaker) == 0
