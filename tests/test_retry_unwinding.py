"""An operator retries the unwinding of a FAILED saga (``retry_unwinding``).

S6 parks a saga whose compensation keeps failing as FAILED, for an operator;
once the participant is fixed, the operator finishes the unwinding. The
rules, each on every store (memory; SQLite with each writer; PostgreSQL on
the throwaway cluster of ``conftest_pg.py``):

* S6/S5: only the steps the journal holds completed and not compensated are
  compensated, in reverse — the one that gave up first, again first — and a
  compensation journaled COMPLETED never runs again; the participant's
  ledger shows every effect undone exactly once.
* S6: it is never automatic: ``recover`` leaves a FAILED saga alone.
* S13/S10: the reopening is journaled (COMPENSATING with the first STARTED
  row, which names who reopened it), fenced by a lease, and a fault during
  it (a store refusing a write, a write lost in doubt, a cancellation)
  leaves a state that a second retry finishes, nothing undone twice.
* Clear refusals: an unknown id, a saga that is not FAILED (with why), a
  changed definition (the same rule as ``recover``), a saga someone leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import types
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from journal_faults import (
    FAULT_KINDS,
    FaultKind,
    FaultyRecoverableStore,
    FaultyStore,
    FaultySubmittingStore,
    StoreDown,
)

from fallback_saga import (
    Lease,
    MemorySagaStore,
    RetryPolicy,
    Saga,
    SagaBusy,
    SagaContext,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaListener,
    SagaNotFailed,
    SagaNotFound,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    current_step,
    recover,
    retry_unwinding,
)
from fallback_saga.events import status_if_landed

pytest_plugins = ["conftest_pg"]

STORES = ["memory", "sqlite-thread", "sqlite-process", "sqlite-inline", "postgres"]
DURABLE = STORES[1:]


async def open_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemorySagaStore()
    if kind.startswith("sqlite"):
        return SQLiteSagaStore(tmp_path / "sagas.db", writer=kind.removeprefix("sqlite-"))
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")  # skips without PostgreSQL
    schema = request.getfixturevalue("pg_schema")
    return PostgresSagaStore(conninfo, schema=schema, min_size=1)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    opened = await open_store(request.param, request, tmp_path)
    if isinstance(opened, MemorySagaStore):
        yield opened
        return
    async with opened:
        yield opened


@pytest.fixture(params=DURABLE)
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with await open_store(request.param, request, tmp_path) as opened:
        yield opened


# --------------------------------------------------------------------------- the participant


class PaymentDown(Exception):
    """The participant's service is down: its compensations fail."""


@dataclasses.dataclass
class Participant:
    """The services the saga calls. Like a real participant's barrier, it
    applies an operation at most once per idempotency key, and a
    compensation only if its act was applied (``applied``); ``undo_calls``
    counts the compensation calls that succeeded, per key; ``calls`` is
    every call, in order; ``down`` names the steps whose compensations fail."""

    down: set[str] = dataclasses.field(default_factory=set)
    applied: Counter[str] = dataclasses.field(default_factory=Counter)
    undo_calls: Counter[str] = dataclasses.field(default_factory=Counter)
    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (step, action)
    # Awaited inside a compensation, before it applies (the faults' timing).
    in_compensation: Callable[[str], Any] | None = None

    def act(self, key: str, step: str) -> None:
        self.calls.append((step, "act"))
        if key not in self.applied:
            self.applied[key] = 1

    async def compensate(self, key: str, step: str) -> None:
        self.calls.append((step, "compensate"))
        if self.in_compensation is not None:
            await self.in_compensation(step)
        if step in self.down:
            raise PaymentDown(f"{step}: the payment service is down")
        if key.removesuffix(":compensate") in self.applied and key not in self.applied:
            self.applied[key] = 1
        self.undo_calls[key] += 1

    def undone(self) -> set[str]:
        return {key.removesuffix(":compensate") for key in self.applied
                if key.endswith(":compensate")}

    def done(self) -> set[str]:
        return {key for key in self.applied if not key.endswith(":compensate")}

    def compensations(self) -> list[str]:
        return [step for step, action in self.calls if action == "compensate"]

    def acts(self) -> int:
        return sum(1 for _, action in self.calls if action == "act")


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str


def participant_step(name: str, *, act_fails: bool = False) -> type:
    async def act(self: Any, ctx: Ctx) -> str:
        info = current_step()
        assert info is not None
        if act_fails:
            raise PaymentDown(f"{name}: refused")
        self.participant.act(info.idempotency_key, name)
        return name

    async def compensate(self: Any, ctx: Ctx) -> None:
        info = current_step()
        assert info is not None
        await self.participant.compensate(info.idempotency_key, name)

    def init(self: Any, participant: Participant) -> None:
        self.participant = participant

    return type(name, (), {"__init__": init, "act": act, "compensate": compensate})


# Reserve's and Charge's compensations call the payment service; Notify's
# does not; Ship's act fails, so the saga unwinds: Charge (gives up), Notify
# (compensated), Reserve (gives up) -> FAILED, Charge and Reserve left undone.
STEPS = ["Reserve", "Notify", "Charge", "Ship"]
PAYMENT = {"Reserve", "Charge"}
FAST = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)


def order_saga(steps: list[str] = STEPS, name: str = "OrderSaga") -> type[Saga[Ctx]]:
    classes = [participant_step(step, act_fails=step == "Ship") for step in steps]
    return types.new_class(name, (Saga[Ctx],), {},
                           lambda namespace: namespace.update(steps=classes))


def build(store: Any, participant: Participant, saga_class: type[Saga[Ctx]] | None = None,
          listeners: tuple[object, ...] = ()) -> Saga[Ctx]:
    return (saga_class or order_saga())(
        store=store, step_factory=lambda cls: cls(participant), listeners=listeners,
        compensation_retry=FAST, journal_retry=RetryPolicy(attempts=2, delay=0.0, jitter=0.0),
    )


async def failed_saga(store: Any, participant: Participant, saga_id: str = "order-1",
                      saga_class: type[Saga[Ctx]] | None = None) -> Saga[Ctx]:
    """A saga that ended FAILED: Charge's and Reserve's compensations gave up."""
    participant.down |= PAYMENT
    saga = build(store, participant, saga_class)
    with pytest.raises(SagaFailed) as failed:
        await saga.run(Ctx(order_id=saga_id), saga_id=saga_id)
    assert failed.value.status is SagaStatus.FAILED
    assert (await store.load(saga_id)).status is SagaStatus.FAILED
    return saga


def check_each_effect_undone_once(participant: Participant, *, calls_once: bool = True) -> None:
    """Every act that took effect (Reserve, Charge, Notify) was undone, each
    once at the participant; ``calls_once``: by exactly one successful call
    (no fault made a compensation's completion unknown, so none was repeated)."""
    assert len(participant.done()) == 3
    assert participant.undone() == participant.done()
    assert set(participant.applied.values()) == {1}
    if calls_once:
        assert len(participant.undo_calls) == 3
        assert set(participant.undo_calls.values()) == {1}


def compensate_rows(record: Any) -> list[tuple[str, StepStatus, str | None]]:
    return [(e.step, e.status, e.error) for e in record.history if e.action == "compensate"]


# --------------------------------------------------------------------------- the rules


async def test_S6_retry_unwinding_compensates_only_what_the_FAILED_saga_left_undone(
    store: Any,
) -> None:
    participant = Participant()
    saga = await failed_saga(store, participant)
    first = participant.compensations()
    assert first == ["Charge", "Charge", "Notify", "Reserve", "Reserve"]
    if not isinstance(store, MemorySagaStore):
        # Never automatic: a recovery pass leaves a FAILED saga alone.
        report = await recover(store, [saga], older_than=0.0)
        assert report.total == 0
        assert (await store.load("order-1")).status is SagaStatus.FAILED
    participant.down.clear()  # the payment service is back
    rows_before = len(compensate_rows(await store.load("order-1")))
    acts = participant.acts()

    status = await retry_unwinding(store, [saga], "order-1", owner="ops-alice")

    assert status is SagaStatus.COMPENSATED
    # The one that gave up first, again first; Notify (compensated) never again.
    assert participant.compensations()[len(first):] == ["Charge", "Reserve"]
    check_each_effect_undone_once(participant)
    record = await store.load("order-1")
    assert record.status is SagaStatus.COMPENSATED
    assert compensate_rows(record)[rows_before:] == [
        ("Charge", StepStatus.STARTED, "reopened by an operator: ops-alice"),
        ("Charge", StepStatus.COMPLETED, None),
        ("Reserve", StepStatus.STARTED, None),
        ("Reserve", StepStatus.COMPLETED, None),
    ]
    assert participant.acts() == acts  # no forward step ran again


async def test_S6_retry_unwinding_ends_FAILED_again_while_the_participant_is_down(
    store: Any,
) -> None:
    participant = Participant()
    saga = await failed_saga(store, participant)
    participant.down = {"Reserve"}  # Charge's side is back, Reserve's not yet

    assert await retry_unwinding(store, [saga], "order-1") is SagaStatus.FAILED
    assert (await store.load("order-1")).status is SagaStatus.FAILED
    assert participant.undone() == {"order-1:Charge", "order-1:Notify"}

    participant.down.clear()
    assert await retry_unwinding(store, [saga], "order-1") is SagaStatus.COMPENSATED
    check_each_effect_undone_once(participant)
    # Charge, compensated by the first retry, is not called by the second.
    assert participant.compensations()[-3:] == ["Reserve", "Reserve", "Reserve"]


async def test_S6_retry_unwinding_refuses_a_saga_that_is_not_FAILED(store: Any) -> None:
    participant = Participant()
    saga = build(store, participant, order_saga(["Reserve", "Charge"]))
    await saga.run(Ctx(order_id="done"), saga_id="done")
    unwound = build(store, participant)
    with pytest.raises(SagaFailed):
        await unwound.run(Ctx(order_id="undone"), saga_id="undone")
    calls = len(participant.calls)

    with pytest.raises(SagaNotFound):
        await retry_unwinding(store, [saga], "no-such-saga")
    with pytest.raises(SagaNotFailed, match=r"COMPLETED: .*nothing to undo") as refused:
        await retry_unwinding(store, [saga], "done")
    assert refused.value.status is SagaStatus.COMPLETED
    with pytest.raises(SagaNotFailed, match=r"COMPENSATED: .*compensated already"):
        await retry_unwinding(store, [unwound], "undone")
    assert len(participant.calls) == calls
    assert (await store.load("done")).status is SagaStatus.COMPLETED
    assert (await store.load("undone")).status is SagaStatus.COMPENSATED


async def test_S6_retry_unwinding_refuses_a_RUNNING_saga(durable: Any) -> None:
    await durable.create("running", "OrderSaga", order_saga().definition.fingerprint,
                         {"order_id": "running"}, [])
    with pytest.raises(SagaNotFailed, match=r"RUNNING: .*recovery resumes it"):
        await retry_unwinding(durable, [build(durable, Participant())], "running")
    assert (await durable.lease_state("running")).token == 0  # never claimed


async def test_S10_retry_unwinding_refuses_a_changed_definition_as_recover_does(
    store: Any,
) -> None:
    participant = Participant()
    # Started with a step after Ship that never ran; the code drops it.
    await failed_saga(store, participant, saga_class=order_saga([*STEPS, "Invoice"]))
    participant.down.clear()
    changed = build(store, participant)

    with pytest.raises(SagaDefinitionChanged):
        await retry_unwinding(store, [changed], "order-1")
    assert (await store.load("order-1")).status is SagaStatus.FAILED
    if not isinstance(store, MemorySagaStore):
        assert (await store.lease_state("order-1")).token == 0  # refused before the claim
    status = await retry_unwinding(store, [changed], "order-1", allow_changed_definition=True)
    assert status is SagaStatus.COMPENSATED
    check_each_effect_undone_once(participant)


async def test_S10_retry_unwinding_is_fenced_by_a_lease(durable: Any) -> None:
    participant = Participant()
    saga = await failed_saga(durable, participant)
    participant.down.clear()
    held = await durable.claim_saga("order-1", owner="another-operator", lease_seconds=60)
    calls = len(participant.calls)

    with pytest.raises(SagaBusy):
        await retry_unwinding(durable, [saga], "order-1")
    assert len(participant.calls) == calls

    await durable.release(held)
    assert await retry_unwinding(durable, [saga], "order-1") is SagaStatus.COMPENSATED
    check_each_effect_undone_once(participant)
    state = await durable.lease_state("order-1")
    assert state.owner is None  # released
    assert state.token == held.token + 1


# --------------------------------------------------------------------------- faults


def writes_of_a_retry() -> int:
    """The journal writes of a successful retry: each compensation's STARTED
    and COMPLETED land in one write with the next STARTED, and the last with
    the final status: Charge STARTED, Charge COMPLETED + Reserve STARTED,
    Reserve COMPLETED + COMPENSATED."""
    return 3


FAULTS = [(at, kind) for at in range(writes_of_a_retry()) for kind in FAULT_KINDS]


@pytest.mark.parametrize("kind_of_store", DURABLE)
async def test_S13_the_fault_cases_cover_every_write_of_a_retry(
    request: pytest.FixtureRequest, tmp_path: Path, kind_of_store: str
) -> None:
    wrapper = FaultySubmittingStore if kind_of_store != "postgres" else FaultyRecoverableStore
    async with await open_store(kind_of_store, request, tmp_path) as inner:
        participant = Participant()
        await failed_saga(inner, participant)
        participant.down.clear()
        counted = wrapper(inner)  # no fault: counts the writes
        assert await retry_unwinding(counted, [build(counted, participant)], "order-1") is (
            SagaStatus.COMPENSATED
        )
        assert counted.writes == writes_of_a_retry()


@pytest.mark.parametrize(("at", "kind"), FAULTS)
@pytest.mark.parametrize("kind_of_store", DURABLE)
async def test_S13_a_fault_during_the_operators_retry_leaves_what_a_second_retry_finishes(
    request: pytest.FixtureRequest, tmp_path: Path, kind_of_store: str, at: int,
    kind: FaultKind,
) -> None:
    wrapper = FaultySubmittingStore if kind_of_store != "postgres" else FaultyRecoverableStore
    async with await open_store(kind_of_store, request, tmp_path) as inner:
        participant = Participant()
        await failed_saga(inner, participant)
        participant.down.clear()
        store = wrapper(inner, at=at, kind=kind)
        saga = build(store, participant)

        task = asyncio.create_task(retry_unwinding(store, [saga], "order-1"))
        store.victim = task
        outcome: object
        try:
            outcome = await task
        except (Exception, asyncio.CancelledError) as error:
            outcome = error
        store.heal()
        left = (await inner.load("order-1")).status
        if isinstance(outcome, SagaStatus):  # a cancellation that came too late
            assert left is outcome is SagaStatus.COMPENSATED
        else:
            assert isinstance(outcome, SagaInterrupted | asyncio.CancelledError | StoreDown), (
                outcome)
        # Never a status the journal does not hold; nothing undone twice.
        assert left in (SagaStatus.FAILED, SagaStatus.COMPENSATING, SagaStatus.COMPENSATED)
        assert all(times == 1 for times in participant.applied.values())
        if left is not SagaStatus.COMPENSATED:
            again = build(inner, participant)
            state = await inner.lease_state("order-1")
            if state.owner is not None:
                # The store was down when the first retry gave its lease back:
                # it fences the saga until it runs out. Given back here, as
                # its running out would.
                assert kind.endswith("outage")
                with pytest.raises(SagaBusy):
                    await retry_unwinding(inner, [again], "order-1")
                assert state.expires_at is not None
                await inner.release(Lease("order-1", state.owner, state.token, state.expires_at))
            assert await retry_unwinding(inner, [again], "order-1") is SagaStatus.COMPENSATED
        assert (await inner.load("order-1")).status is SagaStatus.COMPENSATED
        # A compensation whose completion the fault kept out of the journal
        # is called again with its key (the barrier makes it a no-op: S10).
        check_each_effect_undone_once(participant, calls_once=False)


async def test_S8_an_operators_retry_cancelled_mid_compensation_finishes_it_first(
    store: Any,
) -> None:
    participant = Participant()
    saga = await failed_saga(store, participant)
    participant.down.clear()
    entered = asyncio.Event()
    go_on = asyncio.Event()

    async def pause(step: str) -> None:
        if step == "Charge":
            entered.set()
            await go_on.wait()

    participant.in_compensation = pause
    task = asyncio.create_task(retry_unwinding(store, [saga], "order-1"))
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The unwinding ran to its end under the cancellation (S8), journaled.
    assert (await store.load("order-1")).status is SagaStatus.COMPENSATED
    check_each_effect_undone_once(participant)


async def test_S10_an_operators_retry_stopped_mid_compensation_is_finished_by_another(
    durable: Any,
) -> None:
    """The event loop stops under the retry (its unwinding's own task is
    cancelled, as ``asyncio.run`` does on the way out): the saga stays
    COMPENSATING, the interrupted compensation's STARTED row the last; a
    second retry calls that compensation again (the participant's barrier
    makes it a no-op if it had applied) and finishes, nothing undone twice."""
    participant = Participant()
    saga = await failed_saga(durable, participant)
    participant.down.clear()
    stopped = asyncio.Event()

    async def stop_the_loop(step: str) -> None:
        if step == "Reserve":
            task = asyncio.current_task()
            assert task is not None
            participant.in_compensation = None
            stopped.set()
            task.cancel()  # the unwinding's own task, as a loop shutting down does
            await asyncio.sleep(0)

    participant.in_compensation = stop_the_loop
    with pytest.raises(asyncio.CancelledError):
        await retry_unwinding(durable, [saga], "order-1")
    assert stopped.is_set()
    record = await durable.load("order-1")
    assert record.status is SagaStatus.COMPENSATING
    assert compensate_rows(record)[-1][:2] == ("Reserve", StepStatus.STARTED)
    # Recovery would finish it too (an interrupted unwinding); the operator does it now.
    assert await retry_unwinding(durable, [saga], "order-1") is SagaStatus.COMPENSATED
    check_each_effect_undone_once(participant)


# --------------------------------------------------------------------------- a family (SubSaga)


def family(
    store: Any, participant: Participant, *, child_fails: bool
) -> tuple[Saga[Ctx], Saga[Ctx]]:
    """``Reserve``, ``SubSaga(Child: Hold, Charge[, Refuse])``, ``Ship``: with
    ``child_fails`` the child's ``Refuse`` fails (the child unwinds: Charge
    gives up, the child ends FAILED, the parent's step is left undone);
    otherwise the child completes and the parent's ``Ship`` fails (the
    parent unwinds the child: Charge gives up there, the child ends FAILED,
    and so the parent's compensation of the step)."""
    from fallback_saga import SubSaga

    child_steps = ["Hold", "Charge", *(["Refuse"] if child_fails else [])]
    child_classes = [participant_step(s, act_fails=s == "Refuse") for s in child_steps]
    child_class = types.new_class("ChildSaga", (Saga[Ctx],), {},
                                  lambda ns: ns.update(steps=child_classes))
    child = build(store, participant, child_class)
    parent_classes: list[Any] = [
        participant_step("Reserve"),
        SubSaga(child, context=lambda parent: Ctx(order_id=parent.order_id), name="Pay"),
    ]
    if not child_fails:
        parent_classes.append(participant_step("Ship", act_fails=True))
    parent_class = types.new_class("FamilySaga", (Saga[Ctx],), {},
                                   lambda ns: ns.update(steps=parent_classes))
    return build(store, participant, parent_class), child


async def failed_family(store: Any, participant: Participant, *, child_fails: bool,
                        ) -> tuple[Saga[Ctx], Saga[Ctx]]:
    participant.down |= {"Charge"}
    parent, child = family(store, participant, child_fails=child_fails)
    with pytest.raises(SagaFailed) as failed:
        await parent.run(Ctx(order_id="fam"), saga_id="fam")
    assert failed.value.status is SagaStatus.FAILED
    assert (await store.load("fam")).status is SagaStatus.FAILED
    assert (await store.load("fam/Pay")).status is SagaStatus.FAILED
    return parent, child


def check_family_undone_once(participant: Participant) -> None:
    assert participant.done() == {"fam:Reserve", "fam/Pay:Hold", "fam/Pay:Charge"}
    assert participant.undone() == participant.done()
    assert set(participant.undo_calls.values()) == {1}


@pytest.mark.parametrize("child_fails", [True, False], ids=["left-undone", "on-the-stack"])
async def test_S15_retrying_a_parent_retries_its_FAILED_childs_unwinding(
    store: Any, child_fails: bool
) -> None:
    """The parent is FAILED because its child's unwinding gave up (the step
    left undone, or its compensation failed): retrying the parent retries
    the child's, journaled in the child's record; the parent ends
    COMPENSATED only once the child is, never while the child's effects stand."""
    participant = Participant()
    parent, _ = await failed_family(store, participant, child_fails=child_fails)
    acts = participant.acts()

    # Still down: both stay FAILED; Charge was tried again, in the child.
    assert await retry_unwinding(store, [parent], "fam") is SagaStatus.FAILED
    assert (await store.load("fam/Pay")).status is SagaStatus.FAILED
    assert "fam/Pay:Charge" not in participant.undone()

    participant.down.clear()
    assert await retry_unwinding(store, [parent], "fam") is SagaStatus.COMPENSATED
    assert (await store.load("fam/Pay")).status is SagaStatus.COMPENSATED
    check_family_undone_once(participant)
    assert participant.acts() == acts
    # The child's compensation retried is journaled in the parent as the step's.
    rows = compensate_rows(await store.load("fam"))
    assert [row[:2] for row in rows[-2:]] == [("Pay", StepStatus.STARTED),
                                              ("Pay", StepStatus.COMPLETED)]


async def test_S15_a_child_retried_by_its_id_lets_its_parent_end_COMPENSATED(
    store: Any,
) -> None:
    participant = Participant()
    parent, child = await failed_family(store, participant, child_fails=True)
    participant.down.clear()

    assert await retry_unwinding(store, [child], "fam/Pay") is SagaStatus.COMPENSATED
    calls = participant.compensations()
    assert await retry_unwinding(store, [parent], "fam") is SagaStatus.COMPENSATED
    assert participant.compensations() == calls  # the child is not unwound again
    check_family_undone_once(participant)
    # And the journal reads back as a finished unwinding: nothing left to retry.
    with pytest.raises(SagaNotFailed):
        await retry_unwinding(store, [parent], "fam")


@pytest.mark.parametrize("finisher", ["retry", "recover"])
async def test_S10_a_parents_retry_stopped_inside_its_child_is_finished_nothing_twice(
    durable: Any, finisher: str
) -> None:
    """The event loop stops under the parent's retry while it unwinds the
    child (in Charge's compensation: every task is cancelled, as
    ``asyncio.run`` does on the way out). The child stays COMPENSATING, and
    the parent is not COMPENSATED. A second retry — or recovery, then a
    retry — finishes; nothing is undone twice."""
    participant = Participant()
    parent, _ = await failed_family(durable, participant, child_fails=True)
    participant.down.clear()
    stopped = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def stop_the_loop(step: str) -> None:
        if step == "Charge":
            task = asyncio.current_task()
            assert task is not None
            participant.in_compensation = None
            stopped.set()
            for each in {task, *tasks}:
                each.cancel()
            await asyncio.sleep(0)

    participant.in_compensation = stop_the_loop
    tasks.append(asyncio.create_task(retry_unwinding(durable, [parent], "fam")))
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert stopped.is_set()
    assert (await durable.load("fam")).status in (SagaStatus.FAILED, SagaStatus.COMPENSATING)
    assert (await durable.load("fam/Pay")).status is SagaStatus.COMPENSATING

    if finisher == "recover":
        await recover(durable, [parent], older_than=0.0)
        await recover(durable, [parent], older_than=0.0)
        statuses = ((await durable.load("fam")).status, (await durable.load("fam/Pay")).status)
        # The parent says COMPENSATED only once the child is (S15); recovery
        # never reopens a FAILED saga (S6).
        assert statuses[0] is not SagaStatus.COMPENSATED or (
            statuses[1] is SagaStatus.COMPENSATED)
    if (await durable.load("fam")).status is not SagaStatus.COMPENSATED:
        assert await retry_unwinding(durable, [parent], "fam") is SagaStatus.COMPENSATED
    assert (await durable.load("fam/Pay")).status is SagaStatus.COMPENSATED
    assert participant.done() == {"fam:Reserve", "fam/Pay:Hold", "fam/Pay:Charge"}
    assert participant.undone() == participant.done()
    assert set(participant.applied.values()) == {1}


async def test_S15_a_Fallbacks_primary_child_left_undone_is_retried_after_its_fallback(
    store: Any,
) -> None:
    """A ``SubSaga`` primary whose child ended FAILED, its fallback (Cash)
    completed, a later step failed: the parent is FAILED with the primary's
    child left undone. The retry calls neither Cash nor Reserve again (both
    compensated) and unwinds the child; the parent ends COMPENSATED (S5, S15)."""
    from fallback_saga import Fallback, SubSaga

    participant = Participant(down={"Charge"})
    child_classes = [participant_step(s, act_fails=s == "Refuse")
                     for s in ("Hold", "Charge", "Refuse")]
    child = build(store, participant, types.new_class(
        "ChildSaga", (Saga[Ctx],), {}, lambda ns: ns.update(steps=child_classes)))
    parent_steps: list[Any] = [
        participant_step("Reserve"),
        Fallback(step=SubSaga(child, context=lambda p: Ctx(order_id=p.order_id), name="Pay"),
                 fallback=participant_step("Cash")),
        participant_step("Ship", act_fails=True),
    ]
    parent = build(store, participant, types.new_class(
        "FallbackFamilySaga", (Saga[Ctx],), {}, lambda ns: ns.update(steps=parent_steps)))
    with pytest.raises(SagaFailed) as failed:
        await parent.run(Ctx(order_id="fam"), saga_id="fam")
    assert failed.value.status is SagaStatus.FAILED
    assert participant.compensations() == ["Charge", "Charge", "Hold", "Cash", "Reserve"]
    participant.down.clear()

    assert await retry_unwinding(store, [parent], "fam") is SagaStatus.COMPENSATED
    assert participant.compensations()[5:] == ["Charge"]
    assert (await store.load("fam/Pay")).status is SagaStatus.COMPENSATED
    assert participant.undone() == participant.done()
    assert set(participant.undo_calls.values()) == {1}


def test_S10_an_operators_retry_that_ends_its_process_keeps_its_lease(tmp_path: Path) -> None:
    """A compensation that lets ``SystemExit`` out of the operator's retry
    ends the process with the saga still leased, as a worker's claim keeps a
    saga whose resume ends the process: given back on the way out, it would
    clear the saga's count of claims (a parked saga would be claimed again).
    And the event loop's shutdown finishes: the retry's store is closed."""
    db = tmp_path / "sagas.db"
    participant = Participant()
    closed: list[bool] = []

    async def failed() -> None:
        async with SQLiteSagaStore(db) as store:
            await failed_saga(store, participant)

    async def ends_the_process(step: str) -> None:
        await asyncio.sleep(0)
        raise SystemExit(f"{step}: the compensation ends the process")

    async def retried() -> None:
        participant.down.clear()
        participant.in_compensation = ends_the_process
        try:
            async with SQLiteSagaStore(db) as store:
                await retry_unwinding(store, [build(store, participant)], "order-1",
                                      owner="ops")
        finally:
            closed.append(True)

    async def lease_owner() -> Any:
        async with SQLiteSagaStore(db) as store:
            return (await store.lease_state("order-1")).owner

    asyncio.run(failed())
    with pytest.raises(SystemExit):
        asyncio.run(retried())
    assert closed == [True]
    assert participant.compensations()[-1] == "Charge"  # the retry's first call, cut short
    assert asyncio.run(lease_owner()) == "ops"  # kept: it runs out on its own


# ------------------------------------------------------------------ what the listeners hear


class Ends(SagaListener):
    """How the operator's run ended, as the listeners are told."""

    def __init__(self) -> None:
        self.ends: list[tuple[str, SagaStatus | None, BaseException | None]] = []

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        self.ends.append(("finished", status, error))

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        self.ends.append(("interrupted", status, error))


@pytest.mark.parametrize("kind", ["outage", "in_doubt", "in_doubt_outage"])
@pytest.mark.parametrize("at", range(writes_of_a_retry()))
@pytest.mark.parametrize("kind_of_store", ["memory", "sqlite-thread", "postgres"])
async def test_S13_an_operators_retry_its_journal_stopped_is_told_interrupted_with_the_held_status(
    request: pytest.FixtureRequest, tmp_path: Path, kind_of_store: str, at: int,
    kind: FaultKind,
) -> None:
    """The store refuses the retry's write number ``at``: the operator gets
    ``SagaInterrupted``, and the listeners ``saga_interrupted`` — never
    ``saga_finished`` — with the status the journal holds: FAILED when the
    first write (the reopening) did not land, COMPENSATING after it. A
    write that landed unseen: ``status_if_landed`` names what it left (or
    the run, reading it back, went on to the end: told finished)."""
    inner = await open_store(kind_of_store, request, tmp_path)
    async with contextlib.AsyncExitStack() as opened:
        if not isinstance(inner, MemorySagaStore):
            await opened.enter_async_context(inner)
        if kind_of_store == "memory":
            wrapper: Any = FaultyStore
        elif kind_of_store == "postgres":
            wrapper = FaultyRecoverableStore
        else:
            wrapper = FaultySubmittingStore
        participant = Participant()
        # Through the wrapper on memory too, so that the saga is journaled
        # as rows (not kept live by the store, which the wrapper hides).
        await failed_saga(wrapper(inner), participant)
        participant.down.clear()
        store = wrapper(inner, at=at, kind=kind)
        ends = Ends()
        saga = build(store, participant, listeners=(ends,))
        try:
            outcome: object = await retry_unwinding(store, [saga], "order-1")
        except SagaInterrupted as error:
            outcome = error
        store.heal()
        held = (await inner.load("order-1")).status
        assert len(ends.ends) == 1, ends.ends
        how, status, error = ends.ends[0]
        if outcome is SagaStatus.COMPENSATED:  # a write in doubt the run read back
            assert kind == "in_doubt"
            assert (how, status, held) == ("finished", outcome, outcome), ends.ends
            return
        assert isinstance(outcome, SagaInterrupted), outcome
        assert how == "interrupted", ends.ends
        assert error is outcome
        assert status is outcome.status is (
            SagaStatus.FAILED if at == 0 else SagaStatus.COMPENSATING)
        if kind == "outage":
            assert status is held
        else:  # the write landed unseen: the listeners are told what it left
            assert (status_if_landed(status, error) or status) is held, (status, held, error)


@pytest.mark.parametrize("when", ["Charge", "Reserve"])
async def test_S13_an_operators_retry_across_a_postgresql_restart_tells_what_the_journal_holds(
    request: pytest.FixtureRequest, tmp_path: Path, when: str
) -> None:
    """Every connection of the store is cut (the server restarted, a
    failover) while a compensation runs: the retry either goes on over new
    connections to COMPENSATED, or stops with ``SagaInterrupted`` — and
    what the operator and the listeners are told is what the journal holds;
    a second retry finishes, nothing undone twice."""
    cluster = request.getfixturevalue("pg_cluster")  # skips without PostgreSQL
    async with await open_store("postgres", request, tmp_path) as store:
        participant = Participant()
        await failed_saga(store, participant)
        participant.down.clear()

        async def cut(step: str) -> None:
            if step == when:
                await asyncio.to_thread(
                    cluster.psql,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")

        participant.in_compensation = cut
        ends = Ends()
        try:
            outcome: object = await retry_unwinding(
                store, [build(store, participant, listeners=(ends,))], "order-1")
        except SagaInterrupted as error:
            outcome = error
        participant.in_compensation = None
        held = (await store.load("order-1")).status
        (told,) = ends.ends
        if isinstance(outcome, SagaInterrupted):
            assert told[:2] == ("interrupted", outcome.status), (told, held)
            assert (status_if_landed(outcome.status, outcome) or outcome.status) is held
            again = await retry_unwinding(store, [build(store, participant)], "order-1")
            assert again is SagaStatus.COMPENSATED
        else:
            assert outcome is held is SagaStatus.COMPENSATED
            assert told[:2] == ("finished", SagaStatus.COMPENSATED)
        check_each_effect_undone_once(participant, calls_once=False)
