"""Fallback: when the primary step fails, the context is restored and the fallback runs.

Shows:
* ``failure_exceptions`` — which errors of the primary hand over to the fallback;
* ``retry`` — the primary is tried again (from the same snapshot) before falling back;
* a step ``timeout`` — a primary that hangs counts as failed (``TimeoutError``);
* the deep, in-place restore — the fallback sees none of the primary's mutations,
  nested ones included, and the context object keeps its identity;
* ``step_factory`` — steps get their services injected;
* an error outside ``failure_exceptions``, and a fallback that fails too.

Run: python examples/order_with_fallback.py   (instant: no real sleeping, except a
20 ms step timeout that is meant to expire)
"""

from __future__ import annotations

import asyncio
import dataclasses

from fallback_saga import (
    Fallback,
    Response,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
    SagaStepResult,
)


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    lines: list[Line]
    reservation_id: str | None = None
    reserved_at: str | None = None
    audit: list[str] = dataclasses.field(default_factory=list)


class Reservation(Response):
    reservation_id: str
    reserved_at: str


class WarehouseUnavailable(ConnectionError):
    pass


class OutOfStock(Exception):
    """A business answer, not an outage: no fallback for this one."""


class Inventory:
    """A fake inventory service; the switches decide how the warehouse behaves."""

    def __init__(self) -> None:
        self.warehouse = "up"  # "up", "down", "hangs" or "empty"
        self.supplier_up = True
        self.warehouse_calls = 0

    async def reserve_in_warehouse(self, order_id: str) -> str:
        self.warehouse_calls += 1
        if self.warehouse == "down":
            raise WarehouseUnavailable("warehouse API unreachable")
        if self.warehouse == "hangs":
            await asyncio.Event().wait()  # never answers: the step's timeout fires
        if self.warehouse == "empty":
            raise OutOfStock(f"nothing left for {order_id}")
        return f"WH-{order_id}"

    async def reserve_at_supplier(self, order_id: str) -> str:
        if not self.supplier_up:
            raise ConnectionError("supplier API unreachable")
        return f"SUP-{order_id}"


class ReserveInWarehouse(SagaStepHandler[OrderContext, Reservation]):
    timeout = 0.02  # seconds per call; exceeding it fails the step with TimeoutError

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reservation]:
        # Mutations made before the failing call: a failed try must leave no trace.
        context.audit.append("warehouse reservation attempted")
        context.lines[0].quantity += 100  # a nested object, changed in place
        context.reserved_at = "warehouse"
        reservation_id = await self.inventory.reserve_in_warehouse(context.order_id)
        context.lines[0].quantity -= 100
        context.reservation_id = reservation_id
        return self._generate_step_result(Reservation(reservation_id, "warehouse"))

    async def compensate(self, context: OrderContext) -> None:
        context.reservation_id = None


class ReserveAtSupplier(SagaStepHandler[OrderContext, Reservation]):
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reservation]:
        print(f"    fallback sees: audit={context.audit}, lines={context.lines}, "
              f"reserved_at={context.reserved_at}")
        reservation_id = await self.inventory.reserve_at_supplier(context.order_id)
        context.reservation_id = reservation_id
        context.reserved_at = "supplier"
        context.audit.append("reserved at the supplier")
        return self._generate_step_result(Reservation(reservation_id, "supplier"))

    async def compensate(self, context: OrderContext) -> None:
        context.reservation_id = None


async def _no_sleep(seconds: float) -> None:
    print(f"    (retry backoff {seconds:.2f} s, skipped)")


class ReserveStockSaga(Saga[OrderContext]):
    steps = [
        Fallback(
            step=ReserveInWarehouse,
            fallback=ReserveAtSupplier,
            # Outages and timeouts go to the fallback; OutOfStock fails the saga.
            failure_exceptions=(ConnectionError, TimeoutError),
            # Two tries of the warehouse before falling back. `retry_on` is the
            # policy's own filter (default: every Exception), so name the outages
            # here too. A real service leaves `sleep` alone (asyncio.sleep).
            retry=RetryPolicy(
                attempts=2,
                delay=0.2,
                jitter=0.0,
                retry_on=(ConnectionError, TimeoutError),
                sleep=_no_sleep,
            ),
        ),
    ]


async def attempt(saga: ReserveStockSaga, inventory: Inventory, order_id: str) -> None:
    context = OrderContext(order_id=order_id, lines=[Line("book", 1)])
    same_object = context
    calls_before = inventory.warehouse_calls
    try:
        result = await saga.run(context, saga_id=order_id)
    except SagaFailed as failed:
        print(f"  SagaFailed: step {failed.failed_step!r}, status {failed.status.value}, "
              f"error {failed.error!r}")
        if failed.error.__cause__ is not None:
            print(f"    the fallback's error chains the primary's: {failed.error.__cause__!r}")
    else:
        (step,) = result.results
        print(f"  {result.status.value}: {step.step_name} -> {step.response}")
        assert result.context is same_object  # restored in place: one object throughout
    print(f"  context: reservation_id={context.reservation_id}, lines={context.lines}, "
          f"audit={context.audit}")
    print(f"  warehouse calls: {inventory.warehouse_calls - calls_before}")
    record = await saga.store.load(order_id)
    for entry in record.history:
        print(f"    journal: {entry.step:<18} {entry.branch:<8} {entry.action} "
              f"{entry.status.value:<9} attempt {entry.attempt}  {entry.error or ''}".rstrip())


async def main() -> None:
    inventory = Inventory()
    saga = ReserveStockSaga(step_factory=lambda cls: cls(inventory))

    print("1. The warehouse is up: the primary does the job")
    await attempt(saga, inventory, "o-1")

    print("\n2. The warehouse is down: two tries, then the fallback, on a restored context")
    inventory.warehouse = "down"
    await attempt(saga, inventory, "o-2")

    print("\n3. The warehouse hangs: the 20 ms timeout fails each try, then the fallback")
    inventory.warehouse = "hangs"
    await attempt(saga, inventory, "o-3")

    print("\n4. Out of stock is not in failure_exceptions: no retry, no fallback, the saga fails")
    inventory.warehouse = "empty"
    await attempt(saga, inventory, "o-4")

    print("\n5. Warehouse and supplier both down: the step fails, both errors are kept")
    inventory.warehouse = "down"
    inventory.supplier_up = False
    await attempt(saga, inventory, "o-5")


if __name__ == "__main__":
    asyncio.run(main())
