"""The store contract: what the executor journals, and what a store gives back."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeGuard, runtime_checkable

from ..redaction import withheld
from ..status import SagaStatus, StepStatus

__all__ = [
    "PURGED_BY_DEFAULT",
    "HistoryWindow",
    "JournalEntry",
    "Lease",
    "LeaseState",
    "LiveJournal",
    "LiveSaga",
    "RecoverableStore",
    "SagaCounts",
    "SagaRecord",
    "SagaStore",
    "SagaSummary",
    "check_store",
    "claims_by_name",
    "gives_back_unrun",
    "history_window",
    "is_conditional",
    "is_live_journal",
    "is_recoverable",
    "is_work_notifier",
]

#: The statuses ``purge`` deletes unless told others: ``FAILED`` is left out
#: on purpose. A FAILED saga is parked for an operator (a compensation gave
#: up; ``retry_unwinding`` finishes it once the participant is fixed), and
#: its journal is the only record of what was left undone: it goes only when
#: asked for by name.
PURGED_BY_DEFAULT: tuple[SagaStatus, ...] = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)

Action = Literal["act", "compensate"]
Branch = Literal["primary", "fallback"]


class JournalEntry(NamedTuple):
    """One transition of one step, in the order it happened.

    ``position`` is the step's index in ``Saga.steps`` (both branches of a
    Fallback share it); ``branch`` is ``"primary"`` for plain steps and for a
    Fallback's primary, ``"fallback"`` for its fallback. ``at`` is wall-clock
    Unix time (for people reading the journal; no durations are computed
    from it).

    ``result`` is set on an ``act`` entry with status COMPLETED only: the
    step's response in its journal form, JSON text (``results.py`` writes and
    reads it; ``None`` on every other entry, and on entries journaled before
    0.6.0, which did not keep responses).
    """

    position: int
    step: str
    branch: Branch
    action: Action
    status: StepStatus
    attempt: int
    error: str | None
    at: float
    result: str | None = None

    def __repr__(self) -> str:
        # The response may be a secret (a payment token): its size only (redaction.py).
        return (
            f"JournalEntry(position={self.position!r}, step={self.step!r}, "
            f"branch={self.branch!r}, action={self.action!r}, status={self.status!r}, "
            f"attempt={self.attempt!r}, error={self.error!r}, at={self.at!r}, "
            f"result={withheld(self.result)})"
        )


@dataclass(slots=True)
class SagaRecord:
    """A saga as a store knows it: its header, latest context and full history."""

    saga_id: str
    saga_name: str
    fingerprint: str
    status: SagaStatus
    context: dict[str, Any]
    history: list[JournalEntry] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0

    def __repr__(self) -> str:
        # The context may hold secrets: its size only (redaction.py).
        return (
            f"SagaRecord(saga_id={self.saga_id!r}, saga_name={self.saga_name!r}, "
            f"fingerprint={self.fingerprint!r}, status={self.status!r}, "
            f"context={withheld(self.context)}, history=<{len(self.history)} entries>, "
            f"created_at={self.created_at!r}, updated_at={self.updated_at!r}, "
            f"version={self.version!r})"
        )


class HistoryWindow(NamedTuple):
    """Part of a saga's journal, as ``history_window`` reads it."""

    #: The saga, its history holding entries ``first`` .. ``first + len - 1`` only.
    record: SagaRecord
    first: int
    #: The length of the whole journal.
    entries: int
    #: The names of the steps the whole journal holds an act of, in the
    #: order they first appear (``saga_family`` finds the children by them).
    act_steps: tuple[str, ...] = ()


@runtime_checkable
class SagaStore(Protocol):
    """Where the executor journals every transition.

    The executor batches: ``create`` carries the saga's header together with
    its first transitions, and each ``append`` carries every transition since
    the previous write, plus the new status and context when they changed.
    A write must be durable when the awaitable returns: the executor calls a
    step's ``act`` only after its ``STARTED`` entry was written.
    """

    async def create(
        self,
        saga_id: str,
        saga_name: str,
        fingerprint: str,
        context: dict[str, Any],
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus = SagaStatus.RUNNING,
    ) -> None:
        """Record a new saga; ``SagaAlreadyExists`` if the id is taken."""
        ...

    async def append(
        self,
        saga_id: str,
        entries: Sequence[JournalEntry],
        *,
        status: SagaStatus | None = None,
        context: dict[str, Any] | None = None,
        fence: Lease | None = None,
    ) -> None:
        """Add transitions, and set the status/context when given.

        With ``fence`` (a saga resumed under a lease), the write happens only
        if the lease's fencing token is still the saga's current one;
        otherwise ``LeaseLost`` is raised and nothing is written.

        Optional: a store whose class sets ``appends_after = True`` also takes
        ``after: int | None`` — write only if the saga's journal holds exactly
        that many entries, else raise ``JournalConflict`` and write nothing.
        The executor passes it so that retrying a write whose outcome was in
        doubt can never journal it twice (see ``is_conditional``). A store
        without it is never sent an append of entries again while an earlier
        try of it is in doubt and not found by a read: the run stops with
        ``SagaInterrupted.in_doubt``. An error with ``nothing_written`` (see
        ``SagaStoreError``) leaves no doubt, and is retried as it is.
        """
        ...

    async def load(self, saga_id: str) -> SagaRecord:
        """The saga's record; ``SagaNotFound`` if there is none."""
        ...


@dataclass(frozen=True, slots=True)
class Lease:
    """The right of one recovery worker to resume one saga, for a while.

    ``token`` is the fencing token: a saga starts at 0, every claim
    increments it, and writes made under an older token are refused
    (``LeaseLost``). A first run writes with token 0, so once a recovery
    worker has claimed the saga, the original runner is shut out too.
    """

    saga_id: str
    owner: str
    token: int
    expires_at: float  # Unix time
    # A ``claim``'s lease: the saga's claims since its lease was last given
    # back in order, this one included (0 for ``claim_saga``, or a store that
    # does not count). The holder, not the store, warns at the last one a
    # parking store allows (``store._parking.warn_if_last_claim``): only the
    # holder knows whether it will run the saga or give it back unrun.
    unreleased_claims: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class SagaSummary:
    """One line of a saga listing (no context, no history)."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    # Claims (``claim``) since its lease was last given back in order; a store
    # that does not count them says 0 (see ``park_after`` of the built-in stores).
    unreleased_claims: int = 0


class SagaCounts(dict[tuple[str, SagaStatus], int]):
    """What a built-in store's ``count_sagas`` answers: the sagas by (saga
    name, status), as the listing shows them — and ``unreadable``, the rows
    it left out as the listing does (S12): a saga in flight the claim skips
    as corrupt, a status the store does not write, a name that is no text.
    ``None`` with ``at_most``: a bounded count reads a few sagas of each
    status the store writes, and does not look for them. A dict still: a
    store of your own may answer a plain one (no figure)."""

    unreadable: int | None = 0


class LeaseState(NamedTuple):
    """A saga's recovery lease as its store holds it (optional ``lease_state``).

    ``owner`` is ``None`` when the saga was never claimed or its lease was
    released; ``expires_at`` (Unix time) is then ``None``, the release time,
    or the end of a deferral (``defer``: out of ``claim`` until then).
    ``token`` is the fencing token (0 until the first claim).
    ``unreleased_claims``: claims (``claim``) since the lease was last given
    back in order (0 from a store that does not count them).
    """

    owner: str | None
    expires_at: float | None
    token: int
    unreleased_claims: int = 0


@runtime_checkable
class RecoverableStore(SagaStore, Protocol):
    """A durable store that recovery and the operator CLI can work with.

    Optional: ``async def renew(self, lease: Lease, lease_seconds: float) ->
    Lease`` extends a lease to ``lease_seconds`` from now if its fencing token
    is still current and it was not given back (else ``LeaseLost``: a renewal
    landing late must not lease a released saga again). Recovery heartbeats a resumed saga
    through it when the store has it (checked with ``hasattr``); without it a
    saga must finish within its lease, or another worker takes it over.

    Optional, for operators (the web console asks with ``getattr`` and does
    without): ``listing_filters``, a class attribute naming the extra keyword
    filters ``list_sagas`` takes — ``before`` (a saga id: only sagas listed
    after it, i.e. older; ``SagaNotFound`` if it is gone), ``created_since``
    and ``created_until`` (Unix time: ``created_since <= created_at <
    created_until``); ``async def count_sagas(*, saga_name=None,
    created_since=None, created_until=None) -> dict[tuple[str, SagaStatus],
    int]``, the number of sagas by (name, status), of the sagas
    ``list_sagas`` shows (the built-in stores answer a ``SagaCounts``,
    whose ``unreadable`` the console shows); ``async def
    lease_state(saga_id) -> LeaseState`` (``SagaNotFound`` if missing); and
    ``async def existing_saga_ids(saga_ids) -> set[str]``, which of those ids
    the store holds (``saga_family`` finds a saga's children with one call,
    else with a ``lease_state`` or ``load`` per step name); ``async def
    saga_names(*, limit=1000) -> list[str]``, the distinct saga names the
    store holds, in order, at most ``limit`` (the console's name
    suggestions; else the names it counted); and ``async def
    load_window(saga_id, *, start, count) -> HistoryWindow``, the saga with
    only ``count`` entries of its journal from ``start`` (``start < 0``:
    from the end; ``-count``, the newest), and the journal's length — the
    console and ``show --limit`` read a page of a journal of tens of
    thousands of entries without the rest (``history_window``; else the
    whole record is loaded and cut).
    """

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
    ) -> list[SagaSummary]:
        """Newest first; at most ``limit`` sagas, and that many while more
        match (a row that cannot be read is left out and not counted: the
        CLI's paged ``list --json`` takes a short page for the last)."""
        ...

    async def claim(
        self, *, owner: str, lease_seconds: float, older_than: float, limit: int
    ) -> list[Lease]:
        """Atomically lease up to ``limit`` interrupted sagas: status RUNNING or
        COMPENSATING, last updated more than ``older_than`` seconds ago, and no
        unexpired lease. Each claim increments the saga's fencing token.

        Optional: a store whose ``claim`` also takes ``names:
        Collection[str] | None = None`` leases only sagas of one of those
        names (``None``: any; empty: none) — ``RecoveryWorker`` passes the
        names of its sagas, so that services sharing a store do not claim
        each other's (see ``claims_by_name``). Without it, a worker claims
        every saga and skips the ones it does not know."""
        ...

    async def claim_saga(self, saga_id: str, *, owner: str, lease_seconds: float) -> Lease:
        """Lease one saga by id, whatever its status and age, incrementing its
        fencing token; ``SagaNotFound`` if missing, ``SagaBusy`` if another
        worker holds an unexpired lease on it."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give a lease back (only if it is still the current one)."""
        ...

    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str] = PURGED_BY_DEFAULT
    ) -> int:
        """Delete finished sagas with one of ``statuses`` (``COMPLETED``,
        ``COMPENSATED``, ``FAILED``; by default the first two: ``FAILED`` only
        when named) last updated more than ``older_than`` seconds ago; returns
        how many were deleted. ``ValueError`` for a status that is not final
        or not a status, or for none at all. A child saga (``SubSaga``) is
        not deleted while its parent is stored. The stores this package
        ships also take ``on_batch``, told of each committed batch (a purge
        stopped partway keeps what they deleted); a store of your own need
        not."""
        ...


@runtime_checkable
class WorkNotifier(Protocol):
    """An optional capability of shared stores: announcing handed-off work.

    ``RecoveryWorker`` uses it so that a saga one worker hands off (it is
    shutting down) is claimed by another at once rather than at its next poll
    (``PostgresSagaStore``: LISTEN/NOTIFY). Announcements are hints, never the
    only way work is found: one sent while a listener reconnects is missed,
    and a crash announces nothing, so workers keep polling.
    """

    async def hand_off(self, lease: Lease) -> None:
        """``release`` the lease and, if the saga still needs a worker
        (RUNNING or COMPENSATING), announce its id to the listeners. Only for
        a run stopped without finishing: a saga a worker *skipped* is merely
        released, or it would bounce between workers that all skip it."""
        ...

    def work_notifications(self) -> AsyncIterator[str]:
        """Listen until the iteration is closed or the store is: yields ``""``
        once listening has started (work announced before it may have been
        missed: claim once), then the id of each saga handed off.
        Raises ``SagaStoreError`` when the connection is lost."""
        ...


# The raw form of a ``JournalEntry`` the executor builds on the hot path. Its
# last item is the step's response itself, on an act-COMPLETED entry (``None``
# elsewhere): it is put in journal form only when written or loaded
# (``results.journal_entry``), so a saga on an in-process store never pays for it.
# Its status is the ``StepStatus``'s value, a plain ``str`` (a ``StepStatus``
# member is a ``str`` too: a resumed run's journal holds ``JournalEntry``s):
# a tuple of plain values is one the garbage collector can untrack, an enum
# member is an object it tracks.
RawEntry = tuple[int, str, Branch, Action, str, int, str | None, float, Any]


class LiveSaga(Protocol):
    """A running saga as an in-process store may watch it (see ``LiveJournal``).

    ``journal`` holds whole rows, except for a run that ``MemorySagaStore``
    itself watches through ``Execution.run_plain``, whose journal is compact
    (``compact_journal``) and which says so with a ``shape`` that is not None."""

    saga_id: str
    saga_name: str
    fingerprint: str
    status: SagaStatus
    journal: list[RawEntry]
    created_at: float

    def context_image(self) -> dict[str, Any]:
        """The context as of the last transition, in journal form."""
        ...


@runtime_checkable
class LiveJournal(Protocol):
    """An optional capability of stores that live in the same process.

    Durability means nothing to such a store, so instead of receiving writes
    it watches the run: ``track`` when the saga starts, ``finished`` when it
    ends. The executor then skips every write — the hot path awaits nothing
    for journaling. ``MemorySagaStore`` implements it.
    """

    def track(self, saga: LiveSaga, *, replace: bool = False) -> None:
        """Start watching ``saga``; ``SagaAlreadyExists`` if the id is taken,
        unless ``replace`` (a resumed saga takes over its own record)."""
        ...

    def finished(self, saga: LiveSaga) -> None:
        """``saga`` reached a final status."""
        ...


# --------------------------------------------------------------------------- capabilities
#
# What a store can do is asked with ``getattr``, never ``isinstance(store,
# Protocol)``: since Python 3.12 a runtime-checkable protocol looks attributes
# up with ``inspect.getattr_static``, so a wrapper that delegates through
# ``__getattr__`` (the usual way to add metrics or tracing to a store) passes
# on 3.11 and is refused on 3.12+. The same store must behave the same on
# every supported Python.

_RECOVERABLE = ("create", "append", "load", "list_sagas", "claim", "claim_saga", "release",
                "purge")
_LIVE = ("track", "finished")
_NOTIFIER = ("hand_off", "work_notifications")


def _has(store: object, names: tuple[str, ...]) -> bool:
    return all(callable(getattr(store, name, None)) for name in names)


def check_store(store: object) -> None:
    """Refuse, when a saga (or recovery) is given it, what cannot be a store:
    a store class instead of an instance (its methods are callable, so it
    would pass every ``is_*`` test below and fail in its first write), or an
    object without ``create``/``append``/``load`` (a path or DSN given as the
    store would be retried as a failing journal, then ``SagaInterrupted``).
    The value itself is never shown: a DSN may hold a password."""
    if isinstance(store, type):
        raise TypeError(
            f"store= takes a store instance, got the class {store.__name__}: "
            f"pass {store.__name__}(...)"
        )
    if not _has(store, ("create", "append", "load")):
        hint = ", e.g. SQLiteSagaStore(path)" if isinstance(store, str | bytes) else ""
        raise TypeError(
            f"store= takes a saga store (async create, append and load: see SagaStore"
            f"{hint}), got a {type(store).__name__}"
        )


def is_recoverable(store: object) -> TypeGuard[RecoverableStore]:
    """``store`` has every method of ``RecoverableStore`` (leases, listing)."""
    return _has(store, _RECOVERABLE)


def is_live_journal(store: object) -> TypeGuard[LiveJournal]:
    """``store`` watches runs in process (``LiveJournal``) instead of being written to."""
    return _has(store, _LIVE)


def is_conditional(store: object) -> bool:
    """``store`` takes ``append(..., after=N)`` (see ``SagaStore.append``)."""
    return getattr(store, "appends_after", False) is True


def claims_by_name(store: object) -> bool:
    """``store.claim`` takes ``names`` (see ``RecoverableStore.claim``): the
    built-in stores do. Read from ``claim``'s signature, as a wrapper that
    delegates through ``__getattr__`` hands over the wrapped store's own
    method; a ``claim(**kwargs)`` of one's own says nothing of what it passes
    on, and is not taken to (its worker claims every saga, as before)."""
    try:
        return "names" in inspect.signature(store.claim).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):  # no claim, or no signature to read
        return False


def gives_back_unrun(store: object) -> bool:
    """``store.release`` takes ``ran`` (as do its ``defer`` and ``hand_off``,
    where it has them): the built-in durable stores do. ``ran=False`` gives
    back a lease ``claim`` took without having run anything of the saga
    (skipped, or handed back untouched): that claim is not counted towards
    parking the saga, and the count of the claims before it is kept (see
    ``store._parking``). Read from the signatures, as ``claims_by_name``."""
    for name in ("release", "defer", "hand_off"):
        method = getattr(store, name, None)
        if method is None and name != "release":
            continue
        try:
            if "ran" not in inspect.signature(method).parameters:  # type: ignore[arg-type]
                return False
        except (TypeError, ValueError):  # no signature to read
            return False
    return True


async def history_window(
    store: Any, saga_id: str, *, start: int, count: int, act_steps: bool = True
) -> HistoryWindow:
    """``count`` entries of a saga's journal from ``start`` (``start < 0``:
    from the end), the header, and the journal's length: the store's
    ``load_window`` when it has one, else its ``load``, cut. Not
    ``act_steps``: the store's ``load_window`` is asked to leave out the act
    step names if it takes ``act_steps`` (the built-in stores' does); they
    may then be empty."""
    load_window = getattr(store, "load_window", None)
    if callable(load_window):
        if not act_steps and _takes(load_window, "act_steps"):
            window: HistoryWindow = await load_window(
                saga_id, start=start, count=count, act_steps=False
            )
        else:
            window = await load_window(saga_id, start=start, count=count)
        return window
    record: SagaRecord = await store.load(saga_id)
    entries = len(record.history)
    first = window_start(start, entries)
    return HistoryWindow(
        dataclasses.replace(record, history=record.history[first : first + max(count, 0)]),
        first, entries, tuple(dict.fromkeys(e.step for e in record.history if e.action == "act")),
    )


def _takes(method: Any, keyword: str) -> bool:
    """Whether ``method`` takes ``keyword`` (named, or through ``**kwargs``):
    a store of your own written before it is called as before."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        return False
    return any(
        p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


def window_start(start: int, entries: int) -> int:
    """The first entry of a window from ``start`` (negative: from the end)."""
    return max(0, entries + start) if start < 0 else start


def is_work_notifier(store: object) -> TypeGuard[WorkNotifier]:
    """``store`` announces handed-off work (``WorkNotifier``)."""
    return _has(store, _NOTIFIER)
