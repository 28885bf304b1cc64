"""Fault injection for S13 ("the journal is the truth"), shared by the fault
matrix and the property test in ``test_journal_truth.py``.

* ``Ledger`` is the participant: every ``act`` and ``compensate`` call lands
  in it, in order, and — like a real participant's barrier — it *applies* an
  operation at most once per idempotency key (a compensation only if its act
  was applied: a null compensation is a no-op).
* ``Shape`` builds a saga from a list of step behaviours (plain steps and
  Fallbacks; acts that fail always, once (with a retry) or never;
  compensations that fail always, once or never).
* ``FaultyStore`` wraps a real store and, at one chosen journal write (counted
  from 0 over ``create``/``append``), injects a fault:

  - ``outage``: that write and every later call (reads included) raise, until
    ``heal()`` — a full disk, a database that went away;
  - ``in_doubt``: that write lands, then raises (the commit's answer was lost);
  - ``in_doubt_outage``: that write lands, then the store goes down before
    anyone can read what it holds (a PostgreSQL group commit cut off after
    its COMMIT landed, the server then gone);
  - ``cancel``: the saga's task is cancelled while that write is in flight;
  - ``cancel_outage``: both at once.

  Apart from that write fault, ``fail_reads(at, count)`` makes reads fail
  for a while: the read number ``at`` (counted from 0 over ``load`` and, on
  a recoverable store, ``claim``/``claim_saga``/``list_sagas``/``renew``)
  and the ``count - 1`` after it raise ``StoreDown`` (nothing else does):
  a connection dropped under a resume, the replica it read from restarting.

* ``check_*`` are the invariants, stated against the journal as the inner
  store holds it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fallback_saga import (
    Fallback,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    SagaResult,
    SagaStatus,
    StepStatus,
    current_step,
)
from fallback_saga.store.base import SagaRecord

Behaviour = Literal["ok", "once", "always"]
FaultKind = Literal["outage", "in_doubt", "in_doubt_outage", "cancel", "cancel_outage"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "outage", "in_doubt", "in_doubt_outage", "cancel", "cancel_outage"
)

# Fast, bounded: the matrix runs hundreds of sagas.
FAST_JOURNAL_RETRY = RetryPolicy(attempts=3, delay=0.0, jitter=0.0)
FAST_COMPENSATION_RETRY = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)


class StoreDown(Exception):
    """What a faulty store raises: the disk is full, the server is gone."""


class Boom(Exception):
    """A business failure of a step."""


T = TypeVar("T")


def victim_task(
    coroutine: Coroutine[Any, Any, T], *marks: Callable[[asyncio.Task[Any]], None]
) -> asyncio.Task[T]:
    """``coroutine`` in a task that each of ``marks`` is told of before the
    coroutine's first line runs. Under a loop whose task factory starts
    tasks eagerly (``asyncio.eager_task_factory``, which users set for
    speed) a task runs its first step inside ``create_task``: a fault
    placed at the first journal write, or an ``act`` that cancels its
    caller, would otherwise find no victim yet (or the previous run's)."""

    async def marked() -> T:
        task = asyncio.current_task()
        assert task is not None
        for mark in marks:
            mark(task)
        return await coroutine

    task = asyncio.create_task(marked())
    # Cancelled before its first step, ``marked`` never awaits ``coroutine``:
    # closed here, it is not reported "never awaited" (the saga never ran,
    # which is what such a test means). Closing a finished one does nothing.
    task.add_done_callback(lambda _: coroutine.close())
    return task


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str
    marks: list[str] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------- the participant


@dataclass(frozen=True, slots=True)
class Call:
    saga_id: str
    step: str
    action: Literal["act", "compensate"]
    applied: bool  # False: it failed, or the participant had applied it already


@dataclass
class Ledger:
    calls: list[Call] = field(default_factory=list)
    applied: set[str] = field(default_factory=set)
    tries: Counter[str] = field(default_factory=Counter)

    def call(self, action: Literal["act", "compensate"], behaviour: Behaviour) -> None:
        info = current_step()
        assert info is not None
        assert info.action == action
        key = info.idempotency_key
        self.tries[key] += 1
        fails = behaviour == "always" or (behaviour == "once" and self.tries[key] == 1)
        if action == "compensate":
            act_key = key.removesuffix(":compensate")
            apply = not fails and act_key in self.applied and key not in self.applied
        else:
            apply = not fails and key not in self.applied
        if apply:
            self.applied.add(key)
        self.calls.append(Call(info.saga_id, info.step, action, apply))
        if fails:
            raise Boom(f"{info.step} {action} failed")

    def of(self, saga_id: str) -> list[Call]:
        return [call for call in self.calls if call.saga_id == saga_id]


# --------------------------------------------------------------------------- saga shapes


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str
    act: Behaviour = "ok"
    compensate: Behaviour = "ok"


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    primary: StepSpec
    fallback: StepSpec


Item = StepSpec | FallbackSpec


class LedgerStep:
    """A step whose act and compensate report to the ledger (behaviour per name)."""

    spec: StepSpec

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # "once" acts get one retry, so they complete on the second try.
        self.retry = (
            RetryPolicy(attempts=2, delay=0.0, jitter=0.0) if self.spec.act == "once" else None
        )

    async def act(self, ctx: Ctx) -> str:
        self.ledger.call("act", self.spec.act)
        ctx.marks.append(self.spec.name)
        return self.spec.name

    async def compensate(self, ctx: Ctx) -> None:
        self.ledger.call("compensate", self.spec.compensate)


def _step_class(spec: StepSpec) -> type[LedgerStep]:
    return type(spec.name, (LedgerStep,), {"spec": spec})


@dataclass
class Shape:
    """A saga class built from ``items``, and how to instantiate it on a ledger."""

    items: Sequence[Item]
    name: str = "FaultSaga"

    def __post_init__(self) -> None:
        steps: list[Any] = []
        for item in self.items:
            if isinstance(item, FallbackSpec):
                steps.append(
                    Fallback(step=_step_class(item.primary), fallback=_step_class(item.fallback))
                )
            else:
                steps.append(_step_class(item))
        self.saga_class: type[Saga[Ctx]] = types.new_class(
            self.name, (Saga[Ctx],), {}, lambda namespace: namespace.update(steps=steps)
        )

    def build(self, store: Any, ledger: Ledger) -> Saga[Ctx]:
        return self.saga_class(
            store=store,
            step_factory=lambda cls: cls(ledger),
            journal_retry=FAST_JOURNAL_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
        )

    def specs(self) -> dict[str, StepSpec]:
        found: dict[str, StepSpec] = {}
        for item in self.items:
            for spec in (item.primary, item.fallback) if isinstance(item, FallbackSpec) else (
                item,
            ):
                found[spec.name] = spec
        return found


# The two shapes of the matrix: every journal write point of the act, fallback,
# retry and compensate paths, and both terminal writes.
COMPLETES = Shape(
    [
        StepSpec("Reserve"),
        FallbackSpec(StepSpec("Charge", act="always"), StepSpec("ChargeLater")),
        StepSpec("Ship", act="once"),
    ],
    name="CompletesSaga",
)
UNWINDS = Shape(
    [
        StepSpec("Reserve", compensate="once"),
        FallbackSpec(StepSpec("Charge", act="always"), StepSpec("ChargeLater")),
        StepSpec("Ship", act="always"),
    ],
    name="UnwindsSaga",
)


# --------------------------------------------------------------------------- the faulty store


class FaultyStore:
    """A ``SagaStore`` over ``inner`` with one fault at write number ``at``."""

    def __init__(self, inner: Any, *, at: int | None = None, kind: FaultKind = "outage") -> None:
        self.inner = inner
        self.at = at
        self.kind = kind
        self.writes = 0
        self.down = False
        self.victim: asyncio.Task[Any] | None = None
        # The executor's cheaper wait (no task per write) is tested through
        # the durable stores, which allow it; the memory store takes the task path.
        self.writes_outlive_cancellation = getattr(inner, "writes_outlive_cancellation", False)
        self.reads = 0
        self.failing_reads = range(0)  # the read numbers that fail (fail_reads)

    def mark(self, task: asyncio.Task[Any]) -> None:
        """The task a ``cancel`` fault cancels (see ``victim_task``)."""
        self.victim = task

    def heal(self) -> None:
        self.down = False

    def fail_reads(self, at: int, count: int = 1) -> None:
        """Reads number ``at`` to ``at + count - 1`` fail (see the module's docstring)."""
        self.failing_reads = range(at, at + count)

    def _check(self) -> None:
        if self.down:
            raise StoreDown("the store is unavailable")

    def _read(self) -> None:
        number = self.reads
        self.reads += 1
        self._check()
        if number in self.failing_reads:
            raise StoreDown("the connection dropped during a read")

    async def _write(self, send: Callable[[], Any]) -> None:
        number = self.writes
        self.writes += 1
        self._check()
        if number != self.at:
            await send()
            return
        if self.kind in ("cancel", "cancel_outage"):
            assert self.victim is not None
            self.victim.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the saga's task meanwhile
        if self.kind in ("outage", "cancel_outage"):
            self.down = True
            raise StoreDown("the disk is full")
        await send()
        if self.kind == "in_doubt_outage":
            self.down = True
        if self.kind in ("in_doubt", "in_doubt_outage"):
            raise StoreDown("connection lost after COMMIT was sent")

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self._write(lambda: self.inner.create(saga_id, *args, **kwargs))

    async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await self._write(lambda: self.inner.append(saga_id, *args, **kwargs))

    async def load(self, saga_id: str) -> SagaRecord:
        self._read()
        record: SagaRecord = await self.inner.load(saga_id)
        return record


class FaultyRecoverableStore(FaultyStore):
    """The same over a durable store, with what recovery needs."""

    async def list_sagas(self, **kwargs: Any) -> Any:
        self._read()
        return await self.inner.list_sagas(**kwargs)

    async def claim(self, **kwargs: Any) -> Any:
        self._read()
        return await self.inner.claim(**kwargs)

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Any:
        self._read()
        return await self.inner.claim_saga(saga_id, **kwargs)

    async def renew(self, lease: Any, lease_seconds: float) -> Any:
        self._read()
        return await self.inner.renew(lease, lease_seconds)

    async def release(self, lease: Any) -> None:
        self._check()
        await self.inner.release(lease)

    async def purge(self, **kwargs: Any) -> int:
        self._check()
        purged: int = await self.inner.purge(**kwargs)
        return purged


class _WriteFuture(asyncio.Future[None]):
    """The future of a submitted journal write: like the SQLite store's, it
    refuses cancellation (the write goes on whatever the awaiting task does)."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class FaultySubmittingStore(FaultyRecoverableStore):
    """The same over a store that submits its writes (``SQLiteSagaStore``,
    ``PostgresSagaStore``):
    the executor's hot path calls ``submit_create``/``submit_append`` and
    awaits the future they return, so the fault is injected there — the
    write's future fails (or lands, then fails) as the writer thread would
    make it; a cancellation arrives while it is pending. ``create`` and
    ``append`` (the retries take them) inject as ``FaultyStore`` does."""

    submits_writes = True

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await super().create(saga_id, *args, **kwargs)

    async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        await super().append(saga_id, *args, **kwargs)

    def submit_create(self, saga_id: str, *args: Any) -> asyncio.Future[None]:
        return self._submit(lambda: self.inner.submit_create(saga_id, *args))

    def submit_append(self, saga_id: str, *args: Any) -> asyncio.Future[None]:
        return self._submit(lambda: self.inner.submit_append(saga_id, *args))

    def _submit(self, send: Callable[[], asyncio.Future[None]]) -> asyncio.Future[None]:
        number = self.writes
        self.writes += 1
        answer = _WriteFuture()
        if self.down:
            answer.set_exception(StoreDown("the store is unavailable"))
            return answer
        if number == self.at and self.kind in ("cancel", "cancel_outage"):
            assert self.victim is not None
            self.victim.cancel()  # arrives while the write's future is pending
        if number == self.at and self.kind in ("outage", "cancel_outage"):
            self.down = True
            answer.set_exception(StoreDown("the disk is full"))
            return answer
        written = send()
        lost = number == self.at and self.kind in ("in_doubt", "in_doubt_outage")

        def answered(written: asyncio.Future[None]) -> None:
            error = written.exception()
            if error is None and lost:
                if self.kind == "in_doubt_outage":
                    self.down = True
                error = StoreDown("connection lost after COMMIT was sent")
            if error is None:
                answer.set_result(None)
            else:
                answer.set_exception(error)

        written.add_done_callback(answered)
        return answer


# --------------------------------------------------------------------------- one case


@dataclass
class CaseResult:
    saga_id: str
    outcome: object  # SagaResult, or the exception the caller got
    before: SagaRecord | None  # the journal as the run left it
    after: SagaRecord | None  # after the store healed and recovery ran (None: never created)
    calls_before: int  # ledger calls of this saga when the run returned


async def step_by_step(saga: Saga[Ctx], saga_id: str) -> object:
    async with saga.transaction(Ctx(order_id=saga_id), saga_id=saga_id) as transaction:
        async for _ in transaction:
            pass
    assert transaction.result is not None
    return transaction.result


async def journal_of(inner: Any, saga_id: str) -> SagaRecord | None:
    try:
        record: SagaRecord = await inner.load(saga_id)
    except SagaNotFound:
        return None
    return record


async def run_case(
    shape: Shape,
    store: FaultyStore,
    ledger: Ledger,
    saga_id: str,
    recover_all: Callable[[Saga[Ctx]], Any],
    driver: Literal["run", "transaction"] = "run",
) -> CaseResult:
    """Run one saga through ``store``'s fault (with ``saga.run``, or step by
    step with ``saga.transaction``), heal the store, recover, and return what
    each side saw."""
    saga = shape.build(store, ledger)
    if driver == "run":
        task = victim_task(saga.run(Ctx(order_id=saga_id), saga_id=saga_id), store.mark)
    else:
        task = victim_task(step_by_step(saga, saga_id), store.mark)
    outcome: object
    try:
        outcome = await task
    except (Exception, asyncio.CancelledError) as error:
        outcome = error
    before = await journal_of(store.inner, saga_id)
    calls_before = len(ledger.of(saga_id))
    store.heal()
    await recover_all(saga)
    after = await journal_of(store.inner, saga_id)
    return CaseResult(saga_id, outcome, before, after, calls_before)


# --------------------------------------------------------------------------- invariants


def started(record: SagaRecord | None) -> Counter[tuple[str, str]]:
    if record is None:
        return Counter()
    return Counter(
        (entry.step, entry.action) for entry in record.history
        if entry.status is StepStatus.STARTED
    )


def check_no_effect_the_journal_does_not_know(
    calls: Sequence[Call], record: SagaRecord | None
) -> None:
    """Every act/compensate call had its own durable STARTED record."""
    made = Counter((call.step, call.action) for call in calls)
    known = started(record)
    unknown = {key: n - known[key] for key, n in made.items() if n > known[key]}
    assert not unknown, f"calls without a durable STARTED record: {unknown}"


def check_caller_matches_journal(
    outcome: object, record: SagaRecord | None, *, cancel_with_store_up: bool
) -> None:
    status = None if record is None else record.status
    if isinstance(outcome, SagaResult):
        assert status is SagaStatus.COMPLETED, (outcome, status)
    elif isinstance(outcome, SagaFailed):
        assert outcome.status is status, (outcome, status)
        assert status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)
    elif isinstance(outcome, SagaInterrupted):
        # The journal holds the status the caller was told — or, when the
        # last write is reported in doubt, the one it carried.
        told = {outcome.status}
        if outcome.in_doubt:
            told.add(outcome.status_if_landed or outcome.status)
        if outcome.status is None:
            told.add(SagaStatus.RUNNING if outcome.in_doubt else None)
        assert status in told, (outcome, status)
        if status is outcome.status and status is not None:
            assert not status.is_final
    elif isinstance(outcome, asyncio.CancelledError):
        if cancel_with_store_up:
            # The journal ends saying what happened: no forward run behind the
            # caller's back.
            assert status is not None, "the journal lost the saga"
            assert status.is_final, status
    else:
        raise AssertionError(f"the caller got {outcome!r}")


def check_ledger(
    calls: Sequence[Call], record: SagaRecord | None, specs: dict[str, StepSpec]
) -> None:
    """After recovery: the saga is finished, no forward act ran after a
    compensation, and each applied act stays (COMPLETED) or is compensated
    exactly once. A saga the journal never held never ran a step."""
    if record is None:
        assert not calls, calls
        return
    assert record.status.is_final, record.status
    first_compensation = next(
        (n for n, call in enumerate(calls) if call.action == "compensate"), len(calls)
    )
    late = [call for call in calls[first_compensation:] if call.action == "act"]
    assert not late, f"forward acts after a compensation: {late}"
    acted = {call.step for call in calls if call.action == "act" and call.applied}
    undone = Counter(call.step for call in calls if call.action == "compensate" and call.applied)
    assert all(n == 1 for n in undone.values()), undone
    if record.status is SagaStatus.COMPLETED:
        assert not undone, f"a COMPLETED saga had compensations applied: {undone}"
    elif record.status is SagaStatus.COMPENSATED:
        assert set(undone) == acted, (acted, undone)
    else:  # FAILED: only the compensations designed to fail are missing
        missing = acted - set(undone)
        assert missing, "FAILED, yet every applied act was compensated"
        assert all(specs[name].compensate == "always" for name in missing), missing
