"""``ResumableSaga``: the half of a ``Saga`` that picks a run up from its
journal instead of starting one (S10).

``Saga`` (saga.py) is the definition bound to its collaborators, and the
runs it starts (``run``; ``transaction``, whose ``SagaTransaction`` is in
transaction.py). This base class is what a saga does with a run already
journaled: ``Saga.resume``, and what the others resume through —
``LeasedRun`` (resumption.py: ``recover`` and ``RecoveryWorker``) calls
``_resume_record``, a ``SubSaga`` undoing its child saga
``_unwind_record``, an operator's ``retry_unwinding`` (reopening.py)
``_reopen_record``. Each builds an ``Execution`` standing where the journal
stops (``_execution_at``) over the plan ``Saga.__init__`` built. A base
class, not a module of functions, so that those callers keep calling the
saga; it never imports saga.py (imports run one way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeVar

from .context import context_from_dict
from .definition import SagaDefinition
from .errors import ContextDecodeError, CorruptSagaRecord, RecordedError, SagaFailed, short_id
from .executor import Execution, SagaResult
from .given_numbers import seconds_given
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
from .shielding import claimed
from .status import SagaStatus
from .store.base import Lease, RecoverableStore, SagaRecord, SagaStore, is_recoverable

__all__ = ["ResumableSaga"]

_log = library_logger("fallback_saga")

ContextT = TypeVar("ContextT")


class ResumableSaga(Generic[ContextT]):
    """Resuming, unwinding and reopening a saga from its journal: the base of ``Saga``."""

    # Set by Saga: its definition, checked when the class is created ...
    definition: ClassVar[SagaDefinition]
    # ... and, by Saga.__init__, the store and the plan built from the definition.
    store: SagaStore
    _plan: tuple[PlanItem, ...]
    # Positions (groups count each member) -> the plan member, and the index
    # of its item in _plan; each group's positions.
    _members: tuple[Branch | FallbackPlan, ...]
    _item_at: tuple[int, ...]
    _groups: tuple[range, ...]

    if TYPE_CHECKING:
        # Saga's: a run of this saga, its context checked (declared for the
        # type checker only, so that no attribute is added to the class).
        def _execution(
            self, context: ContextT, saga_id: str | None, fence: Lease | None = None
        ) -> Execution: ...

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
        # As a worker's lease: one <= 0 has run out when it is taken and gets
        # no heartbeat, so a worker could claim the saga and drive it too
        # while this resume runs its steps.
        lease_seconds = seconds_given("lease_seconds", lease_seconds, positive=True)
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
        context: Any = _journaled_context(record, definition)
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
        context: Any = _journaled_context(record, definition)
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
        context: Any = _journaled_context(record, definition)
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


def _journaled_context(record: SagaRecord, definition: SagaDefinition) -> Any:
    """The context ``record`` holds, as the saga's context class; a journal
    it does not fit (the class changed since the saga started) is refused
    naming the saga and the field (``ContextDecodeError``), before any step
    runs. A saga that declares no context class has none to read it into (a
    durable store refuses such a saga when it is made; this is a record of
    the in-memory store, or of a store written to another way)."""
    context_type = definition.context_type
    if context_type is None:
        raise TypeError(
            f"{definition.saga_name} must declare its context type (Saga[MyContext]) "
            f"to be resumed from a journal"
        )
    try:
        return context_from_dict(context_type, record.context)
    except ContextDecodeError as error:
        raise error.in_saga(record.saga_id, definition.saga_name, context_type) from error
