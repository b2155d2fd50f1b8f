"""Device agents by name. Each backend module is imported only when its agent is asked for, so a
missing optional runtime is a one-line error naming the extra to install."""
from __future__ import annotations

import fnmatch
import importlib
from typing import Any

from latbench.errors import UsageError

from .base import Agent

# name -> (module, class)
_AGENTS: dict[str, tuple[str, str]] = {
    "cpu": ("device_agents.torch_local", "TorchCPUAgent"),
    "cuda": ("device_agents.torch_local", "TorchCUDAAgent"),
    "ort": ("device_agents.ort", "OrtAgent"),
    "tflite": ("device_agents.litert", "LiteRTAgent"),
    "android": ("device_agents.android", "AndroidAgent"),
}


def register_agent(name: str, module: str, cls: str) -> None:
    _AGENTS[name] = (module, cls)


def list_agents(pattern: str = "*") -> list[str]:
    return sorted(n for n in _AGENTS if fnmatch.fnmatch(n, pattern))


def get_agent(name: str, **options: Any) -> Agent:
    """An agent instance by name; options (threads, serial, ...) go to its constructor."""
    if name not in _AGENTS:
        raise UsageError(f"unknown device {name!r}; known: {', '.join(list_agents())}")
    module, cls = _AGENTS[name]
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["Agent", "get_agent", "list_agents", "register_agent"]
