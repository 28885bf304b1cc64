"""A saga's definition: its ``steps`` list, validated once at class creation (S11)."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, ForwardRef, Literal, get_args, get_origin

from .child_ids import child_path_length, path_refused_at_definition, shown_step
from .errors import SagaDefinitionError, short_id
from .fallback import Fallback
from .given_numbers import finite_number, shown
from .parallel import Parallel
from .retry import RetryPolicy
from .step import SagaStepHandler, step_name

__all__ = [
    "MAX_SAGA_NAME_LENGTH",
    "MAX_STEP_NAME_LENGTH",
    "BranchSpec",
    "FallbackSpec",
    "GroupSpec",
    "MemberSpec",
    "SagaDefinition",
    "build_definition",
    "check_retry",
    "check_saga_name",
    "context_type_of",
    "unresolved_context_name",
]

# A saga name is an identifier in the journal, in logs and in the CLI's tables.
MAX_SAGA_NAME_LENGTH = 200
# So is a step name, written in every journal entry of its step.
MAX_STEP_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class BranchSpec:
    """One step as declared: a class to build, or an instance to use as is.

    ``position`` is the step's place in the journal: its index in ``steps``,
    counting each member of a ``Parallel`` group as one (both branches of a
    Fallback share theirs)."""

    position: int
    name: str
    source: Any
    branch: Literal["primary", "fallback"]
    timeout: float | None


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    position: int
    primary: BranchSpec
    fallback: BranchSpec
    rule: Fallback


MemberSpec = BranchSpec | FallbackSpec


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A ``Parallel`` group: its members hold consecutive positions."""

    members: tuple[MemberSpec, ...]

    @property
    def positions(self) -> range:
        return range(self.members[0].position, self.members[-1].position + 1)


ItemSpec = BranchSpec | FallbackSpec | GroupSpec


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    saga_name: str
    context_type: type | None
    items: tuple[ItemSpec, ...]
    fingerprint: str
    # The step names the deepest of its child sagas (SubSaga, nested) appends
    # to its saga id, outermost first: () when it runs no child (child_ids).
    child_id_path: tuple[str, ...] = ()

    def describe(self) -> list[Any]:
        """The shape that the fingerprint hashes: names and order, fallback
        pairs, groups (``["parallel", [member shapes]]``)."""
        return _shape(self.items)

    def members(self) -> list[MemberSpec]:
        """Every step or Fallback, groups flattened: ``members()[position]``."""
        flat: list[MemberSpec] = []
        for item in self.items:
            if isinstance(item, GroupSpec):
                flat.extend(item.members)
            else:
                flat.append(item)
        return flat


def _shape(items: tuple[ItemSpec, ...] | tuple[MemberSpec, ...]) -> list[Any]:
    return [
        ["parallel", _shape(item.members)]
        if isinstance(item, GroupSpec)
        else ["fallback", item.primary.name, item.fallback.name]
        if isinstance(item, FallbackSpec)
        else ["step", item.name]
        for item in items
    ]


def member_shape(member: MemberSpec) -> list[str]:
    """``describe()``'s entry for one step or Fallback (a group's member too)."""
    shape: list[str] = _shape((member,))[0]
    return shape


def check_saga_name(saga_cls: type, name: object) -> str:
    """``name`` as declared in ``saga_cls``'s body, checked.

    The journal stores it with each saga, and recovery finds the code to
    resume a saga with by it: it is what must stay put when the class is
    renamed. It is not part of the fingerprint, which guards the steps.
    """
    where = f"{saga_cls.__qualname__}.name"
    if not isinstance(name, str):
        raise SagaDefinitionError(
            f"{where} must be a str (the saga's name in the journal), got {name!r}"
        )
    if len(name) > MAX_SAGA_NAME_LENGTH:
        raise SagaDefinitionError(
            f"{where} must be at most {MAX_SAGA_NAME_LENGTH} characters, got {len(name)}"
        )
    if not name.strip():
        raise SagaDefinitionError(f"{where} must not be empty or blank")
    if name != name.strip():
        raise SagaDefinitionError(f"{where} {name!r} has leading or trailing whitespace")
    if not name.isprintable():
        raise SagaDefinitionError(
            f"{where} {name!r} must be printable (no newlines or control characters)"
        )
    return name


def build_definition(
    saga_cls: type, steps: Any, saga_name: str | None = None, *, base: type
) -> SagaDefinition:
    """Validate ``steps`` (S11); the saga is journaled as ``saga_name`` (default:
    the class name). ``base`` is ``Saga`` itself, whose type parameter names
    the context type (passed in, so that this module needs not import saga.py)."""
    where = saga_cls.__qualname__
    # A sequence, not any iterable: a set's order (hence every position in the
    # journal) may differ from one process to the next, and a generator or
    # iterator is used up here, leaving nothing for a subclass to inherit.
    if not isinstance(steps, Sequence) or isinstance(steps, str | bytes | bytearray):
        kind = "class" if isinstance(steps, type) else type(steps).__name__
        why = ", which has no order" if isinstance(steps, AbstractSet) else ""
        raise SagaDefinitionError(
            f"{where}.steps must be a list or tuple of steps, got a {kind}{why}: {steps!r}"
        )
    declared = list(steps)
    if not declared:
        raise SagaDefinitionError(f"{where}.steps is empty: a saga needs at least one step")
    context_type = context_type_of(saga_cls, base)
    items: list[ItemSpec] = []
    seen: dict[str, str] = {}
    sources: dict[int, str] = {}  # id of a declared step -> where it is declared
    child_paths: list[tuple[str, ...]] = [()]  # of every step that runs a child saga
    position = 0
    for index, item in enumerate(declared):
        label = f"steps[{index}]"
        if isinstance(item, Parallel):
            members: list[MemberSpec] = []
            for number, member in enumerate(item.members):
                members.append(_member(
                    member, position, f"{label}.members[{number}]", context_type, where,
                    seen, sources, child_paths,
                ))
                position += 1
            items.append(GroupSpec(tuple(members)))
        else:
            items.append(_member(
                item, position, label, context_type, where, seen, sources, child_paths
            ))
            position += 1
    definition_items = tuple(items)
    fingerprint = hashlib.sha256(json.dumps(_shape(definition_items)).encode()).hexdigest()[:16]
    # The saga name is left out of the fingerprint on purpose: it is stored and
    # matched on its own, and a class renamed while keeping its name (or given
    # a name equal to its old class name) must keep the fingerprints of its
    # sagas in flight.
    return SagaDefinition(
        saga_name or saga_cls.__name__, context_type, definition_items, fingerprint,
        max(child_paths, key=child_path_length),
    )


def _member(
    item: Any,
    position: int,
    label: str,
    context_type: type | None,
    where: str,
    seen: dict[str, str],
    sources: dict[int, str],
    child_paths: list[tuple[str, ...]],
) -> MemberSpec:
    """One element of ``steps`` (or of a group): a step or a Fallback, checked."""
    full = f"{where}.{label}"
    spec: MemberSpec
    if isinstance(item, Fallback):
        primary = _branch(item.step, position, "primary", f"{full}.step", context_type, where)
        fallback = _branch(
            item.fallback, position, "fallback", f"{full}.fallback", context_type, where
        )
        if primary.source is fallback.source:
            raise SagaDefinitionError(f"{full}: Fallback step and fallback are the same step")
        branches: tuple[BranchSpec, ...] = (primary, fallback)
        labels: tuple[str, ...] = (f"{label}.step", f"{label}.fallback")
        spec = FallbackSpec(position, primary, fallback, item)
    else:
        spec = _branch(item, position, "primary", full, context_type, where)
        branches = (spec,)
        labels = (label,)
    for branch, label in zip(branches, labels, strict=True):
        # The same class or instance twice would share one name (and, for an
        # instance, one object run twice at once in a group): refused.
        earlier = sources.get(id(branch.source))
        if earlier is not None and not isinstance(branch.source, type):
            raise SagaDefinitionError(
                f"{where}: the step instance {branch.source!r} is used twice ({earlier} and "
                f"{label}); use two instances with distinct names"
            )
        sources[id(branch.source)] = label
        if branch.name in seen:
            raise SagaDefinitionError(
                f"{where}: step name {branch.name!r} is used twice ({seen[branch.name]} and "
                f"{label}); the journal identifies steps by name — give one a "
                f"distinct `name`"
            )
        seen[branch.name] = label
        child_paths.append(_child_path(branch, f"{where}.{label}"))
    return spec


def _child_path(branch: BranchSpec, label: str) -> tuple[str, ...]:
    """The step names the deepest child saga that ``branch`` runs appends to
    its parent's saga id (() if it runs none); refused if no saga id is short
    enough for them. (The step says which saga it runs as a child: a
    ``SubSaga`` has ``child_definition``; this module cannot import it.)"""
    child = getattr(branch.source, "child_definition", None)
    if not isinstance(child, SagaDefinition):
        return ()
    path = (branch.name, *child.child_id_path)
    refused = path_refused_at_definition(path)
    if refused is not None:
        raise SagaDefinitionError(f"{label} (step {shown_step(branch.name)}): {refused}")
    return path


def _branch(
    item: Any,
    position: int,
    branch: Literal["primary", "fallback"],
    label: str,
    context_type: type | None,
    where: str,
) -> BranchSpec:
    if isinstance(item, Fallback):
        raise SagaDefinitionError(f"{label}: a Fallback cannot be nested inside a Fallback")
    if isinstance(item, Parallel):
        raise SagaDefinitionError(
            f"{label}: a Parallel group cannot be a Fallback's step or fallback (a Fallback "
            f"may be a member of a group)"
        )
    if isinstance(getattr(item, "definition", None), SagaDefinition):
        # A Saga class or instance (saga.py imports this module: not by type).
        saga = item.__name__ if isinstance(item, type) else type(item).__name__
        raise SagaDefinitionError(
            f"{label}: {saga} is a saga, not a step; to run it as a step of {where}, "
            f"give SubSaga({saga}, context=lambda parent: ...) (its context built from "
            f"this saga's)"
        )
    is_class = isinstance(item, type)
    not_async = [method for method in ("act", "compensate") if _is_sync_method(item, method)]
    if not_async:
        owner = item.__name__ if is_class else type(item).__name__
        named = step_name(item)
        which = label if named == owner else f"{label} (step {named!r})"
        methods = " and ".join(f"{owner}.{method}" for method in not_async)
        declare = " and ".join(f"`async def {method}(self, context)`" for method in not_async)
        raise SagaDefinitionError(
            f"{which}: {methods} {'is' if len(not_async) == 1 else 'are'} not async; "
            f"declare {declare} (a decorator around it must keep it a coroutine "
            f"function: see inspect.markcoroutinefunction)"
        )
    missing = _missing_method(item)
    if missing is not None:
        raise SagaDefinitionError(f"{label}: {missing}")
    if not _has_async(item, "act") or not _has_async(item, "compensate"):
        raise SagaDefinitionError(
            f"{label} is {item!r}, which is neither a Fallback nor a step "
            f"(a class or instance with `async def act(context)` and "
            f"`async def compensate(context)`)"
        )
    if is_class and inspect.isabstract(item):
        missing = ", ".join(sorted(getattr(item, "__abstractmethods__", ())))
        raise SagaDefinitionError(f"{label}: step {item.__name__} does not implement {missing}")
    for method in ("act", "compensate"):
        _check_takes_context(item, method, label)
    timeout = check_timeout(getattr(item, "timeout", None), label, SagaDefinitionError)
    check_retry(getattr(item, "retry", None), label, SagaDefinitionError)
    step_ctx = context_type_of(item if is_class else type(item), SagaStepHandler)
    if step_ctx is not None and context_type is not None and not issubclass(context_type, step_ctx):
        raise SagaDefinitionError(
            f"{label}: step {step_name(item)} works on {step_ctx.__name__}, but {where} "
            f"provides {context_type.__name__}"
        )
    return BranchSpec(
        position, _checked_step_name(item, label), item, branch, timeout,
    )


def check_timeout(timeout: object, label: str, error: type[Exception]) -> float | None:
    """A step's ``timeout`` as seconds (a float), or None; refused unless it
    is a finite number > 0 or None."""
    if timeout is None:
        return None
    seconds = finite_number(timeout)  # a bool, NaN, an infinity, 10**400: None
    if seconds is None or seconds <= 0:
        raise error(
            f"{label}: timeout must be a finite number of seconds > 0 or None, "
            f"got {shown(timeout)}"
        )
    return seconds


def check_retry(retry: object, label: str, error: type[Exception]) -> None:
    """Refuse a step's ``retry`` that is set to something other than a
    ``RetryPolicy`` (``retry = 3``): ignored, the step would run once where
    its author asked for retries. A method called ``retry`` (a step of one's
    own) is no setting: left alone — but the class ``RetryPolicy`` itself
    (``retry = RetryPolicy``, its call forgotten) is callable too, and no
    method: refused, or it would be ignored the same way."""
    if isinstance(retry, type) and issubclass(retry, RetryPolicy):
        raise error(f"{label}: retry must be a RetryPolicy or None, got the class "
                    f"{retry.__name__}: write `retry = {retry.__name__}()` (with its settings)")
    if retry is None or isinstance(retry, RetryPolicy) or callable(retry):
        return
    raise error(f"{label}: retry must be a RetryPolicy or None, got {retry!r}")



def _checked_step_name(item: Any, label: str) -> str:
    """``step_name(item)``, if every store can journal it: at most
    ``MAX_STEP_NAME_LENGTH`` characters, no NUL (PostgreSQL text cannot hold
    it) and no lone surrogate (UTF-8 cannot encode it: SQLite and PostgreSQL
    refuse it). Else the first write of every run of the saga was refused
    (``SagaInterrupted``, for ever), or the name went whole into each of its
    journal entries. Control characters are journaled as they are (logs,
    the CLI and the console show them escaped), so they are left alone."""
    name = step_name(item)
    if len(name) > MAX_STEP_NAME_LENGTH:
        raise SagaDefinitionError(
            f"{label}: step name {short_id(name)} is {len(name)} characters long; a step name "
            f"is at most {MAX_STEP_NAME_LENGTH} (every journal entry of the step holds it)"
        )
    problem = None
    if "\x00" in name:
        problem = "a NUL character, which PostgreSQL text cannot hold"
    elif not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "a lone surrogate, which UTF-8 cannot encode (SQLite, PostgreSQL)"
    if problem is not None:
        raise SagaDefinitionError(
            f"{label}: step name {short_id(name)} holds {problem}: no store could journal it"
        )
    return name


def _check_takes_context(item: Any, method: str, label: str) -> None:
    """``item.<method>`` can be called with the context alone. Otherwise every
    call would fail with a ``TypeError`` — taken for a failure of the step
    itself, and by a Fallback as the reason to run its fallback, every time."""
    function = getattr(item, method)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read: the run will tell
        return
    # A class's method is a plain function (``self`` still to bind); an
    # instance's is bound already, and so is a static or class method.
    unbound = isinstance(item, type) and not isinstance(
        inspect.getattr_static(item, method, None), staticmethod | classmethod
    )
    arguments = (None, None) if unbound else (None,)
    try:
        signature.bind(*arguments)
    except TypeError as error:
        owner = item.__name__ if isinstance(item, type) else type(item).__name__
        raise SagaDefinitionError(
            f"{label}: {owner}.{method} cannot be called as {method}(context) ({error}); "
            f"declare `async def {method}(self, context)` (the step's other needs go to "
            f"its constructor: see step_factory)"
        ) from None


def _missing_method(item: Any) -> str | None:
    """What a would-be step (a class or an instance with one of ``act`` and
    ``compensate`` as ``async def``) lacks, and how to give it."""
    act, compensate = (getattr(item, name, None) for name in ("act", "compensate"))
    if (act is None) == (compensate is None):
        return None
    owner = item.__name__ if isinstance(item, type) else type(item).__name__
    if compensate is None and inspect.iscoroutinefunction(act):
        return (
            f"{owner} has `async def act` but no `compensate`; add `async def "
            f"compensate(self, context)` (`pass` when there is nothing to undo), or "
            f"subclass SagaStepHandler, whose compensate does nothing"
        )
    if act is None and inspect.iscoroutinefunction(compensate):
        return f"{owner} has no `act`; add `async def act(self, context)`"
    return None


def _has_async(item: Any, method: str) -> bool:
    function = getattr(item, method, None)
    return function is not None and inspect.iscoroutinefunction(function)


def _is_sync_method(item: Any, method: str) -> bool:
    """``item`` looks like a step (it has both methods) but ``method`` is not
    ``async def``: a forgotten ``async``."""
    if not all(callable(getattr(item, name, None)) for name in ("act", "compensate")):
        return False
    return not inspect.iscoroutinefunction(getattr(item, method))


def context_type_of(cls: type, generic_base: type) -> type | None:
    """The concrete class bound to ``generic_base``'s first type parameter, if any.

    ``class OrderSaga(Saga[OrderContext])`` → ``OrderContext``. Walks the MRO so
    that intermediate generic classes resolve too; returns None when unbound
    (or bound to ``Any`` or a ``Protocol``). A class given by name
    (``Saga["OrderContext"]``) is looked up in the module that declares the
    subscripting class (see ``_named_class``); None while it names nothing.
    """
    for klass, bound in _type_arguments(cls, generic_base):
        if _forward_name(bound) is not None:
            bound = _named_class(klass, bound)
        if isinstance(bound, type) and not _binds_nothing(bound):
            return bound
    return None


def unresolved_context_name(cls: type, generic_base: type) -> str | None:
    """The string ``cls`` names its context class by (``Saga["OrderContext"]``)
    when it names no class in its module (yet), with that module's name: what a
    refusal of a saga with no context class tells its author."""
    for klass, bound in _type_arguments(cls, generic_base):
        name = _forward_name(bound)
        if name is not None and not isinstance(_named_class(klass, bound), type):
            return f"{name!r}, which names no class in module {klass.__module__!r}"
    return None


def _type_arguments(cls: type, generic_base: type) -> Iterator[tuple[type, object]]:
    """Each first type argument ``generic_base`` is given along ``cls``'s MRO,
    with the class whose bases give it."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, generic_base):
                args = get_args(base)
                if args:
                    yield klass, args[0]


def _forward_name(bound: object) -> str | None:
    """The name of a type argument given as a string (a forward reference)."""
    if isinstance(bound, ForwardRef):
        return bound.__forward_arg__
    return bound if isinstance(bound, str) else None


def _named_class(klass: type, bound: object) -> object:
    """What a forward reference names in the module that declares ``klass``
    (``"OrderContext"``, or dotted: ``"models.OrderContext"``), as that
    module's namespace holds it now; None if it names nothing. Looked up
    name by name, never evaluated: the string is only ever a name."""
    module = sys.modules.get(klass.__module__)
    name = _forward_name(bound)
    if module is None or name is None:
        return None
    first, *rest = name.split(".")
    found: object = vars(module).get(first)
    for attribute in rest:
        found = getattr(found, attribute, None)
    return found


def _binds_nothing(tp: type) -> bool:
    """``typing.Any`` (a class since Python 3.11), or a ``typing.Protocol``:
    a structural type, which no class subclasses by name (``issubclass`` and
    ``isinstance`` refuse one not ``@runtime_checkable``) and no journal is
    read back into — a static type checker holds it."""
    # (typing.is_protocol is Python 3.13's; _is_protocol is what it reads.)
    return tp is Any or getattr(tp, "_is_protocol", False) is True
