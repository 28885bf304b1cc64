"""A saga whose steps return responses of many kinds, for the crash/resume
tests of test_journaled_results.py.

``ResultsSaga`` runs ``Reserve`` (a ``Response`` dataclass with a Decimal and
a tuple), ``Quote`` (a dict of values JSON cannot carry as themselves: int
and tuple keys, a Decimal, an aware datetime...), ``Nothing`` (``None``),
``Connect`` (a lock: no journal can hold it), ``Pay`` (a Fallback whose
primary fails: the backup's response counts) and ``Ship``. In the child
process (``main``: ``results_crash_app STORE-KIND WHERE SAGA-ID``, run as
``python -c "import results_crash_app; ..."`` so that every class keeps its
module name), ``Ship`` kills the process with ``os._exit(137)`` after every
other step completed: no ``finally``, no flush. The parent resumes the saga
from the store and compares ``result.results`` with an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from context_crash_app import rich_value

from fallback_saga import Fallback, Response, Saga, SagaContext, SagaStepHandler

CRASH = False  # set by main(): only the child process dies


class Reserved(Response, frozen=True):
    reservation_id: str
    amount: Decimal
    lines: tuple[str, ...]


@dataclasses.dataclass
class OrderCtx(SagaContext):
    order_id: str = "order"


class Reserve(SagaStepHandler[OrderCtx, Reserved]):
    async def act(self, ctx: OrderCtx, /) -> Any:
        return self._generate_step_result(
            Reserved(f"r-{ctx.order_id}", Decimal("19.90"), ("sku-1", "sku-2"))
        )


class Quote(SagaStepHandler[OrderCtx, Any]):
    async def act(self, ctx: OrderCtx, /) -> Any:
        return rich_value()


class Nothing(SagaStepHandler[OrderCtx, None]):
    async def act(self, ctx: OrderCtx, /) -> None:
        return None


class Connect(SagaStepHandler[OrderCtx, Any]):
    async def act(self, ctx: OrderCtx, /) -> Any:
        return threading.Lock()  # a client object: no journal can hold it


class PayPrimary(SagaStepHandler[OrderCtx, Any]):
    name: ClassVar[str | None] = "PayPrimary"

    async def act(self, ctx: OrderCtx, /) -> Any:
        raise RuntimeError("card declined")


class PayBackup(SagaStepHandler[OrderCtx, Any]):
    async def act(self, ctx: OrderCtx, /) -> Any:
        return {"paid": Decimal("19.90"), "via": ("wallet", 2)}


class Ship(SagaStepHandler[OrderCtx, str]):
    async def act(self, ctx: OrderCtx, /) -> str:
        if CRASH:
            os._exit(137)
        return f"shipped {ctx.order_id}"


class ResultsSaga(Saga[OrderCtx]):
    steps: ClassVar[list[Any]] = [
        Reserve, Quote, Nothing, Connect, Fallback(step=PayPrimary, fallback=PayBackup), Ship
    ]


def open_store(kind: str, where: str) -> Any:
    if kind == "sqlite":
        from fallback_saga import SQLiteSagaStore

        return SQLiteSagaStore(where)
    from fallback_saga.store.postgres import PostgresSagaStore

    return PostgresSagaStore(os.environ["RESULTS_APP_DSN"], schema=where, min_size=1)


def main(argv: Sequence[str]) -> None:
    global CRASH
    CRASH = True
    kind, where, saga_id = argv

    async def run() -> None:
        store = open_store(kind, where)
        await ResultsSaga(store=store).run(OrderCtx(order_id=saga_id), saga_id=saga_id)

    asyncio.run(run())
    raise SystemExit("the saga was meant to crash in Ship")
