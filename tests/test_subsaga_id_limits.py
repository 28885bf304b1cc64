"""S11/S12: a child saga's id (``"<parent id>/<step>"``, and so on down the
family) must fit the 255 characters every store keys a saga by.

What the definitions alone decide — the step names a family of nested
``SubSaga``\\ s appends to its top saga's id — is refused when the saga class
is created (S11), naming the step path and the limit. What the saga id adds
(given to ``run``/``transaction``, or made) is refused before the first step
runs (S12), never mid-run with the completed steps compensated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    Saga,
    SagaContext,
    SagaDefinitionError,
    SagaStepHandler,
    SubSaga,
)

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Counted(SagaStepHandler[Ctx, None]):
    async def act(self, ctx: Ctx, /) -> None:
        RAN.append(type(self).__name__)

    async def compensate(self, ctx: Ctx, /) -> None:
        RAN.append(f"undo {type(self).__name__}")


class Reserve(Counted):
    pass


class Charge(Counted):
    pass


class Leaf(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Charge]


MIDDLE = "m" * 150  # step names may be 200 characters long; two levels of 150 cannot fit
LOWER = "l" * 150


def child(saga: Any, name: str) -> SubSaga[Ctx, Ctx]:
    return SubSaga[Ctx, Ctx](saga, context=lambda ctx: Ctx(), name=name)


def middle_with(lower: Any) -> type[Saga[Ctx]]:
    class Middle(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Reserve, lower]

    return Middle


@pytest.mark.parametrize(
    "placed",
    ["step", "group member", "fallback branch", "instance"],
)
def test_S11_nested_child_ids_longer_than_any_store_holds_are_refused_at_class_creation(
    placed: str,
) -> None:
    """Whatever the parent's id, ``<id>/mmm…/lll…`` exceeds 255 characters."""
    lower: Any = child(Leaf, LOWER)
    if placed == "group member":
        lower = Parallel(Charge, lower)
    elif placed == "fallback branch":
        lower = Fallback(step=Charge, fallback=lower)
    middle: Any = middle_with(lower)
    if placed == "instance":
        middle = middle(store=MemorySagaStore())
    with pytest.raises(SagaDefinitionError) as caught:

        class Top(Saga[Ctx]):
            steps: ClassVar[list[Any]] = [Reserve, child(middle, MIDDLE)]

    message = str(caught.value)
    assert "Top.steps[1]" in message
    assert MIDDLE[:20] in message  # the step path
    assert LOWER[:20] in message
    assert "255" in message
    assert "303" in message  # "/" + 150 + "/" + 150 + the shortest parent id: 1


def test_S11_a_child_id_path_that_fits_some_parent_id_is_accepted_at_class_creation() -> None:
    class Top(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [child(middle_with(child(Leaf, "l" * 100)), MIDDLE)]

    assert Top.definition.saga_name == "Top"


def top_family(lower_name: str) -> type[Saga[Ctx]]:
    class Top(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Reserve, child(middle_with(child(Leaf, lower_name)), MIDDLE)]

    return Top


async def test_S12_a_saga_id_its_child_ids_cannot_extend_is_refused_before_the_first_step() -> None:
    """``/`` + 150 + ``/`` + 100 = 252 characters of step path: a 10-character
    id makes a grandchild id of 262."""
    store = MemorySagaStore()
    saga = top_family("l" * 100)(store=store)
    with pytest.raises(ValueError, match="cannot run as saga") as caught:
        await saga.run(Ctx(), saga_id="order-0042")
    message = str(caught.value)
    assert "'order-0042'" in message
    assert "255" in message
    assert "l" * 20 in message  # the step path
    assert MIDDLE[:20] in message
    assert RAN == []  # nothing ran, so nothing was compensated
    assert await store.list_sagas() == []  # nothing journaled


async def test_S12_a_transaction_whose_child_ids_cannot_fit_is_refused_before_the_first_step(
) -> None:
    store = MemorySagaStore()
    saga = top_family("l" * 100)(store=store)
    with pytest.raises(ValueError, match="255"):
        saga.transaction(Ctx(), saga_id="order-0042")
    assert RAN == []
    assert await store.list_sagas() == []


async def test_S12_a_made_saga_id_too_long_for_the_child_ids_is_refused_before_the_first_step(
) -> None:
    """A made id is 36 characters: 36 + 252 > 255."""
    saga = top_family("l" * 100)()
    with pytest.raises(ValueError, match="255"):
        await saga.run(Ctx())
    assert RAN == []


async def test_S12_a_saga_id_short_enough_for_its_child_ids_runs_the_family() -> None:
    saga = top_family("l" * 100)()
    result = await saga.run(Ctx(), saga_id="o1")
    assert result.saga_id == "o1"
    assert RAN == ["Reserve", "Reserve", "Charge"]
