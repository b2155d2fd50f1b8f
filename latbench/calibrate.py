"""Calibration of a table's predictions: n random subnets measured end to end with the plain
yardstick, measured ~= scale x predicted + offset fitted on them, and stored in the table's meta
under the key `Predictor.from_table` reads (latbench.predict applies it)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UsageError
from .predict import Calibration, Predictor, fit_calibration
from .store import LatencyTable
from .tablemeta import CalibrationEntry, calibration_key
from .validate.endtoend import SubnetResult, agent_yardstick, measure_subnets
from .validate.metrics import CALIBRATED, UNCALIBRATED, Metrics, ceiling_of, error_metrics, measured_of, predicted_of
from .validate.progress import Progress, quiet
from .validate.subnets import sample_subnets
from .validate.table_facts import TableStatistic, check_agent, covered_resolutions, table_statistic
from .yardstick import NoiseCeiling, YardstickSettings


@dataclass
class CalibrationRun:
    """A calibration: the fit, the subnets it was fitted on (against the yardstick), its in-sample
    errors, the yardstick's noise ceiling on those subnets and the table's statistic."""

    calibration: Calibration
    subnets: list[SubnetResult]
    before: Metrics  # raw table predictor vs the yardstick
    after: Metrics  # calibrated, in sample
    key: str
    yardstick: YardstickSettings = YardstickSettings()
    ceiling: NoiseCeiling | None = None
    table_statistic: TableStatistic | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "calibration": self.calibration.to_dict(), "before": self.before.to_dict(),
                "after": self.after.to_dict(), "yardstick": self.yardstick.to_dict(),
                "noise_ceiling": self.ceiling.to_dict() if self.ceiling else None,
                "table_statistic": self.table_statistic.to_dict() if self.table_statistic else None,
                "subnets": [r.to_dict() for r in self.subnets]}


def calibrate(table: LatencyTable, space, agent, n: int = 10, seed: int = 0,
              resolutions: Sequence[int] | None = None, yardstick: YardstickSettings | None = None,
              progress: Progress = quiet) -> CalibrationRun:
    """Measure n random subnets with the yardstick and fit yardstick ~= scale * predicted + offset."""
    if n < 1:
        raise UsageError(f"calibration needs at least one subnet, got `n={n}`")
    yardstick = agent_yardstick(agent, yardstick or YardstickSettings(seed=seed), asked=yardstick is not None)
    check_agent(agent, table)
    res = resolutions or covered_resolutions(table, space)
    predictor = Predictor.from_table(table, space, use_calibration=False)
    configs = sample_subnets(space, n, seed, res)
    subnets = measure_subnets(agent, space, configs, predictor, yardstick, None, "calibration subnets", progress)
    raw, meas = predicted_of(subnets, UNCALIBRATED), measured_of(subnets)
    cal = fit_calibration(raw, meas, space.name, predictor.granularity)
    for r in subnets:
        r.predicted[CALIBRATED] = float(cal.apply(r.predicted[UNCALIBRATED]))
    return CalibrationRun(cal, subnets, error_metrics(raw, meas), error_metrics(cal.apply(raw), meas),
                          calibration_key(space, predictor.granularity), yardstick, ceiling_of(subnets),
                          table_statistic(table))


def calibration_entry(table: LatencyTable, run: CalibrationRun, **facts: Any) -> CalibrationEntry:
    """The fit as the table's meta "calibration" keeps it; `facts` (seed, resolutions...) and the
    yardstick's settings go beside it for the record."""
    entry = {**run.calibration.to_dict(), "profile_id": table.profile.id if table.profile else "",
             "taken_at": time.time(), "in_sample": run.after.to_dict(),
             "uncalibrated": run.before.to_dict(), "yardstick": run.yardstick.to_dict(), **facts}
    return CalibrationEntry.from_dict(entry, f"calibration {run.key}")


def store_calibration(table: LatencyTable, run: CalibrationRun, **facts: Any) -> None:
    """Write the fit into the table's meta "calibration" (other spaces' entries kept)."""
    table.set_calibration(calibration_entry(table, run, **facts))


__all__ = ["calibration_key", "CalibrationRun", "calibrate", "calibration_entry", "store_calibration"]
