"""Tables fitted from end-to-end latencies: per-key costs by regularised non-negative least squares
over the keys' counts in measured networks, each with its uncertainty.

For devices whose single ops cannot be timed (an NPU behind a vendor SDK, a closed runtime) or
where only whole models can be: a network's latency is modelled as its keys' costs summed plus a
fixed per-network cost (the intercept, kept as the table's per-call cost, so a fitted table prices
exactly as a measured one: sum of (row - per-call) + per-call). Errors are relative (a 1 ms miss on
a 5 ms network weighs what a 4 ms miss on a 20 ms one does; Huber's loss beyond 10%); the costs
are shrunk towards a prior (a FLOPs, bytes and kernels model of the same networks, or other
devices' tables: latbench.transfer) by a strength chosen by cross-validation. A key no measured network holds is left out of a plain fit
(its price would be the prior's guess); with a prior table it keeps the prior's cost, labelled so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import UsageError
from .ops import OpSpec

LAMBDAS = tuple(10.0 ** e for e in np.arange(-3.0, 6.01, 0.5))  # shrinkage strengths tried by CV
PRIOR_FLOOR = 0.05  # a key's shrink scale is at least this share of an average key's cost
WEIGHT_FLOOR = 0.25  # a network below this share of the median latency weighs as if it were there
HUBER_DELTA = 0.10  # relative errors beyond this count linearly in every fit, not squared
FOLDED_SHARE = 0.10  # a network measured below this share of the median was folded away: left out


@dataclass(frozen=True)
class KeyCounts:
    """How often each table key occurs in each network: `counts` (networks, keys)."""

    keys: tuple[str, ...]
    ops: tuple[OpSpec, ...]
    counts: np.ndarray
    granularity: str = "block"
    fusion: str = "none"

    def column(self, keys: Sequence[str]) -> np.ndarray:
        """The counts of `keys` (0 where a key is not among these networks'), (networks, len(keys))."""
        where = {k: i for i, k in enumerate(self.keys)}
        out = np.zeros((self.counts.shape[0], len(keys)))
        for j, k in enumerate(keys):
            i = where.get(k)
            if i is not None:
                out[:, j] = self.counts[:, i]
        return out


def key_counts(space, configs: np.ndarray, granularity: str = "block", fusion: str = "none",
               extra_ops: Sequence[OpSpec] = ()) -> KeyCounts:
    """Count the table keys of each config as `Predictor` prices it (blocks lowered at
    `granularity` with `fusion`); `extra_ops` are keys to hold a column even where no config has them."""
    from .predict import Pricer

    pricer = Pricer({}, granularity, fusion)
    index: dict[str, int] = {}
    ops: list[OpSpec] = []
    for op in extra_ops:
        if op.key not in index:
            index[op.key] = len(ops)
            ops.append(op)
    rows: list[dict[int, int]] = []
    per_config: dict[tuple, dict[int, int]] = {}
    for cfg in np.asarray(configs):
        sig = tuple(int(v) for v in cfg)
        row = per_config.get(sig)
        if row is None:
            row = {}
            for block in space.blocks(cfg):
                for op in pricer.lower(block):
                    i = index.get(op.key)
                    if i is None:
                        i = index[op.key] = len(ops)
                        ops.append(op)
                    row[i] = row.get(i, 0) + 1
            per_config[sig] = row
        rows.append(row)
    counts = np.zeros((len(rows), len(ops)))
    for r, row in enumerate(rows):
        for i, c in row.items():
            counts[r, i] = c
    return KeyCounts(tuple(o.key for o in ops), tuple(ops), counts, granularity, fusion)


@dataclass(frozen=True)
class Prior:
    """Costs to shrink a fit towards: ms per occurrence of each key (per-call cost taken out) and
    the per-network cost; `name` says where they came from, `weights` how tables were combined."""

    name: str
    cost: np.ndarray  # (keys,)
    intercept: float
    weights: Mapping[str, float] = field(default_factory=dict)

    def predict(self, counts: np.ndarray) -> np.ndarray:
        return counts @ self.cost + self.intercept


@dataclass(frozen=True)
class FitResult:
    """Fitted costs: ms per occurrence of each key and of the network (intercept), their standard
    deviations, the shrinkage chosen and the cross-validated error that chose it."""

    keys: tuple[str, ...]
    ops: tuple[OpSpec, ...]
    cost: np.ndarray  # (keys,) ms per occurrence, per-network cost not included
    sd: np.ndarray  # (keys,) ms
    intercept: float  # ms per network (the table's per-call cost)
    intercept_sd: float
    networks: int  # measured networks fitted on
    seen: np.ndarray  # (keys,) networks holding each key; 0: the key's cost is the prior's
    prior: Prior
    lam: float  # shrinkage towards the prior (inf: the prior itself)
    cv_rmspe: float  # cross-validated root mean squared (weighted) relative error at `lam`
    folds: int
    in_sample: Mapping[str, Any] = field(default_factory=dict)
    granularity: str = "block"
    fusion: str = "none"
    folded: int = 0  # measured networks left out as folded away (see `unfolded`)

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """ms of each network of `counts` (columns in this fit's key order)."""
        return counts @ self.cost + self.intercept

    def record(self) -> dict[str, Any]:
        """What a fitted table keeps of its fit (plain JSON)."""
        return {"networks": self.networks, "folded_left_out": self.folded, "keys": len(self.keys), "keys_seen": int(np.count_nonzero(self.seen)),
                "lambda": None if math.isinf(self.lam) else self.lam, "cv_rmspe": self.cv_rmspe,
                "folds": self.folds, "prior": self.prior.name, "prior_weights": dict(self.prior.weights),
                "intercept_ms": self.intercept, "intercept_sd_ms": self.intercept_sd,
                "in_sample": dict(self.in_sample), "granularity": self.granularity, "fusion": self.fusion}


# ---------------------------------------------------------------------- the regression
def _check(counts: np.ndarray, ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = np.asarray(counts, dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    if A.ndim != 2 or y.ndim != 1 or A.shape[0] != y.shape[0]:
        raise UsageError(f"counts (networks, keys) and latencies (networks,) disagree: {A.shape} and {y.shape}")
    if y.size == 0:
        raise UsageError("a fit needs at least one measured network")
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise UsageError("measured latencies must be finite and > 0 ms")
    return A, y


def _scales(theta0: np.ndarray, A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far each coefficient (keys, then intercept) may move per unit of penalty: its prior
    value `theta0`, floored at a share of an average key's cost so a key priced ~0 can still move."""
    per_key = float(np.mean(y)) / max(float(np.mean(A.sum(axis=1))), 1.0)
    return np.maximum(theta0, PRIOR_FLOOR * per_key)


def unfolded(y: np.ndarray) -> np.ndarray:
    """The networks a sum of op costs can price: those measured at FOLDED_SHARE of the median or
    more. Below it the runtime ran a network other than the one written (TFLite folds an
    input-independent NAS-Bench-201 cell to a constant: 0.003 ms against a median of 10.7 ms on
    HELP's pixel3, 291 of 15,625 cells; no other device of HELP's data has any there)."""
    return y >= FOLDED_SHARE * float(np.median(y))


def relative_weights(y: np.ndarray) -> np.ndarray:
    """1 / ms, so errors count relative; a network measured below WEIGHT_FLOOR x the median weighs as
    if it were there, so the few fastest networks do not outweigh the rest (networks folded away
    entirely, under FOLDED_SHARE of the median, are left out before: `unfolded`)."""
    return 1.0 / np.maximum(y, WEIGHT_FLOOR * float(np.median(y)))


def huber(e: np.ndarray) -> np.ndarray:
    """Huber's loss of relative errors: squared up to HUBER_DELTA, linear beyond."""
    a = np.abs(e)
    return np.where(a <= HUBER_DELTA, 0.5 * a * a, HUBER_DELTA * (a - 0.5 * HUBER_DELTA))


def robust_nnls(X: np.ndarray, t: np.ndarray, penalty: np.ndarray | None = None,
                target: np.ndarray | None = None, iters: int = 8) -> np.ndarray:
    """Non-negative least squares of the data rows X c ~ t (relative: t is ms x weight) under
    Huber's loss, by reweighting (IRLS), so the few networks no sum of op costs explains (a runtime
    that folds one away to nothing) do not decide the fit; `penalty` rows ~ `target` (shrinkage
    towards a prior) keep their full weight."""
    from scipy.optimize import nnls

    h = np.ones(len(t))
    coef = np.zeros(X.shape[1])
    for _ in range(iters):
        M, tt = X * h[:, None], t * h
        if penalty is not None:
            M, tt = np.r_[M, penalty], np.r_[tt, target]
        coef, _ = nnls(M, tt, maxiter=50 * M.shape[1])
        r = np.abs(X @ coef - t)
        new = np.where(r <= HUBER_DELTA, 1.0, np.sqrt(HUBER_DELTA / np.maximum(r, 1e-300)))
        if np.allclose(new, h, rtol=1e-3, atol=1e-6):
            break
        h = new
    return coef


def _solve(A: np.ndarray, y: np.ndarray, theta0: np.ndarray, scale: np.ndarray, lam: float) -> np.ndarray:
    """argmin sum(huber(w (A c + b - y))) + lam/2 * sum(((theta - theta0) / scale)^2), theta >= 0,
    w the relative weights."""
    if math.isinf(lam):
        return theta0.copy()
    w = relative_weights(y)
    X = np.c_[A, np.ones(len(y))] * w[:, None]
    root = math.sqrt(lam)
    return robust_nnls(X, y * w, np.diag(root / scale), root * theta0 / scale)


def _folds(n: int, seed: int) -> list[np.ndarray]:
    """Leave-one-out up to 20 networks, 10 folds above (seeded)."""
    if n <= 20:
        return [np.array([i]) for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::10] for i in range(10)]


def _cv_errors(A, y, theta0, scale, lam, folds) -> np.ndarray:
    """Each network's weighted relative error when its fold is left out of the fit."""
    errs = np.empty(len(y))
    w = relative_weights(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        th = _solve(A[train], y[train], theta0, scale, lam)
        errs[test] = (A[test] @ th[:-1] + th[-1] - y[test]) * w[test]
    return errs


def structural_priors(ops: Sequence[OpSpec]) -> list[Prior]:
    """Per-key FLOPs, bytes and kernels (a key's ops, each one launch: what a small-batch GPU pays
    most for), and a constant per network, as unit priors a non-negative mix prices networks by."""
    from .ops import expand

    flops = np.array([o.flops for o in ops], dtype=np.float64)
    nbytes = np.array([o.bytes for o in ops], dtype=np.float64)
    kernels = np.array([len(expand(o)) for o in ops], dtype=np.float64)
    zero = np.zeros(len(ops))
    return [Prior("flops", flops / max(flops.max(), 1.0), 0.0), Prior("bytes", nbytes / max(nbytes.max(), 1.0), 0.0),
            Prior("kernels", kernels, 0.0), Prior("per network", zero, 1.0)]


def mix_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights of the columns of P (each a prior's prices of the networks) that
    predict the measured `y` best: relative errors, Huber's loss."""
    w = relative_weights(y)
    return robust_nnls(P * w[:, None], y * w)


def combine(priors: Sequence[Prior], weights: Sequence[float], name: str) -> Prior:
    """The prior `sum(weights[j] * priors[j])`, the names of those weighted recorded."""
    return Prior(name, np.asarray(sum(c * p.cost for c, p in zip(weights, priors)), dtype=np.float64),
                 float(sum(c * p.intercept for c, p in zip(weights, priors))),
                 {p.name: float(c) for c, p in zip(weights, priors) if c > 0})


def mix(priors: Sequence[Prior], counts: np.ndarray, y: np.ndarray, name: str) -> Prior:
    """The non-negative mix of `priors` that predicts the networks of `counts` best."""
    return combine(priors, mix_weights(np.array([p.predict(counts) for p in priors]).T, y), name)


def flops_prior(A: np.ndarray, y: np.ndarray, ops: Sequence[OpSpec]) -> Prior:
    """The FLOPs, bytes and kernels model of the same networks as a prior: ms = a*FLOPs + g*bytes +
    d*kernels + b (non-negative, relative errors), each key priced by its own FLOPs, bytes, ops."""
    return mix(structural_priors(ops), A, y, "flops+bytes+kernels")


def fit_costs(counts: KeyCounts, ms: Sequence[float], prior: Prior | None = None,
              lam: float | None = None, seed: int = 0) -> FitResult:
    """Per-key costs (ms) from the measured `ms` of the networks `counts` describes, shrunk towards
    `prior` (default: the FLOPs, bytes and kernels model of these networks) by `lam` (default: the
    strength among LAMBDAS whose cross-validated relative errors have the least Huber loss)."""
    A, y = _check(counts.counts, np.asarray(ms))
    keep = unfolded(y)
    A, y = A[keep], y[keep]
    prior = prior or flops_prior(A, y, counts.ops)
    if prior.cost.shape != (A.shape[1],):
        raise UsageError(f"the prior prices {prior.cost.shape[0]} keys, the networks hold {A.shape[1]}")
    seen = (A > 0).sum(axis=0)
    cols = np.r_[seen > 0, True]  # a key no network holds keeps the prior's cost: solve the others
    theta0 = np.r_[prior.cost, prior.intercept]
    scale = _scales(theta0, A, y)[cols]
    As, t0 = A[:, seen > 0], theta0[cols]
    folds = _folds(len(y), seed)
    rms = lambda e: float(np.sqrt(np.mean(e * e)))  # noqa: E731
    if lam is None:
        grid = list(LAMBDAS) + [math.inf]
        if len(y) < 2:
            lam, cv = math.inf, math.nan
        else:  # the strength whose left-out errors have the least Huber loss (a folded network no model explains)
            errs = [_cv_errors(As, y, t0, scale, g, folds) for g in grid]
            best = int(np.argmin([np.mean(huber(e)) for e in errs]))
            lam, cv = grid[best], rms(errs[best])
    else:
        if not (lam >= 0):
            raise UsageError(f"the shrinkage must be >= 0, got {lam!r}")
        cv = rms(_cv_errors(As, y, t0, scale, lam, folds)) if len(y) >= 2 else math.nan
    theta, sd = theta0.copy(), np.full(theta0.shape, math.nan)
    theta[cols] = _solve(As, y, t0, scale, lam)
    sd[cols] = _posterior_sd(As, y, theta[cols], scale, lam)
    pred = A @ theta[:-1] + theta[-1]
    from .validate.metrics import error_metrics

    fitted = error_metrics(pred, y).to_dict()
    return FitResult(counts.keys, counts.ops, theta[:-1], sd[:-1], float(theta[-1]), float(sd[-1]), len(y),
                     seen, prior, float(lam), cv, len(folds), fitted,
                     counts.granularity, counts.fusion, int(np.count_nonzero(~keep)))


def _posterior_sd(A, y, theta, scale, lam) -> np.ndarray:
    """Each coefficient's standard deviation (ms): the ridge posterior's, with the residual
    variance of the relative errors estimated on the degrees of freedom the fit leaves."""
    if math.isinf(lam):
        return np.full(theta.shape, math.nan)
    w = relative_weights(y)
    X = np.c_[A, np.ones(len(y))] * w[:, None]
    r = X @ theta - y * w
    P = np.diag(lam / scale**2)
    H = X.T @ X + P
    Hinv = np.linalg.pinv(H)
    dof = float(np.trace(X @ Hinv @ X.T))
    resid_var = float(r @ r) / max(len(y) - dof, 1.0)
    return np.sqrt(np.maximum(np.diag(Hinv) * resid_var, 0.0))


__all__ = ["KeyCounts", "key_counts", "Prior", "FitResult", "fit_costs", "flops_prior", "structural_priors", "mix",
           "mix_weights", "combine",
           "LAMBDAS", "robust_nnls", "huber", "unfolded"]
