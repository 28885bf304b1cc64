"""S10/S15 process-kill matrix for a saga family: a parent with a Parallel
group (one member a Fallback) and a SubSaga child that runs a group of its
own, on ``SQLiteSagaStore`` (both the writer thread and the inline writer).

The app is ``tests/family_crash_app.py``. A dry run of each variant (completes;
fails late and unwinds the child and the group; the child fails and unwinds
itself, then the parent) lists every journal boundary the family crosses —
before and after each write of parent and child, inside each act after its
effect, inside each failing act, inside each compensation — and every one is
a case: a forked child process runs the family and dies with
``os._exit(137)`` there; a second, fresh process runs ``recover`` until a
pass finds nothing. The participant ledger (a file, fsynced per call) then
shows what really happened, and each case checks the family's invariants:

* the family ends as the variant says, parent and child alike (a COMPLETED
  parent has a COMPLETED child; a COMPENSATED parent a COMPENSATED child);
* every effect is applied exactly once, and every act applied under a
  COMPENSATED family is compensated (no child effect left behind);
* no act or compensation the crashed journal holds COMPLETED is called again;
* nothing is compensated whose act never ran, unless the journal says the
  call was uncertain (``CANCELLED``: the contract's in-flight case);
* the child is driven by its parent: recovery never resumes it on its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from crash_app import CRASH_EXIT, Ledger
from family_crash_app import APP, CHILD, EXPECTED_EFFECTS, EXPECTED_STATUS, VARIANTS
from helpers_fork import ForkServer

WRITERS = ("thread", "inline")
# The inline writer's share of the matrix (the whole matrix runs on the writer
# thread): the forward run and late unwinding (``unwind``) and the child
# cancelled in flight as a group member (``member``), for time.
INLINE_VARIANTS = ("unwind", "member")
TIMEOUT = 60.0
PARALLEL = 2  # the fork servers at once (a case is two short processes, one after the other)
ROOT = str(Path(__file__).resolve().parent.parent)  # the package these processes import


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}


class Case(NamedTuple):
    writer: str
    variant: str
    number: int
    label: str

    @property
    def saga_id(self) -> str:
        return f"{self.writer}-{self.variant}-{self.number:02d}"


_DRY: dict[tuple[str, str], tuple[str, list[str]]] = {}


def dry_runs(tmp: Path) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """``(writer, variant) -> (outcome, boundaries)`` of uninterrupted runs."""
    if not _DRY:
        procs = {
            (writer, variant): subprocess.Popen(
                [sys.executable, str(APP), "run", str(tmp / f"{writer}-{variant}.db"), writer,
                 str(tmp / f"{writer}-{variant}.jsonl"), variant, f"dry-{variant}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
            )
            for writer in WRITERS
            for variant in VARIANTS
        }
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"dry run {key} failed:\n{err}")
            data = json.loads(out)
            _DRY[key] = (data["outcome"], data["boundaries"])
    return _DRY


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "family_case" not in metafunc.fixturenames:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = dry_runs(Path(tmp))
    cases = [
        Case(writer, variant, number, label)
        for (writer, variant), (_, boundaries) in runs.items()
        if writer == "thread" or variant in INLINE_VARIANTS
        for number, label in enumerate(boundaries)
    ]
    metafunc.parametrize("family_case", cases, ids=[c.saga_id for c in cases])


class Played(NamedTuple):
    crashed: subprocess.CompletedProcess[str]
    recovered: subprocess.CompletedProcess[str]
    ledger: list[dict[str, Any]]


@pytest.fixture(scope="module")
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Case, Played | BaseException]:
    """Play every selected case, a fork server per worker thread."""
    cases = [
        item.callspec.params["family_case"]
        for item in request.session.items
        if "family_case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    root = tmp_path_factory.mktemp("family-crash")
    local = threading.local()
    servers: list[ForkServer] = []
    lock = threading.Lock()

    def one(case: Case) -> Played | BaseException:
        try:
            server = getattr(local, "server", None)
            if server is None:
                server = local.server = ForkServer(APP, root, timeout=TIMEOUT, env=_env())
                with lock:
                    servers.append(server)
            where = root / case.saga_id
            where.mkdir()
            db, ledger = where / "sagas.db", where / "ledger.jsonl"
            crashed = server.child("run", db, case.writer, ledger, case.variant,
                                   case.saga_id, case.label)
            recovered = server.child("recover", db, case.writer, ledger, case.saga_id)
            return Played(crashed, recovered, Ledger.read(ledger))
        except BaseException as error:  # reported by the case's own test
            return error

    try:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            return dict(zip(cases, pool.map(one, cases), strict=True))
    finally:
        for server in servers:
            server.close()


def test_S10_S15_family_dry_runs_cross_parent_child_group_and_fallback_boundaries(
    tmp_path: Path,
) -> None:
    """The enumeration is not vacuous: the writes of both sagas, the group's
    write-ahead in each, the fallback and every compensation are crash points."""
    for (writer, variant), (outcome, boundaries) in dry_runs(tmp_path).items():
        assert outcome == EXPECTED_STATUS[variant], (writer, variant)
        writes = [b for b in boundaries if b.startswith("before write")]
        assert len(writes) == {
            "ok": 13, "unwind": 21, "child": 16, "cancel-after": 15, "cancel-before": 15,
            "member": 10,
        }[variant], boundaries
        assert any("create [X act started]" in b for b in writes)  # the child's record
        if variant == "member":
            # S8/S15: the child, a group member in flight when its sibling
            # fails, is cancelled with its call in flight; both unwound.
            assert "before write 5 append [W act cancelled, W compensate started]; " \
                "saga compensating" in writes
            assert "before write 8 append [M act failed, Pay act cancelled, Pay compensate " \
                "started]; saga compensating" in writes
            continue
        assert "before write 2 append [A act completed, P act started, Q act started]" in writes
        assert "before write 8 append [X act completed, Y act started, Z act started]" in writes
        assert "inside act Q: about to fail" in boundaries
        assert "inside act Q2: effect applied, not returned" in boundaries
        if variant.startswith("cancel"):
            # S8: the member cancelled in flight is journaled CANCELLED and compensated.
            assert any("Y act cancelled, Y compensate started" in b for b in writes)
        if variant != "ok":
            assert "inside compensate X: effect applied, not returned" in boundaries
            assert "inside compensate A: effect applied, not returned" in boundaries


def _side(line: dict[str, Any]) -> str:
    return "child" if line["saga"].endswith(f"/{CHILD}") else "parent"


def _rows(family: dict[str, Any], saga_id: str, action: str, status: str) -> set[str]:
    record = family.get(saga_id)
    if record is None:
        return set()
    return {step for step, act, st in record["rows"] if act == action and st == status}


def test_S10_S15_a_family_killed_at_any_journal_point_recovers_each_effect_exactly_once(
    family_case: Case, matrix: dict[Case, Played | BaseException]
) -> None:
    played = matrix[family_case]
    if isinstance(played, BaseException):
        raise played
    case = family_case
    # The process died exactly at the boundary the dry run named.
    assert played.crashed.returncode == CRASH_EXIT, played.crashed.stderr
    assert played.crashed.stdout == f"CRASH {case.label}\n"
    assert played.recovered.returncode == 0, played.recovered.stderr
    started, final = map(json.loads, played.recovered.stdout.splitlines())
    check_family(case.variant, case.saga_id, case.label, [started], final, played.ledger)


def check_family(
    variant: str,
    parent_id: str,
    first_kill: str,
    recoveries: list[dict[str, Any]],
    final: dict[str, Any],
    ledger: list[dict[str, Any]],
) -> None:
    """The family's invariants once the last recovery is done. ``recoveries``:
    what each recovery process (killed or not) found at its start, in order."""
    child_id = f"{parent_id}/{CHILD}"
    first, after, report = recoveries[0]["before"], final["after"], final["report"]
    resumed_calls = [line for line in ledger if line["run"] != "crash"]

    if not first:
        # Killed before the family's first write was durable: nothing began.
        assert first_kill.startswith("before write 1 create"), final
        assert after == {}
        assert ledger == []
        return

    expected = EXPECTED_STATUS[variant]
    # -- the family ends as the journal says, parent and child alike
    assert after[parent_id]["status"] == expected, final
    assert after[child_id]["status"] == expected, final
    assert report["skipped"] == []
    assert report["failed"] == []
    if final["before"][parent_id]["status"] in ("running", "compensating"):
        bucket = "resumed" if expected == "completed" else "compensated"
        assert report[bucket] == [parent_id], final  # the parent, once
    else:
        # Final before the last recovery: it had nothing to do.
        assert [x for x in ledger if x["pid"] == recoveries[-1]["pid"]] == [], final
    # The child is its parent's to drive: recovery never finishes it on its own.
    assert child_id not in report["resumed"] + report["compensated"], final

    # -- every effect exactly once; under a COMPENSATED family none is left
    applied = Counter((_side(x), x["action"], x["step"]) for x in ledger if x["kind"] == "apply")
    # Beyond the variant's effects, only the compensation of a call the journal
    # holds uncertain (CANCELLED: e.g. a member whose failure the kill kept out
    # of the journal, not called again by the unwinding resume) — S5/S8.
    uncertain = {
        (side, "compensate", step)
        for side, saga_id in (("parent", parent_id), ("child", child_id))
        for step in _rows(after, saga_id, "act", "cancelled")
    }
    assert set(applied) - EXPECTED_EFFECTS[variant] <= uncertain, (applied, final)
    assert EXPECTED_EFFECTS[variant] <= set(applied), (applied, final)
    assert set(applied.values()) == {1}, applied

    # -- nothing a recovery found COMPLETED in the journal is called again by it
    for recovery in recoveries:
        calls = [x for x in resumed_calls if x["pid"] == recovery["pid"]]
        for saga_id in (parent_id, child_id):
            for action in ("act", "compensate"):
                done = _rows(recovery["before"], saga_id, action, "completed")
                again = [x for x in calls
                         if x["saga"] == saga_id and x["action"] == action and x["step"] in done]
                assert again == [], (saga_id, action, again, recovery)

    # -- no compensation for an act that never ran, but for an uncertain call
    acted = {(x["saga"], x["step"]) for x in ledger if x["action"] == "act" and x["kind"] != "fail"}
    for line in ledger:
        if line["action"] != "compensate" or (line["saga"], line["step"]) in acted:
            continue
        uncertain = _rows(after, line["saga"], "act", "cancelled")
        assert line["step"] in uncertain, (line, final)


# --------------------------------------------------------------------------- killed twice

# The first kills of the double-kill matrix (the variants that unwind, on the
# writer thread: the forward part of ``ok`` is theirs too, and ``cancel-before``
# is ``cancel-after`` less one effect): every call in the
# child or after it that a kill leaves uncertain (inside an act or a
# compensation, the journal saying STARTED), and the writes that hand over
# between parent and child.
def _first_kills(boundaries: list[str]) -> list[str]:
    handovers = ("Pay act started", "create [X", "Pay act completed",
                 "Pay compensate started", "Pay act failed", "Pay act cancelled")
    calls = tuple(f"inside {what}:" for what in (
        "act X", "act Y", "act Z", "act W", "compensate W", "act C", "compensate Z", "compensate Y",
        "compensate X", "compensate Q2",
    ))
    # (A kill before a write leaves the journal a kill after the write before
    # it leaves: the handovers are killed after their write only.)
    return [b for b in boundaries if b.startswith(calls) or (
        b.startswith("after") and any(h in b for h in handovers)
    )]


def pytest_generate_tests_twice() -> list[tuple[str, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = dry_runs(Path(tmp))
    return [
        (variant, label)
        for (writer, variant), (_, boundaries) in runs.items()
        if writer == "thread" and variant not in ("ok", "cancel-before")
        for label in _first_kills(boundaries)
    ]


@pytest.fixture(scope="module")
def fork_servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("family-twice-servers")
    local = threading.local()
    servers: list[ForkServer] = []
    lock = threading.Lock()

    def server() -> ForkServer:
        mine = getattr(local, "server", None)
        if mine is None:
            mine = local.server = ForkServer(APP, root, timeout=TIMEOUT, env=_env())
            with lock:
                servers.append(mine)
        return mine

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        yield pool, server
    for one in servers:
        one.close()


def _copy(source: Path, target: Path) -> None:
    target.mkdir()
    for one in source.iterdir():
        if one.is_file():
            shutil.copyfile(one, target / one.name)


@pytest.mark.parametrize(
    ("variant", "first_kill"), pytest_generate_tests_twice(),
    ids=lambda v: v if v in VARIANTS else _slug(v)[:60],
)
def test_S10_S15_a_family_whose_recovery_is_killed_at_any_journal_point_too_recovers_once(
    variant: str, first_kill: str, fork_servers: Any, tmp_path: Path
) -> None:
    """Killed, then its recovery killed at every boundary of its own run, then
    recovered again (once the killed recovery's leases ran out): the same
    invariants, over all three processes."""
    pool, server = fork_servers
    saga_id = "fam"
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    killed = server().child("run", crashed / "sagas.db", "thread", crashed / "ledger.jsonl",
                            variant, saga_id, first_kill)
    assert killed.returncode == CRASH_EXIT, killed.stderr
    # A recovery run to the end lists the boundaries a recovery crosses.
    _copy(crashed, tmp_path / "dry")
    dry = server().child("recover", tmp_path / "dry" / "sagas.db", "thread",
                         tmp_path / "dry" / "ledger.jsonl", saga_id, "-", "")
    assert dry.returncode == 0, dry.stderr
    boundaries = json.loads(dry.stdout.splitlines()[-1])["boundaries"]
    assert boundaries, dry.stdout

    def one(number_label: tuple[int, str]) -> tuple[str, Any]:
        number, label = number_label
        where = tmp_path / f"second-{number:02d}"
        _copy(crashed, where)
        db, ledger = where / "sagas.db", where / "ledger.jsonl"
        second = server().child("recover", db, "thread", ledger, saga_id, label, "")
        last = server().child("recover", db, "thread", ledger, saga_id, "", "later")
        return label, (second, last, Ledger.read(ledger))

    for label, (second, last, ledger) in pool.map(one, enumerate(boundaries)):
        assert second.returncode == CRASH_EXIT, (label, second.stderr)
        lines = second.stdout.splitlines()
        assert lines[-1] == f"CRASH {label}"
        assert last.returncode == 0, last.stderr
        started, final = map(json.loads, last.stdout.splitlines())
        recoveries = [json.loads(lines[0]), started] if len(lines) == 2 else [started]
        check_family(variant, saga_id, first_kill, recoveries, final, ledger)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
