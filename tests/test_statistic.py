"""What a table's entries are priced by: the estimator a profile stores (the mean by default, the
table's own kept on resume, another refused), and the statistic asked for at predict time
(`--statistic median|mean|min`), checked against hand sums on hand-made samples."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from latbench import ops as O
from latbench.errors import UsageError
from latbench.formats import import_profile
from latbench.measure import Measurement, Stats, TimingSettings
from latbench.predict import Predictor, Pricer
from latbench.runmeta import (
    INVOCATION_OP,
    check_run_meta,
    invocation_ms,
    merge_run_meta,
    record_invocation,
    table_estimator,
)
from latbench.spaces import get_space
from latbench.store import LatencyTable
from latbench.tablemeta import CalibrationEntry, RunSettings

PROFILE = import_profile("host", "onnxruntime", 1)
SPACE = get_space("tiny")
BLOCKS = O.unique(SPACE.enumerate_blocks([24]))
FAST = ["--max-time", "0.05", "--min-samples", "5"]
# the per-call cost's batches: hand-made samples (ms)
INV_BATCHES = ([0.010, 0.012, 0.030], [0.011, 0.020])


def samples_of(i: int) -> list[float]:
    """Skewed samples whose median, mean and min differ (distinct per block)."""
    a = 0.1 + 0.01 * i
    return [a, a + 0.01, a + 0.05, 3 * a]


def by_hand(statistic: str) -> tuple[dict[str, float], float]:
    """Each block's `statistic` of its samples and the per-call cost's: the mean of all its
    samples, the median of its batches' medians, the least of their minimums."""
    f = {"median": np.median, "mean": np.mean, "min": np.min}[statistic]
    costs = {b.key: float(f(samples_of(i))) for i, b in enumerate(BLOCKS)}
    if statistic == "mean":
        inv = math.fsum(x for b in INV_BATCHES for x in b) / sum(len(b) for b in INV_BATCHES)
    elif statistic == "median":
        inv = statistics.median([float(np.median(b)) for b in INV_BATCHES])
    else:
        inv = min(min(b) for b in INV_BATCHES)
    return costs, inv


def hand_price(config, statistic: str) -> float:
    costs, inv = by_hand(statistic)
    keys = [b.key for b in SPACE.blocks(config)]
    return math.fsum(max(0.0, costs[k] - inv) for k in keys) + inv


def measured(op: O.OpSpec, samples: list[float], estimator: str = "mean") -> Measurement:
    return Measurement(op.key, PROFILE.id, op.to_dict(), Stats.from_samples(samples),
                       settings={"estimator": estimator})


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A block table of tiny at 24 as a profile writes one (priced by the mean), its per-call cost
    from two batches."""
    path = tmp_path / "t.sqlite"
    timing = TimingSettings()
    with LatencyTable.open(path, PROFILE) as t:
        for i, b in enumerate(BLOCKS):
            t.add(measured(b, samples_of(i)), estimator="mean")
        check_run_meta(t, "block", "none", "tiny", timing)
        for batch in INV_BATCHES:
            record_invocation(t, measured(INVOCATION_OP, batch), timing)
    return path


CONFIG = SPACE.to_published(SPACE.sample(3, 1)[0]) | {"r": 24}


@pytest.mark.parametrize("statistic", ["median", "mean", "min"])
def test_prices_by_each_statistic_equal_hand_sums(table: Path, statistic: str) -> None:
    """Each entry by that statistic of its samples, less the per-call cost by the same statistic,
    plus one per-call cost; the table's own estimator (None) is the mean."""
    want = hand_price(CONFIG, statistic)
    with LatencyTable.open(table, readonly=True) as t:
        pred = Predictor.from_table(t, SPACE, strict=True, statistic=statistic)
        pricer = Pricer.from_table(t, statistic=statistic)
        own = Predictor.from_table(t, SPACE, strict=True)
        assert invocation_ms(t, statistic) == pytest.approx(by_hand(statistic)[1], rel=1e-12)
    assert pred.predict(CONFIG) == pytest.approx(want, rel=1e-12) and pred.statistic == statistic
    assert pricer.price(SPACE.blocks(CONFIG)).raw_ms == pytest.approx(want, rel=1e-12)
    assert pred.predict_batch(SPACE.index(CONFIG)[None])[0] == pytest.approx(want, rel=1e-12)
    assert own.statistic == "mean" and own.predict(CONFIG) == pytest.approx(hand_price(CONFIG, "mean"), rel=1e-12)


def test_predict_cli_says_which_statistic_priced_it(table: Path, cli) -> None:
    cfg = json.dumps(CONFIG)
    code, out, err = cli("predict", "-t", str(table), "-s", "tiny", "--config", cfg, "--statistic", "median", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["statistic"] == "median" and doc["calibrated"] is False
    assert doc["predictions"][0]["ms"] == pytest.approx(hand_price(CONFIG, "median"), rel=1e-12)
    assert doc["predictions"][0]["invocation_ms"] == pytest.approx(by_hand("median")[1], rel=1e-12)
    code, out, _ = cli("predict", "-t", str(table), "-s", "tiny", "--config", cfg)
    keys = len(SPACE.blocks(CONFIG))
    assert code == 0 and out.startswith(f"{hand_price(CONFIG, 'mean'):.4f} ms (uncalibrated; priced by mean; 0 of "
                                        f"{keys} keys priced by the fallback; ")
    code, out, _ = cli("predict", "-t", str(table), "-s", "tiny", "--config", cfg, "--statistic", "min")
    assert code == 0 and out.startswith(f"{hand_price(CONFIG, 'min'):.4f} ms (uncalibrated; priced by min; ")


def test_a_calibration_applies_to_the_tables_own_prices_only(table: Path, cli) -> None:
    """A calibration was fitted to the table's own (mean) prices: applied to them, left out (and
    said so on stderr) for prices by another statistic."""
    with LatencyTable.open(table) as t:
        t.set_calibration(CalibrationEntry(scale=2.0, offset_ms=0.0, n=10, space="tiny", granularity="block",
                                           form="scale"))
    cfg = json.dumps(CONFIG)
    for statistic, calibrated in ((None, True), ("mean", True), ("median", False)):
        flags = ["--statistic", statistic] if statistic else []
        code, out, err = cli("predict", "-t", str(table), "-s", "tiny", "--config", cfg, *flags, "--json")
        doc = json.loads(out)
        raw = hand_price(CONFIG, statistic or "mean")
        assert code == 0 and doc["calibrated"] is calibrated
        assert doc["predictions"][0]["ms"] == pytest.approx(2 * raw if calibrated else raw, rel=1e-12)
        note = "the table's calibration of tiny was fitted to its own prices: not applied to prices by the median"
        assert (note in err) is (not calibrated)


def test_rows_without_the_statistic_are_refused_in_one_line(tmp_path: Path, cli) -> None:
    """PaddleSlim text holds a value per key, no samples: asking for a median names the table and
    how many rows lack it (exit 2); the table's own estimate still prices it."""
    path = tmp_path / "mixed.sqlite"
    with LatencyTable.open(path, PROFILE) as t:
        for i, b in enumerate(BLOCKS):
            if i < 2:
                t.add(measured(b, samples_of(i)), estimator="mean")
            else:
                t.add(Measurement(b.key, PROFILE.id, b.to_dict(), None), estimator="value", estimate=0.5 + i)
        t.set_run_settings(RunSettings("block"))
    cfg = json.dumps(CONFIG)
    n, lacking = len(BLOCKS), len(BLOCKS) - 2
    for statistic in ("median", "mean", "min"):
        code, out, err = cli("predict", "-t", str(path), "-s", "tiny", "--config", cfg, "--statistic", statistic)
        assert code == 2 and out == ""
        assert err == (f"latbench: error: {path}: {lacking} of {n} rows hold no {statistic} (the table's rows are "
                       f"priced by mean (2 rows), value ({lacking} rows)), so --statistic {statistic} cannot price "
                       f"it; leave --statistic out to price by the table's own estimator\n")
    code, out, _ = cli("predict", "-t", str(path), "-s", "tiny", "--config", cfg, "--json")
    assert code == 0 and json.loads(out)["statistic"] == f"mean (2 rows), value ({lacking} rows)"
    code, _, err = cli("predict", "-t", str(path), "-s", "tiny", "--config", cfg, "--statistic", "p90")
    assert code == 2 and err == "latbench: error: --statistic must be one of median, mean, min, got 'p90'\n"
    code, _, err = cli("predict", "-t", str(path), "--model", str(tmp_path / "m.onnx"), "--statistic", "mean")
    assert code == 2 and "pricing a whole model needs an op-level table" in err  # --statistic itself is fine


def test_a_per_call_cost_without_the_statistic_is_refused(tmp_path: Path) -> None:
    """benchmark_model gives a mean and no median: a table whose per-call cost has no median
    cannot be priced by the median, and says so naming the table."""
    path = tmp_path / "t.sqlite"
    with LatencyTable.open(path, PROFILE) as t:
        for i, b in enumerate(BLOCKS):
            t.add(measured(b, samples_of(i)), estimator="mean")
        t.set_run_settings(RunSettings("block"))
        s = Stats(median=math.nan, p25=math.nan, p75=math.nan, min=0.01, max=0.03, mean=0.02, std=0.005, n=50)
        record_invocation(t, Measurement(INVOCATION_OP.key, PROFILE.id, INVOCATION_OP.to_dict(), s,
                                         settings={"estimator": "mean"}), TimingSettings())
        assert Predictor.from_table(t, SPACE, statistic="mean").invocation_ms == 0.02
        with pytest.raises(UsageError) as e:
            Predictor.from_table(t, SPACE, statistic="median")
    assert str(e.value) == (f"{path}: its per-call cost (meta invocation) holds no median (priced by mean), so "
                            f"`statistic=median` cannot price it; leave `statistic` out")


def test_a_profile_keeps_one_estimator(tmp_path: Path) -> None:
    """check_run_meta records the estimator and refuses a resumed run asking for another; a table
    from before it was recorded is priced by what its rows say; merge refuses another one."""
    path = tmp_path / "t.sqlite"
    with LatencyTable.open(path, PROFILE) as t:
        check_run_meta(t, "block", "none", "tiny", TimingSettings())
        assert t.run_settings.estimator == "mean" == table_estimator(t)
        with pytest.raises(UsageError) as e:
            check_run_meta(t, "block", "none", "tiny", TimingSettings(rounds=3, estimator="round_min"))
        assert str(e.value) == (f"{path} holds entries priced by mean (the mean of all samples); this run asks "
                                f"for round_min: resume with `estimator=mean`, or use another `out`")
    old = tmp_path / "old.sqlite"
    with LatencyTable.open(old, PROFILE) as t:  # profiled before the estimator was recorded
        t.add(measured(BLOCKS[0], samples_of(0), "round_min"), estimator="round_min")
        t.set_run_settings(RunSettings("block", context="warm", context_bytes=0))
        assert table_estimator(t) == "round_min"
        with pytest.raises(UsageError, match="holds entries priced by round_min .the fastest round's median.; this "
                                             "run asks for mean: resume with `estimator=round_min`"):
            check_run_meta(t, "block", "none", None, TimingSettings())
        check_run_meta(t, "block", "none", None, TimingSettings(rounds=10, estimator="round_min"))
        assert t.run_settings.estimator == "round_min"
        with pytest.raises(UsageError) as e:
            merge_run_meta(t, {"profile_run": {"granularity": "block", "estimator": "mean"}}, "src.db")
    assert str(e.value) == (f"cannot merge src.db into {old}: its entries were timed as block-granularity, in "
                            f"warm context, priced by mean, the table's as block-granularity, in warm context, "
                            f"priced by round_min")


def test_profile_estimator_flag(tmp_path: Path, cli) -> None:
    """`--estimator median` stores rows priced by their samples' median (every sample kept) and a
    per-call cost by the median of its batches' medians; a resume keeps it unasked and refuses
    another; bad values are one line before any device is touched."""
    path = tmp_path / "t.sqlite"
    base = ["profile", "-d", "ort", "-s", "tiny", "-r", "24", "--out", str(path), *FAST, "--json"]
    code, out, err = cli(*base, "--max-ops", "2", "--estimator", "median")
    assert code == 0, err
    assert json.loads(out)["estimator"] == "median"
    with LatencyTable.open(path, readonly=True) as t:
        rows = list(t.rows())
        inv = t.invocation
    for r in rows:
        assert r["estimator"] == "median" and r["estimate"] == r["median"] == float(np.median(r["samples"]))
        assert len(r["samples"]) == r["n"]
    assert inv.estimator == "median" and inv.estimate_ms == statistics.median(
        x.stats["median"] for x in inv.samples)
    code, out, err = cli(*base, "--max-ops", "1")
    assert code == 0 and json.loads(out)["estimator"] == "median", err
    code, _, err = cli(*base, "--max-ops", "1", "--estimator", "mean")
    assert code == 2 and "this run asks for mean: resume with --estimator median" in err
    for flags, message in ((["--estimator", "p50"], "timing estimator (--estimator) must be one of mean, median, "
                                                     "round_min, got 'p50'"),
                           (["--estimator", "round_min", "--rounds", "1"],
                            "timing estimator round_min (the fastest round's median) needs --rounds >= 2, got 1")):
        code, _, err = cli("profile", "-d", "ort", "-s", "tiny", "--out", str(tmp_path / "x.sqlite"), *flags)
        assert code == 2 and err == f"latbench: error: {message}\n" and not (tmp_path / "x.sqlite").exists()
