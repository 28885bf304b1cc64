"""An operator's app module, written to a temporary folder and imported, for
the CLI tests (``--app module:attr`` needs a real module on ``sys.path``)."""

from __future__ import annotations

import importlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

_module_numbers = itertools.count()


def import_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, prefix: str
) -> Iterator[ModuleType]:
    """Yield ``source`` imported as a module of its own name (one per call: the
    import cache holds no state between tests); forget it afterwards."""
    name = f"{prefix}_{os.getpid()}_{next(_module_numbers)}"
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)
