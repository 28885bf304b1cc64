"""A measurement, not a store: what SQLite's writer would give in a process of its own.

    python benchmarks/writer_process.py                      # chunks of 16, 100 in flight
    python benchmarks/writer_process.py --chunk 32 --in-flight 1000 --rounds 5

With 100 durable sagas in flight, ``SQLiteSagaStore``'s event-loop thread and
its writer thread take turns under the GIL. The sagas move as one cohort:
all of them wait for one commit, then all of them run their next step, and
only then does the writer start on their writes. The benchmarks/README
sections on SQLite tell the story. This script checks the proposed way out:
a writer *process*, fed straight from the event loop.

* The loop ships journal writes (``create``/``append``) to a child process
  over a pipe, in chunks of ``--chunk`` writes. A chunk is shipped as soon
  as it is full, and whatever is left at the end of the loop turn. The loop
  reads the answers with ``add_reader``. No thread is involved and nothing
  waits for the GIL.
* The child owns the write connection. After each commit it takes
  everything that has arrived and writes it as one group, through the
  store's own ``_Worker._write`` (the same batched statements and the same
  ``synchronous``), then answers.
* Against it, in the same process and in interleaved rounds: the same tree's
  thread writer. Every saga of every batch is checked in the file afterwards
  (all completed).

What it shows: with chunks, the writer commits one part of the cohort while
the loop runs the rest, so the two overlap. Shipping the whole cohort at once
(``--chunk 1000``) gives the turns back, and no gain. The prototype pickles
its requests, which is fine between two processes of one run. A store built
this way would use a format of its own. This script monkeypatches private
names (``SQLiteSagaStore._submit``); it is not an API.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(HERE.parent)):  # this directory's helpers; the working tree's package
    if p not in sys.path:
        sys.path.insert(0, p)

import fs_sagas  # noqa: E402

from fallback_saga import SQLiteSagaStore  # noqa: E402
from fallback_saga.store import sqlite as sqlite_store  # noqa: E402


def child(conn: multiprocessing.connection.Connection, synchronous: str) -> None:
    """The writer process: one group per commit, of everything that arrived."""
    captured: list[Any] = []
    sqlite_store._settle = captured.extend  # type: ignore[assignment]  # answers go back by pipe
    worker = sqlite_store._Worker(role="writer", path="?", connect=None, clock=time.time)  # type: ignore[arg-type]
    db: sqlite3.Connection | None = None
    while True:
        messages = [conn.recv()]
        while conn.poll(0):
            messages.append(conn.recv())
        if messages[0][0] == "open":
            if db is not None:
                db.close()
            db = sqlite_store._connect_writer(messages[0][1], synchronous, 5.0)
            worker.known.clear()
            worker.commits = 0
            conn.send(("opened",))
            continue
        if messages[0][0] == "commits":
            conn.send(("commits", worker.commits))
            continue
        assert db is not None
        group: list[Any] = []
        spans: list[tuple[int, int, int]] = []
        for _, batch, items in messages:
            spans.append((batch, len(group), len(items)))
            group.extend(sqlite_store._Request(op, args, None, None, True) for op, args in items)  # type: ignore[arg-type]
        captured.clear()
        cursor = db.cursor()
        worker._write(db, cursor, group)
        cursor.close()
        by_request = {id(request): (ok, value) for request, ok, value in captured}
        answers = [by_request[id(request)] for request in group]
        conn.send(("done", [(b, answers[s:s + n]) for b, s, n in spans]))


class Shipper:
    """The loop's side: journal writes shipped in chunks, answers read by the loop."""

    def __init__(self, conn: multiprocessing.connection.Connection, chunk: int) -> None:
        self.conn = conn
        self.chunk = chunk
        self.loop = asyncio.get_running_loop()
        self.pending: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = []
        self.waiting: dict[int, list[asyncio.Future[Any]]] = {}
        self.batches = 0
        self.scheduled = False
        self.loop.add_reader(conn.fileno(), self.answered)

    def submit(self, op: Any, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = sqlite_store._JournalFuture(loop=self.loop)
        self.pending.append((op, args, future))
        if len(self.pending) >= self.chunk:
            self.ship()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.end_of_turn)
        return future

    def end_of_turn(self) -> None:
        self.scheduled = False
        if self.pending:
            self.ship()

    def ship(self) -> None:
        items, self.pending = self.pending, []
        batch = self.batches
        self.batches += 1
        self.waiting[batch] = [future for _, _, future in items]
        self.conn.send(("write", batch, [(op, args) for op, args, _ in items]))

    def answered(self) -> None:
        while self.conn.poll(0):
            kind, payload = self.conn.recv()
            assert kind == "done", kind
            for batch, answers in payload:
                for future, (ok, value) in zip(self.waiting.pop(batch), answers, strict=True):
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

    def close(self) -> None:
        self.loop.remove_reader(self.conn.fileno())


async def batch(
    conn: multiprocessing.connection.Connection, process: bool, args: argparse.Namespace,
    n: int,
) -> tuple[float, float, float]:
    """sagas/s, loop CPU µs per saga, commits per saga."""
    path = os.path.join(tempfile.mkdtemp(dir=args.dir), "s.db")
    async with SQLiteSagaStore(path, synchronous=args.synchronous) as store:
        await store.count_sagas()  # the schema, made by the store's own connection
        shipper: Shipper | None = None
        if process:
            conn.send(("open", path))
            assert conn.recv() == ("opened",)
            shipper = Shipper(conn, args.chunk)
            submit = store._submit

            def shipped(op: Any, args_: tuple[Any, ...], *, write: bool,
                        journal: bool = False) -> asyncio.Future[Any]:
                if op is sqlite_store._create or op is sqlite_store._append:
                    assert shipper is not None
                    return shipper.submit(op, args_)
                return submit(op, args_, write=write, journal=journal)

            store._submit = shipped  # type: ignore[method-assign]
        saga = fs_sagas.Plain3(store=store)
        per = max(1, n // args.in_flight)

        async def worker() -> None:
            for _ in range(per):
                await saga.run(fs_sagas.Ctx(order_id="o"))

        commits_before = store.stats.commits
        wall, cpu = time.perf_counter(), time.thread_time()
        await asyncio.gather(*(worker() for _ in range(args.in_flight)))
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if shipper is not None:
            shipper.close()
            conn.send(("commits", None))
            commits = conn.recv()[1]
        else:
            commits = store.stats.commits - commits_before
    done = per * args.in_flight
    check = sqlite3.connect(path)
    try:
        rows = check.execute("SELECT status, count(*) FROM sagas GROUP BY status").fetchall()
    finally:
        check.close()
    assert rows == [("completed", done)], rows
    return done / wall, cpu / done * 1e6, commits / done


async def main(args: argparse.Namespace, conn: multiprocessing.connection.Connection) -> None:
    await batch(conn, True, args, args.in_flight * 2)  # warm-up, both ways
    await batch(conn, False, args, args.in_flight * 2)
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for process in ((True, False) if round_ % 2 else (False, True)):
            results[process].append(await batch(conn, process, args, args.count))
    print(f"{args.in_flight} in flight, synchronous={args.synchronous}, {args.rounds} rounds, "
          f"Python {sys.version.split()[0]}")
    for process, name in ((True, f"writer process, chunks of {args.chunk}"),
                          (False, "writer thread (SQLiteSagaStore)")):
        rows = results[process]
        print(f"  {name:<36} {statistics.median(r[0] for r in rows):>8,.0f} sagas/s, "
              f"loop CPU {statistics.median(r[1] for r in rows):6.1f} µs/saga, "
              f"{statistics.median(r[2] for r in rows):.3f} commits/saga")
    ratio = statistics.median(
        p[0] / t[0] for p, t in zip(results[True], results[False], strict=True)
    )
    print(f"  process / thread, sagas/s (median of the rounds' ratios): {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--count", type=int, default=6000, help="sagas per batch")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--synchronous", default="full", choices=["full", "normal"])
    parser.add_argument("--dir", default=str(HERE),
                        help="where the files go (default: benchmarks/, on the repository's "
                             "filesystem: never a tmpfs, where fsync is free)")
    args = parser.parse_args()
    args.dir = tempfile.mkdtemp(prefix=".writer-", dir=args.dir)
    parent_end, child_end = multiprocessing.Pipe()
    # Forked before the event loop and the store's threads exist.
    writer = multiprocessing.get_context("fork").Process(
        target=child, args=(child_end, args.synchronous), daemon=True
    )
    writer.start()
    try:
        asyncio.run(main(args, parent_end))
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
