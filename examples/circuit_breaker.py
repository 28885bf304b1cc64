"""CircuitBreaker on its own, with a Fallback, and another breaker plugged in.

Shows:
* CLOSED -> OPEN after ``fail_max`` consecutive failures; OPEN rejects without
  calling (``CircuitOpenError.retry_after``); HALF_OPEN after ``reset_timeout``;
  a successful trial closes it — all on an injected fake clock, so nothing waits;
* ``exclude``: business errors are ignored — neither counted nor resetting the count;
* ``half_open_max_calls``: how many concurrent trial calls get through;
* a cancelled call counts as nothing;
* the three ways to call: ``await breaker.call(fn, ...)``, ``@breaker``, ``async with``;
* a breaker guarding a Fallback's primary: open circuit -> the fallback at once;
* ``CircuitBreakerProtocol``: any object with ``call`` and ``is_open_error`` plugs in.

Run: python examples/circuit_breaker.py
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fallback_saga import (
    CircuitBreaker,
    CircuitBreakerProtocol,
    CircuitOpenError,
    CircuitState,
    Fallback,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaListener,
)

T = TypeVar("T")


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PrintTransitions(SagaListener):
    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        print(f"    [{breaker}] {old} -> {new}")


class ServiceDown(ConnectionError):
    pass


class CardDeclined(Exception):
    """The service answered: the card is bad. Says nothing about the service's health."""


async def flaky(outcome: str) -> str:
    if outcome == "down":
        raise ServiceDown("503 from the payment service")
    if outcome == "declined":
        raise CardDeclined("card declined")
    return "ok"


async def try_call(breaker: CircuitBreaker, outcome: str) -> None:
    try:
        print(f"  call({outcome!r}) -> {await breaker.call(flaky, outcome)}", end="")
    except CircuitOpenError as error:
        print(f"  call({outcome!r}) -> rejected, not called: retry after {error.retry_after:g} s",
              end="")
    except Exception as error:
        print(f"  call({outcome!r}) -> {type(error).__name__}", end="")
    print(f"   [state {breaker.state.value}, failures {breaker.failure_count}]")


async def states_and_exclude() -> None:
    print("1. States, on a fake clock; `exclude` ignores business errors")
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="payments",
        fail_max=3,
        reset_timeout=30.0,
        exclude=[CardDeclined, lambda error: "declined" in str(error)],  # types or predicates
        clock=clock,
        listeners=[PrintTransitions()],
    )
    await try_call(breaker, "down")
    await try_call(breaker, "down")
    await try_call(breaker, "declined")  # ignored: the count stays at 2, it is not reset
    await try_call(breaker, "down")  # the third counted failure opens the circuit
    await try_call(breaker, "ok")  # rejected: flaky() is not called
    clock.now += 30.0
    await try_call(breaker, "ok")  # the trial call (HALF_OPEN) succeeds: CLOSED


async def half_open_limit() -> None:
    print("\n2. half_open_max_calls=2: of 5 concurrent calls after the timeout, 2 are trials")
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="inventory", fail_max=1, reset_timeout=10.0, half_open_max_calls=2, clock=clock
    )
    with contextlib.suppress(ServiceDown):
        await breaker.call(flaky, "down")
    print(f"  state {breaker.state.value}")
    clock.now += 10.0
    release = asyncio.Event()

    async def slow_success() -> str:
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(breaker.call(slow_success)) for _ in range(5)]
    await asyncio.sleep(0)  # let every task ask for a permit
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        print(f"  {outcome!r}" if isinstance(outcome, Exception) else f"  {outcome}")
    print(f"  state {breaker.state.value}")


async def cancelled_call() -> None:
    print("\n3. A cancelled call counts as nothing (neither failure nor success)")
    breaker = CircuitBreaker(name="mailer", fail_max=2)
    with contextlib.suppress(ServiceDown):
        await breaker.call(flaky, "down")
    task = asyncio.create_task(breaker.call(asyncio.sleep, 3600))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"  after a failure and a cancelled call: failures {breaker.failure_count}, "
          f"state {breaker.state.value}")


async def three_ways_to_call() -> None:
    print("\n4. call(), decorator, async with")
    breaker = CircuitBreaker(name="shipping", fail_max=5)

    async def price(weight_kg: float) -> float:
        return 4.90 + 0.5 * weight_kg

    @breaker
    async def quote(weight_kg: float) -> float:
        return await price(weight_kg)

    print(f"  await breaker.call(price, 2) -> {await breaker.call(price, 2):.2f}")
    print(f"  await quote(3) (decorated)   -> {await quote(3):.2f}")
    with contextlib.suppress(ServiceDown):
        async with breaker:  # the block is one call: an error in it is its outcome
            await flaky("down")
    print(f"  after a failing `async with` block: failures {breaker.failure_count}")
    breaker.open()  # manual control, e.g. from an operator command
    print(f"  breaker.open() -> {breaker.state.value}; breaker.close() -> ", end="")
    breaker.close()
    print(breaker.state.value)


# ------------------------------------------------------------------ with a saga


@dataclasses.dataclass
class PaymentContext(SagaContext):
    order_id: str
    paid_by: str | None = None


calls = {"card": 0}


class ChargeCard:
    async def act(self, context: PaymentContext) -> str:
        calls["card"] += 1
        raise ServiceDown("card gateway down")

    async def compensate(self, context: PaymentContext) -> None:
        pass


class ChargeInvoice:
    async def act(self, context: PaymentContext) -> str:
        context.paid_by = "invoice"
        return "invoice"

    async def compensate(self, context: PaymentContext) -> None:
        context.paid_by = None


saga_clock = FakeClock()
card_breaker = CircuitBreaker(name="card", fail_max=2, reset_timeout=60.0, clock=saga_clock)


async def _skip_sleep(seconds: float) -> None:
    return None


class PaymentSaga(Saga[PaymentContext]):
    steps = [
        Fallback(
            step=ChargeCard,
            fallback=ChargeInvoice,
            failure_exceptions=(ServiceDown,),
            circuit_breaker=card_breaker,
            retry=RetryPolicy(attempts=3, jitter=0.0, sleep=_skip_sleep),
        )
    ]


async def with_a_fallback() -> None:
    print("\n5. Guarding a Fallback's primary: an open circuit means the fallback at once")
    saga = PaymentSaga()
    for order_id in ("p-1", "p-2"):
        before = calls["card"]
        result = await saga.run(PaymentContext(order_id), saga_id=order_id)
        print(f"  {order_id}: paid by {result.context.paid_by}; card tried "
              f"{calls['card'] - before} times; breaker {card_breaker.state.value}")
    for order_id in ("p-1", "p-2"):
        record = await saga.store.load(order_id)
        print(f"  {order_id}'s journal:")
        for entry in record.history:
            print(f"    {entry.step:<13} try {entry.attempt}  {entry.status.value:<9} "
                  f"{entry.error or ''}".rstrip())
    print("  (p-1's third try met the open circuit: rejected, not retried, fallback)")
    assert card_breaker.state is CircuitState.OPEN


# ------------------------------------------------------------------ another breaker


class MaintenanceWindow(Exception):
    pass


class MaintenanceSwitch:
    """Not a CircuitBreaker at all: a switch an operator flips. It satisfies
    CircuitBreakerProtocol, so a Fallback can use it; ``is_open_error`` tells the
    Fallback which error means "rejected without calling"."""

    def __init__(self) -> None:
        self.on = False

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        if self.on:
            raise MaintenanceWindow("the card gateway is in maintenance")
        return await fn(*args, **kwargs)

    def is_open_error(self, error: BaseException) -> bool:
        return isinstance(error, MaintenanceWindow)


switch = MaintenanceSwitch()


class ChargeCardOk(ChargeCard):
    name = "ChargeCard"

    async def act(self, context: PaymentContext) -> str:
        context.paid_by = "card"
        return "card"


class SwitchedPaymentSaga(Saga[PaymentContext]):
    steps = [
        Fallback(
            step=ChargeCardOk,
            fallback=ChargeInvoice,
            # MaintenanceWindow is not listed, yet it falls back: an open circuit always does.
            failure_exceptions=(ServiceDown,),
            circuit_breaker=switch,
        )
    ]


async def another_breaker() -> None:
    print("\n6. Another breaker via CircuitBreakerProtocol")
    print(f"  isinstance(switch, CircuitBreakerProtocol): "
          f"{isinstance(switch, CircuitBreakerProtocol)}")
    saga = SwitchedPaymentSaga()
    for on in (False, True):
        switch.on = on
        result = await saga.run(PaymentContext(f"m-{on}"))
        print(f"  maintenance {'on ' if on else 'off'}: paid by {result.context.paid_by}")


async def main() -> None:
    await states_and_exclude()
    await half_open_limit()
    await cancelled_call()
    await three_ways_to_call()
    await with_a_fallback()
    await another_breaker()


if __name__ == "__main__":
    asyncio.run(main())
