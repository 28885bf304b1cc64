"""The typed API as a user's type checker sees it (py.typed: the public API is
annotated, and ``mypy --strict`` must be usable on code that uses it).

The programs in ``tests/typing_user/`` (see its README) are checked with
``mypy --strict`` — and with pyright in strict mode when a ``pyright`` is
installed (``npm install pyright``, or ``$PYRIGHT`` naming its executable):

* every file but ``deliberate_errors.py`` type-checks without an error, its
  ``assert_type`` calls included (the context type survives ``Saga[Ctx]`` →
  ``SagaResult[Ctx]`` → ``result.context``; no ``Any`` where a type is known);
* ``deliberate_errors.py`` is reported exactly on its lines marked
  ``# E: <codes>`` (with those mypy error codes), and on no other line —
  the S11 definition errors among them, refused before any class is created.

The checkers read the package of this checkout (``MYPYPATH``, pyright's
``extraPaths``), not whatever copy is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "tests" / "typing_user"
ERRORS_FILE = PROGRAMS / "deliberate_errors.py"
# A program that needs a package the test extra installs, and that package.
NEEDS = {"pydantic_context.py": "pydantic"}

_MARKER = re.compile(r"#\s*E:\s*([\w-]+(?:\s*,\s*[\w-]+)*)\s*$")
_MYPY_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def programs() -> list[Path]:
    chosen = []
    for path in sorted(PROGRAMS.glob("*.py")):
        needed = NEEDS.get(path.name)
        if needed is not None and importlib.util.find_spec(needed) is None and not _ci():
            continue  # under CI every optional package is installed: never left out
        chosen.append(path)
    return chosen


def expected_errors() -> dict[int, set[str]]:
    """Line -> the mypy error codes ``deliberate_errors.py`` marks on it."""
    expected: dict[int, set[str]] = {}
    for number, line in enumerate(ERRORS_FILE.read_text(encoding="utf-8").splitlines(), 1):
        found = _MARKER.search(line)
        if found:
            expected[number] = {code.strip() for code in found.group(1).split(",")}
    return expected


def run_mypy(files: list[Path], tmp_path: Path) -> dict[Path, dict[int, set[str]]]:
    """``mypy --strict`` on ``files``: file -> line -> the error codes reported."""
    if importlib.util.find_spec("mypy") is None:
        if _ci():
            pytest.fail("mypy is not installed: the dev extra installs it")
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--no-pretty", "--cache-dir", str(tmp_path / "mypy_cache"),
         *(str(path.relative_to(ROOT)) for path in files)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    if completed.returncode not in (0, 1):  # 2: mypy itself failed (a crash, bad usage)
        pytest.fail(f"mypy failed to run:\n{completed.stdout}\n{completed.stderr}")
    reported: dict[Path, dict[int, set[str]]] = {}
    for line in completed.stdout.splitlines():
        found = _MYPY_LINE.match(line)
        if found is None:
            continue  # notes, which explain an error on the same line
        path = (ROOT / found.group("path")).resolve()
        reported.setdefault(path, {}).setdefault(int(found.group("line")), set()).add(
            found.group("code")
        )
    assert completed.returncode == 0 or reported, completed.stdout
    return reported


@pytest.fixture(scope="module")
def mypy_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict[int, set[str]]]:
    return run_mypy(programs(), tmp_path_factory.mktemp("mypy"))


def test_typed_api_user_programs_check_clean_under_mypy_strict(
    mypy_reports: dict[Path, dict[int, set[str]]],
) -> None:
    dirty = {
        path.name: errors for path, errors in mypy_reports.items() if path != ERRORS_FILE
    }
    assert dirty == {}


def test_S11_a_type_checker_refuses_the_wrong_code_on_exactly_its_marked_lines(
    mypy_reports: dict[Path, dict[int, set[str]]],
) -> None:
    expected = expected_errors()
    assert len(expected) >= 20  # the file was read, its markers found
    assert mypy_reports.get(ERRORS_FILE, {}) == expected


# ------------------------------------------------------------------ pyright


def pyright_command() -> list[str] | None:
    """The pyright to run: ``$PYRIGHT``, one on PATH, or ``node_modules/.bin``."""
    named = os.environ.get("PYRIGHT")
    if named:
        return [named]
    for candidate in (shutil.which("pyright"), ROOT / "node_modules" / ".bin" / "pyright"):
        if candidate is not None and Path(candidate).is_file():
            return [str(candidate)]
    return None


@pytest.fixture(scope="module")
def pyright_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, set[int]]:
    """pyright (strict) on the programs: file -> the lines with an error."""
    command = pyright_command()
    if command is None:
        message = "pyright is not installed (npm install pyright, or set $PYRIGHT)"
        if os.environ.get("FALLBACK_SAGA_REQUIRE_PYRIGHT") == "1":
            pytest.fail(message + " (.ci/run installed one: it must run)", pytrace=False)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("pyright")
    config = work / "pyrightconfig.json"
    config.write_text(json.dumps({
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "extraPaths": [str(ROOT)],
    }), encoding="utf-8")
    completed = subprocess.run(
        [*command, "--outputjson", "-p", str(config), "--pythonpath", sys.executable,
         *(str(path) for path in programs())],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    try:
        output = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright failed to run:\n{completed.stdout}\n{completed.stderr}")
    reported: dict[Path, set[int]] = {}
    for diagnostic in output["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            path = Path(diagnostic["file"]).resolve()
            # pyright counts lines from 0
            reported.setdefault(path, set()).add(diagnostic["range"]["start"]["line"] + 1)
    return reported


def test_typed_api_user_programs_check_clean_under_pyright_strict(
    pyright_reports: dict[Path, set[int]],
) -> None:
    dirty = {path.name: lines for path, lines in pyright_reports.items() if path != ERRORS_FILE}
    assert dirty == {}


def test_S11_pyright_refuses_the_wrong_code_on_exactly_its_marked_lines(
    pyright_reports: dict[Path, set[int]],
) -> None:
    assert pyright_reports.get(ERRORS_FILE, set()) == set(expected_errors())
