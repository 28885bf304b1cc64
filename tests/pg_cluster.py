"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary
directory, a server listening on loopback only, stopped and removed after.

Usable without pytest (worker processes of the multi-process tests and the
benchmarks import it too)::

    with PostgresCluster.start_new() as cluster:
        print(cluster.conninfo)

The server binaries are taken from ``$FALLBACK_SAGA_PG_BIN`` when it is set
(and only from there); otherwise from ``/usr/lib/postgresql/15/bin``, the
newest other ``/usr/lib/postgresql/*/bin``, or ``PATH``. ``initdb`` and
``postgres`` refuse to run as root: when we are root they run as the
``postgres`` OS user (``$FALLBACK_SAGA_PG_USER`` to choose another), so the
temporary directory is handed to that user, and every directory above it
must be traversable by it (else ``/tmp`` is used).

The cluster is set up for tests, not for production: TCP (loopback only)
and the Unix socket both need the random password that is in the conninfo.
``fsync`` stays on, so timings mean what they would on a real server on
this disk.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bindir"]

DEFAULT_VERSION = "15"
READY_TIMEOUT = 60.0  # seconds for the server to accept connections
STOP_TIMEOUT = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the reason says why)."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``postgres`` and ``pg_ctl``;
    ``PostgresUnavailable`` if there is none."""
    candidates: list[Path] = []
    if explicit := os.environ.get("FALLBACK_SAGA_PG_BIN"):
        candidates.append(Path(explicit))  # said explicitly: that one or none
    else:
        candidates += _default_bindirs()
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "pg_ctl")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); install them (Debian: apt-get install postgresql-15) or set FALLBACK_SAGA_PG_BIN"
    )


def _default_bindirs() -> list[Path]:
    candidates = [Path(f"/usr/lib/postgresql/{DEFAULT_VERSION}/bin")]
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name),
            reverse=True,
        )
        candidates += [p / "bin" for p in versions]
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    return candidates


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    """Every directory from ``/`` down to ``path`` lets other users through."""
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables that would redirect the tools."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


@dataclass
class PostgresCluster:
    """One running throwaway server. ``conninfo`` connects to ``dbname``."""

    bindir: Path
    base: Path  # the temporary directory: data/, the socket, the log
    port: int
    password: str
    user: str = "postgres"  # the database superuser
    dbname: str = "fallback_saga_test"
    run_as: pwd.struct_passwd | None = None  # the OS user the server runs as
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    settings: tuple[str, ...] = ()  # the extra server settings, kept for start()
    initdb_options: tuple[str, ...] = ()  # extra initdb options (``--wal-segsize=1``)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    def conninfo_for(self, dbname: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} "
            f"dbname={dbname} connect_timeout=10"
        )

    @property
    def conninfo(self) -> str:
        """Over loopback TCP (what a service on another machine would do)."""
        return self.conninfo_for(self.dbname)

    @property
    def socket_conninfo(self) -> str:
        """Over the Unix-domain socket in ``socket_dir`` (same machine only)."""
        return (
            f"host={self.socket_dir} port={self.port} user={self.user} "
            f"password={self.password} dbname={self.dbname}"
        )

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start_new(
        cls,
        *,
        settings: Sequence[str] = (),
        dbname: str = "fallback_saga_test",
        bindir: Path | None = None,
        initdb_options: Sequence[str] = (),
    ) -> PostgresCluster:
        """initdb a new cluster in a temporary directory, start it on a free
        loopback port and create ``dbname``. ``settings`` are extra ``name=value``
        server settings, ``initdb_options`` extra options of initdb.
        ``PostgresUnavailable`` if that cannot be done."""
        bindir = bindir or find_bindir()
        run_as = _server_user()
        parent = Path(tempfile.gettempdir())
        if run_as is not None and not _traversable_by_others(parent):
            parent = Path("/tmp")
        base = Path(tempfile.mkdtemp(prefix="fallback_saga-pg-", dir=parent))
        try:
            if run_as is not None:
                os.chown(base, run_as.pw_uid, run_as.pw_gid)
            base.chmod(0o700)
            cluster = cls(
                bindir=bindir, base=base, port=0, password=secrets.token_hex(16),
                dbname=dbname, run_as=run_as, settings=tuple(settings),
                initdb_options=tuple(initdb_options),
            )
            cluster._initdb()
            last_error: PostgresUnavailable | None = None
            for _ in range(5):  # the free port may be taken between probe and bind
                cluster.port = _free_port()
                try:
                    cluster._start_server(settings)
                    break
                except PostgresUnavailable as error:
                    last_error = error
                    if "could not bind" not in str(error) and "in use" not in str(error):
                        raise
            else:
                assert last_error is not None
                raise last_error
            try:
                cluster.create_database(dbname)
            except BaseException:
                cluster.stop()
                raise
            return cluster
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    def _run(
        self, args: Sequence[str], *, timeout: float = 120, password: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = _clean_env()
        if password:
            env["PGPASSWORD"] = self.password
        user, group, extra_groups = self._as_user()
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False,
            cwd=self.base, env=env, user=user, group=group, extra_groups=extra_groups,
        )

    def _as_user(self) -> tuple[int | None, int | None, list[int] | None]:
        """``subprocess``'s user, group and extra_groups: the server's OS user."""
        if self.run_as is None:
            return None, None, None
        return self.run_as.pw_uid, self.run_as.pw_gid, []

    def _initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as is not None:
            os.chown(pwfile, self.run_as.pw_uid, self.run_as.pw_gid)
        pwfile.chmod(0o600)
        try:
            done = self._run(
                [
                    str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                    "--pwfile", str(pwfile), "--auth=scram-sha-256",
                    "--encoding=UTF8", "--no-locale", "--no-sync", *self.initdb_options,
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({done.returncode}):\n{done.stderr}")

    def _start_server(self, settings: Sequence[str]) -> None:
        options = [
            "listen_addresses=127.0.0.1",
            f"port={self.port}",
            f"unix_socket_directories={self.socket_dir}",
            "fsync=on",
            "synchronous_commit=on",
            "max_connections=200",
            "logging_collector=off",
            *settings,
        ]
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for option in options:
            args += ["-c", option]
        user, group, extra_groups = self._as_user()
        with self.logfile.open("ab") as log:
            # Our own child, not daemonized by pg_ctl: if it dies we see it at once.
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.base, env=_clean_env(), start_new_session=True,
                user=user, group=group, extra_groups=extra_groups,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll a TCP connection (and the server's own readiness check) until
        the server answers, bounded by READY_TIMEOUT."""
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        isready = self.bindir / "pg_isready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with {self.process.returncode}:\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if not isready.is_file():
                    return
                check = self._run(
                    [str(isready), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"], timeout=10
                )
                if check.returncode == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise PostgresUnavailable(
            f"postgres did not accept connections within {READY_TIMEOUT:.0f} s:\n"
            f"{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        """Run ``sql`` through psql (over loopback TCP, with the password);
        returns its unaligned output."""
        psql = self.bindir / "psql"
        if not psql.is_file():
            found = shutil.which("psql")
            if found is None:
                raise PostgresUnavailable("psql not found")
            psql = Path(found)
        done = self._run(
            [
                str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", self.user, "-d", dbname, "-At", "-c", sql,
            ],
            password=True,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, dbname: str) -> None:
        if not dbname.replace("_", "").isalnum():
            raise ValueError(f"a plain database name, please: {dbname!r}")
        self.psql(f'CREATE DATABASE "{dbname}"')

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut, committed data kept)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            self._run(
                [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast",
                 "-w", "-t", str(STOP_TIMEOUT)],
                timeout=STOP_TIMEOUT + 10,
            )
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()  # immediate: nothing of a test cluster needs saving
                process.wait(timeout=10)

    def start(self) -> None:
        """Start the server again after ``stop()``: same data, port and password
        (the conninfo stays valid). Returns once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = None
        self._start_server(self.settings)

    def restart(self) -> None:
        """What ``pg_ctl restart -m fast`` does, keeping the server our own
        child: a fast stop (every session is cut, committed data is kept),
        then a start on the same port."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("FALLBACK_SAGA_PG_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and there is no {name!r} OS user to run PostgreSQL as "
            f"(initdb and postgres refuse root); installing the postgresql package creates it"
        ) from None


@contextlib.contextmanager
def running_cluster(**kwargs: object) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.start_new(**kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.remove()


def hunt_conninfos(stores: Sequence[str]) -> Iterator[str | None]:
    """For a seeded hunt's ``__main__`` run over ``stores`` (names on its
    command line): one throwaway cluster's conninfo when they name
    ``postgres`` (removed once the hunt is done), else one ``None``."""
    if "postgres" not in stores:
        yield None
        return
    # A hunt is often bounded by ``timeout``, whose SIGTERM ends Python at
    # once, skipping the ``with`` below: the cluster was left running. As
    # SystemExit the hunt unwinds, and the cluster is stopped and removed.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with running_cluster() as cluster:
            yield cluster.conninfo
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":  # a quick manual check: python tests/pg_cluster.py
    with running_cluster() as running:
        print(running.conninfo)
        print(running.psql("SELECT version()"))
