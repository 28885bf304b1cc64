"""A saga's journal as JSON, the one shape every operator surface shows
(``show --json`` and the web console's ``/api/sagas/<id>``), and the record
those surfaces show: redacted unless the operator asked for raw values."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Final

from .redaction import redacted
from .shown_text import redact
from .store.base import JournalEntry, SagaRecord
from .stored_json import parse_stored_json

__all__ = ["history_json", "record_head_json", "shown_record"]

# A result that holds none of these cannot hold a secret key's value or a
# quoted password: it is shown as it is, unparsed (a long history's results
# are not all parsed and written again to find nothing).
_MAYBE_SECRET: Final = re.compile(
    r"pass|secret|token|key|credential|authoriz|cookie|card|security|cvv|cvc|ssn|pin|pan|"
    r"iban|otp|://",
    re.IGNORECASE,
)


def record_head_json(record: SagaRecord) -> dict[str, Any]:
    """The fields a saga's JSON opens with, on every operator surface (``show
    --json``, ``/api/sagas/<id>``): what it is, where it stands, when."""
    return {
        "saga_id": record.saga_id,
        "saga_name": record.saga_name,
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def shown_record(record: SagaRecord, *, unredacted: bool = False) -> SagaRecord:
    """``record`` as the operator's views show it: a copy whose context,
    step results and error texts are ``redaction.redacted`` — unless
    ``unredacted``, the operator's explicit opt-in, which gives it as stored."""
    if unredacted:
        return record
    return dataclasses.replace(
        record,
        context=redacted(record.context),
        history=[_shown_entry(entry) for entry in record.history],
    )


def _shown_entry(entry: JournalEntry) -> JournalEntry:
    error = redact(entry.error) if entry.error else entry.error
    result = entry.result
    if result is not None and _MAYBE_SECRET.search(result):
        try:
            result = json.dumps(redacted(parse_stored_json(result)), ensure_ascii=False)
        except ValueError:  # not JSON (a store of someone else's): its passwords at least
            result = redact(result)
    if error is entry.error and result is entry.result:
        return entry
    return entry._replace(error=error, result=result)


def history_json(
    record: SagaRecord, first: int = 0, count: int | None = None, *, base: int = 0
) -> list[dict[str, Any]]:
    """``record.history`` (``count`` entries from seq ``first``: one page),
    an object per entry, ``seq`` its place in the whole journal; ``result``
    is a completed act's response in its journal form, parsed (``None``:
    none was kept). ``base``: the seq of ``record.history[0]``, when it
    holds a window of the journal (``HistoryWindow``)."""
    stop = None if count is None else first - base + count
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
        for seq, entry in enumerate(record.history[first - base : stop], start=first)
    ]


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse_stored_json(text)
    except ValueError:  # a store of someone else's kept something else: show it as it is
        return text
