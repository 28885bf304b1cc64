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


class _SagaListener:
    def saga_finished(self, *args: object) -> None:
        pass


def _fields(failed: SagaFailed) -> dict[str, object]:
    return {
        "saga_id": failed.saga_id,
        "saga_name": failed.saga_name,
        "status": failed.status,
        "failed_step": failed.failed_step,
        "error": failed.error,
        "compensation_errors": failed.compensation_errors,
        "branch_errors": failed.branch_errors,
    }


@pytest.mark.parametrize("listened", [False, True], ids=["lean-path", "general-path"])
@pytest.mark.parametrize("undo_fails", [False, True], ids=["compensated", "failed"])
async def test_S7_the_saga_failed_a_run_raises_is_the_one_its_init_makes(
    listened: bool, undo_fails: bool
) -> None:
    # A run builds its SagaFailed without the keyword call (errors.saga_failed):
    # what a caller gets must be what SagaFailed(...) makes from the same fields.
    from fallback_saga.errors import saga_failed

    trace: Trace = []
    reserve = Probe("reserve", trace, comp_error=(lambda: ValueError("stuck")) if undo_fails
                    else None)
    saga_class = declare(reserve, Probe("ship", trace, error=lambda: Boom("no van")))
    saga = saga_class(listeners=[_SagaListener()]) if listened else saga_class()
    assert saga._runs_plain is not listened  # each path is the one meant
    with pytest.raises(SagaFailed) as raised:
        await saga.run(OrderCtx())
    failed = raised.value
    built = SagaFailed(**_fields(failed))  # type: ignore[arg-type]
    assert list(vars(failed).items()) == list(vars(built).items())
    assert failed.status is (SagaStatus.FAILED if undo_fails else SagaStatus.COMPENSATED)
    assert (failed.args, str(failed), repr(failed)) == (built.args, str(built), repr(built))
    assert BaseException.args.__get__(failed) == ()  # type: ignore[attr-defined]
    again = pickle.loads(pickle.dumps(failed))
    assert (again.saga_id, str(again)) == (failed.saga_id, str(failed))
    # And saga_failed itself, for any fields (a mapping of any kind is copied).
    errors = {"reserve": ValueError("gone")}
    for compensation_errors, branch_errors in (({}, None), (errors, errors), (None, {})):
        fields = dict(_fields(failed), compensation_errors=compensation_errors,
                      branch_errors=branch_errors)
        made = saga_failed(**fields)  # type: ignore[arg-type]
        expected = SagaFailed(**fields)  # type: ignore[arg-type]
        assert list(vars(made).items()) == list(vars(expected).items())
        assert made.compensation_errors is not compensation_errors
        assert (made.args, str(made), repr(made)) == (expected.args, str(expected),
                                                      repr(expected))


@pytest.mark.parametrize("listened", [False, True], ids=["lean-path", "general-path"])
async def test_S7_saga_failed_is_raised_from_the_run_itself_with_the_error_as_cause(
    listened: bool,
) -> None:
    # The run raises the SagaFailed that unwinding handed back (one frame fewer
    # than raising it in the unwinding's caller, on every failed saga): it is
    # still raised where the step's error is handled — its cause and its
    # context — and its traceback starts in the run.
    trace: Trace = []
    saga_class = declare(Probe("reserve", trace), Probe("ship", trace, error=lambda: Boom("x")))
    saga = saga_class(listeners=[_SagaListener()]) if listened else saga_class()
    with pytest.raises(SagaFailed) as raised:
        await saga.run(OrderCtx())
    failed = raised.value
    assert isinstance(failed.error, Boom)
    assert failed.__cause__ is failed.error
    assert failed.__context__ is failed.error
    assert failed.__suppress_context__ is True
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(failed.__traceback__)]
    assert frames[-2:] == ["run", "run_all" if listened else "run_plain"], frames
    assert "fail" not in frames, frames
    assert "unwound" not in frames, frames
    shown = "".join(traceback.format_exception(failed))
    assert "Boom: x" in shown
    assert "The above exception was the direct cause" in shown
