"""Parsing JSON text that a store holds: read as untrusted input (S12).

A row may have been written by another tool, by hand or by an attacker with
write access to the database. Whatever it holds, parsing it either gives
plain JSON values or raises ``ValueError`` — which every reader turns into a
clear error for that one saga — and never anything else:

* nesting deeper than ``MAX_STORED_DEPTH`` is refused before it is parsed.
  Deeper still, ``json`` raises ``RecursionError``, which no reader expects:
  one such row crashed a console page and ``show --json``, and recovery took
  it for a failing store (``SagaStoreError``, its lease released to be
  claimed again at once). Nesting that ``json`` still parses but the
  recursive readers after it (the context decoder, a page's rendering) do
  not is refused too: the bound leaves them the rest of the stack;
* ``NaN``/``Infinity`` are not JSON, and nothing the library writes holds them;
  nor does it write a number too big for a float (``1e400``), which ``json``
  reads as infinity: a context holding one was resumed with it, and the
  console and ``show --json`` printed ``Infinity``, which is not JSON;
* an integer beyond ``sys.get_int_max_str_digits()`` is refused by ``json``
  itself (a ``ValueError``) before it costs quadratic time.

The message never quotes the text (a context may hold secrets): ``json``'s
own messages give a position only.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from typing import Any, Final

from .codec import MAX_CONTEXT_DEPTH

__all__ = ["MAX_STORED_DEPTH", "parse_stored_json"]

#: The deepest nesting of arrays and objects a stored JSON text may have. The
#: journal form of a context (or a response) as deep as ``MAX_CONTEXT_DEPTH``
#: allows takes up to four JSON levels per level (a tagged dict with keys
#: that are not text: ``{"$fs": ["dict", [[key, value]]]}``), plus its own.
MAX_STORED_DEPTH: Final = 4 * (MAX_CONTEXT_DEPTH + 2) + 8

# Every byte but quotes and brackets, to delete (non-ASCII bytes included);
# braces as brackets: for the depth, a pair is a pair (the parser checks them).
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_AS_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
# Then an opening bracket weighs 2, a closing one 0 (see ``_too_deep``).
_WEIGHTS: Final = bytes.maketrans(b"[]", b"\x02\x00")
# Passes that take away the innermost brackets before counting them one by one.
_PASSES: Final = 16


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too big for a float is not JSON")
    return value


_decode: Final = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float
).decode


def _too_deep(text: str) -> bool:
    data = text.encode("utf-8", "surrogatepass")  # bytes: each step below is one C call
    # Cheap first: fewer brackets than the bound cannot nest deeper than it.
    if data.count(b"[") + data.count(b"{") <= MAX_STORED_DEPTH:
        return False
    # Brackets inside strings do not nest. Escaped backslashes and quotes
    # out first (so the quotes left delimit the strings), then everything but
    # quotes and brackets, then the strings (most of them empty by then).
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = data.translate(_AS_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    # A shallow text (the usual big one) is settled by a few passes that each
    # take away the innermost level (one level: ``replace`` does not rescan).
    for _ in range(_PASSES):
        fewer = brackets.replace(b"[]", b"")
        if not fewer or len(fewer) == len(brackets):
            return False  # (brackets that do not pair up: the parser refuses them)
        brackets = fewer
    # Else count, in one pass: after the i-th bracket the depth is
    # opened - closed = 2 * opened - i, a running sum of 2 per opening less i.
    weights = brackets.translate(_WEIGHTS)
    deepest: int = max(map(operator.sub, itertools.accumulate(weights), itertools.count(1)))
    return deepest + _PASSES > MAX_STORED_DEPTH


def parse_stored_json(text: str) -> Any:
    """``text`` parsed as strict JSON; ``ValueError`` for anything else."""
    if _too_deep(text):
        raise ValueError(f"it is nested deeper than {MAX_STORED_DEPTH} levels")
    try:
        return _decode(text)
    except RecursionError:  # only with a stack already deep when called
        raise ValueError("it is nested too deeply to read") from None
