"""An independent reference model of the saga contract (DESIGN.md section 3,
S1-S15, and docs/mechanics.md), written from the text, not from the executor.

A *plan* is a tree of ``StepPlan`` / ``FallbackPlan`` / ``GroupPlan`` /
``ChildPlan`` items whose participants follow a script: an act fails its first
``act_fail`` calls (after writing to the context, so that a restore is
observable), a compensation fails its first ``comp_fail`` calls. The model
replays the contract over the plan and checks, in lockstep, the participant
calls the library really made: each call the contract fixes must be the next
one; where the contract leaves a choice (the order of a ``Parallel`` group's
members, a member cancelled before its next call when a sibling failed) the
model takes the choice the trace shows and checks that the contract allows it.
It also predicts the final context, the status, the outcome's type, the failed
step, the compensation errors, the step results and every child's status.

The participant (``Script``) is shared by the model and the real steps, so
both agree on what the n-th call of a step does.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------- plans


class ErrA(Exception):
    """A business failure of one kind."""


class ErrB(Exception):
    """A business failure of another kind (a breaker may exclude it)."""


ERRORS: dict[str, type[Exception]] = {"A": ErrA, "B": ErrB}


@dataclass(frozen=True)
class StepPlan:
    name: str
    act_fail: int = 0  # the first act_fail calls of act raise
    exc: str = "A"  # ... this error ("A" -> ErrA, "B" -> ErrB)
    comp_fail: int = 0  # the first comp_fail calls of compensate raise ErrA
    retry: int = 1  # act attempts (RetryPolicy(attempts=retry)), 1: no policy
    cancel: bool = False  # the first act call cancels the saga's task while in flight
    comp_cancel: bool = False  # the first compensate call cancels the saga's task


@dataclass(frozen=True)
class FallbackPlan:
    primary: StepPlan | ChildPlan  # a branch may run a child saga (SubSaga)
    fallback: StepPlan | ChildPlan
    failure_exceptions: tuple[str, ...] = ()  # () -> any Exception
    breaker: int | None = None  # index of a shared CircuitBreaker
    retry: int = 1  # Fallback(retry=RetryPolicy(attempts=retry)), 1: none


@dataclass(frozen=True)
class GroupPlan:
    members: tuple[StepPlan | FallbackPlan, ...]


@dataclass(frozen=True)
class ChildPlan:
    name: str
    items: tuple[Any, ...]


Item = StepPlan | FallbackPlan | GroupPlan | ChildPlan


@dataclass(frozen=True)
class BreakerPlan:
    fail_max: int
    reset_timeout: float
    exclude_b: bool  # exclude=(ErrB,)


@dataclass(frozen=True)
class Case:
    seed: int
    items: tuple[Item, ...]
    breakers: tuple[BreakerPlan, ...]
    runs: int  # sagas run one after the other with this plan (sharing breakers)
    advances: tuple[float, ...]  # the breakers' clock moves this much before each run
    comp_attempts: int  # the saga's compensation_retry attempts
    # Both counted among the calls outside Parallel groups (Runtime.outside_index):
    crash_after: int | None = None  # durable only: the store dies after this call of run 0
    crash_again: int | None = None  # ... and again this many calls after the first crash
    cancel_resume: bool = False  # the resume is cancelled in its repeated call (single crash)
    transaction: bool = False  # run 0 is driven step by step with saga.transaction()
    cancel_after: int | None = None  # durable: this act (of run 0) cancels the caller as it
    # returns (counted as crash_after is)


def step_plans(items: tuple[Any, ...]) -> list[StepPlan]:
    found: list[StepPlan] = []
    for item in items:
        if isinstance(item, StepPlan):
            found.append(item)
        elif isinstance(item, FallbackPlan):
            found += step_plans((item.primary, item.fallback))
        elif isinstance(item, GroupPlan):
            found += step_plans(item.members)
        else:
            found += step_plans(item.items)
    return found


def child_names(items: tuple[Any, ...]) -> list[str]:
    found: list[str] = []
    for item in items:
        if isinstance(item, ChildPlan):
            found += [item.name, *child_names(item.items)]
        elif isinstance(item, FallbackPlan):
            found += child_names((item.primary, item.fallback))
    return found


# --------------------------------------------------------------------------- the participant


Call = tuple[str, str, str]  # (saga id, step name, "act" | "compensate")


class Script:
    """What the n-th call of a step does; counts per (saga id, step, action)."""

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.plans = {plan.name: plan for plan in step_plans(items)}
        self.counts: dict[Call, int] = {}

    def count(self, call: Call) -> int:
        self.counts[call] = self.counts.get(call, 0) + 1
        return self.counts[call]

    def act_fails(self, name: str, n: int) -> bool:
        return n <= self.plans[name].act_fail

    def comp_fails(self, name: str, n: int) -> bool:
        return n <= self.plans[name].comp_fail


def act_writes(ctx: dict[str, Any], name: str, n: int, member: bool) -> None:
    """What an act writes: its own field (the n-th call writes n), and — when it
    is not a group member, whose siblings must write disjoint fields — the
    shared nested list too, so that a deep restore is observable (S1/S2)."""
    ctx["f_" + name] = n
    if not member:
        ctx["log"].append(name)


def response(name: str, n: int) -> str:
    return f"{name}#{n}"


def fresh_context(order_id: str, names: list[str]) -> dict[str, Any]:
    ctx: dict[str, Any] = {"order_id": order_id, "log": []}
    for name in names:
        ctx["f_" + name] = 0
    return ctx


def merged_value(child_ctx: dict[str, Any]) -> int:
    """What a child's merge writes into its parent's field (a digest of the child)."""
    return 1000 * len(child_ctx["log"]) + sum(
        v for k, v in child_ctx.items() if k.startswith("f_")
    )


# --------------------------------------------------------------------------- the breaker


STATS: dict[str, int] = {}  # what the model saw happen, to judge the generator's reach


def note(what: str) -> None:
    STATS[what] = STATS.get(what, 0) + 1


class BreakerModel:
    """S9, from the text: CLOSED -> OPEN after fail_max consecutive counted
    failures; OPEN rejects until reset_timeout; then one trial call (HALF_OPEN):
    success closes, a counted failure re-opens; excluded errors are ignored."""

    def __init__(self, plan: BreakerPlan) -> None:
        self.plan = plan
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def admit(self, now: float) -> bool:
        if self.state == "open":
            if now - self.opened_at >= self.plan.reset_timeout:
                self.state = "half_open"
                note("breaker trial")
                return True
            note("breaker rejects")
            return False
        return True

    def excluded(self, exc: str) -> bool:
        return self.plan.exclude_b and exc == "B"

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0

    def failure(self, exc: str, now: float) -> None:
        if self.excluded(exc):
            note("breaker ignores an excluded error")
            return
        if self.state == "half_open":
            self.state, self.opened_at = "open", now
            return
        self.failures += 1
        if self.failures >= self.plan.fail_max:
            note("breaker opens")
            self.state, self.opened_at, self.failures = "open", now, 0


# --------------------------------------------------------------------------- outcomes


class Mismatch(AssertionError):
    pass


@dataclass
class Outcome:
    kind: Literal["completed", "failed", "cancelled"]
    status: str  # "completed" | "compensated" | "failed"
    failed_steps: set[str] = field(default_factory=set)  # any of these is right
    compensation_errors: set[str] = field(default_factory=set)
    results: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # "A" | "B" | "open" | "child" | "cancel"
    errors: dict[str, str] = field(default_factory=dict)  # per failed step, when several


class _Failure(Exception):
    """The model's own control flow: an item failed for good."""

    def __init__(
        self, steps: set[str], error: str, *, cancelled: bool = False,
        comp_errors: set[str] | None = None,
    ) -> None:
        super().__init__(steps, error)
        self.steps = steps
        self.error = error
        self.cancelled = cancelled
        self.comp_errors = comp_errors or set()  # already given up (a child, a group's member)
        self.errors = {step: error for step in steps}


@dataclass
class _Entry:
    """One entry of a compensation stack."""

    kind: Literal["step", "child", "group"]
    saga_id: str
    name: str
    child: _SagaRun | None = None
    members: list[_Entry] = field(default_factory=list)


@dataclass
class _SagaRun:
    saga_id: str
    items: tuple[Any, ...]
    ctx: dict[str, Any]
    stack: list[_Entry] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)
    status: str = "running"
    # children a Fallback branch ran that were left FAILED: should this saga
    # unwind, it ends FAILED with them in its compensation errors
    left_failed: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- the model


class Model:
    """Replays the contract over one run of ``case.items`` against ``actual``,
    the participant calls the library made (for a crash case: the first run's
    and the resumed run's, one after the other)."""

    def __init__(
        self,
        case: Case,
        script: Script,
        breakers: list[BreakerModel],
        now: float,
        actual: list[Call],
        crashes: tuple[int, ...] = (),
        cancel_after: int | None = None,
    ) -> None:
        self.case = case
        self.script = script
        self.breakers = breakers
        self.now = now
        self.actual = actual
        self.i = 0
        self.calls = 0
        self.crashes = set(crashes)  # indexes in ``actual`` of calls after which the store died
        self.crashed = False
        self.child_status: dict[str, str] = {}
        self.names = [plan.name for plan in step_plans(case.items)] + child_names(case.items)
        self.cancel_pending = False  # a compensate cancelled the caller (shielded unwinding)
        self.cancelled_in_write = False  # the caller was cancelled as an act returned
        self.cancel_after = cancel_after  # the index in ``actual`` of that act
        # compensations that gave up, in order (saga id, entry): a resumed
        # unwinding finds their steps completed and not compensated
        self.gave_up: list[tuple[str, _Entry]] = []
        self.recovered: set[tuple[str, str]] = set()  # ... and compensated on a later try

    # ---- lockstep

    def _where(self) -> str:
        return f"call #{self.i}: trace so far {self.actual[: self.i]}, rest {self.actual[self.i :]}"

    def peek(self) -> Call | None:
        return self.actual[self.i] if self.i < len(self.actual) else None

    def expect(self, call: Call) -> bool:
        """The next call must be ``call``; returns True when the crash case
        repeats it (the store died after it: the resumed run calls it again)."""
        got = self.peek()
        if got != call:
            raise Mismatch(f"expected {call}, got {got} ({self._where()})")
        self.i += 1
        self.calls += 1
        if self.i - 1 in self.crashes:
            self.crashed = True
            note("crash and resume")
            return True
        return False

    def repeat(self, call: Call, unwinding: bool = False) -> int:
        """S10/S13: the call the crash left without a journaled outcome is
        answered for by calling it again (same idempotency key) — again if the
        store died after that call too. Returns how many calls were made."""
        made = 0
        while True:
            got = self.peek()
            if got != call:
                raise Mismatch(
                    f"expected the crashed call {call} again, got {got} ({self._where()})"
                )
            self.i += 1
            made += 1
            if self.i - 1 not in self.crashes:
                return made
            note("crash again in the repeated call")
            if unwinding:
                self._retry_given_up()

    def done(self) -> None:
        if self.i != len(self.actual):
            raise Mismatch(f"unexpected further calls {self.actual[self.i:]} ({self._where()})")

    # ---- a saga

    def run(self, saga_id: str) -> tuple[Outcome, dict[str, Any]]:
        names = [plan.name for plan in step_plans(self.case.items)] + child_names(self.case.items)
        saga = _SagaRun(saga_id, self.case.items, fresh_context(saga_id, names))
        outcome = self._saga(saga)
        if self.cancel_pending:
            outcome.kind = "cancelled"
        return outcome, saga.ctx

    def _saga(self, saga: _SagaRun) -> Outcome:
        for item in saga.items:
            try:
                if self.cancelled_in_write:
                    # S8/S13: the cancellation that landed during the journal
                    # write before this item is handled once the write is done:
                    # the item is never called; what completed is undone
                    raise _Failure(set(), "cancel", cancelled=True)
                self._item(saga, item)
            except _Failure as failure:
                errors = failure.comp_errors | self._unwind(saga.saga_id, saga.stack)
                errors |= saga.left_failed
                errors -= {name for sid, name in self.recovered if sid == saga.saga_id}
                self._finished(saga.saga_id)
                saga.status = "failed" if errors else "compensated"
                return Outcome(
                    "cancelled" if failure.cancelled else "failed",
                    saga.status,
                    failure.steps,
                    errors,
                    error=failure.error,
                    errors=failure.errors,
                )
        saga.status = "completed"
        kind: Literal["completed", "cancelled"] = (
            "cancelled" if self.cancelled_in_write else "completed"
        )  # cancelled while its completion was written: the journal says COMPLETED
        return Outcome(kind, "completed", results=list(saga.results))

    def _item(self, saga: _SagaRun, item: Any) -> None:
        if isinstance(item, StepPlan):
            self._step(saga, item, saga.ctx, saga.stack, member=False)
        elif isinstance(item, FallbackPlan):
            self._fallback(saga, item, saga.ctx, saga.stack, member=False)
        elif isinstance(item, ChildPlan):
            self._child(saga, item)
        else:
            self._group(saga, item)

    # ---- one branch: tries of a step's act (S1/S2 restore, retries)

    def _try_branch(
        self,
        saga: _SagaRun,
        plan: StepPlan,
        ctx: dict[str, Any],
        attempts: int,
        member: bool,
        breaker: BreakerModel | None = None,
    ) -> tuple[bool, str]:
        """Returns (completed, last error); raises _Failure(cancelled) when the
        act is cancelled in flight. Restores ``ctx`` on every failed try."""
        snapshot = copy.deepcopy(ctx)
        error = ""
        left = attempts
        while left:
            left -= 1
            if breaker is not None and not breaker.admit(self.now):
                return False, "open"  # S3/S9: rejected without calling; never retried
            call = (saga.saga_id, plan.name, "act")
            n = self.script.count(call)
            repeat = self.expect(call)
            act_writes(ctx, plan.name, n, member)
            if plan.cancel and n == 1:
                note("act cancelled")
                # S8: the try fails with CancelledError; context restored; no
                # fallback, no retry; the breaker counts nothing.
                _restore(ctx, snapshot)
                raise _Failure({plan.name}, "cancel", cancelled=True)
            ok = not self.script.act_fails(plan.name, n)
            told = breaker
            if repeat:
                # S10/S13: the call the crash left without an outcome is
                # answered for by calling it again (same key, same try), past
                # the breaker, which is not told of it (docs: "Resuming")
                if breaker is not None:
                    if ok:
                        breaker.success()
                    else:
                        breaker.failure(plan.exc, self.now)
                told = None
                # the resumed run gives the step a new retry budget, the
                # repeated call being its first try (the contract is silent)
                left = attempts - 1
                for _ in range(self.repeat(call)):
                    n = self.script.count(call)
                _restore(ctx, snapshot)
                if self.case.cancel_resume:
                    # docs, "Resuming": cancelled before the repeated call
                    # answered, the crashed call may have taken effect: it is
                    # journaled CANCELLED and compensated with the rest (S8)
                    note("resume cancelled in the repeated call")
                    saga.stack.append(_Entry("step", saga.saga_id, plan.name))
                    raise _Failure({plan.name}, "cancel", cancelled=True)
                act_writes(ctx, plan.name, n, member)
                ok = not self.script.act_fails(plan.name, n)
            if ok:
                if told is not None:
                    told.success()
                saga.results.append((plan.name, response(plan.name, n)))
                if self.i - 1 == self.cancel_after:
                    note("caller cancelled during a journal write")
                    self.cancelled_in_write = True
                return True, ""
            _restore(ctx, snapshot)
            error = plan.exc
            if told is not None:
                told.failure(plan.exc, self.now)
        return False, error

    def _step(
        self, saga: _SagaRun, plan: StepPlan, ctx: dict[str, Any], stack: list[_Entry],
        member: bool,
    ) -> None:
        ok, error = self._try_branch(saga, plan, ctx, plan.retry, member)
        if not ok:
            raise _Failure({plan.name}, error)
        stack.append(_Entry("step", saga.saga_id, plan.name))

    def _fallback(
        self, saga: _SagaRun, plan: FallbackPlan, ctx: dict[str, Any], stack: list[_Entry],
        member: bool,
    ) -> None:
        breaker = None if plan.breaker is None else self.breakers[plan.breaker]
        ok, error = self._branch(saga, plan.primary, ctx, plan.retry, member, breaker)
        if ok:
            return
        # S3: an open circuit always falls back; () means any Exception
        eligible = (
            error == "open"
            or not plan.failure_exceptions
            or error in plan.failure_exceptions
        )
        if not eligible:
            note("primary error not fallback-eligible")
            raise _Failure({plan.primary.name}, error)
        note("fallback taken")
        retry = plan.fallback.retry if isinstance(plan.fallback, StepPlan) else 1
        ok, error2 = self._branch(saga, plan.fallback, ctx, retry, member, None)
        if not ok:
            raise _Failure({plan.fallback.name}, error2)  # S4

    def _branch(
        self, saga: _SagaRun, plan: StepPlan | ChildPlan, ctx: dict[str, Any], attempts: int,
        member: bool, breaker: BreakerModel | None,
    ) -> tuple[bool, str]:
        """One branch of a Fallback, pushed on the stack if it completed (S5)."""
        if isinstance(plan, ChildPlan):
            note("a Fallback branch runs a child")
            child = self._run_child(saga, plan, ctx)
            if child is None:
                return False, "child"
            saga.stack.append(_Entry("child", saga.saga_id, plan.name, child=child))
            return True, ""
        ok, error = self._try_branch(saga, plan, ctx, attempts, member, breaker)
        if ok:
            saga.stack.append(_Entry("step", saga.saga_id, plan.name))
        return ok, error

    # ---- a child saga

    def _run_child(
        self, saga: _SagaRun, plan: ChildPlan, ctx: dict[str, Any]
    ) -> _SagaRun | None:
        """Runs a child; returns it if it completed (merged into ``ctx``), else
        None: it unwound itself (a child left FAILED is remembered). A
        cancelled child cancels its parent's step (S8)."""
        child_id = f"{saga.saga_id}/{plan.name}"
        child = _SagaRun(child_id, plan.items, fresh_context(saga.saga_id, self.names))
        outcome = self._saga(child)
        self.child_status[child_id] = child.status
        if child.status == "completed" and self.cancelled_in_write:
            # the child's journal says COMPLETED, its caller was cancelled: the
            # SubSaga step undoes the child itself (docs: "A cancelled parent")
            errors = self._unwind(child.saga_id, child.stack) | child.left_failed
            self._finished(child.saga_id)
            child.status = "failed" if errors else "compensated"
            self.child_status[child_id] = child.status
            raise _Failure({plan.name}, "cancel", cancelled=True,
                           comp_errors={plan.name} if errors else set())
        if outcome.kind == "cancelled" or self.cancel_pending:
            # (the caller was cancelled during the child's own unwinding: the
            # child's caller gets CancelledError, never a fallback — S3, S8)
            raise _Failure(
                {plan.name}, "child", cancelled=True,
                comp_errors={plan.name} if child.status == "failed" else set(),
            )
        if outcome.kind != "completed":
            if child.status == "failed":
                saga.left_failed.add(plan.name)
            return None
        ctx["f_" + plan.name] = merged_value(child.ctx)
        saga.results.append((plan.name, "<child>"))
        return child

    def _child(self, saga: _SagaRun, plan: ChildPlan) -> None:
        # the child unwound itself; the parent's step failed (the child is not
        # compensated a second time); a child left FAILED leaves its parent FAILED
        child = self._run_child(saga, plan, saga.ctx)
        if child is None:
            raise _Failure({plan.name}, "child")
        saga.stack.append(_Entry("child", saga.saga_id, plan.name, child=child))

    # ---- a parallel group

    def _group(self, saga: _SagaRun, plan: GroupPlan) -> None:
        """Members run on copies of the context; the trace shows which order
        the loop picked, and how far each member got when a sibling failed."""
        names = {}
        for member in plan.members:
            if isinstance(member, StepPlan):
                names[member.name] = member
            else:
                names[member.primary.name] = member
                names[member.fallback.name] = member
        # the contiguous run of act calls of the group's steps
        start = self.i
        end = start
        while end < len(self.actual):
            sid, step, action = self.actual[end]
            if sid != saga.saga_id or step not in names or action != "act":
                break
            end += 1
        chunk = self.actual[start:end]
        by_member: dict[int, list[Call]] = {}
        for call in chunk:
            index = plan.members.index(names[call[1]])
            by_member.setdefault(index, []).append(call)
        base = copy.deepcopy(saga.ctx)
        completed: list[tuple[int, _Entry, dict[str, Any]]] = []
        failed: set[str] = set()
        error = ""
        errors_by_step: dict[str, str] = {}
        cancelled_in_flight: list[_Entry] = []
        truncated: list[str] = []
        for index, member in enumerate(plan.members):
            calls = by_member.get(index, [])
            sub = Model(self.case, self.script, self.breakers, self.now, calls)
            sub.names = self.names
            work = copy.deepcopy(base)
            stack: list[_Entry] = []
            member_run = _SagaRun(saga.saga_id, (), work, stack, saga.results)
            try:
                if isinstance(member, StepPlan):
                    sub._step(member_run, member, work, stack, member=True)
                else:
                    sub._fallback(member_run, member, work, stack, member=True)
            except _Failure as failure:
                if failure.cancelled:
                    # a member cancelled in flight: effect uncertain, compensated
                    name = next(iter(failure.steps))
                    cancelled_in_flight.append(_Entry("step", saga.saga_id, name))
                    sub.done()
                    continue
                failed |= failure.steps
                error = failure.error
                errors_by_step.update(failure.errors)
                sub.done()
                continue
            except Mismatch:
                if sub.i == len(calls):
                    # the member's trace stopped short of what the model calls
                    # next: allowed only if the group is stopped (checked below)
                    truncated.append(member_name(member))
                    note("group member stopped short")
                    continue
                raise
            sub.done()
            completed.append((index, stack[0], work))
        self.i = end
        self.calls += len(chunk)
        # the members' writes land in the saga's context, completed ones only
        for _index, _entry, work in completed:
            for key, value in work.items():
                if value != base[key]:
                    saga.ctx[key] = value
        stopped = bool(failed) or bool(cancelled_in_flight)
        if truncated and not stopped:
            raise Mismatch(f"group members {truncated} stopped short though no member failed")
        entries = [entry for _i, entry, _w in completed] + cancelled_in_flight
        if not stopped:
            saga.stack.append(_Entry("group", saga.saga_id, "group", members=entries))
            return
        note("group failed")
        # S15: the group failed: undo what completed (any order among members)
        errors = self._undo_members(entries)
        failure = _Failure(
            failed or {e.name for e in cancelled_in_flight},
            error or "cancel",
            cancelled=bool(cancelled_in_flight),  # the caller was cancelled (S8)
            comp_errors=errors,
        )
        failure.errors.update(errors_by_step)
        raise failure

    def _undo_members(self, entries: list[_Entry]) -> set[str]:
        """Compensate ``entries`` in the order the trace shows (any order is
        valid among independent members); each member's calls contiguous."""
        pending = {entry.name: entry for entry in entries}
        errors: set[str] = set()
        while pending:
            got = self.peek()
            if got is None or got[2] != "compensate" or got[1] not in pending:
                raise Mismatch(
                    f"expected a compensation of one of {sorted(pending)}, got {got} "
                    f"({self._where()})"
                )
            entry = pending.pop(got[1])
            errors |= self._compensate(entry)
        return errors

    # ---- unwinding

    def _unwind(self, saga_id: str, stack: list[_Entry]) -> set[str]:
        errors: set[str] = set()
        for entry in reversed(stack):  # S5: strictly LIFO
            errors |= self._compensate(entry)
        return errors - {name for sid, name in self.recovered if sid == saga_id}

    def _compensate(self, entry: _Entry) -> set[str]:
        if entry.kind == "group":
            return self._undo_members(entry.members)
        if entry.kind == "child":
            assert entry.child is not None
            child = entry.child
            # a child left FAILED under this one (a Fallback branch) leaves it FAILED
            errors = self._unwind(child.saga_id, child.stack) | child.left_failed
            self._finished(child.saga_id)
            child.status = "failed" if errors else "compensated"
            self.child_status[child.saga_id] = child.status
            return {entry.name} if errors else set()
        # S6: retried by the compensation policy; a give-up is recorded
        call = (entry.saga_id, entry.name, "compensate")
        left = self.case.comp_attempts
        while left:
            left -= 1
            n = self.script.count(call)
            repeat = self.expect(call)
            plan = self.script.plans[entry.name]
            if plan.comp_cancel and n == 1:
                note("caller cancelled during a compensation")
                self.cancel_pending = True  # shielded: the unwinding goes on
            ok = not self.script.comp_fails(entry.name, n)
            if repeat:
                self._retry_given_up()
                left = self.case.comp_attempts - 1  # a new budget on resume, as for acts
                for _ in range(self.repeat(call, unwinding=True)):
                    ok = not self.script.comp_fails(entry.name, self.script.count(call))
            if ok:
                return set()
        note("compensation gave up")
        self.gave_up.append((entry.saga_id, entry))
        return {entry.name}

    def _finished(self, saga_id: str) -> None:
        """A saga whose unwinding ended is final: a resume leaves its
        compensations that gave up to an operator (its record says FAILED)."""
        self.gave_up = [
            (sid, e) for sid, e in self.gave_up
            if sid != saga_id and not sid.startswith(saga_id + "/")
        ]

    def _retry_given_up(self) -> None:
        """The resumed unwinding (docs/mechanics.md, "The journal is the
        truth", 4) compensates the steps its journal shows completed and not
        compensated, LIFO: those whose compensation gave up before the crash
        come before the one the crash left in flight, each with a new budget."""
        again, self.gave_up = self.gave_up, []
        for sid, entry in again:
            note("given-up compensation tried again on resume")
            if not self._compensate(entry):
                self.recovered.add((sid, entry.name))


def member_name(member: StepPlan | FallbackPlan) -> str:
    return member.name if isinstance(member, StepPlan) else member.primary.name


def _restore(ctx: dict[str, Any], snapshot: dict[str, Any]) -> None:
    ctx.clear()
    ctx.update(copy.deepcopy(snapshot))


# --------------------------------------------------------------------------- generation


class Generator:
    """Random plans, seeded."""

    def __init__(self, seed: int, *, durable: bool) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.durable = durable
        self.n = 0

    def name(self) -> str:
        self.n += 1
        return f"S{self.n}"

    def step(self, *, member: bool = False, cancel_ok: bool = True) -> StepPlan:
        r = self.rng
        act_fail = r.choice([0, 0, 0, 1, 2, 9])
        return StepPlan(
            self.name(),
            act_fail=act_fail,
            exc=r.choice("AB"),
            comp_fail=r.choice([0, 0, 0, 1, 2, 9]),
            retry=1 if member else r.choice([1, 1, 2, 3]),
            cancel=cancel_ok and r.random() < 0.04,
            comp_cancel=not member and r.random() < 0.03,
        )

    def fallback(self, breakers: int, *, member: bool = False, depth: int = 0) -> FallbackPlan:
        r = self.rng
        primary: StepPlan | ChildPlan
        fallback: StepPlan | ChildPlan
        if not member and depth < 2 and r.random() < 0.15:
            primary = ChildPlan(self.name(), self.items(depth + 1, 0, r.randint(1, 2)))
        else:
            primary = self.step(member=True, cancel_ok=not member)
        if not member and depth < 2 and r.random() < 0.1:
            fallback = ChildPlan(self.name(), self.items(depth + 1, 0, r.randint(1, 2)))
        else:
            fallback = self.step(member=True, cancel_ok=False)
        child_primary = isinstance(primary, ChildPlan)
        return FallbackPlan(
            primary,
            fallback,
            failure_exceptions=r.choice([(), (), ("A",), ("B",), ("A", "B")]),
            breaker=None if member or child_primary or not breakers or r.random() < 0.3
            else r.randrange(breakers),
            retry=1 if member or child_primary else r.choice([1, 1, 2]),
        )

    def items(self, depth: int, breakers: int, length: int) -> tuple[Item, ...]:
        r = self.rng
        out: list[Item] = []
        for _ in range(length):
            roll = r.random()
            if roll < 0.45:
                out.append(self.step())
            elif roll < 0.75:
                out.append(self.fallback(breakers, depth=depth))
            elif roll < 0.88:
                members: list[StepPlan | FallbackPlan] = []
                for _m in range(r.randint(2, 3)):
                    if r.random() < 0.7:
                        members.append(self.step(member=True, cancel_ok=depth == 0))
                    else:
                        members.append(self.fallback(0, member=True))
                out.append(GroupPlan(tuple(members)))
            elif depth < 2:
                out.append(ChildPlan(self.name(), self.items(depth + 1, breakers, r.randint(1, 3))))
            else:
                out.append(self.step())
        return tuple(out)

    def breaker_case(self) -> Case:
        """Sagas run one after another through shared breakers: primaries that
        fail often, excluded errors, the clock moved across reset timeouts."""
        r = self.rng
        breakers = tuple(
            BreakerPlan(r.randint(1, 2), r.choice([5.0, 30.0]), r.random() < 0.5)
            for _ in range(r.randint(1, 2))
        )
        items: list[Item] = []
        for _ in range(r.randint(1, 4)):
            primary = dataclasses.replace(
                self.step(member=True, cancel_ok=False), act_fail=r.choice([0, 1, 9, 9])
            )
            items.append(FallbackPlan(
                primary, self.step(member=True, cancel_ok=False),
                failure_exceptions=r.choice([(), ("A",), ("B",)]),
                breaker=r.randrange(len(breakers)), retry=r.choice([1, 1, 2, 3]),
            ))
            if r.random() < 0.3:
                items.append(self.step())
        runs = r.randint(3, 8)
        return Case(
            seed=self.seed, items=tuple(items), breakers=breakers, runs=runs,
            advances=tuple(r.choice([0.0, 0.0, 3.0, 6.0, 40.0]) for _ in range(runs)),
            comp_attempts=r.randint(1, 3),
        )

    def case(self) -> Case:
        r = self.rng
        if r.random() < 0.2:
            return self.breaker_case()
        breakers = tuple(
            BreakerPlan(r.randint(1, 3), r.choice([5.0, 30.0]), r.random() < 0.5)
            for _ in range(r.randint(0, 2))
        )
        items = self.items(0, len(breakers), r.randint(1, 5))
        runs = r.randint(1, 4) if breakers else 1
        return Case(
            seed=self.seed,
            items=items,
            breakers=breakers,
            runs=runs,
            advances=tuple(r.choice([0.0, 0.0, 10.0, 40.0]) for _ in range(runs)),
            comp_attempts=r.randint(1, 3),
        )
