"""Supernet figures: time per training step (largest, smallest, sandwich), accuracy of sampled
subnets taken from a trained supernet (after calib_bn) against the same architectures trained from
scratch for the same epochs, and search wall time with the supernet evaluator.

    python benchmarks/supernet.py                       # all three on tiny / digits
    python benchmarks/supernet.py --only steps          # just the step times
    python benchmarks/supernet.py --checkpoint ck.pt --table ort.db --subnets 20 --epochs 6
    python benchmarks/supernet.py --only scratch --checkpoint ofa.pt --checkpoint bignas.pt --epochs 30 \
        --scratch-cache scratch.json           # both supernets against one scratch run
    python benchmarks/supernet.py --only winners --checkpoint ofa.pt --device tflite   # exported winners timed
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np



def step_times(space_name: str, batch: int, steps: int, threads: int) -> None:
    import torch

    from latbench.spaces import get_space
    from latbench.supernet.data import resize
    from latbench.supernet.model import SuperNet
    from latbench.supernet.sandwich import SANDWICH, SubnetSampler, sandwich_step

    torch.set_num_threads(threads)
    space = get_space(space_name)
    net = SuperNet(space).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    shape = space.input_shape(space.largest())
    x = torch.randn(batch, shape[1], shape[2], shape[3])
    y = torch.randint(0, 10, (batch,))
    rng = np.random.default_rng(0)
    sampler = SubnetSampler(space)
    F = torch.nn.functional

    def one(cfg):
        def run():
            opt.zero_grad()
            net.set_active(cfg)
            F.cross_entropy(net(resize(x, net.resolution)), y).backward()
            opt.step()
        return run

    def sandwich():
        opt.zero_grad()
        sandwich_step(net, x, y, rng, sampler, SANDWICH)
        opt.step()

    print(f"## training step time ({space_name}, batch {batch}, {threads} thread(s), channels-last, {steps} steps)")
    for name, fn in (("largest", one(space.largest())), ("smallest", one(space.smallest())),
                     ("sandwich [max, random, random, min]", sandwich)):
        fn()
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        q = np.percentile(ts, [25, 75])
        print(f"  {name:36s} median {statistics.median(ts) * 1e3:8.1f} ms  IQR {q[0] * 1e3:.1f}-{q[1] * 1e3:.1f} ms")


def scratch_accuracies(space_name: str, configs, epochs: int, batch: int, lr: float, seed: int, threads: int,
                       cache: str | None = None) -> list[float]:
    """Test accuracy of each config trained alone from scratch (digits at the space's largest
    resolution, as `supernet train` loads it), cached in `cache` (JSON keyed by the settings), so
    several supernets are compared with one scratch run."""
    import json

    import torch

    from latbench.spaces import get_space
    from latbench.supernet.data import load_data
    from latbench.supernet.standalone import alone_accuracy

    key = json.dumps({"space": space_name, "configs": np.asarray(configs).tolist(), "epochs": epochs,
                      "batch": batch, "lr": lr, "seed": seed})
    if cache and os.path.isfile(cache):
        have = json.load(open(cache))
        if key in have:
            return have[key]
    torch.set_num_threads(threads)
    space = get_space(space_name)
    shape = space.input_shape(space.largest())
    data = load_data("digits", shape[1], shape[2], 0)
    out = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        out.append(alone_accuracy(space, cfg, data, epochs, batch_size=batch, lr=lr, seed=seed + i, order_seed=seed))
        print(f"  scratch subnet {i:2d}: {out[-1]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if cache:
        have = json.load(open(cache)) if os.path.isfile(cache) else {}
        have[key] = out
        json.dump(have, open(cache, "w"))
    return out


def scratch_vs_supernet(checkpoints: list[str], n: int, epochs: int, batch: int, lr: float, seed: int, threads: int,
                        cache: str | None = None) -> None:
    """n sampled subnets: each supernet's accuracy for them (after calib_bn) against the same
    subnets trained alone for `epochs` (one scratch run shared by every checkpoint)."""
    import torch

    from latbench.supernet.checkpoint import supernet_from_checkpoint
    from latbench.supernet.data import load_data
    from latbench.supernet.evaluator import evaluate_config

    torch.set_num_threads(threads)
    nets = [supernet_from_checkpoint(c) for c in checkpoints]
    space = nets[0][0].space
    configs = space.sample(np.random.default_rng(seed), n)
    scratch = np.array(scratch_accuracies(space.name, configs, epochs, batch, lr, seed, threads, cache))
    for ck, (net, meta) in zip(checkpoints, nets):
        net = net.to(memory_format=torch.channels_last)
        data = load_data(meta["data"], meta["channels"], meta["data_resolution"], meta.get("data_seed", 0))
        sup = np.array([evaluate_config(net, cfg, data, "test") for cfg in configs])
        print(f"## {n} sampled subnets of {space.name}: from the supernet {os.path.basename(ck)} ({meta['strategy']}, "
              f"{meta['epochs']} epochs, calib_bn) vs trained alone ({epochs} epochs, batch {batch}, lr {lr}); test accuracy")
        for i, cfg in enumerate(configs):
            mflops = sum(b.flops for b in space.blocks(cfg)) / 1e6
            print(f"  subnet {i:2d}  {mflops:6.1f} MFLOPs  supernet {sup[i]:.4f}  alone {scratch[i]:.4f}")
        gap = scratch.mean() - sup.mean()
        print(f"  mean: supernet {sup.mean():.4f}  alone {scratch.mean():.4f}  (supernet {100 * -gap:+.2f} points; "
              f"goal: within 2 points: {'met' if gap <= 0.02 else 'not met'}; supernet >= alone for "
              f"{int((sup >= scratch).sum())}/{n})", flush=True)


def search_time(checkpoint: str, table: str, budgets: list[float], threads: int) -> None:
    import torch

    from latbench.supernet.evaluator import SupernetEvaluator
    from latbench.search.tables import load_predictor
    from latbench.supernet.search import search_supernet

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ev = SupernetEvaluator.from_checkpoint(checkpoint)
    load = time.perf_counter() - t0
    pred = load_predictor(table, ev.space)
    lo, hi = pred.predict(ev.space.smallest()), pred.predict(ev.space.largest())
    budgets = budgets or [round(lo + 0.25 * (hi - lo), 4), round(lo + 0.6 * (hi - lo), 4)]
    print(f"## search wall time with the supernet evaluator (evolution 24 x 8; loading {load:.1f} s)")
    for b in budgets:
        before = ev.evaluated
        t0 = time.perf_counter()
        res = search_supernet(ev, table, {"latency": b})
        dt = time.perf_counter() - t0
        n = ev.evaluated - before
        print(f"  budget {b:.4f} ms: {dt:6.1f} s, {n} subnets evaluated ({dt / max(1, n) * 1e3:.0f} ms each, "
              f"calib_bn + val), accuracy {res.accuracy:.4f} at {res.latency_ms['latency']:.4f} ms predicted")


def exported_winners(checkpoints: list[str], space_name: str, device: str, work: str, threads: int) -> None:
    """Each supernet's winners under two budgets (25% and 60% of the way from the table's smallest
    to largest subnet; the table profiled and calibrated on `device` here), exported (tflite:
    latbench's own builder with the trained weights) and timed with the plain yardstick: within
    +10% of the budget is the goal."""
    import json
    import subprocess

    from device_agents import get_agent
    from latbench.predict import Predictor
    from latbench.spaces import get_space
    from latbench.yardstick import YardstickSettings, measure

    table = os.path.join(work, f"{space_name}-{device}.db")
    for cmd in (["profile", "--device", device, "--space", space_name, "--out", table, "--threads", "1"],
                ["calibrate", "--table", table, "--space", space_name, "-n", "12"]):
        subprocess.run(["latbench", *cmd], check=True, capture_output=True)
    space = get_space(space_name)
    pred = Predictor.from_table(table, space)
    lo, hi = pred.predict(space.smallest()), pred.predict(space.largest())
    budgets = [round(lo + 0.25 * (hi - lo), 4), round(lo + 0.6 * (hi - lo), 4)]
    fmt = {"tflite": "tflite", "ort": "onnx"}[device]
    agent = get_agent(device, threads=1)
    for ck in checkpoints:
        tag = os.path.splitext(os.path.basename(ck))[0]
        out = os.path.join(work, f"{tag}-best.json")
        args = ["supernet", "search", "--checkpoint", ck, "--table", table, "--out", out, "--json"]
        for b in budgets:
            args += ["--budget-ms", str(b)]
        found = json.loads(subprocess.run(["latbench", *args], check=True, capture_output=True, text=True).stdout)
        paths = []
        for b in budgets:
            model = os.path.join(work, f"{tag}-{b:g}ms.{fmt}")
            subprocess.run(["latbench", "supernet", "export", "--checkpoint", ck, "--config",
                            os.path.join(work, f"{tag}-best-{b:g}ms.json"), "--format", fmt, "-o", model],
                           check=True, capture_output=True)
            paths.append(model)
        readings = measure(len(paths), lambda i: agent.plain_model(paths[i]), YardstickSettings())
        print(f"## {tag}: winners under {budgets} ms ({device} table, calibrated on 12 subnets), exported as .{fmt} "
              f"and timed with the plain yardstick (3 passes, >= 50 runs and 0.5 s each, median)")
        for b, res, r in zip(budgets, found["results"], readings):
            v = r.value("median")
            print(f"  budget {b:.4f} ms: predicted {res['latency_ms']:.4f}, measured {v:.4f} ms ({v / b - 1:+.1%} of the "
                  f"budget; goal <= +10%: {'met' if v <= 1.1 * b else 'not met'}), accuracy {res['accuracy']:.4f}, "
                  f"pass spread {r.spread('median'):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("steps", "scratch", "search", "winners"), default=None)
    ap.add_argument("--device", default="tflite", choices=("tflite", "ort"), help="winners: the table's device")
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LATBENCH_THREADS", "1")))
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained supernet (repeat to compare "
                    "several against one scratch run; default: train bignas on digits here)")
    ap.add_argument("--scratch-cache", help="JSON file keeping the scratch accuracies between runs")
    ap.add_argument("--table", help="an ORT latency table of the space (default: profile one here)")
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=6, help="epochs of the supernet and of each scratch subnet")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--budget-ms", type=float, action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="latbench-sn-")
    if a.only in (None, "steps"):
        step_times(a.space, a.batch, a.steps, a.threads)
    cks = list(a.checkpoint)
    if a.only in (None, "scratch", "search") and not cks:
        from latbench.supernet.train import TrainSettings, train_supernet

        ck = os.path.join(work, "bignas.pt")
        cks = [ck]
        t0 = time.perf_counter()
        r = train_supernet(TrainSettings(space=a.space, strategy="bignas", epochs=a.epochs, batch_size=a.batch,
                                         lr=a.lr, threads=a.threads, eval_every=0, out=ck))
        print(f"## trained {ck}: bignas {a.epochs} epochs in {time.perf_counter() - t0:.0f} s, "
              f"test largest {r.test['max']:.4f} smallest {r.test['min']:.4f}")
    if a.only in (None, "scratch"):
        scratch_vs_supernet(cks, a.subnets, a.epochs, a.batch, a.lr, a.seed, a.threads, a.scratch_cache)
    if a.only == "winners":
        exported_winners(cks, a.space, a.device, work, a.threads)
    if a.only in (None, "search"):
        table = a.table
        if not table:
            import subprocess

            table = os.path.join(work, "ort.db")
            subprocess.run(["latbench", "profile", "--device", "ort", "--space", a.space, "--out", table],
                           check=True, capture_output=True)
        search_time(cks[0], table, a.budget_ms, a.threads)


if __name__ == "__main__":
    main()
