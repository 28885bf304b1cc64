"""A process of the released 0.9.0 beside today's code: the package taken
out of git history (``release_090``, skipped where there is none) and
tests/upgrade_app.py run by it (``OldProcess``), stopped at exact points; ``kill`` each one a
test started when it ends."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import upgrade_app
from test_upgrades import old_releases


def extract_090(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as released in 0.9.0, in a directory of its own (the
    test is skipped where there is no git history)."""
    make_old_journals = old_releases()
    old = tmp_path_factory.mktemp("rel090")
    make_old_journals.extract("0.9.0", old)
    return old


class OldProcess:
    """One process of the 0.9.0 release running upgrade_app's ``argv``,
    stopped at ``$UPGRADE_APP_HOLD``'s points until told to go on."""

    def __init__(self, old: Path, env: dict[str, str], *argv: str) -> None:
        path = os.pathsep.join((str(old), str(Path(upgrade_app.__file__).parent)))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys, upgrade_app; upgrade_app.cli(sys.argv[1:])",
             *argv],
            cwd=old, env={**os.environ, **env, "PYTHONPATH": path},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    async def says(self, line: str) -> None:
        """Wait until the process writes ``line`` (it then waits for ``go_on``)."""
        assert self.process.stdout is not None
        said = await asyncio.to_thread(self.process.stdout.readline)
        assert said.strip() == line, (said, self.process.stderr and self.process.stderr.read())

    def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def rest(self) -> str:
        """What the process wrote to standard output since, once it has ended."""
        assert self.process.stdout is not None
        return self.process.stdout.read()

    async def ends(self) -> int:
        return await asyncio.to_thread(self.process.wait, 60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
