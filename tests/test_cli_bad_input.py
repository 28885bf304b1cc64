"""The operator commands given bad input (S12: bad input gets a clear error,
and nothing is lost; the CLI: one line, exit status 2, no traceback).

* A corrupt row in a SQLite store (text that is not UTF-8, a BLOB id, a text
  fence, a lease expiry that is no number) is named and skipped: ``list``
  shows the other sagas, ``recover`` resumes the others and reports the
  corrupt one as skipped (exit 1, as for any skipped saga).
* Another program's SQLite file with a ``sagas`` table is refused with exit
  2 by every command, and left as it was (not switched to WAL).
* ``--db file:orders.db`` is the file of that name.
* Numbers too big to mean anything (a 400-digit age, a limit of 10**23) are
  usage errors, as are ``demo --db ""`` and ``demo --db :memory:`` (the
  crash child could not see such a database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers_cli import import_app
from test_cli_ops import APP_SOURCE, one_line_error, run_sagas

from fallback_saga import SagaStoreError, SQLiteSagaStore
from fallback_saga.cli import main
from fallback_saga.cli.errors import CommandFailed, UsageError
from fallback_saga.command_line import PYTHON_M


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from import_app(tmp_path, monkeypatch, APP_SOURCE, "cli_bad_input_app")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sagas.db")


def damage(db: str, sql: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- corrupt rows


@pytest.mark.parametrize(
    ("damage_sql", "shown"),
    [
        ("UPDATE sagas SET saga_name = CAST(X'4f72646572ff' AS TEXT) WHERE saga_id = 'o-2'",
         "'o-2'"),
        ("UPDATE sagas SET saga_id = CAST(X'73ff' AS TEXT) WHERE saga_id = 'o-2'", r"b's\xff'"),
        ("UPDATE sagas SET saga_id = X'6f2d32' WHERE saga_id = 'o-2'", "b'o-2'"),
        # (A finished saga's lease that is unreadable is listed as none:
        # nothing claims it. A time that is no number is not, whatever the
        # status.)
        ("UPDATE sagas SET updated_at = 'soon' WHERE saga_id = 'o-2'", "'o-2'"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_S12_list_names_a_corrupt_row_and_lists_the_others(
    db: str,
    app: ModuleType,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    damage_sql: str,
    shown: str,
    as_json: bool,
) -> None:
    run_sagas(db, app, ("o-1", {}, ""), ("o-2", {}, ""), ("o-3", {}, ""))
    damage(db, damage_sql)
    with caplog.at_level(logging.WARNING):
        assert main(["list", "--db", db, *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    if as_json:
        assert [row["saga_id"] for row in json.loads(out)] == ["o-3", "o-1"]
    else:
        assert "o-1" in out
        assert "o-3" in out
        assert "o-2" not in out
    (warning,) = [record.getMessage() for record in caplog.records]
    assert shown in warning


@pytest.mark.parametrize(
    ("damage_sql", "shown"),
    [
        ("UPDATE sagas SET fence = 'x' WHERE saga_id = 'o-2'", "o-2"),
        ("UPDATE sagas SET saga_id = CAST(X'73ff' AS TEXT) WHERE saga_id = 'o-2'", r"b's\xff'"),
    ],
)
def test_S12_recover_skips_a_corrupt_row_resumes_the_others_and_reports_it(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str], damage_sql: str, shown: str
) -> None:
    run_sagas(
        db, app, ("o-1", {}, "act Charge"), ("o-2", {}, "act Charge"), ("o-3", {}, "act Charge")
    )
    damage(db, damage_sql)
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1  # a skipped saga needs an operator
    out = capsys.readouterr().out
    assert "  o-1: completed" in out
    assert "  o-3: completed" in out
    assert "2 completed, 0 compensated, 0 failed, 0 interrupted, 1 skipped" in out
    (skipped,) = [line for line in out.splitlines() if line.startswith("  skipped ")]
    assert skipped.startswith(f"  skipped {shown}: its row is unreadable: ")


# --------------------------------------------------------------------------- not a saga store


def test_S12_a_db_named_like_a_uri_is_that_file(
    tmp_path: Path,
    app: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_sagas(str(tmp_path / "file:orders.db"), app, ("o-1", {}, ""), ("o-2", {}, ""))
    monkeypatch.chdir(tmp_path)
    assert main(["purge", "--db", "file:orders.db", "--older-than", "0"]) == 0
    assert "purged 2 finished sagas" in capsys.readouterr().out
    assert not (tmp_path / "orders.db").exists()


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "argv",
    [
        ["purge", "--older-than", "9" * 400],
        ["purge", "--older-than", "9" * 306 + "d"],  # finite seconds, infinite days
        ["purge", "--older-than", "1e9999"],
        ["list", "--limit", "1" + "0" * 23],
        ["recover", "--app", "APP", "--limit", "1" + "0" * 23],
        ["recover", "--app", "APP", "--lease", "9" * 400],
    ],
)
def test_a_number_too_big_to_mean_anything_is_a_usage_error(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    run_sagas(db, app, ("o-1", {}, "act Charge"))
    argv = [f"{app.__name__}:sagas" if arg == "APP" else arg for arg in argv]
    assert main([*argv, "--db", db, "--older-than", "0"] if "recover" in argv else
                [*argv, "--db", db]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err


# --------------------------------------------------------------------------- demo


@pytest.mark.parametrize("value", ["", ":memory:"])
def test_demo_refuses_a_db_the_crash_child_cannot_see(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--db", value]) == 2
    captured = capsys.readouterr()
    assert "--db" in one_line_error(captured.err)
    assert captured.out == ""


# --------------------------------------------------------------------------- unknown arguments

# Each command with what it needs to get past its required arguments, so that the
# unknown argument is the only mistake left.
COMMAND_ARGS = {
    "demo": [],
    "graph": ["some_app:Saga"],
    "list": [],
    "show": ["o-1"],
    "recover": ["--app", "some_app:sagas"],
    "resume": ["o-1", "--app", "some_app:sagas"],
    "retry-unwinding": ["o-1", "--app", "some_app:sagas"],
    "purge": ["--older-than", "7d"],
    "serve": [],
    "_crash-demo": ["--db", "x.db", "--saga-id", "s", "--city", "c", "--crash-in", "courier"],
}


def test_every_command_is_checked_for_unknown_arguments() -> None:
    from fallback_saga.cli import build_parser

    (commands,) = [
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    # The hidden command is one of them, though no listing of them shows it.
    assert set(commands.choices) | {"_crash-demo"} == set(COMMAND_ARGS)
    assert "_crash-demo" in commands.choices


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
@pytest.mark.parametrize("unknown", [["--bogus"], ["--bogus=1"], ["stray"]])
def test_an_unknown_argument_is_reported_with_its_commands_usage_and_name(
    command: str, unknown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *COMMAND_ARGS[command], *unknown]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    usage, error = captured.err.strip().split("\n", 1)[0], captured.err.strip().splitlines()[-1]
    assert usage.startswith(f"usage: {PYTHON_M} {command} ")
    assert error == f"{PYTHON_M} {command}: error: unrecognized arguments: {unknown[0]}"


def test_an_unknown_option_before_the_command_is_the_top_levels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--bogus", "demo"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"usage: {PYTHON_M} [-h]")
    assert lines[-1] == f"{PYTHON_M}: error: unrecognized arguments: --bogus"


# --------------------------------------------------------------------------- argparse's own errors

# What argparse quotes back in its error line: an argument that would retitle
# the terminal and clear its screen, and one holding a password.
HOSTILE_ARG = "\x1b]0;pwned\x07\x1b[2J"
HOSTILE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"
SECRET_ARG = "postgresql://app:hunter2@db/orders"

# Every way argparse refuses an argument, with ``{}`` where it is: unknown
# (for every command, alone and as an option's value, and before the
# command), an ambiguous prefix, a choice it does not offer, a value its
# type refuses.
ARGPARSE_ERRORS = [
    *([command, *args, "{}"] for command, args in COMMAND_ARGS.items()),
    *([command, *args, "--bogus={}"] for command, args in COMMAND_ARGS.items()),
    ["--bogus={}", "list"],
    ["list", "--d={}"],
    ["{}"],
    ["graph", "some_app:Saga", "--direction", "{}"],
    ["list", "--status", "{}"],
    ["_crash-demo", *COMMAND_ARGS["_crash-demo"][:-1], "{}"],
    ["list", "--limit", "{}"],
    ["show", "o-1", "--limit", "{}"],
    ["purge", "--older-than", "{}"],
    ["purge", "--older-than", "7d", "--status", "{}"],
    ["recover", "--app", "some_app:sagas", "--lease", "{}"],
    ["serve", "--port", "{}"],
    ["serve", "--page-size", "{}"],
]


@pytest.mark.parametrize("argv", ARGPARSE_ERRORS, ids=" ".join)
def test_argparse_errors_escape_and_redact_the_argument_they_quote(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own error line quoted a stray argument, an unknown choice
    or a refused value as given: an escape sequence in it acted on the
    operator's terminal, and a password in it was shown. It goes through
    the same ``redact`` and ``terminal_text`` as every other text printed."""
    assert main([arg.replace("{}", HOSTILE_ARG) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert all(line.isprintable() for line in err.splitlines()), err
    assert "pwned" in err
    assert main([arg.replace("{}", SECRET_ARG) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_argparse_unknown_password_option_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--password", "hunter2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"{PYTHON_M} list: error: unrecognized arguments: --password ***"


def test_argparse_error_escapes_what_it_quotes_and_keeps_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "--bogus", HOSTILE_ARG]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"{PYTHON_M} list: error: unrecognized arguments: --bogus {HOSTILE_SHOWN}"
    assert main(["list", "--db"]) == 2  # a missing value: nothing quoted
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"{PYTHON_M} list: error: argument --db: expected one argument"


# ------------------------------------------------------------------------ the commands' own errors

DSN_WITH_PASSWORD = "postgresql://app:hunter2@db.internal/orders"


def test_a_usage_error_quoting_a_dsn_with_a_password_is_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command's own error line quotes what the operator typed (an unknown
    saga id, a --host): redacted as argparse's line is, then escaped."""
    db = str(tmp_path / "sagas.db")

    async def create() -> None:
        async with SQLiteSagaStore(db):
            pass

    asyncio.run(create())
    assert main(["show", DSN_WITH_PASSWORD, "--db", db]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "no saga with id 'postgresql://app:***@db.internal/orders'" in err


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UsageError(f"--host {DSN_WITH_PASSWORD}\x1b[2J: no such host"), 2),
        (CommandFailed(f"cannot listen on {DSN_WITH_PASSWORD}\x1b[2J"), 1),
        (SagaStoreError(f"cannot open {DSN_WITH_PASSWORD}\x1b[2J password=hunter2"), 1),
    ],
    ids=["UsageError", "CommandFailed", "SagaStoreError"],
)
def test_every_error_line_of_a_command_is_redacted_then_escaped(
    error: Exception, status: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fallback_saga.cli import inspect

    def failing(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(inspect, "run_list", failing)
    assert main(["list", "--db", "x.db"]) == status
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "postgresql://app:***@db.internal/orders\\x1b[2J" in err
    assert err.rstrip("\n").isprintable()
