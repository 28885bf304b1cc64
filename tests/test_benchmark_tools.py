"""The benchmark harness's pieces that reach into the store's internals
(they break silently when those change: ``compare.py --profile durable``
printed "n/a" for its writer-side section after the loop waker landed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def durable_profile(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import durable_profile

    yield durable_profile
    sys.modules.pop("durable_profile", None)


def test_the_durable_profile_times_the_writer_alone(
    durable_profile: Any, tmp_path: Path
) -> None:
    """Section 4 of ``compare.py --profile durable``: the writer thread's
    transactions called with no event loop, settled into nothing."""
    cpu, wall = durable_profile.writer_alone_us(str(tmp_path), "normal", waves=1)
    assert cpu > 0
    assert wall > 0
