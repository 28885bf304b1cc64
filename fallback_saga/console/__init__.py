"""A read-only web console over a saga store (standard library only).

``python -m fallback_saga serve`` runs it; from code, with this package's
``ConsoleServer``, ``serve`` and ``run_console``::

    run_console(SQLiteSagaStore("sagas.db"), port=8080)      # blocks until Ctrl-C

    async with ConsoleServer(store, port=0) as console:     # tests: any free port
        print(console.url)

Pages: ``/`` lists the sagas newest first (filters ``status``, ``name``,
``since``/``until`` on the creation time, pages by ``before``), with counts
by status; ``/sagas/<id>`` shows one saga (an SVG timeline of its steps, its
history with errors, its context, its lease and fencing token).
``/api/sagas`` and ``/api/sagas/<id>`` give the same data as JSON;
``/metrics`` gives the sagas by name and status in the Prometheus text
format. No script runs in the pages, nothing is loaded from elsewhere, and
nothing is ever written to the store.
"""

from .server import DEFAULT_HOST, DEFAULT_PORT, ConsoleServer, run_console, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ConsoleServer", "run_console", "serve"]
