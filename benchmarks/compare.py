"""Side-by-side benchmark: fallback_saga vs python-cqrs 5.3.0 vs a bare loop,
and fallback_saga's CircuitBreaker vs aiobreaker, purgatory, circuitbreaker.

    python benchmarks/compare.py            # full run (about three minutes)
    python benchmarks/compare.py --quick    # a few seconds; used by CI so it cannot rot
    python benchmarks/compare.py --only durable   # one section: sagas, breakers, durable, postgres
    python benchmarks/compare.py --only parallel  # one Parallel group of N vs N steps in a line
    python benchmarks/compare.py --profile durable   # where a durable saga's time goes
    python benchmarks/compare.py --json results.json

Method (why the numbers can be trusted on a noisy shared machine):

* Everything runs in ONE process and ONE event loop.
* Implementations are measured round-robin: each round runs one timed batch
  per implementation, and the starting implementation rotates every round, so
  slow drift (thermal, neighbours) hits all of them alike.  The reported
  figure is the median over the rounds.
* A batch is N sagas awaited back to back inside one coroutine, timed with
  ``time.perf_counter`` inside the loop (no loop start-up in the timing).  N is
  calibrated per implementation so every batch lasts about the same time.
* ``gc.collect()`` runs before every timed batch; the collector stays enabled
  during the batch (allocation-heavy code pays for its garbage, as in
  production).
* fallback_saga reuses one saga object per kind for the whole run, after
  filling its bounded default store (the steady state of a long-running
  service).  python-cqrs's unbounded
  in-memory storage is replaced before every batch (its most favourable
  case).  See workloads.py, "Stores".  ``--quick`` skips the fill.
* Every implementation's outcome is checked before timing and after every
  batch (status, which branch ran, compensation happened, error raised).
* Cold store (issue #12): each round, each implementation runs the first
  20,000 sagas of a fresh runner (for fallback_saga a fresh saga object, so
  its default store fills up from empty while the garbage collector runs as
  it would in a service that just started; python-cqrs a fresh storage; the
  bare loop has no state), timed as one batch after ``gc.collect()``; the
  runner is dropped and collected afterwards.  Reported side by side with
  the steady state, each against the issue's target.
* Durable sagas (``durable.py``): 3-step sagas journaled to a SQLite file on
  disk, ours (``SQLiteSagaStore``) against python-cqrs's
  ``SqlAlchemySagaStorage`` on ``sqlite+aiosqlite``, sequentially and with 100
  in flight on the one loop (a constant 100 until fewer are left); ours also
  with 1,000 in flight (reported, no target).  Every
  batch gets a fresh database file in a temporary directory next to this
  file (``--tmpdir`` to change; never a tmpfs, where fsync is free), opened
  and warmed up with a few sagas before timing; after the batch the file is
  read back and must hold every saga as completed.
* Breaker overhead is paired: in each round, for each breaker, a batch of
  ``await fn()`` is timed right before a batch of the same length through the
  breaker, and ``(t_breaker - t_direct) / N`` is that round's per-call
  overhead.

A library that is not importable is reported as skipped; the script still
runs whatever is available.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run against the working tree's fallback_saga even when an older copy is installed.
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(1, p)

import durable  # noqa: E402
import workloads  # noqa: E402

T = TypeVar("T")

OURS = "fallback_saga"
CQRS = "python-cqrs"
BARE = "bare loop"
# The least any implementation of the contract can do per saga (workloads.py,
# "the contract floor"): where it misses a target too, the contract is what
# stands in the way, not our implementation.
FLOOR = "contract floor"
# The opt-in that gives up one piece of the contract floor, measured beside
# the rest (reported, never counted as meeting a target): a default store
# that keeps no finished saga, MemorySagaStore(max_finished=0).
UNRETAINED = "ours, max_finished=0"
SAGA_IMPLS = (OURS, CQRS, BARE, FLOOR, UNRETAINED)
# Issue #12: ours / python-cqrs, from a cold store and in steady state alike.
SAGA_TARGETS = {"plain3": 12.0, "fallback3": 10.0, "fail3": 10.0}
# Cold store: the first COLD_SAGAS sagas of a fresh saga object (a fresh
# default store, filling up), as a service's first minutes after it starts.
COLD_SAGAS = 20_000

DURABLE_SEQ_TARGET = 10.0  # sequential durable sagas: ours / python-cqrs
DURABLE_IN_FLIGHT_TARGET = 10_000.0  # sagas/s, ours with 100 in flight, synchronous=full
SECTIONS = ("sagas", "breakers", "durable", "postgres", "parallel")

DIRECT = "direct await"
BREAKERS = (OURS, "aiobreaker", "purgatory", "circuitbreaker")
BREAKER_TARGET = 6.0  # aiobreaker's closed-path overhead / ours (issue #12)


# ---------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------


async def timed_sagas(run_one: Callable[[], Awaitable[Any]], n: int) -> tuple[float, Any]:
    outcome = None
    t0 = time.perf_counter()
    for _ in range(n):
        outcome = await run_one()
    return time.perf_counter() - t0, outcome


async def timed_calls(call: Callable[..., Awaitable[Any]], args: tuple[Any, ...], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await call(*args)
    return time.perf_counter() - t0


async def calibrate(batch: Callable[[int], Awaitable[float]], seconds: float, floor: int) -> int:
    """Return N such that ``batch(N)`` lasts about ``seconds`` (doubles as warm-up)."""
    n = 8
    while True:
        elapsed = await batch(n)
        if elapsed >= seconds / 4 or n >= 10_000_000:
            break
        n *= 2
    per_item = elapsed / n
    return max(floor, int(seconds / per_item))


def rotated(items: list[T], r: int) -> list[T]:
    k = r % len(items)
    return items[k:] + items[:k]


# ---------------------------------------------------------------------------
# sagas
# ---------------------------------------------------------------------------


def load_saga_impls() -> tuple[dict[str, dict[str, workloads.Workload]], dict[str, str]]:
    builders = {
        OURS: workloads.build_fallback_saga,
        CQRS: workloads.build_cqrs,
        BARE: workloads.build_bare,
        FLOOR: workloads.build_contract_floor,
        UNRETAINED: workloads.build_fallback_saga_unretained,
    }
    impls: dict[str, dict[str, workloads.Workload]] = {}
    skipped: dict[str, str] = {}
    for name, build in builders.items():
        try:
            impls[name] = build()
        except Exception as exc:  # ImportError, or an API mismatch at definition time
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return impls, skipped


async def bench_sagas(
    impls: dict[str, dict[str, workloads.Workload]],
    rounds: int,
    batch_seconds: float,
    skipped: dict[str, str],
    fill: bool = True,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in workloads.KINDS:
        live: dict[str, workloads.Workload] = {}
        for name, table in impls.items():
            wl = table[kind]
            try:
                wl.check(await wl.new_runner()())
            except Exception as exc:
                skipped[f"{name}/{kind}"] = f"outcome check failed: {type(exc).__name__}: {exc}"
                continue
            live[name] = wl

        sizes: dict[str, int] = {}
        runners: dict[str, Callable[[], Awaitable[Any]]] = {}
        for name, wl in live.items():
            run_one = runners[name] = wl.new_runner()
            if wl.fill and fill:
                await timed_sagas(run_one, wl.fill)  # reach the steady state (store full)

            async def batch(n: int, run_one: Callable[[], Awaitable[Any]] = run_one) -> float:
                return (await timed_sagas(run_one, n))[0]

            sizes[name] = await calibrate(batch, batch_seconds, floor=20)

        per_round: dict[str, list[float]] = {name: [] for name in live}
        order = list(live)
        for r in range(rounds):
            for name in rotated(order, r):
                wl = live[name]
                # See workloads.py, "Stores": reused (bounded store) or fresh per batch.
                run_one = runners[name] if wl.steady_state else wl.new_runner()
                gc.collect()
                elapsed, outcome = await timed_sagas(run_one, sizes[name])
                wl.check(outcome)
                per_round[name].append(sizes[name] / elapsed)

        entry: dict[str, Any] = {"impls": {}}
        for name, rates in per_round.items():
            med = statistics.median(rates)
            entry["impls"][name] = {
                "sagas_per_s": med,
                "us_per_saga": 1e6 / med,
                "batch_size": sizes[name],
                "rounds_sagas_per_s": rates,
            }
        _ratios(entry, kind, per_round)
        results[kind] = entry
    return results


async def bench_sagas_cold(
    impls: dict[str, dict[str, workloads.Workload]],
    rounds: int,
    n: int,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """Each round: the first ``n`` sagas of a fresh runner per implementation."""
    results: dict[str, Any] = {}
    for kind in workloads.KINDS:
        live = {
            name: table[kind]
            for name, table in impls.items()
            if f"{name}/{kind}" not in skipped
        }
        per_round: dict[str, list[float]] = {name: [] for name in live}
        for r in range(rounds):
            for name in rotated(list(live), r):
                wl = live[name]
                run_one = wl.new_runner()
                gc.collect()
                elapsed, outcome = await timed_sagas(run_one, n)
                wl.check(outcome)
                per_round[name].append(n / elapsed)
                del run_one, outcome
                gc.collect()
        entry: dict[str, Any] = {"impls": {}, "sagas": n}
        for name, rates in per_round.items():
            med = statistics.median(rates)
            entry["impls"][name] = {
                "sagas_per_s": med,
                "us_per_saga": 1e6 / med,
                "rounds_sagas_per_s": rates,
            }
        _ratios(entry, kind, per_round)
        results[kind] = entry
    return results


def _ratios(entry: dict[str, Any], kind: str, per_round: dict[str, list[float]]) -> None:
    got = entry["impls"]
    target = SAGA_TARGETS[kind]
    entry["target_ratio_vs_cqrs"] = target
    if OURS in got and CQRS in got:
        ratio = got[OURS]["sagas_per_s"] / got[CQRS]["sagas_per_s"]
        rounds = [a / b for a, b in zip(per_round[OURS], per_round[CQRS], strict=True)]
        entry["ratio_vs_cqrs"] = ratio
        entry["ratio_vs_cqrs_paired_median"] = statistics.median(rounds)
        entry["ratio_vs_cqrs_range"] = [min(rounds), max(rounds)]
        entry["target_met"] = ratio >= target
    if FLOOR in got and CQRS in got:
        floor = got[FLOOR]["sagas_per_s"] / got[CQRS]["sagas_per_s"]
        entry["floor_ratio_vs_cqrs"] = floor
        entry["floor_reaches_target"] = floor >= target
        if OURS in got:
            entry["ours_over_floor"] = got[OURS]["us_per_saga"] / got[FLOOR]["us_per_saga"]
    if UNRETAINED in got and CQRS in got:
        entry["unretained_ratio_vs_cqrs"] = (
            got[UNRETAINED]["sagas_per_s"] / got[CQRS]["sagas_per_s"]
        )
    if OURS in got and BARE in got:
        entry["overhead_vs_bare_us"] = got[OURS]["us_per_saga"] - got[BARE]["us_per_saga"]
        entry["percent_of_bare"] = 100 * got[BARE]["us_per_saga"] / got[OURS]["us_per_saga"]


# ---------------------------------------------------------------------------
# circuit breakers, closed path
# ---------------------------------------------------------------------------


async def trivial() -> int:
    return 42


async def load_breakers(skipped: dict[str, str]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """name -> (callable, args) such that ``await callable(*args)`` runs ``trivial``
    through that breaker, the way the library documents for coroutines."""
    calls: dict[str, tuple[Any, tuple[Any, ...]]] = {DIRECT: (trivial, ())}

    try:
        from fallback_saga import CircuitBreaker

        ours = CircuitBreaker(fail_max=5, reset_timeout=60.0)
        calls[OURS] = (ours.call, (trivial,))
    except Exception as exc:
        skipped[f"breaker/{OURS}"] = f"{type(exc).__name__}: {exc}"

    try:
        import aiobreaker

        aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))
        calls["aiobreaker"] = (aio.call_async, (trivial,))
    except Exception as exc:
        skipped["breaker/aiobreaker"] = f"{type(exc).__name__}: {exc}"

    try:
        import purgatory

        factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
        await factory.initialize()
        # purgatory's documented coroutine usage is its decorator, which looks
        # the breaker up by name in its unit of work on every call.
        calls["purgatory"] = (factory("bench-closed")(trivial), ())
    except Exception as exc:
        skipped["breaker/purgatory"] = f"{type(exc).__name__}: {exc}"

    try:
        import circuitbreaker

        cb = circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=60, name="bench-closed"
        )
        calls["circuitbreaker"] = (cb(trivial), ())
    except Exception as exc:
        skipped["breaker/circuitbreaker"] = f"{type(exc).__name__}: {exc}"

    # Each must return the wrapped function's value; drop any that does not.
    for name in list(calls):
        fn, args = calls[name]
        try:
            value = await fn(*args)
            assert value == 42, value
        except Exception as exc:
            skipped[f"breaker/{name}"] = f"call check failed: {type(exc).__name__}: {exc}"
            del calls[name]
    return calls


async def bench_breakers(
    calls: dict[str, tuple[Any, tuple[Any, ...]]], rounds: int, batch_seconds: float
) -> dict[str, Any]:
    names = [n for n in calls if n != DIRECT]
    if DIRECT not in calls or not names:
        return {}
    direct_fn, direct_args = calls[DIRECT]

    sizes: dict[str, int] = {}
    for name in names:
        fn, args = calls[name]

        async def batch(n: int, fn: Any = fn, args: tuple[Any, ...] = args) -> float:
            return await timed_calls(fn, args, n)

        sizes[name] = await calibrate(batch, batch_seconds, floor=100)

    overhead: dict[str, list[float]] = {n: [] for n in names}
    per_call: dict[str, list[float]] = {n: [] for n in names}
    direct_per_call: list[float] = []
    for r in range(rounds):
        for name in rotated(names, r):
            fn, args = calls[name]
            n = sizes[name]
            gc.collect()
            t_direct = await timed_calls(direct_fn, direct_args, n)
            gc.collect()
            t_brk = await timed_calls(fn, args, n)
            overhead[name].append((t_brk - t_direct) / n * 1e6)
            per_call[name].append(t_brk / n * 1e6)
            direct_per_call.append(t_direct / n * 1e6)

    out: dict[str, Any] = {
        "direct_await_us": statistics.median(direct_per_call),
        "breakers": {},
    }
    for name in names:
        out["breakers"][name] = {
            "call_us": statistics.median(per_call[name]),
            "overhead_us": statistics.median(overhead[name]),
            "batch_size": sizes[name],
            "rounds_overhead_us": overhead[name],
        }
    got = out["breakers"]
    if OURS in got:
        ours = got[OURS]["overhead_us"]
        for name in names:
            got[name]["overhead_vs_ours"] = got[name]["overhead_us"] / ours if ours > 0 else None
        out["target_aiobreaker_over_ours"] = BREAKER_TARGET
        if "aiobreaker" in got:
            ratio = got["aiobreaker"]["overhead_us"] / ours if ours > 0 else float("inf")
            out["aiobreaker_over_ours"] = ratio
            out["target_met"] = ratio >= BREAKER_TARGET
    return out


# ---------------------------------------------------------------------------
# durable sagas on SQLite (see durable.py)
# ---------------------------------------------------------------------------


class DurableBench:
    """Times batches of durable sagas, each batch on a fresh database file."""

    def __init__(self, tmpdir: str, quick: bool) -> None:
        self.tmpdir = tmpdir
        self.quick = quick
        self.batches = 0

    def warm_up(self, config: durable.Config) -> int:
        # Untimed sagas on each fresh file first: statement caches, SQLAlchemy's
        # compiled-statement cache (per engine), the store's threads.
        return 3 if config.in_flight == 1 else 10

    async def batch(self, config: durable.Config, n: int) -> tuple[float, dict[str, int]]:
        self.batches += 1
        path = os.path.join(self.tmpdir, f"{config.key}-{self.batches}.db")
        session = await durable.open_session(config, path)
        warm = self.warm_up(config)
        try:
            outcomes = await durable.drive(session.run_one, warm, config.in_flight)
            before = session.stats()
            gc.collect()
            t0 = time.perf_counter()
            outcomes += await durable.drive(session.run_one, n, config.in_flight)
            elapsed = time.perf_counter() - t0
            after = session.stats()
        finally:
            await session.close()
        for outcome in outcomes:
            session.check(outcome)
        done = durable.count_completed(path, session.completed_sql)
        assert done == warm + n, (
            f"{config.label}: {done} completed sagas in the file, ran {warm + n}"
        )
        durable.remove_db(path)
        return elapsed, {k: after[k] - before[k] for k in after if k != "largest_group"}

    def floor(self, config: durable.Config) -> int:
        # Full runs: at least one full wave of the sagas in flight per batch.
        # --quick: a 100-saga batch of python-cqrs alone would take seconds.
        return 8 if self.quick else config.in_flight


async def bench_durable(
    rounds: int, batch_seconds: float, tmpdir: str, quick: bool, skipped: dict[str, str]
) -> dict[str, Any]:
    bench = DurableBench(tmpdir, quick)
    live: list[durable.Config] = []
    sizes: dict[str, int] = {}
    for config in durable.CONFIGS:

        async def batch(n: int, config: durable.Config = config) -> float:
            return (await bench.batch(config, n))[0]

        try:
            # Every batch checks outcomes and the file, so calibrating also
            # checks that the library is importable, set up and correct.
            sizes[config.key] = await calibrate(batch, batch_seconds, floor=bench.floor(config))
        except Exception as exc:
            skipped[f"durable/{config.library}/{config.key}"] = f"{type(exc).__name__}: {exc}"
            continue
        live.append(config)

    per_round: dict[str, list[float]] = {c.key: [] for c in live}
    counters: dict[str, dict[str, int]] = {c.key: {} for c in live}
    for r in range(rounds):
        for config in rotated(live, r):
            n = sizes[config.key]
            elapsed, delta = await bench.batch(config, n)
            per_round[config.key].append(n / elapsed)
            for k, v in delta.items():
                counters[config.key][k] = counters[config.key].get(k, 0) + v

    out: dict[str, Any] = {
        "tmpdir": tmpdir,
        "filesystem": durable.filesystem_of(tmpdir),
        "files": "fresh database file per batch (store opened and warmed up before timing)",
        "configs": {},
    }
    for config in live:
        rates = per_round[config.key]
        med = statistics.median(rates)
        entry: dict[str, Any] = {
            "label": config.label,
            "library": config.library,
            "synchronous": config.synchronous,
            "in_flight": config.in_flight,
            "sagas_per_s": med,
            "us_per_saga": 1e6 / med,
            "batch_size": sizes[config.key],
            "warm_up_sagas": bench.warm_up(config),
            "rounds_sagas_per_s": rates,
        }
        c = counters[config.key]
        if c.get("commits"):
            entry["store_writes_per_saga"] = c["writes"] / (sizes[config.key] * rounds)
            entry["store_writes_per_commit"] = c["writes"] / c["commits"]
        out["configs"][config.key] = entry

    got = out["configs"]
    out["target_seq_ratio_vs_cqrs"] = DURABLE_SEQ_TARGET
    if "ours_seq_full" in got and "cqrs_seq" in got:
        ratio = got["ours_seq_full"]["sagas_per_s"] / got["cqrs_seq"]["sagas_per_s"]
        out["seq_ratio_vs_cqrs"] = ratio
        out["seq_ratio_vs_cqrs_paired_median"] = statistics.median(
            a / b for a, b in zip(per_round["ours_seq_full"], per_round["cqrs_seq"], strict=True)
        )
        out["seq_target_met"] = ratio >= DURABLE_SEQ_TARGET
        if "ours_seq_full_inline" in got:
            out["seq_ratio_vs_cqrs_inline"] = (
                got["ours_seq_full_inline"]["sagas_per_s"] / got["cqrs_seq"]["sagas_per_s"]
            )
            out["seq_ratio_vs_cqrs_inline_paired_median"] = statistics.median(
                a / b for a, b in zip(
                    per_round["ours_seq_full_inline"], per_round["cqrs_seq"], strict=True
                )
            )
            out["seq_target_met_inline"] = out["seq_ratio_vs_cqrs_inline"] >= DURABLE_SEQ_TARGET
    out["target_in_flight_sagas_per_s"] = DURABLE_IN_FLIGHT_TARGET
    if "ours_100_full" in got:
        out["in_flight_target_met"] = (
            got["ours_100_full"]["sagas_per_s"] >= DURABLE_IN_FLIGHT_TARGET
        )
    if "ours_100_full_process" in got:
        out["in_flight_target_met_process"] = (
            got["ours_100_full_process"]["sagas_per_s"] >= DURABLE_IN_FLIGHT_TARGET
        )
        if "ours_100_full" in got:
            out["in_flight_process_over_thread_paired_median"] = statistics.median(
                a / b for a, b in zip(
                    per_round["ours_100_full_process"], per_round["ours_100_full"], strict=True
                )
            )
    if "ours_100_full" in got and "cqrs_100" in got:
        out["in_flight_ratio_vs_cqrs"] = (
            got["ours_100_full"]["sagas_per_s"] / got["cqrs_100"]["sagas_per_s"]
        )
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def yes_no(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def print_sagas(res: dict[str, Any], rounds: int) -> None:
    print(f"\nSagas/s, median of {rounds} interleaved rounds (higher is better)")
    header = (
        f"{'saga':<10} {OURS:>14} {CQRS:>12} {BARE:>12} {'ours/cqrs':>10} "
        f"{'target':>7} {'met':>4} {'ours - bare':>14}"
    )
    print(header)
    print("-" * len(header))
    for kind, entry in res.items():
        impls = entry["impls"]

        def rate(name: str, impls: dict[str, Any] = impls) -> float | None:
            return impls[name]["sagas_per_s"] if name in impls else None

        ratio = entry.get("ratio_vs_cqrs")
        over = entry.get("overhead_vs_bare_us")
        print(
            f"{kind:<10} {fmt_rate(rate(OURS)):>14} {fmt_rate(rate(CQRS)):>12} "
            f"{fmt_rate(rate(BARE)):>12} "
            f"{('n/a' if ratio is None else f'{ratio:.1f}x'):>10} "
            f"{'>=' + format(entry['target_ratio_vs_cqrs'], 'g') + 'x':>7} "
            f"{yes_no(entry.get('target_met')):>4} "
            f"{('n/a' if over is None else f'+{over:.2f} us/saga'):>14}"
        )
    print("\nMicroseconds per saga (median):")
    for kind, entry in res.items():
        parts = [f"{n} {v['us_per_saga']:.2f}" for n, v in entry["impls"].items()]
        paired = entry.get("ratio_vs_cqrs_paired_median")
        extra = "" if paired is None else f"  (paired per-round ratio {paired:.1f}x)"
        print(f"  {kind:<10} " + ", ".join(parts) + extra)


def print_cold_and_steady(steady: dict[str, Any], cold: dict[str, Any]) -> None:
    """The issue #12 table: each saga kind from a cold store and in steady state."""
    print(
        "\nIssue #12 targets, ours / python-cqrs from a cold store (the first "
        f"{next(iter(cold.values()))['sagas']:,} sagas of a fresh store) and in steady state"
    )
    header = (
        f"{'saga':<10} {'state':<7} {'ours us':>8} {'cqrs us':>8} {'bare us':>8} "
        f"{'ours/cqrs':>9} {'(rounds)':>13} {'target':>7} {'met':>7} {'% of bare':>9} "
        f"{'floor us':>8} {'floor/cqrs':>10}"
    )
    print(header)
    print("-" * len(header))
    for kind in steady:
        for state, res in (("cold", cold), ("steady", steady)):
            entry = res.get(kind)
            if entry is None:
                continue
            impls = entry["impls"]

            def us(name: str, impls: dict[str, Any] = impls) -> str:
                return f"{impls[name]['us_per_saga']:.2f}" if name in impls else "n/a"

            ratio = entry.get("ratio_vs_cqrs")
            spread = entry.get("ratio_vs_cqrs_range")
            pct = entry.get("percent_of_bare")
            met = entry.get("target_met")
            floor = entry.get("floor_ratio_vs_cqrs")
            print(
                f"{kind:<10} {state:<7} {us(OURS):>8} {us(CQRS):>8} {us(BARE):>8} "
                f"{('n/a' if ratio is None else f'{ratio:.1f}x'):>9} "
                f"{('' if spread is None else f'{spread[0]:.1f}-{spread[1]:.1f}x'):>13} "
                f"{'>=' + format(entry['target_ratio_vs_cqrs'], 'g') + 'x':>7} "
                f"{('n/a' if met is None else ('met' if met else 'not met')):>7} "
                f"{('n/a' if pct is None else f'{pct:.0f} %'):>9} "
                f"{us(FLOOR):>8} {('n/a' if floor is None else f'{floor:.1f}x'):>10}"
            )
    opted = [
        f"{kind} {state} {res[kind]['unretained_ratio_vs_cqrs']:.1f}x"
        for kind in steady
        for state, res in (("cold", cold), ("steady", steady))
        if "unretained_ratio_vs_cqrs" in res.get(kind, {})
    ]
    if opted:
        print(
            "opt-in, reported (never 'met'): MemorySagaStore(max_finished=0), no finished "
            "saga kept, ours/cqrs:\n       " + ", ".join(opted)
        )
    print(
        "floor: the contract's own per-saga work, hand-written with no generality "
        "(workloads.py, 'the contract floor');\n       where floor/cqrs misses the target "
        "too, no implementation of the contract can meet it."
    )


def print_breakers(res: dict[str, Any], rounds: int) -> None:
    if not res:
        print("\nBreaker closed path: nothing to compare (skipped).")
        return
    print(
        f"\nCircuit breaker, closed path: per-call cost over a direct `await fn()` "
        f"({res['direct_await_us']:.3f} us), median of {rounds} paired rounds"
    )
    header = f"{'breaker':<16} {'call us':>9} {'overhead us':>12} {'overhead / ours':>16}"
    print(header)
    print("-" * len(header))
    for name, v in res["breakers"].items():
        rel = v.get("overhead_vs_ours")
        print(
            f"{name:<16} {v['call_us']:>9.3f} {v['overhead_us']:>12.3f} "
            f"{('n/a' if rel is None else f'{rel:.1f}x'):>16}"
        )
    if "aiobreaker_over_ours" in res:
        print(
            f"target: aiobreaker overhead >= {BREAKER_TARGET:g}x ours -> "
            f"{res['aiobreaker_over_ours']:.1f}x, met: {yes_no(res['target_met'])}"
        )


def print_durable(res: dict[str, Any], rounds: int) -> None:
    configs = res.get("configs") or {}
    if not configs:
        print("\nDurable sagas: nothing measured (skipped).")
        return
    print(
        f"\nDurable 3-step sagas on SQLite, sagas/s, median of {rounds} interleaved rounds\n"
        f"(files in {res['tmpdir']}, {res['filesystem']}; {res['files']})"
    )
    header = f"{'configuration':<56} {'sagas/s':>9} {'us/saga':>9} {'writes/commit':>14}"
    print(header)
    print("-" * len(header))
    for entry in configs.values():
        per_commit = entry.get("store_writes_per_commit")
        print(
            f"{entry['label']:<56} {fmt_rate(entry['sagas_per_s']):>9} "
            f"{entry['us_per_saga']:>9.0f} "
            f"{('' if per_commit is None else f'{per_commit:.1f}'):>14}"
        )
    seq = res.get("seq_ratio_vs_cqrs")
    print(
        f"target: sequential, synchronous=full >= {res['target_seq_ratio_vs_cqrs']:g}x python-cqrs"
        f" -> {'n/a' if seq is None else f'{seq:.1f}x'}"
        + (
            ""
            if seq is None
            else f" (paired per-round median {res['seq_ratio_vs_cqrs_paired_median']:.1f}x)"
        )
        + f", met: {yes_no(res.get('seq_target_met'))}"
    )
    if "seq_ratio_vs_cqrs_inline" in res:
        print(
            f"        writer=\"inline\" (opt-in, no thread): "
            f"{res['seq_ratio_vs_cqrs_inline']:.1f}x (paired per-round median "
            f"{res['seq_ratio_vs_cqrs_inline_paired_median']:.1f}x), "
            f"met: {yes_no(res.get('seq_target_met_inline'))}"
        )
    ours100 = configs.get("ours_100_full")
    print(
        f"target: {durable.IN_FLIGHT} in flight, synchronous=full >= "
        f"{fmt_rate(res['target_in_flight_sagas_per_s'])} sagas/s -> "
        f"{fmt_rate(ours100 and ours100['sagas_per_s'])}, "
        f"met: {yes_no(res.get('in_flight_target_met'))}"
    )
    process = configs.get("ours_100_full_process")
    if process is not None:
        print(
            f"        writer=\"process\" (opt-in): {fmt_rate(process['sagas_per_s'])} sagas/s, "
            f"met: {yes_no(res.get('in_flight_target_met_process'))}; process / thread "
            f"(paired per-round median) "
            f"{res.get('in_flight_process_over_thread_paired_median', float('nan')):.2f}x"
        )
    many = [
        f"{fmt_rate(entry['sagas_per_s'])} sagas/s ({label})"
        for key, label in (("ours_1000_full", "writer thread"),
                           ("ours_1000_full_process", 'writer="process"'))
        if (entry := configs.get(key)) is not None
    ]
    if many:
        print(
            f"reported: {durable.MANY_IN_FLIGHT:,} in flight, synchronous=full -> "
            + ", ".join(many)
        )
    if "in_flight_ratio_vs_cqrs" in res:
        print(
            f"(with {durable.IN_FLIGHT} in flight, ours / python-cqrs = "
            f"{res['in_flight_ratio_vs_cqrs']:.0f}x)"
        )


def versions() -> dict[str, str]:
    out = {}
    for dist in (
        "fallback-saga",
        "python-cqrs",
        "aiobreaker",
        "purgatory",
        "circuitbreaker",
        "sqlalchemy",
        "aiosqlite",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    skipped: dict[str, str] = {}
    res: dict[str, Any] = {}
    if "sagas" in args.only:
        impls, skipped_impls = load_saga_impls()
        skipped.update(skipped_impls)
        res["sagas"] = await bench_sagas(
            impls, args.rounds, args.batch_ms / 1000, skipped, fill=not args.quick
        )
        if args.cold_rounds:
            res["sagas_cold"] = await bench_sagas_cold(
                impls, args.cold_rounds, args.cold_sagas, skipped
            )
    if "breakers" in args.only:
        calls = await load_breakers(skipped)
        res["breaker_closed_path"] = await bench_breakers(
            calls, args.breaker_rounds, args.batch_ms / 1000
        )
    if "durable" in args.only:
        # Next to this file by default: on the repository's filesystem, never
        # a tmpfs where fsync costs nothing.
        tmpdir = tempfile.mkdtemp(prefix=".durable-", dir=args.tmpdir or HERE)
        try:
            res["durable"] = await bench_durable(
                args.durable_rounds, args.durable_batch_ms / 1000, tmpdir, args.quick, skipped
            )
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if "parallel" in args.only:
        import parallel_groups

        res["parallel"] = await parallel_groups.bench(
            rounds=args.rounds,
            batch_seconds=args.batch_ms / 1000,
            durable_rounds=args.durable_rounds,
            durable_batch_seconds=args.durable_batch_ms / 1000,
            tmpdir=args.tmpdir,
            fill=not args.quick,
        )
    res["skipped"] = skipped
    return res


def profile(kinds: list[str], n: int, top: int) -> None:
    """cProfile fallback_saga alone on ``n`` sagas of each kind (not a timing)."""
    import cProfile
    import pstats

    table = workloads.build_fallback_saga()
    for kind in kinds:
        run_one = table[kind].new_runner()

        async def many(run_one: Callable[[], Awaitable[Any]] = run_one) -> Any:
            return (await timed_sagas(run_one, n))[1]

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(many())  # warm-up
            prof = cProfile.Profile()
            prof.enable()
            outcome = loop.run_until_complete(many())
            prof.disable()
        finally:
            loop.close()
        table[kind].check(outcome)
        print(f"\n=== cProfile: fallback_saga {kind}, {n} sagas (tottime order) ===")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (CI smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--rounds", type=int, help="saga rounds (default 25, quick 3)")
    parser.add_argument("--breaker-rounds", type=int, help="breaker rounds (default 25, quick 3)")
    parser.add_argument("--batch-ms", type=float, help="target ms per batch (default 150, quick 5)")
    parser.add_argument(
        "--cold-rounds",
        type=int,
        help="cold-store rounds (default 5, quick 1; 0 skips the cold-store measurement)",
    )
    parser.add_argument(
        "--cold-sagas",
        type=int,
        help=f"sagas per cold-store batch (default {COLD_SAGAS:,}, quick 300)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; default: all of " + ", ".join(SECTIONS) + ")",
    )
    parser.add_argument("--durable-rounds", type=int, help="durable rounds (default 15, quick 2)")
    parser.add_argument(
        "--durable-batch-ms",
        type=float,
        help="target ms per durable batch (default 750, quick 30)",
    )
    parser.add_argument(
        "--tmpdir",
        help="where the durable section's database files go (default: this directory)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="all",
        metavar="KIND",
        help="instead of comparing, cProfile fallback_saga on one saga kind (or all); "
        "'durable': where a durable saga's time goes (per-thread CPU, floors, cProfile)",
    )
    args = parser.parse_args(argv)
    if args.profile == "durable":
        import durable_profile

        durable_profile.run(
            args.tmpdir or str(HERE), n_in_flight=20_000, n_seq=2_000, cprofile=True, top=20
        )
        return 0
    if args.profile:
        kinds = list(workloads.KINDS) if args.profile == "all" else [args.profile]
        profile(kinds, n=2_000, top=25)
        return 0
    if args.rounds is None:
        args.rounds = 3 if args.quick else 25
    if args.breaker_rounds is None:
        args.breaker_rounds = 3 if args.quick else 25
    if args.batch_ms is None:
        args.batch_ms = 5.0 if args.quick else 150.0
    if args.cold_rounds is None:
        args.cold_rounds = 1 if args.quick else 5
    if args.cold_sagas is None:
        args.cold_sagas = 300 if args.quick else COLD_SAGAS
    if args.durable_rounds is None:
        args.durable_rounds = 2 if args.quick else 15
    if args.durable_batch_ms is None:
        args.durable_batch_ms = 30.0 if args.quick else 750.0
    args.only = tuple(args.only or SECTIONS)

    started = time.perf_counter()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; mode: {'quick' if args.quick else 'full'}"
    )
    res = asyncio.run(amain(args))
    if "postgres" in args.only:
        # Its own event loops and worker processes, on a throwaway cluster
        # (postgres_case.py); skipped when PostgreSQL or psycopg is missing.
        try:
            import postgres_case

            res["postgres"] = postgres_case.run_postgres_case(quick=args.quick)
        except Exception as exc:  # no server binaries, no driver
            res["skipped"]["postgres"] = f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started

    for what, why in res["skipped"].items():
        print(f"skipped {what}: {why}")
    if "sagas" in res:
        print_sagas(res["sagas"], args.rounds)
    if "sagas_cold" in res:
        print_cold_and_steady(res["sagas"], res["sagas_cold"])
    if "breaker_closed_path" in res:
        print_breakers(res["breaker_closed_path"], args.breaker_rounds)
    if "durable" in res:
        print_durable(res["durable"], args.durable_rounds)
    if "postgres" in res:
        import postgres_case

        print("\n" + postgres_case.report(res["postgres"]))
    if "parallel" in res:
        import parallel_groups

        print(parallel_groups.report(res["parallel"]))
    if args.quick:
        print("\n(--quick: too few iterations for the ratios to mean anything)")
    print(f"\ntotal time {elapsed:.1f} s")

    if args.json:
        res["meta"] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "rounds": args.rounds,
            "breaker_rounds": args.breaker_rounds,
            "batch_ms": args.batch_ms,
            "cold_rounds": args.cold_rounds,
            "cold_sagas": args.cold_sagas,
            "durable_rounds": args.durable_rounds,
            "durable_batch_ms": args.durable_batch_ms,
            "sections": list(args.only),
            "versions": versions(),
            "elapsed_s": elapsed,
        }
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    # Missing competitors are fine (they are only in the bench extra); our own
    # library failing to import or to produce the right outcome is not.
    broken = [what for what in res["skipped"] if OURS in what.split("/")]
    if broken:
        print(f"ERROR: fallback_saga could not be measured: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
