"""S8/S13/S15 under the event loops users configure: a loop whose task
factory starts every task eagerly (``loop.set_task_factory(
asyncio.eager_task_factory)``, Python 3.12+, which FastAPI/uvicorn users
set for speed) and uvloop.

The library starts a few tasks eagerly itself (``shielding.own_task``); a
user's factory makes *every* task it creates start inside ``create_task``:
a group's members, the unwinding's and the journal writes' tasks, a leased
run's task and its heartbeat, a worker's claims, resumes and give-backs.
Each case runs in a loop of its own made by that factory, and checks the
journal against a participant ledger, then recovery: group members failing
and cancelled, Fallbacks, child sagas, unwinding with a failing
compensation, store outages and cancellations at every journal write, a
resume cancelled on its way, ``recover`` and a RecoveryWorker stopped.

Longer hunts under these loops: the ``__main__`` of ``test_reference_model.py``,
``test_group_cancel_faults.py`` and the families of
``test_composition_faults.py``, run with such a loop installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest
import test_composition_faults as composition
import test_journal_truth as journal_truth
import test_worker as worker_cases
from group_cancel_faults import generate, run_plan
from journal_faults import FAULT_KINDS, UNWINDS, FaultKind, FaultySubmittingStore

from fallback_saga import (
    MemorySagaStore,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
)
from fallback_saga.store.base import JournalEntry


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    return loop


def _uvloop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


LOOPS = [
    pytest.param(
        _eager_loop, id="eager-task-factory",
        marks=pytest.mark.skipif(
            sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+"
        ),
    ),
    pytest.param(_uvloop, id="uvloop"),
]


def run_in(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    case: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """``case`` on a loop made by ``loop_factory`` (checked to be that kind)."""

    async def checked() -> None:
        loop = asyncio.get_running_loop()
        if loop_factory is _eager_loop:
            assert loop.get_task_factory() is asyncio.eager_task_factory  # type: ignore[attr-defined]
        else:
            assert type(loop).__module__.startswith("uvloop"), type(loop)
        await case()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(checked())


# Seeds of group_cancel_faults.generate: members failing and cancelled from
# inside, Fallbacks, child sagas, compensations that fail, a store fault
# (outage, in-doubt, cancellation) at a journal write, a resume cancelled on
# its way, recovery. Chosen to cover every outcome on both stores.
GROUP_SEEDS = range(930_000, 930_024)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("seed", GROUP_SEEDS)
def test_S8_S13_S15_group_and_child_cancellations_in_memory(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], seed: int
) -> None:
    async def case() -> None:
        await run_plan(generate(seed, faults=True), MemorySagaStore(), wrap="faulty",
                       saga_id=f"g{seed}")
        await run_plan(generate(seed, faults=False), MemorySagaStore(), wrap="none",
                       saga_id=f"l{seed}")

    run_in(loop_factory, case)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("seed", GROUP_SEEDS)
def test_S8_S13_S15_group_and_child_cancellations_on_sqlite_then_recover(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], seed: int, tmp_path: Path
) -> None:
    clock = [1_000_000.0]

    async def later(store: Any) -> None:
        clock[0] += 3600.0  # the dead run's leases ran out

    async def case() -> None:
        async with SQLiteSagaStore(tmp_path / "j.db", clock=lambda: clock[0]) as inner:
            await run_plan(generate(seed, faults=True), inner, wrap="submitting",
                           saga_id=f"g{seed}", before_recovery=later)

    run_in(loop_factory, case)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("seed", range(930_000, 930_016))
def test_S13_S15_random_families_with_a_fault_or_a_cancellation(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], seed: int
) -> None:
    async def case() -> None:
        await composition.test_S15_S13_random_families_with_a_fault_keep_the_ledger_consistent(
            seed
        )
        await composition.test_S15_S8_a_family_cancelled_at_random_points_ends_final_and_undone(
            seed
        )

    run_in(loop_factory, case)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_S8_S13_a_fault_at_every_write_of_an_unwinding_with_a_failing_compensation(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], kind: FaultKind, tmp_path: Path
) -> None:
    """A Fallback taken, a compensation that fails once, a fault (outage,
    in-doubt, cancellation) at each journal write in turn, on SQLite through
    the submitting path; then ``recover``: the caller's answer matches the
    journal, nothing ran that the journal does not know, and after recovery
    the ledger agrees with it (test_journal_truth's matrix)."""

    async def case() -> None:
        files = iter(range(1_000))

        async def make() -> SQLiteSagaStore:
            store = SQLiteSagaStore(tmp_path / f"{next(files)}.db")
            await store.open()
            return store

        ran = 0
        for param in journal_truth.CASES:
            shape, at, fault = param.values
            if shape is UNWINDS and fault == kind:
                await journal_truth.matrix_case(
                    make, True, shape, at, fault, wrapper=FaultySubmittingStore
                )
                ran += 1
        assert ran >= 5, ran

    run_in(loop_factory, case)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("case_name", [
    "test_a_stop_past_its_grace_hands_sagas_off_without_compensating",
    "test_a_cancelled_worker_hands_its_sagas_off",
    "test_a_graceful_stop_lets_sagas_finish_and_releases_their_leases",
])
def test_S10_a_recovery_worker_stopped_gives_its_leases_back(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], case_name: str, tmp_path: Path
) -> None:
    """A RecoveryWorker's claims, resumes, heartbeats and give-backs all
    start eagerly under such a factory: stopped (gracefully, past its grace,
    or cancelled) it hands its runs off and gives their leases back."""

    async def case() -> None:
        async with SQLiteSagaStore(tmp_path / "w.db") as store:
            await getattr(worker_cases, case_name)(store)

    run_in(loop_factory, case)


@dataclasses.dataclass
class _Order(SagaContext):
    order_id: str = ""


class _CountsInFlight:
    """A first step that reads its worker's ``in_flight`` before its first
    await: under an eager factory, inside the ``create_task`` that starts
    its resume."""

    worker: ClassVar[RecoveryWorker | None] = None
    seen: ClassVar[list[int]] = []
    both: ClassVar[asyncio.Event | None] = None  # set once both have counted

    async def act(self, ctx: _Order) -> None:
        assert self.worker is not None
        assert self.both is not None
        self.seen.append(self.worker.in_flight)
        if len(self.seen) == 2:
            self.both.set()
        await asyncio.sleep(0)

    async def compensate(self, ctx: _Order) -> None:
        pass


class _CountedSaga(Saga[_Order]):
    steps: ClassVar[list[Any]] = [_CountsInFlight]


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_worker_counts_a_resume_in_flight_while_its_first_step_runs(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    """``worker.in_flight`` is the number of sagas being resumed: under an
    eager factory, on a store that answers without suspending (SQLite's
    ``writer="inline"``), a resume's first step runs inside the
    ``create_task`` that starts it — before the worker had counted its task,
    or those of the sagas claimed with it (it said 0, then 1, for 2)."""
    _CountsInFlight.seen = []

    async def case() -> None:
        async with SQLiteSagaStore(tmp_path / "w.db", writer="inline") as store:
            for n in range(2):
                await store.create(
                    f"s{n}", "_CountedSaga", _CountedSaga.definition.fingerprint,
                    {"order_id": f"s{n}"},
                    [JournalEntry(0, "_CountsInFlight", "primary", "act", StepStatus.STARTED,
                                  1, None, 1.0)],
                )
            worker = _CountsInFlight.worker = RecoveryWorker(
                store, [_CountedSaga(store=store)], concurrency=2, lease=600, poll=3600,
                older_than=0, owner="w1",
            )
            _CountsInFlight.both = asyncio.Event()
            running = asyncio.get_running_loop().create_task(worker.run())
            await _CountsInFlight.both.wait()
            await worker.stop()  # once both have finished (no grace: as long as they take)
            await running
            assert worker.stats.completed == 2
            assert _CountsInFlight.seen == [2, 2]
            assert worker.in_flight == 0
            for n in range(2):
                assert (await store.load(f"s{n}")).status is SagaStatus.COMPLETED

    run_in(loop_factory, case)
