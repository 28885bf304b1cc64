"""A claimed saga whose record the store fails to read (``store.load`` raises
a ``SagaStoreError``, or a store of one's own lets its driver's error out)
was not looked at: nothing of it ran, and nothing is wrong with it that an
operator must fix. ``recover()`` reports it ``interrupted``, with the
store's error as the reason — left for the next pass, as a saga whose
journal write failed is (S13) — never ``skipped`` (which says the saga
needs an operator: unknown name, changed definition, unreadable row). A
``RecoveryWorker`` counts it the same way (``stats.interrupted``, its
backoff), and ``recover`` on the command line exits 1 and says so.

Before, every such saga was reported ``skipped`` with the store's error:
an operator's next pass, or a dashboard of skipped sagas, was misled.
A corrupt row (``CorruptSagaRecord``) stays ``skipped`` (S12).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers_cli import import_app

from fallback_saga import (
    CorruptSagaRecord,
    JournalEntry,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaListener,
    SagaStatus,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
    recover,
)
from fallback_saga.cli import main as cli_main


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class A:
    async def act(self, ctx: Ctx) -> None:
        pass

    async def compensate(self, ctx: Ctx) -> None:
        pass


class Order(Saga[Ctx]):
    steps = [A]


class LoadFails(SQLiteSagaStore):
    """A SQLite store whose ``load`` of one saga raises ``error`` (``None``:
    reads as usual)."""

    error: BaseException | None = None
    failing = "s1"

    async def load(self, saga_id: str) -> Any:
        if saga_id == self.failing and self.error is not None:
            raise self.error
        return await super().load(saga_id)


ERRORS = [
    pytest.param(SagaStoreError("the store is down"), id="SagaStoreError"),
    pytest.param(sqlite3.OperationalError("disk I/O error"), id="driver_error"),
    pytest.param(ConnectionResetError("connection reset by peer"), id="OSError"),
]


async def seed(store: SQLiteSagaStore, *saga_ids: str) -> None:
    """Sagas a crashed process left RUNNING, inside A."""
    for saga_id in saga_ids:
        await store.create(saga_id, "Order", Order.definition.fingerprint, {"n": 0},
                           [JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1,
                                         None, 1.0)])


@pytest.mark.parametrize("error", ERRORS)
async def test_S13_recover_reports_a_saga_the_store_failed_to_read_as_interrupted(
    tmp_path: Path, error: Exception
) -> None:
    async with LoadFails(tmp_path / "s.db") as store:
        await seed(store, "s1", "s2")
        store.error = error
        report = await recover(store, [Order], older_than=0)
        assert report.skipped == [], report
        assert report.resumed == ["s2"], report  # the others go on (S12)
        ((saga_id, reason),) = report.interrupted
        assert saga_id == "s1"
        assert type(error).__name__ in reason, reason
        assert str(error) in reason, reason
        assert "interrupted s1" in str(report)
        # Left as it was, for the next pass: claimable again at once.
        store.error = None
        again = await recover(store, [Order], older_than=0)
        assert again.resumed == ["s1"], again
        assert (await store.load("s1")).status is SagaStatus.COMPLETED


async def test_S12_a_corrupt_row_is_still_skipped(tmp_path: Path) -> None:
    async with LoadFails(tmp_path / "s.db") as store:
        await seed(store, "s1")
        store.error = CorruptSagaRecord("s1", "its context is not JSON")
        report = await recover(store, [Order], older_than=0)
        assert report.interrupted == [], report
        assert [saga_id for saga_id, _ in report.skipped] == ["s1"], report


class Outcomes(SagaListener):
    def __init__(self) -> None:
        self.told: list[tuple[str, str, str | None]] = []
        self.heard = asyncio.Event()

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        self.told.append((saga_id, outcome, reason))
        self.heard.set()


@pytest.mark.parametrize("error", ERRORS)
async def test_S13_a_worker_counts_a_saga_the_store_failed_to_read_as_interrupted(
    tmp_path: Path, error: Exception
) -> None:
    outcomes = Outcomes()
    async with LoadFails(tmp_path / "s.db") as store:
        await seed(store, "s1")
        store.error = error
        worker = RecoveryWorker(store, [Order], lease=30, poll=30, older_than=0,
                                listeners=[outcomes])
        task = asyncio.create_task(worker.run())
        await outcomes.heard.wait()
        await worker.stop()
        await task
    ((saga_id, outcome, reason),) = outcomes.told
    assert (saga_id, outcome) == ("s1", "interrupted"), outcomes.told
    assert reason is not None
    assert str(error) in reason
    assert (worker.stats.interrupted, worker.stats.skipped) == (1, 0), worker.stats


APP = """
import dataclasses

from fallback_saga import Saga, SagaContext


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class A:
    async def act(self, ctx): pass
    async def compensate(self, ctx): pass


class Order(Saga[Ctx]):
    steps = [A]


sagas = [Order]
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from import_app(tmp_path, monkeypatch, APP, "load_fails_app")


def test_S13_the_recover_command_says_interrupted_and_exits_1(
    tmp_path: Path, app: ModuleType, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = str(tmp_path / "cli.db")

    async def seeded() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("s1", "Order", app.Order.definition.fingerprint, {"n": 0},
                               [JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1,
                                             None, 1.0)])

    asyncio.run(seeded())

    async def load_fails(self: SQLiteSagaStore, saga_id: str) -> Any:
        raise SagaStoreError("the store is down")

    monkeypatch.setattr(SQLiteSagaStore, "load", load_fails)
    status = cli_main(["recover", "--db", db, "--app", f"{app.__name__}:sagas",
                       "--older-than", "0"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "1 interrupted, 0 skipped" in out, out
    assert "interrupted s1: " in out, out
    assert "the store is down" in out, out
