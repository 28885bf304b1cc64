"""``RecoveryWorker``: the lease give-backs it tries again while the store is out (S10, S13).

A worker remembers every give-back of a lease (release, defer, hand-off) the
store refused, up to ``REMEMBERED_SAGAS``, and tries them again before each
claim and as it stops; on a store without ``defer`` it also keeps leases
through a backoff, given back when due or as it stops. A store that is out
need not refuse at once: a PostgreSQL server that does not answer takes
``connect_timeout`` per call, a SQLite file another process holds
``busy_timeout``, a store of one's own may never answer at all. Tried one
after another, each waited its full timeout: N remembered give-backs held
the claim loop for N timeouts before its next claim, and a stop for as long
— far past a service's grace period, or for ever.

These run on a loop whose clock jumps to its next timer (helpers_clock): a
store "timeout" of 30 s costs no real time, and the loop's clock says
exactly how long the worker waited. The SQLite store writes inline: no
thread answers behind the loop's back. Each test counts the store's calls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers_clock import run_virtual
from test_worker import Ledger, NoSuchSaga, _act, _StoreWithoutDefer, order_saga, seed

from fallback_saga import (
    Lease,
    RecoveryWorker,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
    recover,
)
from fallback_saga import worker as worker_module
from fallback_saga.shielding import CLAIM_GRACE

STOP_WAIT: float = worker_module.STOP_WAIT
SAGAS = 20  # remembered give-backs: each a store timeout, before the fix
HANGS = {
    "busy_timeout": 5.0,  # a SQLite file locked by another process: refused after 5 s
    "connect_timeout": 30.0,  # a PostgreSQL server that does not answer
    "never": None,  # a store of one's own with no timeout at all
}


class _GiveBacks:
    """Fault injection on a store's give-backs (``release``, ``defer``,
    ``hand_off``): while ``mode`` is ``"refuse"`` each is refused at once;
    ``"hang"``, refused after ``hang`` seconds, or never answered (``hang``
    None); ``"take"``, passed through — except for the sagas in ``refused``,
    refused at once. ``calls`` lists each call's saga id while not taken."""

    def __init__(self, store: Any, *, names: tuple[str, ...] = ("release", "defer", "hand_off")):
        self.mode = "refuse"
        self.hang: float | None = None
        self.refused: set[str] = set()
        self.calls: list[str] = []
        self.times: list[float] = []  # the loop's clock at each of ``calls``
        self.entered = asyncio.Event()  # set as a call begins to hang
        for name in names:
            method = getattr(store, name, None)
            if method is not None:
                setattr(store, name, self._faulty(method))

    def _faulty(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)  # its signature too: ``ran`` is read from it
        async def faulty(lease: Lease, *args: Any, **kwargs: Any) -> Any:
            if self.mode == "take" and lease.saga_id not in self.refused:
                return await method(lease, *args, **kwargs)
            self.calls.append(lease.saga_id)
            self.times.append(asyncio.get_running_loop().time())
            if self.mode == "hang":
                self.entered.set()
                if self.hang is None:
                    await asyncio.Event().wait()  # never answers
                await asyncio.sleep(self.hang)
            raise SagaStoreError("the store is out of reach (injected)")

        return faulty


class _Claims:
    """Counts a store's claims; ``times``: the loop's clock at each."""

    def __init__(self, store: Any) -> None:
        self.count = 0
        self.times: list[float] = []
        claim = store.claim

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            self.times.append(asyncio.get_running_loop().time())
            return await claim(*args, **kwargs)

        store.claim = counted


async def _until(condition: Callable[[], bool], *, within: float = 3600.0,
                 what: str = "condition", step: float = 0.01) -> None:
    """Until ``condition()``, failing after ``within`` seconds of the loop's
    (virtual) clock; asked every ``step`` seconds of it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(step)


def _virtually(tmp_path: Path, body: Callable[[SQLiteSagaStore],
                                               Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="inline") as store:
            await body(store)

    run_virtual(main)


async def _worker_remembering(store: SQLiteSagaStore, **options: Any) -> tuple[
        RecoveryWorker, asyncio.Task[None], _GiveBacks, _Claims, list[str]]:
    """A worker that resumed ``SAGAS`` sagas to their end while the store
    refused every give-back: it remembers ``SAGAS`` of them."""
    saga_ids = await seed(store, SAGAS)
    give_backs = _GiveBacks(store)
    claims = _Claims(store)
    worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=SAGAS,
                            lease=600, poll=3600, older_than=0, listen=False, **options)
    running = asyncio.get_running_loop().create_task(worker.run())
    await _until(lambda: worker.stats.completed == SAGAS and worker.in_flight == 0,
                 what="the sagas resumed to their end")
    await _until(lambda: len(worker._kept.not_given_back) == SAGAS,
                 what="the give-backs remembered")
    return worker, running, give_backs, claims, saga_ids


@pytest.mark.parametrize("outage", list(HANGS))
def test_S13_a_store_that_hangs_holds_no_claim_for_each_give_back_remembered(
    tmp_path: Path, outage: str
) -> None:
    """The store stops answering its give-backs (it takes its timeout, or
    never answers). Before the next claim the worker tried each of the
    ``SAGAS`` remembered ones in turn, each waiting the full timeout: the
    claim came ``SAGAS`` timeouts later, or never. The round now stops at
    the first one the store does not take (the store is out), and one that
    does not answer is cut short at ``STOP_WAIT``: the claim comes within
    one of them. The others are kept, and given back once the store is back."""

    async def body(store: SQLiteSagaStore) -> None:
        worker, running, give_backs, claims, saga_ids = await _worker_remembering(store)
        try:
            give_backs.mode, give_backs.hang = "hang", HANGS[outage]
            give_backs.calls.clear()
            loop = asyncio.get_running_loop()
            began, claimed = loop.time(), claims.count
            worker.wake()
            await _until(lambda: claims.count > claimed, within=STOP_WAIT * SAGAS * 10,
                         what="the next claim")
            assert len(give_backs.calls) == 1  # the store is out: the others wait
            hang = HANGS[outage]
            waited = STOP_WAIT if hang is None else min(hang, STOP_WAIT)
            assert claims.times[-1] - began == pytest.approx(waited)
            assert len(worker._kept.not_given_back) == SAGAS  # none dropped
            give_backs.mode = "take"  # the store is back
            worker.wake()
            await _until(lambda: not worker._kept.not_given_back, within=STOP_WAIT * 2,
                         what="the give-backs made")
            for saga_id in saga_ids:
                assert (await store.lease_state(saga_id)).owner is None
        finally:
            give_backs.mode = "take"
            await worker.stop()
            await running

    _virtually(tmp_path, body)


@pytest.mark.parametrize("outage", list(HANGS))
def test_S13_a_worker_stops_within_its_budget_while_the_store_hangs_on_give_backs(
    tmp_path: Path, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``stop()`` tried every remembered give-back once more, in turn, each
    waiting the store's full timeout: ``SAGAS`` timeouts past the grace
    period (a service's stop killed by its orchestrator), or for ever on a
    store with no timeout. Its give-backs now have ``STOP_WAIT`` in all, and
    the leases left are named in a warning (they run out, counted)."""

    async def body(store: SQLiteSagaStore) -> None:
        worker, running, give_backs, _, saga_ids = await _worker_remembering(store)
        give_backs.mode, give_backs.hang = "hang", HANGS[outage]
        give_backs.calls.clear()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            async with asyncio.timeout(STOP_WAIT * SAGAS * 10):
                await worker.stop(grace=0)
                await running
        assert len(give_backs.calls) == 1
        hang = HANGS[outage]
        waited = STOP_WAIT if hang is None else min(hang, STOP_WAIT)
        assert loop.time() - began == pytest.approx(waited)
        (said,) = [record.getMessage() for record in caplog.records
                   if "not given back" in record.getMessage()]
        assert f"{SAGAS} saga(s)" in said
        assert saga_ids[0] in said
        assert "run out on their own" in said

    _virtually(tmp_path, body)


def test_S13_a_store_without_defer_that_hangs_on_releases_holds_no_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for the leases a worker keeps through a backoff on a store
    without ``defer`` (sagas it skipped here): given back, in turn, as it
    stopped, each waited the store's timeout."""

    async def body(inner: SQLiteSagaStore) -> None:
        store = _StoreWithoutDefer(inner)
        skipped = [f"x{n:04d}" for n in range(SAGAS)]
        for saga_id in skipped:
            await inner.create(saga_id, "NoSuchSaga", NoSuchSaga.definition.fingerprint,
                               {"order_id": saga_id}, [_act(0, "A", StepStatus.STARTED)])
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=SAGAS,
                                lease=600, poll=3600, older_than=0, listen=False)
        running = asyncio.get_running_loop().create_task(worker.run())
        await _until(lambda: worker.stats.skipped == SAGAS and worker.in_flight == 0,
                     what="the sagas skipped")
        assert len(worker._kept.held) == SAGAS
        give_backs = _GiveBacks(store, names=("release",))
        give_backs.mode, give_backs.hang = "hang", 30.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            async with asyncio.timeout(STOP_WAIT * SAGAS * 10):
                await worker.stop(grace=0)
                await running
        assert len(give_backs.calls) == 1
        assert loop.time() - began == pytest.approx(STOP_WAIT)
        (said,) = [record.getMessage() for record in caplog.records
                   if "not given back" in record.getMessage()]
        assert f"{SAGAS} saga(s)" in said

    _virtually(tmp_path, body)


def test_S13_leases_kept_through_a_backoff_wait_a_poll_when_the_store_does_not_take_them(
    tmp_path: Path,
) -> None:
    """On a store without ``defer``, the leases a worker keeps through a
    backoff are given back before the first claim after they are due. The
    store hangs: the first is cut short at ``STOP_WAIT`` and the round stops
    (each of the others waited its timeout, before). The ones still due then
    wait a ``poll``, as a failed claim does: not tried again at once, round
    after round, while the store is out."""
    poll, lease = 100.0, 600.0

    async def body(inner: SQLiteSagaStore) -> None:
        store = _StoreWithoutDefer(inner)
        for n in range(SAGAS):
            await inner.create(f"x{n:04d}", "NoSuchSaga", NoSuchSaga.definition.fingerprint,
                               {"order_id": "x"}, [_act(0, "A", StepStatus.STARTED)])
        claims = _Claims(store)
        give_backs = _GiveBacks(store, names=("release",))
        give_backs.mode = "take"
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=SAGAS,
                                lease=lease, poll=poll, older_than=0, listen=False)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            await _until(lambda: worker.stats.skipped == SAGAS and worker.in_flight == 0,
                         what="the sagas skipped")
            due = min(due for _, due in worker._kept.held.values())
            give_backs.mode, give_backs.hang = "hang", 30.0
            await _until(lambda: len(give_backs.calls) >= 2, within=lease + 2 * poll,
                         what="two tries", step=1.0)
            first, second = give_backs.times[:2]
            assert first == pytest.approx(due)  # the first claim after it is due
            # One claim between: STOP_WAIT after the first try, then a poll.
            (claimed,) = [t for t in claims.times if first < t < second]
            assert claimed == pytest.approx(first + STOP_WAIT)
            assert second == pytest.approx(claimed + poll)
            # The one cut short is kept (to the back of the line): none
            # given back, none forgotten.
            await _until(lambda: len(worker._kept.held) == SAGAS, within=STOP_WAIT + 1,
                         what="the second try cut short, its lease kept")
            assert list(worker._kept.held)[-2:] == give_backs.calls[:2]
        finally:
            give_backs.mode = "take"
            await worker.stop()
            await running

    _virtually(tmp_path, body)


def test_S10_a_give_back_the_store_refuses_for_one_saga_holds_up_none_of_the_others(
    tmp_path: Path,
) -> None:
    """A round stops at the first give-back the store does not take — which
    must not be the same one for ever: a store that refuses one saga's
    give-back (its row, not an outage) would keep every other remembered
    one from the store. The one refused goes to the back of the line."""

    async def body(store: SQLiteSagaStore) -> None:
        worker, running, give_backs, claims, saga_ids = await _worker_remembering(store)
        try:
            first = next(iter(worker._kept.not_given_back))
            give_backs.mode, give_backs.refused = "take", {first}
            for _ in range(2):
                claimed = claims.count
                worker.wake()
                await _until(lambda claimed=claimed: claims.count > claimed,
                             what="the next claim")
            assert list(worker._kept.not_given_back) == [first]
            for saga_id in saga_ids:
                owner = (await store.lease_state(saga_id)).owner
                assert owner == (worker.owner if saga_id == first else None)
        finally:
            give_backs.refused = set()
            await worker.stop()
            await running

    _virtually(tmp_path, body)


def test_S8_a_worker_cancelled_while_its_stop_gives_leases_back_says_it_was_cancelled(
    tmp_path: Path,
) -> None:
    """The task running ``run()`` is cancelled while the stop's give-backs
    wait for a store that does not answer: the give-backs are cut short —
    and ``run()`` raised nothing: the cancellation was swallowed, and whoever
    cancelled the task (a TaskGroup, ``asyncio.run``'s end) took it for a
    clean end. It now raises ``CancelledError``."""

    async def body(store: SQLiteSagaStore) -> None:
        worker, running, give_backs, _, _ = await _worker_remembering(store)
        give_backs.mode, give_backs.hang = "hang", None
        stopping = asyncio.get_running_loop().create_task(worker.stop(grace=0))
        await give_backs.entered.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await stopping  # stop() returns once run() has finished
        assert len(worker._kept.not_given_back) == SAGAS  # not given back: kept, none dropped

    _virtually(tmp_path, body)


# --------------------------------------------------------------------------- a recover pass


def _seen_all(count: int, then: Callable[[], None]) -> Callable[[str, str], None]:
    """A ``progress`` callback that calls ``then`` once ``count`` sagas were reported."""
    seen: list[str] = []

    def progress(saga_id: str, outcome: str) -> None:
        seen.append(saga_id)
        if len(seen) == count:
            then()

    return progress


@pytest.mark.parametrize("outage", list(HANGS))
def test_S13_a_recover_pass_spends_STOP_WAIT_at_most_on_the_give_backs_it_tries_again(
    tmp_path: Path, outage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``recover`` pass (the command line's, from cron) tries once more at
    its end each give-back the store refused — one after another, each
    waiting the store's full timeout: ``limit`` timeouts for a pass met by
    an outage (100 by default), or for ever on a store with no timeout. Each
    resume's own give-back waited as long. Now each give-back has
    ``STOP_WAIT``, and the tries at the end ``STOP_WAIT`` in all; the leases
    left are named in the report and a warning (they run out, counted)."""

    async def body(store: SQLiteSagaStore) -> None:
        saga_ids = await seed(store, SAGAS)
        give_backs = _GiveBacks(store)
        give_backs.mode, give_backs.hang = "hang", HANGS[outage]
        loop = asyncio.get_running_loop()
        began = loop.time()
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            async with asyncio.timeout(STOP_WAIT * SAGAS * 10):
                report = await recover(store, [order_saga(store, Ledger())], older_than=0,
                                       limit=SAGAS, concurrency=SAGAS)
        # Each resume's give-back (at once, side by side), then the tries at the end.
        assert loop.time() - began <= 2 * STOP_WAIT + 1e-6
        assert sorted(report.resumed) == saga_ids
        assert sorted(report.not_given_back) == saga_ids
        shown = str(report)
        assert f"lease left {saga_ids[0]}:" in shown
        assert "park_after" in shown
        (said,) = [record.getMessage() for record in caplog.records
                   if "not given back" in record.getMessage()]
        assert f"{SAGAS} saga(s)" in said
        assert "run out on their own" in said
        for saga_id in saga_ids:  # left to run out
            assert (await store.lease_state(saga_id)).owner is not None

    _virtually(tmp_path, body)


def test_S10_a_recover_pass_tries_every_give_back_again_past_one_the_store_refuses(
    tmp_path: Path,
) -> None:
    """Nothing tries a pass's give-backs after it: unlike a worker's round,
    the tries at its end do not stop at the first one refused (its saga's
    row, say): every other one is tried, and given back; the one left is
    named in the report."""

    async def body(store: SQLiteSagaStore) -> None:
        saga_ids = await seed(store, SAGAS)
        give_backs = _GiveBacks(store)  # every resume's give-back refused

        def store_back() -> None:
            give_backs.mode, give_backs.refused = "take", {saga_ids[0]}

        report = await recover(store, [order_saga(store, Ledger())], older_than=0,
                               limit=SAGAS, concurrency=SAGAS,
                               progress=_seen_all(SAGAS, store_back))
        assert report.not_given_back == [saga_ids[0]]
        for saga_id in saga_ids:
            state = await store.lease_state(saga_id)
            assert (state.owner is None) == (saga_id != saga_ids[0])

    _virtually(tmp_path, body)


# --------------------------------------------------------------------------- a resume's give-back


def test_S13_a_resumes_give_back_that_never_answers_frees_its_worker_slot(
    tmp_path: Path,
) -> None:
    """``resume_timeout=None`` (the default): nothing watches a resume, and
    one whose saga has ended but whose lease the store never takes back (a
    store of one's own with no timeout) held its worker slot for ever —
    ``concurrency`` of them and the worker resumed nothing more, until a
    restart. Its give-back now has ``STOP_WAIT``: the slot is freed, the
    give-back remembered and made once the store is back (uncounted)."""

    async def body(store: SQLiteSagaStore) -> None:
        first, second = await seed(store, 2)
        give_backs = _GiveBacks(store)
        give_backs.mode, give_backs.hang = "hang", None
        worker = RecoveryWorker(store, [order_saga(store, Ledger())], concurrency=1,
                                lease=600, poll=3600, older_than=0, listen=False)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            await _until(lambda: worker.stats.completed == 1, what="the first saga resumed")
            await _until(lambda: worker.in_flight == 0, within=STOP_WAIT * 10,
                         what="its slot freed")
            assert list(worker._kept.not_given_back) == [first]
            give_backs.mode = "take"  # the store is back
            worker.wake()  # the slot is claimed again: the second saga
            await _until(lambda: worker.stats.completed == 2 and worker.in_flight == 0,
                         what="the second saga resumed")
            await _until(lambda: not worker._kept.not_given_back, what="the give-back made")
            for saga_id in (first, second):
                state = await store.lease_state(saga_id)
                assert (state.owner, state.unreleased_claims) == (None, 0)
        finally:
            give_backs.mode = "take"
            await worker.stop()
            await running

    _virtually(tmp_path, body)


# --------------------------------------------------------------------------- a claim at stop()


class _HeldClaims:
    """The store's claim takes its leases at once, and its answer comes
    ``hang`` seconds later — or never (``None``): a server that does not
    answer once the transaction has committed, a store of one's own that
    hangs. ``entered`` is set once the leases are taken."""

    def __init__(self, store: Any, hang: float | None) -> None:
        self.entered = asyncio.Event()
        claim = store.claim

        @functools.wraps(claim)  # its signature: ``names`` is read from it
        async def held(*args: Any, **kwargs: Any) -> Any:
            leases = await claim(*args, **kwargs)
            self.entered.set()
            if hang is None:
                await asyncio.Event().wait()
            await asyncio.sleep(hang)
            return leases

        store.claim = held


CLAIM_HANGS = {
    "answered within STOP_WAIT": STOP_WAIT / 2,
    "answered within CLAIM_GRACE of being let go": STOP_WAIT + CLAIM_GRACE / 2,
    "never answered": None,
}


@pytest.mark.parametrize("answer", list(CLAIM_HANGS))
def test_S13_a_claim_in_flight_holds_a_stop_for_STOP_WAIT_at_most_and_loses_no_saga(
    tmp_path: Path, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``stop()`` while a claim is on its way waited for the store's answer
    — one store timeout, or for ever on a store with no timeout — before
    ``grace`` even began. The claim now has ``STOP_WAIT`` from the stop,
    counted within ``grace``. An answer that comes later is not lost: its
    leases are given back unrun (not counted) when it lands; one that never
    comes is cut off, and what that claim took runs out on its own, counted
    as a claim toward ``park_after`` (as a crashed worker's claim is)."""
    hang = CLAIM_HANGS[answer]

    async def body(store: SQLiteSagaStore) -> None:
        saga_ids = await seed(store, 2)
        claims = _HeldClaims(store, hang)
        ledger = Ledger()
        worker = RecoveryWorker(store, [order_saga(store, ledger)], concurrency=4,
                                lease=600, poll=3600, older_than=0, listen=False)
        running = asyncio.get_running_loop().create_task(worker.run())
        await claims.entered.wait()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with caplog.at_level(logging.WARNING, logger="fallback_saga"):
            async with asyncio.timeout(STOP_WAIT * 100):
                await worker.stop(grace=0)
                await running
            stopped = loop.time() - began
            assert stopped == pytest.approx(STOP_WAIT if hang is None else min(hang, STOP_WAIT))
            await _until(lambda: not worker._claims.abandoned,
                         within=CLAIM_GRACE + STOP_WAIT, what="the claim let go settled")
        assert ledger.calls == []  # nothing ran
        said = [record.getMessage() for record in caplog.records
                if "claim" in record.getMessage() and "let go" in record.getMessage()]
        assert len(said) == (0 if hang is not None and hang < STOP_WAIT else 1)
        for saga_id in saga_ids:
            state = await store.lease_state(saga_id)
            if hang is None:  # cut off: its leases run out, counted
                assert (state.owner, state.unreleased_claims) == (worker.owner, 1)
            else:  # given back unrun: claimable at once, the claim uncounted
                assert (state.owner, state.unreleased_claims) == (None, 0)

    _virtually(tmp_path, body)
