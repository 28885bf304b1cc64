"""A new developer's mistakes get an error that names the culprit and says
what to do — at class creation (S11) or when the saga is built or started,
before any ``act`` runs (S12) — instead of being silently ignored or turned
into a wrong behaviour. No message holds a context value."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
from typing import Any, ClassVar

import pytest
from helpers_saga import declare

from fallback_saga import (
    CircuitBreaker,
    CircuitState,
    ContextSerializationError,
    Fallback,
    LoggingListener,
    MemorySagaStore,
    Parallel,
    RecoveryWorker,
    RetryPolicy,
    Saga,
    SagaAlreadyExists,
    SagaBusy,
    SagaContext,
    SagaDefinitionError,
    SagaFailed,
    SagaListener,
    SagaStatus,
    SagaStepHandler,
    SagaStepResult,
    SagaStoreError,
    SQLiteSagaStore,
    SubSaga,
    recover,
)

SECRET = "tok-hunter2"


@dataclasses.dataclass
class SecretCtx(SagaContext):
    token: str = SECRET
    done: list[str] = dataclasses.field(default_factory=list)


class Records(SagaStepHandler[SecretCtx, str]):
    async def act(self, context: SecretCtx) -> SagaStepResult[SecretCtx, str]:
        context.done.append("records")
        return self._generate_step_result("ok")


# --------------------------------------------------------------------------- S6: retry_on


class BusinessError(Exception):
    pass


def test_S6_retry_on_a_single_exception_type_retries_only_that_type() -> None:
    """``retry_on=ConnectionError`` (no tuple) is a type, and a type is callable:
    taken for a predicate, ``ConnectionError(error)`` is truthy and every error
    was retried — a business error too."""
    policy = RetryPolicy(retry_on=ConnectionError)
    assert policy.retry_on == (ConnectionError,)
    assert policy.should_retry(ConnectionError("reset"), 1)
    assert not policy.should_retry(BusinessError("card declined"), 1)


def test_S6_retry_on_a_list_of_types_is_taken_as_a_tuple() -> None:
    policy = RetryPolicy(retry_on=[ConnectionError, TimeoutError])  # type: ignore[arg-type]
    assert policy.retry_on == (ConnectionError, TimeoutError)
    assert not policy.should_retry(BusinessError(), 1)


@pytest.mark.parametrize("field", ["delay", "backoff", "max_delay", "jitter"])
def test_S6_a_bool_is_not_a_number_of_seconds(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: True})  # type: ignore[arg-type]


def test_S6_an_infinite_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=float("inf"))


def test_S6_a_sleep_that_is_not_callable_is_refused_when_the_policy_is_made() -> None:
    """Not when the first compensation is retried, in the middle of an unwinding."""
    with pytest.raises(TypeError, match="sleep"):
        RetryPolicy(sleep=0.1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- S9: exclude


def test_S9_exclude_takes_a_single_exception_type() -> None:
    breaker = CircuitBreaker(exclude=BusinessError, fail_max=1)  # type: ignore[arg-type]

    async def declines() -> None:
        raise BusinessError("card declined")

    async def main() -> None:
        with pytest.raises(BusinessError):
            await breaker.call(declines)

    asyncio.run(main())
    assert breaker.failure_count == 0


def test_S9_exclude_that_is_a_string_is_named_whole() -> None:
    with pytest.raises(TypeError, match="'ValueError'"):
        CircuitBreaker(exclude="ValueError")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- listeners


class AsyncHooks(SagaListener):
    async def saga_finished(  # type: ignore[override]
        self, saga_id: str, saga_name: str, status: object, error: BaseException | None
    ) -> None:
        pass


class AsyncBreakerHook:
    async def breaker_state_changed(self, breaker: str, old: str, new: str) -> None:
        pass


def test_a_listener_class_instead_of_an_instance_is_refused() -> None:
    """Its hooks were looked up on ``type``: none found, nothing ever logged."""
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"LoggingListener\(\)"):
        saga(listeners=[LoggingListener])
    with pytest.raises(TypeError, match=r"LoggingListener\(\)"):
        CircuitBreaker(listeners=[LoggingListener])


def test_an_async_hook_is_refused_naming_it() -> None:
    """It was called and never awaited: a RuntimeWarning, and nothing done."""
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"AsyncHooks\.saga_finished.*async"):
        saga(listeners=[AsyncHooks()])
    with pytest.raises(TypeError, match=r"AsyncBreakerHook\.breaker_state_changed.*async"):
        CircuitBreaker(listeners=[AsyncBreakerHook()])


class GeneratorHooks(SagaListener):
    def saga_finished(  # type: ignore[override]
        self, saga_id: str, saga_name: str, status: object, error: BaseException | None
    ) -> Any:
        yield status


class AsyncGeneratorHooks(SagaListener):
    async def saga_finished(  # type: ignore[override]
        self, saga_id: str, saga_name: str, status: object, error: BaseException | None
    ) -> Any:
        yield status


def test_a_generator_hook_is_refused_naming_it() -> None:
    """A hook that ``yield``s (a generator, or an async generator, which
    ``iscoroutinefunction`` does not see) was called and its body never ran:
    nothing done, without a word — as an async hook, which is refused."""
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"GeneratorHooks\.saga_finished.*generator"):
        saga(listeners=[GeneratorHooks()])
    with pytest.raises(TypeError, match=r"AsyncGeneratorHooks\.saga_finished.*generator"):
        saga(listeners=[AsyncGeneratorHooks()])


class TooFewParameters(SagaListener):
    def step_completed(self) -> None:  # type: ignore[override]
        pass


class KeywordOnlyParameters(SagaListener):
    def step_completed(self, *, saga_id: str, step: str) -> None:  # type: ignore[override]
        pass


class TooManyParameters:
    def breaker_state_changed(self, breaker: str, old: str, new: str, when: float) -> None:
        pass


class FlexibleParameters(SagaListener):
    def step_completed(self, *args: object, extra: int = 0) -> None:  # type: ignore[override]
        pass

    def step_failed(self, saga_id: str, step: str, error: BaseException,  # type: ignore[override]
                    note: str = "") -> None:
        pass


def test_a_hook_that_cannot_take_its_arguments_is_refused_naming_it() -> None:
    """A hook declared with parameters it is not called with (none, keyword
    only, one too many) raised a TypeError at each call: logged and
    ignored, so the listener heard nothing — found at run time, one log
    line per transition. Refused when the saga or breaker is built, naming
    the hook and the parameters it is called with; ``*args`` and extra
    parameters with defaults are fine."""
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"TooFewParameters\.step_completed.*\(saga_id, step\)"):
        saga(listeners=[TooFewParameters()])
    with pytest.raises(TypeError, match=r"KeywordOnlyParameters\.step_completed"):
        saga(listeners=[KeywordOnlyParameters()])
    with pytest.raises(TypeError, match=r"TooManyParameters\.breaker_state_changed"):
        CircuitBreaker(listeners=[TooManyParameters()])
    saga(listeners=[FlexibleParameters()])


# --------------------------------------------------------------------------- a forgotten await


async def _child_context(parent: SecretCtx) -> SecretCtx:
    return SecretCtx()


async def _merge(parent: SecretCtx, child: SecretCtx) -> None:
    parent.done.append("merged")


@pytest.mark.parametrize("keyword", ["context", "merge"])
def test_S11_an_async_subsaga_context_or_merge_is_refused_naming_it(keyword: str) -> None:
    """Called without await, an async ``context=`` handed the child a
    coroutine (a confusing "runs on SecretCtx, got coroutine" once the saga
    ran), and an async ``merge=`` merged nothing, silently."""
    child = declare(Records, context=SecretCtx)
    given: dict[str, Any] = {"context": lambda parent: SecretCtx()}
    given[keyword] = _child_context if keyword == "context" else _merge
    with pytest.raises(TypeError, match=rf"SubSaga\({child.__name__}\) {keyword}= is an async "
                                        r"function \(_\w+\).*declare it with `def`"):
        SubSaga(child, **given)


@pytest.mark.parametrize("keyword", ["context", "merge"])
async def test_S12_a_subsaga_lambda_returning_a_coroutine_fails_its_step_saying_so(
    keyword: str,
) -> None:
    """A lambda around an async call looks synchronous when the SubSaga is
    made; its coroutine is refused when the step runs, naming the step, and
    nothing is left done: the merge's child is undone."""
    child = declare(Records, context=SecretCtx, name="Child")
    given: dict[str, Any] = {"context": lambda parent: SecretCtx(), "name": "Pay"}
    given[keyword] = ((lambda parent: _child_context(parent)) if keyword == "context"
                      else (lambda parent, kid: _merge(parent, kid)))
    parent = declare(SubSaga(child, **given), context=SecretCtx, name="Parent")
    store = MemorySagaStore()
    with pytest.raises(SagaFailed) as info:
        await parent(store=store).run(SecretCtx(), saga_id="p")
    assert info.value.status is SagaStatus.COMPENSATED
    assert isinstance(info.value.error, TypeError)
    assert f"SubSaga 'Pay': {keyword}= returned an awaitable (coroutine)" in str(info.value.error)
    assert "must be a plain function" in str(info.value.error)
    if keyword == "merge":
        assert (await store.load("p/Pay")).status is SagaStatus.COMPENSATED


async def test_S12_a_transaction_without_async_says_to_use_async_with_and_async_for() -> None:
    saga = declare(Records, context=SecretCtx)(store=MemorySagaStore())
    transaction = saga.transaction(SecretCtx())
    with (
        pytest.raises(TypeError, match=r"use `async with saga\.transaction\(context\) as tx:`"),
        transaction,  # type: ignore[attr-defined]
    ):
        pass
    async with transaction as tx:
        with pytest.raises(TypeError, match=r"`async for step_result in tx:`"):
            for _ in tx:  # type: ignore[attr-defined]
                pass
        assert [result.step_name async for result in tx] == ["Records"]
    assert tx.status is SagaStatus.COMPLETED


def test_a_single_listener_not_in_a_list_says_to_pass_a_list() -> None:
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"listeners=\[LoggingListener\(\)\]"):
        saga(listeners=LoggingListener())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- stores


@pytest.mark.parametrize("store_class", [MemorySagaStore, SQLiteSagaStore])
def test_S12_a_store_class_instead_of_an_instance_is_refused_when_the_saga_is_built(
    store_class: type,
) -> None:
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=rf"store=.*instance.*class {store_class.__name__}"):
        saga(store=store_class)


@pytest.mark.parametrize("writer", ["thread", "process", "inline"])
async def test_S12_a_store_path_in_a_directory_that_does_not_exist_names_it(
    tmp_path: Any, writer: str
) -> None:
    """SQLite's own words ("unable to open database file") did not say that
    the store makes its file, never the directories above it."""
    missing = tmp_path / "var" / "lib" / "shop"
    with pytest.raises(SagaStoreError) as caught:
        async with SQLiteSagaStore(missing / "sagas.db", writer=writer):
            pass
    message = str(caught.value)
    assert f"the directory {missing} does not exist" in message
    assert "create it" in message
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("writer", ["thread", "process", "inline"])
async def test_S12_a_store_path_that_is_a_directory_says_to_name_a_file(
    tmp_path: Any, writer: str
) -> None:
    with pytest.raises(SagaStoreError) as caught:
        async with SQLiteSagaStore(tmp_path, writer=writer):
            pass
    message = str(caught.value)
    assert f"{tmp_path} is a directory" in message
    assert "sagas.db" in message  # the path of a file in it, for example


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_S12_a_saga_id_used_twice_says_to_give_another_or_resume_it(
    tmp_path: Any, durable: bool
) -> None:
    """A new user's script run twice with a fixed id: what to do, not only what is wrong."""
    saga = declare(Records, context=SecretCtx)
    async with contextlib.AsyncExitStack() as stack:
        store = (await stack.enter_async_context(SQLiteSagaStore(tmp_path / "s.db"))
                 if durable else MemorySagaStore())
        await saga(store=store).run(SecretCtx(), saga_id="order-42")
        with pytest.raises(SagaAlreadyExists) as caught:
            await saga(store=store).run(SecretCtx(), saga_id="order-42")
    message = str(caught.value)
    assert message.startswith("a saga with id 'order-42' already exists in the store")
    assert "give each its own id" in message
    assert "resume('order-42')" in message


async def _start_again(saga: Saga[Any], entry: str) -> None:
    if entry == "run":
        await saga.run(SecretCtx(), saga_id="order-42")
        return
    async with saga.transaction(SecretCtx(), saga_id="order-42") as steps:
        async for _ in steps:
            pass


@pytest.mark.parametrize("entry", ["run", "transaction"])
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_S12_a_saga_id_used_twice_is_told_in_the_words_of_the_call_that_reused_it(
    tmp_path: Any, durable: bool, entry: str
) -> None:
    """``saga.transaction(ctx, saga_id=...)`` with a taken id is not told that
    "run() starts a new saga": the message names the call that was made."""
    saga = declare(Records, context=SecretCtx)
    async with contextlib.AsyncExitStack() as stack:
        store = (await stack.enter_async_context(SQLiteSagaStore(tmp_path / "s.db"))
                 if durable else MemorySagaStore())
        await saga(store=store).run(SecretCtx(), saga_id="order-42")
        with pytest.raises(SagaAlreadyExists) as caught:
            await _start_again(saga(store=store), entry)
    message = str(caught.value)
    other = "transaction" if entry == "run" else "run"
    assert f"{entry}() starts a new saga" in message
    assert f"{other}()" not in message
    assert "resume('order-42')" in message
    assert caught.value.saga_id == "order-42"


def test_S12_a_saga_id_used_twice_keeps_its_message_when_pickled() -> None:
    """Sent to another process (a worker's), the error reads as it did."""
    taken = SagaAlreadyExists("order-42").started_by("transaction()")
    copied = pickle.loads(pickle.dumps(taken))
    assert str(copied) == str(taken)
    assert copied.saga_id == "order-42"


class PaymentClient:
    """A service client, as a new user puts it in the context."""


@pytest.mark.parametrize(
    ("value", "kind"),
    [(PaymentClient(), "a PaymentClient"), (object(), "an object"), (lambda: None, "a function")],
    ids=["client", "object", "function"],
)
async def test_S12_a_context_field_that_cannot_be_journaled_says_where_it_belongs(
    value: object, kind: str
) -> None:
    """Not only that it "cannot be stored as JSON": where such an object goes
    instead (on the step), and what a class of one's own needs."""

    @dataclasses.dataclass
    class WithClient(SagaContext):
        client: object = None

    class Charge(SagaStepHandler[WithClient, None]):
        async def act(self, context: WithClient) -> SagaStepResult[WithClient, None]:
            return self._generate_step_result(None)

    class ClientSaga(Saga[WithClient]):
        steps: ClassVar[list[Any]] = [Charge]

    with pytest.raises(ContextSerializationError) as caught:
        await ClientSaga().run(WithClient(client=value))
    message = str(caught.value)
    assert f"context field 'client' holds {kind}, which cannot be stored as JSON" in message
    for advice in ("on the step", "step_factory", "to_dict()", "dataclass"):
        assert advice in message


async def test_S12_a_saga_leased_to_another_worker_says_until_when_in_utc_and_what_to_do(
    tmp_path: Any,
) -> None:
    """``resume`` of a saga another worker drives: its lease's end as a time
    a person reads (it was a raw Unix timestamp), and what to do."""
    saga = declare(Records, context=SecretCtx)
    async with SQLiteSagaStore(tmp_path / "s.db", clock=lambda: 1_800_000_000.0) as store:
        await store.create("o-1", saga.name, saga.definition.fingerprint,
                           SecretCtx().to_dict(), [])
        await store.claim(owner="worker-7", lease_seconds=600, older_than=-1, limit=1)
        with pytest.raises(SagaBusy) as caught:
            await saga(store=store).resume("o-1")
    message = str(caught.value)
    assert "is being driven by worker-7 (lease until 2027-01-15 08:10:00 UTC)" in message
    assert "1800000600" not in message
    assert "once its lease runs out" in message


def test_S12_a_store_that_is_not_a_store_is_refused_without_showing_it() -> None:
    """A path or a DSN given as the store: refused at once (it took the journal's
    whole retry budget, then a SagaInterrupted), and never echoed (a DSN may
    hold a password)."""
    saga = declare(Records, context=SecretCtx)
    dsn = f"postgresql://app:{SECRET}@db/sagas"
    with pytest.raises(TypeError, match=r"store=.*SagaStore.*got a str") as caught:
        saga(store=dsn)  # type: ignore[arg-type]
    assert SECRET not in str(caught.value)


async def test_S12_recovery_refuses_a_store_class_and_a_listener_class() -> None:
    with pytest.raises(TypeError, match=r"pass SQLiteSagaStore\(\.\.\.\)"):
        await recover(SQLiteSagaStore, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass SQLiteSagaStore\(\.\.\.\)"):
        RecoveryWorker(SQLiteSagaStore, [])  # type: ignore[arg-type]
    store = SQLiteSagaStore(":memory:")
    with pytest.raises(TypeError, match=r"LoggingListener\(\)"):
        await recover(store, [], listeners=[LoggingListener])
    with pytest.raises(TypeError, match=r"LoggingListener\(\)"):
        RecoveryWorker(store, [], listeners=[LoggingListener])


# --------------------------------------------------------------------------- S11: signatures


class ActWithoutContext(SagaStepHandler[SecretCtx, None]):
    async def act(self) -> None:  # type: ignore[override]
        return None


class ActWithAnExtraArgument(SagaStepHandler[SecretCtx, None]):
    async def act(self, context: SecretCtx, gateway: object) -> None:  # type: ignore[override]
        return None


class CompensateWithoutContext(SagaStepHandler[SecretCtx, None]):
    async def act(self, context: SecretCtx) -> None:
        return None

    async def compensate(self) -> None:  # type: ignore[override]
        return None


class TakesContextOptionally:
    async def act(self, context: object, *extra: object, retries: int = 0) -> None:
        return None

    async def compensate(self, *args: object) -> None:
        return None


@pytest.mark.parametrize(
    ("step", "method"),
    [
        (ActWithoutContext, "ActWithoutContext.act"),
        (ActWithoutContext(), "ActWithoutContext.act"),
        (ActWithAnExtraArgument, "ActWithAnExtraArgument.act"),
        (CompensateWithoutContext, "CompensateWithoutContext.compensate"),
    ],
)
def test_S11_a_step_method_that_cannot_take_the_context_is_refused_at_class_creation(
    step: Any, method: str
) -> None:
    """It failed every run with a TypeError — taken, as any error, for a
    failure of the step (and by a Fallback as the reason to fall back)."""
    with pytest.raises(SagaDefinitionError, match=rf"steps\[1\].*{method}.*\(self, context\)"):
        declare(Records, step, context=SecretCtx)


def test_S11_a_fallback_primary_that_cannot_take_the_context_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match=r"steps\[0\]\.step.*ActWithoutContext\.act"):
        declare(Fallback(step=ActWithoutContext, fallback=Records), context=SecretCtx)


def test_S11_a_step_method_that_takes_the_context_among_others_is_fine() -> None:
    declare(TakesContextOptionally, context=SecretCtx)


class StaticSteps:
    @staticmethod
    async def act(context: object) -> None:
        return None

    @classmethod
    async def compensate(cls, context: object) -> None:
        return None


def test_S11_static_and_class_methods_taking_the_context_are_fine() -> None:
    declare(StaticSteps, context=SecretCtx)


# --------------------------------------------------------------------------- a missing await


class Inventory:
    def __init__(self) -> None:
        self.reserved: list[str] = []
        self.released: list[str] = []

    async def reserve(self) -> str:
        self.reserved.append("r")
        return "r"

    async def release(self) -> None:
        self.released.append("r")


INVENTORY = Inventory()


class ReturnsUnawaited(SagaStepHandler[SecretCtx, Any]):
    async def act(self, context: SecretCtx) -> Any:
        return INVENTORY.reserve()  # forgot await


class WrapsUnawaited(SagaStepHandler[SecretCtx, Any]):
    async def act(self, context: SecretCtx) -> Any:
        return self._generate_step_result(INVENTORY.reserve())  # forgot await


class CompensatesUnawaited(SagaStepHandler[SecretCtx, str]):
    async def act(self, context: SecretCtx) -> SagaStepResult[SecretCtx, str]:
        return self._generate_step_result("ok")

    async def compensate(self, context: SecretCtx) -> Any:
        return INVENTORY.release()  # forgot await


class Fails(SagaStepHandler[SecretCtx, None]):
    async def act(self, context: SecretCtx) -> None:
        raise RuntimeError("card declined")


class StepListener(SagaListener):
    def step_completed(self, saga_id: str, step: str) -> None:
        pass


async def _run_expecting_unawaited(saga: Any, message: str) -> SagaFailed:
    with pytest.raises(SagaFailed) as caught:
        await saga.run(SecretCtx())
    error = caught.value.error
    assert isinstance(error, TypeError)
    assert message in str(error)
    assert "await" in str(error)
    assert SECRET not in str(error)
    return caught.value


@pytest.mark.filterwarnings("error::RuntimeWarning")  # "coroutine ... was never awaited"
@pytest.mark.parametrize(
    "how", ["plain", "listener", "retry", "timeout", "group", "sqlite", "wrapped"]
)
async def test_S7_an_act_that_returns_a_coroutine_fails_the_step(how: str, tmp_path: Any) -> None:
    """The work it was to await never ran, and the saga said COMPLETED."""
    step: Any = WrapsUnawaited if how == "wrapped" else ReturnsUnawaited
    if how == "retry":
        step = type("Retried", (ReturnsUnawaited,), {"retry": RetryPolicy(attempts=1)})
    if how == "timeout":
        step = type("Timed", (ReturnsUnawaited,), {"timeout": 5.0})
    steps: list[Any] = [Records, Parallel(step) if how == "group" else step]
    saga_cls = declare(*steps, context=SecretCtx)
    if how == "sqlite":
        async with SQLiteSagaStore(tmp_path / "s.db") as store:
            failed = await _run_expecting_unawaited(saga_cls(store=store), "Inventory.reserve")
    else:
        listeners = [StepListener()] if how == "listener" else []
        failed = await _run_expecting_unawaited(
            saga_cls(listeners=listeners), "Inventory.reserve"
        )
    assert failed.status is SagaStatus.COMPENSATED


@pytest.mark.filterwarnings("error::RuntimeWarning")
async def test_S6_a_compensate_that_returns_a_coroutine_is_a_failed_compensation() -> None:
    saga = declare(CompensatesUnawaited, Fails, context=SecretCtx)(
        compensation_retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(SagaFailed) as caught:
        await saga.run(SecretCtx())
    assert caught.value.status is SagaStatus.FAILED  # an operator must look: nothing was undone
    error = caught.value.compensation_errors["CompensatesUnawaited"]
    assert isinstance(error, TypeError)
    assert "Inventory.release" in str(error)


class NamedLikeRecords(SagaStepHandler[SecretCtx, None]):
    name = "Records"

    async def act(self, context: SecretCtx) -> None:
        return None


def test_S11_a_name_used_on_both_sides_of_a_fallback_says_which_sides() -> None:
    """It said "(steps[0] and steps[0])"."""
    with pytest.raises(SagaDefinitionError, match=r"\(steps\[0\]\.step and steps\[0\]\.fallback\)"):
        declare(Fallback(step=Records, fallback=NamedLikeRecords), context=SecretCtx)


# --------------------------------------------------------------------------- constructor arguments


def test_S12_a_step_factory_that_is_not_callable_is_named() -> None:
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"step_factory.*factory\(step_class\)"):
        saga(step_factory=object())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [1, b"payments", ""])
def test_S9_a_breaker_name_is_a_non_empty_str(name: object) -> None:
    """It names the breaker in errors, logs and the shared state store."""
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(name=name)  # type: ignore[arg-type]


def test_S12_saga_busy_says_until_when_in_utc_not_as_a_unix_number() -> None:
    """``SagaBusy`` tells an operator until when the lease holds, as the CLI
    and the console print times (``YYYY-MM-DD HH:MM:SS UTC``): it printed
    the store's Unix time (``lease until 1796514863.1``). A time no calendar
    holds (a corrupt row) is quoted as stored, and no time says so."""
    from fallback_saga import SagaBusy

    busy = SagaBusy("o-1", "worker-7", 1796514863.1)
    assert "lease until 2026-12-05 23:54:23 UTC" in str(busy), str(busy)
    assert "1796514863" not in str(busy)
    assert busy.expires_at == 1796514863.1  # the number stays for programs
    assert "lease until 1e+300" in str(SagaBusy("o-1", "w", 1e300))
    assert "lease until an unknown time" in str(SagaBusy("o-1", None, None))


def _sync_charge(amount: int) -> int:
    return amount


async def _refused_by_the_service(amount: int) -> int:
    raise TypeError(f"the service's own TypeError ({amount})")


async def test_S9_a_breaker_guarding_a_plain_function_says_to_make_it_async_def() -> None:
    """``breaker.call(fn)`` and ``@breaker`` on a function that is not
    ``async def`` gave Python's bare "object int can't be used in 'await'
    expression", and counted it as a failure: ``fail_max`` such calls opened
    the circuit, the misuse hidden behind ``CircuitOpenError``. The error now
    names the function and what to do, and is no failure of the service, on
    every path (closed, nested, half-open trial: the trial's slot goes back).
    Decorating is not refused: a plain function returning an awaitable is
    fine, and a coroutine's own TypeError still counts."""
    now = [0.0]
    breaker = CircuitBreaker(fail_max=2, reset_timeout=10.0, clock=lambda: now[0])
    guarded = breaker(_sync_charge)  # type: ignore[arg-type]
    says = r"_sync_charge\(\) \(it ran\) returned int, not an awaitable: make it an 'async def'"
    for _ in range(3):  # closed: more than fail_max times
        with pytest.raises(TypeError, match=says) as raised:
            await breaker.call(_sync_charge, 5)  # type: ignore[arg-type]
        assert raised.value.__cause__ is None
        with pytest.raises(TypeError, match=says):
            await guarded(5)
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)
    async with breaker:  # nested in a guarded block: passes straight through
        with pytest.raises(TypeError, match=says):
            await breaker.call(_sync_charge, 5)  # type: ignore[arg-type]

    async def later(amount: int) -> int:
        return amount

    assert await breaker(lambda amount: later(amount))(7) == 7  # returns an awaitable: fine

    for _ in range(2):  # a coroutine's own TypeError is the service failing
        with pytest.raises(TypeError, match="the service's own"):
            await breaker.call(_refused_by_the_service, 1)
    assert breaker.state is CircuitState.OPEN
    now[0] += 10.0  # half-open: one trial at a time
    with pytest.raises(TypeError, match=says):
        await breaker.call(_sync_charge, 5)  # type: ignore[arg-type]
    assert breaker.half_open_calls_in_flight == 0
    assert await breaker.call(later, 9) == 9  # the trial slot was given back
    assert breaker.state is CircuitState.CLOSED


async def test_S9_a_breaker_given_no_function_says_so_and_counts_nothing() -> None:
    """``breaker.call(charge(5))`` (the coroutine, not the function) or
    ``breaker.call(3)`` gave Python's bare "'coroutine' object is not
    callable" and counted it as a failure of the service: ``fail_max`` such
    calls opened the circuit for every caller. A misuse, as a function that
    is not ``async def`` is: named, on every path, nothing recorded."""
    now = [0.0]
    breaker = CircuitBreaker(fail_max=2, reset_timeout=10.0, clock=lambda: now[0])

    async def later(amount: int) -> int:
        return amount

    says = r"takes the function to call and its arguments"
    for _ in range(3):  # closed: more than fail_max times
        with pytest.raises(TypeError, match=says + r".*got 3 \(int\)"):
            await breaker.call(3)  # type: ignore[arg-type]
        coroutine = later(5)
        with pytest.raises(TypeError, match=r"breaker\.call\(later, \.\.\.\).*the coroutine"):
            await breaker.call(coroutine)  # type: ignore[arg-type]
        assert coroutine.cr_frame is None  # closed: no "never awaited" warning later
    assert (breaker.state, breaker.failure_count) == (CircuitState.CLOSED, 0)
    async with breaker:  # nested in a guarded block: passes straight through
        with pytest.raises(TypeError, match=says):
            await breaker.call(3)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(TypeError, match="the service's own"):
            await breaker.call(_refused_by_the_service, 1)
    assert breaker.state is CircuitState.OPEN
    now[0] += 10.0  # half-open: the misuse gives the trial's slot back
    with pytest.raises(TypeError, match=says):
        await breaker.call(3)  # type: ignore[arg-type]
    assert breaker.half_open_calls_in_flight == 0
    assert await breaker.call(later, 9) == 9
    assert breaker.state is CircuitState.CLOSED


# --------------------------------------------------------------------------- a hook misnamed


class PrefixedHooks(SagaListener):
    """Named as other libraries name their callbacks: never called here."""

    def on_saga_finished(
        self, saga_id: str, saga_name: str, status: object, error: BaseException | None
    ) -> None:
        pass


class MisspeltHook:
    def step_completed(self, *args: object) -> None:  # a real hook: a listener it is
        pass

    def compensation_faild(self, *args: object) -> None:
        pass


class HelperNamedLikeAHook(SagaListener):
    """A method extending a hook's name is the listener's own: left alone."""

    def saga_started_at(self, saga_id: str) -> float:
        return 0.0

    def _step_complete(self) -> None:  # private: left alone
        pass


def test_a_listener_hook_named_with_on_is_refused_naming_the_hook() -> None:
    """``on_saga_finished`` was never called: the hook is ``saga_finished``,
    and a listener that meant it heard nothing, silently."""
    saga = declare(Records, context=SecretCtx)
    with pytest.raises(TypeError, match=r"PrefixedHooks\.on_saga_finished.*'saga_finished'"):
        saga(listeners=[PrefixedHooks()])
    with pytest.raises(TypeError, match=r"PrefixedHooks\.on_saga_finished"):
        CircuitBreaker(listeners=[PrefixedHooks()])


def test_a_listener_method_one_letter_off_a_hook_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A misspelt hook is likely but not certain: the saga is built, and a
    warning names the method and the hook it may have meant — once a class."""
    saga = declare(Records, context=SecretCtx)
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        saga(listeners=[MisspeltHook()])
        saga(listeners=[MisspeltHook()])
    warned = [r.getMessage() for r in caplog.records if "compensation_faild" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "MisspeltHook.compensation_faild" in warned[0]
    assert "'compensation_failed'" in warned[0]


def test_a_listener_method_extending_a_hook_name_is_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    saga = declare(Records, context=SecretCtx)
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        saga(listeners=[HelperNamedLikeAHook(), LoggingListener()])
    assert [r for r in caplog.records if "hook" in r.getMessage()] == []
