"""Shared fixtures. Saga helpers live in ``helpers_saga.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import fallback_saga


@pytest.fixture(autouse=True)
def _no_real_sleep() -> Iterator[None]:
    """Retry policies compute their delays but never really wait in tests."""
    fallback_saga.set_testing(True)
    yield
    fallback_saga.set_testing(False)
