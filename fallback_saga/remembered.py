"""A worker's bounded memory of sagas by id (its backoffs, the give-backs
the store refused): however long it runs, whatever the store does."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["REMEMBERED_SAGAS", "remember"]

V = TypeVar("V")

# How many sagas a worker remembers at most in each of its maps by saga id
# (``Backoff.interruptions``, ``KeptLeases.not_given_back``), so that its memory is bounded
# whatever the store does for however long the worker runs: the sagas it
# interrupted that another worker finished stay in ``interruptions`` for
# ever, and a store that takes claims but refuses give-backs adds to
# ``not_given_back`` with every resume. Past it, the saga remembered
# longest ago is forgotten: its backoff starts again from ``poll`` (a
# forgotten interruption), or its lease is left to run out and counts as a
# claim toward ``park_after`` (a forgotten give-back: logged).
REMEMBERED_SAGAS = 10_000


def remember(kept: dict[str, V], saga_id: str, value: V) -> str | None:
    """``kept[saga_id] = value``, as the most recent entry; the saga
    remembered longest ago is dropped past ``REMEMBERED_SAGAS``: its id, or None."""
    kept.pop(saga_id, None)
    kept[saga_id] = value
    if len(kept) <= REMEMBERED_SAGAS:
        return None
    oldest = next(iter(kept))
    del kept[oldest]
    return oldest
