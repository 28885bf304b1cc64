"""PostgresSagaStore against a real, throwaway PostgreSQL server.

The store contract suite (``fallback_saga.testing``) runs against it three
ways: with its own pool, with a given autocommit pool, and with a given pool
of ordinary (transactional) connections. Then what only PostgreSQL has: the
schema and its migrations, concurrent starters, concurrent claimers, fencing
and lease renewal, the recovery index, group commit (a refused group is
retried write by write; an in-doubt one never), the executor and recovery on
top, connections killed under 40 sagas in flight, and the lazy import of the
driver.

The server is started once per session by the ``pg_cluster`` fixture
(``conftest_pg.py``, ``pg_cluster.py``); each test gets a schema of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Final

import pytest
from conftest_pg import require_driver

from fallback_saga import Saga, SagaContext, SagaFailed, SagaStatus, StepStatus, current_step
from fallback_saga.errors import (
    ContextSerializationError,
    CorruptSagaRecord,
    JournalConflict,
    LeaseLost,
    SagaAlreadyExists,
    SagaBusy,
    SagaNotFound,
    SagaStoreError,
)
from fallback_saga.recovery import recover
from fallback_saga.store.base import JournalEntry, Lease, RecoverableStore
from fallback_saga.testing import RecoverableStoreContract, entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402
import psycopg_pool  # noqa: E402

from fallback_saga.store import _postgres_pool  # noqa: E402
from fallback_saga.store import _postgres_schema as pg_schema_module  # noqa: E402
from fallback_saga.store import _postgres_sql as pg_sql  # noqa: E402
from fallback_saga.store.postgres import SCHEMA_VERSION, PostgresSagaStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fixtures


from pg_fixtures import postgres_store, raw_connection  # noqa: E402, F401  (fixtures store, raw)


async def new_saga(store: PostgresSagaStore, saga_id: str, **kwargs: Any) -> None:
    await store.create(saga_id, "OrderSaga", "fp", {"order_id": saga_id}, [entry(0, "a")], **kwargs)


# --------------------------------------------------------------------------- the contract


class TestPostgresSagaStore(RecoverableStoreContract):
    @pytest.fixture
    async def store(
        self, pg_conninfo: str, pg_schema: str
    ) -> AsyncIterator[PostgresSagaStore]:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            yield store


class TestPostgresSagaStoreOnAGivenPool(RecoverableStoreContract):
    @pytest.fixture
    async def store(
        self, pg_conninfo: str, pg_schema: str
    ) -> AsyncIterator[PostgresSagaStore]:
        pool = psycopg_pool.AsyncConnectionPool(
            pg_conninfo, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        try:
            async with PostgresSagaStore(pool, schema=pg_schema) as store:
                yield store
        finally:
            await pool.close()


class TestPostgresSagaStoreOnTransactionalConnections(RecoverableStoreContract):
    """A given pool whose connections are not autocommit: each write is then a
    transaction of its own."""

    @pytest.fixture
    async def store(
        self, pg_conninfo: str, pg_schema: str
    ) -> AsyncIterator[PostgresSagaStore]:
        pool = psycopg_pool.AsyncConnectionPool(pg_conninfo, min_size=1, max_size=4, open=False)
        await pool.open(wait=True)
        try:
            async with PostgresSagaStore(pool, schema=pg_schema) as store:
                yield store
        finally:
            await pool.close()


# --------------------------------------------------------------------------- import, construction


def test_importing_fallback_saga_does_not_import_the_driver() -> None:
    code = (
        "import sys, fallback_saga, fallback_saga.store, fallback_saga.testing, "
        "fallback_saga.recovery\n"
        "drivers = ('psycopg', 'psycopg_pool')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in drivers)\n"
        "assert not loaded, loaded\n"
        "assert 'PostgresSagaStore' not in dir(fallback_saga.store)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_the_driver_is_imported_when_the_store_module_is_used() -> None:
    code = (
        "import sys\n"
        "from fallback_saga.store.postgres import PostgresSagaStore\n"
        "assert 'psycopg' not in sys.modules\n"  # importing the module is not enough
        "PostgresSagaStore('host=127.0.0.1')\n"
        "assert 'psycopg' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_it_is_a_recoverable_store() -> None:
    assert isinstance(PostgresSagaStore("host=127.0.0.1"), RecoverableStore)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schema": "bad; DROP TABLE x"}, "schema"),
        ({"schema": ""}, "schema"),
        ({"synchronous_commit": "maybe"}, "synchronous_commit"),
        ({"min_size": 3, "max_size": 2}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"connect_timeout": 0}, "connect_timeout"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostgresSagaStore("host=127.0.0.1", **kwargs)


def test_group_commit_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="group_commit"):
        PostgresSagaStore("host=127.0.0.1", group_commit="yes")  # type: ignore[arg-type]


def test_neither_conninfo_nor_pool_is_refused() -> None:
    with pytest.raises(TypeError, match="conninfo"):
        PostgresSagaStore(42)  # type: ignore[arg-type]


def test_repr_never_shows_the_password() -> None:
    store = PostgresSagaStore("host=127.0.0.1 password=hunter2", schema="app")
    assert "hunter2" not in repr(store)
    assert "app" in repr(store)


# --------------------------------------------------------------------------- schema


async def test_schema_tables_and_indexes(store: PostgresSagaStore, raw: Any) -> None:
    assert SCHEMA_VERSION == 9
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchall() == [(9,)]
    columns = dict(
        raw.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'fallback_saga_sagas'"
        ).fetchall()
    )
    assert columns["context"] == "json"  # its text as written: jsonb reprints numbers
    assert columns["fence"] == "bigint"
    assert columns["lease_expires_at"] == "timestamp with time zone"
    assert columns["lease_written_at"] == "timestamp with time zone"  # clock steps (v5)
    assert columns["unreleased_claims"] == "integer"  # parking (v6)
    assert columns["claim_marker"] == "text"  # claims whose answer never came (v7)
    assert {"lease_owner", "version", "created_at", "updated_at"} <= set(columns)
    assert columns["touched_at"] == "timestamp with time zone"
    step_columns = dict(
        raw.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'fallback_saga_steps'"
        ).fetchall()
    )
    assert step_columns["result"] == "text"  # JSON text: jsonb refuses some escapes
    indexes = dict(
        raw.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        ).fetchall()
    )
    due = indexes["fallback_saga_sagas_due"]
    assert "(touched_at)" in due
    assert "WHERE (status = ANY (ARRAY['running'::text, 'compensating'::text]))" in due
    assert "fallback_saga_sagas_interrupted" not in indexes  # schema v2's, on updated_at
    # The operator's listings by status, and by name and status (v8).
    assert "(status, seq)" in indexes["fallback_saga_sagas_by_status"]
    assert "(saga_name, status, seq)" in indexes["fallback_saga_sagas_by_name_status"]
    options = raw.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'fallback_saga_sagas'::regclass"
    ).fetchone()
    assert options == (["fillfactor=70"],)  # room on each page for HOT updates
    # No index reads updated_at, version, journal_length or context: what an append changes.
    for definition in indexes.values():
        for column in ("updated_at", "version", "journal_length", "context"):
            assert column not in definition, definition
    assert "fallback_saga_steps_pkey" in indexes


async def test_the_recovery_query_uses_the_partial_index(
    store: PostgresSagaStore, raw: Any
) -> None:
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 'done-' || n, 'OrderSaga', 'fp', 'completed', '{}'"
        " FROM generate_series(1, 20000) n"
    )
    for n in range(5):
        await new_saga(store, f"running-{n}")
    raw.execute("ANALYZE fallback_saga_sagas")
    plan = "\n".join(
        row[0]
        for row in raw.execute(
            "EXPLAIN " + store._sql.claimable.replace("%s::float8", "-1").replace(
                "%s::bigint", "10"
            ).replace("%s::boolean", "false")
        ).fetchall()
    )
    assert "fallback_saga_sagas_due" in plan, plan
    assert "Sort" not in plan, plan  # oldest first in the index's own order: it stops at LIMIT
    leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
    assert sorted(lease.saga_id for lease in leases) == [f"running-{n}" for n in range(5)]


async def test_S10_a_named_claim_walks_the_partial_index_even_for_a_name_rare_in_the_statistics(
    store: PostgresSagaStore, raw: Any
) -> None:
    """A worker's claim (``claim(names=...)``) filters the walk of the index of
    sagas in flight, oldest first, and stops at its LIMIT — also for a name
    the statistics call rare (a new service's), for which the planner, left
    to itself, read the index by name (every saga of that name ever run,
    finished ones included) and sorted them."""
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 'done-' || n, 'OrderSaga', 'fp', 'completed', '{}'"
        " FROM generate_series(1, 20000) n"
    )
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 'billing-' || n, 'BillingSaga', 'fp', 'running', '{}'"
        " FROM generate_series(1, 2000) n"
    )
    for n in range(3):
        await new_saga(store, f"rare-{n}")
    raw.execute("UPDATE fallback_saga_sagas SET saga_name = 'Rare' WHERE saga_id LIKE 'rare-%'")
    raw.execute("ANALYZE fallback_saga_sagas")
    for name in ("Rare", "BillingSaga"):
        plan = "\n".join(
            row[0]
            for row in raw.execute(
                "EXPLAIN " + store._sql.claimable_named.replace("%s::float8", "-1").replace(
                    "%s::bigint", "10"
                ).replace("%s::boolean", "false").replace("%s::text[]", f"ARRAY['{name}']")
            ).fetchall()
        )
        assert "fallback_saga_sagas_due" in plan, plan
        assert "Sort" not in plan, plan
        assert "by_name" not in plan, plan
    leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10,
                               names=["Rare"])
    assert sorted(lease.saga_id for lease in leases) == [f"rare-{n}" for n in range(3)]


def _append_params(saga_id: str, *, status: str | None = None, after: int | None = None) -> Any:
    entries = pg_sql._entries_json(saga_id, [entry(1, "b")])
    return (status, '{"n": 1}', 1, saga_id, None, after, 1, entries)


async def test_an_append_within_a_second_of_the_last_is_a_hot_update(
    store: PostgresSagaStore, raw: Any
) -> None:
    """An append changes no indexed column while the saga's ``touched_at`` is
    less than a second old (its updated_at moves): PostgreSQL updates the
    row in place (HOT), adding no index entry. A status change (the partial
    index's predicate) is never HOT. The counts are this transaction's, and
    its ``now()`` is fixed: the ages are exact."""
    sql = store._sql
    counts = (
        "SELECT pg_stat_get_xact_tuples_updated('fallback_saga_sagas'::regclass),"
        " pg_stat_get_xact_tuples_hot_updated('fallback_saga_sagas'::regclass)"
    )
    await new_saga(store, "s-1")
    with raw.transaction():
        raw.execute("UPDATE fallback_saga_sagas SET touched_at = now() - interval '0.5 s'")
        assert raw.execute(counts).fetchone() == (1, 0)  # touched_at is indexed
        raw.execute(sql.append, _append_params("s-1", after=1))
        assert raw.execute(counts).fetchone() == (2, 1)
        raw.execute(sql.append, _append_params("s-1", status="completed"))
        assert raw.execute(counts).fetchone() == (3, 1)  # the status moved: not HOT
    record = await store.load("s-1")
    assert (record.status, len(record.history), record.version) == (SagaStatus.COMPLETED, 3, 3)


async def test_touched_at_moves_once_a_second_and_never_passes_updated_at(
    store: PostgresSagaStore, raw: Any
) -> None:
    """One transaction (one ``now()``), so the ages are exact."""
    sql = store._sql
    clocks = "SELECT now() - touched_at, now() - updated_at FROM fallback_saga_sagas"
    create = ("s-1", "OrderSaga", "fp", "running", "{}", 1,
              pg_sql._entries_json("s-1", [entry(0, "a")]))
    with raw.transaction():
        raw.execute(sql.create, create)
        assert raw.execute(clocks).fetchone() == (timedelta(0), timedelta(0))
        raw.execute("UPDATE fallback_saga_sagas SET touched_at = now() - interval '0.999 s'")
        raw.execute(sql.append, _append_params("s-1"))  # less than a second old: kept
        assert raw.execute(clocks).fetchone() == (timedelta(seconds=0.999), timedelta(0))
        raw.execute("UPDATE fallback_saga_sagas SET touched_at = now() - interval '1 s'")
        raw.execute(sql.append, _append_params("s-1"))  # a second old: moved
        assert raw.execute(clocks).fetchone() == (timedelta(0), timedelta(0))


async def test_claim_is_exact_on_updated_at_and_orders_by_touched_at(
    store: PostgresSagaStore, raw: Any
) -> None:
    """``touched_at`` may lag ``updated_at`` (by less than a second): the
    claim still takes only the sagas not updated for ``older_than`` (exact,
    on updated_at), oldest first by the index's clock."""
    for name, touched, updated in (
        ("lagging", 30, 3),  # written to 3 s ago: not due with older_than=10
        ("old", 40, 40),
        ("older", 50, 50),
        ("due", 20, 20),
    ):
        await new_saga(store, name)
        raw.execute(
            "UPDATE fallback_saga_sagas SET touched_at = now() - make_interval(secs => %s),"
            " updated_at = now() - make_interval(secs => %s) WHERE saga_id = %s",
            (touched, updated, name),
        )
    leases = await store.claim(owner="w", lease_seconds=60, older_than=10, limit=10)
    assert [lease.saga_id for lease in leases] == ["older", "old", "due"]


async def test_schema_v2_is_migrated_to_v3_in_place(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by schema v2 (recovery's index on updated_at):
    opening it adds ``touched_at`` (the sagas in flight take their
    updated_at; the others a constant, with no table rewrite), replaces the
    index, and every saga reads, claims and appends as before."""
    with monkeypatch.context() as v2:
        v2.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:2])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            for n in range(3):
                await new_saga(old, f"running-{n}")
            await new_saga(old, "done", status=SagaStatus.COMPLETED)
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (2,)
    raw.execute(
        "UPDATE fallback_saga_sagas SET updated_at = now() - make_interval(secs => 100 - n)"
        " FROM (VALUES ('running-0', 0), ('running-1', 2), ('running-2', 1)) AS v(id, n)"
        " WHERE saga_id = v.id"
    )
    relfile = raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone()
    before = {row[0]: row[1:] for row in raw.execute(
        "SELECT saga_id, status, updated_at, version FROM fallback_saga_sagas").fetchall()}

    with monkeypatch.context() as v3:  # v3's migration alone (v4 rewrites the table)
        v3.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:3])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as migrated:
            await migrated.open()
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (3,)
        # Not rewritten: the same file, the same rows.
        assert raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone() == (
            relfile
        )
        after = dict(raw.execute(
            "SELECT saga_id, touched_at = updated_at FROM fallback_saga_sagas").fetchall())
        assert after == {"running-0": True, "running-1": True, "running-2": True, "done": False}
        assert {row[0]: row[1:] for row in raw.execute(
            "SELECT saga_id, status, updated_at, version FROM fallback_saga_sagas").fetchall()
        } == before
        indexes = {row[0] for row in raw.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()").fetchall()}
        assert "fallback_saga_sagas_due" in indexes
        assert "fallback_saga_sagas_interrupted" not in indexes
        assert raw.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'fallback_saga_sagas'::regclass"
        ).fetchone() == (["fillfactor=70"],)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:  # and on to v4
        leases = await store.claim(owner="w", lease_seconds=60, older_than=10, limit=10)
        assert [lease.saga_id for lease in leases] == ["running-0", "running-2", "running-1"]
        await store.append("running-0", [entry(1, "b")], fence=leases[0])
        record = await store.load("running-0")
        assert [e.step for e in record.history] == ["a", "b"]
        assert (await store.load("done")).status is SagaStatus.COMPLETED


async def test_schema_v6_is_migrated_to_v7_in_place(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by schema v6 (no claim marker), with a saga leased
    by a v6 claim: opening it adds ``claim_marker`` (NULL: no claim to give
    back) without rewriting the table; the lease held stays held and fences
    as before, and claims and releases work as before."""
    with monkeypatch.context() as v6:
        v6.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:6])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            await new_saga(old, "leased")
            await new_saga(old, "free")
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (6,)
    # Leased as a v6 claim leased it (today's claim statement sets the marker).
    fence, expires = raw.execute(
        "UPDATE fallback_saga_sagas SET lease_owner = 'w',"
        " lease_expires_at = now() + interval '600 seconds', fence = fence + 1,"
        " lease_written_at = now(), unreleased_claims = unreleased_claims + 1"
        " WHERE saga_id = 'leased' RETURNING fence, extract(epoch FROM lease_expires_at)"
    ).fetchone()
    held = Lease("leased", "w", fence, float(expires))
    relfile = raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone()

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await store.open()
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone() == (
            relfile
        )
        assert raw.execute("SELECT claim_marker FROM fallback_saga_sagas").fetchall() == [
            (None,), (None,)
        ]
        await store.append(held.saga_id, [entry(1, "b")], fence=held)  # still its lease
        (other,) = await store.claim(owner="w2", lease_seconds=600, older_than=-1, limit=10)
        assert other.saga_id != held.saga_id  # the held lease is respected
        await store.release(held)
        assert (await store.lease_state(held.saga_id)).unreleased_claims == 0


async def test_schema_v3_is_migrated_to_v4_the_context_kept_as_json_text(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by schema v3 (contexts as jsonb): opening it turns
    the context column into json, in place and once; every saga reads as it
    read before (jsonb's form of its numbers: what it changed then stays
    changed), claims and appends as before, and from then on a context's
    numbers come back as they were written (S14)."""
    with monkeypatch.context() as v3:
        v3.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:3])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            await old.create("running", "OrderSaga", "fp", _AWKWARD_CONTEXT, [entry(0, "a")])
            await new_saga(old, "done", status=SagaStatus.COMPLETED)
            # This release's load reads the count of claims (schema v6) too,
            # for the claim's predicate (_postgres_unleasable); v3's read none.
            old._sql.load = old._sql.load.replace("s.unreleased_claims", "0")
            before = {saga_id: await old.load(saga_id) for saga_id in ("running", "done")}
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (3,)
    assert json.dumps(before["running"].context) != json.dumps(_AWKWARD_CONTEXT)  # jsonb's

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
            SCHEMA_VERSION,
        )
        (kind,) = raw.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = 'fallback_saga_sagas'"
            " AND column_name = 'context'"
        ).fetchone()
        assert kind == "json"
        for saga_id, record in before.items():
            after = await store.load(saga_id)
            assert json.dumps(after.context) == json.dumps(record.context)
            assert (after.status, after.history, after.version) == (
                record.status, record.history, record.version
            )
        (lease,) = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
        assert lease.saga_id == "running"
        await store.append("running", [entry(1, "b")], context=_AWKWARD_CONTEXT, fence=lease)
        record = await store.load("running")
        assert [e.step for e in record.history] == ["a", "b"]
        assert json.dumps(record.context) == json.dumps(_AWKWARD_CONTEXT)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as again:  # migrated once
        assert json.dumps((await again.load("running")).context) == json.dumps(_AWKWARD_CONTEXT)
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchall() == [
        (SCHEMA_VERSION,)
    ]


async def _groups_prepared_on(pool: Any) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements"
            " WHERE statement LIKE '%AS w(i int,%'"  # the group statement's writes
        )
        row = await cursor.fetchone()
        return int(row[0])


def _fill(raw: Any, rows: int) -> None:
    raw.execute(
        "INSERT INTO fallback_saga_sagas (saga_id, saga_name, fingerprint, status, context)"
        " SELECT 'done-' || n, 'OrderSaga', 'fp', 'completed', '{}'"
        " FROM generate_series(1, %s) n", (rows,),
    )
    raw.execute(
        "INSERT INTO fallback_saga_steps (saga_id, seq, position, step, branch, action,"
        " status, attempt, at) SELECT 'done-' || n, 0, 0, 'a', '', 'act', 'completed', 1, 0"
        " FROM generate_series(1, %s) n", (rows,),
    )
    raw.execute("ANALYZE fallback_saga_sagas")
    raw.execute("ANALYZE fallback_saga_steps")


async def test_group_statements_are_prepared_only_once_the_tables_are_big(
    pg_conninfo: str, pg_schema: str, raw: Any
) -> None:
    """The plan the server caches for a group statement while the tables are
    small scans them in full, and keeps doing so as they grow, until the
    next ANALYZE. So on fresh (or small) tables it is not prepared: each is
    planned for its own parameters. The store reads the tables' sizes again
    every ``size_check_every`` seconds; once both hold ``_PREPARE_FROM`` rows
    by the statistics, it is prepared (a cached plan) as psycopg does by
    default."""
    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=1, open=False, kwargs={"autocommit": True},
    )
    await pool.open(wait=True)

    async def groups(first: int) -> None:
        for n in range(first, first + 100, 10):  # psycopg prepares from the fifth run on
            await asyncio.gather(*(new_saga(store, f"s-{k}") for k in range(n, n + 10)))

    try:
        store = PostgresSagaStore(pool, schema=pg_schema)
        store.size_check_every = 0.0  # read the sizes again at every group
        await store.open()
        await groups(0)
        await asyncio.gather(*store._size_checks)
        assert store.stats.largest_group > 1
        assert await _groups_prepared_on(pool) == 0
        _fill(raw, _postgres_pool._PREPARE_FROM)
        await groups(100)  # the first check sees the new sizes
        await groups(200)
        assert await _groups_prepared_on(pool) > 0
        await store.close()
        # Opened on big tables: prepared from the start.
        store = PostgresSagaStore(pool, schema=pg_schema)
        await store.open()
        assert store._prepare is None
        await store.close()
    finally:
        await pool.close()


async def test_concurrent_starters_migrate_once(pg_conninfo: str, pg_schema: str, raw: Any) -> None:
    stores = [PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        await new_saga(stores[0], "saga-1")
        assert (await stores[-1].load("saga-1")).saga_name == "OrderSaga"
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    versions = raw.execute("SELECT id, version FROM fallback_saga_schema").fetchall()
    assert versions == [(1, SCHEMA_VERSION)]


async def test_opening_again_keeps_the_sagas(pg_conninfo: str, pg_schema: str) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await new_saga(store, "saga-1")
        await store.open()  # idempotent
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as again:
        assert [e.step for e in (await again.load("saga-1")).history] == ["a"]


async def test_a_new_schema_version_is_one_more_migration(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await new_saga(store, "saga-1")

    async def to_next(execute: Any, names: Any) -> None:
        await execute(f"ALTER TABLE {names.sagas} ADD COLUMN tenant text NULL")

    monkeypatch.setattr(pg_schema_module, "_MIGRATIONS", (*pg_schema_module._MIGRATIONS, to_next))
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        assert (await store.load("saga-1")).saga_name == "OrderSaga"
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
        SCHEMA_VERSION + 1,
    )
    assert raw.execute("SELECT tenant FROM fallback_saga_sagas").fetchall() == [(None,)]


async def test_a_failed_migration_leaves_the_schema_as_it_was(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await new_saga(store, "saga-1")

    async def broken_next(execute: Any, names: Any) -> None:
        await execute(f"ALTER TABLE {names.sagas} ADD COLUMN tenant text NULL")
        await execute("SELECT no_such_function()")

    monkeypatch.setattr(
        pg_schema_module, "_MIGRATIONS", (*pg_schema_module._MIGRATIONS, broken_next)
    )
    with pytest.raises(SagaStoreError, match="no_such_function"):
        await PostgresSagaStore(pg_conninfo, schema=pg_schema).open()
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
        SCHEMA_VERSION,
    )
    columns = raw.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'fallback_saga_sagas'"
    ).fetchall()
    assert ("tenant",) not in columns


async def test_a_newer_schema_is_refused(pg_conninfo: str, pg_schema: str, raw: Any) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema):
        pass
    raw.execute("UPDATE fallback_saga_schema SET version = 99")
    with pytest.raises(SagaStoreError, match="schema version 99, newer"):
        await PostgresSagaStore(pg_conninfo, schema=pg_schema).open()


async def test_the_default_schema_follows_the_search_path(pg_cluster: Any) -> None:
    pg_cluster.create_database("default_schema_test")
    conninfo = pg_cluster.conninfo_for("default_schema_test")
    async with PostgresSagaStore(conninfo) as store:
        await new_saga(store, "saga-1")
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'fallback_saga_sagas'"
        ).fetchone()
    assert row == ("public",)


# --------------------------------------------------------------------------- connections


async def test_a_bad_password_gets_a_clear_error_at_open(pg_cluster: Any, pg_schema: str) -> None:
    conninfo = pg_cluster.conninfo.replace(pg_cluster.password, "wrong")
    store = PostgresSagaStore(conninfo, schema=pg_schema, connect_timeout=5)
    with pytest.raises(SagaStoreError, match="password authentication failed"):
        await store.open()
    assert "wrong" not in repr(store)


async def test_nothing_listening_gets_a_clear_error_at_first_use(pg_schema: str) -> None:
    import socket

    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresSagaStore(f"host=127.0.0.1 port={port} connect_timeout=2", schema=pg_schema)
    with pytest.raises(SagaStoreError, match="cannot open"):
        await store.load("saga-1")


async def test_close_is_idempotent_and_a_closed_store_refuses_work(
    pg_conninfo: str, pg_schema: str
) -> None:
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema)
    await new_saga(store, "saga-1")  # opened on first use
    pool = store.pool
    assert pool is not None
    await store.close()
    await store.close()
    assert pool.closed
    with pytest.raises(SagaStoreError, match="closed"):
        await store.load("saga-1")
    with pytest.raises(SagaStoreError, match="closed"):
        await store.open()


async def test_a_close_called_while_another_closes_returns_once_the_pool_is_closed(
    pg_conninfo: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``close()`` (another shutdown hook, say) used to return while
    the first was still closing the pool. It now waits for the first."""
    store = PostgresSagaStore(pg_conninfo, schema=pg_schema)
    await new_saga(store, "saga-1")
    pool = store.pool
    assert pool is not None
    opened = asyncio.Event()
    close_pool = pool.close

    async def held_close(*args: Any, **kwargs: Any) -> None:
        await opened.wait()
        await close_pool(*args, **kwargs)

    monkeypatch.setattr(pool, "close", held_close)
    first = asyncio.ensure_future(store.close())
    second = asyncio.ensure_future(store.close())
    try:
        for _ in range(20):  # turns of the loop, not time: nothing can finish
            await asyncio.sleep(0)
        assert not first.done()
        assert not second.done()
        second.cancel()  # a waiter cancelled leaves the closing alone
        third = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        assert not third.done()
    finally:
        opened.set()
    await asyncio.gather(first, third)
    assert pool.closed
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_a_given_pool_is_used_and_left_open(pg_conninfo: str, pg_schema: str) -> None:
    async with psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2, kwargs={"autocommit": True}
    ) as pool:
        async with PostgresSagaStore(pool, schema=pg_schema) as store:
            assert store.pool is pool
            await new_saga(store, "saga-1")
        assert not pool.closed
        async with pool.connection() as conn:
            cursor = await conn.execute(
                f'SELECT saga_id FROM "{pg_schema}".fallback_saga_sagas'
            )
            assert await cursor.fetchall() == [("saga-1",)]


async def test_a_given_pool_with_another_row_factory_works(
    pg_conninfo: str, pg_schema: str
) -> None:
    from psycopg.rows import dict_row

    async with psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2,
        kwargs={"autocommit": True, "row_factory": dict_row},
    ) as pool, PostgresSagaStore(pool, schema=pg_schema) as store:
        await new_saga(store, "saga-1")
        await store.append("saga-1", [entry(1, "b")], context={"n": 1})
        assert [e.step for e in (await store.load("saga-1")).history] == ["a", "b"]
        (lease,) = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=5)
        assert (await store.renew(lease, 60)).token == 1
        assert [s.saga_id for s in await store.list_sagas()] == ["saga-1"]


async def test_synchronous_commit_off_is_an_explicit_opt_in(
    pg_conninfo: str, pg_schema: str
) -> None:
    for setting, expected in (("on", "on"), ("off", "off")):
        async with PostgresSagaStore(
            pg_conninfo, schema=pg_schema, synchronous_commit=setting
        ) as store:
            assert store.pool is not None
            async with store.pool.connection() as conn:
                cursor = await conn.execute("SHOW synchronous_commit")
                assert await cursor.fetchone() == (expected,)
    pool = psycopg_pool.AsyncConnectionPool(pg_conninfo, open=False)
    with pytest.raises(ValueError, match="synchronous_commit"):
        PostgresSagaStore(pool, synchronous_commit="off")


async def test_one_round_trip_per_write(pg_conninfo: str, pg_schema: str, tmp_path: Path) -> None:
    """Counted on the wire: the server says ReadyForQuery once per round trip."""
    trace = tmp_path / "trace"
    # A pool of one connection: every statement of the store goes through it.
    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    try:
        async with PostgresSagaStore(pool, schema=pg_schema) as store:
            await store.create("s", "OrderSaga", "fp", {"n": 0}, [entry(0, "a")])
            await store.append("s", [entry(0, "a", StepStatus.COMPLETED), entry(1, "b")])
            async with pool.connection() as conn:
                pgconn = conn.pgconn
            with trace.open("w") as out:
                pgconn.trace(out.fileno())
                try:
                    await store.append(
                        "s", [entry(1, "b", StepStatus.COMPLETED), entry(2, "c")],
                        context={"n": 1}, fence=Lease("s", "", 0, float("inf")),
                    )
                    await store.create("t", "OrderSaga", "fp", {"n": 0}, [entry(0, "a")])
                    await store.load("s")
                finally:
                    pgconn.untrace()
    finally:
        await pool.close()
    ready = [line for line in trace.read_text().splitlines() if "ReadyForQuery" in line]
    assert len(ready) == 3, trace.read_text()


async def test_a_journal_write_alone_builds_its_error_text_only_if_it_fails(
    store: PostgresSagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write at a time, each goes alone (``write_one``), not grouped: its
    error text (``cannot journal saga 'id'``: the id's ``short_repr``, about
    0.3 µs) is built when an error is raised, not for every write, as for a
    group's writes. (The texts themselves: test_postgres_no_connection.)"""
    from fallback_saga.store import _postgres_sql

    shown: list[object] = []
    real_short_repr = _postgres_sql.short_repr

    def counted(value: Any, *args: Any, **kwargs: Any) -> str:
        shown.append(value)
        return real_short_repr(value, *args, **kwargs)

    monkeypatch.setattr(_postgres_sql, "short_repr", counted)
    await store.create("s", "OrderSaga", "fp", {"n": 0}, [entry(0, "a")])
    await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], context={"n": 1})
    assert store.stats.largest_group == 0, store.stats  # no group: each went alone
    assert shown == []
    with pytest.raises(SagaAlreadyExists):
        await store.create("s", "OrderSaga", "fp", {"n": 0}, [entry(0, "a")])


# --------------------------------------------------------------------------- times, data


async def test_times_are_the_database_servers(store: PostgresSagaStore, raw: Any) -> None:
    await new_saga(store, "saga-1")
    (server_now,) = raw.execute("SELECT extract(epoch FROM now())::float8").fetchone()
    record = await store.load("saga-1")
    assert abs(record.created_at - server_now) < 60
    (lease,) = await store.claim(owner="w", lease_seconds=30, older_than=-1, limit=1)
    assert 25 < lease.expires_at - server_now < 90


async def test_the_context_is_stored_as_json(store: PostgresSagaStore, raw: Any) -> None:
    await store.create("saga-1", "OrderSaga", "fp", {"b": [1, 2.5, None], "a": "é"}, [])
    (value,) = raw.execute(
        "SELECT context FROM fallback_saga_sagas WHERE saga_id = 'saga-1'"
    ).fetchone()
    assert value == {"a": "é", "b": [1, 2.5, None]}
    (kind,) = raw.execute(
        "SELECT json_typeof(context -> 'b') FROM fallback_saga_sagas"
    ).fetchone()
    assert kind == "array"


# Numbers jsonb would print in a form of its own (``numeric``): the float 1e+16
# as the int 10000000000000000, -0.0 as 0.0; and keys out of their order.
_AWKWARD_CONTEXT: Final = {
    "z": [1e16, -0.0, 2.0**60, 1e22, 5e-324, 1.0, 0.1 + 0.2, 1.7976931348623157e308],
    "a": {"y": -0.0, "b": 10**30, "m": 1e-7, "n": -1e16},
    "m": 12345678901234567890,
}


async def test_S14_the_context_comes_back_as_the_json_it_was_written_as(
    store: PostgresSagaStore,
) -> None:
    """Every number of a context (and its keys' order) comes back as it was
    written, through the statements of a write alone and of a group, as on
    SQLite: a resumed saga sees the same floats (S14)."""
    def context(k: int) -> dict[str, Any]:
        return {**_AWKWARD_CONTEXT, "k": k, "k-float": float(k) * 1e16}

    written = json.dumps(context(0))
    await store.create("saga-0", "OrderSaga", "fp", context(0), [])  # alone
    sagas = [f"saga-{k}" for k in range(1, 9)]
    await asyncio.gather(*(  # many in flight: grouped
        store.create(saga_id, "OrderSaga", "fp", context(k), [])
        for k, saga_id in enumerate(sagas, 1)
    ))
    assert json.dumps((await store.load("saga-0")).context) == written
    for k, saga_id in enumerate(sagas, 1):
        assert json.dumps((await store.load(saga_id)).context) == json.dumps(context(k))
    await store.append("saga-0", [entry(0, "a")], context=context(100))  # alone
    await asyncio.gather(*(
        store.append(saga_id, [entry(0, "a")], context=context(k + 100))
        for k, saga_id in enumerate(sagas, 1)
    ))
    assert store.stats.largest_group > 1
    for k, saga_id in enumerate(["saga-0", *sagas]):
        loaded = (await store.load(saga_id)).context
        assert json.dumps(loaded) == json.dumps(context(k + 100)), saga_id


async def test_a_context_postgresql_cannot_hold_is_refused_and_nothing_is_written(
    store: PostgresSagaStore,
) -> None:
    # Refused before it is sent, naming the field (S12): jsonb holds no NUL.
    with pytest.raises(ContextSerializationError, match="'bad'"):
        await store.create("saga-1", "OrderSaga", "fp", {"bad": "nul\x00char"}, [entry(0, "a")])
    with pytest.raises(SagaNotFound):
        await store.load("saga-1")
    with pytest.raises(SagaStoreError, match="JSON"):
        await store.create("saga-2", "OrderSaga", "fp", {"bad": float("nan")}, [])
    await new_saga(store, "saga-3")
    with pytest.raises(ContextSerializationError):
        await store.append("saga-3", [entry(1, "b")], context={"bad": "\x00"})
    record = await store.load("saga-3")
    assert [e.step for e in record.history] == ["a"]
    assert record.version == 1


async def test_an_error_text_with_nul_characters_is_kept_readable(
    store: PostgresSagaStore,
) -> None:
    await new_saga(store, "saga-1")
    await store.append("saga-1", [entry(0, "a", StepStatus.FAILED, error="bin\x00ary")])
    assert (await store.load("saga-1")).history[-1].error == "bin\ufffdary"


# Texts a JSON encoder or a SQL string could get wrong, each as it must come back.
_AWKWARD_TEXTS = [
    "", " ", '"', "\\", '\\"', "'", "';--", '{"p":1}', "[1,2]", "null", "true", "1e309",
    "line\nbreak\ttab\r", "\x01\x1f\x7f", "é ß 中文", "\U0001f600 astral", "\u2028\u2029",
    "%s %(x)s {}", "x" * 5000,
]


async def test_every_entry_field_comes_back_exactly_alone_and_in_a_group(
    store: PostgresSagaStore,
) -> None:
    """The entries travel as JSON objects read by ``json_to_recordset``
    (issue #12): every field comes back as it was written, through the
    statement a write makes alone and through a group's, whatever the text."""
    texts = _AWKWARD_TEXTS
    statuses = list(StepStatus)

    def entries_of(k: int) -> list[JournalEntry]:
        return [
            JournalEntry(
                position=(k + n) % 7,
                step=texts[(k + n) % len(texts)] or "s",
                branch="fallback" if n % 2 else "primary",
                action="compensate" if n % 3 == 0 else "act",
                status=statuses[(k + n) % len(statuses)],
                attempt=(k * 7 + n) % 100_000 + 1,
                error=None if n % 2 == 0 else texts[(k * 3 + n) % len(texts)],
                at=[1_712_345_678.1234567, 0.1 + 0.2, 1e-300, 1.5e9, 0.0][(k + n) % 5],
                result=None if n % 3 else texts[(k * 5 + n) % len(texts)],
            )
            for n in range(1 + k % 4)
        ]

    sagas = [f"saga-{k}" for k in range(len(texts) * 2)]
    await store.create(sagas[0], "OrderSaga", "fp", {}, entries_of(0))  # alone
    await asyncio.gather(*(  # many in flight: grouped
        store.create(saga_id, "OrderSaga", "fp", {}, entries_of(k))
        for k, saga_id in enumerate(sagas) if k
    ))
    await asyncio.gather(*(
        store.append(saga_id, entries_of(k + 1), after=len(entries_of(k)))
        for k, saga_id in enumerate(sagas)
    ))
    assert store.stats.largest_group > 1
    for k, saga_id in enumerate(sagas):
        history = (await store.load(saga_id)).history
        assert history == entries_of(k) + entries_of(k + 1), saga_id


async def test_journal_times_round_trip_bit_for_bit(
    store: PostgresSagaStore, raw: Any, pg_conninfo: str, pg_schema: str
) -> None:
    raw.execute("ALTER ROLE CURRENT_USER SET extra_float_digits = 0")  # old-style rounding
    try:
        times = [1_712_345_678.1234567, 0.1 + 0.2, 1e-300, 1_700_000_000.0]
        entries = [entry(n, f"s{n}", at=at) for n, at in enumerate(times)]
        await store.create("saga-1", "OrderSaga", "fp", {}, entries)
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as fresh:
            assert [e.at for e in (await fresh.load("saga-1")).history] == times
    finally:
        raw.execute("ALTER ROLE CURRENT_USER RESET extra_float_digits")


async def test_load_sees_one_snapshot(store: PostgresSagaStore) -> None:
    """Context and history are read by one statement: under concurrent appends
    every load agrees with itself."""
    await store.create("saga-1", "OrderSaga", "fp", {"n": 0}, [])
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await store.append("saga-1", [entry(n, f"s{n}")], context={"n": n})

    task = asyncio.create_task(writer())
    try:
        for _ in range(50):
            record = await store.load("saga-1")
            assert len(record.history) == record.context["n"]
    finally:
        stop.set()
        await task


async def test_concurrent_appends_to_one_saga_are_numbered_without_collisions(
    store: PostgresSagaStore,
) -> None:
    await new_saga(store, "saga-1")
    await asyncio.gather(
        *(store.append("saga-1", [entry(n, f"s{n}"), entry(n, f"t{n}")]) for n in range(1, 21))
    )
    record = await store.load("saga-1")
    assert len(record.history) == 41
    assert record.version == 21
    names = [e.step for e in record.history]
    for n in range(1, 21):  # each append's entries stay together, in order
        assert names.index(f"t{n}") == names.index(f"s{n}") + 1


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("UPDATE fallback_saga_sagas SET context = '[1, 2]' WHERE saga_id = 'bad'",
         "not a JSON object"),
        ("UPDATE fallback_saga_sagas SET status = 'exploded' WHERE saga_id = 'bad'",
         "unknown saga status 'exploded'"),
        ("UPDATE fallback_saga_steps SET status = 'teleported' WHERE saga_id = 'bad'",
         "transition 0 has an unknown status"),
        ("UPDATE fallback_saga_steps SET branch = 'sideways' WHERE saga_id = 'bad'",
         "transition 0 has an unknown branch"),
        ("UPDATE fallback_saga_steps SET at = 'NaN' WHERE saga_id = 'bad'",
         "transition 0 has no valid time"),
        ("UPDATE fallback_saga_steps SET at = 'Infinity' WHERE saga_id = 'bad'",
         "transition 0 has no valid time"),
    ],
)
async def test_a_corrupt_row_raises_corrupt_saga_record_naming_the_saga(
    store: PostgresSagaStore, raw: Any, statement: str, reason: str
) -> None:
    await new_saga(store, "bad")
    await new_saga(store, "good")
    raw.execute(statement)
    with pytest.raises(CorruptSagaRecord, match=reason) as caught:
        await store.load("bad")
    assert caught.value.saga_id == "bad"
    assert (await store.load("good")).saga_name == "OrderSaga"


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("DELETE FROM fallback_saga_steps WHERE saga_id = 'bad' AND seq = 1",
         "transition 1 is missing"),
        ("DELETE FROM fallback_saga_steps WHERE saga_id = 'bad' AND seq = 2",
         "holds 2 transitions where 3 were written"),
        ("UPDATE fallback_saga_sagas SET journal_length = 2 WHERE saga_id = 'bad'",
         "holds 3 transitions where 2 were written"),
    ],
)
async def test_S12_a_journal_row_lost_is_a_corrupt_record_not_a_conflict(
    store: PostgresSagaStore, raw: Any, statement: str, reason: str
) -> None:
    """Read in one statement, a journal whose rows disagree with the count
    the appends keep is corruption: resumed, its first write would be a
    JournalConflict, reported interrupted on every pass."""
    await new_saga(store, "bad")
    await store.append("bad", [entry(1, "b"), entry(2, "c")])
    raw.execute(statement)
    with pytest.raises(CorruptSagaRecord, match=reason) as caught:
        await store.load("bad")
    assert caught.value.saga_id == "bad"
    with pytest.raises(CorruptSagaRecord, match="'bad'"):
        await store.load_window("bad", start=0, count=10)
    # A window past the end of the journal is empty, not corrupt.
    assert (await store.load_window("bad", start=10, count=5)).record.history == []


async def test_S12_claim_skips_a_fence_it_cannot_add_one_to_and_claims_the_others(
    store: PostgresSagaStore, raw: Any
) -> None:
    """Found by the SQLite row fuzz: a fence at the largest integer made the
    claim's ``fence + 1`` overflow, for the whole batch."""
    await new_saga(store, "bad")
    await new_saga(store, "good")
    raw.execute("UPDATE fallback_saga_sagas SET fence = 9223372036854775807"
                " WHERE saga_id = 'bad'")
    leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
    assert [lease.saga_id for lease in leases] == ["good"]


@pytest.mark.parametrize("park_after", [None, 2**40], ids=["never-parked", "parked-late"])
async def test_S12_claim_skips_a_count_of_claims_it_cannot_add_one_to_and_claims_the_others(
    pg_conninfo: str, pg_schema: str, raw: Any, park_after: int | None
) -> None:
    """The count of claims is an ``integer`` column: at its largest, below a
    ``park_after`` beyond it (``None``: never parked), the claim's
    ``unreleased_claims + 1`` overflowed and the server refused the whole
    batch — every claim, every recovery pass — as the fence at its largest
    did. Left out as that fence is."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, park_after=park_after) as store:
        await new_saga(store, "bad")
        await new_saga(store, "good")
        raw.execute("UPDATE fallback_saga_sagas SET unreleased_claims = 2147483647"
                    " WHERE saga_id = 'bad'")
        leases = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=10)
        assert [lease.saga_id for lease in leases] == ["good"]


async def test_a_listing_skips_a_corrupt_row_and_logs_it(
    store: PostgresSagaStore, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await new_saga(store, "bad")
    await new_saga(store, "good")
    raw.execute("UPDATE fallback_saga_sagas SET status = 'exploded' WHERE saga_id = 'bad'")
    with caplog.at_level(logging.WARNING, logger="fallback_saga.store.postgres"):
        listing = await store.list_sagas()
    assert [s.saga_id for s in listing] == ["good"]
    assert "'bad'" in caplog.text


async def test_purge_removes_the_history_rows_too(store: PostgresSagaStore, raw: Any) -> None:
    await new_saga(store, "done", status=SagaStatus.COMPLETED)
    await new_saga(store, "running")
    await store.append("done", [entry(1, "b"), entry(2, "c")])
    assert await store.purge(older_than=-1) == 1
    rows = raw.execute(
        "SELECT saga_id, count(*) FROM fallback_saga_steps GROUP BY saga_id"
    ).fetchall()
    assert rows == [("running", 1)]


# --------------------------------------------------------------------------- leases


async def test_concurrent_claimers_never_claim_a_saga_twice(
    pg_conninfo: str, pg_schema: str, store: PostgresSagaStore
) -> None:
    """4 claimers, each with its own pool (its own connections), over 200 sagas."""
    ids = {f"saga-{n:03d}" for n in range(200)}
    await asyncio.gather(*(new_saga(store, saga_id) for saga_id in ids))
    claimers = [
        PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=2, max_size=2)
        for _ in range(4)
    ]
    start = asyncio.Event()

    async def claim_until_none_left(claimer: PostgresSagaStore, owner: str) -> list[Lease]:
        await claimer.open()
        await start.wait()
        claimed: list[Lease] = []
        while leases := await claimer.claim(
            owner=owner, lease_seconds=600, older_than=-1, limit=7
        ):
            claimed += leases
        return claimed

    try:
        tasks = [
            asyncio.create_task(claim_until_none_left(claimer, f"w{n}"))
            for n, claimer in enumerate(claimers)
        ]
        await asyncio.sleep(0.2)
        start.set()
        results = await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(claimer.close() for claimer in claimers))
    claimed = [lease.saga_id for leases in results for lease in leases]
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == ids
    assert all(lease.token == 1 for leases in results for lease in leases)
    assert sum(1 for leases in results if leases) >= 2  # they really competed
    owners = {s.saga_id: s.lease_owner for s in await store.list_sagas(limit=500)}
    for n, leases in enumerate(results):
        assert all(owners[lease.saga_id] == f"w{n}" for lease in leases)


async def test_claim_holds_no_lock_after_it_returns(store: PostgresSagaStore, raw: Any) -> None:
    await new_saga(store, "saga-1")
    (lease,) = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1)
    raw.execute("SET lock_timeout = '1s'")
    # Another session can lock the row at once: the claim's transaction is over.
    raw.execute("BEGIN")
    raw.execute("SELECT 1 FROM fallback_saga_sagas WHERE saga_id = 'saga-1' FOR UPDATE NOWAIT")
    raw.execute("ROLLBACK")
    await store.append("saga-1", [entry(0, "a", StepStatus.COMPLETED)], fence=lease)


async def test_fencing_refuses_the_late_writes_of_a_first_run(store: PostgresSagaStore) -> None:
    """A first run writes with token 0; once a recovery worker claimed the
    saga (token 1), the original runner is shut out."""
    first_run = Lease("saga-1", "", 0, float("inf"))
    await new_saga(store, "saga-1")
    await store.append("saga-1", [entry(0, "a", StepStatus.COMPLETED)], fence=first_run)
    (lease,) = await store.claim(owner="w1", lease_seconds=60, older_than=-1, limit=1)
    assert lease.token == 1
    before = await store.load("saga-1")
    with pytest.raises(LeaseLost) as caught:
        await store.append(
            "saga-1", [entry(1, "late")], status=SagaStatus.FAILED, context={"x": 1},
            fence=first_run,
        )
    assert caught.value.token == 0
    after = await store.load("saga-1")
    assert after.history == before.history
    assert after.version == before.version
    assert after.status is SagaStatus.RUNNING
    await store.append("saga-1", [entry(1, "b")], fence=lease)


async def test_claim_saga_leases_one_saga_by_id(store: PostgresSagaStore) -> None:
    await new_saga(store, "saga-1", status=SagaStatus.COMPLETED)  # any status, any age
    lease = await store.claim_saga("saga-1", owner="w1", lease_seconds=60)
    assert (lease.saga_id, lease.owner, lease.token) == ("saga-1", "w1", 1)
    with pytest.raises(SagaBusy) as busy:
        await store.claim_saga("saga-1", owner="w2", lease_seconds=60)
    assert busy.value.owner == "w1"
    assert busy.value.expires_at == lease.expires_at
    await store.release(lease)
    again = await store.claim_saga("saga-1", owner="w2", lease_seconds=-1)  # expires at once
    assert again.token == 2
    taken_over = await store.claim_saga("saga-1", owner="w3", lease_seconds=60)
    assert taken_over.token == 3
    with pytest.raises(LeaseLost):
        await store.append("saga-1", [entry(1, "late")], fence=again)
    with pytest.raises(SagaNotFound):
        await store.claim_saga("nope", owner="w", lease_seconds=60)


async def test_concurrent_claim_saga_calls_lease_it_once(store: PostgresSagaStore) -> None:
    await new_saga(store, "saga-1")
    outcomes = await asyncio.gather(
        *(store.claim_saga("saga-1", owner=f"w{n}", lease_seconds=60) for n in range(8)),
        return_exceptions=True,
    )
    leases = [outcome for outcome in outcomes if isinstance(outcome, Lease)]
    assert len(leases) == 1
    assert all(isinstance(o, SagaBusy) for o in outcomes if not isinstance(o, Lease))


async def test_renew_extends_a_current_lease_and_refuses_a_lost_one(
    store: PostgresSagaStore,
) -> None:
    await new_saga(store, "saga-1")
    (stale,) = await store.claim(owner="w1", lease_seconds=-1, older_than=-1, limit=1)
    (current,) = await store.claim(owner="w2", lease_seconds=5, older_than=-1, limit=1)
    renewed = await store.renew(current, 120)
    assert renewed.token == current.token
    assert renewed.owner == "w2"
    assert renewed.expires_at > current.expires_at + 100
    (summary,) = await store.list_sagas()
    assert summary.lease_expires_at == renewed.expires_at
    assert summary.lease_owner == "w2"
    with pytest.raises(LeaseLost):
        await store.renew(stale, 120)
    with pytest.raises(SagaNotFound):
        await store.renew(Lease("nope", "w", 1, 0.0), 120)
    # A renewed lease keeps the saga from being claimed.
    assert await store.claim(owner="w3", lease_seconds=60, older_than=-1, limit=1) == []


async def test_renew_of_a_first_run_holds_off_recovery(store: PostgresSagaStore) -> None:
    """A slow first run (token 0) can heartbeat too: recovery leaves it alone."""
    await new_saga(store, "saga-1")
    await store.renew(Lease("saga-1", "runner", 0, float("inf")), 60)
    assert await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1) == []
    (summary,) = await store.list_sagas()
    assert summary.lease_owner == "runner"


# --------------------------------------------------------------------------- the executor


@dataclasses.dataclass
class Order(SagaContext):
    order_id: str = "o-1"
    reserved: bool = False
    charged: int = 0
    fail_at_ship: bool = False
    crash_at_ship: bool = False


class Crash(BaseException):
    """The process dies here: no unwinding, the store shows the saga running."""


class Reserve:
    async def act(self, ctx: Order) -> None:
        ctx.reserved = True

    async def compensate(self, ctx: Order) -> None:
        ctx.reserved = False


class Charge:
    async def act(self, ctx: Order) -> None:
        ctx.charged += 100

    async def compensate(self, ctx: Order) -> None:
        ctx.charged = 0


class Ship:
    async def act(self, ctx: Order) -> None:
        if ctx.crash_at_ship:
            raise Crash
        if ctx.fail_at_ship:
            raise RuntimeError("no truck")

    async def compensate(self, ctx: Order) -> None:
        pass


class OrderSaga(Saga[Order]):
    steps = [Reserve, Charge, Ship]


FORWARD = [(name, "act", status) for name in ("Reserve", "Charge", "Ship")
           for status in ("started", "completed")]


async def test_a_real_saga_through_the_executor(pg_conninfo: str, pg_schema: str) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        saga = OrderSaga(store=store)
        result = await saga.run(Order(order_id="o-1"), saga_id="saga-1")
        assert result.status is SagaStatus.COMPLETED
        record = await store.load("saga-1")
        assert record.status is SagaStatus.COMPLETED
        assert record.fingerprint == OrderSaga.definition.fingerprint
        assert [(e.step, e.action, e.status.value) for e in record.history] == FORWARD
        assert record.context["charged"] == 100
        assert record.version == 4  # create + three appends: one write per step boundary


async def test_100_sagas_in_flight_are_all_journaled_completely(
    store: PostgresSagaStore,
) -> None:
    saga = OrderSaga(store=store)
    ids = [f"saga-{n:03d}" for n in range(100)]
    outcomes = await asyncio.gather(
        *(
            saga.run(Order(order_id=saga_id, fail_at_ship=n % 10 == 0), saga_id=saga_id)
            for n, saga_id in enumerate(ids)
        ),
        return_exceptions=True,
    )
    for n, (outcome, saga_id) in enumerate(zip(outcomes, ids, strict=True)):
        record = await store.load(saga_id)
        steps = [(e.step, e.action, e.status.value) for e in record.history]
        if n % 10:
            assert not isinstance(outcome, BaseException), outcome
            assert record.status is SagaStatus.COMPLETED
            assert steps == FORWARD
        else:
            assert isinstance(outcome, SagaFailed)
            assert record.status is SagaStatus.COMPENSATED
            assert steps[5] == ("Ship", "act", "failed")
            assert record.context["charged"] == 0
    # Group commit: with 100 in flight, writes shared transactions.
    stats = store.stats
    assert stats.largest_group > 1, stats
    assert stats.commits < stats.writes, stats


async def test_journal_writes_are_driven_from_the_sagas_own_task(
    pg_conninfo: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store says its writes outlive cancellation, so the executor makes
    each first try inline (``settle_inline``): no task of its own per write
    (``settle``), alone or grouped."""
    from fallback_saga import write_ahead

    assert PostgresSagaStore.writes_outlive_cancellation is True
    settled: list[object] = []
    real_settle = write_ahead.settle

    async def counting_settle(coroutine: Any) -> Any:
        settled.append(coroutine)
        return await real_settle(coroutine)

    monkeypatch.setattr(write_ahead, "settle", counting_settle)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        saga = OrderSaga(store=store)
        await saga.run(Order(order_id="alone"))
        await asyncio.gather(*(saga.run(Order(order_id=f"o{n}")) for n in range(20)))
        assert store.stats.writes == 21 * 4
        assert store.stats.largest_group > 1
    assert settled == []


class CancelAt:
    """Cancels the victim (a saga's task) right before ``step``'s write-ahead
    (its STARTED entry) is sent: from the hook told just before it — the
    saga's start for the first step, the previous step's completion else —
    so that the cancellation lands while that write is on its way."""

    BEFORE = {"Reserve": None, "Charge": "Reserve", "Ship": "Charge"}

    def __init__(self, step: str) -> None:
        self.before = self.BEFORE[step]
        self.victims: dict[str, asyncio.Task[Any]] = {}

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        if self.before is None:
            self.victims[saga_id].cancel()

    def step_completed(self, saga_id: str, step: str) -> None:
        if step == self.before:
            self.victims[saga_id].cancel()


@pytest.mark.parametrize("cancel_at", ["Reserve", "Charge", "Ship"])
@pytest.mark.parametrize("in_flight", [1, 20])
async def test_S13_cancel_while_an_inline_write_is_in_flight_ends_final_in_the_journal(
    pg_conninfo: str, pg_schema: str, cancel_at: str, in_flight: int
) -> None:
    """No wrapper: each saga's task is cancelled while a real write of it is
    on its way (alone with one saga in flight, in groups with twenty). The
    write finishes, the saga unwinds, and the journal says COMPENSATED, with
    every compensation that ran on record, before the caller sees
    CancelledError; recovery then finds nothing to do."""
    listener = CancelAt(cancel_at)
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        saga = OrderSaga(store=store, listeners=[listener])
        ids = [f"c{n}" for n in range(in_flight)]
        for saga_id in ids:
            listener.victims[saga_id] = asyncio.create_task(
                saga.run(Order(order_id=saga_id), saga_id=saga_id)
            )
        outcomes = await asyncio.gather(*listener.victims.values(), return_exceptions=True)
        done = {"Reserve": [], "Charge": ["Reserve"], "Ship": ["Reserve", "Charge"]}[cancel_at]
        for saga_id, outcome in zip(ids, outcomes, strict=True):
            assert isinstance(outcome, asyncio.CancelledError), outcome
            record = await store.load(saga_id)
            assert record.status is SagaStatus.COMPENSATED, saga_id
            journal = [(e.step, e.action, e.status.value) for e in record.history]
            acts = [step for step, action, status in journal
                    if action == "act" and status == "completed"]
            undone = [step for step, action, status in journal
                      if action == "compensate" and status == "completed"]
            assert acts == done, journal
            assert undone == done[::-1], journal
        assert (await recover(store, [saga], older_than=0)).total == 0


async def test_a_pool_that_times_out_fails_the_write_never_cancels_the_saga(
    pg_conninfo: str, pg_schema: str
) -> None:
    """The pool's only connection is taken: the write waits for one, and the
    pool gives up after its ``timeout``. On Python 3.12+ that wait is an
    ``asyncio.timeout`` bound to the current task: had the write been made
    in the saga's own task (driven inline), the timeout would have cancelled
    the saga instead, and the write would have waited on. It is made in a
    task of the store's, so the write fails and the run stops with
    ``SagaInterrupted`` — not in doubt: the write got no connection, so
    nothing of it was sent (it was taken for in doubt before, as if the
    connection had been lost mid-statement)."""
    from fallback_saga import RetryPolicy, SagaInterrupted

    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=1, timeout=0.2, open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=True)
    try:
        store = PostgresSagaStore(pool, schema=pg_schema)
        await store.open()
        saga = OrderSaga(store=store, journal_timeout=None,
                         journal_retry=RetryPolicy(attempts=1, delay=0, jitter=0))
        taken = await pool.getconn()
        run = asyncio.create_task(saga.run(Order(order_id="p-1"), saga_id="p-1"))
        finished, _ = await asyncio.wait({run}, timeout=10)  # a safety net: the bug hung
        await pool.putconn(taken)
        assert finished, "the write waited on past the pool's timeout"
        with pytest.raises(SagaInterrupted) as stopped:
            await run
        assert stopped.value.in_doubt is False, stopped.value
        assert isinstance(stopped.value.error, SagaStoreError)
        assert stopped.value.error.nothing_written is True
        assert isinstance(stopped.value.error.__cause__, psycopg_pool.PoolTimeout)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        await store.close()
    finally:
        await pool.close()


class _Answered:
    """A server's answer, as psycopg's errors carry it (``diag``)."""

    def __init__(self, severity: str) -> None:
        self.severity_nonlocalized = severity


def _answered(cls: type[Exception], message: str, severity: str = "ERROR") -> Exception:
    """``cls``'s error as the server reports it: with its severity."""
    answered = type(cls.__name__, (cls,), {"diag": _Answered(severity)})
    return answered(message)


@pytest.mark.parametrize(
    ("error", "in_doubt"),
    [
        (_answered(psycopg.errors.UntranslatableCharacter, "nul"), False),  # rolled back
        (_answered(psycopg.errors.SerializationFailure, "retry"), False),
        (_answered(psycopg.errors.ConnectionFailure, "lost", "FATAL"), True),  # 08006
        (_answered(psycopg.errors.AdminShutdown, "shutdown", "FATAL"), True),  # 57P01
        (psycopg.OperationalError("no sqlstate: the client lost the connection"), True),
        # A SQLSTATE without the server's severity: not the server's answer.
        (psycopg.errors.SerializationFailure("made by the client"), True),
    ],
)
def test_a_group_is_retried_alone_only_when_its_commit_is_certainly_undone(
    error: Exception, in_doubt: bool
) -> None:
    assert pg_sql._commit_in_doubt(error) is in_doubt


async def test_without_group_commit_every_write_commits_alone(
    pg_conninfo: str, pg_schema: str
) -> None:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, max_size=2,
                                 group_commit=False) as store:
        saga = OrderSaga(store=store)
        await asyncio.gather(*(saga.run(Order(order_id=f"o{n}")) for n in range(30)))
        stats = store.stats
        assert stats.writes == stats.commits == 30 * 4, stats  # create + 3 appends
        assert stats.largest_group == 0


async def test_a_write_postgresql_refuses_fails_alone_in_its_group(
    pg_conninfo: str, pg_schema: str, raw: Any
) -> None:
    # max_size=2: one journal write goes to the server at a time, the rest queue.
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2) as store:
        await new_saga(store, "blocker")
        raw.execute("BEGIN")
        raw.execute("SELECT 1 FROM fallback_saga_sagas WHERE saga_id = 'blocker' FOR UPDATE")
        # Waits for the row lock on the server, holding the only write slot.
        held = asyncio.create_task(store.append("blocker", [entry(1, "b")]))
        # s3's position is beyond PostgreSQL's integer: the server refuses it.
        creates = [
            asyncio.create_task(store.create(
                f"s{n}", "OrderSaga", "fp", {"n": n}, [entry(2**40 if n == 3 else 0, "a")]
            ))
            for n in range(8)
        ]
        deadline = asyncio.get_running_loop().time() + 30
        while store.stats.writes < 10:  # all eight queued behind the held write
            assert asyncio.get_running_loop().time() < deadline, store.stats
            await asyncio.sleep(0.01)
        raw.execute("COMMIT")
        await held
        results = await asyncio.gather(*creates, return_exceptions=True)
        assert isinstance(results[3], SagaStoreError), results
        assert [r for n, r in enumerate(results) if n != 3] == [None] * 7
        for n in range(8):
            if n == 3:
                with pytest.raises(SagaNotFound):
                    await store.load("s3")
            else:
                assert (await store.load(f"s{n}")).context == {"n": n}
        # The eight went as one transaction, which the server refused; then
        # each went alone: 1 (blocker) + 1 (held) + 1 (the group) + 8.
        stats = store.stats
        assert (stats.writes, stats.commits, stats.largest_group) == (10, 11, 8)


class _SlotHeld:
    """The only write slot of a store (``max_size=2``) held by an append that
    waits for a row lock ``raw`` holds; writes made meanwhile queue, and go as
    one group once ``release()`` commits the lock away."""

    def __init__(self, store: PostgresSagaStore, raw: Any) -> None:
        self.store, self.raw = store, raw

    async def hold(self) -> None:
        await new_saga(self.store, "blocker")
        self.raw.execute("BEGIN")
        self.raw.execute("SELECT 1 FROM fallback_saga_sagas WHERE saga_id = 'blocker' FOR UPDATE")
        self.writes = self.store.stats.writes
        self.held = asyncio.create_task(self.store.append("blocker", [entry(1, "b")]))
        await self.queued(0)

    async def queued(self, count: int) -> None:
        """Wait until ``count`` writes queue behind the held one."""
        deadline = asyncio.get_running_loop().time() + 30
        while self.store.stats.writes < self.writes + 1 + count:
            assert asyncio.get_running_loop().time() < deadline, self.store.stats
            await asyncio.sleep(0.01)

    async def release(self) -> None:
        self.raw.execute("COMMIT")
        await self.held


async def _hold_slot(store: PostgresSagaStore, raw: Any) -> _SlotHeld:
    held = _SlotHeld(store, raw)
    await held.hold()
    return held


@pytest.mark.parametrize("transactional", [False, True])
async def test_fencing_and_after_stay_exact_per_saga_in_a_shared_transaction(
    pg_conninfo: str, pg_schema: str, raw: Any, transactional: bool
) -> None:
    """Many sagas' appends in one statement: each is made only while its own
    fence and journal length match; the others are made all the same."""
    pool = psycopg_pool.AsyncConnectionPool(
        pg_conninfo, min_size=1, max_size=2, open=False,
        kwargs={} if transactional else {"autocommit": True},
    )
    await pool.open(wait=True)
    try:
        async with PostgresSagaStore(pool, schema=pg_schema) as store:
            leases = []
            for n in range(6):
                await new_saga(store, f"s{n}")
                (lease,) = await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1)
                leases.append(lease)
            by_id = {lease.saga_id: lease for lease in leases}
            stale = Lease("s1", "w", by_id["s1"].token - 1, 0.0)
            held = await _hold_slot(store, raw)
            writes = [
                store.append("s0", [entry(1, "b")], fence=by_id["s0"], after=1),
                store.append("s1", [entry(1, "b")], fence=stale, after=1),  # lease lost
                store.append("s2", [entry(1, "b")], fence=by_id["s2"], after=0),  # conflict
                store.append("s3", [entry(1, "b")], status=SagaStatus.COMPLETED,
                             context={"done": 3}, after=1),
                store.append("s4", [entry(1, "b"), entry(1, "c")], fence=by_id["s4"]),
                store.append("nobody", [entry(1, "b")]),  # not found
                store.append("s5", []),  # nothing to journal: the row is touched all the same
            ]
            tasks = [asyncio.create_task(w) for w in writes]
            await held.queued(len(tasks))
            await held.release()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert [results[n] for n in (0, 3, 4, 6)] == [None] * 4, results
            assert isinstance(results[1], LeaseLost), results
            assert isinstance(results[2], JournalConflict), results
            assert isinstance(results[5], SagaNotFound), results
            assert store.stats.largest_group == len(tasks), store.stats
            lengths = {f"s{n}": len((await store.load(f"s{n}")).history) for n in range(6)}
            assert lengths == {"s0": 2, "s1": 1, "s2": 1, "s3": 2, "s4": 3, "s5": 1}
            s3 = await store.load("s3")
            assert (s3.status, s3.context, s3.version) == (SagaStatus.COMPLETED, {"done": 3}, 2)
            s4 = await store.load("s4")
            assert [(e.position, e.step) for e in s4.history] == [(0, "a"), (1, "b"), (1, "c")]
            assert (await store.load("s5")).version == 2
            assert (await store.load("s1")).version == 1  # refused: not touched
    finally:
        await pool.close()


async def test_writes_to_one_saga_in_one_group_are_made_in_order(
    pg_conninfo: str, pg_schema: str, raw: Any
) -> None:
    """A group holding several writes of one saga: each is made after the one
    before it (one statement each time a saga comes back), in one transaction."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2) as store:
        held = await _hold_slot(store, raw)
        tasks = [
            asyncio.create_task(store.append("late", [entry(0, "x")])),  # before its create
            asyncio.create_task(store.create("late", "OrderSaga", "fp", {}, [entry(0, "a")])),
            asyncio.create_task(store.append("late", [entry(1, "b")], after=1)),
            asyncio.create_task(new_saga(store, "other")),
            asyncio.create_task(store.append("late", [entry(2, "c")], after=2,
                                             status=SagaStatus.COMPLETED)),
            asyncio.create_task(store.create("late", "OrderSaga", "fp", {}, [])),  # taken
        ]
        await held.queued(len(tasks))
        await held.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], SagaNotFound), results
        assert results[1:5] == [None] * 4, results
        assert isinstance(results[5], SagaAlreadyExists), results
        record = await store.load("late")
        assert [e.step for e in record.history] == ["a", "b", "c"]
        assert (record.status, record.version) == (SagaStatus.COMPLETED, 3)
        assert (await store.load("other")).history[0].step == "a"
        # blocker's create, the held append, then the six in one transaction.
        assert (store.stats.writes, store.stats.commits, store.stats.largest_group) == (8, 3, 6)


async def test_a_group_refused_by_the_server_fails_or_makes_each_write_on_its_own(
    pg_conninfo: str, pg_schema: str, raw: Any
) -> None:
    """The statement of a group refused (one write's value out of range):
    nothing of it was written; each write is made alone, so the others land,
    conditions checked again, and only the bad one fails."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2) as store:
        for n in range(4):
            await new_saga(store, f"s{n}")
        held = await _hold_slot(store, raw)
        tasks = [
            asyncio.create_task(store.append("s0", [entry(1, "b")], after=1)),
            asyncio.create_task(store.append("s1", [entry(2**40, "b")], after=1)),  # refused
            asyncio.create_task(store.append("s0", [entry(2, "c")], after=2)),  # same saga
            asyncio.create_task(store.append("s2", [entry(1, "b")], after=7)),  # conflict
            asyncio.create_task(store.create("s9", "OrderSaga", "fp", {}, [entry(0, "a")])),
        ]
        await held.queued(len(tasks))
        await held.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [results[n] for n in (0, 2, 4)] == [None] * 3, results
        assert isinstance(results[1], SagaStoreError), results
        assert isinstance(results[3], JournalConflict), results
        assert [e.step for e in (await store.load("s0")).history] == ["a", "b", "c"]
        assert len((await store.load("s1")).history) == 1
        assert len((await store.load("s9")).history) == 1
        # 2 before, then the group (refused), then each of the five alone.
        assert (store.stats.writes, store.stats.commits) == (2 + 4 + 5, 2 + 4 + 1 + 5)


async def test_a_nul_in_one_grouped_write_fails_that_write_only(
    pg_conninfo: str, pg_schema: str, raw: Any
) -> None:
    """A text PostgreSQL cannot hold (a NUL in a saga name) in one write of a
    group: the server refuses the group's statement (nothing written, not in
    doubt), each write goes alone, and only that one fails."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2) as store:
        held = await _hold_slot(store, raw)
        tasks = [
            asyncio.create_task(store.create(
                f"s{n}", "Order\x00Saga" if n == 1 else "OrderSaga", "fp", {}, [entry(0, "a")]
            ))
            for n in range(4)
        ]
        await held.queued(len(tasks))
        await held.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], SagaStoreError), results
        assert [results[n] for n in (0, 2, 3)] == [None] * 3, results
        with pytest.raises(SagaNotFound):
            await store.load("s1")
        assert store.stats.largest_group == 4, store.stats


async def _crashed(store: PostgresSagaStore, saga_id: str) -> None:
    with pytest.raises(Crash):
        await OrderSaga(store=store).run(Order(order_id=saga_id, crash_at_ship=True),
                                         saga_id=saga_id)
    record = await store.load(saga_id)
    assert record.status is SagaStatus.RUNNING
    assert record.history[-1].step == "Ship"
    assert record.history[-1].status is StepStatus.STARTED


async def test_saga_resume_continues_from_the_journal(store: PostgresSagaStore) -> None:
    await _crashed(store, "saga-1")
    # The code is fixed (no crash any more) and the saga is resumed by id.
    await store.append("saga-1", [], context={
        **(await store.load("saga-1")).context, "crash_at_ship": False,
    })
    result = await OrderSaga(store=store).resume("saga-1")
    assert result.status is SagaStatus.COMPLETED
    record = await store.load("saga-1")
    assert record.status is SagaStatus.COMPLETED
    assert [(e.step, e.status.value) for e in record.history][-2:] == [
        ("Ship", "started"), ("Ship", "completed")
    ]
    assert record.context["charged"] == 100  # Charge did not run again


async def test_S13_a_postgres_write_that_never_answers_stops_the_run_at_journal_timeout(
    pg_conninfo: str, pg_schema: str
) -> None:
    """The executor submits each write to the store (``submit_append``) and
    awaits its future; the store's group commit, not a timer of the
    executor's, ends it at the run's ``journal_timeout``. Here a row lock
    holds the write after Reserve at the server: the run stops in doubt
    with no further effect, the write lands once the lock goes, and recovery
    finishes the saga from the journal — every effect once."""
    from fallback_saga import RetryPolicy, SagaInterrupted
    from fallback_saga.journal import submits_writes

    effects: list[str] = []
    locker = await psycopg.AsyncConnection.connect(pg_conninfo)
    await locker.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
    await locker.commit()

    class LockedReserve:
        async def act(self, ctx: Order) -> None:
            effects.append("reserve")
            # The saga's row, locked until the test commits: the append that
            # journals this step's completion waits at the server.
            await locker.execute(
                "SELECT 1 FROM fallback_saga_sagas WHERE saga_id = %s FOR UPDATE",
                (ctx.order_id,))

        async def compensate(self, ctx: Order) -> None:
            effects.append("release")

    class Counted(Charge):
        async def act(self, ctx: Order) -> None:
            effects.append("charge")
            await super().act(ctx)

    class LockedSaga(Saga[Order]):
        saga_name = "LockedSaga"
        steps = [LockedReserve, Counted, Ship]

    try:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            assert submits_writes(store)
            saga = LockedSaga(store=store, journal_timeout=0.5,
                              journal_retry=RetryPolicy(attempts=3, delay=0.01, jitter=0))
            run = asyncio.create_task(saga.run(Order(order_id="p-1"), saga_id="p-1"))
            finished, _ = await asyncio.wait({run}, timeout=30)  # a safety net: no hang
            assert finished, "the write waited on past journal_timeout"
            with pytest.raises(SagaInterrupted) as stopped:
                await run
            assert stopped.value.in_doubt
            assert isinstance(stopped.value.error, TimeoutError)
            assert effects == ["reserve"]  # nothing after a write the journal may lack
            await locker.commit()  # the lock goes: the write in doubt lands
            await store._journal.idle()
            history = (await store.load("p-1")).history
            assert [(e.step, e.status.value) for e in history] == [
                ("LockedReserve", "started"), ("LockedReserve", "completed"),
                ("Counted", "started"),
            ]
            report = await recover(store, [saga], older_than=0, lease=60)
            assert report.resumed == ["p-1"]
            assert (await store.load("p-1")).status is SagaStatus.COMPLETED
            assert effects == ["reserve", "charge"]  # Reserve never again
    finally:
        await locker.close()


async def test_submitted_writes_end_with_the_refusals_create_and_append_raise(
    store: PostgresSagaStore,
) -> None:
    """The executor's hot path (``submit_create``/``submit_append``): each
    future ends with the write's final outcome, the follow-up read of a
    refused append included — alone and in a group."""
    await store.create("s-1", "OrderSaga", "fp", {}, [entry(0, "a")])
    lease = (await store.claim(owner="w", lease_seconds=60, older_than=-1, limit=1))[0]
    futures = [
        store.submit_create("s-1", "OrderSaga", "fp", {}, [entry(0, "a")],
                            SagaStatus.RUNNING, None),
        store.submit_append("s-1", [entry(1, "b")], None, None, None, 5, None),
        store.submit_append("nope", [entry(1, "b")], None, None, None, None, None),
        store.submit_append("s-1", [entry(1, "b")], None, None,
                            Lease("s-1", "w", lease.token - 1, 0.0), None, None),
        store.submit_append("s-1", [entry(1, "b")], None, None, lease, 1, None),
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [
        SagaAlreadyExists, JournalConflict, SagaNotFound, LeaseLost, type(None)
    ], outcomes
    assert store.stats.largest_group > 1
    with pytest.raises(ValueError, match="lease is for saga"):
        store.submit_append("s-2", [], None, None, lease, None, None)  # before anything is queued
    assert len((await store.load("s-1")).history) == 2


async def test_recover_claims_and_finishes_interrupted_sagas(store: PostgresSagaStore) -> None:
    for n in range(5):
        await _crashed(store, f"saga-{n}")
        await store.append(f"saga-{n}", [], context={
            **(await store.load(f"saga-{n}")).context, "crash_at_ship": False,
        })
    await new_saga(store, "unknown-kind")  # a saga name nobody gave: skipped, kept
    report = await recover(store, [OrderSaga(store=store)], older_than=0, lease=60)
    assert sorted(report.resumed) == [f"saga-{n}" for n in range(5)]
    assert [saga_id for saga_id, _ in report.skipped] == ["unknown-kind"]
    for n in range(5):
        record = await store.load(f"saga-{n}")
        assert record.status is SagaStatus.COMPLETED
        assert record.context["charged"] == 100
    summaries = {s.saga_id: s for s in await store.list_sagas()}
    assert summaries["saga-0"].lease_owner is None  # released after the run
    # The original runner of a recovered saga is fenced out.
    with pytest.raises(LeaseLost):
        await store.append("saga-0", [entry(9, "late")], fence=Lease("saga-0", "", 0, 0.0))


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("fence", "9223372036854775807", "fence"),
        ("unreleased_claims", "2147483647", "unreleased_claims"),
    ],
)
async def test_S12_recover_reports_a_row_its_claim_cannot_lease_and_resumes_the_others(
    store: PostgresSagaStore, raw: Any, column: str, value: str, reason: str
) -> None:
    """A row the claim leaves out (a fence or count it cannot add one to)
    was never claimed and never reported anywhere: ``recover``'s report —
    what a cron job checks — lists it as skipped, once, with why; the
    others are resumed, and the row is not leased."""
    for saga_id in ("bad", "good"):
        await _crashed(store, saga_id)
        await store.append(saga_id, [], context={
            **(await store.load(saga_id)).context, "crash_at_ship": False,
        })
    raw.execute(f"UPDATE fallback_saga_sagas SET {column} = {value} WHERE saga_id = 'bad'")
    seen: list[tuple[str, str]] = []
    report = await recover(store, [OrderSaga(store=store)], older_than=0, lease=60,
                           progress=lambda saga_id, outcome: seen.append((saga_id, outcome)))
    assert report.resumed == ["good"]
    ((saga_id, why),) = report.skipped
    assert saga_id == "bad"
    assert why.startswith("its row is unreadable: ")
    assert reason in why
    assert ("bad", "skipped") in seen
    assert raw.execute("SELECT lease_owner FROM fallback_saga_sagas"
                       " WHERE saga_id = 'bad'").fetchone() == (None,)  # not leased
    with pytest.raises(CorruptSagaRecord, match=reason):  # as SQLite's lease_state says
        await store.lease_state("bad")
    # Reported on every pass (each pass's report is the caller's only view).
    again = await recover(store, [OrderSaga(store=store)], older_than=0, lease=60)
    assert [saga_id for saga_id, _ in again.skipped] == ["bad"]


async def test_a_recovering_worker_whose_lease_was_taken_over_is_fenced_out(
    store: PostgresSagaStore,
) -> None:
    await _crashed(store, "saga-1")
    # Worker 1 claims with a lease that has already run out; worker 2 takes over.
    (stale,) = await store.claim(owner="w1", lease_seconds=-1, older_than=-1, limit=1)
    (current,) = await store.claim(owner="w2", lease_seconds=60, older_than=-1, limit=1)
    saga = OrderSaga(store=store)
    record = await store.load("saga-1")
    record.context["crash_at_ship"] = False
    with pytest.raises(LeaseLost):
        await saga._resume_record(record, lease=stale)
    after = await store.load("saga-1")
    assert after.status is SagaStatus.RUNNING
    assert len(after.history) == len(record.history)
    result = await saga._resume_record(record, lease=current)
    assert result.status is SagaStatus.COMPLETED


# --------------------------------------------------------------------------- connections lost


class Held:
    """A step that waits for the test, then does nothing (its effect: a count)."""

    gate: asyncio.Event
    inside = 0
    done: ClassVar[Counter[str]] = Counter()

    async def act(self, ctx: Order) -> None:
        Held.inside += 1
        await Held.gate.wait()
        Held.done[ctx.order_id] += 1

    async def compensate(self, ctx: Order) -> None:
        pass


class HeldSaga(Saga[Order]):
    steps = [Reserve, Held, Charge]


async def test_killed_connections_lose_no_saga(pg_conninfo: str, pg_schema: str, raw: Any) -> None:
    """Every connection of the store dies while 40 sagas are inside a step
    (the server restarted, a proxy dropped them): the writes on dead
    connections fail, are reconciled with what the server holds and retried
    (S13), so every saga completes, each transition journaled exactly once;
    a recovery pass finds nothing left; the store then works as before."""
    Held.gate, Held.inside = asyncio.Event(), 0
    Held.done.clear()
    ids = [f"saga-{n:02d}" for n in range(40)]
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=4) as store:
        saga = HeldSaga(store=store)
        runs = [asyncio.create_task(saga.run(Order(order_id=i), saga_id=i)) for i in ids]
        deadline = asyncio.get_running_loop().time() + 30
        while Held.inside < len(ids):
            assert asyncio.get_running_loop().time() < deadline, Held.inside
            await asyncio.sleep(0.01)
        (killed,) = raw.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert killed >= 4
        Held.gate.set()
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        assert [getattr(o, "status", o) for o in outcomes] == [SagaStatus.COMPLETED] * len(ids)
        for saga_id in ids:
            record = await store.load(saga_id)
            # No write landed twice: each step started and completed once.
            assert [(e.position, e.status) for e in record.history] == [
                (p, s) for p in range(3) for s in (StepStatus.STARTED, StepStatus.COMPLETED)
            ], record.history
            assert Held.done[saga_id] == 1

        report = await recover(store, [saga], older_than=0, lease=60)
        assert report.skipped == [], report
        assert report.failed == [], report
        statuses: Counter[SagaStatus] = Counter()
        for saga_id in ids:
            record = await store.load(saga_id)
            statuses[record.status] += 1
            assert record.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED), record
            if record.status is SagaStatus.COMPLETED:
                assert record.context["charged"] == 100
        assert sum(statuses.values()) == len(ids)
        assert await store.list_sagas(status=SagaStatus.RUNNING) == []
        assert await store.list_sagas(status=SagaStatus.COMPENSATING) == []
        # The store works as before.
        Held.gate.set()
        assert (await saga.run(Order(order_id="after"))).status is SagaStatus.COMPLETED


# --------------------------------------------------------------------------- S10 with group commit


class Witnessed:
    """A step that looks, from another connection, for its own STARTED entry."""

    conn: Any
    lock: asyncio.Lock
    seen: ClassVar[list[str | None]] = []

    async def act(self, ctx: Order) -> None:
        info = current_step()
        async with Witnessed.lock:
            cursor = await Witnessed.conn.execute(
                "SELECT status FROM fallback_saga_steps WHERE saga_id = %s AND step = %s"
                " AND action = 'act' ORDER BY seq DESC LIMIT 1",
                (info.saga_id, info.step),
            )
            row = await cursor.fetchone()
        Witnessed.seen.append(None if row is None else row[0])

    async def compensate(self, ctx: Order) -> None:
        pass


class WitnessA(Witnessed):
    pass


class WitnessB(Witnessed):
    pass


class WitnessC(Witnessed):
    pass


class WitnessedSaga(Saga[Order]):
    steps = [WitnessA, WitnessB, WitnessC]


async def test_S10_with_group_commit_each_intent_is_committed_before_its_step_runs(
    pg_conninfo: str, pg_schema: str
) -> None:
    """S10 under group commit: the write of each STARTED entry has committed
    (another session sees it) before the step runs, even when it shared its
    transaction with the writes of other sagas."""
    Witnessed.seen.clear()
    Witnessed.lock = asyncio.Lock()
    async with await psycopg.AsyncConnection.connect(pg_conninfo, autocommit=True) as conn:
        await conn.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
        Witnessed.conn = conn
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema, max_size=4) as store:
            saga = WitnessedSaga(store=store)
            await asyncio.gather(*(saga.run(Order(order_id=f"o{n}")) for n in range(60)))
            assert store.stats.largest_group > 1, store.stats  # writes were grouped
    assert Witnessed.seen == ["started"] * 180


# --------------------------------------------------------------------------- event loops


def test_S13_a_store_used_by_successive_event_loops_serves_each(
    pg_conninfo: str, pg_schema: str
) -> None:
    """A store made at import and used by one ``asyncio.run`` after another
    (function-scoped test loops): each loop's sagas are journaled, with
    writes enough to queue, and close() from the last loop closes it."""
    from helpers_ledger import Ctx, ledger_saga

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2)
    ledger: list[tuple[str, str]] = []
    saga = ledger_saga(ledger)(store=store)

    async def burst(prefix: str) -> list[SagaStatus]:
        async with asyncio.timeout(30):
            await asyncio.gather(*(
                saga.run(Ctx(order_id=str(n)), saga_id=f"{prefix}-{n}") for n in range(20)
            ))
            return [(await store.load(f"{prefix}-{n}")).status for n in range(20)]

    assert asyncio.run(burst("first")) == [SagaStatus.COMPLETED] * 20
    assert asyncio.run(burst("second")) == [SagaStatus.COMPLETED] * 20
    asyncio.run(store.close())
    assert len(ledger) == 2 * 20 * 3


def test_S13_a_store_another_running_loop_uses_refuses_at_once(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Its pool and its group commit belong to the loop it was first used
    on: a second loop running meanwhile (another thread's) gets a clear
    SagaStoreError at once, never a write that waits forever."""
    import threading

    from helpers_ledger import Ctx, ledger_saga

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2)
    saga = ledger_saga([])(store=store)
    outcome: list[BaseException | None] = []

    def elsewhere() -> None:
        async def run() -> None:
            async with asyncio.timeout(20):
                await saga.run(Ctx(order_id="t"), saga_id="there")

        try:
            asyncio.run(run())
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    async def here() -> None:
        await saga.run(Ctx(order_id="h"), saga_id="here")
        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join)
        await store.close()

    asyncio.run(here())
    (error,) = outcome
    assert isinstance(error, SagaStoreError)
    assert "event loop" in str(error)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_S13_a_store_used_before_a_fork_is_refused_in_the_child_and_the_parent_goes_on(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Its pooled connections are sockets the parent still uses: the child
    must neither talk on them nor close them (libpq's goodbye would end the
    parent's sessions). It gets a SagaStoreError saying so at once."""
    from helpers_fork import in_a_forked_child
    from helpers_ledger import Ctx, ledger_saga

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=2, max_size=2)
    saga = ledger_saga([])(store=store)
    asyncio.run(saga.run(Ctx(order_id="p"), saga_id="before"))

    def child() -> int:
        try:
            asyncio.run(store.load("before"))
        except SagaStoreError as error:
            return 0 if "fork" in str(error) else 2
        return 1

    assert in_a_forked_child(child) == 0
    asyncio.run(saga.run(Ctx(order_id="p"), saga_id="after"))
    assert asyncio.run(store.load("after")).status is SagaStatus.COMPLETED
    asyncio.run(store.close())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_S13_a_store_used_before_a_fork_is_closed_in_the_child_not_retried(
    pg_conninfo: str, pg_schema: str
) -> None:
    """The child's copy of a store used before the fork never works there
    (its connections are the parent's): its refusal is ``StoreClosed``,
    definitive, so a saga run in the child stops at its creation instead of
    spending the whole ``journal_retry`` budget on it."""
    from helpers_fork import in_a_forked_child, refused_at_once
    from helpers_ledger import Ctx, ledger_saga

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1, max_size=2)
    asyncio.run(ledger_saga([])(store=store).run(Ctx(order_id="p"), saga_id="before"))
    assert in_a_forked_child(lambda: refused_at_once(store)) == 0
    asyncio.run(store.close())


def test_S13_a_store_whose_given_pool_went_with_its_loop_is_closed_not_retried(
    pg_conninfo: str, pg_schema: str
) -> None:
    """A store given a pool made on a loop that has closed never works again
    (nothing gives it another pool): ``StoreClosed``, not retried by the
    journal. (A store that owns its pool opens it again on the next loop.)"""
    from helpers_fork import refused_at_once
    from helpers_ledger import Ctx, ledger_saga

    holder: list[PostgresSagaStore] = []

    async def first() -> None:
        pool = psycopg_pool.AsyncConnectionPool(pg_conninfo, min_size=1, max_size=2, open=False)
        await pool.open(wait=True)
        store = PostgresSagaStore(pool, schema=pg_schema)
        holder.append(store)
        await ledger_saga([])(store=store).run(Ctx(order_id="p"), saga_id="before")
        await pool.close()

    asyncio.run(first())
    assert refused_at_once(holder[0], "next-loop") == 0
