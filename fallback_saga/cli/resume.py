"""``resume ID --app module:attr``: an operator resumes one interrupted saga
by id — a parked one above all (``store._parking``: its resumes kept ending
the process, so workers and ``recover`` take it no more) — through
``Saga.resume``, which leases it with ``claim_saga`` (fenced, never refused
for a parked saga, not counted) and clears its claim count when it gives the
lease back."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..errors import (
    LeaseLost,
    RecordedError,
    SagaBusy,
    SagaDefinitionChanged,
    SagaFailed,
    SagaInterrupted,
    SagaNotFound,
)
from ..recovery import sagas_by_name
from ..resumption import check_definition
from ..status import SagaStatus
from ..store._common import short_repr
from ..store.base import RecoverableStore, SagaRecord
from ..subsaga import parent_saga_id
from .argtypes import format_duration
from .errors import EXIT_FAILURE, EXIT_OK, CommandFailed, UsageError
from .recover import (
    add_one_saga_options,
    build_app_sagas,
    one_saga,
    operator_name,
    warn_before_interrupting,
)
from .stores import StoreTarget, load_saga, no_such_saga, open_store, tell_what_is_held
from .text import MAX_CONTEXT, MAX_PATH, MAX_VALUE, print_lines, quoted_id, terminal_text

__all__ = ["add_resume_command"]

_EPILOG = """\
A saga that is RUNNING or COMPENSATING was interrupted (or is in flight).
Workers and recover take it up on their own — but not a parked one: a saga
whose resumes kept ending the process (list, show and the console say
"parked") waits for an operator. Once the cause is fixed (or to watch it
under a debugger), this command resumes it once, with the app's saga of the
same name, exactly as Saga.resume(ID, operator=...) does: leased in the name
user@host:pid (resume), which the first row it writes names too (see show
ID), as retry-unwinding's does (another worker holding its lease is
refused, and whoever drove it before is fenced out), RUNNING
continues from the step that did not complete (called again with its
idempotency key), COMPENSATING finishes its unwinding. When the run gives
its lease back, the saga's claim count is 0 again: workers take it as any
other, should it be interrupted later. A resume that ends this process (SystemExit
out of a step, a segfault, an OOM kill) keeps the lease, as a worker does:
the saga stays parked.

A FAILED saga is not resumed (its unwinding gave up: see retry-unwinding);
a COMPLETED or COMPENSATED one has nothing left to do; a child saga
(SubSaga) whose parent is in flight is resumed by resuming the parent.

--app module:attr is as for recover (see recover --help):
it IMPORTS the module and so RUNS CODE with your privileges. Trusted modules
only.

The first Ctrl-C only warns: a resumed saga that is interrupted unwinds
(its completed steps are compensated). A second one interrupts it: the
saga unwinds first, and the status the journal then holds is printed.

Exit status: 0 when the saga ended COMPLETED or COMPENSATED (a step failed
and every completed step was undone); 1 when it ended FAILED (a compensation
gave up: retry-unwinding once the participant is fixed), was interrupted
(the store failed: run this again), another worker holds its lease, its
definition changed, or the store failed; 2 on a usage error (an unknown saga
id, a saga that is not RUNNING or COMPENSATING).
"""

# A resume drives one saga (and the child sagas it starts): a small pool.
_CONNECTIONS = 4


def add_resume_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    resuming = commands.add_parser(
        "resume",
        help="resume one interrupted or parked saga by id (an operator's action)",
        description="Resume the interrupted saga ID (RUNNING or COMPENSATING, parked or not)\n"
        "with the app's saga of the same name, leased, and print how it ended.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_one_saga_options(
        resuming, saga_help="the interrupted saga's id", app_use="resume",
        lease_help="how long the saga is reserved for this process, renewed while it runs "
        "(default 300s)",
    )
    resuming.set_defaults(handler=run_resume)


def run_resume(args: argparse.Namespace) -> int:
    app, target, saga_id, shown = one_saga(args)

    async def run() -> tuple[SagaStatus, SagaFailed | None]:
        warn_before_interrupting(
            "resume: finishing the saga being resumed; interrupting it would compensate it."
        )
        async with open_store(target, connections=_CONNECTIONS) as store:
            sagas = await build_app_sagas(args.app, app, store)
            try:
                by_name = sagas_by_name(store, sagas)
            except (TypeError, ValueError) as error:  # e.g. two sagas of one name
                raise UsageError(str(error)) from None
            record = await _resumable(store, target, saga_id)
            saga = by_name.get(record.saga_name)
            if saga is None:
                raise UsageError(
                    f"saga {short_repr(saga_id)} is a {short_repr(record.saga_name)}, and "
                    f"{args.app} gives no saga of that name"
                )
            try:
                # Refused before the claim: a refusal leaves the saga (and
                # its claim count: parked stays parked) as it was. Checked
                # again under the lease.
                check_definition(record, saga.definition,
                                 allow_changed=args.allow_changed_definition)
            except SagaDefinitionChanged as error:
                raise CommandFailed(target.scrubbed(str(error))) from None
            sys.stdout.write(
                f"resuming saga {shown} ({record.status.value}) in "
                f"{terminal_text(target.shown, MAX_PATH)} (lease "
                f"{format_duration(args.lease)}) with {terminal_text(saga.name, MAX_VALUE)}\n"
            )
            sys.stdout.flush()
            try:
                await saga.resume(saga_id, lease_seconds=args.lease,
                                  allow_changed_definition=args.allow_changed_definition,
                                  operator=operator_name("resume"))
            except SagaFailed as failed:
                return failed.status, failed
            except asyncio.CancelledError:  # the second Ctrl-C: the saga unwound first (S8)
                await tell_what_is_held(store, target, saga_id)
                raise
            except (SagaBusy, SagaDefinitionChanged, SagaInterrupted, LeaseLost) as error:
                raise CommandFailed(target.scrubbed(str(error))) from None
            except SagaNotFound:  # purged meanwhile
                raise no_such_saga(target, saga_id) from None
            return SagaStatus.COMPLETED, None

    try:
        status, failed = asyncio.run(run())
    except asyncio.CancelledError:  # the second Ctrl-C: the saga unwound first (S8)
        raise KeyboardInterrupt from None
    return _report(target, saga_id, status, failed)


async def _resumable(store: RecoverableStore, target: StoreTarget, saga_id: str) -> SagaRecord:
    """The saga's record, if this command resumes it; else ``UsageError``
    saying why not and what does."""
    record = await load_saga(store, target, saga_id)
    status = record.status
    quoted = quoted_id(saga_id)
    if status is SagaStatus.FAILED:
        raise UsageError(
            f"saga {short_repr(saga_id)} is FAILED: its unwinding gave up, and resuming "
            f"would only return that; once the participant is fixed, finish it with "
            f"retry-unwinding {quoted}"
        )
    if status.is_final:
        raise UsageError(f"saga {short_repr(saga_id)} is {status.name}: it is finished, "
                         f"there is nothing to resume")
    parent = parent_saga_id(saga_id)
    if parent is not None:
        try:
            parent_status: SagaStatus | None = (await store.load(parent)).status
        except SagaNotFound:  # an id of its own that merely looks like a child's
            parent_status = None
        if parent_status is not None and not parent_status.is_final:
            # Resumed from here too, the child would run twice (its parent drives it).
            raise UsageError(
                f"saga {short_repr(saga_id)} is a child saga of {short_repr(parent)} "
                f"({parent_status.name}), which drives it: resume the parent "
                f"(resume {quoted_id(parent)})"
            )
    return record


def _report(target: StoreTarget, saga_id: str, status: SagaStatus,
            failed: SagaFailed | None) -> int:
    shown = terminal_text(saga_id, MAX_VALUE)
    if failed is None:
        print_lines([f"  {shown}: completed"])
        return EXIT_OK
    why = terminal_text(target.shown_error(_stopped_by(failed)), MAX_CONTEXT)
    if status is SagaStatus.COMPENSATED:
        print_lines([f"  {shown}: compensated: {why}; every completed step is undone"])
        return EXIT_OK
    lines = [f"  {shown}: failed: {why}; a compensation gave up (an operator is needed: "
             f"retry-unwinding {quoted_id(saga_id)} once the "
             f"participant is fixed)"]
    for step, error in failed.compensation_errors.items():
        text = terminal_text(target.shown_error(f"{type(error).__name__}: {error}"),
                             MAX_CONTEXT)
        lines.append(f"    {terminal_text(step, MAX_VALUE)}: {text}")
    print_lines(lines)
    return EXIT_FAILURE


def _stopped_by(failed: SagaFailed) -> str:
    error = failed.error
    # An error an earlier run journaled is its text ("ValueError: ...") already.
    text = str(error) if isinstance(error, RecordedError) else f"{type(error).__name__}: {error}"
    return f"{failed.failed_step} failed: {text}"
