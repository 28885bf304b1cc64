"""What each optional feature costs per saga, in memory, next to the defaults.

    python benchmarks/features.py            # full run, about two minutes
    python benchmarks/features.py --quick    # a second; CI smoke run, numbers meaningless

The executor runs a plain step (no retry policy, no timeout, no breaker)
inlined in its run loop when no listener asks to hear of each step; anything
else goes through the general path, one coroutine and a few checks more per
step. This measures what that and the other options cost, so that a service
can choose knowingly. The three sagas of ``compare.py`` (``fs_sagas.py``:
plain3, fallback3, fail3) run as:

* **defaults** — ``Saga()`` on the default ``MemorySagaStore``;
* **max_finished=0** — a store that keeps no finished saga;
* **saga listener** — a listener of ``saga_started``/``saga_finished`` only
  (steps still inlined);
* **step listener** — a listener of ``step_started`` only (a no-op): every step
  takes the general path;
* **LoggingListener** — the library's, its logger at WARNING into a
  ``NullHandler`` (the records of failures are made and handled, written
  nowhere);
* **retry policy** — every step with ``retry = RetryPolicy(attempts=3,
  retry_on=(TimeoutError,))``: none is raised, so no retry is made; what is
  measured is the general path;
* **timeout** — every step with ``timeout = 5.0`` (an ``asyncio.timeout``
  per call);
* **breaker** (fallback3 only) — the ``Fallback`` guarded by a
  ``CircuitBreaker``; the primary always fails, so the circuit is open and
  the fallback runs without the primary being called (a downstream outage).

Method as ``compare.py``: one process and loop; every variant's store is first
filled with 10,000 sagas (steady state); interleaved rounds with the starting
variant rotating; ``gc.collect()`` before each batch; thread CPU time; medians
of the rounds, and each variant's ratio to the defaults as the median of the
per-round ratios. Every batch's last outcome is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fs_sagas
from workloads import fallback_saga_check

from fallback_saga import (
    CircuitBreaker,
    Fallback,
    LoggingListener,
    MemorySagaStore,
    RetryPolicy,
    Saga,
    SagaFailed,
)

KINDS = ("plain3", "fallback3", "fail3")
DEFAULTS = "defaults"

# LoggingListener's logger: the records of failures (WARNING) are made and
# handled, and written nowhere.
QUIET = logging.getLogger("fallback_saga.features-bench")
QUIET.setLevel(logging.WARNING)
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


class SagaEars:
    """Hears of sagas only: the steps stay inlined."""

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        pass

    def saga_finished(self, saga_id: str, saga_name: str, status: Any, error: Any) -> None:
        pass


class StepEars:
    """Hears of every step: every step takes the general path."""

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        pass


def with_option(step: type, **attributes: Any) -> type:
    """``step`` with class attributes added (a retry policy, a timeout)."""
    return type(step.__name__, (step,), attributes)


def steps_of(kind: str, **attributes: Any) -> list[Any]:
    """The ``kind`` saga's steps, each with ``attributes``."""
    def opt(step: type) -> type:
        return with_option(step, **attributes) if attributes else step

    second: Any = opt(fs_sagas.StepB)
    if kind == "fallback3":
        second = Fallback(step=opt(fs_sagas.StepBPrimary), fallback=opt(fs_sagas.StepBFallback))
    last = opt(fs_sagas.StepCFail if kind == "fail3" else fs_sagas.StepC)
    return [opt(fs_sagas.StepA), second, last]


def saga_class(kind: str, steps: list[Any]) -> type[Saga[Any]]:
    return types.new_class(
        f"Features{kind}", (Saga[fs_sagas.Ctx],), {},
        lambda namespace: namespace.update(steps=steps),
    )


def variants(kind: str) -> dict[str, Callable[[], Saga[Any]]]:
    """Each variant of ``kind``: a factory of its saga (one per variant)."""
    plain = saga_class(kind, steps_of(kind))
    found: dict[str, Callable[[], Saga[Any]]] = {
        DEFAULTS: lambda: plain(),
        "max_finished=0": lambda: plain(store=MemorySagaStore(max_finished=0)),
        "saga listener": lambda: plain(listeners=[SagaEars()]),
        "step listener": lambda: plain(listeners=[StepEars()]),
        "LoggingListener": lambda: plain(listeners=[LoggingListener(logger=QUIET)]),
        "retry policy": lambda: saga_class(kind, steps_of(kind, retry=RetryPolicy(
            attempts=3, delay=0.0, jitter=0.0, retry_on=(TimeoutError,)
        )))(),
        "timeout": lambda: saga_class(kind, steps_of(kind, timeout=5.0))(),
    }
    if kind == "fallback3":
        breaker = CircuitBreaker(fail_max=1, reset_timeout=3600.0, name="features-bench")
        guarded = saga_class(kind, [
            fs_sagas.StepA,
            Fallback(step=fs_sagas.StepBPrimary, fallback=fs_sagas.StepBFallback,
                     circuit_breaker=breaker),
            fs_sagas.StepC,
        ])
        found["breaker (open)"] = lambda: guarded()
    return found


async def batch(saga: Saga[Any], kind: str, n: int) -> float:
    """µs of this thread's CPU per saga over ``n`` sagas; checks the last one."""
    Ctx = fs_sagas.Ctx
    outcome: Any = None
    gc.collect()
    started = time.thread_time()
    for _ in range(n):
        ctx = Ctx(order_id="o-1")
        try:
            outcome = (ctx, await saga.run(ctx))
        except SagaFailed as error:
            outcome = (ctx, error)
    elapsed = time.thread_time() - started
    fallback_saga_check(kind)(outcome)
    return elapsed / n * 1e6


async def measure(kind: str, rounds: int, count: int, fill: int) -> dict[str, list[float]]:
    sagas = {name: make() for name, make in variants(kind).items()}
    for saga in sagas.values():
        await batch(saga, kind, fill)  # the store full, as in a service that has run a while
    names = list(sagas)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            times[name].append(await batch(sagas[name], kind, count))
    return times


def report(kind: str, times: dict[str, list[float]]) -> str:
    base = times[DEFAULTS]
    lines = [f"{kind}: µs per saga (median of {len(base)} rounds), / defaults (paired), "
             "and the difference"]
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        extra = statistics.median(values) - statistics.median(base)
        lines.append(
            f"  {name:<18} {statistics.median(values):8.2f} µs   {ratio:5.2f}x   ({extra:+.2f} µs)"
        )
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (numbers meaningless)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--count", type=int, default=None, help="sagas per batch")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 15)
    count = args.count or (20 if args.quick else 3000)
    fill = 20 if args.quick else 10_000
    print(f"Python {platform.python_version()} on {platform.machine()}; "
          f"{rounds} rounds of {count} sagas per variant")
    for kind in KINDS:
        print(report(kind, await measure(kind, rounds, count, fill)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
