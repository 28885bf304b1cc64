"""Runs a ``reference_model.Case`` on the real library and checks it against
the model: the participant calls (in lockstep), the final context, the status,
the outcome's type, the failed step, the compensation errors, the results,
each child's status and each breaker's state."""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from journal_faults import FAST_JOURNAL_RETRY, FaultyStore, FaultySubmittingStore, victim_task
from reference_model import (
    ERRORS,
    BreakerModel,
    Call,
    Case,
    ChildPlan,
    FallbackPlan,
    GroupPlan,
    Mismatch,
    Model,
    Script,
    StepPlan,
    child_names,
    merged_value,
    response,
    step_plans,
)

from fallback_saga import (
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    MemorySagaStore,
    Parallel,
    RecordedError,
    RetryPolicy,
    Saga,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    SagaResult,
    SQLiteSagaStore,
    SubSaga,
    current_step,
)


class Runtime:
    """The participant side of one case: the script, the trace, the victim
    task a cancelling call cancels, and the store the crash takes down."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.script = Script(case.items)
        self.trace: list[Call] = []
        self.victim: asyncio.Task[Any] | None = None
        self.store: Any = None
        self.crash_after: int | None = None
        self.crash_again: int | None = None
        self.crashes: list[int] = []
        self.resuming: Call | None = None  # the crashed call, while the resume repeats it
        self.resumes = 0
        self.cancel_after: int | None = None  # by the calls outside groups (outside_index)
        self.cancelled_in_write = False
        self.cancelled_at: int | None = None  # the index in ``trace`` of the act that cancelled
        self.crashed_outside: list[int] = []  # each crash's call, by outside_index
        self.cancelled = False  # a call cancelled the caller (no crash after that)
        self.members = {
            plan.name
            for item in _walk(case.items) if isinstance(item, GroupPlan)
            for plan in step_plans(item.members)
        }

    def mark_victim(self, task: asyncio.Task[Any]) -> None:
        self.victim = task

    async def cancel_victim(self, turns: int) -> None:
        """Cancel the task driving the case, then give the loop ``turns``
        turns (for the cancellation to reach the run: a member's sibling, a
        child's caller) before the participant goes on."""
        assert self.victim is not None
        self.cancelled = True
        self.victim.cancel()
        for _ in range(turns):
            await asyncio.sleep(0)

    def outside_index(self) -> int:
        """The last call's index among the calls outside ``Parallel`` groups,
        by which a crash or a cancellation is placed: every store makes
        those calls in the same order, whereas how far a group's members get
        before one fails is scheduling (the contract leaves it open, and on
        Python 3.12+, where tasks start eagerly, the in-process store's
        members get further). Placed by every call, the same fault landed on
        a different call outside the group on each store."""
        return sum(1 for call in self.trace if call[1] not in self.members) - 1

    def maybe_crash(self, name: str, cancelled: bool) -> None:
        """After a call at or past ``crash_after`` (not a group's
        member, whose siblings' writes race with it): the store dies, as a
        process would (its next journal write never lands)."""
        if self.crash_after is None or cancelled or self.cancelled or self.store.down:
            return
        if len(self.crashes) == 2 or (self.crashes and self.crash_again is None):
            return
        at = (
            self.crash_after if not self.crashes
            else self.crashed_outside[0] + 1 + (self.crash_again or 0)
        )
        if name in self.members or self.outside_index() < at:
            return
        self.crashes.append(len(self.trace) - 1)
        self.crashed_outside.append(self.outside_index())
        self.store.down = True


def _walk(items: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.append(item)
        if isinstance(item, ChildPlan):
            out += _walk(item.items)
        elif isinstance(item, FallbackPlan):
            out += _walk((item.primary, item.fallback))
    return out


def context_class(case: Case) -> type[SagaContext]:
    names = [plan.name for plan in step_plans(case.items)] + child_names(case.items)
    fields: list[Any] = [
        ("order_id", str),
        ("log", list[str], dataclasses.field(default_factory=list)),
    ]
    fields += [("f_" + name, int, dataclasses.field(default=0)) for name in names]
    global _made
    _made += 1
    name = f"RefCtx{_made}"
    made = dataclasses.make_dataclass(name, fields, bases=(SagaContext,))
    made.__module__ = __name__
    globals()[name] = made  # found again by its name on resume (a child's response)
    return made


_made = 0


def step_class(rt: Runtime, plan: StepPlan, member: bool) -> type:
    name = plan.name

    async def act(self: Any, ctx: Any) -> str:
        info = current_step()
        call = (info.saga_id, name, "act")
        n = rt.script.count(call)
        rt.trace.append(call)
        setattr(ctx, "f_" + name, n)
        if not member:
            ctx.log.append(name)
        if plan.cancel and n == 1:
            await rt.cancel_victim(turns=2)
        if rt.resuming == call:
            rt.resuming = None
            if rt.case.cancel_resume:
                await rt.cancel_victim(turns=2)
        rt.maybe_crash(name, plan.cancel and n == 1)
        if rt.script.act_fails(name, n):
            raise ERRORS[plan.exc](f"{name} act #{n}")
        if (
            rt.cancel_after is not None and name not in rt.members and not rt.cancelled
            and rt.outside_index() == rt.cancel_after
        ):
            # the caller is cancelled as this act returns: the cancellation
            # lands in the journal write that follows (a durable store)
            rt.cancelled_in_write = True
            rt.cancelled_at = len(rt.trace) - 1
            await rt.cancel_victim(turns=0)
        return response(name, n)

    async def compensate(self: Any, ctx: Any) -> None:
        info = current_step()
        call = (info.saga_id, name, "compensate")
        n = rt.script.count(call)
        rt.trace.append(call)
        if plan.comp_cancel and n == 1:
            # Half the cases go on without waiting: on Python 3.12+ an
            # unwinding that never waits finishes inside the caller's step,
            # and the cancellation must land all the same (S8).
            await rt.cancel_victim(turns=len(rt.trace) % 2)
        rt.maybe_crash(name, False)
        if rt.script.comp_fails(name, n):
            raise ERRORS["A"](f"{name} compensate #{n}")

    namespace: dict[str, Any] = {"act": act, "compensate": compensate}
    if plan.retry > 1:
        namespace["retry"] = RetryPolicy(attempts=plan.retry, delay=0.0, jitter=0.0)
    return type(name, (), namespace)


class Built:
    """The saga classes of a case over one store."""

    def __init__(
        self, rt: Runtime, store: Any, breakers: list[CircuitBreaker],
        ctx_class: type[SagaContext] | None = None,
    ) -> None:
        self.rt = rt
        self.store = store
        self.breakers = breakers
        self.ctx_class = ctx_class or context_class(rt.case)
        self.retry = RetryPolicy(attempts=rt.case.comp_attempts, delay=0.0, jitter=0.0)
        self.parent_class = self._saga_class("RefSaga", rt.case.items)

    def saga(self) -> Saga[Any]:
        return self.parent_class(
            store=self.store, compensation_retry=self.retry, journal_retry=FAST_JOURNAL_RETRY,
        )

    def _item(self, item: Any, member: bool = False) -> Any:
        rt = self.rt
        if isinstance(item, StepPlan):
            return step_class(rt, item, member)
        if isinstance(item, FallbackPlan):
            return Fallback(
                step=self._branch(item.primary, member),
                fallback=self._branch(item.fallback, member),
                failure_exceptions=tuple(ERRORS[e] for e in item.failure_exceptions),
                circuit_breaker=None if item.breaker is None else self.breakers[item.breaker],
                retry=None if item.retry == 1 else RetryPolicy(
                    attempts=item.retry, delay=0.0, jitter=0.0
                ),
            )
        if isinstance(item, GroupPlan):
            return Parallel(*(self._item(m, member=True) for m in item.members))
        assert isinstance(item, ChildPlan)
        return self._child(item)

    def _branch(self, plan: StepPlan | ChildPlan, member: bool) -> Any:
        if isinstance(plan, ChildPlan):
            return self._child(plan)
        return step_class(self.rt, plan, member)

    def _child(self, item: ChildPlan) -> Any:
        child_class = self._saga_class(f"Child{item.name}", item.items)
        child = child_class(
            store=self.store, compensation_retry=self.retry, journal_retry=FAST_JOURNAL_RETRY,
        )
        ctx_class = self.ctx_class
        field = "f_" + item.name

        def merge(parent: Any, kid: Any) -> None:
            setattr(parent, field, merged_value(as_dict(kid)))

        return SubSaga(
            child, context=lambda parent: ctx_class(order_id=parent.order_id), merge=merge,
            name=item.name, lease_seconds=0.05,
        )

    def _saga_class(self, name: str, items: tuple[Any, ...]) -> type[Saga[Any]]:
        steps = [self._item(item) for item in items]
        return types.new_class(
            name, (Saga[self.ctx_class],), {},  # type: ignore[name-defined]
            lambda namespace: namespace.update(steps=steps),
        )


def as_dict(ctx: Any) -> dict[str, Any]:
    return {f.name: copy_value(getattr(ctx, f.name)) for f in dataclasses.fields(ctx)}


def copy_value(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


async def step_by_step(saga: Saga[Any], ctx: Any, saga_id: str) -> object:
    async with saga.transaction(ctx, saga_id=saga_id) as transaction:
        async for _ in transaction:
            pass
    return transaction.result


def breaker_state(model: BreakerModel, now: float) -> str:
    if model.state == "open" and now - model.opened_at >= model.plan.reset_timeout:
        return "half_open"
    return model.state


async def run_case(case: Case, durable: bool) -> int:
    """Runs every saga of ``case``; raises ``Mismatch`` (an AssertionError) on
    the first disagreement; returns the number of participant calls checked."""
    store_clock = [1_000_000.0]
    inner: Any = (
        SQLiteSagaStore(":memory:", clock=lambda: store_clock[0]) if durable
        else MemorySagaStore()
    )
    try:
        return await _run_case(case, durable, inner, store_clock)
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            await close()


@dataclass
class StoreKind:
    """How the differential oracle (``test_store_differential.py``) gets a
    store of one kind: ``open()`` a fresh one; ``reopen(old)`` closes ``old``
    and opens a new store object on the same file or database, as the
    process that resumes after a crash would (None: the store's journal dies
    with its object — the memory store); ``clock`` is the store's injected
    Unix clock, if it takes one. ``wrap=False``: the saga is given the store
    itself (no fault can be injected: the memory store's in-process path)."""

    name: str
    open: Callable[[], Awaitable[Any]]
    reopen: Callable[[Any], Awaitable[Any]] | None = None
    clock: list[float] | None = None
    durable: bool = True
    wrap: bool = True


@dataclass
class RunSeen:
    """What one run of a case (with its resumes) left, as the oracle compares
    it across stores: the participant calls, the caller's outcome, and each
    journaled saga (the run's and its children's) as its store gives it back."""

    trace: list[Call]
    outcome: tuple[Any, ...]
    journals: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    members: frozenset[str] = frozenset()  # the steps of Parallel groups
    children: frozenset[str] = frozenset()
    replayed: tuple[Any, ...] = ()  # the outcome of resuming it once it had finished


def outcome_summary(outcome: object, children: list[str]) -> tuple[Any, ...]:
    if isinstance(outcome, SagaResult):
        return (
            "result", outcome.status.value,
            [(r.step_name, "<child>" if r.step_name in children else repr(r.response))
             for r in outcome.results],
            as_dict(outcome.context),
        )
    if isinstance(outcome, SagaFailed):
        return (
            "failed", outcome.status.value, outcome.failed_step,
            type(outcome.error).__name__, str(outcome.error),
            sorted((k, type(v).__name__, str(v)) for k, v in outcome.compensation_errors.items()),
            sorted((k, type(v).__name__, str(v)) for k, v in outcome.branch_errors.items()),
        )
    if isinstance(outcome, asyncio.CancelledError):
        return ("cancelled",)
    return ("other", type(outcome).__name__, str(outcome))


async def journal_summary(inner: Any, saga_id: str) -> tuple[Any, ...]:
    try:
        record = await inner.load(saga_id)
    except SagaNotFound:
        return ("absent",)
    return (
        record.saga_name, record.fingerprint, record.status.value, dict(record.context),
        [(e.position, e.step, e.branch, e.action, e.status.value, e.attempt, e.error, e.result)
         for e in record.history],
    )


class LeaseKeepingStore(FaultySubmittingStore):
    """A faulty durable store that remembers the leases it granted, so that
    the leases of a run the crash killed can be let go of before the resume
    (they would run out: a lease's end stands for its expiry on stores whose
    clock cannot be moved)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.leases: dict[str, Any] = {}

    async def claim_saga(self, saga_id: str, **kwargs: Any) -> Any:
        lease = await super().claim_saga(saga_id, **kwargs)
        self.leases[saga_id] = lease
        return lease

    async def renew(self, lease: Any, lease_seconds: float) -> Any:
        renewed = await super().renew(lease, lease_seconds)
        self.leases[renewed.saga_id] = renewed
        return renewed

    async def expire_leases(self) -> None:
        leases, self.leases = self.leases, {}
        for lease in leases.values():
            await self.inner.release(lease)


async def run_case_on(case: Case, kind: StoreKind, box: list[Any], seen: list[RunSeen]) -> int:
    """Runs ``case`` on the store in ``box[0]`` (of ``kind``; a reopen puts
    the new store object there), checking it against the model as
    ``run_case`` does, and appends what each run left to ``seen``. A case
    whose store dies is resumed on a reopened store where ``kind`` can."""
    return await _run_case(
        case, kind.durable, box[0], kind.clock, kind=kind, box=box, seen=seen,
    )


_ctx_classes: dict[tuple[int, Any], type[SagaContext]] = {}


async def _run_case(
    case: Case, durable: bool, inner: Any, store_clock: list[float] | None = None, *,
    kind: StoreKind | None = None, box: list[Any] | None = None,
    seen: list[RunSeen] | None = None,
) -> int:
    rt = Runtime(case)
    store: Any
    if kind is None:
        store = (FaultySubmittingStore if durable else FaultyStore)(inner)
    elif not kind.wrap:
        assert case.crash_after is None, "no fault on a bare store"
        assert case.cancel_after is None, "no fault on a bare store"
        store = inner
    else:
        store = LeaseKeepingStore(inner) if durable else FaultyStore(inner)
    faults = durable or kind is not None
    rt.store = store
    clock = [1000.0]
    breakers = [
        CircuitBreaker(
            fail_max=b.fail_max, reset_timeout=b.reset_timeout,
            exclude=(ERRORS["B"],) if b.exclude_b else (), clock=lambda: clock[0],
            name=f"breaker-{index}",  # journaled in an open circuit's error: the same everywhere
        )
        for index, b in enumerate(case.breakers)
    ]
    models = [BreakerModel(b) for b in case.breakers]
    ctx_class = None
    if kind is not None:
        # one context class per case, whatever the store (its fingerprint is compared)
        ctx_class = _ctx_classes.get((case.seed, case.items))
        if ctx_class is None:
            ctx_class = _ctx_classes[(case.seed, case.items)] = context_class(case)
    built = Built(rt, store, breakers, ctx_class)
    checked = 0
    for run in range(case.runs):
        clock[0] += case.advances[run]
        saga_id = f"c{case.seed}-r{run}"
        rt.trace = []
        rt.crash_after = case.crash_after if faults and run == 0 else None
        rt.crash_again = case.crash_again
        rt.cancel_after = case.cancel_after if faults and run == 0 else None
        rt.cancelled_in_write = False
        rt.crashes = []
        rt.crashed_outside = []
        rt.cancelled = False
        ctx = built.ctx_class(order_id=saga_id)
        saga = built.saga()
        if case.transaction and run == 0:
            task = victim_task(step_by_step(saga, ctx, saga_id), rt.mark_victim)
        else:
            task = victim_task(saga.run(ctx, saga_id=saga_id), rt.mark_victim)
        outcome: object
        try:
            outcome = await task
        except (Exception, asyncio.CancelledError) as error:
            outcome = error
        resumed = False
        while len(rt.crashes) > rt.resumes:
            if not isinstance(outcome, SagaInterrupted):
                raise Mismatch(f"the store died after call {rt.crashes}, yet got {outcome!r}")
            store.heal()
            if store_clock is not None:
                store_clock[0] += 3600.0  # the dead run's leases ran out
            if isinstance(store, LeaseKeepingStore):
                await store.expire_leases()  # ... on every store, whatever its clock
            if kind is not None and kind.reopen is not None:
                # the resuming process opens the file or database anew
                assert box is not None
                box[0] = inner = store.inner = await kind.reopen(store.inner)
            rt.resuming = rt.trace[rt.crashes[-1]] if rt.trace[rt.crashes[-1]][2] == "act" else None
            resumer = built.saga()
            task = victim_task(resumer.resume(saga_id), rt.mark_victim)
            try:
                outcome = await task
            except (Exception, asyncio.CancelledError) as error:
                outcome = error
            rt.resuming = None
            resumed = True
            rt.resumes += 1
        rt.resumes = 0
        model = Model(
            case, Script(case.items), models, clock[0], rt.trace, tuple(rt.crashes),
            cancel_after=rt.cancelled_at if rt.cancelled_in_write else None,
        )
        try:
            expected, expected_ctx = model.run(saga_id)
            model.done()
        except Mismatch as mismatch:
            raise Mismatch(f"run {run}: {mismatch}; outcome {outcome!r}") from None
        checked += len(rt.trace)
        record = await inner.load(saga_id)
        if seen is not None:
            children = child_names(case.items)
            ids = [saga_id, *sorted(model.child_status)]
            ids += sorted({call[0] for call in rt.trace} - set(ids))
            # A finished saga resumed again answers from its journal alone
            # (S14: the results it kept, with their values and types).
            replayed: object
            try:
                replayed = await built.saga().resume(saga_id)
            except Exception as error:
                replayed = error
            seen.append(RunSeen(
                list(rt.trace), outcome_summary(outcome, children),
                {sid: await journal_summary(inner, sid) for sid in ids},
                frozenset(rt.members), frozenset(children),
                outcome_summary(replayed, children),
            ))
        where = f"run {run} ({saga_id}), outcome {outcome!r}, trace {rt.trace}"

        def check(ok: bool, what: str, where: str = where) -> None:
            if not ok:
                raise Mismatch(f"{what}: {where}")

        check(record.status.value == expected.status,
              f"journal status {record.status.value}, model {expected.status}")
        if expected.kind == "completed":
            check(isinstance(outcome, SagaResult), f"expected a SagaResult ({expected})")
            assert isinstance(outcome, SagaResult)
            got = [
                (r.step_name, r.response if r.step_name not in child_names(case.items)
                 else "<child>")
                for r in outcome.results
            ]
            check(got == expected.results, f"results {got} != {expected.results}")
            if not resumed:
                check(outcome.context is ctx, "S2: the result's context is not the caller's")
            final = as_dict(outcome.context)
        elif expected.kind == "failed":
            check(isinstance(outcome, SagaFailed), f"expected SagaFailed ({expected})")
            assert isinstance(outcome, SagaFailed)
            check(outcome.status.value == expected.status, "SagaFailed.status")
            check(outcome.failed_step in expected.failed_steps,
                  f"failed_step {outcome.failed_step}, model {expected.failed_steps}")
            check(set(outcome.compensation_errors) == expected.compensation_errors,
                  f"compensation_errors {set(outcome.compensation_errors)}, "
                  f"model {expected.compensation_errors}")
            check(outcome.__cause__ is outcome.error, "S7: error is not the __cause__")
            kind = expected.errors.get(outcome.failed_step, expected.error)
            if kind in ("A", "B") and resumed and isinstance(outcome.error, RecordedError):
                # a resumed run knows an earlier run's error by its journaled text
                check(str(outcome.error).startswith(f"Err{kind}:"),
                      f"error {outcome.error!r}, model {kind}")
            elif kind in ("A", "B"):
                check(isinstance(outcome.error, ERRORS[kind]),
                      f"error {outcome.error!r}, model {kind}")
            elif kind == "open":
                check(isinstance(outcome.error, CircuitOpenError), f"error {outcome.error!r}")
            final = as_dict(ctx)
        else:
            check(isinstance(outcome, asyncio.CancelledError),
                  f"expected CancelledError ({expected})")
            final = as_dict(ctx)
        if resumed:
            final = dict(record.context)
        check(final == expected_ctx, f"context {final} != model {expected_ctx}")
        check(dict(record.context) == expected_ctx,
              f"journaled context {record.context} != model {expected_ctx}")
        for child_id, status in model.child_status.items():
            try:
                child = await inner.load(child_id)
            except SagaNotFound:
                raise Mismatch(f"child {child_id} not journaled, model {status}") from None
            check(child.status.value == status,
                  f"child {child_id} status {child.status.value}, model {status}")
        for index, (real, modelled) in enumerate(zip(breakers, models, strict=True)):
            got_state = real.state.value
            check(got_state == breaker_state(modelled, clock[0]),
                  f"breaker {index} {got_state}, model {modelled.state} "
                  f"(failures {modelled.failures})")
    return checked


def exit_unless_this_trees_package() -> None:
    """A hunt run as a script (``python tests/<file>.py``) finds the package
    on ``sys.path`` from ``tests/``: without ``PYTHONPATH`` that is an
    installed one (an editable install of another worktree, say), and the
    hunt would test the wrong code while saying nothing. Exit instead."""
    import sys
    from pathlib import Path

    import fallback_saga

    tree = Path(__file__).resolve().parent.parent
    if Path(fallback_saga.__file__).resolve().parent.parent != tree:
        sys.exit(f"hunting another tree's package ({fallback_saga.__file__}): "
                 f"run with PYTHONPATH={tree}")
