"""S15 on the group's fast paths: a flat context (a ``__dict__`` of immutable
values, whose working copies share the group's base state), members run
without ``try_branch`` (plain steps on an in-process store), and a group that
waits for its members without a callback per member (the last to finish, or
the first to fail, wakes it).

What must hold whatever the path: each member works on its own copy, and
every try (and a fallback) starts from the state the group began with (S2);
``current_step()`` and context variables are the member's own; a timeout a
member enters is bound to the member's task, never the saga's; and a member
task cancelled from outside — even before it began — never leaves the group
waiting forever.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from typing import Any

import pytest
from helpers_saga import Blocker, Boom, JsonStore, Probe, Trace, compensated, declare

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    RetryPolicy,
    SagaContext,
    SagaFailed,
    SagaStatus,
    StepStatus,
    current_step,
)

pytest_plugins = ["helpers_stores"]


@dataclasses.dataclass
class FlatCtx(SagaContext):
    """Flat: every value immutable (the group's cheapest kind of context)."""

    order_id: str = "o-1"
    amount: int = 10
    a: str | None = None
    b: str | None = None
    c: str | None = None


def wreck(ctx: Any) -> None:
    ctx.amount += 1
    ctx.a = ["no", "longer", "flat"]
    ctx.extra = True


async def test_S15_S2_on_a_flat_context_every_try_and_the_fallback_start_from_the_groups_state(
) -> None:
    trace: Trace = []
    ctx = FlatCtx()
    seen_before: list[dict[str, Any]] = []

    def state(c: Any) -> dict[str, Any]:
        return dict(vars(c))

    before = Probe("Before", trace, mutate=lambda c: setattr(c, "amount", 11),
                   observe=lambda c: seen_before.append(state(c)))
    # A Fallback member whose primary wrecks its copy and fails three times.
    primary = Probe("Card", trace, error=Boom, mutate=wreck, observe=state)
    backup = Probe("Invoice", trace, observe=state, mutate=lambda c: setattr(c, "a", "A"))
    # A retried plain member: its first try wrecks its copy and fails.
    tries: list[int] = []

    def wreck_then_write(c: Any) -> None:
        tries.append(1)
        if len(tries) == 1:
            wreck(c)
        else:
            c.b = "B"

    flaky = Probe("Flaky", trace, error=Boom, fail_times=1, mutate=wreck_then_write,
                  observe=state)
    flaky.retry = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)  # type: ignore[attr-defined]
    # A plain member (run inline): writes its own field.
    plain = Probe("Plain", trace, observe=state, mutate=lambda c: setattr(c, "c", "C"))
    saga = declare(
        before,
        Parallel(
            Fallback(step=primary, fallback=backup,
                     retry=RetryPolicy(attempts=3, delay=0.0, jitter=0.0)),
            flaky,
            plain,
        ),
        context=FlatCtx,
    )()

    result = await saga.run(ctx)

    assert result.status is SagaStatus.COMPLETED
    group_began = {**dataclasses.asdict(FlatCtx()), "amount": 11}
    # Every try saw the state the group began with, on a copy of its own.
    assert primary.seen == [group_began] * 3
    assert backup.seen == [group_began]
    assert flaky.seen == [group_began] * 2
    assert plain.seen == [group_began]
    # What each member wrote was merged; nothing a failed try did survived.
    assert vars(ctx) == {**group_began, "a": "A", "b": "B", "c": "C"}
    assert [r.step_name for r in result.results] == ["Before", "Invoice", "Flaky", "Plain"]


async def test_S15_S2_a_failing_flat_member_leaves_the_groups_state_to_its_siblings() -> None:
    trace: Trace = []
    ctx = FlatCtx()
    # The failing member wrecks its copy before failing; the sibling that
    # completed later must still be diffed against the state the group began
    # with (its unchanged fields are not "writes"), and the unwinding must
    # leave the context as it was.
    bad = Probe("Bad", trace, error=Boom, mutate=wreck)
    good = Probe("Good", trace, mutate=lambda c: setattr(c, "b", "B"))
    saga = declare(Parallel(good, bad), context=FlatCtx)()
    with pytest.raises(SagaFailed) as info:
        await saga.run(ctx)
    assert info.value.failed_step == "Bad"
    assert compensated(trace) == ["Good"]
    # Good's write reached the context, Bad's wreckage never did.
    assert vars(ctx) == {**dataclasses.asdict(FlatCtx()), "b": "B"}


_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="caller")


class Member:
    """Records what the member sees: its ``current_step()``, a context
    variable it set itself, before and after letting its siblings run."""

    def __init__(self, name: str, field: str, suspends: bool) -> None:
        self.name = name
        self.field = field
        self.suspends = suspends
        self.seen: list[tuple[str, str]] = []

    async def act(self, ctx: Any) -> str:
        self.seen.append((current_step().step, _WHO.get()))
        _WHO.set(self.name)
        if self.suspends:
            await asyncio.sleep(0)  # the siblings run meanwhile
        setattr(ctx, self.field, self.name)
        self.seen.append((current_step().step, _WHO.get()))
        return self.name

    async def compensate(self, ctx: Any) -> None:
        setattr(ctx, self.field, None)


async def test_S15_each_flat_member_sees_its_own_current_step_and_context_variables() -> None:
    members = [Member("A", "a", False), Member("B", "b", True), Member("C", "c", False)]
    ctx = FlatCtx()
    _WHO.set("caller")
    result = await declare(Parallel(*members), context=FlatCtx)().run(ctx)
    assert result.status is SagaStatus.COMPLETED
    for member in members:
        assert member.seen == [(member.name, "caller"), (member.name, member.name)]
    assert _WHO.get() == "caller"  # no member's variable leaked into the caller
    assert (ctx.a, ctx.b, ctx.c) == ("A", "B", "C")


class TimesItselfOut:
    """A plain member (no ``timeout`` of its step) whose own code enters
    ``asyncio.timeout`` in its first step, before it ever waits."""

    def __init__(self) -> None:
        self.name = "Timed"

    async def act(self, ctx: Any) -> None:
        async with asyncio.timeout(0):
            await asyncio.Event().wait()

    async def compensate(self, ctx: Any) -> None:
        pass


async def test_S15_a_timeout_a_member_enters_cancels_that_member_never_the_saga() -> None:
    trace: Trace = []
    sibling = Blocker("Sibling", trace)
    saga = declare(Parallel(sibling, TimesItselfOut()), context=FlatCtx)()
    with pytest.raises(SagaFailed) as info:
        await saga.run(FlatCtx())
    # The timeout fired in the member's own task: a TimeoutError there, the
    # group failed as for any member's error — the saga's task not cancelled.
    assert isinstance(info.value.error, TimeoutError)
    assert info.value.failed_step == "Timed"
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    assert sibling.cancelled  # the sibling was stopped, and compensated
    assert compensated(trace) == ["Sibling"]


async def test_S15_a_timeout_of_a_members_step_binds_to_that_member_on_a_flat_context() -> None:
    trace: Trace = []
    slow = Blocker("Slow", trace)
    slow.timeout = 0.001  # type: ignore[attr-defined]
    quick = Probe("Quick", trace, mutate=lambda c: setattr(c, "b", "B"))
    saga = declare(Parallel(quick, slow), context=FlatCtx)()
    with pytest.raises(SagaFailed) as info:
        await saga.run(FlatCtx())
    assert isinstance(info.value.error, TimeoutError)
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
    assert compensated(trace) == ["Quick"]


def _member_tasks() -> list[asyncio.Task[Any]]:
    return [
        task for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "GroupRun.run_member"
    ]


async def test_S15_member_tasks_cancelled_from_outside_never_leave_the_group_waiting() -> None:
    """Something outside the saga cancels the members' tasks right after the
    group made them: on Python 3.11, before any of them began (a task cancelled
    before its first step never runs its coroutine, so never says it is done);
    on 3.12+, where members start at once, the one still waiting. The group
    must still end, and the saga unwind what ran."""
    trace: Trace = []
    store = MemorySagaStore()
    loop = asyncio.get_running_loop()
    cancelled: list[int] = []

    def cancel_members() -> None:
        tasks = [task for task in _member_tasks() if not task.done()]
        cancelled.append(len(tasks))
        for task in tasks:
            task.cancel()

    # Scheduled by the step before the group: runs right after the saga's task
    # made the member tasks, before the loop gives them their first step.
    before = Probe("Before", trace, mutate=lambda c: loop.call_soon(cancel_members))
    quick = Probe("Quick", trace, mutate=lambda c: setattr(c, "b", "B"))
    blocked = Blocker("Blocked", trace)
    saga = declare(before, Parallel(quick, blocked), context=FlatCtx)(store=store)

    task = asyncio.create_task(saga.run(FlatCtx(), saga_id="x"))
    # A hang is the failure this test is about: a safety net, not a synchronization.
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:
        task.cancel()
        pytest.fail("the group kept waiting for members that will never run")
    assert task.cancelled()  # the members' cancellation is the saga's: it unwound
    assert cancelled
    assert cancelled[0] >= 1
    # Whatever ran was undone, the group's members before the earlier step.
    undone = compensated(trace)
    assert undone[-1] == "Before"
    assert set(undone[:-1]) <= {"Quick", "Blocked"}
    record = await store.load("x")
    assert record.status is SagaStatus.COMPENSATED
    acts = {(e.step, e.status) for e in record.history if e.action == "act"}
    assert ("Before", StepStatus.COMPLETED) in acts


class Picky(SagaContext):
    """A context class whose instances cannot be made bare, nor copied: no
    member can get a working copy of it."""

    order_id: str
    a: str | None

    def __new__(cls, order_id: str, a: str | None = None) -> Picky:
        return super().__new__(cls)

    def __init__(self, order_id: str, a: str | None = None) -> None:
        self.order_id = order_id
        self.a = a


@pytest.mark.parametrize("store_kind", ["memory", "write-ahead"])
async def test_S15_a_member_without_a_working_copy_fails_the_group_and_says_so(
    store_kind: str,
) -> None:
    trace: Trace = []
    # (MemorySagaStore cannot show such a context back: it is read from a
    # write-ahead store's JSON.)
    store: Any = MemorySagaStore() if store_kind == "memory" else JsonStore()
    before = Probe("Before", trace)
    saga = declare(before, Parallel(Probe("A", trace), Probe("B", trace)), context=Picky)(
        store=store
    )
    task = asyncio.create_task(saga.run(Picky("o-1"), saga_id="p"))
    done, _ = await asyncio.wait({task}, timeout=10)  # a safety net against a hang
    if not done:
        task.cancel()
        pytest.fail("the group kept waiting for a member that had failed")
    with pytest.raises(SagaFailed) as info:
        task.result()
    assert info.value.failed_step == "A"
    assert isinstance(info.value.error, TypeError)
    assert set(info.value.branch_errors or {}) == {"A", "B"}
    assert trace == [("act", "Before"), ("compensate", "Before")]  # no member's act ran
    if store_kind == "memory":
        return
    record = await store.load("p")
    ends = [(e.step, e.status) for e in record.history if e.action == "act"][1:]
    # Each member's STARTED is closed: FAILED, before its act was ever called.
    assert sorted(ends) == sorted([
        ("Before", StepStatus.COMPLETED), ("A", StepStatus.STARTED), ("B", StepStatus.STARTED),
        ("A", StepStatus.FAILED), ("B", StepStatus.FAILED),
    ])
