"""A password in a PostgreSQL connection string never reaches a message, a
log line or a traceback -- also when libpq quotes the part of the conninfo it
cannot parse, which may be the password (S12: never echo a DSN's password).
No server is needed: these conninfos fail before any connection."""

from __future__ import annotations

import traceback

import pytest

from fallback_saga import SagaStoreError
from fallback_saga.store._dsn_secrets import dsn_secrets, scrub

PASSWORD = "S3cret%zzPW"


@pytest.mark.parametrize(
    ("conninfo", "secret"),
    [
        ("postgresql://app:S3cret%zzPW@127.0.0.1:1/orders", PASSWORD),
        ("postgresql://app:S3cret%21PW@127.0.0.1:1/orders", "S3cret!PW"),
        ("postgresql://127.0.0.1:1/orders?user=app&password=S3cret%zzPW", PASSWORD),
        ("host=127.0.0.1 port=1 password=S3cretPW dbname=orders", "S3cretPW"),
        ("host=127.0.0.1 port=1 password = 'S3cret PW' dbname=orders", "S3cret PW"),
        ("host=127.0.0.1 sslpassword=S3cretPW", "S3cretPW"),
    ],
)
def test_S12_the_passwords_of_a_conninfo_are_found_and_scrubbed(
    conninfo: str, secret: str
) -> None:
    secrets = dsn_secrets(conninfo)
    assert conninfo in secrets
    said = f'invalid token: "{secret}" in "{conninfo}"'
    assert secret not in scrub(said, secrets)
    assert "***" in scrub(said, secrets)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://app:S3cret%zzPW@127.0.0.1:1/orders",  # a bad percent-encoding
        "postgresql://127.0.0.1:1/orders?password=S3cret%zzPW",
    ],
)
async def test_S12_a_saga_store_never_shows_a_password_libpq_quotes(conninfo: str) -> None:
    pytest.importorskip("psycopg")
    from fallback_saga.store.postgres import PostgresSagaStore

    store = PostgresSagaStore(conninfo, connect_timeout=5)
    assert "S3cret" not in repr(store)
    with pytest.raises(SagaStoreError) as raised:
        await store.load("order-1")
    await store.close()
    shown = "".join(traceback.format_exception(raised.value))
    assert "S3cret" not in shown
    assert "***" in str(raised.value)


def test_S12_a_circuit_state_store_never_shows_a_password_libpq_quotes() -> None:
    pytest.importorskip("psycopg")
    from fallback_saga.store.postgres_breaker import PostgresCircuitStateStore

    store = PostgresCircuitStateStore("postgresql://app:S3cret%zzPW@127.0.0.1:1/orders")
    try:
        with pytest.raises(Exception) as raised:  # noqa: PT011 -- the driver's own type
            store.read("payments")
    finally:
        store.close()
    assert "S3cret" not in "".join(traceback.format_exception(raised.value))
