"""S11/S12/S15: what a new user gets wrong composing sagas (``SubSaga``,
``Parallel``) is refused early, with a message that says what to do, and
never leaves a journal that recovery reads wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    Saga,
    SagaContext,
    SagaDefinitionError,
    SagaFailed,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
)

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@dataclasses.dataclass
class Order(SagaContext):
    order_id: str = "o"


@dataclasses.dataclass
class Payment(SagaContext):
    amount: int = 1


class Reserve(SagaStepHandler[Order, None]):
    async def act(self, ctx: Order, /) -> None:
        RAN.append("Reserve")

    async def compensate(self, ctx: Order, /) -> None:
        RAN.append("undo Reserve")


class Charge(SagaStepHandler[Payment, None]):
    async def act(self, ctx: Payment, /) -> None:
        RAN.append("Charge")

    async def compensate(self, ctx: Payment, /) -> None:
        RAN.append("undo Charge")


class PaymentSaga(Saga[Payment]):
    steps: ClassVar[list[Any]] = [Charge]


# ------------------------------------------------------- the id separator


class NamedWithSlash(Saga[Payment]):
    name = "billing/Payment"
    steps: ClassVar[list[Any]] = [Charge]


@pytest.mark.parametrize(
    ("saga", "name"), [(PaymentSaga, "pay/now"), (NamedWithSlash, None)],
    ids=["name-given", "child-saga-name"],
)
def test_S15_a_child_step_name_holding_the_id_separator_is_refused(
    saga: type[Saga[Payment]], name: str | None
) -> None:
    """``"<parent id>/pay/now"`` reads back as the child ``now`` of the saga
    ``"<parent id>/pay"``: recovery would not defer the child to its parent
    in flight (and run it beside the parent), a purge would delete it while
    its parent is stored."""
    with pytest.raises(ValueError, match="'/'") as caught:
        SubSaga(saga, context=lambda order: Payment(), name=name)
    message = str(caught.value)
    assert "name=" in message
    assert ("pay/now" if name else "billing/Payment") in message


# ----------------------------------------- a child that cannot be journaled


class Untyped(Saga):  # type: ignore[type-arg]  # no context class: what is tested
    steps: ClassVar[list[Any]] = [Charge]


class UntypedMiddle(Saga[Payment]):
    steps: ClassVar[list[Any]] = [SubSaga(Untyped, context=lambda p: p, name="Inner")]


@pytest.mark.parametrize("child", [Untyped, UntypedMiddle], ids=["child", "grandchild"])
async def test_S12_a_child_saga_without_a_context_class_is_refused_when_its_durable_parent_is_built(
    tmp_path: Path, child: type[Saga[Any]]
) -> None:
    """Refused as the child saga itself is with a durable store — not at run
    time, once the steps before it ran and were compensated."""

    class Checkout(Saga[Order]):
        steps: ClassVar[list[Any]] = [
            Reserve, SubSaga(child, context=lambda order: Payment(), name="Pay")
        ]

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(TypeError, match="must declare its context class") as caught:
            Checkout(store=store)
    assert "Untyped" in str(caught.value)
    assert "'Pay'" in str(caught.value)  # the parent's step that runs it
    assert RAN == []


async def test_S12_a_child_saga_without_a_context_class_runs_in_memory() -> None:
    class Checkout(Saga[Order]):
        steps: ClassVar[list[Any]] = [SubSaga(Untyped, context=lambda order: Payment())]

    await Checkout().run(Order())
    assert RAN == ["Charge"]


# --------------------------------------------------- a saga given as a step


@pytest.mark.parametrize("placed", ["class", "instance", "group member", "fallback"])
def test_S11_a_saga_given_as_a_step_is_refused_pointing_to_subsaga(placed: str) -> None:
    given: Any = PaymentSaga(store=MemorySagaStore()) if placed == "instance" else PaymentSaga
    if placed == "group member":
        given = Parallel(Reserve, given)
    elif placed == "fallback":
        given = Fallback(step=Reserve, fallback=given)
    with pytest.raises(SagaDefinitionError, match="PaymentSaga is a saga") as caught:

        class Checkout(Saga[Order]):
            steps: ClassVar[list[Any]] = [given]

    assert "SubSaga(PaymentSaga, context=" in str(caught.value)


# ------------------------------------------ a child context of another class


async def test_S12_a_child_context_of_another_class_names_the_subsagas_context_function() -> None:
    store = MemorySagaStore()

    class Checkout(Saga[Order]):
        steps: ClassVar[list[Any]] = [
            Reserve, SubSaga(PaymentSaga, context=lambda order: order, name="Pay")
        ]

    with pytest.raises(SagaFailed) as caught:
        await Checkout(store=store).run(Order(), saga_id="c-1")
    error = caught.value.error
    assert isinstance(error, TypeError)
    assert "context=" in str(error)
    assert "Order" in str(error)
    assert "Payment" in str(error)
    assert RAN == ["Reserve", "undo Reserve"]


# ------------------------------- a child step that needs a step_factory


class ChargeWith(SagaStepHandler[Payment, None]):
    def __init__(self, client: str) -> None:
        self.client = client

    async def act(self, ctx: Payment, /) -> None:
        RAN.append(f"Charge with {self.client}")

    async def compensate(self, ctx: Payment, /) -> None:
        RAN.append("undo Charge")


class ClientPayment(Saga[Payment]):
    steps: ClassVar[list[Any]] = [ChargeWith]


def build(cls: type) -> Any:
    return cls("the-client") if cls is ChargeWith else cls()


def test_S12_a_child_saga_class_whose_step_needs_arguments_is_refused_when_the_parent_is_built(
) -> None:
    """The child is built from its class as ``ClientPayment(store=...)``,
    with no step_factory: its step cannot be built, and the run would fail
    at the child, the steps before it compensated. Refused when the parent
    is built, saying how to give the child a step_factory."""

    class Checkout(Saga[Order]):
        steps: ClassVar[list[Any]] = [
            Reserve, SubSaga(ClientPayment, context=lambda order: Payment(), name="Pay")
        ]

    with pytest.raises(TypeError, match="ChargeWith") as caught:
        Checkout(step_factory=build)
    message = str(caught.value)
    assert "'Pay'" in message
    assert "SubSaga(ClientPayment(store=" in message  # the way that works
    assert RAN == []


async def test_S12_a_child_saga_instance_built_with_a_step_factory_runs_its_steps() -> None:
    """The way the refusal gives works."""
    store = MemorySagaStore()
    payment = ClientPayment(store=store, step_factory=build)

    class Checkout(Saga[Order]):
        steps: ClassVar[list[Any]] = [
            Reserve, SubSaga(payment, context=lambda order: Payment(), name="Pay")
        ]

    await Checkout(store=store).run(Order())
    assert RAN == ["Reserve", "Charge with the-client"]
