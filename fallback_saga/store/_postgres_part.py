"""A part of a PostgreSQL saga store, holding its store weakly.

``PostgresSagaStore`` hands its work to parts of its own (``Writes``,
``Reads``, ``Counts``, ``Purging``, ``Claims``, ``Leases``). Each runs its
statements through the store's connection layer — the store itself, its
base classes ``_postgres_fetch.FetchingStore`` and ``_postgres_pool.PooledStore``:
its pool (made again for a new event loop), whether it is open, whether
statements are prepared yet, ``_fetch`` (looked up at each call: a
subclass's, or one a test puts on the instance, sees every statement). So
a part needs the store, not a copy of what it held when the part was made.

Held strongly, the store and its parts would be a reference cycle: a store
dropped without ``close()`` would stay, with its own pool and that pool's
server connections, until the garbage collector happened to run. Held
weakly, it goes at once, as the SQLite store does, and its pool is closed
(``_postgres_pool_closing.close_dropped_pool``). A part's method takes the
store into a local at its start: while a statement runs, the store lives.
"""

from __future__ import annotations

import weakref

from ..errors import StoreClosed
from ._postgres_fetch import FetchingStore


class StorePart:
    """The base class of a ``PostgresSagaStore``'s parts (see the module
    docstring): ``_store`` is the store that holds the part."""

    __slots__ = ("_held",)

    def __init__(self, store: FetchingStore) -> None:
        self._held = weakref.ref(store)

    @property
    def _store(self) -> FetchingStore:
        store = self._held()
        if store is None:
            # Not reached through the store's methods (their caller holds
            # it); a task of a part's that outlived its store stops here.
            raise StoreClosed("the PostgreSQL saga store is gone (dropped without close())")
        return store
