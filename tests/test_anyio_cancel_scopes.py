"""S8, S13, S15 under anyio's cancel scopes: a saga run inside a Starlette or
FastAPI request handler, cancelled the way anyio cancels.

anyio's cancellation is level-triggered: once a scope is cancelled, every
``await`` of its task inside it raises ``CancelledError`` again — anyio
cancels the task anew at each loop round until the scope is left — where
asyncio's ``task.cancel()`` is delivered once. And anyio tells its own
cancellation from any other by the ``CancelledError``'s message: one raised
without it is not caught by the scope (``move_on_after`` lets it out, the
request's task dies).

Each family of sagas (a ``Parallel`` group, a ``Fallback``, a ``SubSaga``
child, compensations: ``composition_faults``) runs inside

* ``move_on_after``: the scope is cancelled, as its deadline would;
* ``fail_after``: its deadline is moved to now; ``TimeoutError`` after it;
* a task group whose other task fails;

cancelled after k loop rounds, or while the family's k-th journal write is in
flight (with the store down too, for ``cancel_outage``). Then: the scope
catches the cancellation (nothing else escapes, no cancellation is left
pending on the task), the caller's outcome matches the journal, the journal
of a cancelled run ends final when the store was up, and after recovery the
participants' ledger agrees with every saga's final status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from composition_faults import Family, check_family, child_ids
from journal_faults import (
    Ctx,
    FaultKind,
    FaultyStore,
    FaultySubmittingStore,
    Ledger,
    check_caller_matches_journal,
    journal_of,
)
from test_composition_faults import SHAPES as FAULT_SHAPES
from test_composition_faults import recover_family
from test_composition_listeners import SHAPES as LISTENER_SHAPES
from test_composition_listeners import (
    postgres_store_maker,  # noqa: F401  (fixture postgres_store)
    write_count,
)

from fallback_saga import (
    MemorySagaStore,
    Parallel,
    Saga,
    SagaContext,
    SagaError,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)

anyio = pytest.importorskip("anyio")

pytest_plugins = ["conftest_pg"]

# Each shape, and how many loop rounds its steps' calls take (a member still
# in its call when the cancellation comes).
SHAPES: dict[str, tuple[tuple[Any, ...], dict[str, int]]] = {
    **{name: (items, {}) for name, items in FAULT_SHAPES.items()},
    **{f"told_{name}": shape for name, shape in LISTENER_SHAPES.items()},
}
SCOPES = ("move_on_after", "fail_after", "task_group")


WRITES = {shape: write_count(shape, SHAPES) for shape in SHAPES}


class Canceller:
    """What cancels the run the way ``scope`` cancels: ``cancel()`` (called
    by a ``FaultyStore`` at its fault, or after k rounds)."""

    def __init__(self) -> None:
        self.cancel: Callable[[], None] = lambda: None


@contextlib.contextmanager
def scope_of(kind: str, canceller: Canceller) -> Iterator[Any]:
    if kind == "move_on_after":
        with anyio.move_on_after(3600) as scope:
            canceller.cancel = scope.cancel
            yield scope
    else:
        assert kind == "fail_after"

        def now() -> None:  # the deadline passes: anyio cancels the scope at once
            scope.deadline = anyio.current_time()

        with anyio.fail_after(3600) as scope:
            canceller.cancel = now
            yield scope


async def run_in_scope(
    family: Family, kind: str, canceller: Canceller, cancel_after: int | None
) -> object:
    """The family's parent run inside an anyio scope of ``kind``; what the
    caller got (the ``CancelledError`` the scope caught stands for a run
    cancelled short of an outcome)."""
    outcome: object = asyncio.CancelledError()

    ended = asyncio.Event()

    async def run() -> None:
        nonlocal outcome
        if cancel_after is not None:
            asyncio.get_running_loop().create_task(cancel_later(cancel_after, canceller))
        try:
            outcome = await family.parent.run(Ctx(order_id="x"), saga_id="o")
        except SagaError as error:
            outcome = error
        finally:
            ended.set()

    if kind == "task_group":
        failed = asyncio.Event()
        canceller.cancel = failed.set

        async def sibling() -> None:
            # (A run that ends before the write chosen to fail it — fewer
            # writes on this store or Python — leaves its sibling be.)
            waits = [asyncio.ensure_future(failed.wait()), asyncio.ensure_future(ended.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if failed.is_set():
                raise LookupError("the sibling failed")

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(run)
                group.start_soon(sibling)
        except* LookupError:
            pass  # only the sibling's error: anything else would be re-raised here
        return outcome
    timed_out = False
    try:
        with scope_of(kind, canceller) as scope:
            await run()
    except TimeoutError:
        timed_out = True
    if isinstance(outcome, asyncio.CancelledError):
        # The run was cancelled short of an outcome: its CancelledError was
        # anyio's (the scope caught it, and fail_after turned it into
        # TimeoutError), not one of its own that the scope lets out.
        assert scope.cancelled_caught
        assert timed_out == (kind == "fail_after")
    return outcome


async def cancel_later(rounds: int, canceller: Canceller) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)
    canceller.cancel()


async def anyio_case(
    inner: Any, shape: str, kind: str, durable: bool, *,
    cancel_after: int | None = None, at: int | None = None, fault: FaultKind = "cancel",
) -> None:
    items, yields = SHAPES[shape]
    store: Any = inner
    canceller = Canceller()
    if at is not None:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner, at=at, kind=fault)
        store.victim = canceller
    ledger = Ledger()
    family = Family(items, store, ledger, yields, listen=True)
    pending = asyncio.current_task().cancelling()  # type: ignore[union-attr]
    outcome = await run_in_scope(family, kind, canceller, cancel_after)
    # No cancellation is left pending on the caller's task: it goes on.
    assert asyncio.current_task().cancelling() == pending  # type: ignore[union-attr]
    await asyncio.sleep(0)
    ids = child_ids("o", items)
    before = {one: await journal_of(inner, one) for one in ids}
    store_down = at is not None and fault != "cancel" and store.writes > at
    cancelled = isinstance(outcome, asyncio.CancelledError)
    check_caller_matches_journal(
        outcome, before["o"], cancel_with_store_up=cancelled and not store_down
        and before["o"] is not None,
    )
    if cancelled and not store_down:
        # S8/S13: the cancelled run ended its whole family final.
        for one, record in before.items():
            assert record is None or record.status.is_final, (one, record.status)
    if at is not None:
        store.heal()
    await recover_family(family, durable, "o")
    after = {one: await journal_of(inner, one) for one in ids}
    check_family(ledger, ids, after, family.specs, exact=not store_down, entered=family.entered)
    family.balance.check()


ROUND_CASES = [
    pytest.param(shape, kind, rounds, id=f"{shape}-{kind}-r{rounds}")
    for shape in SHAPES for kind in SCOPES for rounds in range(0, 16, 3)
]
WRITE_CASES = [
    pytest.param(shape, kind, at, fault, id=f"{shape}-{kind}-w{at}-{fault}")
    for shape in SHAPES for kind in SCOPES for at in range(WRITES[shape])
    for fault in ("cancel", "cancel_outage")
    # every write with move_on_after; every other one with the others
    if kind == "move_on_after" or (at + len(fault)) % 2 == 0
]

# SQLite: a store outage with the other scopes on every other write only (a
# child whose lease its parent could not give back holds recovery up for
# CHILD_LEASE seconds).
SQLITE_WRITE_CASES = [
    case for case in WRITE_CASES
    if case.values[1] == "move_on_after" or case.values[3] == "cancel"
]


# --------------------------------------------------------------------------- the plain case


def group_saga(
    ledger: list[str], rounds: int, hook: Callable[[], Awaitable[None]] | None = None,
    grouped: bool = True,
) -> type[Saga[SagaContext]]:
    """A, then a group of B (``rounds`` loop rounds in its act, after
    ``hook``) and C — or B and C one after the other, not ``grouped``."""

    def step(name: str, waits: int) -> type:
        async def act(self: object, ctx: SagaContext) -> None:
            if hook is not None and name == "B":
                await hook()
            for _ in range(waits):
                await asyncio.sleep(0)
            ledger.append(name)

        async def compensate(self: object, ctx: SagaContext) -> None:
            ledger.append(f"undo-{name}")

        return type(name, (), {"act": act, "compensate": compensate})

    class Grouped(Saga[SagaContext]):
        steps = [step("A", 0), *(
            [Parallel(step("B", rounds), step("C", 0))] if grouped
            else [step("B", rounds), step("C", 0)]
        )]

    return Grouped


@pytest.mark.timeout(30)  # the bug this guards against is a busy loop for ever
@pytest.mark.parametrize("rounds", [1, 3])
async def test_S8_S15_a_group_in_a_cancelled_anyio_scope_unwinds_and_the_scope_catches_it(
    rounds: int,
) -> None:
    """A group's member still in its call when the scope is cancelled: the
    group cancels it and waits for every member — while anyio cancels that
    wait again at every round. The wait spun for ever once the members had
    ended (each new wait cancelled before their done callbacks answered it)."""
    ledger: list[str] = []
    saga = group_saga(ledger, rounds)(store=MemorySagaStore())
    with anyio.CancelScope() as scope:
        scope.cancel()
        await saga.run(SagaContext())
    assert scope.cancelled_caught
    # B's call was cancelled in flight (or, its task started eagerly, had
    # ended): compensated either way, as the group's members are; A last.
    undone = [name for name in ledger if name.startswith("undo-")]
    assert {"A", "C"} <= set(ledger) - set(undone) <= {"A", "B", "C"}
    assert sorted(undone) == ["undo-A", "undo-B", "undo-C"]
    assert ledger[-1] == "undo-A"


@pytest.mark.timeout(30)  # as above: a busy loop for ever
async def test_S8_S10_a_recovery_pass_in_an_anyio_scope_cancelled_mid_resume_unwinds_it() -> None:
    """``recover`` inside a scope cancelled while the saga it resumed runs a
    step: the saga is cancelled and unwinds (S8), and the pass waits for it
    — while anyio cancels that wait again at every round. The wait spun for
    ever once the saga had ended."""
    inner = SQLiteSagaStore(":memory:")
    ledger: list[str] = []
    scope = anyio.CancelScope()
    resumed = False

    async def cancel_on_resume() -> None:
        if resumed:
            scope.cancel()
            await asyncio.sleep(0)  # anyio's cancellation lands here

    saga_class = group_saga(ledger, 0, hook=cancel_on_resume, grouped=False)
    try:
        for at in range(1, 8):  # the write of B's intent: the run stops before B
            store = FaultySubmittingStore(inner, at=at, kind="outage")
            ledger.clear()
            with contextlib.suppress(SagaError):
                await saga_class(store=store).run(SagaContext(), saga_id=f"o{at}")
            record = await journal_of(inner, f"o{at}")
            if ledger == ["A"] and record is not None and not record.status.is_final:
                break
        else:
            raise AssertionError("no write left the saga running after A")
        store.heal()
        resumed = True
        with scope:
            await recover(store, [saga_class(store=store)], older_than=0)
        assert scope.cancelled_caught
        record = await journal_of(inner, f"o{at}")
        assert record is not None
        assert record.status is SagaStatus.COMPENSATED
        # A ran again (its completion was never journaled: steps are
        # idempotent), B was cancelled before its effect; A is undone once.
        assert ledger == ["A", "A", "undo-A"]
    finally:
        await inner.close()


# ------------------------------------------------------------------ cancelled after k rounds


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("shape", "kind", "rounds"), ROUND_CASES)
async def test_S8_S13_S15_a_family_in_an_anyio_scope_cancelled_after_k_rounds_memory_store(
    shape: str, kind: str, rounds: int
) -> None:
    await anyio_case(MemorySagaStore(), shape, kind, durable=False, cancel_after=rounds)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("shape", "kind", "rounds"), ROUND_CASES)
async def test_S8_S13_S15_a_family_in_an_anyio_scope_cancelled_after_k_rounds_sqlite_store(
    shape: str, kind: str, rounds: int, tmp_path: Path
) -> None:
    store = SQLiteSagaStore(tmp_path / "sagas.db")
    try:
        await anyio_case(store, shape, kind, durable=True, cancel_after=rounds)
    finally:
        await store.close()


# ------------------------------------------------------------------ cancelled at every write


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("shape", "kind", "at", "fault"), WRITE_CASES)
async def test_S8_S13_S15_a_family_in_an_anyio_scope_cancelled_at_every_write_memory_store(
    shape: str, kind: str, at: int, fault: FaultKind
) -> None:
    await anyio_case(MemorySagaStore(), shape, kind, durable=False, at=at, fault=fault)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("shape", "kind", "at", "fault"), SQLITE_WRITE_CASES)
async def test_S8_S13_S15_a_family_in_an_anyio_scope_cancelled_at_every_write_sqlite_store(
    shape: str, kind: str, at: int, fault: FaultKind
) -> None:
    store = SQLiteSagaStore(":memory:")
    try:
        await anyio_case(store, shape, kind, durable=True, at=at, fault=fault)
    finally:
        await store.close()


# PostgreSQL: a server round trip per write — move_on_after, every other write.
PG_CASES = [
    pytest.param(shape, at, id=f"{shape}-w{at}")
    for shape in SHAPES for at in range(WRITES[shape]) if at % 2 == 0
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("shape", "at"), PG_CASES)
async def test_S8_S13_S15_a_family_in_an_anyio_scope_cancelled_at_a_write_postgres_store(
    shape: str, at: int, postgres_store: Callable[[], Any]
) -> None:
    store = postgres_store()
    try:
        await anyio_case(store, shape, "move_on_after", durable=True, at=at)
    finally:
        await store.close()
