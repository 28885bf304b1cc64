"""The console's parts without a server: reading times people type, durations,
the listing query and its links, and the timeline built from a journal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from fallback_saga import SagaRecord, SagaStatus, StepStatus
from fallback_saga.console.counting import CountCache
from fallback_saga.console.query import BadRequest, ListQuery, parse_list_query, parse_time
from fallback_saga.console.store_counts import Counts
from fallback_saga.console.text import format_age, format_seconds
from fallback_saga.console.timeline import MAX_ROWS, bars_of, timeline_svg
from fallback_saga.store.base import LeaseState
from fallback_saga.testing import entry

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC).timestamp()),
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("1714566600", 1714566600.0),
        ("1714566600.25", 1714566600.25),
        ("30s", NOW - 30),
        ("15m", NOW - 900),
        ("15min", NOW - 900),
        ("24h", NOW - 86400),
        ("1.5h", NOW - 5400),
        ("7d", NOW - 7 * 86400),
        ("2w", NOW - 14 * 86400),
        ("2H", NOW - 7200),
    ],
)
def test_times_people_type(text: str, expected: float) -> None:
    assert parse_time("since", text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "15 fortnights", "2024-02-30", "-5", "1e999"])
def test_times_that_are_not_times(text: str) -> None:
    with pytest.raises(BadRequest, match="since must be an ISO 8601 date or time"):
        parse_time("since", text, NOW)


def test_the_query_and_its_links() -> None:
    query = parse_list_query(
        "status=Failed&name=Order+Saga&since=24h&limit=50", now=NOW, default_limit=50
    )
    assert query == ListQuery(
        status=SagaStatus.FAILED, name="Order Saga", since=NOW - 86400, since_text="24h",
        limit=50,
    )
    assert query.link("/", default_limit=50) == "/?status=failed&name=Order+Saga&since=24h"
    assert query.link("/", default_limit=25, before="a/b") == (
        "/?status=failed&name=Order+Saga&since=24h&before=a%2Fb&limit=50"
    )
    assert query.link("/", default_limit=50, status=None, name=None, since=None) == "/"
    assert parse_list_query("", now=NOW, default_limit=20) == ListQuery(limit=20)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0000004, "0 µs"),
        (0.00085, "850 µs"),
        (0.0123, "12.3 ms"),
        (0.25, "250 ms"),
        (4.2, "4.20 s"),
        (42.0, "42.0 s"),
        (185.0, "3 min 5 s"),
        (3600.0, "1 h"),
        (7440.0, "2 h 4 min"),
        (3 * 86400.0, "3.0 d"),
        (-0.5, "-500 ms"),
    ],
)
def test_durations_for_people(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_ages() -> None:
    assert format_age(NOW - 12.4, NOW) == "12 s ago"
    assert format_age(NOW + 240, NOW) == "in 4 min"
    assert format_age(NOW, NOW) == "just now"


# --------------------------------------------------------------------------- the timeline


def record(status: SagaStatus, *entries: object, updated_at: float = 110.0) -> SagaRecord:
    return SagaRecord(
        saga_id="s", saga_name="S", fingerprint="f", status=status, context={},
        history=list(entries),  # type: ignore[arg-type]
        created_at=100.0, updated_at=updated_at,
    )


def test_one_bar_per_try_from_started_to_its_outcome() -> None:
    saga = record(
        SagaStatus.COMPENSATED,
        entry(0, "a", at=100.0),
        entry(0, "a", StepStatus.COMPLETED, at=101.0),
        entry(1, "b", at=101.0),
        entry(1, "b", StepStatus.FAILED, error="Boom: no", at=103.0),
        entry(0, "a", action="compensate", at=103.0),
        entry(0, "a", StepStatus.FAILED, action="compensate", error="again", at=103.5),
        entry(0, "a", action="compensate", attempt=2, at=104.0),
        entry(0, "a", StepStatus.COMPLETED, action="compensate", attempt=2, at=104.5),
    )
    bars = bars_of(saga, NOW)
    assert [(b.step, b.action, b.attempt, b.start, b.end, b.outcome, b.error) for b in bars] == [
        ("a", "act", 1, 100.0, 101.0, "completed", None),
        ("b", "act", 1, 101.0, 103.0, "failed", "Boom: no"),
        ("a", "compensate", 1, 103.0, 103.5, "failed", "again"),
        ("a", "compensate", 2, 104.0, 104.5, "completed", None),
    ]
    svg = timeline_svg(saga, bars)
    assert svg.count('<rect class="bar ') == 4
    assert 'class="bar compensate failed"' in svg
    assert "try 2" in svg
    assert "+1 s" in svg  # the axis, in whole units


def test_a_try_cut_off_by_a_crash_ends_where_the_next_began() -> None:
    saga = record(
        SagaStatus.COMPLETED,
        entry(0, "a", at=100.0),  # the process died here
        entry(0, "a", at=105.0),  # the resumed run
        entry(0, "a", StepStatus.COMPLETED, at=106.0),
    )
    bars = bars_of(saga, NOW)
    assert [(b.start, b.end, b.outcome) for b in bars] == [
        (100.0, 105.0, "interrupted"),
        (105.0, 106.0, "completed"),
    ]


def test_tries_of_a_parallel_group_overlap() -> None:
    saga = record(
        SagaStatus.COMPLETED,
        entry(1, "a", at=100.0),
        entry(2, "b", at=100.1),
        entry(2, "b", StepStatus.COMPLETED, at=101.0),
        entry(1, "a", StepStatus.COMPLETED, at=102.0),
    )
    assert [(b.step, b.start, b.end, b.outcome) for b in bars_of(saga, NOW)] == [
        ("a", 100.0, 102.0, "completed"),
        ("b", 100.1, 101.0, "completed"),
    ]


async def test_S15_a_member_cancelled_in_flight_is_cut_off_not_failed_as_the_cli_shows_it() -> (
    None
):
    """A ``Parallel`` member whose act was cancelled while it ran (a sibling
    failed) is journaled CANCELLED: its effect is uncertain, and it is
    compensated like a completed act. It did not fail: the console's
    timeline, its summary and ``show --mermaid`` all show it cut off."""
    from fallback_saga import MemorySagaStore, Parallel, Saga, SagaContext, SagaFailed
    from fallback_saga.cli.mermaid import mermaid_gantt
    from fallback_saga.console.saga_page import _summary_card

    entered = asyncio.Event()

    class Slow:
        async def act(self, context: object) -> None:
            entered.set()
            await asyncio.Event().wait()  # cancelled here, when its sibling fails

        async def compensate(self, context: object) -> None:
            pass

    class Fails:
        async def act(self, context: object) -> None:
            await entered.wait()
            raise RuntimeError("no stock")

        async def compensate(self, context: object) -> None:
            pass

    class Ctx(SagaContext):
        pass

    class Group(Saga[Ctx]):
        steps = [Parallel(Slow, Fails)]

    store = MemorySagaStore()
    with pytest.raises(SagaFailed):
        await Group(store=store).run(Ctx(), saga_id="g")
    saga = await store.load("g")
    assert [e.status for e in saga.history if e.step == "Slow" and e.action == "act"] == [
        StepStatus.STARTED, StepStatus.CANCELLED,
    ]
    bars = bars_of(saga, NOW)
    assert [(b.step, b.outcome) for b in bars if b.action == "act"] == [
        ("Slow", "interrupted"), ("Fails", "failed"),
    ]
    assert "Slow (cut off)" in mermaid_gantt(saga)
    summary = _summary_card(saga, bars, NOW)
    assert "<dt>Acts</dt><dd>0 completed, 1 failed</dd>" in summary, summary  # Fails only


def test_a_try_left_open_in_a_final_saga_ends_at_the_next_row() -> None:
    saga = record(
        SagaStatus.COMPENSATED,
        entry(1, "b", at=100.0),  # died here; recovery then unwound the saga
        entry(0, "a", action="compensate", at=150.0),
        entry(0, "a", StepStatus.COMPLETED, action="compensate", at=151.0),
        updated_at=151.0,
    )
    bars = bars_of(saga, NOW)
    assert [(b.step, b.end, b.outcome) for b in bars] == [
        ("b", 150.0, "interrupted"),
        ("a", 151.0, "completed"),
    ]


def test_an_unfinished_try_runs_until_now_while_the_saga_is_in_flight() -> None:
    running = record(SagaStatus.RUNNING, entry(0, "a", at=100.0))
    assert [(b.end, b.outcome) for b in bars_of(running, 130.0)] == [(130.0, "running")]
    ended = record(SagaStatus.FAILED, entry(0, "a", at=100.0), updated_at=108.0)
    assert [(b.end, b.outcome) for b in bars_of(ended, 130.0)] == [(108.0, "interrupted")]


def test_an_outcome_without_its_started_row_still_shows() -> None:
    saga = record(SagaStatus.COMPLETED, entry(0, "a", StepStatus.COMPLETED, at=100.0))
    assert [(b.start, b.end, b.outcome) for b in bars_of(saga, NOW)] == [
        (100.0, 100.0, "completed")
    ]


def test_timeline_edge_cases() -> None:
    assert "No step has been journaled yet" in timeline_svg(record(SagaStatus.PENDING), [])
    instant = record(SagaStatus.COMPLETED, entry(0, "a", at=100.0),
                     entry(0, "a", StepStatus.COMPLETED, at=100.0))
    assert "<svg" in timeline_svg(instant, bars_of(instant, NOW))  # a zero-length saga
    many = record(
        SagaStatus.RUNNING,
        *[entry(0, "a", attempt=n, at=100.0 + n) for n in range(1, MAX_ROWS + 20)],
    )
    svg = timeline_svg(many, bars_of(many, NOW))
    assert svg.count('<rect class="bar ') == MAX_ROWS
    assert f"The first {MAX_ROWS} of {MAX_ROWS + 19} tries are drawn" in svg


def test_the_console_imports_only_the_standard_library() -> None:
    """Importable from a vendored copy, with nothing installed beside it:
    standard library and relative imports only."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; import fallback_saga.console; "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout.split()
    outside = [
        name for name in loaded
        if name not in sys.stdlib_module_names and name not in ("fallback_saga", "__main__")
        and not name.startswith("_")
    ]
    assert outside == []
    package = Path(__file__).resolve().parent.parent / "fallback_saga" / "console"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module in sys.stdlib_module_names or (
                    node.module or ""
                ).split(".")[0] in sys.stdlib_module_names, (module.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in sys.stdlib_module_names, module.name


@pytest.mark.parametrize(
    "lease",
    [
        LeaseState("w1", "soon", 3),  # type: ignore[arg-type]
        LeaseState("w1", float("nan"), 3),
        LeaseState("w1", b"\x00", 3),  # type: ignore[arg-type]
        LeaseState(None, None, "<b>7</b>"),  # type: ignore[arg-type]
        LeaseState(b"w1", 5.0, 3),  # type: ignore[arg-type]
    ],
)
def test_S12_a_lease_a_row_cannot_hold_is_unreadable_not_an_error(lease: LeaseState) -> None:
    from fallback_saga.console.api_json import lease_json
    from fallback_saga.console.lease import lease_phase

    assert lease_phase(lease, 100.0) == "unreadable"
    data = lease_json(lease, 100.0)
    assert data is not None
    assert data["state"] == "unreadable"
    assert data["expires_at"] is None
    assert data["fencing_token"] is None


# --------------------------------------------------------------------------- counts


class CountingStore:
    """A store whose count takes ``took`` seconds of the fake clock, and
    whose ``gate`` (if set) holds the count until it is opened."""

    def __init__(self, clock: list[float], took: float) -> None:
        self.clock = clock
        self.took = took
        self.calls = 0
        self.total = 0
        self.gate: asyncio.Event | None = None

    async def load(self, saga_id: str) -> None:
        raise NotImplementedError

    async def count_sagas(self, **_filters: object) -> dict[tuple[str, str], int]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        self.clock[0] += self.took
        return {("OrderSaga", "completed"): self.total}


def _completed(counts: Counts) -> int:
    return counts.by_status()[SagaStatus.COMPLETED]


async def test_a_slow_count_is_shown_again_for_ten_times_its_duration_and_says_its_age() -> None:
    clock = [100.0]
    store = CountingStore(clock, took=2.0)
    cache = CountCache(clock=lambda: clock[0])
    store.total = 5
    assert _completed(await cache.counts(store)) == 5
    store.total = 6
    clock[0] += 15.0  # 17 s after the count began, 2 s long: 20 s of reuse
    again = await cache.counts(store)
    assert (_completed(again), store.calls) == (5, 1)
    assert again.note is not None
    assert "counted 17 s ago" in again.note
    other = await cache.counts(store, saga_name="OrderSaga")  # other filters: counted
    assert (_completed(other), store.calls) == (6, 2)
    clock[0] += 10.0  # 27 s after the first count: counted again
    assert (_completed(await cache.counts(store)), store.calls) == (6, 3)


async def test_a_quick_count_is_never_shown_again() -> None:
    clock = [100.0]
    store = CountingStore(clock, took=CountCache.CHEAP / 2)
    cache = CountCache(clock=lambda: clock[0])
    for total in (1, 2, 3):
        store.total = total
        counts = await cache.counts(store)
        assert (_completed(counts), counts.note) == (total, None)
    assert store.calls == 3


async def test_requests_during_a_count_share_it() -> None:
    clock = [100.0]
    store = CountingStore(clock, took=0.0)
    store.gate = asyncio.Event()
    store.total = 7
    cache = CountCache(clock=lambda: clock[0])
    first = asyncio.ensure_future(cache.counts(store))
    await asyncio.sleep(0)  # the first count is running, held by the gate
    second = asyncio.ensure_future(cache.counts(store))
    await asyncio.sleep(0)
    store.gate.set()
    assert [_completed(c) for c in await asyncio.gather(first, second)] == [7, 7]
    assert store.calls == 1
