"""The web console in a real headless Chromium (the OS package, driven by
Playwright): the list renders, its filters and pages work, the saga page
draws its SVG timeline, hostile values stay text, and no page logs an error
or a Content-Security-Policy violation or asks for anything from elsewhere.

Needs ``pip install playwright`` (never ``playwright install``: the browser is
the system's) and ``apt-get install chromium``; ``FALLBACK_SAGA_CHROMIUM`` may
name another binary. Without them these tests are skipped, with the reason;
``FALLBACK_SAGA_REQUIRE_BROWSER=1`` (CI) makes that a failure instead.

``FALLBACK_SAGA_SCREENSHOTS=1`` also writes the documentation's screenshots,
docs/images/console-list.png and docs/images/console-saga.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers_console import (
    LEASE_OWNER,
    XSS_ID,
    XSS_STEP,
    OrderSaga,
    ShopOrder,
    fill_journal,
)

from fallback_saga import SQLiteSagaStore
from fallback_saga.console import ConsoleServer

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("FALLBACK_SAGA_REQUIRE_BROWSER") == "1"


def _unavailable(reason: str) -> None:
    message = f"BROWSER TESTS SKIPPED: {reason}"
    if REQUIRED:
        pytest.fail(message + " (FALLBACK_SAGA_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def find_chromium() -> str | None:
    """The system's Chromium (never a downloaded build)."""
    named = os.environ.get("FALLBACK_SAGA_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError as error:
    _unavailable(f"Playwright is not installed ({error}); pip install playwright")

CHROMIUM = find_chromium()
if CHROMIUM is None:
    _unavailable(
        "no Chromium found (apt-get install chromium, or set FALLBACK_SAGA_CHROMIUM)"
    )


@dataclass
class Watch:
    """What a page did that it should not have: console errors and warnings
    (CSP violations are errors), uncaught exceptions, failed or foreign requests."""

    origin: str
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self._request_failed)
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _request_failed(self, request: Any) -> None:
        # Chromium asks for the icon after the page's load event; a test that
        # goes straight on to the next page cancels that request. The browser
        # aborted it, the console did not fail it (test_console_http checks the
        # icon is served).
        aborted_icon = request.failure == "net::ERR_ABORTED" and urlsplit(
            request.url
        ).path in ("/favicon.svg", "/favicon.ico")
        if not aborted_icon:
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.origin, "data:")):
            self.problems.append(f"a request outside the console: {request.url}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status} for {response.url}")

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleServer]:
    async with SQLiteSagaStore(tmp_path / "shop.db") as store:
        await fill_journal(store)
        async with ConsoleServer(store, port=0) as server:
            yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        except Exception as error:  # a binary that cannot start here (libraries, sandbox)
            _unavailable(f"Chromium at {CHROMIUM} does not start: {error}")
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser, console: ConsoleServer) -> AsyncIterator[tuple[Page, Watch]]:
    context = await browser.new_context(viewport={"width": 1360, "height": 860})
    opened = await context.new_page()
    watch = Watch(f"http://127.0.0.1:{console.port}/")
    watch.attach(opened)
    try:
        yield opened, watch
    finally:
        await context.close()


def url(console: ConsoleServer, path: str = "/") -> str:
    return f"http://127.0.0.1:{console.port}{path}"


async def listed_ids(page: Page) -> list[str]:
    ids: list[str] = await page.locator("table tbody a.id").all_inner_texts()
    return ids


async def test_the_list_renders(console: ConsoleServer, page: tuple[Page, Watch]) -> None:
    tab, watch = page
    await tab.goto(url(console))
    assert await tab.title() == "Sagas · fallback_saga console"
    assert await listed_ids(tab) == [
        XSS_ID, "order-1006", "payout-1005", "atlantis-1004", "order-1003", "order-1002",
        "order-1001",
    ]
    cards = await tab.locator(".counts .count").all_inner_texts()
    assert [card.split() for card in cards][:1] == [["7", "ALL"]]
    assert await tab.locator(".badge.failed").count() == 1
    # The inline style sheet was applied (allowed by its hash): the top bar is dark.
    background = await tab.locator(".topbar").evaluate(
        "element => getComputedStyle(element).backgroundColor"
    )
    assert background == "rgb(16, 24, 40)"
    assert watch.problems == []


async def test_filters_work(console: ConsoleServer, page: tuple[Page, Watch]) -> None:
    tab, watch = page
    await tab.goto(url(console))
    await tab.select_option("select[name=status]", "failed")
    await tab.click("button[type=submit]:has-text('Apply')")
    await tab.wait_for_url("**/?status=failed**")
    assert await listed_ids(tab) == ["payout-1005"]

    await tab.select_option("select[name=status]", "")
    await tab.fill("input[name=name]", "OrderSaga")
    await tab.click("button[type=submit]:has-text('Apply')")
    await tab.wait_for_url("**name=OrderSaga**")
    assert await listed_ids(tab) == [
        "order-1006", "atlantis-1004", "order-1003", "order-1002", "order-1001"
    ]
    await tab.click(".counts a.count.completed")
    assert await listed_ids(tab) == ["order-1003", "order-1002", "order-1001"]
    await tab.click(".quick a:has-text('24 h')")
    assert await listed_ids(tab) == ["order-1003", "order-1002", "order-1001"]
    assert "since=24h" in tab.url

    await tab.fill("input[name=since]", "")
    await tab.fill("input[name=until]", "2000-01-01")
    await tab.click("button[type=submit]:has-text('Apply')")
    assert await listed_ids(tab) == []
    assert "No saga matches these filters" in await tab.inner_text("main")
    assert watch.problems == []

    # A value that is not a time: a 400, with the form as typed and the reason.
    await tab.fill("input[name=until]", "next tuesday")
    await tab.click("button[type=submit]:has-text('Apply')")
    assert "until must be an ISO 8601 date or time" in await tab.inner_text(".alert")
    assert await tab.input_value("input[name=until]") == "next tuesday"
    assert await tab.input_value("input[name=name]") == "OrderSaga"
    assert [p for p in watch.problems if "400" not in p] == []


async def test_pages_follow_older(console: ConsoleServer, page: tuple[Page, Watch]) -> None:
    tab, watch = page
    await tab.goto(url(console, "/?limit=3"))
    seen = await listed_ids(tab)
    while await tab.locator("a:has-text('Older')").count():
        await tab.click("a:has-text('Older')")
        seen += await listed_ids(tab)
    assert len(seen) == 7
    assert len(set(seen)) == 7
    await tab.click("a:has-text('Newest')")
    assert len(await listed_ids(tab)) == 3
    assert watch.problems == []


async def test_the_saga_page_draws_the_timeline(
    console: ConsoleServer, page: tuple[Page, Watch]
) -> None:
    tab, watch = page
    await tab.goto(url(console))
    await tab.click("a.id:has-text('order-1003')")
    await tab.wait_for_url("**/sagas/order-1003")
    timeline = tab.locator("svg.timeline")
    await timeline.wait_for()
    box = await timeline.bounding_box()
    assert box is not None
    assert box["width"] > 800
    assert box["height"] > 100
    assert await tab.locator("svg.timeline rect.bar").count() == 5
    assert await tab.locator("svg.timeline rect.bar.failed").count() == 1
    widths = await tab.locator("svg.timeline rect.bar").evaluate_all(
        "bars => bars.map(bar => bar.getBoundingClientRect().width)"
    )
    assert all(width >= 2 for width in widths)
    assert await tab.locator("section[aria-label=history] tbody tr").count() == 10
    assert "CardDeclined" in await tab.inner_text("section[aria-label=history]")
    assert '"wallet:order-1003"' in await tab.inner_text("pre.json")

    await tab.goto(url(console, "/sagas/order-1006"))
    lease = await tab.inner_text("main .grid")
    assert LEASE_OWNER in lease
    assert "held" in lease
    await tab.goto(url(console, "/sagas/payout-1005"))
    assert "an operator must finish undoing it" in await tab.inner_text(".alert")
    assert watch.problems == []


async def test_an_unknown_saga_is_a_404_page(
    console: ConsoleServer, page: tuple[Page, Watch]
) -> None:
    tab, watch = page
    response = await tab.goto(url(console, "/sagas/no-such-saga"))
    assert response is not None
    assert response.status == 404
    assert "Not found" in await tab.inner_text("h1")
    # Only the 404 itself is reported (Chromium logs it as a failed resource).
    assert watch.problems
    assert all("404" in problem for problem in watch.problems)


async def test_hostile_values_stay_text(console: ConsoleServer, page: tuple[Page, Watch]) -> None:
    tab, watch = page
    await tab.goto(url(console))
    await tab.click(f"a.id:has-text('{XSS_ID}')")
    await tab.locator("svg.timeline").wait_for()
    assert await tab.inner_text("h1") == XSS_ID
    assert await tab.evaluate("document.scripts.length") == 0
    assert await tab.locator("main img").count() == 0
    labels = await tab.locator("svg.timeline text.label").all_text_contents()
    assert any(XSS_STEP in label for label in labels)
    assert watch.dialogs == []
    assert watch.problems == []


async def test_a_csp_violation_would_be_caught(
    console: ConsoleServer, page: tuple[Page, Watch]
) -> None:
    """The watch above sees CSP violations: a page under the console's policy
    with an inline script and a style attribute reports both."""
    tab, watch = page
    probe = url(console, "/csp-probe")
    policy = (await tab.request.get(url(console))).headers["content-security-policy"]

    async def fulfil(route: Any) -> None:
        await route.fulfill(
            status=200,
            headers={"Content-Type": "text/html", "Content-Security-Policy": policy},
            body='<p style="color:red">x</p><script>alert(1)</script>',
        )

    await tab.route(probe, fulfil)
    await tab.goto(probe)
    await tab.wait_for_timeout(200)
    violations = [p for p in watch.problems if "Content Security Policy" in p]
    assert len(violations) >= 2, watch.problems
    assert watch.dialogs == []


async def test_screenshots(browser: Browser, tmp_path: Path) -> None:
    """The pages as an operator sees them, on a journal without hostile
    values (kept in docs/images with FALLBACK_SAGA_SCREENSHOTS=1)."""
    into = ROOT / "docs" / "images" if os.environ.get("FALLBACK_SAGA_SCREENSHOTS") else tmp_path
    into.mkdir(parents=True, exist_ok=True)
    async with SQLiteSagaStore(tmp_path / "shop.db") as store:
        orders = OrderSaga(store=store)
        for n, amount in enumerate((1250, 3400, 780, 5600, 2100), start=990):
            await orders.run(ShopOrder(f"order-{n}", amount_cents=amount), saga_id=f"order-{n}")
        await fill_journal(store, evil=False)
        async with ConsoleServer(store, port=0) as console:
            context = await browser.new_context(viewport={"width": 1360, "height": 860})
            tab = await context.new_page()
            watch = Watch(url(console))
            watch.attach(tab)
            await tab.goto(url(console))
            await tab.screenshot(path=str(into / "console-list.png"), full_page=True)
            await tab.goto(url(console, "/sagas/atlantis-1004"))
            await tab.screenshot(path=str(into / "console-saga.png"), full_page=True)
            await context.close()
    for name in ("console-list.png", "console-saga.png"):
        assert (into / name).stat().st_size > 20_000
    assert watch.problems == []
