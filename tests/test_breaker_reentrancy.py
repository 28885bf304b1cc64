"""Rule S9, nesting: a call made inside a guarded call of the *same* breaker, in
the same task, passes straight through. It takes no permit, records no outcome
and is never rejected by that breaker: only the outermost call counts.

This is what makes "one breaker per service, shared by all code" work when a
``Fallback(circuit_breaker=payments)`` primary calls a client method that is
itself decorated with ``@payments``: one failure is one count, and the outer
call's half-open trial permit covers the inner call.

A task started inside a guarded call is *not* nested (it is another task: it
may outlive the call, and it runs its own guarded calls); different breakers
nest normally. Time is a ``FakeClock``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers_breaker import (
    Boom,
    BusinessError,
    FakeClock,
    Held,
    StateChanges,
    fail_with,
    succeed,
    trip,
)

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    Saga,
    SagaContext,
    SQLiteCircuitStateStore,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

FORMS = ("call", "decorator", "async_with")
MIXES = [(outer, inner) for outer in FORMS for inner in FORMS]
MIX_IDS = [f"{outer}-in-{inner}" for outer, inner in MIXES]

Guarded = Callable[[], Coroutine[Any, Any, Any]]


def through(breaker: CircuitBreaker, form: str, fn: Callable[[], Awaitable[Any]]) -> Guarded:
    """``fn`` run under ``breaker`` by one of its three ways to call."""
    if form == "call":

        async def by_call() -> Any:
            return await breaker.call(fn)

        return by_call
    if form == "decorator":
        decorated = breaker(fn)

        async def by_decorator() -> Any:
            return await decorated()

        return by_decorator
    if form == "async_with":

        async def by_async_with() -> Any:
            async with breaker:
                return await fn()

        return by_async_with
    raise ValueError(form)


def make_breaker(**options: Any) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    options.setdefault("fail_max", 5)
    options.setdefault("reset_timeout", 10.0)
    options.setdefault("name", "payments")
    return CircuitBreaker(clock=clock, **options), clock


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.open()
    clock.advance(breaker.reset_timeout)
    assert breaker.state is HALF_OPEN


# --------------------------------------------------------------------------- the reproduction


async def test_nested_call_recovers_from_half_open_minimal_reproduction() -> None:
    clock = FakeClock()
    b = CircuitBreaker(fail_max=5, reset_timeout=10, clock=clock)

    @b
    async def ping() -> str:
        return "pong"

    b.open()
    clock.advance(10)
    for _ in range(3):  # it used to be CircuitOpenError every time, forever
        assert await b.call(ping) == "pong"
        assert b.state is CLOSED


# --------------------------------------------------------------------------- one count


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_nested_call_through_same_breaker_counts_once(outer: str, inner: str) -> None:
    b, _ = make_breaker(fail_max=3)
    nested = through(b, outer, through(b, inner, lambda: fail_with(Boom("down"))))
    for expected in (1, 2):
        with pytest.raises(Boom):
            await nested()
        assert b.failure_count == expected
        assert b.state is CLOSED
    with pytest.raises(Boom):
        await nested()
    assert b.state is OPEN


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_nested_call_records_no_outcome(outer: str, inner: str) -> None:
    b, _ = make_breaker(fail_max=3)
    await trip(b, 2)

    # The nested success does not reset the count: only the outer outcome does.
    async def inner_ok_then_outer_fails() -> None:
        await through(b, inner, succeed)()
        raise Boom("outer fails after the nested call succeeded")

    with pytest.raises(Boom):
        await through(b, outer, inner_ok_then_outer_fails)()
    assert b.state is OPEN

    # The nested failure does not count: the outer call handled it and succeeded.
    b.close()
    await trip(b, 2)

    async def inner_fails_outer_recovers() -> str:
        with contextlib.suppress(Boom):
            await through(b, inner, lambda: fail_with(Boom("nested")))()
        return "recovered"

    assert await through(b, outer, inner_fails_outer_recovers)() == "recovered"
    assert b.state is CLOSED
    assert b.failure_count == 0


# --------------------------------------------------------------------------- half-open


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_nested_call_recovers_from_half_open(outer: str, inner: str) -> None:
    changes = StateChanges()
    b, clock = make_breaker(listeners=[changes])
    half_open(b, clock)
    in_flight: list[int] = []

    async def service() -> str:
        in_flight.append(b.half_open_calls_in_flight)
        return "up"

    assert await through(b, outer, through(b, inner, service))() == "up"
    assert in_flight == [1]  # the outer call's single trial permit covers the nested call
    assert b.state is CLOSED
    assert b.half_open_calls_in_flight == 0
    assert changes.edges() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_nested_call_failing_in_half_open_reopens_once_with_its_own_error(
    outer: str, inner: str
) -> None:
    changes = StateChanges()
    b, clock = make_breaker(listeners=[changes])
    half_open(b, clock)
    error = Boom("still down")
    with pytest.raises(Boom) as raised:
        await through(b, outer, through(b, inner, lambda: fail_with(error)))()
    assert raised.value is error  # not the breaker's own CircuitOpenError
    assert b.state is OPEN
    assert changes.edges() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    clock.advance(b.reset_timeout)
    assert await through(b, outer, through(b, inner, succeed))() == "ok"
    assert b.state is CLOSED


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_nested_call_is_never_rejected_by_its_own_breaker(outer: str, inner: str) -> None:
    # The outer call is let through while CLOSED; other tasks then open the
    # circuit. The nested call belongs to the call that was let through: it runs.
    b, _ = make_breaker(fail_max=1)
    entered, opened = asyncio.Event(), asyncio.Event()
    reached: list[str] = []

    async def service() -> str:
        reached.append("service")
        return "up"

    async def outer_body() -> Any:
        entered.set()
        await opened.wait()
        return await through(b, inner, service)()

    task = asyncio.create_task(through(b, outer, outer_body)())
    await entered.wait()
    await trip(b)
    assert b.state is OPEN
    opened.set()
    assert await task == "up"
    assert reached == ["service"]
    assert b.state is OPEN  # the outer permit is from before the opening: stale
    with pytest.raises(CircuitOpenError):
        await through(b, inner, service)()


async def test_nested_call_recovers_from_half_open_with_a_shared_state_store(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = SQLiteCircuitStateStore(str(tmp_path / "breakers.db"))
    b = CircuitBreaker(name="payments", fail_max=5, reset_timeout=10.0, clock=clock,
                       wall_clock=clock, state_store=store, sync_interval=1.0)

    @b
    async def ping() -> str:
        return "pong"

    b.open()
    clock.advance(10.0)
    assert await b.call(ping) == "pong"
    assert b.state is CLOSED
    row = store.read("payments")
    assert row is not None
    assert row.state is CLOSED


# --------------------------------------------------------------------------- with a Fallback


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    charged_by: str = ""


class CardGateway:
    """A client whose method is guarded by the service's one shared breaker."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.down = False
        self.calls = 0
        self.charge = breaker(self._charge)

    async def _charge(self, order_id: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("card gateway down")
        return f"receipt-{order_id}"


async def test_decorated_method_inside_fallback_breaker_counts_once() -> None:
    changes = StateChanges()
    payments, clock = make_breaker(fail_max=2, listeners=[changes])
    gateway = CardGateway(payments)

    class ChargeCard:
        name = "ChargeCard"

        async def act(self, context: OrderContext) -> str:
            receipt = await gateway.charge(context.order_id)  # @payments, inside the Fallback's
            context.charged_by = self.name
            return receipt

        async def compensate(self, context: OrderContext) -> None:
            return None

    class ChargeInvoice(ChargeCard):
        name = "ChargeInvoice"

        async def act(self, context: OrderContext) -> str:
            context.charged_by = self.name
            return "invoice"

    class CheckoutSaga(Saga[OrderContext]):
        steps = [Fallback(step=ChargeCard, fallback=ChargeInvoice, circuit_breaker=payments)]

    saga = CheckoutSaga()
    gateway.down = True
    first = await saga.run(OrderContext(order_id="1"))
    assert first.context.charged_by == "ChargeInvoice"
    assert payments.failure_count == 1  # one failure, one count (it used to be two)
    assert payments.state is CLOSED

    second = await saga.run(OrderContext(order_id="2"))
    assert second.context.charged_by == "ChargeInvoice"
    assert payments.state is OPEN
    assert gateway.calls == 2

    third = await saga.run(OrderContext(order_id="3"))
    assert third.context.charged_by == "ChargeInvoice"
    assert gateway.calls == 2  # rejected by the Fallback's breaker: not called

    # Recovery: the saga's primary is the trial call, and the decorated client
    # method inside it rides on that trial instead of being rejected.
    gateway.down = False
    clock.advance(payments.reset_timeout)
    fourth = await saga.run(OrderContext(order_id="4"))
    assert fourth.context.charged_by == "ChargeCard"
    assert gateway.calls == 3
    assert payments.state is CLOSED
    assert changes.edges() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


# --------------------------------------------------------------------------- what is not nested


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_different_breakers_nested_each_count(outer: str, inner: str) -> None:
    a, a_clock = make_breaker(name="gateway", fail_max=3)
    b, b_clock = make_breaker(name="payments", fail_max=3)
    with pytest.raises(Boom):
        await through(a, outer, through(b, inner, lambda: fail_with(Boom("down"))))()
    assert (a.failure_count, b.failure_count) == (1, 1)

    # Each takes its own half-open permit; one success closes both.
    half_open(a, a_clock)
    half_open(b, b_clock)
    in_flight: list[tuple[int, int]] = []

    async def service() -> str:
        in_flight.append((a.half_open_calls_in_flight, b.half_open_calls_in_flight))
        return "up"

    assert await through(a, outer, through(b, inner, service))() == "up"
    assert in_flight == [(1, 1)]
    assert (a.state, b.state) == (CLOSED, CLOSED)

    # a -> b -> a: the innermost call is nested in the outer ``a`` call.
    with pytest.raises(Boom):
        await through(
            a, outer, through(b, inner, through(a, inner, lambda: fail_with(Boom("down"))))
        )()
    assert (a.failure_count, b.failure_count) == (1, 1)




@pytest.mark.parametrize(("first", "second"), MIXES, ids=[f"{a}-beside-{b}" for a, b in MIXES])
async def test_concurrent_sibling_task_is_not_nested(first: str, second: str) -> None:
    b, clock = make_breaker(fail_max=5)

    # CLOSED: while A is inside a guarded call, sibling B's failure still counts.
    held = Held(Boom("a fails too"))
    a = asyncio.create_task(through(b, first, held)())
    await held.entered.wait()
    sibling = asyncio.create_task(through(b, second, lambda: fail_with(Boom("b fails")))())
    with pytest.raises(Boom):
        await sibling
    assert b.failure_count == 1
    held.release.set()
    with pytest.raises(Boom):
        await a
    assert b.failure_count == 2

    # HALF_OPEN: A holds the only trial permit; sibling B is rejected.
    half_open(b, clock)
    held = Held()
    a = asyncio.create_task(through(b, first, held)())
    await held.entered.wait()
    sibling = asyncio.create_task(through(b, second, succeed)())
    with pytest.raises(CircuitOpenError):
        await sibling
    held.release.set()
    assert await a == "released"
    assert b.state is CLOSED


@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_task_spawned_inside_guarded_call_is_not_nested(outer: str, inner: str) -> None:
    # Documented decision: a task created inside a guarded call copies the
    # context, but it is another task — it may outlive the call — so it runs its
    # own guarded calls: they take permits, count and can be rejected.
    b, clock = make_breaker(fail_max=5, reset_timeout=10.0)
    go = asyncio.Event()
    children: list[asyncio.Task[Any]] = []

    async def spawn_and_leave() -> str:
        async def later() -> Any:
            await go.wait()
            return await through(b, inner, succeed)()

        children.append(asyncio.create_task(later()))
        return "left"

    assert await through(b, outer, spawn_and_leave)() == "left"
    b.open()
    go.set()
    with pytest.raises(CircuitOpenError):  # outlived the call: guarded as usual
        await children[0]

    # Awaited inside the call, a child's failure is its own count, and the
    # outer call's failure (the same error, propagated) is another.
    b.close()

    async def await_failing_child() -> None:
        await asyncio.create_task(through(b, inner, lambda: fail_with(Boom("child")))())

    with pytest.raises(Boom):
        await through(b, outer, await_failing_child)()
    assert b.failure_count == 2

    # In HALF_OPEN the outer call holds the only trial permit: the child is rejected.
    half_open(b, clock)

    async def await_child() -> Any:
        return await asyncio.create_task(through(b, inner, succeed)())

    with pytest.raises(CircuitOpenError):
        await through(b, outer, await_child)()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
@pytest.mark.parametrize(("outer", "inner"), MIXES, ids=MIX_IDS)
async def test_task_started_eagerly_inside_guarded_call_is_not_nested(
    outer: str, inner: str
) -> None:
    # An eager task's first step runs at once, on top of its creator's frames:
    # it is still another task.
    b, clock = make_breaker()
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        half_open(b, clock)

        async def start_child() -> str:
            child = asyncio.create_task(through(b, inner, succeed)())
            assert child.done()  # ran eagerly, to the end, inside this call
            with pytest.raises(CircuitOpenError):  # the outer call holds the only trial
                child.result()
            return "outer"

        assert await through(b, outer, start_child)() == "outer"
        assert b.state is CLOSED
    finally:
        loop.set_task_factory(None)


async def test_excluded_and_cancelled_nested_calls_record_nothing() -> None:
    b, clock = make_breaker(exclude=[BusinessError])
    half_open(b, clock)

    @b
    async def declined() -> None:
        raise BusinessError("declined")

    async def outer_body() -> str:
        with contextlib.suppress(BusinessError):
            await declined()
        assert b.half_open_calls_in_flight == 1  # the nested call returned no permit
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(asyncio.CancelledError):
            waiting = b.call(Held())  # a nested call, cancelled while inside
            task.cancel()
            await waiting
        task.uncancel()
        assert b.half_open_calls_in_flight == 1
        return "done"

    assert await b.call(outer_body) == "done"
    assert b.state is CLOSED
