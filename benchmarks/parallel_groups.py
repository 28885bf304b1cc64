"""Parallel groups: one ``Parallel`` group of N members against the same N steps in a line.

    python benchmarks/parallel_groups.py             # full run, about two minutes
    python benchmarks/parallel_groups.py --quick     # seconds; CI smoke run, numbers meaningless
    python benchmarks/parallel_groups.py --profile   # where an in-memory group's time goes
    python benchmarks/parallel_groups.py --versus /tmp/base/fallback_saga ...  # A/B, in memory
    python benchmarks/compare.py --only parallel     # the same measurement as a compare.py section

The claim checked: "a group of N branches costs close to N plain steps of
overhead, not a task per journal write".

What runs. A flat dataclass context with eight string fields ``f0`` … ``f7``
(and ``order_id``); step ``Step<i>`` does no I/O: its ``act`` sets ``f<i>`` to
``"done"`` and returns the field's name, its ``compensate`` clears it. So the
members of a group write disjoint fields, as they must, and each member's
write is found by the diff and merged. For N = 3 and N = 8:

* **straight N** — ``steps = [Step0, …, Step<N-1>]``;
* **group N** — ``steps = [Parallel(Step0, …, Step<N-1>)]``;
* **bare loop N** — ``for step in steps: await step.act(ctx)`` (the floor of
  ``compare.py``: no snapshot, no journal, no result objects);
* **bare gather N** — ``await asyncio.gather(*(step.act(ctx) for step in steps))``:
  the floor of running N coroutines as N tasks, which a group must do.

In memory: the default store, one saga object per kind reused for the whole
run after 10,000 sagas have filled its bounded store (as ``compare.py``).
Durable: ``SQLiteSagaStore(path, synchronous="full")``, sequential sagas, a
fresh file per batch, warmed up with 3 sagas; the file is read back after
the batch and must hold every saga as completed; the store's counters give
the writes and commits per saga.

Method as ``compare.py``: one process, one loop, one timed batch per kind per
round, the starting kind rotating every round, ``gc.collect()`` before each
batch, batch length calibrated per kind; medians over the rounds. The outcome
of every batch is checked (COMPLETED, the N fields set and no other, N results
in declared order).

Reported per N: µs per saga; ``group / straight`` (ratio of the medians, and
the median of the per-round ratios); the overhead per step or member above the
bare loop, ``(t - t_bare_loop) / N``; the group's cost above the bare gather
per member, ``(t_group - t_bare_gather) / N`` — what the library adds to the
tasks asyncio needs anyway; the tasks made per saga (counted untimed, through
a counting task factory); durable: the store's writes and commits per saga.

``--profile``: cProfile of the in-memory group of 8, its time sorted into
categories (asyncio, diffing, working copies, merging, the executor); the
per-member building blocks timed bare; and the levers the library adopted,
each turned off in this process only and measured in interleaved rounds (the
flat-context copy, diff and merge; plain members run without ``try_branch``).

``--versus DIR [DIR ...]``: the in-memory straight and group sagas on this
tree and on other copies of the package (say ``git archive <commit>
fallback_saga | tar -x -C /tmp/base``), side by side in one process:
interleaved rounds, CPU time of the thread, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(HERE.parent)):  # this directory's helpers; the working tree's package
    if p not in sys.path:
        sys.path.insert(1, p)

import durable  # noqa: E402
import workloads  # noqa: E402

from fallback_saga import Parallel, Saga, SagaContext, SagaStatus  # noqa: E402

T = TypeVar("T")

N_VALUES = (3, 8)
FIELDS = tuple(f"f{i}" for i in range(8))
STRAIGHT, GROUP, BARE_LOOP, BARE_GATHER = "straight", "group", "bare loop", "bare gather"
KINDS = (STRAIGHT, GROUP, BARE_LOOP, BARE_GATHER)
DURABLE_WARM_UP = 3


# ---------------------------------------------------------------------------
# the sagas
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class GCtx(SagaContext):
    order_id: str
    f0: str | None = None
    f1: str | None = None
    f2: str | None = None
    f3: str | None = None
    f4: str | None = None
    f5: str | None = None
    f6: str | None = None
    f7: str | None = None


@dataclasses.dataclass
class BareGCtx:
    order_id: str
    f0: str | None = None
    f1: str | None = None
    f2: str | None = None
    f3: str | None = None
    f4: str | None = None
    f5: str | None = None
    f6: str | None = None
    f7: str | None = None


def _step_class(i: int) -> type:
    field = FIELDS[i]

    async def act(self: Any, context: Any) -> str:
        setattr(context, field, "done")
        return field

    async def compensate(self: Any, context: Any) -> None:
        setattr(context, field, None)

    # The same class serves the sagas and the bare baselines: the same step bodies.
    return type(f"Step{i}", (), {"act": act, "compensate": compensate})


STEPS = tuple(_step_class(i) for i in range(len(FIELDS)))


def saga_class(n: int, grouped: bool) -> type[Saga[GCtx]]:
    """``Straight<n>`` (n steps) or ``Group<n>`` (one Parallel group of n members)."""
    members = STEPS[:n]
    body: list[Any] = [Parallel(*members)] if grouped else list(members)
    name = f"{'Group' if grouped else 'Straight'}{n}"
    cls = types.new_class(name, (Saga[GCtx],), exec_body=lambda ns: ns.update(steps=body))
    return cls


def saga_check(n: int) -> Callable[[Any], None]:
    """Asserts an ``(ctx, SagaResult)`` outcome of a straight or grouped saga of n."""
    names = [f"Step{i}" for i in range(n)]
    expected = ["done"] * n + [None] * (len(FIELDS) - n)

    def check(outcome: Any) -> None:
        ctx, result = outcome
        assert result.status is SagaStatus.COMPLETED, result.status
        assert result.context is ctx
        assert [getattr(ctx, f) for f in FIELDS] == expected, ctx
        assert [r.step_name for r in result.results] == names, result.results
        assert [r.response for r in result.results] == list(FIELDS[:n]), result.results

    return check


def bare_check(n: int) -> Callable[[Any], None]:
    expected = ["done"] * n + [None] * (len(FIELDS) - n)

    def check(outcome: Any) -> None:
        ctx, responses = outcome
        assert [getattr(ctx, f) for f in FIELDS] == expected, ctx
        assert list(responses) == list(FIELDS[:n]), responses

    return check


def build(n: int) -> dict[str, workloads.Workload]:
    """The four in-memory kinds for n steps, as ``workloads.Workload``s."""
    steps = [cls() for cls in STEPS[:n]]

    def saga_runner(grouped: bool) -> Callable[[], workloads.SagaRunner]:
        def new_runner() -> workloads.SagaRunner:
            saga = saga_class(n, grouped)()

            async def run_one() -> Any:
                ctx = GCtx(order_id="o-1")
                return ctx, await saga.run(ctx)

            return run_one

        return new_runner

    def bare_loop() -> workloads.SagaRunner:
        async def run_one() -> Any:
            ctx = BareGCtx(order_id="o-1")
            responses = []
            for step in steps:
                responses.append(await step.act(ctx))
            return ctx, responses

        return run_one

    def bare_gather() -> workloads.SagaRunner:
        async def run_one() -> Any:
            ctx = BareGCtx(order_id="o-1")
            return ctx, await asyncio.gather(*(step.act(ctx) for step in steps))

        return run_one

    fill = workloads.DEFAULT_RETENTION
    Workload = workloads.Workload
    return {
        STRAIGHT: Workload(f"{STRAIGHT}{n}", saga_runner(False), saga_check(n), fill=fill),
        GROUP: Workload(f"{GROUP}{n}", saga_runner(True), saga_check(n), fill=fill),
        BARE_LOOP: Workload(f"{BARE_LOOP}{n}", bare_loop, bare_check(n)),
        BARE_GATHER: Workload(f"{BARE_GATHER}{n}", bare_gather, bare_check(n)),
    }


# ---------------------------------------------------------------------------
# timing helpers (as compare.py's)
# ---------------------------------------------------------------------------


async def timed_sagas(run_one: Callable[[], Awaitable[Any]], n: int) -> tuple[float, Any]:
    outcome = None
    t0 = time.perf_counter()
    for _ in range(n):
        outcome = await run_one()
    return time.perf_counter() - t0, outcome


async def calibrate(batch: Callable[[int], Awaitable[float]], seconds: float, floor: int) -> int:
    """N such that ``batch(N)`` lasts about ``seconds`` (doubles as a warm-up)."""
    n = 4
    while True:
        elapsed = await batch(n)
        if elapsed >= seconds / 4 or n >= 10_000_000:
            break
        n *= 2
    return max(floor, int(seconds / (elapsed / n)))


def rotated(items: list[T], r: int) -> list[T]:
    k = r % len(items)
    return items[k:] + items[:k]


@contextlib.contextmanager
def counting_tasks() -> Iterator[list[int]]:
    """Counts the tasks made through the running loop's ``create_task`` while
    inside (``[count]``). For counting only, never while timing: the factory
    is Python code. (Tasks made with ``asyncio.Task(...)`` directly — the
    library's eager ones on Python 3.12+ — are not seen.)"""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    made = [0]

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made[0] += 1
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(previous)


def paired_median(a: Iterable[float], b: Iterable[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------
# in memory
# ---------------------------------------------------------------------------


async def bench_memory(rounds: int, batch_seconds: float, fill: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in N_VALUES:
        table = build(n)
        runners: dict[str, workloads.SagaRunner] = {}
        sizes: dict[str, int] = {}
        for kind, wl in table.items():
            wl.check(await wl.new_runner()())
            run_one = runners[kind] = wl.new_runner()
            if wl.fill and fill:
                await timed_sagas(run_one, wl.fill)  # the steady state: store full

            async def batch(size: int, run_one: workloads.SagaRunner = run_one) -> float:
                return (await timed_sagas(run_one, size))[0]

            sizes[kind] = await calibrate(batch, batch_seconds, floor=20)
        per_round: dict[str, list[float]] = {kind: [] for kind in table}
        for r in range(rounds):
            for kind in rotated(list(table), r):
                gc.collect()
                elapsed, outcome = await timed_sagas(runners[kind], sizes[kind])
                table[kind].check(outcome)
                per_round[kind].append(elapsed / sizes[kind] * 1e6)
        us = {kind: statistics.median(v) for kind, v in per_round.items()}
        tasks: dict[str, float] = {}
        for kind in table:  # untimed
            with counting_tasks() as made:
                await timed_sagas(runners[kind], 10)
            tasks[kind] = made[0] / 10
        out[str(n)] = {
            "us_per_saga": us,
            "tasks_per_saga": tasks,
            "batch_size": sizes,
            "rounds_us_per_saga": per_round,
            "group_over_straight": us[GROUP] / us[STRAIGHT],
            "group_over_straight_paired": paired_median(per_round[GROUP], per_round[STRAIGHT]),
            "straight_overhead_per_step_us": (us[STRAIGHT] - us[BARE_LOOP]) / n,
            "group_overhead_per_member_us": (us[GROUP] - us[BARE_LOOP]) / n,
            "group_over_gather_per_member_us": (us[GROUP] - us[BARE_GATHER]) / n,
            "gather_over_loop_per_task_us": (us[BARE_GATHER] - us[BARE_LOOP]) / n,
        }
    return out


# ---------------------------------------------------------------------------
# durable, on SQLite (synchronous="full"), sequential
# ---------------------------------------------------------------------------


async def durable_batch(
    n: int, grouped: bool, path: str, count: int
) -> tuple[float, int, int, float]:
    """``count`` sequential sagas on a fresh file: (seconds, store writes, commits,
    tasks per saga — counted during the untimed warm-up)."""
    from fallback_saga import SQLiteSagaStore

    store = SQLiteSagaStore(path, synchronous="full")
    await store.open()  # file and schema created before timing
    check = saga_check(n)
    try:
        saga = saga_class(n, grouped)(store=store)
        with counting_tasks() as made:
            for _ in range(DURABLE_WARM_UP):
                ctx = GCtx(order_id="o-1")
                check((ctx, await saga.run(ctx)))
        before = store.stats
        gc.collect()
        t0 = time.perf_counter()
        outcome = None
        for _ in range(count):
            ctx = GCtx(order_id="o-1")
            outcome = ctx, await saga.run(ctx)
        elapsed = time.perf_counter() - t0
        after = store.stats
    finally:
        await store.close()
    check(outcome)
    done = durable.count_completed(path, "SELECT COUNT(*) FROM sagas WHERE status = 'completed'")
    assert done == DURABLE_WARM_UP + count, f"{done} completed sagas in the file"
    durable.remove_db(path)
    tasks = made[0] / DURABLE_WARM_UP
    return elapsed, after.writes - before.writes, after.commits - before.commits, tasks


async def bench_durable(rounds: int, batch_seconds: float, tmpdir: str) -> dict[str, Any]:
    configs = [(n, grouped) for n in N_VALUES for grouped in (False, True)]
    batches = 0

    async def batch(n: int, grouped: bool, count: int) -> tuple[float, int, int, float]:
        nonlocal batches
        batches += 1
        path = os.path.join(tmpdir, f"{'group' if grouped else 'straight'}{n}-{batches}.db")
        return await durable_batch(n, grouped, path, count)

    sizes: dict[tuple[int, bool], int] = {}
    for config in configs:

        async def timed(count: int, config: tuple[int, bool] = config) -> float:
            return (await batch(*config, count))[0]

        sizes[config] = await calibrate(timed, batch_seconds, floor=5)
    per_round: dict[tuple[int, bool], list[float]] = {c: [] for c in configs}
    writes = dict.fromkeys(configs, 0)
    commits = dict.fromkeys(configs, 0)
    tasks = dict.fromkeys(configs, 0.0)
    for r in range(rounds):
        for config in rotated(configs, r):
            elapsed, w, c, t = await batch(*config, sizes[config])
            per_round[config].append(elapsed / sizes[config] * 1e6)
            writes[config] += w
            commits[config] += c
            tasks[config] = t
    out: dict[str, Any] = {"tmpdir": tmpdir}
    for n in N_VALUES:
        entry: dict[str, Any] = {}
        for grouped in (False, True):
            config = (n, grouped)
            sagas = sizes[config] * rounds
            entry[GROUP if grouped else STRAIGHT] = {
                "us_per_saga": statistics.median(per_round[config]),
                "batch_size": sizes[config],
                "writes_per_saga": writes[config] / sagas,
                "commits_per_saga": commits[config] / sagas,
                "tasks_per_saga": tasks[config],
                "rounds_us_per_saga": per_round[config],
            }
        entry["group_over_straight"] = (
            entry[GROUP]["us_per_saga"] / entry[STRAIGHT]["us_per_saga"]
        )
        entry["group_over_straight_paired"] = paired_median(
            per_round[(n, True)], per_round[(n, False)]
        )
        out[str(n)] = entry
    return out


# ---------------------------------------------------------------------------
# both, and the report
# ---------------------------------------------------------------------------


async def bench(
    *,
    rounds: int,
    batch_seconds: float,
    durable_rounds: int,
    durable_batch_seconds: float,
    tmpdir: str | None,
    fill: bool,
) -> dict[str, Any]:
    res: dict[str, Any] = {"memory": await bench_memory(rounds, batch_seconds, fill)}
    # On the repository's filesystem by default, never a tmpfs where fsync is free.
    where = tempfile.mkdtemp(prefix=".parallel-", dir=tmpdir or HERE)
    try:
        res["durable"] = await bench_durable(durable_rounds, durable_batch_seconds, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    res["rounds"], res["durable_rounds"] = rounds, durable_rounds
    return res


def report(res: dict[str, Any]) -> str:
    lines = [
        f"\nParallel groups, in memory: µs per saga, median of {res['rounds']} interleaved rounds",
        f"{'N':>2} {'straight':>9} {'group':>8} {'bare loop':>10} {'bare gather':>12} "
        f"{'group/straight':>15} {'per step':>9} {'per member':>11} {'member-task':>12} "
        f"{'tasks s|g':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for n, e in res["memory"].items():
        us, tasks = e["us_per_saga"], e["tasks_per_saga"]
        lines.append(
            f"{n:>2} {us[STRAIGHT]:>9.1f} {us[GROUP]:>8.1f} {us[BARE_LOOP]:>10.1f} "
            f"{us[BARE_GATHER]:>12.1f} "
            f"{e['group_over_straight']:>6.2f}x ({e['group_over_straight_paired']:.2f}x) "
            f"{e['straight_overhead_per_step_us']:>9.2f} "
            f"{e['group_overhead_per_member_us']:>11.2f} "
            f"{e['group_over_gather_per_member_us']:>12.2f} "
            f"{tasks[STRAIGHT]:>4g} | {tasks[GROUP]:<4g}"
        )
    lines += [
        "group/straight: ratio of the medians (median of the per-round ratios in brackets);",
        "per step, per member: (t - bare loop) / N; member-task: (group - bare gather) / N,",
        "the group's cost per member above the N tasks that asyncio needs anyway;",
        "tasks: made through the loop's create_task per saga, straight | group (untimed count)",
        "",
        "Durable, SQLite synchronous=full, sequential: µs per saga, median of "
        f"{res['durable_rounds']} interleaved rounds, a fresh file per batch",
        f"{'N':>2} {'straight':>9} {'group':>8} {'group/straight':>15} "
        f"{'writes/saga s|g':>16} {'commits/saga s|g':>17} {'tasks s|g':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    for n, e in res["durable"].items():
        if n == "tmpdir":
            continue
        s, g = e[STRAIGHT], e[GROUP]
        lines.append(
            f"{n:>2} {s['us_per_saga']:>9.0f} {g['us_per_saga']:>8.0f} "
            f"{e['group_over_straight']:>6.2f}x ({e['group_over_straight_paired']:.2f}x) "
            f"{s['writes_per_saga']:>7.1f} | {g['writes_per_saga']:<6.1f} "
            f"{s['commits_per_saga']:>8.1f} | {g['commits_per_saga']:<6.1f} "
            f"{s['tasks_per_saga']:>4g} | {g['tasks_per_saga']:<4g}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# --profile: where an in-memory group's time goes
# ---------------------------------------------------------------------------

def category_of() -> Callable[[str, int, str], str]:
    """Sorts a cProfile entry ``(file, line, function)`` by what it does."""
    snapshots = {"working_copy", "_install", "_shell", "take_snapshot", "_copy_dict", "_copy",
                 "flat_state", "member_snapshot", "step_snapshot"}

    def category(filename: str, line: int, name: str) -> str:
        if "/asyncio/" in filename or "_weakrefset" in filename or "_asyncio." in name \
                or "_contextvars" in name or filename.endswith("shielding.py"):
            return "asyncio: tasks (own_task), futures, callbacks, the loop"
        if name in {"changed_fields", "flat_changes", "first_difference", "_difference"}:
            return "diffing the changed fields (changed_fields)"
        if filename.endswith("context.py") and name in snapshots:
            return "working copies and snapshots"
        if name in {"write_fields", "_slot_names", "_slot_setters"}:
            return "merging into the saga's context (write_fields)"
        if filename.endswith("group_run.py"):
            return "group machinery (group_run: run_group, run_member, Lane, LaneCursor)"
        if "fallback_saga" in filename:
            return "the rest of the executor (try_branch, run_all, results, journal tuples)"
        if filename.endswith("parallel_groups.py"):
            return "step bodies and the benchmark loop"
        return "other built-ins (isinstance, object.__new__, dict methods, ...)"

    return category


def categorize(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Total tottime per category, largest first."""
    category = category_of()
    totals: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_, _, tottime, _, _) in raw.items():
        label = category(filename, line, name)
        totals[label] = totals.get(label, 0.0) + tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])


def primitives(n: int) -> dict[str, float]:
    """µs per call of what a group does per member, measured bare (no profiler)."""
    from fallback_saga.context import (
        changed_fields,
        flat_changes,
        take_snapshot,
        working_copy,
        write_fields,
    )

    ctx = GCtx(order_id="o-1")
    base = take_snapshot(ctx)
    state = base[1]
    copy = working_copy(base)
    copy.f0 = "done"
    assert changed_fields(base, copy) == flat_changes(state, copy.__dict__) == {"f0": "done"}
    new = object.__new__

    def flat_copy() -> Any:
        shell = new(GCtx)
        shell.__dict__.update(state)
        return shell

    calls: dict[str, Callable[[], Any]] = {
        "take_snapshot (the group's base)": lambda: take_snapshot(ctx),
        "working_copy (a member's copy, any context)": lambda: working_copy(base),
        "  flat context: a bare instance, its dict updated": flat_copy,
        "changed_fields (9 fields, 1 changed; any context)": lambda: changed_fields(base, copy),
        "  flat context: flat_changes": lambda: flat_changes(state, copy.__dict__),
        "write_fields (merge 1 field; any context)": lambda: write_fields(ctx, {"f0": "done"}),
        "  flat context: a dict update": lambda: ctx.__dict__.update({"f0": "done"}),
    }
    out: dict[str, float] = {}
    for label, call in calls.items():
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(20_000):
                call()
            best = min(best, (time.perf_counter() - t0) / 20_000 * 1e6)
        out[label] = best
    return out


@contextlib.contextmanager
def generic_copies() -> Iterator[None]:
    """The flat-context path off (this process only): every member's copy,
    diff and merge as for any context (``working_copy``, ``changed_fields``,
    ``write_fields``)."""
    import fallback_saga.group_run as group_run

    original = vars(group_run)["flat_state"]
    setattr(group_run, "flat_state", lambda snapshot: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(group_run, "flat_state", original)  # noqa: B010


def lever_variants() -> dict[str, Callable[[Any], contextlib.AbstractContextManager[None]]]:
    """The adopted levers, each turned off in this process (``saga`` in hand)."""

    @contextlib.contextmanager
    def through_try_branch(saga: Any) -> Iterator[None]:
        # Plain members inlined only for an in-process store with no step
        # listener (settings.inline): off, every member goes through try_branch.
        settings = saga._settings
        settings.inline = False
        try:
            yield
        finally:
            settings.inline = True

    return {
        "as is": lambda saga: contextlib.nullcontext(),
        "generic copy, diff and merge (flat path off)": lambda saga: generic_copies(),
        "every member through try_branch (inline path off)": through_try_branch,
    }


async def lever(n: int, rounds: int, count: int) -> dict[str, float]:
    """group n as it is and under each of ``lever_variants()`` (patched in this
    process only), in interleaved rounds: median µs per saga of each."""
    saga = saga_class(n, True)()

    async def run_one() -> Any:
        ctx = GCtx(order_id="o-1")
        return ctx, await saga.run(ctx)

    check = saga_check(n)
    await timed_sagas(run_one, workloads.DEFAULT_RETENTION)  # the steady state
    variants = lever_variants()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in rotated(list(variants), r):
            with variants[name](saga):
                gc.collect()
                elapsed, outcome = await timed_sagas(run_one, count)
            check(outcome)
            times[name].append(elapsed / count * 1e6)
    return {name: statistics.median(v) for name, v in times.items()}


def profile(n: int = 8, sagas: int = 5_000, top: int = 20, quick: bool = False) -> None:
    run_one = build(n)[GROUP].new_runner()
    check = saga_check(n)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(timed_sagas(run_one, 1_000 if quick else 10_000))  # warm, fill
        prof = cProfile.Profile()
        prof.enable()
        _, outcome = loop.run_until_complete(timed_sagas(run_one, sagas))
        prof.disable()
        check(outcome)
        stats = pstats.Stats(prof)
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"=== cProfile: group of {n}, {sagas} sagas, {total / sagas * 1e6:.0f} µs per saga "
              "under the profiler (tottime by category) ===")
        for label, seconds in categorize(stats):
            print(f"  {seconds / total:6.1%}  {seconds / sagas * 1e6:7.2f} µs/saga  {label}")
        print(f"\n=== the {top} costliest functions (tottime) ===")
        stats.sort_stats("tottime").print_stats(top)
        print("=== per call, no profiler (best of 7 x 20,000) ===")
        for label, us in primitives(n).items():
            print(f"  {us:6.2f} µs  {label}")
        rounds, count = (3, 300) if quick else (15, 5_000)
        print(f"\n=== levers, patched in this process: µs per saga, median of {rounds} "
              f"interleaved rounds (Python {platform.python_version()}) ===")
        for size in N_VALUES:
            got = loop.run_until_complete(lever(size, rounds, count))
            as_is = got["as is"]
            for name, us in got.items():
                saved = "" if name == "as is" else (
                    f"  {us / as_is - 1:+.0%}, {(us - as_is) / size:+.2f} µs per member "
                    "without it"
                )
                print(f"  group of {size}: {us:7.1f}  {name}{saved}")
    finally:
        loop.close()


# ---------------------------------------------------------------------------
# --versus: this tree against another copy of the package, side by side
# ---------------------------------------------------------------------------


def lib_sagas(lib: Any, n: int, grouped: bool) -> Callable[[], workloads.SagaRunner]:
    """``Straight<n>``/``Group<n>`` built on the package module ``lib`` (this
    tree's or the baseline's): the same steps, a context class of its own."""
    ctx_cls = dataclasses.make_dataclass(
        "GCtx", [("order_id", str)] + [(f, "str | None", dataclasses.field(default=None))
                                       for f in FIELDS],
        bases=(lib.SagaContext,),
    )
    members = STEPS[:n]
    body: list[Any] = [lib.Parallel(*members)] if grouped else list(members)
    name = f"{'Group' if grouped else 'Straight'}{n}"
    cls = types.new_class(name, (lib.Saga[ctx_cls],), exec_body=lambda ns: ns.update(steps=body))

    def new_runner() -> workloads.SagaRunner:
        saga = cls()

        async def run_one() -> Any:
            ctx = ctx_cls(order_id="o-1")
            return ctx, await saga.run(ctx)

        return run_one

    return new_runner


def lib_check(n: int) -> Callable[[Any], None]:
    names = [f"Step{i}" for i in range(n)]
    expected = ["done"] * n + [None] * (len(FIELDS) - n)

    def check(outcome: Any) -> None:
        ctx, result = outcome
        assert result.status.value == "completed", result.status
        assert [getattr(ctx, f) for f in FIELDS] == expected, ctx
        assert [r.step_name for r in result.results] == names, result.results
        assert [r.response for r in result.results] == list(FIELDS[:n]), result.results

    return check


async def versus(
    baselines: list[Path], rounds: int, count: int, fill: int = workloads.DEFAULT_RETENTION
) -> str:
    """Straight and group, N = 3 and 8, on this tree and on each of
    ``baselines`` (package folders, imported as ``fallback_saga_baseline``,
    ``..._baseline1``, ...): interleaved rounds with a rotating start,
    ``gc.collect()`` before each batch of ``count`` sagas, CPU time of this
    thread (``time.thread_time``: other jobs on the machine do not count),
    medians. The first baseline is the reference of the last column. Each
    saga object first runs ``fill`` sagas (the steady state: its store full)."""
    from package_copies import import_copy

    import fallback_saga

    libs: dict[str, Any] = {"this": fallback_saga}
    tmp = Path(tempfile.mkdtemp(prefix="pg-versus-"))
    try:
        for i, folder in enumerate(baselines):
            name = "fallback_saga_baseline" + (str(i) if i else "")
            module = import_copy(folder, tmp, name)
            libs[f"base{i}" if len(baselines) > 1 else "base"] = module
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reference = list(libs)[1]
    configs = [(lib, n, grouped) for lib in libs for n in N_VALUES for grouped in (False, True)]
    runners: dict[tuple[str, int, bool], workloads.SagaRunner] = {}
    for config in configs:
        lib, n, grouped = config
        run_one = runners[config] = lib_sagas(libs[lib], n, grouped)()
        lib_check(n)(await run_one())
        for _ in range(fill):  # the steady state: store full
            await run_one()
    per_round: dict[tuple[str, int, bool], list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        for config in rotated(configs, r):
            run_one = runners[config]
            gc.collect()
            t0 = time.thread_time()
            for _ in range(count):
                outcome = await run_one()
            elapsed = time.thread_time() - t0
            lib_check(config[1])(outcome)
            per_round[config].append(elapsed / count * 1e6)
    us = {c: statistics.median(v) for c, v in per_round.items()}
    lines = [
        f"Python {platform.python_version()}: µs per saga (thread CPU time), median of "
        f"{rounds} interleaved rounds of {count} sagas",
        *(f"  {lib}: {folder}" for lib, folder in zip(list(libs)[1:], baselines, strict=True)),
        f"{'N':>2} {'tree':>5} {'straight':>9} {'group':>8} {'group/straight':>15} "
        f"{'group / ' + reference + ' group':>20}",
    ]
    for n in N_VALUES:
        for lib in libs:
            s, g = us[(lib, n, False)], us[(lib, n, True)]
            paired = paired_median(per_round[(lib, n, True)], per_round[(lib, n, False)])
            vs = paired_median(per_round[(lib, n, True)], per_round[(reference, n, True)])
            lines.append(
                f"{n:>2} {lib:>5} {s:>9.1f} {g:>8.1f} {g / s:>6.2f}x ({paired:.2f}x) "
                + (f"{vs:>19.2f}" if lib != reference else "")
            )
    lines.append("group/straight: ratio of the medians (median of the per-round ratios); "
                 "last column: median of the per-round ratios")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (CI smoke test)")
    parser.add_argument("--rounds", type=int, help="in-memory rounds (default 25, quick 3)")
    parser.add_argument("--batch-ms", type=float, help="ms per in-memory batch (150, quick 5)")
    parser.add_argument("--durable-rounds", type=int, help="durable rounds (default 11, quick 2)")
    parser.add_argument(
        "--durable-batch-ms", type=float, help="ms per durable batch (default 750, quick 30)"
    )
    parser.add_argument("--tmpdir", help="where the database files go (default: this directory)")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-memory group")
    parser.add_argument(
        "--versus", type=Path, metavar="PACKAGE_DIR", nargs="+",
        help="A/B in memory against another copy of the package (e.g. a git archive of "
             "an older commit): straight and group, both trees, interleaved",
    )
    parser.add_argument("--count", type=int, help="--versus: sagas per batch (default 3,000)")
    args = parser.parse_args(argv)
    if args.versus:
        print(asyncio.run(versus(
            args.versus, args.rounds or (3 if args.quick else 15),
            args.count or (200 if args.quick else 3_000),
            fill=0 if args.quick else workloads.DEFAULT_RETENTION,
        )))
        return 0
    if args.profile:
        profile(quick=args.quick, sagas=500 if args.quick else 5_000)
        return 0
    started = time.perf_counter()
    res = asyncio.run(bench(
        rounds=args.rounds or (3 if args.quick else 25),
        batch_seconds=(args.batch_ms or (5.0 if args.quick else 150.0)) / 1000,
        durable_rounds=args.durable_rounds or (2 if args.quick else 11),
        durable_batch_seconds=(args.durable_batch_ms or (30.0 if args.quick else 750.0)) / 1000,
        tmpdir=args.tmpdir,
        fill=not args.quick,
    ))
    print(report(res))
    if args.quick:
        print("\n(--quick: too few iterations for the ratios to mean anything)")
    print(f"\ntotal time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
