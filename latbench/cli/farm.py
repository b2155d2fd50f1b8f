"""`latbench farm ...`: the device farm on Ray (latbench.farm). `farm node` joins a host and its
devices to a cluster; `farm devices` lists every device; `farm profile` (also `latbench profile
--farm`) builds one table per device profile on all devices at once; `farm validate` and
`farm calibrate` (also `--farm` on validate and calibrate) measure on a device of a table's profile."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError

farm_app = typer.Typer(help="The device farm on Ray: many devices on many hosts at once.", no_args_is_help=True)

_ADDRESS = typer.Option(..., "--address", help="the Ray cluster's head, HOST:PORT (`ray start --head` prints it)")
_JSON = typer.Option(False, "--json", help="print one JSON document")


@farm_app.command("node")
def node_command(
    address: str = _ADDRESS,
    name: Optional[str] = typer.Option(None, "--name", help="this host's name in the farm (default: its host name)"),
    device: List[str] = typer.Option([], "--device", "-d", help="a kind this host offers: ort, tflite, cpu, cuda, "
                                     "android (repeat; default: every runtime that runs here and the phones "
                                     "on its adb server)"),
    runner: Optional[Path] = typer.Option(None, "--runner", help="android: benchmark_model for the phones' ABI, on this host"),
    adb_host: Optional[str] = typer.Option(None, "--adb-host", help="android: this host's adb server (default: as adb)"),
    adb_port: Optional[int] = typer.Option(None, "--adb-port", help="android: its port (default: as adb, 5037)"),
    threads: int = typer.Option(1, "--threads", "-t", help="runtime threads of every device"),
    num_cpus: int = typer.Option(1, "--num-cpus", help="CPUs this node gives Ray's own tasks"),
    node_ip: Optional[str] = typer.Option(None, "--node-ip", help="this host's address as the other hosts reach it "
                                          "(`ray start --node-ip-address`; default: Ray's choice)"),
    no_join: bool = typer.Option(False, "--no-join", help="this host is a Ray node already: only start its device actors"),
    as_json: bool = _JSON,
) -> None:
    """Join this host to the farm: its devices advertised as Ray resources, an actor for each."""
    from ..farm.discover import discover
    from ..farm.node import start_node

    options = {k: {"threads": threads} for k in ("ort", "tflite", "cpu", "cuda", "android")}
    entries, notes = discover(name, list(device) or None, str(runner) if runner else None, adb_host, adb_port, options)
    for line in notes:
        typer.echo(line, err=True)
    described = start_node(address, entries, num_cpus, join=not no_join, node_ip=node_ip)
    if as_json:
        typer.echo(json.dumps(described, indent=1))
        return
    for d in described:
        typer.echo(f"{d['device_id']}: {d['state']} ({d['kind']}, profile {d['profile_id']}){' ' + d['error'] if d['error'] else ''}")


@farm_app.command("devices")
def devices_command(address: str = _ADDRESS, as_json: bool = _JSON,
                    timeout: float = typer.Option(10.0, "--timeout", help="seconds a device has to answer")) -> None:
    """Every device of the farm: host, kind, model/SoC, profile id and state (idle, busy, hot, offline)."""
    from ..farm.ray_env import connect
    from ..farm.registry import list_farm

    rows = [d.to_dict() for d in list_farm(connect(address), timeout)]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        typer.echo("no devices in the farm (run `latbench farm node --address ...` on each host)", err=True)
        return
    w = max(len(r["device_id"]) for r in rows) + 2
    typer.echo(f"{'device':<{w}}{'node':<12}{'kind':<9}{'state':<9}{'profile':<18}model / SoC")
    for r in rows:
        typer.echo(f"{r['device_id']:<{w}}{r['node']:<12}{r['kind']:<9}{r['state']:<9}{r['profile_id'] or '-':<18}"
                   f"{' / '.join(x for x in (r['model'], r['soc']) if x)}")
    for r in rows:
        if r["error"]:
            typer.echo(f"{r['device_id']}: {r['error']}", err=True)


def run_farm_profile(address: str, source, out_dir: Path, device: List[str], as_json: bool, **kw) -> None:
    """The farm's profile with live lines on stderr and the summary on stdout; exit 130 when
    interrupted, 3 when a table has failed or missing ops."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from ..farm.driver import farm_profile

    err = Console(stderr=True, highlight=False)
    with Live(Text(""), console=err, transient=False, auto_refresh=False) as live:
        def lines(ls):
            live.update(Text("\n".join(ls)), refresh=True)

        run = farm_profile(address, source, str(out_dir), device=device or None, on_line=err.print,
                           on_progress=lines, **kw)
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=1))
    else:
        for r in run.runs:
            typer.echo(f"{r.table}: {r.measured} measured, {r.skipped} already stored, {r.failed} failed, "
                       f"{r.remaining} remaining ({r.wall_s:.1f} s); profile {r.profile_id} ({r.device})")
        used = ", ".join(f"{d} {n}" for d, n in sorted(run.devices.items()))
        typer.echo(f"farm: {run.batches} batches ({used or 'none'}), {run.requeued} given back by devices that went "
                   f"away, {run.failed_batches} failed everywhere; {run.wall_s:.1f} s")
    if run.interrupted:
        typer.echo("interrupted: every batch stored before is kept; rerun the same command to resume", err=True)
        raise typer.Exit(130)
    if not run.ok:
        raise typer.Exit(3)


def refuse_agent_flags(flags: dict, why: str) -> None:
    """With --farm a device runs with the settings its node gave it: agent flags given (not None)
    are refused by name, `why` saying where the settings come from."""
    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: {why}; leave {'it' if len(given) == 1 else 'them'} out with --farm")


def timing_fields(max_time: Optional[float], min_samples: Optional[int], target_iqr: Optional[float],
                  rounds: Optional[int], interleave: Optional[int]) -> dict:
    """The TimingSettings fields given on the command line (None: latbench's profile default)."""
    return {k: v for k, v in (("max_time_s", max_time), ("min_samples", min_samples), ("target_iqr", target_iqr),
                              ("rounds", rounds), ("interleave", interleave)) if v is not None}


@farm_app.command("profile")
def farm_profile_command(
    address: str = _ADDRESS,
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="directory of the tables, one per device profile "
                                 "(existing ones are resumed)"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="a built-in space or a YAML file"),
    ops_file: Optional[Path] = typer.Option(None, "--ops", help="an op list (PaddleSlim text, csv, jsonl, block keys)"),
    device: List[str] = typer.Option([], "--device", "-d", help="only devices of this kind (repeat; default: all)"),
    resolution: List[int] = typer.Option([], "--resolution", "-r", help="input resolution(s); default: all of the space's"),
    granularity: Optional[str] = typer.Option(None, "--granularity", "-g", help="op or block (default: block with "
                                              "--space, op with --ops)"),
    max_ops: Optional[int] = typer.Option(None, "--max-ops", help="measure at most this many new ops per table"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="measure again ops that failed before"),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="time cap per op in seconds (default 2)"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="samples per op at least (default 10)"),
    target_iqr: Optional[float] = typer.Option(None, "--target-iqr", help="stop once IQR/median is below this"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="interleaved rounds per op (default 10; 1 on android)"),
    interleave: Optional[int] = typer.Option(None, "--interleave", help="ops timed together (default 24; 1 on android)"),
    context: str = typer.Option("auto", "--context", help="cache context: network, warm or auto"),
    context_mb: Optional[float] = typer.Option(None, "--context-mb", help="network context: MB read before each call"),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="mean, median or round_min (a resumed table keeps its own)"),
    retime: str = typer.Option("first", "--retime", help="suspect rows timed again: first (once each), all, none"),
    wait: Optional[float] = typer.Option(None, "--wait", help="seconds a table waits for a device of its profile "
                                         "when none is up (default: until Ctrl-C)"),
    as_json: bool = _JSON,
) -> None:
    """Profile ops on every device of the farm: one table per device profile, devices of one
    profile sharing its ops (resumable; the driver writes every table)."""
    if (space is None) == (ops_file is None):
        raise UsageError("give exactly one of --space or --ops")
    if ops_file is not None and resolution:
        raise UsageError(f"--resolution applies to --space; {ops_file} lists its ops with their shapes")
    run_farm_profile(address, space if space is not None else os.fspath(ops_file), out_dir, device, as_json,
                     resolutions=resolution or None, granularity=granularity, max_ops=max_ops,
                     retry_failed=retry_failed, timing=timing_fields(max_time, min_samples, target_iqr, rounds, interleave),
                     context=context, context_mb=context_mb, estimator=estimator, retime=retime, wait_s=wait)


__all__ = ["farm_app", "refuse_agent_flags", "run_farm_profile", "timing_fields"]
