"""BigNAS sandwich training: every step trains the largest, n random and the smallest subnet
(United-Perception's sample strategy `[max, random, random, min]`) with in-place distillation:
the largest learns from the labels, the others from its soft output. Random subnets can be drawn
within a FLOPs or predicted-latency range, with a bounded number of tries.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import UsageError, require
from .data import resize
from .ofa import soft_cross_entropy

torch = require("torch", "torch")
F = torch.nn.functional

SANDWICH = ("max", "random", "random", "min")
Cost = Callable[[np.ndarray], np.ndarray]


def flops_cost(space) -> Cost:
    """MFLOPs of each config in a batch (sum over its blocks)."""
    def cost(configs: np.ndarray) -> np.ndarray:
        return np.array([sum(b.flops for b in space.blocks(c)) / 1e6 for c in np.atleast_2d(configs)])
    return cost


def latency_cost(predictor) -> Cost:
    """Predicted latency (ms) of each config, from a latbench Predictor."""
    return lambda configs: np.asarray(predictor.predict_batch(np.atleast_2d(configs)), dtype=np.float64)


class SubnetSampler:
    """Draws the configs of a sandwich: max, min, or random (optionally with cost in [lo, hi]).

    A constrained draw takes up to `max_tries` random configs and returns the first in range; if
    none is, the one closest to the range (counted in `misses`), so a step never stalls.
    """

    def __init__(self, space, cost: Cost | None = None, cost_range: tuple[float, float] | None = None,
                 max_tries: int = 50):
        if cost_range is not None and (cost is None or cost_range[0] > cost_range[1]):
            raise UsageError("a cost range needs a cost function and lo <= hi")
        self.space, self.cost, self.range, self.max_tries = space, cost, cost_range, max(1, max_tries)
        self.draws = self.tries = self.misses = 0

    def __call__(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        if kind == "max":
            return self.space.largest()
        if kind == "min":
            return self.space.smallest()
        if kind != "random":
            raise UsageError(f"sample strategy entries are max, random or min, got {kind!r}")
        self.draws += 1
        if self.range is None:
            return self.space.sample(rng, 1)[0]
        lo, hi = self.range
        best, best_gap = None, np.inf
        done = 0
        while done < self.max_tries:
            batch = self.space.sample(rng, min(16, self.max_tries - done))
            costs = self.cost(batch)
            for cfg, c in zip(batch, costs):
                done += 1
                self.tries += 1
                if lo <= c <= hi:
                    return cfg
                gap = lo - c if c < lo else c - hi
                if gap < best_gap:
                    best, best_gap = cfg, gap
        self.misses += 1
        return best


def sandwich_step(net, x, y, rng: np.random.Generator, sampler: SubnetSampler,
                  strategy: Sequence[str] = SANDWICH, label_smoothing: float = 0.1,
                  kd_ratio: float = 1.0) -> dict[str, float]:
    """Forward and backward every subnet of one sandwich (gradients accumulate; no optimizer step).
    Returns each subnet's loss by its position in the strategy."""
    soft = None
    losses: dict[str, float] = {}
    for i, kind in enumerate(strategy):
        net.set_active(sampler(kind, rng))
        out = net(resize(x, net.resolution))
        if kind == "max" or soft is None:
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if kind == "max":
                soft = out.detach()
        else:
            loss = kd_ratio * soft_cross_entropy(out, soft)
        loss.backward()
        losses[f"{i}:{kind}"] = float(loss.detach())
    return losses


__all__ = ["SANDWICH", "SubnetSampler", "sandwich_step", "flops_cost", "latency_cost"]
