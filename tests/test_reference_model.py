"""A differential test of the whole contract (S1-S15): seeded random sagas —
plain steps, Fallbacks with ``failure_exceptions``, primaries behind shared
circuit breakers on an injected clock, acts and compensations failing N times
under retry policies, ``Parallel`` groups, ``SubSaga`` children, a caller
cancelled in an act or during the unwinding, a store that dies after a chosen
call and a resume — run on the library and on ``reference_model``, an
independent model written from the contract text. They must agree on every
participant call, in order (where the contract leaves the order open, the
model checks the choice the library made), on the final context, the status,
the outcome, the failed step, the compensation errors, the results, each
child's status and each breaker's state.

``python tests/test_reference_model.py START COUNT`` hunts over more seeds.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_model import STATS, Case, Generator
from reference_runner import exit_unless_this_trees_package, run_case

CHUNK = 50
CHUNKS = 10  # 500 seeds per variant


async def make_case(seed: int, *, durable: bool, crash: bool) -> Case:
    case = Generator(seed, durable=durable).case()
    if crash:
        # The store dies after the first eligible call at or past a call of the
        # first run, drawn among the calls a run without the crash makes.
        calls = await run_case(dataclasses.replace(case, runs=1), False)
        rng = random.Random(seed)
        again = rng.random() < 0.3
        case = dataclasses.replace(
            case,
            crash_after=rng.randrange(max(calls, 1)),
            crash_again=rng.randrange(6) if again else None,  # the resume dies too
            cancel_resume=not again and rng.random() < 0.25,  # the resume is cancelled
        )
    elif durable and random.Random(seed).random() < 0.3:
        # the caller is cancelled as an act returns (its next journal write)
        calls = await run_case(dataclasses.replace(case, runs=1), False)
        case = dataclasses.replace(case, cancel_after=random.Random(seed).randrange(max(calls, 1)))
    if random.Random(-seed).random() < 0.3:
        case = dataclasses.replace(case, transaction=True)  # driven step by step
    return case


async def check_seeds(seeds: range, *, durable: bool, crash: bool) -> int:
    calls = 0
    for seed in seeds:
        case = await make_case(seed, durable=durable, crash=crash)
        try:
            calls += await run_case(case, durable)
        except AssertionError as error:
            raise AssertionError(f"seed {seed} ({durable=}, {crash=}): {case}\n{error}") from None
    return calls


@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_S1_to_S15_the_memory_store_agrees_with_the_reference_model(chunk: int) -> None:
    calls = await check_seeds(range(chunk * CHUNK, (chunk + 1) * CHUNK), durable=False, crash=False)
    assert calls > CHUNK  # the cases did call their participants


@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_S1_to_S15_sqlite_agrees_with_the_reference_model(chunk: int) -> None:
    seeds = range(10_000 + chunk * CHUNK, 10_000 + (chunk + 1) * CHUNK)
    assert await check_seeds(seeds, durable=True, crash=False) > CHUNK


@pytest.mark.parametrize("chunk", range(CHUNKS))
async def test_S10_S13_S14_a_store_dying_after_any_call_then_a_resume_agrees_with_the_model(
    chunk: int,
) -> None:
    seeds = range(20_000 + chunk * CHUNK, 20_000 + (chunk + 1) * CHUNK)
    assert await check_seeds(seeds, durable=True, crash=True) > CHUNK


def test_the_generated_cases_reach_every_behaviour_the_model_knows() -> None:
    """The seeds above are not a quiet corner: each behaviour the model
    replays happened (this runs after them in file order; alone, it runs a
    batch of its own)."""
    import asyncio

    if "crash and resume" not in STATS:
        asyncio.run(check_seeds(range(20_000, 20_100), durable=True, crash=True))
        asyncio.run(check_seeds(range(0, 200), durable=False, crash=False))
        asyncio.run(check_seeds(range(10_000, 10_100), durable=True, crash=False))
    for behaviour in (
        "act cancelled", "breaker opens", "breaker rejects", "breaker trial",
        "breaker ignores an excluded error", "caller cancelled during a compensation",
        "compensation gave up", "fallback taken", "group failed",
        "primary error not fallback-eligible", "crash and resume",
        "given-up compensation tried again on resume", "crash again in the repeated call",
        "resume cancelled in the repeated call", "caller cancelled during a journal write",
        "a Fallback branch runs a child", "group member stopped short",
    ):
        assert STATS.get(behaviour, 0) > 0, (behaviour, STATS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32), durable=st.booleans(), crash=st.booleans())
async def test_S1_to_S15_any_seed_agrees_with_the_reference_model(
    seed: int, durable: bool, crash: bool
) -> None:
    await check_seeds(range(seed, seed + 1), durable=durable, crash=crash and durable)


if __name__ == "__main__":  # a longer hunt
    import asyncio
    import logging
    import sys

    import fallback_saga

    exit_unless_this_trees_package()
    fallback_saga.set_testing(True)
    logging.getLogger("fallback_saga").setLevel(logging.CRITICAL)
    start, count = int(sys.argv[1]), int(sys.argv[2])
    for durable, crash in ((False, False), (True, False), (True, True)):
        total = asyncio.run(check_seeds(range(start, start + count), durable=durable, crash=crash))
        print(f"{count} cases ({durable=}, {crash=}): {total} calls agreed")
