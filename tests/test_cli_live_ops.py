"""Operator actions on a live store: the command line run while sagas are in
flight, on SQLite (each writer) and PostgreSQL. An operator's action must
never break the journal's truth (S13), nor a family of sagas (S15).

Each test drives a saga up to a point it chooses (events, no sleeps), runs
the real command (``main``, in a thread: it runs its own event loop), lets
the saga go on, and checks a participant ledger (``subsaga_app``'s: every
call, applied at most once per idempotency key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import subsaga_app as app

from fallback_saga import (
    Saga,
    SagaFailed,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    SubSaga,
)
from fallback_saga.cli import main

pytest_plugins = ["conftest_pg"]

STORES = ("sqlite-thread", "sqlite-process", "sqlite-inline", "postgres")


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path) -> Path:
    app.LEDGER = tmp_path / "ledger.jsonl"
    app.CRASH_AT = None
    return app.LEDGER


def calls(ledger: Path) -> list[tuple[str, str]]:
    if not ledger.exists():
        return []
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    return [(line["kind"], line["key"]) for line in lines]


class Live:
    """A store the test's sagas write to, and the options naming it to ``main``."""

    def __init__(self, store: Any, options: list[str]) -> None:
        self.store = store
        self.options = options

    async def command(self, *argv: str) -> tuple[int, str]:
        """``python -m fallback_saga ARGV --db/--dsn ...``: exit status and stdout."""
        import contextlib
        import io

        out = io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out):
                return main([*argv, *self.options])

        status = await asyncio.to_thread(run)
        return status, out.getvalue()


@pytest.fixture(params=STORES)
async def live(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Live]:
    if request.param.startswith("sqlite"):
        path = tmp_path / "sagas.db"
        writer = request.param.partition("-")[2]
        async with SQLiteSagaStore(path, writer=writer) as sqlite:
            yield Live(sqlite, ["--db", str(path)])
        return
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as pg:
        yield Live(pg, ["--dsn", conninfo, "--schema", schema])


# --------------------------------------------------------------------------- purge


async def test_S15_S13_purge_keeps_a_finished_child_while_its_parent_is_in_flight(
    live: Live, ledger: Path
) -> None:
    """A child saga (SubSaga) that COMPLETED is still needed while its parent
    runs: a later step of the parent may fail, and unwinding the parent
    unwinds the child from the child's own journal. A purge that deleted the
    finished child let the parent end COMPENSATED with the child's payment
    never refunded (the child, not found, counted as never started)."""
    shipping = asyncio.Event()
    fail = asyncio.Event()

    class ShipLate(SagaStepHandler[app.OrderCtx, None]):
        async def act(self, ctx: app.OrderCtx, /) -> None:
            shipping.set()
            await fail.wait()
            raise RuntimeError("no courier")

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(app.PaymentSaga, context=app.pay_context, name="Pay"), ShipLate,
        ]

    run = asyncio.create_task(Order(store=live.store).run(app.OrderCtx(), saga_id="o1"))
    try:
        await shipping.wait()  # the child completed; the parent runs its last step
        assert (await live.store.load("o1/Pay")).status is SagaStatus.COMPLETED
        status, out = await live.command("purge", "--older-than", "0")
    finally:
        fail.set()
    with pytest.raises(SagaFailed) as failed:
        await run
    assert (status, out.split(" (")[0]) == (0, "purged 0 finished sagas")
    assert failed.value.status is SagaStatus.COMPENSATED
    assert (await live.store.load("o1/Pay")).status is SagaStatus.COMPENSATED
    assert [key for kind, key in calls(ledger) if kind == "apply"] == [
        "o1:Reserve", "o1/Pay:Authorize", "o1/Pay:Capture",
        "o1/Pay:Capture:compensate", "o1/Pay:Authorize:compensate", "o1:Reserve:compensate",
    ]
    # Once the parent is finished, one purge takes the whole family.
    status, out = await live.command("purge", "--older-than", "0")
    assert (status, out.split(" (")[0]) == (0, "purged 2 finished sagas")


async def test_S15_one_purge_takes_a_finished_family_down_to_its_grandchildren(
    live: Live,
) -> None:
    """A family goes parent first, then each generation, in one purge; a
    child of a parent in flight stays, however old."""
    from fallback_saga.testing import entry

    async def saga(saga_id: str, status: SagaStatus, *children: str) -> None:
        steps = [entry(n, step, StepStatus.COMPLETED) for n, step in enumerate(children)]
        await live.store.create(saga_id, "S", "fp", {}, steps, status=status)

    await saga("p", SagaStatus.COMPLETED, "A")
    await saga("p/A", SagaStatus.COMPLETED, "B")
    await saga("p/A/B", SagaStatus.COMPENSATED)
    await saga("q", SagaStatus.RUNNING, "X")
    await saga("q/X", SagaStatus.COMPLETED, "Y")
    await saga("q/X/Y", SagaStatus.COMPLETED)
    assert await live.store.purge(older_than=-1) == 3
    left = await live.store.list_sagas(limit=10)
    assert sorted(summary.saga_id for summary in left) == ["q", "q/X", "q/X/Y"]
