"""Exceptions raised by fallback_saga (the circuit breaker's live in ``breaker``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Final

from .status import SagaStatus
from .timestamps import utc_text

__all__ = [
    "ContextDecodeError",
    "ContextSerializationError",
    "CorruptSagaRecord",
    "JournalConflict",
    "LeaseLost",
    "ParallelWriteConflict",
    "RecordedError",
    "SagaAlreadyExists",
    "SagaBusy",
    "SagaDefinitionChanged",
    "SagaDefinitionError",
    "SagaError",
    "SagaFailed",
    "SagaInterrupted",
    "SagaNotFailed",
    "SagaNotFound",
    "SagaStoreError",
    "StoreClosed",
]

# The most characters of an exception's text that the journal keeps
# (``store._responses``) and that a message or a log line of the library
# quotes. The text is whatever the exception says (an HTTP client's error may
# quote a whole response body): quoted whole, a failure of a few megabytes
# makes a message and a log line of as many. The head says what failed; the
# exception itself stays whole where the caller gets it (``SagaFailed.error``).
MAX_ERROR_TEXT: Final = 4000


def cut_text(text: str, left_out: str = "not shown") -> str:
    """``text`` cut to ``MAX_ERROR_TEXT`` characters, saying how many more
    there were (``… [N more characters <left_out>]``)."""
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return f"{text[:MAX_ERROR_TEXT]}… [{len(text) - MAX_ERROR_TEXT} more characters {left_out}]"


def cut_middle(text: str, left_out: str = "not shown") -> str:
    """``text`` cut to ``MAX_ERROR_TEXT`` characters by leaving out its
    middle (``… [N characters <left_out>] …``): for a text whose two ends
    both matter — a stack trace starts with the outermost call and ends with
    the innermost one and the error it raised."""
    if len(text) <= MAX_ERROR_TEXT:
        return text
    half = MAX_ERROR_TEXT // 2
    return (f"{text[:half]}… [{len(text) - 2 * half} characters {left_out}] …"
            f"{text[len(text) - half:]}")


def error_text(error: BaseException) -> str:
    """``str(error)`` as a message or a log line quotes it: cut (``cut_text``)."""
    return cut_text(str(error))


def described(error: BaseException) -> str:
    """``TypeName: text``, the text cut (``error_text``)."""
    return f"{type(error).__name__}: {error_text(error)}"


# ``BaseException.args`` as stored, under ``SagaFailed.args`` (which reads it).
_EXCEPTION_ARGS: Any = BaseException.__dict__["args"]


class SagaError(Exception):
    """Base class of every error this library raises on its own account,
    except ``CircuitOpenError``: the circuit breaker knows nothing of sagas."""


class SagaDefinitionError(SagaError, TypeError):
    """A ``Saga`` subclass is declared wrongly; raised when the class is created."""


class ContextSerializationError(SagaError, TypeError):
    """A context holds a value that cannot be journaled as JSON.

    ``path`` names the offending field (``"items[2].price"``), so the fix is obvious.
    """

    def __init__(self, path: str, value: object, reason: str = "") -> None:
        self.path = path
        self.value_type = type(value).__name__
        detail = f": {reason}" if reason else ""
        article = "an" if self.value_type[:1].lower() in "aeiou" else "a"
        super().__init__(
            f"context field {path!r} holds {article} {self.value_type}, "
            f"which cannot be stored as JSON{detail}"
        )


class ContextDecodeError(SagaError, ValueError):
    """Stored context data does not fit the context class (corrupt or changed).

    ``path`` names the offending field.
    """

    def __init__(self, path: str, reason: str, *, saga: str = "") -> None:
        self.path = path
        self.reason = reason
        where = f"{saga}: " if saga else ""
        super().__init__(f"{where}cannot restore context field {path!r}: {reason}")

    def in_saga(self, saga_id: str, saga_name: str, context_type: type) -> ContextDecodeError:
        """This error as a resume reports it: naming the saga, and saying that
        the code's context class no longer fits what the journal holds."""
        name = context_type.__qualname__
        error = ContextDecodeError(
            self.path,
            f"{self.reason} (the journal does not fit the code's {name}: a field added "
            f"without a default, removed or retyped since the saga started — give it a default "
            f"or a type that reads the old values, or resume with the code the saga started "
            f"with; or a corrupt row)",
            saga=f"saga {short_id(saga_id)} ({saga_name})",
        )
        error.reason = self.reason
        return error


class SagaStoreError(SagaError):
    """The saga store failed to read or write the journal.

    ``nothing_written``: the store knows that the write it failed wrote
    nothing (the database refused it before it could commit: a file locked
    by another process, a full disk, a file it could not open; PostgreSQL
    answered it with an error, and rolled it back). A run
    stopped by such an error is not in doubt about it (``SagaInterrupted``)
    — unless an earlier try of the same write failed in doubt and nothing
    since made its landing impossible: it may still commit. A store of
    your own sets it only where that is certain."""

    nothing_written: bool = False


class StoreClosed(SagaStoreError):
    """The saga store was closed (``await store.close()``): nothing is read
    or written through it any more. Definitive, as ``SagaNotFound`` is: a
    run that meets it stops at once (``SagaInterrupted``, not in doubt)
    instead of retrying its write for the whole ``journal_retry`` budget —
    a closed store does not come back; open a new one.

    Also the refusal of a ``SQLiteSagaStore`` in a process forked while the
    store was in the middle of a request: its connections are the parent's,
    and it must be opened again (a new store) after the fork. And of a
    ``PostgresSagaStore`` used in a process forked after it was first used
    (its connections are the parent's), or given a pool whose event loop
    has closed: neither store object works again there."""


class SagaInterrupted(SagaStoreError):
    """The journal could not be written, so the run stopped; the saga is left
    in the store for recovery (S13).

    Raised instead of a ``SagaResult`` or ``SagaFailed`` whenever the store
    kept refusing a write past the saga's ``journal_retry`` budget. No step
    and no compensation ran after the last write the journal holds: the
    journal is the truth about what happened, and ``recover()`` or a
    ``RecoveryWorker`` finishes the saga from it once the store works again
    (a RUNNING saga continues forward from its first step not on record as
    completed; a COMPENSATING one finishes unwinding).

    ``status`` is the last status the journal is known to hold (``None`` when
    even the saga's creation could not be confirmed: then no step ran, and the
    saga exists in the store only if that first write landed unseen).
    ``in_doubt``: the last write failed in a way that does not say whether it
    landed (not so when the store says it wrote nothing:
    ``SagaStoreError.nothing_written``), and no later read could tell (the connection died after the
    commit was sent, the store stopped answering); if it did land, the
    journal holds ``status_if_landed`` (for a write that changed no status,
    the same as ``status``): load the saga to know. ``error`` (also
    ``__cause__``) is the store's last error; ``failure`` is the business
    error that had stopped the saga before the journal failed, if any.
    ``doubted_by``: when in doubt, the error of the write that may have
    landed, as ``TypeName: text`` (its text cut as ``error``'s is in the
    message; quoted as given), if it was not ``error`` — the read
    that would have told whether it landed failed too, differently (the
    connection lost mid-commit, then a pool that could get none); else None.
    The message names both.
    """

    def __init__(
        self,
        *,
        saga_id: str,
        saga_name: str,
        status: SagaStatus | None,
        error: BaseException,
        failure: BaseException | None = None,
        in_doubt: bool = False,
        status_if_landed: SagaStatus | None = None,
        doubted_by: str | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.status = status
        self.error = error
        self.failure = failure
        self.in_doubt = in_doubt
        self.status_if_landed = status_if_landed if in_doubt else None
        self.doubted_by = doubted_by if in_doubt else None
        if status is None and not in_doubt:
            where = ("its creation was not written, and no step ran: the saga is not in "
                     "the store (run it again once the store works)")
        elif status is None:
            where = ("its creation could not be confirmed, and no step ran; if the write "
                     "landed unseen, recovery will run it")
        else:
            where = f"it is left {status.value} in the store for recovery"
        if in_doubt and status is not None:
            landed = self.status_if_landed or status
            if landed is not status:
                where += (f" (or {landed.value}, if its last write landed unseen: load it "
                          f"to know)")
            else:
                where += " (its last write may have landed unseen)"
        during = f" while handling {described(failure)}" if failure else ""
        # A child saga (SubSaga) it drives was refused for a changed
        # definition: its journal is fine, and the refusal says the way on.
        why = (
            "a child saga it drives cannot be resumed with the code it has now"
            if isinstance(error, SagaDefinitionChanged) else "the journal could not be written"
        )
        shown = described(error)
        # The error that left the write in doubt, when the last one is
        # another's (a read's): it says why the journal may hold more. The
        # run gives it cut already (``described``): cut again, its marker
        # would be cut with it.
        if self.doubted_by is not None and self.doubted_by != shown:
            shown += f"; the write that may have landed failed with {self.doubted_by}"
        super().__init__(
            f"saga {saga_name} ({short_id(saga_id)}) stopped: {why}{during} "
            f"({shown}); nothing ran after the last write the "
            f"journal holds; {where}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_interrupted,
            (self.saga_id, self.saga_name, self.status, self.error, self.failure,
             self.in_doubt, self.status_if_landed, self.doubted_by),
        )


def _rebuild_interrupted(
    saga_id: str,
    saga_name: str,
    status: SagaStatus | None,
    error: BaseException,
    failure: BaseException | None,
    in_doubt: bool = False,
    status_if_landed: SagaStatus | None = None,
    doubted_by: str | None = None,
) -> SagaInterrupted:
    return SagaInterrupted(
        saga_id=saga_id, saga_name=saga_name, status=status, error=error, failure=failure,
        in_doubt=in_doubt, status_if_landed=status_if_landed, doubted_by=doubted_by,
    )


def short_id(saga_id: object, limit: int = 80) -> str:
    """A saga id as an error message may show it: ``repr`` (so control
    characters are escaped), cut to ``limit`` characters."""
    if isinstance(saga_id, str) and len(saga_id) > limit:
        saga_id = saga_id[:limit]  # repr() of the whole would cost as much as the value
    text = repr(saga_id)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _plain(text: str, limit: int = 80) -> str:
    """A name a row holds (a fingerprint): as it is when short and printable,
    else as ``short_id`` shows it."""
    return text if len(text) <= limit and text.isprintable() else short_id(text[:limit], limit)


# The differences a SagaDefinitionChanged message names (all in ``differences``).
_MOST_DIFFERENCES = 10


def key_path(path: str, key: object) -> str:
    """The path of a dict's item, as a message names it: ``path['sku']``.

    A key that reads like a name (a short identifier, a small int, an Enum
    member) is shown; any other — an e-mail address, a card number, a token
    a context is keyed by — only by its type, ``path[<str key>]``: context
    values never appear in messages (they may be secrets), and a key is one.
    """
    cls = key.__class__
    if isinstance(key, str) and cls is str:
        if len(key) <= 40 and key.isidentifier() and key.isascii():
            return f"{path}[{key!r}]"
    elif key is None or (isinstance(key, int) and (cls is bool or cls is int)):
        if key is None or -100_000 < key < 100_000:
            return f"{path}[{key!r}]"
    elif isinstance(key, Enum):
        return f"{path}[{cls.__name__}.{key.name}]"
    return f"{path}[<{cls.__name__} key>]"


class SagaNotFound(SagaStoreError, KeyError):
    """No saga with this id is in the store."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {short_id(saga_id)} in the store")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CorruptSagaRecord(SagaStoreError):
    """A stored saga cannot be read back (bad JSON, unknown status, ...)."""

    def __init__(self, saga_id: str, reason: str) -> None:
        self.saga_id = saga_id
        self.reason = reason
        super().__init__(f"saga {short_id(saga_id)} in the store is unreadable: {reason}")


class JournalConflict(SagaStoreError):
    """An append made on the condition that the journal holds ``expected``
    entries found ``actual``: another writer appended meanwhile, or an earlier
    try of the same write landed after all. Nothing was written."""

    def __init__(self, saga_id: str, expected: int, actual: int) -> None:
        self.saga_id = saga_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the journal of saga {short_id(saga_id)} holds {actual} entries, not the "
            f"{expected} this append was made after"
        )


class LeaseLost(SagaStoreError):
    """Another worker claimed the saga — this worker's lease had expired, or
    this is the run that started it (fencing token 0) and recovery took it
    over: the write was refused and this runner must stop driving the saga."""

    def __init__(self, saga_id: str, token: int) -> None:
        self.saga_id = saga_id
        self.token = token
        super().__init__(
            f"lease on saga {short_id(saga_id)} (fencing token {token}) was lost; the saga is "
            f"driven by another worker now"
        )


class SagaBusy(SagaStoreError):
    """Another worker holds an unexpired lease on this saga: it is driving it.
    On ``MemorySagaStore`` (``here``): a run of this process drives it still
    (another task, or another thread's event loop), or moved it on since the
    resume read it."""

    def __init__(
        self, saga_id: str, owner: str | None, expires_at: float | None, *, here: bool = False
    ) -> None:
        self.saga_id = saga_id
        self.owner = owner
        self.expires_at = expires_at
        if here:
            super().__init__(
                f"saga {short_id(saga_id)} is being driven by another run in this process "
                f"(another task, or another thread's event loop): let that run finish (its "
                f"outcome is then what resume returns), or resume it once that run has stopped"
            )
            return
        super().__init__(
            f"saga {short_id(saga_id)} is being driven by {owner or 'another worker'} "
            f"(lease until {_lease_end(expires_at)}): let that worker finish it, or resume "
            f"it once its lease runs out"
        )


def _lease_end(expires_at: float | None) -> str:
    """When a lease ends, as the CLI and the console print times (the store's
    Unix number meant nothing to the operator reading it); a time no
    calendar holds (a corrupt row) as stored."""
    if expires_at is None:
        return "an unknown time"
    shown = utc_text(expires_at)
    return shown if shown == repr(expires_at) else f"{shown} UTC"


class SagaAlreadyExists(SagaStoreError):
    """A saga id was reused: ids must be unique per store.

    ``entry`` is the call that tried to start a new saga with it
    (``"run()"``, ``"transaction()"``), as the message says; None when the
    store's ``create`` was called directly. (The store that refuses the id
    does not know the call: the run tells it, ``started_by``.)"""

    def __init__(self, saga_id: str, entry: str | None = None) -> None:
        self.saga_id = saga_id
        self.entry = entry
        super().__init__(_taken_message(saga_id, entry))

    def started_by(self, entry: str) -> SagaAlreadyExists:
        """Itself, its message naming ``entry`` as the call that started the
        new saga (the same error: its traceback, the one the store raised)."""
        self.entry = entry
        self.args = (_taken_message(self.saga_id, entry),)
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # args holds the message, not the arguments: SagaAlreadyExists(message)
        # would take the message for the saga id.
        return (type(self), (self.saga_id, self.entry))


def _taken_message(saga_id: str, entry: str | None) -> str:
    shown = short_id(saga_id)
    # The call to make, with the id when it is short (the message stays short).
    call = f"resume({shown})" if len(shown) <= 40 else "resume() with that id"
    starts = (
        f"{entry} starts a new saga, so give each its own id (or none, and one is made)"
        if entry else "a new saga needs an id of its own"
    )
    return (
        f"a saga with id {shown} already exists in the store: {starts}; to continue "
        f"this one, or read its outcome, call {call}"
    )


class SagaNotFailed(SagaError):
    """An operator's ``retry_unwinding`` was refused: the saga is not one
    whose unwinding gave up (FAILED), so there is no unwinding to retry.
    ``status`` is the status the journal holds; the message says why and
    what to do instead."""

    def __init__(self, saga_id: str, status: SagaStatus, reason: str) -> None:
        self.saga_id = saga_id
        self.status = status
        super().__init__(f"saga {short_id(saga_id)} is {status.value.upper()}: {reason}")


class SagaDefinitionChanged(SagaError):
    """A saga was started with another definition than the code has now.

    Resuming it could run the wrong step or compensate the wrong one, so it is
    refused unless the caller says otherwise (``allow_changed_definition``),
    which only helps when no step the journal holds has moved to another
    place or lost its place (``overridable``): else only the code the saga
    was started with can finish it. The message says which, and names
    steps, never context values.

    ``driven_by``: the saga was a child saga (``SubSaga``) refused while the
    saga ``driven_by`` drove it (its parent, or the parent's own driver): the
    way forward is then a resume or recovery of that saga, which hands its
    override on to the children it drives.
    """

    def __init__(
        self,
        saga_id: str,
        stored: str,
        current: str,
        differences: list[str],
        *,
        overridable: bool = True,
        driven_by: str | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.stored_fingerprint = stored
        self.current_fingerprint = current
        self.differences = differences
        self.overridable = overridable
        self.driven_by = driven_by
        if driven_by is None:
            resume, driver = "resume(..., allow_changed_definition=True)", "it"
        else:
            resume = f"resume({short_id(driven_by)}, allow_changed_definition=True)"
            driver = f"the saga that drives it, {short_id(driven_by)}"
        way = (
            f"if the change is harmless, {resume} (or recover --allow-changed-definition) "
            "continues it with the new steps, matched by position (a renamed step gets a new "
            "idempotency key)"
            if overridable else
            "allow_changed_definition cannot resume it (a step the journal holds is at "
            "another place now, or its place is gone: it would be driven as another step, "
            f"or undone by another's compensate); resume {driver} with the code it was "
            "started with"
        )
        if driven_by is not None:
            way = (f"it is a child saga (SubSaga) that {short_id(driven_by)} drives, and is "
                   f"resumed only with it: {way}")
        # What the row holds is shown escaped and cut, and so many
        # differences at most: a damaged or hostile row makes no message of
        # megabytes and no log line of its own.
        shown = differences[:_MOST_DIFFERENCES]
        if len(differences) > _MOST_DIFFERENCES:
            shown = [*shown, f"and {len(differences) - _MOST_DIFFERENCES} more"]
        super().__init__(
            f"saga {short_id(saga_id)} was started with another definition (fingerprint "
            f"{_plain(stored)}, the code now has {current}): " + "; ".join(shown) + f". {way}"
        )

    def driven(self, saga_id: str) -> SagaDefinitionChanged:
        """The same refusal, of a child saga that ``saga_id`` drives."""
        return SagaDefinitionChanged(
            self.saga_id, self.stored_fingerprint, self.current_fingerprint, self.differences,
            overridable=self.overridable, driven_by=saga_id,
        )

    def __reduce__(self) -> tuple[object, ...]:  # keyword-only arguments need help to pickle
        return (
            _rebuild_definition_changed,
            (self.saga_id, self.stored_fingerprint, self.current_fingerprint,
             self.differences, self.overridable, self.driven_by),
        )


def _rebuild_definition_changed(
    saga_id: str, stored: str, current: str, differences: list[str], overridable: bool,
    driven_by: str | None,
) -> SagaDefinitionChanged:
    return SagaDefinitionChanged(
        saga_id, stored, current, differences, overridable=overridable, driven_by=driven_by
    )


class RecordedError(SagaError):
    """An error that an earlier run journaled; only its text survived."""


class SagaFailed(SagaError):
    """A saga could not complete; its completed steps have been unwound.

    Raised by ``Saga.run`` only *after* unwinding. ``status`` is
    ``COMPENSATED`` when every completed step was undone, ``FAILED`` when at
    least one compensation kept failing (see ``compensation_errors``, keyed by
    step name). ``error`` — also ``__cause__`` — is the exception that stopped
    the saga; when a fallback failed too, it is the fallback's error, and the
    primary's error hangs off it as its ``__cause__``/``__context__``.

    When a member of a ``Parallel`` group failed, ``failed_step`` names the
    first member that failed for good and ``error`` is its error;
    ``branch_errors`` keeps the error of every member that failed (keyed by
    step name; empty for a saga without groups). Members cancelled because
    a sibling failed are not in it: they did not fail.
    """

    def __init__(
        self,
        *,
        saga_id: str,
        saga_name: str,
        status: SagaStatus,
        failed_step: str,
        error: BaseException,
        compensation_errors: Mapping[str, BaseException] | None = None,
        branch_errors: Mapping[str, BaseException] | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.status = status
        self.failed_step = failed_step
        self.error = error
        self.compensation_errors: dict[str, BaseException] = (
            dict(compensation_errors) if compensation_errors else {}
        )
        self.branch_errors: dict[str, BaseException] = dict(branch_errors) if branch_errors else {}
        # The message is built when first read: every failed saga raises one
        # of these, and most callers read its fields, never its text.
        self._message: str | None = None

    def _text(self) -> str:
        message = self._message
        if message is None:
            # (A SagaStatus is a StrEnum: its str() is its value.)
            message = (
                f"saga {self.saga_name} ({short_id(self.saga_id)}) failed at step "
                f"{self.failed_step!r}: {described(self.error)}; "
                f"status {self.status!s}"
            )
            if self.compensation_errors:
                message += (
                    f"; compensation failed for {', '.join(self.compensation_errors)}"
                )
            self._message = message
        return message

    # ``args``, ``str`` and ``repr`` read as if the message had been passed to
    # ``Exception.__init__``. ``args`` can be replaced, as on any exception;
    # once it has been, they read what was put there.
    @property
    def args(self) -> tuple[Any, ...]:
        given: tuple[Any, ...] = _EXCEPTION_ARGS.__get__(self)
        return given if given else (self._text(),)

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        _EXCEPTION_ARGS.__set__(self, value)

    def __str__(self) -> str:
        return super().__str__() if _EXCEPTION_ARGS.__get__(self) else self._text()

    def __repr__(self) -> str:
        args = self.args
        shown = repr(args[0]) if len(args) == 1 else repr(args)[1:-1]
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[object, ...]:  # keyword-only __init__ needs help to pickle
        return (
            _rebuild_saga_failed,
            (
                self.saga_id,
                self.saga_name,
                self.status,
                self.failed_step,
                self.error,
                self.compensation_errors,
                self.branch_errors,
            ),
        )


def _rebuild_saga_failed(
    saga_id: str,
    saga_name: str,
    status: SagaStatus,
    failed_step: str,
    error: BaseException,
    compensation_errors: dict[str, BaseException],
    branch_errors: dict[str, BaseException] | None = None,
) -> SagaFailed:
    return SagaFailed(
        saga_id=saga_id,
        saga_name=saga_name,
        status=status,
        failed_step=failed_step,
        error=error,
        compensation_errors=compensation_errors,
        branch_errors=branch_errors,
    )


_new_exception = BaseException.__new__


def saga_failed(
    saga_id: str,
    saga_name: str,
    status: SagaStatus,
    failed_step: str,
    error: BaseException,
    compensation_errors: Mapping[str, BaseException] | None = None,
    branch_errors: Mapping[str, BaseException] | None = None,
) -> SagaFailed:
    """``SagaFailed(saga_id=..., ...)`` as a run raises it: the object its
    ``__init__`` makes (the same fields in the same order, no ``args``), made
    without the call by keywords, which builds and parses a dict of seven
    arguments — about 0.3 µs of a failed saga's 20 on CPython 3.11
    (benchmarks/README.md, twentieth pass). ``test_S7_...`` in
    tests/test_saga_failed_error.py holds the two to the same object."""
    failed: SagaFailed = _new_exception(SagaFailed)
    failed.__dict__ = {
        "saga_id": saga_id,
        "saga_name": saga_name,
        "status": status,
        "failed_step": failed_step,
        "error": error,
        "compensation_errors": dict(compensation_errors) if compensation_errors else {},
        "branch_errors": dict(branch_errors) if branch_errors else {},
        "_message": None,
    }
    return failed


class ParallelWriteConflict(SagaError):
    """Two members of a ``Parallel`` group changed the same context field.

    Each member works on its own copy of the context and its changes are
    written into the saga's context when it completes; a second member
    changing a field a sibling already changed would erase the sibling's
    write, so the group fails instead (the member's act completed: it is
    compensated). Give each member its own fields.
    """

    def __init__(self, field: str, first: str, second: str) -> None:
        self.field = field
        self.first = first
        self.second = second
        super().__init__(
            f"steps {first!r} and {second!r} of a Parallel group both changed the context "
            f"field {field!r}; members of a group must write disjoint fields"
        )
