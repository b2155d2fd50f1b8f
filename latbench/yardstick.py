"""A yardstick: a few of a profile's own ops timed again in every interleaved batch, so that
numbers taken minutes apart are put on one machine speed.

On a shared host the whole machine speeds up and slows down together over tens of seconds. Here
one subnet's estimate moved with CV 3.6-6.3% from one 30 s batch to the next, and the ops and
subnets of one batch moved together (batch means correlated 0.92-0.97 with a block timed beside
them). Rounds inside a batch cannot cancel that: the whole batch ran in the slow minute. So the
first interleaved batch of a profile times `YARDSTICK_OPS` of its ops as the yardstick and keeps
their estimates as its base; every later batch times them again, and its rows are divided by
the batch's `factor` (geometric mean of reading / base). Validation times the same ops, in the
table's cache context, beside each batch of whole subnets and divides those by their factor, so
table and measurement stand on one speed. Raw statistics are kept as they were measured; the
row's estimator `round_min_yardstick` says its estimate is the fastest round over the factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .measure import Measurement, TimingSettings
from .ops import OpSpec

YARDSTICK_META = "yardstick"
YARDSTICK_OPS = 3  # ops read per batch: one op's reading alone moves 2-5% in network context
MIN_INTERLEAVE = 4 * YARDSTICK_OPS  # a smaller batch would spend too much of itself on the yardstick
ESTIMATOR = "round_min_yardstick"
PICK_AT = (0.5, 0.7, 0.9)  # FLOPs quantiles of the profiled ops the yardstick ops are taken at


def pick_ops(ops: Sequence[OpSpec], k: int = YARDSTICK_OPS) -> list[OpSpec]:
    """k distinct ops of middle-to-large FLOPs (big enough that the runtime's per-call cost does
    not dominate, small enough to cost little), chosen by key order so reruns pick the same."""
    by_size = sorted({op.key: op for op in ops}.values(), key=lambda op: (op.flops, op.key))
    if len(by_size) < k:
        return []
    picked: dict[str, OpSpec] = {}
    for q in PICK_AT[:k]:
        i = min(len(by_size) - 1, int(q * len(by_size)))
        while by_size[i].key in picked:  # tiny lists: take the next free one
            i = (i + 1) % len(by_size)
        picked[by_size[i].key] = by_size[i]
    return list(picked.values())


@dataclass
class Yardstick:
    """The ops of a table's yardstick, their base estimates (ms; None until the first batch has
    read them) and the cache context they are timed in."""

    ops: list[OpSpec]
    context: str
    context_bytes: int
    base_ms: list[float | None] | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.base_ms is not None and any(b is not None for b in self.base_ms)

    def matches(self, timing: TimingSettings) -> bool:
        return (self.context, self.context_bytes) == (timing.context, timing.context_bytes)

    def factor(self, readings: Sequence[float | None]) -> float | None:
        """How much slower than at the base the machine ran: the geometric mean of reading / base
        over the ops read (None when none was)."""
        if not self.ready:
            return None
        logs = [math.log(r / b) for r, b in zip(readings, self.base_ms or ())
                if r is not None and b is not None and r > 0 and b > 0]
        return math.exp(sum(logs) / len(logs)) if logs else None

    def to_meta(self) -> dict[str, Any]:
        return {"ops": [op.to_dict() for op in self.ops], "keys": [op.key for op in self.ops],
                "context": self.context, "context_bytes": self.context_bytes, "base_ms": self.base_ms,
                "estimator": ESTIMATOR, "batches": self.batches}

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> "Yardstick":
        return cls([OpSpec.from_dict(o) for o in d["ops"]], d["context"], int(d["context_bytes"]),
                   d.get("base_ms"), list(d.get("batches", [])))


def table_yardstick(table) -> Yardstick | None:
    """The table's yardstick once its base is read (None for tables without one)."""
    d = table.meta_get(YARDSTICK_META)
    if not d:
        return None
    ys = Yardstick.from_meta(d)
    return ys if ys.ready else None


def for_profile(table, ops: Sequence[OpSpec], timing: TimingSettings) -> Yardstick | None:
    """The yardstick a profile into `table` reads in each batch: the table's own (its base kept
    across resumed runs), else a new one picked from `ops`; None where batches are too small."""
    if timing.interleave < MIN_INTERLEAVE or timing.rounds < 2:
        return None
    d = table.meta_get(YARDSTICK_META)
    if d:
        ys = Yardstick.from_meta(d)
        return ys if ys.matches(timing) else None  # check_run_meta refuses a context change
    picked = pick_ops(ops)
    return Yardstick(picked, timing.context, timing.context_bytes) if picked else None


def reading(m: Measurement) -> float | None:
    """One yardstick op's reading in a batch: the estimate its rows are priced by, raw."""
    if not m.ok or m.stats is None:
        return None
    return float(getattr(m.stats, m.settings.get("estimator", "median")))


def record_batch(table, ys: Yardstick, readings: list[float | None], taken_at: float) -> float | None:
    """Add one batch's readings to the table's yardstick (the first batch sets the base) and
    commit it; returns the batch's factor."""
    if ys.base_ms is None and any(r is not None for r in readings):
        ys.base_ms = list(readings)
    f = ys.factor(readings)
    ys.batches.append({"readings_ms": list(readings), "factor": f, "taken_at": taken_at})
    table.meta_set(YARDSTICK_META, ys.to_meta())
    return f
