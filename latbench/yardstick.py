"""The plain end-to-end yardstick: the loop users time a whole network with, on their own stopwatch.

One pass of one network is a fresh runnable (a new session or interpreter), a warm-up, then
at least `runs` runs and at least `min_s` seconds, each run timed alone around the runtime's
plain call. K passes are interleaved across the networks, each pass in its own seeded order.
A network's value is the median over its passes of one statistic of each pass (the median by
default). The noise ceiling is the yardstick's own pass-to-pass agreement: what it cannot
resolve on this machine. Agents and models stay outside: `measure` takes a factory of fresh
runnables.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from .errors import LatbenchError, UsageError
from .measure import Bound

STATISTICS = ("median", "mean", "min")  # what a yardstick value can be read as
PLURAL = {"median": "medians", "mean": "means", "min": "minimums"}
BOUNDS = {
    "warmup": Bound(0, whole=True, flag="--warmup"),
    "warmup_s": Bound(0, 3600),
    "runs": Bound(1, whole=True, flag="--runs"),
    "min_s": Bound(0, 3600, flag="--min-time"),
    "passes": Bound(1, 100, whole=True, flag="--passes"),
    "seed": Bound(0, whole=True),
}
CEILING_PASSES = 3  # a pass against the median of at least two others


@dataclass(frozen=True)
class YardstickSettings:
    """How the yardstick times each network; every value checked where made (one-line UsageError).

    `runs` (50, benchmark_model's default --num_runs) and `min_s`: a pass takes both at least
    `runs` runs and `min_s` seconds, so a 1 ms network is timed over half a second and not over
    the 50 ms of one moment: this host's speed moves over 0.5-2 s spells (docs/measurement.md).
    `warmup` runs and `warmup_s` seconds come first, untimed. `passes` fresh runnables per
    network, interleaved across networks in orders drawn from `seed`."""

    warmup: int = 10
    warmup_s: float = 0.1
    runs: int = 50
    min_s: float = 0.5
    passes: int = 3
    seed: int = 0
    statistic: str = "median"  # of each pass's samples; a network's value is the median over passes

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise UsageError(f"`statistic` must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        for name, bound in BOUNDS.items():
            bound.check(name, getattr(self, name))

    def describe(self) -> str:
        """What a value is, in words: e.g. 'median of 3 pass medians'."""
        return f"median of {self.passes} pass {PLURAL[self.statistic]}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PassStats:
    """One pass of one network: statistics of its timed runs (ms) and the runs themselves."""

    median: float
    mean: float
    p90: float
    min: float
    n: int
    samples: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "PassStats":
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no samples")
        med, p90 = np.percentile(a, [50, 90])
        return cls(float(med), float(a.mean()), float(p90), float(a.min()), int(a.size),
                   tuple(float(x) for x in a))

    @classmethod
    def reported(cls, median: float, mean: float, p90: float, minimum: float, n: int) -> "PassStats":
        """A pass a runtime timed and summarised itself (benchmark_model prints its runs' average and
        min, not each run): what it did not report is NaN, and no samples are kept."""
        return cls(float(median), float(mean), float(p90), float(minimum), int(n), ())

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median, "mean_ms": self.mean, "p90_ms": self.p90, "min_ms": self.min,
                "n": self.n, "samples_ms": list(self.samples)}


@dataclass(frozen=True)
class Reading:
    """One network's passes, in pass order."""

    passes: tuple[PassStats, ...]

    def values(self, statistic: str) -> np.ndarray:
        """Each pass's `statistic`, in pass order."""
        return np.array([getattr(p, statistic) for p in self.passes], dtype=np.float64)

    def value(self, statistic: str) -> float:
        """The network's yardstick value: the median over its passes of each pass's `statistic`."""
        return float(np.median(self.values(statistic)))

    def spread(self, statistic: str) -> float:
        """(max - min) / median of the pass values: how far the passes disagree."""
        v = self.values(statistic)
        return float(np.ptp(v) / np.median(v))

    def to_dict(self, statistic: str) -> dict[str, Any]:
        return {"statistic": statistic, "value_ms": self.value(statistic), "spread": self.spread(statistic),
                "passes": [p.to_dict() for p in self.passes]}


@dataclass(frozen=True)
class NoiseCeiling:
    """Each pass of each network against the median of that network's other passes: the share
    within +-5% and +-10% and the sd of the log ratio. No predictor can be shown closer to the
    yardstick than one pass of the yardstick is to the others; NaN with fewer than 3 passes."""

    within5: float
    within10: float
    log_sd: float
    networks: int
    passes: int

    def line(self) -> str:
        """The report's line, e.g. 'yardstick noise ceiling: one pass against ... x 3 passes'."""
        if self.passes < CEILING_PASSES:
            return (f"yardstick noise ceiling: not measured ({self.passes} pass(es); a pass against the median "
                    f"of the others needs --passes >= {CEILING_PASSES})")
        return (f"yardstick noise ceiling: one pass against the median of the others: {_pct(self.within5)} within "
                f"+-5%, {_pct(self.within10)} within +-10% (log sd {100 * self.log_sd:.1f}%), "
                f"{self.networks} subnets x {self.passes} passes")

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def pass_ratios(readings: Sequence[Reading], statistic: str) -> np.ndarray:
    """Every network's every pass value over the median of its other passes (network-major)."""
    out = []
    for r in readings:
        v = r.values(statistic)
        out.extend(v[p] / np.median(np.delete(v, p)) for p in range(v.size))
    return np.asarray(out, dtype=np.float64)


def noise_ceiling(readings: Sequence[Reading], statistic: str) -> NoiseCeiling:
    """The yardstick's pass-against-others agreement over `readings` (see NoiseCeiling)."""
    k = min((len(r.passes) for r in readings), default=0)
    if k < CEILING_PASSES:
        return NoiseCeiling(math.nan, math.nan, math.nan, len(readings), k)
    r = pass_ratios(readings, statistic)
    dev = np.abs(r - 1)
    eps = 1e-12  # 5% exactly counts as within 5%
    return NoiseCeiling(float(np.mean(dev <= 0.05 + eps)), float(np.mean(dev <= 0.10 + eps)),
                        float(np.std(np.log(r))), len(readings), k)


def pass_orders(n: int, passes: int, seed: int) -> list[list[int]]:
    """The order each pass visits n networks in: every network once per pass, a seeded shuffle
    per pass, so a slow minute of the machine hits one pass of many networks, not all of one."""
    rng = np.random.default_rng([seed, 3])
    return [[int(i) for i in rng.permutation(n)] for _ in range(passes)]


def _nothing() -> None:
    pass


def time_pass(run: Callable[[], Any], settings: YardstickSettings,
              sync: Callable[[], Any] | None = None) -> PassStats:
    """Warm up, then time `run()` alone per sample until both `runs` samples and `min_s` seconds;
    `sync` (e.g. torch.cuda.synchronize) runs before each clock read."""
    sync = sync or _nothing
    pc = time.perf_counter
    t_end = pc() + settings.warmup_s
    i = 0
    while i < settings.warmup or pc() < t_end:
        run()
        i += 1
    sync()
    samples: list[float] = []
    t_end = pc() + settings.min_s
    while len(samples) < settings.runs or pc() < t_end:
        t0 = pc()
        run()
        sync()
        samples.append((pc() - t0) * 1e3)
    return PassStats.from_samples(samples)


def measure(n: int, fresh: Callable[[int], Callable[[], Any]], settings: YardstickSettings,
            state: Callable[[], ContextManager] = contextlib.nullcontext,
            sync: Callable[[], Any] | None = None,
            done: Callable[[int, int], None] | None = None) -> list[Reading]:
    """Readings of n networks: `settings.passes` passes (`pass_orders`); each visit times a fresh
    runnable `fresh(i)` of network i under `state()` and drops it before the next; `done(visits,
    total)` is told after each visit."""
    samples: list[list[PassStats]] = [[] for _ in range(n)]
    total, visits = n * settings.passes, 0
    for order in pass_orders(n, settings.passes, settings.seed):
        for i in order:
            with state():
                run = fresh(i)
                try:
                    samples[i].append(time_pass(run, settings, sync))
                except Exception as e:
                    raise LatbenchError(f"end-to-end run failed: {type(e).__name__}: {e}") from e
                del run
            visits += 1
            if done:
                done(visits, total)
    return [Reading(tuple(s)) for s in samples]


def measure_batched(n: int, time_batch: Callable[[list[int]], Sequence[PassStats]], settings: YardstickSettings,
                    batch: int, done: Callable[[int, int], None] | None = None) -> list[Reading]:
    """As `measure`, where the runtime times each network itself (a phone's benchmark_model, a
    fresh process per network and pass): each pass hands its order to `time_batch`, `batch`
    networks at a time, which returns one PassStats per network in that order."""
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    samples: list[list[PassStats]] = [[] for _ in range(n)]
    total, visits = n * settings.passes, 0
    for order in pass_orders(n, settings.passes, settings.seed):
        for start in range(0, n, batch):
            chunk = order[start:start + batch]
            stats = list(time_batch(chunk))
            if len(stats) != len(chunk):
                raise LatbenchError(f"end-to-end runs returned {len(stats)} results for {len(chunk)} networks")
            for i, s in zip(chunk, stats):
                samples[i].append(s)
            visits += len(chunk)
            if done:
                done(visits, total)
    return [Reading(tuple(s)) for s in samples]


__all__ = ["YardstickSettings", "STATISTICS", "PassStats", "Reading", "NoiseCeiling", "noise_ceiling", "pass_ratios",
           "pass_orders", "time_pass", "measure", "measure_batched", "CEILING_PASSES"]
