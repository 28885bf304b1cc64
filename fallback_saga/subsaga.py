"""SubSaga: a step that runs a whole saga — a child — inside its parent.

The child is journaled in the parent's store under its own record, with an
id derived from the parent's: ``"<parent id>/<step name>"``. So a resumed
parent finds its child again, an operator sees the link (``show`` names the
parent of a child and the children of a parent), and recovery leaves a child
to its parent while the parent is in flight (``recover`` defers it).

* **act** runs the child with ``context(parent_context)``; when the child
  completes, ``merge(parent_context, child_context)`` (if given) writes what
  the parent needs, and the step's response is the child's final context.
  A child that fails has unwound itself: the step fails with the child's
  ``SagaFailed`` and the parent unwinds as for any failed step (the child is
  not compensated twice); a child that ended FAILED leaves the parent FAILED
  too (``Execution.leave_undone``). A child out of reach — its journal
  failed (``SagaInterrupted``), another worker drives it, the store could
  not read it, its definition changed — stops the parent too, without
  unwinding: both are left for recovery.
* **Changed definitions.** A parent resumed with the operator's override
  (``resume(..., allow_changed_definition=True)``, ``recover(...,
  allow_changed_definition=True)``) hands it on to the children it drives,
  resumed or unwound, and they to theirs: the operator vouched for the
  family's new code. As for any saga, the override never lets through a
  child whose journaled step moved or lost its place. A child's refusal
  (``SagaDefinitionChanged``) names the saga that drives the family
  (``driven_by``): that is the saga to resume, with or without the override.
  A cancelled parent fails this step too, so the child is undone before the
  cancellation goes on — even when it landed as the child's completion was
  written (the child COMPLETED, its caller cancelled).
* **Resume.** A parent resumed at this step resumes its child first, from
  the child's own journal: a child that completed returns its stored outcome
  and nothing of it runs again; one interrupted mid-way continues where it
  stopped; one that was unwinding finishes unwinding.
* **compensate** — a later step of the parent failed — unwinds the child's
  completed steps in reverse, journaled in the child's record (COMPENSATED;
  FAILED if a compensation gave up, which fails this compensation too, so
  the parent ends FAILED). Compensating a child already compensated, or one
  that never started, does nothing: it is idempotent, as a compensation must be.
  A child FAILED is refused (its unwinding is an operator's), except when an
  operator retries the parent's unwinding (``retry_unwinding``): the
  child's is retried with it — a child left undone by the act too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from .child_ids import CHILD_SEPARATOR, child_saga_id
from .claims_here import claim_held_here, claim_landing_here, let_gos_here
from .class_caches import class_cache, remember
from .definition import FallbackSpec, SagaDefinition
from .errors import (
    ContextDecodeError,
    CorruptSagaRecord,
    SagaAlreadyExists,
    SagaBusy,
    SagaDefinitionChanged,
    SagaError,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
    SagaStoreError,
)
from .executor import Execution, SagaResult, running_execution
from .given_numbers import seconds_given
from .group_run import IN_A_MEMBER, LaneCursor
from .plan import Branch
from .saga import Saga, context_class_missing
from .shielding import claimed, reset_var, shielded
from .status import SagaStatus
from .step import _CURSOR, current_step
from .stop_scope import STOP_SCOPE, StopScope, stopped_without_unwinding
from .store._common import check_saga_id
from .store.base import Lease, SagaRecord, SagaStore, is_recoverable
from .write_ahead import JournalWriteFailed

__all__ = [
    "CHILD_SEPARATOR", "SubSaga", "child_saga_id", "parent_saga_id", "runs_a_child", "saga_family",
]

ParentT = TypeVar("ParentT")
ChildT = TypeVar("ChildT")
_V = TypeVar("_V")

# How long the parent's run holds a child's lease while it drives the child
# (renewed while a resumed child runs). Short on purpose: the parent's run is
# the child's only driver (recovery defers a child to a parent in flight), so
# a lease left by a run that crashed only delays the next one, for this long.
DEFAULT_CHILD_LEASE = 30.0
# Another process's recovery may hold a child's lease for a moment before it
# sees that the parent drives it and lets it go; a crashed run's lease runs
# out. (This process's own claims are waited for, not polled: claims_here.)
_BUSY_POLL = 0.1


def parent_saga_id(saga_id: str) -> str | None:
    """The parent's id if ``saga_id`` is shaped like a child's (the parent may
    or may not exist: an id of your own may contain the separator too)."""
    parent, separator, step = saga_id.rpartition(CHILD_SEPARATOR)
    return parent if separator and parent and step else None


class SubSaga(Generic[ParentT, ChildT]):
    """A step that runs the saga ``saga`` as a child (see the module docstring).

    * ``saga`` — a ``Saga`` subclass, built with the parent's store and
      listeners, or a ``Saga`` instance (built with the store the parent
      uses: the child is journaled there; a parent with another store is
      refused when it is built, ``ValueError``);
    * ``context`` — builds the child's context from the parent's;
    * ``merge`` — optional: ``merge(parent_context, child_context)`` copies
      what the parent needs from the child's final context once it completed
      (``context=`` is the way in, ``merge=`` the way back);
    * ``name`` — the step's name in the parent (default: the child saga's
      name); the child's saga id is ``"<parent id>/<name>"``;
    * ``lease_seconds`` — how long the parent holds the child's lease while it
      drives it (a durable store; renewed while a resumed child runs). A run
      that crashed leaves it held for that long at most: the resumed parent
      waits for it.

    Use it like a step instance: in ``steps``, in a ``Parallel`` group, or as
    a Fallback's branch.

    Typed ``SubSaga[Parent, Child]``: a checker learns ``Parent`` from an
    annotated ``context`` function or a typed ``merge``, never from a lambda
    alone — then name both, ``SubSaga[Checkout, Payment](PaymentSaga,
    context=lambda c: Payment(c.amount))``.
    """

    timeout: float | None = None

    def __init__(
        self,
        saga: type[Saga[ChildT]] | Saga[ChildT],
        *,
        context: Callable[[ParentT], ChildT],
        merge: Callable[[ParentT, ChildT], None] | None = None,
        name: str | None = None,
        lease_seconds: float = DEFAULT_CHILD_LEASE,
    ) -> None:
        # Checked as a worker's lease is: a bool is no number of seconds, and
        # float() of an int too large for one is an OverflowError naming nothing.
        self.lease_seconds = seconds_given(
            "lease_seconds", lease_seconds, positive=True, owner="SubSaga"
        )
        if isinstance(saga, type) and issubclass(saga, Saga):
            if getattr(saga, "definition", None) is None:
                raise TypeError(f"{saga.__name__} declares no steps: it cannot run as a child")
            self.saga_name: str = saga.definition.saga_name
        elif isinstance(saga, Saga):
            self.saga_name = saga.name
        else:
            raise TypeError(f"SubSaga runs a Saga subclass or instance, got {saga!r}")
        if not callable(context):
            raise TypeError("SubSaga context= must be a callable: parent context -> child context")
        if merge is not None and not callable(merge):
            raise TypeError("SubSaga merge= must be a callable (parent context, child context)")
        # An async function here would hand the child a coroutine for a
        # context, or merge nothing at all (a coroutine never awaited): both
        # run synchronously inside the step; awaited work belongs in a step.
        for keyword, given in (("context", context), ("merge", merge)):
            if inspect.iscoroutinefunction(given):
                raise TypeError(
                    f"SubSaga({self.saga_name}) {keyword}= is an async function "
                    f"({_callable_name(given)}): it is called without await, so declare it "
                    f"with `def` (do awaited work in a step of the parent or the child)"
                )
        self.saga = saga
        self.context = context
        self.merge = merge
        self.name = name or self.saga_name
        if CHILD_SEPARATOR in self.name:
            # The child's id "<parent id>/a/b" would read back as the child
            # "b" of a saga "<parent id>/a" (parent_saga_id): recovery would
            # not leave it to its parent in flight, a purge would not keep it
            # while its parent is stored.
            default = "" if name else f" (by default, the child saga's name, {self.saga_name})"
            raise ValueError(
                f"SubSaga({self.saga_name}): its step name {self.name!r}{default} holds "
                f"{CHILD_SEPARATOR!r}, which separates a parent's saga id from the step name "
                f"in a child's saga id (\"<parent id>{CHILD_SEPARATOR}<step>\"); give it "
                f"name= without {CHILD_SEPARATOR!r}"
            )
        self._built: dict[int, Saga[ChildT]] = {}

    def __repr__(self) -> str:
        return f"SubSaga({self.saga_name}, name={self.name!r})"

    @property
    def child_definition(self) -> SagaDefinition:
        """The child saga's definition: the parent's checks the ids of its
        family's children against it when the parent class is created (child_ids)."""
        saga = self.saga
        return (saga if isinstance(saga, type) else type(saga)).definition

    # ------------------------------------------------------------------ the step

    async def act(self, context: ParentT) -> ChildT:
        parent = _parent()
        child = self._child(parent)
        child_id = self._child_id(parent)
        # A group member: a cancellation of the child's call in flight leaves
        # its effect uncertain, as the member's (see IN_A_MEMBER).
        member = IN_A_MEMBER.set(True) if isinstance(_CURSOR.get(None), LaneCursor) else None
        # The child stops without unwinding if the parent does (StopScope):
        # handed off, its lease lost, or its journal failed.
        scope = STOP_SCOPE.set(StopScope(STOP_SCOPE.get(), parent))
        try:
            result = await self._run_or_resume(parent, child, child_id, context)
        except _OUT_OF_REACH as stopped:
            # The child's journal failed, another worker drives the child right
            # now (its lease outlived the wait, or took it over), or the child
            # could not be read or resumed: the parent stops too, without
            # unwinding (S13) — unwinding the steps before it while the child
            # may still complete would leave the child's effects under a
            # COMPENSATED parent. Recovery finishes both. The parent is
            # interrupted from now on: in a group, the siblings it then
            # cancels stop their own children without unwinding (StopScope).
            cause = _unwrapped(stopped)
            reason = _driven(cause, parent)
            parent.interrupt(reason)
            raise JournalWriteFailed(reason) from cause
        except asyncio.CancelledError:
            if stopped_without_unwinding() is not None:
                # The parent stops without unwinding (handed off, its lease
                # lost, or its journal failed), and so did the child
                # (StopScope): the parent's next run resumes both.
                raise
            # The parent's step fails with the cancellation, and a child whose
            # step fails unwinds itself. It has, if the cancellation reached one
            # of its steps; not if it landed while the child's completion was
            # written: the child is COMPLETED then, and the parent will not
            # compensate a step that failed. So undo it here (shielded: a
            # cancellation again meanwhile does not stop it), then go on failing.
            await shielded(self._undo_completed(parent, child, child_id, current_step().step,
                                                "its parent's step was cancelled"))
            raise
        finally:
            reset_var(STOP_SCOPE, scope)
            if member is not None:
                reset_var(IN_A_MEMBER, member)
        if self.merge is not None:
            try:
                _not_awaitable(self.merge(context, result.context), self.name, "merge")
            except Exception:
                # The child is COMPLETED, and the parent's step fails: the
                # parent never compensates a step that failed (S5), so the
                # child's effects would stay under a COMPENSATED parent.
                # Undone here, as after a cancellation.
                await shielded(self._undo_completed(parent, child, child_id,
                                                    current_step().step,
                                                    "its merge into the parent failed"))
                raise
        return result.context

    async def _run_or_resume(
        self, parent: Execution, child: Saga[ChildT], child_id: str, context: ParentT
    ) -> SagaResult[ChildT]:
        """Run the child; or resume it from its journal if it ran before — in
        an earlier run of a resumed parent, or an earlier attempt of this
        step. Then it is looked up first: a run started only to be refused
        (``SagaAlreadyExists``) would tell the listeners of a child that
        started a step and was interrupted, when neither happened."""
        if parent.resumed or current_step().attempt > 1:
            try:
                return await self._resume(parent, child, child_id)
            except SagaNotFound:
                pass  # the crash came before this step: the child never started
        try:
            child_context = _not_awaitable(self.context(context), self.name, "context")
            self._check_child_context(child, child_context)
            return await child.run(child_context, saga_id=child_id)
        except SagaAlreadyExists:
            return await self._resume(parent, child, child_id)

    async def _resume(
        self, parent: Execution, child: Saga[ChildT], child_id: str
    ) -> SagaResult[ChildT]:
        allow = _override(parent)
        try:
            result: SagaResult[ChildT] = await _when_free(
                lambda: child.resume(
                    child_id, lease_seconds=self.lease_seconds, allow_changed_definition=allow
                ),
                child_id, self.lease_seconds,
            )
        except SagaError:
            raise  # the child's outcome (SagaFailed), or an error that says what it is
        except Exception as error:
            raise _Unreachable(error) from error
        return result

    async def _undo_completed(
        self, parent: Execution, child: Saga[ChildT], child_id: str, step: str, why: str
    ) -> None:
        try:
            await self._unwind(parent, child, child_id, why)
        except SagaFailed as gave_up:
            # The child ended FAILED (a compensation of it gave up): the parent
            # cannot end COMPENSATED over it either.
            parent.leave_undone(step, gave_up)
        except Exception as error:
            # Its journal failed (or its definition changed): the parent must
            # not unwind as if the child were undone. It stops too, and
            # recovery finishes both.
            parent.interrupt(_driven(_unwrapped(error), parent))

    async def compensate(self, context: ParentT) -> None:
        parent = _parent()
        child = self._child(parent)
        try:
            await self._unwind(
                parent, child, self._child_id(parent),
                f"its parent {parent.saga_id!r} is unwinding",
            )
        except _OUT_OF_REACH as stopped:
            # As in act: the parent's unwinding stops, left for recovery — not
            # a compensation that failed (the child is not done unwinding).
            cause = _unwrapped(stopped)
            raise JournalWriteFailed(_driven(cause, parent)) from cause

    async def _unwind(
        self, parent: Execution, child: Saga[ChildT], child_id: str, why: str
    ) -> None:
        """Unwind the child's completed steps (see ``compensate``)."""
        try:
            await self._unwind_child(parent, child, child_id, why)
        except SagaError:
            raise  # the child's outcome (SagaFailed), or an error that says what it is
        except Exception as error:
            raise _Unreachable(error) from error

    async def _unwind_child(
        self, parent: Execution, child: Saga[ChildT], child_id: str, why: str
    ) -> None:
        store = child.store
        lease: Lease | None = None
        if is_recoverable(store):
            try:
                lease = await _when_free(lambda: claimed(store.claim_saga(
                    child_id, owner=_owner(), lease_seconds=self.lease_seconds
                ), store.release), child_id, self.lease_seconds)
            except SagaNotFound:
                return  # the child never started: nothing of it to undo
        try:
            try:
                record = await store.load(child_id)
            except SagaNotFound:
                return
            if record.status is SagaStatus.COMPENSATED:
                return  # undone already (this compensation is running again)
            if record.status is SagaStatus.FAILED and _reopened_by(parent) is not None:
                # An operator retries the parent's unwinding (reopening.py):
                # the child's, which gave up, is retried with it (S15).
                try:
                    await child._reopen_record(
                        record, lease=lease, allow_changed_definition=_override(parent),
                        reopened_by=_reopened_by(parent) or "", runs_a_child=runs_a_child,
                    )
                except SagaFailed as done:
                    if done.status is not SagaStatus.COMPENSATED:
                        raise
                return
            if record.status is SagaStatus.FAILED:
                raise SagaFailed(
                    saga_id=child_id, saga_name=record.saga_name, status=record.status,
                    failed_step="", error=RuntimeError(
                        "the child saga ended FAILED: a compensation of it gave up"
                    ),
                )
            try:
                await child._unwind_record(
                    record, lease, why, allow_changed_definition=_override(parent)
                )
            except SagaFailed as done:
                if done.status is not SagaStatus.COMPENSATED:
                    raise
        finally:
            if lease is not None:
                with contextlib.suppress(Exception):  # it expires on its own
                    await store.release(lease)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ helpers

    def _refuse_parent_store(self, parent_name: str, step_name: str, store: SagaStore) -> None:
        """Refuse a parent journaling to ``store`` when this step holds a Saga
        *instance* built with another store: the instance runs its child in
        its own store, and the parent finds, resumes and unwinds its child in
        the parent's. A child journaled elsewhere would be unwound by a parent
        that cannot find it — the parent COMPENSATED, the child's effects
        left (S15). Asked by the parent as it is built."""
        child = self.saga
        if isinstance(child, type):
            # Built with the parent's store when the step first runs: what
            # refuses that store (no context class to read a journal back
            # into) is refused now, before the steps before it run.
            missing = context_class_missing(child, store)
            if missing is not None:
                raise TypeError(
                    f"{parent_name}'s step {step_name!r} runs {child.__name__} as a child "
                    f"saga, journaled in {parent_name}'s store: {missing}"
                )
            # Its own children are built with that store too, when it runs.
            for branch in child.definition.members():
                for spec in (
                    (branch.primary, branch.fallback) if isinstance(branch, FallbackSpec)
                    else (branch,)
                ):
                    unbuildable = _needs_arguments(spec.source)
                    if unbuildable is not None:
                        raise TypeError(
                            f"{parent_name}'s step {step_name!r} runs {child.__name__} as a "
                            f"child saga, built from its class with no step_factory, so its "
                            f"step class {spec.source.__name__} is built as "
                            f"{spec.source.__name__}(), which cannot work ({unbuildable}). "
                            f"Give SubSaga a {child.__name__} built with {parent_name}'s "
                            f"store and a step_factory — SubSaga({child.__name__}(store=store, "
                            f"step_factory=...), context=...) — or put an instance of "
                            f"{spec.source.__name__} in {child.__name__}.steps"
                        )
                    if not isinstance(spec.source, SubSaga):
                        continue
                    try:
                        spec.source._refuse_parent_store(child.__name__, spec.name, store)
                    except (TypeError, ValueError) as refused:  # said from the top down
                        raise type(refused)(
                            f"{parent_name}'s step {step_name!r} runs {child.__name__}, "
                            f"and {refused}"
                        ) from None
        if isinstance(child, Saga) and child.store is not store:
            raise ValueError(
                f"{parent_name}'s step {step_name!r} runs a {type(child).__name__} "
                f"instance built with another store than {parent_name}'s: a child "
                f"saga is journaled, resumed and unwound in its parent's store. "
                f"Build both with one store, or give SubSaga the class "
                f"({type(child).__name__}), which is built with the parent's store"
            )

    def _check_child_context(self, child: Saga[ChildT], child_context: object) -> None:
        """Refuse what ``context=`` built unless the child runs on it, naming
        ``context=`` (the child's own refusal names neither the step nor it)."""
        expected = type(child).definition.context_type
        if expected is not None and not isinstance(child_context, expected):
            raise TypeError(
                f"SubSaga {self.name!r}: context= returned an instance of "
                f"{type(child_context).__name__}, "
                f"but {type(child).__name__} runs on {expected.__name__}: context= builds "
                f"the child's context from the parent's (context=lambda parent: "
                f"{expected.__name__}(...))"
            )

    def _child(self, parent: Execution) -> Saga[ChildT]:
        if isinstance(self.saga, Saga):
            return self.saga
        key = id(parent.store)
        built = self._built.get(key)
        listeners = parent.hooks.listeners
        # Built again for another store, or for a parent with other listeners
        # (two Order instances share this step: each tells its own listeners).
        if built is None or built.store is not parent.store or built.listeners != listeners:
            built = self.saga(store=parent.store, listeners=listeners)
            if len(self._built) > 64:  # a saga per store: a few, unless stores come and go
                self._built.clear()
            self._built[key] = built
        return built

    def _child_id(self, parent: Execution) -> str:
        step = current_step().step
        child_id = child_saga_id(parent.saga_id, step)
        try:
            return check_saga_id(child_id)
        except ValueError as error:
            raise ValueError(
                f"the child saga of step {step!r} would have the id {child_id[:80]!r}..., "
                f"which no store can hold ({error}): use a shorter parent saga id or "
                f"step name"
            ) from error


def runs_a_child(branch: Branch) -> bool:
    """Whether ``branch`` is a ``SubSaga``'s: a step whose compensation can
    reopen the unwinding of the child saga it ran (see ``_unwind``)."""
    return isinstance(getattr(branch.compensate, "__self__", None), SubSaga)


def _reopened_by(parent: Execution) -> str | None:
    """Who reopened ``parent``'s unwinding (an operator's ``retry_unwinding``), if anyone."""
    return parent.reopener if parent.resumed else None


async def saga_family(
    store: Any, record: SagaRecord, act_steps: Iterable[str] | None = None
) -> tuple[str | None, list[str]]:
    """The parent of ``record`` and its children (``SubSaga``), as stored: a
    child's id is ``<parent id>/<step>``, so each is looked up by that id —
    all at once through the store's ``existing_saga_ids(ids) -> set[str]``
    when it has one (the built-in stores do), else one by one."""
    parent = parent_saga_id(record.saga_id)
    if parent is not None and not await _saga_exists(store, parent):
        parent = None  # an id of its own that merely looks like a child's
    # act_steps: the whole journal's, when record holds part of it (HistoryWindow).
    steps = dict.fromkeys(
        (e.step for e in record.history if e.action == "act") if act_steps is None else act_steps
    )
    candidates = [child_saga_id(record.saga_id, step) for step in steps]
    existing_saga_ids = getattr(store, "existing_saga_ids", None)
    if callable(existing_saga_ids):
        # One look-up for them all (the built-in stores): a saga of 25,000
        # step names was 25,000 lease reads, seconds for a console page.
        found = await existing_saga_ids(candidates)
        return parent, [child for child in candidates if child in found]
    children: list[str] = []
    for child in candidates:
        if await _saga_exists(store, child):
            children.append(child)
    return parent, children


async def _saga_exists(store: Any, saga_id: str) -> bool:
    """Whether the store holds a saga with this id. Asked through
    ``lease_state`` when the store has it: one short row, where ``load``
    would read the whole journal and context of every child a saga has
    (one per step name) only to learn that it is there. A lease that cannot
    be read (``CorruptSagaRecord``) is still a saga that is there."""
    lease_state = getattr(store, "lease_state", None)
    try:
        if callable(lease_state):
            try:
                await lease_state(saga_id)
            except CorruptSagaRecord:
                return True
        else:
            await store.load(saga_id)
    except (SagaNotFound, ValueError):  # ValueError: an id no store can hold
        return False
    return True


# What running, resuming or unwinding a child can fail with, besides the
# child's own outcome (SagaFailed) and a context it cannot journal: its
# store's errors (a journal interrupted, a lease held or lost, the store
# unreachable, a record unreadable) and a child its definition or stored
# context no longer fits. None says how far the child got, so none may
# count as the step's failure.
_CHILD_OUT_OF_REACH = (SagaStoreError, SagaDefinitionChanged, ContextDecodeError)


class _Unreachable(Exception):
    """Internal: an error that is no ``SagaError`` out of a child's resume
    or unwinding — the store's own, as it read or claimed the child's record
    (a store of your own may raise its driver's errors: a connection
    dropped), or a record that is not this child's. It says nothing of how
    far the child got either, so it stops the parent like those above,
    rather than failing the step (the parent would unwind around a child
    that goes on) or its compensation (FAILED, while nothing gave up). The
    step stops the parent with ``error`` itself, as with a store's error
    on a journal write."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


_OUT_OF_REACH = (*_CHILD_OUT_OF_REACH, _Unreachable)


def _unwrapped(error: BaseException) -> BaseException:
    return error.error if isinstance(error, _Unreachable) else error


def _override(parent: Execution) -> bool:
    """The operator's override of a changed definition, which a parent's
    resume was given (a run that is no resume has none): its children are
    resumed and unwound with it."""
    return parent.resumed and parent.allow_changed_definition


def _driven(error: BaseException, parent: Execution) -> BaseException:
    """``error``, unless it is a child's refusal of its changed definition
    (its own, or a grandchild's that stopped the child): then that refusal,
    naming the saga that drives the family — the one to resume, whose
    override reaches every child it drives. A child resumed by its own id
    would run forward apart from its parent, even while the parent unwinds."""
    refusal = error.error if isinstance(error, SagaInterrupted) else error
    if not isinstance(refusal, SagaDefinitionChanged):
        return error
    driver = parent.saga_id
    scope = STOP_SCOPE.get()  # the runs that started this one, innermost first
    while scope is not None:
        if isinstance(scope.run, Execution):
            driver = scope.run.saga_id
        scope = scope.outer
    return refusal.driven(driver)


def _parent() -> Execution:
    execution = running_execution()
    if execution is None:
        raise RuntimeError("a SubSaga runs only as a step of a saga")
    return execution


async def _when_free(call: Callable[[], Any], child_id: str, lease_seconds: float) -> Any:
    """``call()``, tried again while the child ``child_id`` is ``SagaBusy``: a
    recovery pass that claimed it lets it go as soon as it sees the parent
    drives it (one of this process's is waited for, not polled: claims_here),
    and a lease left by a run that crashed runs out — waited for, up to twice
    a lease's length (then ``SagaBusy``: someone is really driving it)."""
    deadline = asyncio.get_running_loop().time() + 2 * lease_seconds + 1
    again = False  # tried again at once, for a claim let go during the call
    polls = 0  # of another holder's lease, in a row
    while True:
        let_gos = let_gos_here()
        try:
            return await call()
        except SagaBusy as busy:
            now = asyncio.get_running_loop().time()
            if now >= deadline:
                raise
            # A claim of this process's recovery holds it (one taken after
            # the parent's, or with it in a batch), or a worker's claim on
            # its way holds it, not registered yet: it lets go within two
            # reads, and says so — tried again then, not a second later
            # (per family, that stalled whole passes).
            held = claim_held_here(child_id, busy.owner) or claim_landing_here(busy.owner)
            if held is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - now):
                        await held.wait()
                again = False
                continue
            if let_gos_here() != let_gos and not again:
                # One was let go while the call was on its way (the store
                # answered it first): maybe this one. Once in a row: a busy
                # recovery lets go of many, and another holder is polled.
                again = True
                continue
            again = False
            wait = _BUSY_POLL
            if busy.expires_at is not None:  # Unix time
                # Another process's recovery pass lets go within moments, a
                # crashed run's lease when it runs out: the two look alike
                # (a lease far off), so the waits grow from _BUSY_POLL to a
                # second — the pass is met at once, the crashed run's lease
                # costs a few more reads. (A second from the start kept a
                # parent waiting a second for another process's pass.)
                backoff = min(_BUSY_POLL * 2**polls, 1.0)
                wait = max(wait, min(busy.expires_at - time.time(), backoff))
                polls += 1
            await asyncio.sleep(min(wait, deadline - now))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:subsaga"


def _callable_name(given: object) -> str:
    return str(getattr(given, "__qualname__", None) or type(given).__name__)


#: Per step class: why it cannot be built as ``source()`` (``_needs_arguments``).
#: Asked at every run of a parent whose store is checked; read once per class:
#: ``inspect.signature`` of a class with a builtin ``__init__`` parses its text
#: signature, and on 3.13 leaves a class and its functions (a reference cycle)
#: for the garbage collector each time.
_NEEDS_ARGUMENTS: dict[type, str | None] = class_cache("subsaga._NEEDS_ARGUMENTS")


def _needs_arguments(source: object) -> str | None:
    """Why the step class ``source`` cannot be built as ``source()``, the way
    a child saga built from its class builds it (None: it can, or it is no
    class, or its signature cannot be read — then only the call can tell)."""
    if not isinstance(source, type):
        return None
    try:
        return _NEEDS_ARGUMENTS[source]
    except KeyError:
        return remember(_NEEDS_ARGUMENTS, source, _signature_refusal(source))


def _signature_refusal(source: type) -> str | None:
    try:
        inspect.signature(source).bind()
    except TypeError as why:
        return str(why)
    except ValueError:  # no signature to read (a builtin)
        return None
    return None


def _not_awaitable(value: _V, name: str, keyword: str) -> _V:
    """``value``, what a ``SubSaga``'s ``context=`` or ``merge=`` returned,
    unless it is an awaitable: a lambda around an async call, which the
    construction-time check cannot see. It is closed (no "never awaited"
    warning on top) and refused, naming the step and the fix."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise TypeError(
            f"SubSaga {name!r}: {keyword}= returned an awaitable ({type(value).__name__}) "
            f"instead of {'the child context' if keyword == 'context' else 'None'}: it is "
            f"called without await, so it must be a plain function (do awaited work in a step)"
        )
    return value
