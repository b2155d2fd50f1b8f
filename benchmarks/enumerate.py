#!/usr/bin/env python
"""Enumeration speed: every built-in space at all its resolutions, op and block granularity.

Prints best-of-N seconds and ops per second per row, flags the goal (ofa-mbv3-w12 over all 25
resolutions in < 1 s), and times the naive baseline in the same run: decode N random subnets and
collect their unique ops (which also never reaches full coverage).

    python benchmarks/enumerate.py [--repeats 3] [--naive-subnets 300] [--space NAME ...] [--check]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from latbench.enumerate import enumerate_ops  # noqa: E402
from latbench.spaces import get_space, list_spaces  # noqa: E402

GOAL_SPACE, GOAL_SECONDS = "ofa-mbv3-w12", 1.0


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """Smallest wall and CPU time of `repeats` calls, and the last result (CPU time shows the
    work itself when other processes share the cores)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def naive(space, n: int, seed: int = 0) -> tuple[float, set]:
    """The baseline: decode n random subnets at op granularity and keep the unique keys."""
    t0 = time.perf_counter()
    seen: set = set()
    for cfg in space.sample(seed, n):
        seen.update(op.key for op in space.decode(cfg, "op"))
    return time.perf_counter() - t0, seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="take the best of this many runs")
    ap.add_argument("--naive-subnets", type=int, default=300, help="subnets the naive baseline decodes (0: skip)")
    ap.add_argument("--space", action="append", help="only these spaces (default: all registered)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = ap.parse_args()

    names = args.space or list_spaces()
    print(f"loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus; best of {args.repeats}")
    print(f"{'space':<15} {'gran':<5} {'res':>4} {'ops':>6} {'best s':>8} {'cpu s':>7} {'ops/s':>9}  goal")
    missed = False
    op_times: dict[str, tuple[float, list]] = {}
    for name in names:
        space = get_space(name)
        for g in ("op", "block"):
            secs, cpu, ops = best_of(lambda: enumerate_ops(space, None, g), args.repeats)
            flag = ""
            if name == GOAL_SPACE and len(space.resolutions) == 25:
                ok = secs < GOAL_SECONDS
                missed |= not ok
                flag = f"{'ok' if ok else 'MISSED'} (< {GOAL_SECONDS:g} s, 25 resolutions)"
            print(f"{name:<15} {g:<5} {len(space.resolutions):>4} {len(ops):>6} {secs:>8.3f} {cpu:>7.3f} "
                  f"{len(ops) / secs:>9.0f}  {flag}")
            if g == "op":
                op_times[name] = (secs, ops)

    if args.naive_subnets > 0:
        n = args.naive_subnets
        print(f"\nnaive baseline: decode {n} random subnets (seed 0) at op granularity, keep unique keys")
        print(f"{'space':<15} {'naive s':>8} {'found':>6} {'coverage':>9} {'naive/enumerate time':>21}")
        for name in names:
            secs, ops = op_times[name]
            nsecs, seen = naive(get_space(name), n)
            cover = len(seen & {o.key for o in ops}) / len(ops)
            print(f"{name:<15} {nsecs:>8.3f} {len(seen):>6} {cover:>8.1%} {nsecs / secs:>20.1f}x")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
