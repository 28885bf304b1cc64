"""Compensation: a late failure undoes the completed steps, last first.

Shows:
* LIFO unwinding — only steps whose ``act`` completed are compensated, in reverse;
* compensation retries (``compensation_retry=RetryPolicy(...)``), here on a
  printing fake sleep;
* a compensation that keeps failing: unwinding goes on with the earlier steps,
  and the saga ends ``FAILED`` (needs an operator) with ``compensation_errors``;
* cancellation: cancelling the task running a saga still compensates the
  completed steps, then ``CancelledError`` propagates;
* ``current_step()``: the saga id, step, action, attempt and a stable
  idempotency key inside ``act``/``compensate``.

Run: python examples/compensation.py
"""

from __future__ import annotations

import asyncio
import dataclasses

from fallback_saga import (
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaListener,
    SagaStatus,
    current_step,
)


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    destination: str = "Lyon"
    order_created: bool = False
    stock_reserved: bool = False
    charged: bool = False


class Ledger:
    """What the fake services were asked to do; the switches make them misbehave."""

    def __init__(self) -> None:
        self.refund_failures = 0  # refunds that fail before one succeeds
        self.release_broken = False  # the stock service cannot release at all
        self.courier_hangs = False
        self.courier_called = asyncio.Event()


ledger = Ledger()


def say(text: str) -> None:
    step = current_step()
    print(f"      {text}   [{step.action} attempt {step.attempt}, key {step.idempotency_key}]")


class CreateOrder:
    async def act(self, context: OrderContext) -> None:
        context.order_created = True
        say("order row inserted")

    async def compensate(self, context: OrderContext) -> None:
        context.order_created = False
        say("order marked cancelled")


class ReserveStock:
    async def act(self, context: OrderContext) -> None:
        context.stock_reserved = True
        say("stock reserved")

    async def compensate(self, context: OrderContext) -> None:
        if ledger.release_broken:
            say("stock service: 500")
            raise RuntimeError("stock service cannot release reservations")
        context.stock_reserved = False
        say("stock released")


class ChargePayment:
    async def act(self, context: OrderContext) -> None:
        context.charged = True
        say("card charged")

    async def compensate(self, context: OrderContext) -> None:
        # Use the idempotency key with the payment provider: a refund retried
        # (or re-run after a crash) is then refunded once.
        if ledger.refund_failures:
            ledger.refund_failures -= 1
            say("payment provider: timeout")
            raise TimeoutError("refund timed out")
        context.charged = False
        say("card refunded")


class BookCourier:
    async def act(self, context: OrderContext) -> None:
        ledger.courier_called.set()
        if ledger.courier_hangs:
            await asyncio.Event().wait()  # the courier never answers
        raise LookupError(f"no courier serves {context.destination}")

    async def compensate(self, context: OrderContext) -> None:
        say("courier booking cancelled")  # never called: its act never completed


class Trace(SagaListener):
    def step_completed(self, saga_id: str, step: str) -> None:
        print(f"  act        {step}: done")

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        print(f"  act        {step}: FAILED with {error!r}")

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        print(f"  compensate {step} (attempt {attempt})")

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        print(f"  compensate {step}: gave up after its last attempt ({error!r})")

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        print(f"  saga {saga_id}: {status.value}")


class OrderSaga(Saga[OrderContext]):
    steps = [CreateOrder, ReserveStock, ChargePayment, BookCourier]


async def print_sleep(seconds: float) -> None:
    print(f"      (backoff {seconds:.2f} s -- skipped in this example)")


saga = OrderSaga(
    # 3 tries per compensation, 0.1 s then 0.2 s between them; no jitter so the
    # output is the same on every run; a fake sleep so nothing waits.
    compensation_retry=RetryPolicy(attempts=3, delay=0.1, backoff=2.0, jitter=0.0,
                                   sleep=print_sleep),
    listeners=[Trace()],
)


async def run(order_id: str) -> None:
    context = OrderContext(order_id)
    try:
        await saga.run(context, saga_id=order_id)
    except SagaFailed as failed:
        print(f"  -> SagaFailed: failed_step={failed.failed_step!r}, "
              f"status={failed.status.value}, error={failed.error!r}")
        if failed.compensation_errors:
            print(f"     compensation_errors={failed.compensation_errors!r}")
    print(f"  context now: {context}")


async def main() -> None:
    print("1. The last step fails: ChargePayment, ReserveStock, CreateOrder are undone,")
    print("   in that order; the refund times out once and is retried")
    ledger.refund_failures = 1
    await run("order-1")

    print("\n2. A compensation keeps failing: the others still run; the saga ends FAILED")
    ledger.release_broken = True
    await run("order-2")
    ledger.release_broken = False

    print("\n3. The task running the saga is cancelled mid-step: compensation still runs")
    ledger.courier_hangs = True
    ledger.courier_called.clear()
    task = asyncio.create_task(saga.run(OrderContext("order-3"), saga_id="order-3"))
    await ledger.courier_called.wait()  # BookCourier is now hanging
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print("  -> CancelledError propagated, after the unwinding")

    print("\nThe journal of order-2:")
    record = await saga.store.load("order-2")
    for entry in record.history:
        print(f"  {entry.position}  {entry.step:<14} {entry.action:<10} {entry.status.value:<9} "
              f"attempt {entry.attempt}  {entry.error or ''}".rstrip())


if __name__ == "__main__":
    asyncio.run(main())
