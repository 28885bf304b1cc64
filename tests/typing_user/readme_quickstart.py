"""The README's quick start, with the inventory service given to the primary
step by a step factory (dependency injection), and what a user reads back."""

from __future__ import annotations

import dataclasses
from typing import Any, assert_type

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    JournalEntry,
    Response,
    Saga,
    SagaContext,
    SagaFailed,
    SagaRecord,
    SagaResult,
    SagaStatus,
    SagaStepHandler,
    SagaStepResult,
    SagaTransaction,
    Step,
)


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    reservation_id: str | None = None
    charged: bool = False


class ReserveInventoryResponse(Response):
    reservation_id: str


class InventoryService:
    async def reserve_items(self, order_id: str) -> str:
        return f"R-{order_id}"

    async def release(self, reservation_id: str) -> None:
        return None


class PrimaryStep(SagaStepHandler[OrderContext, ReserveInventoryResponse]):
    timeout = 5.0

    def __init__(self, inventory: InventoryService) -> None:
        self._inventory_service = inventory

    async def act(
        self, context: OrderContext
    ) -> SagaStepResult[OrderContext, ReserveInventoryResponse]:
        reservation_id = await self._inventory_service.reserve_items(context.order_id)
        context.reservation_id = reservation_id
        return self._generate_step_result(ReserveInventoryResponse(reservation_id=reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        if context.reservation_id is not None:
            await self._inventory_service.release(context.reservation_id)


class FallbackStep(SagaStepHandler[OrderContext, ReserveInventoryResponse]):
    name = "ReserveLater"

    async def act(self, context: OrderContext) -> ReserveInventoryResponse:
        # Returning the response itself is allowed: the saga wraps it.
        context.reservation_id = f"fallback_reservation_{context.order_id}"
        return ReserveInventoryResponse(reservation_id=context.reservation_id)


class ChargePayment(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> None:
        context.charged = True


inventory_breaker = CircuitBreaker(name="inventory", fail_max=5, reset_timeout=30.0)


class OrderSaga(Saga[OrderContext]):
    steps = [
        Fallback(
            step=PrimaryStep,
            fallback=FallbackStep,
            failure_exceptions=(ConnectionError, TimeoutError),
            circuit_breaker=inventory_breaker,
        ),
        ChargePayment,
    ]


class Container:
    """A dependency-injection container: ``get(cls)`` builds ``cls``."""

    def __init__(self) -> None:
        self.inventory = InventoryService()

    def build(self, cls: type[Any]) -> Step[OrderContext]:
        if cls is PrimaryStep:
            return PrimaryStep(self.inventory)
        step: Step[OrderContext] = cls()
        return step


async def main() -> None:
    container = Container()
    saga = OrderSaga(step_factory=container.build)
    try:
        result = await saga.run(OrderContext(order_id="42"), saga_id="order-42")
    except SagaFailed as failed:
        assert_type(failed.error, BaseException)
        assert_type(failed.status, SagaStatus)
        assert_type(failed.compensation_errors, dict[str, BaseException])
        return
    assert_type(result, SagaResult[OrderContext])
    assert_type(result.context, OrderContext)
    assert_type(result.context.reservation_id, str | None)
    assert_type(result.status, SagaStatus)
    assert_type(result.results, list[SagaStepResult[OrderContext, Any]])
    for step_result in result.results:
        assert_type(step_result.step_name, str)
    record = await saga.store.load(result.saga_id)
    assert_type(record, SagaRecord)
    for entry in record.history:
        assert_type(entry, JournalEntry)
        print(f"{entry.step} {entry.action} {entry.status.value} {entry.error or ''}")

    resumed = await saga.resume("order-41")
    assert_type(resumed.context, OrderContext)

    async with saga.transaction(OrderContext(order_id="43")) as tx:
        assert_type(tx, SagaTransaction[OrderContext])
        assert_type(tx.context, OrderContext)
        async for streamed in tx:
            assert_type(streamed, SagaStepResult[OrderContext, Any])
            if streamed.step_name == "ChargePayment":
                break
    assert_type(tx.result, SagaResult[OrderContext] | None)
    if tx.result is not None:
        assert_type(tx.result.context.charged, bool)

    response = ReserveInventoryResponse(reservation_id="R-1")
    assert_type(response.reservation_id, str)
    assert_type(OrderContext.from_dict(result.context.to_dict()), OrderContext)
