"""How close predictions come to measurements: error metrics (within +-5/10%, RMSPE, bias, rank
correlations), each predictor scored over measured subnets, and the FLOPs baseline's fit. Pure numpy
(the rank correlations too: scipy.stats took seconds to import for a few dozen points)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..yardstick import NoiseCeiling, noise_ceiling

if TYPE_CHECKING:
    from .endtoend import SubnetResult

# predictor names, in report order
UNCALIBRATED, CALIBRATED, OP_SUM, FLOPS = "uncalibrated", "calibrated", "op-sum", "flops-linear"
PREDICTORS = (UNCALIBRATED, CALIBRATED, OP_SUM, FLOPS)
PREDICTOR_HELP = {
    UNCALIBRATED: "table predictor, raw sum of table entries",
    CALIBRATED: "table predictor, scale+offset fitted on the calibration subnets",
    OP_SUM: "sum of unfused single ops timed the same way (op granularity, no fusion), uncalibrated",
    FLOPS: "latency linear in FLOPs, fitted on the calibration subnets",
}


@dataclass(frozen=True)
class Metrics:
    """How close predictions are to measurements; relative errors as fractions (0.05 = 5%)."""

    n: int
    within5: float  # share of subnets with |pred - meas| / meas <= 5%
    within10: float  # ... <= 10%
    rmspe: float  # root mean squared relative error
    mape: float  # mean absolute relative error
    bias: float  # mean signed relative error (> 0: over-predicts)
    max_abs: float  # largest absolute relative error
    spearman: float  # rank correlation of predicted and measured
    kendall: float  # Kendall's tau-b of predicted and measured

    def to_dict(self) -> dict[str, float]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """(predicted - measured) / measured, element-wise; measured values must be > 0."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1:
        raise UsageError(f"predicted and measured must be two vectors of one length, got {p.shape} and {m.shape}")
    if p.size and not (m > 0).all():
        raise UsageError("measured latencies must be positive")
    return (p - m) / m


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (scipy.stats.rankdata's "average")."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], xs.size]
    ranks = np.empty(xs.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))


PAIRWISE_MAX = 3000  # above this many points Kendall's tau is scipy's O(n log n), not every pair


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - x ties)(pairs - y ties)), over
    every pair (validation scores tens to hundreds of subnets: the n x n signs are small); scipy's
    equal statistic above PAIRWISE_MAX points (a fit over all 15,625 NAS-Bench-201 cells)."""
    if x.size > PAIRWISE_MAX:
        from scipy.stats import kendalltau

        return float(kendalltau(x, y, variant="b")[0])
    i, j = np.triu_indices(x.size, 1)
    sx, sy = np.sign(x[j] - x[i]), np.sign(y[j] - y[i])
    pairs = i.size
    tx, ty = int(np.count_nonzero(sx == 0)), int(np.count_nonzero(sy == 0))
    return float(np.sum(sx * sy) / math.sqrt((pairs - tx) * (pairs - ty)))


def error_metrics(predicted: Sequence[float], measured: Sequence[float]) -> Metrics:
    """Shares within +-5% / +-10%, RMSPE, MAPE, bias, worst error, Spearman and Kendall."""
    e = relative_errors(predicted, measured)
    n = int(e.size)
    if n == 0:
        nan = math.nan
        return Metrics(0, nan, nan, nan, nan, nan, nan, nan, nan)
    a = np.abs(e)
    eps = 1e-12  # 5% exactly counts as within 5%, whatever the float rounding of p/m
    rho = tau = math.nan
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if n >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        rho, tau = spearman(p, m), kendall_tau_b(p, m)
    return Metrics(
        n=n, within5=float(np.mean(a <= 0.05 + eps)), within10=float(np.mean(a <= 0.10 + eps)),
        rmspe=float(np.sqrt(np.mean(e * e))), mape=float(np.mean(a)), bias=float(np.mean(e)),
        max_abs=float(a.max()), spearman=rho, kendall=tau,
    )


def measured_of(results: Sequence[SubnetResult]) -> np.ndarray:
    return np.array([r.measured_ms for r in results], dtype=np.float64)


def estimated_of(results: Sequence[SubnetResult]) -> np.ndarray:
    """The estimator row's measurements (NaN where it was not taken)."""
    return np.array([r.estimator.measured_ms if r.estimator else math.nan for r in results], dtype=np.float64)


def predicted_of(results: Sequence[SubnetResult], name: str) -> np.ndarray:
    return np.array([r.predicted.get(name, math.nan) for r in results], dtype=np.float64)


def score(results: Sequence[SubnetResult], measured: np.ndarray,
          refitted: Mapping[str, np.ndarray] | None = None) -> dict[str, Metrics]:
    """Every predictor the results carry, scored against `measured` (one value per result);
    `refitted` replaces the predictions of the fitted predictors (calibrated, flops-linear)."""
    out = {}
    for name in PREDICTORS:
        p = refitted[name] if refitted and name in refitted else predicted_of(results, name)
        ok = np.isfinite(p) & np.isfinite(measured)
        if ok.any():
            out[name] = error_metrics(p[ok], measured[ok])
    return out


def ceiling_of(results: Sequence[SubnetResult]) -> NoiseCeiling:
    """The yardstick's noise ceiling over these subnets, in the statistic they are scored by."""
    return noise_ceiling([r.yardstick for r in results], results[0].statistic if results else "median")


def fit_flops(flops: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares (ms per MFLOP, offset ms); offset alone when fewer than 2 distinct FLOPs."""
    f = np.asarray(flops, dtype=np.float64) / 1e6
    m = np.asarray(measured, dtype=np.float64)
    if f.size == 0:
        raise UsageError("a FLOPs fit needs at least one measured subnet")
    if f.size < 2 or np.ptp(f) == 0:
        return 0.0, float(m.mean())
    a, b = np.polyfit(f, m, 1)
    return float(a), float(b)
