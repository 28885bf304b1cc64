"""Every value the console shows is user data: saga ids, saga and step names,
error messages, step results and context values. A real saga whose id is
``<script>alert(1)</script>`` (and whose name, steps, error and context are
markup too) must render as text everywhere: HTML text, attributes, the SVG
timeline, the JSON API and the metrics."""

from __future__ import annotations

import html as html_module
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers_console import (
    XSS_CONTEXT,
    XSS_ERROR,
    XSS_ID,
    XSS_NAME,
    XSS_STEP,
    fetch,
    fill_journal,
)
from prometheus_text import parse_exposition

from fallback_saga import SQLiteSagaStore
from fallback_saga.console import ConsoleServer
from fallback_saga.console.metrics import escape_label
from fallback_saga.console.text import esc, redact, visible

HOSTILE = [XSS_ID, XSS_NAME, XSS_STEP, XSS_ERROR, XSS_CONTEXT, "</td><script>alert(6)</script>"]


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleServer]:
    async with SQLiteSagaStore(tmp_path / "evil.db") as store:
        await fill_journal(store)
        async with ConsoleServer(store, port=0) as server:
            yield server


async def page(console: ConsoleServer, path: str) -> str:
    reply = await fetch(f"http://127.0.0.1:{console.port}{path}")
    assert reply.status == 200, path
    return reply.text


class Elements(HTMLParser):
    """Every element and attribute a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(html: str) -> Elements:
    elements = Elements()
    elements.feed(html)
    elements.close()
    return elements


def assert_inert(html: str) -> Elements:
    elements = parsed(html)
    assert "script" not in elements.tags
    assert "img" not in elements.tags
    assert "b" not in elements.tags
    assert "i" not in elements.tags
    assert elements.tags.count("svg") <= 2  # the logo, the timeline: none from the data
    names = {name for name, _ in elements.attributes}
    assert not {name for name in names if name.startswith("on")}, names
    for raw in HOSTILE:
        assert raw not in html
    return elements


async def test_the_listing_shows_hostile_values_as_text(console: ConsoleServer) -> None:
    html = await page(console, "/")
    elements = assert_inert(html)
    text = "".join(elements.text)
    assert XSS_ID in text
    assert XSS_NAME in text
    hrefs = [value for name, value in elements.attributes if name == "href"]
    assert "/sagas/" + quote(XSS_ID, safe="") in hrefs


async def test_the_saga_page_shows_hostile_values_as_text(console: ConsoleServer) -> None:
    html = await page(console, "/sagas/" + quote(XSS_ID, safe=""))
    elements = assert_inert(html)
    text = "".join(elements.text)
    for shown in (XSS_ID, XSS_NAME, XSS_STEP, f"ValueError: {XSS_ERROR}"):
        assert shown in text, shown
    assert html_module.escape(XSS_CONTEXT) in html  # the context JSON
    # Inside the SVG timeline too: its labels and hover titles.
    svg = html[html.index('<svg class="timeline"') : html.index("</svg>", html.index(
        '<svg class="timeline"'))]
    assert html_module.escape(XSS_STEP) in svg
    assert "&lt;svg onload" in svg
    assert html_module.escape(XSS_ID) in svg  # the title


async def test_the_api_and_metrics_keep_the_values_exact(console: ConsoleServer) -> None:
    reply = await fetch(f"http://127.0.0.1:{console.port}/api/sagas/{quote(XSS_ID, safe='')}")
    assert "<" not in reply.text  # escaped as \u003c: inert even if rendered as HTML
    data = reply.json()
    assert data["saga_id"] == XSS_ID
    assert data["saga_name"] == XSS_NAME
    assert data["context"]["note"] == XSS_CONTEXT
    assert any(h["error"] == f"ValueError: {XSS_ERROR}" for h in data["history"])
    metrics = await fetch(f"http://127.0.0.1:{console.port}/metrics")
    families = parse_exposition(metrics.text)
    names = {s.labels["saga_name"] for s in families["fallback_saga_sagas"].samples}
    assert XSS_NAME in names


async def test_invisible_characters_are_shown_not_obeyed(console: ConsoleServer) -> None:
    """A right-to-left override in a step name must not reorder what follows."""
    html = await page(console, "/sagas/" + quote(XSS_ID, safe=""))
    assert "\u202e" not in html
    assert "prepare\\u202e&lt;i&gt;" in html


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("<script>", "&lt;script&gt;"),
        ('a"b\'c&d', "a&quot;b&#x27;c&amp;d"),
        ("tab\there", "tab\\x09here"),
        ("line\nbreak\r", "line\\x0abreak\\x0d"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("ünïcödé ✓", "ünïcödé ✓"),
    ],
)
def test_esc(value: str, shown: str) -> None:
    assert esc(value) == shown


def test_esc_keeps_newlines_in_blocks() -> None:
    assert esc("a\n\tb\r", keep_newlines=True) == "a\n\tb\\x0d"
    assert visible("plain") == "plain"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ('quote"', 'quote\\"'),
        ("back\\slash", "back\\\\slash"),
        ("new\nline", "new\\nline"),
        ('all\\"\n', 'all\\\\\\"\\n'),
    ],
)
def test_metric_label_values_are_escaped(value: str, escaped: str) -> None:
    assert escape_label(value) == escaped
    text = f'm{{l="{escape_label(value)}"}} 1\n'
    assert parse_exposition(text)["m"].samples[0].labels["l"] == value


@pytest.mark.parametrize(
    ("message", "redacted"),
    [
        ("host=db password=hunter2 user=x", "host=db password=*** user=x"),
        ("password = 'with space' port=1", "password = *** port=1"),
        ("postgresql://app:hunter2@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_secrets_are_redacted(message: str, redacted: str) -> None:
    assert redact(message) == redacted
    assert "hunter2" not in redact(message)

