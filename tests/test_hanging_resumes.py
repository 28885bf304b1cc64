"""``RecoveryWorker`` and participants that never answer (S8, S10, S13).

A step with no ``timeout`` whose call never returns held its worker slot for
ever: with ``concurrency`` N, N such sagas and the worker resumed nothing
else, silently. These tests hang participants for real (an event never set)
and move only the worker's clock (``worker._clock``, then ``wake()``), as
the other worker tests do: no sleep stands in for synchronization. Each
checks the participant's ledger against the journal: no compensation runs
because a resume was stopped, one that hung is called again in full, and no
step runs without its journal record.

The in-memory store is not recoverable (no leases): a worker cannot run on
it, so these run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers_clock import run_virtual
from test_worker import (
    A,
    B,
    C,
    Ctx,
    Ledger,
    OrderSaga,
    OutcomeSignal,
    Pay,
    _child_whose_parent_runs_elsewhere,
    _paying_parent,
    _StoreWithoutDefer,
    eventually,
    order_saga,
    seed,
)

from fallback_saga import (
    Lease,
    Parallel,
    RecoveryWorker,
    Saga,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
    current_step,
    recover,
)
from fallback_saga import worker as worker_module
from fallback_saga.errors import SagaStoreError

# (Read so, not imported by name: each test fails on its own without the fix.)
STOP_WAIT: float = getattr(worker_module, "STOP_WAIT", 10.0)

pytest_plugins = ["conftest_pg"]


class Participant(Ledger):
    """A ``Ledger`` whose calls for one saga can hang: ``hang(saga, key)``
    makes that call wait until the gate it returns is set — cancellable, or
    (``swallow``) catching every ``CancelledError`` and waiting on."""

    def __init__(self) -> None:
        super().__init__()
        self.hangs: dict[tuple[str, str], tuple[asyncio.Event, bool]] = {}
        self.hanging: dict[tuple[str, str], asyncio.Event] = {}

    def hang(self, saga_id: str, key: str, *, swallow: bool = False) -> asyncio.Event:
        gate = asyncio.Event()
        self.hangs[(saga_id, key)] = (gate, swallow)
        self.hanging[(saga_id, key)] = asyncio.Event()
        return gate

    async def perform(self, action: str, step: str) -> None:
        saga_id = current_step().saga_id  # type: ignore[union-attr]
        key = f"{action} {step}"
        hang = self.hangs.pop((saga_id, key), None)  # once: the next call answers
        self.calls.append((action, step, saga_id))
        if hang is None:
            if key in self.failing:
                raise RuntimeError(f"{key} failed")
            return
        gate, swallow = hang
        self.hanging[(saga_id, key)].set()
        while True:
            try:
                await gate.wait()
                break
            except asyncio.CancelledError:
                if not swallow:
                    raise
        self.calls.append((f"{action} returned", step, saga_id))

    def of(self, saga_id: str) -> list[str]:
        return [f"{action} {step}" for action, step, saga in self.calls if saga == saga_id]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Opens a store of the kind asked for (options: ``park_after``)."""
    if request.param == "sqlite":
        yield lambda **options: SQLiteSagaStore(tmp_path / "sagas.db", **options)
        return
    from conftest_pg import require_driver

    require_driver()
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    yield lambda **options: PostgresSagaStore(conninfo, schema=schema, min_size=1, **options)


@pytest.fixture(autouse=True)
def no_task_destroyed_pending(caplog: pytest.LogCaptureFixture) -> Any:
    """asyncio logs "Task was destroyed but it is pending!" when a task is
    freed unfinished: never, in these tests."""
    caplog.set_level(logging.WARNING)
    yield
    destroyed = [r.getMessage() for r in caplog.records
                 if "destroyed but it is pending" in r.getMessage()
                 or "never retrieved" in r.getMessage()]
    assert destroyed == []


def move_clock(worker: RecoveryWorker, seconds: float) -> None:
    """The worker's clock, ``seconds`` later; its watch looks at once."""
    clock = worker._clock
    worker._clock = lambda: clock() + seconds
    worker.wake()


def rows(record: Any) -> list[tuple[str, str, StepStatus]]:
    return [(e.step, e.action, e.status) for e in record.history]


async def lease_ran_out(store: Any, saga_id: str) -> None:
    """The saga's kept lease, run out (as its backoff passing leaves it),
    its count of claims kept: ``renew`` to a past time, as its holder."""
    state = await store.lease_state(saga_id)
    await store.renew(Lease(saga_id, state.owner, state.token, 0.0), -1)


class Told(OutcomeSignal):
    """The outcomes told, awaited by count."""

    async def until_count(self, outcome: str, count: int) -> None:
        while sum(told == outcome for _, _, told, _ in self.outcomes) < count:
            self.told.clear()
            await asyncio.wait_for(self.told.wait(), 60)  # a safety net, not a sync


def stopped(caplog: pytest.LogCaptureFixture) -> bool:
    """The worker said it stopped a resume at its ``resume_timeout``."""
    return any("stopping it without unwinding" in r.getMessage() for r in caplog.records)


def declining_saga(store: Any, participant: Participant) -> OrderSaga:
    participant.failing.add("act C")
    return order_saga(store, participant)


# --------------------------------------------------------------------------- resume_timeout


async def test_S8_a_resume_hanging_in_an_act_is_stopped_at_resume_timeout_without_unwinding(
    open_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """One slot; the oldest saga's act B never answers. Without a bound the
    worker resumed nothing else, ever. At ``resume_timeout`` the run is
    stopped like a handed-off one: no compensation runs, the journal says B
    started and nothing more, the outcome is ``interrupted`` (warned, told,
    counted), the slot goes to the next saga, and the hung saga's lease is
    kept for the backoff — neither released nor deferred, which would clear
    its count of claims (store._parking)."""
    told = Told()
    participant = Participant()
    async with open_store() as store:
        hung, other = await seed(store, 2)
        participant.hang(hung, "act B")
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told], resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
            assert worker.in_flight == 1
            assert worker.stats.completed == 0
            move_clock(worker, 31)
            await told.until("interrupted", at_most=1)
            # The slot is free: the other saga is claimed and completes.
            worker.wake()
            await told.until("completed", at_most=2)
            state = await store.lease_state(hung)
        finally:
            await worker.stop()
            await running
        assert [(s, o) for s, _, o, _ in told.outcomes] == [
            (hung, "interrupted"), (other, "completed")]
        assert "resume_timeout" in (told.outcomes[0][3] or "")
        assert worker.stats.interrupted == 1
        assert worker.stats.claimed == 2
        record = await store.load(hung)
        assert record.status is SagaStatus.RUNNING
        assert rows(record)[-1] == ("B", "act", StepStatus.STARTED)
        assert not any(action == "compensate" for _, action, _ in rows(record))
        assert participant.of(hung) == ["act A", "act B"]  # nothing compensated
        # Kept, cut to the backoff (poll 3600 capped at the lease, jittered
        # down to half), and counted: a claim of it after the backoff counts.
        assert state.owner == worker.owner
        assert 600 * 0.5 - 60 <= state.expires_at - time.time() <= 600
        assert state.unreleased_claims == 1
        assert any("resume_timeout" in r.getMessage() and hung in r.getMessage()
                   for r in caplog.records if r.levelno == logging.WARNING)
        # Its backoff passes: resumed, the participant answering, it completes.
        await lease_ran_out(store, hung)
        report = await recover(store, [order_saga(store, participant)], older_than=0)
        assert report.resumed == [hung]
        assert participant.of(hung) == ["act A", "act B", "act B", "act C"]


async def test_S8_a_compensation_that_hangs_is_cancelled_at_resume_timeout_and_called_again_in_full(
    open_store: Callable[..., Any],
) -> None:
    """The saga unwinds (act C declines) and the compensation of B never
    answers. A hand-off waits for a compensation in flight (shielded), so
    stopping the run alone would hold the slot as long: the compensation is
    cancelled, as the loop's shutdown cancels one. The journal keeps its
    STARTED row last and the saga COMPENSATING; A is not compensated behind
    its back; the next resume calls B's compensation again, in full, then A's."""
    told = Told()
    participant = Participant()
    async with open_store() as store:
        (hung,) = await seed(store, 1)
        participant.hang(hung, "compensate B")
        worker = RecoveryWorker(store, [declining_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told], resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(participant.hanging[(hung, "compensate B")].wait(), 30)
            move_clock(worker, 31)
            await told.until("interrupted", at_most=1)
        finally:
            await worker.stop()
            await running
        record = await store.load(hung)
        assert record.status is SagaStatus.COMPENSATING
        assert rows(record)[-1] == ("B", "compensate", StepStatus.STARTED)
        assert participant.of(hung) == ["act A", "act B", "act C", "compensate B"]
        assert (await store.lease_state(hung)).unreleased_claims == 1
        await lease_ran_out(store, hung)
        report = await recover(store, [declining_saga(store, participant)], older_than=0)
        assert report.compensated == [hung]
        assert participant.of(hung) == [
            "act A", "act B", "act C", "compensate B", "compensate B", "compensate A"]


class Pair(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [A, B]


def family_saga(store: Any, participant: Participant, *, in_group: bool) -> Saga[Ctx]:
    """A parent with a child saga ``Kid`` (``<parent>/Kid``) whose B's
    compensation is the one to hang; every act C declines. ``in_group``:
    the child (A, B, C) is a ``Parallel`` member's, and unwinds itself in
    the member's task as its C declines; else the child (A, B) completes,
    the parent's C declines, and the parent's unwinding unwinds the child."""
    if in_group:
        kid = SubSaga(declining_saga(store, participant), context=lambda c: Ctx(c.order_id),
                      name="Kid")
        members: list[Any] = [Parallel(kid, A)]
    else:
        participant.failing.add("act C")
        pair = Pair(store=store, step_factory=lambda cls: cls(participant))
        members = [A, SubSaga(pair, context=lambda c: Ctx(c.order_id), name="Kid"), C]

    class Family(Saga[Ctx]):
        steps: ClassVar[list[Any]] = members

    return Family(store=store, step_factory=lambda cls: cls(participant))


@pytest.mark.parametrize("in_group", [False, True], ids=["child", "group-member-child"])
async def test_S15_a_compensation_hanging_in_a_child_saga_is_stopped_at_resume_timeout_too(
    open_store: Callable[..., Any], caplog: pytest.LogCaptureFixture, in_group: bool
) -> None:
    """The hung compensation is a child saga's own (``SubSaga``, unwound by
    its parent's unwinding, or unwinding itself in a ``Parallel``
    member): B's, in a task of its own that stopping the parent's run, or
    cancelling the parent's unwinding, does not reach. It was left to hang
    until the worker let the run go, ``STOP_WAIT`` later, its lease
    unrenewed and the call still in flight. Now it is stopped at
    ``resume_timeout`` as a plain step's is: cancelled at once, nothing
    reported compensated that was not (the child COMPENSATING, B's STARTED
    its last row; nothing before it in the parent compensated); the next
    pass calls B's compensation again, in full, then the rest."""
    told = Told()
    participant = Participant()
    child = "f1/Kid"
    async with open_store() as store:
        family = family_saga(store, participant, in_group=in_group)
        await store.create("f1", "Family", family.definition.fingerprint,
                           {"order_id": "f1"}, [])
        participant.hang(child, "compensate B")
        worker = RecoveryWorker(store, [family], concurrency=1, lease=600, poll=3600,
                                older_than=0, listen=False, listeners=[told],
                                resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(participant.hanging[(child, "compensate B")].wait(), 30)
            move_clock(worker, 31)  # resume_timeout, not STOP_WAIT more
            await asyncio.wait_for(told.until("interrupted", at_most=1), 20)
            assert not worker._resumes.let_go
        finally:
            await worker.stop()
            await running
        assert [(s, o) for s, _, o, _ in told.outcomes] == [("f1", "interrupted")]
        assert "resume_timeout" in (told.outcomes[0][3] or "")
        assert worker.stats.interrupted == 1
        assert not any("did not stop" in r.getMessage() for r in caplog.records)
        kid = await store.load(child)
        assert kid.status is SagaStatus.COMPENSATING
        assert rows(kid)[-1] == ("B", "compensate", StepStatus.STARTED)
        done = ["act A", "act B", "act C"] if in_group else ["act A", "act B"]
        assert participant.of(child) == [*done, "compensate B"]
        parent = await store.load("f1")
        if in_group:
            assert parent.status is SagaStatus.RUNNING
            assert not any(action == "compensate" for _, action, _ in rows(parent))
        else:
            assert parent.status is SagaStatus.COMPENSATING
            assert rows(parent)[-1] == ("Kid", "compensate", StepStatus.STARTED)
        assert "compensate A" not in participant.of("f1")
        await lease_ran_out(store, "f1")
        report = await recover(store, [family_saga(store, participant, in_group=in_group)],
                               older_than=0)
        assert report.compensated == ["f1"]
        assert participant.of(child) == [*done, "compensate B", "compensate B", "compensate A"]
        assert participant.of("f1")[-1] == "compensate A"
        assert participant.of("f1").count("compensate A") == 1


class _StoreFaults:
    """A store whose ``load`` of one saga hangs once (``hang_load``; until
    ``load_gate`` is set) and whose ``renew`` fails (``renew_fails``)."""

    def __init__(self, inner: Any, *, hang_load: str | None = None,
                 renew_fails: bool = False) -> None:
        self._inner = inner
        self.hang_load = hang_load
        self.renew_fails = renew_fails
        self.load_gate = asyncio.Event()
        self.loading = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def load(self, saga_id: str) -> Any:
        if saga_id == self.hang_load:
            self.hang_load = None  # once
            self.loading.set()
            await self.load_gate.wait()
        return await self._inner.load(saga_id)

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        if self.renew_fails:
            raise OSError("the store refused the renewal")
        renewed: Lease = await self._inner.renew(lease, lease_seconds)
        return renewed


async def test_S13_a_load_that_outruns_resume_timeout_is_interrupted_not_handed_off(
    open_store: Callable[..., Any],
) -> None:
    """The store does not answer the saga's load. At ``resume_timeout`` it
    was reported ``handed_off`` — a worker's shutdown, which it was not —
    its lease given back for every worker to claim and wait on the same way,
    its claim not counted. It is ``interrupted`` (told, counted, warned),
    its lease kept for the backoff and counted, as any stopped resume's;
    nothing of it ran."""
    told = Told()
    participant = Participant()
    async with open_store() as inner:
        (hung,) = await seed(inner, 1)
        store = _StoreFaults(inner, hang_load=hung)
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told], resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(store.loading.wait(), 30)
            move_clock(worker, 31)
            await eventually(lambda: worker.in_flight == 0, what="the stop")
        finally:
            await worker.stop()
            await running
        assert [(s, o) for s, _, o, _ in told.outcomes] == [(hung, "interrupted")]
        assert "resume_timeout" in (told.outcomes[0][3] or "")
        assert (worker.stats.interrupted, worker.stats.handed_off) == (1, 0)
        assert participant.calls == []
        state = await inner.lease_state(hung)
        assert state.owner == worker.owner
        assert state.unreleased_claims == 1
        assert rows(await inner.load(hung)) == [("A", "act", StepStatus.STARTED)]


async def test_a_failed_renewal_of_a_stopped_resumes_lease_is_logged_as_a_renewal(
    db_store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume stopped at ``resume_timeout`` keeps its lease, cut to the
    backoff by a renewal. When that renewal failed, the warning said the
    lease "could not be released": an operator read that the saga was
    still held when it was never to be released at all. It says what failed."""
    participant = Participant()
    (hung,) = await seed(db_store, 1)
    store = _StoreFaults(db_store)
    participant.hang(hung, "act B")
    worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                            lease=600, poll=3600, older_than=0, listen=False,
                            resume_timeout=30)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
        store.renew_fails = True
        move_clock(worker, 31)
        await eventually(lambda: worker.stats.interrupted == 1, what="the stop")
    finally:
        await worker.stop()
        await running
    (said,) = [r.getMessage() for r in caplog.records if "could not" in r.getMessage()]
    assert hung in said
    assert "renew" in said
    assert "release" not in said
    assert "the store refused the renewal" in said


async def test_S10_a_saga_that_hangs_on_every_resume_is_parked_for_an_operator(
    open_store: Callable[..., Any],
) -> None:
    """A saga whose act hangs on every resume, stopped at ``resume_timeout``
    each time: its lease is never given back, so each claim counts, and at
    the store's ``park_after`` claims stop taking it — instead of a slot
    held for ``resume_timeout`` after every backoff, for ever."""
    told = Told()
    participant = Participant()
    park_after = 3
    async with open_store(park_after=park_after) as store:
        (hung,) = await seed(store, 1)
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told], resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            for times in range(1, park_after + 1):
                participant.hang(hung, "act B")
                worker.wake()
                await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
                move_clock(worker, 31)
                await told.until_count("interrupted", times)
                # Told before its lease is cut to the backoff: until that is done.
                await eventually(lambda: worker.in_flight == 0, what="the lease kept")
                assert (await store.lease_state(hung)).unreleased_claims == times
                await lease_ran_out(store, hung)  # its backoff passes
        finally:
            await worker.stop()
            await running
        # Parked: no worker and no recover pass claims it; an operator can.
        assert await store.claim(owner="w", lease_seconds=30, older_than=0, limit=10) == []
        lease = await store.claim_saga(hung, owner="operator", lease_seconds=30)
        await store.release(lease)
        # A completed in the first resume; each resume ran B again, once.
        assert participant.of(hung) == ["act A"] + ["act B"] * park_after


async def test_S8_a_step_that_swallows_cancellation_is_let_go_and_frees_its_slot(
    open_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Act B catches every ``CancelledError`` and waits on. Nothing can kill
    it: ``STOP_WAIT`` seconds after it was asked to stop the worker lets it
    go — its slot free, its outcome told once, its lease kept and renewed
    no more — and ``stop()`` returns without it. When it ends at last, its
    writes are refused: the journal says B started, nothing more."""
    told = Told()
    participant = Participant()
    async with open_store() as store:
        hung, other = await seed(store, 2)
        gate = participant.hang(hung, "act B", swallow=True)
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told], resume_timeout=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
            move_clock(worker, 31)  # stopped: it swallows the cancellation
            await eventually(lambda: stopped(caplog), what="the stop")
            move_clock(worker, STOP_WAIT + 1)  # let go
            await told.until("interrupted", at_most=1)
            assert worker.in_flight == 0
            (zombie,) = worker._resumes.let_go
            worker.wake()
            await told.until("completed", at_most=2)
        finally:
            await worker.stop()
            await running
        assert not zombie.done()  # stop() returned without it
        assert any("did not stop" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.ERROR)
        state = await store.lease_state(hung)
        assert state.owner == worker.owner
        assert state.unreleased_claims == 1
        gate.set()  # the participant answers at last
        await asyncio.wait_for(asyncio.wait([zombie]), 30)
        assert [(s, o) for s, _, o, _ in told.outcomes] == [
            (hung, "interrupted"), (other, "completed")]
        assert worker.stats.interrupted == 1
        assert worker.stats.completed == 1
        assert worker.stats.claimed == 2
        record = await store.load(hung)
        assert record.status is SagaStatus.RUNNING
        assert rows(record)[-1] == ("B", "act", StepStatus.STARTED)
        assert participant.of(hung) == ["act A", "act B", "act returned B"]
        after = await store.lease_state(hung)
        assert (after.owner, after.token, after.unreleased_claims) == (
            state.owner, state.token, 1)


async def test_a_resume_running_past_resume_warning_is_logged_once_saying_where(
    db_store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Before any bound, a hanging resume is visible: one warning, naming
    the saga and the step it is in."""
    participant = Participant()
    store = db_store
    (hung,) = await seed(store, 1)
    gate = participant.hang(hung, "act B")
    worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                            lease=600, poll=3600, older_than=0, listen=False,
                            resume_warning=60)
    running = asyncio.create_task(worker.run())

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "has been resuming" in r.getMessage()]

    try:
        await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
        move_clock(worker, 61)
        await eventually(lambda: bool(warnings()), what="the warning")
        move_clock(worker, 600)
        gate.set()
        await eventually(lambda: worker.stats.completed == 1, what="the saga")
    finally:
        await worker.stop()
        await running
    (said,) = warnings()
    assert hung in said
    assert "act of step 'B'" in said


@pytest.fixture
async def db_store(tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        yield store


def test_resume_timeout_and_resume_warning_are_checked(tmp_path: Path) -> None:
    async def main() -> None:
        async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
            sagas = [order_saga(store, Ledger())]
            for bad in (0, -1, float("inf"), "30", True):
                with pytest.raises(ValueError, match="resume_timeout"):
                    RecoveryWorker(store, sagas, resume_timeout=bad)
                with pytest.raises(ValueError, match="resume_warning"):
                    RecoveryWorker(store, sagas, resume_warning=bad)
            worker = RecoveryWorker(store, sagas, resume_timeout=None, resume_warning=None)
            assert worker.resume_timeout is None
            assert worker.resume_warning is None

    asyncio.run(main())


# --------------------------------------------------------------------------- recover()


def _recover_virtually(tmp_path: Path, body: Callable[[Any], Any]) -> Any:
    """``body(store)`` on a loop whose clock jumps to its next timer when
    nothing is ready (helpers_clock): a hang of 30 s costs no real time and
    the loop's clock says exactly when the pass stopped it. The store
    writes inline: no thread answers behind the loop's back."""

    async def main() -> Any:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="inline") as store:
            return await body(store)

    return run_virtual(main)


def test_S13_a_recover_pass_stops_a_resume_that_outruns_resume_timeout(tmp_path: Path) -> None:
    """``recover()`` (a cron's pass) had no bound: a step that never
    answers held the pass, and the cron, for ever. With ``resume_timeout``
    the resume is stopped as a worker stops one — at the bound, not later:
    no unwinding, the journal saying B started and nothing more; reported
    ``interrupted``, its lease kept and counted; the other saga completes."""
    participant = Participant()

    async def body(store: SQLiteSagaStore) -> None:
        hung, other = await seed(store, 2)
        participant.hang(hung, "act B")
        loop = asyncio.get_running_loop()
        began = loop.time()
        report = await recover(store, [order_saga(store, participant)], older_than=0,
                               resume_timeout=30)
        took = loop.time() - began
        assert 30 <= took < 30 + STOP_WAIT
        assert report.resumed == [other]
        ((saga_id, reason),) = report.interrupted
        assert saga_id == hung
        assert "resume_timeout" in reason
        assert participant.of(hung) == ["act A", "act B"]
        record = await store.load(hung)
        assert record.status is SagaStatus.RUNNING
        assert rows(record)[-1] == ("B", "act", StepStatus.STARTED)
        state = await store.lease_state(hung)
        assert state.owner is not None
        assert state.unreleased_claims == 1

    _recover_virtually(tmp_path, body)


def test_S8_a_recover_pass_cancels_a_compensation_hanging_past_resume_timeout(
    tmp_path: Path,
) -> None:
    """B's compensation never answers in a ``recover()`` pass. At
    ``resume_timeout`` it is cancelled: the saga stays COMPENSATING with
    B's STARTED last (A not compensated behind its back), and the next
    pass calls B's compensation again, in full, then A's."""
    participant = Participant()

    async def body(store: SQLiteSagaStore) -> None:
        (hung,) = await seed(store, 1)
        participant.hang(hung, "compensate B")
        report = await recover(store, [declining_saga(store, participant)], older_than=0,
                               resume_timeout=30)
        assert [saga_id for saga_id, _ in report.interrupted] == [hung]
        record = await store.load(hung)
        assert record.status is SagaStatus.COMPENSATING
        assert rows(record)[-1] == ("B", "compensate", StepStatus.STARTED)
        assert participant.of(hung) == ["act A", "act B", "act C", "compensate B"]
        await lease_ran_out(store, hung)
        report = await recover(store, [declining_saga(store, participant)], older_than=0,
                               resume_timeout=30)
        assert report.compensated == [hung]
        assert participant.of(hung) == [
            "act A", "act B", "act C", "compensate B", "compensate B", "compensate A"]

    _recover_virtually(tmp_path, body)


def test_S8_a_recover_pass_lets_go_a_step_that_swallows_cancellation(tmp_path: Path) -> None:
    """Act B swallows every cancellation. The pass stops it at
    ``resume_timeout``, asks again ``STOP_WAIT`` later, and ``STOP_WAIT``
    after that returns without it (reported ``interrupted``), its lease
    kept. When the step ends at last, its writes are refused: the journal
    says B started, nothing more."""
    from fallback_saga import recovery

    participant = Participant()

    async def body(store: SQLiteSagaStore) -> None:
        (hung,) = await seed(store, 1)
        gate = participant.hang(hung, "act B", swallow=True)
        loop = asyncio.get_running_loop()
        began = loop.time()
        report = await recover(store, [order_saga(store, participant)], older_than=0,
                               resume_timeout=30)
        assert loop.time() - began >= 30 + 2 * STOP_WAIT
        ((saga_id, reason),) = report.interrupted
        assert saga_id == hung
        assert "still running" in reason
        (zombie,) = recovery._LET_GO
        assert not zombie.done()
        gate.set()
        await asyncio.wait([zombie])
        assert participant.of(hung) == ["act A", "act B", "act returned B"]
        assert rows(await store.load(hung))[-1] == ("B", "act", StepStatus.STARTED)
        assert (await store.lease_state(hung)).unreleased_claims == 1

    _recover_virtually(tmp_path, body)


def test_recovers_resume_timeout_is_checked(tmp_path: Path) -> None:
    async def body(store: SQLiteSagaStore) -> None:
        for bad in (0, -1, float("inf"), "30", True):
            with pytest.raises(ValueError, match="resume_timeout"):
                await recover(store, [order_saga(store, Ledger())], resume_timeout=bad)

    _recover_virtually(tmp_path, body)


# --------------------------------------------------------------------------- shutdown


async def test_S8_a_stop_past_its_grace_while_a_compensation_hangs_returns_and_hands_it_off(
    open_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """``stop(grace=0)`` while a compensation never answers. A hand-off
    waits for a compensation in flight (shielded), and ``stop()`` waited
    for ever. ``STOP_WAIT`` seconds on, the compensation is cancelled as
    the loop's shutdown cancels one: the run ends handed off (its lease
    given back), COMPENSATING with that compensation's STARTED row last;
    the next pass calls it again, in full, then A's."""
    participant = Participant()
    async with open_store() as store:
        (hung,) = await seed(store, 1)
        participant.hang(hung, "compensate B")
        worker = RecoveryWorker(store, [declining_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(participant.hanging[(hung, "compensate B")].wait(), 30)
        stopping = asyncio.create_task(worker.stop(grace=0))
        try:
            await eventually(lambda: any("handing off 1 saga" in r.getMessage()
                                         for r in caplog.records), what="the hand-off")
            assert not stopping.done()
            move_clock(worker, STOP_WAIT + 1)
            await asyncio.wait_for(stopping, 30)
        finally:
            if not stopping.done():  # without the bound: never
                stopping.cancel()
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        assert worker.stats.handed_off == 1
        assert worker.in_flight == 0
        assert (await store.lease_state(hung)).owner is None  # handed off: given back
        record = await store.load(hung)
        assert record.status is SagaStatus.COMPENSATING
        assert rows(record)[-1] == ("B", "compensate", StepStatus.STARTED)
        report = await recover(store, [declining_saga(store, participant)], older_than=0)
        assert report.compensated == [hung]
        assert participant.of(hung) == [
            "act A", "act B", "act C", "compensate B", "compensate B", "compensate A"]


async def test_S8_a_stop_while_a_step_swallows_cancellation_returns_and_keeps_its_lease(
    open_store: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """``stop(grace=0)`` with no ``resume_timeout``, while act B swallows
    every cancellation: the hand-off cannot stop it, and ``stop()`` waited
    for ever. It returns once the run is let go (``STOP_WAIT`` after the
    hand-off, and again after the forced stop); the saga's lease is kept,
    not released — the run may still act — and renewed no more."""
    told = Told()
    participant = Participant()
    async with open_store() as store:
        (hung,) = await seed(store, 1)
        gate = participant.hang(hung, "act B", swallow=True)
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False,
                                listeners=[told])
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(participant.hanging[(hung, "act B")].wait(), 30)
        stopping = asyncio.create_task(worker.stop(grace=0))
        try:
            await eventually(lambda: any("handing off 1 saga" in r.getMessage()
                                         for r in caplog.records), what="the hand-off")
            move_clock(worker, STOP_WAIT + 1)
            await eventually(lambda: any("is still running" in r.getMessage()
                                         for r in caplog.records), what="the forced stop")
            assert not stopping.done()
            (zombie,) = worker._resumes.in_flight
            move_clock(worker, 2 * STOP_WAIT + 2)
            await asyncio.wait_for(stopping, 30)
            await running
        finally:
            if not stopping.done():  # without the bound: never
                stopping.cancel()
                running.cancel()
            gate.set()
        await asyncio.wait_for(asyncio.wait([zombie]), 30)
        assert [(s, o) for s, _, o, _ in told.outcomes] == [(hung, "interrupted")]
        assert worker.stats.interrupted == 1
        assert worker.stats.handed_off == 0
        state = await store.lease_state(hung)
        assert state.owner == worker.owner
        assert state.unreleased_claims == 1
        record = await store.load(hung)
        assert rows(record)[-1] == ("B", "act", StepStatus.STARTED)
        assert participant.of(hung) == ["act A", "act B", "act returned B"]


class _ClaimHeld:
    """A store whose ``claim`` lands, then waits for ``gate`` before it
    answers (a claim in flight when the worker is stopped)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.landed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, **kwargs: Any) -> list[Lease]:
        leases: list[Lease] = await self._inner.claim(**kwargs)
        if leases:
            self.landed.set()
            await self.gate.wait()
        return leases


async def test_S13_a_stop_while_a_claim_is_in_flight_gives_the_claimed_sagas_back(
    open_store: Callable[..., Any],
) -> None:
    """``stop(grace=0)`` while a claim is on its way: the claim lands, the
    worker starts a task per saga and hands them off at once — before
    their first step. A task cancelled then never runs a line, and each
    lease was kept until it ran out, counted as nothing. Each saga is given
    back untouched instead, and counted as handed off."""
    participant = Participant()
    async with open_store() as inner:
        store = _ClaimHeld(inner)
        ids = await seed(inner, 2)
        worker = RecoveryWorker(store, [order_saga(store, participant)], concurrency=4,
                                lease=600, poll=3600, older_than=0, listen=False)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(store.landed.wait(), 30)
            stopping = asyncio.create_task(worker.stop(grace=0))
            await eventually(lambda: worker._stopping, what="the stop")
            store.gate.set()
            await asyncio.wait_for(stopping, 30)
        finally:
            store.gate.set()
            await worker.stop()
            await running
        assert worker.stats.claimed == 2
        assert worker.stats.handed_off == 2
        assert participant.calls == []
        for saga_id in ids:
            assert (await inner.lease_state(saga_id)).owner is None
            assert rows(await inner.load(saga_id)) == [("A", "act", StepStatus.STARTED)]


# --------------------------------------------------------------------------- deferred children


async def test_S10_a_deferred_child_on_a_store_without_defer_is_kept_out_of_claims(
    tmp_path: Path,
) -> None:
    """A child saga whose parent is driven elsewhere, on a store without
    ``defer``: its lease was released at once, so the child — the oldest
    saga — was claimed again at once, and again, by a worker that can do
    nothing with it. Its lease is kept for the worker's backoff instead, as
    a skipped or interrupted saga's is, then given back."""
    told = Told()
    async with SQLiteSagaStore(tmp_path / "sagas.db") as inner:
        store = _StoreWithoutDefer(inner)
        await _child_whose_parent_runs_elsewhere(store)
        (due,) = await seed(store, 1)  # newer: claimed after the child
        worker = RecoveryWorker(store, [order_saga(store, Ledger()), _paying_parent(), Pay],
                                concurrency=1, lease=600, poll=20, older_than=0,
                                listen=False, listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            await told.until("completed", at_most=2)
            assert [(s, o) for s, _, o, _ in told.outcomes] == [
                ("p1/Pay", "deferred"), (due, "completed")]
            assert "p1/Pay" not in store.releases
            assert (await inner.lease_state("p1/Pay")).owner == worker.owner
            # The backoff (at most poll) passes: given back, claimed again.
            move_clock(worker, 20)
            await told.until_count("deferred", 2)
            assert store.releases.count("p1/Pay") == 1
        finally:
            await worker.stop()
            await running
        assert (await inner.lease_state("p1/Pay")).owner is None  # a stopped worker keeps none
        assert (await inner.load("p1/Pay")).status is SagaStatus.RUNNING  # its parent's



class _SlowRelease(SQLiteSagaStore):
    """A store whose ``release`` waits for ``gate`` (a store slow to answer
    the give-back of a lease, once the saga has finished)."""

    gate: asyncio.Event | None = None
    entered: asyncio.Event | None = None  # set as a release begins to wait
    refuse: int = 0  # releases refused (SagaStoreError) once the gate opens

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        if self.gate is not None:
            if self.entered is not None:
                self.entered.set()
            await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise SagaStoreError("the store is out of reach (injected)")
        await super().release(lease, ran=ran)


def test_S13_a_recover_pass_reports_a_finished_resume_whose_give_back_outruns_resume_timeout_as_it_ended(  # noqa: E501
    tmp_path: Path,
) -> None:
    """The saga completes; the store then does not answer the give-back of
    its lease past ``resume_timeout``. The pass treated it as a hung run:
    asked it to stop twice, then reported it ``interrupted`` ("a step
    ignores cancellation") — a second outcome told for one resume, after
    ``completed``, and a COMPLETED saga in the report's interrupted. The
    outcome the resume told stands now, told once. The give-back has
    ``STOP_WAIT``, is tried again at the pass's end within ``STOP_WAIT``,
    and, the store still silent, the lease is named in the report as left
    to run out (test_give_back_outages.py: the bound on those tries)."""
    participant = Participant()
    told = Told()

    async def main() -> None:
        async with _SlowRelease(tmp_path / "sagas.db", writer="inline") as store:
            (saga_id,) = await seed(store, 1)
            store.gate = asyncio.Event()
            loop = asyncio.get_running_loop()
            began = loop.time()
            report = await recover(store, [order_saga(store, participant)], older_than=0,
                                   resume_timeout=STOP_WAIT / 2, listeners=[told])
            # Its give-back cut at STOP_WAIT, then tried again for STOP_WAIT.
            assert loop.time() - began == 2 * STOP_WAIT
            assert [(s, o) for s, _, o, _ in told.outcomes] == [(saga_id, "completed")]
            assert report.resumed == [saga_id]
            assert report.interrupted == []
            assert report.not_given_back == [saga_id]
            assert (await store.load(saga_id)).status is SagaStatus.COMPLETED

    run_virtual(main)


@contextlib.asynccontextmanager
async def _a_resume_let_go(
    store: _SlowRelease, *, listeners: tuple[Any, ...] = ()
) -> AsyncIterator[tuple[RecoveryWorker, asyncio.Task[Any]]]:
    """A worker resumes the one saga seeded in ``store``; the saga completes,
    and the store does not answer the give-back of its lease (``store.gate``)
    past ``resume_timeout``: the worker asks the resume to stop, then lets it
    go ``STOP_WAIT`` later, its slot freed. Yields the worker and the let-go
    resume's task (its give-back on its way, until the gate opens); at the
    end the gate opens and the worker stops."""
    gate = store.gate = asyncio.Event()
    store.entered = asyncio.Event()
    worker = RecoveryWorker(store, [order_saga(store, Participant())], concurrency=1,
                            lease=600, poll=3600, older_than=0, listen=False,
                            listeners=list(listeners), resume_timeout=30)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(store.entered.wait(), 30)  # its release waits for the store
        (resuming,) = worker._resumes.in_flight.values()
        move_clock(worker, 31)  # resume_timeout
        await eventually(lambda: resuming.stop_asked is not None, what="the bound")
        move_clock(worker, STOP_WAIT + 1)
        await eventually(lambda: worker.in_flight == 0, what="its slot freed")
        (giving_back,) = worker._resumes.let_go
        yield worker, giving_back
    finally:
        gate.set()
        await worker.stop()
        await running


async def test_S13_a_worker_counts_a_finished_resume_whose_give_back_outruns_resume_timeout_as_it_ended(  # noqa: E501
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As above, in a worker: the saga completed and the store did not take
    its lease back before ``resume_timeout``. The worker logged that it
    stopped the run "without unwinding", then that it "did not stop", told
    ``interrupted`` after ``completed`` and counted it interrupted. It
    counts it completed now, told once; its slot is freed ``STOP_WAIT``
    after the bound, and the give-back lands once the store answers."""
    told = Told()
    async with _SlowRelease(tmp_path / "sagas.db") as store:
        (saga_id,) = await seed(store, 1)
        async with _a_resume_let_go(store, listeners=(told,)) as (worker, giving_back):
            assert [(s, o) for s, _, o, _ in told.outcomes] == [(saga_id, "completed")]
            assert (worker.stats.completed, worker.stats.interrupted) == (1, 0)
            assert store.gate is not None
            store.gate.set()  # the store answers: the lease is given back
            await asyncio.wait_for(asyncio.wait([giving_back]), 30)
        messages = [r.getMessage() for r in caplog.records]
        assert not any("without unwinding" in m or "did not stop" in m for m in messages)
        assert len(told.outcomes) == 1
        assert (await store.lease_state(saga_id)).owner is None
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED


async def test_S10_a_give_back_refused_after_its_resume_was_let_go_is_tried_again(
    tmp_path: Path,
) -> None:
    """As above, but the store, once it answers the give-back of the resume
    the worker let go, refuses it (out of reach a moment). A let-go resume's
    refused give-back was dropped: the lease ran out, and the claim counted
    toward ``park_after`` as a crash's. It is tried again before the next
    claim, as every refused give-back is: given back, the saga's claims
    count as after a clean give-back."""
    async with _SlowRelease(tmp_path / "sagas.db") as store:
        (saga_id,) = await seed(store, 1)
        store.refuse = 1
        async with _a_resume_let_go(store) as (worker, giving_back):
            gate, store.gate = store.gate, None
            assert gate is not None
            gate.set()  # the store answers: it refuses the give-back
            await asyncio.wait_for(asyncio.wait([giving_back]), 30)
            assert store.refuse == 0
            assert list(worker._kept.not_given_back) == [saga_id]
            worker.wake()  # the next claim: the refused give-back is made first
            await eventually(lambda: not worker._kept.not_given_back,
                             what="the give-back made")
            state = await store.lease_state(saga_id)
            assert (state.owner, state.unreleased_claims) == (None, 0)  # claimable at once
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED
