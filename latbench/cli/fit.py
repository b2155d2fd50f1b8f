"""`latbench fit` and `latbench transfer`: a latency table from measured end-to-end latencies (and,
with prior tables, from other devices' tables: a transfer, or the device's own measured table: a
refinement)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer


_SPACE = typer.Option(..., "--space", "-s", help="a built-in space or a YAML file")
_MEASURED = typer.Option(..., "--measured", help="CSV of measured networks: a config column (config or arch; any "
                         "form the space accepts, JSON included) and a latency column in ms")
_OUTPUT = typer.Option(..., "--output", "-o", help="the fitted table to write (a new SQLite file)")
_COLUMN = typer.Option(None, "--column", help="the latency column (default: ms, or measured_ms as `latbench "
                       "validate --csv` writes it)")
_CONFIG_COLUMN = typer.Option(None, "--config-column", help="the config column (default: config or arch)")
_REFINE = typer.Option(False, "--refine", help="the one prior is this device's own measured table: the refined "
                       "table keeps its device profile, so validate and calibrate measure it")
_N = typer.Option(None, "--n", "-n", help="fit on N networks drawn from the file (seeded; default: all)")
_SEED = typer.Option(0, "--seed", help="seed for --n and the cross-validation folds")
_GRANULARITY = typer.Option(None, "--granularity", "-g", help="op or block (default: the prior tables', else block)")
_LAMBDA = typer.Option(None, "--lambda", help="shrinkage towards the prior (default: chosen by cross-validation)")
_DEVICE_NAME = typer.Option("", "--device-name", help="the device the latencies are of (default: the latency "
                            "column's name)")
_JSON = typer.Option(False, "--json", help="print the fit as one JSON document")


def fit_command(
    space: str = _SPACE, measured: Path = _MEASURED, output: Path = _OUTPUT,
    column: Optional[str] = _COLUMN, config_column: Optional[str] = _CONFIG_COLUMN,
    prior: List[Path] = typer.Option([], "--prior", help="a table to transfer from (repeat for several devices), "
                                     "or the device's own measured table to refine at key level (--refine)"),
    refine: bool = _REFINE, n: Optional[int] = _N, seed: int = _SEED, granularity: Optional[str] = _GRANULARITY,
    lam: Optional[float] = _LAMBDA, device_name: str = _DEVICE_NAME, as_json: bool = _JSON,
) -> None:
    """Fit a latency table from measured end-to-end latencies: per-key costs by regularised
    non-negative least squares over key counts, each with its uncertainty; --prior transfers from
    other devices' tables (or refines the device's own)."""
    _fit(space, measured, output, column, config_column, prior, refine, n, seed, granularity, lam, device_name,
         as_json)


def transfer_command(
    tables: List[Path] = typer.Argument(..., help="the other devices' tables (or, with --refine, the device's own)"),
    space: str = _SPACE, measured: Path = _MEASURED, output: Path = _OUTPUT,
    column: Optional[str] = _COLUMN, config_column: Optional[str] = _CONFIG_COLUMN,
    refine: bool = _REFINE, n: Optional[int] = _N, seed: int = _SEED, granularity: Optional[str] = _GRANULARITY,
    lam: Optional[float] = _LAMBDA, device_name: str = _DEVICE_NAME, as_json: bool = _JSON,
) -> None:
    """A device's table from a few of its measured networks and other devices' tables: `latbench fit`
    with TABLES as its --prior tables."""
    _fit(space, measured, output, column, config_column, tables, refine, n, seed, granularity, lam, device_name,
         as_json)


def _fit(space, measured, output, column, config_column, prior, refine, n, seed, granularity, lam, device_name,
         as_json) -> None:
    """Read the networks, fit (or transfer, or refine), write the table, say what was fitted."""
    from ..errors import UsageError
    from ..fit_table import fit_table, read_networks
    from ..spaces import get_space
    from .common import _stdout

    if granularity is not None and granularity not in ("op", "block"):
        raise UsageError(f"--granularity must be op or block, got {granularity!r}")
    sp = get_space(space)
    networks = read_networks(str(measured), sp, column, config_column).take(n, seed)
    result = fit_table(str(output), sp, networks, [str(p) for p in prior], granularity, device_name, lam, seed,
                       refine)
    record = result.record()
    if as_json:
        typer.echo(json.dumps({"table": str(output), "space": sp.name, "source": networks.source, **record}, indent=1))
        return
    out = _stdout()
    seen = record["keys_seen"]
    out.print(f"fitted {output} from {result.networks} networks of {sp.name} ({networks.source})"
              + (f"; {result.folded} measured at under a tenth of the median left out (folded away by the "
                 f"runtime: no sum of op costs prices them)" if result.folded else ""))
    out.print(f"  keys: {record['keys']} ({seen} held by the measured networks"
              + (f", {record['keys'] - seen} priced by the prior alone" if record["keys"] > seen else "") + ")")
    lam_words = "the prior itself" if math.isinf(result.lam) else f"{result.lam:g}"
    out.print(f"  prior: {result.prior.name}; shrinkage towards it: {lam_words} "
              f"(cross-validated RMS relative error {_pct(result.cv_rmspe)}, {result.folds} folds)")
    ins = record["in_sample"]
    out.print(f"  in sample: within 5% {_pct(ins['within5'])}, within 10% {_pct(ins['within10'])}, "
              f"Spearman {_num(ins['spearman'])}; per-network cost {result.intercept:.4g} ms")


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
