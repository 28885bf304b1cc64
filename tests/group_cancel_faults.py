"""Cancellation inside composition (S8, S13, S15): seeded random families of
plain steps, Fallbacks (each primary behind a breaker of its own),
``Parallel`` groups and ``SubSaga`` children, in which the cancellation
comes from *inside*: a group member's or a child's step cancels the saga's
task as it runs (and lets the cancellation through, swallows it, or converts
it into an error of its own, as psycopg does); a compensation cancels it; the
caller cancels it after some loop rounds while members are in flight; a
participant swallows or converts a cancellation that reaches it. Sometimes a
store fault on top, then recovery — whose reads (a load, a claim: the
parent's or a child's) fail now and then too.

How far each member gets is scheduling (Python 3.12+ starts tasks eagerly;
each store waits differently), so nothing here is an exact sequence. The
invariants are those that hold under any schedule — at the level of the
participant ledger (``composition_faults.check_family``: every effect of a
saga that did not complete is compensated exactly once, nothing is
compensated whose act was never called, COMPLETED keeps every effect) and:

* S13: the caller's outcome is what the journal holds; a run whose caller
  asked it to stop (whoever asked) ends in ``CancelledError`` with its whole
  family final in the journal;
* S8: once the cancellation was asked for, no item of a saga the run drives
  in its own task starts after the item then in flight (only a group's
  members already started may go on);
* S3/S8/S9: a cancellation (let through or converted) is never a reason to
  fall back or to retry, and a breaker counts it as nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from composition_faults import ChildSpec, Family, GroupSpec, check_family, child_ids
from journal_faults import (
    FAULT_KINDS,
    Ctx,
    FallbackSpec,
    FaultKind,
    StepSpec,
    StoreDown,
    check_caller_matches_journal,
    journal_of,
    step_by_step,
    victim_task,
)

from fallback_saga import (
    CircuitBreaker,
    CircuitState,
    Fallback,
    RetryPolicy,
    SagaError,
    SagaInterrupted,
    SagaListener,
    current_step,
    recover,
)

# What a participant does about cancellation in its act:
#   "cancel*": its first call cancels the saga's task, then it yields (the
#   cancellation may meet it there) and: "cancel" lets it through,
#   "cancel_swallow" swallows it and returns, "cancel_convert" raises an
#   error of its own; "swallow"/"convert": the same with a cancellation that
#   comes from elsewhere.
ActMode = Literal["none", "cancel", "cancel_swallow", "cancel_convert", "swallow", "convert"]


class Converted(Exception):
    """What a participant that converts a cancellation raises (psycopg's
    ``QueryCanceled``, an HTTP client's error object)."""


@dataclass(frozen=True)
class Plan:
    """One case: the shape, what each participant does, when the caller
    cancels, and the store fault (write number and kind) if any."""

    seed: int
    items: tuple[Any, ...]
    acts: dict[str, ActMode]
    comp_cancel: frozenset[str]
    yields: dict[str, int]
    ticks: tuple[int, ...]  # the caller cancels after each count of loop rounds
    fault_at: int | None = None
    fault_kind: FaultKind = "outage"
    listen: bool = False
    transaction: bool = False  # driven step by step with saga.transaction()
    cancel_resume: int | None = None  # after a fault: a resume cancelled after these rounds
    # after a fault, once the store is back: reads that fail (a connection
    # dropped) while the saga and its children are resumed and recovered —
    # (the first, counted from the store's healing; how many in a row)
    read_fault: tuple[int, int] | None = None


@dataclass
class Runtime:
    """The participants' side: the victim task, and a trace of what happened
    (("act", saga id, step), ("cancel",) when a cancellation was asked for
    and taken, ("note", saga id, step, what) when an act ended)."""

    victim: asyncio.Task[Any] | None = None
    trace: list[tuple[str, ...]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any] | None] = field(default_factory=list)  # each event's
    fired: set[tuple[str, str]] = field(default_factory=set)
    recovering: bool = False
    alive: set[asyncio.Task[Any]] | None = None  # the tasks there when first asked to stop
    started: dict[str, asyncio.Task[Any] | None] = field(default_factory=dict)  # by saga id
    # every compensation that succeeded: (during recovery?, saga id, step)
    undone: list[tuple[bool, str, str]] = field(default_factory=list)

    def record(self, event: tuple[str, ...]) -> None:
        if not self.recovering:
            self.trace.append(event)
            self.tasks.append(asyncio.current_task())

    asker: tuple[str, str] | None = None  # the step that first asked (a store: the one writing)

    def cancel(self) -> None:
        assert self.victim is not None
        if self.victim.cancel() and not self.recovering:
            if self.alive is None:
                self.alive = set(asyncio.all_tasks())
                if asyncio.current_task() is not self.victim:
                    # asked from a member's task: its group is in flight
                    self.asker = _where_asked()
            self.record(("cancel",))


def _where_asked() -> tuple[str, str] | None:
    """The step (or child saga) whose task asks for the cancellation — a
    store's write included, outside any act: (saga id, step or child name)."""
    from fallback_saga.step import _CURSOR

    cursor = _CURSOR.get(None)
    if cursor is None:
        return None
    if cursor.step:
        return (cursor.saga_id, cursor.step)
    if "/" in cursor.saga_id:  # a child between its steps: its step in its parent
        parent, child = cursor.saga_id.rsplit("/", 1)
        return (parent, child)
    return None


class _Asker:
    """What a ``FaultyStore`` cancels at its faulty write: the victim, marked."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def cancel(self) -> bool:
        self.rt.cancel()
        return True


class CancellingStep:
    """A step reporting to the family's ledger and the runtime's trace."""

    spec: StepSpec
    ledger: Any
    entered: set[tuple[str, str]]
    yields = 0
    mode: ActMode = "none"
    comp_cancel = False
    early = False  # a direct group member: its effect lands before it yields
    rt: Runtime

    def __init__(self) -> None:
        self.retry = (
            RetryPolicy(attempts=2, delay=0.0, jitter=0.0) if self.spec.act == "once" else None
        )

    async def act(self, ctx: Ctx) -> str:
        info = current_step()
        assert info is not None
        key = (info.saga_id, info.step)
        rt = self.rt
        self.entered.add(key)
        rt.record(("act", *key))
        mode = self.mode
        if mode.startswith("cancel") and key not in rt.fired and not rt.recovering:
            rt.fired.add(key)
            rt.cancel()
        if self.early:
            self.ledger.call("act", self.spec.act)
        try:
            for _ in range(self.yields):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            if mode in ("cancel_convert", "convert"):
                self._note(key, "converted")
                raise Converted(f"{info.step}: cancelled mid-call") from None
            if mode not in ("cancel_swallow", "swallow"):
                self._note(key, "cancelled")
                raise
            self._note(key, "swallowed")
        if not self.early:
            self.ledger.call("act", self.spec.act)
        return self.spec.name

    def _note(self, key: tuple[str, str], what: str) -> None:
        self.rt.record(("note", *key, what))

    async def compensate(self, ctx: Ctx) -> None:
        info = current_step()
        assert info is not None
        key = (info.saga_id, info.step + ":compensate")
        if self.comp_cancel and key not in self.rt.fired and not self.rt.recovering:
            self.rt.fired.add(key)
            self.rt.cancel()
        for _ in range(self.yields):
            await asyncio.sleep(0)
        self.ledger.call("compensate", self.spec.compensate)
        self.rt.undone.append((self.rt.recovering, info.saga_id, info.step))


class CancelFamily(Family):
    """``Family`` whose steps are ``CancellingStep``s, each Fallback's
    primary behind a breaker of its own (one counted failure opens it)."""

    def __init__(self, plan: Plan, store: Any, ledger: Any, rt: Runtime) -> None:
        self.plan = plan
        self.rt = rt
        self.breakers: dict[str, CircuitBreaker] = {}
        self.members = member_steps(plan.items)
        super().__init__(plan.items, store, ledger, plan.yields, listen=plan.listen)

    def _saga(self, name: str, items: Sequence[Any]) -> Any:
        if self.listeners and len(self.listeners) == 1:
            # with listeners, a tracker too (without, the path without any is tested)
            self.listeners = (*self.listeners, TaskTracker(self.rt))
        return super()._saga(name, items)

    def _step(self, spec: StepSpec) -> type:
        assert spec.name not in self.specs, f"step names must be unique: {spec.name}"
        self.specs[spec.name] = spec
        return type(spec.name, (CancellingStep,), {
            "spec": spec, "ledger": self.ledger, "yields": self.yields.get(spec.name, 0),
            "entered": self.entered, "rt": self.rt,
            "mode": self.plan.acts.get(spec.name, "none"),
            "comp_cancel": spec.name in self.plan.comp_cancel,
            "early": spec.name in self.members,
        })

    def _item(self, item: Any) -> Any:
        if isinstance(item, FallbackSpec):
            breaker = CircuitBreaker(
                fail_max=1, reset_timeout=1e9, clock=lambda: 0.0, name=item.primary.name
            )
            self.breakers[item.primary.name] = breaker
            return Fallback(
                step=self._step(item.primary), fallback=self._step(item.fallback),
                circuit_breaker=breaker,
            )
        return super()._item(item)


def member_steps(items: Sequence[Any]) -> set[str]:
    """The steps that are a group's members (or a member Fallback's branches)
    themselves: a call of theirs cancelled in flight is compensated (docs,
    "Parallel groups"), so their effect may land before they yield."""
    found: set[str] = set()
    for item in items:
        if isinstance(item, GroupSpec):
            for member in item.members:
                if isinstance(member, StepSpec):
                    found.add(member.name)
                elif isinstance(member, FallbackSpec):
                    found |= {member.primary.name, member.fallback.name}
                else:
                    found |= member_steps(member.items)
        elif isinstance(item, ChildSpec):
            found |= member_steps(item.items)
    return found


# --------------------------------------------------------------------------- generation


FAULT_SHARE = 0.3  # of the cases on a store that can fail (a hunt may raise it)
READ_FAULT_SHARE = 0.5  # of the cases with a store fault: reads fail in the recovery too


def generate(seed: int, *, faults: bool) -> Plan:
    """A random family with its cancellation points; ``faults``: the store
    may fail at some write too (stores that can be wrapped)."""
    rng = random.Random(seed)
    names: list[str] = []
    group_names: list[str] = []  # steps inside a group (members, members' children)

    def step(in_group: bool) -> StepSpec:
        names.append(f"T{len(names)}")
        if in_group:
            group_names.append(names[-1])
        return StepSpec(
            names[-1],
            act=rng.choice(["ok", "ok", "ok", "ok", "once", "always"]),
            compensate=rng.choice(["ok", "ok", "ok", "ok", "once", "always"]),
        )

    def items(depth: int, in_group: bool, width: int) -> tuple[Any, ...]:
        out: list[Any] = []
        for _ in range(rng.randint(1, width)):
            out.append(member(depth, in_group, top=True))
        return tuple(out)

    def member(depth: int, in_group: bool, top: bool) -> Any:
        roll = rng.random()
        if roll < 0.2:
            return FallbackSpec(step(in_group), step(in_group))
        if roll < 0.4 and depth > 0:
            names.append(f"Kid{len(names)}")
            return ChildSpec(names[-1], items(depth - 1, in_group, 3))
        if roll < 0.7 and top:
            return GroupSpec(tuple(
                member(depth, True, top=False) for _ in range(rng.randint(2, 3))
            ))
        return step(in_group)

    shape = items(2, False, 3)
    steps = [n for n in names if n.startswith("T")]
    acts: dict[str, ActMode] = {}
    pool = group_names or steps
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        acts[rng.choice(pool)] = rng.choice(
            ["cancel", "cancel", "cancel_swallow", "cancel_convert"]
        )
    for name in steps:
        if name not in acts and rng.random() < 0.15:
            acts[name] = rng.choice(["swallow", "convert"])
    comp_cancel = frozenset(n for n in steps if rng.random() < 0.06)
    yields = {name: rng.randint(0, 3) for name in names}
    for name, mode in acts.items():
        if mode != "cancel":
            yields[name] = max(1, yields[name])  # the cancellation must be able to meet it
    ticks: tuple[int, ...] = ()
    if not acts or rng.random() < 0.35:
        ticks = tuple(rng.randint(0, 30) for _ in range(rng.choice([1, 1, 2])))
    fault_at = None
    kind: FaultKind = "outage"
    if faults and rng.random() < FAULT_SHARE:
        fault_at = rng.randrange(0, 25)
        kind = rng.choice(FAULT_KINDS)
    listen = rng.random() < 0.3
    transaction = rng.random() < 0.2
    cancel_resume = rng.randint(0, 20) if rng.random() < 0.4 else None
    # Drawn last: the plans of the seeds before read faults came stay the same.
    read_fault = None
    if fault_at is not None and rng.random() < READ_FAULT_SHARE:
        read_fault = (rng.randrange(0, 16), rng.choice([1, 1, 2, 4]))
    return Plan(
        seed, shape, acts, comp_cancel, yields, ticks, fault_at, kind, listen=listen,
        transaction=transaction, cancel_resume=cancel_resume, read_fault=read_fault,
    )


# --------------------------------------------------------------------------- checks


def _positions(items: Sequence[Any], saga_id: str, out: dict[str, dict[str, int]],
               inline: set[str], is_inline: bool) -> None:
    """For each saga id: the index of the item that holds each step or child
    name; ``inline``: the sagas the run drives in its own task (not under a
    group)."""
    where = out.setdefault(saga_id, {})
    if is_inline:
        inline.add(saga_id)
    for index, item in enumerate(items):
        inner = item.members if isinstance(item, GroupSpec) else (item,)
        for one in inner:
            if isinstance(one, StepSpec):
                where[one.name] = index
            elif isinstance(one, FallbackSpec):
                where[one.primary.name] = where[one.fallback.name] = index
            else:
                where[one.name] = index
                _positions(one.items, f"{saga_id}/{one.name}", out, inline,
                           is_inline and not isinstance(item, GroupSpec))


def check_nothing_starts_after_the_cancellation(rt: Runtime, items: Sequence[Any],
                                                saga_id: str) -> None:
    """S8: once asked to stop, the run calls no act in its own task (a child
    it runs there included), nor in a member's task it starts for a later
    item (the cancellation lands before a group's members are called), nor
    in a child such a member runs. Only what was in flight goes on until
    the group stops it: a member whose task was already there and what it
    runs, and the rest of the group then starting (on Python 3.12+ a member
    that asks for it runs inside its group's start, which goes on)."""
    if rt.alive is None:
        return
    positions: dict[str, dict[str, int]] = {}
    inline: set[str] = set()
    _positions(items, saga_id, positions, inline, True)

    def place(sid: str, name: str) -> tuple[str, int]:
        """The saga run inline, and its item, that holds ``sid``'s ``name``."""
        while sid not in inline:
            sid, name = sid.rsplit("/", 1)
        return sid, positions[sid][name]

    mark = rt.trace.index(("cancel",))
    in_flight: dict[str, int] = {}
    asked = [] if rt.asker is None else [("act", *rt.asker)]  # what asked was in flight
    for event in [*rt.trace[:mark], *asked]:
        if event[0] == "act":
            sid, name = event[1], event[2]
            while True:
                held, index = place(sid, name)
                in_flight[held] = max(in_flight.get(held, -1), index)
                if "/" not in held:
                    break
                sid, name = held.rsplit("/", 1)
    for event, task in zip(rt.trace[mark:], rt.tasks[mark:], strict=True):
        if event[0] != "act":
            continue
        where = f"{event[1]}:{event[2]}"
        if task is rt.victim:
            raise AssertionError(
                f"S8: {where} called by the run's own task after the cancellation was asked for"
            )
        held, index = place(event[1], event[2])
        if index == in_flight.get(held):
            continue  # the group in flight
        if event[1] in inline:
            if task not in rt.alive:
                raise AssertionError(
                    f"S8: {where}, a member of item {index} of {held}, called in a task started "
                    f"after the cancellation was asked for (item {in_flight.get(held)} in flight)"
                )
            continue
        member = event[1]  # the child that is a member of a group of a saga run inline
        while member.rsplit("/", 1)[0] not in inline:
            member = member.rsplit("/", 1)[0]
        started = rt.started.get(member)
        if started is not None and started not in rt.alive:
            raise AssertionError(
                f"S8: {where} called in {member}, a member of item {index} of {held} started "
                f"after the cancellation was asked for (item {in_flight.get(held)} in flight)"
            )


class TaskTracker(SagaListener):
    """Which task each saga (a child: its member's) began in."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        if not self.rt.recovering:
            self.rt.started.setdefault(saga_id, asyncio.current_task())


def check_no_fallback_or_retry_for_a_cancellation(
    trace: list[tuple[str, ...]], items: Sequence[Any]
) -> None:
    """S3/S8: an act the cancellation met (let through or converted) is not
    tried again, and its Fallback's other branch never runs for it."""
    fallbacks = {}
    for spec in _all(items):
        if isinstance(spec, FallbackSpec):
            fallbacks[spec.primary.name] = spec.fallback.name
    for n, event in enumerate(trace):
        if event[0] != "note" or event[3] not in ("cancelled", "converted"):
            continue
        sid, step = event[1], event[2]
        later = {(e[1], e[2]) for e in trace[n:] if e[0] == "act"}
        assert (sid, step) not in later, f"S8: {sid}:{step} retried after its cancellation"
        other = fallbacks.get(step)
        assert other is None or (sid, other) not in later, (
            f"S3: {sid}:{other} fell back for {step}'s cancellation"
        )


def _all(items: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.append(item)
        if isinstance(item, GroupSpec):
            out += _all(item.members)
        elif isinstance(item, ChildSpec):
            out += _all(item.items)
    return out


def check_compensated_once(rt: Runtime) -> None:
    """S8/S10: no step is compensated again once its compensation succeeded —
    within a run, or within the recovery after it (across the two, a crash
    may have kept the first one's success out of the journal)."""
    twice = [key for key, n in Counter(rt.undone).items() if n > 1]
    assert not twice, f"S10: compensated again after succeeding: {twice}"


def check_breakers(family: CancelFamily, ledger: Any) -> None:
    """S9: a breaker whose primary never failed on its own counts nothing
    (a cancellation, converted or not, is not a failure)."""
    failed = {c.step for c in ledger.calls if c.action == "act" and not c.applied}
    for primary, breaker in family.breakers.items():
        if primary in failed or family.specs[primary].act != "ok":
            continue
        assert breaker.state is CircuitState.CLOSED, (
            f"S9: breaker of {primary} {breaker.state.value} though it never failed"
        )


# --------------------------------------------------------------------------- one case


@dataclass
class Outcome:
    outcome: object
    cancelled: bool  # a cancellation was asked for (and taken)
    faulted: bool


async def run_plan(plan: Plan, inner: Any, *, wrap: str, saga_id: str,
                   before_recovery: Any = None) -> Outcome:
    """Runs ``plan`` on ``inner`` — bare (``wrap="none"``: the in-process
    path), or behind a ``FaultyStore`` (``"faulty"``) or a lease-keeping
    ``FaultySubmittingStore`` (``"submitting"``) — then, after a store fault,
    heals it and recovers; checks every invariant; raises AssertionError."""
    from journal_faults import FaultyStore, Ledger
    from reference_runner import LeaseKeepingStore

    store: Any
    if wrap == "none":
        assert plan.fault_at is None
        store = inner
    elif wrap == "faulty":
        store = FaultyStore(inner, at=plan.fault_at, kind=plan.fault_kind)
    else:
        store = LeaseKeepingStore(inner)
        store.at, store.kind = plan.fault_at, plan.fault_kind
    ledger = Ledger()
    rt = Runtime()
    family = CancelFamily(plan, store, ledger, rt)
    if wrap != "none":
        store.victim = _Asker(rt)  # the store's own cancellation is marked in the trace

    def mark(task: asyncio.Task[Any]) -> None:
        rt.victim = task

    task = victim_task(
        step_by_step(family.parent, saga_id) if plan.transaction
        else family.parent.run(Ctx(order_id="x"), saga_id=saga_id),
        mark,
    )

    async def caller() -> None:
        for wait in plan.ticks:
            for _ in range(wait):
                await asyncio.sleep(0)
            rt.cancel()

    cancelling = asyncio.create_task(caller())
    outcome: object
    try:
        outcome = await task
    except (Exception, asyncio.CancelledError) as error:
        outcome = error
    cancelling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelling
    faulted = (
        wrap != "none" and plan.fault_at is not None and store.writes > plan.fault_at
        and plan.fault_kind != "cancel"
    )
    asked = ("cancel",) in rt.trace
    ids = child_ids(saga_id, plan.items)
    before = await journal_of(inner, saga_id)
    where = f"seed {plan.seed}: {plan}\noutcome {outcome!r}\ntrace {rt.trace}"
    try:
        check_caller_matches_journal(outcome, before, cancel_with_store_up=asked and not faulted)
        if not faulted:
            if asked:
                assert isinstance(outcome, asyncio.CancelledError), (
                    f"S8: the caller asked to stop, yet got {outcome!r}"
                )
            for one in ids:
                record = await journal_of(inner, one)
                assert record is None or record.status.is_final, (
                    f"S13: {one} left {record.status.value}"
                )
            check_nothing_starts_after_the_cancellation(rt, plan.items, saga_id)
            check_no_fallback_or_retry_for_a_cancellation(rt.trace, plan.items)
            check_breakers(family, ledger)
        if faulted:
            rt.recovering = True
            store.heal()
            if before_recovery is not None:
                await before_recovery(store)
            if plan.read_fault is not None:
                first, count = plan.read_fault
                store.fail_reads(store.reads + first, count)
            if plan.cancel_resume is not None:
                await _cancelled_resume(family, saga_id, plan.cancel_resume)
            await _recover(family, store, inner, saga_id, wrap)
        records = {one: await journal_of(inner, one) for one in ids}
        check_compensated_once(rt)
        check_family(
            ledger, ids, records, family.specs, exact=not faulted, entered=family.entered,
        )
        family.balance.check()
    except AssertionError as error:
        raise AssertionError(f"{error}\n{where}") from error
    return Outcome(outcome, asked, faulted)


async def _cancelled_resume(family: CancelFamily, saga_id: str, rounds: int) -> None:
    """A resume whose caller cancels it after ``rounds`` loop rounds (in its
    claim, a repeated call, a group, its unwinding...): what it leaves, the
    recovery after it finishes (leases given back, the journal readable)."""
    resuming = asyncio.create_task(family.parent.resume(saga_id))
    for _ in range(rounds):
        await asyncio.sleep(0)
    resuming.cancel()
    with contextlib.suppress(SagaError, StoreDown, asyncio.CancelledError):
        await resuming  # StoreDown: a read failed (Plan.read_fault), nothing ran


async def _recover(family: CancelFamily, store: Any, inner: Any, saga_id: str, wrap: str) -> None:
    if wrap == "submitting":
        await store.expire_leases()
        for _ in range(8):
            try:
                report = await recover(store, family.sagas, older_than=0)
            except StoreDown:  # its listing or a claim met a failed read (Plan.read_fault)
                await store.expire_leases()
                continue
            # a saga whose load failed (Plan.read_fault) is skipped, for the next pass
            assert all("StoreDown" in why for _, why in report.skipped), report
            if report.total == 0 and not report.deferred:
                return
            await store.expire_leases()
        raise AssertionError("recovery never settled")
    for _ in range(8):
        record = await journal_of(inner, saga_id)
        if record is None or record.status.is_final:
            return
        try:
            await family.parent.resume(saga_id)
        except StoreDown:
            continue  # a read failed (Plan.read_fault) before any step: again
        except SagaInterrupted as stopped:
            cause: BaseException = stopped
            while isinstance(cause, SagaInterrupted):  # a grandchild's: the child's error
                cause = cause.error
            if isinstance(cause, StoreDown):
                continue  # a child's read failed: the parent stopped for recovery
        except SagaError:
            pass
        return  # the one resume a healthy store needs (check_family says if it ended)
    raise AssertionError("the resumes never settled")
