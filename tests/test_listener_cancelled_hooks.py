"""S8/S13: a listener hook that raises ``CancelledError``.

Hooks are called, and what they raise is logged and ignored: a listener
never changes a saga's outcome. A ``CancelledError`` out of a hook (a hook
is a plain function: it reads ``future.result()`` of a cancelled future, or
re-raises one it caught) is no cancellation of the task running the saga
unless that task was asked to stop (``cancelling()``): then it is logged and
ignored like any hook's error. When the task *was* cancelled, the
cancellation goes on as S8 says: the completed steps are compensated, then
``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from helpers_saga import Blocker, Boom, OrderCtx, Probe, Trace, acted, compensated, declare, reached

from fallback_saga import MemorySagaStore, Parallel, SagaFailed, SagaStatus, SQLiteSagaStore

HOOKS = ["saga_started", "step_started", "step_completed", "step_call_finished", "saga_finished"]


def _read_cancelled_future() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    future.result()  # raises CancelledError


class CancelledFuture:
    """A listener whose hook ``hook`` reads the result of a cancelled future."""

    calls = 0

    def __new__(cls, hook: str) -> Any:
        def read_cancelled(self: Any, *args: Any) -> None:
            self.calls += 1
            _read_cancelled_future()

        return super().__new__(type(f"ReadsCancelled_{hook}", (cls,), {hook: read_cancelled}))

    def __init__(self, hook: str) -> None:
        self.calls = 0


def listener_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "listener hook" in r.getMessage()]


@pytest.mark.parametrize("hook", HOOKS)
async def test_S8_a_hooks_cancelled_error_without_a_cancellation_is_logged_and_ignored(
    hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    trace: Trace = []
    listener = CancelledFuture(hook)
    saga = declare(Probe("A", trace), Probe("B", trace))(listeners=[listener])
    with caplog.at_level(logging.ERROR, logger="fallback_saga"):
        result = await saga.run(OrderCtx(), saga_id="o-1")
    assert result.status is SagaStatus.COMPLETED
    assert acted(trace) == ["A", "B"]
    assert compensated(trace) == []
    assert listener.calls >= 1
    logged = listener_errors(caplog)
    assert len(logged) == listener.calls
    assert all(r.exc_info and isinstance(r.exc_info[1], asyncio.CancelledError) for r in logged)


async def test_S8_S15_a_group_members_hook_cancelled_error_is_ignored_and_the_group_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace: Trace = []
    listener = CancelledFuture("step_completed")
    saga = declare(Probe("A", trace), Parallel(Probe("B", trace), Probe("C", trace)))(
        listeners=[listener]
    )
    with caplog.at_level(logging.ERROR, logger="fallback_saga"):
        result = await saga.run(OrderCtx(), saga_id="o-1")
    assert result.status is SagaStatus.COMPLETED
    assert compensated(trace) == []
    assert listener.calls == 3
    assert len(listener_errors(caplog)) == 3


async def test_S6_a_hooks_cancelled_error_while_unwinding_leaves_the_unwinding_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing step's unwinding is not cut short by a compensation hook."""
    trace: Trace = []
    listener = CancelledFuture("compensation_started")
    saga = declare(Probe("A", trace), Probe("B", trace), Probe("C", trace, error=Boom))(
        listeners=[listener]
    )
    with (
        caplog.at_level(logging.ERROR, logger="fallback_saga"),
        pytest.raises(SagaFailed) as failed,
    ):
        await saga.run(OrderCtx(), saga_id="o-1")
    assert failed.value.status is SagaStatus.COMPENSATED
    assert isinstance(failed.value.error, Boom)
    assert compensated(trace) == ["B", "A"]
    assert len(listener_errors(caplog)) == 2


async def test_S13_a_durable_sagas_hook_cancelled_error_leaves_the_journal_completed(
    tmp_path: Any,
) -> None:
    trace: Trace = []
    async with SQLiteSagaStore(tmp_path / "j.db") as store:
        saga = declare(Probe("A", trace), Probe("B", trace))(
            store=store, listeners=[CancelledFuture("step_completed")]
        )
        result = await saga.run(OrderCtx(), saga_id="o-1")
        assert result.status is SagaStatus.COMPLETED
        assert (await store.load("o-1")).status is SagaStatus.COMPLETED


class CancelsItsTask:
    """A listener that stops the task running the saga (a kill switch): told
    the last step completed, it asks for the cancellation and raises it."""

    def step_completed(self, saga_id: str, step: str) -> None:
        if step == "C":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            raise asyncio.CancelledError


async def test_S8_a_hook_that_cancels_the_running_task_cancels_the_saga() -> None:
    """The cancellation is the task's: it stops the saga where the hook ran,
    before the saga completes (ignored, the saga would end COMPLETED and the
    cancellation would only surface after)."""
    trace: Trace = []
    store = MemorySagaStore()
    saga = declare(Probe("A", trace), Probe("B", trace), Probe("C", trace))(
        store=store, listeners=[CancelsItsTask()]
    )
    with pytest.raises(asyncio.CancelledError):
        await saga.run(OrderCtx(), saga_id="o-1")
    assert acted(trace) == ["A", "B", "C"]
    assert compensated(trace) == ["C", "B", "A"]
    assert (await store.load("o-1")).status is SagaStatus.COMPENSATED


class RaisesCancelledError:
    """Told a step failed, it raises ``CancelledError``."""

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        raise asyncio.CancelledError


async def test_S8_a_cancelled_run_whose_hook_raises_cancelled_error_is_compensated_and_cancelled(
) -> None:
    """The caller cancels the saga mid-step; a hook told of it raises
    ``CancelledError`` too: still every completed step is compensated, and the
    caller's cancellation propagates."""
    trace: Trace = []
    blocker = Blocker("Wait", trace)
    saga = declare(Probe("A", trace), blocker)(listeners=[RaisesCancelledError()])
    task = asyncio.create_task(saga.run(OrderCtx(), saga_id="o-1"))
    await reached(blocker.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert compensated(trace) == ["A"]
