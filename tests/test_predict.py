"""Predictor: exact against hand sums, batch == single, OFA LatencyTable parity, fallback and
strict misses, lowering of torch modules and their ONNX exports, the predict CLI."""
from __future__ import annotations

import functools
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_result import run_cli

from latbench import ops as O
from latbench.lower import lower_onnx, lower_torch
from latbench.predict import (
    Calibration,
    MissingKeyError,
    Predictor,
    Pricer,
    fit_calibration,
)
from latbench.spaces import get_space, list_spaces
from latbench.tablemeta import CompanionEntry, RunSettings

SPACES = list_spaces()


def known_costs(ops) -> dict[str, float]:
    """Distinct, exactly representable numbers per key (sums are checked with tight tolerances)."""
    return {op.key: 0.001 * (1 + (abs(hash(op.key)) % 997)) for op in ops}


@functools.lru_cache(maxsize=None)
def expanded_blocks(name: str) -> tuple:
    """(block, its unfused ops) for every block of space `name`, once per session."""
    return tuple((b, tuple(O.expand(b))) for b in get_space(name).enumerate_blocks())


@functools.lru_cache(maxsize=None)
def table_keys(name: str, granularity: str, fusion: str = "none") -> tuple:
    """Every key of a table of space `name` (once per session: cases differing in the per-call cost share it)."""
    if granularity == "block":
        return tuple(b for b, _ in expanded_blocks(name))
    return tuple(O.unique(o for _, ops in expanded_blocks(name) for o in O.fuse(list(ops), fusion)))


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("granularity,fusion,inv", [("block", "none", 0.0), ("op", "none", 0.0), ("op", "ort", 0.0),
                                                    ("block", "none", 5e-4), ("op", "ort", 5e-4), ("op", "ort", 0.3)])
def test_predict_equals_hand_sum_and_batch(name: str, granularity: str, fusion: str, inv: float) -> None:
    """The per-call cost `inv` once plus each entry's work, entry - inv, 0 where the entry is below
    `inv` (at 0.3 ms about a third of the entries are)."""
    space = get_space(name)
    costs = known_costs(table_keys(name, granularity, fusion))
    pred = Predictor(space, costs, granularity, fusion, strict=True, invocation_ms=inv)
    configs = np.vstack([space.sample(7, 12), space.smallest()[None], space.largest()[None]])
    singles = []
    for c in configs:
        if granularity == "block":
            keys = [b.key for b in space.blocks(c)]
        else:  # the hand lowering: each block's ops, fused the runtime's way (a block's ops are a
            # chain; consecutive blocks need not be: nb201's next edge reads the node, not the conv)
            keys = [o.key for b in space.blocks(c) for o in O.fuse(O.expand(b), fusion)]
        hand = inv + math.fsum(max(0.0, costs[k] - inv) for k in keys)
        got = pred.predict(c)
        assert pred.explain(c).raw_ms == pytest.approx(hand, rel=1e-12, abs=1e-12)
        assert got == pytest.approx(hand, rel=1e-12, abs=1e-12)
        singles.append(got)
    batch = pred.predict_batch(configs)
    np.testing.assert_allclose(batch, singles, rtol=1e-12)
    ms, misses = pred.predict_batch(configs, return_misses=True)
    assert (misses == 0).all()


def test_pricer_counts_the_per_call_cost_once() -> None:
    """Three entries of 1, 2 and 1 ms, each holding a 0.25 ms call cost: 4 - 2 x 0.25 = 3.5 ms."""
    from latbench.errors import UsageError
    from latbench.predict import Pricer

    a, b = O.conv((1, 8, 8, 8), 8, 3), O.conv((1, 8, 8, 8), 16, 1)
    p = Pricer({a.key: 1.0, b.key: 2.0}, "op", invocation_ms=0.25).price([a, b, a])
    assert p.raw_ms == pytest.approx(3.5, abs=1e-12) and p.invocation_ms == 0.25
    assert Pricer({a.key: 1.0}, "op").price([a, a]).raw_ms == 2.0  # none measured: plain sum
    # an entry below the cost does no measurable work: 0.25 + 0.75 + 0 + 0.75, never below the cost
    assert Pricer({a.key: 1.0, b.key: 0.1}, "op", invocation_ms=0.25).price([a, b, a]).raw_ms == pytest.approx(1.75)
    assert Pricer({b.key: 0.1}, "op", invocation_ms=0.25).price([b, b]).raw_ms == 0.25
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(UsageError, match="invocation cost"):
            Pricer({}, "op", invocation_ms=bad)


def test_predictor_reads_the_tables_per_call_cost(tmp_path: Path) -> None:
    """from_table takes the per-call cost the profile stored in the table's meta."""
    from latbench.formats import import_profile
    from latbench.measure import Measurement, Stats
    from latbench.store import LatencyTable

    space = get_space("tiny")
    cfg = space.sample(5, 1)[0]
    blocks = space.blocks(cfg)
    prof = import_profile("host", "onnxruntime", 1)
    with LatencyTable.open(tmp_path / "t.sqlite", prof) as t:
        for i, bl in enumerate(O.unique(blocks)):
            t.add(Measurement(bl.key, prof.id, bl.to_dict(), Stats.from_samples([0.1 + 0.01 * i])))
        t.set_run_settings(RunSettings("block"))
        plain = Predictor.from_table(t, space, strict=True).predict(cfg)
        t.set_invocation(CompanionEntry(estimate_ms=0.004))
        pred = Predictor.from_table(t, space, strict=True)
    assert pred.invocation_ms == 0.004
    assert pred.predict(cfg) == pytest.approx(plain - (len(blocks) - 1) * 0.004, rel=1e-12)


def test_published_form_predicts_like_index() -> None:
    space = get_space("ofa-mbv3-w10")
    pred = Predictor(space, known_costs(space.enumerate_blocks()), "block", strict=True)
    c = space.sample(3, 1)[0]
    assert pred.predict(space.to_published(c)) == pred.predict(c)
    assert pred.predict(json.loads(json.dumps(space.to_published(c)))) == pred.predict(c)


# ---------------------------------------------------------------------- OFA parity
@pytest.mark.parametrize("order", [(160, 176), (176, 160)])
def test_imported_ofa_yaml_prices_like_ofa(tmp_path: Path, order) -> None:
    """Hand-written YAML files in OFA's format, one per resolution, whose shared keys (Conv_2,
    Logits) differ: imported in either order, a config is priced as OFA prices it, with the file
    of its own resolution."""
    from latbench.formats import import_ofa_yaml, import_profile
    from latbench.formats.ofa import ofa_predict_efficiency
    from latbench.store import LatencyTable

    space = get_space("ofa-mbv3-w10")
    rng = np.random.default_rng(0)
    luts, paths = {}, {}
    for r in (160, 176):
        lut = {b.key: {"count": 50, "mean": float(rng.uniform(0.1, 3.0)), "std": 0.01}
               for b in space.enumerate_blocks([r])}
        paths[r] = tmp_path / f"{r}_lookup_table.yaml"
        paths[r].write_text(yaml.safe_dump(lut))
        luts[r] = {k: v["mean"] for k, v in lut.items()}
    shared = set(luts[160]) & set(luts[176])
    assert {k.split("-")[0] for k in shared} == {"Conv_2", "Logits"}
    assert all(luts[160][k] != luts[176][k] for k in shared)
    with LatencyTable.open(tmp_path / "t.sqlite", import_profile("note10", "tflite")) as t:
        import_ofa_yaml([paths[r] for r in order], t)
        pred = Predictor.from_table(t, space, strict=True)
    for r in (160, 176):
        cfgs = space.sample(r, 30)
        cfgs[:, space.resolution_position] = space.positions[space.resolution_position].choices.index(r)
        batch = pred.predict_batch(cfgs)
        for c, b in zip(cfgs, batch):
            cfg = space.to_published(c)
            theirs = ofa_predict_efficiency(luts, cfg, space)
            assert math.isclose(pred.predict(cfg), theirs, rel_tol=1e-12)
            assert math.isclose(b, theirs, rel_tol=1e-12)


# ---------------------------------------------------------------------- misses
def test_missing_keys_priced_by_fallback_and_counted() -> None:
    space = get_space("tiny")
    blocks = space.enumerate_blocks()
    costs = {b.key: 1e-3 * b.flops / 1e6 + 0.01 for b in blocks}
    dropped = [b for b in blocks if b.kind == "mbconv"][:5]
    partial = {k: v for k, v in costs.items() if k not in {b.key for b in dropped}}
    pred = Predictor(space, partial, "block", fallback_ops=blocks, max_fallback=None)
    # find configs that use a dropped block
    cfgs = space.sample(0, 400)
    ms, misses = pred.predict_batch(cfgs, return_misses=True)
    hit = np.flatnonzero(misses > 0)
    assert hit.size > 0
    for i in hit[:5]:
        p = pred.explain(cfgs[i])
        assert len(p.misses) == misses[i] and set(p.misses) <= {b.key for b in dropped}
        assert p.raw_ms > 0 and math.isfinite(p.raw_ms)
        present = math.fsum(costs[b.key] for b in space.blocks(cfgs[i]) if b.key in partial)
        assert p.raw_ms > present  # the fallback adds a positive price, never zero
    strict = Predictor(space, partial, "block", strict=True)
    used = {b.key for b in space.blocks(cfgs[hit[0]])} & {b.key for b in dropped}
    with pytest.raises(MissingKeyError, match="key not in table") as e:
        strict.predict(cfgs[hit[0]])
    assert any(k in str(e.value) for k in used)
    with pytest.raises(MissingKeyError):
        strict.predict_batch(cfgs)
    clean = np.flatnonzero(misses == 0)
    np.testing.assert_allclose(strict.predict_batch(cfgs[clean]), ms[clean])


def test_predict_batch_across_chunks_equals_single_predictions() -> None:
    """Batches pass in chunks of BATCH_CHUNK rows: two full chunks and a partial one, with
    fallback-priced keys, agree with predict_raw row by row (prices and miss counts)."""
    from latbench.predict import BATCH_CHUNK

    space = get_space("tiny")
    blocks = space.enumerate_blocks()
    costs = {b.key: 1e-3 * b.flops / 1e6 + 0.01 for b in blocks}
    dropped = sorted(b.key for b in blocks if b.kind == "mbconv")[:4]
    pred = Predictor(space, {k: v for k, v in costs.items() if k not in dropped}, "block",
                     fallback_ops=blocks, invocation_ms=1e-3, max_fallback=None)
    cfgs = space.sample(3, 2 * BATCH_CHUNK + 37)
    ms, misses = pred.predict_batch(cfgs, return_misses=True)
    rows = np.r_[0:5, BATCH_CHUNK - 2:BATCH_CHUNK + 2, 2 * BATCH_CHUNK:len(cfgs)]  # each chunk's edges
    for i in rows:
        raw, missed = pred.predict_raw(cfgs[i])
        assert ms[i] == pytest.approx(raw, rel=1e-12) and misses[i] == missed
    assert misses.any() and ms.shape == misses.shape == (len(cfgs),)
    assert pred.predict_batch(cfgs[:0]).shape == (0,)


def test_calibration_fit_and_apply() -> None:
    p = np.array([1.0, 2.0, 3.0, 4.0])
    cal = fit_calibration(p, 1.5 * p + 0.2, "s", "block")
    assert cal.scale == pytest.approx(1.5) and cal.offset_ms == pytest.approx(0.2)
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert cal.form == "scale+offset"
    inverted = fit_calibration(p, 10.0 - p, "s", "block")  # noise that anti-correlates
    assert inverted.scale > 0  # never a scale that inverts the table's ranking
    assert Calibration.from_dict({"scale": 2.0, "offset_ms": 0.1, "n": 3}).form == "scale+offset"  # stored before forms
    space = get_space("tiny")
    pred = Predictor(space, known_costs(space.enumerate_blocks()), "block", calibration=cal)
    c = space.sample(0, 3)
    raw = pred.predict_batch(c, calibrated=False)
    np.testing.assert_allclose(pred.predict_batch(c), 1.5 * raw + 0.2)
    assert pred.explain(c[0]).calibrated and pred.explain(c[0]).raw_ms == pytest.approx(raw[0])


def test_calibration_form_is_chosen_by_leave_one_out_relative_error() -> None:
    """Exact data recovers its own form; fewer parameters win a tie; the fit minimises relative
    error (hand-computed); noisy points over a narrow range get one parameter, not a line."""
    from latbench.errors import UsageError

    p = np.array([2.0, 4.0, 5.0, 8.0])
    only_scale = fit_calibration(p, 1.25 * p)
    assert only_scale.form == "scale" and only_scale.scale == pytest.approx(1.25) and only_scale.offset_ms == 0.0
    only_offset = fit_calibration(p, p + 0.5)
    assert only_offset.form == "offset" and only_offset.offset_ms == pytest.approx(0.5) and only_offset.scale == 1.0
    m = np.array([2.424, 4.752, 5.94, 9.696])  # 1.2 p +-1%; scale alone: sum(p m / m^2) / sum(p^2 / m^2)
    want = np.sum(p / m) / np.sum((p / m) ** 2)
    assert fit_calibration(p, m).form == "scale" and fit_calibration(p, m).scale == pytest.approx(want)
    two = fit_calibration([3.0, 4.0], [3.5, 4.0])  # under 3 points: the relative-error offset
    w2 = 1 / np.array([3.5, 4.0]) ** 2
    assert two.form == "offset" and two.offset_ms == pytest.approx(np.sum(np.array([0.5, 0.0]) * w2) / np.sum(w2))
    rng = np.random.default_rng(1)
    p = np.linspace(6.0, 7.0, 10)
    noisy = fit_calibration(p, 1.1 * p * (1 + 0.03 * rng.standard_normal(10)))
    assert noisy.form != "scale+offset"
    for bad in ([1.0, 2.0], [1.0, -1.0, 2.0]):
        with pytest.raises(UsageError, match="calibration needs"):
            fit_calibration([1.0, 2.0, 3.0], bad)


# ---------------------------------------------------------------------- lowering real models
@pytest.mark.parametrize("name", ["ofa-mbv3-w10", "lightnas", "bignas-resnet", "tiny"])
@pytest.mark.usefixtures("one_torch_thread")
def test_torch_module_and_onnx_export_lower_alike(name: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    warnings.filterwarnings("ignore")
    space = get_space(name)
    cfg = space.sample(5, 1)[0]
    rpos = space.resolution_position
    if rpos is not None:  # at the space's smallest resolution: the lowering is the same, the convs cheaper
        choices = space.positions[rpos].choices
        cfg[rpos] = list(choices).index(min(choices))
    module = space.build(cfg)
    shape = space.input_shape(cfg)
    lt = lower_torch(module, shape)
    assert not lt.unmapped
    blocks = space.enumerate_blocks(None if rpos is None else [space.values(cfg)[rpos]])  # the config's resolution
    ops_all = {o.key: o for b in blocks for o in O.expand(b)}
    fused = {o.key: o for b in blocks for o in O.fuse(O.expand(b), "ort")}
    # the unfolded export (BN a node of its own) once per family: MobileNetV3-like (tiny) and ResNet
    modes = ((False, "none", ops_all), (True, "ort", fused)) if name in ("tiny", "bignas-resnet") \
        else ((True, "ort", fused),)
    for fold, fusion, keyset in modes:
        buf = io.BytesIO()
        torch.onnx.export(module, (torch.randn(*shape),), buf, dynamo=False, opset_version=17,
                          do_constant_folding=fold)
        lo = lower_onnx(buf.getvalue())
        assert not lo.unmapped
        a = O.fuse(lt.ops, fusion)
        b = O.fuse(lo.ops, fusion)
        assert [o.key for o in a] == [o.key for o in b]
        # the subnet's own blocks priced (test_predict_equals_hand_sum_and_batch: as predict does)
        pricer = Pricer(known_costs(keyset.values()), "op", fusion, strict=True)
        assert pricer.price(lt.ops).raw_ms == pytest.approx(pricer.price(lo.ops).raw_ms, rel=1e-12)
        assert pricer.price(lt.ops).raw_ms == pytest.approx(pricer.price(space.blocks(cfg)).raw_ms, rel=1e-12)
        if name == "tiny":  # and the compiled predictor (a small space: cheap to compile)
            pred = Predictor(space, known_costs(keyset.values()), "op", fusion, strict=True)
            assert pred.price(lt.ops).raw_ms == pytest.approx(pred.predict(cfg), rel=1e-12)


def test_lowering_lists_unmapped_ops_by_name() -> None:
    torch = pytest.importorskip("torch")

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.up = torch.nn.Upsample(scale_factor=2)

        def forward(self, x):
            return torch.cumsum(self.up(self.conv(x)), dim=1)

    low = lower_torch(Odd(), (1, 3, 8, 8))
    assert [o.kind for o in low.ops] == ["conv"]
    assert any("Upsample" in u for u in low.unmapped) and any("cumsum" in u for u in low.unmapped)


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    """The tiny space's blocks at 24 profiled on ONNX Runtime (`latbench profile`'s library entry),
    timed briefly: one warm-up call, no warm-up time, back to back (these tests check sums, not speed)."""
    import latbench
    from latbench.measure import TimingSettings

    path = tmp_path_factory.mktemp("pred") / "t.sqlite"
    timing = TimingSettings(warmup=1, warmup_s=0.0, max_time_s=0.05, min_samples=5, rounds=2, interleave=24,
                            context="warm")
    run = latbench.profile("tiny", device="ort", out=path, resolutions=[24], timing=timing, retime="none")
    assert run.ok, run.failures
    return path


def test_predict_cli_config_matches_library(tiny_table: Path, cli) -> None:
    from latbench.store import LatencyTable

    space = get_space("tiny")
    cfg = space.to_published(space.sample(2, 1)[0])
    cfg["r"] = 24
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny", "--config", json.dumps(cfg), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with LatencyTable.open(tiny_table, create=False) as t:
        est = t.estimates()
        inv = t.invocation.estimate_ms  # the profile measured the per-call cost
    assert inv > 0
    blocks = space.blocks(cfg)
    # each entry holds one call's fixed cost; the network pays it once (an entry below it: no work)
    hand = inv + math.fsum(max(0.0, est[b.key] - inv) for b in blocks)
    (row,) = out["predictions"]
    assert row["ms"] == pytest.approx(hand, rel=1e-9) and row["misses"] == 0
    assert row["invocation_ms"] == inv
    assert out["calibrated"] is False and out["granularity"] == "block"


def test_predict_cli_strict_and_misses(tiny_table: Path, cli) -> None:
    # resolution 32 was not profiled: every key misses, which is an error unless --allow-fallback
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny", "--random", "2", "-r", "32", "--json")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"latbench: error: {tiny_table} prices tiny r=32 with ") and r.stderr.endswith(
        " keys missing, over the 10% allowed (table covers tiny at 24); --allow-fallback prices them with the "
        "fallback regression\n")
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny", "--random", "2", "-r", "32", "--json",
                     "--allow-fallback")
    assert r.returncode == 0, r.stderr
    assert all(0.1 * p["keys"] < p["misses"] <= p["keys"] and p["ms"] > 0 for p in json.loads(r.stdout)["predictions"])
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny", "--random", "2", "-r", "32", "--strict")
    assert r.returncode == 1 and "key not in table" in r.stderr and "Traceback" not in r.stderr


def test_predict_cli_bad_inputs(tiny_table: Path, tmp_path: Path, cli) -> None:
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny", "--config", "{not json")
    assert r.returncode == 2 and "not valid JSON" in r.stderr  # a ConfigError is a usage error
    r = run_cli(cli, "predict", "-t", str(tiny_table), "-s", "tiny")
    assert r.returncode == 2 and "exactly one of" in r.stderr
    r = run_cli(cli, "predict", "-t", str(tmp_path / "none.sqlite"), "-s", "tiny", "--random", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    r = run_cli(cli, "predict", "-t", str(tiny_table), "--model", str(onnx_file))
    assert r.returncode == 2 and "op-level table" in r.stderr


def test_a_few_rows_are_walked_and_price_exactly_as_a_large_batch() -> None:
    """predict_batch walks batches of up to WALK_ROWS rows config by config (an ask/tell loop's
    one-row calls): the same sums bit for bit, fallback counts and calibration included, as the
    vectorised path gives the same rows inside a large batch."""
    from latbench.predict import WALK_ROWS, Calibration

    sp = get_space("tiny")
    blocks = sp.enumerate_blocks()
    rng = np.random.default_rng(5)
    costs = {b.key: float(rng.uniform(0.01, 1.0)) for b in blocks[::2]}  # every other key falls back
    pred = Predictor(sp, costs, "block", calibration=Calibration(1.1, 0.02), max_fallback=None,
                     invocation_ms=0.003, fallback_ops=blocks[::2])
    configs = sp.sample(7, 8 * WALK_ROWS)
    big, big_miss = pred.predict_batch(configs, return_misses=True)
    parts = [pred.predict_batch(configs[i:i + 3], return_misses=True) for i in range(0, len(configs), 3)]
    assert np.array_equal(big, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(big_miss, np.concatenate([p[1] for p in parts]))
    assert big_miss.max() > 0 and np.isfinite(big).all()  # the fallback path is exercised
    one = [pred.predict(sp.to_published(c)) for c in configs[:WALK_ROWS]]
    assert pred.predict_batch(configs[:WALK_ROWS]).tolist() == pytest.approx(one, rel=1e-12)
