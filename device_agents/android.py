"""Android agent: ops as single-op models, timed on a phone over adb by TFLite's benchmark_model
(or ONNX Runtime's onnxruntime_perf_test), in batches.

Per batch: one adb sync session pushes the models, one adb shell runs an on-device POSIX-sh loop
(android_scripts/run_batch.sh) that runs each model pinned with taskset, captures its output
`2>&1` between delimiters with its exit code, reads the thermal zones before and after, writes one
result file and prints it back: two adb round trips per batch, not per op. A thermal gate waits
between batches while the phone is hot. Setup (push runner and scripts, probe device facts, fixed
performance mode) is two more round trips, cleanup one.

Statistics: benchmark_model prints count, min, max, avg and std of its runs and no per-run times,
so a Measurement holds mean/std/min/max/n as given and median/IQR as NaN, with
settings["estimator"] = "mean" (the table stores and predicts with the mean). onnxruntime_perf_test
with -s prints P50: there the estimator is the median.

adb: the adb server protocol is spoken by adbutils, through a client that never starts a server
itself (adbutils would run `adb start-server` when a connect fails): no server means
DeviceUnavailableError (exit 4) with a hint, fast.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import secrets
import shlex
import signal
import socket
import stat as stat_mod
import struct
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from latbench.device import DeviceProfile, _ranges
from latbench.errors import DeviceUnavailableError, LatbenchError, UsageError, require
from latbench.measure import Measurement, Stats, TimingSettings
from latbench.ops import OpSpec

from .base import Agent, _one_line

log = logging.getLogger("latbench.android")

DEVICE_ROOT = "/data/local/tmp/latbench"  # every file latbench puts on a phone lives below this
SCRIPTS = ("probe.sh", "run_batch.sh")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
CONNECT_HINT = ("start one with `adb start-server` (platform-tools), or point latbench at a running "
                "server with ANDROID_ADB_SERVER_HOST / ANDROID_ADB_SERVER_PORT")
PLAUSIBLE_C = (-30.0, 125.0)  # thermal readings outside this are broken sensors, not heat
SYNC_CHUNK = 64 * 1024
# session directories are named s<host>-<pid>-<random>: a later run on this host removes those
# whose process is gone (a run cut by a disconnect cannot clean up after itself)
SESSION_PREFIX = "s" + hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8] + "-"

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


# ====================================================================== adb without spawning
def server_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """The adb server to talk to: arguments, else ANDROID_ADB_SERVER_HOST/PORT, else 127.0.0.1:5037."""
    host = host or os.environ.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
    raw = port if port is not None else os.environ.get("ANDROID_ADB_SERVER_PORT") or 5037
    try:
        return host, int(raw)
    except ValueError:
        raise UsageError(f"ANDROID_ADB_SERVER_PORT must be a port number, got {raw!r}") from None


def adb_client(host: str | None = None, port: int | None = None, timeout: float = 30.0):
    """An adbutils client that never spawns `adb start-server`: DeviceUnavailableError when no
    server answers (checked at once, within a 2 s connect timeout)."""
    adbutils = require("adbutils", "android")
    host, port = server_address(host, port)

    class NoSpawnConnection(adbutils.AdbConnection):
        """adbutils' connection minus its fallback of running `adb start-server` (which reads
        ADBUTILS_ADB_PATH and may start, or hang on, a server of another adb version)."""

        def _safe_connect(self):
            return self._create_socket()

    class Client(adbutils.AdbClient):
        """AdbClient whose every connection is a NoSpawnConnection with a bounded timeout."""

        def make_connection(self, timeout: float | None = None):
            try:
                c = NoSpawnConnection(self.host, self.port)
            except (adbutils.AdbError, OSError) as e:
                raise DeviceUnavailableError(
                    f"no adb server reachable at {self.host}:{self.port} ({e}): {CONNECT_HINT}") from None
            c.conn.settimeout(timeout or self._latbench_timeout)
            return c

    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as e:
        raise DeviceUnavailableError(
            f"no adb server reachable at {host}:{port} ({e.strerror or e}): {CONNECT_HINT}") from None
    client = Client(host=host, port=port, socket_timeout=timeout)
    client._latbench_timeout = timeout
    return client


def _host_query(client, request: str) -> str:
    """One host service answered by a length-prefixed block (host:devices...)."""
    with client.make_connection() as c:
        c.send_command(request)
        c.check_okay()
        return c.read_string_block()


def list_devices(client) -> list[dict[str, Any]]:
    """Attached devices as {serial, state, model, product, device, transport_id} (any state).

    Serials come from `host:devices` (tab-separated, exact even with spaces); `host:devices-l`
    adds the tags."""
    rows: list[dict[str, Any]] = []
    for line in _host_query(client, "host:devices").splitlines():
        serial, sep, state = line.rpartition("\t")
        if sep:
            rows.append({"serial": serial, "state": state.strip()})
    long_lines = _host_query(client, "host:devices-l").splitlines()
    for row in rows:
        for line in long_lines:
            rest = line[len(row["serial"]):] if line.startswith(row["serial"]) else None
            if rest is None or not rest[:1].isspace():
                continue
            for part in rest.split():
                k, sep, v = part.partition(":")
                if sep and k in ("model", "product", "device", "transport_id"):
                    row[k] = v
            break
    return rows


def _adb_errors() -> tuple[type[BaseException], ...]:
    adbutils = require("adbutils", "android")
    return (adbutils.AdbError, OSError, EOFError, socket.timeout)


# ====================================================================== runner output parsers
@dataclass(frozen=True)
class RunResult:
    """What one runner invocation reported: statistics in ms, which estimate to use, details."""

    stats: Stats
    estimator: str  # 'mean' (benchmark_model) or 'median' (onnxruntime_perf_test -s)
    details: dict[str, Any] = field(default_factory=dict)


def _stat_tokens(line: str) -> dict[str, float] | None:
    """The fields of a tensorflow::Stat line ('count=50 first=.. curr=.. min=.. max=.. avg=.. std=..',
    'count=3 curr=7(all same)', 'count=0'), or None when the line is not one."""
    i = line.find("count=")
    if i < 0:
        return None
    head = line[:i].strip()
    if head not in ("", "INFO:", "I", "INFO"):  # 'Timings (microseconds): count=...' of op profiling
        return None
    out = {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUM})", line[i:])}
    return out if "count" in out else None


_CURRENT = re.compile(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                      rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})")
_PRE2020 = re.compile(rf"Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}), "
                      rf"(?:Inference|no stats): ({_NUM})")


def parse_benchmark_model(text: str) -> RunResult | None:
    """benchmark_model's output (current, pre-2020 or scientific notation; stdout and stderr
    merged) as statistics of its timed runs in ms; None when it holds no timings."""
    lines = text.splitlines()
    summary_at, summary_avg, details = len(lines), math.nan, {}
    for idx, line in enumerate(lines):
        m = _CURRENT.search(line)
        if m:
            init, first, warm, avg = (float(x) for x in m.groups())
            details = {"init_ms": init / 1e3, "first_ms": first / 1e3, "warmup_avg_ms": warm / 1e3}
            summary_at, summary_avg = idx, avg
            break
        m = _PRE2020.search(line)
        if m:
            warm, init, avg = (float(x) for x in m.groups())
            details = {"init_ms": init / 1e3, "warmup_avg_ms": warm / 1e3, "format": "pre2020"}
            summary_at, summary_avg = idx, avg
            break
    stat_lines = [t for t in (_stat_tokens(x) for x in lines[:summary_at]) if t is not None]
    runs = stat_lines[-1] if stat_lines else None  # warm-up first, then the timed runs
    if runs is not None and len(stat_lines) >= 2:
        details["warmup_count"] = int(stat_lines[-2]["count"])
    if runs is not None and runs["count"] > 0:
        n = int(runs["count"])
        if "avg" in runs:
            mean, std = runs["avg"], runs.get("std", math.nan)
            lo, hi = runs.get("min", math.nan), runs.get("max", math.nan)
        else:  # 'count=N curr=X(all same)' or a single run
            mean = lo = hi = runs.get("curr", math.nan)
            std = 0.0
        if math.isfinite(summary_avg) and summary_avg > 0 and abs(summary_avg - mean) > 0.01 * summary_avg:
            details["summary_avg_ms"] = summary_avg / 1e3
    elif math.isfinite(summary_avg) and summary_avg > 0:
        n, mean, std, lo, hi = 0, summary_avg, math.nan, math.nan, math.nan  # builds without a stat line
    else:
        return None
    if not (math.isfinite(mean) and mean >= 0) or (mean == 0 and n == 0):
        return None
    if mean == 0:  # every run under benchmark_model's 1 us clock: a real reading, flagged as such
        details["below_resolution_us"] = 1.0
    stats = Stats(median=math.nan, p25=math.nan, p75=math.nan, min=lo / 1e3, max=hi / 1e3, mean=mean / 1e3,
                  std=std / 1e3, n=n, block=1, samples=())
    return RunResult(stats, "mean", details)


def _field(text: str, label: str, unit: str) -> float:
    m = re.search(rf"{label}:\s*({_NUM})\s*{unit}", text)
    return float(m.group(1)) if m else math.nan


def parse_perf_test(text: str) -> RunResult | None:
    """onnxruntime_perf_test's output ('Average inference time cost: X ms', with -s 'P50 Latency:
    X s', 'Min/Max Latency') as statistics in ms; None when it holds no timings."""
    avg = _field(text, "Average inference time cost", "ms")
    if not (math.isfinite(avg) and avg > 0):
        return None
    p50 = _field(text, "P50 Latency", "s") * 1e3
    lo, hi = _field(text, "Min Latency", "s") * 1e3, _field(text, "Max Latency", "s") * 1e3
    m = re.search(r"Total inference requests:\s*(\d+)", text)
    n = int(m.group(1)) if m else 0
    details = {k: v for k, v in (("first_ms", _field(text, "First inference time cost", "ms")),
                                 ("session_create_ms", _field(text, "Session creation time cost", "s") * 1e3),
                                 *((f"p{q}_ms", _field(text, f"P{q} Latency", "s") * 1e3) for q in (90, 95, 99)))
               if math.isfinite(v)}
    stats = Stats(median=p50, p25=math.nan, p75=math.nan, min=lo, max=hi, mean=avg, std=math.nan, n=n, block=1)
    return RunResult(stats, "median" if math.isfinite(p50) else "mean", details)


def failure_message(runner: str, rc: int, output: str, limit: float = 0) -> str:
    """One line for a failed run: exit code (and signal), then the last lines of its output."""
    how = f"exited with {rc}"
    if 128 < rc < 160:
        try:
            how += f" ({signal.Signals(rc - 128).name})"
        except ValueError:
            pass
        if rc == 137 and limit:
            how += f", killed after the {limit:g} s limit or by the system"
    tail = [x.strip() for x in output.splitlines() if x.strip()][-3:]
    text = " | ".join(x[:200] for x in tail) or "no output"
    return f"{runner} {how}: {text[:600]}"


# ====================================================================== device facts
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


def _int_or_none(text: str) -> int | None:
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
                f.cpus[int(parts[0])] = {"online": parts[1] != "0", "max_khz": _int_or_none(parts[2]),
                                         "cur_khz": _int_or_none(parts[3]),
                                         "governor": "" if parts[4] == "-" else parts[4]}
        elif kind == "zone":
            parts = rest.split(maxsplit=2)
            if len(parts) >= 2 and parts[0].isdigit():
                f.zones[int(parts[0])] = (parts[2] if len(parts) > 2 else "", _celsius(parts[1]))
        elif kind == "battery":
            f.battery_c = _battery_celsius(rest)
        elif kind == "fixedperf":
            rc, _, msg = rest.partition(" ")
            code = _int_or_none(rc)
            f.fixed_perf = (-1 if code is None else code, msg.strip())
        elif kind == "session":
            f.sessions.append(rest.strip())
        elif kind == "runner_rc":
            f.runner_rc = _int_or_none(rest.strip())
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
            raise UsageError(f"--cpus {s}: the device hides cpuinfo_max_freq, so its big and little "
                             f"cores are unknown; pass a hex mask (cores {_ranges(present)}) or all")
        cores = tiers[-1] if s == "big" else tiers[0]
    else:
        try:
            bits = int(s[2:] if s.startswith("0x") else s, 16)
        except ValueError:
            raise UsageError(f"--cpus must be big, little, all or a hex mask, got {spec!r}") from None
        cores = [c for c in range(bits.bit_length()) if bits >> c & 1]
        extra = [c for c in cores if c not in cpus]
        if not cores or extra:
            raise UsageError(f"--cpus {spec}: mask names cores {_ranges(cores) or 'none'}, the device has "
                             f"cores {_ranges(present)}")
    return format(sum(1 << c for c in cores), "x"), cores


def _governors(cpus: dict[int, dict[str, Any]]) -> str:
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

    def hottest(self, names: dict[int, str]) -> str:
        """The sensor that reads max_c (zone type or 'battery'), for messages."""
        zone = max(self.zones, key=self.zones.get, default=None)
        if zone is None or (self.battery_c is not None and self.battery_c >= self.zones[zone]):
            return "battery"
        return names.get(zone, f"zone{zone}")

    def to_dict(self, names: dict[int, str]) -> dict[str, Any]:
        return {"max_c": self.max_c, "battery_c": self.battery_c,
                "zones": {names.get(i, f"zone{i}"): v for i, v in sorted(self.zones.items())}}


def parse_temps(line: str) -> Temps:
    """'... up=U zones=0:36500,1:35200 battery=310' (run_batch.sh and THERMAL_READ) -> Temps."""
    kv = dict(re.findall(r"(\w+)=(\S*)", line))
    zones: dict[int, float] = {}
    for part in kv.get("zones", "").split(","):
        i, sep, v = part.partition(":")
        c = _celsius(v) if sep and i.isdigit() else None
        if c is not None:
            zones[int(i)] = c
    up = kv.get("up")
    return Temps(zones, _battery_celsius(kv.get("battery", "")), float(up) if up and re.fullmatch(_NUM, up) else None)


# The host-side temperature read of the thermal gate: one adb shell, same line format as run_batch.sh.
THERMAL_READ = ("z=; for f in /sys/class/thermal/thermal_zone*/temp; do t=$(cat \"$f\" 2>/dev/null) && "
                "[ -n \"$t\" ] && n=${f%/temp} && z=\"$z${n##*thermal_zone}:$t,\"; done; "
                "b=$(dumpsys battery 2>/dev/null | grep -m 1 'temperature:'); read -r u _ < /proc/uptime; "
                "echo \"@@gate temps gate up=$u zones=${z%,} battery=$(echo ${b##*:})\"")


# ====================================================================== runtimes
@dataclass(frozen=True)
class _Runtime:
    """What differs between benchmark_model and onnxruntime_perf_test."""

    name: str  # runtime field of the profile
    runner: str  # the usual binary name
    ext: str
    check_arg: str  # argument that makes the runner print its banner/usage and exit
    graph_prefix: str  # glued before each model path
    fusion: str
    parse: Callable[[str], RunResult | None]
    banner: tuple[str, ...]  # one of these (lower case) in the check output = it runs


RUNTIMES = {
    "tflite": _Runtime("benchmark_model", "benchmark_model", ".tflite", "--help", "--graph=", "tflite",
                       parse_benchmark_model, ("starting!", "benchmark_model")),
    "ort": _Runtime("onnxruntime_perf_test", "onnxruntime_perf_test", ".onnx", "-h", "", "ort",
                    parse_perf_test, ("perf_test", "onnxruntime")),
}


def _runtime_for(runtime: str | None, runner: str) -> str:
    """'tflite' or 'ort': as given, else from the runner's file name (benchmark_model by default)."""
    if runtime:
        r = runtime.strip().lower()
        r = {"benchmark_model": "tflite", "litert": "tflite", "onnxruntime_perf_test": "ort",
             "onnxruntime": "ort"}.get(r, r)
        if r not in RUNTIMES:
            raise UsageError(f"android runtime must be tflite (benchmark_model) or ort "
                             f"(onnxruntime_perf_test), got {runtime!r}")
        return r
    name = os.path.basename(runner).lower()
    return "ort" if "onnxruntime" in name or "perf_test" in name else "tflite"


def _flag_value(x: float) -> str:
    return f"{x:g}"


# ====================================================================== the agent
@dataclass
class _Pending:
    """One op of a batch on its way to the device."""

    op: OpSpec
    file: str = ""  # model file name on the device
    model: bytes = b""
    error: str = ""  # set when the model could not even be built


class AndroidAgent(Agent):
    """Times ops on an Android phone over adb with benchmark_model (or onnxruntime_perf_test),
    `batch_size` models per two adb round trips; see the module docstring.

    Options: serial (None: the only ready device), runner (path of the binary to push), runtime
    (tflite | ort; default from the runner's name), cpus (big | little | all | hex mask), delegate
    (cpu = builtin kernels | xnnpack | gpu | nnapi), max_temp (C) / cooldown (s) / max_waits of the
    thermal gate, batch_size, fixed_performance, adb_host / adb_port / adb_timeout."""

    name = "android"
    contexts = ("warm",)  # benchmark_model runs each model back to back on the phone
    interleaves = False  # ... and all of its runs in one go (batches are the adb unit, not rounds)

    def __init__(self, threads: int = 1, seed: int = 0, serial: str | None = None, runner: str | None = None,
                 runtime: str | None = None, cpus: str = "big", delegate: str = "cpu", max_temp: float = 45.0,
                 cooldown: float = 30.0, max_waits: int = 10, batch_size: int = 20,
                 fixed_performance: bool = True, adb_host: str | None = None, adb_port: int | None = None,
                 adb_timeout: float = 30.0, **options: Any):
        super().__init__(threads=threads, seed=seed, **options)
        if not runner:
            raise UsageError("android needs the benchmark runner to push: --runner PATH to TFLite's "
                             "benchmark_model for the phone's ABI (or onnxruntime_perf_test with --runtime ort)")
        self.runner = os.fspath(runner)
        if not os.path.isfile(self.runner):
            raise UsageError(f"--runner {self.runner}: no such file")
        self.runtime_key = _runtime_for(runtime, self.runner)
        self.rt = RUNTIMES[self.runtime_key]
        self.fusion = self.rt.fusion
        self.delegate = (delegate or "cpu").strip().lower()
        if self.delegate not in DELEGATES:
            raise UsageError(f"--delegate must be one of {', '.join(DELEGATES)}, got {delegate!r}")
        if self.runtime_key == "ort" and self.delegate == "gpu":
            raise UsageError("onnxruntime_perf_test has no GPU execution provider on Android: "
                             "use cpu, xnnpack or nnapi")
        if self.threads < 1:
            raise UsageError(f"--threads must be >= 1 on android, got {self.threads}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
        self.cpus, self.max_temp, self.cooldown = cpus, float(max_temp), max(0.0, float(cooldown))
        self.max_waits, self.batch_size = max(0, int(max_waits)), int(batch_size)
        self.fixed_performance = bool(fixed_performance)
        self.adb_timeout = float(adb_timeout)
        self.client = adb_client(adb_host, adb_port, timeout=self.adb_timeout)
        self.serial = self._pick_serial(serial)
        self.device = self.client.device(serial=self.serial)
        with open(self.runner, "rb") as f:
            self._runner_bytes = f.read()
        self._runner_sha = hashlib.sha256(self._runner_bytes).hexdigest()
        self.session = f"{DEVICE_ROOT}/{SESSION_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.runner_path = f"{self.session}/{os.path.basename(self.runner) or 'runner'}"
        self.facts: DeviceFacts | None = None  # set once setup succeeded
        self._probed: DeviceFacts | None = None  # what the probe said, even if setup then failed
        self._pushed = False  # the session directory may exist on the device
        self.mask, self.cores = "", []
        self._temps: Temps | None = None
        self._batches = 0
        self._local: Any = None
        self._closed = False

    # ------------------------------------------------------------------ device choice
    def _pick_serial(self, serial: str | None) -> str:
        """The serial to use: the given one (checked) or the only ready device."""
        devices = list_devices(self.client)
        listing = ", ".join(f"{d['serial']} ({d['state']})" for d in devices) or "none"
        if serial:
            found = [d for d in devices if d["serial"] == serial]
            if not found:
                raise DeviceUnavailableError(f"no device {serial!r} attached to the adb server; attached: {listing}")
            state = found[0]["state"]
            if state != "device":
                why = " (accept the USB debugging prompt on the phone)" if state == "unauthorized" else ""
                raise DeviceUnavailableError(f"device {serial!r} is {state}{why}")
            return serial
        ready = [d["serial"] for d in devices if d["state"] == "device"]
        if not ready:
            raise DeviceUnavailableError(f"no Android device ready (attached: {listing}); plug one in with "
                                         f"USB debugging on, check `latbench devices`")
        if len(ready) > 1:
            raise UsageError(f"{len(ready)} devices attached ({', '.join(ready)}): pick one with --serial")
        return ready[0]

    # ------------------------------------------------------------------ adb primitives
    def _unavailable(self, what: str, e: BaseException) -> DeviceUnavailableError:
        """The error for a failed adb exchange: says whether the device left or the link broke."""
        try:
            state = next((d["state"] for d in list_devices(self.client) if d["serial"] == self.serial), None)
        except (LatbenchError, *_adb_errors()):
            state = "unknown (adb server gone)"
        where = "disconnected" if state is None else f"{state}, adb link broken"
        detail = str(e).strip().replace("\n", " ")[:200] or type(e).__name__
        return DeviceUnavailableError(f"device {self.serial} {where} during {what} ({type(e).__name__}: {detail}); "
                                      f"results of earlier batches were handed over: rerun to resume")

    def _shell(self, cmd: str, what: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Run one device shell command (shell v2 where offered): (exit code, stdout, stderr)."""
        try:
            r = self.device.shell2(cmd, timeout=timeout or self.adb_timeout, v2=True)
        except _adb_errors() as e:
            raise self._unavailable(what, e) from None
        out = r.stdout if r.stdout or r.stderr else r.output  # shell v1 (pre-Android 7): merged output only
        return r.returncode, out, r.stderr

    def _push(self, files: Sequence[tuple[str, bytes, int]], what: str) -> None:
        """Push (device path, bytes, mode) files in ONE sync session (adbutils opens one per file,
        plus a STAT each)."""
        try:
            c = self.device.open_transport(timeout=self.adb_timeout)
            try:
                c.send_command("sync:")
                c.check_okay()
                for path, data, mode in files:
                    spec = f"{path},{stat_mod.S_IFREG | mode}".encode()
                    c.conn.sendall(b"SEND" + struct.pack("<I", len(spec)) + spec)
                    view = memoryview(data)
                    for off in range(0, len(data), SYNC_CHUNK):
                        chunk = view[off:off + SYNC_CHUNK]
                        c.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                    c.conn.sendall(b"DONE" + struct.pack("<I", int(time.time())))
                    reply = c.read_exact(8)
                    if reply[:4] != b"OKAY":
                        size = struct.unpack("<I", reply[4:])[0]
                        msg = c.read_exact(min(size, 4096)).decode("utf-8", "replace") if size else ""
                        raise LatbenchError(f"device {self.serial}: cannot write {path}: {msg or reply!r}")
                c.conn.sendall(b"QUIT" + bytes(4))
            finally:
                c.close()
        except _adb_errors() as e:
            raise self._unavailable(what, e) from None

    # ------------------------------------------------------------------ setup and facts
    def _setup(self) -> DeviceFacts:
        """Push runner and scripts, probe the device (one sync session + one shell), derive the mask."""
        if self.facts is not None:
            return self.facts
        if self._closed:
            raise UsageError("the android agent is closed")
        scripts = [(f"{self.session}/{name}", _script(name), 0o644) for name in SCRIPTS]
        self._pushed = True
        self._push([(self.runner_path, self._runner_bytes, 0o755), *scripts], "setup (push runner)")
        q = shlex.quote
        cmd = (f"sh {q(self.session + '/probe.sh')} {q(self.session)} {q(self.runner_path)} "
               f"{q(self.rt.check_arg)} {1 if self.fixed_performance else 0}")
        rc, out, err = self._shell(cmd, "setup (probe)", timeout=max(self.adb_timeout, 60.0))
        facts = self._probed = parse_probe(out)
        if not facts.complete:
            raise LatbenchError(f"device {self.serial}: the probe script did not finish (exit {rc}): "
                                f"{(err or out).strip()[-300:]}")
        banner = " ".join(facts.runner_out).lower()
        if facts.runner_rc in (126, 127) or not any(b in banner for b in self.rt.banner):
            abi = facts.props.get("ro.product.cpu.abi", "?")
            raise UsageError(f"runner {self.runner} does not run on {self.serial} ({abi}): exit "
                             f"{facts.runner_rc}, output {' | '.join(facts.runner_out[:3]) or 'none'}; "
                             f"is it built for {abi}?")
        self.mask, self.cores = cpu_mask(self.cpus, facts.cpus)
        if self.threads > len(self.cores):
            log.warning("%d threads on %d pinned core(s) (%s): threads will share cores", self.threads,
                        len(self.cores), _ranges(self.cores))
        self._temps = Temps({i: c for i, (_, c) in facts.zones.items() if c is not None}, facts.battery_c, None)
        self.facts = facts
        return facts

    def _zone_names(self) -> dict[int, str]:
        """Zone index -> its type (index-suffixed when a type repeats)."""
        zones = self.facts.zones if self.facts else {}
        types = [t for t, _ in zones.values()]
        return {i: (t if t and types.count(t) == 1 else f"{t or 'zone'}#{i}") for i, (t, _) in zones.items()}

    def _fixed_perf_state(self) -> str:
        fp = self._probed.fixed_perf if self._probed else None
        if not self.fixed_performance or fp is None:
            return "off"
        return "on" if fp[0] == 0 else "unsupported"

    def fingerprint(self) -> DeviceProfile:
        """The phone, runner and settings a number is valid for (the first call sets the device up)."""
        f = self._setup()
        p = f.props
        manufacturer, model = p.get("ro.product.manufacturer", ""), p.get("ro.product.model", "")
        platform, soc_model = p.get("ro.board.platform", ""), p.get("ro.soc.model", "")
        soc = f"{soc_model} ({platform})" if soc_model and platform else (soc_model or platform)
        options = {"fixed_performance_mode": self._fixed_perf_state(),
                   "delegate_flags": " ".join(self._delegate_flags())}
        if self.runtime_key == "ort":
            options["graph_optimization_level"] = "99"
        info = {
            "serial": self.serial, "android": p.get("ro.build.version.release", ""),
            "sdk": p.get("ro.build.version.sdk", ""), "manufacturer": manufacturer, "model": model,
            "board_platform": platform, "soc_model": soc_model, "soc_manufacturer": p.get("ro.soc.manufacturer", ""),
            "hardware": p.get("ro.hardware", ""), "abilist": p.get("ro.product.cpu.abilist", ""),
            "cpus": {str(c): v for c, v in sorted(f.cpus.items())}, "core_tiers": core_tiers(f.cpus),
            "cpus_option": self.cpus, "cpu_mask": self.mask, "thermal_zones": self._zone_names(),
            "temps_at_setup": self._temps.to_dict(self._zone_names()) if self._temps else None,
            "fixed_performance_detail": list(f.fixed_perf) if f.fixed_perf else None,
            "runner": {"path": self.runner, "device_path": self.runner_path, "sha256": self._runner_sha,
                       "size": len(self._runner_bytes), "first_line": (f.runner_out or [""])[0],
                       "check_exit_code": f.runner_rc},
            "max_temp": self.max_temp, "cooldown_s": self.cooldown, "batch_size": self.batch_size,
        }
        return DeviceProfile(
            agent=self.name, runtime=self.rt.name, runtime_version=f"sha256:{self._runner_sha[:12]}",
            threads=self.threads, delegate=self.delegate, device=f"{manufacturer} {model}".strip(), soc=soc,
            abi=p.get("ro.product.cpu.abi", ""), cores=len(f.cpus), os=p.get("ro.build.fingerprint", ""),
            governor=_governors(f.cpus), affinity=_ranges(self.cores),
            options=tuple(sorted(options.items())), info=info)

    # ------------------------------------------------------------------ runner command line
    def _delegate_flags(self) -> list[str]:
        if self.runtime_key == "ort":
            return ["-e", {"cpu": "cpu", "xnnpack": "xnnpack", "nnapi": "nnapi"}[self.delegate]]
        return {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"],
                "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}[self.delegate]

    def runner_args(self, timing: TimingSettings) -> list[str]:
        """The runner's arguments for `timing`: warm-up runs and seconds, then max_samples runs cut
        at max_time_s (benchmark_model has no IQR stop, and max_secs wins over min_samples);
        onnxruntime_perf_test: max_samples runs, no time cap."""
        if self.runtime_key == "ort":
            return ["-I", "-s", "-m", "times", "-r", str(timing.max_samples), "-x", str(self.threads),
                    "-o", "99", *self._delegate_flags()]
        return [f"--num_threads={self.threads}", f"--warmup_runs={timing.warmup}",
                f"--warmup_min_secs={_flag_value(timing.warmup_s)}", f"--num_runs={timing.max_samples}",
                "--min_secs=0", f"--max_secs={_flag_value(timing.max_time_s)}", *self._delegate_flags()]

    def _run_limit(self, timing: TimingSettings) -> int:
        """Seconds after which the batch script kills one hung run (perf_test has no time cap)."""
        base = 300 if self.runtime_key == "ort" else 60
        return int(math.ceil(base + 3 * (timing.warmup_s + timing.max_time_s)))

    # ------------------------------------------------------------------ models
    def model_file(self, op: OpSpec) -> str:
        """The file name `op`'s model gets on the device (stable: a hash of its key)."""
        return hashlib.sha1(op.key.encode()).hexdigest()[:16] + self.rt.ext

    def model(self, op: OpSpec) -> bytes:
        """The model bytes pushed for `op` (canonical weights of this agent's seed)."""
        if self.runtime_key == "ort":
            from .onnx_build import build_onnx

            return build_onnx(op, self.weights(op)).SerializeToString()
        from .tflite_build import build_tflite

        return build_tflite(op, self.weights(op))

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:
        """One inference of the exact model bytes that would be pushed, in this host's LiteRT (or
        onnxruntime): benchmark_model feeds random inputs and returns no outputs, so correctness
        is checked on the model, not on the phone's kernels."""
        model = self.model(op)
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if self.runtime_key == "ort":
            ort = require("onnxruntime", "ort")
            from .onnx_build import graph_in_shape

            sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            y = sess.run(None, {sess.get_inputs()[0].name: x.reshape(graph_in_shape(op))})[0]
            return np.asarray(y, dtype=np.float32).reshape(op.out_shape).copy()
        if self._local is None:
            from .litert import LiteRTAgent

            self._local = LiteRTAgent(threads=1, xnnpack=True, seed=self.seed)
        it = self._local.interpreter(model)
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y.copy()

    # ------------------------------------------------------------------ thermal gate
    def _read_temps(self) -> Temps:
        """One host-side temperature read (one adb shell)."""
        _, out, _ = self._shell(THERMAL_READ, "a temperature read")
        line = next((x for x in out.splitlines() if x.startswith("@@gate temps")), "")
        return parse_temps(line)

    def _thermal_gate(self) -> dict[str, Any]:
        """Wait (cooldown s, at most max_waits times) while the last reading is above max_temp."""
        t = self._temps
        waits, t0 = 0, time.monotonic()
        first = t.max_c if t else None
        while t is not None and t.max_c is not None and t.max_c > self.max_temp and waits < self.max_waits:
            log.warning("device %s at %.1f C (%s) > %.1f C: cooling down %g s (%d/%d)", self.serial, t.max_c,
                        t.hottest(self._zone_names()), self.max_temp, self.cooldown, waits + 1, self.max_waits)
            time.sleep(self.cooldown)
            waits += 1
            t = self._temps = self._read_temps()
        hot = t is not None and t.max_c is not None and t.max_c > self.max_temp
        if hot:
            log.warning("device %s still at %.1f C (%s) after %d wait(s): measuring anyway (flagged)",
                        self.serial, t.max_c, t.hottest(self._zone_names()), waits)
        return {"max_temp": self.max_temp, "gate_c": first, "waits": waits,
                "waited_s": round(time.monotonic() - t0, 3) if waits else 0.0, "gave_up": hot}

    # ------------------------------------------------------------------ measuring
    def batch_len(self, timing: TimingSettings) -> int:
        """A batch is one push and one run of benchmark_model over `batch_size` models."""
        return self.batch_size

    def measure(self, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings()) -> Iterator[Measurement]:
        """Measure `ops` in batches of batch_size; each batch's results are yielded, in op order,
        as soon as the batch is back from the phone. A device lost mid-batch raises
        DeviceUnavailableError after every earlier batch was yielded."""
        self.check_timing(timing)
        profile = self.profile
        args = self.runner_args(timing)
        settings = {**self.settings(), "timing": timing.to_dict(), "runner_args": args,
                    "cpu_mask": self.mask, "batch_size": self.batch_size, "serial": self.serial}
        it = iter(ops)
        while True:
            batch = [_Pending(op) for op in itertools.islice(it, self.batch_size)]
            if not batch:
                return
            yield from self._run_batch(batch, timing, args, settings, profile.id)

    def _run_batch(self, batch: list[_Pending], timing: TimingSettings, args: list[str],
                   settings: dict[str, Any], profile_id: str) -> Iterator[Measurement]:
        t_start = time.perf_counter()
        for p in batch:
            try:
                p.model, p.file = self.model(p.op), self.model_file(p.op)
            except Exception as e:  # the op is reported, the batch goes on
                p.error = _one_line(e)
        runnable = [p for p in batch if not p.error]
        results: dict[int, Measurement] = {}
        if runnable:
            results = self._run_on_device(runnable, timing, args, settings, profile_id, t_start)
        built_s = time.perf_counter() - t_start
        for p in batch:
            if p.error:
                yield Measurement(key=p.op.key, profile_id=profile_id, op=p.op.to_dict(), stats=None,
                                  settings={**settings, "estimator": "mean"}, status="failed", error=p.error,
                                  wall_s=built_s / len(batch))
            else:
                yield results[id(p)]

    def _run_on_device(self, runnable: list[_Pending], timing: TimingSettings, args: list[str],
                       settings: dict[str, Any], profile_id: str, t_start: float) -> dict[int, Measurement]:
        """Gate, push, run, parse one batch: id(pending) -> Measurement."""
        q = shlex.quote
        k = self._batches
        self._batches += 1
        gate = self._thermal_gate()
        bdir = f"{self.session}/b{k}"
        listing = "".join(f"{bdir}/{p.file}\n" for p in runnable).encode()
        self._push([*((f"{bdir}/{p.file}", p.model, 0o644) for p in runnable), (f"{bdir}/list.txt", listing, 0o644)],
                   f"batch {k} (push)")
        token = secrets.token_hex(8)
        limit = self._run_limit(timing)
        cmd = " ".join(q(a) for a in ["sh", f"{self.session}/run_batch.sh", bdir, token, self.mask, str(limit),
                                      self.rt.graph_prefix, self.runner_path, *args])
        t_run = time.perf_counter()
        _, out, err = self._shell(cmd, f"batch {k} ({len(runnable)} models)",
                                  timeout=len(runnable) * limit + 60 + self.adb_timeout)
        t_back, now = time.perf_counter(), time.time()
        sections, before, after, done = _split_result(out, token)
        if before is None:
            raise LatbenchError(f"device {self.serial}: batch script gave no result: {(err or out).strip()[-300:]}")
        if after is not None:
            self._temps = after
        names = self._zone_names()
        extra_base = {"batch": k, "thermal": gate, "temps_before": before.to_dict(names),
                      "temps_after": after.to_dict(names) if after else None}
        overhead = max(0.0, (t_back - t_start) - sum(s.get("wall", 0.0) for s in sections.values()))
        end_up = after.uptime if after and after.uptime is not None else None
        out_map: dict[int, Measurement] = {}
        for i, p in enumerate(runnable):
            s = sections.get(i)
            base = dict(key=p.op.key, profile_id=profile_id, op=p.op.to_dict())
            if s is None:
                why = "batch output ended early" if done is None else "no result"
                out_map[id(p)] = Measurement(**base, stats=None, settings={**settings, "estimator": "mean"},
                                             status="failed", error=f"{self.rt.runner}: {why} ({p.file})",
                                             wall_s=(t_back - t_run) / len(runnable), extra=extra_base)
                continue
            res = self.rt.parse(s["text"]) if s["rc"] == 0 else None
            taken = now - (end_up - s["t1"]) if end_up is not None and s["t1"] is not None else now
            extra = {**extra_base, "exit_code": s["rc"], "model_file": p.file}
            if res is None:
                err_line = (failure_message(self.rt.runner, s["rc"], s["text"], limit) if s["rc"] != 0 else
                            f"{self.rt.runner} printed no timings: "
                            f"{' | '.join(x.strip() for x in s['text'].splitlines() if x.strip())[-400:]}")
                out_map[id(p)] = Measurement(**base, stats=None, settings={**settings, "estimator": "mean"},
                                             status="failed", error=err_line,
                                             wall_s=s["wall"] + overhead / len(runnable), taken_at=min(taken, now),
                                             extra=extra)
                continue
            timed = res.stats.n * res.stats.mean / 1e3 if res.stats.n else res.stats.mean / 1e3
            out_map[id(p)] = Measurement(**base, stats=res.stats, settings={**settings, "estimator": res.estimator},
                                         wall_s=max(s["wall"], timed) + overhead / len(runnable),
                                         timed_s=timed, taken_at=min(taken, now),
                                         extra={**extra, "runner": res.details})
        return out_map

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Remove this session's files from the phone (and turn fixed performance mode back off);
        quietly skipped when the device is gone. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._pushed:
            return
        q = shlex.quote
        found = self._probed.sessions if self._probed else []
        dead = [f"{DEVICE_ROOT}/{name}" for name in found if _dead_session(name)]
        cmd = f"rm -rf {' '.join(q(d) for d in [self.session, *dead])}; rmdir {q(DEVICE_ROOT)} 2>/dev/null"
        if self._fixed_perf_state() == "on":
            cmd += "; cmd power set-fixed-performance-mode-enabled false >/dev/null 2>&1"
        try:
            self.device.shell2(cmd + "; true", timeout=15, v2=True)
        except (LatbenchError, *_adb_errors()) as e:
            log.info("device %s: cleanup skipped (%s)", self.serial, e)


def _split_result(out: str, token: str) -> tuple[dict[int, dict[str, Any]], Temps | None, Temps | None, int | None]:
    """run_batch.sh output -> ({index: {text, rc, t0, t1, wall}}, temps before, after, done count)."""
    mark = f"@@{token} "
    sections: dict[int, dict[str, Any]] = {}
    before = after = None
    done = None
    cur: int | None = None
    buf: list[str] = []
    for line in out.splitlines():
        if not line.startswith(mark):
            if cur is not None:
                buf.append(line)
            continue
        words = line[len(mark):].split()
        kind = words[0] if words else ""
        if kind == "temps" and len(words) > 1:
            if words[1] == "before":
                before = parse_temps(line)
            elif words[1] == "after":
                after = parse_temps(line)
        elif kind == "begin" and len(words) > 1 and words[1].isdigit():
            cur, buf = int(words[1]), []
        elif kind == "end" and len(words) > 1 and words[1].isdigit():
            kv = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            t0, t1 = _float(kv.get("t0")), _float(kv.get("t1"))
            rc = _int_or_none(kv.get("rc", ""))
            sections[int(words[1])] = {"text": "\n".join(buf), "rc": 255 if rc is None else rc, "t0": t0, "t1": t1,
                                       "wall": max(0.0, t1 - t0) if t0 is not None and t1 is not None else 0.0}
            cur, buf = None, []
        elif kind == "done":
            done = _int_or_none(words[1]) if len(words) > 1 else 0
    return sections, before, after, done


def _dead_session(name: str) -> bool:
    """Whether a session directory was made by a process of this host that no longer runs."""
    if not name.startswith(SESSION_PREFIX):
        return False
    pid = _int_or_none(name[len(SESSION_PREFIX):].split("-", 1)[0])
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _script(name: str) -> bytes:
    """An on-device script shipped in device_agents/android_scripts/."""
    return (resources.files("device_agents") / "android_scripts" / name).read_bytes()


__all__ = ["AndroidAgent", "DeviceFacts", "RunResult", "Temps", "adb_client", "core_tiers", "cpu_mask",
           "failure_message", "list_devices", "parse_benchmark_model", "parse_perf_test", "parse_probe",
           "parse_temps", "server_address"]
