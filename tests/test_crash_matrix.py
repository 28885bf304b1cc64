"""S10 crash matrix: kill a saga's process at every journal boundary, resume it
in a fresh process, and check that nothing was lost, undone twice or redone.

The saga app is ``tests/crash_app.py`` (see its docstring): ``A``,
``Fallback(B, B2)``, ``C``, in four variants (completes; completes through the
fallback; fails late and unwinds; fails late and one compensation is designed
to fail). A dry run of each variant, made when this module is collected, lists
the journal boundaries the run crosses — before/after every store write,
inside each act after its side effect, inside each failing act, inside each
compensation — and every one of them becomes a test case: a child process runs
the saga and dies with ``os._exit(137)`` right there; a second, fresh process
runs ``recover(store, [saga], older_than=0)`` and then ``saga.resume(id)``.

The whole matrix runs twice: on SQLite (a file per case) and on PostgreSQL
(a schema per case, in the session's throwaway cluster from ``conftest_pg``;
those cases are skipped with the reason when no server can be started, and
fail under CI). The PostgreSQL cases are enumerated from the SQLite dry runs
(collection starts no server); a test checks that a PostgreSQL dry run crosses
exactly the same boundaries, and each case checks that its child died at the
boundary it names.

The cases are independent (each has its own database or schema, and its own
ledger), so the module plays all selected cases once, a few child processes
at a time, and each test checks the invariants of its own case. The children
are forked by ``crash_app.py serve`` fork servers (one per worker thread)
that imported everything once: each child is a new process that never saw a
store or a saga before, without paying for an interpreter start (both
matrices take about as long as the SQLite one alone did).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pytest
from crash_app import (
    APP,
    CRASH_EXIT,
    EXPECTED_ACTS,
    EXPECTED_EFFECTS,
    EXPECTED_LANES,
    EXPECTED_STATUS,
    EXPECTED_TRAIL,
    VARIANTS,
    Ledger,
)
from helpers_fork import ForkServer

# The steps of both crash sagas in declared order (results come in this order).
_STEP_ORDER = ["A", "B", "B2", "P", "Q", "Q2", "C"]

pytest_plugins = ["conftest_pg"]

CHILD_TIMEOUT = 60.0
BACKENDS: tuple[str, ...] = ("sqlite", "postgres")
# Child processes at once. The PostgreSQL server (fsync on) shares the two
# cores of a CI machine with them.
PARALLEL = 4


class Case(NamedTuple):
    backend: str  # "sqlite" or "postgres"
    variant: str
    number: int  # the boundary to crash at, counted from 0 in the dry run's order
    label: str

    @property
    def saga_id(self) -> str:
        return f"{self.variant}-{self.number:02d}"


def child(
    *args: Any, input: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP), *map(str, args)],
        capture_output=True,
        text=True,
        input=input,
        timeout=CHILD_TIMEOUT,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


class ForkServers:
    """A fork server per thread of a pool (created on first use)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.local = threading.local()
        self.all: list[ForkServer] = []
        self.lock = threading.Lock()

    def child(
        self, *args: Any, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        server = getattr(self.local, "server", None)
        if server is None:
            server = self.local.server = ForkServer(APP, self.scratch, timeout=CHILD_TIMEOUT)
            with self.lock:
                self.all.append(server)
        return server.child(*args, env=env)

    def close(self) -> None:
        for server in self.all:
            server.close()


# --------------------------------------------------------------------------- dry runs

_DRY_RUNS: dict[str, tuple[str, list[str]]] = {}
# variant -> the uninterrupted run's ``result.results`` (crash_app.results_seen)
_DRY_RESULTS: dict[str, list[list[str]]] = {}


def dry_runs() -> dict[str, tuple[str, list[str]]]:
    """``variant -> (outcome, boundaries)`` of an uninterrupted run (once per session)."""
    if not _DRY_RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            procs = {
                variant: subprocess.Popen(
                    [
                        sys.executable, str(APP), "run",
                        "--db", f"{tmp}/{variant}.db", "--ledger", f"{tmp}/{variant}.jsonl",
                        "--variant", variant, "--saga-id", f"dry-{variant}",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for variant in VARIANTS
            }
            for variant, proc in procs.items():
                out, err = proc.communicate(timeout=CHILD_TIMEOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"dry run of {variant!r} failed:\n{err}")
                data = json.loads(out)
                _DRY_RUNS[variant] = (data["outcome"], data["boundaries"])
                _DRY_RESULTS[variant] = data["results"]
    return _DRY_RUNS


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "crash_case" not in metafunc.fixturenames:
        return
    cases = [
        Case(backend, variant, number, label)
        for backend in BACKENDS
        for variant, (_, boundaries) in dry_runs().items()
        for number, label in enumerate(boundaries)
    ]
    metafunc.parametrize(
        "crash_case",
        cases,
        ids=[f"{c.backend}-{c.saga_id}-{_slug(c.label)}"[:100] for c in cases],
    )


# --------------------------------------------------------------------------- the journal


@dataclass(frozen=True)
class Journal:
    """A saga's rows as the file has them (read with plain sqlite3, not the library)."""

    status: str
    context: dict[str, Any]
    lease_owner: str | None
    fence: int
    # (position, step, branch, action, status, attempt), in journal order
    rows: list[tuple[int, str, str, str, str, int]]

    def steps(self, action: str, status: str) -> list[str]:
        return [r[1] for r in self.rows if r[3] == action and r[4] == status]


def read_journal(db: Path, saga_id: str) -> Journal | None:
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    try:
        head = conn.execute(
            "SELECT status, context, lease_owner, fence FROM sagas WHERE saga_id = ?",
            (saga_id,),
        ).fetchone()
        if head is None:
            return None
        rows = conn.execute(
            "SELECT position, step, branch, action, status, attempt FROM saga_steps"
            " WHERE saga_id = ? ORDER BY seq",
            (saga_id,),
        ).fetchall()
    finally:
        conn.close()
    status, context, lease_owner, fence = head
    return Journal(status, json.loads(context), lease_owner, fence, [tuple(r) for r in rows])


def read_journal_as_left(db: Path, saga_id: str, scratch: Path) -> Journal | None:
    """The journal as the crash left it, read from a copy of the database (with
    its -wal and -shm files), so that the resuming process is the first to
    open — and recover — the crashed file itself."""
    if not db.exists():
        return None
    scratch.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copyfile(source, scratch / (db.name + suffix))
    return read_journal(scratch / db.name, saga_id)


def read_pg_journal(conninfo: str, schema: str, saga_id: str) -> Journal | None:
    """A saga's rows as the PostgreSQL server has them (plain SQL, not the library)."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        (exists,) = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".fallback_saga_steps',)
        ).fetchone() or (False,)
        if not exists:
            return None  # the child died before its store was first opened
        head = conn.execute(
            f'SELECT status, context, lease_owner, fence FROM "{schema}".fallback_saga_sagas'
            " WHERE saga_id = %s",
            (saga_id,),
        ).fetchone()
        if head is None:
            return None
        rows = conn.execute(
            f"SELECT position, step, branch, action, status, attempt"
            f' FROM "{schema}".fallback_saga_steps WHERE saga_id = %s ORDER BY seq',
            (saga_id,),
        ).fetchall()
    status, context, lease_owner, fence = head
    return Journal(status, context, lease_owner, fence, [tuple(r) for r in rows])


class Target(Protocol):
    """Where one case's saga is journaled."""

    def store_args(self) -> list[str]: ...

    def env(self) -> dict[str, str] | None: ...

    def journal_as_left(self, saga_id: str) -> Journal | None: ...

    def journal(self, saga_id: str) -> Journal | None: ...


@dataclass
class SQLiteTarget:
    where: Path

    @property
    def db(self) -> Path:
        return self.where / "sagas.db"

    def store_args(self) -> list[str]:
        return ["--db", str(self.db)]

    def env(self) -> dict[str, str] | None:
        return None

    def journal_as_left(self, saga_id: str) -> Journal | None:
        return read_journal_as_left(self.db, saga_id, self.where / "at-crash")

    def journal(self, saga_id: str) -> Journal | None:
        return read_journal(self.db, saga_id)


@dataclass
class PostgresTarget:
    conninfo: str
    schema: str

    def store_args(self) -> list[str]:
        return ["--dsn", "env", "--schema", self.schema]  # the password stays off argv

    def env(self) -> dict[str, str] | None:
        return {"CRASH_APP_DSN": self.conninfo}

    def journal_as_left(self, saga_id: str) -> Journal | None:
        # The server outlives the child: what it committed is what is left.
        return read_pg_journal(self.conninfo, self.schema, saga_id)

    def journal(self, saga_id: str) -> Journal | None:
        return read_pg_journal(self.conninfo, self.schema, saga_id)


# --------------------------------------------------------------------------- playing a case


@dataclass
class Played:
    crashed: subprocess.CompletedProcess[str]
    before: Journal | None  # the journal at the crash
    resumed: subprocess.CompletedProcess[str]
    after: Journal | None  # the journal once the fresh process is done
    ledger: list[dict[str, Any]]

    @property
    def report(self) -> dict[str, Any]:
        assert self.resumed.returncode == 0, self.resumed.stderr
        report: dict[str, Any] = json.loads(self.resumed.stdout)
        return report


def play(
    servers: ForkServers, target: Target, ledger: Path, case: Case
) -> Played | BaseException:
    try:
        store, env = target.store_args(), target.env()
        crashed = servers.child(
            "run", *store, "--ledger", ledger, "--variant", case.variant,
            "--saga-id", case.saga_id, "--crash-label", case.label, env=env,
        )
        before = target.journal_as_left(case.saga_id)
        resumed = servers.child(
            "recover", *store, "--ledger", ledger, "--ids", case.saga_id, env=env
        )
        after = target.journal(case.saga_id)
        return Played(crashed, before, resumed, after, Ledger.read(ledger))
    except BaseException as error:  # reported by the case's own test
        return error


def pg_dry_run(conninfo: str, schema: str, tmp: Path, variant: str) -> tuple[str, list[str]]:
    done = child(  # a plain child process: nothing forked
        "run", "--dsn", "env", "--schema", schema, "--ledger", tmp / f"{schema}.jsonl",
        "--variant", variant, "--saga-id", f"dry-{variant}", env={"CRASH_APP_DSN": conninfo},
    )
    if done.returncode != 0:
        raise RuntimeError(f"PostgreSQL dry run of {variant!r} failed:\n{done.stderr}")
    data = json.loads(done.stdout)
    return data["outcome"], data["boundaries"]


class PgMatrix(NamedTuple):
    conninfo: str
    prefix: str  # of every schema this module creates
    dry_runs: dict[str, tuple[str, list[str]]]


@pytest.fixture(scope="module")
def pg_matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """The PostgreSQL side of the matrix: the session's cluster and a dry run
    of each variant there — or why there is none (the skip, or the CI
    failure, that ``conftest_pg`` raised), which each PostgreSQL case re-raises.
    Drops the schemas it made at the end."""
    unavailable: BaseException | None = None
    try:
        conninfo: str = request.getfixturevalue("pg_conninfo")
    except BaseException as error:  # pytest's skip or fail outcome
        unavailable = error
    if unavailable is not None:
        yield unavailable
        return
    prefix = f"crash_{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("crash-matrix-pg-dry")
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        runs = dict(
            zip(
                VARIANTS,
                pool.map(
                    lambda v: pg_dry_run(conninfo, f"{prefix}_dry_{v.replace('-', '_')}", tmp, v),
                    VARIANTS,
                ),
                strict=True,
            )
        )
    yield PgMatrix(conninfo, prefix, runs)
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{prefix}%",)
            )
        ]
        if names:
            conn.execute("DROP SCHEMA " + ", ".join(f'"{n}"' for n in names) + " CASCADE")


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Case, Played | BaseException]:
    """Play every selected case, a few child processes at a time."""
    cases = [
        item.callspec.params["crash_case"]
        for item in request.session.items
        if "crash_case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    root = tmp_path_factory.mktemp("crash-matrix")
    pg: Any = None
    if any(case.backend == "postgres" for case in cases):
        pg = request.getfixturevalue("pg_matrix")

    def one(case: Case) -> Played | BaseException:
        where = root / case.backend / case.saga_id
        where.mkdir(parents=True)
        target: Target
        if case.backend == "sqlite":
            target = SQLiteTarget(where)
        elif isinstance(pg, BaseException):
            return pg
        else:
            schema = f"{pg.prefix}_{case.variant.replace('-', '_')}_{case.number:02d}"
            target = PostgresTarget(pg.conninfo, schema)
        return play(servers, target, where / "ledger.jsonl", case)

    servers = ForkServers(root)
    try:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            return dict(zip(cases, pool.map(one, cases), strict=True))
    finally:
        servers.close()


# --------------------------------------------------------------------------- tests


def test_S10_crash_matrix_dry_runs_cross_every_kind_of_boundary() -> None:
    """The enumeration is not vacuous: every write, act and compensation is a crash point."""
    expected_writes = {
        "ok": 4, "fallback": 5, "unwind": 7, "stuck": 9,
        "group-ok": 6, "group-fallback": 7, "group-unwind": 10, "group-member-fails": 6,
    }
    for variant, (outcome, boundaries) in dry_runs().items():
        assert outcome == EXPECTED_STATUS[variant]
        befores = [b for b in boundaries if b.startswith("before write")]
        afters = [b for b in boundaries if b.startswith("after write")]
        assert len(befores) == len(afters) == expected_writes[variant], boundaries
        assert [b.removeprefix("before ") for b in befores] == [
            a.removeprefix("after ") for a in afters
        ]
        inside = [b for b in boundaries if b.startswith("inside")]
        assert len(boundaries) == 2 * expected_writes[variant] + len(inside)
    for variant in ("group-ok", "group-fallback", "group-unwind", "group-member-fails"):
        # S15/S13: both members' STARTED are durable in one write before either runs,
        # and a crash can fall between the members' own steps.
        group = dry_runs()[variant][1]
        ahead = "after write 2 append [A act completed, P act started, Q act started]"
        assert ahead in group
        assert group.index(ahead) < group.index(next(b for b in group if "inside act P" in b))
    member_fails = dry_runs()["group-member-fails"][1]
    assert "before write 3 append [P act failed, Q act completed]" in member_fails
    assert "inside act B2: effect applied, not returned" in dry_runs()["fallback"][1]
    assert "inside act B: about to fail" in dry_runs()["fallback"][1]
    unwind = dry_runs()["unwind"][1]
    assert "inside compensate B2: effect applied, not returned" in unwind  # between compensations
    assert unwind.index("after write 5 append [C act failed, B2 compensate started]; "
                       "saga compensating") < unwind.index("inside compensate B2: effect "
                                                           "applied, not returned")


def test_S10_crash_matrix_on_postgres_crosses_the_same_boundaries(pg_matrix: Any) -> None:
    """The PostgreSQL cases are enumerated from the SQLite dry runs: the same
    executor makes the same writes whatever the store."""
    if isinstance(pg_matrix, BaseException):
        raise pg_matrix
    for variant, (outcome, boundaries) in dry_runs().items():
        pg_outcome, pg_boundaries = pg_matrix.dry_runs[variant]
        assert pg_outcome == outcome
        if variant.startswith("group-"):
            # A member's act may run before or after a sibling's write lands
            # (the stores answer at different speeds): the same crash points
            # (cases crash by label), the writes in the same order.
            assert sorted(pg_boundaries) == sorted(boundaries)
            writes = [b for b in boundaries if "write" in b]
            assert [b for b in pg_boundaries if "write" in b] == writes
        else:
            assert pg_boundaries == boundaries


def test_S10_crash_matrix_invariants_hold_after_resume_in_a_fresh_process(
    crash_case: Case, matrix: dict[Case, Played | BaseException]
) -> None:
    played = matrix[crash_case]
    if isinstance(played, BaseException):
        raise played
    check_case(crash_case, played)


def check_case(case: Case, played: Played) -> None:
    variant, saga_id = case.variant, case.saga_id
    expected = EXPECTED_STATUS[variant]

    # The child died exactly where the dry run said this boundary is.
    assert played.crashed.returncode == CRASH_EXIT, played.crashed.stderr
    assert played.crashed.stdout == f"CRASH {case.label}\n"

    report = played.report
    assert report["skipped"] == []
    before, after, ledger = played.before, played.after, played.ledger
    crash_run = [line for line in ledger if line["run"] == "crash"]
    resume_run = [line for line in ledger if line["run"] == "resume"]

    if before is None:
        # The crash came before the saga's first write was durable: the saga
        # never began (its first act is only called after that write), so
        # there is nothing to recover and nothing happened.
        assert case.label.startswith("before write 1 create")
        assert after is None
        assert ledger == []
        assert report["outcomes"] == {saga_id: "not found"}
        assert report["resumed"] == report["compensated"] == report["failed"] == []
        return

    # -- no saga is lost: it is in the store, final, with the variant's outcome
    assert after is not None, "the saga disappeared from the store"
    assert after.status == expected, (before, after)
    assert report["outcomes"] == {saga_id: expected}  # resume() of a finished saga
    if expected == "completed":
        # S14: what the steps returned survives the crash: resume() gives the
        # results an uninterrupted run returns, types and all.
        dry_runs()
        assert report["results"] == {saga_id: _DRY_RESULTS[variant]}
        assert [name for name, _ in _DRY_RESULTS[variant]] == sorted(
            EXPECTED_ACTS[variant], key=_STEP_ORDER.index
        )
    bucket = {"completed": "resumed", "compensated": "compensated", "failed": "failed"}
    if before.status in ("running", "compensating"):
        assert report[bucket[expected]] == [saga_id]
        assert after.fence == before.fence + 1  # claimed once: resumed exactly once
        assert after.lease_owner is None  # and the lease was given back
    else:
        # The crash came after the final write: recovery has nothing to do.
        assert before.status == expected
        assert resume_run == []
        assert report["resumed"] == report["compensated"] == report["failed"] == []
    assert after.context["trail"] == EXPECTED_TRAIL[variant]
    for field, marks in EXPECTED_LANES.get(variant, {}).items():
        assert after.context[field] == marks, (field, after.context)

    # -- the resumed run only appended to the journal
    assert after.rows[: len(before.rows)] == before.rows

    # -- exactly-once effects at the participant
    applied = Counter(
        (line["action"], line["step"]) for line in ledger if line["kind"] == "apply"
    )
    assert applied == Counter(EXPECTED_EFFECTS[variant])
    assert all(
        line["key"] == f"{saga_id}:{line['step']}"
        + (":compensate" if line["action"] == "compensate" else "")
        for line in ledger
    ), "the idempotency key of a step changed"

    # -- every act that completed is part of a COMPLETED saga or compensated exactly once
    completed_acts = Counter(after.steps("act", "completed"))
    assert all(count == 1 for count in completed_acts.values()), after.rows
    compensated = Counter(after.steps("compensate", "completed"))
    if expected == "completed":
        assert compensated == Counter()
        assert set(completed_acts) == EXPECTED_ACTS[variant]
    elif expected == "compensated":
        assert compensated == completed_acts == Counter(dict.fromkeys(EXPECTED_ACTS[variant], 1))
    else:  # "stuck": A's compensation is designed to fail; every other one happened once
        assert completed_acts == Counter({"A": 1, "B2": 1})
        assert compensated == Counter({"B2": 1})
        assert after.steps("compensate", "failed")[-1] == "A"

    # -- a completed act (or compensation) is never called again
    acts_done = set(before.steps("act", "completed"))
    compensations_done = set(before.steps("compensate", "completed"))
    rerun = [
        line for line in resume_run
        if (line["action"] == "act" and line["step"] in acts_done)
        or (line["action"] == "compensate" and line["step"] in compensations_done)
    ]
    assert rerun == [], f"completed before the crash, yet called again: {rerun}"
    for primary in ("B", "Q"):
        if primary in before.steps("act", "failed"):
            # The primary's failure is on record: the step resumes with its fallback.
            assert not [line for line in resume_run if line["step"] == primary]

    # -- the resumed run picks up exactly where the journal stops
    if before.status in ("running", "compensating") and resume_run:
        # The rows left open at the end (a group's members were all started by
        # one write): the resumed run's first call is one of them.
        open_rows = []
        for row in reversed(before.rows):
            if row[4] != "started":
                break
            open_rows.append((row[3], row[1]))
        if open_rows:
            first = resume_run[0]
            assert (first["action"], first["step"]) in open_rows, (before.rows, first)

    # -- no forward step runs after COMPENSATING began
    assert_no_forward_after_compensation([(r[3], r[1]) for r in after.rows])
    assert_no_forward_after_compensation([(line["action"], line["step"]) for line in ledger])
    if before.status == "compensating":
        assert [line for line in resume_run if line["action"] == "act"] == []

    # -- the crashed process and the fresh one are the only actors
    assert {line["pid"] for line in crash_run} | {line["pid"] for line in resume_run} == {
        line["pid"] for line in ledger
    }
    assert len({line["pid"] for line in resume_run}) <= 1


def assert_no_forward_after_compensation(calls: Sequence[tuple[str, str]]) -> None:
    actions = [action for action, _ in calls]
    if "compensate" in actions:
        first = actions.index("compensate")
        late = [call for call in calls[first:] if call[0] == "act"]
        assert late == [], f"forward steps ran after unwinding began: {late}"
