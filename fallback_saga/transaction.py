"""``SagaTransaction``: a saga run the caller drives step by step
(``Saga.transaction``).

``Saga`` (saga.py) builds the run's ``Execution`` over its plan and hands
both here; this module only steps through that plan, commits or unwinds
when the block is left. It never imports saga.py (imports run one way).
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from .errors import SagaAlreadyExists
from .executor import Execution, SagaResult
from .plan import PlanItem
from .shielding import cancelled_again, loop_gone, reset_var, running_task, shielded
from .status import SagaStatus
from .step import _CURSOR, SagaStepResult, StepCursor
from .write_ahead import JournalWriteFailed

__all__ = ["SagaTransaction"]

ContextT = TypeVar("ContextT")


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
        # The task running a step of this transaction, if one is: a second
        # task asking for the next step meanwhile is refused, and leaving the
        # block waits for the step to land (``_step_landed``) before it
        # commits or unwinds, so that what it did is compensated too.
        self._stepping: asyncio.Task[Any] | None = None
        self._step_landed: asyncio.Event | None = None
        # The block is being left: no further step starts (in another task).
        self._leaving = False
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
        try:
            self._execution.begin()  # an in-process store refuses a taken id here
        except SagaAlreadyExists as taken:
            _started_here(taken, self._execution)
            raise
        self._token = _CURSOR.set(self._execution)
        return self

    def __aiter__(self) -> SagaTransaction[ContextT]:
        return self

    async def __anext__(self) -> SagaStepResult[ContextT, Any]:
        if not self._entered:
            raise RuntimeError("iterate a saga transaction inside `async with`")
        if self._stepping is not None:
            # Both tasks would run the step in flight (its act twice), as the
            # next step is chosen only once it completes.
            raise RuntimeError(
                "a saga transaction runs one step at a time: another task is already "
                "running its next step; step through a transaction from one task")
        if self._ready:
            return self._ready.popleft()
        if self._finished or self._leaving or self._next >= len(self._plan):
            raise StopAsyncIteration
        self._stepping = asyncio.current_task()
        try:
            return await self._run_next()
        except SagaAlreadyExists as taken:  # a durable store's first write refused the id
            _started_here(taken, self._execution)
            raise
        finally:
            self._stepping = None
            if self._step_landed is not None:
                self._step_landed.set()

    async def _run_next(self) -> SagaStepResult[ContextT, Any]:
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
            await self._settle(exc)  # a block left before any step writes the saga first
        except SagaAlreadyExists as taken:
            _started_here(taken, self._execution)
            raise
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
        self._leaving = True
        cancelled = None
        stepping = self._stepping
        if stepping is not None and stepping is not asyncio.current_task():
            # Another task is in the middle of a step: unwinding beside it
            # would compensate what it has not finished and leave what it
            # then completes applied. Its step lands first (it commits the
            # saga's last step, unwinds a failed one), then the block settles.
            self._step_landed = landed = asyncio.Event()
            try:
                await shielded(landed.wait())
            except asyncio.CancelledError as error:
                # Cancelled while waiting: left early, as a cancellation leaves it.
                exc = cancelled = error
        try:
            await self._settle_now(exc)
        finally:
            if cancelled is not None:
                raise cancelled

    async def _settle_now(self, exc: BaseException | None) -> None:
        execution = self._execution
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


def _started_here(taken: SagaAlreadyExists, execution: Execution) -> None:
    """Tell ``taken`` (the store knows no call) that this transaction tried
    to start the saga: its message must not say run() did."""
    if taken.saga_id == execution.saga_id:
        taken.started_by("transaction()")


# Ways out of a transaction's block that leave the saga to unwind: an error,
# a cancellation, and GeneratorExit — the block was inside an async generator
# whose consumer closed it (``aclose()``, or the generator was collected).
_LEFT_EARLY = (Exception, asyncio.CancelledError, GeneratorExit)
# ... of which those after which nobody waits for an answer: an interruption
# of the unwinding is logged (``_report_interruption``), not raised.
_NOBODY_WAITS = (asyncio.CancelledError, GeneratorExit)
