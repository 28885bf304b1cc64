"""A small saga app that the crash-matrix and recovery-race tests run in child processes.

Run as a script (``python tests/crash_app.py COMMAND ...``; ``sys.executable``):

* ``run STORE --ledger LEDGER --variant V --saga-id ID [--crash-at K]`` runs one
  ``CrashSaga`` against the store. Every journal boundary the run
  crosses is counted; at boundary number ``K`` the process writes
  ``CRASH <label>`` to stdout and dies with ``os._exit(137)`` — no ``finally``,
  no flush, no ``close``: what is on disk is all that survives. Without
  ``--crash-at`` (the dry run) it prints ``{"outcome": ..., "boundaries": [...]}``.
  With ``--interrupt-at K [K2]`` the process is sent SIGINT (Ctrl-C) at
  boundary ``K`` instead (and again at ``K2``): ``asyncio.run`` cancels the
  saga's task at the first, raises ``KeyboardInterrupt`` at the second; the
  run prints ``{"outcome": "interrupted", ...}`` and exits 130.
  ``--writer`` picks the SQLite store's writer.
* ``recover STORE --ledger LEDGER [--ids ID ...] [--limit N] [--wait-for-go]``
  is the fresh process: it runs ``recover(store, [CrashSaga], older_than=0)``
  (pass after pass until one finds nothing), then ``saga.resume(id)`` for each
  ``--ids`` (a finished saga returns its stored outcome), and prints the report
  as JSON. With ``--wait-for-go`` it opens the store, prints ``ready`` and waits
  for a line on stdin before recovering — so that two processes start racing
  at the same moment, without sleeping.

* ``serve`` is a fork server for the tests that run many of these: it imports
  everything first (psycopg too, when installed), then reads one JSON job per
  line from stdin — ``{"argv": [...], "env": {...}, "stdout": PATH, "stderr":
  PATH, "timeout": SECONDS}`` — forks a child that runs ``main(argv)`` with its
  output going to those files, waits for it (killing it past the timeout) and
  answers ``{"returncode": N}``. The child is a new process like one started
  from scratch (no store was ever opened and no saga ever ran in the server),
  minus the half second of interpreter start and imports.

``STORE`` is ``--db DB`` (``SQLiteSagaStore(DB)``) or ``--dsn CONNINFO --schema
NAME`` (``PostgresSagaStore(CONNINFO, schema=NAME)``; psycopg is imported only
then). The conninfo may also come from ``$CRASH_APP_DSN`` (``--dsn env``), so
that a password need not be on a command line.

The journal boundaries (``boundary(label)``) are:

* before and after each store write — ``CrashingStore`` (and
  ``crashing_postgres_store``) wraps ``create`` and ``append`` of the store
  (the executor's write-ahead: a step's
  STARTED row, "step N completed + step N+1 started", the status changes);
* inside an ``act``, after its side effect was applied but before it returns
  (the journal still says STARTED); inside a failing ``act`` before it raises
  (the primary of the Fallback, the failing last step);
* inside a ``compensate``, after its side effect but before it returns — a
  crash between two compensations.

Steps talk to a *participant* that keeps a ledger (one JSON line per call,
appended with ``O_APPEND`` and fsynced, so two processes can share it and a
crash loses nothing written). Like a real participant (dtm's barrier) it
applies an operation at most once per ``current_step().idempotency_key`` and
answers a repeated call without applying it again (``kind: "skip"``). The
tests count the ``apply`` lines per key (exactly-once *effects*) and every
line (the calls themselves: a completed act must never be called again).

Variants (chosen through the context, so that a resumed run behaves alike):

* ``ok``       — A, B (the Fallback's primary succeeds), C: COMPLETED;
* ``fallback`` — A, B fails → its fallback B2, C: COMPLETED;
* ``unwind``   — A, B fails → B2, C fails: B2 and A compensated: COMPENSATED;
* ``stuck``    — as ``unwind``, but A's compensation always fails (three
  attempts): FAILED — the one variant *designed* to end FAILED.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from ledger_file import whole_lines

import fallback_saga
from fallback_saga import (
    Fallback,
    JournalEntry,
    Parallel,
    Response,
    Saga,
    SagaContext,
    SagaFailed,
    SagaNotFound,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    current_step,
    recover,
)

APP = Path(__file__).resolve()
CRASH_EXIT = 137
INTERRUPTED_EXIT = 130  # a shell's code for a program stopped by Ctrl-C

VARIANTS: tuple[str, ...] = (
    "ok", "fallback", "unwind", "stuck",
    # GroupCrashSaga: A, Parallel(P, Fallback(Q, Q2)), C.
    "group-ok", "group-fallback", "group-unwind", "group-member-fails",
)

# What each variant must end as, and its final context trail.
EXPECTED_STATUS: dict[str, str] = {
    "ok": "completed",
    "fallback": "completed",
    "unwind": "compensated",
    "stuck": "failed",
    "group-ok": "completed",
    "group-fallback": "completed",
    "group-unwind": "compensated",
    "group-member-fails": "compensated",
}
EXPECTED_TRAIL: dict[str, list[str]] = {
    "ok": ["A", "B", "C"],
    "fallback": ["A", "B2", "C"],
    "unwind": ["A", "B2", "-B2", "-A"],
    # A's compensation fails: its trail mark is appended, but the context is
    # journaled as of the last *completed* transition — B2's compensation.
    "stuck": ["A", "B2", "-B2"],
    "group-ok": ["A", "C"],
    "group-fallback": ["A", "C"],
    "group-unwind": ["A", "-A"],
    "group-member-fails": ["A", "-A"],
}
# The group members' own fields (members of a group write disjoint fields).
EXPECTED_LANES: dict[str, dict[str, list[str]]] = {
    "group-ok": {"p_trail": ["P"], "q_trail": ["Q"]},
    "group-fallback": {"p_trail": ["P"], "q_trail": ["Q2"]},
    "group-unwind": {"p_trail": ["P", "-P"], "q_trail": ["Q2", "-Q2"]},
    # P failed: its write never landed; Q completed meanwhile and was undone.
    "group-member-fails": {"p_trail": [], "q_trail": ["Q", "-Q"]},
}
# The steps whose act completed, in the end (each exactly once).
EXPECTED_ACTS: dict[str, set[str]] = {
    "ok": {"A", "B", "C"},
    "fallback": {"A", "B2", "C"},
    "unwind": {"A", "B2"},
    "stuck": {"A", "B2"},
    "group-ok": {"A", "P", "Q", "C"},
    "group-fallback": {"A", "P", "Q2", "C"},
    "group-unwind": {"A", "P", "Q2"},
    "group-member-fails": {"A", "Q"},
}
# (action, step) -> how many times the participant must have *applied* it, in the end.
EXPECTED_EFFECTS: dict[str, dict[tuple[str, str], int]] = {
    "ok": {("act", "A"): 1, ("act", "B"): 1, ("act", "C"): 1},
    "fallback": {("act", "A"): 1, ("act", "B2"): 1, ("act", "C"): 1},
    "unwind": {
        ("act", "A"): 1, ("act", "B2"): 1, ("compensate", "B2"): 1, ("compensate", "A"): 1,
    },
    "stuck": {("act", "A"): 1, ("act", "B2"): 1, ("compensate", "B2"): 1},
    "group-ok": {("act", "A"): 1, ("act", "P"): 1, ("act", "Q"): 1, ("act", "C"): 1},
    "group-fallback": {("act", "A"): 1, ("act", "P"): 1, ("act", "Q2"): 1, ("act", "C"): 1},
    "group-unwind": {
        ("act", "A"): 1, ("act", "P"): 1, ("act", "Q2"): 1,
        ("compensate", "Q2"): 1, ("compensate", "P"): 1, ("compensate", "A"): 1,
    },
    "group-member-fails": {
        ("act", "A"): 1, ("act", "Q"): 1, ("compensate", "Q"): 1, ("compensate", "A"): 1,
    },
}


# --------------------------------------------------------------------------- boundaries


class _Crash:
    at: int | None = None  # the boundary number to die at; None: a dry run
    # Or the boundary's label: the same crash point on every store, even where
    # a group's members interleave differently with the writes of another store.
    label: str | None = None
    # Or the boundary numbers at which the process gets a SIGINT (Ctrl-C), as
    # a terminal sends it: ``asyncio.run`` cancels its main task at the first
    # and raises KeyboardInterrupt at the second (``--interrupt-at``).
    interrupts: ClassVar[tuple[int, ...]] = ()
    seen: ClassVar[list[str]] = []


def boundary(label: str) -> None:
    """One journal boundary: die here if this is the chosen crash point (or
    be interrupted, if it is an interruption's)."""
    number = len(_Crash.seen)
    _Crash.seen.append(label)
    if _Crash.at == number or _Crash.label == label:
        os.write(1, f"CRASH {label}\n".encode())
        os._exit(CRASH_EXIT)
    if number in _Crash.interrupts:
        os.write(1, f"INTERRUPT {label}\n".encode())
        signal.raise_signal(signal.SIGINT)  # its handler runs before this returns


def _describe(entries: Sequence[JournalEntry], status: Any) -> str:
    rows = ", ".join(f"{e.step} {e.action} {e.status.value}" for e in entries)
    suffix = f"; saga {SagaStatus(status).value}" if status is not None else ""
    return f"[{rows}]{suffix}"


class _Crashing:
    """A crash boundary before and after each write of the store it is mixed into."""

    writes = 0

    async def create(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        label = f"write {self.writes} create {_describe(args[4], kwargs.get('status'))}"
        boundary(f"before {label}")
        await super().create(*args, **kwargs)  # type: ignore[misc]
        boundary(f"after {label}")

    async def append(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        label = f"write {self.writes} append {_describe(args[1], kwargs.get('status'))}"
        boundary(f"before {label}")
        await super().append(*args, **kwargs)  # type: ignore[misc]
        boundary(f"after {label}")


class CrashingStore(_Crashing, SQLiteSagaStore):
    """``SQLiteSagaStore`` with a crash boundary before and after each write."""


def crashing_postgres_store(dsn: str, schema: str) -> Any:
    """``PostgresSagaStore`` with a crash boundary before and after each write
    (built here: psycopg is imported only for a PostgreSQL run)."""
    from fallback_saga.store.postgres import PostgresSagaStore

    class CrashingPostgresStore(_Crashing, PostgresSagaStore):
        pass

    return CrashingPostgresStore(dsn, schema=schema, min_size=1, max_size=4)


def open_store(args: argparse.Namespace, *, crashing: bool) -> Any:
    """The store ``--db`` (with ``--writer``) or ``--dsn``/``--schema`` names."""
    if args.db is not None:
        writer = getattr(args, "writer", "thread")
        return CrashingStore(args.db, writer=writer) if crashing else SQLiteSagaStore(args.db)
    dsn = os.environ["CRASH_APP_DSN"] if args.dsn == "env" else args.dsn
    if crashing:
        return crashing_postgres_store(dsn, args.schema)
    from fallback_saga.store.postgres import PostgresSagaStore

    return PostgresSagaStore(dsn, schema=args.schema, min_size=1, max_size=10)


# --------------------------------------------------------------------------- the participant


class Ledger:
    """The participant's record of every call, one JSON object per line."""

    path: ClassVar[Path | None] = None
    run: ClassVar[str] = "?"  # "crash" (the first process) or "resume"

    @classmethod
    def read(cls, path: Path | None = None) -> list[dict[str, Any]]:
        path = path or cls.path
        assert path is not None
        return whole_lines(path)

    @classmethod
    def write(cls, line: dict[str, Any]) -> None:
        assert cls.path is not None
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        fd = os.open(cls.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)  # one write of one line: whole among writers (O_APPEND)
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def call(cls, action: str, step: str, *, fail: bool = False) -> bool:
        """Record a call; apply it unless its idempotency key was applied before.

        Returns True when this call applied the effect."""
        info = current_step()
        key = info.idempotency_key
        applied = any(e["kind"] == "apply" and e["key"] == key for e in cls.read())
        kind = "fail" if fail else ("skip" if applied else "apply")
        cls.write(
            {
                "kind": kind,
                "action": action,
                "step": step,
                "key": key,
                "saga": info.saga_id,
                "attempt": info.attempt,
                "pid": os.getpid(),
                "run": cls.run,
            }
        )
        return kind == "apply"


# --------------------------------------------------------------------------- the saga


@dataclasses.dataclass
class CrashCtx(SagaContext):
    order_id: str = "order"
    variant: str = "ok"
    trail: list[str] = dataclasses.field(default_factory=list)
    p_trail: list[str] = dataclasses.field(default_factory=list)
    q_trail: list[str] = dataclasses.field(default_factory=list)


class Receipt(Response, frozen=True):
    """What a step returns: journaled with it, so a resumed run's results
    are the crash-free run's (types included: a Decimal, a tuple)."""

    step: str
    amount: Decimal
    codes: tuple[int, ...]


def results_seen(results: Sequence[Any]) -> list[list[str]]:
    """A run's ``result.results`` as JSON can carry it to the test: the reprs
    tell a Decimal from a str and a tuple from a list."""
    return [[r.step_name, repr(r.response)] for r in results]


class _Step(SagaStepHandler[CrashCtx, Receipt]):
    name: ClassVar[str | None] = None

    def act_fails(self, ctx: CrashCtx) -> bool:
        return False

    def compensation_fails(self, ctx: CrashCtx) -> bool:
        return False

    def marks(self, ctx: CrashCtx) -> list[str]:
        """Where the step leaves its trail mark (a group member: a field of its own)."""
        return ctx.trail

    async def act(self, ctx: CrashCtx, /) -> Any:
        assert self.name is not None
        self.marks(ctx).append(self.name)
        if self.act_fails(ctx):
            Ledger.call("act", self.name, fail=True)
            boundary(f"inside act {self.name}: about to fail")
            raise RuntimeError(f"{self.name} declined")
        Ledger.call("act", self.name)
        boundary(f"inside act {self.name}: effect applied, not returned")
        return self._generate_step_result(Receipt(self.name, Decimal("9.99"), (1, 2)))

    async def compensate(self, ctx: CrashCtx, /) -> None:
        assert self.name is not None
        self.marks(ctx).append(f"-{self.name}")
        if self.compensation_fails(ctx):
            Ledger.call("compensate", self.name, fail=True)
            boundary(f"inside compensate {self.name}: about to fail")
            raise RuntimeError(f"compensation of {self.name} failed")
        Ledger.call("compensate", self.name)
        boundary(f"inside compensate {self.name}: effect applied, not returned")


class StepA(_Step):
    name = "A"

    def compensation_fails(self, ctx: CrashCtx) -> bool:
        return ctx.variant == "stuck"


class StepB(_Step):
    name = "B"

    def act_fails(self, ctx: CrashCtx) -> bool:
        return ctx.variant != "ok"


class StepB2(_Step):
    name = "B2"


class StepC(_Step):
    name = "C"

    def act_fails(self, ctx: CrashCtx) -> bool:
        return ctx.variant in ("unwind", "stuck", "group-unwind")


class StepP(_Step):
    name = "P"

    def marks(self, ctx: CrashCtx) -> list[str]:
        return ctx.p_trail

    def act_fails(self, ctx: CrashCtx) -> bool:
        return ctx.variant == "group-member-fails"


class StepQ(_Step):
    name = "Q"

    def marks(self, ctx: CrashCtx) -> list[str]:
        return ctx.q_trail

    def act_fails(self, ctx: CrashCtx) -> bool:
        return ctx.variant in ("group-fallback", "group-unwind")


class StepQ2(StepQ):
    name = "Q2"

    def act_fails(self, ctx: CrashCtx) -> bool:
        return False


class CrashSaga(Saga[CrashCtx]):
    steps: ClassVar[list[Any]] = [StepA, Fallback(step=StepB, fallback=StepB2), StepC]


class GroupCrashSaga(Saga[CrashCtx]):
    """The group variants: their acts answer without awaiting, so the members
    interleave the same way in every run and the boundaries are deterministic."""

    steps: ClassVar[list[Any]] = [
        StepA, Parallel(StepP, Fallback(step=StepQ, fallback=StepQ2)), StepC
    ]


def saga_for(variant_or_id: str, store: Any) -> Saga[CrashCtx]:
    """The saga a variant (or a case's saga id, which starts with it) runs."""
    if variant_or_id.startswith("group-"):
        return GroupCrashSaga(store=store)
    return CrashSaga(store=store)


# --------------------------------------------------------------------------- commands


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args, crashing=True)
    saga = saga_for(args.variant, store)
    ctx = CrashCtx(order_id=args.saga_id, variant=args.variant)
    try:
        result = await saga.run(ctx, saga_id=args.saga_id)
        outcome = result.status.value
        results = results_seen(result.results)
    except SagaFailed as failed:
        outcome = failed.status.value
        results = []
    await store.close()
    return {"outcome": outcome, "boundaries": _Crash.seen, "results": results}


async def _recover(args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(args, crashing=False)
    await store.open()
    sagas = [CrashSaga(store=store), GroupCrashSaga(store=store)]
    if args.wait_for_go:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    report: dict[str, Any] = {"resumed": [], "compensated": [], "failed": [], "skipped": []}
    passes = 0
    while True:
        passes += 1
        found = await recover(store, sagas, older_than=0, limit=args.limit, concurrency=8)
        report["resumed"] += found.resumed
        report["compensated"] += found.compensated
        report["failed"] += found.failed
        report["skipped"] += [list(item) for item in found.skipped]
        if found.total == 0:
            break
    outcomes: dict[str, str] = {}
    results: dict[str, list[list[str]]] = {}
    for saga_id in args.ids:
        try:
            result = await saga_for(saga_id, store).resume(saga_id)
            outcomes[saga_id] = result.status.value
            results[saga_id] = results_seen(result.results)
        except SagaFailed as failed:
            outcomes[saga_id] = failed.status.value
        except SagaNotFound:
            outcomes[saga_id] = "not found"
    await store.close()
    report["passes"] = passes
    report["outcomes"] = outcomes
    report["results"] = results
    report["pid"] = os.getpid()
    return report


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="a SQLite file")
    parser.add_argument("--dsn", default=None,
                        help="a PostgreSQL conninfo, or 'env': $CRASH_APP_DSN")
    parser.add_argument("--schema", default=None, help="the PostgreSQL schema (with --dsn)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_app")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    _store_arguments(run)
    run.add_argument("--ledger", required=True)
    run.add_argument("--variant", choices=VARIANTS, required=True)
    run.add_argument("--saga-id", required=True)
    run.add_argument("--crash-at", type=int, default=None)
    run.add_argument("--crash-label", default=None)
    run.add_argument("--interrupt-at", type=int, nargs="*", default=[],
                     help="boundary numbers at which to send the process SIGINT")
    run.add_argument("--writer", choices=("thread", "inline", "process"), default="thread")
    rec = commands.add_parser("recover")
    _store_arguments(rec)
    rec.add_argument("--ledger", required=True)
    rec.add_argument("--ids", nargs="*", default=[])
    rec.add_argument("--limit", type=int, default=100)
    rec.add_argument("--wait-for-go", action="store_true")
    args = parser.parse_args(argv)
    if (args.db is None) == (args.dsn is None) or (args.dsn is not None) != (
        args.schema is not None
    ):
        parser.error("give either --db, or --dsn and --schema")

    fallback_saga.set_testing(True)  # compensation retries compute their delays, never sleep
    Ledger.path = Path(args.ledger)
    if args.command == "run":
        Ledger.run = "crash"
        _Crash.at = args.crash_at
        _Crash.label = args.crash_label
        _Crash.interrupts = tuple(args.interrupt_at)
        try:
            output = asyncio.run(_run(args))
        except KeyboardInterrupt:  # what Ctrl-C makes of asyncio.run
            print(json.dumps({"outcome": "interrupted", "boundaries": _Crash.seen}), flush=True)
            return INTERRUPTED_EXIT
    else:
        Ledger.run = "resume"
        output = asyncio.run(_recover(args))
    print(json.dumps(output), flush=True)
    return 0


# --------------------------------------------------------------------------- fork server


def serve(run: Callable[[list[str]], int] | None = None) -> int:
    """Run jobs from stdin in forked children (see the module docstring),
    each with ``run`` (this app's ``main`` unless given: another app's)."""
    with contextlib.suppress(ImportError):  # preload: each child skips these imports
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401

        import fallback_saga.store.postgres  # noqa: F401
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _forked(job, run or main)  # never returns
        code = _wait(pid, float(job.get("timeout", 60.0)))
        sys.stdout.write(json.dumps({"returncode": code}) + "\n")
        sys.stdout.flush()
    return 0


def _forked(job: dict[str, Any], run: Callable[[list[str]], int]) -> None:
    code = 1
    try:
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.update(job.get("env") or {})
        code = run(job["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    """The child's exit code (negative: killed by that signal); killed past ``timeout``."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        try:
            done, _, _ = select.select([handle], [], [], timeout)
        finally:
            os.close(handle)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        sys.exit(serve())
    sys.exit(main())
