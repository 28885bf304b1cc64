"""A saga's journal name (issue 9): ``name`` on a Saga subclass, and what
``recover``/``RecoveryWorker`` accept (saga classes, built with the store, or
instances journaling to it).

The journal identifies a saga's kind by name, and recovery finds the code to
resume a saga with by that name. A class may therefore be renamed freely as
long as it keeps its ``name``; the fingerprint guards the steps, not the name.

Interrupted sagas are made in process: a step raises ``Crash``, a
``BaseException`` the executor neither journals nor unwinds, so the store is
left as a process killed inside that step would leave it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    MemorySagaStore,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaDefinitionError,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    recover,
)


class Crash(BaseException):
    """The process dies inside a step: nothing after this point is journaled."""


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = "order-1"
    trail: list[str] = dataclasses.field(default_factory=list)


class Reserve(SagaStepHandler[Ctx, None]):
    async def act(self, ctx: Ctx, /) -> Any:
        ctx.trail.append("Reserve")

    async def compensate(self, ctx: Ctx, /) -> None:
        ctx.trail.append("-Reserve")


class Charge(SagaStepHandler[Ctx, None]):
    def __init__(self, crash: bool = False) -> None:
        self.crash = crash

    async def act(self, ctx: Ctx, /) -> Any:
        if self.crash:
            raise Crash("the process died inside Charge")
        ctx.trail.append("Charge")

    async def compensate(self, ctx: Ctx, /) -> None:
        ctx.trail.append("-Charge")


class OrderSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve, Charge]


def saga_class(class_name: str, **body: Any) -> type[Saga[Ctx]]:
    """``class <class_name>(Saga[Ctx]): <body>``, as a class statement would make it."""
    return types.new_class(class_name, (Saga[Ctx],), {}, lambda ns: ns.update(body))


def crashing(cls: type) -> Any:
    """The step factory of the run that crashes inside Charge."""
    return cls(crash=True) if cls is Charge else cls()


async def eventually(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteSagaStore]:
    """The store of the "fresh process" that recovers."""
    async with SQLiteSagaStore(db) as store:
        yield store


async def crashed(db: Path, *saga_ids: str, saga_cls: type[Saga[Ctx]] = OrderSaga) -> None:
    """Run ``saga_cls`` in its own store object until Charge crashes, once per id."""
    async with SQLiteSagaStore(db) as first:
        saga = saga_cls(store=first, step_factory=crashing)
        for saga_id in saga_ids:
            with pytest.raises(Crash):
                await saga.run(Ctx(order_id=saga_id), saga_id=saga_id)
            assert (await first.load(saga_id)).status is SagaStatus.RUNNING


# --------------------------------------------------------------------------- name


async def test_the_journal_name_defaults_to_the_class_name() -> None:
    saga = OrderSaga()
    await saga.run(Ctx(), saga_id="s1")

    assert OrderSaga.name == saga.name == OrderSaga.definition.saga_name == "OrderSaga"
    assert (await saga.store.load("s1")).saga_name == "OrderSaga"


async def test_name_on_a_saga_subclass_sets_its_journal_name() -> None:
    class OrderSagaV2(Saga[Ctx]):
        name = "OrderSaga"
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    saga = OrderSagaV2()
    result = await saga.run(Ctx(), saga_id="s1")

    assert result.status is SagaStatus.COMPLETED
    assert OrderSagaV2.name == saga.name == OrderSagaV2.definition.saga_name == "OrderSaga"
    assert (await saga.store.load("s1")).saga_name == "OrderSaga"


async def test_renaming_the_class_keeping_its_name_keeps_recovery_working(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1")

    class OrderSagaV2(Saga[Ctx]):  # the class was renamed; its journal name was kept
        name = "OrderSaga"
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    report = await recover(store, [OrderSagaV2(store=store)], older_than=0)

    assert report.resumed == ["s1"], report
    record = await store.load("s1")
    assert record.status is SagaStatus.COMPLETED
    assert record.context["trail"] == ["Reserve", "Charge"]


async def test_renaming_the_class_keeping_its_name_keeps_resume_working(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1")

    class RenamedOrderSaga(Saga[Ctx]):
        name = "OrderSaga"
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    result = await RenamedOrderSaga(store=store).resume("s1")

    assert result.status is SagaStatus.COMPLETED
    assert result.context.trail == ["Reserve", "Charge"]


async def test_renaming_the_class_without_a_name_strands_its_sagas_as_before(
    db: Path, store: SQLiteSagaStore
) -> None:
    """The default is unchanged: without ``name``, the class name is the journal name."""
    await crashed(db, "s1")

    class OrderSagaV2(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    report = await recover(store, [OrderSagaV2(store=store)], older_than=0)

    assert report.skipped == [("s1", "no saga named 'OrderSaga' given")]


def test_the_saga_name_is_not_part_of_the_fingerprint() -> None:
    """The fingerprint guards resuming with changed steps; the name is stored
    (and matched) on its own. Existing fingerprints therefore stay valid."""

    class Renamed(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    class Named(Saga[Ctx]):
        name = "orders"
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    class OtherSteps(Saga[Ctx]):
        name = "OrderSaga"
        steps: ClassVar[list[Any]] = [Charge, Reserve]

    fingerprint = OrderSaga.definition.fingerprint
    assert Renamed.definition.fingerprint == fingerprint
    assert Named.definition.fingerprint == fingerprint
    assert OtherSteps.definition.fingerprint != fingerprint


def test_name_is_inherited_like_any_class_attribute() -> None:
    """Like a step's ``name``: declared on a base, it names the subclasses too
    (unless they declare their own); a class name is not inherited."""

    class Orders(Saga[Ctx]):  # an abstract base: no steps
        name = "orders"

    class OrdersV3(Orders):
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    class Renamed(OrdersV3):
        name = "orders-v4"

    class Plain(OrderSaga):  # OrderSaga's name is its class name, not declared
        pass

    assert OrdersV3.definition.saga_name == OrdersV3.name == "orders"
    assert Renamed.definition.saga_name == Renamed.name == "orders-v4"
    assert Plain.definition.saga_name == Plain.name == "Plain"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (42, "must be a str"),
        (None, "must be a str"),
        (b"OrderSaga", "must be a str"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (" OrderSaga", "leading or trailing whitespace"),
        ("Order\nSaga", "printable"),
        ("x" * 201, "at most 200 characters"),
    ],
    ids=["int", "None", "bytes", "empty", "blank", "padded", "newline", "too-long"],
)
def test_a_bad_saga_name_is_a_definition_error_at_class_creation(name: Any, said: str) -> None:
    declared = name

    def define() -> None:
        class Broken(Saga[Ctx]):
            name = declared
            steps: ClassVar[list[Any]] = [Reserve]

    with pytest.raises(SagaDefinitionError, match=said):
        define()


@pytest.mark.parametrize(
    "name",
    [42, "", "x" * 201],
    ids=["int", "empty", "too-long"],
)
def test_a_bad_saga_name_names_the_saga_class(name: Any) -> None:
    with pytest.raises(SagaDefinitionError, match=r"BrokenSaga\.name"):
        saga_class("BrokenSaga", name=name, steps=[Reserve])
    with pytest.raises(SagaDefinitionError, match=r"AbstractSaga\.name"):
        saga_class("AbstractSaga", name=name)  # checked without steps too


def test_a_saga_name_of_200_characters_is_fine() -> None:
    saga_cls = saga_class("LongName", name="x" * 200, steps=[Reserve])
    assert saga_cls.definition.saga_name == saga_cls.name == "x" * 200


# --------------------------------------------------------------------------- recover


async def test_recover_accepts_saga_classes_built_with_the_store(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", "s2")

    report = await recover(store, [OrderSaga], older_than=0)

    assert sorted(report.resumed) == ["s1", "s2"], report
    for saga_id in ("s1", "s2"):
        record = await store.load(saga_id)
        assert record.status is SagaStatus.COMPLETED
        assert record.context["trail"] == ["Reserve", "Charge"]


async def test_recover_accepts_classes_and_instances_together(
    db: Path, store: SQLiteSagaStore
) -> None:
    class Refund(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Charge, Reserve]

    await crashed(db, "order")
    await crashed(db, "refund", saga_cls=Refund)

    report = await recover(store, [OrderSaga, Refund(store=store)], older_than=0)

    assert sorted(report.resumed) == ["order", "refund"], report


async def test_recover_accepts_a_renamed_class_by_its_name(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1")

    class OrderSagaV2(Saga[Ctx]):
        name = "OrderSaga"
        steps: ClassVar[list[Any]] = [Reserve, Charge]

    report = await recover(store, [OrderSagaV2], older_than=0)

    assert report.resumed == ["s1"], report


async def test_recovery_worker_accepts_saga_classes_built_with_the_store(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", "s2")

    worker = RecoveryWorker(store, [OrderSaga], lease=30, poll=0.02, older_than=0)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: worker.stats.completed == 2)
    finally:
        await asyncio.wait_for(worker.stop(), 10)
        await task

    assert worker.stats.completed == 2
    assert {s.status for s in await store.list_sagas()} == {SagaStatus.COMPLETED}


async def test_recover_still_refuses_an_instance_built_with_another_store(
    store: SQLiteSagaStore,
) -> None:
    with pytest.raises(ValueError, match=r"OrderSaga journals to .*MemorySagaStore"):
        await recover(store, [OrderSaga(store=MemorySagaStore())])
    with pytest.raises(ValueError, match=r"OrderSaga journals to .*MemorySagaStore"):
        RecoveryWorker(store, [OrderSaga(store=MemorySagaStore())])


async def test_recover_refuses_two_sagas_of_one_name_given_as_class_and_instance(
    store: SQLiteSagaStore,
) -> None:
    with pytest.raises(ValueError, match="two sagas named 'OrderSaga'"):
        await recover(store, [OrderSaga, OrderSaga(store=store)])


class NotASaga:
    steps: ClassVar[list[Any]] = [Reserve]


class AbstractSaga(Saga[Ctx]):
    """A base without steps: there is nothing to resume with."""


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (42, "42 is not a Saga subclass or instance"),
        ("OrderSaga", "'OrderSaga' is not a Saga subclass or instance"),
        (NotASaga, "NotASaga is not a Saga subclass or instance"),
        (Saga, "Saga declares no steps"),
        (AbstractSaga, "AbstractSaga declares no steps"),
    ],
    ids=["int", "str", "other-class", "Saga", "abstract"],
)
async def test_recover_refuses_what_is_not_a_saga_class_or_instance(
    store: SQLiteSagaStore, given: Any, said: str
) -> None:
    with pytest.raises(TypeError, match=said):
        await recover(store, [given])
    with pytest.raises(TypeError, match=said):
        RecoveryWorker(store, [given])


@pytest.mark.parametrize(
    "given",
    [OrderSaga, OrderSaga(), "OrderSaga", None],
    ids=["class", "instance", "str", "None"],
)
async def test_recover_refuses_sagas_that_are_not_a_list(
    store: SQLiteSagaStore, given: Any
) -> None:
    with pytest.raises(TypeError, match="a list of Saga subclasses or instances"):
        await recover(store, given)
    with pytest.raises(TypeError, match="a list of Saga subclasses or instances"):
        RecoveryWorker(store, given)


async def test_recover_given_a_class_whose_steps_need_arguments_says_to_pass_an_instance(
    store: SQLiteSagaStore,
) -> None:
    class Injected(SagaStepHandler[Ctx, None]):
        def __init__(self, gateway: object) -> None:
            self.gateway = gateway

        async def act(self, ctx: Ctx, /) -> Any:
            return None

    class PaymentSaga(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Injected]

    with pytest.raises(TypeError, match=r"PaymentSaga\(store=store\)") as caught:
        await recover(store, [PaymentSaga])

    message = str(caught.value)
    assert "Injected" in message
    assert "step_factory=" in message
    assert isinstance(caught.value.__cause__, TypeError)
