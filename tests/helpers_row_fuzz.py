"""What the seeded row-mutation fuzzes share, whatever the store
(``test_row_mutation_fuzz.py``: SQLite; ``test_row_mutation_fuzz_postgres.py``:
PostgreSQL): the sagas and their participant ledger, the scenarios run into a
store and stopped at every phase, the recovery and read-back of a mutated
store (``recover()`` or a ``RecoveryWorker``, ``load``, ``list_sagas``, the
CLI's ``list``/``show``, the console's pages), and the checks of what a
mutated saga's resume may do (S10, S12, S13).

A store is reached through a ``FuzzTarget``: how to open it, how to open it
for the console, and the CLI's options that name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import urllib.parse
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from helpers_console import fetch

from fallback_saga import (
    ContextDecodeError,
    CorruptSagaRecord,
    Fallback,
    Parallel,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaNotFound,
    SagaStatus,
    SagaStepHandler,
    StepStatus,
    SubSaga,
    current_step,
    recover,
)
from fallback_saga.cli import main as cli_main
from fallback_saga.console import ConsoleServer
from fallback_saga.store.base import SagaCounts
from fallback_saga.subsaga import CHILD_SEPARATOR

# --------------------------------------------------------------------------- the sagas

LEDGER: list[tuple[str, str, str, str]] = []
# top-level saga id -> "act:Step" / "compensate:Step": where its first run dies.
CRASH: dict[str, str] = {}


class Crash(BaseException):
    """The process dying mid-call."""


class Refused(Exception):
    """A participant's refusal: the act fails, or the compensate does."""


@dataclass
class Ctx(SagaContext):
    n: int = 0
    fail: str = ""  # the step whose act always fails
    stuck: str = ""  # the step whose compensate always fails
    note: str = ""


def _call(action: str, ctx: Ctx) -> str:
    info = current_step()
    top = info.saga_id.partition(CHILD_SEPARATOR)[0]
    if CRASH.get(top) == f"{action}:{info.step}":
        del CRASH[top]  # it dies once: the recovery's call goes on
        raise Crash
    if (ctx.fail if action == "act" else ctx.stuck) == info.step:
        LEDGER.append((info.saga_id, info.step, action, "raised"))
        raise Refused(info.step)
    LEDGER.append((info.saga_id, info.step, action, "ok"))
    return f"{info.step}-{ctx.n}"


class _Ledgered(SagaStepHandler[Ctx, str]):
    async def act(self, ctx: Ctx, /) -> str:
        return _call("act", ctx)

    async def compensate(self, ctx: Ctx, /) -> None:
        _call("compensate", ctx)


class A(_Ledgered): ...
class B(_Ledgered): ...
class B2(_Ledgered): ...
class P(_Ledgered): ...
class Q(_Ledgered): ...
class D(_Ledgered): ...
class CA(_Ledgered): ...
class CB(_Ledgered): ...
class E(_Ledgered): ...
class F(_Ledgered): ...


class ChildSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [CA, CB]


def _child_context(parent: Ctx) -> Ctx:
    return Ctx(n=parent.n, fail=parent.fail, stuck=parent.stuck)


class FuzzSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [
        A,
        Fallback(step=B, fallback=B2),
        Parallel(P, Q),
        SubSaga(ChildSaga, context=_child_context, name="Pay"),
        D,
    ]


class PlainSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [E, F]


SAGAS: list[type[Saga[Any]]] = [FuzzSaga, PlainSaga, ChildSaga]
STEP_NAMES = ["A", "B", "B2", "P", "Q", "Pay", "D", "CA", "CB", "E", "F"]
SAGA_NAMES = ["FuzzSaga", "PlainSaga", "ChildSaga"]

# saga id -> (saga class, context, where its first run dies)
SCENARIOS: dict[str, tuple[type[Saga[Any]], Ctx, str | None]] = {
    "done": (FuzzSaga, Ctx(n=1), None),
    "run-a": (FuzzSaga, Ctx(n=2), "act:A"),
    "run-d": (FuzzSaga, Ctx(n=3), "act:D"),
    "fallback": (FuzzSaga, Ctx(n=4, fail="B"), "act:B2"),
    "group": (FuzzSaga, Ctx(n=5), "act:Q"),
    "child": (FuzzSaga, Ctx(n=6), "act:CB"),
    "comp": (FuzzSaga, Ctx(n=7, fail="D"), "compensate:P"),
    "comp-child": (FuzzSaga, Ctx(n=8, fail="D"), "compensate:CA"),
    "comp-failed": (FuzzSaga, Ctx(n=9, fail="D", stuck="A"), None),
    "unwound": (FuzzSaga, Ctx(n=10, fail="D"), None),
    "unwinding-stuck": (FuzzSaga, Ctx(n=11, fail="CB", stuck="B"), "compensate:A"),
    "plain-run": (PlainSaga, Ctx(n=12), "act:F"),
    "plain-done": (PlainSaga, Ctx(n=13), None),
}

async def run_scenarios(store: Any) -> None:
    """Every scenario run into ``store``, each stopped where it says."""
    for saga_id, (cls, ctx, crash) in SCENARIOS.items():
        CRASH.clear()
        if crash is not None:
            CRASH[saga_id] = crash
        with contextlib.suppress(Crash, Exception):
            await cls(store=store).run(Ctx(**ctx.to_dict()), saga_id=saga_id)
    CRASH.clear()


# --------------------------------------------------------------------------- the store


@dataclass
class FuzzTarget:
    """A store to recover and read back: ``open()`` the store the
    application uses, ``open_for_console()`` the one the console is given
    (SQLite: read-only), ``cli`` the options that name it to the CLI."""

    open: Callable[[], AbstractAsyncContextManager[Any]]
    open_for_console: Callable[[], AbstractAsyncContextManager[Any]]
    cli: list[str]
    # The rows of the sagas table a filter selects, counted by plain SQL
    # beside the store (none: the counts are not checked): see count_problems.
    count_rows: Callable[[CountFilter], int] | None = None
    # How many rows the table holds of a kind left open by design (docs/
    # durability.md, "Left open"; strict xfails hold it): found by no index,
    # so counted by every count and left out of the listing. A table holding
    # one has its counts unchecked (the rest of the seed is checked).
    open_gap_rows: Callable[[], int] | None = None


def counts_checked(target: FuzzTarget) -> bool:
    """Whether ``target``'s counts are checked against its listing now."""
    if target.count_rows is None:
        return False
    return target.open_gap_rows is None or target.open_gap_rows() == 0


# --------------------------------------------------------------------------- recovery, read back


@dataclass
class Outcome:
    """What recovering a store did: per saga id."""

    reported: dict[str, str] = field(default_factory=dict)  # id -> report list name
    calls: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    final: dict[str, str] = field(default_factory=dict)  # id -> status after, or why unreadable
    before: dict[str, Any] = field(default_factory=dict)  # id -> SagaRecord or the error
    problems: list[str] = field(default_factory=list)
    worker: dict[str, str] = field(default_factory=dict)  # id -> outcome a worker told


def mutate_family(
    rng: random.Random, conn: Any, ids: list[str],
    mutations: list[Callable[[random.Random, Any, str], str]],
) -> tuple[str, list[str]]:
    """Apply one to three of ``mutations`` (drawn with ``rng``) to one saga
    of ``ids`` through ``conn`` (either store's driver); returns its family's
    top-level id and what was done. The caller commits."""
    target = rng.choice(ids)
    done = [f"target {target}"]
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        done.append(rng.choice(mutations)(rng, conn, target))
    return target.partition(CHILD_SEPARATOR)[0], done


def _family(saga_id: str) -> str:
    return saga_id.partition(CHILD_SEPARATOR)[0]


async def _records(store: Any, problems: list[str], when: str) -> dict[str, Any]:
    records: dict[str, Any] = {}
    try:
        listed = await store.list_sagas(limit=10_000)
    except Exception as error:
        problems.append(f"list_sagas {when} raised {error!r}")
        return records
    for summary in listed:
        try:
            records[summary.saga_id] = await store.load(summary.saga_id)
        except (CorruptSagaRecord, ContextDecodeError, SagaNotFound) as error:
            records[summary.saga_id] = error
        except Exception as error:
            problems.append(f"load {summary.saga_id!r} {when} raised {error!r}")
    return records


class _Outcomes:
    """The outcomes a RecoveryWorker told, by saga id (the last one)."""

    def __init__(self) -> None:
        self.told: dict[str, str] = {}

    def recovery_outcome(self, saga_id: str, saga_name: str | None, outcome: str,
                         reason: str | None) -> None:
        self.told[saga_id] = outcome


async def _run_worker(store: Any, told: _Outcomes) -> None:
    """A RecoveryWorker claims and resumes until nothing has been in flight
    for a while, then stops; recover() afterwards finishes what it left."""
    worker = RecoveryWorker(store, SAGAS, older_than=0, poll=3600, listen=False,
                            listeners=[told])
    task = asyncio.create_task(worker.run())
    quiet = 0
    for _ in range(2000):
        await asyncio.sleep(0.002)
        quiet = quiet + 1 if worker.in_flight == 0 and worker.stats.claimed else 0
        if quiet > 25 or task.done():
            break
    await worker.stop(grace=5.0)
    await task


async def recover_store(
    target: FuzzTarget, *, worker: bool = False, surfaces: bool = True
) -> Outcome:
    out = Outcome()
    async with target.open() as store:
        if counts_checked(target):
            assert target.count_rows is not None
            out.problems += await count_problems(store, target.count_rows, "before recovery")
        out.before = await _records(store, out.problems, "before")
        LEDGER.clear()
        told = _Outcomes()
        try:
            if worker:
                await _run_worker(store, told)
            report = await recover(store, SAGAS, older_than=0, limit=1000)
        except Exception as error:
            out.problems.append(f"recover raised {error!r}")
            return out
        for name in ("resumed", "compensated", "failed", "deferred"):
            for saga_id in getattr(report, name):
                out.reported[saga_id] = name
        for name in ("skipped", "interrupted"):
            for saga_id, reason in getattr(report, name):
                out.reported[saga_id] = f"{name}:{reason.split(':')[0]}"
        out.worker = told.told
        for saga_id, step, action, result in LEDGER:
            out.calls.setdefault(saga_id, []).append((step, action, result))
        after = await _records(store, out.problems, "after")
        if counts_checked(target):
            assert target.count_rows is not None
            out.problems += await count_problems(store, target.count_rows, "after recovery")
        for saga_id, record in after.items():
            out.final[saga_id] = (
                record.status.value if hasattr(record, "status") else type(record).__name__)
        for saga_id, said in out.reported.items():
            expected = {"resumed": "completed", "compensated": "compensated",
                        "failed": "failed"}.get(said)
            if expected is not None and out.final.get(saga_id) != expected:
                out.problems.append(
                    f"S13: {saga_id!r} reported {said} but the journal holds "
                    f"{out.final.get(saga_id)}")
    if surfaces:
        ids = sorted(set(out.before) | set(out.final))
        out.problems += await cli_problems(target, ids)
        out.problems += await console_problems(target, ids)
    return out


async def cli_problems(target: FuzzTarget, ids: list[str]) -> list[str]:
    """What the CLI's ``list`` and ``show`` (plain and ``--json``) did wrong."""
    problems = []
    where = target.cli
    commands = [["list", *where], ["list", "--json", *where]]
    commands += [["show", saga_id, *where] for saga_id in ids]
    commands += [["show", saga_id, "--json", *where] for saga_id in ids]
    for argv in commands:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = await asyncio.to_thread(cli_main, argv)
        except BaseException as error:
            problems.append(f"cli {argv[:2]} raised {error!r}")
            continue
        if status not in (0, 1) or "Traceback" in err.getvalue():
            problems.append(f"cli {argv[:2]} exited {status}: {err.getvalue()[-300:]!r}")
        if "--json" in argv and status == 0:
            try:
                json.loads(out.getvalue(), parse_constant=_no_constant)
            except ValueError as error:
                problems.append(f"cli {argv[:2]} printed JSON that is not strict: {error}")
    return problems


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in JSON")


async def console_problems(target: FuzzTarget, ids: list[str]) -> list[str]:
    """What the console's pages (and its JSON API) did wrong."""
    problems = []
    async with target.open_for_console() as store, ConsoleServer(
        store, port=0
    ) as server:
        pages = ["", "api/sagas", "metrics"] + [f"api/sagas/{saga_id}" for saga_id in ids]
        for page in pages:
            reply = await fetch(server.url + urllib.parse.quote(page, safe="/"))
            if reply.status >= 500:
                problems.append(f"console {page!r}: {reply.status}")
            elif page.startswith("api/") and reply.status == 200:
                try:
                    json.loads(reply.body, parse_constant=_no_constant)
                except ValueError as error:
                    problems.append(f"console {page!r}: JSON that is not strict: {error}")
    return problems


# --------------------------------------------------------------------------- the counts (S12)


@dataclass(frozen=True)
class CountFilter:
    """The filters ``count_sagas`` and ``list_sagas`` share."""

    saga_name: str | None = None
    created_since: float | None = None
    created_until: float | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"saga_name": self.saga_name, "created_since": self.created_since,
                "created_until": self.created_until}

    def where(self, *, everything: str, name: str, time: str) -> tuple[str, list[Any]]:
        """These filters as a condition on the sagas table, as the stores
        read them (``created_since <= created_at < created_until``), and its
        parameters: ``everything`` the condition of no filter, ``name`` the
        driver's placeholder, ``time`` a Unix time's."""
        where, params = [everything], []
        if self.saga_name is not None:
            where.append(f"saga_name = {name}")
            params.append(self.saga_name)
        if self.created_since is not None:
            where.append(f"created_at >= {time}")
            params.append(self.created_since)
        if self.created_until is not None:
            where.append(f"created_at < {time}")
            params.append(self.created_until)
        return " AND ".join(where), params


# at_most: a bound some statuses pass (the scenarios leave several sagas of
# a status), and one none does; each listing adds its own (count_bounds).
COUNT_BOUNDS = (1, 1000)


def count_bounds(listed: list[Any]) -> list[int]:
    """The bounds ``count_sagas`` is asked with for ``listed`` (a filter's
    listing): ``COUNT_BOUNDS``, 0, and about each status's listed number
    (one less: the walk stops one saga short of the status's end, where
    the newest sagas are; the number; one more) — where a capped count
    passes the rows the listing leaves out and trims to ``at_most + 1``."""
    per_status = Counter(summary.status for summary in listed)
    bounds = {0, *COUNT_BOUNDS}
    for shown in per_status.values():
        bounds.update(n for n in (shown - 1, shown, shown + 1) if n >= 0)
    return sorted(bounds)


# The listing is paged through by ``before`` this many sagas at a time, as
# the CLI and the console page it.
_PAGE = 4


async def listed_through(store: Any, shown: CountFilter) -> list[Any]:
    """Every saga ``list_sagas`` shows for ``shown``, page by page to the end."""
    listed: list[Any] = []
    while True:
        before = {"before": listed[-1].saga_id} if listed else {}
        page = await store.list_sagas(limit=_PAGE, **shown.kwargs(), **before)
        listed += page
        if len(page) < _PAGE:
            return listed


def count_filters(listed: list[Any]) -> list[CountFilter]:
    """The filters asked about, from what ``listed`` (the whole listing)
    shows: none; each saga name; a window of the middle third of the
    creation times (few sagas: a count reads the window's rows), one from
    the second on (most: a count reads the rows outside it), one up to the
    middle; the first name and the middle window."""
    times = sorted(summary.created_at for summary in listed)
    names = sorted({summary.saga_name for summary in listed})
    filters = [CountFilter(), *(CountFilter(saga_name=name) for name in names)]
    if times:
        middle = (times[len(times) // 3], times[2 * len(times) // 3])
        filters += [
            CountFilter(created_since=middle[0], created_until=middle[1]),
            CountFilter(created_since=times[min(1, len(times) - 1)]),
            CountFilter(created_until=times[len(times) // 2]),
            CountFilter(saga_name=names[0], created_since=middle[0], created_until=middle[1]),
        ]
    return filters


async def check_capped_counts(store: Any, filters: list[CountFilter]) -> None:
    """For each of ``filters``, ``count_sagas`` with every ``at_most`` from 0
    to one past the listing's number agrees with the listing
    (``counts_disagree``) and adds up to exactly ``at_most + 1`` past it
    (the S12 tests of a capped count walking past unlisted rows)."""
    for shown in filters:
        listed = await listed_through(store, shown)
        assert 0 < len(listed) <= 12
        for at_most in range(len(listed) + 2):
            counts = await store.count_sagas(**shown.kwargs(), at_most=at_most)
            assert counts_disagree(counts, listed, 0, at_most) == [], (shown, at_most)
            assert sum(counts.values()) == min(len(listed), at_most + 1), (shown, at_most)


def counts_disagree(counts: Any, listed: list[Any], left_out: int,
                    at_most: int | None) -> list[str]:
    """How ``counts`` (``count_sagas``'s answer) disagrees with ``listed``
    (what the listing showed, same filters) and ``left_out`` (the rows the
    filters select in the table, less the sagas listed).

    Without ``at_most``: the counts are the listing's tally by (name,
    status), and ``unreadable`` is ``left_out``. With it, status by status:
    a status of at most ``at_most`` sagas listed is counted exactly (by
    name); one of more adds up to more than ``at_most`` and to no more than
    the listing shows, each name at most its listed number; ``unreadable``
    is ``None``."""
    tally = Counter((summary.saga_name, summary.status) for summary in listed)
    if not isinstance(counts, SagaCounts):
        return [f"not a SagaCounts: {counts!r}"]
    if at_most is None:
        found = []
        if dict(counts) != dict(tally):
            found.append(f"counts {dict(counts)} but the listing shows {dict(tally)}")
        if counts.unreadable != left_out:
            found.append(f"unreadable {counts.unreadable} but the listing left out {left_out} "
                         f"row(s)")
        return found
    found = [] if counts.unreadable is None else [f"unreadable {counts.unreadable}, not None"]
    for status in SagaStatus:
        shown = {name: n for (name, of), n in tally.items() if of is status}
        got = {name: n for (name, of), n in counts.items() if of is status}
        if sum(shown.values()) <= at_most:
            if got != shown:
                found.append(f"{status.value}: counts {got} but the listing shows {shown}")
        elif not (at_most < sum(got.values()) <= sum(shown.values())) or any(
            n > shown.get(name, 0) for name, n in got.items()
        ):
            found.append(f"{status.value}: counts {got}, not more than {at_most} of the "
                         f"listing's {shown}")
    return found


async def count_problems(store: Any, count_rows: Callable[[CountFilter], int],
                         when: str) -> list[str]:
    """Every count agrees with the listing (S12): for each filter of
    ``count_filters`` (the listing's own), ``count_sagas`` without a bound
    and with each of ``count_bounds`` against ``list_sagas`` paged through
    (``counts_disagree``); ``count_rows`` counts the rows the filter
    selects, by plain SQL beside the store."""
    try:
        filters = count_filters(await listed_through(store, CountFilter()))
    except Exception as error:
        return [f"S12 counts {when}: list_sagas raised {error!r}"]
    problems = []
    for shown in filters:
        try:
            listed = await listed_through(store, shown)
            left_out = count_rows(shown) - len(listed)
            for at_most in (None, *count_bounds(listed)):
                counts = await store.count_sagas(**shown.kwargs(), at_most=at_most)
                problems += [
                    f"S12 counts {when}: count_sagas({shown}, at_most={at_most}): {problem}"
                    for problem in counts_disagree(counts, listed, left_out, at_most)]
        except Exception as error:
            problems.append(f"S12 counts {when} ({shown}) raised {error!r}")
    return problems


# --------------------------------------------------------------------------- the checks


def _journal_facts(record: Any) -> dict[str, set[str]]:
    facts: dict[str, set[str]] = {"act_done": set(), "act_seen": set(), "comp_done": set()}
    for entry in record.history:
        if entry.action == "act":
            facts["act_seen"].add(entry.step)
            # Not CANCELLED: an act cancelled in flight has an uncertain
            # effect, and a RUNNING saga calls it again, as a crashed one.
            if entry.status == StepStatus.COMPLETED:
                facts["act_done"].add(entry.step)
        elif entry.action == "compensate" and entry.status == StepStatus.COMPLETED:
            facts["comp_done"].add(entry.step)
    return facts


class _Fresh:
    history: ClassVar[list[Any]] = []
    status = SagaStatus.RUNNING


def check_mutated(saga_id: str, before: Any, calls: list[tuple[str, str, str]],
                  reported: str | None) -> list[str]:
    """What a mutated saga's resume may do, as its (mutated) journal says."""
    problems = []
    if before is None:  # made by this recovery (a child saga): a fresh journal
        before = _Fresh()
    if not hasattr(before, "history"):  # unreadable: reported, never acted on
        if calls:
            problems.append(f"{saga_id!r} unreadable ({before!r}) but called: {calls}")
        if reported in ("resumed", "compensated", "failed"):
            problems.append(f"{saga_id!r} unreadable but reported {reported}")
        return problems
    facts = _journal_facts(before)
    status = before.status
    child = CHILD_SEPARATOR in saga_id
    compensated_now: Counter[str] = Counter()
    acted_now: set[str] = set()
    compensating = False
    for step, action, result in calls:
        if action == "act":
            if step in facts["act_done"] or step in facts["comp_done"]:
                problems.append(f"{saga_id!r}: act {step} again, the journal has it done")
            if status is not SagaStatus.RUNNING:
                problems.append(f"{saga_id!r}: act {step} of a {status.value} saga")
            if compensating:
                problems.append(f"{saga_id!r}: act {step} after a compensate")
            if result == "ok":
                acted_now.add(step)
        else:
            compensating = True
            if step in facts["comp_done"]:
                problems.append(f"{saga_id!r}: compensate {step} the journal has compensated")
            if result == "ok":
                compensated_now[step] += 1
                if compensated_now[step] > 1:
                    problems.append(f"{saga_id!r}: compensate {step} twice")
            if step not in facts["act_done"] and step not in acted_now and (
                step not in facts["act_seen"]
            ):
                problems.append(f"{saga_id!r}: compensate {step}, whose act never ran")
            if status.is_final and not (child and status is SagaStatus.COMPLETED):
                problems.append(f"{saga_id!r}: compensate {step} of a {status.value} saga")
    if status.is_final and not child and calls:
        problems.append(f"{saga_id!r} is {status.value} but was called: {calls}")
    return problems


def compare(mutated_family: str, base: Outcome, got: Outcome, *, worker: bool) -> list[str]:
    problems = list(got.problems)
    for saga_id in sorted(set(base.before) | set(got.before) | set(got.calls)):
        if _family(saga_id) == mutated_family:
            problems += check_mutated(saga_id, got.before.get(saga_id), got.calls.get(saga_id, []),
                                      got.reported.get(saga_id))
            continue
        if worker:
            # Which of the worker and the pass after it finished a saga,
            # and so the report, is timing: the rules and the end are not.
            problems += check_mutated(saga_id, got.before.get(saga_id),
                                      got.calls.get(saga_id, []), got.reported.get(saga_id))
            compared = [("final", base.final.get(saga_id), got.final.get(saga_id))]
        else:
            compared = [
                ("report", base.reported.get(saga_id), got.reported.get(saga_id)),
                ("calls", Counter(base.calls.get(saga_id, [])),
                 Counter(got.calls.get(saga_id, []))),
                ("final", base.final.get(saga_id), got.final.get(saga_id)),
            ]
        for what, b, g in compared:
            if b != g:
                problems.append(f"untouched {saga_id!r}: {what} {g} instead of {b}")
    # Calls for a saga id that is no saga's (an unreadable id) are the mutated family's.
    return problems


# --------------------------------------------------------------------------- the converse (S12)


# A status the store writes but the claim does not take (finished, or
# pending: written by no store, shown as such) is out of recovery's part.
SETTLED_STATUSES: frozenset[str] = frozenset(status.value for status in SagaStatus) - {
    SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value}


def waits_for_recovery(status: str, *, held: bool, parked: bool) -> bool:
    """Whether a saga (its row's ``status``) is recovery's to take or name
    (S12): in flight, or a status the store does not know; no lease held
    (``held``: an owner, and an expiry in the future a claim could reach —
    a live worker's), not ``parked`` (it waits for an operator)."""
    return status not in SETTLED_STATUSES and not held and not parked


def unreported(waiting: list[str], got: Outcome) -> list[str]:
    """Each saga of ``waiting`` that no reader can read and the pass did not
    name: left waiting without a word (S12)."""
    return [
        f"S12: {saga_id!r} is unreadable ({got.before.get(saga_id, 'not listed')!r}) but no "
        f"recover pass named it" for saga_id in waiting
        if (saga_id not in got.before or not hasattr(got.before[saga_id], "history"))
        and saga_id not in got.reported
    ]


# --------------------------------------------------------------------------- the hunt


class Bench:
    """A pristine store (the scenarios run into it once), its recovery
    without mutations (the baseline), and each case: a copy of it, one saga
    family's rows mutated by the seed, recovered and read back, compared.
    A store's bench says how to make, copy, mutate and drop a store."""

    def __init__(self) -> None:
        self.base: Outcome | None = None

    async def make_pristine(self) -> None:
        raise NotImplementedError

    async def copy(self, name: str) -> FuzzTarget:
        """A copy of the pristine store, named ``name``."""
        raise NotImplementedError

    def mutate(self, name: str, seed: int) -> tuple[str, list[str]]:
        """Mutate one saga family's rows of copy ``name`` (seeded): its
        top-level id and what was done."""
        raise NotImplementedError

    async def drop(self, name: str) -> None:
        raise NotImplementedError

    def waiting_for_recovery(self, name: str, family: str) -> list[str]:
        """The sagas of ``family`` in copy ``name``, as mutated, that a
        recover pass must take or name (see ``waits_for_recovery``)."""
        raise NotImplementedError

    async def setup(self) -> None:
        await self.make_pristine()
        try:
            self.base = await recover_store(await self.copy("base"), surfaces=False)
        finally:
            await self.drop("base")
        assert not self.base.problems, self.base.problems
        # The baseline itself obeys the rules a mutated saga is held to.
        for saga_id, before in self.base.before.items():
            found = check_mutated(saga_id, before, self.base.calls.get(saga_id, []),
                                  self.base.reported.get(saga_id))
            assert not found, found

    async def case(self, seed: int, *, worker: bool = False,
                   surfaces: bool = True) -> tuple[list[str], list[str]]:
        """Seed ``seed``'s mutation: what it did, and the problems found."""
        done, problems, _ = await self.case_by(
            f"case_{seed}", lambda name: self.mutate(name, seed), worker=worker,
            surfaces=surfaces)
        return done, problems

    async def case_by(
        self, name: str, mutation: Callable[[str], tuple[str, list[str]]], *,
        worker: bool = False, surfaces: bool = True,
    ) -> tuple[list[str], list[str], Outcome]:
        """``mutation`` (of copy ``name``: the family mutated, what was
        done) recovered and read back: what it did, the problems found, the
        outcome."""
        assert self.base is not None
        target = await self.copy(name)
        try:
            family, done = mutation(name)
            waiting = self.waiting_for_recovery(name, family)
            got = await recover_store(target, worker=worker, surfaces=surfaces)
            problems = compare(family, self.base, got, worker=worker) + unreported(waiting, got)
            return done, problems, got
        finally:
            await self.drop(name)


def hunt_main(argv: list[str], bench: Callable[[], AbstractAsyncContextManager[Bench]]) -> int:
    """A fuzz module's ``__main__``: ``START COUNT [--worker-every N]`` seeds
    over the bench ``bench()`` makes (set up). Prints each seed that found
    something, and a count every 100; 1 when any was found."""
    import logging
    import time

    import fallback_saga

    fallback_saga.set_testing(True)
    logging.getLogger("fallback_saga").setLevel(logging.CRITICAL)
    args = list(argv)
    every = 0
    if "--worker-every" in args:
        at = args.index("--worker-every")
        every = int(args[at + 1])
        del args[at:at + 2]
    first, count = int(args[0]), int(args[1])

    async def hunt() -> int:
        found = 0
        async with bench() as made:
            began = time.monotonic()
            for seed in range(first, first + count):
                worker = bool(every) and seed % every == 0
                try:
                    done, problems = await made.case(seed, worker=worker,
                                                     surfaces=seed % 4 == 0)
                except Exception as error:  # the harness's own: say so, go on
                    done, problems = [], [f"HARNESS {error!r}"]
                if problems:
                    found += 1
                    print(f"FOUND seed {seed} worker={worker}: {done}", flush=True)
                    for line in problems[:8]:
                        print("   ", line[:600], flush=True)
                if (seed - first + 1) % 100 == 0:
                    print(f"done {seed - first + 1} in {time.monotonic() - began:.0f}s, "
                          f"{found} found", flush=True)
            print(f"{count} seeds from {first}: {found} found", flush=True)
        return found

    return 1 if asyncio.run(hunt()) else 0
