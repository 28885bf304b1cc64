"""A participant's ledger file, read while other processes append to it.

The crash and worker tests share one JSON-lines file between processes: each
call is appended with one ``os.write`` under ``O_APPEND``, which keeps the
writers' lines whole with respect to one another, but not with respect to a
reader: a read may see part of a line still being written (the file grows
before the last bytes are in). Reading that half line as JSON failed the
participant's act in the middle of a recovery race, about once in 60 runs
on a loaded machine, so the saga compensated and the test failed for a
reason of its own. Only whole lines (ending in a newline) are read here; a
line being written is left for the next read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """The ledger's lines that are whole, in order (none if there is no file)."""
    if not path.exists():
        return []
    *whole, _being_written = path.read_text().split("\n")
    return [json.loads(line) for line in whole if line]
