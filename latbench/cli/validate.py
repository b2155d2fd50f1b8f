"""`latbench calibrate` and `latbench validate`: predicted vs measured end-to-end latency.

Both rebuild the agent from the table's device profile (agent, threads, opt level, XNNPACK) and
refuse to run when the agent they get measures under another profile. Both measure with the
plain yardstick (latbench.yardstick); validate also with latbench's estimator, a second row set.
Data goes to stdout (a text report or `--json`), progress bars to stderr.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer


_TABLE = typer.Option(..., "--table", help="the latency table (SQLite) to check")
_SPACE = typer.Option(..., "--space", "-s", help="a built-in space or a YAML file")
_DEVICE = typer.Option(None, "--device", "-d", help="cpu, cuda, ort or tflite (default: the table's)")
_THREADS = typer.Option(None, "--threads", help="runtime threads (default: the table's)")
_OPT = typer.Option(None, "--opt-level", help="ort: graph optimisation level (default: the table's)")
_XNN = typer.Option(None, "--xnnpack/--no-xnnpack", help="tflite: XNNPACK delegate (default: the table's)")
_RES = typer.Option([], "--resolution", "-r", help="resolution(s) to sample at; default: those the table covers")
_SEED = typer.Option(0, "--seed", help="sampling seed")
_MAX_TIME = typer.Option(None, "--max-time", help="time cap per subnet in seconds (default: the table's timing)")
_MIN_SAMPLES = typer.Option(None, "--min-samples", help="samples per subnet at least (default: the table's)")
_TARGET_IQR = typer.Option(None, "--target-iqr", help="stop sampling once IQR/median is below this (default: the table's)")
_RUNNER = typer.Option(None, "--runner", help="android: the benchmark runner to push (default: the one the table's "
                       "profile recorded)")
_SERIAL = typer.Option(None, "--serial", help="android: the phone (default: the table's, else ANDROID_SERIAL)")
_JSON = typer.Option(False, "--json", help="print the result as one JSON document")
_FARM = typer.Option(None, "--farm", help="measure on a device of the table's profile in the Ray farm at this "
                     "address (HOST:PORT; see `latbench farm`)")
_BUILDS = typer.Option(3, "--builds", help="latbench estimator: fresh builds (sessions, interpreters) per subnet, "
                       "timed interleaved; each in another batch; each batch's speed is taken out")
_STATISTIC = typer.Option(None, "--statistic", help="yardstick: the statistic of each pass's runs "
                          "(median, mean or min; default median, or the average where the runner reports no "
                          "median: benchmark_model on a phone); a subnet's value is its median over the passes")
_PASSES = typer.Option(3, "--passes", help="yardstick: passes over the subnets, each a fresh runnable per "
                       "subnet in its own shuffled order (the noise ceiling needs >= 3)")
_RUNS = typer.Option(50, "--runs", help="yardstick: timed runs per pass, at least")
_MIN_TIME = typer.Option(0.5, "--min-time", help="yardstick: seconds of timed runs per pass, at least")


def open_agent(table, device: Optional[str], threads: Optional[int], opt_level: Optional[str],
               xnnpack: Optional[bool], runner: Optional[Path] = None, serial: Optional[str] = None):
    """The agent of the table's profile with the command's agent flags (None: the table's setting)."""
    from ..validate.table_facts import agent_for_table

    return agent_for_table(table, device, threads=threads, opt_level=opt_level, xnnpack=xnnpack,
                           runner=str(runner) if runner else None, serial=serial)


class Bars:
    """One rich progress bar per task name on stderr; called as progress(task, done, total)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description:24}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "Bars":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, task: str, done: int, total: int) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)


@contextlib.contextmanager
def _session(table: Path, device, threads, opt_level, xnnpack, readonly=False, runner=None, serial=None):
    """The table, an agent rebuilt from its profile and progress bars, for one end-to-end
    measuring command; the agent is closed after."""
    from ..store import LatencyTable

    with LatencyTable.open(str(table), create=False, readonly=readonly) as t:
        agent = open_agent(t, device, threads, opt_level, xnnpack, runner, serial)
        try:
            with Bars() as bars:
                yield t, agent, bars
        finally:
            agent.close()


def _yardstick(statistic: Optional[str], passes: int, runs: int, min_time: float, seed: int):
    """The yardstick's settings from the flags (refused in one line where out of range)."""
    from ..yardstick import YardstickSettings

    return YardstickSettings(runs=runs, min_s=min_time, passes=passes, seed=seed, statistic=statistic or "median")


def _agent_yardstick(agent, ys, statistic: Optional[str]):
    """`ys` with a statistic `agent`'s runner reports (an unasked median becomes benchmark_model's average)."""
    from ..validate.endtoend import agent_yardstick

    return agent_yardstick(agent, ys, asked=statistic is not None)


def calibrate_command(
    table: Path = _TABLE, space: str = _SPACE, device: Optional[str] = _DEVICE,
    n: int = typer.Option(10, "--n", "-n", help="subnets to measure end to end"),
    seed: int = _SEED, resolution: List[int] = _RES, threads: Optional[int] = _THREADS,
    opt_level: Optional[str] = _OPT, xnnpack: Optional[bool] = _XNN, as_json: bool = _JSON,
    statistic: Optional[str] = _STATISTIC, passes: int = _PASSES, runs: int = _RUNS, min_time: float = _MIN_TIME,
    runner: Optional[Path] = _RUNNER, serial: Optional[str] = _SERIAL, farm: Optional[str] = _FARM,
) -> None:
    """Measure n random subnets with the plain yardstick, fit measured = scale x predicted +
    offset (or one of them, whichever predicts left-out subnets best), store it in the table."""
    from ..spaces import get_space
    from ..calibrate import calibrate, store_calibration
    from ..validate.table_facts import statistic_lines

    ys = _yardstick(statistic, passes, runs, min_time, seed)
    sp = get_space(space)
    if farm is not None:
        _no_agent_flags(device=device, threads=threads, opt_level=opt_level, xnnpack=xnnpack, runner=runner,
                        serial=serial)
        (done,) = _on_farm(farm, "calibrate", table, space, dict(n=n, seed=seed, resolutions=resolution or None,
                                                                   yardstick=ys.to_dict(),
                                                                   statistic_asked=statistic is not None))
        if as_json:
            typer.echo(json.dumps({"table": str(table), "device": done.device, **done.result["report"]}, indent=1))
            return
        cal, rep = done.result["calibration"], done.result["report"]
        typer.echo(f"{table}: calibration {rep['key']} from {cal['n']} subnets measured on {done.device} (seed {seed}): "
                   f"measured = {cal['scale']:.4f} x predicted {cal['offset_ms']:+.4f} ms (fitted: {cal['form']})")
        typer.echo("stored: predictions from this table are now calibrated")
        return
    with _session(table, device, threads, opt_level, xnnpack, runner=runner, serial=serial) as (t, agent, bars):
        ys = _agent_yardstick(agent, ys, statistic)
        run = calibrate(t, sp, agent, n, seed, resolution or None, ys, bars)
        res = sorted({r.resolution for r in run.subnets})
        store_calibration(t, run, seed=seed, resolutions=res)
    if as_json:
        typer.echo(json.dumps({"table": str(table), **run.to_dict()}, indent=1))
        return
    c, b, a = run.calibration, run.before, run.after
    typer.echo(f"{table}: calibration {run.key} from {c.n} subnets (seed {seed}, resolutions "
               f"{', '.join(map(str, res))}): measured = {c.scale:.4f} x predicted {c.offset_ms:+.4f} ms "
               f"(fitted: {c.form}; measured: the yardstick's {ys.describe()})")
    for line in statistic_lines(run.table_statistic, ys):
        typer.echo(line)
    typer.echo(f"in sample: uncalibrated RMSPE {100 * b.rmspe:.1f}%, within 10% {100 * b.within10:.0f}%, "
               f"bias {100 * b.bias:+.1f}%; calibrated RMSPE {100 * a.rmspe:.1f}%, within 5% "
               f"{100 * a.within5:.0f}%, within 10% {100 * a.within10:.0f}%")
    typer.echo(run.ceiling.line())
    typer.echo("stored: predictions from this table are now calibrated (latbench validate measures "
               "how well on other subnets)")


def validate_command(
    table: Path = _TABLE, space: str = _SPACE, device: Optional[str] = _DEVICE,
    n: int = typer.Option(100, "--n", "-n", help="subnets to measure end to end and score"),
    seed: int = _SEED, resolution: List[int] = _RES,
    calibrate_n: int = typer.Option(10, "--calibrate-n", help="other subnets to fit the calibration and the FLOPs baseline on"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a predicted-vs-measured scatter PNG"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="write every (config, measured, predicted) row"),
    noise: int = typer.Option(0, "--noise", help="measure one subnet this many times and report the spread"),
    op_table: Optional[Path] = typer.Option(None, "--op-table", help="unfused op-level table of the same profile for the op-sum baseline; missing ops are profiled into it (default: TABLE.op-none.sqlite)"),
    op_baseline: bool = typer.Option(True, "--op-baseline/--no-op-baseline", help="compute the op-sum baseline"),
    threads: Optional[int] = _THREADS, opt_level: Optional[str] = _OPT, xnnpack: Optional[bool] = _XNN,
    max_time: Optional[float] = _MAX_TIME, min_samples: Optional[int] = _MIN_SAMPLES,
    target_iqr: Optional[float] = _TARGET_IQR, as_json: bool = _JSON, builds: int = _BUILDS,
    retime: int = typer.Option(24, "--retime", help="table entries to time again before and after the subnets, "
                               "as the profile timed them: how far the machine's speed moved since (0: none)"),
    statistic: Optional[str] = _STATISTIC, passes: int = _PASSES, runs: int = _RUNS, min_time: float = _MIN_TIME,
    estimator_row: bool = typer.Option(True, "--estimator-row/--no-estimator-row", help="also measure the "
                                       "subnets with latbench's estimator and score against it (a second row set)"),
    runner: Optional[Path] = _RUNNER, serial: Optional[str] = _SERIAL, farm: Optional[str] = _FARM,
) -> None:
    """Measure n random subnets end to end and report how close each predictor comes to the plain
    yardstick (and to latbench's estimator), with the yardstick's noise ceiling."""
    from ..spaces import get_space
    from ..validate import validate
    from ..validate.table_facts import timing_of_table
    from ..validate.report import plot as plot_report
    from ..validate.report import write_csv

    ys = _yardstick(statistic, passes, runs, min_time, seed)
    sp = get_space(space)
    if farm is not None:
        _no_agent_flags(device=device, threads=threads, opt_level=opt_level, xnnpack=xnnpack, runner=runner,
                        serial=serial)
        from ..store import LatencyTable

        with LatencyTable.open(str(table), create=False, readonly=True) as t:
            timing = timing_of_table(t, max_time_s=max_time, min_samples=min_samples, target_iqr=target_iqr)
        kw = dict(n=n, seed=seed, resolutions=resolution or None, calibrate_n=calibrate_n, timing=timing.to_dict(),
                  op_baseline=op_baseline, noise=noise, builds=builds, retime=retime, yardstick=ys.to_dict(),
                  statistic_asked=statistic is not None, estimator_row=estimator_row)
        wanted = {k: str(v) for k, v in (("csv", csv), ("plot", plot)) if v}
        (done,) = _on_farm(farm, "validate", table, space, kw, op_table, wanted)
        if as_json:
            typer.echo(json.dumps({**done.result["report"], "device": done.device}, indent=1))
        else:
            typer.echo(f"measured on {done.device} (farm {farm})")
            for line in done.result["lines"]:
                typer.echo(line)
        if wanted:
            typer.echo(f"wrote {', '.join(wanted.values())}", err=True)
        return
    with _session(table, device, threads, opt_level, xnnpack, readonly=True, runner=runner,
                  serial=serial) as (t, agent, bars):
        ys = _agent_yardstick(agent, ys, statistic)
        timing = timing_of_table(t, max_time_s=max_time, min_samples=min_samples, target_iqr=target_iqr)
        report = validate(t, sp, agent, n, seed, resolution or None, calibrate_n, timing,
                          str(op_table) if op_table else None, op_baseline, noise, bars, builds, retime, ys,
                          estimator_row)
    if csv:
        write_csv(report, csv)
    if plot:
        plot_report(report, plot)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in report.summary_lines():
            typer.echo(line)
    written = [str(p) for p in (csv, plot) if p]
    if written:
        typer.echo(f"wrote {', '.join(written)}", err=True)



def _no_agent_flags(**flags) -> None:
    """With --farm the device of the table's profile is the farm's: agent flags are refused by name."""
    from .farm import refuse_agent_flags

    refuse_agent_flags(flags, "with --farm the table is measured on a farm device of its own profile, as its node set it up")


def _on_farm(address: str, command: str, table: Path, space: str, kwargs: dict, op_table: Optional[Path] = None,
             files: Optional[dict] = None):
    """latbench.farm.endtoend for one table, its notes on stderr."""
    from ..farm.endtoend import farm_end_to_end

    return farm_end_to_end(address, command, [str(table)], space, kwargs,
                           {str(table): str(op_table)} if op_table else None, {str(table): files or {}},
                           on_line=lambda line: typer.echo(line, err=True))


__all__ = ["calibrate_command", "validate_command", "open_agent"]
