"""`latbench supernet train|search|export|eval`: train a supernet (OFA progressive shrinking or
BigNAS sandwich), search it under latency budgets, export a subnet. torch loads inside commands."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError

supernet_app = typer.Typer(help="Train, search and export weight-sharing supernets (PyTorch).",
                           no_args_is_help=True, add_completion=False)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(obj, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=float))
    else:
        print("\n".join(lines))


def _flops_range(lo: Optional[float], hi: Optional[float]):
    if lo is None and hi is None:
        return None
    return (lo if lo is not None else 0.0, hi if hi is not None else float("inf"))


@supernet_app.command("train")
def train_cmd(
    space: str = typer.Option(..., "--space", "-s", help="a built-in space or a YAML file"),
    data: str = typer.Option("digits", "--data", help="digits (scikit-learn, no download), an image folder or an .npz"),
    strategy: str = typer.Option("ofa", "--strategy", help="ofa (progressive shrinking) or bignas (sandwich)"),
    epochs: int = typer.Option(0, "--epochs", help="epochs in total (0: 24 for ofa, 16 for bignas)"),
    out: Path = typer.Option(Path("supernet.pt"), "--out", "-o", help="checkpoint, written every epoch; an existing one is resumed"),
    batch_size: int = typer.Option(64, "--batch-size", help="images per step and process"),
    lr: float = typer.Option(0.05, "--lr", help="peak learning rate (SGD, cosine per stage)"),
    seed: int = typer.Option(0, "--seed", help="seed of weights, batches and sampled subnets"),
    threads: int = typer.Option(0, "--threads", help="torch threads per process (0: torch's default)"),
    num_random: int = typer.Option(2, "--num-random", help="bignas: random subnets per sandwich"),
    flops_min: Optional[float] = typer.Option(None, "--flops-min", help="bignas: random subnets' MFLOPs at least"),
    flops_max: Optional[float] = typer.Option(None, "--flops-max", help="bignas: random subnets' MFLOPs at most"),
    max_train_images: int = typer.Option(0, "--max-train-images", help="use only this many training images (0: all)"),
    stop_after: int = typer.Option(0, "--stop-after", help="stop after this epoch (a later run resumes)"),
    schedule: str = typer.Option("equal", "--schedule", help="ofa: equal phases after 30% for the full net, or "
                                 "`ofa`: Once-for-All's proportions (full 180 : a task's last phase 120 : earlier 25)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Train a supernet on a space (resumes from --out; runs under torchrun unchanged)."""
    from ..supernet.train import TrainSettings, train_supernet

    settings = TrainSettings(space=space, data=data, strategy=strategy, epochs=epochs, out=str(out),
                             batch_size=batch_size, lr=lr, seed=seed, threads=threads, num_random=num_random,
                             flops_range=_flops_range(flops_min, flops_max), max_train_images=max_train_images,
                             stop_after=stop_after, schedule=schedule)
    res = train_supernet(settings, log=_log)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    summary = {"checkpoint": res.checkpoint, "epochs_done": res.epochs_done, "done": res.done,
               "seconds": round(res.seconds, 2), "test_accuracy": res.test,
               "last": res.history[-1] if res.history else None}
    lines = [f"checkpoint {res.checkpoint}: {res.epochs_done} epoch(s) this run, "
             + ("done" if res.done else "not finished (run again to resume)")]
    if res.test:
        lines.append("test accuracy: " + ", ".join(f"{k} subnet {v:.4f}" for k, v in res.test.items()))
    _emit(summary, as_json, lines)


def _out_path(out: Path, budget: float, n: int) -> Path:
    if n == 1:
        return out
    return out.with_name(f"{out.stem}-{budget:g}ms{out.suffix or '.json'}")


@supernet_app.command("search")
def search_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="a trained supernet checkpoint"),
    table: Path = typer.Option(..., "--table", "-t", help="latency table of the target device (latbench profile)"),
    budget_ms: List[float] = typer.Option(..., "--budget-ms", "-b", help="latency budget in ms (repeat for several)"),
    strategy: str = typer.Option("evolution", "--strategy", help="evolution, anneal, random or nsga2"),
    seed: int = typer.Option(0, "--seed"),
    population: int = typer.Option(24, "--population", help="evolution/nsga2 population"),
    generations: int = typer.Option(8, "--generations", help="evolution/nsga2 generations"),
    data: Optional[str] = typer.Option(None, "--data", help="evaluation data (default: the training data)"),
    split: str = typer.Option("val", "--split", help="split whose accuracy is maximised (val or test)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the winner(s) as JSON (best.json, best-<ms>ms.json)"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Search the supernet's subnets for the most accurate one under each latency budget."""
    from ..supernet.evaluator import SupernetEvaluator
    from ..supernet.search import search_supernet

    if any(b <= 0 for b in budget_ms):
        raise UsageError("--budget-ms must be > 0")
    t0 = time.perf_counter()
    ev = SupernetEvaluator.from_checkpoint(str(checkpoint), data=data, split=split)
    opts = {"population": population, "generations": generations} if strategy in ("evolution", "nsga2") else {}
    results = []
    for b in budget_ms:
        res = search_supernet(ev, str(table), {"latency": b}, strategy=strategy, seed=seed, **opts)
        d = res.to_dict()
        d["budget_ms"] = b
        results.append(d)
        _log(f"budget {b:g} ms: accuracy {res.accuracy:.4f}, predicted {d['latency_ms']:.3f} ms, "
             f"{res.asked} subnets evaluated, {res.seconds:.1f} s")
        if out is not None:
            p = _out_path(out, b, len(budget_ms))
            p.write_text(json.dumps(d, indent=2, default=float) + "\n")
    summary = {"checkpoint": str(checkpoint), "results": results, "seconds": round(time.perf_counter() - t0, 2),
               "subnets_evaluated": ev.evaluated}
    lines = [f"{r['budget_ms']:g} ms: accuracy {r['accuracy']:.4f} at {r['latency_ms']:.3f} ms predicted  "
             f"{json.dumps(r['config'], default=float)}" for r in results]
    _emit(summary, as_json, lines)


@supernet_app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="a trained supernet checkpoint"),
    config: Path = typer.Option(..., "--config", help="the subnet: a search result (best.json) or a config in the space's form"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="torch, onnx or tflite"),
    output: Path = typer.Option(..., "-o", "--output", help="file to write"),
    calib: bool = typer.Option(True, "--calib/--no-calib", help="re-estimate BN statistics on the training data first"),
    data: Optional[str] = typer.Option(None, "--data", help="calibration data (default: the training data)"),
    converter: str = typer.Option("latbench", "--converter", help="tflite only: latbench (its own flatbuffer builder, "
                                  "checked in LiteRT) or litert-torch"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Export one subnet (the space's module with the supernet's weights) to torch, ONNX or .tflite."""
    from ..supernet.checkpoint import supernet_from_checkpoint
    from ..supernet.data import load_data
    from ..supernet.export import export_subnet, read_config

    net, meta = supernet_from_checkpoint(str(checkpoint))
    cfg = read_config(config, net.space)
    calib_x = None
    if calib:
        calib_x = load_data(data or meta["data"], meta["channels"], meta["data_resolution"],
                            meta.get("data_seed", 0)).train[0]
    report = export_subnet(net, cfg, output, fmt, calib_x=calib_x, converter=converter)
    lines = [f"wrote {output} ({fmt}): input {'x'.join(map(str, report['input_shape']))}, "
             f"max abs diff vs supernet {report['max_abs_diff']:.2e}"
             + (f", ONNX Runtime {report['onnx_max_abs_diff']:.2e}" if report.get("onnx_max_abs_diff") is not None else "")
             + (f", LiteRT {report['tflite_max_abs_diff']:.2e}" if report.get("tflite_max_abs_diff") is not None else "")]
    _emit(report, as_json, lines)


@supernet_app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="a trained supernet checkpoint"),
    config: Optional[List[Path]] = typer.Option(None, "--config", help="subnet config file(s) (default: largest and smallest)"),
    split: str = typer.Option("test", "--split", help="train, val or test"),
    data: Optional[str] = typer.Option(None, "--data", help="data (default: the training data)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Accuracy of subnets (after calib_bn) on a split."""
    from ..supernet.checkpoint import supernet_from_checkpoint
    from ..supernet.data import load_data
    from ..supernet.evaluator import evaluate_config
    from ..supernet.export import read_config

    net, meta = supernet_from_checkpoint(str(checkpoint))
    splits = load_data(data or meta["data"], meta["channels"], meta["data_resolution"], meta.get("data_seed", 0))
    named = [(str(p), read_config(p, net.space)) for p in (config or [])] or [
        ("largest", net.space.largest()), ("smallest", net.space.smallest())]
    rows = [{"subnet": name, "accuracy": evaluate_config(net, cfg, splits, split),
             "config": net.space.to_published(cfg)} for name, cfg in named]
    _emit({"split": split, "results": rows}, as_json, [f"{r['subnet']}: {split} accuracy {r['accuracy']:.4f}" for r in rows])


__all__ = ["supernet_app"]
