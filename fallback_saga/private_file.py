"""Database files the library creates are readable by their owner only.

A saga journal holds every saga's context (card data, addresses, tokens) and a
circuit state file names the services a process calls. SQLite creates a
missing database file with mode 0644 less the umask -- world-readable on most
systems -- and its -wal and -shm files with the database file's mode. So the
file is created here first, with mode 0600, and SQLite opens it; its -wal and
-shm follow. A file that exists is left as it is: its owner chose its mode
(an operators' group that may read it, say).
"""

from __future__ import annotations

import os

__all__ = ["create_private_file", "database_path"]


def create_private_file(path: str) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (SQLite
    takes an empty file for a new database). Any failure is left to the
    open that follows, which reports it as it always has."""
    if path in ("", ":memory:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError:  # it exists (another process may have just made it), or cannot be made
        return
    os.close(fd)


def database_path(path: object, owner: str) -> str:
    """``path`` given to ``owner`` (a store's class name) as a str: a str, a
    path-like (a ``pathlib.Path``) or bytes, decoded. Anything else is refused
    naming the argument, where ``os.fsdecode`` would say only "expected str,
    bytes or os.PathLike object, not int"."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{owner} takes the path of its database file (a str or a pathlib.Path), "
            f"got {path!r}"
        )
    return os.fsdecode(path)
