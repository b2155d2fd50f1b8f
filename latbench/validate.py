"""Predicted vs measured end-to-end latency: measure whole subnets, calibrate, score predictors.

A subnet is measured end to end with the agent (and settings) its table was profiled with: ort
times the torch subnet exported to ONNX, tflite the subnet as one .tflite model (the model a
phone would run), cpu/cuda the torch module itself. Predictions are scored against the plain
yardstick users time with their own loop (latbench.yardstick: fresh sessions, warm-up, >= 50
runs, median of K interleaved passes) with its noise ceiling beside them, and again against
latbench's own estimator (interleaved rounds on fresh builds, each batch's speed taken out), a
second labelled row set. Predictors: the table's own (uncalibrated, and calibrated on other
subnets), and two baselines fitted or measured in the same run: latency linear in FLOPs, and the
plain sum of separately measured unfused ops. torch, onnx, scipy and matplotlib are imported
only when used.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .device import DeviceProfile
from .errors import LatbenchError, UsageError
from .measure import Stats, TimingSettings, time_batch
from .ops import OpSpec
from .predict import Calibration, Predictor, Pricer, fit_calibration
from .store import LatencyTable, ProfileMismatchError
from .yardstick import CEILING_PASSES, PLURAL, STATISTICS, NoiseCeiling, Reading, YardstickSettings, noise_ceiling
from .yardstick import measure as yardstick_readings
from .yardstick import measure_batched as yardstick_batched

# progress(task, done, total): the CLI draws bars from it; the library never prints
Progress = Callable[[str, int, int], None]

# predictor names, in report order
UNCALIBRATED, CALIBRATED, OP_SUM, FLOPS = "uncalibrated", "calibrated", "op-sum", "flops-linear"
PREDICTORS = (UNCALIBRATED, CALIBRATED, OP_SUM, FLOPS)
PREDICTOR_HELP = {
    UNCALIBRATED: "table predictor, raw sum of table entries",
    CALIBRATED: "table predictor, scale+offset fitted on the calibration subnets",
    OP_SUM: "sum of unfused single ops timed the same way (op granularity, no fusion), uncalibrated",
    FLOPS: "latency linear in FLOPs, fitted on the calibration subnets",
}


def _quiet(task: str, done: int, total: int) -> None:
    """The default progress callback: nothing."""


# ---------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metrics:
    """How close predictions are to measurements; relative errors as fractions (0.05 = 5%)."""

    n: int
    within5: float  # share of subnets with |pred - meas| / meas <= 5%
    within10: float  # ... <= 10%
    rmspe: float  # root mean squared relative error
    mape: float  # mean absolute relative error
    bias: float  # mean signed relative error (> 0: over-predicts)
    max_abs: float  # largest absolute relative error
    spearman: float  # rank correlation of predicted and measured
    kendall: float  # Kendall's tau-b of predicted and measured

    def to_dict(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """(predicted - measured) / measured, element-wise; measured values must be > 0."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1:
        raise UsageError(f"predicted and measured must be two vectors of one length, got {p.shape} and {m.shape}")
    if p.size and not (m > 0).all():
        raise UsageError("measured latencies must be positive")
    return (p - m) / m


def error_metrics(predicted: Sequence[float], measured: Sequence[float]) -> Metrics:
    """Shares within +-5% / +-10%, RMSPE, MAPE, bias, worst error, Spearman and Kendall."""
    e = relative_errors(predicted, measured)
    n = int(e.size)
    if n == 0:
        nan = math.nan
        return Metrics(0, nan, nan, nan, nan, nan, nan, nan, nan)
    a = np.abs(e)
    eps = 1e-12  # 5% exactly counts as within 5%, whatever the float rounding of p/m
    rho = tau = math.nan
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if n >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        from scipy import stats

        rho = float(stats.spearmanr(p, m).statistic)
        tau = float(stats.kendalltau(p, m).statistic)
    return Metrics(
        n=n, within5=float(np.mean(a <= 0.05 + eps)), within10=float(np.mean(a <= 0.10 + eps)),
        rmspe=float(np.sqrt(np.mean(e * e))), mape=float(np.mean(a)), bias=float(np.mean(e)),
        max_abs=float(a.max()), spearman=rho, kendall=tau,
    )


# ---------------------------------------------------------------------- subnets
def covered_resolutions(table: LatencyTable, space) -> tuple[int, ...]:
    """The space's resolutions the table's rows were profiled for (rows record extra["resolutions"])."""
    if space.resolution_position is None:
        return space.resolutions
    seen: set[int] = set()
    for r in table.conn.execute("SELECT extra FROM measurements WHERE status = 'ok'"):
        seen.update(int(x) for x in json.loads(r[0] or "{}").get("resolutions", ()))
    res = tuple(r for r in space.resolutions if r in seen)
    if not res:
        raise UsageError(f"{table.path} records no resolution of space {space.name!r} "
                         f"(it was not profiled from that space): pass --resolution")
    return res


def network_id(space, config) -> tuple[str, ...]:
    """What makes two configs the same network: their block keys (unused positions ignored)."""
    return tuple(b.key for b in space.blocks(config))


def sample_subnets(space, n: int, seed: int, resolutions: Sequence[int] | None = None) -> np.ndarray:
    """n random configs of distinct networks, each at a resolution drawn from `resolutions`."""
    if n < 0:
        raise UsageError(f"number of subnets must be >= 0, got {n}")
    res = space.check_resolutions(resolutions)
    rng = np.random.default_rng(seed)
    rpos = space.resolution_position
    res_idx = [list(space.resolutions).index(r) for r in res] if rpos is not None else []
    out: list[np.ndarray] = []
    seen: set[tuple[str, ...]] = set()
    tries = 0
    while len(out) < n:
        batch = space.sample(rng, max(16, 2 * (n - len(out))))
        if rpos is not None:
            batch[:, rpos] = rng.choice(res_idx, len(batch))
        for cfg in batch:
            tries += 1
            nid = network_id(space, cfg)
            if nid not in seen:
                seen.add(nid)
                out.append(cfg)
                if len(out) == n:
                    break
        if tries > 50 * n + 1000:
            raise UsageError(f"space {space.name!r} has fewer than {n} distinct subnets at resolutions "
                             f"{', '.join(map(str, res))}: ask for fewer")
    return np.array(out, dtype=np.int64).reshape(n, space.n_positions)


def subnet_flops(space, config) -> int:
    """Multiply-accumulate FLOPs of the whole subnet (sum over its blocks)."""
    return int(sum(b.flops for b in space.blocks(config)))


def subnet_resolution(space, config) -> int:
    """The subnet's input resolution (its input height)."""
    return int(space.input_shape(config)[2])


# ---------------------------------------------------------------------- agents
def profile_settings(profile: DeviceProfile) -> dict[str, Any]:
    """The agent name and settings (threads, opt_level, boundary, xnnpack) that reproduce `profile`
    here (an ort profile from before boundaries were recorded timed each op's own graph)."""
    opts = dict(profile.options)
    out: dict[str, Any] = {"device": profile.agent, "threads": profile.threads}
    if profile.agent == "ort":
        out.update(opt_level=opts.get("opt_level", "all"), boundary=opts.get("boundary", "graph"))
    elif profile.agent == "tflite":
        out["xnnpack"] = profile.delegate == "xnnpack"
    elif profile.agent == "android":  # the runner and settings the profile recorded; serial: the same phone
        info = profile.info or {}
        out.update(delegate=profile.delegate, runtime=profile.runtime,
                   fixed_performance=opts.get("fixed_performance_mode", "off") != "off",
                   runner=(info.get("runner") or {}).get("path"), serial=info.get("serial"),
                   cpus=info.get("cpus_option"), max_temp=info.get("max_temp"), cooldown=info.get("cooldown_s"),
                   batch_size=info.get("batch_size"))
    return {k: v for k, v in out.items() if v is not None}


def check_agent(agent, table: LatencyTable) -> DeviceProfile:
    """The table's profile, after checking the agent measures under exactly that profile."""
    have = table.profile
    if have is None:
        raise UsageError(f"{table.path}: the table has no device profile (nothing was profiled into it)")
    mine = agent.profile
    if mine.id != have.id:
        diffs = "; ".join(have.differences(mine))
        raise ProfileMismatchError(
            f"{table.path} was profiled on {have.describe()}, but this agent is {mine.describe()} "
            f"({diffs}): measure with the table's device and settings")
    return have


def table_timing(table: LatencyTable) -> TimingSettings | None:
    """The timing settings most of the table's ok rows were measured with, if recorded."""
    counts: dict[str, int] = {}
    for r in table.conn.execute("SELECT settings FROM measurements WHERE status = 'ok'"):
        t = json.loads(r[0] or "{}").get("timing")
        if isinstance(t, dict):
            k = json.dumps(t, sort_keys=True)
            counts[k] = counts.get(k, 0) + 1
    if not counts:
        return None
    return TimingSettings.from_dict(json.loads(max(counts, key=counts.get)))


# what a table row's estimator prices, in words (the store's ESTIMATORS; others by their name)
PRICES = {"median": "medians", "mean": "means", "min": "minimums",
          "round_min": "fastest-round medians", "value": "imported values (statistic not recorded)"}


@dataclass(frozen=True)
class TableStatistic:
    """The estimator of a table's ok rows (the most common one) and how many rows use each."""

    estimator: str
    counts: dict[str, int]

    @property
    def prices(self) -> str:
        return PRICES.get(self.estimator, f"{self.estimator} values")

    def describe(self) -> str:
        """e.g. 'means (96 rows)', or with the others when the rows are mixed."""
        others = [f"{n} {e}" for e, n in sorted(self.counts.items()) if e != self.estimator]
        return (f"{self.prices} ({self.counts.get(self.estimator, 0)} rows"
                + (f"; also {', '.join(others)}" if others else "") + ")")

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "prices": self.prices, "counts": dict(self.counts)}


def table_statistic(table: LatencyTable) -> TableStatistic:
    """What the table's prices are: its ok rows' estimator column (the most common one)."""
    counts = table.estimators()
    return TableStatistic(max(counts, key=lambda e: (counts[e], e)) if counts else "", counts)


def statistic_lines(table: TableStatistic, yardstick: YardstickSettings) -> list[str]:
    """The statistics a report compares, and one more line when they are of different kinds."""
    lines = [f"statistic: the table prices {table.describe()}; the yardstick reads the {yardstick.describe()}"]
    if table.estimator != yardstick.statistic:
        like = f" (--statistic {table.estimator} reads {table.prices})" if table.estimator in STATISTICS else ""
        lines.append(f"the table prices {table.prices}, the yardstick reads {PLURAL[yardstick.statistic]}: "
                     f"the two statistics differ, and so may the figures below{like}")
    return lines


# ---------------------------------------------------------------------- end-to-end measurement
def export_onnx(space, config) -> bytes:
    """The torch subnet (`space.build`) exported to ONNX (opset 17, TorchScript exporter), as bytes."""
    from .errors import require

    torch = require("torch", "torch")
    require("onnx", "ort")
    module = space.build(config).eval()
    x = torch.zeros(space.input_shape(config))
    buf = io.BytesIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing runs the convs once: one thread is faster on a busy host
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, once per subnet
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], do_constant_folding=True)
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


def tflite_model(space, config, seed: int = 0) -> bytes:
    """The subnet as one .tflite model (device_agents' chain builder, canonical weights)."""
    from device_agents.tflite_build import build_tflite_chain
    from device_agents.weights import op_weights

    blocks = space.blocks(config)
    return build_tflite_chain(blocks, [op_weights(b, seed + i) for i, b in enumerate(blocks)])


BUILDS = 3  # independently built models per subnet measurement (see measure_subnets)


MODEL_KINDS = {"ort": "onnx", "tflite": "tflite", "cpu": "torch", "cuda": "torch"}  # agent -> what it runs


def subnet_kind(agent) -> str:
    """The kind of whole model `agent` runs end to end (its `model_kind`, else MODEL_KINDS); others
    are refused."""
    name = getattr(agent, "name", "")
    kind = getattr(agent, "model_kind", None) or MODEL_KINDS.get(name)
    if kind is None:
        raise UsageError(f"end-to-end measurement on device {name!r} is not supported ({', '.join(MODEL_KINDS)}, "
                         f"android)")
    return kind


def times_on_device(agent) -> bool:
    """Whether the runtime times whole models itself, on the device (a phone's benchmark_model):
    the yardstick then reads the runner's report, and latbench's host-side estimator cannot run."""
    return callable(getattr(agent, "time_models", None))


def plain_call_of(agent) -> str:
    """What the yardstick times on `agent`, in words (PLAIN_CALLS, or the agent's own)."""
    return getattr(agent, "plain_call", None) or PLAIN_CALLS[subnet_kind(agent)]


def agent_yardstick(agent, settings: YardstickSettings, asked: bool = True) -> YardstickSettings:
    """`settings` with a statistic the agent's runner reports: a runner that summarises its own
    runs (benchmark_model: average and min) cannot give a median; an unasked default becomes the
    runner's first statistic, an asked one it cannot give is refused in one line."""
    offered = tuple(getattr(agent, "plain_statistics", STATISTICS))
    if settings.statistic in offered:
        return settings
    if not asked:
        return dataclasses.replace(settings, statistic=offered[0])
    raise UsageError(f"--statistic {settings.statistic}: {plain_call_of(agent)} reports only "
                     f"{', '.join(offered)} of its runs")


def subnet_model(agent, space, config) -> tuple[str, Any]:
    """What `agent` runs end to end for `config`, built once: ("onnx", (bytes, input shape)) for
    ort (the torch subnet exported), ("tflite", bytes) (the subnet as one .tflite), ("torch",
    (module, input shape)) for cpu/cuda."""
    kind = subnet_kind(agent)
    if kind == "onnx":
        return kind, (export_onnx(space, config), space.input_shape(config))
    if kind == "tflite":
        return kind, tflite_model(space, config, agent.seed)
    return kind, (space.build(config), space.input_shape(config))


def prepare_built(agent, model: tuple[str, Any]):
    """A fresh runnable of a `subnet_model`: its own session, interpreter or module copy (so its
    buffers get their own place in memory), ready to time side by side with others."""
    kind, art = model
    if kind == "onnx":
        return agent.prepare_model(*art)
    if kind == "tflite":
        return agent.prepare_model(art)
    import copy

    return agent.prepare_module(copy.deepcopy(art[0]), art[1])


# the call the yardstick times, by model kind (plain_built)
PLAIN_CALLS = {"onnx": "session.run with a numpy input", "tflite": "interpreter.invoke() on inputs set once",
               "torch": "module(x) under inference_mode"}


def plain_built(agent, model: tuple[str, Any]):
    """A fresh runnable of a `subnet_model` as users time it (PLAIN_CALLS): ort's session.run
    without IOBinding; LiteRT's and torch's prepared runnables already are the plain call."""
    kind, art = model
    if kind == "onnx":
        return agent.plain_runner(*art)
    return prepare_built(agent, model)


def model_bytes(model: tuple[str, Any]) -> bytes:
    """The file a device runner is handed for a `subnet_model` (.onnx or .tflite bytes)."""
    kind, art = model
    if kind == "onnx":
        return art[0]
    if kind == "tflite":
        return art
    raise UsageError(f"a {kind} model has no file form for a device runner")


def prepare_subnet(agent, space, config):
    """One runnable of `config` end to end (see subnet_model, prepare_built)."""
    return prepare_built(agent, subnet_model(agent, space, config))


def time_subnets(agent, prepared: Sequence[Any], timing: TimingSettings) -> list[Stats]:
    """Time prepared subnets `timing.interleave` at a time in `timing.rounds` interleaved rounds,
    always back to back: a whole network is its own cache context, whatever the table's was."""
    warm = timing.warm()
    out: list[Stats] = []
    with agent.state():  # e.g. torch's thread count and inference mode, restored after
        for i in range(0, len(prepared), timing.interleave):
            batch = prepared[i:i + timing.interleave]
            for t in time_batch(batch, warm, sync=agent.synchronizer()):
                if t.error is not None:
                    raise LatbenchError(f"end-to-end run failed: {type(t.error).__name__}: {t.error}") from t.error
                out.append(t.stats)
    return out


@dataclass(frozen=True)
class Builds:
    """One item's builds as measured, in build order: each build's Stats and the interleaved
    batch it was timed in (batches are numbered in one `measure_built` call)."""

    stats: tuple[Stats, ...]
    batches: tuple[int, ...]

    def sorted(self) -> list[Stats]:
        """The builds' Stats, fastest estimate first."""
        return sorted(self.stats, key=estimate)

    def middle(self) -> Stats:
        """The build whose estimate is the median (the lower middle of an even count): a real run."""
        runs = self.sorted()
        return runs[(len(runs) - 1) // 2]


def measure_built(agent, items: Sequence[Any], timing: TimingSettings, builds: int = BUILDS,
                  done: Callable[[int], None] | None = None,
                  model: Callable[[Any], tuple[str, Any]] = lambda m: m) -> list[Builds]:
    """Each item's model (`model(item)`, made once and kept while its builds are timed) timed on
    `builds` fresh runnables, each build in another interleaved batch; `done(n)` is told how many
    items are measured after each batch.

    Items go in groups of `timing.interleave // builds`; batch b times build k of group b - k,
    so an item's builds run in consecutive batches, tens of seconds apart, and each batch holds
    builds of `builds` groups. A slow minute of the host (seen here moving a whole batch by
    5-15%) then slows one build of many items, and the overlap lets `batch_adjusted` tell the
    batch's speed from the items' own latencies."""
    if builds < 1:
        raise UsageError(f"builds must be >= 1, got {builds}")
    if len(items) == 0:
        return []
    per_batch = max(1, timing.interleave // builds)
    groups = [list(range(i, min(len(items), i + per_batch))) for i in range(0, len(items), per_batch)]
    runs: list[list[Stats]] = [[] for _ in items]
    where: list[list[int]] = [[] for _ in items]
    models: dict[int, tuple[str, Any]] = {}
    finished = 0
    for b in range(len(groups) + builds - 1):
        slots = [i for k in range(builds) if 0 <= b - k < len(groups) for i in groups[b - k]]
        for i in slots:
            if i not in models:
                models[i] = model(items[i])
        stats = time_subnets(agent, [prepare_built(agent, models[i]) for i in slots], timing)
        for i, st in zip(slots, stats):
            runs[i].append(st)
            where[i].append(b)
        if b - builds + 1 >= 0:  # this batch timed the last build of group b - builds + 1
            for i in groups[b - builds + 1]:
                models.pop(i, None)
            finished += len(groups[b - builds + 1])
            if done:
                done(finished)
    return [Builds(tuple(r), tuple(w)) for r, w in zip(runs, where)]


def batch_adjusted(items: Sequence[Builds], max_iter: int = 200) -> tuple[np.ndarray, dict[int, float]]:
    """Each item's latency (ms) at the typical batch's speed, and each batch's speed factor.

    Fits log(estimate of item i in batch b) = a_i + c_b by median polish (Tukey): alternately
    a_i = median over i's builds of (y - c_b) and c_b = median over b's builds of (y - a_i),
    with the c_b centred on their median. A batch's slow or fast spell is common to all it
    holds, so c_b takes it out; medians keep one odd build from moving a whole batch. With one
    build per item the batches share no item, the c_b stay 0 and each item keeps its estimate."""
    ii = np.array([i for i, it in enumerate(items) for _ in it.stats], dtype=np.int64)
    bb = np.array([b for it in items for b in it.batches], dtype=np.int64)
    y = np.log([estimate(s) for it in items for s in it.stats])
    if y.size == 0:
        return np.zeros(0), {}
    batches, bidx = np.unique(bb, return_inverse=True)
    c = np.zeros(batches.size)
    a = np.zeros(len(items))
    for _ in range(max_iter):
        a = _group_medians(y - c[bidx], ii, len(items))
        c_new = _group_medians(y - a[ii], bidx, batches.size)
        c_new -= np.median(c_new)
        moved = float(np.max(np.abs(c_new - c)))
        c = c_new
        if moved < 1e-10:
            break
    a = _group_medians(y - c[bidx], ii, len(items))
    return np.exp(a), {int(b): float(np.exp(x)) for b, x in zip(batches, c)}


def _group_medians(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """The median of `values` within each of n groups (labels 0..n-1; a group must be non-empty)."""
    order = np.lexsort((values, groups))
    v, g = values[order], groups[order]
    starts = np.searchsorted(g, np.arange(n), side="left")
    ends = np.searchsorted(g, np.arange(n), side="right")
    lo, hi = (starts + ends - 1) // 2, (starts + ends) // 2
    return (v[lo] + v[hi]) / 2


def measure_subnet(agent, space, config, timing: TimingSettings = TimingSettings()) -> Stats:
    """End-to-end latency of one subnet with `agent` (ort: exported ONNX; tflite: one .tflite; cpu: torch)."""
    return time_subnets(agent, [prepare_subnet(agent, space, config)], timing)[0]


def estimate(stats: Stats) -> float:
    """What latbench's estimator reads of one build: the fastest round's median when timed in
    rounds, else the median (the tables' estimator before the mean)."""
    return stats.round_min


@dataclass
class NoiseFloor:
    """One subnet measured `repeats` times, each on a freshly built model: how much its estimate
    moves from run to run."""

    config: Any
    estimates: list[float]  # ms (see `estimate`)
    iqr_ratios: list[float]

    @property
    def spread(self) -> float:
        """(max - min) / median of the estimates."""
        m = np.asarray(self.estimates)
        return float(np.ptp(m) / np.median(m)) if m.size else math.nan

    @property
    def cv(self) -> float:
        """Coefficient of variation of the estimates (std / mean)."""
        m = np.asarray(self.estimates)
        return float(m.std(ddof=1) / m.mean()) if m.size > 1 else math.nan

    def within(self, tol: float) -> float:
        """Share of the estimates within +-tol of their median: a ceiling for any predictor."""
        m = np.asarray(self.estimates)
        return float(np.mean(np.abs(m / np.median(m) - 1) <= tol + 1e-12)) if m.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "estimates_ms": self.estimates, "iqr_ratios": self.iqr_ratios,
                "spread": self.spread, "cv": self.cv, "within5": self.within(0.05), "within10": self.within(0.10)}


def noise_floor(agent, space, config, repeats: int, timing: TimingSettings, builds: int = BUILDS,
                progress: Progress = _quiet) -> NoiseFloor:
    """Measure one subnet `repeats` times exactly as validation subnets are measured (each time on
    `builds` freshly built runnables, with the batches' speed taken out: `batch_adjusted`)."""
    model = subnet_model(agent, space, config)
    built = measure_built(agent, [model] * repeats, timing, builds, lambda n: progress("noise floor", n, repeats))
    adjusted, _ = batch_adjusted(built)
    return NoiseFloor(space.to_published(config), [float(x) for x in adjusted],
                      [b.middle().iqr_ratio for b in built])


# ---------------------------------------------------------------------- table drift
RETIME = 24  # table entries timed again before and after the subnets (one interleaved batch)


@dataclass
class Retime:
    """Table entries timed again during a validation exactly as the profile timed them: how far
    this machine's speed has moved since the table was taken (a shared host drifts by 5-10% over
    tens of minutes). A diagnostic: predictions are scored as the table stands."""

    keys: list[str]
    stored_ms: list[float]  # the table's estimates
    passes: dict[str, list[float]]  # "before"/"after" the subnets: ms per key (nan where it failed)

    def ratio(self, name: str) -> float:
        """Median of now / stored over the pass's keys."""
        r = np.asarray(self.passes[name]) / np.asarray(self.stored_ms)
        r = r[np.isfinite(r)]
        return float(np.median(r)) if r.size else math.nan

    @property
    def drift(self) -> float:
        """The machine's speed during the validation over its speed in the table: the geometric
        mean of the passes' median ratios (below 1: faster now)."""
        rs = [self.ratio(k) for k in self.passes]
        rs = [r for r in rs if math.isfinite(r) and r > 0]
        return float(np.exp(np.mean(np.log(rs)))) if rs else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "stored_ms": self.stored_ms, "passes_ms": self.passes,
                "ratios": {k: self.ratio(k) for k in self.passes}, "drift": self.drift}


def retime_ops(table: LatencyTable, n: int, seed: int) -> list[OpSpec]:
    """`n` of the table's ok entries (a positive estimate), a seeded choice: the same ops for the
    same table and seed."""
    import random

    stored = table.estimates()
    ops = [op for op in table.ops() if stored.get(op.key, 0) > 0]
    return random.Random(seed).sample(ops, min(n, len(ops)))


def retime_entries(agent, ops: Sequence[OpSpec], timing: TimingSettings) -> list[float]:
    """Time `ops` again with `agent` under `timing` (the table's own settings): ms each, by the
    estimator the table stores; nan where a measurement failed."""
    out = []
    for m in agent.measure(ops, timing):
        est = m.settings.get("estimator", timing.estimator)
        out.append(float(getattr(m.stats, est)) if m.ok and m.stats is not None else math.nan)
    return out


# ---------------------------------------------------------------------- measured subnets
@dataclass(frozen=True)
class EstimatorResult:
    """A subnet as latbench's own estimator measures it: `builds` fresh builds in interleaved
    rounds, each in another batch, the batches' speed taken out (`batch_adjusted`)."""

    measured: Stats  # of the build whose estimate is the middle one
    measured_ms: float  # the batch-adjusted estimate
    builds_ms: tuple[float, ...]  # every build's estimate, in build order
    batches: tuple[int, ...]  # the interleaved batch each build was timed in

    def to_dict(self) -> dict[str, Any]:
        s = self.measured
        return {"measured_ms": self.measured_ms, "middle_ms": estimate(s), "median_ms": s.median,
                "p25_ms": s.p25, "p75_ms": s.p75, "samples": s.n, "round_medians_ms": list(s.rounds),
                "builds_ms": list(self.builds_ms), "batches": list(self.batches)}


@dataclass
class SubnetResult:
    """One subnet: its config, its yardstick reading (what predictions are scored against), the
    estimator's measurement when taken, and every predictor's value (ms)."""

    config: Any  # published form
    resolution: int
    flops: int
    yardstick: Reading
    statistic: str  # the yardstick statistic `measured_ms` reads
    predicted: dict[str, float] = field(default_factory=dict)
    misses: int = 0  # table keys priced by the fallback regression
    estimator: EstimatorResult | None = None

    @property
    def measured_ms(self) -> float:
        """The yardstick value: the median over passes of each pass's `statistic`."""
        return self.yardstick.value(self.statistic)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "resolution": self.resolution, "flops": self.flops,
                "measured_ms": self.measured_ms, "yardstick": self.yardstick.to_dict(self.statistic),
                "estimator": self.estimator.to_dict() if self.estimator else None,
                "predicted_ms": dict(self.predicted), "misses": self.misses}


def measure_subnets(agent, space, configs: np.ndarray, predictor: Predictor, yardstick: YardstickSettings,
                    timing: TimingSettings | None = None, task: str = "subnets", progress: Progress = _quiet,
                    builds: int = BUILDS) -> list[SubnetResult]:
    """Measure each config end to end and attach the table predictor's raw value.

    Every model is built once and kept for the run. The yardstick times each in
    `yardstick.passes` interleaved passes, a fresh runnable each (`plain_built`); with `timing`,
    latbench's estimator then times it on `builds` fresh builds (`measure_built`,
    `batch_adjusted`): where a runtime's buffers land in memory moves a whole model's latency
    by up to ~10% on a shared host."""
    models: list[tuple[str, Any]] = []
    progress("building subnets", 0, len(configs))
    for cfg in configs:
        models.append(subnet_model(agent, space, cfg))
        progress("building subnets", len(models), len(configs))
    yardstick = agent_yardstick(agent, yardstick)  # a statistic the runner cannot give is refused here
    if times_on_device(agent):
        if timing is not None:
            raise UsageError(f"latbench's estimator row times on the host; {agent.name} times on the device: "
                             f"use --no-estimator-row")
        readings = yardstick_batched(
            len(models), lambda idx: agent.time_models([model_bytes(models[i]) for i in idx], yardstick), yardstick,
            agent.batch_size, lambda d, t: progress(task, d, t))
    else:
        readings = yardstick_readings(len(models), lambda i: plain_built(agent, models[i]), yardstick, agent.state,
                                      agent.synchronizer(), lambda d, t: progress(task, d, t))
    estimated: list[EstimatorResult | None] = [None] * len(models)
    if timing is not None:
        est_task = f"{task}, latbench estimator"
        progress(est_task, 0, len(models))
        runs = measure_built(agent, list(range(len(models))), timing, builds,
                             lambda k: progress(est_task, k, len(models)), model=models.__getitem__)
        adjusted, _ = batch_adjusted(runs)
        estimated = [EstimatorResult(b.middle(), float(ms), tuple(estimate(x) for x in b.stats), b.batches)
                     for b, ms in zip(runs, adjusted)]
    out = []
    for cfg, reading, est in zip(configs, readings, estimated):
        raw, misses = predictor.predict_raw(cfg)
        out.append(SubnetResult(space.to_published(cfg), subnet_resolution(space, cfg), subnet_flops(space, cfg),
                                reading, yardstick.statistic, {UNCALIBRATED: raw}, misses, est))
    return out


def _measured(results: Sequence[SubnetResult]) -> np.ndarray:
    return np.array([r.measured_ms for r in results], dtype=np.float64)


def _estimated(results: Sequence[SubnetResult]) -> np.ndarray:
    """The estimator row's measurements (NaN where it was not taken)."""
    return np.array([r.estimator.measured_ms if r.estimator else math.nan for r in results], dtype=np.float64)


def _predicted(results: Sequence[SubnetResult], name: str) -> np.ndarray:
    return np.array([r.predicted.get(name, math.nan) for r in results], dtype=np.float64)


def score(results: Sequence[SubnetResult], measured: np.ndarray,
          refitted: Mapping[str, np.ndarray] | None = None) -> dict[str, Metrics]:
    """Every predictor the results carry, scored against `measured` (one value per result);
    `refitted` replaces the predictions of the fitted predictors (calibrated, flops-linear)."""
    out = {}
    for name in PREDICTORS:
        p = refitted[name] if refitted and name in refitted else _predicted(results, name)
        ok = np.isfinite(p) & np.isfinite(measured)
        if ok.any():
            out[name] = error_metrics(p[ok], measured[ok])
    return out


def ceiling_of(results: Sequence[SubnetResult]) -> NoiseCeiling:
    """The yardstick's noise ceiling over these subnets, in the statistic they are scored by."""
    return noise_ceiling([r.yardstick for r in results], results[0].statistic if results else "median")


# ---------------------------------------------------------------------- calibration
def calibration_key(space, granularity: str) -> str:
    """Where Predictor.from_table looks for a space's calibration in the table's meta."""
    return f"{space.name}/{granularity}"


@dataclass
class CalibrationRun:
    """A calibration: the fit, the subnets it was fitted on (against the yardstick), its in-sample
    errors, the yardstick's noise ceiling on those subnets and the table's statistic."""

    calibration: Calibration
    subnets: list[SubnetResult]
    before: Metrics  # raw table predictor vs the yardstick
    after: Metrics  # calibrated, in sample
    key: str
    yardstick: YardstickSettings = YardstickSettings()
    ceiling: NoiseCeiling | None = None
    table_statistic: TableStatistic | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "calibration": self.calibration.to_dict(), "before": self.before.to_dict(),
                "after": self.after.to_dict(), "yardstick": self.yardstick.to_dict(),
                "noise_ceiling": self.ceiling.to_dict() if self.ceiling else None,
                "table_statistic": self.table_statistic.to_dict() if self.table_statistic else None,
                "subnets": [r.to_dict() for r in self.subnets]}


def calibrate(table: LatencyTable, space, agent, n: int = 10, seed: int = 0,
              resolutions: Sequence[int] | None = None, yardstick: YardstickSettings | None = None,
              progress: Progress = _quiet) -> CalibrationRun:
    """Measure n random subnets with the yardstick and fit yardstick ~= scale * predicted + offset."""
    if n < 1:
        raise UsageError(f"calibration needs at least one subnet, got --n {n}")
    yardstick = agent_yardstick(agent, yardstick or YardstickSettings(seed=seed), asked=yardstick is not None)
    check_agent(agent, table)
    res = resolutions or covered_resolutions(table, space)
    predictor = Predictor.from_table(table, space, use_calibration=False)
    configs = sample_subnets(space, n, seed, res)
    subnets = measure_subnets(agent, space, configs, predictor, yardstick, None, "calibration subnets", progress)
    raw, meas = _predicted(subnets, UNCALIBRATED), _measured(subnets)
    cal = fit_calibration(raw, meas, space.name, predictor.granularity)
    for r in subnets:
        r.predicted[CALIBRATED] = float(cal.apply(r.predicted[UNCALIBRATED]))
    return CalibrationRun(cal, subnets, error_metrics(raw, meas), error_metrics(cal.apply(raw), meas),
                          calibration_key(space, predictor.granularity), yardstick, ceiling_of(subnets),
                          table_statistic(table))


def store_calibration(table: LatencyTable, run: CalibrationRun, **facts: Any) -> None:
    """Write the fit into the table's meta "calibration" (other spaces' entries kept); `facts`
    (seed, resolutions...) and the yardstick's settings are stored beside it for the record."""
    cals = dict(table.meta_get("calibration") or {})
    cals[run.key] = {**run.calibration.to_dict(), "profile_id": table.profile.id if table.profile else "",
                     "taken_at": time.time(), "in_sample": run.after.to_dict(),
                     "uncalibrated": run.before.to_dict(), "yardstick": run.yardstick.to_dict(), **facts}
    table.meta_set("calibration", cals)


# ---------------------------------------------------------------------- op-level baseline
def op_table_path(table_path: str) -> str:
    """The default op-level baseline table beside a table: t.sqlite -> t.op-none.sqlite."""
    root, ext = os.path.splitext(table_path)
    return f"{root}.op-none{ext or '.sqlite'}"


def subnet_ops(space, configs: Iterable[np.ndarray]) -> list:
    """The unique unfused op-granularity ops of the given subnets."""
    from . import ops as O

    found: dict[str, Any] = {}
    for cfg in configs:
        for b in space.blocks(cfg):
            for op in O.expand(b):
                found.setdefault(op.key, op)
    return list(found.values())


def op_costs(path: str, agent, space, configs: np.ndarray, timing: TimingSettings,
             progress: Progress = _quiet) -> tuple[Pricer, int]:
    """A strict pricer of every unfused op of `configs`, from the op table at `path` (same profile
    as the agent, granularity op, fusion none, the same cache context as `timing`); keys it lacks
    (and its per-call cost) are profiled into it first. Returns it and how many ops were profiled."""
    from .profiling import check_run_meta, measure_invocation, profile_into

    ops = subnet_ops(space, configs)
    with LatencyTable.open(path, agent.profile) as t:
        check_run_meta(t, "op", "none", space.name, timing)
        measure_invocation(t, agent, timing)
        have = t.keys(status="ok")
        missing = [op for op in ops if op.key not in have]
        done = [0]

        def tick(_m) -> None:
            done[0] += 1
            progress("op-level baseline ops", done[0], len(missing))

        if missing:
            progress("op-level baseline ops", 0, len(missing))
            run = profile_into(t, agent, missing, timing, retry_failed=True, on_result=tick)
            if run.interrupted:
                raise KeyboardInterrupt
        return Pricer.from_table(t, "op", "none", strict=True), len(missing)


# ---------------------------------------------------------------------- validation
ESTIMATOR_ROW = "vs latbench estimator"  # the label of the second row set


@dataclass
class ValidationReport:
    """Everything one validation run measured and concluded. `metrics` score the predictors
    against the yardstick; `estimator_metrics` score the same predictions against latbench's
    estimator (None when it was not measured)."""

    table: str
    space: str
    profile: DeviceProfile
    granularity: str
    fusion: str
    timing: TimingSettings  # the estimator row's, the op baseline's and the re-timed entries'
    seed: int
    resolutions: tuple[int, ...]
    subnets: list[SubnetResult]
    calibration_subnets: list[SubnetResult]
    calibration: Calibration | None  # fitted against the yardstick
    flops_fit: tuple[float, float] | None  # ms per MFLOP, offset ms (against the yardstick)
    metrics: dict[str, Metrics]
    yardstick: YardstickSettings = YardstickSettings()
    plain_call: str = ""  # what the yardstick timed (PLAIN_CALLS)
    ceiling: NoiseCeiling | None = None
    table_statistic: TableStatistic | None = None
    estimator_metrics: dict[str, Metrics] | None = None
    estimator_note: str = ""  # why the estimator row is missing
    op_table: str | None = None
    op_profiled: int = 0
    stored_calibration: dict[str, Any] | None = None  # what the table held (not used here)
    noise: NoiseFloor | None = None
    invocation_ms: float = 0.0  # the table's per-call cost (see latbench.predict)
    builds: int = 1  # the estimator's fresh builds per subnet
    retime: Retime | None = None  # table entries timed again before and after the subnets
    wall_s: float = 0.0
    loadavg: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def predictors(self) -> list[str]:
        return [p for p in PREDICTORS if p in self.metrics]

    def estimator_ratio(self) -> float:
        """Median over subnets of estimator / yardstick: how the two rows' measurements differ."""
        r = _estimated(self.subnets) / _measured(self.subnets)
        r = r[np.isfinite(r)]
        return float(np.median(r)) if r.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        est = None
        if self.estimator_metrics is not None:
            est = {"label": ESTIMATOR_ROW, "timing": self.timing.to_dict(), "builds": self.builds,
                   "ratio_to_yardstick": self.estimator_ratio(),
                   "metrics": {k: v.to_dict() for k, v in self.estimator_metrics.items()}}
        return {
            "table": self.table, "space": self.space, "profile": self.profile.to_dict(),
            "granularity": self.granularity, "fusion": self.fusion, "timing": self.timing.to_dict(),
            "seed": self.seed, "resolutions": list(self.resolutions), "n": len(self.subnets),
            "calibrate_n": len(self.calibration_subnets),
            "yardstick": {**self.yardstick.to_dict(), "reads": self.yardstick.describe(),
                          "plain_call": self.plain_call},
            "table_statistic": self.table_statistic.to_dict() if self.table_statistic else None,
            "noise_ceiling": self.ceiling.to_dict() if self.ceiling else None,
            "metrics": {k: self.metrics[k].to_dict() for k in self.predictors},
            "estimator": est, "estimator_note": self.estimator_note or None,
            "predictors": {k: PREDICTOR_HELP[k] for k in self.predictors},
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "flops_fit": ({"ms_per_mflop": self.flops_fit[0], "offset_ms": self.flops_fit[1]}
                          if self.flops_fit else None),
            "op_table": self.op_table, "op_profiled": self.op_profiled,
            "stored_calibration": self.stored_calibration,
            "noise": self.noise.to_dict() if self.noise else None,
            "invocation_ms": self.invocation_ms,
            "retime": self.retime.to_dict() if self.retime else None,
            "wall_s": round(self.wall_s, 2), "loadavg": list(self.loadavg),
            "subnets": [r.to_dict() for r in self.subnets],
            "calibration_subnets": [r.to_dict() for r in self.calibration_subnets],
        }

    def summary_lines(self) -> list[str]:
        """The report as plain text lines (the CLI prints them; benchmarks too)."""
        t, y = self.timing, self.yardstick
        lines = [
            f"{self.space} on {self.profile.describe()}",
            f"table {self.table} ({self.granularity} granularity, fusion {self.fusion}); "
            f"{len(self.subnets)} subnets at {', '.join(map(str, self.resolutions))} (seed {self.seed}), "
            f"{len(self.calibration_subnets)} other subnets to calibrate; load average "
            f"{' '.join(f'{x:.2f}' for x in self.loadavg)}; {self.wall_s:.0f} s",
            f"table entries timed in {t.context} context"
            + (f" ({t.context_bytes / (1 << 20):.1f} MB read before each call)" if t.context == "network" else "")
            + f", per-call cost {1e3 * self.invocation_ms:.1f} us taken off each entry and added once",
            f"yardstick: each subnet in a fresh runnable ({self.plain_call}), {y.warmup} warm-up runs and "
            f">= {y.warmup_s:g} s, then >= {y.runs} runs and >= {y.min_s:g} s, each run timed alone; {y.passes} "
            f"pass(es), each visiting every subnet in its own shuffled order",
        ]
        if self.table_statistic:
            lines += statistic_lines(self.table_statistic, y)
        meas = _measured(self.subnets)
        spread = np.array([r.yardstick.spread(r.statistic) for r in self.subnets])
        lines.append(f"measured (yardstick): {meas.min():.3f} .. {meas.max():.3f} ms (median {np.median(meas):.3f}); "
                     f"passes spread (max - min) / median: median {_pct(float(np.median(spread)))}, "
                     f"p90 {_pct(float(np.percentile(spread, 90)))}")
        lines += _metric_lines(self.metrics)
        if self.ceiling:
            lines.append(self.ceiling.line())
        if self.calibration:
            c = self.calibration
            lines.append(f"calibration: measured = {c.scale:.4f} x predicted {c.offset_ms:+.4f} ms "
                         f"(n={c.n}, against the yardstick; fitted: {c.form}, the least leave-one-out error)")
        if self.flops_fit:
            lines.append(f"flops fit: measured = {self.flops_fit[0]:.5f} ms/MFLOP x MFLOPs {self.flops_fit[1]:+.4f} ms")
        if self.op_table:
            lines.append(f"op-sum: unfused op table {self.op_table} ({self.op_profiled} ops profiled in this run)")
        if self.estimator_metrics is None:
            lines.append(f"{ESTIMATOR_ROW}: not measured ({self.estimator_note or '--no-estimator-row'})")
        else:
            lines.append(f"{ESTIMATOR_ROW} (the same table prices, calibration and FLOPs line fitted on this row's "
                         f"own calibration subnets; subnets timed back to back in {t.rounds} "
                         f"interleaved round(s), median of >= {t.min_samples} samples a round, stop at IQR/median "
                         f"< {t.target_iqr:g} or {t.max_time_s:g} s, {self.builds} fresh build(s) each in consecutive "
                         f"batches, each batch's speed taken out): its measurements read "
                         f"{self.estimator_ratio():.3f}x the yardstick's (median)")
            lines += _metric_lines(self.estimator_metrics)
        misses = sum(1 for r in self.subnets if r.misses)
        if misses:
            lines.append(f"warning: {misses} subnet(s) used keys missing from the table (priced by the fallback)")
        if self.stored_calibration:
            lines.append(f"the table holds a calibration for this space (n={self.stored_calibration.get('n')}); "
                         f"'calibrated' above is fitted afresh on the calibration subnets")
        if self.retime and math.isfinite(self.retime.drift):
            rt, u = self.retime, self.metrics.get(UNCALIBRATED)
            line = (f"table drift: {len(rt.keys)} table entries timed again as the profile timed them read "
                    + " and ".join(f"{rt.ratio(k):.3f}x ({k} the subnets)" for k in rt.passes)
                    + " their stored values (median)")
            if u is not None:
                d = error_metrics(_predicted(self.subnets, UNCALIBRATED) * rt.drift, meas)
                line += (f"; uncalibrated x {rt.drift:.3f} would score bias {_pct(d.bias, sign=True)}, within +-10% "
                         f"{_pct(d.within10)}, RMSPE {_pct(d.rmspe)} (a diagnostic, not applied)")
            lines.append(line)
        if self.noise:
            nf = self.noise
            lines.append(f"noise floor (latbench estimator): one subnet x{len(nf.estimates)}: {min(nf.estimates):.3f} .. "
                         f"{max(nf.estimates):.3f} ms, spread {_pct(nf.spread)}, CV {_pct(nf.cv)}, "
                         f"within +-5% of their median {_pct(nf.within(0.05))}, +-10% {_pct(nf.within(0.10))}")
        return lines


def _metric_lines(metrics: dict[str, Metrics]) -> list[str]:
    """The predictor table: a header and one row per predictor, in report order."""
    lines = [f"{'predictor':14} {'n':>4} {'<=5%':>6} {'<=10%':>6} {'RMSPE':>7} {'MAPE':>7} "
             f"{'bias':>7} {'max':>7} {'rho':>6} {'tau':>6}"]
    for name in (p for p in PREDICTORS if p in metrics):
        m = metrics[name]
        lines.append(f"{name:14} {m.n:4d} {_pct(m.within5):>6} {_pct(m.within10):>6} {_pct(m.rmspe):>7} "
                     f"{_pct(m.mape):>7} {_pct(m.bias, sign=True):>7} {_pct(m.max_abs):>7} "
                     f"{_num(m.spearman):>6} {_num(m.kendall):>6}")
    return lines


def _pct(x: float, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def fitted(subnets: Sequence[SubnetResult], cal_subnets: Sequence[SubnetResult], measured: np.ndarray,
           space, granularity: str) -> tuple[Calibration | None, tuple[float, float] | None, dict[str, np.ndarray]]:
    """The calibration and the FLOPs line fitted on the calibration subnets' `measured` values
    (one row's measurements), and what each predicts for `subnets`; nothing without them."""
    ok = np.isfinite(measured) & (measured > 0)
    if not cal_subnets or not ok.any():
        return None, None, {}
    cal_subnets = [r for r, good in zip(cal_subnets, ok) if good]
    cal = fit_calibration(_predicted(cal_subnets, UNCALIBRATED), measured[ok], space.name, granularity)
    flops_fit = fit_flops([r.flops for r in cal_subnets], measured[ok])
    mflops = np.array([r.flops for r in subnets], dtype=np.float64) / 1e6
    return cal, flops_fit, {CALIBRATED: cal.apply(_predicted(subnets, UNCALIBRATED)),
                            FLOPS: flops_fit[0] * mflops + flops_fit[1]}


def fit_flops(flops: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares (ms per MFLOP, offset ms); offset alone when fewer than 2 distinct FLOPs."""
    f = np.asarray(flops, dtype=np.float64) / 1e6
    m = np.asarray(measured, dtype=np.float64)
    if f.size == 0:
        raise UsageError("a FLOPs fit needs at least one measured subnet")
    if f.size < 2 or np.ptp(f) == 0:
        return 0.0, float(m.mean())
    a, b = np.polyfit(f, m, 1)
    return float(a), float(b)


def validate(table: LatencyTable, space, agent, n: int = 100, seed: int = 0,
             resolutions: Sequence[int] | None = None, calibrate_n: int = 10,
             timing: TimingSettings | None = None, op_table: str | None = None, op_baseline: bool = True,
             noise: int = 0, progress: Progress = _quiet, builds: int = BUILDS,
             retime: int = RETIME, yardstick: YardstickSettings | None = None,
             estimator_row: bool = True) -> ValidationReport:
    """Measure n random subnets end to end and score every predictor (see PREDICTOR_HELP) on them
    against the yardstick (`yardstick`, default: its defaults with `seed`) and, with
    `estimator_row`, against latbench's estimator under `timing`; `retime` of the table's entries
    are timed again before and after the subnets (`Retime`)."""
    # calibration and FLOPs fit: on `calibrate_n` other networks (disjoint from the n), against the
    # yardstick; op-sum: from an unfused op table of the same profile (`op_table`, default beside the
    # table), whose missing ops are profiled first with the same agent and timing
    if n < 1:
        raise UsageError(f"validation needs at least one subnet, got --n {n}")
    if calibrate_n < 0 or noise < 0 or retime < 0:
        raise UsageError("--calibrate-n, --noise and --retime must be >= 0")
    if builds < 1:  # before the op baseline profiles anything
        raise UsageError(f"--builds must be >= 1, got {builds}")
    yardstick = agent_yardstick(agent, yardstick or YardstickSettings(seed=seed), asked=yardstick is not None)
    on_device = times_on_device(agent)
    if on_device and noise:
        raise UsageError(f"--noise times one subnet with latbench's estimator on the host; {agent.name} times on "
                         f"the device (the yardstick's noise ceiling is reported anyway)")
    estimator_note = "--no-estimator-row" if not estimator_row else ""
    if on_device and estimator_row:
        estimator_row, estimator_note = False, f"{agent.name} times whole models on the device, the estimator on the host"
    t0 = time.perf_counter()
    load0 = _loadavg()
    profile = check_agent(agent, table)
    plain_call = plain_call_of(agent)
    timing = timing or table_timing(table) or TimingSettings()
    res = tuple(resolutions) if resolutions else covered_resolutions(table, space)
    predictor = Predictor.from_table(table, space, use_calibration=False)
    meta = table.meta_get("profile_run") or {}
    configs = sample_subnets(space, n + calibrate_n, seed, res)
    val_cfgs = configs[:n]  # the rest (configs[n:]) are the calibration subnets

    op_path, op_profiled, op_pricer = None, 0, None
    if op_baseline:
        if predictor.granularity == "op" and predictor.pricer.fusion == "none":
            op_path = table.path  # the table is the unfused op table itself
            op_pricer = Pricer.from_table(table, "op", "none", strict=True)
        else:
            op_path = op_table or op_table_path(table.path)
            op_pricer, op_profiled = op_costs(op_path, agent, space, val_cfgs, timing, progress)

    # calibration and validation subnets are measured together, in a seeded shuffled order (and the
    # yardstick's passes shuffle again): a slow spell of the machine (minutes, on a shared host)
    # then hits both groups alike instead of skewing the fit
    order = np.random.default_rng([seed, 2]).permutation(len(configs))
    again = retime_ops(table, retime, seed) if retime else []
    passes = {}
    if again:
        table_settings = table_timing(table) or timing  # as the entries were timed, whatever `timing` says
        progress("table entries timed again", 0, 2)
        passes["before"] = retime_entries(agent, again, table_settings)
    measured = measure_subnets(agent, space, configs[order], predictor, yardstick, timing if estimator_row else None,
                               "validation subnets (with calibration)", progress, builds)
    if again:
        progress("table entries timed again", 1, 2)
        passes["after"] = retime_entries(agent, again, table_settings)
        progress("table entries timed again", 2, 2)
    drift = Retime([op.key for op in again], [table.estimate(op.key) for op in again], passes) if again else None
    by_index = {int(i): r for i, r in zip(order, measured)}
    subnets = [by_index[i] for i in range(n)]
    cal_subnets = [by_index[i] for i in range(n, len(configs))]

    cal, flops_fit, fits = fitted(subnets, cal_subnets, _measured(cal_subnets), space, predictor.granularity)
    for i, (r, cfg) in enumerate(zip(subnets, val_cfgs)):
        for name, values in fits.items():
            r.predicted[name] = float(values[i])
        if op_pricer is not None:
            r.predicted[OP_SUM] = _op_sum(op_pricer, space, cfg)

    noise_run = noise_floor(agent, space, val_cfgs[0], noise, timing, builds, progress) if noise else None
    stored = (table.meta_get("calibration") or {}).get(calibration_key(space, predictor.granularity))
    load1 = _loadavg()
    return ValidationReport(
        table=table.path, space=space.name, profile=profile, granularity=predictor.granularity,
        fusion=meta.get("fusion", predictor.pricer.fusion), timing=timing, seed=seed, resolutions=res,
        subnets=subnets, calibration_subnets=cal_subnets, calibration=cal, flops_fit=flops_fit,
        metrics=score(subnets, _measured(subnets)), yardstick=yardstick,
        plain_call=plain_call, ceiling=ceiling_of(subnets),
        table_statistic=table_statistic(table),
        estimator_metrics=score(subnets, _estimated(subnets), fitted(
            subnets, cal_subnets, _estimated(cal_subnets), space, predictor.granularity)[2]) if estimator_row else None,
        estimator_note=estimator_note, op_table=op_path, op_profiled=op_profiled, stored_calibration=stored,
        noise=noise_run, invocation_ms=predictor.invocation_ms, builds=builds, retime=drift,
        wall_s=time.perf_counter() - t0,
        loadavg=tuple(max(a, b) for a, b in zip(load0, load1)),  # type: ignore[arg-type]
    )


def _op_sum(pricer: Pricer, space, cfg) -> float:
    """The unfused op-level price of a subnet; NaN when an op could not be measured."""
    try:
        return pricer.price(space.blocks(cfg)).raw_ms
    except LatbenchError:
        return math.nan


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return (math.nan, math.nan, math.nan)


# ---------------------------------------------------------------------- outputs
def write_csv(report: ValidationReport, path: str | os.PathLike) -> None:
    """One row per validation subnet: config (published form, JSON), resolution, FLOPs, the
    yardstick value scored against and its passes' spread, each pass's median, mean, p90, min and
    run count (space-separated, in pass order), the estimator row's measurement (`batch_adjusted`),
    its middle build's estimate and samples, every build's estimate (empty without the estimator
    row), and each predictor's value in ms."""
    names = report.predictors
    stats = ("median", "mean", "p90", "min")
    est_cols = ["estimator_ms", "estimator_middle_ms", "estimator_median_ms", "estimator_p25_ms", "estimator_p75_ms",
                "estimator_samples", "estimator_rounds", "estimator_builds_ms"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["config", "resolution", "mflops", "measured_ms", "spread"]
                       + [f"pass_{s}_ms" for s in stats] + ["pass_runs"] + est_cols + ["misses"]
                       + [f"{p}_ms" for p in names])
            for r in report.subnets:
                y = r.yardstick
                row = [json.dumps(r.config, separators=(",", ":")), r.resolution, f"{r.flops / 1e6:.3f}",
                       f"{r.measured_ms:.6g}", f"{y.spread(r.statistic):.4g}"]
                row += [" ".join(f"{x:.6g}" for x in y.values(s)) for s in stats]
                row.append(" ".join(str(p.n) for p in y.passes))
                e = r.estimator
                if e is None:
                    row += [""] * len(est_cols)
                else:
                    m = e.measured
                    row += [f"{e.measured_ms:.6g}", f"{estimate(m):.6g}", f"{m.median:.6g}", f"{m.p25:.6g}",
                            f"{m.p75:.6g}", m.n, len(m.rounds) or 1, " ".join(f"{x:.6g}" for x in e.builds_ms)]
                w.writerow(row + [r.misses] + [f"{r.predicted[p]:.6g}" if p in r.predicted else "" for p in names])
    except OSError as e:
        raise LatbenchError(f"{path}: cannot write: {e.strerror or e}") from None


COLOURS = {UNCALIBRATED: "tab:blue", CALIBRATED: "tab:green", OP_SUM: "tab:red", FLOPS: "tab:orange"}


def plot(report: ValidationReport, path: str | os.PathLike) -> None:
    """Scatter of predicted vs measured (one colour per predictor), the y = x line and a +-10% band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    meas = _measured(report.subnets)
    fig = Figure(figsize=(6.4, 6.0), dpi=110)  # an Agg canvas without pyplot: no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    vals = [meas] + [_predicted(report.subnets, p) for p in report.predictors]
    allv = np.concatenate([v[np.isfinite(v)] for v in vals])
    lo, hi = float(allv.min()) * 0.9, float(allv.max()) * 1.1
    xs = np.linspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="+-10%", zorder=0)
    ax.plot(xs, xs, color="0.3", lw=1, label="y = x", zorder=1)
    for p in report.predictors:
        m = report.metrics[p]
        ax.scatter(meas, _predicted(report.subnets, p), s=14, alpha=0.8, color=COLOURS.get(p),
                   label=f"{p}: {_pct(m.within10)} in +-10%, RMSPE {_pct(m.rmspe)}", zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured end-to-end latency (ms; yardstick: {report.yardstick.describe()})")
    ax.set_ylabel("predicted latency (ms)")
    c = report.ceiling
    ceiling = (f"\nyardstick noise ceiling: {_pct(c.within5)} within +-5%, {_pct(c.within10)} within +-10%"
               if c and c.passes >= CEILING_PASSES else "")
    ax.set_title(f"{report.space}, {report.profile.agent} {report.profile.threads} thread(s), "
                 f"{len(report.subnets)} subnets{ceiling}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise LatbenchError(f"{path}: cannot write: {e.strerror or e}") from None


__all__ = [
    "Metrics", "error_metrics", "relative_errors", "covered_resolutions", "sample_subnets", "network_id",
    "subnet_flops", "profile_settings", "check_agent", "table_timing", "TableStatistic", "table_statistic",
    "statistic_lines", "export_onnx", "tflite_model", "MODEL_KINDS", "subnet_kind", "subnet_model",
    "prepare_built", "PLAIN_CALLS", "plain_built", "measure_built", "Builds", "batch_adjusted", "BUILDS",
    "prepare_subnet", "time_subnets", "measure_subnet", "estimate", "NoiseFloor", "noise_floor",
    "EstimatorResult", "SubnetResult", "measure_subnets", "score", "ceiling_of",
    "Retime", "RETIME", "retime_ops", "retime_entries",
    "CalibrationRun", "calibrate", "store_calibration", "calibration_key", "op_table_path", "op_costs",
    "ValidationReport", "ESTIMATOR_ROW", "validate", "fit_flops", "write_csv", "plot", "PREDICTORS",
]
