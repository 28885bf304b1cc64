"""How long a ``RecoveryWorker`` keeps a saga it interrupted out of its
claims: ``poll``, doubled per interruption of it in a row, capped at
``lease``, jittered."""

from __future__ import annotations

import random

from .remembered import remember

__all__ = ["Backoff"]


class Backoff:
    """A worker's backoffs of the sagas it interrupted (see ``retry_in``)."""

    def __init__(self, poll: float, lease: float) -> None:
        self.poll = poll
        self.lease = lease
        # Saga id -> its interruptions in a row here (the journal refused its
        # writes): each one doubles its time out of claims (``retry_in``).
        # (At most REMEMBERED_SAGAS: see remembered.py.)
        self.interruptions: dict[str, int] = {}

    def interrupted(self, saga_id: str) -> None:
        """One more interruption of ``saga_id`` in a row."""
        remember(self.interruptions, saga_id, self.interruptions.get(saga_id, 0) + 1)

    def ended(self, saga_id: str) -> None:
        """``saga_id``'s resume ended otherwise: its next backoff starts from ``poll``."""
        self.interruptions.pop(saga_id, None)

    def retry_in(self, saga_id: str) -> float:
        """Seconds a saga interrupted now stays out of claims: ``poll``,
        doubled for each interruption of it in a row, capped at ``lease``,
        jittered down to half of that (workers that met the same outage do
        not all come back at once)."""
        doublings = min(self.interruptions.get(saga_id, 0), 32)
        return min(self.lease, self.poll * 2.0 ** doublings) * random.uniform(0.5, 1.0)
