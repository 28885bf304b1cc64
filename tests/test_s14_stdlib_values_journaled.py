"""Plain data of the standard library is journaled exactly (S14), and read
back without running code the journal names (S12).

A ``typing.NamedTuple`` / ``collections.namedtuple`` instance, the
``ipaddress`` values, pure paths (and the concrete path of this OS), an
``OrderedDict``, a ``deque`` (its ``maxlen`` too), a ``range`` and a
``complex`` were refused at the first write with advice meant for a client
object ("keep a client, connection, lock or function on the step"). Each
now comes back of the same class, equal, in a typed position (annotated with
its class), an untyped one (``Any``) and nested (a list of them, a dict's
value, a field of a nested dataclass) — and after a crash and a resume.
A NamedTuple is rebuilt with ``tuple.__new__`` (never its ``__new__`` or
``_make``, which a class may override), its class looked up by name among the
modules imported, as Enum and dataclass classes are; the other classes are
built from a fixed list, never from a class name the journal gives.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import pathlib
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple

import pytest
from context_crash_app import assert_identical

from fallback_saga import (
    ContextDecodeError,
    ContextSerializationError,
    Saga,
    SagaContext,
    SagaStepHandler,
    SQLiteSagaStore,
)
from fallback_saga.codec import decode_context, encode_context
from fallback_saga.context import take_snapshot
from fallback_saga.models import first_difference
from fallback_saga.sameness import differs


class Point(NamedTuple):
    x: int
    y: Decimal


class Tagged(NamedTuple):
    """Fields of types a plain list cannot tell apart without their hints."""

    label: str
    at: Point
    rest: Any = None


Pair = collections.namedtuple("Pair", "a b")

NEW_CALLS: list[str] = []


class _GuardedFields(NamedTuple):
    a: int


class Guarded(_GuardedFields):
    """Its ``__new__`` and ``_make`` are code the journal must not run."""

    __slots__ = ()

    def __new__(cls, a: int) -> Guarded:
        NEW_CALLS.append("__new__")
        return super().__new__(cls, a)

    @classmethod
    def _make(cls, iterable: Any) -> Guarded:
        NEW_CALLS.append("_make")
        return super()._make(iterable)


class NotNamed(tuple[Any, ...]):
    """A tuple subclass that is no namedtuple."""


ON_THIS_OS = type(pathlib.Path())
OTHER_OS = pathlib.WindowsPath if ON_THIS_OS is pathlib.PosixPath else pathlib.PosixPath

VALUES: dict[str, tuple[Any, Any]] = {
    "namedtuple": (Point, Point(1, Decimal("1.10"))),
    "namedtuple-nested": (Tagged, Tagged("a", Point(2, Decimal("0.5")), (1, 2))),
    "collections-namedtuple": (Pair, Pair(1, Decimal("2.50"))),
    "ipv4address": (ipaddress.IPv4Address, ipaddress.IPv4Address("10.0.0.1")),
    "ipv6address": (ipaddress.IPv6Address, ipaddress.IPv6Address("fe80::1%eth0")),
    "ipv4network": (ipaddress.IPv4Network, ipaddress.IPv4Network("10.0.0.0/8")),
    "ipv6network": (ipaddress.IPv6Network, ipaddress.IPv6Network("fe80::/64")),
    "ipv4interface": (ipaddress.IPv4Interface, ipaddress.IPv4Interface("10.0.0.1/8")),
    "ipv6interface": (ipaddress.IPv6Interface, ipaddress.IPv6Interface("fe80::1/64")),
    "pureposixpath": (pathlib.PurePosixPath, pathlib.PurePosixPath("/srv/a b/c.txt")),
    "purewindowspath": (pathlib.PureWindowsPath, pathlib.PureWindowsPath(r"C:\data\x.csv")),
    "path": (ON_THIS_OS, ON_THIS_OS("/tmp/x")),
    "ordereddict": (
        collections.OrderedDict,
        collections.OrderedDict([("b", 1), (2, Decimal("3"))]),
    ),
    "deque": (collections.deque, collections.deque([1, Decimal("2")], maxlen=5)),
    "deque-unbounded": (collections.deque, collections.deque(["a"])),
    "range": (range, range(1, 10, 3)),
    "complex": (complex, complex(1.5, -0.0)),
}


def _exact(back: Any, value: Any) -> None:
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, collections.deque):
        assert back.maxlen == value.maxlen
        assert_identical(list(back), list(value))
    elif isinstance(value, tuple | collections.OrderedDict):
        assert_identical(back, value)
    elif isinstance(value, complex):
        assert repr(back) == repr(value)  # (the sign of a zero too)


def _round_trip(cls: type, context: Any) -> Any:
    text = json.dumps(encode_context(context), allow_nan=False)
    return decode_context(cls, json.loads(text))


@dataclasses.dataclass
class Inner:
    v: Any


@pytest.mark.parametrize("name", list(VALUES))
@pytest.mark.parametrize("position", ["typed", "untyped", "object", "list", "dict", "nested"])
def test_S14_a_stdlib_value_comes_back_of_its_class_and_value(name: str, position: str) -> None:
    tp, value = VALUES[name]
    hint: Any = {
        "typed": tp,
        "untyped": Any,
        "object": object,
        "list": list[tp],  # type: ignore[valid-type]
        "dict": dict[str, tp],  # type: ignore[valid-type]
        "nested": Inner,
    }[position]
    held: Any = {"list": [value, value], "dict": {"k": value}, "nested": Inner(value)}.get(
        position, value
    )
    cls = dataclasses.make_dataclass("C", [("v", hint)])
    back = _round_trip(cls, cls(held)).v
    if position == "list":
        assert len(back) == 2
        _exact(back[0], value)
        _exact(back[1], value)
    elif position == "dict":
        _exact(back["k"], value)
    elif position == "nested":
        assert type(back) is Inner
        _exact(back.v, value)
    else:
        _exact(back, value)


def test_S14_a_namedtuple_is_journaled_by_its_field_hints_in_a_typed_position() -> None:
    cls = dataclasses.make_dataclass("C", [("v", Point)])
    assert encode_context(cls(Point(1, Decimal("1.10")))) == {"v": [1, "1.10"]}


def test_S14_a_namedtuple_where_a_tuple_is_annotated_is_not_read_back_a_tuple() -> None:
    for hint in (tuple[int, Decimal], tuple[Any, ...], Any):
        cls = dataclasses.make_dataclass("C", [("v", hint)])
        back = _round_trip(cls, cls(Point(1, Decimal("2")))).v
        assert type(back) is Point
    cls = dataclasses.make_dataclass("C", [("v", Point)])
    back = _round_trip(cls, cls((1, Decimal("2")))).v  # a tuple where a Point is annotated
    assert type(back) is tuple


def test_S14_a_namedtuple_in_a_union_is_not_taken_for_another_member() -> None:
    for hint, value in (
        (Point | list[Any], [1, Decimal("2")]),
        (Point | list[Any], Point(1, Decimal("2"))),
        (list[Any] | Point, Point(1, Decimal("2"))),
        (Point | None, None),
        (Point | None, Point(1, Decimal("2"))),
    ):
        cls = dataclasses.make_dataclass("C", [("v", hint)])
        back = _round_trip(cls, cls(value)).v
        assert type(back) is type(value)
        assert_identical(back, value)


def test_S12_a_namedtuple_is_read_back_without_running_its_new_or_make() -> None:
    for hint in (Guarded, Any):
        cls = dataclasses.make_dataclass("C", [("v", hint)])
        data = json.loads(json.dumps(encode_context(cls(Guarded(7)))))
        NEW_CALLS.clear()
        back = decode_context(cls, data).v
        assert NEW_CALLS == []
        assert type(back) is Guarded
        assert back == (7,)


def test_S14_a_namedtuple_snapshot_keeps_its_class_and_differs_from_a_tuple() -> None:
    ctx = Inner([Point(1, Decimal("2"))])
    snapshot = take_snapshot(ctx)
    ctx.v.append(Point(3, Decimal("4")))
    snapshot.restore(ctx)
    assert_identical(ctx.v, [Point(1, Decimal("2"))])
    assert differs(Point(1, 2), (1, 2)) is True
    assert differs([Point(1, 2)], [(1, 2)]) is True
    assert differs({"a": Point(1, 2)}, {"a": Pair(1, 2)}) is True
    assert differs(Point(1, 2), Point(1, 2)) is False


def test_S14_a_deque_of_another_maxlen_differs() -> None:
    a = collections.deque([1], maxlen=5)
    assert differs(a, collections.deque([1], maxlen=3)) is True
    assert differs([a], [collections.deque([True], maxlen=5)]) is True
    assert differs(a, collections.deque([1], maxlen=5)) is False
    ctx = Inner(a)
    snapshot = take_snapshot(ctx)
    a.append(2)
    snapshot.restore(ctx)
    _exact(ctx.v, collections.deque([1], maxlen=5))


def _tagged(tag: str, payload: Any) -> dict[str, Any]:
    return {"v": {"$fs": [tag, payload]}}


def _untyped() -> type:
    return dataclasses.make_dataclass("C", [("v", Any)])


@pytest.mark.parametrize(
    ("data", "said"),
    [
        # a class under the namedtuple tag that is no namedtuple
        (_tagged("namedtuple", [f"{__name__}:NotNamed", [1]]), "is not a namedtuple"),
        (_tagged("namedtuple", ["builtins:tuple", [1]]), "is not a namedtuple"),
        (_tagged("namedtuple", [f"{__name__}:Inner", [1]]), "is not a namedtuple"),
        # a function named as a class
        (_tagged("namedtuple", [f"{__name__}:_untyped", []]), "there is no class"),
        (_tagged("namedtuple", ["os:system", ["true"]]), "there is no class"),
        # another number of fields than the class has
        (_tagged("namedtuple", [f"{__name__}:Point", [1]]), "2 fields"),
        # not imported: never imported on the journal's say
        (_tagged("namedtuple", ["shelve_never_imported:X", [1]]), "has not imported"),
    ],
)
def test_S12_a_namedtuple_journal_naming_what_is_no_namedtuple_is_refused(
    data: Any, said: str
) -> None:
    with pytest.raises(ContextDecodeError, match=said):
        decode_context(_untyped(), data)


@pytest.mark.parametrize(
    "data",
    [
        # an allow-listed tag never takes a class name from the journal
        _tagged("path", ["os:system", "true"]),
        _tagged("path", ["PurePosixPath", 1]),
        _tagged("ipv4address", ["os:system", "true"]),
        _tagged("ordereddict", "os:system"),
        _tagged("deque", [["x"], "os:system"]),
        _tagged("range", ["os:system"]),
        _tagged("complex", ["1", "2"]),
        # an unknown tag naming a class
        _tagged("os:system", "true"),
    ],
)
def test_S12_a_stdlib_value_journal_naming_a_class_off_the_list_is_refused(data: Any) -> None:
    with pytest.raises(ContextDecodeError):
        decode_context(_untyped(), data)


def test_S14_a_concrete_path_of_another_os_is_refused_on_reading_naming_the_pure_one() -> None:
    other = "WindowsPath" if OTHER_OS is pathlib.WindowsPath else "PosixPath"
    with pytest.raises(ContextDecodeError, match=f"Pure{other}"):
        decode_context(_untyped(), _tagged("path", [other, "/tmp/x"]))


def test_S14_a_windows_path_that_reads_back_as_another_from_its_text_is_refused() -> None:
    incomplete = pathlib.PureWindowsPath("//server/")  # (str: "\\\\server\\", read: "\\server")
    if str(pathlib.PureWindowsPath(str(incomplete))) == str(incomplete):
        pytest.skip("this Python reads an incomplete UNC path back from its text")
    with pytest.raises(ContextSerializationError, match="reads back from its text as another"):
        encode_context(_untyped()(incomplete))


def test_S12_a_namedtuple_with_attributes_beyond_its_fields_is_refused_naming_them() -> None:
    class_ = _OpenPoint(1, 2)
    class_.note = "x"  # type: ignore[attr-defined]
    cls = dataclasses.make_dataclass("C", [("v", Any)])
    with pytest.raises(ContextSerializationError, match="'note'"):
        encode_context(cls(class_))


class _OpenPoint(collections.namedtuple("_OpenPoint", "x y")):
    """A namedtuple subclass without ``__slots__``: its instances have a ``__dict__``."""


def test_S12_a_namedtuple_defined_inside_a_function_is_refused_at_the_first_write() -> None:
    Local = collections.namedtuple("Local", "a")
    Local.__qualname__ = "f.<locals>.Local"
    cls = dataclasses.make_dataclass("C", [("v", Any)])
    with pytest.raises(ContextSerializationError, match="cannot be found again by its name"):
        encode_context(cls(Local(1)))


class _Resource:
    """Not data: a client."""


class _Counts(collections.Counter[str]):
    pass


def test_S12_plain_data_still_refused_says_what_to_convert_it_to_not_to_keep_a_client() -> None:
    cls = dataclasses.make_dataclass("C", [("v", Any)])
    for value, convert in (
        (collections.Counter("ab"), "dict"),
        (collections.defaultdict(list), "dict"),
        (NotNamed((1, 2)), "tuple"),
        (complex(float("nan"), 0), "NaN"),
    ):
        with pytest.raises(ContextSerializationError) as refused:
            encode_context(cls(value))
        assert "keep a client" not in str(refused.value)
        assert convert in str(refused.value)
    with pytest.raises(ContextSerializationError, match="keep a client"):
        encode_context(cls(_Resource()))


# --------------------------------------------------------------------------- a resume


class Crash(BaseException):
    """The process dies after the first step."""


@dataclasses.dataclass
class Network(SagaContext):
    point: Point = dataclasses.field(default_factory=lambda: Point(0, Decimal("0")))
    anything: Any = None
    addresses: list[ipaddress.IPv4Address] = dataclasses.field(default_factory=list)


SEEN: list[Network] = []
CRASH = [True]


class Fill(SagaStepHandler[Network, None]):
    async def act(self, context: Network, /) -> None:
        context.point = Point(3, Decimal("3.30"))
        context.anything = [
            Pair(1, Tagged("t", Point(4, Decimal("4.40")))),
            {"net": ipaddress.IPv6Network("fe80::/64"), "r": range(0, 5, 2)},
            collections.OrderedDict([(2, collections.deque([1j], maxlen=3))]),
            (pathlib.PurePosixPath("/a"), pathlib.PureWindowsPath("C:/b"), ON_THIS_OS("/c")),
        ]
        context.addresses.append(ipaddress.IPv4Address("192.0.2.1"))


class Use(SagaStepHandler[Network, None]):
    async def act(self, context: Network, /) -> None:
        SEEN.append(dataclasses.replace(context))
        if CRASH[0]:
            raise Crash


class NetworkSaga(Saga[Network]):
    steps: ClassVar[list[Any]] = [Fill, Use]


async def test_S14_stdlib_values_are_exact_after_a_crash_and_a_resume(tmp_path: Any) -> None:
    SEEN.clear()
    CRASH[0] = True
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        with pytest.raises(Crash):
            await NetworkSaga(store=store).run(Network(), saga_id="n-1")
    CRASH[0] = False
    async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
        await NetworkSaga(store=store).resume("n-1")
    first, resumed = SEEN
    assert_identical(resumed.point, first.point)
    assert_identical(resumed.addresses, first.addresses)
    assert type(resumed.anything) is list
    for back, value in zip(resumed.anything, first.anything, strict=True):
        _exact(back, value)
    deque_back = resumed.anything[2][2]
    _exact(deque_back, collections.deque([1j], maxlen=3))
    assert type(resumed.anything[3][2]) is ON_THIS_OS


def test_S15_a_group_member_writing_an_equal_value_of_another_kind_inside_is_a_write() -> None:
    """``first_difference`` tells a group member's writes (``changed_fields``):
    equal by ``==`` is not the same for these, and would be a write lost."""
    used = pathlib.PurePosixPath("/a/b")
    str(used), hash(used)  # (caches in its slots: not part of its value)
    assert first_difference(used, pathlib.PurePosixPath("/a/b")) is None
    address = ipaddress.IPv4Address("10.0.0.1")
    assert first_difference(address, ipaddress.IPv4Address(167772161)) is None
    for before, after in (
        (Point(1, Decimal("1")), Point(1, 1)),  # type: ignore[arg-type]
        (Pair(1, 2), Pair(1, 2.0)),
        ([Point(1, Decimal("1"))], [Point(True, Decimal("1"))]),
        (collections.deque([1], maxlen=2), collections.deque([1], maxlen=3)),
        (collections.deque([1]), collections.deque([1.0])),
        (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)),
        (collections.OrderedDict(a=1), collections.OrderedDict(a=1.0)),
        (range(0), range(2, 2)),
        (pathlib.PureWindowsPath("C:/A"), pathlib.PureWindowsPath("c:/a")),
    ):
        assert first_difference(before, after) is not None, (before, after)
        assert differs(before, after) is True, (before, after)
    # (as for a float's sign of zero and a Decimal's exponent)
    for before, after in (
        (Point(1, Decimal("1.0")), Point(1, Decimal("1.00"))),
        (complex(0.0, 1), complex(-0.0, 1)),
        (Pair(1, 0.0), Pair(1, -0.0)),
        (collections.deque([0.0]), collections.deque([-0.0])),
    ):
        assert first_difference(before, after) is not None, (before, after)
        assert differs(before, after) is True, (before, after)
