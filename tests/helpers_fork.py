"""Forking in tests: a child that runs a function and exits with its code,
a fork server (an app's ``serve`` command) that runs each job in a child
forked from one process that imported everything once, and the check a
child makes of a store forked away from it (``refused_at_once``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers_ledger import Ctx, ledger_saga

from fallback_saga import RetryPolicy, SagaInterrupted, StoreClosed

__all__ = ["ForkServer", "fork", "in_a_forked_child", "refused_at_once"]


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


def refused_at_once(store: Any, saga_id: str = "in-child", *, saying: str = "") -> int:
    """Run a saga on ``store``, whose every call is refused for good (a
    store forked away, or whose pool went with its loop): 0 if it stops at
    its creation with ``StoreClosed`` (not in doubt; its text ``saying``
    so), its journal never asked to retry — counted, not timed:
    ``retry_on`` is asked about every failed try the journal would retry —
    and a read (of the saga ``"before"``) refused so too. Else the code of
    what went wrong. Runs its own loop: a forked child's body, or a test's."""

    async def refused() -> int:
        asked: list[BaseException] = []

        def retried(error: BaseException) -> bool:
            asked.append(error)
            return True

        retry = RetryPolicy(attempts=6, delay=0, jitter=0, retry_on=retried)
        saga = ledger_saga([])(store=store, journal_retry=retry)
        try:
            await saga.run(Ctx(order_id="r"), saga_id=saga_id)
        except SagaInterrupted as stopped:
            if asked:
                return 2  # retried
            if not isinstance(stopped.error, StoreClosed) or stopped.in_doubt:
                return 3
            if saying not in str(stopped.error):
                return 4
        else:
            return 5
        try:
            await store.load("before")
        except StoreClosed:
            return 0
        return 6

    return asyncio.run(refused())


class ForkServer:
    """One ``<app> serve`` process (``crash_app.serve``): each child it runs is
    forked from a Python that has imported the app already, so a case costs
    its own work, not two interpreter starts. A child is a new process all the
    same: the server never opened a store nor ran a saga."""

    def __init__(
        self, app: Path, scratch: Path, *, timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.scratch = scratch
        self.timeout = timeout
        self.jobs = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(app), "serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=None if env is None else dict(env),
        )

    def child(
        self, *args: Any, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<app> *args`` in a forked child (``env`` added to its
        environment); its exit code and output."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.jobs += 1
        out = self.scratch / f"{self.proc.pid}-{self.jobs}.out"
        err = out.with_suffix(".err")
        argv = [str(arg) for arg in args]
        job = {"argv": argv, "env": dict(env or {}), "stdout": str(out), "stderr": str(err),
               "timeout": self.timeout}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server died ({self.proc.wait()})")
        code = json.loads(answer)["returncode"]
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
