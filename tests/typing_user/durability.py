"""Stores, recovery, the worker, listeners: a service's start-up and
operations code (README "Durability and recovery", docs/durability.md,
docs/scaling.md, docs/observability.md), and a store of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, assert_type

from fallback_saga import (
    CircuitBreaker,
    CircuitState,
    CircuitStateStore,
    JournalEntry,
    Lease,
    LoggingListener,
    MemorySagaStore,
    RecoverableStore,
    RecoveryReport,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaListener,
    SagaNotFound,
    SagaRecord,
    SagaStatus,
    SagaStepHandler,
    SagaStore,
    SagaSummary,
    SharedCircuit,
    SQLiteSagaStore,
    StepCall,
    WorkerStats,
    recover,
)
from fallback_saga.otel import OpenTelemetryListener
from fallback_saga.store import LeaseState, WorkNotifier
from fallback_saga.store.postgres import PostgresSagaStore


@dataclasses.dataclass
class Transfer(SagaContext):
    source: str
    target: str
    cents: int
    debited: bool = False


class Debit(SagaStepHandler[Transfer, None]):
    async def act(self, context: Transfer) -> None:
        context.debited = True

    async def compensate(self, context: Transfer) -> None:
        context.debited = False


class TransferSaga(Saga[Transfer]):
    steps = [Debit]


class Metrics(SagaListener):
    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self.failures[step] = self.failures.get(step, 0) + 1

    def step_call_started(self, call: StepCall) -> None:
        assert_type(call.idempotency_key, str)
        assert_type(call.branch, str)

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        logging.getLogger("sagas").info("%s %s", saga_id, status.value)


class DuckTypedListener:
    """No base class: a listener implements only the hooks it cares about."""

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        print("started", saga_id, saga_name)


class DictStore:
    """A store of the user's own: satisfies ``SagaStore`` structurally (and
    takes the optional ``after=`` of conditional appends)."""

    appends_after = True

    def __init__(self) -> None:
        self.records: dict[str, SagaRecord] = {}

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        self.records[saga_id] = SagaRecord(
            saga_id, saga_name, fingerprint, status, dict(context), list(entries)
        )

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Lease | None = None,
        after: int | None = None,
    ) -> None:
        record = await self.load(saga_id)
        record.history.extend(entries)
        if status is not None:
            record.status = status
        if context is not None:
            record.context = dict(context)

    async def load(self, saga_id: str) -> SagaRecord:
        try:
            return self.records[saga_id]
        except KeyError:
            raise SagaNotFound(saga_id) from None


class DictCircuitStore:
    """Shared breaker state of the user's own: satisfies ``CircuitStateStore``."""

    def __init__(self) -> None:
        self.rows: dict[str, SharedCircuit] = {}

    def read(self, name: str) -> SharedCircuit | None:
        return self.rows.get(name)

    def compare_and_set(
        self,
        name: str,
        expected_version: int,
        new_state: CircuitState,
        open_until: float,
        half_open_owner: str | None,
    ) -> SharedCircuit | None:
        row = self.rows.get(name)
        if (row.version if row is not None else 0) != expected_version:
            return None
        new = SharedCircuit(name, new_state, expected_version + 1, open_until, half_open_owner,
                            time.time())
        self.rows[name] = new
        return new


shared_state: CircuitStateStore = DictCircuitStore()
payments_breaker = CircuitBreaker(
    name="payments", state_store=shared_state, sync_interval=0.5, clock=time.monotonic,
    listeners=[Metrics()],
)


async def operate(sqlite_path: str, dsn: str) -> None:
    store: SagaStore = DictStore()
    saga = TransferSaga(
        store=store,
        listeners=[Metrics(), DuckTypedListener(), LoggingListener(level=logging.DEBUG)],
    )
    done = await saga.run(Transfer("a", "b", 100), saga_id="t-1")
    assert_type(done.context.debited, bool)

    async with SQLiteSagaStore(sqlite_path, synchronous="normal") as sqlite:
        assert_type(sqlite, SQLiteSagaStore)
        durable: RecoverableStore = sqlite
        report = await recover(durable, [TransferSaga], older_than=timedelta(minutes=1))
        assert_type(report, RecoveryReport)
        assert_type(report.skipped, list[tuple[str, str]])
        summaries = await sqlite.list_sagas(status=SagaStatus.RUNNING, limit=10)
        assert_type(summaries, list[SagaSummary])
        assert_type(await sqlite.lease_state("t-1"), LeaseState)
        built = TransferSaga(store=sqlite, step_factory=lambda cls: cls(),
                             listeners=[OpenTelemetryListener()])
        report = await recover(sqlite, [built], lease=60.0, concurrency=2,
                               progress=lambda saga_id, outcome: print(saga_id, outcome))

    postgres = PostgresSagaStore(dsn, schema="sagas", max_size=4)
    notifier: WorkNotifier = postgres  # it announces handed-off sagas
    print(notifier)
    worker = RecoveryWorker(postgres, [TransferSaga], concurrency=4, lease=timedelta(minutes=5),
                            listeners=[Metrics()])
    running = asyncio.create_task(worker.run())
    worker.wake()
    await worker.stop(grace=10.0)
    await running
    assert_type(worker.stats, WorkerStats)
    assert_type(worker.listening, bool)

    memory = MemorySagaStore(max_finished=100)
    record = await memory.load("t-1")
    assert_type(record.status, SagaStatus)
    assert_type(record.context, dict[str, Any])
