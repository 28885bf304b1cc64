"""A throwaway PgBouncer in front of a test ``PostgresCluster``: transaction
pooling, loopback only, its files in a temporary directory removed after.

Started as the cluster's OS user when we are root (PgBouncer refuses root).
``PgBouncerUnavailable`` where there is no ``pgbouncer`` binary
(``$FALLBACK_SAGA_PGBOUNCER`` names one elsewhere); the tests then skip.
The configuration is PgBouncer's defaults but for the pool mode: in
particular no ``ignore_startup_parameters``, as most installations have it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pg_cluster import PostgresCluster

__all__ = ["PgBouncerUnavailable", "running_pgbouncer"]

READY_TIMEOUT = 30.0


class PgBouncerUnavailable(RuntimeError):
    """No PgBouncer can be started here (the reason says why)."""


def _binary() -> str:
    if explicit := os.environ.get("FALLBACK_SAGA_PGBOUNCER"):
        if not Path(explicit).is_file():  # said explicitly: that one or none
            raise PgBouncerUnavailable(f"FALLBACK_SAGA_PGBOUNCER={explicit} is not a file")
        return explicit
    found = shutil.which("pgbouncer")
    if found is None:
        for candidate in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
            if Path(candidate).is_file():
                return candidate
        raise PgBouncerUnavailable(
            "pgbouncer not found (Debian: apt-get install pgbouncer; or set "
            "FALLBACK_SAGA_PGBOUNCER)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_pgbouncer(cluster: PostgresCluster, *, pool_size: int = 4) -> Iterator[str]:
    """A PgBouncer in transaction mode before ``cluster``'s database; yields
    the conninfo that goes through it. ``pool_size`` server connections, so
    that clients share them (statements of one client land on several)."""
    binary = _binary()
    base = Path(tempfile.mkdtemp(prefix="fallback_saga-pgbouncer-", dir="/tmp"))
    process: subprocess.Popen[bytes] | None = None
    try:
        port = _free_port()
        (base / "userlist.txt").write_text(f'"{cluster.user}" "{cluster.password}"\n')
        (base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{cluster.dbname} = host=127.0.0.1 port={cluster.port} dbname={cluster.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {base / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
        )
        user = group = None
        if cluster.run_as is not None:
            user, group = cluster.run_as.pw_uid, cluster.run_as.pw_gid
            for path in (base, base / "userlist.txt", base / "pgbouncer.ini"):
                os.chown(path, user, group)
        (base / "userlist.txt").chmod(0o600)
        with (base / "pgbouncer.log").open("ab") as log:
            process = subprocess.Popen(
                [binary, str(base / "pgbouncer.ini")], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
                user=user, group=group, extra_groups=[] if user is not None else None,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                raise PgBouncerUnavailable(
                    f"pgbouncer exited with {process.returncode}: "
                    + (base / "pgbouncer.log").read_text(errors="replace")[-2000:]
                )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=1
            ):
                break
            if time.monotonic() > deadline:
                raise PgBouncerUnavailable("pgbouncer did not listen in time")
            time.sleep(0.05)
        yield (
            f"host=127.0.0.1 port={port} user={cluster.user} password={cluster.password} "
            f"dbname={cluster.dbname} connect_timeout=10"
        )
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
