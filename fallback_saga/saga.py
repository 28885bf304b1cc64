"""``Saga``: declare the steps once; run them as often as you like."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from .child_ids import saga_id_refused_for_children
from .compact_journal import Shape, plan_shape
from .definition import (
    BranchSpec,
    FallbackSpec,
    GroupSpec,
    ItemSpec,
    SagaDefinition,
    build_definition,
    check_retry,
    check_saga_name,
    check_timeout,
    context_type_of,
    unresolved_context_name,
)
from .errors import SagaAlreadyExists
from .events import Hooks, listener_tuple
from .executor import Execution, SagaResult
from .journal import DEFAULT_JOURNAL_RETRY, DEFAULT_JOURNAL_TIMEOUT
from .plan import Branch, FallbackPlan, GroupPlan, PlanItem
from .resumable import ResumableSaga
from .retry import DEFAULT_COMPENSATION_RETRY, RetryPolicy
from .run_settings import RunSettings
from .step import Step
from .store.base import Lease, SagaStore, check_store, is_live_journal
from .store.memory import MemorySagaStore
from .transaction import SagaTransaction

# SagaTransaction lives in transaction.py; still importable from here, where it was.
__all__ = ["Saga", "SagaTransaction"]

ContextT = TypeVar("ContextT")

StepFactory = Callable[[type], Any]


class Saga(ResumableSaga[ContextT]):
    """Subclass with ``steps = [...]``: step classes, step instances or ``Fallback``\\ s.

    The list (a tuple is accepted too; type checkers expect a list) is
    validated when the class is created (``SagaDefinitionError``).
    An instance binds the definition to its collaborators::

        saga = OrderSaga(store=SQLiteSagaStore("sagas.db"), step_factory=container.get)
        result = await saga.run(OrderContext(order_id="42"))

    * ``store`` — where every transition is journaled (default: a fresh
      ``MemorySagaStore`` per saga instance, available as ``saga.store``);
    * ``step_factory`` — ``factory(step_class) -> step`` builds each step
      class once, when the saga instance is created (dependency injection;
      default ``cls()``); step instances in ``steps`` are used as given;
    * ``compensation_retry`` — the ``RetryPolicy`` of every ``compensate``
      (default: 3 attempts, 0.1 s doubling, jittered, capped at 5 s);
    * ``listeners`` — objects with hooks (see ``SagaListener``);
    * ``journal_retry`` — the ``RetryPolicy`` of every journal write to a
      durable store (default: 6 attempts over about 1.5 s). A write the store
      still refuses then stops the run with ``SagaInterrupted``: no step or
      compensation runs unless its record is durable, and the saga is left
      for recovery;
    * ``journal_timeout`` — seconds all the tries of one journal write may
      take, waits included (default 10; ``None``: no limit): a store that
      does not answer at all stops the run within it, like one that refuses.

    One instance may run many sagas concurrently; steps should keep no
    per-run state on ``self`` (the context is where run state lives).
    """

    # Step classes, step instances, Fallbacks and Parallel groups, checked when
    # the class is created (S11). Left list[Any] on purpose: a class variable's
    # type is invariant, so a narrower list refuses ``steps = made`` (a list
    # built elsewhere, of step classes) and a Sequence refuses a subclass's
    # ``steps: ClassVar[list[Any]]`` under pyright, both correct code. A tuple
    # is accepted at runtime all the same (build_definition takes a sequence).
    steps: ClassVar[list[Any]]
    definition: ClassVar[SagaDefinition]
    # The saga's name in the journal: recovery finds the class to resume a saga
    # with by it, so a renamed class keeps its sagas in flight by keeping it.
    # Declared in a class body (checked at class creation, inherited like any
    # class attribute), or the class name; always a str once the class exists.
    name: ClassVar[str]
    _declared_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls._declared_name = check_saga_name(cls, cls.__dict__["name"])
        cls.name = cls._declared_name or cls.__name__
        steps = getattr(cls, "steps", None)
        if steps is None:
            return  # an abstract intermediate class; its subclasses declare steps
        cls.definition = build_definition(cls, steps, cls.name, base=Saga)

    def __init__(
        self,
        *,
        store: SagaStore | None = None,
        step_factory: StepFactory | None = None,
        compensation_retry: RetryPolicy | None = None,
        listeners: Iterable[object] = (),
        journal_retry: RetryPolicy | None = None,
        journal_timeout: float | None = DEFAULT_JOURNAL_TIMEOUT,
    ) -> None:
        definition = getattr(type(self), "definition", None)
        if definition is None:
            raise TypeError(f"{type(self).__name__} declares no steps; subclass Saga with steps")
        if definition.context_type is None:
            definition = _bound_late(type(self), definition)
        if step_factory is not None and not callable(step_factory):
            raise TypeError(
                f"step_factory must be a callable factory(step_class) -> step, "
                f"got a {type(step_factory).__name__}"
            )
        if compensation_retry is not None and not isinstance(compensation_retry, RetryPolicy):
            raise TypeError(f"compensation_retry must be a RetryPolicy, got {compensation_retry!r}")
        if journal_retry is not None and not isinstance(journal_retry, RetryPolicy):
            raise TypeError(f"journal_retry must be a RetryPolicy, got {journal_retry!r}")
        self.journal_retry = journal_retry or DEFAULT_JOURNAL_RETRY
        if journal_timeout is not None and not (
            isinstance(journal_timeout, int | float)
            and not isinstance(journal_timeout, bool)
            and 0 < journal_timeout < float("inf")
        ):
            raise ValueError(
                f"journal_timeout must be a finite number of seconds > 0, or None, "
                f"got {journal_timeout!r}"
            )
        self.journal_timeout = journal_timeout
        if store is not None:
            check_store(store)
        self.store: SagaStore = store if store is not None else MemorySagaStore()
        self._live_store = is_live_journal(self.store)
        if definition.context_type is None and not self._live_store:
            raise TypeError(context_class_missing(type(self), self.store))
        self.compensation_retry = compensation_retry or DEFAULT_COMPENSATION_RETRY
        self.listeners = listener_tuple(listeners)
        self._hooks = Hooks(self.listeners)
        factory = step_factory or _default_factory(type(self))
        self._plan: tuple[PlanItem, ...] = tuple(
            _plan_item(spec, factory) for spec in definition.items
        )
        _refuse_children_elsewhere(type(self).__name__, self._plan, self.store)
        # Positions (groups count each member) -> the plan: for resuming.
        self._members: tuple[Branch | FallbackPlan, ...] = tuple(
            member
            for item in self._plan
            for member in (item.members if isinstance(item, GroupPlan) else (item,))
        )
        self._item_at: tuple[int, ...] = tuple(
            index
            for index, item in enumerate(self._plan)
            for _ in (item.members if isinstance(item, GroupPlan) else (item,))
        )
        self._groups: tuple[range, ...] = tuple(
            item.positions for item in self._plan if isinstance(item, GroupPlan)
        )
        self._context_type = definition.context_type
        # The step names its deepest child saga appends to its id (child_ids).
        self._child_id_path = definition.child_id_path
        self._settings = RunSettings(
            saga_name=definition.saga_name,
            fingerprint=definition.fingerprint,
            store=self.store,
            hooks=self._hooks,
            compensation_retry=self.compensation_retry,
            live=self._live_store,
            journal_retry=self.journal_retry,
            journal_timeout=self.journal_timeout,
        )
        # The commonest saga takes the lean path (Execution.run_plain): the
        # default store, nobody listening, every step plain.
        self._runs_plain = (
            type(self.store) is MemorySagaStore
            and self._hooks.silent
            and all(not isinstance(item, GroupPlan) and item.plain for item in self._plan)
        )
        # What run_plain's compact journal leaves out (see compact_journal).
        self._shape: Shape = plan_shape(
            (item,) if isinstance(item, Branch)
            else (item.primary, item.fallback)  # type: ignore[union-attr]
            for item in self._plan
        ) if self._runs_plain else ()

    def _execution(
        self, context: ContextT, saga_id: str | None, fence: Lease | None = None
    ) -> Execution:
        self._check_context(context)
        return Execution(self._settings, context, saga_id, fence)

    def _check_context(self, context: object) -> None:
        expected = self._context_type
        if expected is not None and not isinstance(context, expected):
            raise TypeError(
                f"{self.name} runs on {expected.__name__}, got {type(context).__name__}"
            )

    async def run(self, context: ContextT, *, saga_id: str | None = None) -> SagaResult[ContextT]:
        """Run every step in order.

        Returns a ``SagaResult`` when all completed. Otherwise unwinds the
        completed steps (in reverse) and raises ``SagaFailed``. If the task is
        cancelled, the completed steps are compensated before
        ``CancelledError`` propagates. A context the journal cannot serialize
        is refused before any step runs (``ContextSerializationError``).
        """
        expected = self._context_type
        if expected is not None and not isinstance(context, expected):
            self._check_context(context)
        execution = Execution(self._settings, context, saga_id)
        if self._child_id_path:
            self._check_child_ids(execution.saga_id, made=saga_id is None)
        try:
            if self._runs_plain:
                return await execution.run_plain(self._plan, self._shape)
            return await execution.run_all(self._plan)
        except SagaAlreadyExists as taken:
            # The store that refused the id knows no call: this one says it was run().
            if taken.saga_id == execution.saga_id:
                taken.started_by("run()")
            raise

    def transaction(
        self, context: ContextT, *, saga_id: str | None = None
    ) -> SagaTransaction[ContextT]:
        """Step through the saga: ``async with saga.transaction(ctx) as tx: async for r in tx``.

        The saga commits (COMPLETED) when the block exits normally after every
        step ran. Leaving the block early — an exception, a ``break`` — unwinds
        the steps that completed; an exception then propagates unchanged.
        """
        execution = self._execution(context, saga_id)
        if self._child_id_path:
            self._check_child_ids(execution.saga_id, made=saga_id is None)
        return SagaTransaction(execution, self._plan)

    def _check_child_ids(self, saga_id: str, *, made: bool) -> None:
        """A new saga whose id leaves its deepest child's id too long is
        refused before its first step (the child's first write would refuse
        it mid-run). A resumed one is not: its id is the journal's; its
        child refuses it when reached, as before (subsaga's _child_id)."""
        refused = saga_id_refused_for_children(
            self.name, saga_id, self._child_id_path, made=made
        )
        if refused is not None:
            raise ValueError(refused)


def context_class_missing(saga_cls: type[Saga[Any]], store: SagaStore) -> str | None:
    """Why ``saga_cls`` cannot journal to ``store`` (None: it can): it
    declares no context class, and a crashed run is resumed from its journal,
    read back into that class — without one, it would be left unresumable.
    (Asked by ``Saga()`` and by a parent built to run it as a child.)"""
    definition = saga_cls.definition
    if definition.context_type is None:
        definition = _bound_late(saga_cls, definition)
    if definition.context_type is not None or is_live_journal(store):
        return None
    named = unresolved_context_name(saga_cls, Saga)
    return (
        f"{saga_cls.__name__} must declare its context class "
        f"(class {saga_cls.__name__}(Saga[MyContext])) to journal to "
        f"{type(store).__name__}: a run is resumed after a crash from its "
        f"journal, read back into that class"
        + (f" (it names it as the string {named})" if named else "")
    )


def _bound_late(saga_cls: type[Saga[Any]], definition: SagaDefinition) -> SagaDefinition:
    """``saga_cls``'s definition, bound to the context class it names by a
    string (``Saga["OrderContext"]``) that its module had not yet defined
    when the class was created (declared further down): the module has run
    since, so the name is looked up again and, when it now names a class,
    the definition is built anew with it — once; its steps checked against
    it, as at class creation (S11)."""
    if context_type_of(saga_cls, Saga) is None:
        return definition
    saga_cls.definition = build_definition(saga_cls, saga_cls.steps, saga_cls.name, base=Saga)
    return saga_cls.definition


def _default_factory(saga_cls: type) -> StepFactory:
    """``cls()`` for every step class, with a hint when a constructor needs arguments."""

    def construct(cls: type) -> Any:
        try:
            return cls()
        except TypeError as error:
            if not _needs_arguments(cls):
                raise  # the constructor's own code failed: not ours to explain
            raise TypeError(
                f"{saga_cls.__name__} builds its step class {cls.__name__} as "
                f"{cls.__name__}(), which failed: {error}. Pass step_factory= to build "
                f"steps whose constructor needs arguments, e.g. "
                f"{saga_cls.__name__}(step_factory=lambda cls: container.get(cls)), "
                f"or put an instance of {cls.__name__} in steps"
            ) from error

    return construct


def _needs_arguments(cls: type) -> bool:
    try:
        inspect.signature(cls).bind()
    except TypeError:
        return True
    except ValueError:  # no signature to read (a builtin): assume the call was the problem
        return True
    return False


def _plan_item(spec: ItemSpec, factory: StepFactory) -> PlanItem:
    if isinstance(spec, GroupSpec):
        members = tuple(_plan_item(member, factory) for member in spec.members)
        return GroupPlan(members)  # type: ignore[arg-type]  # members are never groups
    if isinstance(spec, FallbackSpec):
        return FallbackPlan(
            spec.rule,
            _build_branch(spec.primary, factory, spec.rule.retry),
            _build_branch(spec.fallback, factory, None),
        )
    return _build_branch(spec, factory, None)


def _refuse_children_elsewhere(
    saga_name: str, plan: tuple[PlanItem, ...], store: SagaStore
) -> None:
    """Ask each step that runs a child saga (``SubSaga``: it has
    ``_refuse_parent_store``) whether it can run under a parent journaling
    to ``store``, before anything runs. (Asked of the step, not looked up by
    its class: the module of child sagas imports this one.)"""
    for item in plan:
        for member in item.members if isinstance(item, GroupPlan) else (item,):
            branches = (
                (member.primary, member.fallback) if isinstance(member, FallbackPlan)
                else (member,)
            )
            for branch in branches:
                refuse = getattr(
                    getattr(branch.act, "__self__", None), "_refuse_parent_store", None
                )
                if refuse is not None:
                    refuse(saga_name, branch.name, store)


def _build_branch(spec: BranchSpec, factory: StepFactory, retry: RetryPolicy | None) -> Branch:
    step = factory(spec.source) if isinstance(spec.source, type) else spec.source
    if not isinstance(step, Step):
        raise TypeError(
            f"step_factory({spec.source.__name__}) returned {step!r}, which has no "
            f"async act/compensate"
        )
    own_retry = getattr(step, "retry", None)
    timeout = spec.timeout
    if isinstance(spec.source, type):
        # A step the factory built is the step that runs: the settings its
        # __init__ (or its class, a subclass of the one named) gives count.
        # Its name cannot: the journal's is fixed with the saga class.
        label = f"step {spec.name!r} built by step_factory"
        check_retry(own_retry, label, TypeError)
        own_timeout = _built_setting(step, "timeout")
        if own_timeout is not _UNSET:
            timeout = check_timeout(own_timeout, label, TypeError)
        own_name = _built_setting(step, "name")
        if own_name is not _UNSET and own_name is not None and own_name != spec.name:
            raise TypeError(
                f"step_factory({spec.source.__name__}) returned a step named {own_name!r}, "
                f"but the step's journal name is {spec.name!r}, fixed when the saga class is "
                f"created; set name on the class (or give the step instance in steps)"
            )
    if retry is None and isinstance(own_retry, RetryPolicy):
        retry = own_retry
    return Branch(spec.position, spec.name, spec.branch, step, timeout, retry)


_UNSET: Any = object()


def _built_setting(step: object, name: str) -> Any:
    """The built step's own ``name``/``timeout``, as its instance or its
    class holds it (``_UNSET``: neither does) — looked up statically: a test
    double (a ``Mock``) makes up a value for any name asked of it."""
    found = inspect.getattr_static(step, name, _UNSET)
    if found is not _UNSET and hasattr(type(found), "__get__"):
        return getattr(step, name)  # a property's value (a function: refused as not seconds)
    return found
