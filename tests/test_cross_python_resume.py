"""A saga journaled by one supported Python resumes exactly on another (S14).

A rolling upgrade runs two interpreters side by side: the process that dies
may be a worker still on Python 3.11 and the one that recovers its sagas a
worker already on 3.13 (or the other way round). Nothing in the journal may
depend on the interpreter that wrote it: the definition's fingerprint (or
the resume is refused as a changed definition), the encoding of each value
(or the context comes back different). Each CI run (one per Python) has the
other supported Pythons write, crash, and this one resume, so that across
the three runs every ordered pair is tried.

The other interpreters are found as ``.ci/run`` finds them (pyenv's
``3.X.N`` releases, else ``python3.X`` on PATH) and import this checkout's
package through ``PYTHONPATH``. Without one the test skips, except under CI
(``CI=true``), where that is a failure. Only the stdlib context kinds are
written there: a bare interpreter has no pydantic or msgspec.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import context_crash_app as app
import pytest
from context_crash_app import assert_identical

from fallback_saga import SQLiteSagaStore, recover

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SUPPORTED = ("3.11", "3.12", "3.13")
THIS = f"{sys.version_info.major}.{sys.version_info.minor}"
KINDS = ("dataclass", "protocol", "state")


def _is(executable: str, minor: str) -> bool:
    try:
        ran = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30,
        )
    except OSError:
        return False
    return ran.returncode == 0 and ran.stdout.strip() == minor


def interpreter(minor: str) -> str | None:
    """The newest final ``minor`` release under pyenv, else ``python<minor>``
    on PATH, that runs and is that version; None if there is none."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pattern = re.compile(re.escape(minor) + r"\.(\d+)$")
    found = sorted(
        (int(match.group(1)), entry.name)
        for entry in (versions.iterdir() if versions.is_dir() else ())
        if (match := pattern.match(entry.name))
    )
    candidates = [str(versions / name / "bin" / f"python{minor}") for _, name in reversed(found)]
    on_path = shutil.which(f"python{minor}")
    if on_path:
        candidates.append(on_path)
    return next((exe for exe in candidates if _is(exe, minor)), None)


def other_python(minor: str) -> str:
    exe = interpreter(minor)
    if exe is None:
        message = f"no Python {minor} found (pyenv's versions/{minor}.N, or python{minor} on PATH)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + ": CI must try a resume across every supported Python")
        pytest.skip(message)
    return exe


def crash_under(python: str, db: Path, kind: str) -> subprocess.CompletedProcess[str]:
    """``context_crash_app``'s child, run by ``python`` on this checkout: it
    journals the saga's first step and dies inside the second."""
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "import context_crash_app; context_crash_app.main(sys.argv[1:])"
    )
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
    env.pop("PYTHONHOME", None)
    return subprocess.run(
        [python, "-c", code, str(TESTS), str(db), kind],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT),
    )


@pytest.mark.parametrize("writer", [minor for minor in SUPPORTED if minor != THIS])
@pytest.mark.parametrize("kind", KINDS)
async def test_S14_a_saga_journaled_by_another_python_resumes_exactly_on_this_one(
    writer: str, kind: str, tmp_path: Path
) -> None:
    python = other_python(writer)
    db = tmp_path / "sagas.db"

    child = crash_under(python, db, kind)
    assert child.returncode == 137, child.stderr  # died inside the second step

    app.SEEN.clear()
    store = SQLiteSagaStore(db)
    try:
        report = await recover(store, [app.SAGAS[kind]], older_than=0)
        record = await store.load(f"{kind}-1")
    finally:
        await store.close()

    # Resumed (not refused as a changed definition, not skipped), and the
    # step that died saw exactly the context the other Python's first step left.
    assert report.resumed == [f"{kind}-1"], str(report)
    assert record.status.is_final
    assert len(app.SEEN) == 1
    assert_identical(app.expected(kind), app.SEEN[0])
