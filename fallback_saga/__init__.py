"""fallback_saga: resilient multi-step business transactions for asyncio.

Sagas of steps with ``act``/``compensate``, ``Fallback`` paths, a
``CircuitBreaker``, compensation with retries, and a journal that makes
crashed sagas resumable. Standard library only.
"""

from .breaker import CircuitBreaker, CircuitBreakerProtocol, CircuitOpenError, CircuitState
from .context import SagaContext
from .errors import (
    ContextDecodeError,
    ContextSerializationError,
    CorruptSagaRecord,
    JournalConflict,
    LeaseLost,
    ParallelWriteConflict,
    RecordedError,
    SagaAlreadyExists,
    SagaBusy,
    SagaDefinitionChanged,
    SagaDefinitionError,
    SagaError,
    SagaFailed,
    SagaInterrupted,
    SagaNotFailed,
    SagaNotFound,
    SagaStoreError,
    StoreClosed,
)
from .events import LoggingListener, SagaListener, StepCall
from .executor import SagaResult
from .fallback import Fallback
from .parallel import Parallel
from .recovery import RecoveryReport, recover
from .reopening import retry_unwinding
from .results import UnjournaledResponse
from .retry import RetryPolicy, set_testing
from .saga import Saga
from .shared_state import CircuitStateStore, SharedCircuit, SQLiteCircuitStateStore
from .status import SagaStatus, StepStatus
from .step import Response, SagaStepHandler, SagaStepResult, Step, StepInfo, current_step
from .store import (
    JournalEntry,
    Lease,
    MemorySagaStore,
    RecoverableStore,
    SagaRecord,
    SagaStore,
    SagaSummary,
    SQLiteSagaStore,
)
from .subsaga import SubSaga
from .transaction import SagaTransaction
from .worker import RecoveryWorker, WorkerStats

__version__ = "0.10.0"

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerProtocol",
    "CircuitOpenError",
    "CircuitState",
    "CircuitStateStore",
    "ContextDecodeError",
    "ContextSerializationError",
    "CorruptSagaRecord",
    "Fallback",
    "JournalConflict",
    "JournalEntry",
    "Lease",
    "LeaseLost",
    "LoggingListener",
    "MemorySagaStore",
    "Parallel",
    "ParallelWriteConflict",
    "RecordedError",
    "RecoverableStore",
    "RecoveryReport",
    "RecoveryWorker",
    "Response",
    "RetryPolicy",
    "SQLiteCircuitStateStore",
    "SQLiteSagaStore",
    "Saga",
    "SagaAlreadyExists",
    "SagaBusy",
    "SagaContext",
    "SagaDefinitionChanged",
    "SagaDefinitionError",
    "SagaError",
    "SagaFailed",
    "SagaInterrupted",
    "SagaListener",
    "SagaNotFailed",
    "SagaNotFound",
    "SagaRecord",
    "SagaResult",
    "SagaStatus",
    "SagaStepHandler",
    "SagaStepResult",
    "SagaStore",
    "SagaStoreError",
    "SagaSummary",
    "SagaTransaction",
    "SharedCircuit",
    "Step",
    "StepCall",
    "StepInfo",
    "StepStatus",
    "StoreClosed",
    "SubSaga",
    "UnjournaledResponse",
    "WorkerStats",
    "__version__",
    "current_step",
    "recover",
    "retry_unwinding",
    "set_testing",
]
