"""A resume is exact for what a dataclass holds beyond its fields (S14, S12).

A dataclass context is journaled field by field and rebuilt from its fields,
so an attribute set on it that is not a field — by the caller before the run
(``ctx.trace_id = ...``), or by a step — would be silently missing after a
crash and a resume, where the first run had it. Such an attribute is refused
like any value that cannot be carried: before the first step when the context
holds it from the start, at the write of the step that added it otherwise,
naming the attribute — whatever the dataclass's shape: fields in slots and a
``__dict__`` too, a ``__post_init__``. What the class derives again on reading
back is not refused: an attribute its ``__post_init__`` sets, a
``functools.cached_property``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import uuid
import zoneinfo
from datetime import UTC, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from context_crash_app import assert_identical

from fallback_saga import (
    ContextSerializationError,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
)
from fallback_saga.context import check_serializable, context_from_dict, context_to_dict
from fallback_saga.store._common import decode_json, encode_json

pytest_plugins = ["conftest_pg", "helpers_stores"]


class Crash(BaseException):
    """The process dies after the first step."""


@dataclasses.dataclass
class Line:
    sku: str


@dataclasses.dataclass
class Order(SagaContext):
    order_id: str = "o-1"
    line: Any = None
    retries: ClassVar[int] = 0


CALLS: list[str] = []
SEEN: list[dict[str, Any]] = []
CRASH = [True]


class Reserve(SagaStepHandler[Order, Any]):
    async def act(self, context: Order, /) -> Any:
        CALLS.append("reserve")
        return Line("sku-1")


class Charge(SagaStepHandler[Order, None]):
    async def act(self, context: Order, /) -> None:
        SEEN.append(dict(vars(context)))
        if CRASH[0]:
            raise Crash


class OrderSaga(Saga[Order]):
    steps: ClassVar[list[Any]] = [Reserve, Charge]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    SEEN.clear()
    CRASH[0] = True


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        (lambda ctx: setattr(ctx, "trace_id", "t-1"), "trace_id"),
        (lambda ctx: setattr(ctx, "retries", 3), "retries"),  # shadows a ClassVar
        (lambda ctx: setattr(ctx, "line", _with_extra(Line("s"), note=Decimal("1"))), "line.note"),
    ],
    ids=["attribute", "over-a-classvar", "in-a-nested-dataclass"],
)
async def test_S14_an_attribute_that_is_not_a_field_is_refused_before_the_first_step(
    every_store: Any, extra: Any, path: str
) -> None:
    context = Order()
    extra(context)

    with pytest.raises(ContextSerializationError) as info:
        await OrderSaga(store=every_store).run(context, saga_id="o-1")

    assert info.value.path == path
    assert "not a field" in str(info.value)
    assert CALLS == []


def _with_extra(value: Any, **extra: Any) -> Any:
    vars(value).update(extra)
    return value


class Tag(SagaStepHandler[Order, None]):
    async def act(self, context: Order, /) -> None:
        CALLS.append("tag")
        context.trace_id = "t-1"  # type: ignore[attr-defined]


class TaggingSaga(Saga[Order]):
    steps: ClassVar[list[Any]] = [Tag, Charge]


async def test_S14_an_attribute_a_step_adds_outside_the_fields_fails_at_its_write(
    every_store: Any,
) -> None:
    """Not a context that resumes without it: the run fails at the write
    that would journal it (as for a step writing any value that cannot be
    journaled), before the next step runs. (A MemorySagaStore journals
    nothing on the way, it is not durable: the run completes, and reading
    the saga back names the attribute rather than dropping it.)"""
    if type(every_store).__name__ == "MemorySagaStore":
        CRASH[0] = False
        await TaggingSaga(store=every_store).run(Order(), saga_id="o-2")
        with pytest.raises(ContextSerializationError) as refused:
            await every_store.load("o-2")
        assert refused.value.path == "trace_id"
        return
    with pytest.raises(SagaFailed) as info:
        await TaggingSaga(store=every_store).run(Order(), saga_id="o-2")

    error: BaseException | None = info.value
    while error is not None and not isinstance(error, ContextSerializationError):
        error = error.__cause__
    assert isinstance(error, ContextSerializationError), info.value
    assert error.path == "trace_id"
    assert CALLS == ["tag"]
    assert SEEN == []  # the next step never saw a context a resume would not give


def test_S14_a_dataclass_step_result_with_an_attribute_beyond_its_fields_is_not_kept() -> None:
    """Journaled as a response that could not be kept (a resumed run gets an
    ``UnjournaledResponse``), not as a ``Line`` without its ``note``."""
    from fallback_saga.decoding import TAG
    from fallback_saga.store._responses import UNJOURNALED, response_text

    response = _with_extra(Line("s"), note="kept?")
    journaled = decode_json(response_text(response, "S", "step"))

    assert journaled[TAG][0] == UNJOURNALED
    assert "'note' is not a field of Line" in journaled[TAG][1][1]


@dataclasses.dataclass
class Derived(SagaContext):
    lines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._index = set(self.lines)

    @functools.cached_property
    def count(self) -> int:
        return len(self.lines)


def test_S14_what_a_dataclass_derives_again_is_not_refused() -> None:
    context = Derived(["a"])
    assert context.count == 1  # cached in its __dict__

    check_serializable(context)
    back = context_from_dict(Derived, decode_json(encode_json(context_to_dict(context))))

    assert back._index == {"a"}
    assert back.count == 1


async def test_S14_a_context_of_fields_only_resumes_exactly(every_store: Any) -> None:
    with pytest.raises(Crash):
        await OrderSaga(store=every_store).run(Order(line=Line("s")), saga_id="o-3")
    CRASH[0] = False
    result = await OrderSaga(store=every_store).resume("o-3")

    assert_identical(SEEN[1], SEEN[0])
    assert_identical(result.results[0].response, Line("sku-1"))


@dataclasses.dataclass(slots=True)
class Slotted(SagaContext):
    """Its fields in slots, and a ``__dict__`` (from ``SagaContext``), empty."""

    value: Any = None


class Once(SagaStepHandler[Slotted, None]):
    async def act(self, context: Slotted, /) -> None:
        CALLS.append("once")


class SlottedSaga(Saga[Slotted]):
    steps: ClassVar[list[Any]] = [Once]


async def test_S12_a_slots_dataclass_context_is_checked_before_the_first_step_every_time(
    every_store: Any,
) -> None:
    """The check that scans a flat context's ``__dict__`` at C speed does not
    take an empty one for a context of JSON scalars: its fields are in slots."""
    for saga_id in ("s-1", "s-2"):  # the second: its class is known by then
        with pytest.raises(ContextSerializationError) as info:
            await SlottedSaga(store=every_store).run(Slotted(threading.Lock()), saga_id=saga_id)
        assert info.value.path == "value"
    with pytest.raises(ContextSerializationError):
        check_serializable(Slotted(threading.Lock()))
    assert CALLS == []


@dataclasses.dataclass
class Unset(SagaContext):
    order_id: str = "o-1"
    total: int = dataclasses.field(init=False)


@dataclasses.dataclass
class Holder(SagaContext):
    order_id: str = "o-1"
    line: Any = None


@dataclasses.dataclass
class UnsetLine:
    sku: str = "sku-1"
    quantity: int = dataclasses.field(init=False)


class Touch(SagaStepHandler[SagaContext, None]):
    async def act(self, context: SagaContext, /) -> None:
        CALLS.append("touch")


class UnsetSaga(Saga[Unset]):
    steps: ClassVar[list[Any]] = [Touch]


class HolderSaga(Saga[Holder]):
    steps: ClassVar[list[Any]] = [Touch]


@pytest.mark.parametrize("nested", [False, True], ids=["field", "nested"])
async def test_S12_a_field_never_given_a_value_is_refused_before_the_first_step_naming_it(
    every_store: Any, nested: bool
) -> None:
    """A dataclass field declared ``init=False`` with no default, never set:
    a ContextSerializationError naming it, before any step, not an
    AttributeError from deep inside the encoder."""
    saga: Any = HolderSaga(store=every_store) if nested else UnsetSaga(store=every_store)
    context: Any = Holder(line=UnsetLine()) if nested else Unset()
    with pytest.raises(ContextSerializationError) as refused:
        await saga.run(context, saga_id="o-3")
    path = "line.quantity" if nested else "total"
    assert refused.value.path == path
    assert f"context field {path!r} has no value" in str(refused.value)
    assert "init=False" in str(refused.value)
    assert CALLS == []


# --------------------------------------------------------------------------- more shapes


@dataclasses.dataclass(slots=True)
class SlotLine:
    sku: str = "sku-1"


class OpenSlotLine(SlotLine):
    """A subclass without ``__slots__``: its instances have a ``__dict__``."""


@dataclasses.dataclass(slots=True)
class OpenSlotted(SagaContext):
    """Its fields in slots, and a ``__dict__`` (from ``SagaContext``)."""

    order_id: str = "o-1"


@dataclasses.dataclass
class SlotsAndDict:
    __slots__ = ("__dict__", "sku")
    sku: str


@dataclasses.dataclass
class Keyed(SagaContext):
    """Its ``__post_init__`` derives ``key``: only ``key`` comes back."""

    order_id: str = "o-1"
    line: Any = None

    def __post_init__(self) -> None:
        self.key = self.order_id.upper()


@dataclasses.dataclass
class KeyedLine:
    sku: str = "sku-1"

    def __post_init__(self) -> None:
        self.key = self.sku.upper()


class OpenSlottedSaga(Saga[OpenSlotted]):
    steps: ClassVar[list[Any]] = [Touch]


class KeyedSaga(Saga[Keyed]):
    steps: ClassVar[list[Any]] = [Touch]


BEYOND = {
    "slots-context-with-a-dict": (
        OpenSlottedSaga, lambda: _with_extra(OpenSlotted(), note=1), "note"
    ),
    "slots-subclass-with-a-dict": (
        HolderSaga, lambda: Holder(line=_with_extra(OpenSlotLine(), note=1)), "line.note"
    ),
    "dict-in-slots": (
        HolderSaga, lambda: Holder(line=_with_extra(SlotsAndDict("s"), note=1)), "line.note"
    ),
    "post-init-context": (KeyedSaga, lambda: _with_extra(Keyed(), note=1), "note"),
    "post-init-nested": (
        HolderSaga, lambda: Holder(line=_with_extra(KeyedLine(), note=1)), "line.note"
    ),
}


@pytest.mark.parametrize(("saga_class", "make", "path"), BEYOND.values(), ids=BEYOND)
async def test_S14_an_attribute_beyond_the_fields_is_refused_whatever_the_dataclass_shape(
    every_store: Any, saga_class: Any, make: Any, path: str
) -> None:
    """A slots dataclass whose instances have a ``__dict__`` too, a dataclass
    with a ``__post_init__`` (that does not set it): an attribute beyond the
    fields was journaled without a word, and missing after a resume."""
    for saga_id in ("b-1", "b-2"):  # the second: the class is known by then
        with pytest.raises(ContextSerializationError) as info:
            await saga_class(store=every_store).run(make(), saga_id=saga_id)
        assert info.value.path == path
        assert "not a field" in str(info.value)
    assert CALLS == []


def test_S14_what_post_init_derives_comes_back_and_is_not_refused() -> None:
    context = Keyed(line=KeyedLine())
    check_serializable(context)

    back = context_from_dict(Keyed, decode_json(encode_json(context_to_dict(context))))

    assert (back.key, back.line.key) == ("O-1", "SKU-1")
    assert_identical(context, back)
    with pytest.raises(ContextSerializationError, match="does not set it"):
        context_to_dict(_with_extra(Keyed(), other=2))


@dataclasses.dataclass
class SometimesKeyed(SagaContext):
    """Its ``__post_init__`` derives ``key`` only for an order id."""

    order_id: str = "o-1"
    line: Any = None

    def __post_init__(self) -> None:
        if self.order_id:
            self.key = self.order_id.upper()


@dataclasses.dataclass
class SometimesKeyedLine:
    sku: str = "sku-1"

    def __post_init__(self) -> None:
        if self.sku:
            self.key = self.sku.upper()


class SometimesKeyedSaga(Saga[SometimesKeyed]):
    steps: ClassVar[list[Any]] = [Touch]


@dataclasses.dataclass
class SometimesHolder(SagaContext):
    line: SometimesKeyedLine | None = None


class SometimesHolderSaga(Saga[SometimesHolder]):
    steps: ClassVar[list[Any]] = [Touch]


SWAPPED = {
    "post-init-context": (
        SometimesKeyedSaga,
        lambda: SometimesKeyed(),
        lambda: _with_extra(SometimesKeyed(order_id=""), note=1),
        lambda: SometimesKeyed(order_id=""),
        "note",
    ),
    "post-init-nested": (
        SometimesHolderSaga,
        lambda: SometimesHolder(line=SometimesKeyedLine()),
        lambda: SometimesHolder(line=_with_extra(SometimesKeyedLine(sku=""), note=1)),
        lambda: SometimesHolder(line=SometimesKeyedLine(sku="")),
        "line.note",
    ),
}


@pytest.mark.parametrize(
    ("saga_class", "derives", "swapped", "underived", "path"), SWAPPED.values(), ids=SWAPPED
)
async def test_S14_an_attribute_in_place_of_one_post_init_derives_elsewhere_is_refused(
    every_store: Any, saga_class: Any, derives: Any, swapped: Any, underived: Any, path: str
) -> None:
    """Once an instance that derives ``key`` was journaled, one whose
    ``__post_init__`` derives nothing but that holds ``note`` instead has as
    many attributes: it was journaled without ``note``, lost on resume."""
    await saga_class(store=every_store).run(derives(), saga_id="d-1")
    CALLS.clear()

    for check in (check_serializable, context_to_dict):
        with pytest.raises(ContextSerializationError) as refused:
            check(swapped())
        assert refused.value.path == path
    with pytest.raises(ContextSerializationError) as info:
        await saga_class(store=every_store).run(swapped(), saga_id="d-2")
    assert info.value.path == path
    assert "not a field" in str(info.value)
    assert CALLS == []
    # Still not refused: what each instance derives itself, or nothing.
    for context in (derives(), underived()):
        check_serializable(context)
        assert_identical(context, context_from_dict(type(context), context_to_dict(context)))


# --------------------------------------------------------------------------- counted, not named


@dataclasses.dataclass
class Flat(SagaContext):
    order_id: str = "o-1"
    total: int = 0


@dataclasses.dataclass
class FlatLine:
    sku: str = "sku-1"
    quantity: int = 1


def _swapped(value: Any, field: str) -> Any:
    """``value`` with its field ``field`` deleted (``getattr`` finds the class
    default then) and ``note`` in its place: as many attributes as fields."""
    delattr(value, field)
    value.note = 1
    return value


class Swap(SagaStepHandler[Flat, None]):
    async def act(self, context: Flat, /) -> None:
        CALLS.append("swap")
        _swapped(context, "total")


class SwapSaga(Saga[Flat]):
    steps: ClassVar[list[Any]] = [Swap, Touch]


class FlatSaga(Saga[Flat]):
    steps: ClassVar[list[Any]] = [Touch]


async def test_S14_a_field_deleted_and_an_attribute_in_its_place_is_refused_naming_it(
    every_store: Any,
) -> None:
    """Its attributes were counted, not named: with a field deleted (read
    from its class default) and ``note`` set, the count matched, and ``note``
    was journaled without a word, missing after a resume."""
    context_to_dict(Flat())  # the class is known: a width learnt
    context_to_dict(Holder(line=FlatLine()))
    for check in (
        check_serializable,
        context_to_dict,
        lambda ctx: ctx.to_dict(),
        lambda ctx: context_to_dict(Holder(line=_swapped(FlatLine(), "quantity"))),
    ):
        with pytest.raises(ContextSerializationError) as refused:
            check(_swapped(Flat(), "total"))
        assert refused.value.path in ("note", "line.note")
        assert "not a field" in str(refused.value)
    with pytest.raises(ContextSerializationError) as before:
        await FlatSaga(store=every_store).run(_swapped(Flat(), "total"), saga_id="w-1")
    assert before.value.path == "note"
    assert CALLS == []

    if type(every_store).__name__ == "MemorySagaStore":  # (journals at reading back)
        await SwapSaga(store=every_store).run(Flat(), saga_id="w-2")
        with pytest.raises(ContextSerializationError) as refused:
            await every_store.load("w-2")
        assert refused.value.path == "note"
        return
    with pytest.raises(SagaFailed) as info:
        await SwapSaga(store=every_store).run(Flat(), saga_id="w-2")
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, ContextSerializationError):
        error = error.__cause__
    assert isinstance(error, ContextSerializationError), info.value
    assert error.path == "note"
    assert CALLS == ["swap"]


# ------------------------------------------------------------ derived, then set by hand


@dataclasses.dataclass
class KeyedOrder(SagaContext):
    """Its ``__post_init__`` derives ``key`` and ``index`` from its fields."""

    a: int = 1
    lines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = f"k-{self.a}"
        self.index = set(self.lines)
        self.double = self.a * 2


def _hand_set_key(ctx: Any) -> None:
    ctx.key = "custom"


def _index_mutated(ctx: Any) -> None:
    ctx.index.add("x")  # in place: no longer what lines derive


def _equal_of_another_type(ctx: Any) -> None:
    ctx.double = 2.0  # equal to the int derived again, not the same type


HAND_SET = {
    "set-by-hand": (_hand_set_key, "key"),
    "mutated-in-place": (_index_mutated, "index"),
    "another-type": (_equal_of_another_type, "double"),
}


class SetKey(SagaStepHandler[KeyedOrder, None]):
    async def act(self, context: KeyedOrder, /) -> None:
        CALLS.append("set")
        HAND[0](context)


HAND: list[Any] = [_hand_set_key]


class KeyedOrderSaga(Saga[KeyedOrder]):
    steps: ClassVar[list[Any]] = [SetKey, Touch]


class TouchKeyedSaga(Saga[KeyedOrder]):
    steps: ClassVar[list[Any]] = [Touch]


@pytest.mark.parametrize(("change", "path"), HAND_SET.values(), ids=HAND_SET)
async def test_S14_a_value_post_init_derives_then_changed_by_hand_is_refused_naming_it(
    every_store: Any, change: Any, path: str
) -> None:
    """The resumed run derives it again from the fields (``k-1``): the
    value set by hand was lost without a word. Refused before the first
    step, or at the write of the step that set it, telling the fix."""
    context_to_dict(KeyedOrder(lines=["a"]))  # what it derives is known
    context = KeyedOrder(lines=["a"])
    change(context)
    with pytest.raises(ContextSerializationError) as before:
        await TouchKeyedSaga(store=every_store).run(context, saga_id="h-1")
    assert before.value.path == path
    assert "a resumed run would not have that value" in str(before.value)
    assert f"{path}: <type> = field(init=False)" in str(before.value)
    assert CALLS == []

    HAND[0] = change
    if type(every_store).__name__ == "MemorySagaStore":  # (journals at reading back)
        await KeyedOrderSaga(store=every_store).run(KeyedOrder(lines=["a"]), saga_id="h-2")
        with pytest.raises(ContextSerializationError) as refused:
            await every_store.load("h-2")
        assert refused.value.path == path
        return
    with pytest.raises(SagaFailed) as info:
        await KeyedOrderSaga(store=every_store).run(KeyedOrder(lines=["a"]), saga_id="h-2")
    error: BaseException | None = info.value
    while error is not None and not isinstance(error, ContextSerializationError):
        error = error.__cause__
    assert isinstance(error, ContextSerializationError), info.value
    assert error.path == path
    assert CALLS == ["set"]


def test_S14_a_value_post_init_derives_set_where_it_derives_none_is_refused() -> None:
    """``SometimesKeyed`` derives ``key`` only for an order id: set by hand
    on one without, it would be missing after a resume."""
    context_to_dict(SometimesKeyed())
    context = SometimesKeyed(order_id="")
    context.key = "custom"

    with pytest.raises(ContextSerializationError) as refused:
        context_to_dict(context)
    assert refused.value.path == "key"
    with pytest.raises(ContextSerializationError):
        context_to_dict(Holder(line=_with_extra(SometimesKeyedLine(sku=""), key="SKU")))
    keyed = Keyed(line=Line("s"))  # (a field not of scalars: read back through the journal form)
    keyed.key = "custom"
    with pytest.raises(ContextSerializationError) as refused:
        context_to_dict(keyed)
    assert refused.value.path == "key"


@dataclasses.dataclass
class Sorted(SagaContext):
    lines: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines.sort()
        self.first = self.lines[0] if self.lines else None


def test_S14_reading_back_what_post_init_derives_leaves_the_context_untouched() -> None:
    """The fields are read back into a copy: a ``__post_init__`` that changes
    them in place changes the copy's."""
    context = Sorted(["c", "b"])
    context.lines.append("a")
    context.first = "a"  # what the copy derives: not refused

    context_to_dict(context)

    assert context.lines == ["b", "c", "a"]


class Handle:
    """Compared by identity: no two are equal."""


SHARED = Handle()


@dataclasses.dataclass
class Mixed(SagaContext):
    """Derives values that are not data, or not the same twice."""

    a: int = 1

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.handle = Handle()
        self.shared = SHARED  # (the same twice: compared, but by identity)
        self.token = uuid.uuid4()  # (not the same when read back: not compared)
        self.ratio = math.nan
        self.key = f"k-{self.a}"


def test_S14_what_cannot_be_compared_or_is_derived_again_equal_is_not_refused() -> None:
    """Not refused: a lock, objects compared by identity, a value not
    derived the same twice (a uuid4), NaN, a value set equal to what is
    derived, a derived attribute deleted (a cache dropped: the resumed run
    derives it again from the fields, as a new instance would have it)."""
    context = Mixed()
    context_to_dict(context)
    context.lock, context.handle, context.token = threading.Lock(), Handle(), uuid.uuid4()
    context.shared = Handle()
    context.key = "".join(["k-", "1"])  # equal, another object
    context.ratio = float("nan")
    context_to_dict(context)
    check_serializable(context)
    del context.key
    context_to_dict(context)
    assert context_from_dict(Mixed, context_to_dict(context)).key == "k-1"


@dataclasses.dataclass
class Counted(SagaContext):
    lines: list[str] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def count(self) -> int:
        return len(self.lines)


def test_S14_a_cached_property_set_by_hand_is_computed_again_on_resume() -> None:
    """A decision: a ``functools.cached_property`` is a cache of its fields,
    not data — set by hand (or stale), it is not refused; the resumed run
    computes it again from the fields (docs/mechanics.md). Computing it at
    every write would cost classes without a ``__post_init__``."""
    context = Counted(["a"])
    context.count = 5  # type: ignore[misc]

    back = context_from_dict(Counted, context_to_dict(context))

    assert back.count == 1


RUNS: list[int] = []


@dataclasses.dataclass
class Node:
    children: list[Node] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        RUNS.append(1)
        self.size = 1 + sum(child.size for child in self.children)


def test_S14_nested_values_that_derive_are_each_read_back_once_per_write() -> None:
    """Each node's fields are read back to compare what it derives; a node's
    read-back does not compare its children again (the write does, once):
    else each level doubled the work (2**depth reads back of a chain)."""
    chain = Node()
    for _ in range(7):
        chain = Node([chain])  # 8 nodes
    context_to_dict(Holder(line=chain))  # learnt
    RUNS.clear()

    context_to_dict(Holder(line=chain))

    assert len(RUNS) == 8 + 7 + 6 + 5 + 4 + 3 + 2 + 1  # each node, its subtree


# ------------------------------------------------ derived, equal, but not the same inside


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
LONDON = zoneinfo.ZoneInfo("Europe/London")


@dataclasses.dataclass(frozen=True)
class Nest:
    v: float


@dataclasses.dataclass
class Nested(SagaContext):
    """Derives containers of scalars, and moments in a zone, from ``a``."""

    a: int = 1
    zone: str = "+01:00"

    def __post_init__(self) -> None:
        self.rates = {"a": float(self.a)}
        self.weights = [float(self.a)]
        self.flags = {"on": True}
        self.pairs = {"p": (self.a, float(self.a))}
        self.keys = {float(self.a): "x"}
        self.table = {float(self.a): "x", float(self.a + 1): "y"}
        self.members = frozenset({float(self.a)})
        self.deep = [[{"v": float(self.a)}]]
        self.when = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=self.a)))
        self.clock = time(12, tzinfo=timezone(timedelta(hours=self.a)))
        self.wall = datetime(2026, 11, 1, 1, 30)
        self.local = datetime(2026, 1, 1, 12, tzinfo=PARIS)
        self.price = Decimal(self.a).quantize(Decimal("0.01"))
        self.prices = [Decimal(self.a).quantize(Decimal("0.01"))]
        self.zero = 0.0 * self.a
        self.zeros = [0.0 * self.a, 1.0]
        self.mixed = [self.a, 0.0 * self.a]
        self.zero_keys = {0.0 * self.a: "x"}
        self.zero_values = {"z": 0.0 * self.a}
        self.zero_members = frozenset({0.0 * self.a, 2.0})
        self.zero_point = Nest(v=0.0 * self.a)


def _utc(moment: Any) -> Any:
    return moment.astimezone(UTC)  # the same instant, another zone


NESTED_HAND_SET = {
    "dict-value-int-for-float": ("rates", lambda ctx: {"a": 1}),
    "list-item-int-for-float": ("weights", lambda ctx: [1]),
    "nested-int-for-bool": ("flags", lambda ctx: {"on": 1}),
    "tuple-item-in-dict-int-for-float": ("pairs", lambda ctx: {"p": (1, 1)}),
    "dict-key-int-for-float": ("keys", lambda ctx: {1: "x"}),
    "dict-keys-in-another-order-int-for-float": ("table", lambda ctx: {2.0: "y", 1: "x"}),
    "set-member-int-for-float": ("members", lambda ctx: frozenset({1})),
    "deeply-nested-int-for-float": ("deep", lambda ctx: [[{"v": 1}]]),
    "datetime-same-instant-other-zone": ("when", lambda ctx: _utc(ctx.when)),
    "datetime-same-offset-other-tzinfo": (
        "when",
        lambda ctx: ctx.when.replace(tzinfo=timezone(timedelta(hours=1), "CET")),
    ),
    "time-other-zone": (
        "clock",
        lambda ctx: ctx.clock.replace(tzinfo=timezone(timedelta(hours=1), "CET")),
    ),
    "datetime-other-fold": ("wall", lambda ctx: ctx.wall.replace(fold=1)),
    "datetime-other-zoneinfo": ("local", lambda ctx: ctx.local.astimezone(LONDON)),
    "datetime-timezone-for-zoneinfo": (
        "local",
        lambda ctx: ctx.local.astimezone(timezone(timedelta(hours=1))),
    ),
    # A Decimal's exponent is part of its value (a price shows "1.00"), and
    # the journal keeps it: the resumed run would show what is derived.
    "decimal-other-exponent": ("price", lambda ctx: Decimal("1.0")),
    "decimal-other-exponent-in-a-list": ("prices", lambda ctx: [Decimal("1")]),
    # A float's sign of zero is part of its value (1 / -0.0 is -inf, it is
    # shown as "-0.0"), and the journal keeps it.
    "float-other-sign-of-zero": ("zero", lambda ctx: -0.0),
    "float-other-sign-of-zero-in-a-list": ("zeros", lambda ctx: [-0.0, 1.0]),
    "float-other-sign-of-zero-among-ints": ("mixed", lambda ctx: [1, -0.0]),
    "float-other-sign-of-zero-as-a-key": ("zero_keys", lambda ctx: {-0.0: "x"}),
    "float-other-sign-of-zero-as-a-value": ("zero_values", lambda ctx: {"z": -0.0}),
    "float-other-sign-of-zero-in-a-set": ("zero_members", lambda ctx: frozenset({-0.0, 2.0})),
    "float-other-sign-of-zero-in-a-dataclass": ("zero_point", lambda ctx: Nest(v=-0.0)),
}


def _set_by_hand_equal_and_refused(
    cls: type[Any], name: str, hand_set: Any
) -> ContextSerializationError:
    """Set ``name`` of a fresh ``cls`` by hand to a value ``==`` the derived
    one, and show the codec refuses it there (what ``==`` alone lets
    through); the refusal, for the caller's own checks."""
    context_to_dict(cls())  # what it derives is known
    context = cls()
    setattr(context, name, hand_set(context))
    assert getattr(context, name) == getattr(cls(), name)  # (what == alone lets through)

    with pytest.raises(ContextSerializationError) as refused:
        context_to_dict(context)

    assert refused.value.path == name
    assert "a resumed run would not have that value" in str(refused.value)
    return refused.value


@pytest.mark.parametrize(("name", "hand_set"), NESTED_HAND_SET.values(), ids=NESTED_HAND_SET)
def test_S14_a_derived_value_equal_but_of_other_types_inside_or_another_zone_is_refused(
    name: str, hand_set: Any
) -> None:
    """``==`` says equal — ``{"a": 1} == {"a": 1.0}``, two aware datetimes
    at one instant — yet the resumed run would hold what ``__post_init__``
    derives: a float where the first run had an int, the derived zone where
    it had another. The types are compared through containers (values and
    keys), and a moment's zone and fold with it."""
    refused = _set_by_hand_equal_and_refused(Nested, name, hand_set)

    assert any(why in str(refused) for why in ("other types", "another time zone",
                                                "another exponent", "other sign of zero"))


def test_S14_a_derived_value_equal_with_the_same_types_inside_and_zone_is_not_refused() -> None:
    """Set again to equal values of the same types inside, and moments in the
    same zone (another but equal ``timezone`` object): not refused."""
    context_to_dict(Nested())
    context = Nested()
    context.rates = {"a": 1.0}
    context.weights = [1.0]
    context.flags = {"on": True}
    context.pairs = {"p": (1, 1.0)}
    context.keys = {1.0: "x"}
    context.table = {1.0: "x", 2.0: "y"}  # (in the order derived: another is refused)
    context.members = frozenset({1.0})
    context.deep = [[{"v": 1.0}]]
    context.when = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))
    context.clock = time(12, tzinfo=timezone(timedelta(hours=1)))
    context.wall = datetime(2026, 11, 1, 1, 30, fold=0)
    context.local = datetime(2026, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo.no_cache("Europe/Paris"))
    context.zero = 0.0  # (its sign as derived)
    context.zeros = [0.0, 1.0]
    context.mixed = [1, 0.0]
    context.zero_keys = {0.0: "x"}
    context.zero_values = {"z": 0.0}
    context.zero_members = frozenset({0.0, 2.0})
    context.zero_point = Nest(v=0.0)

    context_to_dict(context)


def test_S14_a_derived_tuple_set_to_an_equal_list_inside_is_refused() -> None:
    """A list where a tuple is derived, inside a container: ``==`` already
    tells them apart (``[1] != (1,)``), so it is refused as another value."""
    context_to_dict(Nested())
    context = Nested()
    context.pairs = {"p": [1, 1.0]}  # type: ignore[dict-item]

    with pytest.raises(ContextSerializationError) as refused:
        context_to_dict(context)
    assert refused.value.path == "pairs"


# ----------------------------- derived: a dict's key order, dataclasses inside, NaN inside


@dataclasses.dataclass
class Point:
    x: Any = 0


@dataclasses.dataclass
class Memo:
    """Its ``cache`` is declared out of its value (``compare=False``)."""

    x: Any = 0
    cache: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(eq=False)
class Box:
    """Compared by identity, like a client: no two are equal."""

    x: Any = 0


@dataclasses.dataclass
class Shaped(SagaContext):
    """Derives a dict in key order, and dataclasses, from ``a``."""

    a: int = 1

    def __post_init__(self) -> None:
        self.table = {"a": self.a, "b": self.a + 1}
        self.nested_table = [{"a": self.a, "b": self.a + 1}]
        self.point = Point(float(self.a))
        self.points = [Point([self.a])]
        self.deep_point = Point(Point({"v": float(self.a)}))
        self.memo = Memo(float(self.a))
        self.box = [Box(self.a)]


SHAPED_HAND_SET = {
    "dict-keys-in-another-order": ("table", lambda ctx: {"b": 2, "a": 1}),
    "nested-dict-keys-in-another-order": ("nested_table", lambda ctx: [{"b": 2, "a": 1}]),
    "dataclass-field-int-for-float": ("point", lambda ctx: Point(1)),
    "dataclass-in-a-list-true-for-1": ("points", lambda ctx: [Point([True])]),
    "dataclass-in-a-dataclass-int-for-float": ("deep_point", lambda ctx: Point(Point({"v": 1}))),
}


@pytest.mark.parametrize(("name", "hand_set"), SHAPED_HAND_SET.values(), ids=SHAPED_HAND_SET)
def test_S14_a_derived_value_equal_but_reordered_or_unlike_in_a_dataclass_is_refused(
    name: str, hand_set: Any
) -> None:
    """``==`` says equal — a dict ignores its key order, a dataclass compares
    its fields with ``==`` — yet the resumed run would hold what
    ``__post_init__`` derives: the keys in the derived order (``list(d)``,
    iteration, JSON output differ), an int where the first run had a
    float inside a dataclass."""
    _set_by_hand_equal_and_refused(Shaped, name, hand_set)


def test_S14_a_derived_dict_reordered_by_hand_is_refused_telling_the_order() -> None:
    context_to_dict(Shaped())
    context = Shaped()
    context.table = {"b": 2, "a": 1}

    with pytest.raises(ContextSerializationError) as refused:
        context_to_dict(context)

    assert "keys in another order" in str(refused.value)


def test_S14_a_derived_dataclass_equal_field_by_field_or_not_compared_is_not_refused() -> None:
    """Dataclasses inside are looked into by their compared fields: one set
    again with the same values and types is not refused; nor a field declared
    ``compare=False`` (a cache: not part of its value), nor a dataclass
    compared by identity (``eq=False``: derived anew, never the same)."""
    context_to_dict(Shaped())
    context = Shaped()
    context.table = {"a": 1, "b": 2}
    context.nested_table = [{"a": 1, "b": 2}]
    context.point = Point(1.0)
    context.points = [Point([1])]
    context.deep_point = Point(Point({"v": 1.0}))
    context.memo.cache["seen"] = True
    context.box = [Box(2)]

    context_to_dict(context)
    check_serializable(context)


SHAPED_CHANGE = ["dict-keys-in-another-order"]


class Reorder(SagaStepHandler[Shaped, None]):
    async def act(self, context: Shaped, /) -> None:
        CALLS.append("reorder")
        name, hand_set = SHAPED_HAND_SET[SHAPED_CHANGE[0]]
        setattr(context, name, hand_set(context))


class LookShaped(SagaStepHandler[Shaped, None]):
    async def act(self, context: Shaped, /) -> None:
        SEEN.append({"keys": list(context.table), "point": repr(context.point)})
        if CRASH[0]:
            raise Crash


class ShapedSaga(Saga[Shaped]):
    steps: ClassVar[list[Any]] = [Reorder, LookShaped]


@pytest.mark.parametrize("change", ["dict-keys-in-another-order", "dataclass-field-int-for-float"])
async def test_S14_a_step_that_reorders_or_retypes_a_derived_value_fails_at_its_write(
    durable_store: Any, change: str
) -> None:
    """Not a crash and a resume that shows the next step ``["a", "b"]`` where
    the first run showed it ``["b", "a"]`` (``Point(x=1.0)`` where it showed
    ``Point(x=1)``): the write of the step that made the change is refused,
    naming the attribute, and the next step never runs."""
    SHAPED_CHANGE[0] = change
    with pytest.raises(SagaFailed) as info:
        await ShapedSaga(store=durable_store).run(Shaped(), saga_id="r-1")

    error: BaseException | None = info.value
    while error is not None and not isinstance(error, ContextSerializationError):
        error = error.__cause__
    assert isinstance(error, ContextSerializationError), info.value
    assert error.path == SHAPED_HAND_SET[change][0]
    assert CALLS == ["reorder"]
    assert SEEN == []


@dataclasses.dataclass
class Ratios(SagaContext):
    """Derives NaNs inside containers: new NaN objects at each read back,
    or the one ``math.nan`` object."""

    a: int = 1

    def __post_init__(self) -> None:
        self.fresh = [float("nan"), float(self.a)]
        self.by_name = {"r": float("nan")}
        self.point = Point(float("nan"))
        self.members = frozenset({float("nan"), float(self.a)})
        self.shared = [math.nan]


def test_S14_a_nan_in_a_derived_container_is_the_same_nan_and_is_compared() -> None:
    """A NaN derived again is another NaN object, so ``[nan] == [nan]`` is
    false (``==`` on a list only short-cuts on identity): a NaN where a NaN
    is derived is the same value — not refused, and the attribute is still
    compared, so another value set by hand there is refused rather than
    silently replaced by the derived one on resume."""
    context_to_dict(Ratios())  # what it derives is known
    context = Ratios()
    context.shared = [float("nan")]  # another NaN object than the math.nan derived
    context.fresh = [float("nan"), 1.0]
    context_to_dict(context)

    for name, other in [
        ("fresh", [0.5, 1.0]),
        ("by_name", {"r": 0.5}),
        ("point", Point(0.5)),
        ("members", frozenset({0.5, 1.0})),
        ("shared", [-math.nan]),  # a NaN of the other sign: math.copysign tells them apart
    ]:
        context = Ratios()
        setattr(context, name, other)
        with pytest.raises(ContextSerializationError) as refused:
            context_to_dict(context)
        assert refused.value.path == name
