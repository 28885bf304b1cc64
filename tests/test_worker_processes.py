"""RecoveryWorker in real OS processes on one PostgreSQL database (issue 4, "Proof").

* N worker processes (N = 1, 2, 4) over 500 interrupted sagas: each saga is
  claimed by exactly one worker, every act's effect is applied once, every
  saga ends COMPLETED;
* a worker killed with SIGKILL inside a step: another worker finishes the
  saga once the dead worker's lease has expired;
* a worker stopped past its grace inside a step hands the saga off, and a
  listening worker whose next poll is an hour away finishes it (LISTEN/NOTIFY);
* a paused worker (SIGSTOP past its lease, then SIGCONT) is fenced out:
  another worker takes the saga over and completes it, and the paused
  worker's late writes are refused (``LeaseLost``; its stats say ``lost``):
  the journal is exactly as the new owner left it.

The participant is a ledger file shared by the processes (one JSON line per
call, appended with ``O_APPEND``): ``enter`` when an act starts, ``apply``
when its effect is applied. Sagas whose id starts with ``gate`` block in act
B, after ``enter``, until the test creates the gate file: that is how a test
knows a worker is *inside* a step before it kills or stops it. Waiting is
always on an observable condition with a bounded timeout, never a fixed sleep.

Run as a script (``python tests/test_worker_processes.py child CONFIG_JSON``)
this file is the worker process: it prints ``ready``, starts its worker on
the line ``go`` from stdin, stops it (``stop(grace=...)``, by default
``None``) on the next line (or EOF) and prints a JSON report: its stats and
the ids it claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest_pg import require_driver
from ledger_file import whole_lines

from fallback_saga import (
    JournalEntry,
    Lease,
    RecoveryWorker,
    Saga,
    SagaContext,
    SagaStepHandler,
    StepStatus,
    current_step,
)

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

HERE = Path(__file__).resolve()
SAGAS = 500

# --------------------------------------------------------------------------- the saga (child side)


@dataclasses.dataclass
class Ctx(SagaContext):
    order_id: str = ""


class FileLedger:
    """The participant: one JSON line per event, shared by the processes."""

    def __init__(self, path: Path, owner: str, gate: Path) -> None:
        self.path = path
        self.owner = owner
        self.gate = gate

    def write(self, event: str, action: str, step: str) -> None:
        info = current_step()
        line = json.dumps({
            "event": event, "action": action, "step": step, "saga": info.saga_id,
            "key": info.idempotency_key, "owner": self.owner, "pid": os.getpid(),
        }) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def act(self, step: str) -> None:
        self.write("enter", "act", step)
        if step == "B" and current_step().saga_id.startswith("gate"):
            # Held until the test (another process) creates the gate file.
            while not self.gate.exists():  # noqa: ASYNC110 (a file, not an Event)
                await asyncio.sleep(0.01)
        self.write("apply", "act", step)


class _Step(SagaStepHandler[Ctx, str]):
    name: ClassVar[str] = ""

    def __init__(self, ledger: FileLedger) -> None:
        self.ledger = ledger

    async def act(self, ctx: Ctx, /) -> Any:
        await self.ledger.act(self.name)
        return self.name

    async def compensate(self, ctx: Ctx, /) -> None:
        self.ledger.write("apply", "compensate", self.name)


class A(_Step):
    name = "A"


class B(_Step):
    name = "B"


class C(_Step):
    name = "C"


class OrderSaga(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [A, B, C]


class RecordingStore(PostgresSagaStore):
    """Remembers which sagas this process claimed (the worker's report), and
    counts the claims begun and ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claimed_ids: list[str] = []
        self.claims_begun = self.claims_ended = 0

    async def claim(self, *, owner: str, lease_seconds: float, older_than: float,
                    limit: int) -> list[Lease]:
        self.claims_begun += 1
        try:
            leases = await super().claim(owner=owner, lease_seconds=lease_seconds,
                                         older_than=older_than, limit=limit)
        finally:
            self.claims_ended += 1
        self.claimed_ids += [lease.saga_id for lease in leases]
        return leases


async def _report_idle(worker: RecoveryWorker, store: RecordingStore) -> None:
    """Print ``idle`` once the worker listens and every wake-up so far has
    been answered by a claim that has ended: from then on, only a new
    wake-up (an announcement, or the next poll) makes it claim."""

    def idle() -> bool:
        return (worker.listening and store.claims_begun == store.claims_ended >= 1
                and not worker._wake.is_set())

    while not idle():  # noqa: ASYNC110 (the state of several objects, not one Event)
        await asyncio.sleep(0.01)
    print("idle", flush=True)


async def _child(config: dict[str, Any]) -> None:
    store = RecordingStore(config["conninfo"], schema=config["schema"], min_size=1,
                           max_size=config["concurrency"] + 2)
    await store.open()
    ledger = FileLedger(Path(config["ledger"]), config["owner"], Path(config["gate"]))
    saga = OrderSaga(store=store, step_factory=lambda cls: cls(ledger))
    worker = RecoveryWorker(store, [saga], concurrency=config["concurrency"],
                            lease=config["lease"], poll=config["poll"], older_than=0,
                            owner=config["owner"])
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "go"
    task = asyncio.create_task(worker.run())
    if config.get("report_idle"):
        idle = asyncio.create_task(_report_idle(worker, store))
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (or EOF)
    await worker.stop(grace=config.get("grace"))
    await task
    if config.get("report_idle"):
        await idle
    await store.close()
    print(json.dumps({"owner": config["owner"], "pid": os.getpid(),
                      "stats": dataclasses.asdict(worker.stats),
                      "claimed": store.claimed_ids}), flush=True)


# --------------------------------------------------------------------------- helpers (test side)


def _act(position: int, step: str, status: StepStatus) -> JournalEntry:
    return JournalEntry(position, step, "primary", "act", status, 1, None, 1.0)


def seed(conninfo: str, schema: str, ids: list[str]) -> None:
    """Sagas a crashed process left RUNNING inside act A (its STARTED row is last)."""

    async def create_all() -> None:
        async with PostgresSagaStore(conninfo, schema=schema, min_size=1, max_size=8) as store:
            gate = asyncio.Semaphore(8)

            async def create(saga_id: str) -> None:
                async with gate:
                    await store.create(saga_id, "OrderSaga", OrderSaga.definition.fingerprint,
                                       {"order_id": saga_id}, [_act(0, "A", StepStatus.STARTED)])

            await asyncio.gather(*(create(saga_id) for saga_id in ids))

    asyncio.run(create_all())


def eventually(condition: Callable[[], bool], within: float = 30.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Env:
    """One test's database schema, ledger, gate file and worker processes."""

    def __init__(self, conninfo: str, schema: str, tmp: Path) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.ledger = tmp / "ledger.jsonl"
        self.gate = tmp / "gate-open"
        self.procs: list[subprocess.Popen[str]] = []
        self.conn = psycopg.connect(conninfo, autocommit=True)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(
            sql.replace("{s}", f'"{self.schema}"'), params).fetchall()

    def ledger_lines(self) -> list[dict[str, Any]]:
        return whole_lines(self.ledger)

    def start(self, owner: str, *, lease: float, concurrency: int = 8,
              poll: float = 0.05, go: bool = True, grace: float | None = None,
              report_idle: bool = False) -> subprocess.Popen[str]:
        config = {"conninfo": self.conninfo, "schema": self.schema, "owner": owner,
                  "lease": lease, "concurrency": concurrency, "poll": poll,
                  "ledger": str(self.ledger), "gate": str(self.gate), "grace": grace,
                  "report_idle": report_idle}
        proc = subprocess.Popen([sys.executable, str(HERE), "child", json.dumps(config)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != "ready\n":
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"worker {owner} did not start: {line!r}\n{err}")
        if go:
            self.tell(proc, "go")
        return proc

    @staticmethod
    def tell(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def finish(self, proc: subprocess.Popen[str], timeout: float = 30.0) -> dict[str, Any]:
        """Stop a worker gracefully and return its report."""
        self.tell(proc, "stop")
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.conn.close()


@pytest.fixture
def env(pg_conninfo: str, pg_schema: str, tmp_path: Path) -> Iterator[Env]:
    environment = Env(pg_conninfo, pg_schema, tmp_path)
    try:
        yield environment
    finally:
        environment.close()


def applied(lines: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((line["action"], line["step"], line["saga"])
                   for line in lines if line["event"] == "apply")


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_N_worker_processes_resume_each_interrupted_saga_exactly_once(
    env: Env, workers: int
) -> None:
    ids = [f"s{n:04d}" for n in range(SAGAS)]
    seed(env.conninfo, env.schema, ids)
    procs = [env.start(f"w{n}", lease=30, go=False) for n in range(workers)]
    for proc in procs:  # go, all at once
        env.tell(proc, "go")
    eventually(lambda: env.rows("SELECT COUNT(*) FROM {s}.fallback_saga_sagas"
                                " WHERE status <> 'completed'") == [(0,)],
               within=60, what=f"{SAGAS} sagas completed")
    reports = [env.finish(proc) for proc in procs]

    claimed = [saga_id for report in reports for saga_id in report["claimed"]]
    assert len(claimed) == len(set(claimed)) == SAGAS  # disjoint
    assert sorted(claimed) == ids  # and together: all of them
    for report in reports:
        stats = report["stats"]
        assert stats["claimed"] == stats["completed"] == len(report["claimed"])
        assert stats["lost"] == stats["skipped"] == stats["handed_off"] == 0
    if workers > 1:
        assert sum(1 for report in reports if report["claimed"]) >= 2  # the work was shared

    lines = env.ledger_lines()
    effects = applied(lines)
    assert set(effects.values()) == {1}  # every act applied once, nothing compensated
    assert set(effects) == {("act", step, saga_id) for saga_id in ids for step in "ABC"}
    # Every saga was driven by one process only: the one that claimed it.
    owner_of = {saga_id: report["owner"] for report in reports for saga_id in report["claimed"]}
    assert all(line["owner"] == owner_of[line["saga"]] for line in lines)
    assert env.rows("SELECT DISTINCT status, fence, lease_owner FROM {s}.fallback_saga_sagas"
                    ) == [("completed", 1, None)]


def test_a_worker_killed_mid_saga_is_taken_over_after_its_lease_expires(env: Env) -> None:
    seed(env.conninfo, env.schema, ["gate0"])
    victim = env.start("victim", lease=1.5)

    def entered(owner: str) -> bool:
        return any(line["owner"] == owner and line["step"] == "B" and line["event"] == "enter"
                   for line in env.ledger_lines())

    eventually(lambda: entered("victim"), what="the victim inside act B")
    assert env.rows("SELECT lease_owner, fence FROM {s}.fallback_saga_sagas") == [("victim", 1)]
    rescuer = env.start("rescuer", lease=30)  # the lease is the victim's: nothing to claim yet
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    env.gate.touch()  # the rescuer's B will not block

    eventually(lambda: env.rows("SELECT status FROM {s}.fallback_saga_sagas") == [("completed",)],
               within=30, what="the rescuer completing the saga")
    # Not before the victim's lease (1.5 s, renewed every 0.5 s) ran out.
    assert time.monotonic() - killed_at > 0.9
    report = env.finish(rescuer)
    assert report["claimed"] == ["gate0"]
    assert report["stats"]["completed"] == 1

    lines = env.ledger_lines()
    assert [(line["owner"], line["event"], line["step"]) for line in lines] == [
        ("victim", "enter", "A"), ("victim", "apply", "A"), ("victim", "enter", "B"),
        ("rescuer", "enter", "B"), ("rescuer", "apply", "B"),
        ("rescuer", "enter", "C"), ("rescuer", "apply", "C"),
    ]
    assert env.rows("SELECT status, fence, lease_owner FROM {s}.fallback_saga_sagas") == [
        ("completed", 2, None)]
    journal = env.rows("SELECT position, action, status FROM {s}.fallback_saga_steps"
                       " ORDER BY seq")
    assert "compensate" not in {action for _, action, _ in journal}
    assert journal[-1] == (2, "act", "completed")


def test_a_paused_worker_is_fenced_out_and_its_late_writes_are_rejected(env: Env) -> None:
    seed(env.conninfo, env.schema, ["gate0"])
    # concurrency=1: busy with this saga, the paused worker claims nothing else.
    paused = env.start("paused", lease=1.5, concurrency=1)
    eventually(lambda: any(line["owner"] == "paused" and line["step"] == "B"
                           for line in env.ledger_lines()), what="the worker inside act B")
    os.kill(paused.pid, signal.SIGSTOP)
    env.gate.touch()  # only a running process can go through it

    taker = env.start("taker", lease=30)
    eventually(lambda: env.rows("SELECT status FROM {s}.fallback_saga_sagas") == [("completed",)],
               within=30, what="the takeover")
    taker_report = env.finish(taker)
    assert taker_report["stats"]["completed"] == 1
    saga_row = env.rows("SELECT status, fence, lease_owner, journal_length, version,"
                        " updated_at FROM {s}.fallback_saga_sagas")
    journal = env.rows("SELECT * FROM {s}.fallback_saga_steps ORDER BY seq")
    assert saga_row[0][:3] == ("completed", 2, None)
    before = len(env.ledger_lines())

    os.kill(paused.pid, signal.SIGCONT)
    report = env.finish(paused)  # stop(grace=None): its run ends on its own
    assert report["stats"]["lost"] == 1, report
    assert report["stats"]["completed"] == report["stats"]["compensated"] == 0
    assert report["claimed"] == ["gate0"]

    # Nothing the paused worker did after the takeover reached the store.
    assert env.rows("SELECT status, fence, lease_owner, journal_length, version,"
                    " updated_at FROM {s}.fallback_saga_sagas") == saga_row
    assert env.rows("SELECT * FROM {s}.fallback_saga_steps ORDER BY seq") == journal
    late = env.ledger_lines()[before:]
    # At most the step that was in flight finished (its effect carries the same
    # idempotency key as the taker's, so a participant can drop it); nothing after
    # it ran and nothing was compensated.
    assert all(line["owner"] == "paused" and line["step"] == "B" and line["action"] == "act"
               for line in late), late
    taker_b = {line["key"] for line in env.ledger_lines()
               if line["owner"] == "taker" and line["step"] == "B"}
    assert {line["key"] for line in late} <= taker_b
    effects = applied(env.ledger_lines())
    assert effects[("act", "C", "gate0")] == 1
    assert not any(action == "compensate" for action, _, _ in effects)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    asyncio.run(_child(json.loads(sys.argv[2])))


def test_a_stopping_worker_process_hands_its_saga_to_a_listening_one_at_once(
    env: Env,
) -> None:
    """A rolling deploy: the leaving process stops past its grace (0) inside
    a step and hands the saga off; the staying process, whose next poll is an
    hour away, hears of it (LISTEN/NOTIFY) and finishes the saga."""
    an_hour = 3600.0
    seed(env.conninfo, env.schema, ["gate0"])
    leaving = env.start("leaving", lease=30, poll=an_hour, grace=0)
    eventually(lambda: any(line["owner"] == "leaving" and line["step"] == "B"
                           for line in env.ledger_lines()), what="the worker inside act B")
    staying = env.start("staying", lease=30, poll=an_hour, report_idle=True)
    assert staying.stdout is not None
    assert staying.stdout.readline() == "idle\n"  # its claims found the saga leased

    report = env.finish(leaving)
    assert report["stats"]["handed_off"] == 1, report
    env.gate.touch()  # the staying worker's B will not block
    eventually(lambda: env.rows("SELECT status FROM {s}.fallback_saga_sagas") == [("completed",)],
               within=30, what="the staying worker completing the saga")
    staying_report = env.finish(staying)
    assert staying_report["claimed"] == ["gate0"]
    assert staying_report["stats"]["completed"] == 1

    lines = env.ledger_lines()
    assert [(line["owner"], line["event"], line["step"]) for line in lines] == [
        ("leaving", "enter", "A"), ("leaving", "apply", "A"), ("leaving", "enter", "B"),
        ("staying", "enter", "B"), ("staying", "apply", "B"),
        ("staying", "enter", "C"), ("staying", "apply", "C"),
    ]
    assert env.rows("SELECT status, fence, lease_owner FROM {s}.fallback_saga_sagas") == [
        ("completed", 2, None)]
