"""``fallback-saga list --json`` streams: the store is read a page at a time
(``list_sagas(limit=<page>, before=<last id>)``) and each page is written
as it comes, so memory stays bounded however large ``--limit`` is (it held
every row, 426 MB for 200,000 sagas) — and the output is byte for byte what
one ``json.dumps`` of the whole listing printed. On SQLite and PostgreSQL.

The page is made small here (``inspect.LIST_PAGE``) so that a few sagas
span many pages; a spy on the stores' ``list_sagas`` sees every read.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import SagaStatus, SQLiteSagaStore
from fallback_saga.cli import inspect, main
from fallback_saga.cli.inspect import summary_json
from fallback_saga.cli.text import json_text
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

PAGE = 4
SAGAS = 23  # five pages and a bit


@pytest.fixture(autouse=True)
def _no_store_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLBACK_SAGA_DSN", raising=False)
    monkeypatch.delenv("FALLBACK_SAGA_DB", raising=False)


class Reads:
    """Every ``list_sagas`` call the command makes, by its keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.after_first: Any = None  # run once, after the first page was read


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    if request.param == "sqlite":
        yield "sqlite", ["--db", str(tmp_path / "sagas.db")]
        return
    pytest.importorskip("psycopg")
    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    yield "postgres", ["--dsn", conninfo, "--schema", schema]


def open_store(kind: str, options: list[str]) -> Any:
    if kind == "sqlite":
        return SQLiteSagaStore(options[1])
    from fallback_saga.store.postgres import PostgresSagaStore

    return PostgresSagaStore(options[1], schema=options[3], min_size=1)


def fill(kind: str, options: list[str], count: int) -> list[Any]:
    """``count`` sagas of two names and three statuses (one with characters a
    terminal would act on); the whole listing, newest first, as the store
    gives it in one read."""

    async def go() -> list[Any]:
        async with open_store(kind, options) as store:
            for n in range(count):
                status = (SagaStatus.RUNNING, SagaStatus.COMPLETED, SagaStatus.FAILED)[n % 3]
                name = "OrderSaga" if n % 2 else "Refund\x1b[2J\u202eSaga"
                await store.create(f"s-{n:03}-été", name, "fp", {}, [entry(0, "a")],
                                   status=status)
            if count:
                await store.claim_saga("s-000-été", owner="w\u0007", lease_seconds=300)
            return list(await store.list_sagas(limit=10 * count + 10))

    return asyncio.run(go())


def expected(summaries: list[Any]) -> str:
    """What ``list --json`` printed before it streamed: one json.dumps."""
    rows = [summary_json(summary) for summary in summaries]
    return json_text(json.dumps(rows, indent=2, ensure_ascii=False)) + "\n"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    spy = Reads()
    monkeypatch.setattr(inspect, "LIST_PAGE", PAGE, raising=False)
    classes: list[type] = [SQLiteSagaStore]
    try:
        from fallback_saga.store.postgres import PostgresSagaStore
    except ImportError:
        pass
    else:
        classes.append(PostgresSagaStore)
    for cls in classes:
        real = cls.list_sagas

        async def list_sagas(self: Any, *, _real: Any = real, **kwargs: Any) -> Any:
            spy.calls.append(kwargs)
            found = await _real(self, **kwargs)
            if spy.after_first is not None:
                after, spy.after_first = spy.after_first, None
                after()
            return found

        monkeypatch.setattr(cls, "list_sagas", list_sagas)
    return spy


@pytest.mark.parametrize(
    ("arguments", "pick"),
    [
        (["--limit", "1000000000"], lambda rows: rows),
        ([], lambda rows: rows),  # the default limit, 100
        (["--limit", "7"], lambda rows: rows[:7]),  # cut mid-page
        (["--limit", "8"], lambda rows: rows[:8]),  # cut at a page's end
        (["--limit", "23"], lambda rows: rows),  # exactly all
        (["--status", "running", "--limit", "1000"],
         lambda rows: [r for r in rows if r.status is SagaStatus.RUNNING]),
        (["--name", "OrderSaga", "--limit", "5"],
         lambda rows: [r for r in rows if r.saga_name == "OrderSaga"][:5]),
    ],
    ids=["huge-limit", "default", "mid-page", "page-end", "exact", "status", "name"],
)
def test_list_json_streams_pages_and_prints_the_same_bytes(
    target: tuple[str, list[str]], reads: Reads, capsys: pytest.CaptureFixture[str],
    arguments: list[str], pick: Any,
) -> None:
    kind, options = target
    everything = fill(kind, options, SAGAS)
    reads.calls.clear()
    capsys.readouterr()
    assert main(["list", *options, "--json", *arguments]) == 0
    assert capsys.readouterr().out == expected(pick(everything))
    assert reads.calls, "the store was not read"
    assert all(call["limit"] <= PAGE for call in reads.calls), reads.calls


def test_list_json_of_an_empty_store_is_an_empty_array(
    target: tuple[str, list[str]], reads: Reads, capsys: pytest.CaptureFixture[str]
) -> None:
    kind, options = target
    fill(kind, options, 0)
    capsys.readouterr()
    assert main(["list", *options, "--json", "--limit", "1000000000"]) == 0
    assert capsys.readouterr().out == "[]\n"


def test_list_json_goes_on_when_a_page_s_last_saga_is_purged_meanwhile(
    target: tuple[str, list[str]], reads: Reads, capsys: pytest.CaptureFixture[str]
) -> None:
    """The next page starts after the last saga written; when that one is
    gone by then (``purge`` ran meanwhile), after the one before it
    (PostgreSQL). A SQLite file that changed while it was read is read
    again, from the start (``read_store``): the listing is the file's
    after the purge, as it was when it was not streamed."""
    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = everything[PAGE - 1].saga_id

    def purge() -> None:
        if kind == "sqlite":
            with sqlite3.connect(options[1]) as conn:
                conn.execute("DELETE FROM saga_steps WHERE saga_id = ?", (gone,))
                conn.execute("DELETE FROM sagas WHERE saga_id = ?", (gone,))
            conn.close()
        else:
            import psycopg

            with psycopg.connect(options[1], autocommit=True) as conn:
                conn.execute(
                    f'DELETE FROM "{options[3]}".fallback_saga_sagas WHERE saga_id = %s', (gone,)
                )

    reads.calls.clear()
    reads.after_first = purge
    capsys.readouterr()
    assert main(["list", *options, "--json", "--limit", "1000"]) == 0
    if kind == "postgres":
        assert capsys.readouterr().out == expected(everything)  # listed before it went
        cursors = [call.get("before") for call in reads.calls]
        assert cursors[1:3] == [gone, everything[PAGE - 2].saga_id]
    else:
        assert capsys.readouterr().out == expected(
            [summary for summary in everything if summary.saga_id != gone]
        )
