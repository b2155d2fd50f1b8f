"""Device facts: probe.sh's report (properties, cores and their frequencies and governors,
thermal zones, battery), temperatures as run_batch.sh reads them, core tiers and taskset masks."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from latbench.device import _ranges
from latbench.errors import UsageError

PLAUSIBLE_C = (-30.0, 125.0)  # thermal readings outside this are broken sensors, not heat
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


@dataclass
class DeviceFacts:
    """What the probe script reports about a phone."""

    props: dict[str, str] = field(default_factory=dict)
    cpus: dict[int, dict[str, Any]] = field(default_factory=dict)  # core -> online, max_khz, cur_khz, governor
    zones: dict[int, tuple[str, float | None]] = field(default_factory=dict)  # index -> (type, C)
    battery_c: float | None = None
    fixed_perf: tuple[int, str] | None = None  # (exit code, message) when tried
    runner_rc: int | None = None
    runner_out: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # session directories under DEVICE_ROOT
    complete: bool = False


def int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_probe(text: str) -> DeviceFacts:
    """probe.sh output -> DeviceFacts (unknown lines are ignored)."""
    f = DeviceFacts()
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "prop":
            k, _, v = rest.partition("=")
            f.props[k] = v.strip()
        elif kind == "cpu":
            parts = rest.split()
            if len(parts) >= 5 and parts[0].isdigit():
                f.cpus[int(parts[0])] = {"online": parts[1] != "0", "max_khz": int_or_none(parts[2]),
                                         "cur_khz": int_or_none(parts[3]),
                                         "governor": "" if parts[4] == "-" else parts[4]}
        elif kind == "zone":
            parts = rest.split(maxsplit=2)
            if len(parts) >= 2 and parts[0].isdigit():
                f.zones[int(parts[0])] = (parts[2] if len(parts) > 2 else "", _celsius(parts[1]))
        elif kind == "battery":
            f.battery_c = _battery_celsius(rest)
        elif kind == "fixedperf":
            rc, _, msg = rest.partition(" ")
            code = int_or_none(rc)
            f.fixed_perf = (-1 if code is None else code, msg.strip())
        elif kind == "session":
            f.sessions.append(rest.strip())
        elif kind == "runner_rc":
            f.runner_rc = int_or_none(rest.strip())
        elif kind == "runner_out":
            f.runner_out.append(rest)
        elif line.strip() == "probe_done":
            f.complete = True
    return f


def _celsius(raw: str | float) -> float | None:
    """A thermal_zone reading in C: millidegrees (most kernels), decidegrees or degrees; None if
    unreadable or implausible."""
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return None
    c = v / 1000.0 if abs(v) >= 1000 else (v / 10.0 if abs(v) >= 200 else v)
    return round(c, 3) if PLAUSIBLE_C[0] < c < PLAUSIBLE_C[1] else None


def _battery_celsius(raw: str) -> float | None:
    """`dumpsys battery` temperature (tenths of C) in C."""
    m = re.search(r"-?\d+", raw or "")
    if not m:
        return None
    c = int(m.group()) / 10.0
    return c if PLAUSIBLE_C[0] < c < PLAUSIBLE_C[1] else None


def core_tiers(cpus: dict[int, dict[str, Any]]) -> list[list[int]]:
    """Online cores grouped by cpuinfo_max_freq, slowest tier first (e.g. [[0-3], [4,5], [6,7]])."""
    by_freq: dict[int, list[int]] = {}
    for core, c in sorted(cpus.items()):
        if c["online"] and c["max_khz"]:
            by_freq.setdefault(c["max_khz"], []).append(core)
    return [by_freq[f] for f in sorted(by_freq)]


def cpu_mask(spec: str, cpus: dict[int, dict[str, Any]]) -> tuple[str, list[int]]:
    """taskset mask (hex, no 0x) and cores for `spec`: big (the top max-frequency tier), little
    (the lowest tier), all (every online core) or a hex mask of present cores."""
    s = (spec or "big").strip().lower()
    present = sorted(cpus)
    if not present:
        raise UsageError("the device reports no CPUs under /sys/devices/system/cpu: cannot pin cores")
    if s == "all":
        cores = [c for c in present if cpus[c]["online"]] or present
    elif s in ("big", "little"):
        tiers = core_tiers(cpus)
        if not tiers:
            raise UsageError(f"`cpus` {s}: the device hides cpuinfo_max_freq, so its big and little "
                             f"cores are unknown; pass a hex mask (cores {_ranges(present)}) or all")
        cores = tiers[-1] if s == "big" else tiers[0]
    else:
        try:
            bits = int(s[2:] if s.startswith("0x") else s, 16)
        except ValueError:
            raise UsageError(f"`cpus` must be big, little, all or a hex mask, got {spec!r}") from None
        cores = [c for c in range(bits.bit_length()) if bits >> c & 1]
        extra = [c for c in cores if c not in cpus]
        if not cores or extra:
            raise UsageError(f"`cpus` {spec}: mask names cores {_ranges(cores) or 'none'}, the device has "
                             f"cores {_ranges(present)}")
    return format(sum(1 << c for c in cores), "x"), cores


def governors(cpus: dict[int, dict[str, Any]]) -> str:
    """Distinct governors with core counts, as latbench.device.governors() prints them."""
    seen: dict[str, int] = {}
    for c in cpus.values():
        if c["governor"]:
            seen[c["governor"]] = seen.get(c["governor"], 0) + 1
    return ",".join(f"{g} x{n}" for g, n in sorted(seen.items()))


@dataclass(frozen=True)
class Temps:
    """One reading of the thermal zones and the battery, in C."""

    zones: dict[int, float]
    battery_c: float | None
    uptime: float | None

    @property
    def max_c(self) -> float | None:
        vals = list(self.zones.values()) + ([self.battery_c] if self.battery_c is not None else [])
        return max(vals) if vals else None

    def to_dict(self, names: dict[int, str]) -> dict[str, Any]:
        return {"max_c": self.max_c, "battery_c": self.battery_c,
                "zones": {names.get(i, f"zone{i}"): v for i, v in sorted(self.zones.items())}}


def parse_temps(line: str) -> Temps:
    """'... up=U zones=0:36500,1:35200 battery=310' (run_batch.sh's temps lines) -> Temps."""
    kv = dict(re.findall(r"(\w+)=(\S*)", line))
    zones: dict[int, float] = {}
    for part in kv.get("zones", "").split(","):
        i, sep, v = part.partition(":")
        c = _celsius(v) if sep and i.isdigit() else None
        if c is not None:
            zones[int(i)] = c
    up = kv.get("up")
    return Temps(zones, _battery_celsius(kv.get("battery", "")), float(up) if up and re.fullmatch(NUMBER, up) else None)


def celsius_of(milli: int | None) -> float | None:
    return milli / 1000.0 if milli is not None else None


def float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None

