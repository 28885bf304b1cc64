"""How a run stops short of completing *without unwinding*, and what it tells.

A run whose journal cannot be written stops where it is, unwinding nothing
more, and is left for recovery: the caller gets ``SagaInterrupted`` (or
``LeaseLost``, when another worker drives the saga now; ``SagaAlreadyExists``
when its id was taken), and the listeners hear ``saga_interrupted``. A run
is also stopped so when it is abandoned (handed off, fenced out, or a run
above it stops: ``stop_scope``), and when a ``BaseException`` that is no
cancellation crashes it.

``InterruptibleRun`` is that part of a run, and how the run's end is told
to the listeners (``saga_finished`` or ``saga_interrupted``); its subclass
``unwinding.UnwindingRun`` unwinds the compensation stack, and the
executor's ``Execution`` drives the steps forward.
"""

from __future__ import annotations

import asyncio

from .errors import (
    ContextSerializationError,
    LeaseLost,
    SagaAlreadyExists,
    SagaInterrupted,
    short_id,
)
from .events import Hooks, emit
from .log_lines import library_logger
from .status import SagaStatus
from .stop_scope import stopped_without_unwinding
from .write_ahead import JournaledRun

__all__ = ["InterruptibleRun"]

_log = library_logger("fallback_saga")


class InterruptibleRun(JournaledRun):
    """How a run ends short of completing without unwinding, and how its end
    is told (see the module's docstring). ``Execution.__init__`` sets the
    fields."""

    __slots__ = ("hooks", "live", "status")

    hooks: Hooks
    live: bool  # an in-process store: it watches the run, nothing is written ahead
    status: SagaStatus

    def _adopt_stop(self) -> None:
        """This run was started by a leased run that is being stopped without
        unwinding (``StopScope``): it stops the same way."""
        reason = stopped_without_unwinding()
        if reason is not None:
            self.abandon(reason)

    def abandon(self, reason: BaseException) -> None:
        """Stop driving this saga *without* unwinding it: another worker owns it
        now (the lease was lost), this worker hands it off on shutdown, or a
        run above it stops so (``StopScope``).

        From now on every write is refused with ``reason`` — locally, without
        asking a store that may be unreachable — and no further ``compensate``
        is called: compensating a saga someone else drives would race them.
        The caller then cancels the task running the saga.
        """
        self.abandoned = reason

    def _stopped(
        self, error: BaseException, failure: BaseException | None = None
    ) -> BaseException:
        """What the caller gets when the journal failed: ``LeaseLost`` when
        another worker owns the saga now (it goes on driving it),
        ``SagaAlreadyExists`` when the saga could not even be created because
        its id is taken, else ``SagaInterrupted`` — also for a lease lost on
        another saga (a child's, or a parent's that stopped this one)."""
        if self._lost_its_lease(error):
            return error
        if isinstance(error, SagaAlreadyExists | ContextSerializationError) and (
            self.held_status() is None
        ):
            return error  # nothing was journaled, nothing ran
        interrupted = SagaInterrupted(
            saga_id=self.saga_id,
            saga_name=self.saga_name,
            status=self.held_status(),
            error=error,
            failure=failure,
            in_doubt=self.landed_unseen is not None,
            status_if_landed=self.landed_unseen,
            # (Set only when a write was left in doubt: see JournaledRun.)
            doubted_by=(getattr(self, "doubted_by", None)
                        if self.landed_unseen is not None else None),
        )
        interrupted.__cause__ = error
        return interrupted

    def _interrupted(
        self, error: BaseException, failure: BaseException | None = None
    ) -> BaseException:
        """``_stopped``, announced to the listeners (``saga_interrupted``)."""
        stopped = self._stopped(error, failure)
        # Told interrupted whatever status the journal holds: a run that
        # reopened a final saga — a COMPLETED child its parent unwinds, a
        # FAILED saga an operator retries — stopped with that status still
        # held, and reached none of its own (not saga_finished, S13).
        if self.hooks.saga_interrupted:
            emit(self.hooks.saga_interrupted, self.saga_id, self.saga_name,
                 self.held_status(), stopped)
        return stopped

    def _report_interruption(self) -> None:
        # A cancelled caller gets CancelledError whatever happened; a journal
        # that failed meanwhile must still be told to someone.
        error = self.interruption
        if error is None or self._lost_its_lease(error):
            return
        if error is self.abandoned:
            # Not its own journal's failure: a run above it stopped without
            # unwinding — handed off, fenced out, or its journal failed —
            # and this one with it (StopScope); that run reports its own stop.
            _log.info(
                "saga %s (%s) stopped with its parent, without unwinding (%s: %s); "
                "it is left %s for the parent's next run",
                self.saga_name, short_id(self.saga_id), type(error).__name__, error,
                (self.held_status() or SagaStatus.RUNNING).value,
            )
            return
        # Its message, as it is: it quotes the errors cut already, and says
        # at its end where the saga is left (one_line would cut an exception).
        _log.error("%s", str(self._stopped(error)))

    def _lost_its_lease(self, error: BaseException) -> bool:
        """``error`` says another worker drives this saga now."""
        return isinstance(error, LeaseLost) and error.saga_id == self.saga_id

    def crashed(self, error: BaseException) -> None:
        """A ``BaseException`` that is no cancellation (``SystemExit``, a test
        framework's outcome) stopped the run where it was: nothing more is
        unwound in-process (docs/mechanics.md), and the saga is left as its
        journal holds it, for recovery. The listeners still hear that the
        run stopped, so that no ``saga_started`` is left unanswered (a
        tracer's span open)."""
        if self.hooks.saga_interrupted and not self.status.is_final:
            emit(self.hooks.saga_interrupted, self.saga_id, self.saga_name,
                 self.held_status(), error)

    def held_status(self) -> SagaStatus | None:
        """The status the journal holds for this run's saga; None while the
        store does not hold the saga (``refused_at_creation`` relies on it).
        An in-process store (``live``) watches the run itself — its
        ``status`` is the journal's, and ``journaled_status``, which only
        the write-ahead keeps, stays None: told as "nothing journaled", a
        saga left COMPENSATING looked like one the store refused to create
        (S13). Asked only once a run stops short of a final status."""
        if self.live:
            return self.status if self.created else None
        return self.journaled_status

    def _announce_finish(self, error: BaseException | None) -> None:
        # (A final status with the journal failed is the one a reopened saga
        # held as its unwinding stopped: see _interrupted.)
        if self.status.is_final and self.interruption is None:
            if self.hooks.saga_finished:
                emit(self.hooks.saga_finished, self.saga_id, self.saga_name, self.status, error)
        elif self.hooks.saga_interrupted:  # stopped short of a final status: see _stopped
            if (
                error.__class__ is asyncio.CancelledError and error.__cause__ is None
                and self.interruption is not None and self.landed_unseen is not None
            ):
                # A cancelled run whose last write failed in doubt: the
                # listeners get the cancellation its caller gets — a copy,
                # the caller's own left as it is — with the journal's
                # failure as its cause, so that status_if_landed names the
                # status that write may have left (S13).
                told = asyncio.CancelledError(*error.args)
                told.__cause__ = self._stopped(self.interruption)
                error = told
            emit(self.hooks.saga_interrupted, self.saga_id, self.saga_name,
                 self.held_status(), error if error is not None else self.interruption)
