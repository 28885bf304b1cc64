"""Services sharing one store (a mixed fleet): each ``RecoveryWorker`` claims
only the sagas it can resume (S10).

An order service and a billing service journal to one SQLite file (each
writer: thread, inline, process) or one PostgreSQL schema, and each runs a
worker given its own sagas. A crash leaves sagas of both interrupted. A
worker that claimed every saga took the other service's, skipped them with a
warning and kept them out of every claim for its lease (300 s by default):
the other service's worker then resumed its own sagas a lease (and a poll)
late, both logs filled with warnings, and a backlog of the other service's
sagas filled a worker's claims before its own. Now a worker's claim asks
the store for its saga names only (``claim(names=...)``).

The tests measure by claims and by the store's injected clock, never by
sleeping: ``ClaimProbe`` shows each claim's leases as it returns, and a
participant ledger says which steps ran, and how often.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers_claims import ClaimProbe, ClaimsEveryName

from fallback_saga import (
    JournalEntry,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
    current_step,
)
from fallback_saga.store.base import claims_by_name

pytest_plugins = ["conftest_pg"]

WRITERS = ("thread", "inline", "process")
KINDS = (*WRITERS, "postgres")


# --------------------------------------------------------------------------- two services


@dataclasses.dataclass
class Ctx(SagaContext):
    key: str = ""


class Ledger:
    """The participants' side: (action, step, saga id) per call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def acts(self) -> Counter[tuple[str, str]]:
        return Counter((saga_id, step) for action, step, saga_id in self.calls
                       if action == "act")

    def compensations(self) -> list[tuple[str, str, str]]:
        return [call for call in self.calls if call[0] == "compensate"]


class _Step(SagaStepHandler[Ctx, str]):
    name: ClassVar[str] = ""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def act(self, ctx: Ctx, /) -> Any:
        self.ledger.calls.append(("act", self.name, current_step().saga_id))  # type: ignore[union-attr]
        return self.name

    async def compensate(self, ctx: Ctx, /) -> None:
        self.ledger.calls.append(
            ("compensate", self.name, current_step().saga_id))  # type: ignore[union-attr]


class Reserve(_Step):
    name = "Reserve"


class Ship(_Step):
    name = "Ship"


class Invoice(_Step):
    name = "Invoice"


class Charge(_Step):
    name = "Charge"


class OrderSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Reserve, Ship]


class BillingSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Invoice, Charge]


def _interrupted_in_first_step(step: str) -> list[JournalEntry]:
    return [JournalEntry(0, step, "primary", "act", StepStatus.STARTED, 1, None, 1.0)]


async def crashed(store: Any, saga: type[Saga[Ctx]], ids: list[str]) -> list[str]:
    """Sagas a crashed process left RUNNING inside their first step, in
    ``ids`` order (the first is the oldest)."""
    first: str = saga.steps[0].name
    for saga_id in ids:
        await store.create(saga_id, saga.__name__, saga.definition.fingerprint,
                           {"key": saga_id}, _interrupted_in_first_step(first))
    return ids


def built(saga: type[Saga[Ctx]], store: Any, ledger: Ledger) -> Saga[Ctx]:
    return saga(store=store, step_factory=lambda cls: cls(ledger))


class StoreClock:
    """The SQLite store's clock (``clock=``): moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=KINDS)
async def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Any]:
    """One store both services journal to."""
    if request.param == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        store: Any = PostgresSagaStore(request.getfixturevalue("pg_conninfo"),
                                       schema=request.getfixturevalue("pg_schema"))
    else:
        store = SQLiteSagaStore(tmp_path / "shared.db", writer=request.param)
    async with store:
        yield store


class Finished:
    """A listener: the sagas a worker finished, and a way to wait for them."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []
        self._told = asyncio.Event()

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        self.outcomes.append((saga_id, outcome))
        self._told.set()

    async def until(self, count: int) -> None:
        while len(self.outcomes) < count:
            self._told.clear()
            await asyncio.wait_for(self._told.wait(), 60)  # a safety net, not a sync


async def stopped(worker: RecoveryWorker, running: asyncio.Task[None]) -> None:
    await worker.stop()
    await running


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("fallback_saga")]


# --------------------------------------------------------------------------- the fleet


async def test_S10_each_service_of_a_shared_store_claims_only_its_own_sagas(
    shared: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """More interrupted billing sagas than the order worker has slots, all
    older than the order sagas: the order worker's first claim takes its
    own sagas (it took the billing ones, skipped them with a warning each
    and kept them from the billing worker for its lease), and the billing
    worker's first claim takes all of its own, none held back. Each step ran
    once, nothing was compensated, nothing was warned about."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    ledger = Ledger()
    billing_ids = await crashed(shared, BillingSaga, [f"b{n}" for n in range(5)])
    order_ids = await crashed(shared, OrderSaga, ["o0", "o1"])

    orders = ClaimProbe(shared)
    told = Finished()
    order_worker = RecoveryWorker(orders, [built(OrderSaga, orders, ledger)], concurrency=2,
                                  lease=300, poll=3600, older_than=0, listeners=[told])
    running = asyncio.create_task(order_worker.run())
    try:
        first = await orders.claim_number(1)
        assert [lease.saga_id for lease in first] == order_ids
        await told.until(2)
    finally:
        await stopped(order_worker, running)
    assert orders.names_asked[0] == ("OrderSaga",)
    for saga_id in billing_ids:  # never leased, never deferred: as the crash left them
        state = await shared.lease_state(saga_id)
        assert (state.owner, state.expires_at, state.token) == (None, None, 0)

    billing = ClaimProbe(shared)
    told = Finished()
    billing_worker = RecoveryWorker(billing, [built(BillingSaga, billing, ledger)],
                                    concurrency=8, lease=300, poll=3600, older_than=0,
                                    listeners=[told])
    running = asyncio.create_task(billing_worker.run())
    try:
        first = await billing.claim_number(1)
        assert [lease.saga_id for lease in first] == billing_ids
        await told.until(len(billing_ids))
    finally:
        await stopped(billing_worker, running)

    assert ledger.acts() == Counter(
        {(saga_id, step): 1 for saga_id in order_ids for step in ("Reserve", "Ship")}
        | {(saga_id, step): 1 for saga_id in billing_ids for step in ("Invoice", "Charge")}
    )
    assert ledger.compensations() == []
    for saga_id in order_ids + billing_ids:
        assert (await shared.load(saga_id)).status is SagaStatus.COMPLETED
    assert (order_worker.stats.skipped, billing_worker.stats.skipped) == (0, 0)
    assert (order_worker.stats.completed, billing_worker.stats.completed) == (2, 5)
    assert _warnings(caplog) == []


@pytest.mark.parametrize("writer", ["thread", "inline"])  # a clock of one's own
async def test_S10_a_service_resumes_its_sagas_without_waiting_out_the_other_ones_lease(
    writer: str, tmp_path: Path
) -> None:
    """The order worker runs first, one slot, on a store whose clock stands
    still unless the test moves it. The billing worker, started next, has
    all of its sagas in its first claim: no time passed on the store's clock.
    (A worker claiming every saga skipped the billing sagas and deferred each
    for its lease: the billing worker found none until the clock moved past
    the lease — the test moves it a poll at a time and says how far.)"""
    clock = StoreClock()
    ledger = Ledger()
    lease, poll = 300.0, 5.0
    async with SQLiteSagaStore(tmp_path / "shared.db", writer=writer, clock=clock) as store:
        billing_ids = await crashed(store, BillingSaga, ["b0", "b1", "b2"])
        await crashed(store, OrderSaga, ["o0"])
        clock.now += 1  # older_than=0: due once the clock has moved past their writes

        told = Finished()
        order_worker = RecoveryWorker(store, [built(OrderSaga, store, ledger)], concurrency=1,
                                      lease=lease, poll=poll, older_than=0, listeners=[told])
        running = asyncio.create_task(order_worker.run())
        try:
            while ("o0", "completed") not in told.outcomes:
                await told.until(len(told.outcomes) + 1)
        finally:
            await stopped(order_worker, running)

        billing = ClaimProbe(store)
        billing_worker = RecoveryWorker(billing, [built(BillingSaga, billing, ledger)],
                                        concurrency=8, lease=lease, poll=poll, older_than=0)
        running = asyncio.create_task(billing_worker.run())
        started = clock.now
        try:
            claimed: list[str] = []
            number = 1
            while True:
                claimed += [lease.saga_id for lease in await billing.claim_number(number)]
                if sorted(claimed) == billing_ids or clock.now - started > 2 * lease:
                    break
                clock.now += poll  # the next poll, by the store's clock
                billing_worker.wake()
                number += 1
        finally:
            await stopped(billing_worker, running)
        waited = clock.now - started
        assert sorted(claimed) == billing_ids
        assert waited == 0, f"the billing sagas waited {waited:g} s of the store's clock"
        assert order_worker.stats.skipped == 0


async def test_S10_a_backlog_of_another_services_sagas_never_fills_a_claim(
    shared: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Forty interrupted billing sagas ahead of one order saga, a worker of
    two slots: one claim, the order saga's (a worker claiming every saga
    went through twenty claims of billing sagas first, warning forty times)."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    ledger = Ledger()
    await crashed(shared, BillingSaga, [f"b{n:02d}" for n in range(40)])
    await crashed(shared, OrderSaga, ["o0"])
    orders = ClaimProbe(shared)
    told = Finished()
    worker = RecoveryWorker(orders, [built(OrderSaga, orders, ledger)], concurrency=2,
                            poll=3600, older_than=0, listeners=[told])
    running = asyncio.create_task(worker.run())
    try:
        await told.until(1)
    finally:
        await stopped(worker, running)
    # (PostgreSQL: a second claim, empty, once the worker listens for work.)
    assert [lease.saga_id for claim in orders.claims for lease in claim] == ["o0"]
    assert told.outcomes == [("o0", "completed")]
    assert ledger.acts() == Counter({("o0", "Reserve"): 1, ("o0", "Ship"): 1})
    assert _warnings(caplog) == []


# --------------------------------------------------------------------------- child sagas


class Payment(Saga[Ctx]):
    """A child saga (``SubSaga``): its record's name is its own, ``Payment``."""

    steps: ClassVar[list[Any]] = [Charge]


def checkout(store: Any, ledger: Ledger) -> Saga[Ctx]:
    """The order service's ``Checkout``: its step ``Pay`` runs ``Payment`` as
    a child (id ``<parent id>/Pay``), then it ships."""
    payment = built(Payment, store, ledger)

    class Checkout(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [
            SubSaga(payment, context=lambda c: Ctx(c.key), name="Pay"), Ship,
        ]

    return built(Checkout, store, ledger)


async def _a_family_interrupted_in_its_child(store: Any, parent: str) -> None:
    """``parent`` inside its SubSaga step, its child ``<parent>/Pay`` inside
    Charge — as a crash left them."""
    fingerprint = checkout(store, Ledger()).definition.fingerprint
    await store.create(parent, "Checkout", fingerprint, {"key": parent},
                       _interrupted_in_first_step("Pay"))
    await store.create(f"{parent}/Pay", "Payment", Payment.definition.fingerprint,
                       {"key": parent}, _interrupted_in_first_step("Charge"))


async def test_S10_a_child_saga_is_claimed_by_its_own_name_and_driven_by_its_parent(
    shared: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A child is matched by its own saga's name, not its parent's. The
    parent's worker, not given ``Payment``, claims the parent alone (it
    claimed the child too, only to defer it), and the parent's resumption
    drives the child to its end; a worker given ``Payment`` (the billing
    service's) that claims a child while its parent is in flight defers it
    to the parent, as before."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    ledger = Ledger()
    await _a_family_interrupted_in_its_child(shared, "c1")

    orders = ClaimProbe(shared)
    told = Finished()
    worker = RecoveryWorker(orders, [checkout(orders, ledger)], poll=3600, older_than=0,
                            listeners=[told])
    running = asyncio.create_task(worker.run())
    try:
        await told.until(1)
    finally:
        await stopped(worker, running)
    assert [lease.saga_id for lease in orders.claims[0]] == ["c1"]
    assert told.outcomes == [("c1", "completed")]
    assert worker.stats.deferred == worker.stats.skipped == 0
    assert (await shared.load("c1/Pay")).status is SagaStatus.COMPLETED
    assert ledger.acts() == Counter({("c1/Pay", "Charge"): 1, ("c1", "Ship"): 1})
    assert ledger.compensations() == []

    await _a_family_interrupted_in_its_child(shared, "c2")
    await shared.claim_saga("c2", owner="a checkout still running", lease_seconds=60)
    billing = ClaimProbe(shared)
    told = Finished()
    billing_worker = RecoveryWorker(billing, [built(Payment, billing, ledger)], poll=3600,
                                    older_than=0, listeners=[told])
    running = asyncio.create_task(billing_worker.run())
    try:
        await told.until(1)
    finally:
        await stopped(billing_worker, running)
    assert [lease.saga_id for lease in billing.claims[0]] == ["c2/Pay"]
    assert told.outcomes == [("c2/Pay", "deferred")]
    assert (await shared.load("c2/Pay")).status is SagaStatus.RUNNING  # its parent's to drive
    assert _warnings(caplog) == []


# --------------------------------------------------------------------------- the store's side


@pytest.mark.parametrize("kind", KINDS)
async def test_S10_claim_by_names_takes_those_names_oldest_first_up_to_the_limit(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``claim(names=...)``: the limit counts only sagas of those names (the
    others are filtered before it, in the database); oldest first; ``names``
    and ``deferred`` combine; no names, no sagas; a bare string is refused
    (it would read as its letters)."""
    if kind == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        store: Any = PostgresSagaStore(request.getfixturevalue("pg_conninfo"),
                                       schema=request.getfixturevalue("pg_schema"))
    else:
        store = SQLiteSagaStore(tmp_path / "s.db", writer=kind)
    async with store:
        assert claims_by_name(store)
        await crashed(store, BillingSaga, ["b0", "b1", "b2"])
        await crashed(store, OrderSaga, ["o0", "o1", "o2"])
        await crashed(store, Payment, ["p0"])
        deferred = await store.claim_saga("o0", owner="w", lease_seconds=60)
        await store.defer(deferred, 600)

        def ids(leases: list[Any]) -> list[str]:
            return [lease.saga_id for lease in leases]

        assert ids(await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1,
                                     names=["OrderSaga"])) == ["o1"]
        assert ids(await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                     names=("Payment", "OrderSaga", "Payment"))) == [
            "o2", "p0"]
        assert ids(await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                     names=["OrderSaga"], deferred=True)) == ["o0"]
        assert await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                 names=[]) == []
        assert await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                 names=["NoSuchSaga"]) == []
        with pytest.raises(TypeError, match="names must be a collection"):
            await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                              names="OrderSaga")
        with pytest.raises(TypeError, match="a saga name is a str"):
            await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                              names=[b"OrderSaga"])
        # Nothing above took a billing saga; a claim of any name still does.
        assert ids(await store.claim(owner="w", lease_seconds=60, older_than=-1,
                                     limit=5)) == ["b0", "b1", "b2"]


@pytest.mark.parametrize("kind", KINDS)
async def test_S10_a_claim_by_more_names_than_sqlite_binds_in_one_statement_still_claims(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """More names than one SQLite statement may bind (999 variables before
    SQLite 3.32, 32,766 since, up to 250,000 in some builds) still claim
    their sagas, oldest first up to the limit: one placeholder per name made
    every such claim fail ("too many SQL variables"), so a worker given
    that many sagas never resumed any. The count is taken from the SQLite
    this Python links, one past its bound, whatever the build."""
    probe = sqlite3.connect(":memory:")
    try:
        bound = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        probe.close()
    if kind == "postgres":
        from fallback_saga.store.postgres import PostgresSagaStore

        store: Any = PostgresSagaStore(request.getfixturevalue("pg_conninfo"),
                                       schema=request.getfixturevalue("pg_schema"))
    else:
        store = SQLiteSagaStore(tmp_path / "s.db", writer=kind)
    names = [f"Saga{n}" for n in range(bound + 1)] + ["OrderSaga"]
    async with store:
        await crashed(store, BillingSaga, ["b0"])
        await crashed(store, OrderSaga, ["o0", "o1", "o2"])
        leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=2,
                                   names=names)
        assert [lease.saga_id for lease in leases] == ["o0", "o1"]
        leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                   names=names)
        assert [lease.saga_id for lease in leases] == ["o2"]
        # A claim by a few names after it: none of the many is left behind.
        leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                   names=["BillingSaga"])
        assert [lease.saga_id for lease in leases] == ["b0"]


@pytest.mark.parametrize("writer", WRITERS)
async def test_S10_a_named_claim_works_on_a_file_whose_status_index_was_dropped(
    writer: str, tmp_path: Path
) -> None:
    """A worker's claim names the index it walks (``INDEXED BY
    sagas_by_status``): on a file whose index an operator or a tool dropped
    (a bulk load, a hand-made copy), every worker's claim failed ("no such
    index") and no worker resumed anything, while a ``recover`` pass (no
    names) still did. The store makes the index again when it opens."""
    path = tmp_path / "s.db"
    async with SQLiteSagaStore(path, writer=writer) as store:
        await crashed(store, OrderSaga, ["o0", "o1"])
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP INDEX sagas_by_status")
        conn.commit()
    finally:
        conn.close()
    async with SQLiteSagaStore(path, writer=writer) as store:
        leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5,
                                   names=["OrderSaga"])
    assert [lease.saga_id for lease in leases] == ["o0", "o1"]


def test_S10_a_named_claim_on_sqlite_walks_the_sagas_in_flight_not_every_saga_of_its_names(
    tmp_path: Path,
) -> None:
    """The query plan of a worker's claim: the index of sagas by status (the
    sagas in flight), as an unnamed claim's — also once ANALYZE has run on a
    file of many finished sagas, when the planner, left to itself, took a
    full scan of the table (or the index by name, which holds every saga of
    those names ever run): a store of millions read on every poll."""
    from fallback_saga.store import _sqlite_leases

    async def make() -> None:
        async with SQLiteSagaStore(tmp_path / "s.db"):
            pass

    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        with conn:
            conn.executemany(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                " created_at, updated_at) VALUES (?, ?, 'f', ?, '{}', 1, 0, 0)",
                [(f"s{n}", "OrderSaga" if n % 2 else "BillingSaga",
                  "running" if n % 10 == 0 else "completed") for n in range(2000)],
            )
        conn.execute("ANALYZE")
        for names in (1, 3):
            sql = _sqlite_leases._CLAIMABLE_OF_NAMES.format(", ".join("?" * names))
            plan = " / ".join(row[3] for row in conn.execute(
                "EXPLAIN QUERY PLAN " + sql, [0] * sql.count("?")))
            assert "USING INDEX sagas_by_status" in plan, plan
            assert "sagas_by_name" not in plan, plan
            assert "SCAN" not in plan, plan
    finally:
        conn.close()


# --------------------------------------------------------------------------- stores of one's own


async def test_S10_a_store_whose_claim_takes_no_names_still_recovers_every_saga(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store of one's own written before ``names`` (its ``claim`` takes no
    such keyword) is never passed it: its worker claims every saga, skips the
    other service's with a warning and keeps each out of claims for its
    lease, as workers always did — and still resumes its own."""
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    ledger = Ledger()
    async with SQLiteSagaStore(tmp_path / "s.db") as sqlite:
        assert claims_by_name(sqlite)
        store = ClaimProbe(ClaimsEveryName(sqlite))
        assert not claims_by_name(store)
        await crashed(sqlite, BillingSaga, ["b0"])
        await crashed(sqlite, OrderSaga, ["o0"])
        told = Finished()
        worker = RecoveryWorker(store, [built(OrderSaga, store, ledger)], concurrency=2,
                                lease=300, poll=3600, older_than=0, listeners=[told])
        running = asyncio.create_task(worker.run())
        try:
            await told.until(2)
        finally:
            await stopped(worker, running)
        assert store.names_asked[0] is None
        assert [lease.saga_id for lease in store.claims[0]] == ["b0", "o0"]
        assert sorted(told.outcomes) == [("b0", "skipped"), ("o0", "completed")]
        state = await sqlite.lease_state("b0")
        assert state.owner is None
        assert state.expires_at is not None  # deferred
        assert [m for m in _warnings(caplog) if "skipped saga b0" in m]
        assert ledger.acts() == Counter({("o0", "Reserve"): 1, ("o0", "Ship"): 1})
