"""Listeners: optional hooks on every transition, and a ready stdlib-logging one.

A listener is any object; it implements the hooks it cares about (the
``SagaListener`` base gives no-op defaults and type hints). Hooks are plain
synchronous calls on the hot path — keep them fast and hand slow work to a
queue. A hook that raises is logged and ignored: observability never breaks a
saga. With no listener, nothing is called at all.

Hooks never receive the context: contexts may carry secrets, and logging them
must be a deliberate choice of the application.

Pairs a tracer can rely on (hooks run synchronously in the task that makes the
transition, so a listener may set a context variable in the first hook of a
pair and reset it in the second):

* every ``saga_started`` is followed by exactly one ``saga_finished`` (a final
  status) or ``saga_interrupted`` (the run stopped without one) — unless a
  ``BaseException`` such as ``KeyboardInterrupt`` takes the process down —
  in the same task for ``run``, ``resume`` and recovery (a
  ``transaction`` reports both from the task that enters and leaves it);
* every ``step_call_started`` is followed by one ``step_call_finished`` for
  the same ``StepCall``, in the same task, with nothing awaited in between
  but the step's own ``act``/``compensate``.

What the hooks say against the journal (the truth, S13): a hook that starts
a call (``step_started``, ``compensation_started``, ``step_call_started``)
is told once the call's STARTED record is durable — a call the store
refused is never made, nor told. An outcome (``step_completed``,
``step_failed``, ``fallback_taken``, ``compensation_completed``/``failed``)
is told as it happens in this process; its row reaches the journal with the
run's next write. A run the journal stops (``saga_interrupted``) may have
told an outcome the journal never got: its resumption, which redoes what the
journal does not hold, tells it again.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal

from .errors import ContextSerializationError, SagaAlreadyExists, SagaInterrupted, described
from .log_lines import library_logger, one_line
from .shielding import running_task
from .status import SagaStatus
from .step import StepInfo

__all__ = [
    "HOOK_NAMES", "Hooks", "LoggingListener", "SagaListener", "StepCall", "listener_tuple",
    "refused_at_creation", "status_if_landed",
]

_log = library_logger("fallback_saga")


class StepCall(StepInfo):
    """One call of a step's ``act`` or ``compensate``, as the ``step_call_*`` hooks
    see it: what ``current_step()`` tells the step (saga id and name, step,
    action, attempt, ``idempotency_key``) plus the ``branch`` that runs —
    ``"primary"``, or ``"fallback"`` for a ``Fallback``'s fallback. The same
    object is passed to ``step_call_started`` and ``step_call_finished``."""

    __slots__ = ("_cancelled", "_interrupted", "branch")

    # Set (to True) only by a call that was interrupted, or cancelled in
    # flight: left unset by every other, so that a call that answers pays
    # nothing for them (see interrupted, cancelled).
    _interrupted: bool
    _cancelled: bool

    def __init__(
        self,
        saga_id: str,
        saga_name: str,
        step: str,
        action: Literal["act", "compensate"],
        attempt: int,
        branch: str,
    ) -> None:
        super().__init__(saga_id, saga_name, step, action, attempt)
        self.branch = branch

    @property
    def interrupted(self) -> bool:
        """For ``step_call_finished``: the call did not end — neither
        answered nor failed — and the journal keeps its ``STARTED`` as its
        last word on it: a ``KeyboardInterrupt``, ``SystemExit`` or
        ``GeneratorExit`` came out of it, or the event loop's shutdown
        cancelled the unwinding in its ``compensate`` (the error is then a
        ``CancelledError``, which a ``compensate`` raising one itself — a
        failed call, journaled FAILED — is not). Recovery calls it again;
        the run's ``saga_interrupted`` says the saga stopped."""
        try:
            return self._interrupted
        except AttributeError:  # never set: the call answered, or failed
            return False

    @property
    def cancelled(self) -> bool:
        """For ``step_call_finished``: a ``Parallel`` member's ``act`` (or the
        act of a step of a child saga such a member runs) cancelled while it
        ran — a sibling failed, or the saga's task was cancelled — or that
        let a ``CancelledError`` out itself. Not a failure: the journal holds
        it ``CANCELLED`` (its effect is uncertain) and the step is
        compensated; no ``step_failed`` is told of it. (A plain step's act
        cancelled in flight is journaled ``FAILED``: that one has failed.)"""
        try:
            return self._cancelled
        except AttributeError:  # never set: the call answered, failed or was interrupted
            return False

    def __repr__(self) -> str:
        return (
            f"StepCall(saga_id={self.saga_id!r}, step={self.step!r}, "
            f"branch={self.branch!r}, action={self.action!r}, attempt={self.attempt})"
        )


class SagaListener:
    """No-op base for listeners; override the hooks you need."""

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        """The saga began (``run``/``transaction``) or was resumed."""

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        """The saga reached a final status. ``error`` is what ended it: None
        when COMPLETED, and for a ``transaction()`` whose block was left
        early without one (a ``break``)."""

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        """The run stopped without reaching a final status: the journal could not
        be written (``SagaInterrupted``), the lease was lost (``LeaseLost``) or
        the worker handed the saga off, or a cancellation's unwinding could not
        be journaled. ``status`` is the last status the journal is known to
        hold (``None``: nothing was confirmed journaled); ``error`` is what the
        caller gets. When that last write is in doubt (it may have landed
        unseen), the journal may hold another status: ``status_if_landed(status,
        error)`` says which — report both, not ``status`` alone. The saga is
        left for recovery — unless the store refused to create it
        (``refused_at_creation(status, error)``: its id is another saga's, or
        it cannot hold the context; a durable store says so only at the run's
        first write): then nothing of this run was journaled, and nothing is
        left."""

    def saga_resumed(self, saga_id: str, saga_name: str) -> None:
        """The run that just started (``saga_started``, called right before) is a
        resumption of a saga from its journal (``Saga.resume``, recovery)."""

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's ``act`` is about to be called (``attempt`` counts retries from 1):
        its STARTED record is durable. Also told, right before ``step_failed``,
        for a try its circuit breaker rejected or that was cancelled in its
        write-ahead; never for a try whose STARTED the store refused (that
        act is not called: the run stops, ``saga_interrupted``), and then no
        ``step_failed`` is told of it either."""

    def step_completed(self, saga_id: str, step: str) -> None:
        """A step's ``act`` returned; the step is on the compensation stack."""

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        """A step's ``act`` raised (or its circuit was open); the context was restored.

        Not told for a ``Parallel`` member's act cancelled while it ran
        (``StepCall.cancelled``): the journal holds it ``CANCELLED``, not
        failed, and the ``compensation_*`` hooks follow as it is undone.
        Nor for a call a ``KeyboardInterrupt``, ``SystemExit`` or
        ``GeneratorExit`` interrupted: the journal keeps that call's STARTED
        as its last word (its effect may have landed), and the run's
        ``saga_interrupted``, with that exception, tells that it stopped."""

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        """``primary`` failed with ``error`` and ``fallback`` runs instead."""

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's ``compensate`` is about to be called."""

    def compensation_completed(self, saga_id: str, step: str) -> None:
        """A step's ``compensate`` returned."""

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        """A step's ``compensate`` failed on every attempt; unwinding goes on."""

    def step_call_started(self, call: StepCall) -> None:
        """A step's ``act`` or ``compensate`` is called now (each attempt; a call
        a circuit breaker rejects is never made): the detailed companion of
        ``step_started``/``compensation_started``, called after them and
        after the call's journal write, right before the call, in the task
        that makes it."""

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        """The call ``step_call_started`` announced returned (``error`` is None)
        or raised ``error`` — for every attempt, a retried one included.
        Called in the same task, before ``step_completed``/``step_failed``
        or their compensation counterparts."""

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        """``recover`` or a ``RecoveryWorker`` is done with a saga it claimed.
        ``outcome``: ``completed``, ``compensated`` or ``failed`` (the status
        the journal now holds), ``interrupted`` (the journal failed; left for
        a later pass), ``skipped`` (unknown saga name, corrupt record, changed
        definition, store error), ``lost`` (another worker took it over),
        ``handed_off`` (the worker shut down, or a ``recover`` pass was
        cancelled before the saga finished) or ``deferred`` (a child saga
        whose parent is in flight: the parent's run drives it). ``reason``
        says why for the last five. ``saga_name`` is None when the record
        could not be read.
        Reported to the listeners given to ``recover``/``RecoveryWorker``
        and to those of the saga that resumed it (each listener once)."""

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        """A circuit breaker moved between CLOSED, OPEN and HALF_OPEN."""

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        """A breaker's shared ``state_store`` raised; the breaker goes on with its
        local state. Reported at most once per ``sync_interval`` per breaker."""


def refused_at_creation(status: SagaStatus | None, error: BaseException | None) -> bool:
    """For ``saga_interrupted(status, error)``: the store refused to create
    the saga (``SagaAlreadyExists``: the id is another saga's, which this
    run never touched; ``ContextSerializationError``), so the run left
    nothing in the journal — no saga to recover, no step run."""
    return status is None and isinstance(error, SagaAlreadyExists | ContextSerializationError)


def status_if_landed(status: SagaStatus | None, error: BaseException | None) -> SagaStatus | None:
    """For ``saga_interrupted(status, error)``: the status the journal holds
    instead of ``status`` if the run's last write, reported failed, landed
    unseen (``SagaInterrupted.in_doubt``; for a cancelled run, the
    ``SagaInterrupted`` that is its ``CancelledError``'s cause) — the saga
    may be final already.
    None when the journal holds ``status`` either way."""
    if isinstance(error, asyncio.CancelledError) and isinstance(error.__cause__, SagaInterrupted):
        # A cancelled run whose journal failed meanwhile: its caller gets the
        # cancellation, and the journal's failure is its cause (see
        # UnwindingRun._announce_finish).
        error = error.__cause__
    if not isinstance(error, SagaInterrupted) or not error.in_doubt:
        return None
    landed = error.status_if_landed or (SagaStatus.RUNNING if status is None else status)
    return None if landed is status else landed


HOOK_NAMES: tuple[str, ...] = (
    "saga_started",
    "saga_finished",
    "saga_interrupted",
    "saga_resumed",
    "step_started",
    "step_completed",
    "step_failed",
    "fallback_taken",
    "compensation_started",
    "compensation_completed",
    "compensation_failed",
    "step_call_started",
    "step_call_finished",
    "recovery_outcome",
    "breaker_state_changed",
    "breaker_state_store_failed",
)

Hook = Callable[..., Any]


def listener_tuple(listeners: Iterable[object]) -> tuple[object, ...]:
    """``listeners`` as given to a saga, a breaker or recovery, checked (see
    ``collect_hooks``); one listener not in a list is refused by name. A
    listener listed twice is kept once (in its first place): each transition
    is told to each listener once."""
    if not isinstance(listeners, Iterable) or any(
        hasattr(listeners, name) for name in HOOK_NAMES
    ):
        kind = listeners.__name__ if isinstance(listeners, type) else type(listeners).__name__
        raise TypeError(
            f"listeners takes a list of listener instances, e.g. listeners=[{kind}()], "
            f"got a {kind}"
        )
    kept: dict[int, object] = {}  # by identity: a listener need not be hashable
    for index, listener in enumerate(listeners):
        # An object with no hook at all (a number, a logger, a function) would
        # be kept and never called: the listening it was meant for silently
        # missing. A class is refused by collect_hooks, naming it.
        if not isinstance(listener, type) and not any(
            hasattr(listener, name) for name in HOOK_NAMES
        ):
            raise TypeError(
                f"listeners[{index}] is {listener!r} ({type(listener).__name__}), which has "
                f"none of the listener hooks ({', '.join(HOOK_NAMES[:3])}, ...): pass an "
                f"instance of a SagaListener subclass, e.g. listeners=[LoggingListener()]"
            )
        if not isinstance(listener, type):
            _check_hook_names(type(listener))
        kept.setdefault(id(listener), listener)
    return tuple(kept.values())


# Listener classes whose method names were looked at (_check_hook_names).
_NAMES_CHECKED: weakref.WeakSet[type] = weakref.WeakSet()


def _check_hook_names(cls: type) -> None:
    """A method of a listener class named as another library names its
    callbacks (``on_saga_finished``) is never called: refused, naming the
    hook. One a letter or two off a hook (``compensation_faild``) probably
    meant it: logged once a class. (A name that extends a hook's,
    ``saga_started_at``, is the listener's own, and left alone.)"""
    if cls in _NAMES_CHECKED:
        return
    for name in dir(cls):
        if name.startswith("_") or name in HOOK_NAMES or name in _BASE_NAMES:
            continue
        if not callable(inspect.getattr_static(cls, name, None)):
            continue
        bare = name.removeprefix("on_")
        if bare in HOOK_NAMES:
            raise TypeError(
                f"listener {cls.__qualname__}.{name} is never called: the hook is named "
                f"{bare!r} (no 'on_'); rename the method"
            )
        close = difflib.get_close_matches(bare, HOOK_NAMES, n=1, cutoff=0.85)
        if close and not bare.startswith(close[0]):
            _log.warning(
                "listener %s.%s is not one of the hooks, so it is never called: did you mean %r?",
                cls.__qualname__, name, close[0],
            )
    _NAMES_CHECKED.add(cls)


# What every class has (object's): not a listener's own (the hooks are skipped by name).
_BASE_NAMES: frozenset[str] = frozenset(dir(object))


def collect_hooks(listeners: Iterable[object], name: str) -> tuple[Hook, ...]:
    """The callables to notify for hook ``name``: overridden or duck-typed ones only,
    so listeners that do not care about a hook cost nothing.

    What would be silently ignored is refused: a listener class (its hooks
    would be looked up on ``type``, and none found), an ``async def`` hook
    (called, never awaited: it would do nothing) and a hook that ``yield``s."""
    base = getattr(SagaListener, name)
    hooks: list[Hook] = []
    for listener in listeners:
        if isinstance(listener, type):
            raise TypeError(
                f"listeners take instances: pass {listener.__name__}(), not the class "
                f"{listener.__name__}"
            )
        method = getattr(type(listener), name, None)
        if method is None or method is base:
            continue
        hook = getattr(listener, name)
        if inspect.iscoroutinefunction(hook):
            raise TypeError(
                f"listener hook {type(listener).__name__}.{name} is async; hooks are "
                f"plain synchronous calls on the saga's path (declare `def {name}`, and "
                f"hand slow work to a queue or a task)"
            )
        if inspect.isgeneratorfunction(hook) or inspect.isasyncgenfunction(hook):
            # Called, its body never started (a generator object, dropped):
            # as silent as an async hook.
            raise TypeError(
                f"listener hook {type(listener).__name__}.{name} is a generator function "
                f"(it yields), so calling it runs nothing; hooks are plain synchronous "
                f"calls: declare `def {name}` without `yield`"
            )
        _check_hook_parameters(listener, name, hook, base)
        hooks.append(hook)
    return tuple(hooks)


def _check_hook_parameters(listener: object, name: str, hook: Hook, base: Hook) -> None:
    """A hook is called with the base hook's arguments, by position: one that
    cannot take them (declared with none, keyword-only, one too many) would
    raise at every call — logged, ignored, and the listener hears nothing.
    Refused when the listener is given, naming what it is called with."""
    expected = list(inspect.signature(base).parameters)[1:]  # without self
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return
    try:
        signature.bind(*expected)
    except TypeError as why:
        raise TypeError(
            f"listener hook {type(listener).__name__}.{name}{signature} cannot be called "
            f"as {name}({', '.join(expected)}): {why}"
        ) from None


def emit(hooks: tuple[Hook, ...], *args: Any) -> None:
    """Call every hook; a hook that raises is logged and never propagates —
    a ``CancelledError`` too, unless the task calling it was asked to stop."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            _log.exception("listener hook %r raised; ignored", getattr(hook, "__qualname__", hook))
        except asyncio.CancelledError:
            # A hook is a plain function: asyncio delivers a cancellation only
            # at an await, so its CancelledError (a cancelled future's result
            # read, one caught and raised again) cancels nothing, and would
            # stop a saga nobody stopped, or cut its unwinding short. A task
            # asked to stop (by the caller, or by the hook itself) is another
            # matter: that cancellation is the run's to honour (S8).
            if running_task().cancelling():
                raise
            _log.exception("listener hook %r raised CancelledError, though nothing cancelled "
                           "the saga's task; ignored", getattr(hook, "__qualname__", hook))


class Hooks:
    """Listener callables per hook; an empty tuple means nobody listens."""

    __slots__ = (*HOOK_NAMES, "listeners", "silent")

    def __init__(self, listeners: tuple[object, ...]) -> None:
        self.listeners = listeners
        for name in HOOK_NAMES:
            setattr(self, name, collect_hooks(listeners, name))
        # Nobody listens to anything: a run need not look for a hook at all.
        self.silent = not any(getattr(self, name) for name in HOOK_NAMES)

    saga_started: tuple[Hook, ...]
    saga_finished: tuple[Hook, ...]
    step_started: tuple[Hook, ...]
    step_completed: tuple[Hook, ...]
    step_failed: tuple[Hook, ...]
    fallback_taken: tuple[Hook, ...]
    compensation_started: tuple[Hook, ...]
    compensation_completed: tuple[Hook, ...]
    compensation_failed: tuple[Hook, ...]
    saga_interrupted: tuple[Hook, ...]
    saga_resumed: tuple[Hook, ...]
    step_call_started: tuple[Hook, ...]
    step_call_finished: tuple[Hook, ...]
    breaker_state_changed: tuple[Hook, ...]


class LoggingListener(SagaListener):
    """Logs every transition through stdlib ``logging`` (logger ``fallback_saga``).

    Step errors are logged with their type and message, never the context.
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        # Checked here: a wrong one fails in every hook, each failure logged
        # and ignored (a listener never breaks a saga), so nothing is logged
        # as asked and nothing says why but a traceback per transition.
        if logger is not None and not (
            callable(getattr(logger, "isEnabledFor", None))
            and callable(getattr(logger, "log", None))
        ):
            hint = f"logging.getLogger({logger!r})" if isinstance(logger, str) else "a logger"
            raise TypeError(
                f"logger must be a logging.Logger (or None: the 'fallback_saga' logger), "
                f"got {logger!r}: pass {hint}"
            )
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise TypeError(
                f"level must be a logging level number such as logging.INFO, got {level!r}"
            )
        self.logger = logger or _log
        self.level = level

    def _write(self, level: int, message: str, *args: object) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, message, *map(one_line, args))

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        self._write(self.level, "saga %s %s started", saga_name, saga_id)

    def saga_finished(
        self, saga_id: str, saga_name: str, status: SagaStatus, error: BaseException | None
    ) -> None:
        level = self.level if status is SagaStatus.COMPLETED else logging.WARNING
        if status is SagaStatus.FAILED:
            level = logging.ERROR
        if error is None:
            self._write(level, "saga %s %s finished: %s", saga_name, saga_id, status.value)
        else:
            self._write(level, "saga %s %s finished: %s (%s: %s)", saga_name, saga_id,
                      status.value, type(error).__name__, error)

    def saga_interrupted(
        self, saga_id: str, saga_name: str, status: SagaStatus | None, error: BaseException | None
    ) -> None:
        if refused_at_creation(status, error):
            self._write(logging.WARNING, "saga %s %s refused by the store before any step ran "
                        "(%s: %s); nothing was journaled", saga_name, saga_id,
                        type(error).__name__, error)
            return
        held = "nothing" if status is None else status.value
        landed = status_if_landed(status, error)
        if landed is not None:
            held += f" (or {landed.value}, if its last write landed unseen)"
        reason = "" if error is None else f" ({described(error)})"
        self._write(logging.WARNING, "saga %s %s stopped without a final status, left for "
                    "recovery; the journal says %s%s", saga_name, saga_id, held, reason)

    def saga_resumed(self, saga_id: str, saga_name: str) -> None:
        self._write(self.level, "saga %s %s resumed from its journal", saga_name, saga_id)

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        self._write(logging.DEBUG, "saga %s step %s started (attempt %d)", saga_id, step, attempt)

    def step_completed(self, saga_id: str, step: str) -> None:
        self._write(self.level, "saga %s step %s completed", saga_id, step)

    def step_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self._write(logging.WARNING, "saga %s step %s failed: %s: %s", saga_id, step,
                  type(error).__name__, error)

    def fallback_taken(
        self, saga_id: str, primary: str, fallback: str, error: BaseException
    ) -> None:
        self._write(logging.WARNING, "saga %s: %s failed (%s), falling back to %s", saga_id,
                  primary, type(error).__name__, fallback)

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        self._write(self.level, "saga %s compensating %s (attempt %d)", saga_id, step, attempt)

    def compensation_completed(self, saga_id: str, step: str) -> None:
        self._write(self.level, "saga %s compensated %s", saga_id, step)

    def compensation_failed(self, saga_id: str, step: str, error: BaseException) -> None:
        self._write(logging.ERROR, "saga %s compensation of %s FAILED: %s: %s", saga_id, step,
                  type(error).__name__, error)

    def step_call_finished(self, call: StepCall, error: BaseException | None) -> None:
        # A failed act is logged by step_failed, the last failed compensate by
        # compensation_failed; the compensate attempts that are retried (an
        # Exception: nothing else is retried), here. A call a crash or the
        # loop's shutdown interrupted did not fail: its STARTED is the
        # journal's last word on it, and saga_interrupted says the run stopped.
        # A group member's act cancelled in flight did not fail either: it is
        # journaled CANCELLED, and compensated (no step_failed tells it).
        if error is not None and call.cancelled:
            self._write(self.level, "saga %s step %s cancelled while its act ran (%s); its "
                        "effect is uncertain: it is compensated", call.saga_id, call.step,
                        type(error).__name__)
            return
        if isinstance(error, Exception) and call.action == "compensate" and (
            not call.interrupted  # a driver's error for the shutdown's cancellation
        ):
            self._write(logging.WARNING, "saga %s compensate %s attempt %d failed: %s: %s",
                        call.saga_id, call.step, call.attempt, type(error).__name__, error)

    def recovery_outcome(
        self, saga_id: str, saga_name: str | None, outcome: str, reason: str | None
    ) -> None:
        level = self.level if outcome in (
            "completed", "compensated", "handed_off", "deferred") else (
            logging.ERROR if outcome == "failed" else logging.WARNING)
        self._write(level, "recovery: saga %s %s %s%s", saga_name or "?", saga_id, outcome,
                    "" if reason is None else f" ({reason})")

    def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        level = logging.WARNING if new == "open" else self.level
        self._write(level, "circuit breaker %s: %s -> %s", breaker, old, new)

    def breaker_state_store_failed(self, breaker: str, error: BaseException) -> None:
        self._write(logging.WARNING, "circuit breaker %s: shared state store failed (%s: %s); "
                    "working on local state", breaker, type(error).__name__, error)
