"""Which store a command works on: ``--db`` or ``--dsn`` (exclusive), else
``$FALLBACK_SAGA_DSN``, else ``$FALLBACK_SAGA_DB``; one-line errors, exit 2,
when none (or both variables) are given or a DSN does not parse, exit 1 when
a server cannot be reached — and never a password in any of them. The
tests that need a PostgreSQL server are in ``test_cli_postgres.py``."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from fallback_saga import SQLiteSagaStore
from fallback_saga.cli import main
from fallback_saga.testing import entry

COMMANDS = {
    "list": [],
    "show": ["o-1"],
    "purge": ["--older-than", "7d"],
    "recover": ["--app", "no_such_module_needed:sagas"],
}
PASSWORD = "Tr0ub4dor-3"


@pytest.fixture(autouse=True)
def _no_store_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLBACK_SAGA_DSN", raising=False)
    monkeypatch.delenv("FALLBACK_SAGA_DB", raising=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "sagas.db")

    async def fill() -> None:
        async with SQLiteSagaStore(path) as store:
            await store.create("o-1", "OrderSaga", "fp", {}, [entry(0, "a")])

    asyncio.run(fill())
    return path


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def needs_driver() -> None:
    pytest.importorskip("psycopg", reason="--dsn needs psycopg (the [postgres] extra)")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("command", ["list", "show", "purge"])
def test_no_store_given_is_a_usage_error(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *COMMANDS[command]]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "pass --db PATH (SQLite) or --dsn DSN (PostgreSQL)" in error
    assert "FALLBACK_SAGA_DSN" in error


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_db_and_dsn_exclude_each_other(
    command: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *COMMANDS[command], "--db", db, "--dsn", "dbname=x"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_db_can_come_from_the_environment(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALLBACK_SAGA_DB", db)
    assert main(["list", "--json"]) == 0
    assert [row["saga_id"] for row in json.loads(capsys.readouterr().out)] == ["o-1"]
    assert main(["show", "o-404"]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(f"no saga with id 'o-404' in {db}")


def test_an_option_wins_over_the_environment(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALLBACK_SAGA_DB", str(tmp_path / "elsewhere.db"))
    monkeypatch.setenv("FALLBACK_SAGA_DSN", "host=nowhere.invalid")
    assert main(["list", "--db", db, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_both_variables_set_is_a_usage_error(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FALLBACK_SAGA_DB", db)
    monkeypatch.setenv("FALLBACK_SAGA_DSN", f"host=127.0.0.1 password={PASSWORD}")
    assert main(["list"]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "both $FALLBACK_SAGA_DSN and $FALLBACK_SAGA_DB are set" in error
    assert PASSWORD not in error


def test_schema_is_for_postgresql_only(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--db", db, "--schema", "orders"]) == 2
    assert "--schema is for a PostgreSQL store" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        # libpq quotes what it could not parse: here, the password.
        (f"postgresql://orders:{PASSWORD[:4]} {PASSWORD[4:]}@db.internal/orders", 'in "…"'),
        (f"host=db.internal password {PASSWORD}", 'missing "=" after "…"'),
        # A key is no secret, and says what is wrong.
        (f"host=db.internal pasword={PASSWORD}", 'invalid connection option "pasword"'),
    ],
)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_malformed_dsn_is_a_usage_error_that_shows_no_part_of_it(
    command: str, dsn: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_driver()
    argv = [command, *COMMANDS[command], "--dsn", dsn]
    if command == "recover":
        argv[2] = "json:loads"  # a module that imports: the DSN is what is wrong
    assert main(argv) == 2
    error = one_line_error(capsys.readouterr().err)
    assert "--dsn is not a PostgreSQL connection string" in error
    assert shown in error
    assert PASSWORD[:4] not in error
    assert PASSWORD[4:] not in error


@pytest.mark.parametrize("command", ["list", "show", "purge"])
@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port={port} user=ops password={password} dbname=orders",
        "postgresql://ops:{password}@127.0.0.1:{port}/orders",
    ],
    ids=["conninfo", "url"],
)
def test_an_unreachable_server_is_a_one_line_failure_without_the_password(
    command: str,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    needs_driver()
    monkeypatch.setenv("FALLBACK_SAGA_DSN", dsn.format(port=closed_port(), password=PASSWORD))
    assert main([command, *COMMANDS[command]]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert error.startswith("python -m fallback_saga: error: cannot connect to PostgreSQL ")
    assert "host=127.0.0.1" in error
    assert "dbname=orders" in error
    assert "Connection refused" in error
    assert PASSWORD not in error


def test_dsn_without_the_driver_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    for name in [name for name in sys.modules if name.split(".")[0] == "psycopg"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    assert main(["list", "--dsn", f"host=db password={PASSWORD}"]) == 2
    error = one_line_error(capsys.readouterr().err)
    assert 'pip install "fallback-saga[postgres]"' in error
    assert PASSWORD not in error


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://ops:{PASSWORD}@db.internal:5432/orders?sslmode=require",
        f"host=db.internal port=5432 dbname=orders user=ops password={PASSWORD}",
        f"host=db.internal dbname=orders user=ops password='{PASSWORD}' sslpassword=x{PASSWORD}",
    ],
    ids=["url", "conninfo", "quoted"],
)
def test_a_store_target_names_the_database_and_never_its_password(dsn: str) -> None:
    needs_driver()
    import argparse

    from fallback_saga.cli.stores import store_target

    target = store_target(argparse.Namespace(db=None, dsn=dsn, schema="shop"), environ={})
    assert target.shown == (
        "PostgreSQL host=db.internal port=5432 dbname=orders user=ops, schema shop"
        if "5432" in dsn
        else "PostgreSQL host=db.internal dbname=orders user=ops, schema shop"
    )
    assert PASSWORD not in repr(target)
    assert PASSWORD not in target.scrub(f"the driver said: {dsn} (password {PASSWORD})")
