"""The closed path of each way through a ``CircuitBreaker``, side by side in one process.

    python benchmarks/breaker_ways.py                       # this tree alone
    git archive main fallback_saga | tar -x -C /tmp/base
    python benchmarks/breaker_ways.py --versus /tmp/base/fallback_saga \\
        --versus /tmp/base2/fallback_saga                   # against copies (an A/A too)

Ways: ``await breaker.call(fn)``, a decorated function, ``async with
breaker: await fn()``, ``acquire()`` / ``record_success()`` by hand; each on
a local breaker and on a shared one (an ``SQLiteCircuitStateStore``, pulled
once a second: the default ``sync_interval``); and a bare ``await fn()``
(``async def fn(): return 42``) for reference. Always closed.

Method: one event loop; each round times one batch of ``--calls`` calls per
case (every tree's cases), round-robin, the starting case rotating every
round; ``gc.collect()`` before each batch; the thread's CPU time (the host is
shared: other processes' time is not ours); medians over rounds, in µs per
call. ``/ call()`` is a case's time over the same tree's ``call()``'s;
``overhead`` its time less the bare await's, and ``ovh / call()`` that over
``call()``'s overhead; against copies, ``/ this`` is a copy's median over
this tree's for the same case (above 1: this tree is cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

# The working tree's package, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from package_copies import import_package_as

import fallback_saga

Batch = Callable[[int], Awaitable[None]]


async def fn() -> int:
    return 42


async def bare(n: int) -> None:
    for _ in range(n):
        await fn()


def through_call(breaker: fallback_saga.CircuitBreaker) -> Batch:
    call = breaker.call

    async def run(n: int) -> None:
        for _ in range(n):
            await call(fn)

    return run


def through_decorator(breaker: fallback_saga.CircuitBreaker) -> Batch:
    decorated = breaker(fn)

    async def run(n: int) -> None:
        for _ in range(n):
            await decorated()

    return run


def through_block(breaker: fallback_saga.CircuitBreaker) -> Batch:
    async def run(n: int) -> None:
        for _ in range(n):
            async with breaker:
                await fn()

    return run


def by_hand(breaker: fallback_saga.CircuitBreaker) -> Batch:
    acquire, record_success = breaker.acquire, breaker.record_success

    async def run(n: int) -> None:
        for _ in range(n):
            permit = acquire()
            await fn()
            record_success(permit)

    return run


WAYS = {
    "call": through_call,
    "decorator": through_decorator,
    "async with": through_block,
    "acquire/record": by_hand,
}


def cases_of(package: ModuleType, tree: str, folder: str) -> dict[str, Batch]:
    """Every way in of ``package``, local and shared, named ``tree:way``."""
    local = package.CircuitBreaker(fail_max=5, reset_timeout=60.0)
    store = package.SQLiteCircuitStateStore(os.path.join(folder, f"{tree}.db"))
    shared = package.CircuitBreaker(
        fail_max=5, reset_timeout=60.0, name=f"shared-{tree}", state_store=store
    )
    cases: dict[str, Batch] = {}
    for sharing, breaker in (("", local), ("shared ", shared)):
        for way, make in WAYS.items():
            cases[f"{tree}:{sharing}{way}"] = make(breaker)
    return cases


async def measure(cases: dict[str, Batch], rounds: int, calls: int) -> dict[str, float]:
    names = list(cases)
    for name in names:  # warm up; the shared breakers make their first pull
        await cases[name](2_000)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            gc.collect()
            began = time.thread_time()
            await cases[name](calls)
            figures[name].append((time.thread_time() - began) / calls * 1e6)
    return {name: statistics.median(values) for name, values in figures.items()}


def report(medians: dict[str, float], trees: list[str]) -> None:
    floor = medians["bare await"]
    print(f"{'case':34} {'µs/call':>8} {'/ call()':>8} {'overhead':>9} {'ovh / call()':>12} "
          f"{'/ this':>7}")
    print(f"{'bare await fn()':34} {floor:8.3f}")
    for tree in trees:
        reference = medians[f"{tree}:call"]
        for name, value in medians.items():
            if not name.startswith(f"{tree}:"):
                continue
            mine = medians.get("this:" + name.split(":", 1)[1], value)
            versus = "" if tree == "this" else f"{value / mine:7.3f}"
            print(f"{name:34} {value:8.3f} {value / reference:8.2f} {value - floor:9.3f} "
                  f"{(value - floor) / (reference - floor):12.2f} {versus:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--versus", type=Path, action="append", default=[],
                        help="another copy of the package folder (repeatable)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=50_000, help="calls per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="breaker_ways") as folder:
        cases: dict[str, Batch] = {"bare await": bare}
        cases.update(cases_of(fallback_saga, "this", folder))
        trees = ["this"]
        for number, copy in enumerate(args.versus, 1):
            tree = f"copy{number}"
            trees.append(tree)
            cases.update(cases_of(import_package_as(copy, f"fallback_saga_{tree}"), tree, folder))
        medians = asyncio.run(measure(cases, args.rounds, args.calls))
    print(f"CPython {sys.version.split()[0]}, {args.rounds} rounds of {args.calls:,} calls, "
          f"median thread CPU µs per call")
    for number, copy in enumerate(args.versus, 1):
        print(f"copy{number}: {copy}")
    report(medians, trees)


if __name__ == "__main__":
    main()
