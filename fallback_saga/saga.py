"""``Saga``: declare the steps once; run them as often as you like."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Iterable
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeVar

from .compact_journal import Shape, plan_shape
from .context import context_from_dict
from .definition import (
    BranchSpec,
    FallbackSpec,
    GroupSpec,
    ItemSpec,
    SagaDefinition,
    build_definition,
    check_retry,
    check_saga_name,
)
from .errors import ContextDecodeError, CorruptSagaRecord, RecordedError, SagaFailed, short_id
from .events import Hooks, listener_tuple
from .executor import Execution, SagaResult
from .journal import DEFAULT_JOURNAL_RETRY, DEFAULT_JOURNAL_TIMEOUT
from .log_lines import library_logger
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .results import journaled_results, results_by_position
from .resumption import (
    LeasedRun,
    ResumePoint,
    check_definition,
    check_unwinding_retryable,
    default_owner,
    ended_the_process,
    resume_point,
)
from .retry import DEFAULT_COMPENSATION_RETRY, RetryPolicy
from .run_settings import RunSettings
from .shielding import cancelled_again, claimed, loop_gone, reset_var, running_task, shielded
from .status import SagaStatus
from .step import _CURSOR, SagaStepResult, Step, StepCursor
from .store.base import (
    Lease,
    RecoverableStore,
    SagaRecord,
    SagaStore,
    check_store,
    is_live_journal,
    is_recoverable,
)
from .store.memory import MemorySagaStore
from .write_ahead import JournalWriteFailed

__all__ = ["Saga", "SagaTransaction"]

_log = library_logger("fallback_saga")

ContextT = TypeVar("ContextT")

StepFactory = Callable[[type], Any]


class Saga(Generic[ContextT]):
    """Subclass with ``steps = [...]``: step classes, step instances or ``Fallback``\\ s.

    The list (a tuple is accepted too; type checkers expect a list) is
    validated when the class is created (``SagaDefinitionError``).
    An instance binds the definition to its collaborators::

        saga = OrderSaga(store=SQLiteSagaStore("sagas.db"), step_factory=container.get)
        result = await saga.run(OrderContext(order_id="42"))

    * ``store`` — where every transition is journaled (default: a fresh
      ``MemorySagaStore`` per saga instance, available as ``saga.store``);
    * ``step_factory`` — ``factory(step_class) -> step`` builds each step
      class once, when the saga instance is created (dependency injection;
      default ``cls()``); step instances in ``steps`` are used as given;
    * ``compensation_retry`` — the ``RetryPolicy`` of every ``compensate``
      (default: 3 attempts, 0.1 s doubling, jittered, capped at 5 s);
    * ``listeners`` — objects with hooks (see ``SagaListener``);
    * ``journal_retry`` — the ``RetryPolicy`` of every journal write to a
      durable store (default: 6 attempts over about 1.5 s). A write the store
      still refuses then stops the run with ``SagaInterrupted``: no step or
      compensation runs unless its record is durable, and the saga is left
      for recovery;
    * ``journal_timeout`` — seconds all the tries of one journal write may
      take, waits included (default 10; ``None``: no limit): a store that
      does not answer at all stops the run within it, like one that refuses.

    One instance may run many sagas concurrently; steps should keep no
    per-run state on ``self`` (the context is where run state lives).
    """

    # Step classes, step instances, Fallbacks and Parallel groups, checked when
    # the class is created (S11). Left list[Any] on purpose: a class variable's
    # type is invariant, so a narrower list refuses ``steps = made`` (a list
    # built elsewhere, of step classes) and a Sequence refuses a subclass's
    # ``steps: ClassVar[list[Any]]`` under pyright, both correct code. A tuple
    # is accepted at runtime all the same (build_definition takes a sequence).
    steps: ClassVar[list[Any]]
    definition: ClassVar[SagaDefinition]
    # The saga's name in the journal: recovery finds the class to resume a saga
    # with by it, so a renamed class keeps its sagas in flight by keeping it.
    # Declared in a class body (checked at class creation, inherited like any
    # class attribute), or the class name; always a str once the class exists.
    name: ClassVar[str]
    _declared_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls._declared_name = check_saga_name(cls, cls.__dict__["name"])
        cls.name = cls._declared_name or cls.__name__
        steps = getattr(cls, "steps", None)
        if steps is None:
            return  # an abstract intermediate class; its subclasses declare steps
        cls.definition = build_definition(cls, steps, cls.name, base=Saga)

    def __init__(
        self,
        *,
        store: SagaStore | None = None,
        step_factory: StepFactory | None = None,
        compensation_retry: RetryPolicy | None = None,
        listeners: Iterable[object] = (),
        journal_retry: RetryPolicy | None = None,
        journal_timeout: float | None = DEFAULT_JOURNAL_TIMEOUT,
    ) -> None:
        definition = getattr(type(self), "definition", None)
        if definition is None:
            raise TypeError(f"{type(self).__name__} declares no steps; subclass Saga with steps")
        if step_factory is not None and not callable(step_factory):
            raise TypeError(
                f"step_factory must be a callable factory(step_class) -> step, "
                f"got a {type(step_factory).__name__}"
            )
        if compensation_retry is not None and not isinstance(compensation_retry, RetryPolicy):
            raise TypeError(f"compensation_retry must be a RetryPolicy, got {compensation_retry!r}")
        if journal_retry is not None and not isinstance(journal_retry, RetryPolicy):
            raise TypeError(f"journal_retry must be a RetryPolicy, got {journal_retry!r}")
        self.journal_retry = journal_retry or DEFAULT_JOURNAL_RETRY
        if journal_timeout is not None and not (
            isinstance(journal_timeout, int | float)
            and not isinstance(journal_timeout, bool)
            and 0 < journal_timeout < float("inf")
        ):
            raise ValueError(
                f"journal_timeout must be a finite number of seconds > 0, or None, "
                f"got {journal_timeout!r}"
            )
        self.journal_timeout = journal_timeout
        if store is not None:
            check_store(store)
        self.store: SagaStore = store if store is not None else MemorySagaStore()
        self._live_store = is_live_journal(self.store)
        self.compensation_retry = compensation_retry or DEFAULT_COMPENSATION_RETRY
        self.listeners = listener_tuple(listeners)
        self._hooks = Hooks(self.listeners)
        factory = step_factory or _default_factory(type(self))
        self._plan: tuple[PlanItem, ...] = tuple(
            _plan_item(spec, factory) for spec in definition.items
        )
        _refuse_children_elsewhere(type(self).__name__, self._plan, self.store)
        # Positions (groups count each member) -> the plan: for resuming.
        self._members: tuple[Branch | FallbackPlan, ...] = tuple(
            member
            for item in self._plan
            for member in (item.members if isinstance(item, GroupPlan) else (item,))
        )
        self._item_at: tuple[int, ...] = tuple(
            index
            for index, item in enumerate(self._plan)
            for _ in (item.members if isinstance(item, GroupPlan) else (item,))
        )
        self._groups: tuple[range, ...] = tuple(
            item.positions for item in self._plan if isinstance(item, GroupPlan)
        )
        self._context_type = definition.context_type
        self._settings = RunSettings(
            saga_name=definition.saga_name,
            fingerprint=definition.fingerprint,
            store=self.store,
            hooks=self._hooks,
            compensation_retry=self.compensation_retry,
            live=self._live_store,
            journal_retry=self.journal_retry,
            journal_timeout=self.journal_timeout,
        )
        # The commonest saga takes the lean path (Execution.run_plain): the
        # default store, nobody listening, every step plain.
        self._runs_plain = (
            type(self.store) is MemorySagaStore
            and self._hooks.silent
            and all(not isinstance(item, GroupPlan) and item.plain for item in self._plan)
        )
        # What run_plain's compact journal leaves out (see compact_journal).
        self._shape: Shape = plan_shape(
            (item,) if isinstance(item, Branch)
            else (item.primary, item.fallback)  # type: ignore[union-attr]
            for item in self._plan
        ) if self._runs_plain else ()

    def _execution(
        self, context: ContextT, saga_id: str | None, fence: Lease | None = None
    ) -> Execution:
        self._check_context(context)
        return Execution(self._settings, context, saga_id, fence)

    def _check_context(self, context: object) -> None:
        expected = self._context_type
        if expected is not None and not isinstance(context, expected):
            raise TypeError(
                f"{self.name} runs on {expected.__name__}, got {type(context).__name__}"
            )

    async def run(self, context: ContextT, *, saga_id: str | None = None) -> SagaResult[ContextT]:
        """Run every step in order.

        Returns a ``SagaResult`` when all completed. Otherwise unwinds the
        completed steps (in reverse) and raises ``SagaFailed``. If the task is
        cancelled, the completed steps are compensated before
        ``CancelledError`` propagates. A context the journal cannot serialize
        is refused before any step runs (``ContextSerializationError``).
        """
        expected = self._context_type
        if expected is not None and not isinstance(context, expected):
            self._check_context(context)
        if self._runs_plain:
            execution = Execution(self._settings, context, saga_id)
            return await execution.run_plain(self._plan, self._shape)
        return await Execution(self._settings, context, saga_id).run_all(self._plan)

    async def resume(
        self,
        saga_id: str,
        *,
        allow_changed_definition: bool = False,
        lease_seconds: float = 300.0,
        operator: str | None = None,
    ) -> SagaResult[ContextT]:
        """Continue a saga from its journal in ``self.store`` (S10).

        * RUNNING: continues from the first step whose ``act`` did not
          complete; that step runs again, with the same
          ``current_step().idempotency_key``. A Fallback whose fallback had
          started resumes with the fallback.
        * COMPENSATING: finishes the unwinding; never runs a forward step and
          never compensates a step twice, then raises ``SagaFailed``.
        * Finished: COMPLETED returns its stored outcome (with the results the
          journal kept); COMPENSATED/FAILED raise ``SagaFailed`` with the
          recorded error.

        A failure during the resumed run unwinds and raises ``SagaFailed``,
        like ``run``. With a durable store the saga is leased for the
        resumption (``lease_seconds``): ``SagaBusy`` if another worker holds
        it; anyone who drove it before is fenced out. ``SagaNotFound`` for an
        unknown id;
        ``SagaDefinitionChanged`` if the saga was started with other steps,
        unless ``allow_changed_definition`` (steps are then matched by position),
        which refuses too when a step the journal holds is now at another
        place or its place is gone (it would be compensated as another step).

        ``operator``: who resumes it by hand (``user@host:pid``, as the CLI's
        ``resume ID`` passes), for an operator's tool; ``None`` (a program's
        resume) changes nothing. Given, the lease is taken in that name, and
        the first row the resumed run writes in a durable store says
        ``resumed by an operator: <operator>`` (``show ID`` lists it), as
        ``retry_unwinding`` names who reopened a saga.
        """
        if operator is not None and (not isinstance(operator, str) or not operator):
            raise ValueError(f"operator must be a non-empty str or None, got {operator!r}")
        store = self.store
        record = await store.load(saga_id)
        if record.status.is_final or not is_recoverable(store):
            return await self._resume_record(
                record, allow_changed_definition=allow_changed_definition,
                resumed_by=operator,
            )
        # Refused before the claim (and checked again under the lease): a
        # lease taken and given back clears the saga's count of claims, and
        # a parked saga resumed by mistake with another saga, or with other
        # steps, would be claimed by workers again (store._parking).
        self._check_record(record, allow_changed_definition=allow_changed_definition)
        return await self._resume_leased(
            store, saga_id, lease_seconds=lease_seconds,
            allow_changed_definition=allow_changed_definition, operator=operator,
        )

    async def _resume_leased(
        self,
        store: RecoverableStore,
        saga_id: str,
        *,
        lease_seconds: float,
        allow_changed_definition: bool,
        operator: str | None,
    ) -> SagaResult[ContextT]:
        # An interrupted saga in a durable store: lease it first, so that
        # resuming is exclusive and whoever drove it before is fenced out.
        # (Given back if we are cancelled while the claim is on its way: see claimed.)
        lease = await claimed(
            store.claim_saga(saga_id, owner=operator or default_owner(),
                             lease_seconds=lease_seconds),
            store.release,
        )
        run: LeasedRun | None = None
        keep_lease = False
        try:
            record = await store.load(saga_id)
            # With its heartbeat: the lease is renewed while the saga runs.
            run = LeasedRun(
                self,
                record,
                lease,
                store=store,
                lease_seconds=lease_seconds,
                allow_changed_definition=allow_changed_definition,
                resumed_by=operator,
            )
            return await run.run()
        except BaseException as error:
            # A step ended the process: the lease is kept, as a worker keeps
            # it (see ended_the_process) — a parked saga stays parked.
            keep_lease = ended_the_process(error, run)
            raise
        finally:
            if not keep_lease:
                try:
                    await store.release(lease)
                except Exception as error:  # the lease expires on its own
                    _log.warning("saga %s: could not release its lease: %s: %s",
                                 short_id(saga_id), type(error).__name__, error)

    def _check_record(self, record: SagaRecord, *, allow_changed_definition: bool) -> None:
        """Refuse ``record`` unless it is a saga of this definition's name
        (``ValueError``) started with these steps (``SagaDefinitionChanged``,
        unless ``allow_changed_definition`` may override it)."""
        definition = self.definition
        if record.saga_name != definition.saga_name:
            raise ValueError(
                f"saga {record.saga_id!r} is a {record.saga_name}, not a {definition.saga_name}"
            )
        check_definition(record, definition, allow_changed=allow_changed_definition)

    async def _resume_record(
        self,
        record: SagaRecord,
        *,
        lease: Lease | None = None,
        allow_changed_definition: bool = False,
        resumed_by: str | None = None,
    ) -> SagaResult[ContextT]:
        definition = self.definition
        self._check_record(record, allow_changed_definition=allow_changed_definition)
        if definition.context_type is None:
            raise TypeError(
                f"{definition.saga_name} must declare its context type (Saga[MyContext]) "
                f"to be resumed from a journal"
            )
        context: Any = _journaled_context(record, definition.saga_name, definition.context_type)
        status = record.status
        point = resume_point(record, self._groups)
        failure = point.last_failure or ("", "")
        if status is SagaStatus.COMPLETED:
            return SagaResult(record.saga_id, status, context, journaled_results(record))
        if status.is_final:
            raise SagaFailed(
                saga_id=record.saga_id,
                saga_name=record.saga_name,
                status=status,
                failed_step=failure[0],
                error=RecordedError(failure[1] or "failed in an earlier run"),
            )
        execution = self._execution_at(record, context, point, lease, allow_changed_definition)
        if resumed_by is not None and not execution.live:
            execution.note = f"resumed by an operator: {resumed_by}"
        if status is SagaStatus.COMPENSATING:
            await execution.resume_unwinding(
                failure[0], RecordedError(failure[1] or "failed in an earlier run")
            )
        # What the steps that completed returned, so that the result is the one a
        # run without the crash gives (a saga still to unwind returns none).
        results = results_by_position(record)
        if point.next_position >= len(self._members):
            # Every act completed but the completion was not journaled: finish it.
            execution.results = [result for _, result in results]
            execution.begin()
            return await execution.complete()
        start = self._item_at[point.next_position]
        item = self._plan[start]
        if isinstance(item, GroupPlan):
            # A group the crash interrupted: its members that completed keep
            # their results and do not run again.
            group_results = {
                position: result for position, result in results if position in item.positions
            }
            execution.results = [
                result for position, result in results if position < item.positions.start
            ]
            return await execution.run_all(
                self._plan, start, resumed_group=group_results,
                fallbacks_started=point.fallbacks_started,
                uncertain=execution.crashed_calls,
            )
        execution.results = [result for _, result in results]
        return await execution.run_all(
            self._plan, start, point.fallback_in_flight,
            uncertain=execution.crashed_calls,
        )

    def _crashed_calls(self, record: SagaRecord, point: ResumePoint) -> tuple[Branch, ...]:
        """The branches whose calls the crashed run was making when it died
        (their effect is uncertain: see Execution.run_all)."""
        return tuple(
            self._branch_at(record, position, branch) for position, branch in point.open_calls
        )

    async def _unwind_record(
        self,
        record: SagaRecord,
        lease: Lease | None,
        why: str,
        *,
        allow_changed_definition: bool = False,
    ) -> None:
        """Compensate every step of ``record`` that completed (or was
        cancelled in flight) and is not compensated yet, in reverse — a
        saga COMPLETED, RUNNING or already COMPENSATING alike — and raise
        ``SagaFailed`` with the final status (COMPENSATED, or FAILED when a
        compensation gave up). How a ``SubSaga`` undoes a child saga whose
        parent unwinds; ``why`` is the error the child's record is given;
        ``allow_changed_definition``: the override of the parent's resume."""
        definition = self.definition
        check_definition(record, definition, allow_changed=allow_changed_definition)
        if definition.context_type is None:
            raise TypeError(f"{definition.saga_name} must declare its context type")
        context: Any = _journaled_context(record, definition.saga_name, definition.context_type)
        point = resume_point(record, self._groups)
        execution = self._execution_at(record, context, point, lease, allow_changed_definition)
        if record.status is SagaStatus.RUNNING:
            # A crashed run was inside these steps' acts (one step, or members
            # of a group): they may have taken effect, and no later call
            # answered for them: they are undone with the rest (see
            # Execution.run_all).
            for branch in execution.crashed_calls:
                execution.push_crashed_call(branch)
        await execution.resume_unwinding("", RecordedError(why))

    async def _reopen_record(
        self,
        record: SagaRecord,
        *,
        lease: Lease | None,
        allow_changed_definition: bool,
        reopened_by: str,
        runs_a_child: Callable[[Branch], bool],
    ) -> NoReturn:
        """An operator's retry of a FAILED saga's unwinding (reopening.py):
        compensate, in reverse, every step the journal holds completed and
        not compensated — the one whose compensation gave up first, called
        again with its idempotency key — never a forward step; raise
        ``SagaFailed`` with the final status (COMPENSATED, or FAILED again).
        The saga goes FAILED -> COMPENSATING with the first compensation's
        STARTED row, which names ``reopened_by`` (S13: durable before it runs).

        A step journaled left undone because the saga it ran ended FAILED
        (``runs_a_child``: a ``SubSaga``) is compensated too, first among
        the steps at its place or before: its compensation reopens the
        child's unwinding (S15) — the saga ends COMPENSATED only once the
        child is, and the step's COMPLETED compensation row says so."""
        definition = self.definition
        if record.saga_name != definition.saga_name:
            raise ValueError(
                f"saga {record.saga_id!r} is a {record.saga_name}, not a {definition.saga_name}"
            )
        check_unwinding_retryable(record, leased=lease is not None)
        check_definition(record, definition, allow_changed=allow_changed_definition)
        if definition.context_type is None:
            raise TypeError(
                f"{definition.saga_name} must declare its context type (Saga[MyContext]) "
                f"to be resumed from a journal"
            )
        context: Any = _journaled_context(record, definition.saga_name, definition.context_type)
        point = resume_point(record, self._groups)
        failure = point.last_failure or ("", "")
        execution = self._execution_at(record, context, point, lease, allow_changed_definition)
        execution.reopened_by = f"reopened by an operator: {reopened_by}"
        execution.reopener = reopened_by
        left = execution.left_undone
        if left:
            for position, branch_name, step in _left_undone_at(record, left):
                branch = self._branch_at(record, position, branch_name)
                if not runs_a_child(branch):
                    continue  # its act's own saga is not ours to reopen: still left undone
                del left[step]
                stack = execution.stack
                # Above what ran before it, below what ran at its place after
                # it (a Fallback's fallback): LIFO (S5).
                index = next((i for i, b in enumerate(stack) if b.position >= position),
                             len(stack))
                stack.insert(index, branch)
        await execution.resume_unwinding(
            failure[0], RecordedError(failure[1] or "failed in an earlier run")
        )

    def _execution_at(
        self,
        record: SagaRecord,
        context: Any,
        point: ResumePoint,
        lease: Lease | None,
        allow_changed_definition: bool,
    ) -> Execution:
        """A run that picks ``record`` up where its journal stops: the journal
        as written, the compensation stack as it stands."""
        execution = self._execution(context, record.saga_id, fence=lease)
        execution.resumed = True
        execution.reopened_by = None  # an operator's reopening sets it: see _reopen_record
        execution.reopener = None
        # The operator's override reaches the child sagas the run drives.
        execution.allow_changed_definition = allow_changed_definition
        # The calls the crashed run was making: each is answered by a call of
        # it with the same idempotency key — past its breaker, even an open
        # one (Execution.try_branch): a rejection answers nothing, and the
        # fallback would then do the work again while the first call's
        # effect may stand.
        execution.crashed_calls = self._crashed_calls(record, point)
        execution.created = True
        execution.journaled_status = record.status  # what a SagaInterrupted reports
        execution.journal = list(record.history)
        execution.written = len(execution.journal)
        execution.stack = [self._branch_at(record, position, branch) for position, branch
                           in point.stack]
        if point.left_undone:  # journaled already: see Execution.leave_undone
            execution.left_undone = {
                step: RecordedError(text) for step, text in point.left_undone
            }
        return execution

    def _branch_at(self, record: SagaRecord, position: int, branch: str) -> Branch:
        item = self._members[position] if position < len(self._members) else None
        if isinstance(item, Branch):
            return item
        if isinstance(item, FallbackPlan):
            return item.fallback if branch == "fallback" else item.primary
        raise CorruptSagaRecord(
            record.saga_id,
            f"position {position} is beyond the saga's {len(self._members)} steps",
        )

    def transaction(
        self, context: ContextT, *, saga_id: str | None = None
    ) -> SagaTransaction[ContextT]:
        """Step through the saga: ``async with saga.transaction(ctx) as tx: async for r in tx``.

        The saga commits (COMPLETED) when the block exits normally after every
        step ran. Leaving the block early — an exception, a ``break`` — unwinds
        the steps that completed; an exception then propagates unchanged.
        """
        return SagaTransaction(self._execution(context, saga_id), self._plan)


def _left_undone_at(
    record: SagaRecord, left: dict[str, BaseException]
) -> list[tuple[int, str, str]]:
    """(position, branch, step) of each step of ``left``, as its last
    compensation row (the FAILED one ``Execution.leave_undone`` wrote) has them."""
    found: dict[str, tuple[int, str, str]] = {}
    for entry in record.history:
        if entry.action == "compensate" and entry.step in left:
            found[entry.step] = (entry.position, entry.branch, entry.step)
    return list(found.values())


class SagaTransaction(Generic[ContextT]):
    """A saga run driven step by step by the caller (see ``Saga.transaction``)."""

    def __init__(self, execution: Execution, plan: tuple[PlanItem, ...]) -> None:
        self._execution = execution
        self._plan = plan
        self._next = 0
        # A group's results still to yield, first first (popleft: O(1) each).
        self._ready: deque[SagaStepResult[ContextT, Any]] = deque()
        self._entered = False
        self._finished = False
        self._token: Token[StepCursor | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.result: SagaResult[ContextT] | None = None

    @property
    def saga_id(self) -> str:
        return self._execution.saga_id

    @property
    def status(self) -> SagaStatus:
        return self._execution.status

    @property
    def context(self) -> ContextT:
        return self._execution.context  # type: ignore[no-any-return]

    if not TYPE_CHECKING:
        # A forgotten `async` (`with saga.transaction(ctx)`, `for r in tx`)
        # would otherwise get Python's bare "does not support the context
        # manager protocol". Hidden from type checkers, which already flag
        # both and would accept them if they saw these methods.
        def __enter__(self) -> NoReturn:
            raise TypeError("a saga transaction is asynchronous: use "
                            "`async with saga.transaction(context) as tx:`")

        def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
            return None

        def __iter__(self) -> NoReturn:
            raise TypeError("a saga transaction is asynchronous: iterate it with "
                            "`async for step_result in tx:`")

    async def __aenter__(self) -> SagaTransaction[ContextT]:
        if self._entered:
            raise RuntimeError("a saga transaction can be entered only once")
        self._entered = True
        self._loop = asyncio.get_running_loop()
        self._execution.begin()
        self._token = _CURSOR.set(self._execution)
        return self

    def __aiter__(self) -> SagaTransaction[ContextT]:
        return self

    async def __anext__(self) -> SagaStepResult[ContextT, Any]:
        if not self._entered:
            raise RuntimeError("iterate a saga transaction inside `async with`")
        if self._ready:
            return self._ready.popleft()
        if self._finished or self._next >= len(self._plan):
            raise StopAsyncIteration
        item = self._plan[self._next]
        execution = self._execution
        # This saga's run is the task's current one while its step runs (and
        # unwinds), whatever another transaction open in this task set since.
        token = _CURSOR.set(execution)
        try:
            # (A cancellation a step's participant swallowed stops the run
            # before the next act: Execution.stop_swallowed.)
            step_results = await execution.run_item(item)
        except (Exception, JournalWriteFailed) as error:
            self._finished = True
            await execution.fail(error)
        except asyncio.CancelledError:
            self._finished = True
            await execution.abort()
            raise
        finally:
            reset_var(_CURSOR, token)
        self._next += 1
        execution.results += step_results
        # A group yields its members' results one by one, in declared order.
        self._ready = deque(step_results[1:])
        return step_results[0]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._settle(exc)
        finally:
            self._execution.driven_in = None  # the block is left: see Execution.driven_in
            if self._token is not None:
                reset_var(_CURSOR, self._token)
                self._token = None

    def _left_away_from_its_loop(self, exc: BaseException) -> bool:
        """The block is left by ``GeneratorExit`` away from the loop it ran
        on (``shielding.loop_gone``): not a generator's consumer closing it,
        but the garbage collector closing a task destroyed pending. Nothing
        can be awaited there: the saga is left as its journal holds it, for
        recovery, as a crash leaves it."""
        return self._loop is not None and loop_gone(exc, self._loop)

    async def _settle(self, exc: BaseException | None) -> None:
        execution = self._execution
        if exc is not None and (
                not isinstance(exc, _LEFT_EARLY) or self._left_away_from_its_loop(exc)):
            # KeyboardInterrupt, SystemExit: the process is going down, nothing
            # is unwound (also when it came out of the unwinding itself).
            self._finished = True
            execution.crashed(exc)
            return
        if self._finished:
            return
        self._finished = True
        token = _CURSOR.set(execution)  # see __anext__
        try:
            if exc is None and self._next >= len(self._plan):
                late = None
                if running_task().cancelling() > execution.cancels:
                    # After the last step, as Execution.run_all does.
                    try:
                        late = await execution.stop_swallowed(at_the_end=True)
                    except asyncio.CancelledError:
                        await execution.abort()  # swallowed by its participant: unwind
                        raise
                self.result = await execution.complete(late)
                if late is not None:
                    raise cancelled_again(late)
                return
            try:
                await shielded(execution.unwind())
            finally:
                execution._report_interruption()
                execution._announce_finish(exc)
            if execution.interruption is not None and not isinstance(exc, _NOBODY_WAITS):
                # The caller must not believe the steps were unwound: they were not all.
                raise execution._stopped(execution.interruption, failure=exc)
        finally:
            reset_var(_CURSOR, token)


# Ways out of a transaction's block that leave the saga to unwind: an error,
# a cancellation, and GeneratorExit — the block was inside an async generator
# whose consumer closed it (``aclose()``, or the generator was collected).
_LEFT_EARLY = (Exception, asyncio.CancelledError, GeneratorExit)
# ... of which those after which nobody waits for an answer: an interruption
# of the unwinding is logged (``_report_interruption``), not raised.
_NOBODY_WAITS = (asyncio.CancelledError, GeneratorExit)


def _default_factory(saga_cls: type) -> StepFactory:
    """``cls()`` for every step class, with a hint when a constructor needs arguments."""

    def construct(cls: type) -> Any:
        try:
            return cls()
        except TypeError as error:
            if not _needs_arguments(cls):
                raise  # the constructor's own code failed: not ours to explain
            raise TypeError(
                f"{saga_cls.__name__} builds its step class {cls.__name__} as "
                f"{cls.__name__}(), which failed: {error}. Pass step_factory= to build "
                f"steps whose constructor needs arguments, e.g. "
                f"{saga_cls.__name__}(step_factory=lambda cls: container.get(cls)), "
                f"or put an instance of {cls.__name__} in steps"
            ) from error

    return construct


def _needs_arguments(cls: type) -> bool:
    try:
        inspect.signature(cls).bind()
    except TypeError:
        return True
    except ValueError:  # no signature to read (a builtin): assume the call was the problem
        return True
    return False


def _plan_item(spec: ItemSpec, factory: StepFactory) -> PlanItem:
    if isinstance(spec, GroupSpec):
        members = tuple(_plan_item(member, factory) for member in spec.members)
        return GroupPlan(members)  # type: ignore[arg-type]  # members are never groups
    if isinstance(spec, FallbackSpec):
        return FallbackPlan(
            spec.rule,
            _build_branch(spec.primary, factory, spec.rule.retry),
            _build_branch(spec.fallback, factory, None),
        )
    return _build_branch(spec, factory, None)


def _refuse_children_elsewhere(
    saga_name: str, plan: tuple[PlanItem, ...], store: SagaStore
) -> None:
    """Ask each step that runs a child saga (``SubSaga``: it has
    ``_refuse_parent_store``) whether it can run under a parent journaling
    to ``store``, before anything runs. (Asked of the step, not looked up by
    its class: the module of child sagas imports this one.)"""
    for item in plan:
        for member in item.members if isinstance(item, GroupPlan) else (item,):
            branches = (
                (member.primary, member.fallback) if isinstance(member, FallbackPlan)
                else (member,)
            )
            for branch in branches:
                refuse = getattr(
                    getattr(branch.act, "__self__", None), "_refuse_parent_store", None
                )
                if refuse is not None:
                    refuse(saga_name, branch.name, store)


def _build_branch(spec: BranchSpec, factory: StepFactory, retry: RetryPolicy | None) -> Branch:
    step = factory(spec.source) if isinstance(spec.source, type) else spec.source
    if not isinstance(step, Step):
        raise TypeError(
            f"step_factory({spec.source.__name__}) returned {step!r}, which has no "
            f"async act/compensate"
        )
    own_retry = getattr(step, "retry", None)
    if isinstance(spec.source, type):  # a step the factory built: its __init__ may set it
        check_retry(own_retry, f"step {spec.name!r} built by step_factory", TypeError)
    if retry is None and isinstance(own_retry, RetryPolicy):
        retry = own_retry
    return Branch(spec.position, spec.name, spec.branch, step, spec.timeout, retry)


def _journaled_context(record: SagaRecord, saga_name: str, context_type: type) -> Any:
    """The context ``record`` holds, as ``context_type``; a journal it does
    not fit (the class changed since the saga started) is refused naming the
    saga and the field (``ContextDecodeError``), before any step runs."""
    try:
        return context_from_dict(context_type, record.context)
    except ContextDecodeError as error:
        raise error.in_saga(record.saga_id, saga_name, context_type) from error
