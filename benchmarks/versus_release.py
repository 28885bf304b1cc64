"""This tree against an earlier release of itself, side by side in one process.

    git archive v0.4.0 fallback_saga | tar -x -C /tmp/baseline   # or any commit
    python benchmarks/versus_release.py /tmp/baseline/fallback_saga

The baseline package is imported under another name (the package is
vendorable: relative imports only), and each workload runs in interleaved
rounds, this tree and the baseline taking turns, so a machine that gets busier
meanwhile slows both alike. Reported: medians, and this tree / baseline.

Workloads: plain3 and fail3 (three steps; the third fails and two are
compensated) on the default in-memory store, in microseconds per saga; and a
durable three-step saga on SQLite (``synchronous="full"``), one at a time and
100 in flight, in sagas per second. A regression check for changes that are
not about speed (the journal-truth work of 0.5.0 was measured this way), not
a replacement for ``compare.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fallback_saga  # noqa: E402


def load_baseline(package: Path, into: Path) -> ModuleType:
    """Import the package folder ``package`` as ``fallback_saga_baseline``."""
    target = into / "fallback_saga_baseline"
    shutil.copytree(package, target)
    spec = importlib.util.spec_from_file_location(
        "fallback_saga_baseline", target / "__init__.py", submodule_search_locations=[str(target)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fallback_saga_baseline"] = module
    spec.loader.exec_module(module)
    return module


def saga_class(lib: Any, *, fail: bool) -> tuple[type, type]:
    @dataclasses.dataclass
    class Ctx(lib.SagaContext):  # type: ignore[misc, name-defined]
        order_id: str
        done: int = 0

    class Step:
        async def act(self, ctx: Any) -> None:
            ctx.done += 1

        async def compensate(self, ctx: Any) -> None:
            ctx.done -= 1

    class Reserve(Step):
        pass

    class Charge(Step):
        pass

    class Ship(Step):
        async def act(self, ctx: Any) -> None:
            if fail:
                raise RuntimeError("no courier")

    class Bench(lib.Saga[Ctx]):  # type: ignore[misc, name-defined]
        steps = [Reserve, Charge, Ship]

    return Ctx, Bench


async def in_memory(lib: Any, fail: bool, count: int) -> float:
    """Microseconds per saga on the default store."""
    ctx_class, bench = saga_class(lib, fail=fail)
    saga = bench()
    started = time.perf_counter()
    for _ in range(count):
        with contextlib.suppress(lib.SagaFailed):
            await saga.run(ctx_class(order_id="o"))
    return (time.perf_counter() - started) / count * 1e6


async def durable(lib: Any, path: Path, in_flight: int, count: int) -> float:
    """Sagas per second on SQLite."""
    ctx_class, bench = saga_class(lib, fail=False)
    async with lib.SQLiteSagaStore(path) as store:
        saga = bench(store=store)
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await saga.run(ctx_class(order_id="o"))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def compare(baseline: ModuleType, rounds: int, quick: bool, tmp: Path) -> None:
    libs = {"this tree": fallback_saga, "baseline": baseline}
    workloads: list[tuple[str, str, Any]] = [
        ("plain3, memory", "µs/saga", lambda lib, n: in_memory(lib, False, 300 if quick else 5000)),
        ("fail3, memory", "µs/saga", lambda lib, n: in_memory(lib, True, 300 if quick else 5000)),
        ("durable SQLite, 1 in flight", "sagas/s",
         lambda lib, n: durable(lib, tmp / f"{id(lib)}-1-{n}.db", 1, 20 if quick else 300)),
        ("durable SQLite, 100 in flight", "sagas/s",
         lambda lib, n: durable(lib, tmp / f"{id(lib)}-100-{n}.db", 100, 200 if quick else 3000)),
    ]
    print(f"{'workload':32} {'this tree':>12} {'baseline':>12} {'ratio':>7}")
    for name, unit, run in workloads:
        results: dict[str, list[float]] = {label: [] for label in libs}
        for number in range(rounds):
            for label, lib in libs.items():
                results[label].append(await run(lib, number))
        now, then = (statistics.median(results[label]) for label in libs)
        print(f"{name:32} {now:>12,.1f} {then:>12,.1f} {now / then:>7.2f}  ({unit})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="an earlier release's fallback_saga folder")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        asyncio.run(compare(baseline, 2 if args.quick else args.rounds, args.quick, Path(tmp)))


if __name__ == "__main__":
    main()
