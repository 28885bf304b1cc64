"""The files a SQLite store creates are its owner's alone (S12: the journal
holds every saga's context -- payments, addresses -- and must not be
world-readable because of the process's umask). A file that already exists
keeps the mode its owner gave it (an operator's group may read it, say)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fallback_saga import SagaStatus, SQLiteCircuitStateStore, SQLiteSagaStore
from fallback_saga.testing import entry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: new files world-readable
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _group_and_others(path: Path) -> int:
    return _mode(path) & 0o077


@pytest.mark.parametrize("writer", ["thread", "inline", "process"])
async def test_S12_a_new_saga_store_file_and_its_wal_are_private(
    tmp_path: Path, writer: str
) -> None:
    path = tmp_path / "payments.db"
    async with SQLiteSagaStore(path, writer=writer) as store:
        await store.create("pay-1", "PaymentSaga", "fp", {"card": "4111"}, [entry(0, "a")])
        await store.append("pay-1", [], status=SagaStatus.COMPLETED)
        await store.load("pay-1")
        names = [name for name in os.listdir(tmp_path) if name.startswith("payments.db")]
        assert set(names) >= {"payments.db", "payments.db-wal"}  # while it is open
        for name in names:
            assert _group_and_others(tmp_path / name) == 0, (name, oct(_mode(tmp_path / name)))


async def test_S12_a_store_whose_first_request_is_a_read_creates_a_private_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "payments.db"
    async with SQLiteSagaStore(path) as store:
        assert await store.list_sagas() == []
    assert _group_and_others(path) == 0


def test_S12_a_new_circuit_state_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "breakers.db"
    store = SQLiteCircuitStateStore(path)
    try:
        store.read("payments")
    finally:
        store.close()
    assert _group_and_others(path) == 0


async def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "payments.db"
    path.touch()
    path.chmod(0o640)
    async with SQLiteSagaStore(path) as store:
        await store.create("pay-1", "PaymentSaga", "fp", {}, [entry(0, "a")])
    assert _mode(path) == 0o640
