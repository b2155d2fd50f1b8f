"""Transfer: a device's table from a few of its measured networks and other devices' tables.

Two steps, each chosen on the measured networks themselves:
1. the prior: the other tables' predictions of those networks combined, as the one table that
   predicts them best once scaled, a non-negative mix of the tables, the networks' own FLOPs,
   bytes and kernels model, or that model mixed with the tables, whichever predicts a left-out
   network best (leave-one-out, Huber's loss; ties go to the simpler rule);
2. a key-level correction of that prior (latbench.fit.fit_costs), shrunk towards it by the strength
   that cross-validates best, so a key the networks say little about keeps the prior's cost.
The same two steps refine a measured table of the device itself from k end-to-end measurements:
the prior is then that table alone, and unlike a scale+offset calibration the correction can move
single keys, which is what a per-subnet scatter needs.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import UsageError
from .fit import (FitResult, KeyCounts, Prior, combine, fit_costs, huber, mix_weights, relative_weights,
                  structural_priors, unfolded)
from .ops import OpSpec


def table_prior(table, ops: Sequence[OpSpec], name: str = "", granularity: str | None = None) -> Prior:
    """A table's costs of `ops` (table keys, per-call cost taken out) as a prior; keys it lacks are
    priced by its fallback regression, as `Predictor` would price them."""
    from .predict import Pricer

    pricer = Pricer.from_table(table, granularity)
    inv = pricer.invocation_ms
    cost = np.array([pricer.work(pricer.price_op(op)[0]) for op in ops])
    return Prior(name or str(table.path), cost, inv)


def _mixed(P: np.ndarray, y: np.ndarray, cols: slice | list[int] = slice(None)) -> np.ndarray:
    """`mix_weights` of the priors in `cols`, 0 for the others."""
    w = np.zeros(P.shape[1])
    w[cols] = mix_weights(P[:, cols], y)
    return w


def _loo(P: np.ndarray, y: np.ndarray, fit) -> float:
    """Mean Huber loss of a weighting rule's leave-one-out relative errors."""
    n = len(y)
    if n < 2:
        return math.nan
    wy = relative_weights(y)
    errs = []
    for i in range(n):
        keep = np.arange(n) != i
        w = fit(P[keep], y[keep])
        errs.append((P[i] @ w - y[i]) * wy[i])
    return float(np.mean(huber(np.array(errs))))


def combine_priors(priors: Sequence[Prior], counts: np.ndarray, ms: Sequence[float],
                   ops: Sequence[OpSpec] | None = None) -> Prior:
    """One prior from several tables' priors, weighted to predict the measured networks (`counts`
    in the priors' key order): the best single scaled table, a non-negative mix of the tables, or
    (given the keys' `ops`) the networks' own FLOPs/bytes/kernels model alone or mixed with the
    tables, whichever predicts a left-out network best."""
    if not priors:
        raise UsageError("a transfer needs at least one prior table")
    y = np.asarray(ms, dtype=np.float64)
    keep = unfolded(y)
    counts, y = counts[keep], y[keep]
    units = structural_priors(ops) if ops is not None else []
    everything = list(priors) + units
    P = np.array([p.predict(counts) for p in everything]).T
    n = len(priors)
    rules = [(f"{p.name} scaled", lambda Pm, ym, j=j: _mixed(Pm, ym, [j])) for j, p in enumerate(priors)]
    if n > 1:
        rules.append(("mix of the tables", lambda Pm, ym: _mixed(Pm, ym, slice(0, n))))
    if units:
        rules.append(("flops+bytes+kernels", lambda Pm, ym: _mixed(Pm, ym, slice(n, None))))
        rules.append(("mix of the tables and flops+bytes+kernels", _mixed))
    if len(y) < 2:  # nothing to choose on: the first table, scaled
        name, rule = rules[0]
    else:
        scores = np.array([_loo(P, y, rule) for _, rule in rules])
        best = np.nanmin(scores)  # ties (within rounding) go to the simpler rule, listed first
        name, rule = rules[int(np.flatnonzero(scores <= best * (1 + 1e-9) + 1e-15)[0])]
    return combine(everything, rule(P, y), name)


def transfer_fit(counts: KeyCounts, ms: Sequence[float], priors: Sequence[Prior], lam: float | None = None,
                 seed: int = 0) -> FitResult:
    """Per-key costs of a device from its measured networks (`counts`, `ms`) and other tables'
    priors over the same keys: the priors combined, then a key-level correction shrunk towards them."""
    prior = combine_priors(priors, counts.counts, ms, counts.ops)
    return fit_costs(counts, ms, prior=prior, lam=lam, seed=seed)


__all__ = ["table_prior", "combine_priors", "transfer_fit"]
