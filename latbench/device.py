"""DeviceProfile: what a latency number is valid for (machine, runtime, threads, delegate...).

Its stable id is a hash of those facts; a table holds one profile only, so numbers taken under
different settings are never mixed (pyperf refuses to compare such runs, for the same reason).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class DeviceProfile:
    """The identity of a measuring setup. Every field but `info` goes into `id`."""

    agent: str  # agent name (cpu, ort, tflite, android...)
    runtime: str  # torch, onnxruntime, litert, benchmark_model...
    runtime_version: str
    threads: int
    delegate: str = "cpu"  # execution provider / delegate (cpu, xnnpack, CUDAExecutionProvider...)
    device: str = ""  # CPU model or phone manufacturer+model
    soc: str = ""  # board / SoC
    abi: str = ""  # machine architecture or Android ABI
    cores: int = 0
    os: str = ""  # kernel/OS or Android build fingerprint
    python: str = ""
    governor: str = ""  # cpufreq governors, e.g. "performance" or "schedutil x8"
    affinity: str = ""  # CPU set the runtime runs on
    options: tuple[tuple[str, str], ...] = ()  # runtime options that change timings (opt level...)
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # not hashed

    @cached_property
    def id(self) -> str:
        """Stable 16-hex id of everything but `info` (computed once: the fields are frozen)."""
        d = self.identity()
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("info")
        d["options"] = [list(kv) for kv in self.options]
        return d

    def to_dict(self) -> dict[str, Any]:
        d = self.identity()
        d["info"] = self.info
        d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeviceProfile":
        d = dict(d)
        d.pop("id", None)
        d["options"] = tuple(tuple(kv) for kv in d.get("options", ()))
        return cls(**d)

    def describe(self) -> str:
        """One line for messages: 'ort onnxruntime 1.32.0 1 thread(s) on Intel Xeon (id abc...)'."""
        return (f"{self.agent} {self.runtime} {self.runtime_version} {self.threads} thread(s)"
                f" {self.delegate} on {self.device or '?'} (id {self.id})")

    def differences(self, other: "DeviceProfile") -> list[str]:
        """Fields that differ, as 'field: a != b'."""
        a, b = self.identity(), other.identity()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


# ---------------------------------------------------------------------- host facts
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def governors() -> str:
    """Distinct cpufreq governors with their core counts, '' where unreadable (containers, VMs)."""
    seen: dict[str, int] = {}
    base = "/sys/devices/system/cpu"
    try:
        cpus = sorted(d for d in os.listdir(base) if d.startswith("cpu") and d[3:].isdigit())
    except OSError:
        return ""
    for d in cpus:
        try:
            with open(f"{base}/{d}/cpufreq/scaling_governor") as f:
                g = f.read().strip()
        except OSError:
            continue
        seen[g] = seen.get(g, 0) + 1
    return ",".join(f"{g} x{n}" for g, n in sorted(seen.items()))


def affinity() -> str:
    """The CPUs this process may run on, as a compact list ('0-1')."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return ""
    return _ranges(cpus)


def _ranges(cpus: list[int]) -> str:
    out, start, prev = [], None, None
    for c in cpus:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = c
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)


def host_profile(agent: str, runtime: str, runtime_version: str, threads: int, delegate: str = "cpu",
                 options: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> DeviceProfile:
    """The profile of this machine for a local agent."""
    return DeviceProfile(
        agent=agent, runtime=runtime, runtime_version=runtime_version, threads=int(threads),
        delegate=delegate, device=cpu_model(), soc="", abi=platform.machine(),
        cores=os.cpu_count() or 0, os=f"{platform.system()} {platform.release()}",
        python=f"{sys.version_info.major}.{sys.version_info.minor}", governor=governors(),
        affinity=affinity(), options=tuple(sorted((k, str(v)) for k, v in (options or {}).items())),
        info=dict(info or {}),
    )
