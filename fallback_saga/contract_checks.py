"""The checks the store contract (``fallback_saga.testing``) is made of:
``entry``, the ``_expect*`` assertions that say what each side was, and the
sagas the tests start from. Standard library only, no pytest: the contract
runs in any store author's test suite."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .status import SagaStatus, StepStatus
from .store.base import Action, Branch, JournalEntry, Lease, SagaStore

__all__ = ["NESTED_CONTEXT", "entry"]

# The most characters of a value's repr a failed check shows.
_MOST_SHOWN = 2000
_ALREADY_PAST = -1.0  # seconds: "older than -1 s" is every saga; a lease of -1 s has expired


def entry(
    position: int,
    step: str,
    status: StepStatus = StepStatus.STARTED,
    *,
    branch: Branch = "primary",
    action: Action = "act",
    attempt: int = 1,
    error: str | None = None,
    at: float = 1_700_000_000.5,
) -> JournalEntry:
    """A ``JournalEntry`` with defaults, for tests."""
    return JournalEntry(position, step, branch, action, status, attempt, error, at)


def _expect(condition: object, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds.

    Not an ``assert``: under ``python -O`` (or ``PYTHONOPTIMIZE``) asserts
    are compiled away, and every check of the suite would pass whatever the
    store did."""
    if not condition:
        raise AssertionError(message)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MOST_SHOWN else f"{text[:_MOST_SHOWN]}… ({len(text)} characters)"


def _expect_equal(actual: object, expected: object, what: str) -> None:
    """``_expect(actual == expected)``, saying what each side was."""
    if not actual == expected:
        raise AssertionError(f"{what}: got {_shown(actual)}, expected {_shown(expected)}")


def _expect_is(actual: object, expected: object, what: str) -> None:
    """``_expect(actual is expected)``, saying what each side was."""
    if actual is not expected:
        raise AssertionError(f"{what}: got {_shown(actual)}, expected {_shown(expected)}")


_Raised = TypeVar("_Raised", bound=BaseException)


async def _raises(kind: type[_Raised], call: Callable[[], Any]) -> _Raised:
    """Await ``call()`` and return the ``kind`` error it raised (the suite does
    not import pytest)."""
    try:
        await call()
    except kind as error:
        return error
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def _first_run(saga_id: str) -> Lease:
    """The token a first run writes with (see ``Lease``)."""
    return Lease(saga_id=saga_id, owner="", token=0, expires_at=math.inf)


async def _new_saga(
    store: SagaStore,
    saga_id: str,
    *,
    saga_name: str = "OrderSaga",
    status: SagaStatus = SagaStatus.RUNNING,
    context: dict[str, Any] | None = None,
    entries: Sequence[JournalEntry] = (),
) -> None:
    await store.create(
        saga_id,
        saga_name,
        "fp-1",
        {"order_id": saga_id} if context is None else context,
        list(entries) or [entry(0, "reserve")],
        status=status,
    )


# A context with every shape the journal form of a context can take.
NESTED_CONTEXT: dict[str, Any] = {
    "order_id": "o-42",
    "amount": 1999,
    "big": 2**63 + 7,
    "rate": 0.1,
    "negative": -3.5e-7,
    "paid": False,
    "coupon": None,
    "text": "ünïcødé ✓ \u2028 \"quoted\" \\ back",
    "empty_list": [],
    "empty_dict": {},
    "items": [
        {"sku": "apple", "qty": 2, "tags": ["red", "fruit"]},
        {"sku": "pear", "qty": 1, "tags": []},
    ],
    "address": {"street": "Main St", "lines": ["1", "2"], "geo": {"lat": 1.5, "lon": -2.25}},
    "matrix": [[1, 2], [3, [4, [5, {"deep": True}]]]],
}
