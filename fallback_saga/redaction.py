"""What a ``repr`` shows of a value that may be a secret: its kind only.

A context holds what the business transaction carries (a card number, a
password, a customer's address), and a step response may be a payment
token. The public records that hold them (``SagaResult``, ``SagaStepResult``,
``SagaRecord``, ``JournalEntry``) show their ids, names and statuses, and of
those values only what they are: a ``log.info("done: %r", result)`` or a
test failure's message must not copy them into a log. The values stay one
attribute away for whoever means to show them.

The operator's views (``show``, ``show --json``, the web console's pages and
JSON API) show values, and by default ``redacted``: the value of every key
whose name says it holds a secret is replaced by ``***``, and in a string a
password (a DSN, a URL with credentials), a value quoted under such a key
(whatever it is: a list, a dict, an object's repr) and a secret known by its
shape (a JWT, an API key's prefix, a PEM private key) too. Raw values are an explicit
opt-in of the operator's (``show --unredacted``; a console started with
``--allow-unredacted``, asked with ``?raw=1``).
"""

from __future__ import annotations

from typing import Any

from .secret_names import REDACTED, is_secret_key
from .shown_text import redact

__all__ = ["REDACTED", "is_secret_key", "redacted", "withheld"]


def withheld(value: object) -> str:
    """``<str, 16 chars>``, ``<dict, 3 keys>``, ``<Payment>``: never the value."""
    if value is None:
        return "None"
    kind = type(value).__name__
    if isinstance(value, str):
        return f"<{kind}, {len(value)} chars>"
    if isinstance(value, dict):
        return f"<{kind}, {len(value)} keys>"
    if isinstance(value, (list, tuple)):
        return f"<{kind}, {len(value)} items>"
    return f"<{kind}>"


def redacted(value: Any) -> Any:
    """A JSON value (a context, a step's result) as the operator's views show
    it by default: a copy in which the value of every key ``is_secret_key``
    is ``REDACTED`` (``None`` and ``""`` stay: they hide nothing) and every
    string has the passwords it quotes replaced (``shown_text.redact``)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            key: REDACTED if (is_secret_key(str(key)) and item is not None and item != "")
            else redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return value
