"""Forking in tests: a child that runs a function and exits with its code."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Callable

__all__ = ["fork", "in_a_forked_child"]


def fork(body: Callable[[], int]) -> int:
    """Fork: the child runs ``body`` and exits with its code; the parent gets its pid."""
    with warnings.catch_warnings():
        # 3.12+ warns about forking a process with threads (the store's): the
        # child starts threads of its own and needs no lock of the parent's.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def in_a_forked_child(
    body: Callable[[], int],
    *,
    within: float = 20.0,
    before_waiting: Callable[[], object] | None = None,
) -> int:
    """Run ``body`` in a forked child; its exit code. A child still running
    after ``within`` seconds is killed and reported as hung (-1).
    ``before_waiting`` runs in the parent once the child is forked."""
    pid = fork(body)
    if before_waiting is not None:
        before_waiting()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1
