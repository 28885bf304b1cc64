"""Contexts that are not SagaContext dataclasses: a pydantic model, a plain
dict, a frozen-free plain class (docs/mechanics.md, "Contexts")."""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

from fallback_saga import Saga, SagaResult, SagaStepHandler


class Booking(BaseModel):
    booking_id: str
    seats: int = 1
    confirmed: bool = False


class Confirm(SagaStepHandler[Booking, None]):
    async def act(self, context: Booking) -> None:
        context.confirmed = True


class BookingSaga(Saga[Booking]):
    steps = [Confirm]


class CountKeys:
    async def act(self, context: dict[str, Any]) -> int:
        context["keys"] = len(context)
        return len(context)

    async def compensate(self, context: dict[str, Any]) -> None:
        context.pop("keys", None)


class DictSaga(Saga[dict[str, Any]]):
    steps = [CountKeys()]


async def main() -> None:
    booked = await BookingSaga().run(Booking(booking_id="b-1"))
    assert_type(booked, SagaResult[Booking])
    assert_type(booked.context.confirmed, bool)
    counted = await DictSaga().run({"order": "o-1"})
    assert_type(counted.context, dict[str, Any])
