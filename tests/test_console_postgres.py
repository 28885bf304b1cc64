"""The web console over PostgresSagaStore (a throwaway server, conftest_pg.py):
the same journal as the SQLite tests, filled by real saga runs, read through
the store's own filters, counts and lease state."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_console import LEASE_OWNER, RUNNING_ID, XSS_ID, fetch, fill_journal
from prometheus_text import parse_exposition

from fallback_saga.console import ConsoleServer

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

SHOP_IDS = [XSS_ID, "order-1006", "payout-1005", "atlantis-1004", "order-1003", "order-1002",
            "order-1001"]


@pytest.fixture
async def console(pg_conninfo: str, pg_schema: str) -> AsyncIterator[ConsoleServer]:
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await fill_journal(store)
        async with ConsoleServer(store, port=0) as server:
            yield server


async def api(console: ConsoleServer, path: str) -> Any:
    reply = await fetch(f"http://127.0.0.1:{console.port}{path}")
    assert reply.status == 200, reply.text
    return reply.json()


async def test_the_console_lists_filters_and_pages_postgres_sagas(console: ConsoleServer) -> None:
    listed = await api(console, "/api/sagas")
    assert [s["saga_id"] for s in listed["sagas"]] == SHOP_IDS
    assert listed["counts_exact"] is True
    assert listed["counts"]["completed"] == 3
    assert [s["saga_id"] for s in (await api(console, "/api/sagas?status=failed"))["sagas"]] == [
        "payout-1005"
    ]
    page, seen = await api(console, "/api/sagas?limit=3"), []
    while True:
        seen += [s["saga_id"] for s in page["sagas"]]
        if page["next"] is None:
            break
        page = await api(console, page["next"])
    assert seen == SHOP_IDS
    middle = listed["sagas"][3]["created_at"]
    newer = await api(console, f"/api/sagas?since={middle!r}&name=OrderSaga")
    assert [s["saga_id"] for s in newer["sagas"]] == ["order-1006", "atlantis-1004"]
    assert newer["counts"]["running"] == 1


async def test_the_saga_page_shows_the_postgres_lease(console: ConsoleServer) -> None:
    reply = await fetch(f"http://127.0.0.1:{console.port}/sagas/{RUNNING_ID}")
    assert reply.status == 200
    assert '<svg class="timeline"' in reply.text
    assert LEASE_OWNER in reply.text
    assert re.search(r"<dt>Fencing token</dt><dd[^>]*>1</dd>", reply.text)
    data = await api(console, f"/api/sagas/{RUNNING_ID}")
    assert data["lease"]["state"] == "held"
    assert data["lease"]["fencing_token"] == 1
    missing = await fetch(f"http://127.0.0.1:{console.port}/sagas/nope")
    assert missing.status == 404


async def test_metrics_over_postgres(console: ConsoleServer) -> None:
    reply = await fetch(f"http://127.0.0.1:{console.port}/metrics")
    sagas = parse_exposition(reply.text)["fallback_saga_sagas"]
    values = {(s.labels["saga_name"], s.labels["status"]): s.value for s in sagas.samples}
    assert values[("OrderSaga", "completed")] == 3
    assert values[("PayoutSaga", "failed")] == 1
    assert sum(values.values()) == len(SHOP_IDS)


async def test_a_postgres_password_never_reaches_a_page() -> None:
    """A store whose server refuses it: the page says so, without the DSN's password."""
    dsn = "host=127.0.0.1 port=1 user=app password=hunter2 connect_timeout=1"
    store = PostgresSagaStore(dsn, connect_timeout=1)
    try:
        async with ConsoleServer(store, port=0) as console:
            for path in ("/", "/sagas/x", "/metrics"):
                reply = await fetch(f"http://127.0.0.1:{console.port}{path}")
                assert reply.status == 503, (path, reply.status)
                assert "cannot open the PostgreSQL saga store" in reply.text
                assert "hunter2" not in reply.text
    finally:
        await store.close()


async def test_S15_saga_family_finds_children_in_one_look_up_postgres(
    pg_conninfo: str, pg_schema: str
) -> None:
    """The console's and show's child look-up: one query for every step name."""
    from helpers_family import family_in_one_look_up

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await family_in_one_look_up(store)
