"""`latbench search` (latency-constrained subnet search on one or more tables) and
`latbench accuracy train` (fit an OFA-style accuracy MLP). Mounted by cli.py; imports only typer
at module level so `latbench --help` stays fast."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import LatbenchError, UsageError

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_count(text: Optional[str], what: str) -> Optional[float]:
    """'600M', '6e8', '1.5G' -> a number (FLOPs or params); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise UsageError(f"{what} must be a number with an optional K/M/G suffix, got {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2).lower()]


def load_predictors(space, tables: List[Path], calibration: bool = True,
                    max_fallback: Optional[float] = None) -> dict:
    """{table stem: Predictor} of the table files (latbench.search.load_predictors)."""
    from ..search.tables import load_predictors as load

    return load(space, list(tables), calibration, max_fallback)


def choose_resolutions(space, predictors: dict, asked: List[int], say) -> Optional[dict]:
    """The resolutions to search (latbench.search.search_resolutions), its notes said in this
    command's words; refuses (FallbackError) before saying anything when a subnet there would
    have more keys missing than a predictor allows."""
    from ..search.tables import search_resolutions
    from .flags import cli_words

    choices, notes = search_resolutions(space, predictors, asked or None)
    for note in notes:
        say(cli_words(note))
    return choices


def _budgets(names: list[str], budget_ms: List[float]) -> dict:
    if not budget_ms:
        return {}
    if len(budget_ms) == 1:
        return {n: budget_ms[0] for n in names}
    if len(budget_ms) != len(names):
        raise UsageError(f"give one --budget-ms for all tables or one per --table: got {len(budget_ms)} "
                         f"budgets for {len(names)} tables")
    return dict(zip(names, budget_ms))


def search_command(
    space: str = typer.Option(..., "--space", "-s", help="a built-in space or a YAML file"),
    table: List[Path] = typer.Option(..., "--table", "-t", help="latency table (SQLite); repeat for several devices"),
    budget_ms: List[float] = typer.Option([], "--budget-ms", "-b",
                                          help="latency budget in ms: one for every table, or one per --table in order"),
    flops_max: Optional[str] = typer.Option(None, "--flops-max", help="at most this many FLOPs (e.g. 600M)"),
    flops_min: Optional[str] = typer.Option(None, "--flops-min", help="at least this many FLOPs"),
    params_max: Optional[str] = typer.Option(None, "--params-max", help="at most this many parameters (e.g. 5M)"),
    params_min: Optional[str] = typer.Option(None, "--params-min", help="at least this many parameters"),
    strategy: str = typer.Option("evolution", "--strategy", help="evolution, anneal, random or nsga2"),
    accuracy: str = typer.Option("flops", "--accuracy", "-a",
                                 help="flops (a proxy), mlp:PATH, callable:module:function, or a registered prefix:arg"),
    seed: int = typer.Option(0, "--seed", help="same seed, same result"),
    generations: Optional[int] = typer.Option(None, "--generations", "-g", min=0,
                                              help="generations / iterations (default: the strategy's, 500 for evolution)"),
    population: Optional[int] = typer.Option(None, "--population", "-p", min=1,
                                             help="population / chains / batch (default 100)"),
    resolution: List[int] = typer.Option([], "--resolution", "-r",
                                         help="search only these resolutions (default: those every table covers)"),
    no_calibration: bool = typer.Option(False, "--no-calibration", help="ignore a calibration stored in the tables"),
    allow_fallback: bool = typer.Option(False, "--allow-fallback",
                                        help="search subnets with more than 10% of their keys missing from a table, "
                                        "priced by the fallback regression (default: an error before searching)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the best config (published form) as JSON"),
    front: Optional[Path] = typer.Option(None, "--front", help="write the accuracy/latency Pareto front as CSV"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="plot the front (PNG): accuracy vs latency, budget line"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Search a space for the most accurate subnet within a latency budget on every table."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    from ..search import run_search
    from ..search.strategies import get_strategy
    from ..spaces import get_space

    strat = get_strategy(strategy)
    sp = get_space(space)
    from ..predict import DEFAULT_MAX_FALLBACK

    predictors = load_predictors(sp, table, calibration=not no_calibration,
                                 max_fallback=None if allow_fallback else DEFAULT_MAX_FALLBACK)
    budgets = _budgets(list(predictors), budget_ms)
    choices = choose_resolutions(sp, predictors, resolution, lambda m: err.print(m, markup=False))
    fmax, fmin = parse_count(flops_max, "--flops-max"), parse_count(flops_min, "--flops-min")
    pmax, pmin = parse_count(params_max, "--params-max"), parse_count(params_min, "--params-min")
    opts = {"generations": generations, "population": population}
    result = _run_with_progress(err, strat.name, lambda progress: run_search(
        sp, predictors, budgets, accuracy, strat.name, seed,
        flops_range=(fmin, fmax) if fmin is not None or fmax is not None else None,
        params_range=(pmin, pmax) if pmin is not None or pmax is not None else None,
        choices=choices, progress=progress, front=bool(front or plot) or None, **opts))
    if out:
        _write(out, json.dumps(result.published) + "\n")
    if front:
        from ..search.report import write_front_csv

        n = write_front_csv(result, sp, front)
        err.print(f"wrote {front} ({n} points on the front)", markup=False)
    if plot:
        from ..search.report import plot_front

        plot_front(result, plot)
        err.print(f"wrote {plot}", markup=False)
    for name, n in result.fallback_keys.items():
        if n:
            err.print(f"note: {n} block(s) of the best subnet are not in table {name}; priced by the fallback regression",
                      markup=False)
    if as_json:
        sys.stdout.write(dumps_object(result.to_dict()) + "\n")
        return
    _print_result(result)


def dumps_object(doc: dict) -> str:
    """One JSON object, a key per line, each value compact (configs stay on one line)."""
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in doc.items())
    return "{\n" + body + "\n}"


def _run_with_progress(err, name: str, body):
    """Run `body(progress)` with a rich bar on stderr, started at the first step, so an error
    raised before the search starts (an impossible budget) stays one line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(f"[bold]search {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=err, transient=False)
    task = bar.add_task("", total=None)
    started = False

    def progress(done: int, total: int, best: float) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=max(total, 1), description=f"best {best:.4g}")

    try:
        return body(progress)
    finally:
        if started:
            bar.stop()


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise LatbenchError(f"{path}: cannot write: {e.strerror or e}") from None


def _print_result(r) -> None:
    """The best subnet for a person: config, latency per table against its budget, size, score."""
    lines = [f"best subnet of {r.space} ({r.strategy}, seed {r.seed}, {r.evaluations} scored, {r.seconds:.2f} s):",
             f"  config   {json.dumps(r.published, separators=(',', ':'))}"]
    for name, ms in r.latency_ms.items():
        b = r.budgets_ms.get(name)
        lines.append(f"  latency  {ms:.4f} ms on {name}" + (f" (budget {b:g} ms)" if b is not None else ""))
    lines.append(f"  FLOPs    {r.flops / 1e6:.1f} M   params {r.params / 1e6:.3f} M")
    label = "score (proxy: MFLOPs, not an accuracy)" if r.accuracy_proxy else f"accuracy ({r.accuracy_source})"
    lines.append(f"  {label}: {r.accuracy:.6g}")
    typer.echo("\n".join(lines))


# ---------------------------------------------------------------------- accuracy predictor
accuracy_app = typer.Typer(name="accuracy", help="Accuracy predictors for search.", no_args_is_help=True,
                           add_completion=False, pretty_exceptions_enable=False)


@accuracy_app.command("train")
def accuracy_train_command(
    space: str = typer.Option(..., "--space", "-s", help="an OFA MobileNetV3 space (ofa-mbv3-w10/w12)"),
    data: Path = typer.Option(..., "--data", "-d", help="CSV with columns config (published form, JSON) and accuracy"),
    out: Path = typer.Option(..., "--out", "-o", help="where to save the state_dict (torch.save)"),
    epochs: int = typer.Option(200, "--epochs", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", min=0, help="torch threads (0: torch's default)"),
    as_json: bool = typer.Option(False, "--json", help="print the training report as JSON"),
) -> None:
    """Train an OFA-style accuracy MLP (3x400, 128-d OFA encoding) on (config, accuracy) pairs."""
    from dataclasses import asdict

    from ..search.mlp import read_pairs, save_mlp, train_mlp
    from ..spaces import get_space

    sp = get_space(space)
    X, y = read_pairs(data, sp)
    net, report = train_mlp(sp, X, y, epochs=epochs, lr=lr, batch_size=batch_size,
                            val_fraction=val_fraction, seed=seed, threads=threads)
    save_mlp(net, out, sp.name)
    doc = {"out": str(out), **{k: (None if isinstance(v, float) and v != v else v)
                               for k, v in asdict(report).items()}}
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    val = "n/a" if report.val_rmse != report.val_rmse else f"{report.val_rmse:.4g}"
    typer.echo(f"{out}: trained on {report.n_train} pairs ({report.n_val} held out), {report.epochs} epochs, "
               f"RMSE train {report.train_rmse:.4g} / held-out {val}, base_acc {report.base_acc:.4g}, "
               f"{report.seconds:.1f} s; use --accuracy mlp:{out}")
