"""Listeners: optional hooks on every transition, and a ready stdlib-logging one.

A listener is any object; it implements the hooks it cares about (the
``SagaListener`` base gives no-op defaults and type hints). Hooks are plain
synchronous calls on the hot path — keep them fast and hand slow work to a
queue. A hook that raises is logged and ignored: observability never breaks a
saga. With no listener, nothing is called at all.

Hooks never receive the context: contexts may carry secrets, and logging them
must be a deliberate choice of the application.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .status import SagaStatus

__all__ = ["HOOK_NAMES", "LoggingListener", "SagaListener"]

_log = logging.getLogger("fallback_saga")


class SagaListener:
    """No-op base for listeners; override the hooks you need."""

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        """The saga began (``run``/``transaction``) or was resumed."""

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        """The saga reached a final status (``error`` is set unless COMPLETED)."""

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's ``act`` is about to be called (``attempt`` counts retries from 1),
        or to be offered to its circuit breaker, which may reject it."""

    def step_completed(self, saga_id: str, step: str) -> None:
        """A step's ``act`` returned; the step is on the compensation stack."""

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        """A step's ``act`` raised (or its circuit was open); the context was restored."""

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        """``primary`` failed with ``error`` and ``fallback`` runs instead."""

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's ``compensate`` is about to be called."""

    def compensation_completed(self, saga_id: str, step: str) -> None:
        """A step's ``compensate`` returned."""

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        """A step's ``compensate`` failed on every attempt; unwinding goes on."""

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        """A circuit breaker moved between CLOSED, OPEN and HALF_OPEN."""

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        """A breaker's shared ``state_store`` raised; the breaker goes on with its
        local state. Reported at most once per ``sync_interval`` per breaker."""


HOOK_NAMES: tuple[str, ...] = (
    "saga_started",
    "saga_finished",
    "step_started",
    "step_completed",
    "step_failed",
    "fallback_taken",
    "compensation_started",
    "compensation_completed",
    "compensation_failed",
    "breaker_state_changed",
    "breaker_state_store_failed",
)

Hook = Callable[..., Any]


def collect_hooks(listeners: Iterable[object], name: str) -> tuple[Hook, ...]:
    """The callables to notify for hook ``name``: overridden or duck-typed ones only,
    so listeners that do not care about a hook cost nothing."""
    base = getattr(SagaListener, name)
    hooks: list[Hook] = []
    for listener in listeners:
        method = getattr(type(listener), name, None)
        if method is None or method is base:
            continue
        hooks.append(getattr(listener, name))
    return tuple(hooks)


def emit(hooks: tuple[Hook, ...], *args: Any) -> None:
    """Call every hook; a hook that raises is logged and never propagates."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            _log.exception("listener hook %r raised; ignored", getattr(hook, "__qualname__", hook))


class LoggingListener(SagaListener):
    """Logs every transition through stdlib ``logging`` (logger ``fallback_saga``).

    Step errors are logged with their type and message, never the context.
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or _log
        self.level = level

    def _write(self, level: int, message: str, *args: object) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, message, *args)

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self._write(self.level, "saga %s %s started", saga_name, saga_id)

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        level = self.level if status is SagaStatus.COMPLETED else logging.WARNING
        if status is SagaStatus.FAILED:
            level = logging.ERROR
        if error is None:
            self._write(level, "saga %s %s finished: %s", saga_name, saga_id, status.value)
        else:
            self._write(level, "saga %s %s finished: %s (%s: %s)", saga_name, saga_id,
                      status.value, type(error).__name__, error)

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self._write(logging.DEBUG, "saga %s step %s started (attempt %d)", saga_id, step, attempt)

    def step_completed(self, saga_id: str, step: str) -> None:
        self._write(self.level, "saga %s step %s completed", saga_id, step)

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self._write(logging.WARNING, "saga %s step %s failed: %s: %s", saga_id, step,
                  type(error).__name__, error)

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self._write(logging.WARNING, "saga %s: %s failed (%s), falling back to %s", saga_id,
                  primary, type(error).__name__, fallback)

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        self._write(self.level, "saga %s compensating %s (attempt %d)", saga_id, step, attempt)

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self._write(self.level, "saga %s compensated %s", saga_id, step)

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self._write(logging.ERROR, "saga %s compensation of %s FAILED: %s: %s", saga_id, step,
                  type(error).__name__, error)

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        level = logging.WARNING if new == "open" else self.level
        self._write(level, "circuit breaker %s: %s -> %s", breaker, old, new)

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        self._write(logging.WARNING, "circuit breaker %s: shared state store failed (%s: %s); "
                    "working on local state", breaker, type(error).__name__, error)
