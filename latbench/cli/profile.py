"""`latbench profile`: measure a space's (or an op file's) ops with one agent into a table.

Each measurement is committed as it arrives; Ctrl-C or SIGTERM stops cleanly (exit 130) with
everything measured so far kept; `--out` an existing table resumes it. Rows taken in a slow spell
of the machine are timed again before the run ends; `--retime-suspect` times an existing table's
suspect rows again (latbench.suspect).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError




def profile_command(
    device: Optional[str] = typer.Option(None, "--device", "-d", help="cpu, cuda, ort, tflite or android (with "
                                         "--farm: only devices of this kind)"),
    out: Path = typer.Option(..., "--out", "-o", help="the table (SQLite); an existing one is resumed (with "
                             "--farm: the directory of its tables, one per device profile)"),
    farm: Optional[str] = typer.Option(None, "--farm", help="profile on every device of the Ray farm at this "
                                       "address (HOST:PORT; see `latbench farm`)"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="a built-in space or a YAML file"),
    ops_file: Optional[Path] = typer.Option(None, "--ops", help="an op list (PaddleSlim text, csv, jsonl, block keys)"),
    resolution: List[int] = typer.Option([], "--resolution", "-r", help="input resolution(s); default: all of the space's"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a whole model: an ONNX file or module:callable "
                                        "(its ops as the device's runtime runs them; see `latbench ops`)"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="N,C,H,W with --model (a torch module, "
                                              "or an ONNX model with symbolic dims)"),
    granularity: Optional[str] = typer.Option(None, "--granularity", "-g", help="op or block (default: block with "
                                              "--space, op with --ops or --model)"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="runtime threads, 1 to the cores this "
                                          "process may use (default 1)"),
    max_ops: Optional[int] = typer.Option(None, "--max-ops", help="measure at most this many new ops (>= 1)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="measure again ops that failed before"),
    opt_level: Optional[str] = typer.Option(None, "--opt-level", help="ort: graph optimisation level (disable, "
                                            "basic, extended, all; default all)"),
    xnnpack: Optional[bool] = typer.Option(None, "--xnnpack/--no-xnnpack", help="tflite: XNNPACK delegate (default on)"),
    boundary: Optional[str] = typer.Option(None, "--boundary", help="ort: time each op as it runs between two "
                                           "convolutions in a network (network, the default: NCHWc, no "
                                           "reorders at its ends) or as a graph of its own (graph)"),
    serial: Optional[str] = typer.Option(None, "--serial", help="android: device serial"),
    runner: Optional[Path] = typer.Option(None, "--runner", help="android: benchmark_model (or onnxruntime_perf_test) binary to push"),
    cpus: Optional[str] = typer.Option(None, "--cpus", help="android: big (default), little, all or a hex mask for taskset"),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="android: tflite (benchmark_model) or ort (onnxruntime_perf_test); default from the runner's name"),
    delegate: Optional[str] = typer.Option(None, "--delegate", help="android: cpu (builtin kernels, the default), xnnpack, gpu or nnapi"),
    max_temp: Optional[float] = typer.Option(None, "--max-temp", help="android: wait above this temperature (C; default 45)"),
    cooldown: Optional[float] = typer.Option(None, "--cooldown", help="android: seconds to wait when too hot (default 30)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="android: models per push-and-run, two adb round trips (default 32)"),
    target_iqr: float = typer.Option(0.05, "--target-iqr", help="stop sampling once IQR/median is below this (0 to 1; 0: never early)"),
    max_time: float = typer.Option(2.0, "--max-time", help="time cap per op in seconds (> 0, <= 3600)"),
    min_samples: int = typer.Option(10, "--min-samples", help="samples per op at least (>= 1)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="interleaved rounds per op, 1 to 100 "
                                         "(default 10; 1 on android)"),
    interleave: Optional[int] = typer.Option(None, "--interleave", help="ops timed together, round-robin, 1 to 256 "
                                             "(default 24; 1 on android)"),
    context: str = typer.Option("auto", "--context", help="cache context: network (weights as cold as "
                                "inside a network; the default with --space), warm (calls back to back), auto"),
    context_mb: Optional[float] = typer.Option(None, "--context-mb", help="network context: MB read through "
                                               "the caches before each timed call (default: the space's "
                                               "median subnet weights; with --model, the model's weights)"),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="what a row is priced by: mean (of every "
                                            "sample; a new table's default), median, or round_min (the fastest "
                                            "round's median); a resumed table keeps its own"),
    retime_suspect: bool = typer.Option(False, "--retime-suspect", help="time the table's suspect rows again "
                                        "(`latbench table check` lists them) instead of measuring new ops"),
    as_json: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
) -> None:
    """Profile ops on a device into a latency table (resumable; every op committed as measured)."""
    from device_agents import agent_options

    from ..profiler import profile

    if granularity not in (None, "op", "block"):
        raise UsageError(f"--granularity must be op or block, got {granularity!r}")
    if model is not None and (space is not None or ops_file is not None):
        raise UsageError("give one of --space, --ops or --model")
    if input_shape is not None and model is None:
        raise UsageError("--input-shape goes with --model")
    flags = dict(threads=threads, opt_level=opt_level, boundary=boundary, xnnpack=xnnpack, serial=serial,
                 runner=runner, runtime=runtime, cpus=cpus, delegate=delegate, max_temp=max_temp,
                 cooldown=cooldown, batch_size=batch_size)  # None: not given
    if farm is not None:
        if model is not None:
            raise UsageError("--model with --farm: write its ops with `latbench ops --model ... -o ops.jsonl`, then --ops")
        return _farm_profile(farm, out, device, space, ops_file, resolution, granularity, max_ops, retry_failed,
                             flags, retime_suspect, target_iqr, max_time, min_samples, rounds, interleave, context,
                             context_mb, estimator, as_json)
    if device is None:
        raise UsageError("give --device (or --farm ADDRESS to profile on a device farm)")
    if retime_suspect:
        _check_retime_flags(out, space, ops_file, resolution, max_ops, retry_failed, model)
    elif (space is None) == (ops_file is None) and model is None:
        raise UsageError("give exactly one of --space, --ops or --model")
    elif model is not None and resolution:
        raise UsageError(f"--resolution applies to --space; --model {model} runs at its input shape")
    elif ops_file is not None and resolution:
        raise UsageError(f"--resolution applies to --space; {ops_file} lists its ops with their shapes")
    options = agent_options(device, flags)
    mo = None
    if model is not None and not retime_suspect:  # its ops as the device runs them (latbench.modelops)
        from ..model_price import parse_input_shape
        from ..modelops import model_ops

        mo = model_ops(model, parse_input_shape(input_shape), device, **options)
        if not mo.ops:
            raise UsageError(f"--model {model}: no op of it is mapped ({mo.summary()})")
        context, context_mb = _model_context(out, device, mo, context, context_mb)
    source = None if retime_suspect else (mo.ops if mo is not None else space if space is not None else Path(ops_file))
    run = _run_with_progress(lambda hooks: profile(
        source, device=device, out=out, resolutions=resolution or None, granularity=granularity,
        max_ops=max_ops, retry_failed=retry_failed, target_iqr=target_iqr, max_time_s=max_time,
        min_samples=min_samples, rounds=rounds, interleave=interleave, context=context, context_mb=context_mb,
        estimator=estimator, **hooks, **options))
    _report(run, out, as_json, retime_suspect)
    if mo is not None and mo.unmapped:
        typer.echo(f"{mo.summary()}: the table lacks them; exit 3", err=True)
    if run.interrupted:
        typer.echo(f"{out}: {run.measured + run.failed} ops stored before the interruption; rerun the same command to resume", err=True)
        raise typer.Exit(130)
    if run.failed or run.failed_earlier or (mo is not None and mo.unmapped):  # a partial table
        raise typer.Exit(3)


def _model_context(out: Path, device: str, mo, context: str, context_mb: Optional[float]):
    """--model's cache context when left to auto: the table's own when `out` resumes one, else the
    agent's `model_context`: network with the model's weights read before each timed call (what
    a run of the model streams between two runs of one of its ops, as a space's median subnet
    weights do) on ort and torch, warm (back to back) on LiteRT."""
    from device_agents import agent_class

    cls = agent_class(device)
    if context != "auto" or context_mb is not None or "network" not in cls.contexts:
        return context, context_mb
    if out.is_file():
        from ..store import LatencyTable

        with LatencyTable.open(out, readonly=True) as t:
            run = t.run_settings
        if run is not None:
            return run.context, (run.context_bytes / (1 << 20) if run.context == "network" else None)
    if getattr(cls, "model_context", "network") == "warm":
        return "warm", None
    return "network", mo.weight_bytes / (1 << 20)


def _farm_profile(address, out: Path, device, space, ops_file, resolution, granularity, max_ops, retry_failed, flags,
                  retime_suspect, target_iqr, max_time, min_samples, rounds, interleave, context, context_mb,
                  estimator, as_json) -> None:
    """`profile --farm`: the farm's profile (latbench.cli.farm) into the directory `out`."""
    from .farm import refuse_agent_flags, run_farm_profile, timing_fields

    refuse_agent_flags(flags, "a farm's devices run with the settings their node gave them (`latbench farm node`)")
    if retime_suspect:
        raise UsageError("--retime-suspect works on one table without --farm")
    if (space is None) == (ops_file is None):
        raise UsageError("give exactly one of --space or --ops")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: with --farm it is a directory (one table per device profile), not a file")
    run_farm_profile(address, space if space is not None else str(ops_file), out, [device] if device else [], as_json,
                     resolutions=resolution or None, granularity=granularity, max_ops=max_ops, retry_failed=retry_failed,
                     timing=timing_fields(max_time, min_samples, target_iqr, rounds, interleave), context=context,
                     context_mb=context_mb, estimator=estimator)


def _check_retime_flags(out: Path, space, ops_file, resolution, max_ops, retry_failed, model=None) -> None:
    """--retime-suspect takes its ops from an existing table: refuse a missing one and op selections."""
    given = [flag for flag, v in (("--space", space), ("--ops", ops_file), ("--model", model), ("--resolution", resolution),
                                  ("--max-ops", max_ops), ("--retry-failed", retry_failed)) if v]
    if given:
        raise UsageError(f"--retime-suspect times the suspect rows of {out} again: leave out {', '.join(given)}")
    if not out.is_file():
        raise UsageError(f"--retime-suspect needs an existing table; {out} is not one")


def _report(run, out: Path, as_json: bool, retime_only: bool) -> None:
    """The run summary on stdout (text or JSON); the first failures on stderr. Rows are priced by
    the run's estimator where latbench's loop timed them, else by the statistic the agent's
    runner gives (android)."""
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=2))
        return
    earlier = (f", {run.failed_earlier} failed earlier (not retried; --retry-failed measures them again)"
               if run.failed_earlier else "")
    typer.echo(f"{out}: {run.measured} measured, {run.skipped} already stored, {run.failed} failed{earlier}, "
               f"{run.remaining} remaining ({run.wall_s:.1f} s, {100 * run.overhead:.0f}% outside timed loops); "
               f"{_retime_words(run, out, retime_only)}{f'priced by the {run.estimator}; ' if run.estimator else ''}"
               f"{run.words()}")
    for k, e in run.failures[:10]:
        typer.echo(f"  failed: {k}: {e}", err=True)


def _retime_words(run, out: Path, retime_only: bool) -> str:
    """How many rows were timed again as suspect, and how many still are (unstable)."""
    if not run.retimed and not retime_only:
        return ""
    still = (f", {run.unstable} still suspect (unstable; `latbench table check {out}` lists them)"
             if run.unstable else ", none still suspect")
    return f"{run.retimed} suspect rows timed again{still if run.retimed else ''}; "


def _run_with_progress(body):
    """`body(hooks)` (the library's profile with progress callbacks) under a rich progress bar on
    stderr (done/total, ETA, current op), shown from the first op on, so an error raised before
    (a bad value) stays one line; rows timed again as suspect add to the total."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
    task = bar.add_task("", total=None)
    started = []

    def start(n: int) -> None:
        if not started:
            bar.start()
            started.append(True)
        bar.update(task, total=n)

    try:
        return body(dict(
            on_start=start,
            on_retime=lambda n: bar.update(task, total=(bar.tasks[0].total or 0) + n),
            on_op=lambda op: bar.update(task, description=op.key[:70]),
            on_result=lambda m: bar.advance(task),
        ))
    finally:
        if started:
            bar.stop()
