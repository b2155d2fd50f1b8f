"""Cost of latbench's pricing inside an outside search loop: `Study.ask()` / `tell()` per trial on
ofa-mbv3-w12 with a full block table (every block at all 25 resolutions), two tables, a latency
budget on each and a FLOPs range, as a user's own evolution or RL loop calls it.

Prints microseconds per ask+tell trial (a seeded draw, and a config the loop passes in), and, in
the same run, the baseline: what the loop would write by hand around the same predictors (draw a
config, `Predictor.predict` per table, FLOPs as a sum over the subnet's blocks, compare with the
budgets, keep a list of trials); the ratio; and `study.trials` (the DataFrame) for all of them.
Goal: ask+tell <= 2x the hand-written loop, so the bookkeeping never dominates a search.

    python benchmarks/study.py [--trials 5000]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import latbench
from latbench.predict import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5000)
    a = ap.parse_args()

    sp = latbench.get_space("ofa-mbv3-w12")
    blocks = sp.enumerate_blocks()
    rng = np.random.default_rng(0)
    preds = {name: Predictor(sp, {b.key: float(rng.uniform(0.05, 3.0)) for b in blocks}, "block", strict=True)
             for name in ("phone", "gpu")}
    probe = sp.sample(1, 2000)
    budgets = {name: float(np.median(p.predict_batch(probe))) for name, p in preds.items()}
    flops_range = (0.0, 1e12)
    print(f"ofa-mbv3-w12, {len(blocks)} block keys, 2 tables, budgets {budgets}; "
          f"load average {os.getloadavg()[0]:.2f}")

    # latbench: a Study asked and told by an outside loop
    t0 = time.perf_counter()
    study = latbench.Study(sp, preds, budgets_ms=budgets, flops_range=flops_range, seed=0)
    study.tell(study.ask(), 0.0)  # the first ask builds the FLOPs/params gathers, once per space
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.trials):
        trial = study.ask()
        study.tell(trial, trial.flops / 1e6)
    draw_us = (time.perf_counter() - t0) / a.trials * 1e6
    configs = sp.sample(2, a.trials)
    t0 = time.perf_counter()
    for c in configs:
        trial = study.ask(c)
        study.tell(trial, trial.flops / 1e6)
    given_us = (time.perf_counter() - t0) / a.trials * 1e6
    t0 = time.perf_counter()
    df = study.trials
    frame_s = time.perf_counter() - t0

    # baseline: the same loop written by hand around the same predictors
    hand: list[dict] = []
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for c in configs:
        cfg = sp.to_published(c)
        lat = {name: p.predict(cfg) for name, p in preds.items()}
        flops = sum(b.flops for b in sp.blocks(c))
        feasible = all(lat[n] <= budgets[n] for n in lat) and flops_range[0] <= flops <= flops_range[1]
        hand.append({"config": cfg, "latency_ms": lat, "flops": flops, "feasible": feasible, "value": flops / 1e6})
    base_us = (time.perf_counter() - t0) / a.trials * 1e6

    # the two agree on every passed-in config
    told = df.iloc[1 + a.trials:]
    assert all(np.isclose(told[f"latency_ms[{n}]"].to_numpy(), [h["latency_ms"][n] for h in hand], rtol=1e-12).all()
               for n in preds), "Study prices disagree with Predictor.predict"
    assert (told["feasible"].to_numpy() == np.array([h["feasible"] for h in hand])).all()

    ratio = given_us / base_us
    print(f"Study built and first trial: {setup_s:.2f} s (once per search)")
    print(f"Study ask+tell, seeded draw: {draw_us:.1f} us/trial")
    print(f"Study ask(config)+tell: {given_us:.1f} us/trial")
    print(f"baseline (hand-written loop: predict per table, FLOPs sum, budget check): {base_us:.1f} us/trial")
    print(f"ratio Study / baseline: {ratio:.2f}x (goal <= 2x)  {'ok' if ratio <= 2 else 'MISSED'}")
    print(f"study.trials: {len(df):,} rows x {df.shape[1]} columns in {frame_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
