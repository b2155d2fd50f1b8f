"""The timing loop shared by every local agent, and the statistics that travel with each number.

Like torch.utils.benchmark's adaptive_autorange: warm up, grow the block of calls per sample until
timer overhead is negligible, then take samples until IQR/median is under a target or a time cap
is hit. Every sample is kept (Stats.samples), so any statistic can be derived from a row later.

Two cache contexts (`TimingSettings.context`): "warm" times calls back to back, so an op's
weights stay in cache from one call to the next; "network" times one call at a time and, before
each, reads `context_bytes` of other data through the caches (what the rest of a network streams
between two runs of the op) and re-reads the op's input (the op before it has just written it), as
TVM's cache-flushing time_evaluator does for kernels that will run inside a whole model.

Interleaved rounds (`rounds`, `interleave`; time_batch): several ops are timed round-robin, a
short round each at a time, so each op's samples are spread over seconds. On a shared host the
machine's speed moves by +-10-30% over 0.5-2 s spells (seen here: an L1-resident matmul, a
12 MB read and a whole model slow down together); spread over rounds, a spell reaches a few of an
op's rounds, and what it did shows (Stats.spell_signs: rounds that disagree, an estimate far above
the fastest round), so the profile can time that op again (latbench.suspect).

The estimate (`TimingSettings.estimator`) is the mean of all samples by default. A user checks a
table with a plain loop around a whole network and takes its median (or benchmark_model's mean).
Under linearity the sum of per-op means is an unbiased estimate of the network's mean, and a run
of a network is a sum of ~20-50 op times, whose distribution is narrow (the ops' tails average
out), so its median sits close to that mean; the median of one op's samples is not additive (a
skewed op's median is below its mean) and the fastest round's median (`round_min`, the old
default) is lower still. Measured on ofa-mbv3-w10 at 160 (docs/measurement.md, "Which statistic"),
against a plain loop's median: round_min -12%, pooled median -5%, pooled mean +1%.
"""
from __future__ import annotations

import dataclasses

import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UsageError

CONTEXTS = ("warm", "network")
LOOP_ESTIMATORS = ("mean", "median", "round_min")  # what a row timed by this loop can be priced by
ESTIMATOR_WORDS = {"mean": "the mean of all samples", "median": "the median of all samples",
                   "round_min": "the fastest round's median", "min": "the fastest sample",
                   "value": "a bare value (no statistics)"}

# Signs that an op was timed in a slow spell of the machine (Stats.spell_signs, latbench.suspect).
# Chosen from network-context ort tables of ofa-mbv3-w10 at 160 and 192 on the 2-core EPYC KVM
# guest, 2026-12-05 (docs/measurement.md, "Busy spells"). In two quiet tables the mean over the
# fastest round read p95 1.33-1.35, p99 1.37-1.61; the round medians' max/min p95 1.76-1.92, p99
# 1.97-2.09; the reference's mean per batch 0.93-1.08x its median. The limits flag 1-3% of rows
# there, and the batches a busy loop slowed (reference 1.31x and 1.65x).
LIMIT_OVER_FASTEST = 1.5  # the estimate over the fastest round's median
LIMIT_ROUND_SPREAD = 2.0  # the slowest round's median over the fastest's
LIMIT_REFERENCE = 1.2  # the batch's reference kernel over its profile-wide median


@dataclass(frozen=True)
class Bound:
    """The values one numeric TimingSettings field accepts, and the flag that sets it."""

    low: float
    high: float = math.inf
    low_open: bool = False  # `low` itself is refused
    whole: bool = False  # a whole number
    flag: str = ""  # the profile/validate flag, named in the error

    def check(self, name: str, value: Any) -> None:
        """A one-line UsageError naming the field (and its flag) unless `value` is in range."""
        kind_ok = isinstance(value, numbers.Integral if self.whole else numbers.Real) and not isinstance(value, bool)
        if kind_ok and math.isfinite(value) and (value > self.low if self.low_open else value >= self.low) \
                and value <= self.high:
            return
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = f" and <= {self.high:g}" if math.isfinite(self.high) else ""
        what = "a whole number" if self.whole else "a finite number"
        flag = f" ({self.flag})" if self.flag else ""
        raise UsageError(f"timing {name}{flag} must be {what} {low}{high}, got {value!r}")


# What TimingSettings accepts. rounds: each round takes at least 3 samples per op whatever the
# time cap, so 100 rounds are already 300 calls; interleave: that many ops are built and held in
# memory at once; max_time_s: an hour per op (or per subnet, for validate) is a cap, not a wait.
BOUNDS = {
    "warmup": Bound(0, whole=True),
    "warmup_s": Bound(0),
    "target_iqr": Bound(0, 1, flag="--target-iqr"),  # 0: never stop early (time or sample cap)
    "min_samples": Bound(1, whole=True, flag="--min-samples"),
    "max_samples": Bound(1, whole=True),
    "max_time_s": Bound(0, 3600, low_open=True, flag="--max-time"),
    "block_overhead": Bound(0, 1, low_open=True),
    "context_bytes": Bound(0, whole=True),
    "rounds": Bound(1, 100, whole=True, flag="--rounds"),
    "interleave": Bound(1, 256, whole=True, flag="--interleave"),
}


@dataclass(frozen=True)
class TimingSettings:
    """How long and how hard to time one op. Durations in seconds. Every value is checked
    against BOUNDS when the settings are made, so a bad one never reaches a timing loop."""

    warmup: int = 5  # untimed calls before the first sample
    warmup_s: float = 0.05  # ... and at least this long
    target_iqr: float = 0.05  # stop once IQR/median is below this (after min_samples)
    min_samples: int = 10
    max_samples: int = 500
    max_time_s: float = 2.0  # time cap per op, warm-up excluded
    block_overhead: float = 1e-4  # timer overhead must be <= this fraction of a block
    context: str = "warm"  # "warm" (back to back) or "network" (caches as inside a network)
    context_bytes: int = 0  # network: bytes read through the caches before each timed call
    rounds: int = 1  # interleaved rounds (time_batch); min_samples and warm-up apply per round,
    #                  max_time_s and max_samples are shared out between the rounds
    interleave: int = 1  # ops timed together, round-robin, by an agent's measure()
    estimator: str = "mean"  # the statistic a row is priced by (LOOP_ESTIMATORS; see the module docstring)

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise UsageError(f"timing context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        if self.estimator not in LOOP_ESTIMATORS:
            raise UsageError(f"timing estimator (`estimator`) must be one of {', '.join(LOOP_ESTIMATORS)}, "
                             f"got {self.estimator!r}")
        for name, bound in BOUNDS.items():
            bound.check(name, getattr(self, name))
        if self.estimator == "round_min" and self.rounds < 2:
            raise UsageError(f"timing estimator round_min ({ESTIMATOR_WORDS['round_min']}) needs `rounds` "
                             f">= 2, got {self.rounds}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingSettings":
        """Settings as a row stores them (`to_dict`); fields of older versions are left out, and
        settings stored before the estimator was chosen get the one they were priced by then
        (the fastest round's median in rounds, else the median)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known.setdefault("estimator", "round_min" if known.get("rounds", 1) > 1 else "median")
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def warm(self) -> "TimingSettings":
        """The same settings in warm context: how a whole model is timed (it is its own context)."""
        return TimingSettings(**{**self.__dict__, "context": "warm", "context_bytes": 0})


@dataclass(frozen=True)
class SpellSign:
    """One sign that a measurement was taken in a slow spell: the rule, what it read, its limit."""

    rule: str  # over_fastest | round_spread | reference
    value: float
    limit: float
    statistic: str = ""  # over_fastest: the estimate compared with the fastest round

    def text(self) -> str:
        what = {"over_fastest": f"{self.statistic} {self.value:.2f}x the fastest round's median",
                "round_spread": f"round medians {self.value:.2f}x apart",
                "reference": f"its batch's reference kernel {self.value:.2f}x its profile-wide median"}[self.rule]
        return f"{what} (> {self.limit:g})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "limit": self.limit, "text": self.text()}


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
    rounds: tuple[float, ...] = ()  # each round's median, when timed in interleaved rounds

    @property
    def round_min(self) -> float:
        """The fastest round's median (a slow spell of the machine only ever slows a round
        down); the median without rounds. The estimator `round_min`, the default before the mean."""
        return min(self.rounds) if self.rounds else self.median

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @property
    def iqr_ratio(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def spell_signs(self, estimator: str = "mean") -> tuple["SpellSign", ...]:
        """What the samples alone say of a slow spell (interleaved rounds only): the estimate far
        above the fastest round's median (a spell reached some rounds), or the rounds'
        medians far apart. Round_min itself cannot be inflated by a spell that spares a round."""
        if len(self.rounds) < 2:
            return ()
        fastest = min(self.rounds)
        if not fastest > 0:
            return ()
        out = []
        over = getattr(self, estimator) / fastest
        if over > LIMIT_OVER_FASTEST:
            out.append(SpellSign("over_fastest", over, LIMIT_OVER_FASTEST, estimator))
        spread = max(self.rounds) / fastest
        if spread > LIMIT_ROUND_SPREAD:
            out.append(SpellSign("round_spread", spread, LIMIT_ROUND_SPREAD))
        return tuple(out)

    @property
    def unstable(self) -> bool:
        """The samples show a slow spell (spell_signs of the mean). pyperf's rule (std >= 10% of
        the mean) flagged nearly every network-context row here, so it pointed at nothing; a
        table row is `unstable` when it still shows a spell after it was timed again
        (latbench.suspect)."""
        return bool(self.spell_signs("mean"))

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], block: int = 1, rounds: Sequence[float] = ()) -> "Stats":
        """Statistics of `samples_ms` (every one kept); `rounds` the medians of its rounds."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no samples")
        p25, med, p75 = np.percentile(a, [25, 50, 75])
        kept = tuple(float(x) for x in a)
        return cls(
            median=float(med), p25=float(p25), p75=float(p75), min=float(a.min()), max=float(a.max()),
            mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else 0.0, n=int(a.size),
            block=block, samples=kept, rounds=tuple(float(x) for x in rounds),
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

    def to_dict(self) -> dict[str, Any]:
        """The measurement as plain JSON-able data (what a farm's device sends its driver)."""
        d = dataclasses.asdict(self)
        if self.stats is not None:
            d["stats"] = {**d["stats"], "samples": list(self.stats.samples), "rounds": list(self.stats.rounds)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        """The measurement `to_dict` gave."""
        st = d.get("stats")
        stats = None if st is None else Stats(**{**st, "samples": tuple(st.get("samples", ())),
                                                 "rounds": tuple(st.get("rounds", ()))})
        return cls(**{**d, "stats": stats})


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


def last_level_cache_bytes() -> int:
    """Size of this CPU's largest cache (Linux sysfs), 0 where unreadable."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return 0
    for d in entries:
        try:
            with open(f"{base}/{d}/size") as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best


class Evictor:
    """Reads `nbytes` of its own data through the caches on each call (the rest of a network)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # written once so every page is backed: reading never-written pages hits the zero page
        # and would evict nothing
        self._buf = np.ones(max(1, self.nbytes // 4), dtype=np.float32)

    def __call__(self) -> None:
        if self.nbytes:
            self._buf.max()  # vectorised: as fast as memory delivers


_EVICTOR: list[Evictor] = []  # the last one built: profiles use one size for every op


def evictor(nbytes: int) -> Evictor:
    if not _EVICTOR or _EVICTOR[0].nbytes != nbytes:
        _EVICTOR[:] = [Evictor(nbytes)]
    return _EVICTOR[0]


def _nothing() -> None:
    pass


def time_callable(fn: Callable[[], Any], settings: TimingSettings = TimingSettings(),
                  sync: Callable[[], Any] | None = None, touch: Callable[[], Any] | None = None) -> Stats:
    """Time `fn()` adaptively; `sync` (e.g. torch.cuda.synchronize) runs before each clock read.
    In network context `touch()` (re-reading the op's input) runs before each timed call."""
    (res,) = time_batch([fn], settings, sync, [touch])
    if res.error is not None:
        raise res.error
    return res.stats  # type: ignore[return-value]


@dataclass(frozen=True)
class Timed:
    """One callable's outcome in a batch: its statistics, or the exception it raised, and the
    seconds spent on it (warm-ups and samples, evictions included)."""

    stats: Stats | None
    error: Exception | None
    seconds: float


def time_batch(fns: Sequence[Callable[[], Any]], settings: TimingSettings = TimingSettings(),
               sync: Callable[[], Any] | None = None,
               touches: Sequence[Callable[[], Any] | None] | None = None) -> list[Timed]:
    """Time several prepared callables in `settings.rounds` rounds, each round visiting every
    callable in turn (warm-up, then samples until stable or the round's share of the time cap).

    Each one's samples are spread over the whole batch's time, so a slow spell of the machine (a
    busy neighbour on a shared host, a frequency dip) slows a round, not a whole measurement; the
    Stats carry every round's median (Stats.spell_signs reads them). A callable that raises gets
    its exception in its place and is left out of later rounds."""
    sync = sync or _nothing
    touch_list = list(touches) if touches is not None else [None] * len(fns)
    timers = [_Timer(fn, settings, sync, t or _nothing) for fn, t in zip(fns, touch_list)]
    errors: list[Exception | None] = [None] * len(timers)
    for r in range(settings.rounds):
        for i, timer in enumerate(timers):
            if errors[i] is None:
                try:
                    timer.run_round(first=r == 0)
                except Exception as e:  # reported for this callable; the others go on
                    errors[i] = e
    return [Timed(None if e is not None else t.stats(), e, t.seconds) for e, t in zip(errors, timers)]


class _Timer:
    """The timing state of one callable across rounds: its block size and its samples."""

    def __init__(self, fn: Callable[[], Any], settings: TimingSettings, sync: Callable[[], Any],
                 touch: Callable[[], Any]):
        self.fn, self.settings, self.sync, self.touch = fn, settings, sync, touch
        self.block = 0  # sized in the first round
        self.rounds: list[list[float]] = []
        self.seconds = 0.0

    def run_round(self, first: bool) -> None:
        t0 = time.perf_counter()
        try:
            self._round(first)
        finally:
            self.seconds += time.perf_counter() - t0

    def _round(self, first: bool) -> None:
        s = self.settings
        self._warm_up(s.warmup_s if first else 0.0)
        if not self.block:
            self.block = 1 if s.context == "network" else self._size_block()
        sample = self._sample_in_context if s.context == "network" else self._sample_block
        per_round = max(s.min_samples, -(-s.max_samples // s.rounds))
        self.rounds.append(_sample_until_stable(sample, s.min_samples, per_round, s.max_time_s / s.rounds,
                                                s.target_iqr))

    def stats(self) -> Stats:
        pooled = [x for r in self.rounds for x in r]
        medians = tuple(float(np.median(r)) for r in self.rounds) if len(self.rounds) > 1 else ()
        return Stats.from_samples(pooled, block=self.block, rounds=medians)

    def _warm_up(self, seconds: float) -> None:
        """At least `warmup` calls and `seconds` seconds (later rounds: the calls only)."""
        pc, fn = time.perf_counter, self.fn
        t_end = pc() + seconds
        i = 0
        while i < self.settings.warmup or pc() < t_end:
            fn()
            i += 1
        self.sync()

    def _size_block(self) -> int:
        """Grow the block x10 until the timer overhead is a negligible share of it."""
        pc, fn, sync = time.perf_counter, self.fn, self.sync
        min_block_s = _overhead() / self.settings.block_overhead
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
                return block
            # jump straight to the estimated size rather than ten-folding blindly
            need = min_block_s / max(dt / block, 1e-9)
            block = int(min(10**6, max(block * 10, 10 ** math.ceil(math.log10(need)))))

    def _sample_block(self) -> float:
        """Warm context: one block of calls back to back, per-call ms."""
        pc, fn, block = time.perf_counter, self.fn, self.block
        t0 = pc()
        for _ in range(block):
            fn()
        self.sync()
        return (pc() - t0) * 1e3 / block

    def _sample_in_context(self) -> float:
        """Network context: one call after `context_bytes` were read through the caches and the
        input re-read, so the weights are as cold as the rest of a network leaves them."""
        evictor(self.settings.context_bytes)()
        self.touch()
        self.sync()
        pc = time.perf_counter
        t0 = pc()
        self.fn()
        self.sync()
        return (pc() - t0) * 1e3


def _sample_until_stable(sample: Callable[[], float], min_n: int, max_n: int, cap_s: float,
                         target_iqr: float) -> list[float]:
    """Samples (ms) until IQR/median < target after min_n, or the time cap, or max_n."""
    pc = time.perf_counter
    samples: list[float] = []
    deadline = pc() + cap_s
    hard_stop = deadline + cap_s  # slow ops: give up on min_n past twice the cap
    while len(samples) < max_n:
        samples.append(sample())
        n = len(samples)
        if n >= 3 and pc() >= hard_stop:
            break
        if n >= min_n:
            if pc() >= deadline:
                break
            if n % 5 == 0:
                q25, q50, q75 = np.percentile(samples, [25, 50, 75])
                if q50 > 0 and (q75 - q25) / q50 < target_iqr:
                    break
    return samples
