"""Store wrappers that show a test what a recovery worker's claims took.

* ``ClaimProbe`` keeps each ``claim``'s leases, in order, and lets a test
  wait for the next one — the claims themselves are the test's clock, not
  sleeps. Its ``claim`` has the wrapped store's own signature (``names`` if
  the store takes it), so a worker uses it as it would the store.
* ``ClaimsEveryName`` is a store of one's own written before ``claim`` took
  ``names``: a worker falls back to claiming every saga through it.

Both delegate everything else to the wrapped store (``__getattr__``), as a
metrics or tracing wrapper does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from fallback_saga import Lease


class ClaimProbe:
    def __init__(self, store: Any) -> None:
        self._store = store
        self.claims: list[list[Lease]] = []  # each claim's leases, oldest saga first
        self.names_asked: list[object] = []  # each claim's ``names`` (None: not given)
        self._claimed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def claim(self) -> Callable[..., Any]:
        inner = self._store.claim

        @functools.wraps(inner)  # inspect.signature reads the wrapped store's
        async def claim(**kwargs: Any) -> list[Lease]:
            leases: list[Lease] = await inner(**kwargs)
            self.names_asked.append(kwargs.get("names"))
            self.claims.append(list(leases))
            self._claimed.set()
            return leases

        return claim

    async def claim_number(self, number: int) -> list[Lease]:
        """The leases of the ``number``-th claim (1 is the first), once it has
        returned."""
        while len(self.claims) < number:
            self._claimed.clear()
            await asyncio.wait_for(self._claimed.wait(), 60)  # a safety net, not a sync
        return self.claims[number - 1]


class ClaimsEveryName:
    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int,
        deferred: bool = False,
    ) -> list[Lease]:
        leases: list[Lease] = await self._store.claim(
            owner=owner, lease_seconds=lease_seconds, older_than=older_than, limit=limit,
            deferred=deferred,
        )
        return leases
