"""The seeded row-mutation fuzz (``test_row_mutation_fuzz.py``) on the
PostgreSQL store (S12, S13, S10).

The same sagas are run into a PostgreSQL schema and stopped at every phase
(``helpers_row_fuzz``); each case is a copy of that schema with one saga
family's rows mutated by a seeded ``random.Random``, as an attacker with
write access (or another tool) could, in the columns' own types: journal
rows dropped, duplicated, swapped, cut, appended (``journal_length`` kept
in step or not); statuses, kinds, branches, steps, positions, attempts
changed; int4/int8 bounds, float8 NaN and infinities, timestamptz
``infinity``; JSON text whose values change type, nested deep, with huge
numbers, unknown or hostile ``$fs`` tags; unknown saga names, another
saga's fingerprint; the lease, fence and journal_length columns.

Recovery (``recover()`` or a ``RecoveryWorker``), ``load``, ``list_sagas``,
the CLI and the console then read the copy, and the participant ledger is
checked as for SQLite (``helpers_row_fuzz.compare``).

``cd tests && PYTHONPATH=. python test_row_mutation_fuzz_postgres.py START
COUNT [--worker-every N]`` is the long hunt (on a throwaway cluster of its
own); pytest runs a handful of seeds and every regression found.
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from conftest_pg import require_driver
from helpers_row_fuzz import (
    CRASH,
    LEDGER,
    SAGA_NAMES,
    SAGAS,
    STEP_NAMES,
    Bench,
    CountFilter,
    Crash,
    Ctx,
    FuzzSaga,
    FuzzTarget,
    PlainSaga,
    cli_problems,
    console_problems,
    hunt_main,
    mutate_family,
    run_scenarios,
    waits_for_recovery,
)

from fallback_saga import CorruptSagaRecord, Saga, SagaStatus, StepStatus, recover
from fallback_saga.store._parking import PARK_AFTER
from fallback_saga.subsaga import CHILD_SEPARATOR

pytest_plugins = ["conftest_pg"]

require_driver()  # skips this module without psycopg (fails under CI)

import psycopg  # noqa: E402

from fallback_saga.store.postgres import PostgresSagaStore  # noqa: E402

SAGAS_TABLE = "fallback_saga_sagas"
STEPS_TABLE = "fallback_saga_steps"
TABLES = ("fallback_saga_schema", SAGAS_TABLE, STEPS_TABLE)


def postgres_target(conninfo: str, schema: str) -> FuzzTarget:
    def store() -> AbstractAsyncContextManager[Any]:
        return PostgresSagaStore(conninfo, schema=schema, min_size=1, max_size=4)

    return FuzzTarget(store, store, ["--dsn", conninfo, "--schema", schema],
                      lambda shown: count_rows(conninfo, schema, shown),
                      lambda: open_gap_rows(conninfo, schema))


def open_gap_rows(conninfo: str, schema: str) -> int:
    """The finished sagas whose update time is not finite: no index holds
    them (the one by update time holds the sagas in flight alone), so every
    count counts them and the listing leaves them out — left open
    (test_s12_counts_agree_with_listing_postgres, strict xfails)."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        row = conn.execute(
            f"SELECT count(*) FROM {SAGAS_TABLE} WHERE NOT isfinite(updated_at)"
            " AND status IN ('completed', 'compensated', 'failed')").fetchone()
    assert row is not None
    return int(row[0])


def count_rows(conninfo: str, schema: str, shown: CountFilter) -> int:
    """The rows of the sagas table ``shown`` selects, as the store's filters
    read (``created_since <= created_at < created_until``, ``infinity``
    after every time), whatever they hold."""
    where, params = shown.where(everything="true", name="%s", time="to_timestamp(%s::float8)")
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        row = conn.execute(f"SELECT count(*) FROM {SAGAS_TABLE} WHERE " + where, params).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- mutations

_STATUSES = [s.value for s in SagaStatus] + [s.value for s in StepStatus]
_TEXTS = ["", " ", "x", "RUNNING", "Completed", "act", "compensate", "primary", "fallback",
          "null", "[]", "{}", "NaN", "Infinity", "1e999", "\u2028", "\x00", "\ud800",
          "🙂", "x" * 5000, "a" + CHILD_SEPARATOR + "b"]
_INT4 = [0, 1, -1, 2, 7, 99, 2**31 - 1, -(2**31), 10**6]
_INT8 = [0, 1, -1, 2**31, 2**62, 2**63 - 1, -(2**63)]
_FLOAT8 = ["NaN", "Infinity", "-Infinity", "1e308", "-0", "5e-324", "-1", "0", "1e12"]
_TIMES = ["infinity", "-infinity", "epoch", "4713-01-01 00:00:00+00 BC",
          "294276-12-31 23:59:59+00", "1900-01-01", "2999-01-01"]
# JSON text no run writes: deep, huge, not finite as a float, tags.
_JSON_TEXTS = ["null", "[]", "{}", "1", '"A-1"', "[1, 2]", "true", "1e400", "-1e400",
               "9" * 5000, "[" * 5000 + "]" * 5000, '{"a": ' * 300 + "1" + "}" * 300,
               '{"$fs": ["obj", ["os:system", {}]]}', '{"$fs": ["nope", 1]}',
               '{"$fs": ["tuple", [1, 2]]}', '{"$fs": ["int", "zz"]}', '{"$fs": []}',
               '"\\u0000"', '"\\ud800"', '{"n": 1, "n": "x"}', '{"$fs": ["str", [1]]}']


def _typed_values(kind: str) -> list[tuple[str, tuple[Any, ...]]]:
    """(SQL expression, parameters) of values a column of ``kind`` holds."""
    if kind == "int4":
        return [("%s::int4", (v,)) for v in _INT4]
    if kind == "int8":
        return [("%s::int8", (v,)) for v in _INT8]
    if kind == "float8":
        return [("%s::float8", (v,)) for v in _FLOAT8]
    if kind == "timestamptz":
        return [("%s::timestamptz", (v,)) for v in _TIMES] + [
            ("now() + interval '100 years'", ()), ("now() - interval '1 second'", ())]
    if kind == "json":
        return [("%s::json", (v,)) for v in _JSON_TEXTS]
    return [("%s", (v,)) for v in _TEXTS + _STATUSES + _JSON_TEXTS]


_KINDS = ["int4", "int8", "float8", "timestamptz", "json", "text"]

# The columns a mutation changes, their type, and values a run could have written.
_STEP_COLUMNS: dict[str, tuple[str, list[Any]]] = {
    "position": ("int4", [0, 1, 2, 3, 4, 5, -1, 1000]),
    "step": ("text", [*STEP_NAMES, "Nope"]),
    "branch": ("text", ["primary", "fallback", "other"]),
    "action": ("text", ["act", "compensate", "undo"]),
    "status": ("text", _STATUSES),
    "attempt": ("int4", [0, 1, 2, 3, -1, 10**6]),
    "error": ("text", [None, "Refused('x')", "RecordedError"]),
    "at": ("float8", [0, 1.5, 1e12, -1]),
    "result": ("text", [None, '"A-1"', "null", "{}", '{"$fs": ["obj", ["os:system", {}]]}',
                        "NaN", '"\\ud800"', '"\\u0000"', "1e400"]),
    "seq": ("int4", [-1, 0, 1, 2, 3, 100]),
}

_SAGA_COLUMNS: dict[str, tuple[str, list[Any]]] = {
    "status": ("text", [s.value for s in SagaStatus] + ["paused"]),
    "saga_name": ("text", [*SAGA_NAMES, "NoSuchSaga", ""]),
    "fingerprint": ("text", ["", "0" * 16, "nope"]),
    "version": ("int4", [0, 1, -1, 2**31 - 1, 10**6]),
    "journal_length": ("int4", [0, 1, -1, 2, 5, 2**31 - 1]),
    "created_at": ("timestamptz", []),
    "updated_at": ("timestamptz", []),
    "touched_at": ("timestamptz", []),
    "lease_owner": ("text", [None, "", "someone"]),
    "lease_expires_at": ("timestamptz", [None]),
    "lease_written_at": ("timestamptz", [None]),
    "fence": ("int8", [0, -1, 2**63 - 1, 2**63 - 2]),
    "unreleased_claims": ("int4", [0, 99, -5, 2**31 - 1]),
    "claim_marker": ("text", [None, "", "m"]),
    "seq": ("int8", [-1, 0, 2**63 - 1]),
}


def _hostile(
    rng: random.Random, kind: str, plausible: list[Any]
) -> tuple[str, tuple[Any, ...], str]:
    """A value for a column of type ``kind``: (SQL expression, parameters, what it is)."""
    how = rng.randrange(10)
    if how <= 3 and plausible:
        value = rng.choice(plausible)
        return "%s", (value,), repr(value)[:40]
    if how == 4:  # another type's value: the server casts it or refuses
        expr, params = rng.choice(_typed_values(rng.choice(_KINDS)))
    elif how == 5:
        expr, params = "NULL", ()
    else:
        expr, params = rng.choice(_typed_values(kind))
    return expr, params, f"{expr} {repr(params)[:40]}"


def _steps_of(conn: Any, saga_id: str) -> list[int]:
    return [seq for (seq,) in conn.execute(
        f"SELECT seq FROM {STEPS_TABLE} WHERE saga_id = %s ORDER BY seq", (saga_id,))]


def _refusable(conn: Any, sql: str, params: tuple[Any, ...]) -> bool:
    """Run ``sql`` in a savepoint: whether the server took it (a value its
    column refuses — out of range, NUL, not JSON — rolls back that alone)."""
    try:
        with conn.transaction():
            conn.execute(sql, params)
    except (psycopg.Error, ValueError, UnicodeEncodeError):
        return False
    return True


def _set_hostile(rng: random.Random, conn: Any, table: str, column: str,
                 typed: tuple[str, list[Any]], where: str, keys: tuple[Any, ...],
                 label: str) -> str:
    kind, plausible = typed
    expr, params, what = _hostile(rng, kind, plausible)
    taken = _refusable(conn, f"UPDATE {table} SET {column} = {expr} WHERE {where}",
                       (*params, *keys))
    return f"{label}={what}" + ("" if taken else " refused")


def _mutate_saga_row(rng: random.Random, conn: Any, saga_id: str) -> str:
    column = rng.choice(sorted(_SAGA_COLUMNS))
    kind, plausible = _SAGA_COLUMNS[column]
    plausible = list(plausible)
    if column == "fingerprint":  # another definition's
        plausible += [fp for (fp,) in conn.execute(
            f"SELECT DISTINCT fingerprint FROM {SAGAS_TABLE}")]
    return _set_hostile(rng, conn, SAGAS_TABLE, column, (kind, plausible), "saga_id = %s",
                        (saga_id,), f"sagas.{column}")


def _mutate_entry(rng: random.Random, conn: Any, saga_id: str) -> str:
    seqs = _steps_of(conn, saga_id)
    if not seqs:
        return "no entries"
    seq = rng.choice(seqs)
    column = rng.choice(sorted(_STEP_COLUMNS))
    return _set_hostile(rng, conn, STEPS_TABLE, column, _STEP_COLUMNS[column],
                        "saga_id = %s AND seq = %s", (saga_id, seq), f"entry {seq}.{column}")


def _json_value(rng: random.Random) -> Any:
    return rng.choice([None, "", "x", 0, -1, 10**30, 1.5, -0.0, [], {}, [1, "a"], {"k": [1]},
                       True, {"$fs": ["obj", ["os:system", {}]]}, {"$fs": ["nope", 1]},
                       {"$fs": ["tuple", [1, 2]]}, {"$fs": ["int", "ff"]}, "A", "D",
                       "\x00", "x" * 5000])


def _swap_type(rng: random.Random, value: Any) -> Any:
    """``value`` as another JSON type."""
    choices: list[Any] = [str(value), None, [value], {"v": value}, True, 1.5, 0]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        choices.append(int(value))
    return rng.choice(choices)


def _mutate_context(rng: random.Random, conn: Any, saga_id: str) -> str:
    (text,) = conn.execute(
        f"SELECT context::text FROM {SAGAS_TABLE} WHERE saga_id = %s", (saga_id,)).fetchone()
    try:
        ctx = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        ctx = {}
    how = rng.randrange(6)
    if how == 0 and isinstance(ctx, dict) and ctx:
        key = rng.choice(sorted(ctx))
        del ctx[key]
        new, what = json.dumps(ctx), f"drop {key}"
    elif how == 1 and isinstance(ctx, dict) and ctx:
        key = rng.choice(sorted(ctx))
        ctx[key] = _swap_type(rng, ctx[key])
        new, what = json.dumps(ctx), f"retype {key}={str(ctx[key])[:30]}"
    elif how == 2 and isinstance(ctx, dict):
        key = rng.choice(["extra", "n", "fail", "stuck", "note", "$fs", ""])
        ctx[key] = _json_value(rng)
        new, what = json.dumps(ctx), f"set {key}={str(ctx[key])[:30]}"
    elif how == 3:
        new = json.dumps(_json_value(rng))
        what = f"whole={new[:30]}"
    else:
        new = rng.choice(['{"n": 1e400}', '{"n": -1e400}', '{"n": ' + "9" * 5000 + "}",
                          '{"n": 1, "n": "x"}', '{"note": "\\ud800"}', '{"note": "\\u0000"}',
                          '{"n": ' + "[" * 3000 + "]" * 3000 + "}", '{"n": 1e-400}',
                          '{"n": 12345678901234567890}', *_JSON_TEXTS])
        what = f"text={new[:30]}"
    taken = _refusable(conn, f"UPDATE {SAGAS_TABLE} SET context = %s::json WHERE saga_id = %s",
                       (new, saga_id))
    return f"context {what}" + ("" if taken else " refused")


def _structural(rng: random.Random, conn: Any, saga_id: str) -> str:
    seqs = _steps_of(conn, saga_id)
    if not seqs:
        return "no entries"
    how = rng.randrange(6)
    top = max(seqs)
    steps = STEPS_TABLE
    if how == 0:
        seq = rng.choice(seqs)
        conn.execute(f"DELETE FROM {steps} WHERE saga_id = %s AND seq = %s", (saga_id, seq))
        done = f"drop entry {seq}"
    elif how == 1:
        seq = rng.choice(seqs)
        conn.execute(
            f"INSERT INTO {steps} SELECT saga_id, %s, position, step, branch, action, status,"
            f" attempt, error, at, result FROM {steps} WHERE saga_id = %s AND seq = %s",
            (top + 1, saga_id, seq))
        done = f"duplicate entry {seq} at the end"
    elif how == 2 and len(seqs) > 1:
        one, two = rng.sample(seqs, 2)
        # Through a seq no row has: the key is checked row by row.
        for old, new in ((one, -(2**31)), (two, one), (-(2**31), two)):
            conn.execute(f"UPDATE {steps} SET seq = %s WHERE saga_id = %s AND seq = %s",
                         (new, saga_id, old))
        done = f"swap entries {one} and {two}"
    elif how == 3:
        keep = rng.randrange(len(seqs))
        conn.execute(f"DELETE FROM {steps} WHERE saga_id = %s AND seq >= %s",
                     (saga_id, seqs[keep]))
        done = f"cut the journal before entry {seqs[keep]}"
    elif how == 4:
        # Another saga's journal rows in place of this one's (a family member's, or any).
        others = [other for (other,) in conn.execute(
            f"SELECT DISTINCT saga_id FROM {steps} WHERE saga_id <> %s ORDER BY saga_id",
            (saga_id,))]
        if not others:
            return "no other journal"
        other = rng.choice(others)
        conn.execute(f"DELETE FROM {steps} WHERE saga_id = %s", (saga_id,))
        conn.execute(
            f"INSERT INTO {steps} SELECT %s, seq, position, step, branch, action, status,"
            f" attempt, error, at, result FROM {steps} WHERE saga_id = %s", (saga_id, other))
        done = f"the journal of {other}"
    else:  # an entry no run wrote, appended
        step = rng.choice(STEP_NAMES)
        action = rng.choice(["act", "compensate"])
        status = rng.choice(["started", "completed", "failed", "cancelled"])
        position = rng.choice([0, 1, 2, 3, 4])
        branch = rng.choice(["primary", "fallback"])
        conn.execute(
            f"INSERT INTO {steps} (saga_id, seq, position, step, branch, action, status,"
            f" attempt, error, at, result) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, NULL, 1.0,"
            f" NULL)", (saga_id, top + 1, position, step, branch, action, status))
        done = f"append {position}/{step}/{branch}/{action}/{status}"
    # An attacker who knows the store keeps journal_length in step with the
    # rows (the store's check of it then passes): the rows are read as written.
    if rng.random() < 0.6:
        conn.execute(
            f"UPDATE {SAGAS_TABLE} SET journal_length = (SELECT count(*) FROM {steps}"
            f" WHERE saga_id = %s) WHERE saga_id = %s", (saga_id, saga_id))
        done += ", journal_length kept"
    return done


# A saga status the store does not write: another case, a word no version
# wrote, the empty string (text NOT NULL, no CHECK: the column takes each).
_OTHER_STATUSES = ["RUNNING", "Compensating", "COMPLETED", "running ", " running", "paused",
                   "resuming", "cancelled", "started", "unknown", "", "\u2028"]


def _mutate_status(rng: random.Random, conn: Any, saga_id: str) -> str:
    """The saga's status: another the store writes, or one it does not."""
    if rng.random() < 0.5:
        status = rng.choice([s.value for s in SagaStatus])
    else:
        status = rng.choice(_OTHER_STATUSES)
    taken = _refusable(conn, f"UPDATE {SAGAS_TABLE} SET status = %s WHERE saga_id = %s",
                       (status, saga_id))
    return f"sagas.status={status!r}" + ("" if taken else " refused")


def _unlisted_newest(rng: random.Random, conn: Any, saga_id: str) -> str:
    """The saga (or its whole family) created at ``infinity`` or
    ``-infinity``, which the listing leaves out, most often made the newest
    of its status first (a seq past every other): a capped count walks a
    finished status newest first, from the index alone, passing such rows
    to reach ``at_most + 1`` (S12, ``_UNLISTED_FINISHED``). (Not its update
    time: a finished saga's at infinity is counted by every count, left
    open.)"""
    family = saga_id.partition(CHILD_SEPARATOR)[0]
    ids = [saga_id]
    if rng.random() < 0.4:
        ids = [one for (one,) in conn.execute(
            f"SELECT saga_id FROM {SAGAS_TABLE} WHERE saga_id = %s OR starts_with(saga_id, %s)"
            " ORDER BY seq", (family, family + CHILD_SEPARATOR))]
    done = []
    for one in ids:
        newest = rng.random() < 0.7
        if newest:
            # (An identity: its next value, past every saga's.)
            conn.execute(f"UPDATE {SAGAS_TABLE} SET seq = DEFAULT WHERE saga_id = %s", (one,))
        when = rng.choice(["infinity", "-infinity"])
        conn.execute(f"UPDATE {SAGAS_TABLE} SET created_at = %s::timestamptz"
                     " WHERE saga_id = %s", (when, one))
        done.append(f"{one!r}{' made newest,' if newest else ''} created_at={when}")
    return "unlisted: " + "; ".join(done)


MUTATIONS: list[Callable[[random.Random, Any, str], str]] = [
    _structural, _structural, _mutate_entry, _mutate_entry, _mutate_entry,
    _mutate_saga_row, _mutate_saga_row, _mutate_context, _mutate_status,
]
# Seeds from here on draw ``_unlisted_newest`` too; those before it keep the
# mutations they were found with (the regression seeds below).
UNLISTING_FROM = 992_000


def mutate(conninfo: str, schema: str, seed: int) -> tuple[str, list[str]]:
    """Mutate one saga family's rows in ``schema`` (seeded); returns its
    top-level id and what was done."""
    rng = random.Random(seed)
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        ids = sorted(saga_id for (saga_id,) in conn.execute(f"SELECT saga_id FROM {SAGAS_TABLE}"))
        mutations = MUTATIONS if seed < UNLISTING_FROM else [*MUTATIONS, _unlisted_newest]
        mutated = mutate_family(rng, conn, ids, mutations)
        conn.commit()
    return mutated


# --------------------------------------------------------------------------- the bench


class PostgresBench(Bench):
    """Copies of a pristine schema, each a schema of its own, on ``conninfo``."""

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.prefix = f"fz_{uuid.uuid4().hex[:8]}"
        self.pristine = f"{self.prefix}_pristine"

    def schema(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    async def make_pristine(self) -> None:
        async with PostgresSagaStore(self.conninfo, schema=self.pristine) as store:
            await run_scenarios(store)
        # The dead runs' leases (a child's, held while its parent unwound it)
        # have run out by the time recovery looks: no pass waits for them.
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(
                f'UPDATE "{self.pristine}".{SAGAS_TABLE} SET lease_expires_at = \'epoch\''
                f" WHERE lease_expires_at IS NOT NULL")

    async def copy(self, name: str) -> FuzzTarget:
        schema, source = self.schema(name), self.pristine
        with psycopg.connect(self.conninfo) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            for table in TABLES:
                conn.execute(f'CREATE TABLE "{schema}".{table}'
                             f' (LIKE "{source}".{table} INCLUDING ALL)')
                conn.execute(f'INSERT INTO "{schema}".{table} OVERRIDING SYSTEM VALUE'
                             f' SELECT * FROM "{source}".{table}')
            # New sagas (a child a resume starts) take seqs after the copied ones.
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, 'seq'),"
                f' (SELECT max(seq) FROM "{schema}".{SAGAS_TABLE}))',
                (f'"{schema}".{SAGAS_TABLE}',))
        return postgres_target(self.conninfo, schema)

    def mutate(self, name: str, seed: int) -> tuple[str, list[str]]:
        return mutate(self.conninfo, self.schema(name), seed)

    def waiting_for_recovery(self, name: str, family: str) -> list[str]:
        return waiting_for_recovery(self.conninfo, self.schema(name), family)

    async def drop(self, name: str) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema(name)}" CASCADE')

    def drop_pristine(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.pristine}" CASCADE')


def waiting_for_recovery(conninfo: str, schema: str, family: str) -> list[str]:
    """The family's sagas (by id) that a recover pass must take or report
    (S12, ``waits_for_recovery``). A lease is held by an owner and an expiry
    in the future — short of ``infinity``, which no claim ever reaches: such
    a row is the claim's to report (``_postgres_unleasable``). Parked: a
    count from ``PARK_AFTER``, short of the integer's largest (which the
    claim reports as too large to count on)."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        rows = conn.execute(
            f"SELECT saga_id, status,"
            f" lease_owner IS NOT NULL AND lease_expires_at > now()"
            f" AND lease_expires_at < 'infinity',"
            f" unreleased_claims >= %s AND unreleased_claims < %s"
            f" FROM {SAGAS_TABLE} WHERE saga_id = %s OR starts_with(saga_id, %s)",
            (PARK_AFTER, 2**31 - 1, family, family + CHILD_SEPARATOR)).fetchall()
    return [saga_id for saga_id, status, held, parked in rows
            if waits_for_recovery(status, held=bool(held), parked=bool(parked))]


@contextlib.asynccontextmanager
async def postgres_bench(conninfo: str) -> AsyncIterator[PostgresBench]:
    made = PostgresBench(conninfo)
    try:
        await made.setup()
        yield made
    finally:
        made.drop_pristine()


@pytest.fixture
async def bench(pg_conninfo: str) -> AsyncIterator[PostgresBench]:
    async with postgres_bench(pg_conninfo) as made:
        yield made


# A few seeds (a multiple of 5: with a RecoveryWorker, as the hunt runs it).
# The bugs below were found by the fuzz's mutations tried one at a time on
# every scenario, with the CLI and console read back: a seed stacks one to
# three, and reads the surfaces one seed in four. 967_219 and 967_286 (a
# status the store does not write: 'RUNNING', 'running ') hold the converse:
# with the claim's unknown-status report switched off, no pass named them.
# 992_448 and 992_583 (``_unlisted_newest``: the newest completed saga
# created at infinity) are rows a capped count's walk must pass (S12).
SEEDS = [962_000, 962_001, 962_002, 962_005, 967_219, 967_286, 992_448, 992_583]


async def test_S12_S13_a_mutated_postgres_row_is_reported_or_resumed_as_its_journal_says(
    bench: PostgresBench,
) -> None:
    # One bench (the scenarios run once) for all the seeds: each is a copy.
    found = {}
    for seed in SEEDS:
        done, problems = await bench.case(seed, worker=seed % 5 == 0)
        if problems:
            found[seed] = (done, problems)
    assert not found, found


# --------------------------------------------------------------------------- regressions


async def _left_running(conninfo: str, schema: str, saga: type[Saga[Any]], crash: str,
                        saga_id: str) -> None:
    """``saga`` run as ``saga_id`` into ``schema``, dead at ``crash``; its leases run out."""
    CRASH[saga_id] = crash
    async with PostgresSagaStore(conninfo, schema=schema) as store:
        with pytest.raises(Crash):
            await saga(store=store).run(Ctx(n=1), saga_id=saga_id)
    _sql(conninfo, schema, f"UPDATE {SAGAS_TABLE} SET lease_expires_at = 'epoch'"
                           f" WHERE lease_expires_at IS NOT NULL")
    LEDGER.clear()


def _sql(conninfo: str, schema: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        conn.execute(statement, params)


_CLAIM_SKIPPED = "its row is unreadable: "  # the claim's own report (_postgres_unleasable)


async def _skipped_as_corrupt(conninfo: str, schema: str, saga_id: str,
                              says: str = "CorruptSagaRecord",
                              unclaimable: tuple[str, ...] = ()) -> None:
    """Two recovery passes each report ``saga_id`` skipped as a corrupt
    record (never interrupted, never acted on), the reason opening with
    ``says``, and the operator's surfaces neither crash nor print what is
    not JSON. ``unclaimable``: sagas whose rows the claim itself cannot
    lease, each reported by it as unreadable too."""
    async with PostgresSagaStore(conninfo, schema=schema) as store:
        for _ in range(2):
            report = await recover(store, SAGAS, older_than=0)
            skipped = dict(report.skipped)
            assert sorted(skipped) == sorted([saga_id, *unclaimable]), report
            assert len(report.skipped) == len(skipped), report  # each once
            assert skipped[saga_id].startswith(says), report
            if not says.startswith(_CLAIM_SKIPPED):  # else never leased, never loaded
                assert "CorruptSagaRecord" in skipped[saga_id], report
            for other in unclaimable:
                assert skipped[other].startswith("its row is unreadable: "), report
            assert report.interrupted == [], report
            assert report.resumed == [], report
    assert LEDGER == []
    target = postgres_target(conninfo, schema)
    assert await cli_problems(target, [saga_id]) == []
    assert await console_problems(target, [saga_id]) == []


@pytest.mark.parametrize("column", ["created_at", "updated_at"])
async def test_S12_a_postgres_saga_time_at_infinity_is_a_corrupt_record(
    pg_conninfo: str, pg_schema: str, column: str
) -> None:
    """Found by the fuzz's mutations (``created_at = 'infinity'``): timestamptz
    ``infinity`` read as a float infinity, which ``list --json``, ``show
    --json`` and the console's JSON API printed as ``Infinity`` (not JSON).
    SQLite reports such a time as a corrupt record: so does PostgreSQL."""
    await _left_running(pg_conninfo, pg_schema, PlainSaga, "act:F", "p")
    _sql(pg_conninfo, pg_schema, f"UPDATE {SAGAS_TABLE} SET {column} = 'infinity'")
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        with pytest.raises(CorruptSagaRecord, match=f"{column} is not a finite number"):
            await store.load("p")
        assert await store.list_sagas() == []  # left out of listings, logged
    # Left out by the claim itself, as every reader refuses it: never leased
    # (once counted towards parking each pass, and parked unreported).
    await _skipped_as_corrupt(pg_conninfo, pg_schema, "p",
                              says=f"{_CLAIM_SKIPPED}its {column} is not a finite number")


async def test_S12_a_finished_postgres_saga_leased_until_infinity_is_listed_without_a_lease(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Found by the fuzz's mutations: a lease held until ``infinity`` was listed with a
    float infinity, printed as ``Infinity`` by ``list --json``. A finished
    saga's lease is read by no claim: it is listed, and counted, with none
    (once left out of the listing, and counted all the same: S12)."""
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        await PlainSaga(store=store).run(Ctx(n=1), saga_id="done")
    _sql(pg_conninfo, pg_schema,
         f"UPDATE {SAGAS_TABLE} SET lease_owner = 'x', lease_expires_at = 'infinity'")
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        [listed] = await store.list_sagas()
        assert (listed.saga_id, listed.lease_expires_at) == ("done", None)
        counted = await store.count_sagas()
        assert counted == {("PlainSaga", SagaStatus.COMPLETED): 1}
        assert counted.unreadable == 0
    target = postgres_target(pg_conninfo, pg_schema)
    assert await cli_problems(target, ["done"]) == []
    assert await console_problems(target, ["done"]) == []


async def test_S12_a_postgres_version_at_the_int4_limit_is_a_corrupt_record(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Found by the fuzz's mutations (``version = 2147483647``): the resume's first
    write (version + 1) failed with "integer out of range", reported as an
    interrupted saga on every pass; no run writes two billion transitions."""
    await _left_running(pg_conninfo, pg_schema, PlainSaga, "act:F", "p")
    _sql(pg_conninfo, pg_schema, f"UPDATE {SAGAS_TABLE} SET version = 2147483647")
    await _skipped_as_corrupt(pg_conninfo, pg_schema, "p")


@pytest.mark.parametrize(
    "context", ['{"n": 1, "note": "\\u0000"}', '{"n": 1, "note": "a\\uD800"}',
                '{"n": 1, "note": "\\udc00 b"}'])
async def test_S12_a_postgres_context_holding_what_postgresql_text_cannot_is_a_corrupt_record(
    pg_conninfo: str, pg_schema: str, context: str
) -> None:
    """Found by the fuzz's mutations: the json column takes the escape of a NUL or a
    lone surrogate, which the store never writes (it refuses such a
    context). Resumed, F acted, its completed entry (with the context) was
    refused, and the saga unwound E and F for its own row."""
    await _left_running(pg_conninfo, pg_schema, PlainSaga, "act:F", "p")
    _sql(pg_conninfo, pg_schema, f"UPDATE {SAGAS_TABLE} SET context = %s::json", (context,))
    await _skipped_as_corrupt(pg_conninfo, pg_schema, "p")


async def test_S12_a_postgres_context_with_escaped_text_it_can_store_still_reads_back(
    pg_conninfo: str, pg_schema: str
) -> None:
    """A character beyond the BMP (a surrogate pair's escape) and a literal
    backslash before ``u0000`` are text PostgreSQL holds: resumed as ever."""
    await _left_running(pg_conninfo, pg_schema, PlainSaga, "act:F", "p")
    text = json.dumps({"n": 1, "note": "🙂 \\u0000 \\ud800"})
    _sql(pg_conninfo, pg_schema, f"UPDATE {SAGAS_TABLE} SET context = %s::json", (text,))
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        assert (await store.load("p")).context["note"] == "🙂 \\u0000 \\ud800"
        report = await recover(store, SAGAS, older_than=0)
    assert report.resumed == ["p"]


async def test_S12_a_child_saga_whose_fence_is_the_largest_bigint_is_corrupt_not_interrupted(
    pg_conninfo: str, pg_schema: str
) -> None:
    """Found by the fuzz's mutations: the parent's resume leases its child by id
    (``claim_saga``), whose fence + 1 failed with "bigint out of range": the
    parent was reported interrupted, as a store failure, on every pass. As
    SQLite's, ``claim_saga`` raises ``CorruptSagaRecord``, and the parent
    is skipped naming its child."""
    await _left_running(pg_conninfo, pg_schema, FuzzSaga, "act:CB", "parent")
    child = "parent" + CHILD_SEPARATOR + "Pay"
    _sql(pg_conninfo, pg_schema,
         f"UPDATE {SAGAS_TABLE} SET fence = 9223372036854775807 WHERE saga_id = %s", (child,))
    async with PostgresSagaStore(pg_conninfo, schema=pg_schema) as store:
        with pytest.raises(CorruptSagaRecord, match="fence is too large"):
            await store.claim_saga(child, owner="me", lease_seconds=30)
    # The child's own row is reported too, by the claim that cannot lease it.
    await _skipped_as_corrupt(pg_conninfo, pg_schema, "parent",
                              says=f"its child saga {child!r} is unreadable",
                              unclaimable=(child,))


if __name__ == "__main__":
    import functools
    import sys

    from pg_cluster import hunt_conninfos

    def main() -> int:
        status = 2
        for conninfo in hunt_conninfos(["postgres"]):  # a cluster of its own, removed after
            assert conninfo is not None
            status = hunt_main(sys.argv[1:], functools.partial(postgres_bench, conninfo))
        return status

    sys.exit(main())
