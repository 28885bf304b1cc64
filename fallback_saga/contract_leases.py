"""The store contract's lease tests (``RecoverableStoreContract``, in
``fallback_saga.testing``): what recovery relies on — ``claim``, fencing
tokens, ``release``, ``claim_saga``, ``renew`` — and parking, for a store
that declares ``park_after``."""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Callable
from typing import Any

from .contract_checks import (
    _ALREADY_PAST,
    _expect,
    _expect_equal,
    _expect_is,
    _first_run,
    _new_saga,
    _raises,
    entry,
)
from .errors import LeaseLost, SagaBusy, SagaNotFound
from .status import SagaStatus, StepStatus
from .store.base import Lease, RecoverableStore, claims_by_name

__all__ = ["LeasesContract", "ParkingContract"]


class LeasesContract:
    """Claims, leases and fencing: what recovery and ``Saga.resume`` rely on."""

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


class ParkingContract:
    """Parking (optional: skipped for a store without ``park_after``)."""

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
