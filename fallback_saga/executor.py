"""The run of one saga: a state machine over the steps, a compensation stack,
and write-ahead journaling.

Per run, one ``Execution`` owns the context, the compensation stack and the
status. It journals in batches: transitions accumulate in ``pending`` and are
written in one store call right before the next step's ``act`` is called
(write-ahead: a step's STARTED is durable before it runs), so "step N
completed" and "step N+1 started" share one write. When a breaker rejects a
call, the rejected step's rows simply join the fallback's write.

Unwinding always runs in its own task, shielded from cancellation: once it
begins, every completed step gets its ``compensate`` call even if the caller
gives up (S8).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar

from .breaker import CircuitBreakerProtocol
from .context import context_to_dict, take_snapshot
from .errors import ContextSerializationError, SagaFailed, SagaStoreError
from .events import HOOK_NAMES, Hook, collect_hooks, emit
from .fallback import Fallback
from .retry import RetryPolicy
from .status import SagaStatus, StepStatus
from .step import _CURRENT_STEP, SagaStepResult, StepInfo
from .store.base import JournalEntry, SagaStore

if TYPE_CHECKING:
    from .context import Snapshot

__all__ = ["SagaResult"]

_log = logging.getLogger("fallback_saga")

ContextT = TypeVar("ContextT")
T = TypeVar("T")

_STARTED = StepStatus.STARTED
_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[ContextT]):
    """A saga that completed: every step's ``act`` returned."""

    saga_id: str
    status: SagaStatus
    context: ContextT
    results: list[SagaStepResult[ContextT, Any]]


class Branch:
    """One step, built and ready to call (a plain step, or one side of a Fallback)."""

    __slots__ = ("act", "branch", "compensate", "name", "position", "retry", "timeout")

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


class FallbackPlan:
    __slots__ = ("breaker", "fallback", "position", "primary", "rule")

    def __init__(self, rule: Fallback, primary: Branch, fallback: Branch) -> None:
        self.position = primary.position
        self.rule = rule
        self.primary = primary
        self.fallback = fallback
        self.breaker: CircuitBreakerProtocol | None = rule.circuit_breaker


PlanItem = Branch | FallbackPlan


class Hooks:
    """Listener callables per hook; an empty tuple means nobody listens."""

    __slots__ = HOOK_NAMES

    def __init__(self, listeners: tuple[object, ...]) -> None:
        for name in HOOK_NAMES:
            setattr(self, name, collect_hooks(listeners, name))

    saga_started: tuple[Hook, ...]
    saga_finished: tuple[Hook, ...]
    step_started: tuple[Hook, ...]
    step_completed: tuple[Hook, ...]
    step_failed: tuple[Hook, ...]
    fallback_taken: tuple[Hook, ...]
    compensation_started: tuple[Hook, ...]
    compensation_completed: tuple[Hook, ...]
    compensation_failed: tuple[Hook, ...]
    breaker_state_changed: tuple[Hook, ...]


class JournalWriteFailed(BaseException):
    """Internal: the store failed a write-ahead.

    A ``BaseException`` on purpose: raised inside a breaker-guarded call, it
    must not count against the downstream service, trigger a fallback or be
    retried. The executor unwraps it.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Execution:
    """The state of one saga run. Not reusable; not shared between tasks."""

    __slots__ = (
        "compensation_retry",
        "context",
        "context_dirty",
        "created",
        "current_step",
        "fingerprint",
        "hooks",
        "initial_context",
        "pending",
        "pending_status",
        "results",
        "saga_id",
        "saga_name",
        "stack",
        "status",
        "store",
    )

    def __init__(
        self,
        *,
        saga_name: str,
        fingerprint: str,
        context: Any,
        saga_id: str | None,
        store: SagaStore,
        hooks: Hooks,
        compensation_retry: RetryPolicy,
    ) -> None:
        if saga_id is None:
            saga_id = str(uuid.uuid4())
        elif not isinstance(saga_id, str) or not saga_id:
            raise ValueError(f"saga_id must be a non-empty str, got {saga_id!r}")
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.fingerprint = fingerprint
        self.context = context
        self.store = store
        self.hooks = hooks
        self.compensation_retry = compensation_retry
        self.stack: list[Branch] = []
        self.results: list[SagaStepResult[Any, Any]] = []
        self.pending: list[JournalEntry] = []
        self.pending_status: SagaStatus | None = None
        self.context_dirty = False
        self.created = False
        self.status = SagaStatus.RUNNING
        self.current_step = ""
        # S12: a context the journal cannot hold is refused before any step runs.
        self.initial_context = context_to_dict(context)

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        if self.hooks.saga_started:
            emit(self.hooks.saga_started, self.saga_id, self.saga_name)

    async def run_all(self, plan: tuple[PlanItem, ...]) -> SagaResult[Any]:
        self.begin()
        try:
            for item in plan:
                self.results.append(await self.run_item(item))
        except (Exception, JournalWriteFailed) as error:
            await self.fail(error)
        except asyncio.CancelledError:
            await self.abort()
            raise
        return await self.complete()

    async def run_item(self, item: PlanItem) -> SagaStepResult[Any, Any]:
        if item.__class__ is Branch:
            branch = item
            response = await self.attempt(branch, take_snapshot(self.context), None)
        else:
            branch, response = await self.run_fallback(item)
        if response.__class__ is SagaStepResult:
            return response  # type: ignore[no-any-return]
        return SagaStepResult(response=response, step_name=branch.name, saga_id=self.saga_id)

    async def complete(self) -> SagaResult[Any]:
        self.pending_status = SagaStatus.COMPLETED
        try:
            await self.flush()
        except JournalWriteFailed as failure:
            raise SagaStoreError(
                f"saga {self.saga_name} ({self.saga_id}) ran every step, but its completion "
                f"could not be journaled; the store still shows it running"
            ) from failure.error
        self.status = SagaStatus.COMPLETED
        self._announce_finish(None)
        return SagaResult(self.saga_id, self.status, self.context, self.results)

    async def fail(self, error: BaseException) -> NoReturn:
        """Unwind after ``error`` stopped the saga, then raise ``SagaFailed`` (S7)."""
        error = _unwrap(error)
        if not self.created and isinstance(error, SagaStoreError):
            # Nothing was journaled and no step ran (e.g. the saga id is taken):
            # there is nothing to unwind, and the store's own error says it best.
            raise error
        try:
            compensation_errors = await _shielded(self.unwind())
        except asyncio.CancelledError:
            self._announce_finish(asyncio.CancelledError())
            raise
        failure = SagaFailed(
            saga_id=self.saga_id,
            saga_name=self.saga_name,
            status=self.status,
            failed_step=self.current_step,
            error=error,
            compensation_errors=compensation_errors,
        )
        self._announce_finish(error)
        raise failure from error

    async def abort(self) -> None:
        """The task was cancelled mid-step: unwind shielded; the caller re-raises."""
        try:
            await _shielded(self.unwind())
        finally:
            self._announce_finish(asyncio.CancelledError())

    def _announce_finish(self, error: BaseException | None) -> None:
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, error)

    # ------------------------------------------------------------------ forward

    async def run_fallback(self, plan: FallbackPlan) -> tuple[Branch, Any]:
        snapshot = take_snapshot(self.context)
        rule = plan.rule
        try:
            return plan.primary, await self.attempt(plan.primary, snapshot, plan)
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
            return plan.fallback, await self.attempt(plan.fallback, snapshot, None)
        except Exception as error:
            # S4: keep both errors; the fallback's chains the primary's.
            if error is not primary_error:
                if error.__cause__ is None:
                    error.__cause__ = primary_error
                elif error.__context__ is None:
                    error.__context__ = primary_error
            raise

    async def attempt(self, branch: Branch, snapshot: Snapshot, plan: FallbackPlan | None) -> Any:
        """Run ``branch.act`` (under the breaker, with retries); on success push it.

        Whatever happens, a failed try leaves the context as the snapshot had it.
        """
        breaker = plan.breaker if plan is not None else None
        attempt = 1
        hooks = self.hooks
        while True:
            self.current_step = branch.name
            self.pending.append(
                JournalEntry(
                    branch.position, branch.name, branch.branch, "act", _STARTED, attempt, None,
                    time.time(),
                )
            )
            if hooks.step_started:
                emit(hooks.step_started, self.saga_id, branch.name, attempt)
            try:
                if breaker is None:
                    response = await self.act(branch, attempt)
                else:
                    response = await breaker.call(self.act, branch, attempt)
            except BaseException as error:
                snapshot.restore(self.context)
                self.pending.append(
                    JournalEntry(
                        branch.position, branch.name, branch.branch, "act", _FAILED, attempt,
                        _describe(_unwrap(error)), time.time(),
                    )
                )
                if hooks.step_failed:
                    emit(hooks.step_failed, self.saga_id, branch.name, _unwrap(error))
                retry = branch.retry
                if (
                    retry is None
                    or not retry.should_retry(error, attempt)
                    or (plan is not None and plan.rule.is_open_circuit(error))
                ):
                    raise
                await retry.wait_before(attempt + 1)
                attempt += 1
                continue
            self.pending.append(
                JournalEntry(
                    branch.position, branch.name, branch.branch, "act", _COMPLETED, attempt, None,
                    time.time(),
                )
            )
            self.context_dirty = True
            self.stack.append(branch)
            if hooks.step_completed:
                emit(hooks.step_completed, self.saga_id, branch.name)
            return response

    async def act(self, branch: Branch, attempt: int) -> Any:
        # Runs inside the breaker (when there is one): the write-ahead happens
        # only for a call that is let through, and a rejected call's rows are
        # written together with whatever comes next.
        await self.flush()
        token = _CURRENT_STEP.set(
            StepInfo(self.saga_id, self.saga_name, branch.name, "act", attempt)
        )
        try:
            if branch.timeout is None:
                return await branch.act(self.context)
            async with asyncio.timeout(branch.timeout):
                return await branch.act(self.context)
        finally:
            _CURRENT_STEP.reset(token)

    # ------------------------------------------------------------------ backward

    async def unwind(self) -> dict[str, BaseException]:
        """Compensate the stack in LIFO order (S5), retrying each (S6)."""
        self.status = SagaStatus.COMPENSATING
        self.pending_status = SagaStatus.COMPENSATING
        hooks = self.hooks
        policy = self.compensation_retry
        errors: dict[str, BaseException] = {}
        stack = self.stack
        while stack:
            branch = stack.pop()
            attempt = 1
            while True:
                self.pending.append(
                    JournalEntry(
                        branch.position, branch.name, branch.branch, "compensate", _STARTED,
                        attempt, None, time.time(),
                    )
                )
                if hooks.compensation_started:
                    emit(hooks.compensation_started, self.saga_id, branch.name, attempt)
                await self.flush(best_effort=True)
                token = _CURRENT_STEP.set(
                    StepInfo(self.saga_id, self.saga_name, branch.name, "compensate", attempt)
                )
                try:
                    if branch.timeout is None:
                        await branch.compensate(self.context)
                    else:
                        async with asyncio.timeout(branch.timeout):
                            await branch.compensate(self.context)
                except Exception as error:
                    self.pending.append(
                        JournalEntry(
                            branch.position, branch.name, branch.branch, "compensate", _FAILED,
                            attempt, _describe(error), time.time(),
                        )
                    )
                    if policy.should_retry(error, attempt):
                        await policy.wait_before(attempt + 1)
                        attempt += 1
                        continue
                    errors[branch.name] = error
                    if hooks.compensation_failed:
                        emit(hooks.compensation_failed, self.saga_id, branch.name, error)
                    break
                finally:
                    _CURRENT_STEP.reset(token)
                self.pending.append(
                    JournalEntry(
                        branch.position, branch.name, branch.branch, "compensate", _COMPLETED,
                        attempt, None, time.time(),
                    )
                )
                self.context_dirty = True
                if hooks.compensation_completed:
                    emit(hooks.compensation_completed, self.saga_id, branch.name)
                break
        self.status = SagaStatus.FAILED if errors else SagaStatus.COMPENSATED
        self.pending_status = self.status
        await self.flush(best_effort=True)
        return errors

    # ------------------------------------------------------------------ journal

    async def flush(self, *, best_effort: bool = False) -> None:
        """Write every pending transition (and the status/context if changed).

        Raises ``JournalWriteFailed``; with ``best_effort`` (while unwinding,
        where stopping would leave steps uncompensated) logs it instead and
        keeps the transitions for the next write.
        """
        if self.created and not self.pending and self.pending_status is None:
            return
        try:
            context = self._encode_context(best_effort)
            if not self.created:
                await self.store.create(
                    self.saga_id,
                    self.saga_name,
                    self.fingerprint,
                    self.initial_context if context is None else context,
                    self.pending,
                    status=self.pending_status or SagaStatus.RUNNING,
                )
                self.created = True
            else:
                await self.store.append(
                    self.saga_id, self.pending, status=self.pending_status, context=context
                )
        except Exception as error:
            if not best_effort:
                raise JournalWriteFailed(error) from error
            _log.error(
                "saga %s (%s): journal write failed while unwinding; compensation goes on: %r",
                self.saga_name, self.saga_id, error,
            )
            return
        self.pending = []
        self.pending_status = None
        self.context_dirty = False

    def _encode_context(self, best_effort: bool) -> dict[str, Any] | None:
        if not self.context_dirty:
            return None
        try:
            return context_to_dict(self.context)
        except ContextSerializationError:
            if not best_effort:
                raise
            return None  # keep journaling the transitions; the last good context stays


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _unwrap(error: BaseException) -> BaseException:
    return error.error if isinstance(error, JournalWriteFailed) else error


async def _shielded(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end in its own task, whatever happens to ours.

    Like ``asyncio.shield``, but when we are cancelled meanwhile we still
    *wait* for it — compensation must not be abandoned half-way — and raise
    ``CancelledError`` only once it has finished.
    """
    task = asyncio.ensure_future(coroutine)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result
