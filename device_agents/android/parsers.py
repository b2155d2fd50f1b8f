"""What the on-device runners print, parsed: benchmark_model and onnxruntime_perf_test output as
statistics, a failed run in one line, run_batch.sh's delimited result, and the two runtimes'
differences (RUNTIMES).

Statistics: benchmark_model prints count, min, max, avg and std of its runs and no per-run times,
so its result holds mean/std/min/max/n as given and median/IQR as NaN, estimator "mean";
onnxruntime_perf_test with -s prints P50: there the estimator is the median.
"""
from __future__ import annotations

import math
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from latbench.errors import UsageError
from latbench.measure import Stats

from .facts import NUMBER, Temps, float_or_none, int_or_none, parse_temps

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
    out = {k: float(v) for k, v in re.findall(rf"(\w+)=({NUMBER})", line[i:])}
    return out if "count" in out else None


_CURRENT = re.compile(rf"Inference timings in us: Init: ({NUMBER}), First inference: ({NUMBER}), "
                      rf"Warmup \(avg\): ({NUMBER}), Inference \(avg\): ({NUMBER})")
_PRE2020 = re.compile(rf"Average inference timings in us: Warmup: ({NUMBER}), Init: ({NUMBER}), "
                      rf"(?:Inference|no stats): ({NUMBER})")


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
    m = re.search(rf"{label}:\s*({NUMBER})\s*{unit}", text)
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


@dataclass(frozen=True)
class Runtime:
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
    "tflite": Runtime("benchmark_model", "benchmark_model", ".tflite", "--help", "--graph=", "tflite",
                       parse_benchmark_model, ("starting!", "benchmark_model")),
    "ort": Runtime("onnxruntime_perf_test", "onnxruntime_perf_test", ".onnx", "-h", "", "ort",
                    parse_perf_test, ("perf_test", "onnxruntime")),
}


def runtime_for(runtime: str | None, runner: str) -> str:
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


def flag_value(x: float) -> str:
    return f"{x:g}"

@dataclass(frozen=True)
class Section:
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
class ScriptRun:
    """One run of run_batch.sh: the models it ran, the temperatures around it, where it stopped."""

    sections: dict[int, Section] = field(default_factory=dict)  # index in the batch -> its run
    before: Temps | None = None
    after: Temps | None = None
    done: int | None = None  # index after the last model it got to; None: the output ended early
    hot_at: int | None = None  # the model it did not start because the phone was above max_temp
    hot_milli: int | None = None
    hot_sensor: str = ""
    thermal: dict[str, Any] = field(default_factory=dict)  # the gate's state when it started
    t_back: float = 0.0  # perf_counter and wall clock when its output was back
    now: float = 0.0


def split_result(out: str, token: str) -> ScriptRun:
    """run_batch.sh output -> ScriptRun."""
    mark = f"@@{token} "
    run = ScriptRun()
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
        index = int_or_none(words[1]) if len(words) > 1 else None
        kv = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        if kind == "temps" and len(words) > 1:
            if words[1] == "before":
                run.before = parse_temps(line)
            elif words[1] == "after":
                run.after = parse_temps(line)
        elif kind == "begin" and index is not None:
            cur, head, buf = index, kv, []
        elif kind == "end" and index is not None:
            rc = int_or_none(kv.get("rc", ""))
            run.sections[index] = Section("\n".join(buf), 255 if rc is None else rc, float_or_none(kv.get("t0")),
                                           float_or_none(kv.get("t1")), int_or_none(head.get("temp", "")), head.get("at", ""))
            cur, buf = None, []
        elif kind == "hot" and index is not None:
            run.hot_at, run.hot_milli, run.hot_sensor = index, int_or_none(kv.get("temp", "")), kv.get("at", "")
        elif kind == "done":
            run.done = index if index is not None else 0
    return run


