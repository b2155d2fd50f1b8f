"""Search-space registry: register, list (fnmatch) and get spaces by name, or load a YAML space."""
from __future__ import annotations

import fnmatch
import os
from typing import Callable

from ..errors import UsageError
from .base import GRANULARITIES, Position, SearchSpace, Slot

_REGISTRY: dict[str, Callable[[], SearchSpace]] = {}
_CACHE: dict[str, SearchSpace] = {}


def register_space(name: str, factory: Callable[[], SearchSpace]) -> None:
    """Register a space factory under `name` (a later registration replaces an earlier one)."""
    _REGISTRY[name] = factory
    _CACHE.pop(name, None)


def list_spaces(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_space(name_or_path: str) -> SearchSpace:
    """A registered space by name, or a user space from a .yaml/.yml file."""
    if name_or_path in _REGISTRY:
        if name_or_path not in _CACHE:
            _CACHE[name_or_path] = _REGISTRY[name_or_path]()
        return _CACHE[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")) or os.path.isfile(name_or_path):
        from .yaml_space import load_yaml_space

        return load_yaml_space(name_or_path)
    raise UsageError(f"unknown space {name_or_path!r}; known: {', '.join(list_spaces())} (or a .yaml file)")


def _register_builtins() -> None:
    """The built-in spaces; a module of them that fails to import fails loudly (no space vanishes)."""
    from .bignas_resnet import bignas_resnet, packaged_space
    from .fbnet import FBNet
    from .lightnas import LightNASSpace
    from .nb201 import NASBench201
    from .ofa_mbv3 import OFAMobileNetV3

    register_space("ofa-mbv3-w10", lambda: OFAMobileNetV3(1.0))
    register_space("ofa-mbv3-w12", lambda: OFAMobileNetV3(1.2))
    register_space("lightnas", LightNASSpace)
    register_space("fbnet", FBNet)
    register_space("nb201", NASBench201)
    register_space("bignas-resnet", bignas_resnet)
    register_space("tiny", lambda: packaged_space("tiny.yaml"))


_register_builtins()

__all__ = ["SearchSpace", "Position", "Slot", "GRANULARITIES", "register_space", "list_spaces", "get_space"]
