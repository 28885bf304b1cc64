"""One saga per context kind, for the crash/resume tests of test_context_models.py.

Each saga is ``Fill`` (writes values of many types into the context), then
``Crash``. In the child process (``main``: ``context_crash_app DB KIND``, run
as ``python -c "import context_crash_app; ..."`` so that every class keeps its
module name ``context_crash_app``), ``Crash`` kills the process with
``os._exit(137)``: no ``finally``, no flush. The parent imports this module,
recovers the SQLite store with ``recover(store, [saga])``, and ``Crash`` —
running again, this time in the parent — records a deep copy of the context
it was handed in ``SEEN``: it must be exactly ``expected(KIND)``.

The kinds: ``dataclass``, ``protocol`` (a dataclass ``SagaContext`` that
overrides ``to_dict``/``from_dict`` for a field of a plain class),
``state`` (a plain ``SagaContext`` subclass, the seed document's style),
``pydantic`` and ``msgspec`` (only when the library is installed).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

from fallback_saga import Saga, SagaContext, SagaStepHandler, SQLiteSagaStore

CRASH = False  # set by main(): only the child process dies
SEEN: list[Any] = []
IST = timezone(timedelta(hours=5, minutes=30))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Line:
    sku: str
    price: Decimal
    note: Any = None


def rich_value() -> Any:
    """Values of every type an untyped position carries exactly."""
    return {
        "decimal": Decimal("9.99"),
        1: "int key",
        (1, 2): "tuple key",
        "tuple": (1, 2),
        "when": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=IST),
        "naive": datetime(2024, 5, 1, 12, 30),
        "day": date(2024, 2, 29),
        "at": time(8, 15, tzinfo=UTC),
        "span": timedelta(days=2, seconds=5, microseconds=7),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "raw": b"\x00\xffbytes",
        "set": {3, 1, 2},
        "frozen": frozenset({"a", "b"}),
        "color": Color.BLUE,
        "ratio": Fraction(1, 3),
        "line": Line("sku-1", Decimal("1.10"), note=(Color.RED,)),
        "tag-shaped": {"$fs": ["decimal", "1"]},
    }


# --------------------------------------------------------------------------- kinds


@dataclasses.dataclass
class DataclassCtx(SagaContext):
    order_id: str
    amount: Decimal = Decimal("0")
    by_id: dict[int, str] = dataclasses.field(default_factory=dict)
    pair: tuple[int, ...] = ()
    line: Line | None = None
    extra: Any = None
    bag: dict = dataclasses.field(default_factory=dict)  # type: ignore[type-arg]
    items: list = dataclasses.field(default_factory=list)  # type: ignore[type-arg]


def fill_dataclass(ctx: DataclassCtx) -> None:
    ctx.amount = Decimal("12.50")
    ctx.by_id = {1: "one", -2: "minus two"}
    ctx.pair = (1, 2, 3)
    ctx.line = Line("sku-9", Decimal("0.10"), note={"k": (1,)})
    ctx.extra = rich_value()
    ctx.bag = {1: Decimal("1"), "two": (2,)}
    ctx.items = [Decimal("3"), (4, 5), {6: "six"}]


class Money:
    """A plain class (not a dataclass): the context journals it itself."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass
class ProtocolCtx(SagaContext):
    order_id: str
    price: Money = dataclasses.field(default_factory=lambda: Money(Decimal("0"), "EUR"))
    lines: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "price": {"amount": str(self.price.amount), "currency": self.price.currency},
            "lines": list(self.lines),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolCtx:
        price = data["price"]
        return cls(
            order_id=data["order_id"],
            price=Money(Decimal(price["amount"]), price["currency"]),
            lines=list(data["lines"]),
        )


def fill_protocol(ctx: ProtocolCtx) -> None:
    ctx.price = Money(Decimal("19.90"), "USD")
    ctx.lines.append("sku-1")


class StateCtx(SagaContext):
    """The seed document's style: a plain class, no dataclass decorator."""

    order_id: str
    amount: Decimal
    by_id: dict[int, str]
    when: datetime | None

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.amount = Decimal("0")
        self.by_id = {}
        self.when = None
        self.note = None  # not annotated: an untyped position

    def __eq__(self, other: object) -> bool:
        return type(other) is StateCtx and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


def fill_state(ctx: StateCtx) -> None:
    ctx.amount = Decimal("7.00")
    ctx.by_id = {7: "seven"}
    ctx.when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=IST)
    ctx.note = rich_value()


KINDS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "dataclass": (lambda: DataclassCtx("o-dc"), fill_dataclass),
    "protocol": (lambda: ProtocolCtx("o-proto"), fill_protocol),
    "state": (lambda: StateCtx("o-state"), fill_state),
}

try:
    import pydantic
except ImportError:  # the tests skip this kind (and fail under CI)
    pydantic = None  # type: ignore[assignment]

if pydantic is not None:

    class Customer(pydantic.BaseModel):
        name: str
        since: date

    class PydanticCtx(pydantic.BaseModel):
        order_id: str
        amount: Decimal = Decimal("0")
        by_id: dict[int, str] = {}
        pair: tuple[int, ...] = ()
        tags: set[str] = set()
        when: datetime | None = None
        ident: uuid.UUID | None = None
        customer: Customer | None = None
        color: Color = Color.RED

    def fill_pydantic(ctx: PydanticCtx) -> None:
        ctx.amount = Decimal("3.30")
        ctx.by_id = {3: "three"}
        ctx.pair = (3, 4)
        ctx.tags = {"x", "y"}
        ctx.when = datetime(2024, 6, 1, 9, 0, tzinfo=IST)
        ctx.ident = uuid.UUID(int=5)
        ctx.customer = Customer(name="Ada", since=date(2020, 1, 1))
        ctx.color = Color.BLUE

    KINDS["pydantic"] = (lambda: PydanticCtx(order_id="o-pyd"), fill_pydantic)

try:
    import msgspec
except ImportError:
    msgspec = None  # type: ignore[assignment]

if msgspec is not None:

    class Address(msgspec.Struct):
        street: str
        lines: list[str] = []

    class MsgspecCtx(msgspec.Struct):
        order_id: str
        amount: Decimal = Decimal("0")
        by_id: dict[int, str] = {}
        pair: tuple[int, ...] = ()
        when: datetime | None = None
        raw: bytes = b""
        address: Address | None = None
        color: Color = Color.RED

    def fill_msgspec(ctx: MsgspecCtx) -> None:
        ctx.amount = Decimal("4.40")
        ctx.by_id = {4: "four"}
        ctx.pair = (4, 5)
        ctx.when = datetime(2024, 7, 1, 10, 0, tzinfo=IST)
        ctx.raw = b"\x01\x02"
        ctx.address = Address("Main St", ["1"])
        ctx.color = Color.BLUE

    KINDS["msgspec"] = (lambda: MsgspecCtx(order_id="o-msgspec"), fill_msgspec)


def expected(kind: str) -> Any:
    """The context as ``Fill`` leaves it: what ``Crash`` must see on resume."""
    make, fill = KINDS[kind]
    context = make()
    fill(context)
    return context


# --------------------------------------------------------------------------- the sagas


class Fill(SagaStepHandler[object, None]):
    async def act(self, context: Any, /) -> None:
        KINDS[KIND_OF[type(context)]][1](context)


class Crash(SagaStepHandler[object, None]):
    async def act(self, context: Any, /) -> None:
        if CRASH:
            os._exit(137)  # mid-saga: Fill is journaled as completed, Crash as started
        SEEN.append(copy.deepcopy(context))


class DataclassSaga(Saga[DataclassCtx]):
    steps: ClassVar[list[Any]] = [Fill, Crash]


class ProtocolSaga(Saga[ProtocolCtx]):
    steps: ClassVar[list[Any]] = [Fill, Crash]


class StateSaga(Saga[StateCtx]):
    steps: ClassVar[list[Any]] = [Fill, Crash]


SAGAS: dict[str, type[Saga[Any]]] = {
    "dataclass": DataclassSaga,
    "protocol": ProtocolSaga,
    "state": StateSaga,
}

if pydantic is not None:

    class PydanticSaga(Saga[PydanticCtx]):
        steps: ClassVar[list[Any]] = [Fill, Crash]

    SAGAS["pydantic"] = PydanticSaga

if msgspec is not None:

    class MsgspecSaga(Saga[MsgspecCtx]):
        steps: ClassVar[list[Any]] = [Fill, Crash]

    SAGAS["msgspec"] = MsgspecSaga

KIND_OF: dict[type, str] = {type(make()): kind for kind, (make, _) in KINDS.items()}


async def _run(db: str, kind: str) -> None:
    store = SQLiteSagaStore(db)
    saga = SAGAS[kind](store=store)
    await saga.run(KINDS[kind][0](), saga_id=f"{kind}-1")
    await store.close()
    print("the saga completed: Crash should have killed the process", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str]) -> None:
    global CRASH
    CRASH = True
    db, kind = argv
    asyncio.run(_run(db, kind))


# --------------------------------------------------------------------------- exact equality


def difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where ``b`` is not exactly ``a`` — types included, at every level
    (``1 == 1.0 == True`` and ``(1,) != [1]`` alike); ``None`` when it is.

    The tests' own strict equality, written apart from the library's
    (``fallback_saga.models.first_difference``) so that neither checks
    itself. Objects compare by their state, never by their ``__eq__``. One
    tolerance: two fixed-offset time zones of different classes with the
    same offset are one zone (pydantic reads ``+05:30`` as its own ``TzInfo``).
    """
    if type(a) is not type(b):
        return f"{path or '<top>'}: {type(a).__name__} {a!r:.60} != {type(b).__name__} {b!r:.60}"
    where = path or "<top>"
    if isinstance(a, enum.Enum):
        return None if a is b else f"{where}: {a!r} is not {b!r}"
    if isinstance(a, float):
        return None if repr(a) == repr(b) else f"{where}: {a!r} != {b!r}"
    if isinstance(a, Decimal):
        return None if str(a) == str(b) else f"{where}: {a!r} != {b!r}"
    if isinstance(a, datetime | time):
        return _moment_difference(a, b, where)
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = difference(x, y, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(a, dict):
        if len(a) != len(b):
            return f"{where}: {len(a)} keys != {len(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            found = difference(ka, kb, f"{path}[{ka!r}] (key)") or difference(
                va, vb, f"{path}[{ka!r}]"
            )
            if found:
                return found
        return None
    if isinstance(a, set | frozenset):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        for item in a:
            if not any(difference(item, other) is None for other in b if other == item):
                return f"{where}: {item!r} is missing"
        return None
    state_a, state_b = _state(a), _state(b)
    if state_a is None:
        return None if a == b else f"{where}: {a!r:.60} != {b!r:.60}"
    return difference(state_a, state_b, f"{path}.__state__" if path else "__state__")


def _state(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str | bytes | bytearray | int | date | timedelta | uuid.UUID | Fraction):
        return None
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    fields = getattr(type(value), "__struct_fields__", None)
    if fields is not None:
        return {name: getattr(value, name) for name in fields}
    if hasattr(value, "__dict__"):
        return dict(sorted(vars(value).items()))
    return None


def _moment_difference(a: Any, b: Any, where: str) -> str | None:
    if a != b or a.fold != b.fold or a.utcoffset() != b.utcoffset():
        return f"{where}: {a!r} != {b!r}"
    za, zb = a.tzinfo, b.tzinfo
    if za is None or zb is None:
        return None if za is zb else f"{where}: naive and aware: {a!r} != {b!r}"
    if type(za) is type(zb):
        # (timezone's == compares offsets only: a name given to it counts too)
        same = za.__getinitargs__() == zb.__getinitargs__() if type(za) is timezone else za == zb
        return None if same else f"{where}: zone {za!r} != {zb!r}"
    fixed = za.utcoffset(None)
    if fixed is not None and zb.utcoffset(None) == fixed:
        return None
    return f"{where}: zone {za!r} != {zb!r}"


def assert_identical(a: Any, b: Any) -> None:
    found = difference(a, b)
    assert found is None, found
