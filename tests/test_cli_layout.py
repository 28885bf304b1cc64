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
import zipfile
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
from someapp._vendor.fallback_saga.console.saga_page import _alert
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


# --------------------------------------------------------------------------- imported from a zip


def _zipped_copy(tmp_path: Path) -> Path:
    """The package in a zip file (a zipapp, a wheel put on ``sys.path``):
    imported by zipimport, where no module has a file of its own."""
    archive = tmp_path / "fallback_saga.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(PACKAGE_DIR.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zipped.write(path, path.relative_to(PACKAGE_DIR.parent).as_posix())
    return archive


# Run with -I (no PYTHONPATH, no user site, no current directory) and -S
# (no site-packages: no installed copy at all), the zip first on the path.
_FROM_ZIP = (
    "import runpy, sys; sys.path.insert(0, {archive!r}); "
    "import fallback_saga; assert fallback_saga.__file__.startswith({archive!r}), "
    "fallback_saga.__file__; sys.argv = ['x', *{argv!r}]; "
    "runpy.run_module('fallback_saga', run_name='__main__', alter_sys=True)"
)


def _run_from_zip(archive: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FROM_ZIP.format(archive=str(archive), argv=argv)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )


def test_python_m_fallback_saga_runs_from_a_zip(tmp_path: Path) -> None:
    archive = _zipped_copy(tmp_path)
    helped = _run_from_zip(archive, ["--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "usage: " in helped.stdout
    assert "purge" in helped.stdout
    drawn = _run_from_zip(archive, ["graph", "fallback_saga.cli.demo:DemoOrderSaga"], tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.startswith("flowchart TD\n")


def test_a_zipapp_of_the_package_runs_its_commands(tmp_path: Path) -> None:
    """``python app.pyz``: a zipapp whose ``__main__`` runs the commands."""
    archive = _zipped_copy(tmp_path)
    with zipfile.ZipFile(archive, "a") as zipped:
        zipped.writestr("__main__.py", "import sys\nfrom fallback_saga.cli import main\n"
                        "sys.exit(main())\n")
    pyz = archive.rename(tmp_path / "app.pyz")
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "--version"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fallback_saga ")


def test_a_zipped_copy_runs_the_demo_and_its_crashing_child(tmp_path: Path) -> None:
    """The crashing child is started on the copy the parent runs: the zip."""
    archive = _zipped_copy(tmp_path)
    done = _run_from_zip(archive, ["demo", "--db", "demo.db"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert done.stdout.count("*** the process dies here (os._exit)") == 2
    assert "recovered 2 saga(s): 1 completed, 1 compensated" in done.stdout
    listed = _run_from_zip(archive, ["list", "--db", "demo.db"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "A-1007" in listed.stdout


_ZIPPED_STORE_AND_CONSOLE = """
import asyncio, sys
sys.path.insert(0, {archive!r})
import fallback_saga
assert fallback_saga.__file__.startswith({archive!r}), fallback_saga.__file__
from fallback_saga import SagaStatus, SQLiteSagaStore
from fallback_saga.console.saga_page import _alert
from fallback_saga.testing import entry

async def main():
    # The writer process imports the package as its parent found it.
    async with SQLiteSagaStore("sagas.db", writer="process") as store:
        await store.create("f-1", "OrderSaga", "fp", {{}}, [entry(0, "A")],
                           status=SagaStatus.FAILED)
        print((await store.load("f-1")).status.name)
        print(_alert(await store.load("f-1")))

asyncio.run(main())
"""


def test_a_zipped_copy_runs_the_writer_process_and_renders_the_console(tmp_path: Path) -> None:
    archive = _zipped_copy(tmp_path)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         _ZIPPED_STORE_AND_CONSOLE.format(archive=str(archive))],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("FAILED\n")
    assert "retry-unwinding f-1" in done.stdout
