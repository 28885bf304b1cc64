"""S12: the library's own log lines (and traces) never quote a secret an
error text carries — a participant's exception quoting a card number under
its key, a password, a token in a URL's query — while the rest of the text
is still there for an operator to diagnose from."""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers_cli import import_app
from helpers_saga import Boom, OrderCtx, Probe, declare

import fallback_saga
from fallback_saga import (
    CircuitBreaker,
    Fallback,
    LoggingListener,
    RetryPolicy,
    SagaFailed,
    SagaListener,
    SQLiteSagaStore,
)
from fallback_saga.cli import main
from fallback_saga.errors import MAX_ERROR_TEXT
from fallback_saga.events import _log as events_log

CARD = "4111111111111111"
PASSWORD = "hunter2-Pa55"
TOKEN = "sk_live_51Hx9"
SECRETS = (CARD, PASSWORD, TOKEN)
# What a gateway's client raises: a payload's repr, a DSN's password, a URL.
DECLINED = (
    f"card declined by gateway: {{'card_number': '{CARD}', 'amount': 125}} "
    f"(db password={PASSWORD}, callback https://pay.example/cb?api_key={TOKEN}&order=o-7)"
)
# What stays, for an operator to diagnose from.
KEPT = ("card declined by gateway", "'card_number': ***", "'amount': 125", "password=***",
        "api_key=***&order=o-7")
FAST = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)


def _failing_saga(listeners: list[object]) -> object:
    return declare(
        Probe("Reserve", [], comp_error=lambda: Boom("release refused: " + DECLINED)),
        Fallback(step=Probe("Charge", [], error=lambda: Boom(DECLINED)),
                 fallback=Probe("Invoice", [], error=lambda: Boom(DECLINED))),
    )(listeners=listeners, compensation_retry=FAST)


def _assert_redacted(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)
    for kept in KEPT:
        assert kept in text, (kept, text)


@pytest.mark.parametrize("own_logger", [False, True])
async def test_S12_the_logging_listener_redacts_secrets_an_error_text_quotes(
    caplog: pytest.LogCaptureFixture, own_logger: bool
) -> None:
    """Step failures, the saga's end, compensation attempts and their
    failure, and a breaker's store failure: each line quotes the error text
    redacted, on the library's logger and on one the program gives."""
    logger = logging.getLogger("app.sagas") if own_logger else None
    listener = LoggingListener(logger=logger)
    saga = _failing_saga([listener])
    breaker = CircuitBreaker(name="cards", listeners=[listener])

    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SagaFailed):
            await saga.run(OrderCtx(), saga_id="o-7")  # type: ignore[attr-defined]
        listener.breaker_state_store_failed(breaker.name, Boom(DECLINED))

    failures = [record for record in caplog.records if "declined" in record.getMessage()]
    # step_failed (twice), the compensate attempts, compensation_failed,
    # saga_finished, the breaker's store.
    assert len(failures) >= 5, [record.getMessage() for record in caplog.records]
    for record in failures:
        _assert_redacted(record.getMessage())
    for secret in SECRETS:
        assert secret not in caplog.text
        assert all(secret not in repr(record.args) for record in caplog.records)


def _library_loggers() -> list[tuple[str, logging.Logger]]:
    """Every module logger of the package (``_log``)."""
    found = []
    for module in pkgutil.walk_packages(fallback_saga.__path__, "fallback_saga."):
        if module.name.endswith(".otel") or module.name.endswith("__main__"):
            continue
        log = getattr(importlib.import_module(module.name), "_log", None)
        if isinstance(log, logging.Logger):
            found.append((module.name, log))
    assert len(found) >= 10
    return found


_LOGGERS = _library_loggers()


@pytest.mark.parametrize(("module", "log"), _LOGGERS, ids=[module for module, _ in _LOGGERS])
def test_S12_every_library_logger_redacts_the_error_texts_it_quotes(
    caplog: pytest.LogCaptureFixture, module: str, log: logging.Logger
) -> None:
    """Recovery, the worker, the stores, resumption: every warning of the
    library quotes an error (as the exception, or its ``described`` text)
    through its module's logger, redacted."""
    with caplog.at_level(logging.DEBUG, logger=log.name):
        log.warning("saga %s: could not give its lease back: %s: %s", "o-7", "Boom",
                    Boom(DECLINED))
        log.warning("recovery: saga %s skipped (%s)", "o-7", f"Boom: {DECLINED}")

    messages = [record.getMessage() for record in caplog.records if record.name == log.name]
    assert len(messages) == 2, module
    for message in messages:
        _assert_redacted(message)


def test_S12_a_long_error_text_is_redacted_before_it_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A password across the cut at ``MAX_ERROR_TEXT``: cut first, its start
    would no longer read as a password and would be quoted."""
    log = logging.getLogger("fallback_saga")
    text = "x" * (MAX_ERROR_TEXT - 20) + f" password={PASSWORD * 10} " + "y" * 5000
    with caplog.at_level(logging.WARNING, logger="fallback_saga"):
        log.warning("failed: %s", Boom(text))

    message = caplog.records[-1].getMessage()
    assert PASSWORD[:8] not in message
    assert "password=***" in message
    assert f"… [{len(text) - MAX_ERROR_TEXT} more characters not shown]" in message


# A store whose journal writes fail with an error quoting what it was given
# (a driver's message), injected by the app ``recover --app`` loads.
APP_SOURCE = f"""
import dataclasses

from fallback_saga import Saga, SagaContext, SagaStepHandler


@dataclasses.dataclass
class Ctx(SagaContext):
    n: int = 0


class Noop(SagaStepHandler[Ctx, None]):
    async def act(self, context: Ctx) -> None:
        pass

    async def compensate(self, context: Ctx) -> None:
        pass


class KnownSaga(Saga[Ctx]):
    steps = [Noop]


def _refused(*args, **kwargs):
    raise OSError({DECLINED!r})


async def _refused_later(*args, **kwargs):
    _refused()


def sagas(store):
    store.append = _refused_later
    store.submit_append = _refused
    return [KnownSaga(store=store)]
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from import_app(tmp_path, monkeypatch, APP_SOURCE, "log_redaction_app")


def test_S12_recover_prints_the_reasons_it_reports_redacted(
    tmp_path: Path, app: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``recover``'s line per saga and its report quote why a saga was
    interrupted or skipped — a store's error, which may quote what it was
    given — redacted, as ``resume`` and ``show`` print error texts."""
    db = str(tmp_path / "sagas.db")

    async def journal() -> None:
        async with SQLiteSagaStore(db) as store:
            await store.create("o-7", "KnownSaga", app.KnownSaga.definition.fingerprint,
                               {"n": 1}, [])

    asyncio.run(journal())
    argv = ["recover", "--db", db, "--app", f"{app.__name__}:sagas", "--older-than", "0"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "interrupted o-7: " in out
    for secret in SECRETS:
        assert secret not in out, out
    assert "card declined by gateway: {'card_number': ***, 'amount': 125}" in out


def _raise_chained() -> None:
    try:
        raise Boom("gateway said: " + DECLINED)
    except Boom as cause:
        raise Boom(DECLINED) from cause


def _formatted_by_a_standard_handler(log: logging.Logger, write: object) -> str:
    """What a plain ``logging.Formatter`` writes of the records ``write`` logs."""
    lines: list[str] = []

    class _Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = _Kept(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    try:
        write()  # type: ignore[operator]
    finally:
        log.removeHandler(handler)
    return "\n".join(lines)


@pytest.mark.parametrize(("module", "log"), _LOGGERS, ids=[module for module, _ in _LOGGERS])
def test_S12_a_traceback_a_library_logger_writes_is_redacted(
    caplog: pytest.LogCaptureFixture, module: str, log: logging.Logger
) -> None:
    """A line logged with ``exc_info`` (the worker's "resuming a saga raised",
    a listener hook that raised) ends with the exception's text, and its
    chained one's: a standard formatter writes them redacted, the types, the
    frames and the rest of the texts as they are."""

    def write() -> None:
        try:
            _raise_chained()
        except Boom:
            log.exception("saga %s: resuming raised", "o-7")
        log.error("saga %s: resuming raised", "o-7", exc_info=Boom(DECLINED))

    with caplog.at_level(logging.DEBUG, logger=log.name):
        written = _formatted_by_a_standard_handler(log, write)

    for text in (written, caplog.text):
        _assert_redacted(text)
        assert "Traceback (most recent call last)" in text
        assert "in _raise_chained" in text
        assert "The above exception was the direct cause" in text
        assert "gateway said: card declined by gateway" in text
        assert text.count("Boom: card declined by gateway") >= 2, text


async def test_S12_a_listener_hook_that_raises_is_logged_with_its_traceback_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The path as it runs: a listener hook raises an error quoting a card
    number; the library logs that (with its traceback), redacted."""

    class Failing(SagaListener):
        def saga_started(self, saga_id: str, saga_name: str) -> None:
            raise Boom(DECLINED)

    saga = declare(Probe("Reserve", []))(listeners=[Failing()])
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logging.Formatter())
    events_log.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger=events_log.name):
            await saga.run(OrderCtx(), saga_id="o-7")  # type: ignore[attr-defined]
    finally:
        events_log.removeHandler(handler)
    text = written.getvalue()
    assert "listener hook" in text, text
    assert "Traceback (most recent call last)" in text, text
    assert "in saga_started" in text
    _assert_redacted(text)
