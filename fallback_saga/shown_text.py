"""Stored text as operator surfaces show it (the console, ``show``): cut to
a byte budget, and without the passwords it may quote.

A context, a step's error or its result is whatever a program put in the
journal, megabytes sometimes; a page or a terminal shows a bounded start of
it and says how much more there is. ``redact`` comes first, the cut after:
a cut through a password would leave a part of it that ``redact`` no
longer recognizes.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from .secret_names import REDACTED, is_secret_key

__all__ = ["cut_bytes", "redact", "redact_start", "shown_start"]


def cut_bytes(text: str, limit: int) -> tuple[str, int]:
    """The longest start of ``text`` of at most ``limit`` bytes of UTF-8, cut
    between two characters, and how many bytes are left out (0: all of it).
    Cut before any escaping (``esc``, ``visible``), so never inside one."""
    if len(text) * 4 <= limit:  # fits whatever its characters
        return text, 0
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return text, 0
    low, high = 0, min(len(text), limit)  # a character is at least one byte
    while low < high:  # the most characters that fit
        middle = (low + high + 1) // 2
        if len(text[:middle].encode("utf-8", "surrogatepass")) <= limit:
            low = middle
        else:
            high = middle - 1
    head = text[:low]
    return head, size - len(head.encode("utf-8", "surrogatepass"))


# A password in a conninfo string or URL, should a driver's message quote one.
# Every repetition is bounded: unbounded, a megabyte error text of letters
# took minutes (each position scanned to the end for "://"), a page's worth
# of them hours. No match is longer than _LONGEST characters.
_SECRETS: Final = (
    (
        re.compile(r"(password\s{0,8}=\s{0,8})('(?:[^'\\]|\\.){0,1024}'|\S{1,1024})", re.I),
        r"\1***",
    ),
    (
        re.compile(r"([a-z][a-z0-9+.-]{0,31}://[^:/@\s]{1,256}:)[^@\s]{1,1024}@", re.I),
        r"\1***@",
    ),
)
# A value a text quotes under its key: ``api_key=...`` (a URL's query, a
# conninfo), ``Authorization: Bearer ...`` (a header), ``'card_number':
# '...'`` (a payload's repr or JSON). Which keys are secrets' is for
# ``is_secret_key`` to say, so the key and its separator are found first and
# the value matched only after a secret's key: a value after another key is
# not consumed, and the keys it quotes are found in turn (``url=...?token=``).
# A key starts where no key character precedes it and is matched
# possessively: a megabyte of letters is one try, not one per letter.
_KEY: Final = re.compile(r"(?<![\w.-])([\"']?)([A-Za-z][\w.-]{0,63}+)\1\s{0,8}[=:]\s{0,8}")
_VALUE: Final = re.compile(
    r"(?:(?:bearer|basic|token|digest)\s{1,8})?"
    # A quoted value's closing quote may be missing: a text cut inside it.
    r"(?:\"(?:[^\"\\]|\\.){0,1024}\"?|'(?:[^'\\]|\\.){0,1024}'?|[^\s&,;'\"<>(){}\[\]]{1,1024})",
    re.I,
)
# Columns and their values as PostgreSQL's errors quote them: ``Key
# (card_number)=(4111...) already exists``, the detail of a unique or
# foreign-key violation a participant re-raises. The values are redacted
# when any of the columns is named like a secret's.
_COLUMNS: Final = re.compile(r"\(([^()=]{1,512})\)=\(([^()]{0,1024})\)?")
_LONGEST: Final = 1400


def redact(text: str) -> str:
    """``text`` with any password it quotes, and any value it quotes under
    a key named like a secret (``is_secret_key``), replaced by ``***``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    if ")=(" in text:
        text = _COLUMNS.sub(_redact_columns, text)
    return _redact_keyed(text)


def _redact_columns(found: re.Match[str]) -> str:
    columns = found[1]
    if any(_secret_key(column.strip().strip('"')) for column in columns.split(",")):
        return f"({columns})={REDACTED}"
    return found[0]


def _redact_keyed(text: str) -> str:
    parts: list[str] = []
    done = 0
    for found in _KEY.finditer(text):
        # A match inside a value just redacted is part of that value.
        if found.start() < done or not _secret_key(found[2]):
            continue
        value = _VALUE.match(text, found.end())
        if value is not None:
            parts += (text[done:found.end()], REDACTED)
            done = value.end()
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


# A long text quotes the same few keys over and over (a page of a log).
_secret_key: Final = functools.lru_cache(maxsize=1024)(is_secret_key)


def redact_start(text: str, chars: int) -> str:
    """``redact`` of ``text``'s start: its first ``chars`` characters are
    those of ``redact(text)`` (a secret reaching into them is redacted
    whole), at the cost of that start only, whatever the size of ``text``."""
    return redact(text[: chars + _LONGEST])


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def shown_start(text: str, limit: int, *, secret: bool) -> tuple[str, int]:
    """What to show of ``text``: at most ``limit`` bytes of it (``secret``:
    redacted first), and how many bytes of ``text`` that leaves out (0:
    none; at least 1 when any is)."""
    window = text[: limit + _LONGEST]
    whole = len(window) == len(text)
    if secret:
        window = redact(window)
    head, left = cut_bytes(window, limit)
    if whole and not left:
        return head, 0
    return head, max(1, _size(text) - _size(head))
