"""Another process holding a SQLite file's write lock: an operator's
``sqlite3`` shell in ``BEGIN IMMEDIATE``, until the test lets it go (the fixtures
``sqlite3_shell`` and ``locks``: ``conftest.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path


class HeldLock:
    """An operator's ``sqlite3`` shell, in a process of its own, holding the
    file's write lock (``BEGIN IMMEDIATE``) until ``release``."""

    def __init__(self, shell: str, db: Path) -> None:
        self.process = subprocess.Popen(
            [shell, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("BEGIN IMMEDIATE;\nSELECT 'held';\n")
        self.process.stdin.flush()
        # Printed once BEGIN IMMEDIATE returned: the lock is held from here on.
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("ROLLBACK;\n.quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()  # freed open, it warns "unclosed file"
