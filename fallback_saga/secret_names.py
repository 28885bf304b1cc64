"""Whether a key's name says that its value is a secret (``card_number``,
``apiKey``, ``X-Auth-Token``): the one rule the operator's views redact by,
in a value's keys (``redaction``) and in the keys a text quotes
(``shown_text``)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["REDACTED", "is_secret_key"]

#: What a redacted value is shown as.
REDACTED: Final = "***"

# Words that make a key a secret's. The short ones only as a whole word of
# the key (``card_pin``, ``cvv``; not ``shipping``), the others anywhere in
# it, its separators dropped (``apiKey``, ``db_password``, ``x-auth-token``).
_SHORT_WORDS: Final = frozenset(
    {"pin", "cvv", "cvc", "cvv2", "cvc2", "ssn", "pan", "iban", "otp", "pwd", "pw", "csrf",
     "xsrf"}
)
_LONG_WORDS: Final = (
    "password", "passwd", "passphrase", "passcode", "secret", "token", "apikey", "accesskey",
    "privatekey", "credential", "authorization", "cookie", "cardnumber", "securitycode",
)
# Words that make a key a secret's only as its last words: a card number's
# other names (``creditCard``, ``cc_number``, ``card_no``; not
# ``credit_card_type``, ``acc_number``, ``cc_email``) and a signature (a
# presigned URL's ``X-Amz-Signature``, an Azure SAS's ``sig``; not
# ``signature_required``, ``signal``).
_LAST_WORDS: Final = (
    ("credit", "card"), ("cc", "number"), ("cc", "num"), ("cc", "no"), ("card", "no"),
    ("card", "num"), ("signature",), ("sig",),
    # A session's id is a bearer credential in most web apps: whoever sends
    # it is logged in (``session_id``, ``sessionKey``, ``ASP.NET_SessionId``;
    # Express's ``connect.sid``). Not ``session_count``, ``session_name``.
    ("session", "id"), ("session", "key"), ("connect", "sid"),
)
# A session id's one-word names (``sessionid``, ``JSESSIONID``, ``PHPSESSID``)
# and ``sid`` as the whole key (not a Twilio ``account_sid``, an ``ORACLE_SID``:
# names of things, not credentials).
_SESSION_WORDS: Final = ("sessionid", "sessid")
# Words that, last in a key, make it a fact about a secret rather than one:
# ``token_count``, ``token_type``, ``password_length``, ``secret_name``,
# ``card_number_type``, ``token_file``. (Not ``id``: a payment token's id is the token.)
_ABOUT_WORDS: Final = frozenset(
    {"count", "counts", "type", "kind", "length", "len", "size", "name", "expiry", "expires",
     "ttl", "limit", "used", "remaining", "file", "path"}
)
# A language model's usage counts its tokens: ``prompt_tokens``,
# ``max_output_tokens`` (``tokens`` alone, ``card_tokens`` are secrets').
_COUNTED: Final = frozenset(
    {"prompt", "completion", "total", "input", "output", "max", "cached", "reasoning"}
)
# A key's words: camelCase humps and runs of letters or digits.
_WORD: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_key(name: str) -> bool:
    """Whether a key named ``name`` holds a secret, by its name alone."""
    words = [word.lower() for word in _WORD.findall(name)]
    if not words or words[-1] in _ABOUT_WORDS:
        return False
    if words[-1] == "tokens" and len(words) > 1 and words[-2] in _COUNTED:
        return False
    if _SHORT_WORDS.intersection(words):
        return True
    if any(tuple(words[-len(last):]) == last for last in _LAST_WORDS):
        return True
    if words == ["sid"] or words[-1].endswith(_SESSION_WORDS):
        return True
    joined = "".join(words)
    return any(word in joined for word in _LONG_WORDS)
