"""A saga whose resume ends the process every time is parked for an operator
(S10, S13; LESSONS.md: "park the saga for an operator with a clear status").

Its lease is kept when the process dies (``ClaimedSaga._ended``, as a crash
keeps it), so before the durable stores counted claims it came back once per
lease for ever, taking each time the worker's process down with every other
saga it ran. Now ``claim`` (workers, ``recover`` passes) counts the claims of
each saga since its lease was last given back in order, and takes it no more
once the count reaches the store's ``park_after``; ``claim_saga`` (by id:
``Saga.resume``) still leases it, and a lease given back in order (release,
defer, hand-off) clears the count.

The process's death is simulated as tests/test_worker.py does: a step lets
``SystemExit`` out, which ends ``asyncio.run``; each "process" is one
``asyncio.run`` with its own store on the same file. Between processes the
dead worker's lease is made to have run out (its expiry written into the
past), as the lease's length would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import types
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_worker import (
    B,
    C,
    Ctx,
    Ledger,
    _act,
    _KillsTheProcess,
    _Step,
    eventually,
    order_saga,
    seed,
)

from fallback_saga import (
    RecoveryWorker,
    Saga,
    SagaDefinitionChanged,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
)
from fallback_saga.recovery import recover
from fallback_saga.store import _sqlite_schema
from fallback_saga.store.base import Lease

pytest_plugins = ["conftest_pg"]

PARK_AFTER = 3
DATA = Path(__file__).resolve().parent / "data"


class A(_Step):
    name = "A"


class _PoisonSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [_KillsTheProcess, B, C]


def _column(db: Path, saga_id: str, column: str = "unreleased_claims") -> Any:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(f"SELECT {column} FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


def _lease_ran_out(db: Path, saga_id: str) -> None:
    """The dead worker's lease, as its length would leave it: run out."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE sagas SET lease_expires_at = 1.0, lease_written_at = 1.0"
                     " WHERE saga_id = ?", (saga_id,))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
def test_S10_a_saga_whose_resumes_keep_ending_the_process_is_parked_for_an_operator(
    tmp_path: Path, writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each worker process claims the poison saga and dies of it, holding its
    lease; after ``park_after`` such claims no worker and no ``recover`` pass
    takes it again, while the other sagas are resumed; the last claim says so
    (ERROR, naming the saga and how to resume it); an operator's resume by id
    still leases it, and its orderly end clears the count."""
    db = tmp_path / "sagas.db"
    ledger = Ledger()

    def poison(store: SQLiteSagaStore, fixed: bool = False) -> _PoisonSaga:
        return _PoisonSaga(store=store, step_factory=lambda cls: (
            (A if fixed else cls) if cls is _KillsTheProcess else cls)(ledger))

    async def seeding(prefix: str, count: int, *, with_poison: bool) -> list[str]:
        async with SQLiteSagaStore(db, writer=writer) as store:
            if with_poison:
                await store.create("p-poison", "_PoisonSaga", _PoisonSaga.definition.fingerprint,
                                   {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
            return await seed(store, count, prefix)

    async def one_process(others: list[str]) -> list[str]:
        """A worker process: dies of the poison if it claims it; else it
        resumes the others and finds nothing more to claim."""
        async with SQLiteSagaStore(db, writer=writer, park_after=PARK_AFTER) as store:
            worker = RecoveryWorker(store, [poison(store), order_saga(store, ledger)],
                                    concurrency=1, lease=600, poll=3600, older_than=0,
                                    owner="worker")
            # The claims that came back empty: the worker has nothing left to
            # take (the poison parked). Anything less let "finished" hold
            # while a claim of the poison was on its way (after the others
            # were resumed, or before a claim at all once they were
            # COMPLETED): the worker was stopped and handed the poison off
            # unrun (no SystemExit: a flaky test).
            empty_claims = 0
            claim = store.claim

            async def counted_claim(**kwargs: Any) -> list[Lease]:
                nonlocal empty_claims
                leases = await claim(**kwargs)
                empty_claims += not leases
                return leases

            store.claim = counted_claim  # type: ignore[method-assign]
            running = asyncio.get_running_loop().create_task(worker.run())

            async def finished() -> bool:
                return empty_claims > 0 and all(
                    [(await store.load(saga_id)).status is SagaStatus.COMPLETED
                     for saga_id in others]) and worker.in_flight == 0

            await eventually(finished, what="the other sagas resumed")
            await worker.stop()
            await running
            # Nothing more is claimable: the poison is parked, for recover too.
            taken = await store.claim(owner="probe", lease_seconds=60, older_than=0,
                                      limit=10, deferred=True)
            report = await recover(store, [poison(store)], older_than=0)
            return [lease.saga_id for lease in taken] + report.resumed + [
                saga_id for saga_id, _ in report.skipped + report.interrupted]

    others = asyncio.run(seeding("s", 2, with_poison=True))
    for deaths in range(1, PARK_AFTER + 1):
        with pytest.raises(SystemExit):
            asyncio.run(one_process(others))
        assert _column(db, "p-poison") == deaths
        _lease_ran_out(db, "p-poison")
    poison_acts = [call for call in ledger.calls if call[2] == "p-poison"]
    assert len(poison_acts) == PARK_AFTER
    last_claims = [record for record in caplog.records if record.levelno == logging.ERROR
                   and "p-poison" in record.getMessage() and "claimed for the" in
                   record.getMessage()]
    assert len(last_claims) == 1
    assert "3rd time" in last_claims[0].getMessage()
    assert "Saga.resume(saga_id)" in last_claims[0].getMessage()
    assert ("python -m fallback_saga resume p-poison --app module:attr"
            in last_claims[0].getMessage())

    # The next process: the poison is not claimed; the others (old and new) are resumed.
    newer = asyncio.run(seeding("t", 3, with_poison=False))
    assert asyncio.run(one_process(others + newer)) == []
    assert [call for call in ledger.calls if call[2] == "p-poison"] == poison_acts
    assert _column(db, "p-poison") == PARK_AFTER
    assert _column(db, "p-poison", "status") == "running"

    # An operator resumes it by id (the fixed step): leased despite the count,
    # finished, and its lease given back clears the count.
    async def operator() -> SagaStatus:
        async with SQLiteSagaStore(db, writer=writer, park_after=PARK_AFTER) as store:
            await poison(store, fixed=True).resume("p-poison")
            return (await store.load("p-poison")).status

    assert asyncio.run(operator()) is SagaStatus.COMPLETED
    assert _column(db, "p-poison") == 0


def test_S10_an_operators_resume_that_ends_its_process_leaves_the_saga_parked(
    tmp_path: Path,
) -> None:
    """``Saga.resume`` by id of a parked saga whose step still ends the
    process keeps its lease, as a worker's claim does: given back on the
    way out, it cleared the count, and the workers' crash loop began again
    for ``park_after`` more claims."""
    db = tmp_path / "sagas.db"
    ledger = Ledger()

    async def parked() -> None:
        async with SQLiteSagaStore(db, park_after=PARK_AFTER) as store:
            await store.create("p-poison", "_PoisonSaga", _PoisonSaga.definition.fingerprint,
                               {"order_id": "p"}, [_act(0, "A", StepStatus.STARTED)])
            for _ in range(PARK_AFTER):
                assert [lease.saga_id for lease in await store.claim(
                    owner="dead-worker", lease_seconds=-1, older_than=0, limit=10)
                ] == ["p-poison"]

    async def operator() -> None:
        async with SQLiteSagaStore(db, park_after=PARK_AFTER) as store:
            saga = _PoisonSaga(store=store, step_factory=lambda cls: cls(ledger))
            await saga.resume("p-poison", lease_seconds=600)

    asyncio.run(parked())
    assert _column(db, "p-poison") == PARK_AFTER
    with pytest.raises(SystemExit):
        asyncio.run(operator())
    assert [call[:2] for call in ledger.calls if call[2] == "p-poison"] == [("act", "A")]
    assert _column(db, "p-poison") == PARK_AFTER  # still parked
    assert _column(db, "p-poison", "lease_owner") is not None  # kept, runs out on its own

    async def claimable() -> list[str]:
        async with SQLiteSagaStore(db, park_after=PARK_AFTER) as store:
            _lease_ran_out(db, "p-poison")
            return [lease.saga_id for lease in await store.claim(
                owner="worker", lease_seconds=60, older_than=0, limit=10, deferred=True)]

    assert asyncio.run(claimable()) == []  # workers leave it to the operator


def test_S12_a_row_that_cannot_be_read_is_never_parked_as_a_crash_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A saga whose row cannot be read (``CorruptSagaRecord``) is skipped and
    kept out of claims for a lease's length, deferred, not held: its lease
    held counted as a process that died of it, and after ``park_after``
    lease periods it was parked and described as a saga whose resumes end
    the process, to be resumed by id — which fails on the same row. It kills
    nothing and needs its row repaired or purged: every pass past its lease
    reports it skipped, naming what is wrong (S12) — an operator's ``recover``
    pass at once (it claims deferred sagas too) — and no text calls it
    parked."""
    from fallback_saga.cli import main

    db = tmp_path / "sagas.db"

    async def one_pass() -> list[tuple[str, str]]:
        async with SQLiteSagaStore(db, park_after=PARK_AFTER) as store:
            saga = _PoisonSaga(store=store, step_factory=lambda cls: cls(Ledger()))
            report = await recover(store, [saga], older_than=0)
            return report.skipped

    async def claimed_by_a_worker() -> list[str]:
        async with SQLiteSagaStore(db, park_after=PARK_AFTER) as store:
            leases = await store.claim(owner="worker", lease_seconds=60, older_than=0, limit=10)
            for lease in leases:
                await store.release(lease)
            return [lease.saga_id for lease in leases]

    async def corrupt() -> None:
        async with SQLiteSagaStore(db) as store:
            # Its one step completed twice: a history no resume can read.
            await store.create("unreadable", "_PoisonSaga", _PoisonSaga.definition.fingerprint,
                               {"order_id": "u"}, [
                                   _act(0, "A", StepStatus.STARTED),
                                   _act(0, "A", StepStatus.COMPLETED),
                                   _act(0, "A", StepStatus.COMPLETED),
                               ])

    asyncio.run(corrupt())
    for _ in range(PARK_AFTER + 2):
        ((saga_id, reason),) = asyncio.run(one_pass())
        assert saga_id == "unreadable"
        assert reason.startswith("CorruptSagaRecord: ")
        assert "completed twice" in reason
        assert _column(db, "unreadable") == 0  # deferred: never counted as a dead process
        assert _column(db, "unreadable", "lease_owner") is None
        assert asyncio.run(claimed_by_a_worker()) == []  # out of claims for a lease's length
        _lease_ran_out(db, "unreadable")
    assert main(["list", "--db", str(db), "--park-after", str(PARK_AFTER)]) == 0
    assert "parked" not in capsys.readouterr().out


# --------------------------------------------------------------------------- stores


StoreMaker = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite-thread", "sqlite-inline", "sqlite-process", "postgres"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """Opens a store of the kind asked for, on one database, with the options given."""
    if request.param.startswith("sqlite"):
        writer = request.param.split("-")[1]

        def sqlite_store(**options: Any) -> AbstractAsyncContextManager[Any]:
            return SQLiteSagaStore(tmp_path / "sagas.db", writer=writer, **options)

        yield sqlite_store
        return
    from conftest_pg import require_driver

    require_driver()
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")

    def pg_store(**options: Any) -> AbstractAsyncContextManager[Any]:
        return PostgresSagaStore(conninfo, schema=schema, min_size=1, **options)

    yield pg_store


async def _create(store: Any, *saga_ids: str) -> None:
    for saga_id in saga_ids:
        await store.create(saga_id, "OrderSaga", "fp", {}, [_act(0, "A", StepStatus.STARTED)])


async def _claimed(store: Any, *, given_back: tuple[str, ...] = (), **options: Any) -> list[str]:
    """The sagas a claim takes; those in ``given_back`` are released (their
    process ended in order), the others kept, as a process that died keeps
    them (a negative lease: run out at once, as a dead worker's lease runs out)."""
    leases = await store.claim(owner="w", lease_seconds=-1, older_than=0, limit=10, **options)
    for lease in leases:
        if lease.saga_id in given_back:
            await store.release(lease)
    return sorted(lease.saga_id for lease in leases)


async def test_S10_claims_stop_at_park_after_unreleased_claims_and_claim_saga_still_leases(
    durable: StoreMaker,
) -> None:
    async with durable(park_after=PARK_AFTER) as store:
        await _create(store, "dies", "lives")
        lives = ("lives",)  # its process gives its lease back in order, every time
        for _ in range(PARK_AFTER):
            assert await _claimed(store, given_back=lives) == ["dies", "lives"]
        # "dies" was never given back: parked, for workers and recover passes.
        assert await _claimed(store, given_back=lives) == ["lives"]
        assert await _claimed(store, given_back=lives, deferred=True) == ["lives"]
        # An operator's claim by id leases it all the same, and its release
        # (an orderly end) clears the count: claims take it again.
        lease = await store.claim_saga("dies", owner="operator", lease_seconds=60)
        assert await _claimed(store, given_back=lives) == ["lives"]
        await store.release(lease)
        assert await _claimed(store, given_back=lives) == ["dies", "lives"]


@pytest.mark.parametrize("give_back", ["release", "defer"])
async def test_S10_a_lease_given_back_in_order_clears_the_count_of_claims(
    durable: StoreMaker, give_back: str
) -> None:
    """One-off crashes (a deploy's kill -9) do not add up to a parked saga:
    the next run that ends in order starts the count again."""
    await _given_back_clears_the_count(durable, give_back)


# hand_off is PostgreSQL's alone (SQLite has none): only that store is asked.
@pytest.mark.parametrize("durable", ["postgres"], indirect=True)
async def test_S10_a_lease_handed_off_clears_the_count_of_claims(durable: StoreMaker) -> None:
    """A saga handed off (its worker stopping: another takes it at once) ended
    its run in order: its count starts again."""
    await _given_back_clears_the_count(durable, "hand_off")


async def _given_back_clears_the_count(durable: StoreMaker, give_back: str) -> None:
    async with durable(park_after=PARK_AFTER) as store:
        await _create(store, "crashy")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == ["crashy"]  # held by a process that died
        (lease,) = await store.claim(owner="w", lease_seconds=-1, older_than=0, limit=10)
        if give_back == "defer":
            await store.defer(lease, -1)  # out of claims for no time at all
        else:
            await getattr(store, give_back)(lease)
        for _ in range(PARK_AFTER):
            assert await _claimed(store) == ["crashy"]
        assert await _claimed(store) == []



async def test_S10_a_finished_saga_reopened_by_id_counts_its_claims_afresh(
    durable: StoreMaker,
) -> None:
    """A saga ended FAILED by the last claim ``park_after`` allows, whose
    lease was never given back (its process died after the journal said
    FAILED, or the store refused the give-back): the count stayed at
    ``park_after``. An operator's ``retry_unwinding`` reopens it (a lease by
    id, uncounted) and its process dies: the saga is COMPENSATING again,
    and was parked at once — "claimed N times without finishing" — for one
    crash, its runs having finished before. A lease by id of a finished
    saga clears the count: the next claim is the first."""
    async with durable(park_after=PARK_AFTER) as store:
        await _create(store, "p-1")
        for _ in range(PARK_AFTER):
            assert await _claimed(store) == ["p-1"]  # the last one ends it FAILED
        await store.append("p-1", [], status=SagaStatus.FAILED)
        assert (await store.lease_state("p-1")).unreleased_claims == PARK_AFTER
        reopened = await store.claim_saga("p-1", owner="operator", lease_seconds=-1)
        await store.append("p-1", [], status=SagaStatus.COMPENSATING, fence=reopened)
        # ... and the retry's process died: its lease runs out, not given back.
        assert await _claimed(store) == ["p-1"]
        assert (await store.lease_state("p-1")).unreleased_claims == 1

async def test_S10_a_stale_lease_given_back_does_not_clear_the_count(
    durable: StoreMaker,
) -> None:
    """The reset is fenced: a worker whose lease was taken over releasing late
    clears nothing of the new holder's count."""
    async with durable(park_after=PARK_AFTER) as store:
        await _create(store, "crashy")
        (stale,) = await store.claim(owner="w", lease_seconds=-1, older_than=0, limit=10)
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == ["crashy"]
        await store.release(stale)
        assert await _claimed(store) == []


class D(_Step):
    name = "D"


async def test_S10_a_resume_refused_for_its_saga_or_its_steps_leaves_a_parked_saga_parked(
    durable: StoreMaker,
) -> None:
    """``Saga.resume(saga_id)`` is the operator's way out of parking. Called
    with another saga than the one journaled, or with code whose steps
    differ, it is refused — and it was refused only once it had leased the
    saga, whose lease given back then cleared the count: workers took the
    parked saga again, to die of it ``park_after`` more times. It is refused
    before the claim now, as ``resume ID`` and ``retry_unwinding`` refuse."""
    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        for _ in range(PARK_AFTER):
            assert await _claimed(store) == [saga_id]  # each process died of it
        assert await _claimed(store) == []
        changed = types.new_class("OrderSaga", (Saga[Ctx],), {},
                                  lambda namespace: namespace.update(steps=[D, B, C]))
        with pytest.raises(ValueError, match="not a _PoisonSaga"):
            await _PoisonSaga(store=store, step_factory=lambda cls: cls(ledger)).resume(saga_id)
        with pytest.raises(SagaDefinitionChanged):
            await changed(store=store, step_factory=lambda cls: cls(ledger)).resume(saga_id)
        assert ledger.calls == []
        assert (await store.lease_state(saga_id)).unreleased_claims == PARK_AFTER
        assert await _claimed(store) == []  # still parked


async def test_S10_a_recover_pass_that_skips_a_saga_neither_counts_nor_clears_its_claims(
    durable: StoreMaker,
) -> None:
    """A ``recover`` pass claims every saga and skips those it was not given
    (another service's, on a shared store). Its lease given back cleared
    the skipped saga's count: a saga that kills every worker of its own
    service was never parked while another service's passes ran (a cron).
    Nor does the pass's claim count one more: it ran nothing."""
    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == [saga_id]  # each process died of it
        other_service = _PoisonSaga(store=store, step_factory=lambda cls: cls(ledger))
        for _ in range(PARK_AFTER):
            report = await recover(store, [other_service], older_than=0)
            assert [skipped for skipped, _ in report.skipped] == [saga_id]
        assert ledger.calls == []
        assert (await store.lease_state(saga_id)).unreleased_claims == PARK_AFTER - 1
        assert await _claimed(store) == [saga_id]  # its last claim: it dies of it too
        assert await _claimed(store) == []  # parked


def _last_claim_errors(caplog: pytest.LogCaptureFixture, saga_id: str) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.ERROR and saga_id in record.getMessage()
            and "claimed for the" in record.getMessage()]


async def test_S10_a_recover_pass_that_runs_nothing_of_a_saga_never_warns_of_its_last_claim(
    durable: StoreMaker, caplog: pytest.LogCaptureFixture
) -> None:
    """The ERROR that a saga's next crash parks it was logged by the store's
    ``claim``, before anyone knew whether the claimer would run the saga: a
    ``recover`` pass of another service (not given its name) claimed it at
    ``park_after``, gave it back unrun (uncounted) — and the operator was
    told of a last claim that counted for nothing and ran nothing. The pass
    that runs it still says so, once."""
    ledger = Ledger()
    caplog.set_level(logging.ERROR, logger="fallback_saga")
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == [saga_id]  # each process died of it
        other_service = _PoisonSaga(store=store, step_factory=lambda cls: cls(ledger))
        for _ in range(2):
            report = await recover(store, [other_service], older_than=0)
            assert [skipped for skipped, _ in report.skipped] == [saga_id]
        assert _last_claim_errors(caplog, saga_id) == []
        assert ledger.calls == []
        report = await recover(store, [order_saga(store, ledger)], older_than=0)
        assert report.resumed == [saga_id]
        (said,) = _last_claim_errors(caplog, saga_id)
        assert f"claimed for the {PARK_AFTER}rd time" in said


@pytest.mark.parametrize("give_back", ["release", "defer"])
async def test_S10_a_claim_given_back_unrun_is_taken_back_from_the_count(
    durable: StoreMaker, give_back: str
) -> None:
    await _given_back_unrun(durable, give_back)


@pytest.mark.parametrize("durable", ["postgres"], indirect=True)
async def test_S10_a_claim_handed_off_unrun_is_taken_back_from_the_count(
    durable: StoreMaker,
) -> None:
    await _given_back_unrun(durable, "hand_off")


async def _given_back_unrun(durable: StoreMaker, give_back: str) -> None:
    """``ran=False``: the holder ran nothing of the saga. The count stays as
    the claims before this one left it — not cleared, not one more — and
    only while the lease is still the saga's (fenced, as a release is)."""
    async with durable(park_after=PARK_AFTER) as store:
        await _create(store, "crashy")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == ["crashy"]  # held by a process that died
        for _ in range(PARK_AFTER):
            (lease,) = await store.claim(owner="w", lease_seconds=-1, older_than=0, limit=10)
            extra = (-1,) if give_back == "defer" else ()
            await getattr(store, give_back)(lease, *extra, ran=False)
            await getattr(store, give_back)(lease, *extra, ran=False)  # late, again: no effect
            assert (await store.lease_state("crashy")).unreleased_claims == PARK_AFTER - 1
        assert await _claimed(store) == ["crashy"]
        assert await _claimed(store) == []  # parked


async def test_S10_park_after_none_never_parks(durable: StoreMaker) -> None:
    async with durable(park_after=None) as store:
        await _create(store, "crashy")
        for _ in range(PARK_AFTER + 2):
            assert await _claimed(store) == ["crashy"]


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "5", 2**63, 2**64])
def test_S10_park_after_must_be_a_positive_int_or_none(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="park_after"):
        SQLiteSagaStore(tmp_path / "x.db", park_after=bad)


async def test_S10_the_largest_park_after_a_store_takes_is_claimed_with(tmp_path: Path) -> None:
    """2**63 - 1 (``sys.maxsize``, a "never" some write) is taken and claims;
    one more was taken too, then failed every claim: SQLite cannot bind it."""
    store = SQLiteSagaStore(tmp_path / "x.db", park_after=2**63 - 1)
    try:
        await _create(store, "crashy")
        assert await _claimed(store) == ["crashy"]
    finally:
        await store.close()


# --------------------------------------------------------------------------- migration


async def test_S13_an_old_sqlite_file_migrates_keeping_its_rows_and_counts_claims(
    tmp_path: Path,
) -> None:
    """A file 0.8.0 wrote (schema v3) gains the count, 0 for every saga, and
    keeps every row; its interrupted sagas then park like any other."""
    db = tmp_path / "sagas.db"
    shutil.copyfile(DATA / "journal-0.8.0.db", db)
    conn = sqlite3.connect(db)
    try:
        before = conn.execute("SELECT saga_id, status, fence FROM sagas ORDER BY saga_id"
                              ).fetchall()
        steps = conn.execute("SELECT count(*) FROM saga_steps").fetchone()
        assert "unreleased_claims" not in [r[1] for r in conn.execute("PRAGMA table_info(sagas)")]
    finally:
        conn.close()
    async with SQLiteSagaStore(db, park_after=2) as store:
        await store.open()
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone() == (
                _sqlite_schema.SCHEMA_VERSION,)
            assert conn.execute("SELECT saga_id, status, fence FROM sagas ORDER BY saga_id"
                                ).fetchall() == before
            assert conn.execute("SELECT count(*) FROM saga_steps").fetchone() == steps
            assert conn.execute("SELECT DISTINCT unreleased_claims FROM sagas").fetchall() == [
                (0,)]
        finally:
            conn.close()
        interrupted = sorted(saga_id for saga_id, status, _ in before
                             if status in ("running", "compensating"))
        assert interrupted
        assert await _claimed(store) == interrupted
        assert await _claimed(store) == interrupted
        assert await _claimed(store) == []


async def test_S13_an_old_postgres_schema_migrates_keeping_its_rows_and_counts_claims(
    pg_conninfo: str, pg_schema: str,
) -> None:
    """A schema at the version before (v5: no count) gains it, 0 for every
    saga, keeping every row."""
    from conftest_pg import require_driver

    require_driver()
    import psycopg

    from fallback_saga.store.postgres import SCHEMA_VERSION, PostgresSagaStore

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) as store:
        await _create(store, "a", "b", "c")
        await store.append("c", [], status=SagaStatus.COMPLETED)
    # The schema as v5 left it: neither the count (v6) nor the claim marker (v7)...
    with psycopg.connect(pg_conninfo, autocommit=True) as raw:
        raw.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
        raw.execute("ALTER TABLE fallback_saga_sagas DROP COLUMN unreleased_claims")
        raw.execute("ALTER TABLE fallback_saga_sagas DROP COLUMN claim_marker")
        raw.execute("DROP INDEX fallback_saga_sagas_by_status")  # nor the listing indexes (v8)
        raw.execute("DROP INDEX fallback_saga_sagas_by_name_status")
        raw.execute("DROP INDEX fallback_saga_sagas_by_created")  # nor by creation time (v9)
        raw.execute("UPDATE fallback_saga_schema SET version = 5")
        before = raw.execute("SELECT saga_id, status, fence FROM fallback_saga_sagas"
                             " ORDER BY saga_id").fetchall()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1,
                                 park_after=2) as store:
        await store.open()
        with psycopg.connect(pg_conninfo, autocommit=True) as raw:
            raw.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
            assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
                SCHEMA_VERSION,)
            assert raw.execute("SELECT saga_id, status, fence FROM fallback_saga_sagas"
                               " ORDER BY saga_id").fetchall() == before
            assert raw.execute("SELECT DISTINCT unreleased_claims FROM fallback_saga_sagas"
                               ).fetchall() == [(0,)]
        assert await _claimed(store) == ["a", "b"]
        assert await _claimed(store) == ["a", "b"]
        assert await _claimed(store) == []


# --------------------------------------------------------------------------- operators


async def _parked_store(path: Path) -> None:
    """A file with one saga parked (claimed by the default park_after, 5,
    processes that all died) and one claimed as often but given back."""
    async with SQLiteSagaStore(path) as store:
        await _create(store, "p-parked", "p-fine")
        for _ in range(5):
            assert await _claimed(store, given_back=("p-fine",)) == ["p-fine", "p-parked"]
        assert await _claimed(store, given_back=("p-fine",)) == ["p-fine"]


def test_S10_list_and_show_say_a_saga_is_parked_and_how_to_resume_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fallback_saga.cli import main

    db = tmp_path / "sagas.db"
    asyncio.run(_parked_store(db))
    assert main(["list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("p-")}
    assert "running (parked)" in rows["p-parked"]
    assert "parked" not in rows["p-fine"]
    assert ("p-parked: parked: claimed 5 times without finishing (its resumes keep ending "
            "the process or hanging); once the cause is fixed, resume it by id: python -m "
            "fallback_saga resume p-parked --app module:attr") in out
    assert main(["show", "p-parked", "--db", str(db)]) == 0
    assert ("recovery     parked: claimed 5 times without finishing (its resumes keep "
            "ending the process or hanging); once the cause is fixed, resume it by id: python -m "
            "fallback_saga resume p-parked --app module:attr"
            ) in capsys.readouterr().out.splitlines()
    assert main(["show", "p-fine", "--db", str(db)]) == 0
    assert "parked" not in capsys.readouterr().out


async def test_S10_the_console_says_a_saga_is_parked(tmp_path: Path) -> None:
    from helpers_console import fetch

    from fallback_saga.console import ConsoleServer

    db = tmp_path / "sagas.db"
    await _parked_store(db)
    async with SQLiteSagaStore(db) as store, ConsoleServer(store, port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        listing = (await fetch(base + "/")).text
        page = (await fetch(base + "/sagas/p-parked")).text
        fine = (await fetch(base + "/sagas/p-fine")).text
    said = ("parked: claimed 5 times without finishing (its resumes keep ending the "
            "process or hanging); once the cause is fixed, resume it by id: python -m "
            "fallback_saga resume p-parked --app module:attr")
    assert listing.count(said) == 1
    assert said in page
    assert said not in fine


def test_S10_recover_says_which_sagas_it_left_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """"recovered 0" beside a RUNNING saga is never a puzzle: the pass names
    the parked saga it did not take, and how to resume it."""
    from helpers_cli import import_app

    from fallback_saga.cli import main

    db = tmp_path / "sagas.db"
    asyncio.run(_parked_store(db))
    source = (
        "from fallback_saga import Saga, SagaContext, SagaStepHandler\n"
        "class A(SagaStepHandler):\n"
        "    async def act(self, ctx):\n        return None\n"
        "    async def compensate(self, ctx):\n        return None\n"
        "class OrderSaga(Saga[SagaContext]):\n    steps = [A]\n"
    )
    for app in import_app(tmp_path, monkeypatch, source, "parking_app"):
        # 1: a parked saga needs an operator, as a FAILED one does (a cron's
        # `recover ... || alert` fires); it exited 0.
        assert main(["recover", "--db", str(db), "--app", f"{app.__name__}:OrderSaga",
                     "--older-than", "0"]) == 1
    out = capsys.readouterr().out
    assert ("  parked  p-parked (running): not taken; parked: claimed 5 times without "
            "finishing (its resumes keep ending the process or hanging); once the cause is "
            "fixed, resume it by id: python -m fallback_saga resume p-parked "
            "--app module:attr") in out
    assert not [line for line in out.splitlines() if line.startswith("  parked  p-fine")]


async def _claimed_three_times(path: Path) -> None:
    """A saga claimed 3 times by processes that all died (parked for an app
    whose stores have ``park_after=3``; not for the default, 5)."""
    async with SQLiteSagaStore(path) as store:
        await _create(store, "p three")
        for _ in range(3):
            assert await _claimed(store) == ["p three"]


def test_S10_list_show_and_recover_judge_parked_by_the_apps_park_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's store parks by ``--park-after`` (the app's stores' option):
    with it, list and show say the saga is parked (naming the command that
    resumes it, the id shell-quoted) and recover leaves it, as the app's
    workers do; without it, the default 5 judges it, and 'never' never."""
    from helpers_cli import import_app

    from fallback_saga.cli import main
    from fallback_saga.cli.stores import open_store, store_target

    db = tmp_path / "sagas.db"
    asyncio.run(_claimed_three_times(db))
    said = ("parked: claimed 3 times without finishing (its resumes keep ending the "
            "process or hanging); once the cause is fixed, resume it by id: python -m "
            "fallback_saga resume 'p three' --app module:attr")
    assert main(["list", "--db", str(db), "--park-after", "3"]) == 0
    out = capsys.readouterr().out
    assert "running (parked)" in out
    assert f"p three: {said}" in out
    assert main(["show", "p three", "--db", str(db), "--park-after", "3"]) == 0
    assert f"recovery     {said}" in capsys.readouterr().out.splitlines()
    for default in ([], ["--park-after", "never"]):
        assert main(["list", "--db", str(db), *default]) == 0
        assert "parked" not in capsys.readouterr().out
        assert main(["show", "p three", "--db", str(db), *default]) == 0
        assert "parked" not in capsys.readouterr().out
    assert main(["list", "--db", str(db), "--park-after", "0"]) == 2
    assert "'never'" in capsys.readouterr().err

    async def serve_store_parks_after(*argv: str) -> Any:
        from fallback_saga.cli import build_parser

        args = build_parser().parse_args(["serve", "--db", str(db), *argv])
        async with open_store(store_target(args), read_only=True) as store:
            return store.park_after

    assert asyncio.run(serve_store_parks_after("--park-after", "3")) == 3
    assert asyncio.run(serve_store_parks_after()) == 5

    source = (
        "from fallback_saga import Saga, SagaContext, SagaStepHandler\n"
        "class A(SagaStepHandler):\n"
        "    async def act(self, ctx):\n        return None\n"
        "    async def compensate(self, ctx):\n        return None\n"
        "class OrderSaga(Saga[SagaContext]):\n    steps = [A]\n"
    )
    for app in import_app(tmp_path, monkeypatch, source, "park_after_app"):
        recover = ["recover", "--db", str(db), "--app", f"{app.__name__}:OrderSaga",
                   "--older-than", "0"]
        assert main([*recover, "--park-after", "3"]) == 1  # left parked
        out = capsys.readouterr().out
        assert "recovered 0 saga(s)" in out
        assert f"  parked  p three (running): not taken; {said}" in out
        assert _column(db, "p three") == 3
        assert _column(db, "p three", "status") == "running"
        # By the default, 5, it is not parked: taken (its journal was written
        # with a stand-in fingerprint, hence the flag).
        assert main([*recover, "--allow-changed-definition"]) == 0
        assert "  p three: completed" in capsys.readouterr().out


async def test_S10_the_console_names_the_command_that_resumes_a_parked_saga(
    tmp_path: Path,
) -> None:
    """The console's listing and saga page name ``resume`` with the id
    shell-quoted, as its retry-unwinding hint does."""
    from helpers_console import fetch

    from fallback_saga.console import ConsoleServer

    db = tmp_path / "sagas.db"
    await _claimed_three_times(db)
    async with SQLiteSagaStore(db, park_after=3) as store, ConsoleServer(store, port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        listing = (await fetch(base + "/")).text
        page = (await fetch(base + "/sagas/p%20three")).text
    command = "python -m fallback_saga resume &#x27;p three&#x27; --app module:attr"
    assert command in listing
    assert command in page


# --------------------------------------------------------------------------- operators' views


@pytest.fixture(params=["sqlite", "postgres"])
async def operated(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StoreMaker, list[str]]]:
    """A store maker and the command line's options for the same store."""
    if request.param == "sqlite":
        path = tmp_path / "sagas.db"
        yield (lambda **options: SQLiteSagaStore(path, **options)), ["--db", str(path)]
        return
    from conftest_pg import require_driver

    require_driver()
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    yield ((lambda **options: PostgresSagaStore(conninfo, schema=schema, min_size=1, **options)),
           ["--dsn", conninfo, "--schema", schema])


async def _command(*argv: str) -> tuple[int, str]:
    """``python -m fallback_saga ARGV`` in a thread (it runs its own loop)."""
    import contextlib
    import io

    from fallback_saga.cli import main

    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(list(argv))

    return await asyncio.to_thread(run), out.getvalue()


async def test_S10_the_last_allowed_resume_is_shown_running_until_it_is_over(
    operated: tuple[StoreMaker, list[str]],
) -> None:
    """The claim that reaches ``park_after`` is the last allowed, not a
    parking: while its resume holds the lease it runs, and may finish and
    clear the count. ``list`` (table and ``--json``) and the console (page
    and ``/api/sagas``) said "parked" all the while; they say so only once
    that lease is over without being given back, and ``/api/sagas`` says
    ``parked`` as ``list --json`` does."""
    from helpers_console import fetch

    from fallback_saga.console import ConsoleServer

    maker, options = operated
    async with maker(park_after=PARK_AFTER) as store:
        await _create(store, "p-over", "p-last")
        for _ in range(PARK_AFTER - 1):  # processes that died of both
            assert await _claimed(store) == ["p-last", "p-over"]
        assert await _claimed(store, given_back=("p-last",)) == ["p-last", "p-over"]
        assert await _claimed(store) == ["p-last"]  # "p-over" is parked
        for _ in range(PARK_AFTER - 2):
            assert await _claimed(store) == ["p-last"]
        # The last allowed claim of "p-last": its resume runs, lease held.
        (last,) = await store.claim(owner="w-last", lease_seconds=3600, older_than=0, limit=10)
        assert (await store.lease_state("p-last")).unreleased_claims == PARK_AFTER

        status, out = await _command("list", *options, "--park-after", str(PARK_AFTER))
        assert status == 0
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("p-")}
        assert "running (parked)" in rows["p-over"]
        assert "parked" not in rows["p-last"]
        assert "w-last" in rows["p-last"]
        assert "p-last: parked" not in out
        status, out = await _command("list", *options, "--park-after", str(PARK_AFTER),
                                     "--json")
        listed = {row["saga_id"]: row for row in json.loads(out)}
        assert (listed["p-over"]["parked"], listed["p-last"]["parked"]) == (True, False)
        assert listed["p-last"]["unreleased_claims"] == PARK_AFTER
        status, out = await _command("show", "p-last", *options, "--park-after",
                                     str(PARK_AFTER))
        assert (status, "parked" in out) == (0, False)

        async with ConsoleServer(store, port=0) as server:
            base = f"http://127.0.0.1:{server.port}"
            api = (await fetch(base + "/api/sagas")).json()["sagas"]
            page = (await fetch(base + "/sagas/p-last")).text
            listing = (await fetch(base + "/")).text
        shown = {row["saga_id"]: (row["parked"], row["unreleased_claims"]) for row in api}
        assert shown == {"p-over": (True, PARK_AFTER), "p-last": (False, PARK_AFTER)}
        assert "parked:" not in page
        assert listing.count("parked: claimed") == 1  # "p-over" only

        await store.renew(last, -1)  # that resume is over, its lease not given back
        status, out = await _command("list", *options, "--park-after", str(PARK_AFTER),
                                     "--json")
        assert {row["saga_id"]: row["parked"] for row in json.loads(out)} == {
            "p-over": True, "p-last": True}


# --------------------------------------------------------------------------- store outages


class _GiveBackOutage:
    """Fault injection: while ``down``, the store refuses to give leases
    back (``release``, ``defer``, ``hand_off``; and the methods named in
    ``also``), as a store briefly out of reach does; ``refused`` counts the
    refusals."""

    def __init__(
        self, store: Any, also: tuple[str, ...] = (), error: Exception | None = None
    ) -> None:
        self.down = True
        self.refused = 0
        self.error = error
        for name in ("release", "defer", "hand_off", *also):
            method = getattr(store, name, None)
            if method is not None:
                setattr(store, name, self._refusing(method))

    def _refusing(self, method: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        from fallback_saga import SagaStoreError

        @functools.wraps(method)  # its signature too: ``ran`` is read from it
        async def refusing(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise self.error or SagaStoreError("the store is out of reach (injected)")
            return await method(*args, **kwargs)

        return refusing


async def test_S10_a_lease_a_live_worker_could_not_give_back_is_not_counted_as_a_crash(
    durable: StoreMaker,
) -> None:
    """A worker that ran a saga to its end, but whose release met the store
    out of reach for a moment, left its lease to run out — counted as a
    crash's (store._parking), the count never cleared. The worker is alive:
    it gives the lease back before its next claim once the store answers,
    which clears the count as any orderly end does."""
    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == [saga_id]  # each process died of it
        outage = _GiveBackOutage(store)
        worker = RecoveryWorker(store, [order_saga(store, ledger)], concurrency=1, lease=600,
                                poll=3600, older_than=0, owner="worker")
        running = asyncio.get_running_loop().create_task(worker.run())
        await eventually(lambda: worker.stats.completed == 1 and worker.in_flight == 0,
                         what="the saga resumed to its end")
        assert outage.refused >= 1  # its release (tried again while down: refused too)
        state = await store.lease_state(saga_id)
        assert (state.owner, state.unreleased_claims) == ("worker", PARK_AFTER)
        outage.down = False  # the store is back; the worker's next claim comes
        worker.wake()

        async def given_back() -> bool:
            return (await store.lease_state(saga_id)).owner is None

        await eventually(given_back, what="the lease given back")
        await worker.stop()
        await running
        assert (await store.lease_state(saga_id)).unreleased_claims == 0
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED



async def test_S10_a_worker_keeps_a_bounded_number_of_refused_give_backs_and_says_which_it_drops(
    durable: StoreMaker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that takes claims but refuses every give-back, for as long as
    a worker runs, made the worker keep one give-back per saga it resumed,
    without end. It keeps ``REMEMBERED_SAGAS`` (2 here) at most; the one
    refused longest ago is dropped with a warning that names the saga and
    says what it costs (its lease runs out and counts as a claim). The
    give-backs it kept are made once the store takes them."""
    import fallback_saga.remembered as remembered

    monkeypatch.setattr(remembered, "REMEMBERED_SAGAS", 2)
    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        saga_ids = await seed(store, 3, "p")
        outage = _GiveBackOutage(store)
        worker = RecoveryWorker(store, [order_saga(store, ledger)], concurrency=1, lease=600,
                                poll=3600, older_than=0, owner="worker")
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            running = asyncio.get_running_loop().create_task(worker.run())
            await eventually(lambda: worker.stats.completed == 3 and worker.in_flight == 0,
                             what="the sagas resumed to their end")
        dropped = [record.args[2] for record in caplog.records  # type: ignore[index]
                   if "no longer trying to give back" in record.getMessage()]
        assert len(dropped) == 1
        assert dropped[0] in saga_ids
        assert "counts as a claim toward the store's park_after" in caplog.text
        outage.down = False  # the store is back; the worker's next claim comes
        worker.wake()

        async def kept_given_back() -> bool:
            states = [await store.lease_state(saga_id) for saga_id in saga_ids]
            return [state.owner for state in states].count(None) == 2

        await eventually(kept_given_back, what="the give-backs kept made")
        await worker.stop()
        await running
        for saga_id in saga_ids:
            state = await store.lease_state(saga_id)
            if saga_id == dropped[0]:  # left to run out: counted
                assert (state.owner, state.unreleased_claims) == ("worker", 1)
            else:
                assert (state.owner, state.unreleased_claims) == (None, 0)


async def test_S10_a_worker_remembers_a_bounded_number_of_interrupted_sagas(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Each saga a worker interrupted (its journal refused) is remembered for
    its backoff until its next resume here — for ever when another worker
    resumed it. At most ``REMEMBERED_SAGAS`` (2 here): the one remembered
    longest ago is forgotten (its next backoff starts again from ``poll``),
    and a saga interrupted again counts as remembered now."""
    import fallback_saga.remembered as remembered

    monkeypatch.setattr(remembered, "REMEMBERED_SAGAS", 2)
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], older_than=0)
        for saga_id in ("a", "b", "a", "c"):
            worker._backoff.interrupted(saga_id)
        assert worker._backoff.interruptions == {"a": 2, "c": 1}

async def test_S10_a_give_back_refused_for_good_is_not_tried_again(
    durable: StoreMaker,
) -> None:
    """A give-back the store refuses because the lease is not the holder's
    any more (``LeaseLost``: another worker took the saga) or the saga is
    gone (``SagaNotFound``) can never succeed: tried again before every
    claim, it was a store call per saga per poll for as long as the worker
    ran, and an entry kept for ever."""
    from fallback_saga import LeaseLost

    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        outage = _GiveBackOutage(store, error=LeaseLost(saga_id, 1))
        claims = 0
        claim = store.claim

        async def counted_claim(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await claim(*args, **kwargs)

        store.claim = counted_claim
        worker = RecoveryWorker(store, [order_saga(store, ledger)], concurrency=1, lease=600,
                                poll=3600, older_than=0, owner="worker")
        running = asyncio.get_running_loop().create_task(worker.run())
        await eventually(lambda: worker.stats.completed == 1 and worker.in_flight == 0,
                         what="the saga resumed to its end")
        assert outage.refused == 1
        for passes in (claims + 1, claims + 2):
            worker.wake()
            await eventually(lambda passes=passes: claims >= passes, what="another claim")
        await worker.stop()
        await running
        assert outage.refused == 1


async def test_S10_a_recover_pass_gives_back_at_its_end_a_lease_the_store_refused(
    durable: StoreMaker,
) -> None:
    """The same for a ``recover`` pass: a give-back the store refused is
    tried once more when the pass ends, rather than left to run out, counted."""
    ledger = Ledger()
    async with durable(park_after=PARK_AFTER) as store:
        (saga_id,) = await seed(store, 1, "p")
        for _ in range(PARK_AFTER - 1):
            assert await _claimed(store) == [saga_id]  # each process died of it
        outage = _GiveBackOutage(store)
        other_service = _PoisonSaga(store=store, step_factory=lambda cls: cls(ledger))

        def back_after_the_first_refusal(saga_id: str, outcome: str) -> None:
            outage.down = False

        report = await recover(store, [other_service], older_than=0,
                               progress=back_after_the_first_refusal)
        assert [skipped for skipped, _ in report.skipped] == [saga_id]
        assert outage.refused == 1
        state = await store.lease_state(saga_id)
        assert (state.owner, state.unreleased_claims) == (None, PARK_AFTER - 1)
        assert await _claimed(store) == [saga_id]  # the last claim allowed
        assert await _claimed(store) == []  # parked
