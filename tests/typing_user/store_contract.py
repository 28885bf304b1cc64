"""A third-party store checked with the contract suite of ``fallback_saga.testing``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import assert_type

import pytest

from fallback_saga import JournalEntry, MemorySagaStore, SQLiteSagaStore, StepStatus
from fallback_saga.testing import RecoverableStoreContract, SagaStoreContract, entry


class TestMemoryStore(SagaStoreContract):
    @pytest.fixture
    def store(self) -> MemorySagaStore:
        return MemorySagaStore()


class TestMySQLiteStore(RecoverableStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        store = SQLiteSagaStore(tmp_path / "sagas.db")
        await store.open()
        yield store
        await store.close()


def test_entry_helper() -> None:
    made = entry(0, "reserve", StepStatus.COMPLETED, attempt=2, error=None)
    assert_type(made, JournalEntry)
    assert made.attempt == 2
