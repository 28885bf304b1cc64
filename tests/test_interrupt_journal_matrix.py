"""What the journal says when a step's own code raises a ``BaseException``
that is not an ``Exception`` — ``KeyboardInterrupt``, ``SystemExit``,
``GeneratorExit`` or ``CancelledError`` — inside an ``act``, a
``compensate``, a Fallback's primary or fallback, a ``Parallel`` member or a
child saga's step, on every store, and what recovery then does with it.

(``test_interrupt_matrix.py`` sends real SIGINTs to a process: there
``asyncio.run`` turns the first Ctrl-C into a cancellation of the main task,
and only a second one raises ``KeyboardInterrupt`` in whatever code runs.
Here the exception is raised by the step itself, in-process, which is what
the executor sees when that second Ctrl-C lands inside a step, or when a
step calls ``sys.exit``.)

The participant applies its effect and *then* raises, the way a Ctrl-C
lands after the request went out. The rules (docs/mechanics.md,
Cancellation and Resuming from the journal):

* ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` — the process (or
  the coroutine) is going down: nothing is unwound in-process, and the
  journal is left saying what is known — the interrupted call's ``STARTED``
  is its last word, never a ``FAILED`` that would tell recovery that the
  call did nothing (S13). The saga stays ``RUNNING`` (``COMPENSATING`` out of
  a ``compensate``); recovery calls the interrupted act again with the same
  idempotency key (S10) — and if that resume is cancelled before the call
  answers, compensates it, since its first call may have taken effect.
  Every store journals the same rows.
* ``CancelledError`` raised by the step's own code is a cancellation of the
  step (S8): a plain step's try is journaled ``FAILED`` and what completed is
  compensated; a ``compensate`` that raises it has failed (S6). The same on
  every store too.

The participant's ledger must end consistent with the saga's outcome: every
effect applied once and kept when the saga completed, every effect undone
when it was compensated — no act that may have run left uncompensated.

Before the act's crash was kept out of the journal (executor.act_failed),
these cells failed: on ``MemorySagaStore`` every forward place for each of
the three crashes (the act journaled ``FAILED``; with the resume cancelled
before the call answered, its effect stayed applied under a ``COMPENSATED``
saga — all but the member; behind an open breaker, the fallback ran while
the primary's effect stood), and on SQLite (each writer) and PostgreSQL a
``Parallel`` member's ``GeneratorExit`` (the loop goes on: the sibling's
completion wrote the member's ``FAILED`` row too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    MemorySagaStore,
    Parallel,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStatus,
    SQLiteSagaStore,
    SubSaga,
    recover,
)

pytest_plugins = ["conftest_pg"]

KINDS = ("memory", "thread", "inline", "process", "postgres")
CRASHES = (KeyboardInterrupt, SystemExit, GeneratorExit)
ERRORS = (*CRASHES, asyncio.CancelledError)
# Where the error is raised: the step whose code raises it, by name.
PLACES = {
    "act": "B",  # a plain step's act
    "compensate": "A",  # a compensation (B fails: the saga unwinds)
    "primary": "P",  # a Fallback's primary
    "fallback": "F",  # a Fallback's fallback (its primary failed)
    "member": "M",  # a Parallel member (its sibling Q completes)
    "child": "Y",  # a child saga's step (SubSaga "Pay")
}
FORWARD = ("act", "primary", "fallback", "member", "child")


class Declined(Exception):
    """A participant's business refusal: the step failed, did nothing."""


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


@dataclasses.dataclass
class ChildCtx(SagaContext):
    m: int = 0


class Participant:
    """The outside world the steps act on. An effect is keyed by step name
    (one per saga here, as an idempotency key would be): applying it again
    is a no-op, undoing it twice too. ``raise_at`` (``(step, action)``) raises
    ``error`` there once, *after* the effect landed."""

    def __init__(self, raise_at: tuple[str, str], error: type[BaseException]) -> None:
        self.raise_at: tuple[str, str] | None = raise_at
        self.error = error
        self.applied: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        # The run to cancel as the interrupted act is called again (before it
        # answers): see test_S5_S8_S13_a_crashed_call_is_compensated_when_its_
        # resume_is_cancelled_before_it_answers.
        self.cancel_on_rerun: asyncio.Task[Any] | None = None

    async def call(self, step: str, action: str, declines: bool = False) -> None:
        rerun = (step, action) in self.calls
        self.calls.append((step, action))
        if rerun and self.cancel_on_rerun is not None and action == "act":
            victim, self.cancel_on_rerun = self.cancel_on_rerun, None
            victim.cancel()
            await asyncio.sleep(0)  # the cancellation lands: this call answers nothing
        if declines:
            raise Declined(step)
        if action == "act":
            self.applied.add(step)
        else:
            self.applied.discard(step)
        if self.raise_at == (step, action):
            self.raise_at = None  # once: the resumed run gets through
            raise self.error


def family(
    participant: Participant, place: str, breaker: Any = None
) -> tuple[type[Saga[Ctx]], type[Saga[ChildCtx]]]:
    """The saga for ``place`` (and the child saga it may run); ``breaker``
    guards the Fallback's primary."""

    def step(name: str, declines: bool = False) -> type:
        class Step:
            async def act(self, ctx: Any) -> None:
                await participant.call(name, "act", declines)

            async def compensate(self, ctx: Any) -> None:
                await participant.call(name, "compensate")

        Step.__name__ = Step.__qualname__ = name
        return Step

    class Child(Saga[ChildCtx]):
        steps = [step("X"), step("Y")]

    second: Any = {
        "act": step("B"),
        "compensate": step("B", declines=True),
        "primary": Fallback(step("P"), step("F"), circuit_breaker=breaker),
        "fallback": Fallback(step("P", declines=True), step("F")),
        "member": Parallel(step("M"), step("Q")),
        "child": SubSaga(Child, context=lambda parent: ChildCtx(), name="Pay", lease_seconds=0.1),
    }[place]

    class Interrupted(Saga[Ctx]):
        steps = [step("A"), second]

    return Interrupted, Child


@pytest.fixture
def store_of(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """``store_of()``: a store of the test's ``kind`` on the test's data — a
    new object each call (as a new process would open it; the caller closes
    it in the loop it used), but the one ``MemorySagaStore`` (its data is
    the object)."""
    kind = request.getfixturevalue("kind")
    memory = MemorySagaStore()

    def make() -> Any:
        if kind == "memory":
            return memory
        if kind == "postgres":
            from fallback_saga.store.postgres import PostgresSagaStore

            return PostgresSagaStore(
                request.getfixturevalue("pg_conninfo"),
                schema=request.getfixturevalue("pg_schema"), min_size=1,
            )
        return SQLiteSagaStore(tmp_path / "sagas.db", writer=kind)

    return make


async def closed(store: Any) -> None:
    if not isinstance(store, MemorySagaStore):
        await store.close()


Rows = list[tuple[str, str, str]]


async def rows_of(store: Any, saga_id: str) -> tuple[SagaStatus, Rows]:
    record = await store.load(saga_id)
    return record.status, [(e.step, e.action, e.status.value) for e in record.history]


def interrupted_run(
    store_of: Callable[[], Any], participant: Participant, place: str,
    error: type[BaseException], listeners: Sequence[Any] = (),
) -> None:
    """Run the saga for ``place`` until ``error`` comes out of it, in an
    event loop of its own, as the process it stands for: a
    ``KeyboardInterrupt`` or ``SystemExit`` leaves the loop from the task it
    was raised in (asyncio lets those through), and ``asyncio.run`` then
    cancels every task left, as a process that is interrupted does."""
    saga_class, _ = family(participant, place)
    tasks: list[asyncio.Task[Any]] = []

    async def main() -> None:
        store = store_of()
        task = asyncio.create_task(
            saga_class(store=store, listeners=list(listeners)).run(Ctx(), saga_id="s")
        )
        tasks.append(task)
        # Not awaited: a KeyboardInterrupt would come out of this task too,
        # and again out of the loop's shutdown. When one left the loop, the
        # loop's shutdown cancels this wait, and the store is left as a
        # process going down leaves it: closed at the loop's end, or freed.
        await asyncio.wait([task])
        await closed(store)
        task.result()

    expected: type[BaseException] = error
    if error is asyncio.CancelledError and place == "compensate":
        expected = SagaFailed  # a compensation that raises it has failed (S6)
    with pytest.raises(expected):
        asyncio.run(main())
    if error in (KeyboardInterrupt, SystemExit):
        # The task keeps what it let out: retrieved here, not logged when
        # freed. (Out of a compensation, the unwinding's own task let it
        # out, and asyncio.run cancelled the saga's as it shut down.)
        assert tasks[0].cancelled() or isinstance(tasks[0].exception(), error)
    # What the run left is freed here, not in the middle of a later test.
    # (A KeyboardInterrupt out of a Parallel member leaves the loop once,
    # from the saga's task: test_parallel_crash_shutdown.py.)
    tasks.clear()
    gc.collect()


def the_crashed_call(rows: Rows, step: str, action: str) -> list[str]:
    """The statuses of ``step``'s ``action`` rows, in journal order."""
    return [status for name, act, status in rows if (name, act) == (step, action)]


def ledger_agrees(participant: Participant, status: SagaStatus, steps: set[str]) -> None:
    """The outside world against the saga's outcome: completed — every
    effect of the steps that ran stands; compensated — none does."""
    if status is SagaStatus.COMPLETED:
        assert participant.applied == steps, participant.calls
    else:
        assert status is SagaStatus.COMPENSATED, status
        assert participant.applied == set(), participant.calls


def completed_steps(place: str) -> set[str]:
    """The effects a completed saga for ``place`` leaves."""
    return {
        "act": {"A", "B"}, "primary": {"A", "P"}, "fallback": {"A", "F"},
        "member": {"A", "M", "Q"}, "child": {"A", "X", "Y"},
    }[place]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", PLACES)
def test_S10_S13_a_crash_in_a_step_leaves_its_call_in_doubt_on_every_store(
    kind: str, error: type[BaseException], place: str, store_of: Callable[[], Any]
) -> None:
    """The process goes down inside a call: the journal's last word on that
    call is its STARTED (never FAILED: the effect may have landed), the saga
    is left RUNNING (COMPENSATING out of a compensate), and recovery
    finishes it — the call made again with its key, nothing applied twice,
    nothing left applied under a compensated saga."""
    name = PLACES[place]
    action = "compensate" if place == "compensate" else "act"
    participant = Participant((name, action), error)
    interrupted_run(store_of, participant, place, error)

    async def recovery() -> SagaStatus:
        store = store_of()
        try:
            status, rows = await rows_of(store, "s")
            assert status is (
                SagaStatus.COMPENSATING if place == "compensate" else SagaStatus.RUNNING
            ), rows
            journal = rows
            if place == "child":
                # The child's journal holds the interrupted call; the
                # parent's step (the SubSaga) was in its call too.
                assert the_crashed_call(rows, "Pay", "act")[-1] == "started", rows
                child_status, journal = await rows_of(store, "s/Pay")
                assert child_status is SagaStatus.RUNNING, journal
            assert the_crashed_call(journal, name, action)[-1] == "started", journal
            assert "failed" not in the_crashed_call(journal, name, action), journal
            saga_class, child_class = family(participant, place)
            if kind == "memory":  # in-process: no recover(), resume by id
                if place == "compensate":
                    with pytest.raises(SagaFailed):
                        await saga_class(store=store).resume("s")
                else:
                    await saga_class(store=store).resume("s")
            else:
                report = await recover(store, [saga_class, child_class], older_than=0)
                assert report.skipped == [], report
                assert report.interrupted == [], report
            return (await store.load("s")).status
        finally:
            await closed(store)

    final = asyncio.run(recovery())
    if place == "compensate":
        assert final is SagaStatus.COMPENSATED
        assert participant.calls.count(("A", "compensate")) == 2  # called again: S10
        ledger_agrees(participant, final, set())
    else:
        assert final is SagaStatus.COMPLETED
        assert participant.calls.count((name, "act")) == 2  # the same key again: S10
        ledger_agrees(participant, final, completed_steps(place))
    twice = {call for call, n in Counter(participant.calls).items() if n > 1}
    assert twice <= {(name, action)}, participant.calls  # nothing else ran twice


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
@pytest.mark.parametrize("place", FORWARD)
def test_S5_S8_S13_a_crashed_call_is_compensated_when_its_resume_is_cancelled_before_it_answers(
    kind: str, error: type[BaseException], place: str, store_of: Callable[[], Any]
) -> None:
    """As above; the resume is cancelled as the interrupted act is called
    again, before it answers. Nothing answered for the first call, whose
    effect landed: the saga unwinds and that call is compensated too — on
    every store (docs/mechanics.md, Resuming from the journal). A journal
    that said FAILED would leave it applied under a COMPENSATED saga."""
    name = PLACES[place]
    participant = Participant((name, "act"), error)
    interrupted_run(store_of, participant, place, error)

    async def cancelled_resume() -> SagaStatus:
        store = store_of()
        try:
            saga_class, _ = family(participant, place)
            task = asyncio.create_task(saga_class(store=store).resume("s"))
            participant.cancel_on_rerun = task
            with pytest.raises(asyncio.CancelledError):
                await task
            return (await store.load("s")).status
        finally:
            await closed(store)

    final = asyncio.run(cancelled_resume())
    assert final is SagaStatus.COMPENSATED
    ledger_agrees(participant, final, set())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", PLACES)
def test_S6_S8_a_cancelled_error_raised_by_a_step_is_journaled_alike_on_every_store(
    kind: str, place: str, store_of: Callable[[], Any]
) -> None:
    """``CancelledError`` out of a step's own code is no crash: the run
    handles it as a cancellation (S8: what completed is compensated, the
    try journaled FAILED — a Parallel member's CANCELLED, and compensated,
    as a member cancelled in flight) or, out of a ``compensate``, as that
    compensation's failure (S6). Whatever the store, the same rows, and the
    participant saw the same calls."""
    name = PLACES[place]
    action = "compensate" if place == "compensate" else "act"
    participant = Participant((name, action), asyncio.CancelledError)
    interrupted_run(store_of, participant, place, asyncio.CancelledError)
    memory = MemorySagaStore()
    reference = Participant((name, action), asyncio.CancelledError)
    interrupted_run(lambda: memory, reference, place, asyncio.CancelledError)

    async def journals() -> None:
        store = store_of()
        try:
            status, rows = await rows_of(store, "s")
            # A cancellation compensates what completed; a compensation that
            # raised it failed, and the saga with it.
            assert status is (
                SagaStatus.FAILED if place == "compensate" else SagaStatus.COMPENSATED
            ), rows
            journal = (await rows_of(store, "s/Pay"))[1] if place == "child" else rows
            assert the_crashed_call(journal, name, action)[-1] == (
                "cancelled" if place == "member" else "failed"
            ), journal
            assert (status, rows) == await rows_of(memory, "s")
            if place == "child":
                assert await rows_of(store, "s/Pay") == await rows_of(memory, "s/Pay")
        finally:
            await closed(store)

    asyncio.run(journals())
    assert participant.calls == reference.calls
    if place in ("member", "compensate"):
        # M, cancelled in flight, compensated; A undone (then its compensate raised).
        assert participant.applied == set(), participant.calls


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("error", CRASHES, ids=lambda e: e.__name__)
def test_S5_S9_a_primary_interrupted_in_its_call_is_answered_by_its_own_call_behind_an_open_breaker(
    kind: str, error: type[BaseException], store_of: Callable[[], Any]
) -> None:
    """The process went down inside the primary's call (its effect landed);
    the primary's circuit opened meanwhile. The resume calls the primary
    again with its key — not the fallback, which would apply a second
    effect while the first one stands (docs/mechanics.md, Resuming from the
    journal) — on every store."""
    breaker = CircuitBreaker(fail_max=1, reset_timeout=1000.0, clock=lambda: 0.0)
    participant = Participant(("P", "act"), error)

    async def run_then_resume() -> SagaStatus:
        async def down() -> None:
            raise OSError("the service is down")

        with pytest.raises(OSError, match="down"):
            await breaker.call(down)  # the circuit opens meanwhile
        store = store_of()
        try:
            saga_class, _ = family(participant, "primary", breaker)
            result = await saga_class(store=store).resume("s")
            return result.status
        finally:
            await closed(store)

    interrupted_run(store_of, participant, "primary", error)
    final = asyncio.run(run_then_resume())
    assert final is SagaStatus.COMPLETED
    assert participant.calls.count(("P", "act")) == 2, participant.calls
    assert ("F", "act") not in participant.calls, participant.calls
    ledger_agrees(participant, final, {"A", "P"})
