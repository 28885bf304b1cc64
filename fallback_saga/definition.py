"""A saga's definition: its ``steps`` list, validated once at class creation (S11)."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import SagaDefinitionError
from .fallback import Fallback
from .step import SagaStepHandler, step_name

__all__ = ["BranchSpec", "FallbackSpec", "SagaDefinition", "build_definition", "context_type_of"]


@dataclass(frozen=True, slots=True)
class BranchSpec:
    """One step as declared: a class to build, or an instance to use as is."""

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


ItemSpec = BranchSpec | FallbackSpec


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    saga_name: str
    context_type: type | None
    items: tuple[ItemSpec, ...]
    fingerprint: str

    def describe(self) -> list[list[str]]:
        """The shape that the fingerprint hashes: names and order, fallback pairs."""
        return _shape(self.items)


def _shape(items: tuple[ItemSpec, ...]) -> list[list[str]]:
    return [
        ["fallback", item.primary.name, item.fallback.name]
        if isinstance(item, FallbackSpec)
        else ["step", item.name]
        for item in items
    ]


def build_definition(saga_cls: type, steps: Any) -> SagaDefinition:
    where = saga_cls.__qualname__
    if isinstance(steps, str | bytes) or not hasattr(steps, "__iter__"):
        raise SagaDefinitionError(f"{where}.steps must be a list of steps, got {steps!r}")
    declared = list(steps)
    if not declared:
        raise SagaDefinitionError(f"{where}.steps is empty: a saga needs at least one step")
    context_type = context_type_of(saga_cls, _saga_base())
    items: list[ItemSpec] = []
    seen: dict[str, str] = {}
    for position, item in enumerate(declared):
        label = f"{where}.steps[{position}]"
        if isinstance(item, Fallback):
            primary = _branch(item.step, position, "primary", f"{label}.step", context_type, where)
            fallback = _branch(
                item.fallback, position, "fallback", f"{label}.fallback", context_type, where
            )
            if primary.source is fallback.source:
                raise SagaDefinitionError(f"{label}: Fallback step and fallback are the same step")
            branches: tuple[BranchSpec, ...] = (primary, fallback)
            items.append(FallbackSpec(position, primary, fallback, item))
        else:
            spec = _branch(item, position, "primary", label, context_type, where)
            branches = (spec,)
            items.append(spec)
        for spec in branches:
            if spec.name in seen:
                raise SagaDefinitionError(
                    f"{where}: step name {spec.name!r} is used twice ({seen[spec.name]} and "
                    f"steps[{position}]); the journal identifies steps by name — give one a "
                    f"distinct `name`"
                )
            seen[spec.name] = f"steps[{position}]"
    definition_items = tuple(items)
    fingerprint = hashlib.sha256(json.dumps(_shape(definition_items)).encode()).hexdigest()[:16]
    return SagaDefinition(saga_cls.__name__, context_type, definition_items, fingerprint)


def _saga_base() -> type:
    from .saga import Saga  # the definition is built while Saga subclasses are created

    return Saga


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
    is_class = isinstance(item, type)
    if not _has_async(item, "act") or not _has_async(item, "compensate"):
        raise SagaDefinitionError(
            f"{label} is {item!r}, which is neither a Fallback nor a step "
            f"(a class or instance with `async def act(context)` and "
            f"`async def compensate(context)`)"
        )
    if is_class and inspect.isabstract(item):
        missing = ", ".join(sorted(getattr(item, "__abstractmethods__", ())))
        raise SagaDefinitionError(f"{label}: step {item.__name__} does not implement {missing}")
    timeout = getattr(item, "timeout", None)
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise SagaDefinitionError(f"{label}: timeout must be seconds > 0 or None, got {timeout!r}")
    step_ctx = context_type_of(item if is_class else type(item), SagaStepHandler)
    if step_ctx is not None and context_type is not None and not issubclass(context_type, step_ctx):
        raise SagaDefinitionError(
            f"{label}: step {step_name(item)} works on {step_ctx.__name__}, but {where} "
            f"provides {context_type.__name__}"
        )
    return BranchSpec(
        position, step_name(item), item, branch, None if timeout is None else float(timeout)
    )


def _has_async(item: Any, method: str) -> bool:
    function = getattr(item, method, None)
    return function is not None and inspect.iscoroutinefunction(function)


def context_type_of(cls: type, generic_base: type) -> type | None:
    """The concrete class bound to ``generic_base``'s first type parameter, if any.

    ``class OrderSaga(Saga[OrderContext])`` → ``OrderContext``. Walks the MRO so
    that intermediate generic classes resolve too; returns None when unbound.
    """
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = get_origin(base)
            if not (isinstance(origin, type) and issubclass(origin, generic_base)):
                continue
            args = get_args(base)
            if args and isinstance(args[0], type) and not isinstance(args[0], TypeVar):
                return args[0]
    return None
