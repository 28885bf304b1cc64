"""``recover --app module:attr``: resume the interrupted sagas of a store with
the operator's own sagas, and report what became of each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import inspect
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..errors import SagaStoreError, described
from ..recovery import RecoveryReport, recover
from ..saga import Saga
from ..shown_text import redact
from ..status import SagaStatus
from ..store._parking import parked_claims, parked_text
from ..store.base import RecoverableStore, SagaSummary
from .argtypes import format_duration, parse_duration, positive_duration, positive_int
from .errors import EXIT_FAILURE, EXIT_OK, UsageError
from .stores import StoreTarget, add_store_options, open_store, store_target
from .targets import import_target, is_saga_class
from .text import MAX_CONTEXT, MAX_PATH, MAX_VALUE, print_lines, terminal_text, when

__all__ = [
    "OneSaga",
    "add_one_saga_options",
    "add_recover_command",
    "build_app_sagas",
    "left_alone",
    "load_app",
    "one_saga",
    "operator_name",
    "report_lines",
    "warn_before_interrupting",
]

_RECOVER_EPILOG = """\
--app module:attr names what to resume the sagas with, built on the store this
command opens.

Security: --app IMPORTS the module and so RUNS CODE: its top-level code, then
the factory, with your privileges (the current directory is on the import
path). Name only a module you trust, as you would before running it with
python. The saga store's contents are data and never run.

The attribute is either a factory, called with the open store (a
SQLiteSagaStore for --db, a PostgresSagaStore for --dsn), that returns the
Saga instances (sync or async):

    def sagas(store):
        return [OrderSaga(store=store, step_factory=container.build)]

or a Saga subclass, or a list of them, which are built as cls(store=store).
Each interrupted saga is resumed with the saga of the same name.

After the report come the interrupted sagas the pass did not take, and why:
each one another worker holds a lease on (its owner, until when), and how
many were written within --older-than (in flight, or interrupted too
recently).

Exit status: 1 if a saga claimed ended FAILED (a compensation gave up: an
operator is needed), was skipped (unknown saga name, changed definition,
unreadable row) or was interrupted (its journal writes failed, the store
failed to read it, or its resume ran past --resume-timeout: it stays for
the next pass), or if the
pass left a saga parked (its resumes keep ending the process or hanging: an
operator is needed too), or a lease it could not give back (the store
refused it, or did not answer within 10 s, as the pass ended: "lease left"
in the report; it runs out on its own, counted toward parking); 2 on a
usage error; else 0.
"""

_APP_CONTRACT = (
    "a factory sagas(store) (or async def) returning the Saga instances built "
    "with that store, or a Saga subclass (or a list of them) built as cls(store=store)"
)

# How many sagas a PostgreSQL recovery resumes at once is recover()'s default;
# its pool has room for them.
_CONNECTIONS = 10

SagaFactory = Callable[[RecoverableStore], object]


def add_recover_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recovering = commands.add_parser(
        "recover",
        help="resume the interrupted sagas of a saga store",
        description="Claim interrupted sagas (RUNNING or COMPENSATING, not updated for\n"
        "--older-than) with a lease, resume each with the app's saga of the same name,\n"
        "and print a line per saga and a report.",
        epilog=_RECOVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_options(recovering)
    recovering.add_argument(
        "--app", required=True, metavar="module:attr",
        help="the sagas to resume with (see below). This imports the module and runs its "
        "code with your privileges: trusted modules only",
    )
    recovering.add_argument(
        "--older-than", type=parse_duration, default=60.0, metavar="AGE",
        help="only sagas not updated for AGE: 90, 30s, 15m, 12h, 7d (default 60s)",
    )
    recovering.add_argument(
        "--limit", type=positive_int, default=100, metavar="N",
        help="resume at most N sagas (default 100)",
    )
    recovering.add_argument(
        "--lease", type=positive_duration, default=300.0, metavar="TIME",
        help="how long each claimed saga is reserved for this process (default 300s)",
    )
    recovering.add_argument(
        "--resume-timeout", type=positive_duration, default=None, metavar="TIME",
        help="stop a saga whose resume runs longer than TIME (a step with no timeout "
        "that never answers): without unwinding, reported interrupted, its lease kept "
        "for --lease and counted toward parking it (default: no bound)",
    )
    recovering.add_argument(
        "--allow-changed-definition", action="store_true",
        help="also resume sagas started with another definition of their saga (steps "
        "added, removed or renamed since), and the child sagas (SubSaga) they drive, "
        "matching steps by position; a saga whose journaled steps the code moved is still "
        "skipped. Only when you know the change "
        "is harmless (docs/durability.md, Changed definitions)",
    )
    recovering.set_defaults(handler=run_recover)


def add_one_saga_options(
    parser: argparse.ArgumentParser, *, saga_help: str, app_use: str, lease_help: str
) -> None:
    """What a command acting on one saga by id takes (``resume``,
    ``retry-unwinding``): the saga's id, the store, the app's sagas to run it
    with, its lease, and the override of a changed definition, as for recover."""
    parser.add_argument("saga_id", metavar="ID", help=saga_help)
    add_store_options(parser)
    parser.add_argument(
        "--app", required=True, metavar="module:attr",
        help=f"the sagas to {app_use} with, as for recover. This imports the module and runs "
        "its code with your privileges: trusted modules only",
    )
    parser.add_argument(
        "--lease", type=positive_duration, default=300.0, metavar="TIME", help=lease_help,
    )
    parser.add_argument(
        "--allow-changed-definition", action="store_true",
        help="also when the saga was started with another definition of its saga, as for "
        "recover (docs/durability.md, Changed definitions)",
    )


class OneSaga(NamedTuple):
    """What a command acting on one saga by id starts from (``one_saga``)."""

    app: SagaFactory  # --app, loaded
    target: StoreTarget  # the store named
    saga_id: str
    shown: str  # the id as printed (escaped, cut)


def one_saga(args: argparse.Namespace) -> OneSaga:
    """The start of a command given ``add_one_saga_options``' options:
    ``--app`` loaded first (a bad one touches no store), then the store
    target, and the saga id."""
    app = load_app(args.app)
    saga_id: str = args.saga_id
    return OneSaga(app, store_target(args), saga_id, terminal_text(saga_id, MAX_VALUE))


def operator_name(command: str) -> str:
    """Who acts on the saga by hand, as the journal names them and as the
    lease's owner: the user, the machine, the process and the command."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name to be found (a container without one)
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()} ({command})"


def load_app(spec: str) -> SagaFactory:
    """Import ``--app`` and return it as a factory ``(store) -> sagas``.

    The attribute is a factory already, or a Saga subclass (or a list/tuple of
    them) that the returned factory builds as ``cls(store=store)``.
    """
    target = import_target(spec, "myapp.recovery:sagas")
    items = list(target) if isinstance(target, (list, tuple)) else [target]
    saga_classes = [item for item in items if is_saga_class(item)]
    if items and len(saga_classes) == len(items):
        for saga_class in saga_classes:
            if getattr(saga_class, "definition", None) is None:
                raise UsageError(f"{saga_class.__name__} declares no steps (an abstract Saga base)")

        def build(store: RecoverableStore) -> object:
            return [saga_class(store=store) for saga_class in saga_classes]

        return build
    if any(isinstance(item, Saga) for item in items):
        raise UsageError(
            f"{spec} is a saga instance, but recovery must use sagas built with the store it "
            f"opens: expose {_APP_CONTRACT}"
        )
    if isinstance(target, type):
        raise UsageError(f"{spec} is the class {target.__name__}; expected {_APP_CONTRACT}")
    if callable(target):
        return target
    raise UsageError(f"{spec} is {_short(target)}; expected {_APP_CONTRACT}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def build_app_sagas(
    spec: str, factory: SagaFactory, store: RecoverableStore
) -> list[Saga[Any]]:
    """The saga instances that ``--app`` builds on ``store``, checked."""
    try:
        made = factory(store)
        if inspect.isawaitable(made):
            made = await made
    except Exception as error:  # the app's own code failed
        raise UsageError(
            f"{spec}: building the sagas failed: {described(error)}"
        ) from None
    if isinstance(made, Saga):
        made = [made]
    if isinstance(made, (str, bytes)) or not isinstance(made, Iterable):
        raise UsageError(f"{spec}(store) returned {_short(made)}, not a list of Saga instances")
    sagas: list[Saga[Any]] = []
    for saga in made:
        if not isinstance(saga, Saga):
            raise UsageError(f"{spec}(store) returned {_short(saga)}, which is not a Saga instance")
        if saga.store is not store:
            # Resumed with it, a saga would be journaled in another store.
            raise UsageError(
                f"{spec}: {saga.name} was built with another store "
                f"({type(saga.store).__name__}); build it with the store given to the factory"
            )
        sagas.append(saga)
    if not sagas:
        raise UsageError(f"{spec}(store) returned no sagas")
    return sagas


def run_recover(args: argparse.Namespace) -> int:
    app = load_app(args.app)  # before opening the store: a bad --app touches nothing
    target = store_target(args)

    # Set once stdout is a closed pipe (``recover ... | head -1``): the pass
    # goes on (a progress that raises is logged per saga, and ignored), and
    # the summary's write ends the command as a closed pipe does (main).
    pipe_closed: list[bool] = []

    def progress(saga_id: str, outcome: str) -> None:
        if pipe_closed:
            return
        text = terminal_text(target.shown_error(outcome))
        try:
            sys.stdout.write(f"  {terminal_text(saga_id, MAX_VALUE)}: {text}\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pipe_closed.append(True)

    async def run() -> RecoveryReport:
        warn_before_interrupting(
            "recover: finishing the sagas being resumed; interrupting them would compensate "
            "them."
        )
        async with open_store(target, connections=_CONNECTIONS) as store:
            sagas = await build_app_sagas(args.app, app, store)
            names = terminal_text(", ".join(saga.name for saga in sagas), MAX_CONTEXT)
            sys.stdout.write(
                f"recovering sagas in {terminal_text(target.shown, MAX_PATH)} not updated for "
                f"{format_duration(args.older_than)} (at most {args.limit}, lease "
                f"{format_duration(args.lease)}) with {names}\n"
            )
            sys.stdout.flush()
            try:
                report = await recover(
                    store,
                    sagas,
                    older_than=args.older_than,
                    limit=args.limit,
                    lease=args.lease,
                    progress=progress,
                    allow_changed_definition=args.allow_changed_definition,
                    resume_timeout=args.resume_timeout,
                )
            except (TypeError, ValueError) as error:  # e.g. two sagas of one name
                raise UsageError(str(error)) from None
            try:
                left.extend(await left_alone(store, report, args.older_than))
            except SagaStoreError as error:  # a courtesy: the report stands without it
                left.append(f"  (could not list the sagas left: {terminal_text(error)})")
            parked.extend(line for line in left if line.startswith(_PARKED))
            return report

    left: list[str] = []
    parked: list[str] = []  # of left: sagas no worker takes until an operator acts

    corrupt = _CorruptRows()
    store_log = logging.getLogger("fallback_saga.store")
    store_log.addHandler(corrupt)
    try:
        report = asyncio.run(run())
    except asyncio.CancelledError:  # the second Ctrl-C
        raise KeyboardInterrupt from None
    finally:
        store_log.removeHandler(corrupt)
    print_lines([target.scrubbed(line) for line in report_lines(report) + left])
    # A saga left interrupted (the journal could not be written) needs another
    # pass; a FAILED or a parked one, an operator (a cron's `|| alert` fires).
    # So does a lease the pass could not give back (the store out as it
    # ended): no worker takes that saga until it runs out, and it counts
    # toward park_after — the store's outage is the operator's to see.
    unfinished = (report.failed or report.skipped or getattr(report, "interrupted", None)
                  or getattr(report, "not_given_back", None) or parked)
    return EXIT_FAILURE if unfinished else EXIT_OK


class _CorruptRows(logging.Handler):
    """Keeps the store's line about a saga it could not even claim (a corrupt
    row: S12) off stderr: ``recover``'s report lists it as skipped already
    (exit status 1), and printed twice it reads as two sagas.

    Every other record goes where it would have gone without this handler:
    to stderr (``logging.lastResort``) unless the program configured logging.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "skipped_saga", None) is not None:
            return
        last_resort = logging.lastResort
        if (
            not logging.getLogger().handlers
            and last_resort is not None
            and record.levelno >= last_resort.level
        ):
            last_resort.handle(record)




def report_lines(report: RecoveryReport) -> list[str]:
    """The lines of ``str(report)`` (the report's own format), with every
    saga id and reason in it made safe to print (``terminal_text``), a
    reason redacted first (``shown_text.redact``: it may quote a store's or
    a participant's error, and a secret in it; before the cut, which could
    leave a start of a secret no longer recognized). A reason is kept longer
    than an id: it ends with what to do (a changed definition's way forward
    comes after what changed)."""
    safe: dict[str, Any] = {}
    for item in dataclasses.fields(report):
        value = getattr(report, item.name)
        if isinstance(value, list):
            safe[item.name] = [
                (terminal_text(entry[0], MAX_VALUE),
                 *(terminal_text(redact(part), MAX_CONTEXT) for part in entry[1:]))
                if isinstance(entry, tuple)
                else terminal_text(entry, MAX_VALUE)
                for entry in value
            ]
    return str(dataclasses.replace(report, **safe)).split("\n")


# How many in-flight sagas ``left_alone`` looks at, per status (the newest),
# and how many leased ones it names.
_LEFT_SCAN = 1000
_LEFT_NAMED = 20
# How left_alone's line of a parked saga begins (one more is counted so too).
_PARKED = "  parked  "


async def left_alone(
    store: RecoverableStore, report: RecoveryReport, older_than: float
) -> list[str]:
    """Lines saying which interrupted sagas the pass did not take, and why:
    another worker's unexpired lease (named, with its owner: that worker is
    resuming it), parked (named: its resumes keep ending the process, see
    ``store._parking``), or a last write within ``older_than`` (counted: in flight,
    or interrupted too recently). Without them, an operator who runs
    ``recover`` beside workers is told "recovered 0" about a saga that
    ``list`` shows RUNNING, and cannot tell a no-op from a wait."""
    handled = {*report.resumed, *report.compensated, *report.failed, *report.deferred}
    handled.update(saga_id for saga_id, _ in report.skipped + report.interrupted)
    now = time.time()
    leased: list[SagaSummary] = []
    parked: list[tuple[SagaSummary, int]] = []
    recent = 0
    more = False
    for status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
        summaries = await store.list_sagas(status=status, limit=_LEFT_SCAN)
        more = more or len(summaries) >= _LEFT_SCAN
        for summary in summaries:
            if summary.saga_id in handled:
                continue
            expires = summary.lease_expires_at
            claims = parked_claims(store, summary.status, summary.unreleased_claims)
            if summary.lease_owner is not None and expires is not None and expires > now:
                leased.append(summary)
            elif claims is not None:
                parked.append((summary, claims))
            elif summary.updated_at > now - older_than:
                recent += 1
    lines = [
        f"  leased  {terminal_text(s.saga_id, MAX_VALUE)} ({s.status.value}) by "
        f"{terminal_text(s.lease_owner or '')} until {when(s.lease_expires_at)} UTC: "
        f"not taken (another worker holds it; claimable once its lease runs out)"
        for s in leased[:_LEFT_NAMED]
    ]
    if len(leased) > _LEFT_NAMED:
        lines.append(f"  ... and {len(leased) - _LEFT_NAMED} more leased (list shows them)")
    lines += [
        f"{_PARKED}{terminal_text(s.saga_id, MAX_VALUE)} ({s.status.value}): not taken; "
        f"{terminal_text(parked_text(claims, s.saga_id), MAX_CONTEXT)}"
        for s, claims in parked[:_LEFT_NAMED]
    ]
    if len(parked) > _LEFT_NAMED:
        lines.append(f"{_PARKED}... and {len(parked) - _LEFT_NAMED} more (list shows them)")
    if recent:
        at_least = "at least " if more else ""
        lines.append(
            f"  not taken: {at_least}{recent} running or compensating saga"
            f"{'' if recent == 1 else 's'} updated within --older-than "
            f"{format_duration(older_than)} (in flight, or interrupted too recently)"
        )
    return lines


def warn_before_interrupting(warning: str) -> None:
    """Make the first Ctrl-C a warning, the second the interrupt.

    A resumed saga that is cancelled unwinds (S8): interrupting ``recover``
    would compensate sagas that were about to complete. Where the loop cannot
    handle signals (Windows, a thread other than the main one), Ctrl-C
    interrupts at once.
    """
    task = asyncio.current_task()
    assert task is not None
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            task.cancel()
            return
        sys.stderr.write(
            f"{warning} Press Ctrl-C again to interrupt anyway.\n"
        )
        sys.stderr.flush()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_interrupt)
