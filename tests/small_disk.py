"""A disk that really fills up, for the full-disk tests: a small tmpfs
mounted for one test (real ``ENOSPC``, which SQLite reports as SQLITE_FULL),
and a ballast file that takes all of its room but what a test leaves."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted at ``where/disk`` until the
    block ends; the test is skipped, with the reason, where mounting is not
    allowed (it needs root: as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk tests mount a tmpfs and need root (run as root, or in CI)")
    mountpoint = where / "disk"
    mountpoint.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs for the full-disk tests: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk tests: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with a ballast file, then give back ``leave`` bytes."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in (b"\xa5" * 65536, b"\xa5" * 4096, b"\xa5"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return ballast
