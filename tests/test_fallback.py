"""A table applied to a space or resolution it does not cover: predictions say how many keys the
fallback regression priced; more than the allowed share (10%) is one error line naming the
table, its space and its resolutions (exit 1) unless --allow-fallback, in predict and before a
search; a config names its resolution; --random samples the table's resolutions; an accuracy
predictor trained on another space is refused."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_result import run_cli

from latbench.errors import UsageError
from latbench.formats import import_ofa_yaml, import_profile
from latbench.measure import Measurement, Stats
from latbench.predict import FallbackError, Predictor
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import RunSettings

W12_RES = (160, 176)
TAIL = "--allow-fallback prices them with the fallback regression\n"


@pytest.fixture(scope="module")
def w12_table(tmp_path_factory) -> Path:
    """OFA YAML files of ofa-mbv3-w12 at 160 and 176, imported (the space is inferred)."""
    space = get_space("ofa-mbv3-w12")
    d = tmp_path_factory.mktemp("w12")
    rng = np.random.default_rng(3)
    files = []
    for r in W12_RES:
        files.append(d / f"{r}_lookup_table.yaml")
        files[-1].write_text(yaml.safe_dump({b.key: {"count": 10, "mean": float(rng.uniform(0.05, 2.0)), "std": 0.01}
                                             for b in space.enumerate_blocks([r])}))
    path = d / "note10.db"
    with LatencyTable.open(path, import_profile("note10", "tflite")) as t:
        import_ofa_yaml(files, t)
        assert t.meta_get("space")["name"] == "ofa-mbv3-w12"
    return path


def small_config(space_name: str, r: int) -> dict:
    """Every stage at depth 2: 16 block keys (stem, first block, 10 blocks, 4 head keys)."""
    return {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [r]}


def block_table(path: Path, space, resolutions) -> Path:
    prof = import_profile("host", "onnxruntime", 1)
    pid = prof.id
    with LatencyTable.open(path, prof) as t:
        t.set_run_settings(RunSettings("block", spaces=(space.name,)))
        t.add_many(Measurement(b.key, pid, b.to_dict(), Stats.from_samples([0.1 + b.flops / 1e9] * 3),
                               extra={"resolutions": list(resolutions)})
                   for b in space.enumerate_blocks(resolutions))  # one transaction
    return path


# ---------------------------------------------------------------------- predict
def test_predict_wrong_space_is_one_line_naming_the_tables_space(w12_table, cli):
    """ofa-mbv3-w10 on the w1.2 table: every key misses, exit 1; --allow-fallback prices them."""
    cfg = json.dumps(small_config("ofa-mbv3-w10", 160))
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w10", "--config", cfg)
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr == (f"latbench: error: {w12_table} prices ofa-mbv3-w10 r=160 with 16 of 16 keys missing, "
                         f"over the 10% allowed (table covers ofa-mbv3-w12 at 160, 176); {TAIL}")
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w10", "--config", cfg, "--json",
                      "--allow-fallback")
    assert cp.returncode == 0, cp.stderr
    (row,) = json.loads(cp.stdout)["predictions"]
    assert row["misses"] == row["keys"] == 16 and row["ms"] > 0


def test_predict_uncovered_resolution_and_foreign_table(w12_table, tmp_path, cli):
    """The right space at a resolution the table lacks (Conv_2 and Logits too: the table has their
    values at 160 and 176 only), and the `tiny` table on an OFA space."""
    cfg = json.dumps(small_config("ofa-mbv3-w12", 224))
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w12", "--config", cfg)
    assert cp.returncode == 1
    assert cp.stderr == (f"latbench: error: {w12_table} prices ofa-mbv3-w12 r=224 with 16 of 16 keys missing, "
                         f"over the 10% allowed (table covers ofa-mbv3-w12 at 160, 176); {TAIL}")
    tiny = block_table(tmp_path / "tiny.db", get_space("tiny"), [24])
    cp = run_cli(cli, "predict", "-t", str(tiny), "-s", "ofa-mbv3-w12", "--config", cfg)
    assert cp.returncode == 1
    assert cp.stderr == (f"latbench: error: {tiny} prices ofa-mbv3-w12 r=224 with 16 of 16 keys missing, "
                         f"over the 10% allowed (table covers tiny at 24); {TAIL}")


def test_predict_says_how_many_keys_fell_back(w12_table, cli):
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w12", "--config",
                      json.dumps(small_config("ofa-mbv3-w12", 176)))
    assert cp.returncode == 0, cp.stderr
    assert "; 0 of 16 keys priced by the fallback;" in cp.stdout


def test_a_config_must_state_its_resolution(w12_table, cli):
    """A missing r no longer means 224: a usage error naming the field."""
    cfg = small_config("ofa-mbv3-w12", 160)
    del cfg["r"]
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w12", "--config", json.dumps(cfg))
    assert cp.returncode == 2
    assert cp.stderr == ("latbench: error: ofa-mbv3-w12: config lacks r (expects ks, e, d, r; r is the input "
                         "resolution, one of 128..224 step 4)\n")


def test_random_samples_the_resolutions_the_table_covers(w12_table, cli):
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w12", "--random", "30", "--json")
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr == "sampling the resolutions the table covers: 160, 176 (of 25; -r to choose)\n"
    preds = json.loads(cp.stdout)["predictions"]
    assert {p["config"]["r"][0] for p in preds} == set(W12_RES) and all(p["misses"] == 0 for p in preds)
    cp = run_cli(cli, "predict", "-t", str(w12_table), "-s", "ofa-mbv3-w12", "--random", "3", "-r", "176", "--json")
    assert cp.returncode == 0 and cp.stderr == ""
    assert {p["config"]["r"][0] for p in json.loads(cp.stdout)["predictions"]} == {176}


# ---------------------------------------------------------------------- library
def test_share_boundary_and_batch_agree():
    """m of k keys missing is allowed at max_fallback = m/k and refused just below it, in
    predict, explain and predict_batch alike; max_fallback=None allows any share."""
    space = get_space("tiny")
    blocks = space.enumerate_blocks()
    costs = {b.key: 0.01 + b.flops / 1e9 for b in blocks}
    dropped = {b.key for b in blocks if b.kind == "mbconv"}
    partial = {k: v for k, v in costs.items() if k not in dropped}
    loose = Predictor(space, partial, "block", fallback_ops=blocks, max_fallback=None)
    cfgs = space.sample(1, 50)
    _, misses = loose.predict_batch(cfgs, return_misses=True)
    c = cfgs[int(np.argmax(misses))]
    p = loose.explain(c)
    m, k = len(p.misses), p.keys
    assert 0 < m < k
    at = Predictor(space, partial, "block", fallback_ops=blocks, max_fallback=m / k)
    assert at.predict(c) == pytest.approx(p.raw_ms, rel=1e-12) and at.explain(c).keys == k
    assert at.predict_batch(c[None, :])[0] == pytest.approx(p.raw_ms, rel=1e-12)
    below = Predictor(space, partial, "block", fallback_ops=blocks, max_fallback=m / k - 1e-9)
    r = below.resolution_of(c)
    want = f"the cost map prices tiny r={r} with {m} of {k} keys missing, over the "
    for call in (below.predict, below.explain, lambda x: below.predict_batch(x[None, :])):
        with pytest.raises(FallbackError, match=re.escape(want)):
            call(c)
    with pytest.raises(UsageError, match="max_fallback"):
        Predictor(space, partial, "block", max_fallback=1.5)


def test_the_check_is_decided_at_compile_time(tmp_path):
    """A table covering the space has no check to run; a partial one checks only rows at the
    resolutions it lacks, and says which it covers."""
    space = get_space("tiny")
    costs = {b.key: 0.01 + b.flops / 1e9 for b in space.enumerate_blocks()}
    full = Predictor(space, costs, "block")
    assert full._risk is None and full.covered_resolutions == space.resolutions
    path = block_table(tmp_path / "part.db", space, [24])
    with LatencyTable.open(path, create=False) as t:
        part = Predictor.from_table(t, space)
    assert part.covered_resolutions == (24,) and part._risk.tolist() == [r != 24 for r in space.resolutions]
    at24 = space.sample(2, 500)
    at24[:, space.resolution_position] = space.resolutions.index(24)
    ms, misses = part.predict_batch(at24, return_misses=True)
    assert (misses == 0).all() and np.array_equal(part.predict_batch(at24), ms)
    with pytest.raises(FallbackError, match=r"\(table covers tiny at 24\)"):
        part.predict_batch(space.sample(2, 500))


# ---------------------------------------------------------------------- search
def test_search_refuses_before_searching(w12_table, cli):
    """The w1.0 space on the w1.2 table: one line before any search step; --allow-fallback searches."""
    cp = run_cli(cli, "search", "--space", "ofa-mbv3-w10", "--table", str(w12_table), "-b", "30", "-g", "2")
    assert cp.returncode == 1 and cp.stdout == ""
    assert re.fullmatch(rf"latbench: error: {re.escape(str(w12_table))} prices ofa-mbv3-w10 r=\d+ with (\d+) of "
                        rf"\1 keys missing, over the 10% allowed \(table covers ofa-mbv3-w12 at 160, 176\); "
                        rf"{re.escape(TAIL)}", cp.stderr), cp.stderr
    cp = run_cli(cli, "search", "--space", "ofa-mbv3-w12", "--table", str(w12_table), "-b", "30", "-g", "2",
                      "-r", "224")
    assert cp.returncode == 1 and cp.stderr.startswith(f"latbench: error: {w12_table} prices ofa-mbv3-w12 r=224")
    cp = run_cli(cli, "search", "--space", "ofa-mbv3-w12", "--table", str(w12_table), "-b", "30", "-g", "2",
                      "-r", "224", "--allow-fallback", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["config"]["r"] == [224] and doc["fallback_keys"]["note10"] > 0
    assert "note: at resolution(s) 224 some blocks are not in every table" in cp.stderr


def test_accuracy_predictor_of_another_space_is_refused(tmp_path, cli):
    """An MLP latbench trained on ofa-mbv3-w12 does not score ofa-mbv3-w10 subnets."""
    pytest.importorskip("torch")
    from latbench.search.mlp import MLPAccuracy, build_mlp, save_mlp

    mlp = tmp_path / "acc.pth"
    save_mlp(build_mlp(), mlp, "ofa-mbv3-w12")
    w10 = get_space("ofa-mbv3-w10")
    assert MLPAccuracy.load(mlp, get_space("ofa-mbv3-w12")).in_dim == 128
    with pytest.raises(UsageError, match="trained on ofa-mbv3-w12 subnets; the space is ofa-mbv3-w10"):
        MLPAccuracy.load(mlp, w10)
    table = block_table(tmp_path / "w10.db", w10, [160])
    cp = run_cli(cli, "search", "--space", "ofa-mbv3-w10", "--table", str(table), "-b", "30", "-g", "2",
                      "--accuracy", f"mlp:{mlp}")
    assert cp.returncode == 2 and cp.stdout == ""
    assert cp.stderr.endswith(f"latbench: error: {mlp} was trained on ofa-mbv3-w12 subnets; the space is "
                              f"ofa-mbv3-w10, whose subnets it does not score (train one with latbench accuracy "
                              f"train --space ofa-mbv3-w10)\n")
