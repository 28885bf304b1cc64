"""An order saga with a payment saga inside it, for test_subsaga.py.

``OrderSaga``: ``Reserve``, ``SubSaga(PaymentSaga)`` (``Authorize``,
``Capture``) named ``Pay``, ``Ship``. Every call goes to a participant
ledger (one JSON line per call, appended and fsynced) that applies an effect
at most once per idempotency key, as a real participant would.

``main`` (``subsaga_app STORE-KIND WHERE SAGA-ID CRASH-AT``, run in a child
process) runs the saga and dies with ``os._exit(137)`` where ``CRASH-AT``
says: ``capture`` (inside the child saga, its first step done),
``ship`` (the child completed, the parent's next step running), or
``refund`` (``Ship`` fails, the parent unwinds, and the child's compensation
of ``Capture`` dies half way). The parent process then recovers the store
and checks the ledger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from ledger_file import whole_lines

from fallback_saga import Saga as _Saga
from fallback_saga import (
    SagaContext,
    SagaStepHandler,
    SubSaga,
    current_step,
)

CRASH_AT: str | None = None  # set by main(): only the child process dies
LEDGER: Path | None = None


def call(action: str) -> None:
    """Record a call at the participant; apply it unless its key was applied."""
    assert LEDGER is not None
    info = current_step()
    key = info.idempotency_key
    lines = whole_lines(LEDGER)
    kind = "skip" if any(x["kind"] == "apply" and x["key"] == key for x in lines) else "apply"
    data = json.dumps({"kind": kind, "action": action, "step": info.step, "key": key,
                       "saga": info.saga_id, "pid": os.getpid()}) + "\n"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def crash_here(point: str) -> None:
    if point == CRASH_AT:
        os._exit(137)


@dataclasses.dataclass
class PayCtx(SagaContext):
    amount: int = 0
    auth: str | None = None


@dataclasses.dataclass
class OrderCtx(SagaContext):
    amount: int = 10
    payment: str | None = None
    fail_ship: bool = False


class Authorize(SagaStepHandler[PayCtx, str]):
    async def act(self, ctx: PayCtx, /) -> str:
        call("act")
        ctx.auth = f"auth-{ctx.amount}"
        return ctx.auth

    async def compensate(self, ctx: PayCtx, /) -> None:
        call("compensate")


class Capture(SagaStepHandler[PayCtx, str]):
    async def act(self, ctx: PayCtx, /) -> str:
        call("act")
        crash_here("capture")
        return "captured"

    async def compensate(self, ctx: PayCtx, /) -> None:
        call("compensate")
        crash_here("refund")


class PaymentSaga(_Saga[PayCtx]):
    steps: ClassVar[list[Any]] = [Authorize, Capture]


class Reserve(SagaStepHandler[OrderCtx, str]):
    async def act(self, ctx: OrderCtx, /) -> str:
        call("act")
        return "reserved"

    async def compensate(self, ctx: OrderCtx, /) -> None:
        call("compensate")


class Ship(SagaStepHandler[OrderCtx, str]):
    async def act(self, ctx: OrderCtx, /) -> str:
        call("act")
        crash_here("ship")
        if ctx.fail_ship:
            raise RuntimeError("no courier")
        return "shipped"


def merge(parent: OrderCtx, child: PayCtx) -> None:
    parent.payment = child.auth


def pay_context(parent: OrderCtx) -> PayCtx:
    return PayCtx(amount=parent.amount)


class OrderSaga(_Saga[OrderCtx]):
    steps: ClassVar[list[Any]] = [
        Reserve,
        # A short lease: the tests recover right after a crash, and wait it out.
        SubSaga(PaymentSaga, context=pay_context, merge=merge, name="Pay", lease_seconds=1.0),
        Ship,
    ]


def open_store(kind: str, where: str) -> Any:
    if kind == "sqlite":
        from fallback_saga import SQLiteSagaStore

        return SQLiteSagaStore(where)
    from fallback_saga.store.postgres import PostgresSagaStore

    return PostgresSagaStore(os.environ["SUBSAGA_APP_DSN"], schema=where, min_size=1)


def main(argv: Sequence[str]) -> None:
    global CRASH_AT, LEDGER
    kind, where, saga_id, crash_at, ledger = argv
    CRASH_AT, LEDGER = crash_at, Path(ledger)

    async def run() -> None:
        store = open_store(kind, where)
        ctx = OrderCtx(fail_ship=crash_at == "refund")
        await OrderSaga(store=store).run(ctx, saga_id=saga_id)

    asyncio.run(run())
    raise SystemExit(f"the saga was meant to crash at {crash_at}")
