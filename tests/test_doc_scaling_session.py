"""docs/scaling.md's PostgreSQL session ("Operating the sagas of a PostgreSQL
store") is replayed against a throwaway cluster, command by command, in a
copy of examples/: each prints what the page shows — as durability.md's
SQLite session is (test_doc_claims.py), with the same allowances (times,
timestamps and durations aside; ``...`` where the page leaves lines out)
and one more: the page's database (``postgresql://ops@db.internal/orders``)
is the cluster's, so its name in what is printed is the page's."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from doc_blocks import ROOT
from pg_cluster import PostgresCluster
from test_doc_claims import session_commands, session_lines, session_matches

pytest_plugins = ["conftest_pg"]

SESSION_START = "A session with the shop of durability.md, from `examples/`"
SESSION_END = "The same session as on SQLite"
PAGE_DSN = "postgresql://ops@db.internal/orders"
PAGE_TARGET = "PostgreSQL host=db.internal dbname=orders user=ops"


def test_the_postgres_session_of_scaling_md_prints_what_the_page_shows(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    page = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    text = page[page.index(SESSION_START):page.index(SESSION_END)]
    commands = session_commands(text)
    assert len(commands) >= 8, "the session's commands were not found"
    dbname = f"orders_{uuid.uuid4().hex[:12]}"  # an empty store, as the page's
    pg_cluster.create_database(dbname)
    dsn = f"postgresql://{pg_cluster.user}@127.0.0.1:{pg_cluster.port}/{dbname}"
    # How the commands name the cluster's database (never with its password).
    target = f"PostgreSQL host=127.0.0.1 port={pg_cluster.port} dbname={dbname} " \
             f"user={pg_cluster.user}"
    (tmp_path / "shop.py").write_text(
        (ROOT / "examples" / "shop.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FALLBACK_SAGA_", "SHOP_", "PG"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "80"
    env["PGPASSWORD"] = pg_cluster.password  # the page's ~/.pgpass
    wrong = []
    for command, shown in commands:
        words = shlex.split(command)
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            assert (name, value) == ("FALLBACK_SAGA_DSN", PAGE_DSN), command
            env[name] = dsn
            continue
        child_env = dict(env)
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            child_env[name] = value
        assert words[0] == "python", command
        child = subprocess.run(
            [sys.executable, *words[1:]], cwd=tmp_path, env=child_env,
            capture_output=True, text=True, timeout=120, check=False,
        )
        printed = (child.stdout + child.stderr).replace(target, PAGE_TARGET)
        assert pg_cluster.password not in printed
        if shown[-1:] == ["Killed"]:  # the shell's word for a SIGKILL
            shown = shown[:-1]
            if child.returncode != -9:
                wrong.append(f"$ {command}: exit status {child.returncode}, not killed")
        if not session_matches(session_lines("\n".join(shown)), session_lines(printed)):
            wrong.append(f"$ {command}\nthe page shows:\n" + "\n".join(shown)
                         + f"\nit printed:\n{printed}")
    assert not wrong, "\n\n".join(wrong)
