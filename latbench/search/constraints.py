"""Constraints of a search: latency budgets per table, FLOPs and params ranges.

As in optuna, a constraint value <= 0 means feasible; values are relative to the bound
((metric - bound) / |bound|), so violations on different scales compare. Every batch is priced
in whole-array calls (`Predictor.predict_batch`), never subnet by subnet.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import LatbenchError, UsageError
from .domain import Domain

LATENCY = "latency_ms"


class InfeasibleBudgetError(LatbenchError):
    """No subnet of the space can meet a budget: the message gives the smallest achievable value."""


@dataclass(frozen=True)
class Constraint:
    """`metric <= bound` (upper) or `metric >= bound` (lower) on one priced metric."""

    metric: str  # "latency_ms", "flops" or "params"
    bound: float
    upper: bool = True
    table: str = ""  # which table, for latency

    @property
    def name(self) -> str:
        what = f"{self.metric}[{self.table}]" if self.table else self.metric
        return f"{what} {'<=' if self.upper else '>='} {self.bound:g}"

    def values(self, metric: np.ndarray) -> np.ndarray:
        """Constraint values of a batch: <= 0 feasible; NaN (unpriceable) counts as violated."""
        scale = abs(self.bound) or 1.0
        v = (metric - self.bound) / scale if self.upper else (self.bound - metric) / scale
        return np.where(np.isnan(v), np.inf, v)


@dataclass(frozen=True)
class Pricing:
    """What the constraints measured on a batch of configs."""

    latency_ms: np.ndarray  # (n, tables), calibrated when the table has a calibration
    flops: np.ndarray | None  # (n,) when a constraint or the caller needed them
    params: np.ndarray | None
    values: np.ndarray  # (n, constraints); <= 0 feasible
    feasible: np.ndarray  # (n,) bool: every value <= 0

    def take(self, rows) -> "Pricing":
        """The pricing of some rows."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Pricing(self.latency_ms[rows], pick(self.flops), pick(self.params), self.values[rows],
                       self.feasible[rows])

    def put(self, rows, other: "Pricing") -> None:
        """Write `other`'s rows into these rows (arrays are filled in place)."""
        self.latency_ms[rows] = other.latency_ms
        for mine, theirs in ((self.flops, other.flops), (self.params, other.params)):
            if mine is not None:
                mine[rows] = theirs
        self.values[rows] = other.values
        self.feasible[rows] = other.feasible

    @staticmethod
    def blank(n: int, like: "Pricing") -> "Pricing":
        """n unfilled rows shaped like `like`."""
        new = lambda a: None if a is None else np.empty((n,) + a.shape[1:], a.dtype)  # noqa: E731
        return Pricing(new(like.latency_ms), new(like.flops), new(like.params), new(like.values),
                       np.zeros(n, dtype=bool))


@functools.lru_cache(maxsize=16)
def count_predictor(space, attr: str):
    """A Predictor over the cost map {block key: block FLOPs or params}: the same per-slot
    gather prices FLOPs/params of a whole population as predict_batch prices latency."""
    from ..predict import Predictor

    costs = {b.key: float(getattr(b, attr)) for b in space.enumerate_blocks()}
    return Predictor(space, costs, granularity="block", strict=True)


class CostModel:
    """Latency per table, FLOPs and params of config batches; FLOPs/params built on first use."""

    def __init__(self, space, predictors: Mapping[str, object]):
        if not predictors:
            raise UsageError("a search needs at least one latency predictor (a table)")
        self.space = space
        self.predictors = dict(predictors)
        self.tables = tuple(self.predictors)

    def latency(self, configs: np.ndarray) -> np.ndarray:
        return np.column_stack([self.predictors[t].predict_batch(configs) for t in self.tables])

    def flops(self, configs: np.ndarray) -> np.ndarray:
        return count_predictor(self.space, "flops").predict_batch(configs)

    def params(self, configs: np.ndarray) -> np.ndarray:
        return count_predictor(self.space, "params").predict_batch(configs)

    def predictor(self, constraint: Constraint):
        if constraint.metric == LATENCY:
            return self.predictors[constraint.table]
        return count_predictor(self.space, constraint.metric)


class ConstraintSet:
    """The constraints of one search over one cost model; prices batches into `Pricing`."""

    def __init__(self, costs: CostModel, constraints: Sequence[Constraint] = ()):
        self.costs = costs
        self.constraints = tuple(constraints)
        for c in self.constraints:
            if c.metric == LATENCY and c.table not in costs.predictors:
                raise UsageError(f"budget for unknown table {c.table!r}; tables: {', '.join(costs.tables)}")
            if c.metric not in (LATENCY, "flops", "params"):
                raise UsageError(f"unknown constraint metric {c.metric!r}")
        metrics = {c.metric for c in self.constraints}
        self._need_flops = "flops" in metrics
        self._need_params = "params" in metrics

    @classmethod
    def build(cls, costs: CostModel, budgets_ms: Mapping[str, float] | None = None,
              flops_range: tuple[float | None, float | None] | None = None,
              params_range: tuple[float | None, float | None] | None = None) -> "ConstraintSet":
        """Budgets per table name, and (min, max) ranges with None for an open end."""
        cons: list[Constraint] = []
        for table, budget in (budgets_ms or {}).items():
            if budget is None:
                continue
            if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
                raise UsageError(f"budgets_ms: the latency budget for {table!r} must be a positive number of ms, "
                                 f"got {budget!r}")
            cons.append(Constraint(LATENCY, float(budget), True, table))
        for metric, rng in (("flops", flops_range), ("params", params_range)):
            if rng is None:
                continue
            lo, hi = rng
            if lo is not None and hi is not None and lo > hi:
                raise UsageError(f"{metric} range is empty: min {lo:g} > max {hi:g}")
            if hi is not None:
                cons.append(Constraint(metric, float(hi), True))
            if lo is not None and lo > 0:
                cons.append(Constraint(metric, float(lo), False))
        return cls(costs, cons)

    def budget(self, table: str) -> float | None:
        for c in self.constraints:
            if c.metric == LATENCY and c.table == table:
                return c.bound
        return None

    def price(self, configs: np.ndarray, with_counts: bool = False) -> Pricing:
        """Latency on every table, FLOPs/params when constrained (or asked), constraint values."""
        lat = self.costs.latency(configs)
        flops = self.costs.flops(configs) if (self._need_flops or with_counts) else None
        params = self.costs.params(configs) if (self._need_params or with_counts) else None
        metric = {"flops": flops, "params": params}
        cols = []
        for c in self.constraints:
            m = lat[:, self.costs.tables.index(c.table)] if c.metric == LATENCY else metric[c.metric]
            cols.append(c.values(m))
        values = np.column_stack(cols) if cols else np.zeros((len(configs), 0))
        feasible = (values <= 0).all(axis=1)
        return Pricing(lat, flops, params, values, feasible)

    # ------------------------------------------------------------------ before searching
    def check(self, domain: Domain, rng: np.random.Generator, tries: int = 20_000) -> np.ndarray:
        """Fail fast on a budget no subnet meets; else return one config meeting every constraint
        (the anchor that bounded repairs pull infeasible draws towards)."""
        space = self.costs.space
        smallest = domain.smallest()[None, :]
        base = self.price(smallest)
        candidates = [smallest[0]]
        for i, c in enumerate(self.constraints):
            if base.values[0, i] <= 0:
                continue
            # the smallest subnet misses this bound: is any subnet within it? (exact, per bound)
            best, cfg = extreme(self.costs.predictor(c), domain, maximize=not c.upper)
            ok = best <= c.bound if c.upper else best >= c.bound
            if not ok:
                raise InfeasibleBudgetError(_infeasible_message(c, best, space.name))
            candidates.append(cfg)
        cand = np.array(candidates)
        p = self.price(cand)
        if p.feasible.any():
            return cand[int(np.argmax(p.feasible))]
        # each bound alone is reachable but no candidate meets them all: a bounded random look
        for rate in np.linspace(0.0, 1.0, 11):
            for anchor in cand:
                draws = domain.blend(rng, domain.sample(rng, tries // 22), anchor, rate)
                p = self.price(draws)
                if p.feasible.any():
                    return draws[int(np.argmax(p.feasible))]
        raise InfeasibleBudgetError(
            f"no subnet of {space.name} found that meets every constraint at once ("
            + "; ".join(c.name for c in self.constraints) + f") after {tries} draws; each bound "
            "alone is reachable: relax one of them")


def _infeasible_message(c: Constraint, best: float, space_name: str) -> str:
    if c.metric == LATENCY:
        return (f"latency budget {c.bound:g} ms on table {c.table!r} cannot be met: the smallest "
                f"achievable latency of {space_name} there is {best:.4g} ms")
    word = "smallest" if c.upper else "largest"
    return (f"{c.metric} {'max' if c.upper else 'min'} {c.bound:g} cannot be met: the {word} "
            f"achievable {c.metric} of {space_name} is {best:.6g}")


def extreme(predictor, domain: Domain, maximize: bool = False) -> tuple[float, np.ndarray]:
    """Exact minimum (or maximum) of a Predictor over the domain, and a config reaching it.

    A dynamic programme over the predictor's compiled slot tables (predict.best_over_slots): the
    state is the slot state (feature-map shape...) plus the choices that later slots still read,
    so it never walks the subnets. Tables that are not monotonic in the choices (measured noise)
    are handled exactly."""
    from ..predict import best_over_slots

    allowed = [domain.allowed(p).tolist() for p in range(domain.n_positions)]
    best = best_over_slots(predictor._tables, allowed, lambda t: t.cost, lambda t: np.isfinite(t.cost),
                           maximize=maximize)
    if not best:
        raise UsageError(f"{predictor.space.name}: no config of the domain can be priced")
    _, assign = best[()]
    config = domain.smallest()
    for p, v in assign:
        config[p] = v
    return float(predictor.predict_batch(config[None, :])[0]), config


def refuse_fallback(predictors: Mapping[str, object], domain: Domain) -> None:
    """Before a search: FallbackError when some config of the domain would have more of its keys
    priced by the fallback regression than a table's predictor allows (Predictor.max_fallback)."""
    allowed = [domain.allowed(p).tolist() for p in range(domain.n_positions)]
    for pred in predictors.values():
        pred.check_fallback(allowed)


@functools.lru_cache(maxsize=64)
def table_keys(space, resolution: int | None, granularity: str, fusion: str) -> frozenset:
    """Table-level keys of every block the space uses (at one resolution, or at any)."""
    from ..predict import Pricer

    lower = Pricer({}, granularity, fusion).lower
    blocks = space.enumerate_blocks(None if resolution is None else [resolution])
    return frozenset(op.key for b in blocks for op in lower(b))
