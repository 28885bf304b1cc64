"""Wrong code a user's type checker must refuse: every line ending with
``# E: <code>`` is reported by ``mypy --strict`` with that error code, and no
other line is. (Most are refused at run time too, later: the checker says it first.)"""

from __future__ import annotations

import dataclasses

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    LoggingListener,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaListener,
    SagaStepHandler,
    SubSaga,
    current_step,
    recover,
)


@dataclasses.dataclass
class Order(SagaContext):
    order_id: str


@dataclasses.dataclass
class Invoice(SagaContext):
    number: int = 0


class Reserve(SagaStepHandler[Order, None]):
    async def act(self, context: Order) -> None:
        return None


class Bill(SagaStepHandler[Invoice, None]):
    async def act(self, context: Invoice) -> None:
        return None


class InvoiceSaga(Saga[Invoice]):
    steps = [Bill]


class ActOnly:
    """No compensate: not a step (the Step protocol needs both methods)."""

    async def act(self, context: Order) -> None:
        return None


class SyncStep:
    """A synchronous act: never awaited by the saga, so not a step."""

    def act(self, context: Order) -> None:
        return None

    async def compensate(self, context: Order) -> None:
        return None


class ActsOnInvoices(SagaStepHandler[Order, None]):
    async def act(self, context: Invoice) -> None:  # E: override
        return None


class BadlyTuned(SagaStepHandler[Order, None]):
    timeout = "5s"  # E: assignment
    retry = RetryPolicy  # E: assignment

    async def act(self, context: Order) -> None:
        return None


# Not steps, as a group's members or a Fallback's branches. (Listed in a saga's
# `steps` they are refused when the class is created, S11, not by a checker:
# `steps` is list[Any], see Saga.steps.)
not_a_step_in_a_group = Parallel(Reserve, 42)  # E: arg-type
act_only_as_primary = Fallback(step=ActOnly, fallback=Reserve)  # E: arg-type
sync_act_in_a_group = Parallel(SyncStep())  # E: arg-type


class StepsAsStringSaga(Saga[Order]):
    steps = "Reserve"  # E: assignment


class NestedGroupsSaga(Saga[Order]):
    steps = [Parallel(Reserve, Parallel(Reserve))]  # E: arg-type


class GroupOfAListSaga(Saga[Order]):
    steps = [Parallel([Reserve, Reserve])]  # E: arg-type


bad_primary = Fallback(step="Reserve", fallback=Reserve)  # E: arg-type
interrupts_are_not_failures = Fallback(Reserve, Reserve(), (KeyboardInterrupt,))  # E: arg-type
bad_retry_on = RetryPolicy(retry_on="ConnectionError")  # E: arg-type
attempts_as_text = RetryPolicy(attempts="3")  # E: arg-type
bad_exclude = CircuitBreaker(exclude="ValueError")  # E: arg-type

# The child saga runs on Invoices: its context= must make one.
wrong_child = SubSaga[Order, Invoice](InvoiceSaga, context=lambda o: o)  # E: arg-type, return-value
# A lambda alone does not say what the parent is: name it, SubSaga[Order, Invoice](...).
unsaid_parent = SubSaga(InvoiceSaga, context=lambda o: Invoice())  # E: var-annotated
typo = SubSaga[Order, Invoice](InvoiceSaga, context=lambda o: Invoice(o.id))  # E: attr-defined


class AsyncHook(SagaListener):
    async def step_failed(self, saga_id: str, step: str, error: Exception) -> None:  # E: override
        return None


class OrderSaga(Saga[Order]):
    steps = [Reserve]


async def misuse() -> None:
    saga = OrderSaga()
    await saga.run(Invoice())  # E: arg-type
    result = await saga.run(Order("o-1"))
    print(result.context.number)  # E: attr-defined
    OrderSaga(store="sagas.db")  # E: arg-type
    OrderSaga(listeners=LoggingListener())  # E: arg-type
    await recover(MemorySagaStore(), [OrderSaga])  # E: arg-type
    if current_step().action == "undo":  # E: comparison-overlap
        pass
    breaker = CircuitBreaker()

    async def charge(cents: int) -> str:
        return str(cents)

    await breaker.call(charge, "100")  # E: arg-type
