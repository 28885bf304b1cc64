"""How ``SQLiteSagaStore``'s threads hand their answers back to an event loop
(``store/_loop_waker.py``): through one descriptor each loop watches, not
through ``call_soon_threadsafe`` (the lever of benchmarks/README.md's
"Sixteenth pass": fewer system calls per hand-over, a measured part of a
sequential durable saga's time).

What the hand-over must keep: every answer arrives (none is lost to a
wake-up read before it was queued), in the order the threads sent them,
``close()`` returns after the answers of the writes before it, a call that
raises does not strand those queued behind it, a loop that cannot watch a
descriptor still gets its answers, and a loop that is gone takes its
descriptor with it. Counting and ordering, never timing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_ledger import Ctx, journals_of_sagas, ledger_saga

from fallback_saga import SagaStatus, SQLiteSagaStore
from fallback_saga.store import _loop_waker
from fallback_saga.store._loop_waker import LoopWaker, waker_of

needs_proc_fds = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd"
)


async def test_S13_a_sequential_saga_is_answered_without_call_soon_threadsafe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[Any] = []
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    ledger: list[tuple[str, str]] = []
    async with SQLiteSagaStore(tmp_path / "w.db") as store:
        saga = ledger_saga(ledger)(store=store)
        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        for i in range(5):
            result = await saga.run(Ctx(order_id=str(i)), saga_id=f"w-{i}")
            assert result.status is SagaStatus.COMPLETED
            # Durable by the time run() returned (S13): a fresh read sees it.
            assert (await store.load(f"w-{i}")).status is SagaStatus.COMPLETED
        assert calls == []  # 4 writes and a read per saga: every answer by the waker
        assert isinstance(waker_of(loop), LoopWaker)
    assert len(ledger) == 15


@pytest.mark.parametrize("descriptor", ["eventfd", "pipe"])
async def test_S13_answers_posted_from_many_threads_all_arrive_in_order(
    descriptor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if descriptor == "eventfd" and not _loop_waker._EVENTFD:
        pytest.skip("no eventfd here")
    if descriptor == "pipe":  # what macOS (no eventfd) runs
        monkeypatch.setattr(_loop_waker, "_EVENTFD", False)
    loop = asyncio.get_running_loop()
    waker = waker_of(loop)
    assert waker is not None
    threads, rounds, per_round = 4, 300, 10
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    arrived = 0
    round_done = asyncio.Event()

    def arrive(item: tuple[int, int]) -> None:
        nonlocal arrived
        seen[item[0]].append(item[1])
        arrived += 1
        if arrived % (threads * per_round) == 0:
            round_done.set()

    go = [threading.Semaphore(0) for _ in range(threads)]

    def post_rounds(t: int) -> None:
        for r in range(rounds):
            go[t].acquire()
            for n in range(per_round):
                waker.post(arrive, (t, r * per_round + n))

    workers = [threading.Thread(target=post_rounds, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(rounds):
            # Every thread posts a burst at once, while the loop drains the
            # last: a wake-up lost between the loop's read of the descriptor
            # and its look at the queue leaves the burst's last calls
            # stranded, and this wait never ends (the timeout says so).
            round_done.clear()
            for semaphore in go:
                semaphore.release()
            async with asyncio.timeout(30):
                await round_done.wait()
    finally:
        for semaphore in go:
            semaphore.release(rounds)  # a failed wait lets the threads end
        for worker in workers:
            worker.join()
    assert all(seen[t] == list(range(rounds * per_round)) for t in range(threads))


async def test_S13_a_call_posted_while_the_loop_reads_the_descriptor_is_not_stranded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    waker = waker_of(loop)
    assert waker is not None
    arrived = asyncio.Event()
    real_clear = _loop_waker._clear
    posted = False

    def clear_with_a_post_in_between(fd: int) -> None:
        # Another thread's post, landing exactly while the loop reads the
        # descriptor: its write is consumed by this read.
        nonlocal posted
        if not posted:
            posted = True
            waker.post(lambda _: arrived.set(), None)
        real_clear(fd)

    monkeypatch.setattr(_loop_waker, "_clear", clear_with_a_post_in_between)
    waker.post(lambda _: None, None)
    # The loop reads, then takes the queue: the call is there, and runs.
    async with asyncio.timeout(30):
        await arrived.wait()


async def test_S13_a_call_that_raises_does_not_strand_the_calls_behind_it() -> None:
    loop = asyncio.get_running_loop()
    waker = waker_of(loop)
    assert waker is not None
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    ran: list[int] = []
    arrived = asyncio.Event()

    def boom(_: Any) -> None:
        raise RuntimeError("boom")

    def after(n: int) -> None:
        ran.append(n)
        if n == 2:
            arrived.set()

    def post() -> None:
        # All three queued before the loop looks: one wake-up for the three.
        waker.post(boom, None)
        waker.post(after, 1)
        waker.post(after, 2)

    thread = threading.Thread(target=post)
    thread.start()
    thread.join()
    async with asyncio.timeout(30):
        await arrived.wait()
    assert ran == [1, 2]
    assert [type(c.get("exception")) for c in errors] == [RuntimeError]


async def test_S13_close_returns_after_the_answers_of_the_writes_before_it(
    tmp_path: Path,
) -> None:
    store = SQLiteSagaStore(tmp_path / "c.db")
    await store.open()
    futures = [
        store.submit_create(f"c-{i}", "S", "f", {}, [], SagaStatus.RUNNING) for i in range(50)
    ]
    await store.close()
    # Answered by the writer thread before its stop, on the same channel:
    # every future is done by the time close() returns.
    assert all(future.done() and future.exception() is None for future in futures)


class _NoReaders(asyncio.SelectorEventLoop):
    """A loop that cannot watch a descriptor (as Windows' proactor loop)."""

    def add_reader(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def test_S13_a_loop_that_cannot_watch_a_descriptor_still_gets_every_answer(
    tmp_path: Path,
) -> None:
    ledger: list[tuple[str, str]] = []

    async def main() -> list[tuple[Any, ...]]:
        assert waker_of(asyncio.get_running_loop()) is None
        async with SQLiteSagaStore(tmp_path / "n.db") as store:
            return await journals_of_sagas(store, ledger, 20)

    with asyncio.Runner(loop_factory=_NoReaders) as runner:
        journals = runner.run(main())
    assert [status for status, _context, _history in journals] == [SagaStatus.COMPLETED] * 20


# Run in a process of its own: in a full suite, loops that earlier tests
# left alive (and their wakers' descriptors) come and go meanwhile, so only
# a fresh process can count what twenty loops leave.
_GONE_LOOPS = """
import asyncio, gc, os, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from helpers_ledger import Ctx, ledger_saga
from fallback_saga import SQLiteSagaStore
from fallback_saga.store import _loop_waker

def open_fds():
    return len(os.listdir("/proc/self/fd"))

store = SQLiteSagaStore(sys.argv[3])
ledger = []

async def one(i):
    saga = ledger_saga(ledger)(store=store)
    await saga.run(Ctx(order_id=str(i)), saga_id=f"g-{i}")

# Counted from a loop that stays, after a request to each of the store's
# threads: a thread drops the last group it served only as its serve ends,
# after the answer let asyncio.run return, so until it serves another it
# may still hold a gone loop's request (and, through it, its waker).
counting = asyncio.new_event_loop()

async def each_thread_served_another():
    await store.existing_saga_ids(["none"])  # the reader
    await store.purge(older_than=1e9)  # the writer: nothing that old

def counted():
    counting.run_until_complete(each_thread_served_another())
    gc.collect()
    return open_fds(), len(_loop_waker._WAKERS)

asyncio.run(one(0))  # the store's threads and connections: opened once
before, wakers_before = counted()
for i in range(1, 21):  # a loop each, one after the other, as successive asyncio.run
    asyncio.run(one(i))
after, wakers_after = counted()
print(after - before, wakers_after - wakers_before, len(ledger))
counting.run_until_complete(store.close())
counting.close()
"""


@needs_proc_fds
def test_S13_a_loop_that_is_gone_takes_its_descriptor_with_it(tmp_path: Path) -> None:
    tests = Path(__file__).resolve().parent
    completed = subprocess.run(
        [sys.executable, "-c", _GONE_LOOPS, str(tests.parent), str(tests),
         str(tmp_path / "g.db")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    fds_left, wakers_left, calls = map(int, completed.stdout.split())
    assert (fds_left, wakers_left) == (0, 0)  # none of the twenty loops' left open
    assert calls == 63
