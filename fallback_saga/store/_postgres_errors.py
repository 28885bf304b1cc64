"""The PostgreSQL saga store's errors: the driver's error made the store's
(``wrapped``), never showing a password of the conninfo (``shown_cause``),
and what a write's error says when nothing of it was written (the
``_REFUSED``/``_NOT_SENT``/``_NO_CONNECTION``/``_NOT_OPENED`` texts,
``SagaStoreError.nothing_written``). Stateless: the store hands over the
secrets of its conninfo."""

from __future__ import annotations

from typing import Final

from ..errors import SagaStoreError, StoreClosed
from ._dsn_secrets import scrub
from ._postgres_sql import _doing, _Write

# SQLSTATEs of a prepared statement the server does not know (or knows
# another by its name): a pooler in transaction mode hands each transaction
# to any of its server connections.
_PREPARED_LOST: Final = frozenset({"26000", "42P05"})
_PREPARED_HINT: Final = (
    " (is a pooler in transaction mode, such as PgBouncer, between the store and"
    " PostgreSQL? Pass PostgresSagaStore(..., prepared_statements=False))"
)
#: SQLSTATE disk_full: the server could not extend a table's file. Its own
#: text names a file under the data directory and ends in a line of HINT; an
#: operator reading the saga's error wants what to do, as SQLite's store says.
_DISK_FULL: Final = "53100"
_DISK_FULL_HINT: Final = (
    " (the disk holding the PostgreSQL server's data is full: free space on it;"
    " recovery finishes the sagas this stopped once there is room)"
)

# What a write's error says when nothing of it was written
# (``SagaStoreError.nothing_written``).
_REFUSED: Final = "refused by the server, which rolled it back: nothing of it was written"
_NOT_SENT: Final = "never sent: nothing of it was written"
_NO_CONNECTION: Final = "never sent, as no connection could be had: nothing of it was written"
_NOT_OPENED: Final = "never sent, as the store could not be opened: nothing of it was written"


def wrapped(
    error: BaseException, doing: str, secrets: tuple[str, ...], not_written: str = ""
) -> SagaStoreError:
    """The store's error for the driver's ``error``. ``not_written``: why
    the write that failed certainly wrote nothing (``_REFUSED``,
    ``_NOT_SENT``), said in the message and by ``nothing_written``."""
    hint = ""
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate in _PREPARED_LOST:
        hint = _PREPARED_HINT
    elif sqlstate == _DISK_FULL:
        hint = _DISK_FULL_HINT
    shown = scrub(f"{type(error).__name__}: {error}", secrets)
    text = f"{doing}: {shown}".rstrip() + hint
    made = SagaStoreError(f"{text} ({not_written})" if not_written else text)
    made.nothing_written = bool(not_written)
    made.__cause__ = shown_cause(error, secrets)
    made.__suppress_context__ = True
    return made


def shown_cause(error: BaseException, secrets: tuple[str, ...]) -> BaseException | None:
    """``error``, to chain to the store's own, unless the driver's message
    quotes a password of the conninfo (libpq quotes what it cannot parse):
    then nothing is chained, and a traceback shows only the scrubbed text."""
    text = str(error)
    return None if any(secret in text for secret in secrets) else error


def not_opened(error: SagaStoreError, doing: str) -> SagaStoreError:
    """The error of a write that was never sent, as ``open`` failed with ``error``."""
    # A closed store stays one: its refusal is definitive (journal._DEFINITIVE).
    kind = StoreClosed if isinstance(error, StoreClosed) else SagaStoreError
    made = kind(f"{doing}: {error} ({_NOT_OPENED})")
    made.nothing_written = True
    made.__cause__ = error.__cause__
    made.__suppress_context__ = True
    return made


def said(doing: str | _Write) -> str:
    """``doing`` as an error's text begins (``_fetch``): a journal write's
    text (``_doing``) is built only once an error is raised for it."""
    return doing if isinstance(doing, str) else _doing(doing)
