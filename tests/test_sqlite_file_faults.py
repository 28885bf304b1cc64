"""A SQLite store under file-system faults other than a full disk
(``test_sqlite_full_disk.py``), each injected for real, for each writer
(``thread``, ``process``, ``inline``):

* a store named by a relative path, and the program's ``os.chdir``;

What is promised (S13): no caller is told a status the journal does not
hold, no step runs without its STARTED row, a write SQLite refused before
it could commit is reported as not written (not "in doubt"), the error says
what is wrong and what to do, and once the fault is gone the same store
goes on and ``recover()`` finishes the interrupted sagas, each step applied
once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers_ledger import Ctx, ledger_saga

from fallback_saga import (
    SagaStatus,
    SQLiteSagaStore,
)

WRITERS = ["thread", "process", "inline"]


def stored(db: Path) -> dict[str, str]:
    """Each saga's status in the file, read with plain SQL."""
    conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT saga_id, status FROM sagas").fetchall())
    finally:
        conn.close()


# ------------------------------------------------------------------ a relative path


@pytest.mark.parametrize("writer", WRITERS)
async def test_S13_a_store_named_by_a_relative_path_keeps_to_its_file_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """The store's connections open late (at the first request, the reader's
    at its first read, the writer process at its start): a relative path
    read then named a file in whatever directory the program had moved to
    (a daemon's ``chdir("/")``), and the journal went there."""
    home, elsewhere, later = (tmp_path / name for name in ("home", "elsewhere", "later"))
    for directory in (home, elsewhere, later):
        directory.mkdir()
    monkeypatch.chdir(home)
    store = SQLiteSagaStore("sagas.db", writer=writer)
    ledger: list[tuple[str, str]] = []
    try:
        monkeypatch.chdir(elsewhere)
        saga = ledger_saga(ledger)(store=store)
        await saga.run(Ctx(order_id="1"), saga_id="s-1")
        monkeypatch.chdir(later)
        await saga.run(Ctx(order_id="2"), saga_id="s-2")
        assert (await store.load("s-1")).status is SagaStatus.COMPLETED
        assert [s.saga_id for s in await store.list_sagas()] == ["s-2", "s-1"]
    finally:
        await store.close()
    assert stored(home / "sagas.db") == {"s-1": "completed", "s-2": "completed"}
    assert not (elsewhere / "sagas.db").exists()
    assert not (later / "sagas.db").exists()
