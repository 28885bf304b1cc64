"""A saga family killed at every journal write, for test_family_crash_matrix.py.

``FamilySaga``: ``A``, ``Parallel(P, Fallback(Q, Q2))``, ``SubSaga(ChildSaga)``
named ``Pay`` (``X``, ``Parallel(Y, Z)``), ``C``. ``Q`` always fails (its
fallback ``Q2`` runs). Variants (through the context, so that a resumed run
behaves alike):

* ``ok``     — the family COMPLETES;
* ``unwind`` — ``C`` fails: the child's steps, ``Q2``, ``P`` and ``A`` are
  compensated: COMPENSATED;
* ``child``  — the child's ``Z`` fails: the child unwinds itself (``Y``, ``X``),
  then the parent (``Q2``, ``P``, ``A``): COMPENSATED;
* ``cancel-after`` / ``cancel-before`` — as ``child``, but ``Y``'s call never
  answers (after / before its effect): Z's failure cancels it in flight, and
  it is compensated as an uncertain call;
* ``member`` — ``MemberFamilySaga``: ``A``, ``Parallel(SubSaga(MemberChildSaga)
  (``X``, ``W``), M)``, ``C``. M fails once W was called, W never answers:
  the group cancels the child in flight (W compensated as uncertain, then X),
  then A is compensated: COMPENSATED.

Run as a script (``python tests/family_crash_app.py COMMAND ...``):

* ``run DB WRITER LEDGER VARIANT SAGA-ID [LABEL]`` runs the family on
  ``SQLiteSagaStore(DB, writer=WRITER)``; every journal boundary (before and
  after each store write of parent *and* child — they share the store —,
  inside each act after its effect, inside each failing act, inside each
  compensation) is counted, and at the boundary named ``LABEL`` the process
  prints ``CRASH <label>`` and dies with ``os._exit(137)``. Without a label
  (the dry run) it prints ``{"outcome": ..., "boundaries": [...]}``;
* ``recover DB WRITER LEDGER SAGA-ID [LABEL [later]]`` is the fresh process:
  it reads the family's journal as the crash left it (and prints it on a line
  of its own at once), runs ``recover(store, [FamilySaga, ChildSaga],
  older_than=0)`` until a pass finds nothing, reads the journal again and
  prints all of it as JSON. With ``LABEL`` it dies at that boundary of its
  own run as ``run`` does (a recovery killed in turn); with ``later`` its
  store's clock is an hour ahead (the leases a killed recovery held ran out);
* ``serve`` forks one child per JSON job read from stdin (see ``crash_app``):
  each case costs its own work, not an interpreter start.

The participant ledger is ``crash_app.Ledger`` (one fsynced JSON line per
call; an effect is applied at most once per idempotency key).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import crash_app
from crash_app import CRASH_EXIT, Ledger, _Crash, _Crashing, boundary

import fallback_saga
from fallback_saga import (
    Fallback,
    Parallel,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
    recover,
)

APP = Path(__file__).resolve()
VARIANTS: tuple[str, ...] = (
    "ok", "unwind", "child", "cancel-after", "cancel-before", "member",
)
CHILD = "Pay"
EXPECTED_STATUS: dict[str, str] = {
    "ok": "completed", "unwind": "compensated", "child": "compensated",
    "cancel-after": "compensated", "cancel-before": "compensated", "member": "compensated",
}
# Effects the participant must have applied in the end, each exactly once: (saga, action, step)
# with saga "parent" or "child".
_FORWARD = {("parent", "act", s) for s in ("A", "P", "Q2")} | {
    ("child", "act", s) for s in ("X", "Y", "Z")
}
EXPECTED_EFFECTS: dict[str, set[tuple[str, str, str]]] = {
    "ok": _FORWARD | {("parent", "act", "C")},
    "unwind": _FORWARD | {(side, "compensate", step) for side, _, step in _FORWARD},
    "child": {
        ("parent", "act", "A"), ("parent", "act", "P"), ("parent", "act", "Q2"),
        ("child", "act", "X"), ("child", "act", "Y"),
        ("parent", "compensate", "A"), ("parent", "compensate", "P"),
        ("parent", "compensate", "Q2"),
        ("child", "compensate", "X"), ("child", "compensate", "Y"),
    },
}
# Y is cancelled in flight (Z fails while it waits): its effect is uncertain,
# so it is compensated all the same — whether it had applied it or not.
EXPECTED_EFFECTS["cancel-after"] = EXPECTED_EFFECTS["child"]
EXPECTED_EFFECTS["cancel-before"] = EXPECTED_EFFECTS["child"] - {("child", "act", "Y")}
# The child is a group member, cancelled in flight (inside W) when M fails.
EXPECTED_EFFECTS["member"] = {
    ("parent", "act", "A"), ("parent", "compensate", "A"),
    ("child", "act", "X"), ("child", "act", "W"),
    ("child", "compensate", "X"), ("child", "compensate", "W"),
}


@dataclasses.dataclass
class FamilyCtx(SagaContext):
    variant: str = "ok"
    a: list[str] = dataclasses.field(default_factory=list)
    p: list[str] = dataclasses.field(default_factory=list)
    q: list[str] = dataclasses.field(default_factory=list)
    c: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ChildCtx(SagaContext):
    variant: str = "ok"
    x: list[str] = dataclasses.field(default_factory=list)
    y: list[str] = dataclasses.field(default_factory=list)
    z: list[str] = dataclasses.field(default_factory=list)


class _Step:
    """A step that calls the participant; its acts and compensations answer
    without awaiting, so group members interleave alike in every run."""

    name: ClassVar[str] = "?"
    field: ClassVar[str] = "?"  # its own context field (group members write disjoint ones)
    fails_in: ClassVar[tuple[str, ...]] = ()  # the variants in which its act fails

    async def act(self, ctx: Any, /) -> str:
        getattr(ctx, self.field).append(self.name)
        if ctx.variant in self.fails_in:
            Ledger.call("act", self.name, fail=True)
            boundary(f"inside act {self.name}: about to fail")
            raise RuntimeError(f"{self.name} declined")
        Ledger.call("act", self.name)
        boundary(f"inside act {self.name}: effect applied, not returned")
        return self.name

    async def compensate(self, ctx: Any, /) -> None:
        getattr(ctx, self.field).append(f"-{self.name}")
        Ledger.call("compensate", self.name)
        boundary(f"inside compensate {self.name}: effect applied, not returned")


class StepA(_Step, SagaStepHandler[FamilyCtx, str]):
    name, field = "A", "a"


class StepP(_Step, SagaStepHandler[FamilyCtx, str]):
    name, field = "P", "p"


class StepQ(_Step, SagaStepHandler[FamilyCtx, str]):
    name, field, fails_in = "Q", "q", VARIANTS  # always: Q2 runs


class StepQ2(_Step, SagaStepHandler[FamilyCtx, str]):
    name, field = "Q2", "q"


class StepC(_Step, SagaStepHandler[FamilyCtx, str]):
    name, field, fails_in = "C", "c", ("unwind",)


class StepX(_Step, SagaStepHandler[ChildCtx, str]):
    name, field = "X", "x"


class StepY(_Step, SagaStepHandler[ChildCtx, str]):
    """In the ``cancel-*`` variants Y's call never answers (before or after
    its effect): Z's failure cancels it in flight."""

    name, field = "Y", "y"

    async def act(self, ctx: Any, /) -> str:
        if ctx.variant == "cancel-before":
            await asyncio.Event().wait()
        if ctx.variant == "cancel-after":
            Ledger.call("act", self.name)
            boundary(f"inside act {self.name}: effect applied, never answering")
            await asyncio.Event().wait()
        return await super().act(ctx)


class StepZ(_Step, SagaStepHandler[ChildCtx, str]):
    name, field, fails_in = "Z", "z", ("child", "cancel-after", "cancel-before")


_W_CALLED: dict[int, asyncio.Event] = {}  # per event loop


def _w_called() -> asyncio.Event:
    loop = id(asyncio.get_running_loop())
    if loop not in _W_CALLED:
        _W_CALLED[loop] = asyncio.Event()
    return _W_CALLED[loop]


class StepW(_Step, SagaStepHandler[ChildCtx, str]):
    """The ``member`` variant's child step: applies its effect, tells M, and
    never answers (it is in flight when its parent's group fails)."""

    name, field = "W", "z"

    async def act(self, ctx: Any, /) -> str:
        Ledger.call("act", self.name)
        boundary(f"inside act {self.name}: effect applied, never answering")
        _w_called().set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")


class StepM(_Step, SagaStepHandler[FamilyCtx, str]):
    """The child's sibling in the ``member`` variant: fails once W was called."""

    name, field, fails_in = "M", "p", ("member",)

    async def act(self, ctx: Any, /) -> str:
        await _w_called().wait()
        return await super().act(ctx)


class MemberChildSaga(Saga[ChildCtx]):
    steps: ClassVar[list[Any]] = [StepX, StepW]


class MemberFamilySaga(Saga[FamilyCtx]):
    """``A``, ``Parallel(SubSaga(MemberChildSaga), M)``, ``C``: M fails while the
    child is in flight, so the group cancels the child in the middle of W."""

    steps: ClassVar[list[Any]] = [
        StepA,
        Parallel(
            SubSaga(MemberChildSaga, context=lambda p: ChildCtx(variant=p.variant), name=CHILD,
                    lease_seconds=0.3),
            StepM,
        ),
        StepC,
    ]


def family_for(variant: str) -> type[Saga[FamilyCtx]]:
    return MemberFamilySaga if variant == "member" else FamilySaga


class ChildSaga(Saga[ChildCtx]):
    steps: ClassVar[list[Any]] = [StepX, Parallel(StepY, StepZ)]


def child_context(parent: FamilyCtx) -> ChildCtx:
    return ChildCtx(variant=parent.variant)


class FamilySaga(Saga[FamilyCtx]):
    steps: ClassVar[list[Any]] = [
        StepA,
        Parallel(StepP, Fallback(step=StepQ, fallback=StepQ2)),
        # A short child lease: a crash inside the child leaves it held, and
        # the resumed parent waits it out.
        SubSaga(ChildSaga, context=child_context, name=CHILD, lease_seconds=0.3),
        StepC,
    ]


SAGAS: list[Any] = [FamilySaga, ChildSaga, MemberFamilySaga, MemberChildSaga]


class CrashingStore(_Crashing, SQLiteSagaStore):
    """``SQLiteSagaStore`` with a crash boundary before and after each write."""


# --------------------------------------------------------------------------- commands


async def _journal(store: SQLiteSagaStore, saga_id: str) -> dict[str, Any] | None:
    """The family's records: ``{saga id: {"status", "rows": [[step, action, status]]}}``."""
    family: dict[str, Any] = {}
    for one in (saga_id, f"{saga_id}/{CHILD}"):
        with contextlib.suppress(fallback_saga.SagaNotFound):
            record = await store.load(one)
            family[one] = {
                "status": record.status.value,
                "rows": [[e.step, e.action, e.status.value] for e in record.history],
            }
    return family


async def _run(db: str, writer: str, saga_id: str, variant: str) -> dict[str, Any]:
    store = CrashingStore(db, writer=writer)
    try:
        family = family_for(variant)(store=store)
        result = await family.run(FamilyCtx(variant=variant), saga_id=saga_id)
        outcome = result.status.value
    except SagaFailed as failed:
        outcome = failed.status.value
    await store.close()
    return {"outcome": outcome, "boundaries": _Crash.seen}


async def _recover(db: str, writer: str, saga_id: str, label: str, later: bool) -> dict[str, Any]:
    # ``later``: this process comes after the leases of a killed recovery ran
    # out (its store's clock is an hour ahead), as a recovery would.
    clock = (lambda: time.time() + 3600.0) if later else time.time
    store = CrashingStore(db, writer=writer, clock=clock) if label else SQLiteSagaStore(
        db, writer=writer, clock=clock
    )
    _Crash.label = label or None
    await store.open()
    before = await _journal(store, saga_id)
    # Printed first: a recovery killed later has told what it started from.
    print(json.dumps({"pid": os.getpid(), "before": before}), flush=True)
    report: dict[str, list[Any]] = {"resumed": [], "compensated": [], "failed": [],
                                    "skipped": [], "deferred": []}
    passes = 0
    while passes < 10:
        passes += 1
        found = await recover(store, SAGAS, older_than=0)
        for key in ("resumed", "compensated", "failed", "deferred"):
            report[key] += list(getattr(found, key))
        report["skipped"] += [list(item) for item in found.skipped]
        if found.total == 0 and not found.deferred:
            break
    after = await _journal(store, saga_id)
    await store.close()
    return {"before": before, "after": after, "report": report, "passes": passes,
            "boundaries": _Crash.seen}


def main(argv: Sequence[str]) -> int:
    fallback_saga.set_testing(True)  # compensation retries compute their delays, never sleep
    command, db, writer, ledger, *rest = argv
    Ledger.path = Path(ledger)
    if command == "run":
        variant, saga_id, *label = rest
        Ledger.run = "crash"
        _Crash.label = label[0] if label else None
        output = asyncio.run(_run(db, writer, saga_id, variant))
    else:
        saga_id, *crash = rest
        label, later = [*crash, "", ""][:2]
        Ledger.run = f"resume-{os.getpid()}"
        output = asyncio.run(_recover(db, writer, saga_id, label, later == "later"))
    print(json.dumps(output), flush=True)
    return 0


def serve() -> int:
    """Run jobs from stdin in forked children, as ``crash_app.serve`` does."""
    return crash_app.serve(main)


__all__ = ["CRASH_EXIT", "main", "serve"]

if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        sys.exit(serve())
    sys.exit(main(sys.argv[1:]))
