"""Transfer benchmark: tables fitted from end-to-end latencies of real devices, and a measured table
refined from a few end-to-end measurements on this host.

Part 1, real devices (HELP / HW-NAS-Bench data in ../shared/data/help: NAS-Bench-201's 15,625 cells
and 5,000 FBNet networks measured end to end on 13 devices). Leave one device out: every other
device's table is fitted from all its networks (latbench.fit); the left-out device gets k of its
networks (k = 10, 20, 50, 100; --reps random draws each) and its table is
  fit       fitted from those k alone (shrunk towards a FLOPs-and-bytes model of them),
  transfer  the other devices' tables combined and corrected at key level (latbench.transfer),
  flops     latency linear in FLOPs, fitted on the k,
each scored on all its other networks: Spearman, Kendall, within +-5% and +-10%. HELP's published
figures are printed beside them; HELP's six test devices are not in the data (see its README), so
the device sets differ. "Others" leaves out the device's own hardware at other batch sizes too
(e.g. 1080ti_32 and 1080ti_256 for 1080ti_1) unless --same-hardware.

Part 2, refine on this host (--refine; ONNX Runtime, 1 thread; --refine-device tflite for LiteRT):
a block table of the space
profiled by the real `latbench profile`, 110 random subnets measured end to end with the plain
yardstick (latbench.yardstick), the table refined from 10 of them (`latbench fit --prior OWN`'s
machinery) and scored on the other 100 beside the raw table and its scale+offset calibration from
the same 10, with the yardstick's noise ceiling.

    python benchmarks/transfer.py                      # part 1, both spaces, k = 10 20 50 100
    python benchmarks/transfer.py --space nb201 --k 10 --reps 3
    python benchmarks/transfer.py --refine             # part 1 and part 2
    python benchmarks/transfer.py --refine-only --workdir /tmp/tr
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "help"
FILES = {"nb201": "nasbench201.csv", "fbnet": "fbnet.csv"}
HELP_SPEARMAN = ("HELP (meta-learned, 10 samples) on its six test devices: titan_rtx_256 0.987, gold_6226 0.989, "
                 "fpga 0.985, pixel2 0.802, raspi4 0.890, eyeriss 0.940, mean 0.932; layer-wise table 0.667 (GPU) / "
                 "0.866 (CPU); BRP-NAS (900 samples) mean 0.789; FLOPs mean 0.787")
METRICS = ("spearman", "kendall", "within5", "within10")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def hardware(device: str) -> str:
    """The hardware of a device column (its batch size after the last underscore dropped)."""
    head, _, tail = device.rpartition("_")
    return head if head and tail.isdigit() else device


def load_space_data(space_name: str, data: Path):
    """(space, configs, {device: ms}, key counts of every network) for one HELP file."""
    import pandas as pd

    from latbench.fit import key_counts
    from latbench.spaces import get_space

    sp = get_space(space_name)
    df = pd.read_csv(data / FILES[space_name], dtype={"arch": str})
    t0 = time.perf_counter()
    configs = np.array([sp.index(a) for a in df["arch"]], dtype=np.int64)
    kc = key_counts(sp, configs)
    log(f"[{space_name}] {len(configs)} networks, {len(kc.keys)} block keys, counted in {time.perf_counter() - t0:.1f} s")
    devices = [c for c in df.columns if c not in ("index", "arch")]
    return sp, configs, {d: df[d].to_numpy(dtype=np.float64) for d in devices}, kc


def full_priors(kc, lat: dict) -> dict:
    """Each device's table fitted from all its networks, as a prior for the others, and its in-sample
    figures: how far a sum of these keys' costs describes that device at all."""
    from latbench.fit import Prior, fit_costs

    out, ceiling = {}, {}
    for d, y in lat.items():
        r = fit_costs(kc, y, lam=1e-3)
        out[d] = Prior(d, r.cost, r.intercept)
        ceiling[d] = r.in_sample
        log(f"  full fit {d}: in-sample within 10% {r.in_sample['within10']:.2f}, Spearman {r.in_sample['spearman']:.3f}")
    return out, ceiling


def flops_predict(flops_k, y_k, flops_all):
    from latbench.validate.metrics import fit_flops

    a, b = fit_flops(flops_k, y_k)
    return a * flops_all / 1e6 + b


def score(pred, y) -> dict:
    """The four figures; a constant prediction ranks nothing, so its rank correlations count 0."""
    from latbench.validate.metrics import error_metrics

    m = error_metrics(pred, y)
    return {k: (0.0 if np.isnan(getattr(m, k)) else getattr(m, k)) for k in METRICS}


def run_space(space_name: str, a) -> dict:
    """Leave-one-device-out over one space's devices at every k."""
    from latbench.fit import KeyCounts, fit_costs
    from latbench.transfer import transfer_fit

    sp, configs, lat, kc = load_space_data(space_name, Path(a.data))
    flops = kc.counts @ np.array([o.flops for o in kc.ops], dtype=np.float64)
    priors, ceiling = full_priors(kc, lat)
    results: dict = {}
    for k in a.k:
        rows = {}
        for d, y in lat.items():
            others = [p for o, p in priors.items()
                      if o != d and (a.same_hardware or hardware(o) != hardware(d))]
            acc = {m: [] for m in ("fit", "transfer", "flops")}
            rng = np.random.default_rng([a.seed, k, sorted(lat).index(d)])
            for _ in range(a.reps):
                idx = rng.choice(len(y), k, replace=False)
                test = np.setdiff1d(np.arange(len(y)), idx)
                sub = KeyCounts(kc.keys, kc.ops, kc.counts[idx])
                fit = fit_costs(sub, y[idx], seed=a.seed)
                tr = transfer_fit(sub, y[idx], others, seed=a.seed)
                A = kc.counts[test]
                acc["fit"].append(score(A @ fit.cost + fit.intercept, y[test]))
                acc["transfer"].append(score(A @ tr.cost + tr.intercept, y[test]))
                acc["flops"].append(score(flops_predict(flops[idx], y[idx], flops[test]), y[test]))
            rows[d] = {m: {s: float(np.mean([r[s] for r in v])) for s in METRICS} for m, v in acc.items()}
            log(f"  [{space_name} k={k}] {d}: transfer Spearman {rows[d]['transfer']['spearman']:.3f}, "
                f"within 10% {rows[d]['transfer']['within10']:.2f}")
        results[k] = rows
        print_table(space_name, k, rows, ceiling, a)
    results["full_fit_in_sample"] = ceiling
    return results


def print_table(space_name: str, k: int, rows: dict, ceiling: dict, a) -> None:
    print(f"\n== {space_name}, k = {k} measured networks of the left-out device, {a.reps} draws, scored on "
          f"all its other networks ({'same hardware kept' if a.same_hardware else 'own hardware left out'})")
    methods = ("fit", "transfer", "flops")
    print(f"{'device':15s}" + "".join(f" | {m:^25s}" for m in methods) + " | full fit")
    print(f"{'':15s}" + " | rho   tau   +-5%  +-10%" * 3 + " | rho   +-10%")
    means = {m: {s: [] for s in METRICS} for m in methods}
    for d, r in rows.items():
        line = f"{d:15s}"
        for m in methods:
            v = r[m]
            line += f" | {v['spearman']:.3f} {v['kendall']:.3f} {v['within5']:.2f}  {v['within10']:.2f} "
            for s in METRICS:
                means[m][s].append(v[s])
        print(line + f"| {ceiling[d]['spearman']:.3f} {ceiling[d]['within10']:.2f}")
    line = f"{'mean':15s}"
    for m in methods:
        v = {s: float(np.mean(means[m][s])) for s in METRICS}
        line += f" | {v['spearman']:.3f} {v['kendall']:.3f} {v['within5']:.2f}  {v['within10']:.2f} "
    full = [ceiling[d] for d in rows]
    print(line + f"| {np.mean([c['spearman'] for c in full]):.3f} {np.mean([c['within10'] for c in full]):.2f}")
    print("  full fit: the device's own table fitted on all its networks, scored in sample: how far a sum "
          "of these keys' costs describes the device at all (noise and what its runtime does beyond the sum)")
    print(f"  beside it: {HELP_SPEARMAN}")
    sys.stdout.flush()


# ---------------------------------------------------------------------- part 2: refine on this host
def refine_on_host(a) -> dict:
    """Profile a table (ort by default), measure 110 subnets, refine from 10, score on 100."""
    from latbench.cli.validate import open_agent
    from latbench.fit_table import fit_table, read_networks
    from latbench.predict import Predictor, fit_calibration
    from latbench.spaces import get_space
    from latbench.store import LatencyTable
    from latbench.validate.endtoend import measure_subnets
    from latbench.validate.metrics import ceiling_of, error_metrics, measured_of
    from latbench.validate.subnets import sample_subnets
    from latbench.yardstick import YardstickSettings

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dev = a.refine_device
    path = work / f"{a.refine_space}-{dev}-1t.sqlite"
    cmd = [sys.executable, str(ROOT / "cli.py"), "profile", "--device", dev, "--space", a.refine_space,
           "--granularity", "block", "--threads", "1", "--out", str(path), "--json"]
    for r in a.refine_resolutions:
        cmd += ["--resolution", str(r)]
    t0 = time.perf_counter()
    log(f"[refine] profile {path}")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"profile failed ({done.returncode}); see the error above")
    t_prof = time.perf_counter() - t0
    sp = get_space(a.refine_space)
    configs = sample_subnets(sp, a.refine_k + a.refine_test, a.seed, a.refine_resolutions or None)
    measured_csv = work / f"refine-measured-{dev}.csv"  # every subnet: config JSON, measured_ms, the yardstick's passes
    with LatencyTable.open(path, readonly=True) as t:
        pred = Predictor.from_table(t, sp, use_calibration=False)
        raw = pred.predict_batch(configs)
        if a.reuse_measured and measured_csv.is_file():
            log(f"[refine] reusing {measured_csv}")
            nets = read_networks(str(measured_csv), sp)
            assert (nets.configs == configs).all(), "the measured subnets are of another draw: drop --reuse-measured"
            meas, ceiling = nets.ms, None
        else:
            agent = open_agent(t, dev, None, None, None)
            try:
                log(f"[refine] measuring {len(configs)} subnets end to end with the plain yardstick")
                subnets = measure_subnets(agent, sp, configs, pred, YardstickSettings(seed=a.seed), None, "subnets")
            finally:
                agent.close()
            meas, ceiling = measured_of(subnets), ceiling_of(subnets[a.refine_k:]).to_dict()
            with open(measured_csv, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["config", "measured_ms"])
                for r in subnets:
                    w.writerow([json.dumps(r.config, separators=(",", ":")), repr(r.measured_ms)])
            (work / f"refine-ceiling-{dev}.json").write_text(json.dumps(ceiling))
    if ceiling is None and (work / f"refine-ceiling-{dev}.json").is_file():
        ceiling = json.loads((work / f"refine-ceiling-{dev}.json").read_text())
    k = a.refine_k
    train_csv = work / f"refine-subnets-{dev}.csv"  # the k subnets, as `latbench validate --csv` writes them
    with open(measured_csv) as src, open(train_csv, "w") as dst:
        dst.writelines(list(src)[:k + 1])
    refined_path = work / f"{path.stem}.refined.sqlite"
    refined_path.unlink(missing_ok=True)
    # exactly `latbench fit --space S --measured refine-subnets.csv --prior TABLE --refine -o REFINED`
    refined = fit_table(str(refined_path), sp, read_networks(str(train_csv), sp), [str(path)], refine=True,
                        seed=a.seed)
    p_ref = Predictor.from_table(str(refined_path), sp).predict_batch(configs[k:])
    cal = fit_calibration(raw[:k], meas[:k], sp.name, pred.granularity)
    rows = {"table": error_metrics(raw[k:], meas[k:]), "scale+offset (10)": error_metrics(cal.apply(raw[k:]), meas[k:]),
            f"refined at key level ({k})": error_metrics(p_ref, meas[k:])}
    print(f"\n== refine: {a.refine_space} at {a.refine_resolutions} on this host; {k} subnets "
          f"to refine, {len(meas) - k} scored; {dev}, 1 thread; profile {t_prof:.0f} s")
    print(f"{'predictor':28s} | +-5%  +-10%  RMSPE  Spearman")
    for name, m in rows.items():
        print(f"{name:28s} | {m.within5:.2f}  {m.within10:.2f}   {m.rmspe:.3f}  {m.spearman:.3f}")
    print(f"  yardstick noise ceiling (one pass against the others' median): {json.dumps(ceiling)}")
    print(f"  refined: prior {refined.prior.name}, shrinkage {refined.lam:g}, CV RMS error {refined.cv_rmspe:.3f}")
    return {name: m.to_dict() for name, m in rows.items()} | {"ceiling": ceiling}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="the HELP data folder (nasbench201.csv, fbnet.csv)")
    ap.add_argument("--space", nargs="+", default=["nb201", "fbnet"], choices=sorted(FILES))
    ap.add_argument("--k", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--reps", type=int, default=5, help="random draws of the k networks per device")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--same-hardware", action="store_true", help="let a device's own hardware at other batch "
                    "sizes be among the other tables (HELP's protocol; default: left out too)")
    ap.add_argument("--refine", action="store_true", help="also part 2 (minutes of profiling and measuring)")
    ap.add_argument("--refine-only", action="store_true")
    ap.add_argument("--refine-space", default="ofa-mbv3-w10")
    ap.add_argument("--refine-device", default="ort", choices=["ort", "tflite", "cpu"])
    ap.add_argument("--refine-resolutions", nargs="*", type=int, default=[160])
    ap.add_argument("--refine-k", type=int, default=10)
    ap.add_argument("--refine-test", type=int, default=100)
    ap.add_argument("--reuse-measured", action="store_true", help="part 2: score the subnets measured by an "
                    "earlier run in --workdir again instead of measuring them")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "latbench-transfer"))
    ap.add_argument("--json", help="write every figure to this JSON file")
    a = ap.parse_args()
    out: dict = {}
    if not a.refine_only:
        if not (Path(a.data) / FILES[a.space[0]]).is_file():
            raise SystemExit(f"no HELP data in {a.data} (give --data)")
        for s in a.space:
            out[s] = run_space(s, a)
    if a.refine or a.refine_only:
        out["refine"] = refine_on_host(a)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
