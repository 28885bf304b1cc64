"""Declaring sagas: S11 definition errors at class creation, step naming,
step factories, ``Response`` and ``SagaStepResult``."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import sys
import textwrap
import types
import unittest.mock
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest
from helpers_saga import OrderCtx, Probe, Trace, declare

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    Response,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaDefinitionError,
    SagaError,
    SagaFailed,
    SagaStatus,
    SagaStepHandler,
    SagaStepResult,
    SQLiteSagaStore,
    Step,
)


class Reserve(SagaStepHandler[OrderCtx, str]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        context.reservation = "r-1"
        return self._generate_step_result("reserved")


class Charge(SagaStepHandler[OrderCtx, str]):
    async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
        return self._generate_step_result("charged")


@dataclasses.dataclass
class OtherCtx(SagaContext):
    other: int = 0


@dataclasses.dataclass
class SpecialOrderCtx(OrderCtx):
    special: bool = True


class OtherStep(SagaStepHandler[OtherCtx, str]):
    async def act(self, context: OtherCtx) -> SagaStepResult[OtherCtx, str]:
        return self._generate_step_result("other")


class SpecialStep(SagaStepHandler[SpecialOrderCtx, str]):
    async def act(self, context: SpecialOrderCtx) -> SagaStepResult[SpecialOrderCtx, str]:
        return self._generate_step_result("special")


class AnyContextStep(SagaStepHandler[SagaContext, str]):
    async def act(self, context: SagaContext) -> SagaStepResult[SagaContext, str]:
        return self._generate_step_result("any")


def make_step_class(class_name: str) -> type:
    """A fresh step class; two calls with one name give two distinct classes."""

    async def act(self: Any, context: Any) -> str:
        return class_name

    async def compensate(self: Any, context: Any) -> None:
        return None

    return type(class_name, (), {"act": act, "compensate": compensate})


# --------------------------------------------------------------------------- S11


def test_S11_errors_are_raised_by_the_class_statement_itself() -> None:
    def define() -> None:
        class Broken(Saga[OrderCtx]):
            steps = [Reserve, 42]

    with pytest.raises(SagaDefinitionError, match="Broken"):
        define()


class SyncStep:
    def act(self, context: Any) -> None: ...

    def compensate(self, context: Any) -> None: ...


class OnlyAct:
    async def act(self, context: Any) -> None: ...


async def bare_function(context: Any) -> None: ...


@pytest.mark.parametrize(
    "item",
    [
        42,
        "Reserve",
        None,
        object(),
        [Reserve],
        SyncStep,
        SyncStep(),
        OnlyAct,
        bare_function,
        RetryPolicy(),
    ],
    ids=lambda item: type(item).__name__ if not isinstance(item, type) else item.__name__,
)
def test_S11_item_that_is_not_a_step_or_fallback(item: Any) -> None:
    with pytest.raises(SagaDefinitionError, match=r"steps\[1\]"):
        declare(Reserve, item)


def test_S11_step_class_that_does_not_implement_act() -> None:
    class ForgotAct(SagaStepHandler[OrderCtx, str]):
        pass

    with pytest.raises(SagaDefinitionError, match="ForgotAct"):
        declare(Reserve, ForgotAct)


def test_S11_fallback_nested_in_a_fallback() -> None:
    inner = Fallback(step=Reserve, fallback=Charge)
    with pytest.raises(SagaDefinitionError):
        declare(Fallback(step=inner, fallback=OtherStep))


def _declare_raw(steps: Any) -> type:
    return types.new_class("Raw", (Saga[OrderCtx],), {}, lambda ns: ns.update(steps=steps))


@pytest.mark.parametrize("steps", [[], (), "Reserve", 42])
def test_S11_steps_must_be_a_non_empty_list(steps: Any) -> None:
    with pytest.raises(SagaDefinitionError):
        _declare_raw(steps)


def test_S11_duplicate_names_same_class_twice() -> None:
    with pytest.raises(SagaDefinitionError, match="Reserve"):
        declare(Reserve, Charge, Reserve)


def test_S11_duplicate_names_two_classes_named_alike() -> None:
    first, second = make_step_class("Notify"), make_step_class("Notify")
    assert first is not second

    with pytest.raises(SagaDefinitionError, match="Notify"):
        declare(first, second)


def test_S11_duplicate_names_class_and_instance_of_it() -> None:
    with pytest.raises(SagaDefinitionError, match="Reserve"):
        declare(Reserve, Reserve())


def test_S11_duplicate_names_through_explicit_name_attribute() -> None:
    class PayByCard(Charge):
        name = "pay"

    class PayByInvoice(Charge):
        name = "pay"

    with pytest.raises(SagaDefinitionError, match="pay"):
        declare(PayByCard, PayByInvoice)


def test_S11_duplicate_names_across_a_fallback_branch() -> None:
    with pytest.raises(SagaDefinitionError, match="Reserve"):
        declare(Reserve, Fallback(step=Charge, fallback=Reserve))


def test_S11_distinct_names_of_one_class_are_fine() -> None:
    trace: Trace = []
    saga_cls = declare(Probe("A", trace), Probe("B", trace))
    assert [item.name for item in saga_cls.definition.items] == ["A", "B"]


def test_S11_a_step_name_longer_than_the_limit_is_refused_at_class_creation() -> None:
    """A step name is written in every journal entry of its step: a name of a
    megabyte made every entry a megabyte. At most ``MAX_STEP_NAME_LENGTH``."""
    from fallback_saga.definition import MAX_STEP_NAME_LENGTH

    trace: Trace = []
    at_most = "s" * MAX_STEP_NAME_LENGTH
    assert declare(Probe(at_most, trace)).definition.items[0].name == at_most
    with pytest.raises(SagaDefinitionError, match=r"steps\[1\]: step name .* is 1000000 "
                       r"characters long; a step name is at most 200") as refused:
        declare(Probe("A", trace), Probe("x" * 1_000_000, trace))
    assert len(str(refused.value)) < 400  # the name is shown cut


@pytest.mark.parametrize(
    ("name", "why"),
    [("nul\x00step", "a NUL character"), ("lone\ud800surrogate", "a lone surrogate")],
    ids=["NUL", "lone-surrogate"],
)
def test_S11_a_step_name_a_store_cannot_journal_is_refused_at_class_creation(
    name: str, why: str
) -> None:
    """PostgreSQL text cannot hold NUL, and UTF-8 (SQLite, PostgreSQL) no lone
    surrogate: such a step name made the first write of every run fail
    (``SagaInterrupted``, for ever). Refused when the class is created."""
    class Named(Charge):
        pass

    Named.name = name  # type: ignore[attr-defined]
    with pytest.raises(SagaDefinitionError, match=rf"steps\[0\].step: step name .* holds {why}"
                       r".*: no store could journal it") as refused:
        declare(Fallback(step=Named, fallback=Reserve))
    assert repr(name)[1:-1] in str(refused.value)  # shown escaped


@pytest.mark.parametrize("same", [Reserve, Reserve()], ids=["class", "instance"])
def test_S11_fallback_with_same_step_both_sides(same: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="same"):
        declare(Fallback(step=same, fallback=same))


def test_S11_fallback_with_two_instances_of_one_step_class() -> None:
    with pytest.raises(SagaDefinitionError):
        declare(Fallback(step=Reserve(), fallback=Reserve()))


@pytest.mark.parametrize(
    "failure_exceptions",
    [
        (int,),
        ("ValueError",),
        (ValueError(),),
        (ValueError, object),
        (KeyboardInterrupt,),  # never a fallback trigger (S3), so never listable
        (None,),
        42,
    ],
    ids=["int", "str", "instance", "mixed", "base-exception", "none", "not-iterable"],
)
def test_S11_non_exception_type_in_failure_exceptions(failure_exceptions: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="failure_exceptions"):
        declare(Fallback(step=Reserve, fallback=Charge, failure_exceptions=failure_exceptions))


def test_S11_a_breaker_class_instead_of_a_breaker_is_refused_at_class_creation() -> None:
    """``circuit_breaker=CircuitBreaker`` (the class) has ``call`` and
    ``is_open_error``, so it passed the protocol check; every run then
    failed inside the library (``is_open_error() missing 1 required
    positional argument``), the saga compensated, the primary never run."""
    with pytest.raises(SagaDefinitionError, match=r"circuit_breaker.*CircuitBreaker\(") as refused:
        declare(Fallback(step=Reserve, fallback=Charge, circuit_breaker=CircuitBreaker))
    assert "the class CircuitBreaker" in str(refused.value)


@pytest.mark.parametrize(
    "item",
    [
        OtherStep,
        OtherStep(),
        SpecialStep,  # needs a subclass of what the saga provides
        Fallback(step=Reserve, fallback=OtherStep),
        Fallback(step=OtherStep, fallback=Reserve),
    ],
    ids=["class", "instance", "narrower-context", "in-fallback-branch", "in-primary-branch"],
)
def test_S11_step_bound_to_a_context_type_the_saga_does_not_provide(item: Any) -> None:
    with pytest.raises(SagaDefinitionError, match="OrderCtx"):
        declare(Charge, item, context=OrderCtx)


def test_S11_step_bound_to_a_base_of_the_saga_context_is_fine() -> None:
    declare(Reserve, AnyContextStep, context=OrderCtx)
    declare(Reserve, SpecialStep, context=SpecialOrderCtx)


class AnyStep(SagaStepHandler[Any, str]):
    async def act(self, context: Any) -> SagaStepResult[Any, str]:
        return self._generate_step_result("any")


@pytest.mark.parametrize(
    ("saga_context", "steps"),
    [(Any, (Reserve, Charge)), (Any, (AnyStep,)), (OrderCtx, (Reserve, AnyStep))],
    ids=["saga-any", "both-any", "step-any"],
)
def test_S11_a_saga_or_step_bound_to_Any_checks_nothing(
    saga_context: Any, steps: tuple[Any, ...]
) -> None:
    """``Saga[Any]`` or ``SagaStepHandler[Any, ...]`` binds no context type:
    (since Python 3.11 ``typing.Any`` is a class, and was taken for the
    context's class: the saga was refused, or its run raised ``TypeError:
    typing.Any cannot be used with isinstance()``)."""
    saga_cls = declare(*steps, context=saga_context)
    result = asyncio.run(saga_cls().run(OrderCtx()))
    assert result.status is SagaStatus.COMPLETED
    assert [r.step_name for r in result.results] == [step.__name__ for step in steps]


class HasReservation(Protocol):
    """What a reusable step needs of any context (a structural type)."""

    reservation: str | None


class ProtocolStep(SagaStepHandler[HasReservation, str]):
    async def act(self, context: HasReservation) -> SagaStepResult[HasReservation, str]:
        context.reservation = "r-2"
        return self._generate_step_result("protocol")


@pytest.mark.parametrize(
    ("saga_context", "steps"),
    [(OrderCtx, (Reserve, ProtocolStep)), (HasReservation, (ProtocolStep,))],
    ids=["step-protocol", "saga-protocol"],
)
def test_S11_a_step_or_saga_bound_to_a_protocol_is_left_to_the_type_checker(
    saga_context: Any, steps: tuple[Any, ...]
) -> None:
    """A ``typing.Protocol`` is a structural type: no class is its subclass
    by name, and ``issubclass`` / ``isinstance`` raise ``TypeError`` on one
    not ``@runtime_checkable`` (they did, from inside the library, at class
    creation). It binds no context class; a static type checker holds the
    structure."""
    saga_cls = declare(*steps, context=saga_context)
    result = asyncio.run(saga_cls().run(OrderCtx()))
    assert result.status is SagaStatus.COMPLETED
    assert result.context.reservation == "r-2"


@pytest.mark.parametrize(
    "saga_context", [None, Any, HasReservation], ids=["unbound", "any", "protocol"]
)
def test_S13_a_saga_without_a_context_class_is_refused_a_durable_store(
    saga_context: Any, tmp_path: Path
) -> None:
    """A crashed run is resumed from its journal, which is read back into the
    saga's context class: a saga that declares none would run, journal, and
    after a crash be left where no recovery can resume it. So a store that
    is written to (not the in-memory one) is refused it when the saga is
    made (and so when a recovery worker is given it) — before anything runs."""
    if saga_context is None:
        saga_cls: Any = types.new_class(
            "UnboundSaga", (Saga,), {}, lambda namespace: namespace.update(steps=[Reserve])
        )
    else:
        saga_cls = declare(Reserve, context=saga_context, name="UnboundSaga")
    store = SQLiteSagaStore(str(tmp_path / "sagas.db"))
    try:
        with pytest.raises(TypeError, match=r"UnboundSaga must declare its context class"):
            saga_cls(store=store)
        # The in-memory store (the default) keeps no journal to resume from.
        assert asyncio.run(saga_cls().run(OrderCtx())).status is SagaStatus.COMPLETED
    finally:
        asyncio.run(store.close())


# 10**400: an int too large for a float was an OverflowError naming nothing.
@pytest.mark.parametrize(
    "timeout",
    [0, -1, float("nan"), float("inf"), "1", True, pytest.param(10**400, id="beyond-a-float")],
)
def test_step_timeout_must_be_positive_seconds(timeout: Any) -> None:
    class Timed(Charge):
        pass

    Timed.timeout = timeout
    with pytest.raises(SagaDefinitionError, match="timeout"):
        declare(Timed)


@pytest.mark.parametrize("retry", [3, "3", 0.5, True, {"attempts": 3}])
def test_step_retry_must_be_a_retry_policy(retry: Any) -> None:
    """A step's ``retry`` that is no RetryPolicy was ignored without a word:
    the step ran once where its author asked for retries."""
    class Retried(Charge):
        pass

    Retried.retry = retry  # type: ignore[attr-defined]
    with pytest.raises(SagaDefinitionError, match="retry must be a RetryPolicy"):
        declare(Retried)
    with pytest.raises(SagaDefinitionError, match="retry must be a RetryPolicy"):
        declare(Retried())


def test_S6_a_step_retry_set_to_the_retry_policy_class_is_refused() -> None:
    """``retry = RetryPolicy`` (the class, its call forgotten) passed as a
    method named ``retry`` (it is callable) and was ignored: the step ran
    once where its author asked for retries. ``Fallback(retry=...)`` and
    ``compensation_retry`` refuse the class already."""
    class Retried(Charge):
        retry = RetryPolicy

    with pytest.raises(SagaDefinitionError, match=r"retry must be a RetryPolicy.*RetryPolicy\(\)"):
        declare(Retried)

    class Built(Charge):
        def __init__(self) -> None:
            self.retry = RetryPolicy

    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        declare(Built)(step_factory=lambda cls: cls())


def test_step_retry_set_by_a_built_step_must_be_a_retry_policy() -> None:
    class Built(Charge):
        def __init__(self) -> None:
            self.retry = 3

    saga_cls = declare(Built)
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        saga_cls(step_factory=lambda cls: cls())


async def test_step_with_a_method_named_retry_is_no_policy_and_runs() -> None:
    """A step of one's own may have a method called ``retry``: not a
    setting, left alone."""
    class WithMethod(Charge):
        def retry(self) -> str:
            return "mine"

    saga = declare(WithMethod)()
    result = await saga.run(OrderCtx())
    assert result.results[0].step_name == "WithMethod"


def test_definition_error_is_a_saga_error() -> None:
    assert issubclass(SagaDefinitionError, SagaError)


# --------------------------------------------------------------------------- names


async def test_step_name_is_the_class_name_unless_it_sets_name() -> None:
    class Named(Charge):
        name = "charge-card"

    saga = declare(Reserve, Named)()
    result = await saga.run(OrderCtx(), saga_id="names")

    assert [r.step_name for r in result.results] == ["Reserve", "charge-card"]
    record = await saga.store.load("names")
    assert {entry.step for entry in record.history} == {"Reserve", "charge-card"}


async def test_generate_step_result_carries_saga_id_and_step_name() -> None:
    saga = declare(Reserve)()
    result = await saga.run(OrderCtx(), saga_id="gen")

    assert result.results == [
        SagaStepResult(response="reserved", step_name="Reserve", saga_id="gen")
    ]


# --------------------------------------------------------------------------- step_factory


async def test_step_factory_builds_classes_and_instances_are_used_as_given() -> None:
    built: list[type] = []

    class Injected(SagaStepHandler[OrderCtx, str]):
        def __init__(self, service: str) -> None:
            self.service = service

        async def act(self, context: OrderCtx) -> SagaStepResult[OrderCtx, str]:
            return self._generate_step_result(self.service)

    def factory(cls: type) -> Any:
        built.append(cls)
        return cls("injected-service") if cls is Injected else cls()

    trace: Trace = []
    given = Probe("Given", trace)
    saga = declare(Injected, Fallback(step=Reserve, fallback=given))(step_factory=factory)

    assert built == [Injected, Reserve]  # at saga creation, once per class
    result = await saga.run(OrderCtx())
    await saga.run(OrderCtx())

    assert built == [Injected, Reserve]
    assert result.results[0].response == "injected-service"
    assert given.acts == 0  # the primary succeeded


async def test_step_instance_is_the_very_object_called() -> None:
    trace: Trace = []
    given = Probe("Given", trace)
    saga = declare(given)(step_factory=lambda cls: pytest.fail("no class to build"))

    await saga.run(OrderCtx())

    assert given.acts == 1


def test_step_factory_returning_a_non_step_is_refused() -> None:
    saga_cls = declare(Reserve)
    with pytest.raises(TypeError, match="Reserve"):
        saga_cls(step_factory=lambda cls: object())


def test_saga_constructor_is_keyword_only() -> None:
    saga_cls = declare(Reserve)
    with pytest.raises(TypeError):
        saga_cls(None)  # type: ignore[misc]


async def test_saga_refuses_a_context_of_the_wrong_type() -> None:
    saga = declare(Reserve, context=OrderCtx)()
    with pytest.raises(TypeError, match="OrderCtx"):
        await saga.run(OtherCtx())


# --------------------------------------------------------------------------- Response, results


class ReserveInventoryResponse(Response):
    reservation_id: str


class Priced(Response):
    amount: Decimal
    currency: str = "EUR"


class PricedWithNote(Priced):
    note: str = ""


def test_response_with_annotations_only_is_a_keyword_constructible_dataclass() -> None:
    response = ReserveInventoryResponse(reservation_id="r-1")

    assert dataclasses.is_dataclass(response)
    assert response.reservation_id == "r-1"
    assert "r-1" in repr(response)
    with pytest.raises(TypeError):
        ReserveInventoryResponse()  # type: ignore[call-arg]


def test_response_is_comparable() -> None:
    assert ReserveInventoryResponse(reservation_id="a") == ReserveInventoryResponse(
        reservation_id="a"
    )
    assert ReserveInventoryResponse(reservation_id="a") != ReserveInventoryResponse(
        reservation_id="b"
    )
    assert Priced(amount=Decimal("1.0")) == Priced(amount=Decimal("1.00"), currency="EUR")
    assert Priced(amount=Decimal(1)) != Priced(amount=Decimal(1), currency="USD")


def test_response_subclass_of_a_subclass_adds_fields() -> None:
    response = PricedWithNote(amount=Decimal(2), note="gift")
    assert (response.amount, response.currency, response.note) == (Decimal(2), "EUR", "gift")


def test_response_keeps_an_explicit_dataclass_decorator() -> None:
    @dataclasses.dataclass(order=True)
    class Ordered(Response):
        value: int

    assert Ordered(value=1) < Ordered(value=2)


def test_response_with_an_explicit_frozen_dataclass_decorator() -> None:
    @dataclasses.dataclass(frozen=True)
    class Frozen(Response):
        value: int

    frozen = Frozen(value=1)
    assert frozen.value == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.value = 2  # type: ignore[misc]


def test_a_response_dataclasses_refuses_says_which_response_class() -> None:
    """The dataclass ``Response`` makes of a subclass is made inside the
    library: a field ``dataclasses`` refuses (a list default, a field
    without a default after one with) came out of ``step.py`` with
    dataclasses' message alone, naming a field but not the class."""
    with pytest.raises(ValueError, match=r"Response subclass .*Listed: mutable default.*items"):
        class Listed(Response):
            items: list[str] = []

    with pytest.raises(TypeError, match=r"Response subclass .*Unordered: non-default argument"):
        class Unordered(Response):
            note: str = ""
            amount: int


def test_saga_step_result_is_frozen() -> None:
    result = SagaStepResult(response=1, step_name="A", saga_id="s")

    # dataclasses.FrozenInstanceError is an AttributeError too.
    with pytest.raises(AttributeError):
        result.response = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.step_name = "B"  # type: ignore[misc]
    assert (result.response, result.step_name, result.saga_id) == (1, "A", "s")
    assert result == SagaStepResult(response=1, step_name="A", saga_id="s")
    assert result != SagaStepResult(response=1, step_name="A", saga_id="other")


def test_step_protocol_is_runtime_checkable() -> None:
    assert isinstance(Reserve(), Step)
    assert isinstance(Probe("P", []), Step)
    assert not isinstance(OnlyAct(), Step)
    assert not isinstance(object(), Step)


async def test_saga_step_handler_default_compensate_does_nothing() -> None:
    ctx = OrderCtx()
    before = dataclasses.replace(ctx)
    assert await Charge().compensate(ctx) is None
    assert ctx == before


def _assigns_through_object_setattr(cls: type) -> bool:
    code = cls.__dict__["__init__"].__code__
    return "__dataclass_builtins_object__" in code.co_names + code.co_freevars


def test_response_init_settles_to_plain_assignments_once_the_class_is_final() -> None:
    class Plain(Response):
        value: str
        tags: list[str] = dataclasses.field(default_factory=list)

    assert inspect.signature(Plain).parameters.keys() == {"value", "tags"}
    first = Plain(value="a")
    # The first instance settled the class: a mutable response is built with
    # plain assignments from then on (the frozen-style __init__ costs a call per field).
    assert not _assigns_through_object_setattr(Plain)
    second = Plain("b", ["x"])
    assert (first.value, first.tags, second.value, second.tags) == ("a", [], "b", ["x"])
    assert first.tags is not Plain(value="c").tags
    with pytest.raises(TypeError):
        Plain()  # type: ignore[call-arg]


def test_response_init_settles_frozen_when_a_frozen_decorator_is_applied_on_top() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Frozen(Response):
        value: int

    assert Frozen(value=1).value == 1
    assert Frozen(value=2) == Frozen(2)
    assert _assigns_through_object_setattr(Frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frozen(value=1).value = 2  # type: ignore[misc]


def test_response_init_settles_with_post_init_init_vars_and_subclasses() -> None:
    class Base(Response):
        amount: int
        scale: dataclasses.InitVar[int] = 1

        def __post_init__(self, scale: int) -> None:
            self.amount *= scale

    class Child(Base):
        note: str = ""

    # A subclass made before its base's first instance settles on its own.
    assert Child(amount=2, scale=3, note="n") == Child(amount=6, note="n")
    assert Base(amount=2, scale=5).amount == 10
    assert Base(amount=2).amount == 2
    assert not _assigns_through_object_setattr(Base)
    assert not _assigns_through_object_setattr(Child)


def test_response_init_settles_under_an_explicit_mutable_slots_decorator() -> None:
    @dataclasses.dataclass(slots=True)
    class Slotted(Response):
        value: int

    slotted = Slotted(value=1)
    slotted.value = 2
    assert slotted.value == 2
    assert not _assigns_through_object_setattr(Slotted)


class Configured(SagaStepHandler[OrderCtx, None]):
    """A step class built with arguments: its ``__init__`` sets the optional
    attributes on the instance."""

    def __init__(self, *, name: str | None = None, timeout: float | None = None,
                 retry: RetryPolicy | None = None) -> None:
        if name is not None:
            self.name = name
        if timeout is not None:
            self.timeout = timeout
        if retry is not None:
            self.retry = retry
        self.tries = 0

    async def act(self, context: OrderCtx) -> None:
        self.tries += 1
        raise ValueError("declined")


async def test_step_attributes_are_the_class_or_a_step_instance_given_in_steps() -> None:
    """SagaStepHandler's docstring, mechanics.md "Timeouts": ``name`` and
    ``timeout`` come from the class or from a step instance given in
    ``steps``, read when the saga class is created."""
    given = Configured(name="Custom", timeout=30.0)
    in_steps = declare(given)
    assert in_steps.definition.items[0].name == "Custom"
    assert in_steps.definition.items[0].timeout == 30.0

    by_class = declare(Configured)
    assert by_class.definition.items[0].name == "Configured"
    assert by_class.definition.items[0].timeout is None


async def test_S12_a_step_step_factory_builds_keeps_its_own_timeout_and_retry() -> None:
    """What the factory built is the step that runs: the ``timeout`` and
    ``retry`` its ``__init__`` sets are the ones its calls get (a timeout
    that was set and then ignored let a hung call hang)."""
    async def no_sleep(delay: float) -> None:
        return None

    built = Configured(timeout=0.5, retry=RetryPolicy(attempts=2, sleep=no_sleep))
    saga = declare(Configured)(step_factory=lambda cls: built)
    assert saga._plan[0].timeout == 0.5
    assert not saga._plan[0].plain  # it runs under its timeout, not on the lean path
    with pytest.raises(SagaFailed) as failed:
        await saga.run(OrderCtx(), saga_id="configured")
    assert failed.value.failed_step == "Configured"
    assert built.tries == 2  # the built step's retry
    entries = (await saga.store.load("configured")).history
    assert {entry.step for entry in entries} == {"Configured"}


async def test_S12_a_step_step_factory_builds_with_a_timeout_gets_a_timeout_error() -> None:
    """The built step's timeout bounds each act: one that does not finish
    fails with TimeoutError, as a class's timeout makes it."""
    class Hangs(SagaStepHandler[OrderCtx, None]):
        def __init__(self, timeout: float | None = None) -> None:
            if timeout is not None:
                self.timeout = timeout

        async def act(self, context: OrderCtx) -> None:
            await asyncio.Event().wait()  # never set: only the timeout ends it

    saga = declare(Hangs)(step_factory=lambda cls: cls(timeout=0.01))
    with pytest.raises(SagaFailed) as failed:
        await saga.run(OrderCtx())
    assert isinstance(failed.value.error, TimeoutError)


@pytest.mark.parametrize(
    "timeout",
    [0, -1.0, float("nan"), float("inf"), True, "5", pytest.param(10**400, id="beyond-a-float")],
)
def test_S12_a_step_step_factory_builds_with_a_bad_timeout_is_refused(timeout: Any) -> None:
    class Odd(Configured):
        def __init__(self) -> None:
            super().__init__()
            self.timeout = timeout

    saga_cls = declare(Odd)
    with pytest.raises(TypeError, match=r"step 'Odd' built by step_factory: timeout must be"):
        saga_cls(step_factory=lambda cls: cls())


def test_S12_a_step_step_factory_builds_under_another_name_is_refused() -> None:
    """A step's journal name is fixed when the saga class is created: a
    name its built instance sets would be silently ignored (the journal and
    every message name it by its class)."""
    saga_cls = declare(Configured)
    with pytest.raises(TypeError, match=r"named 'Renamed'.*'Configured'"):
        saga_cls(step_factory=lambda cls: Configured(name="Renamed"))
    # Its own class's name, or no name at all (a test double), is fine.
    saga_cls(step_factory=lambda cls: Configured(name="Configured"))
    class Double:  # a test double with no name of its own
        act = compensate = unittest.mock.AsyncMock()

    saga_cls(step_factory=lambda cls: Double())


def _module_from(source: str, name: str) -> types.ModuleType:
    """``source`` run as the module ``name``, registered in ``sys.modules``
    while it runs (as an import does): its classes name each other by string."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), vars(module))
    return module


_NAMED_BY_STRING = """
    import dataclasses
    from fallback_saga import Saga, SagaContext, SagaStepHandler

    class Reserve(SagaStepHandler["OrderCtx", str]):  # declared before OrderCtx
        async def act(self, context):
            context.reserved += 1
            return self._generate_step_result("reserved")

    class EarlySaga(Saga["OrderCtx"]):  # declared before OrderCtx
        steps = [Reserve]

    @dataclasses.dataclass
    class OrderCtx(SagaContext):
        reserved: int = 0

    @dataclasses.dataclass
    class OtherCtx(SagaContext):
        reserved: int = 0

    class LateSaga(Saga["OrderCtx"]):  # declared after OrderCtx
        steps = [Reserve]

    class DottedSaga(Saga["models.OrderCtx"]):  # through a module's attribute
        steps = [Reserve]

    import types
    models = types.SimpleNamespace(OrderCtx=OrderCtx)
"""


@pytest.mark.parametrize("saga_name", ["EarlySaga", "LateSaga", "DottedSaga"])
def test_S11_S13_a_context_class_named_by_a_string_is_bound(
    saga_name: str, tmp_path: Path
) -> None:
    """``Saga["OrderCtx"]`` (a forward reference: the context class declared
    further down the module, or kept out of an import cycle) bound nothing:
    the run took any context, and a durable store refused the saga as one
    with no context class. The name is looked up in the module that declares
    the class (never evaluated): at class creation, or when the saga is made
    if the module had not yet defined it then."""
    module = _module_from(_NAMED_BY_STRING, f"named_by_string_{saga_name.lower()}")
    try:
        saga_cls = getattr(module, saga_name)
        store = SQLiteSagaStore(str(tmp_path / "sagas.db"))
        try:
            saga = saga_cls(store=store)
            assert saga_cls.definition.context_type is module.OrderCtx
            result = asyncio.run(saga.run(module.OrderCtx(), saga_id="s-1"))
            assert result.context.reserved == 1
            record = asyncio.run(store.load("s-1"))
            assert record.status is SagaStatus.COMPLETED
            with pytest.raises(TypeError, match=r"runs on OrderCtx, got OtherCtx"):
                asyncio.run(saga.run(module.OtherCtx()))
        finally:
            asyncio.run(store.close())
    finally:
        del sys.modules[module.__name__]


def test_S11_a_step_named_on_a_string_context_is_checked_against_the_saga() -> None:
    """A step bound by string to a context class the saga does not provide
    is refused like one bound to the class itself."""
    source = """
        import dataclasses
        from fallback_saga import Saga, SagaContext, SagaStepHandler

        @dataclasses.dataclass
        class OrderCtx(SagaContext):
            reserved: int = 0

        @dataclasses.dataclass
        class OtherCtx(SagaContext):
            pass

        class Reserve(SagaStepHandler["OrderCtx", str]):
            async def act(self, context):
                return self._generate_step_result("reserved")

        class WrongSaga(Saga[OtherCtx]):
            steps = [Reserve]
    """
    with pytest.raises(SagaDefinitionError, match=r"works on OrderCtx, but WrongSaga provides"):
        _module_from(source, "named_by_string_wrong")
    sys.modules.pop("named_by_string_wrong", None)


def test_S13_a_context_class_string_that_names_nothing_is_refused_by_name(
    tmp_path: Path,
) -> None:
    """A string that names nothing in the saga's module (a typo, or a class
    only imported under ``TYPE_CHECKING``) binds nothing: a durable store
    refuses the saga, saying which name was not found and where."""
    source = """
        from fallback_saga import Saga, SagaStepHandler

        class Reserve(SagaStepHandler["Nowhere", str]):
            async def act(self, context):
                return self._generate_step_result("reserved")

        class TypoSaga(Saga["OrdreCtx"]):
            steps = [Reserve]
    """
    module = _module_from(source, "named_by_string_typo")
    try:
        store = SQLiteSagaStore(str(tmp_path / "sagas.db"))
        try:
            with pytest.raises(
                TypeError,
                match=r"TypoSaga must declare its context class .*'OrdreCtx'.*"
                r"named_by_string_typo",
            ):
                module.TypoSaga(store=store)
        finally:
            asyncio.run(store.close())
        # The in-memory store keeps no journal to resume from; the unbound
        # step checks nothing, as before.
        result = asyncio.run(module.TypoSaga().run(OrderCtx()))
        assert result.status is SagaStatus.COMPLETED
    finally:
        del sys.modules[module.__name__]
