"""Resume and recovery (S10, S12) on SQLiteSagaStore: where a resumed saga picks
up, fencing a paused runner out, bad input, and concurrency (200 sagas in
flight; two recovery processes racing over the same file).

In-process "crashes": a step raises ``Crash``, a ``BaseException`` that the
executor neither journals nor unwinds (only ``Exception`` and cancellation
are handled), so the store is left exactly as a process killed inside that
step would leave it. The store object is then closed and the saga is resumed
through a *fresh* store object and fresh step instances. The real thing —
child processes killed with ``os._exit`` at every journal boundary — is
``test_crash_matrix.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from crash_app import APP, CrashSaga

from fallback_saga import (
    ContextDecodeError,
    ContextSerializationError,
    Fallback,
    JournalEntry,
    LeaseLost,
    MemorySagaStore,
    RecordedError,
    Saga,
    SagaContext,
    SagaDefinitionChanged,
    SagaFailed,
    SagaNotFound,
    SagaStatus,
    SagaStepHandler,
    SagaStoreError,
    SQLiteSagaStore,
    StepStatus,
    current_step,
    recover,
)

STARTED, COMPLETED, FAILED = StepStatus.STARTED, StepStatus.COMPLETED, StepStatus.FAILED


class Crash(BaseException):
    """The process dies inside a step: nothing after this point is journaled."""


class Boom(Exception):
    """A step failure on purpose."""


# --------------------------------------------------------------------------- the saga

Behaviour = str | asyncio.Event | Callable[[], Awaitable[None]]


class Script:
    """What the steps of one saga instance do, and what they were called with.

    ``behaviours["act B"]`` is a list (one behaviour per call, then "ok") or a
    single behaviour for every call: ``"ok"``, ``"fail"`` (``Boom``),
    ``"crash"`` (``Crash``), an ``asyncio.Event`` to wait for, or an async
    callable to await. ``calls`` records ``(action, step, idempotency_key)``.
    """

    def __init__(self, **behaviours: list[Behaviour] | Behaviour) -> None:
        self.behaviours = {key.replace("_", " "): value for key, value in behaviours.items()}
        self.calls: list[tuple[str, str, str]] = []
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def steps(self) -> list[tuple[str, str]]:
        return [(action, step) for action, step, _ in self.calls]

    async def perform(self, action: str, step: str) -> None:
        key = f"{action} {step}"
        self.calls.append((action, step, current_step().idempotency_key))
        self.entered[key].set()
        planned = self.behaviours.get(key, "ok")
        what = planned if not isinstance(planned, list) else planned.pop(0) if planned else "ok"
        if isinstance(what, asyncio.Event):
            await what.wait()
        elif callable(what):
            await what()
        elif what == "fail":
            raise Boom(f"{key} failed")
        elif what == "crash":
            raise Crash(key)
        else:
            assert what == "ok", what


@dataclasses.dataclass
class ShopCtx(SagaContext):
    order_id: str = "order-1"
    trail: list[str] = dataclasses.field(default_factory=list)


class _ShopStep(SagaStepHandler[ShopCtx, str]):
    name: ClassVar[str | None] = None

    def __init__(self, script: Script) -> None:
        self.script = script

    async def act(self, ctx: ShopCtx, /) -> Any:
        assert self.name is not None
        ctx.trail.append(self.name)
        await self.script.perform("act", self.name)
        return self.name

    async def compensate(self, ctx: ShopCtx, /) -> None:
        assert self.name is not None
        ctx.trail.append(f"-{self.name}")
        await self.script.perform("compensate", self.name)


class A(_ShopStep):
    name = "A"


class B(_ShopStep):
    name = "B"


class B2(_ShopStep):
    name = "B2"


class C(_ShopStep):
    name = "C"


class D(_ShopStep):
    name = "D"


class Reserve(_ShopStep):
    name = "Reserve"


class ShopSaga(Saga[ShopCtx]):
    steps: ClassVar[list[Any]] = [A, Fallback(step=B, fallback=B2), C]


def shop(store: SQLiteSagaStore, script: Script, saga_cls: type[Saga[Any]] = ShopSaga) -> Any:
    return saga_cls(store=store, step_factory=lambda cls: cls(script))


def changed_shop_saga(new_steps: list[Any]) -> type[Saga[ShopCtx]]:
    """A saga with the same name as ``ShopSaga`` but other steps (the code changed)."""

    class ShopSaga(Saga[ShopCtx]):
        steps: ClassVar[list[Any]] = new_steps

    return ShopSaga


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sagas.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteSagaStore]:
    """The store of the "fresh process" that resumes."""
    async with SQLiteSagaStore(db) as store:
        yield store


async def crashed(db: Path, saga_id: str, ctx: ShopCtx | None = None, **plan: Any) -> Script:
    """Run ``ShopSaga`` in its own store object until a step raises ``Crash``."""
    script = Script(**plan)
    async with SQLiteSagaStore(db) as first:
        with pytest.raises(Crash):
            await shop(first, script).run(ctx or ShopCtx(order_id=saga_id), saga_id=saga_id)
    return script


def rows(record: Any) -> list[tuple[str, str, str, str]]:
    return [(e.step, e.branch, e.action, e.status.value) for e in record.history]


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


# --------------------------------------------------------------------------- S10: resume


async def test_S10_a_running_saga_resumes_at_the_first_act_that_did_not_complete(
    db: Path, store: SQLiteSagaStore
) -> None:
    first = await crashed(db, "s1", act_C="crash")
    assert first.steps() == [("act", "A"), ("act", "B"), ("act", "C")]
    record = await store.load("s1")
    assert record.status is SagaStatus.RUNNING
    assert rows(record)[-1] == ("C", "primary", "act", "started")

    second = Script()
    result = await shop(store, second).resume("s1")

    assert result.status is SagaStatus.COMPLETED
    assert result.context.trail == ["A", "B", "C"]
    # C runs again — and only C: A and B completed before the crash.
    assert second.steps() == [("act", "C")]
    # ... with the same idempotency key as in the crashed run.
    assert second.calls[0][2] == first.calls[-1][2] == "s1:C"
    record = await store.load("s1")
    assert record.status is SagaStatus.COMPLETED
    assert rows(record)[-3:] == [
        ("C", "primary", "act", "started"),  # the crashed try
        ("C", "primary", "act", "started"),  # the resumed one
        ("C", "primary", "act", "completed"),
    ]
    assert record.context["trail"] == ["A", "B", "C"]


@pytest.mark.parametrize("operator", [None, "ops-alice@box:7 (console)"])
async def test_S13_resume_by_an_operator_names_them_in_the_journal_and_the_lease(
    db: Path, store: SQLiteSagaStore, operator: str | None
) -> None:
    """``Saga.resume(saga_id, operator=...)`` (the CLI's ``resume ID``)
    leases the saga in the operator's name and says, in the first row the
    resumed run writes, ``resumed by an operator: <operator>``, as
    ``retry_unwinding`` names who reopened a saga; without ``operator`` (a
    program's resume) the journal and the lease are as they always were."""
    await crashed(db, "s1", act_C="crash")
    written = len((await store.load("s1")).history)
    owners: list[str | None] = []

    async def lease_owner() -> None:
        owners.append((await store.lease_state("s1")).owner)

    result = await shop(store, Script(act_C=lease_owner)).resume("s1", operator=operator)

    assert result.status is SagaStatus.COMPLETED
    new_rows = [(e.step, e.action, e.status.value, e.error)
                for e in (await store.load("s1")).history[written:]]
    assert new_rows == [
        ("C", "act", "started",
         None if operator is None else f"resumed by an operator: {operator}"),
        ("C", "act", "completed", None),
    ]
    assert owners[0] is not None
    if operator is None:
        assert "ops-alice" not in owners[0]
    else:
        assert owners == [operator]


async def test_S10_a_primary_in_flight_restarts_its_step_with_the_primary(
    db: Path, store: SQLiteSagaStore
) -> None:
    first = await crashed(db, "s1", act_B="crash")
    assert first.steps()[-1] == ("act", "B")

    second = Script()
    result = await shop(store, second).resume("s1")

    assert result.status is SagaStatus.COMPLETED
    assert second.steps() == [("act", "B"), ("act", "C")]  # the primary is called again
    assert second.calls[0][2] == first.calls[-1][2] == "s1:B"
    assert result.context.trail == ["A", "B", "C"]


async def test_S10_a_restarted_primary_that_fails_now_hands_over_to_its_fallback_from_the_snapshot(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", act_B="crash")

    second = Script(act_B="fail")
    result = await shop(store, second).resume("s1")

    assert second.steps() == [("act", "B"), ("act", "B2"), ("act", "C")]
    assert result.context.trail == ["A", "B2", "C"]  # B's mutation was undone (S2)


async def test_S10_a_fallback_in_flight_resumes_with_the_fallback_not_the_primary(
    db: Path, store: SQLiteSagaStore
) -> None:
    first = await crashed(db, "s1", act_B="fail", act_B2="crash")
    assert first.steps() == [("act", "A"), ("act", "B"), ("act", "B2")]
    assert rows(await store.load("s1"))[-2:] == [
        ("B", "primary", "act", "failed"),
        ("B2", "fallback", "act", "started"),
    ]

    second = Script()
    result = await shop(store, second).resume("s1")

    assert result.status is SagaStatus.COMPLETED
    assert second.steps() == [("act", "B2"), ("act", "C")]  # never the primary again
    assert second.calls[0][2] == first.calls[-1][2] == "s1:B2"
    assert result.context.trail == ["A", "B2", "C"]
    history = rows(await store.load("s1"))
    assert history.count(("B", "primary", "act", "failed")) == 1
    assert ("B", "primary", "act", "completed") not in history


async def test_S10_a_failed_fallback_on_resume_unwinds_like_run(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", act_B="fail", act_B2="crash")

    second = Script(act_B2="fail")
    with pytest.raises(SagaFailed) as caught:
        await shop(store, second).resume("s1")

    assert caught.value.status is SagaStatus.COMPENSATED
    assert caught.value.failed_step == "B2"
    assert isinstance(caught.value.error, Boom)
    assert second.steps() == [("act", "B2"), ("compensate", "A")]
    record = await store.load("s1")
    assert record.status is SagaStatus.COMPENSATED


async def test_S10_unwinding_after_resume_compensates_the_fallback_branch_that_ran(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", act_B="fail", act_C="crash")

    second = Script(act_C="fail")
    with pytest.raises(SagaFailed) as caught:
        await shop(store, second).resume("s1")

    assert caught.value.status is SagaStatus.COMPENSATED
    assert caught.value.failed_step == "C"
    # B2 ran (B failed before the crash), so B2's compensate is the one used.
    assert second.steps() == [("act", "C"), ("compensate", "B2"), ("compensate", "A")]
    record = await store.load("s1")
    assert [(s, b) for s, b, a, st in rows(record) if a == "compensate" and st == "completed"] == [
        ("B2", "fallback"), ("A", "primary"),
    ]
    assert record.context["trail"] == ["A", "B2", "-B2", "-A"]


async def test_S10_a_compensating_saga_finishes_unwinding_and_never_runs_a_forward_step(
    db: Path, store: SQLiteSagaStore
) -> None:
    first = await crashed(db, "s1", act_C="fail", compensate_A="crash")
    assert first.steps() == [
        ("act", "A"), ("act", "B"), ("act", "C"), ("compensate", "B"), ("compensate", "A"),
    ]
    record = await store.load("s1")
    assert record.status is SagaStatus.COMPENSATING
    assert rows(record)[-2:] == [
        ("B", "primary", "compensate", "completed"),
        ("A", "primary", "compensate", "started"),
    ]

    second = Script()
    with pytest.raises(SagaFailed) as caught:
        await shop(store, second).resume("s1")

    # Only A's compensation was outstanding: B is not compensated twice, C not retried.
    assert second.steps() == [("compensate", "A")]
    assert second.calls[0][2] == first.calls[-1][2] == "s1:A:compensate"
    assert caught.value.status is SagaStatus.COMPENSATED
    assert caught.value.failed_step == "C"
    assert "act C failed" in str(caught.value.error)
    record = await store.load("s1")
    assert record.status is SagaStatus.COMPENSATED
    compensations = Counter(
        s for s, _, a, st in rows(record) if a == "compensate" and st == "completed"
    )
    assert compensations == Counter({"A": 1, "B": 1})
    first_compensation = next(i for i, r in enumerate(rows(record)) if r[2] == "compensate")
    assert all(r[2] == "compensate" for r in rows(record)[first_compensation:])


async def test_S10_a_compensating_saga_resumes_the_fallback_compensation_in_flight(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", act_B="fail", act_C="fail", compensate_B2="crash")

    second = Script()
    with pytest.raises(SagaFailed) as caught:
        await shop(store, second).resume("s1")

    assert caught.value.status is SagaStatus.COMPENSATED
    assert second.steps() == [("compensate", "B2"), ("compensate", "A")]


async def test_S10_every_act_completed_but_not_the_saga_completes_without_running_a_step(
    store: SQLiteSagaStore,
) -> None:
    forward = [
        JournalEntry(position, name, branch, "act", status, 1, None, 1.0)
        for position, name, branch in ((0, "A", "primary"), (1, "B", "primary"),
                                       (2, "C", "primary"))
        for status in (STARTED, COMPLETED)
    ]
    await store.create(
        "s1", "ShopSaga", ShopSaga.definition.fingerprint,
        {"order_id": "s1", "trail": ["A", "B", "C"]}, forward,
    )

    script = Script()
    result = await shop(store, script).resume("s1")

    assert result.status is SagaStatus.COMPLETED
    assert script.calls == []
    assert (await store.load("s1")).status is SagaStatus.COMPLETED


@pytest.mark.parametrize("recovery_finishes_first", [True, False])
async def test_S10_a_paused_original_runner_is_fenced_out_by_recovery(
    db: Path, recovery_finishes_first: bool
) -> None:
    original_gate, recovery_gate = asyncio.Event(), asyncio.Event()
    original = Script(act_B=[original_gate])
    rescuer = Script(act_B=[] if recovery_finishes_first else [recovery_gate])
    async with SQLiteSagaStore(db) as store1, SQLiteSagaStore(db) as store2:
        runner = asyncio.create_task(shop(store1, original).run(ShopCtx(), saga_id="s1"))
        await original.entered["act B"].wait()  # the original runner pauses inside B

        recovery = asyncio.create_task(
            recover(store2, [shop(store2, rescuer)], older_than=0, owner="rescuer")
        )
        if recovery_finishes_first:
            report = await recovery
            assert report.resumed == ["s1"]
            original_gate.set()
            with pytest.raises(LeaseLost) as caught:
                await runner
        else:
            await rescuer.entered["act B"].wait()
            original_gate.set()
            with pytest.raises(LeaseLost) as caught:
                await runner
            recovery_gate.set()
            report = await recovery
            assert report.resumed == ["s1"]

        assert caught.value.saga_id == "s1"
        # The fenced runner stopped at once: no forward step, no compensation.
        assert original.steps() == [("act", "A"), ("act", "B")]
        assert rescuer.steps() == [("act", "B"), ("act", "C")]
        assert rescuer.calls[0][2] == original.calls[1][2] == "s1:B"
        record = await store2.load("s1")
        assert record.status is SagaStatus.COMPLETED
        assert rows(record) == [
            ("A", "primary", "act", "started"),
            ("A", "primary", "act", "completed"),
            ("B", "primary", "act", "started"),  # the original runner's try
            ("B", "primary", "act", "started"),  # the recovery's
            ("B", "primary", "act", "completed"),
            ("C", "primary", "act", "started"),
            ("C", "primary", "act", "completed"),
        ]
        assert record.context["trail"] == ["A", "B", "C"]


async def test_S10_resume_of_a_saga_a_recovery_pass_claimed_and_skipped(
    db: Path, store: SQLiteSagaStore
) -> None:
    """recover() reports a changed definition as skipped; the operator then resumes
    the saga by hand with the override. The skipped saga's lease was released, so
    nobody drives it: the override must be able to."""
    await crashed(db, "s1", act_C="crash")
    changed = changed_shop_saga([A, Fallback(step=B, fallback=B2), C, D])
    script = Script()

    report = await recover(store, [shop(store, script, changed)], older_than=0)
    assert [saga_id for saga_id, _ in report.skipped] == ["s1"]
    assert "SagaDefinitionChanged" in report.skipped[0][1]

    result = await shop(store, script, changed).resume("s1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED
    assert script.steps() == [("act", "C"), ("act", "D")]


# --------------------------------------------------------------------------- S12: bad input


@dataclasses.dataclass
class LooseCtx(ShopCtx):
    extra: Any = None


class LooseSaga(Saga[LooseCtx]):
    steps: ClassVar[list[Any]] = [A, Fallback(step=B, fallback=B2), C]


@pytest.mark.parametrize(
    ("extra", "path", "value_type"),
    [
        ({"tags": ["a"], "lock": asyncio.Lock()}, "extra['lock']", "Lock"),
        ([1.0, float("nan")], "extra[1]", "float"),
        (complex(0, float("nan")), "extra", "complex"),  # (bytes, complex are carried: S14)
    ],
    ids=["object", "nan", "complex"],
)
async def test_S12_a_context_that_cannot_be_serialized_is_refused_before_the_first_step(
    store: SQLiteSagaStore, extra: Any, path: str, value_type: str
) -> None:
    script = Script()
    saga = shop(store, script, LooseSaga)
    with pytest.raises(ContextSerializationError) as caught:
        await saga.run(LooseCtx(extra=extra), saga_id="bad")

    assert caught.value.path == path
    assert repr(path) in str(caught.value)  # the message names the field
    assert caught.value.value_type == value_type
    assert script.calls == []
    assert await store.list_sagas() == []
    with pytest.raises(SagaNotFound):
        await store.load("bad")
    # Nothing else broke: the same saga and store run a good context.
    result = await saga.run(LooseCtx(extra={"tags": ["a", "b"]}), saga_id="good")
    assert result.status is SagaStatus.COMPLETED
    assert [s.saga_id for s in await store.list_sagas()] == ["good"]


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("{not json", "CorruptSagaRecord"),
        ("[1, 2]", "CorruptSagaRecord"),
        ('{"order_id": "bad", "trail": 5}', "ContextDecodeError"),
    ],
)
async def test_S12_recover_skips_a_corrupt_context_and_recovers_the_others(
    db: Path, store: SQLiteSagaStore, stored: str, reason: str
) -> None:
    for saga_id in ("good-1", "bad", "good-2"):
        await crashed(db, saga_id, act_B="crash")
    conn = raw(db)
    conn.execute("UPDATE sagas SET context = ? WHERE saga_id = 'bad'", (stored,))
    conn.close()

    script = Script()
    report = await recover(store, [shop(store, script)], older_than=0)

    assert sorted(report.resumed) == ["good-1", "good-2"]
    assert [saga_id for saga_id, _ in report.skipped] == ["bad"]
    assert reason in report.skipped[0][1]
    assert "bad" in str(report)
    assert Counter(call[2] for call in script.calls) == Counter(
        {"good-1:B": 1, "good-1:C": 1, "good-2:B": 1, "good-2:C": 1}
    )
    for saga_id in ("good-1", "good-2"):
        assert (await store.load(saga_id)).status is SagaStatus.COMPLETED
    conn = raw(db)
    (status,) = conn.execute("SELECT status FROM sagas WHERE saga_id = 'bad'").fetchone()
    conn.close()
    assert status == "running"  # left alone for an operator


async def test_S12_recover_skips_an_unknown_saga_name_and_recovers_the_others(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "good-1", act_B="crash")
    await store.create(
        "ghost", "GhostSaga", "0123456789abcdef", {"who": "boo"},
        [JournalEntry(0, "Haunt", "primary", "act", STARTED, 1, None, 1.0)],
    )
    await crashed(db, "good-2", act_C="crash")

    script = Script()
    report = await recover(store, [shop(store, script)], older_than=0)

    assert sorted(report.resumed) == ["good-1", "good-2"]
    assert report.skipped == [("ghost", "no saga named 'GhostSaga' given")]
    ghost = await store.load("ghost")
    assert ghost.status is SagaStatus.RUNNING
    assert rows(ghost) == [("Haunt", "primary", "act", "started")]


@pytest.mark.parametrize(
    ("new_steps", "said"),
    [
        (
            [Reserve, Fallback(step=B, fallback=B2), C],
            "position 0 (primary) ran 'A', now 'Reserve'",
        ),
        (
            [A, Fallback(step=B, fallback=B2)],
            "position 2 ran 'C', but the saga now has only 2 steps",
        ),
        (
            [A, Fallback(step=B2, fallback=B), C],
            "position 1 (primary) ran 'B', now 'B2'",
        ),
        (
            [A, Fallback(step=B, fallback=B2), C, D],
            "the steps not yet run were changed",
        ),
    ],
    ids=["renamed", "removed", "swapped-fallback", "appended"],
)
async def test_S12_resume_with_a_changed_definition_is_refused_saying_what_changed(
    db: Path, store: SQLiteSagaStore, new_steps: list[Any], said: str
) -> None:
    await crashed(db, "s1", act_C="crash")
    before = rows(await store.load("s1"))
    changed = changed_shop_saga(new_steps)
    script = Script()

    with pytest.raises(SagaDefinitionChanged) as caught:
        await shop(store, script, changed).resume("s1")

    error = caught.value
    assert error.saga_id == "s1"
    assert error.stored_fingerprint == ShopSaga.definition.fingerprint
    assert error.current_fingerprint == changed.definition.fingerprint
    assert said in str(error)
    assert any(said in difference for difference in error.differences)
    assert script.calls == []
    record = await store.load("s1")
    assert record.status is SagaStatus.RUNNING
    assert rows(record) == before  # untouched


async def test_S12_allow_changed_definition_overrides_the_refusal(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "s1", act_C="crash")
    changed = changed_shop_saga([A, Fallback(step=B, fallback=B2), C, D])
    script = Script()

    result = await shop(store, script, changed).resume("s1", allow_changed_definition=True)

    assert result.status is SagaStatus.COMPLETED
    assert script.steps() == [("act", "C"), ("act", "D")]  # matched by position
    assert result.context.trail == ["A", "B", "C", "D"]


async def test_S12_recover_skips_a_changed_definition_and_recovers_the_others(
    db: Path, store: SQLiteSagaStore
) -> None:
    await crashed(db, "old", act_C="crash")
    await store.create(
        "renamed", "ShopSaga", "ffffffffffffffff", {"order_id": "renamed"},
        [JournalEntry(0, "Ancient", "primary", "act", STARTED, 1, None, 1.0)],
    )
    script = Script()

    report = await recover(store, [shop(store, script)], older_than=0)

    assert report.resumed == ["old"]
    assert [saga_id for saga_id, _ in report.skipped] == ["renamed"]
    assert "SagaDefinitionChanged" in report.skipped[0][1]
    assert "position 0 (primary) ran 'Ancient', now 'A'" in report.skipped[0][1]


async def test_S12_a_store_file_that_is_not_sqlite_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    garbage = b"these are my notes, not a database\n" * 200
    path.write_bytes(garbage)
    script = Script()
    broken = SQLiteSagaStore(path)
    try:
        with pytest.raises(SagaStoreError, match="not a SQLite database"):
            await shop(broken, script).run(ShopCtx(), saga_id="s1")
        with pytest.raises(SagaStoreError, match="not a SQLite database"):
            await recover(broken, [shop(broken, script)], older_than=0)
        with pytest.raises(SagaStoreError, match="not a SQLite database"):
            await shop(broken, script).resume("s1")
    finally:
        await broken.close()
    assert script.calls == []
    assert path.read_bytes() == garbage  # the file was not touched
    # Nothing else broke: a good store in the same process works.
    async with SQLiteSagaStore(tmp_path / "good.db") as good:
        result = await shop(good, script).run(ShopCtx(), saga_id="s1")
    assert result.status is SagaStatus.COMPLETED


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ({"older_than": "60"}, "older_than must be a finite number of seconds >= 0, got '60'"),
        ({"older_than": -1}, "older_than must be a finite number of seconds >= 0"),
        ({"limit": "100"}, "limit must be an int >= 1, got '100'"),
        ({"limit": 0}, "limit must be an int >= 1"),
        ({"concurrency": 2.5}, "concurrency must be an int >= 1, got 2.5"),
        ({"owner": ""}, "owner must be a non-empty str"),
        # An int too large for a float was an OverflowError naming nothing.
        ({"older_than": 10**400}, "older_than must be a finite number of seconds >= 0"),
        ({"resume_timeout": 10**400}, "resume_timeout must be a finite number of seconds > 0"),
        # More than a store's INTEGER/bigint: each claim was a SagaStoreError.
        ({"limit": 2**63}, "limit must be at most 2**63 - 1, got 9223372036854775808"),
        # A lease that has run out when it is taken (a worker, retry_unwinding
        # and the CLI refuse it): another pass could claim the saga while
        # this one drives it. ``lease`` was not checked at all.
        ({"lease": 0}, "lease must be a finite number of seconds > 0, got 0"),
        ({"lease": -1}, "lease must be a finite number of seconds > 0, got -1"),
        ({"lease": 10**400}, "lease must be a finite number of seconds > 0"),
    ],
)
async def test_recover_names_a_wrong_option_as_a_worker_does(
    store: SQLiteSagaStore, option: dict[str, Any], named: str
) -> None:
    """A value from a config file (a str) failed deep in a comparison ("'<' not
    supported between instances of 'str' and 'int'"); RecoveryWorker names it."""
    with pytest.raises(ValueError, match=re.escape(named)):
        await recover(store, [shop(store, Script())], **option)
    assert await store.list_sagas() == []  # refused before claiming anything


@pytest.mark.parametrize("lease_seconds", [0, -1, float("nan"), 10**400],
                         ids=["zero", "negative", "nan", "beyond-a-float"])
async def test_resume_refuses_a_lease_that_has_run_out_when_it_is_taken(
    store: SQLiteSagaStore, lease_seconds: float
) -> None:
    """``lease_seconds=0`` (or less) leased the saga already expired and never
    renewed it (no heartbeat for a period <= 0): any worker could claim it,
    and drive it, while this resume ran its steps. Refused, as a worker's
    ``lease``, ``retry_unwinding``'s and a ``SubSaga``'s are."""
    script = Script()
    with pytest.raises(ValueError, match=r"lease_seconds must be a finite number of seconds > 0"):
        await shop(store, script).resume("s1", lease_seconds=lease_seconds)
    assert script.calls == []


@pytest.mark.parametrize("progress", [3, "print", True])
async def test_recover_refuses_a_progress_that_cannot_be_called_before_claiming(
    db: Path, store: SQLiteSagaStore, progress: Any
) -> None:
    """``progress=3`` was taken, and failed as the first saga ended ("'int'
    object is not callable" raised out of the pass, its report lost, every
    saga of it resumed meanwhile): named before anything is claimed."""
    await crashed(db, "s1", act_B="crash")  # left RUNNING
    with pytest.raises(TypeError, match=r"progress must be a function \(saga_id, outcome\)"):
        await recover(store, [shop(store, Script())], older_than=0, progress=progress)
    (summary,) = await store.list_sagas()
    assert (summary.status, summary.lease_owner) == (SagaStatus.RUNNING, None)  # not claimed


async def test_S13_a_progress_that_raises_loses_no_report(
    db: Path, store: SQLiteSagaStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``progress`` callback that raised (a closed socket it reports to, a
    bug) was raised out of the pass once its sagas had run: the
    ``RecoveryReport`` — what a cron job reads — was lost, and the other
    sagas' progress was not told. It is logged and ignored, as a listener's
    hook is: the pass reports every saga."""
    for saga_id in ("s1", "s2"):
        await crashed(db, saga_id, act_B="crash")
    told: list[tuple[str, str]] = []

    def progress(saga_id: str, outcome: str) -> None:
        told.append((saga_id, outcome))
        raise ConnectionResetError("the dashboard went away")

    with caplog.at_level(logging.ERROR, logger="fallback_saga"):
        report = await recover(store, [shop(store, Script())], older_than=0, progress=progress)
    assert sorted(report.resumed) == ["s1", "s2"]
    assert sorted(told) == [("s1", "completed"), ("s2", "completed")]
    logged = [r for r in caplog.records if "progress" in r.getMessage()]
    assert len(logged) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], ConnectionResetError) for r in logged)


async def test_resume_of_an_unknown_id_is_saga_not_found(store: SQLiteSagaStore) -> None:
    script = Script()
    with pytest.raises(SagaNotFound, match="'nope'") as caught:
        await shop(store, script).resume("nope")
    assert caught.value.saga_id == "nope"
    assert script.calls == []


async def test_resume_of_a_completed_saga_returns_its_stored_outcome(
    store: SQLiteSagaStore,
) -> None:
    await shop(store, Script()).run(ShopCtx(order_id="o-7"), saga_id="s1")
    before = rows(await store.load("s1"))

    script = Script()
    result = await shop(store, script).resume("s1")

    assert result.saga_id == "s1"
    assert result.status is SagaStatus.COMPLETED
    assert result.context == ShopCtx(order_id="o-7", trail=["A", "B", "C"])
    assert [(r.step_name, r.response) for r in result.results] == [
        ("A", "A"), ("B", "B"), ("C", "C")
    ]
    assert script.calls == []
    assert rows(await store.load("s1")) == before


@pytest.mark.parametrize(
    ("plan", "status", "failed_step"),
    [
        ({"act_C": "fail"}, SagaStatus.COMPENSATED, "C"),
        ({"act_B": "fail", "act_B2": "fail"}, SagaStatus.COMPENSATED, "B2"),
        ({"act_C": "fail", "compensate_A": "fail"}, SagaStatus.FAILED, "C"),
    ],
    ids=["compensated", "fallback-failed-too", "failed"],
)
async def test_resume_of_an_unwound_saga_raises_its_stored_outcome(
    store: SQLiteSagaStore, plan: dict[str, str], status: SagaStatus, failed_step: str
) -> None:
    with pytest.raises(SagaFailed) as ran:
        await shop(store, Script(**plan)).run(ShopCtx(), saga_id="s1")
    assert ran.value.status is status
    before = rows(await store.load("s1"))

    script = Script()
    with pytest.raises(SagaFailed) as resumed:
        await shop(store, script).resume("s1")

    assert resumed.value.saga_id == "s1"
    assert resumed.value.status is status
    assert resumed.value.failed_step == failed_step
    assert isinstance(resumed.value.error, RecordedError)
    assert f"act {failed_step} failed" in str(resumed.value.error)
    assert script.calls == []
    assert rows(await store.load("s1")) == before


# --------------------------------------------------------------------------- concurrency


async def test_200_sagas_in_flight_on_one_sqlite_file_all_complete_fully_journaled(
    store: SQLiteSagaStore,
) -> None:
    in_flight = 200
    inside_a = 0
    all_inside, release = asyncio.Event(), asyncio.Event()

    async def barrier() -> None:
        nonlocal inside_a
        inside_a += 1
        if inside_a == in_flight:
            all_inside.set()
        await release.wait()

    script = Script(act_A=barrier, act_B=[*(["fail"] * 20)])
    saga = shop(store, script)
    ids = [f"saga-{n:03d}" for n in range(in_flight)]
    before = store.stats
    runs = asyncio.gather(*(saga.run(ShopCtx(order_id=i), saga_id=i) for i in ids))
    async with asyncio.timeout(30):
        await all_inside.wait()  # every saga is in flight, inside its first step
        release.set()
        results = await runs

    assert [r.status for r in results] == [SagaStatus.COMPLETED] * in_flight
    forward = [("A", "primary"), ("B", "primary"), ("C", "primary")]
    through_fallback = 0
    for saga_id in ids:
        record = await store.load(saga_id)
        assert record.status is SagaStatus.COMPLETED
        history = rows(record)
        if ("B", "primary", "act", "failed") in history:
            through_fallback += 1
            assert history == [
                ("A", "primary", "act", "started"), ("A", "primary", "act", "completed"),
                ("B", "primary", "act", "started"), ("B", "primary", "act", "failed"),
                ("B2", "fallback", "act", "started"), ("B2", "fallback", "act", "completed"),
                ("C", "primary", "act", "started"), ("C", "primary", "act", "completed"),
            ]
            assert record.context["trail"] == ["A", "B2", "C"]
        else:
            assert history == [
                (step, branch, "act", status)
                for step, branch in forward
                for status in ("started", "completed")
            ]
            assert record.context["trail"] == ["A", "B", "C"]
    assert through_fallback == 20
    listed = await store.list_sagas(status=SagaStatus.COMPLETED, limit=1000)
    assert sorted(s.saga_id for s in listed) == ids
    after = store.stats
    assert after.writes - before.writes >= 4 * in_flight
    assert after.commits - before.commits < after.writes - before.writes  # group commit
    assert after.largest_group > 1


def test_two_recovery_processes_racing_over_100_interrupted_sagas_resume_each_once(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "sagas.db", tmp_path / "ledger.jsonl"
    expected, crashed_calls = asyncio.run(seed_interrupted_sagas(db, count=100))
    ledger.write_text("".join(json.dumps(line) + "\n" for line in crashed_calls))

    command = [sys.executable, str(APP), "recover", "--db", str(db), "--ledger", str(ledger),
               "--limit", "7", "--wait-for-go"]
    procs = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:  # both have opened the store ...
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.stderr
        for proc in procs:  # ... go, both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]

    # Each saga was recovered by exactly one process; together they cover all 100.
    for report in reports:
        assert report["skipped"] == []
        assert report["failed"] == []
    handled = [report["resumed"] + report["compensated"] for report in reports]
    assert set(handled[0]).isdisjoint(handled[1])
    assert sorted(handled[0] + handled[1]) == sorted(expected)
    assert sorted(reports[0]["compensated"] + reports[1]["compensated"]) == sorted(
        saga_id for saga_id, (status, _) in expected.items() if status == "compensated"
    )
    owner = {saga_id: report["pid"] for report in reports for saga_id in
             report["resumed"] + report["compensated"]}

    # The participant saw each outstanding call exactly once, from the process
    # that recovered the saga, and every effect applied exactly once in all.
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    resumed_calls: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in lines:
        if line["run"] == "resume":
            assert line["pid"] == owner[line["saga"]]
            resumed_calls[line["saga"]].append((line["action"], line["step"]))
    for saga_id, (_, outstanding) in expected.items():
        assert resumed_calls[saga_id] == outstanding, saga_id
    applied = Counter(line["key"] for line in lines if line["kind"] == "apply")
    assert max(applied.values()) == 1

    conn = sqlite3.connect(db)
    try:
        final = dict(conn.execute("SELECT saga_id, status FROM sagas").fetchall())
        fences = {row[0] for row in conn.execute("SELECT fence FROM sagas")}
        leased = conn.execute("SELECT COUNT(*) FROM sagas WHERE lease_owner IS NOT NULL")
        assert leased.fetchone() == (0,)
    finally:
        conn.close()
    assert final == {saga_id: status for saga_id, (status, _) in expected.items()}
    assert fences == {1}  # each saga was claimed exactly once


async def seed_interrupted_sagas(
    db: Path, count: int
) -> tuple[dict[str, tuple[str, list[tuple[str, str]]]], list[dict[str, Any]]]:
    """Journal ``count`` interrupted ``CrashSaga`` runs through the store API, as
    crashed processes would have left them.

    Returns ``saga_id -> (final status, the calls recovery must make)`` and the
    participant's ledger lines for the calls the crashed processes made.
    """

    def act(position: int, step: str, status: StepStatus, branch: str = "primary") -> Any:
        return JournalEntry(position, step, branch, "act", status, 1, None, 1.0)

    kinds: list[tuple[str, str, list[str], list[JournalEntry], list[tuple[str, str]], str]] = [
        # (variant, status, trail, journal, calls outstanding, final status)
        ("ok", "running", [], [act(0, "A", STARTED)],
         [("act", "A"), ("act", "B"), ("act", "C")], "completed"),
        ("ok", "running", ["A"],
         [act(0, "A", STARTED), act(0, "A", COMPLETED), act(1, "B", STARTED)],
         [("act", "B"), ("act", "C")], "completed"),
        ("fallback", "running", ["A"],
         [act(0, "A", STARTED), act(0, "A", COMPLETED), act(1, "B", STARTED),
          act(1, "B", FAILED), act(1, "B2", STARTED, "fallback")],
         [("act", "B2"), ("act", "C")], "completed"),
        ("unwind", "compensating", ["A", "B2"],
         [act(0, "A", STARTED), act(0, "A", COMPLETED), act(1, "B", STARTED),
          act(1, "B", FAILED), act(1, "B2", STARTED, "fallback"),
          act(1, "B2", COMPLETED, "fallback"), act(2, "C", STARTED), act(2, "C", FAILED),
          JournalEntry(1, "B2", "fallback", "compensate", STARTED, 1, None, 1.0)],
         [("compensate", "B2"), ("compensate", "A")], "compensated"),
    ]
    expected: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    lines: list[dict[str, Any]] = []
    async with SQLiteSagaStore(db) as store:
        for n in range(count):
            saga_id = f"race-{n:03d}"
            variant, status, trail, journal, outstanding, final = kinds[n % len(kinds)]
            await store.create(
                saga_id, "CrashSaga", CrashSaga.definition.fingerprint,
                {"order_id": saga_id, "variant": variant, "trail": trail}, journal,
                status=SagaStatus(status),
            )
            expected[saga_id] = (final, outstanding)
            for entry in journal:  # what the crashed process's steps did
                if entry.action == "act" and entry.status is not STARTED:
                    kind = "apply" if entry.status is COMPLETED else "fail"
                    lines.append({
                        "kind": kind, "action": "act", "step": entry.step,
                        "key": f"{saga_id}:{entry.step}", "saga": saga_id, "attempt": 1,
                        "pid": 0, "run": "crash",
                    })
    return expected, lines


class _Delegating:
    """A store wrapper that adds nothing but forwards through ``__getattr__``
    (the usual way to add metrics or tracing to a store)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_a_store_wrapper_delegating_through_getattr_is_recoverable_on_every_python(
    tmp_path: Path,
) -> None:
    """Python 3.12 changed ``isinstance`` against runtime-checkable protocols
    (``getattr_static``): such a wrapper was recovered on 3.11 and refused on
    3.12+. Capabilities are asked with ``getattr`` now, alike on every version."""
    from fallback_saga.store.base import is_live_journal, is_recoverable, is_work_notifier

    async with SQLiteSagaStore(tmp_path / "w.db") as inner:
        wrapper = _Delegating(inner)
        assert is_recoverable(wrapper)
        assert not is_live_journal(wrapper)
        assert not is_work_notifier(wrapper)
        assert is_live_journal(_Delegating(MemorySagaStore()))
        report = await recover(wrapper, [])  # type: ignore[arg-type]
        assert report.total == 0


@pytest.mark.parametrize(
    ("new_steps", "plan", "said"),
    [
        # A and the Fallback swapped places: position 0 now holds B's Fallback.
        ([Fallback(step=B, fallback=B2), A, C],
         {"act_B": "fail", "act_C": "fail", "compensate_B2": "crash"},
         "position 0 (primary) ran 'A', now 'B' ('A' is at position 1 (primary))"),
        # The Fallback dropped: position 1 now holds C, which never ran.
        ([A, C, D], {"act_B": "fail", "act_C": "fail", "compensate_B2": "crash"},
         "position 1 ran 'B2' as a fallback, which the saga no longer has"),
        # C moved before the Fallback while the saga ran forward: a later
        # unwind would call C's compensation for B's act.
        ([A, C, Fallback(step=B, fallback=B2)], {"act_C": "crash"},
         "position 1 (primary) ran 'B', now 'C' ('B' is at position 2 (primary))"),
    ],
    ids=["reordered-compensating", "fallback-removed-compensating", "moved-running"],
)
async def test_S10_allow_changed_definition_never_runs_another_step_for_a_journaled_one(
    db: Path, store: SQLiteSagaStore, new_steps: list[Any], plan: dict[str, Any], said: str
) -> None:
    """The override matches steps by position: a step the journal says ran is
    undone by its own compensation or not at all. When the code has that step
    at another place (or its place is gone), the override is refused too,
    naming the saga, the position and both names (and no context value)."""
    await crashed(db, "s1", ShopCtx(order_id="secret-42"), **plan)
    before = rows(await store.load("s1"))
    changed = changed_shop_saga(new_steps)
    script = Script()

    with pytest.raises(SagaDefinitionChanged) as caught:
        await shop(store, script, changed).resume("s1", allow_changed_definition=True)

    message = str(caught.value)
    assert "'s1'" in message
    assert said in message
    assert "allow_changed_definition cannot resume it" in message
    assert caught.value.overridable is False
    assert "secret-42" not in message
    assert script.calls == []
    assert rows(await store.load("s1")) == before


async def test_S10_a_step_renamed_in_place_is_resumed_with_the_override_as_the_message_offers(
    db: Path, store: SQLiteSagaStore
) -> None:
    """C, in flight at the crash, is renamed D in place (its old name is gone
    from the code): the refusal says the override continues it, and it does."""
    await crashed(db, "s1", act_C="crash")
    changed = changed_shop_saga([A, Fallback(step=B, fallback=B2), D])
    script = Script()

    with pytest.raises(SagaDefinitionChanged) as caught:
        await shop(store, script, changed).resume("s1")
    assert caught.value.overridable is True
    assert "position 2 (primary) ran 'C', now 'D'" in str(caught.value)
    way = "allow_changed_definition=True) (or recover --allow-changed-definition) continues it"
    assert way in str(caught.value)

    result = await shop(store, script, changed).resume("s1", allow_changed_definition=True)
    assert result.status is SagaStatus.COMPLETED
    assert script.steps() == [("act", "D")]


@dataclasses.dataclass(kw_only=True)
class ShopCtxWithPriority(ShopCtx):
    priority: int  # added without a default after sagas started


@dataclasses.dataclass
class ShopCtxRetyped(ShopCtx):
    order_id: int = 0  # type: ignore[assignment]  # was a str


@pytest.mark.parametrize(
    ("context_cls", "said"),
    [(ShopCtxWithPriority, "'priority': the field is missing"),
     (ShopCtxRetyped, "'order_id': expected int, got str")],
    ids=["field-added", "field-retyped"],
)
async def test_S14_a_context_class_changed_since_the_saga_started_is_refused_naming_saga_and_field(
    db: Path, store: SQLiteSagaStore, context_cls: type[ShopCtx], said: str
) -> None:
    """The code's context class no longer fits what the journal holds: resume
    refuses before any step, naming the saga, its saga class and the field,
    and saying what to do; never a context value."""
    await crashed(db, "s1", ShopCtx(order_id="secret-42"), act_C="crash")

    class ShopSaga(Saga[context_cls]):  # type: ignore[valid-type]
        steps: ClassVar[list[Any]] = [A, Fallback(step=B, fallback=B2), C]

    script = Script()
    with pytest.raises(ContextDecodeError) as caught:
        await shop(store, script, ShopSaga).resume("s1")
    message = str(caught.value)
    assert message.startswith("saga 's1' (ShopSaga): cannot restore context field"), message
    assert said in message
    assert context_cls.__name__ in message
    assert "secret-42" not in message
    assert script.calls == []
    assert (await store.load("s1")).status is SagaStatus.RUNNING


# --------------------------------------------------------------------------- S13: a pass cancelled


@pytest.mark.parametrize("compensate_A", ["ok", "fail", "store down"])
async def test_S13_a_cancelled_pass_tells_progress_how_each_saga_under_way_ended(
    db: Path, store: SQLiteSagaStore, compensate_A: str
) -> None:
    """The pass is cancelled (an operator's Ctrl-C) while it resumes a saga:
    the saga unwinds (S8), and ``progress`` is told how it ended as the
    journal holds it — compensated, or failed when a compensation gave up;
    interrupted when the store went down as it unwound (left for another
    pass) — before the pass raises ``CancelledError``. A saga still waiting
    for a slot, untouched, is told nothing."""
    from journal_faults import FaultySubmittingStore

    await crashed(db, "s1", act_C="crash")
    await crashed(db, "s2", act_C="crash")
    # Write 0: C's STARTED; write 1, the unwinding's first (C FAILED, B's STARTED).
    faulty = FaultySubmittingStore(store, at=1 if compensate_A == "store down" else None)
    script = Script(act_C=[asyncio.Event()],
                    compensate_A="fail" if compensate_A == "fail" else "ok")
    told: list[tuple[str, str]] = []
    task = asyncio.create_task(recover(
        faulty, [shop(faulty, script)], older_than=0, concurrency=1,
        progress=lambda saga_id, outcome: told.append((saga_id, outcome)),
    ))
    await script.entered["act C"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (under_way,) = {key.split(":")[0] for _, _, key in script.calls}  # the keys: s1:C, ...
    held = (await store.load(under_way)).status
    expected = {"ok": SagaStatus.COMPENSATED, "fail": SagaStatus.FAILED,
                "store down": SagaStatus.RUNNING}[compensate_A]
    assert held is expected
    assert told == [(under_way, "interrupted" if compensate_A == "store down" else held.value)]
