"""A package's exports imported when first used (PEP 562's module `__getattr__`), so that a
command checks its arguments before its package imports torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """The `__getattr__` of `package`: `name` → `name` of the module `homes[name]` (relative to
    `package` where it starts with "."), imported on first use; any other name AttributeError."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name], package), name)

    return __getattr__
