"""The frame of every console page, and the small pieces all its pages show.

Every value that comes from a store — ids, names, errors, context — is
passed through ``esc``.
"""

from __future__ import annotations

from typing import Final

from .. import __version__
from ..status import SagaStatus, StepStatus
from ..store._parking import parked_text
from .query import STATUSES
from .style import CSS, LOGO
from .text import esc, format_age, format_time, shorten

__all__ = [
    "NAME_SHOWN", "STATUS_LABELS", "badge", "error_page", "layout", "parked_badge", "when",
]

#: Characters of a step or saga name shown (a hostile row may hold megabytes).
NAME_SHOWN: Final = 200

STATUS_LABELS: Final = {status: status.value.capitalize() for status in STATUSES}


def badge(status: SagaStatus | StepStatus) -> str:
    return f'<span class="badge {status.value}">{esc(status.value)}</span>'


def when(timestamp: float | None, now: float, *, precise: bool = False) -> str:
    """A UTC time with its age on hover (or the other way round)."""
    if timestamp is None:
        return '<span class="muted">&ndash;</span>'
    return (
        f'<span class="when" title="{esc(format_age(timestamp, now))}">'
        f"{esc(format_time(timestamp, precise=precise))}</span>"
    )


def layout(title: str, body: str, *, store_label: str, now: float, nav: str = "sagas") -> str:
    def item(key: str, href: str, text: str) -> str:
        return f'<a href="{href}"{" class=on" if key == nav else ""}>{text}</a>'

    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)} · fallback_saga console</title>"
        '<link rel="icon" href="/favicon.svg" type="image/svg+xml">'
        f"<style>{CSS}</style></head><body>"
        f'<header class="topbar"><a class="brand" href="/">{LOGO}fallback_saga'
        '<span class="sub">console</span></a><nav>'
        + item("sagas", "/", "Sagas")
        + item("metrics", "/metrics", "Metrics")
        + item("api", "/api/sagas", "JSON API")
        + f'</nav><span class="store" title="the saga store this console reads">'
        f"{esc(store_label)}</span>"
        '<span class="pill" title="this console never writes to the store">read-only</span>'
        f"</header><main>{body}</main>"
        f"<footer>fallback_saga {esc(__version__)} · times in UTC · rendered "
        f"{esc(format_time(now))} UTC</footer></body></html>\n"
    )



def parked_badge(claims: int, saga_id: str) -> str:
    # The command names the id shell-quoted (and cut, as saga_page's _retry_hint does).
    return (f'<span class="badge failed">parked</span> '
            f"{esc(parked_text(claims, shorten(saga_id, 200)))}")



def error_page(
    status: int, heading: str, message: str, *, store_label: str, now: float
) -> str:
    body = (
        f'<div class="problem"><div class="code">{status}</div><h1>{esc(heading)}</h1>'
        f'<p>{esc(message)}</p><p><a class="button" href="/">Back to the sagas</a></p></div>'
    )
    return layout(heading, body, store_label=store_label, now=now)
