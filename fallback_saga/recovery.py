"""Recover interrupted sagas: find them in a store, claim each with a lease,
and resume it with the saga of the same name (S10, S13).

``recover`` is one pass; ``RecoveryWorker`` (worker.py) claims in a loop.
Both go through ``ClaimedSaga``, which reports each saga's outcome only as
the journal holds it. How one saga is resumed under its lease — the
heartbeat, fencing, hand-offs — is ``resumption.py``'s part.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .claimed_saga import _CANCELLED, ClaimedSaga, Outcome, children_first
from .events import collect_hooks, emit, listener_tuple
from .given_numbers import claim_count, seconds_given
from .lease_give_back import GIVEN_BACK_FOR_GOOD, named_sagas, refusal
from .log_lines import library_logger
from .resumption import (
    LeasedRun,
    ResumePoint,
    SagaHandedOff,
    check_definition,
    default_owner,
    resume_point,
)
from .saga import Saga
from .shielding import cancellation_pending, cancelled_again, claimed, wait_ended
from .status import SagaStatus
from .stop_wait import STOP_WAIT
from .store._skipped_rows import collecting as collecting_skipped
from .store.base import (
    Lease,
    RecoverableStore,
    check_store,
    gives_back_unrun,
    is_recoverable,
)

__all__ = [
    "GIVEN_BACK_FOR_GOOD",
    "STOP_WAIT",
    "ClaimedSaga",
    "LeasedRun",
    "RecoveryReport",
    "ResumePoint",
    "SagaHandedOff",
    "check_definition",
    "claim_batch",
    "default_owner",
    "recover",
    "resume_point",
    "sagas_by_name",
]

_log = library_logger("fallback_saga")


# The resumes a ``recover`` pass let go (they did not stop when asked): kept
# here until they end, as the event loop keeps only weak references to tasks.
_LET_GO: set[asyncio.Task[Any]] = set()


# --------------------------------------------------------------------------- recover


SagasGiven = Iterable["Saga[Any] | type[Saga[Any]]"]


def sagas_by_name(store: object, sagas: SagasGiven) -> dict[str, Saga[Any]]:
    """The sagas a recovery may resume, by name.

    Each is a Saga subclass, built here as ``cls(store=store)`` (its step
    classes must then be constructible without arguments), or a Saga instance
    journaling to ``store`` (a saga built with another store would resume
    into that one) — build one yourself to give it a ``step_factory``.
    """
    if isinstance(sagas, str | bytes | Saga | type) or not isinstance(sagas, Iterable):
        raise TypeError(
            f"sagas must be a list of Saga subclasses or instances, got {_short(sagas)}"
            + (f" (pass [{sagas.__name__}])" if isinstance(sagas, type) else "")
        )
    by_name: dict[str, Saga[Any]] = {}
    for given in sagas:
        if isinstance(given, type) and issubclass(given, Saga):
            saga = _build_with(given, store)
        elif isinstance(given, Saga):
            saga = given
            if saga.store is not store:
                raise ValueError(
                    f"saga {saga.name} journals to {saga.store!r}, not to the store being "
                    f"recovered: build it with store=<that store>"
                )
        else:
            name = given.__name__ if isinstance(given, type) else _short(given)
            raise TypeError(
                f"{name} is not a Saga subclass or instance; recovery takes Saga "
                f"subclasses (built with the store) or Saga instances built with store="
            )
        if saga.name in by_name:
            raise ValueError(f"two sagas named {saga.name!r} were given")
        by_name[saga.name] = saga
    return by_name


def _build_with(saga_cls: type[Saga[Any]], store: object) -> Saga[Any]:
    if getattr(saga_cls, "definition", None) is None:
        raise TypeError(
            f"{saga_cls.__name__} declares no steps (an abstract Saga base): give the "
            f"Saga subclasses that declare steps"
        )
    try:
        return saga_cls(store=store)  # type: ignore[arg-type]
    except TypeError as error:
        raise TypeError(
            f"recovery builds a saga class as {saga_cls.__name__}(store=store), which "
            f"failed: {error}; give an instance built with that store instead, e.g. "
            f"{saga_cls.__name__}(store=store, step_factory=...)"
        ) from error


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(slots=True)
class RecoveryReport:
    """What one ``recover`` pass did, saga by saga.

    A saga is listed as finished (``resumed``, ``compensated``, ``failed``)
    only once the journal holds that status (S13). ``interrupted``: the
    journal could not be written while the saga was resumed, so the run
    stopped with no effect the journal does not know, or the store failed to
    read the saga, so nothing of it ran; it stays RUNNING or COMPENSATING
    for the next pass."""

    resumed: list[str] = field(default_factory=list)  # finished COMPLETED
    compensated: list[str] = field(default_factory=list)  # finished COMPENSATED
    failed: list[str] = field(default_factory=list)  # finished FAILED: needs an operator
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)
    interrupted: list[tuple[str, str]] = field(default_factory=list)  # (saga id, reason)
    # Child sagas (SubSaga) left to their parent, which was in flight: not
    # counted in ``total`` (the parent's resumption resumes them).
    deferred: list[str] = field(default_factory=list)
    # Sagas (each also listed above) whose lease the pass could not give
    # back: the store refused it, or did not answer within STOP_WAIT, and
    # nothing tries it after the pass. It runs out on its own (``lease``
    # seconds) — no worker takes the saga until then — and counts as a
    # claim toward the store's ``park_after``, as a crashed pass's would.
    not_given_back: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (len(self.resumed) + len(self.compensated) + len(self.failed)
                + len(self.skipped) + len(self.interrupted))

    def __str__(self) -> str:
        lines = [
            f"recovered {self.total} saga(s): {len(self.resumed)} completed, "
            f"{len(self.compensated)} compensated, {len(self.failed)} failed, "
            f"{len(self.interrupted)} interrupted, {len(self.skipped)} skipped"
        ]
        lines += [f"  failed  {saga_id} (needs an operator: retry its unwinding once fixed)"
                  for saga_id in self.failed]
        lines += [f"  interrupted {saga_id}: {reason}" for saga_id, reason in self.interrupted]
        lines += [f"  skipped {saga_id}: {reason}" for saga_id, reason in self.skipped]
        lines += [f"  lease left {saga_id}: not given back (the store refused it, or did not "
                  f"answer within {STOP_WAIT:g} s); it runs out on its own, and counts as a "
                  f"claim toward the store's park_after" for saga_id in self.not_given_back]
        return "\n".join(lines)


async def claim_batch(store: RecoverableStore, **claim: Any) -> list[Lease]:
    """``store.claim(**claim)``, given back whole if the caller is cancelled
    while it is on its way (see ``shielding.claimed``): a claim is a write,
    which lands whatever its caller does, and leases abandoned so would keep
    every saga of the batch from the other workers until they ran out — the
    sagas of a worker (or a recovery pass) stopped mid-claim, handed off to
    nobody (S10, S15)."""
    leases: list[Lease] = await claimed(
        store.claim(**claim), lambda taken: _give_back(store, taken)
    )
    return leases


async def _give_back(store: RecoverableStore, leases: list[Lease]) -> None:
    # Nothing of them ran: their claim is not counted (store._parking).
    unrun: dict[str, Any] = {"ran": False} if gives_back_unrun(store) else {}
    for lease in leases:
        try:
            await store.release(lease, **unrun)
        except Exception as error:  # that one runs out on its own; the others go back
            _log.warning("cannot give back the lease on saga %s: %s: %s",
                         lease.saga_id, type(error).__name__, error)


async def recover(
    store: RecoverableStore,
    sagas: SagasGiven,
    *,
    older_than: float | timedelta = 60.0,
    limit: int = 100,
    lease: float = 300.0,
    owner: str | None = None,
    concurrency: int = 8,
    progress: Callable[[str, str], None] | None = None,
    listeners: Iterable[object] = (),
    allow_changed_definition: bool = False,
    resume_timeout: float | timedelta | None = None,
) -> RecoveryReport:
    """Find interrupted sagas (RUNNING or COMPENSATING, not updated for
    ``older_than``) and resume each with the saga of the same name.

    ``sagas`` lists Saga subclasses, built here as ``cls(store=store)``, or
    Saga instances built with ``store`` (to give them a ``step_factory``).

    Each saga is claimed with a lease (``lease`` seconds) first, so two
    recovery processes never drive the same saga. A corrupt row, an unknown
    saga name or a changed definition is reported as skipped; a saga the
    store failed to read (its ``load`` raised a store or driver error) as
    interrupted, with that error: nothing of it ran, and it stays for the
    next pass. Neither stops the others. ``progress(saga_id, outcome)`` is
    called after each saga — when the pass is cancelled too, for each saga
    it had begun to resume: the status the journal holds once the saga has
    unwound (``compensated``, ``failed``), or ``interrupted`` when it is
    left for another pass. A ``progress`` that raises is logged and
    ignored, as a listener's hook is.
    ``listeners`` are told each saga's outcome (``recovery_outcome``), as are
    the listeners of the saga that resumed it. ``allow_changed_definition``
    resumes sagas started with another definition of their saga, as
    ``Saga.resume`` does with it (steps matched by position; a saga one of
    whose journaled steps moved or lost its place is still skipped).

    ``resume_timeout`` — seconds one saga's resume may run (``None``, the
    default: no bound). A resume that outruns it (a step with no
    ``timeout`` whose call never answers, a store that does not answer its
    load) is stopped as a ``RecoveryWorker`` stops one: without unwinding, a
    compensation in flight cancelled (called again, in full, next time); it
    is reported ``interrupted``, its lease kept for ``lease`` seconds and
    counted toward the store's ``park_after``. A run that has not stopped
    ``STOP_WAIT`` seconds after that, asked twice (a step that swallows the
    cancellation), is let go: reported, its lease renewed no more, while it
    goes on in the background, every write of it refused — and the event
    loop's own end waits for it, which only the step can end.
    """
    if resume_timeout is not None:
        resume_timeout = seconds_given("resume_timeout", resume_timeout, positive=True)
    # Checked as RecoveryWorker checks them: a str from a config file would
    # otherwise fail deep in a comparison ("'<' not supported ...").
    older_than = seconds_given("older_than", older_than, positive=False)
    # As a worker's and retry_unwinding's: a lease <= 0 has run out when it is
    # taken (and has no heartbeat), so another pass could claim the saga and
    # drive it too while this one runs its steps.
    lease = seconds_given("lease", lease, positive=True)
    limit = claim_count("limit", limit)
    if progress is not None and not callable(progress):
        # Else found only as the first saga of the pass ended, raised out of
        # the pass once every saga had run, its report lost.
        raise TypeError(f"progress must be a function (saga_id, outcome) -> None, "
                        f"got {progress!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise ValueError(f"owner must be a non-empty str, got {owner!r}")
    if not is_recoverable(store):
        raise TypeError(
            f"{type(store).__name__} cannot be recovered from: it has no leases "
            f"(use a durable store such as SQLiteSagaStore)"
        )
    check_store(store)  # a store class passes the test above
    by_name = sagas_by_name(store, sagas)
    given = listener_tuple(listeners)
    collect_hooks(given, "recovery_outcome")  # refuses a class or an async hook now
    report = RecoveryReport()
    # An operator's pass takes the sagas workers keep out of their claims
    # too (skipped ones, until an operator acts: this is the operator acting).
    deferred = {"deferred": True} if _claims_deferred(store) else {}
    # The rows the claim skipped as corrupt (a built-in store's: it cannot
    # lease them, so nothing below meets them): reported here, not only in
    # the store's log line — a caller checking report.skipped (a cron job)
    # must see them (S12).
    with collecting_skipped() as unreadable:
        leases = await claim_batch(
            store, owner=owner or default_owner(), lease_seconds=lease, older_than=older_than,
            limit=limit, **deferred,
        )
    gate = asyncio.Semaphore(concurrency)
    # Give-backs the store refused (ClaimedSaga.not_given_back), by saga:
    # tried once more at the pass's end, for a store down a moment — left to
    # run out, each lease counts as a crash's towards parking (store._parking).
    refused: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def note(saga_id: str, outcome: str) -> None:
        if progress is not None:
            try:
                progress(saga_id, outcome)
            except Exception:
                # Logged and ignored, as a listener's hook is: raised out of
                # the pass, it lost the report of every saga the pass had
                # run — what a cron job reads (S13).
                _log.exception("recover: progress(%r, %r) raised; ignored", saga_id, outcome)

    async def resume_one(saga: ClaimedSaga) -> None:
        claimed = saga.lease
        try:
            # Its children claimed in this pass first (children_first): they
            # need a slot to give their leases back, so it waits before it
            # takes one.
            await saga.children_out_of_the_way()
            await gate.acquire()
        except asyncio.CancelledError:
            await saga.hand_back()  # it waited for a slot: nothing ran
            raise
        try:
            if resume_timeout is None:
                outcome, reason = await saga.resume()
            else:
                outcome, reason = await _within(saga, resume_timeout)
        except asyncio.CancelledError:
            # The pass is cancelled (an operator's Ctrl-C): the saga under way
            # has unwound (S8) or stopped by now, and its progress says which,
            # as the journal holds it — a pass that tells nothing of it left
            # the operator to guess (S13). Nothing final: left for a pass.
            told = saga.outcome[0] if saga.outcome is not None else None
            if told is not None and told != _CANCELLED[0]:
                note(claimed.saga_id, told)
            elif told is not None and saga.run is not None:
                note(claimed.saga_id, "interrupted")
            raise
        finally:
            gate.release()
            if saga.not_given_back is not None:
                refused.append((claimed.saga_id, saga.not_given_back))
        saga_id = claimed.saga_id
        if outcome == "completed":
            report.resumed.append(saga_id)
        elif outcome == SagaStatus.FAILED.value:
            report.failed.append(saga_id)
        elif outcome == SagaStatus.COMPENSATED.value:
            report.compensated.append(saga_id)
        elif outcome == "interrupted":
            report.interrupted.append((saga_id, reason or outcome))
        elif outcome == "deferred":
            report.deferred.append(saga_id)
        else:
            report.skipped.append((saga_id, reason or outcome))
            outcome = "skipped"
        note(saga_id, outcome)

    told = collect_hooks(given, "recovery_outcome")
    for saga_id, reason in unreadable:
        report.skipped.append((saga_id, reason))
        note(saga_id, "skipped")
        # As a corrupt record met once claimed is told (no name: unread).
        emit(told, saga_id, None, "skipped", reason)
    await _all_settled([resume_one(saga) for saga in children_first([
        ClaimedSaga(store, by_name, claimed, lease_seconds=lease, listeners=given,
                    allow_changed_definition=allow_changed_definition)
        for claimed in leases
    ])])
    report.not_given_back = await _give_back_at_the_end(refused)
    return report


async def _give_back_at_the_end(
    refused: list[tuple[str, Callable[[], Awaitable[object]]]],
) -> list[str]:
    """Try once more the give-backs the store refused during a pass —
    within ``STOP_WAIT`` in all, however many; the sagas whose leases are
    left (named in a warning; they run out, counted).

    Tried one after another, each waited the store's full timeout: a pass
    met by a store that hangs rather than refuses (a PostgreSQL server that
    does not answer, a SQLite file another process keeps locked, a store of
    one's own with no timeout) took ``limit`` timeouts at its end, or for
    ever — a cron's pass that never ends. Unlike a worker's round, a refusal
    does not end the tries: nothing tries them after the pass, and a store
    that refuses one saga's give-back (its row, not an outage) must not
    leave every other lease to run out; the budget bounds an outage."""
    left = [saga_id for saga_id, _ in refused]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_WAIT):
            for saga_id, give_back in refused:
                try:
                    await give_back()
                except GIVEN_BACK_FOR_GOOD:
                    pass  # nothing left to give back
                except Exception as error:  # it expires on its own, counted
                    if cancellation_pending():
                        raise asyncio.CancelledError from error  # see cancellation_pending
                    _log.warning("could not give saga %s's lease back at the end of the "
                                 "pass: %s", saga_id, refusal(error))
                    continue
                left.remove(saga_id)
    if left:
        _log.warning(
            "recover: the pass ends with the leases of %d saga(s) not given back (the store "
            "refused them, or did not answer within %g s): %s; they run out on their own, "
            "and each counts as a claim toward the store's park_after", len(left),
            STOP_WAIT, named_sagas(left))
    return left


async def _within(saga: ClaimedSaga, bound: float) -> Outcome:
    """``saga.resume()``, stopped if it runs longer than ``bound`` seconds
    (see ``recover``'s ``resume_timeout``), on the event loop's clock."""
    task = asyncio.get_running_loop().create_task(saga.resume())
    ended = False  # seen ended, only its give-back on its way
    try:
        for wait in (bound, STOP_WAIT, STOP_WAIT):
            await asyncio.wait([task], timeout=wait)
            if task.done():
                if task.cancelled() and saga.outcome is not None:
                    return saga.outcome  # stopped while loading it: see time_out
                return task.result()
            if saga.outcome is not None:
                # The resume has ended and told its outcome: only the store's
                # taking its lease back is still on its way. Nothing runs to
                # be stopped: given STOP_WAIT to land, then the pass goes on
                # without it.
                if ended:
                    break
                ended = True
                continue
            if saga.timed_out is None:
                saga.time_out(bound)
                if saga.run is None:
                    task.cancel()  # still loading it (the store hangs): nothing ran
            elif saga.run is not None:
                # Once more: a compensation begun since the stop (a child
                # saga's, say) is cancelled too.
                saga.run.stop_hung()
        _LET_GO.add(task)
        task.add_done_callback(_LET_GO.discard)
        if saga.outcome is not None:
            return saga.give_up()  # the outcome told
        # Asked twice, it has not stopped: a step swallows the cancellation.
        _log.error("recover: saga %s did not stop %g s after it was stopped at its "
                   "resume_timeout; the pass goes on without it", saga.saga_id, 2 * STOP_WAIT)
        return saga.give_up()
    except asyncio.CancelledError:
        # The pass is cancelled: the saga unwinds (S8), as it would in our
        # own task; we return once it has.
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await wait_ended(task)  # the one we are handling is raised
        raise
    finally:
        del task  # its error's traceback holds this frame


def _claims_deferred(store: RecoverableStore) -> bool:
    """Whether ``store.claim`` takes ``deferred`` (the built-in stores do; a
    store of one's own, or a wrapper of one, may not)."""
    try:
        return "deferred" in inspect.signature(store.claim).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


async def _all_settled(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutines`` concurrently until every one has finished. When we
    are cancelled meanwhile, they are cancelled too — each resumed saga then
    unwinds (S8) or stops — and ``CancelledError`` is raised only once all
    have finished: ``asyncio.gather`` raises as soon as the first of them
    is cancelled (one still waiting for a free slot), while the others are
    still unwinding, and a caller closing the store then would cut their
    compensations off half-way."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coroutine) for coroutine in coroutines]
    pending: set[asyncio.Task[None]] = set(tasks)
    cancelled: asyncio.CancelledError | None = None
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError as caught:
            if cancelled is None:
                cancelled = caught  # the first: the caller's message
                for task in pending:
                    task.cancel(*caught.args[:1])
            # and wait on, however often we are cancelled again — counted
            # here too: a cancellation that comes back at every wait (an
            # anyio cancel scope's) cancels each ``wait`` before the tasks'
            # done callbacks can answer it, and ``pending`` never shrank
            pending = {task for task in pending if not task.done()}
    # Every task's error is read, so that none is logged as never retrieved;
    # the first is raised (a BaseException a step let out, such as
    # SystemExit: the sagas stop where they are, as in a crash) — over a
    # cancellation, which must not hide it.
    errors = [task.exception() for task in tasks if not task.cancelled()]
    for error in errors:
        if error is not None:
            raise error
    if cancelled is not None:
        raise cancelled_again(cancelled)
