"""A closed store is refused at once, not retried as a passing fault.

After ``await store.close()`` every saga run against the store used to
spend its whole ``journal_retry`` budget (about 1.7 s by default) on the
creation before ``SagaInterrupted``: the store's "is closed" was an error
like any other. A closed store does not come back (open a new one): its
refusal is ``StoreClosed``, definitive as ``SagaNotFound`` is (S13), so the
run stops at its first write, not in doubt. Counted, not timed: the journal
retry's ``retry_on`` is asked about every failed try it would retry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import (
    RetryPolicy,
    Saga,
    SagaContext,
    SagaInterrupted,
    SQLiteSagaStore,
    StoreClosed,
)
from fallback_saga.errors import SagaStoreError


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


def counted_saga(store: Any, asked: list[BaseException], ran: list[str]) -> Saga[Ctx]:
    class A:
        async def act(self, ctx: Ctx) -> None:
            ran.append("A")

        async def compensate(self, ctx: Ctx) -> None:
            ran.append("undo-A")

    class Closing(Saga[Ctx]):
        steps = [A]

    def retried(error: BaseException) -> bool:
        asked.append(error)
        return True

    retry = RetryPolicy(attempts=6, delay=0, jitter=0, retry_on=retried)
    return Closing(store=store, journal_retry=retry)


async def closed_store_is_refused_at_once(store: Any) -> None:
    asked: list[BaseException] = []
    ran: list[str] = []
    saga = counted_saga(store, asked, ran)
    await saga.run(Ctx(), saga_id="before")
    assert ran == ["A"]
    assert asked == []
    await store.close()
    for n in range(2):
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(), saga_id=f"after-{n}")
        assert isinstance(stopped.value.error, StoreClosed), stopped.value.error
        assert isinstance(stopped.value.error, SagaStoreError)  # caught as before
        assert not stopped.value.in_doubt
        assert asked == [], asked  # not one retry
    assert ran == ["A"]  # no step ran without its creation journaled
    with pytest.raises(StoreClosed):
        await store.load("before")


@pytest.mark.parametrize("writer", ["inline", "thread", "process"])
async def test_S13_a_closed_sqlite_store_is_refused_at_once_not_retried(
    tmp_path: Path, writer: str
) -> None:
    await closed_store_is_refused_at_once(SQLiteSagaStore(tmp_path / "s.db", writer=writer))
