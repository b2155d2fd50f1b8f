"""Predicted vs measured end-to-end latency: `latbench.validate(table, space, agent, ...)` measures
random subnets end to end and scores every predictor on them.

A subnet is measured end to end with the agent (and settings) its table was profiled with
(`endtoend`). Predictions are scored (`metrics`) against the plain yardstick users time with their
own loop (latbench.yardstick) with its noise ceiling beside them, and again against latbench's
own estimator, a second labelled row set. Predictors: the table's own (uncalibrated, and
calibrated on other subnets), and two baselines fitted or measured in the same run: latency
linear in FLOPs, and the plain sum of separately measured unfused ops (`opsum`). A few table
entries are timed again to tell the machine's drift (`drift`); `report` holds the result, its
text, CSV and plot. Calibration alone is latbench.calibrate. torch, onnx, scipy, matplotlib and
device_agents are imported only when used.
"""
from __future__ import annotations

from .drift import RETIME, Retime, retime_entries, retime_ops
from .endtoend import (BUILDS, Builds, EstimatorResult, NoiseFloor, SubnetResult, agent_yardstick, batch_adjusted,
                       estimate, measure_built, measure_subnet, measure_subnets, noise_floor)
from .metrics import PREDICTOR_HELP, PREDICTORS, Metrics, ceiling_of, error_metrics, fit_flops, relative_errors, score
from .opsum import op_costs, op_table_path
from .report import ESTIMATOR_ROW, ValidationReport, plot, write_csv
from .run import validate
from .subnets import network_id, sample_subnets, subnet_flops, subnet_resolution
from .table_facts import (TableStatistic, agent_for_table, check_agent, covered_resolutions, statistic_lines,
                          table_statistic, timing_of_table)

__all__ = [
    "validate", "ValidationReport", "ESTIMATOR_ROW", "write_csv", "plot",
    "Metrics", "error_metrics", "relative_errors", "score", "ceiling_of", "fit_flops", "PREDICTORS", "PREDICTOR_HELP",
    "sample_subnets", "network_id", "subnet_flops", "subnet_resolution",
    "covered_resolutions", "check_agent", "agent_for_table", "timing_of_table", "TableStatistic", "table_statistic",
    "statistic_lines",
    "BUILDS", "Builds", "EstimatorResult", "NoiseFloor", "SubnetResult", "agent_yardstick", "batch_adjusted",
    "estimate", "measure_built", "measure_subnet", "measure_subnets", "noise_floor",
    "Retime", "RETIME", "retime_ops", "retime_entries", "op_table_path", "op_costs",
]

from ..callable_module import make_callable  # noqa: E402  (after `validate` is bound)

make_callable(__name__, validate)
