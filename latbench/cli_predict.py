"""`latbench predict`: price subnets of a space, or a whole ONNX model, from a latency table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .errors import ConfigError, UsageError


def _load_config(text: str):
    """A config from a JSON string or a JSON file (published form, or a list of choice indices)."""
    stripped = text.lstrip()
    p = Path(text)
    if stripped[:1] in ("{", "["):  # inline JSON
        src = text
    else:
        try:
            src = p.read_text()
        except OSError as e:
            raise ConfigError(f"--config {text}: neither JSON nor a readable file ({e.strerror})") from None
    try:
        return json.loads(src)
    except json.JSONDecodeError as e:
        where = str(p) if src is not text else "--config"
        raise ConfigError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def predict_command(
    table: Path = typer.Option(..., "--table", "-t", help="the latency table (SQLite)"),
    space: Optional[str] = typer.Option(None, "--space", "-s", help="a built-in space or a YAML file"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="a config as JSON or a .json file"),
    random: Optional[int] = typer.Option(None, "--random", help="price N random subnets"),
    seed: int = typer.Option(0, "--seed", help="seed for --random"),
    resolution: List[int] = typer.Option([], "--resolution", "-r", help="with --random: only these resolutions"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="price a whole ONNX model (op-level tables)"),
    strict: bool = typer.Option(False, "--strict", help="a key missing from the table is an error"),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="ignore a stored calibration"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Predict latency (ms) of subnets or an ONNX model from a table; misses are priced by a
    fallback fitted on the table and counted (--strict makes them errors)."""
    from .predict import Predictor
    from .store import LatencyTable

    modes = sum(x is not None for x in (config, random, model))
    if modes != 1:
        raise UsageError("give exactly one of --config, --random N or --model")
    with LatencyTable.open(str(table), create=False) as t:
        if model is not None:
            out = _predict_model(t, model, strict, not no_calibration)
        else:
            if space is None:
                raise UsageError("--config and --random need --space")
            from .spaces import get_space

            sp = get_space(space)
            pred = Predictor.from_table(t, sp, strict=strict, use_calibration=not no_calibration)
            configs = [sp.index(_load_config(config))] if config is not None else _random(sp, random, seed, resolution)
            rows = []
            for c in configs:
                p = pred.explain(c)
                blocks = sp.blocks(c)
                rows.append({"config": sp.to_published(c), "ms": p.ms, "raw_ms": p.raw_ms,
                             "invocation_ms": p.invocation_ms, "misses": len(p.misses), "missing_keys": sorted(set(p.misses)),
                             "flops": sum(b.flops for b in blocks), "params": sum(b.params for b in blocks)})
            out = {"table": str(table), "space": sp.name, "granularity": pred.granularity,
                   "calibrated": pred.calibration is not None, "predictions": rows}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    cal = "calibrated" if out["calibrated"] else "uncalibrated"
    for r in out["predictions"]:
        miss = f", {r['misses']} key(s) priced by the fallback" if r["misses"] else ""
        label = json.dumps(r["config"], separators=(",", ":")) if "config" in r else r["model"]
        typer.echo(f"{r['ms']:.4f} ms ({cal}; uncalibrated {r['raw_ms']:.4f} ms{miss}; "
                   f"{r['flops'] / 1e6:.1f} MFLOPs) {label}")
        if r.get("unmapped"):
            typer.echo(f"  not priced (unmapped): {', '.join(r['unmapped'])}", err=True)


def _random(sp, n: int, seed: int, resolution: list[int]):
    import numpy as np

    if n < 1:
        raise UsageError("--random needs N >= 1")
    cfgs = sp.sample(seed, n)
    if resolution and sp.resolution_position is not None:
        res = sp.check_resolutions(resolution)
        choices = list(sp.positions[sp.resolution_position].choices)
        rng = np.random.default_rng(seed + 1)
        cfgs[:, sp.resolution_position] = rng.choice([choices.index(r) for r in res], n)
    return list(cfgs)


def _predict_model(t, model: Path, strict: bool, use_calibration: bool) -> dict:
    """Lower an ONNX model to ops and price them at the table's (op) granularity."""
    from .lower import lower_onnx
    from .predict import Pricer

    meta = t.meta_get("profile_run") or {}
    gran = meta.get("granularity", "op")
    if gran != "op":
        raise UsageError(f"{model}: pricing a whole model needs an op-level table; this one holds "
                         f"{gran}-level entries (profile with --granularity op)")
    if not model.is_file():
        raise UsageError(f"{model}: no such ONNX file")
    low = lower_onnx(str(model))
    pricer = Pricer.from_table(t, "op", strict=strict)
    p = pricer.price(low.ops)
    ms = p.raw_ms
    return {"table": str(t.path) if hasattr(t, "path") else "", "model": str(model), "granularity": "op",
            "calibrated": False,
            "predictions": [{"model": str(model), "ms": ms, "raw_ms": p.raw_ms,
                             "invocation_ms": p.invocation_ms, "misses": len(p.misses),
                             "missing_keys": sorted(set(p.misses)), "ops": len(low.ops),
                             "unmapped": low.unmapped, "flops": sum(o.flops for o in low.ops),
                             "params": sum(o.params for o in low.ops)}]}
