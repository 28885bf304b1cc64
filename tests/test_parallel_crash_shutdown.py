"""A ``KeyboardInterrupt`` (or ``SystemExit``) out of a ``Parallel`` member's
``act`` leaves the event loop once, and ``asyncio.run``'s shutdown then ends
every task: none is left pending, nothing is logged.

Before, the member's own task let the exception out of the loop (asyncio
re-raises those two from any task), and the group raised it again in the
saga's task while ``asyncio.run`` cancelled the tasks left — cutting that
shutdown short: the task awaiting the saga was closed pending ("Task was
destroyed but it is pending!"), or, with the saga in the main task, that
task's exception logged as never retrieved. On 3.12+ a member that raised
before its first wait (started eagerly) let it out of the group's
``create_task`` instead, its task logged the same way.

The member raises once its sibling is in its call (an event, no sleep), or
at once. The journal is the journal matrix's concern; here, the member's
call is left as a crash leaves it (its STARTED the last row), the sibling's
cancelled, and the saga RUNNING — nothing unwound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from typing import Any

import pytest

from fallback_saga import MemorySagaStore, Parallel, Saga, SagaContext, SagaStatus


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


def saga_class(error: type[BaseException], at_once: bool) -> type[Saga[Ctx]]:
    sibling_called = asyncio.Event()

    class A:
        async def act(self, ctx: Ctx) -> None:
            pass

        async def compensate(self, ctx: Ctx) -> None:
            pass

    class M:
        async def act(self, ctx: Ctx) -> None:
            if not at_once:
                await sibling_called.wait()
            raise error

        async def compensate(self, ctx: Ctx) -> None:
            pass

    class Q:
        async def act(self, ctx: Ctx) -> None:
            sibling_called.set()
            await asyncio.Event().wait()  # in its call until cancelled

        async def compensate(self, ctx: Ctx) -> None:
            pass

    class Crashing(Saga[Ctx]):
        steps = [A, Parallel(M, Q)]

    return Crashing


@pytest.mark.parametrize("at_once", [False, True], ids=["after_waiting", "at_once"])
@pytest.mark.parametrize("host", ["main_task", "awaited_task", "waited_task"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_S15_a_members_crash_leaves_no_task_pending_at_the_loops_end(
    error: type[BaseException], host: str, at_once: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    store = MemorySagaStore()
    tasks: list[asyncio.Task[Any]] = []
    # The names of the tasks this test's loop ran: a task another test left
    # pending (a loop closed under it), collected here, is that test's.
    ours: set[str] = set()

    def named(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        ours.add(task.get_name())
        return task

    async def main() -> None:
        ours.add(asyncio.current_task().get_name())  # type: ignore[union-attr]
        asyncio.get_running_loop().set_task_factory(named)  # type: ignore[arg-type]
        run = saga_class(error, at_once)(store=store).run(Ctx(), saga_id="s")
        if host == "main_task":
            await run
            return
        task = asyncio.create_task(run)
        tasks.append(task)
        if host == "awaited_task":
            await task
        else:
            await asyncio.wait([task])
            task.result()

    with pytest.raises(error):
        asyncio.run(main())
    for task in tasks:  # the test's own handle: retrieved, as its caller would
        if task.done() and not task.cancelled():
            task.exception()
    tasks.clear()
    gc.collect()
    messages = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    logged = [
        message for message in messages
        if "name='Task-" not in message or any(f"name={name!r}" in message for name in ours)
    ]
    assert logged == [], logged

    async def journal() -> tuple[SagaStatus, list[tuple[str, str]]]:
        record = await store.load("s")
        return record.status, [(e.step, e.status.value) for e in record.history
                               if e.action == "act"]

    status, rows = asyncio.run(journal())
    assert status is SagaStatus.RUNNING, rows  # nothing unwound (docs/mechanics.md)
    assert [state for step, state in rows if step == "M"] == ["started"], rows
    assert "completed" not in [state for step, state in rows if step == "Q"], rows
