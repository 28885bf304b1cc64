"""How an operator types this package's commands, in the texts that name one.

``python -m`` and the package as it is imported: ``fallback_saga``, or a
vendored copy's dotted path (``someapp._vendor.fallback_saga``) — a hint
naming ``python -m fallback_saga`` sends the user of a vendored copy to a
module they do not have. Derived from this module's own package, so that
the copy names itself wherever it was put.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PACKAGE", "PYTHON_M"]

PACKAGE: Final = __package__ or __name__.rpartition(".")[0]

# What a hint puts before a command's name: ``python -m fallback_saga``.
PYTHON_M: Final = f"python -m {PACKAGE}"
