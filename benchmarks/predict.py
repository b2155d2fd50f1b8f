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

from latbench import ops as O
from latbench.predict import Predictor
from latbench.spaces import get_space


def ofa_style_latency(lut: dict, cfg: dict, sp) -> float:
    """OFA's MBv3LatencyTable.predict_network_latency_given_spec, as it is written: keys built
    per block from the spec, one dict lookup each."""
    def q(l_type, inp, out, **kw):
        key = "-".join([l_type, "input:" + "x".join(map(str, inp)), "output:" + "x".join(map(str, out))]
                       + [f"{k}:{v}" for k, v in kw.items()])
        return lut[key]

    r = cfg["r"][0]
    fsize = (r + 1) // 2
    first, fb = sp.stem_width, sp.first_block_width
    total = q("Conv", [r, r, 3], [fsize, fsize, first])
    total += q("expanded_conv", [fsize, fsize, first], [fsize, fsize, fb], expand=first, kernel=3,
               stride=1, idskip=int(first == fb), se=0, hs=0)
    in_c = fb
    strides, se, hs = [2, 2, 2, 1, 2], [0, 1, 0, 1, 1], [0, 0, 1, 1, 1]
    for s in range(5):
        for j in range(cfg["d"][s]):
            i = s * 4 + j
            stride = strides[s] if j == 0 else 1
            out_fz = int((fsize - 1) / stride + 1)
            out_c = sp.stage_widths[s]
            mid = O.make_divisible(round(in_c * cfg["e"][i]), 8)
            total += q("expanded_conv", [fsize, fsize, in_c], [out_fz, out_fz, out_c], expand=mid,
                       kernel=cfg["ks"][i], stride=stride, idskip=int(stride == 1 and in_c == out_c),
                       se=se[s], hs=hs[s])
            fsize, in_c = out_fz, out_c
    total += q("Conv_1", [fsize, fsize, in_c], [fsize, fsize, sp.final_expand_width])
    total += q("AvgPool2D", [fsize, fsize, sp.final_expand_width], [1, 1, sp.final_expand_width])
    total += q("Conv_2", [1, 1, sp.final_expand_width], [1, 1, sp.last_channel])
    total += q("Logits", [1, 1, sp.last_channel], [sp.n_classes])
    return total


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
    base_s = best_of(lambda: [ofa_style_latency(lut, d, sp) for d in base], 3)
    base_rate = len(base) / base_s
    # the two ways agree
    check = np.array([ofa_style_latency(lut, d, sp) for d in base[:200]])
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
