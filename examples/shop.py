"""The shop of the operator walkthrough in docs/durability.md.

Three steps journaled in a SQLite file: ``Reserve``, ``Charge`` and ``Ship``.
``Charge`` prints its idempotency key, and is killed with SIGKILL when the
``SHOP_KILL`` environment variable is set, leaving its saga ``running`` in the
journal for recovery. There is no courier to Atlantis: ``Ship`` fails for an
order id starting with ``atlantis``, and the saga unwinds.

Shows:
* a saga that survives its process: ``python -m fallback_saga recover --db
  shop.db --app shop:sagas`` resumes it with the factory ``sagas(store)``;
* the operator commands (``list``, ``show``, ``recover``, ``purge``) on a real
  journal;
* ``sagas_v2(store)``: the same saga after a deploy that renamed ``Charge`` to
  ``ChargeCard`` (a changed definition: recovery refuses it, see "Changed
  definitions" in docs/durability.md).

Run, from this directory (the journal is ``shop.db`` here)::

    python shop.py order-1                 # one order
    SHOP_KILL=1 python shop.py order-2     # killed inside Charge
    python -m fallback_saga recover --db shop.db --app shop:sagas --older-than 0

With ``--dsn DSN`` (or ``$FALLBACK_SAGA_DSN``, which the operator commands
read too) the journal is a ``PostgresSagaStore`` instead: the walkthrough in
docs/scaling.md.

Without an order id (``python examples/shop.py``), it runs that session in a
temporary directory: order-1 completes, order-2 is killed in a child process
and recovered, atlantis-3 is compensated.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile

from fallback_saga import (
    Saga,
    SagaContext,
    SagaFailed,
    SagaStore,
    SQLiteSagaStore,
    current_step,
    recover,
)
from fallback_saga.store.postgres import PostgresSagaStore  # psycopg: imported on first use


@dataclasses.dataclass
class OrderContext(SagaContext):
    order_id: str
    reservation: str | None = None
    payment: str | None = None


class CourierRejected(Exception):
    """The courier will not deliver to that address."""


class Reserve:
    async def act(self, context: OrderContext) -> None:
        context.reservation = f"R-{context.order_id}"

    async def compensate(self, context: OrderContext) -> None:
        context.reservation = None


class Charge:
    async def act(self, context: OrderContext) -> None:
        print(f"charging, idempotency key {current_step().idempotency_key}", flush=True)
        if os.environ.get("SHOP_KILL"):
            die()
        context.payment = f"P-{context.order_id}"

    async def compensate(self, context: OrderContext) -> None:
        print(f"refunding, idempotency key {current_step().idempotency_key}", flush=True)
        context.payment = None


class Ship:
    async def act(self, context: OrderContext) -> None:
        if context.order_id.startswith("atlantis"):
            raise CourierRejected("no courier goes to Atlantis")

    async def compensate(self, context: OrderContext) -> None:
        pass


class OrderSaga(Saga[OrderContext]):
    steps = [Reserve, Charge, Ship]


def sagas(store: SagaStore) -> list[Saga[OrderContext]]:
    """The factory for ``--app shop:sagas``: the shop's sagas, built with ``store``."""
    return [OrderSaga(store=store)]


# After a deploy that renamed Charge to ChargeCard: the same step under another
# name, so sagas started before the deploy have another definition fingerprint.
class ChargeCard(Charge):
    pass


class OrderSagaV2(Saga[OrderContext]):
    name = "OrderSaga"  # journaled under its old name: recovery finds its sagas
    steps = [Reserve, ChargeCard, Ship]


def sagas_v2(store: SagaStore) -> list[Saga[OrderContext]]:
    """The factory for ``--app shop:sagas_v2``."""
    return [OrderSagaV2(store=store)]


def die() -> None:
    """Die like a killed process: no unwinding, no journal write, no cleanup."""
    sys.stdout.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # where there is no SIGKILL


def open_store(db: str, dsn: str | None) -> SQLiteSagaStore | PostgresSagaStore:
    # PostgreSQL needs the [postgres] extra (psycopg 3).
    return SQLiteSagaStore(db) if dsn is None else PostgresSagaStore(dsn)


async def place(order_id: str, db: str, dsn: str | None = None) -> int:
    async with open_store(db, dsn) as store:
        try:
            result = await OrderSaga(store=store).run(OrderContext(order_id), saga_id=order_id)
        except SagaFailed as failed:
            print(f"{failed.status.value}: {failed.error}")
            return 1
        print(result.status.value)
        return 0


async def recover_all(db: str) -> None:
    async with SQLiteSagaStore(db) as store:
        print(await recover(store, sagas(store), older_than=0))


def session() -> None:
    """The walkthrough's first commands, in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "shop.db")
        for order_id, kill in (("order-1", False), ("order-2", True), ("atlantis-3", False)):
            env = {k: v for k, v in os.environ.items() if k != "SHOP_KILL"}
            if kill:
                env["SHOP_KILL"] = "1"
            print(f"$ {'SHOP_KILL=1 ' if kill else ''}python shop.py {order_id}", flush=True)
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), order_id, "--db", db],
                env=env, check=False,
            )
            if child.returncode < 0:
                print("Killed")
        print("$ recover: the sagas a crash left running", flush=True)
        asyncio.run(recover_all(db))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Place an order with the shop's saga.")
    parser.add_argument("order_id", nargs="?", help="the order (and saga) id; none: a demo")
    parser.add_argument("--db", default="shop.db", help="the saga journal (default: shop.db)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("FALLBACK_SAGA_DSN") or None,
        help="journal in PostgreSQL instead (default: $FALLBACK_SAGA_DSN, if set)",
    )
    args = parser.parse_args(argv)
    if args.order_id is None:
        session()
        return 0
    return asyncio.run(place(args.order_id, args.db, args.dsn))


if __name__ == "__main__":
    sys.exit(main())
