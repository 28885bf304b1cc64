"""The claims this process's recovery (a ``recover`` pass, a
``RecoveryWorker``) holds on sagas it has not let go yet, so that a parent's
run that finds its child leased by one of them (``SubSaga``'s ``_when_free``,
``SagaBusy``) waits for that claim to let go — a child whose parent is in
flight is given back in two reads — rather than poll the store a second at
a time. Any other holder (another process, a crashed run's lease) is still
polled: the store, not this registry, decides who may lease a child.

Keyed by event loop: an ``asyncio.Event`` is awaited only in its own loop,
and a worker in another thread's loop holds claims of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Iterator

__all__ = ["HeldClaim", "claim_held_here", "claim_landing_here", "claiming", "let_gos_here"]

_Loop = asyncio.AbstractEventLoop

# (loop, saga id) -> its claim. Weak: a claim whose resume never ran (its
# task cancelled before it began) leaves nothing behind.
_HELD: weakref.WeakValueDictionary[tuple[_Loop, str], HeldClaim] = weakref.WeakValueDictionary()
# (loop, owner) -> set once the claim its worker has on its way is answered
# and its sagas registered (see claiming).
_LANDING: dict[tuple[_Loop, str], asyncio.Event] = {}
# loop -> how many of its claims have been let go (see let_gos_here). Weak:
# a loop closed and dropped takes its count with it.
_LET_GO: weakref.WeakKeyDictionary[_Loop, int] = weakref.WeakKeyDictionary()
# A worker may claim in one thread's loop while a run looks up in another's.
_LOCK = threading.Lock()


def _loop() -> _Loop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class HeldClaim:
    """This process's claim on ``saga_id``, in the running loop (outside
    one: not registered), until ``let_go``."""

    __slots__ = ("__weakref__", "_loop", "event", "owner", "saga_id")

    def __init__(self, saga_id: str, owner: str) -> None:
        self.saga_id = saga_id
        self.owner = owner
        self.event = asyncio.Event()
        self._loop = _loop()
        if self._loop is not None:
            with _LOCK:
                _HELD[(self._loop, saga_id)] = self

    def let_go(self) -> None:
        """It no longer stands in a parent's way (its lease given back, or it
        runs itself: no parent drives it): wake whoever waits, forget it."""
        if self.event.is_set():
            return
        self.event.set()
        if self._loop is not None:
            key = (self._loop, self.saga_id)
            with _LOCK:
                if _HELD.get(key) is self:  # not a newer claim's
                    del _HELD[key]
                _LET_GO[self._loop] = _LET_GO.get(self._loop, 0) + 1


def claim_held_here(saga_id: str, owner: str | None) -> asyncio.Event | None:
    """The event of a claim on ``saga_id`` this loop's recovery holds and has
    not let go (set once it is), if any — under ``owner``, the lease's holder
    the store named (``None``: it did not say). Another owner's lease on a
    saga of that id is not this claim's: another store's (one app, two
    databases), whose sagas may share ids — polled, as any holder's is."""
    loop = _loop()
    if loop is None:
        return None
    with _LOCK:
        held = _HELD.get((loop, saga_id))
    if held is None or held.event.is_set() or (owner is not None and owner != held.owner):
        return None
    return held.event


@contextlib.contextmanager
def claiming(owner: str) -> Iterator[None]:
    """A worker's claim under ``owner`` is on its way, until its sagas are
    registered (``HeldClaim``) at the block's end: the store may have
    leased them already, and a parent's run that meets one (SagaBusy, by
    ``owner``) waits for the claim to land (``claim_landing_here``), then
    for that saga's claim to let go."""
    loop = _loop()
    if loop is None:
        yield
        return
    key = (loop, owner)
    landed = asyncio.Event()
    with _LOCK:
        _LANDING[key] = landed
    try:
        yield
    finally:
        landed.set()
        with _LOCK:
            if _LANDING.get(key) is landed:
                del _LANDING[key]


def claim_landing_here(owner: str | None) -> asyncio.Event | None:
    """The event of a claim on its way under ``owner`` in this loop, if any."""
    loop = _loop()
    if loop is None or owner is None:
        return None
    with _LOCK:
        return _LANDING.get((loop, owner))


def let_gos_here() -> int:
    """How many claims this loop's recovery has let go so far: one let go
    while a parent's lease request was on its way (the store answered it
    first, SagaBusy; then the give-back) shows as a change of it."""
    loop = _loop()
    if loop is None:
        return 0
    with _LOCK:
        return _LET_GO.get(loop, 0)
