"""Fallbacks, circuit breakers, retries, Parallel groups and child sagas, as
service code combines them (docs/examples.md, docs/mechanics.md)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar, assert_type

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Fallback,
    Parallel,
    Response,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaResult,
    SagaStepHandler,
    SubSaga,
    current_step,
)

T = TypeVar("T")


@dataclasses.dataclass
class Checkout(SagaContext):
    amount: int
    quote: int | None = None
    charge_id: str | None = None
    stock: str | None = None


@dataclasses.dataclass
class Payment(SagaContext):
    amount: int
    charge_id: str | None = None


class WarehouseDown(ConnectionError):
    pass


class CardDeclined(Exception):
    pass


class Quote(Response, frozen=True):
    price: int


class Charge(SagaStepHandler[Payment, str]):
    # A class attribute retry for act: the README's `retry` attribute.
    retry = RetryPolicy(attempts=3, retry_on=ConnectionError)

    async def act(self, context: Payment) -> str:
        info = current_step()
        assert_type(info.action, Literal["act", "compensate"])
        context.charge_id = f"ch-{context.amount}-{info.idempotency_key}"
        if info.action == "act" and info.attempt > 3:
            raise CardDeclined(info.saga_id)
        return context.charge_id

    async def compensate(self, context: Payment) -> None:
        context.charge_id = None


class PaymentSaga(Saga[Payment]):
    steps = [Charge]


class ReserveStock(SagaStepHandler[Checkout, None]):
    async def act(self, context: Checkout) -> None:
        context.stock = "held"


class ExactQuote(SagaStepHandler[Checkout, Quote]):
    async def act(self, context: Checkout) -> Quote:
        context.quote = context.amount // 10
        return Quote(price=context.quote)


class FlatRate(SagaStepHandler[Checkout, Quote]):
    async def act(self, context: Checkout) -> Quote:
        context.quote = 5
        return Quote(price=5)


class PlainStep:
    """A step without the base class: any object with async act/compensate."""

    async def act(self, context: Checkout) -> None:
        return None

    async def compensate(self, context: Checkout) -> None:
        return None


class CallPartner(SagaStepHandler[Checkout, None]):
    """One step class, several steps: each instance names itself and has its
    own time budget and retries (the saga reads them from the step object)."""

    def __init__(self, partner: str, timeout: float) -> None:
        self.name = f"call-{partner}"
        self.timeout = timeout
        self.retry = RetryPolicy(attempts=2, retry_on=TimeoutError)

    async def act(self, context: Checkout) -> None:
        return None


def keep_charge(parent: Checkout, child: Payment) -> None:
    parent.charge_id = child.charge_id


def payment_for(parent: Checkout) -> Payment:
    return Payment(parent.amount)


retry = RetryPolicy(attempts=4, delay=0.05, retry_on=(ConnectionError, TimeoutError))
retry_one_type = RetryPolicy(retry_on=WarehouseDown)  # README: "(or one type)"
retry_list = RetryPolicy(retry_on=[ConnectionError, TimeoutError])
retry_predicate = RetryPolicy(retry_on=lambda error: isinstance(error, OSError))
retry_sleeping = RetryPolicy(sleep=asyncio.sleep)
breaker = CircuitBreaker(name="quotes", fail_max=3, reset_timeout=10.0, exclude=(CardDeclined,))
breaker_one_rule = CircuitBreaker(exclude=CardDeclined)
breaker_rules = CircuitBreaker(exclude=[CardDeclined, lambda error: isinstance(error, KeyError)])


class CheckoutSaga(Saga[Checkout]):
    name = "checkout"
    steps = [
        Parallel(
            ReserveStock,
            Fallback(step=ExactQuote, fallback=FlatRate, failure_exceptions=WarehouseDown,
                     circuit_breaker=breaker, retry=retry),
            PlainStep(),
        ),
        # merge= names the parent's type: the lambda's parameter is inferred.
        SubSaga(PaymentSaga, context=lambda c: Payment(c.amount), merge=keep_charge, name="Pay"),
    ]


class PositionalFallbackSaga(Saga[Checkout]):
    steps = [ReserveStock, Fallback(ExactQuote, FlatRate(), (WarehouseDown, TimeoutError)),
             CallPartner("carrier", 2.0), CallPartner("insurer", 5.0)]


def shared_steps() -> list[type[SagaStepHandler[Checkout, None]]]:
    return [ReserveStock]


class BuiltStepsSaga(Saga[Checkout]):
    # A list of steps built elsewhere, with a type of its own.
    steps = shared_steps()


class AnnotatedStepsSaga(Saga[Checkout]):
    # docs/mechanics.md declares its steps this way.
    steps: ClassVar[list[Any]] = [ReserveStock]


# A lambda alone says nothing of the parent's type: name both types.
pay = SubSaga[Checkout, Payment](PaymentSaga, context=lambda c: Payment(c.amount))
pay_by_function = SubSaga(PaymentSaga(), context=payment_for)
assert_type(pay, SubSaga[Checkout, Payment])
assert_type(pay_by_function, SubSaga[Checkout, Payment])


class ChildrenSaga(Saga[Checkout]):
    steps = [pay, Fallback(step=pay_by_function, fallback=PlainStep)]


@breaker
async def fetch_quote(amount: int, *, currency: str = "EUR") -> int:
    return amount // 10


class HomeMadeBreaker:
    """Any object with these two methods guards a Fallback's primary."""

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        return await fn(*args, **kwargs)

    def is_open_error(self, error: BaseException) -> bool:
        return isinstance(error, TimeoutError)


home_made = Fallback(step=ExactQuote, fallback=FlatRate, circuit_breaker=HomeMadeBreaker())


async def main() -> None:
    result = await CheckoutSaga().run(Checkout(amount=25))
    assert_type(result, SagaResult[Checkout])
    assert_type(result.context.charge_id, str | None)
    assert_type(await fetch_quote(25, currency="USD"), int)
    task = asyncio.create_task(fetch_quote(30))
    assert_type(await task, int)
    assert_type(await breaker.call(fetch_quote, 40), int)
    assert_type(breaker.state, CircuitState)
    async with breaker:
        pass
    try:
        await breaker.call(fetch_quote, 50, currency="GBP")
    except CircuitOpenError as rejected:
        assert_type(rejected.retry_after, float)
    assert_type(retry.should_retry(WarehouseDown(), 1), bool)
    child = await PaymentSaga().run(payment_for(Checkout(amount=3)))
    assert_type(child.context, Payment)
