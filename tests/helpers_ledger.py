"""A saga whose steps record what ran in a ledger: for the tests of the SQLite
store's writers (``writer="process"``, ``writer="inline"``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fallback_saga import Saga, SagaContext, SQLiteSagaStore


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str
    done: int = 0


def ledger_saga(ledger: list[tuple[str, str]], steps: int = 3, **hooks: Any) -> type[Saga[Ctx]]:
    """``steps`` steps ``S0``, ``S1``...; each act appends (saga id, step) to
    ``ledger`` when it has run (a step resumed after a fault may run again:
    compare as sets), after awaiting ``hooks[step]`` if there is one."""
    from fallback_saga import current_step

    def step(name: str) -> type:
        class Step:
            async def act(self, ctx: Ctx) -> str:
                cursor = current_step()
                assert cursor is not None
                hook = hooks.get(name)
                if hook is not None:
                    await hook(ctx)
                ledger.append((cursor.saga_id, name))
                ctx.done += 1
                return name

            async def compensate(self, ctx: Ctx) -> None:
                ledger.append((current_step().saga_id, f"undo-{name}"))  # type: ignore[union-attr]

        Step.__name__ = Step.__qualname__ = name
        return Step

    made = [step(f"S{i}") for i in range(steps)]

    class LedgerSaga(Saga[Ctx]):
        steps = made

    return LedgerSaga


async def journals_of_sagas(
    store: SQLiteSagaStore, ledger: list[tuple[str, str]], count: int
) -> list[tuple[Any, ...]]:
    """Run ``count`` ledger sagas at once (ids ``s-0``...), check that each
    step ran once, and return each saga's status, context and history."""
    saga = ledger_saga(ledger)(store=store)
    await asyncio.gather(*(
        saga.run(Ctx(order_id=str(i)), saga_id=f"s-{i}") for i in range(count)
    ))
    records = [await store.load(f"s-{i}") for i in range(count)]
    assert sorted(ledger) == sorted((f"s-{i}", f"S{k}") for i in range(count) for k in range(3))
    return [
        (r.status, r.context, [(e.step, e.action, e.status, e.result) for e in r.history])
        for r in records
    ]
