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


def select_ops(space: Optional[str], ops_file: Optional[Path], resolution: list[int], granularity: str,
               fusion: str):
    """The ops to profile and, for space ops, the resolutions each key belongs to; an empty
    selection is refused, naming where it came from."""
    from .. import ops as O
    from ..profiling import ops_with_resolutions

    if (space is None) == (ops_file is None):
        raise UsageError("give exactly one of --space or --ops")
    if ops_file is not None:
        from ..formats.oplist import read_any_ops

        if resolution:
            raise UsageError(f"--resolution applies to --space; {ops_file} lists its ops with their shapes")
        ops, res = O.unique(read_any_ops(str(ops_file))), {}
        where = f"{ops_file} lists no ops"
    else:
        from ..spaces import get_space

        ops, res = ops_with_resolutions(get_space(space), resolution or None, granularity, fusion)
        where = f"space {space} gives no {granularity}s at resolution(s) {', '.join(map(str, resolution)) or 'all'}"
    if not ops:
        raise UsageError(f"nothing to profile: {where}")
    return ops, res


def profile_command(
    device: str = typer.Option(..., "--device", "-d", help="cpu, cuda, ort, tflite or android"),
    out: Path = typer.Option(..., "--out", "-o", help="the table (SQLite); an existing one is resumed"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="a built-in space or a YAML file"),
    ops_file: Optional[Path] = typer.Option(None, "--ops", help="an op list (PaddleSlim text, csv, jsonl, block keys)"),
    resolution: List[int] = typer.Option([], "--resolution", "-r", help="input resolution(s); default: all of the space's"),
    granularity: str = typer.Option("block", "--granularity", "-g", help="op or block"),
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
                                               "median subnet weights)"),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="what a row is priced by: mean (of every "
                                            "sample; a new table's default), median, or round_min (the fastest "
                                            "round's median); a resumed table keeps its own"),
    retime_suspect: bool = typer.Option(False, "--retime-suspect", help="time the table's suspect rows again "
                                        "(`latbench table check` lists them) instead of measuring new ops"),
    as_json: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
) -> None:
    """Profile ops on a device into a latency table (resumable; every op committed as measured)."""
    from device_agents import agent_class, agent_options, get_agent

    from ..profiling import INVOCATION_META, check_max_ops, measure_invocation, timing_for
    from ..spaces import get_space
    from ..store import LatencyTable

    if granularity not in ("op", "block"):
        raise UsageError(f"--granularity must be op or block, got {granularity!r}")
    check_max_ops(max_ops)
    if retime_suspect:
        _check_retime_flags(out, space, ops_file, resolution, max_ops, retry_failed)
    flags = dict(threads=threads, opt_level=opt_level, boundary=boundary, xnnpack=xnnpack, serial=serial,
                 runner=runner, runtime=runtime, cpus=cpus, delegate=delegate, max_temp=max_temp,
                 cooldown=cooldown, batch_size=batch_size)  # None: not given
    options = agent_options(device, flags)
    cls = agent_class(device)
    own_loop = bool(getattr(cls, "interleaves", False))  # timed by latbench's loop, priced by timing.estimator
    if estimator is not None and not own_loop:
        raise UsageError(f"--estimator applies to agents timed by latbench's own loop; {device}'s runner gives its "
                         f"own statistic (benchmark_model: the mean)")
    # bad timing values are refused before the agent touches a device
    timing = default_timing(cls, target_iqr=target_iqr, max_time_s=max_time, min_samples=min_samples,
                            rounds=rounds, interleave=interleave, estimator=estimator or "mean")
    agent = get_agent(device, **options)
    try:
        fusion = getattr(agent, "fusion", "none")
        if not retime_suspect:  # a bad selection is refused before a table is made
            ops, res = select_ops(space, ops_file, resolution, granularity, fusion)
            timing = timing_for(agent, timing, context, get_space(space) if space else None, context_mb)
        with LatencyTable.open(str(out), agent.profile, create=not retime_suspect) as table:
            if retime_suspect:
                timing = _retime_timing(table, agent, timing, context, context_mb, estimator, own_loop)
                run = _run_with_progress(table, agent, [], timing, None, False, {}, retime="all")
            else:
                timing = checked_run(table, granularity, fusion, space, timing, estimator, own_loop)
                measure_invocation(table, agent, timing, retry_failed)
                run = _run_with_progress(table, agent, ops, timing, max_ops, retry_failed, res)
            invocation = table.meta_get(INVOCATION_META)  # each batch added a sample
    finally:
        agent.close()
    _report(run, out, agent, device, timing, invocation, as_json, own_loop, retime_suspect)
    if run.interrupted:
        typer.echo(f"{out}: {run.measured + run.failed} ops stored before the interruption; rerun the same command to resume", err=True)
        raise typer.Exit(130)
    if run.failed or run.failed_earlier:  # a partial table while any of its ops is stored failed
        raise typer.Exit(3)


def _check_retime_flags(out: Path, space, ops_file, resolution, max_ops, retry_failed) -> None:
    """--retime-suspect takes its ops from an existing table: refuse a missing one and op selections."""
    given = [flag for flag, v in (("--space", space), ("--ops", ops_file), ("--resolution", resolution),
                                  ("--max-ops", max_ops), ("--retry-failed", retry_failed)) if v]
    if given:
        raise UsageError(f"--retime-suspect times the suspect rows of {out} again: leave out {', '.join(given)}")
    if not out.is_file():
        raise UsageError(f"--retime-suspect needs an existing table; {out} is not one")


def checked_run(table, granularity: str, fusion: str, space, timing, estimator, own_loop: bool):
    """`timing` priced by the table's own estimator where --estimator was not given (a new table:
    the mean), after the table's run settings were checked or recorded (check_run_meta)."""
    import dataclasses

    from ..profiling import check_run_meta, table_estimator

    if estimator is None and own_loop:
        timing = dataclasses.replace(timing, estimator=table_estimator(table) or "mean")
    check_run_meta(table, granularity, fusion, space, timing, own_loop)
    return timing


def _retime_timing(table, agent, timing, context: str, context_mb, estimator, own_loop: bool):
    """The timing to time `table`'s suspect rows again with: its recorded cache context unless
    --context/--context-mb say otherwise (then checked against it), its estimator."""
    from ..profiling import timing_for

    meta = table.meta_get("profile_run") or {}
    if context == "auto" and context_mb is None and meta.get("context"):
        context = meta["context"]
        context_mb = meta["context_bytes"] / (1 << 20) if context == "network" else None
    timing = timing_for(agent, timing, context, None, context_mb)
    granularity = meta.get("granularity") or "block"
    return checked_run(table, granularity, meta.get("fusion", "none"), None, timing, estimator, own_loop)


def _report(run, out: Path, agent, device: str, timing, invocation: dict | None, as_json: bool,
            own_loop: bool, retime_only: bool) -> None:
    """The run summary on stdout (text or JSON); the first failures on stderr. Rows are priced by
    `timing.estimator` where `own_loop`, else by the statistic the agent's runner gives (android)."""
    estimator = timing.estimator if own_loop else None
    ok = invocation if invocation and invocation.get("estimate_ms") is not None else None
    if as_json:
        typer.echo(json.dumps({
            "table": str(out), "profile_id": agent.profile.id, "device": device, "total": run.total,
            "skipped": run.skipped, "measured": run.measured, "failed": run.failed,
            "failed_earlier": run.failed_earlier, "remaining": run.remaining, "interrupted": run.interrupted,
            "retimed": run.retimed, "unstable": run.unstable,
            "wall_s": round(run.wall_s, 3), "overhead": round(run.overhead, 4),
            "estimator": estimator, "context": timing.context, "context_bytes": timing.context_bytes,
            "rounds": timing.rounds, "interleave": timing.interleave,
            "invocation_ms": ok["estimate_ms"] if ok else None,
            "invocation_error": None if ok or not invocation else invocation.get("error"),
            "failures": [{"key": k, "error": e} for k, e in run.failures],
        }, indent=2))
        return
    earlier = (f", {run.failed_earlier} failed earlier (not retried; --retry-failed measures them again)"
               if run.failed_earlier else "")
    typer.echo(f"{out}: {run.measured} measured, {run.skipped} already stored, {run.failed} failed{earlier}, "
               f"{run.remaining} remaining ({run.wall_s:.1f} s, {100 * run.overhead:.0f}% outside timed loops); "
               f"{_retime_words(run, out, retime_only)}{f'priced by the {estimator}; ' if estimator else ''}"
               f"{context_line(timing, invocation)}")
    for k, e in run.failures[:10]:
        typer.echo(f"  failed: {k}: {e}", err=True)


def _retime_words(run, out: Path, retime_only: bool) -> str:
    """How many rows were timed again as suspect, and how many still are (unstable)."""
    if not run.retimed and not retime_only:
        return ""
    still = (f", {run.unstable} still suspect (unstable; `latbench table check {out}` lists them)"
             if run.unstable else ", none still suspect")
    return f"{run.retimed} suspect rows timed again{still if run.retimed else ''}; "


ROUNDS, INTERLEAVE = 10, 24  # profile defaults where the agent can interleave


def default_timing(agent, rounds: Optional[int] = None, interleave: Optional[int] = None, **kw):
    """TimingSettings with latbench's profile defaults: 10 rounds over 24 ops interleaved (spread over
    seconds, so a slow spell of a shared machine hits a round, not an op) where the agent (an
    instance or its class) can."""
    from ..measure import TimingSettings

    can = getattr(agent, "interleaves", False)
    return TimingSettings(rounds=rounds if rounds is not None else (ROUNDS if can else 1),
                          interleave=interleave if interleave is not None else (INTERLEAVE if can else 1), **kw)


def context_line(timing, invocation: dict | None) -> str:
    """How the entries were timed, in a few words (profile and quickstart print it); `invocation`
    is the table's per-call cost entry (meta "invocation"), a failed one with its reason."""
    if timing.context == "network":
        words = f"network context, {timing.context_bytes / (1 << 20):.1f} MB read before each call"
    else:
        words = "warm context (calls back to back)"
    if timing.rounds > 1:
        words += f"; {timing.rounds} rounds over {timing.interleave} ops at a time"
    return f"{words}; per-call cost {_invocation_words(invocation)}"


def _invocation_words(invocation: dict | None) -> str:
    """The per-call cost as measured (the meta entry's estimate), or why it was not."""
    if not invocation:
        return "not measured"
    if invocation.get("estimate_ms") is None:
        return f"not measured: {invocation.get('error') or 'no sample'}"
    n = sum(x.get("estimate_ms") is not None for x in invocation.get("samples", ()))
    how = f" ({invocation.get('estimator', 'median')} over {n} batches)" if n > 1 else ""
    return f"{invocation['estimate_ms'] * 1e3:.1f} us{how}"


def _run_with_progress(table, agent, ops, timing, max_ops, retry_failed, res, retime: str = "first"):
    """profile_into with a rich progress bar on stderr (done/total, ETA, current op); rows timed
    again as suspect add to the total."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..profiling import profile_into

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]profile"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as bar:
        task = bar.add_task("", total=None)
        return profile_into(
            table, agent, ops, timing, max_ops=max_ops, retry_failed=retry_failed, resolutions=res, retime=retime,
            on_start=lambda n: bar.update(task, total=n),
            on_retime=lambda n: bar.update(task, total=(bar.tasks[0].total or 0) + n),
            on_op=lambda op: bar.update(task, description=op.key[:70]),
            on_result=lambda m: bar.advance(task),
        )
