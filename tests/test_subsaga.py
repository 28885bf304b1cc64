"""S15: child sagas (SubSaga) keep every rule, on the memory, SQLite and
PostgreSQL stores; crash and resume in child processes.

A child saga runs as one step of its parent, journaled in its own record
(``"<parent id>/<step>"``). It unwinds itself when it fails; it is unwound
(its completed steps in reverse) when a later step of the parent fails; a
parent resumed mid-child resumes the child first; recovery never runs a
child apart from its parent while the parent is in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
import subsaga_app as app
from helpers_family import family_in_one_look_up
from helpers_saga import JsonStore
from journal_faults import victim_task

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaListener,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    recover,
)
from fallback_saga.retry import RetryPolicy

pytest_plugins = ["conftest_pg", "helpers_stores"]

TESTS = Path(__file__).parent


@pytest.fixture
def store(every_store: Any) -> Any:
    return every_store


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path) -> Path:
    app.LEDGER = tmp_path / "ledger.jsonl"
    app.CRASH_AT = None
    return app.LEDGER


def calls(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


def applied(ledger: Path) -> Counter[tuple[str, str]]:
    return Counter((c["action"], c["step"]) for c in calls(ledger) if c["kind"] == "apply")


async def test_S15_a_child_saga_runs_in_its_own_record_and_the_parent_goes_on(
    store: Any, ledger: Path
) -> None:
    result = await app.OrderSaga(store=store).run(app.OrderCtx(), saga_id="o1")
    assert result.status is SagaStatus.COMPLETED
    assert result.context.payment == "auth-10"  # merge wrote it into the parent
    assert [r.step_name for r in result.results] == ["Reserve", "Pay", "Ship"]
    assert result.results[1].response == app.PayCtx(amount=10, auth="auth-10")
    child = await store.load("o1/Pay")
    assert (child.saga_name, child.status) == ("PaymentSaga", SagaStatus.COMPLETED)
    assert [c["key"] for c in calls(ledger)] == [
        "o1:Reserve", "o1/Pay:Authorize", "o1/Pay:Capture", "o1:Ship"
    ]


async def test_S15_a_merge_that_fails_undoes_the_completed_child(
    store: Any, ledger: Path
) -> None:
    """The child COMPLETED, then the parent's merge raised: the parent's step
    failed, and the parent never compensates a failed step (S5) — so the
    child's effects stayed under a COMPENSATED parent. The step undoes its
    child before failing, as after a cancellation."""

    def broken_merge(parent: app.OrderCtx, child: app.PayCtx) -> None:
        raise RuntimeError("merge broke")

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            SubSaga(app.PaymentSaga, context=app.pay_context, merge=broken_merge, name="Pay"),
        ]

    with pytest.raises(SagaFailed) as info:
        await Order(store=store).run(app.OrderCtx(), saga_id="o9")
    assert info.value.status is SagaStatus.COMPENSATED
    assert (await store.load("o9/Pay")).status is SagaStatus.COMPENSATED
    assert applied(ledger) == Counter({
        ("act", "Reserve"): 1, ("act", "Authorize"): 1, ("act", "Capture"): 1,
        ("compensate", "Capture"): 1, ("compensate", "Authorize"): 1,
        ("compensate", "Reserve"): 1,
    })


async def test_S15_a_failing_child_unwinds_itself_and_the_parent_unwinds_the_rest(
    store: Any, ledger: Path
) -> None:
    class Declines(SagaStepHandler[app.PayCtx, None]):
        async def act(self, ctx: app.PayCtx, /) -> None:
            raise RuntimeError("card declined")

    class FailingPayment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [app.Authorize, Declines]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(FailingPayment, context=app.pay_context, name="Pay"), app.Ship
        ]

    with pytest.raises(SagaFailed) as info:
        await Order(store=store).run(app.OrderCtx(), saga_id="o2")
    assert info.value.status is SagaStatus.COMPENSATED
    assert info.value.failed_step == "Pay"
    assert isinstance(info.value.error, SagaFailed)  # the child's own outcome
    assert (await store.load("o2/Pay")).status is SagaStatus.COMPENSATED
    # The child undid Authorize once, itself; the parent then undid Reserve.
    assert [(c["action"], c["key"]) for c in calls(ledger)] == [
        ("act", "o2:Reserve"), ("act", "o2/Pay:Authorize"),
        ("compensate", "o2/Pay:Authorize:compensate"), ("compensate", "o2:Reserve:compensate"),
    ]


async def test_S15_a_later_failure_unwinds_the_completed_child_in_reverse(
    store: Any, ledger: Path
) -> None:
    with pytest.raises(SagaFailed) as info:
        await app.OrderSaga(store=store).run(app.OrderCtx(fail_ship=True), saga_id="o3")
    assert info.value.status is SagaStatus.COMPENSATED
    child = await store.load("o3/Pay")
    assert child.status is SagaStatus.COMPENSATED
    undone = [c["key"] for c in calls(ledger) if c["action"] == "compensate"]
    assert undone == [
        "o3/Pay:Capture:compensate", "o3/Pay:Authorize:compensate", "o3:Reserve:compensate"
    ]


async def test_S15_a_child_whose_compensation_gives_up_fails_the_parent(store: Any) -> None:
    class Stuck(SagaStepHandler[app.PayCtx, None]):
        async def act(self, ctx: app.PayCtx, /) -> None:
            return None

        async def compensate(self, ctx: app.PayCtx, /) -> None:
            raise RuntimeError("refund refused")

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [Stuck, app.Authorize]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            SubSaga(Payment, context=app.pay_context, name="Pay"), app.Ship
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(SagaFailed) as info:
        await Order(store=store, compensation_retry=fast).run(
            app.OrderCtx(fail_ship=True), saga_id="o4"
        )
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.compensation_errors) == ["Pay"]
    assert (await store.load("o4/Pay")).status is SagaStatus.FAILED


class Held(SagaStepHandler[app.PayCtx, None]):
    """A child's first step whose compensation always fails: what it did stays."""

    async def act(self, ctx: app.PayCtx, /) -> None:
        app.call("act")

    async def compensate(self, ctx: app.PayCtx, /) -> None:
        raise RuntimeError("release service down")


class Declined(SagaStepHandler[app.PayCtx, None]):
    async def act(self, ctx: app.PayCtx, /) -> None:
        raise RuntimeError("card declined")


class StuckPayment(Saga[app.PayCtx]):
    steps: ClassVar[list[Any]] = [Held, Declined]


class StuckOrder(Saga[app.OrderCtx]):
    steps: ClassVar[list[Any]] = [
        app.Reserve, SubSaga(StuckPayment, context=app.pay_context, name="Pay"), app.Ship
    ]


async def test_S15_S6_a_failing_child_whose_unwinding_gives_up_leaves_its_parent_failed(
    store: Any, ledger: Path
) -> None:
    """The child fails and its own unwinding gives up (the child ends
    FAILED: ``Held`` stays applied). The parent unwinds the steps before it,
    but it has not undone everything either: it ends FAILED too (S6, for
    the whole), with the child's step in ``compensation_errors`` — never
    COMPENSATED ("everything was undone") over a child that needs an operator."""
    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(SagaFailed) as info:
        await StuckOrder(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o8")
    assert info.value.status is SagaStatus.FAILED
    assert info.value.failed_step == "Pay"
    assert list(info.value.compensation_errors) == ["Pay"]
    assert info.value.compensation_errors["Pay"] is info.value.error  # the child's SagaFailed
    assert (await store.load("o8")).status is SagaStatus.FAILED
    assert (await store.load("o8/Pay")).status is SagaStatus.FAILED
    assert applied(ledger) == Counter({("act", "Reserve"): 1, ("act", "Held"): 1,
                                       ("compensate", "Reserve"): 1})


async def test_S15_S6_a_group_member_whose_child_gave_up_leaves_the_parent_failed(
    store: Any, ledger: Path
) -> None:
    """The same for a child run as a ``Parallel`` member: its sibling and the
    steps before the group are undone, and the parent ends FAILED."""

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Parallel(app.Ship, SubSaga(StuckPayment, context=app.pay_context, name="Pay")),
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(SagaFailed) as info:
        await Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o10")
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.branch_errors) == ["Pay"]
    assert list(info.value.compensation_errors) == ["Pay"]
    assert (await store.load("o10")).status is SagaStatus.FAILED
    assert applied(ledger)[("compensate", "Reserve")] == 1


class PayLater(SagaStepHandler[app.OrderCtx, str]):
    """A fallback for a payment child: pays on account."""

    async def act(self, ctx: app.OrderCtx, /) -> str:
        app.call("act")
        return "on account"

    async def compensate(self, ctx: app.OrderCtx, /) -> None:
        app.call("compensate")


class DeclinedLater(SagaStepHandler[app.OrderCtx, str]):
    """A fallback for a payment child that is declined too."""

    async def act(self, ctx: app.OrderCtx, /) -> str:
        raise RuntimeError("account closed")


async def test_S15_S6_a_primary_child_that_gave_up_leaves_its_parent_failed_though_it_fell_back(
    store: Any, ledger: Path
) -> None:
    """The primary of a Fallback is a child whose own unwinding gives up (it
    ends FAILED: ``Held`` stays applied); the fallback then fails too. The
    parent unwinds what it can, but cannot end COMPENSATED over the child's
    leftovers: FAILED, with the primary's step in ``compensation_errors``."""

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Fallback(SubSaga(StuckPayment, context=app.pay_context, name="Pay"), DeclinedLater),
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(SagaFailed) as info:
        await Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o12")
    assert info.value.failed_step == "DeclinedLater"
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.compensation_errors) == ["Pay"]
    assert (await store.load("o12")).status is SagaStatus.FAILED
    assert (await store.load("o12/Pay")).status is SagaStatus.FAILED
    assert applied(ledger)[("compensate", "Reserve")] == 1


async def test_S15_S6_a_group_members_primary_child_that_gave_up_leaves_the_parent_failed(
    store: Any, ledger: Path
) -> None:
    """The same for a Fallback run as a ``Parallel`` member: its primary's
    child gave up, its fallback failed; the sibling and the steps before the
    group are undone, and the parent ends FAILED."""

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Parallel(
                app.Ship,
                Fallback(
                    SubSaga(StuckPayment, context=app.pay_context, name="Pay"), DeclinedLater
                ),
            ),
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(SagaFailed) as info:
        await Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o14")
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.branch_errors) == ["DeclinedLater"]
    assert list(info.value.compensation_errors) == ["Pay"]
    assert (await store.load("o14")).status is SagaStatus.FAILED
    assert applied(ledger)[("compensate", "Reserve")] == 1


async def test_S15_S6_a_child_that_gave_up_under_a_fallback_that_completed_is_not_forgotten(
    store: Any, ledger: Path
) -> None:
    """The fallback completes after the primary's child gave up: the parent
    goes on (the step did its job). A later step fails: the unwinding cannot
    undo the child's leftovers, so the parent ends FAILED, not COMPENSATED —
    also when it is resumed from its journal after the fallback completed."""

    class Stop(BaseException):
        """The process dies after the fallback completed."""

    stops = [True]

    class ShipDies(app.Ship):
        async def act(self, ctx: app.OrderCtx, /) -> str:
            if stops[0]:
                stops[0] = False
                raise Stop
            raise RuntimeError("no courier")  # the resumed Ship is refused: unwind

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Fallback(SubSaga(StuckPayment, context=app.pay_context, name="Pay"), PayLater),
            ShipDies,
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(Stop):
        await Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o13")
    with pytest.raises(SagaFailed) as info:
        await Order(store=store, compensation_retry=fast).resume("o13")
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.compensation_errors) == ["Pay"]
    assert (await store.load("o13")).status is SagaStatus.FAILED


async def test_S15_S8_a_cancelled_parent_whose_child_gave_up_ends_failed(
    store: Any, ledger: Path
) -> None:
    """The caller is cancelled while the child fails; the child's unwinding
    (shielded) gives up: the cancelled parent ends FAILED, not COMPENSATED."""
    victim: list[asyncio.Task[Any]] = []

    class DeclinedAsCancelled(SagaStepHandler[app.PayCtx, None]):
        async def act(self, ctx: app.PayCtx, /) -> None:
            victim[0].cancel()  # lands while the child unwinds
            raise RuntimeError("card declined")

    class HeldRemotely(Held):
        async def compensate(self, ctx: app.PayCtx, /) -> None:
            # A call that waits (the release service's answer): where the
            # caller's cancellation is delivered, on every Python (3.12+
            # starts the unwinding eagerly; one that never waited would be
            # over before the cancellation could reach the caller).
            await asyncio.sleep(0)
            await super().compensate(ctx)

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [HeldRemotely, DeclinedAsCancelled]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(Payment, context=app.pay_context, name="Pay"), app.Ship
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    task = victim_task(
        Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o11"),
        victim.append,
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.load("o11/Pay")).status is SagaStatus.FAILED
    assert (await store.load("o11")).status is SagaStatus.FAILED
    assert applied(ledger)[("compensate", "Reserve")] == 1


async def test_S15_S8_S6_a_member_child_left_failed_as_the_caller_cancels_leaves_the_parent_failed(
    store: Any, ledger: Path
) -> None:
    """A group member's child fails and its unwinding gives up (FAILED); the
    group stops its sibling, and the caller is cancelled meanwhile. The
    cancellation outranks the members' errors — but not what the child
    left: the parent ends FAILED, never COMPENSATED over the child's
    leftovers (found by the cancellation hunt, seeds 2983 and 3081)."""
    victim: list[asyncio.Task[Any]] = []

    class Slow(SagaStepHandler[app.OrderCtx, None]):
        async def act(self, ctx: app.OrderCtx, /) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                victim[0].cancel()  # the caller cancels while the group stops
                raise

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Parallel(Slow, SubSaga(StuckPayment, context=app.pay_context, name="Pay")),
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    task = victim_task(
        Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o14"),
        victim.append,
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.load("o14/Pay")).status is SagaStatus.FAILED
    assert (await store.load("o14")).status is SagaStatus.FAILED
    assert applied(ledger)[("compensate", "Reserve")] == 1


class Crash(BaseException):
    """The process dies here: nothing after it is unwound or journaled."""


async def test_S15_S10_a_parent_resumed_mid_unwinding_after_its_child_gave_up_ends_failed(
    tmp_path: Path, ledger: Path
) -> None:
    """The process dies while the parent unwinds (after the child ended
    FAILED): the resumed unwinding still ends FAILED — the journal says the
    child's step was left undone, the resume does not forget it."""
    crash = [True]

    class CrashingReserve(app.Reserve):
        async def compensate(self, ctx: app.OrderCtx, /) -> None:
            if crash[0]:
                crash[0] = False
                raise Crash
            await super().compensate(ctx)

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            CrashingReserve, SubSaga(StuckPayment, context=app.pay_context, name="Pay"),
            app.Ship,
        ]

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Order(store=store, compensation_retry=fast).run(app.OrderCtx(), saga_id="o9")
        assert (await store.load("o9")).status is SagaStatus.COMPENSATING
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(SagaFailed) as info:
            await Order(store=store, compensation_retry=fast).resume("o9")
        assert (await store.load("o9")).status is SagaStatus.FAILED
    assert info.value.status is SagaStatus.FAILED
    assert list(info.value.compensation_errors) == ["Pay"]
    assert applied(ledger) == Counter({("act", "CrashingReserve"): 1, ("act", "Held"): 1,
                                       ("compensate", "CrashingReserve"): 1})


async def test_S15_a_child_saga_can_be_a_member_of_a_parallel_group(
    store: Any, ledger: Path
) -> None:
    @dataclasses.dataclass
    class Ctx(SagaContext):
        amount: int = 5
        payment: str | None = None
        shipped: bool = False

    class Pack(SagaStepHandler[Ctx, None]):
        async def act(self, ctx: Ctx, /) -> None:
            ctx.shipped = True

    def merge(parent: Ctx, child: app.PayCtx) -> None:
        parent.payment = child.auth

    class Order(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [
            Parallel(Pack, SubSaga(app.PaymentSaga, context=lambda p: app.PayCtx(p.amount),
                                   merge=merge, name="Pay")),
        ]

    result = await Order(store=store).run(Ctx(), saga_id="o6")
    assert (result.context.payment, result.context.shipped) == ("auth-5", True)
    assert (await store.load("o6/Pay")).status is SagaStatus.COMPLETED


async def test_S13_a_child_whose_journal_fails_stops_the_parent_without_unwinding(
    ledger: Path,
) -> None:
    class Refusing(JsonStore):
        async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
            if saga_id.endswith("/Pay") and args[0] and args[0][-1].step == "Capture":
                raise OSError("disk full")
            await super().append(saga_id, *args, **kwargs)

    store = Refusing()
    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [app.Authorize, app.Capture]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(Payment(store=store, journal_retry=fast),
                                 context=app.pay_context, name="Pay"),
        ]

    with pytest.raises(SagaInterrupted):
        await Order(store=store).run(app.OrderCtx(), saga_id="o7")
    assert [c["action"] for c in calls(ledger)] == ["act", "act"]  # nothing undone


# --------------------------------------------------------------------------- cancellation


class CancelsAtTheChildsWrite(SQLiteSagaStore):
    """Cancels the caller's task as the child's write carrying ``status`` is
    submitted: the cancellation lands while that write is in flight."""

    status: SagaStatus = SagaStatus.COMPLETED
    victim: asyncio.Task[Any] | None = None

    def submit_append(self, saga_id: str, entries: Any, status: Any, *args: Any) -> Any:
        if saga_id.endswith("/Pay") and status is self.status and self.victim is not None:
            self.victim.cancel()
            self.victim = None
        return super().submit_append(saga_id, entries, status, *args)


async def test_S15_S8_a_child_that_completes_as_its_parent_is_cancelled_is_undone(
    tmp_path: Path, ledger: Path
) -> None:
    """The caller is cancelled while the child's completion is written: the
    write lands (the child is COMPLETED), the parent's step fails with the
    cancellation — so the child, as any child whose step fails, unwinds
    itself before the parent unwinds the steps before it. Nothing the
    saga did is left applied, and recovery finds nothing to do."""
    async with CancelsAtTheChildsWrite(tmp_path / "j.db") as store:
        task = asyncio.create_task(app.OrderSaga(store=store).run(app.OrderCtx(), saga_id="c1"))
        store.victim = task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.load("c1")).status is SagaStatus.COMPENSATED
        assert (await store.load("c1/Pay")).status is SagaStatus.COMPENSATED
        assert [(c["action"], c["key"]) for c in calls(ledger)] == [
            ("act", "c1:Reserve"), ("act", "c1/Pay:Authorize"), ("act", "c1/Pay:Capture"),
            ("compensate", "c1/Pay:Capture:compensate"),
            ("compensate", "c1/Pay:Authorize:compensate"),
            ("compensate", "c1:Reserve:compensate"),
        ]
        assert (await recover(store, [app.OrderSaga, app.PaymentSaga], older_than=0)).total == 0


async def test_S15_S8_a_child_cancelled_mid_way_is_undone_once(
    tmp_path: Path, ledger: Path
) -> None:
    """The cancellation lands while one of the child's own writes is in
    flight (Capture's STARTED): the child unwinds itself, and nothing is
    compensated twice."""
    async with CancelsAtTheChildsWrite(tmp_path / "j.db") as store:
        store.status = None  # type: ignore[assignment]  # an append that changes no status
        task = asyncio.create_task(app.OrderSaga(store=store).run(app.OrderCtx(), saga_id="c2"))
        store.victim = task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.load("c2")).status is SagaStatus.COMPENSATED
        assert (await store.load("c2/Pay")).status is SagaStatus.COMPENSATED
        assert [(c["action"], c["key"]) for c in calls(ledger)] == [
            ("act", "c2:Reserve"), ("act", "c2/Pay:Authorize"),
            ("compensate", "c2/Pay:Authorize:compensate"),
            ("compensate", "c2:Reserve:compensate"),
        ]


class RefusesTheChildsUnwinding(CancelsAtTheChildsWrite):
    """As ``CancelsAtTheChildsWrite`` at the child's completion; then every
    write of the child is refused until ``heal`` (its disk is full)."""

    refusing = False

    def submit_append(self, saga_id: str, entries: Any, status: Any, *args: Any) -> Any:
        if self.refusing and saga_id.endswith("/Pay"):
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(OSError("disk full"))
            return refused
        if saga_id.endswith("/Pay") and status is SagaStatus.COMPLETED:
            self.refusing = True
        return super().submit_append(saga_id, entries, status, *args)

    async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        if self.refusing and saga_id.endswith("/Pay"):
            raise OSError("disk full")
        await super().append(saga_id, *args, **kwargs)


async def test_S15_S13_a_cancelled_childs_unwinding_refused_by_its_journal_stops_the_parent(
    tmp_path: Path, ledger: Path
) -> None:
    """The child completed as its parent was cancelled, and its journal then
    refuses its unwinding: the parent must not unwind as if the child were
    undone (it would end COMPENSATED over a COMPLETED child). It stops
    without unwinding, and recovery finishes both from their journals —
    consistently: every effect applied once, nothing half done."""
    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    async with RefusesTheChildsUnwinding(tmp_path / "j.db") as store:
        order = app.OrderSaga(store=store, journal_retry=fast)
        task = asyncio.create_task(order.run(app.OrderCtx(), saga_id="c3"))
        store.victim = task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.load("c3")).status is SagaStatus.RUNNING  # left for recovery
        assert (await store.load("c3/Pay")).status is SagaStatus.COMPLETED
        assert [c["action"] for c in calls(ledger)] == ["act", "act", "act"]  # nothing undone
        store.refusing = False
        report = await recover(store, [app.OrderSaga, app.PaymentSaga], older_than=0)
        assert report.total >= 1
        parent = await store.load("c3")
        child = await store.load("c3/Pay")
    assert (parent.status, child.status) == (SagaStatus.COMPLETED, SagaStatus.COMPLETED)
    assert applied(ledger) == Counter({("act", "Reserve"): 1, ("act", "Authorize"): 1,
                                       ("act", "Capture"): 1, ("act", "Ship"): 1})


async def test_S15_S13_a_child_another_worker_drives_stops_the_parent_without_unwinding(
    tmp_path: Path, ledger: Path
) -> None:
    """A parent resumed at its child step finds the child leased by another
    worker beyond the wait (``SagaBusy``): that worker may still complete
    the child, so the parent must not unwind the steps before it as if the
    step had failed. It stops, left for recovery; once the lease is gone,
    a resume finishes both."""
    dies = [True]

    class DyingAuthorize(app.Authorize):
        async def act(self, ctx: app.PayCtx, /) -> str:
            if dies[0]:
                dies[0] = False
                raise Crash
            return await super().act(ctx)

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [DyingAuthorize, app.Capture]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            SubSaga(Payment, context=app.pay_context, name="Pay", lease_seconds=0.05),
        ]

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Order(store=store).run(app.OrderCtx(), saga_id="b1")
        other = await store.claim_saga("b1/Pay", owner="another worker", lease_seconds=60)
        with pytest.raises(SagaInterrupted) as stopped:
            await Order(store=store).resume("b1")
        assert type(stopped.value.error).__name__ == "SagaBusy"
        assert (await store.load("b1")).status is SagaStatus.RUNNING
        assert [c["action"] for c in calls(ledger)] == ["act"]  # Reserve; nothing undone
        await store.release(other)
        result = await Order(store=store).resume("b1")
        assert result.status is SagaStatus.COMPLETED
        assert (await store.load("b1/Pay")).status is SagaStatus.COMPLETED
    assert applied(ledger) == Counter({("act", "Reserve"): 1, ("act", "DyingAuthorize"): 1,
                                       ("act", "Capture"): 1})


async def test_S15_S13_unwinding_a_child_another_worker_drives_stops_for_recovery(
    tmp_path: Path, ledger: Path
) -> None:
    """The parent unwinds (a later step failed) and the completed child is
    leased by another worker beyond the wait: the unwinding stops there,
    left for recovery — not a compensation that gave up (FAILED) — and a
    resume once the lease is gone compensates the child."""

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            SubSaga(app.PaymentSaga, context=app.pay_context, name="Pay", lease_seconds=0.05),
            app.Ship,
        ]

    class Lease:
        held: Any = None

    async with SQLiteSagaStore(tmp_path / "j.db") as store:

        class Ship(app.Ship):
            async def act(self, ctx: app.OrderCtx, /) -> str:
                Lease.held = await store.claim_saga(
                    "b2/Pay", owner="another worker", lease_seconds=60
                )
                raise RuntimeError("no courier")

        class ShipFails(Order):
            steps: ClassVar[list[Any]] = [*Order.steps[:2], Ship]

        class Calls:
            started: list[str] = []
            finished: list[str] = []

            def step_call_started(self, call: Any) -> None:
                self.started.append(f"{call.action} {call.step}")

            def step_call_finished(self, call: Any, error: BaseException | None) -> None:
                self.finished.append(f"{call.action} {call.step}")

        with pytest.raises(SagaInterrupted) as stopped:
            await ShipFails(store=store, listeners=[Calls()]).run(app.OrderCtx(), saga_id="b2")
        assert type(stopped.value.error).__name__ == "SagaBusy"
        # Every call reported as started (the child's too: it has the parent's
        # listeners) is reported as finished, the stopped one included.
        assert Counter(Calls.started) == Counter(Calls.finished)
        assert Calls.started[-1] == "compensate Pay"
        assert (await store.load("b2")).status is SagaStatus.COMPENSATING
        assert (await store.load("b2/Pay")).status is SagaStatus.COMPLETED
        await store.release(Lease.held)
        with pytest.raises(SagaFailed) as failed:
            await ShipFails(store=store).resume("b2")
        assert failed.value.status is SagaStatus.COMPENSATED
        assert (await store.load("b2/Pay")).status is SagaStatus.COMPENSATED
    undone = [c["key"] for c in calls(ledger) if c["action"] == "compensate"]
    assert undone == [
        "b2/Pay:Capture:compensate", "b2/Pay:Authorize:compensate", "b2:Reserve:compensate"
    ]


class Script:
    """What a participant's call does once it took effect: on its first
    ``dies`` calls the process dies (``Crash``); if ``holds``, a later call
    then waits in the call (``inside`` set) until ``release`` is set."""

    def __init__(self, *, dies: int = 0, holds: bool = True) -> None:
        self.dies = dies
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        if not holds:
            self.release.set()

    async def after_effect(self) -> None:
        if self.dies:
            self.dies -= 1
            raise Crash  # after the effect: the process dies
        if not self.release.is_set():
            self.inside.set()
            await self.release.wait()


def scripted_capture(script: Script) -> type[app.Capture]:
    """``app.Capture`` (journaled as ``Capture``) following ``script``."""

    class Capture(app.Capture):
        async def act(self, ctx: app.PayCtx, /) -> str:
            response = await super().act(ctx)
            await script.after_effect()
            return response

    return Capture


def paying_order(*payment_steps: Any, reserve: Any = app.Reserve) -> tuple[type[Any], type[Any]]:
    """``Payment`` (``payment_steps``) and ``Order`` (``reserve``, then a
    ``SubSaga`` of the payment named ``Pay``)."""

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = list(payment_steps)

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            reserve, SubSaga(Payment, context=app.pay_context, name="Pay")
        ]

    return Payment, Order


class ChildEvents(SagaListener):
    """The saga-level and step-level events told about each saga."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.events.append(("started", saga_id))

    def saga_resumed(self, saga_id: str, saga_name: str) -> None:
        self.events.append(("resumed", saga_id))

    def saga_finished(self, saga_id: str, saga_name: str, status: SagaStatus,
                      error: BaseException | None) -> None:
        self.events.append(("finished", saga_id, status))

    def saga_interrupted(self, saga_id: str, saga_name: str, status: SagaStatus | None,
                         error: BaseException | None) -> None:
        self.events.append(("interrupted", saga_id, status))

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self.events.append(("step", saga_id, step))


async def test_S13_a_resumed_parent_reports_its_child_resumed_not_started_and_interrupted(
    tmp_path: Path, ledger: Path
) -> None:
    """The process dies inside the child; the parent is resumed. Listeners
    are told the child was resumed and finished — not that a run of it
    started a step that never ran again and was interrupted with nothing
    journaled (a false ``saga_interrupted``: a WARNING in the logs and an
    interrupted run in the metrics, at every such resume)."""
    capture = Script(dies=1, holds=False)
    _, Order = paying_order(app.Authorize, scripted_capture(capture))
    told = ChildEvents()
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Order(store=store).run(app.OrderCtx(), saga_id="r1")
        result = await Order(store=store, listeners=[told]).resume("r1")
    assert result.status is SagaStatus.COMPLETED
    child = [event[0] if event[0] != "step" else event for event in told.events
             if event[1] == "r1/Pay"]
    assert child == ["started", "resumed", ("step", "r1/Pay", "Capture"), "finished"]


async def test_a_child_saga_tells_the_listeners_of_the_parent_instance_that_runs_it(
    tmp_path: Path, ledger: Path
) -> None:
    """Two instances of one parent saga class, with listeners of their own,
    on one store: each is told about its own child saga (the ``SubSaga``
    step is shared by the class, and built its child once per store)."""
    _, Order = paying_order(app.Authorize)
    first, second = ChildEvents(), ChildEvents()
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        await Order(store=store, listeners=[first]).run(app.OrderCtx(), saga_id="a1")
        await Order(store=store, listeners=[second]).run(app.OrderCtx(), saga_id="a2")
    assert {event[1] for event in first.events} == {"a1", "a1/Pay"}
    assert {event[1] for event in second.events} == {"a2", "a2/Pay"}


async def _crash_then_cancelled_resume(tmp_path: Path, payment: type[Any], saga_id: str) -> None:
    """``[Reserve, SubSaga(payment), Ship]`` dies inside the child; its
    resume is cancelled at its first write, before it calls the child step
    again. Both end COMPENSATED and recovery finds nothing left to do."""
    from journal_faults import FaultyRecoverableStore

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(payment, context=app.pay_context, name="Pay"), app.Ship
        ]

    async with SQLiteSagaStore(tmp_path / "j.db") as inner:
        with pytest.raises(Crash):
            await Order(store=inner).run(app.OrderCtx(), saga_id=saga_id)
        store = FaultyRecoverableStore(inner, at=0, kind="cancel")  # the resume's first write
        task = victim_task(Order(store=store).resume(saga_id), store.mark)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await inner.load(saga_id)).status is SagaStatus.COMPENSATED
        assert (await inner.load(f"{saga_id}/Pay")).status is SagaStatus.COMPENSATED
        assert (await recover(inner, [Order, payment], older_than=0)).total == 0


def compensations(ledger: Path) -> int:
    return [c["action"] for c in calls(ledger)].count("compensate")


async def _left_to_recovery_then_finished(
    store: Any, ledger: Path, saga_id: str, order: type[Any], payment: type[Any]
) -> None:
    """Parent and child were left RUNNING for recovery, nothing undone; a
    recovery pass then finishes both forward, still undoing nothing."""
    assert (await store.load(saga_id)).status is SagaStatus.RUNNING
    assert (await store.load(f"{saga_id}/Pay")).status is SagaStatus.RUNNING
    assert compensations(ledger) == 0
    report = await recover(store, [order, payment], older_than=0)
    assert report.resumed == [saga_id]
    assert (await store.load(f"{saga_id}/Pay")).status is SagaStatus.COMPLETED
    assert compensations(ledger) == 0


async def test_S5_S15_a_child_left_mid_step_by_a_crash_is_undone_when_its_parent_unwinds(
    tmp_path: Path, ledger: Path
) -> None:
    """The process dies inside the child's Authorize (which took effect). The
    parent's resume is cancelled before it calls its child step again: the
    parent unwinds, and its child step — whose child a crashed run left
    RUNNING — is compensated, Authorize included (its call may have taken
    effect). Nothing stays applied; recovery finds nothing to do."""

    class DyingAuthorize(app.Authorize):
        async def act(self, ctx: app.PayCtx, /) -> str:
            await super().act(ctx)
            raise Crash  # after the effect: the process dies

    payment, _ = paying_order(DyingAuthorize, app.Capture)
    await _crash_then_cancelled_resume(tmp_path, payment, "u1")
    assert [(c["action"], c["key"]) for c in calls(ledger)] == [
        ("act", "u1:Reserve"), ("act", "u1/Pay:DyingAuthorize"),
        ("compensate", "u1/Pay:DyingAuthorize:compensate"),
        ("compensate", "u1:Reserve:compensate"),
    ]


async def test_S5_S15_a_child_left_mid_group_by_a_crash_is_undone_when_its_parent_unwinds(
    tmp_path: Path, ledger: Path
) -> None:
    """The process dies while both members of the child's group are in their
    calls (each took effect). The parent's resume is cancelled before it
    calls its child step again: the parent unwinds its child, and both
    crashed calls are compensated — every one the crash left open, not only
    the first."""
    capture = Script()  # in its call (it never answers) when the process dies

    class DyingAuthorize(app.Authorize):
        async def act(self, ctx: app.PayCtx, /) -> str:
            await super().act(ctx)
            await capture.inside.wait()
            raise Crash  # after the effect, with Capture in flight: the process dies

    payment, _ = paying_order(Parallel(DyingAuthorize, scripted_capture(capture)))
    await _crash_then_cancelled_resume(tmp_path, payment, "g1")
    undone = [c["key"] for c in calls(ledger) if c["action"] == "compensate"]
    assert sorted(undone[:2]) == ["g1/Pay:Capture:compensate", "g1/Pay:DyingAuthorize:compensate"]
    assert undone[2:] == ["g1:Reserve:compensate"]


async def test_S15_a_child_cancelled_in_flight_as_a_group_member_undoes_its_call_in_flight(
    store: Any, ledger: Path
) -> None:
    """A group member cancelled in flight has an uncertain effect and is
    compensated (a sibling failed). When the member is a child saga, the
    uncertain effect is its step in flight: that call is compensated too,
    as a plain member's would be — not only the child's completed steps."""
    charging = asyncio.Event()

    class SlowCapture(app.Capture):
        async def act(self, ctx: app.PayCtx, /) -> str:
            response = await super().act(ctx)  # the participant took effect
            charging.set()
            await asyncio.Event().wait()  # its answer never comes: cancelled
            return response

    class Declined(SagaStepHandler[app.OrderCtx, None]):
        async def act(self, ctx: app.OrderCtx, /) -> None:
            await charging.wait()
            raise RuntimeError("declined")

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [app.Authorize, SlowCapture]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            Parallel(SubSaga(Payment, context=app.pay_context, name="Pay"), Declined)
        ]

    with pytest.raises(SagaFailed) as failed:
        await Order(store=store).run(app.OrderCtx(), saga_id="m1")
    assert failed.value.status is SagaStatus.COMPENSATED
    assert (await store.load("m1/Pay")).status is SagaStatus.COMPENSATED
    # Every effect applied is compensated: the child's call in flight included.
    assert applied(ledger) == Counter({
        ("act", "Authorize"): 1, ("act", "SlowCapture"): 1,
        ("compensate", "SlowCapture"): 1, ("compensate", "Authorize"): 1,
    })


async def test_S13_S15_a_child_the_store_cannot_read_stops_the_parent_unwound_by_none(
    tmp_path: Path, ledger: Path
) -> None:
    """The process died inside the child. When the parent resumes, reading
    the child fails (the store is down for a moment). The parent must not
    unwind over a child it could not reach — the child would be left
    RUNNING under a COMPENSATED parent, and recovery would later complete
    it: the parent stops (``SagaInterrupted``), both are left for recovery,
    which finishes them forward."""
    from fallback_saga import SagaStoreError

    payment, order = paying_order(app.Authorize, scripted_capture(Script(dies=1, holds=False)))

    class Blinking(SQLiteSagaStore):
        fail_child_load = True

        async def load(self, saga_id: str) -> Any:
            if saga_id.endswith("/Pay") and self.fail_child_load:
                self.fail_child_load = False
                raise SagaStoreError("the database is unreachable")
            return await super().load(saga_id)

    async with Blinking(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await order(store=store).run(app.OrderCtx(), saga_id="r1")
        with pytest.raises(SagaInterrupted):
            await order(store=store).resume("r1")
        await _left_to_recovery_then_finished(store, ledger, "r1", order, payment)


async def test_S13_S15_a_group_its_journal_stops_leaves_its_child_member_to_recovery(
    tmp_path: Path, ledger: Path
) -> None:
    """A group of a child saga (inside its Capture) and Ship. Ship's
    completion cannot be journaled: the run stops for recovery, unwinding
    nothing (S13), and stops the child member on the way. The child must
    stop the same way — undone, it would leave recovery a COMPENSATED child
    under a parent in which nothing failed, and the parent would unwind."""
    from fallback_saga import SagaStoreError, StepStatus

    capture = Script()  # in its call when the journal fails

    class ShipSoon(SagaStepHandler[app.OrderCtx, str]):
        async def act(self, ctx: app.OrderCtx, /) -> str:
            await capture.inside.wait()
            app.call("act")
            return "shipped"

        async def compensate(self, ctx: app.OrderCtx, /) -> None:
            app.call("compensate")

    class Payment(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [app.Authorize, scripted_capture(capture)]

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Parallel(SubSaga(Payment, context=app.pay_context, name="Pay"), ShipSoon),
        ]

    class Refusing(SQLiteSagaStore):
        refuse = True

        async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
            if self.refuse and any(
                e.step == "ShipSoon" and e.status is StepStatus.COMPLETED for e in args[0]
            ):
                raise SagaStoreError("the disk is full")
            await super().append(saga_id, *args, **kwargs)

    fast = RetryPolicy(attempts=2, delay=0.0, max_delay=0.0, jitter=0.0)
    async with Refusing(tmp_path / "j.db") as store:
        with pytest.raises(SagaInterrupted):
            await Order(store=store, journal_retry=fast).run(app.OrderCtx(), saga_id="g2")
        store.refuse = False
        capture.release.set()
        await _left_to_recovery_then_finished(store, ledger, "g2", Order, Payment)


async def test_S13_S15_a_child_fenced_out_mid_run_stops_its_parent_unwound_by_none(
    tmp_path: Path, ledger: Path
) -> None:
    """A recovery pass claims the child while its parent's first run is
    inside it (a step slower than ``older_than``), and defers it: the
    child's fencing token has moved on, so its next write is refused
    (``LeaseLost``). That says nothing of how far the child got: the parent
    stops for recovery (``SagaInterrupted`` — not ``LeaseLost``, its own
    lease is not lost), unwinding nothing, and recovery finishes both."""
    from fallback_saga import LeaseLost

    capture = Script()
    payment, order = paying_order(app.Authorize, scripted_capture(capture))

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        running = asyncio.create_task(order(store=store).run(app.OrderCtx(), saga_id="f1"))
        await asyncio.wait_for(capture.inside.wait(), 10)
        # A recovery pass claims the child, finds its parent in flight, defers it.
        lease = await store.claim_saga("f1/Pay", owner="a recovery pass", lease_seconds=30)
        await store.defer(lease, 30)
        capture.release.set()
        with pytest.raises(SagaInterrupted) as stopped:
            await running
        assert isinstance(stopped.value.error, LeaseLost)
        assert stopped.value.error.saga_id == "f1/Pay"
        await _left_to_recovery_then_finished(store, ledger, "f1", order, payment)


async def test_S13_S15_a_resumed_parent_whose_child_is_fenced_out_is_interrupted_not_lost(
    tmp_path: Path, ledger: Path
) -> None:
    """The same under a recovery pass: the parent's own lease is intact, so
    the pass reports it interrupted (and releases it for the next pass) —
    not lost, which would keep it leased for nothing."""
    from fallback_saga import Lease

    capture = Script(dies=1)
    _, order = paying_order(app.Authorize, scripted_capture(capture))

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await order(store=store).run(app.OrderCtx(), saga_id="f2")
        passing = asyncio.create_task(recover(store, [order], older_than=0))
        await asyncio.wait_for(capture.inside.wait(), 10)
        # The child's lease runs out (its holder paused, say) and another
        # worker takes the child over: the resumed parent's child is fenced out.
        held = await store.lease_state("f2/Pay")
        assert held.owner is not None
        await store.release(Lease("f2/Pay", held.owner, held.token, held.expires_at))
        await store.claim_saga("f2/Pay", owner="another worker", lease_seconds=30)
        capture.release.set()
        report = await passing
        parent = await store.lease_state("f2")
    assert [saga_id for saga_id, _ in report.interrupted] == ["f2"]
    assert parent.owner is None  # released: the next pass need not wait for it


async def test_S13_S15_a_member_whose_child_is_fenced_out_stops_its_siblings_children_too(
    tmp_path: Path, ledger: Path
) -> None:
    """Two child sagas run side by side in a group, both inside a step. A
    recovery pass claims and defers one (its parent is in flight): that
    child's next write is refused, so the parent stops for recovery — and
    the group cancels the other member on the way. Its child must stop the
    same way, not undo itself: nothing failed, and recovery finishes all."""
    first, second = Script(), Script()
    pay, _ = paying_order(app.Authorize, scripted_capture(first))

    class PaymentAgain(Saga[app.PayCtx]):
        steps: ClassVar[list[Any]] = [app.Authorize, scripted_capture(second)]

    pay_again = PaymentAgain

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve,
            Parallel(
                SubSaga(pay, context=app.pay_context, name="Pay"),
                SubSaga(pay_again, context=app.pay_context, name="PayAgain"),
            ),
        ]

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        running = asyncio.create_task(Order(store=store).run(app.OrderCtx(), saga_id="s2"))
        await asyncio.wait_for(asyncio.gather(first.inside.wait(), second.inside.wait()), 10)
        lease = await store.claim_saga("s2/PayAgain", owner="a recovery pass", lease_seconds=30)
        await store.defer(lease, 30)
        second.release.set()  # its next write is refused: LeaseLost
        with pytest.raises(SagaInterrupted):
            await running
        assert (await store.load("s2/Pay")).status is SagaStatus.RUNNING
        assert compensations(ledger) == 0
        first.release.set()
        report = await recover(store, [Order, pay, pay_again], older_than=0)
        assert report.resumed == ["s2"]
        assert (await store.load("s2/Pay")).status is SagaStatus.COMPLETED
        assert (await store.load("s2/PayAgain")).status is SagaStatus.COMPLETED
    assert compensations(ledger) == 0


async def test_S5_S10_a_members_child_resumed_mid_step_and_cancelled_undoes_that_step_once(
    tmp_path: Path, ledger: Path
) -> None:
    """The process died inside the child's Capture (a group member). On the
    resume, Capture is called again, and a sibling fails while it is in its
    call: the child's call is cancelled in flight. It is compensated — once:
    it is both the call a crashed run was making and a member's child's call
    cancelled in flight, one call on the compensation stack, not two (which
    compensated it twice and left a journal no resume could read)."""
    capture = Script(dies=1)

    class Declined(SagaStepHandler[app.OrderCtx, None]):
        async def act(self, ctx: app.OrderCtx, /) -> None:
            await capture.inside.wait()
            raise RuntimeError("declined")

    pay, _ = paying_order(app.Authorize, scripted_capture(capture))

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, Parallel(SubSaga(pay, context=app.pay_context, name="Pay"), Declined)
        ]

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Order(store=store).run(app.OrderCtx(), saga_id="t2")
        with pytest.raises(SagaFailed) as failed:
            await Order(store=store).resume("t2")
        assert failed.value.status is SagaStatus.COMPENSATED
        with pytest.raises(SagaFailed):  # the child's journal reads back
            await pay(store=store).resume("t2/Pay")
    assert applied(ledger) == Counter({
        ("act", "Reserve"): 1, ("act", "Authorize"): 1, ("act", "Capture"): 1,
        ("compensate", "Capture"): 1, ("compensate", "Authorize"): 1,
        ("compensate", "Reserve"): 1,
    })
    undone = [c["key"] for c in calls(ledger) if c["action"] == "compensate"]
    assert undone.count("t2/Pay:Capture:compensate") == 1


async def _handed_off_mid_child(tmp_path: Path, ledger: Path, crash_in: str) -> None:
    """The first run dies in ``crash_in`` (Reserve: before the child exists;
    Capture: inside the child). A worker resumes the parent and is stopped
    (grace 0: a hand-off) while the child's Capture is in its call. The
    hand-off stops the child too, without unwinding anything; the next
    worker finishes both forward."""
    reserve = Script(dies=int(crash_in == "Reserve"), holds=False)
    capture = Script(dies=int(crash_in == "Capture"))  # then slow: the worker stops meanwhile

    class DyingReserve(app.Reserve):
        async def act(self, ctx: app.OrderCtx, /) -> str:
            response = await super().act(ctx)
            await reserve.after_effect()
            return response

    Payment, Order = paying_order(
        app.Authorize, scripted_capture(capture), reserve=DyingReserve
    )

    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        with pytest.raises(Crash):
            await Order(store=store).run(app.OrderCtx(), saga_id="h1")
        first = RecoveryWorker(store, [Order, Payment], lease=30, poll=0.02, older_than=0,
                               owner="leaving")
        running = asyncio.create_task(first.run())
        await asyncio.wait_for(capture.inside.wait(), 10)
        await asyncio.wait_for(first.stop(grace=0), 10)
        await running
        assert first.stats.handed_off >= 1
        assert (await store.load("h1")).status is SagaStatus.RUNNING
        assert (await store.load("h1/Pay")).status is SagaStatus.RUNNING
        assert compensations(ledger) == 0
        capture.release.set()
        second = RecoveryWorker(store, [Order, Payment], lease=30, poll=0.02, older_than=0)
        finishing = asyncio.create_task(second.run())
        for _ in range(500):
            if (await store.load("h1")).status.is_final:
                break
            await asyncio.sleep(0.02)
        await second.stop()
        await finishing
        assert (await store.load("h1")).status is SagaStatus.COMPLETED
        assert (await store.load("h1/Pay")).status is SagaStatus.COMPLETED
    assert compensations(ledger) == 0


async def test_S15_a_hand_off_inside_a_resumed_child_unwinds_neither_child_nor_parent(
    tmp_path: Path, ledger: Path
) -> None:
    """The child is resumed under a lease of its own (it existed before)."""
    await _handed_off_mid_child(tmp_path, ledger, "Capture")


async def test_S15_a_hand_off_inside_a_child_started_by_the_resumed_parent_unwinds_nothing(
    tmp_path: Path, ledger: Path
) -> None:
    """The child is created by the resumed parent, in the parent's own task."""
    await _handed_off_mid_child(tmp_path, ledger, "Reserve")


@pytest.mark.parametrize("crash_in", ["Capture", "Reserve"])
async def test_S13_a_child_handed_off_with_its_parent_logs_no_journal_failure(
    crash_in: str, tmp_path: Path, ledger: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-off is routine (a worker shutting down): the child that stops
    with its parent is not reported as a saga whose journal failed — its
    own journal never did. One line says it stopped with its parent."""
    caplog.set_level(logging.INFO, logger="fallback_saga")
    await _handed_off_mid_child(tmp_path, ledger, crash_in)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    stopped = [r.getMessage() for r in caplog.records if "h1/Pay" in r.getMessage()
               and "stopped with its parent" in r.getMessage()]
    assert len(stopped) == 1, caplog.text
    assert "journal could not be written" not in stopped[0]


# --------------------------------------------------------------------------- crashes


def crash_child(kind: str, where: str, saga_id: str, point: str, ledger: Path,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "import subsaga_app; subsaga_app.main(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(TESTS), kind, where, saga_id, point, str(ledger)],
        capture_output=True, text=True, timeout=60, env=env,
    )


EXPECTED = {
    # crash point -> (parent's final status, effects applied once each)
    "capture": (SagaStatus.COMPLETED, {("act", "Reserve"), ("act", "Authorize"),
                                       ("act", "Capture"), ("act", "Ship")}),
    "ship": (SagaStatus.COMPLETED, {("act", "Reserve"), ("act", "Authorize"),
                                    ("act", "Capture"), ("act", "Ship")}),
    "refund": (SagaStatus.COMPENSATED, {
        ("act", "Reserve"), ("act", "Authorize"), ("act", "Capture"), ("act", "Ship"),
        ("compensate", "Capture"), ("compensate", "Authorize"), ("compensate", "Reserve"),
    }),
}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("point", list(EXPECTED))
async def test_S15_S10_a_crash_inside_or_after_a_child_resumes_each_saga_exactly_once(
    backend: str, point: str, tmp_path: Path, ledger: Path, request: pytest.FixtureRequest
) -> None:
    env = None
    if backend == "sqlite":
        where = str(tmp_path / "s.db")
        opened: Any = SQLiteSagaStore(where)
    else:
        from fallback_saga.store.postgres import PostgresSagaStore

        conninfo = request.getfixturevalue("pg_conninfo")
        where = request.getfixturevalue("pg_schema")
        env = {**os.environ, "SUBSAGA_APP_DSN": conninfo}
        opened = PostgresSagaStore(conninfo, schema=where, min_size=1)
    child = crash_child(backend, where, "o9", point, ledger, env)
    assert child.returncode == 137, child.stderr
    crashed_calls = len(calls(ledger))

    async with opened as store:
        report = await recover(store, [app.OrderSaga, app.PaymentSaga], older_than=0)
        again = await recover(store, [app.OrderSaga, app.PaymentSaga], older_than=0)
        parent = await store.load("o9")
        child_record = await store.load("o9/Pay")
    status, effects = EXPECTED[point]
    assert parent.status is status
    assert child_record.status is (
        SagaStatus.COMPLETED if status is SagaStatus.COMPLETED else SagaStatus.COMPENSATED
    )
    # The parent was resumed once; the child, in flight too, was left to it.
    done = report.resumed if status is SagaStatus.COMPLETED else report.compensated
    assert done == ["o9"], report
    others = report.resumed + report.compensated + report.failed
    assert "o9/Pay" not in others + [saga_id for saga_id, _ in report.skipped]
    if point == "capture":
        assert report.deferred == ["o9/Pay"]  # claimed with the parent, left to it
    assert again.total == 0
    assert again.deferred == []
    # Every effect applied exactly once, whatever ran again after the crash.
    effects_seen = applied(ledger)
    assert set(effects_seen) == effects
    assert set(effects_seen.values()) == {1}
    # The resumed run never called again an act that had completed before the crash.
    resumed = calls(ledger)[crashed_calls:]
    completed_before = {"Reserve", "Authorize"} if point == "capture" else {
        "Reserve", "Authorize", "Capture"
    }
    again_called = [c for c in resumed if c["action"] == "act" and c["step"] in completed_before]
    assert again_called == []


def test_the_operator_cli_shows_the_parent_child_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from fallback_saga.cli import main

    db = tmp_path / "s.db"

    async def run() -> None:
        async with SQLiteSagaStore(db) as store:
            await app.OrderSaga(store=store).run(app.OrderCtx(), saga_id="o8")

    asyncio.run(run())
    capsys.readouterr()
    assert main(["show", "o8", "--db", str(db)]) == 0
    header = capsys.readouterr().out.partition("\n\n")[0]
    assert "child        o8/Pay" in header.splitlines()
    assert main(["show", "o8/Pay", "--db", str(db)]) == 0
    header = capsys.readouterr().out.partition("\n\n")[0]
    assert "parent       o8  (this is its child saga)" in header.splitlines()
    assert main(["show", "o8", "--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["parent"], data["children"]) == (None, ["o8/Pay"])


async def test_the_web_console_links_parent_and_child(tmp_path: Path) -> None:
    from fallback_saga.console.api_json import record_json
    from fallback_saga.console.saga_page import saga_page
    from fallback_saga.console.saga_view import fetch_saga

    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await app.OrderSaga(store=store).run(app.OrderCtx(), saga_id="o<8>")
        parent = await fetch_saga(store, "o<8>")
        child = await fetch_saga(store, "o<8>/Pay")
    assert (parent.parent, parent.children) == (None, ["o<8>/Pay"])
    assert (child.parent, child.children) == ("o<8>", [])
    assert record_json(child)["parent"] == "o<8>"
    page = saga_page(parent, [], store_label="s.db", now=0.0)
    assert 'child sagas: <a class="id" href="/sagas/o%3C8%3E%2FPay">o&lt;8&gt;/Pay</a>' in page
    assert "child of" in saga_page(child, [], store_label="s.db", now=0.0)


async def test_saga_family_reads_no_child_journal_to_find_the_children(tmp_path: Path) -> None:
    """``show`` and the console look each possible child up by its id (one per
    step name): through ``lease_state``, one short row, not a ``load`` of the
    child's whole journal. A store without ``lease_state`` is asked ``load``."""
    from fallback_saga import JournalEntry, MemorySagaStore, StepStatus
    from fallback_saga.subsaga import saga_family

    class Counting:
        def __init__(self, store: Any, *, leases: bool) -> None:
            self.store, self.loads, self.leases = store, 0, 0
            if leases:
                self.lease_state = self._lease_state

        async def load(self, saga_id: str) -> Any:
            self.loads += 1
            return await self.store.load(saga_id)

        async def _lease_state(self, saga_id: str) -> Any:
            self.leases += 1
            return await self.store.lease_state(saga_id)

    def acts(steps: list[str]) -> list[JournalEntry]:
        return [
            JournalEntry(i, step, "primary", "act", status, 1, None, 1.0 + i)
            for i, step in enumerate(steps)
            for status in (StepStatus.STARTED, StepStatus.COMPLETED)
        ]

    steps = [f"Step{i}" for i in range(40)]
    async with SQLiteSagaStore(tmp_path / "s.db") as sqlite:
        memory = MemorySagaStore()
        for store in (sqlite, memory):
            await store.create("p/q", "Big", "fp", {}, acts(steps))
            await store.create("p", "Top", "fp", {}, acts(["q"]))
            for step in steps[::10]:
                await store.create(f"p/q/{step}", "Child", "fp", {}, acts(["A", "B"]))
        record = await sqlite.load("p/q")
        counted = Counting(sqlite, leases=True)
        family = await saga_family(counted, record)
        assert family == ("p", [f"p/q/{step}" for step in steps[::10]])
        assert (counted.loads, counted.leases) == (0, len(steps) + 1)
        plain = Counting(memory, leases=False)
        assert await saga_family(plain, await memory.load("p/q")) == family
        assert plain.loads == len(steps) + 1


async def test_S15_saga_family_finds_children_in_one_look_up_memory() -> None:
    from fallback_saga import MemorySagaStore

    await family_in_one_look_up(MemorySagaStore())


async def test_S15_saga_family_finds_children_in_one_look_up_sqlite(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await family_in_one_look_up(store)



def test_S15_a_child_saga_instance_built_with_another_store_is_refused_with_the_parent() -> None:
    """mechanics.md: a child is journaled in its parent's store. A child
    given as an instance journals where it was built, so one built with
    another store (its own default one, say) would be unwound by a parent
    that cannot find it: the parent ended COMPENSATED, the child's charge
    never refunded. Such a parent is refused when it is built, wherever
    the step sits (a plain step, a group member, a Fallback's branch)."""
    elsewhere = app.PaymentSaga(store=MemorySagaStore(max_finished=0))
    pay = SubSaga(elsewhere, context=app.pay_context, name="Pay")

    def declared(*items: Any) -> type[Saga[app.OrderCtx]]:
        class Order(Saga[app.OrderCtx]):
            steps: ClassVar[list[Any]] = list(items)

        return Order

    for order in [
        declared(app.Reserve, pay, app.Ship),
        declared(app.Reserve, Parallel(pay, app.Ship)),
        declared(app.Reserve, Fallback(step=app.Ship, fallback=pay)),
    ]:
        for parents_store in [MemorySagaStore(), None]:
            with pytest.raises(ValueError, match=r"'Pay'.*another store"):
                order(store=parents_store)
        order(store=elsewhere.store)  # built with the child's store: accepted
