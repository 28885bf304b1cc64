"""Rows written by someone with write access to the database (or by a bug):
JSON nested thousands of levels deep, ``NaN``, integers too long to read.
S12: each is reported as that one saga's corrupt record -- by ``load``,
recovery, the console and ``show`` -- and never crashes them, nor is taken
for a failing store; a step response that cannot be read resumes as an
``UnjournaledResponse``. What the library itself journals, as deep as
``MAX_CONTEXT_DEPTH`` allows, still reads back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers_console import fetch

from fallback_saga import (
    ContextDecodeError,
    CorruptSagaRecord,
    Saga,
    SagaContext,
    SagaDefinitionChanged,
    SagaStepHandler,
    SQLiteSagaStore,
    UnjournaledResponse,
    recover,
)
from fallback_saga.cli import main
from fallback_saga.codec import MAX_CONTEXT_DEPTH
from fallback_saga.console import ConsoleServer
from fallback_saga.context import context_from_dict
from fallback_saga.log_lines import one_line
from fallback_saga.store._common import encode_json
from fallback_saga.stored_json import MAX_STORED_DEPTH, parse_stored_json


@dataclass
class Order(SagaContext):
    data: Any = None
    card: str = "4111111111111111"


class Reserve(SagaStepHandler[Order, Any]):
    async def act(self, context: Order) -> Any:
        return {"reservation": "R-1"}


class Crash(BaseException):
    """The process dying mid-step."""


class Ship(SagaStepHandler[Order, None]):
    crash = True

    async def act(self, context: Order) -> None:
        if Ship.crash:
            raise Crash


class OrderSaga(Saga[Order]):
    steps = [Reserve, Ship]


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


DEEP = [MAX_STORED_DEPTH + 1, 900, 100_000]  # past the bound, at json's limit, far past it


async def _left_running(path: Path, *saga_ids: str) -> None:
    """Sagas that crashed in their second step: RUNNING, the first step's
    response journaled."""
    Ship.crash = True
    async with SQLiteSagaStore(path) as store:
        for saga_id in saga_ids:
            with pytest.raises(Crash):
                await OrderSaga(store=store).run(Order(), saga_id=saga_id)
    Ship.crash = False


def _damage(path: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def _set_context(path: Path, saga_id: str, text: str) -> None:
    _damage(path, "UPDATE sagas SET context = ? WHERE saga_id = ?", text, saga_id)


def _set_response(path: Path, saga_id: str, text: str) -> None:
    _damage(
        path, "UPDATE saga_steps SET result = ? WHERE saga_id = ? AND result IS NOT NULL",
        text, saga_id,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("levels", DEEP)
def test_S12_stored_json_nested_too_deep_is_a_value_error(levels: int) -> None:
    with pytest.raises(ValueError, match="nested deeper than"):
        parse_stored_json(nested(levels))


@pytest.mark.parametrize(
    "note", ["[" * 5000, '\\"{' * 5000, "\\" * 10 + "[" * 5000, '"[' * 5000 + "\\"]
)
def test_S12_brackets_inside_strings_do_not_count_as_nesting(note: str) -> None:
    text = json.dumps({"note": note, "list": [[1]], "also": ["[[", "{{"] * 500})
    assert parse_stored_json(text)["note"] == note


def test_S12_the_depth_counts_brackets_and_braces_alike() -> None:
    deepest = '[{"a": ' * (MAX_STORED_DEPTH // 2) + "0" + "}]" * (MAX_STORED_DEPTH // 2)
    assert parse_stored_json(deepest)
    with pytest.raises(ValueError, match="nested deeper than"):
        parse_stored_json("[" + deepest + "]")


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "9" * 5000])
def test_S12_stored_json_that_is_not_strict_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"not JSON|digits"):
        parse_stored_json(text)


@pytest.mark.parametrize(
    "make",
    [
        lambda value: {1: value},  # {"$fs": ["dict", [[1, ...]]]}: four levels a level
        lambda value: (value,),
        lambda value: [value],
    ],
    ids=["dict-with-int-keys", "tuple", "list"],
)
def test_S12_the_deepest_context_the_library_journals_reads_back(make: Any) -> None:
    """The bound leaves room for what the library itself writes."""
    value: Any = 1
    for _ in range(MAX_CONTEXT_DEPTH - 1):
        value = make(value)
    text = encode_json(Order(data=value).to_dict())
    assert context_from_dict(Order, parse_stored_json(text)).data == value


# --------------------------------------------------------------------------- the store and recovery


@pytest.mark.parametrize("levels", DEEP)
async def test_S12_a_context_nested_too_deep_is_a_corrupt_record_naming_the_saga(
    db: Path, levels: int
) -> None:
    await _left_running(db, "deep", "fine")
    _set_context(db, "deep", '{"data": ' + nested(levels) + "}")
    async with SQLiteSagaStore(db) as store:
        with pytest.raises(CorruptSagaRecord, match=r"'deep'.*nested") as raised:
            await store.load("deep")
        assert "[[" not in str(raised.value)
        assert (await store.load("fine")).context["data"] is None
        assert {summary.saga_id for summary in await store.list_sagas()} == {"deep", "fine"}


async def test_S12_recovery_skips_a_too_deep_context_as_corrupt_and_resumes_the_others(
    db: Path,
) -> None:
    await _left_running(db, "deep", "fine")
    _set_context(db, "deep", '{"data": ' + nested(100_000) + "}")
    async with SQLiteSagaStore(db) as store:
        report = await recover(store, [OrderSaga], older_than=0)
        assert report.resumed == ["fine"]
        [(saga_id, reason)] = report.skipped
        assert saga_id == "deep"
        assert reason.startswith("CorruptSagaRecord")
        # Its lease is kept (as for any corrupt row): no worker claims it again at once.
        assert await store.claim(owner="another", lease_seconds=60, older_than=0, limit=10) == []


@pytest.mark.parametrize("levels", DEEP)
async def test_S12_a_response_nested_too_deep_resumes_as_unjournaled(
    db: Path, levels: int
) -> None:
    await _left_running(db, "deep")
    _set_response(db, "deep", nested(levels))
    async with SQLiteSagaStore(db) as store:
        result = await OrderSaga(store=store).resume("deep")
    response = result.results[0].response
    assert isinstance(response, UnjournaledResponse)
    assert "nested" in response.reason


# --------------------------------------------------------------------------- operator surfaces


@pytest.fixture
async def console(db: Path) -> AsyncIterator[ConsoleServer]:
    await _left_running(db, "deep-context", "deep-response", "nan-response")
    _set_context(db, "deep-context", '{"data": ' + nested(100_000) + "}")
    _set_response(db, "deep-response", nested(100_000))
    _set_response(db, "nan-response", '{"total": NaN}')
    async with SQLiteSagaStore(db, read_only=True) as store, ConsoleServer(
        store, port=0
    ) as server:
        yield server


@pytest.mark.parametrize("saga_id", ["deep-response", "nan-response"])
async def test_S12_the_console_shows_a_saga_whose_response_cannot_be_parsed(
    console: ConsoleServer, saga_id: str
) -> None:
    page = await fetch(console.url + f"sagas/{saga_id}")
    assert page.status == 200
    api = await fetch(console.url + f"api/sagas/{saga_id}")
    assert api.status == 200
    # Strict JSON (no NaN), the response shown as the text the row holds.
    data = json.loads(api.body, parse_constant=pytest.fail)
    assert [entry["result"] for entry in data["history"] if entry["result"]] == [
        nested(100_000) if saga_id == "deep-response" else '{"total": NaN}'
    ]


async def test_S12_the_console_says_a_too_deep_context_is_unreadable(
    console: ConsoleServer,
) -> None:
    for path in ("sagas/deep-context", "api/sagas/deep-context"):
        reply = await fetch(console.url + path)
        assert reply.status == 422, path
        assert "nested" in reply.text
    assert (await fetch(console.url)).status == 200
    assert (await fetch(console.url + "metrics")).status == 200


def test_S12_show_reports_hostile_rows_without_a_traceback(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_left_running(db, "deep-context", "deep-response"))
    _set_context(db, "deep-context", '{"data": ' + nested(100_000) + "}")
    _set_response(db, "deep-response", nested(100_000))
    assert main(["show", "deep-response", "--json", "--db", str(db)]) == 0
    json.loads(capsys.readouterr().out)
    assert main(["show", "deep-context", "--db", str(db)]) == 1
    error = capsys.readouterr().err
    assert "'deep-context'" in error
    assert "nested" in error
    assert "Traceback" not in error


# --------------------------------------------------------------------------- class names in rows


@pytest.mark.parametrize("tag", ["obj", "enum"])
def test_S12_a_stored_class_name_never_runs_a_module_getattr(
    tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module's ``__getattr__`` (PEP 562) may import a submodule on first
    use, as ``concurrent.futures`` does: looking a stored name up must not
    call it -- the journal never makes the library import or run code."""
    asked: list[str] = []

    def lazy(name: str) -> Any:
        asked.append(name)
        raise AttributeError(name)

    module = types.ModuleType("lazy_app")
    module.__getattr__ = lazy  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "lazy_app", module)
    stored = {"data": {"$fs": [tag, ["lazy_app:Submodule.Model", {}]]}}
    with pytest.raises(ContextDecodeError, match="no class"):
        context_from_dict(Order, stored)
    assert asked == []


def test_S12_a_stored_class_name_never_runs_a_metaclass_getattr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    class Lazy(type):
        def __getattr__(cls, name: str) -> Any:
            asked.append(name)
            raise AttributeError(name)

    class Holder(metaclass=Lazy):
        pass

    module = types.ModuleType("meta_app")
    module.Holder = Holder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "meta_app", module)
    with pytest.raises(ContextDecodeError, match="no class"):
        context_from_dict(Order, {"data": {"$fs": ["obj", ["meta_app:Holder.Model", {}]]}})
    assert asked == []


@dataclass
class Nested:
    @dataclass
    class Inner:
        value: int = 0


def test_a_stored_class_name_still_finds_a_nested_class() -> None:
    module = sys.modules[__name__]
    assert module is not None
    stored = {"data": {"$fs": ["obj", [f"{__name__}:Nested.Inner", {"value": 7}]]}}
    assert context_from_dict(Order, stored).data == Nested.Inner(7)


@pytest.mark.parametrize(
    "stored",
    [
        {"data": {"$fs": ["x\nFORGED LOG LINE" + "x" * 1_000_000, 1]}},  # an unknown tag
        {"data": {"$fs": ["obj", ["os:x\nFORGED LOG LINE" + "x" * 1_000_000, {}]]}},
        {"data": {"$fs": ["enum", ["os:x\nFORGED LOG LINE" + "x" * 1_000_000, 1]]}},
        {"data": {"$fs": ["obj", ["no_such_module\nFORGED" + "x" * 1_000_000 + ":A", {}]]}},
        {"data": {"$fs": ["enum", [f"{__name__}:Order", 1]]}},  # "... is not an Enum"
        {"data": {"$fs": ["obj", [f"{__name__}:Nested.Inner", {
            f"k{index}\nFORGED" + "x" * 1000: 1 for index in range(10_000)
        }]]}},  # unknown fields
        {"data": 1, **{f"k{index}\nFORGED" + "x" * 1000: 1 for index in range(10_000)}},
    ],
    ids=["tag", "obj", "enum", "module", "not-an-enum", "nested-fields", "fields"],
)
def test_S12_names_a_row_holds_are_quoted_short_and_on_one_line(stored: Any) -> None:
    """A message that quotes what a row holds (a tag, a class name, field
    names) quotes it escaped and cut: one line, never megabytes."""
    with pytest.raises(ContextDecodeError) as raised:
        context_from_dict(Order, stored)
    message = str(raised.value)
    assert "\n" not in message
    assert len(message) < 1000


# --------------------------------------------------------------------------- log lines


async def test_S12_the_library_logs_ids_and_texts_a_row_holds_on_one_line(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger of the library (not only ``LoggingListener``) escapes
    control characters in the values it logs: a saga id or step name with a
    line break forges no log line."""
    saga_id = "o-1\n2026-12-05 03:00:00,000 INFO forged"
    await _left_running(db, saga_id)
    _set_response(db, saga_id, "not json\r\nforged")
    with caplog.at_level(logging.DEBUG, logger="fallback_saga"):
        async with SQLiteSagaStore(db) as store:
            await OrderSaga(store=store).resume(saga_id)
    warned = [record.getMessage() for record in caplog.records if "o-1" in record.getMessage()]
    assert warned
    for message in warned:
        assert "\n" not in message
        assert "\r" not in message


def test_a_log_argument_with_nothing_to_escape_is_passed_as_it_is() -> None:
    error = ValueError("card declined")
    assert one_line(error) is error  # a handler may read the exception itself
    assert one_line(7) == 7
    assert one_line("o-1\n") == "o-1\\x0a"
    assert one_line(ValueError("a\u2028b")) == "a\\u2028b"


async def test_S12_a_changed_definition_message_quotes_a_hostile_row_short(db: Path) -> None:
    """The steps and fingerprint a row holds, as ``SagaDefinitionChanged``
    quotes them: escaped, cut, and at most a few differences -- not a
    message of megabytes, nor a forged log line."""
    await _left_running(db, "o-1")
    huge = "X\nforged" * 100_000
    _damage(db, "UPDATE sagas SET fingerprint = ? WHERE saga_id = 'o-1'", huge)
    _damage(db, "UPDATE saga_steps SET step = ? WHERE saga_id = 'o-1'", huge)
    conn = sqlite3.connect(db)
    # Appended after its rows (a gap would be a lost row: a corrupt record).
    (after,) = conn.execute("SELECT MAX(seq) + 1 FROM saga_steps WHERE saga_id = 'o-1'").fetchone()
    rows = [("o-1", after + seq, seq, f"Step{seq}", "primary", "act", "started", 1, None, 1.0)
            for seq in range(5000)]
    conn.executemany(
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status,"
        " attempt, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows,
    )
    conn.commit()
    conn.close()
    async with SQLiteSagaStore(db) as store:
        with pytest.raises(SagaDefinitionChanged) as raised:
            await OrderSaga(store=store).resume("o-1")
    message = str(raised.value)
    assert "\n" not in message
    assert len(message) < 3000
    assert "more" in message
