"""A ``RecoveryWorker``'s ear on its store: the work a ``WorkNotifier``
announces (a saga another worker handed off) wakes its claim loop. The
announcements are hints: polling goes on either way (see worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .log_lines import library_logger
from .shielding import cancellation_pending
from .store.base import WorkNotifier

__all__ = ["listen_for_work"]

_log = library_logger("fallback_saga")


async def listen_for_work(
    notifier: WorkNotifier,
    *,
    owner: str,
    poll: float,
    listening: asyncio.Event,
    wake: Callable[[], None],
    stopping: Callable[[], bool],
) -> None:
    """Call ``wake`` on each announcement, ``listening`` set while they
    reach us; on a lost connection, warn (once per outage; ``owner`` names
    the worker) and listen again after ``poll`` seconds, while polling goes
    on — until ``stopping()``."""
    warned = False
    while not stopping():
        try:
            async for saga_id in notifier.work_notifications():
                if not saga_id:  # listening now: what came before was missed
                    listening.set()
                    warned = False
                wake()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if cancellation_pending():
                raise asyncio.CancelledError from error  # see cancellation_pending
            if not warned:
                _log.warning(
                    "recovery worker %s: not listening for work (%s: %s); "
                    "polling every %g s", owner, type(error).__name__, error,
                    poll,
                )
                warned = True
        finally:
            listening.clear()
        if cancellation_pending():  # a driver swallowed it
            raise asyncio.CancelledError
        await asyncio.sleep(poll)
