"""A saga a ``MemorySagaStore`` holds, taken over: by a resumed run
(``track(replace=True)``) or by a write ahead (``append`` to a watched
saga) — refused (``SagaBusy``) while a run of this process still drives
it, or when the saga moved on since the resume read it. What leases do on
the durable stores; here every run of a saga is in this process, and the
run itself says whether it is still going.
"""

from __future__ import annotations

from ..errors import SagaBusy
from ._memory_records import _entry_count, _Frozen
from .base import LiveSaga, SagaRecord


def _check_replaceable(saga_id: str, held: SagaRecord | LiveSaga | _Frozen,
                       saga: LiveSaga) -> None:
    """Refuse (``SagaBusy``) to let the resumed run ``saga`` take over from
    ``held`` while a run still drives the saga, or when the saga moved on
    since the resume read it: either way the resumed run would make again
    the calls another run makes or made — a step run twice (S13). What
    leases do on the durable stores; here, where every run of the saga is
    in this process, the run itself says whether it is still going."""
    loaded = getattr(saga, "written", None)  # the entries of the record it was resumed from
    if loaded is not None and loaded != _entry_count(held):
        # Another run wrote to the saga after the resume read it (a thread
        # of its own finished it meanwhile): the record resumed is stale.
        raise SagaBusy(saga_id, None, None, here=True)
    if not isinstance(held, tuple | SagaRecord) and not held.status.is_final and _driven(held):
        raise SagaBusy(saga_id, None, None, here=True)


def _driven(run: LiveSaga) -> bool:
    """Whether ``run``, not finished, is still being driven: its coroutine
    has not let go (``Execution.driven_in``: cleared as it ends, a crash
    out of it included) and its loop was not closed under it (a crash too:
    the process's stand-in, in memory, is a loop that stopped with the run
    in it)."""
    loop = getattr(run, "driven_in", None)
    if loop is None:  # never started, let go, driven by hand, or not an Execution
        return False
    try:
        return not loop.is_closed()
    except AttributeError:  # a loop of another kind: taken as going
        return True
