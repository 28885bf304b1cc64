"""A saga's journal as JSON, the one shape every operator surface shows
(``show --json`` and the web console's ``/api/sagas/<id>``)."""

from __future__ import annotations

from typing import Any

from .store.base import SagaRecord
from .stored_json import parse_stored_json

__all__ = ["history_json"]


def history_json(
    record: SagaRecord, first: int = 0, count: int | None = None
) -> list[dict[str, Any]]:
    """``record.history`` (``count`` entries from seq ``first``: one page),
    an object per entry, ``seq`` its place in the whole journal; ``result``
    is a completed act's response in its journal form, parsed (``None``:
    none was kept)."""
    stop = None if count is None else first + count
    return [
        {
            "seq": seq,
            "position": entry.position,
            "step": entry.step,
            "branch": entry.branch,
            "action": entry.action,
            "status": entry.status.value,
            "attempt": entry.attempt,
            "error": entry.error,
            "at": entry.at,
            "result": _parsed(entry.result),
        }
        for seq, entry in enumerate(record.history[first:stop], start=first)
    ]


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_stored_json(text)
    except ValueError:  # a store of someone else's kept something else: show it as it is
        return text
