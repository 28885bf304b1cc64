"""What a ``repr`` shows of a value that may be a secret: its kind only.

A context holds what the business transaction carries (a card number, a
password, a customer's address), and a step response may be a payment
token. The public records that hold them (``SagaResult``, ``SagaStepResult``,
``SagaRecord``, ``JournalEntry``) show their ids, names and statuses, and of
those values only what they are: a ``log.info("done: %r", result)`` or a
test failure's message must not copy them into a log. The values stay one
attribute away for whoever means to show them.
"""

from __future__ import annotations

__all__ = ["withheld"]


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
