"""A new developer's mistakes get an error that names the culprit and says
what to do — at class creation (S11) or when the saga is built or started,
before any ``act`` runs (S12) — instead of being silently ignored or turned
into a wrong behaviour. No message holds a context value."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from fallback_saga import (
    CircuitBreaker,
    RetryPolicy,
    SagaContext,
    SagaStepHandler,
    SagaStepResult,
)

SECRET = "tok-hunter2"


@dataclasses.dataclass
class SecretCtx(SagaContext):
    token: str = SECRET
    done: list[str] = dataclasses.field(default_factory=list)


class Records(SagaStepHandler[SecretCtx, str]):
    async def act(self, context: SecretCtx) -> SagaStepResult[SecretCtx, str]:
        context.done.append("records")
        return self._generate_step_result("ok")


# --------------------------------------------------------------------------- S6: retry_on


class BusinessError(Exception):
    pass


def test_S6_retry_on_a_single_exception_type_retries_only_that_type() -> None:
    """``retry_on=ConnectionError`` (no tuple) is a type, and a type is callable:
    taken for a predicate, ``ConnectionError(error)`` is truthy and every error
    was retried — a business error too."""
    policy = RetryPolicy(retry_on=ConnectionError)
    assert policy.retry_on == (ConnectionError,)
    assert policy.should_retry(ConnectionError("reset"), 1)
    assert not policy.should_retry(BusinessError("card declined"), 1)


def test_S6_retry_on_a_list_of_types_is_taken_as_a_tuple() -> None:
    policy = RetryPolicy(retry_on=[ConnectionError, TimeoutError])  # type: ignore[arg-type]
    assert policy.retry_on == (ConnectionError, TimeoutError)
    assert not policy.should_retry(BusinessError(), 1)


@pytest.mark.parametrize("field", ["delay", "backoff", "max_delay", "jitter"])
def test_S6_a_bool_is_not_a_number_of_seconds(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: True})  # type: ignore[arg-type]


def test_S6_an_infinite_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=float("inf"))


def test_S6_a_sleep_that_is_not_callable_is_refused_when_the_policy_is_made() -> None:
    """Not when the first compensation is retried, in the middle of an unwinding."""
    with pytest.raises(TypeError, match="sleep"):
        RetryPolicy(sleep=0.1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- S9: exclude


def test_S9_exclude_takes_a_single_exception_type() -> None:
    breaker = CircuitBreaker(exclude=BusinessError, fail_max=1)  # type: ignore[arg-type]

    async def declines() -> None:
        raise BusinessError("card declined")

    async def main() -> None:
        with pytest.raises(BusinessError):
            await breaker.call(declines)

    asyncio.run(main())
    assert breaker.failure_count == 0


def test_S9_exclude_that_is_a_string_is_named_whole() -> None:
    with pytest.raises(TypeError, match="'ValueError'"):
        CircuitBreaker(exclude="ValueError")  # type: ignore[arg-type]
