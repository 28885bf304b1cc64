"""Every count agrees with the listing (S12): a saga in flight that the
claim skips as corrupt, and that ``list_sagas`` leaves out as unreadable,
is not counted as a saga of its status either — by ``count_sagas`` (every
path: whole, by name, a time window of most sagas or of few, ``at_most``),
the console's counts (list page, ``/api/sagas``) or ``/metrics``. The
operator is shown that such rows exist: ``count_sagas``'s ``unreadable``,
the console's note and ``counts_unreadable``, and the
``fallback_saga_sagas_unreadable`` gauge.

Before: a row claimed 9223372036854775807 times (another tool's write) was
counted as a running saga from the index, while every reader called it
corrupt — a card saying "3 running" over a list of two.
PostgreSQL's cases: ``test_s12_counts_agree_with_listing_postgres``.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers_console import fetch
from prometheus_text import parse_exposition
from test_unleasable_rows_shown import SQLITE_CORRUPTIONS, _sqlite_store

from fallback_saga.console import ConsoleServer
from fallback_saga.errors import CorruptSagaRecord
from fallback_saga.status import SagaStatus
from fallback_saga.store.sqlite import SQLiteSagaStore

# Every condition SQLite's claim skips a saga in flight for (the readers'
# predicate, _sqlite_unleasable), as a SET clause on the saga 'bad'.
CORRUPTIONS = {
    **{name: mutation for name, (mutation, _) in SQLITE_CORRUPTIONS.items()},
    "updated-infinite": "updated_at = -9e999",
    "expiry-blob": "lease_expires_at = X'00'",
    "claims-real": "unreleased_claims = 2.5",
    "id-empty": "saga_id = ''",
    "id-blob": "saga_id = X'626164'",
    "id-not-utf8": "saga_id = CAST(X'62ff64' AS TEXT)",
    "id-nul": "saga_id = 'b' || char(0) || 'd'",
    "id-too-long": "saga_id = printf('%.1000c', 'b')",
    "owner-blob": "lease_owner = X'6f'",
    "owner-not-utf8": "lease_owner = CAST(X'6fff' AS TEXT)",
    "owner-not-utf8-after-nul": "lease_owner = CAST(X'6f00ff' AS TEXT)",
}

# The creation times 'good-1', 'bad', 'good-2' are given, and the windows
# asked about: of most sagas (the count reads the rows outside it), of few
# (the rows inside), of 'bad' alone, before it.
WINDOWS = [(None, None), (150.0, None), (190.0, 210.0), (None, 150.0), (150.0, 250.0)]


async def listed_counts(store: Any, **filters: Any) -> Counter[tuple[str, SagaStatus]]:
    """The sagas ``list_sagas`` shows, by (name, status): what the counts must say."""
    listed = await store.list_sagas(limit=1000, **filters)
    return Counter((summary.saga_name, summary.status) for summary in listed)


async def check_counts_agree(store: Any, status: SagaStatus, unreadable: int) -> None:
    """``count_sagas`` says what the listing shows, by every path; and how
    many rows it left out as unreadable."""
    for since, until in WINDOWS:
        for name in (None, "OrderSaga"):
            filters = {"saga_name": name, "created_since": since, "created_until": until}
            expected = await listed_counts(store, **filters)
            counted = await store.count_sagas(**filters)
            assert dict(counted) == dict(expected), (filters, counted)
            # Up to a bound the readable sagas stay within: exact, not "more".
            bounded = await store.count_sagas(**filters, at_most=2)
            assert dict(bounded) == dict(expected), (filters, "at_most=2", bounded)
    whole = await store.count_sagas()
    assert whole == {("OrderSaga", status): 2}
    assert whole.unreadable == unreadable
    # A bound the readable sagas pass: more than it, as before.
    assert sum((await store.count_sagas(at_most=1)).values()) > 1


async def check_console_counts(store: Any, status: SagaStatus, unreadable: int) -> None:
    """The console's cards, its JSON counts and /metrics: the listing's two,
    and the unreadable figure beside them."""
    async with ConsoleServer(store, port=0) as server:
        api = (await fetch(server.url + "api/sagas")).json()
        assert api["counts"][status.value] == 2
        assert len(api["sagas"]) == 2
        assert api["counts_by_name"] == [
            {"saga_name": "OrderSaga", "status": status.value, "count": 2}]
        assert api["counts_unreadable"] == unreadable
        page = (await fetch(server.url)).body.decode()
        assert f"{unreadable} saga{'' if unreadable == 1 else 's'} in the store" in page
        assert "unreadable" in page
        by_status = (await fetch(server.url + f"api/sagas?status={status.value}")).json()
        assert by_status["counts"][status.value] == len(by_status["sagas"]) == 2
        metrics = parse_exposition((await fetch(server.url + "metrics")).body.decode())
        values = {(s.labels["saga_name"], s.labels["status"]): s.value
                  for s in metrics["fallback_saga_sagas"].samples}
        assert values[("OrderSaga", status.value)] == 2
        (gauge,) = metrics["fallback_saga_sagas_unreadable"].samples
        assert gauge.value == unreadable
        assert metrics["fallback_saga_sagas_unreadable"].type == "gauge"


def _spread_creation(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sagas SET created_at = 100 + 100 * (rowid - 1)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_s12_sqlite_counts_leave_out_what_the_listing_leaves_out(
    tmp_path: Path, corruption: str, status: SagaStatus
) -> None:
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, CORRUPTIONS[corruption], status)
    _spread_creation(path)
    async with SQLiteSagaStore(path) as store:
        assert len(await store.list_sagas(limit=10)) == 2  # the readers' verdict
        await check_counts_agree(store, status, unreadable=1)
    async with SQLiteSagaStore(path, read_only=True) as store:
        await check_console_counts(store, status, unreadable=1)


async def test_s12_sqlite_unreadable_counts_every_row_the_counts_leave_out(
    tmp_path: Path,
) -> None:
    """A status the store does not write, a name that is no text: left out
    of the counts before, without a figure; now counted as unreadable too."""
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, "fence = 'x'", SagaStatus.RUNNING)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sagas SET status = 'paused' WHERE saga_id = 'good-1'")
    conn.execute("UPDATE sagas SET saga_name = X'00' WHERE saga_id = 'good-2'")
    conn.commit()
    conn.close()
    async with SQLiteSagaStore(path) as store:
        assert await store.list_sagas(limit=10) == []
        counted = await store.count_sagas()
        assert counted == {}
        assert counted.unreadable == 3


@pytest.mark.parametrize("status", [SagaStatus.COMPLETED, SagaStatus.FAILED])
async def test_s12_sqlite_a_finished_saga_keeps_its_count(
    tmp_path: Path, status: SagaStatus
) -> None:
    """The claim reads sagas in flight only: a finished saga whose lease
    columns another tool wrote is listed, and counted, as before."""
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, "unreleased_claims = 9223372036854775807, fence = 'x'", status)
    async with SQLiteSagaStore(path) as store:
        assert len(await store.list_sagas(limit=10)) == 3
        counted = await store.count_sagas()
        assert counted == {("OrderSaga", status): 3}
        assert counted.unreadable == 0
        assert await store.count_sagas(at_most=2) == {("OrderSaga", status): 3}


# --------------------------------------------------------------------------- claim_saga

_LEASE_COLUMNS = (
    "SELECT lease_owner, lease_expires_at, fence, unreleased_claims, lease_written_at"
    " FROM sagas WHERE saga_id = 'bad'"
)
# The conditions a saga id 'bad' keeps (claim_saga looks a saga up by a valid id).
BY_ID = {
    name: (mutation, words) for name, (mutation, words) in {
        **SQLITE_CORRUPTIONS,
        "updated-infinite": ("updated_at = -9e999",
                             "its updated_at or lease_expires_at is not a finite number"),
        "expiry-held-infinite": ("lease_owner = 'gone', lease_expires_at = 9e999",
                                 "its updated_at or lease_expires_at is not a finite number"),
        "expiry-blob": ("lease_expires_at = X'00'",
                        "its updated_at or lease_expires_at is not a finite number"),
        "claims-real": ("unreleased_claims = 2.5", "its unreleased_claims is not an integer"),
        "owner-blob": ("lease_owner = X'6f'", "its lease_owner is not text (a bytes)"),
        "owner-not-utf8": ("lease_owner = CAST(X'6fff' AS TEXT)",
                           "its lease_owner is text that is not valid UTF-8"),
    }.items()
}


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
@pytest.mark.parametrize("corruption", list(BY_ID))
async def test_s12_sqlite_claim_by_id_refuses_a_row_the_claim_skips_as_corrupt(
    tmp_path: Path, corruption: str, status: SagaStatus
) -> None:
    """``claim_saga`` (``Saga.resume``, the CLI's ``resume``): every condition
    the claim skips a saga in flight for is ``CorruptSagaRecord`` with the
    readers' reason, word for word (what ``load`` says); the row is left as
    it was — never leased (an updated_at that is text was), never SagaBusy."""
    mutation, words = BY_ID[corruption]
    path = tmp_path / "sagas.db"
    await _sqlite_store(path, mutation, status)
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord) as loaded:
            await store.load("bad")
        assert loaded.value.reason == words  # the readers' reason
        conn = sqlite3.connect(path)
        conn.text_factory = bytes
        before = conn.execute(_LEASE_COLUMNS).fetchone()
        with pytest.raises(CorruptSagaRecord, match=r"'bad'") as raised:
            await store.claim_saga("bad", owner="operator", lease_seconds=60)
        assert raised.value.reason == words
        assert conn.execute(_LEASE_COLUMNS).fetchone() == before
        conn.close()
        lease = await store.claim_saga("good-1", owner="operator", lease_seconds=60)
        await store.release(lease)


# --------------------------------------------------------------------------- any status

# What the listing leaves out of a saga of any status, finished or in flight
# (``_sqlite_reads._summary``), as a SET clause on the saga 'bad'. Found by
# the row-mutation fuzz (seed 982003: a created_at that is not UTF-8 text —
# counted as a running saga, and every count with a time window raised).
ANY_STATUS_CORRUPTIONS = {
    "created-not-utf8": "created_at = CAST(X'c3' AS TEXT)",
    "created-text": "created_at = 'x'",
    "created-infinite": "created_at = 9e999",
    "updated-text": "updated_at = 'x'",
    "id-blob": "saga_id = X'626164'",
    "owner-blob": "lease_owner = X'6f'",
    "expiry-text": "lease_owner = 'o', lease_expires_at = 'x'",
}
_LEASE_ONLY = ("owner-blob", "expiry-text")


@pytest.mark.parametrize("status", [SagaStatus.RUNNING, SagaStatus.COMPLETED])
@pytest.mark.parametrize("corruption", list(ANY_STATUS_CORRUPTIONS))
async def test_s12_sqlite_counts_leave_out_a_row_the_listing_leaves_out_whatever_its_status(
    tmp_path: Path, corruption: str, status: SagaStatus
) -> None:
    """Every count form (whole, by name, time windows, ``at_most``) against
    the listing paged through, and ``unreadable`` against the rows in the
    table less the sagas listed (the fuzz's check, ``count_problems``)."""
    from helpers_row_fuzz import count_problems
    from test_row_mutation_fuzz import count_rows

    path = tmp_path / "sagas.db"
    await _sqlite_store(path, "fence = fence", status)
    _spread_creation(path)
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE sagas SET {ANY_STATUS_CORRUPTIONS[corruption]} WHERE saga_id = 'bad'")
    conn.commit()
    conn.close()
    # A finished saga's lease, which no claim reads, is shown as none when
    # it cannot be read (as its count of claims): listed and counted.
    shown = 3 if corruption in _LEASE_ONLY and status is SagaStatus.COMPLETED else 2
    async with SQLiteSagaStore(path) as store:
        listed = await store.list_sagas(limit=10)
        assert len(listed) == shown  # the readers' verdict
        assert await count_problems(store, lambda shown: count_rows(path, shown), "") == []
        counted = await store.count_sagas()
        assert counted == {("OrderSaga", status): shown}
        assert counted.unreadable == 3 - shown
    if shown == 3:
        assert [summary.lease_expires_at for summary in listed] == [None] * 3


# --------------------------------------------------------------------------- at_most

# Rows of a finished status the listing leaves out, each as (saga_id,
# saga_name, created_at, updated_at) SQL: a time that is no finite number,
# an id that is no text, a name that is no text (or not UTF-8). (A number
# in a TEXT column is stored as text: listed.)
_FINISHED_UNLISTED = [
    ("'u-created-inf'", "'OrderSaga'", "9e999", "1"),
    ("'u-created-text'", "'OrderSaga'", "'x'", "1"),
    ("'u-created-not-utf8'", "'OrderSaga'", "CAST(X'c3' AS TEXT)", "1"),
    ("'u-updated-text'", "'OrderSaga'", "{created}", "'x'"),
    ("'u-updated-minus-inf'", "'OrderSaga'", "{created}", "-9e999"),
    ("X'7531'", "'OrderSaga'", "{created}", "1"),  # an id that is a BLOB
    ("NULL", "'OrderSaga'", "{created}", "1"),  # no id (a TEXT key may be NULL)
    ("'u-name-blob'", "X'6e'", "{created}", "1"),
    ("'u-name-not-utf8'", "CAST(X'6eff' AS TEXT)", "{created}", "1"),
]


def _another(saga_id: str) -> str:
    """Another id of the same kind as ``saga_id`` (SQL)."""
    if saga_id.startswith("'"):
        return saga_id[:-1] + "-again'"
    return "X'7532'" if saga_id.startswith("X") else saga_id


async def _finished_with_unlisted(path: Path) -> None:
    """A file of COMPLETED sagas: the unlisted rows first (the oldest, so
    that a walk of a status meets them first), then 12 listed sagas of two
    names, then the unlisted rows again (the newest); creation times 10 apart."""
    async with SQLiteSagaStore(path):
        pass
    conn = sqlite3.connect(path)
    rows = [*_FINISHED_UNLISTED,
            *((f"'ok-{n}'", "'OrderSaga'" if n % 3 else "'BillingSaga'", "{created}", "1")
              for n in range(12)),
            *((_another(saga_id), name, created, updated)
              for saga_id, name, created, updated in _FINISHED_UNLISTED)]
    with conn:
        for n, (saga_id, name, created, updated) in enumerate(rows):
            conn.execute(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                f" created_at, updated_at) VALUES ({saga_id}, {name}, 'f', 'completed', '{{}}',"
                f" 1, {created.format(created=n * 10)}, {updated})")
    conn.close()


async def test_s12_sqlite_a_capped_count_of_a_finished_status_counts_past_its_unlisted_rows(
    tmp_path: Path,
) -> None:
    """``at_most``, of a status not in flight: walked from the index alone,
    its unlisted rows (sought by index, or a name that is no text) taken
    off — a walk that met k of them goes k further. Whatever the bound,
    the name and the window: exact up to the bound, at_most + 1 past it,
    each name at most the listing's (``counts_disagree``)."""
    from helpers_row_fuzz import CountFilter, check_capped_counts

    path = tmp_path / "sagas.db"
    await _finished_with_unlisted(path)
    async with SQLiteSagaStore(path) as store:
        await check_capped_counts(store, [
            CountFilter(), CountFilter(saga_name="OrderSaga"),
            CountFilter(created_since=95.0), CountFilter(created_until=195.0),
            CountFilter(saga_name="OrderSaga", created_since=95.0, created_until=205.0),
        ])


@pytest.mark.xfail(strict=True, reason="a finished saga's id that is text not UTF-8: found by"
                   " no index (it sorts among the others' by its bytes)")
@pytest.mark.parametrize("at_most", [None, 5])
async def test_s12_sqlite_counts_leave_out_a_finished_saga_whose_id_is_not_utf8(
    tmp_path: Path, at_most: int | None
) -> None:
    """Left open: the listing leaves such a saga out, every count counts it
    (a count without a bound as before; a bounded one since it walks a
    finished status from the index alone — it read each row before)."""
    path = tmp_path / "sagas.db"
    async with SQLiteSagaStore(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        for n, saga_id in enumerate(["'a'", "CAST(X'62ff64' AS TEXT)", "'c'"]):
            conn.execute(
                "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
                f" created_at, updated_at) VALUES ({saga_id}, 'OrderSaga', 'f', 'completed',"
                f" '{{}}', 1, {n}, 1)")
    conn.close()
    async with SQLiteSagaStore(path) as store:
        assert len(await store.list_sagas()) == 2
        counted = await store.count_sagas(at_most=at_most)
        assert counted == {("OrderSaga", SagaStatus.COMPLETED): 2}
