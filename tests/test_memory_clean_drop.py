"""A ``MemorySagaStore`` dropped without a close (it has none) is freed at
once, by reference counting: nothing it holds refers back to it.

Its concepts live in modules of their own (``_memory_records``,
``_memory_takeover``, and the base classes ``Families``, ``OperatorReads``
and ``Purging``); a part held by the store that kept the store (or one of
its bound methods) would make a reference cycle, and every store an app
makes and drops — one per test, per tenant, per request in a sync app —
would stay, with every saga it holds, until the garbage collector happens
to run. Counted with the collector off, never timed.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fallback_saga import (
    MemorySagaStore,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStatus,
    SagaStepHandler,
)


@dataclasses.dataclass
class FlatCtx(SagaContext):  # retire_run's fast path: frozen from its __dict__
    order_id: str = "o"


@dataclasses.dataclass
class NestedCtx(SagaContext):  # finished: frozen by _freeze
    items: list[str] = dataclasses.field(default_factory=list)


class Charge(SagaStepHandler[FlatCtx, None]):
    async def act(self, context: FlatCtx, /) -> None:
        pass

    async def compensate(self, context: FlatCtx, /) -> None:
        pass


class Collect(SagaStepHandler[NestedCtx, None]):
    async def act(self, context: NestedCtx, /) -> None:
        context.items.append("x")


class Declines(SagaStepHandler[FlatCtx, None]):
    async def act(self, context: FlatCtx, /) -> None:
        raise RuntimeError("declined")


class Flat(Saga[FlatCtx]):
    steps = [Charge]


class Nested(Saga[NestedCtx]):
    steps = [Collect]


class Unwinds(Saga[FlatCtx]):
    steps = [Charge, Declines]


async def runs(store: MemorySagaStore) -> None:
    await Flat(store=store).run(FlatCtx(), saga_id="flat")
    await Nested(store=store).run(NestedCtx(), saga_id="nested")
    with pytest.raises(SagaFailed):
        await Unwinds(store=store).run(FlatCtx(), saga_id="unwound")


async def contract_writes(store: MemorySagaStore) -> None:
    await store.create("w-1", "Written", "fp", {"n": 1}, [])
    await store.append("w-1", [], context={"n": 2}, status=SagaStatus.COMPLETED, after=0)
    await Flat(store=store).run(FlatCtx(), saga_id="taken")
    if "taken" in store:  # retained: written ahead, it is taken over (_written_ahead)
        await store.append("taken", [], after=len((await store.load("taken")).history))
    await store.create("w-2", "Written", "fp", {"n": 1}, [])  # running: never dropped
    await store.append("w-2", [], context={"n": 2}, after=0)
    assert (await store.load("w-2")).context == {"n": 2}


async def operator_reads_and_purge(store: MemorySagaStore) -> None:
    await store.create("c", "Parent", "fp", {}, [])  # running: never dropped
    await Flat(store=store).run(FlatCtx(), saga_id="c/old")  # kept for "c" (Families)
    await store.append("c", [], status=SagaStatus.COMPLETED)  # "c/old" let go with it
    held = sorted(await store.existing_saga_ids(["c", "c/old", "nope"]))
    assert len(store) == len(held)
    assert [s.saga_id for s in await store.list_sagas(limit=10)] == held[::-1]
    assert sum((await store.count_sagas()).values()) == len(held)
    assert len(await store.saga_names()) == len(held)
    assert await store.purge(older_than=-1) == len(held)  # parent, then child


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The garbage collector off (what exists before the test frozen out of
    its way): only reference counting frees what the test drops."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.parametrize(
    "use", [runs, contract_writes, operator_reads_and_purge], ids=lambda use: use.__name__
)
@pytest.mark.parametrize("max_finished", [0, 1, 10_000])
async def test_S10_a_memory_store_dropped_unclosed_is_freed_at_once(
    use: Callable[[MemorySagaStore], Awaitable[None]], max_finished: int, no_collector: None
) -> None:
    store = MemorySagaStore(max_finished=max_finished)
    await use(store)
    gone = weakref.ref(store)
    del store
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
