"""The store contract suite (``fallback_saga.testing``) run against our own stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fallback_saga import MemorySagaStore
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import RecoverableStoreContract, SagaStoreContract


class TestMemorySagaStore(SagaStoreContract):
    @pytest.fixture
    def store(self) -> MemorySagaStore:
        return MemorySagaStore()


class TestSQLiteSagaStore(RecoverableStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
            yield store


class TestSQLiteSagaStoreWriterProcess(RecoverableStoreContract):
    """Journal writes committed by a process of their own (``writer="process"``)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="process") as store:
            yield store


class TestSQLiteSagaStoreWriterInline(RecoverableStoreContract):
    """No thread: each request runs on the calling thread (``writer="inline"``)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="inline") as store:
            yield store


class TestSQLiteSagaStoreSynchronousNormal(RecoverableStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", synchronous="normal") as store:
            yield store


class TestSQLiteSagaStoreInMemory(RecoverableStoreContract):
    """``:memory:`` works too (one connection serves reads and writes)."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(":memory:") as store:
            yield store
