"""A resume is exact in typed positions too (S14, S12): a field's annotation
says what its value is, but a value need not match it — ``payment_id: str =
None``, an int in a ``float`` field, a subclass in an ``Item`` field, an
aware datetime with a named zone. Such a value comes back from the journal
as itself (written in the self-describing tagged form), never as what the
annotation would make of it, and never as a context that cannot be resumed.
A value that matches its annotation keeps the plain form journals always had.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import uuid
import zoneinfo
from dataclasses import InitVar
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import pytest
from context_crash_app import assert_identical

from fallback_saga import (
    ContextSerializationError,
    Saga,
    SagaContext,
    SagaStepHandler,
    SQLiteSagaStore,
    recover,
)
from fallback_saga.codec import journal_untyped
from fallback_saga.context import check_serializable, context_from_dict, context_to_dict
from fallback_saga.decoding import decode_untyped
from fallback_saga.store._common import decode_json, encode_json

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
HUGE = 7 ** 20_000  # far beyond sys.get_int_max_str_digits() (4300 by default)


class Size(enum.IntEnum):
    S = 1
    M = 2


class Mood(enum.StrEnum):
    HAPPY = "happy"


@dataclasses.dataclass
class Item:
    sku: str


@dataclasses.dataclass
class GiftItem(Item):
    note: str = ""


def one_field(annotation: Any) -> type:
    return dataclasses.make_dataclass("One", [("v", annotation)], bases=(SagaContext,))


def through_a_store(context: Any) -> Any:
    """What a resume reads back from a durable store: the journal form as JSON text."""
    return context_from_dict(type(context), decode_json(encode_json(context_to_dict(context))))


MISMATCHES = [
    (str, None),
    (int, True),
    (float, 10),
    (int, Size.M),
    (str, Mood.HAPPY),
    (Item, GiftItem("g-1", "for you")),
    (Optional[Item], GiftItem("g-1")),  # noqa: UP045 (the spelling under test)
    (datetime, datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS)),
    (datetime, datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1), "CET"))),
    (time, time(9, 0, tzinfo=PARIS)),
    (date, datetime(2024, 5, 1, 12, 0)),
    (Decimal, 5),
    (uuid.UUID, "not a uuid"),
    (str, Decimal("1.5")),
    (list[int], (1, 2)),
    (list[int], [1, "x", None]),
    (tuple[int, ...], [1, 2]),
    (tuple[int, str], (1, 2, 3)),
    (set[int], frozenset({1})),
    (dict[str, int], {"a": 1.5}),
    (dict[str, int], {"$fs": 1}),
    (dict[int, str], {True: "bool key"}),
    (dict[int, str], {(1, 2): "tuple key"}),
    (dict[Any, float], {1: 2}),
    (Size, 2),
    (Literal["a", "b"], "c"),
    (bytes, b"raw"),
    (timedelta, timedelta(days=1)),
    (Size, None),
]


@pytest.mark.parametrize(("annotation", "value"), MISMATCHES, ids=lambda x: repr(x)[:40])
def test_S14_a_typed_field_holding_another_type_resumes_as_that_value(
    annotation: Any, value: Any
) -> None:
    context = one_field(annotation)(copy.deepcopy(value))

    check_serializable(context)
    assert_identical(through_a_store(context).v, value)


UNIONS = [
    (float | int, 3),
    (int | float, 3.0),
    (datetime | date | None, date(2024, 5, 1)),
    (str | Decimal, Decimal("1.50")),
    (Decimal | str, "1.50"),
    (list[int] | tuple[int, ...], (1, 2)),
    (dict[int | str, str], {1: "int one", "1": "text one"}),
    (int | str, True),
    (Size | int, 1),
    (int | Size, Size.S),
    (Item | GiftItem, GiftItem("g")),
    (dict[str, Any] | dict[int, Decimal], {1: Decimal("1")}),
    (dict[Any, Decimal] | list[int], {1: Decimal("1")}),
    (Literal["a"] | str, "b"),
    (str | None, 5),
]


@pytest.mark.parametrize(("annotation", "value"), UNIONS, ids=lambda x: repr(x)[:40])
def test_S14_a_union_field_gives_back_the_member_it_was_given(annotation: Any, value: Any) -> None:
    context = one_field(annotation)(copy.deepcopy(value))

    assert_identical(through_a_store(context).v, value)


MATCHES = [
    (str, "x", "x"),
    (int, 5, 5),
    (float, 1.5, 1.5),
    (Decimal, Decimal("9.99"), "9.99"),
    (datetime, datetime(2024, 5, 1, 12, tzinfo=UTC), "2024-05-01T12:00:00+00:00"),
    (date, date(2024, 5, 1), "2024-05-01"),
    (Size, Size.M, 2),
    (Optional[str], None, None),  # noqa: UP045
    (str | None, "x", "x"),
    (int | str, "x", "x"),
    (list[Decimal], [Decimal(1)], ["1"]),
    (dict[int, str], {1: "a"}, {"1": "a"}),
    (Item, Item("s"), {"sku": "s"}),
    (Item | None, Item("s"), {"sku": "s"}),
]


@pytest.mark.parametrize(("annotation", "value", "form"), MATCHES, ids=lambda x: repr(x)[:40])
def test_S14_a_value_that_matches_its_annotation_keeps_the_plain_form(
    annotation: Any, value: Any, form: Any
) -> None:
    context = one_field(annotation)(value)

    assert context_to_dict(context) == {"v": form}
    assert_identical(through_a_store(context).v, value)


class Plain(SagaContext):
    payment_id: str
    total: float

    def __init__(self) -> None:
        self.payment_id = None  # type: ignore[assignment]
        self.total = 10  # an int


def test_S14_a_plain_saga_context_attribute_of_another_type_resumes_as_itself() -> None:
    back = through_a_store(Plain())

    assert_identical(back.__dict__, {"payment_id": None, "total": 10})


@dataclasses.dataclass
class Response:
    total: float
    item: Item


def test_S14_a_step_result_with_a_mismatched_field_resumes_as_itself() -> None:
    response = Response(total=10, item=GiftItem("g"))  # type: ignore[arg-type]

    back = decode_untyped(decode_json(encode_json(journal_untyped(response, "r"))), "r")

    assert_identical(back, response)


@dataclasses.dataclass
class Big(SagaContext):
    n: int = 0
    anything: Any = None
    by_id: dict[int, str] = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize(
    "context",
    [
        Big(n=HUGE),
        Big(n=-HUGE),
        Big(anything=Fraction(HUGE, 3)),
        Big(anything={HUGE: "key"}),
        Big(anything={HUGE, 1}),
        Big(by_id={HUGE: "key"}),
    ],
    ids=["int", "negative", "fraction", "any-key", "set", "typed-key"],
)
def test_S14_an_int_beyond_the_digits_limit_resumes_exactly(context: Big) -> None:
    check_serializable(context)
    back = through_a_store(context)

    # (== and types: assert_identical would show the ints, which have no repr)
    assert back == context
    for name, value in vars(context).items():
        assert type(vars(back)[name]) is type(value)
        if isinstance(value, dict):
            assert [type(key) for key in vars(back)[name]] == [type(key) for key in value]


@dataclasses.dataclass
class WithInitVar(SagaContext):
    order_id: str
    currency: InitVar[str]
    label: str = dataclasses.field(init=False, default="")
    history: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self, currency: str) -> None:
        self.label = f"{self.order_id}/{currency}"
        self.history.append("created")


def test_S14_a_dataclass_is_rebuilt_without_running_its_init_again() -> None:
    context = WithInitVar("o-1", "EUR")

    back = through_a_store(context)

    assert_identical(back, context)
    assert back.history == ["created"]


@dataclasses.dataclass
class Indexed(SagaContext):
    """A dataclass whose ``__post_init__`` derives what is not stored (an
    index) and leaves a field it computes (``init=False``) as stored."""

    lines: list[str]
    count: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self._index = {line: n for n, line in enumerate(self.lines)}
        self.count = len(self.lines)


def test_S14_a_dataclass_read_back_derives_again_what_is_not_stored() -> None:
    """Its ``__post_init__`` runs again when it is read back — as pydantic
    runs its validators — so an attribute it derives is there after a
    resume; a field it computes keeps the value the journal holds. (An
    index left stale by a step is refused: the resumed run would hold
    another, test_exact_resume_attributes.py.)"""
    context = Indexed(["a", "b"])
    context.lines.append("c")  # a step's change, the index kept in step
    context._index["c"] = 2
    context.count = 7

    back = through_a_store(context)

    assert back.lines == ["a", "b", "c"]
    assert back.count == 7  # the stored value, not the one __post_init__ computes
    assert back._index == {"a": 0, "b": 1, "c": 2}  # derived again, from what was stored
    context.lines.append("d")  # the index left stale
    with pytest.raises(ContextSerializationError) as refused:
        through_a_store(context)
    assert refused.value.path == "_index"


# --------------------------------------------------------------------------- a crash and a resume


class Crash(BaseException):
    """The process dies (as in docs/durability.md)."""


@dataclasses.dataclass
class OrderCtx(SagaContext):
    order_id: str
    payment_id: str = None  # type: ignore[assignment]  # the everyday pattern
    total: float = 0


TRACE: list[str] = []
CRASH = [True]


class Reserve(SagaStepHandler[OrderCtx, None]):
    async def act(self, context: OrderCtx, /) -> None:
        TRACE.append(f"reserve {context.payment_id!r} {context.total!r}")
        context.total = 10  # an int in a float field


class Charge(SagaStepHandler[OrderCtx, None]):
    async def act(self, context: OrderCtx, /) -> None:
        TRACE.append(f"charge {context.payment_id!r} {context.total!r}")
        if CRASH[0]:
            raise Crash
        context.payment_id = "p-1"


class OrderSaga(Saga[OrderCtx]):
    steps: ClassVar[list[Any]] = [Reserve, Charge]


def test_S14_a_none_default_in_a_str_field_is_resumed_after_a_crash(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteSagaStore(str(tmp_path / "s.db"))
        with pytest.raises(Crash):
            await OrderSaga(store=store).run(OrderCtx("o-1"), saga_id="o-1")
        await store.close()
        CRASH[0] = False
        store = SQLiteSagaStore(str(tmp_path / "s.db"))
        try:
            report = await recover(store, [OrderSaga], older_than=0)
            assert "1 completed" in str(report), str(report)
            assert (await store.load("o-1")).status.value == "completed"  # type: ignore[union-attr]
        finally:
            await store.close()

    TRACE.clear()
    CRASH[0] = True
    asyncio.run(main())
    assert TRACE == ["reserve None 0", "charge None 10", "charge None 10"]


PAIR = "\ud83d\ude00"  # two lone surrogates, which would encode one character: "😀"


@pytest.mark.parametrize(
    "context",
    [
        Big(anything=PAIR),
        Big(anything={f"k{PAIR}": [f"x{PAIR}y", "😀"]}),
        Big(by_id={1: f"{PAIR}{PAIR}\ud800"}),
        Big(anything={"$fs": PAIR}),
    ],
    ids=["any", "key", "typed", "tag-shaped"],
)
def test_S14_adjacent_lone_surrogates_stay_two_characters(context: Big) -> None:
    assert_identical(through_a_store(context), context)


def test_S14_a_step_result_holding_adjacent_lone_surrogates_stays_as_it_was() -> None:
    response = [PAIR, {"k": PAIR}]

    back = decode_untyped(decode_json(encode_json(journal_untyped(response, "r"))), "r")

    assert_identical(back, response)


def test_S14_a_character_beyond_the_bmp_keeps_its_plain_json_form() -> None:
    assert encode_json({"v": "😀"}) == '{"v":"\\ud83d\\ude00"}'


@pytest.mark.parametrize("response", [PAIR, "id-" + PAIR, "😀", "\ud83d"])
def test_S14_a_text_step_result_keeps_its_characters(response: str) -> None:
    """A step that returns a bare text (the commonest result: an id) is
    journaled on a fast path of its own; two adjacent lone surrogates in it
    stay two characters, and a character beyond the BMP stays one."""
    from fallback_saga.store._responses import response_text

    back = decode_untyped(decode_json(response_text(response, "Saga", "Step")), "response")

    assert_identical(back, response)
