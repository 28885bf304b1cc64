"""PostgreSQL's purge over a long backlog, on a real throwaway server.

A purge was one DELETE per generation of sagas: one statement (and one
transaction) over the whole backlog. Under a ``statement_timeout`` (usual on
managed servers, and on many applications' roles) the server cancelled it
every time, so an operator could never purge. It now deletes in batches,
each one statement of its own, sized to stay inside the timeout.

The backlog's sagas cost the server a known minimum to delete: a trigger the
test installs sleeps a millisecond for each saga row deleted. That makes one
statement over the backlog certainly longer than the role's timeout (on any
machine, however fast), without waiting on anything: the sleep is the work
being timed, not a stand-in for synchronization.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import subsaga_app as app
from conftest_pg import require_driver

require_driver()

import psycopg  # noqa: E402
from pg_cluster import PostgresCluster  # noqa: E402

from fallback_saga import Saga, SagaFailed, SagaStatus, SagaStepHandler, SubSaga  # noqa: E402
from fallback_saga.errors import SagaStoreError  # noqa: E402
from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

pytest_plugins = ["conftest_pg"]

TIMEOUT_MS = 300  # the role's statement_timeout
FAMILIES = 300  # each: a parent, its child "/Pay" and grandchild "/Pay/Card"
LONERS = 900  # sagas without a family


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path) -> Path:
    app.LEDGER = tmp_path / "ledger.jsonl"
    app.CRASH_AT = None
    return app.LEDGER


@pytest.fixture
def timed_role(pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str) -> Iterator[str]:
    """The conninfo of a role whose statements the server stops after
    TIMEOUT_MS (set on the role, as a managed server's operator would), with
    the saga tables of ``pg_schema`` to work on."""
    role, password = f"purger_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"ALTER ROLE {role} SET statement_timeout = '{TIMEOUT_MS}ms'")
    yield (
        f"host=127.0.0.1 port={pg_cluster.port} user={role} password={password} "
        f"dbname={pg_cluster.dbname}"
    )
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def _statuses(n: int) -> str:
    return ("completed", "compensated", "failed")[n % 3]


async def make_backlog(conninfo: str, schema: str, role: str | None) -> None:
    """The store's tables (made by the store), filled with a day-old backlog
    of finished sagas (two history rows each), every saga row costing its
    DELETE a millisecond; ``role`` may use them."""
    async with PostgresSagaStore(conninfo, schema=schema, min_size=1) as store:
        await store.open()
    sagas, steps = f'"{schema}".fallback_saga_sagas', f'"{schema}".fallback_saga_steps'
    rows: list[tuple[str, str]] = []
    for n in range(FAMILIES):
        status = _statuses(n)
        # The child and grandchild end as their parent did (a FAILED parent
        # unwound them: COMPENSATED), created after it, as a real run does.
        below = "compensated" if status == "failed" else status
        rows += [(f"fam-{n}", status), (f"fam-{n}/Pay", below), (f"fam-{n}/Pay/Card", below)]
    rows += [(f"one-{n}", _statuses(n)) for n in range(LONERS)]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {sagas} (saga_id, saga_name, fingerprint, status, context,"
                f" created_at, updated_at) VALUES (%s, 'S', 'fp', %s, '{{}}',"
                f" now() - interval '1 day', now() - interval '1 day')",
                rows,
            )
        conn.execute(
            f"INSERT INTO {steps} (saga_id, seq, position, step, branch, action, status,"
            f" attempt, at) SELECT saga_id, n, 0, 'A', 'primary', 'act', 'started', 1, 0"
            f" FROM {sagas}, generate_series(1, 2) AS n"
        )
        conn.execute(
            f'CREATE FUNCTION "{schema}".slow_delete() RETURNS trigger LANGUAGE plpgsql AS'
            f" $$ BEGIN PERFORM pg_sleep(0.001); RETURN OLD; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER slow_delete BEFORE DELETE ON {sagas}"
            f' FOR EACH ROW EXECUTE FUNCTION "{schema}".slow_delete()'
        )
        if role is not None:
            conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
            conn.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
            conn.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')


def stored(conninfo: str, schema: str) -> tuple[set[str], int]:
    """The saga ids stored, and how many history rows have no saga."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = conn.execute(f'SELECT saga_id FROM "{schema}".fallback_saga_sagas')
        ids = {row[0] for row in found}
        row = conn.execute(
            f'SELECT count(*) FROM "{schema}".fallback_saga_steps AS s WHERE NOT EXISTS'
            f' (SELECT 1 FROM "{schema}".fallback_saga_sagas AS g WHERE g.saga_id = s.saga_id)'
        ).fetchone()
    assert row is not None
    return ids, int(row[0])


def backlog_by_status() -> dict[str, set[str]]:
    """The backlog's ids by status."""
    found: dict[str, set[str]] = {"completed": set(), "compensated": set(), "failed": set()}
    for n in range(FAMILIES):
        status = _statuses(n)
        below = "compensated" if status == "failed" else status
        found[status].add(f"fam-{n}")
        found[below] |= {f"fam-{n}/Pay", f"fam-{n}/Pay/Card"}
    for n in range(LONERS):
        found[_statuses(n)].add(f"one-{n}")
    return found


def applied(ledger: Path, saga_id: str) -> list[str]:
    """The keys the participant applied for ``saga_id``'s family, in order."""
    lines = map(json.loads, ledger.read_text().splitlines())
    return [
        line["key"] for line in lines
        if line["kind"] == "apply" and line["saga"].split("/")[0] == saga_id
    ]


def no_family_broken(ids: set[str]) -> None:
    """No child saga gone while its parent is stored."""
    for n in range(FAMILIES):
        parent, child, grandchild = f"fam-{n}", f"fam-{n}/Pay", f"fam-{n}/Pay/Card"
        assert not (parent in ids and child not in ids), parent
        assert not (child in ids and grandchild not in ids), child


@pytest.fixture
async def timed_store(
    timed_role: str, pg_conninfo: str, pg_schema: str
) -> AsyncIterator[PostgresSagaStore]:
    role = timed_role.split("user=")[1].split()[0]
    await make_backlog(pg_conninfo, pg_schema, role)
    async with PostgresSagaStore(timed_role, schema=pg_schema, min_size=1) as store:
        yield store


async def test_S13_a_backlog_one_statement_cannot_delete_within_the_statement_timeout_is_purged(
    timed_store: PostgresSagaStore, pg_conninfo: str, pg_schema: str
) -> None:
    """One DELETE over this backlog takes at least 1.2 s; the role's
    statements are stopped at 0.3 s. Every purge failed (QueryCanceled);
    in batches, each inside the timeout, the backlog goes, history and
    families with it, and FAILED sagas stay until named."""
    by_status = backlog_by_status()
    kept_failed = by_status["failed"]
    failed_families = sum(_statuses(n) == "failed" for n in range(FAMILIES))
    assert await timed_store.purge(older_than=3600) == (
        len(by_status["completed"]) + len(by_status["compensated"]) - 2 * failed_families
    )
    ids, stray = stored(pg_conninfo, pg_schema)
    # A FAILED parent keeps its (compensated) children: they go with it.
    children_of_failed = {
        f"fam-{n}{end}" for n in range(FAMILIES) if _statuses(n) == "failed"
        for end in ("/Pay", "/Pay/Card")
    }
    assert ids == kept_failed | children_of_failed
    assert stray == 0
    assert await timed_store.purge(older_than=3600, statuses=["failed", "compensated"]) == len(ids)
    assert stored(pg_conninfo, pg_schema) == (set(), 0)


async def test_S13_S15_a_purge_cancelled_mid_way_beside_running_sagas_leaves_whole_families(
    timed_role: str, pg_conninfo: str, pg_schema: str, ledger: Path
) -> None:
    """A purge under the statement timeout, while sagas run on the same
    tables (one a parent in flight whose finished child must stay; others
    finishing during the purge, which must not be deleted by it), cancelled
    in its third batch: what it deleted is whole (no history without its
    saga, no child gone while its parent is there), the sagas that ran are
    untouched, and the parent in flight unwinds its child all the same."""
    role = timed_role.split("user=")[1].split()[0]
    await make_backlog(pg_conninfo, pg_schema, role)
    shipping, fail = asyncio.Event(), asyncio.Event()
    two_batches = asyncio.Event()
    finishing: list[asyncio.Task[Any]] = []

    class ShipLate(SagaStepHandler[app.OrderCtx, None]):
        async def act(self, ctx: app.OrderCtx, /) -> None:
            shipping.set()
            await fail.wait()
            raise RuntimeError("no courier")

    class Order(Saga[app.OrderCtx]):
        steps: ClassVar[list[Any]] = [
            app.Reserve, SubSaga(app.PaymentSaga, context=app.pay_context, name="Pay"), ShipLate,
        ]

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=2) as live:

        class Watched(PostgresSagaStore):
            """Counts the purge's batches that committed."""

            committed = 0

            async def _fetch(self, doing: str, statement: str, *args: Any, **kw: Any) -> Any:
                answer = await super()._fetch(doing, statement, *args, **kw)
                if statement is self._sql.purge:
                    Watched.committed += 1
                    if Watched.committed == 1:  # sagas finish while the purge goes on
                        finishing.extend(
                            asyncio.create_task(
                                app.PaymentSaga(store=live).run(app.PayCtx(amount=n),
                                                                saga_id=f"late-{n}")
                            )
                            for n in range(5)
                        )
                    if Watched.committed == 2:  # cancelled in the batch after this one
                        two_batches.set()
                return answer

        run = asyncio.create_task(Order(store=live).run(app.OrderCtx(), saga_id="o1"))
        try:
            await shipping.wait()  # the child completed; the parent runs its last step
            async with Watched(timed_role, schema=pg_schema, min_size=1) as purger:
                purge = asyncio.create_task(purger.purge(older_than=0))
                waiter = asyncio.create_task(two_batches.wait())
                await asyncio.wait({purge, waiter}, return_when=asyncio.FIRST_COMPLETED)
                assert not purge.done(), purge  # the purge is in its third batch
                purge.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await purge
            for task in finishing:
                await task
            ids, stray = stored(pg_conninfo, pg_schema)
            assert stray == 0
            no_family_broken(ids)
            backlog = set().union(*backlog_by_status().values())
            assert 0 < len(backlog - ids) < len(backlog)  # part of it went
            assert {"o1", "o1/Pay"} <= ids
            assert {f"late-{n}" for n in range(5)} <= ids
            for n in range(5):
                assert (await live.load(f"late-{n}")).status is SagaStatus.COMPLETED
        finally:
            fail.set()
        with pytest.raises(SagaFailed) as failed:
            await run
        assert failed.value.status is SagaStatus.COMPENSATED
        assert (await live.load("o1/Pay")).status is SagaStatus.COMPENSATED
        assert applied(ledger, "o1") == [
            "o1:Reserve", "o1/Pay:Authorize", "o1/Pay:Capture",
            "o1/Pay:Capture:compensate", "o1/Pay:Authorize:compensate", "o1:Reserve:compensate",
        ]
        # Run again to its end, the purge takes the rest of what it was asked for.
        async with PostgresSagaStore(timed_role, schema=pg_schema, min_size=1) as purger:
            await purger.purge(older_than=0)
        ids, stray = stored(pg_conninfo, pg_schema)
        assert stray == 0
        assert {saga_id for saga_id in ids if not saga_id.startswith(("fam-", "one-"))} == set()
        no_family_broken(ids)


async def test_S13_a_purge_the_server_stops_even_for_one_saga_keeps_what_it_did_and_says_so(
    timed_store: PostgresSagaStore, pg_conninfo: str, pg_schema: str
) -> None:
    """One saga of the backlog takes longer to delete than the timeout (its
    trigger sleeps twice the timeout). The batches before it are committed;
    the batches shrink down to that one saga, which the server still stops:
    a clear error then, not an endless loop, and nothing half-deleted."""
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(
            f'CREATE OR REPLACE FUNCTION "{pg_schema}".slow_delete() RETURNS trigger'
            f" LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(CASE WHEN OLD.saga_id = 'one-450'"
            f" THEN {2 * TIMEOUT_MS / 1000} ELSE 0.001 END); RETURN OLD; END $$"
        )
    with pytest.raises(SagaStoreError, match=r"cannot purge sagas: .*statement timeout"):
        await timed_store.purge(older_than=3600)
    ids, stray = stored(pg_conninfo, pg_schema)
    assert stray == 0
    no_family_broken(ids)
    assert "one-450" in ids
    # Every family, created before it, went (all but the FAILED ones' own).
    assert not {f"fam-{n}" for n in range(FAMILIES) if _statuses(n) != "failed"} & ids


class _Canceled(Exception):
    """What psycopg raises for a statement the server cancelled."""

    sqlstate = "57014"


@pytest.mark.parametrize("driver", ["raises-its-own-error", "retries-and-answers"])
async def test_S13_a_purge_whose_driver_swallows_its_cancellation_stops(
    pg_conninfo: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """A driver cancelled mid-statement may answer with the server's
    cancellation (the error a statement_timeout gives, which the purge takes
    for "smaller batches, again") or retry and answer: either way the purge
    stops there, rather than going on behind its canceller's back."""
    # The purge reads its batch sizes where it runs (postgres.py re-exports them).
    import fallback_saga.store._postgres_purge as purging

    monkeypatch.setattr(purging, "PURGE_BATCH", 100)
    monkeypatch.setattr(purging, "PURGE_BATCH_MAX", 100)
    await make_backlog(pg_conninfo, pg_schema, None)
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f'DROP TRIGGER slow_delete ON "{pg_schema}".fallback_saga_sagas')
    in_second, batches = asyncio.Event(), 0
    answered: list[int] = []  # sagas deleted, by each batch that answered

    class Swallowing(PostgresSagaStore):
        async def _fetch(self, doing: str, statement: str, *args: Any, **kw: Any) -> Any:
            nonlocal batches
            if statement is not self._sql.purge:
                return await super()._fetch(doing, statement, *args, **kw)
            batches += 1
            try:
                if batches == 2:
                    in_second.set()
                    await asyncio.Event().wait()  # cancelled here, mid-batch
                answer = await super()._fetch(doing, statement, *args, **kw)
            except asyncio.CancelledError:
                if driver != "retries-and-answers":
                    raise SagaStoreError(f"{doing}: QueryCanceled") from _Canceled()
                answer = await super()._fetch(doing, statement, *args, **kw)
            answered.append(int(answer[0]))
            return answer

    async with Swallowing(pg_conninfo, schema=pg_schema, min_size=1) as store:
        purge = asyncio.create_task(store.purge(older_than=3600))
        waiter = asyncio.create_task(in_second.wait())
        await asyncio.wait({purge, waiter}, return_when=asyncio.FIRST_COMPLETED)
        assert not purge.done(), purge  # the purge is in its second batch
        purge.cancel()
        with pytest.raises(asyncio.CancelledError):
            await purge
    assert batches == 2
    assert len(answered) == (2 if driver == "retries-and-answers" else 1)
    ids, stray = stored(pg_conninfo, pg_schema)
    assert 3 * FAMILIES + LONERS - len(ids) == sum(answered)
    assert stray == 0
    no_family_broken(ids)
