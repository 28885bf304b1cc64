"""``module:attr`` specs (``graph`` and ``recover --app``): import and check.

Importing a module runs its top-level code with the operator's privileges:
the commands that take a spec say so in their help.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, TypeGuard

from ..errors import described, error_text
from ..saga import Saga
from .errors import UsageError

__all__ = ["import_target", "is_saga_class", "load_saga_class"]


def import_target(spec: str, example: str) -> object:
    """Import ``module:attr`` (``attr`` may be dotted) and return the attribute."""
    module_name, colon, attr_path = spec.partition(":")
    if not colon or not module_name or not attr_path:
        raise UsageError(f"expected module:attr (e.g. {example}), got {spec!r}")
    if "/" in module_name or os.sep in module_name:  # a path: never a module's name
        raise _names_a_file(spec)
    # Like ``python -m``: modules in the current directory are importable
    # (the ``fallback-saga`` console script would not see them otherwise).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            if module_name.endswith(".py"):  # a file's name, as `python shop.py` takes it
                raise _names_a_file(spec) from error
            raise UsageError(
                f"no module named {module_name!r} in the current directory, "
                f"{os.getcwd()}, or on the Python path: run the command from the "
                "directory that holds it, or add that directory to PYTHONPATH"
            ) from error
        raise UsageError(f"importing {module_name!r} failed: {error_text(error)}") from error
    except Exception as error:  # the module itself raised, e.g. SagaDefinitionError
        # Its text cut, as the library quotes every error's (errors.cut_text):
        # an app's error may quote megabytes.
        raise UsageError(f"importing {module_name!r} failed: {described(error)}") from error
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    return target


def _names_a_file(spec: str) -> UsageError:
    """``shop.py:sagas`` or ``app/recovery.py:sagas``: what to give instead."""
    module_name, _, attr_path = spec.partition(":")
    path = module_name.removesuffix(".py").replace(os.sep, "/")
    dotted = ".".join(part for part in path.split("/") if part not in ("", "."))
    return UsageError(
        f"{spec!r} names a file; give the module's name, not its file's: "
        f"{dotted}:{attr_path} (as python -m takes it)"
    )


def is_saga_class(target: object) -> TypeGuard[type[Saga[Any]]]:
    return isinstance(target, type) and issubclass(target, Saga)


def load_saga_class(spec: str) -> type[Saga[Any]]:
    """Import ``module:Attr`` (``Attr`` may be dotted) and check it is a Saga subclass."""
    target = import_target(spec, "myapp.sagas:OrderSaga")
    if not (isinstance(target, type) and issubclass(target, Saga)):
        raise UsageError(f"{spec} is {target!r}, not a Saga subclass")
    if getattr(target, "definition", None) is None:
        raise UsageError(f"{spec} declares no steps (an abstract Saga base)")
    return target
