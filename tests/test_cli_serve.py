"""``python -m fallback_saga serve``: the web console from the command line.

Run as an operator runs it — a child process on a real journal (SQLite, and
PostgreSQL through ``conftest_pg``), ``--port 0``, the URL read from the line
it prints — then fetched with ``urllib`` and stopped by a signal: exit 0, no
traceback, the journal untouched. The errors an operator can hit (port in
use, a host that is no address here, a missing store, bad options) are one
line each, with the exit statuses of the other commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from helpers_console import RUNNING_ID, OrderSaga, ShopOrder, fetch_sync, fill_journal
from pg_cluster import PostgresCluster
from prometheus_text import parse_exposition

from fallback_saga import SQLiteSagaStore
from fallback_saga.cli import main
from fallback_saga.cli.errors import CommandFailed, UsageError
from fallback_saga.cli.serve import _listen_error

pytest_plugins = ["conftest_pg"]

SHOP_IDS = ["order-1006", "payout-1005", "atlantis-1004", "order-1003", "order-1002",
            "order-1001"]
# The line serve prints once it listens.
READY = re.compile(r"console at (http://127\.0\.0\.1:(\d+)/) \(read-only: .*; Ctrl-C to stop\)")
STARTUP_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _no_store_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLBACK_SAGA_DSN", raising=False)
    monkeypatch.delenv("FALLBACK_SAGA_DB", raising=False)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite journal filled by real saga runs (``helpers_console``)."""
    path = tmp_path_factory.mktemp("serve") / "shop.db"

    async def fill() -> None:
        async with SQLiteSagaStore(path) as store:
            await fill_journal(store, evil=False)

    asyncio.run(fill())
    return path


# --------------------------------------------------------------------------- the child


class Served:
    """``python -m fallback_saga serve ...`` in a child process."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fallback_saga", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stderr_text: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.url, self.port = self._ready()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout_lines.put(line)
            else:
                self.stderr_text.append(line)
        if is_stdout:
            self.stdout_lines.put("")  # the end

    def _ready(self) -> tuple[str, int]:
        """The URL from the first line, read as soon as it is printed."""
        try:
            line = self.stdout_lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            self.process.kill()
            raise AssertionError("serve printed no URL in time") from None
        self.ready_line = line
        match = READY.fullmatch(line.rstrip("\n"))
        if match is None:
            self.process.wait(timeout=30)
            for reader in self._readers:
                reader.join(timeout=10)
            raise AssertionError(
                f"serve printed {line!r}, exit {self.process.returncode}: "
                + "".join(self.stderr_text)
            )
        return match[1], int(match[2])

    def get(self, path: str) -> tuple[int, str]:
        reply = fetch_sync(self.url.rstrip("/") + path)
        return reply.status, reply.text

    def stop(self, signum: signal.Signals = signal.SIGINT) -> tuple[int, str, str, float]:
        """Send ``signum``; the exit status, stdout after the URL line, stderr,
        and how long it took to stop."""
        started = time.monotonic()
        self.process.send_signal(signum)
        status = self.process.wait(timeout=30)
        took = time.monotonic() - started
        for reader in self._readers:
            reader.join(timeout=10)
        rest = []
        while (line := self.stdout_lines.get(timeout=10)) != "":
            rest.append(line)
        return status, "".join(rest), "".join(self.stderr_text), took

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@contextlib.contextmanager
def served(args: list[str], env: dict[str, str] | None = None) -> Iterator[Served]:
    child = Served(args, env)
    try:
        yield child
    finally:
        child.kill()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_pages(child: Served, expected_ids: list[str]) -> None:
    status, html = child.get("/")
    assert status == 200
    for saga_id in expected_ids:
        assert saga_id in html
    status, text = child.get("/api/sagas")
    assert status == 200
    listed = json.loads(text)
    assert [s["saga_id"] for s in listed["sagas"]] == expected_ids
    assert listed["counts"]["completed"] == 3
    status, text = child.get("/metrics")
    assert status == 200
    sagas = parse_exposition(text)["fallback_saga_sagas"]
    values = {(s.labels["saga_name"], s.labels["status"]): s.value for s in sagas.samples}
    assert values[("OrderSaga", "completed")] == 3
    assert values[("PayoutSaga", "failed")] == 1
    status, html = child.get(f"/sagas/{RUNNING_ID}")
    assert status == 200
    assert '<svg class="timeline"' in html
    assert child.get("/sagas/no-such-saga")[0] == 404


def check_stopped(outcome: tuple[int, str, str, float]) -> str:
    status, stdout, stderr, took = outcome
    assert status == 0, stderr
    assert stdout == "console stopped\n"
    assert "Traceback" not in stderr, stderr
    assert took < 10, f"it took {took:.1f} s to stop"
    return stderr


# --------------------------------------------------------------------------- SQLite


def test_serve_on_sqlite_prints_its_url_answers_and_stops_on_ctrl_c(
    journal: Path, tmp_path: Path
) -> None:
    db = tmp_path / "shop.db"
    db.write_bytes(journal.read_bytes())
    before = digest(db)
    with served(["--db", str(db)]) as child:
        assert child.port != 0  # --port 0: the URL carries the port it got
        check_pages(child, SHOP_IDS)
        stderr = check_stopped(child.stop(signal.SIGINT))
    # Each request is logged on stderr; the journal was only read.
    assert re.search(r"GET /api/sagas 200 ", stderr), stderr
    assert digest(db) == before


def test_serve_sees_what_the_application_writes_meanwhile(journal: Path, tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    db.write_bytes(journal.read_bytes())

    async def one_more_order() -> None:
        async with SQLiteSagaStore(db) as store:
            await OrderSaga(store=store).run(ShopOrder("order-1007"), saga_id="order-1007")

    with served(["--db", str(db)]) as child:
        check_pages(child, SHOP_IDS)
        asyncio.run(one_more_order())
        status, text = child.get("/api/sagas?status=completed")
        assert status == 200
        assert "order-1007" in text
        check_stopped(child.stop(signal.SIGINT))


def test_serve_stops_at_once_on_sigterm_with_idle_connections_open(
    journal: Path, tmp_path: Path
) -> None:
    """A browser keeps idle connections open (and may have sent half a
    request): SIGTERM still stops the console at once, quietly."""
    db = tmp_path / "shop.db"
    db.write_bytes(journal.read_bytes())
    # The store named by the environment, as the other store commands take it.
    with served([], env={"FALLBACK_SAGA_DB": str(db)}) as child:
        idle = socket.create_connection(("127.0.0.1", child.port))
        half = socket.create_connection(("127.0.0.1", child.port))
        half.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            assert child.get("/healthz") == (200, "ok\n")
            check_stopped(child.stop(signal.SIGTERM))
        finally:
            idle.close()
            half.close()


def test_a_port_in_use_is_a_one_line_failure(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["serve", "--db", str(journal), "--port", str(port)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert f"error: cannot listen on 127.0.0.1:{port}: the port is in use" in captured.err
    assert "--port" in captured.err


def test_a_host_that_is_no_address_here_is_a_usage_error(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never this machine's.
    status = main(["serve", "--db", str(journal), "--host", "192.0.2.1", "--port", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1, err
    assert "error: --host 192.0.2.1: not an address of this machine" in err


def test_listen_errors_say_what_to_do() -> None:
    unknown = _listen_error(
        "nosuch.invalid", 8080, socket.gaierror(-2, "Name or service not known")
    )
    assert isinstance(unknown, UsageError)
    assert str(unknown).startswith("--host nosuch.invalid: no such host (Name or service not")
    denied = _listen_error("127.0.0.1", 80, PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(denied, CommandFailed)
    assert "ports below 1024" in str(denied)
    other = _listen_error("", 8080, OSError(errno.EMFILE, "Too many open files"))
    assert str(other) == "cannot listen on every interface:8080: Too many open files"


def test_a_missing_store_is_a_usage_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    assert main(["serve", "--db", str(missing), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no such file" in err
    assert not missing.exists()
    assert main(["serve", "--port", "0"]) == 2
    assert "which saga store?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "65536"), ("--port", "http"), ("--page-size", "0"), ("--page-size", "501")],
)
def test_bad_option_values_are_usage_errors(
    journal: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--db", str(journal), option, value]) == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_help_lists_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert re.search(r"^\s+serve\s+the read-only web console", capsys.readouterr().out, re.M)
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--db", "--dsn", "--schema", "--host", "--port", "--page-size",
                   "--allow-host"):
        assert option in out
    assert "NO AUTHENTICATION" in out


# --------------------------------------------------------------------------- PostgreSQL


def test_serve_on_postgresql_answers_and_stops_on_ctrl_c(
    pg_conninfo: str, pg_schema: str
) -> None:
    from conftest_pg import require_driver

    require_driver()
    from fallback_saga.store.postgres import PostgresSagaStore

    async def fill() -> None:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            await fill_journal(store, evil=False)

    asyncio.run(fill())
    with served(["--dsn", pg_conninfo, "--schema", pg_schema]) as child:
        check_pages(child, SHOP_IDS)
        status, text = child.get(f"/api/sagas/{RUNNING_ID}")
        assert status == 200
        assert '"state": "held"' in text
        check_stopped(child.stop(signal.SIGINT))


def test_serve_on_a_postgresql_database_without_sagas_is_a_usage_error(
    pg_conninfo: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest_pg import require_driver

    require_driver()
    assert main(["serve", "--dsn", pg_conninfo, "--schema", pg_schema, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "holds no fallback_saga saga store" in err


def test_serve_as_a_role_that_may_only_select(
    pg_cluster: PostgresCluster, pg_conninfo: str, pg_schema: str
) -> None:
    """The console needs no more than the list and show commands: SELECT on
    the saga tables. The DSN comes from the environment; its password is
    never printed."""
    from conftest_pg import require_driver

    require_driver()
    import psycopg

    from fallback_saga.store.postgres import PostgresSagaStore

    async def fill() -> None:
        async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
            await fill_journal(store, evil=False)

    asyncio.run(fill())
    role, password = f"viewer_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {role}')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO {role}')
    viewer = (
        f"host=127.0.0.1 port={pg_cluster.port} user={role} password={password} "
        f"dbname={pg_cluster.dbname}"
    )
    try:
        with served(["--schema", pg_schema], env={"FALLBACK_SAGA_DSN": viewer}) as child:
            check_pages(child, SHOP_IDS)
            outcome = child.stop(signal.SIGINT)
            stderr = check_stopped(outcome)
            assert role in child.ready_line
            assert password not in child.ready_line + stderr
    finally:
        with psycopg.connect(pg_conninfo, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


async def test_closing_the_console_ends_idle_connections_at_once(journal: Path) -> None:
    """``ConsoleServer.close`` (what a stopped ``serve`` runs) does not wait for
    a browser's idle connections (Python 3.12+ would, until their timeout)."""
    from fallback_saga.console import ConsoleServer

    async with SQLiteSagaStore(journal, read_only=True) as store:
        console = ConsoleServer(store, port=0)
        await console.start()
        _, idle = await asyncio.open_connection("127.0.0.1", console.port)
        reader, busy = await asyncio.open_connection("127.0.0.1", console.port)
        busy.write(b"GET /api/sagas HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await busy.drain()
        head = await reader.readline()
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        await console.close()
        assert time.monotonic() - started < 2
        idle.close()
        busy.close()
