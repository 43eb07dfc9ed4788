"""Public names loaded on first use (PEP 562), so that light commands skip heavy imports.

`deepzip info` reads a file's header with struct alone; importing `deepzip` (for its
errors, say) must not import torch, numba and matplotlib for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def loader(package: str, namespace: dict, names: Mapping[str, str], modules: Mapping[str, str] = {}) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `names` {name: module defining it}, `modules` {name: module}.

    The first access imports the module and caches the value in `namespace` (the
    package's globals), so later accesses are plain lookups.
    """

    def __getattr__(name: str) -> object:
        if name in modules:
            value = importlib.import_module(modules[name])
        elif name in names:
            value = getattr(importlib.import_module(names[name]), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    return __getattr__
