"""``saga_family``'s batched child look-up, checked the same way on every store."""

from __future__ import annotations

from typing import Any


class _CountingFamily:
    """A store's calls as ``saga_family`` makes them."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: dict[str, int] = {"load": 0, "lease_state": 0, "existing_saga_ids": 0}

    async def load(self, saga_id: str) -> Any:
        self.calls["load"] += 1
        return await self.store.load(saga_id)

    async def lease_state(self, saga_id: str) -> Any:
        self.calls["lease_state"] += 1
        return await self.store.lease_state(saga_id)

    async def existing_saga_ids(self, saga_ids: Any) -> set[str]:
        self.calls["existing_saga_ids"] += 1
        found: set[str] = await self.store.existing_saga_ids(saga_ids)
        return found


async def family_in_one_look_up(store: Any) -> None:
    """A parent of 600 step names (more than one SQLite query's ids), 60 of
    them with a child, one whose child id no store can key (too long): its
    children come from one ``existing_saga_ids`` call, not a
    ``lease_state`` per step name, and are the same ones, in step order."""
    from fallback_saga import JournalEntry, StepStatus
    from fallback_saga.subsaga import saga_family

    steps = [f"Step{i}" for i in range(600)] + ["x" * 300]
    history = [
        JournalEntry(i, step, "primary", "act", status, 1, None, 1.0 + i)
        for i, step in enumerate(steps)
        for status in (StepStatus.STARTED, StepStatus.COMPLETED)
    ]
    await store.create("fam", "Big", "fp", {}, history)
    children = [f"fam/{step}" for step in steps[599:0:-10]]
    for child in children:
        await store.create(child, "Child", "fp", {}, [])
    await store.create("fam-other/Step1", "Other", "fp", {}, [])  # not fam's
    counted = _CountingFamily(store)
    parent, found = await saga_family(counted, await store.load("fam"))
    assert (parent, found) == (None, sorted(children, key=lambda c: int(c[len("fam/Step"):])))
    assert counted.calls == {"load": 0, "lease_state": 0, "existing_saga_ids": 1}
    assert await store.existing_saga_ids([]) == set()
    asked = ["fam", "fam", "gone", "", "y" * 300, "a\x00b"]
    assert await store.existing_saga_ids(asked) == {"fam"}

