"""Profiling benchmarks: repeatability of a table across two processes, and throughput per agent.

Repeatability: the same N ops of ofa-mbv3-w10 at 160 profiled twice, in two separate `latbench
profile` processes, with ort on 1 thread; prints the median and 90th percentile of
|a - b| / mean(a, b). Goal: median <= 3%, p90 <= 8%.
Throughput: ops profiled per minute per agent and the share of wall time spent outside the timed
loops (model building, table I/O). Goal: overhead <= 10%.

    python benchmarks/profiling.py[--ops 50] [--agents cpu ort tflite] [--granularity block]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def profile(out: Path, device: str, n: int, granularity: str, space: str, res: int) -> dict:
    """One real `latbench profile` process; returns its JSON summary."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "profile", "--device", device, "--space", space,
           "--resolution", str(res), "--granularity", granularity, "--max-ops", str(n),
           "--out", str(out), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode not in (0, 3):
        raise SystemExit(f"profile failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout)


def estimates(path: Path) -> dict[str, float]:
    from latbench.store import LatencyTable

    with LatencyTable.open(path, create=False) as t:
        return t.estimates()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=50)
    ap.add_argument("--agents", nargs="+", default=["cpu", "ort", "tflite"])
    ap.add_argument("--granularity", default="block")
    ap.add_argument("--space", default="ofa-mbv3-w10")
    ap.add_argument("--resolution", type=int, default=160)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"repeatability: {a.ops} {a.granularity} ops of {a.space} at {a.resolution}, ort 1 thread, two processes")
        s1 = profile(tmp / "a.sqlite", "ort", a.ops, a.granularity, a.space, a.resolution)
        s2 = profile(tmp / "b.sqlite", "ort", a.ops, a.granularity, a.space, a.resolution)
        e1, e2 = estimates(tmp / "a.sqlite"), estimates(tmp / "b.sqlite")
        keys = sorted(set(e1) & set(e2))
        x = np.array([e1[k] for k in keys])
        y = np.array([e2[k] for k in keys])
        rel = np.abs(x - y) / ((x + y) / 2)
        med, p90 = float(np.median(rel)), float(np.percentile(rel, 90))
        print(f"  ops compared: {len(keys)}; |diff|/mean: median {100 * med:.2f}% (goal <= 3%), "
              f"p90 {100 * p90:.2f}% (goal <= 8%), max {100 * rel.max():.2f}%")
        print(f"  {'ok' if med <= 0.03 and p90 <= 0.08 else 'MISSED'}")
        print(f"throughput: {a.ops} {a.granularity} ops per agent (default timing settings)")
        print(f"  {'agent':8} {'ops':>5} {'wall s':>8} {'ops/min':>9} {'outside timed loop':>19}")
        for agent, s in [("ort", s1)] + [(ag, None) for ag in a.agents if ag != "ort"]:
            if s is None:
                s = profile(tmp / f"{agent}.sqlite", agent, a.ops, a.granularity, a.space, a.resolution)
            n = s["measured"] + s["failed"]
            print(f"  {agent:8} {n:5d} {s['wall_s']:8.2f} {60 * n / s['wall_s']:9.1f} "
                  f"{100 * s['overhead']:18.1f}%  {'ok' if s['overhead'] <= 0.10 else 'MISSED'} (goal <= 10%)")


if __name__ == "__main__":
    main()
