"""Regenerate the old journals of tests/test_upgrades.py by running released
fallback_saga versions, as their users ran them.

    python tests/data/make_old_journals.py            # every release below
    python tests/data/make_old_journals.py 0.8.0      # one

For each release, the package as it was at that release's commit is taken
out of git history (``git archive``) into a temporary directory, and
``tests/upgrade_app.py`` runs each saga of ``upgrade_app.CASES`` in a
process of its own with that directory first on ``sys.path``: some end,
some die inside a step (``os._exit``), one is then resumed by a second
process that dies too, leaving its lease behind. What is left is
``journal-<release>.db`` (the SQLite file) and ``journal-<release>.jsonl``
(the participant's ledger: the calls the old processes made). The
``.gitignore`` leaves ``*.db`` out: commit regenerated files with
``git add -f``.

tests/test_upgrades_postgres.py uses ``extract`` and ``write_journal`` to
write the same sagas into a PostgreSQL schema with each release, at test
time (a database cannot be committed as a file; skipped without git history).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
APP = HERE.parent / "upgrade_app.py"

# Each release and a commit whose pyproject says that version: the 0.4.0 and
# 0.8.0 release commits, and the last commits of 0.5.0 and 0.6.0 (whose
# changelogs describe work that landed after their version line changed).
RELEASES: dict[str, str] = {
    "0.4.0": "07bfdae",  # SQLite schema version 1
    "0.5.0": "af9e80c",  # 1; the codec of tagged values (bytes, timedelta)
    "0.6.0": "f6c69a0",  # 2: step results journaled
    "0.8.0": "f6de978",  # 2
    "0.9.0": "0075750",  # 3 (PostgreSQL 5)
}


def extract(release: str, into: Path) -> None:
    """The package as it was at ``release``, into directory ``into``
    (``subprocess.CalledProcessError`` where there is no git history)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", RELEASES[release], "fallback_saga"],
        check=True, capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def write_journal(old: Path, db: str, ledger: Path, env: dict[str, str] | None = None) -> None:
    """Run every saga of ``upgrade_app.CASES`` with the package in ``old``
    against store ``db`` (a SQLite file, or ``pg:SCHEMA`` with
    ``$UPGRADE_APP_DSN`` in ``env``), each in a process of its own."""
    sys.path.insert(0, str(APP.parent))
    try:
        from upgrade_app import CASES
    finally:
        sys.path.remove(str(APP.parent))
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join((str(old), str(APP.parent)))}

    def run(saga_id: str, crash_at: str | None) -> None:
        argv = [sys.executable, "-c", "import sys, upgrade_app; upgrade_app.cli(sys.argv[1:])",
                db, str(ledger), saga_id]
        argv += [crash_at] if crash_at else []
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=old,
                              check=False)
        expected = 0 if crash_at is None else 137
        if done.returncode != expected:
            raise RuntimeError(f"{old} {saga_id}: exit {done.returncode}\n{done.stderr}")

    for saga_id, (_variant, crash_at, crash_again_at) in CASES.items():
        run(saga_id, crash_at)
        if crash_again_at is not None:
            run(f"resume:{saga_id}", crash_again_at)


def make(release: str) -> None:
    db = HERE / f"journal-{release}.db"
    ledger = HERE / f"journal-{release}.jsonl"
    for path in (db, ledger, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as old:
        extract(release, Path(old))
        write_journal(Path(old), str(db), ledger)
    # Fold the -wal file a killed process left into the database file.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"{release}: {db.name}, {ledger.name}")


if __name__ == "__main__":
    for name in sys.argv[1:] or list(RELEASES):
        make(name)
