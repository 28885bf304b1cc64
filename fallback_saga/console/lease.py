"""A saga's lease as a store keeps it, which a damaged row may not hold."""

from __future__ import annotations

import math
from typing import Final

from ..store.base import LeaseState

__all__ = ["UNREADABLE_LEASE", "is_time", "lease_phase", "lease_readable"]

def is_time(value: object) -> bool:
    """Whether a stored time is one (finite Unix seconds): a damaged or
    hand-edited row may hold anything (``'soon'``, bytes) where a store
    keeps the lease, and one such row must not take a page down (S12)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


# A lease a store refused to read (``CorruptSagaRecord``): its expiry is no
# time, so every view shows it as unreadable.
UNREADABLE_LEASE: Final = LeaseState(None, math.nan, 0)


def lease_readable(lease: LeaseState) -> bool:
    """Whether the lease's owner, expiry and fencing token are what a store writes."""
    return (
        (lease.owner is None or isinstance(lease.owner, str))
        and (lease.expires_at is None or is_time(lease.expires_at))
        and isinstance(lease.token, int)
        and not isinstance(lease.token, bool)
    )


def lease_phase(lease: LeaseState, now: float) -> str:
    """``held``, ``expired``, ``released``, ``never claimed``, or
    ``unreadable`` (the row holds something else than a lease)."""
    if not lease_readable(lease):
        return "unreadable"
    if lease.owner is not None:
        return "held" if lease.expires_at is None or lease.expires_at > now else "expired"
    return "released" if lease.token > 0 else "never claimed"
