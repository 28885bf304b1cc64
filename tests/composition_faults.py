"""Composition under faults (S15 with S8/S10/S13): sagas built of plain steps,
Fallbacks, ``Parallel`` groups and ``SubSaga`` children (nested several levels
deep), whose every act and compensate reports to the participant ``Ledger``
of ``journal_faults``; and the invariants of the whole family — the parent and
each child — after a fault and recovery.

A shape is a list of items: ``StepSpec``, ``FallbackSpec``, ``GroupSpec``
(a ``Parallel`` group of steps, Fallbacks and children) and ``ChildSpec`` (a
``SubSaga`` running a saga of its own items). Members do not change the
context (a group's members would conflict on one field): what ran is in the
ledger and the journals.
"""

from __future__ import annotations

import asyncio
import types
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from journal_faults import (
    FAST_COMPENSATION_RETRY,
    FAST_JOURNAL_RETRY,
    Call,
    Ctx,
    FallbackSpec,
    Ledger,
    StepSpec,
)

from fallback_saga import (
    Fallback,
    Parallel,
    RetryPolicy,
    Saga,
    SagaListener,
    SagaStatus,
    StepStatus,
    SubSaga,
    current_step,
)
from fallback_saga.events import StepCall
from fallback_saga.store.base import SagaRecord

CHILD_LEASE = 2.0


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    members: tuple[Any, ...]


class ComposedStep:
    """A step reporting to the family's ledger (a class attribute: a child
    saga built by its parent makes its steps with no arguments)."""

    spec: StepSpec
    ledger: Ledger
    entered: set[tuple[str, str]]  # (saga id, step) of every act called
    yields = 0  # times the act and the compensate yield to the loop before their effect

    def __init__(self) -> None:
        self.retry = (
            RetryPolicy(attempts=2, delay=0.0, jitter=0.0) if self.spec.act == "once" else None
        )

    async def act(self, ctx: Ctx) -> str:
        info = current_step()
        assert info is not None
        self.entered.add((info.saga_id, info.step))  # called (its effect may not follow)
        for _ in range(self.yields):
            await asyncio.sleep(0)
        self.ledger.call("act", self.spec.act)
        return self.spec.name

    async def compensate(self, ctx: Ctx) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)
        self.ledger.call("compensate", self.spec.compensate)


class Balance(SagaListener):
    """Every run a listener hears begin ends (``saga_finished`` or
    ``saga_interrupted``), and every step call it hears begin finishes: what
    an ``OpenTelemetryListener`` needs to close every span it opens."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.calls: set[StepCall] = set()
        self.ended: list[tuple[str, str]] = []

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self.runs[saga_id] += 1

    def saga_finished(self, saga_id: str, saga_name: str, status: Any, error: Any) -> None:
        self.runs[saga_id] -= 1
        self.ended.append((saga_id, status.value))

    def saga_interrupted(self, saga_id: str, saga_name: str, status: Any, error: Any) -> None:
        self.runs[saga_id] -= 1

    def step_call_started(self, call: StepCall) -> None:
        self.calls.add(call)

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        self.calls.remove(call)

    def check(self) -> None:
        unbalanced = {saga_id: n for saga_id, n in self.runs.items() if n}
        assert not unbalanced, f"runs begun and never ended (or ended twice): {unbalanced}"
        assert not self.calls, f"step calls never finished: {self.calls}"


class Family:
    """The saga classes of one shape (the parent and every child, any depth),
    built over ``store`` with fast retries, reporting to ``ledger``."""

    def __init__(
        self, items: Sequence[Any], store: Any, ledger: Ledger,
        yields: dict[str, int] | None = None, listen: bool = False,
        listeners: Sequence[object] = (),
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.yields = yields or {}
        self.entered: set[tuple[str, str]] = set()
        self.balance = Balance()
        # ``listeners``: heard by the parent and every child (a SubSaga builds
        # its child with its parent's listeners).
        self.listeners = ((self.balance,) if listen else ()) + tuple(listeners)
        self.specs: dict[str, StepSpec] = {}
        self.sagas: list[Saga[Ctx]] = []
        self.parent = self._saga("Parent", items)

    def _step(self, spec: StepSpec) -> type:
        assert spec.name not in self.specs, f"step names must be unique: {spec.name}"
        self.specs[spec.name] = spec
        return type(spec.name, (ComposedStep,), {
            "spec": spec, "ledger": self.ledger, "yields": self.yields.get(spec.name, 0),
            "entered": self.entered,
        })

    def _item(self, item: Any) -> Any:
        if isinstance(item, StepSpec):
            return self._step(item)
        if isinstance(item, FallbackSpec):
            return Fallback(step=self._step(item.primary), fallback=self._step(item.fallback))
        if isinstance(item, ChildSpec):
            child = self._saga(f"Child{item.name}", item.items)
            # A short lease: a child's lease its parent could not release
            # (the store went down) holds up its recovery for that long.
            return SubSaga(child, context=lambda parent: Ctx(order_id=parent.order_id),
                           name=item.name, lease_seconds=CHILD_LEASE)
        assert isinstance(item, GroupSpec)
        return Parallel(*(self._item(member) for member in item.members))

    def _saga(self, name: str, items: Sequence[Any]) -> Saga[Ctx]:
        steps = [self._item(item) for item in items]
        saga_class: type[Saga[Ctx]] = types.new_class(
            name, (Saga[Ctx],), {}, lambda namespace: namespace.update(steps=steps)
        )
        saga = saga_class(
            store=self.store,
            journal_retry=FAST_JOURNAL_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            listeners=self.listeners,
        )
        self.sagas.append(saga)
        return saga


def step_names(items: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for item in items:
        if isinstance(item, StepSpec):
            names.append(item.name)
        elif isinstance(item, FallbackSpec):
            names += [item.primary.name, item.fallback.name]
        elif isinstance(item, ChildSpec):
            names += step_names(item.items)
        else:
            names += step_names(item.members)
    return names


def child_ids(parent_id: str, items: Sequence[Any]) -> dict[str, list[str]]:
    """Each saga id of the family -> the ids of its direct children."""
    family: dict[str, list[str]] = {parent_id: []}
    for item in items:
        inner = item.members if isinstance(item, GroupSpec) else (item,)
        for member in inner:
            if isinstance(member, ChildSpec):
                child = f"{parent_id}/{member.name}"
                family[parent_id].append(child)
                family.update(child_ids(child, member.items))
    return family


def check_saga(
    saga_id: str, calls: Sequence[Call], record: SagaRecord | None, specs: dict[str, StepSpec],
    *, exact: bool = False, child_failed: bool = False,
    entered: set[tuple[str, str]] | None = None,
) -> None:
    """One saga of the family, after recovery: every call had its durable
    STARTED; the saga is final; each applied act is kept (COMPLETED) or
    compensated exactly once (COMPENSATED; FAILED only over compensations
    designed to fail); no act ran after a compensation; and the compensations
    applied come in the reverse order of the completions the journal holds.
    ``exact`` (no store fault: every write's outcome was known): nothing is
    compensated whose act was never called (``entered``: the acts called,
    whose effect a cancellation may have cut off: those are compensated)."""
    if record is None:
        assert not calls, (saga_id, calls)
        return
    started = Counter(
        (e.step, e.action) for e in record.history if e.status is StepStatus.STARTED
    )
    made = Counter((call.step, call.action) for call in calls)
    unknown = {key: n - started[key] for key, n in made.items() if n > started[key]}
    assert not unknown, f"{saga_id}: calls without a durable STARTED record: {unknown}"
    assert record.status.is_final, (saga_id, record.status)
    first_undo = next((n for n, c in enumerate(calls) if c.action == "compensate"), len(calls))
    late = [c for c in calls[first_undo:] if c.action == "act"]
    assert not late, f"{saga_id}: forward acts after a compensation: {late}"
    acted = [c.step for c in calls if c.action == "act" and c.applied]
    undone = [c.step for c in calls if c.action == "compensate" and c.applied]
    twice = [step for step, n in Counter(undone).items() if n > 1]
    assert not twice, f"{saga_id}: compensated twice: {twice}"
    never = set(undone) - set(acted)
    if exact:
        called = {step for one, step in entered or () if one == saga_id}
        never |= {c.step for c in calls if c.action == "compensate"} - called
    assert not never, f"{saga_id}: compensated what never acted: {never}"
    if record.status is SagaStatus.COMPLETED:
        assert not undone, f"{saga_id}: COMPLETED, yet compensated {undone}"
    elif record.status is SagaStatus.COMPENSATED:
        assert set(undone) == set(acted), (saga_id, acted, undone)
    else:
        missing = set(acted) - set(undone)
        assert all(specs[name].compensate == "always" for name in missing), (saga_id, missing)
        gave_up = any(
            c.action == "compensate" and specs[c.step].compensate == "always" for c in calls
        )
        assert gave_up or child_failed, f"{saga_id}: FAILED, yet no compensation gave up"
    completed = [
        e.step for e in record.history
        if e.action == "act" and e.status is StepStatus.COMPLETED and e.step in undone
    ]
    assert _reverse_ok(undone, completed), (
        f"{saga_id}: compensations {undone} are not in the reverse of the completions {completed}"
    )


def _reverse_ok(undone: list[str], completed: list[str]) -> bool:
    """The compensations of steps with a COMPLETED record come in the reverse
    of their completions (crashed calls, with no such record, may be anywhere)."""
    ordered = [s for s in undone if s in completed]
    return ordered == [s for s in reversed(completed) if s in ordered]


def check_family(
    ledger: Ledger, family: dict[str, list[str]], records: dict[str, SagaRecord | None],
    specs: dict[str, StepSpec], *, exact: bool = False,
    entered: set[tuple[str, str]] | None = None,
) -> None:
    """Every saga of the family (``check_saga``), and each child as its
    parent ended: a COMPLETED parent keeps its children completed (or never
    started); a COMPENSATED parent leaves none of a child's effects."""
    for saga_id, children in family.items():
        child_failed = any(
            (record := records[child]) is not None and record.status is SagaStatus.FAILED
            for child in children
        )
        check_saga(
            saga_id, ledger.of(saga_id), records[saga_id], specs, exact=exact,
            child_failed=child_failed, entered=entered,
        )
    for parent_id, children in family.items():
        parent = records[parent_id]
        for child_id in children:
            child = records[child_id]
            if parent is None:
                assert child is None, f"{child_id} exists without its parent"
                continue
            if child is None:
                continue
            if parent.status is SagaStatus.COMPLETED:
                assert child.status is SagaStatus.COMPLETED, (child_id, child.status)
            elif parent.status is SagaStatus.COMPENSATED:
                assert child.status is not SagaStatus.COMPLETED, (child_id, child.status)
                # the child's effects are undone, or it never applied any
                assert child.status is SagaStatus.COMPENSATED or not any(
                    c.applied for c in ledger.of(child_id) if c.action == "act"
                ), (child_id, child.status)

