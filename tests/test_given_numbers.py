"""Rule S12 (bad input gets a clear error) for the numbers of seconds the
library is given: one check (``given_numbers``) behind a worker's, a
recovery's, a ``SubSaga``'s, a ``CircuitBreaker``'s and a ``RetryPolicy``'s."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from fallback_saga.given_numbers import finite_number, number_given, seconds_given

NOT_FINITE_NUMBERS = [
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(10**400, id="beyond-a-float"),
    pytest.param(-(10**400), id="below-a-float"),
    pytest.param(True, id="bool"),
    pytest.param("1", id="str"),
    pytest.param(None, id="None"),
]


@pytest.mark.parametrize("value", NOT_FINITE_NUMBERS)
def test_S12_what_is_no_finite_number_is_told_apart_without_an_overflow(value: object) -> None:
    """``math.isfinite(10**400)`` raises an OverflowError naming nothing."""
    assert finite_number(value) is None


@pytest.mark.parametrize(("value", "number"), [(0, 0.0), (3, 3.0), (-2.5, -2.5), (1e308, 1e308)])
def test_S12_a_finite_number_is_given_back_as_a_float(value: object, number: float) -> None:
    assert finite_number(value) == number
    assert type(finite_number(value)) is float


@pytest.mark.parametrize("value", NOT_FINITE_NUMBERS)
def test_S12_seconds_that_are_no_finite_number_are_a_value_error_naming_the_argument(
    value: object,
) -> None:
    with pytest.raises(ValueError, match=r"^poll must be a finite number of seconds > 0, got "):
        seconds_given("poll", value, positive=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("positive", "value", "message"),
    [
        (True, 0, "poll must be a finite number of seconds > 0, got 0"),
        (True, -1, "poll must be a finite number of seconds > 0, got -1"),
        (False, -0.5, "poll must be a finite number of seconds >= 0, got -0.5"),
        (True, timedelta(0), "poll must be a finite number of seconds > 0, got 0.0"),
    ],
)
def test_S12_seconds_below_the_least_are_refused_saying_what_was_given(
    positive: bool, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        seconds_given("poll", value, positive=positive)  # type: ignore[arg-type]
    assert str(refused.value) == message


def test_S12_zero_seconds_pass_where_zero_is_allowed_and_a_timedelta_is_seconds() -> None:
    assert seconds_given("older_than", 0, positive=False) == 0.0
    assert seconds_given("lease", timedelta(minutes=1), positive=True) == 60.0


def test_S12_a_number_that_is_no_seconds_is_worded_without_a_unit() -> None:
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        number_given("backoff", 0.5, least=1)
    assert str(refused.value) == "backoff must be a finite number >= 1, got 0.5"
    assert number_given("backoff", 1, least=1) == 1.0


def test_S12_the_owner_named_comes_first() -> None:
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        seconds_given("lease_seconds", math.nan, positive=True, owner="SubSaga")
    assert str(refused.value) == (
        "SubSaga lease_seconds must be a finite number of seconds > 0, got nan"
    )
