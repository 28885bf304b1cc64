"""The store contract: what the executor journals, and what a store gives back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from ..status import SagaStatus, StepStatus

__all__ = ["JournalEntry", "LiveJournal", "LiveSaga", "SagaRecord", "SagaStore"]

Action = Literal["act", "compensate"]
Branch = Literal["primary", "fallback"]


class JournalEntry(NamedTuple):
    """One transition of one step, in the order it happened.

    ``position`` is the step's index in ``Saga.steps`` (both branches of a
    Fallback share it); ``branch`` is ``"primary"`` for plain steps and for a
    Fallback's primary, ``"fallback"`` for its fallback. ``at`` is wall-clock
    Unix time (for people reading the journal; no durations are computed
    from it).
    """

    position: int
    step: str
    branch: Branch
    action: Action
    status: StepStatus
    attempt: int
    error: str | None
    at: float


@dataclass(slots=True)
class SagaRecord:
    """A saga as a store knows it: its header, latest context and full history."""

    saga_id: str
    saga_name: str
    fingerprint: str
    status: SagaStatus
    context: dict[str, Any]
    history: list[JournalEntry] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0


@runtime_checkable
class SagaStore(Protocol):
    """Where the executor journals every transition.

    The executor batches: ``create`` carries the saga's header together with
    its first transitions, and each ``append`` carries every transition since
    the previous write, plus the new status and context when they changed.
    A write must be durable when the awaitable returns: the executor calls a
    step's ``act`` only after its ``STARTED`` entry was written.
    """

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        """Record a new saga; ``SagaAlreadyExists`` if the id is taken."""
        ...

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Add transitions, and set the status/context when given."""
        ...

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record; ``SagaNotFound`` if there is none."""
        ...


# The raw form of a ``JournalEntry`` the executor builds on the hot path.
RawEntry = tuple[int, str, Branch, Action, StepStatus, int, str | None, float]


class LiveSaga(Protocol):
    """A running saga as an in-process store may watch it (see ``LiveJournal``)."""

    saga_id: str
    saga_name: str
    fingerprint: str
    status: SagaStatus
    journal: list[RawEntry]
    created_at: float

    def context_image(self) -> dict[str, Any]:
        """The context as of the last transition, in journal form."""
        ...


@runtime_checkable
class LiveJournal(Protocol):
    """An optional capability of stores that live in the same process.

    Durability means nothing to such a store, so instead of receiving writes
    it watches the run: ``track`` when the saga starts, ``finished`` when it
    ends. The executor then skips every write — the hot path awaits nothing
    for journaling. ``MemorySagaStore`` implements it.
    """

    def track(self, saga: LiveSaga) -> None:
        """Start watching ``saga``; ``SagaAlreadyExists`` if the id is taken."""
        ...

    def finished(self, saga: LiveSaga) -> None:
        """``saga`` reached a final status."""
        ...
