"""A saga of tens of thousands of journal entries (a large Parallel group,
retries journaled per try, compensations retried for months): the console's
page of it and ``show --limit`` read the page of history they show (and the
newest page), not the whole journal. The measured cost is in
benchmarks/README.md ("The operator's paths on a store a year old")."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers_console import fetch

from fallback_saga import JournalEntry, MemorySagaStore, SagaStatus, SQLiteSagaStore, StepStatus
from fallback_saga.cli import main
from fallback_saga.console import ConsoleServer
from fallback_saga.console.query import HISTORY_PAGE
from fallback_saga.console.saga_view import WHOLE_JOURNAL
from fallback_saga.store import _sqlite_reads
from fallback_saga.store.base import history_window

ENTRIES = WHOLE_JOURNAL + 1001  # longer than a page reads whole


def _journal(entries: int) -> list[JournalEntry]:
    """A group's members, each STARTED then COMPLETED (the step name tells
    each row's seq); the last member's act failed, and its compensation."""
    rows = [
        JournalEntry(
            seq // 2, f"Member{seq // 2}", "primary", "act",
            StepStatus.STARTED if seq % 2 == 0 else StepStatus.COMPLETED,
            1, None, 1000.0 + seq * 0.001,
        )
        for seq in range(entries - 2)
    ]
    rows.append(JournalEntry(0, "Member0", "primary", "act", StepStatus.FAILED, 2,
                             "card declined", 2000.0))
    rows.append(JournalEntry(0, "Member0", "primary", "compensate", StepStatus.FAILED, 3,
                             "refund service down", 2001.0))
    return rows


class Watched:
    """A store, counting the calls to its ``load`` (the whole record)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.loads = 0

    async def load(self, saga_id: str) -> Any:
        self.loads += 1
        return await self._store.load(saga_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _seqs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr><td class="num muted">(\d+)</td>', html)]


async def _filled(path: Path) -> SQLiteSagaStore:
    store = SQLiteSagaStore(path)
    await store.create("long", "Big", "fp", {"n": 1}, _journal(ENTRIES),
                       status=SagaStatus.FAILED)
    await store.create("long/Member7", "Child", "fp", {}, [])  # a SubSaga child
    return store


@pytest.mark.parametrize("start", [0, 200, ENTRIES - 200, -50, -ENTRIES - 5, ENTRIES + 3])
async def test_operator_a_window_of_the_journal_is_the_records_slice(
    tmp_path: Path, start: int
) -> None:
    """``load_window`` (SQLite) and ``history_window`` on a store without it
    (``MemorySagaStore``) give the same: the header, the entries of the
    window, its first seq, the journal's length and its act steps."""
    memory = MemorySagaStore()
    await memory.create("long", "Big", "fp", {"n": 1}, _journal(ENTRIES))
    async with SQLiteSagaStore(tmp_path / "s.db") as sqlite:
        await sqlite.create("long", "Big", "fp", {"n": 1}, _journal(ENTRIES))
        whole = await sqlite.load("long")
        first = max(0, ENTRIES + start) if start < 0 else start
        for store in (sqlite, memory):
            window = await history_window(store, "long", start=start, count=200)
            assert (window.first, window.entries) == (first, ENTRIES)
            assert window.record.history == whole.history[first : first + 200]
            assert window.record.context == whole.context
            assert window.act_steps == tuple(dict.fromkeys(e.step for e in whole.history))


def test_operator_a_window_of_a_long_journal_reads_its_rows_by_the_primary_key(
    tmp_path: Path
) -> None:
    """SQLite reads the window's rows by (saga_id, seq), and the journal's
    length from its last seq: not every row of the saga."""
    import asyncio

    async def make() -> None:
        async with SQLiteSagaStore(tmp_path / "s.db") as store:
            await store.create("long", "Big", "fp", {}, _journal(ENTRIES))

    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        window = _sqlite_reads._load_window(conn.cursor(), None, "long", 400, 200)  # type: ignore[arg-type]
    finally:
        conn.set_trace_callback(None)
    assert (window.first, window.entries, len(window.record.history)) == (400, ENTRIES, 200)
    plans = {
        statement: " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
        for statement in sent
    }
    conn.close()
    (rows,) = [plan for statement, plan in plans.items() if "seq >=" in statement]
    assert "PRIMARY KEY (saga_id=? AND seq>? AND seq<?)" in rows, rows
    (last,) = [plan for statement, plan in plans.items() if "MAX(seq)" in statement]
    assert "SEARCH" in last, last
    assert "PRIMARY KEY" in last, last


async def test_operator_the_console_page_of_a_long_journal_reads_that_page_not_the_journal(
    tmp_path: Path,
) -> None:
    """The page of a saga whose journal is longer than ``WHOLE_JOURNAL``
    reads its page of history and the newest page (the alert: the
    compensation that kept failing), never the whole record: the rows
    shown are numbered as in the journal, the pager counts every entry, the
    child saga is linked, and the timeline says why it is not drawn."""
    store = await _filled(tmp_path / "s.db")
    watched = Watched(store)
    pages = -(-ENTRIES // HISTORY_PAGE)
    try:
        async with ConsoleServer(watched, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            first = (await fetch(f"{base}/sagas/long")).text
            middle = (await fetch(f"{base}/sagas/long?page=3")).text
            last = (await fetch(f"{base}/sagas/long?page={pages}")).text
            beyond = await fetch(f"{base}/sagas/long?page={pages + 1}")
    finally:
        await store.close()
    assert watched.loads == 0
    assert _seqs(first) == list(range(HISTORY_PAGE))
    assert _seqs(middle) == list(range(2 * HISTORY_PAGE, 3 * HISTORY_PAGE))
    assert _seqs(last) == list(range((pages - 1) * HISTORY_PAGE, ENTRIES))
    assert f"entries 0 to {HISTORY_PAGE - 1} of {ENTRIES}" in first
    assert f"({ENTRIES} journal entries)" in first
    assert f"Not drawn for a journal of {ENTRIES:,} entries" in first
    assert "refund service down" in first  # the alert, from the newest page
    assert "/sagas/long%2FMember7" in first or "/sagas/long/Member7" in first
    assert beyond.status == 400
    assert f"page must be a whole number from 1 to {pages}" in beyond.text


async def test_operator_a_page_of_a_journal_read_whole_is_as_before(tmp_path: Path) -> None:
    """A journal of up to ``WHOLE_JOURNAL`` entries is read whole, once when
    it fits one page: the timeline and the counts of tries are drawn."""
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await store.create("short", "Small", "fp", {}, _journal(100))
        await store.create("mid", "Small", "fp", {}, _journal(WHOLE_JOURNAL))
        watched = Watched(store)
        async with ConsoleServer(watched, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            short = (await fetch(f"{base}/sagas/short")).text
            assert watched.loads == 0  # its one page is the whole journal
            mid = (await fetch(f"{base}/sagas/mid?page=2")).text
            assert watched.loads == 1
    assert "Not drawn" not in short
    assert "<svg" in short
    assert "49 completed" in short
    assert "<svg" in mid
    assert _seqs(mid) == list(range(HISTORY_PAGE, 2 * HISTORY_PAGE))


def test_operator_show_limit_reads_the_newest_entries_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``show ID --limit N`` reads the newest N entries (the store's
    ``load_window``), numbered as in the journal, and says how many it
    leaves out; the child saga is still found."""
    import asyncio

    async def make() -> None:
        store = await _filled(tmp_path / "s.db")
        await store.close()

    asyncio.run(make())

    async def no_load(self: Any, saga_id: str) -> Any:
        raise AssertionError("show --limit loaded the whole record")

    monkeypatch.setattr(SQLiteSagaStore, "load", no_load)
    assert main(["show", "long", "--db", str(tmp_path / "s.db"), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    seqs = [int(line.split()[0]) for line in out.splitlines()
            if line.strip() and line.split()[0].isdigit()]
    assert seqs == [ENTRIES - 3, ENTRIES - 2, ENTRIES - 1]
    assert f"(the newest 3 of {ENTRIES} entries shown" in out
    assert "long/Member7" in out


def _group_journal(members: int, groups: int = 1) -> list[JournalEntry]:
    """Parallel groups' journal: every member's STARTED row, then every
    member's COMPLETED row (a try's end ``members`` rows after its start)."""
    rows: list[JournalEntry] = []
    for group in range(groups):
        base = group * members
        rows += [
            JournalEntry(base + n, f"Member{base + n}", "primary", "act", StepStatus.STARTED, 1,
                         None, 1000.0 + base + n)
            for n in range(members)
        ]
        rows += [
            JournalEntry(base + n, f"Member{base + n}", "primary", "act",
                         StepStatus.COMPLETED, 1, None, 100_000.0 + base + n)
            for n in range(members)
        ]
    return rows


async def test_operator_the_json_api_page_of_a_long_journal_reads_a_window_not_the_journal(
    tmp_path: Path,
) -> None:
    """``/api/sagas/<id>?page=N`` of a journal longer than ``WHOLE_JOURNAL``
    reads the page and the entries after it (``load_window``), never the
    whole record, and answers as when the journal is read whole (a
    ``MemorySagaStore``, which has no ``load_window``): the same history,
    the same timeline tries (those that begin on the page), page links."""
    # Every try with its STARTED row (a terminal row without one, as an
    # edited journal may hold, is drawn from the whole journal only).
    journal = _journal(ENTRIES)
    journal[-4] = journal[-2]._replace(status=StepStatus.STARTED, error=None, at=1999.0)
    journal[-3] = journal[-1]._replace(status=StepStatus.STARTED, error=None, at=2000.5)
    store = SQLiteSagaStore(tmp_path / "s.db")
    memory = MemorySagaStore()
    for each in (store, memory):
        await each.create("long", "Big", "fp", {"n": 1}, journal, status=SagaStatus.FAILED)
        await each.create("long/Member7", "Child", "fp", {}, [])
    watched = Watched(store)
    pages = -(-ENTRIES // HISTORY_PAGE)
    asked = ["", "?page=2", "?page=17", f"?page={pages - 1}", f"?page={pages}"]
    try:
        async with ConsoleServer(watched, port=0) as windowed, ConsoleServer(
            memory, port=0
        ) as whole:
            for query in asked:
                got = (await fetch(f"http://127.0.0.1:{windowed.port}/api/sagas/long{query}"))
                want = (await fetch(f"http://127.0.0.1:{whole.port}/api/sagas/long{query}"))
                assert got.status == want.status == 200, got.text[:300]
                mine, theirs = got.json(), want.json()
                for data in (mine, theirs):
                    for key in ("lease", "lease_note", "created_at", "updated_at"):
                        data.pop(key)  # SQLite keeps leases; the two were created apart
                # The children of the page's steps only (Member7 acts on page 1).
                assert theirs.pop("children") == ["long/Member7"]
                assert mine.pop("children") == (["long/Member7"] if query == "" else []), query
                assert mine == theirs, query
                assert mine["timeline"] or query == f"?page={pages}", query
            beyond = await fetch(f"http://127.0.0.1:{windowed.port}/api/sagas/long"
                                 f"?page={pages + 1}")
    finally:
        await store.close()
    assert watched.loads == 0
    assert beyond.status == 400
    assert f"page must be a whole number from 1 to {pages}" in beyond.json()["error"]["message"]


async def test_operator_the_json_api_leaves_out_tries_whose_end_it_did_not_read(
    tmp_path: Path,
) -> None:
    """A try of a long journal whose outcome lies further after its page
    than the API reads is left out of that page's timeline and counted
    (``timeline_left_out``), never drawn as running or cut off."""
    from fallback_saga.console.saga_view import TIMELINE_FOLLOWING

    members = TIMELINE_FOLLOWING + HISTORY_PAGE + 100
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await store.create("group", "Big", "fp", {}, _group_journal(members),
                           status=SagaStatus.COMPLETED)
        # Groups of 1,000: each try ends within the entries read after its page.
        await store.create("groups", "Big", "fp", {}, _group_journal(1000, groups=6),
                           status=SagaStatus.COMPLETED)
        watched = Watched(store)
        async with ConsoleServer(watched, port=0) as console:
            first = (await fetch(f"http://127.0.0.1:{console.port}/api/sagas/group")).json()
            small = (await fetch(f"http://127.0.0.1:{console.port}/api/sagas/groups"
                                 "?page=3")).json()
    assert watched.loads == 0
    assert first["timeline"] == []
    assert first["history_page"]["timeline_left_out"] == HISTORY_PAGE
    assert "more than" in first["history_page"]["timeline_note"]
    assert [bar["seq"] for bar in small["timeline"]] == list(range(400, 600))
    assert {bar["outcome"] for bar in small["timeline"]} == {"completed"}
    assert "timeline_left_out" not in small["history_page"]


class Looked(Watched):
    """A store, recording the ids asked of its ``existing_saga_ids``."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.asked: list[str] = []

    async def existing_saga_ids(self, saga_ids: Any) -> Any:
        self.asked.extend(saga_ids)
        return await self._store.existing_saga_ids(saga_ids)


async def test_operator_a_long_journal_page_looks_up_and_links_the_children_of_its_own_steps(
    tmp_path: Path,
) -> None:
    """A page of a journal longer than ``WHOLE_JOURNAL`` looks up and links
    the child sagas (SubSaga) of the steps it shows only: a parent of
    25,000 child steps was 25,000 ids looked up (50 queries) and linked at
    every page. The HTML page and the JSON API alike; a page of no child
    step links none."""
    store = await _filled(tmp_path / "s.db")
    # Member7 acts on page 1 (seqs 14, 15); Member450 on page 5 (seqs 900, 901).
    await store.create("long/Member450", "Child", "fp", {}, [])
    looked = Looked(store)
    try:
        async with ConsoleServer(looked, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            first = (await fetch(f"{base}/sagas/long")).text
            assert set(looked.asked) == {f"long/Member{n}" for n in range(HISTORY_PAGE // 2)}
            looked.asked.clear()
            fifth = (await fetch(f"{base}/sagas/long?page=5")).text
            assert set(looked.asked) == {
                f"long/Member{n}" for n in range(4 * HISTORY_PAGE // 2, 5 * HISTORY_PAGE // 2)}
            api = (await fetch(f"{base}/api/sagas/long?page=5")).json()
            third = (await fetch(f"{base}/api/sagas/long?page=3")).json()
    finally:
        await store.close()
    assert "long/Member7" in first
    assert "long/Member450" not in first
    assert "long/Member450" in fifth
    assert "long/Member7" not in fifth
    assert "child sagas of this page" in fifth
    assert api["children"] == ["long/Member450"]
    assert third["children"] == []


class Windows(Watched):
    """A store, recording the keyword arguments of each ``load_window`` call."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.windows: list[dict[str, Any]] = []

    async def load_window(self, saga_id: str, **asked: Any) -> Any:
        self.windows.append(asked)
        return await self._store.load_window(saga_id, **asked)


async def test_operator_a_long_journal_page_reads_no_act_steps_of_the_whole_journal(
    tmp_path: Path,
) -> None:
    """The console's page of a long journal asks ``load_window`` for no act
    step names (``act_steps=False``): it links the children of its own
    steps, and reading every act's step name was a query over the saga's
    whole journal at every page (65 ms at 25,000 child steps). SQLite's
    ``load_window(act_steps=False)`` sends no statement over the act rows;
    the default, as ``show --limit`` asks, still gives them all."""
    store = await _filled(tmp_path / "s.db")
    windows = Windows(store)
    try:
        async with ConsoleServer(windows, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            assert (await fetch(f"{base}/sagas/long?page=3")).status == 200
            assert (await fetch(f"{base}/api/sagas/long?page=3")).status == 200
        asked = await store.load_window("long", start=0, count=10)
    finally:
        await store.close()
    assert windows.windows
    assert all(asked.get("act_steps") is False for asked in windows.windows), windows.windows
    assert len(asked.act_steps) == -(-(ENTRIES - 2) // 2)  # Member0 .. the last member
    conn = sqlite3.connect(tmp_path / "s.db")
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        window = _sqlite_reads._load_window(conn.cursor(), None, "long", 400, 200, False)
    finally:
        conn.close()
    assert window.act_steps == ()
    assert [e.step for e in window.record.history][:2] == ["Member200", "Member200"]
    assert not any("'act'" in statement for statement in sent), sent
