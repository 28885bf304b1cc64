"""Saga stores: the contract, and the implementations that need only the standard library."""

from .base import JournalEntry, SagaRecord, SagaStore
from .memory import MemorySagaStore

__all__ = ["JournalEntry", "MemorySagaStore", "SagaRecord", "SagaStore"]
