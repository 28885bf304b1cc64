"""The store contract suite (``fallback_saga.testing``) run against our own stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import MemorySagaStore
from fallback_saga.store.sqlite import SQLiteSagaStore
from fallback_saga.testing import RecoverableStoreContract, SagaStoreContract


class TestMemorySagaStore(SagaStoreContract):
    @pytest.fixture
    def store(self) -> MemorySagaStore:
        return MemorySagaStore()


class TestSQLiteSagaStore(RecoverableStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db") as store:
            yield store


class TestSQLiteSagaStoreWriterProcess(RecoverableStoreContract):
    """Journal writes committed by a process of their own (``writer="process"``)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="process") as store:
            yield store


class TestSQLiteSagaStoreWriterInline(RecoverableStoreContract):
    """No thread: each request runs on the calling thread (``writer="inline"``)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", writer="inline") as store:
            yield store


class TestSQLiteSagaStoreSynchronousNormal(RecoverableStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", synchronous="normal") as store:
            yield store


class TestSQLiteSagaStoreInMemory(RecoverableStoreContract):
    """``:memory:`` works too (one connection serves reads and writes)."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(":memory:") as store:
            yield store


class TestSQLiteSagaStoreThatNeverParks(RecoverableStoreContract):
    """``park_after=None``: the kit's parking checks are skipped, the rest run."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
        async with SQLiteSagaStore(tmp_path / "sagas.db", park_after=None) as store:
            yield store


_PARKING_CHECKS = [
    "test_claim_skips_a_saga_claimed_park_after_times_without_its_lease_given_back",
    "test_a_lease_given_back_in_order_clears_the_count_of_claims",
    "test_a_stale_lease_given_back_does_not_clear_the_count_of_claims",
]


@pytest.mark.parametrize("check", _PARKING_CHECKS)
async def test_S10_the_kits_parking_checks_skip_a_store_that_does_not_park(check: str) -> None:
    """``MemorySagaStore`` (no leases) declares no ``park_after``: the checks
    say so with ``unittest.SkipTest``, a skip to pytest, not a failure."""
    import unittest

    with pytest.raises(unittest.SkipTest, match="does not park sagas"):
        await getattr(RecoverableStoreContract(), check)(MemorySagaStore())


class _SaysItParksButNeverDoes(SQLiteSagaStore):
    """Declares ``park_after`` yet claims as a store that never parks."""

    async def claim(self, **options: Any) -> Any:
        declared, self.park_after = self.park_after, None
        try:
            return await super().claim(**options)
        finally:
            self.park_after = declared


@pytest.mark.parametrize("check", _PARKING_CHECKS[:2])
async def test_S10_the_kits_parking_checks_fail_a_store_that_does_not_park_as_it_says(
    tmp_path: Path, check: str
) -> None:
    async with _SaysItParksButNeverDoes(tmp_path / "sagas.db", park_after=3) as store:
        with pytest.raises(AssertionError, match="after 3"):
            await getattr(RecoverableStoreContract(), check)(store)


# A store that forgets the saga's name, and the kit's check of it, run with
# ``python -O``: the interpreter users may run their suites with.
_BROKEN_STORE_UNDER_O = """
import asyncio, dataclasses, sys
from fallback_saga import MemorySagaStore
from fallback_saga.testing import SagaStoreContract

if not sys.flags.optimize:
    sys.exit("not run with -O: the check would mean nothing")

class ForgetsNames(MemorySagaStore):
    async def load(self, saga_id):
        return dataclasses.replace(await super().load(saga_id), saga_name="Forgotten")

check = SagaStoreContract().test_create_then_load_round_trips_header_context_and_entries
try:
    asyncio.run(check(ForgetsNames()))
except AssertionError as error:
    print("FAILED:", error)
else:
    print("PASSED")
"""


def test_the_contract_kit_fails_a_broken_store_under_python_O(tmp_path: Path) -> None:
    """``fallback_saga.testing`` checks with ``_expect``, not ``assert``:
    under ``python -O`` asserts vanish, and a broken store passed every check."""
    import os
    import subprocess
    import sys

    script = tmp_path / "broken_store_under_o.py"
    script.write_text(_BROKEN_STORE_UNDER_O)
    # The package under test, not whichever one the interpreter has installed.
    package_root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-O", str(script)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": package_root},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "FAILED: record.saga_name == \"OrderSaga\": got 'Forgotten', expected 'OrderSaga'"
    )


def test_the_contract_kit_has_no_assert_statement() -> None:
    """Every check of ``fallback_saga.testing`` goes through ``_expect``: an
    ``assert`` vanishes under ``python -O``, and the check with it (the
    claim-by-name check was written with three, after the others had been
    moved off them)."""
    import ast
    import inspect
    import sys

    import fallback_saga.contract_checks as checks
    import fallback_saga.testing as kit

    # The kit is the module its users import and the modules of its groups of
    # tests (the contracts' bases: one module each, found through the MRO so
    # that a group added later is scanned too) and of its checks.
    modules = {kit, checks} | {
        sys.modules[base.__module__]
        for base in kit.RecoverableStoreContract.__mro__
        if base is not object
    }
    assert len(modules) >= 5, sorted(module.__name__ for module in modules)
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        asserts = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert asserts == [], f"assert statements at lines {asserts} of {module.__file__}"


class _FindsWhatItIsAsked(MemorySagaStore):
    """Says it holds every id it is asked about."""

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        return set(saga_ids)


class _ForgetsAfterFiveHundred(MemorySagaStore):
    """Answers for the first 500 ids asked only (a SQL store that binds one
    statement's worth)."""

    async def existing_saga_ids(self, saga_ids: Collection[str]) -> set[str]:
        return await super().existing_saga_ids(list(saga_ids)[:500])


@pytest.mark.parametrize("broken", [_FindsWhatItIsAsked, _ForgetsAfterFiveHundred])
async def test_S15_the_kits_existing_saga_ids_check_fails_a_store_that_answers_wrong(
    broken: type[MemorySagaStore],
) -> None:
    """``existing_saga_ids`` is how ``show`` and the console find a saga's
    child sagas (S15): a store answering wrong shows children that are not
    there, or hides some. The kit's check must fail such a store."""
    with pytest.raises(AssertionError, match="the ids found of"):
        await SagaStoreContract().test_existing_saga_ids_names_the_ids_the_store_holds(
            broken()
        )
