"""SagaContext: the JSON-safe journal form (to_dict/from_dict) and the deep
snapshot/restore that Fallback relies on (S1, S2)."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fallback_saga import ContextDecodeError, ContextSerializationError, SagaContext
from fallback_saga.context import take_snapshot


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Priority(Enum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Line:
    sku: str
    qty: int
    price: Decimal


@dataclasses.dataclass
class Everything(SagaContext):
    text: str
    number: int
    ratio: float
    flag: bool
    nothing: None
    maybe_int: Optional[int]  # noqa: UP045 -- the spelling under test
    maybe_day: date | None
    tags: list[str]
    scores: dict[str, float]
    by_id: dict[int, str]
    pair: tuple[int, str]
    many: tuple[int, ...]
    line: Line
    lines: list[Line]
    ident: uuid.UUID
    at: datetime
    naive_at: datetime
    day: date
    amount: Decimal
    color: Color
    priority: Priority
    maybe_line: Line | None = None


IST = timezone(timedelta(hours=5, minutes=30))


def everything(**changes: Any) -> Everything:
    values: dict[str, Any] = {
        "text": "héllo \"quoted\" \n",
        "number": -42,
        "ratio": 0.1,
        "flag": True,
        "nothing": None,
        "maybe_int": 7,
        "maybe_day": date(2024, 2, 29),
        "tags": ["a", "b"],
        "scores": {"x": 1.5, "y": -0.0},
        "by_id": {1: "one", 20: "twenty", -3: "minus three"},
        "pair": (1, "a"),
        "many": (1, 2, 3),
        "line": Line("sku-1", 2, Decimal("9.99")),
        "lines": [Line("a", 1, Decimal("0.10")), Line("b", 3, Decimal("1E+2"))],
        "ident": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "at": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=IST),
        "naive_at": datetime(2024, 5, 1, 12, 30),
        "day": date(1999, 12, 31),
        "amount": Decimal("12345678901234567890.123456789012345678901"),
        "color": Color.BLUE,
        "priority": Priority.HIGH,
    }
    values.update(changes)
    return Everything(**values)


def assert_json_only(value: Any, path: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path}: key {key!r} is not text"
            assert_json_only(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_json_only(item, f"{path}[{index}]")
    else:
        assert type(value) in (str, int, float, bool, type(None)), f"{path}: {value!r}"


def round_trip(ctx: SagaContext) -> Any:
    return type(ctx).from_dict(json.loads(json.dumps(ctx.to_dict())))


# --------------------------------------------------------------------------- to_dict / from_dict


@pytest.mark.parametrize(
    "ctx",
    [
        everything(),
        everything(maybe_int=None, maybe_day=None, maybe_line=Line("m", 1, Decimal("1"))),
        everything(tags=[], scores={}, by_id={}, many=(), lines=[]),
    ],
    ids=["full", "optional-variants", "empty-containers"],
)
def test_round_trip_of_every_supported_type(ctx: Everything) -> None:
    data = ctx.to_dict()
    assert_json_only(data)
    assert set(data) == {field.name for field in dataclasses.fields(Everything)}

    back = round_trip(ctx)

    assert back == ctx
    assert type(back) is Everything


def test_round_trip_keeps_types_exactly() -> None:
    back = round_trip(everything())

    assert type(back.pair) is tuple
    assert type(back.many) is tuple
    assert all(type(key) is int for key in back.by_id)
    assert type(back.ident) is uuid.UUID
    assert type(back.line) is Line
    assert type(back.lines[1]) is Line
    assert back.color is Color.BLUE
    assert back.priority is Priority.HIGH
    assert type(back.flag) is bool
    assert type(back.ratio) is float


def test_round_trip_keeps_time_zone_and_naive_datetimes() -> None:
    back = round_trip(everything())

    assert back.at.utcoffset() == timedelta(hours=5, minutes=30)
    assert back.at == everything().at
    assert back.at.microsecond == 123456
    assert back.naive_at.tzinfo is None
    assert type(back.day) is date


@pytest.mark.parametrize(
    "text", ["0.1", "1.10", "-0", "1E+2", "12345678901234567890.123456789012345678901"]
)
def test_round_trip_of_decimal_is_exact(text: str) -> None:
    back = round_trip(everything(amount=Decimal(text)))

    assert type(back.amount) is Decimal
    assert str(back.amount) == text


def test_float_ratio_survives_json_exactly() -> None:
    value = 0.1 + 0.2
    assert round_trip(everything(ratio=value)).ratio == value


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"tags": ["ok", object()]}, "tags[1]"),
        ({"scores": {"x": float("nan")}}, "scores"),
        ({"ratio": float("inf")}, "ratio"),
        ({"lines": [Line("a", 1, Decimal(1)), Line("b", 2, object())]}, "lines[1].price"),  # type: ignore[arg-type]
        # (bytes in a Decimal field, a tuple key in a dict[int, str] field: carried
        # exactly, tagged — tests/test_exact_typed_values.py)
    ],
)
def test_to_dict_refuses_what_json_cannot_carry_naming_the_path(
    changes: dict[str, Any], path: str
) -> None:
    ctx = everything(**changes)

    with pytest.raises(ContextSerializationError) as info:
        ctx.to_dict()

    assert info.value.path.startswith(path)
    assert path in str(info.value)


def corrupt(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data: Any = everything().to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("data", "path_part"),
    [
        (corrupt(("number",), "five"), "number"),
        (corrupt(("number",), True), "number"),
        (corrupt(("flag",), "yes"), "flag"),
        (corrupt(("lines", 0, "qty"), "many"), "lines[0].qty"),
        (corrupt(("ident",), "not-a-uuid"), "ident"),
        (corrupt(("color",), "green"), "color"),
        (corrupt(("priority",), 99), "priority"),
        (corrupt(("at",), "yesterday"), "at"),
        (corrupt(("day",), 20240101), "day"),
        (corrupt(("amount",), "twelve"), "amount"),
        (corrupt(("by_id",), {"one": "x"}), "by_id"),
        (corrupt(("pair",), [1, "a", "extra"]), "pair"),
        (corrupt(("tags",), "not a list"), "tags"),
        (corrupt(("line",), ["not", "an", "object"]), "line"),
        (corrupt(("maybe_int",), "seven"), "maybe_int"),
        (corrupt(("unknown_field",), 1), "<context>"),
    ],
)
def test_from_dict_reports_corrupt_data_with_the_path(data: dict[str, Any], path_part: str) -> None:
    with pytest.raises(ContextDecodeError) as info:
        Everything.from_dict(data)

    assert path_part in info.value.path
    assert path_part in str(info.value)


def test_from_dict_reports_a_missing_field() -> None:
    data = everything().to_dict()
    del data["amount"]

    with pytest.raises(ContextDecodeError, match="amount"):
        Everything.from_dict(data)


@pytest.mark.parametrize("data", [[], "text", None, 42])
def test_from_dict_refuses_data_that_is_not_an_object(data: Any) -> None:
    with pytest.raises(ContextDecodeError):
        Everything.from_dict(data)


def test_decode_errors_are_value_errors_and_serialization_errors_type_errors() -> None:
    assert issubclass(ContextDecodeError, ValueError)
    assert issubclass(ContextSerializationError, TypeError)


# --------------------------------------------------------------------------- snapshot vs deepcopy


@dataclasses.dataclass
class Bag(SagaContext):
    """A context whose ``data`` field may hold anything."""

    data: Any = None
    other: Any = None


def test_snapshot_keeps_shared_references_shared_like_deepcopy() -> None:
    shared = ["x"]
    ctx = Bag(data={"a": shared, "b": shared}, other=shared)
    reference = copy.deepcopy(ctx)
    snapshot = take_snapshot(ctx)

    shared.append("mutated")
    ctx.data["b"] = []
    snapshot.restore(ctx)

    assert ctx == Bag(data={"a": ["x"], "b": ["x"]}, other=["x"])
    assert ctx.data["a"] is ctx.data["b"] is ctx.other
    assert reference.data["a"] is reference.data["b"] is reference.other


def test_snapshot_handles_cycles() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    node: dict[str, Any] = {"name": "n"}
    node["self"] = node
    ctx = Bag(data=loop, other=node)
    snapshot = take_snapshot(ctx)

    loop.append(2)
    node["name"] = "changed"
    snapshot.restore(ctx)

    assert len(ctx.data) == 2
    assert ctx.data[0] == 1
    assert ctx.data[1] is ctx.data
    assert ctx.other["name"] == "n"
    assert ctx.other["self"] is ctx.other
    assert ctx.data is not loop


def test_snapshot_keeps_a_reference_to_the_context_itself_live() -> None:
    ctx = Bag(data=[1])
    ctx.other = {"owner": ctx}
    snapshot = take_snapshot(ctx)

    ctx.data.append(2)
    snapshot.restore(ctx)

    assert ctx.data == [1]
    assert ctx.other["owner"] is ctx


@dataclasses.dataclass(slots=True)
class Point:
    x: int
    ys: list[int]


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = [1]


def test_snapshot_of_slots_dataclasses_and_slotted_objects() -> None:
    point = Point(1, [2, 3])
    slotted = Slotted()
    ctx = Bag(data=point, other=slotted)
    snapshot = take_snapshot(ctx)

    point.x = 10
    point.ys.append(4)
    slotted.a.append(2)
    slotted.b = "set later"
    snapshot.restore(ctx)

    assert ctx.data == Point(1, [2, 3])
    assert ctx.other.a == [1]
    assert not hasattr(ctx.other, "b")


def test_snapshot_of_a_slots_context_restores_unset_slots_as_unset() -> None:
    class SlotContext(SagaContext):
        __slots__ = ("items", "note")

        def __init__(self) -> None:
            self.items = [1]

    ctx = SlotContext()
    snapshot = take_snapshot(ctx)

    ctx.items.append(2)
    ctx.note = "added"
    snapshot.restore(ctx)

    assert ctx.items == [1]
    assert not hasattr(ctx, "note")


class SharedHandle:
    """Like a connection pool: deepcopy hands back the same object."""

    copies = 0

    def __init__(self) -> None:
        self.state: list[int] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedHandle:
        SharedHandle.copies += 1
        return self


class Versioned:
    """Custom __deepcopy__ that transforms the copy."""

    def __init__(self, values: list[int]) -> None:
        self.values = values
        self.generation = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Versioned:
        clone = Versioned(copy.deepcopy(self.values, memo))
        clone.generation = self.generation + 1
        return clone


def test_snapshot_honours_custom_deepcopy() -> None:
    handle = SharedHandle()
    versioned = Versioned([1, 2])
    ctx = Bag(data=handle, other=versioned)
    before = SharedHandle.copies
    expected = copy.deepcopy(ctx)
    snapshot = take_snapshot(ctx)
    snapshot.restore(ctx)

    assert SharedHandle.copies > before + 1  # deepcopy above, then the snapshot
    assert ctx.data is handle
    assert expected.data is handle
    assert ctx.other is not versioned
    assert ctx.other.values == [1, 2]
    assert ctx.other.generation >= expected.other.generation >= 1


class WithState:
    def __init__(self, items: list[int]) -> None:
        self.items = items
        self.cache = {"derived": sum(items)}

    def __getstate__(self) -> dict[str, Any]:
        return {"items": self.items}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.items = state["items"]
        self.cache = {"derived": sum(self.items), "rebuilt": True}


def test_snapshot_honours_getstate_and_setstate() -> None:
    ctx = Bag(data=WithState([1, 2]))
    expected = copy.deepcopy(ctx.data)
    snapshot = take_snapshot(ctx)

    ctx.data.items.append(3)
    snapshot.restore(ctx)

    assert ctx.data.items == [1, 2]
    assert ctx.data.cache == expected.cache == {"derived": 3, "rebuilt": True}


def test_snapshot_of_library_containers_keeps_types_and_state() -> None:
    counts = collections.defaultdict(list)
    counts["a"].append(1)
    ctx = Bag(
        data={
            "ordered": collections.OrderedDict([("x", [1]), ("y", [2])]),
            "default": counts,
            "queue": collections.deque([[1], [2]], maxlen=5),
            "counter": collections.Counter("aab"),
            "set": {1, 2},
            "frozen": frozenset({(1, 2)}),
            "tuple": ([1], "t"),
            "enum": Color.RED,
        }
    )
    expected = copy.deepcopy(ctx.data)
    snapshot = take_snapshot(ctx)

    d = ctx.data
    d["ordered"]["x"].append(9)
    d["ordered"].move_to_end("x")
    d["default"]["a"].append(9)
    d["default"]["new"].append(1)
    d["queue"][0].append(9)
    d["queue"].append([3])
    d["counter"]["z"] += 5
    d["set"].add(3)
    d["tuple"][0].append(9)
    snapshot.restore(ctx)

    assert ctx.data == expected
    assert list(ctx.data["ordered"]) == ["x", "y"]
    assert ctx.data["default"].default_factory is list
    assert ctx.data["queue"].maxlen == 5
    assert type(ctx.data["counter"]) is collections.Counter
    assert ctx.data["enum"] is Color.RED


def test_snapshot_can_be_restored_more_than_once() -> None:
    ctx = Bag(data={"n": [1]})
    snapshot = take_snapshot(ctx)

    ctx.data["n"].append(2)
    snapshot.restore(ctx)
    ctx.data["n"].append(3)
    snapshot.restore(ctx)

    assert ctx.data == {"n": [1]}


def test_snapshot_refuses_to_restore_into_another_context() -> None:
    snapshot = take_snapshot(Bag(data=[1]))

    with pytest.raises(ValueError, match="snapshot"):
        snapshot.restore(Bag(data=[1]))


# --------------------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_like = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=30,
)


@dataclasses.dataclass
class Holder(SagaContext):
    data: Any
    point: Point
    label: str = "label"


def scramble(value: Any) -> None:
    """Mutate every list and dict inside ``value`` in place."""
    if isinstance(value, list):
        for item in value:
            scramble(item)
        value.append("scrambled")
        value.reverse()
    elif isinstance(value, dict):
        for item in list(value.values()):
            scramble(item)
        for key in list(value)[:1]:
            value[key] = "replaced"
        value["\x00scrambled"] = [None]


@settings(max_examples=150, deadline=None)
@given(data=json_like, ys=st.lists(st.integers(), max_size=5))
def test_property_snapshot_mutate_restore_gives_back_the_original(data: Any, ys: list[int]) -> None:
    ctx = Holder(data=data, point=Point(0, ys))
    original = copy.deepcopy(ctx)
    snapshot = take_snapshot(ctx)

    scramble(ctx.data)
    ctx.point.ys.append(99)
    ctx.point.x = 1
    ctx.label = "changed"
    snapshot.restore(ctx)

    assert ctx == original


@settings(max_examples=150, deadline=None)
@given(data=json_like)
def test_property_journal_form_round_trips_json_like_data(data: Any) -> None:
    ctx = Holder(data=data, point=Point(1, [2]))

    assert round_trip(ctx) == ctx


class _CountsTogether(list):  # type: ignore[type-arg]
    """The registry of frozen context classes, instrumented: the first two
    threads that count it each wait, having counted, for the other to count
    too (at most ``bound`` seconds: a registry that lets one thread at a time
    in never brings the second) — the overlap a GIL switch between two
    threads makes now and then, made every time."""

    def __init__(self, items: list[type], bound: float) -> None:
        import threading

        super().__init__(items)
        self.barrier = threading.Barrier(2, timeout=bound)
        self.waits = 2

    def __len__(self) -> int:
        import threading

        counted = super().__len__()
        if self.waits > 0:
            self.waits -= 1
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
        return counted


def test_S13_two_threads_freezing_new_context_classes_at_once_keep_each_its_own_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished saga's record (MemorySagaStore) keeps its context as a
    frozen tuple naming its class by a small index. Two threads (a sync app's
    requests, each in its own asyncio.run) freezing contexts of two classes
    never seen before, at once, must get an index each: the record must
    read back as its own class's context, never as the other's."""
    import threading

    from fallback_saga import context as context_module

    @dataclasses.dataclass
    class Refund(SagaContext):
        order_id: str
        cents: int

    @dataclasses.dataclass
    class Shipment(SagaContext):
        order_id: str
        parcels: int

    contexts = [Refund("r-1", 999), Shipment("s-1", 3)]
    for context in contexts:
        take_snapshot(context)  # learns that each class can be frozen
    monkeypatch.setattr(
        context_module, "_FROZEN_TYPES", _CountsTogether(context_module._FROZEN_TYPES, 2.0)
    )
    frozen: list[Any] = [None, None]

    def finish(index: int) -> None:
        frozen[index] = context_module.freeze_context(contexts[index])

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert context_module.frozen_to_dict(frozen[0]) == context_module.context_to_dict(contexts[0])
    assert context_module.frozen_to_dict(frozen[1]) == context_module.context_to_dict(contexts[1])
    assert context_module.type_at(frozen[0][0]) is Refund
    assert context_module.type_at(frozen[1][0]) is Shipment
