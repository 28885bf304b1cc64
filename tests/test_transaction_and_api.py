"""Streaming with ``Saga.transaction``, ``current_step()``, step timeouts,
Fallback retries, the public API, zero dependencies and vendoring."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers_saga import (
    Blocker,
    Boom,
    OrderCtx,
    Probe,
    SleepRecorder,
    Trace,
    acted,
    compensated,
    declare,
    reached,
    wreck_context,
)

import fallback_saga
from fallback_saga import (
    CircuitBreaker,
    Fallback,
    RetryPolicy,
    SagaFailed,
    SagaStatus,
    SagaStepResult,
    StepInfo,
    StepStatus,
    current_step,
)

PACKAGE_DIR = Path(fallback_saga.__file__).resolve().parent


# --------------------------------------------------------------------------- transaction


async def test_transaction_streams_each_step_result_and_commits() -> None:
    trace: Trace = []
    saga = declare(
        Probe("A", trace), Fallback(step=Probe("P", trace, error=Boom), fallback=Probe("F", trace))
    )()
    streamed: list[SagaStepResult[Any, Any]] = []
    acts_seen_per_result: list[list[str]] = []

    async with saga.transaction(OrderCtx(), saga_id="tx-1") as tx:
        assert tx.saga_id == "tx-1"
        async for step_result in tx:
            streamed.append(step_result)
            acts_seen_per_result.append(acted(trace))

    assert [(r.step_name, r.response, r.saga_id) for r in streamed] == [
        ("A", "A-response", "tx-1"),
        ("F", "F-response", "tx-1"),
    ]
    # Each result arrives as soon as its step ran, before the next step starts.
    assert acts_seen_per_result == [["A"], ["A", "P", "F"]]
    assert compensated(trace) == []
    assert (await saga.store.load("tx-1")).status is SagaStatus.COMPLETED


async def test_transaction_generates_a_saga_id() -> None:
    saga = declare(Probe("A", []))()
    async with saga.transaction(OrderCtx()) as tx:
        async for _ in tx:
            pass
    assert isinstance(tx.saga_id, str)
    assert tx.saga_id
    assert (await saga.store.load(tx.saga_id)).status is SagaStatus.COMPLETED


async def test_transaction_exception_in_body_unwinds_and_propagates_unchanged() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace), Probe("B", trace), Probe("C", trace))()
    problem = Boom("the caller changed its mind")

    async def drive() -> None:
        async with saga.transaction(OrderCtx(), saga_id="tx-exc") as tx:
            async for step_result in tx:
                if step_result.step_name == "B":
                    raise problem

    with pytest.raises(Boom) as info:
        await drive()

    assert info.value is problem
    assert acted(trace) == ["A", "B"]
    assert compensated(trace) == ["B", "A"]
    assert (await saga.store.load("tx-exc")).status is SagaStatus.COMPENSATED


async def test_transaction_break_unwinds_completed_steps() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace), Probe("B", trace), Probe("C", trace))()

    async with saga.transaction(OrderCtx(), saga_id="tx-break") as tx:
        async for _ in tx:
            break

    assert acted(trace) == ["A"]
    assert compensated(trace) == ["A"]
    assert (await saga.store.load("tx-break")).status is SagaStatus.COMPENSATED


async def test_transaction_a_block_that_ends_before_the_last_step_unwinds_not_commits() -> None:
    """README: a transaction commits when its block ends after every step
    ran; a block that ends normally with steps left (an ``async for`` over
    part of it, or none at all) is left early: what ran is compensated, and
    the steps never run are not run for it."""
    trace: Trace = []
    saga = declare(Probe("A", trace), Probe("B", trace))()

    async with saga.transaction(OrderCtx(), saga_id="tx-part") as tx:
        await tx.__anext__()  # the first step only
    assert (acted(trace), compensated(trace)) == (["A"], ["A"])
    assert tx.status is SagaStatus.COMPENSATED
    assert tx.result is None

    async with saga.transaction(OrderCtx(), saga_id="tx-none") as untouched:
        pass
    assert acted(trace) == ["A"]
    assert untouched.status is SagaStatus.COMPENSATED
    assert (await saga.store.load("tx-none")).status is SagaStatus.COMPENSATED


async def test_transaction_step_failure_raises_saga_failed_from_the_loop() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace), Probe("B", trace, error=Boom), Probe("C", trace))()
    received: list[str] = []

    async def drive() -> None:
        async with saga.transaction(OrderCtx(), saga_id="tx-fail") as tx:
            async for step_result in tx:
                received.append(step_result.step_name)

    with pytest.raises(SagaFailed) as info:
        await drive()

    assert received == ["A"]
    assert info.value.failed_step == "B"
    assert info.value.status is SagaStatus.COMPENSATED
    assert compensated(trace) == ["A"]


async def test_transaction_cancelled_mid_step_compensates_then_reraises() -> None:
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    saga = declare(Probe("A", trace), blocker)()

    async def drive() -> None:
        async with saga.transaction(OrderCtx(), saga_id="tx-cancel") as tx:
            async for _ in tx:
                pass

    task = asyncio.create_task(drive())
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert compensated(trace) == ["A"]
    assert (await saga.store.load("tx-cancel")).status is SagaStatus.COMPENSATED


async def test_S5_a_transaction_stepped_from_two_tasks_at_once_runs_each_step_once() -> None:
    """Two tasks awaiting ``__anext__`` of one transaction at the same time
    both ran the step in flight: its act twice (the journal holding two
    STARTED records for it), and the second task was handed its result
    again. The second is refused, as an async generator refuses a second
    ``anext()`` while one runs; the first steps on undisturbed."""
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    saga = declare(blocker, Probe("B", trace))()

    async with saga.transaction(OrderCtx(), saga_id="tx-two-tasks") as tx:
        first = asyncio.create_task(tx.__anext__())
        await reached(blocker.started)
        with pytest.raises(RuntimeError, match="another task is already running"):
            async with asyncio.timeout(10):  # a safety net: it ran the blocked step again
                await tx.__anext__()
        blocker.release.set()
        assert (await first).step_name == "Wait"
        assert [r.step_name async for r in tx] == ["B"]

    assert acted(trace) == ["Wait", "B"]
    assert tx.status is SagaStatus.COMPLETED
    history = (await saga.store.load("tx-two-tasks")).history
    assert [(e.step, e.status) for e in history if e.action == "act"] == [
        ("Wait", StepStatus.STARTED), ("Wait", StepStatus.COMPLETED),
        ("B", StepStatus.STARTED), ("B", StepStatus.COMPLETED),
    ]


async def test_S5_a_block_left_while_another_task_runs_its_step_unwinds_that_step_too() -> None:
    """The block was left (``break``, an error) while a task it started was
    in the middle of the next step: the unwinding ran beside that step,
    compensating the first step twice, and the step that then completed was
    left applied under a COMPENSATED saga. Leaving the block now waits for
    the step in flight, then compensates everything that completed, once."""
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    saga = declare(Probe("A", trace), blocker, Probe("C", trace))()

    stepping: list[asyncio.Task[list[str]]] = []

    async def leave_while_stepping() -> None:
        async with saga.transaction(OrderCtx(), saga_id="tx-left") as tx:
            assert (await tx.__anext__()).step_name == "A"

            async def step_on() -> list[str]:
                return [r.step_name async for r in tx]

            stepping.append(asyncio.create_task(step_on()))
            await reached(blocker.started)
            # The step finishes only once the block is being left.
            asyncio.get_running_loop().call_soon(blocker.release.set)
            raise Boom("left the block")

    with pytest.raises(Boom):
        await leave_while_stepping()

    # The task stepping on got the step in flight, and no step after it.
    assert await stepping[0] == ["Wait"]
    assert acted(trace) == ["A", "Wait"]
    assert compensated(trace) == ["Wait", "A"]
    assert (await saga.store.load("tx-left")).status is SagaStatus.COMPENSATED


async def _closed_early(store: Any) -> tuple[Trace, SagaStatus, list[SagaStatus]]:
    """A transaction streamed from an async generator whose consumer takes
    the first result and closes it: the steps called, the stored status,
    the statuses ``saga_finished`` reported."""
    trace: Trace = []
    ends: list[SagaStatus] = []

    class Ends:
        def saga_finished(self, saga_id: str, name: str, status: SagaStatus,
                          error: BaseException | None) -> None:
            ends.append(status)

    saga_class = declare(Probe("A", trace), Probe("B", trace))
    saga = saga_class(listeners=[Ends()], **({"store": store} if store is not None else {}))

    async def stream() -> Any:
        async with saga.transaction(OrderCtx(), saga_id="tx-gen") as tx:
            async for step_result in tx:
                yield step_result

    results = stream()
    async for _ in results:
        break  # the consumer wanted the first step's result only
    await results.aclose()
    return trace, (await saga.store.load("tx-gen")).status, ends


async def test_S8_a_transaction_left_by_closing_its_async_generator_unwinds(
    tmp_path: Path,
) -> None:
    """``aclose()`` (or the generator's collection) throws ``GeneratorExit``
    at the ``yield`` inside the block. That is leaving the block early, like
    a ``break``: the completed steps are compensated, the journal ends
    COMPENSATED (never RUNNING, which recovery would run forward) and the
    listeners hear the end — on a durable store too."""
    from fallback_saga import SQLiteSagaStore

    async with SQLiteSagaStore(tmp_path / "g.db") as durable:
        for store in (None, durable):
            trace, status, ends = await _closed_early(store)
            assert acted(trace) == ["A"]
            assert compensated(trace) == ["A"]
            assert status is SagaStatus.COMPENSATED
            assert ends == [SagaStatus.COMPENSATED]


async def test_two_transactions_open_in_one_task_each_step_sees_its_own_saga() -> None:
    """``async with one.transaction(...) as t1, two.transaction(...) as t2``:
    each saga's steps see their own saga in ``current_step()`` (their
    idempotency keys), whichever transaction was entered last."""
    keys: list[str] = []

    class Charge:
        name = "Charge"

        async def act(self, ctx: OrderCtx) -> None:
            keys.append(current_step().idempotency_key)

        async def compensate(self, ctx: OrderCtx) -> None:
            keys.append(current_step().idempotency_key)

    one = declare(Charge(), Probe("Fails", [], error=Boom), name="One")()
    two = declare(Charge(), name="Two")()

    async def both() -> None:
        async with one.transaction(OrderCtx(), saga_id="one") as t1, \
                two.transaction(OrderCtx(), saga_id="two") as t2:
            async for _ in t2:
                pass
            async for _ in t1:
                pass

    with pytest.raises(SagaFailed) as failed:
        await both()
    assert failed.value.saga_id == "one"
    assert failed.value.failed_step == "Fails"
    # (Two's block was left with one's SagaFailed: it unwinds too.)
    assert keys == ["two:Charge", "one:Charge", "one:Charge:compensate", "two:Charge:compensate"]


# --------------------------------------------------------------------------- current_step


def test_current_step_outside_a_step_is_lookup_error() -> None:
    with pytest.raises(LookupError):
        current_step()


async def test_current_step_gives_id_name_attempt_and_a_stable_idempotency_key() -> None:
    infos: list[tuple[str, str, str, int, str]] = []

    def remember() -> None:
        info = current_step()
        assert isinstance(info, StepInfo)
        infos.append((info.saga_id, info.step, info.action, info.attempt, info.idempotency_key))

    class Flaky:
        name = "Flaky"
        calls = 0

        async def act(self, ctx: OrderCtx) -> str:
            remember()
            self.calls += 1
            if self.calls < 3:
                raise Boom("transient")
            return "ok"

        async def compensate(self, ctx: OrderCtx) -> None:
            remember()

    fallback = Fallback(step=Flaky(), fallback=Probe("Backup", []), retry=RetryPolicy(attempts=3))
    saga = declare(fallback, Probe("Late", [], error=Boom))()

    with pytest.raises(SagaFailed):
        await saga.run(OrderCtx(), saga_id="cs-1")

    acts = [i for i in infos if i[2] == "act"]
    undo = [i for i in infos if i[2] == "compensate"]
    assert [(i[0], i[1], i[3]) for i in acts] == [("cs-1", "Flaky", n) for n in (1, 2, 3)]
    assert len({i[4] for i in acts}) == 1  # the same key on every retry
    assert [(i[0], i[1], i[3]) for i in undo] == [("cs-1", "Flaky", 1)]
    assert undo[0][4] != acts[0][4]  # undoing is a different operation
    with pytest.raises(LookupError):
        current_step()


async def test_idempotency_key_differs_between_sagas_and_steps() -> None:
    keys: list[str] = []

    class Key:
        def __init__(self, name: str) -> None:
            self.name = name

        async def act(self, ctx: OrderCtx) -> str:
            keys.append(current_step().idempotency_key)
            return "ok"

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    saga = declare(Key("A"), Key("B"))()
    await saga.run(OrderCtx(), saga_id="k-1")
    await saga.run(OrderCtx(), saga_id="k-2")

    assert len(set(keys)) == 4


async def test_current_step_is_per_task_for_concurrent_sagas() -> None:
    seen: dict[str, list[str]] = {"s-1": [], "s-2": []}
    both_inside = asyncio.Barrier(2)

    class Interleaved:
        name = "Interleaved"

        async def act(self, ctx: OrderCtx) -> str:
            before = current_step().saga_id
            await both_inside.wait()  # both sagas are inside the step now
            after = current_step().saga_id
            seen[ctx.order_id] += [before, after]
            return "ok"

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    saga = declare(Interleaved())()
    async with asyncio.timeout(10):  # safety net: the barrier needs both sagas inside
        await asyncio.gather(
            saga.run(OrderCtx(order_id="s-1"), saga_id="s-1"),
            saga.run(OrderCtx(order_id="s-2"), saga_id="s-2"),
        )

    assert seen == {"s-1": ["s-1", "s-1"], "s-2": ["s-2", "s-2"]}


# --------------------------------------------------------------------------- timeout


class NeverAnswers:
    """A step that waits forever for a reply; ``timeout`` is tiny."""

    timeout = 0.001

    def __init__(self, name: str = "NeverAnswers") -> None:
        self.name = name
        self.never = asyncio.Event()

    async def act(self, ctx: OrderCtx) -> str:
        ctx.reservation = "half-done"
        try:
            async with asyncio.timeout(10):  # safety net: the step's own timeout is tiny
                await self.never.wait()
        except TimeoutError:
            raise AssertionError("the step's timeout never fired") from None
        return "unreachable"

    async def compensate(self, ctx: OrderCtx) -> None:
        pass


async def test_step_timeout_fails_the_step_with_timeout_error() -> None:
    trace: Trace = []
    saga = declare(Probe("A", trace), NeverAnswers())()

    with pytest.raises(SagaFailed) as info:
        await saga.run(OrderCtx())

    assert isinstance(info.value.error, TimeoutError)
    assert info.value.failed_step == "NeverAnswers"
    assert compensated(trace) == ["A"]


async def test_step_timeout_is_fallback_eligible() -> None:
    trace: Trace = []
    backup = Probe("Backup", trace, observe=lambda ctx: ctx.reservation)
    saga = declare(
        Fallback(step=NeverAnswers(), fallback=backup, failure_exceptions=(TimeoutError,))
    )()

    result = await saga.run(OrderCtx())

    assert result.results[0].step_name == "Backup"
    assert backup.seen == [None]  # the timed-out primary's change was undone


async def test_step_within_its_timeout_completes() -> None:
    class Quick:
        timeout = 60.0

        async def act(self, ctx: OrderCtx) -> str:
            return "quick"

        async def compensate(self, ctx: OrderCtx) -> None:
            pass

    result = await declare(Quick())().run(OrderCtx())
    assert result.results[0].response == "quick"


# --------------------------------------------------------------------------- Fallback retry


async def test_fallback_retry_retries_the_primary_from_the_snapshot() -> None:
    trace: Trace = []
    sleeps = SleepRecorder()
    primary = Probe(
        "Primary", trace, error=Boom, fail_times=2, mutate=wreck_context, observe=copy.deepcopy
    )
    backup = Probe("Backup", trace)
    policy = RetryPolicy(attempts=3, delay=1.0, backoff=2.0, jitter=0.0, sleep=sleeps)
    saga = declare(Fallback(step=primary, fallback=backup, retry=policy))()
    ctx = OrderCtx()
    before = copy.deepcopy(ctx)

    result = await saga.run(ctx, saga_id="retry-ok")

    assert primary.acts == 3
    assert primary.seen == [before, before, before]
    assert backup.acts == 0
    assert result.results[0].step_name == "Primary"
    assert sleeps.delays == [1.0, 2.0]
    record = await saga.store.load("retry-ok")
    assert [(e.attempt, e.status) for e in record.history if e.step == "Primary"] == [
        (1, StepStatus.STARTED),
        (1, StepStatus.FAILED),
        (2, StepStatus.STARTED),
        (2, StepStatus.FAILED),
        (3, StepStatus.STARTED),
        (3, StepStatus.COMPLETED),
    ]


async def test_fallback_retry_exhausted_then_falls_back() -> None:
    trace: Trace = []
    primary = Probe("Primary", trace, error=Boom, mutate=wreck_context)
    backup = Probe("Backup", trace, observe=copy.deepcopy)
    saga = declare(Fallback(step=primary, fallback=backup, retry=RetryPolicy(attempts=3)))()

    result = await saga.run(OrderCtx())

    assert acted(trace) == ["Primary", "Primary", "Primary", "Backup"]
    assert backup.seen == [OrderCtx()]
    assert result.results[0].step_name == "Backup"


async def test_fallback_retry_never_retries_an_open_circuit() -> None:
    trace: Trace = []
    sleeps = SleepRecorder()
    breaker = CircuitBreaker(name="svc")
    breaker.open()
    primary = Probe("Primary", trace)
    saga = declare(
        Fallback(
            step=primary,
            fallback=Probe("Backup", trace),
            circuit_breaker=breaker,
            retry=RetryPolicy(attempts=5, sleep=sleeps),
        )
    )()

    result = await saga.run(OrderCtx())

    assert primary.acts == 0
    assert sleeps.delays == []
    assert result.results[0].step_name == "Backup"


async def test_fallback_retry_stops_when_the_circuit_opens_mid_retries() -> None:
    trace: Trace = []
    sleeps = SleepRecorder()
    breaker = CircuitBreaker(fail_max=2, name="svc")
    primary = Probe("Primary", trace, error=Boom)
    saga = declare(
        Fallback(
            step=primary,
            fallback=Probe("Backup", trace),
            circuit_breaker=breaker,
            retry=RetryPolicy(attempts=10, sleep=sleeps),
        )
    )()

    result = await saga.run(OrderCtx())

    assert primary.acts == 2  # the second failure opened the circuit
    assert len(sleeps.delays) == 2  # before tries 2 and 3; try 3 was rejected
    assert result.results[0].step_name == "Backup"


async def test_fallback_retry_only_retries_errors_it_is_told_to() -> None:
    trace: Trace = []
    primary = Probe("Primary", trace, error=KeyError)
    saga = declare(
        Fallback(
            step=primary,
            fallback=Probe("Backup", trace),
            retry=RetryPolicy(attempts=4, retry_on=(ConnectionError,)),
        )
    )()

    await saga.run(OrderCtx())

    assert acted(trace) == ["Primary", "Backup"]


# --------------------------------------------------------------------------- public API


PROMISED_NAMES = {
    "SagaContext",
    "Response",
    "Step",
    "SagaStepHandler",
    "SagaStepResult",
    "Saga",
    "SagaResult",
    "SagaFailed",
    "SagaDefinitionError",
    "Fallback",
    "CircuitBreaker",
    "CircuitState",
    "CircuitOpenError",
    "RetryPolicy",
    "SagaStatus",
    "StepStatus",
    "MemorySagaStore",
    "current_step",
    "LoggingListener",
    "set_testing",
}


def test_public_api_exports_the_promised_names() -> None:
    assert set(fallback_saga.__all__) >= PROMISED_NAMES
    for name in fallback_saga.__all__:
        assert hasattr(fallback_saga, name), name


def test_statuses_are_str_enums_with_lowercase_values() -> None:
    assert {s.name for s in SagaStatus} == {
        "PENDING",
        "RUNNING",
        "COMPENSATING",
        "COMPLETED",
        "COMPENSATED",
        "FAILED",
    }
    assert {"STARTED", "COMPLETED", "FAILED"} <= {s.name for s in StepStatus}
    for status in [*SagaStatus, *StepStatus]:
        assert isinstance(status, str)
        assert status.value == status.name.lower()
        assert status == status.value


def run_python(code: str, *args: str, cwd: Path | None = None) -> Any:
    completed = subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_import_loads_only_the_standard_library() -> None:
    report = run_python(
        """
        import json, sys
        before = set(sys.modules)
        import fallback_saga
        new = sorted(set(sys.modules) - before)
        foreign = [
            name for name in new
            if name.split(".")[0] not in sys.stdlib_module_names
            and name.split(".")[0] != "fallback_saga"
        ]
        print(json.dumps({"new": len(new), "foreign": foreign}))
        """
    )
    assert report["new"] > 0
    assert report["foreign"] == []


def test_vendored_copy_imports_and_runs_without_a_top_level_name(tmp_path: Path) -> None:
    vendor = tmp_path / "someapp" / "_vendor"
    shutil.copytree(
        PACKAGE_DIR, vendor / "fallback_saga", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "someapp" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")

    report = run_python(
        f"""
        import asyncio, dataclasses, json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.modules["fallback_saga"] = None  # any absolute self-import now fails loudly

        from someapp._vendor import fallback_saga as fs

        @dataclasses.dataclass
        class Ctx(fs.SagaContext):
            value: str = ""

        class Primary:
            async def act(self, ctx):
                raise ConnectionError("down")
            async def compensate(self, ctx):
                pass

        class Backup(fs.SagaStepHandler[Ctx, str]):
            async def act(self, ctx):
                ctx.value = "backup"
                return self._generate_step_result(ctx.value)

        class Tiny(fs.Saga[Ctx]):
            steps = [fs.Fallback(step=Primary, fallback=Backup,
                                 circuit_breaker=fs.CircuitBreaker(fail_max=1))]

        result = asyncio.run(Tiny().run(Ctx()))
        top_level = [n for n in sys.modules
                     if n.split(".")[0] == "fallback_saga" and sys.modules[n] is not None]
        vendored = [n for n in sys.modules if n.startswith("someapp._vendor.fallback_saga")]
        print(json.dumps({{
            "file": fs.__file__,
            "value": result.context.value,
            "status": result.status.value,
            "top_level": top_level,
            "vendored": len(vendored),
        }}))
        """,
        "-I",
        cwd=tmp_path,
    )

    assert Path(report["file"]).resolve().is_relative_to(tmp_path.resolve())
    assert report["value"] == "backup"
    assert report["status"] == "completed"
    assert report["top_level"] == []
    assert report["vendored"] > 1
