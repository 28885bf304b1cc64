"""A context holding text PostgreSQL cannot store (a NUL character, a lone
surrogate) where the codec writes it tagged: inside a tuple or set in an
``Any`` field, a time zone's name, a dict's key. S12: refused with the path
of the user's own value (``when``, ``extra[1]``) — not the tag's words and
payload indexes of its journal form (``when.$fs[1][1][2]``) — and nothing
half-written. SQLite stores such text: there it comes back exactly."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest_pg import require_driver

from fallback_saga import Saga, SagaContext, SagaFailed, SagaStatus
from fallback_saga.codec import decode_context
from fallback_saga.errors import ContextSerializationError, SagaNotFound
from fallback_saga.store import SQLiteSagaStore

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402


@dataclasses.dataclass
class Ctx(SagaContext):
    when: datetime | None = None
    extra: Any = None
    nul_later: bool = False  # the step puts a NUL in extra
    done: bool = False


RAN: list[str] = []


class Step:
    async def act(self, ctx: Ctx) -> None:
        RAN.append("act")
        ctx.done = True
        if ctx.nul_later:
            ctx.extra = ("ok", "b\x00d")

    async def compensate(self, ctx: Ctx) -> None:
        RAN.append("compensate")


class OneStep(Saga[Ctx]):
    steps = [Step]


NAMED_ZONE = timezone(timedelta(hours=1), "bad\x00name")

# context, the path the error must name, what it must say of the value.
CASES: dict[str, tuple[Ctx, str, str]] = {
    "a datetime's zone name": (Ctx(when=datetime(2024, 5, 1, tzinfo=NAMED_ZONE)), "when",
                               "holds a datetime.*time zone's name"),
    "an item of a tuple": (Ctx(extra=("ok", "b\x00d")), "extra[1]", "holds a str"),
    "an item of a set": (Ctx(extra={"a\x00"}), "extra[0]", "holds a str"),
    "a lone surrogate in a tuple": (Ctx(extra=("\ud800",)), "extra[0]", "holds a str"),
    "nested tagged values": (Ctx(extra=(Decimal("1"), ("x\x00",))), "extra[1][0]", "holds a str"),
    "a zone name in a list": (Ctx(extra=[datetime(2024, 5, 1, tzinfo=NAMED_ZONE)]), "extra[0]",
                              "holds a datetime"),
    "a value under an int key": (Ctx(extra={1: "v\x00"}), "extra[1]", "holds a str"),
    "a text key": (Ctx(extra={"k\x00": 1}), "extra[<str key>]", "its key"),
    "an item of a tuple key": (Ctx(extra={("a\x00",): 1}), "extra[<tuple key>][0]", "a key's"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_S12_text_postgresql_cannot_hold_in_a_tagged_value_is_refused_naming_the_field(
    case: str, pg_conninfo: str, pg_schema: str
) -> None:
    context, path, said = CASES[case]
    RAN.clear()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        with pytest.raises(ContextSerializationError, match=said) as raised:
            await OneStep(store=store).run(context, saga_id="saga-1")
        assert raised.value.path == path
        assert "$fs" not in str(raised.value)
        assert "\x00" not in str(raised.value)  # nor the key (it may be a secret)
        assert RAN == []  # refused before the first step
        with pytest.raises(SagaNotFound):
            await store.load("saga-1")


async def test_S12_text_postgresql_cannot_hold_set_by_a_step_is_refused_at_the_write(
    pg_conninfo: str, pg_schema: str
) -> None:
    RAN.clear()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        with pytest.raises(SagaFailed) as raised:
            await OneStep(store=store).run(Ctx(nul_later=True), saga_id="saga-1")
        error = raised.value.__cause__
        assert isinstance(error, ContextSerializationError), repr(error)
        assert error.path == "extra[1]"
        assert "extra[1]" in str(raised.value)
        assert "$fs" not in str(raised.value)
        assert RAN == ["act", "compensate"]  # refused at the write after the step
        record = await store.load("saga-1")
        assert record.status is SagaStatus.COMPENSATED, record.status
        assert record.context["extra"] is None  # the step's change never written


@pytest.mark.parametrize("case", list(CASES))
async def test_sqlite_stores_the_same_text_and_it_comes_back_exactly(
    case: str, tmp_path: Path
) -> None:
    context, _, _ = CASES[case]
    async with SQLiteSagaStore(str(tmp_path / "journal.db")) as store:
        result = await OneStep(store=store).run(context, saga_id="saga-1")
        assert result.status is SagaStatus.COMPLETED
        stored = decode_context(Ctx, (await store.load("saga-1")).context)
    assert stored == context
    for name in ("when", "extra"):
        assert type(getattr(stored, name)) is type(getattr(context, name))
    if context.when is not None:
        assert stored.when.tzinfo == NAMED_ZONE
        assert stored.when.tzname() == "bad\x00name"
