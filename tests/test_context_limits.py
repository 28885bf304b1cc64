"""S12 for contexts JSON cannot carry as a whole: a cyclic context, or one
nested deeper than ``MAX_CONTEXT_DEPTH``, is refused with
``ContextSerializationError`` naming the field path (cut short) and saying
why — never a bare ``RecursionError`` — before the first step runs, with
every store. A context exactly ``MAX_CONTEXT_DEPTH`` deep runs, is journaled
and resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fallback_saga import MemorySagaStore, Saga, SagaContext, SagaStepHandler, SQLiteSagaStore
from fallback_saga.context import (
    MAX_CONTEXT_DEPTH,
    check_serializable,
    context_from_dict,
    context_to_dict,
    take_snapshot,
)
from fallback_saga.errors import ContextSerializationError


@dataclasses.dataclass
class Node:
    child: Node | None = None
    value: int = 0


@dataclasses.dataclass
class Tree(SagaContext):
    node: Node | None = None
    data: Any = None
    me: Any = None


def chain(levels: int) -> Node:
    """``levels`` nested Nodes (a field holding it is ``levels`` deep)."""
    node = Node(None, levels)
    for value in range(levels - 1):
        node = Node(node, value)
    return node


def nested_lists(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def cyclic_node() -> Node:
    node = Node()
    node.child = Node(node)
    return node


def self_list() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


def self_context() -> Tree:
    tree = Tree()
    tree.me = tree
    return tree


def refused(context: object) -> ContextSerializationError:
    """Both entry points refuse the same way."""
    with pytest.raises(ContextSerializationError) as first:
        check_serializable(context)
    with pytest.raises(ContextSerializationError) as second:
        context_to_dict(context)
    assert str(first.value) == str(second.value)
    return first.value


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("context", "path", "back_to"),
    [
        (Tree(node=cyclic_node()), "node.child.child", "'node'"),
        (Tree(data=self_list()), "data[0]", "'data'"),
        (Tree(data={"a": {"b": self_list()}}), "data['a']['b'][0]", "\"data['a']['b']\""),
        (self_context(), "me", "the context itself"),
    ],
)
def test_a_cyclic_context_is_refused_naming_the_field_and_the_cycle(
    context: object, path: str, back_to: str
) -> None:
    error = refused(context)
    assert error.path == path
    assert "cyclic" in str(error)
    assert back_to in str(error)


@pytest.mark.parametrize(
    ("context", "start"),
    [
        (Tree(node=chain(2000)), "node.child.child"),
        (Tree(data=nested_lists(2000)), "data[0][0]"),
        (Tree(data=nested_lists(MAX_CONTEXT_DEPTH + 1)), "data[0][0]"),
        (Tree(data={"k": [{"k": nested_lists(MAX_CONTEXT_DEPTH)}]}), "data['k'][0]['k']"),
    ],
)
def test_a_context_nested_deeper_than_the_limit_is_refused_with_a_short_path(
    context: object, start: str
) -> None:
    error = refused(context)
    assert error.path.startswith(start)
    assert len(error.path) <= 120
    assert error.path.endswith("…")
    assert f"deeper than {MAX_CONTEXT_DEPTH} levels" in str(error)
    assert "cyclic" not in str(error)


def test_a_context_as_deep_as_the_limit_is_accepted() -> None:
    deepest = (Tree(node=chain(MAX_CONTEXT_DEPTH)), Tree(data=nested_lists(MAX_CONTEXT_DEPTH)))
    for context in deepest:
        check_serializable(context)
        restored = context_from_dict(Tree, context_to_dict(context))
        assert restored == context


def test_shared_values_are_not_a_cycle() -> None:
    shared = [1, 2]
    node = Node()
    context = Tree(node=Node(node, 1), data={"a": shared, "b": [shared, shared]}, me=node)
    assert context_to_dict(context)["data"] == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_snapshots_still_keep_cycles() -> None:
    """Refusing a cyclic context is the journal's business: a snapshot of one
    (taken when no store journals it) restores it exactly."""
    tree = Tree(node=cyclic_node())
    snapshot = take_snapshot(tree)
    tree.node = None
    snapshot.restore(tree)
    assert tree.node is not None
    assert tree.node.child is not None
    assert tree.node.child.child is tree.node


# --------------------------------------------------------------------------- through a saga

CALLS: list[str] = []


class Record(SagaStepHandler[Tree, None]):
    async def act(self, context: Tree) -> None:
        CALLS.append("act")

    async def compensate(self, context: Tree) -> None:
        CALLS.append("compensate")


class TreeSaga(Saga[Tree]):
    steps = [Record]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemorySagaStore()
        return
    async with SQLiteSagaStore(tmp_path / "sagas.db") as sqlite:
        yield sqlite


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tree(node=cyclic_node()),
        self_context,
        lambda: Tree(data=self_list()),
        lambda: Tree(node=chain(2000)),
        lambda: Tree(data=nested_lists(MAX_CONTEXT_DEPTH + 1)),
    ],
    ids=["cyclic-dataclass", "self-reference", "cyclic-list", "2000-deep", "one-too-deep"],
)
async def test_a_saga_refuses_such_a_context_before_its_first_step(store: Any, make: Any) -> None:
    CALLS.clear()
    with pytest.raises(ContextSerializationError, match=r"cyclic|deeper than"):
        await TreeSaga(store=store).run(make(), saga_id="s-1")
    assert CALLS == []
    if isinstance(store, SQLiteSagaStore):
        assert await store.list_sagas() == []


class Crash(BaseException):
    """The process dying mid-step."""


class CrashOnce(SagaStepHandler[Tree, None]):
    crashed = False

    async def act(self, context: Tree) -> None:
        CALLS.append("crash-once")
        if not CrashOnce.crashed:
            CrashOnce.crashed = True
            raise Crash

    async def compensate(self, context: Tree) -> None:
        CALLS.append("compensate")


class ResumedTreeSaga(Saga[Tree]):
    steps = [Record, CrashOnce]


async def test_a_context_as_deep_as_the_limit_runs_is_journaled_and_resumes(
    store: Any,
) -> None:
    CALLS.clear()
    CrashOnce.crashed = False
    context = Tree(node=chain(MAX_CONTEXT_DEPTH), data=nested_lists(MAX_CONTEXT_DEPTH))
    saga = ResumedTreeSaga(store=store)
    with pytest.raises(Crash):
        await saga.run(context, saga_id="s-1")
    if not isinstance(store, SQLiteSagaStore):
        return  # nothing to resume from in memory once the "process" died
    record = await store.load("s-1")
    assert context_from_dict(Tree, record.context) == context
    result = await ResumedTreeSaga(store=store).resume("s-1")
    assert CALLS == ["act", "crash-once", "crash-once"]
    assert result.context == context
