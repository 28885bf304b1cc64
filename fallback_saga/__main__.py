"""``python -m fallback_saga``: see ``fallback_saga.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
