"""The seed document's basic example, unchanged except for its import lines.

`PrimaryStep` uses an inventory service it was never given, so it fails with
AttributeError — and the Fallback takes over with the context restored.
Run: python examples/seed_basic.py
"""
# The seed's PrimaryStep uses an `_inventory_service` it was never given: that
# failure is the point of the example, so mypy is told here, not in the seed's lines.
# mypy: disable-error-code="attr-defined"

import asyncio
import dataclasses

from fallback_saga import Fallback
from fallback_saga import Saga
from fallback_saga import SagaStepHandler, SagaStepResult
from fallback_saga import SagaContext
from fallback_saga import Response


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    reservation_id: str | None = None

class ReserveInventoryResponse(Response):
    reservation_id: str

class PrimaryStep(SagaStepHandler[OrderContext, ReserveInventoryResponse]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, ReserveInventoryResponse]:
        # Primary step that may fail
        reservation_id = await self._inventory_service.reserve_items(context.order_id)
        context.reservation_id = reservation_id
        return self._generate_step_result(
            ReserveInventoryResponse(reservation_id=reservation_id)
        )

class FallbackStep(SagaStepHandler[OrderContext, ReserveInventoryResponse]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, ReserveInventoryResponse]:
        # Alternative step that executes when primary fails
        # Context is restored to state before primary execution
        reservation_id = f"fallback_reservation_{context.order_id}"
        context.reservation_id = reservation_id
        return self._generate_step_result(
            ReserveInventoryResponse(reservation_id=reservation_id)
        )

# Define saga with fallback
class OrderSaga(Saga[OrderContext]):
    steps = [
        Fallback(
            step=PrimaryStep,
            fallback=FallbackStep,
        ),
    ]


async def main() -> None:
    saga = OrderSaga()
    result = await saga.run(OrderContext(order_id="42"))
    print(result.status.value, result.context.reservation_id)
    for step_result in result.results:
        print(" ", step_result.step_name, step_result.response)
    record = await saga.store.load(result.saga_id)
    for entry in record.history:
        error = f" {entry.error}" if entry.error else ""  # no trailing blank without one
        print(f"  journal: {entry.step} {entry.action} {entry.status.value}{error}")


if __name__ == "__main__":
    asyncio.run(main())
