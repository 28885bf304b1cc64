"""How a run that completed is recorded, told and returned: ``SagaResult``.

A run whose every step completed ends here (``CompletingRun``): on an
in-process store the store is told at once (``complete_live``: nothing to
await); on a write-ahead store the completion is written first, and the
caller hears "completed" only once the journal says so (S13) — unless that
write fails (the run is interrupted, or unwinds a context the store
refused) or the caller is cancelled while it is written.

A base class of the executor's ``Execution`` rather than a helper object:
``Execution.run_all`` returns through ``complete_live`` / ``complete`` as it
always did (``run_plain`` inlines ``complete_live``), with no object or call
layer more per saga.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from .context import freeze_context
from .errors import ContextSerializationError
from .events import emit
from .redaction import withheld
from .shielding import cancelled_again, reset_var
from .status import SagaStatus
from .step import _CURSOR, SagaStepResult
from .stepping import SteppingRun
from .write_ahead import JournalWriteFailed

__all__ = ["CompletingRun", "SagaResult"]

ContextT = TypeVar("ContextT")

_SAGA_COMPLETED = SagaStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[ContextT]):
    """A saga that completed: every step's ``act`` returned."""

    saga_id: str
    status: SagaStatus
    context: ContextT
    results: list[SagaStepResult[ContextT, Any]]

    def __repr__(self) -> str:
        # The context may hold secrets: its class only (redaction.py).
        return (
            f"SagaResult(saga_id={self.saga_id!r}, status={self.status!r}, "
            f"context={withheld(self.context)}, results={self.results!r})"
        )


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


class CompletingRun(SteppingRun):
    """How a run that completed ends (see the module's docstring).
    ``Execution.__init__`` sets the fields."""

    __slots__ = ("results",)

    # One per completed plan item (a group: one per member).
    results: list[SagaStepResult[Any, Any]]

    def complete_live(self, cancelled: BaseException | None = None) -> SagaResult[Any]:
        """``complete`` on an in-process store: nothing to await.
        ``cancelled``: see ``_complete_then_cancel``."""
        # The final state, frozen (no snapshot to take when it is flat).
        self.image = freeze_context(self.context)
        self.status = _SAGA_COMPLETED
        # Nothing more to unwind: the run keeps no child's error (it holds,
        # through its traceback, a frame that holds this run: a cycle).
        self.left_undone = None
        self.store.finished(self)  # type: ignore[attr-defined]
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, cancelled)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def complete(self, cancelled: BaseException | None = None) -> SagaResult[Any]:
        """``cancelled``: see ``_complete_then_cancel``."""
        if self.live:
            return self.complete_live(cancelled)
        # S13: the caller hears "completed" only once the journal says so.
        self.pending_status = SagaStatus.COMPLETED
        failure: JournalWriteFailed | None = None
        try:
            await self.flush()
        except JournalWriteFailed as error:
            failure = error
        except asyncio.CancelledError:
            await self._cancelled_at_the_end()
            raise
        if failure is not None:
            try:
                if isinstance(failure.error, ContextSerializationError):
                    # The last step left a context the journal cannot hold.
                    await self._unwind_refused_context(self.fail(failure))
                raise self._interrupted(failure.error)
            finally:
                failure = None  # no local keeps it: its traceback holds this frame
        self.status = SagaStatus.COMPLETED
        self.left_undone = None  # see complete_live
        if self.hooks.saga_finished:
            emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, cancelled)
        return _saga_result(self.saga_id, self.status, self.context, self.results)

    async def _cancelled_at_the_end(self) -> None:
        """The caller was cancelled while the saga's completion was written.
        The write has finished either way (see ``flush``); the listeners hear
        how the saga ended, as the journal has it, before the caller's
        ``CancelledError`` propagates."""
        if self.journaled_status is _SAGA_COMPLETED:
            self.status = _SAGA_COMPLETED  # it landed: the saga is done
            self.left_undone = None  # see complete_live
            self._announce_finish(asyncio.CancelledError())
        elif self.context_refused:
            # The store refused the context the last step left: unwind, as
            # ``complete`` does for a caller still waiting.
            await self._unwind_refused_context(self.abort())
        else:
            # Refused for good: left for recovery, as ``complete`` would leave it.
            self._report_interruption()
            self._announce_finish(asyncio.CancelledError())

    async def _unwind_refused_context(self, unwinding: Coroutine[Any, Any, None]) -> None:
        """``unwinding`` (the run's ``fail`` or ``abort``) after the run's
        steps have ended: with this run as the current step cursor again,
        as while the steps ran, so that each ``compensate`` can ask
        ``current_step()`` for its idempotency key."""
        token = _CURSOR.set(self)
        try:
            await unwinding
        finally:
            reset_var(_CURSOR, token)

    async def _complete_then_cancel(self, late: asyncio.CancelledError) -> NoReturn:
        """The saga completed, and a request to cancel landed right after its
        last step (``stop_swallowed``): as when it lands in the completion's
        write, the journal says COMPLETED, the listeners hear of the
        completion with the cancellation, and the caller gets it."""
        if self.live:
            self.complete_live(late)
        else:
            await self.complete(late)  # (what stops it is raised instead)
        raise cancelled_again(late)
