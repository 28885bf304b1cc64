"""Helpers shared by the durable stores (SQLite, PostgreSQL): compact JSON
that refuses NaN, and the checks of durations and counts they take."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

from ..status import SagaStatus

__all__ = ["decode_json", "encode_json", "finite_seconds", "non_negative_int", "status_text"]


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact JSON, NaN and infinities refused. json.dumps with options builds
    a new encoder on every call; this one is built once (on the hot path: one
    context per write)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python implementation)
        return json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    encode = make(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def encode_json(value: Any) -> str:
        return "".join(encode(value, 0))

    return encode_json


encode_json: Final = _make_encoder()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


decode_json: Final = json.JSONDecoder(parse_constant=_refuse_constant).decode


def status_text(status: SagaStatus) -> str:
    if status.__class__ is SagaStatus:
        return status.value
    return SagaStatus(status).value  # a plain "running" is fine; "nonsense" is a ValueError


def finite_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value
