"""Sagas whose event loop ends under them: a sync web app's ``asyncio.run``
per request that returns while a saga it started is still writing its
journal (a background task, a handler that gave up), and the next request
on a new loop, with the one module-level store.

The rules held are S8 and S13: the loop's shutdown (which cancels every task
left) ends — nothing waits for ever on a write or a writer that this loop
can no longer answer — and the journal is the truth afterwards: no step ran
that the journal does not hold as started, recovery on a later loop ends
every saga, and no completed step of a compensated saga is left without its
compensation.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import SagaStatus, SQLiteSagaStore, recover
from fallback_saga.errors import SagaNotFound

pytest_plugins = ["conftest_pg"]

WRITERS = ["thread", "inline", "process"]
# Loop turns the request gives its saga before it returns: 0 and 1 end the
# loop while the first write waits (for the writer process: while it starts).
TURNS = [0, 1, 2, 3, 5, 8, 13, 30]


def ends(run: Callable[[], Coroutine[Any, Any, Any]], seconds: float = 60.0) -> None:
    """``asyncio.run(run())`` in a thread of its own, as a sync web app's
    request does; fails (instead of hanging the suite) unless it returns."""
    failure: list[BaseException] = []

    def request() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:  # reported below, in the test's thread
            failure.append(error)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(seconds)
    # What the ended loop dropped (tasks made while it ended: a pool opened
    # by a write its end cancelled) is freed here, not whenever a later
    # collection runs — on CPython 3.11.7 a finalizer that reports an error
    # in the middle of an ast.parse (pytest rewriting a module) breaks it.
    gc.collect()
    assert not thread.is_alive(), "asyncio.run never returned: the loop's shutdown hangs"
    assert not failure, failure


def _journal_is_the_truth(
    store: Any, ledger: list[tuple[str, str]], saga_ids: list[str]
) -> None:
    async def check() -> None:
        for saga_id in saga_ids:
            ran = [step for sid, step in ledger if sid == saga_id]
            try:
                record = await store.load(saga_id)
            except SagaNotFound:
                assert ran == [], f"{saga_id}: {ran} ran, and the journal has no saga"
                continue
            assert record.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED), (
                saga_id, record.status)
            started = [
                e.step for e in record.history if e.action == "act" and e.status.value == "started"
            ]
            acts = [step for step in ran if not step.startswith("undo-")]
            for step in set(acts):
                assert acts.count(step) <= started.count(step), (
                    f"{saga_id}: {step} ran {acts.count(step)} time(s), "
                    f"the journal started it {started.count(step)}")
            if record.status is SagaStatus.COMPENSATED:
                done = {
                    e.step for e in record.history
                    if e.action == "act" and e.status.value == "completed"
                }
                for step in done:
                    assert f"undo-{step}" in ran, f"{saga_id}: {step} completed, never compensated"

    ends(check)


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """One module-level store of ``kind``: an SQLite writer, or "postgres"
    (on the session's throwaway cluster; skipped where it cannot start)."""
    if kind != "postgres":
        return SQLiteSagaStore(tmp_path / "loops.db", writer=kind)
    require_driver()
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    return PostgresSagaStore(conninfo, schema=schema, min_size=1, max_size=2)


@pytest.mark.skipif(sys.platform == "win32", reason="the writer process needs POSIX pipes")
@pytest.mark.parametrize("kind", [*WRITERS, "postgres"])
def test_S13_a_loop_that_ends_with_a_saga_mid_write_ends_and_the_journal_stays_the_truth(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """One store for every request; each request starts its saga in a task
    and returns after ``turns`` loop turns, so the loop's shutdown cancels
    the saga wherever it is: its first write waiting for the writer process
    to start, a write on its way, a step. Each ``asyncio.run`` returns; a
    later loop recovers what was left; the ledger agrees with the journal."""
    ledger: list[tuple[str, str]] = []
    store = _store(kind, tmp_path, request)
    saga = ledger_saga(ledger)(store=store)
    saga_ids: list[str] = []

    def request(saga_id: str, turns: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            asyncio.get_running_loop().create_task(
                saga.run(Ctx(order_id=saga_id), saga_id=saga_id))
            for _ in range(turns):
                await asyncio.sleep(0)  # one loop turn: the saga goes on meanwhile
            # Returning: asyncio.run cancels the saga and waits for it.

        return run

    for turns in TURNS:
        saga_id = f"turns-{turns}"
        saga_ids.append(saga_id)
        ends(request(saga_id, turns))

    async def afterwards() -> None:
        await recover(store, [saga], older_than=0)
        # The store still serves a request on a new loop.
        await saga.run(Ctx(order_id="next"), saga_id="next")

    ends(afterwards)
    saga_ids.append("next")
    _journal_is_the_truth(store, ledger, saga_ids)
    ends(store.close)


@pytest.mark.parametrize("writer", ["thread", "inline"])
def test_S8_S13_a_compensation_the_loops_shutdown_interrupts_is_left_for_recovery_not_failed(
    tmp_path: Path, writer: str
) -> None:
    """The request returns while its saga unwinds: asyncio.run's shutdown
    cancels every task left, the unwinding's own (shielded) task too. The
    compensation in progress did not fail, it was interrupted: the journal
    must not say it failed (the saga FAILED, an operator's case) but leave
    the saga COMPENSATING with that compensation started, for recovery on a
    later loop to finish — each completed step compensated, nothing
    compensated without its record, the saga COMPENSATED."""
    ledger: list[tuple[str, str]] = []
    undoing: list[asyncio.Event] = []  # set once S0's compensate has begun
    blocked: list[bool] = [True]  # S0's compensate waits for ever, the first time

    async def s1_fails(ctx: Ctx) -> None:
        raise RuntimeError("the payment was declined")

    class Saga2(ledger_saga(ledger, steps=2, S1=s1_fails)):  # type: ignore[misc]
        name = "LedgerSaga"

    original = Saga2.steps[0].compensate

    async def compensate(self: Any, ctx: Ctx) -> None:
        await original(self, ctx)
        if blocked[0]:
            undoing[0].set()
            await asyncio.Event().wait()  # until the loop's shutdown cancels it

    Saga2.steps[0].compensate = compensate
    store = SQLiteSagaStore(tmp_path / "unwind.db", writer=writer)
    saga = Saga2(store=store)

    async def request() -> None:
        undoing.append(asyncio.Event())
        asyncio.get_running_loop().create_task(saga.run(Ctx(order_id="u"), saga_id="u"))
        await undoing[0].wait()  # the unwinding is in S0's compensate: return

    ends(request)
    record: list[Any] = []

    async def load() -> None:
        record.append(await store.load("u"))

    ends(load)
    assert record[0].status is SagaStatus.COMPENSATING, [
        (e.step, e.action, e.status.value, e.error) for e in record[0].history]
    blocked[0] = False

    async def afterwards() -> None:
        report = await recover(store, [saga], older_than=0)
        assert report.compensated == ["u"], report

    ends(afterwards)
    _journal_is_the_truth(store, ledger, ["u"])
    assert ledger.count(("u", "undo-S0")) == 2  # interrupted, then done by recovery
    ends(store.close)


class _ConnectingForEver:
    """Stands for psycopg_pool's own maintenance work in flight (a
    connection being added as the pool grows, or replacing a broken one)
    when the loop ends: psycopg_pool's worker catches the ``CancelledError``
    of ``asyncio.run``'s shutdown in such work (to survive a failed connect)
    and goes back to wait for more work — for ever, unless it is told to stop."""

    def __init__(self) -> None:
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.running.set()
        await asyncio.get_running_loop().create_future()


def test_S13_a_loop_that_ends_while_the_postgres_pool_grows_ends(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A sync app's request (``asyncio.run``) that returns with the store
    still open, while its pool is adding a connection: the loop's shutdown
    must end. psycopg_pool's workers outlive the cancellation that ends every
    task left (they catch it while connecting), so the store stops them by
    closing its pool when that cancellation comes; the next request (a new
    loop) opens a pool of its own and the store works on."""
    store = _store("postgres", tmp_path, request)
    ledger: list[tuple[str, str]] = []

    async def first() -> None:
        await store.open()
        work = _ConnectingForEver()
        store.pool.run_task(work)  # type: ignore[arg-type]
        await work.running.wait()
        await ledger_saga(ledger)(store=store).run(Ctx(order_id="grow-1"), saga_id="grow-1")

    ends(first, seconds=30)

    async def second() -> None:
        await ledger_saga(ledger)(store=store).run(Ctx(order_id="grow-2"), saga_id="grow-2")
        await store.close()

    ends(second, seconds=30)
    assert [sid for sid, _ in ledger].count("grow-2") >= 1
