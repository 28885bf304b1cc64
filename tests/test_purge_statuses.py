"""Which finished sagas a purge takes: by default COMPLETED and COMPENSATED
ones only. A FAILED saga is parked for an operator (a compensation gave up,
S6): its journal is the only record of what was left undone, so a purge
deletes it only when told to by name (``statuses``, ``--status failed``).

The durable stores run the same checks through ``RecoverableStoreContract``
(fallback_saga.testing); here: ``MemorySagaStore``'s purge, and the command
line on SQLite (each writer) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    MemorySagaStore,
    Saga,
    SagaContext,
    SagaFailed,
    SagaNotFound,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    SubSaga,
)
from fallback_saga.cli import main

pytest_plugins = ["conftest_pg"]

FINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


async def one_of_each(store: Any, prefix: str = "s") -> None:
    for status in FINAL:
        await store.create(f"{prefix}-{status.value}", "S", "fp", {}, [], status=status)


async def ids(store: Any) -> set[str]:
    return {summary.saga_id for summary in await store.list_sagas(limit=100)}


# --------------------------------------------------------------------------- memory


async def test_S6_memory_purge_keeps_failed_sagas_for_an_operator_unless_named() -> None:
    store = MemorySagaStore()
    await one_of_each(store)
    await store.create("s-running", "S", "fp", {}, [])
    assert await store.purge(older_than=-1) == 2
    assert await ids(store) == {"s-failed", "s-running"}
    assert await store.purge(older_than=-1, statuses=[SagaStatus.FAILED]) == 1
    assert await ids(store) == {"s-running"}


async def test_memory_purge_takes_only_old_enough_sagas_of_the_statuses_named() -> None:
    store = MemorySagaStore()
    await one_of_each(store)
    assert await store.purge(older_than=3600, statuses=FINAL) == 0
    assert await store.purge(older_than=-1, statuses=["compensated"]) == 1
    assert await ids(store) == {"s-completed", "s-failed"}


@pytest.mark.parametrize(
    ("statuses", "error", "says"),
    [
        ([], ValueError, "at least one"),
        ([SagaStatus.RUNNING], ValueError, "never deletes a running saga"),
        (["compensating"], ValueError, "never deletes a compensating saga"),
        (["FAILED"], ValueError, "'FAILED' is not a saga status"),
        ("failed", TypeError, "a collection of saga statuses"),
    ],
)
async def test_S12_memory_purge_refuses_statuses_it_cannot_take(
    statuses: Any, error: type[Exception], says: str
) -> None:
    store = MemorySagaStore()
    await one_of_each(store)
    with pytest.raises(error, match=says):
        await store.purge(older_than=-1, statuses=statuses)
    assert len(await ids(store)) == 3


async def test_S15_memory_purge_keeps_a_finished_child_while_its_parent_runs() -> None:
    """A family goes parent first, its children in the same purge; the child
    of a parent in flight stays, however old."""
    store = MemorySagaStore()
    await store.create("p", "S", "fp", {}, [], status=SagaStatus.COMPLETED)
    await store.create("p/A", "S", "fp", {}, [], status=SagaStatus.COMPLETED)
    await store.create("p/A/B", "S", "fp", {}, [], status=SagaStatus.COMPENSATED)
    await store.create("q", "S", "fp", {}, [])
    await store.create("q/X", "S", "fp", {}, [], status=SagaStatus.COMPLETED)
    assert await store.purge(older_than=-1) == 3
    assert await ids(store) == {"q", "q/X"}


async def test_memory_purge_leaves_no_stale_id_for_retention_to_drop_a_new_saga_by() -> None:
    """A purged id taken again by a running saga: the bound on finished
    sagas must not drop that one when the purged one's turn comes."""
    store = MemorySagaStore(max_finished=2)
    await store.create("a", "S", "fp", {}, [], status=SagaStatus.COMPLETED)
    assert await store.purge(older_than=-1) == 1
    await store.create("a", "S", "fp", {}, [])  # running, under the purged id
    for n in range(3):
        await store.create(f"done-{n}", "S", "fp", {}, [], status=SagaStatus.COMPLETED)
    assert (await store.load("a")).status is SagaStatus.RUNNING
    assert await ids(store) == {"a", "done-1", "done-2"}


async def test_S15_S8_memory_purge_while_a_parent_runs_leaves_its_child_to_unwind() -> None:
    """A watched run (the memory store's own path): its finished child stays
    through a purge while the parent runs, and is unwound when it fails."""
    undone: list[str] = []
    shipping, fail = asyncio.Event(), asyncio.Event()

    class Ctx(SagaContext):
        pass

    class Charge(SagaStepHandler[Ctx, None]):
        async def act(self, ctx: Ctx, /) -> None:
            pass

        async def compensate(self, ctx: Ctx, /) -> None:
            undone.append("Charge")

    class Pay(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [Charge]

    class ShipLate(SagaStepHandler[Ctx, None]):
        async def act(self, ctx: Ctx, /) -> None:
            shipping.set()
            await fail.wait()
            raise RuntimeError("no courier")

    class Order(Saga[Ctx]):
        steps: ClassVar[list[Any]] = [SubSaga(Pay, context=lambda ctx: Ctx(), name="Pay"), ShipLate]

    store = MemorySagaStore()
    run = asyncio.create_task(Order(store=store).run(Ctx(), saga_id="o1"))
    await shipping.wait()
    assert await store.purge(older_than=-1, statuses=FINAL) == 0
    fail.set()
    with pytest.raises(SagaFailed):
        await run
    assert undone == ["Charge"]
    assert await store.purge(older_than=-1) == 2
    with pytest.raises(SagaNotFound):
        await store.load("o1/Pay")


# --------------------------------------------------------------------------- command line

STORES = ("sqlite-thread", "sqlite-process", "sqlite-inline", "postgres")


@pytest.fixture(params=STORES)
async def live(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, list[str]]]:
    if request.param.startswith("sqlite"):
        path = tmp_path / "sagas.db"
        writer = request.param.partition("-")[2]
        async with SQLiteSagaStore(path, writer=writer) as sqlite:
            yield sqlite, ["--db", str(path)]
        return
    from fallback_saga.store.postgres import PostgresSagaStore

    conninfo = request.getfixturevalue("pg_conninfo")
    schema = request.getfixturevalue("pg_schema")
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as pg:
        yield pg, ["--dsn", conninfo, "--schema", schema]


async def command(*argv: str) -> tuple[int, str, str]:
    """``python -m fallback_saga ARGV``, in a thread (it runs its own loop)."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(argv))

    status = await asyncio.to_thread(run)
    return status, out.getvalue(), err.getvalue()


async def test_S6_purge_command_keeps_failed_sagas_for_an_operator_unless_named(
    live: tuple[Any, list[str]],
) -> None:
    store, options = live
    await one_of_each(store)
    status, out, _ = await command("purge", "--older-than", "0", *options)
    assert (status, out.splitlines()[0]) == (
        0, "purged 2 finished sagas (completed or compensated, last updated more than 0s ago)"
    )
    assert await ids(store) == {"s-failed"}
    await one_of_each(store, "t")
    status, out, _ = await command("purge", "--older-than", "0", "--status", "failed", *options)
    assert (status, out.splitlines()[0]) == (
        0, "purged 2 finished sagas (failed, last updated more than 0s ago)"
    )
    assert await ids(store) == {"t-completed", "t-compensated"}
    argv = ["purge", "--older-than", "0", "--status", "completed,failed", "--status", "compensated"]
    status, out, _ = await command(*argv, *options)
    assert (status, out.splitlines()[0]) == (
        0, "purged 2 finished sagas (completed, compensated or failed, last updated more than 0s "
        "ago)"
    )
    assert await ids(store) == set()


async def test_S6_purge_command_counts_only_the_failed_sagas_old_enough_to_purge(
    live: tuple[Any, list[str]],
) -> None:
    """The purge says how many FAILED sagas it kept: those ``--status
    failed`` would have taken, last updated more than AGE ago. A FAILED saga
    of a minute ago was counted too, under ``--older-than 7d``: the operator
    was told to purge what no purge of that age takes."""
    store, options = live
    await one_of_each(store)
    status, out, _ = await command("purge", "--older-than", "1h", *options)
    assert (status, out.splitlines()) == (
        0, ["purged 0 finished sagas (completed or compensated, last updated more than 1h ago)"]
    )
    status, out, _ = await command("purge", "--older-than", "1h", "--status", "failed", *options)
    assert (status, out.splitlines()[0]) == (
        0, "purged 0 finished sagas (failed, last updated more than 1h ago)"
    )
    status, out, _ = await command("purge", "--older-than", "0", *options)
    assert (status, out.splitlines()) == (0, [
        "purged 2 finished sagas (completed or compensated, last updated more than 0s ago)",
        "kept 1 failed saga old enough to purge (a compensation gave up: an operator must "
        "look; --status failed purges it)",
    ])
    assert await ids(store) == {"s-failed"}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("running", "invalid status 'running' (a saga still live: never purged)"),
        ("compensating", "invalid status 'compensating' (a saga still live: never purged)"),
        ("done", "invalid status 'done' (not a saga status)"),
        ("completed,", "invalid status '' (not a saga status)"),
        ("", "invalid status '' (not a saga status)"),
    ],
)
def test_S12_purge_command_refuses_a_status_it_cannot_take(
    tmp_path: Path, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "sagas.db")

    async def fill() -> None:
        async with SQLiteSagaStore(db) as store:
            await one_of_each(store)

    asyncio.run(fill())
    assert main(["purge", "--db", db, "--older-than", "0", "--status", value]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "choose from completed, compensated, failed" in err
    assert "Traceback" not in err

    async def left() -> set[str]:
        async with SQLiteSagaStore(db) as store:
            return await ids(store)

    assert len(asyncio.run(left())) == 3


async def test_S13_purge_keeps_a_failed_saga_an_operators_retry_unwinding_holds(
    live: tuple[Any, list[str]],
) -> None:
    """``retry-unwinding`` leases a FAILED saga (``claim_saga``) before it
    writes COMPENSATING: a purge in between deleted the saga it was
    unwinding, whose next write then found nothing. A held lease keeps a
    saga from any purge, which says how many it kept (and how many FAILED
    sagas it was not asked to delete); given back, the saga is purged."""
    store, options = live
    await one_of_each(store)
    lease = await store.claim_saga("s-failed", owner="operator", lease_seconds=3600)
    status, out, _ = await command("purge", "--older-than", "0", *options)
    assert status == 0
    assert out.splitlines()[:2] == [
        "purged 2 finished sagas (completed or compensated, last updated more than 0s ago)",
        "kept 1 failed saga old enough to purge (a compensation gave up: an operator must "
        "look; --status failed purges it)",
    ]
    status, out, _ = await command("purge", "--older-than", "0", "--status", "failed", *options)
    assert status == 0
    assert out.splitlines()[:2] == [
        "purged 0 finished sagas (failed, last updated more than 0s ago)",
        "kept 1 leased saga old enough to purge (an operator's retry-unwinding or resume "
        "holds it: purge again once done)",
    ]
    assert await ids(store) == {"s-failed"}
    assert (await store.load("s-failed")).status is SagaStatus.FAILED
    await store.release(lease)
    status, out, _ = await command("purge", "--older-than", "0", "--status", "failed", *options)
    assert (status, out.splitlines()[0]) == (
        0, "purged 1 finished saga (failed, last updated more than 0s ago)")
    assert "kept" not in out
    assert await ids(store) == set()
