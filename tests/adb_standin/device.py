"""FakeDevice: one stand-in Android phone (file system, properties, sysfs, shell) driven by tests.

The device's file system is a host temp directory (`root`): /data/local/tmp of the device is
`root/data/local/tmp`. Shell commands run with the host's /bin/sh inside a private mount namespace
chrooted into `root`, where host system directories are bound read-only, fake cpufreq/thermal
trees built from the device profile sit over /sys, and the stand-in tools (getprop, dumpsys, cmd,
taskset) live in /system/bin. Tests read and steer the device through the methods below.
"""
from __future__ import annotations

import collections
import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROFILE_DIR = HERE / "devices"
DEVTOOLS_DIR = HERE / "devtools"
NSROOT = HERE / "nsroot.py"

# Host directories bound read-only into every device root (plus the interpreter's and temp dirs).
_BASE_BINDS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "sys", "tmp")
_NEVER_BIND = ("data", "system", "sdcard", "vendor", "storage", "")
_DEVICE_PATH = ("/.standin/bin:/system/bin:/system/xbin:/vendor/bin:"
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
CPU_SYSFS = "/sys/devices/system/cpu"
THERMAL_SYSFS = "/sys/class/thermal"
OUTPUT_STYLES = ("current", "pre2020", "legacy_nostats", "scientific")
CRASH_SIGNALS = {"SIGSEGV": signal.SIGSEGV, "SIGABRT": signal.SIGABRT}


class StandinUnavailable(RuntimeError):
    """The stand-in cannot run device shells on this machine (no root, no mount namespaces...)."""


def list_profiles() -> list[str]:
    """Names of the bundled device profiles (tests/adb_standin/devices/*.json)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(profile: str | os.PathLike | dict) -> dict:
    """A device profile as a dict: a bundled name, a JSON file path, or a dict (copied)."""
    if isinstance(profile, dict):
        return copy.deepcopy(profile)
    path = Path(profile)
    if not path.suffix and not path.exists():
        path = PROFILE_DIR / f"{profile}.json"
    with open(path) as f:
        return json.load(f)


def _cpu_range(cores: list[int]) -> str:
    """Kernel cpulist text for sorted cores, e.g. [0,1,2,3] -> '0-3'."""
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])


def _write(path: Path, text: str, mode: int | None = None) -> None:
    """Write a small text file, creating parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)


class FakeDevice:
    """One stand-in phone: profile, temp file system, command log, counters and failure knobs."""

    def __init__(self, profile: str | os.PathLike | dict = "pixel7", serial: str | None = None,
                 state: str = "device") -> None:
        self.profile = load_profile(profile)
        self.serial = serial or self.profile["serial"]
        self.state = state
        self.base = Path(tempfile.mkdtemp(prefix=f"adb-standin-{self.serial}-"))
        self.root = self.base / "root"
        self._lock = threading.RLock()
        self.commands: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.services: collections.Counter[str] = collections.Counter()
        self.sync_ops: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.models_run: list[str] = []
        self.online = True
        self.transport_id = 0
        self.output_style = "current"
        self._crash: dict[str, str] = {}
        self._disconnect_after: int | None = None
        self._simulate: float | dict[str, float] | None = None
        self._temp_schedule: tuple[float, float, int] | None = None
        self.temperature_reads = 0
        self._heating: tuple[float, float, float] | None = None  # (C per run, C per idle second, ambient C)
        self._heat_c = 0.0
        self._idle_since = 0.0
        self._running = False
        self.run_temperatures: list[tuple[str, float]] = []  # (model file, C) as each benchmark_model run starts
        self._holder: subprocess.Popen | None = None
        self._procs: set[subprocess.Popen] = set()
        self._conns: set[Any] = set()
        self._server: Any = None
        self._cores = sorted(c for cl in self.profile["cpu_clusters"] for c in cl["cores"])
        self._build_tree()
        self._bound: list[str] = self.host_binds()
        self.set_temperature(None)

    # ---- file system -------------------------------------------------------------------------
    def _build_tree(self) -> None:
        """Create the device root, the fake sysfs trees and /proc/cpuinfo from the profile."""
        r = self.root
        (r / "data/local/tmp").mkdir(parents=True)
        (r / "data/local/tmp").chmod(0o771)
        (r / "sdcard").mkdir()
        (r / "system/bin").mkdir(parents=True)
        (r / ".standin/bin").mkdir(parents=True)
        (r / "system/bin/sh").symlink_to("/bin/sh")
        for tool in DEVTOOLS_DIR.iterdir():
            shutil.copy(tool, r / "system/bin" / tool.name)
            (r / "system/bin" / tool.name).chmod(0o755)
        _write(r / ".standin/bin/python3", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', 0o755)
        props = dict(self.profile["props"], **{"ro.serialno": self.serial})
        for key, value in props.items():
            _write(r / ".standin/props" / key, str(value))
        _write(r / ".standin/ncores", str(len(self._cores)))
        _write(r / ".standin/fixed_perf_supported", "1" if self.profile.get("fixed_performance_mode") else "0")
        _write(r / ".standin/taskset.log", "")
        self._build_cpu_sysfs(self.base / "sys_cpu")
        self._build_thermal_sysfs(self.base / "sys_thermal")
        self._build_cpuinfo(self.base / "proc_cpuinfo")

    def _build_cpu_sysfs(self, d: Path) -> None:
        """/sys/devices/system/cpu: possible/present/online and per-core cpufreq + topology files."""
        span = _cpu_range(self._cores)
        for name in ("possible", "present", "online"):
            _write(d / name, span + "\n")
        _write(d / "offline", "\n")
        _write(d / "kernel_max", f"{max(self._cores)}\n")
        for cluster_id, cl in enumerate(self.profile["cpu_clusters"]):
            related = " ".join(str(c) for c in cl["cores"])
            for core in cl["cores"]:
                c = d / f"cpu{core}"
                _write(c / "online", "1\n")
                _write(c / "cpu_capacity", f"{cl['capacity']}\n")
                _write(c / "topology/cluster_id", f"{cluster_id}\n")
                _write(c / "topology/core_id", f"{core - cl['cores'][0]}\n")
                _write(c / "topology/physical_package_id", f"{cluster_id}\n")
                f = c / "cpufreq"
                _write(f / "scaling_governor", f"{cl['governor']}\n")
                _write(f / "scaling_available_governors", f"{cl['governor']} performance powersave schedutil\n")
                _write(f / "scaling_cur_freq", f"{cl['cur_freq']}\n")
                _write(f / "scaling_min_freq", f"{cl['min_freq']}\n")
                _write(f / "scaling_max_freq", f"{cl['max_freq']}\n")
                _write(f / "cpuinfo_min_freq", f"{cl['min_freq']}\n")
                _write(f / "cpuinfo_max_freq", f"{cl['max_freq']}\n")
                _write(f / "scaling_available_frequencies", " ".join(map(str, cl["frequencies"])) + " \n")
                _write(f / "related_cpus", related + "\n")
                _write(f / "affected_cpus", related + "\n")
                _write(f / "scaling_driver", "cpufreq-dt\n")

    def _build_thermal_sysfs(self, d: Path) -> None:
        """/sys/class/thermal/thermal_zoneN/{type,temp,mode,policy}."""
        for i, zone in enumerate(self.profile["thermal_zones"]):
            z = d / f"thermal_zone{i}"
            _write(z / "type", f"{zone['type']}\n")
            _write(z / "temp", f"{zone['temp']}\n")
            _write(z / "mode", "enabled\n")
            _write(z / "policy", "step_wise\n")

    def _build_cpuinfo(self, path: Path) -> None:
        """An arm64-style /proc/cpuinfo listing the profile's cores."""
        lines = []
        for cl in self.profile["cpu_clusters"]:
            for core in cl["cores"]:
                lines += [f"processor\t: {core}", "BogoMIPS\t: 49.15",
                          "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                          "asimdrdm lrcpc dcpop asimddp", "CPU implementer\t: 0x41", "CPU architecture: 8",
                          "CPU variant\t: 0x1", f"CPU part\t: {cl['part']}", "CPU revision\t: 0", ""]
        lines.append(f"Hardware\t: {self.profile.get('cpuinfo_hardware', '')}")
        _write(path, "\n".join(lines) + "\n")

    def _overlays(self) -> list[tuple[str, str, bool]]:
        """(host source, device path, writable) binds laid over the host's /sys and /proc."""
        return [(str(self.base / "sys_cpu"), CPU_SYSFS, True),
                (str(self.base / "sys_thermal"), THERMAL_SYSFS, True),
                (str(self.base / "proc_cpuinfo"), "/proc/cpuinfo", False)]

    def host_binds(self, extra: list[str] = ()) -> list[str]:
        """Top-level host directories bound read-only into the device root."""
        names = set()
        for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), tempfile.gettempdir(), *extra):
            names.add(Path(p).resolve().parts[1] if len(Path(p).resolve().parts) > 1 else "")
        names.update(_BASE_BINDS)
        out = []
        for name in sorted(names):
            host = Path("/") / name
            if name in _NEVER_BIND or not host.exists():
                continue
            if host.is_symlink():
                link = self.root / name
                if not link.is_symlink():
                    link.symlink_to(os.readlink(host))
                continue
            if host.is_dir():
                out.append(name)
        return out

    def resolve(self, device_path: str, follow_last: bool = True) -> tuple[Path, bool]:
        """Host path and writability of a device path, following symlinks as the chrooted device would."""
        parts = [c for c in device_path.split("/") if c not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            host, _ = self._map(done + [name])
            if (parts or follow_last) and os.path.islink(host):
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), device_path)
                target = os.readlink(host)
                if target.startswith("/"):
                    done = []
                parts = [c for c in target.split("/") if c not in ("", ".")] + parts
                continue
            done.append(name)
        return self._map(done)

    def _map(self, parts: list[str]) -> tuple[Path, bool]:
        """Host path of resolved device path components: fake sysfs, read-only host dir, or the root."""
        dev = "/" + "/".join(parts)
        for src, dst, writable in self._overlays():
            if dev == dst or dev.startswith(dst + "/"):
                return Path(src + dev[len(dst):]), writable
        if parts and parts[0] in self._bound:
            return Path(dev), False
        return self.root.joinpath(*parts) if parts else self.root, True

    def path(self, device_path: str) -> Path:
        """Host path of a device path (e.g. '/data/local/tmp/x' -> <root>/data/local/tmp/x)."""
        return self.resolve(device_path)[0]

    def read_file(self, device_path: str) -> bytes:
        """Bytes of a device file."""
        return self.path(device_path).read_bytes()

    def write_file(self, device_path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or replace a device file (parents created) as if it had been pushed."""
        host, writable = self.resolve(device_path)
        if not writable:
            raise PermissionError(f"read-only on the device: {device_path}")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data.encode() if isinstance(data, str) else data)
        host.chmod(mode)

    def exists(self, device_path: str) -> bool:
        """Whether a device path exists."""
        return self.path(device_path).exists()

    def listdir(self, device_path: str) -> list[str]:
        """Sorted names in a device directory."""
        return sorted(os.listdir(self.path(device_path)))

    # ---- state that tests steer --------------------------------------------------------------
    @property
    def model(self) -> str:
        """ro.product.model of the profile."""
        return self.profile["props"]["ro.product.model"]

    @property
    def cores(self) -> list[int]:
        """CPU core numbers of the profile."""
        return list(self._cores)

    @property
    def round_trips(self) -> int:
        """Device services opened over adb (each shell/exec/sync session is one round trip)."""
        with self._lock:
            return sum(self.services[k] for k in ("shell", "shell_v2", "exec", "sync"))

    def reset_counters(self) -> None:
        """Forget the command log, request log and all counters (files and knobs stay)."""
        with self._lock:
            self.commands.clear()
            self.requests.clear()
            self.services.clear()
            self.sync_ops.clear()
            self.connections = 0
            self.temperature_reads = 0

    @property
    def temperature(self) -> float:
        """Current temperature in degrees C (what thermal_zone0 reads)."""
        return int((self.base / "sys_thermal/thermal_zone0/temp").read_text()) / 1000.0

    def set_temperature(self, celsius: float | None) -> None:
        """Set every thermal zone and the battery to celsius (None: the profile's own values)."""
        with self._lock:
            self._temp_schedule = self._heating = None
            self._apply_temperature(celsius)

    def set_temperature_schedule(self, hot: float, cool: float, hot_reads: int) -> None:
        """The first hot_reads temperature reads see hot, later ones cool (see note_temperature_read)."""
        with self._lock:
            self._heating = None
            self._temp_schedule = (hot, cool, hot_reads)
            self.temperature_reads = 0
            self._apply_temperature(hot if hot_reads > 0 else cool)

    def set_heating(self, start: float, per_run: float, cool_per_s: float, ambient: float | None = None) -> None:
        """A phone that heats up: from `start` C, every benchmark_model run adds per_run C, and the
        time since the last run ended takes cool_per_s C a second off (down to `ambient`, default
        `start`) when the next adb request arrives. So the runs of one batch script heat it by
        exactly per_run each, and a host that waits before its next request finds it cooler.
        Zones and battery all read it."""
        with self._lock:
            self._temp_schedule = None
            self._heating = (per_run, cool_per_s, start if ambient is None else ambient)
            self._heat_c, self._idle_since, self._running = start, time.monotonic(), False
            self._apply_temperature(start)

    def _cool(self) -> None:
        """A heating phone loses the heat of the idle time since its last change (at adb requests)."""
        if self._heating is None or self._running:
            return
        _, rate, ambient = self._heating
        now = time.monotonic()
        self._heat_c = max(ambient, self._heat_c - rate * (now - self._idle_since))
        self._idle_since = now
        self._apply_temperature(self._heat_c)

    def begin_run(self, graph: str) -> None:
        """A benchmark_model run starts timing `graph`: note the temperature it runs at."""
        with self._lock:
            self._running = True
            self.run_temperatures.append((os.path.basename(graph), self.temperature))

    def end_run(self) -> None:
        """A benchmark_model run ended: a heating phone is per_run C hotter."""
        with self._lock:
            self._running = False
            if self._heating is not None:
                self._heat_c += self._heating[0]
                self._idle_since = time.monotonic()
                self._apply_temperature(self._heat_c)

    def note_temperature_read(self) -> None:
        """Count one temperature read (an adb command or sync read touching thermal/battery state)."""
        with self._lock:
            if self._temp_schedule is not None:
                hot, cool, hot_reads = self._temp_schedule
                self._apply_temperature(hot if self.temperature_reads < hot_reads else cool)
            self.temperature_reads += 1

    def _apply_temperature(self, celsius: float | None) -> None:
        """Write thermal zone temps (millidegrees) and the battery dump (tenths of a degree)."""
        battery = dict(self.profile["battery"])
        for i, zone in enumerate(self.profile["thermal_zones"]):
            milli = zone["temp"] if celsius is None else int(round(celsius * 1000))
            (self.base / f"sys_thermal/thermal_zone{i}/temp").write_text(f"{milli}\n")
        if celsius is not None:
            battery["temperature"] = int(round(celsius * 10))
        _write(self.root / ".standin/battery", self._battery_text(battery))
        status = 0 if celsius is None or celsius < 39 else (1 if celsius < 43 else 3)
        _write(self.root / ".standin/thermalservice",
               f"IsStatusOverride: false\nThermalEventListeners:\n\tcallbacks: 0\nThermal Status: {status}\n")

    @staticmethod
    def _battery_text(b: dict) -> str:
        """`dumpsys battery` text as Android 13/14 prints it."""
        yes = lambda v: "true" if v else "false"  # noqa: E731
        return (f"Current Battery Service state:\n  AC powered: {yes(b['ac_powered'])}\n"
                f"  USB powered: {yes(b['usb_powered'])}\n  Wireless powered: {yes(b['wireless_powered'])}\n"
                f"  Dock powered: {yes(b['dock_powered'])}\n  Max charging current: {b['max_charging_current']}\n"
                f"  Max charging voltage: {b['max_charging_voltage']}\n  Charge counter: {b['charge_counter']}\n"
                f"  status: {b['status']}\n  health: {b['health']}\n  present: {yes(b['present'])}\n"
                f"  level: {b['level']}\n  scale: {b['scale']}\n  voltage: {b['voltage']}\n"
                f"  temperature: {b['temperature']}\n  technology: {b['technology']}\n")

    def reset_knobs(self) -> None:
        """Back to a healthy device: current output style, no crashes, no planned disconnect, real
        (not simulated) runs, profile temps."""
        with self._lock:
            self.output_style = "current"
            self._crash.clear()
            self._disconnect_after = None
            self._simulate = None
            self.set_temperature(None)

    def set_output_style(self, style: str) -> None:
        """benchmark_model output format: current, pre2020, legacy_nostats (2018-19 'no stats:') or scientific."""
        if style not in OUTPUT_STYLES:
            raise ValueError(f"unknown output style {style!r}; expected one of {OUTPUT_STYLES}")
        self.output_style = style

    def crash_on(self, model_name: str, signal_name: str = "SIGSEGV") -> None:
        """Make benchmark_model die like a native crash (SIGSEGV: exit 139, SIGABRT: 134) on this model."""
        if signal_name not in CRASH_SIGNALS:
            raise ValueError(f"signal must be one of {sorted(CRASH_SIGNALS)}")
        self._crash[model_name] = signal_name

    def crash_signal_for(self, graph: str) -> str | None:
        """The crash signal configured for a --graph path (matched by path, file name or stem)."""
        name = os.path.basename(graph)
        for key in (graph, name, os.path.splitext(name)[0]):
            if key in self._crash:
                return self._crash[key]
        return None

    def simulate_run_time(self, ms_per_run: float | dict[str, float] | None) -> None:
        """Simulate benchmark_model's run time instead of running LiteRT: every warmup and timed run
        sleeps (no CPU, in the server thread serving that benchmark_model) and reports exactly this
        many ms, in whole microseconds. A float holds for every model; a dict maps models (by path,
        file name or stem, as crash_on) to ms, "*" being the default; a model it does not cover runs
        LiteRT for real. None: real runs for all. Flags, model checks, output and knobs are unchanged."""
        if isinstance(ms_per_run, dict):
            table = {str(k): float(v) for k, v in ms_per_run.items()}
            values = list(table.values())
        elif ms_per_run is None:
            table, values = None, []
        else:
            table = float(ms_per_run)
            values = [table]
        if any(not v >= 0 or v == float("inf") for v in values):
            raise ValueError(f"simulated run times must be finite and >= 0 ms, not {ms_per_run!r}")
        with self._lock:
            self._simulate = table

    def simulated_run_ms(self, graph: str) -> float | None:
        """The simulated ms per run for a --graph path (None: run it for real), see simulate_run_time."""
        sim = self._simulate
        if sim is None or isinstance(sim, float):
            return sim
        name = os.path.basename(graph)
        for key in (graph, name, os.path.splitext(name)[0], "*"):
            if key in sim:
                return sim[key]
        return None

    def disconnect_after(self, n_models: int) -> None:
        """After benchmark_model has finished n_models more runs, drop this device's connections and hide it."""
        with self._lock:
            self._disconnect_after = len(self.models_run) + n_models

    def note_model_run(self, graph: str) -> bool:
        """Record one finished benchmark_model run; True when this triggers the planned disconnect."""
        with self._lock:
            self.models_run.append(os.path.basename(graph))
            if self._disconnect_after is not None and len(self.models_run) >= self._disconnect_after:
                self._disconnect_after = None
                return True
            return False

    @property
    def fixed_performance_mode(self) -> bool | None:
        """What `cmd power set-fixed-performance-mode-enabled` last set (None: never called)."""
        p = self.root / ".standin/fixed_perf"
        return p.read_text().strip() == "true" if p.exists() else None

    @property
    def taskset_calls(self) -> list[str]:
        """Every `taskset MASK CMD...` run on the device, as 'MASK CMD...' lines."""
        return (self.root / ".standin/taskset.log").read_text().splitlines()

    # ---- lifecycle and shell ---------------------------------------------------------------
    def attach(self, server: Any, control_socket: str, extra_binds: list[str], transport_id: int) -> None:
        """Start the device's mount namespace (once) and bind it to a server."""
        self._server = server
        self.transport_id = transport_id
        _write(self.root / ".standin/device.json", json.dumps({"serial": self.serial, "control": control_socket}))
        if self._holder is None or self._holder.poll() is not None:
            self._start_namespace(extra_binds)

    def _start_namespace(self, extra_binds: list[str]) -> None:
        """Launch nsroot.py and wait for its 'ready' (StandinUnavailable with the reason otherwise)."""
        if os.geteuid() != 0:
            raise StandinUnavailable("device shells need root (mount namespace + chroot); not running as root")
        if not shutil.which("nsenter"):
            raise StandinUnavailable("device shells need util-linux `nsenter`, not found on PATH")
        self._bound = self.host_binds(extra_binds)
        spec = self.base / "nsroot.json"
        spec.write_text(json.dumps({"root": str(self.root), "binds": self._bound, "overlays": self._overlays()}))
        holder = subprocess.Popen([sys.executable, "-I", "-S", str(NSROOT), str(spec)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = _readline_with_timeout(holder, 20.0)
        if line.strip() != "ready":
            holder.kill()
            holder.wait(5)
            raise StandinUnavailable(f"cannot build the device mount namespace: {line.strip() or 'no answer'}")
        self._holder = holder

    def spawn(self, command: str | None, merge_stderr: bool) -> subprocess.Popen:
        """Run a device shell command (None: an interactive-less `sh` reading stdin) in the namespace."""
        if self._holder is None or self._holder.poll() is not None:
            raise StandinUnavailable(f"device {self.serial} has no running namespace")
        argv = [shutil.which("nsenter") or "nsenter", "--target", str(self._holder.pid), "--mount", "--root",
                "--wd", "--", "/bin/sh"] + ([] if command is None else ["-c", command])
        env = {"PATH": _DEVICE_PATH, "HOME": "/", "TMPDIR": "/data/local/tmp", "ANDROID_DATA": "/data",
               "ANDROID_ROOT": "/system", "USER": "shell", "LOGNAME": "shell", "SHELL": "/system/bin/sh",
               "HOSTNAME": self.profile["props"].get("ro.product.device", "localhost"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
        env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, env=env,
                                start_new_session=True, close_fds=True)
        with self._lock:
            self._procs.add(proc)
        return proc

    def forget_process(self, proc: subprocess.Popen) -> None:
        """Stop tracking a finished command."""
        with self._lock:
            self._procs.discard(proc)

    def kill_processes(self) -> None:
        """SIGKILL every running device command (its whole process group)."""
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def track_connection(self, conn: Any, add: bool) -> None:
        """Remember (or forget) an open adb connection bound to this device."""
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def drop_connections(self) -> None:
        """Abruptly close every open adb connection of this device and kill its commands."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        self.kill_processes()
        for c in conns:
            c.abort()

    def disconnect(self) -> None:
        """Vanish from host:devices and drop every connection, as an unplugged phone does."""
        self.online = False
        self.drop_connections()

    def reconnect(self) -> None:
        """Come back after disconnect(): listed again with a new transport id, files kept."""
        if self._server is not None:
            self._server._reconnect(self)
        self.online = True

    def record(self, service: str, arg: str) -> None:
        """Log one device request; shell-like ones go to the command log and may read temperatures."""
        with self._lock:
            self._cool()
            self.requests.append((service, arg))
            if service.startswith("sync:"):
                self.sync_ops[service[5:]] += 1
                if service[5:] in ("RECV", "STAT", "STA2", "LST2") and arg.startswith(THERMAL_SYSFS):
                    self.note_temperature_read()
                return
            self.services[service] += 1
            if service in ("shell", "shell_v2", "exec"):
                self.commands.append(arg)
                if "thermal" in arg or "battery" in arg:
                    self.note_temperature_read()

    def close(self) -> None:
        """Kill commands, end the namespace and delete the device's temp directory."""
        self.drop_connections()
        if self._holder is not None:
            try:
                self._holder.stdin.close()
                self._holder.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self._holder.kill()
                self._holder.wait(5)
            self._holder = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __repr__(self) -> str:
        return f"FakeDevice(serial={self.serial!r}, model={self.model!r}, online={self.online})"


def _readline_with_timeout(proc: subprocess.Popen, timeout: float) -> str:
    """First stdout line of a child, or '' if it says nothing within timeout."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else ""

