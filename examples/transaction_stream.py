"""saga.transaction(): drive a saga step by step and see each result as it comes.

Shows:
* ``async with saga.transaction(ctx) as tx: async for step_result in tx`` —
  each ``SagaStepResult`` (``response``, ``step_name``, ``saga_id``) as soon as
  its step completed; the saga commits (COMPLETED) when the block ends after
  its last step;
* leaving the block early (``break``) unwinds the completed steps — the
  caller decided not to go on, so no error is raised;
* a failing step: ``SagaFailed`` comes out of the ``async for``, after unwinding;
* ``LoggingListener``: every transition through stdlib ``logging`` (the
  context is never logged).

Run: python examples/transaction_stream.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys

from fallback_saga import (
    LoggingListener,
    Response,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
    SagaStepResult,
)


@dataclasses.dataclass
class TripContext(SagaContext):
    trip_id: str
    traveller: str
    card_token: str  # a secret: LoggingListener never logs the context
    fail_hotel: bool = False
    flight: str | None = None
    hotel: str | None = None
    car: str | None = None


class Booking(Response):
    reference: str
    price: int


class BookFlight(SagaStepHandler[TripContext, Booking]):
    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Booking]:
        context.flight = f"FL-{context.trip_id}"
        return self._generate_step_result(Booking(reference=context.flight, price=240))

    async def compensate(self, context: TripContext) -> None:
        context.flight = None


class BookHotel(SagaStepHandler[TripContext, Booking]):
    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Booking]:
        if context.fail_hotel:
            raise LookupError("hotel fully booked")
        context.hotel = f"HT-{context.trip_id}"
        return self._generate_step_result(Booking(reference=context.hotel, price=380))

    async def compensate(self, context: TripContext) -> None:
        context.hotel = None


class RentCar(SagaStepHandler[TripContext, Booking]):
    async def act(self, context: TripContext) -> SagaStepResult[TripContext, Booking]:
        context.car = f"CAR-{context.trip_id}"
        return self._generate_step_result(Booking(reference=context.car, price=150))

    async def compensate(self, context: TripContext) -> None:
        context.car = None


class TripSaga(Saga[TripContext]):
    steps = [BookFlight, BookHotel, RentCar]


async def main() -> None:
    # Plain messages on stdout, no timestamps: the output is the same on every run.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="    log: %(message)s")
    saga = TripSaga(listeners=[LoggingListener()])

    print("1. Stream every step; the saga commits when the block ends")
    context = TripContext("t-1", "Ada", card_token="tok_secret")
    async with saga.transaction(context, saga_id="t-1") as tx:
        total = 0
        async for step_result in tx:
            total += step_result.response.price
            print(f"  {tx.saga_id} {step_result.step_name}: {step_result.response}")
    print(f"  status {tx.status.value}, total {total} EUR, result: {tx.result is not None}")

    print("\n2. Stop early: the steps done so far are compensated")
    context = TripContext("t-2", "Ada", card_token="tok_secret")
    async with saga.transaction(context, saga_id="t-2") as tx:
        async for step_result in tx:
            print(f"  {step_result.step_name}: {step_result.response}")
            if step_result.response.price > 300:
                print("  over budget: break")
                break
    print(f"  status {tx.status.value}; flight={context.flight}, hotel={context.hotel}")

    print("\n3. A step fails: SagaFailed comes out of the loop, after the unwinding")
    context = TripContext("t-3", "Ada", card_token="tok_secret", fail_hotel=True)
    try:
        async with saga.transaction(context, saga_id="t-3") as tx:
            async for step_result in tx:
                print(f"  {step_result.step_name}: {step_result.response}")
    except SagaFailed as failed:
        print(f"  SagaFailed at {failed.failed_step!r}: {failed.error!r}; "
              f"status {failed.status.value}; flight={context.flight}")


if __name__ == "__main__":
    asyncio.run(main())
