"""The search driver, kept apart as optuna keeps Sampler / Storage / Study apart: a strategy only
draws, prices and scores through a Study; the Study holds the constraints, the accuracy source,
the trial log and the seeded RNG; the result is read off the log, never taken from a strategy's
word, so every reported config was priced and met every constraint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import LatbenchError, UsageError
from .accuracy import AccuracySource, make_accuracy_source
from .constraints import ConstraintSet, CostModel, Pricing, refuse_fallback
from .domain import Domain

Progress = Callable[[int, int, float], None]  # (steps done, steps in all, best accuracy so far)


class TrialLog:
    """Every scored config in scoring order, with its accuracy, latency per table and feasibility."""

    def __init__(self, tables: tuple[str, ...]):
        self.tables = tables
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._cat: tuple[np.ndarray, ...] | None = None
        self._n = 0

    def add(self, configs: np.ndarray, accuracy: np.ndarray, pricing: Pricing, step: int) -> None:
        n = len(configs)
        self._parts.append((configs.astype(np.int16 if configs.max(initial=0) < 2**15 else np.int64),
                            accuracy.astype(np.float64), pricing.latency_ms.astype(np.float64),
                            pricing.feasible.copy(), np.full(n, step, dtype=np.int32)))
        self._n += n
        self._cat = None

    def __len__(self) -> int:
        return self._n

    def _arrays(self) -> tuple[np.ndarray, ...]:
        if self._cat is None:
            if not self._parts:
                return (np.zeros((0, 0), np.int64), np.zeros(0), np.zeros((0, len(self.tables))),
                        np.zeros(0, bool), np.zeros(0, np.int32))
            self._cat = tuple(np.concatenate(col) for col in zip(*self._parts))
            self._parts = [self._cat]
        return self._cat

    @property
    def configs(self) -> np.ndarray:
        return self._arrays()[0].astype(np.int64)

    @property
    def accuracy(self) -> np.ndarray:
        return self._arrays()[1]

    @property
    def latency_ms(self) -> np.ndarray:
        return self._arrays()[2]

    @property
    def feasible(self) -> np.ndarray:
        return self._arrays()[3]

    @property
    def step(self) -> np.ndarray:
        return self._arrays()[4]

    def best(self) -> int:
        """Index of the most accurate feasible trial (the first one on ties)."""
        acc = np.where(self.feasible, self.accuracy, -np.inf)
        if not len(acc) or not np.isfinite(acc.max()):
            raise LatbenchError("the search scored no config that meets every constraint")
        return int(np.argmax(acc))

    def pareto(self, table: int = 0) -> np.ndarray:
        """Indices of the feasible trials no other feasible trial beats on both accuracy (higher)
        and latency on `table` (lower), sorted by latency; duplicates of a config kept once."""
        idx = np.flatnonzero(self.feasible)
        if not idx.size:
            return idx
        lat, acc = self.latency_ms[idx, table], self.accuracy[idx]
        order = idx[np.lexsort((-acc, lat))]
        keep, best = [], -np.inf
        for i in order:
            if self.accuracy[i] > best:
                keep.append(i)
                best = self.accuracy[i]
        return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class SearchResult:
    """The best config found, what it costs and scores, and how the search got there."""

    space: str
    strategy: str
    seed: int
    config: np.ndarray  # index vector
    published: Any  # the space's published form (OFA {"ks","e","d","r"})
    latency_ms: dict[str, float]  # per table (calibrated where the table has a calibration)
    flops: int
    params: int
    accuracy: float
    accuracy_source: str
    accuracy_proxy: bool
    budgets_ms: dict[str, float]
    constraints: tuple[str, ...]
    evaluations: int  # configs scored (the trial log's length)
    asked: int  # of which the accuracy source was asked (a deterministic one once per config)
    priced: int  # configs priced by the constraints (re-draws included)
    seconds: float
    history: np.ndarray  # best feasible accuracy after each step (generation / iteration)
    trials: TrialLog = field(repr=False)
    front: np.ndarray | None = None  # trial indices of the accuracy/latency Pareto front
    fallback_keys: dict[str, int] = field(default_factory=dict)  # keys of the best priced by regression

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: config, latency_ms (a number, or by table), flops, params, accuracy."""
        lat: Any = next(iter(self.latency_ms.values())) if len(self.latency_ms) == 1 else dict(self.latency_ms)
        return {
            "config": self.published, "latency_ms": lat, "flops": self.flops, "params": self.params,
            "accuracy": self.accuracy, "accuracy_source": self.accuracy_source,
            "accuracy_is_proxy": self.accuracy_proxy, "space": self.space, "strategy": self.strategy,
            "seed": self.seed, "budget_ms": dict(self.budgets_ms), "constraints": list(self.constraints),
            "evaluations": self.evaluations, "accuracy_calls": self.asked, "priced": self.priced, "seconds": round(self.seconds, 4),
            "index": [int(v) for v in self.config], "fallback_keys": dict(self.fallback_keys),
        }


class Study:
    """One search: space and domain, constraints, accuracy objective, trial log, seeded RNG."""

    def __init__(self, space, constraints: ConstraintSet, accuracy: AccuracySource | None, domain: Domain,
                 seed: int = 0, progress: Progress | None = None):
        self.space = space
        self.constraints = constraints
        self.accuracy = accuracy
        self.domain = domain
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.log = TrialLog(constraints.costs.tables)
        self.progress = progress
        self.anchor: np.ndarray | None = None
        self.priced = 0
        self.step = 0
        self.history: list[float] = []
        self.asked = 0  # configs sent to the accuracy source (repeats answered from memory)
        self._seen: dict[bytes, float] = {}
        self._best = -np.inf

    # ------------------------------------------------------------------ pricing and scoring
    def check(self) -> np.ndarray:
        """Refuse impossible budgets at once; keep a feasible anchor for bounded repairs."""
        self.anchor = self.constraints.check(self.domain, self.rng)
        return self.anchor

    def price(self, configs: np.ndarray) -> Pricing:
        self.priced += len(configs)
        return self.constraints.price(configs)

    def score(self, configs: np.ndarray, pricing: Pricing | None = None) -> np.ndarray:
        """Accuracy of a batch, logged with its pricing: one call to the source for the configs
        it has not scored before (a deterministic source is asked once per config)."""
        if pricing is None:
            pricing = self.price(configs)
        acc = self._cached_accuracy(configs) if self.accuracy.deterministic else self._ask(configs)
        if not np.isfinite(acc).all():
            raise LatbenchError(f"accuracy source {self.accuracy.name} returned a non-finite score")
        self.log.add(configs, acc, pricing, self.step)
        feas = acc[pricing.feasible]
        if feas.size:
            self._best = max(self._best, float(feas.max()))
        return acc

    def _ask(self, configs: np.ndarray) -> np.ndarray:
        self.asked += len(configs)
        return self.accuracy(configs)

    def _cached_accuracy(self, configs: np.ndarray) -> np.ndarray:
        configs = np.ascontiguousarray(configs, dtype=np.int64)
        keys = [row.tobytes() for row in configs]
        acc = np.empty(len(keys))
        new: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            v = self._seen.get(k)
            if v is None:
                new.setdefault(k, []).append(i)
            else:
                acc[i] = v
        if new:
            rows = [idx[0] for idx in new.values()]
            values = self._ask(configs[rows])
            for (k, idx), v in zip(new.items(), values.tolist()):
                self._seen[k] = v
                acc[idx] = v
        return acc

    def tick(self, done: int, total: int) -> None:
        """A strategy finished one step: record the best so far and report progress."""
        self.step = done
        self.history.append(self._best)
        if self.progress:
            self.progress(done, total, self._best)

    # ------------------------------------------------------------------ feasible draws, bounded
    def redraw(self, propose: Callable[[np.ndarray], np.ndarray], n: int, rounds: int = 6,
               fallback: np.ndarray | None = None) -> tuple[np.ndarray, Pricing, np.ndarray]:
        """Up to n feasible configs: round r asks `propose(rows)` for 2**r candidates per row still
        missing, in one batch, and keeps each row's first feasible one; never loops unbounded,
        unlike `while True` re-sampling. Rows still missing after `rounds` take `fallback`'s row
        when given. Returns (configs, their pricing, rows that found no feasible candidate)."""
        P = self.domain.n_positions
        out = np.zeros((n, P), dtype=np.int64)
        priced: Pricing | None = None
        need = np.arange(n)
        missing = need
        for r in range(rounds):
            if not need.size:
                break
            m = 2 ** r
            cand = propose(np.repeat(need, m))
            p = self.price(cand)
            if priced is None:
                priced = Pricing.blank(n, p)
            ok = p.feasible.reshape(len(need), m)
            got = ok.any(axis=1)
            pick = np.flatnonzero(got) * m + ok.argmax(axis=1)[got]
            out[need[got]] = cand[pick]
            priced.put(need[got], p.take(pick))
            need = need[~got]
        missing = need
        if priced is None:  # rounds == 0
            priced = Pricing.blank(n, self.price(out[:1]))
            missing = np.arange(n)
        if fallback is not None and missing.size:
            out[missing] = fallback[missing]
            priced.put(missing, self.price(out[missing]))
        return out, priced, missing

    def sample_feasible(self, n: int) -> tuple[np.ndarray, Pricing]:
        """n feasible configs and their pricing: uniform draws first; rows the budget keeps
        rejecting are drawn pulled towards the feasible anchor (more strongly each round), and
        at last are the anchor itself."""
        dom, rng = self.domain, self.rng
        if self.anchor is None:
            self.check()
        out, priced, need = self.redraw(lambda rows: dom.sample(rng, len(rows)), n, rounds=5)
        for rate in (0.3, 0.6, 0.85):
            if not need.size:
                break
            sub, sub_priced, miss = self.redraw(
                lambda rows: dom.blend(rng, dom.sample(rng, len(rows)), self.anchor, rate), len(need), rounds=3,
                fallback=np.repeat(self.anchor[None, :], len(need), axis=0) if rate == 0.85 else None)
            got = np.arange(len(need)) if rate == 0.85 else np.setdiff1d(np.arange(len(need)), miss)
            out[need[got]] = sub[got]
            priced.put(need[got], sub_priced.take(got))
            need = need[np.setdiff1d(np.arange(len(need)), got)]
        return out, priced

    # ------------------------------------------------------------------ result
    def result(self, strategy: str, seconds: float, front: bool = False) -> SearchResult:
        i = self.log.best()
        cfg = self.log.configs[i]
        counts = self.constraints.price(cfg[None, :], with_counts=True)
        tables = self.constraints.costs.tables
        budgets = {t: b for t in tables if (b := self.constraints.budget(t)) is not None}
        preds = self.constraints.costs.predictors
        misses = {t: int(preds[t].predict_batch(cfg[None, :], return_misses=True)[1][0]) for t in tables}
        return SearchResult(
            space=self.space.name, strategy=strategy, seed=self.seed, config=cfg,
            published=self.space.to_published(cfg),
            latency_ms={t: float(counts.latency_ms[0, k]) for k, t in enumerate(tables)},
            flops=int(round(float(counts.flops[0]))), params=int(round(float(counts.params[0]))),
            accuracy=float(self.log.accuracy[i]), accuracy_source=self.accuracy.name,
            accuracy_proxy=bool(self.accuracy.proxy), budgets_ms=budgets,
            constraints=tuple(c.name for c in self.constraints.constraints),
            evaluations=len(self.log), asked=self.asked, priced=self.priced, seconds=seconds,
            history=np.array(self.history), trials=self.log,
            front=self.log.pareto() if front else None, fallback_keys=misses,
        )


def run_search(space, predictors: Mapping[str, Any], budgets_ms: Mapping[str, float] | None = None,
               accuracy: AccuracySource | str = "flops", strategy: str = "evolution", seed: int = 0,
               flops_range: tuple[float | None, float | None] | None = None,
               params_range: tuple[float | None, float | None] | None = None,
               choices: Mapping[str, Any] | None = None, progress: Progress | None = None,
               front: bool | None = None, **strategy_options) -> SearchResult:
    """Search `space` for the most accurate subnet meeting every budget on every table.

    predictors: {table name: Predictor}; budgets_ms: {table name: ms} (a subnet must fit each);
    accuracy: an AccuracySource or a spec such as "flops", "mlp:PATH", "callable:mod:fn";
    flops_range / params_range: (min, max), None for an open end; choices: {position: allowed
    values} to restrict the space (e.g. {"r": [160, 192, 224]}); strategy_options go to the
    strategy (population, generations, and its own knobs). Raises InfeasibleBudgetError at once
    when a bound cannot be met, naming the smallest achievable value, and FallbackError when a
    table lacks more of some subnet's keys than its predictor's max_fallback allows.
    """
    from .strategies import get_strategy

    t0 = time.perf_counter()
    if isinstance(space, str):
        from ..spaces import get_space

        space = get_space(space)
    if not isinstance(predictors, Mapping):
        predictors = {"table": predictors}
    run = get_strategy(strategy)
    opts = run.options(strategy_options)  # bad options fail before any work
    costs = CostModel(space, predictors)
    unknown = set(budgets_ms or {}) - set(costs.tables)
    if unknown:
        raise UsageError(f"budget for unknown table(s) {', '.join(sorted(unknown))}; tables: {', '.join(costs.tables)}")
    cons = ConstraintSet.build(costs, budgets_ms, flops_range, params_range)
    domain = Domain.of(space, choices)
    refuse_fallback(costs.predictors, domain)  # a table that lacks most keys of the space: say so now
    study = Study(space, cons, None, domain, seed, progress)
    study.check()  # before the accuracy source loads (torch...): an impossible budget fails at once
    study.accuracy = make_accuracy_source(accuracy, space)
    run.run(study, opts)
    if front is None:
        front = run.pareto
    return study.result(run.name, time.perf_counter() - t0, front=front)
