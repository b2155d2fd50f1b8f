"""The public Python API (`import latbench`): an outside search loop on Study.ask/tell, predictors
that outlive their table, stand-alone op lists and models, profile -> predict, search and its
strategy registry, errors that name parameters, and an import that pulls in no heavy module."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import latbench
from conftest import CLI_ENV, ROOT
from latbench import ops as O
from latbench.store import LatencyTable
from synthetic_tables import tiny_block_table
from test_store import PROFILE, measurement

SPACE = "tiny"


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """A real table of every `tiny` block at 24 and 32 (made-up numbers), and key -> estimate."""
    path = tmp_path_factory.mktemp("api") / "tiny.sqlite"
    return path, tiny_block_table(path)


def hand_price(costs: dict[str, float], config) -> float:
    """A config's price as a plain sum of its blocks' table entries (the table has no per-call cost)."""
    return math.fsum(costs[b.key] for b in latbench.get_space(SPACE).blocks(config))


# ---------------------------------------------------------------------- Study: an outside loop
def evolve(path: Path, budget: float, seed: int, generations: int = 12, population: int = 8):
    """A user's own evolution (its own RNG and mutation), priced and constrained by a Study;
    the score is the subnet's FLOPs (bigger under the budget is better)."""
    space = latbench.get_space(SPACE)
    study = latbench.Study(SPACE, path, budgets_ms=budget, seed=seed)
    rng = np.random.default_rng(seed)
    cards = np.array([len(p.choices) for p in space.positions])
    pop = []
    for _ in range(population):
        trial = study.ask()
        pop.append(study.tell(trial, trial.flops if trial.feasible else 0.0))
    for _ in range(generations):
        parents = sorted(pop, key=lambda t: -t.value)[:population // 2]
        children = []
        for parent in parents:
            child = parent.index.copy()
            pos = rng.integers(len(cards))
            child[pos] = rng.integers(cards[pos])
            trial = study.ask(child)
            children.append(study.tell(trial, trial.flops if trial.feasible else 0.0))
        pop = parents + children
    return study


def test_outside_evolution_loop_reaches_a_feasible_best_under_the_budget(table) -> None:
    path, costs = table
    space = latbench.get_space(SPACE)
    lo = hand_price(costs, space.smallest())
    budget = 1.6 * lo
    study = evolve(path, budget, seed=3)
    best = study.best
    assert best.feasible and best.state == "complete" and best.value == best.flops
    # the trial's price is the table's: a hand sum, and an independent Predictor of the same config
    assert best.latency_ms["tiny"] == pytest.approx(hand_price(costs, best.config), rel=1e-12)
    assert latbench.Predictor.from_table(path, SPACE).predict(best.config) == pytest.approx(best.latency_ms["tiny"])
    assert best.latency_ms["tiny"] <= budget
    assert best.constraints == pytest.approx(((best.latency_ms["tiny"] - budget) / budget,))
    assert best.flops == sum(b.flops for b in space.blocks(best.config))
    assert space.to_published(best.index) == best.config and best.config["r"] in (24, 32)
    # the trials table: every asked trial, feasibility as a hand sum says, the best the best feasible
    df = study.trials
    assert len(df) == 8 + 12 * 4 and list(df["number"]) == list(range(len(df)))
    assert set(df["state"]) == {"complete"}
    hand = np.array([hand_price(costs, c) for c in df["config"]])
    assert np.allclose(df["latency_ms[tiny]"], hand, rtol=1e-12)
    assert (df["feasible"] == (hand <= budget)).all()
    assert df.loc[df["feasible"], "value"].max() == best.value
    assert best.value > df["value"].iloc[:8].max()  # the loop improved on its random start
    # deterministic: the same seed gives the same trials
    again = evolve(path, budget, seed=3).trials
    assert again["config"].map(json.dumps).tolist() == df["config"].map(json.dumps).tolist()


def test_ask_tell_bookkeeping(table) -> None:
    path, costs = table
    study = latbench.Study(SPACE, path, budgets_ms=1e-6, seed=0)  # nothing is feasible
    with pytest.raises(latbench.LatbenchError, match="no config has been scored yet"):
        study.best
    t = study.ask()
    other = latbench.Study(SPACE, path, budgets_ms=1e-6, seed=1).ask()
    assert other.number == t.number and not np.array_equal(other.index, t.index)
    with pytest.raises(latbench.UsageError, match="trial 0 is not this study's"):
        study.tell(other, 3.0)
    assert not t.feasible and t.state == "running" and t.value is None
    assert study.trials["state"].tolist() == ["running"]
    with pytest.raises(latbench.UsageError, match=r"^value of trial 0 must be a finite number"):
        study.tell(t, float("nan"))
    assert study.tell(t.number, 1.0).state == "complete"
    with pytest.raises(latbench.UsageError, match="trial 0 was told already"):
        study.tell(t, 2.0)
    with pytest.raises(latbench.UsageError, match="trial 7 was never asked"):
        study.tell(7, 2.0)
    with pytest.raises(latbench.LatbenchError, match="meets every constraint"):
        study.best
    with pytest.raises(latbench.InfeasibleBudgetError, match="smallest achievable latency"):
        study.ask(feasible=True)


# ---------------------------------------------------------------------- Predictor
def test_predictor_from_a_path_prices_after_close_including_a_key_that_falls_back(tmp_path, table) -> None:
    """Built from a path (opened and closed inside), it prices a config whose block is missing
    from the table by the fallback regression fitted on the table; as one built from the open table."""
    _, costs = table
    space = latbench.get_space(SPACE)
    config = space.smallest()
    missing = space.blocks(config)[1]
    path = tmp_path / "partial.sqlite"
    blocks = [b for b in space.enumerate_blocks([24, 32]) if b.key != missing.key]
    with LatencyTable.open(path, PROFILE) as t:
        t.add_many(measurement(b, costs[b.key]) for b in blocks)
        with_open = latbench.Predictor.from_table(t, space, max_fallback=None)
    closed = latbench.Predictor.from_table(str(path), SPACE, max_fallback=None)
    p = closed.explain(config)
    assert p.misses == (missing.key,)
    assert closed.predict(config) == with_open.predict(config) == pytest.approx(p.ms, rel=1e-12)
    others = math.fsum(costs[b.key] for b in space.blocks(config) if b.key != missing.key)
    assert p.ms - others == pytest.approx(with_open.pricer.fallback(missing)) and p.ms > others
    with pytest.raises(latbench.FallbackError, match="over the 10% allowed"):
        latbench.Predictor.from_table(path, SPACE).predict(config)


def test_price_of_a_stand_alone_op_list_is_the_sum_of_its_entries(tmp_path) -> None:
    ops = [O.conv((1, 3, 16, 16), 8, 3, stride=2), O.batch_norm((1, 8, 8, 8)), O.activation((1, 8, 8, 8), "relu"),
           O.linear(1, 8, 10)]
    entries = [0.25, 0.0625, 0.03125, 0.5]
    path = tmp_path / "ops.sqlite"
    with LatencyTable.open(path, PROFILE) as t:
        t.add_many(measurement(op, ms) for op, ms in zip(ops, entries))
        stored = t.estimates()
    pred = latbench.Predictor.from_table(path)  # no space: op lists and models only
    price = pred.price(ops + [ops[0]])  # the conv twice: priced twice
    assert price.ms == pytest.approx(math.fsum(stored[o.key] for o in ops + [ops[0]]), rel=1e-12)
    assert price.misses == () and price.keys == 5
    assert stored[ops[0].key] == pytest.approx(0.25, rel=0.05)  # the entry is the samples' statistic
    with pytest.raises(latbench.UsageError, match=r"^predict prices configs of a space: .*give `space`"):
        pred.predict({"r": 24})


# ---------------------------------------------------------------------- profile -> predict
def test_profile_an_op_list_on_ort_then_price_it(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from latbench.lower import lower_torch

    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    ops = lower_torch(model, (1, 3, 16, 16)).ops
    out = tmp_path / "m.sqlite"
    run = latbench.profile(ops, device="ort", out=out, max_time_s=0.02, min_samples=3, rounds=2, threads=1,
                           retime="none")
    # conv + BN + ReLU run as one fused conv in ONNX Runtime: 3 ops stored, at op granularity
    assert (run.total, run.measured, run.failed, run.ok) == (3, 3, 0, True) and run.device == "ort"
    assert run.timing.context == "warm" and "per-call cost" in run.words()
    with latbench.open_table(out) as t:
        est, inv = t.estimates(), t.invocation.estimate_ms
        # the activations the installed ONNX Runtime fuses into a conv at level all (relu among them)
        assert t.run_settings.granularity == "op" and t.run_settings.fusion.startswith("ort")
        assert "relu" in latbench.ops.get_fusion(t.run_settings.fusion).acts
    pred = latbench.Predictor.from_table(out)
    hand = inv + math.fsum(max(0.0, v - inv) for v in est.values())
    assert pred.price(ops).ms == pytest.approx(hand, rel=1e-12)
    assert pred.price_model(model, (1, 3, 16, 16)).price.ms == pytest.approx(hand, rel=1e-12)
    from device_agents import get_agent

    agent = get_agent("ort", threads=1)  # an agent built already: used as given, left open
    try:
        with pytest.raises(latbench.UsageError, match=r"agent options \(threads\) go with a device name"):
            latbench.profile(ops, device=agent, out=out, threads=1)
        again = latbench.profile(ops, device=agent, out=out, max_time_s=0.02, min_samples=3, rounds=2)
        assert (again.skipped, again.measured, again.profile_id) == (3, 0, run.profile_id)  # resumed: nothing new
    finally:
        agent.close()


# ---------------------------------------------------------------------- search and strategies
def test_search_returns_the_best_feasible_subnet_and_its_trials(table) -> None:
    path, costs = table
    space = latbench.get_space(SPACE)
    budget = 1.5 * hand_price(costs, space.smallest())
    kw = dict(budgets_ms=budget, strategy="evolution", seed=1, population=12, generations=6)
    r = latbench.search(SPACE, [path], **kw)
    assert r.latency_ms["tiny"] <= budget and r.latency_ms["tiny"] == pytest.approx(hand_price(costs, r.published))
    assert r.accuracy * 1e6 == pytest.approx(r.flops) and r.accuracy_proxy  # the proxy: MFLOPs
    assert r.flops == sum(b.flops for b in space.blocks(r.published))
    df = r.study.trials
    assert len(df) == r.evaluations and df.loc[df["feasible"], "value"].max() == r.accuracy
    assert (df.loc[df["feasible"], "latency_ms[tiny]"] <= budget).all()
    assert latbench.search(SPACE, {"tiny": path}, **kw).published == r.published  # same seed, same result


def test_a_registered_strategy_is_listed_and_runs(table) -> None:
    path, costs = table

    def best_of_one_batch(study, options) -> None:
        """One batch of feasible subnets."""
        study.score(*study.sample_feasible(options.population))
        study.tick(1, 1)

    latbench.register_strategy("toy-batch", best_of_one_batch)
    assert latbench.list_strategies("toy-*") == ["toy-batch"]
    assert {"evolution", "anneal", "random", "nsga2"} <= set(latbench.list_strategies())
    assert latbench.get_strategy("toy-batch").description == "One batch of feasible subnets."
    budget = 2 * hand_price(costs, latbench.get_space(SPACE).smallest())
    r = latbench.search(SPACE, path, budgets_ms=budget, strategy="toy-batch", population=5, seed=0)
    assert r.strategy == "toy-batch" and r.evaluations == 5 and r.latency_ms["tiny"] <= budget
    with pytest.raises(latbench.UsageError, match="strategy toy-batch has no option 'chains'"):
        latbench.search(SPACE, path, budgets_ms=budget, strategy="toy-batch", chains=3)


# ---------------------------------------------------------------------- errors name parameters
def test_library_errors_name_parameters(tmp_path, table) -> None:
    path, _ = table
    op = [O.activation((1, 4, 4, 4), "relu")]
    cases = [
        (lambda: latbench.search(SPACE, path, budgets_ms={"nope": 1.0}), r"^budgets_ms: budget for unknown table"),
        (lambda: latbench.search(SPACE, path, budgets_ms=-1.0), r"^budgets_ms: the latency budget for 'tiny'"),
        (lambda: latbench.Study(SPACE, path, resolutions=[24], choices={"r": [24]}), "resolutions or choices"),
        (lambda: latbench.Predictor.from_table(42), r"^`table` must be a path or an open LatencyTable"),
        (lambda: latbench.profile(op, device="ort", out=tmp_path / "a.sqlite", max_ops=0), r"^`max_ops` must be >= 1"),
        (lambda: latbench.profile(op, device="ort", out=tmp_path / "a.sqlite", resolutions=[24]),
         r"^`resolutions` apply to a space"),
        (lambda: latbench.profile(op, device="ort", out=tmp_path / "a.sqlite", granularity="layer"),
         r"^`granularity` must be op or block"),
        (lambda: latbench.profile(None, device="ort", out=tmp_path / "none.sqlite"), "needs an existing table"),
        (lambda: latbench.profile([], device="ort", out=tmp_path / "a.sqlite"), "nothing to profile"),
        (lambda: latbench.profile(op, device="ort", out=tmp_path / "a.sqlite", context="hot"),
         r"^`context` must be auto, warm or network"),
        (lambda: latbench.profile(op, device="ort", out=tmp_path / "a.sqlite", context="network"),
         r"^network context needs a space \(its subnets' weight bytes\) or `context_mb`$"),
        (lambda: latbench.Predictor.from_table(path, SPACE, statistic="p90"), r"^`statistic` must be one of"),
        (lambda: latbench.validate(None, SPACE, None, n=0), r"needs at least one subnet, got `n=0`$"),
        (lambda: latbench.validate(None, SPACE, None, builds=0), r"^`builds` must be >= 1, got 0$"),
        (lambda: latbench.validate(None, SPACE, None, noise=-1), r"^`calibrate_n`, `noise` and `retime` must be >= 0$"),
    ]
    for call, pattern in cases:
        with pytest.raises(latbench.UsageError, match=pattern):
            call()
    assert not (tmp_path / "a.sqlite").exists()


def test_cli_says_the_flag_of_each_parameter_a_library_error_names() -> None:
    """The CLI's one rewording (latbench.cli.flags): a quoted parameter becomes its flag, with its
    value or as a switch; an unknown name and unquoted words stay as written."""
    from latbench.cli.flags import cli_words

    assert cli_words("so `statistic=median` cannot price it; leave `statistic` out") == \
        "so --statistic median cannot price it; leave --statistic out"
    assert cli_words("over the 10% allowed; `max_fallback=None` prices them") == \
        "over the 10% allowed; --allow-fallback prices them"
    assert cli_words("resume with `context=network` `context_mb=0.5`, or use another `out`") == \
        "resume with --context network --context-mb 0.5, or use another --out"
    assert cli_words("got `n=0`; `calibrate_n`, `noise` and `retime` must be >= 0; use `estimator_row=False`") == \
        "got --n 0; --calibrate-n, --noise and --retime must be >= 0; use --no-estimator-row"
    assert cli_words("give `use_space` to Predictor.from_table; the statistic n") == \
        "give `use_space` to Predictor.from_table; the statistic n"


def test_dir_lists_the_public_names_not_the_modules_own_imports() -> None:
    names = dir(latbench)
    assert set(latbench.__all__) <= set(names)
    assert not {"Any", "importlib", "annotations"} & set(names)


# ---------------------------------------------------------------------- import isolation
HEAVY = ("torch", "onnxruntime", "ai_edge_litert", "adbutils", "matplotlib", "device_agents")
CORE = ("ops", "spaces", "enumerate", "store", "predict", "search", "formats", "profiling", "profiler", "runmeta",
        "tablemeta", "validate", "calibrate", "cli", "cli.flags", "api", "model_price")


def test_import_latbench_and_core_modules_pulls_in_no_heavy_module() -> None:
    code = f"""
import importlib, json, sys, time
t0 = time.perf_counter()
import latbench
t_import = time.perf_counter() - t0
for name in {CORE!r}:
    importlib.import_module("latbench." + name)
for name in latbench.__all__:
    getattr(latbench, name)
print(json.dumps({{"seconds": t_import, "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                   "search_callable": callable(latbench.search), "study": latbench.search.Study is latbench.Study}}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=CLI_ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["heavy"] == [] and doc["search_callable"] and doc["study"]
    assert doc["seconds"] < 0.5
