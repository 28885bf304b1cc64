"""Why this process cannot open a SQLite database file, in words an operator
can act on: SQLite itself says only "unable to open database file". Shared by
the saga store (store/_sqlite_schema.py) and the breakers' shared state
(shared_state.py), which open their files the same way."""

from __future__ import annotations

import os
import struct
from typing import Final

__all__ = ["why_cannot_open"]

# What the store tells once the cause is mended: no new store object is needed.
_THEN: Final = "; the store's next request opens it again"


def why_cannot_open(path: str) -> str | None:
    """Why this process cannot write the file at ``path`` and the -wal and
    -shm files beside it (which SQLite makes in its directory), if the file
    system says: a path that is a directory or in one that does not exist, a
    read-only mount, a directory or file this user may not write, a -wal
    file removed under an open database."""
    where = os.path.dirname(path) or "."
    # A new user's first two: SQLite says only "unable to open database file".
    if os.path.isdir(path):
        return (
            f"{path} is a directory; give the path of a file in it, such as "
            f"{os.path.join(path, 'sagas.db')}: the store creates the file"
        )
    if not os.path.isdir(where):
        return (
            f"the directory {where} does not exist: the store creates its file, "
            f"never the directories above it; create it, or give another path{_THEN}"
        )
    try:
        read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs here, or no such directory
        read_only = False
    if read_only:
        return (
            f"the file system holding {where} is mounted read-only; remount it "
            f"read-write{_THEN}"
        )
    user = f"this process (uid {os.geteuid()})" if hasattr(os, "geteuid") else "this process"
    if os.path.isdir(where) and not os.access(where, os.W_OK | os.X_OK):
        return (
            f"{user} may not write the directory {where}, where SQLite makes the "
            f"store's -wal and -shm files; give it write access to the directory "
            f"(or run as the user that owns it){_THEN}"
        )
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
            return f"{user} may not read and write {name}; give it access{_THEN}"
    if _wal_cut_short(path):
        return (
            "its -wal file is shorter than its -shm file says: the -wal file was "
            "removed or replaced while a connection had the database open (never "
            "remove them: they hold committed sagas until a checkpoint); close every "
            "store that has it open — closing moves those sagas into the database — "
            "and open it again"
        )
    return None


def _wal_cut_short(path: str) -> bool:
    """Whether the -wal file holds fewer frames than the -shm file's header
    says it does (its ``mxFrame`` and page size, in this machine's byte
    order): the -wal file was removed or replaced under an open database."""
    try:
        with open(path + "-shm", "rb") as shm:
            header = shm.read(24)
        wal = os.stat(path + "-wal").st_size if os.path.exists(path + "-wal") else 0
    except OSError:
        return False
    if len(header) < 24:
        return False
    version, _, _, initialized, _, page, frames, _ = struct.unpack("=IIIBBHII", header)
    if version != _WAL_INDEX_VERSION or not initialized or not frames:
        return False
    page_size = 65536 if page == 1 else page
    return bool(wal < _WAL_HEADER + frames * (_FRAME_HEADER + page_size))


# The -wal/-shm layout (sqlite.org/walformat.html): the wal-index version,
# and the sizes of the -wal file's header and of each frame's header.
_WAL_INDEX_VERSION: Final = 3007000
_WAL_HEADER: Final = 32
_FRAME_HEADER: Final = 24
