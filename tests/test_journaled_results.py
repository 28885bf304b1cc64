"""S14: step results survive a resume.

Every completed ``act``'s response is journaled with its COMPLETED entry, in
the self-describing form untyped context positions use (fallback_saga/
results.py). A resumed run's ``result.results`` is then the list an
uninterrupted run returns, with identical types; a response no journal can
hold is never silently lost: the run that produced it returns it, a warning
names the step and the type, and a resumed run gets an
``UnjournaledResponse`` saying why — never ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import results_crash_app as app
from context_crash_app import difference
from hypothesis import HealthCheck, given, settings
from test_lossless_values import Point, Size, values

from fallback_saga import (
    ContextSerializationError,
    JournalEntry,
    MemorySagaStore,
    Response,
    Saga,
    SagaContext,
    SagaStatus,
    SagaStepHandler,
    SQLiteSagaStore,
    StepStatus,
    UnjournaledResponse,
)
from fallback_saga.codec import journal_untyped
from fallback_saga.results import journaled_results
from fallback_saga.store import _responses
from fallback_saga.store._common import encode_json
from fallback_saga.store._responses import journal_entry, response_text
from fallback_saga.store.base import SagaRecord

pytest_plugins = ["conftest_pg"]

TESTS = Path(__file__).parent


def crash_child(kind: str, where: str, saga_id: str, env: dict[str, str] | None = None) -> (
    subprocess.CompletedProcess[str]
):
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "import results_crash_app; results_crash_app.main(sys.argv[1:])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(TESTS), kind, where, saga_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def uninterrupted_results(saga_id: str) -> list[Any]:
    result = await app.ResultsSaga().run(app.OrderCtx(order_id=saga_id), saga_id=saga_id)
    return result.results


def check_resumed_results(resumed: list[Any], reference: list[Any], child_stderr: str) -> None:
    assert [r.step_name for r in resumed] == [r.step_name for r in reference] == [
        "Reserve", "Quote", "Nothing", "Connect", "PayBackup", "Ship"
    ]
    assert all(r.saga_id == reference[0].saga_id for r in resumed)
    for got, want in zip(resumed, reference, strict=True):
        if got.step_name == "Connect":
            continue
        found = difference(want.response, got.response)
        assert found is None, f"{got.step_name}: {found}"
    # The lock could not be journaled: the resumed run says so instead of None.
    lost = resumed[3].response
    assert isinstance(lost, UnjournaledResponse)
    assert lost.step_name == "Connect"
    assert lost.type_name == "_thread.lock"
    assert "not JSON" in lost.reason
    assert not lost
    # The crashed run warned about it, naming step and type but not the value.
    assert "response of step 'Connect' (a _thread.lock) cannot be journaled" in child_stderr
    assert "unlocked" not in child_stderr  # the lock's repr: values are never logged


async def test_S14_results_survive_a_crash_and_resume_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    child = crash_child("sqlite", str(db), "o-1")
    assert child.returncode == 137, child.stderr  # died in Ship, after five steps

    store = SQLiteSagaStore(db)
    try:
        resumed = await app.ResultsSaga(store=store).resume("o-1")
        assert resumed.status is SagaStatus.COMPLETED
        again = await app.ResultsSaga(store=store).resume("o-1")  # a finished saga
    finally:
        await store.close()
    reference = await uninterrupted_results("o-1")
    check_resumed_results(resumed.results, reference, child.stderr)
    check_resumed_results(again.results, reference, child.stderr)


async def test_S14_results_survive_a_crash_and_resume_on_postgres(
    pg_conninfo: str, pg_schema: str
) -> None:
    from fallback_saga.store.postgres import PostgresSagaStore

    env = {**__import__("os").environ, "RESULTS_APP_DSN": pg_conninfo}
    child = crash_child("postgres", pg_schema, "o-2", env)
    assert child.returncode == 137, child.stderr

    async with PostgresSagaStore(pg_conninfo, schema=pg_schema, min_size=1) as store:
        resumed = await app.ResultsSaga(store=store).resume("o-2")
        again = await app.ResultsSaga(store=store).resume("o-2")
    reference = await uninterrupted_results("o-2")
    check_resumed_results(resumed.results, reference, child.stderr)
    check_resumed_results(again.results, reference, child.stderr)


# --------------------------------------------------------------------------- in process


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Answer(SagaStepHandler[Ctx, Any]):
    async def act(self, ctx: Ctx, /) -> Any:
        ctx.n += 1
        return self._generate_step_result({"n": ctx.n, "amount": Decimal("1.50")})


class Hold(SagaStepHandler[Ctx, Any]):
    async def act(self, ctx: Ctx, /) -> Any:
        return threading.Lock()


class TwoSteps(Saga[Ctx]):
    steps: ClassVar[list[Any]] = [Answer, Hold]


def _entry(position: int, step: str, status: StepStatus, result: str | None = None) -> (
    JournalEntry
):
    return JournalEntry(position, step, "primary", "act", status, 1, None, 0.0, result)


async def resume_from(store: Any, history: list[JournalEntry]) -> Any:
    """Resume a saga whose journal stops after ``history`` (as a crash leaves it)."""
    saga = TwoSteps(store=store)
    await store.create("s", "TwoSteps", saga.definition.fingerprint, {"n": 1}, history)
    return await saga.resume("s")


async def test_S14_a_sagastepresult_is_journaled_as_its_response() -> None:
    store = MemorySagaStore()
    result = await TwoSteps(store=store).run(Ctx(), saga_id="s")
    record = await store.load("s")
    completed = [e for e in record.history if e.status is StepStatus.COMPLETED]
    assert json.loads(completed[0].result or "") == {"n": 1, "amount": {"$fs": ["decimal", "1.50"]}}
    # The live run returns the object itself.
    assert isinstance(result.results[1].response, type(threading.Lock()))
    # The journal holds the marker; nothing else carries a result.
    assert json.loads(completed[1].result or "")["$fs"][0] == "unjournaled"
    assert [e.result for e in record.history if e.status is not StepStatus.COMPLETED] == [
        None, None
    ]
    assert journaled_results(record)[0].response == {"n": 1, "amount": Decimal("1.50")}


async def test_S14_a_resume_rebuilds_the_results_of_the_steps_before_the_crash(
    tmp_path: Path,
) -> None:
    text = response_text({"n": 1, "amount": Decimal("1.50")}, "TwoSteps", "Answer")
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        result = await resume_from(store, [
            _entry(0, "Answer", StepStatus.STARTED), _entry(0, "Answer", StepStatus.COMPLETED, text)
        ])
    assert result.results[0].response == {"n": 1, "amount": Decimal("1.50")}
    assert type(result.results[0].response["amount"]) is Decimal
    assert result.results[0].step_name == "Answer"
    assert isinstance(result.results[1].response, type(threading.Lock()))  # ran in this run


async def test_S14_a_step_journaled_before_0_6_resumes_with_an_unjournaled_response(
    tmp_path: Path,
) -> None:
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        result = await resume_from(store, [
            _entry(0, "Answer", StepStatus.STARTED), _entry(0, "Answer", StepStatus.COMPLETED)
        ])
    lost = result.results[0].response
    assert isinstance(lost, UnjournaledResponse)
    assert "before 0.6.0" in lost.reason
    assert result.status is SagaStatus.COMPLETED


async def test_S14_a_response_that_no_longer_decodes_does_not_stop_the_saga(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = json.dumps({"$fs": ["obj", ["no_such_module:Renamed", {}]]})
    caplog.set_level(logging.WARNING, logger="fallback_saga")
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        result = await resume_from(store, [
            _entry(0, "Answer", StepStatus.STARTED), _entry(0, "Answer", StepStatus.COMPLETED, gone)
        ])
    assert result.status is SagaStatus.COMPLETED
    lost = result.results[0].response
    assert isinstance(lost, UnjournaledResponse)
    assert "no_such_module" in lost.reason
    assert "cannot be read back" in caplog.text


def test_S14_an_unjournalable_response_is_warned_about_once_per_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fallback_saga")

    class Secretive:
        def __repr__(self) -> str:
            return "password=hunter2"

    texts = {response_text(Secretive(), "OnceSaga", "Leak") for _ in range(3)}
    assert len(texts) == 1
    assert caplog.text.count("cannot be journaled") == 1
    assert "hunter2" not in caplog.text
    assert "hunter2" not in texts.pop()


def test_S14_user_data_shaped_like_the_marker_is_not_mistaken_for_one() -> None:
    shaped = {"$fs": ["unjournaled", ["x", "y"]]}
    entry = journal_entry((0, "A", "primary", "act", StepStatus.COMPLETED, 1, None, 0.0, shaped),
                          "S")
    record = SagaRecord("s", "S", "fp", SagaStatus.RUNNING, {}, [entry])
    assert journaled_results(record)[0].response == shaped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_S14_every_journalable_response_comes_back_identical(response: Any) -> None:
    entry = journal_entry(
        (0, "A", "primary", "act", StepStatus.COMPLETED, 1, None, 0.0, response), "S"
    )
    record = SagaRecord("s", "S", "fp", SagaStatus.RUNNING, {}, [entry])
    back = journaled_results(record)[0].response
    assert not isinstance(back, UnjournaledResponse), entry.result
    found = difference(response, back)
    assert found is None, found


@dataclasses.dataclass
class Receipt:
    order: str
    amount: Decimal
    size: Size
    where: Point | None = None
    lines: list[Any] = dataclasses.field(default_factory=list)


class Booked(Response):
    booking_id: str
    seats: int


def _written_by_the_codec(response: Any) -> str:
    return encode_json(journal_untyped(response, "response"))


@pytest.mark.parametrize(
    "responses",
    [
        [Point(1, 2), Point(-3, 4)],
        [Booked(booking_id="b-1", seats=2), Booked(booking_id="ü\ud800", seats=0)],
        [Receipt("o-1", Decimal("9.99"), Size.SMALL),
         Receipt("o-2", Decimal("-0"), Size.LARGE, Point(0, 0), [{"k": (1, 2)}, None])],
    ],
    ids=["dataclass", "response", "nested"],
)
def test_S14_a_response_class_seen_before_is_journaled_as_the_first_was(
    responses: list[Any],
) -> None:
    """response_text learns a class written as an object from its first
    response and writes the next ones without the codec's dispatch: the
    text is the codec's, byte for byte."""
    _responses._OBJECT_TEXT.pop(type(responses[0]), None)
    for response in [*responses, *responses]:  # the first learns, then the fast path
        assert response_text(response, "S", "A") == _written_by_the_codec(response)
    assert _responses._OBJECT_TEXT[type(responses[0])] is not None


def test_S14_a_learnt_response_class_that_cannot_be_journaled_gives_the_same_marker() -> None:
    good = Receipt("o-1", Decimal("1"), Size.SMALL)
    bad = Receipt("o-2", Decimal("1"), Size.SMALL, lines=[object()])
    _responses._OBJECT_TEXT.pop(Receipt, None)
    unlearnt = response_text(bad, "S", "A")
    assert Receipt not in _responses._OBJECT_TEXT  # nothing learnt from a failure
    response_text(good, "S", "A")
    assert _responses._OBJECT_TEXT[Receipt] is not None
    assert response_text(bad, "S", "A") == unlearnt
    assert "unjournaled" in unlearnt


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_S14_a_response_written_twice_is_written_the_same(response: Any) -> None:
    try:
        expected = _written_by_the_codec(response)
    except ContextSerializationError:
        return  # the marker's path: covered above
    assert response_text(response, "S", "A") == expected
    assert response_text(response, "S", "A") == expected
