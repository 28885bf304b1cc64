"""A seeded chaos soak of the durable path: several OS processes run sagas and
``RecoveryWorker``\\ s against ONE store while a driver injects real faults.

Run offline (``python tests/chaos_soak.py soak --store sqlite --writer thread
--seeds 7 --sagas 200 --faults 30``; ``--seeds 7-12`` runs seeds 7 to 12) or
through ``tests/test_chaos_soak.py`` (bounded seeds). The pieces:

* **the saga** (``ChaosSaga``): ``A, B, Fallback(C, CBackup), D``; its kind
  comes from the saga id (``kind_of``): ``ok`` (completes), ``fb`` (C fails,
  CBackup runs: completes), ``unwind`` (C and CBackup fail: B and A are
  compensated), ``late`` (D fails: C, B, A compensated), ``flaky`` (D
  fails, and B's compensate fails once, then succeeds on its retry),
  ``park`` (D fails and A's compensate always fails: FAILED, parked for an
  operator). Every act appends its token (a
  fresh random string per call, also its response) to ``ctx.tokens`` and
  records in the ledger the tokens it saw (S14: a resumed run sees the
  context the first run journaled).
* **the participant** is a ledger file (JSON lines, ``O_APPEND``): ``enter``
  when a call starts, ``apply`` when its effect is applied, ``outcome`` when
  a run or the worker reports a saga's end. Each line names the process
  (``pid``), the run (``runner``: pid + a serial per asyncio task) and the
  idempotency key the library handed the call.
* **a child** (``child CONFIG``) opens the store, starts a ``RecoveryWorker``
  (short lease, ``older_than`` small) and runs the saga ids it was given
  (``saga.run``, a few at a time; an id that exists already is skipped: a
  replacement child gets the list of the child it replaces).
* **the driver** (``soak``) starts the children, then after a seeded random
  amount of ledger progress injects a seeded random fault: SIGKILL of a child
  (a replacement starts), SIGSTOP of a child until another process has taken
  over a saga it was running (or a bound), PostgreSQL backend termination, a
  PostgreSQL restart, and for SQLite a full disk (the database lives on a
  small tmpfs that a filler file fills up: real ENOSPC). Then it stops the
  chaos, lets fresh workers drain everything, and checks the invariants
  (``check``) with the journal read through a freshly opened store.

Timing varies from run to run; the checks do not depend on it. The driver
waits on observable conditions (ledger lines, rows) with bounds, never on a
fixed sleep as synchronization.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import errno
import faulthandler
import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve()
# The children are started as scripts: the package beside the tests (this
# checkout's, not an installed one) and the test helpers come first.
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from ledger_file import whole_lines  # noqa: E402

from fallback_saga import (  # noqa: E402
    Fallback,
    LeaseLost,
    RecoveryWorker,
    RetryPolicy,
    Saga,
    SagaAlreadyExists,
    SagaContext,
    SagaFailed,
    SagaInterrupted,
    SagaStepHandler,
    current_step,
)
from fallback_saga.step import _CURSOR  # noqa: E402 (a run's identity, for the checks)

KINDS = ("ok", "fb", "unwind", "late", "flaky", "park")
TERMINAL = {"completed", "compensated", "failed"}


def kind_of(saga_id: str) -> str:
    digest = hashlib.sha256(saga_id.encode()).digest()
    return KINDS[digest[0] % len(KINDS)]


# --------------------------------------------------------------------------- the saga (child side)


@dataclasses.dataclass
class Ctx(SagaContext):
    kind: str = "ok"
    tokens: list[str] = dataclasses.field(default_factory=list)


# One name per saga run: the executor keeps one cursor object per run (in a
# context variable); holding each cursor keeps its id from being reused.
_RUNNERS: dict[int, tuple[object, str]] = {}


def _runner() -> str:
    cursor = _CURSOR.get()
    entry = _RUNNERS.get(id(cursor))
    if entry is None:
        entry = _RUNNERS[id(cursor)] = (cursor, f"{os.getpid()}:{uuid.uuid4().hex[:6]}")
    return entry[1]


class Ledger:
    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self.owner = owner

    def write(self, **fields: Any) -> None:
        line = json.dumps({"owner": self.owner, "pid": os.getpid(), **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def call(self, event: str, **fields: Any) -> None:
        info = current_step()
        self.write(event=event, saga=info.saga_id, step=info.step, action=info.action,
                   key=info.idempotency_key, attempt=info.attempt, runner=_runner(),
                   live=_LIVE.get(), **fields)


# True in a run this process started (fencing token 0), False in one its worker resumed.
_LIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("chaos_live", default=False)


def record_claims(store: Any, ledger: Ledger) -> None:
    """Each lease the store grants this process is written to the ledger
    (its fencing token) before the worker resumes the saga."""
    claim = store.claim

    @functools.wraps(claim)
    async def recording_claim(*args: Any, **kwargs: Any) -> Any:
        leases = await claim(*args, **kwargs)
        for lease in leases:
            ledger.write(event="claim", saga=lease.saga_id, token=lease.token)
        return leases

    store.claim = recording_claim


class Failing(Exception):
    """A business failure of a step (the saga's kind says which)."""


class _Step(SagaStepHandler[Ctx, str]):
    name: ClassVar[str] = ""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def fails(self, ctx: Ctx) -> bool:
        return False

    def compensate_fails(self, ctx: Ctx, attempt: int) -> bool:
        return False

    async def act(self, ctx: Ctx, /) -> Any:
        self.ledger.call("enter", seen=list(ctx.tokens))
        await asyncio.sleep(random.random() * 0.02)  # work: a chance to be cut mid-step
        if self.fails(ctx):
            self.ledger.call("raise")
            raise Failing(f"{self.name} fails for kind {ctx.kind}")
        token = uuid.uuid4().hex[:10]
        ctx.tokens.append(token)
        self.ledger.call("apply", token=token)
        return token

    async def compensate(self, ctx: Ctx, /) -> None:
        info = current_step()
        self.ledger.call("enter", seen=list(ctx.tokens))
        await asyncio.sleep(random.random() * 0.02)
        if self.compensate_fails(ctx, info.attempt):
            self.ledger.call("raise")
            raise Failing(f"compensate {self.name} fails for kind {ctx.kind}")
        self.ledger.call("apply")


class A(_Step):
    name = "A"

    def compensate_fails(self, ctx: Ctx, attempt: int) -> bool:
        return ctx.kind == "park"


class B(_Step):
    name = "B"

    def compensate_fails(self, ctx: Ctx, attempt: int) -> bool:
        return ctx.kind == "flaky" and attempt == 1


class C(_Step):
    name = "C"

    def fails(self, ctx: Ctx) -> bool:
        return ctx.kind in ("fb", "unwind")


class CBackup(_Step):
    name = "CBackup"

    def fails(self, ctx: Ctx) -> bool:
        return ctx.kind == "unwind"


class D(_Step):
    name = "D"

    def fails(self, ctx: Ctx) -> bool:
        return ctx.kind in ("late", "flaky", "park")


class ChaosSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [A, B, Fallback(C, CBackup), D]


COMPENSATION_RETRY = RetryPolicy(attempts=3, delay=0.01, backoff=2.0, max_delay=0.05)


class OutcomeListener:
    """Writes what the worker reports about each claimed saga."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def recovery_outcome(self, saga_id: str, saga_name: str | None, outcome: str,
                         reason: str | None) -> None:
        self.ledger.write(event="outcome", saga=saga_id, outcome=outcome, by="worker",
                          reason=(reason or "")[:200])


def open_store(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "sqlite":
        from fallback_saga import SQLiteSagaStore

        return SQLiteSagaStore(spec["path"], writer=spec.get("writer", "thread"))
    from fallback_saga.store.postgres import PostgresSagaStore

    return PostgresSagaStore(spec["conninfo"], schema=spec["schema"], min_size=1, max_size=6)


async def _open(spec: dict[str, Any]) -> Any:
    """Open the store, trying again while it is unavailable (a restarting
    server, a full disk) — a service would, too."""
    deadline = time.monotonic() + 60
    while True:
        store = open_store(spec)
        try:
            await store.open()
            return store
        except Exception:
            with contextlib.suppress(Exception):
                await store.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # a retry's backoff, not synchronization


async def _run_one(saga: ChaosSaga, ledger: Ledger, saga_id: str) -> None:
    _LIVE.set(True)
    try:
        result = await saga.run(Ctx(kind=kind_of(saga_id)), saga_id=saga_id)
    except SagaAlreadyExists:
        return
    except SagaFailed as failed:
        ledger.write(event="outcome", saga=saga_id, outcome=failed.status.value, by="run")
    except SagaInterrupted as interrupted:
        ledger.write(event="outcome", saga=saga_id, outcome="interrupted", by="run",
                     status=None if interrupted.status is None else interrupted.status.value)
    except LeaseLost:
        ledger.write(event="outcome", saga=saga_id, outcome="lost", by="run")
    except Exception as error:  # anything else reaching a caller is a finding
        ledger.write(event="outcome", saga=saga_id, outcome="error", by="run",
                     error=repr(error)[:300])
    else:
        ledger.write(event="outcome", saga=saga_id, outcome=result.status.value, by="run",
                     results=[r.response for r in result.results],
                     tokens=list(result.context.tokens))


async def _child(config: dict[str, Any]) -> None:
    ledger = Ledger(Path(config["ledger"]), config["owner"])
    store = await _open(config["store"])
    record_claims(store, ledger)
    saga = ChaosSaga(store=store, step_factory=lambda cls: cls(ledger),
                     compensation_retry=COMPENSATION_RETRY)
    worker = RecoveryWorker(store, [saga], concurrency=config["concurrency"],
                            lease=config["lease"], poll=config["poll"],
                            older_than=config["older_than"], owner=config["owner"],
                            listeners=[OutcomeListener(ledger)])
    loop = asyncio.get_running_loop()
    # Diagnostics for a child that does not stop: SIGUSR1 dumps the threads,
    # SIGUSR2 the asyncio tasks (to stderr, kept in the child's .err file).
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    def dump_tasks() -> None:
        for task in asyncio.all_tasks():
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    worker_task = asyncio.create_task(worker.run())
    gate = asyncio.Semaphore(config["concurrency"])

    stop_line = loop.run_in_executor(None, sys.stdin.readline)

    async def run_one(saga_id: str) -> None:
        async with gate:
            if not stop_line.done():  # told to stop: start no more sagas
                await _run_one(saga, ledger, saga_id)

    runs = asyncio.gather(*(run_one(saga_id) for saga_id in config["ids"]))
    print("ready", flush=True)
    await runs
    ledger.write(event="started_all", ids=len(config["ids"]))
    await stop_line
    await worker.stop(grace=None)
    try:
        await worker_task
    except Exception as error:
        ledger.write(event="worker_error", error=repr(error)[:300])
        raise
    await store.close()
    print(json.dumps({"owner": config["owner"], "stats": dataclasses.asdict(worker.stats)}),
          flush=True)


# --------------------------------------------------------------------------- the checks


def check(records: dict[str, Any], lines: list[dict[str, Any]],
          created_ids: set[str] | None = None) -> list[str]:
    """The invariants, as a list of violations (empty: all hold).

    ``records``: saga id -> ``SagaRecord`` of every saga in the store (read
    after the drain); ``lines``: the ledger.
    """
    problems: list[str] = []
    by_saga: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        if "saga" in line:
            by_saga[line["saga"]].append(line)
    for saga_id in by_saga:
        calls = [line for line in by_saga[saga_id] if line["event"] in ("enter", "apply")]
        if calls and saga_id not in records:
            problems.append(f"{saga_id}: calls in the ledger but no saga in the journal")

    for saga_id, record in records.items():
        problems += [f"{saga_id}: {p}" for p in check_saga(record, by_saga.get(saga_id, []))]
    return problems


STEP_ORDER = {"A": 0, "B": 1, "C": 2, "CBackup": 2, "D": 3}


def check_saga(record: Any, lines: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    status = record.status.value
    kind = kind_of(record.saga_id)
    history = record.history
    calls = [line for line in lines if line["event"] in ("enter", "apply", "raise")]
    fencing, late_calls, _ = fenced_out_calls(lines)

    # 1. terminal, with the status its kind says.
    expected = {"ok": "completed", "fb": "completed", "unwind": "compensated",
                "late": "compensated", "flaky": "compensated", "park": "failed"}[kind]
    if status not in TERMINAL:
        problems.append(f"not terminal after the drain: {status}")
    elif status != expected:
        problems.append(f"kind {kind} ended {status}, expected {expected}")

    # 2. S13: every call the participant saw has its STARTED row in the journal.
    started = {(e.step, e.action) for e in history if e.status.value == "started"}
    for line in calls:
        if line["event"] == "enter" and (line["step"], line["action"]) not in started:
            problems.append(f"{line['action']} {line['step']} ran with no STARTED row (S13)")
    if any(line["action"] == "compensate" for line in calls) and not any(
        e.action == "compensate" for e in history
    ):
        problems.append("a compensate ran, but the journal never says COMPENSATING (S13)")

    applied_acts = {line["step"] for line in calls
                    if line["action"] == "act" and line["event"] == "apply"}
    applied_comps = [line["step"] for line in calls
                     if line["action"] == "compensate" and line["event"] == "apply"]
    completed_acts = {e.step: e for e in history
                      if e.action == "act" and e.status.value == "completed"}
    completed_comps = {e.step for e in history
                       if e.action == "compensate" and e.status.value == "completed"}

    # 3. the journal never states what the ledger contradicts.
    for step, entry in completed_acts.items():
        if step not in applied_acts:
            problems.append(f"journal: act {step} completed, but it had no effect")
        tokens = {line["token"] for line in calls if line["step"] == step
                  and line["action"] == "act" and line["event"] == "apply"}
        if entry.result is not None and not any(token in entry.result for token in tokens):
            problems.append(f"journal: act {step}'s result {entry.result} is no call's (S14)")
    for step in completed_comps:
        if step not in applied_comps:
            problems.append(f"journal: compensate {step} completed, but it had no effect")

    # 4. outcomes reported equal the journal.
    for line in lines:
        if line["event"] == "outcome" and line["outcome"] in TERMINAL \
                and line["outcome"] != status:
            problems.append(f"{line['by']} was told {line['outcome']}, the journal says {status}")
        if line["event"] == "outcome" and line["outcome"] == "error":
            problems.append(f"a run raised an undocumented error: {line.get('error')}")

    # 5. COMPLETED: every step's act had an effect, nothing compensated.
    if status == "completed":
        branch_c = "CBackup" if kind == "fb" else "C"
        for step in ("A", "B", branch_c, "D"):
            if step not in applied_acts:
                problems.append(f"completed, but act {step} never had an effect")
        if applied_comps:
            problems.append(f"completed, but compensated {applied_comps}")
        final = [line for line in lines if line["event"] == "outcome"
                 and line["outcome"] == "completed" and "results" in line]
        for line in final:  # S14: what the finishing run returned is the journal's
            journaled = [completed_acts[s].result for s in ("A", "B", branch_c, "D")
                         if s in completed_acts]
            if len(journaled) != 4 or not all(
                r is not None and tok in r
                for tok, r in zip(line["results"], journaled, strict=False)
            ):
                problems.append(f"run returned {line['results']}, journal has {journaled} (S14)")

    # 6. COMPENSATED / FAILED: every act that may have had an effect was compensated,
    #    in reverse order; no act entered after compensation started.
    if status in ("compensated", "failed"):
        for step in applied_acts:
            if step not in applied_comps and not (status == "failed" and step == "A"):
                problems.append(f"{status}: act {step} had an effect, never compensated")
        first_seen: dict[str, int] = {}
        for index, step in enumerate(applied_comps):
            first_seen.setdefault(step, index)
        order = sorted(first_seen, key=first_seen.__getitem__)
        if order != sorted(order, key=lambda s: -STEP_ORDER[s]):
            problems.append(f"compensated out of reverse order: {order}")
        first_comp = next((i for i, line in enumerate(calls)
                           if line["action"] == "compensate"), None)
        if first_comp is not None:
            for index, line in enumerate(calls):
                if index > first_comp and id(line) not in late_calls and \
                        line["action"] == "act" and line["event"] == "enter":
                    problems.append(f"act {line['step']} entered after compensation began"
                                    f" (runner {line['runner']})")

    # 7. leases + fencing (see fenced_out_calls).
    problems += fencing

    # 8. S14: each act saw the tokens the journal holds for the steps before it.
    journaled_tokens = {s: e.result for s, e in completed_acts.items()}
    for line in calls:
        if line["event"] != "enter" or line["action"] != "act":
            continue
        before = [s for s in ("A", "B", "C", "CBackup") if STEP_ORDER[s] < STEP_ORDER[line["step"]]
                  and s in journaled_tokens]
        if len(line["seen"]) != len(before):
            continue  # an earlier attempt (before a step it now sees completed)
        for token, step in zip(line["seen"], before, strict=True):
            result = journaled_tokens[step]
            if result is not None and token not in result:
                problems.append(f"act {line['step']} saw {token} for {step}, the journal "
                                f"has {result} (S14)")
    return problems


def fenced_out_calls(lines: list[dict[str, Any]]
                     ) -> tuple[list[str], set[int], list[int]]:
    """Leases + fencing, from the participant's side. Each run has a fencing
    token: 0 for the run that started the saga, the claim's token for a
    run a worker resumed (the ``claim`` line its process wrote before the
    run began). Once a run with a newer token has made a call, an older run
    may finish only the one call it had in flight — the call whose STARTED
    row it made durable before it was taken over (the journal cannot stop a
    call already past its write; its key is the newer run's too, so a
    participant can drop it). It may repeat that call (its retries), never
    start another.

    ``lines``: one saga's ledger lines. Returns the violations, the id() of
    each late call's ``enter`` line, and those of the ``apply``/``raise``
    lines of runs already taken over (a call in flight ending late)."""
    problems: list[str] = []
    late: set[int] = set()
    late_ends: list[int] = []  # apply/raise lines of runs already taken over
    last_claim: dict[str, int] = {}  # owner -> the token of its last claim of this saga
    token_of: dict[str, int] = {}  # runner -> its token
    newest = -1
    late_key: dict[str, str] = {}  # older run -> the one call it may still make
    for line in lines:
        if line["event"] == "claim":
            last_claim[line["owner"]] = line["token"]
            continue
        if line["event"] not in ("enter", "apply", "raise"):
            continue
        runner = line["runner"]
        if runner not in token_of:
            token_of[runner] = 0 if line.get("live") else last_claim.get(line["owner"], 0)
        token = token_of[runner]
        if line["event"] != "enter":
            if token < newest:
                late_ends.append(id(line))
            continue
        if token >= newest:
            newest = token
            continue
        late.add(id(line))
        allowed = late_key.setdefault(runner, line["key"])
        if line["key"] != allowed:
            problems.append(
                f"run {runner} (token {token}) started {line['action']} {line['step']} after"
                f" a run with token {newest} had taken the saga over (fencing; its call in"
                f" flight was {allowed})")
    return problems, late, late_ends


# --------------------------------------------------------------------------- the driver


@dataclasses.dataclass
class Settings:
    store: str = "sqlite"  # or "postgres"
    writer: str = "thread"
    seed: int = 1
    sagas: int = 120
    children: int = 3
    faults: int = 12
    lease: float = 1.0
    older_than: float = 0.6
    poll: float = 0.05
    concurrency: int = 4
    drain_timeout: float = 90.0
    minutes: float | None = None  # the chaos's bound in time (besides ``faults``)
    fault_kinds: tuple[str, ...] = ()
    verbose: bool = False


class Child:
    def __init__(self, proc: subprocess.Popen[str], owner: str, slot: int) -> None:
        self.proc = proc
        self.owner = owner
        self.slot = slot
        self.paused = False


class Soak:
    def __init__(self, settings: Settings, workdir: Path, store_spec: dict[str, Any],
                 pg: Any = None, disk: Path | None = None) -> None:
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.workdir = workdir
        self.ledger = workdir / "ledger.jsonl"
        self.store_spec = store_spec
        self.pg = pg
        self.disk = disk  # the tmpfs the SQLite file lives on (full-disk faults)
        self.children: list[Child] = []
        self.serial = 0
        self.faults: dict[str, int] = defaultdict(int)
        self.notes: list[str] = []
        self._lines: list[dict[str, Any]] = []
        self._offset = 0
        ids = [f"s{settings.seed}-{n:04d}" for n in range(settings.sagas)]
        self.slots = [ids[i::settings.children] for i in range(settings.children)]

    def log(self, message: str) -> None:
        if self.s.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def lines(self) -> list[dict[str, Any]]:
        """The ledger's whole lines so far (read on from where the last read
        stopped: the ledger grows to tens of thousands of lines)."""
        if not self.ledger.exists():
            return self._lines
        with open(self.ledger, "rb") as file:
            file.seek(self._offset)
            data = file.read()
        end = data.rfind(b"\n") + 1  # a line being written is left for later
        self._offset += end
        self._lines += [json.loads(line) for line in data[:end].split(b"\n") if line]
        return self._lines

    def start(self, slot: int, ids: list[str] | None = None, older_than: float | None = None
              ) -> Child:
        self.serial += 1
        owner = f"c{self.serial}"
        config = {"store": self.store_spec, "ledger": str(self.ledger), "owner": owner,
                  "ids": self.slots[slot] if ids is None else ids,
                  "concurrency": self.s.concurrency, "lease": self.s.lease,
                  "poll": self.s.poll,
                  "older_than": self.s.older_than if older_than is None else older_than}
        err = open(self.workdir / f"{owner}.err", "w")  # noqa: SIM115 (the child's)
        proc = subprocess.Popen([sys.executable, str(HERE), "child", json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        err.close()
        child = Child(proc, owner, slot)
        self.children.append(child)
        return child

    def live(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def wait_for(self, condition: Callable[[], bool], within: float,
                 every: float = 0.02) -> bool:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(every)  # polling an observable condition
        return True

    def wait_progress(self, count: int, within: float) -> bool:
        start = len(self.lines())
        return self.wait_for(lambda: len(self.lines()) >= start + count, within)

    # -- faults

    def fault_kinds(self) -> list[str]:
        if self.s.fault_kinds:
            return list(self.s.fault_kinds)
        kinds = ["kill", "kill", "pause"]
        if self.pg is not None:
            kinds += ["terminate", "restart", "stop_backend"]
        if self.disk is not None:
            kinds += ["disk_full"]
        if self.store_spec.get("writer") == "process":
            kinds += ["kill_writer", "stop_writer"]
        return kinds

    @staticmethod
    def subprocesses(pid: int) -> list[int]:
        """The processes ``pid`` started (a writer="process" store's writer)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
        return found

    def writer_of_some_child(self) -> tuple[Child, int] | None:
        candidates = [(c, w) for c in self.live() if not c.paused
                      for w in self.subprocesses(c.proc.pid)]
        return self.rng.choice(candidates) if candidates else None

    def inject(self, kind: str) -> None:
        self.faults[kind] += 1
        self.log(f"fault {kind}")
        if kind == "kill":
            victims = [c for c in self.live() if not c.paused]
            if not victims:
                return
            victim = self.rng.choice(victims)
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            self.start(victim.slot)
        elif kind == "pause":
            victims = [c for c in self.live() if not c.paused]
            if not victims:
                return
            victim = self.rng.choice(victims)
            self.pause(victim)
        elif kind == "terminate":
            self.pg_terminate()
        elif kind == "stop_backend":
            self.stop_backend()
        elif kind == "restart":
            self.pg.restart()
        elif kind == "disk_full":
            self.fill_disk()
        elif kind in ("kill_writer", "stop_writer"):
            found = self.writer_of_some_child()
            if found is None:
                return
            child, writer = found
            if kind == "kill_writer":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(writer, signal.SIGKILL)
                return
            # Stopped past the lease: the child's runs wait on their writes
            # while other processes take their sagas over; then the writer
            # goes on with the writes queued before the takeover.
            with contextlib.suppress(ProcessLookupError):
                os.kill(writer, signal.SIGSTOP)
            start = len(self.lines())
            self.wait_for(lambda: any(line["event"] == "claim" and line["owner"] != child.owner
                                      for line in self.lines()[start:]),
                          self.s.lease + self.s.older_than + 4)
            self.wait_progress(self.rng.randint(0, 20), 2)
            with contextlib.suppress(ProcessLookupError):
                os.kill(writer, signal.SIGCONT)

    def pause(self, victim: Child) -> None:
        """SIGSTOP until a saga the victim was driving is taken over by
        another run (its lease or ``older_than`` expired), or a bound."""
        lines = self.lines()
        mine = {line["saga"] for line in lines[-400:]
                if line.get("owner") == victim.owner and line["event"] in ("enter", "apply")}
        finished = {line["saga"] for line in lines if line["event"] == "outcome"
                    and line["outcome"] in TERMINAL}
        mine -= finished
        os.kill(victim.proc.pid, signal.SIGSTOP)
        victim.paused = True
        start = len(lines)

        def taken_over() -> bool:
            return any(line.get("saga") in mine and line.get("owner") != victim.owner
                       and line["event"] == "enter" for line in self.lines()[start:])

        bound = self.s.lease + self.s.older_than + 4
        if mine and self.wait_for(taken_over, bound):
            self.faults["pause_takeover"] += 1
            self.wait_progress(self.rng.randint(0, 10), 2)
        elif not mine:
            self.wait_progress(self.rng.randint(5, 20), bound)
        os.kill(victim.proc.pid, signal.SIGCONT)
        victim.paused = False

    def pg_terminate(self) -> None:
        import psycopg

        with psycopg.connect(self.pg.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")

    def stop_backend(self) -> None:
        """SIGSTOP one server process serving a child (a statement, maybe a
        COMMIT, held inside the server) until another process has claimed a
        saga, or a bound; then SIGCONT: what it was doing goes on late."""
        import psycopg

        with psycopg.connect(self.pg.conninfo, autocommit=True) as conn:
            pids = [row[0] for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " ORDER BY pid")]
        if not pids:
            return
        backend = self.rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(backend, signal.SIGSTOP)
        try:
            start = len(self.lines())
            self.wait_for(lambda: any(line["event"] == "claim"
                                      for line in self.lines()[start:]),
                          self.s.lease + self.s.older_than + 4)
            self.wait_progress(self.rng.randint(0, 20), 2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(backend, signal.SIGCONT)

    def fill_disk(self) -> None:
        assert self.disk is not None
        filler = self.disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            block = b"\0" * 65536
            while True:
                try:
                    os.write(fd, block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]
        finally:
            os.close(fd)
        # Full until a run has been interrupted by it (or a bound), then freed.
        start = len(self.lines())
        self.wait_for(lambda: any(line["event"] == "outcome" and line["outcome"] in
                                  ("interrupted",) for line in self.lines()[start:]), 4)
        filler.unlink()

    # -- the soak

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        for slot in range(self.s.children):
            self.start(slot)
        kinds = self.fault_kinds()
        injected = 0
        while injected < self.s.faults and (
            self.s.minutes is None or time.monotonic() - began < self.s.minutes * 60
        ) and not self.work_exhausted():
            self.wait_progress(self.rng.randint(5, 60), 5)
            self.inject(self.rng.choice(kinds))
            injected += 1
        chaos_seconds = time.monotonic() - began
        for child in self.live():  # start no more sagas
            self.tell(child, "stop")
        # The chaos stops: every child goes on, and the ids every slot has must be started.
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGCONT)
        for child in self.live():
            self.wait_for(lambda c=child: c.proc.poll() is not None or any(  # type: ignore[misc]
                line["event"] == "started_all" and line["owner"] == c.owner
                for line in self.lines()), 60)
        reports = []
        for child in self.live():
            reports.append(self.finish(child))
        # Drain: fresh workers with older_than=0 finish whatever is left.
        drainers = [self.start(0, ids=[], older_than=0) for _ in range(2)]
        drained = self.wait_for(self.all_terminal, self.s.drain_timeout, every=0.25)
        for child in drainers:
            reports.append(self.finish(child))
        wal = Path(str(self.store_spec.get("path", "")) + "-wal")
        sqlite = self.store_spec["kind"] == "sqlite"
        wal_bytes = wal.stat().st_size if sqlite and wal.exists() else 0
        records = asyncio.run(self.read_records())
        lines = whole_lines(self.ledger)  # read afresh for the checks
        problems = check(records, lines)
        if not drained:
            problems.append("the drain did not finish within its bound")
        for report in reports:
            if report.get("error"):
                problems.append(f"child {report['owner']}: {report['error']}")
        errors = [line for line in lines if line["event"] == "worker_error"]
        problems += [f"worker {line['owner']} crashed: {line['error']}" for line in errors]
        statuses: dict[str, int] = defaultdict(int)
        for record in records.values():
            statuses[record.status.value] += 1
        return {
            "seed": self.s.seed, "store": self.s.store, "writer": self.s.writer,
            "sagas_created": len(records), "statuses": dict(statuses),
            "faults": dict(self.faults), "children_started": self.serial,
            "ledger_lines": len(lines), "chaos_seconds": round(chaos_seconds, 1),
            "seconds": round(time.monotonic() - began, 1),
            **self.late_calls(lines), "wal_bytes_at_end": wal_bytes,
            "problems": problems,
        }

    @staticmethod
    def late_calls(lines: list[dict[str, Any]]) -> dict[str, int]:
        """Calls a fenced-out run started (``late_calls``: the one call each
        had in flight) and effects it applied (``late_applies``) after a run
        with a newer token had taken the saga over; and how many of those
        calls were acts made after the saga's compensation had begun
        (``hanging``): the participant's idempotency key (and, for a hanging
        act, a barrier) is what keeps their effect single."""
        by_saga: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in lines:
            if line["event"] in ("enter", "apply", "raise", "claim"):
                by_saga[line["saga"]].append(line)
        counts = {"late_calls": 0, "late_applies": 0, "hanging": 0}
        for saga_lines in by_saga.values():
            _, late, late_ends = fenced_out_calls(saga_lines)
            calls = [line for line in saga_lines if line["event"] != "claim"]
            counts["late_calls"] += len(late)
            counts["late_applies"] += sum(1 for line in calls if id(line) in set(late_ends)
                                          and line["event"] == "apply")
            first_comp = next((i for i, line in enumerate(calls)
                               if line["action"] == "compensate"), len(calls))
            counts["hanging"] += sum(1 for i, line in enumerate(calls)
                                     if id(line) in late and i > first_comp
                                     and line["action"] == "act")
        return counts

    def work_exhausted(self) -> bool:
        """Every live child has started all its sagas."""
        done = {line["owner"] for line in self.lines() if line["event"] == "started_all"}
        return all(child.owner in done for child in self.live())

    @staticmethod
    def tell(child: Child, line: str) -> None:
        assert child.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            child.proc.stdin.write(line + "\n")
            child.proc.stdin.flush()

    def finish(self, child: Child) -> dict[str, Any]:
        self.tell(child, "stop")
        try:
            out, _ = child.proc.communicate(timeout=60)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError) as error:
            if child.proc.poll() is None:  # where it hangs, into its .err file
                os.kill(child.proc.pid, signal.SIGUSR2)
                os.kill(child.proc.pid, signal.SIGUSR1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=2)
            child.proc.kill()
            child.proc.wait()
            return {"owner": child.owner, "error": f"did not stop ({type(error).__name__}),"
                    f" see {self.workdir / (child.owner + '.err')}"}
        if child.proc.returncode != 0:
            err = (self.workdir / f"{child.owner}.err").read_text()[-2000:]
            return {"owner": child.owner,
                    "error": f"exit {child.proc.returncode}: {err}"}
        return dict(json.loads(out.strip().splitlines()[-1]))

    def all_terminal(self) -> bool:
        return asyncio.run(self._count_open()) == 0

    async def _count_open(self) -> int:
        store = await _open(self.store_spec)
        try:
            counts = await store.count_sagas()
            return sum(n for (_, status), n in counts.items()
                       if status.value not in TERMINAL)
        finally:
            await store.close()

    async def read_records(self) -> dict[str, Any]:
        store = await _open(self.store_spec)
        try:
            ids = [summary.saga_id for summary in await store.list_sagas(limit=1_000_000)]
            return {saga_id: await store.load(saga_id) for saga_id in ids}
        finally:
            await store.close()

    def close(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGCONT)
                child.proc.kill()
                child.proc.wait()
            for stream in (child.proc.stdin, child.proc.stdout):
                if stream is not None:
                    stream.close()


@contextlib.contextmanager
def small_tmpfs(size: str = "64m") -> Any:
    """A tmpfs of ``size`` (root only): a disk that really fills up. Yields
    its path, or None where it cannot be mounted."""
    path = Path(tempfile.mkdtemp(prefix="chaos-disk-"))
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, check=False)
        mounted = done.returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            path.rmdir()


def soak(settings: Settings, pg: Any = None) -> dict[str, Any]:
    keep = os.environ.get("CHAOS_KEEP")
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = Path(tempfile.mkdtemp(prefix="chaos-", dir=keep))
            disk = stack.enter_context(small_tmpfs()) if settings.store == "sqlite" else None
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
            disk = stack.enter_context(small_tmpfs()) if settings.store == "sqlite" else None
        if settings.store == "sqlite":
            base = disk if disk is not None else workdir
            spec: dict[str, Any] = {"kind": "sqlite", "path": str(base / "sagas.db"),
                                    "writer": settings.writer}
        else:
            disk = None
            spec = {"kind": "postgres", "conninfo": pg.conninfo,
                    "schema": f"chaos_{settings.seed}_{uuid.uuid4().hex[:6]}"}
        runner = Soak(settings, workdir, spec, pg=pg, disk=disk)
        try:
            report = runner.run()
        finally:
            runner.close()
            if keep and disk is not None:
                import shutil

                for name in os.listdir(disk):
                    shutil.copy(disk / name, workdir / name)
        report["disk_full_source"] = "tmpfs" if disk is not None else "none"
        return report


def main(argv: list[str]) -> None:
    if argv[:1] == ["child"]:
        asyncio.run(_child(json.loads(argv[1])))
        return
    if argv[:1] == ["recheck"]:  # a kept SQLite run's directory (CHAOS_KEEP)
        workdir = Path(argv[1])
        spec = {"kind": "sqlite", "path": str(workdir / "sagas.db")}
        runner = Soak(Settings(), workdir, spec)
        records = asyncio.run(runner.read_records())
        lines = whole_lines(workdir / "ledger.jsonl")
        print(json.dumps({"problems": check(records, lines), **Soak.late_calls(lines)}))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["soak"])
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--writer", default="thread")
    parser.add_argument("--seeds", default="1", help="a seed, or START-STOP (both run)")
    parser.add_argument("--sagas", type=int, default=120)
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--faults", type=int, default=12)
    parser.add_argument("--kinds", default="")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--older-than", type=float, default=0.6)
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args(argv)
    start, _, stop = args.seeds.partition("-")
    seeds = range(int(start), int(stop or start) + 1)
    cluster = None
    if args.store == "postgres":
        from pg_cluster import PostgresCluster

        cluster = PostgresCluster.start_new()
    try:
        for seed in seeds:
            settings = Settings(store=args.store, writer=args.writer, seed=seed,
                                sagas=args.sagas, children=args.children, faults=args.faults,
                                fault_kinds=tuple(k for k in args.kinds.split(",") if k),
                                minutes=args.minutes, lease=args.lease,
                                older_than=args.older_than,
                                verbose=args.v)
            report = soak(settings, pg=cluster)
            print(json.dumps(report), flush=True)
    finally:
        if cluster is not None:
            cluster.remove()


if __name__ == "__main__":
    main(sys.argv[1:])
