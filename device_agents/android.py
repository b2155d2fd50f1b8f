"""Android agent: ops as single-op models, timed on a phone over adb by TFLite's benchmark_model
(or ONNX Runtime's onnxruntime_perf_test), in batches.

Per batch: one adb sync session pushes the models, one adb shell runs an on-device POSIX-sh loop
(android_scripts/run_batch.sh) that runs each model pinned with taskset, captures its output
`2>&1` between delimiters with its exit code, writes one result file and prints it back: two adb
round trips per batch, not per op. Setup (push runner and scripts, probe device facts, fixed
performance mode) is two more round trips, cleanup one: a 200-op profile at the default batch
size takes 19 (0.095 per op; tests/test_android_agent.py counts them on the stand-in server).

Thermal gate, on the phone: the loop reads the thermal zones and the battery before each model
and stops the batch while the hottest reading is above max_temp; the agent waits `cooldown` and
resumes with the rest (one more shell). After max_waits waits in a row with no model run, the
rest runs ungated and rows that started above max_temp are flagged `extra["hot"]`.

Statistics: benchmark_model prints count, min, max, avg and std of its runs and no per-run times,
so a Measurement holds mean/std/min/max/n as given and median/IQR as NaN, with
settings["estimator"] = "mean" (the table stores and predicts with the mean). onnxruntime_perf_test
with -s prints P50: there the estimator is the median.

adb: the adb server protocol is spoken by adbutils, through a client that never starts a server
itself (adbutils would run `adb start-server` when a connect fails): no server means
DeviceUnavailableError (exit 4) with a hint, fast. The server and the phone are chosen as adb's
own client chooses them (ADB_SERVER_SOCKET, ANDROID_ADB_SERVER_ADDRESS/PORT, ANDROID_SERIAL).
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
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from latbench.device import DeviceProfile, _ranges
from latbench.errors import DeviceUnavailableError, LatbenchError, UsageError, require
from latbench.measure import Measurement, Stats, TimingSettings
from latbench.ops import OpSpec
from latbench.yardstick import PassStats, YardstickSettings

from .base import Agent, AgentOptions, _one_line

log = logging.getLogger("latbench.android")

DEVICE_ROOT = "/data/local/tmp/latbench"  # every file latbench puts on a phone lives below this
SCRIPTS = ("probe.sh", "run_batch.sh")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
BATCH_SIZE = 32  # models per push-and-run: a 200-op profile in 0.095 adb round trips per op
WHOLE_BATCH_BYTES = 256 << 20  # whole models per push at most (a phone's /data/local/tmp, a USB 2 link)
WHOLE_MAX_S = 150.0  # benchmark_model's default --max_secs: one yardstick pass of a whole model
MAX_PHONE_THREADS = 64  # threads bound before a phone is probed (then: its core count)
# the variables adb's own client reads (and adbutils' ANDROID_ADB_SERVER_HOST)
ENV_SOCKET, ENV_ADDRESS, ENV_HOST, ENV_PORT = ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS",
                                               "ANDROID_ADB_SERVER_HOST", "ANDROID_ADB_SERVER_PORT")
ENV_SERIAL = "ANDROID_SERIAL"  # the device adb picks when no serial is given
CONNECT_HINT = ("start one with `adb start-server` (platform-tools), or point latbench at a running "
                "server with ADB_SERVER_SOCKET=tcp:HOST:PORT or ANDROID_ADB_SERVER_ADDRESS / ANDROID_ADB_SERVER_PORT")
PLAUSIBLE_C = (-30.0, 125.0)  # thermal readings outside this are broken sensors, not heat
SYNC_CHUNK = 64 * 1024
# session directories are named s<host>-<pid>-<random>: a later run on this host removes those
# whose process is gone (a run cut by a disconnect cannot clean up after itself)
SESSION_PREFIX = "s" + hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8] + "-"

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"


# ====================================================================== adb without spawning
def _port(text: str, what: str) -> int:
    """A port number (1-65535) from `text`, else a UsageError naming where it came from."""
    t = text.strip()
    if not re.fullmatch(r"[0-9]{1,5}", t) or not 1 <= int(t) <= 65535:
        raise UsageError(f"{what} must be a port number (1-65535), got {text!r}")
    return int(t)


def _socket_spec(spec: str) -> tuple[str, int]:
    """ADB_SERVER_SOCKET as adb reads it (socket_spec.cpp): tcp:PORT (this host) or tcp:HOST:PORT,
    an IPv6 host in brackets; adb's local: forms are unix sockets, which latbench does not speak."""
    rest = spec[4:] if spec.startswith("tcp:") else None
    if rest is not None and re.fullmatch(r"[0-9]+", rest):
        return "127.0.0.1", _port(rest, f"the port of {ENV_SOCKET}")
    m = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)|([^:\[\]]+):([0-9]+)", rest or "")
    if m is None:
        raise UsageError(f"{ENV_SOCKET} must be tcp:PORT or tcp:HOST:PORT (latbench talks TCP to the adb "
                         f"server), got {spec!r}")
    return m.group(1) or m.group(3), _port(m.group(2) or m.group(4), f"the port of {ENV_SOCKET}")


def _env_set(name: str) -> bool:
    """Whether an environment variable holds more than blanks (adb ignores an empty one)."""
    return bool(os.environ.get(name, "").strip())


def server_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """The adb server to talk to, chosen as adb's client chooses (commandline.cpp): an explicit
    host or port (adb -H/-P) rules its own part and turns ADB_SERVER_SOCKET off; else
    ADB_SERVER_SOCKET (tcp:[HOST:]PORT); else ANDROID_ADB_SERVER_ADDRESS (adbutils reads
    ANDROID_ADB_SERVER_HOST: honoured after it) and ANDROID_ADB_SERVER_PORT; else 127.0.0.1:5037.
    A malformed variable is a UsageError naming it (ANDROID_ADB_SERVER_PORT whenever it is set:
    importing adbutils reads it too)."""
    env = os.environ
    env_port = _port(env[ENV_PORT], ENV_PORT) if _env_set(ENV_PORT) else None
    if host is None and port is None and _env_set(ENV_SOCKET):
        return _socket_spec(env[ENV_SOCKET].strip())
    host = host or env.get(ENV_ADDRESS, "").strip() or env.get(ENV_HOST, "").strip() or "127.0.0.1"
    return host, port if port is not None else env_port or 5037


def _adbutils():
    """adbutils, imported after server_address checked the variables: its import builds a client
    from ANDROID_ADB_SERVER_PORT and fails on any value int() rejects, even the empty one adb ignores."""
    if "adbutils" in sys.modules or _env_set(ENV_PORT):
        return require("adbutils", "android")
    saved = os.environ.pop(ENV_PORT, None)
    try:
        return require("adbutils", "android")
    finally:
        if saved is not None:
            os.environ[ENV_PORT] = saved


def adb_client(host: str | None = None, port: int | None = None, timeout: float = 30.0):
    """An adbutils client that never spawns `adb start-server`: DeviceUnavailableError when no
    server answers (checked at once, within a 2 s connect timeout)."""
    host, port = server_address(host, port)
    adbutils = _adbutils()

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
    adbutils = _adbutils()
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
    return Temps(zones, _battery_celsius(kv.get("battery", "")), float(up) if up and re.fullmatch(_NUM, up) else None)


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


@dataclass(frozen=True)
class AndroidOptions(AgentOptions):
    """android: the phone and adb server, the runner pushed and where it runs, the thermal gate
    between models, and how many models one push-and-run carries. Threads run on the phone: the
    bound here is static, the phone's core count is checked once it is probed."""

    serial: str | None = None  # None: ANDROID_SERIAL, else the only ready device
    runner: str | None = None  # benchmark_model (or onnxruntime_perf_test) for the phone's ABI
    runtime: str | None = None  # tflite | ort; default from the runner's name
    cpus: str = "big"  # big | little | all | a hex mask for taskset
    delegate: str = "cpu"  # cpu (builtin kernels) | xnnpack | gpu | nnapi
    max_temp: float = 45.0  # C: a model starts only while the hottest sensor reads at most this
    cooldown: float = 30.0  # s to wait when the phone is hotter
    max_waits: int = 10  # waits in a row without a model run before the rest runs anyway (flagged hot)
    batch_size: int = BATCH_SIZE  # models per push-and-run (two adb round trips)
    fixed_performance: bool = True  # `cmd power set-fixed-performance-mode-enabled` while measuring
    adb_host: str | None = None  # adb -H: None = the variables adb reads (server_address)
    adb_port: int | None = None  # adb -P
    adb_timeout: float = 30.0  # s for one adb exchange (a batch's shell gets its runs' limits on top)

    def check(self, agent: str) -> None:
        if not 1 <= self.threads <= MAX_PHONE_THREADS:  # before the base's words about this host's cores
            raise UsageError(f"{agent}: threads must be between 1 and {MAX_PHONE_THREADS} (and at most the "
                             f"phone's cores), got {self.threads}")
        super().check(agent)
        if not self.runner:
            raise UsageError(f"{agent} needs the benchmark runner to push: --runner PATH to TFLite's "
                             "benchmark_model for the phone's ABI (or onnxruntime_perf_test with --runtime ort)")
        runtime = _runtime_for(self.runtime, self.runner)
        delegate = self.delegate.strip().lower()
        if delegate not in DELEGATES:
            raise UsageError(f"{agent}: delegate must be one of {', '.join(DELEGATES)}, got {self.delegate!r}")
        if runtime == "ort" and delegate == "gpu":
            raise UsageError("onnxruntime_perf_test has no GPU execution provider on Android: use cpu, xnnpack or nnapi")
        if not re.fullmatch(r"big|little|all|(0x)?[0-9a-f]+", self.cpus.strip().lower()):
            raise UsageError(f"{agent}: cpus must be big, little, all or a hex mask, got {self.cpus!r}")
        lo, hi = PLAUSIBLE_C
        if not lo < self.max_temp < hi:
            raise UsageError(f"{agent}: max_temp must be a temperature between {lo:g} and {hi:g} C, got {self.max_temp:g}")
        for name, value, least in (("cooldown", self.cooldown, 0), ("max_waits", self.max_waits, 0),
                                   ("batch_size", self.batch_size, 1)):
            if value < least:
                raise UsageError(f"{agent}: {name} must be >= {least}, got {value:g}")
        if self.adb_timeout <= 0:
            raise UsageError(f"{agent}: adb_timeout must be > 0 s, got {self.adb_timeout:g}")
        if self.adb_port is not None:
            _port(str(self.adb_port), f"{agent}: adb_port")

    def max_threads(self) -> int:
        """Threads run on the phone: a static bound here, its core count once probed (_setup)."""
        return MAX_PHONE_THREADS


class AndroidAgent(Agent):
    """Times ops on an Android phone over adb with benchmark_model (or onnxruntime_perf_test),
    `batch_size` models per two adb round trips; see the module docstring and AndroidOptions."""

    name = "android"
    contexts = ("warm",)  # benchmark_model runs each model back to back on the phone
    interleaves = False  # ... and all of its runs in one go (batches are the adb unit, not rounds)

    Options = AndroidOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.runner = o.runner
        if not os.path.isfile(self.runner):
            raise UsageError(f"--runner {self.runner}: no such file")
        self.runtime_key = _runtime_for(o.runtime, self.runner)
        self.rt = RUNTIMES[self.runtime_key]
        self.fusion = self.rt.fusion
        self.delegate = o.delegate.strip().lower()
        self.cpus, self.max_temp, self.cooldown, self.max_waits = o.cpus, o.max_temp, o.cooldown, o.max_waits
        self.batch_size, self.fixed_performance, self.adb_timeout = o.batch_size, o.fixed_performance, o.adb_timeout
        self.client = adb_client(o.adb_host, o.adb_port, timeout=self.adb_timeout)
        self.serial = self._pick_serial(o.serial)
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
        self._batches = 0
        self._handed = 0  # measurements handed over by measure(): what a lost device leaves behind
        self._local: Any = None
        self._closed = False

    # ------------------------------------------------------------------ device choice
    def _pick_serial(self, serial: str | None) -> str:
        """The serial to use, as adb picks it: the given one, else ANDROID_SERIAL (both checked),
        else the only ready device."""
        devices = list_devices(self.client)
        listing = ", ".join(f"{d['serial']} ({d['state']})" for d in devices) or "none"
        named = f" (from {ENV_SERIAL})" if not serial and _env_set(ENV_SERIAL) else ""
        serial = serial or os.environ.get(ENV_SERIAL, "").strip()
        if serial:
            found = [d for d in devices if d["serial"] == serial]
            if not found:
                raise DeviceUnavailableError(f"no device {serial!r}{named} attached to the adb server; "
                                             f"attached: {listing}")
            state = found[0]["state"]
            if state != "device":
                why = " (accept the USB debugging prompt on the phone)" if state == "unauthorized" else ""
                raise DeviceUnavailableError(f"device {serial!r}{named} is {state}{why}")
            return serial
        ready = [d["serial"] for d in devices if d["state"] == "device"]
        if not ready:
            raise DeviceUnavailableError(f"no Android device ready (attached: {listing}); plug one in with "
                                         f"USB debugging on, check `latbench devices`")
        if len(ready) > 1:
            raise UsageError(f"{len(ready)} devices attached ({', '.join(ready)}): pick one with --serial "
                             f"or {ENV_SERIAL}")
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
        after = (f"results of earlier batches ({self._handed} models) were handed over: rerun to resume"
                 if self._handed else "nothing was measured yet: rerun once it is back")
        return DeviceUnavailableError(f"device {self.serial} {where} during {what} ({type(e).__name__}: {detail}); "
                                      f"{after}")

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
        if self.threads > len(facts.cpus):
            raise UsageError(f"{self.name}: threads must be between 1 and {len(facts.cpus)} (the cores of "
                             f"{self.serial}), got {self.threads}")
        if self.threads > len(self.cores):
            log.warning("%d threads on %d pinned core(s) (%s): threads will share cores", self.threads,
                        len(self.cores), _ranges(self.cores))
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
            "temps_at_setup": Temps({i: c for i, (_, c) in f.zones.items() if c is not None}, f.battery_c,
                                    None).to_dict(self._zone_names()),
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
        return self._limit_for(timing.warmup_s + timing.max_time_s)

    def _limit_for(self, seconds: float) -> int:
        """The hung-run limit for a run meant to take `seconds` of warm-up and timed runs."""
        base = 300 if self.runtime_key == "ort" else 60
        return int(math.ceil(base + 3 * seconds))

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
            for m in self._run_batch(batch, timing, args, settings, profile.id):
                self._handed += 1
                yield m

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

    def _push_and_run(self, files: Sequence[tuple[str, bytes]], limit: float, args: list[str]
                      ) -> tuple[int, list[_ScriptRun], dict[int, tuple[_Section, _ScriptRun]]]:
        """Push one batch of (file name, model bytes) and run it (resumed after each cooldown):
        the batch number, its script runs, and model index -> (its section, the run it was in)."""
        k = self._batches
        self._batches += 1
        bdir = f"{self.session}/b{k}"
        listing = "".join(f"{bdir}/{name}\n" for name, _ in files).encode()
        self._push([*((f"{bdir}/{name}", data, 0o644) for name, data in files), (f"{bdir}/list.txt", listing, 0o644)],
                   f"batch {k} (push)")
        runs = self._run_gated(k, bdir, len(files), limit, args)
        return k, runs, {i: (sec, run) for run in runs for i, sec in run.sections.items()}

    def _run_on_device(self, runnable: list[_Pending], timing: TimingSettings, args: list[str],
                       settings: dict[str, Any], profile_id: str, t_start: float) -> dict[int, Measurement]:
        """Push one batch, run it (resumed after each cooldown), parse it: id(pending) -> Measurement."""
        limit = self._run_limit(timing)
        k, runs, ran = self._push_and_run([(p.file, p.model) for p in runnable], limit, args)
        t_back = runs[-1].t_back
        overhead = max(0.0, (t_back - t_start) - sum(sec.wall for sec, _ in ran.values())) / len(runnable)
        out_map: dict[int, Measurement] = {}
        for i, p in enumerate(runnable):
            base = dict(key=p.op.key, profile_id=profile_id, op=p.op.to_dict())
            if i not in ran:
                why = "batch output ended early" if runs[-1].done is None else "no result"
                out_map[id(p)] = Measurement(**base, stats=None, settings={**settings, "estimator": "mean"},
                                             status="failed", error=f"{self.rt.runner}: {why} ({p.file})",
                                             wall_s=(t_back - t_start) / len(runnable), extra=self._run_extra(k, runs[-1]))
                continue
            sec, run = ran[i]
            out_map[id(p)] = self._measurement(base, p.file, sec, run, k, settings, limit, overhead)
        return out_map

    def _measurement(self, base: dict[str, Any], file: str, sec: _Section, run: _ScriptRun, k: int,
                     settings: dict[str, Any], limit: float, overhead: float) -> Measurement:
        """One model's result (ok or failed with the runner's reason), with the temperature it
        started at and whether that was above max_temp (`hot`)."""
        end_up = run.after.uptime if run.after else None
        taken = run.now - (end_up - sec.t1) if end_up is not None and sec.t1 is not None else run.now
        extra = {**self._run_extra(k, run), "exit_code": sec.rc, "model_file": file,
                 "temp_c": _celsius_of(sec.temp_milli), "temp_sensor": self._sensor_name(sec.sensor),
                 "hot": sec.temp_milli is not None and sec.temp_milli > self._max_milli}
        res = self.rt.parse(sec.text) if sec.rc == 0 else None
        if res is None:
            lines = " | ".join(x.strip() for x in sec.text.splitlines() if x.strip())
            err = (failure_message(self.rt.runner, sec.rc, sec.text, limit) if sec.rc != 0 else
                   f"{self.rt.runner} printed no timings: {lines[-400:] or 'no output'}")
            return Measurement(**base, stats=None, settings={**settings, "estimator": "mean"}, status="failed",
                               error=err, wall_s=sec.wall + overhead, taken_at=min(taken, run.now), extra=extra)
        timed = res.stats.n * res.stats.mean / 1e3 if res.stats.n else res.stats.mean / 1e3
        return Measurement(**base, stats=res.stats, settings={**settings, "estimator": res.estimator},
                           wall_s=max(sec.wall, timed) + overhead, timed_s=timed, taken_at=min(taken, run.now),
                           extra={**extra, "runner": res.details})

    def _run_extra(self, k: int, run: _ScriptRun) -> dict[str, Any]:
        """What every row of one script run keeps: its batch, the thermal gate's state, the
        temperatures before and after the run."""
        names = self._zone_names()
        return {"batch": k, "thermal": run.thermal, "temps_before": run.before.to_dict(names) if run.before else None,
                "temps_after": run.after.to_dict(names) if run.after else None}

    # ------------------------------------------------------------------ whole models (the plain yardstick)
    @property
    def model_kind(self) -> str:
        """The whole model its runner takes: a .tflite (benchmark_model) or an .onnx (onnxruntime_perf_test)."""
        return "onnx" if self.runtime_key == "ort" else "tflite"

    @property
    def plain_call(self) -> str:
        """What the yardstick times on the phone, in words."""
        if self.runtime_key == "ort":
            return f"onnxruntime_perf_test on {self.serial}, a fresh process per pass, its P50 and average"
        return f"benchmark_model on {self.serial}, a fresh process per pass, its average"

    @property
    def plain_statistics(self) -> tuple[str, ...]:
        """What the runner reports of its timed runs, the default first: benchmark_model their
        average and minimum (no median); onnxruntime_perf_test -s also the P50."""
        return ("median", "mean", "min") if self.runtime_key == "ort" else ("mean", "min")

    def yardstick_args(self, y: YardstickSettings) -> list[str]:
        """The runner's arguments for one yardstick pass of a whole model: y.warmup runs and
        y.warmup_s seconds, then >= y.runs runs and >= y.min_s seconds (benchmark_model's own
        loop; onnxruntime_perf_test takes a run count only, and warms up once)."""
        if self.runtime_key == "ort":
            return ["-I", "-s", "-m", "times", "-r", str(y.runs), "-x", str(self.threads), "-o", "99",
                    *self._delegate_flags()]
        return [f"--num_threads={self.threads}", f"--warmup_runs={y.warmup}",
                f"--warmup_min_secs={_flag_value(y.warmup_s)}", f"--num_runs={y.runs}",
                f"--min_secs={_flag_value(y.min_s)}", f"--max_secs={_flag_value(max(WHOLE_MAX_S, y.min_s))}",
                *self._delegate_flags()]

    def time_models(self, models: Sequence[bytes], y: YardstickSettings) -> list[PassStats]:
        """One yardstick pass over whole models, in the given order: each pushed afresh and run by
        its own runner process (a fresh interpreter or session), batch_size models (at most
        WHOLE_BATCH_BYTES) a push; the thermal gate waits as for ops. A model without timings
        raises LatbenchError naming it and the runner's reason."""
        self._setup()
        args = self.yardstick_args(y)
        limit = self._limit_for(y.warmup_s + max(WHOLE_MAX_S, y.min_s))
        out: list[PassStats] = []
        for chunk in _byte_chunks(models, self.batch_size, WHOLE_BATCH_BYTES):
            files = [(f"net{len(out) + i}{self.rt.ext}", m) for i, m in enumerate(chunk)]
            _, runs, ran = self._push_and_run(files, limit, args)
            for i, (name, _) in enumerate(files):
                sec = ran.get(i, (None, None))[0]
                res = self.rt.parse(sec.text) if sec is not None and sec.rc == 0 else None
                if res is None:
                    why = ("no result (batch output ended early)" if sec is None else
                           failure_message(self.rt.runner, sec.rc, sec.text, limit) if sec.rc != 0 else
                           f"{self.rt.runner} printed no timings")
                    raise LatbenchError(f"device {self.serial}: whole model {len(out) + 1} of {len(models)} "
                                        f"({name}): {why}")
                s = res.stats
                out.append(PassStats.reported(s.median, s.mean, res.details.get("p90_ms", math.nan), s.min, s.n))
        return out

    # ------------------------------------------------------------------ thermal gate
    @property
    def _max_milli(self) -> int:
        """max_temp in millidegrees C, as run_batch.sh compares it."""
        return round(self.max_temp * 1000)

    def _run_gated(self, k: int, bdir: str, n: int, limit: float, args: list[str]) -> list[_ScriptRun]:
        """Run batch k's script until every model had its turn. The script reads the temperature
        before each model and stops while the phone is above max_temp; the agent then waits
        `cooldown` and resumes with the rest. After max_waits waits in a row with no model run in
        between, the rest runs ungated: its rows are flagged hot where the reading before them was."""
        runs: list[_ScriptRun] = []
        start, waits, in_row, waited, gave_up = 0, 0, 0, 0.0, False
        while True:
            run = self._run_script(k, bdir, start, n, limit, args, gated=not gave_up)
            run.thermal = {"max_temp": self.max_temp, "waits": waits, "waited_s": round(waited, 3), "gave_up": gave_up}
            runs.append(run)
            if run.hot_at is None:
                return runs
            in_row = 0 if run.hot_at > start else in_row
            start = run.hot_at
            where = (f"{_celsius_of(run.hot_milli)} C ({self._sensor_name(run.hot_sensor)}) > {self.max_temp:g} C "
                     f"before model {start + 1} of {n} in batch {k}")
            if in_row >= self.max_waits:
                log.warning("device %s still at %s after %d wait(s) in a row: measuring the rest of the batch "
                            "anyway (rows flagged hot)", self.serial, where, in_row)
                gave_up = True
                continue
            log.warning("device %s at %s: cooling down %g s (%d/%d)", self.serial, where, self.cooldown, in_row + 1,
                        self.max_waits)
            t0 = time.monotonic()
            time.sleep(self.cooldown)
            waited += time.monotonic() - t0
            waits, in_row = waits + 1, in_row + 1

    def _run_script(self, k: int, bdir: str, start: int, n: int, limit: float, args: list[str],
                    gated: bool) -> _ScriptRun:
        """One adb shell running run_batch.sh over batch k's models from index `start` on, stopping
        before a model while the phone is above max_temp when `gated`."""
        token = secrets.token_hex(8)
        gate = str(self._max_milli) if gated else "-"
        cmd = " ".join(shlex.quote(a) for a in [
            "sh", f"{self.session}/run_batch.sh", bdir, token, self.mask, str(limit), self.rt.graph_prefix, gate,
            str(start), self.runner_path, *args])
        _, out, err = self._shell(cmd, f"batch {k} ({n - start} models)", timeout=(n - start) * limit + 60 + self.adb_timeout)
        run = _split_result(out, token)
        run.t_back, run.now = time.perf_counter(), time.time()
        if run.before is None:
            raise LatbenchError(f"device {self.serial}: batch script gave no result: {(err or out).strip()[-300:]}")
        return run

    def _sensor_name(self, sensor: str) -> str:
        """A sensor as run_batch.sh names it (zone index or 'battery') by its zone type."""
        index = _int_or_none(sensor)
        if index is None:
            return "" if sensor == "-" else sensor
        return self._zone_names().get(index, f"zone{index}")

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


@dataclass(frozen=True)
class _Section:
    """One model's run in run_batch.sh's output."""

    text: str  # the runner's output, stdout and stderr
    rc: int
    t0: float | None  # /proc/uptime before and after
    t1: float | None
    temp_milli: int | None  # the hottest reading just before it started (millidegrees C)
    sensor: str  # which sensor read it: a zone index or 'battery'

    @property
    def wall(self) -> float:
        return max(0.0, self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else 0.0


@dataclass
class _ScriptRun:
    """One run of run_batch.sh: the models it ran, the temperatures around it, where it stopped."""

    sections: dict[int, _Section] = field(default_factory=dict)  # index in the batch -> its run
    before: Temps | None = None
    after: Temps | None = None
    done: int | None = None  # index after the last model it got to; None: the output ended early
    hot_at: int | None = None  # the model it did not start because the phone was above max_temp
    hot_milli: int | None = None
    hot_sensor: str = ""
    thermal: dict[str, Any] = field(default_factory=dict)  # the gate's state when it started
    t_back: float = 0.0  # perf_counter and wall clock when its output was back
    now: float = 0.0


def _split_result(out: str, token: str) -> _ScriptRun:
    """run_batch.sh output -> _ScriptRun."""
    mark = f"@@{token} "
    run = _ScriptRun()
    cur: int | None = None
    head: dict[str, str] = {}
    buf: list[str] = []
    for line in out.splitlines():
        if not line.startswith(mark):
            if cur is not None:
                buf.append(line)
            continue
        words = line[len(mark):].split()
        kind = words[0] if words else ""
        index = _int_or_none(words[1]) if len(words) > 1 else None
        kv = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        if kind == "temps" and len(words) > 1:
            if words[1] == "before":
                run.before = parse_temps(line)
            elif words[1] == "after":
                run.after = parse_temps(line)
        elif kind == "begin" and index is not None:
            cur, head, buf = index, kv, []
        elif kind == "end" and index is not None:
            rc = _int_or_none(kv.get("rc", ""))
            run.sections[index] = _Section("\n".join(buf), 255 if rc is None else rc, _float(kv.get("t0")),
                                           _float(kv.get("t1")), _int_or_none(head.get("temp", "")), head.get("at", ""))
            cur, buf = None, []
        elif kind == "hot" and index is not None:
            run.hot_at, run.hot_milli, run.hot_sensor = index, _int_or_none(kv.get("temp", "")), kv.get("at", "")
        elif kind == "done":
            run.done = index if index is not None else 0
    return run


def _byte_chunks(items: Sequence[bytes], count: int, max_bytes: int) -> Iterator[Sequence[bytes]]:
    """Consecutive runs of `items`, each at most `count` long and `max_bytes` big (never empty)."""
    start, size = 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start >= count or size + len(item) > max_bytes):
            yield items[start:i]
            start, size = i, 0
        size += len(item)
    if start < len(items):
        yield items[start:]


def _celsius_of(milli: int | None) -> float | None:
    return milli / 1000.0 if milli is not None else None


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
