"""Refusals of pydantic, msgspec and to_dict/from_dict contexts (models.py).

S14: what a resume could not see exactly is refused, naming the field —
pydantic's private attributes (``PrivateAttr``) included, which its JSON
form leaves out; and when the model's own library refuses to encode it, the
refusal still names the field, not ``<context>``.

Secrets: a refusal names the field and the types, never a value of the
context (a pydantic ``SecretStr`` that ``model_dump_json`` masks, a value a
library quotes in its own message): refusals are shown to callers and
logged, and a context may hold a card token.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import importlib
import traceback
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import pytest
from helpers_saga import Probe, declare

from fallback_saga import (
    ContextDecodeError,
    ContextSerializationError,
    MemorySagaStore,
    SagaFailed,
    SagaNotFound,
    SagaStepHandler,
    SQLiteSagaStore,
)
from fallback_saga.context import context_from_dict, context_to_dict

SECRET = "SECRET-tok-4111"

try:
    pydantic: Any = importlib.import_module("pydantic")
except ImportError:  # pragma: no cover - the test extra installs it
    pydantic = None
try:
    msgspec: Any = importlib.import_module("msgspec")
except ImportError:  # pragma: no cover
    msgspec = None


def _shown(error: BaseException) -> str:
    """Everything a caller or a log shows of ``error``: its text, its repr and
    its traceback with whatever it chains to."""
    return f"{error}\n{error!r}\n{''.join(traceback.format_exception(error))}"


# --------------------------------------------------------------------------- to_dict/from_dict


class _Protocol:
    """A plain object holding the state it is made with."""

    def __init__(self, **state: Any) -> None:
        self.__dict__.update(state)


def _protocol(state: dict[str, Any], rebuilt: dict[str, Any]) -> Any:
    """A to_dict/from_dict context holding ``state`` whose from_dict gives ``rebuilt``."""

    class Ctx(_Protocol):
        def to_dict(self) -> dict[str, Any]:
            return {}

        @classmethod
        def from_dict(cls, data: Mapping[str, Any]) -> Ctx:
            return cls(**rebuilt)

    return Ctx(**state)


class _Raises:
    def __init__(self, where: str) -> None:
        self.where = where

    def to_dict(self) -> dict[str, Any]:
        if self.where == "to_dict":
            raise ValueError(f"bad token {SECRET}")
        return {"token": "x"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Raises:
        raise ValueError(f"bad token {SECRET}")


def protocol_refusals() -> list[Any]:
    when = datetime(2031, 7, 9, 10, 11, 12)
    return [
        pytest.param(
            lambda: _protocol({"token": SECRET}, {"token": SECRET.lower()}), "token", True,
            id="str-differs",
        ),
        pytest.param(
            lambda: _protocol({"token": SECRET}, {"token": [SECRET]}), "token", True,
            id="type-differs",
        ),
        pytest.param(
            lambda: _protocol({"tags": {SECRET}}, {"tags": {SECRET + "-other"}}), "tags", True,
            id="set-item-differs",
        ),
        pytest.param(
            # (a dict's key is part of the path, as everywhere in the journal's paths)
            lambda: _protocol({"tags": {"card": SECRET}}, {"tags": {"card": SECRET[::-1]}}),
            "tags", True, id="dict-value-differs",
        ),
        pytest.param(
            lambda: _protocol({"at": when}, {"at": when.replace(second=13)}), "at", True,
            id="datetime-differs",
        ),
        pytest.param(
            lambda: _protocol({"pin": Decimal("4111")}, {"pin": Decimal("4112")}), "pin", True,
            id="decimal-differs",
        ),
        pytest.param(
            lambda: _protocol({"pin": Decimal("4111")}, {"pin": Decimal("4111.0")}), "pin", True,
            id="decimal-exponent-differs",
        ),
        pytest.param(
            lambda: _protocol(
                {"raw": array.array("b", SECRET.encode())},
                {"raw": array.array("b", SECRET.lower().encode())},
            ),
            "raw", True, id="stateless-object-differs",
        ),
        # The model's own exception is chained (its code, its message); the
        # refusal's text leaves it out.
        pytest.param(lambda: _Raises("to_dict"), "<context>", False, id="to_dict-raises"),
        pytest.param(lambda: _Raises("from_dict"), "<context>", False, id="from_dict-raises"),
    ]


# --------------------------------------------------------------------------- pydantic


def pydantic_refusals() -> list[Any]:
    if pydantic is None:
        return []

    class Payment(pydantic.BaseModel):
        order_id: str = "o-1"
        card_token: pydantic.SecretStr = pydantic.SecretStr("")

    class Untyped(pydantic.BaseModel):
        data: Any = None

    class Pin(pydantic.BaseModel):
        pin: int = 0

    class Private(pydantic.BaseModel):
        order_id: str = "o-1"
        _token: str = pydantic.PrivateAttr(default="")

    class Serializer(pydantic.BaseModel):
        order_id: str = "o-1"
        token: str = ""

        @pydantic.field_serializer("token")
        def _dump(self, value: str) -> str:
            raise ValueError(f"cannot dump {value}")

    class Validator(pydantic.BaseModel):
        order_id: str = "o-1"
        token: str = ""

        @pydantic.field_validator("token")
        @classmethod
        def _check(cls, value: str) -> str:
            if value.startswith("SECRET"):
                raise ValueError(f"refused {value}")
            return value

    def private() -> Any:
        model = Private()
        model._token = SECRET
        return model

    def pin() -> Any:
        model = Pin()
        model.pin = SECRET  # no validate_assignment: pydantic lets a step do it
        return model

    return [
        pytest.param(
            lambda: Payment(card_token=pydantic.SecretStr(SECRET)), "card_token", True,
            id="pydantic-secretstr-masked",
        ),
        pytest.param(lambda: Untyped(data=(SECRET,)), "data", True, id="pydantic-any-tuple"),
        pytest.param(pin, "pin", True, id="pydantic-validation-on-read-back"),
        pytest.param(private, "_token", True, id="pydantic-private-attribute"),
        pytest.param(
            lambda: Serializer(token=SECRET), "token", True, id="pydantic-serializer-raises"
        ),
        pytest.param(
            lambda: Validator.model_construct(token=SECRET), "token", True,
            id="pydantic-validator-refuses-on-read-back",
        ),
    ]


# --------------------------------------------------------------------------- msgspec


def msgspec_refusals() -> list[Any]:
    if msgspec is None:
        return []

    class Choice(msgspec.Struct):
        mode: Literal["a", "b"] = "a"

    class Number(msgspec.Struct):
        count: int = 0

    class Keys(msgspec.Struct):
        keys: Any = None

    def choice() -> Any:
        value = Choice()
        value.mode = SECRET  # type: ignore[assignment]
        return value

    def number() -> Any:
        value = Number()
        value.count = SECRET  # type: ignore[assignment]
        return value

    return [
        pytest.param(choice, "mode", True, id="msgspec-enum-value"),
        pytest.param(number, "count", True, id="msgspec-wrong-type"),
        pytest.param(lambda: Keys(keys={(SECRET,): 1}), "keys", True, id="msgspec-tuple-key"),
        pytest.param(lambda: Keys(keys=SECRET + "\ud800"), "keys", True, id="msgspec-surrogate"),
    ]


@pytest.mark.parametrize(
    ("make", "path", "whole_traceback"),
    protocol_refusals() + pydantic_refusals() + msgspec_refusals(),
)
def test_S14_a_refused_context_is_named_by_field_and_type_never_by_value(
    make: Callable[[], Any], path: str, whole_traceback: bool
) -> None:
    with pytest.raises(ContextSerializationError) as info:
        context_to_dict(make())

    error = info.value
    assert error.path.startswith(path), str(error)
    shown = _shown(error) if whole_traceback else f"{error}\n{error!r}"
    assert SECRET not in shown
    assert SECRET.lower() not in shown
    assert "2031" not in shown  # the datetime's value
    assert "411" not in shown  # the Decimal's


@pytest.mark.skipif(pydantic is None, reason="pydantic is not installed")
async def test_S14_the_SecretStr_refusal_at_run_shows_no_secret() -> None:
    class Payment(pydantic.BaseModel):
        order_id: str
        card_token: pydantic.SecretStr

    store = MemorySagaStore()
    trace: list[tuple[str, str]] = []
    saga = declare(Probe("Charge", trace), context=Payment)(store=store)

    with pytest.raises(ContextSerializationError) as info:
        await saga.run(Payment(order_id="o1", card_token=pydantic.SecretStr(SECRET)), saga_id="o1")

    assert trace == []
    assert info.value.path.startswith("card_token")
    assert SECRET not in _shown(info.value)
    with pytest.raises(SagaNotFound):
        await store.load("o1")


class Mode(enum.Enum):
    FAST = "fast"


@dataclasses.dataclass
class Typed:
    """A dataclass context, its fields typed: what a journal must fit."""

    count: int = 0
    amount: Decimal = Decimal(0)
    mode: Mode = Mode.FAST
    kind: Literal["a", "b"] = "a"
    when: date | None = None
    anything: Any = None


def decode_refusals() -> list[Any]:
    cases = [
        pytest.param(Typed, {"count": SECRET}, "count", id="dataclass-int"),
        pytest.param(Typed, {"amount": SECRET}, "amount", id="dataclass-decimal"),
        pytest.param(Typed, {"mode": SECRET}, "mode", id="dataclass-enum"),
        pytest.param(Typed, {"kind": SECRET}, "kind", id="dataclass-literal"),
        pytest.param(Typed, {"when": SECRET}, "when", id="dataclass-date"),
        pytest.param(Typed, {"anything": {"$fs": ["decimal", SECRET]}}, "anything",
                     id="dataclass-tag-payload"),
    ]
    if pydantic is not None:

        class Pin(pydantic.BaseModel):
            pin: int = 0

        class Custom(pydantic.BaseModel):
            token: str = ""

            @pydantic.field_validator("token")
            @classmethod
            def _check(cls, value: str) -> str:
                if value.startswith("SECRET"):
                    raise importlib.import_module("pydantic_core").PydanticCustomError(
                        "token_refused", "refused {token}", {"token": value}
                    )
                return value

        cases += [
            pytest.param(Pin, {"pin": SECRET}, "pin", id="pydantic"),
            pytest.param(Custom, {"token": SECRET}, "token", id="pydantic-custom-error"),
        ]
    if msgspec is not None:

        class Choice(msgspec.Struct):
            mode: Literal["a", "b"] = "a"

        class Checked(msgspec.Struct):
            token: str = ""

            def __post_init__(self) -> None:
                if self.token.startswith("SECRET"):
                    raise ValueError(f"refused {self.token}")

        cases += [
            pytest.param(Choice, {"mode": SECRET}, "mode", id="msgspec"),
            pytest.param(Checked, {"token": SECRET}, "<context>", id="msgspec-post-init"),
        ]
    return cases


@pytest.mark.parametrize(("cls", "data", "path"), decode_refusals())
def test_S14_a_journal_that_does_not_fit_the_model_is_named_by_field_never_by_value(
    cls: type, data: dict[str, Any], path: str
) -> None:
    with pytest.raises(ContextDecodeError) as info:
        context_from_dict(cls, data)

    assert info.value.path == path
    assert SECRET not in _shown(info.value)


# --------------------------------------------------------------------------- private attributes


needs_pydantic = pytest.mark.skipif(pydantic is None, reason="pydantic is not installed")


@needs_pydantic
def test_S14_a_pydantic_private_attribute_at_its_default_is_carried() -> None:
    class Ctx(pydantic.BaseModel):
        order_id: str
        _attempts: int = pydantic.PrivateAttr(default=0)
        _seen: list[int] = pydantic.PrivateAttr(default_factory=list)

    context_to_dict(Ctx(order_id="o-1"))  # not refused: it comes back as it was


@needs_pydantic
async def test_S14_a_pydantic_private_attribute_set_before_run_is_refused_naming_it() -> None:
    class Ctx(pydantic.BaseModel):
        order_id: str
        _attempts: int = pydantic.PrivateAttr(default=0)

    context = Ctx(order_id="o-1")
    context._attempts = 3
    trace: list[tuple[str, str]] = []
    store = MemorySagaStore()
    saga = declare(Probe("First", trace), context=Ctx)(store=store)

    with pytest.raises(ContextSerializationError) as info:
        await saga.run(context, saga_id="o-1")

    assert trace == []
    assert info.value.path == "_attempts"
    assert "int comes back" in str(info.value)


@needs_pydantic
async def test_S14_a_step_that_sets_a_pydantic_private_attribute_fails_the_saga_naming_it(
    tmp_path: Path,
) -> None:
    class Ctx(pydantic.BaseModel):
        order_id: str
        _attempts: int = pydantic.PrivateAttr(default=0)

    class Count(SagaStepHandler[Ctx, None]):
        async def act(self, context: Ctx) -> None:
            context._attempts = 3

    trace: list[tuple[str, str]] = []
    store = SQLiteSagaStore(tmp_path / "s.db")
    saga = declare(Count, Probe("Last", trace), context=Ctx)(store=store)

    try:
        with pytest.raises(SagaFailed) as info:
            await saga.run(Ctx(order_id="o-1"), saga_id="o-1")
    finally:
        await store.close()

    assert isinstance(info.value.error, ContextSerializationError)
    assert info.value.error.path == "_attempts"
    assert ("act", "Last") not in trace


# --------------------------------------------------------------------------- the library refuses


def encoder_refusals() -> list[Any]:
    cases = []
    if msgspec is not None:

        class Inner(msgspec.Struct):
            ratio: Any = None

        class Outer(msgspec.Struct):
            order_id: str = "o-1"
            keys: Any = None
            ratio: Any = None
            note: str = ""
            inner: Inner | None = None
            items: list[Any] = []

        cases += [
            pytest.param(lambda: Outer(keys={(1, 2): "a"}), "keys", id="msgspec-tuple-key"),
            pytest.param(lambda: Outer(ratio=Fraction(1, 3)), "ratio", id="msgspec-fraction"),
            pytest.param(lambda: Outer(note="a\ud800"), "note", id="msgspec-surrogate"),
            pytest.param(
                lambda: Outer(inner=Inner(ratio=Fraction(1, 3))), "inner.ratio",
                id="msgspec-nested",
            ),
            pytest.param(lambda: Outer(items=[1, object()]), "items[1]", id="msgspec-list-item"),
        ]
    if pydantic is not None:

        class PInner(pydantic.BaseModel):
            data: Any = None

        class POuter(pydantic.BaseModel):
            order_id: str = "o-1"
            data: Any = None
            inner: PInner | None = None
            note: str = ""
            raw: bytes = b""

        cases += [
            pytest.param(lambda: POuter(data=object()), "data", id="pydantic-object"),
            pytest.param(
                lambda: POuter(inner=PInner(data=object())), "inner.data", id="pydantic-nested"
            ),
            pytest.param(lambda: POuter(note="a\ud800"), "note", id="pydantic-surrogate"),
            pytest.param(lambda: POuter(raw=b"\xff\xfe"), "raw", id="pydantic-bytes-not-utf8"),
        ]
    return cases


@pytest.mark.parametrize(("make", "path"), encoder_refusals())
def test_S14_a_context_its_own_library_cannot_encode_is_refused_naming_the_field(
    make: Callable[[], Any], path: str
) -> None:
    with pytest.raises(ContextSerializationError) as info:
        context_to_dict(make())

    assert info.value.path == path, str(info.value)


@dataclasses.dataclass
class KeyedBySecrets:
    """A context keyed by what may be secret: card numbers, e-mail addresses."""

    tokens: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_S14_a_refusal_names_a_dict_item_by_a_key_that_reads_like_a_name_only() -> None:
    """The path of a dict item names its key when the key reads like a name
    (``tokens['visa']``); any other key — an e-mail address, a card number —
    only by its type: a key is context data, and may be a secret."""
    with pytest.raises(ContextSerializationError) as named:
        context_to_dict(KeyedBySecrets(tokens={"visa": object()}))
    assert named.value.path == "tokens['visa']"
    with pytest.raises(ContextSerializationError) as masked:
        context_to_dict(KeyedBySecrets(tokens={SECRET: object()}))
    assert masked.value.path == "tokens[<str key>]"
    assert SECRET not in _shown(masked.value)
