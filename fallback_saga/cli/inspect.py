"""``list``, ``show`` and ``purge``: an operator looks into a saga store and
prunes it. ``list`` and ``show`` only read (``read_store``); their tables are
the demo's too."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pathlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from typing import IO, Any, Protocol, cast

from ..errors import SagaNotFound, SagaStoreError
from ..record_json import history_json, record_head_json, shown_record
from ..shown_text import cut_bytes, redact_start
from ..status import SagaStatus
from ..store._common import short_repr
from ..store._parking import parked_claims, parked_text
from ..store.base import (
    PURGED_BY_DEFAULT,
    HistoryWindow,
    RecoverableStore,
    SagaRecord,
    SagaSummary,
    history_window,
)
from ..subsaga import saga_family
from .argtypes import format_duration, parse_duration, positive_int
from .errors import EXIT_OK, UsageError
from .mermaid import mermaid_gantt
from .stores import (
    StoreTarget,
    add_store_options,
    load_saga,
    no_such_saga,
    open_store,
    read_store,
    store_target,
)
from .text import (
    MAX_CONTEXT,
    MAX_PATH,
    MAX_VALUE,
    json_text,
    print_json,
    print_lines,
    quoted_id,
    render_table,
    stdout_json,
    terminal_text,
    when,
)

__all__ = [
    "add_list_command",
    "add_purge_command",
    "add_show_command",
    "history_table",
    "record_json",
    "summary_json",
    "summary_table",
]


# --------------------------------------------------------------------------- tables


def _lease_text(summary: SagaSummary, now: float) -> str:
    if summary.lease_owner is None:
        return "-"
    owner = terminal_text(summary.lease_owner)
    expires = summary.lease_expires_at
    if expires is not None and expires < now:
        return f"{owner} (expired)"
    return owner


def summary_table(
    summaries: Sequence[SagaSummary], *, times: bool = True, store: object = None
) -> list[str]:
    """The ``list`` table (``times=False``: id, saga and status only); a saga
    ``store`` parks shows as such, and is said so under the table."""
    now = time.time()
    parked = {
        s.saga_id: claims for s in summaries
        if (claims := _summary_parked(store, s, now)) is not None
    }
    lines = _summary_rows(summaries, times=times, parked=parked)
    lines += [
        f"{terminal_text(saga_id)}: {terminal_text(parked_text(claims, saga_id), MAX_CONTEXT)}"
        for saga_id, claims in parked.items()
    ]
    return lines


def _summary_parked(store: object, summary: SagaSummary, now: float) -> int | None:
    """Its claims if ``store`` parks the listed saga (not while its last
    allowed resume holds the lease: see ``parked_claims``)."""
    return parked_claims(store, summary.status, summary.unreleased_claims,
                         summary.lease_owner, summary.lease_expires_at, now)


def _status_text(summary: SagaSummary, parked: dict[str, int]) -> str:
    status = summary.status.value
    return f"{status} (parked)" if summary.saga_id in parked else status


def _summary_rows(
    summaries: Sequence[SagaSummary], *, times: bool, parked: dict[str, int]
) -> list[str]:
    if not times:
        rows = [
            [terminal_text(s.saga_id), terminal_text(s.saga_name), _status_text(s, parked)]
            for s in summaries
        ]
        return render_table(["id", "saga", "status"], rows)
    now = time.time()
    rows = [
        [
            terminal_text(s.saga_id),
            terminal_text(s.saga_name),
            _status_text(s, parked),
            when(s.created_at),
            when(s.updated_at),
            _lease_text(s, now),
        ]
        for s in summaries
    ]
    headers = ["id", "saga", "status", "created (UTC)", "updated (UTC)", "lease owner"]
    return render_table(headers, rows)


def history_table(
    record: SagaRecord, *, times: bool = True, limit: int | None = None,
    unredacted: bool = False, start: int = 0,
) -> list[str]:
    """The step history of ``show`` (``times=False``: without the time column;
    ``limit``: the newest ``limit`` entries only, numbered as in the journal;
    ``unredacted``: errors as stored, passwords they quote included;
    ``start``: ``record.history`` is the journal from entry ``start`` on)."""
    headers = ["seq", "pos", "step", "branch", "action", "status", "try"]
    if times:
        headers.append("time (UTC)")
    headers.append("error")
    rows = []
    first = 0 if limit is None else max(len(record.history) - limit, 0)
    for seq, entry in enumerate(record.history[first:], start=start + first):
        row = [
            str(seq),
            str(entry.position),
            terminal_text(entry.step),
            terminal_text(entry.branch),
            terminal_text(entry.action),
            entry.status.value,
            str(entry.attempt),
        ]
        if times:
            row.append(when(entry.at, precise=True))
        # Redacted before terminal_text cuts it: a cut could leave part of a password.
        error = entry.error or ""
        row.append(terminal_text(error if unredacted else redact_start(error, MAX_VALUE),
                                 MAX_VALUE))
        rows.append(row)
    return render_table(headers, rows, right=(0, 1, 6))


def summary_json(
    summary: SagaSummary, store: object = None, now: float | None = None
) -> dict[str, Any]:
    """``list --json``'s element: the summary's fields, and ``parked``
    (whether ``store`` parks the saga: see ``parked_claims``)."""
    data = dataclasses.asdict(summary)
    data["status"] = summary.status.value
    if summary.lease_owner is None:
        # A released lease is no lease, whatever expiry a store kept with it.
        data["lease_expires_at"] = None
    data["parked"] = _summary_parked(
        store, summary, time.time() if now is None else now) is not None
    return data


def record_json(
    record: SagaRecord, parent: str | None = None, children: Sequence[str] = ()
) -> dict[str, Any]:
    """``show --json``: the record, and its parent and child sagas (``SubSaga``)."""
    return {
        **record_head_json(record),
        "context": record.context,
        "history": history_json(record),
        "parent": parent,
        "children": list(children),
    }



# --------------------------------------------------------------------------- list


def add_list_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list",
        help="list the sagas in a saga store",
        description="List sagas, newest first: id, saga name, status, created and updated "
        "times (UTC) and the recovery lease, if any. Only reads: needs no write access "
        "to the store.",
    )
    add_store_options(listing)
    listing.add_argument(
        "--status", choices=[status.value for status in SagaStatus], type=str.lower,
        help="only sagas with this status",
    )
    listing.add_argument("--name", metavar="N", help="only sagas of this saga class name")
    listing.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="at most N (default 100)"
    )
    listing.add_argument(
        "--json", action="store_true",
        help="a JSON array of {saga_id, saga_name, status, created_at, updated_at, "
        "lease_owner, lease_expires_at, unreleased_claims} (times in Unix seconds; "
        "unreleased_claims: claims since the lease was last given back)",
    )
    listing.set_defaults(handler=run_list)


# ``list --json`` reads and writes this many sagas at a time: its memory is
# one page's, whatever --limit says (it was every row's: 426 MB for 200,000).
LIST_PAGE: int = 1000
# Output up to this size stays in memory; more goes to a temporary file.
_SPOOL_IN_MEMORY = 1 << 20
# Characters copied from the spool to stdout at a time.
_COPY_CHUNK = 1 << 16


def run_list(args: argparse.Namespace) -> int:
    target = store_target(args)
    status = None if args.status is None else SagaStatus(args.status)
    if args.json:
        return _list_json(target, status, args.name, args.limit)

    async def fetch(store: RecoverableStore) -> tuple[list[SagaSummary], object]:
        # One more than asked: tells whether the listing was cut short.
        listed = await store.list_sagas(status=status, saga_name=args.name, limit=args.limit + 1)
        return listed, store

    summaries, store = asyncio.run(read_store(target, fetch))
    more = len(summaries) > args.limit
    summaries = summaries[: args.limit]
    if not summaries:
        filters = args.status is not None or args.name is not None
        where = "match" if filters else "in " + terminal_text(target.shown, MAX_PATH)
        sys.stdout.write(f"no sagas {where}\n")
        return EXIT_OK
    lines = summary_table(summaries, store=store)
    if more:
        lines.append(f"(the newest {args.limit} shown; more match: raise --limit)")
    else:
        lines.append(f"({len(summaries)} saga{'' if len(summaries) == 1 else 's'}, newest first)")
    print_lines(lines)
    return EXIT_OK


def _list_json(target: Any, status: SagaStatus | None, name: str | None, limit: int) -> int:
    """``list --json``: the JSON array ``print_json`` would print for the whole
    listing, byte for byte, built a page at a time. It is written to a spool
    (in memory while small, else a temporary file) and copied to stdout once
    the read is done: a SQLite file read while a writer changed it is read
    again (``read_store``), and what was printed could not be taken back."""
    with tempfile.SpooledTemporaryFile(
        max_size=_SPOOL_IN_MEMORY, mode="w+", encoding="utf-8", errors="surrogatepass"
    ) as spool:

        async def fetch(store: RecoverableStore) -> None:
            await _write_json_pages(store, status, name, limit, spool)

        asyncio.run(read_store(target, fetch))
        spool.seek(0)
        # A chunk ends on a whole character (a text stream): each is escaped
        # for a stdout that is not UTF-8 as print_json's text is (stdout_json).
        while chunk := spool.read(_COPY_CHUNK):
            sys.stdout.write(stdout_json(chunk))
    return EXIT_OK


async def _write_json_pages(
    store: RecoverableStore, status: SagaStatus | None, name: str | None, limit: int,
    out: IO[str],
) -> None:
    """The listing's JSON array into ``out`` (emptied first: a read may be
    made again), one page of ``LIST_PAGE`` sagas at a time."""
    out.seek(0)
    out.truncate()
    out.write("[")
    first = True
    last_page: list[str] = []
    left = limit
    while left > 0:
        size = min(LIST_PAGE, left)
        page = await _next_page(store, status, name, size, last_page)
        if not page:
            break
        # The page as json.dumps writes it, less its brackets: its elements
        # as they stand in the whole array (each line two spaces in).
        now = time.time()
        text = json.dumps([summary_json(summary, store, now) for summary in page], indent=2,
                          ensure_ascii=False)
        out.write(("\n" if first else ",\n") + json_text(text[2:-2]))
        first = False
        left -= len(page)
        last_page = [summary.saga_id for summary in page]
        if len(page) < size:
            # The store lists ``size`` sagas while there are more (rows it
            # cannot read do not count): a page short of it is the last one.
            # Reading on would read, and warn about, its unreadable rows again.
            break
    out.write("]\n" if first else "\n]\n")


async def _next_page(
    store: RecoverableStore, status: SagaStatus | None, name: str | None, size: int,
    last_page: list[str],
) -> list[SagaSummary]:
    """The ``size`` sagas after the last one written (the first page when
    none was). If that one is gone by now (purged meanwhile), the page starts
    after the one before it, less the sagas written already."""
    if not last_page:
        return await store.list_sagas(status=status, saga_name=name, limit=size)
    for back, cursor in enumerate(reversed(last_page)):
        try:
            found = await store.list_sagas(  # type: ignore[call-arg]
                status=status, saga_name=name, limit=size + back, before=cursor
            )
        except SagaNotFound:
            continue
        written = set(last_page[len(last_page) - back:])
        return [summary for summary in found if summary.saga_id not in written][:size]
    raise SagaStoreError("the sagas being listed were deleted meanwhile; list again")


# --------------------------------------------------------------------------- show


def add_show_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = commands.add_parser(
        "show",
        help="show one saga and its step history",
        description="Show a saga's header (status, times, fingerprint, context) and every "
        "journaled transition of its steps. Only reads: needs no write access to the store.",
    )
    show.add_argument("saga_id", metavar="ID", help="the saga id")
    add_store_options(show)
    form = show.add_mutually_exclusive_group()
    form.add_argument(
        "--json", action="store_true",
        help="the record as JSON: the header fields, context and history",
    )
    form.add_argument(
        "--mermaid", action="store_true",
        help="a Mermaid gantt timeline: a bar per act/compensate try, failed ones marked crit",
    )
    show.add_argument(
        "--limit", type=positive_int, metavar="N",
        help="the newest N history entries only (default: all), as list's --limit; "
        "not with --json or --mermaid, which give the whole record",
    )
    show.add_argument(
        "--unredacted", action="store_true",
        help="the context, step results and errors as stored; by default the value of "
        "every key named like a secret (password, token, api_key, card_number, ...) is "
        "shown as *** and passwords in DSNs and URLs too",
    )
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    if args.limit is not None and (args.json or args.mermaid):
        form = "--json" if args.json else "--mermaid"
        raise UsageError(
            f"--limit pages the history table; {form} gives the whole record: use one of them"
        )
    target = store_target(args)

    async def fetch(
        store: RecoverableStore,
    ) -> tuple[SagaRecord, int, int, int | None, str | None, list[str]]:
        if args.limit is None:
            record = await load_saga(store, target, args.saga_id)
            entries, first, steps = len(record.history), 0, None
        else:
            # The newest entries only are read (the store's load_window):
            # a journal of 100,000 entries was seconds of reading for 50 lines.
            window = await _window(store, target, args.saga_id, args.limit)
            record, first, entries = window.record, window.first, window.entries
            steps = window.act_steps
        return (record, first, entries, await _parked(store, record),
                *await saga_family(store, record, steps))

    record, first, total, parked, parent, children = asyncio.run(read_store(target, fetch))
    # What a terminal, a ticket or a log it is pasted into gets: redacted,
    # unless the operator asked for the values (redaction.py).
    record = shown_record(record, unredacted=args.unredacted)
    if args.json:
        print_json(record_json(record, parent, children))
        return EXIT_OK
    if args.mermaid:
        sys.stdout.write(mermaid_gantt(record))
        return EXIT_OK
    # The context stays JSON (unsafe characters as JSON escapes), cut if long,
    # saying how much more there is and where it is.
    context_json, more = cut_bytes(json.dumps(record.context, ensure_ascii=False), MAX_CONTEXT)
    context = terminal_text(json_text(context_json), MAX_CONTEXT)
    if more:
        context += (
            f"… {more:,} more bytes; the whole context: show "
            f"{quoted_id(record.saga_id)} --json"
        )
    lines = [
        f"saga         {terminal_text(record.saga_id, MAX_VALUE)}",
        f"name         {terminal_text(record.saga_name, MAX_VALUE)}",
        f"status       {record.status.value}",
        f"created      {when(record.created_at, precise=True)} UTC",
        f"updated      {when(record.updated_at, precise=True)} UTC",
        f"version      {record.version}",
        f"fingerprint  {terminal_text(record.fingerprint, MAX_VALUE)}",
        f"context      {context}",
    ]
    if parked is not None:
        lines.append(
            f"recovery     {terminal_text(parked_text(parked, record.saga_id), MAX_CONTEXT)}")
    if parent is not None:
        lines.append(f"parent       {terminal_text(parent, MAX_VALUE)}  (this is its child saga)")
    lines += [f"child        {terminal_text(child, MAX_VALUE)}" for child in children]
    lines.append("")
    if not record.history:
        lines.append("(no step history)")
    else:
        lines += history_table(record, unredacted=args.unredacted, start=first)
        if args.limit is not None and total > args.limit:
            lines.append(
                f"(the newest {args.limit} of {total} entries shown; earlier ones: "
                "raise --limit, or --json for all)"
            )
    print_lines(lines)
    return EXIT_OK


async def _window(
    store: RecoverableStore, target: StoreTarget, saga_id: str, newest: int
) -> HistoryWindow:
    """The saga and its newest ``newest`` journal entries, or ``load_saga``'s
    usage errors."""
    try:
        return await history_window(store, saga_id, start=-newest, count=newest)
    except SagaNotFound:
        raise no_such_saga(target, saga_id) from None
    except ValueError as error:
        raise UsageError(str(error)) from None


async def _parked(store: RecoverableStore, record: SagaRecord) -> int | None:
    """The saga's claims if ``store`` parks it (see ``store._parking``)."""
    lease_state = getattr(store, "lease_state", None)
    if record.status.is_final or not callable(lease_state):
        return None
    try:
        state = await lease_state(record.saga_id)
    except (SagaNotFound, SagaStoreError):  # purged since, or unreadable: nothing to say
        return None
    return parked_claims(store, record.status, getattr(state, "unreleased_claims", 0),
                         getattr(state, "owner", None), getattr(state, "expires_at", None))


# --------------------------------------------------------------------------- purge


_PURGEABLE = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


def _purge_statuses(text: str) -> tuple[SagaStatus, ...]:
    """``--status``'s value: final statuses, comma-separated (``completed,failed``)."""
    chosen: list[SagaStatus] = []
    for word in text.split(","):
        name = word.strip().lower()
        try:
            status = SagaStatus(name)
        except ValueError:
            status = None
        if status not in _PURGEABLE:
            why = "not a saga status" if status is None else "a saga still live: never purged"
            raise argparse.ArgumentTypeError(
                f"invalid status {short_repr(word.strip())} ({why}): "
                f"choose from {', '.join(s.value for s in _PURGEABLE)}"
            )
        chosen.append(status)
    return tuple(chosen)


def add_purge_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    purge = commands.add_parser(
        "purge",
        help="delete finished sagas older than an age",
        description="Delete completed and compensated sagas (and their history) last updated "
        "more than AGE ago. Failed sagas (a compensation gave up: an operator must look) are "
        "kept unless --status names them. Running and compensating sagas are never deleted, "
        "nor is a child saga (SubSaga) while its parent is kept: a family goes parent first.",
    )
    add_store_options(purge)
    purge.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="AGE",
        help="90 (seconds), 30s, 15m, 12h, 7d",
    )
    purge.add_argument(
        "--status", type=_purge_statuses, action="append", metavar="STATUS[,STATUS]",
        help="delete only sagas with these statuses (completed, compensated, failed; "
        "comma-separated or repeated). Default: completed,compensated. Failed sagas "
        "go only when named: --status failed",
    )
    purge.set_defaults(handler=run_purge)


def run_purge(args: argparse.Namespace) -> int:
    target = store_target(args)
    if args.status is None:
        statuses = PURGED_BY_DEFAULT
    else:
        asked = {status for statuses in args.status for status in statuses}
        statuses = tuple(status for status in _PURGEABLE if status in asked)

    # What the batches committed so far deleted: told to the operator should
    # the purge stop partway (they stay deleted), None before it starts.
    deleted: list[int] | None = None

    async def purge() -> tuple[int, int, int]:
        nonlocal deleted
        async with open_store(target, connections=1) as store:
            # The stores this command opens (SQLite, PostgreSQL) tell each batch.
            batched = cast("_BatchedPurge", store)
            deleted = []
            try:
                count = await batched.purge(
                    older_than=args.older_than, statuses=statuses, on_batch=deleted.append
                )
            except ValueError as error:  # an age the store cannot take
                deleted = None
                raise UsageError(f"--older-than: {error}") from None
            return count, *await _kept(store, args.older_than, statuses)

    try:
        count, failed, held = asyncio.run(purge())
    except (SagaStoreError, KeyboardInterrupt) as stop:
        if deleted is not None:
            _tell_stopped(sum(deleted), interrupted=isinstance(stop, KeyboardInterrupt))
        raise
    age = format_duration(args.older_than)
    names = [status.value for status in statuses]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    sys.stdout.write(
        f"purged {count} finished saga{'' if count == 1 else 's'} "
        f"({listed}, last updated more than {age} ago)\n"
    )
    if failed:
        sys.stdout.write(
            f"kept {failed} failed saga{'' if failed == 1 else 's'} old enough to purge (a "
            f"compensation gave up: an operator must look; --status failed purges "
            f"{'it' if failed == 1 else 'them'})\n"
        )
    if held:
        sys.stdout.write(
            f"kept {held} leased saga{'' if held == 1 else 's'} old enough to purge (an "
            f"operator's retry-unwinding or resume holds {'it' if held == 1 else 'them'}: "
            f"purge again once done)\n"
        )
    if target.db is not None:
        note = _free_space_note(target.db)
        if note:
            sys.stdout.write(note + "\n")
    return EXIT_OK


class _BatchedPurge(Protocol):
    async def purge(
        self, *, older_than: float, statuses: Collection[SagaStatus | str],
        on_batch: Callable[[int], object] | None = None,
    ) -> int: ...


def _tell_stopped(deleted: int, *, interrupted: bool) -> None:
    """Before the error line (or "interrupted"): what the purge's committed
    batches deleted, which stays deleted. Ctrl-C may land while a batch is
    under way, which may commit all the same: "at least"."""
    sagas = f"{deleted} finished saga{' was' if deleted == 1 else 's were'}"
    stay = "stays" if deleted == 1 else "stay"
    if interrupted:
        sys.stdout.write(
            f"purge interrupted: at least {sagas} deleted before it was (a batch under way "
            f"may have been deleted too), and {stay} deleted; purge again for the rest\n"
        )
    else:
        sys.stdout.write(
            f"purge stopped: {sagas} deleted before it did, and {stay} deleted; "
            f"purge again for the rest\n"
        )
    sys.stdout.flush()


async def _kept(
    store: Any, older_than: float, statuses: tuple[SagaStatus, ...]
) -> tuple[int, int]:
    """What a purge kept for an operator: the FAILED sagas it was not asked
    to delete that are old enough to purge (a younger one, ``--status
    failed`` would keep too: counting it said there was more to purge than
    there was), and the sagas it would have deleted but for a lease that
    holds them (a store without ``old_finished`` keeps none so). Counted
    after the purge: a courtesy, and a store that cannot say is no error."""
    failed = 0
    old_finished = getattr(store, "old_finished", None)
    if SagaStatus.FAILED not in statuses and old_finished is not None:
        try:
            failed = await old_finished(older_than=older_than, statuses=(SagaStatus.FAILED,))
        except Exception:
            failed = 0
    held = 0
    if old_finished is not None:
        try:
            held = await old_finished(older_than=older_than, statuses=statuses, held=True)
        except Exception:
            held = 0
    return failed, held


def _free_space_note(path: str) -> str | None:
    """What the purge left in the SQLite file: a purge frees pages, which
    SQLite reuses for new sagas, but the file keeps its size. An operator
    watching the disk is told so (and how to give the space back), rather
    than left to think the purge did nothing."""
    try:
        conn = sqlite3.connect(pathlib.Path(path).resolve().as_uri(), uri=True, timeout=1.0)
        try:
            page_size, pages, free = (
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("page_size", "page_count", "freelist_count")
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # the count is a courtesy: the purge itself is done
    if not free:
        return None
    return (
        f"the file keeps its size ({_megabytes(pages * page_size)}): "
        f"{_megabytes(free * page_size)} of it is free space that new sagas reuse; "
        f"VACUUM it, with the service stopped, to give that back to the disk"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
