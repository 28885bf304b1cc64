"""A ``Parallel`` group's run: its members concurrently, each in a lane of its own.

Every member runs in a task of its own (``own_task``) on a ``Lane``: a
working copy of the context as the group began, and a cursor of its own
(so that ``current_step()`` names the member). A member that completes
merges the fields it changed into the saga's context, unless a sibling
changed the same field (``ParallelWriteConflict``). All the members' first
STARTED rows are made durable in one write before any of them runs; after
that, they write one at a time (the run's ``write_lock``). When one fails
for good, the others are cancelled and waited for before the group raises:
the run then unwinds every member that completed (S15).

The run a group belongs to (``executor.Execution``) is its ``GroupHost``:
this module drives its steps through it and never imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, Protocol

from .context import (
    Snapshot,
    StepSnapshot,
    changed_fields,
    flat_changes,
    flat_state,
    member_snapshot,
    restore_step,
    take_snapshot,
    working_copy,
    write_fields,
)
from .errors import ParallelWriteConflict, SagaFailed
from .events import Hooks, emit
from .plan import Branch, FallbackPlan, GroupPlan, Member
from .run_settings import RunSettings
from .shielding import (
    EAGER_TASKS,
    RUNS_AROUND,
    cancellation_behind,
    cancellation_pending,
    cancelled_again,
    land_pending_cancellation,
    own_task,
    running_task,
)
from .status import RAW_COMPLETED as _COMPLETED
from .status import RAW_FAILED as _FAILED
from .status import RAW_STARTED as _STARTED
from .status import SagaStatus
from .step import _CURSOR, COROUTINE, SagaStepResult, StepCursor, unawaited
from .store.base import RawEntry

__all__ = ["IN_A_MEMBER", "GroupHost", "GroupRun", "Lane", "LaneCursor", "run_group"]

# Set while a group member runs a saga of its own (a SubSaga's child): that
# run is cancelled with the member, and a call of it cancelled in flight is
# as uncertain as the member's own call would be — journaled CANCELLED and
# compensated (Execution.act_failed), not a failed step.
IN_A_MEMBER: ContextVar[bool] = ContextVar("fallback_saga_in_a_member", default=False)

_now = time.time
_NOBODY = Hooks(())  # no listener: what a run whose journal failed tells of a try
_new_object = object.__new__
_new_tuple = tuple.__new__


class GroupHost(Protocol):
    """What a group needs of the run it belongs to: its context, journal,
    compensation stack and write-ahead, and the way it runs one branch."""

    saga_id: str
    saga_name: str
    step: str
    context: Any
    image: Any  # the context as the current item began (a snapshot)
    journal: list[RawEntry]
    stack: list[Branch]  # the compensation stack
    live: bool  # an in-process store: nothing to write ahead
    settings: RunSettings
    write_lock: asyncio.Lock | None
    branch_errors: dict[str, BaseException] | None
    context_dirty: bool
    hooks: Hooks
    interruption: BaseException | None  # the journal failed: the run stops
    cancels: int  # the run's task's count of requests to cancel as it began

    def stop_swallowed(self) -> Awaitable[asyncio.CancelledError]: ...

    def flush(self, *, unwinding: bool = False) -> Awaitable[None]: ...

    async def try_branch(
        self,
        branch: Branch,
        snapshot: StepSnapshot,
        plan: FallbackPlan | None,
        lane: Lane | None = None,
    ) -> Any: ...

    async def run_fallback(
        self, plan: FallbackPlan, snapshot: StepSnapshot, lane: Lane | None = None
    ) -> tuple[Branch, Any]: ...

    def act_failed(
        self, branch: Branch, attempt: int, error: BaseException, told: bool = True
    ) -> None: ...

    def act_cancelled(self, branch: Branch, attempt: int) -> None: ...

    def push_crashed_call(self, branch: Branch) -> None: ...

    def leave_undone(self, step: str, error: BaseException) -> None: ...


class LaneCursor(StepCursor):
    """A group member's cursor: ``current_step()`` names the member; the run
    it belongs to stays reachable (a ``SubSaga`` member needs its store)."""

    __slots__ = ("execution",)

    def __init__(self, execution: GroupHost) -> None:
        # StepCursor's fields, set here (one call fewer per member)
        self.saga_id = execution.saga_id
        self.saga_name = execution.saga_name
        self.step = ""
        self.action = "act"
        self.attempt = 0
        self.active = False
        self.execution = execution


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
    """One running group: each member's run (``run_member``, in a task of its
    own) and what the members share — the context as the group began
    (``base``), which member wrote which field, the failures, and how many
    members are still running (the last to finish, or the first to fail,
    wakes the group: ``waiter``)."""

    __slots__ = ("base", "failures", "flat", "host", "remaining", "waiter", "writes")

    def __init__(self, host: GroupHost, base: Snapshot, members: int) -> None:
        self.host = host
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

    async def run_member(
        self, member: Member, first: Branch
    ) -> SagaStepResult[Any, Any] | None:
        """One member of a group, in the task of its own that ``run_group`` made."""
        host = self.host
        cursor = LaneCursor(host)
        cursor.step = first.name
        _CURSOR.set(cursor)  # this task's own context: current_step() names the member
        failed = False
        try:
            base = self.base
            state = self.flat
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
                    host.act_failed(first, 1, error)
                    raise
            if member.__class__ is Branch and member.plain and host.settings.inline:
                # try_branch's work for a plain step on an in-process store with
                # no step listener (as run_all inlines it), less its coroutine:
                # one attempt, its STARTED journaled by the group.
                branch: Branch = member
                cursor.step = branch.name
                cursor.attempt = 1
                cursor.active = True
                try:
                    response = await branch.act(context)
                    if type(response) is COROUTINE:
                        raise unawaited(branch.name, "act", response)
                except BaseException as error:
                    cursor.active = False
                    restore_step(context, snapshot)
                    if isinstance(error, asyncio.CancelledError):
                        host.act_cancelled(branch, 1)
                    elif isinstance(error, Exception) and running_task().cancelling():
                        # Stopped by the group, or with the saga: the
                        # cancellation its participant converted into an
                        # error of its own. Its call's effect is as uncertain
                        # as a cancelled one's (see running_task).
                        host.act_cancelled(branch, 1)
                        raise cancellation_behind(error) from error
                    else:
                        host.act_failed(branch, 1, error)
                    raise
                cursor.active = False
                host.journal.append(
                    (branch.position, branch.name, branch.branch, "act", _COMPLETED, 1, None,
                     _now(), response)
                )
                host.stack.append(branch)
            else:
                lane = Lane(cursor, context, first)
                if member.__class__ is Branch:
                    branch = member
                    response = await host.try_branch(branch, snapshot, None, lane)
                elif first is member.fallback:  # type: ignore[union-attr]
                    branch = first
                    response = await host.try_branch(first, snapshot, None, lane)
                else:
                    branch, response = await host.run_fallback(
                        member, snapshot, lane  # type: ignore[arg-type]
                    )
            # Completed (and on the compensation stack): its writes join the
            # saga's context now — unless a sibling changed the same field.
            if state is not None:
                changed = flat_changes(state, context.__dict__)
            else:
                changed = changed_fields(base, context)
            if changed:
                writes = self.writes
                for field in changed:
                    if field in writes:
                        raise ParallelWriteConflict(field, writes[field], branch.name)
                for field in changed:
                    writes[field] = branch.name
                if state is not None:
                    host.context.__dict__.update(changed)  # no slots: its state is its __dict__
                else:
                    write_fields(host.context, changed)
            host.context_dirty = True
            if not host.live:
                await host.flush()  # its completion, and its writes, made durable
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failed = True
            self.failures.append((cursor.step, error))  # the last branch it tried
            # Not raised: the group raises it (run_group). A task that ended
            # with it would keep it, and its traceback can lead back to the
            # task (a step's asyncio.timeout holds its task): a reference
            # cycle, keeping the member's frames and context until the
            # garbage collector finds it.
            return None
        except BaseException as error:  # SystemExit and the like: the group raises it
            failed = True
            self.failures.append((cursor.step, error))
            if isinstance(error, KeyboardInterrupt | SystemExit):
                # Not out of this task: asyncio lets these two out of the
                # loop from any task, and the group raises it again in the
                # saga's task (run_group) — a second one, which would cut
                # asyncio.run's shutdown short (a task left pending, closed
                # with the loop). Raised once, from the saga's task, as a
                # plain step's is. (A GeneratorExit goes on: it may be this
                # coroutine being closed, which must not return.)
                return None
            raise
        finally:
            self.member_done(failed)
        if isinstance(response, SagaStepResult):
            return response
        return _new_tuple(SagaStepResult, (response, branch.name, host.saga_id))


async def run_group(
    host: GroupHost,
    group: GroupPlan,
    resumed: dict[int, SagaStepResult[Any, Any]] | None = None,
    fallbacks_started: frozenset[int] = frozenset(),
    crashed: tuple[Branch, ...] = (),
) -> list[SagaStepResult[Any, Any]]:
    """Run a ``Parallel`` group's members concurrently, each in its own
    ``Lane``; their results, in the members' declared order.

    ``resumed``: results of members a crashed run completed (they do not
    run again); ``fallbacks_started``: positions of members to resume
    with their fallback; ``crashed``: the members' branches whose calls a
    crashed run left in flight (their effect is uncertain). Every member's
    first STARTED is made durable in one write before any of them runs.
    When one fails for good, the others are cancelled and waited for; the
    group then raises that member's error (``branch_errors`` keeps every
    member's). A cancelled caller waits for every member to stop before
    the unwinding begins (S8).

    A crashed call is answered when its member is called again (at once,
    past its breaker: see ``Execution.try_branch``) and that call returns
    or fails (S5). A group cancelled during its write-ahead calls no member
    again: the crashed calls' effects stay unknown, so they go on the
    compensation stack (``push_crashed_call``), as the straight line does
    with its one crashed step (``Execution.run_all``); a member cancelled in
    its call again is compensated anyway (``act_cancelled``)."""
    base = host.image = take_snapshot(host.context)
    todo: list[tuple[Member, Branch]] = []
    now = _now()
    journal = host.journal
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
    if not host.live or running_task().cancelling() > host.cancels:
        try:
            if not host.live:
                await host.flush()  # the group's write-ahead: one write for every member
            if running_task().cancelling() > host.cancels:
                # A request to cancel the run that a participant swallowed
                # (Execution.stop_swallowed): no member runs.
                await host.stop_swallowed()
        except asyncio.CancelledError as cancelled_error:
            # Cancelled while it was written: no member ran. Say so, as a
            # step whose write-ahead was cancelled does (S13: the journal
            # ends saying what happened) — to the listeners too, unless that
            # write failed as well: the journal will never hold these tries
            # (the run stops), and no try it does not hold is told (as
            # Execution.try_branch does for a step's write-ahead).
            now = _now()
            hooks = host.hooks if host.interruption is None else _NOBODY
            for _, first in todo:
                journal.append(
                    (first.position, first.name, first.branch, "act", _FAILED, 1,
                     "CancelledError: cancelled before its act ran", now, None)
                )
                if hooks.step_started:
                    emit(hooks.step_started, host.saga_id, first.name, 1)
                if hooks.step_failed:
                    emit(hooks.step_failed, host.saga_id, first.name, cancelled_error)
            for branch in crashed:
                host.push_crashed_call(branch)
            raise
    if not host.live:
        host.write_lock = asyncio.Lock()
    run = GroupRun(host, base, len(todo))
    # Started eagerly where Python can (3.12+): a member that does not wait
    # has finished before the next one is made, without a trip through the
    # loop. Each task runs in a copy of this context: its own cursor.
    # (Any: a member that failed returns None, read only when none failed.)
    # The members work for this run (and the runs around it): a request to
    # cancel it that a member's act makes, or meets, is told from a failure
    # of its own (RUNS_AROUND). Set while the members' tasks are made only.
    here = running_task()
    outer = RUNS_AROUND.get()
    around = RUNS_AROUND.set(
        (*outer, (here, host.cancels)) if isinstance(here, asyncio.Task) else outer
    )
    try:
        tasks: list[asyncio.Task[Any]] = [
            own_task(run.run_member(member, first)) for member, first in todo
        ]
    finally:
        RUNS_AROUND.reset(around)
        # No frame local keeps this task (see the end).
        here = outer = None  # type: ignore[assignment]
    # Our own cancellation, the first (it carries the caller's message),
    # raised again once every member has stopped.
    cancelled: asyncio.CancelledError | None = None
    try:
        if run.remaining and not EAGER_TASKS:
            # Python 3.11: the members start in the loop's next round. Let
            # each take its first step (most finish in it); then count
            # again, since one cancelled before it began never said it ended.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as caught:
                cancelled = caught
            if run.remaining:
                run.remaining = sum(not task.done() for task in tasks)
        elif not run.remaining and cancellation_pending():
            # Python 3.12+, every member done in our own step: we never
            # waited. A cancellation asked for meanwhile (by a member, or
            # before the group) lands here, as it does in 3.11's turn above —
            # not in the steps after the group (S8, S15). (Asked first: no
            # coroutine to make when nothing is pending, as is the rule.)
            cancelled = await land_pending_cancellation()
        if run.remaining and not (run.failures or cancelled):
            # Some member waits: the last one to finish (or the first to
            # fail) wakes us, as its last act — no callback per member.
            waiter = run.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            except asyncio.CancelledError as caught:
                cancelled = cancelled or caught  # wait on: every member stops before unwinding
            run.waiter = None
        if run.remaining or run.failures or cancelled:
            # A member failed, or we were cancelled: stop the others, wait for all.
            pending = {task for task in tasks if not task.done()}
            stopping = False
            while True:
                if (cancelled or run.failures) and not stopping:
                    stopping = True
                    # With the caller's message, when it is the caller who stops them.
                    message = None if cancelled is None or not cancelled.args else (
                        cancelled.args[0]
                    )
                    for task in pending:
                        task.cancel(message)
                if not pending:
                    break
                try:
                    _, pending = await asyncio.wait(
                        pending, return_when=asyncio.FIRST_EXCEPTION
                    )
                except asyncio.CancelledError as caught:
                    cancelled = cancelled or caught
                    # Counted again here, not only from ``wait``'s answer: a
                    # cancellation that comes back at every wait (an anyio
                    # cancel scope's, delivered each loop round) cancels
                    # each ``wait`` before the members' done callbacks can
                    # answer it, and a ``pending`` kept from before spun
                    # for ever once every member had ended.
                    pending = {task for task in pending if not task.done()}
    finally:
        host.write_lock = None
    failures = run.failures
    if failures or cancelled is not None:
        # The error raised from here holds this frame in its traceback, and
        # the failed member's frame holds ``run``: neither may keep a task
        # or an error (error -> traceback -> frame -> task -> error is a
        # cycle only the garbage collector finds, and until it does the
        # saga's context and every frame's locals stay alive).
        run.failures = []
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: its error is in failures
        tasks = task = _ = pending = None  # type: ignore[assignment]
        # A member's KeyboardInterrupt or SystemExit (no Exception) outranks
        # everything: the process is going down, and the saga with it, as
        # after a plain step's — nothing is unwound in-process, and the
        # member's call, whose effect may have landed, is left to recovery
        # (a cancellation would unwind without it: the loop's shutdown
        # cancels the group right after such an exception left the loop).
        crash = next((item for item in failures if not isinstance(item[1], Exception)), None)
        if crash is not None:
            host.step = crash[0]
            failures = None  # type: ignore[assignment]
            try:
                raise crash[1]
            finally:
                crash = None
        if cancelled is not None:
            # The cancellation outranks the members' errors — not what a
            # member's child left: ended FAILED (its own unwinding gave up),
            # its effects stay whatever this run undoes, so the run cannot
            # end COMPENSATED (S6, S15), as when no cancellation came.
            for name, error in failures:
                if isinstance(error, SagaFailed) and error.status is SagaStatus.FAILED:
                    host.leave_undone(name, error)
            # Nor the members' errors: each one's traceback holds its
            # member's frame, which (a member started eagerly, 3.12+, and
            # done) links back to this one — a cycle through the
            # cancellation's traceback.
            failures = error = None  # type: ignore[assignment]
            raise cancelled_again(cancelled)
        name, error = failures[0]
        host.step = name
        host.branch_errors = dict(failures)
        failures = None  # type: ignore[assignment]
        try:
            raise error
        finally:
            del error
    if resumed is None:
        return [task.result() for task in tasks]
    done = dict(resumed)
    for task, (member, _) in zip(tasks, todo, strict=True):
        done[member.position] = task.result()
    return [done[member.position] for member in group.members]

