"""Exit statuses, and the error a command raises for a command-line mistake."""

from __future__ import annotations

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandFailed", "UsageError"]

EXIT_OK = 0
EXIT_FAILURE = 1  # also what Python itself returns when stdout's reader goes away
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line mistake: printed as ``fallback-saga: error: ...``, exit status 2."""


class CommandFailed(Exception):
    """A command could not do its work for a reason outside the command line
    (``serve``: the port is in use): printed as ``fallback-saga: error: ...``,
    exit status 1."""
