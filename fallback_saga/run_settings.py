"""What every run of one saga instance shares, decided once per ``Saga``.

A run reads these on its hot path; building them once per saga instance
means starting a run copies one reference instead of a dozen values, and
the questions "which way does this store want its writes?" and "is anyone
listening to steps?" are answered once, not per step.
"""

from __future__ import annotations

from .events import Hooks
from .journal import (
    DEFAULT_JOURNAL_RETRY,
    DEFAULT_JOURNAL_TIMEOUT,
    submits_writes,
    writes_outlive_cancellation,
)
from .retry import RetryPolicy
from .store.base import SagaStore, is_conditional

__all__ = ["RunSettings"]


class RunSettings:
    """What every run of one saga instance shares: built once per ``Saga``,
    so that starting a run copies three references instead of ten values."""

    __slots__ = (
        "compensation_retry",
        "conditional",
        "fingerprint",
        "hooks",
        "inline",
        "inline_steps",
        "inline_writes",
        "journal_retry",
        "journal_timeout",
        "live",
        "saga_name",
        "store",
        "submitted_writes",
    )

    def __init__(
        self,
        *,
        saga_name: str,
        fingerprint: str,
        store: SagaStore,
        hooks: Hooks,
        compensation_retry: RetryPolicy,
        live: bool,
        journal_retry: RetryPolicy | None = None,
        journal_timeout: float | None = DEFAULT_JOURNAL_TIMEOUT,
    ) -> None:
        self.saga_name = saga_name
        self.fingerprint = fingerprint
        self.store = store
        self.hooks = hooks
        self.compensation_retry = compensation_retry
        self.live = live  # the store is a LiveJournal
        self.journal_retry = journal_retry or DEFAULT_JOURNAL_RETRY
        self.journal_timeout = journal_timeout
        self.inline_writes = not live and writes_outlive_cancellation(store)
        # ... and queued by a plain call that returns the write's future.
        self.submitted_writes = self.inline_writes and submits_writes(store)
        # Appends made on the condition of the journal's length: a retried
        # in-doubt write can never be journaled twice.
        self.conditional = not live and is_conditional(store)
        # Plain steps run inlined in Execution.run_all when no listener is to
        # be told of each step, on any store; a group's plain members
        # (group_run.GroupRun.run_member) on an in-process store only.
        self.inline_steps = not (
            hooks.step_started or hooks.step_completed
            or hooks.step_call_started or hooks.step_call_finished
        )
        self.inline = live and self.inline_steps
