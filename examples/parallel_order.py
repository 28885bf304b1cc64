"""Parallel groups and child sagas: an order whose independent calls run at once.

ValidateOrder, then ``Parallel(ReserveStock, Fallback(step=ChargeCard,
fallback=ChargeWallet), SubSaga(ShippingQuoteSaga))``, then Ship. The child saga
(PickCarrier, PriceParcel) is journaled in its own record, ``"<order id>/ShippingQuote"``.

Each member works on its own copy of the context, merged into the order when it
completes; so members write disjoint fields (two members changing one field fail
the group with ``ParallelWriteConflict``).

Shows (1) the members overlapping in time, (2) a member that fails: its completed
siblings, the child saga included, are compensated, then the steps before the
group, (3) the same saga journaled to a SQLite file, and its journal.

Run: python examples/parallel_order.py   (half a second: the fake services sleep)
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path

from fallback_saga import (
    Fallback,
    Parallel,
    Saga,
    SagaContext,
    SagaFailed,
    SagaListener,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    current_step,
)


class Demo:
    """The current run of this demo: when it began, how the payment services answer."""

    start = time.perf_counter()
    card_declined = False
    wallet_empty = False
    # The services answer in the order the page shows, whatever the machine's
    # load: the warehouse waits for the quote, the card for the warehouse. (Their
    # sleeps alone order them on an idle machine; a busy one can stall a member.)
    quoted = asyncio.Event()
    reserved = asyncio.Event()

    @classmethod
    def begin(cls) -> None:
        cls.start = time.perf_counter()
        cls.quoted, cls.reserved = asyncio.Event(), asyncio.Event()


def log(text: str) -> None:
    """What a service was asked, the call's idempotency key (a child's steps
    carry the child's saga id), and the time since the run began."""
    ms = (time.perf_counter() - Demo.start) * 1000
    print(f"  {text:<28} {current_step().idempotency_key:<42} at {ms:.0f} ms")


# --------------------------------------------------------------------- the child saga


@dataclasses.dataclass
class QuoteContext(SagaContext):
    destination: str
    carrier: str | None = None
    price_cents: int | None = None


class PickCarrier(SagaStepHandler[QuoteContext, str]):
    async def act(self, context: QuoteContext) -> str:
        log("carriers: pick one")
        await asyncio.sleep(0.01)
        context.carrier = "ParcelCo"
        return context.carrier

    async def compensate(self, context: QuoteContext) -> None:
        log("carriers: release the slot")


class PriceParcel(SagaStepHandler[QuoteContext, int]):
    async def act(self, context: QuoteContext) -> int:
        log("carriers: price the parcel")
        await asyncio.sleep(0.01)
        context.price_cents = 590
        return context.price_cents  # nothing to undo: the default compensate


class ShippingQuoteSaga(Saga[QuoteContext]):
    steps = [PickCarrier, PriceParcel]


# --------------------------------------------------------------------- the order saga


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    destination: str = "Lyon"
    # One field per member of the group: their copies are merged field by field.
    reservation: str | None = None
    payment: str | None = None
    shipping: str | None = None
    tracking: str | None = None


class ValidateOrder(SagaStepHandler[OrderContext, None]):
    async def act(self, context: OrderContext) -> None:
        log("order is valid")

    async def compensate(self, context: OrderContext) -> None:
        log("order marked cancelled")


class ReserveStock(SagaStepHandler[OrderContext, str]):
    async def act(self, context: OrderContext) -> str:
        log("warehouse: reserve -> start")
        await asyncio.sleep(0.06)
        await Demo.quoted.wait()
        context.reservation = f"R-{context.order_id}"
        log("warehouse: reserve -> done")
        Demo.reserved.set()
        return context.reservation

    async def compensate(self, context: OrderContext) -> None:
        log(f"warehouse: release {context.reservation}")


class PaymentDeclined(Exception):
    pass


class ChargeCard(SagaStepHandler[OrderContext, str]):
    async def act(self, context: OrderContext) -> str:
        log("card: charge -> start")
        # Slower than its siblings, so that they have completed when it fails in
        # run 2 (one still in flight would be cancelled, and compensated too:
        # its effect is uncertain).
        await asyncio.sleep(0.12)
        await Demo.reserved.wait()
        if Demo.card_declined:
            log("card: declined")
            raise PaymentDeclined("card declined")
        context.payment = "card"
        log("card: charge -> done")
        return context.payment

    async def compensate(self, context: OrderContext) -> None:
        log("card: refund")


class ChargeWallet(SagaStepHandler[OrderContext, str]):
    async def act(self, context: OrderContext) -> str:
        log("wallet: charge")  # on the member's copy, restored: no trace of the card try
        if Demo.wallet_empty:
            raise PaymentDeclined("wallet balance too low")
        context.payment = "wallet"
        return context.payment

    async def compensate(self, context: OrderContext) -> None:
        log("wallet: refund")


def quote_for(order: OrderContext) -> QuoteContext:
    return QuoteContext(destination=order.destination)


def merge_quote(order: OrderContext, quote: QuoteContext) -> None:
    # Writes the member's copy: the order gets it when the child has completed.
    order.shipping = f"{quote.carrier}, {quote.price_cents} cents"
    Demo.quoted.set()


class Ship(SagaStepHandler[OrderContext, str]):
    async def act(self, context: OrderContext) -> str:
        # After the whole group: every member's writes are merged by now.
        log(f"ship {context.reservation} ({context.payment})")
        context.tracking = f"TRK-{context.order_id}"
        return context.tracking


class OrderSaga(Saga[OrderContext]):
    steps = [
        ValidateOrder,
        Parallel(
            ReserveStock,
            Fallback(step=ChargeCard, fallback=ChargeWallet),
            SubSaga(ShippingQuoteSaga, context=quote_for, merge=merge_quote, name="ShippingQuote"),
        ),
        Ship,
    ]


class CompensationTrace(SagaListener):
    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        print(f"  (compensating {step} of {saga_id})")


async def main() -> None:
    saga = OrderSaga(listeners=[CompensationTrace()])  # a child gets its parent's listeners

    print("1. Everything succeeds; the three members overlap in time")
    Demo.begin()
    result = await saga.run(OrderContext("o-1"), saga_id="o-1")
    ms = (time.perf_counter() - Demo.start) * 1000
    print(f"  -> {result.status.value} in {ms:.0f} ms (the services' sleeps add up to 200 ms)")
    for step_result in result.results:  # one per member too, in declared order
        print(f"     {step_result.step_name:<14} -> {step_result.response!r}")
    print(f"     {result.context}")

    print("\n2. Card declined, wallet empty: the payment member fails. Its completed siblings")
    print("   are compensated, last completed first (the child: its own steps in reverse,")
    print("   journaled in its own record), then the steps before the group")
    Demo.card_declined = Demo.wallet_empty = True
    Demo.begin()
    try:
        await saga.run(OrderContext("o-2"), saga_id="o-2")
    except SagaFailed as failed:
        print(f"  -> SagaFailed({failed.status.value}), failed_step={failed.failed_step!r}: "
              f"{failed.error!r}, after {failed.error.__cause__!r}")
        child = await saga.store.load("o-2/ShippingQuote")
        print(f"     the child saga o-2/ShippingQuote: {child.status.value}")

    print("\n3. Durable, on a SQLite file: the card is declined, the wallet pays")
    Demo.wallet_empty = False
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteSagaStore(Path(tmp) / "sagas.db", synchronous="full") as store:
            Demo.begin()
            await OrderSaga(store=store).run(OrderContext("o-3"), saga_id="o-3")
            # The members' three STARTED rows were made durable in one write before
            # any of them ran; then each completion (with the member's fields), as
            # it happened: completions that queue behind a sibling's write go together.
            for saga_id in ("o-3", "o-3/ShippingQuote"):
                record = await store.load(saga_id)
                print(f"  journal of {saga_id}: {record.status.value}, {record.context}")
                for e in record.history:
                    print(f"    {e.position}  {e.step:<14} {e.branch:<8} {e.action:<7} "
                          f"{e.status.value:<9} {e.error or ''}".rstrip())


if __name__ == "__main__":
    asyncio.run(main())
