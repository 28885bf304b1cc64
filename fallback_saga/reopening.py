"""An operator's action on a FAILED saga: retry its unwinding (S6, S10, S13).

A saga ends FAILED when a compensation still failed after its retries: an
effect is left in place and the saga is parked for an operator. Nothing
retries it on its own — ``recover`` and ``RecoveryWorker`` claim only
RUNNING and COMPENSATING sagas — because the participant is down and a
retry loop would only hammer it. Once the participant is fixed, the
operator calls ``retry_unwinding`` with the saga's id: it finishes the
unwinding from where it gave up.

* Which compensations run: every step the journal holds completed and not
  compensated, in reverse (S5) — the one that gave up first, called again
  with its idempotency key (it may have partly run: compensations must
  tolerate that, as after a crash). A compensation journaled COMPLETED
  never runs again; no forward step ever runs. A ``SubSaga`` step whose
  child ended FAILED (left undone, or its compensation failed) is
  compensated too: the child's unwinding is retried with the parent's, and
  the parent ends COMPENSATED only once the child is (S15).
* The status: FAILED -> COMPENSATING (durable with the first compensation's
  STARTED row, which names who reopened it) -> COMPENSATED, or FAILED again
  when a compensation still fails.
* Fencing: on a durable store the saga is leased first (``claim_saga``,
  heartbeat and all: ``LeasedRun``), so that two operators, or an operator
  and a worker, never unwind it at once; ``SagaBusy`` if someone holds it.
* A retry cut off by a fault (the store refused a write, the process or its
  event loop stopped) leaves the saga FAILED (nothing written) or
  COMPENSATING (an interrupted unwinding, which recovery — or another
  ``retry_unwinding`` — finishes, never compensating a step twice).

``MemorySagaStore`` has no leases: there, only a FAILED saga is reopened,
as ``Saga.resume`` resumes one — ``SagaBusy`` while a run of this process
still drives it (another retry in another task or thread), as a lease
would refuse it (``MemorySagaStore.track``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from .errors import SagaFailed, short_id
from .executor import SagaResult
from .log_lines import library_logger
from .recovery import SagasGiven, sagas_by_name
from .resumption import (
    LeasedRun,
    check_definition,
    check_unwinding_retryable,
    default_owner,
    ended_the_process,
)
from .saga import Saga
from .shielding import claimed
from .status import SagaStatus
from .store.base import Lease, SagaRecord, SagaStore, check_store, is_recoverable
from .subsaga import runs_a_child

__all__ = ["retry_unwinding"]

_log = library_logger("fallback_saga")


async def retry_unwinding(
    store: SagaStore,
    sagas: SagasGiven,
    saga_id: str,
    *,
    lease: float = 300.0,
    owner: str | None = None,
    allow_changed_definition: bool = False,
) -> SagaStatus:
    """Retry the unwinding of the FAILED saga ``saga_id`` (see the module
    docstring) with the saga of its name among ``sagas`` (as ``recover``
    takes them); returns the status it ends with, as the journal holds it:
    ``COMPENSATED``, or ``FAILED`` when a compensation still fails (its
    error is journaled, as the first time).

    ``lease`` and ``owner`` are the lease's (``owner`` is also named in the
    journal as who reopened the saga). ``allow_changed_definition``: as for
    ``recover``. Raises ``SagaNotFound`` for an unknown id, ``SagaNotFailed``
    for a saga that is not FAILED (COMPENSATING too, on a durable store: an
    interrupted retry is finished), ``SagaBusy`` when another worker holds
    its lease, ``SagaDefinitionChanged`` as ``recover`` skips for, and —
    when the store fails — ``SagaInterrupted`` (the saga stays for another
    retry). Cancelled, the compensations under way finish first (S8).
    """
    check_store(store)
    by_name = sagas_by_name(store, sagas)
    if isinstance(lease, bool) or not lease > 0:
        raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
    owner = owner or default_owner()
    record = await store.load(saga_id)
    # Refused before anything is claimed: a wrong id leaves no trace.
    check_unwinding_retryable(record, leased=is_recoverable(store))
    saga = by_name.get(record.saga_name)
    if saga is None:
        raise ValueError(f"saga {short_id(saga_id)} is a {short_id(record.saga_name)}, and no "
                         f"saga of that name was given")
    # As recover skips for, and refused before the claim too: nothing to undo
    # with steps that may not be these (checked again under the lease).
    check_definition(record, saga.definition, allow_changed=allow_changed_definition)
    reopening = _Reopening(saga, owner)
    if not is_recoverable(store):  # no leases (MemorySagaStore): as Saga.resume does
        return await _ended(reopening._resume_record(
            record, allow_changed_definition=allow_changed_definition))
    # Given back if we are cancelled while the claim is on its way (see claimed).
    taken: Lease = await claimed(
        store.claim_saga(saga_id, owner=owner, lease_seconds=lease), store.release
    )
    run: LeasedRun | None = None
    keep_lease = False
    try:
        record = await store.load(saga_id)  # as it stands now that nobody else drives it
        run = LeasedRun(reopening, record, taken, store=store, lease_seconds=lease,
                        allow_changed_definition=allow_changed_definition)
        return await _ended(run.run())
    except BaseException as error:
        keep_lease = ended_the_process(error, run)  # kept, as a crash keeps it
        raise
    finally:
        if not keep_lease:
            try:
                await store.release(taken)
            except Exception as error:  # the lease runs out on its own
                _log.warning("saga %s: could not release its lease: %s: %s",
                             saga_id, type(error).__name__, error)


async def _ended(unwinding: Awaitable[object]) -> SagaStatus:
    """The status an unwinding ended with: it always ends in ``SagaFailed``
    (S7), whose status is the one journaled (COMPENSATED or FAILED)."""
    try:
        await unwinding
    except SagaFailed as failed:
        return failed.status
    raise AssertionError("an unwinding ends in SagaFailed")  # pragma: no cover


class _Reopening:
    """What ``LeasedRun`` resumes (``ResumesRecords``): the saga's unwinding,
    reopened by ``owner``, instead of its resumption."""

    def __init__(self, saga: Saga[Any], owner: str) -> None:
        self.saga = saga
        self.owner = owner

    async def _resume_record(
        self,
        record: SagaRecord,
        *,
        lease: Lease | None = None,
        allow_changed_definition: bool = False,
        resumed_by: str | None = None,  # unused: the reopening names its owner
    ) -> SagaResult[Any]:
        await self.saga._reopen_record(
            record, lease=lease, allow_changed_definition=allow_changed_definition,
            reopened_by=self.owner, runs_a_child=runs_a_child,
        )
