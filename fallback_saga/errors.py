"""Exceptions raised by fallback_saga (the circuit breaker's live in ``breaker``)."""

from __future__ import annotations

from collections.abc import Mapping

from .status import SagaStatus

__all__ = [
    "ContextDecodeError",
    "ContextSerializationError",
    "CorruptSagaRecord",
    "LeaseLost",
    "RecordedError",
    "SagaAlreadyExists",
    "SagaBusy",
    "SagaDefinitionChanged",
    "SagaDefinitionError",
    "SagaError",
    "SagaFailed",
    "SagaNotFound",
    "SagaStoreError",
]


class SagaError(Exception):
    """Base class of every error this library raises on its own account."""


class SagaDefinitionError(SagaError, TypeError):
    """A ``Saga`` subclass is declared wrongly; raised when the class is created."""


class ContextSerializationError(SagaError, TypeError):
    """A context holds a value that cannot be journaled as JSON.

    ``path`` names the offending field (``"items[2].price"``), so the fix is obvious.
    """

    def __init__(self, path: str, value: object, reason: str = "") -> None:
        self.path = path
        self.value_type = type(value).__name__
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"context field {path!r} holds a {self.value_type}, "
            f"which cannot be stored as JSON{detail}"
        )


class ContextDecodeError(SagaError, ValueError):
    """Stored context data does not fit the context class (corrupt or changed).

    ``path`` names the offending field.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot restore context field {path!r}: {reason}")


class SagaStoreError(SagaError):
    """The saga store failed to read or write the journal."""


class SagaNotFound(SagaStoreError, KeyError):
    """No saga with this id is in the store."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r} in the store")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CorruptSagaRecord(SagaStoreError):
    """A stored saga cannot be read back (bad JSON, unknown status, ...)."""

    def __init__(self, saga_id: str, reason: str) -> None:
        self.saga_id = saga_id
        self.reason = reason
        super().__init__(f"saga {saga_id!r} in the store is unreadable: {reason}")


class LeaseLost(SagaStoreError):
    """This worker's lease on a saga expired and another worker took it over:
    the write was refused and this worker must stop driving the saga."""

    def __init__(self, saga_id: str, token: int) -> None:
        self.saga_id = saga_id
        self.token = token
        super().__init__(
            f"lease on saga {saga_id!r} (fencing token {token}) was lost; the saga is "
            f"driven by another worker now"
        )


class SagaBusy(SagaStoreError):
    """Another worker holds an unexpired lease on this saga: it is driving it."""

    def __init__(self, saga_id: str, owner: str | None, expires_at: float | None) -> None:
        self.saga_id = saga_id
        self.owner = owner
        self.expires_at = expires_at
        super().__init__(
            f"saga {saga_id!r} is being driven by {owner or 'another worker'} "
            f"(lease until {expires_at})"
        )


class SagaAlreadyExists(SagaStoreError):
    """A saga id was reused: ids must be unique per store."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"a saga with id {saga_id!r} already exists in the store")


class SagaDefinitionChanged(SagaError):
    """A saga was started with another definition than the code has now.

    Resuming it could run the wrong step or compensate the wrong one, so it is
    refused unless the caller says otherwise (``allow_changed_definition``).
    """

    def __init__(
        self, saga_id: str, stored: str, current: str, differences: list[str]
    ) -> None:
        self.saga_id = saga_id
        self.stored_fingerprint = stored
        self.current_fingerprint = current
        self.differences = differences
        super().__init__(
            f"saga {saga_id!r} was started with another definition (fingerprint {stored}, "
            f"the code now has {current}): " + "; ".join(differences)
        )


class RecordedError(SagaError):
    """An error that an earlier run journaled; only its text survived."""


class SagaFailed(SagaError):
    """A saga could not complete; its completed steps have been unwound.

    Raised by ``Saga.run`` only *after* unwinding. ``status`` is
    ``COMPENSATED`` when every completed step was undone, ``FAILED`` when at
    least one compensation kept failing (see ``compensation_errors``, keyed by
    step name). ``error`` — also ``__cause__`` — is the exception that stopped
    the saga; when a fallback failed too, it is the fallback's error, and the
    primary's error hangs off it as its ``__cause__``/``__context__``.
    """

    def __init__(
        self,
        *,
        saga_id: str,
        saga_name: str,
        status: SagaStatus,
        failed_step: str,
        error: BaseException,
        compensation_errors: Mapping[str, BaseException] | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.status = status
        self.failed_step = failed_step
        self.error = error
        self.compensation_errors: dict[str, BaseException] = dict(compensation_errors or {})
        message = (
            f"saga {saga_name} ({saga_id}) failed at step {failed_step!r}: "
            f"{type(error).__name__}: {error}; status {status.value}"
        )
        if self.compensation_errors:
            message += f"; compensation failed for {', '.join(self.compensation_errors)}"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:  # keyword-only __init__ needs help to pickle
        return (
            _rebuild_saga_failed,
            (
                self.saga_id,
                self.saga_name,
                self.status,
                self.failed_step,
                self.error,
                self.compensation_errors,
            ),
        )


def _rebuild_saga_failed(
    saga_id: str,
    saga_name: str,
    status: SagaStatus,
    failed_step: str,
    error: BaseException,
    compensation_errors: dict[str, BaseException],
) -> SagaFailed:
    return SagaFailed(
        saga_id=saga_id,
        saga_name=saga_name,
        status=status,
        failed_step=failed_step,
        error=error,
        compensation_errors=compensation_errors,
    )
