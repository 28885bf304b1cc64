"""The benchmark sagas written against fallback_saga's public API.

Shared by ``compare.py`` (through ``workloads.py``) and ``test_bench.py`` so
both measure exactly the same definitions.  Importing this module requires
``fallback_saga``.
"""

from __future__ import annotations

import dataclasses

from workloads import StepBoom

from fallback_saga import Fallback, Response, Saga, SagaContext, SagaStepHandler, SagaStepResult


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str
    a: str | None = None
    b: str | None = None
    c: str | None = None


class Resp(Response):
    value: str


class StepA(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        context.a = "a"
        return self._generate_step_result(Resp(value="a"))

    async def compensate(self, context: Ctx) -> None:
        context.a = None


class StepB(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        context.b = "b"
        return self._generate_step_result(Resp(value="b"))

    async def compensate(self, context: Ctx) -> None:
        context.b = None


class StepBPrimary(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        raise StepBoom("primary down")

    async def compensate(self, context: Ctx) -> None:
        context.b = None


class StepBFallback(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        context.b = "b-fallback"
        return self._generate_step_result(Resp(value="b-fallback"))

    async def compensate(self, context: Ctx) -> None:
        context.b = None


class StepC(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        context.c = "c"
        return self._generate_step_result(Resp(value="c"))

    async def compensate(self, context: Ctx) -> None:
        context.c = None


class StepCFail(SagaStepHandler[Ctx, Resp]):
    async def act(self, context: Ctx) -> SagaStepResult[Ctx, Resp]:
        raise StepBoom("last step fails")

    async def compensate(self, context: Ctx) -> None:
        context.c = None


class Plain3(Saga[Ctx]):
    steps = [StepA, StepB, StepC]


class Fallback3(Saga[Ctx]):
    steps = [StepA, Fallback(step=StepBPrimary, fallback=StepBFallback), StepC]


class Fail3(Saga[Ctx]):
    steps = [StepA, StepB, StepCFail]
