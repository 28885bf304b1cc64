"""A differential oracle across stores (S13: the journal is the truth; S14: a
resume is exact): the seeded cases of ``test_reference_model.py`` — plain
steps, Fallbacks, breakers, retries, ``Parallel`` groups, child sagas,
cancellations, ``transaction()``, a store dying after any call, then resumes
— run on every store, each run checked against the reference model, and
every durable store's runs compared with the memory store's: the same
participant calls (how many, in which order), the same outcome (SagaResult
or SagaFailed with its status, failed step, errors and results, or
CancelledError), and the same journal (each saga's and child's status,
context and rows: position, step, branch, action, status, attempt, error,
journaled result). A durable store resumes a crashed case on a new store
object over the same file or database, as the process that recovers would.

What the contract leaves open is inside a ``Parallel`` group only
(docs/mechanics.md, "Parallel groups"), and the oracle allows exactly that:

* the order among the members: they run concurrently and are compensated
  "in the reverse order of their completion (any order among them is
  valid: they are independent)", so the interleaving of their calls and
  rows depends on how each store schedules its writes — and with it the
  order in which an error's text lists those whose compensation gave up,
  and which cancelled member a resumed saga names as its failed step when
  every failure was the caller's cancellation.
  Those stretches are compared as multisets; everything else is identical.
* how far the other members got when one failed for good: "the group
  cancels the members still running", and where the cancellation meets each
  is scheduling (on the in-process path a member's fallback runs at once,
  with no journal write to wait for). What follows differs with it (a
  member that got further is compensated, and may leave its saga FAILED),
  so such a run is held to the model alone (every store's run is checked
  against it) and to the same participant calls outside the groups.

``ALLOWED`` counts the runs each allowance admitted, per store.

``PYTHONPATH=. python tests/test_store_differential.py START COUNT [KIND ...]`` hunts over
more seeds (KIND: sqlite-thread, sqlite-process, sqlite-inline, postgres;
postgres starts a throwaway server of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from reference_model import Case
from reference_runner import RunSeen, StoreKind, exit_unless_this_trees_package, run_case_on
from test_reference_model import make_case

from fallback_saga import (
    MemorySagaStore,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
)

pytest_plugins = ["conftest_pg"]

SQLITE_WRITERS = ("thread", "process", "inline")


def memory_kinds() -> list[StoreKind]:
    async def fresh() -> Any:
        return MemorySagaStore()

    return [
        # the write path (create/append), faults injectable
        StoreKind("memory", fresh, durable=False),
        # the in-process path (LiveJournal): cases without a fault only
        StoreKind("memory-live", fresh, durable=False, wrap=False),
    ]


def sqlite_kind(writer: str, where: Path) -> StoreKind:
    """``open()`` makes a new file in ``where``; ``reopen`` opens the same
    file again. (``synchronous="normal"``: what the oracle compares is the
    same with "full", which only adds the fsync a power loss needs.)"""
    clock = [1_000_000.0] if writer != "process" else None
    files = [0]

    async def on(path: Path) -> Any:
        if clock is None:  # the writer process stamps with its own time.time
            store = SQLiteSagaStore(path, writer=writer, synchronous="normal")
        else:
            store = SQLiteSagaStore(
                path, writer=writer, synchronous="normal", clock=lambda: clock[0]
            )
        await store.open()
        return store

    async def fresh() -> Any:
        files[0] += 1
        return await on(where / f"{writer}-{files[0]}.db")

    async def reopen(old: Any) -> Any:
        await old.close()
        return await on(where / f"{writer}-{files[0]}.db")

    return StoreKind(f"sqlite-{writer}", fresh, reopen, clock)


def postgres_kind(conninfo: str, schema: str) -> StoreKind:
    """``open()`` uses a new schema (``schema``, then ``schema`` and a
    number); ``reopen`` opens a new store (its own pool) on the same schema."""
    from fallback_saga.store.postgres import PostgresSagaStore

    schemas = [0]

    async def on(name: str) -> Any:
        store = PostgresSagaStore(conninfo, schema=name, min_size=1, max_size=4)
        await store.open()
        return store

    def name() -> str:  # the first is ``schema`` itself (the fixture drops it)
        return schema if schemas[0] == 1 else f"{schema}_{schemas[0]}"

    async def fresh() -> Any:
        schemas[0] += 1
        return await on(name())

    async def reopen(old: Any) -> Any:
        await old.close()
        return await on(name())

    return StoreKind("postgres", fresh, reopen)


# --------------------------------------------------------------------------- the comparison


ALLOWED: Counter[str] = Counter()  # runs that differed only as the contract allows


def _canonical_stretches(items: list[Any], in_group: Any) -> list[Any]:
    """``items`` with each stretch of consecutive group-member items sorted
    (a stable sort by step: each member's own items keep their order)."""
    out: list[Any] = []
    stretch: list[Any] = []
    for item in [*items, None]:
        if item is not None and in_group(item):
            stretch.append(item)
            continue
        out += sorted(stretch, key=lambda it: repr(it[1]))
        stretch = []
        if item is not None:
            out.append(item)
    return out


# SagaFailed's text names the steps whose compensation gave up in the order
# they were compensated: among a group's members, the order they ran in.
_GAVE_UP = re.compile(r"(compensation failed for )([^;'\"]+)")


def _canonical_text(value: Any, members: frozenset[str]) -> Any:
    """``value`` with each list of steps whose compensation gave up put in
    canonical order where it names consecutive group members."""
    if isinstance(value, str):
        def order(found: re.Match[str]) -> str:
            names = [("", name) for name in found.group(2).split(", ")]
            names = _canonical_stretches(names, lambda item: item[1] in members)
            return found.group(1) + ", ".join(name for _, name in names)

        return _GAVE_UP.sub(order, value)
    if isinstance(value, list | tuple):
        return type(value)(_canonical_text(item, members) for item in value)
    return value


def _canonical_outcome(outcome: tuple[Any, ...], members: frozenset[str]) -> tuple[Any, ...]:
    """A SagaFailed whose failed step is a group member that was cancelled
    (a resumed run, or a finished saga resumed, names the last failure the
    journal holds when every failure was a cancellation — the caller's:
    docs/mechanics.md, "Parallel groups", S8): which member's row comes last
    is the order among members, so any cancelled member will do."""
    outcome = _canonical_text(outcome, members)
    if outcome[0] == "failed" and outcome[2] in members and outcome[4] == "CancelledError":
        outcome = (*outcome[:2], "<a cancelled member>", *outcome[3:])
    return outcome


def canonical(seen: RunSeen) -> RunSeen:
    """What the contract fixes of a run: the same, with the order among a
    Parallel group's members left out (and so the order in which an error's
    text lists those whose compensation gave up)."""
    members = seen.members
    trace = _canonical_stretches(seen.trace, lambda call: call[1] in members)
    journals = {}
    for saga_id, journal in seen.journals.items():
        if journal[0] == "absent":
            journals[saga_id] = journal
            continue
        *head, rows = journal
        rows = _canonical_stretches(rows, lambda row: row[1] in members)
        journals[saga_id] = (*head, _canonical_text(rows, members))
    return RunSeen(trace, _canonical_outcome(seen.outcome, members), journals, members,
                   seen.children, _canonical_outcome(seen.replayed, members))


def _compare(run: int, b: RunSeen, o: RunSeen) -> list[str]:
    found = []
    if b.trace != o.trace:
        found.append(f"run {run}: participant calls\n  {o.trace}\n  memory: {b.trace}")
    if b.outcome != o.outcome:
        found.append(f"run {run}: outcome\n  {o.outcome}\n  memory: {b.outcome}")
    if b.replayed != o.replayed:
        found.append(f"run {run}: resumed once finished\n  {o.replayed}\n  memory: {b.replayed}")
    for saga_id in sorted(set(b.journals) | set(o.journals)):
        got, want = o.journals.get(saga_id), b.journals.get(saga_id)
        if got != want:
            found.append(f"run {run}: journal of {saga_id}\n  {got}\n  memory: {want}")
    return found


def differences(base: list[RunSeen], other: list[RunSeen], kind: str = "") -> list[str]:
    """What ``other`` (a store's runs of a case) says that ``base`` (the
    memory store's) does not, beyond what the contract leaves open inside a
    ``Parallel`` group: the order among its members, and — when a member
    fails for good and the group cancels the others — how far each of the
    others got (docs/mechanics.md, "Parallel groups": "the group cancels the
    members still running"; where the cancellation meets each is
    scheduling: the in-process store's members run on without a journal
    write to wait for). What the members' calls then differ in changes what
    follows (a member that got further is compensated, and may leave the
    saga or its parent FAILED), so such a run is held to the model alone
    (the runner checks every store's run against it) and to the memory
    store outside the groups' members: every other participant call."""
    found: list[str] = []
    if len(base) != len(other):
        return [f"{len(other)} runs, the memory store {len(base)}"]
    for run, (b, o) in enumerate(zip(base, other, strict=True)):
        if (b.trace, b.outcome, b.journals, b.replayed) == (
            o.trace, o.outcome, o.journals, o.replayed
        ):
            continue
        cb, co = canonical(b), canonical(o)
        if (cb.trace, cb.outcome, cb.journals, cb.replayed) == (
            co.trace, co.outcome, co.journals, co.replayed
        ):
            ALLOWED[f"{kind}: the order among a group's members"] += 1
            continue
        outside_b = [call for call in b.trace if call[1] not in b.members]
        outside_o = [call for call in o.trace if call[1] not in o.members]
        if cb.trace != co.trace and outside_b == outside_o:
            ALLOWED[f"{kind}: how far a group's members got before it stopped"] += 1
            continue
        found += _compare(run, cb, co)
    return found


def faulty(case: Case) -> bool:
    return case.crash_after is not None or case.cancel_after is not None


async def compare_case(
    case: Case, kinds: list[StoreKind], boxes: dict[str, list[Any]]
) -> list[str]:
    """Runs ``case`` on every kind (each checked against the model); returns
    the differences from the memory store, one line per store and aspect."""
    seen: dict[str, list[RunSeen]] = {}
    for kind in kinds:
        if not kind.wrap and faulty(case):
            continue
        runs: list[RunSeen] = []
        try:
            await run_case_on(case, kind, boxes[kind.name], runs)
        except AssertionError as error:
            raise AssertionError(f"{kind.name}: seed {case.seed}: {case}\n{error}") from None
        seen[kind.name] = runs
    base = seen["memory"]
    found = []
    for name, runs in seen.items():
        for difference in differences(base, runs, name):
            found.append(f"{name}: {difference}")
    return found


class Stores:
    """One store object per kind for a batch of cases (sagas ids differ)."""

    def __init__(self, kinds: list[StoreKind]) -> None:
        self.kinds = kinds
        self.boxes: dict[str, list[Any]] = {}

    async def __aenter__(self) -> Stores:
        for kind in self.kinds:
            self.boxes[kind.name] = [await kind.open()]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for box in self.boxes.values():
            close = getattr(box[0], "close", None)
            if close is not None:
                await close()


async def check_seeds(seeds: range, kinds: list[StoreKind], *, crash: bool) -> int:
    """Returns how many cases were compared."""
    compared = 0
    async with Stores(kinds) as stores:
        for seed in seeds:
            case = await make_case(seed, durable=True, crash=crash)
            found = await compare_case(case, kinds, stores.boxes)
            assert not found, f"seed {seed} ({crash=}): {case}\n" + "\n".join(found)
            compared += 1
    return compared


# --------------------------------------------------------------------------- the tests


@pytest.fixture
def sqlite_kinds(tmp_path: Path) -> list[StoreKind]:
    return [sqlite_kind(writer, tmp_path) for writer in SQLITE_WRITERS]


SEEDS = 40  # per test and variant; the file runs in about a minute


@pytest.mark.parametrize("crash", [False, True], ids=["no-crash", "crash-resume"])
async def test_S13_S14_every_sqlite_writer_journals_and_resumes_as_the_memory_store_does(
    sqlite_kinds: list[StoreKind], crash: bool
) -> None:
    start = 40_000 + (10_000 if crash else 0)
    compared = await check_seeds(
        range(start, start + SEEDS), memory_kinds() + sqlite_kinds, crash=crash
    )
    assert compared == SEEDS


@pytest.mark.parametrize("crash", [False, True], ids=["no-crash", "crash-resume"])
async def test_S13_S14_postgres_journals_and_resumes_as_the_memory_store_does(
    pg_conninfo: str, pg_schema: str, crash: bool
) -> None:
    start = 60_000 + (10_000 if crash else 0)
    kinds = [*memory_kinds(), postgres_kind(pg_conninfo, pg_schema)]
    compared = await check_seeds(range(start, start + SEEDS), kinds, crash=crash)
    assert compared == SEEDS


# --------------------------------------------------------------------------- divergences found


@dataclasses.dataclass
class _Order(SagaContext):
    order_id: str


class _Reserve(SagaStepHandler[_Order, str]):
    async def act(self, ctx: _Order) -> str:
        return "reserved"

    async def compensate(self, ctx: _Order) -> None:
        return None


class _Hold(SagaStepHandler[_Order, str]):
    """The child's first step: its compensation never succeeds."""

    async def act(self, ctx: _Order) -> str:
        return "held"

    async def compensate(self, ctx: _Order) -> None:
        raise RuntimeError("the hold cannot be released")


class _Charge(SagaStepHandler[_Order, str]):
    """The child's second step: its caller is cancelled while it runs."""

    victim: asyncio.Task[Any] | None = None

    async def act(self, ctx: _Order) -> str:
        assert _Charge.victim is not None
        _Charge.victim.cancel()
        await asyncio.sleep(0)  # the cancellation lands here
        return "charged"

    async def compensate(self, ctx: _Order) -> None:
        return None


class _Child(Saga[_Order]):
    steps: ClassVar[list[Any]] = [_Hold, _Charge]


class _Parent(Saga[_Order]):
    steps: ClassVar[list[Any]] = [
        _Reserve, SubSaga(_Child, context=lambda parent: _Order(parent.order_id), name="Pay"),
    ]


async def _journal_of_a_cancelled_parent(store: Any) -> list[tuple[Any, ...]]:
    saga = _Parent(store=store, compensation_retry=RetryPolicy(attempts=1))
    task = asyncio.create_task(saga.run(_Order("o-1"), saga_id="o-1"))
    _Charge.victim = task
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await store.load("o-1")
    assert record.status is SagaStatus.FAILED
    return [(e.position, e.step, e.branch, e.action, e.status.value, e.attempt, e.error)
            for e in record.history]


async def test_S13_a_child_left_FAILED_under_a_cancelled_parent_is_journaled_by_every_store(
    tmp_path: Path,
) -> None:
    """The parent's step ran a child that its cancellation left FAILED (the
    child's unwinding gave up): the parent's journal says so with a
    compensation row FAILED for that step (``Execution.leave_undone``) — on
    the default store too, whose lean run (``run_plain``) keeps a compact
    journal, where the row was lost (the step's STARTED row is a clock
    reading there, not a tuple to take the position from)."""
    memory = await _journal_of_a_cancelled_parent(MemorySagaStore())
    async with SQLiteSagaStore(tmp_path / "sagas.db") as sqlite:
        durable = await _journal_of_a_cancelled_parent(sqlite)
    assert ("compensate", "failed") in {(row[3], row[4]) for row in durable if row[1] == "Pay"}
    assert memory == durable


# --------------------------------------------------------------------------- a longer hunt


def _hunt_kinds(names: list[str], where: Path, conninfo: str | None) -> list[StoreKind]:
    kinds = memory_kinds()
    for name in names:
        if name.startswith("sqlite-"):
            writer = name.removeprefix("sqlite-")
            kinds.append(sqlite_kind(writer, where))
        elif name == "postgres":
            assert conninfo is not None
            kinds.append(postgres_kind(conninfo, f"hunt_{os.getpid()}"))
    return kinds


HUNG_AFTER = 120.0  # seconds: a case takes well under one


def _stacks() -> str:
    """Where every task of the loop is waiting (for a case that hung)."""
    import io

    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    return out.getvalue()


async def _hunt(start: int, count: int, kinds: list[StoreKind]) -> AsyncIterator[str]:
    chunk = 50
    for first in range(start, start + count, chunk):
        seeds = range(first, min(first + chunk, start + count))
        for crash in (False, True):
            async with Stores(kinds) as stores:
                for seed in seeds:
                    case = await make_case(seed, durable=True, crash=crash)
                    task = asyncio.ensure_future(compare_case(case, kinds, stores.boxes))
                    if not (await asyncio.wait({task}, timeout=HUNG_AFTER))[0]:
                        yield f"HUNG seed {seed} crash={crash}: {case}\n{_stacks()}"
                        task.cancel()
                        return
                    try:
                        found = task.result()
                    except AssertionError as error:
                        yield f"MODEL seed {seed} crash={crash}: {error}"
                        continue
                    if found:
                        yield f"DIFF seed {seed} crash={crash}: {case}\n" + "\n".join(found)
            yield f"done {seeds.stop - start} crash={crash} allowed={dict(ALLOWED)}"


if __name__ == "__main__":
    import logging
    import sys

    import fallback_saga

    exit_unless_this_trees_package()
    fallback_saga.set_testing(True)
    logging.getLogger("fallback_saga").setLevel(logging.CRITICAL)
    start, count = int(sys.argv[1]), int(sys.argv[2])
    names = sys.argv[3:] or ["sqlite-thread", "sqlite-process", "sqlite-inline"]

    async def main(conninfo: str | None) -> None:
        with tempfile.TemporaryDirectory() as where:
            kinds = _hunt_kinds(names, Path(where), conninfo)
            async for line in _hunt(start, count, kinds):
                print(line, flush=True)

    from pg_cluster import hunt_conninfos

    for conninfo in hunt_conninfos(names):
        asyncio.run(main(conninfo))
