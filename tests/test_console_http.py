"""The web console over HTTP (``urllib``), on a real SQLite journal filled by
running real sagas (``helpers_console.fill_journal``): pages, filters,
pagination, JSON, metrics, errors, security headers, and how it does with
stores that lack the optional listing capabilities."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers_console import (
    LEASE_OWNER,
    RUNNING_ID,
    Reply,
    fetch,
    fill_journal,
)
from helpers_saga import JsonStore
from prometheus_text import parse_exposition

from fallback_saga import MemorySagaStore, SagaStatus, SQLiteSagaStore
from fallback_saga.console import ConsoleServer
from fallback_saga.console.counting import CountCache
from fallback_saga.errors import SagaNotFound, SagaStoreError
from fallback_saga.store.base import SagaSummary

SHOP_IDS = ["order-1006", "payout-1005", "atlantis-1004", "order-1003", "order-1002",
            "order-1001"]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite journal for the module, filled once by real saga runs."""
    path = tmp_path_factory.mktemp("console") / "shop.db"

    async def fill() -> None:
        async with SQLiteSagaStore(path) as store:
            await fill_journal(store, evil=False)

    asyncio.run(fill())
    return path


@pytest.fixture
async def console(journal: Path) -> AsyncIterator[ConsoleServer]:
    async with SQLiteSagaStore(journal) as store, ConsoleServer(store, port=0) as server:
        yield server


async def get(console: ConsoleServer, path: str, **kwargs: Any) -> Reply:
    return await fetch(f"http://127.0.0.1:{console.port}{path}", **kwargs)


def saga_ids_in(html: str) -> list[str]:
    """The saga ids of the listing table, in order."""
    return re.findall(r'<a class="id" href="/sagas/[^"]*">([^<]*)</a>', html)


# --------------------------------------------------------------------------- the listing


async def test_the_list_shows_every_saga_newest_first(console: ConsoleServer) -> None:
    reply = await get(console, "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert saga_ids_in(reply.text) == SHOP_IDS
    assert "recovery-worker-7" in reply.text  # the running saga's lease owner


async def test_the_list_counts_sagas_by_status_at_the_top(console: ConsoleServer) -> None:
    html = (await get(console, "/")).text
    found = re.findall(r'<span class="n">(\d+)</span><span class="what">(\w+)</span>', html)
    assert {what: int(n) for n, what in found} == {
        "All": 6, "Pending": 0, "Running": 1, "Compensating": 0, "Completed": 3,
        "Compensated": 1, "Failed": 1,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=completed", ["order-1003", "order-1002", "order-1001"]),
        ("status=FAILED", ["payout-1005"]),
        ("name=PayoutSaga", ["payout-1005"]),
        ("name=OrderSaga&status=running", ["order-1006"]),
        ("name=Nobody", []),
        ("status=&name=&since=&until=", SHOP_IDS),  # an empty filter means "any"
        ("since=2000-01-01&until=2000-01-02", []),
        ("since=2000-01-01T00:00Z", SHOP_IDS),
        ("since=946684800", SHOP_IDS),
        ("until=7d", []),
        ("since=7d", SHOP_IDS),
    ],
)
async def test_filters(console: ConsoleServer, query: str, expected: list[str]) -> None:
    reply = await get(console, f"/?{query}")
    assert reply.status == 200, reply.text
    assert saga_ids_in(reply.text) == expected
    api = (await get(console, f"/api/sagas?{query}")).json()
    assert [s["saga_id"] for s in api["sagas"]] == expected


async def test_time_filter_splits_the_journal(console: ConsoleServer) -> None:
    sagas = (await get(console, "/api/sagas")).json()["sagas"]
    middle = sagas[2]["created_at"]  # atlantis-1004
    newer = (await get(console, f"/api/sagas?since={middle!r}")).json()["sagas"]
    older = (await get(console, f"/api/sagas?until={middle!r}")).json()["sagas"]
    assert [s["saga_id"] for s in newer] + [s["saga_id"] for s in older] == SHOP_IDS
    assert newer[-1]["saga_id"] == "atlantis-1004"


async def test_pages_follow_the_before_cursor(console: ConsoleServer) -> None:
    seen: list[str] = []
    path = "/?limit=4"
    for _ in range(5):
        html = (await get(console, path)).text
        seen += saga_ids_in(html)
        older = re.search(r'<a class="button" href="([^"]*)">Older', html)
        if older is None:
            break
        path = older.group(1).replace("&amp;", "&")
        assert "before=" in path
        assert "limit=4" in path
    assert seen == SHOP_IDS
    api = (await get(console, "/api/sagas?limit=4")).json()
    assert api["next_before"] == "order-1003"
    second = (await get(console, api["next"])).json()
    assert [s["saga_id"] for s in second["sagas"]] == ["order-1002", "order-1001"]
    assert second["next"] is None


async def test_a_gone_cursor_is_a_clear_bad_request(console: ConsoleServer) -> None:
    reply = await get(console, "/?before=purged-long-ago")
    assert reply.status == 400
    assert "no longer exists" in reply.text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "status must be one of pending, running"),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        ("limit=lots", "limit must be a whole number"),
        ("limit=501", "limit must be a whole number from 1 to 500"),
        ("limit=%C2%B2", "limit must be a whole number from 1 to 500"),  # "²": a digit to isdigit
        ("since=last+tuesday", "since must be an ISO 8601 date or time"),
        ("until=2024-13-45", "until must be an ISO 8601"),
        ("since=2024-05-02&until=2024-05-01", "since must be earlier than until"),
        ("colour=red", "unknown query parameter 'colour'"),
        ("status=failed&status=running", "given 2 times"),
        ("name=%ff", "not valid UTF-8"),
    ],
)
async def test_bad_query_values_are_400_with_a_clear_message(
    console: ConsoleServer, query: str, message: str
) -> None:
    for path, kind in (("/", "text/html"), ("/api/sagas", "application/json")):
        reply = await get(console, f"{path}?{query}")
        assert reply.status == 400
        assert reply.headers["content-type"].startswith(kind)
        assert message.replace("'", "&#x27;" if kind == "text/html" else "'") in reply.text
        assert "Traceback" not in reply.text


# --------------------------------------------------------------------------- one saga


async def test_the_saga_page_shows_timeline_history_context_and_lease(
    console: ConsoleServer,
) -> None:
    reply = await get(console, f"/sagas/{RUNNING_ID}")
    assert reply.status == 200
    html = reply.text
    assert '<svg class="timeline"' in html
    assert html.count('<rect class="bar ') == 2  # ReserveStock, then ChargeCard (running)
    assert 'class="bar act running"' in html
    assert LEASE_OWNER in html
    assert re.search(r"<dt>Fencing token</dt><dd[^>]*>1</dd>", html)
    assert "held" in html
    assert "&quot;reservation&quot;: &quot;R-order-1006&quot;" in html  # the context JSON


async def test_the_saga_page_shows_errors_and_fallbacks(console: ConsoleServer) -> None:
    html = (await get(console, "/sagas/order-1003")).text
    assert "CardDeclined: card declined by issuer" in html  # the primary's error
    assert 'class="bar act failed"' in html
    assert ">fallback<" in html  # ChargeWallet's row
    assert re.search(r"<dt>Lease</dt><dd>.*never claimed", html)
    failed = (await get(console, "/sagas/payout-1005")).text
    assert "LedgerUnavailable" in failed
    assert 'class="alert failed"' in failed
    assert "an operator must finish undoing it" in failed
    # and what the operator does once the ledger is back (reopening.py)
    assert "python -m fallback_saga retry-unwinding payout-1005 --app" in failed
    assert failed.count('class="bar compensate failed"') == 3  # three tries


async def test_the_history_shows_step_results_when_the_journal_keeps_them(
    console: ConsoleServer,
) -> None:
    data = (await get(console, "/api/sagas/order-1001")).json()
    completed = [h for h in data["history"] if h["status"] == "completed"]
    # The response in its journal form, parsed: the same shape as `show --json`.
    assert completed[2]["result"] == "S-order-1001"
    assert all(h["result"] is None for h in data["history"] if h["status"] != "completed")
    html = (await get(console, "/sagas/order-1001")).text
    assert "<th>Result</th>" in html
    assert "&quot;S-order-1001&quot;" in html


async def test_an_unknown_saga_is_a_404_page(console: ConsoleServer) -> None:
    for path in ("/sagas/no-such-saga", "/sagas/" + "x" * 300, "/sagas/"):
        reply = await get(console, path)
        assert reply.status == 404
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert "Not found" in reply.text
    api = await get(console, "/api/sagas/no-such-saga")
    assert api.status == 404
    assert api.json() == {
        "error": {"status": 404, "message": "no saga with id 'no-such-saga'"}
    }
    assert (await get(console, "/no/such/page")).status == 404


async def test_saga_ids_with_slashes_and_percents_route(tmp_path: Path) -> None:
    async with SQLiteSagaStore(tmp_path / "ids.db") as store:
        for saga_id in ("tenant/42/order 7", "100%", "ü?#&"):
            await store.create(saga_id, "Odd", "fp", {}, [])
        async with ConsoleServer(store, port=0) as console:
            html = (await get(console, "/")).text
            for saga_id in ("tenant/42/order 7", "100%", "ü?#&"):
                href = "/sagas/" + quote(saga_id, safe="")
                assert f'href="{href.replace("&", "&amp;")}"' in html
                reply = await get(console, href)
                assert reply.status == 200, saga_id
                assert (await get(console, "/api" + href)).json()["saga_id"] == saga_id


async def test_open_by_id_redirects_to_the_saga(console: ConsoleServer) -> None:
    reply = await get(console, "/sagas?id=tenant/1%20x")
    assert reply.status == 303
    assert reply.headers["location"] == "/sagas/tenant%2F1%20x"
    assert (await get(console, "/sagas?id=")).headers["location"] == "/"


# --------------------------------------------------------------------------- JSON


async def test_the_api_gives_the_listing_as_json(console: ConsoleServer) -> None:
    reply = await get(console, "/api/sagas?status=running")
    assert reply.headers["content-type"] == "application/json"
    data = reply.json()
    assert data["sagas"] == [
        {
            "saga_id": RUNNING_ID,
            "saga_name": "OrderSaga",
            "status": "running",
            "created_at": data["sagas"][0]["created_at"],
            "updated_at": data["sagas"][0]["updated_at"],
            "lease_owner": LEASE_OWNER,
            "lease_expires_at": data["sagas"][0]["lease_expires_at"],
            "unreleased_claims": 0,
            "parked": False,
        }
    ]
    assert data["counts"] == {
        "pending": 0, "running": 1, "compensating": 0, "completed": 3, "compensated": 1,
        "failed": 1,
    }
    assert data["counts_exact"] is True
    assert data["filters"]["status"] == "running"
    assert data["notes"] == []


async def test_the_api_gives_one_saga_as_json(console: ConsoleServer) -> None:
    data = (await get(console, "/api/sagas/payout-1005")).json()
    assert data["saga_id"] == "payout-1005"
    assert data["status"] == "failed"
    assert data["context"] == {"payout_id": "payout-1005", "amount_cents": 120_000,
                               "debited": True}
    assert data["lease"] == {"state": "never claimed", "owner": None, "expires_at": None,
                             "fencing_token": 0}
    assert [(h["step"], h["action"], h["status"], h["attempt"]) for h in data["history"]][-2:] == [
        ("DebitLedger", "compensate", "started", 3),
        ("DebitLedger", "compensate", "failed", 3),
    ]
    assert [(t["step"], t["action"], t["outcome"]) for t in data["timeline"]] == [
        ("DebitLedger", "act", "completed"),
        ("SendTransfer", "act", "failed"),
        ("DebitLedger", "compensate", "failed"),
        ("DebitLedger", "compensate", "failed"),
        ("DebitLedger", "compensate", "failed"),
    ]
    running = (await get(console, f"/api/sagas/{RUNNING_ID}")).json()
    assert running["lease"]["state"] == "held"
    assert running["lease"]["owner"] == LEASE_OWNER
    assert running["lease"]["fencing_token"] == 1


# --------------------------------------------------------------------------- metrics


async def test_metrics_are_prometheus_text(console: ConsoleServer) -> None:
    reply = await get(console, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(reply.text)
    sagas = families["fallback_saga_sagas"]
    assert sagas.type == "gauge"
    assert sagas.help
    values = {(s.labels["saga_name"], s.labels["status"]): s.value for s in sagas.samples}
    assert values[("OrderSaga", "completed")] == 3
    assert values[("OrderSaga", "running")] == 1
    assert values[("OrderSaga", "compensated")] == 1
    assert values[("PayoutSaga", "failed")] == 1
    assert values[("PayoutSaga", "running")] == 0  # every status, so no series vanishes
    assert len(values) == 2 * len(SagaStatus)
    assert families["fallback_saga_sagas_counted_exactly"].samples[0].value == 1


async def test_a_slow_count_serves_the_pages_and_scrapes_that_follow(journal: Path) -> None:
    """Counting a big store reads the whole table: the console counts once
    for the listing, its JSON and /metrics that come soon after, and says
    on the page how old the counts are (see console/counting.py)."""
    clock = [0.0]
    counted: list[object] = []
    async with SQLiteSagaStore(journal) as store, ConsoleServer(store, port=0) as console:
        count_sagas = store.count_sagas

        async def slow_count(**filters: Any) -> Any:
            counted.append(filters)
            clock[0] += 1.0  # a second of counting, by the console's clock
            return await count_sagas(**filters)

        console._routes.counts = CountCache(clock=lambda: clock[0])
        store.count_sagas = slow_count  # type: ignore[method-assign]
        first = await get(console, "/metrics")
        later = [await get(console, path) for path in ("/metrics", "/", "/api/sagas")]
    assert len(counted) == 1
    assert later[0].text == first.text
    assert "counted 1 s ago" in later[1].text


# --------------------------------------------------------------------------- HTTP and security


async def test_every_response_carries_the_security_headers(console: ConsoleServer) -> None:
    for path in ("/", f"/sagas/{RUNNING_ID}", "/sagas/missing", "/api/sagas", "/metrics",
                 "/?limit=0", "/favicon.svg", "/healthz"):
        reply = await get(console, path)
        csp = reply.headers["content-security-policy"]
        assert "default-src 'none'" in csp, path
        assert "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script, from anywhere
        assert "unsafe-inline" not in csp
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["referrer-policy"] == "no-referrer"
        assert reply.headers["cache-control"] == "no-store"
        assert "server" not in reply.headers


async def test_pages_load_nothing_from_elsewhere(console: ConsoleServer) -> None:
    for path in ("/", f"/sagas/{RUNNING_ID}", "/sagas/order-1003"):
        html = (await get(console, path)).text
        assert "<script" not in html
        assert not re.search(r'(src|href)="(https?:)?//', html)
        assert " style=" not in html  # style attributes would need 'unsafe-inline'
        assert html.count("<style>") == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_only_get_and_head_are_served(console: ConsoleServer, method: str) -> None:
    for path in ("/", "/api/sagas", f"/sagas/{RUNNING_ID}", "/metrics"):
        body = None if method == "OPTIONS" else b"x=1"
        reply = await get(console, path, method=method, data=body)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
    # Nothing was written: the journal is as it was.
    assert saga_ids_in((await get(console, "/")).text) == SHOP_IDS


async def test_head_sends_the_headers_without_a_body(console: ConsoleServer) -> None:
    reply = await get(console, "/", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.headers["content-length"]) > 1000


async def test_a_foreign_host_header_is_refused(console: ConsoleServer) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 cannot read the console."""
    reply = await get(console, "/api/sagas", headers={"Host": "evil.example:8080"})
    assert reply.status == 421
    assert "loopback host names only" in reply.json()["error"]["message"]
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80", "LOCALHOST"):
        assert (await get(console, "/healthz", headers={"Host": host})).status == 200


async def test_allowed_hosts_admit_a_reverse_proxy_name(journal: Path) -> None:
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, port=0, allowed_hosts=["sagas.internal"]
    ) as console:
        ok = await get(console, "/healthz", headers={"Host": "sagas.internal:443"})
        assert ok.status == 200
        assert (await get(console, "/healthz", headers={"Host": "other"})).status == 421


async def raw_exchange(console: ConsoleServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", console.port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET nopath HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", b"400"),
        # RFC 9112 3: a request-target too long to parse is a 414 (it was a 431,
        # the status of oversized header fields).
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /?name=" + b"%41" * 3_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"200"),
        (b"GET http://127.0.0.1/api/sagas HTTP/1.1\r\n\r\n", b"200"),
        (b"GET / HTTP/1.0\r\n\r\n", b"200"),  # HTTP/1.0 had no Host
        # RFC 9112 3.2: a Host that is missing (HTTP/1.1), repeated or not a
        # host[:port] is a 400 -- a proxy and the console must not disagree
        # about which host a request is for.
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: 127.0.0.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80@evil.example\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:port\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1 evil.example\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", b"200"),
        # absolute-form: its authority is the host (RFC 9112 3.2.2), checked as one
        (b"GET http://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"421"),
    ],
)
async def test_malformed_requests_get_a_clear_status(
    console: ConsoleServer, request_bytes: bytes, status: bytes
) -> None:
    answer = await raw_exchange(console, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"Traceback" not in answer


async def test_a_client_too_slow_to_send_its_headers_is_cut_off(
    console: ConsoleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fallback_saga.console import _http

    monkeypatch.setattr(_http, "HEADER_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", console.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_concurrent_requests(console: ConsoleServer) -> None:
    paths = ["/", "/api/sagas", "/metrics", f"/sagas/{RUNNING_ID}", "/sagas/order-1003"] * 6
    replies = await asyncio.gather(*(get(console, path) for path in paths))
    assert [reply.status for reply in replies] == [200] * len(paths)


async def test_a_client_that_connects_and_leaves_costs_nothing(console: ConsoleServer) -> None:
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", console.port)
        writer.close()
    assert (await get(console, "/healthz")).status == 200


async def test_the_console_binds_to_loopback_by_default(journal: Path) -> None:
    async with SQLiteSagaStore(journal) as store:
        console = ConsoleServer(store, port=0)
        assert console.host == "127.0.0.1"
        await console.start()
        try:
            (address, _port) = console._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
            assert address == "127.0.0.1"
            assert console.url == f"http://127.0.0.1:{console.port}/"
        finally:
            await console.close()
        # Closed: the port no longer answers.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", console.port), timeout=2).close()


async def test_listening_beyond_loopback_warns_and_checks_no_host(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, host="0.0.0.0", port=0
    ) as console:
        assert "has no authentication" in caplog.text
        assert console.url == f"http://127.0.0.1:{console.port}/"
        reply = await get(console, "/healthz", headers={"Host": "sagas.example.com"})
        assert reply.status == 200


def test_bad_arguments_are_refused_at_construction() -> None:
    store = MemorySagaStore()
    with pytest.raises(TypeError, match="saga store"):
        ConsoleServer(object())
    with pytest.raises(ValueError, match="port"):
        ConsoleServer(store, port=70000)
    with pytest.raises(ValueError, match="page_size"):
        ConsoleServer(store, page_size=0)
    with pytest.raises(ValueError, match="max_connections"):
        ConsoleServer(store, max_connections=0)


# --------------------------------------------------------------------------- other stores


async def test_the_console_reads_the_memory_store() -> None:
    store = MemorySagaStore()
    await fill_journal(store, evil=False)
    async with ConsoleServer(store, port=0) as console:
        html = (await get(console, "/")).text
        assert saga_ids_in(html) == SHOP_IDS
        page = (await get(console, "/sagas/order-1003")).text
        assert '<svg class="timeline"' in page
        assert "MemorySagaStore keeps no leases" in page
        assert (await get(console, "/?limit=2&before=order-1002")).status == 200


async def test_the_console_reads_a_read_only_sqlite_store(journal: Path) -> None:
    """What ``python -m fallback_saga serve --db`` opens: nothing is migrated or written."""
    async with SQLiteSagaStore(journal, read_only=True) as store, ConsoleServer(
        store, port=0
    ) as console:
        assert saga_ids_in((await get(console, "/?since=7d")).text) == SHOP_IDS
        assert LEASE_OWNER in (await get(console, f"/sagas/{RUNNING_ID}")).text
        assert (await get(console, "/metrics")).status == 200


class ListingOnlyStore:
    """A third-party store: ``load`` and the protocol's ``list_sagas``, nothing optional."""

    def __init__(self, inner: MemorySagaStore) -> None:
        self.inner = inner

    async def load(self, saga_id: str) -> Any:
        return await self.inner.load(saga_id)

    async def list_sagas(
        self, *, status: SagaStatus | None = None, saga_name: str | None = None,
        limit: int = 100,
    ) -> list[SagaSummary]:
        found: list[SagaSummary] = await self.inner.list_sagas(
            status=status, saga_name=saga_name, limit=limit
        )
        return found


async def test_a_store_without_the_optional_capabilities_still_works() -> None:
    inner = MemorySagaStore()
    await fill_journal(inner, evil=False)
    async with ConsoleServer(ListingOnlyStore(inner), port=0) as console:
        html = (await get(console, "/")).text
        assert saga_ids_in(html) == SHOP_IDS
        assert "Completed</span>" in html
        assert re.search(r'<span class="n">3</span><span class="what">Completed', html)
        assert 'class="notes"' not in html  # nothing to say while the store can do what is asked
        filtered = (await get(console, "/?since=7d")).text
        assert "cannot filter by time or page by itself" in filtered
        assert saga_ids_in(filtered) == SHOP_IDS
        first = (await get(console, "/api/sagas?limit=4")).json()
        second = (await get(console, first["next"])).json()
        assert [s["saga_id"] for s in first["sagas"] + second["sagas"]] == SHOP_IDS
        assert (await get(console, "/api/sagas?since=7d")).json()["sagas"] != []
        assert (await get(console, "/api/sagas?until=7d")).json()["sagas"] == []
        metrics = parse_exposition((await get(console, "/metrics")).text)
        assert sum(s.value for s in metrics["fallback_saga_sagas"].samples) == 6
        page = (await get(console, "/sagas/order-1001")).text
        assert "ListingOnlyStore keeps no leases" in page


async def test_a_store_that_cannot_list_still_shows_sagas_by_id() -> None:
    store = JsonStore()
    await fill_journal(store, evil=False)
    async with ConsoleServer(store, port=0) as console:
        listing = await get(console, "/")
        assert listing.status == 200
        assert "cannot list sagas" in listing.text
        assert (await get(console, "/sagas/order-1001")).status == 200
        metrics = parse_exposition((await get(console, "/metrics")).text)
        assert metrics["fallback_saga_sagas"].samples == []


class BrokenStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def load(self, saga_id: str) -> Any:
        raise self.error

    async def list_sagas(self, **kwargs: Any) -> Any:
        raise self.error


async def test_a_failing_store_is_a_503_that_keeps_secrets_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = SagaStoreError(
        "cannot list sagas: OperationalError: connection to postgresql://app:hunter2@db/x "
        "failed (host=db password=hunter2)"
    )
    caplog.set_level(logging.INFO, logger="fallback_saga.console")
    async with ConsoleServer(BrokenStore(error), port=0) as console:
        for path in ("/", "/api/sagas", "/sagas/a", "/metrics"):
            reply = await get(console, path)
            assert reply.status == 503, path
            assert "cannot be read right now" in reply.text
            assert "hunter2" not in reply.text
    assert "hunter2" not in caplog.text
    assert "password=***" in caplog.text


async def test_an_unexpected_error_is_a_500_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConsoleServer(BrokenStore(ZeroDivisionError("boom")), port=0) as console:
        reply = await get(console, "/sagas/a")
        assert reply.status == 500
        assert "internal error" in reply.text
        assert "Traceback" not in reply.text
        assert "ZeroDivisionError" not in reply.text
    assert "ZeroDivisionError" in caplog.text  # the traceback is in the log


async def test_a_slow_store_is_a_504(journal: Path) -> None:
    class SlowStore:
        async def load(self, saga_id: str) -> Any:
            await asyncio.sleep(30)

    async with ConsoleServer(SlowStore(), port=0) as console:
        console.request_timeout = 0.2
        reply = await get(console, "/sagas/a")
        assert reply.status == 504
        assert "did not answer within 0.2 s" in reply.text


async def test_serve_runs_until_cancelled(journal: Path) -> None:
    from fallback_saga.console import serve

    started: asyncio.Future[ConsoleServer] = asyncio.get_running_loop().create_future()
    async with SQLiteSagaStore(journal) as store:
        task = asyncio.create_task(serve(store, port=0, ready=started.set_result))
        console = await asyncio.wait_for(started, 10)
        assert (await get(console, "/healthz")).text == "ok\n"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", console.port), timeout=2).close()


# --------------------------------------------------------------------------- Host check


def _loopback_names() -> list[str]:
    """Names and spellings of this machine that resolve to loopback addresses only."""
    names = ["127.1", "localhost"]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return names
    if infos and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos):
        names.append(socket.gethostname())
    return names


@pytest.mark.parametrize("host", _loopback_names())
async def test_console_a_host_name_that_binds_loopback_keeps_the_host_check(
    journal: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """--host NAME (a name, or a spelling like 127.1) that binds loopback only:
    the console is on loopback, so DNS rebinding is refused (421) as for 127.0.0.1,
    and it does not warn that it listens beyond this machine."""
    caplog.set_level(logging.INFO, "fallback_saga.console")
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, host=host, port=0
    ) as console:
        rebound = await get(
            console, "/api/sagas", headers={"Host": f"attacker.example:{console.port}"}
        )
        assert rebound.status == 421
        for name in ("127.0.0.1", "localhost", f"{host}:{console.port}", host.upper()):
            assert (await get(console, "/healthz", headers={"Host": name})).status == 200
    assert "beyond this machine" not in caplog.text


async def test_console_the_unspecified_address_is_no_name_to_answer_to(journal: Path) -> None:
    """--host 0.0.0.0 with --allow-host: the Host check is on, and a request
    naming 0.0.0.0 (which browsers route to this machine) is refused."""
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, host="0.0.0.0", port=0, allowed_hosts=["sagas.internal"]
    ) as console:
        assert (await get(console, "/healthz", headers={"Host": "0.0.0.0"})).status == 421
        assert (await get(console, "/healthz", headers={"Host": "sagas.internal"})).status == 200


# --------------------------------------------------------------------------- connection bound


async def _until(condition: Any) -> None:
    """Let the event loop run until ``condition()`` (no timing: a bounded
    number of turns of the loop, each letting the server take a step)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the server never got there")


async def _stalled(console: ConsoleServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sends a request line and never ends its headers."""
    before = len(console._connections.waiting)
    reader, writer = await asyncio.open_connection("127.0.0.1", console.port)
    writer.write(b"GET / HTTP/1.1\r\n")
    await writer.drain()
    await _until(lambda: len(console._connections.waiting) > before)
    return reader, writer


async def test_console_idle_connections_cannot_lock_others_out(journal: Path) -> None:
    """Slowloris: as many connections as the bound that never finish their
    headers do not turn other clients away; the one that waited longest is
    closed for the newcomer, and re-opening them does not help the attacker."""
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, port=0, max_connections=2
    ) as console:
        stalled = [await _stalled(console), await _stalled(console)]
        for _ in range(3):
            assert (await get(console, "/healthz")).status == 200
            await _until(lambda: len(console._connections.handlers) == 1)
            # The oldest stalled connection was closed, with nothing sent...
            reader, writer = stalled.pop(0)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            # ...and the attacker opens another one.
            stalled.append(await _stalled(console))
        assert len(console._connections.waiting) == 2  # the bound on sockets still holds
        for _, writer in stalled:
            writer.close()


async def test_console_a_client_that_keeps_its_answered_connection_open_holds_no_slot(
    journal: Path,
) -> None:
    async with SQLiteSagaStore(journal) as store, ConsoleServer(
        store, port=0, max_connections=1
    ) as console:
        reader, writer = await asyncio.open_connection("127.0.0.1", console.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        # Answered, but neither closed nor read to the end: the next client is served.
        assert (await get(console, "/healthz")).status == 200
        writer.close()


async def test_console_requests_being_answered_are_bounded(journal: Path) -> None:
    """The bound holds for requests the store is answering: one more is a 503."""
    entered = asyncio.Event()
    release = asyncio.Event()

    class BlockingStore:
        async def load(self, saga_id: str) -> Any:
            entered.set()
            await release.wait()
            raise SagaNotFound(saga_id)

    async with ConsoleServer(BlockingStore(), port=0, max_connections=1) as console:
        first = asyncio.create_task(get(console, "/sagas/a"))
        await entered.wait()
        reply = await get(console, "/healthz")
        assert reply.status == 503
        assert "too many connections" in reply.text
        release.set()
        assert (await first).status == 404


# --------------------------------------------------------------------------- corrupt rows (S12)


@pytest.fixture
def corrupt_lease_journal(journal: Path, tmp_path: Path) -> Path:
    """The shop's journal, with the running saga's lease expiry not a time and
    its fencing token markup (what a hand-edited or damaged row may hold)."""
    import shutil
    import sqlite3

    path = tmp_path / "corrupt.db"
    shutil.copy(journal, path)
    connection = sqlite3.connect(path)
    connection.execute(
        "UPDATE sagas SET lease_owner = 'w1', lease_expires_at = 'soon', "
        "fence = '<b>7</b>' WHERE saga_id = ?",
        (RUNNING_ID,),
    )
    connection.execute(
        "UPDATE sagas SET lease_owner = 'w2', lease_expires_at = X'00' WHERE saga_id = ?",
        ("order-1003",),
    )
    connection.commit()
    connection.close()
    return path


async def test_S12_an_unreadable_lease_is_shown_as_such_not_a_500(
    corrupt_lease_journal: Path,
) -> None:
    async with SQLiteSagaStore(corrupt_lease_journal) as store, ConsoleServer(
        store, port=0
    ) as console:
        listing = await get(console, "/")
        assert listing.status == 200
        # The store leaves a saga in flight the claim skips as corrupt out of
        # its listings, naming it in a warning (S12); the others are listed —
        # a finished saga whose lease is unreadable too (its lease as none:
        # nothing claims it, and its count agrees with the listing).
        readable = [i for i in SHOP_IDS if i != RUNNING_ID]
        assert saga_ids_in(listing.text) == readable
        assert (await get(console, "/api/sagas")).status == 200
        # A finished saga's lease columns are read by nothing that runs it:
        # its record is shown, its lease as unreadable.
        page = await get(console, "/sagas/order-1003")
        assert page.status == 200
        assert "unreadable" in page.text
        data = (await get(console, "/api/sagas/order-1003")).json()
        assert data["lease"]["state"] == "unreadable"
        assert data["lease"]["expires_at"] is None
        # A running saga's row the claim skips as corrupt (its fence is no
        # integer) is unreadable, in the claim's words, as recover() reports
        # it (tests/test_unleasable_rows_shown.py).
        page = await get(console, f"/sagas/{RUNNING_ID}")
        assert page.status == 422
        assert "its fence is not an integer" in page.text
        assert "<b>7</b>" not in page.text  # and escaped
        reply = await get(console, f"/api/sagas/{RUNNING_ID}")
        assert reply.status == 422
        assert "its fence is not an integer" in reply.json()["error"]["message"]


async def test_S12_a_saga_that_cannot_be_read_is_a_clear_page_not_a_500() -> None:
    from fallback_saga.errors import CorruptSagaRecord

    class CorruptStore(BrokenStore):
        async def load(self, saga_id: str) -> Any:
            raise CorruptSagaRecord(saga_id, "the context is not valid JSON")

    async with ConsoleServer(CorruptStore(SagaStoreError("x")), port=0) as console:
        page = await get(console, "/sagas/bad-1")
        assert page.status == 422
        assert "cannot be read" in page.text
        assert "bad-1" in page.text
        assert "not valid JSON" in page.text
        data = await get(console, "/api/sagas/bad-1")
        assert data.status == 422
        assert "cannot be read" in data.json()["error"]["message"]


# --------------------------------------------------------------------------- dot ids


def _browser_path(href: str) -> str:
    """The path a browser requests for a link: the URL standard removes "." and
    ".." segments, their percent-encoded spellings (%2e) included."""
    path, _, query = href.partition("?")
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment.lower() in ("..", ".%2e", "%2e.", "%2e%2e"):
            if out:
                out.pop()
        elif segment.lower() not in (".", "%2e"):
            out.append(segment)
    return "/" + "/".join(out) + ("?" + query if query else "")


async def test_saga_ids_that_are_dot_segments_open_from_their_links(tmp_path: Path) -> None:
    dot_ids = (".", "..")
    async with SQLiteSagaStore(tmp_path / "dots.db") as store:
        for saga_id in (*dot_ids, "..."):
            await store.create(saga_id, "Dotted", "fp", {}, [])
        async with ConsoleServer(store, port=0) as console:
            html = (await get(console, "/")).text
            hrefs = re.findall(r'<a class="id" href="([^"]*)">([^<]*)</a>', html)
            assert sorted(name for _, name in hrefs) == [".", "..", "..."]
            for href, saga_id in hrefs:
                href = href.replace("&amp;", "&")
                page = await get(console, _browser_path(href))
                assert page.status == 200, (saga_id, href)
                assert f'<h1 class="id">{saga_id}</h1>' in page.text
                api = re.search(r'href="(/api[^"]*)">View as JSON', page.text)
                assert api is not None
                data = await get(console, _browser_path(api.group(1).replace("&amp;", "&")))
                assert data.json()["saga_id"] == saga_id
            for saga_id in dot_ids:
                # The search box's form, and a client that sends %2E%2E as is.
                found = await get(console, f"/sagas?id={saga_id}")
                assert found.status == 200
                assert f'<h1 class="id">{saga_id}</h1>' in found.text
                encoded = quote(saga_id, safe="").replace(".", "%2E")
                assert (await get(console, f"/api/sagas/{encoded}")).json()["saga_id"] == saga_id


# --------------------------------------------------------------------------- long sagas


def _long_journal(entries: int) -> list[Any]:
    """A saga's journal of ``entries`` rows: a large group's members, each
    STARTED then COMPLETED (the step name tells each row's seq)."""
    from fallback_saga import JournalEntry, StepStatus

    return [
        JournalEntry(
            seq // 2, f"Member{seq // 2}", "primary", "act",
            StepStatus.STARTED if seq % 2 == 0 else StepStatus.COMPLETED,
            1, None, 1000.0 + seq * 0.001,
        )
        for seq in range(entries)
    ]


def _history_seqs(html: str) -> list[int]:
    """The ``#`` column of the page's history table."""
    return [int(n) for n in re.findall(r'<tr><td class="num muted">(\d+)</td>', html)]


async def test_a_long_saga_page_stays_small_and_pages_reach_every_entry(tmp_path: Path) -> None:
    """A saga of thousands of journal entries: each of its pages stays under
    250 kB (the whole history in one page was megabytes), and following the
    history's "Later" links from the first page lists every entry once, in
    journal order; the timeline says how many tries it does not draw."""
    from fallback_saga.console.timeline import MAX_ROWS

    entries = 4_001
    history_page = 200
    async with SQLiteSagaStore(tmp_path / "long.db") as store:
        await store.create("long", "Big", "fp", {}, _long_journal(entries))
        await store.create("..", "Big", "fp", {}, _long_journal(history_page + 1))
        async with ConsoleServer(store, port=0) as console:
            seen: list[int] = []
            path: str | None = "/sagas/long"
            pages = 0
            while path is not None:
                reply = await get(console, path)
                assert reply.status == 200, path
                assert len(reply.body) < 250_000, (path, len(reply.body))
                pages += 1
                seen += _history_seqs(reply.text)
                later = re.search(r'<a class="button" rel=next href="([^"]*)">', reply.text)
                path = later.group(1).replace("&amp;", "&") if later else None
            assert seen == list(range(entries))
            from fallback_saga.console.query import HISTORY_PAGE

            assert history_page == HISTORY_PAGE  # the journal of ".." fills a page and one
            assert pages == -(-entries // HISTORY_PAGE)
            first = (await get(console, "/sagas/long")).text
            tries = (entries + 1) // 2
            assert f"The first {MAX_ROWS} of {tries} tries are drawn ({tries - MAX_ROWS} are" in (
                first
            )
            last = (await get(console, f"/sagas/long?page={pages}")).text
            assert _history_seqs(last) == list(range((pages - 1) * HISTORY_PAGE, entries))
            assert f"entries {(pages - 1) * HISTORY_PAGE} to {entries - 1} of {entries}" in last
            # The id "..": its page links carry the id in the query, and keep the page.
            dots = (await get(console, "/sagas?id=..")).text
            later = re.search(r'<a class="button" rel=next href="([^"]*)">', dots)
            assert later is not None
            assert later.group(1).replace("&amp;", "&") == "/sagas?id=..&page=2"
            assert _history_seqs((await get(console, "/sagas?id=..&page=2")).text) == [
                HISTORY_PAGE
            ]
            # The search box's redirect keeps the page.
            moved = await get(console, "/sagas?id=long&page=3")
            assert (moved.status, moved.headers["location"]) == (303, "/sagas/long?page=3")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page=0", "page must be a whole number from 1 to 21 "),
        ("page=22", "page must be a whole number from 1 to 21 "),
        ("page=two", "got &#x27;two&#x27;"),
        ("page=%C2%B2", "page must be a whole number from 1 to 21 "),  # "²"
        ("page=-1", "page must be a whole number"),
        ("page=" + "9" * 400, "page must be a whole number"),
        ("page=1&page=2", "&#x27;page&#x27; is given 2 times"),
        ("pg=2", "unknown query parameter &#x27;pg&#x27; (known: page, raw)"),
    ],
)
async def test_bad_history_pages_are_400_with_a_clear_message(
    tmp_path: Path, query: str, message: str
) -> None:
    async with SQLiteSagaStore(tmp_path / "long.db") as store:
        await store.create("long", "Big", "fp", {}, _long_journal(4_001))
        async with ConsoleServer(store, port=0) as console:
            reply = await get(console, f"/sagas/long?{query}")
            assert reply.status == 400
            assert reply.headers["content-type"].startswith("text/html")
            assert message in reply.text, reply.text[-2000:]
            assert "Traceback" not in reply.text


async def test_the_json_api_pages_a_long_sagas_history_as_the_page_does(tmp_path: Path) -> None:
    """``/api/sagas/<id>`` of a saga of thousands of entries: 200 entries a
    response (it was the whole journal, megabytes for 50,000), with where the
    page is and links to the others (body and ``Link`` header); following
    ``next`` from the first reaches every entry once, and every try of the
    timeline once, on the page of its STARTED row. A short saga is one page,
    its answer as before plus ``history_page``."""
    from fallback_saga.console.query import HISTORY_PAGE

    entries = 4_001
    async with SQLiteSagaStore(tmp_path / "long.db") as store:
        await store.create("long", "Big", "fp", {"k": 1}, _long_journal(entries))
        await store.create("..", "Big", "fp", {}, _long_journal(HISTORY_PAGE + 1))
        await store.create("short", "Small", "fp", {}, _long_journal(6))
        async with ConsoleServer(store, port=0) as console:
            seqs: list[int] = []
            tries: list[int] = []
            path: str | None = "/api/sagas/long"
            pages = 0
            while path is not None:
                reply = await get(console, path)
                assert reply.status == 200, (path, reply.text[:500])
                assert len(reply.body) < 250_000, (path, len(reply.body))
                data = reply.json()
                pages += 1
                assert (data["saga_id"], data["context"]) == ("long", {"k": 1})
                seqs += [entry["seq"] for entry in data["history"]]
                tries += [bar["position"] for bar in data["timeline"]]
                meta = data["history_page"]
                assert (meta["page"], meta["per_page"], meta["entries"]) == (
                    pages, HISTORY_PAGE, entries
                )
                assert meta["first_seq"] == data["history"][0]["seq"]
                assert meta["last_seq"] == data["history"][-1]["seq"]
                if meta["next"] is not None:
                    assert f'<{meta["next"]}>; rel="next"' in reply.headers["link"]
                path = meta["next"]
            assert seqs == list(range(entries))
            assert tries == list(range((entries + 1) // 2))
            assert pages == meta["pages"] == -(-entries // HISTORY_PAGE)
            assert meta["prev"] == f"/api/sagas/long?page={pages - 1}"
            assert meta["first"] == "/api/sagas/long"
            # The id ".." (no path carries it): its links keep the id in the query.
            dots = (await get(console, "/api/sagas?id=..")).json()["history_page"]
            assert dots["next"] == "/api/sagas?id=..&page=2"
            second = (await get(console, dots["next"])).json()
            assert [entry["seq"] for entry in second["history"]] == [HISTORY_PAGE]
            short = (await get(console, "/api/sagas/short")).json()
            assert [entry["seq"] for entry in short["history"]] == list(range(6))
            assert len(short["timeline"]) == 3
            assert short["history_page"]["pages"] == 1
            assert short["history_page"]["next"] is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page=0", "page must be a whole number from 1 to 21 "),
        ("page=22", "page must be a whole number from 1 to 21 "),
        ("page=two", "got 'two'"),
        ("page=%C2%B2", "page must be a whole number from 1 to 21 "),
        ("page=" + "9" * 400, "page must be a whole number"),
        ("page=1&page=2", "'page' is given 2 times"),
        ("pg=2", "unknown query parameter 'pg' (known: page, raw)"),
    ],
)
async def test_bad_json_history_pages_are_400_naming_the_valid_range(
    tmp_path: Path, query: str, message: str
) -> None:
    async with SQLiteSagaStore(tmp_path / "long.db") as store:
        await store.create("long", "Big", "fp", {}, _long_journal(4_001))
        async with ConsoleServer(store, port=0) as console:
            reply = await get(console, f"/api/sagas/long?{query}")
            assert reply.status == 400
            assert reply.headers["content-type"] == "application/json"
            error = reply.json()["error"]
            assert error["status"] == 400
            assert message in error["message"], error


# --------------------------------------------------------------------------- huge values

# A password in a step's error, as a driver's message might quote it, placed
# so that each cut of the page (a history cell's first line and its text,
# the failure alert, the timeline's tooltip) falls inside it.
_PASSWORD = "Zq9Zq9Zq9Zq9Zq9Zq9"
_DSN = f"postgresql://app:{_PASSWORD}@db.internal/orders"


def _secret_across(cut: int) -> str:
    """An error text whose password spans character ``cut``."""
    return "e" * (cut - len("postgresql://app:") - 4) + _DSN + " and more" + "e" * 50_000


async def test_S12_huge_values_make_a_bounded_page_that_says_what_it_leaves_out(
    tmp_path: Path,
) -> None:
    """A context of several MB and 200 entries of 50 kB errors and results:
    the saga page stays under 1 MB (it was tens of MB), and each cut value
    says how many bytes it leaves out and where the whole is (the JSON API,
    which still has all of it)."""
    from fallback_saga import JournalEntry, StepStatus

    context = {"rows": [f"row {i}: some data" for i in range(250_000)]}
    context_bytes = len(json.dumps(context, indent=2, ensure_ascii=False).encode())
    error = "E" * 50_000
    result = json.dumps("R" * 50_000)
    history = [
        JournalEntry(i, f"Step{i}", "primary", "act", StepStatus.FAILED, 1, error, 1.0 + i,
                     result)
        for i in range(200)
    ]
    async with SQLiteSagaStore(tmp_path / "big.db") as store:
        await store.create("big", "Big", "fp", context, history)
        async with ConsoleServer(store, port=0) as console:
            page = await get(console, "/sagas/big")
            assert page.status == 200
            assert len(page.body) < 1_000_000, len(page.body)
            from fallback_saga.console.saga_page import CONTEXT_SHOWN

            shown = context_bytes - CONTEXT_SHOWN
            assert (
                f"… {shown:,} more bytes of JSON; the whole context: "
                '<a href="/api/sagas/big">/api/sagas/big</a>'
            ) in page.text
            cells = re.findall(r"… ([\d,]+) more bytes; the whole text: <a href=\"([^\"]*)\"",
                               page.text)
            assert len(cells) == 400  # every error and result of the page says so
            assert {href for _, href in cells} == {"/api/sagas/big"}
            first = int(cells[0][0].replace(",", ""))
            assert first == len(error) - 4 * 1024
            whole = (await get(console, "/api/sagas/big")).json()
            assert whole["context"] == context
            assert whole["history"][0]["error"] == error


async def test_S12_a_cut_never_shows_part_of_a_password_the_console_redacts(
    tmp_path: Path,
) -> None:
    """Step errors that quote a connection string are shown redacted, and
    redacted before they are cut: a cut through the password (cell, first
    line, alert, timeline) must not leave its start, as cutting first did."""
    from fallback_saga import JournalEntry, StepStatus
    from fallback_saga.console.history_table import CELL_SHOWN

    cuts = [160, 300, CELL_SHOWN, 40, 2000]  # the last failed act: the alert
    history = [
        JournalEntry(i, f"Step{i}", "primary", "act", StepStatus.FAILED, 1,
                     _secret_across(cut), 1.0 + i)
        for i, cut in enumerate(cuts)
    ]
    async with SQLiteSagaStore(tmp_path / "secret.db") as store:
        await store.create("leaky", "Leaky", "fp", {}, history, status=SagaStatus.COMPENSATED)
        async with ConsoleServer(store, port=0) as console:
            page = (await get(console, "/sagas/leaky")).text
            assert "postgresql://app:***@db.internal" in page
            assert "Zq9" not in page
            assert "more bytes; the whole text" in page
