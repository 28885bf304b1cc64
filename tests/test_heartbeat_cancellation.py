"""S10: a resumed saga's lease heartbeat stops when its run ends, even when the
store's driver swallows the cancellation that stops it.

Found by the chaos soak (``chaos_soak.py``, PostgreSQL, seed 209): a worker
process told to stop never did. Its run had ended; ``LeasedRun`` cancelled
the heartbeat and waited for it — but the cancellation landed inside a lease
renewal, and the driver turned it into an error of its own (a connection
given up half-way), or retried and answered (psycopg_pool retries a
connection check a cancellation cut off). The heartbeat took that for a
failed renewal, "will retry", and went on renewing the lease every
``lease / 3`` for as long as the process lived: the run's end, the worker's
stop and the loop's end all waited on it for ever, and a saga the run had
left unfinished (interrupted, handed off) stayed leased to a process that
did nothing with it — no other worker could resume it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    JournalEntry,
    Lease,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
    recover,
)


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = ""


class RenewalSwallowsCancellation(SQLiteSagaStore):
    """The first renewal waits until it is cancelled, and then — as a driver
    may — raises an error of its own (``how="error"``) or answers as if
    nothing had happened (``how="answer"``). Later renewals are plain."""

    def __init__(self, path: Path, how: str) -> None:
        super().__init__(path)
        self.how = how
        self.renewing = asyncio.Event()
        self.renewals = 0

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        self.renewals += 1
        if self.renewals > 1:
            return await super().renew(lease, lease_seconds)
        self.renewing.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if self.how == "error":
                raise SagaStoreError("the connection was lost") from None
        return await super().renew(lease, lease_seconds)


class Ship(SagaStepHandler[Ctx, str]):
    def __init__(self, store: RenewalSwallowsCancellation) -> None:
        self.store = store

    async def act(self, ctx: Ctx, /) -> Any:
        await self.store.renewing.wait()  # ends while the heartbeat is in a renewal
        return "shipped"

    async def compensate(self, ctx: Ctx, /) -> None:
        pass


class ShipSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Ship]


@pytest.mark.parametrize("how", ["error", "answer"])
async def test_S10_a_heartbeat_cancelled_in_a_renewal_whose_driver_swallows_it_stops(
    tmp_path: Path, how: str
) -> None:
    store = RenewalSwallowsCancellation(tmp_path / "h.db", how)
    await store.open()
    try:
        await store.create("o-1", ShipSaga.name, ShipSaga.definition.fingerprint,
                           {"order_id": "o-1"},
                           [JournalEntry(0, "Ship", "primary", "act", StepStatus.STARTED,
                                         1, None, 1.0)])
        saga = ShipSaga(store=store, step_factory=lambda cls: cls(store))
        # lease=0.3: the heartbeat renews every 0.1 s, while Ship waits for it.
        async with asyncio.timeout(10):  # a bound, not a wait: it fails the test
            report = await recover(store, [saga], older_than=0, lease=0.3)
        # recover returned: the run's end waited for its heartbeat, which stopped.
        assert report.resumed == ["o-1"], report
        assert (await store.load("o-1")).status is SagaStatus.COMPLETED
        assert store.renewals == 1
    finally:
        await store.close()
