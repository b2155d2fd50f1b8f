"""Latency-constrained search: every strategy meets every constraint on two tables at once
(checked by re-pricing the cost maps over `space.blocks(config)`), impossible budgets fail fast
naming the smallest achievable latency, seeds reproduce, evolution reaches a known optimum and
beats random search, the OFA-style MLP loads OFA's layouts, and the CLI's outputs."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from cli_result import run_cli
from conftest import ROOT

from latbench.device import DeviceProfile
from latbench.errors import FormatError, UsageError
from latbench.measure import Measurement, Stats
from latbench.predict import Predictor
from latbench.search import (
    AccuracySource,
    Domain,
    InfeasibleBudgetError,
    extreme,
    make_accuracy_source,
    register_accuracy_source,
    run_search,
)
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import RunSettings

STRATEGIES = ("evolution", "anneal", "random", "nsga2")
SMALL = {"generations": 8, "population": 30}
PROFILE = DeviceProfile(agent="cpu", runtime="synthetic", runtime_version="0", threads=1, device="test")


# ---------------------------------------------------------------------- helpers
def cost_map(space, seed: int, scale: float = 1.0) -> dict[str, float]:
    """Known ms per block: FLOPs-shaped with +-40% noise, so cost is not monotonic in the choices."""
    rng = np.random.default_rng(seed)
    return {b.key: scale * (b.flops / 1e8 + 0.01) * (0.6 + 0.8 * rng.random()) for b in space.enumerate_blocks()}


def reprice(space, costs: dict[str, float], config) -> float:
    """Independent of the Predictor: the sum of the cost map over the config's blocks."""
    return sum(costs[b.key] for b in space.blocks(config))


def count(space, config, attr: str) -> int:
    return sum(getattr(b, attr) for b in space.blocks(config))


def write_table(path: Path, space, costs: dict[str, float], resolutions=None) -> Path:
    """A real latbench table file (SQLite) holding the cost map's blocks as measurements."""
    pid = PROFILE.id
    with LatencyTable.open(str(path), PROFILE) as t:
        t.set_run_settings(RunSettings("block", spaces=(space.name,)))
        t.add_many(Measurement(b.key, pid, b.to_dict(), Stats.from_samples([costs[b.key]] * 3))
                   for b in space.enumerate_blocks(resolutions))  # one transaction
    return path


def all_configs(space) -> np.ndarray:
    """Every index vector of a small space (int8: 2.4M x 20 for `tiny`)."""
    card = [int(c) for c in space.cardinalities]
    out = np.zeros((int(np.prod(card)), len(card)), dtype=np.int8)
    step = 1
    for p in range(len(card) - 1, -1, -1):  # the last position varies fastest
        out[:, p] = (np.arange(len(out)) // step) % card[p]
        step *= card[p]
    return out


class Separable(AccuracySource):
    """A synthetic accuracy: a fixed weight per (position, choice), summed."""

    name = "separable"

    def __init__(self, space, seed: int = 0):
        super().__init__(space)
        rng = np.random.default_rng(seed)
        self.w = rng.random((space.n_positions, int(space.cardinalities.max())))

    def score(self, configs):
        return self.w[np.arange(configs.shape[1]), configs].sum(axis=1)


class Payload:
    """Any Python object: a checkpoint holding one must not be unpickled."""


@pytest.fixture(scope="module")
def ofa():
    sp = get_space("ofa-mbv3-w12")
    maps = {"cpu": cost_map(sp, 1), "phone": cost_map(sp, 2, scale=2.5)}
    preds = {name: Predictor(sp, m, "block") for name, m in maps.items()}
    return sp, maps, preds


@pytest.fixture(scope="module")
def ofa_tables(ofa, tmp_path_factory):
    """The two OFA cost maps as real table files, written once."""
    sp, maps, _ = ofa
    d = tmp_path_factory.mktemp("tables")
    return {name: write_table(d / f"{name}.sqlite", sp, m) for name, m in maps.items()}


@pytest.fixture(scope="module")
def tiny():
    sp = get_space("tiny")
    maps = {"a": cost_map(sp, 3), "b": cost_map(sp, 4, scale=0.7)}
    preds = {name: Predictor(sp, m, "block") for name, m in maps.items()}
    X = all_configs(sp)
    lat = {name: p.predict_batch(X) for name, p in preds.items()}
    return sp, maps, preds, X, lat


def check_feasible(space, maps, budgets, config, flops_max=None, params_max=None) -> None:
    for name, m in maps.items():
        assert reprice(space, m, config) <= budgets[name] * (1 + 1e-9), name
    if flops_max is not None:
        assert count(space, config, "flops") <= flops_max
    if params_max is not None:
        assert count(space, config, "params") <= params_max


# ---------------------------------------------------------------------- constraints
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_meets_every_constraint_on_two_tables(ofa, strategy):
    sp, maps, preds = ofa
    budgets = {"cpu": 5.0, "phone": 11.0}
    flops_max, params_max = 450e6, 7e6
    r = run_search(sp, preds, budgets, "flops", strategy, seed=1, flops_range=(None, flops_max),
                   params_range=(None, params_max), **SMALL)
    check_feasible(sp, maps, budgets, r.config, flops_max, params_max)
    assert r.latency_ms["cpu"] == pytest.approx(reprice(sp, maps["cpu"], r.config), rel=1e-9)
    assert r.latency_ms["phone"] == pytest.approx(reprice(sp, maps["phone"], r.config), rel=1e-9)
    assert r.flops == count(sp, r.config, "flops") and r.params == count(sp, r.config, "params")
    assert sp.to_published(r.config) == r.published and set(r.published) == {"ks", "e", "d", "r"}
    # everything the log calls feasible is feasible when re-priced (a sample of it)
    log = r.trials
    idx = np.flatnonzero(log.feasible)
    assert idx.size and (strategy == "nsga2" or log.feasible.all())
    for i in np.random.default_rng(0).choice(idx, min(40, idx.size), replace=False):
        check_feasible(sp, maps, budgets, log.configs[i], flops_max, params_max)


def test_search_on_a_real_table_file(ofa, ofa_tables):
    sp, maps, _ = ofa
    path = ofa_tables["cpu"]
    with LatencyTable.open(path, create=False) as t:
        pred = Predictor.from_table(t, sp)
    r = run_search(sp, {"cpu": pred}, {"cpu": 4.0}, "flops", "evolution", seed=0, **SMALL)
    check_feasible(sp, {"cpu": maps["cpu"]}, {"cpu": 4.0}, r.config)
    assert r.fallback_keys == {"cpu": 0}


def test_extreme_is_exact_on_a_small_space(tiny):
    sp, maps, preds, X, lat = tiny
    dom = Domain.of(sp)
    lo, cfg_lo = extreme(preds["a"], dom)
    hi, cfg_hi = extreme(preds["a"], dom, maximize=True)
    assert lo == pytest.approx(lat["a"].min(), rel=1e-12) and hi == pytest.approx(lat["a"].max(), rel=1e-12)
    assert reprice(sp, maps["a"], cfg_lo) == pytest.approx(lo, rel=1e-12)
    assert reprice(sp, maps["a"], cfg_hi) == pytest.approx(hi, rel=1e-12)
    # the noisy map is not monotonic: the first choices are not the cheapest subnet here
    assert reprice(sp, maps["a"], sp.smallest()) > lo


# ---------------------------------------------------------------------- infeasible budgets
def test_impossible_budget_fails_at_once_naming_the_minimum(ofa):
    sp, maps, preds = ofa
    lo, _ = extreme(preds["phone"], Domain.of(sp))
    t0 = time.perf_counter()
    with pytest.raises(InfeasibleBudgetError) as e:
        run_search(sp, preds, {"cpu": 50.0, "phone": lo * 0.99}, "flops", "evolution", seed=0)
    assert time.perf_counter() - t0 < 2.0
    msg = str(e.value)
    assert "\n" not in msg and "'phone'" in msg and f"{lo:.4g} ms" in msg


def test_impossible_budget_cli_exit_1_one_line(tmp_path, tiny, cli):
    sp, maps, preds, X, lat = tiny
    path = write_table(tmp_path / "a.sqlite", sp, maps["a"])
    smallest = float(lat["a"].min())  # exhaustive: every config of the space
    t0 = time.perf_counter()
    cp = run_cli(cli, "search", "--space", "tiny", "--table", str(path), "--budget-ms", f"{smallest * 0.9:.6f}")
    elapsed = time.perf_counter() - t0
    assert cp.returncode == 1, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latbench: error: ")
    assert f"smallest achievable latency of tiny there is {smallest:.4g} ms" in lines[0]
    assert elapsed < 2.0, elapsed
    assert cp.stdout == ""


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_just_above_the_minimum_is_met(tiny, strategy):
    sp, maps, preds, X, lat = tiny
    both = np.maximum(lat["a"] / lat["a"].min(), lat["b"] / lat["b"].min())
    i = int(np.argmin(both))  # the config closest to both minima at once
    budgets = {"a": float(lat["a"][i]) * 1.0001, "b": float(lat["b"][i]) * 1.0001}
    n_ok = int(((lat["a"] <= budgets["a"]) & (lat["b"] <= budgets["b"])).sum())
    assert n_ok < 1e-3 * len(X)  # a needle (index vectors differing only in unused blocks count apart)
    r = run_search(sp, preds, budgets, "flops", strategy, seed=0, **SMALL)
    check_feasible(sp, maps, budgets, r.config)


# ---------------------------------------------------------------------- seeds
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_result_other_seed_other_path(ofa, strategy):
    sp, _, preds = ofa
    runs = [run_search(sp, preds, {"cpu": 5.0, "phone": 12.0}, "flops", strategy, seed=s, **SMALL)
            for s in (7, 7, 8)]
    a, b, c = runs
    assert a.published == b.published and a.accuracy == b.accuracy
    assert np.array_equal(a.trials.configs, b.trials.configs)
    assert np.array_equal(a.trials.accuracy, b.trials.accuracy)
    n = min(len(a.trials), len(c.trials))
    assert not np.array_equal(a.trials.configs[:n], c.trials.configs[:n])


# ---------------------------------------------------------------------- quality
def test_evolution_reaches_the_known_optimum(tiny):
    sp, maps, preds, X, lat = tiny
    acc = Separable(sp, seed=5)
    budgets = {"a": float(np.quantile(lat["a"], 0.2)), "b": float(np.quantile(lat["b"], 0.3))}
    ok = (lat["a"] <= budgets["a"]) & (lat["b"] <= budgets["b"])
    best = float(acc.score(X[ok]).max())  # exact: exhaustive over all 2.4M index vectors
    r = run_search(sp, preds, budgets, acc, "evolution", seed=0, generations=100)
    check_feasible(sp, maps, budgets, r.config)
    assert r.accuracy <= best + 1e-9
    assert r.accuracy >= best * (1 - 0.005), (r.accuracy, best)


@pytest.fixture(scope="module")
def random_mlp(tmp_path_factory):
    """An OFA-layout accuracy MLP with seeded random weights, saved as a state_dict."""
    torch = pytest.importorskip("torch")
    from latbench.search.mlp import build_mlp, save_mlp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_mlp()
    path = tmp_path_factory.mktemp("mlp") / "acc.pth"
    save_mlp(net, path)
    return path


def test_evolution_beats_random_with_the_same_evaluations(ofa, random_mlp):
    sp, _, preds = ofa
    src = make_accuracy_source(f"mlp:{random_mlp}", sp)
    for seed in (0, 1):
        evo = run_search(sp, preds, {"cpu": 4.0}, src, "evolution", seed=seed, generations=30)
        rnd = run_search(sp, preds, {"cpu": 4.0}, src, "random", seed=seed, generations=31)
        assert evo.evaluations == rnd.evaluations == 3100
        assert evo.accuracy > rnd.accuracy


# ---------------------------------------------------------------------- the OFA-style MLP
def spec2feats(cfg: dict) -> list[float]:
    """OFA tutorial's 128-d encoding, written out from its description for this test."""
    ks, e, d, r = list(cfg["ks"]), list(cfg["e"]), cfg["d"], cfg["r"][0]
    for s, depth in enumerate(d):
        for j in range(s * 4 + depth, s * 4 + 4):
            ks[j] = e[j] = 0
    feats = [0.0] * 128
    for i in range(20):
        if ks[i]:
            feats[3 * i + {3: 0, 5: 1, 7: 2}[ks[i]]] = 1.0
        if e[i]:
            feats[60 + 3 * i + {3: 0, 4: 1, 6: 2}[e[i]]] = 1.0
    feats[120 + (r - 112) // 16] = 1.0
    return feats


def arch_encoder_feats(cfg: dict) -> list[float]:
    """OFA MobileNetArchEncoder's encoding with the 25 resolutions: r one-hot, then ks, then e."""
    feats = [0.0] * 145
    feats[(cfg["r"][0] - 128) // 4] = 1.0
    for i in range(20):
        if i % 4 < cfg["d"][i // 4]:
            feats[25 + 3 * i + (3, 5, 7).index(cfg["ks"][i])] = 1.0
            feats[85 + 3 * i + (3, 4, 6).index(cfg["e"][i])] = 1.0
    return feats


def test_mlp_loads_the_tutorial_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    from latbench.search.mlp import MLPAccuracy

    sp = get_space("ofa-mbv3-w12")
    torch.manual_seed(1)
    ref = torch.nn.Sequential(torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400),
                              torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(), torch.nn.Linear(400, 1))
    torch.save(ref.state_dict(), tmp_path / "acc_predictor.pth")  # as OFA publishes it
    src = make_accuracy_source(f"mlp:{tmp_path / 'acc_predictor.pth'}", sp)
    assert isinstance(src, MLPAccuracy) and src.in_dim == 128
    X = sp.sample(3, 64)
    feats = torch.tensor([spec2feats(sp.to_published(x)) for x in X])
    with torch.no_grad():
        want = ref(feats).squeeze(-1).double().numpy()
    np.testing.assert_allclose(src(X), want, rtol=1e-5, atol=1e-6)


def test_mlp_loads_the_accuracy_predictor_module_layout(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class AccuracyPredictorLike(nn.Module):  # OFA's ofa/nas AccuracyPredictor layout
        def __init__(self, n_dim):
            super().__init__()
            layers = [nn.Sequential(nn.Linear(n_dim if i == 0 else 400, 400), nn.ReLU(inplace=True)) for i in range(3)]
            layers.append(nn.Linear(400, 1, bias=False))
            self.layers = nn.Sequential(*layers)
            self.base_acc = nn.Parameter(torch.full((1,), 0.71), requires_grad=False)

        def forward(self, x):
            return self.layers(x).squeeze() + self.base_acc

    sp = get_space("ofa-mbv3-w10")
    X = sp.sample(4, 32)
    for n_dim, enc in ((128, spec2feats), (145, arch_encoder_feats)):
        torch.manual_seed(n_dim)
        ref = AccuracyPredictorLike(n_dim)
        path = tmp_path / f"pred{n_dim}.pth"
        torch.save({"state_dict": ref.state_dict()}, path)
        assert "layers.0.0.weight" in ref.state_dict() and "base_acc" in ref.state_dict()
        src = make_accuracy_source(f"mlp:{path}", sp)
        with torch.no_grad():
            want = ref(torch.tensor([enc(sp.to_published(x)) for x in X])).double().numpy()
        np.testing.assert_allclose(src(X), want, rtol=1e-5, atol=1e-6)


def test_mlp_refuses_what_is_not_weights(tmp_path):
    torch = pytest.importorskip("torch")
    sp = get_space("ofa-mbv3-w12")
    torch.save({"payload": Payload()}, tmp_path / "obj.pth")  # a pickled object: never unpickled
    with pytest.raises(FormatError):
        make_accuracy_source(f"mlp:{tmp_path / 'obj.pth'}", sp)
    torch.save({"0.weight": torch.zeros(400, 99)}, tmp_path / "odd.pth")
    with pytest.raises(FormatError):
        make_accuracy_source(f"mlp:{tmp_path / 'odd.pth'}", sp)
    with pytest.raises(UsageError):
        make_accuracy_source(f"mlp:{tmp_path / 'x.pth'}", get_space("tiny"))


def test_accuracy_train_cli_then_search_with_it(tmp_path, ofa, ofa_tables, cli):
    pytest.importorskip("torch")
    from latbench.search.mlp import MLPAccuracy

    sp, _, _ = ofa
    truth = Separable(sp, seed=9)
    X = sp.sample(11, 600)
    y = 70 + truth.score(X)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "accuracy"])
        for x, a in zip(X, y):
            w.writerow([json.dumps(sp.to_published(x)), f"{a:.6f}"])
    out = tmp_path / "acc.pth"
    cp = run_cli(cli, "accuracy", "train", "--space", sp.name, "--data", str(tmp_path / "pairs.csv"),
                      "--out", str(out), "--epochs", "60", "--json")
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout)
    assert rep["n_train"] == 540 and rep["n_val"] == 60 and rep["val_rmse"] < np.std(y)
    src = MLPAccuracy.load(out, sp)
    test = sp.sample(12, 200)
    assert np.corrcoef(src(test), truth.score(test))[0, 1] > 0.6
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(ofa_tables["cpu"]), "--budget-ms", "4",
                      "--accuracy", f"mlp:{out}", "-g", "5", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["accuracy_source"] == f"mlp:{out}" and doc["accuracy_is_proxy"] is False
    # a CSV that is not pairs fails in one line naming the file and line
    (tmp_path / "bad.csv").write_text('config,accuracy\n{"ks": [3]},0.5\n')
    cp = run_cli(cli, "accuracy", "train", "--space", sp.name, "--data", str(tmp_path / "bad.csv"), "--out",
                      str(tmp_path / "x.pth"))
    assert cp.returncode == 1 and "bad.csv:2:" in cp.stderr


# ---------------------------------------------------------------------- accuracy sources
def test_callable_source_gets_published_configs(tmp_path, ofa, ofa_tables, cli, monkeypatch):
    sp, maps, preds = ofa
    (tmp_path / "user_acc.py").write_text(
        "def score(configs):\n"
        "    return [sum(c['ks']) + sum(c['e']) + c['r'][0] / 10 for c in configs]\n")
    src = make_accuracy_source(f"callable:{tmp_path / 'user_acc.py'}:score", sp)
    X = sp.sample(0, 5)
    want = [sum(sp.to_published(x)["ks"]) + sum(sp.to_published(x)["e"]) + sp.to_published(x)["r"][0] / 10 for x in X]
    np.testing.assert_allclose(src(X), want)
    table = ofa_tables["cpu"]
    monkeypatch.syspath_prepend(str(tmp_path))  # the user's module on the path, as PYTHONPATH puts it
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(table), "-b", "4", "--accuracy",
                 "callable:user_acc:score", "-g", "3", "--json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["accuracy_source"] == "callable:user_acc:score"


def test_registry_takes_new_prefixes(ofa):
    sp, maps, preds = ofa

    class Const(AccuracySource):
        def __init__(self, space, value):
            super().__init__(space)
            self.name, self.value = f"const:{value}", float(value)

        def score(self, configs):
            return np.full(len(configs), self.value)

    register_accuracy_source("const", lambda arg, space: Const(space, arg))
    r = run_search(sp, preds, {"cpu": 5.0}, "const:3", "random", seed=0, generations=2)
    assert r.accuracy == 3.0 and r.accuracy_source == "const:3"
    with pytest.raises(UsageError, match="const:"):
        make_accuracy_source("nope:1", sp)


def test_search_imports_no_torch():
    code = ("import sys, latbench.search, latbench.search.mlp, latbench.cli.search, latbench.search.report; "
            "assert 'torch' not in sys.modules and 'pymoo' not in sys.modules, 'heavy import'")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr


# ---------------------------------------------------------------------- CLI
def test_cli_json_fields_one_and_two_tables(tmp_path, ofa, ofa_tables, cli):
    sp, maps, _ = ofa
    a, b = ofa_tables["cpu"], ofa_tables["phone"]
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(a), "-b", "4.5", "-g", "5", "--json",
                      "--out", str(tmp_path / "best.json"), "--flops-max", "400M")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert {"config", "latency_ms", "flops", "params", "accuracy", "accuracy_source"} <= set(doc)
    assert isinstance(doc["latency_ms"], float) and doc["latency_ms"] <= 4.5
    assert doc["accuracy_source"] == "flops-proxy" and doc["accuracy_is_proxy"] is True
    assert doc["flops"] <= 400e6 and doc["flops"] == count(sp, doc["config"], "flops")
    assert json.loads((tmp_path / "best.json").read_text()) == doc["config"]
    assert set(doc["config"]) == {"ks", "e", "d", "r"}
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(a), "--table", str(b), "-b", "4.5", "-b", "10",
                      "--strategy", "anneal", "-g", "5", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert set(doc["latency_ms"]) == {"cpu", "phone"}
    check_feasible(sp, maps, {"cpu": 4.5, "phone": 10.0}, doc["config"])
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(a), "-g", "3")  # human output
    assert cp.returncode == 0 and "latency" in cp.stdout and "proxy" in cp.stdout


def test_cli_nsga2_writes_front_csv_and_png(tmp_path, ofa, ofa_tables, cli):
    pytest.importorskip("pymoo")
    pytest.importorskip("matplotlib")
    sp, maps, _ = ofa
    a = ofa_tables["cpu"]
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(a), "-b", "6", "--strategy", "nsga2",
                      "-g", "10", "-p", "40", "--front", str(tmp_path / "front.csv"),
                      "--plot", str(tmp_path / "front.png"), "--json")
    assert cp.returncode == 0, cp.stderr
    rows = list(csv.DictReader(open(tmp_path / "front.csv")))
    assert len(rows) >= 3
    lat = [float(r["latency_ms[cpu]"]) for r in rows]
    acc = [float(r["accuracy"]) for r in rows]
    assert lat == sorted(lat) and acc == sorted(acc) and max(lat) <= 6.0
    for r in rows[:5]:
        assert reprice(sp, maps["cpu"], json.loads(r["config"])) == pytest.approx(float(r["latency_ms[cpu]"]))
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(cp.stdout)["accuracy"] == pytest.approx(max(acc))


def test_cli_partial_table_searches_the_covered_resolutions(tmp_path, cli):
    sp = get_space("ofa-mbv3-w10")
    costs = cost_map(sp, 5)
    path = write_table(tmp_path / "part.sqlite", sp, costs, resolutions=[160, 192])
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(path), "-b", "5", "-g", "5", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["config"]["r"][0] in (160, 192) and doc["fallback_keys"] == {"part": 0}
    assert "160, 192" in cp.stderr


@pytest.mark.parametrize("args, code, text", [
    (["-b", "1", "-b", "2"], 2, "one --budget-ms for all tables"),
    (["-b", "-1"], 2, "positive number of ms"),
    (["-b", "5", "--strategy", "hill"], 2, "unknown strategy"),
    (["-b", "5", "--accuracy", "magic:1"], 2, "unknown accuracy source"),
    (["-b", "5", "--flops-max", "lots"], 2, "--flops-max"),
    (["-b", "5", "--resolution", "100"], 2, "resolution 100"),
])
def test_cli_bad_inputs_one_line(ofa, ofa_tables, args, code, text, cli):
    sp, maps, _ = ofa
    a = ofa_tables["cpu"]
    cp = run_cli(cli, "search", "--space", sp.name, "--table", str(a), *args)
    assert cp.returncode == code, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1 and text in cp.stderr


def test_cli_missing_table_is_one_line(tmp_path, cli):
    cp = run_cli(cli, "search", "--space", "tiny", "--table", str(tmp_path / "none.sqlite"), "-b", "1")
    assert cp.returncode != 0 and "no such latbench table" in cp.stderr
    assert not (tmp_path / "none.sqlite").exists()


def test_quickstart_search_step_uses_the_profiled_table(tmp_path):
    from rich.console import Console

    from latbench.cli.quickstart import QUICKSTART_STEPS, QuickstartState
    from latbench.cli.quickstart import _qs_search as quickstart_search

    assert QUICKSTART_STEPS[-1][0].startswith("search")
    sp = get_space("tiny")
    costs = cost_map(sp, 6)
    table = write_table(tmp_path / "tiny-ort.sqlite", sp, costs, resolutions=[24])
    st = QuickstartState("ofa-mbv3-w10", (), 10, 0)
    st.table, st.table_space = table, "tiny"
    buf = StringIO()
    quickstart_search(st, Console(file=buf, width=200))
    out = buf.getvalue()
    assert "budget" in out and "best of" in out and "proxy" in out
    cfg = json.loads(out.split("subnets (")[1].split("): ", 1)[1].splitlines()[0])
    assert sp.index(cfg)[sp.resolution_position] == sp.positions[sp.resolution_position].choices.index(24)
