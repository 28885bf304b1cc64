"""Declaring mistakes get messages that say what to change (issue 9, item 7):
which step and which method lacks ``async``; which step class needs its
constructor arguments, and that ``step_factory=`` is how to give them."""

from __future__ import annotations

import re
import types
from typing import Any, ClassVar

import pytest
from helpers_saga import OrderCtx, declare

from fallback_saga import Saga, SagaDefinitionError, SagaStepHandler, SagaStepResult


class Reserve(SagaStepHandler[OrderCtx, str]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("reserved")


# --------------------------------------------------------------------------- missing async


class SyncAct:
    def act(self, context: Any) -> None: ...

    async def compensate(self, context: Any) -> None: ...


class SyncCompensate:
    async def act(self, context: Any) -> None: ...

    def compensate(self, context: Any) -> None: ...


class SyncBoth:
    def act(self, context: Any) -> None: ...

    def compensate(self, context: Any) -> None: ...


class SyncHandlerCompensate(SagaStepHandler[OrderCtx, str]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("ok")

    def compensate(self, context: OrderCtx) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("item", "method"),
    [
        (SyncAct, "SyncAct.act"),
        (SyncAct(), "SyncAct.act"),
        (SyncCompensate, "SyncCompensate.compensate"),
        (SyncCompensate(), "SyncCompensate.compensate"),
        (SyncBoth, "SyncBoth.act and SyncBoth.compensate"),
        (SyncHandlerCompensate, "SyncHandlerCompensate.compensate"),
    ],
    ids=["act-class", "act-instance", "compensate-class", "compensate-instance", "both",
         "handler-compensate"],
)
def test_a_step_method_without_async_is_named_with_its_step_at_class_creation(
    item: Any, method: str
) -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        declare(Reserve, item)

    message = str(caught.value)
    assert "steps[1]" in message
    assert f"{method} " in message
    assert "not async" in message
    assert "async def" in message


def test_a_step_method_without_async_is_named_inside_a_fallback() -> None:
    from fallback_saga import Fallback

    with pytest.raises(SagaDefinitionError, match=r"steps\[0\]\.fallback.*SyncAct\.act"):
        declare(Fallback(step=Reserve, fallback=SyncAct))


class OnlyAct:
    async def act(self, context: Any) -> None: ...


def test_a_step_missing_a_method_still_says_what_a_step_is() -> None:
    with pytest.raises(SagaDefinitionError, match=r"async def compensate\(self, context\)"):
        declare(Reserve, OnlyAct)


class OnlyCompensate:
    async def compensate(self, context: Any) -> None: ...


@pytest.mark.parametrize("item", [OnlyAct, OnlyAct()], ids=["class", "instance"])
def test_S11_a_step_without_compensate_says_which_method_to_add(item: Any) -> None:
    """The first thing a new user writes: a step with only ``act``. The
    message names the missing method, and the two ways to give it."""
    with pytest.raises(SagaDefinitionError) as caught:
        declare(Reserve, item)
    message = str(caught.value)
    assert "steps[1]: OnlyAct has `async def act` but no `compensate`" in message
    assert "add `async def compensate(self, context)`" in message
    assert "SagaStepHandler" in message  # whose compensate does nothing


def test_S11_a_step_without_act_says_so() -> None:
    with pytest.raises(SagaDefinitionError,
                       match=r"steps\[1\]: OnlyCompensate has no `act`; add `async def act"):
        declare(Reserve, OnlyCompensate)


# --------------------------------------------------------------------------- step_factory


class NeedsGateway(SagaStepHandler[OrderCtx, str]):
    def __init__(self, gateway: object) -> None:
        self.gateway = gateway

    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("charged")


class PaymentSaga(Saga[OrderCtx]):
    steps: ClassVar[list[Any]] = [Reserve, NeedsGateway]


def test_a_step_whose_constructor_needs_arguments_without_step_factory_says_to_pass_one() -> None:
    with pytest.raises(TypeError) as caught:
        PaymentSaga()

    message = str(caught.value)
    assert "NeedsGateway" in message
    assert "PaymentSaga" in message
    assert "step_factory=" in message
    assert "gateway" in message  # the original complaint is kept in the message ...
    cause = caught.value.__cause__
    assert isinstance(cause, TypeError)  # ... and chained
    assert re.search(r"missing 1 required positional argument: 'gateway'", str(cause))


def test_the_same_step_class_built_with_a_step_factory_is_fine() -> None:
    saga = PaymentSaga(step_factory=lambda cls: cls("gw") if cls is NeedsGateway else cls())
    assert saga.name == "PaymentSaga"


class BuggyConstructor(SagaStepHandler[OrderCtx, str]):
    def __init__(self) -> None:
        raise TypeError("a bug inside the constructor")

    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("never")


def test_a_type_error_raised_inside_a_step_constructor_is_not_disguised() -> None:
    """Only a constructor that cannot be called without arguments gets the
    step_factory hint; a TypeError from the constructor's own code propagates."""
    with pytest.raises(TypeError, match=r"^a bug inside the constructor$") as caught:
        declare(BuggyConstructor)()
    assert "step_factory" not in str(caught.value)


# --------------------------------------------------------------------------- what steps may be


class Ship(SagaStepHandler[OrderCtx, str]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("shipped")


def declare_steps(steps: object, name: str = "OrderSaga") -> type[Saga[Any]]:
    return types.new_class(
        name, (Saga[OrderCtx],), {}, lambda namespace: namespace.update(steps=steps)
    )


@pytest.mark.parametrize("kind", [list, tuple])
def test_S11_steps_may_be_a_list_or_a_tuple(kind: type) -> None:
    saga_cls = declare_steps(kind([Reserve, Ship]))
    assert [member.name for member in saga_cls.definition.members()] == ["Reserve", "Ship"]


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        ({Reserve, Ship}, "a set, which has no order"),
        (frozenset({Reserve, Ship}), "a frozenset, which has no order"),
        ({Reserve: 1, Ship: 2}, "a dict"),
        ((step for step in [Reserve, Ship]), "a generator"),
        (iter([Reserve, Ship]), "a list_iterator"),
        (Reserve, "a class"),
        ("Reserve", "a str"),
    ],
    ids=["set", "frozenset", "dict", "generator", "iterator", "one-step", "str"],
)
def test_S11_steps_that_are_no_list_or_tuple_are_refused_naming_the_saga(
    steps: object, said: str
) -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        declare_steps(steps)
    message = str(caught.value)
    assert message.startswith("OrderSaga.steps must be a list or tuple of steps, ")
    assert said in message


def test_S11_a_subclass_inherits_its_bases_steps() -> None:
    base = declare_steps((Reserve, Ship))
    sub = types.new_class("RushOrderSaga", (base,), {})
    assert [member.name for member in sub.definition.members()] == ["Reserve", "Ship"]
