"""Parallel members over a large context: this tree against another copy of the package.

    git archive main fallback_saga | tar -x -C /tmp/base
    python benchmarks/long_groups_versus.py /tmp/base/fallback_saga   # n = 250, 500, 1,000
    python benchmarks/long_groups_versus.py /tmp/base/fallback_saga --sizes 2000 --rounds 3

``long_sagas.py``'s group section (one ``Parallel`` group of n members that
write nothing; ``lines``: a context holding n order lines, ``empty``: one of
no lines) on both trees in one process, the baseline imported under another
name (the package is vendorable: relative imports only): interleaved rounds,
the starting tree alternating, ``gc.collect()`` before each run, wall time,
medians, in µs per member.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The working tree's package, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from package_copies import import_copy

import fallback_saga

Run = Callable[[int, bool], Awaitable[float]]


def group_run(lib: Any) -> Run:
    @dataclasses.dataclass
    class BatchCtx(lib.SagaContext):  # type: ignore[misc,name-defined]
        done: int = 0
        lines: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    class Member:
        async def act(self, context: Any) -> str:
            return "charged"

        async def compensate(self, context: Any) -> None:
            pass

    async def run(n: int, filled: bool) -> float:
        members = [type(f"M{i}", (Member,), {}) for i in range(n)]
        cls = types.new_class(
            "Group", (lib.Saga[BatchCtx],), {},
            lambda namespace: namespace.update(steps=[lib.Parallel(*members)]),
        )
        saga = cls(store=lib.MemorySagaStore())
        context = BatchCtx(lines=[
            {"line": i, "sku": "ABC-123", "qty": 1} for i in range(n if filled else 0)
        ])
        gc.collect()
        started = time.perf_counter()
        await saga.run(context, saga_id="s")
        return (time.perf_counter() - started) * 1e6 / n

    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", type=Path, help="another copy's fallback_saga folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="250,500,1000", help="n, comma-separated")
    parser.add_argument("--context", choices=("both", "lines", "empty"), default="both")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="long-groups-"))
    try:
        await compare(args, tmp)
    finally:
        shutil.rmtree(tmp)


async def compare(args: argparse.Namespace, tmp: Path) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    base = import_copy(args.baseline, tmp)
    runs = {"this": group_run(fallback_saga), "base": group_run(base)}
    print(f"Python {sys.version.split()[0]}: µs per member, median of {args.rounds} "
          f"interleaved rounds; base: {args.baseline}")
    print(f"{'context':>8} {'n':>6} {'this':>9} {'base':>9} {'base/this':>9}")
    kinds = {"both": (False, True), "lines": (True,), "empty": (False,)}[args.context]
    for filled in kinds:
        for n in sizes:
            spent: dict[str, list[float]] = {name: [] for name in runs}
            for round_ in range(args.rounds):
                for name in list(runs)[:: 1 if round_ % 2 == 0 else -1]:
                    spent[name].append(await runs[name](n, filled))
            this, base = statistics.median(spent["this"]), statistics.median(spent["base"])
            print(f"{'lines' if filled else 'empty':>8} {n:>6} {this:>9.1f} {base:>9.1f} "
                  f"{base / this:>9.2f}")


if __name__ == "__main__":
    asyncio.run(main())
