"""S15 under faults: parallel groups and child sagas, nested, with a store
fault or a cancellation at every journal write of the whole family (the
parent's and every child's), then recovery; checked against a participant
ledger: every effect of a saga that did not complete is compensated exactly
once, in the reverse of the completions its journal holds, and each child
ends as its parent does. A seeded random loop adds shapes a hand-written
matrix would miss."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from composition_faults import (
    ChildSpec,
    Family,
    GroupSpec,
    check_family,
    child_ids,
)
from journal_faults import (
    FAULT_KINDS,
    Ctx,
    FallbackSpec,
    FaultKind,
    FaultyStore,
    FaultySubmittingStore,
    Ledger,
    StepSpec,
    StoreDown,
    check_caller_matches_journal,
    journal_of,
    victim_task,
)

from fallback_saga import (
    MemorySagaStore,
    SagaError,
    SagaInterrupted,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)

S = StepSpec

SHAPES: dict[str, tuple[Any, ...]] = {
    # a group with a Fallback and a child that has a group of its own; completes
    "completes": (
        S("A"),
        GroupSpec((
            S("B"),
            FallbackSpec(S("C", act="always"), S("C2")),
            ChildSpec("Kid", (S("K1"), GroupSpec((S("K2"), S("K3", act="once"))))),
        )),
        S("D"),
    ),
    # the same, then a step that fails: the completed child is unwound
    "unwinds_after": (
        S("A"),
        GroupSpec((
            S("B", compensate="once"),
            ChildSpec("Kid", (S("K1"), GroupSpec((S("K2"), S("K3"))))),
        )),
        S("D", act="always"),
    ),
    # a member fails while a sibling child runs: the child is cancelled mid-way
    "member_fails": (
        S("A"),
        GroupSpec((
            ChildSpec("Kid", (S("K1"), S("K2"), ChildSpec("Grand", (S("G1"), S("G2"))))),
            S("B", act="always"),
        )),
    ),
    # a child that fails inside a group, itself holding a failing group
    "child_fails": (
        GroupSpec((
            S("B"),
            ChildSpec("Kid", (S("K1"), GroupSpec((S("K2"), S("K3", act="always"))))),
        )),
        S("D"),
    ),
}


def write_count(items: tuple[Any, ...]) -> int:
    async def dry() -> int:
        store = FaultyStore(MemorySagaStore())
        family = Family(items, store, Ledger())
        with contextlib.suppress(SagaError):
            await family.parent.run(Ctx(order_id="dry"), saga_id="dry")
        return store.writes

    return asyncio.run(dry())


async def recover_family(family: Family, durable: bool, parent_id: str) -> None:
    """Recovery: ``recover`` on a durable store, a resume by id in memory."""
    store = family.store
    if durable:
        for _ in range(8):
            report = await recover(store, family.sagas, older_than=0)
            assert report.skipped == [], report
            if report.total == 0 and not report.deferred:
                return
        raise AssertionError("recovery never settled")
    record = await journal_of(getattr(store, "inner", store), parent_id)
    if record is not None and not record.status.is_final:
        with contextlib.suppress(SagaError):
            await family.parent.resume(parent_id)


async def fault_case(
    items: tuple[Any, ...], at: int, kind: FaultKind, durable: bool, saga_id: str = "o",
    listen: bool = False,
) -> None:
    inner: Any = SQLiteSagaStore(":memory:") if durable else MemorySagaStore()
    try:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner, at=at, kind=kind)
        ledger = Ledger()
        family = Family(items, store, ledger, listen=listen)
        task = victim_task(family.parent.run(Ctx(order_id="x"), saga_id=saga_id), store.mark)
        outcome: object
        try:
            outcome = await task
        except (Exception, asyncio.CancelledError) as error:
            outcome = error
        before = await journal_of(inner, saga_id)
        check_caller_matches_journal(
            outcome, before, cancel_with_store_up=kind == "cancel" and store.writes > at
        )
        if kind == "cancel" and store.writes > at:
            # S8/S13: the cancelled run ended its whole family final
            ids = child_ids(saga_id, items)
            for one in ids:
                record = await journal_of(inner, one)
                assert record is None or record.status.is_final, (one, record.status)
        store.heal()
        await recover_family(family, durable, saga_id)
        ids = child_ids(saga_id, items)
        records = {one: await journal_of(inner, one) for one in ids}
        check_family(
            ledger, ids, records, family.specs,
            exact=kind == "cancel" or store.writes <= at, entered=family.entered,
        )
        family.balance.check()
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


CASES = [
    pytest.param(name, at, kind, id=f"{name}-w{at}-{kind}")
    for name, items in SHAPES.items()
    for at in range(write_count(items))
    for kind in FAULT_KINDS
]


@pytest.mark.parametrize(("shape", "at", "kind"), CASES)
async def test_S15_S13_fault_at_every_write_of_a_family_memory_store(
    shape: str, at: int, kind: FaultKind
) -> None:
    await fault_case(SHAPES[shape], at, kind, durable=False)


@pytest.mark.parametrize(("shape", "at", "kind"), CASES)
async def test_S15_S13_fault_at_every_write_of_a_family_sqlite_store(
    shape: str, at: int, kind: FaultKind
) -> None:
    # with a listener: the steps go through the reported call path, and every
    # run and call a listener hears begin must end (spans closed)
    await fault_case(SHAPES[shape], at, kind, durable=True, listen=True)


# A child in the middle of its parent; and the same child as a group's member.
READ_SHAPES: dict[str, tuple[Any, ...]] = {
    "child": (S("A"), ChildSpec("Kid", (S("K1"), S("K2"))), S("B")),
    "member": (S("A"), GroupSpec((ChildSpec("Kid", (S("K1"), S("K2"))), S("M"))), S("B")),
}


async def read_fault_case(items: tuple[Any, ...], at: int, read: int, durable: bool) -> None:
    """The store dies at write ``at`` of the first run (a crash); once it is
    back, the resume meets a failed read (``read``: which one, counted from
    the resume's first) — its own record's, or its child's as the SubSaga
    step resumes it. A store's read error says nothing of how far the child
    got: the parent stops as it would after a journal write failed, leaving
    both for recovery (S13), never unwinding around a child that goes on
    (S15). Then recovery settles the family, and the ledger agrees."""
    clock = [1_000_000.0]
    inner: Any = (
        SQLiteSagaStore(":memory:", clock=lambda: clock[0]) if durable else MemorySagaStore()
    )
    try:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner, at=at, kind="outage")
        ledger = Ledger()
        family = Family(items, store, ledger)
        with contextlib.suppress(SagaError):
            await family.parent.run(Ctx(order_id="x"), saga_id="o")
        store.heal()
        clock[0] += 3600.0  # the crashed run's leases ran out
        store.fail_reads(store.reads + read)
        outcome: object
        try:
            outcome = await family.parent.resume("o")
        except (Exception, asyncio.CancelledError) as error:
            outcome = error
        if not isinstance(outcome, StoreDown):  # the parent's own read: nothing ran
            check_caller_matches_journal(
                outcome, await journal_of(inner, "o"), cancel_with_store_up=False
            )
        store.fail_reads(0, 0)
        await recover_family(family, durable, "o")
        ids = child_ids("o", items)
        records = {one: await journal_of(inner, one) for one in ids}
        check_family(ledger, ids, records, family.specs, entered=family.entered)
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


READ_CASES = [
    pytest.param(name, at, read, id=f"{name}-w{at}-r{read}")
    for name, items in READ_SHAPES.items()
    for at in range(1, write_count(items))
    for read in range(3)
]
READ_CASES_DURABLE = [
    pytest.param(name, at, read, id=f"{name}-w{at}-r{read}")
    for name, items in READ_SHAPES.items()
    for at in range(1, write_count(items))
    for read in range(7)
]


@pytest.mark.parametrize(("shape", "at", "read"), READ_CASES)
async def test_S15_S13_a_store_read_failing_on_resume_stops_the_parent_memory_store(
    shape: str, at: int, read: int
) -> None:
    await read_fault_case(READ_SHAPES[shape], at, read, durable=False)


@pytest.mark.parametrize(("shape", "at", "read"), READ_CASES_DURABLE)
async def test_S15_S13_a_store_read_failing_on_resume_stops_the_parent_sqlite_store(
    shape: str, at: int, read: int
) -> None:
    # a leased resume: the parent's load, claim and load, then its child's
    await read_fault_case(READ_SHAPES[shape], at, read, durable=True)


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_S15_S13_a_store_read_failing_as_the_parent_unwinds_its_child_leaves_it_to_recovery(
    durable: bool,
) -> None:
    """B fails; the parent unwinds its child, whose record the store fails to
    read (or claim), on the compensation's every try. That is not a
    compensation that gave up (FAILED, parked for an operator, the child's
    effects standing): the parent stops as for a journal write that failed,
    COMPENSATING, and recovery finishes the unwinding of both."""
    items = (S("A"), ChildSpec("Kid", (S("K1"), S("K2"))), S("B", act="always"))
    inner: Any = SQLiteSagaStore(":memory:") if durable else MemorySagaStore()
    try:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner)
        store.fail_reads(0, 4)  # the run reads nothing before it unwinds the child
        ledger = Ledger()
        family = Family(items, store, ledger)
        with pytest.raises(SagaInterrupted) as stopped:
            await family.parent.run(Ctx(order_id="x"), saga_id="o")
        assert stopped.value.status is SagaStatus.COMPENSATING
        assert isinstance(stopped.value.error, StoreDown)
        assert (await inner.load("o")).status is SagaStatus.COMPENSATING
        store.fail_reads(0, 0)
        await recover_family(family, durable, "o")
        ids = child_ids("o", items)
        records = {one: await journal_of(inner, one) for one in ids}
        assert records["o"] is not None
        assert records["o"].status is SagaStatus.COMPENSATED
        check_family(ledger, ids, records, family.specs, exact=True, entered=family.entered)
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


async def test_S10_S13_an_in_process_parent_stopped_unwinding_its_child_is_compensating() -> None:
    """The same on the in-process store itself (a ``MemorySagaStore`` whose
    ``load`` raises a driver's error reading the child: a subclass or a
    patched store of one's own). The parent was unwinding: the store and
    the ``SagaInterrupted`` say COMPENSATING, never RUNNING — a RUNNING saga
    resumes forward, calling B again around a child it had begun to undo
    (S10)."""
    items = (S("A"), ChildSpec("Kid", (S("K1"), S("K2"))), S("B", act="always"))
    store = MemorySagaStore()
    load = store.load

    async def failing_load(saga_id: str) -> Any:
        if saga_id != "o":
            raise StoreDown("the connection dropped during a read")
        return await load(saga_id)

    store.load = failing_load  # type: ignore[method-assign]
    family = Family(items, store, Ledger())
    with pytest.raises(SagaInterrupted) as stopped:
        await family.parent.run(Ctx(order_id="x"), saga_id="o")
    assert isinstance(stopped.value.error, StoreDown)
    assert stopped.value.status is SagaStatus.COMPENSATING
    assert (await load("o")).status is SagaStatus.COMPENSATING


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_S15_S8_a_members_child_cancelled_in_its_write_ahead_undoes_no_step_it_never_called(
    durable: bool,
) -> None:
    """A group member runs a child; the parent is cancelled while the
    child's first STARTED is written. The child's step was never called: it
    is journaled as a step that did not run, never compensated (a call
    cancelled in flight is uncertain and undone; one never made is not)."""
    items = (GroupSpec((ChildSpec("Kid", (S("K1"), S("K2"))), S("B"))),)
    inner: Any = SQLiteSagaStore(":memory:") if durable else MemorySagaStore()
    try:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner, at=2, kind="cancel")
        ledger = Ledger()
        family = Family(items, store, ledger)
        task = victim_task(family.parent.run(Ctx(order_id="x"), saga_id="o"), store.mark)
        with pytest.raises(asyncio.CancelledError):
            await task
        child = await inner.load("o/Kid")
        assert child.status.value == "compensated"
        called = [c.step for c in ledger.of("o/Kid") if c.action == "act"]
        undone = [c.step for c in ledger.of("o/Kid") if c.action == "compensate"]
        assert undone == called[::-1], (called, undone)
        # the step whose write-ahead the cancellation met: failed, not cancelled in flight
        last = child.history[len(called) * 2:][:2]
        assert [(e.action, e.status.value) for e in last] == [
            ("act", "started"), ("act", "failed"),
        ], child.history
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


def random_items(rng: random.Random, names: list[str], depth: int, width: int) -> tuple[Any, ...]:
    """A random shape: steps, Fallbacks, groups and children (to ``depth``)."""

    def step() -> StepSpec:
        names.append(f"T{len(names)}")
        return S(
            names[-1],
            act=rng.choice(["ok", "ok", "ok", "once", "always"]),
            compensate=rng.choice(["ok", "ok", "ok", "ok", "once", "always"]),
        )

    def member(in_group: bool) -> Any:
        roll = rng.random()
        if roll < 0.2:
            return FallbackSpec(step(), step())
        if roll < 0.4 and depth > 0:
            names.append(f"Kid{len(names)}")
            return ChildSpec(names[-1], random_items(rng, names, depth - 1, width))
        if roll < 0.55 and not in_group:
            return GroupSpec(tuple(member(True) for _ in range(rng.randint(1, width))))
        return step()

    return tuple(member(False) for _ in range(rng.randint(1, width)))


@pytest.mark.parametrize("seed", range(40))
async def test_S15_S13_random_families_with_a_fault_keep_the_ledger_consistent(seed: int) -> None:
    """Seeded random shapes (nested groups and children), a random fault at
    a random write, on the memory or the SQLite store, then recovery."""
    rng = random.Random(seed)
    items = random_items(rng, [], depth=2, width=3)
    at = rng.randrange(0, 20)
    kind = rng.choice(FAULT_KINDS)
    await fault_case(
        items, at, kind, durable=seed % 2 == 1, saga_id=f"r{seed}", listen=seed % 4 < 2
    )


async def cancel_case(
    items: tuple[Any, ...], yields: dict[str, int], ticks: list[int], inner: Any, saga_id: str,
    seed: int,
) -> None:
    """Run ``items`` on ``inner`` and cancel the run after each count of loop
    rounds in ``ticks`` (a second one lands in the unwinding); the journal of
    the whole family ends final, and the ledger agrees with it."""
    ledger = Ledger()
    family = Family(items, inner, ledger, yields, listen=seed % 3 == 0)
    task = asyncio.create_task(family.parent.run(Ctx(order_id="x"), saga_id=saga_id))
    for wait in ticks:
        for _ in range(wait):
            await asyncio.sleep(0)
        task.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task
    ids = child_ids(saga_id, items)
    records = {one: await journal_of(inner, one) for one in ids}
    check_family(ledger, ids, records, family.specs, exact=True, entered=family.entered)
    family.balance.check()


@pytest.mark.parametrize("seed", range(60))
async def test_S15_S8_a_family_cancelled_at_random_points_ends_final_and_undone(seed: int) -> None:
    """Seeded schedules: steps that yield to the loop a random number of
    times, a cancellation (sometimes two) after a random number of rounds —
    landing in a member's act, a sibling's compensation, a child's step or
    a journal write — on the memory store, in-process or write-ahead."""
    rng = random.Random(seed)
    names: list[str] = []
    items = random_items(rng, names, depth=2, width=3)
    yields = {name: rng.randint(0, 3) for name in names}
    ticks = [rng.randint(0, 25) for _ in range(rng.choice([1, 1, 2]))]
    store = MemorySagaStore()
    inner: Any = store if seed % 2 else FaultyStore(store)
    await cancel_case(items, yields, ticks, inner, f"c{seed}", seed)
