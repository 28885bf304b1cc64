"""What the commands print: text safe for a terminal, JSON, times, tables.

Every stored value a human format prints (saga ids, names, owners, step
names, error texts) goes through ``terminal_text``: control characters and
other unprintable ones escaped, long values cut. ``--json`` prints exact
JSON, with the characters a terminal could act on written as JSON escapes.
"""

from __future__ import annotations

import codecs
import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from unicodedata import combining, east_asian_width

from ..timestamps import utc_text

__all__ = [
    "MAX_CELL",
    "MAX_CONTEXT",
    "MAX_PATH",
    "MAX_VALUE",
    "escape_what_stdout_cannot_show",
    "json_text",
    "print_json",
    "print_lines",
    "quoted_id",
    "render_table",
    "stdout_json",
    "terminal_cells",
    "terminal_text",
    "when",
]

# How many characters of one value a human format shows (an ellipsis marks a
# cut): a table cell, and a value on a line of its own (show's header, an
# error text, a recover report line). ``--json`` always has the whole value.
MAX_CELL = 48
MAX_VALUE = 200
MAX_CONTEXT = 2000
MAX_PATH = 4096  # the operator's own --db: never cut in practice, still escaped


def terminal_text(value: object, limit: int = MAX_CELL) -> str:
    """``value`` as text that is safe to print to an operator's terminal.

    Every stored value (saga ids, names, owners, step names, error texts) is
    whatever a program or a user put there. Characters that are not
    printable — C0 and C1 control characters (an ESC starts a terminal
    command), DEL, bidirectional overrides and isolates (they reorder what
    follows), other format characters, lone surrogates, line and paragraph
    separators — are shown escaped, as ``\\x1b``, ``\\u202e``; a value
    longer than ``limit`` characters is cut, with an ellipsis. Every value
    the human formats print goes through here.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():  # the common case, at C speed
        return text
    pieces: list[str] = []
    length = 0
    for char in text:  # at most about ``limit`` characters are looked at
        piece = char if char.isprintable() else _escaped(char)
        if length + len(piece) > limit:
            # Cut on a whole character (never inside an escape); the ellipsis
            # takes the last place.
            while length > limit - 1:
                length -= len(pieces.pop())
            return "".join(pieces) + "…"
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


def quoted_id(saga_id: str) -> str:
    """A saga id as a command line the operator is told to type gives it
    (``show 'order 42'``), made safe to print: quoted for a shell first (a
    space or a quote in it stays one argument), then ``terminal_text`` (an
    escape sequence in it is shown, not acted on)."""
    return terminal_text(shlex.quote(saga_id), MAX_VALUE)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def json_text(text: str) -> str:
    """JSON text (already valid) with every character a terminal could act on
    written as a JSON escape: ``json.dumps`` escapes C0 controls itself, not
    DEL, C1 controls, bidi overrides or lone surrogates. The JSON means
    exactly the same; readable non-ASCII text stays readable."""
    if all(line.isprintable() for line in text.split("\n")):
        return text
    return "".join(
        char if char == "\n" or char.isprintable() else _json_escape(char) for char in text
    )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a JSON string escapes it as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def when(timestamp: float | None, *, precise: bool = False) -> str:
    """Unix time as UTC text (``precise``: with milliseconds)."""
    return utc_text(timestamp, precise=precise)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> list[str]:
    """Plain-text columns: a header, a rule, the rows (``right``: right-aligned
    columns). Each cell is measured as the terminal will show it: in the
    escapes a stdout that is not UTF-8 writes for what it cannot encode, and
    in a terminal's cells (``terminal_cells``)."""
    written = _as_stdout_writes()
    if written is not None:
        rows = [[written(cell) for cell in row] for row in rows]
    widths = [terminal_cells(header) for header in headers]
    for row in rows:
        widths = [max(width, terminal_cells(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            _padded(cell, width, index in right)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *map(line, rows)]


def _padded(cell: str, width: int, right: bool) -> str:
    room = " " * (width - terminal_cells(cell))
    return room + cell if right else cell + room


def terminal_cells(text: str) -> int:
    """How many cells of a terminal ``text`` takes: an East Asian wide or
    full-width character (CJK, most emoji) two, a combining mark (an accent
    written after its letter) none, any other printable character one."""
    if text.isascii():  # the common case, at C speed
        return len(text)
    return sum(
        0 if combining(char) else 2 if east_asian_width(char) in "WF" else 1 for char in text
    )


def _as_stdout_writes() -> Callable[[str], str] | None:
    """On a stdout that is not UTF-8: what it writes for a text (what it
    cannot encode as an escape, ``escape_what_stdout_cannot_show``), to
    measure that; None on a UTF-8 stdout, which writes any text as it is."""
    stream = sys.stdout
    if _writes_any_text(stream):
        return None
    encoding = stream.encoding

    def written(text: str) -> str:
        return text.encode(encoding, "backslashreplace").decode(encoding)

    return written


def print_json(data: object) -> None:
    sys.stdout.write(stdout_json(json_text(json.dumps(data, indent=2, ensure_ascii=False))) + "\n")


# A stdout that is not UTF-8 (PYTHONIOENCODING=ascii, a cp1252 Windows
# console, an old Python's C locale) cannot write every character a saga id,
# a step name, an error text or the help text holds: with its default
# ``errors="strict"`` the command ended in a UnicodeEncodeError traceback.


def _writes_any_text(stream: object) -> bool:
    """True for a stream whose encoding can write every character (UTF-8, -16, -32)."""
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):
        return True  # not a text stream we know of: left as it is
    try:
        return codecs.lookup(encoding).name.startswith("utf")
    except LookupError:
        return True


def escape_what_stdout_cannot_show() -> None:
    """On a stdout that is not UTF-8, write what it cannot encode as a Python
    escape (``\\xe9``), as ``terminal_text`` shows a control character,
    instead of failing (``errors="backslashreplace"``, stderr's own default).
    The JSON formats escape such characters themselves first (``stdout_json``)."""
    stream = sys.stdout
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None and not _writes_any_text(stream):
        reconfigure(errors="backslashreplace")


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def stdout_json(text: str) -> str:
    """JSON text as stdout can write it: unchanged on a UTF stream; else with
    every non-ASCII character as a JSON escape — the same JSON (such a
    character is only ever inside a string), where the Python escape that
    ``escape_what_stdout_cannot_show`` would write is not JSON."""
    if text.isascii() or _writes_any_text(sys.stdout):
        return text
    return _NON_ASCII.sub(lambda found: _json_escape(found.group()), text)


def print_lines(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
