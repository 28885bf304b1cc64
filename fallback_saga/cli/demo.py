"""``demo [--db PATH]``: the order saga behind ``python -m fallback_saga demo``
(the saga and its trace are private; may change).

Four steps: reserve stock, charge the card (falling back to a backup payment
provider, the card gateway guarded by a circuit breaker), book a courier,
e-mail a receipt. The services are fakes that print what they do, the clock is
simulated: the demo is instant and prints the same trace on every run.

With ``--db PATH`` the sagas are journaled in a new SQLite file, and two more
orders run in a child process (``python -m fallback_saga _crash-demo``) that
dies with ``os._exit`` mid-saga — once while booking the courier, once while
refunding the card during an unwinding. The parent then lists the interrupted
sagas, recovers them with ``recover(store, [saga], older_than=0)`` and prints
their histories.

``DemoOrderSaga`` is a ready-made class for ``python -m fallback_saga graph
fallback_saga.cli.demo:DemoOrderSaga``; ``build_demo_saga`` makes one around a
breaker of your choice (the demo injects one on its fake clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import TextIO

from .. import __version__
from ..breaker import CircuitBreaker, CircuitBreakerProtocol, CircuitOpenError
from ..command_line import PYTHON_M
from ..context import SagaContext
from ..errors import SagaFailed
from ..events import SagaListener
from ..fallback import Fallback
from ..recovery import recover
from ..retry import RetryPolicy
from ..saga import Saga
from ..status import SagaStatus
from ..step import Response, SagaStepHandler, SagaStepResult, current_step
from ..store.base import SagaStore
from ..store.memory import MemorySagaStore
from ..store.sqlite import SQLiteSagaStore
from .errors import UsageError
from .inspect import history_table, summary_table

__all__ = [
    "DemoOrderSaga",
    "OrderContext",
    "TracePrinter",
    "add_demo_commands",
    "build_demo_saga",
    "run_crash_child",
    "run_demo",
]

# What the crashing child exits with: the parent tells a staged crash from a bug.
CRASH_EXIT_STATUS = 86

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
        self.crash_in: str | None = None  # "courier" or "refund": where the process dies

    def say(self, text: str) -> None:
        self.write(f"       {text}")

    def crash_here(self, point: str) -> None:
        """Die on the spot, like a killed process: no cleanup, no compensation."""
        if self.crash_in == point:
            self.say("*** the process dies here (os._exit): nothing is unwound ***")
            sys.stdout.flush()
            os._exit(CRASH_EXIT_STATUS)

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

    async def refund_card(self, payment_id: str, amount: Decimal, idempotency_key: str) -> None:
        self.card_gateway_calls += 1
        if self.refund_glitches:
            self.refund_glitches -= 1
            self.say(f"card gateway: refund of {payment_id} ... connection reset")
            raise PaymentGatewayError("connection reset during refund")
        self.crash_here("refund")
        self.say(f"card gateway: refunded {amount} EUR ({payment_id}, key {idempotency_key})")


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
        key = current_step().idempotency_key  # the same key if a resumed run refunds again
        await self.world.refund_card(context.payment_id, context.amount, key)
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
        self.world.crash_here("courier")
        context.shipment_id = f"SHIP-{context.order_id}"
        key = current_step().idempotency_key
        self.world.say(f"courier: pickup booked as {context.shipment_id} (key {key})")
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
    store: SagaStore, saga_ids: list[str], shown: set[str], write: Write, title: str
) -> None:
    _banner(write, title)
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


async def demo(write: Write = print, store: SagaStore | None = None) -> None:
    """Run the three scenarios, then print the journal (from ``store``: default, a
    ``MemorySagaStore``)."""
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
        store=store,
    )
    title = f"The journal ({type(saga.store).__name__}"
    title += ", the default store)" if isinstance(saga.store, MemorySagaStore) else ")"

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
    await _journal(saga.store, orders, {"A-1001", "A-1003", "A-1005"}, write, title)


# --------------------------------------------------------------------------- the crash (--db)

_CRASHES: tuple[tuple[str, str, str, str], ...] = (
    ("A-1006", "Berlin", "courier", "the process dies while booking the courier"),
    (
        "A-1007",
        "Atlantis",
        "refund",
        "no courier goes there; the process dies while refunding the card",
    ),
)


_PACKAGE_FILE = pathlib.Path(__file__).resolve()


class DemoFailed(Exception):
    """The crashing child did something else than crash as staged."""


def _durable_saga(store: SagaStore, world: DemoWorld, printer: TracePrinter) -> Saga[OrderContext]:
    """The demo saga on ``store``: the child runs it, the parent recovers with it."""
    breaker = CircuitBreaker(
        name="card-gateway", fail_max=2, reset_timeout=30.0, clock=world.clock, listeners=[printer]
    )
    return build_demo_saga(breaker)(
        store=store,
        step_factory=lambda cls: cls(world),
        compensation_retry=RetryPolicy(
            attempts=3, delay=0.5, backoff=2.0, jitter=0.0, sleep=world.sleep
        ),
        listeners=[printer],
    )


def run_crash_child(db: str, saga_id: str, city: str, crash_in: str) -> int:
    """``python -m fallback_saga _crash-demo``: run one order on ``db`` and die
    (``os._exit``) at ``crash_in``. Returns (1) only if the crash did not happen."""

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()  # os._exit flushes nothing

    async def run() -> None:
        world = DemoWorld(write)
        world.crash_in = crash_in
        async with SQLiteSagaStore(db) as store:
            saga = _durable_saga(store, world, TracePrinter(write))
            context = OrderContext(order_id=saga_id, amount=Decimal("59.90"), city=city)
            with contextlib.suppress(SagaFailed):  # the staged crash comes first
                await saga.run(context, saga_id=saga_id)

    asyncio.run(run())
    write("(the saga finished: the staged crash did not happen)")
    return 1


async def _run_crash_child(db: str, saga_id: str, city: str, crash_in: str) -> list[str]:
    """Run the child process; its output lines, once it has crashed as staged."""
    # fallback_saga (or the name a vendored copy goes by): this module's package's package.
    package = (__package__ or "fallback_saga.cli").rpartition(".")[0] or "fallback_saga"
    # The child must import this very copy of the package (installed, or vendored).
    root = _PACKAGE_FILE.parents[len(package.split(".")) + 1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", package, "_crash-demo", "--db", db, "--saga-id", saga_id,
        "--city", city, "--crash-in", crash_in,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await child.communicate()
    if child.returncode != CRASH_EXIT_STATUS:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no error output"]
        raise DemoFailed(
            f"the child process running {saga_id} exited with status {child.returncode} "
            f"instead of crashing: {detail[0]}"
        )
    return out.decode(errors="replace").splitlines()


async def crash_and_recover(store: SQLiteSagaStore, db: str, write: Write) -> None:
    """Scenario 4: two orders die mid-saga in a child process; recover them here."""
    _banner(write, "4. A crash mid-saga; recovery resumes from the SQLite journal")
    write("")
    write("Two more orders run in a child process (python -m fallback_saga _crash-demo)")
    write("that dies with os._exit mid-saga: no cleanup, no compensation, no goodbye.")
    for saga_id, city, crash_in, story in _CRASHES:
        write("")
        write(f"order {saga_id} (59.90 EUR, to {city}): {story}")
        for line in await _run_crash_child(db, saga_id, city, crash_in):
            write(f"  |{line}")
        write(f"  the child process is gone (exit status {CRASH_EXIT_STATUS})")

    interrupted = [
        summary
        for summary in await store.list_sagas()
        if summary.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
    ]
    write("")
    write("The journal still has them, as the crash left them:")
    for line in summary_table(interrupted, times=False):
        write(f"  {line}")

    write("")
    write("recover(store, [saga], older_than=0) in this process claims each one with a lease")
    write("and resumes it: A-1006 runs BookCourier again (same idempotency key), A-1007")
    write("finishes its unwinding and never runs a forward step again.")
    world = DemoWorld(write)
    printer = TracePrinter(write)
    saga = _durable_saga(store, world, printer)

    def progress(saga_id: str, outcome: str) -> None:
        write(f"  => {saga_id}: {outcome}")

    # One at a time, so that the trace reads in order.
    report = await recover(store, [saga], older_than=0, concurrency=1, progress=progress)
    write("")
    for line in str(report).splitlines():
        write(f"  {line}")

    for saga_id, *_ in _CRASHES:
        record = await store.load(saga_id)
        write("")
        write(f"{record.saga_id} ({record.status.value}), as `show {saga_id} --db {db}` lists it:")
        for line in history_table(record, times=False):
            write(f"  {line}")
    write("")
    write("Look for yourself:")
    write(f"  {PYTHON_M} list --db {db}")
    write(f"  {PYTHON_M} show A-1007 --db {db} --mermaid")


async def durable_demo(db: str, write: Write) -> None:
    """The demo journaled in SQLite at ``db``, then the crash and its recovery."""
    async with SQLiteSagaStore(db) as store:
        await demo(write, store)
        await crash_and_recover(store, db, write)


def run_demo(out: TextIO | None = None, db: str | None = None) -> int:
    """``python -m fallback_saga demo [--db PATH]``: run the demo, print its trace;
    the exit status (0; 1 if the crash could not be staged).

    The trace is collected and written at the end (the run is quick): a reader
    that goes away early (``| head``) then breaks one write, not the sagas.
    """
    lines: list[str] = []
    status = 0
    try:
        asyncio.run(demo(lines.append) if db is None else durable_demo(db, lines.append))
    except DemoFailed as error:
        lines.append(f"demo failed: {error}")
        status = 1
    (out or sys.stdout).write("\n".join(lines) + "\n")
    return status


# --------------------------------------------------------------------------- the commands


def add_demo_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``demo``, and the hidden ``_crash-demo`` its child process runs."""
    demo_command = commands.add_parser(
        "demo",
        help="run a demo order saga and print its trace",
        description="Run a small order saga and print a trace: a flaky primary and its "
        "fallback, a circuit breaker opening, a late failure unwinding in reverse, then the "
        "journal. Simulated clock: instant. With --db, the sagas are journaled in a new SQLite "
        "file, and two more orders run in a child process that dies mid-saga; this process "
        "then recovers them.",
    )
    demo_command.add_argument(
        "--db", metavar="PATH", help="journal in a new SQLite file and show a crash recovered"
    )
    demo_command.set_defaults(handler=_run_demo_command)

    crash = commands.add_parser("_crash-demo")  # no help=: hidden from the command list
    crash.add_argument("--db", required=True)
    crash.add_argument("--saga-id", required=True)
    crash.add_argument("--city", required=True)
    crash.add_argument("--crash-in", required=True, choices=("courier", "refund"))
    crash.set_defaults(handler=_run_crash_command)


def _run_demo_command(args: argparse.Namespace) -> int:
    if args.db in ("", ":memory:"):
        # SQLite's private temporary or in-memory database: the crash child,
        # another process, could not see the sagas it should crash in.
        raise UsageError(
            f"--db {args.db!r} is no file: the demo needs a new SQLite file that its "
            f"crash child can open too (give a path, e.g. --db demo.db)"
        )
    if args.db is not None and os.path.exists(args.db):
        raise UsageError(
            f"{args.db} already exists; the demo writes a new database "
            f"(remove it or choose another path)"
        )
    return run_demo(db=args.db)


def _run_crash_command(args: argparse.Namespace) -> int:
    return run_crash_child(args.db, args.saga_id, args.city, args.crash_in)
