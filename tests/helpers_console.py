"""A journal for the console tests, filled by running real sagas, and HTTP helpers.

``fill_journal(store)`` runs a small shop's sagas through ``store`` (any
store): orders that complete, one that falls back to a wallet, one that is
compensated, a payout whose compensation keeps failing (FAILED), a saga
left RUNNING by a "crash" and leased by a recovery worker, and a saga whose
id, name, step names, error and context are hostile markup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from fallback_saga import (
    Fallback,
    JournalEntry,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    StepStatus,
)

XSS_ID = "<script>alert(1)</script>"
XSS_NAME = '<b onmouseover="alert(2)">Evil</b>'
XSS_STEP = "<svg onload=alert(3)>"
XSS_ERROR = "<img src=x onerror=alert(4)> & \"quoted\" 'single'"
XSS_CONTEXT = "</pre><script>alert(5)</script>"
RUNNING_ID = "order-1006"
LEASE_OWNER = "recovery-worker-7"


@dataclass
class ShopOrder(SagaContext):
    order_id: str
    amount_cents: int = 1999
    items: list[str] = dataclasses.field(default_factory=lambda: ["espresso beans"])
    reservation: str | None = None
    payment: str | None = None
    shipment: str | None = None


class CardDeclined(Exception):
    pass


class CourierRejected(Exception):
    pass


class LedgerUnavailable(Exception):
    pass


async def work(seconds: float) -> None:
    """A downstream call's latency, so the timeline has something to draw."""
    await asyncio.sleep(seconds)


class ReserveStock:
    async def act(self, context: ShopOrder) -> dict[str, Any]:
        await work(0.012)
        context.reservation = f"R-{context.order_id}"
        return {"reservation": context.reservation, "items": len(context.items)}

    async def compensate(self, context: ShopOrder) -> None:
        await work(0.004)
        context.reservation = None


class ChargeCard:
    async def act(self, context: ShopOrder) -> str:
        await work(0.02)
        if context.amount_cents > 50_000:
            raise CardDeclined("card declined by issuer: insufficient funds (code 51)")
        context.payment = f"card:{context.order_id}"
        return context.payment

    async def compensate(self, context: ShopOrder) -> None:
        await work(0.008)
        context.payment = None


class ChargeWallet:
    async def act(self, context: ShopOrder) -> str:
        await work(0.015)
        context.payment = f"wallet:{context.order_id}"
        return context.payment

    async def compensate(self, context: ShopOrder) -> None:
        await work(0.006)
        context.payment = None


class ShipParcel:
    async def act(self, context: ShopOrder) -> str:
        await work(0.03)
        if context.order_id.startswith("atlantis"):
            raise CourierRejected("no courier delivers to Atlantis")
        context.shipment = f"S-{context.order_id}"
        return context.shipment

    async def compensate(self, context: ShopOrder) -> None:
        await work(0.004)
        context.shipment = None


class NotifyCustomer:
    async def act(self, context: ShopOrder) -> None:
        await work(0.006)

    async def compensate(self, context: ShopOrder) -> None:
        pass


class OrderSaga(Saga[ShopOrder]):
    steps = [ReserveStock, Fallback(ChargeCard, ChargeWallet), ShipParcel, NotifyCustomer]


@dataclass
class Payout(SagaContext):
    payout_id: str
    amount_cents: int = 120_000
    debited: bool = False


class DebitLedger:
    async def act(self, context: Payout) -> None:
        await work(0.01)
        context.debited = True

    async def compensate(self, context: Payout) -> None:
        await work(0.003)
        raise LedgerUnavailable("ledger service unavailable: 503 from ledger.internal")


class SendTransfer:
    async def act(self, context: Payout) -> None:
        await work(0.018)
        raise TimeoutError("bank transfer API timed out after 15 s")

    async def compensate(self, context: Payout) -> None:
        pass


class PayoutSaga(Saga[Payout]):
    steps = [DebitLedger, SendTransfer]


@dataclass
class EvilCtx(SagaContext):
    note: str = XSS_CONTEXT
    nested: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"<key>": ["</script>", "\u202eevil"]}
    )


class EvilStep:
    name = XSS_STEP

    async def act(self, context: EvilCtx) -> None:
        raise ValueError(XSS_ERROR)

    async def compensate(self, context: EvilCtx) -> None:
        pass


class EvilFirst:
    name = "prepare\u202e<i>"

    async def act(self, context: EvilCtx) -> str:
        return "</td><script>alert(6)</script>"

    async def compensate(self, context: EvilCtx) -> None:
        pass


class EvilSaga(Saga[EvilCtx]):
    name = XSS_NAME
    steps = [EvilFirst, EvilStep]


async def fill_journal(store: Any, *, evil: bool = True) -> dict[str, str]:
    """Run the shop's sagas in ``store``; their ids by what they show."""
    orders = OrderSaga(store=store)
    payouts = PayoutSaga(store=store, compensation_retry=RetryPolicy(attempts=3, delay=0.01))
    ids: dict[str, str] = {}
    for order_id, amount in (("order-1001", 1999), ("order-1002", 4250), ("order-1003", 89_900)):
        await orders.run(ShopOrder(order_id, amount_cents=amount), saga_id=order_id)
    ids["completed"] = "order-1001"
    ids["fallback"] = "order-1003"
    try:
        # The card is declined (the wallet pays instead), then shipping fails: unwound.
        await orders.run(ShopOrder("atlantis-1004", amount_cents=64_000), saga_id="atlantis-1004")
    except SagaFailed:
        ids["compensated"] = "atlantis-1004"
    try:
        await payouts.run(Payout("payout-1005"), saga_id="payout-1005")
    except SagaFailed:
        ids["failed"] = "payout-1005"
    await left_running(store, RUNNING_ID)
    ids["running"] = RUNNING_ID
    if evil:
        try:
            await EvilSaga(store=store).run(EvilCtx(), saga_id=XSS_ID)
        except SagaFailed:
            ids["evil"] = XSS_ID
    return ids


async def left_running(store: Any, saga_id: str) -> None:
    """A saga whose process died inside ChargeCard, then leased by a worker."""
    now = time.time()
    context = {"order_id": saga_id, "amount_cents": 2500, "items": ["grinder"],
               "reservation": f"R-{saga_id}", "payment": None, "shipment": None}
    entries = [
        JournalEntry(0, "ReserveStock", "primary", "act", StepStatus.STARTED, 1, None, now),
        JournalEntry(0, "ReserveStock", "primary", "act", StepStatus.COMPLETED, 1, None,
                     now + 0.012),
        JournalEntry(1, "ChargeCard", "primary", "act", StepStatus.STARTED, 1, None, now + 0.013),
    ]
    fingerprint = OrderSaga.definition.fingerprint
    await store.create(saga_id, OrderSaga.name, fingerprint, context, entries)
    claim = getattr(store, "claim_saga", None)
    if claim is not None:
        await claim(saga_id, owner=LEASE_OWNER, lease_seconds=600)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


def fetch_sync(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
               data: bytes | None = None) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()},
                         response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


async def fetch(url: str, **kwargs: Any) -> Reply:
    """``urllib`` on a thread: the server answers on this test's event loop."""
    return await asyncio.to_thread(fetch_sync, url, **kwargs)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
