"""``retry-unwinding ID --app module:attr``: an operator finishes the unwinding
of a FAILED saga once the participant whose compensation gave up is fixed
(``fallback_saga.retry_unwinding``)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..errors import SagaBusy, SagaDefinitionChanged, SagaInterrupted, SagaNotFailed, SagaNotFound
from ..reopening import retry_unwinding
from ..resumption import check_unwinding_retryable
from ..status import SagaStatus, StepStatus
from ..store.base import SagaRecord, SagaStore, is_recoverable
from .argtypes import format_duration
from .errors import EXIT_FAILURE, EXIT_OK, CommandFailed, UsageError
from .recover import add_one_saga_options, build_app_sagas, one_saga, operator_name
from .stores import StoreTarget, load_saga, no_such_saga, open_store, tell_what_is_held
from .text import MAX_CONTEXT, MAX_PATH, MAX_VALUE, print_lines, quoted_id, terminal_text

__all__ = ["add_retry_unwinding_command"]

_EPILOG = """\
A saga ends FAILED when a compensation still failed after its retries: an
effect is left in place, and nothing retries it on its own (recover and the
workers leave FAILED sagas alone). Once the participant is fixed, this
command compensates, in reverse, every step the journal holds completed and
not yet compensated — the one that gave up first, called again with its
idempotency key, so it must tolerate having partly run — and never runs a
forward step. The saga goes FAILED -> COMPENSATING -> COMPENSATED (or FAILED
again, when a compensation still fails), leased like any recovery, and the
journal's first new row names who reopened it (see show ID).

--app module:attr is as for recover (see recover --help):
it IMPORTS the module and so RUNS CODE with your privileges. Trusted modules
only.

A retry cut off (the store failed, the process was killed) leaves the saga
FAILED, or COMPENSATING: run this command again (recover finishes it too).
Ctrl-C stops it once the compensations under way have finished, and
prints the status the journal then holds (exit status 130).

Exit status: 0 when the saga ended COMPENSATED; 1 when it ended FAILED again,
another worker holds its lease, its definition changed, or the store failed;
2 on a usage error (an unknown saga id, a saga that is not FAILED).
"""

# A retry drives one saga: a small pool is plenty.
_CONNECTIONS = 2


def add_retry_unwinding_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    retrying = commands.add_parser(
        "retry-unwinding",
        help="finish the unwinding of a FAILED saga (an operator's action)",
        description="Compensate what a FAILED saga left undone, now that the participant\n"
        "is fixed, with the app's saga of the same name, and print how it ended.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_one_saga_options(
        retrying, saga_help="the FAILED saga's id", app_use="unwind",
        lease_help="how long the saga is reserved for this process (default 300s)",
    )
    retrying.set_defaults(handler=run_retry_unwinding)


def run_retry_unwinding(args: argparse.Namespace) -> int:
    app, target, saga_id, shown = one_saga(args)

    async def run() -> tuple[SagaStatus, list[tuple[str, str]] | str]:
        async with open_store(target, connections=_CONNECTIONS) as store:
            sagas = await build_app_sagas(args.app, app, store)
            # Refused before a word is printed: "retrying the unwinding of
            # saga X" over a saga that is not FAILED would tell an operator
            # (and a log) that something was retried. retry_unwinding checks
            # again under the lease.
            await _retryable(store, target, saga_id)
            sys.stdout.write(
                f"retrying the unwinding of saga {shown} in "
                f"{terminal_text(target.shown, MAX_PATH)} (lease "
                f"{format_duration(args.lease)})\n"
            )
            sys.stdout.flush()
            try:
                status = await retry_unwinding(
                    store, sagas, saga_id, lease=args.lease, owner=operator_name("retry-unwinding"),
                    allow_changed_definition=args.allow_changed_definition,
                )
            except asyncio.CancelledError:  # Ctrl-C: the compensation under way finished first
                # "interrupted" alone would leave the operator guessing: the
                # unwinding may have ended meanwhile (COMPENSATED), or stopped
                # COMPENSATING, which this command, run again, finishes (S13).
                await tell_what_is_held(store, target, saga_id)
                raise
            except SagaNotFound:
                raise no_such_saga(target, saga_id) from None
            except (SagaNotFailed, TypeError, ValueError) as error:
                raise UsageError(target.scrubbed(str(error))) from None
            except (SagaBusy, SagaDefinitionChanged, SagaInterrupted) as error:
                raise CommandFailed(target.scrubbed(str(error))) from None
            if status is SagaStatus.COMPENSATED:
                return status, []
            try:
                return status, _given_up(await store.load(saga_id))
            except Exception as error:
                # The retry ended FAILED, as the journal holds: that is told
                # whatever this read of its details comes to (S13).
                return status, target.shown_error(f"{type(error).__name__}: {error}")

    try:
        status, gave_up = asyncio.run(run())
    except asyncio.CancelledError:  # Ctrl-C: the compensation under way finished first
        raise KeyboardInterrupt from None
    if status is SagaStatus.COMPENSATED:
        print_lines([f"  {shown}: compensated: every completed step is undone"])
        return EXIT_OK
    lines = [f"  {shown}: failed again (still needs an operator)"]
    if isinstance(gave_up, str):  # the store failed as the errors were read
        lines.append(f"    (which compensations gave up could not be read: "
                     f"{terminal_text(gave_up, MAX_CONTEXT)}; "
                     f"show {quoted_id(saga_id)} lists them)")
        gave_up = []
    for step, error in gave_up:
        text = terminal_text(target.shown_error(error), MAX_CONTEXT)
        lines.append(f"    {terminal_text(step, MAX_VALUE)}: {text}")
    print_lines(lines)
    return EXIT_FAILURE


async def _retryable(store: SagaStore, target: StoreTarget, saga_id: str) -> None:
    """``UsageError`` (exit status 2) unless the saga's unwinding can be
    retried: an unknown id, or a saga that is not FAILED, with why."""
    record = await load_saga(store, target, saga_id)
    try:
        check_unwinding_retryable(record, leased=is_recoverable(store))
    except SagaNotFailed as error:
        raise UsageError(target.scrubbed(str(error))) from None


def _given_up(record: SagaRecord) -> list[tuple[str, str]]:
    """The compensations that gave up in the last reopening, with their last
    error (the journal's rows after the one that names the reopening)."""
    start = 0
    for index, entry in enumerate(record.history):
        if entry.action == "compensate" and (entry.error or "").startswith("reopened by"):
            start = index
    last: dict[str, str] = {}
    for entry in record.history[start:]:
        if entry.action == "compensate":
            if entry.status is StepStatus.FAILED:
                last[entry.step] = entry.error or ""
            elif entry.status is StepStatus.COMPLETED:
                last.pop(entry.step, None)
    return list(last.items())
