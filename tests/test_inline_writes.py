"""The executor's inline journal writes (``journal.settle_inline``), bounded by
``journal_timeout`` like every other try (S13).

A store that declares ``writes_outlive_cancellation`` (SQLite, PostgreSQL)
gets its first try of each write driven from the saga's own task, with no
task of its own. That try must not outlast the saga's ``journal_timeout``
any more than the retries after it may: a store that never answers is
abandoned at the deadline — its coroutine cancelled, as ``asyncio.timeout_at``
would cancel a try in a task of its own — and the write is reported in
doubt. One deadline covers the first try and the retries.

Time here is the loop's, and virtual (``helpers_clock.VirtualClockLoop``): the loop jumps
to its next timer whenever it has nothing else to do, so a 10 s deadline
costs no real time and the elapsed loop time is exact. A loop left with
nothing to wait for at all raises ``Deadlock`` instead of hanging (the bug
these tests catch was such a hang).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from helpers_clock import run_virtual

from fallback_saga import (
    MemorySagaStore,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaInterrupted,
    SagaStatus,
)
from fallback_saga.journal import settle_inline

T = TypeVar("T")

TIMEOUT = 10.0  # the sagas' journal_timeout, in (virtual) seconds


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str


def order_saga(log: list[str]) -> type[Saga[Ctx]]:
    class Reserve:
        async def act(self, ctx: Ctx) -> None:
            log.append("reserve")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("release")

    class Charge:
        async def act(self, ctx: Ctx) -> None:
            log.append("charge")

        async def compensate(self, ctx: Ctx) -> None:
            log.append("refund")

    class OrderSaga(Saga[Ctx]):
        steps = [Reserve, Charge]

    return OrderSaga


class Unanswering:
    """A store (over a memory store) whose writes outlive cancellation, and
    whose write number ``at`` never answers on its first try — a server
    that hangs. ``retries``: what the later tries of that write do
    ("answer", or "hang" too). Records how each try ended."""

    writes_outlive_cancellation = True

    def __init__(self, *, at: int, retries: str = "answer", cleanup: bool = False) -> None:
        self.inner = MemorySagaStore()
        self.at = at
        self.retries = retries
        self.cleanup = cleanup  # the abandoned try waits once more, to clean up
        self.writes = 0
        self.tries: list[tuple[int, str, float]] = []  # (write, how it ended, loop time)
        self.hanging = asyncio.Event()  # set once a try hangs

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _write(self, number: int, send: Callable[[], Any]) -> None:
        first = not any(n == number for n, _, _ in self.tries)
        if number == self.at and (first or self.retries == "hang"):
            self.hanging.set()
            try:
                await asyncio.get_running_loop().create_future()  # never resolved
            except asyncio.CancelledError:
                if self.cleanup:
                    await asyncio.sleep(0)  # it may still wait, and is waited for
                self.tries.append((number, "abandoned", self._now()))
                raise
        await send()
        self.tries.append((number, "written", self._now()))

    async def create(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        number, self.writes = self.writes, self.writes + 1
        await self._write(number, lambda: self.inner.create(saga_id, *args, **kwargs))

    async def append(self, saga_id: str, *args: Any, **kwargs: Any) -> None:
        # A retry is the same write again: numbered by the entries it follows.
        number = self._number_of(saga_id, args, kwargs)
        await self._write(number, lambda: self.inner.append(saga_id, *args, **kwargs))

    def _number_of(self, saga_id: str, args: Any, kwargs: Any) -> int:
        record = self.inner._sagas.get(saga_id)
        held = 0 if record is None else len(record.history)
        key = (saga_id, held, kwargs.get("status"))
        numbers = self.__dict__.setdefault("_numbers", {})
        if key not in numbers:
            numbers[key] = self.writes
            self.writes += 1
        number: int = numbers[key]
        return number

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)


def saga_on(store: Unanswering, log: list[str], **kwargs: Any) -> Saga[Ctx]:
    options: dict[str, Any] = {
        "journal_retry": RetryPolicy(attempts=5, delay=1.0, jitter=0.0),
        "journal_timeout": TIMEOUT,
    }
    options.update(kwargs)
    return order_saga(log)(store=store, **options)  # type: ignore[arg-type]


def interrupted_run(
    store: Unanswering, log: list[str], saga_id: str
) -> tuple[SagaInterrupted, float]:
    """Run an order saga on ``store`` under the virtual clock until it stops
    with ``SagaInterrupted``: that error, and the loop time the run began."""

    async def main() -> tuple[SagaInterrupted, float]:
        saga = saga_on(store, log)
        start = asyncio.get_running_loop().time()
        with pytest.raises(SagaInterrupted) as stopped:
            await saga.run(Ctx(order_id=saga_id), saga_id=saga_id)
        return stopped.value, start

    return run_virtual(main)


@pytest.mark.parametrize("at", [0, 1, 2])
def test_S13_an_inline_first_try_that_never_answers_is_abandoned_at_journal_timeout(
    at: int,
) -> None:
    """The first try of write ``at`` (0: the creation, with Reserve's STARTED;
    1: Reserve's COMPLETED with Charge's STARTED; 2: Charge's COMPLETED)
    hangs. Before, the inline try had no deadline: the run waited forever
    (here: ``Deadlock``). Now it is abandoned — cancelled — exactly
    ``journal_timeout`` after it began, and the run stops in doubt with the
    ``TimeoutError``; no retry starts after the deadline, and nothing runs
    that the journal does not hold."""
    log: list[str] = []
    store = Unanswering(at=at)

    stopped, start = interrupted_run(store, log, "o-1")
    assert stopped.in_doubt
    assert isinstance(stopped.error, TimeoutError)
    abandoned = [(n, when) for n, how, when in store.tries if how == "abandoned"]
    assert abandoned == [(at, start + TIMEOUT)]
    assert [n for n, how, _ in store.tries if how == "written"] == list(range(at))
    assert log == ["reserve", "charge"][:at]  # each act only once its STARTED is durable


def test_S13_one_deadline_covers_the_inline_first_try_and_its_retries() -> None:
    """The first try of write 1 (Reserve's COMPLETED, Charge's STARTED) fails
    after 4 s with an error that leaves it in doubt; every later try hangs. The retries share the
    first try's deadline: the run stops ``journal_timeout`` after the write
    began, never later."""
    log: list[str] = []

    class FailsThenHangs(Unanswering):
        # Conditional appends: a store without them is not sent an in-doubt
        # write again at all (test_journal_truth).
        appends_after = True

        async def _write(self, number: int, send: Callable[[], Any]) -> None:
            if number == self.at and not any(n == number for n, _, _ in self.tries):
                await asyncio.sleep(4.0)  # a slow answer, then the connection drops
                self.tries.append((number, "failed", self._now()))
                raise ConnectionError("connection lost after COMMIT was sent")
            await super()._write(number, send)

    store = FailsThenHangs(at=1, retries="hang")

    stopped, start = interrupted_run(store, log, "o-2")
    assert stopped.in_doubt
    assert [how for n, how, _ in store.tries if n == 1] == ["failed", "abandoned"]
    assert store.tries[-1][2] == start + TIMEOUT
    assert log == ["reserve"]


def test_S13_an_abandoned_inline_try_is_driven_to_its_end_before_the_run_goes_on() -> None:
    """The abandoned try still waits once, to clean up, after its
    cancellation: it is driven to its end (its record says so) before the
    run reports the write in doubt."""
    store = Unanswering(at=1, cleanup=True)

    async def main() -> SagaInterrupted:
        with pytest.raises(SagaInterrupted) as stopped:
            await saga_on(store, []).run(Ctx(order_id="o-3"), saga_id="o-3")
        return stopped.value

    stopped = run_virtual(main)
    assert stopped.in_doubt
    assert isinstance(stopped.error, TimeoutError)
    assert [how for n, how, _ in store.tries if n == 1] == ["abandoned"]


def test_S13_cancelling_the_saga_never_abandons_its_inline_write_the_deadline_does() -> None:
    """The saga's task is cancelled while the first try of write 1 (Reserve's
    COMPLETED, Charge's STARTED) hangs: the write is not abandoned for that (it may land), only at
    the deadline; then the run stops, reporting what the journal may hold,
    and the caller gets its CancelledError."""
    log: list[str] = []
    store = Unanswering(at=1)

    async def main() -> tuple[float, SagaStatus]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = loop.create_task(saga_on(store, log).run(Ctx(order_id="o-4"), saga_id="o-4"))
        await store.hanging.wait()
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.inner.load("o-4")
        return start, record.status

    start, status = run_virtual(main)
    assert [(n, how) for n, how, _ in store.tries] == [(0, "written"), (1, "abandoned")]
    assert store.tries[-1][2] == start + TIMEOUT  # not at the cancellation (1 s in)
    assert status is SagaStatus.RUNNING
    assert log == ["reserve"]  # no compensation: the journal may say Charge STARTED


def test_an_inline_write_that_answers_in_time_leaves_no_timer_behind() -> None:
    """The deadline's timer is cancelled once the try is done: a finished run
    leaves no live timer on the loop."""
    store = Unanswering(at=-1)

    async def main() -> list[asyncio.TimerHandle]:
        loop = asyncio.get_running_loop()
        await saga_on(store, []).run(Ctx(order_id="o-5"), saga_id="o-5")
        scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
        return [handle for handle in scheduled if not handle.cancelled()]

    assert run_virtual(main) == []
    assert store.tries
    assert {how for _, how, _ in store.tries} == {"written"}


# --------------------------------------------------------------------------- settle_inline itself


class Refusing(asyncio.Future[None]):
    """A future that refuses cancellation (like the SQLite store's journal future)."""

    outlives_cancellation = True

    def cancel(self, msg: Any = None) -> bool:
        return False


def test_a_future_that_refuses_cancellation_is_waited_for_past_the_deadline() -> None:
    """The SQLite store's journal future cannot be cancelled (its writer thread
    commits or refuses the write whatever happens): at the deadline the try
    is not abandoned but waited for, and its outcome is the try's."""

    async def main() -> tuple[BaseException | None, asyncio.CancelledError | None, float]:
        loop = asyncio.get_running_loop()
        future = Refusing(loop=loop)
        loop.call_at(loop.time() + 2 * TIMEOUT, future.set_result, None)

        async def write() -> None:
            await future

        error, cancelled = await settle_inline(write(), loop.time() + TIMEOUT)
        return error, cancelled, loop.time()

    assert run_virtual(main) == (None, None, 2 * TIMEOUT)  # no cancellation


def test_S13_a_try_that_finishes_despite_its_abandonment_is_in_doubt() -> None:
    """A coroutine that absorbs the deadline's cancellation and returns may
    have finished its write (as here) or swallowed the cancellation and
    written nothing: nothing tells the two apart, so it fails with
    ``TimeoutError`` (in doubt), as ``write_durably`` now counts such a try
    under ``asyncio.timeout_at`` (before, both counted it a success, and a
    driver that wrote nothing let the run go on over a journal that did not
    hold the write: see
    ``test_S13_a_write_that_returns_after_its_deadline_cancelled_it_is_in_doubt``)."""

    async def main() -> tuple[BaseException | None, asyncio.CancelledError | None]:
        loop = asyncio.get_running_loop()

        async def write() -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                await asyncio.sleep(1.0)  # finishes the write after all

        return await settle_inline(write(), loop.time() + TIMEOUT)

    error, cancelled = run_virtual(main)
    assert isinstance(error, TimeoutError)
    assert cancelled is None


def test_a_task_awaited_by_the_try_is_waited_for_once_cancelled_at_the_deadline() -> None:
    """A try that awaits a task: at the deadline the task is cancelled, and
    the try resumes only once that task is done (as it would in a task of
    its own), then fails with ``TimeoutError``."""
    ended: list[float] = []

    async def main() -> tuple[BaseException | None, asyncio.CancelledError | None]:
        loop = asyncio.get_running_loop()

        async def inner() -> None:
            try:
                await loop.create_future()
            finally:
                await asyncio.sleep(3.0)  # winds up slowly
                ended.append(loop.time())

        async def write() -> None:
            await loop.create_task(inner())

        return await settle_inline(write(), loop.time() + TIMEOUT)

    error, cancelled = run_virtual(main)
    assert isinstance(error, TimeoutError)
    assert not cancelled
    assert ended == [TIMEOUT + 3.0]


def test_without_a_deadline_an_inline_try_is_never_abandoned() -> None:
    """``journal_timeout=None``: the try waits as long as it takes."""

    async def main() -> tuple[BaseException | None, asyncio.CancelledError | None, float]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_at(loop.time() + 1000.0, future.set_result, None)

        async def write() -> None:
            await future

        error, cancelled = await settle_inline(write(), None)
        return error, cancelled, loop.time()

    assert run_virtual(main) == (None, None, 1000.0)  # no cancellation


class Swallowing(Unanswering):
    """A store whose driver swallows the deadline's cancellation: the first
    try of write ``at`` waits for an answer that never comes, and when the
    deadline cancels it, catches the ``CancelledError`` and returns
    normally, having written nothing (``except BaseException: log;
    return``). ``inline``: the store's writes outlive cancellation (its
    first try is driven inline, ``settle_inline``) or not (every try runs
    in a task of its own, under ``asyncio.timeout_at``)."""

    def __init__(self, *, at: int, inline: bool) -> None:
        super().__init__(at=at)
        self.writes_outlive_cancellation = inline

    async def _write(self, number: int, send: Callable[[], Any]) -> None:
        if number == self.at and not any(n == number for n, _, _ in self.tries):
            self.hanging.set()
            try:
                await asyncio.get_running_loop().create_future()  # never resolved
            except asyncio.CancelledError:
                self.tries.append((number, "swallowed", self._now()))
                return  # nothing written, and no error said
        await super()._write(number, send)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "in-a-task"])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_S13_a_write_that_returns_after_its_deadline_cancelled_it_is_in_doubt(
    at: int, inline: bool
) -> None:
    """The try of write ``at`` is cancelled by ``journal_timeout`` and
    returns normally all the same. Nothing says whether it wrote: a driver
    that absorbed the cancellation may have finished the write, or (here)
    swallowed it and written nothing. Before, the run took it for a durable
    write: it called the next act, whose STARTED the journal did not hold
    (at 0 and 1), or told the caller COMPLETED over a journal that said
    RUNNING (at 2). It is in doubt, as a try abandoned at its deadline is:
    the run stops, reporting both statuses the journal may hold, and no act
    runs that the journal does not know of."""
    log: list[str] = []
    store = Swallowing(at=at, inline=inline)

    async def main() -> tuple[SagaInterrupted | None, float, Any]:
        saga = saga_on(store, log)
        start = asyncio.get_running_loop().time()
        try:
            await saga.run(Ctx(order_id="o-6"), saga_id="o-6")
        except SagaInterrupted as stopped:
            return stopped, start, await _journal(store, "o-6")
        return None, start, await _journal(store, "o-6")

    stopped, start, record = run_virtual(main)
    assert store.tries.count((at, "swallowed", start + TIMEOUT)) == 1
    assert stopped is not None, "the run went on as if the write had landed"
    assert stopped.in_doubt
    assert log == ["reserve", "charge"][:at]  # each act only once its STARTED is durable
    started = [] if record is None else [
        e.step for e in record.history if e.action == "act" and e.status.name == "STARTED"
    ]
    assert started == ["Reserve", "Charge"][:at]


async def _journal(store: Unanswering, saga_id: str) -> Any:
    try:
        return await store.inner.load(saga_id)
    except Exception:
        return None  # never created
