"""Fixtures for the PostgreSQL tests (a pytest plugin: ``pytest_plugins`` in
``conftest.py`` loads it).

``pg_cluster`` starts one throwaway PostgreSQL server for the whole session
(see ``pg_cluster.py``) and removes it at the end; ``pg_conninfo`` is its
conninfo; ``pg_schema`` is a fresh, empty PostgreSQL schema per test, so each
test gets empty tables without a new database.

Where PostgreSQL cannot be started (no server binaries, no psycopg) the tests
that need it are skipped with the reason — except under CI (``CI=true``),
where that is a failure: CI must run them. ``FALLBACK_SAGA_PG_OPTIONAL=1``
allows the skip there too.

Use it from a test module with ``pytest_plugins = ["conftest_pg"]`` (and
``require_driver()`` at the module's top when it imports psycopg).
PYTEST_DONT_REWRITE: test modules import this before pytest registers it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pg_cluster import PostgresCluster, PostgresUnavailable


def _must_run() -> bool:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return ci and os.environ.get("FALLBACK_SAGA_PG_OPTIONAL") != "1"


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL tests cannot run: {reason}"
    if _must_run():
        pytest.fail(message + " (CI must run them; see .ci/run)", pytrace=False)
    pytest.skip(message)


def require_driver() -> None:
    """For a test module's top: skip the module when psycopg is missing
    (fail under CI)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as error:
        message = (
            f'PostgreSQL tests cannot run: psycopg is not installed ({error}); '
            f'pip install -e ".[postgres]"'
        )
        if _must_run():
            raise ImportError(message + " (CI must run them; see .ci/run)") from error
        pytest.skip(message, allow_module_level=True)


def throwaway_cluster(**options: Any) -> Iterator[PostgresCluster]:
    """A PostgreSQL server started for the caller and removed afterwards;
    skipped with the reason where it cannot start (a failure under CI).
    ``options``: ``PostgresCluster.start_new``'s."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as error:
        _unavailable(f'psycopg is not installed ({error}); pip install -e ".[postgres]"')
    try:
        cluster = PostgresCluster.start_new(**options)
    except PostgresUnavailable as error:
        _unavailable(str(error))
        raise  # not reached: _unavailable skips or fails
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    yield from throwaway_cluster()


@pytest.fixture(scope="session")
def pg_conninfo(pg_cluster: PostgresCluster) -> str:
    return pg_cluster.conninfo


@pytest.fixture
def pg_schema(pg_conninfo: str) -> Iterator[str]:
    """The name of a PostgreSQL schema no other test uses; dropped afterwards.
    (The store creates it on first use.)"""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
