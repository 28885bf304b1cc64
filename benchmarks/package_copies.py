"""Import another copy of the package next to this tree's, in one process.

The versus benchmarks (``versus_release.py``, ``long_groups_versus.py``,
``parallel_groups.py --versus``, ``sqlite_writer_statements.py``) time two
trees side by side, because timings taken in separate runs on a shared
machine drift more than the differences they look for. The package is
vendorable (relative imports only), so a copy imports under any top-level
name and its modules never mix with this tree's ``fallback_saga``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType


def import_package_as(folder: Path, name: str) -> ModuleType:
    """Import the package folder ``folder`` (in place) as the top-level
    package ``name``; its submodules import as ``name.…``."""
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_copy(folder: Path, into: Path, name: str = "fallback_saga_baseline") -> ModuleType:
    """Copy the package folder ``folder`` to ``into / name`` and import the
    copy as ``name`` (a folder of the same name as this tree's package
    imports without shadowing it)."""
    target = into / name
    shutil.copytree(folder, target)
    return import_package_as(target, name)
