"""``GroupCommit``, the journal-write scheduler of ``PostgresSagaStore``.

Against fake ``write_one``/``write_many`` whose calls the test holds open, so
every interleaving below is decided by the test, never by timing:

* one write at a time goes alone, at once;
* writes made while another is on its way are written together, in order,
  with their own results, as soon as a slot is free, and a burst of them
  made a trip apart still shares one group; a burst is shared out across
  the free slots (an even share each, at least ``SHARE_AT_LEAST``, at most
  ``MAX_GROUP``); nothing overtakes a queued write; ``grouped=False`` sends
  every write alone;
* a queued write that is cancelled is never sent;
* a group the server refused (``RetryAlone``) is retried write by write, so
  only the bad write fails; a group whose commit is in doubt fails every
  write and retries none; an outcome that is an exception goes to its writer
  only;
* ``idle()`` waits for queued writes;
* a submitted write (``submit``) refuses cancellation and ends by its
  deadline: never sent if still queued, in doubt if on its way, with one
  timer per group rather than one per write; a writer that says when it
  sends (``says_when_sent``) has a write it had not sent by then reported
  not sent, and leaves it out when it sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers_clock import VirtualClockLoop, run_virtual

from fallback_saga.errors import SagaStoreError
from fallback_saga.store._group_commit import (
    GATHER_TRIPS,
    MAX_GROUP,
    SHARE_AT_LEAST,
    GroupCommit,
    NotSent,
    RetryAlone,
)


class Server:
    """Fake writes: each call is held until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []  # ("one", request) / ("many", [requests])
        self.gates: list[asyncio.Event] = []
        self.refuse: set[str] = set()  # requests the server refuses
        self.many_error: BaseException | None = None  # raised by write_many

    async def _held(self) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()

    async def write_one(self, request: str) -> str:
        self.calls.append(("one", request))
        await self._held()
        if request in self.refuse:
            raise ValueError(f"refused {request}")
        return f"ok {request}"

    async def write_many(self, requests: list[str]) -> list[str | BaseException]:
        self.calls.append(("many", list(requests)))
        await self._held()
        if self.many_error is not None:
            raise self.many_error
        if self.refuse & set(requests):
            raise RetryAlone
        return [KeyError(r) if r.startswith("missing") else f"ok {r}" for r in requests]

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


async def settle() -> None:
    """Let every task run until it waits on something the test controls."""
    for _ in range(20):
        await asyncio.sleep(0)


def group(server: Server, slots: int = 1) -> GroupCommit[str, str]:
    return GroupCommit(slots=slots, write_one=server.write_one, write_many=server.write_many)


async def run_released(server: Server, tasks: list[asyncio.Task[str]]) -> list[Any]:
    """Release every held call (and those they lead to) until all tasks end."""
    while not all(task.done() for task in tasks):
        await settle()
        server.release_all()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_writes_one_at_a_time_go_alone() -> None:
    server = Server()
    writer = group(server)
    for n in range(3):
        task = asyncio.create_task(writer.write(f"w{n}"))
        await settle()
        server.release_all()
        assert await task == f"ok w{n}"
    assert server.calls == [("one", "w0"), ("one", "w1"), ("one", "w2")]
    assert (writer.writes, writer.commits, writer.largest_group) == (3, 3, 0)


async def test_writes_made_while_one_is_on_its_way_go_together_in_order() -> None:
    server = Server()
    writer = group(server, slots=2)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(6)]
    await settle()
    # w0 found nothing on its way; the others queued, and the second slot
    # wrote them together without waiting for w0.
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2", "w3", "w4", "w5"])]
    results = await run_released(server, tasks)
    assert results == [f"ok w{n}" for n in range(6)]
    assert (writer.writes, writer.commits, writer.largest_group) == (6, 2, 5)


async def test_with_every_slot_busy_the_first_to_come_free_writes_the_queue() -> None:
    server = Server()
    writer = group(server, slots=1)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(4)]
    await settle()
    assert server.calls == [("one", "w0")]
    results = await run_released(server, tasks)
    assert results == [f"ok w{n}" for n in range(4)]
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2", "w3"])]


async def test_a_burst_made_a_trip_later_shares_one_group() -> None:
    server = Server()
    writer = group(server, slots=2)
    first = asyncio.create_task(writer.write("w0"))
    await settle()

    async def later(request: str, trips: int) -> str:
        for _ in range(trips):
            await asyncio.sleep(0)
        return await writer.write(request)

    # As callers woken by one commit make their next writes: the trip after
    # the first of them queued its own (GATHER_TRIPS).
    trips = [0, GATHER_TRIPS, GATHER_TRIPS, GATHER_TRIPS]
    tasks = [asyncio.create_task(later(f"w{n}", trips[n - 1])) for n in range(1, 5)]
    await settle()
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2", "w3", "w4"])]
    assert await run_released(server, [first, *tasks]) == [f"ok w{n}" for n in range(5)]


async def test_without_grouping_every_write_goes_alone_at_once() -> None:
    server = Server()
    writer = GroupCommit(slots=1, write_one=server.write_one, write_many=server.write_many,
                         grouped=False)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(3)]
    await settle()
    assert server.calls == [("one", "w0"), ("one", "w1"), ("one", "w2")]
    assert await run_released(server, tasks) == ["ok w0", "ok w1", "ok w2"]
    assert (writer.writes, writer.commits, writer.largest_group) == (3, 3, 0)


async def test_a_new_write_never_overtakes_a_queued_one() -> None:
    server = Server()
    writer = group(server)
    first = asyncio.create_task(writer.write("w0"))
    queued = asyncio.create_task(writer.write("w1"))
    await settle()
    server.release_all()  # w0 ends: its slot goes on to write w1
    await asyncio.sleep(0)
    late = asyncio.create_task(writer.write("w2"))  # the slot is not free for it
    results = await run_released(server, [first, queued, late])
    assert results == ["ok w0", "ok w1", "ok w2"]
    order = [r for _, req in server.calls for r in ([req] if isinstance(req, str) else req)]
    assert order == ["w0", "w1", "w2"]


async def test_a_cancelled_queued_write_is_never_sent() -> None:
    server = Server()
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(4)]
    await settle()
    tasks[2].cancel()
    results = await run_released(server, tasks)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [results[n] for n in (0, 1, 3)] == ["ok w0", "ok w1", "ok w3"]
    assert server.calls == [("one", "w0"), ("many", ["w1", "w3"])]


async def test_a_refused_group_is_retried_write_by_write_and_only_the_bad_one_fails() -> None:
    server = Server()
    server.refuse = {"bad"}
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(r)) for r in ("w0", "w1", "bad", "w3")]
    results = await run_released(server, tasks)
    assert [results[n] for n in (0, 1, 3)] == ["ok w0", "ok w1", "ok w3"]
    assert isinstance(results[2], ValueError)
    assert server.calls == [("one", "w0"), ("many", ["w1", "bad", "w3"]),
                            ("one", "w1"), ("one", "bad"), ("one", "w3")]


async def test_a_group_whose_commit_is_in_doubt_fails_every_write_and_retries_none() -> None:
    server = Server()
    server.many_error = ConnectionError("connection lost during commit")
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(3)]
    results = await run_released(server, tasks)
    assert results[0] == "ok w0"
    assert all(isinstance(r, ConnectionError) for r in results[1:])
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2"])]  # no retry


async def test_an_outcome_that_is_an_exception_goes_to_its_writer_only() -> None:
    server = Server()
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(r)) for r in ("w0", "w1", "missing", "w3")]
    results = await run_released(server, tasks)
    assert [results[n] for n in (0, 1, 3)] == ["ok w0", "ok w1", "ok w3"]
    assert isinstance(results[2], KeyError)


async def test_groups_hold_at_most_MAX_GROUP_writes() -> None:
    server = Server()
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(MAX_GROUP + 3)]
    await run_released(server, tasks)
    sizes = [len(req) for kind, req in server.calls if kind == "many"]
    assert sizes == [MAX_GROUP, 2]


async def test_idle_waits_for_queued_writes() -> None:
    server = Server()
    writer = group(server)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(3)]
    await settle()
    server.release_all()  # w0 done; w1 and w2 queued, their group held
    await settle()
    idle = asyncio.create_task(writer.idle())
    await settle()
    assert not idle.done()
    server.release_all()
    await idle
    assert all(task.done() for task in tasks)


async def test_a_cancelled_group_task_cancels_its_writes_and_those_queued() -> None:
    """The loop is closing and cancels the tasks writing (a group, a write
    alone): nobody will answer their writes nor those queued behind them,
    and each writer hears so."""
    server = Server()
    writer = group(server, slots=2)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(3)]
    await settle()
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2"])]
    queued = asyncio.create_task(writer.write("w3"))  # both slots busy: it waits
    await settle()
    assert len(writer._drains) == 2  # the write alone, the group
    for drain in list(writer._drains):
        drain.cancel()
    await settle()
    assert [t.cancelled() for t in (*tasks, queued)] == [True] * 4
    server.release_all()
    assert server.calls == [("one", "w0"), ("many", ["w1", "w2"])]  # w3 never sent


def sizes_sent(server: Server) -> list[int]:
    return [1 if kind == "one" else len(requests) for kind, requests in server.calls]


def sent_in_order(server: Server) -> list[str]:
    return [r for kind, req in server.calls for r in ([req] if kind == "one" else req)]


async def test_a_burst_is_shared_out_across_the_slots_at_once() -> None:
    """The queue goes as groups side by side: each takes an even share of
    what is queued (ceil(queue / slots)), at least SHARE_AT_LEAST; what
    finds no free slot waits for the first group to commit."""
    server = Server()
    writer = group(server, slots=3)
    count = 6 * SHARE_AT_LEAST + 1
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(count)]
    await settle()
    queued = count - 1
    first = -(-queued // 3)
    second = -(-(queued - first) // 3)
    assert sizes_sent(server) == [1, first, max(SHARE_AT_LEAST, second)]
    results = await run_released(server, tasks)
    assert results == [f"ok w{n}" for n in range(count)]
    assert sent_in_order(server) == [f"w{n}" for n in range(count)]  # no overtaking
    assert all(size <= MAX_GROUP for size in sizes_sent(server))


async def test_a_group_takes_at_least_SHARE_AT_LEAST_writes() -> None:
    server = Server()
    writer = group(server, slots=3)
    count = SHARE_AT_LEAST + 9  # an even share would be 14
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(count)]
    await settle()
    assert sizes_sent(server) == [1, SHARE_AT_LEAST, 8]
    await run_released(server, tasks)


async def test_more_than_a_group_takes_a_second_slot_at_once() -> None:
    server = Server()
    writer = group(server, slots=2)
    tasks = [asyncio.create_task(writer.write(f"w{n}")) for n in range(3 * MAX_GROUP + 1)]
    await settle()
    assert sizes_sent(server) == [1, MAX_GROUP]  # both slots on their way at once
    server.release_all()
    await settle()
    # The write alone and the first group committed: two slots free for the
    # 2 * MAX_GROUP queued, each taking its share of what is left.
    assert sizes_sent(server)[2:] == [MAX_GROUP, MAX_GROUP // 2]
    await run_released(server, tasks)
    assert sent_in_order(server) == [f"w{n}" for n in range(3 * MAX_GROUP + 1)]


def test_slots_must_be_positive() -> None:
    server = Server()
    with pytest.raises(ValueError, match="slots"):
        GroupCommit(slots=0, write_one=server.write_one, write_many=server.write_many)


@pytest.mark.parametrize("grouped", [True, False])
async def test_no_write_runs_in_the_callers_task(grouped: bool) -> None:
    """Alone, grouped, or with grouping off: every write is made by a task of
    the group commit's, so a timeout the write enters (a pool waiting for a
    connection, a driver) is never bound to the caller's task — which the
    executor drives ``create``/``append`` from (``settle_inline``), and
    which such a timeout would cancel instead of the write."""
    seen: list[tuple[str, asyncio.Task[Any] | None]] = []

    async def write_one(request: str) -> str:
        seen.append((request, asyncio.current_task()))
        await asyncio.sleep(0)
        return f"ok {request}"

    async def write_many(requests: list[str]) -> list[str | BaseException]:
        seen.extend((request, asyncio.current_task()) for request in requests)
        await asyncio.sleep(0)
        return [f"ok {request}" for request in requests]

    writer = GroupCommit(slots=1, write_one=write_one, write_many=write_many, grouped=grouped)
    callers = [asyncio.create_task(writer.write(f"w{n}")) for n in range(4)]
    assert await asyncio.gather(*callers) == [f"ok w{n}" for n in range(4)]
    assert sorted(request for request, _ in seen) == [f"w{n}" for n in range(4)]
    assert not {task for _, task in seen} & {*callers, None}
    if grouped:
        assert writer.largest_group == 3  # w0 alone, the rest together


async def test_a_timeout_a_write_alone_enters_fails_that_write_not_its_caller() -> None:
    """A write alone whose ``write_one`` times out (``asyncio.timeout``, here
    already past): the caller, driven inline, gets the ``TimeoutError`` as
    the write's outcome — never a cancellation of its own (which it would
    hold on to while the write waited on, its timeout never coming)."""
    from fallback_saga.journal import settle_inline

    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def write_one(request: str) -> str:
        async with asyncio.timeout(0):
            await answer
        return "answered"

    async def write_many(requests: list[str]) -> list[str | BaseException]:
        raise AssertionError("one write at a time: never grouped")

    writer = GroupCommit(slots=1, write_one=write_one, write_many=write_many)

    async def write() -> None:
        await writer.write("w0")

    driver = asyncio.create_task(settle_inline(write(), None))
    await settle()
    if not answer.done():  # the timeout went astray: let the write end
        answer.set_result(None)
    error, cancelled = await driver
    assert isinstance(error, TimeoutError)
    assert not cancelled


async def test_idle_returns_once_every_write_is_done_even_before_the_tasks_are_forgotten() -> None:
    """A task that is done but whose done-callbacks (the one that forgets it)
    have not run yet — the moment between a write's end and the next trip
    through the loop: ``idle()`` returns. (It looped forever on Python 3.12+,
    where gathering tasks that are all done returns without a trip through
    the loop, so the callbacks never ran.)"""
    server = Server()
    writer = group(server)
    task = asyncio.create_task(writer.write("w0"))
    await settle()
    server.release_all()
    assert await task == "ok w0"
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ended.set_result(None)
    writer._drains.add(ended)  # type: ignore[arg-type]  # done, not forgotten yet
    await writer.idle()


# ---------------------------------------------------------------- submitted writes
# ``submit``: the executor's hot path. The future refuses cancellation and the
# group commit ends it by the write's deadline (virtual time: helpers_clock).


class CountingClockLoop(VirtualClockLoop):
    """Counts the timers set (``call_at``)."""

    timers = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def run_counting(main: Callable[[CountingClockLoop], Coroutine[Any, Any, None]]) -> None:
    loop = CountingClockLoop()
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()


async def test_a_submitted_write_refuses_cancellation_and_ends_with_its_outcome() -> None:
    server = Server()
    writer = group(server)
    future = writer.submit("w0", None)
    assert future.cancel() is False
    await settle()
    server.release_all()
    assert await future == "ok w0"
    server.refuse.add("w1")
    refused = writer.submit("w1", None)
    await settle()
    server.release_all()
    with pytest.raises(ValueError, match="refused w1"):
        await refused


def test_a_submitted_write_still_queued_at_its_deadline_is_never_sent() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = Server()
        writer = group(server)
        blocker = writer.submit("w0", None)  # alone, held by the server
        await settle()
        start = loop.time()
        queued = writer.submit("w1", start + 10)
        with pytest.raises(NotSent, match="not sent") as dropped:
            await queued
        assert isinstance(dropped.value, TimeoutError)
        assert dropped.value.nothing_written is True  # S13: not in doubt
        assert loop.time() == start + 10
        server.release_all()
        assert await blocker == "ok w0"
        await writer.idle()
        assert server.calls == [("one", "w0")]

    run_virtual(main)


def test_a_submitted_write_on_its_way_at_its_deadline_ends_in_doubt_alone() -> None:
    """Its group goes on; the other writes of the group (no deadline, or a
    later one) get their outcomes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = Server()
        writer = group(server)
        blocker = writer.submit("w0", None)
        await settle()
        start = loop.time()
        soon = writer.submit("w1", start + 5)
        unbounded = writer.submit("w2", None)
        later = writer.submit("w3", start + 20)
        server.release_all()
        assert await blocker == "ok w0"
        await settle()
        assert server.calls[-1] == ("many", ["w1", "w2", "w3"])  # on its way, held
        with pytest.raises(TimeoutError, match="may have landed"):
            await soon
        assert loop.time() == start + 5
        assert not unbounded.done()
        assert not later.done()
        server.release_all()
        assert (await unbounded, await later) == ("ok w2", "ok w3")
        assert loop.time() == start + 5

    run_virtual(main)


def test_a_submitted_write_alone_ends_in_doubt_at_its_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = Server()
        writer = group(server)
        start = loop.time()
        alone = writer.submit("w0", start + 3)
        with pytest.raises(TimeoutError, match="may have landed"):
            await alone
        assert loop.time() == start + 3
        server.release_all()
        await writer.idle()
        assert server.calls == [("one", "w0")]

    run_virtual(main)


def test_a_queued_write_with_a_sooner_deadline_ends_by_its_own() -> None:
    """Deadlines need not come in the order the writes were made (sagas with
    different ``journal_timeout``s share one store)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = Server()
        writer = group(server)
        writer.submit("w0", None)
        await settle()
        start = loop.time()
        late = writer.submit("w1", start + 30)
        soon = writer.submit("w2", start + 5)
        with pytest.raises(TimeoutError, match="not sent"):
            await soon
        assert loop.time() == start + 5
        assert not late.done()
        server.release_all()
        await settle()
        server.release_all()  # w1's group
        assert await late == "ok w1"
        assert ("one", "w2") not in server.calls
        assert all(
            "w2" not in requests for kind, requests in server.calls if kind == "many")

    run_virtual(main)


def test_submitted_writes_cost_one_timer_per_group_not_one_per_write() -> None:
    async def main(loop: CountingClockLoop) -> None:
        server = Server()
        writer = group(server)
        blocker = writer.submit("w0", None)
        await settle()
        before = loop.timers
        writes = [writer.submit(f"w{n}", loop.time() + 10) for n in range(1, 101)]
        server.release_all()
        await blocker
        await settle()
        server.release_all()
        assert await asyncio.gather(*writes) == [f"ok w{n}" for n in range(1, 101)]
        assert loop.timers - before <= 2, loop.timers - before  # the queue's, the group's

    run_counting(main)


async def test_submitted_writes_get_an_error_when_the_group_commit_is_stopped() -> None:
    """Its tasks cancelled (the loop is closing): a future that refuses
    cancellation would otherwise never end."""
    server = Server()
    writer = group(server)
    alone = writer.submit("w0", None)
    await settle()
    queued = writer.submit("w1", None)
    await settle()
    for task in list(writer._drains):  # w0's: w1 then takes the freed slot
        task.cancel()
    await settle()
    assert isinstance(alone.exception(), SagaStoreError)
    assert server.calls[-1] == ("one", "w1")  # a group of one: held
    for task in list(writer._drains):
        task.cancel()
    await settle()
    assert isinstance(queued.exception(), SagaStoreError)


class WaitingServer:
    """Fake writes that wait for a connection (``connected``), then say what
    they send (``sending``), then wait for the server's answer (``answer``)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.answer = asyncio.Event()
        self.sent: list[list[str]] = []
        self.writer: GroupCommit[str, str] | None = None

    async def _send(self, requests: list[str]) -> list[str]:
        await self.connected.wait()
        assert self.writer is not None
        live = self.writer.sending()
        assert live is not None
        chosen = [request for request, go in zip(requests, live, strict=True) if go]
        if chosen:
            self.sent.append(chosen)
            await self.answer.wait()
        return chosen

    async def write_one(self, request: str) -> str:
        if not await self._send([request]):
            raise SagaStoreError("not sent")
        return f"ok {request}"

    async def write_many(self, requests: list[str]) -> list[str | BaseException]:
        chosen = await self._send(requests)
        return [f"ok {r}" if r in chosen else SagaStoreError("not sent") for r in requests]


def waiting_group(server: WaitingServer, slots: int = 1) -> GroupCommit[str, str]:
    writer = GroupCommit(slots=slots, write_one=server.write_one,
                         write_many=server.write_many, says_when_sent=True)
    server.writer = writer
    return writer


def test_S13_a_write_alone_still_waiting_to_be_sent_at_its_deadline_is_never_sent() -> None:
    """Its task waits for a connection when the deadline comes: the write is
    reported not sent (nothing written, not in doubt), and once the
    connection comes it is not sent."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = WaitingServer()
        writer = waiting_group(server)
        start = loop.time()
        alone = writer.submit("w0", start + 3)
        with pytest.raises(NotSent, match="not sent") as dropped:
            await alone
        assert dropped.value.nothing_written is True
        assert isinstance(dropped.value, TimeoutError)
        assert loop.time() == start + 3
        server.connected.set()
        await writer.idle()
        assert server.sent == []

    run_virtual(main)


def test_S13_a_write_sent_stays_in_doubt_at_its_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = WaitingServer()
        writer = waiting_group(server)
        server.connected.set()
        start = loop.time()
        alone = writer.submit("w0", start + 3)
        with pytest.raises(TimeoutError, match="may have landed") as doubt:
            await alone
        assert not isinstance(doubt.value, NotSent)
        assert server.sent == [["w0"]]
        server.answer.set()
        await writer.idle()

    run_virtual(main)


def test_S13_a_grouped_write_not_yet_sent_at_its_deadline_is_left_out_of_its_group() -> None:
    """A group of three sagas' writes waits for a connection; one write's
    deadline comes meanwhile: it is reported not sent, and the group sends
    the other two, which get their outcomes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = WaitingServer()
        writer = waiting_group(server, slots=2)
        start = loop.time()
        first = writer.submit("w0", None)  # alone, waiting
        await settle()
        soon = writer.submit("w1", start + 5)
        others = [writer.submit("w2", None), writer.submit("w3", start + 50)]
        await settle()  # the group took them, and waits too
        with pytest.raises(NotSent):
            await soon
        assert loop.time() == start + 5
        assert writer.largest_group == 3
        server.connected.set()
        server.answer.set()
        assert await asyncio.gather(first, *others) == ["ok w0", "ok w2", "ok w3"]
        assert sorted(server.sent) == [["w0"], ["w2", "w3"]]

    run_virtual(main)
