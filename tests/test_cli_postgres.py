"""The operator commands on PostgreSQL (``--dsn``, ``--schema``, or
``$FALLBACK_SAGA_DSN``), against a real throwaway server (``conftest_pg``).

* ``list``, ``show`` (``--json``, ``--mermaid``) print what they print for
  the same sagas in SQLite; ``recover`` and ``purge`` work the same.
* A database without the saga tables is refused (exit 2) and left as it
  was: nothing is created, whatever the command.
* ``list`` and ``show`` need no more than SELECT, and never migrate an older
  schema.
* A wrong password is a one-line failure (exit 1) that does not print it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_cli import import_app
from pg_cluster import PostgresCluster

from fallback_saga import SagaFailed, SQLiteSagaStore
from fallback_saga.cli import main
from fallback_saga.store.base import RecoverableStore

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402

from fallback_saga.store.postgres import SCHEMA_VERSION, PostgresSagaStore  # noqa: E402

APP_SOURCE = '''
import dataclasses

from fallback_saga import Saga, SagaContext, SagaStepHandler


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


CRASH_IN: set[str] = set()


@dataclasses.dataclass
class ShopContext(SagaContext):
    order_id: str
    declined: bool = False
    reserved: bool = False
    charged: bool = False


class Reserve(SagaStepHandler[ShopContext, None]):
    async def act(self, context: ShopContext) -> None:
        context.reserved = True

    async def compensate(self, context: ShopContext) -> None:
        context.reserved = False


class Charge(SagaStepHandler[ShopContext, None]):
    async def act(self, context: ShopContext) -> None:
        if "Charge" in CRASH_IN:
            raise Crash()
        if context.declined:
            raise ValueError("card declined")
        context.charged = True


class ShopSaga(Saga[ShopContext]):
    steps = [Reserve, Charge]


def sagas(store):
    return [ShopSaga(store=store)]
'''

ORDERS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("o-1", {}, False),  # completed
    ("o-2", {"declined": True}, False),  # compensated, with an error in its history
    ("o-3", {}, True),  # interrupted in Charge: running
)

# What differs between two runs of the same sagas: times and durations.
_TIMES = [
    (re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{3})?"), "<time>"),
    (re.compile(r":(\w+, )t(\d+), \d+, \d+ms"), r":\1t\2, <start>, <length>"),
]
_TIME_KEYS = {"created_at", "updated_at", "at", "lease_expires_at"}


def untimed(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, replacement in _TIMES:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, list):
        return [untimed(item) for item in value]
    if isinstance(value, dict):
        return {key: untimed(item) for key, item in value.items() if key not in _TIME_KEYS}
    return value


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from import_app(tmp_path, monkeypatch, APP_SOURCE, "cli_pg_app")


@pytest.fixture(autouse=True)
def _no_store_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLBACK_SAGA_DSN", raising=False)
    monkeypatch.delenv("FALLBACK_SAGA_DB", raising=False)


@pytest.fixture
def pg(pg_conninfo: str, pg_schema: str) -> list[str]:
    """The command-line options naming the test's PostgreSQL store."""
    return ["--dsn", pg_conninfo, "--schema", pg_schema]


async def run_orders(store: RecoverableStore, app: ModuleType) -> None:
    saga = app.ShopSaga(store=store)
    for saga_id, fields, crash in ORDERS:
        app.CRASH_IN.clear()
        if crash:
            app.CRASH_IN.add("Charge")
        with contextlib.suppress(SagaFailed, app.Crash):
            await saga.run(app.ShopContext(order_id=saga_id, **fields), saga_id=saga_id)
    app.CRASH_IN.clear()


def fill_postgres(conninfo: str, schema: str, app: ModuleType) -> None:
    async def go() -> None:
        async with PostgresSagaStore(conninfo, schema=schema) as store:
            await run_orders(store, app)

    asyncio.run(go())


def fill_sqlite(db: str, app: ModuleType) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await run_orders(store, app)

    asyncio.run(go())


def output(argv: list[str], capsys: pytest.CaptureFixture[str], status: int = 0) -> str:
    assert main(argv) == status, capsys.readouterr().err
    return capsys.readouterr().out


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def saga_tables(conninfo: str, schema: str) -> tuple[bool, str | None]:
    """Whether the schema exists, and the saga table if it does."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        schema_row = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        (table,) = conn.execute(
            "SELECT to_regclass(%s)::text", (f'"{schema}".fallback_saga_sagas',)
        ).fetchone()
    return schema_row is not None, table


# --------------------------------------------------------------------------- same output


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["list", "--status", "running"],
        ["list", "--name", "ShopSaga", "--limit", "2"],
        ["show", "o-2"],
        ["show", "o-2", "--json"],
        ["show", "o-2", "--mermaid"],
        ["show", "o-3", "--mermaid"],
    ],
    ids=" ".join,
)
def test_read_commands_print_on_postgresql_what_they_print_on_sqlite(
    argv: list[str],
    tmp_path: Path,
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = str(tmp_path / "sagas.db")
    fill_sqlite(db, app)
    fill_postgres(pg_conninfo, pg_schema, app)
    on_sqlite = output([*argv, "--db", db], capsys)
    on_postgres = output([*argv, *pg], capsys)
    if "--json" in argv:
        assert untimed(json.loads(on_postgres)) == untimed(json.loads(on_sqlite))
    else:
        # The context's text too, its keys' order included (json, not jsonb: schema v4).
        assert untimed(on_postgres) == untimed(on_sqlite)
    assert "o-" in on_postgres


def test_errors_name_the_database_without_its_password(
    app: ModuleType,
    pg: list[str],
    pg_cluster: PostgresCluster,
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    assert main(["show", "o-404", *pg]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert error.endswith(
        f"no saga with id 'o-404' in PostgreSQL host=127.0.0.1 port={pg_cluster.port} "
        f"dbname={pg_cluster.dbname} user={pg_cluster.user}, schema {pg_schema}"
    )
    assert pg_cluster.password not in error
    assert output(["list", "--status", "failed", *pg], capsys) == "no sagas match\n"


def test_the_dsn_can_come_from_the_environment(
    app: ModuleType,
    pg_conninfo: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    monkeypatch.setenv("FALLBACK_SAGA_DSN", pg_conninfo)
    rows = json.loads(output(["list", "--schema", pg_schema, "--json"], capsys))
    assert [row["saga_id"] for row in rows] == ["o-3", "o-2", "o-1"]
    record = json.loads(output(["show", "o-1", "--schema", pg_schema, "--json"], capsys))
    assert record["status"] == "completed"


# --------------------------------------------------------------------------- recover, purge


def test_recover_resumes_the_interrupted_sagas_of_a_postgresql_store(
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    pg_cluster: PostgresCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    argv = ["recover", *pg, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    out = output(argv, capsys)
    assert out.startswith(f"recovering sagas in PostgreSQL host=127.0.0.1 port={pg_cluster.port}")
    assert "  o-3: completed\n" in out
    assert "recovered 1 saga(s): 1 completed, 0 compensated, 0 failed" in out
    assert pg_cluster.password not in out
    rows = json.loads(output(["list", *pg, "--json"], capsys))
    assert {row["saga_id"]: row["status"] for row in rows} == {
        "o-1": "completed", "o-2": "compensated", "o-3": "completed",
    }
    # The released lease shows as none (not as its release time).
    assert all(row["lease_owner"] is None for row in rows)
    assert all(row["lease_expires_at"] is None for row in rows)


def test_S12_recover_lists_once_a_postgresql_row_its_claim_cannot_lease(
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """o-3 (left running) with a fence the claim cannot add one to: the
    claim left it out without a word, and ``recover`` said it recovered
    nothing, exit 0. Listed as skipped, once, exit 1 (an operator is needed)."""
    fill_postgres(pg_conninfo, pg_schema, app)
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (pg_schema,))
        conn.execute("UPDATE fallback_saga_sagas SET fence = 9223372036854775807"
                     " WHERE saga_id = 'o-3'")
    argv = ["recover", *pg, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "0 interrupted, 1 skipped" in captured.out
    skipped = [line for line in captured.out.splitlines() if line.startswith("  skipped ")]
    assert skipped == ["  skipped o-3: its row is unreadable: its fence is too large to be "
                       "counted on"]
    assert "o-3" not in captured.err  # the store's log line is not printed on top


def test_S10_resume_resumes_a_parked_saga_of_a_postgresql_store_and_clears_its_count(
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    pg_cluster: PostgresCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """o-3 parked by an app whose stores park after 2 claims: --park-after 2
    makes list say so and recover leave it; resume o-3 resumes it, fenced,
    and its count is 0 again."""
    fill_postgres(pg_conninfo, pg_schema, app)

    async def park() -> None:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema, park_after=2) as store:
            for _ in range(2):  # two workers that died holding the lease
                leases = await store.claim(owner="dead", lease_seconds=-1, older_than=0,
                                           limit=10)
                assert [lease.saga_id for lease in leases] == ["o-3"]

    async def count() -> int:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            return (await store.lease_state("o-3")).unreleased_claims

    asyncio.run(park())
    assert "running (parked)" in output(["list", *pg, "--park-after", "2"], capsys)
    apps = ["--app", f"{app.__name__}:sagas"]
    out = output(["recover", *pg, *apps, "--older-than", "0", "--park-after", "2"], capsys,
                 status=1)  # it left a saga parked: an operator is needed
    assert "recovered 0 saga(s)" in out
    assert "  parked  o-3 (running): not taken; parked: claimed 2 times" in out
    out = output(["resume", "o-3", *pg, *apps], capsys)
    assert out.splitlines()[-1] == "  o-3: completed"
    assert pg_cluster.password not in out
    assert asyncio.run(count()) == 0
    rows = json.loads(output(["list", *pg, "--json"], capsys))
    assert {row["saga_id"]: row["status"] for row in rows}["o-3"] == "completed"


def test_purge_deletes_the_finished_sagas_of_a_postgresql_store(
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    assert output(["purge", *pg, "--older-than", "7d"], capsys).startswith(
        "purged 0 finished sagas "
    )
    assert output(["purge", *pg, "--older-than", "0"], capsys).startswith(
        "purged 2 finished sagas "
    )
    rows = json.loads(output(["list", *pg, "--json"], capsys))
    assert [row["saga_id"] for row in rows] == ["o-3"]


# --------------------------------------------------------------------------- not a store


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["show", "o-1"],
        ["purge", "--older-than", "7d"],
        ["recover", "--app", "json:loads"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_database_without_saga_tables_is_refused_and_left_untouched(
    argv: list[str], pg_conninfo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"t_{uuid.uuid4().hex[:16]}"  # never created: the test checks that
    assert main([*argv, "--dsn", pg_conninfo, "--schema", schema]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert f"schema {schema} holds no fallback_saga saga store" in error
    assert saga_tables(pg_conninfo, schema) == (False, None)


def test_a_schema_that_is_not_an_identifier_is_a_usage_error(
    pg_conninfo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--dsn", pg_conninfo, "--schema", 'x"; DROP TABLE y; --']) == 2
    assert "--schema: schema must be a plain PostgreSQL identifier" in one_line_error(
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- read-only


@pytest.fixture
def reader(pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str) -> Iterator[str]:
    """The conninfo of a role that may only SELECT the saga tables."""
    role, password = f"reader_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    yield (
        f"host=127.0.0.1 port={pg_cluster.port} user={role} password={password} "
        f"dbname={pg_cluster.dbname}"
    )
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_an_operator_who_may_only_select_can_list_and_show(
    app: ModuleType,
    reader: str,
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    role = reader.split("user=")[1].split()[0]
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {role}')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO {role}')
    as_reader = ["--dsn", reader, "--schema", pg_schema]
    rows = json.loads(output(["list", *as_reader, "--json"], capsys))
    assert [row["saga_id"] for row in rows] == ["o-3", "o-2", "o-1"]
    assert "ShopSaga" in output(["show", "o-2", *as_reader], capsys)
    assert output(["show", "o-2", *as_reader, "--mermaid"], capsys).startswith("gantt\n")
    # A command that writes is refused by the server, in one line, no password.
    assert main(["purge", *as_reader, "--older-than", "0"]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert "permission denied" in error
    assert reader.split("password=")[1].split()[0] not in error


def test_read_commands_do_not_migrate_an_older_postgresql_schema(
    app: ModuleType,
    pg: list[str],
    pg_conninfo: str,
    pg_schema: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_postgres(pg_conninfo, pg_schema, app)
    older = SCHEMA_VERSION - 1
    version_table = f'"{pg_schema}".fallback_saga_schema'
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE {version_table} SET version = %s", (older,))
    for argv in (["list"], ["show", "o-1"]):
        assert main([*argv, *pg]) == 1
        error = one_line_error(capsys.readouterr().err)
        assert f"schema version {older}, older than" in error
        assert "a command that only reads does not migrate it" in error
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        assert conn.execute(f"SELECT version FROM {version_table}").fetchone() == (older,)


def test_a_wrong_password_is_a_one_line_failure_that_does_not_print_it(
    pg_cluster: PostgresCluster, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = f"not-{uuid.uuid4().hex}"
    dsn = (
        f"postgresql://{pg_cluster.user}:{wrong}@127.0.0.1:{pg_cluster.port}/{pg_cluster.dbname}"
    )
    assert main(["list", "--dsn", dsn, "--schema", pg_schema]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert "password authentication failed" in error
    assert wrong not in error


# --------------------------------------------------------------------------- behind a pooler


async def test_S13_the_commands_open_a_store_that_works_behind_a_transaction_pooler(
    pg_conninfo: str, pg_schema: str
) -> None:
    """An operator's command often goes through the application's PgBouncer:
    its store prepares nothing (a prepared statement lives on one server
    connection; a short command gains nothing from it anyway)."""
    from fallback_saga.cli.stores import _postgres_target, open_store

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema):
        pass  # the tables, as the application makes them
    async with open_store(_postgres_target(pg_conninfo, pg_schema)) as store:
        assert isinstance(store, PostgresSagaStore)
        assert store.prepared_statements is False
