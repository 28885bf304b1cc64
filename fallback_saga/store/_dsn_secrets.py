"""The secrets of a PostgreSQL connection string, kept out of messages.

libpq quotes the part of a conninfo it cannot parse, and that part may be
the password (``invalid percent-encoded token: "S3cret%zz"``); a store's
error would carry it into logs and recovery reports. ``dsn_secrets`` finds
the passwords of a conninfo -- read from its text, since a conninfo that does
not parse is the very case -- and ``scrub`` replaces them.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

__all__ = ["dsn_secrets", "scrub"]

_KEY_VALUE: Final = re.compile(
    r"(?:^|\s)(?:ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE
)
_URL_USERINFO: Final = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#@]*?:([^/?#]*)@", re.IGNORECASE)
_URL_PARAMETER: Final = re.compile(r"[?&](?:ssl)?password=([^&#]*)", re.IGNORECASE)
# Shorter than this, a "password" would be replaced everywhere in a message
# (a one-letter password in every word): the whole conninfo still is.
_SHORTEST: Final = 3


def dsn_secrets(conninfo: str) -> tuple[str, ...]:
    """The passwords in ``conninfo`` (as written, unquoted, percent-decoded)
    and the conninfo itself, longest first."""
    found = {conninfo}
    for pattern in (_KEY_VALUE, _URL_USERINFO, _URL_PARAMETER):
        for raw in pattern.findall(conninfo):
            forms = {raw, raw.strip("'"), raw.strip("'").replace("\\'", "'"), unquote(raw)}
            found.update(form for form in forms if len(form) >= _SHORTEST)
    return tuple(sorted(found, key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text
