"""One gate for optional dependencies: a missing extra names the exact install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from sqlvision.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the ``pip install`` line for the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc})",
            f'install it with: pip install "sqlvision[{extra}]"',
        ) from exc
