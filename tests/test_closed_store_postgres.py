"""``test_closed_store`` on ``PostgresSagaStore``, against a real, throwaway
server: a closed store is refused at once (``StoreClosed``), not retried."""

from __future__ import annotations

import pytest
from conftest_pg import require_driver
from test_closed_store import closed_store_is_refused_at_once

require_driver()  # skips this module without psycopg (fails under CI)

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

pytest_plugins = ["conftest_pg"]


async def test_S13_a_closed_postgres_store_is_refused_at_once_not_retried(
    pg_conninfo: str, pg_schema: str
) -> None:
    await closed_store_is_refused_at_once(
        PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1)
    )


@pytest.mark.parametrize("opened", [False, True], ids=["never-opened", "opened"])
async def test_S13_a_postgres_store_closed_before_its_first_write_is_refused_at_once(
    pg_conninfo: str, pg_schema: str, opened: bool
) -> None:
    """Closed before any saga ran on it: its first write would open it
    (``_open_for``), and the open's refusal is the write's."""
    from test_closed_store import Ctx, counted_saga

    from fallback_saga import SagaInterrupted, StoreClosed

    store = PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1)
    if opened:
        await store.open()
    await store.close()
    asked: list[BaseException] = []
    ran: list[str] = []
    with pytest.raises(SagaInterrupted) as stopped:
        await counted_saga(store, asked, ran).run(Ctx(), saga_id="x")
    assert isinstance(stopped.value.error, StoreClosed), stopped.value.error
    assert asked == []
    assert ran == []
