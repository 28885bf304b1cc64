"""A saga definition compiled for the executor: what one run walks.

``Saga`` builds the plan once per saga instance (``Saga._plan``): each step
becomes a ``Branch`` (its act and compensate bound, its retry and timeout
resolved), a ``Fallback`` a ``FallbackPlan`` of two branches, a ``Parallel``
group a ``GroupPlan`` of members. The executor reads them on every step, so
they are slotted records with the decisions it needs made in advance
(``plain``: nothing to retry, time or guard; the step may run inlined).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from .breaker import CircuitBreakerProtocol
from .fallback import Fallback
from .retry import RetryPolicy

__all__ = ["Branch", "FallbackPlan", "GroupPlan", "Member", "PlanItem"]


class Branch:
    """One step, built and ready to call (a plain step, or one side of a Fallback)."""

    __slots__ = ("act", "branch", "compensate", "name", "plain", "position", "retry", "timeout")

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
        # Neither retried nor timed: the executor may run it inlined.
        self.plain = retry is None and timeout is None


class FallbackPlan:
    __slots__ = ("any_exception", "breaker", "fallback", "plain", "position", "primary", "rule")

    def __init__(self, rule: Fallback, primary: Branch, fallback: Branch) -> None:
        self.position = primary.position
        self.rule = rule
        self.primary = primary
        self.fallback = fallback
        self.breaker: CircuitBreakerProtocol | None = rule.circuit_breaker
        self.plain = self.breaker is None and primary.plain and fallback.plain
        # No failure_exceptions: rule.should_fall_back(error) is then
        # isinstance(error, Exception), which the inlined path tests itself.
        self.any_exception = not rule.failure_exceptions


Member = Branch | FallbackPlan


class GroupPlan:
    """A ``Parallel`` group: members run concurrently, each in a ``Lane``."""

    __slots__ = ("members", "positions")

    def __init__(self, members: tuple[Member, ...]) -> None:
        self.members = members
        self.positions = range(members[0].position, members[-1].position + 1)


PlanItem = Branch | FallbackPlan | GroupPlan
