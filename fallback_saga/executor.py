"""The run of one saga: a state machine over the steps, a compensation stack,
and write-ahead journaling.

Per run, one ``Execution`` owns the context, the compensation stack, the
status and the journal. Transitions are appended to ``journal`` as they
happen. How they reach the store depends on the store:

* a write-ahead store (SQLite, PostgreSQL, any ``SagaStore``) gets every
  transition not yet written in one call, right before the next ``act`` or
  ``compensate`` is called — a step's STARTED is durable before it runs, and
  "step N completed" + "step N+1 started" share one write. When a breaker
  rejects a call, the rejected step's rows join the fallback's write;
* an in-process store (``LiveJournal``, e.g. ``MemorySagaStore``) watches
  the run instead, so journaling costs no await at all.

The saga is on the hot path of every order, so the per-step work is kept to
what the contract needs: one snapshot (S2), two journal tuples, a cursor
update for ``current_step()``. Listener hooks are resolved once per saga
instance; with no listener, nothing is called.

Unwinding runs in a task of its own, shielded from cancellation: once it
begins, no compensation is interrupted and every completed step gets its
``compensate`` call, even if the caller is cancelled (again) meanwhile; the
cancellation propagates once the unwinding has finished (S8).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, NoReturn, TypeVar

from .breaker import CircuitBreakerProtocol
from .codec import FIELD_PLANS
from .compact_journal import Shape
from .context import (
    _DICT_ONLY,
    _IMMUTABLE,
    _JSON_SCALARS,
    Snapshot,
    StepSnapshot,
    changed_fields,
    check_serializable,
    context_to_dict,
    flat_changes,
    flat_state,
    freeze_context,
    member_snapshot,
    restore_step,
    step_snapshot,
    step_snapshot_to_dict,
    take_snapshot,
    working_copy,
    write_fields,
)
from .errors import (
    ContextSerializationError,
    LeaseLost,
    ParallelWriteConflict,
    SagaAlreadyExists,
    SagaFailed,
    SagaInterrupted,
)
from .events import HOOK_NAMES, Hook, StepCall, collect_hooks, emit
from .fallback import Fallback
from .journal import (
    DEFAULT_JOURNAL_RETRY,
    DEFAULT_JOURNAL_TIMEOUT,
    JournalWrite,
    NotDurable,
    settle_inline,
    submits_writes,
    write_durably,
    writes_outlive_cancellation,
)
from .retry import RetryPolicy
from .shielding import own_task, settle, shielded
from .status import SagaStatus, StepStatus
from .step import _CURSOR, SagaStepResult, StepCursor
from .store._common import check_saga_id
from .store._responses import journal_entry
from .store.base import JournalEntry, Lease, RawEntry, SagaStore, is_conditional

__all__ = ["SagaResult"]

_log = logging.getLogger("fallback_saga")

ContextT = TypeVar("ContextT")
T = TypeVar("T")

# Raw journal entries hold a status as its plain value (see store.base.RawEntry).
_STARTED: str = StepStatus.STARTED.value
_COMPLETED: str = StepStatus.COMPLETED.value
_FAILED: str = StepStatus.FAILED.value
_CANCELLED: str = StepStatus.CANCELLED.value
# A saga's statuses as the hot path sets them: a module global is read for
# free, an enum's member through its class costs ~45 ns on CPython 3.11.
_RUNNING = SagaStatus.RUNNING
_SAGA_COMPLETED = SagaStatus.COMPLETED
_COMPENSATING = SagaStatus.COMPENSATING
_COMPENSATED = SagaStatus.COMPENSATED
_SAGA_FAILED = SagaStatus.FAILED
_now = time.time
# Python 3.12+: a task can start at once, in the caller's step (see shielding.own_task).
_EAGER_TASKS = sys.version_info >= (3, 12)


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[ContextT]):
    """A saga that completed: every step's ``act`` returned."""

    saga_id: str
    status: SagaStatus
    context: ContextT
    results: list[SagaStepResult[ContextT, Any]]


_new_object = object.__new__
_RESULT_SLOTS = tuple(
    SagaResult.__dict__[name].__set__ for name in ("saga_id", "status", "context", "results")
)


def _saga_result(
    saga_id: str, status: SagaStatus, context: Any, results: list[Any]
) -> SagaResult[Any]:
    """``SagaResult(...)`` without its generated ``__init__`` (four
    ``object.__setattr__`` calls: a frozen dataclass's), on every completed run."""
    result: SagaResult[Any] = _new_object(SagaResult)
    set_id, set_status, set_context, set_results = _RESULT_SLOTS
    set_id(result, saga_id)
    set_status(result, status)
    set_context(result, context)
    set_results(result, results)
    return result


_new_tuple = tuple.__new__


# --------------------------------------------------------------------------- saga ids


def _new_id_prefix() -> str:
    raw = os.urandom(10).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-"


# The counter starts at 16**12, so that hex() of it is "0x1" and then twelve
# digits: the id's last group is hex(n)[3:], which is cheaper than formatting
# n with a width (an f-string's format spec is a call of its own). It would
# wrap after 16**12 ids (2.8e14: 89 years at 100,000 sagas/s).
_ID_BASE = 16**12
_id_prefix = _new_id_prefix()
_id_counter = itertools.count(_ID_BASE + 1)


def _reseed_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix = _new_id_prefix()
    _id_counter = itertools.count(_ID_BASE + 1)


os.register_at_fork(after_in_child=_reseed_ids_after_fork)


def new_saga_id() -> str:
    """A unique saga id, shaped like a UUID: 80 random bits drawn once per
    process (and again after ``fork``) followed by a counter. ``uuid4()``
    costs a system call per id — more than a whole saga step here."""
    return _id_prefix + hex(next(_id_counter))[3:]


# --------------------------------------------------------------------------- the plan


class Branch:
    """One step, built and ready to call (a plain step, or one side of a Fallback)."""

    __slots__ = ("act", "branch", "compensate", "name", "plain", "position", "retry", "timeout")

    def __init__(
        self,
        position: int,
        name: str,
        branch: Literal["primary", "fallback"],
        step: Any,
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> None:
        self.position = position
        self.name = name
        self.branch = branch
        self.act: Callable[[Any], Awaitable[Any]] = step.act
        self.compensate: Callable[[Any], Awaitable[Any]] = step.compensate
        self.timeout = timeout
        self.retry = retry
        # Neither retried nor timed: the executor may run it inlined.
        self.plain = retry is None and timeout is None


class FallbackPlan:
    __slots__ = ("any_exception", "breaker", "fallback", "plain", "position", "primary", "rule")

    def __init__(self, rule: Fallback, primary: Branch, fallback: Branch) -> None:
        self.position = primary.position
        self.rule = rule
        self.primary = primary
        self.fallback = fallback
        self.breaker: CircuitBreakerProtocol | None = rule.circuit_breaker
        self.plain = self.breaker is None and primary.plain and fallback.plain
        # No failure_exceptions: rule.should_fall_back(error) is then
        # isinstance(error, Exception), which the inlined path tests itself.
        self.any_exception = not rule.failure_exceptions


Member = Branch | FallbackPlan


class GroupPlan:
    """A ``Parallel`` group: members run concurrently, each in a ``Lane``."""

    __slots__ = ("members", "positions")

    def __init__(self, members: tuple[Member, ...]) -> None:
        self.members = members
        self.positions = range(members[0].position, members[-1].position + 1)


PlanItem = Branch | FallbackPlan | GroupPlan


class LaneCursor(StepCursor):
    """A group member's cursor: ``current_step()`` names the member; the run
    it belongs to stays reachable (a ``SubSaga`` member needs its store)."""

    __slots__ = ("execution",)

    def __init__(self, execution: Execution) -> None:
        # StepCursor's fields, set here (one call fewer per member)
        self.saga_id = execution.saga_id
        self.saga_name = execution.saga_name
        self.step = ""
        self.action = "act"
        self.attempt = 0
        self.active = False
        self.execution = execution


def running_execution() -> Execution | None:
    """The run whose step is executing in this task, if any (for ``SubSaga``)."""
    cursor = _CURSOR.get()
    if isinstance(cursor, Execution):
        return cursor
    if isinstance(cursor, LaneCursor):
        return cursor.execution
    return None


class Lane:
    """Where one member of a ``Parallel`` group runs: its own cursor (so that
    ``current_step()`` in each member names that member) and its own copy of
    the context (so that no member can erase a sibling's writes)."""

    __slots__ = ("called", "context", "cursor", "durable", "first")

    def __init__(self, cursor: StepCursor, context: Any, first: Branch) -> None:
        self.cursor = cursor
        self.context = context
        self.called = False  # the current attempt's act was called (not only queued)
        # The current attempt's STARTED is durable already: no write before the
        # act (a sibling's pending completion need not wait for it, nor it for that).
        self.durable = False
        self.first: Branch | None = first  # its first STARTED is in the group's write-ahead


class GroupRun:
    """What the members of one running group share: the context as the group
    began (``base``), which member wrote which field, the failures, and how
    many members are still running (the last to finish, or the first to
    fail, wakes the group: ``waiter``)."""

    __slots__ = ("base", "failures", "flat", "remaining", "waiter", "writes")

    def __init__(self, base: Snapshot, members: int) -> None:
        self.base = base
        self.flat = flat_state(base)  # the state itself, for a flat context
        self.writes: dict[str, str] = {}  # context field -> the member that wrote it
        self.failures: list[tuple[str, BaseException]] = []
        self.remaining = members
        self.waiter: asyncio.Future[None] | None = None

    def member_done(self, failed: bool) -> None:
        """A member's last act (its task is done right after)."""
        self.remaining -= 1
        waiter = self.waiter
        if waiter is not None and (failed or not self.remaining) and not waiter.done():
            waiter.set_result(None)


class Hooks:
    """Listener callables per hook; an empty tuple means nobody listens."""

    __slots__ = (*HOOK_NAMES, "listeners", "silent")

    def __init__(self, listeners: tuple[object, ...]) -> None:
        self.listeners = listeners
        for name in HOOK_NAMES:
            setattr(self, name, collect_hooks(listeners, name))
        # Nobody listens to anything: a run need not look for a hook at all.
        self.silent = not any(getattr(self, name) for name in HOOK_NAMES)

    saga_started: tuple[Hook, ...]
    saga_finished: tuple[Hook, ...]
    step_started: tuple[Hook, ...]
    step_completed: tuple[Hook, ...]
    step_failed: tuple[Hook, ...]
    fallback_taken: tuple[Hook, ...]
    compensation_started: tuple[Hook, ...]
    compensation_completed: tuple[Hook, ...]
    compensation_failed: tuple[Hook, ...]
    saga_interrupted: tuple[Hook, ...]
    saga_resumed: tuple[Hook, ...]
    step_call_started: tuple[Hook, ...]
    step_call_finished: tuple[Hook, ...]
    breaker_state_changed: tuple[Hook, ...]


class JournalWriteFailed(BaseException):
    """Internal: the store failed a write-ahead for good (after the retries).

    A ``BaseException`` on purpose: raised inside a breaker-guarded call, it
    must not count against the downstream service, trigger a fallback or be
    retried. The executor unwraps it.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


# --------------------------------------------------------------------------- the run


class RunSettings:
    """What every run of one saga instance shares: built once per ``Saga``,
    so that starting a run copies three references instead of ten values."""

    __slots__ = (
        "compensation_retry",
        "conditional",
        "fingerprint",
        "hooks",
        "inline",
        "inline_steps",
        "inline_writes",
        "journal_retry",
        "journal_timeout",
        "live",
        "saga_name",
        "store",
        "submitted_writes",
    )

    def __init__(
        self,
        *,
        saga_name: str,
        fingerprint: str,
        store: SagaStore,
        hooks: Hooks,
        compensation_retry: RetryPolicy,
        live: bool,
        journal_retry: RetryPolicy | None = None,
        journal_timeout: float | None = DEFAULT_JOURNAL_TIMEOUT,
    ) -> None:
        self.saga_name = saga_name
        self.fingerprint = fingerprint
        self.store = store
        self.hooks = hooks
        self.compensation_retry = compensation_retry
        self.live = live  # the store is a LiveJournal
        self.journal_retry = journal_retry or DEFAULT_JOURNAL_RETRY
        self.journal_timeout = journal_timeout
        self.inline_writes = not live and writes_outlive_cancellation(store)
        # ... and queued by a plain call that returns the write's future.
        self.submitted_writes = self.inline_writes and submits_writes(store)
        # Appends made on the condition of the journal's length: a retried
        # in-doubt write can never be journaled twice.
        self.conditional = not live and is_conditional(store)
        # Plain steps run inlined in Execution.run_all when no listener is to
        # be told of each step, on any store; a group's plain members
        # (Execution._run_member) on an in-process store only.
        self.inline_steps = not (
            hooks.step_started or hooks.step_completed
            or hooks.step_call_started or hooks.step_call_finished
        )
        self.inline = live and self.inline_steps


class Execution(StepCursor):
    """The state of one saga run. Not reusable; not shared between tasks.

    It is also the run's ``StepCursor`` (what ``current_step()`` reads) and,
    for an in-process store, the live record the store watches.

    On an in-process store (``live``) a run is started on the hot path of
    every saga, so only what such a run reads is set; the write-ahead
    bookkeeping (``written``, ``pending_status``, ``fence``, ...) is set for a
    write-ahead store only, and only its code reads it.
    """

    __slots__ = (
        "abandoned",
        "branch_errors",
        "context",
        "context_dirty",
        "context_refused",
        "created",
        "created_at",
        "fence",
        "fingerprint",
        "hooks",
        "image",
        "initial_context",
        "interruption",
        "journal",
        "journaled_status",
        "landed_unseen",
        "live",
        "pending_status",
        "primary_error",
        "results",
        "resumed",
        "scalars",
        "settings",
        "shape",
        "stack",
        "status",
        "store",
        "write_lock",
        "written",
    )

    def __init__(
        self,
        settings: RunSettings,
        context: Any,
        saga_id: str | None = None,
        fence: Lease | None = None,
    ) -> None:
        # A given id no store can hold is refused here, before anything runs,
        # rather than by the store's first write (or not at all in memory).
        self.saga_id = saga_id = (
            _id_prefix + hex(next(_id_counter))[3:]  # new_saga_id(), inlined
            if saga_id is None else check_saga_id(saga_id)
        )
        # StepCursor's fields, set here (one call fewer per run)
        self.saga_name = settings.saga_name
        self.step = ""
        self.action = "act"
        self.attempt = 0
        self.active = False
        self.settings = settings
        self.fingerprint = settings.fingerprint  # LiveSaga's (read once, by the store, at the end)
        self.context = context
        self.store = settings.store
        self.hooks = settings.hooks
        self.live = live = settings.live
        self.stack: list[Branch] = []
        self.results: list[SagaStepResult[Any, Any]] = []
        self.journal: list[RawEntry] = []
        # A compact journal's plan shape (run_plain's: see compact_journal), else None.
        self.shape: Shape | None = None
        self.status = _RUNNING
        self.image: Any = None  # a step snapshot; once finished, what freeze_context gave
        self.created_at = _now()
        self.created = False
        self.resumed = False
        self.context_dirty = False
        self.branch_errors: dict[str, BaseException] | None = None  # of a failed group
        # Set while a Parallel group runs: its members write one at a time.
        self.write_lock: asyncio.Lock | None = None
        # The status the journal holds (None until the creation is durable),
        # and the store failure that stopped this run, if one did (S13).
        self.journaled_status: SagaStatus | None = None
        self.interruption: BaseException | None = None
        # The interrupting write may have landed unseen: the status it carried.
        self.landed_unseen: SagaStatus | None = None
        self.abandoned: LeaseLost | None = None
        # An inlined Fallback's primary error while its fallback runs (see _falls_back).
        self.primary_error: BaseException | None = None
        # S12: a context the journal cannot hold is refused before any step runs
        # — by every store, so that moving from memory to SQLite holds no surprise.
        if live:
            # check_serializable's fast path inlined: a flat dataclass of JSON scalars.
            state = getattr(context, "__dict__", None)
            # Kept: run_plain's first snapshot needs no scan of its own then.
            self.scalars = scalars = (
                state is not None
                and context.__class__ in FIELD_PLANS
                and _JSON_SCALARS.issuperset(map(type, state.values()))
            )
            if not scalars:
                check_serializable(context)
            return
        self.scalars = False
        self.initial_context: dict[str, Any] | None = context_to_dict(context)
        self.written = 0  # journal entries a write-ahead store already has
        self.pending_status: SagaStatus | None = None
        self.context_refused = False  # the store refused the context a step left
        # Every write is conditional on the fencing token: 0 for a first run
        # (so that a recovery worker claiming the saga — token 1 — shuts this
        # runner out if it is merely slow), the lease's token when resumed.
        # (An in-process store is never written to: no lease to make per run.)
        self.fence: Lease = Lease(saga_id, "", 0, math.inf) if fence is None else fence

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        if self.live:
            self.store.track(self, replace=self.resumed)  # type: ignore[attr-defined]
            self.created = True
        if self.hooks.saga_started:
            emit(self.hooks.saga_started, self.saga_id, self.saga_name)
        if self.resumed and self.hooks.saga_resumed:
            emit(self.hooks.saga_resumed, self.saga_id, self.saga_name)

    async def run_all(
        self,
        plan: tuple[PlanItem, ...],
        start: int = 0,
        fallback_first: bool = False,
        resumed_group: dict[int, SagaStepResult[Any, Any]] | None = None,
        fallbacks_started: frozenset[int] = frozenset(),
    ) -> SagaResult[Any]:
        """Run ``plan`` from item ``start`` (0, or where a resumed run stopped);
        ``fallback_first``: the step at ``start`` had already handed over to its
        fallback, so resume with the fallback. When ``plan[start]`` is a group
        a resumed run stopped in: ``resumed_group`` holds the results of its
        members that completed (by position: they do not run again), and
        ``fallbacks_started`` the positions of members resumed with their fallback."""
        # begin(), inlined
        if self.live:
            self.store.track(self, replace=self.resumed)  # type: ignore[attr-defined]
            self.created = True
        hooks = self.hooks
        if hooks.saga_started:
            emit(hooks.saga_started, self.saga_id, self.saga_name)
        if self.resumed and hooks.saga_resumed:
            emit(hooks.saga_resumed, self.saga_id, self.saga_name)
        token = _CURSOR.set(self)
        try:
            results = self.results
            if fallback_first:
                resumed: FallbackPlan = plan[start]  # type: ignore[assignment]
                snapshot = self.image = step_snapshot(self.context)
                response = await self.try_branch(resumed.fallback, snapshot, None)
                if not isinstance(response, SagaStepResult):
                    response = SagaStepResult(response, resumed.fallback.name, self.saga_id)
                results.append(response)
                start += 1
            elif resumed_group is not None:
                group: GroupPlan = plan[start]  # type: ignore[assignment]
                results += await self.run_group(group, resumed_group, fallbacks_started)
                start += 1
            # A step with no retry, timeout or breaker, with no step listener,
            # runs inlined below: try_branch's work (and run_fallback's), less
            # their coroutines and checks.
            inline = self.settings.inline_steps
            live = self.live
            context = self.context
            journal = self.journal
            stack = self.stack
            # A flat context (its state is its __dict__): step_snapshot's fast
            # path is inlined below, one call fewer per step.
            flat = _DICT_ONLY.get(context.__class__)
            item: Any  # a PlanItem (Any: the checks below are by exact class, for speed)
            branch: Branch
            for item in plan[start:] if start else plan:
                # run_item, inlined: this loop is the hottest path of the library
                kind = item.__class__
                if kind is GroupPlan:
                    results += await self.run_group(item)
                    continue
                if flat and _IMMUTABLE.issuperset(map(type, (state := context.__dict__).values())):
                    snapshot = self.image = state.copy()
                else:
                    snapshot = self.image = step_snapshot(context)
                if inline and item.plain:
                    branch = item if kind is Branch else item.primary
                    while True:
                        self.step = name = branch.name
                        self.attempt = 1
                        journal.append((branch.position, name, branch.branch, "act", _STARTED,
                                        1, None, _now(), None))
                        self.action = "act"
                        try:
                            if not live:
                                await self.flush()  # the write-ahead: STARTED is durable first
                            self.active = True
                            response = await branch.act(context)
                        except JournalWriteFailed:
                            raise  # the act never ran: nothing to record or fall back from
                        except BaseException as error:
                            self.active = False
                            restore_step(context, snapshot)
                            self._act_failed(branch, 1, error)
                            if kind is Branch or not self._falls_back(item, branch, error):
                                raise
                            branch = item.fallback
                            continue
                        break
                    self.active = False
                    if kind is not Branch:
                        self.primary_error = None  # the fallback (if it ran) completed
                    # The journal keeps the response itself, not the SagaStepResult
                    # around it (one object fewer for the collector per retained step).
                    if response.__class__ is SagaStepResult:
                        journal.append((branch.position, name, branch.branch, "act", _COMPLETED,
                                        1, None, _now(), response[0]))
                    else:
                        journal.append((branch.position, name, branch.branch, "act", _COMPLETED,
                                        1, None, _now(), response))
                        response = _new_tuple(SagaStepResult, (response, name, self.saga_id))
                    self.context_dirty = True
                    stack.append(branch)
                    results.append(response)
                    continue
                elif kind is Branch:
                    branch = item
                    response = await self.try_branch(branch, snapshot, None)
                else:
                    branch, response = await self.run_fallback(item, snapshot)
                if not isinstance(response, SagaStepResult):
                    response = _new_tuple(SagaStepResult, (response, branch.name, self.saga_id))
                results.append(response)
        except (Exception, JournalWriteFailed) as error:
            await self.fail(error)
        except asyncio.CancelledError:
            await self.abort()
            raise
        finally:
            _CURSOR.reset(token)
        if self.live:
            return self.complete_live()  # one coroutine fewer
        return await self.complete()

    async def run_plain(self, plan: tuple[PlanItem, ...], shape: Shape) -> SagaResult[Any]:
        """``run_all`` for the commonest saga (``Saga._runs_plain``): a fresh
        run on a ``MemorySagaStore`` (exactly: its ``retire_run`` is called),
        nobody listening, every step plain (a ``Branch`` or a
        ``FallbackPlan`` with no retry, timeout or breaker).

        The same transitions in the same order as ``run_all``'s inlined loop
        (``tests/test_inline_path_equivalence.py`` runs a saga both ways),
        less what that loop asks of every step and every run for the sagas
        this one never sees: groups, resumes, listeners, write-ahead stores.
        Worth 2-5 % of such a saga, 4-6 % with ``MemorySagaStore.retire_run``
        (benchmarks/README.md, seventh pass).

        Its journal is compact (``compact_journal``): a forward step's STARTED
        and COMPLETED rows are their clock readings only, which ``shape`` (the
        plan's) and ``results`` complete when the store reads them; every
        other row is whole."""
        self.shape = shape
        self.store.track(self)  # type: ignore[attr-defined]
        self.created = True
        context = self.context
        journal: list[Any] = self.journal  # compact: clock readings and whole rows
        stack = self.stack
        results = self.results
        saga_id = self.saga_id
        flat = _DICT_ONLY.get(context.__class__)
        # S12's check (__init__) has just found JSON scalars only, all of them
        # immutable: the first step's snapshot is a copy with no scan of its own.
        scanned = flat and self.scalars
        token = _CURSOR.set(self)
        try:
            item: Any  # a Branch or a FallbackPlan (Any: told apart by exact class)
            branch: Branch
            for item in plan:
                if scanned:
                    scanned = False
                    snapshot = self.image = context.__dict__.copy()
                elif flat and _IMMUTABLE.issuperset(
                    map(type, (state := context.__dict__).values())
                ):
                    snapshot = self.image = state.copy()
                else:
                    snapshot = self.image = step_snapshot(context)
                branch = item if item.__class__ is Branch else item.primary
                while True:
                    self.step = name = branch.name
                    self.attempt = 1
                    journal.append(_now())  # STARTED, compact
                    self.action = "act"
                    self.active = True
                    try:
                        response = await branch.act(context)
                    except BaseException as error:
                        self.active = False
                        restore_step(context, snapshot)
                        self._act_failed(branch, 1, error)
                        # A plain step's failure, or a Fallback's that does not fall back.
                        if item is branch or not self._falls_back(item, branch, error):
                            raise
                        branch = item.fallback
                        continue
                    break
                self.active = False
                if item is not branch:
                    self.primary_error = None  # a Fallback's: the fallback (if it ran) completed
                journal.append(_now())  # COMPLETED, compact: its response is in results
                if response.__class__ is not SagaStepResult:
                    response = _new_tuple(SagaStepResult, (response, name, saga_id))
                stack.append(branch)
                results.append(response)
        except Exception as error:
            await self.fail(error)
        except asyncio.CancelledError:
            await self.abort()
            raise
        finally:
            _CURSOR.reset(token)
        # complete_live, inlined (nobody to tell); the store is a MemorySagaStore
        self.status = _SAGA_COMPLETED
        if not self.store.retire_run(self, context):  # type: ignore[attr-defined]
            self.image = freeze_context(context)
            self.store.finished(self)  # type: ignore[attr-defined]
        return _saga_result(saga_id, _SAGA_COMPLETED, context, results)

    async def run_item(self, item: PlanItem) -> list[SagaStepResult[Any, Any]]:
        """One element of ``steps``: its result (a group's: one per member)."""
        if isinstance(item, GroupPlan):
            return await self.run_group(item)
        snapshot = self.image = step_snapshot(self.context)
        if isinstance(item, Branch):
            branch = item
            response = await self.try_branch(branch, snapshot, None)
        else:
            branch, response = await self.run_fallback(item, snapshot)
        if isinstance(response, SagaStepResult):
            return [response]
        return [SagaStepResult(response=response, step_name=branch.name, saga_id=self.saga_id)]

    def complete_live(self) -> SagaResult[Any]:
        """``complete`` on an in-process store: nothing to await."""
        # The final state, frozen (no snapshot to take when it is flat).
        self.image = freeze_context(self.context)
        self.status = _SAGA_COMPLETED
        self.store.finished(self)  # type: ignore[attr-defined]
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, None)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def complete(self) -> SagaResult[Any]:
        if self.live:
            return self.complete_live()
        # S13: the caller hears "completed" only once the journal says so.
        self.pending_status = SagaStatus.COMPLETED
        failure: JournalWriteFailed | None = None
        try:
            await self.flush()
        except JournalWriteFailed as error:
            failure = error
        if failure is not None:
            if isinstance(failure.error, ContextSerializationError):
                # The last step left a context the journal cannot hold.
                await self.fail(failure)
            raise self._interrupted(failure.error)
        self.status = SagaStatus.COMPLETED
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, None)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def resume_unwinding(self, failed_step: str, error: BaseException) -> NoReturn:
        """Finish the unwinding a crashed run had begun; never runs a forward step."""
        self.begin()
        self.step = failed_step
        token = _CURSOR.set(self)
        try:
            await self.fail(error)
        finally:
            _CURSOR.reset(token)

    async def fail(self, error: BaseException) -> NoReturn:
        """Unwind after ``error`` stopped the saga, then raise ``SagaFailed`` (S7).

        When the error is the journal's own (the store kept refusing a write),
        nothing is unwound: a compensation must not run unless the journal
        can hold its record, so the run stops and leaves the saga for
        recovery (``SagaInterrupted``)."""
        if isinstance(error, JournalWriteFailed):
            cause = error.error
            if not isinstance(cause, ContextSerializationError) or not self.created:
                raise self._interrupted(cause)
            error = cause  # a step left a context the journal cannot hold: unwind
        failed_step = self.step
        try:
            compensation_errors = await shielded(self.unwind())
        except asyncio.CancelledError:
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())
            raise
        if self.interruption is not None:
            raise self._interrupted(self.interruption, failure=error)
        self._announce_finish(error)
        raise SagaFailed(
            saga_id=self.saga_id,
            saga_name=self.saga_name,
            status=self.status,
            failed_step=failed_step,
            error=error,
            compensation_errors=compensation_errors,
            branch_errors=self.branch_errors,
        ) from error

    async def abort(self) -> None:
        """The task was cancelled mid-step: unwind; the caller re-raises."""
        try:
            await shielded(self.unwind())
        finally:
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())

    def _stopped(
        self, error: BaseException, failure: BaseException | None = None
    ) -> BaseException:
        """What the caller gets when the journal failed: ``LeaseLost`` when
        another worker owns the saga now (it goes on driving it),
        ``SagaAlreadyExists`` when the saga could not even be created because
        its id is taken, else ``SagaInterrupted``."""
        if isinstance(error, LeaseLost):
            return error
        if isinstance(error, SagaAlreadyExists | ContextSerializationError) and (
            self.journaled_status is None
        ):
            return error  # nothing was journaled, nothing ran
        interrupted = SagaInterrupted(
            saga_id=self.saga_id,
            saga_name=self.saga_name,
            status=self.journaled_status,
            error=error,
            failure=failure,
            in_doubt=self.landed_unseen is not None,
            status_if_landed=self.landed_unseen,
        )
        interrupted.__cause__ = error
        return interrupted

    def _interrupted(
        self, error: BaseException, failure: BaseException | None = None
    ) -> BaseException:
        """``_stopped``, announced to the listeners (``saga_interrupted``)."""
        stopped = self._stopped(error, failure)
        self._announce_finish(stopped)
        return stopped

    def _report_interruption(self) -> None:
        # A cancelled caller gets CancelledError whatever happened; a journal
        # that failed meanwhile must still be told to someone.
        error = self.interruption
        if error is not None and not isinstance(error, LeaseLost):
            _log.error("%s", self._stopped(error))

    def abandon(self, reason: LeaseLost) -> None:
        """Stop driving this saga *without* unwinding it: another worker owns it
        now (the lease was lost), or this worker hands it off on shutdown.

        From now on every write is refused with ``reason`` — locally, without
        asking a store that may be unreachable — and no further ``compensate``
        is called: compensating a saga someone else drives would race them.
        The caller then cancels the task running the saga.
        """
        self.abandoned = reason

    def _announce_finish(self, error: BaseException | None) -> None:
        if self.status.is_final:
            if self.hooks.saga_finished:
                emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, error)
        elif self.hooks.saga_interrupted:  # stopped short of a final status: see _stopped
            emit(self.hooks.saga_interrupted, self.saga_id, self.saga_name,
                 self.journaled_status, error if error is not None else self.interruption)

    # ------------------------------------------------------------------ forward

    async def run_fallback(
        self, plan: FallbackPlan, snapshot: StepSnapshot, lane: Lane | None = None
    ) -> tuple[Branch, Any]:
        """``plan``'s primary, then its fallback if the primary fails (S3);
        ``snapshot``: the context as the step began (the lane's, in a group)."""
        rule = plan.rule
        try:
            return plan.primary, await self.try_branch(plan.primary, snapshot, plan, lane)
        except Exception as error:
            if not rule.should_fall_back(error):
                raise
            primary_error = error
        if self.hooks.fallback_taken:
            emit(
                self.hooks.fallback_taken,
                self.saga_id,
                plan.primary.name,
                plan.fallback.name,
                primary_error,
            )
        try:
            return plan.fallback, await self.try_branch(plan.fallback, snapshot, None, lane)
        except Exception as error:
            # S4: keep both errors; the fallback's chains the primary's.
            if error is not primary_error:
                if error.__cause__ is None:
                    error.__cause__ = primary_error
                elif error.__context__ is None:
                    error.__context__ = primary_error
            raise
        finally:
            del primary_error  # see _act_failed: no error kept alive by a frame local

    async def try_branch(
        self,
        branch: Branch,
        snapshot: StepSnapshot,
        plan: FallbackPlan | None,
        lane: Lane | None = None,
    ) -> Any:
        """Run ``branch.act`` (under the breaker, with retries); on success push it.

        Whatever happens, a failed try leaves the context as the snapshot had it.
        ``lane``: a member of a ``Parallel`` group, run on the lane's context
        and cursor (whose first STARTED the group journaled already).
        """
        breaker = plan.breaker if plan is not None else None
        hooks = self.hooks
        journal = self.journal
        if lane is None:
            cursor: StepCursor = self
            context = self.context
        else:
            cursor = lane.cursor
            context = lane.context
        attempt = 1
        while True:
            cursor.step = branch.name
            cursor.attempt = attempt
            if lane is None or lane.first is not branch:
                journal.append(
                    (branch.position, branch.name, branch.branch, "act", _STARTED, attempt, None,
                     _now(), None)
                )
                if lane is not None:
                    lane.durable = lane.called = False
            else:
                lane.first = None
                lane.durable = True  # the group's write-ahead made this STARTED durable
                lane.called = False
            if hooks.step_started:
                emit(hooks.step_started, self.saga_id, branch.name, attempt)
            try:
                if breaker is not None:
                    response = await breaker.call(self.act, branch, lane)
                elif hooks.step_call_started or hooks.step_call_finished:
                    response = await self.act(branch, lane)  # which reports the call
                else:  # self.act, inlined (one coroutine less per step)
                    if not self.live and (lane is None or not lane.durable):
                        await self.flush()
                    cursor.action = "act"
                    cursor.active = True
                    if lane is not None:
                        lane.called = True
                    try:
                        if branch.timeout is None:
                            response = await branch.act(context)
                        else:
                            async with asyncio.timeout(branch.timeout):
                                response = await branch.act(context)
                    finally:
                        cursor.active = False
            except JournalWriteFailed:
                raise  # the act never ran: nothing to record, retry or fall back from
            except BaseException as error:
                restore_step(context, snapshot)
                if lane is not None and lane.called and isinstance(error, asyncio.CancelledError):
                    self._act_cancelled(branch, attempt)
                    raise
                self._act_failed(branch, attempt, error)
                retry = branch.retry
                if (
                    retry is None
                    or not retry.should_retry(error, attempt)
                    or (plan is not None and plan.rule.is_open_circuit(error))
                ):
                    raise
                attempt += 1
                await retry.wait_before(attempt)
                continue
            journal.append(
                (branch.position, branch.name, branch.branch, "act", _COMPLETED, attempt, None,
                 _now(), response)
            )
            if lane is None:
                self.context_dirty = True  # (a lane's context is merged by its group)
            self.stack.append(branch)
            if hooks.step_completed:
                emit(hooks.step_completed, self.saga_id, branch.name)
            return response

    def _act_failed(self, branch: Branch, attempt: int, error: BaseException) -> None:
        # A function of its own so that no frame local of the retry loop keeps
        # the error alive (error -> traceback -> frame -> error is a cycle the
        # garbage collector would have to find, for every failed step).
        text = str(error)  # _describe(error), inlined: every failed act comes here
        self.journal.append(
            (branch.position, branch.name, branch.branch, "act", _FAILED, attempt,
             f"{type(error).__name__}: {text}" if text else type(error).__name__, _now(), None)
        )
        if self.hooks.step_failed:
            emit(self.hooks.step_failed, self.saga_id, branch.name, error)

    def _falls_back(self, plan: FallbackPlan, failed: Branch, error: BaseException) -> bool:
        """For the inlined run of a Fallback: whether ``failed`` (which raised
        ``error``) hands over to the fallback now (S3). When it was the
        fallback that failed, it chains the primary's error to ``error`` (S4),
        which the caller then raises."""
        if failed is plan.primary:
            if plan.any_exception:
                if not isinstance(error, Exception):
                    return False  # cancellation, KeyboardInterrupt, SystemExit: never
            elif not plan.rule.should_fall_back(error):
                return False
            if self.hooks.fallback_taken:
                emit(self.hooks.fallback_taken, self.saga_id, failed.name, plan.fallback.name,
                     error)
            # Kept on the run until the fallback is done: S4 chains it to the
            # fallback's error, if the fallback fails too.
            self.primary_error = error
            return True
        primary_error, self.primary_error = self.primary_error, None
        if primary_error is not None and error is not primary_error:
            if error.__cause__ is None:
                error.__cause__ = primary_error
            elif error.__context__ is None:
                error.__context__ = primary_error
        return False

    def _act_cancelled(self, branch: Branch, attempt: int) -> None:
        # A group member's act cancelled in flight (a sibling failed, or the
        # caller was cancelled): its effect is uncertain, so it is compensated
        # like a completed act — journaled CANCELLED, which resume_point puts
        # on the compensation stack too.
        self.journal.append(
            (branch.position, branch.name, branch.branch, "act", _CANCELLED, attempt,
             "CancelledError: cancelled while its act ran; its effect is uncertain", _now(),
             None)
        )
        self.stack.append(branch)

    async def act(self, branch: Branch, lane: Lane | None = None) -> Any:
        # Runs inside the breaker (when there is one): the write-ahead happens
        # only for a call that is let through, and a rejected call's rows are
        # written together with whatever comes next.
        if not self.live and (lane is None or not lane.durable):
            await self.flush()
        if lane is None:
            cursor: StepCursor = self
            context = self.context
        else:
            cursor = lane.cursor
            context = lane.context
            lane.called = True
        cursor.action = "act"
        cursor.active = True
        call = self._call_started(branch, "act", cursor.attempt)
        try:
            if branch.timeout is None:
                response = await branch.act(context)
            else:
                async with asyncio.timeout(branch.timeout):
                    response = await branch.act(context)
        except BaseException as error:
            if call is not None:
                self._call_finished(call, error)
            raise
        finally:
            cursor.active = False
        if call is not None:
            self._call_finished(call, None)
        return response

    def _call_started(
        self, branch: Branch, action: Literal["act", "compensate"], attempt: int
    ) -> StepCall | None:
        """The ``StepCall`` reported to ``step_call_*`` listeners; None if none listen."""
        hooks = self.hooks
        if not (hooks.step_call_started or hooks.step_call_finished):
            return None
        call = StepCall(self.saga_id, self.saga_name, branch.name, action, attempt, branch.branch)
        if hooks.step_call_started:
            emit(hooks.step_call_started, call)
        return call

    def _call_finished(self, call: StepCall, error: BaseException | None) -> None:
        if self.hooks.step_call_finished:
            emit(self.hooks.step_call_finished, call, error)

    # ------------------------------------------------------------------ groups

    async def run_group(
        self,
        group: GroupPlan,
        resumed: dict[int, SagaStepResult[Any, Any]] | None = None,
        fallbacks_started: frozenset[int] = frozenset(),
    ) -> list[SagaStepResult[Any, Any]]:
        """Run a ``Parallel`` group's members concurrently, each in its own
        ``Lane``; their results, in the members' declared order.

        ``resumed``: results of members a crashed run completed (they do not
        run again); ``fallbacks_started``: positions of members to resume
        with their fallback. Every member's first STARTED is made durable in
        one write before any of them runs. When one fails for good, the others
        are cancelled and waited for; the group then raises that member's
        error (``branch_errors`` keeps every member's). A cancelled caller
        waits for every member to stop before the unwinding begins (S8)."""
        base = self.image = take_snapshot(self.context)
        todo: list[tuple[Member, Branch]] = []
        now = _now()
        journal = self.journal
        for member in group.members:
            if resumed is not None and member.position in resumed:
                continue
            if member.__class__ is Branch:
                first: Branch = member
            elif member.position in fallbacks_started:
                first = member.fallback  # type: ignore[union-attr]
            else:
                first = member.primary  # type: ignore[union-attr]
            todo.append((member, first))
            journal.append(
                (first.position, first.name, first.branch, "act", _STARTED, 1, None, now, None)
            )
        if not self.live:
            try:
                await self.flush()  # the group's write-ahead: one write for every member
            except asyncio.CancelledError:
                # Cancelled while it was written: no member ran. Say so, as a
                # step whose write-ahead was cancelled does (S13: the journal
                # ends saying what happened).
                now = _now()
                for _, first in todo:
                    journal.append(
                        (first.position, first.name, first.branch, "act", _FAILED, 1,
                         "CancelledError: cancelled before its act ran", now, None)
                    )
                raise
            self.write_lock = asyncio.Lock()
        run = GroupRun(base, len(todo))
        # Started eagerly where Python can (3.12+): a member that does not wait
        # has finished before the next one is made, without a trip through the
        # loop. Each task runs in a copy of this context: its own cursor.
        tasks = [own_task(self._run_member(member, first, run)) for member, first in todo]
        cancelled = False
        try:
            if run.remaining and not _EAGER_TASKS:
                # Python 3.11: the members start in the loop's next round. Let
                # each take its first step (most finish in it); then count
                # again, since one cancelled before it began never said it ended.
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    cancelled = True
                if run.remaining:
                    run.remaining = sum(not task.done() for task in tasks)
            if run.remaining and not (run.failures or cancelled):
                # Some member waits: the last one to finish (or the first to
                # fail) wakes us, as its last act — no callback per member.
                waiter = run.waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                except asyncio.CancelledError:
                    cancelled = True  # wait on: every member stops before unwinding
                run.waiter = None
            if run.remaining or run.failures or cancelled:
                # A member failed, or we were cancelled: stop the others, wait for all.
                pending = {task for task in tasks if not task.done()}
                stopping = False
                while True:
                    if (cancelled or run.failures) and not stopping:
                        stopping = True
                        for task in pending:
                            task.cancel()
                    if not pending:
                        break
                    try:
                        _, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_EXCEPTION
                        )
                    except asyncio.CancelledError:
                        cancelled = True
        finally:
            self.write_lock = None
        failures = run.failures
        if failures:
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: its error is in failures
        if cancelled:
            raise asyncio.CancelledError
        if failures:
            name, error = failures[0]
            self.step = name
            self.branch_errors = dict(failures)
            raise error
        if resumed is None:
            return [task.result() for task in tasks]
        done = dict(resumed)
        for task, (member, _) in zip(tasks, todo, strict=True):
            done[member.position] = task.result()
        return [done[member.position] for member in group.members]

    async def _run_member(
        self, member: Member, first: Branch, run: GroupRun
    ) -> SagaStepResult[Any, Any]:
        """One member of a group, in the task of its own that ``run_group`` made."""
        cursor = LaneCursor(self)
        cursor.step = first.name
        _CURSOR.set(cursor)  # this task's own context: current_step() names the member
        failed = False
        try:
            base = run.base
            state = run.flat
            if state is not None:
                # A flat context: the copy is a bare instance holding the group's
                # state, which is also what a failed try is restored from (S2).
                context = _new_object(base[0].__class__)
                context.__dict__.update(state)
                snapshot: StepSnapshot = state
            else:
                try:
                    context = working_copy(base)
                    snapshot = member_snapshot(base, context)
                except Exception as error:
                    # No copy of the context to run on (a class that cannot be
                    # made bare nor copied): the member fails before its act.
                    self._act_failed(first, 1, error)
                    raise
            if member.__class__ is Branch and member.plain and self.settings.inline:
                # try_branch's work for a plain step on an in-process store with
                # no step listener (as run_all inlines it), less its coroutine:
                # one attempt, its STARTED journaled by the group.
                branch: Branch = member
                cursor.step = branch.name
                cursor.attempt = 1
                cursor.active = True
                try:
                    response = await branch.act(context)
                except BaseException as error:
                    cursor.active = False
                    restore_step(context, snapshot)
                    if isinstance(error, asyncio.CancelledError):
                        self._act_cancelled(branch, 1)
                    else:
                        self._act_failed(branch, 1, error)
                    raise
                cursor.active = False
                self.journal.append(
                    (branch.position, branch.name, branch.branch, "act", _COMPLETED, 1, None,
                     _now(), response)
                )
                self.stack.append(branch)
            else:
                lane = Lane(cursor, context, first)
                if member.__class__ is Branch:
                    branch = member
                    response = await self.try_branch(branch, snapshot, None, lane)
                elif first is member.fallback:  # type: ignore[union-attr]
                    branch = first
                    response = await self.try_branch(first, snapshot, None, lane)
                else:
                    branch, response = await self.run_fallback(
                        member, snapshot, lane  # type: ignore[arg-type]
                    )
            # Completed (and on the compensation stack): its writes join the
            # saga's context now — unless a sibling changed the same field.
            if state is not None:
                changed = flat_changes(state, context.__dict__)
            else:
                changed = changed_fields(base, context)
            if changed:
                writes = run.writes
                for field in changed:
                    if field in writes:
                        raise ParallelWriteConflict(field, writes[field], branch.name)
                for field in changed:
                    writes[field] = branch.name
                if state is not None:
                    self.context.__dict__.update(changed)  # no slots: its state is its __dict__
                else:
                    write_fields(self.context, changed)
            self.context_dirty = True
            if not self.live:
                await self.flush()  # its completion, and its writes, made durable
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            failed = True
            run.failures.append((cursor.step, error))  # the last branch it tried
            raise
        finally:
            run.member_done(failed)
        if isinstance(response, SagaStepResult):
            return response
        return _new_tuple(SagaStepResult, (response, branch.name, self.saga_id))

    # ------------------------------------------------------------------ backward

    async def unwind(self) -> dict[str, BaseException]:
        """Compensate the stack in LIFO order (S5), retrying each (S6).

        Each compensation's STARTED record — and with the first one, the
        saga's COMPENSATING status — is durable before ``compensate`` is
        called (S13). When the journal cannot be written, the unwinding stops
        right there (``self.interruption``): the steps still on the stack are
        left for recovery to compensate, which it will, since the journal
        shows them completed and not compensated."""
        self.status = self.pending_status = _COMPENSATING
        errors: dict[str, BaseException] = {}
        stack = self.stack
        try:
            while stack:
                branch = stack[-1]
                error = await self.compensate(branch)
                stack.pop()
                if error is not None:
                    errors[branch.name] = error
            final = _SAGA_FAILED if errors else _COMPENSATED
            if self.live:
                self.status = final
                self.image = freeze_context(self.context)
                self.store.finished(self)  # type: ignore[attr-defined]
            else:
                self.pending_status = final
                await self.flush(unwinding=True)
                self.status = final
        except JournalWriteFailed as failure:
            self.interruption = failure.error
            self.status = self.journaled_status or SagaStatus.RUNNING
        return errors

    async def compensate(self, branch: Branch) -> BaseException | None:
        """Call ``branch.compensate`` under the retry policy; the final error, if any.

        Raises ``JournalWriteFailed`` — before calling ``compensate`` — when
        its STARTED record cannot be made durable."""
        hooks = self.hooks
        journal = self.journal
        policy = self.settings.compensation_retry
        attempt = 1
        while True:
            journal.append(
                (branch.position, branch.name, branch.branch, "compensate", _STARTED, attempt,
                 None, _now(), None)
            )
            self.step = branch.name
            self.action = "compensate"
            self.attempt = attempt
            if self.abandoned is not None:
                raise JournalWriteFailed(self.abandoned)
            if not self.live:
                await self.flush(unwinding=True)
            if hooks.compensation_started:
                emit(hooks.compensation_started, self.saga_id, branch.name, attempt)
            self.active = True
            call = self._call_started(branch, "compensate", attempt)
            try:
                if branch.timeout is None:
                    await branch.compensate(self.context)
                else:
                    async with asyncio.timeout(branch.timeout):
                        await branch.compensate(self.context)
            except Exception as error:
                if call is not None:
                    self._call_finished(call, error)
                if not policy.should_retry(error, attempt):
                    return self._compensation_failed(branch, attempt, error)
                journal.append(
                    (branch.position, branch.name, branch.branch, "compensate", _FAILED,
                     attempt, _describe(error), _now(), None)
                )
                attempt += 1
                await policy.wait_before(attempt)
                continue
            except asyncio.CancelledError as error:
                # Only the compensation itself can raise this here (the unwinding
                # task is shielded): it failed.
                if call is not None:
                    self._call_finished(call, error)
                return self._compensation_failed(branch, attempt, error)
            finally:
                self.active = False
            if call is not None:
                self._call_finished(call, None)
            journal.append(
                (branch.position, branch.name, branch.branch, "compensate", _COMPLETED, attempt,
                 None, _now(), None)
            )
            self.context_dirty = True
            if hooks.compensation_completed:
                emit(hooks.compensation_completed, self.saga_id, branch.name)
            return None

    def _compensation_failed(
        self, branch: Branch, attempt: int, error: BaseException
    ) -> BaseException:
        self.journal.append(
            (branch.position, branch.name, branch.branch, "compensate", _FAILED, attempt,
             _describe(error), _now(), None)
        )
        if self.hooks.compensation_failed:
            emit(self.hooks.compensation_failed, self.saga_id, branch.name, error)
        return error

    # ------------------------------------------------------------------ journal

    def context_image(self) -> dict[str, Any]:
        """``LiveSaga``: the context as of the last transition, in journal form."""
        if self.image is None:
            return context_to_dict(self.context)
        return step_snapshot_to_dict(self.context, self.image)

    def frozen_context(self) -> Any:
        """``LiveSaga`` (optional): the final context, for a store that keeps
        the finished saga as plain values (``context.frozen_to_dict`` reads
        it); None when it should keep the saga itself: a resumed run, whose
        journal holds entries in journal form, not raw ones."""
        if self.resumed:
            return None
        if self.image is None:
            return context_to_dict(self.context)
        return self.image

    def flush(self, *, unwinding: bool = False) -> Awaitable[None]:
        """``_flush``, one write at a time while the members of a group run.

        A plain function returning the coroutine to await: outside a group,
        that is ``_flush``'s own (one coroutine fewer per journal write)."""
        lock = self.write_lock
        if lock is None:
            return self._flush(unwinding)
        return self._flush_locked(lock, unwinding)

    async def _flush_locked(self, lock: asyncio.Lock, unwinding: bool) -> None:
        async with lock:
            await self._flush(unwinding)

    async def _flush(self, unwinding: bool) -> None:
        """Make every transition the store does not have yet durable (and the
        status and context when they changed): the write-ahead of the next
        call, or the terminal write.

        The write is retried under ``journal_retry`` and, once sent, runs to
        its end even if this task is cancelled meanwhile: the cancellation is
        raised afterwards, when the executor knows what the journal holds.
        Raises ``JournalWriteFailed`` when the write failed for good; from
        then on every write of this run fails the same way, at once.
        ``unwinding``: a context the journal cannot encode is left out (the
        last good one stays) rather than stopping the compensations.
        """
        if self.abandoned is not None:
            raise JournalWriteFailed(self.abandoned)
        if self.interruption is not None:
            raise JournalWriteFailed(self.interruption)
        journal = self.journal
        written = self.written
        status = self.pending_status
        if self.created and written == len(journal) and status is None:
            return
        saga_name = self.saga_name
        entries = [journal_entry(raw, saga_name) for raw in journal[written:]]
        try:
            context = self._encode_context(unwinding)
        except ContextSerializationError as error:
            raise JournalWriteFailed(error) from error
        # Clean from here: a group member that changes the context while this
        # write is in flight marks it dirty again, for the next write.
        was_dirty, self.context_dirty = self.context_dirty, False
        create = not self.created
        if create:
            status = status or SagaStatus.RUNNING
            if context is None:
                context = self.initial_context
        store = self.store
        settings = self.settings
        if settings.submitted_writes:
            # The hot path of durable sagas (SQLite, PostgreSQL): the first try
            # is queued by a plain call and its future awaited right here (no
            # task, no coroutine to drive); a failure goes on to the retries.
            # The future refuses cancellation: a cancellation of this task
            # arrives once the write's outcome is known (see settle_inline).
            # The store ends it by the deadline, as settle_inline would.
            deadline = self._deadline()
            failure: BaseException | None = None
            cancelled = False
            try:
                if create:
                    written_by = store.submit_create(  # type: ignore[attr-defined]
                        self.saga_id, saga_name, settings.fingerprint, context, entries, status,
                        deadline)
                else:
                    written_by = store.submit_append(  # type: ignore[attr-defined]
                        self.saga_id, entries, status, context, self.fence, written, deadline)
            except Exception as error:  # bad input: nothing was queued
                failure = error
            else:
                while not written_by.done():
                    try:
                        await written_by
                    except asyncio.CancelledError:
                        cancelled = True  # arrives once the write's outcome is known
                    except BaseException:
                        break  # the write's own failure: read below
                failure = written_by.exception()
            if failure is not None:
                failure, cancelled_again = await settle(write_durably(
                    store, self._write(create, entries, status, context), settings.journal_retry,
                    deadline=deadline, failed=failure,
                ))
                cancelled = cancelled or cancelled_again
        elif settings.inline_writes:
            # The hot path of durable sagas: the first try is made right here,
            # without a task or a record of the write; a failure goes on to
            # the retries.
            if create:
                first = store.create(self.saga_id, self.saga_name, settings.fingerprint,
                                     context, entries, status=status)  # type: ignore[arg-type]
            else:
                first = store.append(  # type: ignore[call-arg]
                    self.saga_id, entries, status=status, context=context, fence=self.fence,
                    after=written,  # SQLite's and PostgreSQL's stores are conditional
                ) if settings.conditional else store.append(
                    self.saga_id, entries, status=status, context=context, fence=self.fence
                )
            # One deadline for all the tries, the first one included.
            deadline = self._deadline()
            failure, cancelled = await settle_inline(first, deadline)
            if failure is not None:
                failure, cancelled_again = await settle(write_durably(
                    store, self._write(create, entries, status, context), settings.journal_retry,
                    deadline=deadline, failed=failure,
                ))
                cancelled = cancelled or cancelled_again
        else:
            failure, cancelled = await settle(write_durably(
                store, self._write(create, entries, status, context), settings.journal_retry,
                deadline=self._deadline(),
            ))
        in_doubt = True
        if isinstance(failure, NotDurable):
            in_doubt = failure.in_doubt
            failure = failure.error
        if failure is None:
            self.created = True
            self.written = written + len(entries)
            if status is not None:
                self.journaled_status = status
            self.pending_status = None
        elif isinstance(failure, ContextSerializationError) and self.created:
            # The store cannot hold the context a step left: the run unwinds
            # (see fail), journaling without it — the last good one stays.
            self.context_refused = True
        else:
            self.interruption = failure
            if in_doubt:
                self.landed_unseen = status or self.journaled_status
        if failure is not None and was_dirty:
            self.context_dirty = True  # the context it carried is not journaled
        if cancelled:
            raise asyncio.CancelledError
        if failure is not None:
            raise JournalWriteFailed(failure) from failure

    def _write(
        self,
        create: bool,
        entries: list[JournalEntry],
        status: SagaStatus | None,
        context: dict[str, Any] | None,
    ) -> JournalWrite:
        settings = self.settings
        return JournalWrite(self.saga_id, self.saga_name, settings.fingerprint, create, entries,
                            status, context, self.fence, self.written, settings.conditional)

    def _deadline(self) -> float | None:
        timeout = self.settings.journal_timeout
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    def _encode_context(self, unwinding: bool) -> dict[str, Any] | None:
        if not self.context_dirty or (unwinding and self.context_refused):
            return None
        try:
            return context_to_dict(self.context)
        except ContextSerializationError:
            if not unwinding:
                raise
            return None  # keep journaling the transitions; the last good context stays


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name

