"""S10/S12/S15: a child saga (SubSaga) whose definition changed since it
started, under the operator's override (``allow_changed_definition``).

The override given for a resume or a recovery of a parent reaches the
children that parent drives — resumed forward or unwound — as it would
reach the parent itself: a harmless change (a step added after, a step
renamed in place) is let through, a journaled step that moved is still
refused (``overridable`` false). A child's refusal names the saga that
drives it, and its advice works when it is followed.

In-process "crashes": a step raises ``Crash`` (a ``BaseException`` the
executor neither journals nor unwinds), leaving the store as a killed
process would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    Parallel,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    current_step,
    recover,
)


class Crash(BaseException):
    """The process dies here: nothing after it is journaled or unwound."""


CALLS: list[tuple[str, str]] = []  # (action, idempotency key) of every call
DIE_IN: set[str] = set()  # steps whose act dies after its effect (once each)
UNDO_DIES: set[str] = set()  # steps whose compensate dies after its effect (once each)
FAIL_IN: set[str] = set()  # steps whose act fails (a business error)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    DIE_IN.clear()
    UNDO_DIES.clear()
    FAIL_IN.clear()


@dataclasses.dataclass
class Ctx(SagaContext):
    order: str = "o"


class Recorded(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> str:
        info = current_step()
        CALLS.append(("act", info.idempotency_key))
        if info.step in DIE_IN:
            DIE_IN.discard(info.step)
            raise Crash
        if info.step in FAIL_IN:
            raise RuntimeError("no courier")
        return info.step

    async def compensate(self, ctx: Ctx, /) -> None:
        info = current_step()
        CALLS.append(("compensate", info.idempotency_key))
        if info.step in UNDO_DIES:
            UNDO_DIES.discard(info.step)
            raise Crash


class Reserve(Recorded):
    pass


class Authorize(Recorded):
    pass


class Capture(Recorded):
    pass


class CaptureFunds(Recorded):  # Capture, renamed in a later release
    pass


class Receipt(Recorded):  # added after Capture in a later release
    pass


class Ship(Recorded):
    pass


class Payment(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Authorize, Capture]


class PaymentAdded(Saga[Ctx]):
    name = "Payment"
    steps: ClassVar[list[Any]] = [Authorize, Capture, Receipt]


class PaymentRenamed(Saga[Ctx]):
    name = "Payment"
    steps: ClassVar[list[Any]] = [Authorize, CaptureFunds]


class PaymentMoved(Saga[Ctx]):
    name = "Payment"
    steps: ClassVar[list[Any]] = [Capture, Authorize]


def order_of(payment: type[Saga[Ctx]]) -> type[Saga[Ctx]]:
    class Order(Saga[Ctx]):
        name = "Order"
        steps: ClassVar[list[Any]] = [
            Reserve, SubSaga(payment, context=lambda ctx: Ctx(ctx.order), name="Pay"), Ship
        ]

    return Order


def keys(action: str) -> list[str]:
    return [key for done, key in CALLS if done == action]


async def crashed_in_child(store: SQLiteSagaStore, step: str = "Capture") -> None:
    """The first release's process died inside the child's ``step``."""
    DIE_IN.add(step)
    with pytest.raises(Crash):
        await order_of(Payment)(store=store).run(Ctx("o1"), saga_id="o1")
    CALLS.clear()
    assert (await store.load("o1")).status is SagaStatus.RUNNING
    assert (await store.load("o1/Pay")).status is SagaStatus.RUNNING


async def crashed_unwinding_child(store: SQLiteSagaStore) -> None:
    """Ship failed, the parent unwound into its child and died inside the
    compensation of the child's Capture."""
    FAIL_IN.add("Ship")
    UNDO_DIES.add("Capture")
    with pytest.raises(Crash):
        await order_of(Payment)(store=store).run(Ctx("o1"), saga_id="o1")
    CALLS.clear()
    assert (await store.load("o1")).status is SagaStatus.COMPENSATING
    assert (await store.load("o1/Pay")).status is SagaStatus.COMPENSATING


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    async with SQLiteSagaStore(tmp_path / "j.db") as opened:
        yield opened


CHANGED = [(PaymentAdded, "o1/Pay:Capture"), (PaymentRenamed, "o1/Pay:CaptureFunds")]


@pytest.mark.parametrize(("payment", "capture_key"), CHANGED, ids=["step-added", "renamed"])
async def test_S10_S15_the_override_given_to_a_parent_reaches_its_changed_child(
    store: SQLiteSagaStore, payment: type[Saga[Ctx]], capture_key: str
) -> None:
    await crashed_in_child(store)
    result = await order_of(payment)(store=store).resume("o1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED
    assert (await store.load("o1/Pay")).status is SagaStatus.COMPLETED
    added = ["o1/Pay:Receipt"] if payment is PaymentAdded else []
    assert keys("act") == [capture_key, *added, "o1:Ship"]  # Authorize not again
    assert keys("compensate") == []


@pytest.mark.parametrize(("payment", "capture_key"), CHANGED, ids=["step-added", "renamed"])
async def test_S10_S15_recover_with_the_override_finishes_a_parent_whose_child_changed(
    store: SQLiteSagaStore, payment: type[Saga[Ctx]], capture_key: str
) -> None:
    await crashed_in_child(store)
    sagas = [order_of(payment), payment]
    report = await recover(store, sagas, older_than=0, allow_changed_definition=True)
    assert report.resumed == ["o1"]
    assert report.deferred in ([], ["o1/Pay"])  # the parent drove it
    assert (await store.load("o1/Pay")).status is SagaStatus.COMPLETED
    assert keys("act")[-1] == "o1:Ship"


async def test_S5_S15_the_override_reaches_a_changed_child_its_parent_unwinds(
    store: SQLiteSagaStore,
) -> None:
    await crashed_unwinding_child(store)
    FAIL_IN.add("Ship")
    order = order_of(PaymentAdded)
    with pytest.raises(SagaFailed) as failed:
        await order(store=store).resume("o1", allow_changed_definition=True)
    assert failed.value.status is SagaStatus.COMPENSATED
    assert (await store.load("o1/Pay")).status is SagaStatus.COMPENSATED
    # Capture's compensation (in flight at the crash) again, then the rest, once each.
    assert keys("compensate") == [
        "o1/Pay:Capture:compensate", "o1/Pay:Authorize:compensate", "o1:Reserve:compensate"
    ]
    assert keys("act") == []


async def test_S12_S15_a_changed_child_is_refused_without_the_override_naming_its_parent(
    store: SQLiteSagaStore,
) -> None:
    """Without the override the parent stops (nothing is unwound, both stay
    RUNNING); the child's refusal says the parent drives it and that
    resuming the parent with the override continues it — and it does."""
    await crashed_in_child(store)
    order = order_of(PaymentAdded)
    with pytest.raises(SagaInterrupted) as stopped:
        await order(store=store).resume("o1")
    refusal = stopped.value.error
    assert isinstance(refusal, SagaDefinitionChanged)
    assert refusal.saga_id == "o1/Pay"
    assert refusal.overridable is True
    message = str(stopped.value)
    assert "the journal could not be written" not in message
    assert "'o1/Pay'" in message
    assert "child saga" in message
    assert "resume('o1', allow_changed_definition=True)" in message
    assert "recover --allow-changed-definition" in message
    assert keys("act") == []
    assert keys("compensate") == []
    assert (await store.load("o1")).status is SagaStatus.RUNNING
    assert (await store.load("o1/Pay")).status is SagaStatus.RUNNING

    # Follow the advice.
    result = await order(store=store).resume("o1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED


async def test_S12_S15_recover_skips_a_parent_whose_child_changed_saying_how_to_proceed(
    store: SQLiteSagaStore,
) -> None:
    """A recovery pass without the override skips the parent (an operator
    must decide: it is not a journal failure for the next pass), with the
    child's refusal and its advice; recover --allow-changed-definition, as
    advised, then finishes it."""
    await crashed_in_child(store)
    sagas = [order_of(PaymentAdded), PaymentAdded]
    report = await recover(store, sagas, older_than=0)
    assert report.interrupted == []
    assert [saga_id for saga_id, _ in report.skipped] == ["o1"]
    reason = report.skipped[0][1]
    assert reason.startswith("SagaDefinitionChanged: ")
    assert "'o1/Pay'" in reason
    assert "recover --allow-changed-definition" in reason
    assert keys("act") == []

    report = await recover(store, sagas, older_than=0, allow_changed_definition=True)
    assert report.resumed == ["o1"]


async def test_S10_S15_the_override_never_resumes_a_child_whose_journaled_step_moved(
    store: SQLiteSagaStore,
) -> None:
    await crashed_in_child(store)
    order = order_of(PaymentMoved)
    before = await store.load("o1/Pay")
    with pytest.raises(SagaInterrupted) as stopped:
        await order(store=store).resume("o1", allow_changed_definition=True)
    refusal = stopped.value.error
    assert isinstance(refusal, SagaDefinitionChanged)
    assert refusal.overridable is False
    message = str(stopped.value)
    assert "allow_changed_definition cannot resume it" in message
    assert "'o1'" in message  # the saga to resume with the code it was started with
    assert CALLS == []
    assert (await store.load("o1/Pay")).history == before.history
    assert (await store.load("o1")).status is SagaStatus.RUNNING

    report = await recover(store, [order, PaymentMoved], older_than=0,
                           allow_changed_definition=True)
    assert [saga_id for saga_id, _ in report.skipped] == ["o1"]
    assert CALLS == []


async def test_S10_S15_the_override_never_unwinds_a_child_whose_journaled_step_moved(
    store: SQLiteSagaStore,
) -> None:
    await crashed_unwinding_child(store)
    FAIL_IN.add("Ship")
    with pytest.raises(SagaInterrupted) as stopped:
        await order_of(PaymentMoved)(store=store).resume("o1", allow_changed_definition=True)
    assert isinstance(stopped.value.error, SagaDefinitionChanged)
    assert stopped.value.error.overridable is False
    assert keys("compensate") == []
    assert (await store.load("o1")).status is SagaStatus.COMPENSATING


async def test_S12_a_fresh_run_of_a_parent_gives_no_override_to_a_child_it_retries(
    store: SQLiteSagaStore,
) -> None:
    """The override belongs to the resume it was given to: a saga resumed
    without it refuses its changed child (the default stays strict)."""
    await crashed_in_child(store)
    with pytest.raises(SagaInterrupted):
        await order_of(PaymentRenamed)(store=store).resume("o1")
    assert CALLS == []


async def test_S12_the_worker_skips_a_changed_definition_telling_the_one_shot_way(
    store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A RecoveryWorker never overrides a changed definition (a standing
    override would resume every later changed saga unseen): it skips the
    saga and its warning says how an operator resumes it once."""
    await crashed_in_child(store)
    order = order_of(PaymentAdded)
    told = asyncio.Event()

    class Outcomes:
        def recovery_outcome(self, saga_id: str, *_: object) -> None:
            told.set()

    worker = RecoveryWorker(store, [order, PaymentAdded], older_than=0, poll=60, listen=False,
                            listeners=[Outcomes()])
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(told.wait(), 30)
        await worker.stop()
        await running
    assert worker.stats.skipped == 1
    assert keys("act") == []
    (line,) = [r.getMessage() for r in caplog.records if "skipped saga" in r.getMessage()]
    assert "o1/Pay" in line
    assert "a worker never resumes a changed definition" in line
    assert "recover --allow-changed-definition" in line
    assert "resume('o1', allow_changed_definition=True)" in line
    # The one-shot way the line gives works.
    report = await recover(store, [order, PaymentAdded], older_than=0,
                           allow_changed_definition=True)
    assert report.resumed == ["o1"]


async def test_S12_the_worker_skips_a_saga_of_its_own_changed_definition_telling_the_way(
    store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    DIE_IN.add("Capture")
    with pytest.raises(Crash):
        await Payment(store=store).run(Ctx("p1"), saga_id="p1")
    CALLS.clear()
    told = asyncio.Event()

    class Outcomes:
        def recovery_outcome(self, saga_id: str, *_: object) -> None:
            told.set()

    worker = RecoveryWorker(store, [PaymentRenamed], older_than=0, poll=60, listen=False,
                            listeners=[Outcomes()])
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(told.wait(), 30)
        await worker.stop()
        await running
    (line,) = [r.getMessage() for r in caplog.records if "skipped saga" in r.getMessage()]
    assert "a worker never resumes a changed definition" in line
    assert "--allow-changed-definition" in line
    assert CALLS == []
    result = await PaymentRenamed(store=store).resume("p1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED


class Checkout(Saga[Ctx]):  # a grandparent: Checkout -> Order -> Payment
    steps: ClassVar[list[Any]] = [
        SubSaga(order_of(Payment), context=lambda ctx: Ctx(ctx.order), name="Order")
    ]


def checkout_of(payment: type[Saga[Ctx]]) -> type[Saga[Ctx]]:
    class NewCheckout(Saga[Ctx]):
        name = "Checkout"
        steps: ClassVar[list[Any]] = [
            SubSaga(order_of(payment), context=lambda ctx: Ctx(ctx.order), name="Order")
        ]

    return NewCheckout


async def test_S15_a_grandchilds_refusal_names_the_saga_that_drives_the_family(
    store: SQLiteSagaStore,
) -> None:
    """Three generations; the grandchild's definition changed. The refusal
    reaches the top as the grandchild's, naming the top saga — and the
    override given to the top saga's resume reaches the grandchild."""
    DIE_IN.add("Capture")
    with pytest.raises(Crash):
        await Checkout(store=store).run(Ctx("c1"), saga_id="c1")
    CALLS.clear()
    checkout = checkout_of(PaymentAdded)
    with pytest.raises(SagaInterrupted) as stopped:
        await checkout(store=store).resume("c1")
    refusal = stopped.value.error
    assert isinstance(refusal, SagaDefinitionChanged)
    assert (refusal.saga_id, refusal.driven_by) == ("c1/Order/Pay", "c1")
    assert "resume('c1', allow_changed_definition=True)" in str(stopped.value)
    assert CALLS == []

    result = await checkout(store=store).resume("c1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED
    assert keys("act") == ["c1/Order/Pay:Capture", "c1/Order/Pay:Receipt", "c1/Order:Ship"]


def grouped_order_of(payment: type[Saga[Ctx]]) -> type[Saga[Ctx]]:
    class Order(Saga[Ctx]):
        name = "Order"
        steps: ClassVar[list[Any]] = [
            Reserve,
            Parallel(SubSaga(payment, context=lambda ctx: Ctx(ctx.order), name="Pay"), Ship),
        ]

    return Order


async def test_S15_the_override_reaches_a_changed_child_that_is_a_group_member(
    store: SQLiteSagaStore,
) -> None:
    DIE_IN.add("Capture")
    with pytest.raises(Crash):
        await grouped_order_of(Payment)(store=store).run(Ctx("o1"), saga_id="o1")
    CALLS.clear()
    order = grouped_order_of(PaymentAdded)
    with pytest.raises(SagaInterrupted) as stopped:
        await order(store=store).resume("o1")
    assert isinstance(stopped.value.error, SagaDefinitionChanged)
    assert stopped.value.error.driven_by == "o1"
    assert keys("compensate") == []

    result = await order(store=store).resume("o1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED
    assert "o1/Pay:Receipt" in keys("act")
    assert keys("compensate") == []


def test_S12_a_childs_refusal_survives_pickling_with_its_advice() -> None:
    """Errors cross process boundaries (a worker pool, a task queue): the
    refusal keeps its fields and its message (it could not be unpickled)."""
    import pickle

    refusal = SagaDefinitionChanged(
        "o1/Pay", "aaaa", "bbbb", ["position 1 (primary) ran 'Capture', now 'CaptureFunds'"],
        overridable=False, driven_by="o1",
    )
    copy = pickle.loads(pickle.dumps(refusal))
    assert str(copy) == str(refusal)
    assert (copy.saga_id, copy.driven_by, copy.overridable) == ("o1/Pay", "o1", False)
    assert copy.differences == refusal.differences


def sagas_added(store: Any) -> list[Saga[Any]]:
    """``--app`` of the CLI test below: the release that added Receipt."""
    return [order_of(PaymentAdded)(store=store), PaymentAdded(store=store)]


def test_S12_S15_the_recover_command_follows_a_childs_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m fallback_saga recover`` skips the parent (exit 1) with the
    child's advice; run again with --allow-changed-definition, as advised,
    it completes both."""
    from fallback_saga.cli import main

    monkeypatch.delenv("FALLBACK_SAGA_DSN", raising=False)
    monkeypatch.delenv("FALLBACK_SAGA_DB", raising=False)
    db = str(tmp_path / "j.db")

    async def crash() -> None:
        async with SQLiteSagaStore(db) as store:
            await crashed_in_child(store)

    asyncio.run(crash())
    argv = ["recover", "--db", db, "--app", f"{__name__}:sagas_added", "--older-than", "0"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "  o1: skipped" in out
    assert "resume('o1', allow_changed_definition=True)" in out
    assert "recover --allow-changed-definition" in out
    assert CALLS == []

    assert main([*argv, "--allow-changed-definition"]) == 0
    assert "  o1: completed" in capsys.readouterr().out
    assert keys("act") == ["o1/Pay:Capture", "o1/Pay:Receipt", "o1:Ship"]


@pytest.mark.parametrize(
    "lease_seconds", [0, -1, float("nan"), float("inf"), "30", True, 10**400],
    ids=["zero", "negative", "nan", "inf", "str", "bool", "beyond-a-float"],
)
def test_S11_a_child_lease_that_is_no_number_of_seconds_is_refused_naming_it(
    lease_seconds: Any,
) -> None:
    """A bool passed (``True``: a one-second lease), and an int too large for
    a float was an OverflowError naming nothing; as a worker's ``lease``."""
    with pytest.raises(ValueError, match="SubSaga lease_seconds must be a finite number of "):
        SubSaga(Payment, context=lambda ctx: Ctx(ctx.order), name="Pay",
                lease_seconds=lease_seconds)


@pytest.mark.parametrize(
    ("lease_seconds", "shown"),
    [(0, "0"), (float("nan"), "nan"), ("30", "'30'"), (True, "True"),
     (10**400, "1" + "0" * 76 + "..."), (timedelta(seconds=-1), "-1.0")],
    ids=["zero", "nan", "str", "bool", "beyond-a-float", "negative-timedelta"],
)
def test_S11_a_child_lease_refused_is_one_message_naming_subsaga_and_lease_seconds(
    lease_seconds: Any, shown: str
) -> None:
    """The check's own error was caught and re-raised in other words, the
    value written out in full (an int too large for a float: 400 digits)
    and the class that refused it named nowhere. One message now, no chain."""
    with pytest.raises(ValueError, match="must be a finite number") as refused:
        SubSaga(Payment, context=lambda ctx: Ctx(ctx.order), name="Pay",
                lease_seconds=lease_seconds)
    assert str(refused.value) == (
        f"SubSaga lease_seconds must be a finite number of seconds > 0, got {shown}"
    )
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None
