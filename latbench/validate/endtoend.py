"""Whole subnets measured end to end with the table's agent, through the agent contract
(device_agents.base): the model the agent runs (`network_model`), the plain yardstick's readings
(`measure_subnets`: the agent's plain call, or its runtime's own loop on the device), and
latbench's own estimator: fresh builds (`prepare_model`) in interleaved batches with each batch's
speed taken out (`measure_built`, `batch_adjusted`), and its noise floor. Nothing here imports a
runtime: the agent does."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LatbenchError, UsageError
from ..measure import Stats, TimingSettings, time_batch
from ..predict import Predictor
from ..yardstick import Reading, YardstickSettings
from ..yardstick import measure as yardstick_readings
from ..yardstick import measure_batched as yardstick_batched
from .metrics import UNCALIBRATED
from .progress import Progress, quiet
from .subnets import subnet_flops, subnet_resolution


BUILDS = 3  # independently built models per subnet measurement (see measure_subnets)


def agent_yardstick(agent, settings: YardstickSettings, asked: bool = True) -> YardstickSettings:
    """`settings` with a statistic the agent's plain call reports (`plain_statistics`): a runner
    that summarises its own runs (benchmark_model: average and min) cannot give a median; an
    unasked default becomes the runner's first statistic, an asked one it cannot give is refused
    in one line."""
    offered = tuple(agent.plain_statistics)
    if settings.statistic in offered:
        return settings
    if not asked:
        return dataclasses.replace(settings, statistic=offered[0])
    raise UsageError(f"`statistic={settings.statistic}`: {agent.plain_call} reports only "
                     f"{', '.join(offered)} of its runs")


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
                  model: Callable[[Any], Any] = lambda m: m) -> list[Builds]:
    """Each item's model (`model(item)`, an agent's NetworkModel made once and kept while its
    builds are timed) timed on `builds` fresh runnables (`agent.prepare_model`), each build in
    another interleaved batch; `done(n)` is told how many items are measured after each batch.

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
    models: dict[int, Any] = {}
    finished = 0
    for b in range(len(groups) + builds - 1):
        slots = [i for k in range(builds) if 0 <= b - k < len(groups) for i in groups[b - k]]
        for i in slots:
            if i not in models:
                models[i] = model(items[i])
        stats = time_subnets(agent, [agent.prepare_model(models[i]) for i in slots], timing)
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
    """End-to-end latency of one subnet with `agent` (its network_model, timed as ops are)."""
    return time_subnets(agent, [agent.prepare_model(agent.network_model(space, config))], timing)[0]


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
                progress: Progress = quiet) -> NoiseFloor:
    """Measure one subnet `repeats` times exactly as validation subnets are measured (each time on
    `builds` freshly built runnables, with the batches' speed taken out: `batch_adjusted`)."""
    model = agent.network_model(space, config)
    built = measure_built(agent, [model] * repeats, timing, builds, lambda n: progress("noise floor", n, repeats))
    adjusted, _ = batch_adjusted(built)
    return NoiseFloor(space.to_published(config), [float(x) for x in adjusted],
                      [b.middle().iqr_ratio for b in built])


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
                    timing: TimingSettings | None = None, task: str = "subnets", progress: Progress = quiet,
                    builds: int = BUILDS) -> list[SubnetResult]:
    """Measure each config end to end and attach the table predictor's raw value.

    Every model is built once and kept for the run. The yardstick times each in
    `yardstick.passes` interleaved passes, a fresh runnable of the plain call each
    (`agent.plain_model`), or by the runtime's own loop on the device (`agent.time_networks`,
    where `agent.times_on_device`); with `timing`,
    latbench's estimator then times it on `builds` fresh builds (`measure_built`,
    `batch_adjusted`): where a runtime's buffers land in memory moves a whole model's latency
    by up to ~10% on a shared host."""
    models = []
    progress("building subnets", 0, len(configs))
    for cfg in configs:
        models.append(agent.network_model(space, cfg))
        progress("building subnets", len(models), len(configs))
    yardstick = agent_yardstick(agent, yardstick)  # a statistic the runner cannot give is refused here
    if agent.times_on_device:
        if timing is not None:
            raise UsageError(f"latbench's estimator row times on the host; {agent.name} times on the device: "
                             f"use `estimator_row=False`")
        readings = yardstick_batched(
            len(models), lambda idx: agent.time_networks([models[i] for i in idx], yardstick), yardstick,
            agent.network_batch, lambda d, t: progress(task, d, t))
    else:
        readings = yardstick_readings(len(models), lambda i: agent.plain_model(models[i]), yardstick, agent.state,
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
