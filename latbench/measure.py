"""The timing loop shared by every local agent, and the statistics that travel with each number.

Like torch.utils.benchmark's adaptive_autorange: warm up, grow the block of calls per sample until
timer overhead is negligible, then take samples until IQR/median is under a target or a time cap
is hit. Like pyperf: a result whose std is >= 10% of its mean is flagged unstable, not hidden.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

UNSTABLE_STD_RATIO = 0.10  # pyperf's rule


@dataclass(frozen=True)
class TimingSettings:
    """How long and how hard to time one op. Durations in seconds."""

    warmup: int = 5  # untimed calls before the first sample
    warmup_s: float = 0.05  # ... and at least this long
    target_iqr: float = 0.05  # stop once IQR/median is below this (after min_samples)
    min_samples: int = 10
    max_samples: int = 500
    max_time_s: float = 2.0  # time cap per op, warm-up excluded
    block_overhead: float = 1e-4  # timer overhead must be <= this fraction of a block
    keep_samples: int = 200  # raw samples stored with the measurement (0 = none)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Stats:
    """Statistics of per-call times in milliseconds."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    mean: float
    std: float
    n: int  # samples
    block: int = 1  # calls per sample
    samples: tuple[float, ...] = ()

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @property
    def iqr_ratio(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    @property
    def unstable(self) -> bool:
        """pyperf's rule: std >= 10% of the mean."""
        return self.mean > 0 and self.std >= UNSTABLE_STD_RATIO * self.mean

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], block: int = 1, keep: int = 200) -> "Stats":
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no samples")
        p25, med, p75 = np.percentile(a, [25, 50, 75])
        kept = tuple(float(x) for x in a[:keep]) if keep else ()
        return cls(
            median=float(med), p25=float(p25), p75=float(p75), min=float(a.min()), max=float(a.max()),
            mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else 0.0, n=int(a.size),
            block=block, samples=kept,
        )


@dataclass(frozen=True)
class Measurement:
    """One op's latency on one device profile, with its statistics and the settings it was taken
    under. `status` is 'ok' or 'failed' (then `error` says why and the stats are empty)."""

    key: str
    profile_id: str
    op: dict[str, Any]  # OpSpec.to_dict(), so the op can be rebuilt from the table alone
    stats: Stats | None
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str = ""
    wall_s: float = 0.0  # wall time spent on this op, building included
    timed_s: float = 0.0  # of which inside the timed loop
    taken_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. temperatures on phones

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median_ms(self) -> float:
        return self.stats.median if self.stats else math.nan


def timer_overhead_s(reps: int = 2000) -> float:
    """Cost of one perf_counter pair around nothing: the floor under any block."""
    pc = time.perf_counter
    best = math.inf
    for _ in range(5):
        t0 = pc()
        for _ in range(reps):
            pc()
        best = min(best, (pc() - t0) / reps)
    return best


_OVERHEAD: list[float] = []


def _overhead() -> float:
    if not _OVERHEAD:
        _OVERHEAD.append(timer_overhead_s())
    return _OVERHEAD[0]


def time_callable(fn: Callable[[], Any], settings: TimingSettings = TimingSettings(),
                  sync: Callable[[], Any] | None = None) -> Stats:
    """Time `fn()` adaptively; `sync` (e.g. torch.cuda.synchronize) runs before each clock read."""
    pc = time.perf_counter
    sync = sync or (lambda: None)

    # warm-up: at least `warmup` calls and `warmup_s` seconds
    t_end = pc() + settings.warmup_s
    i = 0
    while i < settings.warmup or pc() < t_end:
        fn()
        i += 1
    sync()

    # block sizing: grow x10 until the timer overhead is a negligible share of one block
    min_block_s = _overhead() / settings.block_overhead
    block = 1
    while True:
        dt = math.inf
        for _ in range(3):  # best of three, so one preempted trial does not size the block
            t0 = pc()
            for _ in range(block):
                fn()
            sync()
            dt = min(dt, pc() - t0)
            if dt >= min_block_s:
                break
        if dt >= min_block_s or block >= 10**6:
            break
        # jump straight to the estimated size rather than ten-folding blindly
        need = min_block_s / max(dt / block, 1e-9)
        block = int(min(10**6, max(block * 10, 10 ** math.ceil(math.log10(need)))))

    samples: list[float] = []
    deadline = pc() + settings.max_time_s
    hard_stop = deadline + settings.max_time_s  # slow ops: give up on min_samples past 2x the cap
    while len(samples) < settings.max_samples:
        t0 = pc()
        for _ in range(block):
            fn()
        sync()
        samples.append((pc() - t0) * 1e3 / block)
        n = len(samples)
        if n >= 3 and pc() >= hard_stop:
            break
        if n >= settings.min_samples:
            if pc() >= deadline:
                break
            if n % 5 == 0:
                q25, q50, q75 = np.percentile(samples, [25, 50, 75])
                if q50 > 0 and (q75 - q25) / q50 < settings.target_iqr:
                    break
    return Stats.from_samples(samples, block=block, keep=settings.keep_samples)
