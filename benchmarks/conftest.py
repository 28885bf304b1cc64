"""Fixtures for the pytest-benchmark suite in this directory."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The working tree's package (even when not pip-installed), and this
# directory's helper modules (fs_sagas, workloads).
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop reused by every round of every benchmark in a module."""
    ev = asyncio.new_event_loop()
    try:
        yield ev
    finally:
        ev.close()
