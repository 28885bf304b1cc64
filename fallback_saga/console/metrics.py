"""``/metrics``: the sagas in the store, in the Prometheus text exposition format
(version 0.0.4), for an existing Prometheus or Grafana to scrape."""

from __future__ import annotations

from typing import Final

from ..status import SagaStatus
from .store_counts import Counts

__all__ = ["CONTENT_TYPE", "escape_label", "exposition"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as the exposition format quotes it: backslash, double
    quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def exposition(counts: Counts) -> str:
    """Every saga name seen, with every status (0 included, so a series
    does not vanish when its last saga moves on)."""
    lines = [
        "# HELP fallback_saga_sagas "
        + _escape_help("Sagas in the store, by saga name and status."),
        "# TYPE fallback_saga_sagas gauge",
    ]
    for name in counts.names():
        label = escape_label(name)
        for status in SagaStatus:
            value = counts.by_name_status.get((name, status), 0)
            lines.append(
                f'fallback_saga_sagas{{saga_name="{label}",status="{status.value}"}} {value}'
            )
    lines += [
        "# HELP fallback_saga_sagas_counted_exactly "
        + _escape_help(
            "1 if the store counted every saga; 0 if the counts cover only the newest "
            "sagas it lists (a store without count_sagas)."
        ),
        "# TYPE fallback_saga_sagas_counted_exactly gauge",
        f"fallback_saga_sagas_counted_exactly {1 if counts.exact else 0}",
    ]
    if counts.unreadable is not None:  # a store that says (the built-in ones)
        lines += [
            "# HELP fallback_saga_sagas_unreadable "
            + _escape_help(
                "Rows the store left out of fallback_saga_sagas as unreadable: a saga in "
                "flight its recovery skips as corrupt, a status or name it does not write, "
                "a time or id no reader reads, of any status. fallback-saga list names each "
                "by id; recover() reports those in flight."
            ),
            "# TYPE fallback_saga_sagas_unreadable gauge",
            f"fallback_saga_sagas_unreadable {counts.unreadable}",
        ]
    return "\n".join(lines) + "\n"
