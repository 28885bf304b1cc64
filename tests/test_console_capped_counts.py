"""The listing's counts of a time window holding many sagas (``?since=``,
``?until=``) stop at ``COUNT_CAP`` sagas a status: a window of half of
1,000,000 sagas was half the table read at every request. A status with
more sagas than the cap says so ("10,000+"), never a number it does not
have; ``?count=exact`` counts every one. The measured cost is in
benchmarks/README.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers_console import fetch

from fallback_saga import MemorySagaStore, SagaStatus, SQLiteSagaStore
from fallback_saga.console import ConsoleServer
from fallback_saga.console import listing as console_listing
from fallback_saga.console.store_counts import fetch_counts

CAP = 5  # the cap these tests set (COUNT_CAP itself is 10,000)


class Watched:
    """A store, recording the keyword arguments of each ``count_sagas`` call."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.counts: list[dict[str, Any]] = []

    async def count_sagas(
        self,
        *,
        saga_name: str | None = None,
        created_since: float | None = None,
        created_until: float | None = None,
        at_most: int | None = None,
    ) -> Any:
        asked = {"saga_name": saga_name, "created_since": created_since,
                 "created_until": created_until, "at_most": at_most}
        self.counts.append(asked)
        return await self._store.count_sagas(**asked)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def _filled(store: Any) -> None:
    """8 COMPLETED sagas (more than CAP) and 3 FAILED, created a minute ago."""
    for n in range(8):
        await store.create(f"ok-{n}", "OrderSaga", "fp", {}, [], status=SagaStatus.COMPLETED)
    for n in range(3):
        await store.create(f"bad-{n}", "OrderSaga", "fp", {}, [], status=SagaStatus.FAILED)


async def test_operator_a_windowed_listing_counts_up_to_the_cap_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing with since= asks the store for counts up to the cap a
    status (``at_most``): the status past it shows as "5+" with a note
    and a link counting them all; the one under it is exact; the JSON
    says which are capped. The listing without a window, and with
    count=exact, counts every saga (no at_most)."""
    monkeypatch.setattr(console_listing, "COUNT_CAP", CAP)
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await _filled(store)
        watched = Watched(store)
        async with ConsoleServer(watched, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            page = (await fetch(f"{base}/?since=1h")).text
            assert watched.counts[-1]["at_most"] == CAP
            api = (await fetch(f"{base}/api/sagas?since=1h")).json()
            exact = (await fetch(f"{base}/?since=1h&count=exact")).text
            assert watched.counts[-1]["at_most"] is None
            exact_api = (await fetch(f"{base}/api/sagas?since=1h&count=exact")).json()
            whole = (await fetch(f"{base}/")).text
            assert watched.counts[-1]["at_most"] is None
            bad = await fetch(f"{base}/api/sagas?since=1h&count=some")
    assert '<span class="n" title="more: counted up to this many only">5+</span>' in page
    assert '<span class="n">3</span><span class="what">Failed</span>' in page
    assert "More than 5 completed sagas in this time window" in page
    assert 'href="/?since=1h&amp;count=exact">Count them all</a>' in page
    assert api["counts"]["completed"] == CAP
    assert api["counts"]["failed"] == 3
    assert api["counts_exact"] is False
    assert api["counts_capped"] == {
        "at": CAP, "statuses": ["completed"], "exact": "/api/sagas?since=1h&count=exact"}
    assert api["counts_by_name"] == [
        {"saga_name": "OrderSaga", "status": "failed", "count": 3}]
    assert len(api["sagas"]) == 11
    for html in (exact, whole):
        assert '<span class="n">8</span><span class="what">Completed</span>' in html
        assert "5+" not in html
        assert "Count them all" not in html
    assert exact_api["counts"]["completed"] == 8
    assert exact_api["counts_capped"] is None
    assert exact_api["counts_exact"] is True
    assert bad.status == 400
    assert "count must be exact" in bad.json()["error"]["message"]


async def test_operator_a_small_window_is_counted_exactly() -> None:
    """Under the cap every status is exact: no "+", no note (a store that
    counts everything, ``MemorySagaStore``, and the default cap)."""
    store = MemorySagaStore()
    await _filled(store)
    async with ConsoleServer(store, port=0) as console:
        api = (await fetch(f"http://127.0.0.1:{console.port}/api/sagas?since=1h")).json()
    assert console_listing.COUNT_CAP == 10_000
    assert api["counts"]["completed"] == 8
    assert api["counts_capped"] is None
    assert api["counts_exact"] is True


async def test_operator_a_store_whose_count_takes_no_cap_is_asked_as_before() -> None:
    """A store of your own whose ``count_sagas`` has no ``at_most`` is not
    given one: its counts are exact, as before."""

    class OwnStore:
        def __init__(self) -> None:
            self._store = MemorySagaStore()

        async def count_sagas(self, *, saga_name: Any = None, created_since: Any = None,
                              created_until: Any = None) -> Any:
            return await self._store.count_sagas(
                saga_name=saga_name, created_since=created_since, created_until=created_until)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._store, name)

    own = OwnStore()
    await _filled(own._store)
    counts = await fetch_counts(own, since=time.time() - 3600, at_most=CAP)
    assert counts.exact
    assert not counts.capped
    assert counts.by_status()[SagaStatus.COMPLETED] == 8


async def test_operator_a_listing_by_name_counts_up_to_the_cap_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing filtered by saga name alone asks for counts up to the cap
    a status too (a name of 800,000 sagas was every one of them counted at
    each request): "5+", a note naming the filter, and a link counting them
    all; with count=exact, and without any filter, every saga is counted."""
    monkeypatch.setattr(console_listing, "COUNT_CAP", CAP)
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await _filled(store)
        watched = Watched(store)
        async with ConsoleServer(watched, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            page = (await fetch(f"{base}/?name=OrderSaga")).text
            assert watched.counts[-1] == {"saga_name": "OrderSaga", "created_since": None,
                                          "created_until": None, "at_most": CAP}
            api = (await fetch(f"{base}/api/sagas?name=OrderSaga")).json()
            exact = (await fetch(f"{base}/?name=OrderSaga&count=exact")).text
            assert watched.counts[-1]["at_most"] is None
            await fetch(f"{base}/")
            assert watched.counts[-1]["at_most"] is None
    assert '<span class="n" title="more: counted up to this many only">5+</span>' in page
    assert '<span class="n">3</span><span class="what">Failed</span>' in page
    assert "More than 5 completed sagas of this name" in page
    assert 'href="/?name=OrderSaga&amp;count=exact">Count them all</a>' in page
    assert api["counts"]["completed"] == CAP
    assert api["counts_capped"] == {
        "at": CAP, "statuses": ["completed"],
        "exact": "/api/sagas?name=OrderSaga&count=exact"}
    assert '<span class="n">8</span><span class="what">Completed</span>' in exact
    assert "Count them all" not in exact


def _suggested(page: str) -> list[str]:
    datalist = page.split('<datalist id="saga-names">', 1)[1].split("</datalist>", 1)[0]
    return [option.split('"')[1] for option in datalist.split("<option value=")[1:]]


@pytest.mark.parametrize("with_names", [True, False], ids=["store-names", "counts-only"])
async def test_operator_the_name_suggestions_hold_names_seen_only_in_capped_statuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_names: bool
) -> None:
    """The saga-name suggestions of the filter form are every name the store
    holds (its ``saga_names``, an index read): a name whose sagas all have
    a status counted no further (capped), and under a name filter the
    other names, are suggested too. A store without ``saga_names`` suggests
    the names it counted, as before."""
    monkeypatch.setattr(console_listing, "COUNT_CAP", CAP)
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await _filled(store)
        await store.create("rare-0", "RareSaga", "fp", {}, [], status=SagaStatus.COMPLETED)
        watched: Any = Watched(store)
        if not with_names:
            class NoNames(Watched):
                saga_names = None
            watched = NoNames(store)
        async with ConsoleServer(watched, port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            windowed = (await fetch(f"{base}/?since=1h")).text
            named = (await fetch(f"{base}/?name=OrderSaga&count=exact")).text
            whole = (await fetch(f"{base}/")).text
    assert _suggested(whole) == ["OrderSaga", "RareSaga"]
    if with_names:
        assert _suggested(windowed) == ["OrderSaga", "RareSaga"]
        assert _suggested(named) == ["OrderSaga", "RareSaga"]
    else:
        assert _suggested(windowed) == ["OrderSaga"]  # COMPLETED is capped
        assert _suggested(named) == ["OrderSaga"]


async def test_operator_the_json_listing_reads_no_name_suggestions(tmp_path: Path) -> None:
    """``/api/sagas`` has no form to suggest names in: it does not ask the
    store for them (up to 500 index look-ups a request); the page does."""
    asked: list[int] = []

    class NamesCounted(Watched):
        async def saga_names(self, *, limit: int = 1000) -> list[str]:
            asked.append(limit)
            names: list[str] = await self._store.saga_names(limit=limit)
            return names

    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        await _filled(store)
        async with ConsoleServer(NamesCounted(store), port=0) as console:
            base = f"http://127.0.0.1:{console.port}"
            listed = (await fetch(f"{base}/api/sagas")).json()
            assert listed["sagas"]
            assert asked == []
            await fetch(f"{base}/")
            assert asked == [console_listing.SUGGESTED_NAMES]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_operator_saga_names_are_every_name_sorted_up_to_the_limit(
    tmp_path: Path, kind: str
) -> None:
    """``saga_names(limit=)``: the distinct names of the stored sagas, in
    order, at most ``limit``; none for an empty store."""
    store: Any = MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
    try:
        assert await store.saga_names() == []
        for n, name in enumerate(["b", "a", "c", "b", "a", "d"]):
            await store.create(f"s{n}", name, "fp", {}, [],
                               status=SagaStatus.COMPLETED if n % 2 else SagaStatus.RUNNING)
        assert await store.saga_names() == ["a", "b", "c", "d"]
        assert await store.saga_names(limit=2) == ["a", "b"]
        assert await store.saga_names(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            await store.saga_names(limit=-1)
    finally:
        if kind == "sqlite":
            await store.close()
