"""Table drift: a few of the table's own entries timed again before and after a validation's
subnets, as the profile timed them, to tell how far the machine's speed moved since (a diagnostic;
predictions are scored as the table stands)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..measure import TimingSettings
from ..ops import OpSpec
from ..store import LatencyTable


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
