"""Predictor speed on ofa-mbv3-w12 with a full block table (every block at all 25 resolutions).

Prints `predict_batch: N subnets/s` and `predict: N us/call` (a config dict, OFA's published form)
and, measured in the same run, the baseline: Once-for-All's LatencyTable way, a per-subnet Python
loop that builds each block's key string and looks it up in a dict. Goals: predict_batch >= 1e6
subnets/s, predict <= 20 us/call, batch >= 100x the baseline.

    python benchmarks/predict.py [--n 1000000] [--baseline-n 2000]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from latbench.formats.ofa import ofa_network_latency
from latbench.predict import Predictor
from latbench.spaces import get_space


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--baseline-n", type=int, default=2000)
    ap.add_argument("--calls", type=int, default=20000)
    a = ap.parse_args()

    sp = get_space("ofa-mbv3-w12")
    blocks = sp.enumerate_blocks()
    rng = np.random.default_rng(0)
    lut = {b.key: float(rng.uniform(0.05, 3.0)) for b in blocks}
    t0 = time.perf_counter()
    pred = Predictor(sp, lut, "block", strict=True)
    build_s = time.perf_counter() - t0
    print(f"ofa-mbv3-w12: {len(blocks)} block keys at {len(sp.resolutions)} resolutions; "
          f"predictor built in {build_s:.3f} s (load average {os.getloadavg()[0]:.2f})")

    configs = sp.sample(1, a.n)
    batch_s = best_of(lambda: pred.predict_batch(configs), 3)
    batch_rate = a.n / batch_s
    dicts = [sp.to_published(c) for c in configs[: a.calls]]
    single_s = best_of(lambda: [pred.predict(d) for d in dicts], 3)
    single_us = single_s / len(dicts) * 1e6
    base = dicts[: a.baseline_n]
    base_s = best_of(lambda: [ofa_network_latency(lut, d, sp) for d in base], 3)
    base_rate = len(base) / base_s
    # the two ways agree
    check = np.array([ofa_network_latency(lut, d, sp) for d in base[:200]])
    assert np.allclose(check, pred.predict_batch(configs[:200]), rtol=1e-12), "baseline disagrees"

    print(f"predict_batch: {batch_rate:,.0f} subnets/s ({a.n:,} subnets in {batch_s:.3f} s; goal >= 1,000,000)"
          f"  {'ok' if batch_rate >= 1e6 else 'MISSED'}")
    print(f"predict: {single_us:.1f} us/call (config dict; goal <= 20 us)  {'ok' if single_us <= 20 else 'MISSED'}")
    print(f"baseline (OFA LatencyTable style, per-subnet key strings + dict lookups): {base_rate:,.0f} subnets/s "
          f"= {1e6 / base_rate:.1f} us/subnet")
    print(f"ratio predict_batch / baseline: {batch_rate / base_rate:,.0f}x (goal >= 100x)  "
          f"{'ok' if batch_rate / base_rate >= 100 else 'MISSED'}")
    print(f"ratio predict / baseline: {(1e6 / base_rate) / single_us:.1f}x")


if __name__ == "__main__":
    main()
