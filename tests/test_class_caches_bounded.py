"""What the hot path caches per class is bounded (docs/mechanics.md, "What is
cached per class"): a program that makes a class for each saga
(``dataclasses.make_dataclass`` in a request handler) does not keep every
class it made, and a class whose cached entries were forgotten is
snapshotted, journaled, read back and compared exactly as before (S1, S14).

The bound is set low here (``CLASS_CACHE_BOUND``, read at each insertion) so
that a few dozen classes go past it; its value changes nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import gc
import inspect
import sys
import types
import typing
import weakref
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fallback_saga import (
    ContextSerializationError,
    MemorySagaStore,
    Saga,
    SagaContext,
    SagaStepHandler,
    SQLiteSagaStore,
    class_caches,
    codec,
    decoding,
    models,
    sameness,
)
from fallback_saga import context as context_module
from fallback_saga.codec import journal_untyped
from fallback_saga.context import (
    Snapshot,
    check_serializable,
    context_from_dict,
    context_to_dict,
    freeze_context,
    take_snapshot,
    working_copy,
)
from fallback_saga.decoding import decode_untyped
from fallback_saga.models import first_difference
from fallback_saga.sameness import differs
from fallback_saga.store._common import decode_json, encode_json
from fallback_saga.store._responses import response_text

BOUND = 16
ROUNDS = 3 * BOUND

# Where the classes made here are found by name (a tagged value names its
# class: module:qualname), as a module-level class would be; taken out again
# at the end of each round, so that nothing but the caches could keep them.
_HOME = types.ModuleType("cachebound_classes")


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(class_caches, "CLASS_CACHE_BOUND", BOUND)
    monkeypatch.setitem(sys.modules, _HOME.__name__, _HOME)


def _home(cls: Any) -> Any:
    cls.__module__ = _HOME.__name__
    setattr(_HOME, cls.__qualname__, cls)
    return cls


class Record(SagaStepHandler[SagaContext, Any]):
    """Changes the context, and returns a value of a class made for the round."""

    async def act(self, context: Any, /) -> Any:
        context.items.append(context.items[0].__class__(f"sku-{len(context.items)}", 2))
        context.tags["late"] = context.items[-1]
        return context.items[0]


class Refuse(SagaStepHandler[SagaContext, Any]):
    async def act(self, context: Any, /) -> Any:
        context.items.clear()  # undone when the saga unwinds (S2)
        raise RuntimeError("no")


def _classes(n: int) -> dict[str, Any]:
    """The classes a program that makes them per saga would make, one of each kind."""
    inner = _home(dataclasses.make_dataclass(f"Inner{n}", [("sku", str), ("qty", int)]))
    colour = _home(enum.Enum(f"Colour{n}", "RED GREEN"))
    slotted = _home(dataclasses.make_dataclass(f"Slotted{n}", [("x", int)], slots=True))

    def post_init(self: Any) -> None:  # derives an attribute (read back again on resume)
        self.first = self.items[0] if self.items else None

    context = _home(
        dataclasses.make_dataclass(
            f"Ctx{n}",
            [
                ("order_id", str),
                ("items", list[inner]),  # type: ignore[valid-type]
                ("colour", colour),
                ("slot", slotted),
                ("tags", dict[str, Any]),
                ("maybe", inner | None),  # type: ignore[operator]
            ],
            bases=(SagaContext,),
            namespace={"__post_init__": post_init},
        )
    )
    plain = _home(type(f"Plain{n}", (SagaContext,), {"__annotations__": {"n": int}}))
    picky = _home(  # made only with its argument (no bare instance): not frozen flat
        type(
            f"Picky{n}",
            (),
            {
                "__new__": lambda cls, x: object.__new__(cls),
                "__init__": lambda self, x: setattr(self, "x", x),
                "__getnewargs__": lambda self: (self.x,),
            },
        )
    )
    refused = _home(type(f"Refused{n}", (), {"to_dict": lambda self: {}}))

    class RecordAgain(Record):  # a step class of the round's own
        pass

    class PerRound(Saga[SagaContext]):
        name = f"saga-{n}"
        steps: ClassVar[list[Any]] = [Record, RecordAgain]

    class Failing(Saga[SagaContext]):
        name = f"failing-{n}"
        steps: ClassVar[list[Any]] = [Record, Refuse]

    return {
        "inner": inner, "colour": colour, "slotted": slotted, "context": context,
        "plain": plain, "picky": picky, "refused": refused,
        "saga": PerRound, "failing": Failing, "step": RecordAgain,
    }


def _context(made: dict[str, Any], n: int) -> Any:
    inner = made["inner"]
    return made["context"](
        order_id=f"o-{n}",
        items=[inner("a", 1)],
        colour=made["colour"].GREEN,
        slot=made["slotted"](n),
        tags={"any": inner("b", 2), "colour": made["colour"].RED},
        maybe=inner("c", 3),
    )


async def _use(made: dict[str, Any], n: int, store: SQLiteSagaStore) -> None:
    """Everything that caches per class: a snapshot and its restore, a saga
    journaled through a store (its response too) and read back, an unwound
    one, the codec directly, a comparison of derived values, refusals."""
    context = _context(made, n)
    snapshot = take_snapshot(context)
    copy = working_copy(snapshot)
    context.items.append(made["inner"]("x", 9))
    snapshot.restore(context)
    assert first_difference(context, copy) is None
    slotted = made["slotted"](n)
    slot_snapshot = take_snapshot(slotted)
    slotted.x = -1
    slot_snapshot.restore(slotted)
    assert slotted.x == n
    picky = made["picky"](n)
    for _ in range(2):  # the first learns that its state is its __dict__
        assert isinstance(freeze_context(picky), Snapshot)
    assert working_copy(take_snapshot(picky)).x == n

    result = await made["saga"](store=store).run(context, saga_id=f"s-{n}")
    record = await store.load(f"s-{n}")
    assert record is not None
    again = context_from_dict(made["context"], record.context)
    assert first_difference(again, result.context) is None
    assert type(again.tags["late"]) is made["inner"]
    assert differs(again.first, made["inner"]("a", 1)) is False

    with pytest.raises(Exception, match="no"):
        await made["failing"](store=store).run(_context(made, n), saga_id=f"f-{n}")

    text = encode_json(context_to_dict(context))
    assert first_difference(context_from_dict(made["context"], decode_json(text)), context) is None
    value = made["inner"]("d", 4)
    assert decode_untyped(decode_json(encode_json(journal_untyped(value, "v"))), "v") == value

    plain = made["plain"]()
    plain.n = n
    assert context_from_dict(made["plain"], context_to_dict(plain)).n == n
    with pytest.raises(ContextSerializationError):
        context_to_dict(made["refused"]())


def _forget_home(made: dict[str, Any]) -> None:
    for cls in made.values():
        _HOME.__dict__.pop(cls.__qualname__, None)


def _let_go_of_stdlib_caches() -> None:
    """Python's own caches of classes, bounded and not ours: ``Saga[Ctx]``
    (typing keeps the last 128 subscriptions) and, on Python 3.12.0-3.12.3,
    the last 128 classes ``inspect.getattr_static`` looked at (CPython
    gh-118013)."""
    for clear in typing._cleanups:  # type: ignore[attr-defined]
        clear()
    shadowed = getattr(inspect, "_shadowed_dict_from_mro_tuple", None)
    if hasattr(shadowed, "cache_clear"):
        shadowed.cache_clear()


def test_s14_classes_made_per_saga_are_not_kept(small_bound: None, tmp_path: Path) -> None:
    """3 x the bound rounds, each with classes of its own: the first rounds'
    classes are collected, and no per-class cache holds more than the bound."""
    early: list[weakref.ref[Any]] = []

    async def main() -> None:
        store = SQLiteSagaStore(str(tmp_path / "s.db"))
        try:
            for n in range(ROUNDS):
                made = _classes(n)
                await _use(made, n, store)
                if n < BOUND:
                    early.extend(weakref.ref(cls) for cls in made.values())
                _forget_home(made)
                del made
        finally:
            await store.close()

    asyncio.run(main())
    _let_go_of_stdlib_caches()
    gc.collect()
    alive = [ref() for ref in early if ref() is not None]
    assert not alive, f"{len(alive)} classes of the first rounds are kept, e.g. {alive[:3]}"
    caches = class_caches.class_caches()
    assert caches, "no per-class cache is registered"
    for name, cache in caches.items():
        assert len(cache) <= BOUND, f"{name} holds {len(cache)} entries"


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except Exception as error:  # what is refused, and how it is told
        return ("refused", type(error).__name__, str(error))


def _behaviour(made: dict[str, Any], n: int) -> list[Any]:
    """What a user sees of the classes of one round: journal text (of a
    context, of an untyped value, of a step's response), what is read back
    (types included), a snapshot restored, a comparison, refusals."""
    inner = made["inner"]
    context = _context(made, n)
    text = encode_json(context_to_dict(context))
    again = context_from_dict(made["context"], decode_json(text))
    snapshot = take_snapshot(context)
    context.items.append(inner("x", 9))
    context.slot.x = -1
    snapshot.restore(context)
    hand_set = _context(made, n)
    hand_set.first = inner("zz", 0)  # not what its __post_init__ derives: refused (S14)
    extra = _context(made, n)
    extra.note = "not a field"  # refused: a resume would not have it
    plain = made["plain"]()
    plain.n = n
    value = inner("d", 4)
    return [
        text,
        first_difference(again, context),
        [type(item) for item in again.items] + [type(again.tags["any"]), type(again.first)],
        context_to_dict(context) == decode_json(text),
        differs(again.first, inner("a", 1)),
        encode_json(journal_untyped(value, "v")),
        decode_untyped(decode_json(encode_json(journal_untyped(value, "v"))), "v") == value,
        response_text(value, "saga", "step"),
        response_text(value, "saga", "step"),
        _outcome(lambda: context_to_dict(hand_set)),
        _outcome(lambda: context_to_dict(extra)),
        _outcome(lambda: check_serializable(context)),
        _outcome(lambda: context_to_dict(made["refused"]())),
        context_to_dict(plain),
        context_from_dict(made["plain"], context_to_dict(plain)).__dict__,
        working_copy(take_snapshot(made["picky"](n))).__dict__,
        type(freeze_context(made["picky"](n))),
    ]


def test_s14_a_class_whose_entries_were_forgotten_is_journaled_as_before(
    small_bound: None, tmp_path: Path
) -> None:
    """Forgetting is neutral: with every cache emptied by the classes of
    other rounds — and with each cache forgotten alone, the others kept (a
    lookup in one after a hit in another) — a class snapshots, journals,
    reads back, compares and is refused exactly as before (S1, S14)."""
    made = _classes(1000)
    before = _behaviour(made, 7)
    assert _behaviour(made, 7) == before  # (learnt at the first: the same)
    assert before[9][0] == "refused", before[9]  # a derived attribute set by hand
    assert before[10][0] == "refused", before[10]  # an attribute that is not a field

    for name, cache in class_caches.class_caches().items():
        cache.clear()
        assert _behaviour(made, 7) == before, f"after {name} alone was forgotten"
        assert _behaviour(made, 7) == before, f"after {name} alone was learnt again"

    async def others() -> None:
        store = SQLiteSagaStore(str(tmp_path / "s.db"))
        try:
            for n in range(BOUND):
                await _use(_classes(n), n, store)
        finally:
            await store.close()

    asyncio.run(others())
    ours = set(made.values())
    caches = dict(class_caches.class_caches())
    for module in (codec, context_module, decoding, models, sameness):  # (by name too)
        for name, cache in vars(module).items():
            if isinstance(cache, dict) and any(isinstance(key, type) for key in cache):
                caches.setdefault(f"{module.__name__}.{name}", cache)
    kept = [name for name, cache in caches.items() if ours.intersection(cache)]
    assert not kept, f"not forgotten: {kept}"
    assert _behaviour(made, 7) == before
    _forget_home(made)


def test_s14_context_classes_a_memory_store_keeps_frozen_are_not_kept_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(The first four classes are registered, and kept.) A finished saga
    ``MemorySagaStore`` retains holds its flat context by its class's index
    in a registry (no reference to the class, so the record
    costs a full collection nothing); past ``CLASS_CACHE_BOUND`` classes the
    registry takes no more — a context of a class beyond it is kept as a
    snapshot instead (which holds its class only as long as the record) —
    and every record still reads back exactly (S14)."""
    registry = context_module._FROZEN_TYPES
    monkeypatch.setattr(class_caches, "CLASS_CACHE_BOUND", len(registry) + 4)
    store = MemorySagaStore(max_finished=4)
    early: list[weakref.ref[Any]] = []

    async def main() -> None:
        for n in range(ROUNDS):
            ctx_cls = dataclasses.make_dataclass(
                f"Flat{n}", [("order", str, ""), ("n", int, 0)], bases=(SagaContext,)
            )

            class Bump(SagaStepHandler[SagaContext, None]):
                async def act(self, context: Any, /) -> None:
                    context.n += 1

                async def compensate(self, context: Any, /) -> None:
                    return None

            saga_cls = types.new_class(
                f"FlatSaga{n}", (Saga[ctx_cls],), {},  # type: ignore[valid-type]
                functools.partial(dict.update, steps=[Bump]),
            )
            saga_id = f"flat-{n}"
            await saga_cls(store=store).run(ctx_cls(order=f"o-{n}"), saga_id=saga_id)
            record = await store.load(saga_id)
            assert record.context == {"order": f"o-{n}", "n": 1}, n
            if n < BOUND:
                early.append(weakref.ref(ctx_cls))
            del ctx_cls, Bump, saga_cls

    asyncio.run(main())
    assert len(registry) <= class_caches.CLASS_CACHE_BOUND
    # The store's last records still read back exactly.
    for n in range(ROUNDS - 4, ROUNDS):
        assert asyncio.run(store.load(f"flat-{n}")).context == {"order": f"o-{n}", "n": 1}
    # The bound, set just above what the registry held, may be above 48 (the
    # earlier tests' classes): the caches — bounded, and checked above —
    # may hold this test's classes; they are emptied, the registry is not.
    for cache in class_caches.class_caches().values():
        cache.clear()
    _let_go_of_stdlib_caches()
    gc.collect()
    alive = [ref() for ref in early[4:] if ref() is not None]
    assert not alive, f"{len(alive)} context classes of the first rounds are kept"
