"""S8: a run tells a cancellation its step swallowed by the count of its own
task (``shielding.running_task``). On Python 3.11 that task is found through
asyncio's table of the tasks being stepped, when exactly one loop steps one
(a lookup cheaper than ``asyncio.current_task()``): these tests hold it to
``current_task()`` wherever the table can mislead it — a loop callback, a
coroutine driven by hand, another thread's loop stepping a task meanwhile,
two loops at once, a loop that does not say which thread runs it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from fallback_saga import shielding
from fallback_saga.shielding import NO_TASK, running_task


def expected() -> object:
    """What ``running_task`` must give here: the public lookup's answer."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return NO_TASK
    return NO_TASK if task is None else task


@contextmanager
def task_stepping_in_another_thread() -> Iterator[asyncio.Task[Any]]:
    """A loop in another thread, held in the middle of one of its task's
    steps (blocked on an event, so the task stays in asyncio's table of the
    tasks being stepped) until the block ends."""
    inside, release = threading.Event(), threading.Event()
    found: list[asyncio.Task[Any]] = []

    async def hold() -> None:
        task = asyncio.current_task()
        assert task is not None
        found.append(task)
        inside.set()
        release.wait()  # blocks the loop on purpose: the step stays open

    thread = threading.Thread(target=asyncio.run, args=(hold(),))
    thread.start()
    try:
        assert inside.wait(timeout=30)
        yield found[0]
    finally:
        release.set()
        thread.join(timeout=30)


def drive_by_hand(probe: Callable[[], object]) -> object:
    """Run a coroutine that asks ``probe`` to its end without any loop."""

    async def ask() -> object:
        return probe()

    coroutine = ask()
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


def test_S8_the_running_task_is_the_task_stepping_this_code() -> None:
    async def main() -> None:
        assert running_task() is asyncio.current_task()

        async def member() -> object:
            return running_task()

        other = asyncio.ensure_future(member())
        assert await other is other

    asyncio.run(main())


def test_S8_a_loop_callback_runs_in_no_task_while_another_thread_steps_one() -> None:
    with task_stepping_in_another_thread() as theirs:

        async def main() -> list[object]:
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[list[object]] = loop.create_future()
            loop.call_soon(lambda: answer.set_result([running_task(), expected()]))
            return await answer

        got, wanted = asyncio.run(main())
    assert wanted is NO_TASK
    assert got is NO_TASK
    assert got is not theirs


def test_S8_a_coroutine_driven_by_hand_has_no_task_while_another_thread_steps_one() -> None:
    with task_stepping_in_another_thread() as theirs:
        got = drive_by_hand(running_task)
    assert got is NO_TASK
    assert got is not theirs
    assert drive_by_hand(running_task) is NO_TASK


def test_S8_two_loops_stepping_tasks_each_get_their_own() -> None:
    with task_stepping_in_another_thread() as theirs:

        async def main() -> tuple[object, object]:
            return running_task(), asyncio.current_task()

        got, wanted = asyncio.run(main())
    assert got is wanted
    assert got is not theirs


def test_S8_a_loop_that_does_not_name_its_thread_takes_the_public_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Loop:  # a loop of another kind: no _thread_id
        pass

    class Task:
        _loop = Loop()

    stranger = Task()
    # (3.12+ has no table to consult: the answers are current_task()'s.)
    monkeypatch.setattr(shielding, "_stepping", {Loop(): stranger}, raising=False)
    assert drive_by_hand(running_task) is NO_TASK

    async def main() -> tuple[object, object]:
        return running_task(), asyncio.current_task()

    got, wanted = asyncio.run(main())
    assert got is wanted
    assert got is not stranger


def test_S8_a_table_another_threads_loop_changes_mid_lookup_takes_the_public_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On 3.11 the table is a dict every thread's loop writes to as it
    enters and leaves a task's step. Code outside any task here (a loop
    callback, a coroutine driven by hand) that finds one task in the table,
    another thread's, reads that task's loop — and the thread switch that
    comes meanwhile (at the call of ``get_ident``, where Python may hand the
    GIL over) lets that loop leave its step: the dict changed size during
    the iteration, and the RuntimeError it raised came out of a breaker's
    call or a saga's run. The switch is made here by the loop's own
    ``_thread_id``, read at exactly that moment."""
    table: dict[object, object] = {}

    class Loop:  # another thread's loop, which leaves its step as it is looked at
        @property
        def _thread_id(self) -> int:
            table.clear()
            return threading.get_ident() + 1

    class Task:
        _loop = Loop()

    table[Loop()] = Task()
    monkeypatch.setattr(shielding, "_stepping", table, raising=False)
    assert drive_by_hand(running_task) is NO_TASK

    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[object, object]] = loop.create_future()
        table[Loop()] = Task()
        loop.call_soon(lambda: answer.set_result((running_task(), expected())))
        return await answer

    got, wanted = asyncio.run(main())
    assert got is wanted is NO_TASK
