"""Zoo benchmark: real models priced as ONNX Runtime runs them, against the plain yardstick.

For each latbench.zoo model (transformers architectures built from their configs, seeded weights,
no download): export once (latbench.modelops.export_module), lower it as ONNX Runtime runs it
(`latbench ops --model --device ort`: the nodes of ONNX Runtime's own optimised graph, 1 thread,
level all) and print its coverage: nodes, unique nodes, nodes latbench cannot time, the share of
the model's FLOPs (convolutions and matrix products as torch's FlopCounterMode counts them,
attention included) in the nodes, and beside it how many nodes latbench's typed ops leave
unmapped (the lowering torch and tflite devices use for an ONNX model). Each model's unique nodes
are profiled into a table of its own exactly as `latbench profile --model` does (ort, 1 thread,
op granularity, network context with the model's weights read through the caches before each
timed call), the model is priced from it as `latbench predict --model` does
(latbench.model_price.price_model: the sum of its nodes' entries less the per-call cost, plus it
once) and measured end to end with the plain yardstick as latbench.validate measures subnets
(latbench.yardstick: ORT session.run on the exported model, 1 intra-op thread, a fresh session
per pass, passes interleaved across the models, the median of the pass medians). Per model:
predicted and measured ms, the error, the yardstick's noise ceiling for that model (each pass
against the median of its other passes: log sd and the worst pass), and the baseline measured in
the same run: a leave-one-out FLOPs fit (ms = a * MFLOPs + b fitted on the other models'
measured values, whole-model FLOPs). Models with unmapped nodes would be priced on their mapped
nodes and flagged PARTIAL.

Goals:
  unmapped compute nodes over the zoo: 0;
  |error| of the table's price: median <= 5% and worst <= 10%;
  the table beats the FLOPs fit on median |error|.
`--context warm` profiles calls back to back instead (the comparison row for the cache context).
`--runtime cpu` does the same for torch eager (the module's ATen calls, timed by the cpu agent,
against module(x)); `--runtime tflite` for LiteRT (each model's .tflite from --tflite-dir, or
converted here when litert-torch is installed; its operators, against interpreter.invoke()).

Timing on this 2-core host (825 unique nodes over the zoo): default about 12 minutes (profile 10
rounds over 24 interleaved ops, >= 10 samples a round, a round stops at IQR/median < 5% or its
share of 1 s per op; yardstick 3 passes of >= 50 runs and >= 0.5 s); --quick about 4 minutes
(3 rounds, >= 5 samples, 0.2 s per op; 3 passes of >= 10 runs and >= 0.1 s; figures noisier).

    python benchmarks/zoo.py                       # every zoo model
    python benchmarks/zoo.py --quick
    python benchmarks/zoo.py --models resnet18,vit_tiny --context warm --json /tmp/zoo.json
    python benchmarks/zoo.py --runtime tflite --tflite-dir /tmp/ltzoo   # NAME.tflite per model
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_MEDIAN, GOAL_WORST = 0.05, 0.10


def load() -> str:
    """The 1/5/15-minute load averages as text (2 cores: above ~1 other jobs compete with us)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class ZooRow:
    """One model through the benchmark."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    source: Any  # what the runtime takes: ONNX bytes (ort), the torch module (cpu), .tflite bytes (tflite)
    mops: Any  # latbench.modelops.ModelOps: the nodes of the runtime's own graph
    flops: int  # whole model (torch FlopCounterMode, eager attention)
    export_s: float
    predicted_ms: float = math.nan
    misses: int = 0
    reading: Any = None  # latbench.yardstick.Reading
    measured_ms: float = math.nan
    flops_fit_ms: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    typed: Any = None  # latbench.modelops.ModelOps: latbench's typed ops (what torch/tflite devices price)
    table: Path | None = None  # the model's own table

    @property
    def mapped_flops(self) -> int:
        """FLOPs (2 per multiply-add of convolutions and matrix products) of the mapped ops, as
        FlopCounterMode counts them."""
        from latbench import ops as O

        return sum(2 * p.macs for o in self.mops.ops for p in O.expand(o))

    @property
    def unmapped(self) -> int:
        return len(self.mops.unmapped)

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1

    @property
    def flops_fit_error(self) -> float:
        return self.flops_fit_ms / self.measured_ms - 1


def model_flops(module, input_shape) -> int:
    """Whole-model FLOPs (2 per multiply-add of convolutions and matrix products) by torch's
    FlopCounterMode; attention counted on its eager form (the CPU SDPA kernel is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    hf = getattr(module, "model", module)
    if hasattr(hf, "set_attn_implementation"):  # a transformers model (every one takes "eager")
        hf.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(torch.zeros(input_shape))
    return int(fc.get_total_flops())


DEVICES = {"ort": "ort", "tflite": "tflite", "cpu": "cpu"}
RUNTIME_WORDS = {"ort": "ONNX Runtime (its optimised graph, level all)", "tflite": "LiteRT (the .tflite's "
                 "operators, XNNPACK)", "cpu": "torch eager (the ATen calls torch.export records)"}


def runtime_source(name: str, module, shape, runtime: str, a) -> tuple[Any, Any]:
    """(the model in the runtime's form, its ONNX export for the typed-op coverage line or None)."""
    from latbench.modelops import export_module

    if runtime == "ort":
        onnx_bytes = export_module(module, shape)
        return onnx_bytes, onnx_bytes
    if runtime == "cpu":
        return module, None
    path = Path(a.tflite_dir) / f"{name}.tflite" if a.tflite_dir else None
    if path is not None and path.is_file():
        return path.read_bytes(), None
    try:
        import litert_torch
    except ImportError:
        raise SystemExit(f"zoo: --runtime tflite needs {name}.tflite in --tflite-dir, or litert-torch "
                         f"(pip install litert-torch) to convert the model here") from None
    import torch

    return bytes(litert_torch.convert(module, (torch.zeros(shape),)).tflite_model()), None


def build_rows(names: list[str], a) -> list[ZooRow]:
    """Each model built, in the runtime's form, lowered as the runtime runs it (the nodes of its
    own graph, 1 thread); its coverage printed (on ort with the typed-op lowering's beside it)."""
    from latbench.modelops import model_ops
    from latbench.zoo import kind, zoo_model

    rows = []
    print(f"coverage (lowered as {RUNTIME_WORDS[a.runtime]} runs them, 1 thread"
          + ("; typed: latbench's typed ops, as torch and tflite devices price an ONNX model" if a.runtime == "ort"
             else "") + "):")
    for name in names:
        t0 = time.perf_counter()
        module, shape = zoo_model(name)
        source, onnx_bytes = runtime_source(name, module, shape, a.runtime, a)
        export_s = time.perf_counter() - t0
        mops = model_ops(source, shape if a.runtime != "tflite" else None, DEVICES[a.runtime], threads=1)
        typed = model_ops(onnx_bytes, shape) if onnx_bytes is not None else None
        flops = model_flops(zoo_model(name)[0], shape)  # a copy: counting switches its attention to eager
        row = ZooRow(name, kind(name), tuple(shape), source, mops, flops, export_s, typed=typed)
        if a.runtime != "cpu":
            del module
        share = row.mapped_flops / row.flops if row.flops else math.nan
        gaps = ", ".join(f"{t} x{n}" for t, n in mops.unmapped_counts())
        print(f"  {name:15} {row.kind:11} {'x'.join(map(str, shape[1:])):9} {row.flops / 1e6:7.0f} MFLOPs: "
              f"{len(mops.ops):3} nodes ({len(mops.unique):3} unique, {mops.free} free), {100 * share:5.1f}% of "
              f"FLOPs in mapped nodes; " + (f"unmapped {row.unmapped}: {gaps}" if gaps else "every node mapped")
              + (f"; typed: {len(typed.unmapped)} unmapped" if typed is not None else ""))
        sys.stdout.flush()
        rows.append(row)
    return rows


def profile_each(rows: list[ZooRow], workdir: Path, a) -> list[Any]:
    """Each model's unique ops profiled into a table of its own, as `latbench profile --model`
    does: the runtime's device, 1 thread, op granularity, in network context with the model's own
    weights read through the caches before each timed call (--context warm: calls back to back)."""
    import latbench

    runs = []
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        path = workdir / f"{r.name}-{a.runtime}-1t-{a.context}{'-quick' if a.quick else ''}.sqlite"
        if path.exists() and not a.keep_tables:
            path.unlink()  # a fresh table: its entries and the yardstick are timed in the same run
        ctx: dict[str, Any] = {"context": "warm"}
        if a.context == "network":
            ctx = {"context": "network", "context_mb": r.mops.weight_bytes / (1 << 20)}
        run = latbench.profile(r.mops.unique, device=DEVICES[a.runtime], out=str(path), threads=1, granularity="op",
                               max_time_s=a.max_time, min_samples=a.min_samples, target_iqr=a.target_iqr,
                               rounds=a.rounds, **ctx)
        r.table = path
        runs.append(run)
        log(f"  profile {i + 1}/{len(rows)} {r.name}: {len(r.mops.unique)} ops ({time.perf_counter() - t0:.0f} s, "
            f"load {load()})")
    return runs


def price_rows(rows: list[ZooRow]) -> None:
    """Each model's price from its own table (`latbench predict --model`: the sum of its nodes'
    entries less the per-call cost, plus it once; a key the table lacks by the fallback)."""
    from latbench.model_price import price_model
    from latbench.store import LatencyTable

    for r in rows:
        with LatencyTable.open(str(r.table), readonly=True) as table:
            mp = price_model(table, r.source, r.input_shape, max_fallback=None)
        r.predicted_ms, r.misses = mp.price.raw_ms, len(mp.price.misses)


def measure_rows(rows: list[ZooRow], yardstick, runtime: str) -> Any:
    """The plain yardstick over every model (ORT session.run, module(x) or interpreter.invoke(),
    1 thread), as validate measures."""
    from device_agents import get_agent
    from latbench.validate.endtoend import agent_yardstick
    from latbench.yardstick import measure

    agent = get_agent(DEVICES[runtime], threads=1)
    try:
        ys = agent_yardstick(agent, yardstick)
        t0 = time.perf_counter()

        def done(visits: int, total: int) -> None:
            if visits % max(1, total // 10) == 0 or visits == total:
                log(f"  yardstick: {visits}/{total} passes ({time.perf_counter() - t0:.0f} s, load {load()})")

        readings = measure(len(rows), lambda i: agent.plain_model(rows[i].source, rows[i].input_shape), ys,
                           agent.state, agent.synchronizer(), done)
    finally:
        agent.close()
    for r, reading in zip(rows, readings):
        r.reading, r.measured_ms = reading, reading.value(ys.statistic)
    return ys


def flops_fit(rows: list[ZooRow]) -> None:
    """Leave-one-out: ms = a * MFLOPs + b fitted on the other models' measured values."""
    x = np.array([r.flops / 1e6 for r in rows])
    y = np.array([r.measured_ms for r in rows])
    for i, r in enumerate(rows):
        keep = np.arange(len(rows)) != i
        if keep.sum() >= 2 and np.ptp(x[keep]) > 0:
            a, b = np.polyfit(x[keep], y[keep], 1)
            r.flops_fit_ms = float(a * x[i] + b)


def pct(v: float) -> str:
    return f"{100 * v:+6.1f}%" if math.isfinite(v) else "    n/a"


def ms(v: float) -> str:
    return f"{v:7.2f}ms" if math.isfinite(v) else "      n/a"


def verdict(v: float, goal: float) -> str:
    if not math.isfinite(v):
        return "not computed"
    return "ok" if v <= goal else f"MISSED by {100 * (v - goal):.1f} points"


def error_lines(label: str, rows: list[ZooRow]) -> list[str]:
    """Median and worst |error| of the table and of the FLOPs fit over `rows`, against the goals."""
    if not rows:
        return [f"  {label}: no model"]
    t = np.abs([r.error for r in rows])
    f = np.abs([r.flops_fit_error for r in rows])
    f = f[np.isfinite(f)]
    fmed = float(np.median(f)) if f.size else math.nan
    worst = rows[int(np.argmax(t))].name
    out = [f"  {label} ({len(rows)}: {', '.join(r.name for r in rows)}):",
           (f"    table |error| median {100 * np.median(t):5.1f}% (goal <= {100 * GOAL_MEDIAN:.0f}%: "
            f"{verdict(float(np.median(t)), GOAL_MEDIAN)}), worst {100 * t.max():5.1f}% {worst} "
            f"(goal <= {100 * GOAL_WORST:.0f}%: {verdict(float(t.max()), GOAL_WORST)})"),
           (f"    FLOPs fit (leave-one-out) |error| median {100 * fmed:5.1f}%, worst {100 * f.max():5.1f}%"
            if f.size else "    FLOPs fit (leave-one-out): not computed (it needs 3 models of different FLOPs)")]
    if math.isfinite(fmed) and fmed > 0:
        ratio = float(np.median(t)) / fmed
        out.append(f"    table vs FLOPs fit, median |error|: {ratio:.2f}x (goal < 1: "
                   f"{'ok' if ratio < 1 else 'MISSED: the FLOPs fit is closer'})")
    return out


def report(rows: list[ZooRow], ys, runs: list[Any], walls: dict[str, float], runtime: str) -> list[str]:
    from latbench.yardstick import noise_ceiling, pass_ratios

    out = [f"per model ({DEVICES[runtime]}, 1 thread; measured: yardstick, {ys.describe()}; predicted: the "
           f"model's table, its nodes' entries summed as `predict --model` does):",
           (f"  {'model':15} {'kind':11} {'MFLOPs':>7} {'unmapped':>8} {'measured':>9} {'noise':>13} "
            f"{'predicted':>9} {'error':>7} {'FLOPs fit':>9} {'error':>7}")]
    for r in rows:
        c = noise_ceiling([r.reading], ys.statistic)
        worst = float(np.max(np.abs(pass_ratios([r.reading], ys.statistic) - 1)))
        noise = f"{100 * c.log_sd:4.1f}%/{100 * worst:4.1f}%" if math.isfinite(c.log_sd) else "n/a"
        flag = "  PARTIAL (mapped ops only)" if r.unmapped else ""
        miss = f"  {r.misses} key(s) by the fallback" if r.misses else ""
        out.append(f"  {r.name:15} {r.kind:11} {r.flops / 1e6:7.0f} {r.unmapped:8d} {r.measured_ms:7.2f}ms "
                   f"{noise:>13} {ms(r.predicted_ms)} {pct(r.error)} {ms(r.flops_fit_ms)} "
                   f"{pct(r.flops_fit_error)}{flag}{miss}")
    out.append("  (noise: the yardstick's pass-to-pass log sd / worst pass against the median of the others)")
    ceiling = noise_ceiling([r.reading for r in rows], ys.statistic)
    out.append("  " + ceiling.line().replace("subnets", "models"))

    out.append("summary:")
    unmapped = sum(r.unmapped for r in rows)
    by_type: dict[str, int] = {}
    for r in rows:
        for t, n in r.mops.unmapped_counts():
            by_type[t] = by_type.get(t, 0) + n
    types = ", ".join(f"{t} x{n}" for t, n in sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0])))
    partial = [r.name for r in rows if r.unmapped]
    out.append(f"  unmapped compute nodes: {unmapped} in {len(partial)} of {len(rows)} models (goal 0: "
               f"{'ok' if unmapped == 0 else 'MISSED'})" + (f": {types}" if types else ""))
    fl_total = sum(r.flops for r in rows)
    fl_mapped = sum(r.mapped_flops for r in rows)
    out.append(f"  FLOPs in mapped ops: {100 * fl_mapped / fl_total:.1f}% of the zoo's {fl_total / 1e9:.1f} GFLOPs")
    out += error_lines("fully mapped models", [r for r in rows if not r.unmapped])
    out += error_lines("all models (PARTIAL ones priced on their mapped ops)", rows)
    if math.isfinite(ceiling.log_sd) and ceiling.log_sd > GOAL_MEDIAN:
        out.append(f"  the yardstick's own pass-to-pass log sd ({100 * ceiling.log_sd:.1f}%) is above the "
                   f"{100 * GOAL_MEDIAN:.0f}% goal: this machine's noise alone can miss it")
    if all(r.typed is not None for r in rows):
        typed = sum(len(r.typed.unmapped) for r in rows)
        out.append(f"  typed ops (how torch and tflite devices price an ONNX model): {typed} nodes unmapped in "
                   f"{sum(1 for r in rows if r.typed.unmapped)} of {len(rows)} models")
    out.append(f"  tables: one per model, {sum(len(r.mops.unique) for r in rows)} unique ops in all, "
               f"{sum(r.measured for r in runs)} measured, {sum(r.skipped for r in runs)} already stored, "
               f"{sum(r.failed + r.failed_earlier for r in runs)} failed; in {rows[0].table.parent if rows else '-'}")
    out.append("  wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + f"; load average now {load()}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated zoo names (default: the whole zoo)")
    ap.add_argument("--quick", action="store_true", help="much shorter timing (minutes; noisier figures)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "latbench-zoo"),
                    help="where the table goes")
    ap.add_argument("--keep-tables", action="store_true", help="resume the models' tables in --workdir "
                    "(missing keys are profiled into them); default: fresh tables, timed in this run")
    ap.add_argument("--max-time", type=float, help="profile: time cap per op (s)")
    ap.add_argument("--min-samples", type=int, help="profile: samples a round, at least")
    ap.add_argument("--target-iqr", type=float, default=0.05, help="profile: a round stops below this IQR/median")
    ap.add_argument("--rounds", type=int, help="profile: interleaved rounds")
    ap.add_argument("--runtime", choices=tuple(DEVICES), default="ort",
                    help="ort (ONNX export), cpu (torch eager) or tflite (.tflite from --tflite-dir, or converted "
                    "here by litert-torch when it is installed)")
    ap.add_argument("--tflite-dir", help="tflite: where NAME.tflite files of the zoo are")
    ap.add_argument("--context", choices=("network", "warm"), default="network",
                    help="profile: cache context (network: the median model's weights read before each call, "
                    "as `profile --model` does for one model; warm: calls back to back)")
    ap.add_argument("--passes", type=int, default=3, help="yardstick: passes, a fresh session per model each")
    ap.add_argument("--runs", type=int, help="yardstick: timed runs per pass, at least")
    ap.add_argument("--min-time", type=float, help="yardstick: seconds of timed runs per pass, at least")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every figure to this JSON file")
    a = ap.parse_args()
    quick = {"max_time": 0.2, "min_samples": 5, "rounds": 3, "runs": 10, "min_time": 0.1, "warmup": 3}
    full = {"max_time": 1.0, "min_samples": 10, "rounds": 10, "runs": 50, "min_time": 0.5, "warmup": 10}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)

    from latbench.errors import LatbenchError
    from latbench.yardstick import YardstickSettings
    from latbench.zoo import list_zoo, zoo_entry

    try:
        names = [n.strip() for n in a.models.split(",") if n.strip()] if a.models else list_zoo()
        for n in names:
            zoo_entry(n)
        yardstick = YardstickSettings(warmup=a.warmup, runs=a.runs, min_s=a.min_time, passes=a.passes, seed=a.seed)
    except LatbenchError as e:
        raise SystemExit(f"zoo: {e}") from None
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    import onnxruntime
    import torch
    import transformers

    from importlib import metadata

    litert = next((f"{d} {metadata.version(d)}" for d in ("ai-edge-litert", "tflite-runtime")
                   if _installed(metadata, d)), "no LiteRT")
    print(f"zoo: {len(names)} models ({', '.join(names)}) on {a.runtime}; ort {onnxruntime.__version__}, torch "
          f"{torch.__version__}, {litert}, transformers {transformers.__version__}; 1 thread; profile: {a.rounds} rounds, >= {a.min_samples} samples, "
          f"IQR/median < {a.target_iqr:g} or {a.max_time:g} s per op; yardstick: {a.passes} passes of >= {a.runs} runs "
          f"and >= {a.min_time:g} s; {os.cpu_count()} cores, load average {load()}")
    sys.stdout.flush()
    torch.set_num_threads(1)  # building and FLOPs counting: leave the other core to other work
    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = build_rows(names, a)
    walls["export+lower"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    runs = profile_each(rows, workdir, a)
    walls["profile"] = time.perf_counter() - t1
    price_rows(rows)
    t1 = time.perf_counter()
    ys = measure_rows(rows, yardstick, a.runtime)
    walls["yardstick"] = time.perf_counter() - t1
    flops_fit(rows)
    walls["total"] = time.perf_counter() - t0
    for line in report(rows, ys, runs, walls, a.runtime):
        print(line)
    sys.stdout.flush()
    if a.json:
        Path(a.json).write_text(json.dumps({
            "settings": {k: v for k, v in vars(a).items()}, "yardstick": ys.to_dict(),
            "models": [{"name": r.name, "kind": r.kind, "input_shape": list(r.input_shape), "flops": r.flops,
                        "mapped_flops": r.mapped_flops, "ops": len(r.mops.ops), "unique_ops": len(r.mops.unique),
                        "unmapped": dict(r.mops.unmapped_counts()),
                        "typed_unmapped": dict(r.typed.unmapped_counts()) if r.typed is not None else None,
                        "unmapped_nodes": [u._asdict() for u in r.mops.unmapped], "measured_ms": r.measured_ms,
                        "predicted_ms": r.predicted_ms, "table": str(r.table), "flops_fit_ms": r.flops_fit_ms, "misses": r.misses,
                        "yardstick": r.reading.to_dict(ys.statistic)} for r in rows]}, indent=1))


def _installed(metadata, dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
