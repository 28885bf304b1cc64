"""The store contract's operator tests (``RecoverableStoreContract``, in
``fallback_saga.testing``): what the operator CLI and console rely on —
``list_sagas`` and ``purge``."""

from __future__ import annotations

from typing import Any

from .contract_checks import _ALREADY_PAST, _expect_equal, _expect_is, _new_saga, _raises, entry
from .errors import SagaNotFound
from .status import SagaStatus
from .store.base import RecoverableStore

__all__ = ["ListingContract", "PurgeContract"]


class ListingContract:
    """``list_sagas``: newest first, filtered, summarized."""

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


class PurgeContract:
    """``purge``: only finished sagas, only the statuses named, none a lease holds."""

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
