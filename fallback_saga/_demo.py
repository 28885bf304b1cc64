"""The order saga behind ``python -m fallback_saga demo`` (private; may change).

Four steps: reserve stock, charge the card (falling back to a backup payment
provider, the card gateway guarded by a circuit breaker), book a courier,
e-mail a receipt. The services are fakes that print what they do, the clock is
simulated: the demo is instant and prints the same trace on every run.

``DemoOrderSaga`` is a ready-made class for ``python -m fallback_saga graph
fallback_saga._demo:DemoOrderSaga``; ``build_demo_saga`` makes one around a
breaker of your choice (the demo injects one on its fake clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import TextIO

from . import __version__
from .breaker import CircuitBreaker, CircuitBreakerProtocol, CircuitOpenError
from .context import SagaContext
from .errors import SagaFailed
from .events import SagaListener
from .fallback import Fallback
from .retry import RetryPolicy
from .saga import Saga
from .status import SagaStatus
from .step import Response, SagaStepHandler, SagaStepResult, current_step
from .store.memory import MemorySagaStore

__all__ = ["DemoOrderSaga", "OrderContext", "TracePrinter", "build_demo_saga", "run_demo"]

Write = Callable[[str], None]

# --------------------------------------------------------------------------- the context


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    amount: Decimal
    city: str = "Berlin"
    reservation_id: str | None = None
    payment_id: str | None = None
    paid_with: str | None = None
    shipment_id: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


class Reservation(Response):
    reservation_id: str


class Payment(Response):
    payment_id: str
    provider: str


class Shipment(Response):
    shipment_id: str


class Receipt(Response):
    sent_to: str


class PaymentGatewayError(ConnectionError):
    """The card gateway did not answer: worth a fallback, and counts against it."""


class CourierRejected(Exception):
    """The courier refuses the delivery: a business error, nothing to fall back on."""


# --------------------------------------------------------------------------- fake services


class FakeClock:
    """Monotonic seconds that move only when told to (the breaker's clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DemoWorld:
    """The fake services the steps talk to, and the switches the demo flips."""

    def __init__(self, write: Write = print) -> None:
        self.write = write
        self.clock = FakeClock()
        self.card_gateway_up = True
        self.card_gateway_calls = 0
        self.refund_glitches = 0  # how many refunds fail before one succeeds
        self.no_delivery_to: set[str] = {"Atlantis"}

    def say(self, text: str) -> None:
        self.write(f"       {text}")

    async def sleep(self, seconds: float) -> None:
        """What the compensation RetryPolicy waits with: simulated, instant."""
        self.say(f"(waiting {seconds:.2f} s before the next try -- simulated, instant)")
        self.clock.advance(seconds)

    async def charge_card(self, order_id: str, amount: Decimal, idempotency_key: str) -> str:
        self.card_gateway_calls += 1
        if not self.card_gateway_up:
            self.say(f"card gateway: charge {amount} EUR for {order_id} ... no answer")
            raise PaymentGatewayError("card gateway timed out")
        self.say(f"card gateway: charged {amount} EUR (idempotency key {idempotency_key})")
        return f"CARD-{order_id}"

    async def refund_card(self, payment_id: str, amount: Decimal) -> None:
        self.card_gateway_calls += 1
        if self.refund_glitches:
            self.refund_glitches -= 1
            self.say(f"card gateway: refund of {payment_id} ... connection reset")
            raise PaymentGatewayError("connection reset during refund")
        self.say(f"card gateway: refunded {amount} EUR ({payment_id})")


class _DemoStep:
    def __init__(self, world: DemoWorld | None = None) -> None:
        self.world = world if world is not None else DemoWorld()


# --------------------------------------------------------------------------- the steps


class ReserveInventory(_DemoStep, SagaStepHandler[OrderContext, Reservation]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Reservation]:
        context.reservation_id = f"RES-{context.order_id}"
        context.notes.append("stock reserved")
        self.world.say(f"inventory: 1 book reserved as {context.reservation_id}")
        return self._generate_step_result(Reservation(reservation_id=context.reservation_id))

    async def compensate(self, context: OrderContext) -> None:
        self.world.say(f"inventory: reservation {context.reservation_id} released")
        context.reservation_id = None


class ChargeCard(_DemoStep, SagaStepHandler[OrderContext, Payment]):
    """The primary payment path; its gateway is flaky."""

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Payment]:
        # Touch the context before the call that may fail: if it fails, the
        # fallback must not see any of this (the executor restores the snapshot).
        context.paid_with = "card"
        context.notes.append("card charge attempted")
        # A stable key per saga and step: the gateway can deduplicate a re-run.
        key = current_step().idempotency_key
        payment_id = await self.world.charge_card(context.order_id, context.amount, key)
        context.payment_id = payment_id
        return self._generate_step_result(Payment(payment_id=payment_id, provider="card"))

    async def compensate(self, context: OrderContext) -> None:
        assert context.payment_id is not None
        await self.world.refund_card(context.payment_id, context.amount)
        context.payment_id = None


class ChargeBackupProvider(_DemoStep, SagaStepHandler[OrderContext, Payment]):
    """The fallback payment path: a second provider, always up in this demo."""

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Payment]:
        self.world.say(
            f"fallback sees paid_with={context.paid_with!r}, notes={context.notes!r}: restored"
        )
        context.paid_with = "backup provider"
        context.payment_id = f"BK-{context.order_id}"
        self.world.say(f"backup provider: charged {context.amount} EUR as {context.payment_id}")
        return self._generate_step_result(Payment(payment_id=context.payment_id, provider="backup"))

    async def compensate(self, context: OrderContext) -> None:
        self.world.say(f"backup provider: refunded {context.amount} EUR ({context.payment_id})")
        context.payment_id = None


class BookCourier(_DemoStep, SagaStepHandler[OrderContext, Shipment]):
    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Shipment]:
        if context.city in self.world.no_delivery_to:
            self.world.say(f"courier: no deliveries to {context.city}")
            raise CourierRejected(f"no courier delivers to {context.city}")
        context.shipment_id = f"SHIP-{context.order_id}"
        self.world.say(f"courier: pickup booked as {context.shipment_id}")
        return self._generate_step_result(Shipment(shipment_id=context.shipment_id))

    async def compensate(self, context: OrderContext) -> None:
        self.world.say(f"courier: booking {context.shipment_id} cancelled")
        context.shipment_id = None


class EmailReceipt(_DemoStep, SagaStepHandler[OrderContext, Receipt]):
    # No compensate: an e-mail cannot be unsent (the base class's is a no-op).

    async def act(self, context: OrderContext) -> SagaStepResult[OrderContext, Receipt]:
        self.world.say(f"mailer: receipt for {context.order_id} sent")
        return self._generate_step_result(Receipt(sent_to=f"customer of {context.order_id}"))


# --------------------------------------------------------------------------- the saga


def build_demo_saga(payment_breaker: CircuitBreakerProtocol | None) -> type[Saga[OrderContext]]:
    """The demo's saga class, its card payment guarded by ``payment_breaker``.

    A breaker is bound when the saga class is declared (``Fallback`` is frozen),
    so the demo builds its class around a breaker on its own simulated clock.
    """

    class DemoOrderSaga(Saga[OrderContext]):
        steps = [
            ReserveInventory,
            Fallback(
                step=ChargeCard,
                fallback=ChargeBackupProvider,
                failure_exceptions=(PaymentGatewayError,),
                circuit_breaker=payment_breaker,
            ),
            BookCourier,
            EmailReceipt,
        ]

    DemoOrderSaga.__qualname__ = "DemoOrderSaga"
    return DemoOrderSaga


DemoOrderSaga = build_demo_saga(
    CircuitBreaker(name="card-gateway", fail_max=2, reset_timeout=30.0)
)


# --------------------------------------------------------------------------- the trace


class TracePrinter(SagaListener):
    """A listener that prints every transition as one indented line."""

    def __init__(self, write: Write = print) -> None:
        self.write = write

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.write(f"  saga {saga_id} started")

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        cause = "" if error is None else f" ({type(error).__name__}: {error})"
        self.write(f"  saga {saga_id} finished: {status.value}{cause}")

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        again = "" if attempt == 1 else f" (attempt {attempt})"
        self.write(f"  -> {step}{again}")

    def step_completed(self, saga_id: str, step: str) -> None:
        self.write(f"  ok {step}")

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        if isinstance(error, CircuitOpenError):
            self.write(
                f"  xx {step} skipped, not called: circuit {error.breaker!r} is open "
                f"(retry after {error.retry_after:.0f} s)"
            )
        else:
            self.write(f"  !! {step} failed: {type(error).__name__}: {error}")

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self.write(f"  => fallback: {primary} -> {fallback}, context restored to its snapshot")

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        again = "" if attempt == 1 else f" (attempt {attempt})"
        self.write(f"  <- compensating {step}{again}")

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self.write(f"  ok {step} compensated")

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.write(f"  !! compensation of {step} gave up: {type(error).__name__}: {error}")

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        self.write(f"  ** circuit {breaker}: {old} -> {new}")


# --------------------------------------------------------------------------- the script


def _banner(write: Write, title: str) -> None:
    write("")
    write(f"== {title} ".ljust(78, "="))


async def _order(
    saga: Saga[OrderContext], write: Write, order_id: str, story: str, city: str = "Berlin"
) -> None:
    write("")
    write(f"order {order_id} (59.90 EUR, to {city}): {story}")
    context = OrderContext(order_id=order_id, amount=Decimal("59.90"), city=city)
    try:
        result = await saga.run(context, saga_id=order_id)
    except SagaFailed as failed:
        write(
            f"  run() raised SagaFailed: failed_step={failed.failed_step!r}, "
            f"status={failed.status.value},"
        )
        write(f"    error={failed.error!r}, compensation_errors={failed.compensation_errors!r}")
        return
    paid = result.context
    write(f"  run() returned: status={result.status.value}, paid with {paid.paid_with} "
          f"({paid.payment_id}), shipment {paid.shipment_id}")


def _breaker_line(breaker: CircuitBreaker, world: DemoWorld) -> str:
    return (
        f"  breaker {breaker.name}: {breaker.state.value}, counted failures "
        f"{breaker.failure_count}/{breaker.fail_max}; calls to the card gateway so far: "
        f"{world.card_gateway_calls}"
    )


async def _journal(
    store: MemorySagaStore, saga_ids: list[str], shown: set[str], write: Write
) -> None:
    _banner(write, "The journal (MemorySagaStore, the default store)")
    write("")
    for saga_id in saga_ids:
        record = await store.load(saga_id)
        write(f"{record.saga_id}: {record.saga_name}, {record.status.value}, "
              f"{len(record.history)} entries")
    for saga_id in saga_ids:
        if saga_id not in shown:
            continue
        record = await store.load(saga_id)
        write("")
        write(f"{record.saga_id} ({record.status.value}):")
        write(f"  {'pos':>3}  {'step':<21} {'branch':<8} {'action':<10} {'status':<9} try  error")
        for entry in record.history:
            line = (
                f"  {entry.position:>3}  {entry.step:<21} {entry.branch:<8} {entry.action:<10} "
                f"{entry.status.value:<9} {entry.attempt:>3}  {entry.error or ''}"
            )
            write(line.rstrip())


async def demo(write: Write = print) -> None:
    """Run the three scenarios, then print the journal."""
    world = DemoWorld(write)
    printer = TracePrinter(write)
    breaker = CircuitBreaker(
        name="card-gateway", fail_max=2, reset_timeout=30.0, clock=world.clock, listeners=[printer]
    )
    saga_class = build_demo_saga(breaker)
    saga = saga_class(
        step_factory=lambda cls: cls(world),
        compensation_retry=RetryPolicy(
            attempts=3, delay=0.5, backoff=2.0, jitter=0.0, sleep=world.sleep
        ),
        listeners=[printer],
    )
    store = saga.store
    assert isinstance(store, MemorySagaStore)

    write(f"fallback_saga {__version__} demo: an order saga with a flaky payment provider")
    write("")
    write("DemoOrderSaga: ReserveInventory -> ChargeCard -> BookCourier -> EmailReceipt")
    write("  ChargeCard falls back to ChargeBackupProvider on PaymentGatewayError, and is")
    write("  guarded by circuit breaker 'card-gateway' (opens after 2 consecutive failures,")
    write("  lets a trial call through after 30 s). Clock and sleeps are simulated.")
    write("  Trace: -> act started, ok completed, !! failed, => fallback, ** breaker,")
    write("         xx not called, <- compensation.")

    _banner(write, "1. A flaky primary: the fallback takes over")
    world.card_gateway_up = False
    await _order(saga, write, "A-1001", "the card gateway times out")
    write(_breaker_line(breaker, world))

    _banner(write, "2. The circuit breaker opens; the primary is skipped")
    await _order(saga, write, "A-1002", "the card gateway is still down")
    write(_breaker_line(breaker, world))
    await _order(saga, write, "A-1003", "the circuit is open: ChargeCard is not even called")
    write(_breaker_line(breaker, world))
    write("")
    write("... 30 simulated seconds later the card gateway is back up")
    world.clock.advance(30.0)
    world.card_gateway_up = True
    await _order(saga, write, "A-1004", "one trial call is let through (half-open)")
    write(_breaker_line(breaker, world))

    _banner(write, "3. A late failure: completed steps are compensated in reverse")
    world.refund_glitches = 1
    await _order(
        saga, write, "A-1005", "no courier delivers there; the first refund glitches",
        city="Atlantis",
    )

    orders = ["A-1001", "A-1002", "A-1003", "A-1004", "A-1005"]
    await _journal(store, orders, {"A-1001", "A-1003", "A-1005"}, write)


def run_demo(out: TextIO | None = None) -> int:
    """``python -m fallback_saga demo``: run the demo, print its trace; the exit status (0).

    The trace is collected and written at the end (the run is instant): a reader
    that goes away early (``| head``) then breaks one write, not the sagas.
    """
    lines: list[str] = []
    asyncio.run(demo(lines.append))
    (out or sys.stdout).write("\n".join(lines) + "\n")
    return 0
