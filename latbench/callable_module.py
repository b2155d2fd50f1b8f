"""Packages that are also the function they are named for: `latbench.search(...)` runs a search
while `latbench.search.Study` stays importable, and likewise `latbench.validate(...)`. A plain
function exported under the package's name would be replaced by the package the moment one of its
modules is imported, so the package's module object itself is made callable instead."""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


class CallableModule(types.ModuleType):
    """A module whose call is its `__call_target__` (set by `make_callable`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_target__(*args, **kwargs)


def make_callable(module_name: str, target: Callable[..., Any]) -> None:
    """Make the already-imported module `module_name` callable as `target`."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__call_target__ = target
