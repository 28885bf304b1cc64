"""What the CLI prints is safe for the operator's terminal.

Every value the human formats print (tables, ``show``, ``recover`` lines and
report, errors) comes from the store, so from whoever chose a saga id, an
owner name or an exception's text: control characters (C0, C1, DEL) and
bidi overrides are shown escaped (``\\x1b``), overlong values cut with an
ellipsis, so column widths are bounded. ``--json`` prints exact JSON whose
text holds no character a terminal would act on.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shlex
import sqlite3
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers_cli import import_app

from fallback_saga import SagaStatus, SQLiteSagaStore, StepStatus
from fallback_saga.cli import MAX_CELL, MAX_CONTEXT, MAX_VALUE, main, terminal_text
from fallback_saga.testing import entry

# Characters a terminal acts on: clear the screen, a CSI (C1), DEL, a
# right-to-left override (reorders the rest of the line), a bidi isolate.
HOSTILE = "a\x1b[2Jb\x9b31m\x7fc\u202edcba\u2066"
SHOWN = "a\\x1b[2Jb\\x9b31m\\x7fc\\u202edcba\\u2066"
# A context may hold a lone surrogate too (JSON carries it; a terminal cannot).
NOTE = HOSTILE + "\ud800"
HUGE = "H" * 1_000_000


def assert_terminal_safe(text: str) -> None:
    for line in text.split("\n"):
        assert line.isprintable(), repr(line[:200])


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "sagas.db")


def make_store(db: str) -> None:
    """Sagas whose every stored value is hostile: one through the store (the
    saga id too), one as a legacy row with a 1 MB id, name, owner and error
    (written before ids were checked; the store refuses such ids now)."""

    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create(
                HOSTILE, f"Saga{HOSTILE}", f"fp{HOSTILE}", {"note": NOTE, "n": 1},
                [entry(0, f"step{HOSTILE}")],
            )
            await store.append(
                HOSTILE,
                [entry(0, f"step{HOSTILE}", StepStatus.FAILED, error=f"boom {HOSTILE}")],
                status=SagaStatus.RUNNING,
            )
            await store.claim_saga(HOSTILE, owner=f"worker{HOSTILE}", lease_seconds=300)

    asyncio.run(go())
    now = time.time()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at, lease_owner, lease_expires_at) VALUES"
        " (?, ?, 'fp', 'completed', '{}', 1, ?, ?, ?, ?)",
        (HUGE, "N" * 1_000_000, now, now, "O" * 1_000_000, now + 300),
    )
    conn.execute(
        "INSERT INTO saga_steps VALUES (?, 0, 0, ?, 'primary', 'act', 'failed', 1, ?, ?, NULL)",
        (HUGE, "S" * 1_000_000, "E" * 1_000_000, now),
    )
    conn.close()


# --------------------------------------------------------------------------- the function


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("order-1", "order-1"),
        ("commande été 🙂", "commande été 🙂"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x07\t\n\r", "\\x00\\x07\\x09\\x0a\\x0d"),
        ("\x7f\x80\x9f", "\\x7f\\x80\\x9f"),
        ("\u202e\u202a\u200f\u2067\u2069\u061c", "\\u202e\\u202a\\u200f\\u2067\\u2069\\u061c"),
        ("\u2028\ud800", "\\u2028\\ud800"),
        ("\U000e0041", "\\U000e0041"),
        (42, "42"),
    ],
)
def test_terminal_text_escapes_every_character_a_terminal_acts_on(
    value: object, shown: str
) -> None:
    assert terminal_text(value) == shown


def test_terminal_text_cuts_overlong_values_with_an_ellipsis() -> None:
    cut = terminal_text(HUGE)
    assert len(cut) == MAX_CELL
    assert cut == "H" * (MAX_CELL - 1) + "…"
    assert terminal_text("x" * MAX_CELL) == "x" * MAX_CELL  # exactly the limit: whole
    assert len(terminal_text(HUGE, 10)) == 10


def test_terminal_text_never_cuts_inside_an_escape() -> None:
    cut = terminal_text("x" * (MAX_CELL - 3) + "\x1b" * 5)
    assert cut == "x" * (MAX_CELL - 3) + "…"
    assert terminal_text("\x1b" * 100, 9) == "\\x1b\\x1b…"


# --------------------------------------------------------------------------- list


def test_list_escapes_control_characters_in_every_value(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    assert main(["list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    assert SHOWN in out  # the id, escaped visibly, not dropped
    assert f"Saga{SHOWN}"[:MAX_CELL - 1] in out
    assert "worker" in out


def test_list_column_widths_are_bounded_for_overlong_values(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    assert main(["list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    # id, saga and lease owner cells at most MAX_CELL each, plus the fixed columns
    assert max(map(len, lines)) <= 3 * MAX_CELL + 80
    assert "H" * (MAX_CELL - 1) + "…" in lines[2] + lines[3]


def test_list_json_is_exact_json_with_unsafe_characters_escaped(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    assert main(["list", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    rows = {row["saga_id"]: row for row in json.loads(out)}
    assert rows[HOSTILE]["saga_name"] == f"Saga{HOSTILE}"  # exact, every character
    assert rows[HOSTILE]["lease_owner"] == f"worker{HOSTILE}"
    assert rows[HUGE]["saga_name"] == "N" * 1_000_000  # JSON is never cut
    assert "\\u001b[2J" in out
    assert "\\u202e" in out


def test_list_json_keeps_readable_text_readable(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("commande-été", "Saga", "fp", {}, [])

    asyncio.run(go())
    assert main(["list", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"commande-été"' in out


# --------------------------------------------------------------------------- show


def test_show_escapes_the_header_the_context_and_the_history(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    assert main(["show", HOSTILE, "--db", db]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    header, _, table = out.partition("\n\n")
    fields = dict(line.split(None, 1) for line in header.splitlines())
    assert fields["saga"] == SHOWN
    assert fields["name"] == f"Saga{SHOWN}"
    assert fields["fingerprint"] == f"fp{SHOWN}"
    assert json.loads(fields["context"]) == {"note": NOTE, "n": 1}  # still JSON, exact
    assert "boom a\\x1b[2J" in table
    assert f"step{SHOWN}"[:MAX_CELL - 1] in table


def test_show_cuts_overlong_values(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(db)
    conn = sqlite3.connect(db, isolation_level=None)
    long_context = json.dumps({"blob": "C" * 1_000_000})
    conn.execute(
        "INSERT INTO sagas (saga_id, saga_name, fingerprint, status, context, version,"
        " created_at, updated_at) VALUES ('big', ?, ?, 'completed', ?, 1, 0, 0)",
        ("N" * 1_000_000, "F" * 1_000_000, long_context),
    )
    conn.execute(
        "INSERT INTO saga_steps VALUES ('big', 0, 0, ?, 'primary', 'act', 'failed', 1, ?, 0, NULL)",
        ("S" * 1_000_000, "E" * 1_000_000),
    )
    conn.close()
    assert main(["show", "big", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= MAX_CONTEXT + 100
    assert all(line.endswith("…") for line in lines if line.startswith("name"))
    context = next(line for line in lines if line.startswith("context"))
    more = len(long_context) - (MAX_CONTEXT - 0)
    assert context.endswith(f"C… {more:,} more bytes; the whole context: show big --json")
    history = lines[-1]
    assert len(history) <= MAX_CELL + MAX_VALUE + 80


def test_show_of_an_id_no_store_can_hold_is_a_short_usage_error(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    for saga_id in (HUGE, "", "\x1b[2Jmissing"):
        assert main(["show", saga_id, "--db", db]) == 2
        err = capsys.readouterr().err
        assert_terminal_safe(err)
        assert len(err) < 400, err


def test_show_json_is_exact_json_with_unsafe_characters_escaped(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(db)
    assert main(["show", HOSTILE, "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    data = json.loads(out)
    assert data["saga_id"] == HOSTILE
    assert data["context"] == {"note": NOTE, "n": 1}
    assert data["history"][-1]["error"] == f"boom {HOSTILE}"


def test_show_mermaid_escapes_what_it_draws(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(db)
    assert main(["show", HOSTILE, "--db", db, "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    assert max(map(len, out.splitlines())) <= MAX_VALUE + 80


# --------------------------------------------------------------------------- recover


APP_SOURCE = """
import dataclasses

from fallback_saga import Saga, SagaContext, SagaStepHandler


@dataclasses.dataclass
class Ctx(SagaContext):
    note: str = ""
    n: int = 0


class Noop(SagaStepHandler[Ctx, None]):
    async def act(self, context: Ctx) -> None:
        pass

    async def compensate(self, context: Ctx) -> None:
        pass


class KnownSaga(Saga[Ctx]):
    steps = [Noop]


def sagas(store):
    return [KnownSaga(store=store)]
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh app module (its own name per test)."""
    yield from import_app(tmp_path, monkeypatch, APP_SOURCE, "cli_escaping_app")


def test_recover_lines_and_report_escape_saga_ids_and_reasons(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            # A saga of a name the app does not know: skipped, with a reason.
            await store.create(HOSTILE, f"Gone{HOSTILE}", "fp", {}, [])

    asyncio.run(go())
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    assert f"  {SHOWN}: skipped" in out
    assert f"  skipped {SHOWN}: no saga named 'Gone" in out
    assert "recovered 1 saga(s): 0 completed, 0 compensated, 0 failed," in out
    assert " 1 skipped" in out


def test_cli_errors_are_escaped_and_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / f"no-such-{HOSTILE}.db")
    assert main(["list", "--db", missing]) == 2
    err = capsys.readouterr().err
    assert_terminal_safe(err)
    assert "\\x1b[2J" in err


# --------------------------------------------------------------------------- --app runs code


def test_recover_help_says_plainly_that_app_runs_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["recover", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "RUNS CODE" in text
    assert "with your privileges" in text
    assert "trusted modules only" in text


def test_graph_help_says_that_importing_runs_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "runs the module's top-level code" in text


def test_S12_show_bounds_a_huge_context_says_how_much_is_left_and_never_cuts_into_a_password(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``show`` of a several-MB context prints its start and "… N more bytes;
    the whole context: show ID --json" (it said "…" only); a step error
    quoting a password is redacted before the history table cuts it."""
    password = "Zq9Zq9Zq9Zq9Zq9Zq9"
    error = "e" * (MAX_VALUE - len("postgresql://app:") - 4) + (
        f"postgresql://app:{password}@db/x " + "e" * 10_000
    )
    context = {"rows": [f"row {i}" for i in range(400_000)]}

    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("o'big", "Big", "fp", context,
                               [entry(0, "Pay", StepStatus.FAILED, error=error)])

    asyncio.run(go())
    assert main(["show", "o'big", "--db", db]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("context"))
    more = len(json.dumps(context, ensure_ascii=False).encode()) - MAX_CONTEXT
    assert line.endswith(f"… {more:,} more bytes; the whole context: show 'o'\"'\"'big' --json")
    assert len(out) < 10_000
    assert "Zq9" not in out
    assert "postgresql://app:***" in out


# --------------------------------------------------------------------------- a command to type


# A saga id with what a shell splits on or reads (a space, quotes, a "$") and
# what a terminal acts on: every command that tells the operator a command
# to type quotes it with the one helper, and shows it safely.
TYPED_ID = "order 42 'x' \"$HOME\"\x1b[2J"


def test_quoted_id_quotes_for_a_shell_then_escapes_for_a_terminal() -> None:
    from fallback_saga.cli.text import quoted_id

    shown = quoted_id(TYPED_ID)
    assert shown.isprintable()
    assert "\x1b" not in shown
    assert "\\x1b[2J" in shown
    # Without the escape sequence, what is shown is what a shell reads back.
    assert shlex.split(quoted_id("order 42 'x' \"$HOME\"")) == ["order 42 'x' \"$HOME\""]
    assert quoted_id("order-1") == "order-1"
    assert quoted_id("o" * 1000).endswith("…")  # cut as any value on a line of its own


def _typed_id_store(db: str, status: SagaStatus, context: dict[str, object]) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create(TYPED_ID, "KnownSaga", "fp", context, [], status=status)

    asyncio.run(go())


def test_show_tells_the_json_command_with_the_id_quoted_and_escaped(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _typed_id_store(db, SagaStatus.COMPLETED, {"note": "n" * (MAX_CONTEXT * 2)})
    assert main(["show", TYPED_ID, "--db", db]) == 0
    out = capsys.readouterr().out
    assert_terminal_safe(out)
    assert "the whole context: show 'order 42 '\"'\"'x'\"'\"' \"$HOME\"\\x1b[2J' --json" in out


def test_resume_of_a_failed_saga_tells_retry_unwinding_with_the_id_quoted_and_escaped(
    db: str, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    _typed_id_store(db, SagaStatus.FAILED, {})
    argv = ["resume", TYPED_ID, "--db", db, "--app", f"{app.__name__}:sagas"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_terminal_safe(err)
    assert "retry-unwinding 'order 42 '\"'\"'x'\"'\"' \"$HOME\"\\x1b[2J'" in err


# --------------------------------------------------------------- a terminal that is not UTF-8

# A saga id in Latin-1, beyond it (CJK) and beyond the BMP (an emoji).
WORLDLY = "commande-été-日本-😀"


class _AsciiTerminal:
    """``sys.stdout`` as ``PYTHONIOENCODING=ascii`` (or a Windows console in
    cp1252, a pipe under LANG=C on an old Python) makes it: an ASCII text
    stream, strict, over bytes the test reads back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.raw = io.BytesIO()
        self.stream = io.TextIOWrapper(self.raw, encoding="ascii", errors="strict")
        monkeypatch.setattr(sys, "stdout", self.stream)

    def text(self) -> str:
        self.stream.flush()
        return self.raw.getvalue().decode("ascii")  # the bytes are ASCII, or this fails


def _worldly_store(db: str) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create(WORLDLY, "Saga", "fp", {"note": WORLDLY}, [entry(0, "Réserver")])

    asyncio.run(go())


def test_human_formats_and_help_print_on_a_terminal_that_is_not_utf8(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a raw UnicodeEncodeError traceback (exit 1) for ``list``, ``show``
    and even ``--help`` (its text has dashes): a character the terminal cannot
    show is written as an escape, as ``terminal_text`` shows a control one."""
    _worldly_store(db)
    for argv in (["list", "--db", db], ["show", WORLDLY, "--db", db],
                 ["show", WORLDLY, "--db", db, "--mermaid"], ["list", "--help"]):
        terminal = _AsciiTerminal(monkeypatch)
        assert main(argv) == 0, argv
        out = terminal.text()
        if argv[-1] != "--help":
            assert "commande-\\xe9t\\xe9-\\u65e5\\u672c-\\U0001f600" in out, argv


def test_json_on_a_terminal_that_is_not_utf8_is_still_exact_json(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a UnicodeEncodeError traceback; a Python escape (``\\xe9``) would
    not be JSON: what the terminal cannot show is written as a JSON escape."""
    _worldly_store(db)
    terminal = _AsciiTerminal(monkeypatch)
    assert main(["list", "--db", db, "--json"]) == 0
    assert [row["saga_id"] for row in json.loads(terminal.text())] == [WORLDLY]
    terminal = _AsciiTerminal(monkeypatch)
    assert main(["show", WORLDLY, "--db", db, "--json"]) == 0
    data = json.loads(terminal.text())
    assert data["saga_id"] == WORLDLY
    assert data["context"] == {"note": WORLDLY}


def _columns_start(lines: list[str], width_of: Any) -> set[tuple[int, ...]]:
    """Where each column of a ``list`` table starts on each line (after two
    or more spaces), in the cells a terminal gives the text before it
    (``width_of``): one tuple per line, so an aligned table gives one."""
    return {
        tuple(width_of(line[: gap.end()]) for gap in re.finditer("  +", line))
        for line in lines
    }


def _terminal_width(text: str) -> int:
    """Cells a terminal gives ``text``: East Asian wide and full-width
    characters take two, combining marks none (Unicode's East Asian Width)."""
    return sum(
        0 if unicodedata.combining(char) else
        2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def _two_sagas(db: str, *ids: str) -> None:
    async def go() -> None:
        async with SQLiteSagaStore(db) as store:
            for saga_id in ids:
                await store.create(saga_id, "Saga", "fp", {}, [entry(0, "Réserver")])

    asyncio.run(go())


def test_list_columns_stay_aligned_on_a_terminal_that_is_not_utf8(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the width of an id was counted before the terminal's escapes
    widened it (``é`` written as ``\\xe9``, four characters), so the columns
    after it stood out of line."""
    _two_sagas(db, WORLDLY, "order-plain")
    terminal = _AsciiTerminal(monkeypatch)
    assert main(["list", "--db", db]) == 0
    lines = terminal.text().splitlines()[:-1]  # (the last: how many are listed)

    assert len(lines) == 4
    assert len(_columns_start(lines, len)) == 1, lines


def test_list_columns_stay_aligned_with_wide_and_combining_characters(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CJK character takes two cells of a terminal, a combining accent
    none: counted as one each, the columns after such an id stood out of
    line."""
    _two_sagas(db, "注文-日本-1", "order-plain-12", "cafe\u0301-1")
    assert main(["list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()[:-1]

    assert len(lines) == 5
    assert len(_columns_start(lines, _terminal_width)) == 1, lines
