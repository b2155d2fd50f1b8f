"""The Android agent: ops as single-op models, timed on a phone over adb by TFLite's
benchmark_model (or ONNX Runtime's onnxruntime_perf_test), in batches.

Per batch: one adb sync session pushes the models, one adb shell runs an on-device POSIX-sh loop
(run_batch.sh, beside this module) that runs each model pinned with taskset, captures its output
`2>&1` between delimiters with its exit code, writes one result file and prints it back: two adb
round trips per batch, not per op. Setup (push runner and scripts, probe device facts, fixed
performance mode) is two more round trips, cleanup one: a 200-op profile at the default batch
size takes 19 (0.095 per op; tests/test_android_agent.py counts them on the stand-in server).

Thermal gate, on the phone: the loop reads the thermal zones and the battery before each model
and stops the batch while the hottest reading is above max_temp; the agent waits `cooldown` and
resumes with the rest (one more shell). After max_waits waits in a row with no model run, the
rest runs ungated and rows that started above max_temp are flagged `extra["hot"]`.

Whole networks (the validation yardstick) run the same way: the runner's own loop on the phone,
its report read back (`time_models`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterator, Sequence

import numpy as np

from latbench.device import DeviceProfile, _ranges
from latbench.errors import DeviceUnavailableError, LatbenchError, UsageError, require
from latbench.measure import Measurement, TimingSettings
from latbench.ops import OpSpec
from latbench.yardstick import PassStats, YardstickSettings

from ..base import Agent, AgentOptions, NetworkModel, _one_line
from ..networks import export_onnx, tflite_network
from . import transport
from .facts import DeviceFacts, PLAUSIBLE_C, Temps, celsius_of, core_tiers, cpu_mask, governors, int_or_none, parse_probe
from .parsers import RUNTIMES, ScriptRun, Section, failure_message, flag_value, runtime_for, split_result
from .transport import ENV_SERIAL, adb_client, adb_errors, check_port, env_set, list_devices

log = logging.getLogger("latbench.android")

DEVICE_ROOT = "/data/local/tmp/latbench"  # every file latbench puts on a phone lives below this
SCRIPTS = ("probe.sh", "run_batch.sh")
DELEGATES = ("cpu", "xnnpack", "gpu", "nnapi")
BATCH_SIZE = 32  # models per push-and-run: a 200-op profile in 0.095 adb round trips per op
WHOLE_BATCH_BYTES = 256 << 20  # whole models per push at most (a phone's /data/local/tmp, a USB 2 link)
WHOLE_MAX_S = 150.0  # benchmark_model's default --max_secs: one yardstick pass of a whole model
MAX_PHONE_THREADS = 64  # threads bound before a phone is probed (then: its core count)
# session directories are named s<host>-<pid>-<random>: a later run on this host removes those
# whose process is gone (a run cut by a disconnect cannot clean up after itself)
SESSION_PREFIX = "s" + hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8] + "-"


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
            raise UsageError(f"{agent} needs the benchmark runner to push: `runner` PATH to TFLite's "
                             "benchmark_model for the phone's ABI (or onnxruntime_perf_test with `runtime=ort`)")
        runtime = runtime_for(self.runtime, self.runner)
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
            check_port(str(self.adb_port), f"{agent}: adb_port")

    def max_threads(self) -> int:
        """Threads run on the phone: a static bound here, its core count once probed (_setup)."""
        return MAX_PHONE_THREADS


class AndroidAgent(Agent):
    """Times ops on an Android phone over adb with benchmark_model (or onnxruntime_perf_test),
    `batch_size` models per two adb round trips; see the module docstring and AndroidOptions."""

    name = "android"
    times_on_device = True  # benchmark_model times whole networks itself, on the phone (time_networks)
    contexts = ("warm",)  # benchmark_model runs each model back to back on the phone
    interleaves = False  # ... and all of its runs in one go (batches are the adb unit, not rounds)

    Options = AndroidOptions

    @classmethod
    def options_from_profile(cls, profile: DeviceProfile) -> dict[str, Any]:
        """The runner, phone and settings the profile recorded (serial: the same phone)."""
        opts, info = dict(profile.options), profile.info or {}
        out = dict(threads=profile.threads, delegate=profile.delegate, runtime=profile.runtime,
                   fixed_performance=opts.get("fixed_performance_mode", "off") != "off",
                   runner=(info.get("runner") or {}).get("path"), serial=info.get("serial"),
                   cpus=info.get("cpus_option"), max_temp=info.get("max_temp"), cooldown=info.get("cooldown_s"),
                   batch_size=info.get("batch_size"))
        return {k: v for k, v in out.items() if v is not None}

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.runner = o.runner
        if not os.path.isfile(self.runner):
            raise UsageError(f"`runner` {self.runner}: no such file")
        self.runtime_key = runtime_for(o.runtime, self.runner)
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
        named = f" (from {ENV_SERIAL})" if not serial and env_set(ENV_SERIAL) else ""
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
            raise UsageError(f"{len(ready)} devices attached ({', '.join(ready)}): pick one with `serial` "
                             f"or {ENV_SERIAL}")
        return ready[0]

    # ------------------------------------------------------------------ adb primitives
    def _unavailable(self, what: str, e: BaseException) -> DeviceUnavailableError:
        """The error for a failed adb exchange: says whether the device left or the link broke."""
        try:
            state = next((d["state"] for d in list_devices(self.client) if d["serial"] == self.serial), None)
        except (LatbenchError, *adb_errors()):
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
            r = transport.shell(self.device, cmd, timeout or self.adb_timeout)
        except adb_errors() as e:
            raise self._unavailable(what, e) from None
        return r.returncode, r.stdout, r.stderr

    def _push(self, files: Sequence[tuple[str, bytes, int]], what: str) -> None:
        """Push (device path, bytes, mode) files in ONE sync session (transport.push)."""
        try:
            transport.push(self.device, files, self.adb_timeout, self.serial)
        except adb_errors() as e:
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
            governor=governors(f.cpus), affinity=_ranges(self.cores),
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
                f"--warmup_min_secs={flag_value(timing.warmup_s)}", f"--num_runs={timing.max_samples}",
                "--min_secs=0", f"--max_secs={flag_value(timing.max_time_s)}", *self._delegate_flags()]

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

    # ------------------------------------------------------------------ node ops
    runs_nodes = True  # with benchmark_model: the operators of a .tflite model (lower_model)

    def runs_node(self, spec) -> bool:
        """LiteRT operators (domain "tflite") where the runner is benchmark_model."""
        return spec.domain == "tflite" and self.runtime_key != "ort"

    @classmethod
    def lowering_agent(cls, profile: DeviceProfile) -> Agent:
        """A .tflite's operators are the same on the phone and here: a table of them is priced by
        lowering the model in this host's LiteRT, with no phone attached."""
        if runtime_for(profile.runtime, "") == "ort":
            raise UsageError("android: an onnxruntime_perf_test table holds no node ops a host can lower")
        from ..litert import LiteRTAgent

        return LiteRTAgent(threads=1)

    def lower_model(self, model, input_shape: Sequence[int] | None = None):
        """A .tflite model as the phone's LiteRT runs it: its operators, read on this host
        (litert.LiteRTAgent.lower_model; the file is the graph the phone runs)."""
        if self.runtime_key == "ort":
            raise UsageError(f"{self.name}: onnxruntime_perf_test runs its own optimised graph on the phone, which "
                             f"this host cannot read; price ONNX models with --device ort")
        return self._host_litert().lower_model(model, input_shape)

    def _host_litert(self):
        if self._local is None:
            from ..litert import LiteRTAgent

            self._local = LiteRTAgent(threads=1, xnnpack=True, seed=self.seed)
        return self._local

    def model(self, op: OpSpec) -> bytes:
        """The model bytes pushed for `op` (canonical weights of this agent's seed; a node op:
        its one-operator .tflite, with the inputs whose values it records as constants, since
        benchmark_model fills every input with random data)."""
        if op.kind == "node":
            from ..tflite_graph import tflite_node_model

            spec = op.graph_node
            fixed = tuple(t if t is None or t.const or t.values is None else dataclasses.replace(t, const=True)
                          for t in spec.inputs)
            return tflite_node_model(dataclasses.replace(spec, inputs=fixed), self.pool).model
        if self.runtime_key == "ort":
            from ..onnx_build import build_onnx

            return build_onnx(op, self.weights(op)).SerializeToString()
        from ..tflite_build import build_tflite

        return build_tflite(op, self.weights(op))

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:
        """One inference of the exact model bytes that would be pushed, in this host's LiteRT (or
        onnxruntime): benchmark_model feeds random inputs and returns no outputs, so correctness
        is checked on the model, not on the phone's kernels."""
        if self.runtime_key == "ort":
            from ..onnx_build import graph_in_shape

            y = self._run_host(self.model(op), np.asarray(x, dtype=np.float32).reshape(graph_in_shape(op)))
            return y.reshape(op.out_shape).copy()
        return self._run_host(self.model(op), x)

    def run_network(self, model: NetworkModel, x: np.ndarray) -> np.ndarray:
        """One inference of the whole network's file, in this host's runtime (see run)."""
        return self._run_host(model.file_bytes(), x)

    def _run_host(self, model: bytes, x: np.ndarray) -> np.ndarray:
        """The model file the phone's runner gets, run once on this host on the NCHW input `x`."""
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if self.runtime_key == "ort":
            ort = require("onnxruntime", "ort")
            sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0], dtype=np.float32)
        return self._host_litert().run_bytes(model, x)

    def prepare_op(self, op: OpSpec):
        """Refused: ops run on the phone, a batch at a time, by the runner's own loop (measure)."""
        raise UsageError(f"{self.name}: ops are timed on the phone in batches by {self.rt.runner} (measure); "
                         f"there is no host runnable of one op")

    # ------------------------------------------------------------------ measuring
    def batch_len(self, timing: TimingSettings) -> int:
        """A batch is one push and one run of benchmark_model over `batch_size` models."""
        return self.batch_size

    def measure_settings(self, timing: TimingSettings) -> dict[str, Any]:
        """What every row records: the runner's arguments, the pinned cores, the batch size, the
        phone (the estimator is per row: the one the runner's output gives)."""
        return {**self.settings(), "timing": timing.to_dict(), "runner_args": self.runner_args(timing),
                "cpu_mask": self.mask, "batch_size": self.batch_size, "serial": self.serial}

    def measure_batch(self, ops: list[OpSpec], timing: TimingSettings, settings: dict[str, Any],
                      profile_id: str) -> Iterator[Measurement]:
        """One batch pushed and run on the phone (two adb round trips), its results in op order.
        A device lost mid-batch raises DeviceUnavailableError (after every earlier batch was
        handed over: `measure` yields a batch's results before taking the next ops)."""
        args = settings["runner_args"]
        batch = [_Pending(op) for op in ops]
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
                m = Measurement(key=p.op.key, profile_id=profile_id, op=p.op.to_dict(), stats=None,
                                settings={**settings, "estimator": "mean"}, status="failed", error=p.error,
                                wall_s=built_s / len(batch))
            else:
                m = results[id(p)]
            self._handed += 1
            yield m

    def _push_and_run(self, files: Sequence[tuple[str, bytes]], limit: float, args: list[str]
                      ) -> tuple[int, list[ScriptRun], dict[int, tuple[Section, ScriptRun]]]:
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

    def _measurement(self, base: dict[str, Any], file: str, sec: Section, run: ScriptRun, k: int,
                     settings: dict[str, Any], limit: float, overhead: float) -> Measurement:
        """One model's result (ok or failed with the runner's reason), with the temperature it
        started at and whether that was above max_temp (`hot`)."""
        end_up = run.after.uptime if run.after else None
        taken = run.now - (end_up - sec.t1) if end_up is not None and sec.t1 is not None else run.now
        extra = {**self._run_extra(k, run), "exit_code": sec.rc, "model_file": file,
                 "temp_c": celsius_of(sec.temp_milli), "temp_sensor": self._sensor_name(sec.sensor),
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

    def _run_extra(self, k: int, run: ScriptRun) -> dict[str, Any]:
        """What every row of one script run keeps: its batch, the thermal gate's state, the
        temperatures before and after the run."""
        names = self._zone_names()
        return {"batch": k, "thermal": run.thermal, "temps_before": run.before.to_dict(names) if run.before else None,
                "temps_after": run.after.to_dict(names) if run.after else None}

    # ------------------------------------------------------------------ whole models (the plain yardstick)
    def network_model(self, space, config) -> NetworkModel:
        """The subnet as the file its runner takes: an .onnx (onnxruntime_perf_test) or a .tflite."""
        shape = tuple(space.input_shape(config))
        if self.runtime_key == "ort":
            module = space.build(config)
            return NetworkModel("onnx", export_onnx(space, config, module), shape, module)
        return NetworkModel("tflite", tflite_network(space, config, self.seed), shape)

    @property
    def network_batch(self) -> int:
        """Whole networks per time_networks call: one push-and-run's worth (batch_size)."""
        return self.batch_size

    def time_networks(self, models: Sequence[NetworkModel], yardstick: YardstickSettings) -> list[PassStats]:
        """One yardstick pass over whole networks by the runner on the phone (time_models)."""
        return self.time_models([m.file_bytes() for m in models], yardstick)

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
                f"--warmup_min_secs={flag_value(y.warmup_s)}", f"--num_runs={y.runs}",
                f"--min_secs={flag_value(y.min_s)}", f"--max_secs={flag_value(max(WHOLE_MAX_S, y.min_s))}",
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

    def _run_gated(self, k: int, bdir: str, n: int, limit: float, args: list[str]) -> list[ScriptRun]:
        """Run batch k's script until every model had its turn. The script reads the temperature
        before each model and stops while the phone is above max_temp; the agent then waits
        `cooldown` and resumes with the rest. After max_waits waits in a row with no model run in
        between, the rest runs ungated: its rows are flagged hot where the reading before them was."""
        runs: list[ScriptRun] = []
        start, waits, in_row, waited, gave_up = 0, 0, 0, 0.0, False
        while True:
            run = self._run_script(k, bdir, start, n, limit, args, gated=not gave_up)
            run.thermal = {"max_temp": self.max_temp, "waits": waits, "waited_s": round(waited, 3), "gave_up": gave_up}
            runs.append(run)
            if run.hot_at is None:
                return runs
            in_row = 0 if run.hot_at > start else in_row
            start = run.hot_at
            where = (f"{celsius_of(run.hot_milli)} C ({self._sensor_name(run.hot_sensor)}) > {self.max_temp:g} C "
                     f"before model {start + 1} of {n} in batch {k}")
            if in_row >= self.max_waits:
                log.warning("device %s still at %s after %d wait(s) in a row: measuring the rest of the batch "
                            "anyway (rows flagged hot)", self.serial, where, in_row)
                gave_up = True
                continue
            log.warning("device %s at %s: cooling down %g s (%d/%d)", self.serial, where, self.cooldown, in_row + 1,
                        self.max_waits)
            t0 = time.monotonic()
            self.cooling = True
            try:
                time.sleep(self.cooldown)
            finally:
                self.cooling = False
            waited += time.monotonic() - t0
            waits, in_row = waits + 1, in_row + 1

    def _run_script(self, k: int, bdir: str, start: int, n: int, limit: float, args: list[str],
                    gated: bool) -> ScriptRun:
        """One adb shell running run_batch.sh over batch k's models from index `start` on, stopping
        before a model while the phone is above max_temp when `gated`."""
        token = secrets.token_hex(8)
        gate = str(self._max_milli) if gated else "-"
        cmd = " ".join(shlex.quote(a) for a in [
            "sh", f"{self.session}/run_batch.sh", bdir, token, self.mask, str(limit), self.rt.graph_prefix, gate,
            str(start), self.runner_path, *args])
        _, out, err = self._shell(cmd, f"batch {k} ({n - start} models)", timeout=(n - start) * limit + 60 + self.adb_timeout)
        run = split_result(out, token)
        run.t_back, run.now = time.perf_counter(), time.time()
        if run.before is None:
            raise LatbenchError(f"device {self.serial}: batch script gave no result: {(err or out).strip()[-300:]}")
        return run

    def _sensor_name(self, sensor: str) -> str:
        """A sensor as run_batch.sh names it (zone index or 'battery') by its zone type."""
        index = int_or_none(sensor)
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
            transport.shell(self.device, cmd + "; true", timeout=15)
        except (LatbenchError, *adb_errors()) as e:
            log.info("device %s: cleanup skipped (%s)", self.serial, e)


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


def _dead_session(name: str) -> bool:
    """Whether a session directory was made by a process of this host that no longer runs."""
    if not name.startswith(SESSION_PREFIX):
        return False
    pid = int_or_none(name[len(SESSION_PREFIX):].split("-", 1)[0])
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _script(name: str) -> bytes:
    """An on-device script shipped beside this module (device_agents/android/)."""
    return (resources.files(__package__) / name).read_bytes()

