"""The search driver, kept apart as optuna keeps Sampler / Storage / Study apart: a strategy only
draws, prices and scores through a Study; the Study holds the constraints, the accuracy source,
the trial log and the seeded RNG; the result is read off the log, never taken from a strategy's
word, so every reported config was priced and met every constraint.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import LatbenchError, UsageError
from .accuracy import AccuracySource, make_accuracy_source
from .constraints import ConstraintSet, CostModel, Pricing, refuse_fallback
from .domain import Domain

Progress = Callable[[int, int, float], None]  # (steps done, steps in all, best accuracy so far)


def _column(i: int, doc: str) -> property:
    """A read-only view of the TrialLog's i-th logged array."""
    return property(lambda self: self._arrays()[i], doc=doc)


class TrialLog:
    """Every scored config in scoring order, with its accuracy, latency per table and feasibility."""

    def __init__(self, tables: tuple[str, ...]):
        self.tables = tables
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._cat: tuple[np.ndarray, ...] | None = None
        self._n = 0

    def add(self, configs: np.ndarray, accuracy: np.ndarray, pricing: Pricing, step: int,
            numbers: np.ndarray | None = None) -> None:
        """Log a scored batch; `numbers` are the trials' numbers (default: the next ones in order)."""
        n = len(configs)
        if numbers is None:
            numbers = np.arange(self._n, self._n + n)
        self._parts.append((configs.astype(np.int16 if configs.max(initial=0) < 2**15 else np.int64),
                            accuracy.astype(np.float64), pricing.latency_ms.astype(np.float64),
                            pricing.feasible.copy(), np.full(n, step, dtype=np.int32),
                            np.asarray(numbers, dtype=np.int64), pricing.values.astype(np.float64)))
        self._n += n
        self._cat = None

    def __len__(self) -> int:
        return self._n

    def _arrays(self) -> tuple[np.ndarray, ...]:
        if self._cat is None:
            if not self._parts:
                return (np.zeros((0, 0), np.int64), np.zeros(0), np.zeros((0, len(self.tables))),
                        np.zeros(0, bool), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros((0, 0)))
            self._cat = tuple(np.concatenate(col) for col in zip(*self._parts))
            self._parts = [self._cat]
        return self._cat

    @property
    def configs(self) -> np.ndarray:
        """Each logged trial's choice indices (n, positions), as int64 (kept as int16 where they fit)."""
        return self._arrays()[0].astype(np.int64)

    accuracy = _column(1, "Each logged trial's accuracy or score.")
    latency_ms = _column(2, "Predicted latency (n, tables).")
    feasible = _column(3, "Whether each logged trial meets every constraint.")
    step = _column(4, "The strategy step that logged each trial.")
    numbers = _column(5, "Each logged trial's number (Study.ask numbers trials as it hands them out).")
    values = _column(6, "Constraint values (n, constraints): <= 0 feasible.")

    def best(self) -> int:
        """Index of the most accurate feasible trial (the first one on ties)."""
        acc = np.where(self.feasible, self.accuracy, -np.inf)
        if not len(acc):
            raise LatbenchError("no config has been scored yet (tell the study a trial's value first)")
        if not np.isfinite(acc.max()):
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
    study: Any = field(default=None, repr=False)  # the Study it ran on: `result.study.trials` is a DataFrame

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


@dataclass(frozen=True, eq=False)
class Trial:
    """One config handed out by `Study.ask` (or read off the log): what it costs and whether it
    meets every constraint; `value` once told."""

    number: int
    config: Any  # the space's published form (OFA {"ks","e","d","r"})
    index: np.ndarray  # choice indices, one per position
    latency_ms: dict[str, float]  # per table (calibrated where the table has a calibration)
    flops: int
    params: int
    constraints: tuple[float, ...]  # one per Study.constraint_names: <= 0 feasible
    feasible: bool
    value: float | None = None  # the told accuracy or score (higher is better)
    state: str = "running"  # "running" until told, then "complete"


class Study:
    """One search: space and domain, constraints, objective, trial log, seeded RNG. Strategies
    drive it (`run`), or an outside loop does, optuna-style: `ask()` a trial (priced, with its
    constraint values), `tell(trial, value)` its accuracy or score; `best` and `trials` read the log.

    space: a SearchSpace or a registered name; tables: a table path, an open LatencyTable or a
    Predictor, a list of them or a {name: ...} mapping; budgets_ms: one budget for every table or
    {table name: ms}; flops_range / params_range: (min, max), None for an open end; resolutions:
    the resolutions to search (default: those every table covers); choices: {position: allowed
    values}, instead of resolutions; allow_fallback: search subnets with more than 10% of their
    keys missing from a table (priced by the fallback regression)."""

    def __init__(self, space, tables, budgets_ms: float | Mapping[str, float] | None = None, *,
                 seed: int = 0, flops_range: tuple[float | None, float | None] | None = None,
                 params_range: tuple[float | None, float | None] | None = None,
                 resolutions: Sequence[int] | None = None, choices: Mapping[str, Any] | None = None,
                 calibration: bool = True, allow_fallback: bool = False,
                 accuracy: AccuracySource | str | None = None, progress: Progress | None = None):
        from ..predict import DEFAULT_MAX_FALLBACK, resolve_space
        from .tables import load_predictors, search_resolutions

        self.space = space = resolve_space(space)
        if space is None:
            raise UsageError("space is needed: a SearchSpace or a registered space name")
        predictors = load_predictors(space, tables, calibration, None if allow_fallback else DEFAULT_MAX_FALLBACK)
        costs = CostModel(space, predictors)
        self.constraints = ConstraintSet.build(costs, _budgets(budgets_ms, costs.tables), flops_range, params_range)
        self.notes: list[str] = []
        if choices is None:  # refuses a table that lacks most keys of the space, as below
            choices, self.notes = search_resolutions(space, predictors, resolutions)
            self.domain = Domain.of(space, choices)
        elif resolutions:
            raise UsageError("give resolutions or choices, not both")
        else:
            self.domain = Domain.of(space, choices)
            refuse_fallback(costs.predictors, self.domain)  # a table that lacks most keys of the space: say so now
        self.accuracy = None if accuracy is None else make_accuracy_source(accuracy, space)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.log = TrialLog(costs.tables)
        self.progress = progress
        self.anchor: np.ndarray | None = None
        self.priced = 0
        self.step = 0
        self.history: list[float] = []
        self.asked = 0  # configs sent to the accuracy source (repeats answered from memory)
        self._seen: dict[bytes, float] = {}
        self._best = -np.inf
        self._next = 0  # the next trial number
        self._pending: dict[int, tuple[Trial, Pricing]] = {}

    @property
    def tables(self) -> tuple[str, ...]:
        return self.constraints.costs.tables

    @property
    def predictors(self) -> dict[str, Any]:
        """{table name: Predictor}."""
        return self.constraints.costs.predictors

    @property
    def constraint_names(self) -> tuple[str, ...]:
        """What each of a trial's constraint values measures ("latency_ms[t] <= 5")."""
        return tuple(c.name for c in self.constraints.constraints)

    # ------------------------------------------------------------------ ask / tell
    def ask(self, config: Any = None, feasible: bool = False) -> Trial:
        """A trial to evaluate: `config` (published form or index vector) priced, or a seeded
        uniform draw of the domain (`feasible`: one meeting every constraint)."""
        if config is None:
            idx = self.sample_feasible(1)[0] if feasible else self.domain.sample(self.rng, 1)
        else:
            idx = self.space.index(config)[None, :]
        pricing = self.constraints.price(idx, with_counts=True)
        self.priced += 1
        number = self._next
        self._next += 1
        trial = self._trial(number, idx[0], pricing.latency_ms[0], pricing.flops[0], pricing.params[0],
                            pricing.values[0], bool(pricing.feasible[0]))
        self._pending[number] = (trial, pricing)
        return trial

    def tell(self, trial: Trial | int, value: float) -> Trial:
        """Record the accuracy or score (higher is better) of an asked trial; returns it completed."""
        number = trial if isinstance(trial, (int, np.integer)) else trial.number
        if number not in self._pending:
            told = number in set(self.log.numbers.tolist())
            raise UsageError(f"trial {number} was told already" if told else f"trial {number} was never asked")
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v):
            raise UsageError(f"value of trial {number} must be a finite number, got {value!r}")
        asked, pricing = self._pending[number]
        if isinstance(trial, Trial) and not np.array_equal(trial.index, asked.index):
            raise UsageError(f"trial {number} is not this study's: its config differs from the one this study "
                             f"asked as trial {number} (was it asked by another Study?)")
        del self._pending[number]
        self.log.add(asked.index[None, :], np.array([v]), pricing, self.step, numbers=[number])
        if asked.feasible:
            self._best = max(self._best, v)
        return dataclasses.replace(asked, value=v, state="complete")

    @property
    def best(self) -> Trial:
        """The told (or scored) trial with the highest value among those meeting every constraint."""
        i = self.log.best()
        log = self.log
        counts = self.constraints.price(log.configs[i][None, :], with_counts=True)
        return self._trial(int(log.numbers[i]), log.configs[i], log.latency_ms[i], counts.flops[0],
                           counts.params[0], log.values[i], bool(log.feasible[i]), float(log.accuracy[i]))

    @property
    def trials(self):
        """Every trial as a pandas DataFrame, by number: config (published), latency per table
        (`latency_ms[NAME]`), flops, params, feasible, value, state (complete, or running while
        asked and not told)."""
        import pandas as pd

        log = self.log
        pend = [t for t, _ in self._pending.values()]
        logged = log.configs if len(log) else np.zeros((0, self.space.n_positions), np.int64)
        configs = np.concatenate([logged] + [t.index[None, :] for t in pend])
        lat = np.concatenate([log.latency_ms] + [np.array([[t.latency_ms[n] for n in self.tables]]) for t in pend])
        n = len(configs)
        cols: dict[str, Any] = {
            "number": np.concatenate([log.numbers, np.array([t.number for t in pend], dtype=np.int64)]),
            "config": [self.space.to_published(c) for c in configs],
        }
        for k, name in enumerate(self.tables):
            cols[f"latency_ms[{name}]"] = lat[:, k] if n else np.zeros(0)
        costs = self.constraints.costs
        cols["flops"] = costs.flops(configs).round().astype(np.int64) if n else np.zeros(0, np.int64)
        cols["params"] = costs.params(configs).round().astype(np.int64) if n else np.zeros(0, np.int64)
        cols["feasible"] = np.concatenate([log.feasible, np.array([t.feasible for t in pend], dtype=bool)])
        cols["value"] = np.concatenate([log.accuracy, np.full(len(pend), np.nan)])
        cols["state"] = ["complete"] * len(log) + ["running"] * len(pend)
        return pd.DataFrame(cols).sort_values("number", kind="stable").reset_index(drop=True)

    def _trial(self, number: int, idx: np.ndarray, latency, flops, params, values, feasible: bool,
               value: float | None = None) -> Trial:
        idx = np.asarray(idx, dtype=np.int64)
        return Trial(int(number), self.space.to_published(idx), idx,
                     {t: float(latency[k]) for k, t in enumerate(self.tables)},
                     int(round(float(flops))), int(round(float(params))), tuple(float(v) for v in values),
                     feasible, value, "running" if value is None else "complete")

    # ------------------------------------------------------------------ strategies
    def run(self, strategy: str = "evolution", accuracy: AccuracySource | str | None = None,
            front: bool | None = None, **strategy_options) -> "SearchResult":
        """Let a registered strategy drive this study (scoring with `accuracy`, default: the
        study's own, else the FLOPs proxy); returns the SearchResult read off the log."""
        from .strategies import get_strategy

        t0 = time.perf_counter()
        strat = get_strategy(strategy)
        opts = strat.options(strategy_options)  # bad options fail before any work
        self.check()  # before the accuracy source loads (torch...): an impossible budget fails at once
        if accuracy is not None or self.accuracy is None:
            self.accuracy = make_accuracy_source(accuracy if accuracy is not None else "flops", self.space)
        strat.run(self, opts)
        return self.result(strat.name, time.perf_counter() - t0, front=strat.pareto if front is None else front)

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
        self.log.add(configs, acc, pricing, self.step, numbers=np.arange(self._next, self._next + len(configs)))
        self._next += len(configs)
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
            front=self.log.pareto() if front else None, fallback_keys=misses, study=self,
        )


def _budgets(budgets_ms: float | Mapping[str, float] | None, tables: Sequence[str]) -> dict[str, float]:
    """{table: ms} from one budget for every table or a mapping naming known tables."""
    if budgets_ms is None:
        return {}
    if isinstance(budgets_ms, Mapping):
        unknown = set(budgets_ms) - set(tables)
        if unknown:
            raise UsageError(f"budgets_ms: budget for unknown table(s) {', '.join(sorted(unknown))}; "
                             f"tables: {', '.join(tables)}")
        return dict(budgets_ms)
    return {t: budgets_ms for t in tables}


def search(space, tables, budgets_ms: float | Mapping[str, float] | None = None, *,
           accuracy: AccuracySource | str = "flops", strategy: str = "evolution", seed: int = 0,
           flops_range: tuple[float | None, float | None] | None = None,
           params_range: tuple[float | None, float | None] | None = None,
           resolutions: Sequence[int] | None = None, choices: Mapping[str, Any] | None = None,
           calibration: bool = True, allow_fallback: bool = False, progress: Progress | None = None,
           front: bool | None = None, **strategy_options) -> SearchResult:
    """The most accurate subnet of `space` meeting every budget on every table (`latbench.search`).

    tables: a table path, an open LatencyTable or a Predictor, a list of them (named by file
    stem) or {name: ...}; budgets_ms: one budget in ms for every table or {name: ms}; accuracy:
    "flops" (a proxy), "mlp:PATH", "callable:module:function", a registered "prefix:arg" or an
    AccuracySource; strategy: a registered strategy (list_strategies()), with its options
    (population, generations, ...). Without `resolutions` the resolutions every table covers are
    searched. Raises InfeasibleBudgetError at once when a bound cannot be met (naming the
    smallest achievable value) and FallbackError when a table lacks too many of a subnet's keys.
    Same seed, same result; returns a SearchResult (best config, latency per table, trials)."""
    from .strategies import get_strategy

    get_strategy(strategy).options(strategy_options)  # bad options fail before any work
    study = Study(space, tables, budgets_ms, seed=seed, flops_range=flops_range, params_range=params_range,
                  resolutions=resolutions, choices=choices, calibration=calibration,
                  allow_fallback=allow_fallback, progress=progress)
    return study.run(strategy, accuracy, front, **strategy_options)


def run_search(space, predictors: Mapping[str, Any], budgets_ms: Mapping[str, float] | None = None,
               accuracy: AccuracySource | str = "flops", strategy: str = "evolution", seed: int = 0,
               flops_range: tuple[float | None, float | None] | None = None,
               params_range: tuple[float | None, float | None] | None = None,
               choices: Mapping[str, Any] | None = None, progress: Progress | None = None,
               front: bool | None = None, **strategy_options) -> SearchResult:
    """`search` over predictors already built ({table name: Predictor}, or one), on the whole
    space or `choices` ({position: allowed values}, e.g. {"r": [160, 192, 224]}) as given."""
    if not isinstance(predictors, Mapping):
        predictors = {"table": predictors}
    return search(space, dict(predictors), budgets_ms, accuracy=accuracy, strategy=strategy, seed=seed,
                  flops_range=flops_range, params_range=params_range, choices=choices or {},
                  progress=progress, front=front, **strategy_options)
