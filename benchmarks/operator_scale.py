"""The operator's paths on a store that has run for a year: wall time and peak
memory of each, and the query plans behind them.

Fills a SQLite file (``--db``; or a schema of a throwaway PostgreSQL cluster
from ``tests/pg_cluster.py`` with ``--store postgres``) with ``--finished``
finished sagas (90 % COMPLETED, 7 % COMPENSATED, 3 % FAILED) created over a
year, ``--interrupted`` RUNNING/COMPENSATING ones scattered among them (some
leased, some parked), one saga whose journal holds ``--long`` entries, and
one of ``--huge`` (added to a file or schema filled before, if missing),
and (SQLite) a parent of ``--children`` child sagas.
Rows are copied from the journal of a real run (``python -m fallback_saga
demo --db``), so every row reads back. Then it runs, each in its own
process (so peak RSS is the operation's own), what an on-call engineer
runs: ``list`` (plain, by status, by name, by both, a later page,
``--json``), ``show`` (``--json``, ``--limit``) of the long sagas, listings
and counts by creation time, the console's pages (time windows, pages of
the long journals) and ``/api/sagas``, a ``RecoveryWorker``-sized ``claim``, and (last,
it empties the store) ``purge``.

``--explain`` prints the plan of each listing query instead.

The fallback_saga measured is the one imported: run it once per tree to
compare (``PYTHONPATH=/path/to/tree python benchmarks/operator_scale.py``).

Run: ``python benchmarks/operator_scale.py [--store sqlite|postgres]
[--finished N] [--interrupted N] [--long N] [--huge N] [--db PATH] [--only WORD,...]``
(``--store postgres --dsn DSN --schema S``: a schema filled before, by
``fill_postgres``, on a server of your own).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # pg_cluster

# Children run in an empty directory: ``python -m``/``-c`` put the current
# directory first on sys.path, and a tree's package there would be measured
# instead of the one PYTHONPATH names.
@functools.cache
def neutral() -> str:
    path = tempfile.mkdtemp(prefix="operator_scale_")
    atexit.register(shutil.rmtree, path, True)
    return path

YEAR = 365 * 86_400.0
NAMES = ("DemoOrderSaga",) * 8 + ("BillingSaga", "ShippingSaga")
LONG_ID = "long-journal"
# A saga of ``--huge`` entries: a Parallel group of 25,000 members with a
# retry each, or the compensations of a FAILED saga retried for months.
HUGE_ID = "huge-journal"
# A parent of ``--children`` child sagas (SubSaga steps, one a step name):
# its journal, two rows a child, and each child's own record.
FAMILY_ID = "family"


def templates() -> dict[str, tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """A real run's rows: a completed and a compensated saga, their journals."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "demo.db")
        subprocess.run(
            [sys.executable, "-m", "fallback_saga", "demo", "--db", path],
            check=True, capture_output=True, cwd=neutral(),
        )
        conn = sqlite3.connect(path)
        found: dict[str, tuple[tuple[Any, ...], list[tuple[Any, ...]]]] = {}
        for (saga_id, status) in conn.execute("SELECT saga_id, status FROM sagas"):
            if status in found:
                continue
            saga = conn.execute(
                "SELECT fingerprint, context FROM sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            steps = conn.execute(
                "SELECT position, step, branch, action, status, attempt, error, result"
                " FROM saga_steps WHERE saga_id = ? ORDER BY seq", (saga_id,)
            ).fetchall()
            found[status] = (saga, steps)
        conn.close()
    return found


def plan_rows(
    finished: int, interrupted: int, seed: int = 7
) -> tuple[list[tuple[Any, ...]], float]:
    """(saga_id, name, status, created_at, updated_at, owner, expires, claims)
    oldest first, over the year before now."""
    rng = random.Random(seed)
    total = finished + interrupted
    now = time.time()
    start = now - YEAR
    stuck = set(rng.sample(range(total), interrupted))
    rows = []
    for n in range(total):
        created = start + YEAR * n / total
        name = NAMES[n % len(NAMES)]
        owner = expires = None
        claims = 0
        if n in stuck:
            status = "running" if n % 3 else "compensating"
            if n % 1000 == 1:  # leased now
                owner, expires = "worker-1", now + 600
            elif n % 1000 == 2:  # parked: claimed 5 times, never given back
                claims = 5
        else:
            draw = rng.random()
            status = "completed" if draw < 0.90 else "compensated" if draw < 0.97 else "failed"
        rows.append((f"s{n:08d}", name, status, created, created + 2.0, owner, expires, claims))
    return rows, now


def steps_of(template: list[tuple[Any, ...]], saga_id: str, at: float, keep: int):
    for seq, row in enumerate(template[:keep]):
        position, step, branch, action, status, attempt, error, result = row
        yield (saga_id, seq, position, step, branch, action, status, attempt, error,
               at + seq / 1000, result)


def fill_sqlite(path: str, finished: int, interrupted: int, long: int, steps: int) -> None:
    from fallback_saga.store.sqlite import SQLiteSagaStore

    async def make() -> None:
        async with SQLiteSagaStore(path) as store:
            await store.open()

    asyncio.run(make())
    found = templates()
    done, undone = found["completed"], found["compensated"]
    rows, now = plan_rows(finished, interrupted)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    saga_sql = (
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at, lease_owner, lease_expires_at, lease_written_at,"
        " unreleased_claims) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    step_sql = (
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
        " attempt, error, at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    batch_sagas: list[tuple[Any, ...]] = []
    batch_steps: list[tuple[Any, ...]] = []
    for saga_id, name, status, created, updated, owner, expires, claims in rows:
        (fingerprint, context), template = undone if status in (
            "compensated", "failed", "compensating") else done
        keep = steps if status not in ("running", "compensating") else 2
        batch_sagas.append((saga_id, name, fingerprint, status, context, keep + 1, created,
                            updated, owner, expires, now if owner else None, claims))
        batch_steps.extend(steps_of(template, saga_id, created, keep))
        if len(batch_sagas) >= 20_000:
            conn.executemany(saga_sql, batch_sagas)
            conn.executemany(step_sql, batch_steps)
            batch_sagas.clear()
            batch_steps.clear()
    conn.executemany(saga_sql, batch_sagas)
    conn.executemany(step_sql, batch_steps)
    # The long saga: the newest, RUNNING, ``long`` entries (a long Parallel
    # group's journal looks alike to a reader: many rows, one saga).
    (fingerprint, context), template = done
    conn.execute(saga_sql, (LONG_ID, "DemoOrderSaga", fingerprint, "running", context,
                            long + 1, now - 60, now - 30, None, None, None, 0))
    conn.executemany(step_sql, (
        (LONG_ID, seq, *template[seq % 2][:6], None, now - 60 + seq / 1000,
         template[seq % 2][7]) for seq in range(long)))
    conn.execute("COMMIT")
    conn.execute("ANALYZE")  # as PRAGMA optimize would, on a store a year old
    conn.close()


def add_journal_sqlite(path: str, saga_id: str, entries: int) -> None:
    """Adds a RUNNING saga of ``entries`` journal rows to a filled file (if missing)."""
    conn = sqlite3.connect(path, isolation_level=None)
    if conn.execute("SELECT 1 FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone():
        conn.close()
        return
    (fingerprint, context), template = templates()["completed"]
    now = time.time()
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at, unreleased_claims) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (saga_id, "DemoOrderSaga", fingerprint, "running", context, entries + 1, now - 60,
         now - 30))
    conn.executemany(
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
        " attempt, error, at, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((saga_id, seq, *template[seq % 2][:6], None, now - 60 + seq / 1000,
          template[seq % 2][7]) for seq in range(entries)))
    conn.execute("COMMIT")
    conn.close()


def add_family_sqlite(path: str, saga_id: str, children: int) -> None:
    """Adds a RUNNING parent of ``children`` SubSaga steps (a STARTED and a
    COMPLETED row each) and its child sagas to a filled file (if missing)."""
    conn = sqlite3.connect(path, isolation_level=None)
    if children <= 0 or conn.execute(
            "SELECT 1 FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone():
        conn.close()
        return
    (fingerprint, context), _ = templates()["completed"]
    now = time.time()
    saga_sql = (
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at, unreleased_claims) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
    )
    conn.execute("BEGIN")
    conn.execute(saga_sql, (saga_id, "DemoOrderSaga", fingerprint, "running", context,
                            2 * children + 1, now - 60, now - 30))
    conn.executemany(
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
        " attempt, error, at, result) VALUES (?, ?, ?, ?, 'primary', 'act', ?, 1, NULL, ?, ?)",
        ((saga_id, seq, seq // 2, f"child{seq // 2:05d}",
          "started" if seq % 2 == 0 else "completed", now - 60 + seq / 1000,
          None if seq % 2 == 0 else "{}") for seq in range(2 * children)))
    conn.executemany(saga_sql, (
        (f"{saga_id}/child{n:05d}", "ChildSaga", fingerprint, "completed", context, 1,
         now - 60, now - 60) for n in range(children)))
    conn.execute("COMMIT")
    conn.close()


def add_journal_postgres(conninfo: str, schema: str, saga_id: str, entries: int) -> None:
    """Adds a RUNNING saga of ``entries`` journal rows to a filled schema (if missing)."""
    import psycopg

    table, history = f'"{schema}".fallback_saga_sagas', f'"{schema}".fallback_saga_steps'
    (fingerprint, context), template = templates()["completed"]
    now = time.time()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute(f"SELECT 1 FROM {table} WHERE saga_id = %s", (saga_id,)).fetchone():
            return
        with conn.cursor().copy(
            f"COPY {table} (saga_id, saga_name, fingerprint, status, context, version,"
            " journal_length, created_at, updated_at, touched_at, unreleased_claims)"
            " FROM STDIN"
        ) as copy:
            copy.write_row((saga_id, "DemoOrderSaga", fingerprint, "running", context,
                            entries + 1, entries, _ts(now - 60), _ts(now - 30),
                            _ts(now - 30), 0))
        with conn.cursor().copy(
            f"COPY {history} (saga_id, seq, position, step, branch, action, status, attempt,"
            " error, at, result) FROM STDIN"
        ) as copy:
            for seq in range(entries):
                copy.write_row((saga_id, seq, *template[seq % 2][:6], None,
                                now - 60 + seq / 1000, template[seq % 2][7]))
        conn.execute(f"VACUUM ANALYZE {history}")


def fill_postgres(conninfo: str, schema: str, finished: int, interrupted: int, long: int,
                  steps: int) -> None:
    import psycopg

    from fallback_saga.store.postgres import PostgresSagaStore

    async def make() -> None:
        async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
            await store.open()

    asyncio.run(make())
    found = templates()
    done, undone = found["completed"], found["compensated"]
    rows, now = plan_rows(finished, interrupted)
    table, history = f'"{schema}".fallback_saga_sagas', f'"{schema}".fallback_saga_steps'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor().copy(
            f"COPY {table} (saga_id, saga_name, fingerprint, status, context, version,"
            " journal_length, created_at, updated_at, touched_at, lease_owner,"
            " lease_expires_at, lease_written_at, unreleased_claims) FROM STDIN"
        ) as copy:
            for saga_id, name, status, created, updated, owner, expires, claims in rows:
                (fingerprint, context), _ = undone if status in (
                    "compensated", "failed", "compensating") else done
                keep = steps if status not in ("running", "compensating") else 2
                copy.write_row((saga_id, name, fingerprint, status, context, keep + 1, keep,
                                _ts(created), _ts(updated), _ts(updated), owner,
                                None if expires is None else _ts(expires),
                                _ts(now) if owner else None, claims))
            (fingerprint, context), _ = done
            copy.write_row((LONG_ID, "DemoOrderSaga", fingerprint, "running", context,
                            long + 1, long, _ts(now - 60), _ts(now - 30), _ts(now - 30),
                            None, None, None, 0))
        with conn.cursor().copy(
            f"COPY {history} (saga_id, seq, position, step, branch, action, status, attempt,"
            " error, at, result) FROM STDIN"
        ) as copy:
            for saga_id, _name, status, created, *_rest in rows:
                _, template = undone if status in (
                    "compensated", "failed", "compensating") else done
                keep = steps if status not in ("running", "compensating") else 2
                for row in steps_of(template, saga_id, created, keep):
                    copy.write_row(row)
            _, template = done
            for seq in range(long):
                copy.write_row((LONG_ID, seq, *template[seq % 2][:6], None,
                                now - 60 + seq / 1000, template[seq % 2][7]))
        conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(f"VACUUM ANALYZE {history}")


def _ts(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


# --------------------------------------------------------------------------- operations


def operations(target: list[str]) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "fallback_saga"]
    return {
        "list": [*cli, "list", *target],
        "list --json": [*cli, "list", *target, "--json"],
        "list --status failed": [*cli, "list", *target, "--status", "failed"],
        "list --status running": [*cli, "list", *target, "--status", "running"],
        "list --status completed": [*cli, "list", *target, "--status", "completed"],
        "list --status pending (none)": [*cli, "list", *target, "--status", "pending"],
        "list --name BillingSaga": [*cli, "list", *target, "--name", "BillingSaga"],
        "list --name B --status failed": [
            *cli, "list", *target, "--name", "BillingSaga", "--status", "failed"],
        "list --limit 1000": [*cli, "list", *target, "--limit", "1000"],
        "show long": [*cli, "show", *target, LONG_ID],
        "show long --json": [*cli, "show", *target, LONG_ID, "--json"],
        "show long --limit 50": [*cli, "show", *target, LONG_ID, "--limit", "50"],
        "show huge": [*cli, "show", *target, HUGE_ID],
        "show huge --limit 50": [*cli, "show", *target, HUGE_ID, "--limit", "50"],
    }


def measure(command: list[str]) -> tuple[float, int, int, str]:
    """Wall seconds, the child's peak RSS (KiB), its exit status, and the
    first line of what it printed."""
    with tempfile.NamedTemporaryFile("r") as peak_file:
        started = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-o", peak_file.name, "-f", "%M", *command],
            capture_output=True, text=True, cwd=neutral(),
        )
        took = time.perf_counter() - started
        peak = int(peak_file.read().strip().splitlines()[-1])
    out = done.stdout.strip().splitlines()
    lines = f"{len(out)} lines" if done.returncode == 0 else done.stderr.strip()[-60:]
    return took, peak, done.returncode, lines


SNIPPET = r"""
import asyncio, os, sys, time, tracemalloc, resource, json
sys.path.insert(0, {tests!r})
target = json.loads({target!r})
async def main():
    if target[0] == "--db":
        from fallback_saga.store.sqlite import SQLiteSagaStore
        store = SQLiteSagaStore(target[1])
    else:
        from fallback_saga.store.postgres import PostgresSagaStore
        store = PostgresSagaStore(target[1], schema=target[3], min_size=1)
    async with store:
        await store.open()
        tracemalloc.start()
        started = time.perf_counter()
        result = await ({call})
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        size = len(result) if hasattr(result, "__len__") else result
        print(json.dumps([took, peak, str(size)[:40]]))
asyncio.run(main())
"""


def measure_call(target: list[str], call: str) -> tuple[float, int, str]:
    code = SNIPPET.format(tests=str(HERE.parent / "tests"), target=json.dumps(target), call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=neutral())
    if done.returncode:
        return -1.0, -1, done.stderr.strip().splitlines()[-1][:70]
    took, peak, size = json.loads(done.stdout.strip().splitlines()[-1])
    return took, peak, size


CALLS = {
    "list_sagas(limit=101)": "store.list_sagas(limit=101)",
    "list_sagas(status=failed)": "store.list_sagas(status='failed', limit=101)",
    "list_sagas(status=compensating)": "store.list_sagas(status='compensating', limit=101)",
    "list_sagas(status=pending) (none)": "store.list_sagas(status='pending', limit=101)",
    "list_sagas(name=Shipping, status=compensating)": (
        "store.list_sagas(saga_name='ShippingSaga', status='compensating', limit=101)"),
    "list_sagas(name=Nobody) (none)": "store.list_sagas(saga_name='Nobody', limit=101)",
    "list_sagas(before=middle)": "store.list_sagas(before='s00500000', limit=101)",
    "list_sagas(created_until=11 months ago)": (
        "store.list_sagas(created_until=time.time() - 335 * 86400, limit=101)"),
    "count_sagas(created_since=a month ago)": (
        "store.count_sagas(created_since=time.time() - 30 * 86400)"),
    "list_sagas(created_since=a day ago)": (
        "store.list_sagas(created_since=time.time() - 86400, limit=101)"),
    "list_sagas(created_since=a month ago, status=failed)": (
        "store.list_sagas(created_since=time.time() - 30 * 86400, status='failed', limit=101)"),
    "list_sagas(created 7..6 months ago)": (
        "store.list_sagas(created_since=time.time() - 210 * 86400,"
        " created_until=time.time() - 180 * 86400, limit=101)"),
    "list_sagas(created_until=a year ago) (none)": (
        "store.list_sagas(created_until=time.time() - 400 * 86400, limit=101)"),
    "count_sagas(created_since=a day ago)": (
        "store.count_sagas(created_since=time.time() - 86400)"),
    "count_sagas(created_until=11 months ago)": (
        "store.count_sagas(created_until=time.time() - 335 * 86400)"),
    "count_sagas(created 7..6 months ago)": (
        "store.count_sagas(created_since=time.time() - 210 * 86400,"
        " created_until=time.time() - 180 * 86400)"),
    "count_sagas(name=Billing, created_since=a month ago)": (
        "store.count_sagas(saga_name='BillingSaga', created_since=time.time() - 30 * 86400)"),
    "count_sagas()": "store.count_sagas()",
    "count_sagas(created_since=half a year ago)": (
        "store.count_sagas(created_since=time.time() - 182 * 86400)"),
    "list_sagas(created_since=half a year ago)": (
        "store.list_sagas(created_since=time.time() - 182 * 86400, limit=101)"),
    "count_sagas(name=Demo, at_most=10000)": (
        "store.count_sagas(saga_name='DemoOrderSaga', at_most=10000)"),
    "count_sagas(created_since=half a year ago, at_most=10000)": (
        "store.count_sagas(created_since=time.time() - 182 * 86400, at_most=10000)"),
    "load(long)": f"store.load({LONG_ID!r})",
    "load(huge)": f"store.load({HUGE_ID!r})",
    "claim(limit=10, names=[own])": (
        "store.claim(owner='w', lease_seconds=60, older_than=1, limit=10,"
        " names=['DemoOrderSaga'])"),
    "claim(limit=100)": "store.claim(owner='w', lease_seconds=60, older_than=1, limit=100)",
    "old_finished(1 day)": "store.old_finished(older_than=86400)",
}


def console_pages(target: list[str]) -> list[tuple[str, float, str]]:
    """Starts ``serve`` and times a few requests (its RSS after them)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "fallback_saga", "serve", *target, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=neutral(),
    )
    out: list[tuple[str, float, str]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):  # listening yet? (no request: the first is timed)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        # The first page counts the store (then the count is reused a while:
        # console/counting.py); a filter by name counts again, for that name.
        for path in ("/", "/", "/sagas", "/?status=running", "/?status=failed", "/?status=pending",
                     "/?name=BillingSaga&status=failed", "/?before=s00500000", f"/sagas/{LONG_ID}",
                     "/api/sagas", "/api/sagas?status=running", f"/api/sagas/{LONG_ID}",
                     "/metrics", "/?since=24h", "/?since=24h", "/?since=30d",
                     "/?since=30d&status=failed", "/?until=335d", "/?since=210d&until=180d",
                     "/api/sagas?since=30d", f"/sagas/{LONG_ID}?page=100",
                     f"/sagas/{HUGE_ID}", f"/sagas/{HUGE_ID}?page=500",
                     f"/api/sagas/{HUGE_ID}", f"/api/sagas/{HUGE_ID}?page=250",
                     f"/api/sagas/{HUGE_ID}?page=500",
                     # About half the sagas: counts stop at 10,000 a status
                     # (console/listing.py COUNT_CAP), unless count=exact.
                     "/?since=180d", "/?since=180d&status=failed", "/api/sagas?since=180d",
                     "/?since=180d&count=exact",
                     # A name without a time window (its counts: capped too),
                     # and a parent of many child sagas (its page's links).
                     "/?name=DemoOrderSaga", "/?name=BillingSaga", "/api/sagas?name=DemoOrderSaga",
                     f"/sagas/{FAMILY_ID}", f"/sagas/{FAMILY_ID}?page=100",
                     f"/api/sagas/{FAMILY_ID}?page=100"):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(base + path, timeout=300) as answer:
                    size = len(answer.read())
                    note = f"{answer.status}, {size:,} bytes"
            except Exception as error:
                note = f"{type(error).__name__}: {error}"[:60]
            out.append((path, time.perf_counter() - started, note))
        with open(f"/proc/{server.pid}/status") as status:
            peak = next(line for line in status if line.startswith("VmHWM"))
        out.append(("serve peak RSS", 0.0, peak.split(":")[1].strip()))
    finally:
        server.terminate()
        server.wait(10)
    return out


APP = """
import dataclasses
from fallback_saga import Saga, SagaContext, SagaStepHandler


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Nothing(SagaStepHandler[Ctx, None]):
    async def act(self, context):
        return self._generate_step_result(None)


class IdleSaga(Saga[Ctx]):
    steps = [Nothing]
"""


def run_all(target: list[str], only: set[str] | None) -> None:
    def wanted(name: str) -> bool:
        return only is None or any(word in name for word in only)

    print(f"{'operation':42} {'wall s':>8} {'peak':>12}  result")
    for name, command in operations(target).items():
        if wanted(name):
            took, peak, code, first = measure(command)
            print(f"{name:42} {took:8.3f} {peak / 1024:9.1f} MiB  [{code}] {first}")
    for name, call in CALLS.items():
        if wanted(name):
            took, peak, size = measure_call(target, call)
            print(f"{name:42} {took:8.3f} {peak / 2**20:9.1f} MiB* {size}")
    if wanted("serve"):
        for path, took, note in console_pages(target):
            print(f"serve {path:36} {took:8.3f} {'':12}  {note}")
    if wanted("recover"):
        # A saga class no stored saga has the name of: the pass claims none,
        # then reports the interrupted sagas it left alone (its listings by
        # status, RUNNING and COMPENSATING).
        Path(neutral(), "scale_app.py").write_text(APP)
        took, peak, code, first = measure(
            [sys.executable, "-m", "fallback_saga", "recover", *target, "--limit", "10",
             "--app", "scale_app:IdleSaga"])
        print(f"{'recover --limit 10':42} {took:8.3f} {peak / 1024:9.1f} MiB  [{code}] {first}")
    if wanted("purge"):
        took, peak, code, first = measure(
            [sys.executable, "-m", "fallback_saga", "purge", *target, "--older-than", "1d"])
        print(f"{'purge --older-than 1d':42} {took:8.3f} {peak / 1024:9.1f} MiB  [{code}] {first}")
    print("(* tracemalloc peak of the call alone; else the process's peak RSS)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--interrupted", type=int, default=20_000)
    parser.add_argument("--long", type=int, default=20_000)
    parser.add_argument("--huge", type=int, default=100_000,
                        help="journal entries of the second long saga (added if missing)")
    parser.add_argument("--children", type=int, default=25_000,
                        help="SQLite: child sagas of the family saga (added if missing)")
    parser.add_argument("--steps", type=int, default=4, help="journal rows per finished saga")
    parser.add_argument("--db", help="SQLite: the file (kept; filled only if new)")
    parser.add_argument("--only", help="comma-separated words: only operations naming one")
    parser.add_argument("--dsn", help="PostgreSQL: a server of your own (kept; not filled)")
    parser.add_argument("--schema", help="PostgreSQL, with --dsn: the schema filled before")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    import fallback_saga

    print(f"fallback_saga from {Path(fallback_saga.__file__).parent}")
    child = subprocess.run(
        [sys.executable, "-c", "import fallback_saga; print(fallback_saga.__file__)"],
        capture_output=True, text=True, cwd=neutral(), check=True,
    ).stdout.strip()
    assert Path(child).parent == Path(fallback_saga.__file__).parent, child
    if args.store == "sqlite":
        path = args.db or os.path.join(tempfile.mkdtemp(), "year.db")
        if not os.path.exists(path):
            started = time.perf_counter()
            fill_sqlite(path, args.finished, args.interrupted, args.long, args.steps)
            print(f"filled {path} in {time.perf_counter() - started:.0f} s")
        add_journal_sqlite(path, HUGE_ID, args.huge)
        add_family_sqlite(path, FAMILY_ID, args.children)
        run_all(["--db", path], only)
        return
    if args.dsn:
        add_journal_postgres(args.dsn, args.schema, HUGE_ID, args.huge)
        run_all(["--dsn", args.dsn, "--schema", args.schema], only)
        return
    from pg_cluster import PostgresCluster

    with PostgresCluster.start_new() as cluster:
        schema = f"b_{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        fill_postgres(cluster.conninfo, schema, args.finished, args.interrupted, args.long,
                      args.steps)
        add_journal_postgres(cluster.conninfo, schema, HUGE_ID, args.huge)
        print(f"filled schema {schema} in {time.perf_counter() - started:.0f} s")
        run_all(["--dsn", cluster.conninfo, "--schema", schema], only)


if __name__ == "__main__":
    main()
