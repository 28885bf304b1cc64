"""The SQLite store's submitted journal writes (``journal.submits_writes``).

On SQLite the executor queues each journal write with ``submit_create`` /
``submit_append`` (plain calls) and awaits the future they return, instead of
driving the store's ``create``/``append`` coroutine. That must change nothing
a store's user can see: the same rows, the same faults reported the same way
(the fault matrix runs both paths: ``test_journal_truth.py``), and a store
wrapped or subclassed to count or trace its writes still sees every one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import Saga, SagaContext, SagaInterrupted, SagaStatus, SQLiteSagaStore
from fallback_saga.errors import SagaStoreError
from fallback_saga.journal import submits_writes


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str
    reserved: bool = False
    charged: bool = False


def ledger_saga(ledger: list[str]) -> type[Saga[Ctx]]:
    class Reserve:
        async def act(self, ctx: Ctx) -> str:
            ledger.append("reserve")
            ctx.reserved = True
            return "r-1"

        async def compensate(self, ctx: Ctx) -> None:
            ledger.append("release")

    class Charge:
        async def act(self, ctx: Ctx) -> str:
            ledger.append("charge")
            ctx.charged = True
            return "c-1"

        async def compensate(self, ctx: Ctx) -> None:
            ledger.append("refund")

    class OrderSaga(Saga[Ctx]):
        steps = [Reserve, Charge]

    return OrderSaga


def counting(calls: list[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return method(*args, **kwargs)

    return counted


async def test_S13_on_sqlite_every_journal_write_is_submitted_and_lands(tmp_path: Path) -> None:
    ledger: list[str] = []
    calls: list[str] = []
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        assert submits_writes(store)
        for name in ("submit_create", "submit_append", "create", "append"):
            setattr(store, name, counting(calls, name, getattr(store, name)))
        result = await ledger_saga(ledger)(store=store).run(Ctx(order_id="o"), saga_id="o")
        record = await store.load("o")
    # The write-ahead of each step, then the terminal write; no coroutine path.
    assert calls == ["submit_create", "submit_append", "submit_append"]
    assert ledger == ["reserve", "charge"]
    assert result.saga_id == "o"
    assert record.status is SagaStatus.COMPLETED
    assert record.context == {"order_id": "o", "reserved": True, "charged": True}
    assert [(e.step, e.action, e.status.value) for e in record.history] == [
        ("Reserve", "act", "started"), ("Reserve", "act", "completed"),
        ("Charge", "act", "started"), ("Charge", "act", "completed"),
    ]
    assert [e.result for e in record.history if e.status.value == "completed"] == [
        '"r-1"', '"c-1"'
    ]


async def test_S13_a_submitted_write_refused_at_the_call_is_retried_and_nothing_runs_ahead(
    tmp_path: Path,
) -> None:
    """``submit_append`` raising at the call (nothing queued) is a failed
    first try like any other: the retries take over, and no act runs before
    its write-ahead is durable."""
    ledger: list[str] = []
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        refusals = [SagaStoreError("the disk is full")]
        submit = store.submit_append

        def refusing_once(*args: Any) -> Any:
            if refusals:
                raise refusals.pop()
            return submit(*args)

        store.submit_append = refusing_once  # type: ignore[method-assign]
        await ledger_saga(ledger)(store=store).run(Ctx(order_id="o"), saga_id="o")
        record = await store.load("o")
    assert refusals == []
    assert ledger == ["reserve", "charge"]
    assert record.status is SagaStatus.COMPLETED
    assert len(record.history) == 4


async def test_S13_a_submitted_write_that_keeps_failing_stops_the_run_before_the_next_act(
    tmp_path: Path,
) -> None:
    from fallback_saga import RetryPolicy

    ledger: list[str] = []
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        down = SagaStoreError("the disk is full")

        def refusing(*args: Any) -> Any:
            raise down

        async def refusing_append(*args: Any, **kwargs: Any) -> None:
            raise down

        store.submit_append = refusing  # type: ignore[method-assign]
        store.append = refusing_append  # type: ignore[method-assign]
        saga = ledger_saga(ledger)(
            store=store, journal_retry=RetryPolicy(attempts=2, delay=0, jitter=0)
        )
        with pytest.raises(SagaInterrupted):
            await saga.run(Ctx(order_id="o"), saga_id="o")
        record = await store.load("o")
    # Reserve's write-ahead (the create) landed; its completion and Charge's
    # write-ahead never did, so Charge never ran.
    assert ledger == ["reserve"]
    assert record.status is SagaStatus.RUNNING
    assert [(e.step, e.status.value) for e in record.history] == [("Reserve", "started")]


class CountingSubclass(SQLiteSagaStore):
    """A store subclassed to count its writes (metrics)."""

    writes = 0

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await super().append(*args, **kwargs)


class CountingWrapper:
    """A store wrapped to count its writes, delegating the rest."""

    def __init__(self, inner: SQLiteSagaStore) -> None:
        self.inner = inner
        self.writes = 0

    async def create(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.create(*args, **kwargs)

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        await self.inner.append(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_store_subclassed_or_wrapped_to_count_writes_sees_every_write(
    tmp_path: Path,
) -> None:
    ledger: list[str] = []
    async with CountingSubclass(tmp_path / "sub.db") as subclassed:
        assert not submits_writes(subclassed)
        await ledger_saga(ledger)(store=subclassed).run(Ctx(order_id="o"), saga_id="o")
        assert subclassed.writes == 2  # the create is not counted: not overridden
        assert (await subclassed.load("o")).status is SagaStatus.COMPLETED
    async with SQLiteSagaStore(tmp_path / "wrapped.db") as inner:
        wrapper = CountingWrapper(inner)
        assert not submits_writes(wrapper)
        await ledger_saga(ledger)(store=wrapper).run(  # type: ignore[arg-type]
            Ctx(order_id="o"), saga_id="o"
        )
        assert wrapper.writes == 3
        assert (await inner.load("o")).status is SagaStatus.COMPLETED
