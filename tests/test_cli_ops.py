"""The operator commands of ``python -m fallback_saga``: list, show, recover,
purge, and ``demo --db`` (a crash recovered).

Each command runs in-process through ``main([...])``; one test runs the real
``python -m fallback_saga`` in a subprocess. Interrupted sagas are made by a
step that raises ``Crash``, a ``BaseException`` the executor does not handle:
the run stops dead, as if the process had died, and the journal keeps what
was written before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers_cli import import_app

from fallback_saga import SagaFailed, SagaStatus, SQLiteSagaStore, StepStatus
from fallback_saga.cli import main, mermaid_gantt, parse_duration
from fallback_saga.store.base import SagaRecord
from fallback_saga.testing import entry

# --------------------------------------------------------------------------- an app

APP_SOURCE = '''
import asyncio
import dataclasses
import os

from fallback_saga import Saga, SagaContext, SagaStepHandler


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


# Switches the tests flip: where the "process" dies, which compensations keep failing.
CRASH_IN: set[str] = set()
BROKEN: set[str] = set()
CALLS: list[str] = []
# What the failing participants' errors quote besides (a payload, a URL).
QUOTED: list[str] = []


@dataclasses.dataclass
class ShopContext(SagaContext):
    order_id: str
    declined: bool = False
    reserved: bool = False
    charged: bool = False
    shipped: bool = False


class Step(SagaStepHandler[ShopContext, None]):
    async def act(self, context: ShopContext) -> None:
        name = type(self).__name__
        CALLS.append(f"act {name}")
        if "act " + name in CRASH_IN:
            raise Crash(name)
        if name == "Charge" and context.declined:
            raise ValueError("card declined" + "".join(QUOTED))
        setattr(context, self.flag, True)

    async def compensate(self, context: ShopContext) -> None:
        name = type(self).__name__
        CALLS.append(f"compensate {name}")
        if "compensate " + name in CRASH_IN:
            raise Crash(name)
        if name in BROKEN:
            raise ConnectionError(f"{name} service down" + "".join(QUOTED))
        setattr(context, self.flag, False)


class Reserve(Step):
    flag = "reserved"


class Charge(Step):
    flag = "charged"


class Ship(Step):
    flag = "shipped"


class Slow(Step):
    flag = "shipped"

    async def act(self, context: ShopContext) -> None:
        await super().act(context)
        await asyncio.sleep(float(os.environ.get("CLI_OPS_NAP", "0")))


class ShopSaga(Saga[ShopContext]):
    steps = [Reserve, Charge, Ship]


class SlowSaga(Saga[ShopContext]):
    steps = [Reserve, Slow]


class RefundSaga(Saga[ShopContext]):
    steps = [Charge]


def sagas(store):
    return [ShopSaga(store=store)]


# The next release of ShopSaga: Ship renamed Dispatch in place; or Reserve
# and Charge swapped.
class Dispatch(Step):
    flag = "shipped"


class ShopSagaRenamed(Saga[ShopContext]):
    name = "ShopSaga"
    steps = [Reserve, Charge, Dispatch]


class ShopSagaReordered(Saga[ShopContext]):
    name = "ShopSaga"
    steps = [Charge, Reserve, Ship]


def sagas_renamed(store):
    return [ShopSagaRenamed(store=store)]


def sagas_reordered(store):
    return [ShopSagaReordered(store=store)]


def slow_sagas(store):
    return [SlowSaga(store=store)]


async def async_sagas(store):
    return [ShopSaga(store=store), RefundSaga(store=store)]


def broken_factory(store):
    raise RuntimeError("no configuration")


def not_sagas(store):
    return ["ShopSaga"]


def other_store(store):
    return [ShopSaga()]


INSTANCE = ShopSaga()
CLASSES = [ShopSaga, RefundSaga]
'''



@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh app module (its own name per test: the import cache holds no state)."""
    yield from import_app(tmp_path, monkeypatch, APP_SOURCE, "cli_ops_app")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sagas.db")


def run_sagas(db: str, app: ModuleType, *orders: tuple[str, dict[str, Any], str]) -> None:
    """Run ``(saga_id, context fields, crash point)`` orders on ``db``, one after another."""

    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            saga = app.ShopSaga(store=store)
            for saga_id, fields, crash_in in orders:
                app.CRASH_IN.clear()
                if crash_in:
                    app.CRASH_IN.add(crash_in)
                with contextlib.suppress(SagaFailed, app.Crash):
                    await saga.run(app.ShopContext(order_id=saga_id, **fields), saga_id=saga_id)
        app.CRASH_IN.clear()

    asyncio.run(go())


def load(db: str, saga_id: str) -> SagaRecord:
    async def go() -> SagaRecord:
        async with SQLiteSagaStore(db) as store:
            return await store.load(saga_id)

    return asyncio.run(go())


# The threads alive as the test began: another test's (see store_threads).
_threads_before: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


@pytest.fixture(autouse=True)
def _note_threads_before() -> None:
    _threads_before.clear()
    _threads_before.update(threading.enumerate())


def store_threads() -> list[threading.Thread]:
    """The SQLite stores' threads still alive after a command (2 s to end).
    Stores an earlier test left unclosed on purpose (test_shutdown: a loop
    that ends under them) are collected first: their threads end with them,
    and are not the command's. Those alive before the test began are not
    counted either: such a store something still holds (a class a cache
    keeps, whose closure holds it) is not collected here."""
    gc.collect()
    deadline = time.monotonic() + 2.0
    while True:
        alive = [t for t in threading.enumerate()
                 if t.name.startswith("fallback_saga-sqlite") and t not in _threads_before]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- list


def test_list_prints_a_table_newest_first(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {"declined": True}, ""), ("o-3", {}, "act Ship"))
    assert main(["list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "saga", "status", "created", "(UTC)", "updated", "(UTC)",
                                "lease", "owner"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["o-3", "ShopSaga", "running"],
        ["o-2", "ShopSaga", "compensated"],
        ["o-1", "ShopSaga", "completed"],
    ]
    assert lines[-1] == "(3 sagas, newest first)"


def test_list_filters_by_status_and_name_and_limits(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {}, ""), ("o-3", {"declined": True}, ""))
    assert main(["list", "--db", db, "--status", "COMPLETED", "--name", "ShopSaga"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert ids == ["o-2", "o-1"]
    assert main(["list", "--db", db, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "o-3" in out
    assert "o-2" not in out
    assert "more match: raise --limit" in out
    assert main(["list", "--db", db, "--name", "NoSuchSaga"]) == 0
    assert capsys.readouterr().out == "no sagas match\n"


def test_list_json_is_an_array_of_summaries(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {}, "act Charge"))
    assert main(["list", "--db", db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["saga_id"], row["status"]) for row in rows] == [
        ("o-2", "running"),
        ("o-1", "completed"),
    ]
    for row in rows:
        assert set(row) == {
            "saga_id", "saga_name", "status", "created_at", "updated_at",
            "lease_owner", "lease_expires_at", "unreleased_claims", "parked",
        }
        assert row["saga_name"] == "ShopSaga"
        assert isinstance(row["created_at"], float)
        assert row["updated_at"] >= row["created_at"]
        assert row["lease_owner"] is None


def test_list_shows_a_recovery_lease(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Charge"))

    async def claim() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.claim(owner="worker-7", lease_seconds=300, older_than=-1, limit=10)

    asyncio.run(claim())
    assert main(["list", "--db", db]) == 0
    assert "worker-7" in capsys.readouterr().out


def test_an_empty_store_lists_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def create() -> None:
        async with SQLiteSagaStore(db):
            pass

    asyncio.run(create())
    assert main(["list", "--db", db]) == 0
    assert capsys.readouterr().out == f"no sagas in {db}\n"
    assert main(["list", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_list_runs_as_a_real_command(db: str, app: ModuleType) -> None:
    run_sagas(db, app, ("o-1", {}, ""))
    done = subprocess.run(
        [sys.executable, "-m", "fallback_saga", "list", "--db", db, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [row["saga_id"] for row in json.loads(done.stdout)] == ["o-1"]
    table = subprocess.run(
        [sys.executable, "-m", "fallback_saga", "list", "--db", db],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert table.returncode == 0
    assert "o-1" in table.stdout
    assert "completed" in table.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "fallback_saga", "list", "--db", db + ".missing"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 2
    assert "no such file" in one_line_error(missing.stderr)


# --------------------------------------------------------------------------- bad --db


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("text", "is not a SQLite database"),
        ("empty", "is an empty file"),
        ("foreign", "not a fallback_saga saga store"),
        # Another program's file with a table of the saga store's name (S12).
        ("foreign-sagas", "not a fallback_saga saga store"),
    ],
)
@pytest.mark.parametrize("command", ["list", "show", "purge", "recover"])
def test_a_bad_db_is_a_one_line_usage_error(
    tmp_path: Path,
    app: ModuleType,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    message: str,
    command: str,
) -> None:
    path = tmp_path / f"{kind}.db"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("these are not the bytes you are looking for\n" * 100)
    elif kind == "empty":
        path.touch()
    elif kind.startswith("foreign"):
        table = "sagas" if kind == "foreign-sagas" else "invoices"
        conn = sqlite3.connect(path)
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT)")
        conn.commit()
        conn.close()
    extra = {
        "list": [],
        "show": ["o-1"],
        "purge": ["--older-than", "7d"],
        "recover": ["--app", f"{app.__name__}:sagas"],
    }[command]
    assert main([command, *extra, "--db", str(path)]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert message in error
    assert store_threads() == []
    if kind.startswith("foreign"):  # looked at, never migrated or switched to WAL
        conn = sqlite3.connect(path)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        conn.close()
        assert tables == {table}
        assert mode == "delete"
    if kind == "missing":
        assert not path.exists()  # not created either


# --------------------------------------------------------------------------- show


def test_show_prints_the_header_and_the_step_history(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    assert main(["show", "o-1", "--db", db]) == 0
    out = capsys.readouterr().out
    header, _, table = out.partition("\n\n")
    fields = dict(line.split(None, 1) for line in header.splitlines())
    assert fields["saga"] == "o-1"
    assert fields["name"] == "ShopSaga"
    assert fields["status"] == "compensated"
    assert fields["created"].endswith(" UTC")
    assert json.loads(fields["context"])["order_id"] == "o-1"
    rows = table.splitlines()
    assert rows[0].split() == [
        "seq", "pos", "step", "branch", "action", "status", "try", "time", "(UTC)", "error",
    ]
    cells = [row.split()[:7] for row in rows[2:]]
    assert cells == [
        ["0", "0", "Reserve", "primary", "act", "started", "1"],
        ["1", "0", "Reserve", "primary", "act", "completed", "1"],
        ["2", "1", "Charge", "primary", "act", "started", "1"],
        ["3", "1", "Charge", "primary", "act", "failed", "1"],
        ["4", "0", "Reserve", "primary", "compensate", "started", "1"],
        ["5", "0", "Reserve", "primary", "compensate", "completed", "1"],
    ]
    assert rows[5].endswith("ValueError: card declined")


def test_show_json_has_the_record_and_its_history(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""))
    assert main(["show", "o-1", "--db", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "saga_id", "saga_name", "status", "fingerprint", "version", "created_at",
        "updated_at", "context", "history", "parent", "children",
    }
    assert (data["parent"], data["children"]) == (None, [])
    assert (data["saga_id"], data["saga_name"], data["status"]) == ("o-1", "ShopSaga", "completed")
    assert data["fingerprint"] == app.ShopSaga.definition.fingerprint
    assert data["context"]["shipped"] is True
    assert len(data["history"]) == 6
    first = data["history"][0]
    assert set(first) == {
        "seq", "position", "step", "branch", "action", "status", "attempt", "error", "at",
        "result",
    }
    assert (first["seq"], first["step"], first["status"], first["error"]) == (
        0, "Reserve", "started", None,
    )
    completed = data["history"][1]
    assert (completed["status"], completed["result"]) == ("completed", completed["result"])
    assert first["result"] is None


def test_show_an_unknown_id_is_a_usage_error(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""))
    assert main(["show", "o-404", "--db", db]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(f"no saga with id 'o-404' in {db}")
    assert store_threads() == []


def test_show_a_corrupt_row_is_a_one_line_error(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sagas SET context = '{not json' WHERE saga_id = 'o-1'")
    conn.commit()
    conn.close()
    assert main(["show", "o-1", "--db", db]) == 1
    assert "unreadable" in one_line_error(capsys.readouterr().err)


def test_show_json_and_mermaid_exclude_each_other(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "o-1", "--db", db, "--json", "--mermaid"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_show_mermaid_draws_a_gantt_of_every_try(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    assert main(["show", "o-1", "--db", db, "--mermaid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "gantt",
        "    title ShopSaga o-1 (compensated)",
        "    dateFormat x",
        "    axisFormat %H:%M:%S.%L",
        "    todayMarker off",
    ]
    bars = [line.strip() for line in lines[5:]]
    assert bars[0] == "section forward"
    assert bars[1].startswith("Reserve :done, t0, ")
    assert bars[2].startswith("Charge :crit, t1, ")
    assert bars[3] == "section compensation"
    assert bars[4].startswith("Reserve :done, t2, ")
    record = load(db, "o-1")
    start_ms = round(record.history[0].at * 1000)
    assert bars[1].split(", ")[2] == str(start_ms)
    assert all(bar.endswith("ms") for bar in bars if not bar.startswith("section"))


def test_gantt_shows_a_try_cut_off_by_a_crash(app: ModuleType) -> None:
    record = SagaRecord(
        saga_id="o-9",
        saga_name="ShopSaga",
        fingerprint="fp",
        status=SagaStatus.COMPLETED,
        context={},
        history=[
            entry(0, "Reserve", at=100.0),
            entry(0, "Reserve", status=StepStatus.COMPLETED, at=100.010),
            entry(1, "Charge: card", at=100.010),  # the process died here
            entry(1, "Charge: card", at=160.0),  # resumed a minute later
            entry(1, "Charge: card", status=StepStatus.FAILED, error="TimeoutError", at=160.5),
            entry(1, "Charge: card", attempt=2, at=161.0),
            entry(1, "Charge: card", status=StepStatus.COMPLETED, attempt=2, at=161.25),
        ],
        updated_at=161.25,
    )
    chart = mermaid_gantt(record)
    assert "    Reserve :done, t0, 100000, 10ms" in chart
    assert "    Charge  card (cut off) :active, t1, 100010, 59990ms" in chart
    assert "    Charge  card :crit, t2, 160000, 500ms" in chart
    assert "    Charge  card try 2 :done, t3, 161000, 250ms" in chart
    assert "section compensation" not in chart


def test_gantt_ends_a_cut_off_try_where_the_resumed_run_starts_it_again() -> None:
    """durability.md's session: a plain step cut off by a kill, resumed, and
    the later steps run. The cut-off try is not left open (the steps after it
    are not a parallel group): it runs until the resumed try starts."""
    record = SagaRecord(
        saga_id="order-2",
        saga_name="OrderSaga",
        fingerprint="fp",
        status=SagaStatus.COMPLETED,
        context={},
        history=[
            entry(0, "Reserve", at=100.0),
            entry(0, "Reserve", status=StepStatus.COMPLETED, at=100.001),
            entry(1, "Charge", at=100.001),  # the process was killed here
            entry(1, "Charge", at=100.850),  # recover resumed it
            entry(1, "Charge", status=StepStatus.COMPLETED, at=100.851),
            entry(2, "Ship", at=100.851),
            entry(2, "Ship", status=StepStatus.COMPLETED, at=100.852),
        ],
        updated_at=100.852,
    )
    chart = mermaid_gantt(record)
    assert "    Charge (cut off) :active, t1, 100001, 849ms" in chart
    assert "no outcome yet" not in chart
    assert "    Charge :done, t2, 100850, 1ms" in chart
    assert "    Ship :done, t3, 100851, 1ms" in chart


def test_gantt_ends_a_cut_off_retry_where_the_resumed_run_starts_the_step() -> None:
    """A retried step killed in its second try: the resumed run starts it
    again as try 1 (another try). The cut-off try ends there, not at the
    saga's last update, and the steps after it are no parallel group."""
    record = SagaRecord(
        saga_id="order-4",
        saga_name="OrderSaga",
        fingerprint="fp",
        status=SagaStatus.COMPLETED,
        context={},
        history=[
            entry(0, "Charge", at=100.0),
            entry(0, "Charge", status=StepStatus.FAILED, error="TimeoutError", at=100.5),
            entry(0, "Charge", attempt=2, at=100.5),  # the process was killed here
            entry(0, "Charge", at=160.0),  # recover resumed it
            entry(0, "Charge", status=StepStatus.COMPLETED, at=160.25),
            entry(1, "Ship", at=160.25),
            entry(1, "Ship", status=StepStatus.COMPLETED, at=190.0),
        ],
        updated_at=190.0,
    )
    chart = mermaid_gantt(record)
    assert "    Charge try 2 (cut off) :active, t1, 100500, 59500ms" in chart
    assert "    Charge :done, t2, 160000, 250ms" in chart
    assert "    Ship :done, t3, 160250, 29750ms" in chart


def test_gantt_ends_the_cut_off_tries_of_a_group_where_they_start_again() -> None:
    """A parallel group (members side by side at positions 1 and 2) killed
    while both ran, then resumed: each member's first try is cut off where
    its resumed try starts, not left open on a completed saga."""
    record = SagaRecord(
        saga_id="order-3",
        saga_name="OrderSaga",
        fingerprint="fp",
        status=SagaStatus.COMPLETED,
        context={},
        history=[
            entry(1, "Charge", at=100.0),
            entry(2, "Mail", at=100.0),  # the process was killed here
            entry(1, "Charge", at=101.0),  # recover resumed the group
            entry(2, "Mail", at=101.0),
            entry(1, "Charge", status=StepStatus.COMPLETED, at=101.5),
            entry(2, "Mail", status=StepStatus.COMPLETED, at=101.25),
        ],
        updated_at=101.5,
    )
    chart = mermaid_gantt(record)
    assert "    Charge (cut off) :active, t0, 100000, 1000ms" in chart
    assert "    Mail (cut off) :active, t1, 100000, 1000ms" in chart
    assert "no outcome yet" not in chart
    assert "    Charge :done, t2, 101000, 500ms" in chart
    assert "    Mail :done, t3, 101000, 250ms" in chart


def test_gantt_of_a_running_saga_leaves_the_last_try_open() -> None:
    record = SagaRecord(
        saga_id="o-9",
        saga_name="ShopSaga",
        fingerprint="fp",
        status=SagaStatus.RUNNING,
        context={},
        history=[entry(0, "Reserve", at=100.0)],
        updated_at=100.0,
    )
    assert "    Reserve (no outcome yet) :active, t0, 100000, 1ms" in mermaid_gantt(record)


# --------------------------------------------------------------------------- recover


def test_recover_resumes_and_reports(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(
        db, app,
        ("o-1", {}, "act Charge"),  # RUNNING: Charge runs again
        ("o-2", {"declined": True}, "compensate Reserve"),  # COMPENSATING
        ("o-3", {}, ""),  # completed: not touched
    )
    app.CALLS.clear()
    status = main(["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == (
        f"recovering sagas in {db} not updated for 0s (at most 100, lease 5m) with ShopSaga"
    )
    assert sorted(out[1:3]) == ["  o-1: completed", "  o-2: compensated"]
    assert out[3] == (
        "recovered 2 saga(s): 1 completed, 1 compensated, 0 failed, 0 interrupted, 0 skipped"
    )
    assert sorted(app.CALLS) == [
        "act Charge", "act Ship", "compensate Reserve",
    ]
    assert load(db, "o-1").status is SagaStatus.COMPLETED
    assert load(db, "o-2").status is SagaStatus.COMPENSATED
    assert store_threads() == []


def test_recover_leaves_sagas_younger_than_older_than(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Charge"))
    assert main(["recover", "--db", db, "--app", f"{app.__name__}:sagas"]) == 0
    out = capsys.readouterr().out
    assert "not updated for 1m" in out
    assert "recovered 0 saga(s)" in out
    assert load(db, "o-1").status is SagaStatus.RUNNING


def test_S13_recover_beside_a_worker_names_the_sagas_it_left_and_why(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator runs ``recover`` by hand while a worker resumes a saga
    (its lease) and another saga is still within ``--older-than``: the pass
    takes neither, and says so (which saga, whose lease, until when; how
    many too recent), instead of a bare "recovered 0" about sagas ``list``
    shows RUNNING. The exit status stays 0: nothing failed."""
    run_sagas(db, app, ("o-1", {}, "act Charge"), ("o-2", {}, "act Charge"))

    async def worker_claims() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.claim_saga("o-1", owner="worker-7:4242:ab", lease_seconds=600)

    asyncio.run(worker_claims())
    app.CALLS.clear()
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "recovered 0 saga(s): 0 completed, 0 compensated, 0 failed, 0 interrupted, 0 skipped"
    )
    assert out[2].startswith("  leased  o-1 (running) by worker-7:4242:ab until ")
    assert out[2].endswith(
        " UTC: not taken (another worker holds it; claimable once its lease runs out)"
    )
    assert out[3:] == [
        "  not taken: 1 running or compensating saga updated within --older-than 1m "
        "(in flight, or interrupted too recently)"
    ]
    assert app.CALLS == []
    # Once due, the other saga is taken; the leased one is still named.
    assert main([*argv, "--older-than", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == [
        "  o-2: completed",
        "recovered 1 saga(s): 1 completed, 0 compensated, 0 failed, 0 interrupted, 0 skipped",
    ]
    assert out[3].startswith("  leased  o-1 (running) by worker-7:4242:ab until ")
    assert len(out) == 4
    assert load(db, "o-1").status is SagaStatus.RUNNING


def test_S13_recover_still_reports_its_pass_when_listing_what_it_left_fails(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a pass left alone is a courtesy read after it: a store failing
    then (the server gone) must not hide the report of what the pass did,
    nor turn its exit status into a failure."""
    from fallback_saga.errors import SagaStoreError

    run_sagas(db, app, ("o-1", {}, "act Charge"))

    async def unreachable(self: Any, **kwargs: Any) -> Any:
        raise SagaStoreError("the store went away")

    monkeypatch.setattr(SQLiteSagaStore, "list_sagas", unreachable)
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  o-1: completed",
        "recovered 1 saga(s): 1 completed, 0 compensated, 0 failed, 0 interrupted, 0 skipped",
        "  (could not list the sagas left: the store went away)",
    ]


def test_recover_limit(db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    run_sagas(db, app, ("o-1", {}, "act Charge"), ("o-2", {}, "act Charge"))
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main([*argv, "--limit", "1"]) == 0
    assert "recovered 1 saga(s)" in capsys.readouterr().out
    assert main(argv) == 0
    assert "recovered 1 saga(s)" in capsys.readouterr().out


def test_recover_exits_1_when_a_saga_failed(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {"declined": True}, "compensate Reserve"))
    app.BROKEN.add("Reserve")  # its compensation keeps failing now
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0s"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "  o-1: failed" in out
    assert "  failed  o-1 (needs an operator: retry its unwinding once fixed)" in out


def test_recover_exits_1_when_a_saga_is_skipped(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    async def orphan() -> None:  # a saga of a class the app does not give
        async with SQLiteSagaStore(db) as store:
            await store.create("x-1", "GoneSaga", "fp", {}, [entry(0, "Step")])

    asyncio.run(orphan())
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "  x-1: skipped" in out
    assert "  skipped x-1: no saga named 'GoneSaga' given" in out


def test_S13_recover_exits_1_naming_the_leases_it_could_not_give_back(
    db: str, app: ModuleType, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store refuses every give-back (it is out as the pass ends): the
    saga completed, but its lease is left to run out — no worker takes it
    meanwhile, and it counts toward park_after. A cron's pass said nothing
    of it and exited 0; the report names the lease, and the exit status is 1."""
    from fallback_saga import SagaStoreError

    async def refused(self: SQLiteSagaStore, *args: Any, **kwargs: Any) -> None:
        raise SagaStoreError("the store is out of reach (injected)")

    run_sagas(db, app, ("o-1", {}, "act Charge"))
    monkeypatch.setattr(SQLiteSagaStore, "release", refused)
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "  o-1: completed" in out
    assert "  lease left o-1: not given back" in out
    assert "park_after" in out


def test_S10_recover_says_why_a_changed_definition_is_skipped_and_the_flag_resumes_it(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy renamed Ship (in flight at the crash) Dispatch: recover skips
    the saga saying what changed and the way forward; with
    --allow-changed-definition it resumes it. Reordered steps stay skipped,
    even with the flag: another step's compensation would undo them."""
    run_sagas(db, app, ("o-1", {}, "act Ship"), ("o-2", {}, "act Ship"))
    app.CALLS.clear()
    renamed = ["recover", "--db", db, "--app", f"{app.__name__}:sagas_renamed",
               "--older-than", "0", "--limit", "1"]
    assert main(renamed) == 1
    out = capsys.readouterr().out
    assert "  o-1: skipped" in out
    assert "position 2 (primary) ran 'Ship', now 'Dispatch'" in out
    assert "recover --allow-changed-definition" in out
    assert app.CALLS == []

    assert main([*renamed, "--allow-changed-definition"]) == 0
    assert "  o-1: completed" in capsys.readouterr().out
    assert app.CALLS == ["act Dispatch"]
    assert load(db, "o-1").status is SagaStatus.COMPLETED

    reordered = ["recover", "--db", db, "--app", f"{app.__name__}:sagas_reordered",
                 "--older-than", "0", "--allow-changed-definition"]
    assert main(reordered) == 1
    out = capsys.readouterr().out
    assert "  o-2: skipped" in out
    assert "allow_changed_definition cannot resume it" in out
    assert app.CALLS == ["act Dispatch"]
    assert load(db, "o-2").status is SagaStatus.RUNNING


# --------------------------------------------------------------------------- retry-unwinding


def test_S6_retry_unwinding_finishes_a_FAILED_saga_that_recover_leaves_alone(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.BROKEN.add("Reserve")  # the reservation service is down: Reserve's undo gives up
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    assert load(db, "o-1").status is SagaStatus.FAILED
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    app.CALLS.clear()
    assert main(["recover", *argv, "--older-than", "0"]) == 0
    assert "recovered 0 saga(s)" in capsys.readouterr().out
    assert app.CALLS == []  # never automatic

    app.BROKEN.clear()  # the service is back
    assert main(["retry-unwinding", "o-1", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"retrying the unwinding of saga o-1 in {db} (lease 5m)",
        "  o-1: compensated: every completed step is undone",
    ]
    assert app.CALLS == ["compensate Reserve"]
    record = load(db, "o-1")
    assert record.status is SagaStatus.COMPENSATED
    reopened = [e for e in record.history if e.error and e.error.startswith("reopened by")]
    assert [(e.step, e.action, e.status) for e in reopened] == [
        ("Reserve", "compensate", StepStatus.STARTED)
    ]
    assert reopened[0].error is not None
    assert reopened[0].error.endswith(f":{os.getpid()} (retry-unwinding)")


def test_S6_retry_unwinding_exits_1_when_the_saga_fails_again(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.BROKEN.add("Reserve")
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    capsys.readouterr()
    argv = ["retry-unwinding", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "  o-1: failed again (still needs an operator)",
        "    Reserve: ConnectionError: Reserve service down",
    ]
    assert load(db, "o-1").status is SagaStatus.FAILED
    app.BROKEN.clear()
    assert main(argv) == 0
    assert load(db, "o-1").status is SagaStatus.COMPENSATED


def test_S6_retry_unwinding_refuses_an_unknown_id_and_a_saga_not_FAILED(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {"declined": True}, ""))
    capsys.readouterr()
    app.CALLS.clear()
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["retry-unwinding", "nope", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(f"no saga with id 'nope' in {db}")
    assert main(["retry-unwinding", "o-1", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        "saga 'o-1' is COMPLETED: only a FAILED saga's unwinding can be retried; every step "
        "completed; there is nothing to undo"
    )
    assert main(["retry-unwinding", "o-2", *argv]) == 2
    assert "is COMPENSATED: " in one_line_error(capsys.readouterr().err)
    assert app.CALLS == []
    assert load(db, "o-1").status is SagaStatus.COMPLETED
    assert load(db, "o-2").status is SagaStatus.COMPENSATED


def test_S6_retry_unwinding_refuses_before_saying_it_retries(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused retry prints nothing on stdout: no "retrying the unwinding
    of saga ..." line that an operator (or a cron's log) would read as a
    retry that happened. The refusal is on stderr, exit status 2."""
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {"declined": True}, ""))
    capsys.readouterr()
    app.CALLS.clear()
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    for saga_id, status in [("o-1", "COMPLETED"), ("o-2", "COMPENSATED"), ("nope", None)]:
        assert main(["retry-unwinding", saga_id, *argv]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        expected = f"is {status}: only a FAILED saga's unwinding can be retried" if status \
            else "no saga with id 'nope'"
        assert expected in one_line_error(err)
    assert app.CALLS == []


def test_retry_unwinding_help_says_what_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retry-unwinding", "--help"]) == 0
    out = capsys.readouterr().out
    assert "FAILED -> COMPENSATING -> COMPENSATED" in out
    assert "never runs a\nforward step" in out
    assert "RUNS CODE" in out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_recover_a_first_ctrl_c_only_warns(db: str, app: ModuleType) -> None:
    """Interrupting would cancel the resumed sagas, and a cancelled saga unwinds:
    the first Ctrl-C lets them finish."""

    async def crash() -> None:
        async with SQLiteSagaStore(db) as store:
            app.CRASH_IN.add("act Slow")
            with contextlib.suppress(app.Crash):
                await app.SlowSaga(store=store).run(app.ShopContext("o-1"), saga_id="o-1")
            app.CRASH_IN.clear()

    asyncio.run(crash())
    env = dict(os.environ, CLI_OPS_NAP="1.0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(app.__file__).parent), *sys.path])
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:slow_sagas", "--older-than", "0"]
    child = subprocess.Popen(
        [sys.executable, "-m", "fallback_saga", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().startswith("recovering sagas in ")  # the handler is set
    time.sleep(0.3)  # inside Slow.act
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "Press Ctrl-C again to interrupt anyway" in err
    assert "  o-1: completed" in out
    assert load(db, "o-1").status is SagaStatus.COMPLETED


@pytest.mark.parametrize("attr", ["async_sagas", "ShopSaga", "CLASSES"])
def test_recover_app_forms(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str], attr: str
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Ship"))
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:{attr}", "--older-than", "0"]
    assert main(argv) == 0
    assert "  o-1: completed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("nothing", "has no attribute 'nothing'"),
        ("INSTANCE", "is a saga instance"),
        ("ShopContext", "is the class ShopContext"),
        ("CRASH_IN", "expected a factory sagas(store)"),
        ("broken_factory", "building the sagas failed: RuntimeError: no configuration"),
        ("not_sagas", "returned 'ShopSaga', which is not a Saga instance"),
        ("other_store", "ShopSaga was built with another store (MemorySagaStore)"),
    ],
)
def test_recover_bad_app_is_a_usage_error(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str], attr: str, message: str
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Charge"))
    assert main(["recover", "--db", db, "--app", f"{app.__name__}:{attr}"]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert store_threads() == []
    assert load(db, "o-1").status is SagaStatus.RUNNING


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_for_cli:sagas", "no module named 'no_such_module_for_cli'"),
        ("just_a_module", "expected module:attr"),
        # What a new user types first: where it looked, and how to be found.
        ("no_such_module_for_cli:sagas", "in the current directory, "),
        ("no_such_module_for_cli:sagas", "PYTHONPATH"),
        # A file's name instead of the module's.
        ("shop.py:sagas", "give the module's name, not its file's: shop:sagas"),
        ("app/recovery.py:sagas", "give the module's name, not its file's: app.recovery:sagas"),
    ],
)
def test_recover_bad_app_spec(
    db: str, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    assert main(["recover", "--db", db, "--app", spec]) == 2
    assert message in one_line_error(capsys.readouterr().err)


_HUGE_ERRORS_APP = """
import sys
if "--raise-at-import" in sys.argv or RAISE_AT_IMPORT:
    raise RuntimeError("bad configuration: " + "x" * 1_000_000)

def sagas(store):
    raise RuntimeError("no configuration: " + "y" * 1_000_000)
"""


@pytest.mark.parametrize("at", ["import", "factory"])
def test_S12_an_apps_error_of_a_megabyte_is_quoted_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """``--app``'s own error (its import, its factory) is quoted with its
    text cut to ``MAX_ERROR_TEXT`` (``errors.cut_text``), as the library's
    other error texts are, not a megabyte in the UsageError."""
    from fallback_saga.cli.errors import UsageError
    from fallback_saga.cli.recover import build_app_sagas, load_app
    from fallback_saga.errors import MAX_ERROR_TEXT

    name = f"huge_errors_app_{at}"
    (tmp_path / f"{name}.py").write_text(
        f"RAISE_AT_IMPORT = {at == 'import'}\n" + _HUGE_ERRORS_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    async def loaded() -> None:
        factory = load_app(f"{name}:sagas")
        await build_app_sagas(f"{name}:sagas", factory, None)  # type: ignore[arg-type]

    with pytest.raises(UsageError) as raised:
        asyncio.run(loaded())
    text = str(raised.value)
    assert len(text) < MAX_ERROR_TEXT + 200
    assert "RuntimeError: " + ("bad configuration: xxx" if at == "import"
                               else "no configuration: yyy") in text
    assert text.endswith("more characters not shown]")


def test_recover_help_documents_the_app_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recover", "--help"]) == 0
    out = capsys.readouterr().out
    assert "def sagas(store):" in out
    assert "cls(store=store)" in out


def test_recover_lease_must_be_positive(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--lease", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "argument --lease: invalid duration '0': must be longer than 0 seconds" in err


@pytest.mark.parametrize("command", [["recover"], ["resume", "o-1"], ["retry-unwinding", "o-1"]])
@pytest.mark.parametrize("lease", ["0", "0s", "0.0m"])
def test_S12_a_lease_of_no_time_is_refused_before_app_is_imported(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: list[str], lease: str,
) -> None:
    """``--lease`` is checked as the command line is read (``positive_duration``):
    a lease of no time is a usage error before ``--app`` is imported (which
    runs the app's code) or the store is opened."""
    marker = tmp_path / "imported"
    name = f"lease_app_{abs(hash((tuple(command), lease)))}"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef sagas(store):\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [*command, "--db", db, "--app", f"{name}:sagas", "--lease", lease]
    assert main(argv) == 2
    assert "argument --lease: invalid duration" in capsys.readouterr().err
    assert not marker.exists()  # the app was not imported
    assert not Path(db).exists()  # nor the store opened
    sys.modules.pop(name, None)


@pytest.mark.parametrize("timeout", ["0", "0s", "-5", "soon"])
def test_S12_a_resume_timeout_that_is_no_duration_is_refused_before_app_is_imported(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], timeout: str,
) -> None:
    """``recover --resume-timeout`` is checked as ``--lease`` is, as the
    command line is read: before ``--app`` is imported or the store opened."""
    marker = tmp_path / "imported"
    name = f"timeout_app_{abs(hash(timeout))}"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef sagas(store):\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["recover", "--db", db, "--app", f"{name}:sagas", f"--resume-timeout={timeout}"]
    assert main(argv) == 2
    assert "argument --resume-timeout: invalid duration" in capsys.readouterr().err
    assert not marker.exists()
    assert not Path(db).exists()
    sys.modules.pop(name, None)


@pytest.mark.parametrize(("given", "seconds"), [([], None), (["--resume-timeout", "2m"], 120.0)])
def test_recover_hands_its_resume_timeout_to_the_pass(
    db: str, app: ModuleType, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], given: list[str], seconds: float | None,
) -> None:
    """A cron's ``recover`` pass hung for ever on a step that never answers:
    the command had no bound to give. ``--resume-timeout`` is recover()'s
    ``resume_timeout`` (none by default), and ``--help`` says so."""
    import fallback_saga.cli.recover as command

    passed: list[Any] = []
    real = command.recover

    async def recording(*args: Any, **kwargs: Any) -> Any:
        passed.append(kwargs.get("resume_timeout", "not given"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(command, "recover", recording)
    run_sagas(db, app, ("o-1", {}, ""))
    assert main(["recover", "--db", db, "--app", f"{app.__name__}:sagas", *given]) == 0
    assert passed == [seconds]
    capsys.readouterr()
    assert main(["recover", "--help"]) == 0
    assert "--resume-timeout TIME" in capsys.readouterr().out


# --------------------------------------------------------------------------- purge


def test_purge_deletes_finished_sagas_only(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(
        db, app, ("o-1", {}, ""), ("o-2", {"declined": True}, ""), ("o-3", {}, "act Charge")
    )
    assert main(["purge", "--db", db, "--older-than", "7d"]) == 0
    assert capsys.readouterr().out.startswith("purged 0 finished sagas ")
    assert main(["purge", "--db", db, "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("purged 2 finished sagas ")
    assert "more than 0s ago" in out
    assert main(["list", "--db", db, "--json"]) == 0
    assert [row["saga_id"] for row in json.loads(capsys.readouterr().out)] == ["o-3"]


def test_purge_tells_how_much_of_the_file_is_free_space_and_how_to_give_it_back(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file does not shrink when a purge deletes sagas: SQLite keeps the
    freed pages for new ones. An operator who purged to get disk space back
    is told that, and how much, rather than left to think it did nothing."""

    async def fill() -> None:
        async with SQLiteSagaStore(db) as store:
            for n in range(200):
                await store.create(
                    f"big-{n}", "ShopSaga", "fp", {"blob": "x" * 4000}, [entry(0, "Reserve")],
                    status=SagaStatus.COMPLETED,
                )

    asyncio.run(fill())
    size = os.path.getsize(db)
    assert main(["purge", "--db", db, "--older-than", "0"]) == 0
    purged, note = capsys.readouterr().out.splitlines()
    assert purged.startswith("purged 200 finished sagas ")
    assert note.startswith(f"the file keeps its size ({size / 1e6:.1f} MB): ")
    assert note.endswith(
        " of it is free space that new sagas reuse; VACUUM it, with the service stopped, "
        "to give that back to the disk"
    )
    assert os.path.getsize(db) == size


@pytest.mark.parametrize("bad", ["7x", "-1d", "d", "", "1e3", "7 days", "inf"])
def test_purge_bad_duration_is_a_usage_error(
    db: str, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    assert main(["purge", "--db", db, f"--older-than={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"invalid duration {bad!r}" in err
    assert "Traceback" not in err


def test_purge_needs_older_than(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["purge", "--db", db]) == 2
    assert "--older-than" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0), ("30s", 30.0), ("15m", 900.0), ("12h", 43200.0), ("7d", 604800.0),
        ("1.5h", 5400.0), (" 2D ", 172800.0), ("0", 0.0), (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


# --------------------------------------------------------------------------- demo --db


def test_demo_db_shows_a_crash_recovered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "demo.db")
    started = time.monotonic()
    assert main(["demo", "--db", path]) == 0
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert "== The journal (SQLiteSagaStore) " in out
    assert out.count("*** the process dies here (os._exit)") == 2
    assert "  A-1007  DemoOrderSaga  compensating" in out
    assert "  A-1006  DemoOrderSaga  running" in out
    assert "  => A-1006: completed" in out
    assert "  => A-1007: compensated" in out
    assert (
        "recovered 2 saga(s): 1 completed, 1 compensated, 0 failed, 0 interrupted, 0 skipped"
    ) in out
    # The resumed BookCourier uses the key the crashed run had.
    assert out.count("courier: pickup booked as SHIP-A-1006 (key A-1006:BookCourier)") == 1
    assert "A-1006 (completed), as `show A-1006" in out
    assert elapsed < 10  # about 1 s; generous for a loaded machine
    assert load(path, "A-1006").status is SagaStatus.COMPLETED
    assert load(path, "A-1007").status is SagaStatus.COMPENSATED
    assert main(["list", "--db", path, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["saga_id"] for row in rows] == [f"A-100{n}" for n in range(7, 0, -1)]
    assert store_threads() == []


def test_demo_db_refuses_an_existing_file(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, ""))
    assert main(["demo", "--db", db]) == 2
    assert "already exists" in one_line_error(capsys.readouterr().err)
    assert main(["list", "--db", db, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_demo_without_db_still_uses_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "== The journal (MemorySagaStore, the default store) " in out
    assert "os._exit" not in out


def test_the_crash_demo_command_is_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "_crash-demo" not in out
    for command in ("demo", "graph", "list", "show", "recover", "purge"):
        assert f"    {command} " in out


def test_the_crash_demo_command_is_not_offered_by_an_invalid_choice_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """argparse's "invalid choice" line listed every command, the hidden one
    too; it lists the others, and the hidden one still runs (its child
    process is started so: ``_crash-demo --db ...``)."""
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    for command in ("demo", "purge", "serve"):
        assert f"'{command}'" in err
    assert "_crash" not in err
    assert main(["_crash-demo", "--help"]) == 0
    assert "--crash-in" in capsys.readouterr().out



def test_show_limit_prints_the_newest_entries_numbered_as_in_the_journal(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long saga's ``show`` need not print every entry: ``--limit N`` keeps the
    newest N (like ``list``), says how many are left out, and refuses a bad N
    and the forms that print the whole record."""

    async def fill() -> None:
        async with SQLiteSagaStore(db) as store:
            rows = [entry(i, f"Member{i}", StepStatus.COMPLETED) for i in range(1_000)]
            await store.create("long", "Big", "fp", {}, rows)

    asyncio.run(fill())
    assert main(["show", "long", "--db", db, "--limit", "3"]) == 0
    out = capsys.readouterr().out
    table = out.partition("\n\n")[2].splitlines()
    seqs = [line.split()[0] for line in table[2:5]]  # the header, its rule, then rows
    assert seqs == ["997", "998", "999"]
    assert "Member996" not in out
    assert table[-1] == (
        "(the newest 3 of 1000 entries shown; earlier ones: raise --limit, or --json for all)"
    )
    assert main(["show", "long", "--db", db, "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    assert "Member0 " in out
    assert "entries shown" not in out
    for bad in ("0", "x", "-2"):
        assert main(["show", "long", "--db", db, "--limit", bad]) == 2
        assert "--limit" in capsys.readouterr().err
    for form in ("--json", "--mermaid"):
        assert main(["show", "long", "--db", db, "--limit", "3", form]) == 2
        assert f"{form} gives the whole record" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume


def park(db: str, *saga_ids: str, times: int = 5) -> None:
    """Park ``saga_ids`` as a crash loop would: claimed ``times`` times by
    workers that all died holding the lease (a lease that ran out at once:
    a dead worker's, once its length has passed); every other saga claimed
    is given back."""

    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            for _ in range(times):
                for lease in await store.claim(owner="dead-worker", lease_seconds=-1,
                                               older_than=0, limit=100):
                    if lease.saga_id not in saga_ids:
                        await store.release(lease)

    asyncio.run(go())


def claims(db: str, saga_id: str) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT unreleased_claims FROM sagas WHERE saga_id = ?",
                           (saga_id,)).fetchone()
    finally:
        conn.close()
    return int(row[0])


def test_S10_resume_resumes_a_parked_saga_by_id_and_clears_its_count(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parked saga (its resumes kept ending the process) waits for an
    operator: recover takes it no more; ``resume ID`` resumes it once, leased
    (RUNNING: from the step that did not complete; COMPENSATING: its
    unwinding finished), and its lease given back clears the count."""
    run_sagas(
        db, app,
        ("o-1", {}, "act Charge"),  # RUNNING
        ("o-2", {"declined": True}, "compensate Reserve"),  # COMPENSATING
    )
    park(db, "o-1", "o-2")
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert "running (parked)" in listed
    assert "compensating (parked)" in listed
    app.CALLS.clear()
    assert main(["recover", *argv, "--older-than", "0"]) == 1  # an operator is needed
    assert "recovered 0 saga(s)" in capsys.readouterr().out
    assert app.CALLS == []

    assert main(["resume", "o-1", *argv]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"resuming saga o-1 (running) in {db} (lease 5m) with ShopSaga",
        "  o-1: completed",
    ]
    assert app.CALLS == ["act Charge", "act Ship"]  # Charge again (its key), never Reserve
    assert load(db, "o-1").status is SagaStatus.COMPLETED
    assert claims(db, "o-1") == 0

    app.CALLS.clear()
    assert main(["resume", "o-2", *argv]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"resuming saga o-2 (compensating) in {db} (lease 5m) with ShopSaga",
        "  o-2: compensated: Charge failed: ValueError: card declined; every "
        "completed step is undone",
    ]
    assert app.CALLS == ["compensate Reserve"]  # no forward step
    assert load(db, "o-2").status is SagaStatus.COMPENSATED
    assert claims(db, "o-2") == 0
    assert main(["list", "--db", db]) == 0
    assert "parked" not in capsys.readouterr().out


def test_S10_a_resume_that_ends_its_process_leaves_the_saga_parked_as_its_help_says(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``resume ID`` of a parked saga whose step still ends the process
    (``SystemExit``, or here another BaseException out of the step) keeps
    the lease, as a worker does (``Saga.resume``): the count stays, and the
    saga stays parked. ``resume --help`` says so — it said that such a
    resume gave the lease back and cleared the count, which would send an
    operator to watch workers crash-loop on it again."""
    run_sagas(db, app, ("o-1", {}, "act Charge"))
    park(db, "o-1")
    parked = claims(db, "o-1")
    assert parked > 0
    app.CRASH_IN.add("act Charge")
    with pytest.raises(app.Crash):
        main(["resume", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"])
    app.CRASH_IN.clear()
    assert claims(db, "o-1") == parked
    assert load(db, "o-1").status is SagaStatus.RUNNING
    capsys.readouterr()
    assert main(["resume", "--help"]) == 0
    helped = " ".join(capsys.readouterr().out.split())
    assert "gives the lease back on its way out" not in helped
    assert ("A resume that ends this process (SystemExit out of a step, a segfault, an OOM "
            "kill) keeps the lease, as a worker does: the saga stays parked.") in helped


def test_S13_an_operators_resume_is_named_in_the_journal_as_a_reopening_is(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``resume ID`` leaves the trace ``retry-unwinding`` leaves: the first
    row the resumed run writes (an act's STARTED, for a RUNNING saga; a
    compensation's, for a COMPENSATING one) names the operator — user,
    machine, process, command — and ``show ID`` lists it."""
    import getpass
    import socket

    run_sagas(
        db, app,
        ("o-1", {}, "act Charge"),  # RUNNING
        ("o-2", {"declined": True}, "compensate Reserve"),  # COMPENSATING
    )
    written = {saga_id: len(load(db, saga_id).history) for saga_id in ("o-1", "o-2")}
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["resume", "o-1", *argv]) == 0
    assert main(["resume", "o-2", *argv]) == 0
    operator = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()} (resume)"
    note = f"resumed by an operator: {operator}"
    for saga_id, (action, step) in {"o-1": ("act", "Charge"),
                                    "o-2": ("compensate", "Reserve")}.items():
        new_rows = load(db, saga_id).history[written[saga_id]:]
        first = new_rows[0]
        assert (first.action, first.step, first.status, first.error) == (
            action, step, StepStatus.STARTED, note)
        assert [row.error for row in new_rows[1:] if row.error == note] == []  # said once
    capsys.readouterr()
    assert main(["show", "o-1", "--db", db]) == 0
    assert "resumed by an operator: " in capsys.readouterr().out


def test_S10_a_resume_cut_off_by_the_store_exits_1_and_workers_claim_the_saga_again(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's resume of a parked saga is interrupted (the journal
    write refused: a full disk): exit status 1, nothing run that the journal
    does not know, and — its lease given back in order — its count is 0:
    workers and recover passes take it again."""
    from fallback_saga.errors import SagaStoreError

    run_sagas(db, app, ("o-1", {}, "act Charge"))
    park(db, "o-1")
    real_append = SQLiteSagaStore.submit_append

    def refused(self: SQLiteSagaStore, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        # The writer's answer to every journal write of a run: the disk is full.
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answer.set_exception(SagaStoreError("database or disk is full"))
        return answer

    monkeypatch.setattr(SQLiteSagaStore, "submit_append", refused)
    app.CALLS.clear()
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["resume", "o-1", *argv]) == 1
    assert "database or disk is full" in one_line_error(capsys.readouterr().err)
    assert app.CALLS == []  # Charge's STARTED row was refused: Charge never called
    assert load(db, "o-1").status is SagaStatus.RUNNING
    assert claims(db, "o-1") == 0
    monkeypatch.setattr(SQLiteSagaStore, "submit_append", real_append)
    assert main(["recover", *argv, "--older-than", "0"]) == 0
    assert "  o-1: completed" in capsys.readouterr().out
    assert app.CALLS == ["act Charge", "act Ship"]


def test_S10_resume_exits_1_when_leased_or_changed_or_the_saga_ends_FAILED(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Ship"), ("o-2", {"declined": True}, "act Charge"))
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]

    async def lease_held() -> Any:
        async with SQLiteSagaStore(db) as store:
            return await store.claim_saga("o-1", owner="worker-7", lease_seconds=600)

    held = asyncio.run(lease_held())
    app.CALLS.clear()
    assert main(["resume", "o-1", *argv]) == 1
    assert "worker-7" in one_line_error(capsys.readouterr().err)

    async def release() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.release(held)

    asyncio.run(release())
    renamed = ["resume", "o-1", "--db", db, "--app", f"{app.__name__}:sagas_renamed"]
    assert main(renamed) == 1
    assert "position 2 (primary) ran 'Ship', now 'Dispatch'" in one_line_error(
        capsys.readouterr().err)
    assert app.CALLS == []
    assert main([*renamed, "--allow-changed-definition"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  o-1: completed"
    assert app.CALLS == ["act Dispatch"]

    app.BROKEN.add("Reserve")  # o-2's card is declined, and Reserve's undo gives up
    app.CALLS.clear()
    assert main(["resume", "o-2", *argv]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  o-2: failed: Charge failed: ValueError: card declined; a compensation gave up "
        "(an operator is needed: retry-unwinding o-2 once the participant is fixed)",
        "    Reserve: ConnectionError: Reserve service down",
    ]
    assert load(db, "o-2").status is SagaStatus.FAILED
    assert app.CALLS[0] == "act Charge"


def test_S12_resume_and_retry_unwinding_print_error_texts_redacted(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``resume ID`` and ``retry-unwinding ID`` print why the saga stopped
    and what each compensation that gave up said: the journal's error
    texts, which ``show`` redacts (a secret key's value, a URL's password).
    They printed them whole — the card number a participant's error quoted
    went to the terminal, and from there to a ticket or a cron's log. They
    print them as ``show`` does now (``show ID --unredacted`` has them raw)."""
    card, key = "4111111111111111", "sk_live_5ecret"
    app.QUOTED.append(f" for {{'card_number': '{card}'}} at https://pay.example/v1?api_key={key}")
    app.BROKEN.add("Reserve")  # o-1's card is declined, and Reserve's undo gives up
    run_sagas(db, app, ("o-1", {"declined": True}, "act Charge"))
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["resume", "o-1", *argv]) == 1
    out = capsys.readouterr().out
    assert "Charge failed: ValueError: card declined for {'card_number': ***}" in out
    assert "Reserve: ConnectionError: Reserve service down for {'card_number': ***}" in out
    assert "api_key=***" in out
    assert (card in out, key in out) == (False, False)
    assert main(["retry-unwinding", "o-1", *argv]) == 1
    out = capsys.readouterr().out
    assert "Reserve: ConnectionError: Reserve service down for {'card_number': ***}" in out
    assert (card in out, key in out) == (False, False)
    assert main(["show", "o-1", "--db", db, "--unredacted"]) == 0
    assert card in capsys.readouterr().out  # the journal keeps them as they were


def test_resume_refuses_an_unknown_id_a_finished_saga_and_a_child_its_parent_drives(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app.BROKEN.add("Reserve")
    run_sagas(db, app, ("o-1", {}, ""), ("o 2", {"declined": True}, ""),
              ("o-3", {}, "act Charge"), ("o-3/Pay", {}, "act Charge"))
    app.BROKEN.clear()
    app.CALLS.clear()
    argv = ["--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(["resume", "nope", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(f"no saga with id 'nope' in {db}")
    assert main(["resume", "o-1", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        "saga 'o-1' is COMPLETED: it is finished, there is nothing to resume")
    assert main(["resume", "o 2", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        "saga 'o 2' is FAILED: its unwinding gave up, and resuming would only return that; "
        "once the participant is fixed, finish it with retry-unwinding 'o 2'")
    assert main(["resume", "o-3/Pay", *argv]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        "saga 'o-3/Pay' is a child saga of 'o-3' (RUNNING), which drives it: resume the "
        "parent (resume o-3)")
    assert main(["resume", "o-3", "--db", db, "--app", f"{app.__name__}:slow_sagas"]) == 2
    assert "gives no saga of that name" in one_line_error(capsys.readouterr().err)
    assert app.CALLS == []
    assert capsys.readouterr().out == ""
    assert load(db, "o-3").status is SagaStatus.RUNNING


def test_resume_help_says_what_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", "--help"]) == 0
    out = capsys.readouterr().out
    assert "parked" in out
    assert "retry-unwinding" in out
    assert "RUNS CODE" in out
    assert main(["--help"]) == 0
    assert "resume" in capsys.readouterr().out


# ------------------------------------------------------------ operators' actions under faults


def test_S13_a_retry_unwinding_cut_off_by_the_store_says_what_it_left_and_a_second_run_finishes(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store refuses the retry's last write (Reserve's COMPLETED with the
    COMPENSATED status: a full disk): exit status 1, one line that says the
    saga is left COMPENSATING for recovery (what the journal holds), no
    "compensated" line; the same command, run again, finishes it."""
    from fallback_saga.errors import SagaStoreError

    app.BROKEN.add("Reserve")
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    app.BROKEN.clear()
    capsys.readouterr()
    real_append = SQLiteSagaStore.submit_append
    writes = []

    def refused(self: SQLiteSagaStore, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        writes.append(args)
        if len(writes) == 1:  # Reserve's STARTED, with COMPENSATING, lands
            return real_append(self, *args, **kwargs)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answer.set_exception(SagaStoreError("database or disk is full"))
        return answer

    monkeypatch.setattr(SQLiteSagaStore, "submit_append", refused)
    argv = ["retry-unwinding", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "compensated" not in out, out
    error = one_line_error(err)
    assert "database or disk is full" in error
    assert "left compensating" in error, error
    assert load(db, "o-1").status is SagaStatus.COMPENSATING
    monkeypatch.setattr(SQLiteSagaStore, "submit_append", real_append)
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  o-1: compensated: every completed step is undone")
    assert load(db, "o-1").status is SagaStatus.COMPENSATED


def test_S13_a_retry_unwinding_that_ended_FAILED_says_so_when_its_errors_cannot_be_read(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry ends FAILED (the participant is still down) and the store
    then fails as the command reads which compensations gave up: the
    operator is still told the saga failed again (the journal holds FAILED),
    exit status 1 — not a bare store error that hides how the retry ended."""
    import fallback_saga.cli.retry_unwinding as command
    from fallback_saga.errors import SagaStoreError

    app.BROKEN.add("Reserve")
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    capsys.readouterr()
    real_retry = command.retry_unwinding
    real_load = SQLiteSagaStore.load
    down = []

    async def retried(*args: Any, **kwargs: Any) -> SagaStatus:
        status = await real_retry(*args, **kwargs)
        down.append(True)  # the store goes down as soon as the retry has ended
        return status

    async def load_or_fail(self: SQLiteSagaStore, saga_id: str) -> SagaRecord:
        if down:
            raise SagaStoreError("disk I/O error")
        return await real_load(self, saga_id)

    monkeypatch.setattr(command, "retry_unwinding", retried)
    monkeypatch.setattr(SQLiteSagaStore, "load", load_or_fail)
    argv = ["retry-unwinding", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == [
        "  o-1: failed again (still needs an operator)",
        "    (which compensations gave up could not be read: SagaStoreError: disk I/O error; "
        "show o-1 lists them)",
    ], (out, err)
    assert err == ""
    monkeypatch.undo()
    assert load(db, "o-1").status is SagaStatus.FAILED


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_S13_a_retry_unwinding_ctrl_c_tells_the_status_the_journal_holds(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C while Reserve's compensation runs: the compensation finishes
    first (S8) and the command exits 130 "interrupted" — and says what the
    journal now holds for the saga, so that the operator knows whether
    anything is left to do."""
    app.BROKEN.add("Reserve")
    run_sagas(db, app, ("o-1", {"declined": True}, ""))
    app.BROKEN.clear()
    capsys.readouterr()
    real = app.Reserve.compensate

    async def interrupted(self: Any, context: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # the operator's Ctrl-C, in the middle of it
        await asyncio.sleep(0)
        await real(self, context)

    app.Reserve.compensate = interrupted
    before = len(app.CALLS)
    argv = ["retry-unwinding", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == [
        "  o-1: interrupted; the journal holds it COMPENSATED: every completed step is undone"
    ], (out, err)
    assert one_line_error(err).endswith("interrupted")
    assert load(db, "o-1").status is SagaStatus.COMPENSATED
    assert app.CALLS[before:] == ["compensate Reserve"]  # once, to its end


def _charge_ctrl_c_twice(db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """Saga o-1 left at its Charge act, whose next call gets Ctrl-C twice
    (a warning, then the interruption) before it runs."""
    run_sagas(db, app, ("o-1", {}, "act Charge"))
    capsys.readouterr()
    real = app.Charge.act

    async def interrupted(self: Any, context: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # warned
        signal.raise_signal(signal.SIGINT)  # interrupted
        await asyncio.sleep(0)  # the loop handles them: the cancellation arrives
        await asyncio.sleep(0)
        await real(self, context)

    app.Charge.act = interrupted


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_S13_a_resume_ctrl_c_twice_tells_the_status_the_journal_holds(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
) -> None:
    """The second Ctrl-C interrupts the resume, and the interrupted saga
    unwinds (S8): the command exits 130 "interrupted" — and says that the
    journal now holds it COMPENSATED, not only that it was interrupted."""
    _charge_ctrl_c_twice(db, app, capsys)
    before = len(app.CALLS)
    argv = ["resume", "o-1", "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert load(db, "o-1").status is SagaStatus.COMPENSATED
    assert app.CALLS[before:][-1] == "compensate Reserve"  # unwound to its end
    assert out.splitlines()[1:] == [
        "  o-1: interrupted; the journal holds it COMPENSATED: every completed step is undone"
    ], (out, err)
    assert err.splitlines()[-1].endswith("interrupted")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_S13_a_recover_ctrl_c_twice_tells_each_saga_under_way_as_the_journal_holds_it(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str],
) -> None:
    """The second Ctrl-C interrupts the pass, and the saga it was resuming
    unwinds (S8): its line says it ended compensated, as the journal holds
    it — not nothing at all, before "interrupted" (exit status 130)."""
    _charge_ctrl_c_twice(db, app, capsys)
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert load(db, "o-1").status is SagaStatus.COMPENSATED
    assert out.splitlines()[1:] == ["  o-1: compensated"], (out, err)
    assert err.splitlines()[-1].endswith("interrupted")
