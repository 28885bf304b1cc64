"""The run of one saga: a state machine over the steps and a compensation stack.

Per run, one ``Execution`` owns the context, the compensation stack, the
status and the journal. Transitions are appended to ``journal`` as they
happen. How they reach the store depends on the store:

* a write-ahead store (SQLite, PostgreSQL, any ``SagaStore``) gets every
  transition not yet written in one call, right before the next ``act`` or
  ``compensate`` is called — a step's STARTED is durable before it runs, and
  "step N completed" + "step N+1 started" share one write. When a breaker
  rejects a call, the rejected step's rows join the fallback's write. That
  write is ``write_ahead.JournaledRun.flush`` (``Execution``'s base class);
* an in-process store (``LiveJournal``, e.g. ``MemorySagaStore``) watches
  the run instead, so journaling costs no await at all.

A ``Parallel`` group's members run in ``group_run`` (each in a task of its
own), which calls back into the run for each member's branch.

The saga is on the hot path of every order, so the per-step work is kept to
what the contract needs: one snapshot (S2), two journal tuples, a cursor
update for ``current_step()``. Listener hooks are resolved once per saga
instance; with no listener, nothing is called.

A run is one object whose parts live in a chain of base classes, one
concept per module, each the next one's base (the last two side by side):

* ``write_ahead.JournaledRun``: the journal and its writes (S13);
* ``unwinding.UnwindingRun``: how a run that cannot complete unwinds its
  compensation stack, or stops for recovery when its journal fails (the
  unwinding runs shielded from cancellation, S8);
* ``stepping.SteppingRun``: a step's ``act`` the general way (retries,
  breaker, timeout, Fallback, step listeners) and what a failed, cancelled
  or crashed act leaves in the journal;
* ``completion.CompletingRun``: how a completed run is recorded, told and
  returned (``SagaResult``);
* ``general_run.GeneralRun`` and ``lean_run.LeanRun``, side by side (each a
  subclass of ``CompletingRun``, neither needing the other): the run's two
  ways forward, the loops that drive the plan with a plain step's work
  inlined in them — ``run_all``, any plan on any store, and ``run_plain``,
  the lean path of the commonest saga (``Saga._runs_plain``);
* ``Execution`` (here, a subclass of both): the run itself — its state (set
  in ``__init__``, on the hot path of every saga), its start, a crashed
  run's unwinding finished (``resume_unwinding``) and what an in-process
  store reads of it. A run takes one way forward (``Saga.run``). The
  loops were this class's own methods; each is a concept of its own (its
  own journal form, the lean one), so each has its module.

Base classes, not helper objects: on the success path a step costs what it
did when they were all one class (a method of a base is found through the
run's class, cached; no object or call layer more per step). The bases hold
no field: ``Execution`` declares every slot a run adds to ``CompletingRun``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from typing import Any, NoReturn

from .codec import FIELD_NAMES
from .compact_journal import Shape
from .completion import SagaResult
from .context import _JSON_SCALARS, check_serializable, context_to_dict, step_snapshot_to_dict
from .events import emit
from .general_run import GeneralRun
from .group_run import LaneCursor
from .lean_run import LeanRun
from .plan import Branch
from .run_settings import RunSettings
from .shielding import reset_var, running_task
from .status import SagaStatus
from .step import _CURSOR, SagaStepResult
from .store._common import check_saga_id
from .store.base import Lease

__all__ = ["SagaResult"]

# A saga's statuses as the hot path sets them: a module global is read for
# free, an enum's member through its class costs ~45 ns on CPython 3.11.
_RUNNING = SagaStatus.RUNNING
_now = time.time


# --------------------------------------------------------------------------- saga ids


def _new_id_prefix() -> str:
    raw = os.urandom(10).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-"


# The counter starts at 16**12, so that hex() of it is "0x1" and then twelve
# digits: the id's last group is hex(n)[3:], which is cheaper than formatting
# n with a width (an f-string's format spec is a call of its own). It would
# wrap after 16**12 ids (2.8e14: 89 years at 100,000 sagas/s).
_ID_BASE = 16**12
_id_prefix = _new_id_prefix()
_id_counter = itertools.count(_ID_BASE + 1)


def _reseed_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix = _new_id_prefix()
    _id_counter = itertools.count(_ID_BASE + 1)


os.register_at_fork(after_in_child=_reseed_ids_after_fork)


def new_saga_id() -> str:
    """A unique saga id, shaped like a UUID: 80 random bits drawn once per
    process (and again after ``fork``) followed by a counter. ``uuid4()``
    costs a system call per id — more than a whole saga step here."""
    return _id_prefix + hex(next(_id_counter))[3:]


# --------------------------------------------------------------------------- the run


def running_execution() -> Execution | None:
    """The run whose step is executing in this task, if any (for ``SubSaga``)."""
    cursor = _CURSOR.get()
    if isinstance(cursor, Execution):
        return cursor
    if isinstance(cursor, LaneCursor):
        execution = cursor.execution  # a group member's: the run it belongs to
        if isinstance(execution, Execution):
            return execution
    return None


class Execution(GeneralRun, LeanRun):
    """The state of one saga run. Not reusable; not shared between tasks.

    It is also the run's ``StepCursor`` (what ``current_step()`` reads) and,
    for an in-process store, the live record the store watches.

    It drives its plan forward with ``run_all`` (``general_run``) or
    ``run_plain`` (``lean_run``), its bases.

    On an in-process store (``live``) a run is started on the hot path of
    every saga, so only what such a run reads is set; the write-ahead
    bookkeeping (``written``, ``pending_status``, ``fence``, ...) is set for a
    write-ahead store only, and only its code reads it.
    """

    __slots__ = (
        "allow_changed_definition",
        "created_at",
        "driven_in",
        "fingerprint",
        "resumed",
        "scalars",
        "shape",
    )

    # The event loop driving the run while its coroutine runs (None before,
    # and once it has let go: ended, or a crash came out of it; for a
    # coroutine driven by hand too). An in-process store reads it only when
    # a resume of the same saga collides with the run (``MemorySagaStore.
    # track``), to tell a run still going from one a crash left behind (or
    # whose loop was closed under it). A loop, not the task: the task holds
    # the run (a reference cycle once it raised; and a run left pending in
    # a closed loop would be kept from the collector, which closes it).
    driven_in: asyncio.AbstractEventLoop | None

    # Set by a resume only, read only when ``resumed``: the operator's
    # override of a changed definition, which the child sagas this run
    # drives (SubSaga) are resumed or unwound with too.
    allow_changed_definition: bool

    def __init__(
        self,
        settings: RunSettings,
        context: Any,
        saga_id: str | None = None,
        fence: Lease | None = None,
    ) -> None:
        # A given id no store can hold is refused here, before anything runs,
        # rather than by the store's first write (or not at all in memory).
        self.saga_id = saga_id = (
            _id_prefix + hex(next(_id_counter))[3:]  # new_saga_id(), inlined
            if saga_id is None else check_saga_id(saga_id)
        )
        # StepCursor's fields, set here (one call fewer per run)
        self.saga_name = settings.saga_name
        self.step = ""
        self.action = "act"
        self.attempt = 0
        self.active = False
        self.settings = settings
        self.fingerprint = settings.fingerprint  # LiveSaga's (read once, by the store, at the end)
        self.context = context
        self.store = settings.store
        self.hooks = settings.hooks
        self.live = live = settings.live
        self.stack: list[Branch] = []
        self.results: list[SagaStepResult[Any, Any]] = []
        self.journal = []
        # A compact journal's plan shape (run_plain's: see compact_journal), else None.
        self.shape: Shape | None = None
        self.status = _RUNNING
        self.image: Any = None  # a step snapshot; once finished, what freeze_context gave
        self.created_at = _now()
        self.created = False
        self.resumed = False
        self.context_dirty = False
        self.branch_errors: dict[str, BaseException] | None = None  # of a failed group
        # JournaledRun's (see there)
        self.write_lock = None
        self.journaled_status = None
        self.interruption = None
        self.landed_unseen = None
        self.abandoned = None
        # An inlined Fallback's primary error while its fallback runs (see _falls_back).
        self.primary_error: BaseException | None = None
        self.left_undone: dict[str, BaseException] | None = None  # see leave_undone
        # S12: a context the journal cannot hold is refused before any step runs
        # — by every store, so that moving from memory to SQLite holds no surprise.
        if live:
            # check_serializable's fast path inlined: a flat dataclass of JSON scalars.
            state = getattr(context, "__dict__", None)
            # Kept: run_plain's first snapshot needs no scan of its own then.
            # (Only a __dict__ holding its fields by name and nothing else,
            # FIELD_NAMES: an attribute beyond them is refused, S14, even one
            # set for a field deleted; fields in slots the scan would miss.)
            self.scalars = scalars = (
                state is not None
                and state.keys() == FIELD_NAMES.get(context.__class__)
                and _JSON_SCALARS.issuperset(map(type, state.values()))
            )
            if not scalars:
                check_serializable(context)
            return
        self.scalars = False
        # JournaledRun's write-ahead state
        self.initial_context = context_to_dict(context)
        self.written = 0
        self.pending_status = None
        self.note = None
        self.context_refused = False
        self.write_loop = None
        # Every write is conditional on the fencing token: 0 for a first run
        # (so that a recovery worker claiming the saga — token 1 — shuts this
        # runner out if it is merely slow), the lease's token when resumed.
        # (An in-process store is never written to: no lease to make per run.)
        self.fence = Lease(saga_id, "", 0, math.inf) if fence is None else fence

    # ------------------------------------------------------------------ lifecycle

    def begin(self) -> None:
        task = running_task()
        self.driven_in = task._loop  # see driven_in (let go by whoever ends the run)
        self.cancels = task.cancelling()  # see running_task
        if self.live:
            self.store.track(self, replace=self.resumed)  # type: ignore[attr-defined]
            self.created = True
        if self.hooks.saga_started:
            emit(self.hooks.saga_started, self.saga_id, self.saga_name)
        if self.resumed and self.hooks.saga_resumed:
            emit(self.hooks.saga_resumed, self.saga_id, self.saga_name)

    async def resume_unwinding(self, failed_step: str, error: BaseException) -> NoReturn:
        """Finish the unwinding a crashed run had begun; never runs a forward step."""
        self.begin()
        self.step = failed_step
        token = _CURSOR.set(self)
        try:
            await self.fail(error)
        except (Exception, asyncio.CancelledError):
            raise  # announced where it was handled
        except BaseException as crash:
            self.crashed(crash)
            raise
        finally:
            reset_var(_CURSOR, token)
            self.driven_in = None  # let go: see driven_in

    # ------------------------------------------------------------------ what a live store reads

    def context_image(self) -> dict[str, Any]:
        """``LiveSaga``: the context as of the last transition, in journal form."""
        if self.image is None:
            return context_to_dict(self.context)
        return step_snapshot_to_dict(self.context, self.image)

    def frozen_context(self) -> Any:
        """``LiveSaga`` (optional): the final context, for a store that keeps
        the finished saga as plain values (``context.frozen_to_dict`` reads
        it); None when it should keep the saga itself: a resumed run, whose
        journal holds entries in journal form, not raw ones."""
        if self.resumed:
            return None
        if self.image is None:
            return context_to_dict(self.context)
        return self.image
