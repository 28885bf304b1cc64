"""Shared fixtures. Saga helpers live in ``helpers_saga.py``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from held_lock import HeldLock

import fallback_saga
from fallback_saga import SQLiteCircuitStateStore


@pytest.fixture(autouse=True)
def _no_real_sleep() -> Iterator[None]:
    """Retry policies compute their delays but never really wait in tests."""
    fallback_saga.set_testing(True)
    yield
    fallback_saga.set_testing(False)


@pytest.fixture
def circuit_file_store(tmp_path: Path) -> Iterator[SQLiteCircuitStateStore]:
    """A shared breaker's state store in a file of the test's own."""
    store = SQLiteCircuitStateStore(str(tmp_path / "breakers.db"))
    yield store
    store.close()


@pytest.fixture
def sqlite3_shell() -> str:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 command-line shell is not installed (apt-get install sqlite3)")
    return shell


@pytest.fixture
def locks() -> Iterator[list[HeldLock]]:
    """Another process's locks a test took (``HeldLock``): let go at its end."""
    held: list[HeldLock] = []
    yield held
    for lock in held:
        lock.release()
