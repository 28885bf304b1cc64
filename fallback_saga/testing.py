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

import asyncio
import math
import unittest
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import JournalConflict, LeaseLost, SagaAlreadyExists, SagaBusy, SagaNotFound
from .status import SagaStatus, StepStatus
from .store.base import (
    Action,
    Branch,
    JournalEntry,
    Lease,
    RecoverableStore,
    SagaRecord,
    SagaStore,
    claims_by_name,
    is_conditional,
)

__all__ = ["RecoverableStoreContract", "SagaStoreContract", "entry"]

# The most characters of a value's repr a failed check shows.
_MOST_SHOWN = 2000
_ALREADY_PAST = -1.0  # seconds: "older than -1 s" is every saga; a lease of -1 s has expired


def entry(
    position: int,
    step: str,
    status: StepStatus = StepStatus.STARTED,
    *,
    branch: Branch = "primary",
    action: Action = "act",
    attempt: int = 1,
    error: str | None = None,
    at: float = 1_700_000_000.5,
) -> JournalEntry:
    """A ``JournalEntry`` with defaults, for tests."""
    return JournalEntry(position, step, branch, action, status, attempt, error, at)


def _expect(condition: object, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds.

    Not an ``assert``: under ``python -O`` (or ``PYTHONOPTIMIZE``) asserts
    are compiled away, and every check of the suite would pass whatever the
    store did."""
    if not condition:
        raise AssertionError(message)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MOST_SHOWN else f"{text[:_MOST_SHOWN]}… ({len(text)} characters)"


def _expect_equal(actual: object, expected: object, what: str) -> None:
    """``_expect(actual == expected)``, saying what each side was."""
    if not actual == expected:
        raise AssertionError(f"{what}: got {_shown(actual)}, expected {_shown(expected)}")


def _expect_is(actual: object, expected: object, what: str) -> None:
    """``_expect(actual is expected)``, saying what each side was."""
    if actual is not expected:
        raise AssertionError(f"{what}: got {_shown(actual)}, expected {_shown(expected)}")


_Raised = TypeVar("_Raised", bound=BaseException)


async def _raises(kind: type[_Raised], call: Callable[[], Any]) -> _Raised:
    """Await ``call()`` and return the ``kind`` error it raised (the suite does
    not import pytest)."""
    try:
        await call()
    except kind as error:
        return error
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


def _first_run(saga_id: str) -> Lease:
    """The token a first run writes with (see ``Lease``)."""
    return Lease(saga_id=saga_id, owner="", token=0, expires_at=math.inf)


async def _new_saga(
    store: SagaStore,
    saga_id: str,
    *,
    saga_name: str = "OrderSaga",
    status: SagaStatus = SagaStatus.RUNNING,
    context: dict[str, Any] | None = None,
    entries: Sequence[JournalEntry] = (),
) -> None:
    await store.create(
        saga_id,
        saga_name,
        "fp-1",
        {"order_id": saga_id} if context is None else context,
        list(entries) or [entry(0, "reserve")],
        status=status,
    )


# A context with every shape the journal form of a context can take.
NESTED_CONTEXT: dict[str, Any] = {
    "order_id": "o-42",
    "amount": 1999,
    "big": 2**63 + 7,
    "rate": 0.1,
    "negative": -3.5e-7,
    "paid": False,
    "coupon": None,
    "text": "ünïcødé ✓ \u2028 \"quoted\" \\ back",
    "empty_list": [],
    "empty_dict": {},
    "items": [
        {"sku": "apple", "qty": 2, "tags": ["red", "fruit"]},
        {"sku": "pear", "qty": 1, "tags": []},
    ],
    "address": {"street": "Main St", "lines": ["1", "2"], "geo": {"lat": 1.5, "lon": -2.25}},
    "matrix": [[1, 2], [3, [4, [5, {"deep": True}]]]],
}


class SagaStoreContract:
    """What every ``SagaStore`` must do. Provide a ``store`` fixture."""

    # ------------------------------------------------------------------ create / load

    async def test_create_then_load_round_trips_header_context_and_entries(
        self, store: SagaStore
    ) -> None:
        entries = [
            entry(0, "reserve", StepStatus.STARTED, at=1_700_000_000.25),
            entry(0, "reserve", StepStatus.COMPLETED, at=1_700_000_001.5),
            entry(1, "charge", StepStatus.STARTED, branch="fallback", attempt=2),
        ]
        await store.create(
            "saga-1", "OrderSaga", "fp-abc", {"order_id": "o-1", "n": 3}, entries
        )
        record = await store.load("saga-1")
        _expect(isinstance(record, SagaRecord), "isinstance(record, SagaRecord)")
        _expect_equal(record.saga_id, "saga-1", 'record.saga_id == "saga-1"')
        _expect_equal(record.saga_name, "OrderSaga", 'record.saga_name == "OrderSaga"')
        _expect_equal(record.fingerprint, "fp-abc", 'record.fingerprint == "fp-abc"')
        _expect_is(record.status, SagaStatus.RUNNING, "record.status is SagaStatus.RUNNING")
        _expect_equal(
            record.context,
            {"order_id": "o-1", "n": 3},
            'record.context == {"order_id": "o-1", "n": 3}',
        )
        _expect_equal(record.history, entries, "record.history == entries")
        _expect(
            all(isinstance(e, JournalEntry) for e in record.history),
            "all(isinstance(e, JournalEntry) for e in record.history)",
        )
        _expect(
            all(type(e.status) is StepStatus for e in record.history),
            "all(type(e.status) is StepStatus for e in record.history)",
        )

    async def test_create_records_times_and_a_version(self, store: SagaStore) -> None:
        await _new_saga(store, "saga-1")
        record = await store.load("saga-1")
        _expect(record.created_at > 0, "record.created_at > 0")
        _expect(record.updated_at >= record.created_at, "record.updated_at >= record.created_at")
        _expect(record.version >= 1, "record.version >= 1")

    async def test_create_with_a_status_keeps_it(self, store: SagaStore) -> None:
        await _new_saga(store, "saga-1", status=SagaStatus.COMPENSATING)
        _expect_is(
            (await store.load("saga-1")).status,
            SagaStatus.COMPENSATING,
            '(await store.load("saga-1")).status is SagaStatus.COMPENSATING',
        )

    async def test_create_with_no_entries(self, store: SagaStore) -> None:
        await store.create("saga-1", "OrderSaga", "fp", {}, [])
        record = await store.load("saga-1")
        _expect_equal(record.history, [], "record.history == []")
        _expect_equal(record.context, {}, "record.context == {}")

    async def test_create_with_a_taken_id_raises_saga_already_exists(
        self, store: SagaStore
    ) -> None:
        await _new_saga(store, "saga-1", context={"first": True})
        error = await _raises(
            SagaAlreadyExists,
            lambda: store.create("saga-1", "Other", "fp-2", {"first": False}, [entry(0, "x")]),
        )
        _expect("saga-1" in str(error), '"saga-1" in str(error)')
        record = await store.load("saga-1")  # the first saga is untouched
        _expect_equal(record.saga_name, "OrderSaga", 'record.saga_name == "OrderSaga"')
        _expect_equal(record.context, {"first": True}, 'record.context == {"first": True}')
        _expect_equal(len(record.history), 1, "len(record.history) == 1")

    async def test_load_of_an_unknown_id_raises_saga_not_found(self, store: SagaStore) -> None:
        error = await _raises(SagaNotFound, lambda: store.load("nope"))
        _expect("nope" in str(error), '"nope" in str(error)')

    async def test_append_to_an_unknown_id_raises_saga_not_found(self, store: SagaStore) -> None:
        await _raises(SagaNotFound, lambda: store.append("nope", [entry(0, "reserve")]))
        await _raises(SagaNotFound, lambda: store.load("nope"))  # and it was not created

    # ------------------------------------------------------------------ append

    async def test_append_keeps_every_entry_in_order(self, store: SagaStore) -> None:
        first = entry(0, "reserve", StepStatus.STARTED)
        await _new_saga(store, "saga-1", entries=[first])
        batches = [
            [entry(0, "reserve", StepStatus.COMPLETED), entry(1, "charge", StepStatus.STARTED)],
            [entry(1, "charge", StepStatus.FAILED, error="Boom: declined")],
            [],
            [
                entry(0, "reserve", StepStatus.STARTED, action="compensate"),
                entry(0, "reserve", StepStatus.COMPLETED, action="compensate", attempt=3),
            ],
        ]
        for batch in batches:
            await store.append("saga-1", batch)
        record = await store.load("saga-1")
        _expect_equal(
            record.history,
            [first, *(e for batch in batches for e in batch)],
            "record.history == [first, *(e for batch in batches for e in batch)]",
        )
        _expect_equal(
            record.history[3].error,
            "Boom: declined",
            'record.history[3].error == "Boom: declined"',
        )

    async def test_an_append_after_the_journal_length_writes_only_at_that_length(
        self, store: SagaStore
    ) -> None:
        """For stores with ``appends_after``: ``append(..., after=N)`` writes only
        while the journal holds N entries, else ``JournalConflict`` and nothing
        is written — what keeps a retried in-doubt write from landing twice."""
        if not is_conditional(store):
            # An optional capability. Without it, an append whose try failed
            # in doubt (an error without ``nothing_written``) and whose
            # reconciling read does not find it is never sent again: the run
            # stops with ``SagaInterrupted.in_doubt`` (see SagaStore.append).
            return
        await _new_saga(store, "saga-1")  # one entry
        append: Any = store.append
        await append("saga-1", [entry(0, "reserve", StepStatus.COMPLETED)], after=1)
        error = await _raises(
            JournalConflict,
            lambda: append(
                "saga-1", [entry(0, "reserve", StepStatus.COMPLETED)],
                status=SagaStatus.FAILED, context={"n": 666}, after=1,
            ),
        )
        _expect(isinstance(error, JournalConflict), "isinstance(error, JournalConflict)")
        _expect_equal(
            (error.expected, error.actual),
            (1, 2),
            "(error.expected, error.actual) == (1, 2)",
        )
        record = await store.load("saga-1")
        _expect_equal(len(record.history), 2, "len(record.history) == 2")
        _expect_is(record.status, SagaStatus.RUNNING, "record.status is SagaStatus.RUNNING")
        _expect_equal(
            record.context,
            {"order_id": "saga-1"},
            'record.context == {"order_id": "saga-1"}',
        )
        await append("saga-1", [], status=SagaStatus.COMPLETED, after=2)
        _expect_is(
            (await store.load("saga-1")).status,
            SagaStatus.COMPLETED,
            '(await store.load("saga-1")).status is SagaStatus.COMPLETED',
        )

    async def test_append_sets_status_and_context_when_given(self, store: SagaStore) -> None:
        await _new_saga(store, "saga-1", context={"n": 0})
        await store.append(
            "saga-1", [entry(0, "reserve", StepStatus.COMPLETED)], context={"n": 1}
        )
        record = await store.load("saga-1")
        _expect_equal(record.context, {"n": 1}, 'record.context == {"n": 1}')
        _expect_is(record.status, SagaStatus.RUNNING, "record.status is SagaStatus.RUNNING")
        await store.append("saga-1", [], status=SagaStatus.COMPENSATING)
        record = await store.load("saga-1")
        _expect_is(
            record.status,
            SagaStatus.COMPENSATING,
            "record.status is SagaStatus.COMPENSATING",
        )
        _expect_equal(record.context, {"n": 1}, 'record.context == {"n": 1}')  # kept when not given

    async def test_append_bumps_version_and_updated_at(self, store: SagaStore) -> None:
        await _new_saga(store, "saga-1")
        before = await store.load("saga-1")
        await store.append("saga-1", [entry(0, "reserve", StepStatus.COMPLETED)])
        after = await store.load("saga-1")
        _expect(after.version > before.version, "after.version > before.version")
        _expect(after.updated_at >= before.updated_at, "after.updated_at >= before.updated_at")
        _expect_equal(after.created_at, before.created_at, "after.created_at == before.created_at")

    async def test_final_status_is_retained(self, store: SagaStore) -> None:
        for number, final in enumerate(
            (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
        ):
            saga_id = f"saga-{number}"
            await _new_saga(store, saga_id)
            await store.append(
                saga_id, [entry(0, "reserve", StepStatus.COMPLETED)], status=final
            )
            record = await store.load(saga_id)
            _expect_is(record.status, final, "record.status is final")
            _expect_equal(len(record.history), 2, "len(record.history) == 2")
            await store.append(saga_id, [entry(9, "late")])  # a write without a status
            _expect_is(
                (await store.load(saga_id)).status,
                final,
                "(await store.load(saga_id)).status is final",
            )

    async def test_sagas_do_not_share_history(self, store: SagaStore) -> None:
        await _new_saga(store, "saga-a", entries=[entry(0, "a0")])
        await _new_saga(store, "saga-b", entries=[entry(0, "b0")])
        await store.append("saga-a", [entry(1, "a1")], context={"who": "a"})
        await store.append("saga-b", [entry(1, "b1")], status=SagaStatus.COMPLETED)
        a, b = await store.load("saga-a"), await store.load("saga-b")
        _expect_equal(
            [e.step for e in a.history],
            ["a0", "a1"],
            '[e.step for e in a.history] == ["a0", "a1"]',
        )
        _expect_equal(
            [e.step for e in b.history],
            ["b0", "b1"],
            '[e.step for e in b.history] == ["b0", "b1"]',
        )
        _expect_equal(a.context, {"who": "a"}, 'a.context == {"who": "a"}')
        _expect_is(a.status, SagaStatus.RUNNING, "a.status is SagaStatus.RUNNING")
        _expect_is(b.status, SagaStatus.COMPLETED, "b.status is SagaStatus.COMPLETED")

    async def test_concurrent_writes_to_many_sagas_are_all_kept(self, store: SagaStore) -> None:
        async def run(number: int) -> None:
            saga_id = f"saga-{number}"
            await _new_saga(store, saga_id, entries=[entry(0, "s0")])
            for position in range(1, 4):
                await store.append(
                    saga_id, [entry(position, f"s{position}")], context={"at": position}
                )
            await store.append(saga_id, [], status=SagaStatus.COMPLETED)

        await asyncio.gather(*(run(number) for number in range(50)))
        for number in range(50):
            record = await store.load(f"saga-{number}")
            _expect_equal(
                [e.step for e in record.history],
                ["s0", "s1", "s2", "s3"],
                '[e.step for e in record.history] == ["s0", "s1", "s2", "s3"]',
            )
            _expect_equal(record.context, {"at": 3}, 'record.context == {"at": 3}')
            _expect_is(record.status, SagaStatus.COMPLETED, "record.status is SagaStatus.COMPLETED")

    # ------------------------------------------------------------------ data

    async def test_context_round_trips_nested_json_values(self, store: SagaStore) -> None:
        await store.create("saga-1", "OrderSaga", "fp", NESTED_CONTEXT, [entry(0, "reserve")])
        _expect_equal(
            (await store.load("saga-1")).context,
            NESTED_CONTEXT,
            '(await store.load("saga-1")).context == NESTED_CONTEXT',
        )
        changed = {**NESTED_CONTEXT, "items": [], "amount": 0}
        await store.append("saga-1", [], context=changed)
        loaded = (await store.load("saga-1")).context
        _expect_equal(loaded, changed, "loaded == changed")
        _expect_is(type(loaded["amount"]), int, 'type(loaded["amount"]) is int')
        _expect_is(type(loaded["rate"]), float, 'type(loaded["rate"]) is float')
        _expect_is(type(loaded["paid"]), bool, 'type(loaded["paid"]) is bool')

    async def test_entry_values_round_trip(self, store: SagaStore) -> None:
        odd = entry(
            7, "ünïcødé step", StepStatus.FAILED, branch="fallback", action="compensate",
            attempt=12, error="ValueError: line 1\nline 2", at=1_712_345_678.123456,
        )
        await _new_saga(store, "saga-1", entries=[odd])
        (loaded,) = (await store.load("saga-1")).history
        _expect_equal(loaded[:-1], odd[:-1], "loaded[:-1] == odd[:-1]")
        _expect_is(type(loaded.status), StepStatus, "type(loaded.status) is StepStatus")
        _expect(
            math.isclose(loaded.at, odd.at, rel_tol=0, abs_tol=1e-6),
            "math.isclose(loaded.at, odd.at, rel_tol=0, abs_tol=1e-6)",
        )  # microseconds kept

    async def test_loaded_records_are_copies(self, store: SagaStore) -> None:
        await store.create(
            "saga-1", "OrderSaga", "fp", {"items": [{"sku": "apple"}], "n": 1},
            [entry(0, "reserve")],
        )
        record = await store.load("saga-1")
        record.context["n"] = 99
        record.context["items"][0]["sku"] = "changed"
        record.context["items"].append("more")
        record.history.append(entry(5, "forged"))
        record.status = SagaStatus.FAILED
        again = await store.load("saga-1")
        _expect_equal(
            again.context,
            {"items": [{"sku": "apple"}], "n": 1},
            'again.context == {"items": [{"sku": "apple"}], "n": 1}',
        )
        _expect_equal(
            [e.step for e in again.history],
            ["reserve"],
            '[e.step for e in again.history] == ["reserve"]',
        )
        _expect_is(again.status, SagaStatus.RUNNING, "again.status is SagaStatus.RUNNING")

    async def test_the_store_keeps_no_reference_to_the_callers_data(
        self, store: SagaStore
    ) -> None:
        context: dict[str, Any] = {"items": ["apple"]}
        entries = [entry(0, "reserve")]
        await store.create("saga-1", "OrderSaga", "fp", context, entries)
        context["items"].append("pear")
        entries.append(entry(1, "forged"))
        update: dict[str, Any] = {"items": ["kiwi"]}
        await store.append("saga-1", [], context=update)
        update["items"].clear()
        record = await store.load("saga-1")
        _expect_equal(record.context, {"items": ["kiwi"]}, 'record.context == {"items": ["kiwi"]}')
        _expect_equal(
            [e.step for e in record.history],
            ["reserve"],
            '[e.step for e in record.history] == ["reserve"]',
        )

    async def test_existing_saga_ids_names_the_ids_the_store_holds(
        self, store: SagaStore
    ) -> None:
        """For stores with ``existing_saga_ids`` (optional; the built-in ones
        have it, and ``show`` and the console find a saga's child sagas with
        it): exactly the ids of those asked that ``load`` finds — each once,
        whatever the number asked (more than a statement binds, for a SQL
        store), and none for an id no store can hold."""
        existing_saga_ids: Any = getattr(store, "existing_saga_ids", None)
        if existing_saga_ids is None:
            return  # optional: callers then ask one id at a time
        for saga_id in ("order-1", "order-1/Charge", "ünï ✓", "order-1600"):
            await _new_saga(store, saga_id)
        _expect_equal(await existing_saga_ids([]), set(), "the ids found of none asked")
        asked = ["order-1", "order-1/Charge", "order-1/Ship", "ünï ✓", "order-1", "",
                 "order-1\x00", "x" * 100_000]
        _expect_equal(await existing_saga_ids(asked), {"order-1", "order-1/Charge", "ünï ✓"},
                      "the ids found of a few asked")
        many = [f"order-{number}" for number in range(2000)]
        _expect_equal(await existing_saga_ids(many), {"order-1", "order-1600"},
                      "the ids found of 2,000 asked")


class RecoverableStoreContract(SagaStoreContract):
    """What a ``RecoverableStore`` must do on top: listing, leases, fencing, purge."""

    # ------------------------------------------------------------------ list

    async def test_list_sagas_is_newest_first(self, store: RecoverableStore) -> None:
        # Sagas created one after the other list in reverse order of creation,
        # even when a coarse clock gives them the same created_at.
        for number in range(4):
            await _new_saga(store, f"saga-{number}")
        listing = await store.list_sagas()
        _expect_equal(
            [s.saga_id for s in listing],
            ["saga-3", "saga-2", "saga-1", "saga-0"],
            '[s.saga_id for s in listing] == ["saga-3", "saga-2", "saga-1", "saga-0"]',
        )
        created = [s.created_at for s in listing]
        _expect_equal(
            created,
            sorted(created, reverse=True),
            "created == sorted(created, reverse=True)",
        )

    async def test_list_sagas_filters_by_status_and_name_and_limits(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "o-1", saga_name="OrderSaga")
        await _new_saga(store, "o-2", saga_name="OrderSaga", status=SagaStatus.COMPLETED)
        await _new_saga(store, "r-1", saga_name="RefundSaga")
        await _new_saga(store, "r-2", saga_name="RefundSaga", status=SagaStatus.COMPLETED)
        completed = await store.list_sagas(status=SagaStatus.COMPLETED)
        _expect_equal(
            {s.saga_id for s in completed},
            {"o-2", "r-2"},
            '{s.saga_id for s in completed} == {"o-2", "r-2"}',
        )
        refunds = await store.list_sagas(saga_name="RefundSaga")
        _expect_equal(
            {s.saga_id for s in refunds},
            {"r-1", "r-2"},
            '{s.saga_id for s in refunds} == {"r-1", "r-2"}',
        )
        both = await store.list_sagas(status=SagaStatus.RUNNING, saga_name="RefundSaga")
        _expect_equal([s.saga_id for s in both], ["r-1"], '[s.saga_id for s in both] == ["r-1"]')
        _expect_equal(
            len(await store.list_sagas(limit=3)),
            3,
            "len(await store.list_sagas(limit=3)) == 3",
        )
        _expect_equal(await store.list_sagas(limit=0), [], "await store.list_sagas(limit=0) == []")
        _expect_equal(
            await store.list_sagas(saga_name="Unknown"),
            [],
            'await store.list_sagas(saga_name="Unknown") == []',
        )

    async def test_list_sagas_summarizes(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1", saga_name="OrderSaga")
        await store.append("saga-1", [], status=SagaStatus.COMPENSATING)
        (summary,) = await store.list_sagas()
        record = await store.load("saga-1")
        _expect_equal(summary.saga_id, "saga-1", 'summary.saga_id == "saga-1"')
        _expect_equal(summary.saga_name, "OrderSaga", 'summary.saga_name == "OrderSaga"')
        _expect_is(
            summary.status,
            SagaStatus.COMPENSATING,
            "summary.status is SagaStatus.COMPENSATING",
        )
        _expect_equal(
            summary.created_at,
            record.created_at,
            "summary.created_at == record.created_at",
        )
        _expect_equal(
            summary.updated_at,
            record.updated_at,
            "summary.updated_at == record.updated_at",
        )
        _expect_is(summary.lease_owner, None, "summary.lease_owner is None")
        _expect_is(summary.lease_expires_at, None, "summary.lease_expires_at is None")

    # ------------------------------------------------------------------ claim

    async def test_claim_takes_only_running_and_compensating_sagas(
        self, store: RecoverableStore
    ) -> None:
        for status in SagaStatus:
            if status is not SagaStatus.PENDING:
                await _new_saga(store, f"saga-{status.value}", status=status)
        leases = await store.claim(
            owner="worker-1", lease_seconds=60, older_than=_ALREADY_PAST, limit=100
        )
        _expect_equal(
            {lease.saga_id for lease in leases},
            {"saga-running", "saga-compensating"},
            '{lease.saga_id for lease in leases} == {"saga-running", "saga-compensating"}',
        )

    async def test_claim_skips_recently_updated_sagas(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1")
        leases = await store.claim(owner="worker-1", lease_seconds=60, older_than=3600, limit=10)
        _expect_equal(leases, [], "leases == []")

    async def test_claim_sets_a_lease_with_a_new_fencing_token(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1")
        (lease,) = await store.claim(
            owner="worker-1", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        _expect(isinstance(lease, Lease), "isinstance(lease, Lease)")
        _expect_equal(lease.saga_id, "saga-1", 'lease.saga_id == "saga-1"')
        _expect_equal(lease.owner, "worker-1", 'lease.owner == "worker-1"')
        (summary,) = await store.list_sagas()
        _expect_equal(summary.lease_owner, "worker-1", 'summary.lease_owner == "worker-1"')
        _expect_equal(
            summary.lease_expires_at,
            lease.expires_at,
            "summary.lease_expires_at == lease.expires_at",
        )
        _expect(lease.expires_at > summary.updated_at, "lease.expires_at > summary.updated_at")

    async def test_a_leased_saga_is_not_claimed_again(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1")
        first = await store.claim(
            owner="worker-1", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        second = await store.claim(
            owner="worker-2", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        _expect_equal(len(first), 1, "len(first) == 1")
        _expect_equal(second, [], "second == []")

    async def test_an_expired_lease_can_be_claimed_with_a_higher_token(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1")
        (first,) = await store.claim(
            owner="worker-1", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
        )
        (second,) = await store.claim(
            owner="worker-2", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        _expect_equal(second.owner, "worker-2", 'second.owner == "worker-2"')
        _expect(second.token > first.token, "second.token > first.token")

    async def test_claim_respects_the_limit(self, store: RecoverableStore) -> None:
        for number in range(5):
            await _new_saga(store, f"saga-{number}")
        first = await store.claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=2)
        rest = await store.claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=10)
        _expect_equal(len(first), 2, "len(first) == 2")
        _expect_equal(len(rest), 3, "len(rest) == 3")
        _expect_equal(
            {lease.saga_id for lease in first + rest},
            {f"saga-{n}" for n in range(5)},
            '{lease.saga_id for lease in first + rest} == {f"saga-{n}" for n in range(5)}',
        )
        none = await store.claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=0)
        _expect_equal(none, [], "none == []")

    async def test_claim_by_names_takes_only_sagas_of_those_names(
        self, store: RecoverableStore
    ) -> None:
        """For stores whose ``claim`` takes ``names`` (``claims_by_name``): a
        claim takes only sagas of those names, and the limit counts only them
        — what lets services sharing a store each recover their own."""
        if not claims_by_name(store):
            return  # an optional capability (a worker then claims every saga)
        await _new_saga(store, "billing-1", saga_name="BillingSaga")
        await _new_saga(store, "order-1")
        await _new_saga(store, "billing-2", saga_name="BillingSaga")
        await _new_saga(store, "order-2")
        claim: Any = store.claim
        taken = await claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=1,
                            names=["OrderSaga"])
        taken += await claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=10,
                             names=["OrderSaga", "NoSuchSaga"])
        _expect_equal(sorted(lease.saga_id for lease in taken), ["order-1", "order-2"],
                      "the sagas a claim by the name OrderSaga took")
        _expect_equal(await claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST,
                                  limit=10, names=[]), [],
                      "what a claim by no name took")
        rest = await store.claim(owner="w", lease_seconds=60, older_than=_ALREADY_PAST,
                                 limit=10)
        _expect_equal(sorted(lease.saga_id for lease in rest), ["billing-1", "billing-2"],
                      "what a claim by any name took after them")

    async def test_concurrent_claims_never_share_a_saga(self, store: RecoverableStore) -> None:
        for number in range(30):
            await _new_saga(store, f"saga-{number}")
        claims = await asyncio.gather(
            *(
                store.claim(owner=f"w{n}", lease_seconds=60, older_than=_ALREADY_PAST, limit=4)
                for n in range(10)
            )
        )
        claimed = [lease.saga_id for leases in claims for lease in leases]
        _expect(len(claimed) == len(set(claimed)) == 30, "len(claimed) == len(set(claimed)) == 30")

    # ------------------------------------------------------------------ fencing

    async def test_append_under_the_current_lease_writes(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1")
        (lease,) = await store.claim(
            owner="w", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        await store.append(
            "saga-1", [entry(0, "reserve", StepStatus.COMPLETED)],
            status=SagaStatus.COMPLETED, context={"done": True}, fence=lease,
        )
        record = await store.load("saga-1")
        _expect_is(record.status, SagaStatus.COMPLETED, "record.status is SagaStatus.COMPLETED")
        _expect_equal(record.context, {"done": True}, 'record.context == {"done": True}')
        _expect_equal(len(record.history), 2, "len(record.history) == 2")

    async def test_append_under_a_stale_lease_raises_lease_lost_and_writes_nothing(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1", context={"n": 0})
        (stale,) = await store.claim(
            owner="w1", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
        )
        (current,) = await store.claim(
            owner="w2", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        before = await store.load("saga-1")
        error = await _raises(
            LeaseLost,
            lambda: store.append(
                "saga-1", [entry(1, "forged")], status=SagaStatus.FAILED,
                context={"n": 666}, fence=stale,
            ),
        )
        _expect("saga-1" in str(error), '"saga-1" in str(error)')
        after = await store.load("saga-1")
        _expect_equal(after.history, before.history, "after.history == before.history")
        _expect_is(after.status, SagaStatus.RUNNING, "after.status is SagaStatus.RUNNING")
        _expect_equal(after.context, {"n": 0}, 'after.context == {"n": 0}')
        _expect_equal(after.version, before.version, "after.version == before.version")
        await store.append("saga-1", [entry(1, "real")], fence=current)  # the new owner can
        _expect_equal(
            [e.step for e in (await store.load("saga-1")).history][-1],
            "real",
            '[e.step for e in (await store.load("saga-1")).history][-1] == "real"',
        )

    async def test_append_under_a_lease_of_an_unknown_saga_raises_saga_not_found(
        self, store: RecoverableStore
    ) -> None:
        lease = Lease(saga_id="nope", owner="w", token=1, expires_at=4_000_000_000.0)
        await _raises(SagaNotFound, lambda: store.append("nope", [], fence=lease))

    # ------------------------------------------------------------------ release

    async def test_release_lets_the_saga_be_claimed_again(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1")
        (lease,) = await store.claim(
            owner="w1", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        await store.release(lease)
        (summary,) = await store.list_sagas()
        _expect_is(summary.lease_owner, None, "summary.lease_owner is None")
        (again,) = await store.claim(
            owner="w2", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        _expect(again.token > lease.token, "again.token > lease.token")

    async def test_release_of_a_stale_lease_leaves_the_current_one(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1")
        (stale,) = await store.claim(
            owner="w1", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
        )
        (current,) = await store.claim(
            owner="w2", lease_seconds=60, older_than=_ALREADY_PAST, limit=10
        )
        await store.release(stale)
        (summary,) = await store.list_sagas()
        _expect_equal(summary.lease_owner, "w2", 'summary.lease_owner == "w2"')
        _expect_equal(
            summary.lease_expires_at,
            current.expires_at,
            "summary.lease_expires_at == current.expires_at",
        )
        _expect_equal(
            await store.claim(owner="w3", lease_seconds=60, older_than=_ALREADY_PAST, limit=10),
            [],
            "a claim while another worker's unexpired lease holds the saga",
        )

    # ------------------------------------------------------------------ claim_saga / renew

    async def test_claim_saga_leases_one_saga_whatever_its_age(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1")
        lease = await store.claim_saga("saga-1", owner="w1", lease_seconds=60)
        _expect_equal(
            (lease.saga_id, lease.owner),
            ("saga-1", "w1"),
            '(lease.saga_id, lease.owner) == ("saga-1", "w1")',
        )
        # The first run writes with token 0: it is fenced out.
        _expect(lease.token >= 1, "lease.token >= 1")
        await _raises(LeaseLost, lambda: store.append("saga-1", [], fence=_first_run("saga-1")))
        await store.append("saga-1", [entry(1, "mine")], fence=lease)

    async def test_claim_saga_refuses_a_saga_another_worker_holds(
        self, store: RecoverableStore
    ) -> None:
        await _new_saga(store, "saga-1")
        await store.claim_saga("saga-1", owner="w1", lease_seconds=60)
        await _raises(
            SagaBusy, lambda: store.claim_saga("saga-1", owner="w2", lease_seconds=60)
        )
        await _raises(
            SagaNotFound, lambda: store.claim_saga("nope", owner="w2", lease_seconds=60)
        )

    async def test_renew_extends_a_current_lease_and_refuses_a_lost_one(
        self, store: RecoverableStore
    ) -> None:
        renew = getattr(store, "renew", None)
        if renew is None:
            return  # renew is optional: a store without it gets no heartbeat
        await _new_saga(store, "saga-1")
        (old,) = await store.claim(
            owner="w1", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
        )
        renewed = await renew(old, 60)
        _expect_equal(renewed.token, old.token, "renewed.token == old.token")
        _expect(renewed.expires_at > old.expires_at, "renewed.expires_at > old.expires_at")
        (summary,) = await store.list_sagas()
        _expect_equal(summary.lease_owner, "w1", 'summary.lease_owner == "w1"')
        await renew(renewed, _ALREADY_PAST)  # w1 stops beating: the lease runs out
        newer = await store.claim_saga("saga-1", owner="w2", lease_seconds=60)
        _expect(newer.token > old.token, "newer.token > old.token")
        await _raises(LeaseLost, lambda: renew(old, 60))

    # ------------------------------------------------------------------ purge

    async def test_purge_deletes_only_finished_sagas(self, store: RecoverableStore) -> None:
        for status in SagaStatus:
            if status is not SagaStatus.PENDING:
                await _new_saga(store, f"saga-{status.value}", status=status)
        every_final = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=every_final),
            3,
            "await store.purge(older_than=_ALREADY_PAST, statuses=every_final) == 3",
        )
        for status in every_final:
            saga_id = f"saga-{status.value}"
            await _raises(SagaNotFound, lambda: store.load(saga_id))  # noqa: B023
        remaining = {s.saga_id for s in await store.list_sagas()}
        _expect_equal(
            remaining,
            {"saga-running", "saga-compensating"},
            'remaining == {"saga-running", "saga-compensating"}',
        )
        _expect_equal(
            len((await store.load("saga-running")).history),
            1,
            'len((await store.load("saga-running")).history) == 1',
        )
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=every_final),
            0,
            "await store.purge(older_than=_ALREADY_PAST, statuses=every_final) == 0",
        )

    async def test_purge_keeps_failed_sagas_unless_named(self, store: RecoverableStore) -> None:
        """A FAILED saga is parked for an operator: by default a purge leaves it."""
        for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
            await _new_saga(store, f"saga-{status.value}", status=status)
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST),
            2,
            "await store.purge(older_than=_ALREADY_PAST) == 2",
        )
        _expect_is(
            (await store.load("saga-failed")).status,
            SagaStatus.FAILED,
            '(await store.load("saga-failed")).status is SagaStatus.FAILED',
        )
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]),
            1,
            'await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]) == 1',
        )
        await _raises(SagaNotFound, lambda: store.load("saga-failed"))

    async def test_purge_takes_only_the_statuses_named(self, store: RecoverableStore) -> None:
        for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
            await _new_saga(store, f"saga-{status.value}", status=status)
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=[SagaStatus.COMPENSATED]),
            1,
            "await store.purge(older_than=_ALREADY_PAST, statuses=[SagaStatus.COMPENSATED]) == 1",
        )
        remaining = {s.saga_id for s in await store.list_sagas()}
        _expect_equal(
            remaining,
            {"saga-completed", "saga-failed"},
            'remaining == {"saga-completed", "saga-failed"}',
        )

    async def test_purge_refuses_statuses_it_cannot_take(self, store: RecoverableStore) -> None:
        """Not a status, a live one, none at all, or a bare string (read as its
        characters): refused before anything is deleted."""
        await _new_saga(store, "saga-1", status=SagaStatus.COMPLETED)
        cases: list[tuple[Any, type[Exception]]] = [
            ([], ValueError), ([SagaStatus.RUNNING], ValueError), (["compensating"], ValueError),
            (["done"], ValueError), ("completed", TypeError), (None, TypeError),
        ]
        for statuses, error in cases:
            await _raises(
                error,
                lambda: store.purge(older_than=_ALREADY_PAST, statuses=statuses),  # noqa: B023
            )
        _expect_is(
            (await store.load("saga-1")).status,
            SagaStatus.COMPLETED,
            '(await store.load("saga-1")).status is SagaStatus.COMPLETED',
        )

    async def test_purge_keeps_recently_finished_sagas(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1", status=SagaStatus.COMPLETED)
        _expect_equal(
            await store.purge(older_than=3600),
            0,
            "await store.purge(older_than=3600) == 0",
        )
        _expect_is(
            (await store.load("saga-1")).status,
            SagaStatus.COMPLETED,
            '(await store.load("saga-1")).status is SagaStatus.COMPLETED',
        )

    async def test_purge_keeps_a_finished_saga_a_lease_holds(
        self, store: RecoverableStore
    ) -> None:
        """An operator's ``retry-unwinding`` leases a FAILED saga
        (``claim_saga``) before it writes COMPENSATING: a purge in between
        must not delete the saga from under it. Given back, it is purged."""
        await _new_saga(store, "saga-failed", status=SagaStatus.FAILED)
        lease = await store.claim_saga("saga-failed", owner="operator", lease_seconds=3600)
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]),
            0,
            'await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]) == 0',
        )
        _expect_is(
            (await store.load("saga-failed")).status,
            SagaStatus.FAILED,
            '(await store.load("saga-failed")).status is SagaStatus.FAILED',
        )
        await store.release(lease)
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]),
            1,
            'await store.purge(older_than=_ALREADY_PAST, statuses=["failed"]) == 1 (released)',
        )

    async def test_a_purged_id_can_be_used_again(self, store: RecoverableStore) -> None:
        await _new_saga(store, "saga-1", status=SagaStatus.COMPLETED, entries=[entry(0, "old")])
        _expect_equal(
            await store.purge(older_than=_ALREADY_PAST),
            1,
            "await store.purge(older_than=_ALREADY_PAST) == 1",
        )
        await _new_saga(store, "saga-1", entries=[entry(0, "new")])
        _expect_equal(
            [e.step for e in (await store.load("saga-1")).history],
            ["new"],
            '[e.step for e in (await store.load("saga-1")).history] == ["new"]',
        )

    # ------------------------------------------------------------------ parking (optional)

    async def test_claim_skips_a_saga_claimed_park_after_times_without_its_lease_given_back(
        self, store: RecoverableStore
    ) -> None:
        """A saga whose process dies holding its lease, ``park_after`` times
        in a row, is parked: ``claim`` takes it no more (the others it does),
        its summary counts the claims (list, show and the console say
        "parked" by it), ``claim_saga`` by id still leases it, uncounted, and
        its release clears the count."""
        park_after = _park_after(store)
        await _new_saga(store, "dies")
        await _new_saga(store, "lives")
        for number in range(park_after):
            _expect_equal(await _claimed_by_dying(store, given_back="lives"), ["dies", "lives"],
                          f"claim number {number + 1} of {park_after}")
        _expect_equal(await _claimed_by_dying(store, given_back="lives"), ["lives"],
                      f"a claim after {park_after} claims of 'dies' never given back")
        _expect_equal(await _unreleased_claims(store, "dies"), park_after,
                      "the summary's unreleased_claims of the parked saga")
        lease = await store.claim_saga("dies", owner="operator", lease_seconds=60)
        _expect_equal(await _unreleased_claims(store, "dies"), park_after,
                      "unreleased_claims after claim_saga (which is not counted)")
        await store.release(lease)
        _expect_equal(await _unreleased_claims(store, "dies"), 0,
                      "unreleased_claims once the operator's lease is released")
        _expect_equal(await _claimed_by_dying(store, given_back="lives"), ["dies", "lives"],
                      "a claim once the parked saga's count is cleared")

    async def test_a_lease_given_back_in_order_clears_the_count_of_claims(
        self, store: RecoverableStore
    ) -> None:
        """``release``, and ``defer`` and ``hand_off`` where the store has
        them, end a run in order: the count of claims starts again, so that
        one-off crashes never add up to a parked saga."""
        park_after = _park_after(store)
        ways: list[tuple[str, Callable[[Lease], Any]]] = [("release", store.release)]
        defer = getattr(store, "defer", None)
        if defer is not None:
            ways.append(("defer", lambda lease: defer(lease, _ALREADY_PAST)))
        hand_off = getattr(store, "hand_off", None)
        if hand_off is not None:
            ways.append(("hand_off", hand_off))
        for way, give_back in ways:
            saga_id = f"crashy-{way}"  # the earlier ones are parked by now
            await _new_saga(store, saga_id)
            for _ in range(park_after - 1):
                await _claimed_by_dying(store)
            (lease,) = await store.claim(
                owner="w", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
            )
            await give_back(lease)
            _expect_equal(await _unreleased_claims(store, saga_id), 0,
                          f"unreleased_claims after {way}")
            for number in range(park_after):
                _expect_equal(await _claimed_by_dying(store), [saga_id],
                              f"claim number {number + 1} after {way}")
            _expect_equal(await _claimed_by_dying(store), [],
                          f"a claim after {park_after} more claims never given back")

    async def test_a_stale_lease_given_back_does_not_clear_the_count_of_claims(
        self, store: RecoverableStore
    ) -> None:
        """The reset is fenced: a worker whose lease was taken over, releasing
        late, clears nothing of the new holder's count."""
        park_after = _park_after(store)
        await _new_saga(store, "crashy")
        (stale,) = await store.claim(
            owner="w", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
        )
        for _ in range(park_after - 1):
            await _claimed_by_dying(store)
        await store.release(stale)
        _expect_equal(await _claimed_by_dying(store), [],
                      "a claim after a stale lease of a parked saga was released")


def _park_after(store: object) -> int:
    """The store's ``park_after``; the parking checks are skipped
    (``unittest.SkipTest``, which pytest reports as a skip) for a store that
    does not declare one: parking is optional."""
    park_after = getattr(store, "park_after", None)
    if not isinstance(park_after, int) or isinstance(park_after, bool) or park_after < 1:
        raise unittest.SkipTest(
            f"{type(store).__name__} does not park sagas (no park_after: an int >= 1)"
        )
    return park_after


async def _claimed_by_dying(store: RecoverableStore, *, given_back: str | None = None) -> list[str]:
    """The ids a claim takes, sorted, by a worker whose process dies holding
    the leases (a lease already run out, as a dead worker's is once its
    length has passed), but for ``given_back``'s, released in order."""
    leases = await store.claim(
        owner="w", lease_seconds=_ALREADY_PAST, older_than=_ALREADY_PAST, limit=10
    )
    for lease in leases:
        if lease.saga_id == given_back:
            await store.release(lease)
    return sorted(lease.saga_id for lease in leases)


async def _unreleased_claims(store: RecoverableStore, saga_id: str) -> int:
    (summary,) = [s for s in await store.list_sagas(limit=1000) if s.saga_id == saga_id]
    return summary.unreleased_claims
