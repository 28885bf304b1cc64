"""A row the claim skips as corrupt is shown as corrupt by every reader (S12).

A SQLite store's ``claim`` (``_claim``) and a PostgreSQL store's
(``unclaimable``) leave out a saga in flight whose row they cannot lease —
a fence or a count of claims at its largest or of the wrong type, a time
that is not a finite number — and ``recover()`` reports it as skipped,
"its row is unreadable: ...". The operator's views said otherwise: a
SQLite row claimed 9223372036854775807 times was listed by ``list_sagas``,
the CLI's ``list`` and ``show`` and the console as an ordinary saga,
"parked: claimed 9223372036854775807 times".

Every condition each claim skips a row for, mutated in SQL, against every
reader: the store's listing (left out, with a warning naming the saga and
the claim's reason; the other sagas listed), ``load`` and ``load_window``
(``CorruptSagaRecord`` with that reason), the CLI's ``list`` (plain and
``--json``) and ``show``, and the console's list page, its JSON API and its
saga page. PostgreSQL's cases run on a throwaway cluster (``pg_fixtures``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_console import fetch

from fallback_saga import CorruptSagaRecord
from fallback_saga.cli import main as cli_main
from fallback_saga.console import ConsoleServer
from fallback_saga.status import SagaStatus
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import entry

_IDS = ("good-1", "bad", "good-2")

# (SET clause, the words of the claim's reason). Each is a condition under
# which SQLite's _claim skips the row (see _sqlite_unleasable).
SQLITE_CORRUPTIONS = {
    "fence-largest": ("fence = 9223372036854775807", "its fence is too large to be counted on"),
    "fence-text": ("fence = 'x'", "its fence is not an integer"),
    "fence-real": ("fence = 1.5", "its fence is not an integer"),
    "claims-largest": ("unreleased_claims = 9223372036854775807",
                       "its unreleased_claims is too large to be counted on"),
    "claims-text": ("unreleased_claims = 'x'", "its unreleased_claims is not an integer"),
    "expiry-text": ("lease_expires_at = 'soon'",
                    "its updated_at or lease_expires_at is not a finite number"),
    "expiry-infinite": ("lease_expires_at = 9e999",
                        "its updated_at or lease_expires_at is not a finite number"),
    "updated-text": ("updated_at = 'x'",
                     "its updated_at or lease_expires_at is not a finite number"),
}


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        yield caplog


async def _sqlite_store(path: Path, mutation: str, status: SagaStatus) -> None:
    async with SQLiteSagaStore(path) as store:
        for saga_id in _IDS:
            await store.create(saga_id, "OrderSaga", "fp", {"n": 1}, [entry(0, "a")])
            if status is not SagaStatus.RUNNING:
                await store.append(saga_id, [], status=status)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sagas SET updated_at = 0")  # long due, whatever the clock says
    conn.execute(f"UPDATE sagas SET {mutation} WHERE saga_id = 'bad'")
    conn.commit()
    conn.close()


async def _claim_reason(store: Any) -> str:
    """What the store's claim says of 'bad' (and that it leased the others)."""
    from fallback_saga.store._skipped_rows import collecting

    with collecting() as skipped:
        leases = await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10)
    assert sorted(lease.saga_id for lease in leases) == ["good-1", "good-2"]
    for lease in leases:
        await store.release(lease, ran=False)
    ((saga_id, reason),) = skipped
    assert saga_id == "bad"
    assert reason.startswith("its row is unreadable: ")
    return reason.removeprefix("its row is unreadable: ")


async def check_store_readers(store: Any, reason: str,
                              warnings: pytest.LogCaptureFixture) -> None:
    """``list_sagas``, ``load`` and ``load_window`` say what the claim says."""
    warnings.clear()
    listed = await store.list_sagas(limit=10)
    assert [s.saga_id for s in listed] == ["good-2", "good-1"]
    said = [r.getMessage() for r in warnings.records
            if "skipping a saga in the listing" in r.getMessage()]
    assert len(said) == 1, said
    assert "'bad'" in said[0]
    assert reason in said[0]
    for status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        by_status = await store.list_sagas(status=status, limit=10)
        assert "bad" not in [s.saga_id for s in by_status]
    with pytest.raises(CorruptSagaRecord, match=r"'bad'") as raised:
        await store.load("bad")
    assert raised.value.reason == reason
    with pytest.raises(CorruptSagaRecord, match=r"'bad'") as raised:
        await store.load_window("bad", start=0, count=10)
    assert raised.value.reason == reason
    await store.load("good-1")  # the others still read


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(argv)
    return status, out.getvalue(), err.getvalue()


def check_cli(options: list[str], reason: str) -> None:
    status, out, _ = _cli(["list", *options])
    assert status == 0
    assert "good-1" in out
    assert "good-2" in out
    assert "bad" not in out
    assert "parked" not in out
    status, out, _ = _cli(["list", "--json", *options])
    assert status == 0
    assert [s["saga_id"] for s in json.loads(out)] == ["good-2", "good-1"]
    status, out, err = _cli(["show", "bad", *options])
    assert status != 0
    assert "parked" not in out + err
    assert "'bad'" in err
    assert "unreadable" in err
    assert reason in err
    status, out, err = _cli(["show", "bad", "--json", *options])
    assert status != 0
    assert reason in err


async def check_console(store: Any, reason: str) -> None:
    async with ConsoleServer(store, port=0) as server:
        page = await fetch(server.url)
        assert page.status == 200
        text = page.body.decode()
        assert "good-1" in text
        assert "parked" not in text
        assert ">bad<" not in text
        api = await fetch(server.url + "api/sagas")
        assert api.status == 200
        assert [s["saga_id"] for s in json.loads(api.body)["sagas"]] == ["good-2", "good-1"]
        one = await fetch(server.url + "api/sagas/bad")
        assert one.status not in (200, 404)
        assert one.status < 500
        assert reason in one.body.decode()
        saga_page = await fetch(server.url + "sagas/bad")
        assert saga_page.status not in (200, 404)
        assert saga_page.status < 500
        assert "parked" not in saga_page.body.decode()


@contextlib.asynccontextmanager
async def _sqlite_open(path: Path, **options: Any) -> AsyncIterator[Any]:
    async with SQLiteSagaStore(path, **options) as store:
        yield store


# --------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
@pytest.mark.parametrize("corruption", list(SQLITE_CORRUPTIONS))
async def test_s12_sqlite_row_the_claim_skips_is_unreadable_to_the_store_readers(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, corruption: str, status: SagaStatus
) -> None:
    mutation, words = SQLITE_CORRUPTIONS[corruption]
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, mutation, status)
    async with SQLiteSagaStore(path) as store:
        reason = await _claim_reason(store)
        assert reason == words
        await check_store_readers(store, reason, warnings)


@pytest.mark.parametrize("corruption", list(SQLITE_CORRUPTIONS))
async def test_s12_sqlite_row_the_claim_skips_is_unreadable_to_the_cli_and_console(
    tmp_path: Path, corruption: str
) -> None:
    mutation, words = SQLITE_CORRUPTIONS[corruption]
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, mutation, SagaStatus.RUNNING)
    import asyncio

    await asyncio.to_thread(check_cli, ["--db", str(path)], words)
    async with SQLiteSagaStore(path, read_only=True) as store:
        await check_console(store, words)


async def test_s12_sqlite_a_saga_id_no_saga_can_have_is_left_out_of_the_listing(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    """An id check_saga_id refuses (empty: another tool wrote it): the
    claim skips it, and the listing names it as unreadable, for the same reason."""
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, "saga_id = ''", SagaStatus.RUNNING)
    async with SQLiteSagaStore(path) as store:
        from fallback_saga.store._skipped_rows import collecting

        with collecting() as skipped:
            await store.claim(owner="w", lease_seconds=60, older_than=0, limit=10)
        ((saga_id, reason),) = skipped
        assert saga_id == ""
        warnings.clear()
        listed = await store.list_sagas(limit=10)
        assert [s.saga_id for s in listed] == ["good-2", "good-1"]
        said = [r.getMessage() for r in warnings.records
                if "skipping a saga in the listing" in r.getMessage()]
        assert len(said) == 1
        assert "saga '' " in said[0]
        assert reason.removeprefix("its row is unreadable: ") in said[0]


@pytest.mark.parametrize("status", [SagaStatus.COMPLETED, SagaStatus.FAILED])
async def test_s12_sqlite_a_finished_saga_is_not_called_corrupt_for_what_the_claim_never_reads(
    tmp_path: Path, status: SagaStatus
) -> None:
    """The claim reads sagas in flight only: a finished saga whose lease
    columns another tool wrote is listed and loaded as before."""
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, "unreleased_claims = 9223372036854775807", status)
    async with SQLiteSagaStore(path) as store:
        assert len(await store.list_sagas(limit=10)) == 3
        assert (await store.load("bad")).status is status
