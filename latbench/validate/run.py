"""`validate`: n random subnets measured end to end and every predictor scored on them, against
the plain yardstick and, as a second labelled row set, against latbench's own estimator."""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Sequence

import numpy as np

from ..errors import UsageError
from ..measure import TimingSettings
from ..predict import Calibration, Predictor, Pricer, fit_calibration, resolve_space
from ..store import LatencyTable
from ..yardstick import YardstickSettings
from .drift import RETIME, Retime, retime_entries, retime_ops
from .endtoend import BUILDS, SubnetResult, agent_yardstick, measure_subnets, noise_floor
from .metrics import (CALIBRATED, FLOPS, OP_SUM, UNCALIBRATED, ceiling_of, estimated_of, fit_flops, measured_of,
                      predicted_of, score)
from .opsum import op_costs, op_sum, op_table_path
from .progress import Progress, quiet
from .report import ValidationReport
from .subnets import sample_subnets
from .table_facts import agent_for_table, check_agent, covered_resolutions, table_statistic


def fitted(subnets: Sequence[SubnetResult], cal_subnets: Sequence[SubnetResult], measured: np.ndarray,
           space, granularity: str) -> tuple[Calibration | None, tuple[float, float] | None, dict[str, np.ndarray]]:
    """The calibration and the FLOPs line fitted on the calibration subnets' `measured` values
    (one row's measurements), and what each predicts for `subnets`; nothing without them."""
    ok = np.isfinite(measured) & (measured > 0)
    if not cal_subnets or not ok.any():
        return None, None, {}
    cal_subnets = [r for r, good in zip(cal_subnets, ok) if good]
    cal = fit_calibration(predicted_of(cal_subnets, UNCALIBRATED), measured[ok], space.name, granularity)
    flops_fit = fit_flops([r.flops for r in cal_subnets], measured[ok])
    mflops = np.array([r.flops for r in subnets], dtype=np.float64) / 1e6
    return cal, flops_fit, {CALIBRATED: cal.apply(predicted_of(subnets, UNCALIBRATED)),
                            FLOPS: flops_fit[0] * mflops + flops_fit[1]}


def validate(table: LatencyTable | str | os.PathLike, space, agent=None, n: int = 100, seed: int = 0,
             resolutions: Sequence[int] | None = None, calibrate_n: int = 10,
             timing: TimingSettings | None = None, op_table: str | None = None, op_baseline: bool = True,
             noise: int = 0, progress: Progress = quiet, builds: int = BUILDS,
             retime: int = RETIME, yardstick: YardstickSettings | None = None,
             estimator_row: bool = True) -> ValidationReport:
    """Measure n random subnets end to end and score every predictor (see PREDICTOR_HELP) on them
    against the yardstick (`yardstick`, default: its defaults with `seed`) and, with
    `estimator_row`, against latbench's estimator under `timing`; `retime` of the table's entries
    are timed again before and after the subnets (`Retime`).

    `table` is a LatencyTable or a path (opened read-only), `space` a space or its name, `agent`
    an Agent or None: the one the table's profile names (`agent_for_table`), closed after."""
    if n < 1:
        raise UsageError(f"validation needs at least one subnet, got `n={n}`")
    if calibrate_n < 0 or noise < 0 or retime < 0:
        raise UsageError("`calibrate_n`, `noise` and `retime` must be >= 0")
    if builds < 1:  # before any device or table is touched
        raise UsageError(f"`builds` must be >= 1, got {builds}")
    with contextlib.ExitStack() as stack:
        if not isinstance(table, LatencyTable):
            table = stack.enter_context(LatencyTable.open(table, readonly=True))
        space = resolve_space(space)
        if agent is None:
            agent = agent_for_table(table)
            stack.callback(agent.close)
        # calibration and FLOPs fit: on `calibrate_n` other networks (disjoint from the n), against the
        # yardstick; op-sum: from an unfused op table of the same profile (`op_table`, default beside the
        # table), whose missing ops are profiled first with the same agent and timing
        yardstick = agent_yardstick(agent, yardstick or YardstickSettings(seed=seed), asked=yardstick is not None)
        on_device = agent.times_on_device
        if on_device and noise:
            raise UsageError(f"`noise` times one subnet with latbench's estimator on the host; {agent.name} times on "
                             f"the device (the yardstick's noise ceiling is reported anyway)")
        estimator_note = "--no-estimator-row" if not estimator_row else ""
        if on_device and estimator_row:
            estimator_row, estimator_note = False, f"{agent.name} times whole models on the device, the estimator on the host"
        t0 = time.perf_counter()
        load0 = _loadavg()
        profile = check_agent(agent, table)
        timing = timing or table.timing or TimingSettings()
        res = tuple(resolutions) if resolutions else covered_resolutions(table, space)
        predictor = Predictor.from_table(table, space, use_calibration=False)
        run_settings = table.run_settings
        configs = sample_subnets(space, n + calibrate_n, seed, res)
        val_cfgs = configs[:n]  # the rest (configs[n:]) are the calibration subnets

        op_path, op_profiled, op_pricer = None, 0, None
        if op_baseline:
            if predictor.granularity == "op" and predictor.pricer.fusion == "none":
                op_path = table.path  # the table is the unfused op table itself
                op_pricer = Pricer.from_table(table, "op", "none", strict=True)
            else:
                op_path = op_table or op_table_path(table.path)
                op_pricer, op_profiled = op_costs(op_path, agent, space, val_cfgs, timing, progress)

        # calibration and validation subnets are measured together, in a seeded shuffled order (and the
        # yardstick's passes shuffle again): a slow spell of the machine (minutes, on a shared host)
        # then hits both groups alike instead of skewing the fit
        order = np.random.default_rng([seed, 2]).permutation(len(configs))
        again = retime_ops(table, retime, seed) if retime else []
        passes = {}
        if again:
            table_settings = table.timing or timing  # as the entries were timed, whatever `timing` says
            progress("table entries timed again", 0, 2)
            passes["before"] = retime_entries(agent, again, table_settings)
        measured = measure_subnets(agent, space, configs[order], predictor, yardstick, timing if estimator_row else None,
                                   "validation subnets (with calibration)", progress, builds)
        if again:
            progress("table entries timed again", 1, 2)
            passes["after"] = retime_entries(agent, again, table_settings)
            progress("table entries timed again", 2, 2)
        drift = Retime([op.key for op in again], [table.estimate(op.key) for op in again], passes) if again else None
        by_index = {int(i): r for i, r in zip(order, measured)}
        subnets = [by_index[i] for i in range(n)]
        cal_subnets = [by_index[i] for i in range(n, len(configs))]

        cal, flops_fit, fits = fitted(subnets, cal_subnets, measured_of(cal_subnets), space, predictor.granularity)
        for i, (r, cfg) in enumerate(zip(subnets, val_cfgs)):
            for name, values in fits.items():
                r.predicted[name] = float(values[i])
            if op_pricer is not None:
                r.predicted[OP_SUM] = op_sum(op_pricer, space, cfg)

        noise_run = noise_floor(agent, space, val_cfgs[0], noise, timing, builds, progress) if noise else None
        stored = table.calibration(space, predictor.granularity)
        load1 = _loadavg()
        return ValidationReport(
            table=table.path, space=space.name, profile=profile, granularity=predictor.granularity,
            fusion=run_settings.fusion if run_settings else predictor.pricer.fusion, timing=timing, seed=seed, resolutions=res,
            subnets=subnets, calibration_subnets=cal_subnets, calibration=cal, flops_fit=flops_fit,
            metrics=score(subnets, measured_of(subnets)), yardstick=yardstick,
            plain_call=agent.plain_call, ceiling=ceiling_of(subnets),
            table_statistic=table_statistic(table),
            estimator_metrics=score(subnets, estimated_of(subnets), fitted(
                subnets, cal_subnets, estimated_of(cal_subnets), space, predictor.granularity)[2]) if estimator_row else None,
            estimator_note=estimator_note, op_table=op_path, op_profiled=op_profiled, stored_calibration=stored,
            noise=noise_run, invocation_ms=predictor.invocation_ms, builds=builds, retime=drift,
            wall_s=time.perf_counter() - t0,
            loadavg=tuple(max(a, b) for a, b in zip(load0, load1)),  # type: ignore[arg-type]
        )


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return (math.nan, math.nan, math.nan)
