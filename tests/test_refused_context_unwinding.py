"""S10 and S13 for a run whose last step leaves a context the durable store
cannot hold: the run unwinds after its steps have ended, and each
``compensate`` still knows its step (``current_step()``, its idempotency
key) as it would in any other unwinding."""

from __future__ import annotations

from pathlib import Path

import pytest
from journal_faults import FAST_JOURNAL_RETRY, Ctx, Ledger, check_ledger, journal_of

from fallback_saga import Saga, SagaFailed, SagaStatus, SQLiteSagaStore, recover


async def test_S10_compensations_after_the_last_step_left_an_unstorable_context_know_their_step(
    tmp_path: Path,
) -> None:
    """The last step leaves a context the store refuses (here a value that is
    not JSON; in test_oversized_values, one too large): the run unwinds
    after its steps have ended, and each compensation still gets its step
    and idempotency key
    from ``current_step()`` — it used to get ``LookupError``, so every
    compensation failed and the saga ended FAILED with its effects in place."""
    ledger = Ledger()

    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            ledger.call("act", "ok")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.call("compensate", "ok")

    class Charge(Reserve):
        async def act(self, ctx: Ctx) -> None:
            ledger.call("act", "ok")
            ctx.marks.append(object())  # type: ignore[arg-type]

    class Order(Saga[Ctx]):
        steps = [Reserve, Charge]

    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        saga = Order(store=store, journal_retry=FAST_JOURNAL_RETRY)
        with pytest.raises(SagaFailed) as raised:
            await saga.run(Ctx(order_id="o-5"), saga_id="o-5")
        record = await journal_of(store, "o-5")
        report = await recover(store, [saga], older_than=0)
    assert report.total == 0
    assert record is not None
    assert raised.value.status is record.status
    assert raised.value.compensation_errors == {}
    assert record.status is SagaStatus.COMPENSATED
    check_ledger(ledger.of("o-5"), record, {})
    assert [(c.step, c.action, c.applied) for c in ledger.of("o-5")] == [
        ("Reserve", "act", True), ("Charge", "act", True),
        ("Charge", "compensate", True), ("Reserve", "compensate", True),
    ]
