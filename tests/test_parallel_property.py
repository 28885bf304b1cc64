"""S15, by hypothesis: random saga shapes mixing plain steps, Fallbacks and
Parallel groups, with random failures and interleavings, on an in-process
store and on a write-ahead one.

Each step records every call in a participant ledger. The invariants:

* every act that returned is compensated exactly once when the saga failed,
  never when it completed; an act that raised is never compensated; an act
  cancelled in flight (a group member whose sibling failed) is compensated;
* unwinding is in a valid reverse order: every compensation of a later
  element of ``steps`` comes before any compensation of an earlier one;
* no act is called once the first compensation was;
* the journal matches what ran: a STARTED entry before every act call, a
  COMPLETED act entry for each act that returned, a COMPLETED compensate
  entry for each compensation that returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from helpers_saga import JsonStore, OrderCtx, declare
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fallback_saga import (
    Fallback,
    MemorySagaStore,
    Parallel,
    SagaFailed,
    SagaStatus,
    StepStatus,
)


class Boom(Exception):
    pass


@dataclasses.dataclass
class Behaviour:
    fails: bool
    pauses: int  # awaits before answering: varies how members interleave


class Ledger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (kind, step, outcome)


class Step:
    def __init__(self, name: str, unit: int, behaviour: Behaviour, ledger: Ledger) -> None:
        self.name = name
        self.unit = unit
        self.behaviour = behaviour
        self.ledger = ledger

    async def act(self, ctx: OrderCtx) -> str:
        self.ledger.calls.append(("act", self.name, "called"))
        try:
            for _ in range(self.behaviour.pauses):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.ledger.calls.append(("act", self.name, "cancelled"))
            raise
        self.write(ctx)  # before a failure too: a failing act may leave writes behind
        if self.behaviour.fails:
            self.ledger.calls.append(("act", self.name, "raised"))
            raise Boom(self.name)
        self.ledger.calls.append(("act", self.name, "returned"))
        return self.name

    def write(self, ctx: Any) -> None:
        """What the act writes into the context: nothing here."""

    async def compensate(self, ctx: OrderCtx) -> None:
        self.ledger.calls.append(("compensate", self.name, "returned"))


behaviours = st.builds(Behaviour, fails=st.booleans() | st.just(False), pauses=st.integers(0, 3))
member_kinds = st.sampled_from(["step", "fallback"])
elements = st.one_of(
    st.tuples(st.just("step")),
    st.tuples(st.just("fallback")),
    st.tuples(st.just("parallel"), st.lists(member_kinds, min_size=1, max_size=3)),
)


@st.composite
def sagas(draw: st.DrawFn) -> tuple[list[Any], dict[str, Step]]:
    shape = draw(st.lists(elements, min_size=1, max_size=4))
    ledger = Ledger()
    steps: dict[str, Step] = {}

    def new(unit: int) -> Step:
        step = Step(f"s{len(steps)}", unit, draw(behaviours), ledger)
        steps[step.name] = step
        return step

    def member(kind: str, unit: int) -> Any:
        if kind == "fallback":
            return Fallback(step=new(unit), fallback=new(unit))
        return new(unit)

    declared: list[Any] = []
    for unit, element in enumerate(shape):
        if element[0] == "parallel":
            declared.append(Parallel(*(member(kind, unit) for kind in element[1])))
        else:
            declared.append(member(element[0], unit))
    return declared, steps


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sagas(), st.sampled_from(["memory", "write-ahead"]))
def test_S15_random_shapes_keep_every_invariant(
    drawn: tuple[list[Any], dict[str, Step]], store_kind: str
) -> None:
    declared, steps = drawn
    ledger = next(iter(steps.values())).ledger
    store: Any = MemorySagaStore() if store_kind == "memory" else JsonStore()
    saga = declare(*declared)(store=store)

    async def run() -> SagaStatus:
        try:
            return (await saga.run(OrderCtx(), saga_id="s")).status
        except SagaFailed as failed:
            return failed.status

    status = asyncio.run(run())
    calls = ledger.calls
    returned = [name for kind, name, outcome in calls if kind == "act" and outcome == "returned"]
    raised = {name for kind, name, outcome in calls if kind == "act" and outcome == "raised"}
    cancelled = {name for kind, name, outcome in calls if kind == "act" and outcome == "cancelled"}
    undone = [name for kind, name, _ in calls if kind == "compensate"]

    if status is SagaStatus.COMPLETED:
        assert undone == []
        assert raised - _fallen_back(declared, raised) == set()
    else:
        assert status is SagaStatus.COMPENSATED
        # Exactly once each: what returned, and what was cancelled in flight.
        assert sorted(undone) == sorted([*returned, *cancelled])
        assert not raised & set(undone)
        # Valid reverse order: never an earlier element's compensation before a later one's.
        units = [steps[name].unit for name in undone]
        assert units == sorted(units, reverse=True)
        # No act after the first compensation.
        first = next(i for i, (kind, _, _) in enumerate(calls) if kind == "compensate") if (
            undone
        ) else len(calls)
        assert all(kind != "act" or outcome != "called" for kind, _, outcome in calls[first:])

    record = asyncio.run(store.load("s"))
    history = record.history
    started = [e.step for e in history if e.action == "act" and e.status is StepStatus.STARTED]
    called = [name for kind, name, outcome in calls if kind == "act" and outcome == "called"]
    # Every call had its STARTED first; a STARTED whose act was never called
    # (cancelled while its write-ahead waited) is closed as such, not left open.
    assert all(started.count(name) >= called.count(name) for name in set(called))
    ends: dict[tuple[str, int], list[StepStatus]] = {}
    for e in history:
        if e.action == "act":
            ends.setdefault((e.step, e.attempt), []).append(e.status)
    for (name, attempt), statuses in ends.items():
        assert statuses[0] is StepStatus.STARTED, (name, attempt, statuses)
        assert len(statuses) == 2, (name, attempt, statuses)
        if name not in called:
            assert statuses[1] is StepStatus.FAILED
    act_completed = [
        e.step for e in history if e.action == "act" and e.status is StepStatus.COMPLETED
    ]
    assert sorted(act_completed) == sorted(returned)
    comp_completed = [
        e.step for e in history if e.action == "compensate" and e.status is StepStatus.COMPLETED
    ]
    assert sorted(comp_completed) == sorted(undone)
    assert record.status is status


def _fallen_back(declared: list[Any], raised: set[str]) -> set[str]:
    """Primaries that raised and whose fallback took over (not a saga failure)."""
    out: set[str] = set()
    for item in declared:
        members = item.members if isinstance(item, Parallel) else (item,)
        for member in members:
            if isinstance(member, Fallback) and member.step.name in raised:
                out.add(member.step.name)
    return out


# --------------------------------------------------------------------------- flat contexts

# A flat context (immutable values only: the group's working copies share the
# state the group began with) with one field per step; each step writes its
# own — and a failing act writes it before it raises.
FlatCtx = dataclasses.make_dataclass(
    "FlatCtx",
    [("order_id", str, dataclasses.field(default="o-1"))]
    + [(f"w{i}", "str | None", dataclasses.field(default=None)) for i in range(24)],
)


class WritingStep(Step):
    def write(self, ctx: Any) -> None:
        # Each step writes a field of its own (members must write disjoint fields).
        setattr(ctx, f"w{self.name[1:]}", self.name)

    async def compensate(self, ctx: Any) -> None:
        setattr(ctx, f"w{self.name[1:]}", None)
        self.ledger.calls.append(("compensate", self.name, "returned"))


@st.composite
def writing_sagas(draw: st.DrawFn) -> tuple[list[Any], dict[str, Step]]:
    declared, steps = draw(sagas())
    # The same shapes, with steps that write their field (same names, behaviours).
    writers = {name: WritingStep(name, s.unit, s.behaviour, s.ledger) for name, s in steps.items()}

    def swap(member: Any) -> Any:
        if isinstance(member, Fallback):
            return Fallback(step=writers[member.step.name], fallback=writers[member.fallback.name])
        return writers[member.name]

    rebuilt = [
        Parallel(*(swap(m) for m in item.members)) if isinstance(item, Parallel) else swap(item)
        for item in declared
    ]
    return rebuilt, dict(writers)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writing_sagas(), st.sampled_from(["memory", "write-ahead"]))
def test_S15_S2_random_shapes_on_a_flat_context_merge_exactly_what_returned(
    drawn: tuple[list[Any], dict[str, Step]], store_kind: str
) -> None:
    declared, steps = drawn
    ledger = next(iter(steps.values())).ledger
    store: Any = MemorySagaStore() if store_kind == "memory" else JsonStore()
    saga = declare(*declared, context=FlatCtx)(store=store)
    ctx = FlatCtx()

    async def run() -> SagaStatus:
        try:
            return (await saga.run(ctx, saga_id="s")).status
        except SagaFailed as failed:
            return failed.status

    status = asyncio.run(run())
    calls = ledger.calls
    returned = {name for kind, name, outcome in calls if kind == "act" and outcome == "returned"}
    written = {f"w{name[1:]}": getattr(ctx, f"w{name[1:]}") for name in steps}
    if status is SagaStatus.COMPLETED:
        # Exactly the acts that returned left their write; a failed try's is gone (S2).
        assert written == {f"w{n[1:]}": (n if n in returned else None) for n in steps}
    else:
        assert status is SagaStatus.COMPENSATED
        assert set(written.values()) == {None}
    assert ctx.order_id == "o-1"
    assert set(vars(ctx)) == {"order_id", *(f"w{i}" for i in range(24))}
    record = asyncio.run(store.load("s"))
    assert record.status is status
    assert {k: v for k, v in record.context.items() if k in written} == written
