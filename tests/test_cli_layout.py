"""The shape of the ``fallback_saga.cli`` package.

One module per part; imports inside it run one way (``__init__`` at the
top, nothing imports it back, no cycle) and are relative (a vendored copy
runs as well as the installed one, its demo's crashing child included); the
names tests and users import from ``fallback_saga.cli`` are still there.
"""

from __future__ import annotations

import ast
import graphlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fallback_saga.cli

CLI_DIR = Path(fallback_saga.cli.__file__).resolve().parent
PACKAGE_DIR = CLI_DIR.parent


def cli_imports() -> dict[str, set[str]]:
    """For each module of the package, the modules of the package it imports."""
    modules = {path.stem for path in CLI_DIR.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in CLI_DIR.glob("*.py"):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module is None:  # from . import x
                    edges |= {alias.name for alias in node.names}
                else:
                    edges.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "fallback_saga", (
                    f"{path.name} imports {node.module} by its absolute name"
                )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] != "fallback_saga", (
                        f"{path.name} imports {alias.name} by its absolute name"
                    )
        unknown = edges - modules
        assert not unknown, f"{path.name} imports {sorted(unknown)} from the package itself"
        graph[path.stem] = edges
    return graph


def test_the_cli_modules_import_one_way() -> None:
    graph = cli_imports()
    assert {"__init__", "demo", "inspect", "recover", "serve", "stores", "text"} <= set(graph)
    importers_of_init = sorted(name for name, edges in graph.items() if "__init__" in edges)
    assert importers_of_init == []
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError if a cycle
    assert order[-1] == "__init__"


def test_the_old_module_names_are_gone_and_their_names_still_import() -> None:
    assert not (PACKAGE_DIR / "cli.py").exists()
    assert not (PACKAGE_DIR / "_demo.py").exists()
    from fallback_saga.cli import (  # noqa: F401 (the names tests import)
        MAX_CELL,
        MAX_CONTEXT,
        MAX_VALUE,
        main,
        mermaid_flowchart,
        mermaid_gantt,
        parse_duration,
        terminal_text,
    )
    from fallback_saga.cli.demo import DemoOrderSaga, run_demo  # noqa: F401


def test_python_m_fallback_saga_draws_the_demo_saga() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fallback_saga", "graph", "fallback_saga.cli.demo:DemoOrderSaga"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart TD\n")
    assert "ChargeCard" in done.stdout


def _vendored_copy(tmp_path: Path) -> dict[str, str]:
    """The package copied to ``tmp_path/someapp/_vendor/fallback_saga``, as a
    user vendors it; the environment that imports ``someapp`` from there."""
    vendor = tmp_path / "someapp" / "_vendor"
    shutil.copytree(
        PACKAGE_DIR, vendor / "fallback_saga", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "someapp" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_a_vendored_copy_runs_the_demo_and_its_crashing_child(tmp_path: Path) -> None:
    env = _vendored_copy(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "someapp._vendor.fallback_saga", "demo", "--db", "demo.db"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    # The child process ran the vendored copy: `-m someapp._vendor.fallback_saga _crash-demo`.
    assert done.stdout.count("*** the process dies here (os._exit)") == 2
    assert "recovered 2 saga(s): 1 completed, 1 compensated" in done.stdout
    # Its "look for yourself" commands name the copy (test_S12_a_vendored_copys_hints...).
    assert "  python -m someapp._vendor.fallback_saga list --db demo.db" in done.stdout


def test_a_vendored_copy_names_itself_in_its_messages(tmp_path: Path) -> None:
    """Not ``python -m fallback_saga``, which its user has no module for."""
    env = _vendored_copy(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "someapp._vendor.fallback_saga", "list"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("python -m someapp._vendor.fallback_saga: error: ")


_PARKED_AND_FAILED = """
import asyncio
from someapp._vendor.fallback_saga import SagaStatus, SQLiteSagaStore
from someapp._vendor.fallback_saga.console.pages import _alert
from someapp._vendor.fallback_saga.testing import entry

async def main():
    async with SQLiteSagaStore("sagas.db", park_after=1) as store:
        await store.create("p-1", "OrderSaga", "fp", {}, [entry(0, "A")])
        await store.claim(owner="dead", lease_seconds=-1, older_than=0, limit=10)
        await store.create("f-1", "OrderSaga", "fp", {}, [entry(0, "A")],
                           status=SagaStatus.FAILED)
        print(_alert(await store.load("f-1")))  # the FAILED saga page's alert

asyncio.run(main())
"""


def test_S12_a_vendored_copys_hints_name_the_copy(tmp_path: Path) -> None:
    """The commands a vendored copy's texts tell an operator to run — the
    resume of a parked saga (list, show, recover, the console, the log), the
    console's retry-unwinding of a FAILED one, the demo's — name the copy's
    module, not ``python -m fallback_saga``, which its user does not have."""
    env = _vendored_copy(tmp_path)
    made = subprocess.run(
        [sys.executable, "-c", _PARKED_AND_FAILED],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )
    assert made.returncode == 0, made.stderr
    assert "<code>python -m someapp._vendor.fallback_saga retry-unwinding f-1 --app" in made.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "someapp._vendor.fallback_saga", "list", "--db", "sagas.db",
         "--park-after", "1"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )
    assert listed.returncode == 0, listed.stderr
    assert "resume it by id: python -m someapp._vendor.fallback_saga resume p-1 --app" in (
        listed.stdout)
    assert "python -m fallback_saga" not in made.stdout + listed.stdout


_WITHOUT_PSYCOPG = (
    "import runpy, sys; sys.modules['psycopg'] = sys.modules['psycopg_pool'] = None; "
    "sys.argv = ['x', 'list', '--dsn', 'postgresql://db/sagas']; "
    "runpy.run_module('{package}', run_name='__main__', alter_sys=True)"
)


def test_a_vendored_copy_without_psycopg_names_the_drivers_to_install(tmp_path: Path) -> None:
    """Not the fallback-saga extra, which would install a second copy of the library."""
    env = _vendored_copy(tmp_path)
    vendored = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PSYCOPG.format(package="someapp._vendor.fallback_saga")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env,
    )
    assert vendored.returncode == 2, vendored.stderr
    assert 'pip install "psycopg[binary]>=3.2" "psycopg-pool>=3.2"' in vendored.stderr
    assert "fallback-saga[postgres]" not in vendored.stderr
    installed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PSYCOPG.format(package="fallback_saga")],
        capture_output=True, text=True, timeout=120, check=False, cwd=PACKAGE_DIR.parent,
    )
    assert installed.returncode == 2, installed.stderr
    assert 'pip install "fallback-saga[postgres]"' in installed.stderr
