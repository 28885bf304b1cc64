"""S10/S13/S14 under a seeded chaos soak: several OS processes run sagas and
``RecoveryWorker``\\ s on ONE store while faults are injected at random
moments (SIGKILL of a process, SIGSTOP past its lease, a full disk under
SQLite, backend termination and a restart of PostgreSQL). See
``chaos_soak.py`` for the saga, the participant's ledger and the driver.

After the chaos stops and fresh workers drain everything, the checks
(``chaos_soak.check``) must find: every saga terminal, with the status its
kind says; no call without its STARTED row; nothing the journal says that
the ledger contradicts; compensation of everything that had an effect, in
reverse order, and no act after it began; no run starting a call once a
newer run has taken its saga over (fencing); the results and context a
resumed run saw are the journaled ones.

The seeds here are small and fixed (a run is some 10 to 20 s); the offline hunt
runs many seeds for minutes each (``python tests/chaos_soak.py soak --help``).
The first test shows the checks can fail: each broken invariant, fed to them
by hand, is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from chaos_soak import Settings, check, kind_of, soak
from conftest_pg import throwaway_cluster

from fallback_saga import JournalEntry, SagaRecord, SagaStatus, StepStatus

pytest_plugins = ["conftest_pg"]


def _entry(position: int, step: str, action: str, status: str,
           result: str | None = None) -> JournalEntry:
    return JournalEntry(position, step, "primary", action,  # type: ignore[arg-type]
                        StepStatus(status), 1, None, 1.0, result)


def _call(event: str, step: str, action: str, runner: str = "r1", **extra: Any) -> dict[str, Any]:
    """A ledger line; run ``r1`` is the saga's first (live) run, in process c1;
    any other run is one a worker of process c2 resumed."""
    saga = extra.pop("saga", "x")
    key = f"{saga}:{step}" if action == "act" else f"{saga}:{step}:compensate"
    owner = "c1" if runner == "r1" else "c2"
    return {"event": event, "saga": saga, "step": step, "action": action, "key": key,
            "runner": runner, "owner": owner, "pid": 1, "attempt": 1, "live": runner == "r1",
            **extra}


def _saga_of_kind(kind: str) -> str:
    return next(f"k{n}" for n in range(1000) if kind_of(f"k{n}") == kind)


def _unwound(saga_id: str) -> tuple[SagaRecord, list[dict[str, Any]]]:
    """A ``late`` saga (D fails) that was unwound correctly."""
    history = [_entry(0, "A", "act", "started"), _entry(0, "A", "act", "completed", '"ta"'),
               _entry(1, "B", "act", "started"), _entry(1, "B", "act", "completed", '"tb"'),
               _entry(2, "C", "act", "started"), _entry(2, "C", "act", "completed", '"tc"'),
               _entry(3, "D", "act", "started"), _entry(3, "D", "act", "failed"),
               _entry(2, "C", "compensate", "started"), _entry(2, "C", "compensate", "completed"),
               _entry(1, "B", "compensate", "started"), _entry(1, "B", "compensate", "completed"),
               _entry(0, "A", "compensate", "started"), _entry(0, "A", "compensate", "completed")]
    record = SagaRecord(saga_id, "ChaosSaga", "f", SagaStatus.COMPENSATED, {}, history)
    lines = []
    seen: list[str] = []
    for step, token in (("A", "ta"), ("B", "tb"), ("C", "tc")):
        lines += [_call("enter", step, "act", saga=saga_id, seen=list(seen)),
                  _call("apply", step, "act", saga=saga_id, token=token)]
        seen.append(token)
    lines += [_call("enter", "D", "act", saga=saga_id, seen=list(seen)),
              _call("raise", "D", "act", saga=saga_id)]
    for step in ("C", "B", "A"):
        lines += [_call("enter", step, "compensate", saga=saga_id, seen=list(seen)),
                  _call("apply", step, "compensate", saga=saga_id)]
    return record, lines


def test_S10_S13_S14_the_chaos_checks_report_each_broken_invariant() -> None:
    saga_id = _saga_of_kind("late")
    record, lines = _unwound(saga_id)
    assert check({saga_id: record}, lines) == []

    def problems(mutate: Any) -> list[str]:
        record, lines = _unwound(saga_id)
        mutate(record, lines)
        return check({saga_id: record}, lines)

    # stuck, with no owner
    assert any("not terminal" in p for p in problems(
        lambda r, _: setattr(r, "status", SagaStatus.COMPENSATING)))
    # an act after its compensation started (anti-hanging)
    assert any("after compensation began" in p for p in problems(
        lambda _, lines: lines.append(_call("enter", "B", "act", saga=saga_id, seen=[]))))
    # compensated out of order
    def swap(_: Any, lines: list[dict[str, Any]]) -> None:
        lines[-4:-2], lines[-2:] = lines[-2:], lines[-4:-2]
    assert any("reverse order" in p for p in problems(swap))
    # an effect never compensated
    assert any("never compensated" in p for p in problems(
        lambda _, lines: [lines.remove(x) for x in list(lines)
                          if x["step"] == "A" and x["action"] == "compensate"]))
    # a call with no STARTED row (S13)
    assert any("no STARTED row" in p for p in problems(
        lambda r, _: setattr(r, "history", [e for e in r.history if e.step != "B"])))
    # the journal says an act completed that had no effect
    assert any("had no effect" in p for p in problems(
        lambda _, lines: [lines.remove(x) for x in list(lines)
                          if x["step"] == "B" and x["event"] == "apply" and x["action"] == "act"]))
    # a journaled result that is no call's (S14)
    assert any("S14" in p for p in problems(
        lambda r, _: r.history.__setitem__(3, r.history[3]._replace(result='"other"'))))
    # a fenced-out run starting a call after a newer run took the saga over
    # (the newer run's D comes first: the old one's D is the call it had in
    # flight, which it may finish; its compensations it may not start)
    def zombie(_: Any, lines: list[dict[str, Any]]) -> None:
        lines[6:6] = [{"event": "claim", "saga": saga_id, "owner": "c2", "token": 1},
                      _call("enter", "D", "act", runner="r2", saga=saga_id, seen=[])]
    assert any("fencing" in p for p in problems(zombie))

    def in_flight(_: Any, lines: list[dict[str, Any]]) -> None:
        zombie(_, lines)
        for line in lines[9:]:  # the rest is the newer run's
            line.update(runner="r2", owner="c2", live=False)
    assert problems(in_flight) == []
    # a caller told a status the journal does not hold
    assert any("was told" in p for p in problems(lambda _, lines: lines.append(
        {"event": "outcome", "saga": saga_id, "outcome": "completed", "by": "run"})))
    # calls for a saga the journal does not have
    assert any("no saga in the journal" in p for p in check({}, lines))


def _assert_clean(report: dict[str, Any]) -> None:
    assert report["problems"] == [], report
    assert report["sagas_created"] > 0, report
    assert sum(report["faults"].values()) > 0, report


@pytest.mark.parametrize("writer", ["thread", "process", "inline"])
def test_S10_S13_S14_chaos_soak_on_one_sqlite_file(writer: str) -> None:
    report = soak(Settings(store="sqlite", writer=writer, seed=11, sagas=40, children=3,
                           faults=6))
    _assert_clean(report)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Any]:
    """A server of this module's own: the soak restarts it."""
    yield from throwaway_cluster()


def test_S10_S13_S14_chaos_soak_on_one_postgres_database(own_cluster: Any) -> None:
    pytest.importorskip("psycopg")
    report = soak(Settings(store="postgres", seed=12, sagas=40, children=3, faults=6),
                  pg=own_cluster)
    _assert_clean(report)
