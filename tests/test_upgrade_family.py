"""Upgrading from 0.9.0 with a saga family in flight: the family of
tests/family_crash_app.py (a parent with a Parallel group, one member a
Fallback, and a SubSaga child running a group of its own) is killed by a
process of the released 0.9.0 at every journal boundary it crosses, on a
SQLite file; a process of today's code opens the file (migrating schema
version 3 to today's) and runs ``recover`` until a pass finds nothing. Each
case must end as if no release had changed between the kill and the
recovery: the invariants of tests/test_family_crash_matrix.py's
``check_family`` (every effect applied exactly once, no compensation lost,
the family ending as its variant says, parent and child alike).

The 0.9.0 package is taken out of git history (skipped where there is none).
A fork server per release keeps each case to its own work (see helpers_fork).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_app import CRASH_EXIT, Ledger
from family_crash_app import APP
from helpers_fork import ForkServer
from test_family_crash_matrix import check_family
from test_upgrades import old_releases

ROOT = str(Path(__file__).resolve().parent.parent)  # today's package
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ForkServer, ForkServer]]:
    """A fork server of the 0.9.0 release and one of today's code."""
    make_old_journals = old_releases()
    old = tmp_path_factory.mktemp("rel090")
    make_old_journals.extract("0.9.0", old)
    scratch = tmp_path_factory.mktemp("family-090")
    released = ForkServer(APP, scratch, timeout=TIMEOUT,
                          env={**os.environ, "PYTHONPATH": str(old)})
    today = ForkServer(APP, scratch, timeout=TIMEOUT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    try:
        yield released, today
    finally:
        released.close()
        today.close()


# ``child``: the child fails and unwinds itself, then the parent; ``member``:
# the child is a group member cancelled in flight. Between them, every kind
# of boundary: parent and child writes, group members, a fallback, an
# uncertain call, both unwindings.
@pytest.mark.parametrize("variant", ["child", "member"])
def test_S10_S15_a_family_0_9_0_killed_at_any_journal_point_recovers_exactly_on_todays_code(
    servers: tuple[ForkServer, ForkServer], tmp_path: Path, variant: str
) -> None:
    released, today = servers
    dry = released.child("run", tmp_path / "dry.db", "thread", tmp_path / "dry.jsonl", variant,
                         f"dry-{variant}")
    assert dry.returncode == 0, dry.stderr
    boundaries = json.loads(dry.stdout)["boundaries"]
    assert len(boundaries) > 20
    schema_left: set[int] = set()
    for number, label in enumerate(boundaries):
        saga_id = f"{variant}-{number:02d}"
        where = tmp_path / saga_id
        where.mkdir()
        db, ledger = where / "sagas.db", where / "ledger.jsonl"
        crashed = released.child("run", db, "thread", ledger, variant, saga_id, label)
        assert crashed.returncode == CRASH_EXIT, (label, crashed.stderr)
        assert crashed.stdout == f"CRASH {label}\n"
        if db.exists():
            schema_left.add(_user_version(db))
        recovered = today.child("recover", db, "thread", ledger, saga_id)
        assert recovered.returncode == 0, (label, recovered.stderr)
        started, final = map(json.loads, recovered.stdout.splitlines())
        check_family(variant, saga_id, label, [started], final, Ledger.read(ledger))
    assert schema_left == {3}  # 0.9.0's files, every one (killed before any: none)


def _user_version(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    return int(version)
