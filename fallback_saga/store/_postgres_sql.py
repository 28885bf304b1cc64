"""What the PostgreSQL saga store sends, and how it reads rows back: its
statements (one per write, one per group of writes), the JSON its writes
travel as, and the decoding of a saga's row (see ``postgres``). Every
statement is parameterized."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..decoding import TAG, decode_untyped
from ..errors import (
    ContextSerializationError,
    CorruptSagaRecord,
    SagaStoreError,
    key_path,
)
from ..status import SagaStatus
from ._common import (
    decode_json,
    encode_json,
    finite_seconds,
    saga_status,
    short_repr,
    transition_status,
)
from .base import JournalEntry, SagaRecord, SagaSummary

if TYPE_CHECKING:
    # Types only. The driver is an optional extra: without it, mypy still
    # checks this module (the names are then Any), hence the ignores.
    pass  # type: ignore[import-not-found, unused-ignore]
from ._postgres_schema import (
    _INTERRUPTED_SQL,
    _Names,
)
from ._postgres_unknown_status import unknown_status_query
from ._postgres_unleasable import (
    LEASABLE_SQL,
    NEVER_DUE_SQL,
    UNLEASABLE_SQL,
    lease_problem,
)

# --------------------------------------------------------------------------- SQL

# Status lists of sagas in flight are literals, not parameters: the planner
# must see that a query implies the partial index's predicate even in a
# generic (prepared) plan (the index's own list, _INTERRUPTED_SQL, is the
# schema's). A purge's statuses, final ones, are a parameter: no partial
# index covers finished sagas.

# The journal entries of one write: one JSON array of objects, one per entry,
# numbered from 1 (``n``). json_to_recordset reads each object once; ``->>``
# on an array element would parse the element again for every field (issue
# #12: 15 -> 7 µs of server CPU per write). The keys are one letter
# (``_entry_objects``): p position, s step, b branch, a action, t status,
# y attempt, e error, w at ("when"), r result. One text parameter costs the
# client far less than one array parameter per column; ``json`` (not
# ``jsonb``) keeps each number's text, so times parse exactly.
_ENTRIES_OF: Final = (  # {}: the JSON array
    "ROWS FROM (json_to_recordset({}) AS (p int, s text, b text, a text, t text,"
    " y int, e text, w float8, r text)) WITH ORDINALITY"
    " AS e(position, step, branch, action, status, attempt, error, at, result, n)"
)
_ENTRIES: Final = _ENTRIES_OF.format("%s::json")
_ENTRY_VALUES: Final = (
    "e.position, e.step, e.branch, e.action, e.status, e.attempt, e.error, e.at, e.result"
)
_STEP_COLUMNS: Final = (
    "(saga_id, seq, position, step, branch, action, status, attempt, error, at, result)"
)
_EPOCH: Final = "extract(epoch FROM {})::float8"


# ``touched_at`` (recovery's index, schema v3): the saga's last update to
# within a second. Kept while less than a second old, so most appends leave
# every indexed column as it was: a HOT update. Never later than updated_at,
# and never a second or more behind it.
_TOUCH: Final = (
    "touched_at = CASE WHEN {0}touched_at > now() - interval '1 second'"
    " THEN {0}touched_at ELSE now() END"
)

# A time written more than older_than (the claim's second parameter, never
# negative) ahead of the server's clock: written before the clock stepped
# back. A saga last written, or a lease written, then is due: it must not
# wait for the clock to catch up (a month, if it ran a month ahead). Against
# clock_timestamp(), not now(): now() is the claim's transaction start, and
# a concurrent claim or write committed after it is visible to the claim's
# statement, stamped after its now() but never after its clock_timestamp()
# (the server's stamps and clock_timestamp() read one clock). So without a
# step back nothing is ever ahead; a step back of less than older_than takes
# nothing live over.
_AHEAD: Final = "{} > clock_timestamp() + make_interval(secs => %s::float8)"

_STATUS_VALUES: Final = frozenset(status.value for status in SagaStatus)


def _listing_filter(
    saga_name: str | None, created_since: float | None, created_until: float | None
) -> tuple[list[str], list[Any]]:
    """The filters of a listing or count: fixed fragments, every value a parameter."""
    where, params = _created_filter(created_since, created_until)
    if saga_name is not None:
        where.insert(0, "saga_name = %s")
        params.insert(0, saga_name)
    return where, params


def _created_filter(
    created_since: float | None, created_until: float | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if created_since is not None:
        where.append("created_at >= to_timestamp(%s::float8)")
        params.append(finite_seconds("created_since", created_since))
    if created_until is not None:
        where.append("created_at < to_timestamp(%s::float8)")
        params.append(finite_seconds("created_until", created_until))
    return where, params


def _window(
    sagas: str, created_since: float | None, created_until: float | None
) -> tuple[list[str], list[Any]]:
    """The conditions that keep a listing or count to the seqs between the
    first and the last saga created in the window (none when the window is
    empty), each read from fallback_saga_sagas_by_created alone (an index-only
    scan of the window's entries).

    seq follows the order sagas were created in, and so, but for a clock
    that stepped back, does created_at: the rows between the two are about
    the window's own. The statement still filters by created_at (exact
    whatever the clock did); the bounds keep it from walking past every
    saga newer than the window (a LIMIT the planner expects to reach soon,
    as if the window's sagas were spread evenly over seq), or reading the
    whole table for a count."""
    where, params = _created_filter(created_since, created_until)
    if not where:
        return [], []
    inside = " AND ".join(where)
    # min(seq + 0), not min(seq): the planner reads a bare min(seq) off the
    # index by seq, walking it from the oldest saga until one is in the
    # window (every saga older than a window of the last day).
    return (
        [f"seq >= (SELECT min(seq + 0) FROM {sagas} WHERE {inside})",
         f"seq <= (SELECT max(seq + 0) FROM {sagas} WHERE {inside})"],
        [*params, *params],
    )


# A saga's journal rows as one row of arrays, in seq order (load, load_window).
_JOURNAL_ARRAYS: Final = (
    " SELECT array_agg(seq ORDER BY seq) AS seqs,"
    " array_agg(position ORDER BY seq) AS positions,"
    " array_agg(step ORDER BY seq) AS steps,"
    " array_agg(branch ORDER BY seq) AS branches,"
    " array_agg(action ORDER BY seq) AS actions,"
    " array_agg(status ORDER BY seq) AS statuses,"
    " array_agg(attempt ORDER BY seq) AS attempts,"
    " array_agg(error ORDER BY seq) AS errors,"
    " array_agg(at ORDER BY seq) AS ats,"
    " array_agg(result ORDER BY seq) AS results"
)


class _Statements:
    def __init__(self, names: _Names) -> None:
        sagas, steps = names.sagas, names.steps
        self.sagas = sagas
        self.create = (
            f"WITH saga AS ("
            f" INSERT INTO {sagas} (saga_id, saga_name, fingerprint, status, context,"
            f" journal_length) VALUES (%s, %s, %s, %s, %s::json, %s::int)"
            f" ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
            f"), journal AS ("
            f" INSERT INTO {steps} {_STEP_COLUMNS}"
            f" SELECT saga.saga_id, e.n - 1, {_ENTRY_VALUES} FROM saga, {_ENTRIES}"
            f") SELECT 1 FROM saga"
        )
        # The saga row is updated only while the fence matches (NULL: no fence);
        # the entries are numbered from the row's counter, under the row lock
        # the UPDATE holds, so concurrent appends never collide.
        self.append = (
            f"WITH saga AS ("
            f" UPDATE {sagas} SET status = COALESCE(%s, status),"
            f" context = COALESCE(%s::json, context), version = version + 1,"
            f" journal_length = journal_length + %s::int, updated_at = now(),"
            f" {_TOUCH.format('')}"
            f" WHERE saga_id = %s AND fence = COALESCE(%s::bigint, fence)"
            f" AND journal_length = COALESCE(%s::int, journal_length)"
            f" RETURNING saga_id, journal_length - %s::int AS start"
            f"), journal AS ("
            f" INSERT INTO {steps} {_STEP_COLUMNS}"
            f" SELECT saga.saga_id, saga.start + e.n - 1, {_ENTRY_VALUES}"
            f" FROM saga, {_ENTRIES}"
            f") SELECT 1 FROM saga"
        )
        # Many sagas' creates and appends in one statement (group commit): one
        # JSON array of writes (``_group_json``), read once by json_to_recordset;
        # each write's conditions (fence, ``after``) are those of ``append``,
        # per row. Returns the number (``i``) of every write that was made. Its
        # writes must name distinct sagas: the UPDATE could not tell two
        # writes to one row apart, nor see a row the INSERT beside it adds.
        self.group = (
            f"WITH w AS MATERIALIZED ("
            f" SELECT * FROM json_to_recordset(%s::json) AS w(i int, c bool, id text,"
            f" name text, fp text, st text, ctx json, n int, f bigint, a int, es json)"
            f"), created AS ("
            f" INSERT INTO {sagas} (saga_id, saga_name, fingerprint, status, context,"
            f" journal_length) SELECT id, name, fp, st, ctx, n FROM w WHERE c"
            f" ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
            f"), updated AS ("
            f" UPDATE {sagas} s SET status = COALESCE(w.st, s.status),"
            f" context = COALESCE(w.ctx, s.context), version = s.version + 1,"
            f" journal_length = s.journal_length + w.n, updated_at = now(),"
            f" {_TOUCH.format('s.')}"
            # The rows by their key, whatever the table's statistics: a
            # generic plan (prepared) would hash-join a small table in full
            # (and one made while the table is small still does: _PREPARE_FROM).
            f" FROM w WHERE s.saga_id = ANY(ARRAY(SELECT id FROM w WHERE NOT c))"
            f" AND NOT w.c AND s.saga_id = w.id"
            f" AND s.fence = COALESCE(w.f, s.fence)"
            f" AND s.journal_length = COALESCE(w.a, s.journal_length)"
            f" RETURNING w.i, s.saga_id, s.journal_length - w.n AS start, w.es"
            f"), done AS ("
            f" SELECT w.i, w.id AS saga_id, 0 AS start, w.es FROM w"
            f" JOIN created ON created.saga_id = w.id WHERE w.c"
            f" UNION ALL SELECT i, saga_id, start, es FROM updated"
            f"), journal AS ("
            f" INSERT INTO {steps} {_STEP_COLUMNS}"
            f" SELECT done.saga_id, done.start + e.n - 1, {_ENTRY_VALUES}"
            f" FROM done, {_ENTRIES_OF.format('done.es')}"
            f") SELECT i FROM done"
        )
        self.fence_of = f"SELECT fence, journal_length FROM {sagas} WHERE saga_id = %s"
        # The smaller table's row count by the server's statistics (_PREPARE_FROM).
        self.table_rows = (
            "SELECT min(reltuples)::float8 FROM pg_class"
            " WHERE oid IN (to_regclass(%s), to_regclass(%s))"
        )
        self.table_rows_params = (names.sagas, names.steps)
        self.load = (
            f"SELECT s.saga_name, s.fingerprint, s.status, s.context::text, s.version,"
            f" {_EPOCH.format('s.created_at')}, {_EPOCH.format('s.updated_at')},"
            f" h.seqs, h.positions, h.steps, h.branches, h.actions, h.statuses, h.attempts,"
            f" h.errors, h.ats, h.results, s.journal_length,"
            # Last, what the claim judges a row by (_postgres_unleasable).
            f" s.fence, s.unreleased_claims, {_EPOCH.format('s.lease_expires_at')}"
            f" FROM {sagas} s LEFT JOIN LATERAL ("
            + _JOURNAL_ARRAYS +
            f" FROM {steps} WHERE saga_id = s.saga_id) h ON true"
            f" WHERE s.saga_id = %s"
        )
        self.load_window = (
            f"SELECT s.saga_name, s.fingerprint, s.status, s.context::text, s.version,"
            f" {_EPOCH.format('s.created_at')}, {_EPOCH.format('s.updated_at')},"
            f" h.seqs, h.positions, h.steps, h.branches, h.actions, h.statuses, h.attempts,"
            f" h.errors, h.ats, h.results, w.first, s.journal_length,"
            # The act step names unless asked without (a one-time filter: no
            # row read when false).
            f" ARRAY(SELECT step FROM {steps} WHERE %s::bool AND saga_id = s.saga_id"
            f" AND action = 'act' GROUP BY step ORDER BY min(seq)),"
            # Last, what the claim judges a row by (_postgres_unleasable).
            f" s.fence, s.unreleased_claims, {_EPOCH.format('s.lease_expires_at')}"
            # The window's first seq: from the end when start < 0 (journal_length:
            # the entries the store wrote, seqs 0, 1, ...).
            f" FROM {sagas} s CROSS JOIN LATERAL (SELECT CASE WHEN %s::int < 0"
            f" THEN greatest(s.journal_length + %s::int, 0) ELSE %s::int END AS first) w"
            f" LEFT JOIN LATERAL ("
            + _JOURNAL_ARRAYS +
            f" FROM {steps} WHERE saga_id = s.saga_id AND seq >= w.first"
            f" AND seq < w.first + %s::int) h ON true"
            f" WHERE s.saga_id = %s"
        )
        # The fence too, for the claim's predicate (_postgres_unleasable): a
        # column of the row read anyway.
        summary = (
            f"SELECT seq, saga_id, saga_name, status, {_EPOCH.format('created_at')},"
            f" {_EPOCH.format('updated_at')}, lease_owner, {_EPOCH.format('lease_expires_at')},"
            f" unreleased_claims, fence FROM {sagas}"
        )
        # Listings and counts: a WHERE clause of fixed fragments (``_listing_filter``).
        self.summary = summary
        self.newest_first = " ORDER BY seq DESC LIMIT %s::bigint"
        self.seq_of = f"SELECT seq FROM {sagas} WHERE saga_id = %s"
        self.count = f"SELECT saga_name, status, count(*) FROM {sagas}"
        # The first and last creation time, for Counts.covers_most (two index reads).
        self.created_span = (
            f"SELECT {_EPOCH.format('min(created_at)')}, {_EPOCH.format('max(created_at)')}"
            f" FROM {sagas}"
        )
        self.count_groups = " GROUP BY saga_name, status"
        self.lease_state = (
            f"SELECT lease_owner, {_EPOCH.format('lease_expires_at')}, fence, unreleased_claims"
            f" FROM {sagas} WHERE saga_id = %s"
        )
        # The distinct names, in order: one look-up of the next name a name
        # in an index by saga_name (a skip scan), not every saga's entry read.
        self.saga_names = (
            f"WITH RECURSIVE names (name) AS ("
            f" SELECT (SELECT min(saga_name) FROM {sagas})"
            f" UNION ALL SELECT (SELECT min(saga_name) FROM {sagas} WHERE saga_name > names.name)"
            f" FROM names WHERE names.name IS NOT NULL"
            f") SELECT name FROM names WHERE name IS NOT NULL LIMIT %s"
        )
        # A text[] parameter: one statement however many ids are asked about.
        self.existing_ids = f"SELECT saga_id FROM {sagas} WHERE saga_id = ANY(%s::text[])"
        # Never leased: due once not updated for older_than. Leased before:
        # due as soon as that lease expired or was released.
        due_now = (
            f"((lease_expires_at IS NULL"
            f" AND (updated_at < now() - make_interval(secs => %s::float8)"
            f" OR {_AHEAD.format('updated_at')}))"
            f" OR lease_expires_at <= now() OR {_AHEAD.format('lease_written_at')}"
            # Deferred (given back with a later expiry), if the claim asks for them too.
            f" OR (%s::boolean AND lease_owner IS NULL AND lease_expires_at IS NOT NULL))"
        )
        # One table, no join, no subquery in the locking SELECT (see the module doc).
        claimable = (
            f"SELECT saga_id FROM {sagas}"
            f" WHERE status IN {_INTERRUPTED_SQL}"
            # Parked (see _parking): claimed park_after times without the
            # lease given back. take_lease (claim_saga, by id) still leases it.
            f" AND unreleased_claims < %s::bigint"
            # A fence or a count of claims the UPDATE below cannot add one
            # to (written by no store: another tool, an attacker): it
            # overflowed, which refused the whole batch, every claim, every
            # pass (S12). A time at infinity, which no reader can show.
            # Left out, and reported (unclaimable); the readers show such a
            # row as unreadable by the same predicate (_postgres_unleasable).
            # claim_saga by id refuses a fence at the largest on its own.
            f" AND {LEASABLE_SQL}"
            + f" AND {due_now}"
        )
        # The rows left out above as ones the claim cannot count on, due as
        # the others are: not leased, but reported (S12) — to a ``recover``
        # pass only (``_skipped_rows``), in a query of its own, so that a
        # worker's poll stays the one statement it was. The same walk of the
        # partial index on touched_at (the sagas in flight), oldest first.
        # A lease that expires at infinity is never due: reported at once.
        unclaimable = (
            f"SELECT saga_id, status, fence, unreleased_claims,"
            f" {_EPOCH.format('created_at')}, {_EPOCH.format('updated_at')},"
            f" {_EPOCH.format('lease_expires_at')} FROM {sagas}"
            f" WHERE status IN {_INTERRUPTED_SQL} AND {UNLEASABLE_SQL}"
            + f" AND ({due_now} OR {NEVER_DUE_SQL})"
        )
        # A claim that took its limit walked the index only up to the last
        # saga it took: the rows it met are those up to there (an index
        # range, as long as the claim's own walk). Without this bound, each
        # report walked every saga in flight, the backlog of a million
        # interrupted sagas at each claim (benchmarks/README.md, "The rows a
        # claim cannot lease, at a backlog"); the rows past it are met by
        # the claims that drain the backlog, oldest first, and by the first
        # claim short of its limit, which walked them all.
        met = f" AND touched_at <= (SELECT touched_at FROM {sagas} WHERE saga_id = %s)"
        named = " AND (saga_name || '') = ANY(%s::text[])"
        uncounted_first = " ORDER BY touched_at LIMIT %s::bigint"
        self.unclaimable = unclaimable + uncounted_first
        self.unclaimable_named = unclaimable + named + uncounted_first
        self.unclaimable_met = unclaimable + met + uncounted_first
        self.unclaimable_met_named = unclaimable + met + named + uncounted_first
        # Sagas of a status the store does not write, which the claim (by
        # status) never meets (_postgres_unknown_status): from the status
        # index's ranges around the known statuses, whatever their age.
        self.unknown_status = unknown_status_query(sagas, "")
        self.unknown_status_named = unknown_status_query(sagas, named)
        # Oldest update first, to within a second: the order of the
        # partial index on touched_at (updated_at is not indexed).
        oldest_first = " ORDER BY touched_at LIMIT %s::bigint FOR UPDATE SKIP LOCKED"
        self.claimable = claimable + oldest_first
        # A worker's claim: only the sagas it can resume (``claim(names=...)``),
        # one more predicate on the same single-table SELECT — no join, no
        # subquery. It filters the walk of the partial index (the sagas in
        # flight, oldest first), so its cost is bounded by the sagas in
        # flight whatever the statistics say. ``saga_name || ''`` keeps the
        # planner off fallback_saga_sagas_by_name, which holds every saga of
        # those names ever run, finished ones included: the planner takes it
        # for a name its statistics call rare — a new service's name, rare
        # when the table was last analyzed and common long before the next.
        self.claimable_named = (
            claimable + " AND (saga_name || '') = ANY(%s::text[])" + oldest_first
        )
        self.take_leases = (
            f"UPDATE {sagas} SET lease_owner = %s,"
            f" lease_expires_at = now() + make_interval(secs => %s::float8), fence = fence + 1,"
            f" lease_written_at = now(), unreleased_claims = unreleased_claims + 1,"
            f" claim_marker = %s"
            f" WHERE saga_id = ANY(%s::text[])"
            f" RETURNING saga_id, fence, {_EPOCH.format('lease_expires_at')}, unreleased_claims"
        )
        # A claim whose answer never came: first wait for its transaction to
        # end (it holds these rows' locks from its first statement to its
        # end), then give back what it took, if it committed — the leases
        # still marked by it, and still its owner's — and take back its count
        # towards parking. The owner too: a release before schema version 7
        # (0.9.0, still running in a rolling deploy) claims without touching
        # the marker, so a lease it took since still carries this one.
        # Two statements: the second's snapshot is taken once the wait is over.
        self.lock_claimed = (
            f"SELECT saga_id FROM {sagas} WHERE saga_id = ANY(%s::text[]) FOR UPDATE"
        )
        self.forget_claim = (
            f"UPDATE {sagas} SET lease_owner = NULL, lease_expires_at = now(),"
            f" lease_written_at = now(), fence = fence + 1, claim_marker = NULL,"
            f" unreleased_claims = GREATEST(unreleased_claims - 1, 0)"
            f" WHERE saga_id = ANY(%s::text[]) AND claim_marker = %s AND lease_owner = %s"
        )
        # The same for a claim by id (claim_saga): no count towards parking
        # to take back.
        self.forget_lease = (
            f"UPDATE {sagas} SET lease_owner = NULL, lease_expires_at = now(),"
            f" lease_written_at = now(), fence = fence + 1, claim_marker = NULL"
            f" WHERE saga_id = ANY(%s::text[]) AND claim_marker = %s AND lease_owner = %s"
        )
        # Lease one saga by id, in the transaction that locked its row first
        # (lock_saga): atomic under the row lock.
        # With the columns the claim judges a row by (_postgres_unleasable):
        # a saga the claim skips as corrupt is refused as such by id too.
        self.lock_saga = (
            f"SELECT status, fence, unreleased_claims, {_EPOCH.format('created_at')},"
            f" {_EPOCH.format('updated_at')}, {_EPOCH.format('lease_expires_at')}"
            f" FROM {sagas} WHERE saga_id = %s FOR UPDATE"
        )
        # Uncounted; it clears a finished saga's count (see sqlite's _TAKE_LEASE).
        self.take_lease = (
            f"UPDATE {sagas} SET lease_owner = %s,"
            f" lease_expires_at = now() + make_interval(secs => %s::float8), fence = fence + 1,"
            f" unreleased_claims = CASE WHEN status IN ('completed', 'compensated', 'failed')"
            f" THEN 0 ELSE unreleased_claims END,"
            # This claim's own mark (an earlier claim's lease is not that
            # claim's any more: forgetting it must not give this one back).
            f" lease_written_at = now(), claim_marker = %s"
            # A lease with no owner was given back (released, or deferred): free.
            # So is one written ahead of the server's clock at all (see _AHEAD):
            # before a step back, its expiry on the old scale.
            f" WHERE saga_id = %s AND (lease_owner IS NULL OR lease_expires_at IS NULL"
            f" OR lease_expires_at < now() OR lease_written_at > clock_timestamp())"
            f" RETURNING fence, {_EPOCH.format('lease_expires_at')}"
        )
        self.lease_of = (
            f"SELECT lease_owner, {_EPOCH.format('lease_expires_at')} FROM {sagas}"
            f" WHERE saga_id = %s"
        )
        # Only a lease still held: a renewal the server runs after the lease
        # was given back (no owner) — one a cancelled heartbeat had sent, on
        # a connection of its own — must not lease the saga again. Token 0
        # is a first run's, never claimed and so never given back: it may
        # name its owner in its first renewal (a slow first run holding
        # recovery off).
        self.renew = (
            f"UPDATE {sagas} SET lease_expires_at = now() + make_interval(secs => %s::float8),"
            f" lease_owner = COALESCE(NULLIF(%s, ''), lease_owner), lease_written_at = now()"
            f" WHERE saga_id = %s AND fence = %s::bigint"
            f" AND (lease_owner IS NOT NULL OR fence = 0)"
            f" RETURNING {_EPOCH.format('lease_expires_at')}"
        )
        # Given back in order: its claims count from 0 again (see _parking).
        self.release = (
            f"UPDATE {sagas} SET lease_owner = NULL, lease_expires_at = now(),"
            f" lease_written_at = now(), unreleased_claims = 0"
            f" WHERE saga_id = %s AND fence = %s::bigint"
        )
        # Released, and out of `claimable` until then (take_lease leases it at once).
        self.defer = (
            f"UPDATE {sagas} SET lease_owner = NULL,"
            f" lease_expires_at = now() + make_interval(secs => %s::float8),"
            f" lease_written_at = now(), unreleased_claims = 0"
            f" WHERE saga_id = %s AND fence = %s::bigint"
        )
        # Given back by a holder that ran nothing of the saga (``ran=False``):
        # the claim that took it is taken back from the count (see _parking),
        # once: a lease given back already (no owner) is not taken back again.
        uncounted = (
            " unreleased_claims = CASE WHEN lease_owner IS NULL THEN unreleased_claims"
            " ELSE GREATEST(unreleased_claims - 1, 0) END"
            " WHERE saga_id = %s AND fence = %s::bigint"
        )
        self.release_unrun = (
            f"UPDATE {sagas} SET lease_owner = NULL, lease_expires_at = now(),"
            f" lease_written_at = now(),{uncounted}"
        )
        self.defer_unrun = (
            f"UPDATE {sagas} SET lease_owner = NULL,"
            f" lease_expires_at = now() + make_interval(secs => %s::float8),"
            f" lease_written_at = now(),{uncounted}"
        )
        # A release announced on the work channel (delivered when it commits)
        # if the saga still needs a worker.
        self.hand_off = (
            f"WITH released AS ({self.release} RETURNING saga_id, status)"
            f" SELECT pg_notify(%s, saga_id) FROM released"
            f" WHERE status IN {_INTERRUPTED_SQL}"
        )
        self.hand_off_unrun = (
            f"WITH released AS ({self.release_unrun} RETURNING saga_id, status)"
            f" SELECT pg_notify(%s, saga_id) FROM released"
            f" WHERE status IN {_INTERRUPTED_SQL}"
        )
        # A purge is one statement per batch, each its own transaction: one
        # statement over a long backlog held its locks for as long as it
        # ran, and a statement_timeout (usual on managed servers) aborted it
        # every time, so the backlog could never be purged.
        #
        # The cut-off is absolute (Unix time on the server's clock,
        # ``purge_cutoff``): every batch takes the same sagas, and one that
        # finishes meanwhile is not purged. The statement timeout comes with
        # it (in ms, 0 for none): the batches are sized to stay well inside it.
        self.purge_cutoff = (
            "SELECT extract(epoch FROM now())::float8 - %s::float8,"
            " (SELECT setting::float8 FROM pg_settings WHERE name = 'statement_timeout')"
        )
        # One batch: the next ``limit`` sagas with one of the statuses asked
        # for, older than the cut-off, in creation order after ``seq`` (each
        # batch goes on where the last stopped: none scans the rows the
        # others deleted). The DELETE checks status and age again, on the row
        # as it is when locked (a saga changed since the candidates were read
        # is left). Not a child saga (SubSaga) while its parent is stored:
        # unwinding a parent unwinds its finished child from the child's own
        # journal. The parent's id is the child's up to its last "/", as
        # subsaga.parent_saga_id says. A family goes parent first: a child
        # whose parent this batch deleted is kept by it (the statement sees
        # the parent), and its seq (``again``) is where the next batch
        # starts. The rows go by their keys (``= ANY(ARRAY(...))``, an index
        # lookup each): joined instead, a batch of a few thousand was planned
        # as a hash join over every history row of the table (567 ms instead
        # of about 100 for 5,000 sagas of 200,000). Returns: deleted,
        # candidates read, the last candidate's seq, and that ``again``.
        # Parameters: after, statuses (a text array), cut-off, limit,
        # statuses, cut-off.
        parent_of = "left({0}, length({0}) - strpos(reverse({0}), '/'))"
        # Nor a saga a lease holds: an operator's ``retry-unwinding`` leases
        # a FAILED saga before it writes COMPENSATING, and a purge in between
        # deleted the saga it was unwinding (given back, the owner is NULL).
        held = "(lease_owner IS NOT NULL AND lease_expires_at > now())"
        # Finished sagas old enough to purge, leased or not: the FAILED ones
        # a purge not asked to take them keeps; with ``held``, those a purge
        # keeps for their lease (the ``purge`` command says how many).
        # Parameters: statuses (a text array), seconds.
        self.old_finished = (
            f"SELECT count(*) FROM {sagas} WHERE status = ANY(%s::text[])"
            f" AND updated_at < now() - make_interval(secs => %s::float8)"
        )
        self.old_finished_held = f"{self.old_finished} AND {held}"
        self.purge = (
            f"WITH candidates AS ("
            f" SELECT saga_id, seq FROM {sagas} WHERE seq > %s::bigint"
            f" AND status = ANY(%s::text[])"
            f" AND updated_at < to_timestamp(%s::float8)"
            f" AND NOT {held}"
            f" ORDER BY seq LIMIT %s::int"
            f"), gone AS ("
            f" DELETE FROM {sagas} AS child"
            f" WHERE child.saga_id = ANY(ARRAY(SELECT saga_id FROM candidates))"
            f" AND child.status = ANY(%s::text[])"
            f" AND child.updated_at < to_timestamp(%s::float8)"
            f" AND NOT {held}"
            f" AND NOT (strpos(child.saga_id, '/') > 0 AND EXISTS (SELECT 1 FROM {sagas} AS parent"
            f" WHERE parent.saga_id = {parent_of.format('child.saga_id')}))"
            f" RETURNING child.saga_id"
            f"), history AS ("
            f" DELETE FROM {steps} WHERE saga_id = ANY(ARRAY(SELECT saga_id FROM gone))"
            f") SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM candidates),"
            f" (SELECT max(seq) FROM candidates),"
            f" (SELECT min(kept.seq) FROM candidates AS kept WHERE strpos(kept.saga_id, '/') > 0"
            f" AND NOT EXISTS (SELECT 1 FROM gone WHERE gone.saga_id = kept.saga_id)"
            f" AND EXISTS (SELECT 1 FROM gone"
            f" WHERE gone.saga_id = {parent_of.format('kept.saga_id')}))"
        )


# --------------------------------------------------------------------------- data


def _context_json(saga_id: str, context: dict[str, Any]) -> str:
    if not isinstance(context, dict):
        raise TypeError(f"a saga context must be a dict, got {type(context).__name__}")
    try:
        text = encode_json(context)
    except (TypeError, ValueError, RecursionError) as error:
        raise SagaStoreError(
            f"the context of saga {short_repr(saga_id)} cannot be stored as JSON: {error}"
        ) from error
    # PostgreSQL's JSON functions refuse the escapes of NUL and of a lone
    # surrogate (json_to_recordset, which reads a group's writes; jsonb
    # before schema v4): refused here, whichever statement carries the write,
    # naming the field. (The encoder's ASCII output escapes every non-ASCII
    # character.) Rare: look closer only when such an escape may be there.
    if "\\u0000" in text or "\\ud" in text:
        unstorable = _unstorable_text(context, "")
        if unstorable is not None:
            path, value, what = unstorable
            raise ContextSerializationError(
                path,
                value,
                f"{what} holds a NUL character or a lone surrogate, which PostgreSQL cannot store"
                if what
                else "PostgreSQL cannot store a NUL character or a lone surrogate",
            )
    return text


def _unstorable_text(value: Any, path: str) -> tuple[str, object, str] | None:
    """Where the first string (key or value) holding NUL or a lone surrogate
    is, if any: ``(the path of the user's value, the value, what in it holds
    the string: "" for the value itself)``.

    ``value`` is the journal form (``codec.py``); the path is the one the
    codec names the user's own value by: a tag's words and payload indexes
    (``when.$fs[1][1][2]``) mean nothing to the user. A dict's keys are shown
    as the codec shows them (``key_path``): a key may be a secret."""
    if isinstance(value, str):
        return (path or "<context>", value, "") if _UNSTORABLE_CONTEXT.search(value) else None
    if isinstance(value, dict):
        if path and len(value) == 1 and TAG in value:
            tagged = value[TAG]
            if isinstance(tagged, list) and len(tagged) == 2 and isinstance(tagged[0], str):
                return _unstorable_tagged(value, tagged[0], tagged[1], path)
        for key, item in value.items():
            # A context's own keys are its field names.
            where = key_path(path, key) if path else str(key)
            if isinstance(key, str) and _UNSTORABLE_CONTEXT.search(key):
                return where, key, "its key"
            found = _unstorable_text(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_text(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _unstorable_tagged(
    value: Any, tag: str, payload: Any, path: str
) -> tuple[str, object, str] | None:
    """``_unstorable_text`` of a tagged value, ``{TAG: [tag, payload]}``."""
    if tag in ("tuple", "set", "frozenset"):
        return _unstorable_text(payload, path)  # its items, indexed as the codec does
    if tag == "dict" and isinstance(payload, list):  # [[key, value], ...]
        for pair in payload:
            if not (isinstance(pair, list) and len(pair) == 2):
                continue
            key, item = pair
            # A key in its journal form: shown as key_path shows it (a tagged
            # one, a tuple say, by its kind only).
            if isinstance(key, dict) and len(key) == 1 and TAG in key:
                where = f"{path}[<{_tag_of(key)} key>]"
            else:
                where = key_path(path, key)
            found = _unstorable_text(key, where)
            if found is not None:
                return found[0], found[1], "its key" if found[1] is key else "a key's item"
            found = _unstorable_text(item, where)
            if found is not None:
                return found
        return None
    if tag == "obj" and isinstance(payload, list) and len(payload) == 2:
        fields = payload[1]
        if isinstance(fields, dict):  # its fields, named as the codec names them
            for name, item in fields.items():
                found = _unstorable_text(item, f"{path}.{name}")
                if found is not None:
                    return found
            return None
        return _unstorable_text(fields, path)
    if tag in ("enum", "any"):
        return _unstorable_text(payload[1] if tag == "enum" else payload, path)
    found = _unstorable_text(payload, path)
    if found is None:
        return None
    # The rest: a datetime's or time's time zone name, the one text a
    # scalar's payload can hold that the user gave. Named by the value's path.
    try:
        whole: object = decode_untyped(value, path)
    except Exception:  # (a payload this version cannot read: the text alone)
        whole = found[1]
    return path, whole, "its time zone's name" if tag in ("datetime", "time") else "its text"


def _tag_of(value: dict[str, Any]) -> str:
    tagged = value[TAG]
    return tagged[0] if isinstance(tagged, list) and tagged and isinstance(tagged[0], str) else "?"


# NUL, or a surrogate not part of a pair.
_UNSTORABLE_CONTEXT: Final = re.compile(
    "\x00|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)


# What PostgreSQL text cannot hold: NUL, and the lone surrogates UTF-8 cannot encode.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
# In a database whose encoding is not UTF-8: whatever is not ASCII too. The
# entries travel as JSON, and the server turns a \u escape of a character
# its encoding lacks (any, in SQL_ASCII) into an error: the saga's failure
# could not be journaled, so it was never compensated.
_NOT_ASCII: Final = re.compile("[^\x01-\x7f]")


def _storable_error(text: str, unstorable: re.Pattern[str]) -> str:
    """An exception's text, kept readable where the database cannot hold it
    as it is (NUL characters and lone surrogates, or non-ASCII characters)."""
    if unstorable is _UNSTORABLE:
        return unstorable.sub("\ufffd", text)
    # Python's escapes (\xe9, \u2603, \U0001d11e): ASCII, and still legible.
    return text.replace("\x00", "\ufffd").encode("ascii", "backslashreplace").decode("ascii")


def _entries_json(
    saga_id: str, entries: Sequence[JournalEntry], unstorable: re.Pattern[str] = _UNSTORABLE
) -> str:
    """The entries as ``_ENTRIES`` reads them: a JSON array of one object per
    entry (``_entry_objects``), a StepStatus as its string value. Error texts
    holding ``unstorable`` characters are made storable (``_storable_error``)."""
    if not entries:
        return "[]"
    rows: Sequence[Sequence[Any]] = entries
    if any(e[6] is not None and unstorable.search(e[6]) for e in entries):
        rows = [
            e if e[6] is None else (*e[:6], _storable_error(e[6], unstorable), *e[7:])
            for e in entries
        ]
    try:
        return encode_json(_entry_objects(rows))
    except (TypeError, ValueError) as error:
        raise SagaStoreError(
            f"the journal entries of saga {short_repr(saga_id)} cannot be stored: {error}"
        ) from error


def _entry_objects(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Each entry as the object ``_ENTRIES`` names its fields by."""
    return [
        {"p": p, "s": s, "b": b, "a": a, "t": t, "y": y, "e": e, "w": w, "r": r}
        for p, s, b, a, t, y, e, w, r in rows
    ]




def _decode_record(saga_id: str, row: Sequence[Any], first: int, end: int) -> SagaRecord:
    """``row``: the saga's columns and its journal rows of seqs ``first`` to
    ``end`` (excluded), as one statement read them (one snapshot: ``end``
    follows from the journal_length the appends keep)."""
    (saga_name, fingerprint, status, context_text, version, created_at, updated_at,
     seqs, positions, steps, branches, actions, statuses, attempts, errors, ats, results) = row
    _check_seqs(saga_id, seqs or [], first, end)
    if not isinstance(context_text, str):
        raise CorruptSagaRecord(saga_id, "the context is not JSON text")
    try:
        context = decode_json(context_text)
    except ValueError as bad:
        raise CorruptSagaRecord(saga_id, f"the context is not valid JSON ({bad})") from None
    if not isinstance(context, dict):
        raise CorruptSagaRecord(saga_id, "the context is not a JSON object")
    if _MAYBE_UNSTORABLE.search(context_text) and _holds_unstorable(context):
        # Never written by this store (_context_json refuses it): the json
        # column takes the escape as it is. Resumed, the saga's next write
        # of its context was refused, and it unwound for its own row.
        raise CorruptSagaRecord(
            saga_id, "the context holds a NUL character or a lone surrogate, which PostgreSQL "
            "cannot store")
    history: list[JournalEntry] = []
    if seqs is not None:
        for seq, position, step, branch, action, raw_status, attempt, error, at, result in zip(
            seqs, positions, steps, branches, actions, statuses, attempts, errors, ats, results,
            strict=True,
        ):
            step_status = transition_status(saga_id, seq, raw_status, branch, action)
            if not isinstance(at, float) or not math.isfinite(at):
                raise CorruptSagaRecord(saga_id, f"transition {seq} has no valid time")
            history.append(
                JournalEntry(position, step, branch, action, step_status, attempt, error, at,
                             result)
            )
    if version >= _INT4_MAX:
        # The column's largest value: the next write's version + 1 fails
        # (integer out of range), on every pass, reported as a journal that
        # could not be written. No run writes two billion transitions.
        raise CorruptSagaRecord(saga_id, "its version is too large to be counted on")
    return SagaRecord(
        saga_id=saga_id,
        saga_name=saga_name,
        fingerprint=fingerprint,
        status=saga_status(saga_id, status),
        context=context,
        history=history,
        created_at=_finite_time(saga_id, "created_at", created_at),
        updated_at=_finite_time(saga_id, "updated_at", updated_at),
        version=version,
    )


_INT4_MAX: Final = 2**31 - 1

# The JSON escape of a NUL or of a surrogate (upper or lower case hex): what
# a context's text holds before any of its strings can (text holds neither
# raw). A literal backslash before "u0000" matches too: the walk decides.
_MAYBE_UNSTORABLE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _holds_unstorable(value: Any) -> bool:
    """Whether a string (key or value) of decoded JSON holds what PostgreSQL
    text cannot (``_UNSTORABLE_CONTEXT``). Bounded by the stored depth."""
    if isinstance(value, str):
        return _UNSTORABLE_CONTEXT.search(value) is not None
    if isinstance(value, dict):
        return any(
            _UNSTORABLE_CONTEXT.search(key) is not None or _holds_unstorable(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_holds_unstorable(item) for item in value)
    return False


def check_leasable(
    saga_id: str, status: object, fence: object, claims: object, created_at: object,
    updated_at: object, expires_at: object,
) -> None:
    """``CorruptSagaRecord`` with the claim's reason if the claim skips this
    row as corrupt (``_postgres_unleasable``; the times as seconds)."""
    problem = lease_problem(status, fence, claims, created_at, updated_at, expires_at)
    if problem is not None:
        raise CorruptSagaRecord(saga_id, problem)


def _finite_time(saga_id: str, column: str, value: float) -> float:
    """A timestamptz column read as seconds: ``infinity`` (another tool's,
    or an attacker's) reads as a float infinity, which has no date and no
    JSON (``show --json`` and the console printed ``Infinity``)."""
    if not math.isfinite(value):
        raise CorruptSagaRecord(saga_id, f"{column} is not a finite number")
    return value


def _check_seqs(saga_id: str, seqs: Sequence[Any], first: int, end: int) -> None:
    """The store writes seqs 0, 1, ... and counts them in journal_length in
    the same statement: read in one snapshot, rows missing (deleted by hand,
    a damaged page) or beyond the count are corruption, not a concurrent
    append. Resumed, such a saga's first write would be refused as a
    JournalConflict on every pass (its count is not the journal's length),
    reported as a journal that could not be written."""
    for expected, seq in enumerate(seqs, first):
        if seq != expected:
            raise CorruptSagaRecord(
                saga_id, f"transition {expected} is missing (seq {short_repr(seq)} follows)")
    if first + len(seqs) != end:
        raise CorruptSagaRecord(
            saga_id, f"the journal holds {first + len(seqs)} transitions where {end} were written")


def _listed_summary(row: Sequence[Any]) -> SagaSummary:
    """A listing's row (its seq first), every column typed by the driver; a
    saga the claim skips as corrupt is one (``_postgres_unleasable``), with
    the claim's reason — never listed as running or parked."""
    (_seq, saga_id, name, raw_status, created_at, updated_at, owner, expires_at, claims,
     fence) = row
    check_leasable(saga_id, raw_status, fence, claims, created_at, updated_at, expires_at)
    return SagaSummary(
        saga_id=saga_id,
        saga_name=name,
        status=saga_status(saga_id, raw_status),
        created_at=_finite_time(saga_id, "created_at", created_at),
        updated_at=_finite_time(saga_id, "updated_at", updated_at),
        lease_owner=owner,
        # A released lease keeps its release time as the expiry (the saga is
        # claimable at once); it is no lease to show. Past check_leasable,
        # an expiry at infinity is a finished saga's, whose lease no claim
        # reads: shown as none, as SQLite's (the counts find such rows by no
        # index, S12: every count agrees with the listing).
        lease_expires_at=(
            None
            if owner is None or expires_at is None or not math.isfinite(expires_at)
            else expires_at
        ),
        unreleased_claims=claims,
    )


_SYNCHRONOUS_COMMIT: Final = frozenset({"on", "off", "local", "remote_write", "remote_apply"})

# SQLSTATE classes after which a transaction may or may not have committed:
# connection exceptions (08) and operator intervention that ends the session
# (57P: a shutdown, a terminated backend). Class 57's other code, 57014
# (query_canceled: statement_timeout, a cancel request), is a refusal. Kept
# in doubt too, though no known path reports them after a commit: system
# errors (58: I/O) and internal errors (XX).
_COMMIT_UNKNOWN: Final = ("08", "57P", "58", "XX")
# An error the server reports at these severities ends the session, and a
# FATAL or PANIC may come after the commit record was written (PostgreSQL
# turns an error after it into a PANIC): in doubt, whatever its SQLSTATE.
_SESSION_ENDING: Final = frozenset({"FATAL", "PANIC"})

# A journal write: what it does (``_CREATING`` or ``_JOURNALING``), its
# statement, its parameters. Its errors begin with ``_doing``'s text, built
# only when one is raised: the saga id's ``short_repr`` cost about 0.3 µs a
# write on the success path (benchmarks/README.md, PostgreSQL sixth pass).
_Write = tuple[str, str, list[Any]]

_CREATING: Final = "cannot create saga"
_JOURNALING: Final = "cannot journal saga"


def _doing(write: _Write) -> str:
    """What ``write`` was doing, as its errors say it: ``cannot create saga
    'id'`` or ``cannot journal saga 'id'`` (a create's parameters begin with
    the saga id, an append's hold it fourth)."""
    verb, _, params = write
    return f"{verb} {short_repr(params[0] if verb == _CREATING else params[3])}"


_json_text: Final = json.encoder.encode_basestring_ascii  # a str as JSON (C)


def _group_json(number: int, is_create: bool, params: list[Any]) -> str:
    """One write as an element of ``_Statements.group``'s JSON array, built from
    the parameters of its own statement (``create`` or ``append``): the
    context and the entries are JSON text already and go in as they are."""
    if is_create:
        saga_id, name, fingerprint, status, context, count, entries = params
        return (
            f'{{"i":{number},"c":true,"id":{_json_text(saga_id)},'
            f'"name":{_json_text(name)},"fp":{_json_text(fingerprint)},'
            f'"st":"{status}","ctx":{context},"n":{count},"es":{entries}}}'
        )
    status, context, count, saga_id, token, after, _, entries = params
    return (
        f'{{"i":{number},"c":false,"id":{_json_text(saga_id)},'
        f'"st":{"null" if status is None else _json_text(status)},'
        f'"ctx":{"null" if context is None else context},"n":{count},'
        f'"f":{"null" if token is None else int(token)},'
        f'"a":{"null" if after is None else int(after)},"es":{entries}}}'
    )


def _commit_in_doubt(error: BaseException) -> bool:
    """Whether a failed write may have been committed all the same; if not,
    the server rolled it back and nothing of it was written.

    For an error met once a connection was had (a write that got none sent
    nothing: the store says so before asking this). Not in doubt only when
    the server itself answered the write — its statement, or the COMMIT
    that ended its transaction — with an ERROR: a transaction that meets an
    ERROR is rolled back whole, the COMMIT's own included (a deferred
    constraint or a serialization failure found at commit), and an error
    after the commit record is written is a PANIC, not an ERROR. Everything
    else is in doubt: no SQLSTATE (the driver lost the connection, perhaps
    with the COMMIT sent and its answer on the way), a lost connection or a
    shutdown (``_COMMIT_UNKNOWN``), a session ended (``_SESSION_ENDING``)."""
    sqlstate = getattr(error, "sqlstate", None)
    if not sqlstate or str(sqlstate).startswith(_COMMIT_UNKNOWN):
        return True
    severity = getattr(getattr(error, "diag", None), "severity_nonlocalized", None)
    return severity is None or str(severity).upper() in _SESSION_ENDING
