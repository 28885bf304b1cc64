"""Steps: the ``Step`` protocol, the ``SagaStepHandler`` base, results and responses."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from contextvars import ContextVar
from typing import (
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    dataclass_transform,
    runtime_checkable,
)

__all__ = [
    "Response",
    "SagaStepHandler",
    "SagaStepResult",
    "Step",
    "StepCursor",
    "StepInfo",
    "current_step",
    "step_name",
]

ContextT = TypeVar("ContextT")
ContextT_contra = TypeVar("ContextT_contra", contravariant=True)
ResponseT = TypeVar("ResponseT")


@dataclass_transform()
class Response:
    """Base for step responses.

    A subclass declared with annotations only is made a keyword-constructible,
    comparable dataclass automatically — no decorator needed::

        class ReserveInventoryResponse(Response):
            reservation_id: str

    ``class R(Response, frozen=True)`` makes it immutable (and hashable); an
    explicit ``@dataclasses.dataclass(...)`` decorator works too.
    """

    def __init_subclass__(cls, *, frozen: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" in cls.__dict__:
            return
        mutable_base = any(
            "__dataclass_params__" in base.__dict__
            and not base.__dict__["__dataclass_params__"].frozen
            for base in cls.__mro__[1:]
        )
        if mutable_base and not frozen:  # dataclasses forbids mixing; follow the base
            dataclasses.dataclass(cls)
            return
        # Generated as frozen, so that __init__ assigns with object.__setattr__:
        # then an explicit @dataclass(frozen=True) applied on top (which keeps
        # our __init__) still works. Unless asked for ``frozen=True`` as a class
        # keyword, the class is made mutable again.
        dataclasses.dataclass(cls, frozen=True)
        if not frozen:
            del cls.__setattr__, cls.__delattr__
            cls.__hash__ = None  # type: ignore[assignment]  # mutable, comparable: unhashable
            cls.__dataclass_params__.frozen = False  # type: ignore[attr-defined]


@runtime_checkable
class Step(Protocol[ContextT_contra]):
    """What the executor calls: ``act`` does the work, ``compensate`` undoes it.

    ``act`` may return anything (usually a ``SagaStepResult``); ``compensate``
    must tolerate being called for an ``act`` whose effect is uncertain, and
    be idempotent — after a crash it may run again.
    """

    async def act(self, context: ContextT_contra, /) -> Any: ...

    async def compensate(self, context: ContextT_contra, /) -> None: ...


class SagaStepResult(NamedTuple, Generic[ContextT, ResponseT]):
    """What one step produced, as streamed by ``Saga.transaction``. Immutable.

    (A named tuple: one is made for every step, and it is the cheapest
    immutable record Python has.)
    """

    response: ResponseT
    step_name: str
    saga_id: str


_new_tuple = tuple.__new__


class SagaStepHandler(ABC, Generic[ContextT, ResponseT]):
    """Convenient base for steps bound to a context type and a response type.

    The saga checks at class creation that the context type is one the saga
    provides. Optional class attributes:

    * ``name`` — the step's name in the journal (default: the class name);
    * ``timeout`` — seconds allowed for each ``act``/``compensate`` call;
      exceeding it fails the call with ``TimeoutError``.
    """

    name: ClassVar[str | None] = None
    timeout: ClassVar[float | None] = None

    @abstractmethod
    async def act(self, context: ContextT, /) -> SagaStepResult[ContextT, ResponseT] | ResponseT:
        """Do the step's work, mutating ``context``; return ``_generate_step_result(...)``.

        Returning the response itself works too (the saga wraps it in a
        ``SagaStepResult``), so an override may narrow the return type to
        ``SagaStepResult[C, R]``, to ``R``, or, for a ``SagaStepHandler[C, None]``,
        to ``None`` (``async def act(self, context: C) -> None``).
        """

    async def compensate(self, context: ContextT, /) -> None:
        """Undo ``act``. The default does nothing (a step with no effect to undo)."""

    def _generate_step_result(self, response: ResponseT) -> SagaStepResult[ContextT, ResponseT]:
        cursor = _CURSOR.get()
        if cursor is None or not cursor.active:
            return SagaStepResult(response=response, step_name=step_name(self), saga_id="")
        # The named tuple made directly: its generated __new__ is a Python call.
        return _new_tuple(SagaStepResult, (response, cursor.step, cursor.saga_id))


def step_name(step: object) -> str:
    """A step's journal name: its ``name`` attribute if set, else its class name."""
    explicit = getattr(step, "name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    cls = step if isinstance(step, type) else type(step)
    return cls.__name__


class StepInfo:
    """Facts about the step call that is running now (see ``current_step``)."""

    __slots__ = ("action", "attempt", "saga_id", "saga_name", "step")

    def __init__(
        self,
        saga_id: str,
        saga_name: str,
        step: str,
        action: Literal["act", "compensate"],
        attempt: int,
    ) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = step
        self.action = action
        self.attempt = attempt

    @property
    def idempotency_key(self) -> str:
        """Stable for this saga, step and action: the same on every retry and
        after a crash, so a participant can deduplicate (``saga:step`` for
        ``act``, ``saga:step:compensate`` for ``compensate``)."""
        if self.action == "act":
            return f"{self.saga_id}:{self.step}"
        return f"{self.saga_id}:{self.step}:compensate"

    def __repr__(self) -> str:
        return (
            f"StepInfo(saga_id={self.saga_id!r}, step={self.step!r}, "
            f"action={self.action!r}, attempt={self.attempt})"
        )


class StepCursor:
    """Where one saga run is: which step, which action, which attempt.

    The executor sets one cursor per run in a context variable and moves it
    from step to step (cheaper than a new object per step); ``current_step``
    reads it. ``active`` is true only while a step's act/compensate runs.
    """

    __slots__ = ("action", "active", "attempt", "saga_id", "saga_name", "step")

    def __init__(self, saga_id: str, saga_name: str) -> None:
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.step = ""
        self.action: Literal["act", "compensate"] = "act"
        self.attempt = 0
        self.active = False


_CURSOR: ContextVar[StepCursor | None] = ContextVar("fallback_saga_cursor", default=None)


def current_step() -> StepInfo:
    """The step call running in this task: saga id, step name, attempt, idempotency key.

    Raises ``LookupError`` outside a step's ``act``/``compensate``. Call it
    from the step itself (not from a task the step spawned and left running):
    the answer describes the moment of the call.
    """
    cursor = _CURSOR.get()
    if cursor is None or not cursor.active:
        raise LookupError("current_step() is only available inside a step's act or compensate")
    return StepInfo(cursor.saga_id, cursor.saga_name, cursor.step, cursor.action, cursor.attempt)
