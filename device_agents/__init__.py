"""Device agents by name. Each backend module is imported only when its agent is asked for, so a
missing optional runtime is a one-line error naming the extra to install."""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from typing import Any, Mapping

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


def agent_class(name: str) -> type[Agent]:
    """The agent class registered as `name` (its module imported now)."""
    if name not in _AGENTS:
        raise UsageError(f"unknown device {name!r}; known: {', '.join(list_agents())}")
    module, cls = _AGENTS[name]
    return getattr(importlib.import_module(module), cls)


def get_agent(name: str, **options: Any) -> Agent:
    """An agent instance by name; options (threads, serial, ...) go to its constructor, which
    refuses unknown names and bad values (AgentOptions)."""
    return agent_class(name)(**options)


def agent_from_profile(profile_or_spec: Any, **overrides: Any) -> Agent:
    """The agent a table's DeviceProfile was measured with, or the one a JSON spec
    `{"agent": name, "options": {...}}` describes (Agent.from_profile); `overrides` replace options."""
    return Agent.from_profile(profile_or_spec, **overrides)


def agent_options(name: str, flags: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Constructor options of agent `name` from a command's agent flags (option name -> value,
    None where the flag was not given): a given flag that is none of the agent's options is
    refused by name, so no flag is ignored silently; `defaults` (e.g. the settings a table was
    profiled with) fill in the agent's other options. Shared by profile, calibrate and validate."""
    known = {f.name for f in dataclasses.fields(agent_class(name).Options)}
    given = {k: v for k, v in flags.items() if v is not None}
    foreign = [k for k in given if k not in known]
    if foreign:
        words = ", ".join(_flag(k) for k in foreign)
        own = ", ".join(_flag(k) for k in flags if k in known) or "none"
        raise UsageError(f"{words} {'does' if len(foreign) == 1 else 'do'} not apply to device {name!r} "
                         f"(its flags: {own})")
    return {**{k: v for k, v in (defaults or {}).items() if k in known}, **given}


def _flag(option: str) -> str:
    """The command-line flag of an agent option (threads -> --threads, max_temp -> --max-temp)."""
    return "--" + option.replace("_", "-")


__all__ = ["Agent", "agent_class", "agent_from_profile", "agent_options", "get_agent", "list_agents", "register_agent"]
