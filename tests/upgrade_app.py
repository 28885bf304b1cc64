"""A saga app that every released fallback_saga (0.4.0 and later) can run:
it writes the old journals that the upgrade tests open with today's code.

It uses only the API 0.4.0 already had (``Saga``, ``SagaContext``,
``SagaStepHandler``, ``Fallback``, ``Response``, ``current_step``,
``SQLiteSagaStore``), so the same module defines the saga in the old process
that wrote a journal and in the test that resumes it.

``upgrade_app.cli([DB, LEDGER, SAGA_ID, CRASH_AT?])`` (run with an old
release first on ``sys.path``: see ``tests/data/make_old_journals.py``) runs
one saga; ``CRASH_AT`` (``act:B``, ``compensate:B2``...) makes the process die
with ``os._exit`` inside that step, after its effect: no ``finally``, no
flush, no ``close``. ``resume:ID`` as the saga id resumes saga ``ID`` (under
a lease, as ``Saga.resume`` takes one) instead of starting it, so that a
second crash leaves the saga leased by a dead worker; ``recover:ID`` runs a
recovery pass (``recover``) instead, as a worker of that release claims.

``$UPGRADE_APP_HOLD`` (``act:B``...) stops the process twice for a line on
its standard input, saying so on its standard output: once its store is open
(``opened``), and inside that step before its participant is called
(``holding act:B``) — so that a test runs an old release's worker alongside
today's code at exact points (tests/test_rolling_deploy.py).

The steps call a participant that keeps a ledger (one JSON line per call,
``O_APPEND``), applying an effect at most once per idempotency key and
answering a repeated call with ``kind: "skip"``, as a real participant does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from fallback_saga import (
    Fallback,
    Response,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
    SQLiteSagaStore,
    current_step,
)

# --------------------------------------------------------------------------- the context


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Address:
    street: str
    zip_code: str
    tags: set[str] = dataclasses.field(default_factory=set)


REF = uuid.UUID("12345678-1234-5678-1234-567812345678")


@dataclasses.dataclass
class UpgradeCtx(SagaContext):
    """Every lossless kind of value a context may hold (S14), so that an old
    codec's journal is decoded by the new one value for value, type for type."""

    order_id: str
    variant: str = "ok"
    trail: list[str] = dataclasses.field(default_factory=list)
    amount: Decimal = Decimal("10.10")
    tiny: Decimal = Decimal("-0.000")
    big: Decimal = Decimal("1E+3")
    ref: uuid.UUID = dataclasses.field(default_factory=lambda: REF)
    placed_at: dt.datetime = dt.datetime(2026, 3, 29, 1, 30, 15, 123456,
                                         tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive_at: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5)
    day: dt.date = dt.date(2026, 2, 28)
    at_time: dt.time = dt.time(23, 59, 59, 999999)
    colour: Colour = Colour.BLUE
    priority: Priority = Priority.HIGH
    address: Address = dataclasses.field(
        default_factory=lambda: Address("Main St 1", "01234", {"b", "a"})
    )
    # Values in untyped positions keep their types since 0.5.0 (tagged JSON):
    # see rich_fields.
    loose: Any = None
    pair: tuple[int, str] = (1, "x")
    counts: dict[int, float] = dataclasses.field(
        default_factory=lambda: {1: -0.0, 2: 1e16, 3: 0.1}
    )
    huge: int = 2**70
    maybe: str | None = None


def rich_fields(version: str) -> dict[str, Any]:
    """The fields a release's codec can hold beyond 0.4.0's."""
    if version == "0.4.0":
        return {}
    return {"loose": {
        "blob": b"\x00\xffpay\n",
        "ttl": dt.timedelta(days=-1, seconds=5, microseconds=7),
        "amount": Decimal("-0.00"),
        "ref": uuid.UUID(int=7),
        "at": dt.datetime(2026, 10, 25, 2, 30, tzinfo=dt.UTC),
        "pair": (1, (2.5, "x")),
        "keys": {1: "one", (2, 3): "tuple key"},
        "colours": frozenset({Colour.RED}),
        "address": Address("Side St 2", "99999", {"x"}),
    }}


def new_context(saga_id: str, version: str) -> UpgradeCtx:
    return UpgradeCtx(order_id=saga_id, variant=CASES[saga_id][0], **rich_fields(version))


# --------------------------------------------------------------------------- the participant


def _ledger() -> Path:
    return Path(os.environ["UPGRADE_APP_LEDGER"])


def ledger_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def hold(point: str) -> None:
    """Wait for a line on standard input if ``$UPGRADE_APP_HOLD`` names
    ``point`` (the whole process waits: it holds its leases meanwhile)."""
    if os.environ.get("UPGRADE_APP_HOLD") == point:
        print(f"holding {point}", flush=True)
        sys.stdin.readline()


def participant(action: str, step: str, *, fail: bool = False) -> None:
    info = current_step()
    assert info is not None
    key = info.idempotency_key
    applied = any(
        line["kind"] == "apply" and line["key"] == key for line in ledger_lines(_ledger())
    )
    kind = "fail" if fail else ("skip" if applied else "apply")
    import fallback_saga

    line = {"kind": kind, "action": action, "step": step, "key": key,
            "saga": info.saga_id, "version": fallback_saga.__version__}
    fd = os.open(_ledger(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.environ.get("UPGRADE_APP_CRASH") == f"{action}:{step}" and not fail:
        os._exit(137)  # dies after the effect, before the step returns


# --------------------------------------------------------------------------- the saga


class Receipt(Response, frozen=True):
    step: str
    amount: Decimal
    codes: tuple[int, ...]


class _Step(SagaStepHandler[UpgradeCtx, Receipt]):
    name: ClassVar[str] = "?"

    def act_fails(self, ctx: UpgradeCtx) -> bool:
        return False

    def compensation_fails(self, ctx: UpgradeCtx) -> bool:
        return False

    async def act(self, ctx: UpgradeCtx) -> Any:
        hold(f"act:{self.name}")
        ctx.trail.append(self.name)
        if self.act_fails(ctx):
            participant("act", self.name, fail=True)
            raise RuntimeError(f"{self.name} declined")
        participant("act", self.name)
        return self._generate_step_result(Receipt(self.name, Decimal("9.99"), (1, 2)))

    async def compensate(self, ctx: UpgradeCtx) -> None:
        ctx.trail.append(f"-{self.name}")
        if self.compensation_fails(ctx):
            participant("compensate", self.name, fail=True)
            raise RuntimeError(f"compensation of {self.name} failed")
        participant("compensate", self.name)


class StepA(_Step):
    name = "A"

    def compensation_fails(self, ctx: UpgradeCtx) -> bool:
        return ctx.variant == "stuck"


class StepB(_Step):
    name = "B"

    def act_fails(self, ctx: UpgradeCtx) -> bool:
        return ctx.variant != "ok"


class StepB2(_Step):
    name = "B2"


class StepC(_Step):
    name = "C"

    def act_fails(self, ctx: UpgradeCtx) -> bool:
        return ctx.variant in ("unwind", "stuck")


class UpgradeSaga(Saga[UpgradeCtx]):
    steps: ClassVar[list[Any]] = [StepA, Fallback(step=StepB, fallback=StepB2), StepC]


def no_retry() -> Any:
    from fallback_saga import RetryPolicy

    return RetryPolicy(attempts=1, delay=0.0, backoff=1.0, jitter=0.0)


# Each saga id of the fixture: (variant, where the first process dies or None,
# a second process that resumes it and dies too, leaving its lease behind).
CASES: dict[str, tuple[str, str | None, str | None]] = {
    "completed": ("ok", None, None),
    "completed-fallback": ("fallback", None, None),
    "compensated": ("unwind", None, None),
    "failed": ("stuck", None, None),
    "running-in-act": ("ok", "act:B", None),
    "running-in-fallback": ("fallback", "act:B2", None),
    "running-after-fallback": ("fallback", "act:C", None),
    "compensating-in-compensate": ("unwind", "compensate:B2", None),
    "compensating-between": ("unwind", "compensate:A", None),
    "leased-by-dead-worker": ("ok", "act:B", "act:B"),
}


def open_store(db: str) -> Any:
    """``DB`` is a SQLite file, or ``pg:SCHEMA`` for a PostgreSQL store whose
    conninfo is ``$UPGRADE_APP_DSN`` (psycopg imported only then)."""
    if db.startswith("pg:"):
        from fallback_saga.store.postgres import PostgresSagaStore

        return PostgresSagaStore(os.environ["UPGRADE_APP_DSN"], schema=db[3:],
                                 min_size=1, max_size=4)
    return SQLiteSagaStore(db)


async def main(db: str, saga_id: str) -> None:
    store = open_store(db)
    saga = UpgradeSaga(store=store, compensation_retry=no_retry())
    try:
        if os.environ.get("UPGRADE_APP_HOLD"):
            await store.open()
            print("opened", flush=True)
            sys.stdin.readline()
        if saga_id.startswith("resume:"):
            await saga.resume(saga_id.removeprefix("resume:"))
        elif saga_id.startswith("recover:"):
            from fallback_saga import recover

            print(await recover(store, [saga], older_than=0), flush=True)
        else:
            import fallback_saga

            await saga.run(new_context(saga_id, fallback_saga.__version__), saga_id=saga_id)
    except SagaFailed:
        pass
    finally:
        await store.close()


def cli(argv: list[str]) -> None:
    """``DB LEDGER SAGA_ID [CRASH_AT]``; run through ``import upgrade_app``,
    never as ``__main__``, so that the journal names its classes as the
    tests import them (``upgrade_app:Colour``)."""
    os.environ["UPGRADE_APP_LEDGER"] = argv[1]
    if len(argv) > 3:
        os.environ["UPGRADE_APP_CRASH"] = argv[3]
    asyncio.run(main(argv[0], argv[2]))
