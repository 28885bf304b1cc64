"""A contract test suite for saga stores, reusable by any third-party store.

Subclass the contract in your own test module and provide a ``store``
fixture that yields a fresh, empty store (``RecoverableStoreContract`` is
imported from this module, ``fallback_saga.testing``)::

    class TestMyStore(RecoverableStoreContract):
        @pytest.fixture
        async def store(self):
            store = MyStore(...)
            yield store
            await store.close()

``SagaStoreContract`` checks what the executor relies on (``create``,
``append``, ``load``); ``RecoverableStoreContract`` adds what recovery and
the operator CLI rely on (``list_sagas``, ``claim`` with leases and fencing
tokens, ``release``, ``purge``), and — for a store that parks sagas whose
resumes keep ending the process, which it declares with an ``int``
attribute ``park_after`` — what parking is: ``claim`` skips a saga claimed
``park_after`` times without its lease given back, ``release`` (and
``defer``, ``hand_off`` where the store has them) clears the count, and
``claim_saga`` by id leases a parked saga all the same. For a store without
``park_after`` those checks are skipped (``unittest.SkipTest``).

What the executor makes of a store's failed write is not the contract's to
check, but a store's author should know it: a write that fails with
``SagaStoreError(..., nothing_written=True)`` is retried as it is; any other
error leaves it in doubt, and the executor reads the saga back before a
retry. A store with ``appends_after`` (its ``append`` takes ``after=N``)
then gets a retry made on the journal's length, which a late landing of
the first try turns into a ``JournalConflict``; a store without it gets no
retry of an append of entries that the read does not find — the run stops
with ``SagaInterrupted.in_doubt`` (a retry sent blind would journal the
entries twice should the first try land after the read).

The tests are ``async def`` methods: run them with pytest-asyncio in
``asyncio_mode = "auto"`` (in strict mode, set ``pytestmark =
pytest.mark.asyncio`` on your subclass and declare the fixture with
``@pytest_asyncio.fixture``). This module imports nothing outside the
standard library and ``fallback_saga``; it never imports pytest.

The recovery tests never sleep. A lease that must already have expired is
taken with a negative ``lease_seconds``, and "not updated for a while" is
asked with a negative ``older_than`` (every saga qualifies): a store must
accept negative durations and compare them like any other.
"""

from __future__ import annotations

from .contract_checks import NESTED_CONTEXT as NESTED_CONTEXT
from .contract_checks import entry
from .contract_journal import JournalDataContract, JournalWritesContract
from .contract_leases import LeasesContract, ParkingContract
from .contract_operator import ListingContract, PurgeContract

__all__ = ["RecoverableStoreContract", "SagaStoreContract", "entry"]

# Each contract is its groups of tests, one base class per group (contract_*.py).
# pytest collects a class's tests base by base, the last base in the MRO
# first: the bases are listed last group first, so that the tests keep the
# order (and ids) they have had — journal writes, data, listing, leases,
# purge, parking — and a subclass's own tests still come last.


class SagaStoreContract(JournalDataContract, JournalWritesContract):
    """What every ``SagaStore`` must do. Provide a ``store`` fixture."""


class RecoverableStoreContract(
    ParkingContract, PurgeContract, LeasesContract, ListingContract, SagaStoreContract
):
    """What a ``RecoverableStore`` must do on top: listing, leases, fencing, purge."""
