"""The SQLite writer's statements alone: CPU per saga of the sagas-table
writes, two or more trees side by side in one process.

Each tree's ``store._sqlite_sql`` runs the requests as the writer thread
runs them (``_run_group`` on groups of 100 sagas, one transaction a group):
per saga a creation, three appends that keep the status (a context each)
and one that finishes the saga — the sagas-table writes of a 4-step saga,
without journal rows (``_Txn.add`` is not called: what differs between
trees here is the ``UPDATE``/``INSERT`` of the sagas table and its
indexes). A fresh file per round (WAL, ``synchronous=OFF``: no fsync to
time), interleaved rounds with the trees' order alternating, thread CPU
time. Printed: each tree's median µs per saga, and the median of the
per-round ratios of each tree to the first.

Run: ``python benchmarks/sqlite_writer_statements.py TREE [TREE ...]
[--rounds R]`` where each TREE is a ``fallback_saga`` folder (a ``git
archive`` of a commit, say). Compare a tree with a copy of itself for the
A/A control.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from package_copies import import_package_as

HERE = Path(__file__).resolve().parent
GROUPS = 30
PER_GROUP = 100


def load(tree: Path, tag: str) -> tuple[ModuleType, ModuleType]:
    """``store._sqlite_sql`` and ``store._sqlite_schema`` of the package in
    ``tree``, imported under the name ``tag``."""
    import_package_as(tree, tag)
    return (importlib.import_module(f"{tag}.store._sqlite_sql"),
            importlib.import_module(f"{tag}.store._sqlite_schema"))


def one_round(sql: ModuleType, schema: ModuleType, loop: asyncio.AbstractEventLoop) -> float:
    """µs of this thread's CPU per saga, for GROUPS * PER_GROUP sagas."""
    folder = Path(tempfile.mkdtemp(dir=HERE))
    path = str(folder / "w.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        schema._migrate(conn, path)
        cursor = conn.cursor()
        known: dict[str, tuple[int, int]] = {}

        def request(op: Any, *args: Any) -> Any:
            return sql._Request(op, args, loop, loop.create_future(), True)

        started = time.thread_time()
        for group in range(GROUPS):
            ids = [f"s{group}-{n}" for n in range(PER_GROUP)]
            phases = [[request(sql._create, i, "OrderSaga", "f", "running", '{"a":0}', ())
                       for i in ids]]
            phases += [[request(sql._append, i, (), None, f'{{"a":{step}}}', None, None)
                        for i in ids] for step in (1, 2, 3)]
            phases.append([request(sql._append, i, (), "completed", None, None, None)
                           for i in ids])
            for requests in phases:
                txn = sql._Txn(time.time(), known)
                cursor.execute("BEGIN IMMEDIATE")
                outcomes: list[Any] = [None] * len(requests)
                sql._run_group(cursor, txn, requests, outcomes)
                txn.flush(cursor)
                cursor.execute("COMMIT")
                assert all(outcome[1] for outcome in outcomes)
        return (time.thread_time() - started) / (GROUPS * PER_GROUP) * 1e6
    finally:
        conn.close()
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="fallback_saga folders")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    trees = [load(tree.resolve(), f"tree{n}") for n, tree in enumerate(args.trees)]
    loop = asyncio.new_event_loop()
    times: list[list[float]] = [[] for _ in trees]
    try:
        for round_ in range(args.rounds):
            order = list(range(len(trees)))
            for n in order if round_ % 2 == 0 else reversed(order):
                times[n].append(one_round(*trees[n], loop))
    finally:
        loop.close()
    print(f"SQLite writer statements, µs of CPU per saga, median of {args.rounds} rounds")
    for n, tree in enumerate(args.trees):
        ratio = statistics.median(t / first for t, first in zip(times[n], times[0], strict=True))
        print(f"  {tree!s:<48} {statistics.median(times[n]):7.1f}   / first {ratio:.3f}")


if __name__ == "__main__":
    main()
