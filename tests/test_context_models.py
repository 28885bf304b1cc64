"""Context kinds (models.py): every kind of context the library accepts —
dataclass, a class with to_dict/from_dict (a SagaContext overriding them
included), a plain SagaContext subclass, a pydantic v2 model, a msgspec
Struct — resumes exactly (S14), even after the process died; is snapshotted
deeply and restored in place (S1, S2); and a context that could not be
resumed is refused at run() before any step, with a message that names the
fix (S12).

pydantic and msgspec are optional: their tests are skipped, loudly, when the
package is missing — except under CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import context_crash_app as app
import pytest
from context_crash_app import Money, ProtocolCtx, assert_identical
from helpers_saga import Boom, Probe, declare

from fallback_saga import (
    ContextSerializationError,
    Fallback,
    MemorySagaStore,
    SagaContext,
    SagaNotFound,
    SagaStatus,
    SQLiteSagaStore,
    recover,
)
from fallback_saga.context import context_from_dict, context_to_dict, take_snapshot

TESTS = Path(__file__).parent
PACKAGE = TESTS.parent / "fallback_saga"


def _optional(name: str) -> ModuleType | None:
    """``name`` imported, or ``None`` (tests that need it skip: a failure under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise ImportError(
                f"{name} is not installed ({error}); CI must run the context-model tests: "
                f'pip install -e ".[test]"'
            ) from error
        return None


pydantic = _optional("pydantic")
msgspec = _optional("msgspec")
needs_pydantic = pytest.mark.skipif(
    pydantic is None, reason='pydantic is not installed: pip install -e ".[test]"'
)
needs_msgspec = pytest.mark.skipif(
    msgspec is None, reason='msgspec is not installed: pip install -e ".[test]"'
)
KIND_MARKS = {"pydantic": [needs_pydantic], "msgspec": [needs_msgspec]}
ALL_KINDS = [
    pytest.param(kind, marks=KIND_MARKS.get(kind, []), id=kind)
    for kind in ("dataclass", "protocol", "state", "pydantic", "msgspec")
]


def round_trip(context: Any) -> Any:
    """What a resume reads back: through JSON text, as a durable store keeps it."""
    return context_from_dict(type(context), json.loads(json.dumps(context_to_dict(context))))


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteSagaStore]:
    store = SQLiteSagaStore(tmp_path / "sagas.db")
    yield store
    await store.close()


# --------------------------------------------------------------------------- S14: every kind


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_S14_every_context_kind_round_trips_exactly(kind: str) -> None:
    context = app.expected(kind)

    assert_identical(context, round_trip(context))


def test_S14_a_SagaContext_that_overrides_to_dict_and_from_dict_is_journaled_by_them() -> None:
    # Reported: the override was ignored ("context field 'price' holds a Money").
    context = ProtocolCtx("o-1", Money(Decimal("19.90"), "USD"), ["a"])

    assert context_to_dict(context) == context.to_dict()
    assert_identical(context, round_trip(context))


def test_S14_an_override_may_call_the_default_with_super() -> None:
    @dataclasses.dataclass
    class Priced(SagaContext):
        order_id: str
        cents: int = 0

        def to_dict(self) -> dict[str, Any]:
            return {**super().to_dict(), "version": 2}

        @classmethod
        def from_dict(cls, data: Mapping[str, Any]) -> Priced:
            fields = {key: value for key, value in data.items() if key != "version"}
            return super().from_dict(fields)  # type: ignore[no-any-return]

    context = Priced("o-1", 250)

    assert context_to_dict(context) == {"order_id": "o-1", "cents": 250, "version": 2}
    assert_identical(context, round_trip(context))


class Voucher:
    """Not a SagaContext, not a dataclass: a class with the protocol."""

    def __init__(self, code: str, value: Decimal) -> None:
        self.code = code
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "value": str(self.value)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Voucher:
        return cls(data["code"], Decimal(data["value"]))


def test_S14_any_class_with_to_dict_and_a_classmethod_from_dict_is_a_context() -> None:
    context = Voucher("V-1", Decimal("5.00"))

    assert_identical(context, round_trip(context))


def test_S14_a_plain_SagaContext_subclass_resumes_exactly() -> None:
    # Reported: "<class 'Ctx'> is not a dataclass; context_from_dict needs one".
    context = app.expected("state")

    back = round_trip(context)

    assert_identical(context, back)
    assert type(back.note["decimal"]) is Decimal  # an unannotated attribute: untyped, exact


@needs_msgspec
async def test_S12_a_msgspec_struct_is_accepted_by_the_memory_store() -> None:
    # Reported: a msgspec Struct was refused even on the memory store.
    trace: list[tuple[str, str]] = []
    saga = declare(Probe("First", trace), context=app.MsgspecCtx)(store=MemorySagaStore())

    result = await saga.run(app.MsgspecCtx(order_id="o-1"), saga_id="m-1")

    assert result.status is SagaStatus.COMPLETED
    assert trace == [("act", "First")]


# --------------------------------------------------------------------------- S12: refused at run()


class Loose:
    """A plain class: neither a dataclass, a SagaContext, nor a model."""

    def __init__(self) -> None:
        self.order_id = "o-1"


class HalfProtocol(SagaContext):
    def to_dict(self) -> dict[str, Any]:
        return {}


class DecimalOut:
    def to_dict(self) -> dict[str, Any]:
        return {"total": {"amount": Decimal("1")}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecimalOut:
        return cls()


class LossyProtocol:
    def __init__(self, amount: Decimal) -> None:
        self.amount = amount

    def to_dict(self) -> dict[str, Any]:
        return {"amount": str(self.amount)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossyProtocol:
        return cls(data["amount"])  # forgets to turn the text back into a Decimal


class BrokenFromDict:
    def to_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BrokenFromDict:
        raise KeyError("order_id")


def unresumable_contexts() -> list[Any]:
    cases = [
        pytest.param(Loose, "<context>", "dataclass", id="plain-class"),
        pytest.param(HalfProtocol, "<context>", "from_dict", id="to_dict-without-from_dict"),
        pytest.param(DecimalOut, "total.amount", "JSON types only", id="to_dict-not-json"),
        pytest.param(lambda: LossyProtocol(Decimal("1.5")), "amount", "not exact", id="lossy"),
        pytest.param(BrokenFromDict, "<context>", "cannot be read back", id="from_dict-raises"),
    ]
    if pydantic is not None:

        class PydAny(pydantic.BaseModel):
            order_id: str = "o-1"
            data: Any = None

        class PydKeys(pydantic.BaseModel):
            keys: dict[Any, str] = {}

        cases += [
            pytest.param(lambda: PydAny(data=Decimal("9.99")), "data", "Decimal", id="pyd-any"),
            pytest.param(lambda: PydKeys(keys={1: "a"}), "keys", "key", id="pyd-int-key"),
        ]
    if msgspec is not None:

        class StructAny(msgspec.Struct):
            data: Any = None

        cases += [
            pytest.param(lambda: StructAny(data=(1, 2)), "data", "tuple", id="msgspec-any"),
            pytest.param(
                lambda: StructAny(data=object()), "data", "msgspec", id="msgspec-obj"
            ),
        ]
    return cases


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize(("make", "path", "says"), unresumable_contexts())
async def test_S12_a_context_that_cannot_be_resumed_is_refused_at_run_before_any_step(
    make: Callable[[], Any], path: str, says: str, store_kind: str, tmp_path: Path
) -> None:
    store: Any = (
        MemorySagaStore() if store_kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
    )
    context = make()
    trace: list[tuple[str, str]] = []
    saga = declare(Probe("First", trace), context=type(context))(store=store)

    try:
        with pytest.raises(ContextSerializationError) as info:
            await saga.run(context, saga_id="refused")

        assert trace == []
        assert info.value.path.startswith(path), str(info.value)
        assert says in str(info.value)
        with pytest.raises(SagaNotFound):
            await store.load("refused")
    finally:
        if store_kind == "sqlite":
            await store.close()


def test_S12_the_refusal_of_an_unsupported_class_names_every_kind_that_works() -> None:
    with pytest.raises(ContextSerializationError) as info:
        context_to_dict(Loose())

    for fix in ("dataclass", "SagaContext", "to_dict()", "from_dict(data)", "pydantic", "msgspec"):
        assert fix in str(info.value)


# --------------------------------------------------------------------------- S1, S2: snapshots


def deep_mutations(kind: str) -> Callable[[Any], None]:
    def mutate(context: Any) -> None:
        if kind == "dataclass":
            context.by_id[1] = "changed"
            context.line.note["k"] = "changed"
            context.items.append("new")
        elif kind == "protocol":
            context.price.amount = Decimal("0")
            context.lines.append("new")
        elif kind == "state":
            context.by_id[7] = "changed"
            context.note["set"].add(99)
            context.brand_new = 1
        elif kind == "pydantic":
            context.customer.name = "changed"
            context.by_id[3] = "changed"
            context.tags.add("new")
        else:
            context.address.lines.append("new")
            context.by_id[4] = "changed"
        context.order_id = "rebound"
        raise Boom("the primary fails after mutating the context")

    return mutate


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_S1_S2_a_failed_primary_leaves_every_kind_of_context_as_it_was(kind: str) -> None:
    context = app.expected(kind)
    original = copy.deepcopy(context)
    trace: list[tuple[str, str]] = []
    primary = Probe("Primary", trace, mutate=deep_mutations(kind))
    fallback = Probe("Backup", trace, observe=copy.deepcopy)
    saga = declare(Fallback(step=primary, fallback=fallback), context=type(context))()

    result = await saga.run(context)

    assert result.context is context  # S2: the same object, restored in place
    assert_identical(original, fallback.seen[0])
    assert_identical(original, context)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_S14_a_snapshot_gives_the_journal_form_of_the_context_it_was_taken_of(kind: str) -> None:
    # What the memory store shows of a running saga (its last transition's snapshot).
    context = app.expected(kind)
    journal_form = context_to_dict(context)
    snapshot = take_snapshot(context)
    with pytest.raises(Boom):
        deep_mutations(kind)(context)

    assert snapshot.to_dict() == journal_form
    assert context_to_dict(context) != journal_form


@needs_pydantic
def test_S2_restore_writes_a_validating_pydantic_model_field_by_field() -> None:
    assert pydantic is not None

    class Strict(pydantic.BaseModel, validate_assignment=True):
        count: int
        items: list[int] = []

    context = Strict(count=1)
    snapshot = take_snapshot(context)
    context.count = 2
    context.items = [2]  # validated assignment: "items" joins model_fields_set
    assert context.model_fields_set == {"count", "items"}

    snapshot.restore(context)

    assert (context.count, context.items) == (1, [])
    assert context.model_fields_set == {"count"}
    assert context.model_dump(exclude_unset=True) == {"count": 1}


@needs_msgspec
def test_S2_restore_writes_a_frozen_msgspec_struct_field_by_field() -> None:
    assert msgspec is not None

    class Frozen(msgspec.Struct, frozen=True):
        order_id: str
        lines: list[str]

    context = Frozen("o-1", ["a"])
    snapshot = take_snapshot(context)
    context.lines.append("b")

    snapshot.restore(context)  # was: "can't apply this __setattr__ to Frozen object"

    assert context.lines == ["a"]
    assert snapshot.to_dict() == {"order_id": "o-1", "lines": ["a"]}


def test_S1_snapshot_keeps_name_mangled_private_slots() -> None:
    class Private:
        __slots__ = ("__secret", "public")

        def __init__(self) -> None:
            self.__secret = [1]
            self.public = 1

        def secret(self) -> list[int]:
            return self.__secret

    context = Private()
    snapshot = take_snapshot(context)
    context.secret().append(2)

    snapshot.restore(context)

    assert context.secret() == [1]


# --------------------------------------------------------------------------- S14 across a crash


def crash_child(db: Path, kind: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "import context_crash_app; context_crash_app.main(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(TESTS), str(db), kind],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_S14_a_resume_after_a_crash_sees_the_first_runs_context(
    kind: str, tmp_path: Path
) -> None:
    db = tmp_path / "sagas.db"
    child = crash_child(db, kind)
    assert child.returncode == 137, child.stderr  # died inside the second step

    app.SEEN.clear()
    store = SQLiteSagaStore(db)
    try:
        report = await recover(store, [app.SAGAS[kind]], older_than=0)
    finally:
        await store.close()

    assert report.resumed == [f"{kind}-1"], str(report)
    assert len(app.SEEN) == 1
    assert_identical(app.expected(kind), app.SEEN[0])


# --------------------------------------------------------------------------- zero dependencies


def test_the_core_never_imports_pydantic_or_msgspec() -> None:
    imported = set()
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])

    assert not imported & {"pydantic", "pydantic_core", "msgspec"}


def test_running_a_dataclass_saga_loads_neither_library() -> None:
    code = (
        "import asyncio, dataclasses, sys\n"
        "from fallback_saga import Saga, SagaContext, SagaStepHandler\n"
        "@dataclasses.dataclass\n"
        "class Ctx(SagaContext):\n"
        "    data: object = None\n"
        "class Step(SagaStepHandler[Ctx, None]):\n"
        "    async def act(self, context: Ctx) -> None:\n"
        "        context.data = {1: (2,)}\n"
        "class S(Saga[Ctx]):\n"
        "    steps = [Step]\n"
        "asyncio.run(S().run(Ctx()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'msgspec')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert out.stdout.strip() == "[]"
