"""Search speed on ofa-mbv3-w12 with a full block table (every block at all 25 resolutions) and
the OFA-style MLP accuracy source: evolution with Once-for-All's defaults (population 100, 500
generations, parents 25%, mutants 50%, mutate probability 0.1) under one latency budget.

Prints the wall time (goal <= 2 s) and where it goes (latency predict_batch, the accuracy MLP,
the rest), then, in the same run, the baseline: the same evolution written as Once-for-All writes
it (dict configs, one `predictor.predict(config)` call per sample with unbounded re-draws, one
accuracy-MLP call per subnet), timed over --baseline-generations and scaled to 500; and the ratio.
Also NSGA-II (pymoo) 100 x 100 when pymoo is installed.

    python benchmarks/search.py [--generations 500] [--baseline-generations 20] [--quantile 0.3]
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import time

import numpy as np

from latbench.predict import Predictor
from latbench.search import run_search
from latbench.search.mlp import MLPAccuracy, build_mlp, ofa_features
from latbench.spaces import get_space


class Timed:
    """Wraps a Predictor or an accuracy source and adds up the time spent in it."""

    def __init__(self, inner, method: str):
        self.inner, self.method, self.seconds, self.calls, self.rows = inner, method, 0.0, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, configs, *args, **kw):
        t0 = time.perf_counter()
        out = getattr(self.inner, self.method)(configs, *args, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.rows += len(configs)
        return out

    def predict_batch(self, configs, *args, **kw):
        return self._timed(configs, *args, **kw)


class TimedAccuracy(MLPAccuracy):
    """The MLP source, timing each batch."""

    seconds = 0.0
    calls = 0

    def score(self, configs):
        t0 = time.perf_counter()
        out = super().score(configs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


# ---------------------------------------------------------------------- OFA-style baseline
class PerSubnetAccuracy:
    """Accuracy as OFA's finder calls it in its loop: features built per subnet from the dict,
    one forward per call."""

    def __init__(self, space, net):
        import torch

        self.torch, self.space, self.net = torch, space, net

    def predict_acc(self, samples: list[dict]):
        feats = np.concatenate([ofa_features(self.space.index(s)[None, :]) for s in samples])
        with self.torch.inference_mode():
            return self.net(self.torch.from_numpy(feats))


def ofa_style_evolution(space, predictor, accuracy, budget: float, generations: int, seed: int = 0,
                        population: int = 100, parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
                        mutate_prob: float = 0.1, resolution_mutate_prob: float = 0.5) -> float:
    """Once-for-All's evolution loop written the way it is there: Python per subnet, dict
    configs, re-draw until feasible, one predict call per sample, one accuracy call per subnet."""
    rnd = random.Random(seed)
    ks, ex, dp, rs = (3, 5, 7), (3, 4, 6), (2, 3, 4), list(range(128, 225, 4))

    def random_sample():
        return {"ks": rnd.choices(ks, k=20), "e": rnd.choices(ex, k=20), "d": rnd.choices(dp, k=5),
                "r": [rnd.choice(rs)]}

    def valid(sample):
        return predictor.predict(sample) <= budget

    def random_valid_sample():
        while True:
            s = random_sample()
            if valid(s):
                return s

    def mutate(sample):
        while True:
            new = copy.deepcopy(sample)
            if rnd.random() < resolution_mutate_prob:
                new["r"] = [rnd.choice(rs)]
            for i in range(20):
                if rnd.random() < mutate_prob:
                    new["ks"][i] = rnd.choice(ks)
                    new["e"][i] = rnd.choice(ex)
            for i in range(5):
                if rnd.random() < mutate_prob:
                    new["d"][i] = rnd.choice(dp)
            if valid(new):
                return new

    def crossover(a, b):
        while True:
            new = copy.deepcopy(a)
            for key in new:
                for i in range(len(new[key])):
                    new[key][i] = rnd.choice([a[key][i], b[key][i]])
            if valid(new):
                return new

    n_mut = int(round(mutation_ratio * population))
    n_par = int(round(parent_ratio * population))
    pop = []
    for _ in range(population):
        s = random_valid_sample()
        pop.append((float(accuracy.predict_acc([s])[0]), s))
    best = -1e9
    for _ in range(generations):
        parents = sorted(pop, key=lambda x: x[0], reverse=True)[:n_par]
        best = max(best, parents[0][0])
        pop = list(parents)
        for _ in range(n_mut):
            child = mutate(parents[rnd.randrange(n_par)][1])
            pop.append((float(accuracy.predict_acc([child])[0]), child))
        for _ in range(population - n_mut):
            child = crossover(parents[rnd.randrange(n_par)][1], parents[rnd.randrange(n_par)][1])
            pop.append((float(accuracy.predict_acc([child])[0]), child))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--baseline-generations", type=int, default=20)
    ap.add_argument("--quantile", type=float, default=0.3,
                    help="budget = this quantile of random subnets' latency")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch

    sp = get_space("ofa-mbv3-w12")
    blocks = sp.enumerate_blocks()
    rng = np.random.default_rng(0)
    lut = {b.key: (b.flops / 1e8 + 0.02) * float(rng.uniform(0.8, 1.2)) for b in blocks}
    pred = Predictor(sp, lut, "block", strict=True)
    budget = float(np.quantile(pred.predict_batch(sp.sample(1, 100_000)), a.quantile))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_mlp().eval()
    print(f"ofa-mbv3-w12: {len(blocks)} block keys at {len(sp.resolutions)} resolutions; budget {budget:.3f} ms "
          f"(the {a.quantile:.0%} quantile of random subnets); torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")

    # warm-up: the FLOPs/params cost maps and torch's first call, built once per process
    run_search(sp, {"cpu": pred}, {"cpu": budget}, MLPAccuracy(sp, net), "evolution", seed=a.seed, generations=2)

    timed_pred = Timed(pred, "predict_batch")
    acc = TimedAccuracy(sp, net)
    t0, c0 = time.perf_counter(), time.process_time()
    r = run_search(sp, {"cpu": timed_pred}, {"cpu": budget}, acc, "evolution", seed=a.seed,
                   generations=a.generations, population=a.population)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rest = wall - timed_pred.seconds - acc.seconds
    print(f"latbench evolution {a.population} x {a.generations}: {wall:.3f} s wall, {cpu:.3f} s CPU of this "
          f"process (goal <= 2 s; load average {os.getloadavg()[0]:.2f}); best accuracy "
          f"{r.accuracy:.4f} at {r.latency_ms['cpu']:.3f} ms; {r.evaluations} subnets scored, {r.priced} priced")
    print(f"  latency predict_batch: {timed_pred.seconds:.3f} s ({timed_pred.calls} calls, {timed_pred.rows} subnets)")
    print(f"  accuracy MLP:          {acc.seconds:.3f} s ({acc.calls} batches, 1 torch thread, inference_mode)")
    print(f"  the rest (draws, bookkeeping): {rest:.3f} s")

    base_acc = PerSubnetAccuracy(sp, net)
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    ofa_style_evolution(sp, pred, base_acc, budget, a.baseline_generations, seed=a.seed, population=a.population)
    base, base_cpu = time.perf_counter() - t0, time.process_time() - c0
    scaled = base / max(a.baseline_generations, 1) * a.generations
    print(f"baseline, OFA-style per-subnet loop (predict(config) per sample, one MLP call per subnet): "
          f"{base:.2f} s wall ({base_cpu:.2f} s CPU) for {a.baseline_generations} generations -> "
          f"{scaled:.1f} s for {a.generations}")
    scaled_cpu = base_cpu / max(a.baseline_generations, 1) * a.generations
    print(f"ratio: latbench is {scaled / wall:.0f}x faster (wall), {scaled_cpu / cpu:.0f}x (CPU)")

    try:
        import pymoo  # noqa: F401
    except ImportError:
        print("nsga2: pymoo not installed (pip install 'latbench[search]')")
        return
    run_search(sp, {"cpu": pred}, {"cpu": budget}, acc, "nsga2", seed=a.seed, generations=1, population=10)
    t0 = time.perf_counter()
    r = run_search(sp, {"cpu": pred}, {"cpu": budget}, acc, "nsga2", seed=a.seed, generations=100, population=100)
    print(f"nsga2 (pymoo) 100 x 100: {time.perf_counter() - t0:.3f} s; front of {len(r.front)} subnets, "
          f"best accuracy {r.accuracy:.4f}")


if __name__ == "__main__":
    main()
