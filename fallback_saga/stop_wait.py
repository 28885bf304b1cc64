"""How long whatever is asked to stop gets before it is let go (recovery)."""

from __future__ import annotations

from typing import Final

__all__ = ["STOP_WAIT"]

# Seconds a run asked to stop (a resume_timeout, a worker's hand-off) has to
# end before it is let go: a run stops at its next suspension, in well under
# a second, unless a step swallows the cancellation.
STOP_WAIT: Final = 10.0
