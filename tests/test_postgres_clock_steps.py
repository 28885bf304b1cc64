"""S10/S13 under a database server whose wall clock steps (NTP, a VM
resumed, a wrong RTC put right).

``PostgresSagaStore`` takes every time from the server's clock (``now()``).
The test does not move the server's clock (that is the machine's, shared by
every test): a step is simulated on the rows instead. A step *back* by D
after some writes leaves their stamps D ahead of the clock, so the test
moves every time column of the table (whatever the schema names) D forward;
a step *forward* leaves them D behind, so it moves them D back. Nothing
sleeps.

A step back must not strand a saga until the clock catches up (a month
ahead, and it would sit a month with nobody driving it); a step forward
may take a live saga over, and fencing must then shut its first runner out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from conftest_pg import require_driver
from test_sqlite_clock_steps import (
    check_a_lease_a_step_forward_expired_is_fenced,
    check_a_step_forward_fences_out_the_live_first_run,
    deferred_ahead,
    leased_ahead,
    new_saga,
    released_ahead,
    renewed_ahead,
    written_ahead,
)

from fallback_saga import (
    LeaseLost,
    StepStatus,
)
from fallback_saga.testing import entry

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)


from fallback_saga.store import _postgres_schema as pg_schema_module  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

MONTH = 30 * 86_400.0


from pg_fixtures import postgres_store, raw_connection  # noqa: E402, F401  (fixtures store, raw)


def clock_step(raw: Any, seconds: float) -> None:
    """The server's clock steps by ``seconds`` (back when negative): every
    time written so far is that much ahead of (or behind) the clock now."""
    columns = [
        name for (name,) in raw.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'fallback_saga_sagas'"
            " AND data_type = 'timestamp with time zone'"
        ).fetchall()
    ]
    assert {"created_at", "updated_at", "lease_expires_at"} <= set(columns)
    shift = ", ".join(f"{c} = {c} - make_interval(secs => %s)" for c in columns)
    raw.execute(f"UPDATE fallback_saga_sagas SET {shift}", [seconds] * len(columns))


async def handed_off_ahead(store: PostgresSagaStore) -> None:
    """Handed off by a worker shutting down."""
    await new_saga(store, "s")
    await store.hand_off(await store.claim_saga("s", owner="leaving", lease_seconds=300))


BEFORE_THE_STEP: list[Callable[[PostgresSagaStore], Any]] = [
    written_ahead, leased_ahead, renewed_ahead, released_ahead, deferred_ahead,
    handed_off_ahead,
]


@pytest.mark.parametrize("before", BEFORE_THE_STEP, ids=lambda f: f.__name__)
async def test_S10_a_server_clock_stepped_back_strands_no_saga_from_claim(
    store: PostgresSagaStore, raw: Any, before: Callable[[PostgresSagaStore], Any]
) -> None:
    await before(store)  # the server's clock ran a month ahead ...
    token = (await store.lease_state("s")).token
    clock_step(raw, -MONTH + 3_600)  # ... and was put right; an hour later, recovery runs
    (lease,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10)
    assert (lease.saga_id, lease.token) == ("s", token + 1)
    state = await store.lease_state("s")
    assert (state.owner, state.token) == ("w2", token + 1)


@pytest.mark.parametrize("before", BEFORE_THE_STEP, ids=lambda f: f.__name__)
async def test_S10_a_server_clock_stepped_back_strands_no_saga_from_resume(
    store: PostgresSagaStore, raw: Any, before: Callable[[PostgresSagaStore], Any]
) -> None:
    """``Saga.resume`` (and a parent driving its child) lease one saga by id."""
    await before(store)
    token = (await store.lease_state("s")).token
    clock_step(raw, -MONTH + 3_600)
    lease = await store.claim_saga("s", owner="operator", lease_seconds=300)
    assert lease.token == token + 1


async def test_S10_a_small_server_clock_step_back_takes_no_live_saga_over(
    store: PostgresSagaStore, raw: Any
) -> None:
    """A step back shorter than ``older_than`` is no reason to take over a
    saga that was written, or a lease that was renewed, just before it: both
    are probably alive, and a takeover would run a step twice. Nor does a
    step back take over a lease by id (``Saga.resume``) written after it."""
    await new_saga(store, "written")
    await new_saga(store, "leased")
    lease = await store.claim_saga("leased", owner="alive", lease_seconds=-1)
    await store.renew(lease, 300)
    clock_step(raw, -30)  # an NTP step back of 30 s
    assert await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10) == []
    clock_step(raw, 91)  # 61 s later: the written one's age is past older_than; the lease holds
    (taken,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=10)
    assert taken.saga_id == "written"
    await store.renew(lease, 300)  # renewed after the step: on the clock's scale now
    with pytest.raises(Exception, match="leased"):  # SagaBusy
        await store.claim_saga("leased", owner="operator", lease_seconds=300)


async def test_S13_a_saga_taken_over_after_a_server_clock_step_back_fences_out_its_old_lease(
    store: PostgresSagaStore, raw: Any
) -> None:
    """Taking a stranded saga over advances its fencing token, so a holder
    that was not dead after all is refused at its next write or renewal."""
    await new_saga(store, "s")
    old = await store.claim_saga("s", owner="slow-worker", lease_seconds=300)
    clock_step(raw, -MONTH)
    (new,) = await store.claim(owner="w2", lease_seconds=300, older_than=60, limit=1)
    with pytest.raises(LeaseLost):
        await store.renew(old, 300)
    with pytest.raises(LeaseLost):
        await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=old)
    await store.append("s", [entry(0, "a", StepStatus.COMPLETED)], fence=new)


async def test_S10_concurrent_claimers_never_take_a_fresh_lease_as_written_ahead(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Without a step, no stamp is ahead of a claim that can see it (a
    claim's transaction may start before a lease it then sees was written):
    8 claimers racing with older_than=0 lease each saga once."""
    stores = [PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for n in range(200):
            await new_saga(stores[0], f"s-{n}")

        async def claim_all(claimer: PostgresSagaStore, owner: str) -> list[str]:
            taken: list[str] = []
            while batch := await claimer.claim(
                owner=owner, lease_seconds=300, older_than=0, limit=3
            ):
                taken.extend(lease.saga_id for lease in batch)
            return taken

        results = await asyncio.gather(
            *(claim_all(stores[n % 4], f"w{n}") for n in range(8))
        )
        claimed = [saga_id for taken in results for saga_id in taken]
        assert sorted(claimed) == sorted(f"s-{n}" for n in range(200))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_S10_leases_taken_before_the_migration_expire_as_they_did(
    pg_conninfo: str, pg_schema: str, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by schema v4 (no lease write time): opening it adds
    the column in place; a lease taken before expires as it always did, and
    one taken after is on the new rules."""
    with monkeypatch.context() as v4:
        v4.setattr(pg_schema_module, "_MIGRATIONS", pg_schema_module._MIGRATIONS[:4])
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as old:
            await new_saga(old, "old-lease")
            await new_saga(old, "crashed")
    assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (4,)
    # Leased as schema v4's claim_saga did it (its statements name no lease write time).
    raw.execute(
        "UPDATE fallback_saga_sagas SET lease_owner = 'dead', fence = fence + 1,"
        " lease_expires_at = now() + interval '300 s' WHERE saga_id = 'old-lease'"
    )
    relfile = raw.execute("SELECT pg_relation_filenode('fallback_saga_sagas')").fetchone()
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        assert raw.execute("SELECT version FROM fallback_saga_schema").fetchone() == (
            pg_schema_module.SCHEMA_VERSION,)
        assert raw.execute(
            "SELECT pg_relation_filenode('fallback_saga_sagas')"
        ).fetchone() == relfile  # not rewritten
        assert raw.execute(
            "SELECT lease_written_at FROM fallback_saga_sagas WHERE saga_id = 'old-lease'"
        ).fetchone() == (None,)
        clock_step(raw, -MONTH)
        # The old lease holds until its (old-scale) expiry; the crashed saga
        # written ahead is due.
        (lease,) = await store.claim(owner="w", lease_seconds=300, older_than=60, limit=10)
        assert lease.saga_id == "crashed"
        clock_step(raw, MONTH + 301)  # the old lease's expiry passed (the other's too)
        leases = await store.claim(owner="w", lease_seconds=300, older_than=60, limit=10)
        assert sorted(lease.saga_id for lease in leases) == ["crashed", "old-lease"]


# --------------------------------------------------------------------------- forward


async def test_S13_a_server_clock_stepped_forward_fences_out_the_live_first_run(
    store: PostgresSagaStore, raw: Any
) -> None:
    await check_a_step_forward_fences_out_the_live_first_run(
        store, lambda seconds: clock_step(raw, seconds)
    )


async def test_S13_a_lease_expired_by_a_server_clock_step_forward_is_fenced(
    store: PostgresSagaStore, raw: Any
) -> None:
    await check_a_lease_a_step_forward_expired_is_fenced(
        store, lambda seconds: clock_step(raw, seconds)
    )
