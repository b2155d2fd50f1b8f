"""`latbench predict`: price subnets of a space, or a whole ONNX model, from a latency table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError, UsageError


def _load_config(text: str):
    """A config from a JSON string or a JSON file (published form, or a list of choice indices), or
    the text itself where a space's published form is a string (NAS-Bench-201's arch string,
    FBNet's block indices) and no file has that name."""
    stripped = text.lstrip()
    p = Path(text)
    if stripped[:1] in ("{", "["):  # inline JSON
        src = text
    else:
        try:
            src = p.read_text()
        except FileNotFoundError:
            if not text.endswith(".json"):
                return text
            raise ConfigError(f"--config {text}: no such file") from None
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
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for --random (default 0)"),
    resolution: List[int] = typer.Option([], "--resolution", "-r", help="with --random: only these resolutions"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="price a whole model (op-level tables): an ONNX "
                                        "file, or module:callable (a function returning a torch module, exported "
                                        "to ONNX in process; see `latbench ops`)"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape",
                                              help="N,C,H,W: with --model, the input shape (a torch module, or an "
                                              "ONNX model with symbolic dims)"),
    strict: bool = typer.Option(False, "--strict", help="a key missing from the table is an error"),
    allow_fallback: bool = typer.Option(False, "--allow-fallback",
                                        help="price a subnet with more than 10% of its keys missing from the "
                                        "table by the fallback regression (default: an error)"),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="ignore a stored calibration"),
    statistic: Optional[str] = typer.Option(None, "--statistic",
                                            help="price each entry (and the per-call cost) by the median, mean "
                                            "or min of its samples (default: the table's own estimator)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Predict latency (ms) of subnets or an ONNX model from a table; misses are priced by a
    fallback fitted on the table and counted (--strict makes them errors; a subnet with more than
    10% of its keys missing is an error unless --allow-fallback)."""
    from ..predict import DEFAULT_MAX_FALLBACK, STATISTICS, Predictor
    from ..store import LatencyTable

    modes = sum(x is not None for x in (config, random, model))
    if modes != 1:
        raise UsageError("give exactly one of --config, --random N or --model")
    if input_shape is not None and model is None:
        raise UsageError("--input-shape goes with --model")
    if random is None and (seed is not None or resolution):
        raise UsageError(f"{'--seed' if seed is not None else '--resolution'} goes with --random "
                         f"(a --config names its own resolution)")
    if model is not None and no_calibration:
        raise UsageError("--no-calibration goes with --config and --random: a model's price is never calibrated "
                         "(calibrations belong to a space)")
    if statistic is not None and statistic not in STATISTICS:
        raise UsageError(f"--statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if space is not None and model is not None:
        raise UsageError(f"--space goes with --config and --random; --model {model} is priced as a whole "
                         f"model, from the table's op entries (leave --space out)")
    with LatencyTable.open(str(table), readonly=True) as t:
        if model is not None:
            return _predict_model(t, model, input_shape, strict, allow_fallback, as_json, statistic)
        else:
            if space is None:
                raise UsageError("--config and --random need --space")
            from ..spaces import get_space

            sp = get_space(space)
            pred = Predictor.from_table(t, sp, strict=strict, use_calibration=not no_calibration,
                                        max_fallback=None if allow_fallback else DEFAULT_MAX_FALLBACK,
                                        statistic=statistic)
            _note_calibration_left_out(t, sp, pred, no_calibration)
            configs = ([sp.index(_load_config(config))] if config is not None
                       else _random(sp, pred, random, seed or 0, resolution))
            rows = []
            for c in configs:
                p = pred.explain(c)
                blocks = sp.blocks(c)
                rows.append({"config": sp.to_published(c), "ms": p.ms, "raw_ms": p.raw_ms,
                             "invocation_ms": p.invocation_ms, "misses": len(p.misses), "keys": p.keys,
                             "missing_keys": sorted(set(p.misses)),
                             "flops": sum(b.flops for b in blocks), "params": sum(b.params for b in blocks)})
            out = {"table": str(table), "space": sp.name, "granularity": pred.granularity,
                   "statistic": pred.statistic, "calibrated": pred.calibration is not None, "predictions": rows}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    for r in out["predictions"]:
        cal = f"calibrated; uncalibrated {r['raw_ms']:.4f} ms" if out["calibrated"] else "uncalibrated"
        miss = f"; {r['misses']} of {r['keys']} keys priced by the fallback"
        label = json.dumps(r["config"], separators=(",", ":"))
        typer.echo(f"{r['ms']:.4f} ms ({cal}; priced by {out['statistic']}{miss}; {r['flops'] / 1e6:.1f} MFLOPs) {label}")


def _note_calibration_left_out(t, sp, pred, no_calibration: bool) -> None:
    """Say on stderr when the table's calibration of this space was not applied because another
    statistic than the table's own priced the entries (it was fitted to those prices)."""
    if no_calibration or pred.calibration is not None:
        return
    if t.calibration(sp, pred.granularity) is not None:
        typer.echo(f"the table's calibration of {sp.name} was fitted to its own prices: not applied to prices by "
                   f"the {pred.statistic}", err=True)


def _random(sp, pred, n: int, seed: int, resolution: list[int]):
    """n seeded random configs; without -r, at the resolutions the table covers (said on stderr)
    when it covers some but not all."""
    import numpy as np

    from ..search.domain import Domain

    if n < 1:
        raise UsageError("--random needs N >= 1")
    rpos = sp.resolution_position
    res = None
    if rpos is not None and resolution:
        res = sp.check_resolutions(resolution)
    elif rpos is not None and 0 < len(pred.covered_resolutions) < len(sp.resolutions):
        res = pred.covered_resolutions
        typer.echo(f"sampling the resolutions the table covers: {', '.join(map(str, res))} "
                   f"(of {len(sp.resolutions)}; -r to choose)", err=True)
    domain = Domain.of(sp, {sp.positions[rpos].name: list(res)} if res else None)
    return list(domain.sample(np.random.default_rng(seed), n))


def _predict_model(t, model: str, input_shape: Optional[str], strict: bool, allow_fallback: bool,
                   as_json: bool, statistic: Optional[str] = None) -> None:
    """Price a whole ONNX model (by `statistic` of each entry's samples where given); compute the
    table cannot price makes the result partial: the price of the mapped ops and the list on
    stdout, one summary line on stderr, exit 3."""
    from ..model_price import parse_input_shape, price_model
    from ..predict import DEFAULT_MAX_FALLBACK

    mp = price_model(t, model, parse_input_shape(input_shape), strict,
                     None if allow_fallback else DEFAULT_MAX_FALLBACK, statistic)
    typer.echo(json.dumps(mp.to_dict(), indent=2) if as_json else "\n".join(mp.lines()))
    if mp.partial:
        typer.echo(f"latbench: partial result: {mp.summary()}", err=True)
        raise typer.Exit(3)
