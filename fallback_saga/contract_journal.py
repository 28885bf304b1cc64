"""The store contract's journal tests (``SagaStoreContract``, in
``fallback_saga.testing``): what the executor relies on — ``create``,
``append``, ``load`` — and that the data it journals comes back as written."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from .contract_checks import (
    NESTED_CONTEXT,
    _expect,
    _expect_equal,
    _expect_is,
    _new_saga,
    _raises,
    entry,
)
from .errors import JournalConflict, SagaAlreadyExists, SagaNotFound
from .status import SagaStatus, StepStatus
from .store.base import JournalEntry, SagaRecord, SagaStore, is_conditional

__all__ = ["JournalDataContract", "JournalWritesContract"]


class JournalWritesContract:
    """``create``, ``load`` and ``append``: the journal's writes and reads."""

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


class JournalDataContract:
    """Contexts and entries come back as written, and as copies; ``existing_saga_ids``."""

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
