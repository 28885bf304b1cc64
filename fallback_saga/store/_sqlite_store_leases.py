"""A SQLite saga store's leases, on the store's side: the arguments of
``lease_state``, ``claim``, ``claim_saga``, ``renew``, ``release`` and
``defer`` checked, and each handed to the store's runner as one request
(what it does in SQL is ``_sqlite_leases``); a claim's leases taken from
its future so that none is lost to a cancellation.

``Leases`` is held by ``SQLiteSagaStore``, whose public methods of these
names hand over to it (their docstrings say what each does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from ._common import check_owner, check_saga_id, claim_names, finite_seconds, non_negative_int
from ._parking import NEVER_PARKED, check_ran
from ._skipped_rows import Looks
from ._skipped_rows import note as note_skipped
from ._sqlite_leases import Claimed, _claim, _claim_saga, _defer, _lease_state, _release, _renew
from ._sqlite_workers import LeaseFuture
from .base import Lease, LeaseState


class Leases:
    """A ``SQLiteSagaStore``'s leases (see the module docstring)."""

    __slots__ = ("_submit", "_unknown_statuses")

    def __init__(self, submit: Callable[..., asyncio.Future[Any]]) -> None:
        # The runner's submit (the store's _submit), not the store: a store
        # dropped unclosed goes at once, its threads stopped by their
        # finalizers (_sqlite_runner), with no cycle through its parts.
        self._submit = submit
        # When a claim next looks for rows of a status the store does not
        # know, to report them (_sqlite_unknown_status): for whoever reports
        # skipped rows only, a worker's polls once per its lease.
        self._unknown_statuses = Looks()

    async def lease_state(self, saga_id: str) -> LeaseState:
        state: LeaseState = await self._submit(
            _lease_state, (check_saga_id(saga_id),), write=False
        )
        return state

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool, names: Collection[str] | None, park_after: int | None,
    ) -> list[Lease]:
        # park_after: the store's public attribute at this call (it may be
        # set after the store is made).
        if not isinstance(deferred, bool):
            raise TypeError(f"deferred must be a bool, got {deferred!r}")
        args = (
            check_owner(owner),
            finite_seconds("lease_seconds", lease_seconds),
            finite_seconds("older_than", older_than),
            non_negative_int("limit", limit),
            deferred,
            NEVER_PARKED if park_after is None else park_after,
            claim_names(names),
            self._unknown_statuses.due(),
        )
        claimed: Claimed = await _taken(
            self._submit(_claim, args, write=True, leases=True)
        )
        for saga_id, reason in claimed.skipped:
            note_skipped(saga_id, reason)  # for recover's report (S12)
        return list(claimed)

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        args = (
            check_saga_id(saga_id),
            check_owner(owner),
            finite_seconds("lease_seconds", lease_seconds),
        )
        lease: Lease = await _taken(
            self._submit(_claim_saga, args, write=True, leases=True)
        )
        return lease

    async def renew(self, lease: Lease, lease_seconds: float) -> Lease:
        check_saga_id(lease.saga_id)
        seconds = finite_seconds("lease_seconds", lease_seconds)
        renewed: Lease = await self._submit(_renew, (lease, seconds), write=True)
        return renewed

    async def release(self, lease: Lease, *, ran: bool) -> None:
        args = (check_saga_id(lease.saga_id), lease.token, check_ran(ran))
        await self._submit(_release, args, write=True)

    async def defer(self, lease: Lease, seconds: float, *, ran: bool) -> None:
        args = (check_saga_id(lease.saga_id), lease.token, finite_seconds("seconds", seconds),
                check_ran(ran))
        await self._submit(_defer, args, write=True)


async def _taken(future: asyncio.Future[Any]) -> Any:
    """What a claim's ``future`` gives. Should the task be cancelled with the
    outcome already set but not yet taken (the grace of ``claimed`` ran out
    in the loop turn the answer came), the lease is given back: nobody else
    will see it (``LeaseFuture``). A future cancelled before its outcome
    came is the writer's to give back, once it lands."""
    try:
        return await future
    except asyncio.CancelledError:
        if (
            isinstance(future, LeaseFuture) and future.done() and not future.cancelled()
            and future.exception() is None
        ):
            future.give_back(future.result())
        raise
