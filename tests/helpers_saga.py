"""Building blocks for the saga tests: a context, configurable recording steps,
saga declaration without a class statement, and a sleep recorder.

Imported by the saga test modules (``from helpers_saga import ...``); the
breaker tests keep their own helpers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fallback_saga import (
    JournalEntry,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaNotFound,
    SagaRecord,
    SagaStatus,
    StepStatus,
)

Trace = list[tuple[str, str]]


@dataclasses.dataclass
class Address:
    street: str
    lines: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class OrderCtx(SagaContext):
    """The context most saga tests run on: nested list, dict and dataclass."""

    order_id: str = "order-1"
    items: list[str] = dataclasses.field(default_factory=lambda: ["apple"])
    meta: dict[str, Any] = dataclasses.field(default_factory=lambda: {"tags": ["a"], "n": 1})
    address: Address = dataclasses.field(default_factory=lambda: Address("Main St", ["1"]))
    reservation: str | None = None


def wreck_context(ctx: OrderCtx) -> None:
    """Mutate every nested level of an OrderCtx, in place and by rebinding."""
    ctx.items.append("pear")
    ctx.items[0] = "rotten"
    ctx.meta["tags"].append("b")
    ctx.meta["n"] = 99
    ctx.meta["new"] = {"deep": [1]}
    ctx.address.street = "Elm St"
    ctx.address.lines.append("2")
    ctx.reservation = "from-the-primary"


class Boom(Exception):
    """A step failure the tests raise on purpose."""


class Probe:
    """A configurable step instance that records every call into ``trace``.

    * ``error`` — an exception class (or zero-argument factory) raised by ``act``;
      ``fail_times`` limits how many calls fail (``None``: every call).
    * ``mutate(ctx)`` runs before the failure, so a failing act has side effects.
    * ``comp_error`` / ``comp_fail_times`` — the same for ``compensate``.
    * ``seen`` collects ``observe(ctx)`` at the start of each act.
    """

    def __init__(
        self,
        name: str,
        trace: Trace,
        *,
        error: Callable[[], BaseException] | None = None,
        fail_times: int | None = None,
        mutate: Callable[[Any], None] | None = None,
        comp_error: Callable[[], BaseException] | None = None,
        comp_fail_times: int | None = None,
        observe: Callable[[Any], Any] | None = None,
        response: Any = None,
    ) -> None:
        self.name = name
        self.trace = trace
        self.error = error
        self.fail_times = fail_times
        self.mutate = mutate
        self.comp_error = comp_error
        self.comp_fail_times = comp_fail_times
        self.observe = observe
        self.response = f"{name}-response" if response is None else response
        self.acts = 0
        self.compensations = 0
        self.seen: list[Any] = []

    async def act(self, context: Any) -> Any:
        self.acts += 1
        self.trace.append(("act", self.name))
        if self.observe is not None:
            self.seen.append(self.observe(context))
        if self.mutate is not None:
            self.mutate(context)
        if self.error is not None and (self.fail_times is None or self.acts <= self.fail_times):
            raise self.error()
        return self.response

    async def compensate(self, context: Any) -> None:
        self.compensations += 1
        self.trace.append(("compensate", self.name))
        if self.comp_error is not None and (
            self.comp_fail_times is None or self.compensations <= self.comp_fail_times
        ):
            raise self.comp_error()


class Blocker:
    """A step whose act signals ``started`` and then waits until ``release`` is set
    (or forever, until cancelled)."""

    def __init__(self, name: str, trace: Trace) -> None:
        self.name = name
        self.trace = trace
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def act(self, context: Any) -> str:
        self.trace.append(("act", self.name))
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return f"{self.name}-response"

    async def compensate(self, context: Any) -> None:
        self.trace.append(("compensate", self.name))


async def reached(event: asyncio.Event) -> None:
    """Wait for ``event``; a safety net turns a library hang into a test failure."""
    async with asyncio.timeout(10):
        await event.wait()


def declare(*steps: Any, context: type = OrderCtx, name: str = "TestSaga") -> type[Saga[Any]]:
    """Create ``class <name>(Saga[context]): steps = [...]`` exactly as a class
    statement would (``__init_subclass__`` validates it)."""
    return types.new_class(
        name, (Saga[context],), {}, lambda namespace: namespace.update(steps=list(steps))
    )


def compensated(trace: Iterable[tuple[str, str]]) -> list[str]:
    return [step for action, step in trace if action == "compensate"]


def acted(trace: Iterable[tuple[str, str]]) -> list[str]:
    return [step for action, step in trace if action == "act"]


class SleepRecorder:
    """Stands in for ``asyncio.sleep`` in a ``RetryPolicy``: records, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def error_chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and everything it chains to through __cause__/__context__."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


class JsonStore:
    """A write-ahead ``SagaStore`` that keeps nothing but JSON text, the way a
    durable store does; ``writes`` counts the calls it received."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.writes = 0

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
        if saga_id in self.rows:
            raise SagaAlreadyExists(saga_id)
        self.writes += 1
        self.rows[saga_id] = json.dumps(
            {
                "saga_name": saga_name,
                "fingerprint": fingerprint,
                "status": str(status),
                "context": context,
                "history": [list(entry) for entry in entries],
            }
        )

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Any = None,
    ) -> None:
        if saga_id not in self.rows:
            raise SagaNotFound(saga_id)
        self.writes += 1
        row = json.loads(self.rows[saga_id])
        row["history"].extend(list(entry) for entry in entries)
        if status is not None:
            row["status"] = str(status)
        if context is not None:
            row["context"] = context
        self.rows[saga_id] = json.dumps(row)

    async def load(self, saga_id: str) -> SagaRecord:
        if saga_id not in self.rows:
            raise SagaNotFound(saga_id)
        row = json.loads(self.rows[saga_id])
        history = [
            JournalEntry(p, step, branch, action, StepStatus(status), attempt, error, at, result)
            for p, step, branch, action, status, attempt, error, at, result in row["history"]
        ]
        return SagaRecord(
            saga_id=saga_id,
            saga_name=row["saga_name"],
            fingerprint=row["fingerprint"],
            status=SagaStatus(row["status"]),
            context=row["context"],
            history=history,
        )


class RowCtx(SagaContext):
    """The context of ``RowSaga``: nothing in it."""


class RowStep:
    async def act(self, ctx: RowCtx) -> None:
        pass

    async def compensate(self, ctx: RowCtx) -> None:
        pass


class RowSaga(Saga[RowCtx]):
    """One step that does nothing: the saga of the store tests that write
    its rows by hand (``store.create(..., "RowSaga", RowSaga.definition.fingerprint,
    ...)``) and then break them, to see what the readers and recovery say."""

    steps = [RowStep]


class OutcomesTold:
    """A listener that keeps every ``recovery_outcome`` a worker or a
    ``recover`` pass tells it: (saga id, saga name, outcome, reason)."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str | None, str, str | None]] = []

    def recovery_outcome(self, saga_id: str, saga_name: str | None, outcome: str,
                         reason: str | None) -> None:
        self.outcomes.append((saga_id, saga_name, outcome, reason))


async def run_worker_until(worker: Any, done: Callable[[], bool], *, polls: int = 500) -> None:
    """Run ``worker`` until ``done()`` holds (checked between short waits,
    at most ``polls`` times: a worker that never gets there fails the
    caller's asserts, it does not hang the suite), then stop it."""
    running = asyncio.create_task(worker.run())
    try:
        for _ in range(polls):
            if done():
                break
            await asyncio.sleep(0.01)
    finally:
        await worker.stop()
        await running


def skipped_told(told: OutcomesTold) -> list[tuple[str, str | None]]:
    """The (saga id, reason) of each saga ``told`` heard was skipped."""
    return [(saga_id, reason) for saga_id, _, outcome, reason in told.outcomes
            if outcome == "skipped"]
