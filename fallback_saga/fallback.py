"""Fallback: a primary step with an alternative path, and the rule that picks it (S3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .breaker import CircuitBreakerProtocol, CircuitOpenError
from .errors import SagaDefinitionError
from .retry import RetryPolicy
from .step import StepDeclaration

__all__ = ["Fallback"]


@dataclass(frozen=True, slots=True)
class Fallback:
    """Run ``step``; if it fails, restore the context and run ``fallback`` instead.

    * ``step``/``fallback`` — step classes (built by the saga's step factory)
      or step instances; they must be different steps with different names.
    * ``failure_exceptions`` — the primary's errors that trigger the fallback;
      ``()`` means any ``Exception``. Other errors fail the step (the saga
      unwinds). Cancellation never triggers the fallback.
    * ``circuit_breaker`` — guards the primary: while the circuit is open the
      primary is not called at all and the fallback runs at once, whatever
      ``failure_exceptions`` says. Any object satisfying
      ``CircuitBreakerProtocol`` works.
    * ``retry`` — a ``RetryPolicy`` for the primary before falling back; each
      retry starts from the pre-step snapshot. An open circuit is never retried.
    """

    step: StepDeclaration
    fallback: StepDeclaration
    failure_exceptions: tuple[type[Exception], ...] = ()
    circuit_breaker: CircuitBreakerProtocol | None = None
    retry: RetryPolicy | None = None

    if TYPE_CHECKING:
        # For type checkers only (the dataclass's own __init__ runs): what
        # __post_init__ accepts and makes a tuple — one exception type
        # (``failure_exceptions=ConnectionError``) or any iterable of them.
        def __init__(
            self,
            step: StepDeclaration,
            fallback: StepDeclaration,
            failure_exceptions: type[Exception] | Iterable[type[Exception]] = (),
            circuit_breaker: CircuitBreakerProtocol | None = None,
            retry: RetryPolicy | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        failure_exceptions = self.failure_exceptions
        if isinstance(failure_exceptions, type):
            failure_exceptions = (failure_exceptions,)
        elif not isinstance(failure_exceptions, tuple):
            try:
                failure_exceptions = tuple(failure_exceptions)
            except TypeError:
                raise SagaDefinitionError(
                    f"Fallback failure_exceptions must be a tuple of exception types, "
                    f"got {self.failure_exceptions!r}"
                ) from None
        for kind in failure_exceptions:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise SagaDefinitionError(
                    f"Fallback failure_exceptions must hold Exception subclasses, got {kind!r}"
                )
        object.__setattr__(self, "failure_exceptions", failure_exceptions)
        if self.step is self.fallback:
            raise SagaDefinitionError(
                f"Fallback step and fallback are the same step ({self.step!r})"
            )
        if isinstance(self.circuit_breaker, type):
            # A breaker class has ``call`` and ``is_open_error`` too, so it
            # passes the protocol check below, and every run would then fail
            # inside the library calling them unbound (the primary never run).
            name = self.circuit_breaker.__name__
            raise SagaDefinitionError(
                f"Fallback circuit_breaker takes a breaker instance, got the class {name}: "
                f"pass {name}(...), one per downstream service, shared by its sagas"
            )
        if self.circuit_breaker is not None and not isinstance(
            self.circuit_breaker, CircuitBreakerProtocol
        ):
            raise SagaDefinitionError(
                "Fallback circuit_breaker must have async call(fn, *args, **kwargs) and "
                f"is_open_error(error); got {self.circuit_breaker!r}"
            )
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise SagaDefinitionError(f"Fallback retry must be a RetryPolicy, got {self.retry!r}")

    def is_open_circuit(self, error: BaseException) -> bool:
        """Whether ``error`` means the primary was rejected by an open circuit."""
        if isinstance(error, CircuitOpenError):
            return True
        breaker = self.circuit_breaker
        return breaker is not None and breaker.is_open_error(error)

    def should_fall_back(self, error: BaseException) -> bool:
        """Rule S3: does the primary's ``error`` hand over to the fallback?"""
        if not isinstance(error, Exception):
            return False  # cancellation, KeyboardInterrupt, SystemExit: never
        if self.is_open_circuit(error):
            return True
        if not self.failure_exceptions:
            return True
        return isinstance(error, self.failure_exceptions)
