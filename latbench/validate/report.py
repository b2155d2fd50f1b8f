"""A validation's report: everything it measured and concluded (`ValidationReport`), as JSON, as
text lines, as a CSV of one row per subnet and as a predicted-vs-measured scatter (matplotlib,
imported when plotting)."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..device import DeviceProfile
from ..errors import LatbenchError
from ..measure import TimingSettings
from ..predict import Calibration
from ..tablemeta import CalibrationEntry
from ..yardstick import CEILING_PASSES, NoiseCeiling, YardstickSettings
from .drift import Retime
from .endtoend import NoiseFloor, SubnetResult, estimate
from .metrics import (CALIBRATED, FLOPS, OP_SUM, PREDICTOR_HELP, PREDICTORS, UNCALIBRATED, Metrics, error_metrics,
                      estimated_of, measured_of, predicted_of)
from .table_facts import TableStatistic, statistic_lines


ESTIMATOR_ROW = "vs latbench estimator"  # the label of the second row set


@dataclass
class ValidationReport:
    """Everything one validation run measured and concluded. `metrics` score the predictors
    against the yardstick; `estimator_metrics` score the same predictions against latbench's
    estimator (None when it was not measured)."""

    table: str
    space: str
    profile: DeviceProfile
    granularity: str
    fusion: str
    timing: TimingSettings  # the estimator row's, the op baseline's and the re-timed entries'
    seed: int
    resolutions: tuple[int, ...]
    subnets: list[SubnetResult]
    calibration_subnets: list[SubnetResult]
    calibration: Calibration | None  # fitted against the yardstick
    flops_fit: tuple[float, float] | None  # ms per MFLOP, offset ms (against the yardstick)
    metrics: dict[str, Metrics]
    yardstick: YardstickSettings = YardstickSettings()
    plain_call: str = ""  # what the yardstick timed (PLAIN_CALLS)
    ceiling: NoiseCeiling | None = None
    table_statistic: TableStatistic | None = None
    estimator_metrics: dict[str, Metrics] | None = None
    estimator_note: str = ""  # why the estimator row is missing
    op_table: str | None = None
    op_profiled: int = 0
    stored_calibration: CalibrationEntry | None = None  # what the table held (not used here)
    noise: NoiseFloor | None = None
    invocation_ms: float = 0.0  # the table's per-call cost (see latbench.predict)
    builds: int = 1  # the estimator's fresh builds per subnet
    retime: Retime | None = None  # table entries timed again before and after the subnets
    wall_s: float = 0.0
    loadavg: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def predictors(self) -> list[str]:
        return [p for p in PREDICTORS if p in self.metrics]

    def estimator_ratio(self) -> float:
        """Median over subnets of estimator / yardstick: how the two rows' measurements differ."""
        r = estimated_of(self.subnets) / measured_of(self.subnets)
        r = r[np.isfinite(r)]
        return float(np.median(r)) if r.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        est = None
        if self.estimator_metrics is not None:
            est = {"label": ESTIMATOR_ROW, "timing": self.timing.to_dict(), "builds": self.builds,
                   "ratio_to_yardstick": self.estimator_ratio(),
                   "metrics": {k: v.to_dict() for k, v in self.estimator_metrics.items()}}
        return {
            "table": self.table, "space": self.space, "profile": self.profile.to_dict(),
            "granularity": self.granularity, "fusion": self.fusion, "timing": self.timing.to_dict(),
            "seed": self.seed, "resolutions": list(self.resolutions), "n": len(self.subnets),
            "calibrate_n": len(self.calibration_subnets),
            "yardstick": {**self.yardstick.to_dict(), "reads": self.yardstick.describe(),
                          "plain_call": self.plain_call},
            "table_statistic": self.table_statistic.to_dict() if self.table_statistic else None,
            "noise_ceiling": self.ceiling.to_dict() if self.ceiling else None,
            "metrics": {k: self.metrics[k].to_dict() for k in self.predictors},
            "estimator": est, "estimator_note": self.estimator_note or None,
            "predictors": {k: PREDICTOR_HELP[k] for k in self.predictors},
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "flops_fit": ({"ms_per_mflop": self.flops_fit[0], "offset_ms": self.flops_fit[1]}
                          if self.flops_fit else None),
            "op_table": self.op_table, "op_profiled": self.op_profiled,
            "stored_calibration": self.stored_calibration.to_dict() if self.stored_calibration else None,
            "noise": self.noise.to_dict() if self.noise else None,
            "invocation_ms": self.invocation_ms,
            "retime": self.retime.to_dict() if self.retime else None,
            "wall_s": round(self.wall_s, 2), "loadavg": list(self.loadavg),
            "subnets": [r.to_dict() for r in self.subnets],
            "calibration_subnets": [r.to_dict() for r in self.calibration_subnets],
        }

    def summary_lines(self) -> list[str]:
        """The report as plain text lines (the CLI prints them; benchmarks too)."""
        t, y = self.timing, self.yardstick
        lines = [
            f"{self.space} on {self.profile.describe()}",
            f"table {self.table} ({self.granularity} granularity, fusion {self.fusion}); "
            f"{len(self.subnets)} subnets at {', '.join(map(str, self.resolutions))} (seed {self.seed}), "
            f"{len(self.calibration_subnets)} other subnets to calibrate; load average "
            f"{' '.join(f'{x:.2f}' for x in self.loadavg)}; {self.wall_s:.0f} s",
            f"table entries timed in {t.context} context"
            + (f" ({t.context_bytes / (1 << 20):.1f} MB read before each call)" if t.context == "network" else "")
            + f", per-call cost {1e3 * self.invocation_ms:.1f} us taken off each entry and added once",
            f"yardstick: each subnet in a fresh runnable ({self.plain_call}), {y.warmup} warm-up runs and "
            f">= {y.warmup_s:g} s, then >= {y.runs} runs and >= {y.min_s:g} s, each run timed alone; {y.passes} "
            f"pass(es), each visiting every subnet in its own shuffled order",
        ]
        if self.table_statistic:
            lines += statistic_lines(self.table_statistic, y)
        meas = measured_of(self.subnets)
        spread = np.array([r.yardstick.spread(r.statistic) for r in self.subnets])
        lines.append(f"measured (yardstick): {meas.min():.3f} .. {meas.max():.3f} ms (median {np.median(meas):.3f}); "
                     f"passes spread (max - min) / median: median {_pct(float(np.median(spread)))}, "
                     f"p90 {_pct(float(np.percentile(spread, 90)))}")
        lines += _metric_lines(self.metrics)
        if self.ceiling:
            lines.append(self.ceiling.line())
        if self.calibration:
            c = self.calibration
            lines.append(f"calibration: measured = {c.scale:.4f} x predicted {c.offset_ms:+.4f} ms "
                         f"(n={c.n}, against the yardstick; fitted: {c.form}, the least leave-one-out error)")
        if self.flops_fit:
            lines.append(f"flops fit: measured = {self.flops_fit[0]:.5f} ms/MFLOP x MFLOPs {self.flops_fit[1]:+.4f} ms")
        if self.op_table:
            lines.append(f"op-sum: unfused op table {self.op_table} ({self.op_profiled} ops profiled in this run)")
        if self.estimator_metrics is None:
            lines.append(f"{ESTIMATOR_ROW}: not measured ({self.estimator_note or '--no-estimator-row'})")
        else:
            lines.append(f"{ESTIMATOR_ROW} (the same table prices, calibration and FLOPs line fitted on this row's "
                         f"own calibration subnets; subnets timed back to back in {t.rounds} "
                         f"interleaved round(s), median of >= {t.min_samples} samples a round, stop at IQR/median "
                         f"< {t.target_iqr:g} or {t.max_time_s:g} s, {self.builds} fresh build(s) each in consecutive "
                         f"batches, each batch's speed taken out): its measurements read "
                         f"{self.estimator_ratio():.3f}x the yardstick's (median)")
            lines += _metric_lines(self.estimator_metrics)
        misses = sum(1 for r in self.subnets if r.misses)
        if misses:
            lines.append(f"warning: {misses} subnet(s) used keys missing from the table (priced by the fallback)")
        if self.stored_calibration:
            lines.append(f"the table holds a calibration for this space (n={self.stored_calibration.n}); "
                         f"'calibrated' above is fitted afresh on the calibration subnets")
        if self.retime and math.isfinite(self.retime.drift):
            rt, u = self.retime, self.metrics.get(UNCALIBRATED)
            line = (f"table drift: {len(rt.keys)} table entries timed again as the profile timed them read "
                    + " and ".join(f"{rt.ratio(k):.3f}x ({k} the subnets)" for k in rt.passes)
                    + " their stored values (median)")
            if u is not None:
                d = error_metrics(predicted_of(self.subnets, UNCALIBRATED) * rt.drift, meas)
                line += (f"; uncalibrated x {rt.drift:.3f} would score bias {_pct(d.bias, sign=True)}, within +-10% "
                         f"{_pct(d.within10)}, RMSPE {_pct(d.rmspe)} (a diagnostic, not applied)")
            lines.append(line)
        if self.noise:
            nf = self.noise
            lines.append(f"noise floor (latbench estimator): one subnet x{len(nf.estimates)}: {min(nf.estimates):.3f} .. "
                         f"{max(nf.estimates):.3f} ms, spread {_pct(nf.spread)}, CV {_pct(nf.cv)}, "
                         f"within +-5% of their median {_pct(nf.within(0.05))}, +-10% {_pct(nf.within(0.10))}")
        return lines


def _metric_lines(metrics: dict[str, Metrics]) -> list[str]:
    """The predictor table: a header and one row per predictor, in report order."""
    lines = [f"{'predictor':14} {'n':>4} {'<=5%':>6} {'<=10%':>6} {'RMSPE':>7} {'MAPE':>7} "
             f"{'bias':>7} {'max':>7} {'rho':>6} {'tau':>6}"]
    for name in (p for p in PREDICTORS if p in metrics):
        m = metrics[name]
        lines.append(f"{name:14} {m.n:4d} {_pct(m.within5):>6} {_pct(m.within10):>6} {_pct(m.rmspe):>7} "
                     f"{_pct(m.mape):>7} {_pct(m.bias, sign=True):>7} {_pct(m.max_abs):>7} "
                     f"{_num(m.spearman):>6} {_num(m.kendall):>6}")
    return lines


def _pct(x: float, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def write_csv(report: ValidationReport, path: str | os.PathLike) -> None:
    """One row per validation subnet: config (published form, JSON), resolution, FLOPs, the
    yardstick value scored against and its passes' spread, each pass's median, mean, p90, min and
    run count (space-separated, in pass order), the estimator row's measurement (`batch_adjusted`),
    its middle build's estimate and samples, every build's estimate (empty without the estimator
    row), and each predictor's value in ms."""
    names = report.predictors
    stats = ("median", "mean", "p90", "min")
    est_cols = ["estimator_ms", "estimator_middle_ms", "estimator_median_ms", "estimator_p25_ms", "estimator_p75_ms",
                "estimator_samples", "estimator_rounds", "estimator_builds_ms"]
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["config", "resolution", "mflops", "measured_ms", "spread"]
                       + [f"pass_{s}_ms" for s in stats] + ["pass_runs"] + est_cols + ["misses"]
                       + [f"{p}_ms" for p in names])
            for r in report.subnets:
                y = r.yardstick
                row = [json.dumps(r.config, separators=(",", ":")), r.resolution, f"{r.flops / 1e6:.3f}",
                       f"{r.measured_ms:.6g}", f"{y.spread(r.statistic):.4g}"]
                row += [" ".join(f"{x:.6g}" for x in y.values(s)) for s in stats]
                row.append(" ".join(str(p.n) for p in y.passes))
                e = r.estimator
                if e is None:
                    row += [""] * len(est_cols)
                else:
                    m = e.measured
                    row += [f"{e.measured_ms:.6g}", f"{estimate(m):.6g}", f"{m.median:.6g}", f"{m.p25:.6g}",
                            f"{m.p75:.6g}", m.n, len(m.rounds) or 1, " ".join(f"{x:.6g}" for x in e.builds_ms)]
                w.writerow(row + [r.misses] + [f"{r.predicted[p]:.6g}" if p in r.predicted else "" for p in names])
    except OSError as e:
        raise LatbenchError(f"{path}: cannot write: {e.strerror or e}") from None


COLOURS = {UNCALIBRATED: "tab:blue", CALIBRATED: "tab:green", OP_SUM: "tab:red", FLOPS: "tab:orange"}


def plot(report: ValidationReport, path: str | os.PathLike) -> None:
    """Scatter of predicted vs measured (one colour per predictor), the y = x line and a +-10% band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    meas = measured_of(report.subnets)
    fig = Figure(figsize=(6.4, 6.0), dpi=110)  # an Agg canvas without pyplot: no global backend switch
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    vals = [meas] + [predicted_of(report.subnets, p) for p in report.predictors]
    allv = np.concatenate([v[np.isfinite(v)] for v in vals])
    lo, hi = float(allv.min()) * 0.9, float(allv.max()) * 1.1
    xs = np.linspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="+-10%", zorder=0)
    ax.plot(xs, xs, color="0.3", lw=1, label="y = x", zorder=1)
    for p in report.predictors:
        m = report.metrics[p]
        ax.scatter(meas, predicted_of(report.subnets, p), s=14, alpha=0.8, color=COLOURS.get(p),
                   label=f"{p}: {_pct(m.within10)} in +-10%, RMSPE {_pct(m.rmspe)}", zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured end-to-end latency (ms; yardstick: {report.yardstick.describe()})")
    ax.set_ylabel("predicted latency (ms)")
    c = report.ceiling
    ceiling = (f"\nyardstick noise ceiling: {_pct(c.within5)} within +-5%, {_pct(c.within10)} within +-10%"
               if c and c.passes >= CEILING_PASSES else "")
    ax.set_title(f"{report.space}, {report.profile.agent} {report.profile.threads} thread(s), "
                 f"{len(report.subnets)} subnets{ceiling}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise LatbenchError(f"{path}: cannot write: {e.strerror or e}") from None
