"""Tables fitted from end-to-end latencies and transferred between devices (latbench.fit,
latbench.transfer, latbench.fit_table, `latbench fit`): numbers against numpy references and
hand-computed sums, the written table priced by Predictor, and one-line errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latbench.device import DeviceProfile
from latbench.errors import ConfigError, UsageError
from latbench.fit import KeyCounts, Prior, fit_costs, key_counts
from latbench.fit_table import fit_table, read_networks
from latbench.measure import Measurement
from latbench.predict import Predictor, fit_calibration
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import CompanionEntry, RunSettings
from latbench.transfer import combine_priors, transfer_fit

from cli_result import run_cli

SPACE = "tiny"


@pytest.fixture(scope="module")
def space():
    return get_space(SPACE)


def _truth(kc: KeyCounts, seed: int, jitter: float = 0.3) -> np.ndarray:
    """A device's per-key costs: FLOPs and bytes priced, each key off by up to +-jitter."""
    rng = np.random.default_rng(seed)
    base = np.array([5e-8 * o.flops + 1e-6 * o.bytes + 0.01 for o in kc.ops])
    return base * rng.uniform(1 - jitter, 1 + jitter, base.size)


def _random_counts(n: int, k: int, seed: int) -> KeyCounts:
    from latbench import ops as O

    rng = np.random.default_rng(seed)
    ops = tuple(O.activation((1, 8 + i, 4, 4), "relu") for i in range(k))
    return KeyCounts(tuple(o.key for o in ops), ops, rng.integers(0, 4, (n, k)).astype(float))


# ---------------------------------------------------------------------- the regression
def test_unregularised_fit_is_the_nonnegative_least_squares_solution():
    """lambda 0 on identifiable counts: the costs numpy's weighted lstsq finds (all positive)."""
    kc = _random_counts(40, 6, 0)
    cost = np.array([0.5, 1.0, 0.2, 2.0, 0.05, 0.7])
    y = kc.counts @ cost + 1.5
    r = fit_costs(kc, y, lam=0.0)
    w = 1 / y
    ref, *_ = np.linalg.lstsq(np.c_[kc.counts, np.ones(len(y))] * w[:, None], y * w, rcond=None)
    np.testing.assert_allclose(np.r_[r.cost, r.intercept], ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r.cost, cost, rtol=1e-6)
    assert r.intercept == pytest.approx(1.5, rel=1e-6)
    assert r.in_sample["within5"] == 1.0


def test_costs_never_negative_and_noise_gives_an_honest_sd():
    """A key that costs nothing stays >= 0 under noise; the stated sd matches the scatter of the
    fitted cost over noise draws within a factor of 2."""
    kc = _random_counts(60, 5, 1)
    cost = np.array([0.0, 1.0, 0.4, 2.0, 0.3])
    fits = []
    for s in range(30):
        rng = np.random.default_rng(100 + s)
        y = (kc.counts @ cost + 1.0) * rng.normal(1, 0.02, 60)
        r = fit_costs(kc, y, lam=1e-6)
        assert (r.cost >= 0).all() and r.intercept >= 0
        fits.append((r.cost, r.sd))
    costs = np.array([c for c, _ in fits])
    stated = np.median([sd for _, sd in fits], axis=0)
    spread = costs[:, 1:].std(axis=0)
    ratio = stated[1:] / spread
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio


def test_prior_only_keys_keep_the_prior_and_shrinkage_pulls_towards_it():
    kc = _random_counts(12, 4, 2)
    kc.counts[:, 3] = 0  # no network holds key 3
    truth = np.array([1.0, 0.5, 0.8, 9.9])
    y = kc.counts @ truth + 0.5
    prior = Prior("p", np.array([2.0, 1.0, 1.6, 3.0]), 1.0)
    loose = fit_costs(kc, y, prior, lam=1e-4)
    tight = fit_costs(kc, y, prior, lam=1e5)
    assert loose.cost[3] == tight.cost[3] == 3.0 and loose.seen[3] == 0 and math.isnan(loose.sd[3])
    np.testing.assert_allclose(loose.cost[:3], truth[:3], rtol=0.02)
    assert np.abs(tight.cost[:3] - prior.cost[:3]).max() < np.abs(loose.cost[:3] - prior.cost[:3]).max()
    inf = fit_costs(kc, y, prior, lam=math.inf)
    np.testing.assert_array_equal(inf.cost, prior.cost)


def test_cross_validation_picks_weak_shrinkage_when_the_data_decide(space):
    """Many noiseless networks: the chosen fit predicts held-out networks within 1%."""
    cfgs = space.sample(0, 300)
    kc = key_counts(space, cfgs)
    truth = _truth(kc, 0)
    y = kc.counts @ truth + 0.3
    r = fit_costs(kc, y, seed=0)
    held = space.sample(1, 50)
    kh = key_counts(space, held)
    pred = kh.column(r.keys) @ r.cost + r.intercept
    ref = kh.counts @ np.array([truth[kc.keys.index(k)] for k in kh.keys]) + 0.3
    assert np.abs(pred / ref - 1).max() < 0.01
    assert r.cv_rmspe < 0.01 and r.lam <= 1.0


def test_networks_folded_away_are_left_out_and_counted():
    """Networks measured at under a tenth of the median (a runtime folded them to a constant) do
    not move the fit: it equals the fit without them, and says how many it left out."""
    kc = _random_counts(40, 5, 6)
    y = kc.counts @ np.array([0.5, 1.0, 0.2, 2.0, 0.7]) + 1.0
    y_folded = y.copy()
    y_folded[[3, 17]] = 0.003
    a = fit_costs(kc, y_folded, lam=1e-4)
    keep = np.ones(40, bool)
    keep[[3, 17]] = False
    b = fit_costs(KeyCounts(kc.keys, kc.ops, kc.counts[keep]), y[keep], lam=1e-4)
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-9)
    assert a.folded == 2 and a.networks == 38 and a.record()["folded_left_out"] == 2


def test_bad_input_is_refused_in_one_line():
    kc = _random_counts(5, 3, 3)
    with pytest.raises(UsageError, match="finite and > 0"):
        fit_costs(kc, [1, 2, -1, 3, 4])
    with pytest.raises(UsageError, match="disagree"):
        fit_costs(kc, [1, 2, 3])
    with pytest.raises(UsageError, match="prices 2 keys"):
        fit_costs(kc, [1, 2, 3, 4, 5], Prior("p", np.ones(2), 0.0))


# ---------------------------------------------------------------------- transfer
def test_combine_priors_finds_the_scaled_device():
    """Of three tables, the one the new device is 1.7x of is chosen and scaled by 1.7."""
    kc = _random_counts(10, 6, 4)
    rng = np.random.default_rng(5)
    base = rng.uniform(0.2, 2.0, 6)
    priors = [Prior("a", rng.uniform(0.2, 2.0, 6), 0.3), Prior("b", base, 0.5), Prior("c", rng.uniform(0.2, 2, 6), 0.1)]
    y = 1.7 * (kc.counts @ base + 0.5)
    p = combine_priors(priors, kc.counts, y)
    assert p.name == "b scaled"
    assert p.weights == {"b": pytest.approx(1.7)}
    np.testing.assert_allclose(p.cost, 1.7 * base)


def test_combine_priors_falls_back_on_the_networks_own_structure(space):
    """A device priced by kernel launches alone (0.05 ms an op) that no table resembles: the mix
    of the FLOPs/bytes/kernels units wins, and its per-key prior is 0.05 ms x the key's ops."""
    from latbench import ops as O

    cfgs = space.sample(4, 30)
    kc = key_counts(space, cfgs)
    kernels = np.array([len(O.expand(o)) for o in kc.ops], dtype=float)
    y = kc.counts @ (0.05 * kernels) + 0.2
    rng = np.random.default_rng(3)
    tables = [Prior(n, rng.uniform(0.1, 2.0, len(kc.keys)), 0.1) for n in "ab"]
    p = combine_priors(tables, kc.counts, y, kc.ops)
    assert p.name == "flops+bytes+kernels"
    np.testing.assert_allclose(p.predict(kc.counts), y, rtol=1e-6)
    assert p.weights["kernels"] == pytest.approx(0.05, rel=1e-6)


def test_transfer_beats_the_fit_alone_and_refine_beats_scale_offset(space):
    """A neighbour whose keys are off FLOPs-and-bytes by up to +-50%, a device whose keys differ from
    the neighbour's by up to +-15%: from 10 networks, the transfer predicts 200 others better than a
    plain fit (shrunk towards FLOPs and bytes) and than the neighbour scaled+offset."""
    cfgs = space.sample(0, 210)
    kc = key_counts(space, cfgs)
    near = _truth(kc, 1, jitter=0.5)
    new = near * 1.3 * np.random.default_rng(7).uniform(0.85, 1.15, near.size)
    y = kc.counts @ new + 0.1
    train, test = slice(0, 10), slice(10, None)
    kc10 = KeyCounts(kc.keys, kc.ops, kc.counts[train])
    t = transfer_fit(kc10, y[train], [Prior("near", near, 0.2)])
    plain = fit_costs(kc10, y[train])  # keys its 10 networks lack: priced by the FLOPs-and-bytes prior
    err = lambda p: np.median(np.abs(p / y[test] - 1))  # noqa: E731
    p_transfer = kc.counts[test] @ t.cost + t.intercept
    p_plain = kc.counts[test] @ plain.cost + plain.intercept
    near_p = kc.counts @ near + 0.2
    cal = fit_calibration(near_p[train], y[train])
    p_cal = cal.apply(near_p[test])
    assert err(p_transfer) < err(p_plain)
    assert err(p_transfer) <= err(p_cal) + 1e-9
    assert np.mean(np.abs(p_transfer / y[test] - 1) <= 0.05) > 0.9


# ---------------------------------------------------------------------- the written table
def _write_csv(path, space, cfgs, ms, cfg_col="config", ms_col="ms"):
    with open(path, "w") as f:
        f.write(f"{cfg_col},{ms_col}\n")
        for c, m in zip(cfgs, ms):
            f.write('"%s",%r\n' % (json.dumps(space.to_published(c)).replace('"', '""'), float(m)))


def test_fitted_table_prices_like_the_fit(space, tmp_path, cli):
    """Predictor over the written table = counts @ cost + intercept (hand sum) for new configs; the
    profile says fitted and from how many networks; rows keep sd and network counts."""
    cfgs = space.sample(0, 80)
    kc = key_counts(space, cfgs)
    truth = _truth(kc, 3)
    ms = (kc.counts @ truth + 0.25) * np.random.default_rng(0).normal(1, 0.01, len(cfgs))
    csv = tmp_path / "dev.csv"
    _write_csv(csv, space, cfgs, ms)
    nets = read_networks(str(csv), space)
    assert nets.device == "dev" and len(nets.ms) == 80
    out = tmp_path / "fit.db"
    r = fit_table(str(out), space, nets)
    shown = run_cli(cli, "table", "show", str(out), "--limit", "2")
    assert "fitted from 80 networks (dev.csv:ms)" in shown.stdout and "fitted +-" in shown.stdout, shown.stdout
    with LatencyTable.open(out, readonly=True) as t:
        prof = t.profile
        assert prof.runtime == "end-to-end fit" and "fitted from 80 networks" in dict(prof.options)["fit"]
        assert t.invocation.estimate_ms == pytest.approx(r.intercept)
        row = t.row(r.keys[0])
        assert row["std"] == pytest.approx(r.sd[0]) and row["n"] == int(r.seen[0])
        assert row["source"].startswith("fit:dev.csv")
        pred = Predictor.from_table(t, space)
    for cfg in space.sample(9, 5):
        hand = sum(r.cost[r.keys.index(b.key)] for b in space.blocks(cfg) if b.key in r.keys) + r.intercept
        if all(b.key in r.keys for b in space.blocks(cfg)):
            assert pred.predict(cfg) == pytest.approx(hand, rel=1e-9)


def _measured_table(path, space, costs: dict, inv: float) -> None:
    """A table as a profile writes it: rows of (cost + per-call cost), the per-call cost in meta."""
    prof = DeviceProfile("ort", "onnxruntime", "1", 1, device="host")
    with LatencyTable.open(path, prof) as t:
        for key, (op, c) in costs.items():
            t.add(Measurement(key, prof.id, op.to_dict(), None), estimator="value", estimate=c + inv)
        t.set_run_settings(RunSettings("block", "none", (space.name,)))
        t.set_invocation(CompanionEntry(estimate_ms=inv, status="ok", estimator="value"))


def test_cli_refines_a_measured_table_from_validate_csv(space, tmp_path, cli):
    """`latbench fit --prior OWN.db --measured validate.csv`: the refined table prices 100 other
    subnets closer than the table itself (keys off by +-20%)."""
    from latbench.fit_table import space_ops

    ops = space_ops(space, "block", "none")
    kc_all = KeyCounts(tuple(o.key for o in ops), tuple(ops), np.zeros((0, len(ops))))
    table_cost = _truth(kc_all, 5, jitter=0.0)
    real = table_cost * np.random.default_rng(11).uniform(0.8, 1.2, table_cost.size)
    own = tmp_path / "own.db"
    _measured_table(own, space, {o.key: (o, c) for o, c in zip(ops, table_cost)}, 0.1)
    cfgs = space.sample(3, 110)
    kc = key_counts(space, cfgs).column(kc_all.keys)
    y = kc @ real + 0.1
    csv = tmp_path / "val.csv"
    _write_csv(csv, space, cfgs[:10], y[:10], ms_col="measured_ms")
    out = tmp_path / "refined.db"
    res = run_cli(cli, "fit", "-s", SPACE, "--measured", str(csv), "--prior", str(own), "--refine", "-o", str(out),
                  "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["networks"] == 10 and doc["keys"] == len(ops)
    with LatencyTable.open(own, readonly=True) as a, LatencyTable.open(out, readonly=True) as b:
        assert b.profile.id == a.profile.id  # the device's own profile: validate measures it there
        assert b.run_settings.other["fit"]["networks"] == 10 and b.row(ops[0].key)["source"].startswith("refine:")
    shown = run_cli(cli, "table", "show", str(out), "--limit", "1")
    assert "refined from 10 networks (refine:val.csv:measured_ms)" in shown.stdout, shown.stdout
    twice = run_cli(cli, "fit", "-s", SPACE, "--measured", str(csv), "--prior", str(own), "--prior", str(out),
                    "--refine", "-o", str(tmp_path / "x.db"))
    assert twice.returncode == 2 and "exactly one prior table" in twice.stderr
    # `latbench transfer TABLES ...` is `fit` with TABLES as its priors: the same table, row for row
    same = run_cli(cli, "transfer", str(own), "-s", SPACE, "--measured", str(csv), "--refine", "-o",
                   str(tmp_path / "t.db"))
    assert same.returncode == 0, same.stderr
    with LatencyTable.open(out, readonly=True) as a, LatencyTable.open(tmp_path / "t.db", readonly=True) as b:
        assert a.estimates() == b.estimates()
    before = Predictor.from_table(str(own), space).predict_batch(cfgs[10:])
    after = Predictor.from_table(str(out), space).predict_batch(cfgs[10:])
    err = lambda p: np.mean(np.abs(p / y[10:] - 1))  # noqa: E731
    assert err(after) < err(before)


def test_transfer_at_op_granularity_counts_keys_as_predictor_prices_them(space, tmp_path):
    """A prior table of op keys with ort's fusion: the transfer counts the same fused keys, and a
    device exactly 2x the prior is priced 2x by the transferred table (Predictor, fresh configs)."""
    from latbench.fit_table import MeasuredNetworks, space_ops

    ops = space_ops(space, "op", "ort")
    assert any(o.kind == "conv" and o.act != "none" for o in ops)  # fused conv+act keys
    cost = {o.key: (o, 0.001 + 1e-8 * o.flops) for o in ops}
    prof = DeviceProfile("ort", "onnxruntime", "1", 1, device="host")
    other = tmp_path / "other.db"
    with LatencyTable.open(other, prof) as t:
        for key, (op, c) in cost.items():
            t.add(Measurement(key, prof.id, op.to_dict(), None), estimator="value", estimate=c)
        t.set_run_settings(RunSettings("op", "ort", (space.name,)))
    before = Predictor.from_table(str(other), space)
    cfgs = space.sample(5, 12)
    nets = MeasuredNetworks(space.name, cfgs, 2 * before.predict_batch(cfgs), "synthetic", "dev2x")
    r = fit_table(str(tmp_path / "dev2x.db"), space, nets, [str(other)])
    assert (r.granularity, r.fusion) == ("op", "ort") and r.prior.name == "other.db scaled"
    fresh = space.sample(6, 20)
    after = Predictor.from_table(str(tmp_path / "dev2x.db"), space)
    np.testing.assert_allclose(after.predict_batch(fresh), 2 * before.predict_batch(fresh), rtol=1e-6)


@pytest.mark.parametrize("content,args,message", [
    ("config,ms\n[0],1\n", [], "dev.csv:2: tiny: a config has"),
    ("arch,lat\n", [], "no latency column"),
    ("config,ms\n", [], "holds no networks"),
    ('config,ms\n"{}",-1\n', [], "config lacks|dev.csv:2"),
])
def test_cli_bad_csv_one_line(tmp_path, cli, content, args, message):
    csv = tmp_path / "dev.csv"
    csv.write_text(content)
    res = run_cli(cli, "fit", "-s", SPACE, "--measured", str(csv), "-o", str(tmp_path / "o.db"), *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    import re

    assert re.search(message, res.stderr), res.stderr


def test_cli_refuses_negative_latency_and_existing_output(space, tmp_path, cli):
    cfg = json.dumps(space.to_published(space.smallest())).replace('"', '""')
    csv = tmp_path / "dev.csv"
    csv.write_text(f'config,ms\n"{cfg}",-2\n')
    res = run_cli(cli, "fit", "-s", SPACE, "--measured", str(csv), "-o", str(tmp_path / "o.db"))
    assert res.returncode == 2 and "dev.csv:2: ms='-2' must be a finite latency > 0 ms" in res.stderr
    (tmp_path / "o.db").write_text("")
    csv.write_text(f'config,ms\n"{cfg}",2\n')
    res = run_cli(cli, "fit", "-s", SPACE, "--measured", str(csv), "-o", str(tmp_path / "o.db"))
    assert res.returncode == 2 and "exists" in res.stderr


def test_bad_config_names_its_line(space, tmp_path):
    csv = tmp_path / "dev.csv"
    good = json.dumps(space.to_published(space.smallest())).replace('"', '""')
    csv.write_text(f'config,ms\n"{good}",1\n[99],1\n')
    with pytest.raises(ConfigError, match="dev.csv:3"):
        read_networks(str(csv), space)
