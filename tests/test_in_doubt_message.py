"""An in-doubt interruption names the error that left its write in doubt (S13).

A journal write fails in a way that does not say whether it landed (the
connection lost after the commit was sent), and the read that would tell
then fails differently (the pool cannot get a connection: the server is
gone). ``SagaInterrupted.error`` is the store's last error — the read's —
but the operator must also be told what happened to the write itself: that
error is what says why the journal may hold more than the status reported.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from journal_faults import COMPLETES, Ctx, FaultyStore, Ledger, StoreDown

from fallback_saga import MemorySagaStore, RetryPolicy, SagaInterrupted, SagaStatus, StepStatus
from fallback_saga.journal import JournalWrite, NotDurable, write_durably
from fallback_saga.store._responses import MAX_ERROR_TEXT
from fallback_saga.store.base import JournalEntry

LOST = "connection lost after COMMIT was sent"  # what FaultyStore's in-doubt write says


class PoolTimeout(Exception):
    """What a pool says when it cannot get a connection to a server that is gone."""


class PoolGoneAfterCommit(FaultyStore):
    """``in_doubt_outage``: the write lands, its answer is lost, and from then
    on every call fails with the pool's own error, not the write's."""

    def _check(self) -> None:
        if self.down:
            raise PoolTimeout("couldn't get a connection after 30.00 sec")


async def test_S13_an_in_doubt_interruption_names_the_write_error_and_the_last_one() -> None:
    ledger = Ledger()
    store = PoolGoneAfterCommit(MemorySagaStore(), at=1, kind="in_doubt_outage")
    saga = COMPLETES.build(store, ledger)
    with pytest.raises(SagaInterrupted) as stopped:
        await saga.run(Ctx(order_id="doubt-1"), saga_id="doubt-1")
    interrupted = stopped.value
    assert interrupted.in_doubt
    assert isinstance(interrupted.error, PoolTimeout)  # the last error, as before
    assert interrupted.doubted_by == f"StoreDown: {LOST}"
    text = str(interrupted)
    assert "PoolTimeout: couldn't get a connection after 30.00 sec" in text
    assert f"the write that may have landed failed with StoreDown: {LOST}" in text
    assert text.endswith("(its last write may have landed unseen)")  # the end is kept
    again = pickle.loads(pickle.dumps(interrupted))
    assert again.doubted_by == interrupted.doubted_by
    assert str(again) == text


async def test_S13_an_in_doubt_interruption_by_the_write_error_itself_names_it_once() -> None:
    """No retry: the write's own error is the last one, said once."""
    store = PoolGoneAfterCommit(MemorySagaStore(), at=1, kind="in_doubt_outage")
    saga = COMPLETES.saga_class(store=store, step_factory=lambda cls: cls(Ledger()),
                                journal_retry=RetryPolicy(attempts=1))
    with pytest.raises(SagaInterrupted) as stopped:
        await saga.run(Ctx(order_id="doubt-2"), saga_id="doubt-2")
    interrupted = stopped.value
    assert interrupted.in_doubt
    assert isinstance(interrupted.error, StoreDown)
    assert interrupted.doubted_by is None
    assert str(interrupted).count(LOST) == 1
    assert "may have landed failed with" not in str(interrupted)


async def test_S13_not_durable_keeps_the_error_that_left_the_write_in_doubt() -> None:
    """``write_durably`` itself: the first try is in doubt, the reads fail
    with another error until the budget is spent."""
    entry = JournalEntry(0, "A", "primary", "act", StepStatus.STARTED, 1, None, 1.0)
    inner = MemorySagaStore()
    await inner.create("s", "S", "f", {}, [])
    store = PoolGoneAfterCommit(inner, at=0, kind="in_doubt_outage")
    write = JournalWrite("s", "S", "f", False, [entry], None, None, None, held=0)
    with pytest.raises(NotDurable) as gave_up:
        await write_durably(store, write, RetryPolicy(attempts=3, delay=0.0, jitter=0.0))
    assert gave_up.value.in_doubt
    assert isinstance(gave_up.value.error, PoolTimeout)
    assert isinstance(gave_up.value.doubted_by, StoreDown)
    assert str(gave_up.value.doubted_by) == LOST


class HugeLossThenPoolGone(PoolGoneAfterCommit):
    """The same, the lost write's error quoting megabytes (a driver's dump)."""

    async def _write(self, send: Any) -> None:
        try:
            await super()._write(send)
        except StoreDown as lost:
            if str(lost) != LOST:
                raise
            raise StoreDown("connection lost: " + "z" * 1_000_000) from None


async def test_S13_the_error_that_left_the_write_in_doubt_is_quoted_cut() -> None:
    store = HugeLossThenPoolGone(MemorySagaStore(), at=1, kind="in_doubt_outage")
    saga = COMPLETES.build(store, Ledger())
    with pytest.raises(SagaInterrupted) as stopped:
        await saga.run(Ctx(order_id="doubt-3"), saga_id="doubt-3")
    interrupted = stopped.value
    assert interrupted.doubted_by is not None
    assert len(interrupted.doubted_by) < MAX_ERROR_TEXT + 100
    text = str(interrupted)
    assert len(text) < 2 * MAX_ERROR_TEXT
    assert "may have landed failed with StoreDown: connection lost: zzz" in text
    assert text.count("more characters not shown") == 1
    assert text.endswith("(its last write may have landed unseen)")


def test_S13_a_write_not_in_doubt_names_no_error_that_left_it_in_doubt() -> None:
    interrupted = SagaInterrupted(
        saga_id="o-1", saga_name="Shop", status=SagaStatus.RUNNING,
        error=PoolTimeout("no connection"), in_doubt=False, doubted_by="StoreDown: lost",
    )
    assert interrupted.doubted_by is None
    assert "may have landed" not in str(interrupted)
