"""A seeded mutation fuzz of the rows a real run wrote (S12, S13, S10).

Real sagas run into a SQLite store and stop at many points (a crash mid-act
or mid-compensate: running, mid-Fallback, in a Parallel group, in a child
saga, compensating, failed, finished). Then, as an attacker with write
access to the database (or a bug in another writer), one saga family's rows
are mutated, structure-aware, by a seeded ``random.Random``: journal entries
dropped, duplicated, reordered, cut; statuses, kinds, step names, indexes
changed; values of the wrong type, huge, negative, not finite, not UTF-8;
a context that no longer fits its class, a saga name no saga has, another
definition's fingerprint.

``recover()`` (or a ``RecoveryWorker``), ``load``, ``list_sagas``, the CLI's
``list``/``show`` and the console's JSON API then read the whole store, and
a participant ledger (every act and compensate) is checked:

* nothing raises out of them but the documented per-saga reports;
* every untouched saga recovers exactly as it does without the mutation;
* a mutated saga is reported corrupt (and not acted on), or resumes as its
  journal says: no act for a step the journal has completed or compensated,
  no act once it is COMPENSATING or final, no compensate twice, no
  compensate of a step whose act neither the journal nor this resume shows;
* a saga reported finished holds that status in the journal (S13).

``cd tests && PYTHONPATH=. python test_row_mutation_fuzz.py START COUNT
[--worker-every N]`` is the long hunt; pytest runs a handful of seeds and
every regression found.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
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
    FuzzTarget,
    PlainSaga,
    console_problems,
    hunt_main,
    mutate_family,
    run_scenarios,
    waits_for_recovery,
)

from fallback_saga import (
    CorruptSagaRecord,
    SagaStatus,
    SQLiteSagaStore,
    StepStatus,
    recover,
)
from fallback_saga.store._parking import PARK_AFTER
from fallback_saga.stored_json import parse_stored_json
from fallback_saga.subsaga import CHILD_SEPARATOR


def sqlite_target(path: Path) -> FuzzTarget:
    def for_console() -> AbstractAsyncContextManager[Any]:
        return SQLiteSagaStore(path, read_only=True)

    return FuzzTarget(lambda: SQLiteSagaStore(path), for_console, ["--db", str(path)],
                      lambda shown: count_rows(path, shown))


def count_rows(path: Path, shown: CountFilter) -> int:
    """The rows of the sagas table ``shown`` selects, as the store's filters
    read (``created_since <= created_at < created_until``, by SQLite's
    comparison: text sorts after every number), whatever they hold."""
    where, params = shown.where(everything="1", name="?", time="?")
    conn = sqlite3.connect(path)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM sagas WHERE " + where, params).fetchone()
    finally:
        conn.close()
    return int(count)


async def make_pristine(path: Path) -> None:
    """Every scenario run into a fresh store at ``path``, each stopped
    where it says."""
    async with SQLiteSagaStore(path) as store:
        await run_scenarios(store)
    # The dead runs' leases (a child's, held while its parent unwound it)
    # have run out by the time recovery looks: no pass waits for them.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sagas SET lease_expires_at = 0 WHERE lease_expires_at IS NOT NULL")
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- mutations

_STATUSES = [s.value for s in SagaStatus] + [s.value for s in StepStatus]
_TEXTS = ["", " ", "x", "RUNNING", "Completed", "act", "compensate", "primary", "fallback",
          "null", "[]", "{}", "NaN", "Infinity", "-Infinity", "1e999", "\u2028", "\x00",
          "🙂", "x" * 5000]
_NUMBERS: list[Any] = [0, 1, -1, 2, 7, 99, 2**31, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308]


def _hostile(rng: random.Random, plausible: list[Any]) -> tuple[str, tuple[Any, ...], str]:
    """A value to store: (SQL expression, its parameters, what it is)."""
    kind = rng.randrange(9)
    if kind <= 2 and plausible:
        value = rng.choice(plausible)
        return "?", (value,), repr(value)
    if kind == 3:
        value = rng.choice(_TEXTS + _STATUSES)
        return "?", (value,), repr(value[:20])
    if kind == 4:
        value = rng.choice(_NUMBERS)
        return "?", (value,), repr(value)
    if kind == 5:
        sql = rng.choice(["9e999", "-9e999", "NULL", "X'00ff'", "X''"])
        return sql, (), sql
    if kind == 6:  # text that is not UTF-8: a lone surrogate, a stray byte
        raw = rng.choice([b"s\xff", b"\xed\xa0\x80", b"\xc3", b"act\x80"])
        return "CAST(? AS TEXT)", (raw,), f"bytes {raw!r}"
    if kind == 7:
        value = rng.choice(["[" * 5000 + "]" * 5000, '{"a": ' * 300 + "1" + "}" * 300,
                            "9" * 5000, "[1, 2]", '{"$fs": ["obj", ["os:system", {}]]}'])
        return "?", (value,), f"json {value[:12]!r}"
    value = rng.randrange(-(2**40), 2**40)
    return "?", (value,), repr(value)


def _steps_of(conn: sqlite3.Connection, saga_id: str) -> list[int]:
    return [seq for (seq,) in conn.execute(
        "SELECT seq FROM saga_steps WHERE saga_id = ? ORDER BY seq", (saga_id,))]


_STEP_COLUMNS: dict[str, list[Any]] = {
    "position": [0, 1, 2, 3, 4, 5, -1, 1000],
    "step": [*STEP_NAMES, "Nope"],
    "branch": ["primary", "fallback", "other"],
    "action": ["act", "compensate", "undo"],
    "status": _STATUSES,
    "attempt": [0, 1, 2, 3, -1, 10**6],
    "error": [None, "Refused('x')", "RecordedError"],
    "at": [0, 1.5, 1e12, -1],
    "result": [None, '"A-1"', "null", "{}", '{"$fs": ["obj", ["os:system", {}]]}', "NaN"],
}

_SAGA_COLUMNS: dict[str, list[Any]] = {
    "status": [s.value for s in SagaStatus] + ["paused"],
    "saga_name": [*SAGA_NAMES, "NoSuchSaga", ""],
    "fingerprint": ["", "0" * 16, "nope"],
    "version": [0, 1, -1, 2**62, 10**6],
    "created_at": [0, 1e12, -1],
    "updated_at": [0, 1e12, -1],
    "lease_owner": [None, "", "someone"],
    "lease_expires_at": [None, 0, 1e18],
    "fence": [0, -1, 2**63 - 1],
    "unreleased_claims": [0, 99, -5],
}


def _context_value(rng: random.Random) -> Any:
    return rng.choice([None, "", "x", 0, -1, 10**30, 1.5, [], {}, [1, "a"], {"k": [1]},
                       True, {"$fs": ["obj", ["os:system", {}]]},
                       {"$fs": ["nope", 1]}, {"$fs": ["tuple", [1, 2]]}, "A", "D"])


def _mutate_context(rng: random.Random, conn: sqlite3.Connection, saga_id: str) -> str:
    (text,) = conn.execute("SELECT context FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
    try:
        ctx = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        ctx = {}
    how = rng.randrange(6)
    if how == 0 and isinstance(ctx, dict) and ctx:
        key = rng.choice(sorted(ctx))
        del ctx[key]
        new = json.dumps(ctx)
        what = f"drop {key}"
    elif how == 1 and isinstance(ctx, dict):
        key = rng.choice(["extra", "n", "fail", "stuck", "note", "$fs", ""])
        ctx[key] = _context_value(rng)
        new = json.dumps(ctx)
        what = f"set {key}={str(ctx[key])[:30]}"
    elif how == 2:
        new = json.dumps(_context_value(rng))
        what = f"whole={new[:30]}"
    elif how == 3:
        new = rng.choice(['{"n": NaN}', '{"n": Infinity}', '{"n": 1e400}', '{"n": -1e400}',
                          '{"n": ' + "9" * 5000 + "}", '{"n": 1, "n": "x"}', "{", "",
                          '{"note": "\\ud800"}', '{"n": ' + "[" * 3000 + "]" * 3000 + "}"])
        what = f"text={new[:30]}"
    else:
        expr, params, what = _hostile(rng, [])
        try:
            conn.execute(f"UPDATE sagas SET context = {expr} WHERE saga_id = ?",
                         (*params, saga_id))
        except sqlite3.IntegrityError:
            return f"context={what} refused"
        return f"context={what}"
    conn.execute("UPDATE sagas SET context = ? WHERE saga_id = ?", (new, saga_id))
    return f"context {what}"


def _mutate_saga_row(rng: random.Random, conn: sqlite3.Connection, saga_id: str) -> str:
    column = rng.choice(sorted(_SAGA_COLUMNS))
    plausible = list(_SAGA_COLUMNS[column])
    if column == "fingerprint":  # another definition's
        plausible += [fp for (fp,) in conn.execute("SELECT DISTINCT fingerprint FROM sagas")]
    return _set_hostile(rng, conn, "sagas", column, plausible, "saga_id = ?", (saga_id,),
                        f"sagas.{column}")


def _mutate_entry(rng: random.Random, conn: sqlite3.Connection, saga_id: str) -> str:
    seqs = _steps_of(conn, saga_id)
    if not seqs:
        return "no entries"
    seq = rng.choice(seqs)
    column = rng.choice(sorted(_STEP_COLUMNS))
    return _set_hostile(rng, conn, "saga_steps", column, _STEP_COLUMNS[column],
                        "saga_id = ? AND seq = ?", (saga_id, seq), f"entry {seq}.{column}")


def _set_hostile(
    rng: random.Random, conn: sqlite3.Connection, table: str, column: str,
    plausible: Any, where: str, keys: tuple[Any, ...], label: str,
) -> str:
    """Set ``column`` of the row ``where`` picks to a hostile value; what was done."""
    expr, params, what = _hostile(rng, plausible)
    try:
        conn.execute(f"UPDATE {table} SET {column} = {expr} WHERE {where}", (*params, *keys))
    except sqlite3.IntegrityError:
        return f"{label}={what} refused"
    return f"{label}={what}"


def _structural(rng: random.Random, conn: sqlite3.Connection, saga_id: str) -> str:
    seqs = _steps_of(conn, saga_id)
    if not seqs:
        return "no entries"
    how = rng.randrange(5)
    top = max(seqs)
    if how == 0:
        seq = rng.choice(seqs)
        conn.execute("DELETE FROM saga_steps WHERE saga_id = ? AND seq = ?", (saga_id, seq))
        return f"drop entry {seq}"
    if how == 1:
        seq = rng.choice(seqs)
        conn.execute(
            "INSERT INTO saga_steps SELECT saga_id, ?, position, step, branch, action, status,"
            " attempt, error, at, result FROM saga_steps WHERE saga_id = ? AND seq = ?",
            (top + 1, saga_id, seq))
        return f"duplicate entry {seq} at the end"
    if how == 2 and len(seqs) > 1:
        one, two = rng.sample(seqs, 2)
        conn.execute("UPDATE saga_steps SET seq = -1 WHERE saga_id = ? AND seq = ?",
                     (saga_id, one))
        conn.execute("UPDATE saga_steps SET seq = ? WHERE saga_id = ? AND seq = ?",
                     (one, saga_id, two))
        conn.execute("UPDATE saga_steps SET seq = ? WHERE saga_id = ? AND seq = -1",
                     (two, saga_id))
        return f"swap entries {one} and {two}"
    if how == 3:
        keep = rng.randrange(len(seqs))
        conn.execute("DELETE FROM saga_steps WHERE saga_id = ? AND seq >= ?",
                     (saga_id, seqs[keep]))
        return f"cut the journal before entry {seqs[keep]}"
    # an entry no run wrote, appended
    step = rng.choice(STEP_NAMES)
    action = rng.choice(["act", "compensate"])
    status = rng.choice(["started", "completed", "failed", "cancelled"])
    position = rng.choice([0, 1, 2, 3, 4])
    branch = rng.choice(["primary", "fallback"])
    conn.execute(
        "INSERT INTO saga_steps (saga_id, seq, position, step, branch, action, status, attempt,"
        " error, at, result) VALUES (?, ?, ?, ?, ?, ?, ?, 1, NULL, 1.0, NULL)",
        (saga_id, top + 1, position, step, branch, action, status))
    return f"append {position}/{step}/{branch}/{action}/{status}"


# What the listing leaves out of a saga's row (whatever its status), as a
# SET clause and its parameters: a creation or update time that is no finite
# number (text, either infinity, a BLOB, text not UTF-8), a name that is no
# text (a number, a BLOB, text not UTF-8).
_UNLISTING: list[tuple[str, tuple[Any, ...]]] = [
    ("created_at = ?", ("x",)), ("created_at = 9e999", ()), ("created_at = -9e999", ()),
    ("created_at = X'00ff'", ()), ("created_at = CAST(? AS TEXT)", (b"s\xff",)),
    ("updated_at = ?", ("x",)), ("updated_at = 9e999", ()), ("updated_at = -9e999", ()),
    ("saga_name = 7", ()), ("saga_name = X'00ff'", ()),
    ("saga_name = CAST(? AS TEXT)", (b"s\xff",)),
]


def _unlisted_newest(rng: random.Random, conn: sqlite3.Connection, saga_id: str) -> str:
    """The saga (or its whole family) left out of the listing, most often
    made the newest of its status first (a rowid past every other): a
    capped count walks a finished status oldest first, from the index
    alone, and must go past the rows it passes to reach ``at_most + 1``
    (S12, ``_capped_finished``)."""
    family = saga_id.partition(CHILD_SEPARATOR)[0]
    ids = [saga_id]
    if rng.random() < 0.4:
        ids = [one for (one,) in conn.execute(
            "SELECT saga_id FROM sagas WHERE saga_id = ? OR substr(saga_id, 1, ?) = ?"
            " ORDER BY rowid", (family, len(family) + 1, family + CHILD_SEPARATOR))]
    done = []
    for one in ids:
        newest = rng.random() < 0.7
        if newest:
            conn.execute("UPDATE sagas SET rowid = (SELECT max(rowid) + 1 FROM sagas)"
                         " WHERE saga_id = ?", (one,))
        change, params = rng.choice(_UNLISTING)
        conn.execute(f"UPDATE sagas SET {change} WHERE saga_id = ?", (*params, one))
        done.append(f"{one!r}{' made newest,' if newest else ''} {change} {params!r}")
    return "unlisted: " + "; ".join(done)


MUTATIONS: list[Callable[[random.Random, sqlite3.Connection, str], str]] = [
    _structural, _structural, _mutate_entry, _mutate_entry, _mutate_entry,
    _mutate_saga_row, _mutate_context,
]
# Seeds from here on draw ``_unlisted_newest`` too; those before it keep the
# mutations they were found with (the regression seeds below).
UNLISTING_FROM = 992_000


def mutate(path: Path, seed: int) -> tuple[str, list[str]]:
    """Mutate one saga family's rows (seeded); returns its top-level id and
    what was done."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.text_factory = lambda raw: raw.decode("utf-8", "replace")  # rows mutated before
    try:
        ids = sorted(saga_id for (saga_id,) in conn.execute("SELECT saga_id FROM sagas"))
        mutations = MUTATIONS if seed < UNLISTING_FROM else [*MUTATIONS, _unlisted_newest]
        mutated = mutate_family(rng, conn, ids, mutations)
        conn.commit()
    finally:
        conn.close()
    return mutated

# --------------------------------------------------------------------------- the hunt


class SQLiteBench(Bench):
    """Copies of a pristine SQLite file, in ``where``."""

    def __init__(self, where: Path) -> None:
        super().__init__()
        self.where = where
        self.pristine = where / "pristine.db"

    async def make_pristine(self) -> None:
        await make_pristine(self.pristine)

    async def copy(self, name: str) -> FuzzTarget:
        _copy(self.pristine, self.where / f"{name}.db")
        return sqlite_target(self.where / f"{name}.db")

    def mutate(self, name: str, seed: int) -> tuple[str, list[str]]:
        return mutate(self.where / f"{name}.db", seed)

    def waiting_for_recovery(self, name: str, family: str) -> list[str]:
        return waiting_for_recovery(self.where / f"{name}.db", family)

    async def drop(self, name: str) -> None:
        _remove(self.where / f"{name}.db")


def waiting_for_recovery(path: Path, family: str) -> list[str]:
    """The family's sagas (by id) that a recover pass must take or report
    (S12, ``waits_for_recovery``); a lease is held by an owner and an
    expiry in the future, parked by a count from ``PARK_AFTER``."""
    conn = sqlite3.connect(path)
    conn.text_factory = bytes  # text that is not UTF-8 reads too
    try:
        rows = conn.execute(
            "SELECT saga_id, status, lease_owner, lease_expires_at, unreleased_claims"
            " FROM sagas WHERE saga_id = ? OR substr(saga_id, 1, ?) = ?",
            (family, len(family) + 1, family + CHILD_SEPARATOR)).fetchall()
    finally:
        conn.close()
    waiting = []
    for saga_id, status, owner, expires_at, claims in rows:
        held = (owner is not None and isinstance(expires_at, float | int)
                and expires_at > time.time())
        parked = type(claims) is int and PARK_AFTER <= claims < 2**63 - 1
        # Not UTF-8: no status the store writes (and, as an id, not named).
        shown = status.decode(errors="replace") if isinstance(status, bytes) else str(status)
        if waits_for_recovery(shown, held=held, parked=parked):
            with contextlib.suppress(UnicodeDecodeError):
                waiting.append(saga_id.decode())
    return waiting


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _copy(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(str(source) + suffix).exists():
            shutil.copyfile(str(source) + suffix, str(target) + suffix)


@pytest.fixture
async def bench(tmp_path: Path) -> Bench:
    made = SQLiteBench(tmp_path)
    await made.setup()
    return made


# A few seeds, and each that found a bug (950_520: a context number too big
# for a float; 966_310, 966_323: a status the store does not know, refused
# by every reader, never met by a claim — named by no pass; 966_502: a lease
# owner that is not UTF-8, left out of the listing, claimed and resumed
# all the same; 982_003, 982_030: a created_at that is text, not UTF-8 —
# counted as a saga of its status though the listing left it out, and every
# count of a time window raised; a multiple of 5:
# with a RecoveryWorker, as the hunt ran it). And seeds of
# ``_unlisted_newest`` that a capped count must walk past (S12): 992_486, two
# completed sagas made the newest and left out (a BLOB creation time, an
# update time that is text); 992_593, the newest compensated saga created
# at text; 992_724, the newest completed saga named by text not UTF-8.
@pytest.mark.parametrize("seed", [950_000, 950_001, 950_002, 950_003, 950_520, 966_310, 966_323,
                                  966_502, 982_003, 982_030, 992_486, 992_593, 992_724])
async def test_S12_S13_a_mutated_row_is_reported_or_resumed_as_its_journal_says(
    bench: Bench, seed: int
) -> None:
    done, problems = await bench.case(seed, worker=seed % 5 == 0)
    assert not problems, (done, problems)


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("text", ["1e400", "[-1e400]", '{"n": 1e999}', "-" + "9" * 400 + ".0"])
def test_S12_a_number_too_big_for_a_float_is_not_stored_json(text: str) -> None:
    """``json`` reads it as infinity: no writer of the library writes one."""
    with pytest.raises(ValueError, match="too big"):
        parse_stored_json(text)


async def test_S12_a_context_number_too_big_for_a_float_is_a_corrupt_record(
    tmp_path: Path,
) -> None:
    """Found by seed 950520: the console's JSON and ``show --json`` printed
    the context as ``-Infinity`` (not JSON), and a field that takes a float
    would have been resumed with it."""
    path = tmp_path / "sagas.db"
    CRASH["p"] = "act:F"
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(Crash):
            await PlainSaga(store=store).run(Ctx(n=1), saga_id="p")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sagas SET context = '{\"n\": -1e400}'")
    conn.commit()
    conn.close()
    LEDGER.clear()
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(CorruptSagaRecord, match="'p'"):
            await store.load("p")
        report = await recover(store, SAGAS, older_than=0)
    assert [saga_id for saga_id, _ in report.skipped] == ["p"]
    assert LEDGER == []
    assert await console_problems(sqlite_target(path), ["p"]) == []


async def _left_running_plain(path: Path, saga_id: str = "p") -> None:
    """PlainSaga ``saga_id`` died in F: E's act journaled completed."""
    CRASH[saga_id] = "act:F"
    async with SQLiteSagaStore(path) as store:
        with pytest.raises(Crash):
            await PlainSaga(store=store).run(Ctx(n=1), saga_id=saga_id)
    LEDGER.clear()


def _set_entries(path: Path, sql: str, step: str = "E") -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE saga_steps SET {sql} WHERE step = ?", (step,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("step", "change"),
    [
        ("E", "position = -1"),  # found by seed 950830: E acted again, F compensated
        ("F", "position = -1"),  # F's own name, read from the list's end
        ("E", "position = 1"),  # E at F's place
        ("E", "position = 7"),  # a place the saga has not
        ("E", "branch = 'fallback'"),  # a branch E has not
        ("E", "step = 'F'"),  # E's entries naming F
        ("E", "step = 'Nope'"),  # a step the saga has not
    ],
)
async def test_S10_S12_journal_entries_that_do_not_fit_an_unchanged_definition_are_corrupt(
    tmp_path: Path, step: str, change: str
) -> None:
    """The fingerprint matches, so the code is the one the saga started
    with: an entry naming another step than the code has at its position
    and branch cannot have been written by a run. Read by position alone,
    ``position = -1`` took E's completed act for the last step's (F): E
    acted again, and F's compensate would undo an act that never ran."""
    path = tmp_path / "sagas.db"
    await _left_running_plain(path)
    _set_entries(path, change, step)
    async with SQLiteSagaStore(path) as store:
        report = await recover(store, SAGAS, older_than=0)
    [(saga_id, reason)] = report.skipped
    assert saga_id == "p"
    assert reason.startswith("CorruptSagaRecord"), reason
    assert LEDGER == []


if __name__ == "__main__":
    import sys

    @contextlib.asynccontextmanager
    async def sqlite_bench() -> AsyncIterator[Bench]:
        with tempfile.TemporaryDirectory() as where:
            made = SQLiteBench(Path(where))
            await made.setup()
            yield made

    sys.exit(hunt_main(sys.argv[1:], sqlite_bench))
