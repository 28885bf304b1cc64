"""S8/S13: a cancelled saga raises the caller's own cancellation.

``task.cancel("why")`` carries a message (``CancelledError.args``). Wherever
the cancellation lands — a step's act, a journal write held back until it is
durable, a compensation that runs to its end shielded — the ``CancelledError``
the caller finally sees carries that message, on every way a saga runs
(``run``, ``resume``, ``transaction()``, a ``Parallel`` group, a child saga),
and the task's cancellation count stays right: inside the task
``cancelling()`` is 1 (one request, not swallowed, not counted twice), so
``asyncio.timeout`` around a saga still turns its own cancellation into
``TimeoutError``.

A journal write is held by a gate (``GatedStore``): the test cancels while
it waits, then lets it go. Writes go three ways (journal.py): a coroutine
driven in a task of its own (a store that says nothing), a coroutine driven
inline (``writes_outlive_cancellation``), and a submitted write's future
(``submits_writes``: SQLite, PostgreSQL); each is tested. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    JournalEntry,
    Parallel,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
    recover,
)
from fallback_saga.store._common import JournalFuture
from fallback_saga.testing import entry

MESSAGE = "the operator pressed stop"

Match = Callable[[Sequence[JournalEntry], SagaStatus | None], bool]


class Gate:
    """Holds the first journal write that ``match`` picks until ``release``."""

    def __init__(self) -> None:
        self.match: Match | None = None
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def passed(self, entries: Sequence[JournalEntry], status: SagaStatus | None) -> None:
        if self.match is not None and self.match(entries, status):
            self.match = None
            self.reached.set()
            await self.release.wait()


class GatedSubmits(SQLiteSagaStore):
    """SQLite's submitted writes (``submits_writes``), held at the gate."""

    gate: Gate

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self.gate.passed(args[3], kwargs.get("status"))
        await super().create(saga_id, *args, **kwargs)

    async def append(self, saga_id: str, entries: Any, **kwargs: Any) -> None:
        await self.gate.passed(entries, kwargs.get("status"))
        await super().append(saga_id, entries, **kwargs)

    def submit_create(self, *args: Any) -> asyncio.Future[None]:
        return self._held(args[4], args[5], lambda: super(GatedSubmits, self).submit_create(*args))

    def submit_append(self, *args: Any) -> asyncio.Future[None]:
        return self._held(args[1], args[2], lambda: super(GatedSubmits, self).submit_append(*args))

    def _held(
        self, entries: Any, status: Any, submit: Callable[[], asyncio.Future[None]]
    ) -> asyncio.Future[None]:
        outcome = JournalFuture()

        async def write() -> None:
            try:
                await self.gate.passed(entries, status)
                await submit()
            except BaseException as error:
                outcome.set_exception(error)
            else:
                outcome.set_result(None)

        outcome.writer = asyncio.ensure_future(write())  # type: ignore[attr-defined]
        return outcome


class GatedWrapper:
    """A store over SQLite whose create/append coroutines wait at the gate;
    ``inline``: it says its writes outlive cancellation (driven inline)."""

    def __init__(self, inner: SQLiteSagaStore, gate: Gate, *, inline: bool) -> None:
        self.inner = inner
        self.gate = gate
        self.writes_outlive_cancellation = inline

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self.gate.passed(args[3], kwargs.get("status"))
        await self.inner.create(saga_id, *args, **kwargs)

    async def append(self, saga_id: str, entries: Any, **kwargs: Any) -> None:
        await self.gate.passed(entries, kwargs.get("status"))
        await self.inner.append(saga_id, entries, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


WAYS = ("task", "inline", "submitted")


@pytest.fixture(params=WAYS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    gate = Gate()
    if request.param == "submitted":
        submits = GatedSubmits(tmp_path / "sagas.db")
        submits.gate = gate
        async with submits:
            yield submits
        return
    async with SQLiteSagaStore(tmp_path / "sagas.db") as inner:
        yield GatedWrapper(inner, gate, inline=request.param == "inline")


# --------------------------------------------------------------------------- the sagas


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = "o-1"
    fail: bool = False


class Hold:
    """Where a step waits, when the test asks it to."""

    act_reached = asyncio.Event()
    act_release = asyncio.Event()
    comp_reached = asyncio.Event()
    comp_release = asyncio.Event()
    hold_act: str | None = None
    hold_comp: str | None = None
    compensated: ClassVar[list[str]] = []

    @classmethod
    def reset(cls) -> None:
        cls.act_reached, cls.act_release = asyncio.Event(), asyncio.Event()
        cls.comp_reached, cls.comp_release = asyncio.Event(), asyncio.Event()
        cls.hold_act = cls.hold_comp = None
        cls.compensated = []


class _Step(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> Any:
        name = type(self).__name__
        if Hold.hold_act == name:
            Hold.act_reached.set()
            await Hold.act_release.wait()
        if ctx.fail and name == "Fail":
            raise RuntimeError("refused")
        return self._generate_step_result(name)

    async def compensate(self, ctx: Ctx, /) -> None:
        name = type(self).__name__
        if Hold.hold_comp == name:
            Hold.comp_reached.set()
            await Hold.comp_release.wait()
        Hold.compensated.append(name)


class Reserve(_Step):
    pass


class Charge(_Step):
    pass


class Pack(_Step):
    pass


class Fail(_Step):
    pass


class LineSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve, Charge, Fail]


class GroupSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve, Parallel(Charge, Pack), Fail]


class ChildSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Charge, Pack]


def _child_context(parent: Ctx) -> Ctx:
    return Ctx(order_id=parent.order_id)


class ParentSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve, SubSaga(ChildSaga, context=_child_context), Fail]


@pytest.fixture(autouse=True)
def holds() -> None:
    Hold.reset()


def completing(step: str) -> Match:
    """The write that journals ``step``'s act as completed."""
    return lambda entries, status: any(
        e.step == step and e.action == "act" and e.status is StepStatus.COMPLETED
        for e in entries
    )


def unwinding(entries: Sequence[JournalEntry], status: SagaStatus | None) -> bool:
    """The write that turns the saga COMPENSATING."""
    return status is SagaStatus.COMPENSATING


async def cancelled_with_message(
    start: Callable[[], Any], reached: asyncio.Event, release: asyncio.Event
) -> tuple[BaseException, int]:
    """Start the saga in a task, cancel it with ``MESSAGE`` once ``reached``,
    then ``release`` what it waits on; the error the caller sees and the
    task's cancelling() count when it saw it."""
    seen: list[int] = []

    async def caller() -> Any:
        try:
            return await start()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            assert current is not None
            seen.append(current.cancelling())
            raise

    task = asyncio.create_task(caller())
    async with asyncio.timeout(10):
        await reached.wait()
    task.cancel(MESSAGE)
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(10):
        try:
            await task
        except asyncio.CancelledError as error:
            return error, seen[0]
    raise AssertionError("the saga was not cancelled")


def held_at(store: Any, match: Match) -> tuple[asyncio.Event, asyncio.Event]:
    gate: Gate = store.gate
    gate.match = match
    return gate.reached, gate.release


def held(
    store: Any, where: str, *, act: str, written: str, compensated: str
) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the saga where the case says: in the act of step ``act`` (any
    ``where`` but "write" and "compensation"), in the journal write of
    ``written``'s completion, or in the compensation of ``compensated``."""
    if where == "write":
        return held_at(store, completing(written))
    if where == "compensation":
        Hold.hold_comp = compensated
        return Hold.comp_reached, Hold.comp_release
    Hold.hold_act = act
    return Hold.act_reached, Hold.act_release


def check(outcome: tuple[BaseException, int]) -> None:
    error, cancelling = outcome
    assert error.args == (MESSAGE,)
    assert cancelling == 1


# --------------------------------------------------------------------------- run


async def test_S8_run_cancelled_in_a_step_keeps_the_message(store: Any) -> None:
    Hold.hold_act = "Charge"
    check(await cancelled_with_message(
        lambda: LineSaga(store=store).run(Ctx()), Hold.act_reached, Hold.act_release
    ))
    assert Hold.compensated == ["Reserve"]


async def test_S13_run_cancelled_in_a_journal_write_keeps_the_message(store: Any) -> None:
    reached, release = held_at(store, completing("Reserve"))
    check(await cancelled_with_message(
        lambda: LineSaga(store=store).run(Ctx()), reached, release
    ))
    assert Hold.compensated == ["Reserve"]


async def test_S8_run_cancelled_in_a_compensation_keeps_the_message(store: Any) -> None:
    Hold.hold_comp = "Charge"
    check(await cancelled_with_message(
        lambda: LineSaga(store=store).run(Ctx(fail=True)), Hold.comp_reached, Hold.comp_release
    ))
    assert Hold.compensated == ["Charge", "Reserve"]


async def test_S13_run_cancelled_in_the_unwinding_write_keeps_the_message(store: Any) -> None:
    reached, release = held_at(store, unwinding)
    check(await cancelled_with_message(
        lambda: LineSaga(store=store).run(Ctx(fail=True)), reached, release
    ))
    assert Hold.compensated == ["Charge", "Reserve"]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("where", ["step", "write"])
async def test_S8_resume_cancelled_keeps_the_message(store: Any, where: str) -> None:
    saga = LineSaga(store=store)
    inner = getattr(store, "inner", store)
    # A first run that stopped (its process died) once Reserve had started.
    await inner.create("r-1", saga.name, saga.definition.fingerprint,
                       {"order_id": "r-1", "fail": False}, [entry(0, "Reserve")])
    if where == "step":
        Hold.hold_act = "Reserve"
        reached, release = Hold.act_reached, Hold.act_release
    else:
        reached, release = held_at(store, completing("Reserve"))
    check(await cancelled_with_message(lambda: saga.resume("r-1"), reached, release))
    assert Hold.compensated == ["Reserve"]


# --------------------------------------------------------------------------- transaction()


@pytest.mark.parametrize("where", ["step", "write", "compensation"])
async def test_S8_transaction_cancelled_keeps_the_message(store: Any, where: str) -> None:
    saga = LineSaga(store=store)

    async def stepping() -> None:
        async with saga.transaction(Ctx(fail=where == "compensation")) as tx:
            async for _ in tx:
                pass

    reached, release = held(store, where, act="Charge", written="Reserve", compensated="Charge")
    check(await cancelled_with_message(stepping, reached, release))
    assert "Reserve" in Hold.compensated


# --------------------------------------------------------------------------- groups, children


@pytest.mark.parametrize("where", ["member", "write", "compensation"])
async def test_S15_a_parallel_group_cancelled_keeps_the_message(store: Any, where: str) -> None:
    reached, release = held(store, where, act="Pack", written="Charge", compensated="Pack")
    ctx = Ctx(fail=where == "compensation")
    check(await cancelled_with_message(
        lambda: GroupSaga(store=store).run(ctx), reached, release
    ))
    assert "Reserve" in Hold.compensated


@pytest.mark.parametrize("where", ["step", "write", "compensation"])
async def test_S15_a_child_saga_cancelled_keeps_the_message(store: Any, where: str) -> None:
    reached, release = held(store, where, act="Pack", written="Charge", compensated="Pack")
    ctx = Ctx(fail=where == "compensation")
    check(await cancelled_with_message(
        lambda: ParentSaga(store=store).run(ctx), reached, release
    ))
    assert "Reserve" in Hold.compensated


# --------------------------------------------------------------------------- asyncio.timeout


@pytest.mark.parametrize("where", ["step", "write", "compensation"])
async def test_S8_a_timeout_around_a_saga_still_becomes_timeout_error(
    store: Any, where: str
) -> None:
    """The timeout's own cancellation (no message) is told from the caller's
    by the count: ``asyncio.timeout`` turns it into ``TimeoutError``."""
    reached, release = held(store, where, act="Charge", written="Reserve", compensated="Charge")
    ctx = Ctx(fail=where == "compensation")
    loop = asyncio.get_running_loop()

    async def under_a_timeout() -> None:
        async with asyncio.timeout(None) as deadline:
            timeouts.append(deadline)
            await LineSaga(store=store).run(ctx)

    timeouts: list[asyncio.Timeout] = []
    task = asyncio.create_task(under_a_timeout())
    async with asyncio.timeout(10):
        await reached.wait()
    timeouts[0].reschedule(loop.time())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(10):
            await task
    assert "Reserve" in Hold.compensated
    assert task.cancelling() == 0


async def test_S8_recover_cancelled_keeps_the_message(store: Any) -> None:
    """``recover`` cancels the sagas it resumes and raises once they have
    unwound: with the caller's message."""
    saga = LineSaga(store=store)
    inner = getattr(store, "inner", store)
    for saga_id in ("r-1", "r-2"):
        await inner.create(saga_id, saga.name, saga.definition.fingerprint,
                           {"order_id": saga_id, "fail": False}, [entry(0, "Reserve")])
    Hold.hold_act = "Charge"
    check(await cancelled_with_message(
        lambda: recover(store, [saga], older_than=0), Hold.act_reached, Hold.act_release
    ))
    assert Hold.compensated.count("Reserve") >= 1
