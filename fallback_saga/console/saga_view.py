"""One saga as the console shows it: its record (redacted unless asked
raw), its lease, its parent and children (``SubSaga``).

It uses ``lease_state`` (lease and fencing token) and ``load_window`` (a
page of a long journal: see ``fetch_saga_page``) when a store has them
(asked with ``getattr``, as everywhere in the library).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..errors import CorruptSagaRecord, SagaNotFound, SagaStoreError
from ..record_json import shown_record
from ..store._parking import parked_claims
from ..store.base import JournalEntry, LeaseState, SagaRecord, history_window
from ..subsaga import saga_family
from .lease import UNREADABLE_LEASE
from .query import HISTORY_PAGE, history_page
from .text import redact

__all__ = ["TIMELINE_FOLLOWING", "WHOLE_JOURNAL", "SagaView", "fetch_saga", "fetch_saga_page"]

#: A saga's page reads its whole journal up to this many entries (its
#: timeline, its counts of tries, its alert drawn from all of it); past it,
#: only the page of history shown and the newest page (for the alert): a
#: journal of 100,000 entries was seconds of reading for a page of 200.
WHOLE_JOURNAL: Final = 5000
#: Entries the JSON API reads after a page of a journal longer than
#: ``WHOLE_JOURNAL``, to end the timeline's tries that begin on the page
#: (a try's outcome is a later row: a Parallel group journals its members'
#: STARTED rows, then their outcomes).
TIMELINE_FOLLOWING: Final = WHOLE_JOURNAL


@dataclass(slots=True)
class SagaView:
    """A saga's record and, if the store can tell, its lease."""

    record: SagaRecord
    lease: LeaseState | None
    lease_note: str | None = None
    parent: str | None = None  # a child saga's parent (SubSaga)
    # A parent's child sagas; when ``entries`` is set (a long journal), those
    # of the steps on the page shown only.
    children: list[str] = field(default_factory=list)
    parked: int | None = None  # its claims, if the store parks it (store._parking)
    # Set when record.history holds part of the journal only (a journal longer
    # than WHOLE_JOURNAL): the seq of its first entry, the journal's length,
    # and its newest HISTORY_PAGE entries.
    first: int = 0
    entries: int | None = None
    newest: list[JournalEntry] = field(default_factory=list)


async def fetch_saga_page(
    store: object, saga_id: str, page_text: str | None, *, unredacted: bool = False,
    following: int = 0, newest: bool = True,
) -> tuple[SagaView, int]:
    """The saga as its page shows page ``page_text`` of its history (``?page=``),
    and that page's number (``BadRequest`` for one it does not have). A
    journal of up to ``WHOLE_JOURNAL`` entries is read whole (``fetch_saga``);
    a longer one, that page's entries and ``following`` more after them
    (the JSON API's timeline: where the page's tries end), and unless not
    ``newest`` the newest page (``SagaView.newest``: the page's alert), only
    (``history_window``: the store's ``load_window`` if it has one)."""
    if not callable(getattr(store, "load_window", None)):
        # A store that can only load the whole record: read it once, as before.
        view = await fetch_saga(store, saga_id, unredacted=unredacted)
        return view, history_page(page_text, len(view.record.history))
    asked = 1
    if page_text and re.fullmatch(r"[0-9]{1,12}", page_text) and int(page_text) >= 1:
        asked = int(page_text)
    try:
        # No act step names of the whole journal (a read of every act row):
        # the page links the children of its own steps (below).
        window = await history_window(
            store, saga_id, start=(asked - 1) * HISTORY_PAGE, count=HISTORY_PAGE + following,
            act_steps=False,
        )
    except ValueError:  # not a valid saga id: no saga has it
        raise SagaNotFound(saga_id) from None
    page = history_page(page_text, window.entries)
    if window.first == 0 and len(window.record.history) == window.entries:
        # The page holds the whole journal (a saga of one page): read once.
        return await _view(store, window.record, unredacted), page
    if window.entries <= WHOLE_JOURNAL:
        view = await fetch_saga(store, saga_id, unredacted=unredacted)
        return view, history_page(page_text, len(view.record.history))
    # The child sagas (SubSaga) of the steps this page shows, not of the
    # whole journal's (window.act_steps): a parent of 25,000 child steps was
    # 25,000 ids looked up (50 queries) and linked at every page.
    shown = window.record.history[:HISTORY_PAGE]
    page_acts = tuple(dict.fromkeys(e.step for e in shown if e.action == "act"))
    view = await _view(store, window.record, unredacted, page_acts)
    view.first, view.entries = window.first, window.entries
    if newest:
        last = window.record.history[-HISTORY_PAGE:]
        if window.first + len(window.record.history) < window.entries:
            last = (await history_window(
                store, saga_id, start=-HISTORY_PAGE, count=HISTORY_PAGE, act_steps=False,
            )).record.history
        view.newest = shown_record(
            dataclasses.replace(window.record, history=last), unredacted=unredacted
        ).history
    return view, page


async def fetch_saga(store: object, saga_id: str, *, unredacted: bool = False) -> SagaView:
    """``SagaNotFound`` for an unknown id, or one no store could hold. The
    record is redacted (``record_json.shown_record``) unless ``unredacted``."""
    load = getattr(store, "load", None)
    if not callable(load):
        raise SagaNotFound(saga_id)
    try:
        record: SagaRecord = await load(saga_id)
    except ValueError:  # not a valid saga id: no saga has it
        raise SagaNotFound(saga_id) from None
    return await _view(store, record, unredacted)


async def _view(
    store: object, record: SagaRecord, unredacted: bool, act_steps: Sequence[str] | None = None
) -> SagaView:
    saga_id = record.saga_id
    record = shown_record(record, unredacted=unredacted)
    parent, children = await saga_family(store, record, act_steps)
    lease_state = getattr(store, "lease_state", None)
    if not callable(lease_state):
        return SagaView(record, None, f"{type(store).__name__} keeps no leases", parent, children)
    try:
        state = await lease_state(saga_id)
    except SagaNotFound:  # purged since the load
        return SagaView(record, None, "the saga is gone from the store", parent, children)
    except CorruptSagaRecord:
        # The row's lease columns hold something other than a lease (a
        # damaged or hand-edited row; the store names it in its warning):
        # shown as an unreadable lease, as one read back that way would be.
        return SagaView(record, UNREADABLE_LEASE, None, parent, children)
    except SagaStoreError as error:
        # The record was read: show it, and say why its lease is missing.
        note = f"the store cannot read it ({redact(str(error))})"
        return SagaView(record, None, note, parent, children)
    parked = parked_claims(store, record.status, getattr(state, "unreleased_claims", 0),
                           getattr(state, "owner", None), getattr(state, "expires_at", None))
    return SagaView(record, LeaseState(*state), None, parent, children, parked)
