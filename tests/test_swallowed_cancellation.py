"""A cancellation that a participant swallows or converts (S8, S13, S3, S9, S15).

Real drivers do not always let a ``CancelledError`` through: psycopg
cancelled mid-query raises an error of its own, psycopg_pool retries a
connection check a cancellation cut off and answers, some HTTP clients catch
``BaseException`` and return an error object, and user code writes
``except BaseException: log; return None``. The task's count of pending
requests (``Task.cancelling()``) is the witness such code cannot swallow.

Every test here cancels the saga's caller while a participant waits, has that
participant swallow (return normally) or convert (raise an error of its own)
the ``CancelledError``, and checks the participant's ledger and the journal:
the caller asked to stop, so no later step runs, nothing falls back or is
retried, a breaker counts nothing, the completed steps are compensated, the
journal ends saying so, and the caller gets ``CancelledError`` (or, under
``asyncio.timeout()``, ``TimeoutError``) — never a ``SagaResult``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from journal_faults import FaultyStore

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaListener,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
)

STORES = ("memory", "sqlite")
# The executor's paths to a step's act: the lean run (memory, plain steps) or
# run_all's inlined loop (SQLite, plain steps); try_branch (a retried step;
# a plain step with a listener); a Fallback's primary under a breaker (act).
HOWS = ("plain", "retried", "listened", "fallback-with-breaker")


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str
    n: int = 0


class Ledger:
    """What the participants did; ``reached`` is set when the hanging one waits."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reached = asyncio.Event()

    async def hang(self, name: str, how: str) -> None:
        """Wait until cancelled, then swallow the cancellation (``how`` is
        "swallow": return normally) or convert it ("convert": raise an
        error of the driver's own, as psycopg does)."""
        self.reached.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.calls.append(f"{name} caught the cancellation")
            if how == "swallow":
                return
            raise ConnectionError("canceling statement due to user request") from None


def plain_step(ledger: Ledger, name: str, *, hang: str | None = None) -> type:
    class Step:
        async def act(self, ctx: Ctx) -> None:
            ledger.calls.append(name)
            if hang is not None:
                await ledger.hang(name, hang)
            ctx.n += 1

        async def compensate(self, ctx: Ctx) -> None:
            ledger.calls.append(f"undo {name}")

    Step.__name__ = Step.__qualname__ = name
    return Step


class Quiet(SagaListener):
    """A listener (any listener takes a run off its inlined paths)."""


def order_saga(ledger: Ledger, how: str, hang: str, breaker: CircuitBreaker) -> type[Saga[Ctx]]:
    """Reserve; Charge, which hangs (and swallows or converts, ``hang``); Ship.
    ``how``: which of the executor's paths runs Charge (see HOWS)."""
    charge: Any = plain_step(ledger, "Charge", hang=hang)
    if how == "retried":
        charge = type("Charge", (charge,), {"retry": RetryPolicy(attempts=3, delay=0.0)})
    elif how == "fallback-with-breaker":
        charge = Fallback(charge(), plain_step(ledger, "ChargeElsewhere")(),
                          circuit_breaker=breaker)

    class OrderSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), charge, plain_step(ledger, "Ship")]

    return OrderSaga


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Any] = []

    def make(kind: str) -> Any:
        store = MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, SQLiteSagaStore):
            await store.close()


async def run_and_cancel(
    saga: Saga[Ctx], ledger: Ledger, saga_id: str
) -> BaseException | None:
    """Run ``saga``, cancel it once the hanging participant waits: what the
    run raised (None: it returned)."""
    task = asyncio.create_task(saga.run(Ctx(order_id=saga_id), saga_id=saga_id))
    await ledger.reached.wait()
    task.cancel("shutting down")
    await asyncio.wait([task])
    if task.cancelled():
        with pytest.raises(asyncio.CancelledError) as raised:
            task.result()
        return raised.value
    return task.exception()


def rows(record: Any, step: str) -> list[tuple[str, StepStatus, str | None]]:
    return [(e.action, e.status, e.error) for e in record.history if e.step == step]


# A step the run reached after a swallowed cancellation: journaled as
# cancelled before its act (as a cancellation landing in its write-ahead
# does), never called. (The caller's message went with what was swallowed.)
NOT_CALLED = [("act", StepStatus.STARTED, None), ("act", StepStatus.FAILED, "CancelledError")]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("how", HOWS)
async def test_S8_S13_an_act_that_swallows_the_callers_cancellation_stops_the_run(
    kind: str, how: str, make_store: Callable[[str], Any]
) -> None:
    """Charge's participant catches the caller's cancellation and returns.
    Its act completed, so it is on the compensation stack — but the caller
    asked to stop: Ship never runs, Charge and Reserve are compensated, the
    journal ends COMPENSATED and the caller gets ``CancelledError``, not a
    ``SagaResult`` of a saga that ran forward behind its back."""
    ledger = Ledger()
    store = make_store(kind)
    listeners = [Quiet()] if how == "listened" else []
    saga = order_saga(ledger, how, "swallow", CircuitBreaker())(store=store, listeners=listeners)
    raised = await run_and_cancel(saga, ledger, "o-1")
    assert isinstance(raised, asyncio.CancelledError), raised
    assert ledger.calls == [
        "Reserve", "Charge", "Charge caught the cancellation", "undo Charge", "undo Reserve",
    ]
    record = await store.load("o-1")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Ship") == NOT_CALLED
    assert [(a, s) for a, s, _ in rows(record, "Charge")] == [
        ("act", StepStatus.STARTED), ("act", StepStatus.COMPLETED),
        ("compensate", StepStatus.STARTED), ("compensate", StepStatus.COMPLETED),
    ]
    # The task's count is left as it was: one cancel(), one pending request.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("how", HOWS)
async def test_S3_S8_S9_an_act_that_converts_the_cancellation_never_falls_back_or_retries(
    kind: str, how: str, make_store: Callable[[str], Any]
) -> None:
    """Charge's participant turns the caller's cancellation into an error of
    its own (as psycopg does). That is still the caller's cancellation: no
    fallback (S3), no retry, the breaker counts nothing (S9), Ship never
    runs; Reserve is compensated (Charge's act did not complete); the journal
    says Charge was cancelled; the caller gets ``CancelledError`` with its
    own message, the driver's error as its cause — not ``SagaFailed``."""
    ledger = Ledger()
    store = make_store(kind)
    breaker = CircuitBreaker(fail_max=1)
    listeners = [Quiet()] if how == "listened" else []
    saga = order_saga(ledger, how, "convert", breaker)(store=store, listeners=listeners)
    raised = await run_and_cancel(saga, ledger, "o-2")
    assert isinstance(raised, asyncio.CancelledError), raised
    assert raised.args == ("shutting down",)
    assert isinstance(raised.__cause__, ConnectionError)
    assert ledger.calls == ["Reserve", "Charge", "Charge caught the cancellation", "undo Reserve"]
    assert breaker.failure_count == 0
    record = await store.load("o-2")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Charge") == [
        ("act", StepStatus.STARTED, None),
        ("act", StepStatus.FAILED, "CancelledError: shutting down"),
    ]
    assert rows(record, "ChargeElsewhere") == rows(record, "Ship") == []


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_asyncio_timeout_around_run_gives_TimeoutError_after_compensation(
    kind: str, hang: str, make_store: Callable[[str], Any]
) -> None:
    """``asyncio.timeout()`` around ``saga.run()`` whose deadline passes
    while a participant swallows or converts the cancellation: the docs
    promise the completed steps are compensated before ``TimeoutError``
    reaches the caller. (The deadline is moved to now once the participant
    waits: no wall clock in the test.)"""
    ledger = Ledger()
    store = make_store(kind)
    saga = order_saga(ledger, "plain", hang, CircuitBreaker())(store=store)

    async def under_a_deadline() -> None:
        async with asyncio.timeout(None) as deadline:
            # The run in a task of its own, cancelled when the deadline
            # cancels us (as wait_for does on Python 3.11).
            run = asyncio.ensure_future(saga.run(Ctx(order_id="o-3"), saga_id="o-3"))
            try:
                await ledger.reached.wait()
                deadline.reschedule(asyncio.get_running_loop().time())
                await run
            finally:
                run.cancel()

    with pytest.raises(TimeoutError):
        await under_a_deadline()
    undone = ["undo Charge"] if hang == "swallow" else []
    assert ledger.calls == [
        "Reserve", "Charge", "Charge caught the cancellation", *undone, "undo Reserve",
    ]
    record = await store.load("o-3")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Ship") == (NOT_CALLED if hang == "swallow" else [])


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_asyncio_timeout_in_the_callers_task_gives_TimeoutError(
    kind: str, hang: str, make_store: Callable[[str], Any]
) -> None:
    """The same, with the saga run in the timeout's own task (the usual
    ``async with asyncio.timeout(5): await saga.run(ctx)``): the deadline
    cancels that task, the participant swallows or converts it."""
    ledger = Ledger()
    store = make_store(kind)
    saga = order_saga(ledger, "plain", hang, CircuitBreaker())(store=store)

    async def move_deadline(deadline: asyncio.Timeout) -> None:
        await ledger.reached.wait()
        deadline.reschedule(asyncio.get_running_loop().time())

    movers: list[asyncio.Future[None]] = []

    async def under_a_deadline() -> None:
        async with asyncio.timeout(None) as deadline:
            movers.append(asyncio.ensure_future(move_deadline(deadline)))
            await saga.run(Ctx(order_id="o-4"), saga_id="o-4")

    with pytest.raises(TimeoutError):
        await under_a_deadline()
    await movers[0]
    undone = ["undo Charge"] if hang == "swallow" else []
    assert ledger.calls == [
        "Reserve", "Charge", "Charge caught the cancellation", *undone, "undo Reserve",
    ]
    record = await store.load("o-4")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Ship") == (NOT_CALLED if hang == "swallow" else [])
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_a_saga_run_in_a_cancellation_cleanup_handler_runs_and_still_stops(
    hang: str,
) -> None:
    """A saga run inside ``except CancelledError:`` (a cleanup) starts with a
    request pending that is not its own: it runs to completion. A second
    request made while a second saga runs there, which its participant
    swallows or converts, stops that saga (compensated), and the cleanup's
    caller gets the cancellation."""
    ledger = Ledger()

    class Cleanup(Saga[Ctx]):
        steps = [plain_step(ledger, "Flush"), plain_step(ledger, "Close")]

    saga = order_saga(ledger, "plain", hang, CircuitBreaker())()
    outcome: list[Any] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append((await Cleanup().run(Ctx(order_id="c-1"))).status)
            try:
                outcome.append(await saga.run(Ctx(order_id="c-2")))
            except asyncio.CancelledError as stopped:
                outcome.append(stopped)
            raise

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker waits
    task.cancel("first")
    await ledger.reached.wait()
    task.cancel("second")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome[0] is SagaStatus.COMPLETED
    assert isinstance(outcome[1], asyncio.CancelledError), outcome[1]
    undone = ["undo Charge"] if hang == "swallow" else []
    assert ledger.calls == [
        "Flush", "Close", "Reserve", "Charge", "Charge caught the cancellation", *undone,
        "undo Reserve",
    ]


def group_saga(ledger: Ledger, member: str, hang: str) -> type[Saga[Ctx]]:
    """Reserve; a group of Charge (which hangs; a plain member, or a
    Fallback's primary whose fallback is ChargeElsewhere) and Check (which
    fails once Charge waits, so the group cancels Charge); Ship."""
    charge: Any = plain_step(ledger, "Charge", hang=hang)
    if member == "fallback":
        charge = Fallback(charge(), plain_step(ledger, "ChargeElsewhere")())

    class Check:
        async def act(self, ctx: Ctx) -> None:
            await ledger.reached.wait()
            ledger.calls.append("Check")
            raise ValueError("declined")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.calls.append("undo Check")

    class GroupSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), Parallel(charge, Check), plain_step(ledger, "Ship")]

    return GroupSaga


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("member", ["plain", "fallback"])
async def test_S15_S3_a_member_that_converts_its_cancellation_is_compensated_not_fallen_back(
    kind: str, member: str, make_store: Callable[[str], Any]
) -> None:
    """A sibling fails, the group cancels Charge, and Charge's participant
    converts the cancellation into an error of its own. Charge was stopped
    in flight — its effect is uncertain, as any member cancelled in flight
    (journaled CANCELLED, compensated) — and its fallback never runs: a
    forward run after the group asked it to stop."""
    from fallback_saga import SagaFailed

    ledger = Ledger()
    store = make_store(kind)
    saga = group_saga(ledger, member, "convert")(store=store)
    with pytest.raises(SagaFailed) as failed:
        await saga.run(Ctx(order_id="g-1"), saga_id="g-1")
    assert failed.value.failed_step == "Check"
    assert ledger.calls == [
        "Reserve", "Charge", "Check", "Charge caught the cancellation", "undo Charge",
        "undo Reserve",
    ]
    record = await store.load("g-1")
    assert record.status is SagaStatus.COMPENSATED
    assert [(a, s) for a, s, _ in rows(record, "Charge")][:2] == [
        ("act", StepStatus.STARTED), ("act", StepStatus.CANCELLED),
    ]
    assert rows(record, "ChargeElsewhere") == rows(record, "Ship") == []


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S15_S8_a_child_saga_whose_step_swallows_the_cancellation_unwinds_both(
    kind: str, hang: str, make_store: Callable[[str], Any]
) -> None:
    """The parent's caller is cancelled while a child saga's step waits; the
    step's participant swallows or converts it. The child must not run on
    (nor the parent after it): both unwind, and the caller is cancelled."""
    ledger = Ledger()
    store = make_store(kind)

    class Child(Saga[Ctx]):
        steps = [plain_step(ledger, "Hold"), plain_step(ledger, "Pay", hang=hang),
                 plain_step(ledger, "Notify")]

    class Parent(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"),
                 SubSaga(Child(store=store), context=lambda c: Ctx(order_id=c.order_id)),
                 plain_step(ledger, "Ship")]

    raised = await run_and_cancel(Parent(store=store), ledger, "p-1")
    assert isinstance(raised, asyncio.CancelledError), raised
    undone = ["undo Pay"] if hang == "swallow" else []
    assert ledger.calls == [
        "Reserve", "Hold", "Pay", "Pay caught the cancellation", *undone, "undo Hold",
        "undo Reserve",
    ]
    parent = await store.load("p-1")
    assert parent.status is SagaStatus.COMPENSATED
    assert rows(parent, "Ship") == []
    child = await store.load("p-1/Child")
    assert child.status is SagaStatus.COMPENSATED
    assert rows(child, "Notify") == (NOT_CALLED if hang == "swallow" else [])


@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_a_transaction_step_that_swallows_the_cancellation_stops_it(hang: str) -> None:
    """``saga.transaction()``: the caller's cancellation, swallowed or
    converted in a step, stops the transaction before the next step's act
    and unwinds it (Ship is never called)."""
    ledger = Ledger()
    store = MemorySagaStore()
    saga = order_saga(ledger, "plain", hang, CircuitBreaker())(store=store)
    seen: list[str] = []

    async def drive() -> None:
        async with saga.transaction(Ctx(order_id="t-1"), saga_id="t-1") as tx:
            async for result in tx:
                seen.append(result.step_name)

    task = asyncio.create_task(drive())
    await ledger.reached.wait()
    task.cancel("shutting down")
    with pytest.raises(asyncio.CancelledError):
        await task
    # Charge returned (it swallowed the cancellation): the transaction yields
    # it, and stops before the next step's act.
    assert seen == (["Reserve", "Charge"] if hang == "swallow" else ["Reserve"])
    undone = ["undo Charge"] if hang == "swallow" else []
    assert ledger.calls == [
        "Reserve", "Charge", "Charge caught the cancellation", *undone, "undo Reserve",
    ]
    assert (await store.load("t-1")).status is SagaStatus.COMPENSATED


def shutdown_while_compensating(store: Any, ledger_calls: list[str], hang: str) -> None:
    """``asyncio.run(main)`` whose ``main`` returns while the saga's
    unwinding waits in Charge's compensation: the runner cancels the
    unwinding task, and the compensation swallows or converts that."""

    async def main() -> None:
        ledger = Ledger()
        ledger.calls = ledger_calls

        class Charge:
            async def act(self, ctx: Ctx) -> None:
                ledger.calls.append("Charge")

            async def compensate(self, ctx: Ctx) -> None:
                ledger.calls.append("undo Charge")
                await ledger.hang("undo Charge", hang)

        class Ship:
            async def act(self, ctx: Ctx) -> None:
                raise ValueError("declined")

            async def compensate(self, ctx: Ctx) -> None:
                ledger.calls.append("undo Ship")

        class ShutdownSaga(Saga[Ctx]):
            steps = [plain_step(ledger, "Reserve"), Charge, Ship]

        saga = ShutdownSaga(store=store, compensation_retry=RetryPolicy(attempts=3, delay=0.0))
        asyncio.get_running_loop().create_task(saga.run(Ctx(order_id="u-1"), saga_id="u-1"))
        await ledger.reached.wait()

    asyncio.run(main())


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("hang", ["swallow", "convert"])
def test_S8_S13_a_compensation_that_swallows_the_loops_shutdown_compensates_nothing_more(
    kind: str, hang: str, tmp_path: Path
) -> None:
    """The loop's shutdown cancels the unwinding task while Charge's
    compensate waits; the participant swallows or converts it. The docs:
    the compensation it interrupts is not journaled as failed (nor tried
    again), and no earlier step is compensated behind the shutdown's back —
    the saga stays COMPENSATING for recovery."""
    calls: list[str] = []
    store: Any = MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
    shutdown_while_compensating(store, calls, hang)
    assert calls == ["Reserve", "Charge", "undo Charge", "undo Charge caught the cancellation"]

    async def journal() -> Any:
        reopened = store if kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
        try:
            return await reopened.load("u-1")
        finally:
            if kind != "memory":
                await reopened.close()

    record = asyncio.run(journal())
    assert record.status is SagaStatus.COMPENSATING
    assert [s for a, s, _ in rows(record, "Charge") if a == "compensate"][-1] in (
        StepStatus.STARTED, StepStatus.COMPLETED
    )
    assert StepStatus.FAILED not in [s for _, s, _ in rows(record, "Charge")]
    assert [s for a, s, _ in rows(record, "Reserve") if a == "compensate"] == []


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_S13_a_last_step_that_swallows_the_cancellation_never_completes_the_saga(
    kind: str, hang: str, make_store: Callable[[str], Any]
) -> None:
    """The last step's participant swallows or converts the cancellation:
    no later step to stop, but the saga must not be declared COMPLETED to a
    caller that asked to stop while that step ran (S8: cancelled mid-step,
    the completed steps are compensated; S13: the journal says so)."""
    ledger = Ledger()
    store = make_store(kind)

    class LastSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), plain_step(ledger, "Ship", hang=hang)]

    raised = await run_and_cancel(LastSaga(store=store), ledger, "l-1")
    assert isinstance(raised, asyncio.CancelledError), raised
    undone = ["undo Ship"] if hang == "swallow" else []
    assert ledger.calls == ["Reserve", "Ship", "Ship caught the cancellation", *undone,
                            "undo Reserve"]
    record = await store.load("l-1")
    assert record.status is SagaStatus.COMPENSATED


async def test_S8_S13_a_last_act_that_cancels_its_caller_completes_and_the_caller_is_cancelled(
) -> None:
    """The last step's act cancels its caller as it returns, without
    waiting (nothing was swallowed: the request has not landed yet). On a
    write-ahead store it lands in the completion's write: the saga is
    COMPLETED (its journal says so) and the caller gets its
    ``CancelledError`` with its own message. ``MemorySagaStore`` must tell
    the caller the same, not hand it a ``SagaResult`` and let the request
    land wherever the caller waits next."""
    ledger = Ledger()
    store = MemorySagaStore()
    victim: list[asyncio.Task[Any]] = []

    class Ship:
        async def act(self, ctx: Ctx) -> None:
            ledger.calls.append("Ship")
            victim[0].cancel("shutting down")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.calls.append("undo Ship")

    class LastSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), Ship]

    after: list[str] = []

    async def caller() -> None:
        await LastSaga(store=store).run(Ctx(order_id="l-2"), saga_id="l-2")
        after.append("the caller went on")

    task = asyncio.create_task(caller())
    victim.append(task)
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert raised.value.args == ("shutting down",)
    assert after == []
    assert ledger.calls == ["Reserve", "Ship"]
    assert (await store.load("l-2")).status is SagaStatus.COMPLETED


async def test_S8_S13_an_act_that_cancels_its_caller_stops_the_memory_store_run_before_the_next_act(
) -> None:
    """An act cancels its caller as it returns, without waiting. On a
    write-ahead store the request lands in the next step's write-ahead: that
    step is journaled FAILED, never called. ``MemorySagaStore`` writes
    nothing between steps; the request used to land wherever the next act
    first waited — after the next act had been called (and, with acts that
    never wait, after the saga had run on to the end)."""
    ledger = Ledger()
    store = MemorySagaStore()
    victim: list[asyncio.Task[Any]] = []

    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            ledger.calls.append("Reserve")
            victim[0].cancel("shutting down")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.calls.append("undo Reserve")

    class OrderSaga(Saga[Ctx]):
        steps = [Reserve, plain_step(ledger, "Charge"), plain_step(ledger, "Ship")]

    task = asyncio.create_task(OrderSaga(store=store).run(Ctx(order_id="m-1"), saga_id="m-1"))
    victim.append(task)
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert raised.value.args == ("shutting down",)
    assert ledger.calls == ["Reserve", "undo Reserve"]
    record = await store.load("m-1")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Charge") == [
        ("act", StepStatus.STARTED, None),
        ("act", StepStatus.FAILED, "CancelledError: shutting down"),
    ]


@pytest.mark.parametrize("hang", ["swallow", "convert"])
async def test_S8_a_transaction_whose_last_step_swallows_the_cancellation_never_commits(
    hang: str,
) -> None:
    """The last step of a ``saga.transaction()`` swallows or converts the
    caller's cancellation; the block then ends normally. The transaction must
    not commit (COMPLETED) for a caller that asked to stop: it unwinds, and
    the ``async with`` raises ``CancelledError``."""
    ledger = Ledger()
    store = MemorySagaStore()

    class LastSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), plain_step(ledger, "Ship", hang=hang)]

    async def drive() -> None:
        async with LastSaga(store=store).transaction(Ctx(order_id="t-2"), saga_id="t-2") as tx:
            async for _ in tx:
                pass

    task = asyncio.create_task(drive())
    await ledger.reached.wait()
    task.cancel("shutting down")
    with pytest.raises(asyncio.CancelledError):
        await task
    undone = ["undo Ship"] if hang == "swallow" else []
    assert ledger.calls == ["Reserve", "Ship", "Ship caught the cancellation", *undone,
                            "undo Reserve"]
    assert (await store.load("t-2")).status is SagaStatus.COMPENSATED


def cancelling_member_saga(
    ledger: Ledger, victim: list[asyncio.Task[Any]], how: str, where: str,
    breaker: CircuitBreaker, store: Any,
) -> type[Saga[Ctx]]:
    """Reserve; a group of Charge and Notify; Ship. Charge's act cancels the
    saga's caller (the task awaiting the run, through a captured handle)
    and then raises an ordinary error, without waiting — so the request has
    not reached the member when its error does. ``how``: Charge is a
    Fallback's primary (ChargeElsewhere its fallback; with a breaker, or
    not) or a step retried at once (its retry's sleep never waits).
    ``where``: Charge is the member itself, or a step of a child saga
    (Hold, Charge, Pay) that is the member."""

    class Charge:
        async def act(self, ctx: Ctx) -> None:
            ledger.calls.append("Charge")
            victim[0].cancel("shutting down")
            raise ConnectionError("card service unreachable")

        async def compensate(self, ctx: Ctx) -> None:
            ledger.calls.append("undo Charge")

    async def no_wait(delay: float) -> None:
        return None

    charge: Any
    if how == "retried":
        charge = type("Charge", (Charge,), {
            "retry": RetryPolicy(attempts=3, delay=0.0, jitter=0.0, sleep=no_wait)})
    else:
        charge = Fallback(Charge(), plain_step(ledger, "ChargeElsewhere")(),
                          circuit_breaker=breaker if how == "fallback-with-breaker" else None)
    if where == "child":

        class Child(Saga[Ctx]):
            steps = [plain_step(ledger, "Hold"), charge, plain_step(ledger, "Pay")]

        charge = SubSaga(Child(store=store), context=lambda c: Ctx(order_id=c.order_id))

    class GroupSaga(Saga[Ctx]):
        steps = [plain_step(ledger, "Reserve"), Parallel(charge, plain_step(ledger, "Notify")),
                 plain_step(ledger, "Ship")]

    return GroupSaga


@pytest.mark.parametrize("kind", [*STORES, "writes-never-wait"])
@pytest.mark.parametrize("how", ["fallback", "fallback-with-breaker", "retried"])
@pytest.mark.parametrize("where", ["member", "child"])
async def test_S3_S9_S15_a_member_that_cancels_its_run_and_raises_never_falls_back_or_retries(
    kind: str, how: str, where: str, make_store: Callable[[str], Any]
) -> None:
    """A group member's act cancels the saga's caller, then raises. The act
    answered — it failed, and is not compensated (S5) — but the run is
    being cancelled: nothing falls back or is tried again after it (S3),
    its breaker counts nothing (S9), Ship never runs, every step that
    completed is compensated (S8, S15) and the caller gets
    ``CancelledError`` — once. Every store makes the same calls.

    The request is made of the run's task; the member runs in a task of its
    own, whose count of requests does not grow. On SQLite the fallback's
    (or the retry's) write-ahead let the run's task take its step and cancel
    the member there — but the breaker had counted the failure; on an
    in-process store, or one whose writes never wait, nothing waited: the
    fallback ran (and completed, and was compensated), or the step was
    tried again."""
    ledger = Ledger()
    if kind == "writes-never-wait":
        inner = MemorySagaStore()
        store: Any = FaultyStore(inner)
    else:
        inner = store = make_store(kind)
    breaker = CircuitBreaker(fail_max=1)
    victim: list[asyncio.Task[Any]] = []
    saga = cancelling_member_saga(ledger, victim, how, where, breaker, store)(store=store)
    outcome: list[Any] = []

    async def caller() -> None:
        try:
            await saga.run(Ctx(order_id="g-2"), saga_id="g-2")
            outcome.append("returned")
        except asyncio.CancelledError as stopped:
            outcome.append(stopped.args)
        # A caller that handles the cancellation and goes on: one request,
        # one CancelledError — none left to land in its next wait.
        await asyncio.sleep(0)
        outcome.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

    task = asyncio.create_task(caller())
    victim.append(task)
    await task
    assert outcome == [("shutting down",), 1]
    child = ["Hold", "undo Hold"] if where == "child" else []
    assert sorted(ledger.calls) == sorted(
        ["Reserve", "Charge", "Notify", "undo Notify", "undo Reserve", *child]
    )
    assert breaker.failure_count == 0
    assert breaker.state.value == "closed"
    record = await inner.load("g-2/Child" if where == "child" else "g-2")
    assert record.status is SagaStatus.COMPENSATED
    assert rows(record, "Charge") == [
        ("act", StepStatus.STARTED, None),
        ("act", StepStatus.FAILED, "ConnectionError: card service unreachable"),
    ]
    assert rows(record, "ChargeElsewhere") == []
    assert (await inner.load("g-2")).status is SagaStatus.COMPENSATED
