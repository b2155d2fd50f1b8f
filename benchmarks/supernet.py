"""Supernet figures: time per training step (largest, smallest, sandwich), accuracy of sampled
subnets taken from a trained supernet (after calib_bn) against the same architectures trained from
scratch for the same epochs, and search wall time with the supernet evaluator.

    python benchmarks/supernet.py                       # all three on tiny / digits
    python benchmarks/supernet.py --only steps          # just the step times
    python benchmarks/supernet.py --checkpoint ck.pt --table ort.db --subnets 20 --epochs 6
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


def scratch_vs_supernet(checkpoint: str, n: int, epochs: int, batch: int, lr: float, seed: int, threads: int) -> None:
    import torch

    from latbench.supernet.checkpoint import supernet_from_checkpoint
    from latbench.supernet.data import batches, load_data, resize, shift
    from latbench.supernet.evaluator import evaluate_config
    from latbench.supernet.model import SuperNet

    torch.set_num_threads(threads)
    F = torch.nn.functional
    net, meta = supernet_from_checkpoint(checkpoint)
    net = net.to(memory_format=torch.channels_last)
    space = net.space
    data = load_data(meta["data"], meta["channels"], meta["data_resolution"], meta.get("data_seed", 0))
    configs = space.sample(np.random.default_rng(seed), n)
    print(f"## {n} sampled subnets: from the supernet ({meta['strategy']}, {meta['epochs']} epochs, calib_bn) "
          f"vs trained from scratch ({epochs} epochs, batch {batch}, lr {lr}); test accuracy")
    rows = []
    t_all = time.perf_counter()
    for i, cfg in enumerate(configs):
        a_super = evaluate_config(net, cfg, data, "test")
        torch.manual_seed(seed + i)
        alone = SuperNet(space).to(memory_format=torch.channels_last)
        alone.set_active(cfg)
        opt = torch.optim.SGD(alone.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
        steps = -(-len(data.train[1]) // batch)
        total, k = epochs * steps, 0
        for e in range(epochs):
            rng = np.random.default_rng([seed, e])
            for xb, yb in batches(*data.train, batch, rng):
                for g in opt.param_groups:
                    g["lr"] = 0.5 * lr * (1 + np.cos(np.pi * k / total))
                opt.zero_grad()
                F.cross_entropy(alone(resize(shift(xb, rng, 2), alone.resolution)), yb, label_smoothing=0.1).backward()
                opt.step()
                k += 1
        a_scratch = evaluate_config(alone, cfg, data, "test")
        rows.append((a_super, a_scratch))
        mflops = sum(b.flops for b in space.blocks(cfg)) / 1e6
        print(f"  subnet {i:2d}  {mflops:6.1f} MFLOPs  supernet {a_super:.4f}  scratch {a_scratch:.4f}", flush=True)
    sup, scr = np.array(rows).T
    print(f"  mean: supernet {sup.mean():.4f}  scratch {scr.mean():.4f}  (difference {sup.mean() - scr.mean():+.4f}; "
          f"supernet >= scratch for {int((sup >= scr).sum())}/{n}); {time.perf_counter() - t_all:.0f} s")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("steps", "scratch", "search"), default=None)
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LATBENCH_THREADS", "1")))
    ap.add_argument("--checkpoint", help="a trained supernet (default: train bignas on digits here)")
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
    ck = a.checkpoint
    if a.only in (None, "scratch", "search") and not ck:
        from latbench.supernet.train import TrainSettings, train_supernet

        ck = os.path.join(work, "bignas.pt")
        t0 = time.perf_counter()
        r = train_supernet(TrainSettings(space=a.space, strategy="bignas", epochs=a.epochs, batch_size=a.batch,
                                         lr=a.lr, threads=a.threads, eval_every=0, out=ck))
        print(f"## trained {ck}: bignas {a.epochs} epochs in {time.perf_counter() - t0:.0f} s, "
              f"test largest {r.test['max']:.4f} smallest {r.test['min']:.4f}")
    if a.only in (None, "scratch"):
        scratch_vs_supernet(ck, a.subnets, a.epochs, a.batch, a.lr, a.seed, a.threads)
    if a.only in (None, "search"):
        table = a.table
        if not table:
            import subprocess

            table = os.path.join(work, "ort.db")
            subprocess.run(["latbench", "profile", "--device", "ort", "--space", a.space, "--out", table],
                           check=True, capture_output=True)
        search_time(ck, table, a.budget_ms, a.threads)


if __name__ == "__main__":
    main()
