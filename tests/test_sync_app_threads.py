"""S13 (and S8, S9) for a sync web app: every request in a thread of its own,
with an ``asyncio.run`` of its own, sharing one saga instance, one store, the
circuit breakers and the listeners made at import, while a cron thread runs
``recover()``. Faults, cancellations (a step's own, a request's timeout, a
view returning with its saga in flight) and duplicate requests are drawn
from a fixed seed; ``thread_hunt`` checks the participants' ledger against
the journal, the breakers' counts, and that no other loop's error ("attached
to a different loop", "Event loop is closed") reaches a request, a log, or a
thread's hook. Bigger runs: ``python tests/thread_hunt.py STORE SEED THREADS
REQUESTS [--switch]``."""

from __future__ import annotations

import sys

import pytest
from thread_hunt import STORES, hunt

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the process writer forks")


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("shared_breaker", [False, True], ids=["local", "shared"])
def test_S13_a_sync_apps_threads_share_one_saga_store_and_breakers(
    kind: str, shared_breaker: bool
) -> None:
    report = hunt(kind, seed=20261206, threads=4, requests=10, shared_breaker=shared_breaker,
                  switch_interval=1e-5)
    assert report.problems == []
    # The seed makes each kind of outcome happen (else the run proves less).
    assert {"ok", "failed", "cancelled", "exists"} <= set(report.outcomes), report.outcomes
    assert set(report.statuses) == {"completed", "compensated"}, report.statuses
