"""No secret of a context in a repr by default: the public objects that hold
a context or a step response (``SagaResult``, ``SagaStepResult``,
``SagaRecord``, ``JournalEntry``) show what they are, not the values --
a ``log.info("done: %r", result)`` must not write a card number to the logs
(S12: never put context values in messages or logs). The values stay one
attribute away."""

from __future__ import annotations

from dataclasses import dataclass

from fallback_saga import (
    JournalEntry,
    MemorySagaStore,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SagaStepResult,
    StepStatus,
)

CARD = "4111111111111111"
TOKEN = "tok_live_5ecret"


@dataclass
class Payment(SagaContext):
    card: str = CARD


class Charge(SagaStepHandler[Payment, str]):
    async def act(self, context: Payment) -> str:
        return TOKEN


class PaymentSaga(Saga[Payment]):
    steps = [Charge]


async def test_S12_a_saga_result_and_its_step_results_repr_no_values() -> None:
    result = await PaymentSaga().run(Payment(), saga_id="pay-1")
    shown = repr(result)
    assert CARD not in shown
    assert TOKEN not in shown
    assert "pay-1" in shown
    assert "Payment" in shown  # what it holds, not the values
    assert "completed" in shown
    assert TOKEN not in repr(result.results[0])
    assert "Charge" in repr(result.results[0])
    assert result.context.card == CARD  # one attribute away
    assert result.results[0].response == TOKEN


async def test_S12_a_saga_record_and_its_journal_entries_repr_no_values() -> None:
    store = MemorySagaStore()
    await PaymentSaga(store=store).run(Payment(), saga_id="pay-1")
    record = await store.load("pay-1")
    shown = repr(record)
    assert CARD not in shown
    assert TOKEN not in shown
    assert "pay-1" in shown
    assert "PaymentSaga" in shown
    assert all(TOKEN not in repr(entry) for entry in record.history)
    assert any("Charge" in repr(entry) for entry in record.history)
    assert record.context["card"] == CARD


def test_S12_hand_made_records_repr_no_values() -> None:
    step_result = SagaStepResult(response={"card": CARD}, step_name="Charge", saga_id="s")
    entry = JournalEntry(0, "Charge", "primary", "act", StepStatus.COMPLETED, 1, None, 0.0,
                         f'"{TOKEN}"')
    assert CARD not in repr(step_result)
    assert TOKEN not in repr(entry)
    assert TOKEN not in str(entry)
    assert "COMPLETED" in repr(entry) or "completed" in repr(entry)
    assert SagaStatus.COMPLETED.value in repr(entry)
