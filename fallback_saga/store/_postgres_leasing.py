"""The PostgreSQL saga store's leases, on the store's side: the lease
methods of the ``RecoverableStore`` protocol — the batch ``claim``, one
saga's lease (``lease_state``, ``claim_saga``, ``renew``, ``release``,
``defer``, ``hand_off``) — and the channel a hand-off announces sagas on
(``work_channel``, ``work_notifications``), each handed over to the parts
that do it: the batch claim and the give-back of what a claim whose answer
never came took, ``_postgres_claims``; one saga's lease and the channel,
``_postgres_leases``.

``LeasingStore`` is a base class of ``PostgresSagaStore``, built on its
connection layer (``_postgres_fetch``): it makes those two parts, and
waits at close for the give-backs under way (``_settle``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

from ._postgres_claims import Claims
from ._postgres_fetch import FetchingStore
from ._postgres_leases import Leases
from .base import Lease, LeaseState


class LeasingStore(FetchingStore):
    """The lease side of ``PostgresSagaStore`` (its base class; see the
    module docstring). Its arguments are the store's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The claims own the give-backs under way (_settle waits for them);
        # the leases hand them what claim_saga may have taken with no answer.
        self._claims = Claims(self)
        self._leases = Leases(self, self._claims)

    async def _settle(self) -> None:
        await self._claims.settle()

    async def lease_state(self, saga_id: str) -> LeaseState:
        """The saga's lease owner, expiry and fencing token; ``SagaNotFound``."""
        return await self._leases.lease_state(saga_id)

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool = False, names: Collection[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` interrupted sagas (RUNNING/COMPENSATING, not
        updated for ``older_than`` seconds, no unexpired lease), oldest first,
        in one short transaction; each claim increments the saga's fencing
        token. Negative durations are allowed (tests use them for "already
        expired" without sleeping). Times are the database server's.
        ``deferred``: also sagas ``defer`` keeps out of claims (an operator's
        ``recover`` pass). ``names``: only sagas of these names (a
        ``RecoveryWorker``'s sagas; ``None``: any).

        A claim whose answer never comes (cancelled, its connection lost)
        may commit all the same: what it took is given back in the
        background, by the marker it set on its leases, once its
        transaction has ended (``_forget_claim``)."""
        return await self._claims.claim(
            owner=owner, lease_seconds=lease_seconds, older_than=older_than, limit=limit,
            deferred=deferred, names=names,
        )

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """Lease one saga by id, whatever its status and age (``Saga.resume``
        uses it), incrementing its fencing token, in one short transaction;
        ``SagaNotFound`` if missing, ``SagaBusy`` if another worker holds an
        unexpired lease on it.

        As with ``claim``, a claim whose answer never comes (cancelled, its
        deadline past, its connection lost) once its transaction has locked
        the saga's row may commit all the same: the lease it took is given
        back in the background, by the marker it set on it, once that
        transaction has ended (``_forget_claim``) — an operator trying
        ``resume`` again finds the saga free, not busy for a whole lease."""
        return await self._leases.claim_saga(saga_id, owner=owner, lease_seconds=lease_seconds)

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now (the server's clock),
        if its fencing token is still the saga's current one and it was not
        given back (released, deferred, handed off); else ``LeaseLost``
        (``SagaNotFound`` if the saga is gone). The heartbeat of a running saga."""
        return await self._leases.renew(lease, lease_seconds)

    async def release(self, lease: Lease, *, ran: bool = True) -> None:
        """Clear the lease, if it is still the saga's current one. Its count
        of claims (see ``park_after``) starts again; ``ran=False`` (the
        holder ran nothing of it: a ``claim``'s saga skipped or given back
        untouched) takes that claim back from the count instead."""
        return await self._leases.release(lease, ran=ran)

    async def defer(self, lease: Lease, seconds: float, *, ran: bool = True) -> None:
        """``release`` the lease (if it is still the saga's current one), and
        keep the saga out of ``claim`` for ``seconds``; ``claim_saga`` leases
        it at once all the same. For a child saga its parent drives: recovery
        defers it rather than claim it again and again. ``ran``: as for
        ``release``."""
        return await self._leases.defer(lease, seconds, ran=ran)

    async def hand_off(self, lease: Lease, *, ran: bool = True) -> None:
        """``release``, and if the saga is still RUNNING or COMPENSATING,
        announce it on ``work_channel`` in the same statement. ``ran``: as
        for ``release``."""
        return await self._leases.hand_off(lease, ran=ran)

    @property
    def work_channel(self) -> str:
        """The LISTEN/NOTIFY channel on which ``hand_off`` announces sagas."""
        return self._names.channel

    def work_notifications(self) -> AsyncIterator[str]:
        """Listen for claimable work (``WorkNotifier``) on a connection of its
        own, outside the pool (a pooled connection would lose its LISTEN when
        returned). Yields ``""`` once listening, then the id of each saga
        handed off (``hand_off``) by any process. Ends when the store is
        closed; ``SagaStoreError`` if the connection is lost. One connection
        per iteration: a worker needs one."""
        return self._leases.work_notifications()
