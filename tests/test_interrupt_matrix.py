"""Ctrl-C matrix: interrupt a saga's process at every journal boundary, the
way a terminal does, then recover it in a fresh process and check the
journal against the participant's ledger.

The saga app is ``tests/crash_app.py`` (see its docstring), run with
``--interrupt-at``: at the chosen boundary the process gets SIGINT, and
``asyncio.run`` cancels the saga's task (S8: the completed steps are
compensated, then the run ends); with a second boundary it gets SIGINT again
there, and ``asyncio.run`` raises ``KeyboardInterrupt`` wherever the main
thread is — in a step, between a journal write and its caller, in a
compensation — then cancels every task left, the unwinding's too.

Whatever the two interruptions hit, these must hold:

* S13: no ``act`` and no ``compensate`` was called in the interrupted
  process unless its ``STARTED`` row is in the journal it left;
* the interrupted process ends with exit status 130, never hangs;
* S10: recovery finishes the saga — COMPLETED (the interruption came after
  its completion was written), or COMPENSATED (``FAILED`` only for the
  variant whose compensation is designed to fail) — with each effect applied
  at most once, every applied act undone exactly once unless the saga
  completed, and no forward step after the unwinding began.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from crash_app import APP, INTERRUPTED_EXIT, Ledger
from helpers_fork import ForkServer

pytest_plugins = ["conftest_pg"]

TIMEOUT = 60.0
ROOT = str(Path(__file__).resolve().parent.parent)
# The variants whose runs compensate, and one that completes (a Ctrl-C then
# turns a completion into an unwinding).
VARIANTS = ("ok", "unwind", "stuck", "group-unwind", "group-member-fails")


@pytest.fixture(scope="module")
def servers() -> Iterator[list[ForkServer]]:
    scratch = Path(tempfile.mkdtemp(prefix="interrupt-matrix-"))
    # The children import this checkout's package, wherever it is installed from.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}
    made = [ForkServer(APP, scratch, timeout=TIMEOUT, env=env) for _ in range(2)]
    try:
        yield made
    finally:
        for server in made:
            server.close()
        # Each variant's databases, ledgers and the children's output: some
        # thousands of files a run, not to be left behind in /tmp.
        shutil.rmtree(scratch, ignore_errors=True)


def boundaries_of(server: ForkServer, tmp: Path, variant: str) -> list[str]:
    """The boundaries an uninterrupted run of ``variant`` crosses."""
    done = server.child("run", "--db", tmp / "dry.db", "--ledger", tmp / "dry.ledger",
                        "--variant", variant, "--saga-id", f"{variant}-dry")
    assert done.returncode == 0, done.stderr
    boundaries: list[str] = json.loads(done.stdout.splitlines()[-1])["boundaries"]
    return boundaries


def pg_journal_rows(
    conninfo: str, schema: str, saga_id: str
) -> tuple[str | None, list[tuple[str, str, str, int]]]:
    """``journal_rows``, as the PostgreSQL server has them (plain SQL)."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        (exists,) = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".fallback_saga_steps',)
        ).fetchone() or (False,)
        if not exists:
            return None, []
        head = conn.execute(
            f'SELECT status FROM "{schema}".fallback_saga_sagas WHERE saga_id = %s',
            (saga_id,),
        ).fetchone()
        rows = conn.execute(
            f'SELECT step, action, status, attempt FROM "{schema}".fallback_saga_steps '
            "WHERE saga_id = %s ORDER BY seq", (saga_id,),
        ).fetchall()
    return (None if head is None else head[0]), [tuple(row) for row in rows]


def journal_rows(db: Path, saga_id: str) -> tuple[str | None, list[tuple[str, str, str, int]]]:
    """The saga's status and its (step, action, status, attempt) rows, as on disk."""
    if not db.exists():
        return None, []
    conn = sqlite3.connect(db)
    try:
        head = conn.execute("SELECT status FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
        rows = conn.execute(
            "SELECT step, action, status, attempt FROM saga_steps WHERE saga_id = ? "
            "ORDER BY seq", (saga_id,),
        ).fetchall()
    finally:
        conn.close()
    return (None if head is None else head[0]), [tuple(row) for row in rows]


def play(
    server: ForkServer, tmp: Path, variant: str, writer: str, interrupts: tuple[int, ...],
    pg: tuple[str, str] | None = None,
) -> list[str]:
    """One case; the invariants it broke (none: an empty list). ``pg``: on
    PostgreSQL (conninfo, schema), else on SQLite with ``writer``."""
    name = f"{variant}-{writer}-" + "-".join(map(str, interrupts))
    db, ledger, saga_id = tmp / f"{name}.db", tmp / f"{name}.ledger", f"{variant}-{name}"
    store: list[Any] = ["--db", db] if pg is None else ["--dsn", "env", "--schema", pg[1]]
    env = None if pg is None else {"CRASH_APP_DSN": pg[0]}
    run = server.child("run", *store, "--ledger", ledger, "--variant", variant,
                       "--saga-id", saga_id, "--writer", writer,
                       "--interrupt-at", *interrupts, env=env)
    problems: list[str] = []
    where = f"{name}: {run.stdout.splitlines()[:2]}"
    if run.returncode != INTERRUPTED_EXIT:
        return [f"{where}: exit {run.returncode}\n{run.stderr[-2000:]}"]
    _status, rows = journal_rows(db, saga_id) if pg is None else pg_journal_rows(*pg, saga_id)
    started = Counter((step, action, attempt) for step, action, status, attempt in rows
                      if status == "started")
    called = Counter((line["step"], line["action"], line["attempt"])
                     for line in Ledger.read(ledger))
    unjournaled = called - started
    if unjournaled:
        problems.append(f"{where}: called without a STARTED row (S13): {dict(unjournaled)}")
    recovered = server.child("recover", *store, "--ledger", ledger, "--ids", saga_id, env=env)
    if recovered.returncode != 0:
        return [*problems, f"{where}: recovery exited {recovered.returncode}\n"
                f"{recovered.stderr[-2000:]}"]
    outcome = json.loads(recovered.stdout.splitlines()[-1])["outcomes"][saga_id]
    allowed = {"compensated", "failed"} if variant == "stuck" else {"completed", "compensated"}
    if outcome not in allowed | {"not found"}:
        problems.append(f"{where}: ended {outcome}")
    lines = Ledger.read(ledger)
    applied = Counter((line["action"], line["step"]) for line in lines if line["kind"] == "apply")
    twice = {key: n for key, n in applied.items() if n > 1}
    if twice:
        problems.append(f"{where}: applied more than once: {twice}")
    acts = {step for action, step in applied if action == "act"}
    undone = {step for action, step in applied if action == "compensate"}
    if outcome == "completed" and undone:
        problems.append(f"{where}: completed, yet compensated {undone}")
    if outcome in ("compensated", "failed"):
        expected = acts - ({"A"} if outcome == "failed" else set())
        if undone != expected:
            problems.append(f"{where}: {outcome}: acts {acts}, compensated {undone}")
    actions = [line["action"] for line in lines]
    if "compensate" in actions and "act" in actions[actions.index("compensate"):]:
        problems.append(f"{where}: a forward step ran after the unwinding began")
    return problems


def run_matrix(
    servers: list[ForkServer], tmp: Path, variant: str, writer: str, again: int | None
) -> None:
    count = len(boundaries_of(servers[0], tmp, variant))
    cases = [(k,) if again is None else (k, k + again) for k in range(count)]
    idle: queue.SimpleQueue[ForkServer] = queue.SimpleQueue()
    for server in servers:
        idle.put(server)

    def one(case: tuple[int, ...]) -> list[str]:
        server = idle.get()  # a server runs one job at a time
        try:
            return play(server, tmp, variant, writer, case)
        finally:
            idle.put(server)

    with ThreadPoolExecutor(len(servers)) as pool:
        found = list(pool.map(one, cases))
    problems = [problem for case in found for problem in case]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANTS)
def test_S8_S13_ctrl_c_at_every_boundary_is_compensated_and_journaled(
    servers: list[ForkServer], tmp_path: Path, variant: str
) -> None:
    """One Ctrl-C: the saga's task is cancelled wherever it is."""
    run_matrix(servers, tmp_path, variant, "thread", None)


@pytest.mark.parametrize("again", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_S10_S13_second_ctrl_c_leaves_every_saga_recoverable(
    servers: list[ForkServer], tmp_path: Path, variant: str, again: int
) -> None:
    """A second Ctrl-C ``again`` boundaries after the first: KeyboardInterrupt
    wherever the process is (often mid-compensation), then ``asyncio.run``
    cancels every task left."""
    run_matrix(servers, tmp_path, variant, "thread", again)


@pytest.mark.parametrize("writer", ["inline", "process"])
@pytest.mark.parametrize("variant", ["unwind", "group-unwind"])
def test_S10_S13_ctrl_c_twice_on_each_sqlite_writer(
    servers: list[ForkServer], tmp_path: Path, variant: str, writer: str
) -> None:
    run_matrix(servers, tmp_path, variant, writer, 1)




@pytest.mark.parametrize("variant", ["unwind", "group-unwind"])
def test_S10_S13_ctrl_c_twice_on_postgres(
    servers: list[ForkServer], tmp_path: Path, variant: str, pg_conninfo: str, pg_schema: str
) -> None:
    """As on SQLite; one case at a time (each recovery pass sees the whole
    schema, so no case may run while another recovers)."""
    server = servers[0]
    count = len(boundaries_of(server, tmp_path, variant))
    problems = [
        problem for k in range(count)
        for problem in play(server, tmp_path, variant, "thread", (k, k + 1),
                            pg=(pg_conninfo, pg_schema))
    ]
    assert problems == [], "\n".join(problems)
