"""Resume and recover interrupted sagas from their journal (S10).

The journal is the source of truth. ``resume_point`` reads a saga's history
and says where the run stands: which steps completed (the compensation
stack, each with the branch that ran), which were compensated already, and
where forward execution picks up. ``recover`` finds interrupted sagas in a
store, leases them, and resumes each with the saga class that matches.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import CorruptSagaRecord, LeaseLost, SagaDefinitionChanged, SagaFailed
from .status import SagaStatus, StepStatus
from .store.base import RecoverableStore, SagaRecord

if TYPE_CHECKING:
    from .definition import SagaDefinition
    from .saga import Saga

__all__ = ["RecoveryReport", "ResumePoint", "check_definition", "recover", "resume_point"]


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where an interrupted run stands, as its journal tells."""

    status: SagaStatus
    # (position, branch) of every step whose act completed and that has not
    # been compensated yet, in the order they completed: the compensation stack.
    stack: tuple[tuple[int, str], ...]
    # The first position whose act has not completed (forward work resumes here).
    next_position: int
    # The step at next_position had handed over to its fallback: resume with the
    # fallback, never with the primary again (its failure is on record).
    fallback_in_flight: bool
    # The last act failure on record: (step name, error text).
    last_failure: tuple[str, str] | None


def resume_point(record: SagaRecord) -> ResumePoint:
    """Read ``record.history`` into a ``ResumePoint``; ``CorruptSagaRecord`` if it
    cannot describe a run (positions out of order, a compensation of a step
    that never completed)."""
    completed: dict[int, str] = {}
    order: list[int] = []
    compensated: set[int] = set()
    fallback_started: set[int] = set()
    last_failure: tuple[str, str] | None = None
    for entry in record.history:
        if entry.action == "act":
            if entry.status is StepStatus.COMPLETED:
                if entry.position in completed:
                    raise CorruptSagaRecord(
                        record.saga_id, f"step at position {entry.position} completed twice"
                    )
                completed[entry.position] = entry.branch
                order.append(entry.position)
            elif entry.status is StepStatus.STARTED and entry.branch == "fallback":
                fallback_started.add(entry.position)
            elif entry.status is StepStatus.FAILED:
                last_failure = (entry.step, entry.error or "")
        elif entry.status is StepStatus.COMPLETED:
            if entry.position not in completed:
                raise CorruptSagaRecord(
                    record.saga_id,
                    f"step at position {entry.position} was compensated but never completed",
                )
            compensated.add(entry.position)
    if order != list(range(len(order))):
        raise CorruptSagaRecord(
            record.saga_id, f"steps completed out of order (positions {order})"
        )
    next_position = len(order)
    return ResumePoint(
        status=record.status,
        stack=tuple((p, completed[p]) for p in order if p not in compensated),
        next_position=next_position,
        fallback_in_flight=next_position in fallback_started,
        last_failure=last_failure,
    )


def check_definition(record: SagaRecord, definition: SagaDefinition) -> None:
    """Refuse to resume a saga whose stored fingerprint differs from the code's,
    saying what changed (``SagaDefinitionChanged``)."""
    if record.fingerprint == definition.fingerprint:
        return
    current = definition.describe()
    differences: list[str] = []
    seen: set[tuple[int, str, str]] = set()
    for entry in record.history:
        key = (entry.position, entry.step, entry.branch)
        if key in seen:
            continue
        seen.add(key)
        if entry.position >= len(current):
            differences.append(
                f"position {entry.position} ran {entry.step!r}, but the saga now has only "
                f"{len(current)} steps"
            )
            continue
        shape = current[entry.position]
        names = {"primary": shape[1], "fallback": shape[2] if len(shape) > 2 else None}
        if names.get(entry.branch) != entry.step:
            now = names.get(entry.branch)
            differences.append(
                f"position {entry.position} ({entry.branch}) ran {entry.step!r}, "
                f"now {now!r}" if now else
                f"position {entry.position} ran {entry.step!r} as a {entry.branch}, "
                f"which the saga no longer has"
            )
    if not differences:
        differences.append("the steps not yet run were changed (added, removed, reordered "
                           "or given another fallback)")
    raise SagaDefinitionChanged(
        record.saga_id, record.fingerprint, definition.fingerprint, differences
    )


# --------------------------------------------------------------------------- recover


@dataclass(slots=True)
class RecoveryReport:
    """What one ``recover`` pass did, saga by saga."""

    resumed: list[str] = field(default_factory=list)  # finished COMPLETED
    compensated: list[str] = field(default_factory=list)  # finished COMPENSATED
    failed: list[str] = field(default_factory=list)  # finished FAILED: needs an operator
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)

    @property
    def total(self) -> int:
        return len(self.resumed) + len(self.compensated) + len(self.failed) + len(self.skipped)

    def __str__(self) -> str:
        lines = [
            f"recovered {self.total} saga(s): {len(self.resumed)} completed, "
            f"{len(self.compensated)} compensated, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped"
        ]
        lines += [f"  failed  {saga_id} (needs an operator)" for saga_id in self.failed]
        lines += [f"  skipped {saga_id}: {reason}" for saga_id, reason in self.skipped]
        return "\n".join(lines)


def default_owner() -> str:
    """A lease owner name that tells an operator where the worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


async def recover(
    store: RecoverableStore,
    sagas: Iterable[Saga[Any]],
    *,
    older_than: float | timedelta = 60.0,
    limit: int = 100,
    lease: float = 300.0,
    owner: str | None = None,
    concurrency: int = 8,
    progress: Callable[[str, str], None] | None = None,
) -> RecoveryReport:
    """Find interrupted sagas (RUNNING or COMPENSATING, not updated for
    ``older_than``) and resume each with the saga instance of the same name.

    Each saga is claimed with a lease (``lease`` seconds) first, so two
    recovery processes never drive the same saga. A corrupt row, an unknown
    saga name or a changed definition is reported as skipped; it never stops
    the others. ``progress(saga_id, outcome)`` is called after each saga.
    """
    if isinstance(older_than, timedelta):
        older_than = older_than.total_seconds()
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than!r}")
    if limit < 1 or concurrency < 1:
        raise ValueError("limit and concurrency must be >= 1")
    if not isinstance(store, RecoverableStore):
        raise TypeError(
            f"{type(store).__name__} cannot be recovered from: it has no leases "
            f"(use a durable store such as SQLiteSagaStore)"
        )
    by_name: dict[str, Saga[Any]] = {}
    for saga in sagas:
        if saga.name in by_name:
            raise ValueError(f"two sagas named {saga.name!r} were given to recover")
        by_name[saga.name] = saga

    report = RecoveryReport()
    leases = await store.claim(
        owner=owner or default_owner(), lease_seconds=lease, older_than=older_than, limit=limit
    )
    gate = asyncio.Semaphore(concurrency)

    def note(saga_id: str, outcome: str) -> None:
        if progress is not None:
            progress(saga_id, outcome)

    async def resume_one(claimed: Any) -> None:
        saga_id = claimed.saga_id
        release = True
        async with gate:
            try:
                record = await store.load(saga_id)
                saga = by_name.get(record.saga_name)
                if saga is None:
                    report.skipped.append((saga_id, f"no saga named {record.saga_name!r} given"))
                    note(saga_id, "skipped")
                    return
                await saga._resume_record(record, lease=claimed)
                report.resumed.append(saga_id)
                note(saga_id, "completed")
            except SagaFailed as failure:
                if failure.status is SagaStatus.FAILED:
                    report.failed.append(saga_id)
                else:
                    report.compensated.append(saga_id)
                note(saga_id, failure.status.value)
            except LeaseLost as lost:
                report.skipped.append((saga_id, str(lost)))
                note(saga_id, "skipped")
                release = False  # the lease is someone else's now
            except CorruptSagaRecord as error:
                report.skipped.append((saga_id, f"{type(error).__name__}: {error}"))
                note(saga_id, "skipped")
                # Keep the lease: other workers skip it until it expires, rather
                # than re-reading a row that cannot be read on every pass.
                release = False
            except Exception as error:  # changed definition, store error, ...
                report.skipped.append((saga_id, f"{type(error).__name__}: {error}"))
                note(saga_id, "skipped")
            finally:
                if release:
                    await store.release(claimed)

    await asyncio.gather(*(resume_one(claimed) for claimed in leases))
    return report
