"""The seed document's basic example runs on fallback_saga with only its
import lines rewritten: the primary fails (it was never given an
``_inventory_service``) and the fallback's result is used."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from fallback_saga import SagaStatus, StepStatus

# The project's shared seed document when it is beside the checkout (as on CI),
# else the copy kept with the tests — so this test always runs.
SHARED_SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "saga-fallback-pattern.md"
SEED = SHARED_SEED if SHARED_SEED.is_file() else Path(__file__).parent / "data" / SHARED_SEED.name
CQRS_IMPORT = re.compile(r"^from cqrs(?:\.\w+)* import (?P<names>.+)$")


def basic_example_source() -> tuple[str, int]:
    """The first python block under "## Basic Example", with each ``from cqrs...``
    import rewritten to ``from fallback_saga import ...``; and how many were."""
    markdown = SEED.read_text(encoding="utf-8")
    section = markdown[markdown.index("## Basic Example") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    lines = block.group(1).splitlines()
    rewritten = 0
    for index, line in enumerate(lines):
        match = CQRS_IMPORT.match(line)
        if match:
            lines[index] = f"from fallback_saga import {match['names']}"
            rewritten += 1
    return "\n".join(lines) + "\n", rewritten


@pytest.fixture
def seed_module() -> Iterator[types.ModuleType]:
    source, rewritten = basic_example_source()
    assert rewritten == 5  # Fallback, Saga, step types, SagaContext, Response
    assert "cqrs" not in source
    module = types.ModuleType("seed_basic_example")
    sys.modules[module.__name__] = module  # dataclasses and type hints look it up
    try:
        exec(compile(source, str(SEED), "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


async def test_seed_basic_example_falls_back_and_uses_the_fallback_result(
    seed_module: types.ModuleType,
) -> None:
    m = seed_module
    saga = m.OrderSaga()

    result = await saga.run(m.OrderContext(order_id="42"), saga_id="seed-1")

    assert result.status is SagaStatus.COMPLETED
    assert result.context.reservation_id == "fallback_reservation_42"
    [step_result] = result.results
    assert step_result.step_name == "FallbackStep"
    assert step_result.saga_id == "seed-1"
    assert step_result.response == m.ReserveInventoryResponse(
        reservation_id="fallback_reservation_42"
    )

    record = await saga.store.load("seed-1")
    assert [(e.step, e.status) for e in record.history] == [
        ("PrimaryStep", StepStatus.STARTED),
        ("PrimaryStep", StepStatus.FAILED),
        ("FallbackStep", StepStatus.STARTED),
        ("FallbackStep", StepStatus.COMPLETED),
    ]
    primary_error = record.history[1].error
    assert primary_error is not None
    assert "AttributeError" in primary_error
    assert "_inventory_service" in primary_error
    assert record.context["reservation_id"] == "fallback_reservation_42"


def test_seed_context_round_trips(seed_module: types.ModuleType) -> None:
    ctx = seed_module.OrderContext(order_id="42", reservation_id="r")
    assert seed_module.OrderContext.from_dict(ctx.to_dict()) == ctx
