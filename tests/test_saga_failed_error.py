"""``SagaFailed`` as a caller sees it: its message, ``args``, ``repr``, a
printed traceback and a pickle round trip.

The message is built only when something reads it (a failed saga raises one
on its hot path, and most callers read its fields, never its text), so these
pin down that every way of reading it gives the same text it always did.
"""

from __future__ import annotations

import pickle
import traceback

import pytest
from helpers_saga import Boom, OrderCtx, Probe, Trace, declare

from fallback_saga import SagaFailed, SagaStatus


def _failed(**overrides: object) -> SagaFailed:
    fields: dict[str, object] = {
        "saga_id": "order-42",
        "saga_name": "Checkout",
        "status": SagaStatus.FAILED,
        "failed_step": "ship",
        "error": RuntimeError("carrier down"),
        "compensation_errors": {"reserve": ValueError("stock service gone")},
    }
    fields.update(overrides)
    return SagaFailed(**fields)  # type: ignore[arg-type]


EXPECTED = (
    "saga Checkout ('order-42') failed at step 'ship': RuntimeError: carrier down; "
    "status failed; compensation failed for reserve"
)


def test_saga_failed_message_names_the_saga_the_step_the_error_and_the_status() -> None:
    error = _failed()
    assert str(error) == EXPECTED
    assert error.args == (EXPECTED,)
    assert repr(error) == f"SagaFailed({EXPECTED!r})"


def test_saga_failed_message_without_compensation_errors() -> None:
    error = _failed(status=SagaStatus.COMPENSATED, compensation_errors=None)
    assert str(error) == (
        "saga Checkout ('order-42') failed at step 'ship': RuntimeError: carrier down; "
        "status compensated"
    )
    assert error.compensation_errors == {}
    assert error.branch_errors == {}


def test_saga_failed_message_is_in_a_printed_traceback() -> None:
    try:
        raise _failed()
    except SagaFailed as error:
        printed = "".join(traceback.format_exception(error))
    assert printed.rstrip().endswith(f"SagaFailed: {EXPECTED}")


def test_saga_failed_pickles_with_its_fields_and_message() -> None:
    copy = pickle.loads(pickle.dumps(_failed()))
    assert isinstance(copy, SagaFailed)
    assert (copy.saga_id, copy.saga_name, copy.status, copy.failed_step) == (
        "order-42", "Checkout", SagaStatus.FAILED, "ship"
    )
    assert str(copy) == EXPECTED
    assert copy.args == (EXPECTED,)


def test_saga_failed_args_can_be_replaced_as_on_any_exception() -> None:
    error = _failed()
    error.args = ("rewritten",)
    assert error.args == ("rewritten",)
    assert str(error) == "rewritten"


async def test_a_failed_saga_raises_saga_failed_whose_message_reads_its_fields() -> None:
    trace: Trace = []
    saga = declare(Probe("reserve", trace), Probe("ship", trace, error=lambda: Boom("no van")))()
    with pytest.raises(SagaFailed) as raised:
        await saga.run(OrderCtx())
    failed = raised.value
    assert failed.failed_step == "ship"
    assert failed.__cause__ is failed.error
    assert str(failed) == (
        f"saga TestSaga ({failed.saga_id!r}) failed at step 'ship': Boom: no van; "
        "status compensated"
    )
    assert failed.args == (str(failed),)
