"""S12: the operator's views show a saga's values redacted by default, the
same in each of them — ``show``, ``show --json``, the web console's page and
its JSON API (``/api/sagas/<id>``): the value of every key named like a
secret (``card_number``, ``api_token``, ``db_password``) as ``***``, and a
password a string quotes (a DSN, a URL with credentials) too, in the
context, the step results and the error texts. A view pasted into a ticket
or scraped into a log does not carry them (DESIGN: never log secrets from
contexts by default).

The values as stored are an explicit opt-in of the operator's: ``show
--unredacted``, and ``?raw=1`` on a console *started* with
``allow_unredacted`` (``serve --allow-unredacted``); a console started
without it refuses ``?raw=1`` (403) — whoever can reach the page cannot
opt in on the starter's behalf.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers_console import fetch

from fallback_saga import (
    MemorySagaStore,
    Response,
    Saga,
    SagaContext,
    SagaFailed,
    SagaStepHandler,
    SagaStepResult,
    SQLiteSagaStore,
)
from fallback_saga.cli import main
from fallback_saga.console import ConsoleServer
from fallback_saga.redaction import REDACTED, is_secret_key, redacted
from fallback_saga.shown_text import redact

CARD = "4111111111111111"
TOKEN = "tok_live_5ecret"
PASSWORD = "hunter2-pw"
DSN = f"postgresql://app:{PASSWORD}@db.internal/orders"
SECRETS = (CARD, TOKEN, PASSWORD)


@dataclass
class Payment(SagaContext):
    order_id: str = "o-1"
    card_number: str = CARD
    api_token: str = TOKEN
    ledger_dsn: str = DSN


class Charged(Response):
    charge_id: str
    auth_token: str


class Charge(SagaStepHandler[Payment, Charged]):
    async def act(self, context: Payment) -> SagaStepResult[Payment, Charged]:
        return self._generate_step_result(Charged(charge_id="ch-1", auth_token=TOKEN))


class Book(SagaStepHandler[Payment, None]):
    async def act(self, context: Payment) -> SagaStepResult[Payment, None]:
        raise ConnectionError(f"ledger unreachable: host=db.internal password={PASSWORD}")


class PaymentSaga(Saga[Payment]):
    steps = [Charge, Book]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "sagas.db")

    async def journal() -> None:
        async with SQLiteSagaStore(path) as store:
            with pytest.raises(SagaFailed):
                await PaymentSaga(store=store).run(Payment(), saga_id="pay-1")

    asyncio.run(journal())
    return path


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_S12_secret_keys_are_named_like_secrets() -> None:
    for name in ("password", "db_password", "apiKey", "api_key", "x-auth-token", "card_pin",
                 "cardNumber", "CVV", "Authorization", "client_secret", "session_cookie"):
        assert is_secret_key(name), name
    for name in ("order_id", "shipping", "company", "idempotency_key", "amount", "spin"):
        assert not is_secret_key(name), name
    # Card numbers and passwords under their other common names, and the
    # signature of a presigned URL (``X-Amz-Signature``, an Azure SAS's
    # ``sig``): whole words at the key's end, so business keys that share
    # their letters stay shown.
    for name in ("creditCard", "credit_card", "cc_number", "CCNumber", "ccNum", "card_no",
                 "cardNo", "pwd", "db_pwd", "passcode", "userPasscode", "X-Amz-Signature",
                 "signature", "Stripe-Signature", "sig"):
        assert is_secret_key(name), name
    for name in ("credit_card_type", "creditCardBrand", "acc_number", "account_no", "cc_email",
                 "card_note", "signal", "design", "signature_required", "signed_at",
                 "passenger", "passport_country", "bypass", "sig_count"):
        assert not is_secret_key(name), name
    value = {"user": {"password": "x", "empty_token": "", "pin": None},
             "urls": [f"see {DSN}"], "n": 3}
    assert redacted(value) == {
        "user": {"password": REDACTED, "empty_token": "", "pin": None},
        "urls": ["see postgresql://app:***@db.internal/orders"], "n": 3,
    }
    assert value["user"]["password"] == "x"  # a copy: the record itself is not changed


def test_S12_show_json_redacts_the_context_results_and_errors_by_default(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "pay-1", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert leaked(out) == []
    shown = json.loads(out)
    assert shown["context"] == {
        "order_id": "o-1", "card_number": REDACTED, "api_token": REDACTED,
        "ledger_dsn": "postgresql://app:***@db.internal/orders",
    }
    results = [entry["result"] for entry in shown["history"] if entry["result"] is not None]
    assert results
    assert all(REDACTED in json.dumps(result) for result in results)
    errors = [entry["error"] for entry in shown["history"] if entry["error"]]
    assert any("password=***" in error for error in errors)


def test_S12_show_redacts_the_context_and_unredacted_shows_it_as_stored(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "pay-1", "--db", db]) == 0
    out = capsys.readouterr().out
    assert leaked(out) == []
    assert '"card_number": "***"' in out
    assert main(["show", "pay-1", "--db", db, "--json", "--unredacted"]) == 0
    raw = capsys.readouterr().out
    assert leaked(raw) == list(SECRETS)
    assert json.loads(raw)["context"]["card_number"] == CARD
    assert main(["show", "pay-1", "--db", db, "--unredacted"]) == 0
    assert leaked(capsys.readouterr().out) == list(SECRETS)


async def test_S12_the_console_page_and_json_api_redact_and_refuse_raw_unless_allowed(
    db: str,
) -> None:
    async with SQLiteSagaStore(db, read_only=True) as store:
        async with ConsoleServer(store, port=0) as console:
            api = await fetch(f"{console.url}api/sagas/pay-1")
            page = await fetch(f"{console.url}sagas/pay-1")
            by_id = await fetch(f"{console.url}api/sagas?id=pay-1")
            refused = [await fetch(f"{console.url}{path}")
                       for path in ("api/sagas/pay-1?raw=1", "sagas/pay-1?raw=1",
                                    "api/sagas?id=pay-1&raw=1")]
        for reply in (api, page, by_id):
            assert reply.status == 200
            assert leaked(reply.text) == []
        assert api.json()["context"]["card_number"] == REDACTED
        assert by_id.json()["context"] == api.json()["context"]
        assert "password=***" in json.dumps(api.json()["timeline"])
        assert [reply.status for reply in refused] == [403, 403, 403]
        assert "serve --allow-unredacted" in refused[0].json()["error"]["message"]
        assert leaked(refused[0].text + refused[1].text) == []

        async with ConsoleServer(store, port=0, allow_unredacted=True) as console:
            still = await fetch(f"{console.url}api/sagas/pay-1")
            raw_api = await fetch(f"{console.url}api/sagas/pay-1?raw=1")
            raw_page = await fetch(f"{console.url}sagas/pay-1?raw=1")
            bad = await fetch(f"{console.url}api/sagas/pay-1?raw=yes")
        assert leaked(still.text) == []  # allowed is not asked: redacted still
        assert raw_api.json()["context"]["card_number"] == CARD
        assert leaked(raw_api.text) == list(SECRETS)
        assert CARD in raw_page.text
        assert bad.status == 400


async def test_S12_a_memory_store_console_redacts_too() -> None:
    store = MemorySagaStore()
    with pytest.raises(SagaFailed):
        await PaymentSaga(store=store).run(Payment(), saga_id="pay-2")
    async with ConsoleServer(store, port=0) as console:
        reply = await fetch(f"{console.url}api/sagas/pay-2")
    data: dict[str, Any] = reply.json()
    assert data["context"]["api_token"] == REDACTED
    assert leaked(reply.text) == []


def _journal(entries: int) -> list[Any]:
    """``entries`` rows: members, each STARTED then COMPLETED (a member's
    step name is a child saga's, ``<parent>/Member<n>``)."""
    from fallback_saga import JournalEntry, StepStatus

    return [
        JournalEntry(seq // 2, f"Member{seq // 2}", "primary", "act",
                     StepStatus.STARTED if seq % 2 == 0 else StepStatus.COMPLETED,
                     1, None, 1000.0 + seq * 0.001)
        for seq in range(entries)
    ]


def _saga_links(page: str) -> list[str]:
    """The page's links to saga pages and their JSON (not to the listing)."""
    return [html.unescape(href) for href in re.findall(r'href="(/(?:api/)?sagas[/?][^"]*)"', page)]


async def test_S12_a_page_asked_raw_links_raw_so_the_next_page_is_not_redacted_again() -> None:
    """A saga's page asked with ``?raw=1`` (a console started with
    ``allow_unredacted``): its links — View as JSON, the history's pages
    (and the JSON's first/prev/next/last), the parent and child sagas —
    dropped ``raw=1``, so one click showed the values redacted again. Each
    keeps it now, and what it reaches shows the values as stored; a page
    not asked raw links without it (a console without the opt-in refuses
    ``raw=1``)."""
    from fallback_saga.console.query import HISTORY_PAGE

    store = MemorySagaStore()
    secret = {"card_number": CARD}
    for saga_id in ("p", ".."):
        await store.create(saga_id, "Big", "fp", secret, _journal(2 * HISTORY_PAGE + 1))
        await store.create(f"{saga_id}/Member0", "Small", "fp", secret, _journal(2))
    async with ConsoleServer(store, port=0, allow_unredacted=True) as console:
        base = console.url.rstrip("/")
        for start in ("/sagas/p?page=2&raw=1", "/sagas?id=..&page=2&raw=1",
                      "/sagas/p%2FMember0?raw=1"):
            page = await fetch(base + start)
            assert page.status == 200, start
            assert CARD in page.text, start
            links = _saga_links(page.text)
            assert links, start
            for href in links:
                query = parse_qs(urlsplit(href).query)
                assert query.get("raw") == ["1"], (start, href)
                reached = await fetch(base + href)
                assert reached.status == 200, (start, href)
                assert CARD in reached.text, (start, href)
        first = await fetch(base + "/sagas/p?raw=1")
        kinds = _saga_links(first.text)
        assert "/api/sagas/p?raw=1" in kinds  # View as JSON
        assert "/sagas/p?page=2&raw=1" in kinds  # the history's next page
        assert "/sagas/p%2FMember0?raw=1" in kinds  # a child saga
        api = await fetch(base + "/api/sagas/p?page=2&raw=1")
        meta = api.json()["history_page"]
        links = [meta[rel] for rel in ("first", "prev", "next", "last")]
        assert links == ["/api/sagas/p?raw=1", "/api/sagas/p?raw=1",
                         "/api/sagas/p?page=3&raw=1", "/api/sagas/p?page=3&raw=1"]
        assert all(f"<{href}>" in api.headers["link"] for href in links)
        following = await fetch(base + meta["next"])
        assert following.json()["context"]["card_number"] == CARD
        plain = await fetch(base + "/sagas/p")
        assert leaked(plain.text) == []
        assert all("raw" not in parse_qs(urlsplit(href).query)
                   for href in _saga_links(plain.text))


# An error text quotes what the failing call had in hand: a payload's repr,
# a request URL with its query string, a header. Each form names its key.
QUOTING_ERRORS = (
    f"declined: {{'card_number': '{CARD}', 'amount': 5}}",
    f'gateway said {{"api_token": "{TOKEN}", "code": 402}}',
    f"401 for url https://pay.example/v1/charge?order=o-1&api_key={TOKEN}&x=1",
    f"request headers: Authorization: Bearer {TOKEN}",
    f"ODBC: Server=db;DB_PASSWORD={PASSWORD};Uid=app",
    # PostgreSQL's detail of a unique violation a participant re-raises.
    f'duplicate key value violates unique constraint "cards_pkey"\n'
    f"DETAIL:  Key (card_number)=({CARD}) already exists.",
)


class Refused(SagaStepHandler[Payment, None]):
    async def act(self, context: Payment) -> SagaStepResult[Payment, None]:
        raise ConnectionError(QUOTING_ERRORS[int(context.order_id)])


class RefusedSaga(Saga[Payment]):
    steps = [Refused]


def test_S12_a_secret_an_error_text_quotes_under_its_key_is_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error text that quotes a value under a key named like a secret
    (``'card_number': '4111…'`` of a payload's repr, ``?api_key=`` of a
    URL, an ``Authorization: Bearer`` header) showed it whole: only
    ``password=`` and a URL's password were redacted in error texts. The
    views show ``***`` in its place now, the rest of the text as it was."""
    path = str(tmp_path / "sagas.db")

    async def journal() -> None:
        async with SQLiteSagaStore(path) as store:
            for number in range(len(QUOTING_ERRORS)):
                with pytest.raises(SagaFailed):
                    await RefusedSaga(store=store).run(
                        Payment(order_id=str(number)), saga_id=f"e-{number}")

    asyncio.run(journal())
    for number, text in enumerate(QUOTING_ERRORS):
        assert main(["show", f"e-{number}", "--db", path, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        errors = [entry["error"] for entry in shown["history"] if entry["error"]]
        assert errors, text
        assert all(leaked(error) == [] for error in errors), errors
        assert any(REDACTED in error for error in errors), errors
        assert main(["show", f"e-{number}", "--db", path]) == 0
        assert leaked(capsys.readouterr().out) == [], text
    kept = json.loads(json.dumps(redacted(QUOTING_ERRORS[2])))
    assert "order=o-1&api_key=***&x=1" in kept  # the rest of the text as it was
    assert redacted(QUOTING_ERRORS[3]).endswith("Authorization: ***")
    # A text cut inside the quoted value (an error text cut to its limit,
    # a page's start): what is left of it is redacted all the same.
    assert redacted(QUOTING_ERRORS[0][:30]) == "declined: {'card_number': ***"

    async def console() -> None:
        async with (
            SQLiteSagaStore(path, read_only=True) as store,
            ConsoleServer(store, port=0) as server,
        ):
            for number in range(len(QUOTING_ERRORS)):
                for where in ("api/sagas", "sagas"):
                    reply = await fetch(f"{server.url}{where}/e-{number}")
                    assert reply.status == 200
                    assert leaked(reply.text) == [], (where, number)

    asyncio.run(console())


def test_S12_a_card_code_is_a_secret_under_each_of_its_names() -> None:
    """``cvv2`` was a secret's key and ``cvc2`` — the same code under the
    other scheme's name — was not: shown whole."""
    for name in ("cvv", "cvc", "cvv2", "cvc2", "card_cvc2", "CVC2"):
        assert is_secret_key(name), name


def test_S12_the_columns_a_postgresql_error_quotes_are_redacted_by_their_names() -> None:
    """PostgreSQL's errors quote the values of the columns they are about
    (``Key (card_number)=(4111...) already exists``): redacted when one of
    the columns is named like a secret, shown when none is (an order id is
    what an operator needs to see)."""
    for text in (f"Key (card_number)=({CARD}) already exists.",
                 f"Key (order_id, card_number)=(o-7, {CARD}) already exists.",
                 f'Key ("apiToken")=({TOKEN}) is not present in table "tokens".',
                 f"Key (card_number)=({CARD}"):  # cut inside the value
        assert leaked(redact(text)) == [], text
        assert redact(text).startswith("Key ("), text
        assert REDACTED in redact(text), text
    kept = "Key (order_id)=(o-7) already exists."
    assert redact(kept) == kept
