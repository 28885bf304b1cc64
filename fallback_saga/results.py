"""Step responses in the journal: written when a step completes, read back on
resume, so that a resumed saga's ``result.results`` is the list a run without
a crash returns.

A response is journaled in the self-describing form that untyped context
positions use (``codec.py``: plain JSON where JSON carries the value as
itself, else tagged — ``{"$fs": ["obj", ["shop:Reserved", {...}]]}`` for a
``Response`` dataclass), as JSON text in ``JournalEntry.result``. It needs no
annotation to read back: a step's declared response type plays no part, so a
step returning a subclass, a union member or a plain dict resumes exactly.

A response that cannot be journaled (a client object, a socket, a class
defined inside a function) does not stop the saga: the step's effect has
happened and the business transaction goes on. The run that produced it
returns it as usual; the journal holds a marker saying why it could not be
kept, a warning is logged once per saga and step, and a resumed run gives an
``UnjournaledResponse`` in its place — never a silent ``None``. The same
placeholder stands for a response that no longer decodes (its class was
renamed or moved without an alias) and for steps journaled before 0.6.0.
"""

from __future__ import annotations

from typing import Any, Final

from .decoding import TAG, decode_untyped
from .errors import ContextDecodeError
from .log_lines import library_logger
from .status import StepStatus
from .step import SagaStepResult
from .store._responses import UNJOURNALED
from .store.base import JournalEntry, SagaRecord
from .stored_json import parse_stored_json

__all__ = ["UnjournaledResponse", "journaled_results", "results_by_position"]

_log = library_logger("fallback_saga")

_COMPLETED: Final = StepStatus.COMPLETED


class UnjournaledResponse:
    """Stands, in a resumed saga's ``result.results``, for a step response the
    journal does not hold: it could not be stored (``type_name``, ``reason``),
    no longer decodes, or was journaled before 0.6.0 kept responses.

    Falsy, so ``if step_result.response:`` treats it as missing; compare
    ``isinstance(response, UnjournaledResponse)`` to tell it from ``None``.
    """

    __slots__ = ("reason", "step_name", "type_name")

    def __init__(self, step_name: str, type_name: str, reason: str) -> None:
        self.step_name = step_name
        self.type_name = type_name
        self.reason = reason

    def __bool__(self) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnjournaledResponse):
            return NotImplemented
        return (self.step_name, self.type_name, self.reason) == (
            other.step_name, other.type_name, other.reason
        )

    def __hash__(self) -> int:
        return hash((self.step_name, self.type_name, self.reason))

    def __repr__(self) -> str:
        return (
            f"UnjournaledResponse(step_name={self.step_name!r}, type_name={self.type_name!r}, "
            f"reason={self.reason!r})"
        )


# --------------------------------------------------------------------------- reading


def journaled_results(record: SagaRecord) -> list[SagaStepResult[Any, Any]]:
    """What every completed ``act`` of ``record`` returned, in step order: the
    ``results`` of a run that got that far without a crash."""
    return [result for _, result in results_by_position(record)]


def results_by_position(record: SagaRecord) -> list[tuple[int, SagaStepResult[Any, Any]]]:
    """``journaled_results`` with each result's position (the members of a
    ``Parallel`` group complete in any order; results are in step order)."""
    found = [
        (entry.position, SagaStepResult(_read(entry, record.saga_id), entry.step, record.saga_id))
        for entry in record.history
        if entry.action == "act" and entry.status is _COMPLETED
    ]
    found.sort(key=lambda pair: pair[0])
    return found


def _read(entry: JournalEntry, saga_id: str) -> Any:
    text = entry.result
    if text is None:
        return UnjournaledResponse(
            entry.step, "", "journaled by a fallback_saga before 0.6.0, which did not keep "
            "step responses"
        )
    if text == "null":
        return None
    try:
        data = parse_stored_json(text)
        marker = _marker(data)
        if marker is not None:
            return UnjournaledResponse(entry.step, *marker)
        return decode_untyped(data, "response")
    except (ValueError, ContextDecodeError) as error:
        # The business transaction goes on without it (see the module
        # docstring); the operator is told which response and why.
        _log.warning(
            "saga %s: the journaled response of step %r cannot be read back (%s); the "
            "resumed run gives an UnjournaledResponse in its place", saga_id, entry.step, error,
        )
        return UnjournaledResponse(entry.step, "", f"cannot be read back: {error}")


def _marker(data: Any) -> tuple[str, str] | None:
    if data.__class__ is dict and len(data) == 1:
        tagged = data.get(TAG)
        if (
            tagged.__class__ is list
            and len(tagged) == 2
            and tagged[0] == UNJOURNALED
            and tagged[1].__class__ is list
            and len(tagged[1]) == 2
        ):
            return str(tagged[1][0]), str(tagged[1][1])
    return None
