"""Saga stores: the contract, and the implementations that need only the standard library."""

from .base import (
    PURGED_BY_DEFAULT,
    JournalEntry,
    Lease,
    LeaseState,
    LiveJournal,
    RecoverableStore,
    SagaCounts,
    SagaRecord,
    SagaStore,
    SagaSummary,
    WorkNotifier,
)
from .memory import MemorySagaStore
from .sqlite import SQLiteSagaStore

__all__ = [
    "PURGED_BY_DEFAULT",
    "JournalEntry",
    "Lease",
    "LeaseState",
    "LiveJournal",
    "MemorySagaStore",
    "RecoverableStore",
    "SQLiteSagaStore",
    "SagaCounts",
    "SagaRecord",
    "SagaStore",
    "SagaSummary",
    "WorkNotifier",
]
