"""The statuses a saga and its steps move through, as journaled, and the
states of a circuit breaker (shared between breaker instances through a
``CircuitStateStore``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CircuitState", "SagaStatus", "StepStatus"]


class SagaStatus(StrEnum):
    """Where a saga stands. ``COMPLETED``, ``COMPENSATED`` and ``FAILED`` are final.

    ``FAILED`` means unwinding could not undo everything (a compensation kept
    failing): the saga needs an operator. ``COMPENSATED`` means every completed
    step was undone.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(StrEnum):
    """One journaled transition of one step's ``act`` or ``compensate``."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    #: An ``act`` of a ``Parallel`` member cancelled while it ran (a sibling
    #: failed, or the caller was cancelled): its effect is uncertain, so it is
    #: compensated like a completed one — but it did not complete.
    CANCELLED = "cancelled"


# A raw journal entry (``store.base.RawEntry``) holds a step status as its plain
# value: module constants, so that the executor's hot path reads a global
# instead of an enum member through its class.
RAW_STARTED: str = StepStatus.STARTED.value
RAW_COMPLETED: str = StepStatus.COMPLETED.value
RAW_FAILED: str = StepStatus.FAILED.value
RAW_CANCELLED: str = StepStatus.CANCELLED.value


class CircuitState(StrEnum):
    """Where a circuit breaker stands (see ``CircuitBreaker``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
