"""``fallback-saga list --json`` streams: the store is read a page at a time
(``list_sagas(limit=<page>, before=<last id>)``) and each page is written
as it comes, so memory stays bounded however large ``--limit`` is (it held
every row, 426 MB for 200,000 sagas) — and the output is byte for byte what
one ``json.dumps`` of the whole listing printed. On SQLite and PostgreSQL.
Rows the store cannot read are left out, each warned about once, and end
no listing: a store's ``list_sagas(limit=n)`` does not count them.

The page is made small here (``inspect.LIST_PAGE``) so that a few sagas
span many pages; a spy on the stores' ``list_sagas`` sees every read.
"""

from __future__ import annotations

import asyncio
import json
import logging
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


# --------------------------------------------------------------------------- unreadable rows


def damage(kind: str, options: list[str], saga_ids: list[str]) -> None:
    """Make these sagas' rows unreadable (a status no release writes):
    ``list_sagas`` leaves them out, with a warning each."""
    if kind == "sqlite":
        with sqlite3.connect(options[1]) as conn:
            conn.executemany("UPDATE sagas SET status = 'bogus' WHERE saga_id = ?",
                             [(saga_id,) for saga_id in saga_ids])
        conn.close()
        return
    import psycopg

    with psycopg.connect(options[1], autocommit=True) as conn:
        for saga_id in saga_ids:
            conn.execute(
                f'UPDATE "{options[3]}".fallback_saga_sagas SET status = %s WHERE saga_id = %s',
                ("bogus", saga_id),
            )


def warned_about(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(
        saga_id
        for record in caplog.records
        for saga_id in [record.getMessage()]
        if "skipping a saga in the listing" in saga_id
    )


@pytest.mark.parametrize(
    "bad",
    [range(4, 12), range(2, 6), range(15, 23), range(0, 9)],
    ids=["two-whole-pages", "across-a-page-boundary", "the-tail", "the-head"],
)
def test_S12_list_json_lists_every_readable_saga_whatever_rows_are_unreadable(
    target: tuple[str, list[str]], reads: Reads, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, bad: range,
) -> None:
    """A page of unreadable rows does not end the listing (every later saga
    was dropped, silently), and each unreadable row is warned about once
    (one at a page's end was warned about again by the next page)."""
    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = [everything[n].saga_id for n in bad]
    damage(kind, options, gone)
    readable = [summary for summary in everything if summary.saga_id not in gone]
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["list", *options, "--json", "--limit", "1000"]) == 0
    assert capsys.readouterr().out == expected(readable)
    warnings = warned_about(caplog)
    assert len(warnings) == len(gone), warnings
    for saga_id in gone:
        assert sum(repr(saga_id) in warning for warning in warnings) == 1, (saga_id, warnings)


@pytest.mark.parametrize("limit", [3, 8, 9])
def test_S12_list_json_with_a_limit_counts_readable_sagas(
    target: tuple[str, list[str]], reads: Reads, capsys: pytest.CaptureFixture[str],
    limit: int,
) -> None:
    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = [everything[n].saga_id for n in range(1, 10)]
    damage(kind, options, gone)
    readable = [summary for summary in everything if summary.saga_id not in gone]
    capsys.readouterr()
    assert main(["list", *options, "--json", "--limit", str(limit)]) == 0
    assert capsys.readouterr().out == expected(readable[:limit])


def test_S12_list_shows_as_many_sagas_as_asked_and_says_more_match_past_unreadable_rows(
    target: tuple[str, list[str]], capsys: pytest.CaptureFixture[str],
) -> None:
    """The table asks for one saga more than --limit to tell whether more
    match: unreadable rows among them made it show fewer and say that was all."""
    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = [everything[n].saga_id for n in range(0, 6)]
    damage(kind, options, gone)
    readable = [summary.saga_id for summary in everything if summary.saga_id not in gone]
    capsys.readouterr()
    assert main(["list", *options, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    for saga_id in readable[:5]:
        assert saga_id in out
    assert readable[5] not in out
    assert "(the newest 5 shown; more match: raise --limit)" in out


def test_S12_a_store_listing_counts_only_readable_sagas_toward_its_limit(
    target: tuple[str, list[str]], caplog: pytest.LogCaptureFixture,
) -> None:
    """What the web console's pages rest on: ``list_sagas(limit=n)`` gives n
    sagas while n readable ones are left, unreadable rows skipped (and
    warned about) but not counted; ``before`` pages on from the last one."""
    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = [everything[n].saga_id for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)]
    damage(kind, options, gone)
    readable = [summary.saga_id for summary in everything if summary.saga_id not in gone]

    async def go() -> tuple[list[str], list[str], list[str]]:
        async with open_store(kind, options) as store:
            first = [s.saga_id for s in await store.list_sagas(limit=2)]
            after = [s.saga_id for s in await store.list_sagas(limit=2, before=first[-1])]
            none = await store.list_sagas(limit=0)
            assert none == []
            rest = [s.saga_id for s in await store.list_sagas(limit=100, before=after[-1])]
            return first, after, rest

    with caplog.at_level(logging.WARNING):
        first, after, rest = asyncio.run(go())
    assert first == readable[:2]
    assert after == readable[2:4]
    assert rest == readable[4:]
    assert len(warned_about(caplog)) == len(gone)


def test_S12_the_console_pages_on_past_a_page_of_unreadable_rows(
    target: tuple[str, list[str]],
) -> None:
    """The web console's listing pages (``limit + 1`` asked, to know whether
    a next page exists): a page of unreadable rows ended its paging."""
    from fallback_saga.console.listing import fetch_listing
    from fallback_saga.console.query import ListQuery

    kind, options = target
    everything = fill(kind, options, SAGAS)
    gone = [everything[n].saga_id for n in range(2, 8)]
    damage(kind, options, gone)
    readable = [summary.saga_id for summary in everything if summary.saga_id not in gone]

    async def go() -> list[str]:
        seen: list[str] = []
        before = None
        async with open_store(kind, options) as store:
            while True:
                page = await fetch_listing(store, ListQuery(limit=2, before=before))
                seen += [summary.saga_id for summary in page.sagas]
                if page.next_before is None:
                    return seen
                before = page.next_before

    assert asyncio.run(go()) == readable
